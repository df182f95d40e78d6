/* router/workers/audit_limit.h — how many audit records that anyone who
 * reaches a port can cause (a refused token, pairing code or envelope, a
 * forbidden admin call) reach the log (spec/WIRE.md §21.7). Each such
 * record needs a token from two buckets: its source's for its type, and
 * its type's for all sources. An event that finds either empty is not
 * written but counted against its (type, source), and the counts come out
 * later as `audit_suppressed` records. So a flood costs the disk a bounded
 * number of records a second, and the log still says who did what, how
 * many times, and when.
 *
 * Loop thread only. */
#ifndef KITH_ROUTER_AUDIT_LIMIT_H
#define KITH_ROUTER_AUDIT_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One source, one type: a burst of this many records, then this many a
 * second. */
#define ROUTER_AUDIT_LIMIT_SOURCE_BURST 10u
#define ROUTER_AUDIT_LIMIT_SOURCE_PER_S 1u
/* All sources, one type. */
#define ROUTER_AUDIT_LIMIT_TYPE_BURST 200u
#define ROUTER_AUDIT_LIMIT_TYPE_PER_S 50u
/* (type, source) pairs remembered at once; past it the least recently
 * seen is let go, and the count it held back moves to its type's "*". */
#define ROUTER_AUDIT_LIMIT_SOURCES_MAX 1024u
/* Longest source kept (an IPv6 address is 45); longer ones are cut. */
#define ROUTER_AUDIT_LIMIT_SOURCE_LEN 63u

typedef struct router_audit_limit router_audit_limit_t;

/* NULL on allocation failure. The caller owns the result. */
router_audit_limit_t *router_audit_limit_new(void);

/* Idempotent; nulls *self_p. Counts not flushed are lost (flush first). */
void router_audit_limit_destroy(router_audit_limit_t **self_p);

/* True for the types anyone who reaches a port can cause: auth_failure,
 * pair_failed, envelope_rejected, admin. */
bool router_audit_limit_applies(const char *type);

/* One event of `type` from `source` (NULL or "": "unknown") at now_ms
 * (any monotonic clock). True: write it. False: it was counted for a
 * later audit_suppressed record instead. With no memory for a new pair it
 * is counted against the type's "*" source. */
bool router_audit_limit_take(router_audit_limit_t *self, const char *type, const char *source,
                             uint64_t now_ms);

/* Events counted and not yet flushed. */
uint64_t router_audit_limit_pending(const router_audit_limit_t *self);

/* One (type, source) whose events were counted: `count` of them, the
 * first at first_ms and the last at last_ms (the clock take was given). */
typedef void(router_audit_limit_fn)(const char *type, const char *source, uint64_t count,
                                    uint64_t first_ms, uint64_t last_ms, void *ud);

/* Calls fn for every pair with counted events, and zeroes them. */
void router_audit_limit_flush(router_audit_limit_t *self, router_audit_limit_fn *fn, void *ud);

#endif
