/* tests/events_listener_test.c — router/comms/events.c, the plain event
 * listener (spec/WIRE.md §10), run on a real loop with real TCP sockets on
 * the test's thread: lines queued and reported, a line past the bound
 * skipped with the connection served on, a partial line held past its
 * deadline, the partial-bytes budget it shares with comms (the guard cuts
 * the largest holder, or the line itself), a full inbox (lines skipped and
 * counted, the connection served on), out of memory at each allocation, a
 * peer that resets mid-line, the per-source bound, the connection cap
 * (the connection idle the longest gives way to a newcomer; a newcomer is
 * refused only when every one is mid-line), drain and destroy with
 * connections open. gateway/events.c (the
 * SSE stream) is tests/events_test.c. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "loop_until.h"
#include "proto/frame.h"
#include "proto/line.h"
#include "router/comms/comms.h"
#include "router/comms/events.h"
#include "router/comms/guard.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/state/identity.h"
#include "router/state/inbox.h"
#include "sock_util.h"

/* Bounded waits: a hang fails the test instead of hanging CI. */
#define WAIT_EVERY_MS 2
#define WAIT_MAX_MS 20000

/* One listener and what it feeds, all on the test's thread. */
typedef struct {
    router_loop_t *loop;
    router_inbox_t *inbox;
    router_guard_t *guard;
    router_events_t *ev;
    router_listener_t *l;
    uint16_t port;
    uint64_t reported;    /* lines reported through on_queued */
    unsigned reports;     /* on_queued calls */
    /* what the predicates below wait for */
    uint64_t want;
    int fd;
    size_t want_held;
    bool gone_reset;      /* the last s_peer_gone that saw the end saw a reset */
} s_fx_t;

static void s_on_queued(const router_channel_event_t *e, void *ud)
{
    s_fx_t *fx = ud;
    assert_string_equal(e->channel, "event_line");
    assert_true(e->count >= 1);
    assert_int_equal(e->last_seq - e->seq + 1, e->count); /* one read's lines, in a row */
    fx->reported += e->count;
    fx->reports++;
}

static void s_fx_init(s_fx_t *fx, const router_guard_opts_t *go_in, uint32_t conns_max,
                      size_t inbox_cap)
{
    memset(fx, 0, sizeof *fx);
    fx->fd = -1;
    fx->loop = router_loop_new(NULL);
    assert_non_null(fx->loop);
    char err[256];
    router_inbox_opts_t io = {.capacity = inbox_cap, .session = "comms"};
    fx->inbox = router_inbox_new(&io, err, sizeof err);
    assert_non_null(fx->inbox);
    router_guard_opts_t go = go_in ? *go_in : (router_guard_opts_t){0};
    go.loop = fx->loop;
    fx->guard = router_guard_new(&go);
    assert_non_null(fx->guard);
    router_events_opts_t eo = {.loop = fx->loop, .inbox = fx->inbox, .guard = fx->guard,
                               .connections_max = conns_max, .on_queued = s_on_queued, .ud = fx};
    fx->ev = router_events_new(&eo);
    assert_non_null(fx->ev);
    router_addr_t addr;
    router_addr_err_t why;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, &why), 0);
    fx->l = router_events_listen(fx->ev, &addr);
    assert_non_null(fx->l);
    fx->port = router_addr_port(router_listener_addr(fx->l));
}

static void s_fx_fini(s_fx_t *fx)
{
    router_events_destroy(&fx->ev);
    router_events_destroy(&fx->ev); /* idempotent */
    router_guard_destroy(&fx->guard);
    router_loop_destroy(&fx->loop);
    router_inbox_destroy(&fx->inbox);
}

static router_events_stats_t s_ev_stats(const s_fx_t *fx)
{
    router_events_stats_t st;
    router_events_stats(fx->ev, &st);
    return st;
}

static router_guard_stats_t s_guard_stats(const s_fx_t *fx)
{
    router_guard_stats_t st;
    router_guard_stats(fx->guard, &st);
    return st;
}

static void s_send_str(int fd, const char *s)
{
    test_sock_send_all(fd, s, strlen(s));
}

static void s_send_fill(int fd, char c, size_t n)
{
    char buf[4096];
    memset(buf, c, sizeof buf);
    while (n > 0) {
        size_t k = n < sizeof buf ? n : sizeof buf;
        test_sock_send_all(fd, buf, k);
        n -= k;
    }
}

