/* tests/turns_test.c — sessions and turns on a real loop and broker with a
 * fake agent worker thread (router_mdp_worker + proto/worker_msg): a chat
 * message's frames reach every subscriber, history grows and comes back,
 * SESSION_BUSY past the bound and after the lock timeout, steer and stop
 * (with and without a turn), inbox entries (plain and external events)
 * become turns and leave the inbox, and the /api/sessions documents; and
 * what goes wrong: no worker takes a turn, a worker never answers (or
 * never confirms a stop), a worker's reply is malformed or out of order,
 * a router-run tool is called with bad arguments; and the loop thread out
 * of memory at each allocation of a turn with router tools in turn. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <czmq.h>

#include "alloc_fail.h"
#include "proto/uuid.h"
#include "proto/worker_msg.h"
#include "router/net/loop.h"
#include "router/state/inbox.h"
#include "router/workers/broker.h"
#include "router/workers/mdp_worker.h"
#include "router/workers/turns.h"

/* A fresh endpoint per case: a closed socket's inproc name is released
 * asynchronously. */
static char EP[64];
static int s_case;

/* ------------------------------------------------------------ the fake agent */

typedef struct {
    pthread_t thread;
    router_mdp_worker_t *w;
} agent_t;

static void s_send(router_mdp_worker_t *w, const proto_worker_reply_t *rep)
{
    uint8_t *body;
    size_t len;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_reply_encode(rep, &body, &len, &err), 0);
    if (rep->type == PROTO_WORKER_REPLY_PARTIAL)
        assert_int_equal(router_mdp_worker_partial(w, body, len), 0);
    else
        assert_int_equal(router_mdp_worker_final(w, body, len), 0);
    free(body);
}

static void s_chunk(router_mdp_worker_t *w, const uint8_t id[16], uint64_t seq, const char *text)
{
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_PARTIAL};
    memcpy(rep.partial.turn_id, id, 16);
    rep.partial.seq = seq;
    rep.partial.event.type = PROTO_WORKER_EV_CHUNK;
    rep.partial.event.text = (proto_worker_str_t) {text, strlen(text)};
    s_send(w, &rep);
}

static void s_done(router_mdp_worker_t *w, const uint8_t id[16], const char *text)
{
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
    rep.final.type = PROTO_WORKER_FINAL_DONE;
    memcpy(rep.final.turn_id, id, 16);
    rep.final.full_response = (proto_worker_str_t) {text, strlen(text)};
    s_send(w, &rep);
}

static void s_partial(router_mdp_worker_t *w, const uint8_t id[16], uint64_t seq,
                      const proto_worker_event_t *ev)
{
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_PARTIAL};
    memcpy(rep.partial.turn_id, id, 16);
    rep.partial.seq = seq;
    rep.partial.event = *ev;
    s_send(w, &rep);
}

static proto_worker_str_t s_s(const char *text)
{
    return (proto_worker_str_t) {text, strlen(text)};
}

/* "/events": every event kind that becomes a frame, one out of order. */
static void s_events(router_mdp_worker_t *w, const uint8_t id[16])
{
    proto_worker_event_t ev = {.type = PROTO_WORKER_EV_CHUNK_RESET};
    s_partial(w, id, 0, &ev);
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_OPERATOR_STATUS, .text = s_s("busy")};
    s_partial(w, id, 1, &ev);
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_AGENT_EVENT, .name = s_s("mood"),
                                 .data = s_s("{\"calm\":true}")};
    s_partial(w, id, 2, &ev);
    ev = (proto_worker_event_t) {.type = PROTO_WORKER_EV_THINKING, .text = s_s("hmm")};
    s_partial(w, id, 7, &ev); /* 3 was due: logged, the frame still goes out */
    s_done(w, id, "events sent");
}

/* "/tools": router-run tools called with what they must refuse; the
 * results, each followed by "|", are the turn's full response. */
