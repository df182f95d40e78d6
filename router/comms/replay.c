/* router/comms/replay.c — per-peer replay window: an insertion-ordered ring of ids
 * with an open-addressing index over it (linear probing, backward-shift
 * deletion), keyed by SipHash with a per-process random key so a peer cannot
 * steer collisions; sets of unknown keys on a circular list swept for dead
 * ones. See replay.h for the guarantee. */
#include "router/comms/replay.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define S_INITIAL_CAP 64u
#define S_MAX_PEERS_LOAD 2 /* peers index kept at most half full */
#define S_SWEEP_MAX 64u    /* unknown sets examined for expiry per new unknown key */

typedef struct {
    uint8_t id[16];       /* the envelope id */
    uint64_t v7_ms;       /* its UUIDv7 time, 0 for other versions */
    uint64_t expires_ms;  /* wall time after which it may be dropped */
    uint8_t live;         /* 0 once forgotten or evicted */
} s_slot_t;

typedef struct s_peer s_peer_t;

struct s_peer {
    uint8_t pk[32];       /* the peer's public key */
    s_slot_t *ring;       /* ids in admission order */
    uint32_t cap;         /* ring capacity, a power of two ≤ PER_PEER_MAX */
    uint32_t head;        /* oldest slot */
    uint32_t count;       /* slots in use, live or not */
    uint32_t live;        /* live slots */
    uint32_t *index;      /* 2*cap buckets: ring slot + 1, 0 = empty */
    uint64_t watermark;   /* newest v7 time evicted (by capacity or by time) */
    uint64_t expires_max; /* latest expires_ms inserted: the set is dead after it */
    uint64_t v7_max;      /* newest v7 time inserted */
    bool floor_dirty;     /* watermark rose since router_replay_durable_info took it */
    /* The capacity eviction the newest insert made, so that
     * router_replay_forget can undo it when the inbox refuses that id: a
     * refusal leaves no trace (WIRE §6). Valid until the next insert. */
    bool undo;
    s_slot_t undo_slot;   /* the evicted slot */
    uint64_t undo_watermark;
    bool undo_dirty;
    bool known;           /* created for a trusted key: not in the unknown list */
    s_peer_t *uprev, *unext; /* the unknown sets, a circular list */
};

struct router_replay_t {
    uint64_t window_ms;             /* ± this much around now for v7 ids */
    uint64_t horizon_ms;            /* how long ids of other versions are kept */
    uint64_t floor_all;             /* v7 floor for every sender: watermarks of freed sets */
    s_peer_t *unknown;              /* sweep cursor into the unknown sets' list */
    size_t unknown_count;           /* unknown sets */
    uint8_t key[crypto_shorthash_KEYBYTES]; /* SipHash key for both indexes */
    s_peer_t **peers;               /* open-addressing table of peers */
    size_t peers_cap;               /* buckets, power of two */
    size_t peers_count;             /* peers tracked */
    size_t ids;                     /* live ids across peers */
};

static uint64_t s_hash(const router_replay_t *self, const uint8_t *data, size_t len)
{
    uint8_t out[crypto_shorthash_BYTES];
    crypto_shorthash(out, data, len, self->key);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return h;
}

static uint64_t s_v7_ms(const uint8_t id[16])
{
    if ((id[6] >> 4) != 7 || (id[8] & 0xC0) != 0x80)
        return 0;
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = (ms << 8) | id[i];
    return ms ? ms : 1; /* 0 means "not v7"; a v7 at the epoch is still v7 */
}

/* ---------------------------------------------------------------- one peer */

static uint32_t s_bucket(const router_replay_t *self, const s_peer_t *p, const uint8_t id[16])
{
    return (uint32_t) (s_hash(self, id, 16) & (2u * p->cap - 1));
}

/* Index bucket holding `id`, or the empty bucket where it would go. */
static uint32_t s_find(const router_replay_t *self, const s_peer_t *p, const uint8_t id[16],
                       int *found)
{
    uint32_t mask = 2u * p->cap - 1;
    uint32_t b = s_bucket(self, p, id);
    for (;;) {
        uint32_t v = p->index[b];
        if (v == 0) {
            *found = 0;
            return b;
        }
        if (memcmp(p->ring[v - 1].id, id, 16) == 0) {
            *found = 1;
            return b;
        }
        b = (b + 1) & mask;
    }
}

