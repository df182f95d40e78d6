/* router/state/dblock.h — one FIFO writer lock per SQLite file in this
 * process. state.db has several connections in one daemon (the inbox's
 * store thread, the sessions thread, the token store); SQLite lets one of
 * them write at a time and makes the others poll with growing sleeps, so a
 * writer that begins its next transaction as soon as it commits the last
 * can starve the rest for seconds. Taking this lock around each write
 * transaction queues the writers instead, in two classes: urgent ones (the
 * inbox's commits, which acks and webhook answers wait for) go ahead of
 * bulk ones (the sessions thread's batches of turn messages), but a bulk
 * writer waits for at most ROUTER_DBLOCK_URGENT_RUN urgent transactions
 * before its turn comes. */
#ifndef KITH_ROUTER_STATE_DBLOCK_H
#define KITH_ROUTER_STATE_DBLOCK_H

typedef struct router_dblock_t router_dblock_t;

/* Who is asking: see above. */
typedef enum { ROUTER_DBLOCK_URGENT, ROUTER_DBLOCK_BULK } router_dblock_class_t;

/* Urgent transactions a waiting bulk writer lets go first, at most. */
#define ROUTER_DBLOCK_URGENT_RUN 4u

/* The lock for the file at path, which must exist (open the database
 * first); every caller naming the same file (same device and inode) gets
 * the same lock. NULL when path cannot be stat'ed or out of memory: the
 * callers then write unqueued, as SQLite alone allows. Release it with
 * router_dblock_put. */
router_dblock_t *router_dblock_get(const char *path);

/* Drops the caller's reference and nulls *lock_p; the last one frees it. */
void router_dblock_put(router_dblock_t **lock_p);

/* Waits for this caller's turn to write. A NULL lock does nothing. Pair
 * each enter with one leave on the same thread. */
void router_dblock_enter(router_dblock_t *lock, router_dblock_class_t cls);
void router_dblock_leave(router_dblock_t *lock);

#endif
