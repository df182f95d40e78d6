/* tests/route_openclaw_test.c — the OpenClaw endpoint (gateway/
 * route_openclaw.c, WIRE §25) out of memory: its loop runs on the test's
 * thread, so tests/alloc_fail.h fails the endpoint's own allocations one
 * at a time while it answers `connect`, `system-presence`, `health`,
 * `chat.abort` and an unknown method, and while a run is aborted (no
 * worker: a run is accepted and queued, never answered; the integration
 * tests have workers). After each failure the
 * client must get its answer or see the socket close — never wait on an
 * answer that will not come — and the next client is served; LSan checks
 * that nothing leaked. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/routes_openclaw.h"
#include "router/clock.h"
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/state/tokens.h"
#include "router/workers/broker.h"
#include "router/workers/turns.h"
#include "gateway_fixture.h"
#include "loop_until.h"
#include "ws_raw_client.h"

#define WAIT_MS 5000 /* a bound on one wait, never a speed check */

typedef struct {
    test_gw_t b;               /* loop, tokens, auth, server, broker, turns */
    gateway_openclaw_t *oc;
} fix_t;

/* The test's one client (tests/ws_raw_client.h: it allocates nothing, so
 * the allocations failed are the loop's). */
static test_wsc_t s_cl;

static void s_fix_new(fix_t *f)
{
    test_gw_new(&f->b, "route-openclaw-test");
    gateway_openclaw_opts_t oo = {.auth = f->b.auth, .turns = f->b.turns};
    f->oc = gateway_openclaw_new(f->b.gw, f->b.loop, &oo);
    assert_non_null(f->oc);
    test_gw_listen(&f->b);
}

static void s_fix_free(fix_t *f)
{
    test_gw_stop(&f->b);
    gateway_openclaw_destroy(&f->oc);
    test_gw_free(&f->b);
}

/* ---------------------------------------------------------------- the client */

/* The client's upgrade to / (OpenClaw); the socket is non-blocking after. */
static void s_connect_tcp(uint16_t port)
{
    test_wsc_open(&s_cl, port,
                  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(s_cl.fd, F_SETFL, O_NONBLOCK), 0);
}

/* A `connect` request with the token "t" and the scopes given (a JSON list's
 * inside). */