/* Removes bucket b, shifting later members of its probe run back. */
static void s_index_delete(const router_replay_t *self, s_peer_t *p, uint32_t b)
{
    uint32_t mask = 2u * p->cap - 1;
    uint32_t hole = b;
    uint32_t j = b;
    for (;;) {
        j = (j + 1) & mask;
        uint32_t v = p->index[j];
        if (v == 0)
            break;
        uint32_t home = s_bucket(self, p, p->ring[v - 1].id);
        /* Move j into the hole unless its home lies cyclically in (hole, j]. */
        int stays = (hole <= j) ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            p->index[hole] = v;
            hole = j;
        }
    }
    p->index[hole] = 0;
}

static void s_slot_kill(router_replay_t *self, s_peer_t *p, uint32_t slot)
{
    s_slot_t *s = &p->ring[slot];
    if (!s->live)
        return;
    int found;
    uint32_t b = s_find(self, p, s->id, &found);
    if (found)
        s_index_delete(self, p, b);
    s->live = 0;
    p->live--;
    self->ids--;
}

static void s_pop_head(router_replay_t *self, s_peer_t *p)
{
    s_slot_kill(self, p, p->head);
    p->head = (p->head + 1) & (p->cap - 1);
    p->count--;
}

/* Doubles the ring and rebuilds the index; the ring is re-linearised. */
static int s_grow(router_replay_t *self, s_peer_t *p)
{
    uint32_t ncap = p->cap * 2;
    s_slot_t *ring = calloc(ncap, sizeof *ring);
    uint32_t *index = calloc(2u * ncap, sizeof *index);
    if (!ring || !index) {
        free(ring);
        free(index);
        return -1;
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->count; i++) {
        s_slot_t *s = &p->ring[(p->head + i) & (p->cap - 1)];
        if (s->live)
            ring[n++] = *s;
    }
    free(p->ring);
    free(p->index);
    p->ring = ring;
    p->index = index;
    p->cap = ncap;
    p->head = 0;
    p->count = n;
    for (uint32_t i = 0; i < n; i++) {
        int found;
        uint32_t b = s_find(self, p, ring[i].id, &found);
        p->index[b] = i + 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- peers */

static s_peer_t *s_peer_lookup(const router_replay_t *self, const uint8_t pk[32], size_t *bucket)
{
    size_t mask = self->peers_cap - 1;
    size_t b = (size_t) s_hash(self, pk, 32) & mask;
    while (self->peers[b]) {
        if (memcmp(self->peers[b]->pk, pk, 32) == 0)
            break;
        b = (b + 1) & mask;
    }
    *bucket = b;
    return self->peers[b];
}

static int s_peers_grow(router_replay_t *self)
{
    size_t ncap = self->peers_cap * 2;
    s_peer_t **old = self->peers;
    size_t ocap = self->peers_cap;
    s_peer_t **peers = calloc(ncap, sizeof *peers);
    if (!peers)
        return -1;
    self->peers = peers;
    self->peers_cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i])
            continue;
        size_t b;
        (void) s_peer_lookup(self, old[i]->pk, &b);
        peers[b] = old[i];
    }
    free(old);
    return 0;
}

/* Removes bucket b from the peers table, shifting its probe run back. */
static void s_peers_delete(router_replay_t *self, size_t b)
{
    size_t mask = self->peers_cap - 1;
    size_t hole = b, j = b;
    for (;;) {
        j = (j + 1) & mask;
        s_peer_t *v = self->peers[j];
        if (!v)
            break;
        size_t home = (size_t) s_hash(self, v->pk, 32) & mask;
        int stays = (hole <= j) ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            self->peers[hole] = v;
            hole = j;
        }
    }
    self->peers[hole] = NULL;
}

static void s_unknown_unlink(router_replay_t *self, s_peer_t *p)
{
    if (p->unext == p) {
        self->unknown = NULL;
    } else {
        p->uprev->unext = p->unext;
        p->unext->uprev = p->uprev;
        if (self->unknown == p)
            self->unknown = p->unext;
    }
    p->uprev = p->unext = NULL;
    self->unknown_count--;
}

static void s_peer_free(router_replay_t *self, s_peer_t *p)
{
    size_t b;
    (void) s_peer_lookup(self, p->pk, &b);
    s_peers_delete(self, b);
    self->peers_count--;
    self->ids -= p->live;
    if (!p->known)
        s_unknown_unlink(self, p);
    free(p->ring);
    free(p->index);
    free(p);
}

