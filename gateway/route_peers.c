/* gateway/route_peers.c — the trusted peers over REST (DESIGN §5, WIRE
 * §17.3a): GET /api/peers lists the store in force (the JSON of `kith
 * peers list --json`); POST /api/peers adds a peer and DELETE
 * /api/peers/{name|peer_id} removes one. An edit is the file's locked
 * edit (router_trust_edit), run on a thread of its own because it writes
 * and fsyncs; the daemon reloads as it is answered, so the answer's change
 * is in force. Bearer-protected (operators only). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/peer_row.h"
#include "gateway/routes_auth.h"
#include "proto/uuid.h"
#include "router/log.h"
#include "router/net/loop.h"
#include "router/state/trust.h"

#define S_HANDBACK_WAIT_MS 2000u /* the edit thread waits this long for room in the post queue */
#define S_HANDBACK_POLL_MS 50u   /* then the loop's poll finds the result, this often */
#define S_RELOAD_TRIES 40u       /* reloads, S_HANDBACK_POLL_MS apart, until the change is in force */

/* How an edit's result comes back to the loop thread. */
enum {
    S_EDIT_RUNNING = 0, /* the edit thread has it */
    S_EDIT_POSTED,      /* being posted (or posted: s_edit_done runs from the queue) */
    S_EDIT_STRANDED,    /* the post queue stayed full: the loop's poll takes it */
};

/* One edit: what to change, on the edit thread, and how it went. */
typedef struct {
    gateway_route_peers_t *route;
    gateway_http_pending_t *pending;          /* the operator's request */
    atomic_int handback;                      /* S_EDIT_*: set by the edit thread */
    uint64_t timer;                           /* loop: the poll for a stranded result, or the
                                                 next reload; 0: none */
    unsigned reloads;                         /* loop: reloads tried since the file was written */
    bool remove;                              /* DELETE (else POST) */
    gateway_peer_row_t row;                   /* POST: the row */
    /* DELETE: the row named */
    char which[ROUTER_PEER_NAME_MAX + 1];
    /* out */
    int rc;                                   /* router_trust_edit's */
    int status;                               /* the refusal's HTTP status */
    const char *code;                         /* and its code */
    char err[ROUTER_TRUST_ERR_MAX];
    char removed[ROUTER_PEER_NAME_MAX + PROTO_UUID_TEXT_CAP + 2]; /* DELETE: "name peer_id" */
} s_edit_t;

static void s_edit_free(s_edit_t *e)
{
    gateway_peer_row_clear(&e->row);
    free(e);
}

/* ---------------------------------------------------------------- GET */

static void s_list(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_peers_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    char *json = router_trust_to_json(router_node_trust_view(self->node), true);
    if (!json) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    (void) gateway_http_respond_json(res, 200, json);
    free(json);
}

/* ---------------------------------------------------------------- the edit thread */

/* On the edit thread, inside the file's lock. */
static int s_apply(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    s_edit_t *e = ud;
    if (!e->remove) {
        const gateway_peer_row_t *r = &e->row;
        if (router_trust_by_pubkey(t, r->pk)) {
            e->status = 409;
            e->code = "peer_exists";
            snprintf(err, errcap, "this pubkey is trusted already: DELETE it first to change it");
            return -1;
        }
        if (router_trust_add(t, r->name, r->pk, r->addr, r->description, r->labels, r->nlabels,
                             err, errcap) != 0) {
            e->status = 400;
            e->code = "invalid_peer";
            return -1;
        }
        return router_trust_set_profile(t, router_trust_by_pubkey(t, r->pk), r->profile);
    }
    uint8_t id[PROTO_UUID_LEN];
    const router_peer_t *p = NULL;
    size_t matches = 0;
    if (proto_uuid_parse(e->which, strlen(e->which), id) == 0 &&
        (p = router_trust_by_peer_id(t, id)))
        matches = 1;
    else
        p = router_trust_by_name(t, e->which, &matches);
    if (matches != 1) {
        e->status = matches ? 409 : 404;
        e->code = matches ? "ambiguous_name" : "not_found";
        snprintf(err, errcap, matches ? "%zu peers have this name: remove one by its peer_id"
                                      : "no trusted peer has this name or peer_id",
                 matches);
        return -1;
    }
    char uuid[PROTO_UUID_TEXT_CAP];
    proto_uuid_format(p->peer_id, uuid);
    snprintf(e->removed, sizeof e->removed, "%s %s", p->name, uuid);
    return router_trust_remove(t, p);
}

static void s_edit_done(router_loop_t *loop, void *arg);

/* The edit thread: the file's locked edit, then the result back to the
 * loop. The file may be written already, so the result must reach the
 * operator whatever the loop's post queue holds: posted when there is room
 * (within S_HANDBACK_WAIT_MS; a stopped loop waits for this thread, so not
 * for ever, and it runs what was posted even as it is torn down), else
 * left for the loop's poll (s_edit_poll). Either way e is the loop's from
 * then on, and this thread does not touch it again. */
