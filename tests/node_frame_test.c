/* tests/node_frame_test.c — gateway/node_frame: the register and result
 * frames nodes send on /ws/nodes (WIRE §27), accepted and refused with the
 * code the socket answers, at each bound and on either side of it, and
 * without memory; and gateway_json_tree_parse, the strict JSON parse it
 * shares with the OpenClaw endpoint. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "gateway/json_text.h"
#include "gateway/node_frame.h"

static gateway_node_reason_t s_dec(const char *text, gateway_node_frame_t *f)
{
    char why[GATEWAY_NODE_WHY_MAX] = "";
    gateway_node_reason_t r =
        gateway_node_frame_decode((const uint8_t *) text, strlen(text), f, why, sizeof why);
    if (r != GATEWAY_NODE_OK)
        assert_true(why[0] && !f->meta && !f->result);
    return r;
}

static void test_register(void **state)
{
    (void) state;
    gateway_node_frame_t f;
    assert_int_equal(s_dec("{\"type\":\"register\",\"name\":\"tablet\",\"commands\":[\"camera.snap\","
                           "\"loc:get\"],\"meta\":{\"os\" : \"android\", \"n\": [1, 2]},\"x\":1}",
                           &f),
                     GATEWAY_NODE_OK);
    assert_int_equal(f.type, GATEWAY_NODE_FRAME_REGISTER);
    assert_string_equal(f.name, "tablet");
    assert_int_equal(f.ncommands, 2);
    assert_string_equal(f.commands[1], "loc:get");
    assert_string_equal(f.meta, "{\"os\":\"android\",\"n\":[1,2]}"); /* compact */
    gateway_node_frame_clear(&f);
    /* meta absent or null: {} */
    assert_int_equal(s_dec("{\"type\":\"register\",\"name\":\"n\",\"commands\":[],\"meta\":null}", &f),
                     GATEWAY_NODE_OK);
    assert_string_equal(f.meta, "{}");
    gateway_node_frame_clear(&f);
    /* 64 commands and a 64-octet name fit; one more of either does not. */
    char big[8192], name[80];
    memset(name, 'n', 64);
    name[64] = '\0';
    int n = snprintf(big, sizeof big, "{\"type\":\"register\",\"name\":\"%s\",\"commands\":[", name);
    for (int i = 0; i < 64; i++)
        n += snprintf(big + n, sizeof big - (size_t) n, "%s\"c%d\"", i ? "," : "", i);
    snprintf(big + n, sizeof big - (size_t) n, "]}");
    assert_int_equal(s_dec(big, &f), GATEWAY_NODE_OK);
    assert_int_equal(f.ncommands, 64);
    gateway_node_frame_clear(&f);
    big[n] = '\0';
    snprintf(big + n, sizeof big - (size_t) n, ",\"c64\"]}");
    assert_int_equal(s_dec(big, &f), GATEWAY_NODE_INVALID_FRAME);
    name[64] = 'n';
    name[65] = '\0';
    snprintf(big, sizeof big, "{\"type\":\"register\",\"name\":\"%s\",\"commands\":[]}", name);
    assert_int_equal(s_dec(big, &f), GATEWAY_NODE_INVALID_FRAME);
    /* meta over 16 KiB */
    static char huge[20000];
    n = snprintf(huge, sizeof huge, "{\"type\":\"register\",\"name\":\"n\",\"commands\":[],"
                                    "\"meta\":{\"k\":\"");
    memset(huge + n, 'm', 16 * 1024);
    snprintf(huge + n + 16 * 1024, sizeof huge - (size_t) n - 16 * 1024, "\"}}");
    assert_int_equal(s_dec(huge, &f), GATEWAY_NODE_INVALID_FRAME);
    const char *bad[] = {
        "{\"type\":\"register\",\"commands\":[]}",                        /* no name */
        "{\"type\":\"register\",\"name\":\"\",\"commands\":[]}",          /* empty name */
        "{\"type\":\"register\",\"name\":\"a\\u0001b\",\"commands\":[]}", /* control char */
        "{\"type\":\"register\",\"name\":\"n\"}",                         /* no commands */
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":\"x\"}",
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"a b\"]}",
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"\"]}",
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"a\",\"a\"]}",
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":[7]}",
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":[],\"meta\":[1]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(s_dec(bad[i], &f), GATEWAY_NODE_INVALID_FRAME);
}

