/* tests/agent_turn_test.c — the agent's tool loop with the scripted provider
 * (and a fake one for what it never does), driven through the agent_io_t
 * seam instead of ZeroMQ: what the router would send (tool results, steers,
 * stops) is released after a given number of PARTIALs, or once the fake
 * provider opens a gate, so every run is the same whatever the machine's
 * speed. */
#include <inttypes.h>
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
#include "alloc_fail.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "proto/worker_msg.h"
#include "router/log.h"

#define S(lit) ((proto_worker_str_t){(lit), sizeof(lit) - 1})
#define FEED_MAX 128
#define SENT_MAX 256
/* Bytes of replies a link holds undecoded (see s_link_t.hold). */
#define HELD_MAX 32768

static const uint8_t s_tid[PROTO_UUID_LEN] = {0x01, 0x90, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 7};

/* The fake link: requests released once `after` PARTIALs have gone out
 * and the link's gate (opened by a fake provider) reached `gate`. */
typedef struct {
    struct {
        uint8_t *body;
        size_t len;
        size_t after;
        unsigned gate;
    } feed[FEED_MAX];
    size_t n_feed, next_feed;
    unsigned gate;
    proto_worker_reply_t sent[SENT_MAX];
    size_t n_sent, n_partials, n_finals;
    int fail_recv_after;   /* > 0: recv fails once this many partials went out */
    int give_up_after;     /* > 0: recv says -2 (the turn given up below) once this many went out */
    size_t fail_at;        /* > 0: the fail_at-th send (from 1) and every later one fail */
    bool fail_final;       /* the FINAL's send fails */
    size_t n_attempts;     /* sends tried */
    bool lost;             /* a send failed */
    int max_wait_ms;       /* the longest recv timeout asked for */
    size_t taken_at[SENT_MAX]; /* requests handed out, by PARTIALs sent before */
    /* hold: replies are copied here undecoded, for runs whose allocations
     * may fail (decoding allocates); s_link_release decodes them after. */
    bool hold;
    uint8_t held[HELD_MAX];
    size_t held_len, n_held;
    struct {
        size_t at, len;
        bool final;
    } held_at[SENT_MAX];
} s_link_t;

static int s_recv(void *ud, uint8_t **body, size_t *len, int timeout_ms)
{
    s_link_t *l = ud;
    if (timeout_ms > l->max_wait_ms)
        l->max_wait_ms = timeout_ms;
    if (l->fail_recv_after > 0 && l->n_partials >= (size_t) l->fail_recv_after)
        return -1;
    if (l->give_up_after > 0 && l->n_partials >= (size_t) l->give_up_after)
        return -2;
    if (l->next_feed < l->n_feed && l->feed[l->next_feed].after <= l->n_partials &&
        l->feed[l->next_feed].gate <= l->gate) {
        *body = l->feed[l->next_feed].body;
        *len = l->feed[l->next_feed].len;
        l->feed[l->next_feed].body = NULL;
        l->next_feed++;
        l->taken_at[l->n_partials < SENT_MAX ? l->n_partials : SENT_MAX - 1]++;
        return 1;
    }
    if (timeout_ms > 0)
        usleep((useconds_t) (timeout_ms > 20 ? 20 : timeout_ms) * 1000u);
    return 0;
}

/* Decodes one reply and checks its place in the stream. */
static void s_take(s_link_t *l, bool final, const uint8_t *body, size_t len)
{
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
}

static int s_send(void *ud, bool final, const uint8_t *body, size_t len)
{
    s_link_t *l = ud;
    assert_false(l->lost); /* nothing is sent after a send failed */
    if (l->hold) {
        assert_true(l->n_held < SENT_MAX && len <= HELD_MAX - l->held_len);
        memcpy(l->held + l->held_len, body, len);
        l->held_at[l->n_held].at = l->held_len;
        l->held_at[l->n_held].len = len;
        l->held_at[l->n_held].final = final;
        l->held_len += len;
        l->n_held++;
    } else {
        s_take(l, final, body, len);
    }
    size_t attempt = ++l->n_attempts;
    if ((l->fail_at > 0 && attempt >= l->fail_at) || (final && l->fail_final)) {
        l->lost = true;
        return -1;
    }
    return 0;
}

/* Decodes what a held link kept (run with allocations working again). */
static void s_link_release(s_link_t *l)
{
    for (size_t i = 0; i < l->n_held; i++)
        s_take(l, l->held_at[i].final, l->held + l->held_at[i].at, l->held_at[i].len);
    l->n_held = 0;
}

static void s_feed(s_link_t *l, size_t after, const proto_worker_request_t *r)
{
    proto_worker_error_t err;
    assert_true(l->n_feed < FEED_MAX);
    assert_int_equal(proto_worker_request_encode(r, &l->feed[l->n_feed].body, &l->feed[l->n_feed].len, &err), 0);
    l->feed[l->n_feed].after = after;
    l->feed[l->n_feed].gate = 0;
    l->n_feed++;
}

static void s_feed_raw(s_link_t *l, size_t after, const char *bytes, size_t n)
{
    assert_true(l->n_feed < FEED_MAX);
    l->feed[l->n_feed].body = malloc(n);
    memcpy(l->feed[l->n_feed].body, bytes, n);
    l->feed[l->n_feed].len = n;
    l->feed[l->n_feed].after = after;
    l->feed[l->n_feed].gate = 0;
    l->n_feed++;
}

/* The request fed last waits, besides, for the link's gate to reach `gate`. */
static void s_feed_gate(s_link_t *l, unsigned gate)
{
    assert_true(l->n_feed > 0);
    l->feed[l->n_feed - 1].gate = gate;
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

/* ------------------------------------------------------------ a fake provider */

/* A provider whose completions are a test's function: for what the scripted
 * provider never does (fail mid-stream, give up, ignore the sink, call
 * several tools at once, count tokens). */
typedef struct s_fake s_fake_t;
typedef agent_complete_rc_t (*s_round_fn)(s_fake_t *f, const agent_completion_req_t *req,
                                          const agent_sink_t *sink, agent_completion_t *out, char *err,
                                          size_t errcap);

struct s_fake {
    agent_provider_t base;          /* first: the turn holds &base */
    s_round_fn round;               /* what each completion does */
    s_link_t *link;                 /* whose gate the rounds open */
    uint64_t rounds;                /* completions so far */
    int sink_rc[4];                 /* what the sink answered, for rounds that look */
    size_t n_msgs;                  /* the last completion's conversation length */
    proto_worker_role_t first_role; /* and its first message */
    char first[512];
};

static agent_complete_rc_t s_fake_complete(agent_provider_t *self, const agent_completion_req_t *req,
                                           const agent_sink_t *sink, agent_completion_t *out, char *err,
                                           size_t errcap)
{
    s_fake_t *f = (s_fake_t *) self;
    assert_int_equal(req->iteration, f->rounds);
    assert_true(req->n_msgs > 0);
    f->n_msgs = req->n_msgs;
    f->first_role = req->msgs[0].role;
    snprintf(f->first, sizeof f->first, "%.*s", (int) req->msgs[0].content.len,
             req->msgs[0].content.p ? req->msgs[0].content.p : "");
    agent_complete_rc_t rc = f->round(f, req, sink, out, err, errcap);
    f->rounds++;
    return rc;
}

static void s_fake_destroy(agent_provider_t *self)
{
    (void) self; /* on the test's stack */
}

static s_fake_t s_fake(s_round_fn round, s_link_t *l)
{
    return (s_fake_t){.base = {"fake", NULL, s_fake_complete, s_fake_destroy}, .round = round, .link = l};
}

static agent_turn_outcome_t s_run_fake(s_link_t *l, s_fake_t *f, const proto_worker_turn_t *t)
{
    agent_io_t io = {s_recv, s_send, l};
    return agent_turn_run(&f->base, NULL, &io, t);
}

static agent_complete_rc_t s_fake_oom(char *err, size_t errcap)
{
    snprintf(err, errcap, "fake: out of memory");
    return AGENT_COMPLETE_ERROR;
}

/* out asks for the tools names[0..n), ids "r<round>c<i>", arguments "{}".
 * -1 when out of memory (out left empty). */
static int s_fake_calls(agent_completion_t *out, uint64_t round, const char *const *names, size_t n)
{
    out->calls = calloc(n, sizeof *out->calls);
    if (!out->calls)
        return -1;
    out->n_calls = n;
    for (size_t i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "r%" PRIu64 "c%zu", round, i);
        proto_worker_tool_call_t *c = &out->calls[i];
        c->id = (proto_worker_str_t){strdup(id), strlen(id)};
        c->name = (proto_worker_str_t){strdup(names[i]), strlen(names[i])};
        c->arguments = (proto_worker_str_t){strdup("{}"), 2};
        if (!c->id.p || !c->name.p || !c->arguments.p) {
            agent_completion_clear(out);
            return -1;
        }
    }
    return 0;
}

