/* tests/envelope_test.c — signed envelopes: every kind round-trips, any
 * single-byte change to a signed frame is caught, key order and integer
 * widths never change what is signed, the ack fast path matches the general
 * one, and every rejection has its typed reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "proto/cbor_canon.h"
#include "proto/envelope.h"

/* ------------------------------------------------------------ keys */

static uint8_t s_alice_pk[32], s_alice_sk[64], s_bob_pk[32], s_bob_sk[64];

static void s_keys(void)
{
    uint8_t seed[32];
    memset(seed, 0xa1, sizeof seed);
    proto_ed25519_seed_keypair(seed, s_alice_pk, s_alice_sk);
    memset(seed, 0xb0, sizeof seed);
    proto_ed25519_seed_keypair(seed, s_bob_pk, s_bob_sk);
}

static const uint8_t s_id[16] = {0x01, 0x8f, 0x3c, 0x4a, 0x5b, 0x6c, 0x7d, 0x8e,
                                 0x9f, 0xa0, 0xb1, 0xc2, 0xd3, 0xe4, 0xf5, 0x06};

/* ------------------------------------------------------------ hex arena */

/* Hex strings made by the helpers below live here until s_arena_free. */
static char *s_arena[4096];
static size_t s_arena_n;

static char *s_keep(char *p)
{
    assert_non_null(p);
    assert_true(s_arena_n < sizeof s_arena / sizeof s_arena[0]);
    s_arena[s_arena_n++] = p;
    return p;
}

static void s_arena_free(void)
{
    while (s_arena_n)
        free(s_arena[--s_arena_n]);
}

/* Concatenates hex strings up to a NULL. */
static const char *s_cat(const char *first, ...)
{
    va_list ap;
    size_t n = 0;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        n += strlen(s);
    va_end(ap);
    char *out = s_keep(malloc(n + 1));
    out[0] = '\0';
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        strcat(out, s);
    va_end(ap);
    return out;
}

static const char *s_hex(const uint8_t *p, size_t n)
{
    char *out = s_keep(malloc(2 * n + 1));
    sodium_bin2hex(out, 2 * n + 1, p, n);
    return out;
}

/* A CBOR head of major type `major` with a small argument (< 256). */
static const char *s_head(unsigned major, size_t arg)
{
    uint8_t h[2];
    if (arg < 24) {
        h[0] = (uint8_t) (major << 5 | arg);
        return s_hex(h, 1);
    }
    assert_true(arg < 256);
    h[0] = (uint8_t) (major << 5 | 24);
    h[1] = (uint8_t) arg;
    return s_hex(h, 2);
}

/* A text string item. */
static const char *T(const char *s)
{
    return s_cat(s_head(3, strlen(s)), s_hex((const uint8_t *) s, strlen(s)), NULL);
}

/* A byte string item of n bytes all equal to b. */
static const char *B(size_t n, uint8_t b)
{
    uint8_t buf[256];
    assert_true(n <= sizeof buf);
    memset(buf, b, n);
    return s_cat(s_head(2, n), s_hex(buf, n), NULL);
}

static const char *s_pk_item(const uint8_t pk[32]) { return s_cat("5820", s_hex(pk, 32), NULL); }

/* A whole envelope map: `pairs` more key/value items after a head for n pairs. */
static const char *s_env5(const char *kind_hex)
{
    return s_cat("a5", T("id"), B(16, 0x11), T("from"), s_pk_item(s_alice_pk), T("to"), s_pk_item(s_bob_pk),
                 T("kind"), kind_hex, T("sig"), B(64, 0), NULL);
}

/* The same in canonical order (id, to, sig, from, kind), the head
 * proto_envelope_decode matches byte for byte before it reads the kind. */
static const char *s_env5c(const char *kind_hex)
{
    return s_cat("a5", T("id"), B(16, 0x11), T("to"), s_pk_item(s_bob_pk), T("sig"), B(64, 0), T("from"),
                 s_pk_item(s_alice_pk), T("kind"), kind_hex, NULL);
}

static const char *s_msg_kind(void) { return s_cat("a2", T("type"), T("message"), T("body"), T("hi"), NULL); }

static uint8_t *s_unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    uint8_t *out = malloc(n / 2 + 1);
    assert_non_null(out);
    assert_int_equal(sodium_hex2bin(out, n / 2 + 1, hex, n, NULL, len, NULL), 0);
    assert_int_equal(*len, n / 2);
    return out;
}

/* Decoding hex gives exactly `want`. */
static void s_expect_decode(const char *hex, proto_envelope_reason_t want, const char *what)
{
    size_t n = 0;
    uint8_t *p = s_unhex(hex, &n);
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t why = PROTO_ENV_OK;
    int rc = proto_envelope_decode(p, n, &env, &why);
    if ((rc == 0) != (want == PROTO_ENV_OK) || why != want)
        fail_msg("%s: got %s, want %s", what, proto_envelope_reason_str(why), proto_envelope_reason_str(want));
    /* The general path, without the canonical head's fast path, agrees. */
    proto_envelope_t *general = NULL;
    proto_envelope_reason_t gwhy = PROTO_ENV_OK;
    int grc = proto_envelope_decode_general(p, n, &general, &gwhy);
    if (grc != rc || gwhy != why)
        fail_msg("%s: the general path got %s", what, proto_envelope_reason_str(gwhy));
    proto_envelope_destroy(&general);
    if (rc == 0)
        assert_non_null(env);
    else
        assert_null(env);
    proto_envelope_destroy(&env);
    free(p);
}

/* An envelope around kind_hex decodes to `want` in either key order: the
 * canonical one (the fast path) and another (the general path). */
static void s_expect_kind(const char *kind_hex, proto_envelope_reason_t want, const char *what)
{
    s_expect_decode(s_env5(kind_hex), want, what);
    s_expect_decode(s_env5c(kind_hex), want, what);
}

/* ------------------------------------------------------------ building blocks */

static cbor_item_t *s_str(const char *s) { return cbor_build_stringn(s, strlen(s)); }

/* {"pr": 42, "neg": -7, "ratio": 0.5, "big": 1.1, "ok": true, "none": null,
 *  "raw": h'00ff', "list": ["a", 1, {"x": false}]} */
