/* tests/envelope_meerkat_test.c — Meerkat's kinds and values: an
 * incarnation_fenced_message decodes, is acked and keeps Meerkat's optional
 * fields signed; proto_envelope_meerkat_check refuses what a Meerkat peer
 * could not read back (bytes, integers below -2^63, unknown fields,
 * lifecycle kinds outside mob.*, blocks not in its ContentBlock shape). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include <sodium.h>

#include "proto/envelope.h"
#include "proto/envelope_meerkat.h"

static uint8_t s_pk[32], s_sk[64], s_to[32];

static int s_setup(void **state)
{
    (void) state;
    if (sodium_init() < 0)
        return -1;
    uint8_t seed[32];
    memset(seed, 7, sizeof seed);
    crypto_sign_seed_keypair(s_pk, s_sk, seed);
    memset(seed, 8, sizeof seed);
    uint8_t sk2[64];
    crypto_sign_seed_keypair(s_to, sk2, seed);
    return 0;
}

static void s_put(cbor_item_t *map, const char *k, cbor_item_t *v)
{
    assert_true(cbor_map_add(map, (struct cbor_pair){.key = cbor_move(cbor_build_string(k)),
                                                     .value = cbor_move(v)}));
}

static cbor_item_t *s_recipient(void)
{
    cbor_item_t *r = cbor_new_definite_map(7);
    s_put(r, "mob_id", cbor_build_string("mob"));
    s_put(r, "agent_identity", cbor_build_string("worker"));
    s_put(r, "host_id", cbor_build_string("host"));
    s_put(r, "binding_generation", cbor_build_uint8(1));
    s_put(r, "member_session_id", cbor_build_string("session"));
    s_put(r, "generation", cbor_build_uint8(1));
    s_put(r, "fence_token", cbor_build_uint8(7));
    return r;
}

/* A signed frame round trip: decode, verify, the kind and its fields. */
static void test_fenced_message(void **state)
{
    (void) state;
    cbor_item_t *kind = cbor_new_definite_map(6);
    s_put(kind, "type", cbor_build_string("incarnation_fenced_message"));
    s_put(kind, "body", cbor_build_string("fenced work"));
    s_put(kind, "handling_mode", cbor_build_string("queue"));
    s_put(kind, "content_taint", cbor_build_string("tainted"));
    uint8_t oid[16] = {1, 2, 3};
    s_put(kind, "objective_id", cbor_build_bytestring(oid, 16));
    s_put(kind, "expected_recipient", s_recipient());
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(NULL, s_pk, s_to, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, s_sk), 0);
    uint8_t *frame;
    size_t len;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, &len), 0);
    proto_envelope_t *back = NULL;
    assert_int_equal(proto_envelope_decode_frame(frame, len, &back, &why), 0);
    assert_int_equal(proto_envelope_verify(back, &why), 0);
    assert_int_equal(proto_envelope_kind(back), PROTO_KIND_FENCED_MESSAGE);
    assert_string_equal(proto_kind_str(PROTO_KIND_FENCED_MESSAGE), "incarnation_fenced_message");
    assert_true(proto_kind_acked(PROTO_KIND_FENCED_MESSAGE));
    assert_true(proto_kind_acked(PROTO_KIND_LIFECYCLE));
    assert_false(proto_kind_acked(PROTO_KIND_RESPONSE));
    assert_false(proto_kind_acked(PROTO_KIND_ACK));
    assert_int_equal(proto_envelope_handling(back), PROTO_HANDLING_QUEUE);
    char reason[160];
    assert_int_equal(proto_envelope_meerkat_check(back, reason, sizeof reason), 0);
    free(frame);
    proto_envelope_destroy(&back);
    proto_envelope_destroy(&env);

    /* expected_recipient is required, with its fields. */
    kind = cbor_new_definite_map(2);
    s_put(kind, "type", cbor_build_string("incarnation_fenced_message"));
    s_put(kind, "body", cbor_build_string("x"));
    assert_null(proto_envelope_new(NULL, s_pk, s_to, &kind, &why));
    assert_int_equal(why, PROTO_ENV_MISSING_FIELD);
    kind = cbor_new_definite_map(3);
    s_put(kind, "type", cbor_build_string("incarnation_fenced_message"));
    s_put(kind, "body", cbor_build_string("x"));
    cbor_item_t *r = cbor_new_definite_map(1);
    s_put(r, "mob_id", cbor_build_uint8(1));
    s_put(kind, "expected_recipient", r);
    assert_null(proto_envelope_new(NULL, s_pk, s_to, &kind, &why));
}