static agent_complete_rc_t s_say(const agent_sink_t *sink, const char *text)
{
    return sink->chunk(sink->ud, text, strlen(text)) < 0 ? AGENT_COMPLETE_ABORTED : AGENT_COMPLETE_OK;
}

static agent_complete_rc_t s_round_say_ok(s_fake_t *f, const agent_completion_req_t *req, const agent_sink_t *sink,
                                          agent_completion_t *out, char *err, size_t errcap)
{
    (void) f; (void) req; (void) out; (void) err; (void) errcap;
    return s_say(sink, "ok");
}

/* Gives up though the sink never said stop: a provider bug. */
static agent_complete_rc_t s_round_give_up(s_fake_t *f, const agent_completion_req_t *req, const agent_sink_t *sink,
                                           agent_completion_t *out, char *err, size_t errcap)
{
    (void) f; (void) req; (void) sink; (void) out; (void) err; (void) errcap;
    return AGENT_COMPLETE_ABORTED;
}

/* Streams 256 KiB chunks until the sink refuses one, then tries once more
 * with each kind of text. */
static agent_complete_rc_t s_round_too_much(s_fake_t *f, const agent_completion_req_t *req, const agent_sink_t *sink,
                                            agent_completion_t *out, char *err, size_t errcap)
{
    (void) req; (void) out; (void) err; (void) errcap;
    static char big[256 * 1024];
    memset(big, 'a', sizeof big);
    for (int i = 0; i < 8; i++)
        if (sink->chunk(sink->ud, big, sizeof big) < 0)
            break;
    f->sink_rc[0] = sink->chunk(sink->ud, "x", 1);
    f->sink_rc[1] = sink->thinking(sink->ud, "x", 1);
    return AGENT_COMPLETE_ABORTED;
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

/* recv's -2 (the MDP worker lost a request about the turn for want of
 * memory, and answered the turn with a FINAL of its own): the turn ends at
 * once, AGENT_ERROR, sending nothing more, here while it waits for a tool's
 * result and while a provider sleeps. Before, -2 did not exist: the lost
 * request's -1 read as the link failing, and the worker thread stopped. */
static void test_turn_given_up_below(void **state)
{
    (void) state;
    static const char *const contents[] = {"/peers", "/sleep 600000"};
    static const int after[] = {2, 1}; /* llm_request and tool_call; llm_request */
    for (size_t i = 0; i < 2; i++) {
        s_link_t l = {.give_up_after = after[i]};
        proto_worker_turn_t t = s_turn(contents[i]);
        assert_int_equal(s_run(&l, &t), AGENT_TURN_AGENT_ERROR);
        assert_int_equal(l.n_finals, 0);
        assert_int_equal(l.n_partials, (size_t) after[i]);
        s_link_free(&l);
    }
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

static void test_outcome_names(void **state)
{
    (void) state;
    static const struct {
        agent_turn_outcome_t o;
        const char *name;
    } names[] = {
        {AGENT_TURN_DONE, "done"},
        {AGENT_TURN_STOPPED, "stopped"},
        {AGENT_TURN_TIMEOUT, "timeout"},
        {AGENT_TURN_PROVIDER_ERROR, "provider_error"},
        {AGENT_TURN_AGENT_ERROR, "agent_error"},
        {AGENT_TURN_INIT_FAILED, "init_failed"},
        {AGENT_TURN_LINK_LOST, "link_lost"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_string_equal(agent_turn_outcome_str(names[i].o), names[i].name);
    assert_string_equal(agent_turn_outcome_str((agent_turn_outcome_t) 99), "?");
}

/* A request envelope's turn starts with a system message naming the
 * request and its sender; other turns start with their message. */
static void test_request_envelope_turn_starts_with_a_note(void **state)
{
    (void) state;
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_say_ok, &l);
    proto_worker_turn_t t = s_turn("sum these");
    t.origin.channel = PROTO_WORKER_CHANNEL_COMMS;
    t.origin.has_envelope_id = true;
    t.origin.envelope_type = PROTO_WORKER_ENVTYPE_REQUEST;
    memset(t.origin.envelope_id, 0xab, PROTO_UUID_LEN);
    t.origin.has_from = true;
    memset(t.origin.from, 7, PROTO_WORKER_PEER_KEY_LEN);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    assert_int_equal(f.n_msgs, 2);
    assert_int_equal(f.first_role, PROTO_WORKER_ROLE_SYSTEM);
    char id[PROTO_UUID_TEXT_CAP], from[PROTO_PUBKEY_TEXT_CAP], want[256];
    proto_uuid_format(t.origin.envelope_id, id);
    assert_int_equal(proto_pubkey_format(t.origin.from, from, sizeof from), 0);
    snprintf(want, sizeof want, "This turn is request envelope %s from %s.", id, from);
    if (!strstr(f.first, want))
        fail_msg("note \"%s\" lacks \"%s\"", f.first, want);
    snprintf(want, sizeof want, "in_reply_to \"%s\"", id);
    assert_non_null(strstr(f.first, want));
    s_link_free(&l);

    memset(&l, 0, sizeof l);
    f = s_fake(s_round_say_ok, &l);
    t.origin.has_from = false;
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    snprintf(want, sizeof want, "This turn is request envelope %s from an unknown peer.", id);
    assert_non_null(strstr(f.first, want));
    s_link_free(&l);

    /* A message envelope needs no answer: no note. */
    memset(&l, 0, sizeof l);
    f = s_fake(s_round_say_ok, &l);
    t.origin.envelope_type = PROTO_WORKER_ENVTYPE_MESSAGE;
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    assert_int_equal(f.n_msgs, 1);
    assert_int_equal(f.first_role, PROTO_WORKER_ROLE_USER);
    assert_string_equal(f.first, "sum these");
    s_link_free(&l);
}

static agent_complete_rc_t s_round_error_silent(s_fake_t *f, const agent_completion_req_t *req,
                                                const agent_sink_t *sink, agent_completion_t *out, char *err,
                                                size_t errcap)
{
    (void) f; (void) req; (void) sink; (void) out; (void) err; (void) errcap;
    return AGENT_COMPLETE_ERROR;
}

/* Streams some text, then fails with a message its own snprintf cut inside
 * a code point: 255 "é" and the first byte of one more. */
static agent_complete_rc_t s_round_error_cut(s_fake_t *f, const agent_completion_req_t *req,
                                             const agent_sink_t *sink, agent_completion_t *out, char *err,
                                             size_t errcap)
{
    (void) f; (void) req; (void) out;
    if (s_say(sink, "part ") != AGENT_COMPLETE_OK)
        return AGENT_COMPLETE_ABORTED;
    assert_true(errcap >= 512);
    for (size_t i = 0; i < 255; i++)
        memcpy(err + 2 * i, "\xc3\xa9", 2);
    err[510] = '\xc3';
    err[511] = '\0';
    return AGENT_COMPLETE_ERROR;
}

static void test_provider_fails(void **state)
{
    (void) state;
    /* An error without a message still says what failed. */
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_error_silent, &l);
    proto_worker_turn_t t = s_turn("hi");
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_PROVIDER_ERROR);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_PROVIDER_ERROR);
    s_assert_text(s_final(&l)->message, "provider error");
    s_link_free(&l);

    /* Mid-stream: the text already out stays out; the message loses the
     * half code point (a FINAL must be UTF-8). */
    memset(&l, 0, sizeof l);
    f = s_fake(s_round_error_cut, &l);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_PROVIDER_ERROR);
    assert_int_equal(l.n_partials, 2);
    assert_int_equal(s_ev(&l, 1)->type, PROTO_WORKER_EV_CHUNK);
    s_assert_text(s_ev(&l, 1)->text, "part ");
    const proto_worker_final_t *fin = s_final(&l);
    assert_int_equal(fin->code, PROTO_WORKER_CODE_PROVIDER_ERROR);
    assert_int_equal(fin->message.len, 510);
    for (size_t i = 0; i < 255; i++)
        assert_memory_equal(fin->message.p + 2 * i, "\xc3\xa9", 2);
    s_link_free(&l);

    /* Gave up though nothing told it to. */
    memset(&l, 0, sizeof l);
    f = s_fake(s_round_give_up, &l);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_AGENT_ERROR);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_ERROR);
    s_assert_text(s_final(&l)->message, "the provider gave up without a reason");
    s_link_free(&l);
}

