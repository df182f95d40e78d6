/* tests/events_test.c — gateway/events.c, gateway/route_events.c and
 * gateway/log_tap.c: event ids and the ring's bounds (count and bytes),
 * refused types and objects, the JSON escape publishers use, log lines from
 * another thread reaching the stream through the tap on the loop thread
 * (and the tap's full queue), and subscribers over real sockets to an
 * in-process server: Last-Event-ID replay and gaps, the subscriber bound,
 * keep-alives, HEAD, a client gone mid-event, the slow-consumer cut, a
 * paced replay the ring overtakes, and out of memory while subscribing;
 * one shared frame per event for all subscribers (counted once in the
 * loop's unsent total, freed with its last holder, replayed octet for
 * octet), the loop's share cut counted, and out of memory in a fan-out.
 * The daemon's streams are tests/integration/test_sse.py. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "gateway/events.h"
#include "gateway/log_tap.h"
#include "proto/sse.h"
#include "router/log.h"
#include "router/metrics.h"
#include "router/net/listen.h"
#include "router/net/loop.h"

/* Reads that see nothing for this long fail the test instead of hanging it. */
#define HANG_GUARD_S 30

static void test_ids_and_ring_count(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    gateway_events_t *ev = gateway_events_new(loop, &(gateway_events_opts_t){.ring_events = 4});
    assert_non_null(ev);
    gateway_events_stats_t st;
    gateway_events_stats(ev, &st);
    assert_int_equal(st.newest, 0);
    assert_int_equal(st.oldest, 1);
    for (uint64_t i = 1; i <= 10; i++)
        assert_int_equal(gateway_events_publish(ev, "agent_start", "{\"n\":1}"), i);
    gateway_events_stats(ev, &st);
    assert_int_equal(st.newest, 10);
    assert_int_equal(st.oldest, 7); /* 4 kept: 7..10 */
    assert_int_equal(gateway_events_publish(ev, "error", "{}"), 11);
    gateway_events_destroy(&ev);
    gateway_events_destroy(&ev); /* idempotent */
    assert_null(ev);
    router_loop_destroy(&loop);
}

