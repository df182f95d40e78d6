/* router/workers/audit_feed.c — the bounded queue of audit events and its
 * one-request-at-a-time batching to the audit worker. See audit_feed.h and
 * WIRE §21.7. */
#include "router/workers/audit_feed.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/audit_msg.h"
#include "proto/pubkey.h"
#include "proto/utf8.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/workers/audit_limit.h"

/* A batch stays well under the 1 MiB body. */
#define S_BATCH_BYTES_MAX (768u * 1024u)
#define S_RETRY_MAX_MS 30000u
/* How often the counts of events the limit held back are written, as
 * audit_suppressed records (WIRE §21.7). */
#define S_SUPPRESSED_EVERY_MS 10000u

typedef struct {
    uint64_t time_ms;
    size_t type_len;
    size_t detail_len;
    char *type;          /* points into the same allocation */
    char *detail;
} s_event_t;

struct router_audit_feed {
    router_loop_t *loop;
    router_broker_t *broker;
    s_event_t **ring;            /* queue_max slots */
    size_t cap, head, count;     /* the oldest at head */
    size_t bytes;                /* type + detail bytes held */
    size_t in_flight;            /* events at the head sent and not yet acknowledged */
    int64_t request;             /* the broker's handle; 0 none, -1 being sent */
    uint64_t sends;              /* counts s_send's requests (a reply may come inside one) */
    uint64_t timer;              /* flush or retry timer, 0 for none */
    struct s_post *post;         /* stands in for a timer the loop could not add; NULL none */
    bool timer_failing;          /* the last timer add failed (logged once, until one works) */
    uint32_t retry_first_ms;
    uint32_t retry_ms;           /* the next retry's delay */
    router_audit_limit_t *limit; /* what outsiders' events may cost the log */
    uint64_t limit_timer;        /* the next audit_suppressed records, 0 for none */
    bool limit_flushing;         /* the counts are being pushed (they are 0 after) */
    router_audit_feed_drained_fn *drained; /* a stop waits for the queue to empty */
    void *drained_ud;
    uint64_t drain_timer;        /* the stop's wait, 0 for none */
    router_audit_feed_stats_t st;
    router_metric_t *m_events, *m_appended, *m_dropped, *m_retries, *m_queue, *m_suppressed,
        *m_timer_failures;
};

/* A post that stands in for a timer the loop could not add (its timers at
 * max_timers, or no memory). The loop runs every post it took, at the
 * latest inside router_loop_destroy, so a feed destroyed first only
 * unhooks itself (feed NULL) and the post frees itself. */
struct s_post {
    router_audit_feed_t *feed; /* NULL once the feed is gone */
    uint64_t ms;               /* the delay the timer was for */
};

/* ================================================================ details */

void router_audit_detail_init(router_audit_detail_t *d)
{
    d->buf[0] = '{';
    d->len = 1;
    d->overflow = false;
}

static void s_put(router_audit_detail_t *d, const char *p, size_t n)
{
    if (d->overflow || d->len + n + 2 > sizeof d->buf) { /* room for "}\0" */
        d->overflow = true;
        return;
    }
    memcpy(d->buf + d->len, p, n);
    d->len += n;
}

static void s_put_json_str(router_audit_detail_t *d, const char *s, size_t n)
{
    bool utf8 = proto_utf8_valid((const uint8_t *) s, n);
    s_put(d, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char) c;
            s_put(d, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            s_put(d, esc, 6);
        } else if (c >= 0x80 && !utf8) {
            s_put(d, "?", 1);
        } else {
            s_put(d, (const char *) &c, 1);
        }
    }
    s_put(d, "\"", 1);
}

static void s_key(router_audit_detail_t *d, const char *key)
{
    if (d->len > 1)
        s_put(d, ",", 1);
    s_put_json_str(d, key, strlen(key));
    s_put(d, ":", 1);
}

void router_audit_detail_strn(router_audit_detail_t *d, const char *key, const char *value, size_t n)
{
    s_key(d, key);
    s_put_json_str(d, value ? value : "", value ? n : 0);
}

void router_audit_detail_str(router_audit_detail_t *d, const char *key, const char *value)
{
    router_audit_detail_strn(d, key, value, value ? strlen(value) : 0);
}

