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
#include "router/comms/envelope_json.h"

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

/* One kind, written as JSON (bytes as {"$bytes": …}), and what the check
 * says: NULL accepted, else the whole reason. */
typedef struct {
    const char *kind;
    const char *reason;
} s_case_t;

#define S_B16 "{\"$bytes\":\"AAAAAAAAAAAAAAAAAAAAAA==\"}"
#define S_MSG(blocks) "{\"type\":\"message\",\"body\":\"b\",\"blocks\":[" blocks "]}"
#define S_UNKNOWN " a field Meerkat does not know (it would drop it and then fail the signature)"

static const s_case_t s_cases[] = {
    /* Values Meerkat's serde_json reads back: the smallest i64, nested maps. */
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":[-9223372036854775808,{\"a\":{\"b\":[1.5,null]}}]}", NULL},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":[-9223372036854775809]}",
     "kind.params[0]: an integer below -2^63 is outside Meerkat's JSON numbers (i64/u64)"},
    {"{\"type\":\"response\",\"in_reply_to\":" S_B16 ",\"status\":\"failed\",\"result\":{\"r\":" S_B16 "}}",
     "kind.result.r: a byte string has no JSON form, and Meerkat reads JSON values here"},
    {"{\"type\":\"lifecycle\",\"kind\":\"mob.peer_added\",\"params\":{\"who\":[" S_B16 "]}}",
     "kind.params.who[0]: a byte string has no JSON form, and Meerkat reads JSON values here"},
    {"{\"type\":\"lifecycle\",\"kind\":\"mob.peer_unwired\",\"params\":null}", NULL},
    {"{\"type\":\"lifecycle\",\"kind\":\"mob.peer_added\",\"params\":1,\"note\":1}", "kind.note:" S_UNKNOWN},
    /* ack: in_reply_to alone. */
    {"{\"type\":\"ack\",\"in_reply_to\":" S_B16 "}", NULL},
    {"{\"type\":\"ack\",\"in_reply_to\":" S_B16 ",\"body\":\"x\"}", "kind.body:" S_UNKNOWN},
    /* Paths are cut at 95 octets, never overrun. */
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{\"k0123456789012345678901234567890123456789012345678901234567890"
     "12345678901234567890123456789xyz\":[" S_B16 "]}}",
     "kind.params.k0123456789012345678901234567890123456789012345678901234567890123456789012345678901"
     ": a byte string has no JSON form, and Meerkat reads JSON values here"},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{\"k01234567890123456789012345678901234567890123456789012345678"
     "9012345678901234567890\":[" S_B16 "]}}",
     "kind.params.k012345678901234567890123456789012345678901234567890123456789012345678901234567890["
     ": a byte string has no JSON form, and Meerkat reads JSON values here"},
    /* Content blocks, each shape Meerkat has and the ways out of them. */
    {S_MSG("1"), "kind.blocks[0]: a content block is an object"},
    {S_MSG("{\"text\":\"t\"}"), "kind.blocks[0].type: missing (text, image, video, structured, skill_context)"},
    {S_MSG("{\"type\":7}"), "kind.blocks[0].type: missing (text, image, video, structured, skill_context)"},
    {S_MSG("{\"type\":\"text\",\"text\":\"t\"},{\"type\":\"text\",\"text\":5}"),
     "kind.blocks[1].text: Meerkat requires a string here"},
    {S_MSG("{\"type\":\"text\",\"text\":\"t\",\"lang\":\"en\"}"), "kind.blocks[0].lang:" S_UNKNOWN},
    {S_MSG("{\"type\":\"image\",\"media_type\":\"image/png\",\"source\":\"blob\",\"blob_id\":\"b1\"}"), NULL},
    {S_MSG("{\"type\":\"image\",\"media_type\":\"image/png\",\"source\":\"blob\"}"),
     "kind.blocks[0].blob_id: Meerkat requires a string here"},
    {S_MSG("{\"type\":\"image\",\"media_type\":\"image/png\",\"source\":\"uri\",\"uri\":\"u\"}"),
     "kind.blocks[0].source: expected \"inline\" or \"blob\""},
    {S_MSG("{\"type\":\"image\",\"media_type\":\"image/png\",\"data\":\"AA==\"}"),
     "kind.blocks[0].source: expected \"inline\" or \"blob\""},
    {S_MSG("{\"type\":\"image\",\"media_type\":7,\"source\":\"inline\",\"data\":\"AA==\"}"),
     "kind.blocks[0].media_type: Meerkat requires a string here"},
    {S_MSG("{\"type\":\"image\",\"media_type\":\"image/png\",\"source\":\"inline\",\"data\":\"AA==\",\"alt\":\"a\"}"),
     "kind.blocks[0].alt:" S_UNKNOWN},
    /* The other source's field: Meerkat's flattened ImageData / VideoData
     * variant drops it, so the signature would fail. */
    {S_MSG("{\"type\":\"image\",\"media_type\":\"image/png\",\"source\":\"inline\",\"data\":\"AA==\",\"blob_id\":\"b\"}"),
     "kind.blocks[0].blob_id:" S_UNKNOWN},
    {S_MSG("{\"type\":\"image\",\"media_type\":\"image/png\",\"source\":\"blob\",\"blob_id\":\"b\",\"data\":\"AA==\"}"),
     "kind.blocks[0].data:" S_UNKNOWN},
    {S_MSG("{\"type\":\"video\",\"media_type\":\"video/mp4\",\"duration_ms\":1000,\"source\":\"inline\",\"data\":\"AA==\","
           "\"uri\":\"u\"}"),
     "kind.blocks[0].uri:" S_UNKNOWN},
    {S_MSG("{\"type\":\"video\",\"media_type\":\"video/mp4\",\"duration_ms\":1000,\"source\":\"inline\",\"data\":\"AA==\"}"),
     NULL},
    {S_MSG("{\"type\":\"video\",\"media_type\":\"video/mp4\",\"duration_ms\":1,\"source\":\"uri\",\"uri\":\"https://v\"}"),
     NULL},
    {S_MSG("{\"type\":\"video\",\"media_type\":\"video/mp4\",\"source\":\"uri\",\"uri\":\"u\"}"),
     "kind.blocks[0].duration_ms: Meerkat requires an unsigned integer"},
    {S_MSG("{\"type\":\"video\",\"media_type\":\"video/mp4\",\"duration_ms\":-1,\"source\":\"uri\",\"uri\":\"u\"}"),
     "kind.blocks[0].duration_ms: Meerkat requires an unsigned integer"},
    {S_MSG("{\"type\":\"video\",\"media_type\":\"video/mp4\",\"duration_ms\":1,\"source\":\"blob\",\"blob_id\":\"b\"}"),
     "kind.blocks[0].source: expected \"inline\" or \"uri\""},
    {S_MSG("{\"type\":\"video\",\"media_type\":\"video/mp4\",\"duration_ms\":1,\"source\":\"uri\"}"),
     "kind.blocks[0].uri: Meerkat requires a string here"},
    {S_MSG("{\"type\":\"structured\",\"data\":{\"rows\":[1,\"a\",true]}}"), NULL},
    {S_MSG("{\"type\":\"structured\"}"), "kind.blocks[0].data: missing"},
    {S_MSG("{\"type\":\"structured\",\"data\":1,\"schema\":2}"), "kind.blocks[0].schema:" S_UNKNOWN},
    {S_MSG("{\"type\":\"structured\",\"data\":{\"raw\":" S_B16 "}}"),
     "kind.blocks[0].data.raw: a byte string has no JSON form, and Meerkat reads JSON values here"},
    {S_MSG("{\"type\":\"skill_context\",\"skill_key\":{\"source\":\"s\",\"name\":\"n\"},\"text\":\"t\"}"), NULL},
    {S_MSG("{\"type\":\"skill_context\",\"text\":\"t\"}"), "kind.blocks[0].skill_key: missing"},
    {S_MSG("{\"type\":\"skill_context\",\"skill_key\":\"k\"}"), "kind.blocks[0].text: Meerkat requires a string here"},
    {S_MSG("{\"type\":\"skill_context\",\"skill_key\":" S_B16 ",\"text\":\"t\"}"),
     "kind.blocks[0].skill_key: a byte string has no JSON form, and Meerkat reads JSON values here"},
    {S_MSG("{\"type\":\"skill_context\",\"skill_key\":\"k\",\"text\":\"t\",\"v\":1}"), "kind.blocks[0].v:" S_UNKNOWN},
    /* The optional fields the content kinds share. */
    {"{\"type\":\"message\",\"body\":\"b\",\"content_taint\":\"clean\",\"objective_id\":" S_B16 "}", NULL},
    {"{\"type\":\"message\",\"body\":\"b\",\"content_taint\":\"dirty\"}",
     "kind.content_taint: expected \"clean\" or \"tainted\""},
    {"{\"type\":\"message\",\"body\":\"b\",\"content_taint\":1}", "kind.content_taint: expected \"clean\" or \"tainted\""},
    {"{\"type\":\"message\",\"body\":\"b\",\"objective_id\":\"0190c2a4-6f4a-7b2c-9d3e-000000000000\"}",
     "kind.objective_id: Meerkat requires a UUID (16 bytes)"},
    {"{\"type\":\"message\",\"body\":\"b\",\"objective_id\":{\"$bytes\":\"AAE=\"}}",
     "kind.objective_id: Meerkat requires a UUID (16 bytes)"},
    {"{\"type\":\"message\",\"body\":\"b\",\"reply_endpoint\":{\"transport\":\"tcp\",\"endpoint\":\"h:1\"}}",
     "kind.reply_endpoint:" S_UNKNOWN},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{},\"reply_endpoint\":{\"transport\":\"uds\",\"endpoint\":\"/s\"}}",
     NULL},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{},\"reply_endpoint\":\"tcp://h:1\"}",
     "kind.reply_endpoint: expected {\"transport\": \"tcp\"|\"uds\"|\"inproc\", \"endpoint\": text}"},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{},\"reply_endpoint\":{\"endpoint\":\"h:1\"}}",
     "kind.reply_endpoint: expected {\"transport\": \"tcp\"|\"uds\"|\"inproc\", \"endpoint\": text}"},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{},\"reply_endpoint\":{\"transport\":\"udp\",\"endpoint\":\"h\"}}",
     "kind.reply_endpoint: expected {\"transport\": \"tcp\"|\"uds\"|\"inproc\", \"endpoint\": text}"},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{},\"reply_endpoint\":{\"transport\":\"tcp\",\"endpoint\":1}}",
     "kind.reply_endpoint: expected {\"transport\": \"tcp\"|\"uds\"|\"inproc\", \"endpoint\": text}"},
    {"{\"type\":\"request\",\"intent\":\"i\",\"params\":{},\"reply_endpoint\":{\"transport\":\"tcp\",\"endpoint\":\"h\","
     "\"tls\":true}}",
     "kind.reply_endpoint: expected {\"transport\": \"tcp\"|\"uds\"|\"inproc\", \"endpoint\": text}"},
    {"{\"type\":\"response\",\"in_reply_to\":" S_B16 ",\"status\":\"completed\",\"result\":1,\"blocks\":[{\"type\":\"x\"}]}",
     "kind.blocks[0].type: not a Meerkat content block (text, image, video, structured, skill_context)"},
    /* incarnation_fenced_message: its recipient's seven fields only. */
    {"{\"type\":\"incarnation_fenced_message\",\"body\":\"b\",\"content_taint\":\"x\",\"expected_recipient\":{\"mob_id\":"
     "\"m\",\"agent_identity\":\"a\",\"host_id\":\"h\",\"binding_generation\":1,\"member_session_id\":\"s\","
     "\"generation\":1,\"fence_token\":1}}",
     "kind.content_taint: expected \"clean\" or \"tainted\""},
    {"{\"type\":\"incarnation_fenced_message\",\"body\":\"b\",\"expected_recipient\":{\"mob_id\":\"m\",\"agent_identity\":"
     "\"a\",\"host_id\":\"h\",\"binding_generation\":1,\"member_session_id\":\"s\",\"generation\":1,\"fence_token\":1,"
     "\"epoch\":2}}",
     "kind.expected_recipient.epoch:" S_UNKNOWN},
};