static void s_tools(router_mdp_worker_t *w, const uint8_t id[16])
{
    static const char *const calls[][2] = {
        {"send_message", "[1]"},
        {"send_message", "{\"peer\":\"nobody\",\"body\":\"x\"}"},
        {"send_request", "{\"peer\":\"nobody\",\"intent\":\"x\"}"},
        {"send_response", "{\"in_reply_to\":\"nope\"}"},
        {"send_response",
         "{\"in_reply_to\":\"0190f5a0-0000-7000-8000-000000000000\",\"status\":\"failed\"}"},
        {"peers", "{}"},
    };
    size_t n = sizeof calls / sizeof calls[0];
    for (size_t i = 0; i < n; i++) {
        char cid[8];
        snprintf(cid, sizeof cid, "c%zu", i);
        proto_worker_event_t ev = {.type = PROTO_WORKER_EV_TOOL_CALL};
        ev.call = (proto_worker_tool_call_t) {s_s(cid), s_s(calls[i][0]), s_s(calls[i][1])};
        s_partial(w, id, i, &ev);
    }
    char all[4096] = "";
    uint8_t *body;
    size_t len;
    for (size_t got = 0; got < n && router_mdp_worker_recv(w, &body, &len, -1) == 1;) {
        proto_worker_request_t r;
        proto_worker_error_t err;
        int rc = proto_worker_request_decode(body, len, &r, &err);
        free(body);
        if (rc != 0)
            continue;
        if (r.type == PROTO_WORKER_REQ_TOOL_RESULT) {
            size_t used = strlen(all);
            snprintf(all + used, sizeof all - used, "%s:%s%s|", r.tool_result.id.p,
                     r.tool_result.is_error ? "error:" : "", r.tool_result.result.p);
            got++;
        }
        bool stop = r.type == PROTO_WORKER_REQ_STOP;
        proto_worker_request_clear(&r);
        if (stop) { /* no more results are coming */
            proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
            rep.final.type = PROTO_WORKER_FINAL_STOPPED;
            memcpy(rep.final.turn_id, id, 16);
            s_send(w, &rep);
            return;
        }
    }
    s_done(w, id, all);
}

/* "echo(h=N): content"; "/hold" waits for a steer (answers "steered: X")
 * or a stop (FINAL stopped). */
static void *s_agent_main(void *arg)
{
    agent_t *a = arg;
    uint8_t *body;
    size_t len;
    while (router_mdp_worker_recv(a->w, &body, &len, -1) == 1) {
        proto_worker_request_t req;
        proto_worker_error_t err;
        int rc = proto_worker_request_decode(body, len, &req, &err);
        free(body);
        if (rc != 0 || req.type != PROTO_WORKER_REQ_TURN) {
            if (rc == 0)
                proto_worker_request_clear(&req);
            continue;
        }
        uint8_t id[16];
        memcpy(id, req.turn.turn_id, 16);
        char out[512];
        const char *content = req.turn.message.content.p;
        if (strcmp(content, "/deaf") == 0) {
            /* Takes the turn and never answers anything again. */
            while (router_mdp_worker_recv(a->w, &body, &len, -1) == 1)
                free(body);
        } else if (strcmp(content, "/events") == 0) {
            s_events(a->w, id);
        } else if (strcmp(content, "/garbage") == 0) {
            assert_int_equal(router_mdp_worker_partial(a->w, (const uint8_t *) "\xff", 1), 0);
            assert_int_equal(router_mdp_worker_final(a->w, (const uint8_t *) "\xff", 1), 0);
        } else if (strcmp(content, "/tools") == 0) {
            s_tools(a->w, id);
        } else if (strcmp(content, "/hold") == 0) {
            for (;;) {
                proto_worker_request_t c;
                if (router_mdp_worker_recv(a->w, &body, &len, -1) != 1)
                    break;
                rc = proto_worker_request_decode(body, len, &c, &err);
                free(body);
                if (rc != 0)
                    continue;
                if (c.type == PROTO_WORKER_REQ_STEER) {
                    snprintf(out, sizeof out, "steered: %s", c.control.content.p);
                    s_chunk(a->w, id, 0, out);
                    s_done(a->w, id, out);
                    proto_worker_request_clear(&c);
                    break;
                }
                if (c.type == PROTO_WORKER_REQ_STOP) {
                    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
                    rep.final.type = PROTO_WORKER_FINAL_STOPPED;
                    memcpy(rep.final.turn_id, id, 16);
                    s_send(a->w, &rep);
                    proto_worker_request_clear(&c);
                    break;
                }
                proto_worker_request_clear(&c);
            }
        } else {
            snprintf(out, sizeof out, "echo(h=%zu): %s", req.turn.n_history,
                     req.turn.message.content.p);
            s_chunk(a->w, id, 0, out);
            s_done(a->w, id, out);
        }
        proto_worker_request_clear(&req);
    }
    return NULL;
}

