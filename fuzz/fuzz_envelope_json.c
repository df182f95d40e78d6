/* fuzz/fuzz_envelope_json.c — the JSON form of envelopes and their values
 * (router/comms/envelope_json.c): what `kith envelope encode` and
 * `kith send --params` read from people, and what router/workers/turns.c
 * reads from an LLM's tool-call arguments. The first byte picks the entry:
 *
 *   even: one JSON value → CBOR (router_json_to_cbor). What it accepts
 *         writes back as JSON (router_cbor_to_json) and reads back to the
 *         same CBOR octets: a fixed point after one turn.
 *   odd:  an envelope (router_envelope_from_json) from a fixed key. What it
 *         accepts signs, writes as JSON (router_envelope_to_json) and reads
 *         back to an envelope that signs to the same frame.
 *
 * Never crashes or leaks; a refusal always says why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cbor.h>
#include <sodium.h>
#include <yajl/yajl_gen.h>

#include "proto/cbor_canon.h"
#include "router/comms/envelope_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken promise: says which, for the one who reads the crash. */
#define S_BROKEN(what)                                                                            \
    do {                                                                                          \
        fprintf(stderr, "fuzz_envelope_json: %s\n", what);                                      \
        abort();                                                                                  \
    } while (0)

/* The canonical octets of item (caller frees), or NULL: JSON keeps its
 * keys in the order written, and the writer sorts them, so only the
 * canonical forms are comparable (a signature is over those). */
static uint8_t *s_octets(const cbor_item_t *item, size_t *len)
{
    uint8_t *out = NULL;
    proto_cbor_reason_t why;
    if (proto_cbor_canon_bytes(item, 64, 16u << 20, &out, len, &why) != 0)
        return NULL;
    return out;
}

static void s_value(const char *json, size_t len)
{
    char err[256] = "";
    cbor_item_t *a = router_json_to_cbor(json, len, err, sizeof err);
    if (!a) {
        if (!err[0])
            S_BROKEN("a value refused without a reason");
        return;
    }
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        S_BROKEN("no memory for a generator");
    if (router_cbor_to_json(g, a) == 0) {
        const unsigned char *text;
        size_t tlen;
        yajl_gen_get_buf(g, &text, &tlen);
        cbor_item_t *b = router_json_to_cbor((const char *) text, tlen, err, sizeof err);
        /* What it wrote it reads back, unless the text outgrew the bound
         * (1e5 is written 100000.0). */
        if (!b && tlen <= ROUTER_JSON_MAX) {
            fprintf(stderr, "fuzz_envelope_json: %s: %.*s\n", err, (int) tlen, text);
            S_BROKEN("the JSON written for a value does not read back");
        }
        if (b) {
            size_t na = 0, nb = 0;
            uint8_t *oa = s_octets(a, &na), *ob = s_octets(b, &nb);
            if (!oa != !ob || (oa && (na != nb || memcmp(oa, ob, na) != 0)))
                S_BROKEN("a value read back is not the value written");
            free(oa);
            free(ob);
            cbor_decref(&b);
        }
    }
    yajl_gen_free(g);
    cbor_decref(&a);
}

static void s_envelope(const char *json, size_t len)
{
    static uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    static bool keyed;
    if (!keyed) {
        uint8_t seed[crypto_sign_SEEDBYTES] = {7};
        crypto_sign_seed_keypair(pk, sk, seed);
        keyed = true;
    }
    char err[256] = "";
    proto_envelope_t *a = NULL, *b = NULL;
    if (router_envelope_from_json(json, len, pk, &a, err, sizeof err) != 0) {
        if (!err[0])
            S_BROKEN("an envelope refused without a reason");
        return;
    }
    char *text = NULL;
    size_t tlen = 0;
    uint8_t *fa = NULL, *fb = NULL;
    size_t na = 0, nb = 0;
    if (proto_envelope_sign(a, sk) != 0)
        goto done; /* a kind too large to sign is refused there */
    if (router_envelope_to_json(a, NULL, 0, &text, &tlen) != 0)
        goto done; /* out of memory only: every value came from JSON */
    if (router_envelope_from_json(text, tlen, pk, &b, err, sizeof err) != 0) {
        if (tlen <= ROUTER_JSON_MAX) {
            fprintf(stderr, "fuzz_envelope_json: %s: %.*s\n", err, (int) tlen, text);
            S_BROKEN("the JSON written for an envelope does not read back");
        }
        goto done;
    }
    if (proto_envelope_sign(b, sk) != 0 || proto_envelope_encode_frame(a, &fa, &na) != 0 ||
        proto_envelope_encode_frame(b, &fb, &nb) != 0)
        goto done;
    if (na != nb || memcmp(fa, fb, na) != 0)
        S_BROKEN("an envelope read back signs to another frame");
done:
    free(fa);
    free(fb);
    free(text);
    proto_envelope_destroy(&a);
    proto_envelope_destroy(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || sodium_init() < 0)
        return 0;
    if (data[0] % 2 == 0)
        s_value((const char *) data + 1, size - 1);
    else
        s_envelope((const char *) data + 1, size - 1);
    return 0;
}