/* proto_envelope_meerkat_check on a kind, with a fragment of the reason. */
static void s_expect(cbor_item_t *kind, const char *fragment)
{
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(NULL, s_pk, s_to, &kind, &why);
    assert_non_null(env);
    char reason[160] = "";
    int rc = proto_envelope_meerkat_check(env, reason, sizeof reason);
    if (fragment) {
        assert_int_equal(rc, -1);
        if (!strstr(reason, fragment))
            fail_msg("reason \"%s\" lacks \"%s\"", reason, fragment);
    } else {
        assert_int_equal(rc, 0);
    }
    proto_envelope_destroy(&env);
}

static void test_meerkat_values(void **state)
{
    (void) state;
    cbor_item_t *p = cbor_new_definite_map(1);
    s_put(p, "blob", cbor_build_bytestring((const uint8_t *) "x", 1));
    s_expect(proto_kind_request("r", 1, &p, NULL, PROTO_HANDLING_NONE), "kind.params.blob");

    p = cbor_new_definite_array(1);
    cbor_item_t *neg = cbor_new_int64();
    cbor_set_uint64(neg, UINT64_MAX); /* -2^64 */
    cbor_mark_negint(neg);
    assert_true(cbor_array_push(p, cbor_move(neg)));
    s_expect(proto_kind_request("r", 1, &p, NULL, PROTO_HANDLING_NONE), "below -2^63");

    p = cbor_build_uint8(1);
    s_expect(proto_kind_lifecycle("peer_retired", 12, &p), "mob.peer_added");
    p = cbor_build_uint8(1);
    s_expect(proto_kind_lifecycle("mob.peer_retired", 16, &p), NULL);

    cbor_item_t *kind = cbor_new_definite_map(3);
    s_put(kind, "type", cbor_build_string("message"));
    s_put(kind, "body", cbor_build_string("hi"));
    s_put(kind, "x_kith_extra", cbor_build_bool(true));
    s_expect(kind, "kind.x_kith_extra: a field Meerkat does not know");

    cbor_item_t *blocks = cbor_new_definite_array(2);
    cbor_item_t *b = cbor_new_definite_map(2);
    s_put(b, "type", cbor_build_string("text"));
    s_put(b, "text", cbor_build_string("hello"));
    assert_true(cbor_array_push(blocks, cbor_move(b)));
    b = cbor_new_definite_map(4);
    s_put(b, "type", cbor_build_string("image"));
    s_put(b, "media_type", cbor_build_string("image/png"));
    s_put(b, "source", cbor_build_string("inline"));
    s_put(b, "data", cbor_build_string("iVBORw0KGgo="));
    assert_true(cbor_array_push(blocks, cbor_move(b)));
    s_expect(proto_kind_message("hi", 2, &blocks, PROTO_HANDLING_STEER), NULL);

    blocks = cbor_new_definite_array(1);
    b = cbor_new_definite_map(1);
    s_put(b, "type", cbor_build_string("audio"));
    assert_true(cbor_array_push(blocks, cbor_move(b)));
    s_expect(proto_kind_message("hi", 2, &blocks, PROTO_HANDLING_NONE), "kind.blocks[0].type");

    uint8_t irt[16] = {9};
    cbor_item_t *res = cbor_build_string("ok");
    s_expect(proto_kind_response(irt, PROTO_STATUS_COMPLETED, &res), NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fenced_message),
        cmocka_unit_test(test_meerkat_values),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
