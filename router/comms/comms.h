/* router/comms/comms.h — the receive side of signed comms (DESIGN §8): every
 * inbound connection (TCP, Unix socket, in-process) runs frames through
 *
 *   frame size → decode → signature → addressed to us → sender trusted →
 *   not a replay → admitted to the inbox → signed ack (message, fenced
 *   message, request, lifecycle)
 *
 * Each refusal has its typed wire reason, is counted and reported through
 * on_event, and closes the connection once the acks owed for envelopes
 * admitted before it have gone out. Acks leave in admission order, and only
 * after the inbox reports the envelope durable. Decoding, verification and
 * signing the acks run on crypto threads beside the loop when
 * crypto_threads > 0 (WIRE §14.12); everything else stays on the loop.
 * Loop thread only, except where noted. */
#ifndef KITH_ROUTER_COMMS_H
#define KITH_ROUTER_COMMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/envelope.h"
#include "router/comms/replay.h"
#include "router/comms/guard.h"
#include "router/comms/pairing.h"
#include "router/metrics.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/state/identity.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"

typedef struct router_comms router_comms_t;

/* Frames of one connection read and not yet through the checks (on the
 * crypto threads, or done and waiting for an earlier one) before it stops
 * reading; it reads again below half of both. A connection with none may
 * always take one more frame, so a 1 MiB envelope always gets through. */
#define ROUTER_COMMS_CONN_JOBS_MAX 256u
#define ROUTER_COMMS_CONN_JOB_BYTES_MAX (2u * 1024u * 1024u)
/* The same for all connections together: a connection that finds these
 * full stops reading until the total is below them again. Each bound may be
 * passed by what one read delivers (ROUTER_CONN_TURN_BYTES) per connection. */
#define ROUTER_COMMS_JOBS_MAX 8192u
#define ROUTER_COMMS_JOB_BYTES_MAX (32u * 1024u * 1024u)

/* What happened to one inbound envelope (or frame), for logs, the audit
 * worker and /api/events. Pointers are borrowed for the call only. */
typedef struct {
    bool admitted;                /* true: admitted; false: refused */
    proto_wire_reason_t reason;   /* why refused (PROTO_WIRE_OK when admitted) */
    const char *detail;           /* finer reason, e.g. "duplicate_key"; never NULL */
    const uint8_t *id;            /* envelope id, NULL when not decoded */
    const uint8_t *from;          /* sender key, NULL when not decoded */
    const char *peer_name;        /* trusted peer's name, NULL when unknown */
    const char *kind;             /* "message", …, NULL when not decoded */
    uint64_t seq;                 /* inbox sequence when admitted */
    uint64_t conn_id;             /* the connection it came on */
    const router_addr_t *addr;    /* its peer's address; NULL in-process */
} router_comms_event_t;

typedef void(router_comms_event_fn)(const router_comms_event_t *ev, void *ud);

typedef struct {
    router_loop_t *loop;                /* borrowed; comms runs on its thread */
    const router_identity_t *identity;  /* our key; borrowed */
    const router_trust_t *trust;        /* trusted peers; borrowed, may be NULL (nobody);
                                         * replaced by router_comms_set_trust */
    router_inbox_t *inbox;              /* where admitted envelopes go; borrowed */
    router_metrics_t *metrics;          /* optional: counters are registered here */
    router_guard_t *guard;              /* bounds and deadlines, shared with plain events;
                                         * borrowed; NULL: comms makes one with defaults */
    uint32_t replay_window_s;           /* ± seconds for UUIDv7 ids (DESIGN: 300) */
    uint32_t replay_horizon_s;          /* how long other ids are remembered; 0 → 86400 */
    uint32_t frame_max;                 /* largest frame payload; 0 → PROTO_FRAME_MAX */
    bool require_peer_auth;             /* refuse senders missing from the trust store */
    unsigned crypto_threads;            /* threads that decode, verify and sign acks
                                         * (comms.crypto_threads, WIRE §14.12); 0: the loop */
    router_comms_event_fn *on_event;    /* optional */
    void *ud;                           /* for on_event */
    uint32_t drain_timeout_ms;          /* bound on router_comms_drain before the
                                         * connections left are reset; 0 → 10 000 */
} router_comms_opts_t;

/* Returns NULL with errno set: ENOMEM, or why the crypto threads could not
 * start (EAGAIN: the limit on processes). The caller owns the result and must
 * call router_comms_release_acks on the loop thread whenever the inbox
 * reports a durable batch (its on_durable hook runs on the store thread, so
 * the caller posts the call to the loop). */
router_comms_t *router_comms_new(const router_comms_opts_t *opts);

/* Aborts open connections and frees. Idempotent; nulls *self_p. */
void router_comms_destroy(router_comms_t **self_p);

/* Listens for envelope connections on `addr` (TCP or Unix socket). Returns
 * the listener (owned by the loop; closed by drain or destroy) or NULL with
 * errno set. */
router_listener_t *router_comms_listen(router_comms_t *self, const router_addr_t *addr);

/* Serves an already connected socket (the in-process transport's end of a
 * socket pair); the loop takes `fd`, also on failure. Returns 0 or -1. */
int router_comms_serve_fd(router_comms_t *self, int fd);

/* Sends the acks whose admissions are now durable. Loop thread only. (A
 * timer also does this while acks are owed, so a lost wake-up only delays
 * them.) */
void router_comms_release_acks(router_comms_t *self);

/* Graceful shutdown: stop accepting and reading, finish the checks of the
 * frames already read (WIRE §14.12), wait for every admitted envelope to be
 * durable, send its ack, flush, close. Bounded by drain_timeout_ms, after
 * which the connections left are reset (at once when no timer can be
 * had). `done` runs on the loop thread once every connection has closed.
 * A second call while draining replaces `done` and restarts the bound. */
void router_comms_drain(router_comms_t *self, void (*done)(void *ud), void *ud);

/* Swaps in a reloaded trust store (borrowed; the old one may be freed once
 * this returns) and closes, orderly and after the acks they are owed, the
 * connections whose verified sender it no longer trusts (when
 * require_peer_auth). Loop thread only. */
void router_comms_set_trust(router_comms_t *self, const router_trust_t *trust);

/* Counters for tests and logs. */
typedef struct {
    uint64_t admitted;                 /* envelopes admitted */
    uint64_t acked;                    /* acks sent */
    uint64_t rejected[PROTO_WIRE_INTERNAL + 1]; /* refusals by wire reason */
    unsigned open;                     /* connections open */
    size_t jobs, job_bytes;            /* frames in the checks, all connections, and their bytes */
    unsigned paused;                   /* connections not reading for backpressure */
    unsigned waiting;                  /* ...of which waiting for the totals to drop */
} router_comms_stats_t;

/* Loop thread only. */
void router_comms_stats(const router_comms_t *self, router_comms_stats_t *out);

/* Test seam: holds (or lets go of) the crypto threads, so frames stay in
 * the checks and the bounds above can be reached deterministically. No-op
 * with crypto_threads 0. Any thread. */
void router_comms_test_hold_crypto(router_comms_t *self, bool hold);

/* Serves Meerkat's pairing handshake on this node's comms connections
 * whose first byte is '{' (borrowed; NULL switches it off). Loop thread or
 * before the loop runs. WIRE §23.6. */
void router_comms_set_pairing(router_comms_t *self, router_pairing_t *pairing);

/* The replay window, borrowed: the node seeds it at start from the ids the
 * inbox remembered (router_inbox_seen_load). */
router_replay_t *router_comms_replay(router_comms_t *self);

#endif
