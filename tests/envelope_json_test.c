/* tests/envelope_json_test.c — the JSON form of envelopes (tools/kith/
 * envelope_json) and the golden vectors in spec/vectors/envelopes.json,
 * which this test regenerates byte for byte and checks entry by entry.
 *
 * To rewrite the vectors after a deliberate change:
 *   KITH_WRITE_VECTORS=1 build/envelope_json_test */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "proto/cbor_canon.h"
#include "proto/envelope.h"
#include "router/comms/envelope_json.h"
#include "alloc_fail.h"

#define VECTORS_PATH KITH_SOURCE_DIR "/spec/vectors/envelopes.json"

/* ================================================================ keys */

typedef struct {
    const char *name;  /* "alice" or "bob" */
    uint8_t seed[32];  /* fixed seed: the byte `fill` 32 times */
    uint8_t pk[32];    /* derived public key */
    uint8_t sk[64];    /* derived secret key */
    char text[PROTO_PUBKEY_TEXT_CAP]; /* "ed25519:…" */
} s_key_t;

static s_key_t s_alice = {.name = "alice"}, s_bob = {.name = "bob"};

static void s_key_init(s_key_t *k, uint8_t fill)
{
    memset(k->seed, fill, sizeof k->seed);
    proto_ed25519_seed_keypair(k->seed, k->pk, k->sk);
    assert_int_equal(proto_pubkey_format(k->pk, k->text, sizeof k->text), 0);
}

/* ================================================================ text helpers */

/* A growable NUL-terminated string. */
typedef struct {
    char *p;    /* bytes */
    size_t len; /* used, without the NUL */
    size_t cap; /* allocated */
} s_str_t;

static void s_printf(s_str_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void s_printf(s_str_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    if (s->len + (size_t) n + 1 > s->cap) {
        s->cap = (s->len + (size_t) n + 1) * 2;
        s->p = realloc(s->p, s->cap);
        assert_non_null(s->p);
    }
    va_start(ap, fmt);
    vsnprintf(s->p + s->len, (size_t) n + 1, fmt, ap);
    va_end(ap);
    s->len += (size_t) n;
}

/* Hex of p[n] appended to s. */
static void s_put_hex(s_str_t *s, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s_printf(s, "%02x", p[i]);
}

static uint8_t *s_unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    uint8_t *out = malloc(n / 2 + 1);
    assert_non_null(out);
    assert_int_equal(sodium_hex2bin(out, n / 2 + 1, hex, n, NULL, len, NULL), 0);
    assert_int_equal(*len, n / 2);
    return out;
}

/* A CBOR text item as hex. */
static void s_put_text_item(s_str_t *s, const char *t)
{
    size_t n = strlen(t);
    assert_true(n < 24);
    s_printf(s, "%02x", 0x60 | (unsigned) n);
    s_put_hex(s, (const uint8_t *) t, n);
}

/* ================================================================ JSON → CBOR unit tests */

static cbor_item_t *s_json(const char *text, char *err, size_t cap)
{
    return router_json_to_cbor(text, strlen(text), err, cap);
}

/* JSON text → canonical CBOR hex. */
static void s_expect_cbor(const char *json, const char *want_hex)
{
    char err[256];
    cbor_item_t *item = s_json(json, err, sizeof err);
    if (!item)
        fail_msg("%s: %s", json, err);
    uint8_t *out = NULL;
    size_t n = 0;
    proto_cbor_reason_t why;
    assert_int_equal(proto_cbor_canon_bytes(item, 64, 1 << 20, &out, &n, &why), 0);
    s_str_t hex = {0};
    s_put_hex(&hex, out, n);
    if (strcmp(hex.p ? hex.p : "", want_hex) != 0)
        fail_msg("%s: got %s, want %s", json, hex.p, want_hex);
    free(hex.p);
    free(out);
    cbor_decref(&item);
}

static void s_expect_json_error(const char *json, const char *needle)
{
    char err[256] = "";
    cbor_item_t *item = s_json(json, err, sizeof err);
    if (item)
        fail_msg("%s: accepted", json);
    if (!strstr(err, needle))
        fail_msg("%s: error '%s' lacks '%s'", json, err, needle);
}

static void test_json_values(void **state)
{
    (void) state;
    s_expect_cbor("0", "00");
    s_expect_cbor("23", "17");
    s_expect_cbor("24", "1818");
    s_expect_cbor("-1", "20");
    s_expect_cbor("-0", "00");
    s_expect_cbor("18446744073709551615", "1bffffffffffffffff");
    s_expect_cbor("-18446744073709551616", "3bffffffffffffffff");
    s_expect_cbor("1.0", "f93c00");
    s_expect_cbor("-0.0", "f98000");
    s_expect_cbor("1e300", "fb7e37e43c8800759c");
    s_expect_cbor("100000.0", "fa47c35000");
    s_expect_cbor("\"\\u00fc\"", "62c3bc");
    s_expect_cbor("[true,false,null]", "83f5f4f6");
    s_expect_cbor("{\"bb\":1,\"a\":2,\"ccc\":3,\"aa\":4}", "a461610262616104626262016363636303");
    s_expect_cbor("{\"$bytes\":\"AAEC/w==\"}", "44000102ff");
}

static void test_json_errors(void **state)
{
    (void) state;
    s_expect_json_error("18446744073709551616", "out of range");
    s_expect_json_error("-18446744073709551617", "out of range");
    s_expect_json_error("1e400", "out of range");
    s_expect_json_error("{\"$bytes\":\"AAE\"}", "$bytes");
    s_expect_json_error("{\"$bytes\":7}", "$bytes");
    s_expect_json_error("[1,", "invalid JSON");
    s_expect_json_error("[1] [2]", "invalid JSON");
    s_expect_json_error("\"\xff\"", "invalid JSON");
    /* 33 nested arrays are one level too many; 32 are fine. */
    char deep[80];
    memset(deep, '[', 33);
    memset(deep + 33, ']', 33);
    deep[66] = '\0';
    s_expect_json_error(deep, "nested deeper than 32");
    memset(deep, '[', 32);
    memset(deep + 32, ']', 32);
    deep[64] = '\0';
    char err[256];
    cbor_item_t *ok = s_json(deep, err, sizeof err);
    assert_non_null(ok);
    cbor_decref(&ok);
}

/* ================================================================ envelope JSON */

static proto_envelope_t *s_from_json(const char *json, const s_key_t *from, char *err, size_t cap)
{
    proto_envelope_t *env = NULL;
    if (router_envelope_from_json(json, strlen(json), from->pk, &env, err, cap) != 0)
        return NULL;
    return env;
}

static void s_expect_env_error(const char *json, const char *needle)
{
    char err[256] = "";
    proto_envelope_t *env = s_from_json(json, &s_alice, err, sizeof err);
    if (env)
        fail_msg("%s: accepted", json);
    if (!strstr(err, needle))
        fail_msg("%s: error '%s' lacks '%s'", json, err, needle);
}

static void test_envelope_json_errors(void **state)
{
    (void) state;
    char buf[1024];
    s_expect_env_error("[]", "JSON object");
    s_expect_env_error("{\"kind\":{\"type\":\"message\",\"body\":\"x\"}}", "missing \"to\"");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\"}", s_bob.text);
    s_expect_env_error(buf, "missing \"kind\"");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":[]}", s_bob.text);
    s_expect_env_error(buf, "\"kind\" must be an object");
    s_expect_env_error("{\"to\":\"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\",\"kind\":{}}", "weak_key");
    s_expect_env_error("{\"to\":\"bob\",\"kind\":{}}", "no_prefix");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"},\"ttl\":5}", s_bob.text);
    s_expect_env_error(buf, "unknown key \"ttl\"");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"}}", s_bob.text,
             s_bob.text);
    s_expect_env_error(buf, "duplicate key \"to\"");
    snprintf(buf, sizeof buf, "{\"from\":\"%s\",\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"}}",
             s_bob.text, s_alice.text);
    s_expect_env_error(buf, "\"from\" is not this node's key");
    snprintf(buf, sizeof buf, "{\"id\":\"nope\",\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"}}",
             s_bob.text);
    s_expect_env_error(buf, "\"id\" is not a UUID");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"ack\",\"in_reply_to\":\"x\"}}", s_bob.text);
    s_expect_env_error(buf, "in_reply_to is not a UUID");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\",\"body\":\"y\"}}",
             s_bob.text);
    s_expect_env_error(buf, "duplicate_key");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"gossip\"}}", s_bob.text);
    s_expect_env_error(buf, "unknown_kind");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"message\"}}", s_bob.text);
    s_expect_env_error(buf, "missing_field");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\",\"handling_mode\":null}}",
             s_bob.text);
    s_expect_env_error(buf, "wrong_type");
}

