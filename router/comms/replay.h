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
 * Windows are kept in memory; the inbox remembers every admitted id durably
 * in the same transaction (router_inbox_seen_load), and the node seeds a new
 * window from that at start with router_replay_seed and
 * router_replay_seed_floor, so a restart forgets nothing still in force.
 *
 * Clock steps: freshness uses wall time, but what was admitted stays refused
 * whatever the clock does. A v7 id dropped because its time left the window
 * raises the watermark to that time, as capacity eviction does, so a clock
 * stepped back cannot re-open it; ids of other versions are remembered for
 * `horizon_s` after admission (comms.replay_horizon_s) and then dropped.
 *
 * Keys not in the trust store (comms.require_peer_auth false) get at most
 * ROUTER_REPLAY_UNKNOWN_PEERS_MAX sets; a set whose ids all expired is freed
 * (its watermark folded into a floor for every sender), and a new unknown
 * key that finds no room is refused (ROUTER_REPLAY_BUSY). Each such set
 * holds at most ROUTER_REPLAY_UNKNOWN_PER_PEER_MAX ids, so the memory an
 * unknown sender can take is bounded too.
 *
 * The price of the watermark: once a peer has sent more than
 * ROUTER_REPLAY_PER_PEER_MAX envelopes inside one window (over 870 a second
 * sustained at the default 300 s), a fresh v7 id that arrives later than a
 * newer one that was already evicted is refused as a replay. The cap is
 * high so that only a flood pays it; memory grows with use, about 40 bytes
 * an id. */
#ifndef KITH_ROUTER_REPLAY_H
#define KITH_ROUTER_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most ids remembered per peer; a peer's set starts small and grows to this. */
#define ROUTER_REPLAY_PER_PEER_MAX 262144u
/* Most sets kept for keys not in the trust store, and most ids in each:
 * together at most ~170 MiB however many keys an open door lets in. */
#define ROUTER_REPLAY_UNKNOWN_PEERS_MAX 4096u
#define ROUTER_REPLAY_UNKNOWN_PER_PEER_MAX 1024u

typedef struct router_replay_t router_replay_t;

typedef enum {
    ROUTER_REPLAY_FRESH = 0,   /* not seen: now remembered */
    ROUTER_REPLAY_SEEN,        /* this peer already sent this id */
    ROUTER_REPLAY_STALE,       /* a v7 id whose time is outside the window */
    ROUTER_REPLAY_EVICTED,     /* a v7 id at or before the eviction watermark */
    ROUTER_REPLAY_NOMEM,       /* could not allocate a peer's set */
    ROUTER_REPLAY_BUSY,        /* an unknown key, and no room for another unknown key's set */
} router_replay_verdict_t;

/* A window of ±window_s seconds for v7 ids; ids of other versions are
 * remembered horizon_s seconds (0 → 86400). Returns NULL on allocation
 * failure. Caller owns the result. */
router_replay_t *router_replay_new(uint32_t window_s, uint32_t horizon_s);

/* Idempotent; nulls *self_p. */
void router_replay_destroy(router_replay_t **self_p);

/* Checks `id` from the peer with public key `peer` at time now_ms (Unix ms)
 * and, when fresh, remembers it. Only call it for envelopes that passed the
 * signature check. `trusted`: the key is in the trust store (sets of other
 * keys are bounded, see above). */
router_replay_verdict_t router_replay_check_insert(router_replay_t *self, const uint8_t peer[32],
                                                   const uint8_t id[16], uint64_t now_ms,
                                                   bool trusted)
    __attribute__((warn_unused_result));

/* What the inbox must store with an admitted id: its v7 time (0 for other
 * versions), the wall time after which it may be forgotten, and the
 * peer's watermark when it rose since it was last taken (0 otherwise; a
 * later router_replay_forget hands it back). */
void router_replay_durable_info(router_replay_t *self, const uint8_t peer[32],
                                const uint8_t id[16], uint64_t now_ms, uint64_t *v7_ms,
                                uint64_t *expires_ms, uint64_t *floor_ms);

/* Start-up: remembers an id a previous run admitted (rows of one peer
 * oldest first). A v7 id already outside the window raises the floor
 * instead; an id of another version past expires_ms is skipped. Returns 0,
 * or -1 when out of memory. */
int router_replay_seed(router_replay_t *self, const uint8_t peer[32], const uint8_t id[16],
                       uint64_t expires_ms, uint64_t now_ms, bool trusted)
    __attribute__((warn_unused_result));

/* Start-up: a watermark a previous run made durable. The all-zero key
 * (a small-order point: no envelope can be signed by it) stands for every
 * sender, as the inbox stores the floor the oldest floors were folded
 * into. Returns 0 or -1. */
int router_replay_seed_floor(router_replay_t *self, const uint8_t peer[32], uint64_t floor_ms,
                             uint64_t now_ms, bool trusted) __attribute__((warn_unused_result));

/* Forgets `id` for `peer` again: used when an envelope passed the replay check
 * but was then refused (inbox full), so the sender may retry it. */
void router_replay_forget(router_replay_t *self, const uint8_t peer[32], const uint8_t id[16]);

/* Short name of a verdict ("fresh", "seen", …). */
const char *router_replay_verdict_str(router_replay_verdict_t v);

/* Ids remembered across all peers (for metrics and tests). */
size_t router_replay_size(const router_replay_t *self);

/* Sets held for keys not in the trust store (for tests). */
size_t router_replay_unknown_sets(const router_replay_t *self);

#endif
