/* tests/route_canvas_test.c — live canvases (gateway/route_canvas.c, WIRE
 * §26) out of memory while a post fans out to its watchers: the route's
 * loop runs on the test's thread, so tests/alloc_fail.h fails its
 * allocations one at a time while POST /api/canvas/{id} answers and two
 * watchers wait for the new version. A post answered 200 must reach every
 * watcher — the new version's frame (one frame the watchers' queues
 * share, or a copy each when that frame finds no memory), or a close that
 * sends it back for the current document — never leave it showing the
 * old version as if it were current. And the shared frame itself, byte by
 * byte. LSan checks nothing leaked. */
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
#include "gateway/routes_canvas.h"
#include "gateway/ws.h"
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/state/tokens.h"
#include "router/workers/broker.h"
#include "router/workers/turns.h"
#include "gateway_fixture.h"
#include "loop_until.h"
#include "ws_raw_client.h"

#define WAIT_MS 5000 /* a bound on one wait, never a speed check */
#define WATCHERS 2

typedef struct {
    test_gw_t b;               /* loop, tokens, auth, server, broker, turns */
    gateway_canvas_t *cv;      /* the route under test */
} fix_t;

/* The clients (tests/ws_raw_client.h: they allocate nothing, so the
 * allocations failed are the loop's): watchers, and one for the post. */
static test_wsc_t s_watch[WATCHERS];
static test_wsc_t s_poster;

static void s_fix_new(fix_t *f)
{
    test_gw_new(&f->b, "route-canvas-test");
    f->cv = gateway_canvas_new(f->b.gw, f->b.auth, NULL);
    assert_non_null(f->cv);
    test_gw_listen(&f->b);
}

static void s_fix_free(fix_t *f)
{
    test_gw_stop(&f->b);
    gateway_canvas_destroy(&f->cv);
    test_gw_free(&f->b);
}

/* ---------------------------------------------------------------- clients */

static bool s_has_frames(void *ud)
{
    test_wsc_t *c = ud;
    test_wsc_read(c);
    bool closed;
    return test_wsc_frames(c, &closed) >= 1 || closed || c->eof;
}

/* A watcher of "wall" past its first frame (the document, or empty). */
static void s_watcher_open(fix_t *f, test_wsc_t *c)
{
    test_wsc_open(c, f->b.port,
                  "GET /ws/canvas/wall HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
    test_loop_until(f->b.loop, s_has_frames, c, 1, WAIT_MS);
    assert_false(test_wsc_refused(c));
    assert_true(test_wsc_frame_has(c, 0, "\"id\":\"wall\""));
}

static void s_post_open(fix_t *f, const char *body)
{
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/canvas/wall HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
             strlen(body), body);
    test_wsc_open(&s_poster, f->b.port, req);
    assert_int_equal(fcntl(s_poster.fd, F_SETFL, O_NONBLOCK), 0);
}

static bool s_post_ok(void)
{
    return s_poster.len >= 12 && !memcmp(s_poster.buf, "HTTP/1.1 200", 12);
}

/* The post was answered (the server closes after it): refused, or taken
 * and every watcher got a second frame or ended. */
static bool s_post_settled(void *ud)
{
    (void) ud;
    test_wsc_read(&s_poster);
    if (s_poster.eof && !s_post_ok())
        return true;
    bool done = s_poster.eof;
    for (int i = 0; i < WATCHERS; i++) {
        test_wsc_read(&s_watch[i]);
        bool closed;
        done = done && (test_wsc_frames(&s_watch[i], &closed) >= 2 || closed || s_watch[i].eof);
    }
    return done;
}

static bool s_turn(void *ud)
{
    (void) ud;
    return true;
}

static void s_clients_close(fix_t *f)
{
    for (int i = 0; i < WATCHERS; i++)
        close(s_watch[i].fd);
    close(s_poster.fd);
    /* A few turns of the loop to let the server see them go. */
    for (int i = 0; i < 5; i++)
        (void) test_loop_wait(f->b.loop, s_turn, NULL, 1, WAIT_MS);
}

/* ---------------------------------------------------------------- tests */

/* Each allocation of a post failing in turn: the post is refused, or it is
 * answered 200 and each watcher gets that version or is closed. */