/* Plain events never write back: anything readable is the end (EOF, or a
 * reset). `reset` says which it was; a reset is reported once (the socket's
 * error is consumed), so look at it the first time. */
static bool s_peer_gone(int fd, bool *reset)
{
    size_t bytes = 0;
    bool gone = test_sock_read_ready(fd, &bytes, reset);
    assert_int_equal(bytes, 0); /* never a byte */
    return gone;
}

/* ------------------------------------------------------------ predicates */

static bool s_until_handled(void *ud)
{
    s_fx_t *fx = ud;
    router_events_stats_t st = s_ev_stats(fx);
    return st.queued + st.skipped >= fx->want;
}

static bool s_until_open(void *ud)
{
    s_fx_t *fx = ud;
    return s_ev_stats(fx).open == fx->want;
}

static bool s_until_held(void *ud)
{
    s_fx_t *fx = ud;
    return s_guard_stats(fx).held == fx->want_held;
}

static bool s_until_gone(void *ud)
{
    s_fx_t *fx = ud;
    return s_peer_gone(fx->fd, &fx->gone_reset);
}

/* Handled `want` lines, or the client's connection ended. */
static bool s_until_handled_or_gone(void *ud)
{
    s_fx_t *fx = ud;
    return s_until_handled(fx) || s_peer_gone(fx->fd, NULL);
}

/* Holds `want_held` in partial lines, or the client's connection ended. */
static bool s_until_held_or_gone(void *ud)
{
    s_fx_t *fx = ud;
    return s_until_held(fx) || s_peer_gone(fx->fd, NULL);
}

static void s_wait(s_fx_t *fx, bool (*until)(void *))
{
    test_loop_until(fx->loop, until, fx, WAIT_EVERY_MS, WAIT_MAX_MS);
}

static void s_wait_open(s_fx_t *fx, unsigned n)
{
    fx->want = n;
    s_wait(fx, s_until_open);
}

static void s_wait_handled(s_fx_t *fx, uint64_t n)
{
    fx->want = n;
    s_wait(fx, s_until_handled);
}

static void s_wait_gone(s_fx_t *fx, int fd)
{
    fx->fd = fd;
    s_wait(fx, s_until_gone);
}

/* ------------------------------------------------------------ tests */

/* Plain and JSON lines are queued, a bad one skipped, a line over 64 KiB
 * skipped as soon as it is too long, and the connection serves on: the
 * line after it is queued. A line split across reads is stored only while
 * split. */
static void test_lines_and_too_long(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0, 1000);
    int fd = test_sock_connect(fx.port);
    s_send_str(fd, "hello\n{\"body\":\"json\"}\n{\"nobody\":1}\n\n");
    s_wait_handled(&fx, 3);
    s_send_fill(fd, 'x', PROTO_LINE_MAX + 10);
    s_send_str(fd, "tail of the long line\nafter\n");
    s_wait_handled(&fx, 5);
    router_events_stats_t st = s_ev_stats(&fx);
    assert_int_equal(st.queued, 3);
    assert_int_equal(st.skipped, 2); /* no_body, too_long */
    assert_int_equal(st.open, 1);
    assert_int_equal(fx.reported, 3);
    assert_int_equal(router_inbox_count(fx.inbox), 3);
    s_wait(&fx, s_until_held); /* want_held 0: nothing held between lines */
    assert_true(s_guard_stats(&fx).held_peak > 0);
    assert_false(s_peer_gone(fd, NULL));
    close(fd);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);
}

/* A line over the bound is skipped without being stored: from the moment
 * it is too long it holds nothing of the partial budget (the 64 KiB kept
 * until then go back), so while its sender goes on it cuts nobody's
 * frame or line to make room. */