static cbor_item_t *s_params(void)
{
    cbor_item_t *m = cbor_new_definite_map(8), *list = cbor_new_definite_array(3), *inner = cbor_new_definite_map(1);
    static const uint8_t raw[2] = {0x00, 0xff};
    assert_true(cbor_map_add(inner, (struct cbor_pair){cbor_move(s_str("x")), cbor_move(cbor_build_bool(false))}));
    assert_true(cbor_array_push(list, cbor_move(s_str("a"))));
    assert_true(cbor_array_push(list, cbor_move(cbor_build_uint8(1))));
    assert_true(cbor_array_push(list, cbor_move(inner)));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("pr")), cbor_move(cbor_build_uint32(42))}));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("neg")), cbor_move(cbor_build_negint8(6))}));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("ratio")), cbor_move(cbor_build_float8(0.5))}));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("big")), cbor_move(cbor_build_float8(1.1))}));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("ok")), cbor_move(cbor_build_bool(true))}));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("none")), cbor_move(cbor_new_null())}));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("raw")), cbor_move(cbor_build_bytestring(raw, 2))}));
    assert_true(cbor_map_add(m, (struct cbor_pair){cbor_move(s_str("list")), cbor_move(list)}));
    return m;
}

static cbor_item_t *s_blocks(void)
{
    cbor_item_t *blocks = cbor_new_definite_array(1), *block = cbor_new_definite_map(2);
    assert_true(cbor_map_add(block, (struct cbor_pair){cbor_move(s_str("type")), cbor_move(s_str("text"))}));
    assert_true(cbor_map_add(block, (struct cbor_pair){cbor_move(s_str("text")), cbor_move(s_str("see attached"))}));
    assert_true(cbor_array_push(blocks, cbor_move(block)));
    return blocks;
}

/* A signed envelope around kind (taken), from alice to bob. */
static proto_envelope_t *s_signed(cbor_item_t *kind)
{
    proto_envelope_reason_t why = PROTO_ENV_NO_MEMORY;
    assert_non_null(kind);
    proto_envelope_t *env = proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why);
    if (!env)
        fail_msg("new: %s", proto_envelope_reason_str(why));
    assert_null(kind);
    assert_int_equal(proto_envelope_sign(env, s_alice_sk), 0);
    return env;
}

/* Encodes env as a frame, decodes it, verifies it, and checks that the copy
 * re-encodes to the same bytes with the same signable bytes. Returns the copy. */
static proto_envelope_t *s_roundtrip(const proto_envelope_t *env)
{
    uint8_t *frame = NULL, *again = NULL;
    size_t frame_len = 0, again_len = 0, s1 = 0, s2 = 0;
    proto_envelope_t *copy = NULL;
    proto_envelope_reason_t why = PROTO_ENV_NO_MEMORY;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, &frame_len), 0);
    if (proto_envelope_decode_frame(frame, frame_len, &copy, &why) != 0)
        fail_msg("decode: %s", proto_envelope_reason_str(why));
    assert_int_equal(proto_envelope_verify(copy, &why), 0);
    assert_int_equal(why, PROTO_ENV_OK);
    assert_int_equal(proto_envelope_encode_frame(copy, &again, &again_len), 0);
    assert_int_equal(again_len, frame_len);
    assert_memory_equal(again, frame, frame_len);
    const uint8_t *a = proto_envelope_signable(env, &s1), *b = proto_envelope_signable(copy, &s2);
    assert_int_equal(s1, s2);
    assert_memory_equal(a, b, s1);
    assert_memory_equal(proto_envelope_id(copy), s_id, 16);
    assert_memory_equal(proto_envelope_from(copy), s_alice_pk, 32);
    assert_memory_equal(proto_envelope_to(copy), s_bob_pk, 32);
    assert_memory_equal(proto_envelope_sig(copy), proto_envelope_sig(env), 64);
    assert_int_equal(proto_envelope_kind(copy), proto_envelope_kind(env));
    free(frame);
    free(again);
    return copy;
}

/* ------------------------------------------------------------ round trips */

static void test_message_roundtrip(void **state)
{
    (void) state;
    proto_envelope_t *env = s_signed(proto_kind_message("hi", 2, NULL, PROTO_HANDLING_NONE));
    proto_envelope_t *copy = s_roundtrip(env);
    const char *body = NULL;
    size_t body_len = 0;
    assert_int_equal(proto_envelope_kind(copy), PROTO_KIND_MESSAGE);
    assert_int_equal(proto_envelope_text(copy, "body", &body, &body_len), 0);
    assert_int_equal(body_len, 2);
    assert_memory_equal(body, "hi", 2);
    assert_int_equal(proto_envelope_handling(copy), PROTO_HANDLING_NONE);
    assert_null(proto_envelope_field(copy, "blocks"));
    assert_null(proto_envelope_field(copy, "handling_mode")); /* omitted, not null */
    uint8_t irt[16];
    assert_int_equal(proto_envelope_in_reply_to(copy, irt), -1);
    assert_int_equal(proto_envelope_status(copy), PROTO_STATUS_NONE);
    /* The signable bytes are exactly [id, from, to, {"body":"hi","type":"message"}]. */
    size_t n = 0;
    const uint8_t *sb = proto_envelope_signable(copy, &n);
    const char *expect = s_cat("8450", s_hex(s_id, 16), s_pk_item(s_alice_pk), s_pk_item(s_bob_pk), "a2",
                               T("body"), T("hi"), T("type"), T("message"), NULL);
    assert_string_equal(s_hex(sb, n), expect);
    proto_envelope_destroy(&copy);
    proto_envelope_destroy(&env);
    proto_envelope_destroy(&env); /* idempotent */
    s_arena_free();
}

static void test_message_full_roundtrip(void **state)
{
    (void) state;
    cbor_item_t *blocks = s_blocks();
    proto_envelope_t *env = s_signed(proto_kind_message("hello \xc3\xbc", 8, &blocks, PROTO_HANDLING_STEER));
    assert_null(blocks);
    proto_envelope_t *copy = s_roundtrip(env);
    assert_int_equal(proto_envelope_handling(copy), PROTO_HANDLING_STEER);
    const cbor_item_t *b = proto_envelope_field(copy, "blocks");
    assert_non_null(b);
    assert_true(cbor_isa_array(b));
    assert_int_equal(cbor_array_size(b), 1);
    proto_envelope_destroy(&copy);
    proto_envelope_destroy(&env);
}

static void test_request_roundtrip(void **state)
{
    (void) state;
    cbor_item_t *params = s_params(), *blocks = s_blocks();
    proto_envelope_t *env = s_signed(proto_kind_request("review-pr", 9, &params, &blocks, PROTO_HANDLING_QUEUE));
    proto_envelope_t *copy = s_roundtrip(env);
    const char *intent = NULL;
    size_t n = 0;
    assert_int_equal(proto_envelope_text(copy, "intent", &intent, &n), 0);
    assert_int_equal(n, 9);
    assert_memory_equal(intent, "review-pr", 9);
    assert_int_equal(proto_envelope_handling(copy), PROTO_HANDLING_QUEUE);
    const cbor_item_t *p = proto_envelope_field(copy, "params");
    assert_true(cbor_isa_map(p));
    assert_int_equal(cbor_map_size(p), 8);
    proto_envelope_destroy(&copy);
    proto_envelope_destroy(&env);
}