static void *s_edit_main(void *arg)
{
    s_edit_t *e = arg;
    gateway_route_peers_t *self = e->route;
    router_loop_t *loop = router_node_loop(self->node);
    e->status = 500;
    e->code = "trust_store_error";
    e->rc = router_trust_edit(router_node_home(self->node), s_apply, e, e->err, sizeof e->err);
    atomic_store(&e->handback, S_EDIT_POSTED);
    if (router_loop_post_wait(loop, s_edit_done, e, S_HANDBACK_WAIT_MS) != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "the loop's post queue is full: a peer edit's answer waits for its poll");
        atomic_store(&e->handback, S_EDIT_STRANDED);
    }
    pthread_mutex_lock(&self->mu);
    self->writers--;
    pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
    return NULL;
}

/* On the loop, every S_HANDBACK_POLL_MS while an edit runs: takes the
 * result whose post could not be queued. */
static void s_edit_poll(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    s_edit_t *e = ud;
    e->timer = 0;
    if (atomic_load(&e->handback) == S_EDIT_STRANDED) {
        s_edit_done(loop, e);
        return;
    }
    e->timer = router_loop_timer_add(loop, S_HANDBACK_POLL_MS, s_edit_poll, e);
    if (!e->timer) /* only a post can answer now */
        ROUTER_LOG(ROUTER_LOG_ERROR, "gateway", "no timer to wait for a peer edit");
}

/* Whether the edit written is what the node has in force. */
static bool s_edit_in_force(const s_edit_t *e)
{
    const router_trust_t *view = router_node_trust_view(e->route->node);
    if (!e->remove)
        return router_trust_by_pubkey(view, e->row.pk) != NULL;
    uint8_t id[PROTO_UUID_LEN];
    const char *sp = strchr(e->removed, ' ');
    return !sp || proto_uuid_parse(sp + 1, strlen(sp + 1), id) != 0 ||
           router_trust_by_peer_id(view, id) == NULL;
}

static void s_edit_reload(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    s_edit_t *e = ud;
    e->timer = 0;
    s_edit_done(loop, e);
}

/* On the loop: the file is written (or not); the node reloads it, so the
 * answer's change is the one in force. A reload that fails (out of memory)
 * keeps the store as it was: it is tried again, a while, before the
 * answer says the change is made (a removed peer still trusted, an added
 * one still refused, after a 200 or 201 that says otherwise). */
static void s_edit_done(router_loop_t *loop, void *arg)
{
    s_edit_t *e = arg;
    gateway_route_peers_t *self = e->route;
    if (e->timer)
        (void) router_loop_timer_cancel(loop, e->timer);
    e->timer = 0;
    gateway_http_res_t *res = gateway_http_pending_res(e->pending);
    pthread_mutex_lock(&self->mu);
    bool stopped = self->stopped;
    pthread_mutex_unlock(&self->mu);
    if (stopped) {
        /* The daemon is going: nobody is listening for the answer. */
    } else if (e->rc != 0) {
        if (e->status == 500)
            ROUTER_LOG(ROUTER_LOG_ERROR, "gateway", "peer edit not saved: %s", e->err);
        (void) gateway_http_respond_error(res, e->status, e->code, e->err);
    } else {
        router_node_trust_reload(self->node, e->remove ? "DELETE /api/peers" : "POST /api/peers");
        if (!s_edit_in_force(e) && ++e->reloads < S_RELOAD_TRIES &&
            (e->timer = router_loop_timer_add(loop, S_HANDBACK_POLL_MS, s_edit_reload, e)))
            return;
        if (!s_edit_in_force(e))
            ROUTER_LOG(ROUTER_LOG_ERROR, "gateway", "peer edit saved but not in force after %u "
                       "reloads: the next reload of trusted_peers.json applies it", e->reloads);
        if (e->remove) {
            char body[160];
            const char *sp = strchr(e->removed, ' ');
            snprintf(body, sizeof body, "{\"removed\":true,\"name\":\"%.*s\",\"peer_id\":\"%s\"}",
                     (int) (sp - e->removed), e->removed, sp + 1);
            (void) gateway_http_respond_json(res, 200, body);
        } else {
            const router_peer_t *p = router_trust_by_pubkey(router_node_trust_view(self->node),
                                                            e->row.pk);
            char *json = p ? router_peer_to_json(p) : NULL;
            /* The row is written: without it to show (the file changed
             * again before the reload, or no memory) the answer still says
             * so, never a refusal. */
            if (json)
                (void) gateway_http_respond_json(res, 201, json);
            else
                (void) gateway_http_respond_json(res, 201, "{\"added\":true}");
            free(json);
        }
    }
    gateway_http_pending_end(&e->pending);
    s_edit_free(e);
}

