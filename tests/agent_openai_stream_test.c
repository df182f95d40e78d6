/* tests/agent_openai_stream_test.c — the chat-completions stream reader:
 * real-format chunks (as OpenAI, llama.cpp and Ollama send them) fed whole,
 * in random-sized pieces and one byte at a time give the same text, tool
 * calls and usage; malformed chunks, early ends and every bound are errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "agent/openai_stream.h"

typedef struct {
    char text[4096];
    size_t text_len;
    char thinking[1024];
    size_t thinking_len;
    int stop_after;          /* > 0: the nth content callback says stop */
    int calls;
} s_out_t;

static int s_on_content(void *ud, const char *p, size_t n)
{
    s_out_t *o = ud;
    assert_true(o->text_len + n < sizeof o->text);
    memcpy(o->text + o->text_len, p, n);
    o->text_len += n;
    o->text[o->text_len] = '\0';
    return ++o->calls == o->stop_after ? -1 : 0;
}

static int s_on_reasoning(void *ud, const char *p, size_t n)
{
    s_out_t *o = ud;
    assert_true(o->thinking_len + n < sizeof o->thinking);
    memcpy(o->thinking + o->thinking_len, p, n);
    o->thinking_len += n;
    o->thinking[o->thinking_len] = '\0';
    return 0;
}

/* Feeds body in pieces of `step` bytes (0: all at once), then finishes. */
static agent_oai_rc_t s_run(const char *body, size_t step, s_out_t *o, agent_oai_stream_t **out)
{
    agent_oai_cb_t cb = {s_on_content, s_on_reasoning, o};
    agent_oai_stream_t *s = agent_oai_stream_new(&cb);
    assert_non_null(s);
    size_t n = strlen(body);
    agent_oai_rc_t rc = AGENT_OAI_OK;
    for (size_t i = 0; i < n && rc == AGENT_OAI_OK;) {
        size_t k = step ? step : n;
        if (k > n - i)
            k = n - i;
        rc = agent_oai_stream_feed(s, body + i, k);
        i += k;
    }
    if (rc == AGENT_OAI_OK)
        rc = agent_oai_stream_finish(s);
    *out = s;
    return rc;
}

static const char s_text_stream[] =
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\","
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
    "\"finish_reason\":null}]}\n\n"
    ": keep-alive comment\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"let me "
    "think\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},"
    "\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\\u00f6rld \\\"x\\\"\\n\"},"
    "\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,"
    "\"total_tokens\":12}}\n\n"
    "data: [DONE]\n\n";

static void s_check_text_stream(agent_oai_rc_t rc, agent_oai_stream_t *s, s_out_t *o)
{
    if (rc != AGENT_OAI_OK)
        fail_msg("rc %d: %s", rc, agent_oai_stream_error(s));
    assert_string_equal(o->text, "Hello w\xc3\xb6rld \"x\"\n");
    assert_string_equal(o->thinking, "let me think");
    assert_string_equal(agent_oai_stream_finish_reason(s), "stop");
    assert_true(agent_oai_stream_emitted(s));
    agent_completion_t c = {0};
    assert_int_equal(agent_oai_stream_take(s, &c), 0);
    assert_int_equal(c.n_calls, 0);
    assert_true(c.has_tokens_used);
    assert_int_equal(c.tokens_used, 12);
    agent_completion_clear(&c);
}

static void test_text_any_split(void **state)
{
    (void) state;
    static const size_t steps[] = {0, 1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        s_out_t o = {0};
        agent_oai_stream_t *s = NULL;
        agent_oai_rc_t rc = s_run(s_text_stream, steps[i], &o, &s);
        s_check_text_stream(rc, s, &o);
        agent_oai_stream_destroy(&s);
        assert_null(s);
    }
}

/* CRLF line ends, "data:" without a space, no [DONE] but a finish_reason. */
static void test_crlf_and_no_done(void **state)
{
    (void) state;
    static const char body[] = "data:{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"
                               "event: x\r\nid: 3\r\n"
                               "data: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"length\"}]}\r\n";
    for (size_t step = 0; step < 3; step++) {
        s_out_t o = {0};
        agent_oai_stream_t *s = NULL;
        assert_int_equal(s_run(body, step, &o, &s), AGENT_OAI_OK);
        assert_string_equal(o.text, "ab");
        assert_string_equal(agent_oai_stream_finish_reason(s), "length");
        agent_oai_stream_destroy(&s);
    }
}

/* Tool calls as OpenAI streams them: id and name first, the arguments in
 * fragments, two calls interleaved by index; one server puts `index` last. */
