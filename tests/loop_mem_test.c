/* tests/loop_mem_test.c — the memory loop backend (router/net/loop_mem.c):
 * fed input reaches the connection in reads of at most recv_buf_size,
 * writes reach the peer in order (within its window per iteration), a
 * paused connection takes no more input, EOF and closes end it the way
 * conn.h says, listeners and connects are refused, and what on_close
 * handlers post while the loop is destroyed still runs. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "router/net/addr.h"
#include "router/net/loop_mem.h"

typedef struct {
    uint8_t out[8192];
    size_t out_len;
    size_t largest_write;
    int ended;
    router_close_reason_t reason;
    size_t in_len;
    size_t largest_read;
    int closed;
    int pause_after;     /* > 0: pause reading once this many bytes came */
    router_conn_t *conn;
} s_t;

static void s_on_output(router_conn_t *c, const uint8_t *d, size_t n, void *ud)
{
    (void) c;
    s_t *s = ud;
    assert_true(s->out_len + n <= sizeof s->out);
    memcpy(s->out + s->out_len, d, n);
    s->out_len += n;
    if (n > s->largest_write)
        s->largest_write = n;
}

static void s_on_end(router_conn_t *c, router_close_reason_t r, void *ud)
{
    (void) c;
    s_t *s = ud;
    s->ended++;
    s->reason = r;
}

static const router_mem_peer_t s_peer = {s_on_output, s_on_end};

/* An echo that may pause itself. */
static void s_on_data(router_conn_t *c, uint8_t *d, size_t n, void *ud)
{
    s_t *s = ud;
    s->in_len += n;
    if (n > s->largest_read)
        s->largest_read = n;
    assert_int_equal(router_conn_send(c, d, n), 0);
    if (s->pause_after && s->in_len >= (size_t) s->pause_after)
        router_conn_pause_read(c);
}

static void s_on_close(router_conn_t *c, router_close_reason_t r, void *ud)
{
    (void) c;
    (void) r;
    s_t *s = ud;
    s->closed++;
}

static const router_conn_handlers_t s_handlers = {.on_data = s_on_data, .on_close = s_on_close};

static void s_on_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    (void) c;
    (void) ud;
    fail();
}

static router_loop_t *s_loop(s_t *s, size_t window)
{
    router_loop_t *loop = router_loop_new(&(router_loop_opts_t){.backend = ROUTER_LOOP_MEMORY,
                                                                .recv_buf_size = 4096});
    assert_non_null(loop);
    assert_string_equal(router_loop_backend_name(loop), "memory");
    assert_int_equal(router_mem_peer_set(loop, &s_peer, s, window), 0);
    s->conn = router_mem_conn_new(loop);
    assert_non_null(s->conn);
    router_conn_set_handlers(s->conn, &s_handlers, s);
    return loop;
}

static void test_echo_and_eof(void **state)
{
    (void) state;
    static s_t s;
    memset(&s, 0, sizeof s);
    router_loop_t *loop = s_loop(&s, 0);
    uint8_t in[6000];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t) (i * 7);
    assert_int_equal(router_mem_conn_feed(s.conn, in, sizeof in), sizeof in);
    assert_true(s.largest_read <= 4096);
    (void) router_mem_run(loop, 0);
    assert_int_equal(s.out_len, sizeof in);
    assert_memory_equal(s.out, in, sizeof in);
    router_mem_conn_eof(s.conn);
    (void) router_mem_run(loop, 0);
    assert_int_equal(s.ended, 1);
    assert_int_equal(s.reason, ROUTER_CLOSE_EOF);
    assert_int_equal(s.closed, 1);
    router_loop_destroy(&loop);
}

