/* tests/route_nodes_test.c — the node registry (gateway/route_nodes.c,
 * WIRE §27) when the loop thread runs out of memory: a node's upgrade and
 * register, an operator's invoke with the node's result, and the REST
 * reads, each with every allocation the loop makes for them failing in
 * turn. Whatever fails, the node gets `registered`, an error frame or a
 * closed socket, never silence; the operator gets the node's result as
 * the node sent it or a typed error, never a wait for ever; the registry
 * lists exactly the nodes that were told `registered`; nothing leaks. The
 * loop runs on the test's thread (tests/gateway_fixture.h); the clients
 * allocate nothing (tests/ws_raw_client.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc_fail.h"
#include "gateway/routes_nodes.h"
#include "gateway_fixture.h"
#include "loop_until.h"
#include "ws_raw_client.h"

typedef struct {
    test_gw_t gw;
    gateway_nodes_t *nodes;
} fix_t;

static int s_setup(void **state)
{
    fix_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    test_gw_new(&f->gw, "route-nodes-test");
    f->nodes = gateway_nodes_new(f->gw.gw, f->gw.loop, f->gw.auth, NULL);
    assert_non_null(f->nodes);
    test_gw_listen(&f->gw);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fix_t *f = *state;
    test_gw_stop(&f->gw);
    gateway_nodes_destroy(&f->nodes);
    test_gw_free(&f->gw);
    free(f);
    return 0;
}

/* Runs the loop until until(ud) holds, at most 30 s (a hang, not a timing). */
static void s_run(fix_t *f, bool (*until)(void *), void *ud)
{
    test_loop_until(f->gw.loop, until, ud, 2, 30000);
}

/* ------------------------------------------------------------ the node */

static test_wsc_t s_node; /* 64 KiB: not on the stack */

static void s_node_open(fix_t *f)
{
    test_wsc_open(&s_node, f->gw.port,
                  "GET /ws/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Protocol: kith.nodes.v1\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(s_node.fd, F_SETFL, O_NONBLOCK), 0);
}

static void s_node_close(void)
{
    if (s_node.fd >= 0)
        close(s_node.fd);
    s_node.fd = -1;
}

static unsigned s_want; /* frames the node waits for */

/* The node has s_want frames, or its socket ended, or it was refused. */
static bool s_node_has(void *ud)
{
    (void) ud;
    test_wsc_read(&s_node);
    bool closed;
    return test_wsc_refused(&s_node) || test_wsc_frames(&s_node, &closed) >= s_want || closed ||
           s_node.eof;
}

/* Frame n's text, NUL-terminated, into out; false when it is no text frame. */
static bool s_node_text(unsigned n, char *out, size_t cap)
{
    int op;
    const uint8_t *p;
    size_t len;
    if (!test_wsc_frame(&s_node, n, &op, &p, &len) || op != 1 || len >= cap)
        return false;
    memcpy(out, p, len);
    out[len] = '\0';
    return true;
}

/* ------------------------------------------------------------ the operator */

typedef struct {
    int fd;
    char buf[8192];
    size_t len;
    bool done;
} client_t;

static void s_http(fix_t *f, client_t *c, const char *method, const char *path, const char *body)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(f->gw.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *) &sa, sizeof sa), 0); /* the backlog */
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, strlen(body), body);
    assert_true(n > 0 && (size_t) n < sizeof req);
    assert_int_equal(send(c->fd, req, (size_t) n, MSG_NOSIGNAL), n);
    assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
}

/* Reads what came; true once the server closed (Connection: close). */
static bool s_answered(void *ud)
{
    client_t *c = ud;
    while (!c->done) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
        if (n > 0) {
            c->len += (size_t) n;
            c->buf[c->len] = '\0';
            continue;
        }
        c->done = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
        break;
    }
    return c->done;
}

static const char *s_body(const client_t *c)
{
    const char *b = strstr(c->buf, "\r\n\r\n");
    return b ? b + 4 : "";
}

/* An answer that is not 2xx is a typed error: JSON with "error" and "code". */
static void s_expect_typed(const client_t *c)
{
    int status = 0;
    if (sscanf(c->buf, "HTTP/1.1 %d", &status) != 1 || status < 400 ||
        !strstr(s_body(c), "\"error\":\"") || !strstr(s_body(c), "\"code\":\""))
        fail_msg("not a typed error: %s", c->buf);
}

