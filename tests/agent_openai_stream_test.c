/* tests/agent_openai_stream_test.c — the chat-completions stream reader:
 * real-format chunks (as OpenAI, llama.cpp and Ollama send them) fed whole,
 * in random-sized pieces and one byte at a time give the same text, tool
 * calls and usage; malformed chunks, early ends, every bound and an answer
 * with neither text nor a call (unless the model said "stop") are errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "agent/openai_stream.h"
#include "alloc_fail.h"
#include "proto/utf8.h"

typedef struct {
    char text[4096];
    size_t text_len;
    char thinking[1024];
    size_t thinking_len;
    int stop_after;          /* > 0: the nth content callback says stop */
    int calls;
    bool stop_thinking;      /* the reasoning callback says stop */
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
    return o->stop_thinking ? -1 : 0;
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
    assert_true(agent_oai_stream_done(s));
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


/* A chunk whose `error` is anything but null is a provider error (WIRE
 * §20.5), whether or not it says why; an [DONE] after it changes nothing.
 * Before, an error object without a string message was skipped, and the
 * [DONE] that llama.cpp and vLLM send after it made an empty answer. */
static void test_error_without_message(void **state)
{
    (void) state;
    static const char *const bodies[] = {
        "data: {\"error\":{\"code\":500,\"type\":\"server_error\"}}\n\ndata: [DONE]\n\n",
        "data: {\"error\":{\"message\":null,\"code\":\"overloaded\"}}\n\ndata: [DONE]\n\n",
        "data: {\"error\":503}\n\ndata: [DONE]\n\n",
        "data: {\"error\":true}\n\ndata: [DONE]\n\n",
        "data: {\"error\":1.5}\n\ndata: [DONE]\n\n",
        "data: {\"error\":[\"x\"]}\n\ndata: [DONE]\n\n",
        "data: {\"error\":\"\"}\n\ndata: [DONE]\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"so far\"}}]}\n\n"
        "data: {\"error\":{\"type\":\"server_error\"}}\n\n"
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        for (size_t step = 0; step < 2; step++)
            s_expect_error(bodies[i], step, "the server sent an error without a message");
    /* A null `error` (some proxies send one on every chunk) is no error. */
    static const char ok[] = "data: {\"error\":null,\"choices\":[{\"delta\":{\"content\":\"fine\"},"
                             "\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    s_out_t o = {0};
    agent_oai_stream_t *s = NULL;
    assert_int_equal(s_run(ok, 0, &o, &s), AGENT_OAI_OK);
    assert_string_equal(o.text, "fine");
    agent_oai_stream_destroy(&s);
}

/* The server's message becomes the reason as one line of UTF-8, cut on a
 * code point (it was cut at 200 octets wherever they fell, line breaks and
 * all). */
static void test_error_message_one_line(void **state)
{
    (void) state;
    char body[1024];
    int n = snprintf(body, sizeof body, "data: {\"error\":{\"message\":\"first\\nsecond\\tx");
    for (int i = 0; i < 150; i++)
        n += snprintf(body + n, sizeof body - (size_t) n, "\xc3\xa9");
    snprintf(body + n, sizeof body - (size_t) n, "\"}}\n\n");
    agent_oai_stream_t *s = NULL;
    s_out_t o = {0};
    assert_int_equal(s_run(body, 0, &o, &s), AGENT_OAI_ERROR);
    const char *why = agent_oai_stream_error(s);
    assert_true(strncmp(why, "first second x\xc3\xa9", 16) == 0);
    assert_null(strpbrk(why, "\n\r\t"));
    assert_true(proto_utf8_valid((const uint8_t *) why, strlen(why)));
    assert_in_range(strlen(why), 190, 200);
    agent_oai_stream_destroy(&s);
}

/* What a chunk may hold that nobody reads: booleans, numbers, keys too long
 * to match or holding a NUL, a `choices` that is an object, data after
 * [DONE]; a last line without its end is read at finish. */
static void test_ignored_parts(void **state)
{
    (void) state;
    static const char body[] =
        "data: {\"choices\":[{\"delta\":{\"content\\u0000x\":\"no\",\"a_key_longer_than_twenty_four_octets\":"
        "\"no\",\"flag\":true,\"p\":0.5,\"content\":\"yes\"},\"logprobs\":null}]}\n\n"
        "data: {\"choices\":{\"0\":{\"delta\":{\"content\":\"no\"}}}}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"a\"}},"
        "{\"index\":2,\"id\":\"c2\",\"function\":{\"name\":\"b\",\"arguments\":\"[1]\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
        "data: [DONE]\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\n"
        "data: {\"error\":\"late\"}";
    for (size_t step = 0; step < 3; step++) {
        s_out_t o = {0};
        agent_oai_stream_t *s = NULL;
        agent_oai_rc_t rc = s_run(body, step, &o, &s);
        if (rc != AGENT_OAI_OK)
            fail_msg("%s", agent_oai_stream_error(s));
        assert_string_equal(o.text, "yes");
        agent_completion_t c = {0};
        assert_int_equal(agent_oai_stream_take(s, &c), 0);
        assert_int_equal(c.n_calls, 2); /* index 1 never came: no call for it */
        assert_string_equal(c.calls[0].id.p, "call_0");
        assert_string_equal(c.calls[1].id.p, "c2");
        assert_string_equal(c.calls[1].arguments.p, "[1]");
        agent_completion_clear(&c);
        agent_oai_stream_destroy(&s);
    }
    /* A last line without its end that is not JSON; an error stays. */
    s_expect_error("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {oops", 0, "malformed");
    agent_oai_stream_t *s = agent_oai_stream_new(NULL);
    assert_int_equal(agent_oai_stream_feed(s, "data: [\n\n", 9), AGENT_OAI_ERROR);
    assert_int_equal(agent_oai_stream_finish(s), AGENT_OAI_ERROR);
    assert_non_null(strstr(agent_oai_stream_error(s), "malformed"));
    agent_oai_stream_destroy(&s);
}

/* Bounds not reached by test_bounds: an id or a name past its octets, in
 * one fragment or joined across chunks; more calls than the bound by
 * position; an event of many lines; the whole response. */
static void test_more_bounds(void **state)
{
    (void) state;
    char long_name[300];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    char body[4096];
    snprintf(body, sizeof body,
             "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"%s\"}]}}]}\n\n", long_name);
    s_expect_error(body, 0, "id passed 256");
    snprintf(body, sizeof body,
             "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"%s\"}}]}}]}\n\n",
             long_name);
    s_expect_error(body, 0, "tool name passed 256");
#define NAME3 "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":3,\"function\":{\"name\":\"%.200s\"}}]}}]}\n\n"
    snprintf(body, sizeof body, NAME3 NAME3, long_name, long_name);
#undef NAME3
    s_expect_error(body, 7, "tool call 3: its name passed 256");

    /* 65 calls with no index: by position, the 65th has no slot. */
    size_t n = (size_t) snprintf(body, sizeof body, "data: {\"choices\":[{\"delta\":{\"tool_calls\":[");
    for (int i = 0; i <= AGENT_OAI_TOOL_CALLS_MAX; i++)
        n += (size_t) snprintf(body + n, sizeof body - n, "%s{\"function\":{\"name\":\"f\"}}", i ? "," : "");
    snprintf(body + n, sizeof body - n, "]}}]}\n\n");
    s_expect_error(body, 0, "more than 64 tool calls");

    /* An event of two data lines, each within the line bound. */
    size_t half = AGENT_OAI_EVENT_MAX / 2 + 16;
    char *line = malloc(half + 8);
    assert_non_null(line);
    memcpy(line, "data: ", 6);
    memset(line + 6, 'x', half);
    line[6 + half] = '\n';
    agent_oai_stream_t *s = agent_oai_stream_new(NULL);
    assert_int_equal(agent_oai_stream_feed(s, line, half + 7), AGENT_OAI_OK);
    assert_int_equal(agent_oai_stream_feed(s, line, half + 7), AGENT_OAI_ERROR);
    assert_non_null(strstr(agent_oai_stream_error(s), "event passed"));
    agent_oai_stream_destroy(&s);

    /* The whole response: comments (keep-alives) past 16 MiB. */
    memset(line, ' ', half + 7);
    line[0] = ':';
    line[half + 6] = '\n';
    s = agent_oai_stream_new(NULL);
    agent_oai_rc_t rc = AGENT_OAI_OK;
    size_t fed = 0;
    while (rc == AGENT_OAI_OK && fed <= AGENT_OAI_RESPONSE_MAX) {
        rc = agent_oai_stream_feed(s, line, half + 7);
        fed += half + 7;
    }
    assert_int_equal(rc, AGENT_OAI_ERROR);
    assert_true(fed > AGENT_OAI_RESPONSE_MAX);
    assert_non_null(strstr(agent_oai_stream_error(s), "response passed"));
    agent_oai_stream_destroy(&s);
    free(line);
}

static void test_reasoning_stops(void **state)
{
    (void) state;
    s_out_t o = {.stop_thinking = true};
    agent_oai_stream_t *s = NULL;
    assert_int_equal(s_run(s_text_stream, 0, &o, &s), AGENT_OAI_ABORTED);
    assert_string_equal(o.thinking, "let me think");
    assert_string_equal(o.text, "");
    agent_oai_stream_destroy(&s);
}

/* Out of memory at each allocation of a read with text and tool calls, one
 * at a time: the read either ends as if nothing failed, or refuses with
 * "out of memory" (never a bound it did not pass), leaking nothing. */
static void test_without_memory(void **state)
{
    (void) state;
    static const char body[] =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\",\"tool_calls\":[{\"index\":0,\"id\":\"c\","
        "\"function\":{\"name\":\"send_message\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}},"
        "{\"index\":1,\"function\":{\"name\":\"peers\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n";
    bool done = false;
    int refused = 0;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !done; i++) {
        s_out_t o = {0};
        agent_oai_cb_t cb = {s_on_content, s_on_reasoning, &o};
        alloc_fail_arm(i);
        agent_oai_stream_t *s = agent_oai_stream_new(&cb);
        agent_completion_t c = {0};
        int rc = -1;
        if (s) {
            agent_oai_rc_t frc = AGENT_OAI_OK;
            for (size_t k = 0; k < sizeof body - 1 && frc == AGENT_OAI_OK; k += 5)
                frc = agent_oai_stream_feed(s, body + k, sizeof body - 1 - k < 5 ? sizeof body - 1 - k : 5);
            if (agent_oai_stream_finish(s) == AGENT_OAI_OK)
                rc = agent_oai_stream_take(s, &c);
        }
        bool failed = alloc_fail_disarm() > 0;
        done = !failed;
        if (rc == 0) {
            assert_int_equal(c.n_calls, 2);
            assert_string_equal(c.calls[0].arguments.p, "{\"a\":1}");
            assert_string_equal(c.calls[1].id.p, "call_1");
        } else {
            assert_true(failed);
            refused++;
            if (s && !strstr(agent_oai_stream_error(s), "out of memory"))
                fail_msg("allocation %ld: \"%s\"", i, agent_oai_stream_error(s));
        }
        agent_completion_clear(&c);
        agent_oai_stream_destroy(&s);
    }
    assert_true(done);
    assert_true(refused > 0);
}

