/* tests/route_openclaw_runs_test.c — OpenClaw runs (gateway/route_openclaw.c,
 * WIRE §25.1, §25.6) whose turns a worker answers, out of memory: a stand-in
 * agent worker on the fixture's broker (a thread of its own, so its
 * allocations never fail) streams two chunks and a final answer, or an
 * error. With each of the loop thread's allocations failing in turn while
 * the run's frames come back (its agent events, chat events, the agent
 * method's final answer), the client gets the run's end or sees the socket
 * close 1011 — never a run left waiting on an answer or an event that was
 * lost — and the next client is served. LSan checks that nothing leaked. */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/routes_openclaw.h"
#include "proto/worker_msg.h"
#include "router/net/loop.h"
#include "router/workers/mdp_worker.h"
#include "gateway_fixture.h"
#include "loop_until.h"
#include "worker_reply.h"
#include "ws_raw_client.h"

#define WAIT_MS 10000 /* a bound on one wait, never a speed check */
#define S_NAME "route-openclaw-runs-test"

typedef struct {
    test_gw_t b;
    gateway_openclaw_t *oc;
} fix_t;

static test_wsc_t s_cl;
static int s_fixtures; /* test_gw_new's count of endpoints in this file */

/* ---------------------------------------------------------------- the worker */

typedef struct {
    pthread_t thread;
    router_mdp_worker_t *w;
} agent_t;

/* The worker answers the turn of a message "… #N" only once s_go >= N:
 * the test arms its failures first. A run that ended before its turn was
 * answered (or sent) leaves nothing behind that would let a later one run
 * ahead. */
static atomic_long s_go = -1;

static void s_reply_chunk(router_mdp_worker_t *w, const uint8_t id[16], uint64_t seq,
                          const char *text)
{
    proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_PARTIAL};
    memcpy(rep.partial.turn_id, id, 16);
    rep.partial.seq = seq;
    rep.partial.event.type = PROTO_WORKER_EV_CHUNK;
    rep.partial.event.text = (proto_worker_str_t){text, strlen(text)};
    test_worker_reply(w, &rep);
}

/* Each turn: "fail…" ends in an error, anything else in two chunks and
 * the echo. */
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
        if (rc != 0)
            continue;
        if (req.type != PROTO_WORKER_REQ_TURN) {
            proto_worker_request_clear(&req);
            continue;
        }
        uint8_t id[16];
        memcpy(id, req.turn.turn_id, 16);
        const char *hash = strrchr(req.turn.message.content.p, '#');
        long n = hash ? strtol(hash + 1, NULL, 10) : -1;
        while (atomic_load(&s_go) < n)
            usleep(1000);
        proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
        memcpy(rep.final.turn_id, id, 16);
        if (!strncmp(req.turn.message.content.p, "fail", 4)) {
            rep.final.type = PROTO_WORKER_FINAL_ERROR;
            rep.final.code = PROTO_WORKER_CODE_PROVIDER_ERROR;
            rep.final.message = (proto_worker_str_t){"the provider failed", 19};
        } else {
            s_reply_chunk(a->w, id, 0, "echo: ");
            s_reply_chunk(a->w, id, 1, "hi");
            rep.final.type = PROTO_WORKER_FINAL_DONE;
            rep.final.full_response = (proto_worker_str_t){"echo: hi", 8};
        }
        test_worker_reply(a->w, &rep);
        proto_worker_request_clear(&req);
    }
    return NULL;
}

static agent_t *s_agent_start(void)
{
    agent_t *a = calloc(1, sizeof *a);
    assert_non_null(a);
    char ep[96], err[256];
    snprintf(ep, sizeof ep, "inproc://%s-%d", S_NAME, s_fixtures);
    router_mdp_worker_opts_t o = {.endpoint = ep, .service = "kith.agent", .heartbeat_ms = 100,
                                  .liveness = 100};
    a->w = router_mdp_worker_new(&o, err, sizeof err);
    if (!a->w)
        fail_msg("worker: %s", err);
    assert_int_equal(pthread_create(&a->thread, NULL, s_agent_main, a), 0);
    return a;
}

static void s_agent_stop(agent_t **ap)
{
    router_mdp_worker_interrupt((*ap)->w);
    pthread_join((*ap)->thread, NULL);
    router_mdp_worker_destroy(&(*ap)->w);
    free(*ap);
    *ap = NULL;
}

/* ---------------------------------------------------------------- the fixture */

static void s_fix_new(fix_t *f)
{
    test_gw_new(&f->b, S_NAME);
    s_fixtures++;
    gateway_openclaw_opts_t oo = {.auth = f->b.auth, .turns = f->b.turns};
    f->oc = gateway_openclaw_new(f->b.gw, f->b.loop, &oo);
    assert_non_null(f->oc);
    test_gw_listen(&f->b);
}

static bool s_gone(void *ud)
{
    (void) ud;
    return true;
}

static void s_fix_free(fix_t *f)
{
    test_gw_stop(&f->b);
    (void) test_loop_wait(f->b.loop, s_gone, NULL, 1, WAIT_MS);
    gateway_openclaw_destroy(&f->oc);
    test_gw_free(&f->b);
}

/* ---------------------------------------------------------------- the client */

static unsigned s_want;

static bool s_until_frames(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    bool closed;
    return test_wsc_frames(&s_cl, &closed) >= s_want || closed || s_cl.eof;
}

