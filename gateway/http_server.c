/* gateway/http_server.c — the HTTP/1.1 server core: accepting, reading each
 * request (head, then body) off a connection's byte stream, deadlines,
 * dispatch to the route table, keep-alive, pipelining and backpressure.
 *
 * Input handling, in short: on_data hands a loop-owned buffer that is valid
 * only during the call. A request is parsed straight from it; only what must
 * outlive the call is copied: a head split across reads (at most head_max
 * octets), a complete head whose body is still to come, the decoded body,
 * and the rest of a read that arrived just before reads were paused. */
#include "gateway/http_server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/http_internal.h"
#include "gateway/json_text.h"
#include "router/log.h"
#include "router/net/conn.h"

/* First allocation for a decoded body; it then doubles as data arrives, so
 * a client announcing a large body it never sends pins little memory. */
#define S_BODY_CHUNK 4096u
/* How long before a drain's deadline the requests still owed an answer are
 * told 503 (half the drain when it is shorter than twice this). */
#define S_LAST_CALL_MS 1000u

static const char s_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---------------------------------------------------------------- options */

void gateway_http_opts_from_config(gateway_http_opts_t *opts, const router_config_t *cfg)
{
    memset(opts, 0, sizeof *opts);
    opts->head_max = cfg->limits.http_head_max;
    opts->headers_max = cfg->limits.http_headers_max;
    opts->body_max = cfg->limits.http_body_max;
    opts->attachment_body_max = cfg->limits.http_attachment_body_max;
    opts->head_timeout_ms = cfg->limits.http_head_timeout_ms;
    opts->body_timeout_ms = cfg->limits.http_body_timeout_ms;
    opts->idle_timeout_ms = cfg->limits.http_idle_timeout_ms;
    opts->max_connections = cfg->gateway.max_connections;
    opts->unauth_max = cfg->limits.http_unauth_connections_max;
    opts->unauth_per_source_max = cfg->limits.http_unauth_per_source_max;
    opts->unauth_body_max = cfg->limits.partial_frame_bytes_max;
    opts->send_limit = cfg->limits.conn_unsent_max;
}

/* Fills the defaults in and derives the parser's limits; -1 when out of range. */
static int s_opts_resolve(const gateway_http_opts_t *in, gateway_http_opts_t *o,
                          proto_http_limits_t *limits)
{
    *o = in ? *in : (gateway_http_opts_t){0};
    if (!o->head_max)
        o->head_max = PROTO_HTTP_HEAD_MAX;
    if (!o->headers_max)
        o->headers_max = PROTO_HTTP_HEADERS_MAX;
    if (!o->body_max)
        o->body_max = PROTO_HTTP_BODY_MAX;
    if (!o->attachment_body_max)
        o->attachment_body_max = PROTO_HTTP_BODY_ATTACHMENT_MAX;
    if (!o->max_connections)
        o->max_connections = ROUTER_LOOP_MAX_CONNS;
    if (!o->unauth_max)
        o->unauth_max = GATEWAY_HTTP_UNAUTH_MAX;
    if (o->unauth_max > o->max_connections)
        o->unauth_max = o->max_connections;
    if (!o->unauth_per_source_max)
        o->unauth_per_source_max = GATEWAY_HTTP_UNAUTH_PER_SOURCE_MAX;
    if (!o->unauth_body_max)
        o->unauth_body_max = GATEWAY_HTTP_UNAUTH_BODY_MAX;
    if (o->unauth_per_source_max > o->unauth_max)
        o->unauth_per_source_max = o->unauth_max;
    if (!o->head_timeout_ms)
        o->head_timeout_ms = GATEWAY_HTTP_HEAD_TIMEOUT_MS;
    if (!o->body_timeout_ms)
        o->body_timeout_ms = GATEWAY_HTTP_BODY_TIMEOUT_MS;
    if (!o->idle_timeout_ms)
        o->idle_timeout_ms = GATEWAY_HTTP_IDLE_TIMEOUT_MS;
    if (!o->send_high_water)
        o->send_high_water = GATEWAY_HTTP_SEND_HIGH_WATER;
    /* The body is kept whole with a NUL after it, so its size must fit. */
    if (o->head_max > UINT32_MAX || o->body_max >= SIZE_MAX / 2)
        return -1;
    limits->max_head = (uint32_t) o->head_max;
    limits->max_headers = o->headers_max;
    limits->max_target = limits->max_head < PROTO_HTTP_TARGET_MAX ? limits->max_head
                                                                   : PROTO_HTTP_TARGET_MAX;
    limits->max_body = o->body_max;
    proto_http_parser_t probe;
    return proto_http_parser_init(&probe, limits);
}

/* ---------------------------------------------------------------- deadlines */

static void s_on_timer(router_loop_t *loop, uint64_t id, void *ud);

static void s_timer_stop(gateway_http_conn_t *hc)
{
    if (hc->timer)
        (void) router_loop_timer_cancel(hc->g->loop, hc->timer);
    hc->timer = 0;
}

/* Arms the timer for hc->deadline. Without a timer slot the connection
 * cannot be bounded, so it is cut. */
static void s_timer_arm(gateway_http_conn_t *hc, uint64_t now)
{
    uint64_t ms = hc->deadline > now ? hc->deadline - now : 0;
    hc->timer = router_loop_timer_add(hc->g->loop, ms, s_on_timer, hc);
    hc->timer_due = hc->deadline;
    if (!hc->timer) {
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "conn %llu cut: no timer left (%s)",
                   (unsigned long long) router_conn_id(hc->conn), strerror(errno));
        hc->phase = GATEWAY_HTTP_CLOSING;
        router_conn_abort(hc->conn);
    }
}

/* The current phase times out `ms` from now. Most changes push the
 * deadline out: the armed timer is then left alone and re-arms itself when
 * it fires early, so a busy keep-alive connection costs few timer calls. */
static void s_deadline(gateway_http_conn_t *hc, unsigned ms)
{
    uint64_t now = router_loop_now_ms(hc->g->loop);
    hc->deadline = now + ms;
    if (hc->timer && hc->timer_due <= hc->deadline)
        return;
    s_timer_stop(hc);
    s_timer_arm(hc, now);
}

/* ---------------------------------------------------------------- closing and refusing */

static void s_close(gateway_http_conn_t *hc)
{
    if (hc->phase == GATEWAY_HTTP_CLOSING)
        return;
    hc->phase = GATEWAY_HTTP_CLOSING;
    s_timer_stop(hc);
    router_conn_close(hc->conn); /* flushes what was answered, bounded by the loop */
}

static const char *s_reject_code(int reject)
{
    switch (reject) {
    case GATEWAY_HTTP_REJECT_TIMEOUT: return "request_timeout";
    case GATEWAY_HTTP_REJECT_CONN_LIMIT: return "too_many_connections";
    case GATEWAY_HTTP_REJECT_UPGRADE: return "websocket_not_found";
    case GATEWAY_HTTP_REJECT_HANDSHAKE: return "websocket_handshake";
    case GATEWAY_HTTP_REJECT_UNAUTH_SOURCE: return "unauth_per_source";
    case GATEWAY_HTTP_REJECT_UNAUTH_FULL: return "unauth_full";
    case GATEWAY_HTTP_REJECT_UNAUTH_EVICTED: return "unauth_evicted";
    case GATEWAY_HTTP_REJECT_UNAUTH_BODIES: return "unauth_bodies_full";
    case GATEWAY_HTTP_REJECT_INCOMPLETE: return "request_incomplete";
    }
    return proto_http_reason_str((proto_http_reason_t) reject);
}

