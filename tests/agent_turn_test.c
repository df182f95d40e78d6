/* tests/agent_turn_test.c — the agent's tool loop with the scripted provider,
 * driven through the agent_io_t seam instead of ZeroMQ: what the router
 * would send (tool results, steers, stops) is released after a given number
 * of PARTIALs, so every run is the same whatever the machine's speed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent/provider.h"
#include "agent/turn.h"
#include "proto/worker_msg.h"

#define S(lit) ((proto_worker_str_t){(lit), sizeof(lit) - 1})
#define FEED_MAX 32
#define SENT_MAX 256

static const uint8_t s_tid[PROTO_UUID_LEN] = {0x01, 0x90, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 7};

/* The fake link: requests released once `after` PARTIALs have gone out. */
typedef struct {
    struct {
        uint8_t *body;
        size_t len;
        size_t after;
    } feed[FEED_MAX];
    size_t n_feed, next_feed;
    proto_worker_reply_t sent[SENT_MAX];
    size_t n_sent, n_partials, n_finals;
    int fail_recv_after;   /* > 0: recv fails once this many partials went out */
} s_link_t;

static int s_recv(void *ud, uint8_t **body, size_t *len, int timeout_ms)
{
    s_link_t *l = ud;
    if (l->fail_recv_after > 0 && l->n_partials >= (size_t) l->fail_recv_after)
        return -1;
    if (l->next_feed < l->n_feed && l->feed[l->next_feed].after <= l->n_partials) {
        *body = l->feed[l->next_feed].body;
        *len = l->feed[l->next_feed].len;
        l->feed[l->next_feed].body = NULL;
        l->next_feed++;
        return 1;
    }
    if (timeout_ms > 0)
        usleep((useconds_t) (timeout_ms > 20 ? 20 : timeout_ms) * 1000u);
    return 0;
}

static int s_send(void *ud, bool final, const uint8_t *body, size_t len)
{
    s_link_t *l = ud;
    assert_true(l->n_sent < SENT_MAX);
    proto_worker_error_t err;
    proto_worker_reply_t *r = &l->sent[l->n_sent];
    assert_int_equal(proto_worker_reply_decode(body, len, r, &err), 0);
    assert_int_equal(final, r->type == PROTO_WORKER_REPLY_FINAL);
    if (final) {
        assert_memory_equal(r->final.turn_id, s_tid, PROTO_UUID_LEN);
        l->n_finals++;
    } else {
        assert_memory_equal(r->partial.turn_id, s_tid, PROTO_UUID_LEN);
        assert_int_equal(r->partial.seq, l->n_partials); /* in order, from 0, none skipped */
        assert_int_equal(l->n_finals, 0);                /* nothing after the FINAL */
        l->n_partials++;
    }
    l->n_sent++;
    return 0;
}

static void s_feed(s_link_t *l, size_t after, const proto_worker_request_t *r)
{
    proto_worker_error_t err;
    assert_true(l->n_feed < FEED_MAX);
    assert_int_equal(proto_worker_request_encode(r, &l->feed[l->n_feed].body, &l->feed[l->n_feed].len, &err), 0);
    l->feed[l->n_feed].after = after;
    l->n_feed++;
}

static void s_feed_raw(s_link_t *l, size_t after, const char *bytes, size_t n)
{
    l->feed[l->n_feed].body = malloc(n);
    memcpy(l->feed[l->n_feed].body, bytes, n);
    l->feed[l->n_feed].len = n;
    l->feed[l->n_feed].after = after;
    l->n_feed++;
}

static void s_feed_result(s_link_t *l, size_t after, const char *id, const char *json, bool is_error)
{
    proto_worker_request_t r = {.type = PROTO_WORKER_REQ_TOOL_RESULT};
    memcpy(r.tool_result.turn_id, s_tid, PROTO_UUID_LEN);
    r.tool_result.id = (proto_worker_str_t){id, strlen(id)};
    r.tool_result.result = (proto_worker_str_t){json, strlen(json)};
    r.tool_result.is_error = is_error;
    s_feed(l, after, &r);
}

static void s_feed_control(s_link_t *l, size_t after, proto_worker_req_type_t type, const char *content,
                           const uint8_t *tid)
{
    proto_worker_request_t r = {.type = type};
    memcpy(r.control.turn_id, tid ? tid : s_tid, PROTO_UUID_LEN);
    if (content)
        r.control.content = (proto_worker_str_t){content, strlen(content)};
    s_feed(l, after, &r);
}