static void test_response_roundtrip(void **state)
{
    (void) state;
    static const proto_status_t statuses[] = {PROTO_STATUS_ACCEPTED, PROTO_STATUS_COMPLETED, PROTO_STATUS_FAILED};
    static const uint8_t irt[16] = {0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x70, 0x11,
                                    0x82, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99};
    for (size_t i = 0; i < 3; i++) {
        cbor_item_t *result = i == 2 ? cbor_new_null() : s_params();
        proto_envelope_t *env = s_signed(proto_kind_response(irt, statuses[i], &result));
        proto_envelope_t *copy = s_roundtrip(env);
        uint8_t got[16];
        assert_int_equal(proto_envelope_in_reply_to(copy, got), 0);
        assert_memory_equal(got, irt, 16);
        assert_int_equal(proto_envelope_status(copy), statuses[i]);
        proto_envelope_destroy(&copy);
        proto_envelope_destroy(&env);
    }
}

static void test_ack_and_lifecycle_roundtrip(void **state)
{
    (void) state;
    proto_envelope_t *env = s_signed(proto_kind_ack(s_id));
    proto_envelope_t *copy = s_roundtrip(env);
    uint8_t got[16];
    assert_int_equal(proto_envelope_kind(copy), PROTO_KIND_ACK);
    assert_int_equal(proto_envelope_in_reply_to(copy, got), 0);
    assert_memory_equal(got, s_id, 16);
    proto_envelope_destroy(&copy);
    proto_envelope_destroy(&env);

    cbor_item_t *params = s_params();
    env = s_signed(proto_kind_lifecycle("peer_retired", 12, &params));
    copy = s_roundtrip(env);
    assert_int_equal(proto_envelope_kind(copy), PROTO_KIND_LIFECYCLE);
    const char *k = NULL;
    size_t n = 0;
    assert_int_equal(proto_envelope_text(copy, "kind", &k, &n), 0);
    assert_int_equal(n, 12);
    proto_envelope_destroy(&copy);
    proto_envelope_destroy(&env);
}

/* A fresh id when none is given: a v7 of about now. */
static void test_new_makes_v7_id(void **state)
{
    (void) state;
    cbor_item_t *kind = proto_kind_ack(s_id);
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(NULL, s_alice_pk, s_bob_pk, &kind, &why);
    assert_non_null(env);
    uint64_t ms = 0;
    assert_int_equal(proto_uuid_v7_ms(proto_envelope_id(env), &ms), 0);
    assert_true(ms > UINT64_C(1704067200000));
    /* Signing with a key that is not `from` is refused. */
    assert_int_equal(proto_envelope_sign(env, s_bob_sk), -1);
    proto_envelope_destroy(&env);
}

/* ------------------------------------------------------------ ack fast path */

static void test_ack_fast_path_matches(void **state)
{
    (void) state;
    uint8_t fast[PROTO_ACK_FRAME_LEN];
    static const uint8_t irt[16] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
    proto_envelope_ack_frame(s_bob_sk, s_alice_pk, irt, s_id, fast);

    cbor_item_t *kind = proto_kind_ack(irt);
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(s_id, s_bob_pk, s_alice_pk, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, s_bob_sk), 0);
    uint8_t *slow = NULL;
    size_t slow_len = 0;
    assert_int_equal(proto_envelope_encode_frame(env, &slow, &slow_len), 0);
    assert_int_equal(slow_len, PROTO_ACK_FRAME_LEN);
    assert_memory_equal(fast, slow, PROTO_ACK_FRAME_LEN);
    free(slow);
    proto_envelope_destroy(&env);

    /* With a fresh id it still decodes and verifies. */
    proto_envelope_ack_frame(s_bob_sk, s_alice_pk, irt, NULL, fast);
    assert_int_equal(proto_envelope_decode_frame(fast, sizeof fast, &env, &why), 0);
    assert_int_equal(proto_envelope_verify(env, &why), 0);
    uint8_t got[16];
    assert_int_equal(proto_envelope_in_reply_to(env, got), 0);
    assert_memory_equal(got, irt, 16);
    proto_envelope_destroy(&env);
}

/* ------------------------------------------------------------ tampering */

/* Every single-byte change, with several masks, to a signed frame is refused
 * by decoding or by verification — never accepted as some other envelope. */
static void test_any_byte_flip_fails(void **state)
{
    (void) state;
    cbor_item_t *params = s_params(), *blocks = s_blocks();
    proto_envelope_t *env = s_signed(proto_kind_request("x", 1, &params, &blocks, PROTO_HANDLING_STEER));
    uint8_t *frame = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, &len), 0);
    static const uint8_t masks[] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff};
    size_t decode_fail = 0, verify_fail = 0;
    for (size_t i = 0; i < len; i++)
        for (size_t m = 0; m < sizeof masks; m++) {
            proto_envelope_t *copy = NULL;
            proto_envelope_reason_t why = PROTO_ENV_OK;
            frame[i] ^= masks[m];
            if (proto_envelope_decode_frame(frame, len, &copy, &why) != 0) {
                assert_int_not_equal(why, PROTO_ENV_OK);
                decode_fail++;
            } else {
                if (proto_envelope_verify(copy, &why) == 0)
                    fail_msg("byte %zu ^ %02x still verifies", i, masks[m]);
                verify_fail++;
                proto_envelope_destroy(&copy);
            }
            frame[i] ^= masks[m];
        }
    assert_int_equal(decode_fail + verify_fail, len * sizeof masks);
    assert_true(decode_fail > 0 && verify_fail > 0);
    free(frame);
    proto_envelope_destroy(&env);
}

/* Changing an unknown kind field breaks the signature: it is signed too. */
static void test_unknown_kind_fields_are_kept_and_signed(void **state)
{
    (void) state;
    cbor_item_t *kind = cbor_new_definite_map(3);
    assert_true(cbor_map_add(kind, (struct cbor_pair){cbor_move(s_str("type")), cbor_move(s_str("message"))}));
    assert_true(cbor_map_add(kind, (struct cbor_pair){cbor_move(s_str("body")), cbor_move(s_str("hi"))}));
    assert_true(cbor_map_add(kind, (struct cbor_pair){cbor_move(s_str("sender_taint")), cbor_move(s_str("clean"))}));
    proto_envelope_t *env = s_signed(kind);
    proto_envelope_t *copy = s_roundtrip(env);
    const char *t = NULL;
    size_t n = 0;
    assert_int_equal(proto_envelope_text(copy, "sender_taint", &t, &n), 0);
    assert_int_equal(n, 5);
    proto_envelope_destroy(&copy);

    uint8_t *frame = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_encode(env, &frame, &len), 0);
    uint8_t *hit = memmem(frame, len, "clean", 5);
    assert_non_null(hit);
    hit[0] = 'C';
    proto_envelope_reason_t why;
    assert_int_equal(proto_envelope_decode(frame, len, &copy, &why), 0);
    assert_int_equal(proto_envelope_verify(copy, &why), -1);
    assert_int_equal(why, PROTO_ENV_BAD_SIGNATURE);
    proto_envelope_destroy(&copy);
    free(frame);
    proto_envelope_destroy(&env);
}

