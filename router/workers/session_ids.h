/* router/workers/session_ids.h — the ids of the sessions state.db keeps,
 * held in memory as keyed 64-bit hashes (SipHash, a key drawn at start), so
 * that the door of a full store (limits.sessions_max, WIRE §24.10) can tell
 * at once, without a query, whether a message is for a session it already
 * keeps (let in) or would make a new one (refused). 16 octets or fewer per
 * id kept.
 *
 * A hash says "kept" for an id that is not only when two ids collide in 64
 * keyed bits: an outsider who cannot read the key cannot aim for that, and
 * it would let one session past the bound, nothing more.
 *
 * Threads: every call takes the set's own lock; any thread. */
#ifndef KITH_ROUTER_SESSION_IDS_H
#define KITH_ROUTER_SESSION_IDS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct router_session_ids router_session_ids_t;

/* An empty set, or NULL (no memory, or libsodium cannot start). The caller
 * owns the result. */
router_session_ids_t *router_session_ids_new(void);

/* Idempotent; nulls *self_p. */
void router_session_ids_destroy(router_session_ids_t **self_p);

/* Adds id (no-op when there). 0, or -1 when the table cannot grow: the set
 * then misses id, and the door refuses it at the bound as a new one. */
int router_session_ids_add(router_session_ids_t *self, const char *id);

/* Takes id out (no-op when absent). */
void router_session_ids_remove(router_session_ids_t *self, const char *id);

/* True when id is in the set. */
bool router_session_ids_has(router_session_ids_t *self, const char *id);

/* Empties the set (its table stays allocated). */
void router_session_ids_clear(router_session_ids_t *self);

/* Ids held. */
size_t router_session_ids_count(router_session_ids_t *self);

#endif