static void s_link_free(s_link_t *l)
{
    for (size_t i = 0; i < l->n_sent; i++)
        proto_worker_reply_clear(&l->sent[i]);
    for (size_t i = 0; i < l->n_feed; i++)
        free(l->feed[i].body);
}

static proto_worker_tool_spec_t s_router_tools[] = {
    {S("peers"), S("List the trusted peers"), S("{\"type\":\"object\"}"), PROTO_WORKER_EXEC_ROUTER},
    {S("send_message"), S("Send a message"), S("{\"type\":\"object\"}"), PROTO_WORKER_EXEC_ROUTER},
    {S("send_request"), S("Send a request"), S("{\"type\":\"object\"}"), PROTO_WORKER_EXEC_ROUTER},
};

static proto_worker_turn_t s_turn(const char *content)
{
    proto_worker_turn_t t = {0};
    memcpy(t.turn_id, s_tid, PROTO_UUID_LEN);
    t.session_id = S("s1");
    t.message.role = PROTO_WORKER_ROLE_USER;
    t.message.content = (proto_worker_str_t){content, strlen(content)};
    t.tools = s_router_tools;
    t.n_tools = 3;
    t.max_tool_iterations = 60;
    t.turn_timeout_s = 600;
    t.origin.channel = PROTO_WORKER_CHANNEL_WS;
    return t;
}

/* Runs the turn with the scripted provider. */
static agent_turn_outcome_t s_run(s_link_t *l, const proto_worker_turn_t *t)
{
    agent_provider_t *p = agent_provider_scripted_new();
    assert_non_null(p);
    agent_io_t io = {s_recv, s_send, l};
    agent_turn_outcome_t o = agent_turn_run(p, NULL, &io, t);
    agent_provider_destroy(&p);
    assert_null(p);
    return o;
}

static const proto_worker_final_t *s_final(const s_link_t *l)
{
    assert_int_equal(l->n_finals, 1);
    const proto_worker_reply_t *r = &l->sent[l->n_sent - 1];
    assert_int_equal(r->type, PROTO_WORKER_REPLY_FINAL);
    return &r->final;
}

static const proto_worker_event_t *s_ev(const s_link_t *l, size_t i)
{
    assert_true(i < l->n_sent);
    assert_int_equal(l->sent[i].type, PROTO_WORKER_REPLY_PARTIAL);
    return &l->sent[i].partial.event;
}

static void s_assert_text(proto_worker_str_t s, const char *want)
{
    assert_non_null(s.p);
    if (s.len != strlen(want) || memcmp(s.p, want, s.len) != 0)
        fail_msg("got \"%.*s\", want \"%s\"", (int) s.len, s.p, want);
}

/* ------------------------------------------------------------ tests */

static void test_echo_word_by_word(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("hello  big world");
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    assert_int_equal(s_ev(&l, 0)->type, PROTO_WORKER_EV_LLM_REQUEST);
    s_assert_text(s_ev(&l, 0)->provider, "scripted");
    assert_int_equal(s_ev(&l, 0)->iteration, 0);
    static const char *words[] = {"echo: ", "hello  ", "big ", "world"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(s_ev(&l, 1 + i)->type, PROTO_WORKER_EV_CHUNK);
        s_assert_text(s_ev(&l, 1 + i)->text, words[i]);
    }
    assert_int_equal(l.n_sent, 6);
    const proto_worker_final_t *f = s_final(&l);
    assert_int_equal(f->type, PROTO_WORKER_FINAL_DONE);
    s_assert_text(f->full_response, "echo: hello  big world");
    assert_int_equal(f->tool_iterations, 0);
    assert_false(f->has_tokens_used);
    s_link_free(&l);
}

static void test_peers_tool_roundtrip(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    /* llm_request (0), tool_call (1): then the router answers. */
    s_feed_result(&l, 2, "call_0", "[{\"name\":\"bob\"}]", false);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    assert_int_equal(s_ev(&l, 1)->type, PROTO_WORKER_EV_TOOL_CALL);
    s_assert_text(s_ev(&l, 1)->call.id, "call_0");
    s_assert_text(s_ev(&l, 1)->call.name, "peers");
    s_assert_text(s_ev(&l, 1)->call.arguments, "{}");
    assert_int_equal(s_ev(&l, 2)->type, PROTO_WORKER_EV_TOOL_RESULT);
    s_assert_text(s_ev(&l, 2)->id, "call_0");
    s_assert_text(s_ev(&l, 2)->result, "[{\"name\":\"bob\"}]");
    assert_false(s_ev(&l, 2)->is_error);
    assert_int_equal(s_ev(&l, 3)->type, PROTO_WORKER_EV_LLM_REQUEST);
    assert_int_equal(s_ev(&l, 3)->iteration, 1);
    const proto_worker_final_t *f = s_final(&l);
    assert_int_equal(f->type, PROTO_WORKER_FINAL_DONE);
    s_assert_text(f->full_response, "peers returned: [{\"name\":\"bob\"}]");
    assert_int_equal(f->tool_iterations, 1);
    s_link_free(&l);
}