static void test_too_long_holds_nothing(void **state)
{
    (void) state;
    s_fx_t fx;
    router_guard_opts_t go = {.partial_bytes_max = PROTO_LINE_MAX + 8192};
    s_fx_init(&fx, &go, 0, 1000);
    int a = test_sock_connect(fx.port);
    s_send_fill(a, 'x', PROTO_LINE_MAX + 10); /* too long, no LF yet */
    s_wait_handled(&fx, 1);
    s_wait(&fx, s_until_held); /* want_held 0 */
    int b = test_sock_connect(fx.port);
    s_send_fill(b, 'b', 6000); /* 8 KiB: room only if a holds nothing */
    fx.want_held = 8192;
    s_wait(&fx, s_until_held);
    s_send_fill(a, 'x', 1000); /* still skipping */
    s_send_str(a, "\nnext\n");
    s_send_str(b, "\n");
    s_wait_handled(&fx, 3);
    router_events_stats_t st = s_ev_stats(&fx);
    assert_int_equal(st.queued, 2);
    assert_int_equal(st.skipped, 1);
    assert_int_equal(st.open, 2);
    router_guard_stats_t gs = s_guard_stats(&fx);
    assert_int_equal(gs.cuts[ROUTER_GUARD_EVENTS][ROUTER_GUARD_CUT_PARTIAL_BUDGET], 0);
    assert_int_equal(gs.held, 0);
    close(a);
    close(b);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);
}

/* A line begun and not finished by frame_ms is cut (reset), counted as a
 * deadline cut; so is a first line never finished by first_frame_ms. Its
 * storage goes back to the budget. */
static void test_partial_line_deadline(void **state)
{
    (void) state;
    s_fx_t fx;
    router_guard_opts_t go = {.first_frame_ms = 200, .frame_ms = 200};
    s_fx_init(&fx, &go, 0, 1000);
    int a = test_sock_connect(fx.port);
    s_send_str(a, "first\n");
    s_wait_handled(&fx, 1);
    s_send_fill(a, 'p', 100); /* begun, never ended */
    s_wait_gone(&fx, a);
    assert_true(fx.gone_reset);
    int b = test_sock_connect(fx.port);
    s_send_fill(b, 'q', 100); /* a first line never ended */
    s_wait_gone(&fx, b);
    s_wait_open(&fx, 0);
    router_guard_stats_t gs = s_guard_stats(&fx);
    assert_int_equal(gs.cuts[ROUTER_GUARD_EVENTS][ROUTER_GUARD_CUT_DEADLINE], 2);
    assert_int_equal(gs.held, 0);
    assert_int_equal(s_ev_stats(&fx).queued, 1);
    close(a);
    close(b);
    s_fx_fini(&fx);
}

/* Two event connections share the partial budget: the one holding the
 * most is cut to make room for the other, which then finishes its line. */
static void test_budget_cuts_largest(void **state)
{
    (void) state;
    s_fx_t fx;
    router_guard_opts_t go = {.partial_bytes_max = 5000};
    s_fx_init(&fx, &go, 0, 1000);
    int a = test_sock_connect(fx.port);
    s_send_fill(a, 'a', 3000); /* held in 4 KiB */
    fx.want_held = 4096;
    s_wait(&fx, s_until_held);
    int b = test_sock_connect(fx.port);
    s_send_fill(b, 'b', 500); /* wants 1 KiB: a goes */
    s_wait_gone(&fx, a);
    s_send_str(b, "\n");
    s_wait_handled(&fx, 1);
    s_wait_open(&fx, 1);
    router_guard_stats_t gs = s_guard_stats(&fx);
    assert_int_equal(gs.cuts[ROUTER_GUARD_EVENTS][ROUTER_GUARD_CUT_PARTIAL_BUDGET], 1);
    assert_int_equal(gs.held, 0);
    assert_int_equal(s_ev_stats(&fx).queued, 1);
    close(a);
    close(b);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);
}

/* Comms and plain events on one guard. */
typedef struct {
    s_fx_t fx;
    router_identity_t id;
    router_comms_t *comms;
    uint16_t comms_port;
} s_both_t;

static void s_both_init(s_both_t *b, size_t budget)
{
    router_guard_opts_t go = {.partial_bytes_max = budget};
    s_fx_init(&b->fx, &go, 0, 1000);
    crypto_sign_keypair(b->id.pk, b->id.sk);
    router_comms_opts_t co = {.loop = b->fx.loop, .identity = &b->id, .inbox = b->fx.inbox,
                              .guard = b->fx.guard, .require_peer_auth = true};
    b->comms = router_comms_new(&co);
    assert_non_null(b->comms);
    router_addr_t addr;
    router_addr_err_t why;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, &why), 0);
    router_listener_t *l = router_comms_listen(b->comms, &addr);
    assert_non_null(l);
    b->comms_port = router_addr_port(router_listener_addr(l));
}

static void s_both_fini(s_both_t *b)
{
    router_comms_destroy(&b->comms);
    s_fx_fini(&b->fx);
}