static agent_t *s_agent_start(void)
{
    agent_t *a = calloc(1, sizeof *a);
    char err[256];
    router_mdp_worker_opts_t o = {.endpoint = EP, .service = "kith.agent", .heartbeat_ms = 100,
                                  .liveness = 100};
    a->w = router_mdp_worker_new(&o, err, sizeof err);
    assert_non_null(a->w);
    assert_int_equal(pthread_create(&a->thread, NULL, s_agent_main, a), 0);
    return a;
}

static void s_agent_stop(agent_t **ap)
{
    if (!*ap)
        return;
    router_mdp_worker_interrupt((*ap)->w);
    pthread_join((*ap)->thread, NULL);
    router_mdp_worker_destroy(&(*ap)->w);
    free(*ap);
    *ap = NULL;
}

/* ------------------------------------------------------------ the harness */

#define FRAMES_MAX 64

typedef struct {
    int n;
    router_turn_frame_type_t type[FRAMES_MAX];
    char json[FRAMES_MAX][512];
} frames_t;

static void s_on_frame(const router_turn_frame_t *f, void *ud)
{
    frames_t *fr = ud;
    if (fr->n == FRAMES_MAX)
        return;
    fr->type[fr->n] = f->type;
    snprintf(fr->json[fr->n], sizeof fr->json[0], "%.*s", (int) f->json_len, f->json);
    fr->n++;
}

/* The last frame of a type, or NULL. */
static const char *s_last(const frames_t *fr, router_turn_frame_type_t type)
{
    for (int i = fr->n - 1; i >= 0; i--)
        if (fr->type[i] == type)
            return fr->json[i];
    return NULL;
}

static int s_count(const frames_t *fr, router_turn_frame_type_t type)
{
    int n = 0;
    for (int i = 0; i < fr->n; i++)
        n += fr->type[i] == type;
    return n;
}

typedef struct {
    router_loop_t *loop;
    router_broker_t *b;
    router_inbox_t *inbox;
    router_turns_t *t;
    agent_t *agent;
    bool (*until)(void *);
    void *ud;
    uint64_t deadline;
    bool timed_out;
} env_t;

static void s_check(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    env_t *e = ud;
    if (e->until(e->ud) || router_loop_now_ms(loop) > e->deadline) {
        e->timed_out = !e->until(e->ud);
        router_loop_stop(loop);
        return;
    }
    router_loop_timer_add(loop, 10, s_check, e);
}

static void s_run(env_t *e, bool (*until)(void *), void *ud)
{
    e->until = until;
    e->ud = ud;
    e->deadline = router_loop_now_ms(e->loop) + 60000;
    router_loop_timer_add(e->loop, 0, s_check, e);
    assert_int_equal(router_loop_run(e->loop), 0);
    assert_false(e->timed_out);
}

static void s_setup_with(env_t *e, uint32_t queue_max, uint32_t lock_s, uint32_t turn_timeout_s,
                         bool agent)
{
    char err[256] = "";
    snprintf(EP, sizeof EP, "inproc://turns-test-%d", ++s_case);
    e->loop = router_loop_new(NULL);
    router_broker_opts_t bo = {.loop = e->loop, .endpoint = EP, .heartbeat_ms = 100,
                               .liveness = 100};
    e->b = router_broker_new(&bo, err, sizeof err);
    assert_non_null(e->b);
    router_inbox_opts_t io = {.capacity = 16};
    e->inbox = router_inbox_new(&io, err, sizeof err);
    assert_non_null(e->inbox);
    router_turns_opts_t to = {.loop = e->loop, .broker = e->b, .inbox = e->inbox,
                              .comms_session = "comms", .queue_max = queue_max,
                              .lock_timeout_s = lock_s, .turn_timeout_s = turn_timeout_s};
    e->t = router_turns_new(&to, err, sizeof err);
    if (!e->t)
        fprintf(stderr, "turns: %s\n", err);
    assert_non_null(e->t);
    e->agent = agent ? s_agent_start() : NULL;
}

static void s_setup(env_t *e, uint32_t queue_max, uint32_t lock_s)
{
    s_setup_with(e, queue_max, lock_s, 0, true);
}

static void s_teardown(env_t *e)
{
    if (e->agent)
        s_agent_stop(&e->agent);
    router_turns_destroy(&e->t);
    router_turns_destroy(&e->t);
    router_broker_destroy(&e->b);
    router_inbox_destroy(&e->inbox);
    router_loop_destroy(&e->loop);
}

