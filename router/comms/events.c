/* router/comms/events.c — plain-event connections: lines split by
 * proto/line into storage that exists only while a line spans reads, each
 * line parsed (event_line.c) and queued in the inbox; accept, deadlines,
 * the partial budget and drain through the guard; at the connection cap,
 * the connection idle the longest gives way to a newcomer. */
#include "router/comms/events.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/line.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/comms/event_line.h"
#include "router/log.h"
#include "router/net/conn.h"

/* First storage for a line spanning reads; it doubles up to PROTO_LINE_MAX. */
#define S_FIRST_CAP 1024u
/* Input handed to a connection per loop iteration (its turn): a line costs
 * ~0.5 µs to parse and admit, far more than an envelope's byte, so a flood
 * of lines gets 4 KiB (~70 lines, tens of µs) before the loop serves
 * everyone else (GET /health stayed 20-250x its idle latency with the
 * loop's 16 KiB turn); the rest is parked, never dropped (loop.h). */
#define S_TURN_BYTES 4096u
/* Listeners one events object may have open. */
#define S_LISTENERS_MAX 8

typedef struct s_ec s_ec_t;

/* One plain-event connection. */
struct s_ec {
    router_events_t *ev;         /* owner */
    router_conn_t *conn;         /* the loop's connection */
    proto_line_reader_t reader;  /* lines out of the byte stream */
    uint8_t *buf;                /* storage of a line spanning reads, or NULL */
    size_t cap;                  /* bytes of buf */
    router_guard_conn_t guard;   /* bounds and deadlines */
    bool stopped;                /* cut or draining: no more reading */
    bool evicted;                /* cut to admit a newcomer; on_close pending */
    bool seen_line;              /* has completed a line */
    uint64_t last;               /* activity tick: accepted, or its last line ended */
    s_ec_t *prev, *next;         /* all connections */
};

struct router_events {
    router_loop_t *loop;
    router_inbox_t *inbox;
    router_channel_event_fn *on_queued; /* may be NULL */
    void *on_queued_ud;
    router_channel_event_t batch;       /* the lines of the read being handled */
    uint8_t batch_id[16];               /* its first line's id */
    router_guard_t *guard;
    uint32_t connections_max;
    router_listener_t *listeners[S_LISTENERS_MAX];
    size_t nlisteners;
    s_ec_t *conns;
    unsigned evicting;             /* evicted connections whose on_close is pending */
    uint64_t tick;                 /* the last activity tick handed out */
    bool refusing;                 /* a refusal at the cap was logged (once per streak) */
    bool draining;
    router_events_stats_t stats;
    router_metric_t *m_queued, *m_skipped;
    router_metric_t *m_open;       /* kith_events_connections_open */
    router_metric_t *m_refused;    /* kith_events_connections_refused_total */
};

/* ---------------------------------------------------------------- lines */

static void s_skip(router_events_t *self, const char *why)
{
    self->stats.skipped++;
    router_metric_inc(self->m_skipped, 1);
    ROUTER_LOG(ROUTER_LOG_WARN, "events", "skipped a line: reason=%s", why);
}

static void s_line(router_events_t *self, const uint8_t *line, size_t len)
{
    char *body = NULL;
    size_t body_len = 0;
    router_event_line_reason_t r = router_event_line_parse(line, len, &body, &body_len);
    if (r == ROUTER_EVENT_LINE_EMPTY)
        return;
    if (r != ROUTER_EVENT_LINE_OK) {
        s_skip(self, router_event_line_reason_str(r));
        return;
    }
    uint8_t id[16], nobody[32] = {0};
    uint64_t seq;
    proto_uuid_v7_new(id);
    /* Event lines carry no sender's id: nothing to remember (seen NULL). */
    router_inbox_outcome_t out = router_inbox_admit(self->inbox, id, nobody, "event",
                                                    (const uint8_t *) body, body_len,
                                                    router_clock_wall_ms(), NULL, &seq);
    if (out == ROUTER_INBOX_ADMITTED) {
        self->stats.queued++;
        router_metric_inc(self->m_queued, 1);
        /* Per line, so DEBUG: at INFO a burst of events floods the log and
         * the loop spends its time formatting lines (/health stalled). */
        ROUTER_LOG(ROUTER_LOG_DEBUG, "events", "queued event seq=%llu bytes=%zu",
                   (unsigned long long) seq, body_len);
        if (!self->batch.count) {
            memcpy(self->batch_id, id, sizeof self->batch_id);
            self->batch.seq = seq;
        }
        self->batch.count++;
        self->batch.last_seq = seq;
        self->batch.bytes += body_len;
    } else {
        s_skip(self, router_inbox_outcome_str(out));
    }
    free(body);
}

/* ---------------------------------------------------------------- storage */

static uint8_t *s_grow(void *user, size_t need, size_t *cap)
{
    s_ec_t *ec = user;
    size_t n = ec->cap ? ec->cap : S_FIRST_CAP;
    while (n < need)
        n *= 2;
    if (n > PROTO_LINE_MAX)
        n = PROTO_LINE_MAX;
    if (n < need || router_guard_hold(&ec->guard, n) != 0)
        return NULL;
    uint8_t *b = realloc(ec->buf, n);
    if (!b) {
        router_guard_drop(&ec->guard, ec->cap);
        return NULL;
    }
    ec->buf = b;
    ec->cap = n;
    *cap = n;
    return b;
}