/* Round 0 sends empty texts (nothing goes out), counts 10 tokens and calls
 * an unknown tool; round 1 answers, 5 tokens. */
static agent_complete_rc_t s_round_tokens(s_fake_t *f, const agent_completion_req_t *req, const agent_sink_t *sink,
                                          agent_completion_t *out, char *err, size_t errcap)
{
    (void) req;
    static const char *const names[] = {"nope"};
    out->has_tokens_used = true;
    if (f->rounds == 0) {
        f->sink_rc[0] = sink->chunk(sink->ud, "", 0);
        f->sink_rc[1] = sink->thinking(sink->ud, "", 0);
        out->tokens_used = 10;
        return s_fake_calls(out, 0, names, 1) < 0 ? s_fake_oom(err, errcap) : AGENT_COMPLETE_OK;
    }
    out->tokens_used = 5;
    return s_say(sink, "done");
}

static void test_model_tokens_and_empty_text(void **state)
{
    (void) state;
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_tokens, &l);
    f.base.model = "m-1";
    proto_worker_turn_t t = s_turn("hi");
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    assert_int_equal(f.sink_rc[0], 0);
    assert_int_equal(f.sink_rc[1], 0);
    /* llm_request, tool_call, tool_result, llm_request, chunk. */
    assert_int_equal(l.n_partials, 5);
    s_assert_text(s_ev(&l, 0)->provider, "fake");
    s_assert_text(s_ev(&l, 0)->model, "m-1");
    assert_int_equal(s_ev(&l, 1)->type, PROTO_WORKER_EV_TOOL_CALL);
    s_assert_text(s_ev(&l, 2)->result, "{\"error\":\"unknown tool nope\"}");
    assert_int_equal(s_ev(&l, 3)->iteration, 1);
    const proto_worker_final_t *fin = s_final(&l);
    assert_int_equal(fin->type, PROTO_WORKER_FINAL_DONE);
    s_assert_text(fin->full_response, "done");
    assert_true(fin->has_tokens_used);
    assert_int_equal(fin->tokens_used, 15);
    assert_int_equal(fin->tool_iterations, 1);
    s_link_free(&l);

    /* An empty model name is no model. */
    memset(&l, 0, sizeof l);
    f = s_fake(s_round_tokens, &l);
    f.base.model = "";
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    assert_null(s_ev(&l, 0)->model.p);
    s_link_free(&l);
}

static agent_complete_rc_t s_round_always_a_tool(s_fake_t *f, const agent_completion_req_t *req,
                                                 const agent_sink_t *sink, agent_completion_t *out, char *err,
                                                 size_t errcap)
{
    (void) req; (void) sink;
    static const char *const names[] = {"nope"};
    return s_fake_calls(out, f->rounds, names, 1) < 0 ? s_fake_oom(err, errcap) : AGENT_COMPLETE_OK;
}

static void test_max_tool_iterations_reached(void **state)
{
    (void) state;
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_always_a_tool, &l);
    proto_worker_turn_t t = s_turn("loop");
    t.max_tool_iterations = 2;
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_AGENT_ERROR);
    /* Two rounds of tools ran; the third round's calls did not. */
    assert_int_equal(f.rounds, 3);
    assert_int_equal(l.n_partials, 7);
    assert_int_equal(s_ev(&l, 6)->type, PROTO_WORKER_EV_LLM_REQUEST);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_ERROR);
    s_assert_text(s_final(&l)->message, "the turn reached max_tool_iterations (2)");
    s_link_free(&l);
}

/* Round 0 calls three tools at once; round 1 reads what the conversation
 * became. */
static agent_complete_rc_t s_round_three_calls(s_fake_t *f, const agent_completion_req_t *req,
                                               const agent_sink_t *sink, agent_completion_t *out, char *err,
                                               size_t errcap)
{
    static const char *const names[] = {"nope", "local", "gone"};
    if (f->rounds == 0)
        return s_fake_calls(out, 0, names, 3) < 0 ? s_fake_oom(err, errcap) : AGENT_COMPLETE_OK;
    /* history (14), message, the calls, one result each */
    assert_int_equal(req->n_msgs, 14 + 1 + 1 + 3);
    const proto_worker_chat_msg_t *am = &req->msgs[15];
    assert_int_equal(am->role, PROTO_WORKER_ROLE_ASSISTANT);
    assert_true(am->has_tool_calls);
    assert_int_equal(am->n_tool_calls, 3);
    static const char *const want[] = {
        "{\"error\":\"unknown tool nope\"}",
        "{\"error\":\"no worker runs the tool local\"}",
        "{\"error\":\"unknown tool gone\"}",
    };
    for (size_t i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "r0c%zu", i);
        s_assert_text(am->tool_calls[i].id, id);
        s_assert_text(am->tool_calls[i].name, names[i]);
        const proto_worker_chat_msg_t *m = &req->msgs[16 + i];
        assert_int_equal(m->role, PROTO_WORKER_ROLE_TOOL);
        s_assert_text(m->tool_call_id, id);
        s_assert_text(m->content, want[i]);
    }
    return s_say(sink, "three");
}

/* The results of one round's calls join a conversation that moves as it
 * grows past its first 16 slots (ASan sees a pointer kept across the move). */
