/* gateway/route_webhook.c — POST /webhook and POST
 * /sessions/{id}/external-events (WIRE §17.4): strict JSON in, admitted to
 * the node's durable inbox, answered 202 only once the entry is durable,
 * like an envelope before its ack. X-Idempotency-Key makes a retry return
 * the first answer and queue nothing, across restarts: the key's row is
 * written in the inbox transaction of its entry (spec/webhook.pml, WIRE
 * §14.11), reserved in memory (BUSY) while that commit is owed, and
 * remembered in memory from the commit on (the token store's idempotency
 * table, loaded from the inbox at start). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "gateway/events.h"
#include "gateway/ingress_body.h"
#include "gateway/routes_auth.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/workers/turn_source.h"
#include "router/workers/turns.h"

#define S_WAITERS_MAX 1024u          /* answers waiting for durability */
#define S_POLL_MS 100u               /* fallback check, as comms does for acks */
#define S_EVENTS_PREFIX "/sessions/"
#define S_EVENTS_SUFFIX "/external-events"
_Static_assert(ROUTER_INBOX_IDEM_ROWS_PER_SCOPE == ROUTER_TOKENS_IDEM_SCOPE_MAX,
               "state.db keeps the keys of a scope that memory can hold again at start");

/* One 202 owed once seq is durable. */
typedef struct s_waiter {
    gateway_ingress_t *owner;
    gateway_http_pending_t *pending;     /* NULL once told the outcome is in doubt */
    uint64_t seq;                        /* the inbox entry */
    uint64_t deadline_ms;                /* monotonic: 503 after */
    char scope[16];                      /* idempotency scope */
    char key[ROUTER_TOKENS_IDEM_KEY_MAX + 1]; /* "" without a key */
    uint64_t expires_ms;                 /* wall ms the key is remembered until */
    char body[96];                       /* the 202 body */
    struct s_waiter *prev, *next;
} s_waiter_t;

struct gateway_ingress {
    gateway_ingress_opts_t opts;
    router_loop_t *loop;
    uint8_t secret_hash[32];             /* SHA-256 of the webhook secret */
    bool has_secret;
    s_waiter_t *waiters;                 /* oldest first */
    s_waiter_t *last;
    size_t nwaiters;
    uint64_t timer;                      /* the fallback poll, 0 for none */
    gateway_events_t *events;            /* channel_event goes here, or NULL */
};

/* ---------------------------------------------------------------- answering */

static void s_unlink(gateway_ingress_t *self, s_waiter_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        self->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        self->last = w->prev;
    self->nwaiters--;
}

/* Answers w's client, unless it was answered already (in doubt). */
static void s_tell(s_waiter_t *w, int status, const char *code, const char *text)
{
    if (!w->pending)
        return;
    gateway_http_res_t *res = gateway_http_pending_res(w->pending);
    if (status == 202)
        (void) gateway_http_respond_json(res, 202, w->body);
    else
        (void) gateway_http_respond_error(res, status, code, text);
    gateway_http_pending_end(&w->pending);
}

static void s_answer(s_waiter_t *w, int status, const char *code, const char *text)
{
    s_tell(w, status, code, text);
    free(w);
}

/* A waiter whose entry is durable, and with it its key's row (one
 * transaction): the key's memory mark turns from BUSY to the answer, then
 * the 202 goes. */
static void s_durable(gateway_ingress_t *self, s_waiter_t *w)
{
    if (w->key[0] &&
        router_tokens_idem_settle(gateway_auth_tokens(self->opts.auth), w->scope, w->key,
                                  strlen(w->key), 202, w->body, w->expires_ms) != 0)
        ROUTER_LOG(ROUTER_LOG_ERROR, "gateway", "ingress: key of entry %llu not remembered: %s",
                   (unsigned long long) w->seq, strerror(errno)); /* its reservation held it */
    s_answer(w, 202, NULL, NULL);
}

/* A waiter whose entry the inbox gave back: nothing of it, key included,
 * was written, so its key is free again. */
static void s_withdrawn(gateway_ingress_t *self, s_waiter_t *w, int status, const char *code,
                        const char *text)
{
    if (w->key[0])
        router_tokens_idem_release(gateway_auth_tokens(self->opts.auth), w->scope, w->key,
                                   strlen(w->key));
    s_answer(w, status, code, text);
}

/* A drain's last call (gateway_http_pending_on_last_call): the server
 * would tell w's client "may or may not be done"; the inbox knows better,
 * as at a stop (gateway_ingress_destroy, whose answers come after the
 * loop ended and reach nobody): durable is the 202; withdrawn is told
 * nothing was queued (its key free again); an entry whose commit is
 * running is told its outcome is unknown, and w stays, without its
 * client, to settle its key when the outcome comes. */
