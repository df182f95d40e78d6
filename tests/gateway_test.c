/* tests/gateway_test.c — the gateway's HTTP/1.1 server over real sockets:
 * a router loop on its own thread, a blocking socket client written here
 * (it shares no code with the server). Routes, keep-alive, pipelining,
 * request smuggling shapes, every limit, slow clients, timeouts and
 * backpressure; /health and /metrics; the loop thread out of memory at
 * each allocation of a request in turn.
 *
 * Every test runs on both loop backends (names end in @uring / @epoll).
 * No test depends on timing: the short timeouts some servers are given
 * only make a timeout happen soon; a client read that waits longer than
 * the hang guard fails the test instead of hanging it. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <poll.h>
#include <net/if.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "alloc_fail_loop.h"
#include "gateway/http_server.h"
#include "gateway/routes.h"
#include "gateway/routes_auth.h"
#include "gateway/routes_canvas.h"
#include "router/log.h"
#include "router/metrics.h"
#include "router/net/listen.h"
#include "router/net/loop.h"

/* A client read that waits this long has hung: fail instead. */
#define HANG_GUARD_S 30
/* Room for everything a client reads and has not consumed yet. */
#define CLIENT_BUF (2u * 1024 * 1024)

static router_loop_backend_t s_uring = ROUTER_LOOP_URING;
static router_loop_backend_t s_epoll = ROUTER_LOOP_EPOLL;

/* ---------------------------------------------------------------- test routes */

static void s_echo(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) ud;
    char n[32];
    snprintf(n, sizeof n, "%zu", req->body_len);
    /* The body is NUL-terminated for parsers that want it. */
    if (req->body[req->body_len] != '\0' || gateway_http_res_header(res, "X-Body-Length", n) != 0)
        return; /* → 500 */
    (void) gateway_http_respond(res, 200, "application/octet-stream", req->body, req->body_len);
}

/* Answers with the route's name, the path and the query it saw. */
static void s_named(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    char body[512];
    int n = snprintf(body, sizeof body, "%s %.*s %.*s %.*s", (const char *) ud,
                     (int) req->method.len, req->method.ptr, (int) req->path.len, req->path.ptr,
                     req->query.ptr ? (int) req->query.len : 1, req->query.ptr ? req->query.ptr : "-");
    (void) gateway_http_respond(res, 200, "text/plain", body, (size_t) n);
}

static void s_silent(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) res;
    (void) ud;
}

/* Misuses the response API; answers "ok" when every misuse was refused. */
/* Misuse after a response that the API let through (s_checks). */
static atomic_int s_late_misuse;

static void s_no_stream_close(router_conn_t *conn, void *ud)
{
    (void) conn;
    (void) ud;
}

static const gateway_http_stream_handlers_t s_no_stream = {.on_close = s_no_stream_close};

/* Whether a header line longer than the handler's header room is refused
 * (ENOSPC) and leaves what was added before it alone. */
static bool s_header_overflows(gateway_http_res_t *res)
{
    static char big[GATEWAY_HTTP_RES_HEADERS_MAX - 2];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    return gateway_http_res_header(res, "X-Big", big) != -1 || errno != ENOSPC;
}

static void s_checks(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) ud;
    const char *bad = NULL;
    proto_http_slice_t v;
    if (gateway_http_res_header(res, "X-Evil", "a\r\nSet-Cookie: x=1") != -1 || errno != EINVAL)
        bad = "CRLF in a value";
    else if (gateway_http_res_header(res, "Bad Name", "x") != -1)
        bad = "space in a name";
    else if (gateway_http_res_header(res, "content-length", "0") != -1)
        bad = "Content-Length added";
    else if (gateway_http_res_header(res, "Connection", "close") != -1)
        bad = "Connection added";
    else if (gateway_http_respond(res, 99, NULL, NULL, 0) != -1 || errno != EINVAL)
        bad = "status 99";
    else if (gateway_http_respond(res, 204, NULL, "x", 1) != -1)
        bad = "a body on 204";
    else if (gateway_http_respond(res, 200, "text/plain\r\nX: y", "x", 1) != -1)
        bad = "CRLF in the content type";
    else if (!gateway_http_req_header(req, "x-test", &v) || v.len != 3 || memcmp(v.ptr, "yes", 3))
        bad = "header lookup";
    else if (!gateway_http_req_method_is(req, "GET") || gateway_http_req_method_is(req, "get"))
        bad = "method compare";
    else if (gateway_http_res_header(res, "X-Ok", "1") != 0)
        bad = "a good header refused";
    else if (gateway_http_respond_stream(res, 204, NULL, &s_no_stream, NULL) != NULL ||
             errno != EINVAL)
        bad = "a stream of 204";
    else if (gateway_http_respond_stream(res, 200, NULL, NULL, NULL) != NULL || errno != EINVAL)
        bad = "a stream without handlers";
    else if (gateway_http_respond_stream(res, 200, "a\nb", &s_no_stream, NULL) != NULL ||
             errno != EINVAL)
        bad = "a stream with LF in its content type";
    else if (gateway_http_respond_error(res, 400, NULL, "x") != -1 || errno != EINVAL)
        bad = "an error without a code";
    else if (gateway_http_respond(res, 200, NULL, NULL, 5) != -1 || errno != EINVAL)
        bad = "a length without a body";
    else if (s_header_overflows(res))
        bad = "the handler's header room";
    if (gateway_http_respond(res, 200, "text/plain", bad ? bad : "ok", strlen(bad ? bad : "ok")))
        return;
    /* After the response: counted, for test_routes to check. */
    if (gateway_http_respond(res, 200, NULL, NULL, 0) != -1 || errno != EALREADY)
        atomic_fetch_add(&s_late_misuse, 1);
    if (gateway_http_res_header(res, "X-Late", "1") != -1 || errno != EALREADY)
        atomic_fetch_add(&s_late_misuse, 1);
    if (gateway_http_respond_stream(res, 200, NULL, &s_no_stream, NULL) != NULL || errno != EALREADY)
        atomic_fetch_add(&s_late_misuse, 1);
}

/* An error whose text and code need JSON escapes (quotes, a backslash, a
 * control character) still answers a well-formed body. */
static void s_escaped_error(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    (void) gateway_http_respond_error(res, 422, "odd\"code", "a \"quoted\\ line\nbreak\x01");
}

/* Defers, then answers at once through the handle and ends it, inside the
 * handler (as a route does when the work it would wait for is refused). */
static void s_defer_answered(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    gateway_http_pending_t *p = gateway_http_res_defer(res);
    assert_non_null(p);
    (void) gateway_http_respond_json(gateway_http_pending_res(p), 409, "{\"at\":\"once\"}");
    gateway_http_pending_end(&p);
    assert_null(p);
}

/* Defers, then ends the handle unanswered inside the handler: a 500. */
static void s_defer_dropped(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    gateway_http_pending_t *p = gateway_http_res_defer(res);
    assert_non_null(p);
    gateway_http_pending_end(&p);
}

/* ---------------------------------------------------------------- the server */

/* The loop's close timeout and per-connection unsent bound for the next
 * server started (0: the loop's defaults), for a test that must see a
 * close time out soon with more unsent than the kernel's buffers hold. */
static unsigned s_next_close_timeout_ms;
static size_t s_next_send_limit;

typedef struct {
    router_loop_t *loop;
    router_metrics_t *metrics;
    gateway_http_t *gw;
    gateway_auth_t *auth;       /* pairing off: every request passes */
    gateway_canvas_t *canvas;   /* /api/canvas…, for the out-of-memory sweep */
    router_tokens_t *tokens;    /* in memory: what /admin/tokens manages */
    gateway_route_tokens_t token_routes; /* /api/tokens, /admin/tokens */
    pthread_t thread;
    int rc;         /* router_loop_run's result */
    uint16_t port;  /* where it listens */
} s_srv_t;

/* Runs the loop, then tears the server and its loop down on this same
 * thread: an io_uring loop may only be destroyed by the thread that ran it
 * (router/net/loop.h). */
static void *s_loop_main(void *arg)
{
    s_srv_t *s = arg;
    s->rc = router_loop_run(s->loop);
    gateway_http_destroy(&s->gw);
    gateway_http_destroy(&s->gw); /* idempotent */
    gateway_canvas_destroy(&s->canvas);
    router_tokens_stop(s->tokens); /* its callbacks are posts to this loop */
    router_loop_destroy(&s->loop);
    return NULL;
}