static void test_send_and_request_arguments(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/send bob hi \"there\"");
    s_feed_result(&l, 2, "call_0", "{\"status\":\"acked\"}", false);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_assert_text(s_ev(&l, 1)->call.name, "send_message");
    s_assert_text(s_ev(&l, 1)->call.arguments, "{\"peer\":\"bob\",\"body\":\"hi \\\"there\\\"\"}");
    s_assert_text(s_final(&l)->full_response, "send_message returned: {\"status\":\"acked\"}");
    s_link_free(&l);

    memset(&l, 0, sizeof l);
    t = s_turn("/request bob sum {\"a\": [1, 2]}");
    s_feed_result(&l, 2, "call_0", "{\"status\":\"offline\"}", true);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_assert_text(s_ev(&l, 1)->call.name, "send_request");
    s_assert_text(s_ev(&l, 1)->call.arguments, "{\"peer\":\"bob\",\"intent\":\"sum\",\"params\":{\"a\": [1, 2]}}");
    assert_true(s_ev(&l, 2)->is_error);
    s_link_free(&l);

    /* Params that are not JSON: a provider error, before any tool runs. */
    memset(&l, 0, sizeof l);
    t = s_turn("/request bob sum {nope");
    assert_int_equal(s_run(&l, &t), AGENT_TURN_PROVIDER_ERROR);
    assert_int_equal(s_final(&l)->type, PROTO_WORKER_FINAL_ERROR);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_PROVIDER_ERROR);
    s_link_free(&l);

    /* A command missing its arguments is just text. */
    memset(&l, 0, sizeof l);
    t = s_turn("/send bob");
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_assert_text(s_final(&l)->full_response, "echo: /send bob");
    s_link_free(&l);
}

static void test_think_and_fail(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/think a plan");
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    assert_int_equal(s_ev(&l, 1)->type, PROTO_WORKER_EV_THINKING);
    s_assert_text(s_ev(&l, 1)->text, "a plan");
    s_assert_text(s_final(&l)->full_response, "echo: /think a plan");
    s_link_free(&l);

    memset(&l, 0, sizeof l);
    t = s_turn("/fail");
    assert_int_equal(s_run(&l, &t), AGENT_TURN_PROVIDER_ERROR);
    assert_int_equal(l.n_sent, 2); /* llm_request, then the FINAL */
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_PROVIDER_ERROR);
    s_assert_text(s_final(&l)->message, "scripted provider: /fail");
    s_link_free(&l);
}

static void test_stop_during_sleep(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/sleep 600000");
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STOP, NULL, NULL);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_STOPPED);
    assert_int_equal(s_final(&l)->type, PROTO_WORKER_FINAL_STOPPED);
    assert_int_equal(l.n_partials, 1);
    s_link_free(&l);
}

static void test_stop_while_awaiting_tool(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    /* A result for a call never made, a control for another turn, and a
     * body that is no request at all are all ignored; the stop is not. */
    static const uint8_t other[PROTO_UUID_LEN] = {9};
    s_feed_result(&l, 2, "call_9", "[]", false);
    s_feed_control(&l, 2, PROTO_WORKER_REQ_STOP, NULL, other);
    s_feed_raw(&l, 2, "\xa1\x64type\x64" "done", 11);
    s_feed_control(&l, 2, PROTO_WORKER_REQ_STOP, NULL, NULL);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_STOPPED);
    assert_int_equal(l.n_partials, 2);
    s_link_free(&l);
}