#define S_CONNECT(scopes)                                                                   \
    "{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":{\"minProtocol\":4,"       \
    "\"maxProtocol\":4,\"client\":{\"id\":\"gateway-client\",\"mode\":\"backend\"},"            \
    "\"scopes\":[" scopes "],\"auth\":{\"token\":\"t\"}}}"

static unsigned s_want;

/* `s_want` frames came, or a Close, or the connection ended. */
static bool s_until_frames(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    bool closed;
    return test_wsc_frames(&s_cl, &closed) >= s_want || closed || s_cl.eof;
}

/* Runs the loop until frame `n` (0-based) came or the socket ended.
 * Returns true when the frame came and is text. */
static bool s_wait_frame(fix_t *f, unsigned n)
{
    s_want = n + 1;
    assert_true(test_loop_wait(f->b.loop, s_until_frames, NULL, 1, WAIT_MS));
    int op = 0;
    const uint8_t *p = NULL;
    size_t len;
    return test_wsc_frame(&s_cl, n, &op, &p, &len) && op == 1;
}

/* A client past hello-ok (nothing failed), with its frames counted. */
static unsigned s_client_connected(fix_t *f)
{
    s_connect_tcp(f->b.port);
    assert_true(s_wait_frame(f, 0)); /* connect.challenge */
    test_wsc_send_text(&s_cl, S_CONNECT("\"operator.read\",\"operator.write\""));
    assert_true(s_wait_frame(f, 1));
    assert_true(test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
    bool closed;
    return test_wsc_frames(&s_cl, &closed);
}

static bool s_gone(void *ud)
{
    (void) ud;
    return true;
}

static void s_client_close(fix_t *f)
{
    close(s_cl.fd);
    /* A few turns of the loop to let the server see it go. */
    for (int i = 0; i < 5; i++)
        (void) test_loop_wait(f->b.loop, s_gone, NULL, 1, WAIT_MS);
}

/* ---------------------------------------------------------------- tests */

/* `connect`, with each of the endpoint's allocations failing in turn:
 * hello-ok, a refusal or a close — never silence. */
static void test_connect_out_of_memory(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        s_connect_tcp(f.b.port);
        assert_true(s_wait_frame(&f, 0));
        alloc_fail_arm(i);
        test_wsc_send_text(&s_cl, S_CONNECT("\"operator.read\""));
        s_want = 2;
        bool held = test_loop_wait(f.b.loop, s_until_frames, NULL, 1, WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        bool closed;
        unsigned n = test_wsc_frames(&s_cl, &closed);
        if (!held || (n < 2 && !closed && !s_cl.eof))
            fail_msg("allocation %ld failing: connect got neither an answer nor a close", i);
        s_client_close(&f);
        if (!failed) {
            assert_true(n >= 2 && test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
            break;
        }
    }
    /* Still serving. */
    s_client_connected(&f);
    s_client_close(&f);
    s_fix_free(&f);
}

/* The upgrade's answer came: a refusal (not 101), or the challenge or a
 * Close after a 101, or the connection ended. */
static bool s_until_upgraded(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    if (s_cl.eof)
        return true;
    if (!s_cl.head)
        return false;
    if (s_cl.len < 12 || memcmp(s_cl.buf + 9, "101", 3) != 0)
        return true;
    bool closed;
    return test_wsc_frames(&s_cl, &closed) >= 1 || closed;
}

/* The upgrade, with each of the server's allocations failing in turn
 * while it is answered: a 503, or the challenge, or a Close — never a
 * socket left waiting for a challenge that will not come; LSan checks
 * that a refused socket leaked nothing. */
static void test_upgrade_out_of_memory(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        alloc_fail_arm(i);
        s_connect_tcp(f.b.port);
        bool held = test_loop_wait(f.b.loop, s_until_upgraded, NULL, 1, WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        if (!held)
            fail_msg("allocation %ld failing: the upgrade got no answer", i);
        bool challenged = s_cl.head && s_cl.len >= 12 && !memcmp(s_cl.buf + 9, "101", 3) &&
                          test_wsc_frame_has(&s_cl, 0, "\"connect.challenge\"");
        s_client_close(&f);
        if (!failed) {
            assert_true(challenged);
            break;
        }
    }
    s_client_connected(&f);
    s_client_close(&f);
    s_fix_free(&f);
}

/* Each method, with each allocation failing in turn: the answer (a res
 * with its id) or a close. */
static void test_methods_out_of_memory(void **state)
{
    (void) state;
    static const char *const reqs[] = {
        "{\"type\":\"req\",\"id\":\"m\",\"method\":\"system-presence\"}",
        "{\"type\":\"req\",\"id\":\"m\",\"method\":\"health\"}",
        "{\"type\":\"req\",\"id\":\"m\",\"method\":\"chat.abort\","
        "\"params\":{\"sessionKey\":\"s\"}}",
        "{\"type\":\"req\",\"id\":\"m\",\"method\":\"no.such\"}",
    };
    fix_t f;
    s_fix_new(&f);
    for (size_t m = 0; m < sizeof reqs / sizeof reqs[0]; m++) {
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            unsigned base = s_client_connected(&f);
            const char *text = reqs[m];
            alloc_fail_arm(i);
            test_wsc_send_text(&s_cl, text);
            /* The answer is the first frame with "id":"m" (events may
             * come first: presence). */
            bool answered = false, closed = false;
            for (unsigned k = base; !answered && !closed && !s_cl.eof; k++) {
                s_want = k + 1;
                if (!test_loop_wait(f.b.loop, s_until_frames, NULL, 1, WAIT_MS))
                    break;
                (void) test_wsc_frames(&s_cl, &closed);
                answered = test_wsc_frame_has(&s_cl, k, "\"id\":\"m\"");
            }
            unsigned failed = alloc_fail_disarm();
            if (!answered && !closed && !s_cl.eof)
                fail_msg("%s with allocation %ld failing: neither an answer nor a close",
                         text, i);
            s_client_close(&f);
            if (!failed) {
                assert_true(answered);
                break;
            }
        }
    }
    s_fix_free(&f);
}

/* Runs the loop until a text frame holding `needle` came after frame
 * `from`, or a Close, or the end. True when it came. */
static const char *s_needle;
static unsigned s_from;

static bool s_until_needle(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed);
    for (unsigned k = s_from; k < n; k++)
        if (test_wsc_frame_has(&s_cl, k, s_needle))
            return true;
    return closed || s_cl.eof;
}

static bool s_wait_needle(fix_t *f, unsigned from, const char *needle)
{
    s_from = from;
    s_needle = needle;
    assert_true(test_loop_wait(f->b.loop, s_until_needle, NULL, 1, WAIT_MS));
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed);
    for (unsigned k = from; k < n; k++)
        if (test_wsc_frame_has(&s_cl, k, needle))
            return true;
    return false;
}