/* ------------------------------------------------------------ sender's byte order */

/* The same envelope written with maps in another key order and integers
 * and floats in wider forms decodes to the same signable bytes, verifies,
 * and re-encodes to the canonical frame. */
static void test_key_order_and_widths_do_not_matter(void **state)
{
    (void) state;
    cbor_item_t *params = s_params();
    proto_envelope_t *env = s_signed(proto_kind_request("sum", 3, &params, NULL, PROTO_HANDLING_NONE));
    size_t sl = 0;
    const uint8_t *signable = proto_envelope_signable(env, &sl);
    uint8_t *canon = NULL;
    size_t canon_len = 0;
    assert_int_equal(proto_envelope_encode(env, &canon, &canon_len), 0);

    /* Rebuild by hand: envelope keys reversed, kind keys reversed, params
     * built with libcbor's own widths (42 as uint32, 0.5 as float8), then
     * serialized by libcbor, which keeps insertion order. */
    cbor_item_t *p2 = s_params();
    cbor_item_t *kind = cbor_new_definite_map(3);
    assert_true(cbor_map_add(kind, (struct cbor_pair){cbor_move(s_str("params")), cbor_move(p2)}));
    assert_true(cbor_map_add(kind, (struct cbor_pair){cbor_move(s_str("intent")), cbor_move(s_str("sum"))}));
    assert_true(cbor_map_add(kind, (struct cbor_pair){cbor_move(s_str("type")), cbor_move(s_str("request"))}));
    cbor_item_t *root = cbor_new_definite_map(5);
    assert_true(cbor_map_add(root, (struct cbor_pair){cbor_move(s_str("sig")),
                                                      cbor_move(cbor_build_bytestring(proto_envelope_sig(env), 64))}));
    assert_true(cbor_map_add(root, (struct cbor_pair){cbor_move(s_str("kind")), cbor_move(kind)}));
    assert_true(cbor_map_add(root, (struct cbor_pair){cbor_move(s_str("to")),
                                                      cbor_move(cbor_build_bytestring(s_bob_pk, 32))}));
    assert_true(cbor_map_add(root, (struct cbor_pair){cbor_move(s_str("from")),
                                                      cbor_move(cbor_build_bytestring(s_alice_pk, 32))}));
    assert_true(cbor_map_add(root, (struct cbor_pair){cbor_move(s_str("id")),
                                                      cbor_move(cbor_build_bytestring(s_id, 16))}));
    unsigned char *wire = NULL;
    size_t wire_cap = 0;
    size_t wire_len = cbor_serialize_alloc(root, &wire, &wire_cap);
    assert_true(wire_len > 0);
    cbor_decref(&root);
    assert_true(wire_len != canon_len || memcmp(wire, canon, canon_len) != 0);

    proto_envelope_t *copy = NULL;
    proto_envelope_reason_t why;
    assert_int_equal(proto_envelope_decode(wire, wire_len, &copy, &why), 0);
    assert_int_equal(proto_envelope_verify(copy, &why), 0);
    size_t cl = 0;
    const uint8_t *cs = proto_envelope_signable(copy, &cl);
    assert_int_equal(cl, sl);
    assert_memory_equal(cs, signable, sl);
    uint8_t *again = NULL;
    size_t again_len = 0;
    assert_int_equal(proto_envelope_encode(copy, &again, &again_len), 0);
    assert_int_equal(again_len, canon_len);
    assert_memory_equal(again, canon, canon_len);
    free(again);
    free(wire);
    free(canon);
    proto_envelope_destroy(&copy);
    proto_envelope_destroy(&env);
}

/* ------------------------------------------------------------ rejections */

static void test_reject_cbor_level(void **state)
{
    (void) state;
    const char *ok = s_env5(s_msg_kind());
    s_expect_decode(ok, PROTO_ENV_OK, "baseline");
    /* Truncated and trailing. */
    char *cut = s_keep(strdup(ok));
    cut[strlen(cut) - 2] = '\0';
    s_expect_decode(cut, PROTO_ENV_TRUNCATED, "truncated");
    s_expect_decode(s_cat(ok, "00", NULL), PROTO_ENV_TRAILING_BYTES, "trailing");
    s_expect_decode("", PROTO_ENV_TRUNCATED, "empty");
    /* Ill-formed inside: reserved additional info, two-byte simple value. */
    s_expect_kind(s_cat("a3", T("type"), T("message"), T("body"), T("hi"), T("x"), "1c", NULL),
                    PROTO_ENV_ILL_FORMED, "reserved ai");
    s_expect_kind(s_cat("a3", T("type"), T("message"), T("body"), T("hi"), T("x"), "f818", NULL),
                    PROTO_ENV_ILL_FORMED, "f818");
    /* Indefinite lengths: the envelope map, a body in chunks. */
    s_expect_decode(s_cat("bf", T("id"), B(16, 0x11), T("from"), s_pk_item(s_alice_pk), T("to"), s_pk_item(s_bob_pk),
                          T("kind"), s_msg_kind(), T("sig"), B(64, 0), "ff", NULL),
                    PROTO_ENV_INDEFINITE_LENGTH, "indefinite map");
    s_expect_kind(s_cat("a2", T("type"), T("message"), T("body"), "7f", T("h"), T("i"), "ff", NULL),
                    PROTO_ENV_INDEFINITE_LENGTH, "indefinite text");
    /* A claimed huge array. */
    s_expect_kind(s_cat("a3", T("type"), T("message"), T("body"), T("hi"), T("x"), "9bffffffffffffffff", NULL),
                    PROTO_ENV_TRUNCATED, "huge array");
    s_arena_free();
}

