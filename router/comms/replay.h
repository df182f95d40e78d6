/* router/comms/replay.h — the replay window (DESIGN §8, kith's addition): a bounded
 * per-peer set of recently admitted envelope ids, plus the UUIDv7 time check.
 *
 * Guarantee: an id admitted once is never admitted again for as long as it is
 * remembered, and a UUIDv7 id is refused outright when its time is outside
 * ±window of now. When a peer's set is full the oldest id is evicted; for
 * UUIDv7 ids the evicted time becomes a watermark and any v7 id at or before
 * it is refused, so eviction can never re-open a v7 id. Ids of other versions
 * (Meerkat peers may send v4) are protected only while remembered: the last
 * ROUTER_REPLAY_PER_PEER_MAX of them per peer.
 *
 * The price of the watermark: once a peer has sent more than
 * ROUTER_REPLAY_PER_PEER_MAX envelopes inside one window (over 870 a second
 * sustained at the default 300 s), a fresh v7 id that arrives later than a
 * newer one that was already evicted is refused as a replay. The cap is
 * high so that only a flood pays it; memory grows with use, about 40 bytes
 * an id. */
#ifndef KITH_ROUTER_REPLAY_H
#define KITH_ROUTER_REPLAY_H

#include <stddef.h>
#include <stdint.h>

/* Most ids remembered per peer; a peer's set starts small and grows to this. */
#define ROUTER_REPLAY_PER_PEER_MAX 262144u

typedef struct router_replay_t router_replay_t;

typedef enum {
    ROUTER_REPLAY_FRESH = 0,   /* not seen: now remembered */
    ROUTER_REPLAY_SEEN,        /* this peer already sent this id */
    ROUTER_REPLAY_STALE,       /* a v7 id whose time is outside the window */
    ROUTER_REPLAY_EVICTED,     /* a v7 id at or before the eviction watermark */
    ROUTER_REPLAY_NOMEM,       /* could not allocate a peer's set */
} router_replay_verdict_t;

/* A window of ±window_s seconds. Returns NULL on allocation failure.
 * Caller owns the result. */
router_replay_t *router_replay_new(uint32_t window_s);

/* Idempotent; nulls *self_p. */
void router_replay_destroy(router_replay_t **self_p);

/* Checks `id` from the peer with public key `peer` at time now_ms (Unix ms)
 * and, when fresh, remembers it. Only call it for envelopes that passed the
 * signature and trust checks: the number of peers tracked is the number of
 * trusted peers that have sent something. */
router_replay_verdict_t router_replay_check_insert(router_replay_t *self, const uint8_t peer[32],
                                                   const uint8_t id[16], uint64_t now_ms)
    __attribute__((warn_unused_result));

/* Forgets `id` for `peer` again: used when an envelope passed the replay check
 * but was then refused (inbox full), so the sender may retry it. */
void router_replay_forget(router_replay_t *self, const uint8_t peer[32], const uint8_t id[16]);

/* Short name of a verdict ("fresh", "seen", …). */
const char *router_replay_verdict_str(router_replay_verdict_t v);

/* Ids remembered across all peers (for metrics and tests). */
size_t router_replay_size(const router_replay_t *self);

#endif
