/* gateway/route_canvas.c — live canvases (DESIGN §5, spec/WIRE.md §26): a
 * canvas is a named document that agents, scripts and tools replace with
 * POST /api/canvas/{id} and that browsers watch over /ws/canvas/{id}, each
 * new version pushed to every watcher. GET /api/canvas lists them, GET
 * /api/canvas/{id} reads one, DELETE /api/canvas/{id} clears one. Bearer-
 * protected. Canvases are live state, kept in memory only (a restart
 * starts with none), bounded in number, size and watchers. A document is
 * only ever handed out inside JSON (never served as itself), so HTML in a
 * canvas cannot run on the gateway's origin. Loop thread only. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "gateway/routes_canvas.h"
#include "proto/utf8.h"
#include "proto/ws.h"
#include "router/clock.h"
#include "router/workers/turn_json.h"
#include "router/workers/turn_source.h"

typedef struct s_watch s_watch_t;

typedef struct s_canvas {
    char id[GATEWAY_CANVAS_ID_MAX + 1];
    uint64_t version;          /* 0: nothing posted (or cleared) */
    char type[GATEWAY_CANVAS_TYPE_MAX + 1];
    char *content;             /* NUL-ended, `len` octets; NULL at version 0 */
    size_t len;
    uint64_t updated_ms;       /* wall clock of the last post or clear */
    s_watch_t *watchers;       /* its open sockets */
    unsigned nwatchers;
    bool pushing;              /* s_push runs: a watcher cut there leaves it to the pusher to gc */
    struct s_canvas *next;
} s_canvas_t;

struct s_watch {
    gateway_canvas_t *owner;
    gateway_ws_t *ws;
    s_canvas_t *canvas;          /* NULL once its socket is closing */
    s_watch_t *next;             /* the canvas's watchers, or the closing ones */
};

struct gateway_canvas {
    gateway_auth_t *auth;        /* borrowed */
    gateway_ws_opts_t ws_opts;
    s_canvas_t *canvases;
    s_watch_t *closing;          /* watchers whose socket is closing, until on_close */
    unsigned ncanvases, nwatchers; /* nwatchers: every canvas socket, closing ones too */
    size_t bytes;                /* content octets of every canvas */
};

/* ---------------------------------------------------------------- canvases */

/* A canvas id is shaped like a session id: 1..128 of A-Z a-z 0-9 . _ : - */
static bool s_id_ok(const char *s, size_t len)
{
    return len <= GATEWAY_CANVAS_ID_MAX && router_turn_session_id_ok(s, len);
}

static s_canvas_t *s_find(gateway_canvas_t *self, const char *id, size_t len)
{
    for (s_canvas_t *c = self->canvases; c; c = c->next)
        if (strlen(c->id) == len && !memcmp(c->id, id, len))
            return c;
    return NULL;
}

static s_canvas_t *s_make(gateway_canvas_t *self, const char *id, size_t len)
{
    if (self->ncanvases >= GATEWAY_CANVAS_MAX)
        return NULL;
    s_canvas_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    memcpy(c->id, id, len);
    c->next = self->canvases;
    self->canvases = c;
    self->ncanvases++;
    return c;
}