static void test_ring_bytes(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(
        loop, &(gateway_events_opts_t){.ring_events = 100, .ring_bytes_max = 1000});
    assert_non_null(ev);
    char big[400];
    memset(big, 'x', sizeof big);
    memcpy(big, "{\"t\":\"", 6);
    memcpy(big + sizeof big - 3, "\"}", 3);
    for (int i = 0; i < 10; i++)
        assert_true(gateway_events_publish(ev, "tool_call", big) > 0);
    gateway_events_stats_t st;
    gateway_events_stats(ev, &st);
    assert_true(st.ring_bytes <= 1000);
    assert_int_equal(st.newest, 10);
    assert_int_equal(st.oldest, 9); /* two ~430-octet frames fit */
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

static void test_refused(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(loop, NULL);
    const char *bad_types[] = {"", "Upper", "has space", "new\nline", NULL};
    for (size_t i = 0; i < 5; i++) {
        errno = 0;
        assert_int_equal(gateway_events_publish(ev, bad_types[i], "{}"), 0);
        assert_int_equal(errno, EINVAL);
    }
    const char *bad_json[] = {NULL, "", "{", "[]", "x{}", "\"s\""};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(gateway_events_publish(ev, "error", bad_json[i]), 0);
    char type[GATEWAY_EVENTS_TYPE_MAX + 1];
    memset(type, 'a', sizeof type - 1);
    type[sizeof type - 1] = '\0';
    assert_int_equal(gateway_events_publish(ev, type, "{}"), 0);
    gateway_events_stats_t st;
    gateway_events_stats(ev, &st);
    assert_int_equal(st.newest, 0); /* nothing refused took an id */
    assert_null(gateway_events_new(loop, &(gateway_events_opts_t){.name = "Bad Name"}));
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

/* Checks the frame of event `id` against the SSE encoder's own output
 * for that id and data. */
static void s_frame_is(gateway_events_t *ev, uint64_t id, const char *data)
{
    char idt[24];
    snprintf(idt, sizeof idt, "%llu", (unsigned long long) id);
    proto_sse_message_t m = {.id = idt, .id_len = strlen(idt), .data = (const uint8_t *) data,
                             .data_len = strlen(data), .retry_ms = -1};
    uint8_t want[512];
    ssize_t n = proto_sse_encode(want, sizeof want, &m, NULL);
    assert_true(n > 0);
    size_t len = 0;
    const uint8_t *got = gateway_events_frame(ev, id, &len);
    assert_non_null(got);
    assert_int_equal(len, (size_t) n);
    assert_memory_equal(got, want, len);
}

/* What subscribers read: {"type":…} first, then the object's members;
 * members with line breaks (whitespace between JSON tokens) become more
 * data lines, which the client joins back with LF. */
static void test_frames(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(loop, NULL);
    assert_int_equal(gateway_events_publish(ev, "agent_start", "{\"n\":1}"), 1);
    s_frame_is(ev, 1, "{\"type\":\"agent_start\",\"n\":1}");
    assert_int_equal(gateway_events_publish(ev, "error", "{}"), 2);
    s_frame_is(ev, 2, "{\"type\":\"error\"}");
    assert_int_equal(gateway_events_publish(ev, "error", "{ \t }"), 3);
    s_frame_is(ev, 3, "{\"type\":\"error\"}");
    assert_int_equal(gateway_events_publish(ev, "log", "{\n \"a\": 1,\r\n \"b\":\r2\n}"), 4);
    s_frame_is(ev, 4, "{\"type\":\"log\",\"a\": 1,\r\n \"b\":\r2\n}");
    assert_null(gateway_events_frame(ev, 5, &(size_t){0}));
    assert_null(gateway_events_frame(ev, 0, &(size_t){0}));
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

/* Out of memory at each allocation of a publish, both ways a frame is
 * made: the publish returns 0 with ENOMEM and takes no id, and the ring
 * keeps what it had; the next publish that can allocate takes the next id. */
static void test_publish_without_memory(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(loop, &(gateway_events_opts_t){.ring_events = 4});
    assert_non_null(ev);
    const char *objects[] = {"{\"n\":1}", "{\"a\":\n1}"};
    uint64_t next = 1;
    for (size_t k = 0; k < 2; k++)
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            errno = 0;
            alloc_fail_arm(i);
            uint64_t id = gateway_events_publish(ev, "agent_start", objects[k]);
            bool failed = alloc_fail_disarm() > 0;
            gateway_events_stats_t st;
            gateway_events_stats(ev, &st);
            if (id == 0) {
                assert_true(failed);
                assert_int_equal(errno, ENOMEM);
                assert_int_equal(st.newest, next - 1);
                continue;
            }
            assert_int_equal(id, next++);
            assert_int_equal(st.newest, id);
            if (!failed)
                break;
        }
    assert_true(next >= 3);
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

/* The bounded writer publishers build events with: an append fits while
 * its bytes and the NUL after them do; one that does not marks the writer
 * full, leaves what was written (NUL-terminated) as it was, and every
 * append after it is refused too, so a cut object is never published. */
static void test_json_writer(void **state)
{
    (void) state;
    char buf[8];
    gateway_events_json_t j = {.p = buf, .cap = sizeof buf};
    gateway_events_json_raw(&j, "{\"a\":", 5);
    gateway_events_json_u64(&j, 12); /* 7 octets and the NUL: exactly full */
    assert_false(j.full);
    assert_string_equal(buf, "{\"a\":12");
    gateway_events_json_raw(&j, "}", 1);
    assert_true(j.full);
    assert_int_equal(j.n, 7);
    assert_string_equal(buf, "{\"a\":12");
    gateway_events_json_raw(&j, "", 0); /* full stays full */
    gateway_events_json_str(&j, "", 0);
    assert_true(j.full);
    assert_int_equal(j.n, 7);

    gateway_events_json_t k = {.p = buf, .cap = sizeof buf};
    gateway_events_json_str(&k, "ab\"c", 4); /* 5 octets escaped */
    assert_false(k.full);
    assert_string_equal(buf, "ab\\\"c");
    gateway_events_json_str(&k, "\n", 1); /* \u000a: 6 more do not fit */
    assert_true(k.full);
    assert_int_equal(k.n, 5);
    assert_string_equal(buf, "ab\\\"c");
    gateway_events_json_u64(&k, 1);
    assert_int_equal(k.n, 5);

    gateway_events_json_t u = {.p = buf, .cap = sizeof buf};
    gateway_events_json_u64(&u, UINT64_MAX); /* 20 digits */
    assert_true(u.full);
    assert_int_equal(u.n, 0);
}

static void test_json_escape(void **state)
{
    (void) state;
    char out[64];
    size_t n = 0;
    assert_int_equal(gateway_events_json_escape(out, sizeof out, &n, "a\"b\\c\n\x01", 7), 0);
    assert_string_equal(out, "a\\\"b\\\\c\\u000a\\u0001");
    n = 0;
    assert_int_equal(gateway_events_json_escape(out, sizeof out, &n, "caf\xc3\xa9", 5), 0);
    assert_string_equal(out, "caf\xc3\xa9"); /* UTF-8 passes */
    n = 0;
    assert_int_equal(gateway_events_json_escape(out, sizeof out, &n, "\xff", 1), 0);
    assert_string_equal(out, "\\u00ff"); /* not UTF-8: escaped octets */
    n = 0;
    char small[4];
    assert_int_equal(gateway_events_json_escape(small, sizeof small, &n, "abcdef", 6), -1);
    assert_int_equal(n, 0);
}

/* ---------------------------------------------------------------- the log tap */

typedef struct {
    gateway_events_t *logs;
    int polls;
    bool seen;
} s_tap_ctx_t;

static void *s_logger(void *arg)
{
    (void) arg;
    router_log_write(ROUTER_LOG_WARN, "tester", "a line from another thread \"quoted\"");
    return NULL;
}

/* Polls the stream until the line arrived; the hang guard is the count. */
static void s_poll(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    s_tap_ctx_t *c = ud;
    gateway_events_stats_t st;
    gateway_events_stats(c->logs, &st);
    if (st.newest >= 1 || ++c->polls > 3000) {
        c->seen = st.newest >= 1;
        router_loop_stop(loop);
        return;
    }
    assert_true(router_loop_timer_add(loop, 10, s_poll, c) != 0);
}

static void test_log_tap(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *logs = gateway_events_new(loop, &(gateway_events_opts_t){.name = "logs"});
    gateway_log_tap_t *tap = gateway_log_tap_new(loop, logs);
    assert_non_null(tap);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_logger, NULL), 0);
    s_tap_ctx_t c = {.logs = logs};
    assert_true(router_loop_timer_add(loop, 1, s_poll, &c) != 0);
    assert_int_equal(router_loop_run(loop), 0);
    pthread_join(t, NULL);
    assert_true(c.seen);
    gateway_log_tap_destroy(&tap);
    gateway_log_tap_destroy(&tap);
    router_log_write(ROUTER_LOG_WARN, "tester", "after the tap: reaches no stream");
    gateway_events_destroy(&logs);
    router_loop_destroy(&loop);
}

/* ---------------------------------------------------------------- subscribers over sockets */

/* A stream routed on GET /api/events of an HTTP server whose loop runs on
 * a thread of its own; the test thread reaches the stream through posts. */
typedef struct {
    router_loop_t *loop;
    router_metrics_t *metrics;
    gateway_http_t *gw;
    gateway_events_t *ev;
    pthread_t thread;
    int rc;        /* router_loop_run's result */
    uint16_t port; /* where it listens */
} s_srv_t;

/* Runs the loop, then lets go of everything on the loop's own thread (an
 * io_uring loop is destroyed by the thread that ran it): the server first,
 * then the stream, which frees the subscribers the server let go. */
static void *s_srv_main(void *arg)
{
    s_srv_t *s = arg;
    s->rc = router_loop_run(s->loop);
    gateway_http_destroy(&s->gw);
    gateway_events_destroy(&s->ev);
    router_loop_destroy(&s->loop);
    return NULL;
}

/* A server whose loop has options `lo` (NULL: defaults). */
static s_srv_t *s_srv_start_on(const gateway_events_opts_t *eo, const router_loop_opts_t *lo)
{
    s_srv_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->loop = router_loop_new(lo);
    assert_non_null(s->loop);
    s->metrics = router_metrics_new();
    assert_non_null(s->metrics);
    s->gw = gateway_http_new(s->loop, &(gateway_http_opts_t){.metrics = s->metrics});
    assert_non_null(s->gw);
    gateway_events_opts_t o = *eo;
    o.metrics = s->metrics;
    s->ev = gateway_events_new(s->loop, &o);
    assert_non_null(s->ev);
    assert_int_equal(gateway_route_events(s->gw, s->ev), 0);
    router_addr_t addr, bound;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    assert_int_equal(gateway_http_listen(s->gw, &addr, &bound), 0);
    s->port = router_addr_port(&bound);
    assert_int_equal(pthread_create(&s->thread, NULL, s_srv_main, s), 0);
    return s;
}

static s_srv_t *s_srv_start(const gateway_events_opts_t *eo)
{
    return s_srv_start_on(eo, NULL);
}

static void s_srv_stop(s_srv_t **sp)
{
    s_srv_t *s = *sp;
    router_loop_stop(s->loop);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(s->rc, 0);
    router_metrics_destroy(&s->metrics);
    free(s);
    *sp = NULL;
}

/* fn(s, arg) on the loop thread; returns once it ran. */
typedef void (*s_loop_fn)(s_srv_t *s, void *arg);

typedef struct {
    s_srv_t *s;
    s_loop_fn fn;
    void *arg;
    sem_t done;
} s_call_t;

static void s_call_run(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_call_t *c = arg;
    c->fn(c->s, c->arg);
    sem_post(&c->done);
}

static void s_on_loop(s_srv_t *s, s_loop_fn fn, void *arg)
{
    s_call_t c = {.s = s, .fn = fn, .arg = arg};
    assert_int_equal(sem_init(&c.done, 0, 0), 0);
    assert_int_equal(router_loop_post_wait(s->loop, s_call_run, &c, 0), 0);
    while (sem_wait(&c.done) != 0)
        assert_int_equal(errno, EINTR);
    sem_destroy(&c.done);
}

typedef struct {
    const char *type, *json;
    uint64_t id;
} s_pub_t;

static void s_pub_run(s_srv_t *s, void *arg)
{
    s_pub_t *p = arg;
    p->id = gateway_events_publish(s->ev, p->type, p->json);
}

/* Publishes {"type":"agent_start","n":<n>,"pad":"<pad x's>"}; returns its id. */
static uint64_t s_publish_n(s_srv_t *s, unsigned n, size_t pad)
{
    char *json = malloc(pad + 64);
    assert_non_null(json);
    int k = snprintf(json, 64, "{\"n\":%u,\"pad\":\"", n);
    memset(json + k, 'x', pad);
    memcpy(json + (size_t) k + pad, "\"}", 3);
    s_pub_t p = {.type = "agent_start", .json = json};
    s_on_loop(s, s_pub_run, &p);
    free(json);
    assert_true(p.id > 0);
    return p.id;
}

static void s_stats_run(s_srv_t *s, void *arg)
{
    gateway_events_stats(s->ev, arg);
}

static gateway_events_stats_t s_stats(s_srv_t *s)
{
    gateway_events_stats_t st;
    s_on_loop(s, s_stats_run, &st);
    return st;
}

/* Waits until the stream has `n` subscribers (they leave when the loop
 * saw their connection close). */
static void s_wait_subscribers(s_srv_t *s, uint32_t n)
{
    for (int i = 0; s_stats(s).subscribers != n; i++) {
        assert_true(i < HANG_GUARD_S * 1000);
        usleep(1000);
    }
}

typedef struct {
    char text[8192];
    long len;
} s_render_t;

static void s_render_run(s_srv_t *s, void *arg)
{
    s_render_t *r = arg;
    r->len = router_metrics_render(s->metrics, r->text, sizeof r->text);
}

/* Whether /metrics' text holds the sample line `line` ("name{labels} v"). */
static bool s_metrics_has(s_srv_t *s, const char *line)
{
    s_render_t *r = calloc(1, sizeof *r);
    assert_non_null(r);
    s_on_loop(s, s_render_run, r);
    assert_true(r->len > 0);
    size_t n = strlen(line);
    bool found = false;
    for (const char *p = r->text; (p = strstr(p, line)) != NULL; p += n)
        if ((p == r->text || p[-1] == '\n') && p[n] == '\n')
            found = true;
    free(r);
    return found;
}

/* ---------------------------------------------------------------- the client */

typedef struct {
    int fd;
    size_t len;        /* octets in buf not consumed yet */
    int keepalives;    /* ": keep-alive" lines seen */
    char buf[1u << 18];
} s_cli_t;

/* A connection to the server; rcvbuf > 0 shrinks its receive buffer first
 * (a reader that stops reading then holds little in the kernel). */
static s_cli_t *s_cli_connect(s_srv_t *s, int rcvbuf)
{
    s_cli_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct timeval tv = {.tv_sec = HANG_GUARD_S};
    assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(s->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *) &sin, sizeof sin), 0);
    return c;
}