/* JSON → envelope → JSON → envelope gives the same signable bytes, and the
 * JSON printed the second time is the same as the first. */
static void test_envelope_json_roundtrip(void **state)
{
    (void) state;
    char json[2048], err[256];
    snprintf(json, sizeof json,
             "{\"to\":\"%s\",\"kind\":{\"type\":\"response\",\"in_reply_to\":\"017f22e2-79b0-7cc3-98c4-dc0c0c07398f\","
             "\"status\":\"failed\",\"result\":{\"why\":\"nope\",\"raw\":{\"$bytes\":\"3q2+7w==\"},\"n\":[1,-1,0.5]}}}",
             s_bob.text);
    proto_envelope_t *a = s_from_json(json, &s_alice, err, sizeof err);
    if (!a)
        fail_msg("%s", err);
    assert_int_equal(proto_envelope_sign(a, s_alice.sk), 0);
    uint8_t irt[16];
    assert_int_equal(proto_envelope_in_reply_to(a, irt), 0);
    assert_int_equal(irt[0], 0x01);
    assert_int_equal(irt[15], 0x8f);
    char *text1 = NULL, *text2 = NULL;
    size_t n1 = 0, n2 = 0;
    proto_envelope_reason_t ok = PROTO_ENV_OK, bad = PROTO_ENV_BAD_SIGNATURE;
    assert_int_equal(router_envelope_to_json(a, &ok, 0, &text1, &n1), 0);
    assert_non_null(strstr(text1, "\"signature_valid\":true"));
    assert_non_null(strstr(text1, "{\"$bytes\":\"3q2+7w==\"}"));
    assert_non_null(strstr(text1, "\"in_reply_to\":\"017f22e2-79b0-7cc3-98c4-dc0c0c07398f\""));
    proto_envelope_t *b = s_from_json(text1, &s_alice, err, sizeof err);
    if (!b)
        fail_msg("%s", err);
    assert_int_equal(proto_envelope_sign(b, s_alice.sk), 0);
    size_t la = 0, lb = 0;
    const uint8_t *sa = proto_envelope_signable(a, &la), *sb = proto_envelope_signable(b, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(sa, sb, la);
    assert_int_equal(router_envelope_to_json(b, &bad, 1, &text2, &n2), 0);
    assert_non_null(strstr(text2, "\"signature_error\": \"bad_signature\""));
    free(text1);
    free(text2);
    proto_envelope_destroy(&a);
    proto_envelope_destroy(&b);
}

/* ================================================================ golden vectors: sources */

/* Every id is a v7 of 2026-01-01T00:00:00Z plus the vector's index in ms. */
#define S_EPOCH_MS UINT64_C(1767225600000)

static void s_vector_id(unsigned index, uint8_t tag, uint8_t id[16])
{
    uint8_t rand[10];
    for (int i = 0; i < 10; i++)
        rand[i] = (uint8_t) (tag * 16 + i);
    proto_uuid_v7_make(S_EPOCH_MS + index, rand, id);
}

typedef struct {
    const char *name;      /* vector name */
    int from_bob;          /* bob sends to alice instead of alice to bob */
    const char *kind_json; /* the kind object */
} s_source_t;

static const s_source_t s_sources[] = {
    {"message", 0, "{\"type\":\"message\",\"body\":\"hello\"}"},
    {"message_full", 0,
     "{\"type\":\"message\",\"body\":\"h\\u00e9llo, \\u4e16\\u754c\",\"blocks\":[{\"type\":\"text\",\"text\":\"see "
     "attached\"},{\"type\":\"image\",\"media_type\":\"image/png\",\"data\":{\"$bytes\":\"iVBORw0KGgo=\"}}],"
     "\"handling_mode\":\"steer\"}"},
    {"request", 0,
     "{\"type\":\"request\",\"intent\":\"review-pr\",\"params\":{\"pr\":42,\"repo\":\"kith\",\"draft\":false,"
     "\"labels\":[\"net\",\"sec\"],\"ratio\":0.25,\"big\":1.1,\"neg\":-1000000,\"none\":null,"
     "\"raw\":{\"$bytes\":\"AAEC/w==\"}},\"handling_mode\":\"queue\"}"},
    {"request_numbers", 0,
     "{\"type\":\"request\",\"intent\":\"numbers\",\"params\":[0,23,24,255,256,65535,65536,4294967295,4294967296,"
     "18446744073709551615,-1,-24,-25,-256,-257,-18446744073709551616,0.0,-0.0,1.0,1.5,65504.0,65505.0,100000.0,"
     "3.4028234663852886e38,3.402823466385289e38,1e300,5.960464477539063e-8,1e-7,0.1]}"},
    {"request_key_order", 0,
     "{\"type\":\"request\",\"intent\":\"sort\",\"params\":{\"bb\":1,\"a\":2,\"ccc\":3,\"aa\":4,\"b\":{\"z\":1,"
     "\"yy\":2,\"x\":3}}}"},
    {"response_completed", 1,
     "{\"type\":\"response\",\"in_reply_to\":\"019b76da-a802-7021-a223-242526272829\",\"status\":\"completed\","
     "\"result\":{\"approved\":true,\"comments\":[]}}"},
    {"response_accepted", 1,
     "{\"type\":\"response\",\"in_reply_to\":\"019b76da-a802-7021-a223-242526272829\",\"status\":\"accepted\","
     "\"result\":null}"},
    {"response_failed", 1,
     "{\"type\":\"response\",\"in_reply_to\":\"019b76da-a802-7021-a223-242526272829\",\"status\":\"failed\","
     "\"result\":{\"error\":\"timeout\"}}"},
    {"ack", 1, "{\"type\":\"ack\",\"in_reply_to\":\"019b76da-a800-7001-8203-040506070809\"}"},
    {"lifecycle", 0, "{\"type\":\"lifecycle\",\"kind\":\"peer_retired\",\"params\":{\"reason\":\"shutdown\"}}"},
    {"message_unknown_field", 0, "{\"type\":\"message\",\"body\":\"hi\",\"sender_taint\":\"clean\"}"},
};

#define S_NSOURCES (sizeof s_sources / sizeof s_sources[0])

static proto_envelope_t *s_build_source(unsigned index)
{
    const s_source_t *src = &s_sources[index];
    const s_key_t *from = src->from_bob ? &s_bob : &s_alice, *to = src->from_bob ? &s_alice : &s_bob;
    uint8_t id[16];
    char idtext[PROTO_UUID_TEXT_CAP], err[256];
    s_str_t json = {0};
    s_vector_id(index, (uint8_t) index, id);
    proto_uuid_format(id, idtext);
    s_printf(&json, "{\"id\":\"%s\",\"to\":\"%s\",\"kind\":%s}", idtext, to->text, src->kind_json);
    proto_envelope_t *env = s_from_json(json.p, from, err, sizeof err);
    if (!env)
        fail_msg("vector %s: %s", src->name, err);
    assert_int_equal(proto_envelope_sign(env, from->sk), 0);
    free(json.p);
    return env;
}

/* ================================================================ golden vectors: refusals */

/* Appends the frame (4-byte length + payload) for payload hex to s. */
static void s_put_frame_hex(s_str_t *s, const char *payload_hex)
{
    size_t n = strlen(payload_hex) / 2;
    s_printf(s, "%08zx%s", n, payload_hex);
}

/* The envelope map, canonical key order, around kind_hex with the given
 * sig (64 bytes) and fields; ids and keys are the vector keys'. */
static void s_put_envelope_hex(s_str_t *s, const uint8_t id[16], const uint8_t from[32], const uint8_t to[32],
                               const uint8_t sig[64], const char *kind_hex)
{
    s_printf(s, "a5");
    s_put_text_item(s, "id");
    s_printf(s, "50");
    s_put_hex(s, id, 16);
    s_put_text_item(s, "to");
    s_printf(s, "5820");
    s_put_hex(s, to, 32);
    s_put_text_item(s, "sig");
    s_printf(s, "5840");
    s_put_hex(s, sig, 64);
    s_put_text_item(s, "from");
    s_printf(s, "5820");
    s_put_hex(s, from, 32);
    s_put_text_item(s, "kind");
    s_printf(s, "%s", kind_hex);
}

/* Signs [id, from, to, kind] for a kind given as canonical hex. */
static void s_sign_kind_hex(const s_key_t *k, const uint8_t id[16], const uint8_t to[32], const char *kind_hex,
                            uint8_t sig[64])
{
    s_str_t sb = {0};
    s_printf(&sb, "8450");
    s_put_hex(&sb, id, 16);
    s_printf(&sb, "5820");
    s_put_hex(&sb, k->pk, 32);
    s_printf(&sb, "5820");
    s_put_hex(&sb, to, 32);
    s_printf(&sb, "%s", kind_hex);
    size_t n = 0;
    uint8_t *bytes = s_unhex(sb.p, &n);
    proto_ed25519_sign(k->sk, bytes, n, sig);
    free(bytes);
    free(sb.p);
}

/* An envelope whose signature is valid under libsodium's cofactorless check
 * but whose `from` is A = aB + T with T the point of order 2: a mixed-order
 * key. kith refuses it (weak_key); verifiers without the policy accept it.
 * The id is ground until H(R‖A‖M) is even, so that [h]T vanishes. */
static void s_put_mixed_order_frame(s_str_t *s, unsigned index)
{
    static const uint8_t order2[32] = {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
    uint8_t wide[64], a[32], ab[32], big_a[32];
    crypto_hash_sha512(wide, (const uint8_t *) "kith mixed-order test key", 25);
    crypto_core_ed25519_scalar_reduce(a, wide);
    assert_int_equal(crypto_scalarmult_ed25519_base_noclamp(ab, a), 0);
    assert_int_equal(crypto_core_ed25519_add(big_a, ab, order2), 0);
    assert_int_equal(proto_pubkey_check(big_a), -1);

    for (unsigned attempt = 0; attempt < 256; attempt++) {
        uint8_t id[16], r[32], big_r[32], h[32], ha[32], sig[64];
        s_vector_id(index, (uint8_t) attempt, id);
        cbor_item_t *kind = proto_kind_message("from a mixed-order key", 22, NULL, PROTO_HANDLING_NONE);
        proto_envelope_reason_t why;
        proto_envelope_t *env = proto_envelope_new(id, big_a, s_bob.pk, &kind, &why);
        assert_non_null(env);
        size_t mlen = 0;
        const uint8_t *m = proto_envelope_signable(env, &mlen);
        crypto_hash_sha512_state st;
        crypto_hash_sha512_init(&st);
        crypto_hash_sha512_update(&st, a, 32);
        crypto_hash_sha512_update(&st, m, mlen);
        crypto_hash_sha512_final(&st, wide);
        crypto_core_ed25519_scalar_reduce(r, wide);
        assert_int_equal(crypto_scalarmult_ed25519_base_noclamp(big_r, r), 0);
        crypto_hash_sha512_init(&st);
        crypto_hash_sha512_update(&st, big_r, 32);
        crypto_hash_sha512_update(&st, big_a, 32);
        crypto_hash_sha512_update(&st, m, mlen);
        crypto_hash_sha512_final(&st, wide);
        crypto_core_ed25519_scalar_reduce(h, wide);
        crypto_core_ed25519_scalar_mul(ha, h, a);
        memcpy(sig, big_r, 32);
        crypto_core_ed25519_scalar_add(sig + 32, r, ha);
        int accepted = crypto_sign_verify_detached(sig, m, mlen, big_a) == 0;
        if (accepted) {
            s_str_t payload = {0};
            s_str_t kind_hex = {0};
            s_put_hex(&kind_hex, m + 86, mlen - 86);
            s_put_envelope_hex(&payload, id, big_a, s_bob.pk, sig, kind_hex.p);
            s_put_frame_hex(s, payload.p);
            free(payload.p);
            free(kind_hex.p);
            proto_envelope_destroy(&env);
            return;
        }
        proto_envelope_destroy(&env);
    }
    fail_msg("no even hash in 256 tries");
}

typedef struct {
    const char *name;                /* vector name */
    proto_envelope_reason_t reason;  /* what decoding or verifying must say */
    int sodium_accepts;              /* libsodium alone would accept the signature */
} s_refusal_t;

static const s_refusal_t s_refusals[] = {
    {"bad_signature", PROTO_ENV_BAD_SIGNATURE, 0},
    {"tampered_body", PROTO_ENV_BAD_SIGNATURE, 0},
    {"mixed_order_sender", PROTO_ENV_WEAK_KEY, 1},
    {"small_order_sender", PROTO_ENV_WEAK_KEY, 0},
    {"unknown_kind_signed", PROTO_ENV_UNKNOWN_KIND, 0},
    {"duplicate_key_in_kind", PROTO_ENV_DUPLICATE_KEY, 0},
    {"unknown_envelope_field", PROTO_ENV_UNKNOWN_FIELD, 0},
    {"missing_sig", PROTO_ENV_MISSING_FIELD, 0},
    {"short_id", PROTO_ENV_BAD_LENGTH, 0},
    {"indefinite_kind", PROTO_ENV_INDEFINITE_LENGTH, 0},
    {"too_deep", PROTO_ENV_TOO_DEEP, 0},
    {"non_text_key", PROTO_ENV_NON_TEXT_KEY, 0},
    {"optional_field_null", PROTO_ENV_WRONG_TYPE, 0},
    {"bad_handling_mode", PROTO_ENV_BAD_VALUE, 0},
    {"tag_in_params", PROTO_ENV_UNSUPPORTED_TYPE, 0},
    {"trailing_bytes", PROTO_ENV_TRAILING_BYTES, 0},
    {"truncated", PROTO_ENV_TRUNCATED, 0},
    {"oversize_header", PROTO_ENV_OVERSIZE, 0},
};

#define S_NREFUSALS (sizeof s_refusals / sizeof s_refusals[0])

/* Hex of a message kind {type, body, extra…}: canonical order. */
static const char *s_msg_kind_hex(s_str_t *s, const char *extra_hex, unsigned extra_pairs)
{
    s_printf(s, "%02x", 0xa2 + extra_pairs);
    s_put_text_item(s, "body");
    s_put_text_item(s, "hi");
    s_put_text_item(s, "type");
    s_put_text_item(s, "message");
    s_printf(s, "%s", extra_hex ? extra_hex : "");
    return s->p;
}

/* Writes the frame hex of refusal `i` into s. */
static void s_put_refusal(s_str_t *s, size_t i)
{
    const char *name = s_refusals[i].name;
    unsigned index = 100 + (unsigned) i;
    uint8_t id[16], zero_sig[64] = {0};
    s_vector_id(index, 0, id);
    s_str_t kind = {0}, payload = {0};

    if (!strcmp(name, "bad_signature") || !strcmp(name, "tampered_body") || !strcmp(name, "trailing_bytes") ||
        !strcmp(name, "truncated")) {
        proto_envelope_t *env = s_build_source(0);
        uint8_t *f = NULL;
        size_t n = 0;
        assert_int_equal(proto_envelope_encode(env, &f, &n), 0);
        if (!strcmp(name, "bad_signature"))
            f[64] ^= 0x01; /* first signature byte */
        if (!strcmp(name, "tampered_body")) {
            uint8_t *body = memmem(f, n, "hello", 5);
            assert_non_null(body);
            body[4] = 'O'; /* "hellO" */
        }
        s_put_hex(&payload, f, n);
        if (!strcmp(name, "trailing_bytes"))
            s_printf(&payload, "00");
        if (!strcmp(name, "truncated")) {
            payload.len -= 2; /* the last byte */
            payload.p[payload.len] = '\0';
        }
        free(f);
        proto_envelope_destroy(&env);
    } else if (!strcmp(name, "mixed_order_sender")) {
        s_put_mixed_order_frame(s, index);
        return;
    } else if (!strcmp(name, "oversize_header")) {
        s_printf(s, "%08x", PROTO_ENVELOPE_MAX + 1);
        return;
    } else if (!strcmp(name, "small_order_sender")) {
        static const uint8_t identity[32] = {1};
        s_put_envelope_hex(&payload, id, identity, s_bob.pk, zero_sig, s_msg_kind_hex(&kind, NULL, 0));
    } else if (!strcmp(name, "unknown_kind_signed")) {
        uint8_t sig[64];
        s_printf(&kind, "a2");
        s_put_text_item(&kind, "body");
        s_put_text_item(&kind, "hi");
        s_put_text_item(&kind, "type");
        s_put_text_item(&kind, "gossip");
        s_sign_kind_hex(&s_alice, id, s_bob.pk, kind.p, sig);
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, sig, kind.p);
    } else if (!strcmp(name, "duplicate_key_in_kind")) {
        s_str_t extra = {0};
        s_put_text_item(&extra, "body");
        s_put_text_item(&extra, "ho");
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, s_msg_kind_hex(&kind, extra.p, 1));
        free(extra.p);
    } else if (!strcmp(name, "unknown_envelope_field")) {
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, s_msg_kind_hex(&kind, NULL, 0));
        payload.p[1] = '6'; /* a5 → a6 */
        s_put_text_item(&payload, "ttl");
        s_printf(&payload, "183c");
    } else if (!strcmp(name, "missing_sig")) {
        s_printf(&payload, "a4");
        s_put_text_item(&payload, "id");
        s_printf(&payload, "50");
        s_put_hex(&payload, id, 16);
        s_put_text_item(&payload, "to");
        s_printf(&payload, "5820");
        s_put_hex(&payload, s_bob.pk, 32);
        s_put_text_item(&payload, "from");
        s_printf(&payload, "5820");
        s_put_hex(&payload, s_alice.pk, 32);
        s_put_text_item(&payload, "kind");
        s_printf(&payload, "%s", s_msg_kind_hex(&kind, NULL, 0));
    } else if (!strcmp(name, "short_id")) {
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, s_msg_kind_hex(&kind, NULL, 0));
        /* "id" 50 <16> → 4f <15>: drop the last id byte. */
        char *at = strstr(payload.p, "626964") + 6;
        at[0] = '4';
        at[1] = 'f';
        memmove(at + 2 + 30, at + 2 + 32, strlen(at + 2 + 32) + 1);
        payload.len -= 2;
    } else if (!strcmp(name, "indefinite_kind")) {
        s_printf(&kind, "bf");
        s_put_text_item(&kind, "type");
        s_put_text_item(&kind, "message");
        s_put_text_item(&kind, "body");
        s_put_text_item(&kind, "hi");
        s_printf(&kind, "ff");
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, kind.p);
    } else if (!strcmp(name, "too_deep")) {
        /* params holds 30 nested arrays: the innermost 0 is at level 33. */
        s_printf(&kind, "a3");
        s_put_text_item(&kind, "type");
        s_put_text_item(&kind, "request");
        s_put_text_item(&kind, "intent");
        s_put_text_item(&kind, "x");
        s_put_text_item(&kind, "params");
        for (int d = 0; d < 30; d++)
            s_printf(&kind, "81");
        s_printf(&kind, "00");
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, kind.p);
    } else if (!strcmp(name, "non_text_key")) {
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, s_msg_kind_hex(&kind, "0102", 1));
    } else if (!strcmp(name, "optional_field_null")) {
        s_str_t extra = {0};
        s_put_text_item(&extra, "handling_mode");
        s_printf(&extra, "f6");
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, s_msg_kind_hex(&kind, extra.p, 1));
        free(extra.p);
    } else if (!strcmp(name, "bad_handling_mode")) {
        s_str_t extra = {0};
        s_put_text_item(&extra, "handling_mode");
        s_put_text_item(&extra, "later");
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, s_msg_kind_hex(&kind, extra.p, 1));
        free(extra.p);
    } else if (!strcmp(name, "tag_in_params")) {
        s_printf(&kind, "a3");
        s_put_text_item(&kind, "type");
        s_put_text_item(&kind, "request");
        s_put_text_item(&kind, "intent");
        s_put_text_item(&kind, "x");
        s_put_text_item(&kind, "params");
        s_printf(&kind, "c11a6955b900");
        s_put_envelope_hex(&payload, id, s_alice.pk, s_bob.pk, zero_sig, kind.p);
    } else {
        fail_msg("no builder for %s", name);
    }
    s_put_frame_hex(s, payload.p);
    free(payload.p);
    free(kind.p);
}

