/* gateway/route_pair.c — POST /pair: a one-time code for a bearer token
 * (WIRE §17.2). Bad codes are counted per client address and a run of them
 * locks the client out; both the token and the count are durable before
 * the client hears the answer, unless the disk has not taken them within
 * the route's wait (a full or stalled disk is retried for ever): then a
 * right code is told no token was issued, a wrong one what the count in
 * memory says.
 *
 * A right code is held, not spent, while its token is written: it is
 * spent when the token reaches its client (200), and usable again when no
 * token was issued (the store refused the write, the disk did not take it
 * in time, there was no memory to wait or to answer). A token nobody was
 * shown never works for anyone: its secret is wiped before the answer
 * that releases the code, and a row that lands after that answer is
 * revoked. Neither outcome touches the client's count of bad codes but
 * the 200, which restarts it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "gateway/routes_auth.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/net/addr.h"

/* One pairing answer waiting for its row to be durable. Freed by
 * s_written alone, which the store runs exactly once for every write it
 * took (on the loop, or inside router_tokens_stop): the deadline only
 * answers. */
typedef struct {
    gateway_http_pending_t *pending;         /* the deferred answer, NULL once answered */
    router_loop_t *loop;                     /* where the deadline runs (NULL: none) */
    router_tokens_t *tokens;                 /* paired: where a row nobody holds is revoked */
    gateway_auth_t *auth;                    /* paired: the code held */
    uint64_t hold;                           /* paired: the hold on the code, 0 once ended */
    uint64_t timer;                          /* the deadline, 0 once fired or cancelled */
    bool late;                               /* answered without the write's outcome */
    bool paired;                             /* a token (else a bad code) */
    uint64_t until_ms;                       /* bad code: locked until, 0 for not */
    char id[ROUTER_TOKENS_ID_LEN + 1];       /* paired: the token's id */
    char token[GATEWAY_AUTH_TOKEN_LEN + 1];  /* paired: the token to hand over */
    char client[GATEWAY_AUTH_CLIENT_MAX];    /* paired: whose bad codes a 200 forgives */
} s_wait_t;

/* Ends w's hold on the code: spent when its token reached the client,
 * else usable again (only once: a later hold may be another request's).
 * True when the code is usable again (not when a newer one replaced it). */
static bool s_hold_end(s_wait_t *w, bool issued)
{
    bool usable = false;
    if (!w->hold)
        return false;
    if (issued)
        gateway_auth_code_spend(w->auth, w->hold);
    else
        usable = gateway_auth_code_release(w->auth, w->hold);
    w->hold = 0;
    return usable;
}

/* What a client told "no token was issued" may do with its code. */
static const char *s_code_fate(bool usable)
{
    return usable ? "the pairing code is still valid: retry"
                  : "a newer pairing code has replaced this one: ask for it";
}

/* The lockout key of a client, as sources are counted and comms pairing
 * keys it (router_addr_source, WIRE §9.1, §17.2): an IPv4 client of a
 * dual-stack ([::]) listener as the IPv4 address it is (else moving the
 * gateway between 127.0.0.1 and [::] forgot every lock), an IPv6 client
 * as its /64 (else each of its 2^64 addresses had 5 guesses). */
static void s_client_key(const router_addr_t *peer, char out[GATEWAY_AUTH_CLIENT_MAX])
{
    router_addr_source(peer, out);
}

static void s_too_many(gateway_http_res_t *res, uint64_t until_ms, uint64_t now_ms)
{
    char after[24];
    uint64_t s = until_ms > now_ms ? (until_ms - now_ms + 999) / 1000 : 1;
    snprintf(after, sizeof after, "%llu", (unsigned long long) s);
    (void) gateway_http_res_header(res, "Retry-After", after);
    (void) gateway_http_respond_error(res, 429, "too_many_attempts",
                                      "too many bad pairing codes from this address; wait");
}

static void s_no_room(gateway_http_res_t *res)
{
    (void) gateway_http_respond_error(res, 507, "too_many_tokens",
                                      "every token slot is taken: revoke tokens no longer used "
                                      "(DELETE /api/tokens/{id})");
}

