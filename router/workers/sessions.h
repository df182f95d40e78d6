/* router/workers/sessions.h — sessions and their messages in state.db
 * (tables `sessions` and `messages`), on a thread of its own so the loop
 * never runs SQLite: the loop queues jobs (bounded), the thread runs them in
 * order and hands finished ones back through an eventfd the loop watches;
 * their callbacks then run on the loop thread. Without a database path the
 * same code runs on an in-memory SQLite database.
 *
 * Jobs run in the order they were queued, so a history read queued after an
 * append sees it. Most history reads are answered by the loop's cache of
 * recent history (history_cache.h) with the same result, without the thread
 * (which may be waiting for a COMMIT's fsync); the callback still runs
 * later, never inside the call. */
#ifndef KITH_ROUTER_SESSIONS_H
#define KITH_ROUTER_SESSIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "router/net/loop.h"

/* Jobs queued at once (a job beyond is refused). */
#define ROUTER_SESSIONS_JOBS_MAX 8192u
/* Longest name kept with a session. */
#define ROUTER_SESSIONS_NAME_MAX 256u

/* What state.db keeps (WIRE §24.10). A stored message costs its content's
 * octets plus ROUTER_SESSIONS_MSG_COST for its row and index entries, so
 * a flood of tiny messages is bounded as surely as a few large ones. */
#define ROUTER_SESSIONS_MSG_COST 128u
#define ROUTER_SESSIONS_MAX 100000u                        /* limits.sessions_max */
#define ROUTER_SESSIONS_MESSAGES_MAX 10000u                /* limits.session_messages_max */
#define ROUTER_SESSIONS_SESSION_BYTES_MAX (64ull << 20)    /* limits.session_bytes_max */
#define ROUTER_SESSIONS_BYTES_MAX (1ull << 30)             /* limits.sessions_bytes_max */

/* The store's bounds; 0 for any: its default above. */
typedef struct {
    uint64_t sessions_max;      /* sessions kept: past it a new one is refused */
    uint64_t messages_max;      /* messages kept per session: the oldest go */
    uint64_t session_bytes_max; /* octets kept per session: the oldest messages go */
    uint64_t bytes_max;         /* octets over all sessions: past it ingress is refused */
} router_sessions_bounds_t;

/* router_sessions_room's answer, and an open's rc when it was refused. */
typedef enum {
    ROUTER_SESSIONS_ROOM = 0,        /* ingress may add to the store */
    ROUTER_SESSIONS_FULL_SESSIONS = -2, /* sessions_max sessions are kept: no new one */
    ROUTER_SESSIONS_FULL_BYTES = -3, /* bytes_max octets are kept: no new message */
} router_sessions_room_t;

typedef struct router_sessions router_sessions_t;

/* One stored message. */
typedef struct {
    const char *role;     /* "user" | "assistant" */
    const char *content;
    size_t len;
    uint64_t time_ms;
    const char *turn_id;  /* text UUID, or "" */
} router_sessions_msg_t;

/* Loop thread: the session is there (made now, or `resumed`). rc -1: the
 * store failed; ROUTER_SESSIONS_FULL_SESSIONS: it is not there and
 * sessions_max sessions are kept (counting new ones whose rows wait for a
 * failing disk). name is "" when none. */
typedef void(router_sessions_open_fn)(void *ud, uint64_t tag, int rc, bool resumed,
                                      uint64_t message_count, const char *name);
/* Loop thread: the last messages, oldest first (valid during the call). */
typedef void(router_sessions_history_fn)(void *ud, uint64_t tag, int rc,
                                         const router_sessions_msg_t *msgs, size_t n);
/* Loop thread: a JSON answer for the HTTP API (status 200, 404 or 503). */
typedef void(router_sessions_json_fn)(void *ud, uint64_t tag, int status, const char *json,
                                      size_t len);

/* bounds NULL: the defaults. An older state.db gains its `bytes` column
 * here (counted from its messages once). Returns NULL with a reason in
 * err[errcap]. Caller owns the result. */
router_sessions_t *router_sessions_new(router_loop_t *loop, const char *db_path,
                                       const router_sessions_bounds_t *bounds, char *err,
                                       size_t errcap);