void router_audit_detail_u64(router_audit_detail_t *d, const char *key, uint64_t value)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%llu", (unsigned long long) value);
    s_key(d, key);
    s_put(d, num, (size_t) n);
}

void router_audit_detail_bool(router_audit_detail_t *d, const char *key, bool value)
{
    s_key(d, key);
    s_put(d, value ? "true" : "false", value ? 4 : 5);
}

const char *router_audit_detail_end(router_audit_detail_t *d)
{
    if (d->overflow) {
        static const char cut[] = "{\"truncated\":true}";
        memcpy(d->buf, cut, sizeof cut);
        d->len = sizeof cut - 1;
        return d->buf;
    }
    d->buf[d->len++] = '}';
    d->buf[d->len] = '\0';
    return d->buf;
}

/* ================================================================ queue */

router_audit_feed_t *router_audit_feed_new(const router_audit_feed_opts_t *o)
{
    router_audit_feed_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = o->loop;
    self->broker = o->broker;
    self->cap = o->queue_max ? o->queue_max : ROUTER_AUDIT_FEED_QUEUE_MAX;
    self->retry_first_ms = self->retry_ms = o->retry_ms ? o->retry_ms : 1000;
    if (!(self->ring = calloc(self->cap, sizeof *self->ring)) ||
        !(self->limit = router_audit_limit_new())) {
        free(self->ring);
        free(self);
        return NULL;
    }
    if (o->metrics) {
        router_metrics_t *m = o->metrics;
        self->m_events = router_metrics_add(m, "kith_audit_events_total", NULL, ROUTER_METRIC_COUNTER,
                                            "Audit events queued for the audit worker");
        self->m_appended = router_metrics_add(m, "kith_audit_appended_total", NULL,
                                              ROUTER_METRIC_COUNTER,
                                              "Audit events the audit worker made durable");
        self->m_dropped = router_metrics_add(m, "kith_audit_dropped_total", NULL,
                                             ROUTER_METRIC_COUNTER,
                                             "Audit events refused because the audit queue was full");
        self->m_retries = router_metrics_add(m, "kith_audit_retries_total", NULL,
                                             ROUTER_METRIC_COUNTER,
                                             "Audit batches sent again after the worker failed them");
        self->m_queue = router_metrics_add(m, "kith_audit_queue", NULL, ROUTER_METRIC_GAUGE,
                                           "Audit events waiting for the audit worker");
        self->m_suppressed = router_metrics_add(
            m, "kith_audit_suppressed_total", NULL, ROUTER_METRIC_COUNTER,
            "Audit events from outside held back by the rate limit (counted in audit_suppressed)");
        self->m_timer_failures = router_metrics_add(
            m, "kith_audit_timer_failures_total", NULL, ROUTER_METRIC_COUNTER,
            "Times the audit feed could not add a loop timer to send or retry a batch");
    }
    return self;
}

static s_event_t *s_at(const router_audit_feed_t *self, size_t i)
{
    return self->ring[(self->head + i) % self->cap];
}

static void s_drained(router_audit_feed_t *self, bool timed_out);

/* Frees the n oldest events. */
static void s_pop(router_audit_feed_t *self, size_t n)
{
    for (size_t i = 0; i < n && self->count; i++) {
        s_event_t *ev = self->ring[self->head];
        self->bytes -= ev->type_len + ev->detail_len;
        free(ev);
        self->ring[self->head] = NULL;
        self->head = (self->head + 1) % self->cap;
        self->count--;
    }
    self->st.queued = self->count;
    router_metric_set(self->m_queue, self->count);
    if (self->drained && !self->count)
        s_drained(self, false);
}

