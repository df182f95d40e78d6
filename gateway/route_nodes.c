/* gateway/route_nodes.c — the dynamic node registry (DESIGN §5, spec/WIRE.md
 * §27): devices and programs that offer commands connect to /ws/nodes with
 * a node token (or an operator's), register a name and their commands, and answer invokes;
 * operators list them (GET /api/nodes, /api/nodes/{id}), remove them
 * (DELETE /api/nodes/{id}) and invoke their commands (POST
 * /api/nodes/{id}/invoke, answered when the node answers or the call times
 * out). The registry is live state: a node is in it while its socket is
 * open and registered. Bounded in nodes, calls and every frame; loop thread
 * only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "gateway/node_frame.h"
#include "gateway/routes_nodes.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/workers/turn_json.h"

typedef struct s_node s_node_t;

/* One invoke waiting for its node's result. */
typedef struct s_call {
    char id[24];                     /* "k<serial>", the call_id the node answers */
    s_node_t *node;
    gateway_http_pending_t *pending; /* the operator's request */
    uint64_t timer;                  /* its timeout */
    struct s_call *next;             /* the node's calls */
} s_call_t;

struct s_node {
    gateway_nodes_t *owner;
    gateway_ws_t *ws;
    bool registered;
    bool closing;                    /* its socket stopped being open (on_closing) */
    char id[PROTO_UUID_TEXT_CAP];    /* given at the first register */
    char name[GATEWAY_NODE_NAME_MAX + 1];
    char commands[GATEWAY_NODE_COMMANDS_MAX][GATEWAY_NODE_COMMAND_MAX + 1];
    size_t ncommands;
    char *meta;                      /* JSON object text */
    uint64_t connected_ms;           /* wall clock of the upgrade */
    char token_id[ROUTER_TOKENS_ID_LEN + 1]; /* the token it connected with, "" for none */
    uint64_t register_timer;         /* the register deadline, 0 once registered */
    s_call_t *calls;
    unsigned ncalls;
    s_node_t *prev, *next;
};

struct gateway_nodes {
    gateway_auth_t *auth;            /* borrowed */
    router_loop_t *loop;             /* borrowed */
    gateway_ws_opts_t ws_opts;
    s_node_t *nodes;
    unsigned nnodes, ncalls;
    uint64_t next_call;
};

/* ---------------------------------------------------------------- calls */

static void s_call_unlink(s_call_t *c)
{
    s_node_t *n = c->node;
    for (s_call_t **pp = &n->calls; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    n->ncalls--;
    n->owner->ncalls--;
}

/* Answers the operator's request with JSON text (status) and ends the call. */
static void s_call_end(s_call_t *c, int status, const char *json, const char *code,
                       const char *text)
{
    gateway_http_res_t *res = gateway_http_pending_res(c->pending);
    if (json)
        (void) gateway_http_respond_json(res, status, json);
    else
        (void) gateway_http_respond_error(res, status, code, text);
    gateway_http_pending_end(&c->pending);
    if (c->timer)
        (void) router_loop_timer_cancel(c->node->owner->loop, c->timer);
    s_call_unlink(c);
    free(c);
}

static void s_call_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    s_call_t *c = ud;
    c->timer = 0;
    s_call_end(c, 504, NULL, "invoke_timeout", "the node did not answer in time");
}

/* ---------------------------------------------------------------- nodes */

/* A node in the registry: registered, and not being closed (a removed node
 * leaves at its DELETE, not once its client answers the Close). */
static bool s_node_listed(const s_node_t *n)
{
    return n->registered && !n->closing;
}

/* The node's socket stopped being open, whoever closed it (a DELETE, its
 * token revoked, a slow consumer cut, its client): it leaves the registry
 * now, not when the close handshake ends (up to GATEWAY_WS_CLOSE_WAIT_MS
 * later), and its waiting calls answer 503 node_gone. It is freed at
 * on_close. */
static void s_ws_closing(gateway_ws_t *ws, void *ud)
{
    (void) ws;
    s_node_t *n = ud;
    n->closing = true;
    if (n->register_timer)
        (void) router_loop_timer_cancel(n->owner->loop, n->register_timer);
    n->register_timer = 0;
    while (n->calls)
        s_call_end(n->calls, 503, NULL, "node_gone", "the node left before it answered");
}

