/* tests/event_line_test.c — plain event lines: JSON with "body", plain text,
 * and each refusal. */
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
    assert_int_equal(s_parse(line, &body), want);
    assert_null(body);
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
    s_ok("[1,2,3]", "[1,2,3]"); /* not an object: plain text */
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
    s_bad("{\"body\":\"\xff\"}", ROUTER_EVENT_LINE_BAD_JSON);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
