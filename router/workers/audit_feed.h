/* router/workers/audit_feed.h — the router's side of the audit log (DESIGN
 * §9, WIRE §21.7): a bounded queue of security events (envelope refusals,
 * trust changes, pairing, auth failures, admin calls, and later tool calls)
 * that the node and the gateway fill on the loop thread, sent to the audit
 * worker in batches as audit-append requests through the broker, one
 * request in flight at a time, so every batch is one group commit on the
 * worker's disk and the loop never waits for it.
 *
 * Nothing is dropped silently: an event that finds the queue full is
 * counted in kith_audit_dropped_total and logged; a batch the worker could
 * not store (it died, or its disk failed) stays queued and is sent again.
 *
 * Loop thread only. Every function takes a NULL feed and does nothing, so
 * call sites need no check when audit is off. */
#ifndef KITH_ROUTER_AUDIT_FEED_H
#define KITH_ROUTER_AUDIT_FEED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "router/comms/comms.h"
#include "router/metrics.h"
#include "router/net/loop.h"
#include "router/workers/broker.h"

/* Events waiting (queued or in flight), and the bytes they may hold. */
#define ROUTER_AUDIT_FEED_QUEUE_MAX 4096u
#define ROUTER_AUDIT_FEED_BYTES_MAX (8u * 1024u * 1024u)
/* The longest detail a caller builds (PROTO_AUDIT_DETAIL_MAX). */
#define ROUTER_AUDIT_DETAIL_MAX 8192u
/* The service the worker serves. */
#define ROUTER_AUDIT_SERVICE "kith.audit"

typedef struct router_audit_feed router_audit_feed_t;

typedef struct {
    router_loop_t *loop;        /* borrowed: timers for retries */
    router_broker_t *broker;    /* borrowed; must outlive the feed */
    router_metrics_t *metrics;  /* may be NULL */
    size_t queue_max;           /* 0: ROUTER_AUDIT_FEED_QUEUE_MAX */
    uint32_t retry_ms;          /* first retry after a failed batch; 0: 1000 (doubles to 30 s) */
} router_audit_feed_opts_t;

/* Returns NULL on allocation failure. The caller owns the result. */
router_audit_feed_t *router_audit_feed_new(const router_audit_feed_opts_t *o);

/* Cancels the request in flight and frees; events still queued are logged
 * and counted as dropped. Before the broker is destroyed. Idempotent. */
void router_audit_feed_destroy(router_audit_feed_t **self_p);

/* Queues one event (copied) stamped with the wall clock now: `type` 1..64
 * bytes ("pair", …), `detail` the JSON text of one object (build it with
 * router_audit_detail_*). Returns 0, or -1 when it was dropped (queue full
 * or out of memory: counted and logged). */
int router_audit_feed_push(router_audit_feed_t *self, const char *type, const char *detail);

/* An event anyone who reaches a port can cause (a refused token, pairing
 * code or envelope, a forbidden admin call: router_audit_limit_applies),
 * from `client` (the peer's address, as the detail records it). Past the
 * rate limit of audit_limit.h it is not queued but counted, and an
 * `audit_suppressed` record {type, client, count, first_ms, last_ms} says
 * so within 10 s (WIRE §21.7). Other types are pushed as they come.
 * Returns as router_audit_feed_push (0 when held back). */
int router_audit_feed_push_from(router_audit_feed_t *self, const char *type, const char *client,
                                const char *detail);

/* A graceful stop: the counts the rate limit holds are queued as
 * audit_suppressed records at once, and drained(ud) runs on the loop
 * thread when the queue is empty (everything written) or after timeout_ms,
 * whichever comes first; exactly once, possibly inside this call. Events
 * queued after that are handled as before (dropped at destroy if not yet
 * written). A NULL feed calls drained(ud) at once. */
typedef void(router_audit_feed_drained_fn)(void *ud);
void router_audit_feed_drain(router_audit_feed_t *self, router_audit_feed_drained_fn *drained,
                             void *ud, uint32_t timeout_ms);

/* A comms event (router_node's event sink): refusals become
 * "envelope_rejected" records; admissions are not security events. */
void router_audit_feed_on_comms(router_audit_feed_t *self, const router_comms_event_t *ev);

/* Hook for the turn machinery: a tool call a worker made (or the router ran
 * for it) as an audit event "tool_call" with the session, tool name and
 * whether it failed. Arguments are not recorded (they may hold secrets). */
void router_audit_feed_tool_call(router_audit_feed_t *self, const char *session_id,
                                 const char *tool, const char *call_id, bool is_error);

typedef struct {
    uint64_t queued;     /* events waiting now (in flight included) */
    uint64_t pushed;     /* events accepted since start */
    uint64_t appended;   /* events the worker acknowledged */
    uint64_t dropped;    /* events refused because the queue was full */
    uint64_t retries;    /* batches sent again */
    uint64_t batches;    /* audit-append requests acknowledged */
    uint64_t suppressed; /* events from outside held back by the rate limit */
    uint64_t timer_failures; /* loop timers the feed could not add (a post or the next push
                              * sent instead; the held-back sum's, tried at the next step) */
} router_audit_feed_stats_t;

void router_audit_feed_stats(const router_audit_feed_t *self, router_audit_feed_stats_t *out);

/* ------------------------------------------------------------ details */

/* A JSON object built in place: string values are escaped (bytes that are
 * not UTF-8 become '?'), so callers can hand in peer input. On overflow the
 * object is cut to {"truncated":true}. */
typedef struct {
    char buf[ROUTER_AUDIT_DETAIL_MAX];
    size_t len;
    bool overflow;
} router_audit_detail_t;

void router_audit_detail_init(router_audit_detail_t *d);
void router_audit_detail_str(router_audit_detail_t *d, const char *key, const char *value);
void router_audit_detail_strn(router_audit_detail_t *d, const char *key, const char *value, size_t n);
void router_audit_detail_u64(router_audit_detail_t *d, const char *key, uint64_t value);
void router_audit_detail_bool(router_audit_detail_t *d, const char *key, bool value);
/* Closes the object; returns the NUL-terminated text (in d). */
const char *router_audit_detail_end(router_audit_detail_t *d);

#endif
