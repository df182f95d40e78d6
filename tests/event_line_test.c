/* tests/event_line_test.c — plain event lines: JSON with "body", plain text,
 * each refusal, and no line altered to fit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "router/comms/event_line.h"

static router_event_line_reason_t s_parse(const char *line, char **body)
{
    size_t n;
    return router_event_line_parse((const uint8_t *) line, strlen(line), body, &n);
}

static void s_ok(const char *line, const char *want)
{
    char *body = NULL;
    size_t n = 0;
    assert_int_equal(router_event_line_parse((const uint8_t *) line, strlen(line), &body, &n),
                     ROUTER_EVENT_LINE_OK);
    assert_string_equal(body, want);
    assert_int_equal(n, strlen(want));
    free(body);
}

static void s_bad(const char *line, router_event_line_reason_t want)
{
    char *body = (char *) 1;
    router_event_line_reason_t got = s_parse(line, &body);
    if (got != want)
        fail_msg("%s: want %s, got %s", line, router_event_line_reason_str(want),
                 router_event_line_reason_str(got));
    assert_null(body);
}

/* Like s_bad, for lines with raw NULs (strlen would stop at them). */
static void s_bad_n(const char *line, size_t len, router_event_line_reason_t want)
{
    char *body = (char *) 1;
    size_t n = 99;
    assert_int_equal(router_event_line_parse((const uint8_t *) line, len, &body, &n), want);
    assert_null(body);
    assert_int_equal(n, 0);
}

static void test_json(void **state)
{
    (void) state;
    s_ok("{\"body\":\"disk full on db-3\"}", "disk full on db-3");
    s_ok("  {\"source\":\"cron\",\"body\":\"tick\",\"n\":[1,2]}\r", "tick");
    s_ok("{\"body\":\"caf\\u00e9 \\\"q\\\"\"}", "caf\xc3\xa9 \"q\"");
}

static void test_plain(void **state)
{
    (void) state;
    s_ok("deploy finished", "deploy finished");
    s_ok("  trimmed\t\r", "trimmed");
    s_ok("caf\xc3\xa9", "caf\xc3\xa9");
    /* A line not starting with '{' is plain text (WIRE §10), JSON or not:
     * taken verbatim, so nothing is lost. */
    s_ok("[1,2,3]", "[1,2,3]");
    s_ok("\"body\"", "\"body\"");
    s_ok("[{\"body\":\"x\"}]", "[{\"body\":\"x\"}]");
    s_ok("a \\u0000 b", "a \\u0000 b"); /* no escapes in plain text */
}

static void test_refused(void **state)
{
    (void) state;
    s_bad("", ROUTER_EVENT_LINE_EMPTY);
    s_bad(" \r", ROUTER_EVENT_LINE_EMPTY);
    s_bad("{\"body\":", ROUTER_EVENT_LINE_BAD_JSON);
    s_bad("{body: 1}", ROUTER_EVENT_LINE_BAD_JSON);
    s_bad("{\"body\":1}", ROUTER_EVENT_LINE_NO_BODY);
    s_bad("{\"text\":\"x\"}", ROUTER_EVENT_LINE_NO_BODY);
    s_bad("{\"body\":\"\xff\"}", ROUTER_EVENT_LINE_BAD_UTF8);
    s_bad("{\"body\":\"\xed\xa0\x80\"}", ROUTER_EVENT_LINE_BAD_UTF8); /* raw surrogate */
    s_bad("{\"body\":\"x\"} {\"body\":\"y\"}", ROUTER_EVENT_LINE_BAD_JSON);
    s_bad("{\"body\":\"x\"}]", ROUTER_EVENT_LINE_BAD_JSON);
    s_bad("{\"body\":\"x\"} // c", ROUTER_EVENT_LINE_BAD_JSON);
    s_bad("\xc0\xaf", ROUTER_EVENT_LINE_BAD_UTF8);       /* overlong */
    s_bad("\xed\xa0\x80", ROUTER_EVENT_LINE_BAD_UTF8);   /* surrogate */
    s_bad("\xf4\x90\x80\x80", ROUTER_EVENT_LINE_BAD_UTF8); /* past U+10FFFF */
    s_bad("ab\xe2\x82", ROUTER_EVENT_LINE_BAD_UTF8);     /* truncated */
    char *body = NULL;
    size_t n;
    const uint8_t nul[] = {'{', '"', 'b', 0, '}'};
    assert_int_equal(router_event_line_parse(nul, sizeof nul, &body, &n),
                     ROUTER_EVENT_LINE_BAD_JSON);
}