/* ================================================================ golden vectors: accepted, not canonical */

/* What a Meerkat peer (serde + ciborium) would send: envelope keys in struct
 * order (id, from, to, kind, sig), `type` first in kind, and here an
 * unknown field with a four-byte integer and a binary64 float. kith accepts
 * it and re-encodes it canonically. */
static void s_put_serde_order(s_str_t *frame, s_str_t *canonical)
{
    uint8_t id[16], sig[64];
    s_vector_id(200, 0, id);
    s_str_t kind = {0}, payload = {0};
    s_printf(&kind, "a4");
    s_put_text_item(&kind, "type");
    s_put_text_item(&kind, "message");
    s_put_text_item(&kind, "body");
    s_put_text_item(&kind, "from a serde peer");
    s_put_text_item(&kind, "n");
    s_printf(&kind, "1a00000005");
    s_put_text_item(&kind, "f");
    s_printf(&kind, "fb3ff8000000000000");

    /* The signature covers the canonical form, whatever order was sent. */
    size_t kn = 0;
    uint8_t *kb = s_unhex(kind.p, &kn);
    proto_cbor_reason_t cr;
    static const proto_cbor_limits_t lim = {.max_depth = 31, .allow_indefinite = 0};
    cbor_item_t *item = proto_cbor_load(kb, kn, &lim, &cr);
    assert_non_null(item);
    uint8_t *canon_kind = NULL;
    size_t canon_len = 0;
    assert_int_equal(proto_cbor_canon_bytes(item, 31, 1 << 20, &canon_kind, &canon_len, &cr), 0);
    s_str_t canon_hex = {0};
    s_put_hex(&canon_hex, canon_kind, canon_len);
    s_sign_kind_hex(&s_alice, id, s_bob.pk, canon_hex.p, sig);

    s_printf(&payload, "a5");
    s_put_text_item(&payload, "id");
    s_printf(&payload, "50");
    s_put_hex(&payload, id, 16);
    s_put_text_item(&payload, "from");
    s_printf(&payload, "5820");
    s_put_hex(&payload, s_alice.pk, 32);
    s_put_text_item(&payload, "to");
    s_printf(&payload, "5820");
    s_put_hex(&payload, s_bob.pk, 32);
    s_put_text_item(&payload, "kind");
    s_printf(&payload, "%s", kind.p);
    s_put_text_item(&payload, "sig");
    s_printf(&payload, "5840");
    s_put_hex(&payload, sig, 64);
    s_put_frame_hex(frame, payload.p);

    s_str_t cpayload = {0};
    s_put_envelope_hex(&cpayload, id, s_alice.pk, s_bob.pk, sig, canon_hex.p);
    s_put_frame_hex(canonical, cpayload.p);

    cbor_decref(&item);
    free(kb);
    free(canon_kind);
    free(canon_hex.p);
    free(kind.p);
    free(payload.p);
    free(cpayload.p);
}