static void test_calls_of_one_round_as_the_conversation_grows(void **state)
{
    (void) state;
    proto_worker_chat_msg_t hist[14];
    for (size_t i = 0; i < 14; i++)
        hist[i] = (proto_worker_chat_msg_t){.role = PROTO_WORKER_ROLE_USER, .content = S("h")};
    proto_worker_tool_spec_t tools[] = {{S("local"), S("x"), S("{}"), PROTO_WORKER_EXEC_WORKER}};
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_three_calls, &l);
    proto_worker_turn_t t = s_turn("go");
    t.history = hist;
    t.n_history = 14;
    t.tools = tools;
    t.n_tools = 1;
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    assert_int_equal(f.rounds, 2);
    /* llm_request, then a tool_call and tool_result per call, in order */
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(s_ev(&l, 1 + 2 * i)->type, PROTO_WORKER_EV_TOOL_CALL);
        assert_int_equal(s_ev(&l, 2 + 2 * i)->type, PROTO_WORKER_EV_TOOL_RESULT);
        assert_true(s_ev(&l, 2 + 2 * i)->is_error);
    }
    s_assert_text(s_final(&l)->full_response, "three");
    assert_int_equal(s_final(&l)->tool_iterations, 1);
    s_link_free(&l);
}

/* Text past AGENT_RESPONSE_MAX ends the turn; once refused, the sink
 * refuses everything. */
static void test_response_bound(void **state)
{
    (void) state;
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_too_much, &l);
    proto_worker_turn_t t = s_turn("talk");
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_AGENT_ERROR);
    assert_int_equal(f.sink_rc[0], -1);
    assert_int_equal(f.sink_rc[1], -1);
    size_t fit = AGENT_RESPONSE_MAX / (256 * 1024);
    assert_int_equal(l.n_partials, 1 + fit);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_ERROR);
    char want[64];
    snprintf(want, sizeof want, "the response grew past %u bytes", (unsigned) AGENT_RESPONSE_MAX);
    s_assert_text(s_final(&l)->message, want);
    s_link_free(&l);
}

/* Yields once (a steer and a stop come), then tries to go on. */
static agent_complete_rc_t s_round_after_stop(s_fake_t *f, const agent_completion_req_t *req,
                                              const agent_sink_t *sink, agent_completion_t *out, char *err,
                                              size_t errcap)
{
    (void) req; (void) out; (void) err; (void) errcap;
    f->sink_rc[0] = sink->yield(sink->ud, 0);
    f->sink_rc[1] = sink->chunk(sink->ud, "x", 1);
    f->sink_rc[2] = sink->thinking(sink->ud, "x", 1);
    return AGENT_COMPLETE_ABORTED;
}

/* After a stop the sink refuses text; a steer still waiting is dropped
 * with the turn (LSan sees it freed). */
static void test_stop_refuses_text_and_drops_waiting_steers(void **state)
{
    (void) state;
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_after_stop, &l);
    proto_worker_turn_t t = s_turn("hi");
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STEER, "wait for me", NULL);
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STOP, NULL, NULL);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_STOPPED);
    assert_int_equal(f.sink_rc[0], -1);
    assert_int_equal(f.sink_rc[1], -1);
    assert_int_equal(f.sink_rc[2], -1);
    assert_int_equal(l.n_partials, 1);
    assert_int_equal(s_final(&l)->type, PROTO_WORKER_FINAL_STOPPED);
    s_link_free(&l);
}

/* Yields (a stop comes), then answers with a tool call all the same: a
 * provider bug the built-in ones do not have. */
static agent_complete_rc_t s_round_calls_after_stop(s_fake_t *f, const agent_completion_req_t *req,
                                                    const agent_sink_t *sink, agent_completion_t *out,
                                                    char *err, size_t errcap)
{
    (void) req;
    static const char *const names[] = {"send_message"};
    f->sink_rc[0] = sink->yield(sink->ud, 0);
    return s_fake_calls(out, f->rounds, names, 1) < 0 ? s_fake_oom(err, errcap) : AGENT_COMPLETE_OK;
}

/* A stopped turn runs no tool, even one its provider asks for after the
 * stop: the turn ends STOPPED and no tool_call is announced (the router
 * would run a router tool it announced). */
static void test_no_tool_after_a_stop(void **state)
{
    (void) state;
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_calls_after_stop, &l);
    proto_worker_turn_t t = s_turn("hi");
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STOP, NULL, NULL);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_STOPPED);
    assert_int_equal(f.sink_rc[0], -1);
    assert_int_equal(f.rounds, 1);
    for (size_t i = 0; i < l.n_partials; i++)
        assert_int_not_equal(s_ev(&l, i)->type, PROTO_WORKER_EV_TOOL_CALL);
    assert_int_equal(s_final(&l)->type, PROTO_WORKER_FINAL_STOPPED);
    s_link_free(&l);
}

/* Whichever send fails, nothing more is sent and the turn ends LINK_LOST. */
static void test_a_failed_send_ends_the_turn(void **state)
{
    (void) state;
    proto_worker_turn_t t = s_turn("/peers");
    size_t k;
    for (k = 1; k < SENT_MAX; k++) {
        s_link_t l = {.fail_at = k};
        s_feed_result(&l, 2, "call_0", "[]", false);
        agent_turn_outcome_t o = s_run(&l, &t);
        if (!l.lost) {
            assert_int_equal(o, AGENT_TURN_DONE);
            assert_int_equal(l.n_attempts, k - 1);
            s_link_free(&l);
            break;
        }
        assert_int_equal(o, AGENT_TURN_LINK_LOST);
        assert_int_equal(l.n_attempts, k);
        s_link_free(&l);
    }
    /* llm_request, tool_call, tool_result, llm_request, 3 chunks, FINAL */
    assert_int_equal(k, 9);

    /* The link fails while a tool's result is awaited: no FINAL. */
    s_link_t l = {.fail_recv_after = 2};
    assert_int_equal(s_run(&l, &t), AGENT_TURN_LINK_LOST);
    assert_int_equal(l.n_finals, 0);
    s_link_free(&l);
}

/* However a turn ends, a FINAL that cannot be sent makes it LINK_LOST. */
static void test_a_lost_final_is_link_lost(void **state)
{
    (void) state;
    static const struct {
        const char *content;
        s_round_fn round;          /* NULL: the scripted provider */
        uint64_t max_tool_iterations;
        bool stop;                 /* a stop comes after the first PARTIAL */
        proto_worker_final_type_t type;
        proto_worker_code_t code;
    } cases[] = {
        {"hi", NULL, 60, false, PROTO_WORKER_FINAL_DONE, PROTO_WORKER_CODE_NONE},
        {"/fail", NULL, 60, false, PROTO_WORKER_FINAL_ERROR, PROTO_WORKER_CODE_PROVIDER_ERROR},
        {"/peers", NULL, 0, false, PROTO_WORKER_FINAL_ERROR, PROTO_WORKER_CODE_AGENT_ERROR},
        {"/sleep 600000", NULL, 60, true, PROTO_WORKER_FINAL_STOPPED, PROTO_WORKER_CODE_NONE},
        {"hi", s_round_give_up, 60, false, PROTO_WORKER_FINAL_ERROR, PROTO_WORKER_CODE_AGENT_ERROR},
        {"hi", s_round_too_much, 60, false, PROTO_WORKER_FINAL_ERROR, PROTO_WORKER_CODE_AGENT_ERROR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_link_t l = {.fail_final = true};
        proto_worker_turn_t t = s_turn(cases[i].content);
        t.max_tool_iterations = cases[i].max_tool_iterations;
        if (cases[i].stop)
            s_feed_control(&l, 1, PROTO_WORKER_REQ_STOP, NULL, NULL);
        s_fake_t f = s_fake(cases[i].round, &l);
        agent_turn_outcome_t o = cases[i].round ? s_run_fake(&l, &f, &t) : s_run(&l, &t);
        if (o != AGENT_TURN_LINK_LOST)
            fail_msg("case %zu (%s): %s", i, cases[i].content, agent_turn_outcome_str(o));
        assert_int_equal(s_final(&l)->type, cases[i].type);
        assert_int_equal(s_final(&l)->code, cases[i].code);
        s_link_free(&l);
    }

    /* No provider, and no reason given for it. */
    s_link_t l = {.fail_final = true};
    agent_io_t io = {s_recv, s_send, &l};
    proto_worker_turn_t t = s_turn("hi");
    assert_int_equal(agent_turn_run(NULL, NULL, &io, &t), AGENT_TURN_LINK_LOST);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_INIT_FAILED);
    s_assert_text(s_final(&l)->message, "no provider");
    s_link_free(&l);
    memset(&l, 0, sizeof l);
    assert_int_equal(agent_turn_run(NULL, "", &io, &t), AGENT_TURN_INIT_FAILED);
    s_assert_text(s_final(&l)->message, "no provider");
    s_link_free(&l);
}