/* The first bytes of a 100 000-octet frame: comms holds 16 KiB for it. */
static void s_send_partial_frame(int fd)
{
    uint8_t head[4] = {0, 0x01, 0x86, 0xa0};
    test_sock_send_all(fd, head, sizeof head);
    s_send_fill(fd, 0, 100);
}

/* The budget is shared with comms: a line that needs room cuts an
 * unauthenticated comms connection holding more. */
static void test_budget_shared_cuts_comms(void **state)
{
    (void) state;
    s_both_t b;
    s_both_init(&b, 20000);
    int c = test_sock_connect(b.comms_port);
    s_send_partial_frame(c);
    b.fx.want_held = 16384;
    s_wait(&b.fx, s_until_held);
    int e = test_sock_connect(b.fx.port);
    s_send_fill(e, 'e', 1000); /* 1 KiB: fits */
    b.fx.want_held = 16384 + 1024;
    s_wait(&b.fx, s_until_held);
    s_send_fill(e, 'e', 2000); /* 4 KiB: past the budget, comms' 16 KiB goes */
    s_wait_gone(&b.fx, c);
    s_send_str(e, "\n");
    s_wait_handled(&b.fx, 1);
    router_guard_stats_t gs = s_guard_stats(&b.fx);
    assert_int_equal(gs.cuts[ROUTER_GUARD_COMMS][ROUTER_GUARD_CUT_PARTIAL_BUDGET], 1);
    assert_int_equal(gs.cuts[ROUTER_GUARD_EVENTS][ROUTER_GUARD_CUT_PARTIAL_BUDGET], 0);
    assert_int_equal(s_ev_stats(&b.fx).queued, 1);
    close(c);
    close(e);
    s_wait_open(&b.fx, 0);
    s_both_fini(&b);
}

/* An in-process comms connection (treated as authenticated) keeps its
 * room: the event line that would pass the budget is the one cut, with
 * the lines it finished before reported, and the next connection serves. */
static void test_budget_cuts_the_line(void **state)
{
    (void) state;
    s_both_t b;
    s_both_init(&b, 17000);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(router_comms_serve_fd(b.comms, sv[1]), 0);
    s_send_partial_frame(sv[0]);
    b.fx.want_held = 16384;
    s_wait(&b.fx, s_until_held);
    int e = test_sock_connect(b.fx.port);
    s_send_str(e, "one\n");
    s_send_fill(e, 'e', 1000); /* 1 KiB more than the budget has */
    s_wait_gone(&b.fx, e);
    assert_true(b.fx.gone_reset);
    router_guard_stats_t gs = s_guard_stats(&b.fx);
    assert_int_equal(gs.cuts[ROUTER_GUARD_EVENTS][ROUTER_GUARD_CUT_PARTIAL_BUDGET], 1);
    assert_int_equal(gs.cuts[ROUTER_GUARD_COMMS][ROUTER_GUARD_CUT_PARTIAL_BUDGET], 0);
    assert_int_equal(gs.held, 16384);
    assert_int_equal(s_ev_stats(&b.fx).queued, 1);
    assert_int_equal(b.fx.reported, 1); /* reported before the cut */
    s_wait_open(&b.fx, 0);
    int f = test_sock_connect(b.fx.port);
    s_send_str(f, "two\n");
    s_wait_handled(&b.fx, 2);
    close(e);
    close(f);
    close(sv[0]);
    s_wait_open(&b.fx, 0);
    s_both_fini(&b);
}

/* A full inbox: lines are skipped and counted, the connection is served
 * on, and lines are queued again once there is room. */
static void test_inbox_full(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0, 2);
    int fd = test_sock_connect(fx.port);
    s_send_str(fd, "1\n2\n3\n4\n5\n");
    s_wait_handled(&fx, 5);
    router_events_stats_t st = s_ev_stats(&fx);
    assert_int_equal(st.queued, 2);
    assert_int_equal(st.skipped, 3);
    assert_int_equal(st.open, 1);
    assert_int_equal(fx.reported, 2);
    router_inbox_entry_t ent;
    assert_int_equal(router_inbox_pop(fx.inbox, &ent, 0), 0);
    router_inbox_entry_clear(&ent);
    s_send_str(fd, "6\n");
    s_wait_handled(&fx, 6);
    assert_int_equal(s_ev_stats(&fx).queued, 3);
    assert_false(s_peer_gone(fd, NULL));
    close(fd);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);
}