static void s_last_call(void *ud)
{
    s_waiter_t *w = ud;
    gateway_ingress_t *self = w->owner;
    if (!w->pending)
        return;
    router_inbox_withdraw_t out = router_inbox_withdraw(self->opts.inbox, w->seq);
    if (out != ROUTER_INBOX_IS_DURABLE)
        (void) gateway_http_res_header(gateway_http_pending_res(w->pending), "Retry-After", "5");
    switch (out) {
    case ROUTER_INBOX_IS_DURABLE:
        s_unlink(self, w);
        s_durable(self, w);
        break;
    case ROUTER_INBOX_WITHDRAWN:
        s_unlink(self, w);
        s_withdrawn(self, w, 503, "shutting_down",
                    "the daemon is stopping before the request was stored; nothing was queued");
        break;
    case ROUTER_INBOX_COMMITTING:
        s_tell(w, 503, "shutting_down",
               "the daemon is stopping while the request is being stored; retry with the same "
               "X-Idempotency-Key to learn whether it was queued");
        break;
    }
}

static void s_poll(router_loop_t *loop, uint64_t id, void *ud);

static void s_check(gateway_ingress_t *self)
{
    /* The next poll first, while the slot the last one freed is there:
     * the answers below arm their connections' timers. */
    if (self->waiters && !self->timer)
        self->timer = router_loop_timer_add(self->loop, S_POLL_MS, s_poll, self);
    uint64_t durable = router_inbox_durable_seq(self->opts.inbox);
    uint64_t now = router_clock_mono_ms();
    for (s_waiter_t *w = self->waiters, *n; w; w = n) {
        n = w->next;
        if (w->seq <= durable) {
            s_unlink(self, w);
            s_durable(self, w);
        } else if (now >= w->deadline_ms) {
            /* Too late: take the entry (and its key) back, unless a commit
             * holding it is running — then its outcome decides. */
            switch (router_inbox_withdraw(self->opts.inbox, w->seq)) {
            case ROUTER_INBOX_COMMITTING:
                /* A commit that does not end (a stalled or failing disk)
                 * must not hold the client for ever: after a second timeout
                 * it is told the outcome is unknown, and the waiter stays,
                 * without it, to settle or free the key when the outcome
                 * comes. */
                if (w->pending && now >= w->deadline_ms + self->opts.durable_timeout_ms) {
                    ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                               "ingress: inbox entry %llu still being stored after %u ms: in doubt",
                               (unsigned long long) w->seq, 2 * self->opts.durable_timeout_ms);
                    s_tell(w, 503, "durability_unknown",
                           "the request is still being stored and its outcome is unknown; retry "
                           "with the same X-Idempotency-Key to learn whether it was queued");
                }
                break;
            case ROUTER_INBOX_IS_DURABLE:
                s_unlink(self, w);
                s_durable(self, w);
                break;
            case ROUTER_INBOX_WITHDRAWN:
                s_unlink(self, w);
                ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                           "ingress: inbox entry %llu not durable in %u ms: withdrawn",
                           (unsigned long long) w->seq, self->opts.durable_timeout_ms);
                s_withdrawn(self, w, 503, "not_durable",
                            "the request could not be stored in time; nothing was queued; retry");
                break;
            }
        }
    }
    if (self->waiters && !self->timer)
        self->timer = router_loop_timer_add(self->loop, S_POLL_MS, s_poll, self);
}

static void s_poll(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    gateway_ingress_t *self = ud;
    self->timer = 0;
    s_check(self);
}

void gateway_ingress_durable(gateway_ingress_t *self)
{
    if (self)
        s_check(self);
}

/* ---------------------------------------------------------------- checks */

/* The optional X-Webhook-Secret, compared as SHA-256 digests in constant
 * time (so neither the content nor the length leaks). */
static bool s_secret_ok(const gateway_ingress_t *self, const gateway_http_req_t *req)
{
    if (!self->has_secret)
        return true;
    proto_http_slice_t v;
    if (!gateway_http_req_header(req, "X-Webhook-Secret", &v))
        return false;
    uint8_t h[32];
    crypto_hash_sha256(h, (const unsigned char *) v.ptr, v.len);
    return sodium_memcmp(h, self->secret_hash, 32) == 0;
}