void router_audit_feed_destroy(router_audit_feed_t **self_p)
{
    router_audit_feed_t *self = *self_p;
    if (!self)
        return;
    self->drained = NULL; /* the loop is over: nobody waits any more */
    if (self->drain_timer)
        (void) router_loop_timer_cancel(self->loop, self->drain_timer);
    if (self->request > 0)
        router_broker_cancel(self->broker, self->request);
    if (self->post)
        self->post->feed = NULL; /* the loop still runs it: it frees itself */
    if (self->timer)
        (void) router_loop_timer_cancel(self->loop, self->timer);
    if (self->limit_timer)
        (void) router_loop_timer_cancel(self->loop, self->limit_timer);
    if (router_audit_limit_pending(self->limit))
        ROUTER_LOG(ROUTER_LOG_WARN, "audit",
                   "%llu audit events held back by the rate limit, not yet summed up at shutdown",
                   (unsigned long long) router_audit_limit_pending(self->limit));
    router_audit_limit_destroy(&self->limit);
    if (self->count) {
        ROUTER_LOG(ROUTER_LOG_WARN, "audit", "%zu audit events not yet written at shutdown: dropped",
                   self->count);
        router_metric_inc(self->m_dropped, self->count);
    }
    s_pop(self, self->count);
    free(self->ring);
    free(self);
    *self_p = NULL;
}

static void s_send(router_audit_feed_t *self);
static void s_limit_arm(router_audit_feed_t *self);

static void s_on_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    router_audit_feed_t *self = ud;
    self->timer = 0;
    s_limit_arm(self);
    s_send(self);
}

/* Adds the send or retry timer; 0, or -1 (counted, and logged once until
 * a timer is added again). */
static int s_timer_add(router_audit_feed_t *self, uint64_t ms)
{
    if ((self->timer = router_loop_timer_add(self->loop, ms, s_on_timer, self)) != 0) {
        self->timer_failing = false;
        return 0;
    }
    self->st.timer_failures++;
    router_metric_inc(self->m_timer_failures, 1);
    if (!self->timer_failing)
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit",
                   "cannot add the audit feed's timer (%s): %zu queued audit events are sent from "
                   "the next loop iteration or with the next event, counted in "
                   "kith_audit_timer_failures_total",
                   strerror(errno), self->count);
    self->timer_failing = true;
    return -1;
}

static void s_on_post(router_loop_t *loop, void *arg)
{
    (void) loop;
    struct s_post *p = arg;
    router_audit_feed_t *self = p->feed;
    uint64_t ms = p->ms;
    free(p);
    if (!self)
        return; /* destroyed meanwhile */
    self->post = NULL;
    s_limit_arm(self);
    if (self->timer || self->request != 0)
        return;
    /* A send waits for nothing: send now. A retry's wait is tried as a timer
     * once more, not skipped: sending a failed batch again at once, each
     * time it fails, would send it as fast as the worker can fail it. If
     * that fails as well, the next event pushed sends the queue. */
    if (ms == 0)
        s_send(self);
    else
        (void) s_timer_add(self, ms);
}

/* Sends the queue after ms (0: in the next loop iteration, so what one
 * iteration pushes goes together). Queued events are never left without
 * something that sends them: when the loop cannot add the timer, a post
 * stands in for it; when it cannot take the post either, the next push
 * (which schedules again) sends them. */
static void s_schedule(router_audit_feed_t *self, uint64_t ms)
{
    if (self->timer || self->post || self->request != 0)
        return;
    if (s_timer_add(self, ms) == 0)
        return;
    struct s_post *p = malloc(sizeof *p);
    if (p) {
        *p = (struct s_post){.feed = self, .ms = ms};
        if (router_loop_post(self->loop, s_on_post, p) == 0) {
            self->post = p;
            return;
        }
        free(p);
    }
    ROUTER_LOG(ROUTER_LOG_ERROR, "audit",
               "cannot post the audit feed's send either: %zu queued audit events wait for the "
               "next event", self->count);
}

/* The worker failed the batch in flight, or died holding it: keep it and
 * send it again later, waiting longer each time. */
static void s_retry(router_audit_feed_t *self, const char *why)
{
    self->in_flight = 0;
    self->st.retries++;
    router_metric_inc(self->m_retries, 1);
    ROUTER_LOG(ROUTER_LOG_WARN, "audit", "audit batch not stored (%s): %zu events kept, retrying in %u ms",
               why, self->count, self->retry_ms);
    s_schedule(self, self->retry_ms);
    self->retry_ms = self->retry_ms * 2 > S_RETRY_MAX_MS ? S_RETRY_MAX_MS : self->retry_ms * 2;
}

