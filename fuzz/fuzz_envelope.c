/* fuzz/fuzz_envelope.c — envelope decoding, verification and re-encoding:
 * whatever decodes must re-encode to bytes that decode to the same envelope
 * and re-encode identically (a fixed point), and its JSON form must read back
 * to the same signable bytes. The input is one envelope without a frame
 * header; the first byte chooses whether a frame header is added, so the
 * frame path is fuzzed too. The fast path for the canonical head must agree
 * with the general path on every input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "proto/envelope.h"
#include "router/comms/envelope_json.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void) argc;
    (void) argv;
    if (sodium_init() < 0)
        abort();
    return 0;
}

/* Same signable bytes, or abort. */
static void s_same_signable(const proto_envelope_t *a, const proto_envelope_t *b)
{
    size_t la = 0, lb = 0;
    const uint8_t *sa = proto_envelope_signable(a, &la), *sb = proto_envelope_signable(b, &lb);
    if (la != lb || memcmp(sa, sb, la) != 0)
        abort();
}

/* decode → JSON → envelope keeps every signed byte. */
static void s_json_roundtrip(const proto_envelope_t *env)
{
    char *json = NULL;
    size_t len = 0;
    char err[256];
    proto_envelope_t *back = NULL;
    if (router_envelope_to_json(env, NULL, 0, &json, &len) != 0)
        return; /* no JSON form ({"$bytes": …} maps) or no memory */
    /* The JSON text names both keys, which must be usable ones to read back. */
    if (proto_pubkey_check(proto_envelope_from(env)) == 0 && proto_pubkey_check(proto_envelope_to(env)) == 0) {
        if (router_envelope_from_json(json, len, proto_envelope_from(env), &back, err, sizeof err) != 0)
            abort();
        s_same_signable(env, back);
        proto_envelope_destroy(&back);
    }
    free(json);
}

/* The fast path for the canonical head and the general path agree on
 * every input: the same verdict and reason, the same envelope. */
static void s_paths_agree(const uint8_t *data, size_t size)
{
    proto_envelope_t *a = NULL, *b = NULL;
    proto_envelope_reason_t wa = PROTO_ENV_OK, wb = PROTO_ENV_OK;
    int ra = proto_envelope_decode(data, size, &a, &wa);
    int rb = proto_envelope_decode_general(data, size, &b, &wb);
    if (ra != rb || wa != wb)
        abort();
    if (ra == 0) {
        s_same_signable(a, b);
        if (memcmp(proto_envelope_sig(a), proto_envelope_sig(b), 64) != 0 ||
            proto_envelope_kind(a) != proto_envelope_kind(b))
            abort();
    }
    proto_envelope_destroy(&a);
    proto_envelope_destroy(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_envelope_t *env = NULL, *again = NULL;
    proto_envelope_reason_t why = PROTO_ENV_OK;
    uint8_t *out = NULL, *out2 = NULL;
    size_t out_len = 0, out2_len = 0;

    if (size == 0)
        return 0;
    int framed = data[0] & 1;
    data++;
    size--;
    s_paths_agree(framed && size >= 4 ? data + 4 : data, framed && size >= 4 ? size - 4 : size);
    int rc = framed ? proto_envelope_decode_frame(data, size, &env, &why) : proto_envelope_decode(data, size, &env, &why);
    if (rc != 0) {
        if (why == PROTO_ENV_OK || env)
            abort(); /* a refusal always names its reason */
        return 0;
    }
    if (proto_envelope_verify(env, &why) != 0 && why != PROTO_ENV_WEAK_KEY && why != PROTO_ENV_BAD_SIGNATURE)
        abort();

    if (proto_envelope_encode_frame(env, &out, &out_len) != 0)
        goto done; /* out of memory */
    if (proto_envelope_decode_frame(out, out_len, &again, &why) != 0)
        abort(); /* what kith writes, kith reads */
    s_same_signable(env, again);
    if (proto_envelope_encode_frame(again, &out2, &out2_len) != 0)
        goto done;
    if (out_len != out2_len || memcmp(out, out2, out_len) != 0)
        abort(); /* canonical encoding is a fixed point */
    if (proto_envelope_kind(env) != proto_envelope_kind(again))
        abort();
    s_json_roundtrip(env);
done:
    free(out);
    free(out2);
    proto_envelope_destroy(&again);
    proto_envelope_destroy(&env);
    return 0;
}