static void test_window_and_pause(void **state)
{
    (void) state;
    static s_t s;
    memset(&s, 0, sizeof s);
    s.pause_after = 100;
    router_loop_t *loop = s_loop(&s, 10);
    uint8_t in[300];
    memset(in, 'x', sizeof in);
    /* the first read pauses the connection: the rest is refused */
    assert_int_equal(router_mem_conn_feed(s.conn, in, 150), 150);
    assert_int_equal(router_mem_conn_feed(s.conn, in, 150), 0);
    unsigned runs = router_mem_run(loop, 0);
    assert_true(runs > 1); /* 150 octets, 10 per flush */
    assert_int_equal(s.out_len, 150);
    assert_true(s.largest_write <= 10);
    router_conn_resume_read(s.conn);
    assert_int_equal(router_mem_conn_feed(s.conn, in, 150), 150);
    router_conn_close(s.conn);
    /* closing: input is dropped, the queue is flushed, FIN waits for EOF */
    assert_int_equal(router_mem_conn_feed(s.conn, in, 50), 50);
    (void) router_mem_run(loop, 0);
    assert_int_equal(s.out_len, 300);
    assert_int_equal(s.ended, 0);
    router_mem_conn_eof(s.conn);
    (void) router_mem_run(loop, 0);
    assert_int_equal(s.ended, 1);
    assert_int_equal(s.reason, ROUTER_CLOSE_LOCAL);
    router_loop_destroy(&loop);
    assert_int_equal(s.closed, 1);
}

static void test_refusals(void **state)
{
    (void) state;
    static s_t s;
    memset(&s, 0, sizeof s);
    router_loop_t *loop = s_loop(&s, 0);
    router_addr_t a;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &a, NULL), 0);
    assert_null(router_loop_listen(loop, &a, s_on_accept, NULL));
    router_conn_abort(s.conn);
    (void) router_mem_run(loop, 0);
    assert_int_equal(s.reason, ROUTER_CLOSE_ABORT);
    router_loop_destroy(&loop);

    /* a peer only on a memory loop */
    router_loop_t *ep = router_loop_new(&(router_loop_opts_t){.backend = ROUTER_LOOP_EPOLL});
    assert_non_null(ep);
    assert_int_equal(router_mem_peer_set(ep, &s_peer, &s, 0), -1);
    assert_int_equal(errno, EINVAL);
    assert_null(router_mem_conn_new(ep));
    router_loop_destroy(&ep);
}

/* ------------------------------------------------------------ destroy with work pending */

typedef struct {
    int ran;       /* posts that ran */
    char *owned;   /* what the last one frees: LSan reports it if none ran */
} s_pending_t;

static void s_pending_post(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_pending_t *p = arg;
    p->ran++;
    free(p->owned);
    p->owned = NULL;
}

/* A post queued by a post run at destroy: it runs as well. */
static void s_pending_repost(router_loop_t *loop, void *arg)
{
    assert_int_equal(router_loop_post(loop, s_pending_post, arg), 0);
}

static void s_pending_close(router_conn_t *c, router_close_reason_t r, void *ud)
{
    (void) r;
    router_loop_t *loop = router_conn_loop(c);
    s_pending_t *p = ud;
    p->owned = malloc(16);
    assert_non_null(p->owned);
    /* Accepted (0), so it must run: a connection's owner hands its last
     * cleanup to the loop this way. */
    assert_int_equal(router_loop_post(loop, s_pending_repost, p), 0);
}

static const router_conn_handlers_t s_pending_handlers = {.on_data = s_on_data,
                                                          .on_close = s_pending_close};

/* Nothing accepted is lost at destroy: a post the connections' on_close
 * handlers queue while the loop tears them down runs before the loop is
 * freed (it used to be left in the queue: the work never done and what
 * it owned leaked). */
static void test_posts_from_on_close_run_at_destroy(void **state)
{
    (void) state;
    static s_t s;
    memset(&s, 0, sizeof s);
    router_loop_t *loop = s_loop(&s, 0);
    s_pending_t p = {0};
    router_conn_set_handlers(s.conn, &s_pending_handlers, &p);
    router_loop_destroy(&loop);
    assert_int_equal(p.ran, 1);
    assert_null(p.owned);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_and_eof),
        cmocka_unit_test(test_window_and_pause),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_posts_from_on_close_run_at_destroy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