static s_node_t *s_node_find(gateway_nodes_t *self, const char *id, size_t len)
{
    for (s_node_t *n = self->nodes; n; n = n->next)
        if (s_node_listed(n) && strlen(n->id) == len && !memcmp(n->id, id, len))
            return n;
    return NULL;
}

/* Member `key` with the JSON text `json` (NUL-terminated, made by kith) as
 * its value. Out of memory fails the whole object (router_json_end gives
 * NULL): router_json_raw would write the text as a string instead, and a
 * node's result or meta would reach the operator as something it is not. */
static void s_json_member(router_json_obj_t *o, const char *key, const char *json)
{
    if (!o->g || o->failed)
        return;
    yajl_val v = yajl_tree_parse(json, NULL, 0);
    if (!v || yajl_gen_string(o->g, (const unsigned char *) key, strlen(key)) != yajl_gen_status_ok ||
        router_json_gen_value(o->g, v) != 0)
        o->failed = true;
    yajl_tree_free(v);
}

static void s_send_error(s_node_t *n, const char *code, const char *message)
{
    router_json_obj_t o;
    router_json_begin(&o, "error");
    router_json_cstr(&o, "code", code);
    router_json_cstr(&o, "message", message);
    size_t len = 0;
    char *json = router_json_end(&o, &len);
    if (json)
        (void) gateway_ws_send(n->ws, true, json, len);
    free(json);
}

/* The node's members for the REST answers, into an open object. */
static void s_node_members(router_json_obj_t *o, const s_node_t *n)
{
    router_json_cstr(o, "id", n->id);
    router_json_cstr(o, "name", n->name);
    (void) yajl_gen_string(o->g, (const unsigned char *) "commands", 8);
    (void) yajl_gen_array_open(o->g);
    for (size_t i = 0; i < n->ncommands; i++)
        (void) yajl_gen_string(o->g, (const unsigned char *) n->commands[i],
                               strlen(n->commands[i]));
    (void) yajl_gen_array_close(o->g);
    s_json_member(o, "meta", n->meta);
    router_json_u64(o, "connected_ms", n->connected_ms);
    if (n->token_id[0])
        router_json_cstr(o, "token_id", n->token_id);
    else
        s_json_member(o, "token_id", "null");
    router_json_u64(o, "calls", n->ncalls);
}

static void s_on_register(s_node_t *n, gateway_node_frame_t *f)
{
    if (!n->registered) {
        uint8_t id[16];
        proto_uuid_v7_new(id);
        proto_uuid_format(id, n->id);
        n->registered = true;
        if (n->register_timer)
            (void) router_loop_timer_cancel(n->owner->loop, n->register_timer);
        n->register_timer = 0;
    }
    snprintf(n->name, sizeof n->name, "%s", f->name);
    memcpy(n->commands, f->commands, sizeof n->commands);
    n->ncommands = f->ncommands;
    free(n->meta);
    n->meta = f->meta;
    f->meta = NULL;
    char reply[PROTO_UUID_TEXT_CAP + 40];
    int len = snprintf(reply, sizeof reply, "{\"type\":\"registered\",\"id\":\"%s\"}", n->id);
    (void) gateway_ws_send(n->ws, true, reply, (size_t) len);
}

static void s_on_result(s_node_t *n, gateway_node_frame_t *f)
{
    s_call_t *c = n->calls;
    while (c && strcmp(c->id, f->call_id) != 0)
        c = c->next;
    if (!c) {
        s_send_error(n, "UNKNOWN_CALL", "no invoke with this call_id waits (answered, or timed out)");
        return;
    }
    router_json_obj_t o;
    router_json_begin(&o, NULL);
    router_json_bool(&o, "ok", f->ok);
    if (f->ok)
        s_json_member(&o, "result", f->result);
    else
        router_json_cstr(&o, "error", f->error);
    char *json = router_json_end(&o, NULL);
    if (json)
        s_call_end(c, 200, json, NULL, NULL);
    else
        s_call_end(c, 503, NULL, "unavailable", "the server is out of memory");
    free(json);
}