/* The router never answers a tool call: the turn's timeout ends the wait. */
static void test_timeout_awaiting_a_tool_result(void **state)
{
    (void) state;
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    t.turn_timeout_s = 1;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_TIMEOUT);
    assert_int_equal(l.n_partials, 2); /* llm_request, tool_call */
    s_assert_text(s_final(&l)->message, "the turn timed out after 1 s");
    s_link_free(&l);
}

static agent_complete_rc_t s_round_long_yield(s_fake_t *f, const agent_completion_req_t *req,
                                              const agent_sink_t *sink, agent_completion_t *out, char *err,
                                              size_t errcap)
{
    (void) req; (void) out; (void) err; (void) errcap;
    /* A wait cut at the deadline may come back 0: the next one says stop. */
    for (int i = 0; i < 3; i++)
        if ((f->sink_rc[0] = sink->yield(sink->ud, 60000)) < 0)
            return AGENT_COMPLETE_ABORTED;
    return s_say(sink, "late");
}

/* A provider's wait past the deadline is cut to it: no read waits longer
 * than the turn may last. Its FINAL is lost too. */
static void test_timeout_cuts_a_long_wait(void **state)
{
    (void) state;
    s_link_t l = {.fail_final = true};
    s_fake_t f = s_fake(s_round_long_yield, &l);
    proto_worker_turn_t t = s_turn("hi");
    t.turn_timeout_s = 1;
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_LINK_LOST);
    assert_int_equal(f.sink_rc[0], -1);
    assert_true(l.max_wait_ms > 0 && l.max_wait_ms <= 1000);
    s_assert_text(s_final(&l)->message, "the turn timed out after 1 s");
    s_link_free(&l);
}

/* turn_timeout_s 0 is the default, not "now"; a huge one does not wrap. */
static void test_timeout_zero_and_huge(void **state)
{
    (void) state;
    static const uint64_t timeouts[] = {0, UINT64_MAX / 1000u + 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
        s_link_t l = {0};
        proto_worker_turn_t t = s_turn("hi");
        t.turn_timeout_s = timeouts[i];
        assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
        s_assert_text(s_final(&l)->full_response, "echo: hi");
        s_link_free(&l);
    }
}

/* Requests that are no control for this turn, many at once: all ignored,
 * read in more than one batch, so the provider goes on between them. */
static void test_a_flood_of_ignored_requests(void **state)
{
    (void) state;
    enum { FLOOD = 100 };
    static const uint8_t other[PROTO_UUID_LEN] = {9};
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("one two three");
    proto_worker_request_t another = {.type = PROTO_WORKER_REQ_TURN, .turn = s_turn("another")};
    s_feed(&l, 1, &another);
    s_feed_result(&l, 1, "call_0", "[]", false); /* no call awaited */
    for (int i = 2; i < FLOOD; i++)
        s_feed_control(&l, 1, PROTO_WORKER_REQ_STOP, NULL, other);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_assert_text(s_final(&l)->full_response, "echo: one two three");
    assert_int_equal(l.next_feed, FLOOD);
    size_t batches = 0;
    for (size_t i = 0; i < SENT_MAX; i++)
        batches += l.taken_at[i] > 0;
    assert_true(batches >= 2);
    s_link_free(&l);
}

/* The conversation's bound (AGENT_CONV_MAX messages) reached at each place
 * it grows: the turn ends with AGENT_ERROR, nothing leaks. */
static void test_conversation_bound(void **state)
{
    (void) state;
    proto_worker_chat_msg_t *hist = calloc(AGENT_CONV_MAX, sizeof *hist);
    assert_non_null(hist);
    for (size_t i = 0; i < AGENT_CONV_MAX; i++)
        hist[i] = (proto_worker_chat_msg_t){.role = PROTO_WORKER_ROLE_USER, .content = S("h")};
    char grew[64];
    snprintf(grew, sizeof grew, "the conversation grew past %u messages", (unsigned) AGENT_CONV_MAX);

    /* Full from the start: the calls cannot join. */
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    t.n_tools = 0;
    t.history = hist;
    t.n_history = AGENT_CONV_MAX - 1;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_AGENT_ERROR);
    assert_int_equal(l.n_partials, 1);
    s_assert_text(s_final(&l)->message, grew);
    s_link_free(&l);

    /* One slot: the calls join, their result cannot. */
    memset(&l, 0, sizeof l);
    t.n_history = AGENT_CONV_MAX - 2;
    assert_int_equal(s_run(&l, &t), AGENT_TURN_AGENT_ERROR);
    assert_int_equal(l.n_partials, 3); /* llm_request, tool_call, tool_result */
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_ERROR);
    s_assert_text(s_final(&l)->message, grew);
    s_link_free(&l);

    /* One slot: the answer a steer came during joins, the steers cannot. */
    memset(&l, 0, sizeof l);
    t = s_turn("hi");
    t.history = hist;
    t.n_history = AGENT_CONV_MAX - 2;
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STEER, "one", NULL);
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STEER, "two", NULL);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_AGENT_ERROR);
    s_assert_text(s_final(&l)->message, grew);
    s_link_free(&l);

    /* Full: not even that answer joins. */
    memset(&l, 0, sizeof l);
    t.n_history = AGENT_CONV_MAX - 1;
    s_feed_control(&l, 1, PROTO_WORKER_REQ_STEER, "one", NULL);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_AGENT_ERROR);
    assert_int_equal(s_final(&l)->code, PROTO_WORKER_CODE_AGENT_ERROR);
    s_assert_text(s_final(&l)->message, grew);
    assert_int_equal(l.n_partials, 3); /* llm_request, "echo: ", "hi" */
    s_link_free(&l);
    free(hist);
}

/* A chunk that is not UTF-8 (a provider bug) is not sent, and the FINAL
 * that would carry it says the result could not be encoded. */
static agent_complete_rc_t s_round_bad_utf8(s_fake_t *f, const agent_completion_req_t *req,
                                            const agent_sink_t *sink, agent_completion_t *out, char *err,
                                            size_t errcap)
{
    (void) req; (void) out; (void) err; (void) errcap;
    f->sink_rc[0] = sink->chunk(sink->ud, "ok ", 3);
    f->sink_rc[1] = sink->chunk(sink->ud, "\xff", 1);
    return AGENT_COMPLETE_OK;
}

