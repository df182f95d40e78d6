/* router/comms/crypto_job.c — decode, verify and pre-sign the ack of one
 * inbound envelope, on whichever thread runs it (WIRE §14.12). */
#include "router/comms/crypto_job.h"

#include <stdlib.h>
#include <string.h>

#include "proto/pubkey.h"

router_crypto_job_t *router_crypto_job_new(const uint8_t *payload, size_t len)
{
    router_crypto_job_t *job = calloc(1, sizeof *job);
    if (!job)
        return NULL;
    atomic_init(&job->cancelled, false);
    job->payload = malloc(len ? len : 1);
    if (!job->payload) {
        free(job);
        return NULL;
    }
    if (len)
        memcpy(job->payload, payload, len);
    job->len = len;
    return job;
}

router_crypto_job_t *router_crypto_job_new_refusal(proto_wire_reason_t reason)
{
    router_crypto_job_t *job = calloc(1, sizeof *job);
    if (job) {
        atomic_init(&job->cancelled, false);
        job->preset = reason;
    }
    return job;
}

void router_crypto_job_free(router_crypto_job_t **job_p)
{
    if (!job_p || !*job_p)
        return;
    router_crypto_job_t *job = *job_p;
    proto_envelope_destroy(&job->env);
    free(job->payload);
    free(job);
    *job_p = NULL;
}

/* Public keys are uniformly spread bytes, so their first bytes index the
 * cache. A sender who picks keys to collide with another's slot only makes
 * that key's next envelope pay the full check again, never skip one. */
static size_t s_slot(const uint8_t key[32])
{
    return ((size_t) key[0] | (size_t) key[1] << 8) & (ROUTER_CRYPTO_KEYCACHE_SLOTS - 1);
}

void router_crypto_job_run(router_crypto_job_t *job, const uint8_t sk[64], const uint8_t pk[32],
                           router_crypto_keycache_t *cache)
{
    if (job->preset != PROTO_WIRE_OK)
        return;
    /* check 2: decode */
    if (proto_envelope_decode(job->payload, job->len, &job->env, &job->why) != 0)
        return;
    /* check 3: signature; a key this thread saw pass the full-order check
     * skips it, which halves the cost (the loop used the trust store for
     * the same purpose; it may not be read here) */
    const uint8_t *from = proto_envelope_from(job->env);
    size_t slot = s_slot(from);
    bool known = cache->used[slot] && memcmp(cache->key[slot], from, 32) == 0;
    int bad = known ? proto_envelope_verify_prechecked(job->env, &job->why)
                    : proto_envelope_verify(job->env, &job->why);
    if (bad)
        return;
    if (!known) {
        memcpy(cache->key[slot], from, 32);
        cache->used[slot] = true;
    }
    /* the ack, made now so the loop does no Ed25519 (sent only once durable) */
    if (memcmp(proto_envelope_to(job->env), pk, 32) == 0 &&
        proto_kind_acked(proto_envelope_kind(job->env))) {
        proto_envelope_ack_frame(sk, from, proto_envelope_id(job->env), NULL, job->ack);
        job->ack_ready = true;
    }
}

bool router_crypto_job_verified(const router_crypto_job_t *job)
{
    return job->preset == PROTO_WIRE_OK && job->env && job->why == PROTO_ENV_OK;
}