/* ================================================================ the file */

static void s_put_key_json(s_str_t *s, const s_key_t *k, int last)
{
    uint8_t pid[16];
    char pidtext[PROTO_UUID_TEXT_CAP];
    proto_peer_id(k->pk, pid);
    proto_uuid_format(pid, pidtext);
    s_printf(s, "    {\"name\": \"%s\", \"seed_hex\": \"", k->name);
    s_put_hex(s, k->seed, 32);
    s_printf(s, "\", \"pubkey\": \"%s\", \"peer_id\": \"%s\"}%s\n", k->text, pidtext, last ? "" : ",");
}

/* The whole vectors file, exactly as it is committed. */
static void s_generate(s_str_t *s)
{
    s_printf(s, "{\n"
                "  \"about\": \"kith signed-envelope vectors (DESIGN 8). Frames are a 4-byte big-endian length "
                "then the canonical CBOR envelope; signable_hex is the canonical CBOR of [id, from, to, kind], "
                "signed with Ed25519 by the key named in from. json is the kith JSON form (byte strings as "
                "{\\\"$bytes\\\": base64}, in_reply_to as a UUID). Keys come from the given 32-byte seeds. Generated "
                "by tests/envelope_json_test.c.\",\n");
    s_printf(s, "  \"keys\": [\n");
    s_put_key_json(s, &s_alice, 0);
    s_put_key_json(s, &s_bob, 1);
    s_printf(s, "  ],\n  \"valid\": [\n");
    for (unsigned i = 0; i < S_NSOURCES; i++) {
        proto_envelope_t *env = s_build_source(i);
        char *json = NULL;
        size_t jl = 0, sl = 0, fl = 0;
        uint8_t *frame = NULL;
        assert_int_equal(router_envelope_to_json(env, NULL, 0, &json, &jl), 0);
        assert_int_equal(proto_envelope_encode_frame(env, &frame, &fl), 0);
        const uint8_t *sb = proto_envelope_signable(env, &sl);
        s_printf(s, "    {\"name\": \"%s\", \"from\": \"%s\", \"to\": \"%s\",\n", s_sources[i].name,
                 s_sources[i].from_bob ? "bob" : "alice", s_sources[i].from_bob ? "alice" : "bob");
        s_printf(s, "     \"json\": %s,\n     \"signable_hex\": \"", json);
        s_put_hex(s, sb, sl);
        s_printf(s, "\",\n     \"frame_hex\": \"");
        s_put_hex(s, frame, fl);
        s_printf(s, "\"}%s\n", i + 1 < S_NSOURCES ? "," : "");
        free(json);
        free(frame);
        proto_envelope_destroy(&env);
    }
    s_str_t frame = {0}, canonical = {0};
    s_put_serde_order(&frame, &canonical);
    s_printf(s, "  ],\n  \"accepted_noncanonical\": [\n");
    s_printf(s, "    {\"name\": \"serde_field_order_wide_numbers\",\n     \"frame_hex\": \"%s\",\n", frame.p);
    s_printf(s, "     \"canonical_frame_hex\": \"%s\"}\n", canonical.p);
    free(frame.p);
    free(canonical.p);
    s_printf(s, "  ],\n  \"invalid\": [\n");
    for (size_t i = 0; i < S_NREFUSALS; i++) {
        s_str_t hex = {0};
        s_put_refusal(&hex, i);
        s_printf(s, "    {\"name\": \"%s\", \"reason\": \"%s\", \"wire_reason\": \"%s\", "
                    "\"libsodium_alone_accepts\": %s,\n     \"frame_hex\": \"%s\"}%s\n",
                 s_refusals[i].name, proto_envelope_reason_str(s_refusals[i].reason),
                 proto_wire_reason_str(proto_envelope_reason_wire(s_refusals[i].reason)),
                 s_refusals[i].sodium_accepts ? "true" : "false", hex.p, i + 1 < S_NREFUSALS ? "," : "");
        free(hex.p);
    }
    s_printf(s, "  ]\n}\n");
}