/* Answers a request the server will not serve with a JSON error, counts
 * it, and closes: what follows on the connection cannot be trusted to
 * start a request. */
static void s_refuse(gateway_http_conn_t *hc, int status, int reject, const char *text)
{
    gateway_http_t *g = hc->g;
    router_metric_inc(g->m_rejected[reject], 1);
    ROUTER_LOG(ROUTER_LOG_DEBUG, "gateway", "conn %llu: refused with %d: %s",
               (unsigned long long) router_conn_id(hc->conn), status, s_reject_code(reject));
    gateway_http_res_t res;
    gateway_http_res_init(&res, hc, true);
    (void) gateway_http_respond_error(&res, status, s_reject_code(reject), text);
    s_close(hc);
}

/* s_refuse for a parser or body decoder reason, naming the limit broken. */
static void s_refuse_reason(gateway_http_conn_t *hc, proto_http_reason_t reason)
{
    const proto_http_limits_t *l = &hc->g->limits;
    char text[128];
    switch (reason) {
    case PROTO_HTTP_ERR_HEAD_TOO_LARGE:
        snprintf(text, sizeof text, "the request head is larger than %u octets", l->max_head);
        break;
    case PROTO_HTTP_ERR_TOO_MANY_FIELDS:
        snprintf(text, sizeof text, "the request has more than %u header fields",
                 l->max_headers);
        break;
    case PROTO_HTTP_ERR_TARGET_TOO_LONG:
        snprintf(text, sizeof text, "the request target is longer than %u octets",
                 l->max_target);
        break;
    case PROTO_HTTP_ERR_BODY_TOO_LARGE:
        snprintf(text, sizeof text, "the request body is larger than %llu octets",
                 (unsigned long long) l->max_body);
        break;
    default:
        snprintf(text, sizeof text, "%s", gateway_http_reason_text(reason));
        break;
    }
    s_refuse(hc, proto_http_reason_status(reason), (int) reason, text);
}

/* Out of memory for this request: 500, close. */
static void s_fail(gateway_http_conn_t *hc, const char *what)
{
    ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "conn %llu: no memory for %s",
               (unsigned long long) router_conn_id(hc->conn), what);
    gateway_http_res_t res;
    gateway_http_res_init(&res, hc, true);
    (void) gateway_http_respond_error(&res, 500, "internal_error", "the server is out of memory");
    s_close(hc);
}

static void s_on_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    gateway_http_conn_t *hc = ud;
    hc->timer = 0;
    if (hc->phase == GATEWAY_HTTP_CLOSING)
        return;
    uint64_t now = router_loop_now_ms(loop);
    if (hc->phase == GATEWAY_HTTP_DEFERRED) {
        /* The route bounds the wait; the slot is only kept (s_dispatch),
         * re-armed with the one it frees now, never cut for. */
        hc->deadline = now + hc->g->opts.idle_timeout_ms;
        hc->timer = router_loop_timer_add(loop, hc->g->opts.idle_timeout_ms, s_on_timer, hc);
        hc->timer_due = hc->deadline;
        return;
    }
    if (now < hc->deadline) {
        s_timer_arm(hc, now);
        return;
    }
    size_t untaken = hc->paused ? router_conn_send_untaken(hc->conn) : 0;
    if (hc->paused && untaken < hc->paused_unsent) {
        /* Slow, not stopped: the client read some of its answers since the
         * deadline was set. The bound is on a client that reads nothing
         * for that long (as a send timeout is), not on the whole transfer,
         * which a slow link may take minutes over: closed at the deadline,
         * the answer was cut off once the loop's close timed out. */
        hc->paused_unsent = untaken;
        s_deadline(hc, hc->g->opts.idle_timeout_ms);
        return;
    }
    if (hc->paused || (hc->phase == GATEWAY_HTTP_WAIT && hc->served > 0)) {
        /* Idle between requests, or a client not reading its answers: no
         * request is under way, so none is answered. */
        s_close(hc);
        return;
    }
    s_refuse(hc, 408, GATEWAY_HTTP_REJECT_TIMEOUT,
             hc->phase == GATEWAY_HTTP_BODY ? "the request body did not arrive in time"
                                             : "the request head did not arrive in time");
}

/* ---------------------------------------------------------------- buffers */

/* Appends n octets to the kept head; its size is bounded by the callers
 * (never past the head limit). */
static int s_head_append(gateway_http_conn_t *hc, const char *data, size_t n)
{
    if (hc->head_len + n > hc->head_cap) {
        size_t cap = hc->head_cap ? hc->head_cap : 1024;
        while (cap < hc->head_len + n)
            cap *= 2;
        if (cap > hc->g->limits.max_head)
            cap = hc->g->limits.max_head;
        char *p = realloc(hc->head, cap);
        if (!p)
            return -1;
        hc->head = p;
        hc->head_cap = cap;
    }
    memcpy(hc->head + hc->head_len, data, n);
    hc->head_len += n;
    return 0;
}

/* A complete head still in the read buffer is copied out before that
 * buffer goes back to the loop, and the parser's results re-pointed. */
static int s_head_keep(gateway_http_conn_t *hc)
{
    const char *at = hc->head_at;
    size_t n = hc->head_len;
    hc->head_at = NULL;
    hc->head_len = 0;
    if (s_head_append(hc, at, n) != 0)
        return -1;
    ssize_t again = proto_http_parse(&hc->parser, hc->head, hc->head_len);
    return again == (ssize_t) n ? 0 : -1;
}

void gateway_http_unauth_count(gateway_http_t *g, size_t *counted, bool unauth, size_t bytes)
{
    if (!unauth)
        bytes = 0;
    g->unauth_body_held = g->unauth_body_held - *counted + bytes;
    *counted = bytes;
    router_metric_set(g->m_unauth_body, g->unauth_body_held);
}

/* The body octets hc holds count in the unauthenticated connections'
 * budget as `bytes` from now (0 once authenticated or the body is gone). */
static void s_body_count(gateway_http_conn_t *hc, size_t bytes)
{
    gateway_http_unauth_count(hc->g, &hc->body_counted, hc->unauth, bytes);
}

static void s_unauth_leave(gateway_http_conn_t *hc);

/* One client cannot be made to wait by many holding bodies open, and
 * memory stays bounded however many connections prove nothing (WIRE
 * §11.3). Sockets' unfinished messages share the budget: without them,
 * each of 2 500 unauthenticated sockets could hold a fragmented message of
 * limits.ws_message_max. */