/* How many nodes GET /api/nodes lists. */
static int s_listed(fix_t *f)
{
    client_t c;
    s_http(f, &c, "GET", "/api/nodes", "");
    s_run(f, s_answered, &c);
    close(c.fd);
    assert_non_null(strstr(c.buf, "HTTP/1.1 200 "));
    int n = 0;
    for (const char *p = s_body(&c); (p = strstr(p, "\"connected_ms\"")); p++)
        n++;
    return n;
}

/* Opens a node and registers it with the command "echo", nothing failing;
 * its id into id. */
static void s_node_register(fix_t *f, char *id, size_t cap)
{
    s_node_open(f);
    test_wsc_send_text(&s_node, "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"echo\"]}");
    s_want = 1;
    s_run(f, s_node_has, NULL);
    char text[256];
    assert_true(s_node_text(0, text, sizeof text));
    const char *p = strstr(text, "\"id\":\"");
    assert_non_null(p);
    p += 6;
    size_t n = strcspn(p, "\"");
    assert_true(n < cap);
    memcpy(id, p, n);
    id[n] = '\0';
}

/* Asks GET /api/nodes until it lists none (the loop runs meanwhile, so a
 * closed node socket is seen). */
static void s_wait_unlisted(fix_t *f)
{
    for (int k = 0; s_listed(f) != 0; k++)
        assert_true(k < 10000);
}

/* ------------------------------------------------------------ tests */

/* The upgrade and the register frame with each allocation failing in turn. */
static void test_register_without_memory(void **state)
{
    fix_t *f = *state;
    unsigned registered = 0, errors = 0, refused = 0, ended = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_node_open(f);
        test_wsc_send_text(&s_node,
                           "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"a\",\"b\"],"
                           "\"meta\":{\"k\":[1,2,{\"x\":null}]}}");
        s_want = 1;
        alloc_fail_arm(i);
        s_run(f, s_node_has, NULL);
        unsigned failed = alloc_fail_disarm();
        char text[512] = "";
        bool closed;
        unsigned frames = test_wsc_frames(&s_node, &closed);
        if (test_wsc_refused(&s_node)) { /* an HTTP refusal, typed */
            test_wsc_read(&s_node);
            assert_non_null(strstr((const char *) s_node.buf, "\"code\":\""));
            refused++;
        } else if (frames && s_node_text(0, text, sizeof text) &&
                   strstr(text, "\"type\":\"registered\"")) {
            assert_int_equal(s_listed(f), 1);
            registered++;
        } else if (frames && strstr(text, "\"type\":\"error\"")) {
            /* The node is told, and may register again. */
            assert_non_null(strstr(text, "\"code\":\"INTERNAL\""));
            assert_int_equal(s_listed(f), 0);
            test_wsc_send_text(&s_node, "{\"type\":\"register\",\"name\":\"n\",\"commands\":[]}");
            s_want = 2;
            s_run(f, s_node_has, NULL);
            assert_true(s_node_text(1, text, sizeof text));
            assert_non_null(strstr(text, "\"type\":\"registered\""));
            assert_int_equal(s_listed(f), 1);
            errors++;
        } else {
            /* Cut, or closed: never a register-first close, which would
             * mean the register frame went unanswered. */
            assert_true(closed || s_node.eof);
            if (frames && s_node_text(0, text, sizeof text))
                fail_msg("run %ld: %s", i, text);
            ended++;
        }
        s_node_close();
        s_wait_unlisted(f);
        if (failed == 0)
            break;
    }
    print_message("register: %u registered, %u told INTERNAL, %u refused, %u ended\n",
                  registered, errors, refused, ended);
    assert_true(registered > 0);
}

/* The node has s_want frames (or ended), or the operator ud was answered. */
static bool s_invoked(void *ud)
{
    return s_node_has(NULL) || s_answered(ud);
}

/* An operator's invoke and the node's result with each allocation failing
 * in turn. */