static char *s_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *p = malloc((size_t) n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t) n, f), (size_t) n);
    p[n] = '\0';
    fclose(f);
    *len = (size_t) n;
    return p;
}

/* The committed file is exactly what the code above generates. */
static void test_vectors_regenerate(void **state)
{
    (void) state;
    s_str_t gen = {0};
    s_generate(&gen);
    if (getenv("KITH_WRITE_VECTORS")) {
        FILE *f = fopen(VECTORS_PATH, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(gen.p, 1, gen.len, f), gen.len);
        fclose(f);
    }
    size_t len = 0;
    char *file = s_read_file(VECTORS_PATH, &len);
    if (!file)
        fail_msg("%s missing; run with KITH_WRITE_VECTORS=1", VECTORS_PATH);
    if (len != gen.len || memcmp(file, gen.p, len) != 0)
        fail_msg("%s differs from what the code generates", VECTORS_PATH);
    free(file);
    free(gen.p);
}

/* ---------------------------------------------------------------- checking each entry */

/* Writes a yajl tree back out as JSON (numbers keep their text). */
static void s_tree_gen(yajl_gen g, yajl_val v)
{
    if (YAJL_IS_OBJECT(v)) {
        yajl_gen_map_open(g);
        for (size_t i = 0; i < YAJL_GET_OBJECT(v)->len; i++) {
            const char *k = YAJL_GET_OBJECT(v)->keys[i];
            yajl_gen_string(g, (const unsigned char *) k, strlen(k));
            s_tree_gen(g, YAJL_GET_OBJECT(v)->values[i]);
        }
        yajl_gen_map_close(g);
    } else if (YAJL_IS_ARRAY(v)) {
        yajl_gen_array_open(g);
        for (size_t i = 0; i < YAJL_GET_ARRAY(v)->len; i++)
            s_tree_gen(g, YAJL_GET_ARRAY(v)->values[i]);
        yajl_gen_array_close(g);
    } else if (YAJL_IS_STRING(v)) {
        const char *str = YAJL_GET_STRING(v);
        yajl_gen_string(g, (const unsigned char *) str, strlen(str));
    } else if (YAJL_IS_NUMBER(v)) {
        const char *num = YAJL_GET_NUMBER(v);
        yajl_gen_number(g, num, strlen(num));
    } else if (YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v)) {
        yajl_gen_bool(g, YAJL_IS_TRUE(v));
    } else {
        yajl_gen_null(g);
    }
}

static const char *s_get_str(yajl_val obj, const char *key)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, path, yajl_t_string);
    assert_non_null(v);
    return YAJL_GET_STRING(v);
}

static yajl_val s_get(yajl_val obj, const char *key, yajl_type t)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, path, t);
    assert_non_null(v);
    return v;
}

static proto_envelope_t *s_decode_hex(const char *hex, proto_envelope_reason_t *why)
{
    size_t n = 0;
    uint8_t *frame = s_unhex(hex, &n);
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_decode_frame(frame, n, &env, why);
    free(frame);
    return rc == 0 ? env : NULL;
}

/* Every entry, read from the file, does what it says — independently of the
 * generator: valid frames verify and print their JSON, their JSON re-signs to
 * the same frame, non-canonical frames re-encode canonically, and each
 * refusal gives its reason. */