static void s_cli_close(s_cli_t **cp)
{
    if (*cp) {
        close((*cp)->fd);
        free(*cp);
        *cp = NULL;
    }
}

static void s_cli_send(s_cli_t *c, const char *text)
{
    size_t len = strlen(text);
    assert_int_equal(send(c->fd, text, len, MSG_NOSIGNAL), (ssize_t) len);
}

/* Reads more; returns the octets read, 0 at the end (EOF or reset). */
static size_t s_cli_more(s_cli_t *c)
{
    if (c->len == sizeof c->buf)
        fail_msg("client buffer full");
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            fail_msg("nothing read within %d s", HANG_GUARD_S);
        if (n < 0 && errno == ECONNRESET)
            return 0;
        assert_true(n >= 0);
        c->len += (size_t) n;
        return (size_t) n;
    }
}

static void s_cli_consume(s_cli_t *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* Reads a response head into head[cap] (NUL-terminated); returns its status,
 * 0 when the connection ended first. */
static int s_cli_head(s_cli_t *c, char *head, size_t cap)
{
    char *end;
    while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (s_cli_more(c) == 0)
            return 0;
    size_t n = (size_t) (end - c->buf) + 4;
    assert_true(n < cap);
    memcpy(head, c->buf, n);
    head[n] = '\0';
    s_cli_consume(c, n);
    int status = 0;
    assert_int_equal(sscanf(head, "HTTP/1.1 %d", &status), 1);
    return status;
}

/* Reads the whole body of a response with Content-Length into body[cap]. */
static void s_cli_body(s_cli_t *c, const char *head, char *body, size_t cap)
{
    const char *cl = strcasestr(head, "\r\ncontent-length:");
    assert_non_null(cl);
    size_t n = strtoul(cl + 17, NULL, 10);
    assert_true(n < cap);
    while (c->len < n)
        assert_true(s_cli_more(c) > 0);
    memcpy(body, c->buf, n);
    body[n] = '\0';
    s_cli_consume(c, n);
}

/* GET /api/events with `headers` ("Name: value\r\n"…, or ""), on a new
 * connection; returns the status, the head in head[cap]. */
static int s_request(s_cli_t *c, const char *method, const char *headers, char *head, size_t cap)
{
    char req[512];
    snprintf(req, sizeof req, "%s /api/events HTTP/1.1\r\nHost: t\r\n%s\r\n", method, headers);
    s_cli_send(c, req);
    return s_cli_head(c, head, cap);
}

/* A subscriber: connected, asked, answered 200 text/event-stream. */
static s_cli_t *s_subscribe(s_srv_t *s, const char *headers, int rcvbuf)
{
    s_cli_t *c = s_cli_connect(s, rcvbuf);
    char head[2048];
    assert_int_equal(s_request(c, "GET", headers, head, sizeof head), 200);
    assert_non_null(strcasestr(head, "\r\ncontent-type: text/event-stream\r\n"));
    assert_non_null(strcasestr(head, "\r\ncache-control: no-cache\r\n"));
    assert_non_null(strcasestr(head, "\r\nconnection: close\r\n"));
    assert_null(strcasestr(head, "content-length"));
    return c;
}

/* The next event: its id and its data (the data lines joined with LF) in
 * data[cap]. Comment lines are counted (keep-alives) and skipped. Returns
 * false when the stream ended first. */
static bool s_cli_event(s_cli_t *c, uint64_t *id, char *data, size_t cap)
{
    bool any = false; /* a field of this event was read */
    data[0] = '\0';
    for (;;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len)) != NULL) {
            size_t n = (size_t) (nl - c->buf);
            if (n == 0) { /* the blank line: dispatch */
                s_cli_consume(c, 1);
                if (any)
                    return true;
                continue;
            }
            if (c->buf[0] == ':') {
                assert_true(n == 12 && !memcmp(c->buf, ": keep-alive", 12));
                c->keepalives++;
            } else if (n > 4 && !memcmp(c->buf, "id: ", 4)) {
                *id = strtoull(c->buf + 4, NULL, 10);
                any = true;
            } else {
                assert_true(n > 6 && !memcmp(c->buf, "data: ", 6));
                size_t have = strlen(data);
                assert_true(have + n < cap);
                if (have)
                    data[have++] = '\n';
                memcpy(data + have, c->buf + 6, n - 6);
                data[have + n - 6] = '\0';
                any = true;
            }
            s_cli_consume(c, n + 1);
        }
        if (s_cli_more(c) == 0)
            return false;
    }
}

/* Expects event `id` with data exactly `want`. */
#define S_DATA_MAX (128u * 1024)
static void s_expect_event(s_cli_t *c, uint64_t id, const char *want)
{
    uint64_t got = 0;
    char *data = malloc(S_DATA_MAX);
    assert_non_null(data);
    assert_true(s_cli_event(c, &got, data, S_DATA_MAX));
    assert_int_equal(got, id);
    assert_string_equal(data, want);
    free(data);
}

/* Expects event `id` published by s_publish_n(s, id, pad). */
static void s_expect_n(s_cli_t *c, uint64_t id, size_t pad)
{
    char *want = malloc(S_DATA_MAX);
    assert_non_null(want);
    int k = snprintf(want, S_DATA_MAX, "{\"type\":\"agent_start\",\"n\":%llu,\"pad\":\"",
                     (unsigned long long) id);
    assert_true(pad + (size_t) k + 3 < S_DATA_MAX);
    memset(want + k, 'x', pad);
    memcpy(want + (size_t) k + pad, "\"}", 3);
    s_expect_event(c, id, want);
    free(want);
}