static void test_steer_joins_at_boundary(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    /* The steer comes while the tool runs; the result follows. */
    s_feed_control(&l, 2, PROTO_WORKER_REQ_STEER, "and be quick", NULL);
    s_feed_result(&l, 2, "call_0", "[]", false);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    /* The next round answers the steer: it is the last message. */
    s_assert_text(s_final(&l)->full_response, "echo: and be quick");
    assert_int_equal(s_final(&l)->tool_iterations, 1);
    s_link_free(&l);

    /* A steer during an answer that would end the turn gets its own round. */
    memset(&l, 0, sizeof l);
    t = s_turn("/sleep 100");
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STEER, "again", NULL);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_assert_text(s_final(&l)->full_response, "slept 100 msecho: again");
    s_link_free(&l);
}

/* Steers past AGENT_STEERS_MAX while a tool runs are dropped: the round
 * after the tool answers the last one kept, not the one dropped. */
static void test_steers_past_the_bound_are_dropped(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    char text[AGENT_STEERS_MAX + 1][16];
    for (int i = 0; i <= AGENT_STEERS_MAX; i++) {
        snprintf(text[i], sizeof text[i], "steer%d", i);
        s_feed_control(&l, 2, PROTO_WORKER_REQ_STEER, text[i], NULL);
    }
    s_feed_result(&l, 2, "call_0", "[]", false);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    char want[32];
    snprintf(want, sizeof want, "echo: steer%d", AGENT_STEERS_MAX - 1);
    s_assert_text(s_final(&l)->full_response, want);
    s_link_free(&l);
}

static void test_tool_errors(void **state)
{
    (void) state;
    /* Not offered: the loop answers the call itself, as an error. */
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    t.n_tools = 0;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    assert_true(s_ev(&l, 2)->is_error);
    s_assert_text(s_ev(&l, 2)->result, "{\"error\":\"unknown tool peers\"}");
    s_link_free(&l);

    /* Offered for the worker to run: no worker tool exists yet. */
    memset(&l, 0, sizeof l);
    proto_worker_tool_spec_t w = {S("peers"), S("x"), S("{}"), PROTO_WORKER_EXEC_WORKER};
    t.tools = &w;
    t.n_tools = 1;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_assert_text(s_ev(&l, 2)->result, "{\"error\":\"no worker runs the tool peers\"}");
    s_link_free(&l);

    /* No tool iterations allowed. */
    memset(&l, 0, sizeof l);
    t = s_turn("/peers");
    t.max_tool_iterations = 0;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_AGENT_ERROR);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_ERROR);
    s_link_free(&l);
}

static void test_timeout(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/sleep 600000");
    t.turn_timeout_s = 1;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_TIMEOUT);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_ERROR);
    s_assert_text(s_final(&l)->message, "the turn timed out after 1 s");
    s_link_free(&l);
}

static void test_link_lost_and_init_failed(void **state)
{
    (void) state;
    s_link_t l = {.fail_recv_after = 1};
    proto_worker_turn_t t = s_turn("/sleep 600000");
    assert_int_equal(s_run(&l, &t), AGENT_TURN_LINK_LOST);
    s_link_free(&l);

    memset(&l, 0, sizeof l);
    agent_io_t io = {s_recv, s_send, &l};
    assert_int_equal(agent_turn_run(NULL, "openai: OPENAI_API_KEY is not set", &io, &t), AGENT_TURN_INIT_FAILED);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_INIT_FAILED);
    s_assert_text(s_final(&l)->message, "openai: OPENAI_API_KEY is not set");
    s_link_free(&l);
}

/* History reaches the provider: a turn whose history ends in tool results
 * is not how turns start, but the scripted provider reads the conversation
 * it is given, message by message. */
static void test_history_is_conversation(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_chat_msg_t hist[] = {
        {PROTO_WORKER_ROLE_SYSTEM, S("sys"), {0}, NULL, 0, false},
        {PROTO_WORKER_ROLE_ASSISTANT, S("earlier"), {0}, NULL, 0, false},
    };
    proto_worker_turn_t t = s_turn("now");
    t.history = hist;
    t.n_history = 2;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_assert_text(s_final(&l)->full_response, "echo: now");
    s_link_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_word_by_word),
        cmocka_unit_test(test_peers_tool_roundtrip),
        cmocka_unit_test(test_send_and_request_arguments),
        cmocka_unit_test(test_think_and_fail),
        cmocka_unit_test(test_stop_during_sleep),
        cmocka_unit_test(test_stop_while_awaiting_tool),
        cmocka_unit_test(test_steer_joins_at_boundary),
        cmocka_unit_test(test_steers_past_the_bound_are_dropped),
        cmocka_unit_test(test_tool_errors),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_link_lost_and_init_failed),
        cmocka_unit_test(test_history_is_conversation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