static void test_vectors_entries(void **state)
{
    (void) state;
    size_t len = 0;
    char *file = s_read_file(VECTORS_PATH, &len), err[256];
    assert_non_null(file);
    yajl_val root = yajl_tree_parse(file, err, sizeof err);
    if (!root)
        fail_msg("vectors: %s", err);

    yajl_val keys = s_get(root, "keys", yajl_t_array);
    assert_int_equal(YAJL_GET_ARRAY(keys)->len, 2);
    for (size_t i = 0; i < 2; i++) {
        yajl_val k = YAJL_GET_ARRAY(keys)->values[i];
        s_key_t *key = i == 0 ? &s_alice : &s_bob;
        assert_string_equal(s_get_str(k, "name"), key->name);
        assert_string_equal(s_get_str(k, "pubkey"), key->text);
        size_t n = 0;
        uint8_t *seed = s_unhex(s_get_str(k, "seed_hex"), &n);
        assert_memory_equal(seed, key->seed, 32);
        free(seed);
    }

    yajl_val valid = s_get(root, "valid", yajl_t_array);
    assert_int_equal(YAJL_GET_ARRAY(valid)->len, S_NSOURCES);
    for (size_t i = 0; i < YAJL_GET_ARRAY(valid)->len; i++) {
        yajl_val v = YAJL_GET_ARRAY(valid)->values[i];
        const s_key_t *from = !strcmp(s_get_str(v, "from"), "bob") ? &s_bob : &s_alice;
        proto_envelope_reason_t why;
        proto_envelope_t *env = s_decode_hex(s_get_str(v, "frame_hex"), &why);
        if (!env)
            fail_msg("%s: %s", s_get_str(v, "name"), proto_envelope_reason_str(why));
        assert_int_equal(proto_envelope_verify(env, &why), 0);
        size_t sl = 0;
        const uint8_t *sb = proto_envelope_signable(env, &sl);
        s_str_t hex = {0};
        s_put_hex(&hex, sb, sl);
        assert_string_equal(hex.p, s_get_str(v, "signable_hex"));
        free(hex.p);

        /* Its JSON, fed back in and signed by the same key, is the same frame. */
        yajl_gen g = yajl_gen_alloc(NULL);
        s_tree_gen(g, s_get(v, "json", yajl_t_object));
        const unsigned char *jt = NULL;
        size_t jl = 0;
        yajl_gen_get_buf(g, &jt, &jl);
        proto_envelope_t *again = NULL;
        if (router_envelope_from_json((const char *) jt, jl, from->pk, &again, err, sizeof err) != 0)
            fail_msg("%s: %s", s_get_str(v, "name"), err);
        assert_int_equal(proto_envelope_sign(again, from->sk), 0);
        uint8_t *frame = NULL;
        size_t fl = 0;
        assert_int_equal(proto_envelope_encode_frame(again, &frame, &fl), 0);
        s_str_t fhex = {0};
        s_put_hex(&fhex, frame, fl);
        assert_string_equal(fhex.p, s_get_str(v, "frame_hex"));
        /* And printing the decoded frame gives that JSON back. */
        char *printed = NULL;
        size_t pl = 0;
        assert_int_equal(router_envelope_to_json(env, NULL, 0, &printed, &pl), 0);
        assert_int_equal(pl, jl);
        assert_memory_equal(printed, jt, jl);
        free(printed);
        free(fhex.p);
        free(frame);
        yajl_gen_free(g);
        proto_envelope_destroy(&again);
        proto_envelope_destroy(&env);
    }

    yajl_val nonc = s_get(root, "accepted_noncanonical", yajl_t_array);
    for (size_t i = 0; i < YAJL_GET_ARRAY(nonc)->len; i++) {
        yajl_val v = YAJL_GET_ARRAY(nonc)->values[i];
        proto_envelope_reason_t why;
        proto_envelope_t *env = s_decode_hex(s_get_str(v, "frame_hex"), &why);
        assert_non_null(env);
        assert_int_equal(proto_envelope_verify(env, &why), 0);
        uint8_t *frame = NULL;
        size_t fl = 0;
        assert_int_equal(proto_envelope_encode_frame(env, &frame, &fl), 0);
        s_str_t fhex = {0};
        s_put_hex(&fhex, frame, fl);
        assert_string_equal(fhex.p, s_get_str(v, "canonical_frame_hex"));
        assert_string_not_equal(fhex.p, s_get_str(v, "frame_hex"));
        free(fhex.p);
        free(frame);
        proto_envelope_destroy(&env);
    }

    yajl_val invalid = s_get(root, "invalid", yajl_t_array);
    assert_int_equal(YAJL_GET_ARRAY(invalid)->len, S_NREFUSALS);
    for (size_t i = 0; i < YAJL_GET_ARRAY(invalid)->len; i++) {
        yajl_val v = YAJL_GET_ARRAY(invalid)->values[i];
        const char *name = s_get_str(v, "name");
        proto_envelope_reason_t why = PROTO_ENV_OK;
        proto_envelope_t *env = s_decode_hex(s_get_str(v, "frame_hex"), &why);
        if (env) {
            size_t sl = 0;
            const uint8_t *sb = proto_envelope_signable(env, &sl);
            int alone = crypto_sign_verify_detached(proto_envelope_sig(env), sb, sl, proto_envelope_from(env)) == 0;
            assert_int_equal(alone, YAJL_IS_TRUE(s_get(v, "libsodium_alone_accepts", yajl_t_any)));
            if (proto_envelope_verify(env, &why) == 0)
                fail_msg("%s: verifies", name);
            proto_envelope_destroy(&env);
        }
        if (strcmp(proto_envelope_reason_str(why), s_get_str(v, "reason")) != 0)
            fail_msg("%s: got %s, want %s", name, proto_envelope_reason_str(why), s_get_str(v, "reason"));
        assert_string_equal(proto_wire_reason_str(proto_envelope_reason_wire(why)), s_get_str(v, "wire_reason"));
    }
    yajl_tree_free(root);
    free(file);
}

/* ================================================================ refusals and bounds */

/* Bounds on the JSON text: its size, a number's length, the item count
 * (keys included), with the last accepted value beside each refusal. */
static void test_json_bounds(void **state)
{
    (void) state;
    char err[256] = "";
    /* ROUTER_JSON_MAX + 1 octets are refused before a byte is read. */
    size_t big = ROUTER_JSON_MAX + 1;
    char *text = malloc(big);
    assert_non_null(text);
    memset(text, ' ', big);
    text[0] = '0';
    assert_null(router_json_to_cbor(text, big, err, sizeof err));
    assert_string_equal(err, "JSON text larger than 4194304 bytes");
    cbor_item_t *ok = router_json_to_cbor(text, big - 1, err, sizeof err);
    assert_non_null(ok);
    cbor_decref(&ok);
    /* A number of 511 octets is read; one of 512 is not. */
    memset(text, '1', 512);
    text[512] = '\0';
    assert_null(router_json_to_cbor(text, 512, err, sizeof err));
    assert_string_equal(err, "number too long");
    text[0] = '0';
    text[1] = '.';
    ok = router_json_to_cbor(text, 511, err, sizeof err);
    assert_non_null(ok);
    cbor_decref(&ok);
    free(text);

    /* PROTO_ENVELOPE_ITEMS_MAX (131072) values: an array of 131071 zeros
     * is 131072 with itself; one zero more is refused when the array
     * closes, and a key past the bound is refused as it is read. */
    size_t n = 131072, cap = 2 * n + 32;
    text = malloc(cap);
    assert_non_null(text);
    size_t len = 0;
    text[len++] = '[';
    for (size_t i = 0; i < n - 1; i++) {
        text[len++] = '0';
        text[len++] = ',';
    }
    text[len - 1] = ']';
    ok = router_json_to_cbor(text, len, err, sizeof err);
    assert_non_null(ok);
    assert_int_equal(cbor_array_size(ok), n - 1);
    cbor_decref(&ok);
    text[len - 1] = ',';
    memcpy(text + len, "0]", 2);
    assert_null(router_json_to_cbor(text, len + 2, err, sizeof err));
    assert_string_equal(err, "more than 131072 values");
    memcpy(text + len, "0,{\"a\":0}]", 10);
    err[0] = 'x';
    assert_null(router_json_to_cbor(text, len + 10, err, sizeof err));
    assert_string_equal(err, "more than 131072 values");
    free(text);

    /* A refusal with a key waiting for its value frees the key (LSan). */
    s_expect_json_error("{\"a\":1e400}", "number 1e400 is out of range");
    s_expect_json_error("{\"a\":{\"b\":[1,{\"$bytes\":\"!\"}]}}", "\"$bytes\" must be a string");
    s_expect_json_error("{\"$bytes\":\"AAE=\"", "invalid JSON");
    s_expect_json_error("", "invalid JSON");
    s_expect_json_error("{\"a\" 1}", "invalid JSON");
    s_expect_json_error("[1,2,]", "invalid JSON");
    s_expect_json_error("NaN", "invalid JSON");
    /* No place for a reason: still refused, nothing written. */
    assert_null(router_json_to_cbor("[1,", 3, NULL, 0));
    assert_null(router_json_to_cbor("1e999", 5, NULL, 0));
    /* Underflow is not an error: the nearest float (0 or a subnormal). */
    s_expect_cbor("1e-400", "f90000");
    s_expect_cbor("-1e-400", "f98000");
    /* "$bytes" with another key beside it is an ordinary object. */
    s_expect_cbor("{\"$bytes\":\"AA==\",\"x\":1}", "a2617801662462797465736441413d3d");
    s_expect_cbor("{\"$bytes\":\"\"}", "40");
}

/* router_cbor_to_json on one item: the JSON text, or NULL when refused. */
static char *s_to_json(cbor_item_t *item)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    assert_non_null(g);
    char *out = NULL;
    if (router_cbor_to_json(g, item) == 0) {
        const unsigned char *buf;
        size_t len;
        assert_int_equal(yajl_gen_get_buf(g, &buf, &len), yajl_gen_status_ok);
        out = strndup((const char *) buf, len);
        assert_non_null(out);
    }
    yajl_gen_free(g);
    cbor_decref(&item);
    return out;
}