static void s_on_reply(int kind, const uint8_t *body, size_t len, void *ud)
{
    router_audit_feed_t *self = ud;
    if (kind == 0)
        return; /* audit replies have no partials */
    self->request = 0;
    s_limit_arm(self);
    if (kind < 0) {
        s_retry(self, "the audit worker went away");
        return;
    }
    proto_audit_msg_t m;
    proto_audit_err_t e;
    if (proto_audit_msg_decode(body, len, &m, &e) != 0) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "the audit worker answered with a bad body (%s)",
                   proto_audit_err_str(e));
        s_retry(self, "bad reply");
        return;
    }
    if (m.kind == PROTO_AUDIT_APPENDED && m.count > 0) {
        /* The worker says these are durable: they are never sent again,
         * which could write them twice. kith's worker stores a batch whole;
         * another worker serving kith.audit (workers.listen) may store its
         * first `count` events only: the rest stay queued, at the head, and
         * go in the next batch. A count past the batch is the worker's
         * mistake: the batch counts as stored, and the mistake is logged. */
        size_t done = m.count < self->in_flight ? (size_t) m.count : self->in_flight;
        if (m.count != self->in_flight)
            ROUTER_LOG(m.count > self->in_flight ? ROUTER_LOG_ERROR : ROUTER_LOG_WARN, "audit",
                       "the audit worker appended %llu events of a batch of %zu: %s",
                       (unsigned long long) m.count, self->in_flight,
                       m.count > self->in_flight ? "more than it was sent, the batch counts as stored"
                                                 : "the rest are sent again in the next batch");
        self->st.appended += done;
        self->st.batches++;
        router_metric_inc(self->m_appended, done);
        s_pop(self, done);
        self->in_flight = 0;
        self->retry_ms = self->retry_first_ms;
        if (self->count)
            s_send(self); /* what is left and what came meanwhile: the next group commit */
    } else if (m.kind == PROTO_AUDIT_ERROR && m.code && strcmp(m.code, "bad_request") == 0) {
        /* kith sent what kith's worker cannot read: a bug, not a disk
         * problem; sending it again would loop. */
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "the audit worker refused a batch of %zu events: %s",
                   self->in_flight, m.reason ? m.reason : "");
        router_metric_inc(self->m_dropped, self->in_flight);
        self->st.dropped += self->in_flight;
        s_pop(self, self->in_flight);
        self->in_flight = 0;
        if (self->count)
            s_send(self);
    } else {
        s_retry(self, m.kind == PROTO_AUDIT_ERROR && m.reason ? m.reason : "unexpected reply");
    }
    proto_audit_msg_clear(&m);
}

/* Sends the oldest events (up to a batch) as one audit-append. */
static void s_send(router_audit_feed_t *self)
{
    if (self->request != 0 || self->count == 0 || !self->broker)
        return;
    size_t n = 0, bytes = 0;
    proto_audit_event_t *evs = calloc(self->count < PROTO_AUDIT_EVENTS_MAX ? self->count
                                                                           : PROTO_AUDIT_EVENTS_MAX,
                                      sizeof *evs);
    if (!evs) {
        s_schedule(self, self->retry_ms);
        return;
    }
    while (n < self->count && n < PROTO_AUDIT_EVENTS_MAX) {
        s_event_t *ev = s_at(self, n);
        size_t b = ev->type_len + ev->detail_len + 64;
        if (n > 0 && bytes + b > S_BATCH_BYTES_MAX)
            break;
        evs[n++] = (proto_audit_event_t){.time_ms = ev->time_ms, .type = ev->type,
                                         .type_len = ev->type_len, .detail = ev->detail,
                                         .detail_len = ev->detail_len};
        bytes += b;
    }
    proto_audit_msg_t m = {.kind = PROTO_AUDIT_APPEND, .events = evs, .n_events = n};
    uint8_t *body = NULL;
    size_t len = 0;
    proto_audit_err_t e;
    int rc = proto_audit_msg_encode(&m, &body, &len, &e);
    free(evs);
    if (rc != 0) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "cannot encode an audit batch: %s", proto_audit_err_str(e));
        s_schedule(self, self->retry_ms);
        return;
    }
    /* The broker may run the reply inside router_broker_request (it drains
     * its sockets after sending): the state is in place before the call,
     * and a reply that came inside it is not overwritten after. */
    self->request = -1;
    self->in_flight = n;
    uint64_t mine = ++self->sends;
    int64_t h = router_broker_request(self->broker, ROUTER_AUDIT_SERVICE, body, len, s_on_reply, self);
    free(body);
    if (self->sends != mine || self->request != -1)
        return; /* answered already (and maybe the next batch sent) */
    if (h <= 0) {
        self->request = 0;
        s_retry(self, "the broker's queue is full");
        return;
    }
    self->request = h;
}

