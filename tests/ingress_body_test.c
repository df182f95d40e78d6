/* tests/ingress_body_test.c — gateway/ingress_body: each shape's accepted
 * bodies and what it hands back, and every refusal with its reason
 * (invalid_json for what is not strict JSON, invalid_body for the wrong
 * shape). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gateway/ingress_body.h"

static gateway_ingress_reason_t s_parse(gateway_ingress_shape_t shape, const char *text,
                                        size_t len, gateway_ingress_body_t *b)
{
    char why[128];
    gateway_ingress_reason_t r = gateway_ingress_body_parse(shape, text, len, b, why, sizeof why);
    assert_true(why[0]);
    return r;
}

#define S_W(text) s_parse(GATEWAY_INGRESS_WEBHOOK, text, sizeof text - 1, &b)
#define S_E(text) s_parse(GATEWAY_INGRESS_EVENT, text, sizeof text - 1, &b)

static void test_accepted(void **state)
{
    (void) state;
    gateway_ingress_body_t b;
    assert_int_equal(S_W("{\"message\":\"h\\u00e9\\ud83d\\ude00\",\"session_id\":\"a.b:c-1_\"}"),
                     GATEWAY_INGRESS_OK);
    assert_string_equal(b.message, "h\xc3\xa9\xf0\x9f\x98\x80");
    assert_int_equal(b.message_len, 7);
    assert_string_equal(b.session_id, "a.b:c-1_");
    gateway_ingress_body_clear(&b);
    assert_null(b.message);
    assert_int_equal(S_W(" {\"message\":\"x\"}\n"), GATEWAY_INGRESS_OK);
    assert_string_equal(b.session_id, "");
    gateway_ingress_body_clear(&b);
    assert_int_equal(S_E("{\"payload\":{\"a\":{\"k\":1},\"k\":[{\"k\":2}]},\"kind\":\"generic_json\","
                         "\"event_type\":\"t\"}"),
                     GATEWAY_INGRESS_OK);
    assert_string_equal(b.event_type, "t");
    gateway_ingress_body_clear(&b);
    assert_int_equal(S_E("{\"kind\":\"generic_json\",\"event_type\":\"t\",\"payload\":null}"),
                     GATEWAY_INGRESS_OK);
    gateway_ingress_body_clear(&b);
}

static void test_refused(void **state)
{
    (void) state;
    gateway_ingress_body_t b;
    /* Not strict JSON. */
    assert_int_equal(S_W(""), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"a\""), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"a\",\"message\":\"a\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_E("{\"kind\":\"generic_json\",\"event_type\":\"t\",\"payload\":{\"x\":1,"
                         "\"y\":{},\"x\":2}}"),
                     GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"a\\u0000\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"a\0\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"\\ud800\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"\\ud800\\u0041\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"\\udfff\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"\\\\udfff\"}"), GATEWAY_INGRESS_OK); /* an escaped backslash */
    gateway_ingress_body_clear(&b);
    assert_int_equal(S_W("{\"message\":\"\xed\xa0\x80\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"\xc0\xaf\"}"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"a\"}x"), GATEWAY_INGRESS_INVALID_JSON);
    assert_int_equal(S_W("{\"message\":\"a\",}"), GATEWAY_INGRESS_INVALID_JSON);
    /* The wrong shape. */
    assert_int_equal(S_W("[]"), GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_W("1"), GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_W("{}"), GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_W("{\"message\":\"\"}"), GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_W("{\"message\":[\"a\"]}"), GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_W("{\"message\":\"a\",\"session_id\":\"\"}"), GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_W("{\"message\":\"a\",\"session_id\":\"a/b\"}"),
                     GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_W("{\"message\":\"a\",\"kind\":\"generic_json\"}"),
                     GATEWAY_INGRESS_INVALID_BODY); /* another shape's member */
    assert_int_equal(S_E("{\"kind\":\"generic\",\"event_type\":\"t\",\"payload\":1}"),
                     GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_E("{\"kind\":\"generic_json\",\"event_type\":1,\"payload\":1}"),
                     GATEWAY_INGRESS_INVALID_BODY);
    assert_int_equal(S_E("{\"kind\":\"generic_json\",\"payload\":1}"), GATEWAY_INGRESS_INVALID_BODY);
    char deep[256] = "{\"kind\":\"generic_json\",\"event_type\":\"t\",\"payload\":";
    size_t n = strlen(deep);
    for (int i = 0; i < 70; i++)
        deep[n++] = '[';
    for (int i = 0; i < 70; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    /* Past the strict-JSON bounds (WIRE §17.4: nesting 64, 1024 members
     * per object) is invalid_json, like any other strict-JSON rule. */
    assert_int_equal(s_parse(GATEWAY_INGRESS_EVENT, deep, n, &b), GATEWAY_INGRESS_INVALID_JSON);
    assert_null(b.message);
    char *wide = malloc(64 + 1025 * 16);
    assert_non_null(wide);
    n = (size_t) sprintf(wide, "{\"kind\":\"generic_json\",\"event_type\":\"t\",\"payload\":{");
    for (int i = 0; i < 1025; i++)
        n += (size_t) sprintf(wide + n, "%s\"m%d\":1", i ? "," : "", i);
    n += (size_t) sprintf(wide + n, "}}");
    assert_int_equal(s_parse(GATEWAY_INGRESS_EVENT, wide, n, &b), GATEWAY_INGRESS_INVALID_JSON);
    free(wide);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
