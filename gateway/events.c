/* gateway/events.c — an SSE stream: the ring of encoded events, publishing,
 * subscribers with Last-Event-ID replay, keep-alives and the slow-consumer
 * cut (gateway/events.h). Each event is encoded once into a shared buffer
 * (router/net/shared_buf.h) that the ring and every subscriber's send queue
 * hold, so an event costs its size once however many subscribers it goes
 * to, and counts once against the loop's bound on all unsent bytes. */
#include "gateway/events.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/sse.h"
#include "proto/utf8.h"
#include "router/log.h"
#include "router/net/conn.h"
#include "router/net/shared_buf.h"

#define S_NAME_MAX 32u
/* Room for "id: <20 digits>\n", "data: ", the blank line and the "type". */
#define S_FRAME_EXTRA (64u + GATEWAY_EVENTS_TYPE_MAX)

/* One event in the ring, encoded as it goes on the wire. The ring holds
 * one reference to the frame and each send queue it waits in another, so
 * an evicted event lives on until the last subscriber has sent it. */
typedef struct {
    router_shared_buf_t *frame; /* "id: N\ndata: {…}\n\n", NULL for a free slot */
    size_t len;                 /* its octets */
} s_slot_t;

typedef struct s_sub s_sub_t;

struct s_sub {
    gateway_events_t *ev;  /* the stream */
    router_conn_t *conn;   /* its connection (the HTTP server's) */
    uint64_t cursor;       /* id of the next event to send */
    bool live;             /* it caught up once: from then on it is cut, not paced */
    bool cut;              /* aborted or being closed: waiting for on_close */
    s_sub_t *prev, *next;  /* the stream's list */
};

struct gateway_events {
    router_loop_t *loop;           /* borrowed */
    char name[S_NAME_MAX];         /* for metrics and logs */
    gateway_events_opts_t opts;    /* resolved */
    s_slot_t *ring;                /* opts.ring_events slots; id i lives at i % ring_events */
    uint64_t next_id;              /* id the next event gets (first: 1) */
    uint64_t oldest;               /* oldest id in the ring (== next_id when empty) */
    size_t ring_bytes;             /* octets of frames in the ring */
    s_sub_t *subs;                 /* subscribers */
    uint32_t nsubs;                /* how many */
    uint64_t cut;                  /* cut since start */
    uint64_t keepalive_lost;       /* closed since start: no keep-alive timer */
    uint64_t timer;                /* keep-alive timer, 0 for none */
    router_metric_t *m_subs;       /* kith_sse_subscribers */
    router_metric_t *m_cut;        /* kith_sse_cut_total */
    router_metric_t *m_lost;       /* kith_sse_keepalive_lost_total */
    router_metric_t *m_events;     /* kith_sse_events_total */
};

/* ---------------------------------------------------------------- JSON */

/* v in decimal at the end of d[20]: returns where the digits start. */
static char *s_digits(uint64_t v, char d[20])
{
    char *p = d + 20;
    do
        *--p = (char) ('0' + v % 10);
    while ((v /= 10) != 0);
    return p;
}

void gateway_events_json_raw(gateway_events_json_t *j, const char *s, size_t len)
{
    if (j->full || len >= j->cap - j->n) {
        j->full = true;
        return;
    }
    memcpy(j->p + j->n, s, len);
    j->n += len;
    j->p[j->n] = '\0';
}

void gateway_events_json_u64(gateway_events_json_t *j, uint64_t v)
{
    char d[20], *p = s_digits(v, d);
    gateway_events_json_raw(j, p, (size_t) (d + sizeof d - p));
}

void gateway_events_json_str(gateway_events_json_t *j, const char *s, size_t len)
{
    if (!j->full && gateway_events_json_escape(j->p, j->cap, &j->n, s, len) != 0)
        j->full = true;
}

int gateway_events_json_escape(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    bool utf8 = proto_utf8_valid((const uint8_t *) s, len);
    size_t k = *n;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char) s[i];
        char esc[7];
        size_t m = 0;
        if (c == '"' || c == '\\') {
            esc[m++] = '\\';
            esc[m++] = (char) c;
        } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8)) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            m = 6;
        } else {
            esc[m++] = (char) c;
        }
        if (k + m >= cap) {
            out[*n < cap ? *n : 0] = '\0';
            return -1;
        }
        memcpy(out + k, esc, m);
        k += m;
    }
    out[k] = '\0';
    *n = k;
    return 0;
}