/* Reads until the server ends the stream; returns the events read on the
 * way, which must be consecutive from `next`. */
static uint64_t s_cli_until_end(s_cli_t *c, uint64_t next)
{
    uint64_t id = 0, n = 0;
    char *data = malloc(S_DATA_MAX);
    assert_non_null(data);
    while (s_cli_event(c, &id, data, S_DATA_MAX)) {
        assert_int_equal(id, next + n);
        n++;
    }
    free(data);
    return n;
}

/* ---------------------------------------------------------------- subscriber cases */

/* WIRE §18.3: a subscriber without Last-Event-ID starts with the next
 * event; with N it gets every event after N the ring holds, or first a
 * stream_gap (evicted, with the count lost; unknown_id for an id never
 * given) whose id is the one before the oldest kept; then the live ones. */
static void test_sub_resume(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.ring_events = 4});
    for (unsigned i = 1; i <= 6; i++)
        assert_int_equal(s_publish_n(s, i, 1), i); /* the ring keeps 3..6 */
    s_cli_t *within = s_subscribe(s, "Last-Event-ID: 4\r\n", 0);
    s_expect_n(within, 5, 1);
    s_expect_n(within, 6, 1);
    s_cli_t *twenty = s_subscribe(s, "Last-Event-ID: 00000000000000000005\r\n", 0);
    s_expect_n(twenty, 6, 1);
    s_cli_t *evicted = s_subscribe(s, "Last-Event-ID: 1\r\n", 0);
    s_expect_event(evicted, 2,
                   "{\"type\":\"stream_gap\",\"reason\":\"evicted\",\"last_event_id\":1,"
                   "\"lost\":1,\"first_kept\":3}");
    s_cli_t *zero = s_subscribe(s, "Last-Event-ID: 0\r\n", 0);
    s_expect_event(zero, 2,
                   "{\"type\":\"stream_gap\",\"reason\":\"evicted\",\"last_event_id\":0,"
                   "\"lost\":2,\"first_kept\":3}");
    s_cli_t *unknown = s_subscribe(s, "Last-Event-ID: 18446744073709551615\r\n", 0);
    s_expect_event(unknown, 2,
                   "{\"type\":\"stream_gap\",\"reason\":\"unknown_id\","
                   "\"last_event_id\":18446744073709551615,\"lost\":null,\"first_kept\":3}");
    for (uint64_t id = 3; id <= 6; id++) {
        s_expect_n(evicted, id, 1);
        s_expect_n(zero, id, 1);
        s_expect_n(unknown, id, 1);
    }
    s_cli_t *from_gap = s_subscribe(s, "Last-Event-ID: 2\r\n", 0); /* no gap again */
    s_expect_n(from_gap, 3, 1);
    s_cli_t *newest = s_subscribe(s, "Last-Event-ID: 6\r\n", 0);
    s_cli_t *fresh = s_subscribe(s, "", 0);
    /* Refused ids: not decimal, empty, more than 20 digits, past 2^64-1,
     * and two fields (combined, RFC 9110 §5.3, "3, 4": not one id; taking
     * either would resume where the client did not ask). */
    const char *bad[] = {"x1", "-1", "+1", "1 2", "0x10", "", "000000000000000000001",
                         "18446744073709551616", "99999999999999999999",
                         "3\r\nLast-Event-ID: 4", "3\r\nlast-event-id: 3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_cli_t *c = s_cli_connect(s, 0);
        char hdr[128], head[2048], body[512];
        snprintf(hdr, sizeof hdr, "Last-Event-ID: %s\r\n", bad[i]);
        assert_int_equal(s_request(c, "GET", hdr, head, sizeof head), 400);
        s_cli_body(c, head, body, sizeof body);
        assert_string_equal(body, "{\"error\":\"Last-Event-ID must be an event id (decimal)\","
                                  "\"code\":\"bad_last_event_id\"}");
        s_cli_close(&c);
    }
    assert_int_equal(s_stats(s).subscribers, 8); /* the refusals took none */
    assert_true(s_metrics_has(s, "kith_sse_subscribers{stream=\"events\"} 8"));
    assert_int_equal(s_publish_n(s, 7, 1), 7);
    s_cli_t *all[] = {within, twenty, evicted, zero, unknown, from_gap, newest, fresh};
    for (size_t i = 0; i < 8; i++) {
        if (all[i] == from_gap)
            for (uint64_t id = 4; id <= 6; id++)
                s_expect_n(from_gap, id, 1);
        s_expect_n(all[i], 7, 1);
        s_cli_close(&all[i]);
    }
    s_wait_subscribers(s, 0);
    assert_true(s_metrics_has(s, "kith_sse_subscribers{stream=\"events\"} 0"));
    assert_true(s_metrics_has(s, "kith_sse_events_total{stream=\"events\"} 7"));
    s_srv_stop(&s);
}

/* At subscribers_max subscribers the next is refused 503
 * too_many_subscribers with Retry-After: 5 (WIRE §18.1); one leaving makes
 * room, whichever it is in the stream's list. */
static void test_sub_bound(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.subscribers_max = 3});
    s_cli_t *a = s_subscribe(s, "", 0), *b = s_subscribe(s, "", 0), *c = s_subscribe(s, "", 0);
    s_cli_t *d = s_cli_connect(s, 0);
    char head[2048], body[512];
    assert_int_equal(s_request(d, "GET", "", head, sizeof head), 503);
    assert_non_null(strcasestr(head, "\r\nretry-after: 5\r\n"));
    s_cli_body(d, head, body, sizeof body);
    assert_string_equal(body, "{\"error\":\"this stream has all the subscribers it takes\","
                              "\"code\":\"too_many_subscribers\"}");
    s_cli_close(&d);
    s_cli_close(&b); /* the middle of the list */
    s_wait_subscribers(s, 2);
    assert_int_equal(s_publish_n(s, 1, 0), 1);
    s_expect_n(a, 1, 0);
    s_expect_n(c, 1, 0);
    s_cli_close(&c); /* the head */
    s_wait_subscribers(s, 1);
    d = s_subscribe(s, "", 0);
    s_cli_t *e = s_subscribe(s, "", 0);
    s_cli_close(&a); /* the tail */
    s_wait_subscribers(s, 2);
    assert_int_equal(s_publish_n(s, 2, 0), 2);
    s_expect_n(d, 2, 0);
    s_expect_n(e, 2, 0);
    s_cli_close(&d);
    s_cli_close(&e);
    s_wait_subscribers(s, 0);
    s_srv_stop(&s);
}

/* Keep-alive comment lines go out every keepalive_ms, between events. */
static void test_sub_keepalive(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.keepalive_ms = 10});
    s_cli_t *c = s_subscribe(s, "", 0);
    while (c->keepalives < 2) {
        char *nl;
        while (!(nl = memchr(c->buf, '\n', c->len)))
            assert_true(s_cli_more(c) > 0);
        size_t n = (size_t) (nl - c->buf);
        assert_true(n == 12 && !memcmp(c->buf, ": keep-alive", 12));
        c->keepalives++;
        s_cli_consume(c, n + 1);
    }
    assert_int_equal(s_publish_n(s, 1, 8), 1);
    s_expect_n(c, 1, 8); /* whole, whatever comments came around it */
    s_cli_close(&c);
    s_srv_stop(&s);
}