/* A set is dead when every id it holds expired and its watermark is itself
 * outside the window: the freshness check alone refuses all it protects. */
static bool s_peer_dead(const router_replay_t *self, const s_peer_t *p, uint64_t now_ms)
{
    return p->expires_max < now_ms && p->watermark + self->window_ms < now_ms &&
           p->v7_max + self->window_ms < now_ms;
}

/* Frees up to S_SWEEP_MAX dead unknown sets from the cursor on; their
 * watermarks and newest v7 times move to floor_all, so nothing they refused
 * re-opens even if the clock steps back (all lie outside the window). */
static void s_unknown_sweep(router_replay_t *self, uint64_t now_ms)
{
    for (unsigned i = 0; i < S_SWEEP_MAX && self->unknown; i++) {
        s_peer_t *p = self->unknown;
        self->unknown = p->unext;
        if (!s_peer_dead(self, p, now_ms))
            continue;
        if (p->watermark > self->floor_all)
            self->floor_all = p->watermark;
        if (p->v7_max > self->floor_all)
            self->floor_all = p->v7_max;
        s_peer_free(self, p);
    }
}

static s_peer_t *s_peer_get(router_replay_t *self, const uint8_t pk[32], int create)
{
    size_t b;
    s_peer_t *p = s_peer_lookup(self, pk, &b);
    if (p || !create)
        return p;
    if ((self->peers_count + 1) * S_MAX_PEERS_LOAD > self->peers_cap) {
        if (s_peers_grow(self) != 0)
            return NULL;
        (void) s_peer_lookup(self, pk, &b);
    }
    p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->ring = calloc(S_INITIAL_CAP, sizeof *p->ring);
    p->index = calloc(2u * S_INITIAL_CAP, sizeof *p->index);
    if (!p->ring || !p->index) {
        free(p->ring);
        free(p->index);
        free(p);
        return NULL;
    }
    memcpy(p->pk, pk, 32);
    p->cap = S_INITIAL_CAP;
    p->known = true; /* s_peer_make decides */
    self->peers[b] = p;
    self->peers_count++;
    return p;
}

/* The set for `pk`, created if needed; an unknown key's new set counts
 * against ROUTER_REPLAY_UNKNOWN_PEERS_MAX unless `force` (seeding). */
static s_peer_t *s_peer_make(router_replay_t *self, const uint8_t pk[32], bool trusted, bool force,
                             uint64_t now_ms, router_replay_verdict_t *why)
{
    s_peer_t *p = s_peer_get(self, pk, 0);
    if (p) {
        if (trusted && !p->known) {
            s_unknown_unlink(self, p);
            p->known = true;
        }
        return p;
    }
    if (!trusted && !force && self->unknown_count >= ROUTER_REPLAY_UNKNOWN_PEERS_MAX) {
        s_unknown_sweep(self, now_ms);
        if (self->unknown_count >= ROUTER_REPLAY_UNKNOWN_PEERS_MAX) {
            *why = ROUTER_REPLAY_BUSY;
            return NULL;
        }
    }
    p = s_peer_get(self, pk, 1);
    if (!p) {
        *why = ROUTER_REPLAY_NOMEM;
        return NULL;
    }
    if (!trusted) {
        p->known = false;
        if (self->unknown) {
            p->unext = self->unknown;
            p->uprev = self->unknown->uprev;
            p->uprev->unext = p;
            self->unknown->uprev = p;
        } else {
            p->uprev = p->unext = p;
            self->unknown = p;
        }
        self->unknown_count++;
    }
    return p;
}

/* ---------------------------------------------------------------- inserting */

static void s_raise(s_peer_t *p, uint64_t v7)
{
    if (v7 > p->watermark) {
        p->watermark = v7;
        p->floor_dirty = true;
    }
}

/* Drops from the front what has expired (raising the watermark for v7 ids,
 * so the drop never re-opens them when the clock steps back) and what was
 * forgotten. */
static void s_expire(router_replay_t *self, s_peer_t *p, uint64_t now_ms)
{
    while (p->count > 0) {
        s_slot_t *h = &p->ring[p->head];
        if (h->live && h->expires_ms >= now_ms)
            break;
        if (h->live)
            s_raise(p, h->v7_ms);
        s_pop_head(self, p);
    }
}

