/* tests/http_server_fail_test.c — the HTTP server core and its WebSocket
 * side on the paths a well-behaved client and a healthy machine never
 * take: deferred answers and requests still arriving met by a drain, or by
 * a client that went away; an upgrade completed during a drain; pipelined
 * input with no memory left to hold it; the server's allocations failing
 * one at a time while a request or a WebSocket message arrives in pieces
 * (each run ends with the answers asked for, or a typed error and a close,
 * never a hang, a leak or an answer to the wrong request); error texts
 * that are not UTF-8 or too long; 426s; answers past the unsent room; a
 * deferred answer given when the loop has no timer left, and a deferred
 * request's body let go of the unauthenticated budget; requests cut short
 * by a half-close (gateway/http_server.c, ws.c, http_response.c). The
 * loop runs on the test's own thread, so the test calls the server's API
 * (a route's deferred answer, a drain) between its turns; the client is a
 * plain socket read without blocking from the loop's checks. Waits are
 * deadlines for progress, never timings. */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "loop_until.h"
#include "gateway/http_server.h"
#include "gateway/ws.h"
#include "proto/utf8.h"
#include "proto/ws.h"
#include "router/metrics.h"
#include "router/net/addr.h"
#include "router/net/loop.h"

/* The longest any wait for progress may take before the test fails. */
#define S_WAIT_MS 20000u

/* ---------------------------------------------------------------- routes */

/* The deferred request the test answers by hand, and whether its handler
 * should make the next allocation fail (the server's, as it returns). */
static gateway_http_pending_t *s_pending;
static bool s_fail_after_defer;

static void s_defer(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    s_pending = gateway_http_res_defer(res);
    if (!s_pending) { /* out of memory: answer now, as the header asks */
        gateway_http_res_close(res);
        (void) gateway_http_respond_error(res, 503, "unavailable", "out of memory");
        return;
    }
    if (s_fail_after_defer)
        alloc_fail_arm(0);
}

static void s_plain(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    (void) gateway_http_respond(res, 200, "text/plain", "plain", 5);
}

/* An error whose text carries octets that are not UTF-8, as a route's
 * text does when it quotes a client's member name cut at 40 octets
 * (gateway/ingress_body.c): a code point cut in two, a lone continuation
 * octet, an overlong form, a surrogate, around well-formed ones. */
static void s_cut_error(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    (void) gateway_http_respond_error(res, 400, "invalid_body",
                                      "unknown member \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"
                                      " \x80 \xc0\xaf \xed\xa0\x80 \xe2\x82\"");
}

/* An answer of s_big_len octets (at most sizeof s_big). */
static char s_big[512 * 1024];
static size_t s_big_len;

static void s_big_answer(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    (void) gateway_http_respond(res, 200, "text/plain", s_big, s_big_len);
}

/* An error whose text is far longer than an error body may be (a route
 * quoting what an upstream said, say), in two-octet characters. */
static void s_long_error(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    static char text[3001];
    for (size_t i = 0; i + 1 < sizeof text; i += 2)
        memcpy(text + i, "\xc3\xa9", 2);
    if (gateway_http_respond_error(res, 502, "upstream_failed", text) != 0)
        return; /* → 500 */
}

/* A streamed answer (as /api/events): its head, then what the test sends;
 * s_streams counts those open. */
static int s_streams;

static void s_stream_gone(router_conn_t *conn, void *ud)
{
    (void) conn;
    (void) ud;
    s_streams--;
}

static void s_stream(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    static const gateway_http_stream_handlers_t h = {.on_close = s_stream_gone};
    if (gateway_http_respond_stream(res, 200, "text/event-stream", &h, NULL))
        s_streams++;
}

/* ---------------------------------------------------------------- server */

/* ---------------------------------------------------------------- echo routes */

/* POST /echo-body: the body back, as text. */
static void s_echo_body(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) ud;
    (void) gateway_http_respond(res, 200, "text/plain", req->body, req->body_len);
}

/* Sockets of /echo open (accepted, not yet closed). */
static int s_ws_open;

static void s_ws_echo(gateway_ws_t *ws, bool text, const uint8_t *data, size_t len, void *ud)
{
    (void) ud;
    (void) gateway_ws_send(ws, text, data, len);
}

static void s_ws_closed(gateway_ws_t *ws, uint16_t code, void *ud)
{
    (void) ws, (void) code, (void) ud;
    s_ws_open--;
}

static void s_echo_upgrade(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req, (void) ud;
    static const gateway_ws_handlers_t h = {.on_message = s_ws_echo, .on_close = s_ws_closed};
    if (gateway_ws_accept(res, &h, NULL, NULL))
        s_ws_open++;
    else
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
}

/* ---------------------------------------------------------------- server */

typedef struct {
    router_loop_t *loop;
    router_metrics_t *metrics;
    gateway_http_t *gw;
    uint16_t port;
} s_srv_t;

/* A server on a loop with options `lo` (NULL: defaults; always epoll) and
 * gateway options `o` (NULL: defaults), with the routes above. */
static void s_srv_start_loop(s_srv_t *s, const router_loop_opts_t *lo_in,
                             const gateway_http_opts_t *o)
{
    memset(s, 0, sizeof *s);
    router_loop_opts_t lo = lo_in ? *lo_in : (router_loop_opts_t){0};
    lo.backend = ROUTER_LOOP_EPOLL;
    s->loop = router_loop_new(&lo);
    assert_non_null(s->loop);
    s->metrics = router_metrics_new();
    assert_non_null(s->metrics);
    gateway_http_opts_t opts = o ? *o : (gateway_http_opts_t){0};
    opts.metrics = s->metrics;
    s->gw = gateway_http_new(s->loop, &opts);
    assert_non_null(s->gw);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/defer", s_defer, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/plain", s_plain, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/cut-error", s_cut_error, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "POST", "/upload", s_plain, NULL), 0);
    assert_int_equal(gateway_http_route_ws(s->gw, "/ws", NULL, 0, s_plain, NULL), 0);
    assert_int_equal(gateway_http_route_ws(s->gw, "/echo", NULL, 0, s_echo_upgrade, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "POST", "/echo-body", s_echo_body, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "POST", "/defer", s_defer, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/big", s_big_answer, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/long-error", s_long_error, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, NULL, "/stream", s_stream, NULL), 0);
    s_streams = 0;
    memset(s_big, 'b', sizeof s_big);
    router_addr_t addr, bound;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    assert_int_equal(gateway_http_listen(s->gw, &addr, &bound), 0);
    s->port = router_addr_port(&bound);
    s_pending = NULL;
    s_fail_after_defer = false;
}