int router_audit_feed_push(router_audit_feed_t *self, const char *type, const char *detail)
{
    if (!self)
        return 0;
    size_t tl = strlen(type), dl = strlen(detail);
    /* Text that is not UTF-8 would make the worker's decoder refuse the
     * whole batch (bad_request, dropped): refuse this one event instead. */
    if (tl < 1 || tl > PROTO_AUDIT_TYPE_MAX || dl > PROTO_AUDIT_DETAIL_MAX ||
        !proto_utf8_valid((const uint8_t *) type, tl) || !proto_utf8_valid((const uint8_t *) detail, dl)) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit",
                   "audit event refused: type or detail out of bounds or not UTF-8 (type %zu bytes, "
                   "detail %zu)", tl, dl);
        router_metric_inc(self->m_dropped, 1);
        self->st.dropped++;
        return -1;
    }
    s_event_t *ev = NULL;
    if (self->count == self->cap || self->bytes + tl + dl > ROUTER_AUDIT_FEED_BYTES_MAX ||
        !(ev = malloc(sizeof *ev + tl + 1 + dl + 1))) {
        router_metric_inc(self->m_dropped, 1);
        self->st.dropped++;
        if (self->count == self->cap || self->bytes + tl + dl > ROUTER_AUDIT_FEED_BYTES_MAX)
            ROUTER_LOG(ROUTER_LOG_ERROR, "audit",
                       "audit queue full (%zu events, the worker is behind or down): %s event dropped, "
                       "counted in kith_audit_dropped_total",
                       self->count, type);
        else
            ROUTER_LOG(ROUTER_LOG_ERROR, "audit",
                       "out of memory: %s audit event dropped, counted in kith_audit_dropped_total", type);
        return -1;
    }
    ev->time_ms = router_clock_wall_ms();
    ev->type = (char *) (ev + 1);
    ev->detail = ev->type + tl + 1;
    ev->type_len = tl;
    ev->detail_len = dl;
    memcpy(ev->type, type, tl + 1);
    memcpy(ev->detail, detail, dl + 1);
    self->ring[(self->head + self->count) % self->cap] = ev;
    self->count++;
    self->bytes += tl + dl;
    self->st.pushed++;
    self->st.queued = self->count;
    router_metric_inc(self->m_events, 1);
    router_metric_set(self->m_queue, self->count);
    /* Send on the next iteration, so what this one pushes goes together. */
    s_schedule(self, 0);
    s_limit_arm(self);
    return 0;
}

void router_audit_feed_on_comms(router_audit_feed_t *self, const router_comms_event_t *ev)
{
    if (!self || ev->admitted)
        return;
    router_audit_detail_t d;
    router_audit_detail_init(&d);
    router_audit_detail_str(&d, "reason", proto_wire_reason_str(ev->reason));
    router_audit_detail_str(&d, "detail", ev->detail);
    if (ev->id) {
        char id[PROTO_UUID_TEXT_CAP];
        proto_uuid_format(ev->id, id);
        router_audit_detail_str(&d, "id", id);
    }
    if (ev->from) {
        char from[PROTO_PUBKEY_TEXT_CAP];
        if (proto_pubkey_format(ev->from, from, sizeof from) >= 0)
            router_audit_detail_str(&d, "from", from);
    }
    if (ev->peer_name)
        router_audit_detail_str(&d, "peer", ev->peer_name);
    if (ev->kind)
        router_audit_detail_str(&d, "kind", ev->kind);
    router_audit_detail_u64(&d, "conn", ev->conn_id);
    char client[ROUTER_ADDR_CLIENT_MAX];
    router_addr_client(ev->addr, client);
    router_audit_detail_str(&d, "client", client);
    (void) router_audit_feed_push_from(self, "envelope_rejected", client,
                                       router_audit_detail_end(&d));
}