bool gateway_http_unauth_room(gateway_http_t *g, const void *asker, size_t held, size_t cap)
{
    while (g->unauth_body_held - held + cap > g->opts.unauth_body_max) {
        gateway_http_conn_t *victim = NULL;
        for (gateway_http_conn_t *c = g->unauth_head; c; c = c->unext)
            if ((const void *) c != asker && c->phase == GATEWAY_HTTP_BODY &&
                (!victim || c->body_counted > victim->body_counted))
                victim = c;
        size_t ws_held = 0;
        gateway_ws_t *ws = gateway_ws_unauth_largest(g, asker, &ws_held);
        size_t most = victim ? victim->body_counted : 0;
        if ((most > ws_held ? most : ws_held) <= cap)
            return false;
        router_metric_inc(g->m_rejected[GATEWAY_HTTP_REJECT_UNAUTH_BODIES], 1);
        if (ws_held > most) {
            ROUTER_LOG(ROUTER_LOG_INFO, "gateway",
                       "ws %llu cut: its unfinished message (%zu octets) was the largest held by "
                       "unauthenticated connections (limits.partial_frame_bytes_max)",
                       (unsigned long long) gateway_ws_id(ws), ws_held);
            gateway_ws_unauth_cut(ws);
            continue;
        }
        ROUTER_LOG(ROUTER_LOG_INFO, "gateway",
                   "conn %llu cut: its unfinished body (%zu octets) was the largest held by "
                   "unauthenticated connections (limits.partial_frame_bytes_max)",
                   (unsigned long long) router_conn_id(victim->conn), victim->body_counted);
        s_unauth_leave(victim);
        router_conn_abort(victim->conn); /* on_close frees it */
    }
    return true;
}

/* Appends decoded body octets, keeping a NUL after them. The decoder has
 * checked the total against the body limit. Returns 0, -1 out of memory,
 * or -2 when the unauthenticated connections' body budget has no room. */
static int s_body_append(gateway_http_conn_t *hc, const char *data, size_t n)
{
    size_t need = hc->body_len + n + 1;
    if (need > hc->body_cap) {
        size_t cap = hc->body_cap ? hc->body_cap * 2 : S_BODY_CHUNK;
        if (cap < need)
            cap = need;
        if (hc->parser.has_content_length && cap > hc->parser.content_length + 1)
            cap = (size_t) hc->parser.content_length + 1;
        if (cap > hc->g->limits.max_body + 1) /* doubling must not pass the bound */
            cap = (size_t) hc->g->limits.max_body + 1;
        if (cap < need)
            cap = need;
        if (hc->unauth && !gateway_http_unauth_room(hc->g, hc, hc->body_counted, cap))
            return -2;
        char *p = realloc(hc->body_buf, cap);
        if (!p)
            return -1;
        hc->body_buf = p;
        hc->body_cap = cap;
        s_body_count(hc, cap);
    }
    memcpy(hc->body_buf + hc->body_len, data, n);
    hc->body_len += n;
    hc->body_buf[hc->body_len] = '\0';
    return 0;
}

/* Keeps the rest of a read while reads are paused; at most one read's
 * worth, as nothing more arrives until they resume. */
static void s_hold(gateway_http_conn_t *hc, const char *data, size_t n)
{
    char *p = realloc(hc->held, hc->held_len + n);
    if (!p && hc->phase == GATEWAY_HTTP_DEFERRED && hc->pending) {
        /* A 500 now would reach the client as the answer to the request
         * still owed one. That answer goes first; the input not kept is
         * not read, so the connection closes after it and the client
         * sends those requests again (RFC 9112 §9.3.2). */
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "conn %llu: no memory for pipelined input; closing after the answer owed",
                   (unsigned long long) router_conn_id(hc->conn));
        hc->pending->res.close = true;
        return;
    }
    if (!p) {
        s_fail(hc, "held input");
        return;
    }
    memcpy(p + hc->held_len, data, n);
    hc->held = p;
    hc->held_len += n;
}

/* ---------------------------------------------------------------- one request */

/* The request was answered: forget it and get ready for the next one. */
static void s_request_done(gateway_http_conn_t *hc, const gateway_http_res_t *res)
{
    gateway_http_t *g = hc->g;
    hc->head_at = NULL;
    hc->head_len = hc->head_cap = 0;
    free(hc->head);
    hc->head = NULL;
    s_body_count(hc, 0);
    hc->body_len = hc->body_cap = 0;
    free(hc->body_buf);
    hc->body_buf = NULL;
    hc->route = NULL;
    hc->head_only = false;
    if (hc->phase == GATEWAY_HTTP_CLOSING)
        return;
    if (hc->phase == GATEWAY_HTTP_STREAM) {
        s_timer_stop(hc); /* the route bounds its stream */
        return;
    }
    if (res->close) {
        s_close(hc);
        return;
    }
    if (proto_http_parser_init(&hc->parser, &g->limits) != 0) {
        s_close(hc); /* cannot happen: the limits were checked at start */
        return;
    }
    hc->phase = GATEWAY_HTTP_WAIT;
    if (router_conn_send_queued(hc->conn) > g->opts.send_high_water) {
        /* Pipelined answers pile up faster than the client reads them:
         * read no more until they are written (on_drain). */
        hc->paused = true;
        hc->paused_unsent = router_conn_send_untaken(hc->conn);
        router_conn_pause_read(hc->conn);
    }
    s_deadline(hc, g->opts.idle_timeout_ms);
}

static gateway_http_req_t s_req(const gateway_http_conn_t *hc)
{
    const proto_http_parser_t *p = &hc->parser;
    return (gateway_http_req_t){
        .method = p->method,
        .path = p->path,
        .query = p->query,
        .body = hc->body_buf ? hc->body_buf : "",
        .body_len = hc->body_len,
        .peer = router_conn_peer(hc->conn),
        .conn_id = router_conn_id(hc->conn),
        .head = p,
    };
}

/* A handler that sent nothing gets a 500 for it, and the connection closes. */
static void s_answer_missing(const gateway_http_route_t *route, gateway_http_res_t *res)
{
    ROUTER_LOG(ROUTER_LOG_ERROR, "gateway", "route %s %s%s gave no answer: 500",
               route->method[0] ? route->method : "*", route->pattern, route->prefix ? "*" : "");
    res->close = true;
    (void) gateway_http_respond_error(res, 500, "internal_error", "the handler did not answer");
}

static void s_dispatch(gateway_http_conn_t *hc)
{
    const gateway_http_route_t *route = hc->route;
    gateway_http_req_t req = s_req(hc);
    gateway_http_res_t res;
    gateway_http_res_init(&res, hc, !hc->parser.keep_alive);
    route->fn(&req, &res, route->ud);
    gateway_http_pending_t *p = res.deferred;
    if (p) {
        p->origin = NULL;
        if (!res.sent && !p->ended) {
            /* Read nothing more until the answer is sent (pipelined
             * requests are held); the route bounds the wait. The timer's
             * slot is kept all the same (s_on_timer re-arms it and does
             * nothing else), so the idle deadline after the answer needs
             * no new one: with none left then, the connection was reset
             * as the answer was queued, and the client lost it (a 202 for
             * a webhook already stored). */
            hc->pending = p;
            hc->pending->res = res;
            hc->phase = GATEWAY_HTTP_DEFERRED;
            hc->paused = true;
            router_conn_pause_read(hc->conn);
            /* The route has taken what it needs of the body: held until
             * the answer, it counted in the unauthenticated budget where
             * nothing could cut it, and a few requests slow to answer
             * locked other clients without a credential out. */
            s_body_count(hc, 0);
            free(hc->body_buf);
            hc->body_buf = NULL;
            hc->body_len = hc->body_cap = 0;
            return;
        }
        /* Deferred, then answered (or ended) at once after all. */
        free(p);
        res.deferred = NULL;
    }
    if (!res.sent)
        s_answer_missing(route, &res);
    s_request_done(hc, &res);
}

/* ---------------------------------------------------------------- unauthenticated connections */