/* Shapes a JSON decoder would quietly change: refused, never altered. */
static void test_not_altered(void **state)
{
    (void) state;
    /* U+0000 would end the NUL-ended body early */
    s_bad("{\"body\":\"ab\\u0000cd\"}", ROUTER_EVENT_LINE_NUL_IN_BODY);
    s_bad("{\"body\":\"\\u0000\"}", ROUTER_EVENT_LINE_NUL_IN_BODY);
    s_bad_n("ab\0cd", 5, ROUTER_EVENT_LINE_NUL_IN_BODY);
    s_bad_n("\0", 1, ROUTER_EVENT_LINE_NUL_IN_BODY);
    /* a NUL in a member that is ignored changes nothing */
    s_ok("{\"note\":\"\\u0000\",\"body\":\"x\"}", "x");
    s_ok("{\"body\":\"\\u0001\"}", "\x01");

    /* half a surrogate pair is not a character (it used to become "?") */
    s_bad("{\"body\":\"a\\ud800\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    s_bad("{\"body\":\"a\\uD800b\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    s_bad("{\"body\":\"\\udc00\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    s_bad("{\"body\":\"\\udfff\\ud800\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    s_bad("{\"body\":\"\\ud800\\u0041\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    s_bad("{\"body\":\"\\ud800\\ud800\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    s_bad("{\"body\":\"\\ud800\\n\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    s_bad("{\"x\":\"\\ud800\",\"body\":\"ok\"}", ROUTER_EVENT_LINE_LONE_SURROGATE);
    /* a pair is one character; an escaped backslash before "u" is no escape */
    s_ok("{\"body\":\"\\ud83d\\ude00\"}", "\xf0\x9f\x98\x80");
    s_ok("{\"body\":\"\\uDBFF\\uDFFF\"}", "\xf4\x8f\xbf\xbf");
    s_ok("{\"body\":\"\\\\ud800\"}", "\\ud800");

    /* which of two bodies is meant cannot be known */
    s_bad("{\"body\":\"a\",\"body\":\"b\"}", ROUTER_EVENT_LINE_DUPLICATE_KEY);
    s_bad("{\"body\":\"a\",\"x\":1,\"body\":1}", ROUTER_EVENT_LINE_DUPLICATE_KEY);
    s_bad("{\"body\":\"a\",\"bo\\u0064y\":\"b\"}", ROUTER_EVENT_LINE_DUPLICATE_KEY);
    /* nested "body" members and other repeated members are not the body */
    s_ok("{\"x\":{\"body\":\"n\"},\"body\":\"top\",\"y\":[{\"body\":1}]}", "top");
    s_ok("{\"x\":1,\"x\":2,\"body\":\"b\"}", "b");
    s_bad("{\"x\":{\"body\":\"n\"}}", ROUTER_EVENT_LINE_NO_BODY);
    s_bad("{\"body\":{\"body\":\"n\"}}", ROUTER_EVENT_LINE_NO_BODY);
    /* a key that only starts with "body" */
    s_bad("{\"body\\u0000\":\"b\"}", ROUTER_EVENT_LINE_NO_BODY);
}

static void test_reason_names(void **state)
{
    (void) state;
    assert_string_equal(router_event_line_reason_str(ROUTER_EVENT_LINE_NUL_IN_BODY), "nul_in_body");
    assert_string_equal(router_event_line_reason_str(ROUTER_EVENT_LINE_LONE_SURROGATE),
                        "lone_surrogate");
    assert_string_equal(router_event_line_reason_str(ROUTER_EVENT_LINE_DUPLICATE_KEY),
                        "duplicate_key");
    assert_string_equal(router_event_line_reason_str(ROUTER_EVENT_LINE_BAD_UTF8), "bad_utf8");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_not_altered),
        cmocka_unit_test(test_reason_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