/* The errno with which the stream's keep-alive timer is refused
 * (gateway/events.h's seam), 0 for none; set by the test thread, read on
 * the loop's. */
static _Atomic int s_timer_fault;

int gateway_events_timer_fault(void)
{
    return s_timer_fault;
}

/* The keep-alive timer cannot be re-armed: each subscriber gets a comment
 * naming the reason and an orderly end (FIN, not a reset), counted and
 * logged; a subscribe while the timer is still refused is 503
 * keepalive_unavailable, and once the loop takes it again the stream
 * serves with keep-alives. (Before, the re-arm's failure went unseen and
 * the stream went silent for good.) */
static void test_sub_keepalive_lost(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.keepalive_ms = 10});
    s_cli_t *c = s_subscribe(s, "", 0);
    assert_int_equal(s_publish_n(s, 1, 4), 1);
    s_expect_n(c, 1, 4);
    s_timer_fault = ENOSPC;
    /* Keep-alives, then the reason, then the end. */
    static const char reason[] = ": closing: keep-alives unavailable (No space left on device)";
    for (;;) {
        char *nl;
        while (!(nl = memchr(c->buf, '\n', c->len)))
            assert_true(s_cli_more(c) > 0);
        size_t n = (size_t) (nl - c->buf);
        if (n == 12 && !memcmp(c->buf, ": keep-alive", 12)) {
            s_cli_consume(c, n + 1);
            continue;
        }
        assert_int_equal(n, sizeof reason - 1);
        assert_memory_equal(c->buf, reason, n);
        s_cli_consume(c, n + 1);
        break;
    }
    char rest[16];
    ssize_t r;
    while ((r = recv(c->fd, rest, sizeof rest, 0)) < 0 && errno == EINTR)
        ;
    assert_int_equal(r, 0); /* FIN: closed on purpose, not cut */
    s_cli_close(&c);
    s_wait_subscribers(s, 0);
    gateway_events_stats_t st = s_stats(s);
    assert_int_equal(st.keepalive_lost, 1);
    assert_int_equal(st.cut, 0);
    assert_true(s_metrics_has(s, "kith_sse_keepalive_lost_total{stream=\"events\"} 1"));

    c = s_cli_connect(s, 0);
    char head[2048], body[512];
    assert_int_equal(s_request(c, "GET", "", head, sizeof head), 503);
    assert_non_null(strcasestr(head, "\r\nretry-after: 5\r\n"));
    s_cli_body(c, head, body, sizeof body);
    assert_non_null(strstr(body, "\"code\":\"keepalive_unavailable\""));
    s_cli_close(&c);

    s_timer_fault = 0;
    c = s_subscribe(s, "Last-Event-ID: 1\r\n", 0);
    assert_int_equal(s_publish_n(s, 2, 0), 2);
    s_expect_n(c, 2, 0);
    for (int seen = 0; seen < 2;) { /* the timer runs again */
        char *nl;
        while (!(nl = memchr(c->buf, '\n', c->len)))
            assert_true(s_cli_more(c) > 0);
        size_t n = (size_t) (nl - c->buf);
        assert_true(n == 12 && !memcmp(c->buf, ": keep-alive", 12));
        seen++;
        s_cli_consume(c, n + 1);
    }
    s_cli_close(&c);
    s_srv_stop(&s);
}

/* HEAD gets the head alone and the connection closes; no subscriber. */
static void test_sub_head(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){0});
    s_cli_t *c = s_cli_connect(s, 0);
    char head[2048];
    assert_int_equal(s_request(c, "HEAD", "", head, sizeof head), 200);
    assert_non_null(strcasestr(head, "\r\ncontent-type: text/event-stream\r\n"));
    assert_int_equal(s_publish_n(s, 1, 0), 1);
    assert_int_equal(s_cli_more(c), 0); /* no body: the end */
    assert_int_equal(c->len, 0);
    s_cli_close(&c);
    assert_int_equal(s_stats(s).subscribers, 0);
    s_srv_stop(&s);
}

/* A client gone in the middle of an event (a reset, and a plain close):
 * its subscriber leaves, and the others read on, every event whole. */
static void test_sub_gone_mid_event(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){0});
    s_cli_t *stays = s_subscribe(s, "", 0);
    s_cli_t *resets = s_subscribe(s, "", 0), *closes = s_subscribe(s, "", 0);
    assert_int_equal(s_publish_n(s, 1, 3000), 1);
    s_expect_n(stays, 1, 3000);
    while (resets->len < 100)
        assert_true(s_cli_more(resets) > 0);
    while (closes->len < 100)
        assert_true(s_cli_more(closes) > 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(resets->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    s_cli_close(&resets);
    s_cli_close(&closes);
    for (unsigned i = 2; s_stats(s).subscribers != 1; i++) {
        assert_true(i < 100000);
        assert_int_equal(s_publish_n(s, i, 3000), i);
        s_expect_n(stays, i, 3000);
    }
    uint64_t next = s_stats(s).newest + 1;
    assert_int_equal(s_publish_n(s, (unsigned) next, 10), next);
    s_expect_n(stays, next, 10);
    assert_int_equal(s_stats(s).cut, 0); /* they left; none was cut */
    s_cli_close(&stays);
    s_srv_stop(&s);
}

/* A live subscriber that stops reading is cut once its unsent bytes would
 * pass unsent_max (its connection aborted, counted); one that reads gets
 * every event, in order, before and after. */
static void test_sub_slow_cut(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.unsent_max = 8192});
    s_cli_t *reader = s_subscribe(s, "", 0);
    s_cli_t *stalled = s_subscribe(s, "", 2048);
    uint64_t id = 0;
    for (int batch = 0; s_stats(s).cut == 0; batch++) {
        assert_true(batch < 100000);
        for (int i = 0; i < 8; i++) {
            id++;
            assert_int_equal(s_publish_n(s, (unsigned) id, 400), id);
        }
        for (uint64_t k = id - 7; k <= id; k++)
            s_expect_n(reader, k, 400);
    }
    assert_int_equal(s_stats(s).cut, 1);
    assert_true(s_metrics_has(s, "kith_sse_cut_total{stream=\"events\"} 1"));
    /* What the stalled one had in flight is whole and in order; then the end. */
    assert_true(s_cli_until_end(stalled, 1) < id);
    s_cli_close(&stalled);
    s_wait_subscribers(s, 1);
    assert_true(s_metrics_has(s, "kith_sse_subscribers{stream=\"events\"} 1"));
    id++;
    assert_int_equal(s_publish_n(s, (unsigned) id, 400), id);
    s_expect_n(reader, id, 400);
    s_cli_close(&reader);
    s_srv_stop(&s);
}

/* A replay larger than unsent_max and than what the kernel buffers (MiBs
 * on loopback, hence the large events) is paced by the connection's
 * drain, not cut, also when live events come meanwhile; a replaying
 * subscriber the ring overtakes (its next event evicted) is cut. */