typedef struct {
    frames_t *fr;
    router_turn_frame_type_t type;
    int n;
} want_t;

static bool s_has(void *ud)
{
    want_t *w = ud;
    return s_count(w->fr, w->type) >= w->n;
}

static void s_wait(env_t *e, frames_t *fr, router_turn_frame_type_t type, int n)
{
    want_t w = {fr, type, n};
    s_run(e, s_has, &w);
}

/* ------------------------------------------------------------ cases */

static void test_chat_round_trip(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0}, b = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, NULL, "mine", s_on_frame, &a);
    assert_true(sa > 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    assert_non_null(strstr(a.json[0], "\"resumed\":false"));
    assert_non_null(strstr(a.json[0], "\"message_count\":0"));
    assert_non_null(strstr(a.json[0], "\"name\":\"mine\""));
    char sid[ROUTER_TURNS_SESSION_ID_MAX + 1];
    snprintf(sid, sizeof sid, "%s", router_turns_session_of(e.t, sa));

    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "hi", 2, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(
        strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "\"full_response\":\"echo(h=0): hi\""));
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_CHUNK), "\"content\":\"echo(h=0): hi\""));
    /* The second turn carries the first exchange as history. */
    assert_int_equal(router_turns_submit(e.t, sa, "again", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "echo(h=2): again"));

    /* Another subscriber resumes the session and sees the next turn too. */
    router_turns_sub_t sb = router_turns_attach(e.t, sid, NULL, s_on_frame, &b);
    s_wait(&e, &b, ROUTER_TURN_FRAME_SESSION_START, 1);
    assert_non_null(strstr(b.json[0], "\"resumed\":true"));
    assert_non_null(strstr(b.json[0], "\"message_count\":4"));
    assert_int_equal(router_turns_submit(e.t, sb, "three", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 3);
    s_wait(&e, &b, ROUTER_TURN_FRAME_DONE, 1);

    /* Empty content, bad ids. */
    assert_int_equal(router_turns_submit(e.t, sa, " \n", 2, &code), -1);
    assert_string_equal(code, "EMPTY_CONTENT");
    assert_int_equal(router_turns_attach(e.t, "bad id!", NULL, s_on_frame, &b), 0);
    router_turns_detach(e.t, sb);
    router_turns_detach(e.t, sb);
    assert_null(router_turns_session_of(e.t, sb));
    router_turns_detach(e.t, sa);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.done, 3);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.sessions, 0);
    s_teardown(&e);
}

static void test_busy_steer_stop(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 1, 1);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "busy", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    /* No turn: steer is NO_ACTIVE_TURN, stop says so. */
    assert_int_equal(router_turns_steer(e.t, s, "x", 1, &code), -1);
    assert_string_equal(code, "NO_ACTIVE_TURN");
    router_turns_stop(e.t, s);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED), "no active turn"));

    assert_int_equal(router_turns_submit(e.t, s, "/hold", 5, &code), 0);
    assert_int_equal(router_turns_submit(e.t, s, "waits", 5, &code), 0);
    assert_int_equal(router_turns_submit(e.t, s, "one too many", 12, &code), -1);
    assert_string_equal(code, "SESSION_BUSY");
    /* The waiting one times out after the lock timeout (1 s here). */
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "\"code\":\"SESSION_BUSY\""));
    /* Steer the held turn. */
    assert_int_equal(router_turns_steer(e.t, s, "left", 4, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "steered: left"));
    /* Stop a held turn. */
    assert_int_equal(router_turns_submit(e.t, s, "/hold", 5, &code), 0);
    router_turns_stop(e.t, s);
    s_wait(&e, &a, ROUTER_TURN_FRAME_STOPPED, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED), "\"turn_id\""));
    /* The session runs on. */
    assert_int_equal(router_turns_submit(e.t, s, "after", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.stopped, 1);
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* A waiting message taken out of the queue never runs; one whose turn
 * began cannot be taken out. */
static void test_withdraw(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "withdraw", NULL, s_on_frame, &a);
    router_turns_sub_t other = router_turns_attach(e.t, "withdraw", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 2);
    const char *code = NULL;
    uint64_t held = 0, first = 0, second = 0;
    assert_int_equal(router_turns_submit_msg(e.t, s, "/hold", 5, &held, &code), 0);
    assert_int_equal(router_turns_submit_msg(e.t, s, "first", 5, &first, &code), 0);
    assert_int_equal(router_turns_submit_msg(e.t, s, "second", 6, &second, &code), 0);
    assert_true(held != 0 && first != held && second != first);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.waiting, 2);
    assert_int_equal(router_turns_withdraw(e.t, s, held), -1);      /* in flight */
    assert_int_equal(router_turns_withdraw(e.t, other, first), -1); /* not other's */
    assert_int_equal(router_turns_withdraw(e.t, s, 0), -1);
    assert_int_equal(router_turns_withdraw(e.t, 999, first), -1);   /* no such subscriber */
    assert_int_equal(router_turns_withdraw(e.t, s, first), 0);
    assert_int_equal(router_turns_withdraw(e.t, s, first), -1);     /* gone already */
    router_turns_stats(e.t, &st);
    assert_int_equal(st.waiting, 1);
    /* The held turn stops; the next is "second": "first" never ran. */
    router_turns_stop(e.t, s);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2); /* both subscribers see it */
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "): second\""));
    router_turns_stats(e.t, &st);
    assert_int_equal(st.waiting, 0);
    assert_int_equal(st.done, 1);
    router_turns_detach(e.t, s);
    router_turns_detach(e.t, other);
    s_teardown(&e);
}