static void s_expect_to_json(cbor_item_t *item, const char *want)
{
    char *got = s_to_json(item);
    if (!got)
        fail_msg("refused, want %s", want);
    if (strcmp(got, want) != 0)
        fail_msg("got %s, want %s", got, want);
    free(got);
}

/* Refused as having no JSON form (not as out of memory), errno EINVAL. */
static void s_expect_no_json(cbor_item_t *item, const char *what)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    assert_non_null(g);
    errno = ENOMEM;
    int rc = router_cbor_to_json(g, item);
    int e = errno;
    yajl_gen_free(g);
    cbor_decref(&item);
    if (rc != ROUTER_JSON_NO_FORM || e != EINVAL)
        fail_msg("%s: returned %d errno %d, want ROUTER_JSON_NO_FORM and EINVAL", what, rc, e);
}

static cbor_item_t *s_map1(cbor_item_t *key, cbor_item_t *value)
{
    cbor_item_t *m = cbor_new_definite_map(1);
    assert_true(cbor_map_add(m, (struct cbor_pair){.key = cbor_move(key), .value = cbor_move(value)}));
    return m;
}

static cbor_item_t *s_arr2(cbor_item_t *a, cbor_item_t *b)
{
    cbor_item_t *arr = cbor_new_definite_array(2);
    assert_true(cbor_array_push(arr, cbor_move(a)));
    assert_true(cbor_array_push(arr, cbor_move(b)));
    return arr;
}

/* CBOR → JSON: golden text for each value form, and the items JSON
 * cannot carry refused, alone and nested. */
static void test_cbor_to_json(void **state)
{
    (void) state;
    s_expect_to_json(cbor_build_uint64(UINT64_MAX), "18446744073709551615");
    s_expect_to_json(cbor_build_negint64(UINT64_MAX), "-18446744073709551616");
    s_expect_to_json(cbor_build_negint8(0), "-1");
    s_expect_to_json(cbor_build_float8(0.1), "0.1");
    s_expect_to_json(cbor_build_float8(1e16), "1e+16");
    s_expect_to_json(cbor_build_float8(1e-5), "1e-05");
    s_expect_to_json(cbor_build_float8(100000.0), "100000.0");
    s_expect_to_json(cbor_build_float8(-0.0), "-0.0");
    s_expect_to_json(cbor_build_float8(5e-324), "5e-324");
    s_expect_to_json(cbor_build_float8(-1.7976931348623157e308), "-1.7976931348623157e+308");
    s_expect_to_json(cbor_build_float4(0.1f), "0.10000000149011612");
    s_expect_to_json(cbor_build_float2(1.5f), "1.5");
    s_expect_to_json(cbor_build_bool(true), "true");
    s_expect_to_json(cbor_build_bool(false), "false");
    s_expect_to_json(cbor_new_null(), "null");
    s_expect_to_json(cbor_build_bytestring((const uint8_t *) "\x00\x01\x02\xff", 4), "{\"$bytes\":\"AAEC/w==\"}");
    s_expect_to_json(cbor_build_bytestring(NULL, 0), "{\"$bytes\":\"\"}");
    s_expect_to_json(cbor_new_definite_map(0), "{}");
    s_expect_to_json(cbor_new_definite_array(0), "[]");
    char err[64];
    cbor_item_t *two = router_json_to_cbor("{\"$bytes\":1,\"x\":2}", 18, err, sizeof err);
    assert_non_null(two);
    s_expect_to_json(s_arr2(cbor_build_string("\xc3\xbc"), two), "[\"\xc3\xbc\",{\"x\":2,\"$bytes\":1}]");
    static const char unsorted[] = "{\"bb\":1,\"a\":2,\"ccc\":3,\"aa\":4}";
    cbor_item_t *sorted = router_json_to_cbor(unsorted, strlen(unsorted), err, sizeof err);
    assert_non_null(sorted);
    s_expect_to_json(sorted, "{\"a\":2,\"aa\":4,\"bb\":1,\"ccc\":3}");

    /* No JSON form: tags, undefined and other simple values, NaN and
     * infinities, indefinite strings, non-text keys, {"$bytes": x} alone
     * (it would read back as bytes), and any of them inside. */
    s_expect_no_json(cbor_build_tag(1, cbor_move(cbor_build_uint8(0))), "tag");
    s_expect_no_json(cbor_new_undef(), "undefined");
    s_expect_no_json(cbor_build_ctrl(16), "simple(16)");
    s_expect_no_json(cbor_build_float8(NAN), "NaN");
    s_expect_no_json(cbor_build_float4(INFINITY), "+inf");
    s_expect_no_json(cbor_build_float2(-INFINITY), "-inf");
    s_expect_no_json(cbor_new_indefinite_bytestring(), "indefinite bytes");
    s_expect_no_json(cbor_new_indefinite_string(), "indefinite text");
    s_expect_no_json(s_map1(cbor_build_uint8(1), cbor_build_uint8(1)), "integer key");
    s_expect_no_json(s_map1(cbor_new_indefinite_string(), cbor_build_uint8(1)), "indefinite key");
    s_expect_no_json(s_map1(cbor_build_string("$bytes"), cbor_build_string("AA==")), "a lone $bytes");
    s_expect_no_json(s_arr2(cbor_build_uint8(1), cbor_new_undef()), "undefined in an array");
    s_expect_no_json(s_map1(cbor_build_string("a"), s_arr2(cbor_new_null(), cbor_build_float8(NAN))),
                     "NaN in a map");
}

/* The kind alone, as the gateway and the tools print it: "type" first,
 * the rest in canonical order, in_reply_to as a UUID. */
static void test_kind_to_json(void **state)
{
    (void) state;
    static const uint8_t irt[16] = {0x01, 0x7f, 0x22, 0xe2, 0x79, 0xb0, 0x7c, 0xc3,
                                    0x98, 0xc4, 0xdc, 0x0c, 0x0c, 0x07, 0x39, 0x8f};
    cbor_item_t *res = cbor_build_string("ok");
    cbor_item_t *kinds[2] = {proto_kind_response(irt, PROTO_STATUS_COMPLETED, &res), proto_kind_ack(irt)};
    const char *want[2] = {
        "{\"type\":\"response\",\"result\":\"ok\",\"status\":\"completed\","
        "\"in_reply_to\":\"017f22e2-79b0-7cc3-98c4-dc0c0c07398f\"}",
        "{\"type\":\"ack\",\"in_reply_to\":\"017f22e2-79b0-7cc3-98c4-dc0c0c07398f\"}",
    };
    for (int i = 0; i < 2; i++) {
        proto_envelope_reason_t why;
        proto_envelope_t *env = proto_envelope_new(NULL, s_alice.pk, s_bob.pk, &kinds[i], &why);
        assert_non_null(env);
        yajl_gen g = yajl_gen_alloc(NULL);
        assert_int_equal(router_envelope_kind_to_json(g, env), 0);
        const unsigned char *buf;
        size_t len;
        assert_int_equal(yajl_gen_get_buf(g, &buf, &len), yajl_gen_status_ok);
        assert_int_equal(len, strlen(want[i]));
        assert_memory_equal(buf, want[i], len);
        yajl_gen_free(g);
        proto_envelope_destroy(&env);
    }
}

/* The kind of an envelope a non-kith peer sent with a lone {"$bytes": …}
 * map in it has no JSON form; out of memory is something else, and the
 * caller (kith_api.c's recv: skip the envelope or retry) must tell them
 * apart by the return alone. Every allocation failing in turn: a kind that
 * has a form fails only as ROUTER_JSON_NO_MEMORY (errno ENOMEM), one that
 * has none only as that or ROUTER_JSON_NO_FORM (errno EINVAL), never the
 * other way round. */