static void s_srv_start(s_srv_t *s, const gateway_http_opts_t *o)
{
    s_srv_start_loop(s, NULL, o);
}

static void s_srv_stop(s_srv_t *s)
{
    gateway_http_pending_end(&s_pending);
    gateway_http_destroy(&s->gw);
    router_loop_destroy(&s->loop);
    router_metrics_destroy(&s->metrics);
}

/* The value of a metric series ("name" or "name{labels}"), -1 when absent. */
static long long s_metric(s_srv_t *s, const char *series)
{
    static char text[256 * 1024];
    long n = router_metrics_render(s->metrics, text, sizeof text);
    assert_true(n > 0);
    size_t len = strlen(series);
    for (const char *at = text; (at = strstr(at, series)); at += len)
        if ((at == text || at[-1] == '\n') && at[len] == ' ')
            return atoll(at + len + 1);
    return -1;
}

/* ---------------------------------------------------------------- client */

typedef struct {
    int fd;
    bool eof;        /* the server closed (FIN or reset) */
    size_t len;      /* octets in buf */
    char buf[65536];
} s_client_t;

static s_client_t *s_connect(const s_srv_t *s)
{
    s_client_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(s->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *) &sin, sizeof sin), 0);
    return c;
}

/* Closes with a reset (SO_LINGER 0), as a client that crashed: the
 * server hears of it even while it reads nothing from the connection. */
static void s_client_reset(s_client_t **cp)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt((*cp)->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close((*cp)->fd);
    (*cp)->fd = -1;
    free(*cp);
    *cp = NULL;
}

static void s_client_close(s_client_t **cp)
{
    if (*cp && (*cp)->fd >= 0)
        close((*cp)->fd);
    free(*cp);
    *cp = NULL;
}

static void s_send(s_client_t *c, const char *text)
{
    size_t n = strlen(text);
    assert_int_equal(send(c->fd, text, n, MSG_NOSIGNAL), (ssize_t) n);
}

/* Reads what has arrived, without waiting. */
static void s_pump(s_client_t *c)
{
    while (!c->eof && c->len < sizeof c->buf - 1) {
        ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, MSG_DONTWAIT);
        if (k > 0) {
            c->len += (size_t) k;
            c->buf[c->len] = '\0';
        } else if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            c->eof = true;
        } else {
            return;
        }
    }
}

/* Octets of the first complete response in c->buf, 0 while incomplete. */
static size_t s_resp_len(const s_client_t *c)
{
    const char *end = strstr(c->buf, "\r\n\r\n");
    if (!end)
        return 0;
    size_t head = (size_t) (end - c->buf) + 4;
    size_t body = 0;
    for (const char *l = c->buf; l && l < end; l = strstr(l, "\r\n"), l = l ? l + 2 : NULL)
        if (!strncasecmp(l, "Content-Length:", 15))
            body = (size_t) strtoull(l + 15, NULL, 10);
    if (!strncmp(c->buf, "HTTP/1.1 1", 10)) /* an interim answer has no body */
        body = 0;
    return c->len >= head + body ? head + body : 0;
}

static bool s_until_resp(void *ud)
{
    s_client_t *c = ud;
    s_pump(c);
    return s_resp_len(c) > 0 || c->eof;
}

static bool s_until_head(void *ud)
{
    s_client_t *c = ud;
    s_pump(c);
    return strstr(c->buf, "\r\n\r\n") || c->eof;
}

static bool s_until_eof(void *ud)
{
    s_client_t *c = ud;
    s_pump(c);
    return c->eof;
}

static bool s_until_pending(void *ud)
{
    (void) ud;
    return s_pending != NULL;
}

/* Runs the loop until the first response is in; copies it (head and body,
 * NUL-terminated) to out and consumes it. False when the server closed
 * first. */
static bool s_take_resp(s_srv_t *s, s_client_t *c, char *out, size_t cap)
{
    assert_true(test_loop_wait(s->loop, s_until_resp, c, 2, S_WAIT_MS));
    size_t n = s_resp_len(c);
    if (!n)
        return false;
    assert_true(n < cap);
    memcpy(out, c->buf, n);
    out[n] = '\0';
    memmove(c->buf, c->buf + n, c->len - n + 1);
    c->len -= n;
    return true;
}