static void test_reject_oversize(void **state)
{
    (void) state;
    size_t n = PROTO_ENVELOPE_MAX + 1;
    uint8_t *big = calloc(1, n + PROTO_FRAME_HEADER_LEN);
    assert_non_null(big);
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t why;
    assert_int_equal(proto_envelope_decode(big, n, &env, &why), -1);
    assert_int_equal(why, PROTO_ENV_OVERSIZE);
    assert_int_equal(proto_wire_reason_str(proto_envelope_reason_wire(why))[0], 'o');
    /* A frame header claiming more than the limit is refused before reading. */
    big[0] = 0x00;
    big[1] = 0x10;
    big[2] = 0x00;
    big[3] = 0x01;
    assert_int_equal(proto_envelope_decode_frame(big, 8, &env, &why), -1);
    assert_int_equal(why, PROTO_ENV_OVERSIZE);
    big[1] = 0;
    big[3] = 9;
    assert_int_equal(proto_envelope_decode_frame(big, 8, &env, &why), -1);
    assert_int_equal(why, PROTO_ENV_TRUNCATED);
    big[3] = 1;
    assert_int_equal(proto_envelope_decode_frame(big, 8, &env, &why), -1);
    assert_int_equal(why, PROTO_ENV_TRAILING_BYTES);
    free(big);

    /* A body so large the envelope would pass 1 MiB cannot be made. */
    size_t body_len = PROTO_ENVELOPE_MAX;
    char *body = malloc(body_len);
    assert_non_null(body);
    memset(body, 'a', body_len);
    cbor_item_t *kind = proto_kind_message(body, body_len, NULL, PROTO_HANDLING_NONE);
    free(body);
    assert_null(proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why));
    assert_int_equal(why, PROTO_ENV_OVERSIZE);
}

/* Depth: envelope 1, kind 2, params 3, …: 29 nested arrays inside params put
 * the innermost integer at level 32 (accepted); 30 put it at 33. */
static void test_reject_depth(void **state)
{
    (void) state;
    char arrays[2 * 40 + 1];
    for (int depth = 29; depth <= 30; depth++) {
        arrays[0] = '\0';
        for (int i = 0; i < depth; i++)
            strcat(arrays, "81");
        const char *kind = s_cat("a3", T("type"), T("request"), T("intent"), T("x"), T("params"), arrays, "00", NULL);
        s_expect_kind(kind, depth == 29 ? PROTO_ENV_OK : PROTO_ENV_TOO_DEEP, "depth");
    }
    /* 100,000 levels are refused without recursion. */
    size_t deep = 100000;
    char *hex = s_keep(malloc(2 * deep + 3));
    for (size_t i = 0; i < deep; i++)
        memcpy(hex + 2 * i, "81", 2);
    memcpy(hex + 2 * deep, "00", 3);
    s_expect_kind(s_cat("a3", T("type"), T("request"), T("intent"), T("x"), T("params"), hex, NULL),
                    PROTO_ENV_TOO_DEEP, "very deep");
    s_arena_free();
}

/* An envelope of many tiny items is refused by count, not only by size. */
static void test_reject_item_count(void **state)
{
    (void) state;
    /* The envelope map, its keys, the four fixed values, the kind map, its
     * keys and values and the params array are 17 items: params of
     * ITEMS_MAX - 17 elements is the most that fits, one more is refused. */
    const size_t most = PROTO_ENVELOPE_ITEMS_MAX - 17;
    for (size_t n = most; n <= most + 1; n++) {
        size_t hexlen = 2 * (5 + n) + 1;
        char *arr = s_keep(malloc(hexlen));
        snprintf(arr, hexlen, "9a%08zx", n);
        for (size_t i = 0; i < n; i++)
            memcpy(arr + 10 + 2 * i, "00", 3);
        const char *kind = s_cat("a3", T("type"), T("request"), T("intent"), T("x"), T("params"), arr, NULL);
        s_expect_kind(kind, n == most ? PROTO_ENV_OK : PROTO_ENV_TOO_MANY_ITEMS, "item count");
        s_arena_free();
    }
    assert_int_equal(proto_envelope_reason_wire(PROTO_ENV_TOO_MANY_ITEMS), PROTO_WIRE_OVERSIZE);
    /* Built envelopes are held to the same count. */
    cbor_item_t *params = cbor_new_definite_array(140000);
    for (size_t i = 0; i < 140000; i++)
        assert_true(cbor_array_push(params, cbor_move(cbor_build_uint8(0))));
    cbor_item_t *kind = proto_kind_request("x", 1, &params, NULL, PROTO_HANDLING_NONE);
    proto_envelope_reason_t why;
    assert_null(proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why));
    assert_int_equal(why, PROTO_ENV_TOO_MANY_ITEMS);
}

static void test_reject_data_model(void **state)
{
    (void) state;
#define MSG_WITH(extra_kv) s_cat("a3", T("type"), T("message"), T("body"), T("hi"), extra_kv, NULL)
    s_expect_kind(MSG_WITH(s_cat(T("x"), "c100", NULL)), PROTO_ENV_UNSUPPORTED_TYPE, "tag");
    s_expect_kind(MSG_WITH(s_cat(T("x"), "f7", NULL)), PROTO_ENV_UNSUPPORTED_TYPE, "undefined");
    s_expect_kind(MSG_WITH(s_cat(T("x"), "f0", NULL)), PROTO_ENV_UNSUPPORTED_TYPE, "simple(16)");
    s_expect_kind(MSG_WITH(s_cat(T("x"), "f97e00", NULL)), PROTO_ENV_UNSUPPORTED_TYPE, "NaN");
    s_expect_kind(MSG_WITH(s_cat(T("x"), "fa7f800000", NULL)), PROTO_ENV_UNSUPPORTED_TYPE, "infinity");
    s_expect_kind(MSG_WITH(s_cat(T("x"), "f5", NULL)), PROTO_ENV_OK, "true");
    s_expect_kind(MSG_WITH(s_cat(T("x"), "fb3ff199999999999a", NULL)), PROTO_ENV_OK, "float");
    s_expect_kind(s_cat("a2", T("type"), T("message"), T("body"), "62c0af", NULL), PROTO_ENV_BAD_UTF8,
                    "overlong utf-8");
    s_expect_kind(MSG_WITH(s_cat("6178", "a10102", NULL)), PROTO_ENV_NON_TEXT_KEY, "int key in a value");
    s_expect_kind(MSG_WITH(s_cat("01", "02", NULL)), PROTO_ENV_NON_TEXT_KEY, "int key in kind");
    s_expect_kind(MSG_WITH(s_cat(B(1, 1), "02", NULL)), PROTO_ENV_NON_TEXT_KEY, "bytes key in kind");
    /* Duplicates: at the top, among known kind fields, among unknown kind
     * fields, and deep inside a value. */
    s_expect_decode(s_cat("a6", T("id"), B(16, 0x11), T("from"), s_pk_item(s_alice_pk), T("to"), s_pk_item(s_bob_pk),
                          T("kind"), s_msg_kind(), T("sig"), B(64, 0), T("id"), B(16, 0x12), NULL),
                    PROTO_ENV_DUPLICATE_KEY, "duplicate id");
    s_expect_kind(MSG_WITH(s_cat(T("body"), T("again"), NULL)), PROTO_ENV_DUPLICATE_KEY, "duplicate body");
    s_expect_kind(MSG_WITH(s_cat(T("type"), T("message"), NULL)), PROTO_ENV_DUPLICATE_KEY, "duplicate type");
    s_expect_kind(s_cat("a4", T("type"), T("message"), T("body"), T("hi"), T("x"), "01", T("x"), "02", NULL),
                    PROTO_ENV_DUPLICATE_KEY, "duplicate unknown field");
    s_expect_kind(MSG_WITH(s_cat(T("x"), "8181a2", T("k"), "01", T("k"), "02", NULL)), PROTO_ENV_DUPLICATE_KEY,
                    "duplicate deep");
#undef MSG_WITH
    s_arena_free();
}