static void test_tool_calls_assembled(void **state)
{
    (void) state;
    static const char body[] =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
        "[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"send_message\","
        "\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
        "\"{\\\"pe\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"peers\"},"
        "\"id\":\"call_def\",\"index\":1}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
        "\"er\\\": \\\"bob\\\", \\\"body\\\": \\\"hi\\\"}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
        "data: [DONE]\n\n";
    for (size_t step = 0; step < 4; step++) {
        s_out_t o = {0};
        agent_oai_stream_t *s = NULL;
        agent_oai_rc_t rc = s_run(body, step, &o, &s);
        if (rc != AGENT_OAI_OK)
            fail_msg("%s", agent_oai_stream_error(s));
        agent_completion_t c = {0};
        assert_int_equal(agent_oai_stream_take(s, &c), 0);
        assert_int_equal(c.n_calls, 2);
        assert_string_equal(c.calls[0].id.p, "call_abc");
        assert_string_equal(c.calls[0].name.p, "send_message");
        assert_string_equal(c.calls[0].arguments.p, "{\"peer\": \"bob\", \"body\": \"hi\"}");
        assert_string_equal(c.calls[1].id.p, "call_def");
        assert_string_equal(c.calls[1].name.p, "peers");
        assert_string_equal(c.calls[1].arguments.p, "{}");
        assert_false(c.has_tokens_used);
        assert_string_equal(o.text, "");
        agent_completion_clear(&c);
        agent_oai_stream_destroy(&s);
    }
}

static void s_expect_error(const char *body, size_t step, const char *want)
{
    s_out_t o = {0};
    agent_oai_stream_t *s = NULL;
    agent_oai_rc_t rc = s_run(body, step, &o, &s);
    if (rc == AGENT_OAI_OK) {
        agent_completion_t c = {0};
        int t = agent_oai_stream_take(s, &c);
        agent_completion_clear(&c);
        if (t == 0)
            fail_msg("accepted: %.60s", body);
        rc = AGENT_OAI_ERROR;
    }
    assert_int_equal(rc, AGENT_OAI_ERROR);
    if (!strstr(agent_oai_stream_error(s), want))
        fail_msg("error \"%s\" lacks \"%s\"", agent_oai_stream_error(s), want);
    /* Sticky: more input changes nothing. */
    assert_int_equal(agent_oai_stream_feed(s, "data: [DONE]\n\n", 14), AGENT_OAI_ERROR);
    agent_oai_stream_destroy(&s);
}

static void test_malformed(void **state)
{
    (void) state;
    for (size_t step = 0; step < 2; step++) {
        s_expect_error("data: {\"choices\": [\n\n", step, "malformed");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]} trailing\n\n", step, "malformed");
        s_expect_error("data: not json\n\n", step, "malformed");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n", step, "ended before");
        s_expect_error("data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\"}}\n\n", step,
                       "Rate limit reached");
        s_expect_error("data: {\"error\":\"model not loaded\"}\n\n", step, "model not loaded");
        /* Bad UTF-8 in a string (yajl refuses it, or we do). */
        s_expect_error("data: {\"choices\":[{\"delta\":{\"content\":\"\xc3\x28\"}}]}\n\n", step, "");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":99,\"function\":{\"name\":"
                       "\"x\"}}]}}]}\n\ndata: [DONE]\n\n",
                       step, "index 99");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\"}]}}]}\n\n"
                       "data: [DONE]\n\n",
                       step, "no function name");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"x\","
                       "\"arguments\":\"{oops\"}}]}}]}\n\ndata: [DONE]\n\n",
                       step, "not JSON");
    }
}

static void test_bounds(void **state)
{
    (void) state;
    /* A line past the bound (no newline ever comes). */
    size_t n = AGENT_OAI_LINE_MAX + 16;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memcpy(big, "data: ", 6);
    memset(big + 6, 'x', n - 6);
    big[n] = '\0';
    s_expect_error(big, 4096, "line passed");

    /* Tool arguments past their bound, in fragments that are each small. */
    agent_oai_stream_t *s = agent_oai_stream_new(NULL);
    static const char frag[] = "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":"
                               "\"x\",\"arguments\":\"%s\"}}]}}]}\n\n";
    char *piece = malloc(70000);
    memset(piece, 'a', 60000);
    piece[60000] = '\0';
    char *line = malloc(70100);
    snprintf(line, 70100, frag, piece);
    agent_oai_rc_t rc = AGENT_OAI_OK;
    for (int i = 0; i < 10 && rc == AGENT_OAI_OK; i++)
        rc = agent_oai_stream_feed(s, line, strlen(line));
    assert_int_equal(rc, AGENT_OAI_ERROR);
    assert_non_null(strstr(agent_oai_stream_error(s), "arguments passed"));
    agent_oai_stream_destroy(&s);
    free(piece);
    free(line);
    free(big);

    /* Nesting past the bound. */
    char deep[256] = "data: ";
    for (int i = 0; i < AGENT_OAI_DEPTH_MAX + 2; i++)
        strcat(deep, "[");
    strcat(deep, "\n\n");
    s_expect_error(deep, 0, "deeper");
}

static void test_callback_stops(void **state)
{
    (void) state;
    s_out_t o = {.stop_after = 1};
    agent_oai_stream_t *s = NULL;
    assert_int_equal(s_run(s_text_stream, 5, &o, &s), AGENT_OAI_ABORTED);
    assert_string_equal(o.text, "Hello");
    agent_oai_stream_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_any_split),     cmocka_unit_test(test_crlf_and_no_done),
        cmocka_unit_test(test_tool_calls_assembled), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bounds),             cmocka_unit_test(test_callback_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
