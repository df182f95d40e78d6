/* tests/agent_pool_test.c — the embedded agent workers (agent_pool) serving
 * turns from the real broker on a real loop, as inside `kith daemon`: a
 * burst of turns each answered once with its partials in order, a router
 * tool answered through send_to_holder, a stop, a provider that cannot
 * start (AGENT_INIT_FAILED), and a pool stopped mid-turn (the broker fails
 * that turn instead of losing it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "agent/worker.h"
#include "proto/worker_msg.h"
#include "router/net/loop.h"
#include "router/workers/broker.h"
#include "loop_until.h"

#define S(lit) ((proto_worker_str_t){(lit), sizeof(lit) - 1})
#define TURNS 24

static int s_n;

typedef struct {
    router_loop_t *loop;
    router_broker_t *b;
    char ep[64];
} runner_t;

/* Runs the loop until until(ud) (checked every 10 ms), at most 120 s. */
static void s_run(runner_t *r, bool (*until)(void *), void *ud)
{
    test_loop_until(r->loop, until, ud, 10, 120000);
}

static void s_setup(runner_t *r)
{
    snprintf(r->ep, sizeof r->ep, "inproc://agent-pool-test-%d", ++s_n);
    r->loop = router_loop_new(NULL);
    assert_non_null(r->loop);
    char err[256] = "";
    router_broker_opts_t o = {.loop = r->loop, .endpoint = r->ep, .heartbeat_ms = 100, .liveness = 50};
    r->b = router_broker_new(&o, err, sizeof err);
    assert_non_null(r->b);
}

static void s_teardown(runner_t *r)
{
    router_broker_destroy(&r->b);
    router_loop_destroy(&r->loop);
}

static agent_pool_t *s_pool(runner_t *r, unsigned threads, agent_provider_kind_t kind)
{
    agent_pool_opts_t o = {.endpoint = r->ep, .heartbeat_ms = 100, .liveness = 50, .threads = threads};
    o.provider.kind = kind;
    char err[256] = "";
    agent_pool_t *p = agent_pool_start(&o, err, sizeof err);
    if (!p)
        fail_msg("pool: %s", err);
    return p;
}

/* ------------------------------------------------------------ one turn's replies */

typedef struct {
    runner_t *r;
    int64_t h;
    uint8_t tid[PROTO_UUID_LEN];
    uint64_t partials;
    int finals, lost;
    proto_worker_final_type_t final_type;
    proto_worker_code_t code;
    char response[256];
    bool answer_tools;          /* answer tool_call partials with a tool_result */
    bool stop_on_first;         /* send a stop after the first partial */
} turn_t;

static void s_on_reply(int kind, const uint8_t *body, size_t len, void *ud)
{
    turn_t *t = ud;
    if (kind < 0) {
        t->lost++;
        return;
    }
    proto_worker_reply_t rep;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_reply_decode(body, len, &rep, &err), 0);
    if (kind == 0) {
        assert_int_equal(rep.type, PROTO_WORKER_REPLY_PARTIAL);
        assert_int_equal(t->finals, 0);
        assert_memory_equal(rep.partial.turn_id, t->tid, PROTO_UUID_LEN);
        assert_int_equal(rep.partial.seq, t->partials); /* in order, none skipped */
        t->partials++;
        proto_worker_request_t q = {0};
        if (t->answer_tools && rep.partial.event.type == PROTO_WORKER_EV_TOOL_CALL) {
            q.type = PROTO_WORKER_REQ_TOOL_RESULT;
            memcpy(q.tool_result.turn_id, t->tid, PROTO_UUID_LEN);
            q.tool_result.id = rep.partial.event.call.id;
            q.tool_result.result = S("[\"bob\"]");
        } else if (t->stop_on_first && t->partials == 1) {
            q.type = PROTO_WORKER_REQ_STOP;
            memcpy(q.control.turn_id, t->tid, PROTO_UUID_LEN);
        }
        if (q.type) {
            uint8_t *b = NULL;
            size_t n = 0;
            assert_int_equal(proto_worker_request_encode(&q, &b, &n, &err), 0);
            assert_int_equal(router_broker_send_to_holder(t->r->b, t->h, b, n), 0);
            free(b);
        }
    } else {
        assert_int_equal(rep.type, PROTO_WORKER_REPLY_FINAL);
        assert_memory_equal(rep.final.turn_id, t->tid, PROTO_UUID_LEN);
        t->finals++;
        t->final_type = rep.final.type;
        t->code = rep.final.code;
        const proto_worker_str_t *s = rep.final.type == PROTO_WORKER_FINAL_DONE ? &rep.final.full_response
                                                                                 : &rep.final.message;
        snprintf(t->response, sizeof t->response, "%.*s", (int) s->len, s->p ? s->p : "");
    }
    proto_worker_reply_clear(&rep);
}

static proto_worker_tool_spec_t s_tools[] = {
    {S("peers"), S("List peers"), S("{\"type\":\"object\"}"), PROTO_WORKER_EXEC_ROUTER},
};