/* Off the unauthenticated list and its source's count. Idempotent. */
static void s_unauth_leave(gateway_http_conn_t *hc)
{
    gateway_http_t *g = hc->g;
    if (!hc->unauth)
        return;
    if (hc->uprev)
        hc->uprev->unext = hc->unext;
    else
        g->unauth_head = hc->unext;
    if (hc->unext)
        hc->unext->uprev = hc->uprev;
    else
        g->unauth_tail = hc->uprev;
    hc->uprev = hc->unext = NULL;
    hc->unauth = false;
    s_body_count(hc, 0); /* a credential proved: its body is its own affair */
    router_sources_release(g->sources, &hc->source);
    g->unauth--;
    router_metric_set(g->m_unauth, g->unauth);
}

void gateway_http_res_authenticated(gateway_http_res_t *res)
{
    if (res && res->hc)
        s_unauth_leave(res->hc);
}

router_source_t *gateway_http_unauth_hand_over(gateway_http_conn_t *hc, bool *was)
{
    *was = hc->unauth;
    if (!hc->unauth)
        return NULL;
    gateway_http_t *g = hc->g;
    router_source_t *source = hc->source;
    hc->source = NULL;
    g->unauth++; /* s_unauth_leave gives one back: the socket keeps it */
    s_unauth_leave(hc);
    return source;
}

void gateway_http_unauth_give_back(gateway_http_t *g, router_source_t **source_p)
{
    router_sources_release(g->sources, source_p);
    g->unauth--;
    router_metric_set(g->m_unauth, g->unauth);
}

/* Cuts, for a newcomer (`spare`, never cut itself; may be NULL), the
 * oldest unauthenticated connection that has nothing under way (waiting
 * for, or reading, a request head), else the oldest WebSocket that has not
 * authenticated (it holds its place for as long as it likes). False when
 * every one has work in hand. */
static bool s_unauth_evict(gateway_http_t *g, const gateway_http_conn_t *spare)
{
    for (gateway_http_conn_t *hc = g->unauth_head; hc; hc = hc->unext) {
        if (hc == spare || (hc->phase != GATEWAY_HTTP_WAIT && hc->phase != GATEWAY_HTTP_HEAD))
            continue;
        router_metric_inc(g->m_rejected[GATEWAY_HTTP_REJECT_UNAUTH_EVICTED], 1);
        ROUTER_LOG(ROUTER_LOG_INFO, "gateway",
                   "conn %llu cut: the oldest of %u unauthenticated connections, for a newcomer",
                   (unsigned long long) router_conn_id(hc->conn), g->unauth);
        s_unauth_leave(hc);
        router_conn_abort(hc->conn); /* on_close frees it */
        return true;
    }
    return gateway_ws_unauth_evict(g);
}

/* Room for one more unauthenticated connection (WIRE §11.3). */
static bool s_unauth_room(gateway_http_t *g)
{
    return g->unauth < g->opts.unauth_max || s_unauth_evict(g, NULL);
}

/* Counts a new connection as unauthenticated: refuses it (false; the
 * caller aborts it) when its source already holds its share, or when the
 * share of all is full of connections with work in hand. Loopback peers
 * (a local reverse proxy carries many clients) and in-process ones have no
 * per-source share. */
static bool s_unauth_join(gateway_http_t *g, gateway_http_conn_t *hc,
                          const router_listener_t *listener)
{
    const router_addr_t *peer = router_conn_peer(hc->conn);
    if (listener && !(peer && router_addr_is_loopback(peer))) {
        switch (router_sources_add(g->sources, hc->conn, listener, 0,
                                   g->opts.unauth_per_source_max, &hc->source)) {
        case ROUTER_SOURCES_FULL: {
            router_metric_inc(g->m_rejected[GATEWAY_HTTP_REJECT_UNAUTH_SOURCE], 1);
            char src[ROUTER_ADDR_STR_MAX] = "?";
            (void) router_addr_format(peer, src, sizeof src);
            ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                       "connection from %s refused: %u unauthenticated open from it"
                       " (limits.http_unauth_per_source_max)",
                       src, g->opts.unauth_per_source_max);
            return false;
        }
        case ROUTER_SOURCES_NOMEM: return false;
        case ROUTER_SOURCES_NONE:
        case ROUTER_SOURCES_COUNTED: break;
        }
    }
    if (!s_unauth_room(g)) {
        router_sources_release(g->sources, &hc->source);
        router_metric_inc(g->m_rejected[GATEWAY_HTTP_REJECT_UNAUTH_FULL], 1);
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "connection refused: %u unauthenticated connections, each with a request under"
                   " way (limits.http_unauth_connections_max)", g->unauth);
        return false;
    }
    hc->unauth = true;
    hc->uprev = g->unauth_tail;
    if (g->unauth_tail)
        g->unauth_tail->unext = hc;
    else
        g->unauth_head = hc;
    g->unauth_tail = hc;
    g->unauth++;
    router_metric_set(g->m_unauth, g->unauth);
    return true;
}

/* Unlinks hc from the server's list (it closed, or is a WebSocket now,
 * which its endpoint bounds) and from the unauthenticated one, leaving the
 * count of open connections to the caller. */
static void s_conn_unlink(gateway_http_conn_t *hc)
{
    gateway_http_t *g = hc->g;
    s_unauth_leave(hc);
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        g->conns = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    hc->prev = hc->next = NULL;
}

/* A WebSocket upgrade (RFC 6455 §4.2): find the endpoint, check the
 * handshake, and let its route accept or refuse. On acceptance the
 * connection becomes gateway/ws.c's and hc is done (phase UPGRADED). */
static void s_on_upgrade(gateway_http_conn_t *hc)
{
    gateway_http_t *g = hc->g;
    const proto_http_parser_t *p = &hc->parser;
    const gateway_http_route_t *route =
        gateway_http_route_find(g, p->method, p->path, true, NULL, 0);
    if (!route) {
        s_refuse(hc, 404, GATEWAY_HTTP_REJECT_UPGRADE, "no WebSocket endpoint at this path");
        return;
    }
    if (g->draining) {
        /* Its head was still arriving when the drain sent every socket
         * its 1001: a socket accepted now would stay open, unclosed, until
         * the drain's deadline reset it (holding the drain all that
         * time). Told as requests still arriving at the last call are. */
        gateway_http_res_t res;
        gateway_http_res_init(&res, hc, true);
        (void) gateway_http_res_header(&res, "Retry-After", "5");
        (void) gateway_http_respond_error(&res, 503, "shutting_down",
                                          "the daemon is stopping; connect again later");
        s_close(hc);
        return;
    }
    if (p->chunked || (p->has_content_length && p->content_length > 0)) {
        s_refuse(hc, 400, GATEWAY_HTTP_REJECT_HANDSHAKE, "an upgrade request carries no body");
        return;
    }
    proto_ws_upgrade_t up;
    proto_ws_upgrade_init(&up, route->protocols, route->nprotocols);
    for (size_t i = 0; i < p->header_count; i++) {
        proto_http_header_t h = proto_http_header_get(p, i);
        proto_ws_upgrade_feed(&up, h.name.ptr, h.name.len, h.value.ptr, h.value.len);
    }
    gateway_http_res_t res;
    gateway_http_res_init(&res, hc, true);
    if (proto_ws_upgrade_check(&up) != 0) {
        int status = proto_ws_handshake_reason_status(up.reason);
        router_metric_inc(g->m_rejected[GATEWAY_HTTP_REJECT_HANDSHAKE], 1);
        if (status == 426) { /* a 426 names the protocol to upgrade to (RFC 9110 §15.5.22) */
            (void) gateway_http_res_header(&res, "Upgrade", "websocket");
            (void) gateway_http_res_header(&res, "Sec-WebSocket-Version", PROTO_WS_VERSION);
        }
        (void) gateway_http_respond_error(&res, status, "websocket_handshake",
                                          proto_ws_handshake_reason_str(up.reason));
        s_close(hc);
        return;
    }
    hc->route = route;
    res.upgrade = &up;
    gateway_http_req_t req = s_req(hc);
    route->fn(&req, &res, route->ud);
    if (res.ws) {
        /* The socket is gateway/ws.c's now; it still counts in g->open. */
        s_timer_stop(hc);
        s_conn_unlink(hc);
        hc->ws = res.ws;
        hc->phase = GATEWAY_HTTP_UPGRADED;
        return;
    }
    if (!res.sent)
        s_answer_missing(route, &res);
    s_request_done(hc, &res);
}