/* Appends an id known to be absent; full at the cap, evicts the oldest
 * and raises the watermark to its time. */
static int s_insert(router_replay_t *self, s_peer_t *p, const uint8_t id[16], uint64_t v7,
                    uint64_t expires_ms, uint64_t now_ms)
{
    s_expire(self, p, now_ms);
    p->undo = false;
    if (p->count == p->cap) {
        if (p->cap < (p->known ? ROUTER_REPLAY_PER_PEER_MAX : ROUTER_REPLAY_UNKNOWN_PER_PEER_MAX)) {
            if (s_grow(self, p) != 0)
                return -1;
        }
        if (p->count == p->cap) {
            p->undo = true;
            p->undo_slot = p->ring[p->head];
            p->undo_watermark = p->watermark;
            p->undo_dirty = p->floor_dirty;
            s_raise(p, p->ring[p->head].v7_ms);
            s_pop_head(self, p);
        }
    }
    uint32_t slot = (p->head + p->count) & (p->cap - 1);
    s_slot_t *s = &p->ring[slot];
    memcpy(s->id, id, 16);
    s->v7_ms = v7;
    s->expires_ms = expires_ms;
    s->live = 1;
    p->count++;
    p->live++;
    self->ids++;
    if (expires_ms > p->expires_max)
        p->expires_max = expires_ms;
    if (v7 > p->v7_max)
        p->v7_max = v7;
    int found;
    uint32_t b = s_find(self, p, id, &found);
    p->index[b] = slot + 1;
    return 0;
}

static uint64_t s_expiry(const router_replay_t *self, uint64_t v7, uint64_t now_ms)
{
    return v7 ? v7 + self->window_ms : now_ms + self->horizon_ms;
}

/* ---------------------------------------------------------------- API */

router_replay_t *router_replay_new(uint32_t window_s, uint32_t horizon_s)
{
    if (sodium_init() < 0)
        return NULL;
    router_replay_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->peers_cap = 16;
    self->peers = calloc(self->peers_cap, sizeof *self->peers);
    if (!self->peers) {
        free(self);
        return NULL;
    }
    self->window_ms = (uint64_t) window_s * 1000;
    self->horizon_ms = (uint64_t) (horizon_s ? horizon_s : 86400) * 1000;
    crypto_shorthash_keygen(self->key);
    return self;
}

void router_replay_destroy(router_replay_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_replay_t *self = *self_p;
    for (size_t i = 0; i < self->peers_cap; i++) {
        if (!self->peers[i])
            continue;
        free(self->peers[i]->ring);
        free(self->peers[i]->index);
        free(self->peers[i]);
    }
    free(self->peers);
    free(self);
    *self_p = NULL;
}

router_replay_verdict_t router_replay_check_insert(router_replay_t *self, const uint8_t peer[32],
                                                   const uint8_t id[16], uint64_t now_ms,
                                                   bool trusted)
{
    uint64_t v7 = s_v7_ms(id);
    if (v7 && (v7 + self->window_ms < now_ms || v7 > now_ms + self->window_ms))
        return ROUTER_REPLAY_STALE;
    if (v7 && v7 <= self->floor_all)
        return ROUTER_REPLAY_EVICTED;

    router_replay_verdict_t why = ROUTER_REPLAY_FRESH;
    s_peer_t *p = s_peer_make(self, peer, trusted, false, now_ms, &why);
    if (!p)
        return why;
    int found;
    (void) s_find(self, p, id, &found);
    if (found)
        return ROUTER_REPLAY_SEEN;
    if (v7 && v7 <= p->watermark)
        return ROUTER_REPLAY_EVICTED;
    if (s_insert(self, p, id, v7, s_expiry(self, v7, now_ms), now_ms) != 0)
        return ROUTER_REPLAY_NOMEM;
    return ROUTER_REPLAY_FRESH;
}

void router_replay_durable_info(router_replay_t *self, const uint8_t peer[32],
                                const uint8_t id[16], uint64_t now_ms, uint64_t *v7_ms,
                                uint64_t *expires_ms, uint64_t *floor_ms)
{
    uint64_t v7 = s_v7_ms(id);
    *v7_ms = v7;
    *expires_ms = s_expiry(self, v7, now_ms);
    *floor_ms = 0;
    s_peer_t *p = s_peer_get(self, peer, 0);
    if (p && p->floor_dirty) {
        *floor_ms = p->watermark;
        p->floor_dirty = false;
    }
}