#define S_BIG 60000u /* pad of the large events: 256 of them are ~15 MiB */
static void test_sub_replay_paced(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(
        &(gateway_events_opts_t){.ring_events = 256, .unsent_max = 2 * GATEWAY_EVENTS_JSON_MAX});
    for (unsigned i = 1; i <= 257; i++)
        assert_int_equal(s_publish_n(s, i, S_BIG), i); /* the ring keeps 2..257 */
    s_cli_t *paced = s_subscribe(s, "Last-Event-ID: 0\r\n", 2048);
    assert_int_equal(s_publish_n(s, 258, S_BIG), 258); /* live, while it replays */
    assert_int_equal(s_stats(s).cut, 0);
    s_expect_event(paced, 1, "{\"type\":\"stream_gap\",\"reason\":\"evicted\","
                             "\"last_event_id\":0,\"lost\":1,\"first_kept\":2}");
    for (uint64_t id = 2; id <= 258; id++)
        s_expect_n(paced, id, S_BIG);
    assert_int_equal(s_stats(s).cut, 0);

    s_cli_t *overtaken = s_subscribe(s, "Last-Event-ID: 3\r\n", 2048);
    uint64_t id = 258;
    while (s_stats(s).cut == 0) {
        assert_true(id < 100000);
        id++;
        assert_int_equal(s_publish_n(s, (unsigned) id, S_BIG), id);
        s_expect_n(paced, id, S_BIG);
    }
    assert_int_equal(s_stats(s).cut, 1);
    /* What reached it (little: its buffer is smaller than an event) was
     * whole and in order from 4, short of where the ring overtook it;
     * then the end. */
    uint64_t n = s_cli_until_end(overtaken, 4);
    assert_true(4 + n < s_stats(s).oldest);
    s_cli_close(&overtaken);
    s_wait_subscribers(s, 1);
    s_cli_close(&paced);
    s_srv_stop(&s);
}

/* An event larger than a subscriber's whole unsent bound can never be
 * sent to it: a live subscriber is cut, and so is a replaying one (which
 * would otherwise wait forever for a drain of an empty queue); the
 * events around it reach those that can take them. */
static void test_sub_event_over_bound(void **state)
{
    (void) state;
    /* No keep-alives: the hang guard ends a stalled read. */
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.unsent_max = 4096, .keepalive_ms = 3600000});
    assert_int_equal(s_publish_n(s, 1, 10), 1);
    assert_int_equal(s_publish_n(s, 2, 5000), 2);
    s_cli_t *replaying = s_subscribe(s, "Last-Event-ID: 0\r\n", 0);
    s_expect_n(replaying, 1, 10);
    assert_int_equal(s_cli_until_end(replaying, 2), 0);
    s_cli_close(&replaying);
    s_wait_subscribers(s, 0);
    assert_int_equal(s_stats(s).cut, 1);
    s_cli_t *live = s_subscribe(s, "", 0);
    assert_int_equal(s_publish_n(s, 3, 5000), 3);
    assert_int_equal(s_cli_until_end(live, 4), 0);
    s_cli_close(&live);
    s_wait_subscribers(s, 0);
    assert_int_equal(s_stats(s).cut, 2);
    s_cli_t *after = s_subscribe(s, "Last-Event-ID: 3\r\n", 0);
    assert_int_equal(s_publish_n(s, 4, 10), 4);
    s_expect_n(after, 4, 10);
    s_cli_close(&after);
    s_srv_stop(&s);
}

/* Arms or disarms allocation failures on the loop thread. */
static void s_arm_run(s_srv_t *s, void *arg)
{
    (void) s;
    long *skip = arg;
    if (*skip >= 0)
        alloc_fail_arm(*skip);
    else
        *skip = (long) alloc_fail_disarm();
}

/* Out of memory at each allocation a subscribe with a gap makes on the loop
 * thread: it is answered 500 internal_error, or its connection ends (at
 * any point of the stream), or it streams as asked; the stream serves the
 * next one, and LSan sees nothing leaked. */
static void test_sub_without_memory(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.ring_events = 4});
    for (unsigned i = 1; i <= 6; i++)
        assert_int_equal(s_publish_n(s, i, 1), i);
    bool whole = false;
    unsigned refused = 0, ended = 0;
    for (long i = 0; !whole; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_cli_t *c = s_cli_connect(s, 0);
        /* Armed once the server has the connection: each run fails the
         * same allocation, counted from the request's first read. */
        for (int k = 0; !s_metrics_has(s, "kith_http_connections_open 1"); k++) {
            assert_true(k < HANG_GUARD_S * 1000);
            usleep(1000);
        }
        long arm = i;
        s_on_loop(s, s_arm_run, &arm);
        char head[2048];
        /* The server may have cut the connection already (a failure at
         * its accept): the send then fails, and the read sees the end. */
        const char *req = "GET /api/events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 1\r\n\r\n";
        (void) send(c->fd, req, strlen(req), MSG_NOSIGNAL);
        int status = s_cli_head(c, head, sizeof head);
        uint64_t got = 0; /* events read of the 5 asked for: the gap, 3..6 */
        if (status == 200) {
            uint64_t id = 0;
            char data[4096];
            while (got < 5 && s_cli_event(c, &id, data, sizeof data))
                assert_int_equal(id, 2 + got++);
        } else if (status == 500) {
            char body[512];
            s_cli_body(c, head, body, sizeof body);
            assert_non_null(strstr(body, "\"code\":\"internal_error\""));
            refused++;
        } else {
            assert_int_equal(status, 0);
        }
        long failed = -1;
        s_on_loop(s, s_arm_run, &failed);
        if (failed == 0) {
            assert_int_equal(status, 200);
            assert_int_equal(got, 5);
            whole = true;
        } else if (status != 500) {
            ended++;
        }
        s_cli_close(&c);
        s_wait_subscribers(s, 0);
    }
    assert_true(refused > 0 && ended > 0);
    s_cli_t *c = s_subscribe(s, "Last-Event-ID: 5\r\n", 0);
    s_expect_n(c, 6, 1);
    s_cli_close(&c);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- one copy for all */

/* The loop's bytes queued unsent on all connections (WIRE §9.2's bound). */
static void s_unsent_run(s_srv_t *s, void *arg)
{
    router_loop_stats_t st;
    router_loop_stats(s->loop, &st);
    *(size_t *) arg = st.unsent_total;
}

static size_t s_unsent(s_srv_t *s)
{
    size_t n = 0;
    s_on_loop(s, s_unsent_run, &n);
    return n;
}

/* Waits until nothing is queued unsent on any connection. */
static void s_wait_unsent_zero(s_srv_t *s)
{
    for (int i = 0; s_unsent(s) != 0; i++) {
        assert_true(i < HANG_GUARD_S * 1000);
        usleep(1000);
    }
}

typedef struct {
    const char *json;
    uint64_t id;
    size_t before, after; /* the loop's unsent total around the publish */
    size_t flen;          /* the event's frame */
    uint64_t cuts;        /* the loop's slow-consumer cuts after it */
} s_pub_shared_t;

/* Publishes p->json and reads the loop's unsent total on both sides of it,
 * in one go on the loop thread: no write completes in between. */
static void s_pub_shared_run(s_srv_t *s, void *arg)
{
    s_pub_shared_t *p = arg;
    router_loop_stats_t st;
    router_loop_stats(s->loop, &st);
    p->before = st.unsent_total;
    p->id = gateway_events_publish(s->ev, "agent_start", p->json);
    if (!gateway_events_frame(s->ev, p->id, &p->flen))
        p->flen = 0; /* checked on the test's thread */
    router_loop_stats(s->loop, &st);
    p->after = st.unsent_total;
    p->cuts = st.slow_consumer_cuts;
}

/* DESIGN §12, WIRE §9.2: an event queued to many subscribers is one
 * buffer, counted once in the loop's bound on all connections' unsent
 * bytes, so a burst to many subscribers does not make them look like
 * slow consumers. Four subscribers, a loop bound of 128 KiB and a 60 KB
 * event: one copy (60 KB) is well inside it; four copies (240 KB) were
 * not, and the third and fourth subscriber were cut for holding more than
 * their share (32 KiB) though they read. Each reads the event whole; once
 * all have it, nothing is left unsent; the ring still replays it
 * byte for byte; once they are gone and the ring let it go, LSan sees it
 * freed. */