static void test_post_out_of_memory(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    unsigned version = 0; /* the last version a post was answered with */
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        for (int w = 0; w < WATCHERS; w++)
            s_watcher_open(&f, &s_watch[w]);
        char body[64];
        snprintf(body, sizeof body, "document %ld", i);
        s_post_open(&f, body);
        alloc_fail_arm(i);
        bool settled = test_loop_wait(f.b.loop, s_post_settled, NULL, 1, WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        if (!settled)
            print_message("allocation %ld failing: the post and its watchers did not settle\n",
                          i);
        bool ok = s_post_ok();
        if (ok) {
            /* The version the answer names: a post that failed after the
             * document was stored (its answer lost) took one too. */
            const char *v = memmem(s_poster.buf, s_poster.len, "\"version\":", 10);
            assert_non_null(v);
            version = (unsigned) strtoul(v + 10, NULL, 10);
            char want[48];
            snprintf(want, sizeof want, "\"version\":%u", version);
            for (int w = 0; w < WATCHERS; w++) {
                bool got = test_wsc_frame_has(&s_watch[w], 1, want) &&
                           test_wsc_frame_has(&s_watch[w], 1, body);
                if (!got && !test_wsc_ended(&s_watch[w]))
                    fail_msg("allocation %ld failing: the post was answered 200, and watcher "
                             "%d got neither version %u nor a close (settled: %d)",
                             i, w, version, settled);
            }
        } else if (!settled && !s_poster.eof) {
            fail_msg("allocation %ld failing: the post got no answer", i);
        }
        s_clients_close(&f);
        if (!failed) {
            assert_true(ok);
            for (int w = 0; w < WATCHERS; w++)
                assert_false(test_wsc_ended(&s_watch[w]));
            break;
        }
    }
    assert_true(version >= 2); /* some failures came after the post was taken */
    /* Still serving: a new watcher gets the last version. */
    s_watcher_open(&f, &s_watch[0]);
    char want[48];
    snprintf(want, sizeof want, "\"version\":%u", version);
    assert_true(test_wsc_frame_has(&s_watch[0], 0, want));
    close(s_watch[0].fd);
    s_fix_free(&f);
}

/* The frame a post shares among its watchers (gateway_ws_frame_new): an
 * unmasked, final text or binary frame, header and payload, with each
 * length encoding at its edges; refused when larger than 2^63 or without
 * memory. */
static void test_frame_encoding(void **state)
{
    (void) state;
    static const struct {
        size_t len;  /* payload */
        size_t hl;   /* header */
    } cases[] = {{0, 2}, {125, 2}, {126, 4}, {65535, 4}, {65536, 10}};
    static uint8_t payload[65536];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t) (i * 31);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        for (int text = 0; text < 2; text++) {
            router_shared_buf_t *fr = gateway_ws_frame_new(text, payload, cases[k].len);
            assert_non_null(fr);
            const uint8_t *p = router_shared_buf_data(fr);
            assert_int_equal(router_shared_buf_len(fr), cases[k].hl + cases[k].len);
            assert_int_equal(p[0], text ? 0x81 : 0x82);
            uint64_t n = p[1] & 0x7f;
            assert_int_equal(p[1] & 0x80, 0); /* the server does not mask */
            if (cases[k].hl == 4) {
                assert_int_equal(n, 126);
                n = (uint64_t) p[2] << 8 | p[3];
            } else if (cases[k].hl == 10) {
                assert_int_equal(n, 127);
                n = 0;
                for (int b = 0; b < 8; b++)
                    n = n << 8 | p[2 + b];
            }
            assert_int_equal(n, cases[k].len);
            assert_memory_equal(p + cases[k].hl, payload, cases[k].len);
            router_shared_buf_destroy(&fr);
        }
    }
    errno = 0;
    assert_null(gateway_ws_frame_new(true, payload, SIZE_MAX));
    assert_int_equal(errno, EMSGSIZE);
    alloc_fail_arm(0);
    errno = 0;
    router_shared_buf_t *none = gateway_ws_frame_new(true, payload, 10);
    int e = errno;
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_null(none);
    assert_int_equal(e, ENOMEM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_encoding),
        cmocka_unit_test(test_post_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
