/* router/comms/events.h — the plain event listener (DESIGN §8, spec/WIRE.md
 * §10; only with comms.auth "none"): newline-delimited lines in, one
 * external event per line into the inbox, nothing back. Its connections
 * keep the same deadlines as comms (first line, a line once begun, idle),
 * are capped in number and per source (at the cap the connection idle the
 * longest is cut for a newcomer), hold line storage only while a line
 * spans reads (counted in the partial-frame budget), and stop reading on
 * drain. Loop thread only. */
#ifndef KITH_ROUTER_EVENTS_H
#define KITH_ROUTER_EVENTS_H

#include <stdint.h>

#include "router/comms/guard.h"
#include "router/metrics.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/state/inbox.h"

typedef struct router_events router_events_t;

/* Events taken on a channel other than signed comms, once admitted to the
 * inbox (WIRE §18.2 `channel_event`): the plain event lines of one read
 * here (one report per read, so a flood of lines is not a flood of
 * events); one webhook or external event at the gateway. Valid during the
 * call. */
typedef struct {
    const char *channel;     /* "event_line", "webhook", "external_event" */
    const uint8_t *id;       /* the (first) inbox entry's UUID (16 octets) */
    uint64_t seq;            /* its inbox sequence number */
    uint64_t count;          /* entries reported: 1, or the lines of one read */
    uint64_t last_seq;       /* the last one's sequence number (seq when count is 1) */
    const char *session_id;  /* the session their turns go to; NULL: not known here */
    const char *event_type;  /* an external event's type; else NULL */
    size_t bytes;            /* the entries' octets */
} router_channel_event_t;

typedef void (router_channel_event_fn)(const router_channel_event_t *ev, void *ud);

typedef struct {
    router_loop_t *loop;        /* borrowed */
    router_inbox_t *inbox;      /* where events go; borrowed */
    router_metrics_t *metrics;  /* optional */
    router_guard_t *guard;      /* bounds and deadlines; borrowed, required */
    uint32_t connections_max;   /* open event connections, all listeners together (DESIGN
                                 * §10 default 1,024). At the cap a newcomer cuts the
                                 * connection between lines that never completed one, or
                                 * else completed its last the longest ago (counted in
                                 * kith_comms_conn_cut_total{kind="events",
                                 * reason="unauth_evicted"}); one mid-line is kept, and
                                 * when all are the newcomer is refused. */
    router_channel_event_fn *on_queued; /* the lines one read admitted (loop thread); may be NULL */
    void *ud;
} router_events_opts_t;

/* Returns NULL on allocation failure. Caller owns the result. */
router_events_t *router_events_new(const router_events_opts_t *opts);

/* Closes the listeners, lets open connections go (no callback reaches us
 * again) and frees. Idempotent; nulls *self_p. */
void router_events_destroy(router_events_t **self_p);

/* Listens for plain-event connections on `addr` (TCP or Unix socket).
 * Returns the listener (owned by the loop; closed by drain or destroy), or
 * NULL with errno set. */
router_listener_t *router_events_listen(router_events_t *self, const router_addr_t *addr);

/* Graceful stop: close the listeners and stop reading on every connection
 * (a line not finished is dropped, as at any end of stream), then close
 * each orderly. Nothing is owed on these connections, so nothing waits. */
void router_events_drain(router_events_t *self);

typedef struct {
    uint64_t queued;  /* lines queued as events */
    uint64_t skipped; /* lines skipped (malformed, too long, inbox full) */
    unsigned open;    /* connections open */
    uint64_t evicted; /* connections cut at the cap to admit a newcomer */
    uint64_t refused; /* newcomers refused at the cap: every connection mid-line */
} router_events_stats_t;

void router_events_stats(const router_events_t *self, router_events_stats_t *out);

#endif