void router_audit_feed_tool_call(router_audit_feed_t *self, const char *session_id,
                                 const char *tool, const char *call_id, bool is_error)
{
    if (!self)
        return;
    router_audit_detail_t d;
    router_audit_detail_init(&d);
    router_audit_detail_str(&d, "session_id", session_id);
    router_audit_detail_str(&d, "tool", tool);
    router_audit_detail_str(&d, "call_id", call_id);
    router_audit_detail_bool(&d, "is_error", is_error);
    (void) router_audit_feed_push(self, "tool_call", router_audit_detail_end(&d));
}

void router_audit_feed_stats(const router_audit_feed_t *self, router_audit_feed_stats_t *out)
{
    *out = self->st;
}

/* ================================================================ the limit */

static void s_on_suppressed(const char *type, const char *source, uint64_t count,
                            uint64_t first_ms, uint64_t last_ms, void *ud)
{
    router_audit_detail_t d;
    router_audit_detail_init(&d);
    router_audit_detail_str(&d, "type", type);
    router_audit_detail_str(&d, "client", source);
    router_audit_detail_u64(&d, "count", count);
    router_audit_detail_u64(&d, "first_ms", first_ms);
    router_audit_detail_u64(&d, "last_ms", last_ms);
    (void) router_audit_feed_push(ud, "audit_suppressed", router_audit_detail_end(&d));
}

static void s_limit_flush(router_audit_feed_t *self)
{
    self->limit_flushing = true;
    router_audit_limit_flush(self->limit, s_on_suppressed, self);
    self->limit_flushing = false;
}

static void s_on_limit_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    router_audit_feed_t *self = ud;
    self->limit_timer = 0;
    s_limit_flush(self);
}

/* The timer that sums up the events held back, when some are and it is not
 * set. Tried again at each step of the feed (a send, a reply, a post, the
 * next push) when the loop had no timer: before, only the next event held
 * back tried again, so the count of a burst that had found the table full
 * waited for a graceful stop to be written (WIRE §21.7 says within 10 s). */
static void s_limit_arm(router_audit_feed_t *self)
{
    if (self->limit_timer || self->limit_flushing || !router_audit_limit_pending(self->limit))
        return;
    self->limit_timer = router_loop_timer_add(self->loop, S_SUPPRESSED_EVERY_MS, s_on_limit_timer, self);
    if (!self->limit_timer) {
        self->st.timer_failures++;
        router_metric_inc(self->m_timer_failures, 1);
    }
}

int router_audit_feed_push_from(router_audit_feed_t *self, const char *type, const char *client,
                                const char *detail)
{
    if (!self)
        return 0;
    if (router_audit_limit_take(self->limit, type, client, router_clock_wall_ms()))
        return router_audit_feed_push(self, type, detail);
    self->st.suppressed++;
    router_metric_inc(self->m_suppressed, 1);
    s_limit_arm(self);
    return 0;
}

/* ================================================================ a stop */

static void s_drained(router_audit_feed_t *self, bool timed_out)
{
    router_audit_feed_drained_fn *fn = self->drained;
    if (!fn)
        return;
    self->drained = NULL;
    if (self->drain_timer) {
        (void) router_loop_timer_cancel(self->loop, self->drain_timer);
        self->drain_timer = 0;
    }
    if (timed_out)
        ROUTER_LOG(ROUTER_LOG_WARN, "audit",
                   "stopping: %zu audit events not yet written when the wait for them ended",
                   self->count);
    fn(self->drained_ud);
}

static void s_on_drain_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    router_audit_feed_t *self = ud;
    self->drain_timer = 0;
    s_drained(self, true);
}

void router_audit_feed_drain(router_audit_feed_t *self, router_audit_feed_drained_fn *drained,
                             void *ud, uint32_t timeout_ms)
{
    if (!self) {
        drained(ud);
        return;
    }
    if (self->limit_timer) {
        (void) router_loop_timer_cancel(self->loop, self->limit_timer);
        self->limit_timer = 0;
    }
    s_limit_flush(self);
    self->drained = drained;
    self->drained_ud = ud;
    if (!self->count) {
        s_drained(self, false);
        return;
    }
    self->drain_timer = router_loop_timer_add(self->loop, timeout_ms, s_on_drain_timer, self);
    if (!self->drain_timer) /* no timer to bound the wait: do not wait */
        s_drained(self, true);
}