/* ---------------------------------------------------------------- subscribers */

static int s_timer_arm(gateway_events_t *ev);
static void s_keepalive(router_loop_t *loop, uint64_t id, void *ud);

static void s_sub_unlink(s_sub_t *sub)
{
    gateway_events_t *ev = sub->ev;
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        ev->subs = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    ev->nsubs--;
    router_metric_set(ev->m_subs, ev->nsubs);
}

/* It cannot keep up: abort the connection (on_close frees it). */
static void s_sub_cut(s_sub_t *sub, const char *why)
{
    if (sub->cut)
        return;
    gateway_events_t *ev = sub->ev;
    sub->cut = true;
    ev->cut++;
    router_metric_inc(ev->m_cut, 1);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "sse %s: conn %llu cut: %s (%zu bytes unsent)",
               ev->name, (unsigned long long) router_conn_id(sub->conn), why,
               router_conn_send_queued(sub->conn));
    router_conn_abort(sub->conn);
}

/* Queueing an event (or a stream_gap) failed: the subscriber cannot be
 * sent it, so it must not be sent any later one either, which would be a
 * silent gap. The connection layer has cut it already (ENOBUFS: it held
 * more than its share of all connections' unsent bytes, a slow consumer,
 * counted; ENOMEM: no memory for the queue's block) or is closing it
 * (EPIPE: a graceful close, whose flush is left alone). Any other error
 * left the connection open with a piece missing: it is aborted. The
 * client reconnects with Last-Event-ID and is replayed or told the gap. */
static void s_sub_lost(s_sub_t *sub, int err)
{
    gateway_events_t *ev = sub->ev;
    sub->cut = true;
    if (err == ENOBUFS) {
        ev->cut++;
        router_metric_inc(ev->m_cut, 1);
    }
    ROUTER_LOG(err == EPIPE ? ROUTER_LOG_DEBUG : ROUTER_LOG_WARN, "gateway",
               "sse %s: conn %llu lost at event %llu: %s", ev->name,
               (unsigned long long) router_conn_id(sub->conn),
               (unsigned long long) sub->cursor,
               err == ENOBUFS ? "slow consumer (its share of all connections' unsent bytes)"
                              : strerror(err));
    if (err != EPIPE)
        router_conn_abort(sub->conn); /* nothing when the connection layer cut it */
}

/* Sends what the subscriber is owed, as far as its unsent bound allows.
 * A live subscriber that cannot take an event is cut; a replaying one
 * waits for its connection to drain, unless the ring has overtaken it.
 * A replay lasts until the subscriber has caught up with the newest
 * event, those published while it ran included: they are as far behind
 * as the rest, and the ring bounds how far that may be. */
static void s_sub_pump(s_sub_t *sub)
{
    gateway_events_t *ev = sub->ev;
    if (sub->cut)
        return;
    if (sub->cursor < ev->oldest) {
        s_sub_cut(sub, "the ring overtook it");
        return;
    }
    while (sub->cursor < ev->next_id) {
        const s_slot_t *slot = &ev->ring[sub->cursor % ev->opts.ring_events];
        size_t queued = router_conn_send_queued(sub->conn);
        if (queued + slot->len > ev->opts.unsent_max) {
            /* An event larger than the whole bound never fits: waiting for
             * a drain of an empty queue would stall a replay for good. */
            if (queued == 0)
                s_sub_cut(sub, "event larger than its unsent bound");
            else if (sub->live)
                s_sub_cut(sub, "slow consumer");
            return; /* replaying: on_drain goes on */
        }
        if (router_conn_send_shared(sub->conn, slot->frame) != 0) {
            s_sub_lost(sub, errno);
            return;
        }
        sub->cursor++;
    }
    sub->live = true;
}

static void s_on_drain(router_conn_t *conn, void *ud)
{
    (void) conn;
    s_sub_pump(ud);
}

static void s_on_close(router_conn_t *conn, void *ud)
{
    (void) conn;
    s_sub_t *sub = ud;
    s_sub_unlink(sub);
    free(sub);
}

static const gateway_http_stream_handlers_t s_stream_handlers = {
    .on_drain = s_on_drain,
    .on_close = s_on_close,
};

/* Last-Event-ID as a decimal id. Returns 1 with *out, 0 when absent, -1
 * when it is not one. Two fields are not one: combined (RFC 9110 §5.3)
 * "3, 4" is no id, and taking either would resume where the client may
 * not have asked. */