/* X-Idempotency-Key: 1..128 visible ASCII. Returns 0 none, 1 one, -1 bad. */
static int s_idem_key(const gateway_http_req_t *req, proto_http_slice_t *key)
{
    if (!gateway_http_req_header(req, "X-Idempotency-Key", key))
        return 0;
    if (key->len == 0 || key->len > ROUTER_TOKENS_IDEM_KEY_MAX)
        return -1;
    for (size_t i = 0; i < key->len; i++)
        if (key->ptr[i] < 0x21 || key->ptr[i] > 0x7e)
            return -1;
    return 1;
}

/* ---------------------------------------------------------------- one request */

static void s_ingress(gateway_ingress_t *self, const gateway_http_req_t *req,
                      gateway_http_res_t *res, gateway_ingress_shape_t shape, const char *session,
                      size_t session_len)
{
    router_tokens_t *tokens = gateway_auth_tokens(self->opts.auth);
    const char *scope = shape == GATEWAY_INGRESS_WEBHOOK ? "webhook" : "event";
    if (!s_secret_ok(self, req)) {
        (void) gateway_http_respond_error(res, 401, "invalid_webhook_secret",
                                          "X-Webhook-Secret is missing or wrong");
        return;
    }
    if (self->has_secret)
        gateway_http_res_authenticated(res); /* the secret is a credential */
    /* Without a secret, nothing but the network guards external events: a
     * browser (it sends Origin) may post them only from this gateway's own
     * page on this machine, not from a page whose name was rebound here. */
    if (!self->has_secret && shape == GATEWAY_INGRESS_EVENT && !gateway_auth_browser_local(req)) {
        gateway_auth_audit_req(self->opts.auth, "auth_failure", req, "origin_not_allowed");
        (void) gateway_http_respond_error(res, 403, "origin_not_allowed",
                                          "a browser may post events here only from this "
                                          "gateway's own page on this machine; servers send no "
                                          "Origin (or set gateway.webhook_secret_env)");
        return;
    }
    if (!gateway_http_req_is_json(req)) {
        (void) gateway_http_respond_error(res, 415, "unsupported_media_type",
                                          "send Content-Type: application/json");
        return;
    }
    proto_http_slice_t key = {0};
    int has_key = s_idem_key(req, &key);
    if (has_key < 0) {
        (void) gateway_http_respond_error(res, 400, "invalid_idempotency_key",
                                          "X-Idempotency-Key must be 1..128 visible ASCII");
        return;
    }
    uint64_t now = router_clock_wall_ms();
    if (has_key) {
        int status = 0;
        const char *body = NULL;
        switch (router_tokens_idem_begin(tokens, scope, key.ptr, key.len, now, &status, &body)) {
        case ROUTER_IDEM_DONE:
            (void) gateway_http_res_header(res, "Idempotent-Replayed", "true");
            (void) gateway_http_respond_json(res, status, body);
            return;
        case ROUTER_IDEM_BUSY:
            (void) gateway_http_respond_error(res, 409, "idempotency_key_in_use",
                                              "a request with this key is still being answered");
            return;
        case ROUTER_IDEM_FULL:
            (void) gateway_http_res_header(res, "Retry-After", "1");
            (void) gateway_http_respond_error(res, 503, "unavailable",
                                              "too many idempotency keys are being answered or"
                                              " were answered in the last 5 minutes");
            return;
        case ROUTER_IDEM_NEW:
            break;
        }
    }
    gateway_ingress_body_t b = {0};
    char why[128];
    char *frame = NULL;
    s_waiter_t *w = NULL;
    /* The path's session id is checked with the body (step 5), after the
     * secret, the origin and the media type. */
    if (shape == GATEWAY_INGRESS_EVENT && !gateway_ingress_id_ok(session, session_len)) {
        (void) gateway_http_respond_error(res, 400, "invalid_session_id",
                                          "a session id is 1..128 of A-Z a-z 0-9 . _ : -");
        goto fail;
    }
    gateway_ingress_reason_t r =
        gateway_ingress_body_parse(shape, req->body, req->body_len, &b, why, sizeof why);
    if (r != GATEWAY_INGRESS_OK) {
        if (r == GATEWAY_INGRESS_NOMEM)
            (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
        else
            (void) gateway_http_respond_error(
                res, 400, r == GATEWAY_INGRESS_INVALID_JSON ? "invalid_json" : "invalid_body", why);
        goto fail;
    }
    /* The session the message is for: state.db must have room for it
     * before it is accepted, since its turn stores it whatever happens. */
    char sid[GATEWAY_INGRESS_ID_MAX + 1];
    if (shape == GATEWAY_INGRESS_EVENT)
        snprintf(sid, sizeof sid, "%.*s", (int) session_len, session);
    else
        snprintf(sid, sizeof sid, "%s",
                 b.session_id[0] ? b.session_id : ROUTER_TURN_WEBHOOK_SESSION);
    const char *full = self->opts.turns ? router_turns_room(self->opts.turns, sid) : NULL;
    if (full) {
        (void) gateway_http_respond_error(res, 507, "storage_full", full);
        goto fail;
    }
    if (self->nwaiters >= S_WAITERS_MAX || !(w = calloc(1, sizeof *w))) {
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          self->nwaiters >= S_WAITERS_MAX
                                              ? "too many requests in flight"
                                              : "out of memory");
        goto fail;
    }
    /* What the inbox keeps: the body as sent for a webhook; for an event,
     * the body wrapped with the session it is for (both are JSON). */
    size_t frame_len = req->body_len;
    if (shape == GATEWAY_INGRESS_EVENT) {
        frame_len = req->body_len + session_len + 32;
        if (!(frame = malloc(frame_len + 1))) {
            (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
            goto fail;
        }
        int n = snprintf(frame, frame_len + 1, "{\"session_id\":\"%.*s\",\"event\":%s}",
                         (int) session_len, session, req->body);
        frame_len = (size_t) n;
    }
    uint8_t id[16], nobody[32] = {0};
    proto_uuid_v7_new(id);
    char uuid[PROTO_UUID_TEXT_CAP];
    proto_uuid_format(id, uuid);
    w->owner = self;
    w->expires_ms = now + ROUTER_TOKENS_IDEM_TTL_MS;
    snprintf(w->scope, sizeof w->scope, "%s", scope);
    if (has_key)
        snprintf(w->key, sizeof w->key, "%.*s", (int) key.len, key.ptr);
    if (shape == GATEWAY_INGRESS_WEBHOOK)
        snprintf(w->body, sizeof w->body, "{\"queued\":true,\"id\":\"%s\"}", uuid);
    else
        snprintf(w->body, sizeof w->body, "{\"queued\":true}");
    /* The poll that bounds the wait, armed before admission: without it
     * an admitted request whose commit fails (no durable wake-up comes)
     * would never reach its deadline, and its client would wait for ever. */
    if (!self->timer && !(self->timer = router_loop_timer_add(self->loop, S_POLL_MS, s_poll, self))) {
        (void) gateway_http_res_header(res, "Retry-After", "1");
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "no timer to bound the wait; nothing was queued; retry");
        goto fail;
    }
    /* Deferred before admission: once admitted, nothing may fail but the
     * wait itself. */
    if (!(w->pending = gateway_http_res_defer(res))) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
        goto fail;
    }
    /* The key's row rides in the entry's transaction: durable together. */
    router_inbox_idem_t idem = {.scope = scope, .key = key.ptr, .key_len = key.len,
                                .status = 202, .body = w->body, .expires_ms = w->expires_ms};
    router_inbox_outcome_t out = router_inbox_admit_keyed(
        self->opts.inbox, id, nobody, shape == GATEWAY_INGRESS_WEBHOOK ? "webhook" : "event",
        (const uint8_t *) (frame ? frame : req->body), frame_len, now, NULL,
        has_key ? &idem : NULL, &w->seq);
    if (out != ROUTER_INBOX_ADMITTED) {
        /* Answered at once after all: the server drops the deferral. */
        w->pending = NULL;
        (void) gateway_http_res_header(res, "Retry-After", "1");
        (void) gateway_http_respond_error(res, 503, out == ROUTER_INBOX_FULL ? "inbox_full"
                                                                             : "unavailable",
                                          "the inbox cannot take this now; retry");
        goto fail;
    }
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "ingress: queued %s id=%s seq=%llu bytes=%zu", scope,
               uuid, (unsigned long long) w->seq, frame_len);
    gateway_http_pending_on_last_call(w->pending, s_last_call, w);
    if (self->events) {
        router_channel_event_t ev = {
            .channel = shape == GATEWAY_INGRESS_WEBHOOK ? "webhook" : "external_event",
            .id = id, .seq = w->seq, .session_id = sid,
            .event_type = shape == GATEWAY_INGRESS_EVENT ? b.event_type : NULL,
            .bytes = frame_len};
        gateway_events_on_channel(&ev, self->events);
    }
    w->deadline_ms = router_clock_mono_ms() + self->opts.durable_timeout_ms;
    w->prev = self->last;
    if (self->last)
        self->last->next = w;
    else
        self->waiters = w;
    self->last = w;
    self->nwaiters++;
    gateway_ingress_body_clear(&b);
    free(frame);
    return;