/* Forgets a canvas with no document and no watcher. */
static void s_gc(gateway_canvas_t *self, s_canvas_t *c)
{
    if (c->version || c->watchers)
        return;
    for (s_canvas_t **pp = &self->canvases; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    self->ncanvases--;
    free(c->content);
    free(c);
}

/* ---------------------------------------------------------------- JSON */

/* {"type"?,"id","version","content_type","content","updated_ms"}; NULL
 * without memory. Caller frees; *len its octets. */
static char *s_doc_json(const s_canvas_t *c, const char *type, size_t *len)
{
    router_json_obj_t o;
    router_json_begin(&o, type);
    router_json_cstr(&o, "id", c->id);
    router_json_u64(&o, "version", c->version);
    if (c->version) {
        router_json_cstr(&o, "content_type", c->type);
        router_json_str(&o, "content", c->content, c->len);
    }
    router_json_u64(&o, "updated_ms", c->updated_ms);
    return router_json_end(&o, len);
}

/* Every watcher of c gets `json` (a watcher too slow is cut by its own
 * bound). One frame is encoded and shared by every watcher's queue, so a
 * post costs its size once against limits.conn_unsent_total_max however
 * many watch it (WIRE §26): watchers that stopped reading are cut by their
 * own limit, and cannot crowd out the ones that read. Without memory for
 * the shared frame each watcher is sent its own copy, as before (those
 * that find no memory either are cut, and see the version on their next
 * connect). A watcher cut here leaves c->watchers (on_closing) while this
 * runs: c is not forgotten meanwhile (c->pushing); the caller gc's it. */
static void s_push(s_canvas_t *c, const char *json, size_t len)
{
    router_shared_buf_t *frame = c->watchers ? gateway_ws_frame_new(true, json, len) : NULL;
    c->pushing = true;
    for (s_watch_t *w = c->watchers, *next; w; w = next) {
        next = w->next; /* a failed send unlinks w, nothing else */
        if (frame)
            (void) gateway_ws_send_frame(w->ws, frame);
        else
            (void) gateway_ws_send(w->ws, true, json, len);
    }
    c->pushing = false;
    router_shared_buf_destroy(&frame);
}

/* A new version whose frame cannot be made (no memory) must not leave the
 * watchers showing the old one as if it were current: each is closed 1011,
 * and gets the document now held when it connects again. */
static void s_push_failed(s_canvas_t *c)
{
    c->pushing = true;
    for (s_watch_t *w = c->watchers, *next; w; w = next) {
        next = w->next; /* ending w unlinks it, nothing else */
        gateway_ws_end(w->ws, PROTO_WS_CLOSE_INTERNAL_ERROR,
                       "out of memory: reconnect for the current version");
    }
    c->pushing = false;
}

/* ---------------------------------------------------------------- REST */

/* The {id} of /api/canvas/{id}, or false (answered 400/404). */
static bool s_path_id(const gateway_http_req_t *req, gateway_http_res_t *res, const char **id,
                      size_t *len)
{
    static const char prefix[] = "/api/canvas/";
    *id = req->path.ptr + sizeof prefix - 1;
    *len = req->path.len - (sizeof prefix - 1);
    if (s_id_ok(*id, *len))
        return true;
    (void) gateway_http_respond_error(res, 400, "invalid_canvas_id",
                                      "a canvas id is 1..128 of A-Z a-z 0-9 . _ : -");
    return false;
}

static void s_list(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_canvas_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    router_json_obj_t o;
    router_json_begin(&o, NULL);
    if (o.g) {
        (void) yajl_gen_string(o.g, (const unsigned char *) "canvases", 8);
        (void) yajl_gen_array_open(o.g);
        for (const s_canvas_t *c = self->canvases; c; c = c->next) {
            if (!c->version)
                continue; /* watched, nothing posted yet */
            (void) yajl_gen_map_open(o.g);
            router_json_cstr(&o, "id", c->id);
            router_json_u64(&o, "version", c->version);
            router_json_cstr(&o, "content_type", c->type);
            router_json_u64(&o, "bytes", c->len);
            router_json_u64(&o, "watchers", c->nwatchers);
            router_json_u64(&o, "updated_ms", c->updated_ms);
            (void) yajl_gen_map_close(o.g);
        }
        (void) yajl_gen_array_close(o.g);
    }
    size_t n = 0;
    char *json = router_json_end(&o, &n);
    if (json)
        (void) gateway_http_respond(res, 200, "application/json", json, n);
    else
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
    free(json);
}

static void s_get(const s_canvas_t *c, gateway_http_res_t *res)
{
    size_t n = 0;
    char *json = c && c->version ? s_doc_json(c, NULL, &n) : NULL;
    if (!c || !c->version)
        (void) gateway_http_respond_error(res, 404, "not_found", "no such canvas");
    else if (!json)
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
    else
        (void) gateway_http_respond(res, 200, "application/json", json, n);
    free(json);
}

/* The media type of a posted document: `type/subtype` of token characters,
 * parameters of printable ASCII allowed; at most GATEWAY_CANVAS_TYPE_MAX
 * octets. HTTP lets obs-text (0x80..0xff) through a field value as opaque
 * octets, but the type is handed back inside JSON and canvas frames, which
 * must be UTF-8: one such octet would make every list unreadable and close
 * every watcher 1007. */
static bool s_type_ok(proto_http_slice_t t)
{
    if (t.len == 0 || t.len > GATEWAY_CANVAS_TYPE_MAX)
        return false;
    size_t slash = 0, i = 0;
    for (; i < t.len && t.ptr[i] != ';'; i++) {
        char c = t.ptr[i];
        if (c == '/') {
            if (slash++ || i == 0)
                return false;
        } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     (c && strchr("!#$&-^_.+", c)))) {
            return false;
        }
    }
    if (slash != 1 || t.ptr[i - 1] == '/')
        return false;
    for (; i < t.len; i++)
        if ((unsigned char) t.ptr[i] < 0x20 || (unsigned char) t.ptr[i] >= 0x7f)
            return false;
    return true;
}