/* A path that does not take a known method is 405 with Allow; a method
 * kith does not recognise is 501 on every path. */
bool gateway_http_method_known(proto_http_slice_t method)
{
    static const char *const known[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                        "CONNECT", "OPTIONS", "TRACE", "PATCH"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (method.len == strlen(known[i]) && !memcmp(method.ptr, known[i], method.len))
            return true;
    return false;
}

/* A head is complete: refuse what is not served, find the route, and get
 * the body going. */
static void s_on_head(gateway_http_conn_t *hc)
{
    gateway_http_t *g = hc->g;
    const proto_http_parser_t *p = &hc->parser;
    hc->head_only = p->method.len == 4 && !memcmp(p->method.ptr, "HEAD", 4);
    if (p->websocket) {
        s_on_upgrade(hc);
        return;
    }
    char allow[128], ws_allow[128];
    hc->route = gateway_http_route_find(g, p->method, p->path, false, allow, sizeof allow);
    if (!hc->route) {
        /* Answered without reading a body, so if one was sent the
         * connection cannot carry another request. */
        bool body = p->chunked || (p->has_content_length && p->content_length > 0);
        gateway_http_res_t res;
        gateway_http_res_init(&res, hc, body || !p->keep_alive);
        /* A WebSocket endpoint's path exists too: GET there is 426, any
         * other method 405 with what it takes, never 404. */
        bool ws = gateway_http_route_find(g, p->method, p->path, true, ws_allow,
                                          sizeof ws_allow) != NULL;
        if (!gateway_http_method_known(p->method))
            (void) gateway_http_respond_error(&res, 501, "method_not_implemented",
                                              "the method is not one this server knows");
        else if (allow[0] && gateway_http_res_header(&res, "Allow", allow) == 0)
            (void) gateway_http_respond_error(&res, 405, "method_not_allowed",
                                              "this path does not take this method");
        else if (ws && gateway_http_res_header(&res, "Upgrade", "websocket") == 0)
            (void) gateway_http_respond_error(&res, 426, "upgrade_required",
                                              "this path is a WebSocket endpoint");
        else if (!ws && ws_allow[0] && gateway_http_res_header(&res, "Allow", ws_allow) == 0)
            (void) gateway_http_respond_error(&res, 405, "method_not_allowed",
                                              "this path does not take this method");
        else
            (void) gateway_http_respond_error(&res, 404, "not_found", "no route for this path");
        s_request_done(hc, &res);
        return;
    }
    if (proto_http_body_init(&hc->body, p, g->limits.max_body) != 0) {
        s_refuse_reason(hc, hc->body.reason);
        return;
    }
    hc->phase = GATEWAY_HTTP_BODY;
    if (proto_http_body_done(&hc->body)) {
        s_dispatch(hc);
        return;
    }
    if (p->expect_continue && router_conn_send(hc->conn, s_continue, sizeof s_continue - 1) != 0) {
        hc->phase = GATEWAY_HTTP_CLOSING;
        return;
    }
    s_deadline(hc, g->opts.body_timeout_ms);
}

/* Reads head octets from buf; returns how many it used. A head that does
 * not end in buf is kept, bounded by the head limit. */
static size_t s_read_head(gateway_http_conn_t *hc, char *buf, size_t len)
{
    gateway_http_t *g = hc->g;
    if (hc->phase == GATEWAY_HTTP_WAIT) {
        hc->phase = GATEWAY_HTTP_HEAD;
        if (hc->served > 0) /* the first head's clock started at accept */
            s_deadline(hc, g->opts.head_timeout_ms);
    }
    if (hc->head_len > 0) {
        /* The head began in an earlier read: add to it (never past the
         * limit), and give back what follows its end. */
        size_t before = hc->head_len;
        size_t room = g->limits.max_head - before;
        size_t take = len < room ? len : room;
        if (s_head_append(hc, buf, take) != 0) {
            s_fail(hc, "a request head");
            return len;
        }
        ssize_t n = proto_http_parse(&hc->parser, hc->head, hc->head_len);
        if (n == -2)
            return take;
        if (n < 0) {
            s_refuse_reason(hc, hc->parser.reason);
            return len;
        }
        hc->head_len = (size_t) n;
        s_on_head(hc);
        return (size_t) n - before;
    }
    ssize_t n = proto_http_parse(&hc->parser, buf, len);
    if (n == -2) {
        /* -2 means fewer than max_head octets so far: keeping them is bounded. */
        if (s_head_append(hc, buf, len) != 0)
            s_fail(hc, "a request head");
        return len;
    }
    if (n < 0) {
        s_refuse_reason(hc, hc->parser.reason);
        return len;
    }
    hc->head_at = buf;
    hc->head_len = (size_t) n;
    s_on_head(hc);
    return (size_t) n;
}

/* Decodes body octets from buf and dispatches once the body is complete;
 * returns how many octets it used. */
static size_t s_read_body(gateway_http_conn_t *hc, char *buf, size_t len)
{
    size_t used = 0;
    while (used < len && !proto_http_body_done(&hc->body)) {
        proto_http_slice_t data = {0};
        ssize_t k = proto_http_body_parse(&hc->body, buf + used, len - used, &data);
        if (k < 0) {
            s_refuse_reason(hc, hc->body.reason);
            return len;
        }
        int rc = data.len ? s_body_append(hc, data.ptr, data.len) : 0;
        if (rc == -2) {
            s_refuse(hc, 503, GATEWAY_HTTP_REJECT_UNAUTH_BODIES,
                     "too many unfinished request bodies from clients without a credential; "
                     "try again later");
            return len;
        }
        if (rc != 0) {
            s_fail(hc, "a request body");
            return len;
        }
        used += (size_t) k;
        if (k == 0)
            break;
    }
    if (proto_http_body_done(&hc->body))
        s_dispatch(hc);
    return used;
}

static void s_conn_free(gateway_http_conn_t *hc);

/* Runs buf through the requests it holds, in order. Returns false when hc
 * is gone: it became a WebSocket, which took the rest of buf. */
static bool s_input(gateway_http_conn_t *hc, char *buf, size_t len)
{
    while (len > 0 && hc->phase != GATEWAY_HTTP_CLOSING && hc->phase != GATEWAY_HTTP_UPGRADED &&
           hc->phase != GATEWAY_HTTP_STREAM) {
        if (hc->paused) {
            s_hold(hc, buf, len);
            return true;
        }
        size_t used = hc->phase == GATEWAY_HTTP_BODY ? s_read_body(hc, buf, len)
                                                      : s_read_head(hc, buf, len);
        buf += used;
        len -= used;
    }
    if (hc->phase == GATEWAY_HTTP_UPGRADED) {
        gateway_ws_t *ws = hc->ws;
        s_conn_free(hc);
        if (len)
            gateway_ws_input(ws, (uint8_t *) buf, len);
        return false;
    }
    if (hc->phase == GATEWAY_HTTP_BODY && hc->head_at && s_head_keep(hc) != 0)
        s_fail(hc, "a request head");
    return true;
}

/* ---------------------------------------------------------------- connection callbacks */

static void s_on_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    (void) conn;
    (void) s_input(ud, (char *) data, len);
}