#define S_SHARED_PAD 60000u
static void test_sub_shared_once(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start_on(&(gateway_events_opts_t){.ring_events = 2},
                                &(router_loop_opts_t){.send_total_limit = 128u * 1024});
    s_cli_t *c[4];
    for (int i = 0; i < 4; i++)
        c[i] = s_subscribe(s, "", 0);
    s_wait_unsent_zero(s); /* the heads went out */
    char *json = malloc(S_SHARED_PAD + 64);
    assert_non_null(json);
    int k = snprintf(json, 64, "{\"n\":1,\"pad\":\"");
    memset(json + k, 'x', S_SHARED_PAD);
    memcpy(json + (size_t) k + S_SHARED_PAD, "\"}", 3);
    s_pub_shared_t p = {.json = json};
    s_on_loop(s, s_pub_shared_run, &p);
    free(json);
    assert_int_equal(p.id, 1);
    assert_true(p.flen > S_SHARED_PAD);
    assert_int_equal(p.before, 0);
    assert_int_equal(p.after, p.flen); /* once, not four times */
    assert_int_equal(p.cuts, 0);
    for (int i = 0; i < 4; i++)
        s_expect_n(c[i], 1, S_SHARED_PAD);
    assert_int_equal(s_stats(s).cut, 0);
    s_wait_unsent_zero(s); /* sent by all: no queue holds it */

    /* The next event follows it on every stream, and a reconnect from 0
     * is replayed both from the ring. */
    assert_int_equal(s_publish_n(s, 2, 10), 2);
    for (int i = 0; i < 4; i++)
        s_expect_n(c[i], 2, 10);
    s_cli_t *again = s_subscribe(s, "Last-Event-ID: 0\r\n", 0);
    s_expect_n(again, 1, S_SHARED_PAD);
    s_expect_n(again, 2, 10);
    s_cli_close(&again);
    for (int i = 0; i < 4; i++)
        s_cli_close(&c[i]);
    s_wait_subscribers(s, 0);
    s_wait_unsent_zero(s);
    for (unsigned i = 3; i <= 4; i++) /* the ring lets 1 and 2 go */
        assert_int_equal(s_publish_n(s, i, 1), i);
    assert_int_equal(s_stats(s).oldest, 3);
    s_srv_stop(&s);
}

static void s_loop_stats_run(s_srv_t *s, void *arg)
{
    router_loop_stats(s->loop, arg);
}

/* A subscriber that stops reading while all connections together hold
 * the loop's send_total_limit is cut by the connection layer for holding
 * more than its share (its own unsent_max is far off): that is a slow
 * consumer cut of the stream too, counted in kith_sse_cut_total and
 * logged with the event it lost (it was neither); a reader goes on. */
static void test_sub_share_cut_counted(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start_on(&(gateway_events_opts_t){.keepalive_ms = 3600000},
                                &(router_loop_opts_t){.send_total_limit = 64u * 1024});
    s_cli_t *stalled = s_subscribe(s, "", 2048);
    router_loop_stats_t ls = {0};
    uint64_t id = 0;
    for (;;) {
        s_on_loop(s, s_loop_stats_run, &ls);
        if (ls.unsent_total_cuts > 0)
            break;
        assert_true(id < 10000);
        id++;
        assert_int_equal(s_publish_n(s, (unsigned) id, 20000), id);
    }
    assert_int_equal(ls.unsent_total_cuts, 1);
    assert_int_equal(s_stats(s).cut, 1);
    assert_true(s_metrics_has(s, "kith_sse_cut_total{stream=\"events\"} 1"));
    /* What reached it is whole and in order, short of the last; then the end. */
    assert_true(s_cli_until_end(stalled, 1) < id);
    s_cli_close(&stalled);
    s_wait_subscribers(s, 0);
    s_wait_unsent_zero(s); /* the events its queue held no longer count */
    s_cli_t *reader = s_subscribe(s, "", 0);
    id++;
    assert_int_equal(s_publish_n(s, (unsigned) id, 20000), id);
    s_expect_n(reader, id, 20000);
    s_cli_close(&reader);
    s_srv_stop(&s);
}

/* Reads exactly n raw octets of the stream into out. */
static void s_cli_raw(s_cli_t *c, uint8_t *out, size_t n)
{
    while (c->len < n)
        assert_true(s_cli_more(c) > 0);
    memcpy(out, c->buf, n);
    s_cli_consume(c, n);
}

typedef struct {
    uint64_t id;
    uint8_t frame[512];
    size_t len;
} s_frame_copy_t;

static void s_frame_copy_run(s_srv_t *s, void *arg)
{
    s_frame_copy_t *f = arg;
    const uint8_t *p = gateway_events_frame(s->ev, f->id, &f->len);
    if (!p || f->len > sizeof f->frame)
        f->len = 0; /* checked on the test's thread */
    else
        memcpy(f->frame, p, f->len);
}

/* What a live subscriber reads and what a reconnect replays from the
 * ring are the ring's frames, octet for octet, for the events written as
 * they are and for those the SSE encoder splits into lines. */
static void test_sub_replay_identical(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.ring_events = 8});
    s_cli_t *live = s_subscribe(s, "", 0);
    s_cli_t *other = s_subscribe(s, "", 0);
    const char *objects[] = {"{\"a\":1}", "{}", "{\"multi\":\n\"line\"}", "{\"u\":\"\xc3\xa9\"}"};
    s_frame_copy_t f[4];
    for (int i = 0; i < 4; i++) {
        s_pub_t p = {.type = "tool_call", .json = objects[i]};
        s_on_loop(s, s_pub_run, &p);
        assert_int_equal(p.id, (uint64_t) i + 1);
        f[i].id = p.id;
        s_on_loop(s, s_frame_copy_run, &f[i]);
        assert_true(f[i].len > 0);
    }
    uint8_t got[512];
    for (int pass = 0; pass < 3; pass++) {
        s_cli_t *c = pass == 0   ? live
                     : pass == 1 ? other
                                 : s_subscribe(s, "Last-Event-ID: 0\r\n", 0);
        for (int i = 0; i < 4; i++) {
            s_cli_raw(c, got, f[i].len);
            assert_memory_equal(got, f[i].frame, f[i].len);
        }
        if (pass == 2)
            s_cli_close(&c);
    }
    s_cli_close(&live);
    s_cli_close(&other);
    s_srv_stop(&s);
}

typedef struct {
    long skip;      /* allocation to fail in the first publish */
    uint64_t id[2]; /* the two publishes' ids */
    long failed;    /* allocations failed */
} s_pub_oom_t;

/* Two publishes in one go on the loop thread, the first with allocations
 * failing from p->skip on: a subscriber the first cuts is still on the
 * list (on_close comes later) when the second runs. */
static void s_pub_oom_run(s_srv_t *s, void *arg)
{
    s_pub_oom_t *p = arg;
    alloc_fail_arm(p->skip);
    p->id[0] = gateway_events_publish(s->ev, "agent_start", "{\"k\":1}");
    p->failed = alloc_fail_disarm();
    p->id[1] = gateway_events_publish(s->ev, "agent_start", "{\"k\":2}");
}

/* Out of memory at each allocation of a publish that fans out to three
 * subscribers (the shared frame, each queue's block): the publish fails
 * and takes no id, or each subscriber gets the event, or its connection
 * ends; never a stream that goes on without it. One that ended and
 * reconnects with its last id is replayed what it missed. */