/* Defers res and starts e's thread; answers (and frees e) when it cannot. */
static void s_edit_start(gateway_route_peers_t *self, s_edit_t *e, gateway_http_res_t *res)
{
    e->route = self;
    pthread_mutex_lock(&self->mu);
    bool room = self->writers < GATEWAY_PEERS_EDITS_MAX;
    if (room)
        self->writers++;
    pthread_mutex_unlock(&self->mu);
    if (!room) {
        (void) gateway_http_res_header(res, "Retry-After", "1");
        (void) gateway_http_respond_error(res, 503, "busy", "other peer edits are being written");
        s_edit_free(e);
        return;
    }
    pthread_attr_t attr;
    pthread_t th;
    router_loop_t *loop = router_node_loop(self->node);
    e->pending = gateway_http_res_defer(res);
    /* The poll is armed before anything is written: an edit that could not
     * come back is never started (503, nothing applied). */
    e->timer = e->pending ? router_loop_timer_add(loop, S_HANDBACK_POLL_MS, s_edit_poll, e) : 0;
    int rc = e->timer && pthread_attr_init(&attr) == 0 ? 0 : -1;
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&th, &attr, s_edit_main, e) == 0 ? 0 : -1;
        pthread_attr_destroy(&attr);
    }
    if (rc == 0)
        return;
    if (e->timer)
        (void) router_loop_timer_cancel(loop, e->timer);
    pthread_mutex_lock(&self->mu);
    self->writers--;
    pthread_mutex_unlock(&self->mu);
    if (e->pending) {
        (void) gateway_http_respond_error(gateway_http_pending_res(e->pending), 503, "unavailable",
                                          "cannot start the edit now: nothing was changed");
        gateway_http_pending_end(&e->pending);
    } else {
        (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
    }
    s_edit_free(e);
}

/* An edit needs the file: a node without a home has none (router_trust_edit
 * would make one under the working directory, named from a NULL). */
static bool s_home_ok(gateway_route_peers_t *self, gateway_http_res_t *res)
{
    if (router_node_home(self->node))
        return true;
    (void) gateway_http_respond_error(res, 503, "unavailable",
                                      "this node keeps no trusted_peers.json to edit");
    return false;
}

/* ---------------------------------------------------------------- POST */

static void s_add(gateway_route_peers_t *self, const gateway_http_req_t *req,
                  gateway_http_res_t *res)
{
    if (!gateway_http_req_is_json(req)) {
        (void) gateway_http_respond_error(res, 415, "unsupported_media_type",
                                          "send Content-Type: application/json");
        return;
    }
    s_edit_t *e = calloc(1, sizeof *e);
    if (!e) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    const char *code = NULL;
    char why[GATEWAY_PEER_ROW_WHY_MAX];
    if (gateway_peer_row_decode((const uint8_t *) req->body, req->body_len, &e->row, &code, why,
                                sizeof why) != 0) {
        (void) gateway_http_respond_error(res, strcmp(code, "unavailable") ? 400 : 503, code, why);
        free(e);
        return;
    }
    s_edit_start(self, e, res);
}

/* ---------------------------------------------------------------- DELETE */

static void s_one(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_peers_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    if (!s_home_ok(self, res))
        return;
    static const char prefix[] = "/api/peers/";
    const char *which = req->path.ptr + sizeof prefix - 1;
    size_t len = req->path.len - (sizeof prefix - 1);
    /* A name is [A-Za-z0-9._-], a peer_id a UUID: nothing else can match. */
    bool ok = len > 0 && len <= ROUTER_PEER_NAME_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-",
                    which[i]) != NULL;
    if (!ok) {
        (void) gateway_http_respond_error(res, 404, "not_found",
                                          "no trusted peer has this name or peer_id");
        return;
    }
    s_edit_t *e = calloc(1, sizeof *e);
    if (!e) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
        return;
    }
    e->remove = true;
    memcpy(e->which, which, len);
    e->which[len] = '\0';
    s_edit_start(self, e, res);
}

static void s_collection(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_peers_t *self = ud;
    if (!gateway_http_req_method_is(req, "POST")) {
        s_list(req, res, ud);
        return;
    }
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    if (!s_home_ok(self, res))
        return;
    s_add(self, req, res);
}

/* ---------------------------------------------------------------- lifecycle */

int gateway_route_peers(gateway_http_t *g, gateway_route_peers_t *route)
{
    if (!route->ready) {
        pthread_mutex_init(&route->mu, NULL);
        pthread_cond_init(&route->cv, NULL);
        route->ready = true;
    }
    if (gateway_http_route(g, "GET", "/api/peers", s_collection, route) != 0 ||
        gateway_http_route(g, "POST", "/api/peers", s_collection, route) != 0 ||
        /* DELETE only: the server answers other methods (405 with Allow:
         * DELETE, 501 for one it does not know). */
        gateway_http_route(g, "DELETE", "/api/peers/*", s_one, route) != 0)
        return -1;
    return 0;
}

void gateway_route_peers_stop(gateway_route_peers_t *route)
{
    if (!route || !route->ready)
        return;
    pthread_mutex_lock(&route->mu);
    route->stopped = true;
    while (route->writers > 0)
        pthread_cond_wait(&route->cv, &route->mu);
    pthread_mutex_unlock(&route->mu);
}