/* [DONE] is seen once its event is whole (the blank line after it), so
 * the provider can stop the transfer there. */
static void test_done_is_seen(void **state)
{
    (void) state;
    agent_oai_stream_t *s = agent_oai_stream_new(NULL);
    assert_non_null(s);
    static const char text[] = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
    assert_int_equal(agent_oai_stream_feed(s, text, sizeof text - 1), AGENT_OAI_OK);
    assert_false(agent_oai_stream_done(s));
    static const char done[] = "data: [DONE]\n";
    assert_int_equal(agent_oai_stream_feed(s, done, sizeof done - 1), AGENT_OAI_OK);
    assert_false(agent_oai_stream_done(s));
    assert_int_equal(agent_oai_stream_feed(s, "\n", 1), AGENT_OAI_OK);
    assert_true(agent_oai_stream_done(s));
    assert_true(agent_oai_stream_saw_data(s));
    assert_int_equal(agent_oai_stream_finish(s), AGENT_OAI_OK);
    agent_oai_stream_destroy(&s);
}

/* An answer with no text and no tool call is one only when the model
 * said "stop"; otherwise the reason is the error, never an empty answer:
 * [DONE] alone, a reasoning model out of tokens before any text, a content
 * filter (a reason with a line end read as one line). A tool call cut by
 * max_tokens says so; one whose arguments are not a string is refused, and
 * so is content that is not a string. */