static void test_invoke_without_memory(void **state)
{
    fix_t *f = *state;
    char id[64];
    s_node_register(f, id, sizeof id);
    unsigned node_frames = 1;
    unsigned answered = 0, refused = 0, cut = 0;
    char path[128];
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        snprintf(path, sizeof path, "/api/nodes/%s/invoke", id);
        client_t c;
        s_http(f, &c, "POST", path,
               "{\"command\":\"echo\",\"params\":{\"x\":[1,\"two\"]},\"timeout_ms\":300000}");
        alloc_fail_arm(i);
        /* The invoke reaches the node, or the operator is answered. */
        s_want = node_frames + 1;
        s_run(f, s_invoked, &c);
        bool closed;
        unsigned frames = test_wsc_frames(&s_node, &closed);
        char text[512], result[256] = "";
        if (frames > node_frames && s_node_text(node_frames, text, sizeof text)) {
            assert_non_null(strstr(text, "\"type\":\"invoke\""));
            const char *k = strstr(text, "\"call_id\":\"");
            assert_non_null(k);
            k += 11;
            snprintf(result, sizeof result,
                     "{\"type\":\"result\",\"call_id\":\"%.*s\",\"ok\":true,\"result\":{\"y\":2}}",
                     (int) strcspn(k, "\""), k);
            test_wsc_send_text(&s_node, result);
            node_frames = frames;
        }
        /* The operator is answered. A result the server could not read
         * for lack of memory is told INTERNAL, and the node sends it
         * again (the call still waits): never a call left to time out. */
        while (result[0]) {
            s_want = node_frames + 1;
            s_run(f, s_invoked, &c);
            frames = test_wsc_frames(&s_node, &closed);
            if (c.done || closed || s_node.eof || frames <= node_frames)
                break;
            assert_true(s_node_text(node_frames, text, sizeof text));
            assert_non_null(strstr(text, "{\"type\":\"error\",\"code\":\"INTERNAL\""));
            node_frames = frames;
            test_wsc_send_text(&s_node, result);
        }
        s_run(f, s_answered, &c);
        unsigned failed = alloc_fail_disarm();
        close(c.fd);
        if (strstr(c.buf, "HTTP/1.1 200 ")) {
            assert_string_equal(s_body(&c), "{\"ok\":true,\"result\":{\"y\":2}}");
            answered++;
        } else if (c.len) {
            s_expect_typed(&c);
            refused++;
        } else {
            cut++;
        }
        /* Frames the node got meanwhile (an error for its result that
         * could not be read, told INTERNAL) are counted; a node whose
         * socket ended is registered anew. */
        (void) s_listed(f); /* runs the loop a while */
        test_wsc_read(&s_node);
        node_frames = test_wsc_frames(&s_node, &closed);
        if (closed || s_node.eof) {
            s_node_close();
            s_wait_unlisted(f);
            s_node_register(f, id, sizeof id);
            node_frames = 1;
        }
        if (failed == 0)
            break;
    }
    print_message("invoke: %u answered, %u refused (typed), %u cut\n", answered, refused, cut);
    assert_true(answered > 0 && refused > 0);
    s_node_close();
}

/* GET /api/nodes and /api/nodes/{id} with each allocation failing in
 * turn: the node as it registered (meta an object, token_id null), or a
 * typed 503; never its meta turned into a string. */
static void test_read_without_memory(void **state)
{
    fix_t *f = *state;
    s_node_open(f);
    test_wsc_send_text(&s_node, "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"echo\"],"
                                "\"meta\":{\"k\":[1,\"v\"]}}");
    s_want = 1;
    s_run(f, s_node_has, NULL);
    char text[256], path[128];
    assert_true(s_node_text(0, text, sizeof text));
    const char *p = strstr(text, "\"id\":\"");
    assert_non_null(p);
    snprintf(path, sizeof path, "/api/nodes/%.*s", (int) strcspn(p + 6, "\""), p + 6);
    const char *paths[] = {"/api/nodes", path};
    unsigned shown = 0, refused = 0;
    for (int k = 0; k < 2; k++) {
        for (long i = 0;; i++) {
            assert_true(i < ALLOC_FAIL_RUNS_MAX);
            client_t c;
            s_http(f, &c, "GET", paths[k], "");
            alloc_fail_arm(i);
            s_run(f, s_answered, &c);
            unsigned failed = alloc_fail_disarm();
            close(c.fd);
            if (strstr(c.buf, "HTTP/1.1 200 ")) {
                assert_non_null(strstr(s_body(&c), "\"meta\":{\"k\":[1,\"v\"]}"));
                assert_non_null(strstr(s_body(&c), "\"token_id\":null"));
                shown++;
            } else if (c.len) {
                s_expect_typed(&c);
                refused++;
            }
            if (failed == 0)
                break;
        }
    }
    print_message("read: %u shown, %u refused\n", shown, refused);
    s_node_close();
}

/* The gateway stopped with a node registered, another not yet, and a call
 * waiting: the registry's destroy frees them all and ends the operator's
 * request (LSan: nothing leaks; ASan: nothing used after it is freed). */