static void s_storage_free(s_ec_t *ec)
{
    free(ec->buf);
    ec->buf = NULL;
    ec->cap = 0;
    router_guard_drop(&ec->guard, 0);
}

/* ---------------------------------------------------------------- connections */

/* One channel_event for the lines the read just handled admitted. */
static void s_batch_report(router_events_t *self)
{
    if (self->batch.count && self->on_queued) {
        self->batch.channel = "event_line";
        self->batch.id = self->batch_id;
        self->on_queued(&self->batch, self->on_queued_ud);
    }
    memset(&self->batch, 0, sizeof self->batch);
}

static void s_on_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    s_ec_t *ec = ud;
    unsigned lines = 0;
    while (len > 0 && !ec->stopped) {
        proto_line_t item;
        ssize_t n = proto_line_read(&ec->reader, data, len, &item);
        if (n == -2)
            break;
        if (n < 0) {
            /* The partial budget (counted by the guard) or memory: reset. */
            ROUTER_LOG(ROUTER_LOG_WARN, "events", "connection %llu cut: no room for a line",
                       (unsigned long long) router_conn_id(conn));
            ec->stopped = true;
            s_storage_free(ec);
            s_batch_report(ec->ev); /* what it admitted before the cut */
            router_conn_abort(conn);
            return;
        }
        data += n;
        len -= (size_t) n;
        lines++;
        if (item.kind == PROTO_LINE_TOO_LONG) {
            s_skip(ec->ev, "too_long");
            /* The rest of it is skipped unstored (proto/line.h): the
             * 64 KiB kept so far go back to the partial budget now, not
             * at its LF, which may be a frame deadline away. */
            if (ec->buf) {
                proto_line_reader_storage_gone(&ec->reader);
                s_storage_free(ec);
            }
        } else {
            s_line(ec->ev, item.at, item.len);
        }
    }
    s_batch_report(ec->ev);
    if (lines) {
        ec->seen_line = true;
        ec->last = ++ec->ev->tick;
    }
    if (ec->buf && !proto_line_reader_busy(&ec->reader)) {
        /* Between lines: an idle connection holds nothing. */
        proto_line_reader_storage_gone(&ec->reader);
        s_storage_free(ec);
    }
    if (!ec->stopped)
        router_guard_progress(&ec->guard, lines, proto_line_reader_busy(&ec->reader));
}

static void s_on_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    (void) conn;
    s_ec_t *ec = ud;
    router_events_t *self = ec->ev;
    if (reason == ROUTER_CLOSE_DEADLINE) {
        router_guard_count_cut(&ec->guard, ROUTER_GUARD_CUT_DEADLINE);
        ROUTER_LOG(ROUTER_LOG_WARN, "events", "connection %llu cut: reason=deadline",
                   (unsigned long long) router_conn_id(conn));
    }
    router_guard_leave(&ec->guard);
    s_storage_free(ec);
    if (ec->evicted)
        self->evicting--;
    if (ec->prev)
        ec->prev->next = ec->next;
    else
        self->conns = ec->next;
    if (ec->next)
        ec->next->prev = ec->prev;
    self->stats.open--;
    router_metric_set(self->m_open, self->stats.open);
    free(ec);
}

static const router_conn_handlers_t s_handlers = {
    .on_data = s_on_data,
    .on_close = s_on_close,
};

/* The guard cut this connection to make room (partial budget). */
static void s_on_cut(router_guard_conn_t *gc, router_guard_cut_t why, void *ud)
{
    (void) gc;
    (void) why;
    s_ec_t *ec = ud;
    ec->stopped = true;
    s_storage_free(ec);
    router_conn_abort(ec->conn);
}

/* The connection to give way at the cap: one between lines (a line under
 * way is kept: its sender is working), preferring one that never completed
 * a line, and among those alike the one idle the longest. NULL when every
 * connection is mid-line. */
static s_ec_t *s_pick_evictee(router_events_t *self)
{
    s_ec_t *best = NULL;
    for (s_ec_t *ec = self->conns; ec; ec = ec->next) {
        if (ec->stopped || proto_line_reader_busy(&ec->reader))
            continue;
        if (!best || (best->seen_line && !ec->seen_line) ||
            (best->seen_line == ec->seen_line && ec->last < best->last))
            best = ec;
    }
    return best;
}

/* At the cap an outsider's idle connections must not hold every place
 * until the idle deadline (300 s) and lock honest senders out: the one
 * idle the longest is cut for the newcomer (WIRE §10). When none can go,
 * the newcomer is refused. Returns 0 when there is room. */
