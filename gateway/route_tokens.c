/* gateway/route_tokens.c — bearer tokens as operators manage them (WIRE
 * §28): list them, mint a node token (or another operator's), and revoke
 * one, which also ends every socket and event stream it opened. Served on
 * /api/tokens to operators and on /admin/tokens to loopback clients (the
 * way back in when every token is lost, and what `kith tokens` calls).
 * Loop thread only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <yajl/yajl_tree.h>

#include "gateway/routes_auth.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/workers/turn_json.h"

#define S_BODY_DEPTH_MAX 2u  /* {"scope","name"}: nothing nests */
#define S_BODY_KEYS_MAX 8u   /* members read from a body */

/* One answer waiting for its write to be durable. Freed by s_written
 * alone, which the store runs exactly once for every write it took (on
 * the loop, or inside router_tokens_stop): the deadline only answers. */
typedef struct {
    gateway_http_pending_t *pending;       /* the deferred answer, NULL once answered */
    router_loop_t *loop;                   /* where the deadline runs (NULL: none) */
    router_tokens_t *tokens;               /* mint: where a row nobody holds is revoked */
    uint64_t timer;                        /* the deadline, 0 once fired or cancelled */
    bool late;                             /* answered without the write's outcome */
    bool revoke;                           /* a revocation (else a mint) */
    router_tokens_info_t info;             /* the token minted or revoked */
    char token[GATEWAY_AUTH_TOKEN_LEN + 1]; /* mint: the text, handed over once */
    size_t closed;                         /* revoke: sockets and streams it ended */
} s_wait_t;

typedef struct gateway_route_tokens_door s_door_t;

/* Lets the request in: an operator's bearer on /api, a loopback peer on
 * /admin. Answered and false otherwise. */
static bool s_let_in(const s_door_t *door, const gateway_http_req_t *req, gateway_http_res_t *res)
{
    if (door->admin)
        return gateway_auth_require_loopback(door->route->auth, req, res) == 0;
    return gateway_auth_require(door->route->auth, req, res) == 0;
}

static void s_info_members(router_json_obj_t *o, const router_tokens_info_t *t)
{
    router_json_cstr(o, "id", t->id);
    router_json_cstr(o, "scope", router_tokens_scope_name(t->scope));
    router_json_cstr(o, "name", t->name);
    router_json_u64(o, "created_ms", t->created_ms);
}

/* Answers o; 0 when the document went out, -1 when the client heard
 * something else (out of memory) or nothing (it is gone). */
static int s_respond_doc(gateway_http_res_t *res, int status, router_json_obj_t *o)
{
    size_t len = 0;
    char *json = router_json_end(o, &len);
    int rc = -1;
    if (json)
        rc = gateway_http_respond(res, status, "application/json", json, len);
    else
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
    if (json)
        sodium_memzero(json, len); /* a mint's answer holds the token */
    free(json);
    return rc;
}

/* ---------------------------------------------------------------- GET */

static void s_list(const s_door_t *door, gateway_http_res_t *res)
{
    router_tokens_t *tokens = gateway_auth_tokens(door->route->auth);
    router_tokens_info_t *all = calloc(ROUTER_TOKENS_MAX, sizeof *all);
    if (!all) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    size_t n = router_tokens_list(tokens, all, ROUTER_TOKENS_MAX);
    const char *mine = gateway_http_res_credential_of(res);
    router_json_obj_t o;
    router_json_begin(&o, NULL);
    if (o.g) {
        (void) yajl_gen_string(o.g, (const unsigned char *) "tokens", 6);
        (void) yajl_gen_array_open(o.g);
        for (size_t i = 0; i < n; i++) {
            (void) yajl_gen_map_open(o.g);
            s_info_members(&o, &all[i]);
            router_json_bool(&o, "current", mine[0] && !strcmp(mine, all[i].id));
            (void) yajl_gen_map_close(o.g);
        }
        (void) yajl_gen_array_close(o.g);
    }
    free(all);
    (void) gateway_http_res_header(res, "Cache-Control", "no-store");
    s_respond_doc(res, 200, &o);
}

/* ---------------------------------------------------------------- POST, DELETE */

/* The store's outcome: answers the client unless the deadline did, then
 * frees w (the only place that does). */
static void s_written(bool ok, void *ud)
{
    s_wait_t *w = ud;
    if (w->timer) {
        (void) router_loop_timer_cancel(w->loop, w->timer);
        w->timer = 0;
    }
    if (w->late || !w->pending) {
        if (ok && !w->revoke)
            gateway_auth_orphan_revoke(w->tokens, w->info.id, "mint");
        goto done;
    }
    gateway_http_res_t *res = gateway_http_pending_res(w->pending);
    if (!ok) {
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "the token state could not be stored");
    } else if (w->revoke) {
        /* Written without allocating: the revocation is done, and an
         * answer of "out of memory" would say it was not. */
        char body[96];
        snprintf(body, sizeof body, "{\"revoked\":true,\"id\":\"%s\",\"closed\":%zu}",
                 w->info.id, w->closed);
        (void) gateway_http_respond_json(res, 200, body);
    } else {
        router_json_obj_t o;
        router_json_begin(&o, NULL);
        s_info_members(&o, &w->info);
        router_json_cstr(&o, "token", w->token);
        (void) gateway_http_res_header(res, "Cache-Control", "no-store");
        if (s_respond_doc(res, 201, &o) != 0) /* the token reached nobody */
            gateway_auth_orphan_revoke(w->tokens, w->info.id, "mint");
    }
    gateway_http_pending_end(&w->pending);