/* A run's end is written to the token store as its key's outcome. With
 * each allocation failing in turn while a run is aborted (the store's
 * write among them), the key must stay known: the same key sent again is
 * answered from the store ("cached") and never starts a second run of a
 * run its client saw started (WIRE §25.6). The session has no worker: the
 * first run's turn holds it, the second waits in its queue and is taken
 * out by the abort. */
static void test_run_end_keeps_key(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    char req[512], key[32], needle[96];
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        unsigned base = s_client_connected(&f);
        snprintf(req, sizeof req,
                 "{\"type\":\"req\",\"id\":\"h\",\"method\":\"chat.send\",\"params\":{"
                 "\"sessionKey\":\"s%ld\",\"message\":\"held\",\"idempotencyKey\":\"h%ld\"}}",
                 i, i);
        test_wsc_send_text(&s_cl, req);
        assert_true(s_wait_needle(&f, base, "\"id\":\"h\",\"ok\":true"));
        snprintf(key, sizeof key, "k%ld", i);
        snprintf(req, sizeof req,
                 "{\"type\":\"req\",\"id\":\"w\",\"method\":\"chat.send\",\"params\":{"
                 "\"sessionKey\":\"s%ld\",\"message\":\"waits\",\"idempotencyKey\":\"%s\"}}",
                 i, key);
        test_wsc_send_text(&s_cl, req);
        assert_true(s_wait_needle(&f, base, "\"status\":\"started\"}"));
        assert_true(s_wait_needle(&f, base, "\"id\":\"w\",\"ok\":true"));
        snprintf(req, sizeof req,
                 "{\"type\":\"req\",\"id\":\"a\",\"method\":\"chat.abort\",\"params\":{"
                 "\"sessionKey\":\"s%ld\",\"runId\":\"%s\"}}",
                 i, key);
        alloc_fail_arm(i);
        test_wsc_send_text(&s_cl, req);
        /* Its end (aborted), or the socket closed (out of memory for a
         * frame: the run ends with it). */
        snprintf(needle, sizeof needle, "\"runId\":\"%s\",\"sessionKey\"", key);
        (void) s_wait_needle(&f, base, needle);
        unsigned failed = alloc_fail_disarm();
        bool closed;
        (void) test_wsc_frames(&s_cl, &closed);
        if (closed || s_cl.eof) {
            s_client_close(&f);
            base = s_client_connected(&f);
        }
        /* The key again: answered from the store, nothing started. */
        snprintf(req, sizeof req,
                 "{\"type\":\"req\",\"id\":\"r\",\"method\":\"chat.send\",\"params\":{"
                 "\"sessionKey\":\"s%ld\",\"message\":\"again\",\"idempotencyKey\":\"%s\"}}",
                 i, key);
        test_wsc_send_text(&s_cl, req);
        assert_true(s_wait_needle(&f, base, "\"id\":\"r\""));
        s_from = base;
        bool cached = false;
        unsigned n = test_wsc_frames(&s_cl, &closed);
        for (unsigned k = base; k < n; k++)
            cached = cached || (test_wsc_frame_has(&s_cl, k, "\"id\":\"r\"") &&
                                test_wsc_frame_has(&s_cl, k, "\"cached\":true"));
        if (!cached)
            fail_msg("allocation %ld failing during an abort: the key %s ran again", i, key);
        s_client_close(&f);
        if (!failed)
            break;
    }
    /* The token store posts its loop a wake for each write; one still
     * queued when the store is destroyed would run on freed memory (see
     * the report: the fixture frees the store before the loop), so the
     * loop runs once after the store's thread stopped. */
    test_gw_stop(&f.b);
    (void) test_loop_wait(f.b.loop, s_gone, NULL, 1, WAIT_MS);
    gateway_openclaw_destroy(&f.oc);
    test_gw_free(&f.b);
}