static void s_ws_message(gateway_ws_t *ws, bool text, const uint8_t *data, size_t len, void *ud)
{
    (void) ws;
    s_node_t *n = ud;
    if (!text) {
        s_send_error(n, "INVALID_JSON", "frames are JSON text");
        return;
    }
    gateway_node_frame_t f;
    char why[GATEWAY_NODE_WHY_MAX];
    gateway_node_reason_t r = gateway_node_frame_decode(data, len, &f, why, sizeof why);
    if (r != GATEWAY_NODE_OK) {
        s_send_error(n, gateway_node_reason_code(r), why);
        return;
    }
    if (f.type == GATEWAY_NODE_FRAME_REGISTER)
        s_on_register(n, &f);
    else if (!n->registered)
        s_send_error(n, "NOT_REGISTERED", "send register first");
    else
        s_on_result(n, &f);
    gateway_node_frame_clear(&f);
}

static void s_ws_close(gateway_ws_t *ws, uint16_t code, void *ud)
{
    (void) ws, (void) code;
    s_node_t *n = ud; /* s_ws_closing ended its calls and its register timer */
    gateway_nodes_t *self = n->owner;
    if (n->prev)
        n->prev->next = n->next;
    else
        self->nodes = n->next;
    if (n->next)
        n->next->prev = n->prev;
    self->nnodes--;
    free(n->meta);
    free(n);
}

static const gateway_ws_handlers_t s_ws_handlers = {.on_message = s_ws_message,
                                                    .on_closing = s_ws_closing,
                                                    .on_close = s_ws_close};

static void s_register_late(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    s_node_t *n = ud;
    n->register_timer = 0;
    gateway_ws_close(n->ws, 1008, "register first");
}