static void test_text_that_is_not_utf8(void **state)
{
    (void) state;
    s_link_t l = {0};
    s_fake_t f = s_fake(s_round_bad_utf8, &l);
    proto_worker_turn_t t = s_turn("hi");
    (void) s_run_fake(&l, &f, &t);
    assert_int_equal(f.sink_rc[0], 0);
    assert_int_equal(f.sink_rc[1], 0); /* skipped, not the turn's end */
    assert_int_equal(l.n_partials, 2); /* llm_request, "ok " */
    const proto_worker_final_t *fin = s_final(&l);
    assert_int_equal(fin->type, PROTO_WORKER_FINAL_ERROR);
    assert_int_equal(fin->code, PROTO_WORKER_CODE_AGENT_ERROR);
    s_assert_text(fin->message, "the worker could not encode the turn's result");
    s_link_free(&l);
}

/* Says nothing; its first round lets a steer in as it ends. */
static agent_complete_rc_t s_round_silent(s_fake_t *f, const agent_completion_req_t *req, const agent_sink_t *sink,
                                          agent_completion_t *out, char *err, size_t errcap)
{
    (void) req; (void) sink; (void) out; (void) err; (void) errcap;
    f->link->gate = 1;
    return AGENT_COMPLETE_OK;
}

/* Controls read at the loop's boundaries: after a tool's result, and as an
 * answer ends. */
static void test_controls_at_boundaries(void **state)
{
    (void) state;
    /* A stop with the tool's result: no further round. */
    s_link_t l = {0};
    proto_worker_turn_t t = s_turn("/peers");
    s_feed_result(&l, 2, "call_0", "[]", false);
    s_feed_control(&l, 2, PROTO_WORKER_REQ_STOP, NULL, NULL);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_STOPPED);
    assert_int_equal(l.n_partials, 3); /* llm_request, tool_call, tool_result */
    assert_int_equal(s_final(&l)->type, PROTO_WORKER_FINAL_STOPPED);
    s_link_free(&l);

    /* A stop as the answer ends: stopped, not done. */
    memset(&l, 0, sizeof l);
    s_fake_t f = s_fake(s_round_silent, &l);
    t = s_turn("hi");
    s_feed_control(&l, 0, PROTO_WORKER_REQ_STOP, NULL, NULL);
    s_feed_gate(&l, 1);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_STOPPED);
    assert_int_equal(f.rounds, 1);
    assert_int_equal(s_final(&l)->type, PROTO_WORKER_FINAL_STOPPED);
    s_link_free(&l);

    /* A steer as a silent answer ends: the empty answer and the steer join,
     * and the turn's answer is empty. */
    memset(&l, 0, sizeof l);
    f = s_fake(s_round_silent, &l);
    s_feed_control(&l, 0, PROTO_WORKER_REQ_STEER, "say something", NULL);
    s_feed_gate(&l, 1);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    assert_int_equal(f.rounds, 2);
    assert_int_equal(f.n_msgs, 3); /* message, empty answer, steer */
    s_assert_text(s_final(&l)->full_response, "");
    s_link_free(&l);
}

/* Its chunk fails (the link is gone) but it asks for a tool anyway. */
static agent_complete_rc_t s_round_ignores_the_sink(s_fake_t *f, const agent_completion_req_t *req,
                                                    const agent_sink_t *sink, agent_completion_t *out, char *err,
                                                    size_t errcap)
{
    (void) req;
    static const char *const names[] = {"nope"};
    f->sink_rc[0] = sink->chunk(sink->ud, "a", 1);
    return s_fake_calls(out, 0, names, 1) < 0 ? s_fake_oom(err, errcap) : AGENT_COMPLETE_OK;
}

/* A provider that goes on after the sink said stop gets nothing more sent. */
static void test_provider_that_ignores_a_lost_link(void **state)
{
    (void) state;
    s_link_t l = {.fail_at = 2}; /* llm_request goes, the chunk does not */
    s_fake_t f = s_fake(s_round_ignores_the_sink, &l);
    proto_worker_turn_t t = s_turn("hi");
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_LINK_LOST);
    assert_int_equal(f.sink_rc[0], -1);
    assert_int_equal(l.n_attempts, 2);
    s_link_free(&l);
}

typedef struct {
    char text[2048];
    size_t len;
} s_log_t;

static void s_log_tap(router_log_level_t level, const char *module, const char *line, size_t len, void *ud)
{
    (void) level; (void) module;
    s_log_t *log = ud;
    size_t room = sizeof log->text - 1 - log->len;
    size_t n = len < room ? len : room;
    memcpy(log->text + log->len, line, n);
    log->len += n;
    log->text[log->len] = '\0';
}

/* At debug level a turn logs its start (with its provider) and its end
 * (with its outcome). */
static void test_debug_log_names_provider_and_outcome(void **state)
{
    (void) state;
    static s_log_t log;
    router_log_level_t was = router_log_level();
    router_log_set_level(ROUTER_LOG_DEBUG);
    router_log_set_tap(s_log_tap, &log);
    s_link_t l = {0};
    agent_io_t io = {s_recv, s_send, &l};
    proto_worker_turn_t t = s_turn("hi");
    assert_int_equal(agent_turn_run(NULL, "no key", &io, &t), AGENT_TURN_INIT_FAILED);
    s_link_free(&l);
    memset(&l, 0, sizeof l);
    assert_int_equal(s_run(&l, &t), AGENT_TURN_DONE);
    s_link_free(&l);
    router_log_set_tap(NULL, NULL);
    router_log_set_level(was);
    char tid[PROTO_UUID_TEXT_CAP], want[128];
    proto_uuid_format(s_tid, tid);
    static const char *const ends[] = {
        "started (provider none)", "ended: init_failed",
        "started (provider scripted)", "ended: done",
    };
    for (size_t i = 0; i < sizeof ends / sizeof ends[0]; i++) {
        snprintf(want, sizeof want, "turn %s %s", tid, ends[i]);
        if (!strstr(log.text, want))
            fail_msg("no \"%s\" in:\n%s", want, log.text);
    }
}

/* ------------------------------------------------------------ every allocation */

/* Round 0 thinks, says a word and calls an unknown tool and a router tool
 * (the router's answer may come now, twice); round 1 says another, and a
 * steer comes as it ends; round 2 answers the steer. */
static agent_complete_rc_t s_round_tour(s_fake_t *f, const agent_completion_req_t *req, const agent_sink_t *sink,
                                        agent_completion_t *out, char *err, size_t errcap)
{
    (void) req;
    static const char *const names[] = {"nope", "peers"};
    if (f->rounds == 0) {
        if (sink->thinking(sink->ud, "plan", 4) < 0 || sink->chunk(sink->ud, "looking ", 8) < 0)
            return AGENT_COMPLETE_ABORTED;
        if (s_fake_calls(out, 0, names, 2) < 0)
            return s_fake_oom(err, errcap);
        f->link->gate = 1;
        return AGENT_COMPLETE_OK;
    }
    agent_complete_rc_t rc = s_say(sink, f->rounds == 1 ? "found" : " and steered");
    f->link->gate = 2;
    return rc;
}

/* The tour's turn after n_history messages of history; its requests are
 * fed before any allocation may fail (encoding allocates). */
static void s_tour_prepare(s_link_t *l, proto_worker_turn_t *t, proto_worker_chat_msg_t *hist, size_t n_history)
{
    memset(l, 0, sizeof *l);
    *t = s_turn("tour");
    t->history = hist;
    t->n_history = n_history;
    for (int i = 0; i < 2; i++) { /* a second copy stands in for one lost to a failed decode */
        s_feed_result(l, 0, "r0c1", "[]", false);
        s_feed_gate(l, 1);
    }
    s_feed_control(l, 0, PROTO_WORKER_REQ_STEER, "hurry", NULL);
    s_feed_gate(l, 2);
}