static bool s_inbox_empty(void *ud)
{
    return router_inbox_count(ud) == 0;
}

static void test_inbox_turns(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t c = {0}, x = {0};
    router_turns_sub_t sc = router_turns_attach(e.t, "comms", NULL, s_on_frame, &c);
    router_turns_sub_t sx = router_turns_attach(e.t, "s1", NULL, s_on_frame, &x);
    s_wait(&e, &c, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &x, ROUTER_TURN_FRAME_SESSION_START, 1);
    uint8_t id[16], nobody[32] = {0};
    uint64_t seq;
    proto_uuid_v7_new(id);
    const char *line = "disk almost full";
    assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) line,
                                        strlen(line), 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
    proto_uuid_v7_new(id);
    const char *ev = "{\"session_id\":\"s1\",\"event\":{\"kind\":\"generic_json\",\"n\":1}}";
    assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) ev,
                                        strlen(ev), 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
    router_turns_kick(e.t);
    s_wait(&e, &c, ROUTER_TURN_FRAME_DONE, 1);
    s_wait(&e, &x, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&c, ROUTER_TURN_FRAME_DONE), "echo(h=0): disk almost full"));
    assert_non_null(strstr(s_last(&x, ROUTER_TURN_FRAME_DONE),
                           "echo(h=0): {\\\"kind\\\":\\\"generic_json\\\",\\\"n\\\":1}"));
    s_run(&e, s_inbox_empty, e.inbox);
    router_turns_detach(e.t, sc);
    router_turns_detach(e.t, sx);
    s_teardown(&e);
}

/* A backlog whose turns cannot start (the session store refusing every
 * job): each ends at once as an error, one after another in s_pump's loop,
 * and the emptied session is collected once. This recursed a frame per
 * entry, and the inner calls freed the session the outer ones still used
 * (a double free under load in tools/bench). */
static void test_backlog_that_cannot_start(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    router_turns_store_refuse(e.t, true);
    uint8_t id[16], nobody[32] = {0};
    uint64_t seq;
    for (int i = 0; i < 16; i++) {
        proto_uuid_v7_new(id);
        char line[32];
        int n = snprintf(line, sizeof line, "event %d", i);
        assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) line,
                                            (size_t) n, 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
    }
    router_turns_kick(e.t);
    s_run(&e, s_inbox_empty, e.inbox);
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.errors, 16);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.sessions, 0);
    router_turns_store_refuse(e.t, false);
    s_teardown(&e);
}

typedef struct {
    int status;
    char json[4096];
    bool done;
} json_t;

static void s_on_json(int status, const char *json, size_t len, void *ud)
{
    json_t *j = ud;
    j->status = status;
    snprintf(j->json, sizeof j->json, "%.*s", (int) len, json);
    j->done = true;
}

static bool s_json_done(void *ud)
{
    return ((json_t *) ud)->done;
}