/* A peer that resets mid-line: the connection goes, its storage with it,
 * and nothing of the line is queued. */
static void test_reset_mid_line(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0, 1000);
    int fd = test_sock_connect(fx.port);
    s_send_str(fd, "whole\n");
    s_send_fill(fd, 'h', 2000);
    fx.want_held = 2048;
    s_wait(&fx, s_until_held);
    test_sock_close_reset(fd);
    s_wait_open(&fx, 0);
    assert_int_equal(s_guard_stats(&fx).held, 0);
    router_events_stats_t st = s_ev_stats(&fx);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.skipped, 0);
    s_fx_fini(&fx);
}

/* At most events_per_source_max from one address (the next is reset and
 * counted), at most connections_max per listener (the next is closed at
 * accept); a freed place is taken again. */
static void test_connection_bounds(void **state)
{
    (void) state;
    s_fx_t fx;
    router_guard_opts_t go = {.events_per_source_max = 2};
    s_fx_init(&fx, &go, 0, 1000);
    int a = test_sock_connect(fx.port), b = test_sock_connect(fx.port);
    s_wait_open(&fx, 2);
    int c = test_sock_connect(fx.port);
    s_wait_gone(&fx, c);
    assert_int_equal(s_guard_stats(&fx).refused_per_source[ROUTER_GUARD_EVENTS], 1);
    close(c);
    close(a);
    s_wait_open(&fx, 1);
    int d = test_sock_connect(fx.port);
    s_wait_open(&fx, 2);
    s_send_str(d, "d\n");
    s_wait_handled(&fx, 1);
    close(b);
    close(d);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);

    /* At connections_max with every connection mid-line, none can give
     * way: the newcomer is refused (closed at once) and counted. */
    s_fx_init(&fx, NULL, 2, 1000);
    a = test_sock_connect(fx.port);
    b = test_sock_connect(fx.port);
    s_wait_open(&fx, 2);
    s_send_str(a, "a1\npart");
    s_send_str(b, "part");
    s_wait_handled(&fx, 1);
    fx.want_held = 2 * 1024;
    s_wait(&fx, s_until_held);
    c = test_sock_connect(fx.port);
    s_wait_gone(&fx, c);
    assert_int_equal(s_ev_stats(&fx).refused, 1);
    assert_int_equal(s_ev_stats(&fx).evicted, 0);
    assert_int_equal(s_ev_stats(&fx).open, 2);
    s_send_str(a, "ial\n"); /* both served on */
    s_send_str(b, "ial\n");
    s_wait_handled(&fx, 3);
    close(a);
    close(b);
    close(c);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);

    /* A newcomer its source's share refuses cuts no one to make room,
     * though the cap is reached and both holders are idle. */
    router_guard_opts_t two = {.events_per_source_max = 2};
    s_fx_init(&fx, &two, 2, 1000);
    a = test_sock_connect(fx.port);
    b = test_sock_connect(fx.port);
    s_wait_open(&fx, 2);
    c = test_sock_connect(fx.port);
    s_wait_gone(&fx, c);
    assert_int_equal(s_guard_stats(&fx).refused_per_source[ROUTER_GUARD_EVENTS], 1);
    assert_int_equal(s_ev_stats(&fx).evicted, 0);
    assert_int_equal(s_ev_stats(&fx).open, 2);
    s_send_str(a, "a\n");
    s_send_str(b, "b\n");
    s_wait_handled(&fx, 2);
    close(a);
    close(b);
    close(c);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);
}

static bool s_until_evicted(void *ud)
{
    s_fx_t *fx = ud;
    return s_ev_stats(fx).evicted >= fx->want;
}

/* Connects a client and waits until the listener has taken it (and cut
 * whoever gave way): accepts happen in this order. */
static int s_join(s_fx_t *fx, uint64_t evicted)
{
    int fd = test_sock_connect(fx->port);
    fx->want = evicted;
    s_wait(fx, s_until_evicted);
    return fd;
}

/* At connections_max an outsider holding every place with connections
 * that send nothing does not lock an honest sender out (they used to hold
 * them until the idle deadline, 300 s): the newcomer cuts the connection
 * that never completed a line, the oldest first, and its lines are
 * queued; with none such left, the one whose last line is the oldest goes;
 * a connection mid-line is kept. Evictions are counted (events stats and
 * the guard's unauth_evicted cut). */