static void test_reject_schema(void **state)
{
    (void) state;
    const char *id = s_cat(T("id"), B(16, 0x11), NULL), *from = s_cat(T("from"), s_pk_item(s_alice_pk), NULL),
               *to = s_cat(T("to"), s_pk_item(s_bob_pk), NULL), *kind = s_cat(T("kind"), s_msg_kind(), NULL),
               *sig = s_cat(T("sig"), B(64, 0), NULL);
    /* Envelope level. */
    s_expect_decode("80", PROTO_ENV_WRONG_TYPE, "array, not map");
    s_expect_decode(s_cat("a4", id, from, to, kind, NULL), PROTO_ENV_MISSING_FIELD, "no sig");
    s_expect_decode(s_cat("a4", from, to, kind, sig, NULL), PROTO_ENV_MISSING_FIELD, "no id");
    s_expect_decode(s_cat("a6", id, from, to, kind, sig, T("extra"), "00", NULL), PROTO_ENV_UNKNOWN_FIELD, "extra key");
    s_expect_decode(s_cat("a6", id, from, to, kind, sig, "00", "00", NULL), PROTO_ENV_NON_TEXT_KEY, "int key");
    s_expect_decode(s_cat("a5", T("id"), T("not bytes"), from, to, kind, sig, NULL), PROTO_ENV_WRONG_TYPE, "id text");
    s_expect_decode(s_cat("a5", T("id"), B(15, 1), from, to, kind, sig, NULL), PROTO_ENV_BAD_LENGTH, "id 15");
    s_expect_decode(s_cat("a5", id, T("from"), B(33, 1), to, kind, sig, NULL), PROTO_ENV_BAD_LENGTH, "from 33");
    s_expect_decode(s_cat("a5", id, from, T("to"), B(31, 1), kind, sig, NULL), PROTO_ENV_BAD_LENGTH, "to 31");
    s_expect_decode(s_cat("a5", id, from, to, kind, T("sig"), B(63, 0), NULL), PROTO_ENV_BAD_LENGTH, "sig 63");
    s_expect_decode(s_cat("a5", id, from, to, T("kind"), "80", sig, NULL), PROTO_ENV_WRONG_TYPE, "kind array");
    /* Kind level. */
    s_expect_kind(s_cat("a1", T("body"), T("hi"), NULL), PROTO_ENV_MISSING_FIELD, "no type");
    s_expect_kind(s_cat("a2", T("type"), "01", T("body"), T("hi"), NULL), PROTO_ENV_WRONG_TYPE, "type int");
    s_expect_kind(s_cat("a2", T("type"), T("gossip"), T("body"), T("hi"), NULL), PROTO_ENV_UNKNOWN_KIND,
                    "unknown type");
    s_expect_kind(s_cat("a2", T("type"), T("Message"), T("body"), T("hi"), NULL), PROTO_ENV_UNKNOWN_KIND,
                    "type is case-sensitive");
    s_expect_kind(s_cat("a1", T("type"), T("message"), NULL), PROTO_ENV_MISSING_FIELD, "no body");
    s_expect_kind(s_cat("a2", T("type"), T("message"), T("body"), "05", NULL), PROTO_ENV_WRONG_TYPE,
                    "body int");
    s_expect_kind(s_cat("a3", T("type"), T("message"), T("body"), T("hi"), T("blocks"), "a0", NULL),
                    PROTO_ENV_WRONG_TYPE, "blocks map");
    s_expect_kind(s_cat("a3", T("type"), T("message"), T("body"), T("hi"), T("handling_mode"), "f6", NULL),
                    PROTO_ENV_WRONG_TYPE, "optional null");
    s_expect_kind(s_cat("a3", T("type"), T("message"), T("body"), T("hi"), T("handling_mode"), T("later"),
                                 NULL),
                    PROTO_ENV_BAD_VALUE, "handling_mode");
    s_expect_kind(s_cat("a2", T("type"), T("request"), T("intent"), T("x"), NULL), PROTO_ENV_MISSING_FIELD,
                    "request without params");
    s_expect_kind(s_cat("a3", T("type"), T("request"), T("intent"), T("x"), T("params"), "f6", NULL),
                    PROTO_ENV_OK, "params null");
    const char *irt = s_cat(T("in_reply_to"), B(16, 7), NULL);
    s_expect_kind(s_cat("a4", T("type"), T("response"), irt, T("status"), T("done"), T("result"), "f6", NULL),
                    PROTO_ENV_BAD_VALUE, "status");
    s_expect_kind(s_cat("a3", T("type"), T("response"), irt, T("status"), T("failed"), NULL),
                    PROTO_ENV_MISSING_FIELD, "response without result");
    s_expect_kind(s_cat("a2", T("type"), T("ack"), T("in_reply_to"), B(17, 7), NULL), PROTO_ENV_BAD_LENGTH,
                    "in_reply_to 17");
    s_expect_kind(s_cat("a2", T("type"), T("ack"), T("in_reply_to"), T("0190-…"), NULL),
                    PROTO_ENV_WRONG_TYPE, "in_reply_to text");
    s_expect_kind(s_cat("a2", T("type"), T("ack"), irt, NULL), PROTO_ENV_OK, "ack");
    s_expect_kind(s_cat("a2", T("type"), T("lifecycle"), T("kind"), T("x"), NULL), PROTO_ENV_MISSING_FIELD,
                    "lifecycle without params");
    s_arena_free();
}