static int s_last_event_id(const gateway_http_req_t *req, uint64_t *out)
{
    proto_http_slice_t v = {0};
    unsigned fields = 0;
    for (size_t i = 0; i < req->head->header_count; i++) {
        proto_http_header_t h = proto_http_header_get(req->head, i);
        if (h.name.len == 13 && !strncasecmp(h.name.ptr, "Last-Event-ID", 13) && fields++ == 0)
            v = h.value;
    }
    if (fields == 0)
        return 0;
    if (fields > 1)
        return -1;
    if (v.len == 0 || v.len > 20)
        return -1;
    uint64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned char) v.ptr[i] - '0';
        if (d > 9 || n > (UINT64_MAX - d) / 10)
            return -1;
        n = n * 10 + d;
    }
    *out = n;
    return 1;
}

/* Sends a stream_gap event to one subscriber. Its id is that of the event
 * just before the oldest kept, so a reconnect from it reports no new gap. */
static int s_send_gap(s_sub_t *sub, uint64_t id, uint64_t last, uint64_t lost, bool unknown)
{
    char idt[24], data[256];
    snprintf(idt, sizeof idt, "%" PRIu64, id);
    if (unknown)
        snprintf(data, sizeof data,
                 "{\"type\":\"stream_gap\",\"reason\":\"unknown_id\",\"last_event_id\":%" PRIu64
                 ",\"lost\":null,\"first_kept\":%" PRIu64 "}",
                 last, sub->ev->oldest);
    else
        snprintf(data, sizeof data,
                 "{\"type\":\"stream_gap\",\"reason\":\"evicted\",\"last_event_id\":%" PRIu64
                 ",\"lost\":%" PRIu64 ",\"first_kept\":%" PRIu64 "}",
                 last, lost, sub->ev->oldest);
    proto_sse_message_t msg = {
        .id = idt,
        .id_len = strlen(idt),
        .data = (const uint8_t *) data,
        .data_len = strlen(data),
        .retry_ms = -1,
    };
    uint8_t frame[sizeof data + 64];
    ssize_t n = proto_sse_encode(frame, sizeof frame, &msg, NULL);
    if (n < 0) {
        errno = EMSGSIZE;
        return -1;
    }
    return router_conn_send(sub->conn, frame, (size_t) n);
}

void gateway_events_subscribe(gateway_events_t *ev, const gateway_http_req_t *req,
                              gateway_http_res_t *res)
{
    uint64_t last = 0;
    int have = s_last_event_id(req, &last);
    if (have < 0) {
        (void) gateway_http_respond_error(res, 400, "bad_last_event_id",
                                          "Last-Event-ID must be an event id (decimal)");
        return;
    }
    /* A stream whose keep-alive timer was lost (s_keepalive_lost) takes
     * a subscriber only once it is armed again. */
    if (!ev->timer && s_timer_arm(ev) != 0) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "gateway",
                   "sse %s: keep-alive timer still not armed (%s): subscriber refused", ev->name,
                   strerror(errno));
        (void) gateway_http_res_header(res, "Retry-After", "5");
        (void) gateway_http_respond_error(res, 503, "keepalive_unavailable",
                                          "this stream cannot send keep-alives now");
        return;
    }
    if (ev->nsubs >= ev->opts.subscribers_max) {
        (void) gateway_http_res_header(res, "Retry-After", "5");
        (void) gateway_http_respond_error(res, 503, "too_many_subscribers",
                                          "this stream has all the subscribers it takes");
        return;
    }
    s_sub_t *sub = calloc(1, sizeof *sub);
    if (!sub) {
        (void) gateway_http_respond_error(res, 500, "internal_error", "out of memory");
        return;
    }
    (void) gateway_http_res_header(res, "Cache-Control", "no-cache");
    (void) gateway_http_res_header(res, "X-Accel-Buffering", "no");
    router_conn_t *conn = gateway_http_respond_stream(res, 200, "text/event-stream",
                                                      &s_stream_handlers, sub);
    if (!conn) {
        free(sub);
        return;
    }
    sub->ev = ev;
    sub->conn = conn;
    /* The loop's own limit sits above ours, so our cut comes first. */
    router_conn_set_send_limit(conn, ev->opts.unsent_max + 64 * 1024);
    sub->next = ev->subs;
    if (ev->subs)
        ev->subs->prev = sub;
    ev->subs = sub;
    ev->nsubs++;
    router_metric_set(ev->m_subs, ev->nsubs);

    uint64_t newest = ev->next_id - 1;
    sub->cursor = ev->next_id;
    if (have && last > newest) {
        /* An id this process never gave (the daemon restarted): all we
         * have, after a gap of unknown size. */
        if (s_send_gap(sub, ev->oldest - 1, last, 0, true) != 0) {
            s_sub_lost(sub, errno);
            return;
        }
        sub->cursor = ev->oldest;
    } else if (have && last + 1 < ev->oldest) {
        if (s_send_gap(sub, ev->oldest - 1, last, ev->oldest - 1 - last, false) != 0) {
            s_sub_lost(sub, errno);
            return;
        }
        sub->cursor = ev->oldest;
    } else if (have) {
        sub->cursor = last + 1;
    }
    s_sub_pump(sub);
}

