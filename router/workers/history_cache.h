/* router/workers/history_cache.h — the last messages of recently active
 * sessions, kept on the loop thread so a turn's history needs no trip to the
 * sessions thread (which may be inside a COMMIT's fsync: issue 13).
 *
 * The cache answers exactly what a history read queued at the same point
 * would: the sessions store records every append it queues here, in queue
 * order, and a session enters only from a read of the database that was
 * queued before any append recorded for it while it loads. The store's
 * per-session bounds (sessions.h) are applied here as the store applies
 * them, after each append, so a session the bounds cut answers the same
 * from either. Bounded by
 * sessions and bytes (least recently used goes first); memory only, so a
 * restart starts empty and reads the database again. Loop thread only. */
#ifndef KITH_ROUTER_HISTORY_CACHE_H
#define KITH_ROUTER_HISTORY_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "router/workers/sessions.h"

/* Sessions held at once, and bytes of messages over all of them. */
#define ROUTER_HISTORY_CACHE_SESSIONS_MAX 1024u
#define ROUTER_HISTORY_CACHE_BYTES_MAX (16u << 20)

typedef struct router_history_cache router_history_cache_t;

/* A hit: msgs[n], oldest first, valid until the view is freed however the
 * cache changes meanwhile (the messages are shared and counted). */
typedef struct {
    router_sessions_msg_t *msgs;
    size_t n;
    void **refs;          /* the counted messages behind msgs */
} router_history_view_t;

typedef struct router_history_cache_stats {
    uint64_t hits, misses;
    size_t sessions, bytes;
    uint64_t evicted;     /* sessions dropped for the bounds */
} router_history_cache_stats_t;

/* NULL when memory is short. 0 for either bound: its default. Caller owns
 * the result. */
router_history_cache_t *router_history_cache_new(size_t sessions_max, size_t bytes_max);
/* The store's per-session bounds (0: none): after an append a session
 * keeps its newest messages while it holds more than messages_max, or
 * more than bytes_max octets with msg_cost counted per message, never
 * fewer than one. Call before the first use. */
void router_history_cache_bound(router_history_cache_t *c, uint64_t messages_max,
                                uint64_t bytes_max, uint64_t msg_cost);
/* Idempotent; nulls *self_p. Views already handed out stay valid. */
void router_history_cache_destroy(router_history_cache_t **self_p);

/* 1: *out holds the last min(limit, held) messages of id (caller frees it
 * with router_history_view_free); 0: a miss (read the database); -1: out of
 * memory (read the database). */
int router_history_cache_get(router_history_cache_t *c, const char *id, unsigned limit,
                             router_history_view_t **out);
void router_history_view_free(router_history_view_t **view_p);

/* A database read of id's last `limit` messages was just queued after a
 * miss: the session starts loading and every append recorded from now on
 * is kept for it. Returns the read's ticket for _loaded, 0 when the cache
 * will not hold id (already loading, or no memory). */
uint64_t router_history_cache_loading(router_history_cache_t *c, const char *id, unsigned limit);
/* That read's result (the last n ≤ limit messages, oldest first): id is
 * held from now on if it is still loading under this ticket. rc != 0 (the
 * read failed) forgets id. */
void router_history_cache_loaded(router_history_cache_t *c, const char *id, uint64_t ticket,
                                 int rc, const router_sessions_msg_t *msgs, size_t n);
/* An append to id was queued (in queue order). Nothing when id is not held. */
void router_history_cache_append(router_history_cache_t *c, const char *id,
                                 const router_sessions_msg_t *m);
/* id is no longer known to match the database (an append to it failed). */
void router_history_cache_forget(router_history_cache_t *c, const char *id);

void router_history_cache_stats(const router_history_cache_t *c,
                                router_history_cache_stats_t *out);

#endif