/* A bad code's answer, as the count in memory says. */
static void s_refused(gateway_http_res_t *res, uint64_t until_ms)
{
    if (until_ms)
        s_too_many(res, until_ms, router_clock_wall_ms());
    else
        (void) gateway_http_respond_error(res, 401, "invalid_pairing_code",
                                          "the pairing code is wrong or spent");
}

/* On the loop thread: the token or the bad-code count is durable (ok), or
 * could not be written. Answers the client unless the deadline did, then
 * frees w (the only place that does). */
static void s_written(bool ok, void *ud)
{
    s_wait_t *w = ud;
    if (w->timer) {
        (void) router_loop_timer_cancel(w->loop, w->timer);
        w->timer = 0;
    }
    if (w->late || !w->pending) {
        if (ok && w->paired)
            gateway_auth_orphan_revoke(w->tokens, w->id, "pairing");
        s_hold_end(w, false); /* answered without a token: released then, this is a no-op */
        goto done;
    }
    gateway_http_res_t *res = gateway_http_pending_res(w->pending);
    if (!ok) {
        s_hold_end(w, false);
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "the pairing state could not be stored; no token "
                                          "was issued");
    } else if (w->paired) {
        char body[128];
        snprintf(body, sizeof body, "{\"paired\":true,\"token\":\"%s\"}", w->token);
        gateway_http_res_authenticated(res); /* the code was a credential */
        if (gateway_http_respond_json(res, 200, body) != 0) { /* the token reached nobody */
            gateway_auth_orphan_revoke(w->tokens, w->id, "pairing");
            s_hold_end(w, false);
        } else {
            s_hold_end(w, true);
            router_tokens_forgive(w->tokens, w->client); /* a token issued restarts the count */
            ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "paired a new bearer token");
        }
        sodium_memzero(body, sizeof body);
    } else {
        s_refused(res, w->until_ms);
    }
    gateway_http_pending_end(&w->pending);
done:
    sodium_memzero(w, sizeof *w);
    free(w);
}

/* The disk has not taken the write within the wait: the client hears now
 * what is true now, and s_written later answers nobody. */
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
    if (w->paired) {
        /* Its secret is never shown, so the row that may land later
         * (and is revoked then) works for nobody: the code may pair again. */
        sodium_memzero(w->token, sizeof w->token);
        char text[192];
        snprintf(text, sizeof text, "no token was issued: the disk has not taken it in time; %s",
                 s_code_fate(s_hold_end(w, false)));
        (void) gateway_http_respond_error(res, 503, "unavailable", text);
    } else {
        /* The count is in force in memory, so this client is refused as it
         * says; only a restart before the disk takes it forgets it. */
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "pairing: a bad code's count is not durable in "
                   "time; answered from memory");
        s_refused(res, w->until_ms);
    }
    gateway_http_pending_end(&w->pending);
}

static void s_wait_free(s_wait_t *w)
{
    if (w->timer)
        (void) router_loop_timer_cancel(w->loop, w->timer);
    sodium_memzero(w, sizeof *w);
    free(w);
}