static void test_empty_answers(void **state)
{
    (void) state;
    for (size_t step = 0; step < 2; step++) {
        s_expect_error("data: [DONE]\n\n", step, "the stream ended with no text, no tool call and no finish_reason");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n"
                       "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n"
                       "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n",
                       step, "the answer reached the token limit (finish_reason length) before any text");
        s_expect_error("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n", step,
                       "the answer ended with finish_reason content_filter and no text");
        s_expect_error("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"a\\nb\"}]}\n\n", step,
                       "finish_reason a b and no text");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":"
                       "{\"name\":\"peers\",\"arguments\":\"{\\\"a\\\": [1, \"}}]}}]}\n\n"
                       "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n",
                       step, "tool call 0 (peers): its arguments were cut at the token limit (finish_reason length)");
        /* Arguments as an object (not its JSON text), or any other
         * non-string: refused, never run as {}; null is none. */
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":"
                       "{\"name\":\"send_message\",\"arguments\":{\"peer\":\"bob\"}}}]}}]}\n\ndata: [DONE]\n\n",
                       step, "a tool call's arguments are not a JSON string");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"peers\","
                       "\"arguments\":[1]}}]}}]}\n\n", step, "a tool call's arguments are not a JSON string");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"peers\","
                       "\"arguments\":7}}]}}]}\n\n", step, "a tool call's arguments are not a JSON string");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"peers\","
                       "\"arguments\":true}}]}}]}\n\n", step, "a tool call's arguments are not a JSON string");
        /* Content in parts, or a number: refused, never dropped. */
        s_expect_error("data: {\"choices\":[{\"delta\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]},"
                       "\"finish_reason\":\"stop\"}]}\n\n", step, "a chunk's content is not a string");
        s_expect_error("data: {\"choices\":[{\"delta\":{\"content\":1}}]}\n\n", step,
                       "a chunk's content is not a string");
        s_out_t o = {0};
        agent_oai_stream_t *s = NULL;
        assert_int_equal(s_run("data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"peers\","
                               "\"arguments\":null}}]},\"finish_reason\":\"tool_calls\"}]}\n\n", step, &o, &s),
                         AGENT_OAI_OK);
        agent_completion_t c = {0};
        assert_int_equal(agent_oai_stream_take(s, &c), 0);
        assert_int_equal(c.n_calls, 1);
        assert_string_equal(c.calls[0].arguments.p, "{}");
        agent_completion_clear(&c);
        agent_oai_stream_destroy(&s);
        /* The model chose to say nothing: an empty answer. */
        memset(&o, 0, sizeof o);
        assert_int_equal(s_run("data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n"
                               "data: [DONE]\n\n", step, &o, &s),
                         AGENT_OAI_OK);
        assert_int_equal(agent_oai_stream_take(s, &c), 0);
        assert_int_equal(c.n_calls, 0);
        agent_oai_stream_destroy(&s);
        /* Text with a "length" reason is the text (cut, but an answer). */
        assert_int_equal(s_run("data: {\"choices\":[{\"delta\":{\"content\":\"ab\"},\"finish_reason\":\"length\"}]}"
                               "\n\n",
                               step, &o, &s),
                         AGENT_OAI_OK);
        assert_int_equal(agent_oai_stream_take(s, &c), 0);
        agent_oai_stream_destroy(&s);
    }
}