/* ---------------------------------------------------------------- the ring */

static void s_evict_oldest(gateway_events_t *ev)
{
    s_slot_t *slot = &ev->ring[ev->oldest % ev->opts.ring_events];
    ev->ring_bytes -= slot->len;
    router_shared_buf_destroy(&slot->frame);
    *slot = (s_slot_t){0};
    ev->oldest++;
}

static bool s_type_ok(const char *type)
{
    size_t n = type ? strlen(type) : 0;
    if (n == 0 || n >= GATEWAY_EVENTS_TYPE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((type[i] >= 'a' && type[i] <= 'z') || (type[i] >= '0' && type[i] <= '9') ||
              type[i] == '_'))
            return false;
    return true;
}

/* The frame of event `id`: "id: <id>" and "data: " + data, where data is
 * {"type":"<type>"} or {"type":"<type>",<members>. Members without a line
 * break (what kith's own producers write) are copied as they are, in one
 * allocation; others go through the SSE encoder, which splits the data
 * into lines. Returns the frame (the caller owns its one reference) or NULL
 * with errno set. */
static router_shared_buf_t *s_frame(uint64_t id, const char *type, const char *members,
                                    size_t mlen, size_t *flen)
{
    char digits[20], *idt = s_digits(id, digits);
    size_t idn = (size_t) (digits + sizeof digits - idt);
    size_t tlen = strlen(type);
    bool empty = mlen == 1; /* just the closing brace */
    /* {"type":" <type> " then } or , <members> */
    size_t dlen = 9 + tlen + 1 + (empty ? 1 : 1 + mlen);
    if (!memchr(members, '\n', mlen) && !memchr(members, '\r', mlen)) {
        *flen = 4 + idn + 1 + 6 + dlen + 2;
        router_shared_buf_t *f = router_shared_buf_new(*flen);
        if (!f) {
            errno = ENOMEM;
            return NULL;
        }
        uint8_t *p = router_shared_buf_data(f);
#define S_PUT(src, n) (memcpy(p, (src), (n)), p += (n))
        S_PUT("id: ", 4);
        S_PUT(idt, idn);
        S_PUT("\ndata: {\"type\":\"", 16);
        S_PUT(type, tlen);
        S_PUT(empty ? "\"}" : "\",", 2);
        if (!empty)
            S_PUT(members, mlen);
        S_PUT("\n\n", 2);
#undef S_PUT
        return f;
    }
    char *data = malloc(dlen + 1);
    if (!data) {
        errno = ENOMEM;
        return NULL;
    }
    int dn = snprintf(data, dlen + 1, "{\"type\":\"%s\"%s%.*s", type, empty ? "" : ",",
                      (int) mlen, empty ? "}" : members);
    proto_sse_message_t msg = {
        .id = idt,
        .id_len = idn,
        .data = (const uint8_t *) data,
        .data_len = (size_t) dn,
        .retry_ms = -1,
    };
    ssize_t n = proto_sse_encoded_len(&msg, NULL);
    router_shared_buf_t *f = n > 0 ? router_shared_buf_new((size_t) n) : NULL;
    if (!f || proto_sse_encode(router_shared_buf_data(f), (size_t) n, &msg, NULL) != n) {
        router_shared_buf_destroy(&f);
        free(data);
        errno = n > 0 ? ENOMEM : EINVAL;
        return NULL;
    }
    free(data);
    *flen = (size_t) n;
    return f;
}