static void s_assert_tour(const s_link_t *l)
{
    static const proto_worker_event_type_t types[] = {
        PROTO_WORKER_EV_LLM_REQUEST, PROTO_WORKER_EV_THINKING,    PROTO_WORKER_EV_CHUNK,
        PROTO_WORKER_EV_TOOL_CALL,   PROTO_WORKER_EV_TOOL_RESULT, PROTO_WORKER_EV_TOOL_CALL,
        PROTO_WORKER_EV_TOOL_RESULT, PROTO_WORKER_EV_LLM_REQUEST, PROTO_WORKER_EV_CHUNK,
        PROTO_WORKER_EV_LLM_REQUEST, PROTO_WORKER_EV_CHUNK,
    };
    assert_int_equal(l->n_partials, sizeof types / sizeof types[0]);
    for (size_t i = 0; i < l->n_partials; i++)
        assert_int_equal(s_ev(l, i)->type, types[i]);
    s_assert_text(s_ev(l, 4)->result, "{\"error\":\"unknown tool nope\"}");
    assert_true(s_ev(l, 4)->is_error);
    s_assert_text(s_ev(l, 6)->id, "r0c1");
    s_assert_text(s_ev(l, 6)->result, "[]");
    assert_false(s_ev(l, 6)->is_error);
    assert_int_equal(s_ev(l, 9)->iteration, 2);
    const proto_worker_final_t *fin = s_final(l);
    assert_int_equal(fin->type, PROTO_WORKER_FINAL_DONE);
    s_assert_text(fin->full_response, "looking found and steered");
    assert_int_equal(fin->tool_iterations, 1);
}

static void test_tour(void **state)
{
    (void) state;
    s_link_t l;
    proto_worker_turn_t t;
    s_tour_prepare(&l, &t, NULL, 0);
    s_fake_t f = s_fake(s_round_tour, &l);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    s_assert_tour(&l);
    assert_int_equal(l.next_feed, 3);
    s_link_free(&l);
}

/* The tour with its 1st, 2nd, … allocation failing, for histories that put
 * a conversation's growth at each of its pushes. Each run sends exactly one
 * FINAL that says how the turn ended: done in spite of the failure, or an
 * error for people; LSan checks that nothing leaked. */
static void test_tour_out_of_memory(void **state)
{
    (void) state;
    static const size_t histories[] = {0, 11, 12, 13, 14, 15};
    proto_worker_chat_msg_t hist[15];
    for (size_t i = 0; i < 15; i++)
        hist[i] = (proto_worker_chat_msg_t){.role = PROTO_WORKER_ROLE_USER, .content = S("h")};
    size_t seen[AGENT_TURN_LINK_LOST + 1] = {0};
    static s_link_t l; /* large: off the stack */
    for (size_t h = 0; h < sizeof histories / sizeof histories[0]; h++) {
        long i;
        for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            proto_worker_turn_t t;
            s_tour_prepare(&l, &t, hist, histories[h]);
            l.hold = true;
            s_fake_t f = s_fake(s_round_tour, &l);
            alloc_fail_arm(i);
            agent_turn_outcome_t o = s_run_fake(&l, &f, &t);
            bool failed = alloc_fail_disarm() > 0;
            s_link_release(&l);
            const proto_worker_final_t *fin = s_final(&l);
            if (!failed) {
                assert_int_equal(o, AGENT_TURN_DONE);
                s_assert_tour(&l);
                s_link_free(&l);
                break;
            }
            seen[o]++;
            switch (o) {
            case AGENT_TURN_DONE:
                /* a PARTIAL or a request was lost on the way */
                assert_int_equal(fin->type, PROTO_WORKER_FINAL_DONE);
                break;
            case AGENT_TURN_AGENT_ERROR:
                /* said as what it is: no bound was reached (or the FINAL
                 * meant failed to encode, and this error went instead) */
                assert_int_equal(fin->type, PROTO_WORKER_FINAL_ERROR);
                assert_int_equal(fin->code, PROTO_WORKER_CODE_AGENT_ERROR);
                if (fin->message.len == 45 && memcmp(fin->message.p, "the worker could not encode the turn's result", 45) == 0)
                    break;
                if (fin->message.len < 13 || memcmp(fin->message.p, "out of memory", 13) != 0)
                    fail_msg("history %zu, allocation %ld: %.*s", histories[h], i,
                             (int) fin->message.len, fin->message.p);
                break;
            case AGENT_TURN_PROVIDER_ERROR:
                assert_int_equal(fin->code, PROTO_WORKER_CODE_PROVIDER_ERROR);
                s_assert_text(fin->message, "fake: out of memory");
                break;
            default:
                fail_msg("history %zu, allocation %ld: %s", histories[h], i, agent_turn_outcome_str(o));
            }
            s_link_free(&l);
        }
        assert_true(i > 0 && i < ALLOC_FAIL_RUNS_MAX);
    }
    assert_true(seen[AGENT_TURN_DONE] > 0);
    assert_true(seen[AGENT_TURN_AGENT_ERROR] > 0);
    assert_true(seen[AGENT_TURN_PROVIDER_ERROR] > 0);
}

/* ------------------------------------------------------------ tool calls the router must hear */

/* Round 0 calls the tool named s_odd_name (s_odd_len octets, a NUL
 * inside); later rounds say "ok". */
static const char s_odd_name[] = "peers\0x";
static const size_t s_odd_len = sizeof s_odd_name - 1;

static agent_complete_rc_t s_round_odd_name(s_fake_t *f, const agent_completion_req_t *req,
                                            const agent_sink_t *sink, agent_completion_t *out, char *err,
                                            size_t errcap)
{
    (void) req;
    if (f->rounds > 0)
        return s_say(sink, "ok");
    static const char *const names[] = {"peers"};
    if (s_fake_calls(out, 0, names, 1) < 0)
        return s_fake_oom(err, errcap);
    char *n = malloc(s_odd_len + 1);
    assert_non_null(n);
    memcpy(n, s_odd_name, s_odd_len + 1);
    free((void *) out->calls[0].name.p);
    out->calls[0].name = (proto_worker_str_t){n, s_odd_len};
    return AGENT_COMPLETE_OK;
}

/* A tool name with a NUL inside is no tool offered: before, "peers\0x"
 * was taken for peers and the worker waited for a result the router (which
 * heard of no such tool) never sent, until the turn's deadline. */
static void test_tool_name_with_a_nul(void **state)
{
    (void) state;
    static s_link_t l;
    memset(&l, 0, sizeof l);
    proto_worker_turn_t t = s_turn("odd");
    t.turn_timeout_s = 30; /* a bound: the turn does not wait for it */
    s_fake_t f = s_fake(s_round_odd_name, &l);
    assert_int_equal(s_run_fake(&l, &f, &t), AGENT_TURN_DONE);
    assert_int_equal(s_ev(&l, 1)->type, PROTO_WORKER_EV_TOOL_CALL);
    assert_int_equal(s_ev(&l, 2)->type, PROTO_WORKER_EV_TOOL_RESULT);
    assert_true(s_ev(&l, 2)->is_error);
    s_assert_text(s_ev(&l, 2)->result, "{\"error\":\"unknown tool peers\\u0000x\"}");
    s_assert_text(s_final(&l)->full_response, "ok");
    s_link_free(&l);
}

/* Round 0 calls the router's peers tool, with the allocation after
 * s_skip more failing from there on. */
static long s_skip;