static void test_sessions_api(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "api", "named", s_on_frame, &a);
    const char *code;
    assert_int_equal(router_turns_submit(e.t, s, "q", 1, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    json_t l = {0}, g = {0}, n = {0};
    assert_int_equal(router_turns_sessions_list(e.t, 10, s_on_json, &l), 0);
    s_run(&e, s_json_done, &l);
    assert_int_equal(l.status, 200);
    assert_non_null(strstr(l.json, "{\"sessions\":[{\"id\":\"api\",\"name\":\"named\""));
    assert_int_equal(router_turns_session_get(e.t, "api", 0, s_on_json, &g), 0);
    s_run(&e, s_json_done, &g);
    assert_int_equal(g.status, 200);
    assert_non_null(strstr(g.json, "\"message_count\":2"));
    assert_non_null(strstr(g.json, "{\"role\":\"user\",\"content\":\"q\""));
    assert_non_null(strstr(g.json, "{\"role\":\"assistant\",\"content\":\"echo(h=0): q\""));
    assert_int_equal(router_turns_session_get(e.t, "nope", 0, s_on_json, &n), 0);
    s_run(&e, s_json_done, &n);
    assert_int_equal(n.status, 404);
    assert_int_equal(router_turns_session_get(e.t, "bad/id", 0, s_on_json, &n), -1);
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* A turn waits in the broker's queue. */
static bool s_queued(void *ud)
{
    router_broker_stats_t bs;
    router_broker_stats(ud, &bs);
    return bs.queued >= 1;
}

/* No worker at all: a chat turn fails once its time is up (an inbox entry
 * would wait on); a stop before any worker took it ends it at once. */
static void test_no_worker(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 1, false);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "alone", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "anyone?", 7, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR),
                           "no agent worker took the turn in time"));
    /* Stopped while its history loads: it ends once loaded. */
    assert_int_equal(router_turns_submit(e.t, s, "still?", 6, &code), 0);
    router_turns_stop(e.t, s);
    router_turns_stop(e.t, s); /* asked already: nothing more */
    s_wait(&e, &a, ROUTER_TURN_FRAME_STOPPED, 1);
    /* Stopped while queued for a worker. */
    assert_int_equal(router_turns_submit(e.t, s, "again?", 6, &code), 0);
    s_run(&e, s_queued, e.b);
    router_turns_stop(e.t, s);
    s_wait(&e, &a, ROUTER_TURN_FRAME_STOPPED, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_STOPPED),
                           "stopped before a worker took it"));
    router_turns_stats_t st;
    router_turns_stats(e.t, &st);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.stopped, 2);
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* Both turns were handed to a worker. */
static bool s_taken(void *ud)
{
    router_broker_stats_t bs;
    router_broker_stats(ud, &bs);
    return bs.requests >= 2 && bs.queued == 0;
}

/* A worker that takes a turn and goes silent: the turn times out; one that
 * never confirms a stop: the turn ends as stopped after the grace. */
static void test_silent_worker(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 1, true);
    agent_t *second = s_agent_start();
    frames_t a = {0}, b = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, "deaf-a", NULL, s_on_frame, &a);
    router_turns_sub_t sb = router_turns_attach(e.t, "deaf-b", NULL, s_on_frame, &b);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    s_wait(&e, &b, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "/deaf", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "the turn timed out"));
    assert_int_equal(router_turns_submit(e.t, sb, "/deaf", 5, &code), 0);
    /* Stop once a worker holds it (no longer queued in the broker). */
    s_run(&e, s_taken, e.b);
    router_turns_stop(e.t, sb);
    s_wait(&e, &b, ROUTER_TURN_FRAME_STOPPED, 1);
    assert_null(strstr(s_last(&b, ROUTER_TURN_FRAME_STOPPED), "before a worker took it"));
    router_turns_detach(e.t, sa);
    router_turns_detach(e.t, sb);
    s_agent_stop(&second);
    s_teardown(&e);
}

/* A turn the router times out is stopped at its worker too: the one
 * worker, held by a turn that waits for controls, is free again for the
 * next turn (it was held until the worker ended by itself). */
static void test_timed_out_turn_frees_its_worker(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup_with(&e, 0, 0, 1, true);
    frames_t a = {0};
    router_turns_sub_t sa = router_turns_attach(e.t, "held", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, sa, "/hold", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "the turn timed out"));
    assert_int_equal(router_turns_submit(e.t, sa, "after", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "echo(h="));
    router_turns_detach(e.t, sa);
    s_teardown(&e);
}

/* Every event kind a worker may send becomes its frame (an out-of-order
 * one too); a malformed partial is ignored, a malformed final ends the
 * turn with an error; the session serves on. */