static void s_pair_at(gateway_route_pair_t *route, const gateway_http_req_t *req,
                      gateway_http_res_t *res)
{
    gateway_auth_t *auth = route->auth;
    router_tokens_t *tokens = gateway_auth_tokens(auth);
    uint64_t now = router_clock_wall_ms();
    char client[GATEWAY_AUTH_CLIENT_MAX];
    s_client_key(req->peer, client);
    uint64_t until = router_tokens_locked_until(tokens, client, now);
    if (until) {
        gateway_auth_audit_req(auth, "pair_failed", req, "locked_out");
        s_too_many(res, until, now);
        return;
    }
    proto_http_slice_t code, label;
    if (!gateway_http_req_header(req, "X-Pairing-Code", &code)) {
        (void) gateway_http_respond_error(res, 400, "missing_pairing_code",
                                          "send the code in X-Pairing-Code");
        return;
    }
    char name[ROUTER_TOKENS_NAME_MAX + 1] = "";
    if (gateway_http_req_header(req, "X-Token-Name", &label)) {
        if (!gateway_auth_token_name_ok(label.ptr, label.len)) {
            (void) gateway_http_respond_error(res, 400, "invalid_token_name",
                                              "X-Token-Name: 1 to 64 octets, no control "
                                              "characters");
            return;
        }
        memcpy(name, label.ptr, label.len);
        name[label.len] = '\0';
    }
    /* No room for another token: said before the code is looked at, since
     * looking spends it, and the answer tells the user to revoke one and
     * try again — with a spent code that was 401, wrong or spent. (A mint
     * in flight can still fill the last slot meanwhile: 507 below.) */
    if (router_tokens_count(tokens) >= ROUTER_TOKENS_MAX) {
        s_no_room(res);
        return;
    }
    s_wait_t *w = calloc(1, sizeof *w);
    if (!w) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
        return;
    }
    w->loop = route->loop;
    w->tokens = tokens;
    w->auth = auth;
    /* The deadline before the code is looked at: a request the server
     * cannot bound is refused with the code unspent and nothing counted. */
    if (w->loop) {
        unsigned ms = route->wait_ms ? route->wait_ms : GATEWAY_TOKENS_WAIT_MS;
        w->timer = router_loop_timer_add(w->loop, ms, s_expired, w);
        if (!w->timer) {
            ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                       "pairing: no timer to bound the wait for the disk (%s)", strerror(errno));
            (void) gateway_http_respond_error(res, 503, "unavailable",
                                              "no timer to bound the wait for the disk; the "
                                              "code was not looked at; retry");
            s_wait_free(w);
            return;
        }
    }
    int rc;
    if (gateway_auth_code_take(auth, code.ptr, code.len, &w->hold)) {
        uint8_t hash[32];
        w->paired = true;
        memcpy(w->client, client, sizeof w->client);
        gateway_auth_token_new(w->token, hash);
        router_tokens_id(hash, w->id);
        rc = router_tokens_add(tokens, hash, ROUTER_TOKEN_OPERATOR, name, now, s_written, w);
        gateway_auth_audit_req(auth, "pair", req, "code_accepted");
    } else {
        rc = router_tokens_fail(tokens, client, now, GATEWAY_PAIR_FAILURES_MAX,
                                GATEWAY_PAIR_LOCK_MS, &w->until_ms, s_written, w);
        gateway_auth_audit_req(auth, "pair_failed", req, w->until_ms ? "invalid_code_locked_out"
                                                                    : "invalid_code");
        if (w->until_ms)
            ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                       "pairing: %u bad codes in a row from %s: locked out for %u s",
                       GATEWAY_PAIR_FAILURES_MAX, client, GATEWAY_PAIR_LOCK_MS / 1000);
    }
    if (rc != 0) {
        int e = errno;
        bool usable = s_hold_end(w, false); /* nothing was written: the code was not used */
        char text[192];
        snprintf(text, sizeof text, "the pairing state cannot be stored now; no token was "
                 "issued: %s", s_code_fate(usable));
        if (!w->paired) /* counted in memory all the same, as at the deadline */
            s_refused(res, w->until_ms);
        else if (e == ENOSPC)
            s_no_room(res);
        else
            (void) gateway_http_respond_error(res, 503, "unavailable", text);
        s_wait_free(w);
        return;
    }
    /* The callback runs from a post, never inside this call, so the
     * deferral is in place first. */
    w->pending = gateway_http_res_defer(res);
    if (w->pending)
        return;
    w->late = true; /* what lands answers nobody: a paired row is revoked */
    if (w->timer) {
        (void) router_loop_timer_cancel(w->loop, w->timer);
        w->timer = 0;
    }
    sodium_memzero(w->token, sizeof w->token); /* a row that lands works for nobody */
    char text[128];
    snprintf(text, sizeof text, "no token was issued: out of memory; %s",
             s_code_fate(s_hold_end(w, false)));
    if (w->paired)
        (void) gateway_http_respond_error(res, 503, "unavailable", text);
    else
        s_refused(res, w->until_ms); /* counted in memory */
}

static void s_pair(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    s_pair_at(ud, req, res);
}

int gateway_route_pair_serve(gateway_http_t *g, gateway_route_pair_t *route)
{
    return gateway_http_route(g, "POST", "/pair", s_pair, route);
}

