/* tests/route_openclaw_test.c — the OpenClaw endpoint (gateway/
 * route_openclaw.c, WIRE §25) out of memory: its loop runs on the test's
 * thread, so tests/alloc_fail.h fails the endpoint's own allocations one
 * at a time while it answers `connect`, `system-presence`, `health`,
 * `chat.abort` and an unknown method (runs need workers: the integration
 * tests have them). After each failure the
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
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/state/tokens.h"
#include "router/workers/broker.h"
#include "router/workers/turns.h"
#include "loop_until.h"

#define WAIT_MS 5000 /* a bound on one wait, never a speed check */

typedef struct {
    router_loop_t *loop;
    router_tokens_t *tokens;
    gateway_auth_t *auth;
    gateway_http_t *gw;
    router_broker_t *broker;
    router_turns_t *turns;
    gateway_openclaw_t *oc;
    uint16_t port;
} fix_t;

/* One client socket and what the server sent it (no allocation here: the
 * loop's allocations are the ones failed). */
typedef struct {
    int fd;
    uint8_t buf[1 << 16];
    size_t len;
    bool eof;
    size_t head;             /* octets of the HTTP head, 0 until read */
} client_t;

static client_t s_cl;

static void s_fix_new(fix_t *f)
{
    memset(f, 0, sizeof *f);
    router_loop_opts_t lo = {.backend = ROUTER_LOOP_EPOLL};
    f->loop = router_loop_new(&lo);
    assert_non_null(f->loop);
    char err[256];
    f->tokens = router_tokens_new(NULL, f->loop, err, sizeof err);
    assert_non_null(f->tokens);
    gateway_auth_opts_t ao = {.require_pairing = false};
    f->auth = gateway_auth_new(f->tokens, &ao);
    assert_non_null(f->auth);
    f->gw = gateway_http_new(f->loop, NULL);
    assert_non_null(f->gw);
    static int n;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://route-openclaw-test-%d", ++n);
    router_broker_opts_t bo = {.loop = f->loop, .endpoint = ep};
    f->broker = router_broker_new(&bo, err, sizeof err);
    assert_non_null(f->broker);
    router_turns_opts_t to = {.loop = f->loop, .broker = f->broker};
    f->turns = router_turns_new(&to, err, sizeof err);
    assert_non_null(f->turns);
    gateway_openclaw_opts_t oo = {.auth = f->auth, .turns = f->turns};
    f->oc = gateway_openclaw_new(f->gw, f->loop, &oo);
    assert_non_null(f->oc);
    router_addr_t addr, bound;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    assert_int_equal(gateway_http_listen(f->gw, &addr, &bound), 0);
    f->port = router_addr_port(&bound);
}

static void s_fix_free(fix_t *f)
{
    gateway_http_destroy(&f->gw);
    router_tokens_stop(f->tokens);
    gateway_openclaw_destroy(&f->oc);
    router_turns_destroy(&f->turns);
    router_broker_destroy(&f->broker);
    gateway_auth_destroy(&f->auth);
    router_tokens_destroy(&f->tokens);
    router_loop_destroy(&f->loop);
}

/* ---------------------------------------------------------------- the client */

static void s_read(void)
{
    while (!s_cl.eof && s_cl.len < sizeof s_cl.buf) {
        ssize_t n = recv(s_cl.fd, s_cl.buf + s_cl.len, sizeof s_cl.buf - s_cl.len, 0);
        if (n > 0)
            s_cl.len += (size_t) n;
        else if (n == 0 || (errno != EAGAIN && errno != EINTR))
            s_cl.eof = true;
        else if (errno == EAGAIN)
            break;
    }
    if (!s_cl.head) {
        for (size_t i = 3; i < s_cl.len; i++)
            if (!memcmp(s_cl.buf + i - 3, "\r\n\r\n", 4)) {
                s_cl.head = i + 1;
                break;
            }
    }
}

/* The n-th server frame after the head: opcode and payload; false when
 * not all here yet. */
static bool s_frame(unsigned n, int *op, const uint8_t **payload, size_t *len)
{
    if (!s_cl.head)
        return false;
    size_t at = s_cl.head;
    for (unsigned i = 0;; i++) {
        if (s_cl.len - at < 2)
            return false;
        const uint8_t *p = s_cl.buf + at;
        size_t plen = p[1] & 0x7f, hl = 2;
        if (plen == 126) {
            if (s_cl.len - at < 4)
                return false;
            plen = (size_t) p[2] << 8 | p[3];
            hl = 4;
        } else if (plen == 127) {
            if (s_cl.len - at < 10)
                return false;
            plen = 0;
            for (int k = 0; k < 8; k++)
                plen = plen << 8 | p[2 + k];
            hl = 10;
        }
        if (s_cl.len - at < hl + plen)
            return false;
        if (i == n) {
            *op = p[0] & 0x0f;
            *payload = p + hl;
            *len = plen;
            return true;
        }
        at += hl + plen;
    }
}