static void test_worker_events_and_garbage(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "ev", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/events", 7, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    assert_int_equal(s_count(&a, ROUTER_TURN_FRAME_CHUNK_RESET), 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_OPERATOR_STATUS), "\"status\":\"busy\""));
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_AGENT_EVENT),
                           "\"name\":\"mood\",\"data\":{\"calm\":true}"));
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_THINKING), "\"content\":\"hmm\""));
    assert_int_equal(router_turns_submit(e.t, s, "/garbage", 8, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_ERROR, 1);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_ERROR), "final reply was malformed"));
    assert_int_equal(router_turns_submit(e.t, s, "after", 5, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 2);
    assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "): after"));
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* Router-run tools refuse what they cannot do with a result the model can
 * read (is_error), and the turn goes on. No trust store, no comms here. */
static void test_router_tool_refusals(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    frames_t a = {0};
    router_turns_sub_t s = router_turns_attach(e.t, "tools", NULL, s_on_frame, &a);
    s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
    const char *code = NULL;
    assert_int_equal(router_turns_submit(e.t, s, "/tools", 6, &code), 0);
    s_wait(&e, &a, ROUTER_TURN_FRAME_DONE, 1);
    const char *done = s_last(&a, ROUTER_TURN_FRAME_DONE);
    assert_non_null(strstr(done, "c0:error:{\\\"error\\\":\\\"arguments must be a JSON object"));
    assert_non_null(strstr(done, "c1:error:{\\\"error\\\":\\\"peer must name a trusted peer"));
    assert_non_null(strstr(done, "c2:error:{\\\"error\\\":\\\"peer must name a trusted peer"));
    assert_non_null(strstr(done, "c3:error:{\\\"error\\\":\\\"in_reply_to must be"));
    assert_non_null(strstr(done, "c4:error:{\\\"error\\\":\\\"no request with that id"));
    assert_non_null(strstr(done, "c5:{\\\"peers\\\":[]}"));
    router_turns_detach(e.t, s);
    s_teardown(&e);
}

/* ------------------------------------------------------------ out of memory */

typedef struct {
    router_turns_t *t;
    uint64_t ended;  /* turns ended (done, stopped, errors) to wait for */
    frames_t *fr;    /* or an error frame to the submitter (no turn began) */
    int errors;      /* error frames it had before */
    router_loop_t *loop;     /* with stop_at: */
    uint64_t stop_at;        /* loop ms after which a turn hit by a failure is stopped */
    router_turns_sub_t sub;  /* its submitter */
} ended_t;

static bool s_ended(void *ud)
{
    ended_t *w = ud;
    if (w->stop_at && router_loop_now_ms(w->loop) >= w->stop_at && alloc_fail_failed() > 0) {
        w->stop_at = 0;
        router_turns_stop(w->t, w->sub);
    }
    router_turns_stats_t st;
    router_turns_stats(w->t, &st);
    return st.running == 0 && st.waiting == 0 &&
           (st.done + st.stopped + st.errors >= w->ended ||
            s_count(w->fr, ROUTER_TURN_FRAME_ERROR) > w->errors);
}

/* A turn calling the router's tools, submitted and run with the loop
 * thread's (here, this thread's) 1st, 2nd, … allocation failing in turn
 * until a run fails none: the message is refused with a code, or its turn
 * ends (done, or an error) — never lost in between — and the session then
 * runs the next message as usual. A turn whose worker request was lost
 * ends by the turn timeout (2 s here), which is the mechanism under test,
 * not a bound on speed. */