/* `chat.send` and `agent`, with each allocation failing in turn: an
 * answer (a res with its id) or a close, never silence; and a key once
 * answered "started" ("accepted") is never started again — the same key
 * sent again afterwards is answered "cached". A key refused may start on
 * a retry. */
static void s_run_out_of_memory(const char *method, const char *answer)
{
    fix_t f;
    s_fix_new(&f);
    char req[512], started_needle[48];
    snprintf(started_needle, sizeof started_needle, "\"status\":\"%s\"", answer);
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        unsigned base = s_client_connected(&f);
        snprintf(req, sizeof req,
                 "{\"type\":\"req\",\"id\":\"m\",\"method\":\"%s\",\"params\":{"
                 "\"sessionKey\":\"o%ld\",\"message\":\"hi\",\"idempotencyKey\":\"%c%ld\"}}",
                 method, i, method[0], i);
        alloc_fail_arm(i);
        test_wsc_send_text(&s_cl, req);
        bool answered = s_wait_needle(&f, base, "\"id\":\"m\"");
        unsigned failed = alloc_fail_disarm();
        bool closed;
        unsigned n = test_wsc_frames(&s_cl, &closed);
        if (!answered && !closed && !s_cl.eof)
            fail_msg("%s with allocation %ld failing: neither an answer nor a close", method, i);
        bool started = false;
        for (unsigned k = base; k < n; k++)
            started = started || (test_wsc_frame_has(&s_cl, k, "\"id\":\"m\"") &&
                                  test_wsc_frame_has(&s_cl, k, started_needle));
        if (closed || s_cl.eof) {
            s_client_close(&f);
            base = s_client_connected(&f);
        } else {
            base = n;
        }
        if (started) {
            memcpy(strstr(req, "\"id\":\"m\"") + 6, "r", 1);
            test_wsc_send_text(&s_cl, req);
            assert_true(s_wait_needle(&f, base, "\"id\":\"r\""));
            n = test_wsc_frames(&s_cl, &closed);
            bool cached = false;
            for (unsigned k = base; k < n; k++)
                cached = cached || (test_wsc_frame_has(&s_cl, k, "\"id\":\"r\"") &&
                                    test_wsc_frame_has(&s_cl, k, "\"cached\":true"));
            if (!cached)
                fail_msg("%s with allocation %ld failing: its run started twice", method, i);
        }
        s_client_close(&f);
        if (!failed) {
            assert_true(started);
            break;
        }
    }
    test_gw_stop(&f.b);
    (void) test_loop_wait(f.b.loop, s_gone, NULL, 1, WAIT_MS);
    gateway_openclaw_destroy(&f.oc);
    test_gw_free(&f.b);
}

static void test_run_out_of_memory(void **state)
{
    (void) state;
    s_run_out_of_memory("chat.send", "started");
    s_run_out_of_memory("agent", "accepted");
}

static router_turns_t *s_turns;
static uint64_t s_running_want;

static bool s_until_running(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    router_turns_stats_t st;
    router_turns_stats(s_turns, &st);
    return st.running >= s_running_want;
}

/* A run whose socket closes before its key is durable is never submitted
 * (its client saw nothing, and may have been cut off for a revoked
 * token): nothing queued in its session, and its key says error. The
 * socket closes for a binary message sent with the run, so the close
 * comes before the key's write is answered. */