done:
    sodium_memzero(w, sizeof *w);
    free(w);
}

/* The disk has not taken the write within the wait (full, failing and
 * retried for ever, or slow): the client hears now what is true now, and
 * s_written later answers nobody. */
static void s_expired(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_wait_t *w = ud;
    w->timer = 0;
    w->late = true;
    if (!w->pending)
        return;
    gateway_http_res_t *res = gateway_http_pending_res(w->pending);
    if (w->revoke) {
        /* In force in memory since the call (refused, its sockets ended):
         * not "nothing changed", yet not durable either. A retry finds no
         * such token (404) though a restart may bring it back. */
        char text[256];
        snprintf(text, sizeof text, "token %s is revoked now and %zu of its connections were "
                 "ended, but the revocation is not durable yet (the disk has not taken it): a "
                 "restart before it does may bring the token back", w->info.id, w->closed);
        (void) gateway_http_respond_error(res, 503, "durability_unknown", text);
    } else {
        /* Its secret is never shown: if the row lands later nobody holds
         * it, and s_written revokes it. */
        sodium_memzero(w->token, sizeof w->token);
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "the token was not issued: the disk has not taken it "
                                          "in time; retry later");
    }
    gateway_http_pending_end(&w->pending);
}

/* Arms w's deadline before anything is done, so a request the server
 * cannot bound is refused having changed nothing. 0, or -1 answered. */
static int s_deadline_arm(const s_door_t *door, s_wait_t *w, gateway_http_res_t *res)
{
    const gateway_route_tokens_t *route = door->route;
    w->loop = route->loop;
    w->tokens = gateway_auth_tokens(route->auth);
    if (!w->loop) /* a caller that gave no loop: the answer waits for the disk */
        return 0;
    unsigned ms = route->wait_ms ? route->wait_ms : GATEWAY_TOKENS_WAIT_MS;
    w->timer = router_loop_timer_add(w->loop, ms, s_expired, w);
    if (w->timer)
        return 0;
    ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "tokens: no timer to bound the wait for the disk (%s)",
               strerror(errno));
    (void) gateway_http_respond_error(res, 503, "unavailable",
                                      "no timer to bound the wait for the disk; nothing was "
                                      "done; retry");
    return -1;
}

/* Frees a w whose write the store did not take. */
static void s_wait_free(s_wait_t *w)
{
    if (w->timer)
        (void) router_loop_timer_cancel(w->loop, w->timer);
    sodium_memzero(w, sizeof *w);
    free(w);
}

/* Defers res until w's write is durable (s_written answers) or its
 * deadline passes (s_expired does). */
static void s_defer(s_wait_t *w, gateway_http_res_t *res)
{
    /* The callback runs from a post, never inside the call that queued
     * it, so the deferral is in place first. */
    w->pending = gateway_http_res_defer(res);
    if (w->pending)
        return;
    w->late = true; /* what lands answers nobody: a mint's row is revoked */
    if (w->timer) {
        (void) router_loop_timer_cancel(w->loop, w->timer);
        w->timer = 0;
    }
    sodium_memzero(w->token, sizeof w->token);
    if (w->revoke) /* "unavailable" as other refusals for want of memory; the text says more */
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "the token is revoked now, but the server is out of "
                                          "memory to wait for the disk: a restart before the "
                                          "revocation is durable may bring it back");
    else
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "the token was not issued: out of memory");
}

/* POST {"scope":"node"|"operator","name"}: a new token, answered once
 * its hash is durable, or 503 (not issued) when the disk has not taken it
 * within the wait. */