static void s_submit(runner_t *r, turn_t *t, const char *content)
{
    t->r = r;
    proto_uuid_v7_new(t->tid);
    proto_worker_request_t q = {.type = PROTO_WORKER_REQ_TURN};
    memcpy(q.turn.turn_id, t->tid, PROTO_UUID_LEN);
    q.turn.session_id = S("s");
    q.turn.message.role = PROTO_WORKER_ROLE_USER;
    q.turn.message.content = (proto_worker_str_t){content, strlen(content)};
    q.turn.tools = s_tools;
    q.turn.n_tools = 1;
    q.turn.max_tool_iterations = 60;
    q.turn.turn_timeout_s = 600;
    q.turn.origin.channel = PROTO_WORKER_CHANNEL_WS;
    uint8_t *b = NULL;
    size_t n = 0;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_request_encode(&q, &b, &n, &err), 0);
    t->h = router_broker_request(r->b, AGENT_SERVICE, b, n, s_on_reply, t);
    assert_true(t->h > 0);
    free(b);
}

typedef struct {
    turn_t *t;
    int n;
} turns_t;

static bool s_all_ended(void *ud)
{
    turns_t *a = ud;
    for (int i = 0; i < a->n; i++)
        if (a->t[i].finals + a->t[i].lost == 0)
            return false;
    return true;
}

static bool s_workers_2(void *ud)
{
    return router_broker_workers(ud, AGENT_SERVICE) == 2;
}

static bool s_started(void *ud)
{
    return ((turn_t *) ud)->partials > 0;
}

/* ------------------------------------------------------------ tests */

static void test_burst_tools_and_stop(void **state)
{
    (void) state;
    runner_t r = {0};
    s_setup(&r);
    agent_pool_t *pool = s_pool(&r, 2, AGENT_PROVIDER_SCRIPTED);
    s_run(&r, s_workers_2, r.b);

    static turn_t t[TURNS];
    memset(t, 0, sizeof t);
    char text[TURNS][32];
    for (int i = 0; i < TURNS; i++) {
        snprintf(text[i], sizeof text[i], "message number %d", i);
        s_submit(&r, &t[i], text[i]);
    }
    turns_t all = {t, TURNS};
    s_run(&r, s_all_ended, &all);
    for (int i = 0; i < TURNS; i++) {
        char want[64];
        snprintf(want, sizeof want, "echo: %.31s", text[i]);
        assert_int_equal(t[i].finals, 1);
        assert_int_equal(t[i].lost, 0);
        assert_int_equal(t[i].final_type, PROTO_WORKER_FINAL_DONE);
        assert_string_equal(t[i].response, want);
    }

    /* A router tool, answered through the holder; then a stop mid-sleep. */
    turn_t tool = {.answer_tools = true}, stop = {.stop_on_first = true};
    s_submit(&r, &tool, "/peers");
    s_submit(&r, &stop, "/sleep 600000");
    turn_t *both[2] = {&tool, &stop};
    for (int i = 0; i < 2; i++) {
        turns_t one = {both[i], 1};
        s_run(&r, s_all_ended, &one);
    }
    assert_int_equal(tool.final_type, PROTO_WORKER_FINAL_DONE);
    assert_string_equal(tool.response, "peers returned: [\"bob\"]");
    assert_int_equal(stop.final_type, PROTO_WORKER_FINAL_STOPPED);
    assert_true(agent_pool_turns(pool) >= TURNS + 2);

    agent_pool_stop(&pool);
    assert_null(pool);
    agent_pool_stop(&pool); /* idempotent */
    s_teardown(&r);
}

/* Stopping the pool mid-turn: the worker leaves (DISCONNECT) and the broker
 * ends the turn (kind -1) rather than leaving it hanging. */
static void test_stop_pool_mid_turn(void **state)
{
    (void) state;
    runner_t r = {0};
    s_setup(&r);
    agent_pool_t *pool = s_pool(&r, 1, AGENT_PROVIDER_SCRIPTED);
    turn_t t = {0};
    s_submit(&r, &t, "/sleep 600000");
    s_run(&r, s_started, &t);
    agent_pool_stop(&pool);
    turns_t one = {&t, 1};
    s_run(&r, s_all_ended, &one);
    assert_int_equal(t.finals + t.lost, 1);
    s_teardown(&r);
}

/* An openai provider without a model cannot start: the worker still serves,
 * answering AGENT_INIT_FAILED. */
static void test_init_failed(void **state)
{
    (void) state;
    runner_t r = {0};
    s_setup(&r);
    agent_pool_t *pool = s_pool(&r, 1, AGENT_PROVIDER_OPENAI);
    turn_t t = {0};
    s_submit(&r, &t, "hello");
    turns_t one = {&t, 1};
    s_run(&r, s_all_ended, &one);
    assert_int_equal(t.final_type, PROTO_WORKER_FINAL_ERROR);
    assert_int_equal(t.code, PROTO_WORKER_CODE_AGENT_INIT_FAILED);
    assert_string_equal(t.response, "openai: agent.model is required");
    agent_pool_stop(&pool);
    s_teardown(&r);
}

static void test_bad_opts(void **state)
{
    (void) state;
    agent_pool_opts_t o = {.endpoint = "nope://x", .threads = 1};
    char err[256] = "";
    assert_null(agent_pool_start(&o, err, sizeof err));
    assert_true(err[0] != '\0');
    o.threads = AGENT_THREADS_MAX + 1;
    assert_null(agent_pool_start(&o, err, sizeof err));
    /* No threads: a pool that does nothing, and stops. */
    o.threads = 0;
    agent_pool_t *p = agent_pool_start(&o, err, sizeof err);
    assert_non_null(p);
    agent_pool_stop(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_tools_and_stop),
        cmocka_unit_test(test_stop_pool_mid_turn),
        cmocka_unit_test(test_init_failed),
        cmocka_unit_test(test_bad_opts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