/* c is served on: a plain GET on it is answered 200. */
static void s_served_on(s_srv_t *s, s_client_t *c)
{
    s_send(c, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    char r[4096];
    assert_true(s_take_resp(s, c, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
}

/* Everyone else is still served: a new connection's plain GET is 200. */
static void s_others_served(s_srv_t *s)
{
    s_client_t *c = s_connect(s);
    s_served_on(s, c);
    s_client_close(&c);
}

static void s_wait_pending(s_srv_t *s)
{
    assert_true(test_loop_wait(s->loop, s_until_pending, NULL, 2, S_WAIT_MS));
}

/* ---------------------------------------------------------------- drain */

static void s_drained(void *ud)
{
    *(bool *) ud = true;
}

static bool s_until_drained(void *ud)
{
    return *(bool *) ud;
}

/* A request deferred before a drain began is answered after it: the
 * answer says Connection: close and the connection closes, so the drain
 * ends once it is written (the header promises it: "each request in
 * progress (a deferred answer included) finishes with Connection: close").
 * It used to go out keep-alive: the client was left idle on a connection
 * that the drain's deadline then reset, and the drain waited for it. */
static void test_deferred_answer_in_a_drain_closes(void **state)
{
    (void) state;
    s_srv_t s;
    s_srv_start(&s, NULL);
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
    s_wait_pending(&s);

    bool drained = false;
    gateway_http_drain(s.gw, s_drained, &drained, 0); /* no deadline: the answer must end it */
    assert_false(drained);
    assert_int_equal(gateway_http_respond(gateway_http_pending_res(s_pending), 200, "text/plain",
                                          "late", 4), 0);
    gateway_http_pending_end(&s_pending);

    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(r, "\r\n\r\nlate"));
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    assert_int_equal(c->len, 0);
    assert_true(test_loop_wait(s.loop, s_until_drained, &drained, 2, S_WAIT_MS));
    s_client_close(&c);
    s_srv_stop(&s);
}

/* Checks r is a 503 with `code` and Retry-After `retry`, closing the
 * connection. */
static void s_expect_503(const char *r, const char *retry, const char *code)
{
    char want[96];
    assert_non_null(strstr(r, "HTTP/1.1 503 Service Unavailable\r\n"));
    snprintf(want, sizeof want, "\r\nRetry-After: %s\r\n", retry);
    assert_non_null(strstr(r, want));
    assert_non_null(strstr(r, "\r\nConnection: close\r\n"));
    snprintf(want, sizeof want, "\"code\":\"%s\"}", code);
    assert_non_null(strstr(r, want));
}

/* Checks r is the 503 a drain's last call gives, closing the connection. */
static void s_expect_shutting_down(const char *r)
{
    s_expect_503(r, "5", "shutting_down");
}

/* Requests still arriving when a drain's last call comes — a head half
 * sent, a body a third sent — are told 503 shutting_down (no route saw
 * them: the client may send them again elsewhere), as deferred ones are,
 * and closed in order. They used to be reset without a word at the drain's
 * deadline. */
static void test_drain_tells_requests_still_arriving(void **state)
{
    (void) state;
    s_srv_t s;
    s_srv_start(&s, NULL);
    s_client_t *head = s_connect(&s);
    s_client_t *body = s_connect(&s);
    s_client_t *deferred = s_connect(&s);
    s_send(head, "GET /plain HTTP/1.1\r\nHost: x\r\n");
    s_send(body, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc");
    s_send(deferred, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
    s_wait_pending(&s);
    assert_int_equal(s_metric(&s, "kith_http_connections_open"), 3);

    bool drained = false;
    gateway_http_drain(s.gw, s_drained, &drained, 400);
    char r[4096];
    s_client_t *all[] = {head, body, deferred};
    for (size_t i = 0; i < 3; i++) {
        assert_true(s_take_resp(&s, all[i], r, sizeof r));
        s_expect_shutting_down(r);
        assert_true(test_loop_wait(s.loop, s_until_eof, all[i], 2, S_WAIT_MS));
        assert_int_equal(all[i]->len, 0);
        s_client_close(&all[i]);
    }
    assert_true(test_loop_wait(s.loop, s_until_drained, &drained, 2, S_WAIT_MS));
    gateway_http_pending_end(&s_pending);
    s_srv_stop(&s);
}

/* At a drain's deadline every connection left is cut, those closing in
 * order too: here a client that read the 503 its deferred request was told
 * but never closes its end, and an idle keep-alive client that never
 * closes either, on a loop whose own close timeout is far away. The drain
 * used to wait for the loop's close timeout instead. */
static void test_drain_deadline_cuts_those_closing(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.close_timeout_ms = 600000};
    s_srv_t s;
    s_srv_start_loop(&s, &lo, NULL);
    s_client_t *idle = s_connect(&s);
    s_send(idle, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    char r[4096];
    assert_true(s_take_resp(&s, idle, r, sizeof r));
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
    s_wait_pending(&s);

    bool drained = false;
    gateway_http_drain(s.gw, s_drained, &drained, 400);
    assert_true(s_take_resp(&s, c, r, sizeof r));
    s_expect_shutting_down(r);
    assert_true(test_loop_wait(s.loop, s_until_drained, &drained, 2, S_WAIT_MS));
    assert_int_equal(s_metric(&s, "kith_http_connections_open"), 0);
    gateway_http_pending_end(&s_pending);
    s_client_close(&idle);
    s_client_close(&c);
    s_srv_stop(&s);
}

static bool s_until_no_stream(void *ud)
{
    (void) ud;
    return s_streams == 0;
}

/* A stream whose request was under way when a drain began (here its body
 * was still to come: the 100 Continue says the head was read) is closed
 * in order once it begins, as the drain closed the others: its head, then
 * a FIN, and the drain ends. It used to stay open until the drain's
 * deadline, which then reset it. */
static void test_stream_begun_in_a_drain_closes(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.close_timeout_ms = 600000};
    s_srv_t s;
    s_srv_start_loop(&s, &lo, NULL);
    s_client_t *c = s_connect(&s);
    s_send(c, "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
              "Expect: 100-continue\r\n\r\n");
    assert_true(test_loop_wait(s.loop, s_until_head, c, 2, S_WAIT_MS));
    assert_string_equal(c->buf, "HTTP/1.1 100 Continue\r\n\r\n");
    c->len = 0;
    c->buf[0] = '\0';

    bool drained = false;
    gateway_http_drain(s.gw, s_drained, &drained, 600000);
    s_send(c, "x");
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    assert_non_null(strstr(c->buf, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(c->buf, "\r\nConnection: close\r\n"));
    s_client_close(&c);
    assert_true(test_loop_wait(s.loop, s_until_no_stream, NULL, 2, S_WAIT_MS));
    assert_true(test_loop_wait(s.loop, s_until_drained, &drained, 2, S_WAIT_MS));
    s_srv_stop(&s);
}

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
}

/* A drain begun when the loop has no timer left for its deadline tells
 * what is still owed an answer 503 shutting_down at once, so the drain is
 * bounded all the same. It used to arm nothing and wait for the deferred
 * request's route, for ever if that never answered. */
static void test_drain_without_a_timer(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.max_timers = 64};
    s_srv_t s;
    s_srv_start_loop(&s, &lo, NULL);
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
    s_wait_pending(&s);
    /* Every slot taken but one: the drain's deadline takes it, its last
     * call finds none. (The listeners close first: that frees theirs.) */
    gateway_http_close_listeners(s.gw);
    uint64_t fill[64];
    size_t nfill = 0;
    while (nfill < 64 && (fill[nfill] = router_loop_timer_add(s.loop, 600000, s_never, NULL)))
        nfill++;
    assert_true(nfill > 1);
    assert_int_equal(router_loop_timer_cancel(s.loop, fill[--nfill]), 0);

    bool drained = false;
    gateway_http_drain(s.gw, s_drained, &drained, 600000);
    for (size_t i = 0; i < nfill; i++) /* room for the test's own waits */
        assert_int_equal(router_loop_timer_cancel(s.loop, fill[i]), 0);
    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    s_expect_shutting_down(r);
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    s_client_close(&c);
    assert_true(test_loop_wait(s.loop, s_until_drained, &drained, 2, S_WAIT_MS));
    gateway_http_pending_end(&s_pending);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- the client went */

static void s_stream_close(router_conn_t *conn, void *ud)
{
    (void) conn;
    (void) ud;
    fail_msg("a stream that never began was told it closed");
}

static bool s_until_closed(void *ud)
{
    return s_metric(ud, "kith_http_connections_open") == 0;
}

/* A deferred request whose client went away: a streamed answer, like a
 * plain one, fails with EPIPE (the header says so) and ending the request
 * frees it. It used to read the connection that was gone (a NULL
 * dereference: the daemon died). */
static void test_deferred_stream_after_the_client_went(void **state)
{
    (void) state;
    s_srv_t s;
    s_srv_start(&s, NULL);
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
    s_wait_pending(&s);
    s_client_reset(&c);
    assert_true(test_loop_wait(s.loop, s_until_closed, &s, 2, S_WAIT_MS));

    static const gateway_http_stream_handlers_t h = {.on_close = s_stream_close};
    gateway_http_res_t *res = gateway_http_pending_res(s_pending);
    errno = 0;
    assert_null(gateway_http_respond_stream(res, 200, "text/event-stream", &h, NULL));
    assert_int_equal(errno, EPIPE);
    errno = 0;
    assert_int_equal(gateway_http_respond(res, 200, NULL, NULL, 0), -1);
    assert_int_equal(errno, EALREADY);
    gateway_http_pending_end(&s_pending);

    s_others_served(&s);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- pipelined input, no memory */

/* Two requests in one read, the first deferred, and no memory to keep the
 * second while the first waits: the first still gets its own answer, and
 * the connection closes after it (the second was never read; RFC 9112
 * §9.3.2 has the client send it again). It used to answer "500 out of
 * memory" at once — which the client reads as the answer to the first
 * request, whose real answer was then thrown away. */
static void test_pipelined_input_without_memory_while_deferred(void **state)
{
    (void) state;
    s_srv_t s;
    s_srv_start(&s, NULL);
    s_client_t *c = s_connect(&s);
    s_fail_after_defer = true;
    s_send(c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    s_wait_pending(&s);
    /* Both requests came in one read, so the failed allocation was the
     * one that would have kept the second. */
    assert_int_equal(alloc_fail_disarm(), 1);
    s_fail_after_defer = false;

    /* Nothing is said before the answer owed. */
    for (int i = 0; i < 3; i++) {
        s_pump(c);
        assert_int_equal(c->len, 0);
        assert_false(c->eof);
        assert_true(test_loop_wait(s.loop, s_until_resp, c, 2, 20) == false);
    }
    assert_int_equal(gateway_http_respond(gateway_http_pending_res(s_pending), 200, "text/plain",
                                          "first", 5), 0);
    gateway_http_pending_end(&s_pending);

    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(r, "\r\n\r\nfirst"));
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    assert_int_equal(c->len, 0);
    s_client_close(&c);

    s_others_served(&s);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- error bodies */

/* An error body is JSON whatever its text holds: octets that are not
 * well-formed UTF-8 are sent as U+FFFD, well-formed ones as they are. They
 * used to go out raw, and a client's JSON parser refused the body (Python:
 * UnicodeDecodeError), so it never learnt why it was refused. */
static void test_error_text_not_utf8(void **state)
{
    (void) state;
    s_srv_t s;
    s_srv_start(&s, NULL);
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /cut-error HTTP/1.1\r\nHost: x\r\n\r\n");
    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 400 Bad Request\r\n"));
    const char *body = strstr(r, "\r\n\r\n") + 4;
    assert_true(proto_utf8_valid((const uint8_t *) body, strlen(body)));
    assert_string_equal(body, "{\"error\":\"unknown member \\\"caf\xc3\xa9 \xe2\x82\xac "
                              "\xf0\x9f\x98\x80 \\ufffd \\ufffd\\ufffd "
                              "\\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\\\"\","
                              "\"code\":\"invalid_body\"}");
    s_client_close(&c);
    s_srv_stop(&s);
}

/* An error text too long for an error body is cut after a whole
 * character and ends in "…": the status and code the route chose reach the
 * client, in a body within GATEWAY_HTTP_ERROR_BODY_MAX. Such an answer used
 * to be refused (EINVAL), so the client got "500 the handler did not
 * answer" and its connection closed. */
static void test_error_text_too_long_is_cut(void **state)
{
    (void) state;
    s_srv_t s;
    s_srv_start(&s, NULL);
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /long-error HTTP/1.1\r\nHost: x\r\n\r\n");
    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 502 Bad Gateway\r\n"));
    const char *body = strstr(r, "\r\n\r\n") + 4;
    size_t len = strlen(body);
    assert_true(len <= GATEWAY_HTTP_ERROR_BODY_MAX && len > GATEWAY_HTTP_ERROR_BODY_MAX - 16);
    assert_true(proto_utf8_valid((const uint8_t *) body, len));
    assert_true(!strncmp(body, "{\"error\":\"\xc3\xa9\xc3\xa9", 13));
    const char *end = "\xc3\xa9\xe2\x80\xa6\",\"code\":\"upstream_failed\"}";
    assert_string_equal(body + len - strlen(end), end);
    s_served_on(&s, c); /* the connection serves on */
    s_client_close(&c);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- 426 */

/* A 426 names what to upgrade to in Upgrade, and a sender of Upgrade lists
 * "upgrade" in Connection (RFC 9110 §7.8, §15.5.22), whatever else
 * Connection says: a WebSocket path asked without an upgrade, and an
 * upgrade of a version not served (RFC 6455 §4.4). Connection used to
 * leave it out, and the version's 426 had no Upgrade at all. */
static void test_upgrade_required_names_upgrade(void **state)
{
    (void) state;
    static const struct {
        const char *request;
        const char *connection;
        bool closes;
    } cases[] = {
        {"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "Connection: upgrade\r\n", false},
        {"GET /ws HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         "Connection: keep-alive, upgrade\r\n", false},
        {"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
         "Connection: close, upgrade\r\n", true},
        {"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
         "Connection: close, upgrade\r\n", true},
    };
    s_srv_t s;
    s_srv_start(&s, NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_client_t *c = s_connect(&s);
        s_send(c, cases[i].request);
        char r[4096];
        assert_true(s_take_resp(&s, c, r, sizeof r));
        assert_non_null(strstr(r, " 426 Upgrade Required\r\n"));
        assert_non_null(strstr(r, "\r\nUpgrade: websocket\r\n"));
        if (!strstr(r, cases[i].connection))
            fail_msg("case %zu: no \"%s\" in\n%s", i, cases[i].connection, r);
        if (cases[i].closes)
            assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
        s_client_close(&c);
    }
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- the unsent room */

static void s_expect_send_buffers_full(const char *r)
{
    s_expect_503(r, "1", "send_buffers_full");
}

/* An answer within a connection's own unsent bound, but larger than what
 * all connections together may still hold (the loop's send_total_limit,
 * limits.conn_unsent_total_max), is told 503 send_buffers_full and the
 * connection closes in order. The loop used to cut it as a slow consumer:
 * a reset, for a client that had read everything it was sent. */
static void test_answer_past_the_total_unsent_room(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.send_total_limit = 128 * 1024};
    s_srv_t s;
    s_srv_start_loop(&s, &lo, NULL);
    s_big_len = 200 * 1024;
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    s_expect_send_buffers_full(r);
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    assert_int_equal(c->len, 0);
    s_client_close(&c);

    /* What fits is served. */
    s_big_len = 1000;
    c = s_connect(&s);
    s_send(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(s_take_resp(&s, c, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    s_client_close(&c);
    s_srv_stop(&s);
}

/* Two pipelined requests read at once: the first one's answer is still
 * unsent when the second one's, which would fit the bound alone, does not
 * fit what is left of it. The first is answered, the second told 503
 * send_buffers_full, and the connection closes in order. It used to be cut
 * (a reset: the client lost even the first answer). */
static void test_pipelined_answer_past_the_unsent_room(void **state)
{
    (void) state;
    const size_t limit = 256 * 1024;
    router_loop_opts_t lo = {.send_limit = limit};
    gateway_http_opts_t o = {.send_limit = limit};
    s_srv_t s;
    s_srv_start_loop(&s, &lo, &o);
    /* Its head is about 110 octets: it fits alone, not behind /plain's
     * answer (about 110 octets too). */
    s_big_len = limit - 200;
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "\r\n\r\nplain"));
    assert_true(s_take_resp(&s, c, r, sizeof r));
    s_expect_send_buffers_full(r);
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    assert_int_equal(c->len, 0);
    s_client_close(&c);

    /* Asked alone, it is served (its head is enough to see it). */
    c = s_connect(&s);
    s_send(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(test_loop_wait(s.loop, s_until_head, c, 2, S_WAIT_MS));
    assert_non_null(strstr(c->buf, "HTTP/1.1 200 OK\r\n"));
    s_client_close(&c);
    s_srv_stop(&s);
}

/* When even the error saying so does not fit the room left (a loop whose
 * connections together may hold only a few hundred octets: the share of
 * limits.conn_unsent_total_max with many connections open), the answer is
 * not replaced again and again: the loop cuts the connection, and the
 * server serves the next client. */
static void test_no_room_even_for_the_error(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.send_total_limit = 300};
    s_srv_t s;
    s_srv_start_loop(&s, &lo, NULL);
    s_big_len = 1000;
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    assert_int_equal(c->len, 0);
    s_client_close(&c);

    s_others_served(&s);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- half-close */

/* A client that shuts down its sending side with a request cut short — a
 * head half sent, a body a third sent — is told 400 request_incomplete
 * (it still reads) and the connection closes in order; a whole request
 * before the shutdown is answered as usual. The cut-short ones used to be
 * closed without a word. */
static void test_request_cut_short_by_a_half_close(void **state)
{
    (void) state;
    static const struct {
        const char *request;
        const char *answer;
    } cases[] = {
        {"GET /plain HTTP/1.1\r\nHost: x\r\n", "HTTP/1.1 400 Bad Request\r\n"},
        {"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc",
         "HTTP/1.1 400 Bad Request\r\n"},
        {"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
         "HTTP/1.1 400 Bad Request\r\n"},
        {"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK\r\n"},
        /* A stray CRLF after a request (RFC 9112 §2.2) is no request. */
        {"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n\r\n", "HTTP/1.1 200 OK\r\n"},
    };
    s_srv_t s;
    s_srv_start(&s, NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_client_t *c = s_connect(&s);
        s_send(c, cases[i].request);
        assert_int_equal(shutdown(c->fd, SHUT_WR), 0);
        char r[4096];
        if (!s_take_resp(&s, c, r, sizeof r))
            fail_msg("case %zu: closed without an answer", i);
        assert_non_null(strstr(r, cases[i].answer));
        if (strstr(r, " 400 "))
            assert_non_null(strstr(r, "\"code\":\"request_incomplete\"}"));
        assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
        assert_int_equal(c->len, 0);
        s_client_close(&c);
    }
    assert_int_equal(s_metric(&s, "kith_http_rejected_total{reason=\"request_incomplete\"}"), 3);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- out of memory */

/* Three complete responses in, or the connection closed. */
static bool s_until_three_or_eof(void *ud)
{
    s_client_t *c = ud;
    s_pump(c);
    if (c->eof)
        return true;
    const char *at = c->buf;
    for (int i = 0; i < 3; i++) {
        const char *end = strstr(at, "HTTP/1.1 ");
        if (!end || !(end = strstr(end, "\r\n\r\n")))
            return false;
        at = end + 4;
    }
    return true;
}

static bool s_until_pending_or_done(void *ud)
{
    return s_pending != NULL || s_until_three_or_eof(ud);
}

/* A deferred request, a chunked upload and a plain request pipelined in
 * one read, with the server's 1st, 2nd, … allocation failing in turn:
 * each run answers a prefix of what was asked, in order (the deferred
 * answer first), then at most one typed error (a JSON 500 or 503) before
 * the connection closes; no answer goes to the wrong request, nothing
 * leaks (LSan), and the next client is served. */
static void test_pipelined_requests_without_memory(void **state)
{
    (void) state;
    static const char *const want[] = {"\r\n\r\nlate", "\r\n\r\nplain", "\r\n\r\nplain"};
    unsigned failed = 1;
    long skip = 0;
    for (; failed && skip < ALLOC_FAIL_RUNS_MAX; skip++) {
        s_srv_t s;
        s_srv_start(&s, NULL);
        s_client_t *c = s_connect(&s);
        s_send(c, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"); /* warm: lazily made state */
        char r[4096];
        assert_true(s_take_resp(&s, c, r, sizeof r));
        alloc_fail_arm(skip);
        s_send(c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n"
                  "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "3\r\nabc\r\n0\r\n\r\n"
                  "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_true(test_loop_wait(s.loop, s_until_pending_or_done, c, 2, S_WAIT_MS));
        if (s_pending) {
            (void) gateway_http_respond(gateway_http_pending_res(s_pending), 200, "text/plain",
                                        "late", 4);
            gateway_http_pending_end(&s_pending);
        }
        assert_true(test_loop_wait(s.loop, s_until_three_or_eof, c, 2, S_WAIT_MS));
        failed = alloc_fail_disarm();

        size_t got = 0;
        bool error = false;
        while (s_resp_len(c) > 0) {
            size_t n = s_resp_len(c);
            memcpy(r, c->buf, n);
            r[n] = '\0';
            memmove(c->buf, c->buf + n, c->len - n + 1);
            c->len -= n;
            if (error)
                fail_msg("skip %ld: an answer after the error: %s", skip, r);
            if (strstr(r, "HTTP/1.1 200 OK\r\n") && got < 3 && strstr(r, want[got])) {
                got++;
                continue;
            }
            if ((strstr(r, "HTTP/1.1 500 ") || strstr(r, "HTTP/1.1 503 ")) &&
                strstr(r, "\r\nConnection: close\r\n") && strstr(r, "\"code\":\"")) {
                error = true;
                continue;
            }
            fail_msg("skip %ld: answer %zu is not the one asked for: %s", skip, got, r);
        }
        if (!failed && got != 3)
            fail_msg("skip %ld: no failure, yet %zu answers", skip, got);
        s_client_close(&c);

        s_others_served(&s);
        s_srv_stop(&s);
    }
    assert_true(skip > 1);
    assert_int_equal(failed, 0);
}

/* ---------------------------------------------------------------- helpers */

static bool s_not_yet(void *ud)
{
    (void) ud;
    return false;
}

/* Lets the loop read what was sent so far, so the next piece comes in a
 * read of its own (a short turn: nothing depends on how long it is). */
static void s_settle(s_srv_t *s)
{
    (void) test_loop_wait(s->loop, s_not_yet, NULL, 2, 20);
}

/* Sends without failing when the server has closed already. */
static void s_send_any(s_client_t *c, const void *data, size_t n)
{
    (void) send(c->fd, data, n, MSG_NOSIGNAL);
}

/* Takes the first response out of c->buf into r[cap]; false when none is
 * whole. */
static bool s_next_resp(s_client_t *c, char *r, size_t cap)
{
    size_t n = s_resp_len(c);
    if (!n)
        return false;
    assert_true(n < cap);
    memcpy(r, c->buf, n);
    r[n] = '\0';
    memmove(c->buf, c->buf + n, c->len - n + 1);
    c->len -= n;
    return true;
}

/* A typed HTTP error: a 5xx that closes, with a JSON {"error","code"} body. */
static bool s_typed_error(const char *r)
{
    const char *body = strstr(r, "\r\n\r\n");
    return (!strncmp(r, "HTTP/1.1 500 ", 13) || !strncmp(r, "HTTP/1.1 503 ", 13)) &&
           strstr(r, "\r\nConnection: close\r\n") && strstr(r, "Content-Type: application/json") &&
           body && !strncmp(body + 4, "{\"error\":\"", 10) && strstr(body, ",\"code\":\"");
}

/* ---------------------------------------------------------------- split requests */

static bool s_until_split_done(void *ud)
{
    s_client_t *c = ud;
    s_pump(c);
    if (c->eof)
        return true;
    /* 100 Continue, then the two answers */
    const char *a = strstr(c->buf, "HTTP/1.1 100 ");
    const char *b = a ? strstr(a + 1, "HTTP/1.1 ") : NULL;
    const char *d = b ? strstr(b + 1, "HTTP/1.1 ") : NULL;
    return d && strstr(d, "\r\n\r\nplain");
}

/* A POST whose head is split across two reads and whose body waits for
 * 100 Continue and comes in two more, then a GET whose head is split, with
 * the server's 1st, 2nd, … allocation failing in turn: each run answers a
 * prefix of what was asked, in order, then at most one typed error before
 * the connection closes; the next client is served. */
static void test_split_requests_without_memory(void **state)
{
    (void) state;
    static const char *const piece[] = {
        "POST /echo-body HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Le",
        "ngth: 5\r\n\r\n", "hel", "lo", "GET /pl", "ain HTTP/1.1\r\nHost: x\r\n\r\n"};
    static const char *const want[] = {"HTTP/1.1 100 Continue\r\n\r\n", "\r\n\r\nhello",
                                       "\r\n\r\nplain"};
    unsigned failed = 1;
    long skip = 0;
    unsigned silent = 0;
    for (; failed && skip < ALLOC_FAIL_RUNS_MAX; skip++) {
        s_srv_t s;
        s_srv_start(&s, NULL);
        s_client_t *c = s_connect(&s);
        s_served_on(&s, c); /* warm: lazily made state */
        alloc_fail_arm(skip);
        for (size_t i = 0; i < sizeof piece / sizeof piece[0]; i++) {
            s_send_any(c, piece[i], strlen(piece[i]));
            s_settle(&s);
        }
        bool done = test_loop_wait(s.loop, s_until_split_done, c, 2, S_WAIT_MS);
        failed = alloc_fail_disarm();
        if (!done)
            fail_msg("skip %ld: neither the answers nor a close came: %s", skip, c->buf);

        char r[4096];
        size_t got = 0;
        bool error = false;
        while (s_next_resp(c, r, sizeof r)) {
            if (error)
                fail_msg("skip %ld: an answer after the error: %s", skip, r);
            if (got < 3 && strstr(r, want[got]) && (got == 0 || strstr(r, " 200 OK\r\n"))) {
                got++;
                continue;
            }
            if (s_typed_error(r)) {
                error = true;
                continue;
            }
            fail_msg("skip %ld: answer %zu is not the one asked for: %s", skip, got, r);
        }
        if (c->len)
            fail_msg("skip %ld: a partial answer: %s", skip, c->buf);
        if (!failed && got != 3)
            fail_msg("skip %ld: no failure, yet %zu answers", skip, got);
        if (got < 3 && !error) {
            silent++;
            print_message("skip %ld: closed after %zu answers without a word\n", skip, got);
        }
        s_client_close(&c);
        s_others_served(&s);
        s_srv_stop(&s);
    }
    print_message("%ld runs, %u closed without a word\n", skip, silent);
    assert_true(skip > 3);
    assert_int_equal(failed, 0);
}

/* ---------------------------------------------------------------- WebSocket */

/* A masked client frame (payload under 126 octets) into out; its length. */
static size_t s_ws_frame(uint8_t *out, uint8_t b0, const char *payload)
{
    static const uint8_t key[4] = {0x11, 0x22, 0x33, 0x44};
    size_t n = strlen(payload);
    assert_true(n < 126);
    out[0] = b0;
    out[1] = (uint8_t) (0x80 | n);
    memcpy(out + 2, key, 4);
    for (size_t i = 0; i < n; i++)
        out[6 + i] = (uint8_t) payload[i] ^ key[i % 4];
    return 6 + n;
}

/* What the server sent after its 101: the echo, a Close (with its code),
 * or neither yet. */
typedef struct {
    bool echo;     /* a text frame "hello" */
    int close;     /* the code of a Close frame, 0 for none */
    bool other;    /* a frame that is neither */
} s_ws_seen_t;

static s_ws_seen_t s_ws_frames(const uint8_t *p, size_t len)
{
    s_ws_seen_t seen = {0};
    while (len >= 2) {
        size_t n = p[1] & 0x7f;
        assert_true(n < 126); /* nothing here is longer */
        if (len < 2 + n)
            break;
        uint8_t op = p[0] & 0x0f;
        if (op == PROTO_WS_OP_TEXT && n == 5 && !memcmp(p + 2, "hello", 5))
            seen.echo = true;
        else if (op == PROTO_WS_OP_CLOSE && n >= 2)
            seen.close = p[2] << 8 | p[3];
        else if (op != PROTO_WS_OP_PONG)
            seen.other = true;
        p += 2 + n;
        len -= 2 + n;
    }
    return seen;
}

static bool s_until_ws_done(void *ud)
{
    s_client_t *c = ud;
    s_pump(c);
    if (c->eof)
        return true;
    const char *end = strstr(c->buf, "\r\n\r\n");
    if (!end)
        return false;
    if (strncmp(c->buf, "HTTP/1.1 101 ", 13))
        return s_resp_len(c) > 0;
    s_ws_seen_t seen = s_ws_frames((const uint8_t *) end + 4, c->len - (size_t) (end + 4 - c->buf));
    return seen.echo || seen.close;
}

/* An upgrade whose head is split across reads, then a text message in two
 * fragments each in a read of its own and a ping between them, with the
 * server's allocations failing one at a time: each run ends with the echo,
 * or a typed refusal (a JSON 5xx instead of the 101, or Close 1011 after
 * it), or a cut; never a hang or a leak; the next client is served. */
static void test_ws_message_in_pieces_without_memory(void **state)
{
    (void) state;
    static const char *const head[] = {
        "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"};
    uint8_t f1[64], f2[64], f3[64];
    size_t n1 = s_ws_frame(f1, PROTO_WS_OP_TEXT, "hel");           /* not FIN */
    size_t n2 = s_ws_frame(f2, 0x80 | PROTO_WS_OP_PING, "p");
    size_t n3 = s_ws_frame(f3, 0x80 | PROTO_WS_OP_CONTINUATION, "lo");
    unsigned failed = 1;
    long skip = 0;
    unsigned silent = 0;
    for (; failed && skip < ALLOC_FAIL_RUNS_MAX; skip++) {
        s_srv_t s;
        s_srv_start(&s, NULL);
        s_ws_open = 0;
        s_client_t *c = s_connect(&s);
        s_served_on(&s, c);
        alloc_fail_arm(skip);
        s_send_any(c, head[0], strlen(head[0]));
        s_settle(&s);
        s_send_any(c, head[1], strlen(head[1]));
        s_settle(&s);
        s_send_any(c, f1, n1);
        s_settle(&s);
        s_send_any(c, f2, n2);
        s_settle(&s);
        s_send_any(c, f3, n3);
        bool done = test_loop_wait(s.loop, s_until_ws_done, c, 2, S_WAIT_MS);
        failed = alloc_fail_disarm();
        if (!done)
            fail_msg("skip %ld: neither the echo nor a close came: %s", skip, c->buf);
        const char *end = strstr(c->buf, "\r\n\r\n");
        if (end && !strncmp(c->buf, "HTTP/1.1 101 ", 13)) {
            s_ws_seen_t seen =
                s_ws_frames((const uint8_t *) end + 4, c->len - (size_t) (end + 4 - c->buf));
            if (seen.other || (seen.close && seen.close != 1011 && seen.close != 1008))
                fail_msg("skip %ld: unexpected frames (close %d)", skip, seen.close);
            if (!seen.echo && !seen.close) {
                silent++;
                print_message("skip %ld: socket cut without a Close\n", skip);
            }
            if (!failed && !seen.echo)
                fail_msg("skip %ld: no failure, yet no echo", skip);
        } else if (end) {
            char r[4096];
            assert_true(s_next_resp(c, r, sizeof r));
            if (!s_typed_error(r))
                fail_msg("skip %ld: the upgrade was answered: %s", skip, r);
        } else {
            silent++;
            print_message("skip %ld: closed before any answer\n", skip);
            if (!failed)
                fail_msg("skip %ld: no failure, yet closed", skip);
        }
        s_client_close(&c);
        s_others_served(&s);
        s_srv_stop(&s);
        assert_int_equal(s_ws_open, 0);
    }
    print_message("%ld runs, %u closed without a word\n", skip, silent);
    assert_true(skip > 3);
    assert_int_equal(failed, 0);
}

/* An upgrade whose head was still arriving when a drain began, completed
 * before the drain's last call: answered 503 shutting_down with
 * Retry-After and the connection closed in order, and the drain ends with
 * it, long before its deadline. It used to be accepted (101) after every
 * socket had been sent its 1001, so it stayed open until the drain's
 * deadline reset it without a Close, holding the drain for all of it. */
static void test_upgrade_completed_during_a_drain(void **state)
{
    (void) state;
    s_srv_t s;
    s_srv_start(&s, NULL);
    s_ws_open = 0;
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n");
    s_settle(&s);
    bool drained = false;
    gateway_http_drain(s.gw, s_drained, &drained, 600000);
    s_send(c, "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n");
    char r[4096];
    assert_true(s_take_resp(&s, c, r, sizeof r));
    if (strncmp(r, "HTTP/1.1 503 ", 13) != 0)
        fail_msg("the upgrade during a drain was answered: %s", r);
    assert_non_null(strstr(r, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(r, "\r\nRetry-After: 5\r\n"));
    assert_non_null(strstr(r, "\"code\":\"shutting_down\""));
    assert_true(test_loop_wait(s.loop, s_until_eof, c, 2, S_WAIT_MS));
    s_client_close(&c);
    assert_true(test_loop_wait(s.loop, s_until_drained, &drained, 2, S_WAIT_MS));
    assert_int_equal(s_ws_open, 0);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- no timer */

/* A deferred answer given when the loop has no timer left for the idle
 * deadline that follows it (the deferral had let the request's timer
 * go): the answer reaches the client whole and the connection serves
 * on. It used to be reset as the answer was queued, so a client whose
 * webhook was stored (a 202) read a reset instead and could only send it
 * again. */
static void test_deferred_answer_without_a_timer(void **state)
{
    (void) state;
    static uint64_t fill[64];
    router_loop_opts_t lo = {.max_timers = 64};
    s_srv_t s;
    s_srv_start_loop(&s, &lo, NULL);
    s_client_t *c = s_connect(&s);
    s_send(c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
    s_wait_pending(&s);
    size_t n = 0;
    while (n < 64 && (fill[n] = router_loop_timer_add(s.loop, 600000, s_never, NULL)))
        n++;
    assert_true(n > 1);
    assert_int_equal(gateway_http_respond(gateway_http_pending_res(s_pending), 202,
                                          "application/json", "{\"queued\":true}", 15), 0);
    gateway_http_pending_end(&s_pending);
    assert_int_equal(router_loop_timer_cancel(s.loop, fill[--n]), 0); /* the test's wait */
    char r[4096];
    if (!s_take_resp(&s, c, r, sizeof r))
        fail_msg("the answer was lost: the connection ended first");
    assert_non_null(strstr(r, "HTTP/1.1 202 Accepted\r\n"));
    assert_non_null(strstr(r, "\r\n\r\n{\"queued\":true}"));
    while (n)
        assert_int_equal(router_loop_timer_cancel(s.loop, fill[--n]), 0);
    s_served_on(&s, c);
    s_client_close(&c);
    s_others_served(&s);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- the unauthenticated budget */

/* A request without a credential whose answer is deferred (an external
 * event waiting for durability, say): its body, which the route has
 * taken, no longer counts in the unauthenticated budget
 * (limits.partial_frame_bytes_max), so another client without a
 * credential can send a body meanwhile. It used to count until the
 * answer, where nothing could cut it (only bodies still arriving are
 * cut), so a few requests slow to answer locked every other client
 * without a credential out (503 unauth_bodies_full). */
static void test_deferred_body_leaves_the_budget(void **state)
{
    (void) state;
    gateway_http_opts_t o = {.unauth_body_max = 16384};
    s_srv_t s;
    s_srv_start(&s, &o);
    static char req[16384];
    char body[10001];
    memset(body, 'a', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    s_client_t *a = s_connect(&s);
    snprintf(req, sizeof req, "POST /defer HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    s_send(a, req);
    s_wait_pending(&s);
    s_client_t *b = s_connect(&s);
    snprintf(req, sizeof req,
             "POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    s_send(b, req);
    static char r[16384];
    assert_true(s_take_resp(&s, b, r, sizeof r));
    if (strncmp(r, "HTTP/1.1 200 ", 13) != 0)
        fail_msg("a body beside a deferred one was refused: %.200s", r);
    assert_non_null(strstr(r, "\r\n\r\naaaa"));
    s_client_close(&b);
    assert_int_equal(gateway_http_respond(gateway_http_pending_res(s_pending), 200, "text/plain",
                                          "late", 4), 0);
    gateway_http_pending_end(&s_pending);
    assert_true(s_take_resp(&s, a, r, sizeof r));
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    s_client_close(&a);
    s_others_served(&s);
    s_srv_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deferred_answer_in_a_drain_closes),
        cmocka_unit_test(test_drain_tells_requests_still_arriving),
        cmocka_unit_test(test_drain_deadline_cuts_those_closing),
        cmocka_unit_test(test_stream_begun_in_a_drain_closes),
        cmocka_unit_test(test_drain_without_a_timer),
        cmocka_unit_test(test_deferred_stream_after_the_client_went),
        cmocka_unit_test(test_pipelined_input_without_memory_while_deferred),
        cmocka_unit_test(test_error_text_not_utf8),
        cmocka_unit_test(test_error_text_too_long_is_cut),
        cmocka_unit_test(test_upgrade_required_names_upgrade),
        cmocka_unit_test(test_answer_past_the_total_unsent_room),
        cmocka_unit_test(test_pipelined_answer_past_the_unsent_room),
        cmocka_unit_test(test_no_room_even_for_the_error),
        cmocka_unit_test(test_request_cut_short_by_a_half_close),
        cmocka_unit_test(test_pipelined_requests_without_memory),
        cmocka_unit_test(test_split_requests_without_memory),
        cmocka_unit_test(test_ws_message_in_pieces_without_memory),
        cmocka_unit_test(test_upgrade_completed_during_a_drain),
        cmocka_unit_test(test_deferred_answer_without_a_timer),
        cmocka_unit_test(test_deferred_body_leaves_the_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