fail:
    if (has_key > 0)
        router_tokens_idem_release(tokens, scope, key.ptr, key.len);
    gateway_ingress_body_clear(&b);
    free(frame);
    free(w);
}

static void s_webhook(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_ingress_t *self = ud;
    if (gateway_auth_require(self->opts.auth, req, res) != 0)
        return;
    s_ingress(self, req, res, GATEWAY_INGRESS_WEBHOOK, NULL, 0);
}

/* /sessions/{id}/external-events: no bearer (the optional secret guards it). */
static void s_events(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_ingress_t *self = ud;
    size_t pre = sizeof S_EVENTS_PREFIX - 1, suf = sizeof S_EVENTS_SUFFIX - 1;
    const char *p = req->path.ptr;
    size_t n = req->path.len;
    if (n <= pre + suf || memcmp(p + n - suf, S_EVENTS_SUFFIX, suf) != 0) {
        (void) gateway_http_respond_error(res, 404, "not_found", "no route for this path");
        return;
    }
    s_ingress(self, req, res, GATEWAY_INGRESS_EVENT, p + pre, n - pre - suf);
}

/* ---------------------------------------------------------------- lifecycle */

/* Start-up: a key stored with its entry by an earlier run is answered
 * from memory like one answered in this run. */
static int s_idem_loaded(const router_inbox_idem_t *row, void *ud)
{
    gateway_ingress_t *self = ud;
    /* Every live key had a memory slot when it was admitted, so they fit. */
    if (router_tokens_idem_settle(gateway_auth_tokens(self->opts.auth), row->scope, row->key,
                                  row->key_len, row->status, row->body, row->expires_ms) != 0)
        ROUTER_LOG(ROUTER_LOG_ERROR, "gateway", "ingress: a stored idempotency key of %s does "
                   "not fit in memory (%s): a retry with it may queue twice",
                   row->scope, strerror(errno));
    return 0;
}