/* The table above, each kind through the check; and the reason is cut to
 * any buffer, even none, without a write past it. */
static void test_meerkat_table(void **state)
{
    (void) state;
    for (size_t i = 0; i < sizeof s_cases / sizeof s_cases[0]; i++) {
        char err[256];
        cbor_item_t *kind = router_json_to_cbor(s_cases[i].kind, strlen(s_cases[i].kind), err, sizeof err);
        if (!kind)
            fail_msg("case %zu: %s", i, err);
        proto_envelope_reason_t why;
        proto_envelope_t *env = proto_envelope_new(NULL, s_pk, s_to, &kind, &why);
        if (!env)
            fail_msg("case %zu: not an envelope: %s", i, proto_envelope_reason_str(why));
        char reason[200] = "";
        int rc = proto_envelope_meerkat_check(env, reason, sizeof reason);
        if (!s_cases[i].reason && rc != 0)
            fail_msg("case %zu: refused: %s", i, reason);
        if (s_cases[i].reason && (rc != -1 || strcmp(reason, s_cases[i].reason) != 0))
            fail_msg("case %zu: got %d \"%s\", want \"%s\"", i, rc, reason, s_cases[i].reason);
        if (s_cases[i].reason) {
            char small[8];
            memset(small, 'x', sizeof small);
            assert_int_equal(proto_envelope_meerkat_check(env, small, 5), -1);
            assert_memory_equal(small, s_cases[i].reason, 4);
            assert_int_equal(small[4], '\0');
            assert_int_equal(small[5], 'x');
            assert_int_equal(proto_envelope_meerkat_check(env, NULL, 0), -1);
        }
        proto_envelope_destroy(&env);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fenced_message),
        cmocka_unit_test(test_meerkat_values),
        cmocka_unit_test(test_meerkat_table),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
