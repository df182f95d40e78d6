/* tests/openai_error_test.c — the reader of a non-200 chat-completions body
 * (agent/openai_error.c): the message of real OpenAI-compatible error
 * bodies, the fallbacks, and every bound (length, one line, UTF-8, nesting,
 * bodies that are not NUL-terminated or hold a NUL), and out of memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "agent/openai_error.h"
#include "alloc_fail.h"
#include "proto/utf8.h"

/* The message of a NUL-terminated body, into a static buffer. */
static const char *s_msg(const char *body)
{
    static char out[320];
    agent_oai_error_message(body, strlen(body), out, sizeof out);
    return out;
}

static void test_openai_shapes(void **state)
{
    (void) state;
    /* OpenAI */
    assert_string_equal(
        s_msg("{\n  \"error\": {\n    \"message\": \"Incorrect API key provided: sk-...abcd.\",\n"
              "    \"type\": \"invalid_request_error\",\n    \"param\": null,\n"
              "    \"code\": \"invalid_api_key\"\n  }\n}\n"),
        "Incorrect API key provided: sk-...abcd.");
    /* llama.cpp server */
    assert_string_equal(s_msg("{\"error\":{\"code\":503,\"message\":\"Loading model\","
                              "\"type\":\"unavailable_error\"}}"),
                        "Loading model");
    /* Ollama: a string `error` */
    assert_string_equal(s_msg("{\"error\":\"model \\\"llama9\\\" not found, try pulling it first\"}"),
                        "model \"llama9\" not found, try pulling it first");
    /* a bare `message` (some proxies) */
    assert_string_equal(s_msg("{\"message\":\"Rate limit reached\",\"status\":429}"),
                        "Rate limit reached");
    /* error.message wins over `message` */
    assert_string_equal(s_msg("{\"message\":\"outer\",\"error\":{\"message\":\"inner\"}}"), "inner");
}

static void test_fallbacks(void **state)
{
    (void) state;
    char out[64] = "x";
    agent_oai_error_message(NULL, 0, out, sizeof out);
    assert_string_equal(out, "");
    agent_oai_error_message("abc", 0, out, sizeof out);
    assert_string_equal(out, "");
    /* not JSON: the body's start, one line, no trailing space */
    assert_string_equal(s_msg("<html>\r\n<body>502 Bad Gateway</body>\r\n</html>\r\n"),
                        "<html>  <body>502 Bad Gateway</body>  </html>");
    /* JSON without a string message: the body itself */
    assert_string_equal(s_msg("{\"error\":{\"message\":42}}"), "{\"error\":{\"message\":42}}");
    assert_string_equal(s_msg("[\"error\"]"), "[\"error\"]");
    /* truncated JSON (the body was cut at the bound): the raw start */
    assert_string_equal(s_msg("{\"error\":{\"message\":\"cut"), "{\"error\":{\"message\":\"cut");
}

static void test_bounds(void **state)
{
    (void) state;
    /* long: at most AGENT_OAI_ERROR_TEXT_MAX octets, and the out buffer's cap */
    size_t n = 10000;
    char *body = malloc(n + 40);
    assert_non_null(body);
    strcpy(body, "{\"error\":{\"message\":\"");
    size_t at = strlen(body);
    memset(body + at, 'a', n);
    strcpy(body + at + n, "\"}}");
    char out[400];
    agent_oai_error_message(body, strlen(body), out, sizeof out);
    assert_int_equal(strlen(out), AGENT_OAI_ERROR_TEXT_MAX);
    char small[8];
    agent_oai_error_message(body, strlen(body), small, sizeof small);
    assert_string_equal(small, "aaaaaaa");
    free(body);

    /* a multi-octet character cut by the bound is dropped whole */
    char smallu[5];
    const char *two = "{\"error\":\"ab\xc3\xa9\xc3\xa9\"}";
    agent_oai_error_message(two, strlen(two), smallu, sizeof smallu);
    assert_string_equal(smallu, "ab\xc3\xa9");
    char cut[4];
    const char *one = "{\"error\":\"ab\xc3\xa9\"}";
    agent_oai_error_message(one, strlen(one), cut, sizeof cut);
    assert_string_equal(cut, "ab");

    /* not UTF-8: only the well-formed start is kept */
    assert_string_equal(s_msg("bad \xff\xfe gateway"), "bad");
    /* escaped control characters become spaces */
    assert_string_equal(s_msg("{\"error\":\"line1\\nline2\\t\"}"), "line1 line2");
}

static void test_not_terminated(void **state)
{
    (void) state;
    /* the body is read within len, not to a NUL */
    const char body[] = "{\"error\":\"short\"}GARBAGE";
    char out[64];
    agent_oai_error_message(body, 17, out, sizeof out);
    assert_string_equal(out, "short");
    char *exact = malloc(17);
    assert_non_null(exact);
    memcpy(exact, body, 17);
    agent_oai_error_message(exact, 17, out, sizeof out);
    assert_string_equal(out, "short");
    free(exact);
    /* a NUL inside: JSON is read up to it; the raw text shows it as a space */
    const char nul[] = "{\"error\":\"x\"}\0tail";
    agent_oai_error_message(nul, sizeof nul - 1, out, sizeof out);
    assert_string_equal(out, "x");
    const char raw[] = "oops\0tail";
    agent_oai_error_message(raw, sizeof raw - 1, out, sizeof out);
    assert_string_equal(out, "oops tail");
}

static void test_deep_nesting(void **state)
{
    (void) state;
    /* nested past the bound: not handed to yajl, read as text */
    size_t depth = 60000;
    char *body = malloc(2 * depth + 1);
    assert_non_null(body);
    memset(body, '[', depth);
    memset(body + depth, ']', depth);
    body[2 * depth] = '\0';
    char out[320];
    agent_oai_error_message(body, 2 * depth, out, sizeof out);
    assert_int_equal(strlen(out), AGENT_OAI_ERROR_TEXT_MAX);
    assert_int_equal(out[0], '[');
    free(body);
    /* at the bound it is JSON, and brackets inside strings do not count */
    assert_string_equal(s_msg("{\"error\":{\"message\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\","
                              "\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}"),
                        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[");
}

/* Out of memory for the copy yajl reads: the body's own start, as for a
 * body that is not JSON, still one line; nothing leaks. */
static void test_without_memory(void **state)
{
    (void) state;
    const char body[] = "{\"error\":{\"message\":\"slow down\"}}\n";
    char out[320];
    alloc_fail_arm(0);
    agent_oai_error_message(body, sizeof body - 1, out, sizeof out);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_string_equal(out, "{\"error\":{\"message\":\"slow down\"}}");
    agent_oai_error_message(body, sizeof body - 1, out, sizeof out);
    assert_string_equal(out, "slow down");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_shapes),
        cmocka_unit_test(test_fallbacks),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_not_terminated),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
