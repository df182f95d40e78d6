/* router/comms/guard.h — the bounds that keep unauthenticated clients from
 * taking what trusted peers need (DESIGN §10, spec/WIRE.md §9.1): how many
 * comms connections may be unauthenticated, in total and per source address;
 * how many plain-event connections one source may hold; how many bytes all
 * connections together may hold in partial frames and lines; and the
 * deadlines every connection keeps (first frame, a frame once started,
 * idle). One guard serves comms and plain events together. Loop thread only.
 *
 * A connection's owner embeds a router_guard_conn_t in its per-connection
 * state, joins it at accept, reports progress (frames done, a frame begun),
 * asks before holding more bytes, and leaves it in on_close. When the guard
 * cuts a connection to make room it calls the owner's cut callback, which
 * must free the connection's partial storage and abort the connection. */
#ifndef KITH_ROUTER_GUARD_H
#define KITH_ROUTER_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "router/metrics.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/net/sources.h"

typedef struct router_guard router_guard_t;
typedef struct router_guard_conn router_guard_conn_t;

/* Which kind of connection a guard entry is. */
typedef enum {
    ROUTER_GUARD_COMMS = 0, /* signed envelopes: unauthenticated until one verifies */
    ROUTER_GUARD_EVENTS,    /* plain events: never authenticated */
    ROUTER_GUARD_KINDS
} router_guard_kind_t;

/* Why the guard (or an owner, for deadlines) ended a connection. */
typedef enum {
    ROUTER_GUARD_CUT_UNAUTH_EVICTED = 0, /* oldest unauthenticated, to admit a newcomer */
    ROUTER_GUARD_CUT_PARTIAL_BUDGET,     /* held the most when the partial budget ran out */
    ROUTER_GUARD_CUT_DEADLINE,           /* a deadline passed (counted by the owner) */
    ROUTER_GUARD_CUT_SLOW_CONSUMER,      /* its unread output passed the bound (the owner) */
    ROUTER_GUARD_CUT_SOURCE_EVICTED,     /* its source's share was full: to admit a newcomer */
    ROUTER_GUARD_CUTS
} router_guard_cut_t;

/* "unauth_evicted", "partial_budget", "deadline", "slow_consumer",
 * "source_evicted". */
const char *router_guard_cut_str(router_guard_cut_t why);

/* Told when the guard cuts `gc` to make room for another connection: free
 * the connection's partial storage and router_conn_abort it. The guard has
 * already released the entry's accounting (router_guard_leave is still
 * allowed, and does nothing). */
typedef void(router_guard_cut_fn)(router_guard_conn_t *gc, router_guard_cut_t why, void *ud);

/* One connection's entry; embed it, treat the fields as private. */
struct router_guard_conn {
    router_guard_t *guard;              /* NULL when not joined (or left) */
    router_conn_t *conn;                /* the connection */
    router_guard_kind_t kind;           /* comms or events */
    router_guard_cut_fn *on_cut;        /* the owner's cut callback */
    void *ud;                           /* for on_cut */
    router_source_t *source;            /* counted against this source, or NULL */
    bool unauth;                        /* on the unauthenticated list (comms) */
    bool seen_frame;                    /* a first frame or line completed */
    bool mid_frame;                     /* a frame or line has begun and not ended */
    uint64_t paused_at;                 /* loop ms when reading stopped; 0 while reading */
    uint64_t grace_until;               /* loop ms by which a peer held back sends again */
    uint64_t read_at;                   /* loop ms of its last read (its join, before one) */
    size_t held;                        /* bytes held in partial frames or lines */
    router_guard_conn_t *uprev, *unext; /* unauthenticated list, oldest first */
    router_guard_conn_t *sprev, *snext; /* ...of its source only (router_source_list) */
    router_guard_conn_t *hprev, *hnext; /* entries holding bytes */
};

typedef struct {
    router_loop_t *loop;               /* borrowed */
    router_metrics_t *metrics;         /* optional: counters are registered here */
    uint32_t unauth_max;               /* unauthenticated comms connections (2,500) */
    uint32_t unauth_per_source_max;    /* ...from one source (32) */
    uint32_t events_per_source_max;    /* plain-event connections from one source (32) */
    size_t partial_bytes_max;          /* bytes in partial frames and lines (64 MiB) */
    uint32_t first_frame_ms;           /* accept → first complete frame or line (10 s); 0 none */
    uint32_t frame_ms;                 /* first byte → end of a frame or line (30 s); 0 none */
    uint32_t idle_ms;                  /* between frames or lines (300 s); 0 none */
} router_guard_opts_t;