/* A server on the backend of the test's state, with `o` (NULL: defaults),
 * the core routes and the test routes, listening on 127.0.0.1:0 and, when
 * `uds` is set, on that Unix socket too. */
static s_srv_t *s_srv_start_at2(void **state, const gateway_http_opts_t *o, const char *uds,
                                uint16_t *uds_port);

static s_srv_t *s_srv_start_at(void **state, const gateway_http_opts_t *o, const char *uds)
{
    return s_srv_start_at2(state, o, uds, NULL);
}

/* s_srv_start_at, the extra listener any address (its port in *extra_port). */
static s_srv_t *s_srv_start_tcp2(void **state, const gateway_http_opts_t *o, const char *at,
                                 uint16_t *extra_port)
{
    return s_srv_start_at2(state, o, at, extra_port);
}

static s_srv_t *s_srv_start_at2(void **state, const gateway_http_opts_t *o, const char *uds,
                                uint16_t *uds_port)
{
    s_srv_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    router_loop_opts_t lo = {.backend = *(router_loop_backend_t *) *state,
                             .close_timeout_ms = s_next_close_timeout_ms,
                             .send_limit = s_next_send_limit};
    s_next_close_timeout_ms = 0;
    s_next_send_limit = 0;
    s->loop = router_loop_new(&lo);
    if (!s->loop && lo.backend == ROUTER_LOOP_URING && (errno == ENOSYS || errno == EPERM)) {
        int e = errno;
        free(s);
        print_message("io_uring refused here (%s): skipping\n", strerror(e));
        skip();
        return NULL; /* skip() longjmps, but is not declared noreturn */
    }
    assert_non_null(s->loop);
    s->metrics = router_metrics_new();
    assert_non_null(s->metrics);
    gateway_http_opts_t opts = o ? *o : (gateway_http_opts_t){0};
    opts.metrics = s->metrics;
    s->gw = gateway_http_new(s->loop, &opts);
    assert_non_null(s->gw);
    assert_int_equal(gateway_route_health(s->gw), 0);
    assert_int_equal(gateway_route_metrics(s->gw, s->metrics), 0);
    assert_int_equal(gateway_http_route(s->gw, "POST", "/echo", s_echo, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/api/*", s_named, "prefix"), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/api/sp*", s_named, "longer"), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/api/special", s_named, "exact"), 0);
    assert_int_equal(gateway_http_route(s->gw, NULL, "/any", s_named, "any"), 0);
    assert_int_equal(gateway_http_route(s->gw, "DELETE", "/any", s_named, "delete"), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/silent", s_silent, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/checks", s_checks, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/escaped", s_escaped_error, NULL), 0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/defer-answered", s_defer_answered, NULL),
                     0);
    assert_int_equal(gateway_http_route(s->gw, "GET", "/defer-dropped", s_defer_dropped, NULL), 0);
    gateway_auth_opts_t ao = {.require_pairing = false};
    char err[128];
    s->tokens = router_tokens_new(NULL, s->loop, err, sizeof err);
    assert_non_null(s->tokens);
    s->auth = gateway_auth_new(s->tokens, &ao);
    assert_non_null(s->auth);
    s->token_routes.auth = s->auth;
    assert_int_equal(gateway_route_tokens(s->gw, &s->token_routes), 0);
    s->canvas = gateway_canvas_new(s->gw, s->auth, NULL);
    assert_non_null(s->canvas);
    router_addr_t addr, bound;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    assert_int_equal(gateway_http_listen(s->gw, &addr, &bound), 0);
    s->port = router_addr_port(&bound);
    assert_true(s->port != 0);
    if (uds) {
        assert_int_equal(router_addr_parse(uds, &addr, NULL), 0);
        assert_int_equal(gateway_http_listen(s->gw, &addr, &bound), 0);
        if (uds_port)
            *uds_port = router_addr_port(&bound);
    }
    assert_int_equal(pthread_create(&s->thread, NULL, s_loop_main, s), 0);
    return s;
}

static s_srv_t *s_srv_start(void **state, const gateway_http_opts_t *o)
{
    return s_srv_start_at(state, o, NULL);
}

static void s_srv_stop(s_srv_t **sp)
{
    s_srv_t *s = *sp;
    router_loop_stop(s->loop);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(s->rc, 0);
    assert_null(s->gw);
    assert_null(s->loop);
    gateway_auth_destroy(&s->auth);
    router_tokens_destroy(&s->tokens);
    router_metrics_destroy(&s->metrics);
    free(s);
    *sp = NULL;
}

/* ---------------------------------------------------------------- the client */

typedef struct {
    int fd;
    bool cut;            /* reset before connect() returned: reads see the end at once */
    size_t len;          /* octets in buf not consumed yet */
    char buf[CLIENT_BUF];
} s_client_t;

typedef struct {
    int status;
    char head[16384];    /* the response head, NUL-terminated */
    char *body;          /* its body, NUL-terminated (caller frees) */
    size_t body_len;
} s_resp_t;

/* A stream socket of `family` whose reads and writes give up after the
 * hang guard, so a server that never answers fails the test, not hangs it. */
static int s_client_socket(int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = HANG_GUARD_S};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    return fd;
}

/* Connects c->fd to sin. On loopback a server's reset right after
 * accepting (a refusal, or an allocation the sweeps make fail) can come
 * before connect() returns: the connection was made and cut, as a read
 * would have shown (c->cut). A connect a signal interrupted goes on by
 * itself: its outcome is waited for. The machine's own shortages (a busy
 * ephemeral port range under a parallel test run) are not the server's
 * fault: those are tried again. */
static void s_connect_fd(s_client_t *c, const struct sockaddr_in *sin)
{
    int rc, tries = 0;
    while ((rc = connect(c->fd, (const struct sockaddr *) sin, sizeof *sin)) != 0 &&
           (errno == EAGAIN || errno == EADDRNOTAVAIL) && ++tries < 50)
        usleep(20 * 1000);
    if (rc != 0 && errno == EINTR) {
        struct pollfd p = {.fd = c->fd, .events = POLLOUT};
        int err = 0;
        socklen_t len = sizeof err;
        while ((rc = poll(&p, 1, HANG_GUARD_S * 1000)) < 0 && errno == EINTR) {
        }
        assert_int_equal(rc, 1);
        assert_int_equal(getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
        rc = err ? -1 : 0;
        errno = err;
    }
    if (rc != 0 && errno == ECONNRESET)
        c->cut = true;
    else if (rc != 0) {
        char host[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        fail_msg("connect to %s:%u: %s", host, ntohs(sin->sin_port), strerror(errno));
    }
}

/* A client of `host`:`port` (an IPv4 address): its source is that address. */
static s_client_t *s_connect_to(const char *host, uint16_t port)
{
    s_client_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = s_client_socket(AF_INET);
    int one = 1;
    assert_int_equal(setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    assert_int_equal(inet_pton(AF_INET, host, &sin.sin_addr), 1);
    s_connect_fd(c, &sin);
    return c;
}

/* A client of the server's loopback listener. */
static s_client_t *s_connect(const s_srv_t *s)
{
    return s_connect_to("127.0.0.1", s->port);
}

/* A client on the server's Unix socket. */
static s_client_t *s_connect_uds(const char *path)
{
    s_client_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = s_client_socket(AF_UNIX);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    assert_true(strlen(path) < sizeof sun.sun_path);
    memcpy(sun.sun_path, path, strlen(path) + 1);
    assert_int_equal(connect(c->fd, (struct sockaddr *) &sun, sizeof sun), 0);
    return c;
}

static void s_client_close(s_client_t **cp)
{
    if (*cp) {
        close((*cp)->fd);
        free(*cp);
        *cp = NULL;
    }
}

static void s_send(s_client_t *c, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        p += n;
        len -= (size_t) n;
    }
}

static void s_sends(s_client_t *c, const char *text)
{
    s_send(c, text, strlen(text));
}

/* One byte per send, with a pause between so they arrive apart. */
static void s_send_slowly(s_client_t *c, const char *text)
{
    for (; *text; text++) {
        s_send(c, text, 1);
        usleep(1000);
    }
}

/* Sends as much as the peer takes, ignoring a peer that stopped reading. */
static void s_send_best_effort(s_client_t *c, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        p += n;
        len -= (size_t) n;
    }
}

/* Reads more into the buffer; returns the octets read, 0 at EOF (or reset). */
static size_t s_recv_more(s_client_t *c)
{
    assert_true(c->len < sizeof c->buf);
    if (c->cut)
        return 0;
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            fail_msg("no answer within %d s", HANG_GUARD_S);
        if (n < 0 && errno == ECONNRESET)
            return 0;
        assert_true(n >= 0);
        c->len += (size_t) n;
        return (size_t) n;
    }
}

/* The value of header `name` in a response head, or NULL. */
static const char *s_hdr(const s_resp_t *r, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    for (const char *line = strstr(r->head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2;
        if (!strncasecmp(l, name, n) && l[n] == ':') {
            const char *v = l + n + 1;
            while (*v == ' ')
                v++;
            const char *end = strstr(v, "\r\n");
            size_t k = end ? (size_t) (end - v) : strlen(v);
            if (k >= cap)
                k = cap - 1;
            memcpy(out, v, k);
            out[k] = '\0';
            return out;
        }
    }
    return NULL;
}

/* Reads one response (interim ones too); `head_request` for a HEAD. */
static void s_read_resp(s_client_t *c, s_resp_t *r, bool head_request)
{
    memset(r, 0, sizeof *r);
    char *end;
    while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        assert_true(s_recv_more(c) > 0);
    size_t hlen = (size_t) (end - c->buf) + 4;
    assert_true(hlen < sizeof r->head);
    memcpy(r->head, c->buf, hlen);
    r->head[hlen] = '\0';
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
    char v[64];
    size_t cl = 0;
    bool bodiless = head_request || r->status < 200 || r->status == 204 || r->status == 304;
    if (!bodiless) {
        assert_non_null(s_hdr(r, "Content-Length", v, sizeof v)); /* always sent */
        cl = strtoul(v, NULL, 10);
    }
    assert_non_null(r->status < 200 || s_hdr(r, "Date", v, sizeof v));
    while (c->len < hlen + cl)
        assert_true(s_recv_more(c) > 0);
    r->body = malloc(cl + 1);
    assert_non_null(r->body);
    memcpy(r->body, c->buf + hlen, cl);
    r->body[cl] = '\0';
    r->body_len = cl;
    memmove(c->buf, c->buf + hlen + cl, c->len - hlen - cl);
    c->len -= hlen + cl;
}

static bool s_closes(const s_resp_t *r)
{
    char v[64];
    return s_hdr(r, "Connection", v, sizeof v) && !strcasecmp(v, "close");
}

/* The server closed: nothing more arrives. */
static void s_expect_eof(s_client_t *c)
{
    assert_int_equal(c->len, 0);
    assert_int_equal(s_recv_more(c), 0);
}

/* A new connection to host:port (an IPv4 address) is refused at once:
 * reset (on a local path the reset can come before connect returns) or
 * closed with no answer to a request. */
static void s_expect_refused_at(const char *host, uint16_t port)
{
    s_client_t *c = s_connect_to(host, port);
    s_send_best_effort(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 33);
    s_expect_eof(c);
    s_client_close(&c);
}

static void s_expect_refused(const s_srv_t *s)
{
    s_expect_refused_at("127.0.0.1", s->port);
}

/* Sends `request`, reads its answer and checks the status. */
static void s_exchange(s_client_t *c, const char *request, int status, s_resp_t *r)
{
    s_sends(c, request);
    s_read_resp(c, r, !strncmp(request, "HEAD ", 5));
    if (r->status != status)
        print_message("got:\n%s%s\n", r->head, r->body);
    assert_int_equal(r->status, status);
}

/* Checks a JSON error body: {"error":"…","code":"<code>"}. */
static void s_expect_error(const s_resp_t *r, int status, const char *code)
{
    char v[128], want[128];
    assert_int_equal(r->status, status);
    assert_non_null(s_hdr(r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/json");
    assert_true(!strncmp(r->body, "{\"error\":\"", 10));
    snprintf(want, sizeof want, "\",\"code\":\"%s\"}", code);
    size_t n = strlen(want);
    if (r->body_len < n || strcmp(r->body + r->body_len - n, want))
        print_message("body: %s\n", r->body);
    assert_true(r->body_len >= n && !strcmp(r->body + r->body_len - n, want));
}

static void s_resp_free(s_resp_t *r)
{
    free(r->body);
    r->body = NULL;
}

/* The value of one series in the /metrics text, or -1 when absent. */
static long long s_metric(s_client_t *c, const char *series)
{
    s_resp_t r;
    s_exchange(c, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    long long v = -1;
    size_t n = strlen(series);
    for (const char *l = r.body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, series, n) && l[n] == ' ')
            v = strtoll(l + n + 1, NULL, 10);
    s_resp_free(&r);
    return v;
}

/* ---------------------------------------------------------------- core routes */

static void test_health(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_client_t *c = s_connect(s);
    s_resp_t r;
    char v[128];
    s_exchange(c, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "{\"status\":\"ok\",\"version\":\"" GATEWAY_KITH_VERSION "\"}");
    assert_string_equal(s_hdr(&r, "Content-Type", v, sizeof v), "application/json");
    assert_false(s_closes(&r));
    size_t len = r.body_len;
    s_resp_free(&r);

    /* HEAD: the same head, no body; the connection goes on. */
    s_exchange(c, "HEAD /health HTTP/1.1\r\nHost: localhost\r\n\r\n", 200, &r);
    assert_int_equal(strtoul(s_hdr(&r, "Content-Length", v, sizeof v), NULL, 10), len);
    s_resp_free(&r);
    s_exchange(c, "GET /health?verbose=1 HTTP/1.1\r\nHost: localhost\r\n\r\n", 200, &r);
    s_resp_free(&r);

    /* An absolute-form target is routed by its path. */
    s_exchange(c, "GET http://localhost/health HTTP/1.1\r\nHost: localhost\r\n\r\n", 200, &r);
    s_resp_free(&r);

    /* HTTP/1.0: closes unless asked to keep alive. */
    s_exchange(c, "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, &r);
    assert_string_equal(s_hdr(&r, "Connection", v, sizeof v), "keep-alive");
    s_resp_free(&r);
    s_exchange(c, "GET /health HTTP/1.0\r\n\r\n", 200, &r);
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    s_srv_stop(&s);
}

static void test_metrics(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_client_t *c = s_connect(s);
    s_resp_t r;
    char v[128];
    s_exchange(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);

    /* A refused request on another connection is counted by its reason. */
    s_client_t *bad = s_connect(s);
    s_exchange(bad, "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, &r);
    s_expect_error(&r, 400, "host_duplicate");
    s_resp_free(&r);
    s_expect_eof(bad);
    s_client_close(&bad);

    s_exchange(c, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    assert_string_equal(s_hdr(&r, "Content-Type", v, sizeof v),
                        "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(strstr(r.body, "# TYPE kith_http_requests_total counter\n"));
    assert_non_null(strstr(r.body, "# TYPE kith_http_connections_open gauge\n"));
    assert_non_null(strstr(r.body, "kith_http_requests_total{code=\"200\"} 1\n"));
    assert_non_null(strstr(r.body, "kith_http_requests_total{code=\"400\"} 1\n"));
    assert_non_null(strstr(r.body, "kith_http_rejected_total{reason=\"host_duplicate\"} 1\n"));
    assert_non_null(strstr(r.body, "kith_http_rejected_total{reason=\"head_too_large\"} 0\n"));
    assert_non_null(strstr(r.body, "kith_http_rejected_total{reason=\"request_timeout\"} 0\n"));
    s_resp_free(&r);
    /* The bad connection may still be closing: only this one is sure. */
    assert_true(s_metric(c, "kith_http_connections_open") >= 1);
    assert_int_equal(s_metric(c, "kith_http_requests_total{code=\"200\"}"), 3);
    s_client_close(&c);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- routing */

static void test_routes(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_client_t *c = s_connect(s);
    s_resp_t r;
    char v[128];

    s_exchange(c, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404, &r);
    s_expect_error(&r, 404, "not_found");
    assert_false(s_closes(&r)); /* nothing unread: the connection goes on */
    s_resp_free(&r);

    s_exchange(c, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 405, &r);
    s_expect_error(&r, 405, "method_not_allowed");
    assert_string_equal(s_hdr(&r, "Allow", v, sizeof v), "GET, HEAD");
    assert_false(s_closes(&r));
    s_resp_free(&r);

    /* The most specific route wins; the query is handed over raw. */
    s_exchange(c, "GET /api/special HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "exact GET /api/special -");
    s_resp_free(&r);
    s_exchange(c, "GET /api/special/x HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "longer GET /api/special/x -");
    s_resp_free(&r);
    s_exchange(c, "GET /api/other?a=b&c=%20 HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "prefix GET /api/other a=b&c=%20");
    s_resp_free(&r);
    s_exchange(c, "GET /api/ HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "prefix GET /api/ -");
    s_resp_free(&r);
    s_exchange(c, "GET /api HTTP/1.1\r\nHost: t\r\n\r\n", 404, &r);
    s_resp_free(&r);
    /* A route for any method, and one for a named method on the same path. */
    s_exchange(c, "PATCH /any HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "any PATCH /any -");
    s_resp_free(&r);
    s_exchange(c, "DELETE /any HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "delete DELETE /any -");
    s_resp_free(&r);
    /* Methods are case-sensitive: `get` is no method kith knows, so 501
     * (RFC 9110 §15.6.2), where PUT on a path that does not take it is 405. */
    s_exchange(c, "get /health HTTP/1.1\r\nHost: t\r\n\r\n", 501, &r);
    s_expect_error(&r, 501, "method_not_implemented");
    s_resp_free(&r);
    s_exchange(c, "PUT /health HTTP/1.1\r\nHost: t\r\n\r\n", 405, &r);
    s_expect_error(&r, 405, "method_not_allowed");
    s_resp_free(&r);
    s_exchange(c, "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 404, &r);
    s_resp_free(&r);

    /* The response API refuses misuse; a handler that answers nothing gets 500. */
    s_exchange(c, "GET /checks HTTP/1.1\r\nHost: t\r\nX-Test: yes\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "ok");
    assert_string_equal(s_hdr(&r, "X-Ok", v, sizeof v), "1");
    assert_int_equal(atomic_load(&s_late_misuse), 0);
    s_resp_free(&r);
    s_exchange(c, "GET /escaped HTTP/1.1\r\nHost: t\r\n\r\n", 422, &r);
    assert_string_equal(r.body,
                        "{\"error\":\"a \\\"quoted\\\\ line\\u000abreak\\u0001\",\"code\":\"odd\\\"code\"}");
    assert_non_null(strstr(r.head, "422 Unprocessable Content"));
    s_resp_free(&r);
    s_exchange(c, "GET /silent HTTP/1.1\r\nHost: t\r\n\r\n", 500, &r);
    s_expect_error(&r, 500, "internal_error");
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);

    /* A refusal that leaves a body unread closes the connection. */
    c = s_connect(s);
    s_exchange(c, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 405, &r);
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    s_srv_stop(&s);
}

static void s_noop(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    (void) gateway_http_respond(res, 204, NULL, NULL, 0);
}

static void test_route_table(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(&(router_loop_opts_t){.backend = ROUTER_LOOP_EPOLL});
    assert_non_null(loop);
    gateway_http_t *g = gateway_http_new(loop, NULL);
    assert_non_null(g);
    static const char *const bad_patterns[] = {"", "health", "/a*b", "/a b", "/a?b", "/a#b"};
    for (size_t i = 0; i < sizeof bad_patterns / sizeof bad_patterns[0]; i++) {
        errno = 0;
        assert_int_equal(gateway_http_route(g, "GET", bad_patterns[i], s_noop, NULL), -1);
        assert_int_equal(errno, EINVAL);
    }
    assert_int_equal(gateway_http_route(g, "G T", "/x", s_noop, NULL), -1);
    assert_int_equal(gateway_http_route(g, "", "/x", s_noop, NULL), -1);
    assert_int_equal(gateway_http_route(g, "GET", "/x", NULL, NULL), -1);
    assert_int_equal(gateway_http_route(g, "GET", "/x", s_noop, NULL), 0);
    assert_int_equal(gateway_http_route(g, "GET", "/x", s_noop, NULL), -1);
    assert_int_equal(errno, EEXIST);
    assert_int_equal(gateway_http_route(g, "POST", "/x", s_noop, NULL), 0);
    assert_int_equal(gateway_http_route(g, "GET", "/x*", s_noop, NULL), 0);
    for (unsigned i = 3; i < GATEWAY_HTTP_ROUTES_MAX; i++) {
        char p[32];
        snprintf(p, sizeof p, "/r%u", i);
        assert_int_equal(gateway_http_route(g, "GET", p, s_noop, NULL), 0);
    }
    assert_int_equal(gateway_http_route(g, "GET", "/one-more", s_noop, NULL), -1);
    assert_int_equal(errno, ENOSPC);

    /* Options out of range are refused. */
    errno = 0;
    assert_null(gateway_http_new(loop, &(gateway_http_opts_t){.headers_max = 1000}));
    assert_int_equal(errno, EINVAL);
    assert_null(gateway_http_new(NULL, NULL));

    gateway_http_destroy(&g);
    router_loop_destroy(&loop);
}

/* The methods the server knows, as routes that take any method read them
 * (route_nodes.c answers 501 with this check): RFC 9110's and PATCH,
 * case-sensitive, whole. */
static void test_method_known(void **state)
{
    (void) state;
    static const char *const known[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                        "CONNECT", "OPTIONS", "TRACE", "PATCH"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        assert_true(gateway_http_method_known(
            (proto_http_slice_t){.ptr = known[i], .len = strlen(known[i])}));
    static const char *const unknown[] = {"BREW", "get", "GETS", "GE", "PROPFIND", "", "QUERY"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        assert_false(gateway_http_method_known(
            (proto_http_slice_t){.ptr = unknown[i], .len = strlen(unknown[i])}));
    assert_false(gateway_http_method_known((proto_http_slice_t){.ptr = "GET", .len = 2}));
}

/* ---------------------------------------------------------------- keep-alive and pipelining */

static void test_pipelining(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_client_t *c = s_connect(s);
    s_resp_t r;
    char v[64];
    /* Three requests in one write, one of them with a body; answered in order. */
    s_sends(c, "GET /api/one HTTP/1.1\r\nHost: t\r\n\r\n"
               "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
               "GET /api/three HTTP/1.1\r\nHost: t\r\n\r\n");
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "prefix GET /api/one -");
    s_resp_free(&r);
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "abc");
    assert_string_equal(s_hdr(&r, "X-Body-Length", v, sizeof v), "3");
    s_resp_free(&r);
    s_read_resp(c, &r, false);
    assert_string_equal(r.body, "prefix GET /api/three -");
    assert_false(s_closes(&r));
    s_resp_free(&r);

    /* The connection is still good, and a chunked body works after them. */
    s_exchange(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "3\r\nfoo\r\n4;ext=1\r\nbar!\r\n0\r\nTrailer: x\r\n\r\n", 200, &r);
    assert_string_equal(r.body, "foobar!");
    s_resp_free(&r);

    /* Connection: close on the last of a pipeline: answered, then closed. */
    s_sends(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
               "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
               "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    s_read_resp(c, &r, false);
    assert_false(s_closes(&r));
    s_resp_free(&r);
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 200);
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c); /* the third request is not answered */
    s_client_close(&c);
    s_srv_stop(&s);
}

/* With a tiny high-water mark every pipelined answer pauses reading until
 * it is written: hundreds of requests still come back whole and in order. */
static void test_backpressure(void **state)
{
    gateway_http_opts_t o = {.send_high_water = 1};
    s_srv_t *s = s_srv_start(state, &o);
    s_client_t *c = s_connect(s);
    enum { N = 300 };
    size_t cap = N * 96, len = 0;
    char *batch = malloc(cap);
    assert_non_null(batch);
    for (int i = 0; i < N; i++) {
        char body[16];
        int k = snprintf(body, sizeof body, "%d", i);
        len += (size_t) snprintf(batch + len, cap - len,
                                 "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s",
                                 k, body);
    }
    s_send(c, batch, len);
    free(batch);
    for (int i = 0; i < N; i++) {
        s_resp_t r;
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        s_read_resp(c, &r, false);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, want);
        s_resp_free(&r);
    }
    s_resp_t r;
    s_exchange(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_client_close(&c);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- refusals */

/* Request smuggling shapes: each is refused with 400, and whatever was
 * sent after it is never answered as a request. */
static void test_smuggling(void **state)
{
    static const struct {
        const char *request;
        const char *code;
    } cases[] = {
        {"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n",
         "content_length_with_transfer_encoding"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
         "content_length_conflict"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
         "transfer_encoding_not_chunked"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
         "space_before_colon"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", "obs_fold"},
        {"GET /health HTTP/1.1\nHost: t\r\n\r\n", "bare_lf"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
         "content_length_invalid"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         "5\r\nhelloXX0\r\n\r\n",
         "bad_chunk_data_end"},
        {"GET /health HTTP/1.1\r\n\r\n", "host_missing"},
    };
    s_srv_t *s = s_srv_start(state, NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_client_t *c = s_connect(s);
        s_resp_t r;
        s_exchange(c, cases[i].request, 400, &r);
        s_expect_error(&r, 400, cases[i].code);
        assert_true(s_closes(&r));
        s_resp_free(&r);
        s_expect_eof(c);
        s_client_close(&c);
    }
    s_srv_stop(&s);
}

static void test_limits(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_resp_t r;

    /* A head over 16 KiB: 431, whether it comes whole or in pieces. */
    size_t big = 17 * 1024;
    char *req = malloc(big + 128);
    assert_non_null(req);
    int n = snprintf(req, 128, "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 5);
    s_client_t *c = s_connect(s);
    s_send_best_effort(c, req, strlen(req));
    s_read_resp(c, &r, false);
    s_expect_error(&r, 431, "head_too_large");
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    c = s_connect(s);
    s_send(c, req, 8 * 1024);
    usleep(2000);
    s_send_best_effort(c, req + 8 * 1024, strlen(req) - 8 * 1024);
    s_read_resp(c, &r, false);
    s_expect_error(&r, 431, "head_too_large");
    s_resp_free(&r);
    s_client_close(&c);
    free(req);

    /* More than 100 header fields: 431. */
    char fields[101 * 16 + 128];
    size_t len = (size_t) snprintf(fields, sizeof fields, "GET /health HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 100; i++)
        len += (size_t) snprintf(fields + len, sizeof fields - len, "X-%d: v\r\n", i);
    snprintf(fields + len, sizeof fields - len, "\r\n");
    c = s_connect(s);
    s_exchange(c, fields, 431, &r);
    s_expect_error(&r, 431, "too_many_fields");
    s_resp_free(&r);
    s_client_close(&c);

    /* A body over 1 MiB: 413 before it is sent, by Content-Length… */
    c = s_connect(s);
    s_exchange(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n", 413, &r);
    s_expect_error(&r, 413, "body_too_large");
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    /* …or as soon as the chunks pass it. */
    c = s_connect(s);
    s_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    char *chunk = malloc(64 * 1024 + 16);
    assert_non_null(chunk);
    int h = snprintf(chunk, 16, "10000\r\n");
    memset(chunk + h, 'x', 64 * 1024);
    memcpy(chunk + h + 64 * 1024, "\r\n", 2);
    for (int i = 0; i < 17; i++)
        s_send_best_effort(c, chunk, (size_t) h + 64 * 1024 + 2);
    free(chunk);
    s_read_resp(c, &r, false);
    s_expect_error(&r, 413, "body_too_large");
    s_resp_free(&r);
    s_client_close(&c);

    /* A body of exactly the limit is taken. */
    c = s_connect(s);
    size_t max = 1024 * 1024;
    char *body = malloc(max);
    assert_non_null(body);
    memset(body, 'b', max);
    s_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
    s_send(c, body, max);
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, max);
    assert_memory_equal(r.body, body, max);
    s_resp_free(&r);
    free(body);
    s_client_close(&c);

    /* A request-target over 8 KiB: 414. */
    char *target = malloc(9 * 1024 + 64);
    assert_non_null(target);
    n = snprintf(target, 64, "GET /");
    memset(target + n, 'p', 9 * 1024);
    strcpy(target + n + 9 * 1024, " HTTP/1.1\r\nHost: t\r\n\r\n");
    c = s_connect(s);
    s_send_best_effort(c, target, strlen(target));
    s_read_resp(c, &r, false);
    s_expect_error(&r, 414, "target_too_long");
    s_resp_free(&r);
    s_client_close(&c);
    free(target);

    /* Versions and codings the server does not speak. */
    c = s_connect(s);
    s_exchange(c, "GET /health HTTP/2.0\r\nHost: t\r\n\r\n", 505, &r);
    s_expect_error(&r, 505, "version_not_supported");
    s_resp_free(&r);
    s_client_close(&c);
    c = s_connect(s);
    s_exchange(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
               &r);
    s_expect_error(&r, 501, "transfer_encoding_unsupported");
    s_resp_free(&r);
    s_client_close(&c);

    /* An upgrade to a path with no WebSocket endpoint. */
    c = s_connect(s);
    s_exchange(c, "GET /ws/chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
               404, &r);
    s_expect_error(&r, 404, "websocket_not_found");
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);

    /* Another method on a WebSocket endpoint's path: the path exists, so
     * 405 with what it takes (it was 404 not_found), plain or with the
     * upgrade's fields; GET without them stays 426. */
    c = s_connect(s);
    char allow[64];
    s_exchange(c, "POST /ws/canvas/a HTTP/1.1\r\nHost: t\r\n\r\n", 405, &r);
    s_expect_error(&r, 405, "method_not_allowed");
    assert_non_null(s_hdr(&r, "Allow", allow, sizeof allow));
    assert_string_equal(allow, "GET, HEAD");
    s_resp_free(&r);
    s_exchange(c, "DELETE /ws/canvas/a HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n",
               405, &r);
    s_expect_error(&r, 405, "method_not_allowed");
    s_resp_free(&r);
    s_exchange(c, "GET /ws/canvas/a HTTP/1.1\r\nHost: t\r\n\r\n", 426, &r);
    s_expect_error(&r, 426, "upgrade_required");
    s_resp_free(&r);
    s_client_close(&c);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- slow clients */

static void test_slow_client(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_client_t *c = s_connect(s);
    s_resp_t r;
    /* A head one byte at a time. */
    s_send_slowly(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 200);
    s_resp_free(&r);
    /* A head in one piece, its body one byte at a time (the head must
     * outlive the read it came in), then a head split with its body. */
    s_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n");
    usleep(2000);
    s_send_slowly(c, "slowly");
    s_read_resp(c, &r, false);
    assert_string_equal(r.body, "slowly");
    s_resp_free(&r);
    s_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTrans");
    usleep(2000);
    s_sends(c, "fer-Encoding: chunked\r\n\r\n2\r\nab\r\n");
    usleep(2000);
    s_send_slowly(c, "1\r\nc\r\n0\r\n\r\n");
    s_read_resp(c, &r, false);
    assert_string_equal(r.body, "abc");
    s_resp_free(&r);
    /* Expect: 100-continue is answered before the body is sent. */
    s_exchange(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
               100, &r);
    s_resp_free(&r);
    s_exchange(c, "hello", 200, &r);
    assert_string_equal(r.body, "hello");
    s_resp_free(&r);
    /* A refusal found late in a slow head. */
    s_send_slowly(c, "GET /health HTTP/1.1\r\nHost: t\r\nBad(Field: x\r\n\r\n");
    s_read_resp(c, &r, false);
    s_expect_error(&r, 400, "bad_field_name");
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    s_srv_stop(&s);
}

/* Timeouts are short here so they happen soon; nothing measures them. */
static void test_timeouts(void **state)
{
    gateway_http_opts_t o = {.head_timeout_ms = 50, .body_timeout_ms = 50, .idle_timeout_ms = 50};
    s_srv_t *s = s_srv_start(state, &o);
    s_resp_t r;
    /* A connection that says nothing: 408. */
    s_client_t *c = s_connect(s);
    s_read_resp(c, &r, false);
    s_expect_error(&r, 408, "request_timeout");
    assert_true(s_closes(&r));
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    /* A head that never ends: 408. */
    c = s_connect(s);
    s_sends(c, "GET /health HTTP/1.1\r\nHost: t\r\n");
    s_read_resp(c, &r, false);
    s_expect_error(&r, 408, "request_timeout");
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    /* A body that never comes: 408. */
    c = s_connect(s);
    s_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    s_read_resp(c, &r, false);
    s_expect_error(&r, 408, "request_timeout");
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    s_srv_stop(&s);

    /* Only the idle timeout is short: a kept-alive connection with nothing
     * under way is closed without a word, one with a request under way is
     * not (its deadline moved out while the idle one was armed). */
    o = (gateway_http_opts_t){.idle_timeout_ms = 50};
    s = s_srv_start(state, &o);
    c = s_connect(s);
    s_sends(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
               "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab");
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 200);
    s_resp_free(&r);
    usleep(100 * 1000); /* lets the idle timer fire mid-body (either way is a pass) */
    s_exchange(c, "cd", 200, &r);
    assert_string_equal(r.body, "abcd");
    s_resp_free(&r);
    s_expect_eof(c);
    s_client_close(&c);
    s_srv_stop(&s);
}

/* A client reading a large answer slowly is not cut at the idle deadline
 * while its reads make progress: the deadline bounds a client that reads
 * nothing, not how long a transfer takes. Before, a paused connection was
 * closed at the idle deadline whatever it read, and its answer cut off
 * when the loop's close timed out (here 300 ms; 60 s and 5 s by default,
 * so a few MiB over a slow link). The answer is larger than the kernel's
 * socket buffers can take, so most of it waits in the server's queue. The
 * reads are slow, nothing measures them. */
static void test_slow_reader_gets_its_whole_answer(void **state)
{
    enum { BODY = 6 * 1024 * 1024, READ = 16 * 1024 };
    gateway_http_opts_t o = {.idle_timeout_ms = 100, .body_max = 2 * BODY,
                             .send_limit = 4 * (size_t) BODY};
    s_next_close_timeout_ms = 300;
    s_next_send_limit = 4 * (size_t) BODY;
    s_srv_t *s = s_srv_start(state, &o);
    s_client_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = s_client_socket(AF_INET);
    int small = 4096;
    assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(s->port)};
    assert_int_equal(inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr), 1);
    s_connect_fd(c, &sin);
    char *body = malloc(BODY);
    assert_non_null(body);
    memset(body, 'b', BODY);
    char head[128];
    snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n",
             BODY);
    s_sends(c, head);
    s_send(c, body, BODY);
    free(body);
    /* The answer, READ octets a read, until the server ends the connection
     * (it is idle once the answer is written) or cuts it. */
    size_t cap = BODY + 4096, total = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (;;) {
        size_t room = cap - total < READ ? cap - total : READ;
        assert_true(room > 0);
        ssize_t n = recv(c->fd, out + total, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* the end, or a reset */
        total += (size_t) n;
        usleep(1000);
    }
    const char *end = memmem(out, total, "\r\n\r\n", 4);
    assert_non_null(end);
    size_t got_body = total - (size_t) (end + 4 - out);
    free(out);
    assert_int_equal(got_body, BODY);
    s_client_close(&c);
    s_srv_stop(&s);
}

/* A request that proves a credential (pairing is off in these servers:
 * a bearer route lets everything in) takes its connection off the
 * unauthenticated bounds. */
static void s_authenticate(s_client_t *c)
{
    s_resp_t r;
    s_exchange(c, "GET /api/canvas HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
}

/* gateway.max_connections (WIRE §11.2): at the cap a newcomer takes the
 * place of the oldest idle unauthenticated connection; when every one open
 * has authenticated (or has work in hand) it is cut at once, unanswered. */
static void test_max_connections(void **state)
{
    gateway_http_opts_t o = {.max_connections = 2};
    s_srv_t *s = s_srv_start(state, &o);
    s_client_t *a = s_connect(s);
    s_authenticate(a);
    s_client_t *idle = s_connect(s);
    s_resp_t r;
    s_exchange(idle, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r); /* proves nothing */
    s_resp_free(&r);
    s_client_t *b = s_connect(s);
    s_exchange(b, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_expect_eof(idle); /* it gave way */
    s_client_close(&idle);
    assert_int_equal(s_metric(a, "kith_http_rejected_total{reason=\"unauth_evicted\"}"), 1);
    s_authenticate(b);
    /* Both places authenticated: a newcomer is cut at once, with no answer. */
    s_client_t *c = s_connect(s);
    s_send_best_effort(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 33);
    s_expect_eof(c);
    s_client_close(&c);
    assert_int_equal(s_metric(a, "kith_http_rejected_total{reason=\"too_many_connections\"}"), 1);
    assert_int_equal(s_metric(a, "kith_http_connections_open"), 2);
    s_client_close(&b);
    s_client_close(&a);
    s_srv_stop(&s);
}


/* The unauthenticated share (limits.http_unauth_connections_max, WIRE
 * §11.3): a newcomer past it cuts the oldest unauthenticated connection
 * that has nothing under way; when every one has a request under way, the
 * newcomer is refused; an authenticated connection is outside the share.
 * Loopback counts towards the share though it has no per-source one. */
static void test_unauth_share(void **state)
{
    gateway_http_opts_t o = {.unauth_max = 2};
    s_srv_t *s = s_srv_start(state, &o);
    s_client_t *m = s_connect(s); /* for /metrics, authenticated first */
    s_authenticate(m);
    /* a's body is under way (100 Continue says the head was taken); b was
     * answered and waits for its next request. */
    static const char post10[] =
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n";
    static const char post4[] =
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
    s_resp_t r;
    s_client_t *a = s_connect(s), *b = s_connect(s);
    s_exchange(a, post10, 100, &r);
    s_resp_free(&r);
    s_exchange(b, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    assert_int_equal(s_metric(m, "kith_http_unauth_connections"), 2);
    /* b goes for c, a has a request under way. */
    s_client_t *c = s_connect(s);
    s_expect_eof(b);
    s_client_close(&b);
    assert_int_equal(s_metric(m, "kith_http_rejected_total{reason=\"unauth_evicted\"}"), 1);
    s_exchange(c, post4, 100, &r);
    s_resp_free(&r);
    assert_int_equal(s_metric(m, "kith_http_unauth_connections"), 2);
    /* Both have requests under way: the newcomer is refused. */
    s_expect_refused(s);
    assert_int_equal(s_metric(m, "kith_http_rejected_total{reason=\"unauth_full\"}"), 1);
    /* a finishes and is answered; then it proves a credential and leaves
     * the share, so a newcomer has room without a cut. */
    s_sends(a, "1234567890");
    s_read_resp(a, &r, false);
    assert_int_equal(r.status, 200);
    s_resp_free(&r);
    s_authenticate(a);
    assert_int_equal(s_metric(m, "kith_http_unauth_connections"), 1);
    s_client_t *e = s_connect(s);
    s_exchange(e, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_sends(c, "abcd");
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 200);
    s_resp_free(&r);
    assert_int_equal(s_metric(m, "kith_http_rejected_total{reason=\"unauth_evicted\"}"), 1);
    s_client_close(&a);
    s_client_close(&c);
    s_client_close(&e);
    s_client_close(&m);
    s_srv_stop(&s);
}

/* A local address that is not loopback (a machine's own address on an
 * interface that is up), as text, or false when there is none (a network
 * namespace with only lo, as CI runs the suite). */
static bool s_outside_address(char *out, size_t cap)
{
    struct ifaddrs *all = NULL;
    if (getifaddrs(&all) != 0)
        return false;
    bool found = false;
    for (struct ifaddrs *i = all; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
            (i->ifa_flags & IFF_LOOPBACK))
            continue;
        const struct sockaddr_in *sin = (const struct sockaddr_in *) i->ifa_addr;
        if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
            continue;
        found = inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t) cap) != NULL;
    }
    freeifaddrs(all);
    return found;
}

/* Local peers have no per-source share: a Unix socket's (they share one
 * source) and loopback ones, however many; they count towards the share
 * of all. */
static void test_unauth_local_sources(void **state)
{
    char dir[] = "/tmp/kith-gw-test-XXXXXX", path[128], uds[160];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/gw.sock", dir);
    snprintf(uds, sizeof uds, "uds://%s", path);
    gateway_http_opts_t o = {.unauth_per_source_max = 2};
    s_srv_t *s = s_srv_start_at(state, &o, uds);
    s_client_t *m = s_connect(s);
    s_authenticate(m);
    s_client_t *c[6];
    s_resp_t r;
    for (int i = 0; i < 6; i++) {
        c[i] = i < 3 ? s_connect_uds(path) : s_connect(s);
        s_exchange(c[i], "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
        s_resp_free(&r);
    }
    assert_int_equal(s_metric(m, "kith_http_unauth_connections"), 6);
    assert_int_equal(s_metric(m, "kith_http_rejected_total{reason=\"unauth_per_source\"}"), 0);
    for (int i = 0; i < 6; i++)
        s_client_close(&c[i]);
    s_client_close(&m);
    s_srv_stop(&s);
    unlink(path);
    rmdir(dir);
}

/* The per-source share (limits.http_unauth_per_source_max) for a peer that
 * is not local: past it the source is refused and others are not, and a
 * connection that proves a credential gives its source's place back. It
 * needs an address of this machine that is not loopback; without one (CI
 * runs in a namespace with only lo) the test says so and skips. */
static void test_unauth_per_source(void **state)
{
    char host[INET_ADDRSTRLEN], listen_at[64];
    if (!s_outside_address(host, sizeof host)) {
        print_message("no address here but loopback: the per-source share is not reached\n");
        skip();
        return;
    }
    snprintf(listen_at, sizeof listen_at, "%s:0", host);
    gateway_http_opts_t o = {.unauth_per_source_max = 2};
    uint16_t port = 0;
    s_srv_t *s = s_srv_start_tcp2(state, &o, listen_at, &port);
    s_client_t *m = s_connect(s);
    s_authenticate(m);
    s_client_t *a = s_connect_to(host, port), *b = s_connect_to(host, port);
    s_resp_t r;
    s_exchange(a, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r); /* still unauthenticated */
    s_resp_free(&r);
    s_expect_refused_at(host, port);
    assert_int_equal(s_metric(m, "kith_http_rejected_total{reason=\"unauth_per_source\"}"), 1);
    s_authenticate(b);
    s_client_t *c = s_connect_to(host, port);
    s_exchange(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    assert_int_equal(s_metric(m, "kith_http_rejected_total{reason=\"unauth_per_source\"}"), 1);
    assert_int_equal(s_metric(m, "kith_http_unauth_connections"), 2); /* a and c */
    s_client_close(&a);
    s_client_close(&b);
    s_client_close(&c);
    s_client_close(&m);
    s_srv_stop(&s);
}

/* Stopping with connections in every state leaks nothing (LSan checks). */
static void test_destroy_with_open_connections(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_client_t *idle = s_connect(s), *head = s_connect(s), *body = s_connect(s);
    s_resp_t r;
    s_exchange(idle, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_exchange(head, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_exchange(body, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_sends(head, "GET /health HTTP/1.1\r\nHo");
    s_sends(body, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc");
    /* A request answered after those were sent shows the loop has read them
     * (each connection is read in turn; this is the best a client can do). */
    s_exchange(idle, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_srv_stop(&s);
    assert_int_equal(s_recv_more(head), 0);
    s_client_close(&idle);
    s_client_close(&head);
    s_client_close(&body);
}

/* ---------------------------------------------------------------- out of memory */

/* Arms (skip >= 0) or disarms (skip < 0) allocation failures on the
 * server's loop thread and waits until it has. */
static unsigned s_loop_arm(s_srv_t *s, long skip)
{
    return alloc_fail_on_loop(s->loop, skip);
}

/* Reads one response, or returns false when the server closed first. */
static bool s_read_resp_or_eof(s_client_t *c, s_resp_t *r)
{
    memset(r, 0, sizeof *r);
    while (!memmem(c->buf, c->len, "\r\n\r\n", 4))
        if (s_recv_more(c) == 0)
            return false;
    s_read_resp(c, r, false);
    return true;
}

/* Grows, unarmed, what grows once and then stays (the loop's timer
 * heap, with several connections waiting at once), so that each run of an
 * allocation sweep makes the same allocations in the same order as the
 * next and the sweep reaches every one of them: a heap that grew in the
 * first runs only shifted the count, and a sweep once never failed the
 * allocations that came after it. */
static void s_warm(s_srv_t *s)
{
    s_client_t *held[16];
    for (size_t i = 0; i < 16; i++) {
        held[i] = s_connect(s);
        s_sends(held[i], "GET /health HTTP/1.1\r\n"); /* a head begun: its deadline is armed */
    }
    s_client_t *c = s_connect(s);
    s_resp_t r;
    s_exchange(c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
    s_resp_free(&r);
    s_client_close(&c);
    for (size_t i = 0; i < 16; i++)
        s_client_close(&held[i]);
}

/* A request whose head comes in two reads, its body in a third, then a
 * pipelined second one, with the loop thread's 1st, 2nd, … allocation
 * failing in turn until a run fails none. Each run is answered in full, or
 * refused with a typed 5xx, or cut; and after each, a new connection is
 * served as usual: one client's shortage never stops the server. */
static void test_requests_without_memory(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_warm(s);
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_loop_arm(s, i);
        s_client_t *c = s_connect(s);
        s_resp_t r;
        /* Best effort: a server short of memory may have closed already. */
        static const char *const parts[] = {"POST /echo HTTP/1.1\r\nHost: t\r\n",
                                            "Content-Length: 5\r\n\r\n",
                                            "hello"
                                            "GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n"};
        for (size_t k = 0; k < 3; k++) {
            if (k)
                usleep(1000); /* only to make separate reads likely; either way is right */
            s_send_best_effort(c, parts[k], strlen(parts[k]));
        }
        bool first = s_read_resp_or_eof(c, &r), second = false, answered = first;
        bool complete = false;
        if (first && r.status == 200) {
            assert_int_equal(r.body_len, 5);
            assert_memory_equal(r.body, "hello", 5);
            s_resp_free(&r);
            second = answered = s_read_resp_or_eof(c, &r);
            if (second && r.status == 200) {
                assert_string_equal(r.body, "prefix GET /api/x -");
                complete = true;
            }
        }
        if (answered && r.status != 200)
            s_expect_error(&r, 500, "internal_error");
        s_resp_free(&r);
        unsigned failed = s_loop_arm(s, -1);
        s_client_close(&c);
        if (!failed) {
            assert_true(complete);
            break;
        }
        if (!complete)
            refused++;
        /* The next client is served. */
        s_client_t *next = s_connect(s);
        s_exchange(next, "GET /api/y HTTP/1.1\r\nHost: t\r\n\r\n", 200, &r);
        assert_string_equal(r.body, "prefix GET /api/y -");
        s_resp_free(&r);
        s_client_close(&next);
    }
    assert_true(refused > 0);
    print_message("%u allocations cut or refused the request\n", refused);
    s_srv_stop(&s);
}

/* The canvas routes with the loop thread's 1st, 2nd, … allocation failing
 * in turn: each post, read and list is answered in full or refused with a
 * typed 503 (or cut), never half-done — a canvas whose post was refused is
 * not listed and holds nothing — and the next request is served. */
static void test_canvas_without_memory(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_warm(s);
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_loop_arm(s, i);
        s_client_t *c = s_connect(s);
        s_resp_t r;
        char req[256];
        snprintf(req, sizeof req,
                 "POST /api/canvas/c%ld HTTP/1.1\r\nHost: t\r\nContent-Type: text/html\r\n"
                 "Content-Length: 5\r\n\r\n<b>x</b>",
                 i);
        /* Content-Length 5 takes "<b>x<": the rest is a bad next request. */
        s_send_best_effort(c, req, strlen(req) - 3);
        bool posted = false;
        if (s_read_resp_or_eof(c, &r)) {
            if (r.status == 200)
                posted = true;
            else
                s_expect_error(&r, r.status == 500 ? 500 : 503,
                               r.status == 500 ? "internal_error" : "unavailable");
            s_resp_free(&r);
        }
        unsigned failed = s_loop_arm(s, -1);
        s_client_close(&c);
        /* A post answered 200 is there; one refused or cut is either not
         * there or (the answer, not the post, ran short) there whole. */
        s_client_t *next = s_connect(s);
        snprintf(req, sizeof req, "GET /api/canvas/c%ld HTTP/1.1\r\nHost: t\r\n\r\n", i);
        s_sends(next, req);
        s_read_resp(next, &r, false);
        assert_true(r.status == 200 || (!posted && r.status == 404));
        if (r.status == 200)
            assert_non_null(strstr(r.body, "\"content\":\"<b>x<\""));
        s_resp_free(&r);
        s_client_close(&next);
        if (!failed) {
            assert_true(posted);
            break;
        }
        if (!posted)
            refused++;
    }
    /* Reads and lists under the same shortage: whole answers or typed 503s. */
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_loop_arm(s, i);
        s_client_t *c = s_connect(s);
        s_resp_t r;
        static const char list[] = "GET /api/canvas HTTP/1.1\r\nHost: t\r\n\r\n";
        s_send_best_effort(c, list, sizeof list - 1); /* the server may have cut it already */
        bool whole = false;
        if (s_read_resp_or_eof(c, &r)) {
            if (r.status == 200)
                whole = strstr(r.body, "{\"canvases\":[") == r.body;
            else
                s_expect_error(&r, r.status == 500 ? 500 : 503,
                               r.status == 500 ? "internal_error" : "unavailable");
            s_resp_free(&r);
        }
        unsigned failed = s_loop_arm(s, -1);
        s_client_close(&c);
        if (!failed) {
            assert_true(whole);
            break;
        }
    }
    assert_true(refused > 0);
    print_message("%u allocations refused a canvas post\n", refused);
    s_srv_stop(&s);
}

/* A deferral answered or ended before its handler returned is that
 * request's answer (a 500 when nothing was said), and the connection goes
 * on with the next request: pipelined behind it here. */
static void test_deferral_ended_in_its_handler(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_client_t *c = s_connect(s);
    s_sends(c, "GET /defer-answered HTTP/1.1\r\nHost: t\r\n\r\n"
               "GET /defer-dropped HTTP/1.1\r\nHost: t\r\n\r\n"
               "GET /defer-answered HTTP/1.1\r\nHost: t\r\n\r\n");
    s_resp_t r;
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 409);
    assert_string_equal(r.body, "{\"at\":\"once\"}");
    s_resp_free(&r);
    s_read_resp(c, &r, false);
    s_expect_error(&r, 500, "internal_error");
    s_resp_free(&r);
    /* The 500 closes the connection: the third request is not answered. */
    assert_int_equal(s_recv_more(c), 0);
    s_client_close(&c);
    c = s_connect(s);
    s_sends(c, "GET /defer-answered HTTP/1.1\r\nHost: t\r\n\r\n");
    s_read_resp(c, &r, false);
    assert_int_equal(r.status, 409);
    s_resp_free(&r);
    s_client_close(&c);
    s_srv_stop(&s);
}

/* One request to /admin/tokens… on a fresh connection: the answer (or
 * status 0 when the server cut the connection first). */
static void s_tokens_call(s_srv_t *s, const char *method, const char *path, const char *body,
                          s_resp_t *r)
{
    s_client_t *c = s_connect(s);
    char req[512];
    snprintf(req, sizeof req,
             "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             method, path, strlen(body), body);
    s_send_best_effort(c, req, strlen(req)); /* the server may have cut it already */
    if (!s_read_resp_or_eof(c, r))
        r->status = 0;
    s_client_close(&c);
}

/* True when the token list names a token `name`. */
static bool s_tokens_listed(s_srv_t *s, const char *name)
{
    s_resp_t r;
    s_tokens_call(s, "GET", "/admin/tokens", "", &r);
    assert_int_equal(r.status, 200);
    char want[96];
    snprintf(want, sizeof want, "\"name\":\"%s\"", name);
    bool found = strstr(r.body, want) != NULL;
    s_resp_free(&r);
    return found;
}

/* A typed refusal for want of memory (or nothing, the connection cut). */
static void s_expect_short(const s_resp_t *r)
{
    if (r->status != 0)
        s_expect_error(r, r->status == 500 ? 500 : 503,
                       r->status == 500 ? "internal_error" : "unavailable");
}

/* The token routes with the loop thread's 1st, 2nd, … allocation failing:
 * a mint is answered 201 with its token (and is then listed) or refused
 * with a typed 5xx; a list is whole or refused; a revoke is answered 200
 * (and the token is gone) or refused, and every answer after is whole. */
static void test_tokens_without_memory(void **state)
{
    s_srv_t *s = s_srv_start(state, NULL);
    s_warm(s);
    unsigned refused = 0;
    char body[96], name[32], path[64];
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        snprintf(name, sizeof name, "m%ld", i);
        snprintf(body, sizeof body, "{\"scope\":\"node\",\"name\":\"%s\"}", name);
        s_loop_arm(s, i);
        s_resp_t r;
        s_tokens_call(s, "POST", "/admin/tokens", body, &r);
        unsigned failed = s_loop_arm(s, -1);
        bool minted = r.status == 201 && strstr(r.body, "\"token\":\"kith_");
        if (r.status != 201)
            s_expect_short(&r);
        if (r.status)
            s_resp_free(&r);
        if (minted)
            assert_true(s_tokens_listed(s, name));
        if (!failed) {
            assert_true(minted);
            break;
        }
        refused += !minted;
    }
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_loop_arm(s, i);
        s_resp_t r;
        s_tokens_call(s, "GET", "/admin/tokens", "", &r);
        unsigned failed = s_loop_arm(s, -1);
        bool whole = r.status == 200 && strstr(r.body, "{\"tokens\":[") == r.body;
        if (r.status != 200)
            s_expect_short(&r);
        if (r.status)
            s_resp_free(&r);
        if (!failed) {
            assert_true(whole);
            break;
        }
    }
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        snprintf(name, sizeof name, "r%ld", i);
        snprintf(body, sizeof body, "{\"scope\":\"operator\",\"name\":\"%s\"}", name);
        s_resp_t r;
        s_tokens_call(s, "POST", "/admin/tokens", body, &r);
        assert_int_equal(r.status, 201);
        const char *id = strstr(r.body, "\"id\":\"");
        assert_non_null(id);
        snprintf(path, sizeof path, "/admin/tokens/%.16s", id + 6);
        s_resp_free(&r);
        s_loop_arm(s, i);
        s_tokens_call(s, "DELETE", path, "", &r);
        unsigned failed = s_loop_arm(s, -1);
        bool revoked = r.status == 200 && strstr(r.body, "\"revoked\":true");
        if (r.status != 200)
            s_expect_short(&r);
        if (r.status)
            s_resp_free(&r);
        if (revoked)
            assert_false(s_tokens_listed(s, name));
        if (!failed) {
            assert_true(revoked);
            break;
        }
    }
    assert_true(refused > 0);
    print_message("%u allocations refused a token mint\n", refused);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- main */

#define BOTH(f)                                                        \
    {#f "@uring", f, NULL, NULL, &s_uring}, {#f "@epoll", f, NULL, NULL, &s_epoll}

static int s_group_setup(void **state)
{
    (void) state;
    router_log_set_level(ROUTER_LOG_WARN);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        BOTH(test_health),
        BOTH(test_metrics),
        BOTH(test_routes),
        cmocka_unit_test(test_route_table),
        cmocka_unit_test(test_method_known),
        BOTH(test_pipelining),
        BOTH(test_backpressure),
        BOTH(test_smuggling),
        BOTH(test_limits),
        BOTH(test_slow_client),
        BOTH(test_timeouts),
        BOTH(test_slow_reader_gets_its_whole_answer),
        BOTH(test_max_connections),
        BOTH(test_unauth_share),
        BOTH(test_unauth_local_sources),
        BOTH(test_unauth_per_source),
        BOTH(test_destroy_with_open_connections),
        BOTH(test_requests_without_memory),
        BOTH(test_canvas_without_memory),
        BOTH(test_tokens_without_memory),
        BOTH(test_deferral_ended_in_its_handler),
    };
    return cmocka_run_group_tests(tests, s_group_setup, NULL);
}