/* How many whole frames came, and whether one of them is a Close. */
static unsigned s_frames(bool *closed)
{
    unsigned n = 0;
    int op;
    const uint8_t *p;
    size_t len;
    *closed = false;
    while (s_frame(n, &op, &p, &len)) {
        *closed = *closed || op == 8;
        n++;
    }
    return n;
}

static void s_connect_tcp(uint16_t port)
{
    memset(&s_cl, 0, sizeof s_cl);
    s_cl.fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s_cl.fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(s_cl.fd, (struct sockaddr *) &a, sizeof a), 0);
    static const char up[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n";
    assert_int_equal(send(s_cl.fd, up, sizeof up - 1, 0), (ssize_t) (sizeof up - 1));
    assert_int_equal(fcntl(s_cl.fd, F_SETFL, O_NONBLOCK), 0);
}

/* A masked text frame (mask 0: the payload goes as it is). */
static void s_send_text(const char *text)
{
    size_t n = strlen(text);
    uint8_t h[8] = {0x81};
    size_t hl;
    if (n < 126) {
        h[1] = (uint8_t) (0x80 | n);
        hl = 2;
    } else {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t) (n >> 8);
        h[3] = (uint8_t) n;
        hl = 4;
    }
    memset(h + hl, 0, 4);
    hl += 4;
    assert_int_equal(send(s_cl.fd, h, hl, MSG_NOSIGNAL), (ssize_t) hl);
    assert_int_equal(send(s_cl.fd, text, n, MSG_NOSIGNAL), (ssize_t) n);
}

static unsigned s_want;

/* `s_want` frames came, or a Close, or the connection ended. */
static bool s_until_frames(void *ud)
{
    (void) ud;
    s_read();
    bool closed;
    return s_frames(&closed) >= s_want || closed || s_cl.eof;
}

/* Runs the loop until frame `n` (0-based) came or the socket ended.
 * Returns true when the frame came and is text. */
static bool s_wait_frame(fix_t *f, unsigned n)
{
    s_want = n + 1;
    assert_true(test_loop_wait(f->loop, s_until_frames, NULL, 1, WAIT_MS));
    int op;
    const uint8_t *p;
    size_t len;
    return s_frame(n, &op, &p, &len) && op == 1;
}

static bool s_frame_has(unsigned n, const char *needle)
{
    int op;
    const uint8_t *p;
    size_t len;
    if (!s_frame(n, &op, &p, &len))
        return false;
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= len; i++)
        if (!memcmp(p + i, needle, k))
            return true;
    return false;
}

/* A client past hello-ok (nothing failed), with its frames counted. */
static unsigned s_client_connected(fix_t *f)
{
    s_connect_tcp(f->port);
    assert_true(s_wait_frame(f, 0)); /* connect.challenge */
    s_send_text("{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":{"
                "\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"gateway-client\","
                "\"mode\":\"backend\"},\"scopes\":[\"operator.read\",\"operator.write\"],"
                "\"auth\":{\"token\":\"t\"}}}");
    assert_true(s_wait_frame(f, 1));
    assert_true(s_frame_has(1, "\"hello-ok\""));
    bool closed;
    return s_frames(&closed);
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
        (void) test_loop_wait(f->loop, s_gone, NULL, 1, WAIT_MS);
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
        s_connect_tcp(f.port);
        assert_true(s_wait_frame(&f, 0));
        alloc_fail_arm(i);
        s_send_text("{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":{"
                    "\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"gateway-client\","
                    "\"mode\":\"backend\"},\"scopes\":[\"operator.read\"],"
                    "\"auth\":{\"token\":\"t\"}}}");
        s_want = 2;
        bool held = test_loop_wait(f.loop, s_until_frames, NULL, 1, WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        bool closed;
        unsigned n = s_frames(&closed);
        if (!held || (n < 2 && !closed && !s_cl.eof))
            fail_msg("allocation %ld failing: connect got neither an answer nor a close", i);
        s_client_close(&f);
        if (!failed) {
            assert_true(n >= 2 && s_frame_has(1, "\"hello-ok\""));
            break;
        }
    }
    /* Still serving. */
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
        "{\"type\":\"req\",\"id\":\"m\",\"method\":\"chat.abort\",\"params\":{\"sessionKey\":\"s\"}}",
        "{\"type\":\"req\",\"id\":\"m\",\"method\":\"no.such\"}",
    };
    fix_t f;
    s_fix_new(&f);
    for (size_t m = 0; m < sizeof reqs / sizeof reqs[0]; m++) {
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            unsigned base = s_client_connected(&f);
            const char *text = reqs[m];
            alloc_fail_arm(i);
            s_send_text(text);
            /* The answer is the first frame with "id":"m" (events may
             * come first: presence). */
            bool answered = false, closed = false;
            for (unsigned k = base; !answered && !closed && !s_cl.eof; k++) {
                s_want = k + 1;
                if (!test_loop_wait(f.loop, s_until_frames, NULL, 1, WAIT_MS))
                    break;
                (void) s_frames(&closed);
                answered = s_frame_has(k, "\"id\":\"m\"");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_out_of_memory),
        cmocka_unit_test(test_methods_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