/* Runs the input held while reads were paused. Returns false when hc is
 * gone (it became a WebSocket). */
static bool s_run_held(gateway_http_conn_t *hc)
{
    char *held = hc->held;
    size_t n = hc->held_len;
    hc->held = NULL;
    hc->held_len = 0;
    if (!held)
        return true;
    bool alive = s_input(hc, held, n);
    free(held);
    return alive;
}

/* The answers that paused reading are written: go on with what was held. */
static void s_on_drain(router_conn_t *conn, void *ud)
{
    gateway_http_conn_t *hc = ud;
    if (hc->phase == GATEWAY_HTTP_STREAM) {
        if (hc->stream.on_drain)
            hc->stream.on_drain(conn, hc->stream_ud);
        return;
    }
    if (!hc->paused || hc->phase == GATEWAY_HTTP_CLOSING || hc->phase == GATEWAY_HTTP_DEFERRED)
        return;
    hc->paused = false;
    s_deadline(hc, hc->g->opts.idle_timeout_ms);
    if (!s_run_held(hc))
        return;
    if (!hc->paused && hc->phase != GATEWAY_HTTP_CLOSING)
        router_conn_resume_read(conn);
}

/* Whether what was read of the next head is only the empty lines a server
 * ignores before a request-line (RFC 9112 §2.2). */
static bool s_head_blank(const gateway_http_conn_t *hc)
{
    for (size_t i = 0; i < hc->head_len; i++)
        if (hc->head[i] != '\r' && hc->head[i] != '\n')
            return false;
    return true;
}

/* The client shut down its sending side (reads are never paused here: the
 * loop tells EOF only once they run). A request cut short by it is told
 * so — the client still reads — rather than dropped without a word
 * (RFC 9112 §8 lets a server answer an incomplete request); otherwise
 * nothing more can come, so the connection closes once what was answered
 * is written. */
static void s_on_eof(router_conn_t *conn, void *ud)
{
    gateway_http_conn_t *hc = ud;
    switch (hc->phase) {
    case GATEWAY_HTTP_HEAD:
        if (s_head_blank(hc)) { /* a stray CRLF after the last request */
            s_close(hc);
            return;
        }
        s_refuse(hc, 400, GATEWAY_HTTP_REJECT_INCOMPLETE,
                 "the connection was shut down before the request head was whole");
        return;
    case GATEWAY_HTTP_BODY:
        s_refuse(hc, 400, GATEWAY_HTTP_REJECT_INCOMPLETE,
                 "the connection was shut down before the request body was whole");
        return;
    case GATEWAY_HTTP_WAIT:
        s_close(hc);
        return;
    case GATEWAY_HTTP_STREAM:
        router_conn_close(conn); /* stays STREAM: on_close tells the route */
        return;
    case GATEWAY_HTTP_CLOSING:
    case GATEWAY_HTTP_UPGRADED:
    case GATEWAY_HTTP_DEFERRED:
        return; /* closing already; not ours; paused, so never told */
    }
}

static void s_conn_free(gateway_http_conn_t *hc)
{
    if (hc->pending)
        hc->pending->res.hc = NULL; /* the route still holds it; its answer goes nowhere */
    s_body_count(hc, 0);
    free(hc->head);
    free(hc->body_buf);
    free(hc->held);
    free(hc);
}

static void s_on_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    gateway_http_conn_t *hc = ud;
    gateway_http_t *g = hc->g;
    if (reason == ROUTER_CLOSE_SLOW_CONSUMER || reason == ROUTER_CLOSE_TIMEOUT)
        ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "conn %llu cut: %s",
                   (unsigned long long) router_conn_id(conn), router_close_reason_str(reason));
    s_timer_stop(hc);
    s_conn_unlink(hc);
    g->open--;
    router_metric_set(g->m_open, g->open);
    if (hc->phase == GATEWAY_HTTP_STREAM)
        hc->stream.on_close(conn, hc->stream_ud);
    s_conn_free(hc);
    gateway_http_drain_check(g);
}

static const router_conn_handlers_t s_handlers = {
    .on_data = s_on_data,
    .on_eof = s_on_eof,
    .on_drain = s_on_drain,
    .on_close = s_on_close,
};

static void s_adopt(gateway_http_t *g, router_conn_t *conn, const router_listener_t *listener);

static void s_on_accept(router_listener_t *listener, router_conn_t *conn, void *ud)
{
    s_adopt(ud, conn, listener);
}

void gateway_http_adopt(gateway_http_t *g, router_conn_t *conn)
{
    s_adopt(g, conn, NULL);
}

/* A newcomer at gateway.max_connections with no place to take: reset
 * unanswered, counted, logged once per run of refusals. */
static void s_refuse_at_cap(gateway_http_t *g, router_conn_t *conn)
{
    router_metric_inc(g->m_rejected[GATEWAY_HTTP_REJECT_CONN_LIMIT], 1);
    if (!g->refusing)
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "%u connections open (gateway.max_connections): refusing new ones", g->open);
    g->refusing = true;
    router_conn_abort(conn);
}

static void s_adopt(gateway_http_t *g, router_conn_t *conn, const router_listener_t *listener)
{
    if (g->draining) { /* an accept that raced the listeners' close */
        router_conn_abort(conn);
        return;
    }
    bool at_cap = g->open >= g->opts.max_connections;
    if (at_cap && g->unauth == 0) {
        s_refuse_at_cap(g, conn);
        return;
    }
    gateway_http_conn_t *hc = calloc(1, sizeof *hc);
    if (!hc || proto_http_parser_init(&hc->parser, &g->limits) != 0) {
        free(hc);
        router_conn_abort(conn);
        return;
    }
    hc->g = g;
    hc->conn = conn;
    hc->phase = GATEWAY_HTTP_WAIT;
    unsigned before = g->unauth;
    if (!s_unauth_join(g, hc, listener)) {
        free(hc);
        router_conn_abort(conn);
        return;
    }
    /* At the cap the newcomer takes the place of an idle unauthenticated
     * connection, as past the share: else connections that prove nothing
     * could hold every place (the share may be as large as the cap) and
     * lock out clients with a credential. The join has cut one already
     * when the share was full; a newcomer its source's share refused
     * (above) cuts nobody. */
    if (at_cap && g->unauth != before && !s_unauth_evict(g, hc)) {
        s_unauth_leave(hc);
        free(hc);
        s_refuse_at_cap(g, conn);
        return;
    }
    g->refusing = false;
    router_conn_set_handlers(conn, &s_handlers, hc);
    hc->next = g->conns;
    if (g->conns)
        g->conns->prev = hc;
    g->conns = hc;
    g->open++;
    router_metric_set(g->m_open, g->open);
    s_deadline(hc, g->opts.head_timeout_ms);
}