static void test_sub_fanout_without_memory(void **state)
{
    (void) state;
    s_srv_t *s = s_srv_start(&(gateway_events_opts_t){.ring_events = 64});
    bool whole = false;
    unsigned ended = 0, refused = 0;
    for (long i = 0; !whole; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        uint64_t last = s_stats(s).newest;
        char hdr[64];
        snprintf(hdr, sizeof hdr, "Last-Event-ID: %llu\r\n", (unsigned long long) last);
        s_cli_t *c[3];
        for (int k = 0; k < 3; k++)
            c[k] = s_subscribe(s, hdr, 0);
        s_pub_oom_t p = {.skip = i};
        s_on_loop(s, s_pub_oom_run, &p);
        assert_true(p.id[1] > 0);
        if (p.id[0] == 0) {
            assert_true(p.failed > 0);
            refused++;
        }
        char data[256];
        for (int k = 0; k < 3; k++) {
            uint64_t seen = last, id = 0;
            while (seen < p.id[1] && s_cli_event(c[k], &id, data, sizeof data))
                assert_int_equal(id, ++seen);
            if (seen < p.id[1]) {
                /* Cut: the end says so, and a reconnect gets the rest. */
                ended++;
                s_cli_close(&c[k]);
                snprintf(hdr, sizeof hdr, "Last-Event-ID: %llu\r\n", (unsigned long long) seen);
                c[k] = s_subscribe(s, hdr, 0);
                while (seen < p.id[1]) {
                    assert_true(s_cli_event(c[k], &id, data, sizeof data));
                    assert_int_equal(id, ++seen);
                }
            }
            s_cli_close(&c[k]);
        }
        s_wait_subscribers(s, 0);
        if (p.failed == 0)
            whole = true;
    }
    assert_true(refused > 0 && ended > 0);
    s_srv_stop(&s);
}

/* ---------------------------------------------------------------- constructors */

/* Options out of range are EINVAL; out of memory at each allocation of a
 * constructor is NULL with ENOMEM and nothing leaked, for the stream and
 * for the tap. */
static void test_new_refusals(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    errno = 0;
    assert_null(gateway_events_new(NULL, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(gateway_events_new(loop, &(gateway_events_opts_t){.ring_events = (1u << 24) + 1}));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(gateway_events_new(
        loop, &(gateway_events_opts_t){.name = "a_name_of_thirty_two_characters_"}));
    assert_int_equal(errno, EINVAL);
    gateway_events_t *ev = NULL;
    for (long i = 0; !ev; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        errno = 0;
        alloc_fail_arm(i);
        ev = gateway_events_new(loop, &(gateway_events_opts_t){.ring_events = 8});
        unsigned failed = alloc_fail_disarm();
        if (!ev) {
            assert_true(failed > 0);
            assert_int_equal(errno, ENOMEM);
        }
    }
    errno = 0;
    assert_null(gateway_log_tap_new(NULL, ev));
    assert_int_equal(errno, EINVAL);
    assert_null(gateway_log_tap_new(loop, NULL));
    gateway_log_tap_t *tap = NULL;
    for (long i = 0; !tap; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        errno = 0;
        alloc_fail_arm(i);
        tap = gateway_log_tap_new(loop, ev);
        unsigned failed = alloc_fail_disarm();
        if (!tap) {
            assert_true(failed > 0);
            assert_int_equal(errno, ENOMEM);
        }
    }
    gateway_log_tap_destroy(&tap);
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

/* ---------------------------------------------------------------- the tap's bound */

static void s_poll_newest(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    s_tap_ctx_t *c = ud;
    gateway_events_stats_t st;
    gateway_events_stats(c->logs, &st);
    if (st.newest >= GATEWAY_LOG_TAP_LINES + 1 || ++c->polls > 3000) {
        router_loop_stop(loop);
        return;
    }
    assert_true(router_loop_timer_add(loop, 10, s_poll_newest, c) != 0);
}

/* Lines logged while the loop does not publish fill the tap's queue; past
 * GATEWAY_LOG_TAP_LINES they are dropped (the logger never waits), and the
 * loop publishes the queued ones as `log` events, then one `log_dropped`
 * with the count (WIRE §18.2). */
static void test_log_tap_full(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *logs = gateway_events_new(loop, &(gateway_events_opts_t){.name = "logs"});
    gateway_log_tap_t *tap = gateway_log_tap_new(loop, logs);
    assert_non_null(tap);
    router_log_set_rate(0, 0); /* one call site logs them all */
    fflush(stderr);
    int saved = dup(2);
    FILE *null = fopen("/dev/null", "w");
    assert_true(saved >= 0 && null);
    assert_true(dup2(fileno(null), 2) >= 0);
    for (unsigned i = 0; i < GATEWAY_LOG_TAP_LINES + 88; i++)
        router_log_write(ROUTER_LOG_WARN, "tester", "line %u \"q\"", i);
    fflush(stderr);
    assert_true(dup2(saved, 2) >= 0);
    close(saved);
    fclose(null);
    router_log_set_rate(ROUTER_LOG_BURST_DEFAULT, ROUTER_LOG_WINDOW_MS_DEFAULT);
    s_tap_ctx_t c = {.logs = logs};
    assert_true(router_loop_timer_add(loop, 1, s_poll_newest, &c) != 0);
    assert_int_equal(router_loop_run(loop), 0);
    gateway_events_stats_t st;
    gateway_events_stats(logs, &st);
    assert_int_equal(st.newest, GATEWAY_LOG_TAP_LINES + 1);
    size_t len = 0;
    const char *f = (const char *) gateway_events_frame(logs, 1, &len);
    assert_non_null(f);
    assert_non_null(strstr(f, "data: {\"type\":\"log\",\"level\":\"warn\",\"module\":\"tester\","
                              "\"time\":\""));
    assert_non_null(strstr(f, "Z\",\"text\":\"line 0 \\\"q\\\"\"}\n\n"));
    f = (const char *) gateway_events_frame(logs, GATEWAY_LOG_TAP_LINES, &len);
    char want[64];
    snprintf(want, sizeof want, "\"text\":\"line %u \\\"q\\\"\"}\n\n", GATEWAY_LOG_TAP_LINES - 1);
    assert_non_null(f);
    assert_non_null(strstr(f, want));
    f = (const char *) gateway_events_frame(logs, GATEWAY_LOG_TAP_LINES + 1, &len);
    snprintf(want, sizeof want, "id: %u\ndata: {\"type\":\"log_dropped\",\"count\":88}\n\n",
             GATEWAY_LOG_TAP_LINES + 1);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(f, want, len);
    gateway_log_tap_destroy(&tap);
    gateway_events_destroy(&logs);
    router_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_ring_count),
        cmocka_unit_test(test_ring_bytes),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_publish_without_memory),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_json_writer),
        cmocka_unit_test(test_log_tap),
        cmocka_unit_test(test_log_tap_full),
        cmocka_unit_test(test_new_refusals),
        cmocka_unit_test(test_sub_resume),
        cmocka_unit_test(test_sub_bound),
        cmocka_unit_test(test_sub_keepalive),
        cmocka_unit_test(test_sub_keepalive_lost),
        cmocka_unit_test(test_sub_head),
        cmocka_unit_test(test_sub_gone_mid_event),
        cmocka_unit_test(test_sub_slow_cut),
        cmocka_unit_test(test_sub_replay_paced),
        cmocka_unit_test(test_sub_event_over_bound),
        cmocka_unit_test(test_sub_without_memory),
        cmocka_unit_test(test_sub_shared_once),
        cmocka_unit_test(test_sub_replay_identical),
        cmocka_unit_test(test_sub_share_cut_counted),
        cmocka_unit_test(test_sub_fanout_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