static void test_destroy_with_nodes_and_calls(void **state)
{
    fix_t *f = *state;
    char id[64], path[128];
    s_node_register(f, id, sizeof id);
    static test_wsc_t unregistered;
    test_wsc_open(&unregistered, f->gw.port,
                  "GET /ws/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    snprintf(path, sizeof path, "/api/nodes/%s/invoke", id);
    client_t c;
    s_http(f, &c, "POST", path, "{\"command\":\"echo\"}");
    s_want = 2;
    s_run(f, s_node_has, NULL);
    assert_true(s_node_text(1, (char[256]){0}, 256)); /* the invoke came */
    test_gw_stop(&f->gw);
    gateway_nodes_destroy(&f->nodes);
    assert_null(f->nodes);
    close(c.fd);
    close(unregistered.fd);
    s_node_close();
}

/* ------------------------------------------------------------ no timers */

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id, (void) ud;
    fail_msg("a filler timer fired");
}

#define FILL_MAX (ROUTER_LOOP_MAX_TIMERS + 1)
static uint64_t s_fill_ids[FILL_MAX];
static unsigned s_nfill;

/* Takes every timer slot the loop has left but `spare`. */
static void s_timers_fill(fix_t *f, unsigned spare)
{
    while (s_nfill < FILL_MAX &&
           (s_fill_ids[s_nfill] = router_loop_timer_add(f->gw.loop, 3600000, s_never, NULL)))
        s_nfill++;
    assert_true(s_nfill < FILL_MAX);
    for (unsigned i = 0; i < spare && s_nfill > 0; i++)
        assert_int_equal(router_loop_timer_cancel(f->gw.loop, s_fill_ids[--s_nfill]), 0);
}

static void s_timers_free(fix_t *f)
{
    while (s_nfill > 0)
        assert_int_equal(router_loop_timer_cancel(f->gw.loop, s_fill_ids[--s_nfill]), 0);
}

/* With the loop's timers all but `spare` taken: a node's upgrade is
 * refused or cut, or it is registered, or closed 1011 (no timer for its
 * register deadline) — never left open without a deadline; an invoke with
 * no timer for its timeout is answered 503 and never sent to the node (a
 * call nobody waits for). */
static void test_no_timer(void **state)
{
    fix_t *f = *state;
    unsigned registered = 0, closed1011 = 0;
    for (unsigned spare = 1; spare <= 5; spare++) { /* one is loop_until's */
        s_timers_fill(f, spare);
        s_node_open(f);
        test_wsc_send_text(&s_node, "{\"type\":\"register\",\"name\":\"n\",\"commands\":[\"echo\"]}");
        s_want = 1;
        s_run(f, s_node_has, NULL);
        s_timers_free(f);
        char text[256];
        int op;
        const uint8_t *p;
        size_t len;
        if (test_wsc_refused(&s_node)) {
            assert_non_null(strstr((const char *) s_node.buf, "\"code\":\""));
        } else if (test_wsc_frame(&s_node, 0, &op, &p, &len) && op == 8) {
            assert_true(len >= 2 && (p[0] << 8 | p[1]) == 1011);
            closed1011++;
        } else if (s_node_text(0, text, sizeof text)) {
            assert_non_null(strstr(text, "\"type\":\"registered\""));
            registered++;
        } else {
            assert_true(s_node.eof);
        }
        s_node_close();
        s_wait_unlisted(f);
    }
    print_message("no timer: %u registered, %u closed 1011\n", registered, closed1011);
    assert_true(registered > 0 && closed1011 > 0);

    char id[64], path[128];
    s_node_register(f, id, sizeof id);
    snprintf(path, sizeof path, "/api/nodes/%s/invoke", id);
    client_t c;
    s_http(f, &c, "POST", path, "{\"command\":\"echo\"}");
    s_timers_fill(f, 2); /* loop_until's, and the connection's */
    s_run(f, s_answered, &c);
    s_timers_free(f);
    close(c.fd);
    assert_non_null(strstr(c.buf, "HTTP/1.1 503 "));
    assert_string_equal(s_body(&c), "{\"error\":\"no timer for the call\",\"code\":\"unavailable\"}");
    (void) s_listed(f);
    test_wsc_read(&s_node);
    bool closed;
    assert_int_equal(test_wsc_frames(&s_node, &closed), 1); /* "registered" only */
    s_node_close();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_without_memory, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_invoke_without_memory, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_read_without_memory, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_no_timer, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_nodes_and_calls, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