static void s_post(gateway_canvas_t *self, const gateway_http_req_t *req, gateway_http_res_t *res,
                   s_canvas_t *c, const char *id, size_t id_len)
{
    proto_http_slice_t type;
    if (!gateway_http_req_header(req, "Content-Type", &type) || !s_type_ok(type)) {
        (void) gateway_http_respond_error(res, 415, "unsupported_media_type",
                                          "send the document with its Content-Type "
                                          "(text/html, text/markdown, application/json, …)");
        return;
    }
    if (!proto_utf8_valid((const uint8_t *) req->body, req->body_len) ||
        memchr(req->body, '\0', req->body_len)) {
        (void) gateway_http_respond_error(res, 400, "invalid_body",
                                          "a canvas document is UTF-8 text without NUL");
        return;
    }
    size_t had = c ? c->len : 0;
    if (self->bytes - had + req->body_len > GATEWAY_CANVAS_BYTES_MAX) {
        (void) gateway_http_respond_error(res, 507, "canvas_full",
                                          "the canvases hold as much as they may; clear one");
        return;
    }
    bool made = false;
    if (!c) {
        if (!(c = s_make(self, id, id_len))) {
            if (self->ncanvases >= GATEWAY_CANVAS_MAX)
                (void) gateway_http_respond_error(res, 507, "canvas_full",
                                                  "too many canvases; clear one");
            else
                (void) gateway_http_respond_error(res, 503, "unavailable",
                                                  "the server is out of memory");
            return;
        }
        made = true;
    }
    char *copy = malloc(req->body_len + 1);
    if (!copy) {
        if (made)
            s_gc(self, c);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    memcpy(copy, req->body, req->body_len);
    copy[req->body_len] = '\0';
    free(c->content);
    c->content = copy;
    self->bytes = self->bytes - had + req->body_len;
    c->len = req->body_len;
    memcpy(c->type, type.ptr, type.len);
    c->type[type.len] = '\0';
    c->version++;
    c->updated_ms = router_clock_wall_ms();
    size_t n = 0;
    char *frame = s_doc_json(c, "frame", &n);
    if (frame)
        s_push(c, frame, n);
    else
        s_push_failed(c);
    free(frame);
    char answer[GATEWAY_CANVAS_ID_MAX + 96];
    snprintf(answer, sizeof answer, "{\"id\":\"%s\",\"version\":%llu,\"watchers\":%u}", c->id,
             (unsigned long long) c->version, c->nwatchers);
    (void) gateway_http_respond_json(res, 200, answer);
}

static void s_delete(gateway_canvas_t *self, s_canvas_t *c, gateway_http_res_t *res)
{
    if (!c || !c->version) {
        (void) gateway_http_respond_error(res, 404, "not_found", "no such canvas");
        return;
    }
    self->bytes -= c->len;
    free(c->content);
    c->content = NULL;
    c->len = 0;
    c->type[0] = '\0';
    c->version = 0;
    c->updated_ms = router_clock_wall_ms();
    char gone[GATEWAY_CANVAS_ID_MAX + 40];
    int n = snprintf(gone, sizeof gone, "{\"type\":\"cleared\",\"id\":\"%s\"}", c->id);
    s_push(c, gone, (size_t) n);
    s_gc(self, c);
    (void) gateway_http_respond_json(res, 200, "{\"cleared\":true}");
}

static void s_one(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_canvas_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    const char *id;
    size_t len;
    if (!s_path_id(req, res, &id, &len))
        return;
    s_canvas_t *c = s_find(self, id, len);
    if (gateway_http_req_method_is(req, "POST"))
        s_post(self, req, res, c, id, len);
    else if (gateway_http_req_method_is(req, "DELETE"))
        s_delete(self, c, res);
    else
        s_get(c, res);
}

/* ---------------------------------------------------------------- watchers */

static void s_ws_message(gateway_ws_t *ws, bool text, const uint8_t *data, size_t len, void *ud)
{
    (void) text, (void) data, (void) len, (void) ud;
    static const char refusal[] = "{\"type\":\"error\",\"code\":\"READ_ONLY\",\"message\":"
                                  "\"a canvas socket only watches: post with POST "
                                  "/api/canvas/{id}\"}";
    (void) gateway_ws_send(ws, true, refusal, sizeof refusal - 1);
}

static void s_watch_unlink(s_watch_t **head, s_watch_t *w)
{
    for (s_watch_t **pp = head; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
}

/* The socket stopped being open (revoked, cut, closed by either side): it
 * stops watching now — it gets no frame and no longer counts among the
 * canvas's watchers — though it may take GATEWAY_WS_CLOSE_WAIT_MS more to
 * go. It waits in self->closing for on_close. */
static void s_ws_closing(gateway_ws_t *ws, void *ud)
{
    (void) ws;
    s_watch_t *w = ud;
    s_canvas_t *c = w->canvas;
    gateway_canvas_t *self = w->owner;
    s_watch_unlink(&c->watchers, w);
    c->nwatchers--;
    w->canvas = NULL;
    w->next = self->closing;
    self->closing = w;
    if (!c->pushing)
        s_gc(self, c);
}

static void s_ws_close(gateway_ws_t *ws, uint16_t code, void *ud)
{
    (void) ws, (void) code;
    s_watch_t *w = ud; /* s_ws_closing moved it to the closing ones */
    s_watch_unlink(&w->owner->closing, w);
    w->owner->nwatchers--;
    free(w);
}

static const gateway_ws_handlers_t s_ws_handlers = {.on_message = s_ws_message,
                                                    .on_closing = s_ws_closing,
                                                    .on_close = s_ws_close};

/* GET /ws/canvas/{id}: the canvas's document now (or {"type":"empty"}),
 * then every new one as it is posted. */
static void s_upgrade(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_canvas_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    static const char prefix[] = "/ws/canvas/";
    const char *id = req->path.ptr + sizeof prefix - 1;
    size_t len = req->path.len - (sizeof prefix - 1);
    if (!s_id_ok(id, len)) {
        (void) gateway_http_respond_error(res, 400, "invalid_canvas_id",
                                          "a canvas id is 1..128 of A-Z a-z 0-9 . _ : -");
        return;
    }
    if (self->nwatchers >= GATEWAY_CANVAS_WATCHERS_MAX) {
        (void) gateway_http_respond_error(res, 503, "too_many_watchers",
                                          "too many canvas sockets are open");
        return;
    }
    s_canvas_t *c = s_find(self, id, len);
    bool made = !c;
    if (!c && !(c = s_make(self, id, len))) {
        if (self->ncanvases >= GATEWAY_CANVAS_MAX)
            (void) gateway_http_respond_error(res, 503, "canvas_full", "too many canvases");
        else
            (void) gateway_http_respond_error(res, 503, "unavailable",
                                              "the server is out of memory");
        return;
    }
    s_watch_t *w = calloc(1, sizeof *w);
    size_t n = 0;
    char *first = c->version ? s_doc_json(c, "frame", &n) : NULL;
    if (!first && !c->version) {
        char empty[GATEWAY_CANVAS_ID_MAX + 40];
        int k = snprintf(empty, sizeof empty, "{\"type\":\"empty\",\"id\":\"%s\"}", c->id);
        first = k > 0 ? strdup(empty) : NULL;
        n = k > 0 ? (size_t) k : 0;
    }
    gateway_ws_t *ws = w && first ? gateway_ws_accept(res, &s_ws_handlers, w, &self->ws_opts)
                                  : NULL;
    if (!ws) {
        free(w);
        free(first);
        if (made)
            s_gc(self, c);
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    *w = (s_watch_t){.owner = self, .ws = ws, .canvas = c, .next = c->watchers};
    c->watchers = w;
    c->nwatchers++;
    self->nwatchers++;
    (void) gateway_ws_send(ws, true, first, n);
    free(first);
}

/* ---------------------------------------------------------------- lifecycle */

static const char *const s_protocols[] = {"kith.canvas.v1"};

gateway_canvas_t *gateway_canvas_new(gateway_http_t *g, gateway_auth_t *auth,
                                     const gateway_ws_opts_t *ws_opts)
{
    gateway_canvas_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->auth = auth;
    if (ws_opts)
        self->ws_opts = *ws_opts;
    if (gateway_http_route(g, "GET", "/api/canvas", s_list, self) != 0 ||
        gateway_http_route(g, "GET", "/api/canvas/*", s_one, self) != 0 ||
        gateway_http_route(g, "POST", "/api/canvas/*", s_one, self) != 0 ||
        gateway_http_route(g, "DELETE", "/api/canvas/*", s_one, self) != 0 ||
        gateway_http_route_ws(g, "/ws/canvas/*", s_protocols, 1, s_upgrade, self) != 0) {
        int e = errno;
        free(self);
        errno = e;
        return NULL;
    }
    return self;
}

void gateway_canvas_destroy(gateway_canvas_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_canvas_t *self = *self_p;
    /* The gateway let the sockets go already (no on_close comes). */
    while (self->canvases) {
        s_canvas_t *c = self->canvases;
        self->canvases = c->next;
        while (c->watchers) {
            s_watch_t *w = c->watchers;
            c->watchers = w->next;
            free(w);
        }
        free(c->content);
        free(c);
    }
    while (self->closing) {
        s_watch_t *w = self->closing;
        self->closing = w->next;
        free(w);
    }
    free(self);
    *self_p = NULL;
}