int router_replay_seed(router_replay_t *self, const uint8_t peer[32], const uint8_t id[16],
                       uint64_t expires_ms, uint64_t now_ms, bool trusted)
{
    uint64_t v7 = s_v7_ms(id);
    router_replay_verdict_t why = ROUTER_REPLAY_FRESH;
    if (v7 && v7 + self->window_ms < now_ms) {
        /* Outside the window now: the freshness check refuses it while the
         * clock holds; the floor keeps refusing it if the clock steps back. */
        s_peer_t *p = s_peer_get(self, peer, 0);
        if (p)
            s_raise(p, v7);
        else if (v7 > self->floor_all)
            self->floor_all = v7;
        return 0;
    }
    if (!v7 && expires_ms < now_ms)
        return 0;
    s_peer_t *p = s_peer_make(self, peer, trusted, true, now_ms, &why);
    if (!p)
        return -1;
    int found;
    (void) s_find(self, p, id, &found);
    if (found)
        return 0;
    if (s_insert(self, p, id, v7, v7 ? v7 + self->window_ms : expires_ms, now_ms) != 0)
        return -1;
    p->floor_dirty = false; /* what was read back is durable already */
    return 0;
}

int router_replay_seed_floor(router_replay_t *self, const uint8_t peer[32], uint64_t floor_ms,
                             uint64_t now_ms, bool trusted)
{
    if (sodium_is_zero(peer, 32)) {
        if (floor_ms > self->floor_all)
            self->floor_all = floor_ms;
        return 0;
    }
    s_peer_t *p = s_peer_get(self, peer, 0);
    if (!p && floor_ms + self->window_ms < now_ms) {
        /* Only a clock stepped back could make it matter: one floor for all. */
        if (floor_ms > self->floor_all)
            self->floor_all = floor_ms;
        return 0;
    }
    router_replay_verdict_t why = ROUTER_REPLAY_FRESH;
    if (!p && !(p = s_peer_make(self, peer, trusted, true, now_ms, &why)))
        return -1;
    if (floor_ms > p->watermark)
        p->watermark = floor_ms;
    return 0;
}

void router_replay_forget(router_replay_t *self, const uint8_t peer[32], const uint8_t id[16])
{
    s_peer_t *p = s_peer_get(self, peer, 0);
    if (!p)
        return;
    int found;
    uint32_t b = s_find(self, p, id, &found);
    if (found) {
        uint32_t slot = p->index[b] - 1;
        s_slot_kill(self, p, slot);
        if (slot == ((p->head + p->count - 1) & (p->cap - 1))) {
            /* The id just inserted (the inbox refused it): its slot's room
             * goes back, and an eviction its insert made is undone (the
             * evicted id back at the front, the watermark as it was), so
             * the refusal leaves no trace. spec/ack.pml found both: a
             * refused id's retry was refused as a replay. */
            p->count--;
        }
        if (p->undo && p->count < p->cap &&
            slot == ((p->head + p->count) & (p->cap - 1))) {
            p->head = (p->head - 1) & (p->cap - 1);
            p->ring[p->head] = p->undo_slot;
            p->count++;
            if (p->undo_slot.live) {
                uint32_t at = s_find(self, p, p->undo_slot.id, &found);
                p->index[at] = p->head + 1;
                p->live++;
                self->ids++;
            }
            p->watermark = p->undo_watermark;
            p->floor_dirty = p->undo_dirty;
        }
        p->undo = false;
    }
    /* The watermark taken for this admission was not stored: hand it back. */
    if (p->watermark)
        p->floor_dirty = true;
}

const char *router_replay_verdict_str(router_replay_verdict_t v)
{
    switch (v) {
    case ROUTER_REPLAY_FRESH: return "fresh";
    case ROUTER_REPLAY_SEEN: return "seen";
    case ROUTER_REPLAY_STALE: return "stale";
    case ROUTER_REPLAY_EVICTED: return "evicted";
    case ROUTER_REPLAY_NOMEM: return "nomem";
    case ROUTER_REPLAY_BUSY: return "unknown_senders_full";
    }
    return "unknown";
}

size_t router_replay_size(const router_replay_t *self)
{
    return self->ids;
}

size_t router_replay_unknown_sets(const router_replay_t *self)
{
    return self->unknown_count;
}