/* Returns NULL on allocation failure. Caller owns the result; destroy it
 * after every entry has left. */
router_guard_t *router_guard_new(const router_guard_opts_t *opts);
void router_guard_destroy(router_guard_t **self_p);

/* Admits a new connection: `listener` is the one it came through, NULL for
 * an in-process connection (exempt from the source and unauthenticated
 * bounds: it comes from code in this process). When a comms newcomer's
 * source already holds its share, cuts one of that source's
 * unauthenticated connections that has not yet delivered a frame — the
 * oldest silent one (not a byte of a frame read), else the one mid-way
 * through its first frame that has gone longest without a read — and
 * admits the newcomer: one local user holding the share cannot lock every
 * other peer at that address out. Refuses (returns -1, counted and
 * logged; the caller aborts the connection) only when every one of them
 * has delivered a frame (its envelope is being checked), and a plain-event
 * newcomer whenever its source holds its share (the events listener evicts
 * at its own cap). When the unauthenticated total is full, cuts the oldest
 * unauthenticated comms connection instead of refusing. Sets the
 * first-frame deadline. Returns 0 when admitted. */
int router_guard_join(router_guard_t *self, router_guard_conn_t *gc, router_guard_kind_t kind,
                      router_conn_t *conn, const router_listener_t *listener,
                      router_guard_cut_fn *on_cut, void *ud) __attribute__((warn_unused_result));

/* The connection delivered an envelope that passed the signature and trust
 * checks: it leaves the unauthenticated bounds. Idempotent. */
void router_guard_authenticated(router_guard_conn_t *gc);

/* Releases everything the entry holds. Idempotent; call it from on_close. */
void router_guard_leave(router_guard_conn_t *gc);

/* Asks to hold `bytes` in partial frames or lines (the new total for this
 * connection; less than before always succeeds). When the budget would be
 * exceeded, other connections are cut first — unauthenticated before
 * authenticated, the largest holding first. Returns 0, or -1 when this
 * connection is itself the one to cut (counted; the caller aborts it). An
 * entry that has not joined always gets 0. */
int router_guard_hold(router_guard_conn_t *gc, size_t bytes) __attribute__((warn_unused_result));

/* Lowers this connection's holding to `bytes` (never raises it): storage
 * freed or shrunk. */
void router_guard_drop(router_guard_conn_t *gc, size_t bytes);

/* The most a connection's next deadline grows by the time kith held it
 * back: the longest a peer's TCP waits between probes of a shut window
 * (Linux's TCP_RTO_MAX), so one lost window update cannot cost it its frame. */
#define ROUTER_GUARD_GRACE_MAX_MS 120000u

/* After a read: `frames_done` frames or lines completed in it, and
 * `mid_frame` says whether one is begun now. Moves the deadline: the first
 * frame's until one completes, then a frame's once begun, else idle. After
 * router_guard_pause, the first call (reading again) notes how long reading
 * stopped, capped at ROUTER_GUARD_GRACE_MAX_MS; deadlines set until that
 * long after it count from then, not from now. */
void router_guard_progress(router_guard_conn_t *gc, unsigned frames_done, bool mid_frame);

/* Reading stopped (backpressure, a refusal, drain): no read deadline until
 * router_guard_progress is called again; the time until then is counted. */
void router_guard_pause(router_guard_conn_t *gc);

/* Counts a cut the owner saw (DEADLINE or SLOW_CONSUMER, from on_close). */
void router_guard_count_cut(router_guard_conn_t *gc, router_guard_cut_t why);

/* Counters for tests and metrics. */
typedef struct {
    uint64_t refused_per_source[ROUTER_GUARD_KINDS]; /* refused: the source's share was full */
    uint64_t cuts[ROUTER_GUARD_KINDS][ROUTER_GUARD_CUTS]; /* cut, by kind and reason */
    unsigned unauth;                                 /* unauthenticated comms connections now */
    size_t held;                                     /* bytes held in partial frames now */
    size_t held_peak;                                /* the most ever held at once */
} router_guard_stats_t;

void router_guard_stats(const router_guard_t *self, router_guard_stats_t *out);

#endif