static void test_kind_to_json_no_form_vs_no_memory(void **state)
{
    (void) state;
    cbor_item_t *lone = cbor_new_definite_map(1);
    assert_true(cbor_map_add(lone, (struct cbor_pair){.key = cbor_move(cbor_build_string("$bytes")),
                                                      .value = cbor_move(cbor_build_string("AA=="))}));
    cbor_item_t *inner = cbor_new_definite_array(2);
    assert_true(cbor_array_push(inner, cbor_move(cbor_build_bytestring((const uint8_t *) "\1\2", 2))));
    assert_true(cbor_array_push(inner, cbor_move(cbor_build_string("x"))));
    cbor_item_t *params[2] = {s_map1(cbor_build_string("extra"), inner), s_map1(cbor_build_string("extra"), lone)};
    cbor_item_t *kinds[2] = {
        proto_kind_request("do", 2, &params[0], NULL, PROTO_HANDLING_NONE),
        proto_kind_request("do", 2, &params[1], NULL, PROTO_HANDLING_NONE),
    };
    assert_non_null(kinds[0]);
    assert_non_null(kinds[1]);
    for (int k = 0; k < 2; k++) {
        proto_envelope_reason_t why;
        proto_envelope_t *env = proto_envelope_new(NULL, s_alice.pk, s_bob.pk, &kinds[k], &why);
        assert_non_null(env);
        unsigned no_memory = 0, no_form = 0;
        long i;
        for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            yajl_gen g = yajl_gen_alloc(NULL);
            assert_non_null(g);
            errno = 0;
            alloc_fail_arm(i);
            int rc = router_envelope_kind_to_json(g, env);
            int e = errno;
            unsigned failed = alloc_fail_disarm();
            yajl_gen_free(g);
            if (rc == ROUTER_JSON_NO_MEMORY) {
                assert_true(failed > 0);
                assert_int_equal(e, ENOMEM);
                no_memory++;
                continue;
            }
            if (k == 0) {
                assert_int_equal(rc, 0);
            } else {
                assert_int_equal(rc, ROUTER_JSON_NO_FORM);
                assert_int_equal(e, EINVAL);
                no_form++;
            }
            if (!failed)
                break;
        }
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        assert_true(no_memory >= 1);  /* the kind's keys sorted at least */
        assert_int_equal(no_form, k); /* reached once, when nothing failed */
        proto_envelope_destroy(&env);
    }
}

/* The refusals of router_envelope_from_json not in
 * test_envelope_json_errors: fields of the wrong JSON type, a kind whose
 * type is missing or not text, a long unknown key cut in the message. */
static void test_envelope_json_refusals(void **state)
{
    (void) state;
    char buf[1024];
    s_expect_env_error("{\"to\":5,\"kind\":{\"type\":\"message\",\"body\":\"x\"}}", "\"to\" must be a string");
    snprintf(buf, sizeof buf, "{\"from\":[],\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"}}", s_bob.text);
    s_expect_env_error(buf, "\"from\" must be a string");
    snprintf(buf, sizeof buf, "{\"from\":\"ed25519:x\",\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"}}",
             s_bob.text);
    s_expect_env_error(buf, "\"from\" is not this node's key");
    snprintf(buf, sizeof buf, "{\"id\":7,\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"}}", s_bob.text);
    s_expect_env_error(buf, "\"id\" must be a string");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"in_reply_to\":\"017f22e2-79b0-7cc3-98c4-dc0c0c07398f\"}}",
             s_bob.text);
    s_expect_env_error(buf, "kind: missing_field");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":1,\"in_reply_to\":\"x\"}}", s_bob.text);
    s_expect_env_error(buf, "kind: wrong_type");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"ack\",\"in_reply_to\":{\"$bytes\":\"AAE=\"}}}",
             s_bob.text);
    s_expect_env_error(buf, "kind: bad_length");
    snprintf(buf, sizeof buf, "{\"to\":\"%s\",\"kind\":{\"type\":\"message\",\"body\":\"x\"},\"%0100d\":1}", s_bob.text,
             0);
    char err[256] = "";
    assert_null(s_from_json(buf, &s_alice, err, sizeof err));
    assert_string_equal(err, "unknown key \"0000000000000000000000000000000000000000000000000000000000000000\" "
                             "(expected id, from, to, kind)");
    s_expect_env_error("\"x\"", "the envelope must be a JSON object");
    s_expect_env_error("{\"$bytes\":\"AA==\"}", "the envelope must be a JSON object");
    s_expect_env_error("{", "invalid JSON");

    /* sig, signature_valid and signature_error are read and ignored; an
     * in_reply_to given as bytes is taken as bytes. */
    snprintf(buf, sizeof buf,
             "{\"sig\":1,\"signature_valid\":false,\"signature_error\":null,\"to\":\"%s\",\"kind\":{\"type\":\"ack\","
             "\"in_reply_to\":{\"$bytes\":\"AX8i4nmwfMOYxNwMDAc5jw==\"}}}",
             s_bob.text);
    proto_envelope_t *env = s_from_json(buf, &s_alice, err, sizeof err);
    if (!env)
        fail_msg("%s", err);
    uint8_t irt[16];
    assert_int_equal(proto_envelope_in_reply_to(env, irt), 0);
    assert_int_equal(irt[0], 0x01);
    assert_int_equal(irt[15], 0x8f);
    proto_envelope_destroy(&env);
}

/* Every allocation kith makes in a decode, an encode and a value print,
 * failing in turn: each run refuses as out of memory (never as the
 * input's fault) or succeeds, and leaks nothing (LSan). */
static void test_alloc_fail(void **state)
{
    (void) state;
    char json[1024];
    snprintf(json, sizeof json,
             "{\"id\":\"017f22e2-79b0-7cc3-98c4-dc0c0c07398f\",\"to\":\"%s\",\"kind\":{\"type\":\"response\","
             "\"in_reply_to\":\"017f22e2-79b0-7cc3-98c4-dc0c0c07398f\",\"status\":\"failed\",\"result\":{\"raw\":"
             "{\"$bytes\":\"3q2+7w==\"},\"n\":[1,-1,0.5,{\"$bytes\":\"\"}]}}}",
             s_bob.text);
    long i;
    unsigned decode_fails = 0, encode_fails = 0;
    for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        char err[256] = "";
        proto_envelope_t *env = NULL;
        alloc_fail_arm(i);
        int rc = router_envelope_from_json(json, strlen(json), s_alice.pk, &env, err, sizeof err);
        unsigned failed = alloc_fail_disarm();
        if (rc != 0) {
            assert_null(env);
            if (!strstr(err, "out of memory") && !strstr(err, "no_memory"))
                fail_msg("allocation %ld failing: refused as \"%s\"", i, err);
            decode_fails++;
            continue;
        }
        assert_non_null(env);
        proto_envelope_destroy(&env);
        if (!failed)
            break;
    }
    assert_true(i < ALLOC_FAIL_RUNS_MAX);
    assert_true(decode_fails >= 1); /* the "$bytes" buffers at least */

    proto_envelope_t *env = NULL;
    char err[256];
    assert_int_equal(router_envelope_from_json(json, strlen(json), s_alice.pk, &env, err, sizeof err), 0);
    assert_int_equal(proto_envelope_sign(env, s_alice.sk), 0);
    char *want = NULL;
    size_t want_len = 0;
    proto_envelope_reason_t bad = PROTO_ENV_BAD_SIGNATURE;
    assert_int_equal(router_envelope_to_json(env, &bad, 0, &want, &want_len), 0);
    for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        char *out = NULL;
        size_t len = 0;
        alloc_fail_arm(i);
        int rc = router_envelope_to_json(env, &bad, 0, &out, &len);
        unsigned failed = alloc_fail_disarm();
        if (rc != 0) {
            assert_null(out);
            assert_int_equal(rc, ROUTER_JSON_NO_MEMORY);
            encode_fails++;
            continue;
        }
        assert_int_equal(len, want_len);
        assert_string_equal(out, want);
        free(out);
        if (!failed)
            break;
    }
    assert_true(i < ALLOC_FAIL_RUNS_MAX);
    assert_true(encode_fails >= 3); /* maps sorted, bytes in base64, the copy out */
    free(want);
    proto_envelope_destroy(&env);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    s_key_init(&s_alice, 0xa1);
    s_key_init(&s_bob, 0xb0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_values),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_envelope_json_errors),
        cmocka_unit_test(test_envelope_json_roundtrip),
        cmocka_unit_test(test_vectors_regenerate),
        cmocka_unit_test(test_vectors_entries),
        cmocka_unit_test(test_json_bounds),
        cmocka_unit_test(test_cbor_to_json),
        cmocka_unit_test(test_kind_to_json),
        cmocka_unit_test(test_envelope_json_refusals),
        cmocka_unit_test(test_alloc_fail),
        cmocka_unit_test(test_kind_to_json_no_form_vs_no_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
