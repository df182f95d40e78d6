/* router/comms/crypto_order.h — one connection's jobs in arrival order
 * (WIRE §14.12, spec/crypto.pml): crypto threads may finish them in any
 * order, the loop takes them out only from the front, and only once done,
 * so envelopes are admitted — and acked — in the order they arrived.
 *
 * Ownership, which the model checks ("frees nothing twice"): the loop owns
 * a job that is done; a job not yet done belongs to whoever runs it (the
 * pool). When a connection goes away, router_crypto_order_abandon frees the
 * done jobs and orphans the others (owner = NULL): the loop frees an orphan
 * when the pool hands it back. A bounded ring; loop thread only. */
#ifndef KITH_ROUTER_CRYPTO_ORDER_H
#define KITH_ROUTER_CRYPTO_ORDER_H

#include <stdbool.h>
#include <stddef.h>

#include "router/comms/crypto_job.h"

typedef struct {
    router_crypto_job_t **ring; /* jobs, oldest at head */
    size_t head, count, cap;    /* cap: a power of two, grown on demand */
    size_t bytes;               /* payload bytes of the jobs held */
} router_crypto_order_t;

/* An empty order (no allocation until the first push). */
void router_crypto_order_init(router_crypto_order_t *o);

/* Appends `job` (arrival order) and sets its owner. Returns 0, or -1 when
 * out of memory (the caller keeps the job). */
int router_crypto_order_push(router_crypto_order_t *o, router_crypto_job_t *job, void *owner)
    __attribute__((warn_unused_result));

/* The oldest job when it is done, else NULL (its predecessors decide). */
router_crypto_job_t *router_crypto_order_ready(const router_crypto_order_t *o);

/* Removes the oldest job (which must be done) and hands it to the caller. */
router_crypto_job_t *router_crypto_order_pop(router_crypto_order_t *o);

/* Drops every job: done ones are freed with free_fn(job, ud) (NULL:
 * router_crypto_job_free), the others orphaned (owner NULL, freed by
 * whoever sees them come back) and cancelled (a thread that has not begun
 * one skips it). Then frees the ring. Used when the
 * connection closes and after a refusal (what follows it is discarded
 * unread, WIRE §7). Idempotent. */
void router_crypto_order_abandon(router_crypto_order_t *o,
                                 void (*free_fn)(router_crypto_job_t *job, void *ud), void *ud);

/* Jobs held. */
size_t router_crypto_order_count(const router_crypto_order_t *o);

#endif