/* Built envelopes go through the same checks as decoded ones. */
static void test_reject_when_building(void **state)
{
    (void) state;
    proto_envelope_reason_t why;
    cbor_item_t *kind = proto_kind_message("\xff", 1, NULL, PROTO_HANDLING_NONE);
    assert_null(proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why));
    assert_int_equal(why, PROTO_ENV_BAD_UTF8);
    assert_null(kind);

    cbor_item_t *params = cbor_build_tag(1, cbor_move(cbor_build_uint8(0)));
    kind = proto_kind_request("x", 1, &params, NULL, PROTO_HANDLING_NONE);
    assert_null(proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why));
    assert_int_equal(why, PROTO_ENV_UNSUPPORTED_TYPE);

    params = cbor_new_definite_map(2);
    assert_true(cbor_map_add(params, (struct cbor_pair){cbor_move(s_str("a")), cbor_move(cbor_build_uint8(1))}));
    assert_true(cbor_map_add(params, (struct cbor_pair){cbor_move(s_str("a")), cbor_move(cbor_build_uint8(2))}));
    kind = proto_kind_lifecycle("x", 1, &params);
    assert_null(proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why));
    assert_int_equal(why, PROTO_ENV_DUPLICATE_KEY);

    kind = NULL; /* a builder that ran out of memory */
    assert_null(proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why));
    assert_int_equal(why, PROTO_ENV_NO_MEMORY);
    assert_int_equal(proto_envelope_reason_wire(why), PROTO_WIRE_INTERNAL);

    /* Required values missing from a builder make no kind at all. */
    assert_null(proto_kind_request("x", 1, NULL, NULL, PROTO_HANDLING_NONE));
    assert_null(proto_kind_response(s_id, PROTO_STATUS_NONE, NULL));
}

static void test_reject_signature(void **state)
{
    (void) state;
    proto_envelope_t *env = s_signed(proto_kind_message("hi", 2, NULL, PROTO_HANDLING_NONE));
    uint8_t *frame = NULL;
    size_t len = 0;
    proto_envelope_reason_t why;
    assert_int_equal(proto_envelope_encode(env, &frame, &len), 0);
    proto_envelope_t *copy = NULL;

    /* Unsigned (zero) signature. */
    cbor_item_t *kind = proto_kind_message("hi", 2, NULL, PROTO_HANDLING_NONE);
    proto_envelope_t *unsigned_env = proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why);
    assert_int_equal(proto_envelope_verify(unsigned_env, &why), -1);
    assert_int_equal(why, PROTO_ENV_BAD_SIGNATURE);
    assert_int_equal(proto_envelope_reason_wire(why), PROTO_WIRE_INVALID_SIGNATURE);
    proto_envelope_destroy(&unsigned_env);

    /* Signed by alice, claiming to be from bob. */
    uint8_t *at = memmem(frame, len, s_alice_pk, 32);
    assert_non_null(at);
    memcpy(at, s_bob_pk, 32);
    assert_int_equal(proto_envelope_decode(frame, len, &copy, &why), 0);
    assert_int_equal(proto_envelope_verify(copy, &why), -1);
    assert_int_equal(why, PROTO_ENV_BAD_SIGNATURE);
    proto_envelope_destroy(&copy);

    /* A mixed-order `from` (CCTV: low_order_component_A only; libsodium
     * alone would accept its vectors) is refused as a weak key. */
    static const uint8_t mixed[32] = {
        0x10, 0xeb, 0x7c, 0x3a, 0xcf, 0xb2, 0xbe, 0xd3, 0xe0, 0xd6, 0xab,
        0x89, 0xbf, 0x5a, 0x3d, 0x6a, 0xfd, 0xdd, 0x11, 0x76, 0xce, 0x48,
        0x12, 0xe3, 0x8d, 0x9f, 0xd4, 0x85, 0x05, 0x8f, 0xdb, 0x1f};
    if (proto_pubkey_check(mixed) == 0)
        fail_msg("test key unexpectedly of full order");
    memcpy(at, mixed, 32);
    assert_int_equal(proto_envelope_decode(frame, len, &copy, &why), 0);
    assert_int_equal(proto_envelope_verify(copy, &why), -1);
    assert_int_equal(why, PROTO_ENV_WEAK_KEY);
    assert_int_equal(proto_envelope_reason_wire(why), PROTO_WIRE_INVALID_SIGNATURE);
    /* The prechecked path skips the key check, so it is only for trusted keys. */
    proto_envelope_destroy(&copy);
    free(frame);
    proto_envelope_destroy(&env);
}

static void test_reason_names(void **state)
{
    (void) state;
    for (int r = PROTO_ENV_OK; r <= PROTO_ENV_NO_MEMORY; r++) {
        assert_string_not_equal(proto_envelope_reason_str((proto_envelope_reason_t) r), "unknown");
        proto_wire_reason_t w = proto_envelope_reason_wire((proto_envelope_reason_t) r);
        assert_true(w == PROTO_WIRE_OK || w == PROTO_WIRE_OVERSIZE || w == PROTO_WIRE_MALFORMED ||
                    w == PROTO_WIRE_INVALID_SIGNATURE || w == PROTO_WIRE_INTERNAL);
    }
    assert_string_equal(proto_wire_reason_str(PROTO_WIRE_MALFORMED), "malformed");
    assert_string_equal(proto_wire_reason_str(proto_envelope_reason_wire(PROTO_ENV_DUPLICATE_KEY)), "malformed");
    assert_string_equal(proto_wire_reason_str(PROTO_WIRE_UNTRUSTED_SENDER), "untrusted_sender");
}

/* A request whose params is a map of 20 keys (past the canonical encoder's
 * on-stack order table) holding a nested map, so every allocation kith
 * makes for an envelope is on the way. */
static cbor_item_t *s_wide_kind(void)
{
    cbor_item_t *params = cbor_new_definite_map(20);
    assert_non_null(params);
    for (int i = 0; i < 20; i++) {
        char key[8];
        snprintf(key, sizeof key, "k%02d", 19 - i);
        cbor_item_t *v = i == 0 ? s_params() : cbor_build_uint8((uint8_t) i);
        assert_true(cbor_map_add(params, (struct cbor_pair){cbor_move(s_str(key)), cbor_move(v)}));
    }
    return proto_kind_request("wide", 4, &params, NULL, PROTO_HANDLING_STEER);
}

/* Decoding (both paths), making and encoding with each of kith's
 * allocations failing in turn: NO_MEMORY (wire reason `internal`, not the
 * sender's fault), no envelope, nothing leaked (LSan); then success. */