gateway_ingress_t *gateway_ingress_new(gateway_http_t *g, router_loop_t *loop,
                                       const gateway_ingress_opts_t *opts)
{
    gateway_ingress_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->opts = *opts;
    self->loop = loop;
    if (!self->opts.durable_timeout_ms)
        self->opts.durable_timeout_ms = 10000;
    if (opts->secret_env && opts->secret_env[0]) {
        const char *secret = getenv(opts->secret_env);
        if (!secret || !secret[0]) {
            free(self);
            errno = ENOENT;
            return NULL;
        }
        crypto_hash_sha256(self->secret_hash, (const unsigned char *) secret, strlen(secret));
        self->has_secret = true;
    }
    char err[256];
    if (router_inbox_idem_load(opts->inbox, router_clock_wall_ms(), s_idem_loaded, self, err,
                               sizeof err) != 0) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "gateway", "ingress: %s", err);
        sodium_memzero(self->secret_hash, sizeof self->secret_hash);
        free(self);
        errno = EIO;
        return NULL;
    }
    if (gateway_http_route(g, "POST", "/webhook", s_webhook, self) != 0 ||
        gateway_http_route(g, "POST", S_EVENTS_PREFIX "*", s_events, self) != 0) {
        sodium_memzero(self->secret_hash, sizeof self->secret_hash);
        free(self);
        return NULL;
    }
    return self;
}

void gateway_ingress_destroy(gateway_ingress_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_ingress_t *self = *self_p;
    if (self->timer)
        (void) router_loop_timer_cancel(self->loop, self->timer);
    /* Owed answers: what is durable gets its 202; the rest is taken back
     * (nothing written, key free), unless its commit is running, whose
     * outcome is then unknown to the client: a retry with the key tells. */
    for (s_waiter_t *w = self->waiters, *n; w; w = n) {
        n = w->next;
        switch (router_inbox_withdraw(self->opts.inbox, w->seq)) {
        case ROUTER_INBOX_IS_DURABLE:
            s_durable(self, w);
            break;
        case ROUTER_INBOX_WITHDRAWN:
            s_withdrawn(self, w, 503, "shutting_down",
                        "the daemon stopped before the request was stored; nothing was queued");
            break;
        case ROUTER_INBOX_COMMITTING:
            s_answer(w, 503, "shutting_down",
                     "the daemon stopped while the request was being stored; retry with the "
                     "same X-Idempotency-Key to learn whether it was queued");
            break;
        }
    }
    sodium_memzero(self->secret_hash, sizeof self->secret_hash);
    free(self);
    *self_p = NULL;
}

void gateway_ingress_set_events(gateway_ingress_t *self, gateway_events_t *events)
{
    if (self)
        self->events = events;
}