/* ---------------------------------------------------------------- lifecycle */

static void s_metrics_register(gateway_http_t *g)
{
    router_metrics_t *m = g->opts.metrics;
    if (!m)
        return;
    g->m_open = router_metrics_add(m, "kith_http_connections_open", NULL, ROUTER_METRIC_GAUGE,
                                   "HTTP connections open on the gateway.");
    g->m_unauth = router_metrics_add(m, "kith_http_unauth_connections", NULL, ROUTER_METRIC_GAUGE,
                                     "HTTP connections on which no request has proved a"
                                     " credential yet.");
    g->m_unauth_body = router_metrics_add(m, "kith_http_unauth_body_bytes", NULL,
                                          ROUTER_METRIC_GAUGE,
                                          "Request-body and unfinished WebSocket-message octets"
                                          " held by connections that have proved no credential"
                                          " (bounded by limits.partial_frame_bytes_max).");
    g->m_ws_open = router_metrics_add(m, "kith_ws_connections_open", NULL, ROUTER_METRIC_GAUGE,
                                      "WebSocket connections open (counted in "
                                      "kith_http_connections_open too).");
    static const char frames_help[] = "WebSocket frames received (in) and sent (out).";
    g->m_ws_frames_in = router_metrics_add(m, "kith_ws_frames_total", "direction=\"in\"",
                                           ROUTER_METRIC_COUNTER, frames_help);
    g->m_ws_frames_out = router_metrics_add(m, "kith_ws_frames_total", "direction=\"out\"",
                                            ROUTER_METRIC_COUNTER, frames_help);
    for (int r = PROTO_HTTP_OK + 1; r < GATEWAY_HTTP_REJECT_COUNT; r++) {
        char labels[96];
        snprintf(labels, sizeof labels, "reason=\"%s\"", s_reject_code(r));
        g->m_rejected[r] = router_metrics_add(m, "kith_http_rejected_total", labels,
                                              ROUTER_METRIC_COUNTER,
                                              "HTTP requests refused before any route, by reason.");
    }
}

gateway_http_t *gateway_http_new(router_loop_t *loop, const gateway_http_opts_t *opts)
{
    if (!loop) {
        errno = EINVAL;
        return NULL;
    }
    gateway_http_t *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    if (s_opts_resolve(opts, &g->opts, &g->limits) != 0) {
        free(g);
        errno = EINVAL;
        return NULL;
    }
    g->loop = loop;
    if (!(g->sources = router_sources_new(g->opts.unauth_max))) {
        free(g);
        errno = ENOMEM;
        return NULL;
    }
    s_metrics_register(g);
    return g;
}

size_t gateway_http_attachment_body_max(const gateway_http_t *g)
{
    return g->opts.attachment_body_max;
}

int gateway_http_listen(gateway_http_t *g, const router_addr_t *addr, router_addr_t *bound)
{
    size_t slot = 0;
    while (slot < GATEWAY_HTTP_LISTENERS_MAX && g->listeners[slot])
        slot++;
    if (slot == GATEWAY_HTTP_LISTENERS_MAX) {
        errno = ENOSPC;
        return -1;
    }
    router_listener_t *l = router_loop_listen(g->loop, addr, s_on_accept, g);
    if (!l)
        return -1;
    g->listeners[slot] = l;
    if (bound)
        *bound = *router_listener_addr(l);
    return 0;
}

void gateway_http_close_listeners(gateway_http_t *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < GATEWAY_HTTP_LISTENERS_MAX; i++)
        router_listener_close(&g->listeners[i]);
}

/* ---------------------------------------------------------------- draining */

static void s_drain_timers_stop(gateway_http_t *g)
{
    if (g->drain_timer)
        (void) router_loop_timer_cancel(g->loop, g->drain_timer);
    if (g->last_call_timer)
        (void) router_loop_timer_cancel(g->loop, g->last_call_timer);
    g->drain_timer = g->last_call_timer = 0;
}

void gateway_http_drain_check(gateway_http_t *g)
{
    if (!g->draining || g->open || !g->drain_done)
        return;
    void (*done)(void *) = g->drain_done;
    g->drain_done = NULL;
    s_drain_timers_stop(g);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "drained: every connection closed");
    done(g->drain_ud);
}

static void s_drain_deadline(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    gateway_http_t *g = ud;
    g->drain_timer = 0;
    ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "drain deadline: cutting %u connections still open",
               g->open);
    /* Those closing in order go too: a client that read its answer but
     * never closes its end would hold the drain to the loop's own close
     * timeout, past the deadline the header promises. */
    for (gateway_http_conn_t *hc = g->conns; hc; hc = hc->next) {
        hc->phase = GATEWAY_HTTP_CLOSING;
        s_timer_stop(hc);
        router_conn_abort(hc->conn);
    }
    gateway_ws_close_all(g, 1001, true);
}

/* A request whose route deferred its answer (a turn over HTTP, a node's
 * invoke, a 202 waiting for durability) and has not answered by now would
 * be cut without a word at the deadline: it is answered 503 shutting_down
 * instead, and its connection closes in order, so the client reads why.
 * The route keeps its handle; what it answers later goes nowhere. So is a
 * request still arriving (a slow upload): no route has seen it, so the
 * client may send it again elsewhere. */
static void s_drain_last_call(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    gateway_http_t *g = ud;
    g->last_call_timer = 0;
    unsigned n = 0;
    for (gateway_http_conn_t *hc = g->conns, *next; hc; hc = next) {
        next = hc->next;
        if (hc->phase == GATEWAY_HTTP_HEAD || hc->phase == GATEWAY_HTTP_BODY) {
            gateway_http_res_t res;
            gateway_http_res_init(&res, hc, true);
            (void) gateway_http_res_header(&res, "Retry-After", "5");
            (void) gateway_http_respond_error(&res, 503, "shutting_down",
                                              "the daemon is stopping before this request "
                                              "arrived whole; nothing of it was done");
            s_close(hc);
            n++;
            continue;
        }
        if (hc->phase != GATEWAY_HTTP_DEFERRED || !hc->pending || hc->pending->res.sent)
            continue;
        if (hc->pending->last_call) {
            /* The route's own word first (a webhook knows whether its
             * entry was stored); it may end the request, and hc with it
             * moves on (closing: the drain answers close). */
            void (*fn)(void *) = hc->pending->last_call;
            hc->pending->last_call = NULL;
            fn(hc->pending->last_call_ud);
            if (hc->phase != GATEWAY_HTTP_DEFERRED || !hc->pending)
                continue;
            if (hc->pending->res.sent) { /* answered, not ended: it closes after */
                hc->phase = GATEWAY_HTTP_CLOSING;
                s_timer_stop(hc);
                router_conn_close(hc->conn);
                continue;
            }
        }
        gateway_http_res_t *res = &hc->pending->res;
        res->close = true;
        (void) gateway_http_res_header(res, "Retry-After", "5");
        (void) gateway_http_respond_error(res, 503, "shutting_down",
                                          "the daemon is stopping before this request was "
                                          "answered; what it asked for may or may not be done");
        hc->phase = GATEWAY_HTTP_CLOSING;
        s_timer_stop(hc);
        router_conn_close(hc->conn); /* what was written goes first */
        n++;
    }
    if (n)
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "drain: %u requests unanswered, told 503", n);
}