static void test_cap_evicts_idle(void **state)
{
    (void) state;
    enum { CAP = 3 };
    s_fx_t fx;
    router_metrics_t *metrics = router_metrics_new();
    assert_non_null(metrics);
    router_guard_opts_t go = {.metrics = metrics};
    s_fx_init(&fx, &go, CAP, 1000);
    int idle[CAP];
    for (unsigned i = 0; i < CAP; i++) {
        idle[i] = test_sock_connect(fx.port);
        s_wait_open(&fx, i + 1);
    }
    /* The honest sender: the oldest idle holder gives way. */
    int honest = s_join(&fx, 1);
    s_wait_gone(&fx, idle[0]);
    assert_true(fx.gone_reset);
    s_send_str(honest, "from an honest source\n");
    s_wait_handled(&fx, 1);
    assert_int_equal(s_ev_stats(&fx).queued, 1);
    assert_int_equal(fx.reported, 1);
    /* idle[1] completes a line: idle[2], which never did, goes next,
     * though it connected later. */
    s_send_str(idle[1], "one line\n");
    s_wait_handled(&fx, 2);
    int next = s_join(&fx, 2);
    s_wait_gone(&fx, idle[2]);
    /* Now all have sent a line but `next`; it goes before them. Then the
     * honest sender's last line is older than idle[1]'s, so it goes, while
     * idle[1], mid-line now, is kept. */
    s_send_str(idle[1], "a line under way");
    fx.want_held = 1024;
    s_wait(&fx, s_until_held);
    int third = s_join(&fx, 3);
    s_wait_gone(&fx, next);
    s_send_str(third, "third\n");
    s_wait_handled(&fx, 3);
    int fourth = s_join(&fx, 4);
    s_wait_gone(&fx, honest);
    assert_int_equal(s_ev_stats(&fx).open, CAP);
    s_send_str(idle[1], ", ended\n");
    s_send_str(fourth, "fourth\n");
    s_wait_handled(&fx, 5);
    assert_int_equal(s_ev_stats(&fx).queued, 5);
    assert_int_equal(s_ev_stats(&fx).refused, 0);
    assert_int_equal(s_guard_stats(&fx).cuts[ROUTER_GUARD_EVENTS][ROUTER_GUARD_CUT_UNAUTH_EVICTED],
                     4);
    static char text[64 * 1024];
    assert_true(router_metrics_render(metrics, text, sizeof text) > 0);
    assert_non_null(
        strstr(text, "kith_comms_conn_cut_total{kind=\"events\",reason=\"unauth_evicted\"} 4"));
    int fds[] = {idle[0], idle[1], idle[2], honest, next, third, fourth};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        close(fds[i]);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);
    router_metrics_destroy(&metrics);
}

/* Drain: the listener closes, every connection stops reading and is
 * closed orderly (EOF, not a reset), a line not finished is dropped, and
 * nothing new is accepted. */
static void test_drain(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0, 1000);
    int a = test_sock_connect(fx.port), b = test_sock_connect(fx.port);
    s_send_str(a, "done\n");
    s_send_fill(b, 'b', 3000);
    fx.want_held = 4096;
    s_wait(&fx, s_until_held);
    s_wait_handled(&fx, 1);
    router_events_drain(fx.ev);
    router_events_drain(fx.ev); /* once is enough */
    s_wait_gone(&fx, a);
    s_wait_gone(&fx, b);
    assert_false(fx.gone_reset);
    close(a);
    close(b);
    s_wait_open(&fx, 0);
    assert_int_equal(s_guard_stats(&fx).held, 0);
    assert_int_equal(s_ev_stats(&fx).queued, 1);
    s_fx_fini(&fx);
}

/* Destroy with connections open (one mid-line): they are let go, their
 * storage and guard entries released (LSan checks the rest). */
static void test_destroy_with_connections(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0, 1000);
    int a = test_sock_connect(fx.port), b = test_sock_connect(fx.port);
    s_send_fill(b, 'b', 3000);
    fx.want_held = 4096;
    s_wait(&fx, s_until_held);
    s_wait_open(&fx, 2);
    router_events_destroy(&fx.ev);
    assert_int_equal(s_guard_stats(&fx).held, 0);
    s_fx_fini(&fx);
    close(a);
    close(b);
}