uint64_t gateway_events_publish(gateway_events_t *ev, const char *type, const char *json)
{
    size_t jlen = json ? strlen(json) : 0;
    if (!s_type_ok(type) || jlen < 2 || jlen > GATEWAY_EVENTS_JSON_MAX || json[0] != '{' ||
        json[jlen - 1] != '}') {
        errno = EINVAL;
        return 0;
    }
    const char *members = json + 1;
    while (*members == ' ' || *members == '\t' || *members == '\n' || *members == '\r')
        members++;
    uint64_t id = ev->next_id;
    size_t flen = 0;
    size_t mlen = jlen - (size_t) (members - json);
    router_shared_buf_t *frame = s_frame(id, type, members, mlen, &flen);
    if (!frame)
        return 0;
    while (ev->oldest < ev->next_id &&
           (ev->next_id - ev->oldest >= ev->opts.ring_events ||
            ev->ring_bytes + flen > ev->opts.ring_bytes_max))
        s_evict_oldest(ev);
    ev->ring[id % ev->opts.ring_events] = (s_slot_t){.frame = frame, .len = flen};
    ev->ring_bytes += flen;
    ev->next_id++;
    router_metric_inc(ev->m_events, 1);
    for (s_sub_t *sub = ev->subs, *next; sub; sub = next) {
        next = sub->next; /* a cut aborts, but on_close comes later */
        s_sub_pump(sub);
    }
    return id;
}

/* ---------------------------------------------------------------- keep-alive */

/* 0, or the errno with which the next keep-alive timer is to be refused.
 * The loop frees a timer's slot before its callback runs, so today the
 * re-arm cannot fail; this weak definition lets tests/events_test.c
 * override it to run the paths that handle a refusal (as
 * router_uring_sqe_refused does for the io_uring loop). */
__attribute__((weak)) int gateway_events_timer_fault(void)
{
    return 0;
}

/* Arms the keep-alive timer. Returns 0, or -1 with errno (the loop's:
 * ENOMEM, ENOSPC when it has no timer slot) and ev->timer 0. */
static int s_timer_arm(gateway_events_t *ev)
{
    int fault = gateway_events_timer_fault();
    if (fault) {
        ev->timer = 0;
        errno = fault;
        return -1;
    }
    ev->timer = router_loop_timer_add(ev->loop, ev->opts.keepalive_ms, s_keepalive, ev);
    return ev->timer ? 0 : -1;
}

/* The keep-alive timer could not be re-armed: the subscribers would sit
 * on a connection that a proxy or the client may take for dead, with
 * nobody told. Each is sent a comment naming the reason and closed
 * (gracefully: what it was owed is flushed first), counted; a client
 * reconnects with its last id, and the next subscribe arms the timer
 * again or is refused. */
static void s_keepalive_lost(gateway_events_t *ev, int err)
{
    char text[96];
    int tn = snprintf(text, sizeof text, "closing: keep-alives unavailable (%s)", strerror(err));
    uint8_t line[128];
    ssize_t n = proto_sse_encode_comment(line, sizeof line, text,
                                         tn > 0 && (size_t) tn < sizeof text ? (size_t) tn : 0,
                                         NULL);
    uint32_t closed = 0;
    for (s_sub_t *sub = ev->subs; sub; sub = sub->next) {
        if (sub->cut)
            continue;
        sub->cut = true;
        closed++;
        if (n > 0 && router_conn_send_queued(sub->conn) + (size_t) n <= ev->opts.unsent_max)
            (void) router_conn_send(sub->conn, line, (size_t) n);
        router_conn_close(sub->conn);
    }
    ev->keepalive_lost += closed;
    router_metric_inc(ev->m_lost, closed);
    ROUTER_LOG(ROUTER_LOG_ERROR, "gateway",
               "sse %s: keep-alive timer not re-armed (%s): %u subscribers closed", ev->name,
               strerror(err), closed);
}

static void s_keepalive(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    gateway_events_t *ev = ud;
    uint8_t line[32];
    ssize_t n = proto_sse_encode_comment(line, sizeof line, "keep-alive", 10, NULL);
    for (s_sub_t *sub = ev->subs; sub && n > 0; sub = sub->next)
        if (!sub->cut && router_conn_send_queued(sub->conn) + (size_t) n <= ev->opts.unsent_max)
            (void) router_conn_send(sub->conn, line, (size_t) n);
    if (s_timer_arm(ev) != 0)
        s_keepalive_lost(ev, errno);
}

