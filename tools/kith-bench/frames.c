/* tools/kith-bench/frames.c — the bench's signing identity, pre-signed
 * envelope frames whose ids carry their index, and the ack check. Built on
 * proto/envelope.h, the same codec the router uses, so the bench measures
 * kith's pipeline rather than a second encoder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "proto/envelope.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "tools/kith-bench/bench.h"

int bench_keys_init(bench_keys_t *k, const char *seed_hex, const char *server_key)
{
    uint8_t seed[32];
    size_t got = 0;
    const char *hex = seed_hex ? seed_hex : BENCH_DEFAULT_SEED;
    if (strlen(hex) != 64 ||
        sodium_hex2bin(seed, sizeof seed, hex, 64, NULL, &got, NULL) != 0 || got != 32) {
        fprintf(stderr, "kith-bench: --seed wants 64 hex digits (a 32-byte Ed25519 seed)\n");
        return -1;
    }
    proto_ed25519_seed_keypair(seed, k->pk, k->sk);
    sodium_memzero(seed, sizeof seed);
    memset(k->server_pk, 0, sizeof k->server_pk);
    if (server_key && proto_pubkey_parse(server_key, strlen(server_key), k->server_pk) != 0) {
        fprintf(stderr, "kith-bench: --server-key wants the daemon's key as `kith id` prints it "
                        "(ed25519:<base64>), got \"%s\"\n",
                server_key);
        return -1;
    }
    return 0;
}

uint16_t bench_run_tag(void)
{
    return (uint16_t) randombytes_uniform(1u << 14);
}

uint16_t bench_id_run(const uint8_t id[16])
{
    return (uint16_t) ((id[8] & 0x3f) << 8 | id[9]);
}

uint64_t bench_id_index(const uint8_t id[16])
{
    uint64_t i = 0;
    for (int b = 10; b < 16; b++)
        i = i << 8 | id[b];
    return i;
}

/* A v7 id for now whose random part is the run tag and the index. */
static void s_id(uint64_t ms, uint16_t run, size_t i, uint8_t out[16])
{
    uint8_t r[10];
    r[0] = 0;
    r[1] = 0;
    r[2] = (uint8_t) (run >> 8);
    r[3] = (uint8_t) run;
    for (int b = 0; b < 6; b++)
        r[4 + b] = (uint8_t) ((uint64_t) i >> (40 - 8 * b));
    proto_uuid_v7_make(ms, r, out);
}

int bench_frames_make(bench_frames_t *f, const bench_keys_t *k, size_t n, size_t body_bytes,
                      uint16_t run)
{
    memset(f, 0, sizeof *f);
    char *body = malloc(body_bytes + 1);
    f->off = calloc(n ? n : 1, sizeof *f->off);
    f->len = calloc(n ? n : 1, sizeof *f->len);
    f->id = calloc(n ? n : 1, sizeof *f->id);
    size_t cap = 0, used = 0;
    if (!body || !f->off || !f->len || !f->id)
        goto fail;
    for (size_t i = 0; i < body_bytes; i++)
        body[i] = (char) ('a' + i % 26);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
    for (size_t i = 0; i < n; i++) {
        s_id(ms, run, i, f->id[i]);
        proto_envelope_reason_t why;
        cbor_item_t *kind = proto_kind_message(body, body_bytes, NULL, PROTO_HANDLING_NONE);
        proto_envelope_t *env = kind ? proto_envelope_new(f->id[i], k->pk, k->server_pk, &kind, &why)
                                     : NULL;
        uint8_t *frame = NULL;
        size_t flen = 0;
        if (!env || proto_envelope_sign(env, k->sk) != 0 ||
            proto_envelope_encode_frame(env, &frame, &flen) != 0) {
            proto_envelope_destroy(&env);
            goto fail;
        }
        proto_envelope_destroy(&env);
        if (used + flen > cap) {
            size_t ncap = cap ? cap * 2 : 1u << 20;
            while (ncap < used + flen)
                ncap *= 2;
            uint8_t *nb = realloc(f->buf, ncap);
            if (!nb) {
                free(frame);
                goto fail;
            }
            f->buf = nb;
            cap = ncap;
        }
        memcpy(f->buf + used, frame, flen);
        f->off[i] = used;
        f->len[i] = flen;
        used += flen;
        free(frame);
    }
    f->n = n;
    free(body);
    return 0;
fail:
    free(body);
    bench_frames_free(f);
    return -1;
}

void bench_frames_free(bench_frames_t *f)
{
    free(f->buf);
    free(f->off);
    free(f->len);
    free(f->id);
    memset(f, 0, sizeof *f);
}

int bench_ack_check(const bench_keys_t *k, const uint8_t *payload, size_t len,
                    const uint8_t expect_id[16], bool verify, const char **why)
{
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t r;
    uint8_t irt[16];
    int rc = -1;
    if (proto_envelope_decode(payload, len, &env, &r) != 0) {
        *why = proto_envelope_reason_str(r);
        return -1;
    }
    if (proto_envelope_kind(env) != PROTO_KIND_ACK) {
        *why = "not an ack";
    } else if (memcmp(proto_envelope_from(env), k->server_pk, 32) != 0 ||
               memcmp(proto_envelope_to(env), k->pk, 32) != 0) {
        *why = "ack from or to the wrong key";
    } else if (proto_envelope_in_reply_to(env, irt) != 0 || memcmp(irt, expect_id, 16) != 0) {
        *why = "ack out of order (in_reply_to is not the oldest envelope unacked)";
    } else if (verify && proto_envelope_verify_prechecked(env, &r) != 0) {
        *why = "ack signature does not verify";
    } else {
        rc = 0;
    }
    proto_envelope_destroy(&env);
    return rc;
}