void gateway_http_drain(gateway_http_t *g, void (*done)(void *ud), void *ud,
                        unsigned deadline_ms)
{
    if (g->draining)
        return;
    g->draining = true;
    g->drain_done = done;
    g->drain_ud = ud;
    gateway_http_close_listeners(g);
    /* Idle keep-alive connections and event streams go now (what was
     * answered is flushed first); a request being read or answered
     * finishes, and its answer closes the connection. */
    for (gateway_http_conn_t *hc = g->conns, *next; hc; hc = next) {
        next = hc->next;
        if (hc->phase == GATEWAY_HTTP_WAIT && !hc->held)
            s_close(hc);
        else if (hc->phase == GATEWAY_HTTP_STREAM)
            router_conn_close(hc->conn); /* stays STREAM: on_close tells the route */
    }
    gateway_ws_close_all(g, 1001, false);
    if (g->open && deadline_ms) {
        g->drain_timer = router_loop_timer_add(g->loop, deadline_ms, s_drain_deadline, g);
        unsigned before = deadline_ms > 2 * S_LAST_CALL_MS ? deadline_ms - S_LAST_CALL_MS
                                                            : deadline_ms / 2;
        g->last_call_timer = router_loop_timer_add(g->loop, before, s_drain_last_call, g);
        if (!g->drain_timer || !g->last_call_timer) {
            /* No timer left: the requests still owed an answer would wait
             * for no deadline. They are told now, and the slot one of the
             * timers took goes to their closes, which the loop's close
             * timeout bounds. */
            ROUTER_LOG(ROUTER_LOG_ERROR, "gateway",
                       "drain: no timer for its deadline (%s): answering what is owed now",
                       strerror(errno));
            s_drain_timers_stop(g);
            s_drain_last_call(g->loop, 0, g);
        }
    }
    gateway_http_drain_check(g);
}

size_t gateway_http_revoke(gateway_http_t *g, const char *id, const char *reason)
{
    if (!g || !id || !id[0])
        return 0;
    size_t n = 0;
    for (gateway_http_conn_t *hc = g->conns, *next; hc; hc = next) {
        next = hc->next;
        if (hc->phase == GATEWAY_HTTP_STREAM && !strcmp(hc->credential, id)) {
            router_conn_close(hc->conn); /* stays STREAM: on_close tells the route */
            n++;
        }
    }
    return n + gateway_ws_close_credential(g, id, reason);
}

void gateway_http_destroy(gateway_http_t **g_p)
{
    if (!g_p || !*g_p)
        return;
    gateway_http_t *g = *g_p;
    s_drain_timers_stop(g);
    gateway_http_close_listeners(g);
    /* Open connections belong to the loop: cut them loose from us. */
    for (gateway_http_conn_t *hc = g->conns, *next; hc; hc = next) {
        next = hc->next;
        s_timer_stop(hc);
        router_conn_disown(hc->conn);
        s_conn_free(hc);
    }
    gateway_ws_disown_all(g);
    router_metric_set(g->m_open, 0);
    router_sources_destroy(&g->sources);
    free(g);
    *g_p = NULL;
}

/* ---------------------------------------------------------------- request accessors */

bool gateway_http_req_header(const gateway_http_req_t *req, const char *name,
                             proto_http_slice_t *value)
{
    return proto_http_header_find(req->head, name, value);
}

bool gateway_http_query_find(proto_http_slice_t q, const char *name, proto_http_slice_t *value)
{
    if (!q.ptr)
        return false;
    size_t n = strlen(name);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t) (end - p));
        const char *stop = amp ? amp : end;
        if ((size_t) (stop - p) > n && !memcmp(p, name, n) && p[n] == '=') {
            value->ptr = p + n + 1;
            value->len = (size_t) (stop - value->ptr);
            return true;
        }
        p = stop + 1;
    }
    return false;
}

bool gateway_http_req_method_is(const gateway_http_req_t *req, const char *method)
{
    size_t n = strlen(method);
    return req->method.len == n && !memcmp(req->method.ptr, method, n);
}

bool gateway_http_req_is_json(const gateway_http_req_t *req)
{
    proto_http_slice_t v;
    if (!gateway_http_req_header(req, "Content-Type", &v) || v.len < 16 ||
        strncasecmp(v.ptr, "application/json", 16) != 0)
        return false;
    return v.len == 16 || v.ptr[16] == ';' || v.ptr[16] == ' ' || v.ptr[16] == '\t';
}

struct yajl_val_s *gateway_http_req_json(const gateway_http_req_t *req, gateway_http_res_t *res,
                                         unsigned depth_max, size_t keys_max)
{
    if (!gateway_http_req_is_json(req)) {
        (void) gateway_http_respond_error(res, 415, "unsupported_media_type",
                                          "send Content-Type: application/json");
        return NULL;
    }
    char why[160];
    yajl_val b = gateway_json_tree_parse((const uint8_t *) req->body, req->body_len, depth_max,
                                         keys_max, why, sizeof why);
    if (!b && errno == ENOMEM)
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
    else if (!b)
        (void) gateway_http_respond_error(res, 400, "invalid_json", why);
    return b;
}

/* ---------------------------------------------------------------- deferred answers */

gateway_http_pending_t *gateway_http_res_defer(gateway_http_res_t *res)
{
    if (res->sent || res->deferred) {
        errno = EALREADY;
        return NULL;
    }
    if (res->upgrade) {
        errno = EINVAL;
        return NULL;
    }
    res->deferred = calloc(1, sizeof *res->deferred);
    if (res->deferred) /* its res is filled from *res once the handler returns */
        res->deferred->origin = res;
    return res->deferred;
}

void gateway_http_pending_on_last_call(gateway_http_pending_t *p, void (*fn)(void *ud),
                                       void *ud)
{
    if (!p)
        return;
    p->last_call = fn;
    p->last_call_ud = ud;
}

gateway_http_res_t *gateway_http_pending_res(gateway_http_pending_t *p)
{
    return p->origin ? p->origin : &p->res;
}

void gateway_http_pending_end(gateway_http_pending_t **p_p)
{
    if (!p_p || !*p_p)
        return;
    gateway_http_pending_t *p = *p_p;
    *p_p = NULL;
    if (p->origin) { /* the handler still runs: s_dispatch finishes it */
        p->ended = true;
        return;
    }
    gateway_http_conn_t *hc = p->res.hc;
    if (!hc) {
        free(p);
        return;
    }
    hc->pending = NULL;
    if (!p->res.sent)
        s_answer_missing(hc->route, &p->res);
    if (hc->phase == GATEWAY_HTTP_DEFERRED)
        hc->phase = GATEWAY_HTTP_BODY; /* s_request_done moves it on */
    bool was_paused = hc->paused;
    hc->paused = false;
    s_request_done(hc, &p->res);
    free(p);
    if (hc->phase == GATEWAY_HTTP_CLOSING)
        return;
    if (hc->paused) /* answers pile up: on_drain goes on */
        return;
    /* Go on with pipelined input held meanwhile, then read again. */
    if (!s_run_held(hc))
        return;
    if (was_paused && !hc->paused && hc->phase != GATEWAY_HTTP_CLOSING &&
        hc->phase != GATEWAY_HTTP_DEFERRED)
        router_conn_resume_read(hc->conn);
}