static void s_mint(const s_door_t *door, const gateway_http_req_t *req, gateway_http_res_t *res)
{
    yajl_val b = gateway_http_req_json(req, res, S_BODY_DEPTH_MAX, S_BODY_KEYS_MAX);
    if (!b)
        return;
    const char *scope_path[] = {"scope", NULL}, *name_path[] = {"name", NULL};
    yajl_val scope = YAJL_IS_OBJECT(b) ? yajl_tree_get(b, scope_path, yajl_t_any) : NULL;
    yajl_val name = YAJL_IS_OBJECT(b) ? yajl_tree_get(b, name_path, yajl_t_any) : NULL;
    router_token_scope_t sc = ROUTER_TOKEN_NODE;
    const char *refusal = NULL;
    if (!YAJL_IS_OBJECT(b) || !YAJL_IS_STRING(scope) || !YAJL_IS_STRING(name) ||
        YAJL_GET_OBJECT(b)->len != 2)
        refusal = "the body is {\"scope\":\"node\"|\"operator\", \"name\"}";
    else if (!router_tokens_scope_parse(scope->u.string, strlen(scope->u.string), &sc))
        refusal = "\"scope\" is \"node\" or \"operator\"";
    else if (!gateway_auth_token_name_ok(name->u.string, strlen(name->u.string)))
        refusal = "\"name\" is 1 to 64 octets, no control characters";
    s_wait_t *w = refusal ? NULL : calloc(1, sizeof *w);
    if (!w) {
        yajl_tree_free(b);
        if (refusal)
            (void) gateway_http_respond_error(res, 400, "invalid_body", refusal);
        else
            (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
        return;
    }
    w->info.scope = sc;
    snprintf(w->info.name, sizeof w->info.name, "%s", name->u.string);
    yajl_tree_free(b);
    if (s_deadline_arm(door, w, res) != 0) {
        s_wait_free(w);
        return;
    }
    uint8_t hash[32];
    gateway_auth_token_new(w->token, hash);
    router_tokens_id(hash, w->info.id);
    w->info.created_ms = router_clock_wall_ms();
    if (router_tokens_add(gateway_auth_tokens(door->route->auth), hash, w->info.scope,
                          w->info.name, w->info.created_ms, s_written, w) != 0) {
        if (errno == ENOSPC)
            (void) gateway_http_respond_error(res, 507, "too_many_tokens",
                                              "every token slot is taken: revoke tokens no "
                                              "longer used (DELETE /api/tokens/{id})");
        else
            (void) gateway_http_respond_error(res, 503, "unavailable",
                                              "the token state cannot be stored now");
        s_wait_free(w);
        return;
    }
    gateway_auth_audit_req(door->route->auth, "token_minted", req,
                           router_tokens_scope_name(w->info.scope));
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "minted %s token %s",
               router_tokens_scope_name(w->info.scope), w->info.id);
    s_defer(w, res);
}

/* DELETE /…/tokens/{id}: refused at once, what it opened ends at once,
 * answered once the row is gone durably, or 503 durability_unknown when
 * the disk has not taken that within the wait. */
static void s_revoke(const s_door_t *door, const gateway_http_req_t *req, gateway_http_res_t *res,
                     const char *id, size_t len)
{
    router_tokens_t *tokens = gateway_auth_tokens(door->route->auth);
    s_wait_t *w = calloc(1, sizeof *w);
    if (!w) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
        return;
    }
    w->revoke = true;
    if (len == ROUTER_TOKENS_ID_LEN) {
        memcpy(w->info.id, id, len);
        w->info.id[len] = '\0';
    }
    if (s_deadline_arm(door, w, res) != 0) {
        s_wait_free(w);
        return;
    }
    if (!w->info.id[0] || router_tokens_revoke(tokens, w->info.id, s_written, w) != 0) {
        bool unknown = !w->info.id[0] || errno == ENOENT;
        s_wait_free(w);
        if (unknown)
            (void) gateway_http_respond_error(res, 404, "not_found", "no such token");
        else
            (void) gateway_http_respond_error(res, 503, "unavailable",
                                              "the token state cannot be stored now");
        return;
    }
    w->closed = gateway_http_revoke(door->route->g, w->info.id, "token revoked");
    gateway_auth_audit_req(door->route->auth, "token_revoked", req, w->info.id);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "revoked token %s (%zu connections ended)",
               w->info.id, w->closed);
    s_defer(w, res);
}

/* ---------------------------------------------------------------- routing */

static void s_collection(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    const s_door_t *door = ud;
    if (!s_let_in(door, req, res))
        return;
    if (gateway_http_req_method_is(req, "POST"))
        s_mint(door, req, res);
    else
        s_list(door, res);
}

static void s_one(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    const s_door_t *door = ud;
    if (!s_let_in(door, req, res))
        return;
    const char *prefix = door->admin ? "/admin/tokens/" : "/api/tokens/";
    size_t skip = strlen(prefix);
    s_revoke(door, req, res, req->path.ptr + skip, req->path.len - skip);
}

int gateway_route_tokens(gateway_http_t *g, gateway_route_tokens_t *route)
{
    route->g = g;
    for (int i = 0; i < 2; i++) {
        s_door_t *door = &route->doors[i];
        *door = (s_door_t){.route = route, .admin = i == 1};
        const char *base = door->admin ? "/admin/tokens" : "/api/tokens";
        char one[32];
        snprintf(one, sizeof one, "%s/*", base);
        if (gateway_http_route(g, "GET", base, s_collection, door) != 0 ||
            gateway_http_route(g, "POST", base, s_collection, door) != 0 ||
            /* DELETE only: the server answers other methods (405 with
             * Allow: DELETE, 501 for one it does not know). */
            gateway_http_route(g, "DELETE", one, s_one, door) != 0)
            return -1;
    }
    return 0;
}
