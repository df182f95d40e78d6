/* router/comms/crypto_job.h — the pure, CPU-heavy part of receiving one
 * envelope (WIRE §7 checks 2–3 and the ack's signature, §8.1), cut out of
 * the loop so that it can run on a crypto thread (router/comms/crypto_pool.h,
 * WIRE §14.12): decode the frame's payload, verify the signature, and, for
 * an acked kind addressed to us, sign the ack frame in advance. The ack is
 * only *made* here; the loop still sends it in order and only once the
 * admission is durable (§8.2).
 *
 * A job needs no loop state: the trust store, the replay window, the inbox
 * and the connection are read and changed only on the loop, after the job
 * comes back. Which keys skip the full-order check is decided by a key
 * cache the running thread owns (a key that passed proto_pubkey_check once
 * passes it forever: it is a property of the 32 bytes, not of trust). */
#ifndef KITH_ROUTER_CRYPTO_JOB_H
#define KITH_ROUTER_CRYPTO_JOB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/envelope.h"

/* Keys one thread remembers as full-order (direct-mapped, a power of two). */
#define ROUTER_CRYPTO_KEYCACHE_SLOTS 256u

/* Keys known to pass proto_pubkey_check. One per thread; never shared. */
typedef struct {
    uint8_t key[ROUTER_CRYPTO_KEYCACHE_SLOTS][32]; /* the keys */
    bool used[ROUTER_CRYPTO_KEYCACHE_SLOTS];       /* slot holds a key */
} router_crypto_keycache_t;

typedef struct router_crypto_job router_crypto_job_t;

/* One frame on its way through the checks. Fields are grouped by who may
 * touch them when; the hand-over between the loop and a crypto thread goes
 * through the pool's mutex (router/comms/crypto_pool.c), which orders every
 * write before it with every read after it. */
struct router_crypto_job {
    /* --- set by the loop before the job is run; read-only afterwards */
    uint8_t *payload;              /* the frame's payload, owned by the job; NULL for a preset refusal */
    size_t len;                    /* bytes of payload */
    proto_wire_reason_t preset;    /* a refusal known before running (oversize), else PROTO_WIRE_OK */
    /* --- written by router_crypto_job_run; read by the loop after it */
    proto_envelope_t *env;         /* decoded envelope (owned), or NULL */
    proto_envelope_reason_t why;   /* PROTO_ENV_OK, or why decoding or the signature failed */
    bool ack_ready;                /* ack holds the signed ack frame */
    uint8_t ack[PROTO_ACK_FRAME_LEN]; /* the ack, signed in advance (acked kinds addressed to us) */
    /* --- loop thread only */
    void *owner;                   /* the connection waiting for it; NULL once orphaned */
    bool done;                     /* back on the loop (ran inline, or returned by the pool) */
    /* --- shared: set by the loop, read by a crypto thread */
    atomic_bool cancelled;         /* orphaned before it ran: a thread skips the work */
    /* --- the pool's queues (under its mutex) */
    router_crypto_job_t *next;
};

/* A job for `len` bytes of payload, copied. Returns NULL when out of
 * memory. Caller owns the result (router_crypto_job_free). */
router_crypto_job_t *router_crypto_job_new(const uint8_t *payload, size_t len);

/* A job that is a refusal already (e.g. oversize): nothing to run; it
 * waits in the connection's order like any other. NULL on no memory. */
router_crypto_job_t *router_crypto_job_new_refusal(proto_wire_reason_t reason);

/* Frees the payload, the envelope and the job. Idempotent; nulls *job_p. */
void router_crypto_job_free(router_crypto_job_t **job_p);

/* Decodes, verifies and (for an acked kind addressed to `pk`) signs the ack
 * with `sk`. Pure: touches only the job, `cache` and libsodium. Any thread;
 * `cache` must be that thread's own. The payload is kept: the inbox stores
 * those bytes. */
void router_crypto_job_run(router_crypto_job_t *job, const uint8_t sk[64], const uint8_t pk[32],
                           router_crypto_keycache_t *cache);

/* Whether the job's envelope decoded and its signature verified. */
bool router_crypto_job_verified(const router_crypto_job_t *job);

#endif