static void test_no_memory(void **state)
{
    (void) state;
    proto_envelope_t *env = s_signed(s_wide_kind());
    uint8_t *frame = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_encode(env, &frame, &len), 0);
    for (int general = 0; general < 2; general++) {
        long i = 0;
        for (; i < ALLOC_FAIL_RUNS_MAX; i++) {
            proto_envelope_t *copy = (proto_envelope_t *) 1;
            proto_envelope_reason_t why = PROTO_ENV_OK;
            alloc_fail_arm(i);
            int rc = general ? proto_envelope_decode_general(frame, len, &copy, &why)
                             : proto_envelope_decode(frame, len, &copy, &why);
            unsigned failed = alloc_fail_disarm();
            if (rc == 0) {
                assert_int_equal(failed, 0);
                assert_int_equal(proto_envelope_verify(copy, &why), 0);
                proto_envelope_destroy(&copy);
                break;
            }
            assert_int_equal(why, PROTO_ENV_NO_MEMORY);
            assert_int_equal(proto_envelope_reason_wire(why), PROTO_WIRE_INTERNAL);
            assert_null(copy);
        }
        assert_true(i >= 3 && i < ALLOC_FAIL_RUNS_MAX); /* scratch, order, signable, env at least */
    }
    long i = 0;
    for (; i < ALLOC_FAIL_RUNS_MAX; i++) {
        cbor_item_t *kind = s_wide_kind();
        proto_envelope_reason_t why = PROTO_ENV_OK;
        alloc_fail_arm(i);
        proto_envelope_t *made = proto_envelope_new(s_id, s_alice_pk, s_bob_pk, &kind, &why);
        unsigned failed = alloc_fail_disarm();
        assert_null(kind); /* taken, also on failure */
        if (made) {
            assert_int_equal(failed, 0);
            proto_envelope_destroy(&made);
            break;
        }
        assert_int_equal(why, PROTO_ENV_NO_MEMORY);
    }
    assert_true(i >= 3 && i < ALLOC_FAIL_RUNS_MAX);
    uint8_t *again = (uint8_t *) 1;
    size_t alen = 0;
    alloc_fail_arm(0);
    assert_int_equal(proto_envelope_encode_frame(env, &again, &alen), -1);
    alloc_fail_disarm();
    free(frame);
    proto_envelope_destroy(&env);
}

/* A builder missing a required value makes nothing and releases what it
 * was given (LSan). */
static void test_builders_take_on_failure(void **state)
{
    (void) state;
    cbor_item_t *blocks = cbor_new_definite_array(0);
    assert_null(proto_kind_request("x", 1, NULL, &blocks, PROTO_HANDLING_QUEUE));
    assert_null(blocks);
    assert_null(proto_kind_lifecycle("mob.peer_added", 14, NULL));
    cbor_item_t *result = cbor_build_uint8(1);
    assert_null(proto_kind_response(s_id, PROTO_STATUS_NONE, &result));
    assert_null(result);
    /* A NULL text is the empty text. */
    cbor_item_t *kind = proto_kind_message(NULL, 5, NULL, PROTO_HANDLING_NONE);
    proto_envelope_t *env = s_signed(kind);
    const char *body = NULL;
    size_t body_len = 9;
    assert_int_equal(proto_envelope_text(env, "body", &body, &body_len), 0);
    assert_int_equal(body_len, 0);
    assert_int_equal(proto_envelope_text(env, "nothing", &body, &body_len), -1);
    proto_envelope_destroy(&env);
}

/* Names and accessors for every kind, status and wire reason. */
static void test_kind_names(void **state)
{
    (void) state;
    static const struct {
        proto_kind_t kind;
        const char *name;
        bool acked;
    } kinds[] = {
        {PROTO_KIND_MESSAGE, "message", true},     {PROTO_KIND_REQUEST, "request", true},
        {PROTO_KIND_RESPONSE, "response", false},  {PROTO_KIND_ACK, "ack", false},
        {PROTO_KIND_LIFECYCLE, "lifecycle", true}, {PROTO_KIND_FENCED_MESSAGE, "incarnation_fenced_message", true},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        assert_string_equal(proto_kind_str(kinds[i].kind), kinds[i].name);
        assert_int_equal(proto_kind_acked(kinds[i].kind), kinds[i].acked);
    }
    assert_string_equal(proto_kind_str((proto_kind_t) 99), "unknown");
    assert_null(proto_handling_str(PROTO_HANDLING_NONE));
    assert_null(proto_status_str(PROTO_STATUS_NONE));
    assert_string_equal(proto_status_str(PROTO_STATUS_COMPLETED), "completed");
    assert_string_equal(proto_envelope_reason_str((proto_envelope_reason_t) 99), "unknown");
    for (int a = PROTO_WIRE_OK; a <= PROTO_WIRE_INTERNAL; a++) {
        assert_string_not_equal(proto_wire_reason_str((proto_wire_reason_t) a), "unknown");
        for (int b = PROTO_WIRE_OK; b < a; b++)
            assert_string_not_equal(proto_wire_reason_str((proto_wire_reason_t) a),
                                    proto_wire_reason_str((proto_wire_reason_t) b));
    }
    assert_string_equal(proto_wire_reason_str((proto_wire_reason_t) 99), "unknown");

    /* An ack has no handling mode and no status; a response's status. */
    proto_envelope_t *ack = s_signed(proto_kind_ack(s_id));
    proto_envelope_reason_t why;
    assert_int_equal(proto_envelope_handling(ack), PROTO_HANDLING_NONE);
    assert_int_equal(proto_envelope_status(ack), PROTO_STATUS_NONE);
    assert_int_equal(proto_envelope_verify_prechecked(ack, &why), 0);
    proto_envelope_destroy(&ack);
    cbor_item_t *result = cbor_new_null();
    proto_envelope_t *resp = s_signed(proto_kind_response(s_id, PROTO_STATUS_ACCEPTED, &result));
    assert_int_equal(proto_envelope_status(resp), PROTO_STATUS_ACCEPTED);
    assert_int_equal(proto_envelope_handling(resp), PROTO_HANDLING_NONE);
    proto_envelope_destroy(&resp);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    s_keys();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_message_roundtrip),
        cmocka_unit_test(test_message_full_roundtrip),
        cmocka_unit_test(test_request_roundtrip),
        cmocka_unit_test(test_response_roundtrip),
        cmocka_unit_test(test_ack_and_lifecycle_roundtrip),
        cmocka_unit_test(test_new_makes_v7_id),
        cmocka_unit_test(test_ack_fast_path_matches),
        cmocka_unit_test(test_any_byte_flip_fails),
        cmocka_unit_test(test_unknown_kind_fields_are_kept_and_signed),
        cmocka_unit_test(test_key_order_and_widths_do_not_matter),
        cmocka_unit_test(test_reject_cbor_level),
        cmocka_unit_test(test_reject_oversize),
        cmocka_unit_test(test_reject_depth),
        cmocka_unit_test(test_reject_item_count),
        cmocka_unit_test(test_reject_data_model),
        cmocka_unit_test(test_reject_schema),
        cmocka_unit_test(test_reject_when_building),
        cmocka_unit_test(test_reject_signature),
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_no_memory),
        cmocka_unit_test(test_builders_take_on_failure),
        cmocka_unit_test(test_kind_names),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    s_arena_free();
    return rc;
}