static void test_closing_socket_runs_nothing(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    s_turns = f.b.turns;
    unsigned base = s_client_connected(&f);
    /* The session has started and holds a turn (no worker answers it). */
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"z0\",\"method\":\"chat.send\","
                              "\"params\":{\"sessionKey\":\"z\",\"message\":\"held\","
                              "\"idempotencyKey\":\"z0\"}}");
    assert_true(s_wait_needle(&f, base, "\"id\":\"z0\",\"ok\":true"));
    s_running_want = 1;
    assert_true(test_loop_wait(f.b.loop, s_until_running, NULL, 1, WAIT_MS));
    /* A second run on it, and a binary message in the same read. */
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"z1\",\"method\":\"chat.send\","
                              "\"params\":{\"sessionKey\":\"z\",\"message\":\"queued\","
                              "\"idempotencyKey\":\"z1\"}}");
    static const uint8_t binary[] = {0x82, 0x81, 0, 0, 0, 0, 'b'};
    assert_int_equal(send(s_cl.fd, binary, sizeof binary, MSG_NOSIGNAL), (ssize_t) sizeof binary);
    assert_false(s_wait_needle(&f, base, "\"id\":\"z1\"")); /* the Close (1003) instead */
    int fd1 = s_cl.fd;
    /* Another socket's run: its key's write comes after z1's (the store
     * answers in order), so z1's is answered once this one is. */
    s_client_connected(&f);
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"y1\",\"method\":\"chat.send\","
                              "\"params\":{\"sessionKey\":\"y\",\"message\":\"other\","
                              "\"idempotencyKey\":\"y1\"}}");
    assert_true(s_wait_needle(&f, 0, "\"id\":\"y1\",\"ok\":true"));
    router_turns_stats_t st;
    router_turns_stats(f.b.turns, &st);
    if (st.waiting != 0)
        fail_msg("a run of a closed socket was queued in its session (%llu waiting)",
                 (unsigned long long) st.waiting);
    close(fd1);
    s_client_close(&f);
    /* Its key: ended, as an error, and it starts nothing again. */
    base = s_client_connected(&f);
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"r\",\"method\":\"chat.send\","
                              "\"params\":{\"sessionKey\":\"z\",\"message\":\"again\","
                              "\"idempotencyKey\":\"z1\"}}");
    assert_true(s_wait_needle(&f, base, "\"id\":\"r\""));
    assert_true(s_wait_needle(&f, base, "{\"runId\":\"z1\",\"status\":\"error\",\"cached\":true}"));
    s_client_close(&f);
    test_gw_stop(&f.b);
    (void) test_loop_wait(f.b.loop, s_gone, NULL, 1, WAIT_MS);
    gateway_openclaw_destroy(&f.oc);
    test_gw_free(&f.b);
}

/* A key whose remembered answer is not one the endpoint writes (a damaged
 * state.db row, or one written by another hand: here straight into the
 * store) is answered "unknown" in a frame that is JSON; its text was
 * spliced in as it stood, quotes and all. */
static void test_cached_status_damaged(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    static const char *const bodies[] = {"ok\",\"injected\":\"1", "\x01\xff"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        char key[8];
        snprintf(key, sizeof key, "dmg%zu", i);
        int st = 0;
        const char *seen = NULL;
        uint64_t now = router_clock_wall_ms();
        assert_int_equal(router_tokens_idem_begin(f.b.tokens, "openclaw", key, strlen(key), now,
                                                  &st, &seen),
                         ROUTER_IDEM_NEW);
        assert_int_equal(router_tokens_idem_finish(f.b.tokens, "openclaw", key, strlen(key), 200,
                                                   bodies[i], now, NULL, NULL),
                         0);
        unsigned base = s_client_connected(&f);
        char req[256];
        snprintf(req, sizeof req,
                 "{\"type\":\"req\",\"id\":\"d\",\"method\":\"chat.send\",\"params\":{"
                 "\"sessionKey\":\"s\",\"message\":\"m\",\"idempotencyKey\":\"%s\"}}",
                 key);
        test_wsc_send_text(&s_cl, req);
        char want[96];
        snprintf(want, sizeof want, "{\"runId\":\"%s\",\"status\":\"unknown\",\"cached\":true}",
                 key);
        assert_true(s_wait_needle(&f, base, "\"id\":\"d\""));
        assert_true(s_wait_needle(&f, base, want));
        assert_null(memmem(s_cl.buf, s_cl.len, "injected", 8));
        s_client_close(&f);
    }
    test_gw_stop(&f.b);
    (void) test_loop_wait(f.b.loop, s_gone, NULL, 1, WAIT_MS);
    gateway_openclaw_destroy(&f.oc);
    test_gw_free(&f.b);
}