static void s_upgrade(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_nodes_t *self = ud;
    if (gateway_auth_require_node(self->auth, req, res, NULL) != 0)
        return;
    if (self->nnodes >= GATEWAY_NODES_MAX) {
        (void) gateway_http_respond_error(res, 503, "too_many_nodes",
                                          "too many node sockets are open");
        return;
    }
    s_node_t *n = calloc(1, sizeof *n);
    if (n)
        n->meta = strdup("{}");
    gateway_ws_t *ws = n && n->meta ? gateway_ws_accept(res, &s_ws_handlers, n, &self->ws_opts)
                                    : NULL;
    if (!ws) {
        if (n)
            free(n->meta);
        free(n);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    n->owner = self;
    n->ws = ws;
    n->connected_ms = router_clock_wall_ms();
    snprintf(n->token_id, sizeof n->token_id, "%s", gateway_http_res_credential_of(res));
    n->next = self->nodes;
    if (self->nodes)
        self->nodes->prev = n;
    self->nodes = n;
    self->nnodes++;
    n->register_timer =
        router_loop_timer_add(self->loop, GATEWAY_NODES_REGISTER_MS, s_register_late, n);
    if (!n->register_timer)
        gateway_ws_close(ws, 1011, "no timer for the register deadline");
}

/* ---------------------------------------------------------------- REST */

static void s_respond_doc(gateway_http_res_t *res, router_json_obj_t *o)
{
    size_t len = 0;
    char *json = router_json_end(o, &len);
    if (json)
        (void) gateway_http_respond(res, 200, "application/json", json, len);
    else
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
    free(json);
}

static void s_list(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_nodes_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    router_json_obj_t o;
    router_json_begin(&o, NULL);
    if (o.g) {
        (void) yajl_gen_string(o.g, (const unsigned char *) "nodes", 5);
        (void) yajl_gen_array_open(o.g);
        for (const s_node_t *n = self->nodes; n; n = n->next) {
            if (!s_node_listed(n))
                continue;
            (void) yajl_gen_map_open(o.g);
            s_node_members(&o, n);
            (void) yajl_gen_map_close(o.g);
        }
        (void) yajl_gen_array_close(o.g);
    }
    s_respond_doc(res, &o);
}

/* POST /api/nodes/{id}/invoke {"command","params"?,"timeout_ms"?}. */
static void s_invoke(gateway_nodes_t *self, s_node_t *n, const gateway_http_req_t *req,
                     gateway_http_res_t *res)
{
    yajl_val b = gateway_http_req_json(req, res, GATEWAY_NODE_DEPTH_MAX, GATEWAY_NODE_KEYS_MAX);
    if (!b)
        return;
    const char *cmd_path[] = {"command", NULL}, *params_path[] = {"params", NULL},
               *timeout_path[] = {"timeout_ms", NULL};
    yajl_val cmd = YAJL_IS_OBJECT(b) ? yajl_tree_get(b, cmd_path, yajl_t_any) : NULL;
    yajl_val params = YAJL_IS_OBJECT(b) ? yajl_tree_get(b, params_path, yajl_t_any) : NULL;
    yajl_val tmo = YAJL_IS_OBJECT(b) ? yajl_tree_get(b, timeout_path, yajl_t_any) : NULL;
    uint64_t timeout = GATEWAY_NODES_CALL_TIMEOUT_MS;
    const char *refusal = NULL, *code = "invalid_body";
    if (!YAJL_IS_OBJECT(b) || !cmd || !YAJL_IS_STRING(cmd))
        refusal = "the body is {\"command\", \"params\"?, \"timeout_ms\"?}";
    else if (tmo && (!YAJL_IS_INTEGER(tmo) || YAJL_GET_INTEGER(tmo) < 1 ||
                     YAJL_GET_INTEGER(tmo) > (long long) GATEWAY_NODES_CALL_TIMEOUT_MAX_MS))
        refusal = "\"timeout_ms\" is 1..300000";
    if (!refusal) {
        size_t i = 0;
        while (i < n->ncommands && strcmp(n->commands[i], cmd->u.string) != 0)
            i++;
        if (i == n->ncommands) {
            refusal = "the node does not offer this command";
            code = "unknown_command";
        }
        if (tmo)
            timeout = (uint64_t) YAJL_GET_INTEGER(tmo);
    }
    if (refusal) {
        (void) gateway_http_respond_error(res, 400, code, refusal);
        yajl_tree_free(b);
        return;
    }
    if (n->ncalls >= GATEWAY_NODES_CALLS_PER_NODE_MAX || self->ncalls >= GATEWAY_NODES_CALLS_MAX) {
        (void) gateway_http_res_header(res, "Retry-After", "1");
        (void) gateway_http_respond_error(res, 429, "too_many_calls",
                                          "too many calls wait on this node; retry");
        yajl_tree_free(b);
        return;
    }
    s_call_t *c = calloc(1, sizeof *c);
    router_json_obj_t o;
    router_json_begin(&o, "invoke");
    if (c)
        snprintf(c->id, sizeof c->id, "k%llu", (unsigned long long) ++self->next_call);
    router_json_cstr(&o, "call_id", c ? c->id : "");
    router_json_cstr(&o, "command", cmd->u.string);
    if (params && o.g) {
        (void) yajl_gen_string(o.g, (const unsigned char *) "params", 6);
        if (router_json_gen_value(o.g, params) != 0)
            o.failed = true;
    } else {
        s_json_member(&o, "params", "{}");
    }
    size_t len = 0;
    char *frame = router_json_end(&o, &len);
    yajl_tree_free(b);
    if (!c || !frame || !(c->pending = gateway_http_res_defer(res))) {
        free(c);
        free(frame);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    c->node = n;
    c->next = n->calls;
    n->calls = c;
    n->ncalls++;
    self->ncalls++;
    /* The timer before the send: a node never gets a call nobody waits for. */
    c->timer = router_loop_timer_add(self->loop, timeout, s_call_timeout, c);
    if (!c->timer) {
        free(frame);
        s_call_end(c, 503, NULL, "unavailable", "no timer for the call");
        return;
    }
    /* A socket that cannot take the call is cut (past its unsent bound,
     * the slow consumer is closed 1008): on_closing takes the node out
     * before this returns, with every call that waits on it, this one
     * included. */
    (void) gateway_ws_send(n->ws, true, frame, len);
    free(frame);
}

/* Splits /api/nodes/{id} and /api/nodes/{id}/invoke (the id may be empty:
 * no node has it); false for any other path under /api/nodes/. */
static bool s_path_split(const gateway_http_req_t *req, const char **id, size_t *len,
                         bool *invoke)
{
    static const char prefix[] = "/api/nodes/", suffix[] = "/invoke";
    const char *p = req->path.ptr + sizeof prefix - 1;
    size_t n = req->path.len - (sizeof prefix - 1);
    const char *slash = memchr(p, '/', n);
    *id = p;
    *len = slash ? (size_t) (slash - p) : n;
    *invoke = slash != NULL;
    return !slash ||
           (n - *len == sizeof suffix - 1 && !memcmp(slash, suffix, sizeof suffix - 1));
}

static void s_one(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_nodes_t *self = ud;
    if (!gateway_http_method_known(req->method)) {
        (void) gateway_http_respond_error(res, 501, "method_not_implemented",
                                          "the method is not one this server knows");
        return;
    }
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    const char *id;
    size_t len;
    bool invoke;
    if (!s_path_split(req, &id, &len, &invoke)) {
        (void) gateway_http_respond_error(res, 404, "not_found",
                                          "no such path under /api/nodes/");
        return;
    }
    bool post = gateway_http_req_method_is(req, "POST");
    bool allowed = invoke ? post
                          : gateway_http_req_method_is(req, "GET") ||
                                gateway_http_req_method_is(req, "HEAD") ||
                                gateway_http_req_method_is(req, "DELETE");
    if (!allowed) {
        (void) gateway_http_res_header(res, "Allow", invoke ? "POST" : "GET, HEAD, DELETE");
        (void) gateway_http_respond_error(res, 405, "method_not_allowed",
                                          "this path does not take this method");
        return;
    }
    s_node_t *n = s_node_find(self, id, len);
    if (!n) {
        (void) gateway_http_respond_error(res, 404, "not_found", "no such node");
        return;
    }
    if (invoke) {
        s_invoke(self, n, req, res);
    } else if (gateway_http_req_method_is(req, "DELETE")) {
        /* on_closing takes it out of the registry before this returns. */
        gateway_ws_close(n->ws, 1000, "removed by an operator");
        (void) gateway_http_respond_json(res, 200, "{\"removed\":true}");
    } else {
        router_json_obj_t o;
        router_json_begin(&o, NULL);
        s_node_members(&o, n);
        s_respond_doc(res, &o);
    }
}

/* ---------------------------------------------------------------- lifecycle */

static const char *const s_protocols[] = {"kith.nodes.v1"};

gateway_nodes_t *gateway_nodes_new(gateway_http_t *g, router_loop_t *loop, gateway_auth_t *auth,
                                   const gateway_ws_opts_t *ws_opts)
{
    gateway_nodes_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->auth = auth;
    self->loop = loop;
    if (ws_opts)
        self->ws_opts = *ws_opts;
    if (gateway_http_route(g, "GET", "/api/nodes", s_list, self) != 0 ||
        gateway_http_route(g, NULL, "/api/nodes/*", s_one, self) != 0 ||
        gateway_http_route_ws(g, "/ws/nodes", s_protocols, 1, s_upgrade, self) != 0) {
        int e = errno;
        free(self);
        errno = e;
        return NULL;
    }
    return self;
}

void gateway_nodes_destroy(gateway_nodes_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_nodes_t *self = *self_p;
    /* The gateway let the sockets go already (no on_close comes); the
     * operators' requests still waiting are ended (their connections are
     * gone with the gateway). */
    while (self->nodes) {
        s_node_t *n = self->nodes;
        self->nodes = n->next;
        while (n->calls) {
            s_call_t *c = n->calls;
            n->calls = c->next;
            if (c->timer)
                (void) router_loop_timer_cancel(self->loop, c->timer);
            gateway_http_pending_end(&c->pending);
            free(c);
        }
        if (n->register_timer)
            (void) router_loop_timer_cancel(self->loop, n->register_timer);
        free(n->meta);
        free(n);
    }
    free(self);
    *self_p = NULL;
}
