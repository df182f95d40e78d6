/* tests/route_openclaw_timers_test.c — the OpenClaw endpoint
 * (gateway/route_openclaw.c, WIRE §25.1–25.3) when its loop has no timer
 * left (every one of max_timers pending): a socket whose handshake
 * deadline cannot be set closes 1011 "no timer for the handshake" (or the
 * server refuses or cuts it first) — never a socket that nothing would
 * end if its client said nothing; a connect accepted then gets its ticks
 * all the same (the handshake's timer goes to them, so a connected socket
 * never goes quiet until its client gives up, 4000); and once timers are
 * free again the next client is served. Pairing is off and the client is the local
 * backend (no device). The loop runs on the test's thread, which takes the
 * timers itself. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/routes_openclaw.h"
#include "router/net/loop.h"
#include "gateway_fixture.h"
#include "loop_until.h"
#include "ws_raw_client.h"

#define WAIT_MS 5000 /* a bound on one wait, never a speed check */

typedef struct {
    test_gw_t b;
    gateway_openclaw_t *oc;
} fix_t;

static test_wsc_t s_cl;

#define S_CONNECT                                                                          \
    "{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":{\"minProtocol\":4,"     \
    "\"maxProtocol\":4,\"client\":{\"id\":\"gateway-client\",\"mode\":\"backend\"},"          \
    "\"scopes\":[\"operator.read\"],\"auth\":{\"token\":\"t\"}}}"

static unsigned s_tick_ms = GATEWAY_OPENCLAW_TICK_MIN_MS; /* the endpoint's tick_ms */

static void s_fix_new(fix_t *f)
{
    test_gw_new(&f->b, "route-openclaw-timers-test");
    gateway_openclaw_opts_t oo = {.auth = f->b.auth, .turns = f->b.turns,
                                  .tick_ms = s_tick_ms};
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

/* ---------------------------------------------------------------- timers */

static uint64_t *s_taken;
static size_t s_ntaken;

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id, (void) ud;
    fail_msg("a filler timer fired");
}

/* Takes every free timer of the loop but `spare` (the test's own wait
 * takes one). */
static void s_timers_take(fix_t *f, size_t spare)
{
    s_taken = calloc(ROUTER_LOOP_MAX_TIMERS, sizeof *s_taken);
    assert_non_null(s_taken);
    s_ntaken = 0;
    while (s_ntaken < ROUTER_LOOP_MAX_TIMERS &&
           (s_taken[s_ntaken] = router_loop_timer_add(f->b.loop, 3600000, s_never, NULL)))
        s_ntaken++;
    assert_int_equal(errno, ENOSPC);
    for (size_t i = 0; i < spare && s_ntaken; i++)
        assert_int_equal(router_loop_timer_cancel(f->b.loop, s_taken[--s_ntaken]), 0);
}

static void s_timers_give_back(fix_t *f)
{
    while (s_ntaken)
        (void) router_loop_timer_cancel(f->b.loop, s_taken[--s_ntaken]);
    free(s_taken);
    s_taken = NULL;
}

/* ---------------------------------------------------------------- the client */

static void s_open(fix_t *f)
{
    test_wsc_open(&s_cl, f->b.port,
                  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(s_cl.fd, F_SETFL, O_NONBLOCK), 0);
}

/* The upgrade was answered: refused, or a frame came, or it ended. */
static bool s_until_answered(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    bool closed;
    return test_wsc_ended(&s_cl) || (s_cl.head && test_wsc_refused(&s_cl)) ||
           test_wsc_frames(&s_cl, &closed) >= 1;
}

/* Tick events that came. */
static unsigned s_ticks(void)
{
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed), ticks = 0;
    for (unsigned i = 0; i < n; i++)
        ticks += test_wsc_frame_has(&s_cl, i, "\"event\":\"tick\"");
    return ticks;
}

static bool s_until_ticks(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    return test_wsc_ended(&s_cl) || s_ticks() >= 2;
}

static unsigned s_want;

static bool s_until_frames(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    bool closed;
    return test_wsc_frames(&s_cl, &closed) >= s_want || closed || s_cl.eof;
}

static bool s_gone(void *ud)
{
    (void) ud;
    return true;
}

static void s_close_client(fix_t *f)
{
    close(s_cl.fd);
    for (int i = 0; i < 5; i++)
        (void) test_loop_wait(f->b.loop, s_gone, NULL, 1, WAIT_MS);
}