static void test_result(void **state)
{
    (void) state;
    gateway_node_frame_t f;
    assert_int_equal(s_dec("{\"type\":\"result\",\"call_id\":\"k7\",\"ok\":true,\"result\":{\"a\": [true]}}",
                           &f),
                     GATEWAY_NODE_OK);
    assert_int_equal(f.type, GATEWAY_NODE_FRAME_RESULT);
    assert_string_equal(f.call_id, "k7");
    assert_true(f.ok);
    assert_string_equal(f.result, "{\"a\":[true]}");
    gateway_node_frame_clear(&f);
    assert_int_equal(s_dec("{\"type\":\"result\",\"call_id\":\"k8\",\"ok\":true}", &f), GATEWAY_NODE_OK);
    assert_string_equal(f.result, "null");
    gateway_node_frame_clear(&f);
    assert_int_equal(s_dec("{\"type\":\"result\",\"call_id\":\"k9\",\"ok\":false,\"error\":\"busy\"}", &f),
                     GATEWAY_NODE_OK);
    assert_false(f.ok);
    assert_null(f.result);
    assert_string_equal(f.error, "busy");
    gateway_node_frame_clear(&f);
    const char *bad[] = {
        "{\"type\":\"result\",\"ok\":true}",
        "{\"type\":\"result\",\"call_id\":\"a b\",\"ok\":true}",
        "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":1}",
        "{\"type\":\"result\",\"call_id\":\"k1\"}",
        "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":false}",
        "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":false,\"error\":5}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(s_dec(bad[i], &f), GATEWAY_NODE_INVALID_FRAME);
    char err[1200];
    int n = snprintf(err, sizeof err, "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":false,\"error\":\"");
    memset(err + n, 'e', 1025);
    snprintf(err + n + 1025, sizeof err - (size_t) n - 1025, "\"}");
    assert_int_equal(s_dec(err, &f), GATEWAY_NODE_INVALID_FRAME);
}

static void test_refusals(void **state)
{
    (void) state;
    gateway_node_frame_t f;
    assert_int_equal(s_dec("{\"type\":\"ping\"}", &f), GATEWAY_NODE_UNKNOWN_TYPE);
    assert_int_equal(s_dec("{\"name\":\"x\"}", &f), GATEWAY_NODE_UNKNOWN_TYPE);
    assert_int_equal(s_dec("{\"type\":3}", &f), GATEWAY_NODE_UNKNOWN_TYPE);
    assert_int_equal(s_dec("[1]", &f), GATEWAY_NODE_INVALID_JSON);
    assert_int_equal(s_dec("{not json", &f), GATEWAY_NODE_INVALID_JSON);
    assert_int_equal(s_dec("{\"type\":\"result\",\"type\":\"register\"}", &f),
                     GATEWAY_NODE_INVALID_JSON);
    assert_int_equal(s_dec("{\"type\":\"register\",\"name\":\"\\u0000\",\"commands\":[]}", &f),
                     GATEWAY_NODE_INVALID_JSON);
    assert_int_equal(s_dec("{\"type\":\"register\",\"name\":\"\\udc00\",\"commands\":[]}", &f),
                     GATEWAY_NODE_INVALID_JSON);
    char deep[200];
    memset(deep, '[', 40);
    memset(deep + 40, ']', 40);
    deep[80] = '\0';
    assert_int_equal(s_dec(deep, &f), GATEWAY_NODE_INVALID_JSON);
    const uint8_t bad_utf8[] = "{\"type\":\"\xc0\xaf\"}";
    char why[GATEWAY_NODE_WHY_MAX];
    assert_int_equal(gateway_node_frame_decode(bad_utf8, sizeof bad_utf8 - 1, &f, why, sizeof why),
                     GATEWAY_NODE_INVALID_JSON);
    assert_string_equal(gateway_node_reason_code(GATEWAY_NODE_INVALID_FRAME), "INVALID_FRAME");
    assert_string_equal(gateway_node_reason_code(GATEWAY_NODE_UNKNOWN_TYPE), "UNKNOWN_MESSAGE_TYPE");
    assert_string_equal(gateway_node_reason_code(GATEWAY_NODE_NOMEM), "INTERNAL");
    assert_string_equal(gateway_node_reason_code(GATEWAY_NODE_INVALID_JSON), "INVALID_JSON");
}

static void test_tree_parse(void **state)
{
    (void) state;
    char why[128];
    /* Four containers deep: taken at 4, refused at 3. */
    yajl_val t = gateway_json_tree_parse((const uint8_t *) "{\"a\":[[{}]]}", 12, 4, 4, why, sizeof why);
    assert_non_null(t);
    yajl_tree_free(t);
    assert_null(gateway_json_tree_parse((const uint8_t *) "{\"a\":[[{}]]}", 12, 3, 4, why, sizeof why));
    assert_non_null(strstr(why, "deep"));
    assert_null(gateway_json_tree_parse((const uint8_t *) "{\"a\":1,\"b\":2}", 13, 4, 1, why,
                                        sizeof why));
    assert_null(gateway_json_tree_parse((const uint8_t *) "{\"a\":\"\\u0000\"}", 14, 4, 4, why,
                                        sizeof why));
    assert_non_null(strstr(why, "u0000"));
    /* An escaped backslash before "u0000" is text, not an escape. */
    t = gateway_json_tree_parse((const uint8_t *) "{\"a\":\"\\\\u0000\"}", 15, 4, 4, why, sizeof why);
    assert_non_null(t);
    yajl_tree_free(t);
}

/* Each bound at its edge: meta of 16 KiB as re-serialised, a name of 64
 * octets counted as octets (not characters), a call id of 64, an error of
 * 1024; one octet more of any is refused. */