static void test_turn_without_memory(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    unsigned refused = 0, errors = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        frames_t a = {0};
        char name[32];
        snprintf(name, sizeof name, "oom-%ld", i);
        router_turns_sub_t s = router_turns_attach(e.t, name, NULL, s_on_frame, &a);
        s_wait(&e, &a, ROUTER_TURN_FRAME_SESSION_START, 1);
        router_turns_stats_t before, st, after;
        router_turns_stats(e.t, &before);
        const char *code = NULL;
        alloc_fail_arm(i);
        int rc = router_turns_submit(e.t, s, "/tools", 6, &code);
        if (rc == 0) {
            /* A tool result the router could not send leaves the worker
             * waiting until the turn's timeout; once a failure has happened,
             * stop the turn instead of waiting that long (a turn that would
             * have ended anyway may end stopped: either outcome passes). */
            ended_t w = {e.t, before.done + before.stopped + before.errors + 1, &a, 0,
                         e.loop, router_loop_now_ms(e.loop) + 300, s};
            s_run(&e, s_ended, &w);
        }
        bool failed = alloc_fail_disarm() > 0;
        router_turns_stats(e.t, &st);
        if (!failed) {
            assert_int_equal(rc, 0);
            assert_int_equal(st.done, before.done + 1);
            assert_non_null(strstr(s_last(&a, ROUTER_TURN_FRAME_DONE), "c5:{\\\"peers\\\":[]}"));
        } else if (rc != 0) {
            assert_non_null(code);
            refused++;
        } else if (st.done == before.done) {
            assert_true(st.errors > before.errors || st.stopped > before.stopped ||
                        s_count(&a, ROUTER_TURN_FRAME_ERROR) > 0);
            errors++;
        }
        /* The session serves the next message. */
        assert_int_equal(router_turns_submit(e.t, s, "next", 4, &code), 0);
        ended_t w = {e.t, st.done + st.stopped + st.errors + 1, &a, FRAMES_MAX, NULL, 0, 0};
        s_run(&e, s_ended, &w);
        router_turns_stats(e.t, &after);
        assert_int_equal(after.done, st.done + 1);
        router_turns_detach(e.t, s);
        if (!failed)
            break;
    }
    s_teardown(&e);
    assert_true(refused > 0);
    print_message("%u allocations refused the message, %u ended its turn otherwise than done\n",
                  refused, errors);
}

typedef struct {
    frames_t *fr;
    router_inbox_t *inbox;
} ended_entry_t;

/* The entry's turn ended (with an answer or an error) and it is gone. */
static bool s_entry_ended(void *ud)
{
    ended_entry_t *w = ud;
    return s_count(w->fr, ROUTER_TURN_FRAME_DONE) + s_count(w->fr, ROUTER_TURN_FRAME_ERROR) > 0 &&
           router_inbox_count(w->inbox) == 0;
}

/* An inbox entry taken while memory runs short is never dropped: each
 * allocation of taking it and starting its turn fails in turn, and every
 * time the entry still becomes a turn that ends (given back to the inbox,
 * or left first in its session's queue, and tried again), and nothing is
 * left in the inbox. Before, three of those failures deleted the entry
 * with only a log line. */
static void test_inbox_entry_without_memory(void **state)
{
    (void) state;
    env_t e = {0};
    s_setup(&e, 0, 0);
    unsigned failed_runs = 0, errors = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        frames_t c = {0};
        router_turns_sub_t sc = router_turns_attach(e.t, "comms", NULL, s_on_frame, &c);
        s_wait(&e, &c, ROUTER_TURN_FRAME_SESSION_START, 1);
        uint8_t id[16], nobody[32] = {0};
        uint64_t seq;
        proto_uuid_v7_new(id);
        char line[64];
        int n = snprintf(line, sizeof line, "short of memory %ld", i);
        assert_int_equal(router_inbox_admit(e.inbox, id, nobody, "event", (const uint8_t *) line,
                                            (size_t) n, 1, NULL, &seq), ROUTER_INBOX_ADMITTED);
        alloc_fail_arm(i);
        router_turns_kick(e.t);
        bool failed = alloc_fail_disarm() > 0;
        ended_entry_t w = {&c, e.inbox};
        s_run(&e, s_entry_ended, &w);
        if (s_count(&c, ROUTER_TURN_FRAME_DONE) > 0)
            assert_non_null(strstr(s_last(&c, ROUTER_TURN_FRAME_DONE), line));
        else
            errors++;
        router_turns_detach(e.t, sc);
        failed_runs += failed;
        if (!failed)
            break;
    }
    s_teardown(&e);
    assert_true(failed_runs > 0);
    print_message("%u allocations failed, %u of them ended the turn with an error\n", failed_runs,
                  errors);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_round_trip),
        cmocka_unit_test(test_busy_steer_stop),
        cmocka_unit_test(test_withdraw),
        cmocka_unit_test(test_inbox_turns),
        cmocka_unit_test(test_backlog_that_cannot_start),
        cmocka_unit_test(test_sessions_api),
        cmocka_unit_test(test_no_worker),
        cmocka_unit_test(test_silent_worker),
        cmocka_unit_test(test_timed_out_turn_frees_its_worker),
        cmocka_unit_test(test_worker_events_and_garbage),
        cmocka_unit_test(test_router_tool_refusals),
        cmocka_unit_test(test_turn_without_memory),
        cmocka_unit_test(test_inbox_entry_without_memory),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    zsys_shutdown();
    return rc;
}