/* The Close frame that came (its index), or -1. */
static int s_close_frame(const char *reason)
{
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed);
    for (unsigned i = 0; i < n; i++) {
        int op;
        const uint8_t *p;
        size_t len;
        if (!test_wsc_frame(&s_cl, i, &op, &p, &len) || op != 8)
            continue;
        if (len < 2 || ((p[0] << 8) | p[1]) != 1011)
            fail_msg("closed with %u, not 1011", len >= 2 ? (unsigned) ((p[0] << 8) | p[1]) : 0);
        if (len - 2 != strlen(reason) || memcmp(p + 2, reason, len - 2) != 0)
            fail_msg("closed for \"%.*s\", not \"%s\"", (int) (len - 2), (const char *) p + 2,
                     reason);
        return (int) i;
    }
    return -1;
}

/* A client to hello-ok, nothing failing: still served. */
static void s_served(fix_t *f)
{
    s_open(f);
    s_want = 1;
    assert_true(test_loop_wait(f->b.loop, s_until_frames, NULL, 1, WAIT_MS));
    assert_true(test_wsc_frame_has(&s_cl, 0, "\"connect.challenge\""));
    test_wsc_send_text(&s_cl, S_CONNECT);
    s_want = 2;
    assert_true(test_loop_wait(f->b.loop, s_until_frames, NULL, 1, WAIT_MS));
    assert_true(test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
    s_close_client(f);
}

/* ---------------------------------------------------------------- tests */

/* Every timer taken while a connect is accepted: hello-ok, then ticks,
 * two of them (the first re-armed its own) — a connected socket that never
 * ticked would be closed by its client 4000 after two silent intervals,
 * blaming the network. */
static void test_ticks_without_free_timers(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    s_open(&f);
    s_want = 1;
    assert_true(test_loop_wait(f.b.loop, s_until_frames, NULL, 1, WAIT_MS));
    assert_true(test_wsc_frame_has(&s_cl, 0, "\"connect.challenge\""));
    s_timers_take(&f, 1);
    test_wsc_send_text(&s_cl, S_CONNECT);
    assert_true(test_loop_wait(f.b.loop, s_until_ticks, NULL, 1, WAIT_MS));
    s_timers_give_back(&f);
    assert_true(test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
    if (s_ticks() < 2)
        fail_msg("the socket ended before its ticks");
    s_close_client(&f);
    s_served(&f);
    s_fix_free(&f);
}

/* The upgrade with no timer for its handshake deadline: refused, or the
 * 101 and a Close 1011 "no timer for the handshake" (a socket that
 * nothing would end if its client never sends connect) — never a socket
 * left open without its deadline. */
static void test_no_timer_for_handshake(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    bool closed_1011 = false;
    for (size_t spare = 1; spare <= 8; spare++) {
        s_timers_take(&f, spare);
        s_open(&f);
        assert_true(test_loop_wait(f.b.loop, s_until_answered, NULL, 1, WAIT_MS));
        for (int i = 0; i < 5; i++) /* a Close right behind the challenge */
            (void) test_loop_wait(f.b.loop, s_gone, NULL, 1, WAIT_MS);
        test_wsc_read(&s_cl);
        s_timers_give_back(&f);
        bool refused = s_cl.head && test_wsc_refused(&s_cl);
        int at = refused || !s_cl.head ? -1 : s_close_frame("no timer for the handshake");
        print_message("spare %zu: %s\n", spare,
                      refused ? "refused" : at >= 0 ? "closed 1011" : s_cl.eof ? "cut" : "open");
        closed_1011 = closed_1011 || at >= 0;
        if (!refused && at < 0 && !s_cl.eof) {
            /* Open: the server found a timer for its deadline. */
            assert_true(test_wsc_frame_has(&s_cl, 0, "\"connect.challenge\""));
            s_close_client(&f);
            break;
        }
        s_close_client(&f);
    }
    assert_true(closed_1011);
    s_served(&f);
    s_fix_free(&f);
}

/* A tick interval below the least taken (KITH_OPENCLAW_TICK_MS=1) is
 * the least: hello-ok's policy says so, and the socket ticks at it rather
 * than flooding its client. */
static void test_tick_interval_floor(void **state)
{
    (void) state;
    s_tick_ms = 1;
    fix_t f;
    s_fix_new(&f);
    s_tick_ms = GATEWAY_OPENCLAW_TICK_MIN_MS;
    s_open(&f);
    s_want = 1;
    assert_true(test_loop_wait(f.b.loop, s_until_frames, NULL, 1, WAIT_MS));
    test_wsc_send_text(&s_cl, S_CONNECT);
    assert_true(test_loop_wait(f.b.loop, s_until_ticks, NULL, 1, WAIT_MS));
    char want[48];
    snprintf(want, sizeof want, "\"tickIntervalMs\":%u", GATEWAY_OPENCLAW_TICK_MIN_MS);
    assert_true(test_wsc_frame_has(&s_cl, 1, want));
    assert_true(s_ticks() >= 2);
    s_close_client(&f);
    s_fix_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ticks_without_free_timers),
        cmocka_unit_test(test_no_timer_for_handshake),
        cmocka_unit_test(test_tick_interval_floor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