static void test_edges(void **state)
{
    (void) state;
    gateway_node_frame_t f;
    static char text[20000];
    /* {"k":"…"} is the value's length plus 8. */
    for (size_t v = 16376; v <= 16377; v++) {
        int n = snprintf(text, sizeof text,
                         "{\"type\":\"register\",\"name\":\"n\",\"commands\":[],\"meta\":{\"k\":\"");
        memset(text + n, 'm', v);
        snprintf(text + n + v, sizeof text - (size_t) n - v, "\"}}");
        if (v == 16376) {
            assert_int_equal(s_dec(text, &f), GATEWAY_NODE_OK);
            assert_int_equal(strlen(f.meta), GATEWAY_NODE_META_MAX);
            gateway_node_frame_clear(&f);
        } else {
            assert_int_equal(s_dec(text, &f), GATEWAY_NODE_INVALID_FRAME);
        }
    }
    char name[200] = "";
    for (int i = 0; i < 32; i++)
        strcat(name, "\xc3\xa9"); /* é: 64 octets, 32 characters */
    snprintf(text, sizeof text, "{\"type\":\"register\",\"name\":\"%s\",\"commands\":[]}", name);
    assert_int_equal(s_dec(text, &f), GATEWAY_NODE_OK);
    assert_string_equal(f.name, name);
    gateway_node_frame_clear(&f);
    snprintf(text, sizeof text, "{\"type\":\"register\",\"name\":\"%s\\u00e9\",\"commands\":[]}",
             name);
    assert_int_equal(s_dec(text, &f), GATEWAY_NODE_INVALID_FRAME);
    assert_int_equal(s_dec("{\"type\":\"register\",\"name\":\"a\x7f\",\"commands\":[]}", &f),
                     GATEWAY_NODE_INVALID_FRAME);
    assert_int_equal(s_dec("{\"type\":\"register\",\"name\":5,\"commands\":[]}", &f),
                     GATEWAY_NODE_INVALID_FRAME);
    char id[80];
    memset(id, 'k', 64);
    id[64] = '\0';
    snprintf(text, sizeof text, "{\"type\":\"result\",\"call_id\":\"%s\",\"ok\":true}", id);
    assert_int_equal(s_dec(text, &f), GATEWAY_NODE_OK);
    assert_string_equal(f.call_id, id);
    gateway_node_frame_clear(&f);
    snprintf(text, sizeof text, "{\"type\":\"result\",\"call_id\":\"%sk\",\"ok\":true}", id);
    assert_int_equal(s_dec(text, &f), GATEWAY_NODE_INVALID_FRAME);
    assert_int_equal(s_dec("{\"type\":\"result\",\"call_id\":7,\"ok\":true}", &f),
                     GATEWAY_NODE_INVALID_FRAME);
    int n = snprintf(text, sizeof text, "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":false,"
                                        "\"error\":\"");
    memset(text + n, 'e', 1024);
    snprintf(text + n + 1024, sizeof text - (size_t) n - 1024, "\"}");
    assert_int_equal(s_dec(text, &f), GATEWAY_NODE_OK);
    assert_int_equal(strlen(f.error), 1024);
    gateway_node_frame_clear(&f);
    /* A failed call's result is not read; an ok call's error is not. */
    assert_int_equal(s_dec("{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":true,\"error\":5}", &f),
                     GATEWAY_NODE_OK);
    assert_string_equal(f.result, "null");
    gateway_node_frame_clear(&f);
    assert_true(gateway_node_token_ok("a", 1, 1));
    assert_false(gateway_node_token_ok("ab", 2, 1));
    assert_false(gateway_node_token_ok("", 0, 64));
    assert_false(gateway_node_token_ok("a/b", 3, 64));
}

/* Every allocation of a decode fails in turn: INTERNAL (never the frame's
 * fault) or the frame, and nothing leaks (LSan). */
static void test_without_memory(void **state)
{
    (void) state;
    static const char *const frames[] = {
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"a\",\"b\"],"
        "\"meta\":{\"os\":\"x\",\"v\":[1,2,{\"z\":null}]}}",
        "{\"type\":\"register\",\"name\":\"n\",\"commands\":[]}",
        "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":true,\"result\":{\"a\":[true,1.5,\"s\"]}}",
        "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":true}",
        "{\"type\":\"result\",\"call_id\":\"k1\",\"ok\":false,\"error\":\"no\"}",
    };
    for (size_t k = 0; k < sizeof frames / sizeof frames[0]; k++) {
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            gateway_node_frame_t f;
            alloc_fail_arm(i);
            gateway_node_reason_t r = s_dec(frames[k], &f);
            bool failed = alloc_fail_disarm() > 0;
            if (r != GATEWAY_NODE_OK) {
                if (!failed || r != GATEWAY_NODE_NOMEM)
                    fail_msg("frame %zu run %ld: %d", k, i, (int) r);
                continue;
            }
            gateway_node_frame_clear(&f);
            if (!failed)
                break;
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register),
        cmocka_unit_test(test_result),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_tree_parse),
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
