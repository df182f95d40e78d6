/* router/comms/crypto_order.c — a connection's jobs, admitted strictly in
 * arrival order whatever order they finish in. */
#include "router/comms/crypto_order.h"

#include <stdlib.h>

void router_crypto_order_init(router_crypto_order_t *o)
{
    o->ring = NULL;
    o->head = o->count = o->cap = 0;
    o->bytes = 0;
}

int router_crypto_order_push(router_crypto_order_t *o, router_crypto_job_t *job, void *owner)
{
    if (o->count == o->cap) {
        size_t ncap = o->cap ? o->cap * 2 : 16;
        router_crypto_job_t **n = malloc(ncap * sizeof *n);
        if (!n)
            return -1;
        for (size_t i = 0; i < o->count; i++)
            n[i] = o->ring[(o->head + i) & (o->cap - 1)];
        free(o->ring);
        o->ring = n;
        o->cap = ncap;
        o->head = 0;
    }
    job->owner = owner;
    o->ring[(o->head + o->count) & (o->cap - 1)] = job;
    o->count++;
    o->bytes += job->len;
    return 0;
}

router_crypto_job_t *router_crypto_order_ready(const router_crypto_order_t *o)
{
    if (o->count == 0)
        return NULL;
    router_crypto_job_t *job = o->ring[o->head];
    return job->done ? job : NULL;
}

router_crypto_job_t *router_crypto_order_pop(router_crypto_order_t *o)
{
    router_crypto_job_t *job = router_crypto_order_ready(o);
    if (!job)
        return NULL;
    o->head = (o->head + 1) & (o->cap - 1);
    o->count--;
    o->bytes -= job->len;
    job->owner = NULL;
    return job;
}

void router_crypto_order_abandon(router_crypto_order_t *o,
                                 void (*free_fn)(router_crypto_job_t *job, void *ud), void *ud)
{
    for (size_t i = 0; i < o->count; i++) {
        router_crypto_job_t *job = o->ring[(o->head + i) & (o->cap - 1)];
        job->owner = NULL;
        if (!job->done) {
            /* Still with the pool: freed when it comes back. If no thread
             * has begun it, none will verify it (a refused sender's
             * pipelined frames cost one check, not one each). Relaxed: a
             * thread that misses the flag only does useless work. */
            atomic_store_explicit(&job->cancelled, true, memory_order_relaxed);
            continue;
        }
        if (free_fn) /* back on the loop: ours */
            free_fn(job, ud);
        else
            router_crypto_job_free(&job);
    }
    free(o->ring);
    router_crypto_order_init(o);
}

size_t router_crypto_order_count(const router_crypto_order_t *o)
{
    return o->count;
}
