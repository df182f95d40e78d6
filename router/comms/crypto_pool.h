/* router/comms/crypto_pool.h — crypto threads beside the loop (WIRE §14.12,
 * config `comms.crypto_threads`): the loop submits jobs
 * (router/comms/crypto_job.h), a bounded set of threads decodes, verifies
 * and pre-signs acks, and finished jobs come back to the loop thread, in
 * batches, through an eventfd the loop watches. With 0 threads a job runs
 * inline on the loop at submit, as before the pool existed.
 *
 * Everything the loop owns (trust, replay window, inbox, connections, the
 * order of admissions and acks) stays on the loop: threads see only jobs.
 *
 * Threads: new, submit, inflight, destroy are for the loop thread (or
 * before the loop runs); on_done runs on the loop thread. */
#ifndef KITH_ROUTER_CRYPTO_POOL_H
#define KITH_ROUTER_CRYPTO_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "router/comms/crypto_job.h"
#include "router/net/loop.h"

/* Most crypto threads (config comms.crypto_threads is 0..64, its default
 * the online CPUs up to 8: router/state/config.c). */
#define ROUTER_CRYPTO_THREADS_MAX 64u

typedef struct router_crypto_pool router_crypto_pool_t;

/* A job came back (job->done is set); the callee owns it. Loop thread. */
typedef void(router_crypto_done_fn)(router_crypto_job_t *job, void *ud);

typedef struct {
    router_loop_t *loop;            /* borrowed; done jobs come back on its thread */
    unsigned threads;               /* 0 .. ROUTER_CRYPTO_THREADS_MAX; 0: inline */
    const uint8_t *sk;              /* our secret key (64 bytes), borrowed, read-only while the pool lives */
    const uint8_t *pk;              /* our public key (32 bytes), borrowed likewise */
    router_crypto_done_fn *on_done; /* where finished jobs go (threaded pools) */
    void *ud;                       /* for on_done */
} router_crypto_pool_opts_t;

/* Starts the threads. Returns NULL with errno set (EINVAL: too many
 * threads; a pthread or eventfd error). Caller owns the result. */
router_crypto_pool_t *router_crypto_pool_new(const router_crypto_pool_opts_t *opts);

/* Stops and joins the threads, then frees every job still queued or
 * finished and not yet handed back: they must all be orphans (their
 * connections abandoned them, router_crypto_order_abandon). No on_done runs
 * after this begins. Idempotent; nulls *self_p. */
void router_crypto_pool_destroy(router_crypto_pool_t **self_p);

/* Runs `job`: at once on this thread when the pool has no threads (the job
 * is done on return; returns true), else staged for the threads (returns
 * false; on_done gets it later). The pool holds the job until then.
 * Staged jobs reach the threads at router_crypto_pool_flush: call it after
 * a batch of submits (one lock and one wake-up for the batch). */
bool router_crypto_pool_submit(router_crypto_pool_t *self, router_crypto_job_t *job);

/* Hands the staged jobs to the threads. */
void router_crypto_pool_flush(router_crypto_pool_t *self);

/* Test seam: while held, the threads take no job, so submitted jobs stay
 * queued (a slow or saturated pool, made deterministic). Any thread; no-op
 * with no threads. */
void router_crypto_pool_test_hold(router_crypto_pool_t *self, bool hold);

/* Jobs submitted to threads and not yet handed back to on_done. */
size_t router_crypto_pool_inflight(const router_crypto_pool_t *self);

/* Threads running (0: inline). */
unsigned router_crypto_pool_threads(const router_crypto_pool_t *self);

#endif