/* One connection's life with its allocations failing one at a time: a
 * line whole in one read, one stored across three reads (storage made,
 * then grown), a JSON line. Each run either serves it or cuts it cleanly,
 * reports exactly what it queued, gives back every byte of the budget, and
 * leaks nothing; the listener serves the next connection. */
static void test_without_memory(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0, 100000);
    /* Warm the loop up (its timer slots, the listener's first accept) so
     * the runs fail the allocations of a connection, not of the harness. */
    int w = test_sock_connect(fx.port);
    s_send_str(w, "warm\n");
    s_wait_handled(&fx, 1);
    close(w);
    s_wait_open(&fx, 0);
    long run;
    unsigned served = 0;
    for (run = 0; run < ALLOC_FAIL_RUNS_MAX; run++) {
        router_events_stats_t before = s_ev_stats(&fx);
        uint64_t base = before.queued + before.skipped;
        int fd = test_sock_connect(fx.port);
        fx.fd = fd;
        alloc_fail_arm(run);
        s_send_str(fd, "one\n");
        s_send_fill(fd, 'x', 1000);
        fx.want = base + 1;
        fx.want_held = 1024;
        s_wait(&fx, s_until_held_or_gone);
        if (!s_peer_gone(fd, NULL)) {
            s_send_fill(fd, 'y', 2000);
            fx.want_held = 4096;
            s_wait(&fx, s_until_held_or_gone);
        }
        if (!s_peer_gone(fd, NULL)) {
            s_send_str(fd, "\n{\"body\":\"three\"}\n");
            fx.want = base + 3;
            s_wait(&fx, s_until_handled_or_gone);
        }
        unsigned failed = alloc_fail_disarm();
        bool gone = s_peer_gone(fd, NULL);
        close(fd);
        s_wait_open(&fx, 0);
        router_events_stats_t after = s_ev_stats(&fx);
        assert_int_equal(s_guard_stats(&fx).held, 0);
        assert_int_equal(fx.reported, after.queued);
        assert_true(after.queued + after.skipped <= base + 3);
        if (!gone && after.queued == before.queued + 3)
            served++;
        if (failed == 0) {
            assert_false(gone);
            assert_int_equal(after.queued, before.queued + 3);
            break;
        }
    }
    assert_true(run > 2);
    assert_true(run < ALLOC_FAIL_RUNS_MAX);
    assert_true(served >= 1);
    int fd = test_sock_connect(fx.port);
    uint64_t q = s_ev_stats(&fx).queued;
    s_send_str(fd, "after\n");
    fx.want = q + s_ev_stats(&fx).skipped + 1;
    s_wait(&fx, s_until_handled);
    assert_int_equal(s_ev_stats(&fx).queued, q + 1);
    close(fd);
    s_wait_open(&fx, 0);
    s_fx_fini(&fx);
}

/* router_events_new without a guard, and a full set of listeners. */
static void test_refusals(void **state)
{
    (void) state;
    errno = 0;
    assert_null(router_events_new(&(router_events_opts_t){0}));
    assert_int_equal(errno, EINVAL);
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0, 10);
    router_addr_t addr;
    router_addr_err_t why;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, &why), 0);
    router_listener_t *more[8] = {0};
    size_t n = 0;
    while (n < 8 && (more[n] = router_events_listen(fx.ev, &addr)) != NULL)
        n++;
    assert_int_equal(n, 7); /* 8 in all */
    assert_int_equal(errno, ENOSPC);
    alloc_fail_arm(0);
    assert_null(router_events_new(&(router_events_opts_t){.guard = fx.guard}));
    assert_int_equal(alloc_fail_disarm(), 1);
    s_fx_fini(&fx);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_and_too_long),
        cmocka_unit_test(test_too_long_holds_nothing),
        cmocka_unit_test(test_partial_line_deadline),
        cmocka_unit_test(test_budget_cuts_largest),
        cmocka_unit_test(test_budget_shared_cuts_comms),
        cmocka_unit_test(test_budget_cuts_the_line),
        cmocka_unit_test(test_inbox_full),
        cmocka_unit_test(test_reset_mid_line),
        cmocka_unit_test(test_connection_bounds),
        cmocka_unit_test(test_cap_evicts_idle),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_destroy_with_connections),
        cmocka_unit_test(test_without_memory),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