static int s_make_room(router_events_t *self)
{
    if (self->stats.open - self->evicting < self->connections_max) {
        self->refusing = false;
        return 0;
    }
    s_ec_t *victim = s_pick_evictee(self);
    if (!victim) {
        self->stats.refused++;
        router_metric_inc(self->m_refused, 1);
        if (!self->refusing) {
            self->refusing = true;
            ROUTER_LOG(ROUTER_LOG_WARN, "events",
                       "limit of %u connections reached, every one mid-line: refusing new ones",
                       self->connections_max);
        }
        return -1;
    }
    self->refusing = false;
    self->stats.evicted++;
    ROUTER_LOG(ROUTER_LOG_WARN, "events",
               "connection %llu cut: reason=unauth_evicted (limit of %u connections; %s)",
               (unsigned long long) router_conn_id(victim->conn), self->connections_max,
               victim->seen_line ? "idle the longest" : "never sent a line");
    router_guard_count_cut(&victim->guard, ROUTER_GUARD_CUT_UNAUTH_EVICTED);
    router_guard_leave(&victim->guard);
    victim->stopped = true;
    victim->evicted = true;
    self->evicting++;
    s_storage_free(victim);
    router_conn_abort(victim->conn);
    return 0;
}

static void s_on_accept(router_listener_t *listener, router_conn_t *conn, void *ud)
{
    router_events_t *self = ud;
    s_ec_t *ec = calloc(1, sizeof *ec);
    if (!ec || self->draining ||
        proto_line_reader_init_grow(&ec->reader, PROTO_LINE_MAX, s_grow, ec) != 0 ||
        router_guard_join(self->guard, &ec->guard, ROUTER_GUARD_EVENTS, conn, listener, s_on_cut,
                          ec) != 0) {
        free(ec);
        router_conn_abort(conn);
        return;
    }
    /* After the join: a newcomer its source's share refuses evicts no one. */
    if (s_make_room(self) != 0) {
        router_guard_leave(&ec->guard);
        free(ec);
        router_conn_abort(conn);
        return;
    }
    ec->ev = self;
    ec->conn = conn;
    ec->last = ++self->tick;
    ec->next = self->conns;
    if (self->conns)
        self->conns->prev = ec;
    self->conns = ec;
    self->stats.open++;
    router_metric_set(self->m_open, self->stats.open);
    router_conn_set_turn_bytes(conn, S_TURN_BYTES);
    router_conn_set_handlers(conn, &s_handlers, ec);
}

/* ---------------------------------------------------------------- lifecycle */

router_events_t *router_events_new(const router_events_opts_t *opts)
{
    if (!opts->guard) {
        errno = EINVAL;
        return NULL;
    }
    router_events_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = opts->loop;
    self->inbox = opts->inbox;
    self->guard = opts->guard;
    self->on_queued = opts->on_queued;
    self->on_queued_ud = opts->ud;
    self->connections_max = opts->connections_max ? opts->connections_max : 1024;
    if (opts->metrics) {
        self->m_queued = router_metrics_add(opts->metrics, "kith_events_queued_total", NULL,
                                            ROUTER_METRIC_COUNTER,
                                            "Plain event lines queued as external events.");
        self->m_skipped = router_metrics_add(
            opts->metrics, "kith_events_skipped_total", NULL, ROUTER_METRIC_COUNTER,
            "Plain event lines skipped (malformed, too long, inbox full).");
        self->m_open = router_metrics_add(opts->metrics, "kith_events_connections_open", NULL,
                                          ROUTER_METRIC_GAUGE,
                                          "Plain event-line connections open.");
        self->m_refused = router_metrics_add(
            opts->metrics, "kith_events_connections_refused_total", NULL, ROUTER_METRIC_COUNTER,
            "Plain event-line connections refused at the cap (every open one mid-line).");
    }
    return self;
}

void router_events_destroy(router_events_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_events_t *self = *self_p;
    for (size_t i = 0; i < self->nlisteners; i++)
        router_listener_close(&self->listeners[i]);
    for (s_ec_t *ec = self->conns, *next; ec; ec = next) {
        next = ec->next;
        router_conn_disown(ec->conn);
        router_guard_leave(&ec->guard);
        s_storage_free(ec);
        free(ec);
    }
    free(self);
    *self_p = NULL;
}

router_listener_t *router_events_listen(router_events_t *self, const router_addr_t *addr)
{
    if (self->nlisteners == S_LISTENERS_MAX) {
        errno = ENOSPC;
        return NULL;
    }
    /* No listener cap: s_make_room applies connections_max, evicting. */
    router_listener_t *l = router_loop_listen(self->loop, addr, s_on_accept, self);
    if (!l)
        return NULL;
    self->listeners[self->nlisteners++] = l;
    return l;
}

void router_events_drain(router_events_t *self)
{
    if (!self || self->draining)
        return;
    self->draining = true;
    for (size_t i = 0; i < self->nlisteners; i++)
        router_listener_close(&self->listeners[i]);
    self->nlisteners = 0;
    for (s_ec_t *ec = self->conns; ec; ec = ec->next) {
        ec->stopped = true;
        router_guard_pause(&ec->guard);
        router_conn_close(ec->conn); /* no more on_data; bounded by close_timeout_ms */
    }
}

void router_events_stats(const router_events_t *self, router_events_stats_t *out)
{
    *out = self->stats;
}