/* gateway_openclaw_new refuses what it cannot serve with (EINVAL), a
 * second endpoint on the same gateway (its route `/` is taken), and under
 * each of its allocations failing returns NULL with errno or an endpoint
 * that serves — nothing leaked (LSan). */
static void test_new_refusals(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    gateway_openclaw_opts_t oo = {.auth = f.b.auth, .turns = f.b.turns};
    gateway_openclaw_opts_t no_auth = {.turns = f.b.turns};
    gateway_openclaw_opts_t no_turns = {.auth = f.b.auth};
    errno = 0;
    assert_null(gateway_openclaw_new(NULL, f.b.loop, &oo));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(gateway_openclaw_new(f.b.gw, NULL, &oo));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(gateway_openclaw_new(f.b.gw, f.b.loop, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(gateway_openclaw_new(f.b.gw, f.b.loop, &no_auth));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(gateway_openclaw_new(f.b.gw, f.b.loop, &no_turns));
    assert_int_equal(errno, EINVAL);
    /* An auth without a token store: no keys or devices to keep. */
    gateway_auth_opts_t ao = {.require_pairing = false};
    gateway_auth_t *bare = gateway_auth_new(NULL, &ao);
    if (bare) {
        gateway_openclaw_opts_t no_store = {.auth = bare, .turns = f.b.turns};
        errno = 0;
        assert_null(gateway_openclaw_new(f.b.gw, f.b.loop, &no_store));
        assert_int_equal(errno, EINVAL);
        gateway_auth_destroy(&bare);
    }
    /* The route is the first endpoint's. */
    errno = 0;
    assert_null(gateway_openclaw_new(f.b.gw, f.b.loop, &oo));
    assert_int_not_equal(errno, 0);
    gateway_openclaw_destroy(&f.oc);
    assert_null(f.oc);
    gateway_openclaw_destroy(&f.oc); /* idempotent */
    gateway_openclaw_destroy(NULL);
    s_fix_free(&f);

    /* Each allocation failing in turn, on a gateway of its own. */
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        test_gw_t b;
        test_gw_new(&b, "route-openclaw-test-new");
        router_metrics_t *m = router_metrics_new();
        assert_non_null(m);
        gateway_openclaw_opts_t o = {.auth = b.auth, .turns = b.turns, .metrics = m};
        alloc_fail_arm(i);
        errno = 0;
        gateway_openclaw_t *oc = gateway_openclaw_new(b.gw, b.loop, &o);
        int e = errno;
        unsigned failed = alloc_fail_disarm();
        if (!oc && !e)
            fail_msg("allocation %ld failing: NULL without a reason", i);
        gateway_openclaw_destroy(&oc);
        test_gw_stop(&b);
        test_gw_free(&b);
        router_metrics_destroy(&m);
        if (!failed)
            break;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upgrade_out_of_memory),
        cmocka_unit_test(test_connect_out_of_memory),
        cmocka_unit_test(test_methods_out_of_memory),
        cmocka_unit_test(test_run_end_keeps_key),
        cmocka_unit_test(test_run_out_of_memory),
        cmocka_unit_test(test_closing_socket_runs_nothing),
        cmocka_unit_test(test_new_refusals),
        cmocka_unit_test(test_cached_status_damaged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