/* A body with no `data:` line is no event stream: the provider says what
 * came instead of "ended before [DONE]". Comments and other fields are
 * not data. */
static void test_no_data_line(void **state)
{
    (void) state;
    static const char *const bodies[] = {
        "{\"error\":{\"message\":\"quota\"}}", "", ": keep-alive\n\nevent: ping\nid: 1\n\n", "<html>\r\n</html>\r\n",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        agent_oai_stream_t *s = agent_oai_stream_new(NULL);
        assert_non_null(s);
        (void) agent_oai_stream_feed(s, bodies[i], strlen(bodies[i]));
        assert_int_equal(agent_oai_stream_finish(s), AGENT_OAI_ERROR);
        assert_false(agent_oai_stream_saw_data(s));
        agent_oai_stream_destroy(&s);
    }
    agent_oai_stream_t *s = agent_oai_stream_new(NULL);
    assert_int_equal(agent_oai_stream_feed(s, "data:", 5), AGENT_OAI_OK);
    assert_false(agent_oai_stream_saw_data(s)); /* a line is read at its end */
    assert_int_equal(agent_oai_stream_finish(s), AGENT_OAI_ERROR);
    assert_true(agent_oai_stream_saw_data(s));
    agent_oai_stream_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_done_is_seen),       cmocka_unit_test(test_empty_answers),
        cmocka_unit_test(test_no_data_line),
        cmocka_unit_test(test_text_any_split),     cmocka_unit_test(test_crlf_and_no_done),
        cmocka_unit_test(test_tool_calls_assembled), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bounds),             cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_error_without_message), cmocka_unit_test(test_error_message_one_line),
        cmocka_unit_test(test_ignored_parts),      cmocka_unit_test(test_more_bounds),
        cmocka_unit_test(test_reasoning_stops),    cmocka_unit_test(test_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