static agent_complete_rc_t s_round_peers_then_oom(s_fake_t *f, const agent_completion_req_t *req,
                                                  const agent_sink_t *sink, agent_completion_t *out, char *err,
                                                  size_t errcap)
{
    (void) req;
    if (f->rounds > 0)
        return s_say(sink, "ok");
    static const char *const names[] = {"peers"};
    if (s_fake_calls(out, 0, names, 1) < 0)
        return s_fake_oom(err, errcap);
    alloc_fail_arm(s_skip);
    return AGENT_COMPLETE_OK;
}

/* A router tool's call whose PARTIAL cannot be encoded (out of memory)
 * ends the turn at once as an error: the router never heard of the call,
 * so no result will come. Before, the PARTIAL was skipped and the worker
 * waited out the turn's deadline (600 s by default), held all that time,
 * and the client was told the turn timed out. */
static void test_router_tool_call_that_cannot_be_sent(void **state)
{
    (void) state;
    static s_link_t l;
    bool unsent = false, sent = false;
    for (s_skip = 0; s_skip < 16 && !sent; s_skip++) {
        memset(&l, 0, sizeof l);
        l.hold = true;
        proto_worker_turn_t t = s_turn("peers");
        t.turn_timeout_s = 1; /* what the old code waited for; the new one does not */
        s_fake_t f = s_fake(s_round_peers_then_oom, &l);
        agent_turn_outcome_t o = s_run_fake(&l, &f, &t);
        alloc_fail_disarm();
        s_link_release(&l);
        const proto_worker_final_t *fin = s_final(&l);
        for (size_t i = 0; i + 1 < l.n_sent; i++)
            sent |= s_ev(&l, i)->type == PROTO_WORKER_EV_TOOL_CALL;
        if (!sent) {
            /* Never a wait for a result of a call the router never heard. */
            if (o == AGENT_TURN_TIMEOUT)
                fail_msg("allocation %ld: the call was not sent, and the turn waited for its result", s_skip);
            assert_int_equal(o, AGENT_TURN_AGENT_ERROR);
            assert_int_equal(fin->code, PROTO_WORKER_CODE_AGENT_ERROR);
            if (fin->message.len == 28 && memcmp(fin->message.p, "out of memory running a tool", 28) == 0)
                unsent = true;
        }
        s_link_free(&l);
    }
    assert_true(sent);   /* the loop went past the call's encoding */
    assert_true(unsent); /* and one run failed it */
}

/* ------------------------------------------------------------ a FINAL that cannot be encoded */

/* Says "hi", then makes the next allocation (the FINAL's encoding, after
 * the boundary's look at the link, which allocates nothing) fail. */
static agent_complete_rc_t s_round_hi_then_oom(s_fake_t *f, const agent_completion_req_t *req,
                                               const agent_sink_t *sink, agent_completion_t *out, char *err,
                                               size_t errcap)
{
    (void) f; (void) req; (void) out; (void) err; (void) errcap;
    if (sink->chunk(sink->ud, "hi", 2) < 0)
        return AGENT_COMPLETE_ABORTED;
    alloc_fail_arm(0);
    return AGENT_COMPLETE_OK;
}

/* The log line that says the FINAL did not encode fails the allocation
 * after it too (the error FINAL meant in its place): memory stays short. */
static void s_log_rearm(router_log_level_t level, const char *module, const char *line, size_t len, void *ud)
{
    (void) level; (void) module; (void) ud;
    static const char want[] = "final not encodable";
    if (len >= sizeof want - 1 && memmem(line, len, want, sizeof want - 1))
        alloc_fail_arm(0);
}

/* A done FINAL whose encoding runs out of memory: an error FINAL goes in
 * its place and the turn ends AGENT_ERROR (it said done before, while the
 * router heard an error); when the error cannot be encoded either, one
 * written without allocating still goes (before, no FINAL at all: the
 * worker and the turn stayed held until the router's turn timeout, and the
 * turn was logged done). */
static void test_final_without_memory(void **state)
{
    (void) state;
    for (int twice = 0; twice < 2; twice++) {
        static s_link_t l;
        memset(&l, 0, sizeof l);
        l.hold = true;
        proto_worker_turn_t t = s_turn("hi");
        s_fake_t f = s_fake(s_round_hi_then_oom, &l);
        if (twice)
            router_log_set_tap(s_log_rearm, NULL);
        agent_turn_outcome_t o = s_run_fake(&l, &f, &t);
        router_log_set_tap(NULL, NULL);
        assert_int_equal(alloc_fail_disarm(), 1); /* the second arm counts anew */
        s_link_release(&l);
        assert_int_equal(o, AGENT_TURN_AGENT_ERROR);
        const proto_worker_final_t *fin = s_final(&l);
        assert_int_equal(fin->type, PROTO_WORKER_FINAL_ERROR);
        assert_int_equal(fin->code, PROTO_WORKER_CODE_AGENT_ERROR);
        s_assert_text(fin->message, twice ? "out of memory: the worker could not encode the turn's result"
                                          : "the worker could not encode the turn's result");
        s_link_free(&l);
    }
    /* The hand-written body is the codec's own encoding of that error. */
    uint8_t buf[AGENT_FINAL_OOM_MAX];
    assert_int_equal(agent_final_oom_encode(s_tid, buf, AGENT_FINAL_OOM_MAX - 1), 0);
    size_t n = agent_final_oom_encode(s_tid, buf, sizeof buf);
    static const char msg[] = "out of memory: the worker could not encode the turn's result";
    proto_worker_final_t g = {.type = PROTO_WORKER_FINAL_ERROR, .code = PROTO_WORKER_CODE_AGENT_ERROR,
                              .message = {msg, sizeof msg - 1}};
    memcpy(g.turn_id, s_tid, PROTO_UUID_LEN);
    uint8_t *want = NULL;
    size_t want_len = 0;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_final_encode(&g, &want, &want_len, &err), 0);
    assert_int_equal(n, want_len);
    assert_memory_equal(buf, want, n);
    free(want);
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
        cmocka_unit_test(test_outcome_names),
        cmocka_unit_test(test_request_envelope_turn_starts_with_a_note),
        cmocka_unit_test(test_provider_fails),
        cmocka_unit_test(test_model_tokens_and_empty_text),
        cmocka_unit_test(test_max_tool_iterations_reached),
        cmocka_unit_test(test_calls_of_one_round_as_the_conversation_grows),
        cmocka_unit_test(test_response_bound),
        cmocka_unit_test(test_stop_refuses_text_and_drops_waiting_steers),
        cmocka_unit_test(test_a_failed_send_ends_the_turn),
        cmocka_unit_test(test_a_lost_final_is_link_lost),
        cmocka_unit_test(test_timeout_awaiting_a_tool_result),
        cmocka_unit_test(test_timeout_cuts_a_long_wait),
        cmocka_unit_test(test_timeout_zero_and_huge),
        cmocka_unit_test(test_a_flood_of_ignored_requests),
        cmocka_unit_test(test_conversation_bound),
        cmocka_unit_test(test_no_tool_after_a_stop),
        cmocka_unit_test(test_text_that_is_not_utf8),
        cmocka_unit_test(test_controls_at_boundaries),
        cmocka_unit_test(test_provider_that_ignores_a_lost_link),
        cmocka_unit_test(test_debug_log_names_provider_and_outcome),
        cmocka_unit_test(test_tour),
        cmocka_unit_test(test_tour_out_of_memory),
        cmocka_unit_test(test_final_without_memory),
        cmocka_unit_test(test_tool_name_with_a_nul),
        cmocka_unit_test(test_router_tool_call_that_cannot_be_sent),
        cmocka_unit_test(test_turn_given_up_below),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