/* ---------------------------------------------------------------- lifecycle */

static void s_metrics_register(gateway_events_t *ev)
{
    router_metrics_t *m = ev->opts.metrics;
    if (!m)
        return;
    char labels[64];
    snprintf(labels, sizeof labels, "stream=\"%s\"", ev->name);
    ev->m_subs = router_metrics_add(m, "kith_sse_subscribers", labels, ROUTER_METRIC_GAUGE,
                                    "SSE subscribers connected, by stream.");
    ev->m_cut = router_metrics_add(m, "kith_sse_cut_total", labels, ROUTER_METRIC_COUNTER,
                                   "SSE subscribers cut for not keeping up, by stream.");
    ev->m_events = router_metrics_add(m, "kith_sse_events_total", labels, ROUTER_METRIC_COUNTER,
                                      "SSE events published, by stream.");
    ev->m_lost = router_metrics_add(m, "kith_sse_keepalive_lost_total", labels,
                                    ROUTER_METRIC_COUNTER,
                                    "SSE subscribers closed because the keep-alive timer could "
                                    "not be re-armed, by stream.");
}

gateway_events_t *gateway_events_new(router_loop_t *loop, const gateway_events_opts_t *opts)
{
    gateway_events_opts_t o = opts ? *opts : (gateway_events_opts_t){0};
    if (!loop || (o.name && (strlen(o.name) >= S_NAME_MAX || !s_type_ok(o.name)))) {
        errno = EINVAL;
        return NULL;
    }
    if (!o.ring_events)
        o.ring_events = GATEWAY_EVENTS_RING_DEFAULT;
    if (!o.ring_bytes_max)
        o.ring_bytes_max = GATEWAY_EVENTS_RING_BYTES_MAX;
    if (!o.unsent_max)
        o.unsent_max = GATEWAY_EVENTS_UNSENT_MAX;
    if (!o.subscribers_max)
        o.subscribers_max = GATEWAY_EVENTS_SUBSCRIBERS_MAX;
    if (!o.keepalive_ms)
        o.keepalive_ms = GATEWAY_EVENTS_KEEPALIVE_MS;
    if (o.ring_events > (1u << 24)) {
        errno = EINVAL;
        return NULL;
    }
    gateway_events_t *ev = calloc(1, sizeof *ev);
    if (!ev || !(ev->ring = calloc(o.ring_events, sizeof *ev->ring))) {
        free(ev);
        errno = ENOMEM;
        return NULL;
    }
    ev->loop = loop;
    snprintf(ev->name, sizeof ev->name, "%s", o.name ? o.name : "events");
    o.name = ev->name;
    ev->opts = o;
    ev->next_id = ev->oldest = 1;
    s_metrics_register(ev);
    if (s_timer_arm(ev) != 0) {
        int e = errno; /* the loop's: ENOMEM, or ENOSPC (no timer slot) */
        gateway_events_destroy(&ev);
        errno = e;
        return NULL;
    }
    return ev;
}

void gateway_events_destroy(gateway_events_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_events_t *ev = *self_p;
    if (ev->timer)
        (void) router_loop_timer_cancel(ev->loop, ev->timer);
    for (s_sub_t *sub = ev->subs, *next; sub; sub = next) {
        next = sub->next;
        free(sub);
    }
    while (ev->oldest < ev->next_id)
        s_evict_oldest(ev);
    router_metric_set(ev->m_subs, 0);
    free(ev->ring);
    free(ev);
    *self_p = NULL;
}

const uint8_t *gateway_events_frame(const gateway_events_t *ev, uint64_t id, size_t *len)
{
    if (id < ev->oldest || id >= ev->next_id)
        return NULL;
    const s_slot_t *slot = &ev->ring[id % ev->opts.ring_events];
    *len = slot->len;
    return router_shared_buf_data(slot->frame);
}

void gateway_events_stats(const gateway_events_t *ev, gateway_events_stats_t *out)
{
    *out = (gateway_events_stats_t){
        .newest = ev->next_id - 1,
        .oldest = ev->oldest,
        .ring_bytes = ev->ring_bytes,
        .subscribers = ev->nsubs,
        .cut = ev->cut,
        .keepalive_lost = ev->keepalive_lost,
    };
}

const struct gateway_auth *gateway_events_auth(const gateway_events_t *ev)
{
    return ev->opts.auth;
}