/* Runs what is queued (callbacks are not called), stops the thread, frees.
 * Loop thread. Idempotent; nulls *self_p. */
void router_sessions_destroy(router_sessions_t **self_p);

/* Each returns 0 (fn runs later, once), or -1 with errno EAGAIN when the
 * queue is full (or refused: router_sessions_refuse), ENOMEM when memory
 * is short (fn never runs). */
int router_sessions_open(router_sessions_t *s, const char *id, const char *name,
                         router_sessions_open_fn *fn, void *ud, uint64_t tag);
int router_sessions_history(router_sessions_t *s, const char *id, unsigned limit,
                            router_sessions_history_fn *fn, void *ud, uint64_t tag);
/* Stores one message (no callback). Never refused for the bounds: what
 * ingress accepted is kept (ask router_sessions_room first); the
 * session's oldest messages go when it is past messages_max or
 * session_bytes_max (never the one just stored). A commit that fails for
 * the disk (full, an I/O error, a failed fsync) loses nothing: its writes
 * are held, in order, and retried with a backoff (10 ms doubling to 1 s)
 * until they commit, each message stored once (a failed commit that landed
 * anyway is read back, never written twice). While writes are held they
 * count against ROUTER_SESSIONS_JOBS_MAX with the queue (ingress gets
 * EAGAIN at the bound), later appends wait behind them, reads of a session
 * with held writes (history read past the cache, get_json, an open, a
 * delete) answer unavailable (-1 / 503) while other sessions read state.db,
 * and list_json answers 503. A stop retries them a few times more, then
 * gives them up, logging how many. */
int router_sessions_append(router_sessions_t *s, const char *id, const char *role,
                           const char *content, size_t len, const char *turn_id);
/* {"sessions":[…]} newest first (see turns.h). */
int router_sessions_list_json(router_sessions_t *s, unsigned limit,
                              router_sessions_json_fn *fn, void *ud, uint64_t tag);
/* Deletes a session and its messages, in a commit of its own; fn gets 200
 * {"deleted":true,"messages":N} once that is durable, 404 when there is no
 * such session, 503 when the store failed ({"deleted":true,"id",
 * "messages":N} on success). The cache forgets it at once. */
int router_sessions_delete(router_sessions_t *s, const char *id, router_sessions_json_fn *fn,
                           void *ud, uint64_t tag);
/* One session and its last `limit` messages (see turns.h); 404 if unknown. */
int router_sessions_get_json(router_sessions_t *s, const char *id, unsigned limit,
                             router_sessions_json_fn *fn, void *ud, uint64_t tag);

/* The history cache's counters (history_cache.h). Loop thread. */
struct router_history_cache_stats;
void router_sessions_cache_stats(const router_sessions_t *s,
                                 struct router_history_cache_stats *out);

/* Whether ingress may add a message now (`creating`: it may make a new
 * session). The counts are the store thread's, published as it commits:
 * what is queued and not yet stored can overshoot a bound, by what the
 * queues hold. Any thread. */
router_sessions_room_t router_sessions_room(const router_sessions_t *s, bool creating);

/* True when state.db keeps session `id` (as far as the store thread has
 * committed): a message for it makes no new session, so the sessions_max
 * bound does not refuse it. Any thread; no query (an in-memory set of the
 * ids kept, router/workers/session_ids.h). */
bool router_sessions_kept(const router_sessions_t *s, const char *id);

/* Sessions and octets kept now (as router_sessions_room sees them). */
void router_sessions_usage(const router_sessions_t *s, uint64_t *sessions, uint64_t *bytes);

/* Messages the bounds took out of sessions since the store opened. */
uint64_t router_sessions_pruned(const router_sessions_t *s);

/* Messages and new sessions' rows held for a failing disk (see append). */
size_t router_sessions_waiting(const router_sessions_t *s);

/* Jobs refused because the queue was full, and store failures (each failed
 * attempt at a commit counts one). */
uint64_t router_sessions_failures(const router_sessions_t *s);

/* Test seam: while on, every job is refused as if the queue were full. */
void router_sessions_refuse(router_sessions_t *s, bool on);

#endif