static void s_client_close(fix_t *f)
{
    close(s_cl.fd);
    for (int i = 0; i < 5; i++)
        (void) test_loop_wait(f->b.loop, s_gone, NULL, 1, WAIT_MS);
}

/* A client past hello-ok; its frame count. */
static unsigned s_client_connected(fix_t *f)
{
    test_wsc_open(&s_cl, f->b.port,
                  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(s_cl.fd, F_SETFL, O_NONBLOCK), 0);
    s_want = 1;
    assert_true(test_loop_wait(f->b.loop, s_until_frames, NULL, 1, WAIT_MS));
    test_wsc_send_text(&s_cl,
                       "{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":{"
                       "\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"gateway-client\","
                       "\"mode\":\"backend\"},\"scopes\":[\"operator.write\"],"
                       "\"auth\":{\"token\":\"t\"}}}");
    s_want = 2;
    assert_true(test_loop_wait(f->b.loop, s_until_frames, NULL, 1, WAIT_MS));
    assert_true(test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
    bool closed;
    return test_wsc_frames(&s_cl, &closed);
}

/* What ends a run, by method: chat's last event, agent's second answer. */
static const char *s_end_needle;
static unsigned s_from;

static unsigned s_count(const char *needle)
{
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed), hits = 0;
    for (unsigned k = s_from; k < n; k++)
        hits += test_wsc_frame_has(&s_cl, k, needle);
    return hits;
}

static bool s_ended(void)
{
    if (!strcmp(s_end_needle, "agent")) /* the request's id answered twice */
        return s_count("\"id\":\"m\"") >= 2;
    return s_count("\"state\":\"final\"") + s_count("\"state\":\"error\"") > 0;
}

static bool s_until_end(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    bool closed;
    (void) test_wsc_frames(&s_cl, &closed);
    return s_ended() || closed || s_cl.eof;
}

/* The Close's code, 0 when none came. */
static unsigned s_close_code(void)
{
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed);
    for (unsigned i = 0; i < n; i++) {
        int op;
        const uint8_t *p;
        size_t len;
        if (test_wsc_frame(&s_cl, i, &op, &p, &len) && op == 8)
            return len >= 2 ? (unsigned) ((p[0] << 8) | p[1]) : 1005;
    }
    return 0;
}

/* `method` with message `text` on a fresh key and session, each of the
 * loop's allocations failing in turn once the request is answered (the
 * run's frames coming back): its end or a Close 1011, and a retry of the
 * key answers it from the store, never a second run. */
static void s_run_sweep(const char *method, const char *text)
{
    fix_t f;
    s_fix_new(&f);
    agent_t *agent = s_agent_start();
    s_end_needle = strcmp(method, "agent") ? "chat" : "agent";
    unsigned ends = 0, closes = 0;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        s_from = s_client_connected(&f);
        char req[512];
        snprintf(req, sizeof req,
                 "{\"type\":\"req\",\"id\":\"m\",\"method\":\"%s\",\"params\":{"
                 "\"sessionKey\":\"s%ld\",\"message\":\"%s #%ld\",\"idempotencyKey\":\"k%ld\"}}",
                 method, i, text, i, i);
        test_wsc_send_text(&s_cl, req);
        /* The first answer, nothing failing: the run is accepted. */
        s_want = s_from + 1;
        while (s_count("\"id\":\"m\"") == 0) {
            assert_true(test_loop_wait(f.b.loop, s_until_frames, NULL, 1, WAIT_MS));
            s_want++;
        }
        alloc_fail_arm(i);
        atomic_store(&s_go, i);
        bool held = test_loop_wait(f.b.loop, s_until_end, NULL, 1, WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        unsigned code = s_close_code();
        if (!held || (!s_ended() && !code && !s_cl.eof))
            fail_msg("%s, allocation %ld failing: neither the run's end nor a close", method, i);
        if (code && code != 1011 && !s_ended())
            fail_msg("%s, allocation %ld failing: closed %u", method, i, code);
        ends += s_ended();
        closes += code == 1011;
        s_client_close(&f);
        if (!failed) {
            assert_true(s_ended());
            break;
        }
    }
    print_message("%s: %u ended, %u closed 1011\n", method, ends, closes);
    assert_true(closes > 0); /* out of memory for a frame was reached */
    /* Still serving: a run to its end. */
    s_from = s_client_connected(&f);
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"m\",\"method\":\"chat.send\",\"params\":{"
                              "\"sessionKey\":\"after\",\"message\":\"hi\","
                              "\"idempotencyKey\":\"after\"}}");
    s_end_needle = "chat";
    atomic_store(&s_go, LONG_MAX); /* every turn still held goes now */
    assert_true(test_loop_wait(f.b.loop, s_until_end, NULL, 1, WAIT_MS));
    assert_true(s_count("\"state\":\"final\"") == 1);
    s_client_close(&f);
    s_agent_stop(&agent);
    atomic_store(&s_go, -1);
    s_fix_free(&f);
}

static void test_agent_out_of_memory(void **state)
{
    (void) state;
    s_run_sweep("agent", "hi");
}

static void test_agent_error_out_of_memory(void **state)
{
    (void) state;
    s_run_sweep("agent", "fail now");
}

static void test_chat_out_of_memory(void **state)
{
    (void) state;
    s_run_sweep("chat.send", "hi");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agent_out_of_memory),
        cmocka_unit_test(test_agent_error_out_of_memory),
        cmocka_unit_test(test_chat_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
