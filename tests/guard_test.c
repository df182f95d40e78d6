/* tests/guard_test.c — the comms guard's per-source share
 * (router/comms/guard.c, spec/WIRE.md §9.1): a newcomer from a source that
 * holds its share of unauthenticated connections cuts one of that source's
 * that has delivered no frame — the oldest silent one, else the one mid-way
 * through its first frame that read last the longest ago — and is refused
 * only when every one of them has delivered a frame. Before, it was always
 * refused, so one local user holding 32 silent connections to 127.0.0.1
 * (or the Unix socket) locked every peer on the machine out. Connections
 * are socket pairs served by a real loop; a Unix peer has no address, so
 * all of them through one (stand-in) listener are one source. The source
 * keys of TCP peers (router/net/sources.c) are read the same way: an
 * IPv4 client of a dual-stack listener is its IPv4 address, ::1 is not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "loop_until.h"
#include "router/comms/guard.h"
#include "router/metrics.h"
#include "router/net/conn.h"
#include "router/net/loop.h"

#define CONNS_MAX 16
#define WAIT_MAX_MS 10000

/* Stand-ins for listeners: only their addresses are used (a Unix peer's
 * source is the listener it came through). */
static int s_listener_a, s_listener_b;
#define LISTENER_A ((const router_listener_t *) &s_listener_a)
#define LISTENER_B ((const router_listener_t *) &s_listener_b)

typedef struct {
    router_guard_conn_t gc;  /* the entry under test */
    router_conn_t *conn;     /* our end, served by the loop */
    int peer_fd;             /* the other end, held open */
    bool closed;             /* on_close ran */
    bool cut;                /* the guard cut it */
    router_guard_cut_t why;  /* ...for this */
} s_entry_t;

typedef struct {
    router_loop_t *loop;
    router_metrics_t *metrics;
    router_guard_t *guard;
    s_entry_t e[CONNS_MAX];
    int n;
} s_fx_t;

static void s_on_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    (void) conn;
    (void) data;
    (void) len;
    (void) ud;
}

static void s_on_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    (void) conn;
    (void) reason;
    s_entry_t *e = ud;
    router_guard_leave(&e->gc);
    e->closed = true;
}

static const router_conn_handlers_t s_handlers = {.on_data = s_on_data, .on_close = s_on_close};

static void s_on_cut(router_guard_conn_t *gc, router_guard_cut_t why, void *ud)
{
    s_entry_t *e = ud;
    assert_ptr_equal(gc, &e->gc);
    e->cut = true;
    e->why = why;
    router_conn_abort(e->conn);
}

static void s_fx_init(s_fx_t *fx, const router_guard_opts_t *extra)
{
    memset(fx, 0, sizeof *fx);
    fx->loop = router_loop_new(NULL);
    assert_non_null(fx->loop);
    fx->metrics = router_metrics_new();
    assert_non_null(fx->metrics);
    router_guard_opts_t o = *extra;
    o.loop = fx->loop;
    o.metrics = fx->metrics;
    fx->guard = router_guard_new(&o);
    assert_non_null(fx->guard);
}

/* A new connection from `listener`'s one source; returns its index, with
 * `*joined` what router_guard_join answered. */
static int s_conn(s_fx_t *fx, const router_listener_t *listener, router_guard_kind_t kind,
                  int *joined)
{
    assert_true(fx->n < CONNS_MAX);
    int i = fx->n++;
    s_entry_t *e = &fx->e[i];
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    e->peer_fd = sv[1];
    e->conn = router_loop_adopt(fx->loop, sv[0], &s_handlers, e);
    assert_non_null(e->conn);
    *joined = router_guard_join(fx->guard, &e->gc, kind, e->conn, listener, s_on_cut, e);
    if (*joined != 0)
        router_conn_abort(e->conn); /* as comms does with a refused one */
    return i;
}

/* A TCP connection from `from` (AF_INET 127.0.0.1 or AF_INET6 ::1) to
 * listening socket `lfd` at `to`, our end served by the loop. */
static int s_tcp_conn(s_fx_t *fx, int lfd, const struct sockaddr *to, socklen_t tolen, int *joined)
{
    assert_true(fx->n < CONNS_MAX);
    int i = fx->n++;
    s_entry_t *e = &fx->e[i];
    e->peer_fd = socket(to->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(e->peer_fd >= 0);
    assert_int_equal(connect(e->peer_fd, to, tolen), 0);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(fd >= 0);
    e->conn = router_loop_adopt(fx->loop, fd, &s_handlers, e);
    assert_non_null(e->conn);
    *joined = router_guard_join(fx->guard, &e->gc, ROUTER_GUARD_COMMS, e->conn, LISTENER_A,
                                s_on_cut, e);
    if (*joined != 0)
        router_conn_abort(e->conn);
    return i;
}

/* A comms connection that must be admitted. */
static int s_admit(s_fx_t *fx, const router_listener_t *listener)
{
    int joined = -1;
    int i = s_conn(fx, listener, ROUTER_GUARD_COMMS, &joined);
    assert_int_equal(joined, 0);
    return i;
}

static bool s_all_closed(void *ud)
{
    s_fx_t *fx = ud;
    for (int i = 0; i < fx->n; i++)
        if (!fx->e[i].closed)
            return false;
    return true;
}

static s_entry_t *s_closing;

static bool s_closed(void *ud)
{
    (void) ud;
    return s_closing->closed;
}

/* Runs the loop until entry i's on_close has run. */
static void s_wait_closed(s_fx_t *fx, int i)
{
    s_closing = &fx->e[i];
    test_loop_until(fx->loop, s_closed, NULL, 1, WAIT_MAX_MS);
}

static void s_fx_done(s_fx_t *fx)
{
    for (int i = 0; i < fx->n; i++)
        if (!fx->e[i].closed)
            router_conn_abort(fx->e[i].conn);
    test_loop_until(fx->loop, s_all_closed, fx, 1, WAIT_MAX_MS);
    router_guard_stats_t st;
    router_guard_stats(fx->guard, &st);
    assert_int_equal(st.unauth, 0);
    for (int i = 0; i < fx->n; i++)
        close(fx->e[i].peer_fd);
    router_guard_destroy(&fx->guard);
    router_loop_destroy(&fx->loop);
    router_metrics_destroy(&fx->metrics);
}

static router_guard_stats_t s_stats(s_fx_t *fx)
{
    router_guard_stats_t st;
    router_guard_stats(fx->guard, &st);
    return st;
}

static uint64_t s_source_evicted(s_fx_t *fx)
{
    return s_stats(fx).cuts[ROUTER_GUARD_COMMS][ROUTER_GUARD_CUT_SOURCE_EVICTED];
}

static uint64_t s_t0;

static bool s_later(void *ud)
{
    return router_loop_now_ms(ud) > s_t0;
}

/* Runs the loop until its clock has moved (so the next read is later). */
static void s_tick(s_fx_t *fx)
{
    s_t0 = router_loop_now_ms(fx->loop);
    test_loop_until(fx->loop, s_later, fx->loop, 1, WAIT_MAX_MS);
}

/* ---------------------------------------------------------------- tests */

/* At the share, the newcomer cuts the oldest silent one and is admitted;
 * the source stays at its share; the cut is counted and in /metrics. */
static void test_silent_cut_for_newcomer(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 3});
    int a = s_admit(&fx, LISTENER_A);
    s_admit(&fx, LISTENER_A);
    s_admit(&fx, LISTENER_A);
    int d = s_admit(&fx, LISTENER_A);
    assert_true(fx.e[a].cut);
    assert_int_equal(fx.e[a].why, ROUTER_GUARD_CUT_SOURCE_EVICTED);
    for (int i = 1; i <= d; i++)
        assert_false(fx.e[i].cut);
    router_guard_stats_t st = s_stats(&fx);
    assert_int_equal(st.unauth, 3);
    assert_int_equal(st.refused_per_source[ROUTER_GUARD_COMMS], 0);
    assert_int_equal(s_source_evicted(&fx), 1);
    assert_int_equal(st.cuts[ROUTER_GUARD_COMMS][ROUTER_GUARD_CUT_UNAUTH_EVICTED], 0);
    /* Each newcomer cuts the next oldest: never more than the share. */
    s_admit(&fx, LISTENER_A);
    assert_true(fx.e[1].cut);
    assert_int_equal(s_stats(&fx).unauth, 3);
    assert_int_equal(s_source_evicted(&fx), 2);
    char text[16384];
    assert_true(router_metrics_render(fx.metrics, text, sizeof text) > 0);
    assert_non_null(
        strstr(text, "kith_comms_conn_cut_total{kind=\"comms\",reason=\"source_evicted\"} 2"));
    /* The cut ones' on_close leaves again (a no-op): the source still
     * counts three, so the next newcomer cuts one more. */
    assert_null(fx.e[0].gc.guard);
    s_wait_closed(&fx, 0);
    s_wait_closed(&fx, 1);
    int f = s_admit(&fx, LISTENER_A);
    assert_true(fx.e[2].cut);
    assert_false(fx.e[f].cut);
    assert_int_equal(s_stats(&fx).unauth, 3);
    assert_int_equal(s_source_evicted(&fx), 3);
    s_fx_done(&fx);
}

/* A connection mid-way through its first frame is passed over while a
 * silent one is left, even a newer one. */
static void test_oldest_silent_before_mid_frame(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 3});
    int a = s_admit(&fx, LISTENER_A);
    int b = s_admit(&fx, LISTENER_A);
    int c = s_admit(&fx, LISTENER_A);
    router_guard_progress(&fx.e[a].gc, 0, true); /* a length prefix read */
    s_admit(&fx, LISTENER_A);
    assert_false(fx.e[a].cut);
    assert_true(fx.e[b].cut);
    assert_false(fx.e[c].cut);
    /* Bytes held count as begun too. */
    assert_int_equal(router_guard_hold(&fx.e[c].gc, 100), 0);
    int e = s_admit(&fx, LISTENER_A);
    assert_false(fx.e[c].cut);
    assert_true(fx.e[3].cut); /* the silent newcomer of before */
    assert_false(fx.e[e].cut);
    assert_int_equal(s_source_evicted(&fx), 2);
    router_guard_drop(&fx.e[c].gc, 0);
    s_fx_done(&fx);
}

/* None silent: the one mid-frame whose last read is the oldest goes, so a
 * peer still streaming its first frame outlasts ones that stopped. */
static void test_stalest_mid_frame_when_none_silent(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 3});
    int a = s_admit(&fx, LISTENER_A);
    int b = s_admit(&fx, LISTENER_A);
    int c = s_admit(&fx, LISTENER_A);
    for (int i = a; i <= c; i++)
        router_guard_progress(&fx.e[i].gc, 0, true);
    s_tick(&fx);
    router_guard_progress(&fx.e[a].gc, 0, true); /* a is still sending */
    s_admit(&fx, LISTENER_A);
    assert_false(fx.e[a].cut);
    assert_true(fx.e[b].cut); /* b and c read last together: the older goes */
    assert_false(fx.e[c].cut);
    assert_int_equal(s_stats(&fx).refused_per_source[ROUTER_GUARD_COMMS], 0);
    s_fx_done(&fx);
}

/* Every one has delivered a frame (its envelope is being checked): the
 * newcomer is refused as before; once one authenticates there is room. */
static void test_all_delivered_refuses(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 3});
    int a = s_admit(&fx, LISTENER_A);
    for (int i = a; i < a + 3; i++) {
        if (i > a)
            s_admit(&fx, LISTENER_A);
        router_guard_progress(&fx.e[i].gc, 1, i == a + 2); /* the last begun a second */
    }
    int joined = 0;
    s_conn(&fx, LISTENER_A, ROUTER_GUARD_COMMS, &joined);
    assert_int_equal(joined, -1);
    for (int i = a; i < a + 3; i++)
        assert_false(fx.e[i].cut);
    router_guard_stats_t st = s_stats(&fx);
    assert_int_equal(st.refused_per_source[ROUTER_GUARD_COMMS], 1);
    assert_int_equal(s_source_evicted(&fx), 0);
    assert_int_equal(st.unauth, 3);
    /* Another source is not held back by this one. */
    s_admit(&fx, LISTENER_B);
    /* One authenticates: it leaves the share, a newcomer fits uncut. */
    router_guard_authenticated(&fx.e[a].gc);
    int n = s_admit(&fx, LISTENER_A);
    for (int i = a; i <= n; i++)
        assert_false(fx.e[i].cut);
    assert_int_equal(s_source_evicted(&fx), 0);
    s_fx_done(&fx);
}

/* A share of one: the cut frees the source itself; the newcomer is
 * counted on a new one (under ASan a stale source would show). */
static void test_share_of_one(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 1});
    int a = s_admit(&fx, LISTENER_A);
    int b = s_admit(&fx, LISTENER_A);
    int c = s_admit(&fx, LISTENER_A);
    assert_true(fx.e[a].cut);
    assert_true(fx.e[b].cut);
    assert_false(fx.e[c].cut);
    assert_int_equal(s_stats(&fx).unauth, 1);
    assert_int_equal(s_source_evicted(&fx), 2);
    s_fx_done(&fx);
}

/* Only the full source's own are cut: with both shares in play, the
 * global share's oldest goes for the global bound, the source's own for
 * its share. */
static void test_only_own_source_cut(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 2, .unauth_max = 8});
    int b = s_admit(&fx, LISTENER_B); /* the oldest of all, another source */
    int a1 = s_admit(&fx, LISTENER_A);
    int a2 = s_admit(&fx, LISTENER_A);
    s_admit(&fx, LISTENER_A);
    assert_false(fx.e[b].cut);
    assert_true(fx.e[a1].cut);
    assert_false(fx.e[a2].cut);
    assert_int_equal(s_stats(&fx).unauth, 3);
    s_fx_done(&fx);
}

/* Plain events keep their rule: at the share the newcomer is refused and
 * nothing is cut (the events listener evicts at its own cap). */
static void test_events_refused_not_cut(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.events_per_source_max = 2});
    int joined = -1;
    int a = s_conn(&fx, LISTENER_A, ROUTER_GUARD_EVENTS, &joined);
    assert_int_equal(joined, 0);
    s_conn(&fx, LISTENER_A, ROUTER_GUARD_EVENTS, &joined);
    assert_int_equal(joined, 0);
    s_conn(&fx, LISTENER_A, ROUTER_GUARD_EVENTS, &joined);
    assert_int_equal(joined, -1);
    assert_false(fx.e[a].cut);
    router_guard_stats_t st = s_stats(&fx);
    assert_int_equal(st.refused_per_source[ROUTER_GUARD_EVENTS], 1);
    assert_int_equal(st.cuts[ROUTER_GUARD_EVENTS][ROUTER_GUARD_CUT_SOURCE_EVICTED], 0);
    s_fx_done(&fx);
}

/* An entry that left (or was cut, or never joined) is inert: asking to
 * hold bytes is granted without counting, progress and pauses touch no
 * deadline, a cut counted then is not counted. */
static void test_left_entry_inert(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.partial_bytes_max = 1024});
    int a = s_admit(&fx, LISTENER_A);
    router_guard_leave(&fx.e[a].gc);
    router_guard_leave(&fx.e[a].gc);
    assert_int_equal(router_guard_hold(&fx.e[a].gc, 1 << 20), 0);
    router_guard_progress(&fx.e[a].gc, 1, true);
    router_guard_pause(&fx.e[a].gc);
    router_guard_authenticated(&fx.e[a].gc);
    router_guard_count_cut(&fx.e[a].gc, ROUTER_GUARD_CUT_DEADLINE);
    router_guard_stats_t st = s_stats(&fx);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.unauth, 0);
    assert_int_equal(st.cuts[ROUTER_GUARD_COMMS][ROUTER_GUARD_CUT_DEADLINE], 0);
    assert_string_equal(router_guard_cut_str(ROUTER_GUARD_CUT_SOURCE_EVICTED), "source_evicted");
    assert_string_equal(router_guard_cut_str(ROUTER_GUARD_CUTS), "unknown");
    s_fx_done(&fx);
}

/* In-process connections have no source and are never cut for one. */
static void test_inproc_exempt(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 1});
    int a = s_admit(&fx, NULL);
    int b = s_admit(&fx, NULL);
    assert_false(fx.e[a].cut);
    assert_false(fx.e[b].cut);
    assert_int_equal(s_stats(&fx).unauth, 0);
    s_fx_done(&fx);
}

/* 127.0.0.1 reaching a dual-stack ([::]) listener arrives as
 * ::ffff:127.0.0.1 and is the same source as 127.0.0.1 on an IPv4 one
 * (else moving the listener to [::], or using both, doubled the share);
 * ::1 is a source of its own. Each has delivered a frame, so none can be
 * cut and the counts show in refusals. */
static void test_tcp_sources(void **state)
{
    (void) state;
    int l4 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int l6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l4 >= 0 && l6 >= 0);
    int off = 0;
    assert_int_equal(setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off), 0);
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any};
    socklen_t len4 = sizeof a4, len6 = sizeof a6;
    if (bind(l6, (struct sockaddr *) &a6, len6) != 0) {
        close(l4);
        close(l6);
        skip(); /* no IPv6 here */
    }
    assert_int_equal(bind(l4, (struct sockaddr *) &a4, len4), 0);
    assert_int_equal(listen(l4, 8), 0);
    assert_int_equal(listen(l6, 8), 0);
    assert_int_equal(getsockname(l4, (struct sockaddr *) &a4, &len4), 0);
    assert_int_equal(getsockname(l6, (struct sockaddr *) &a6, &len6), 0);
    /* The dual-stack listener, reached over IPv4 and over ::1. */
    struct sockaddr_in via4 = {.sin_family = AF_INET, .sin_port = a6.sin6_port,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 via6 = {.sin6_family = AF_INET6, .sin6_port = a6.sin6_port,
                                .sin6_addr = in6addr_loopback};

    s_fx_t fx;
    s_fx_init(&fx, &(router_guard_opts_t){.unauth_per_source_max = 2});
    int joined = -1;
    int a = s_tcp_conn(&fx, l4, (struct sockaddr *) &a4, sizeof a4, &joined);
    assert_int_equal(joined, 0);
    router_guard_progress(&fx.e[a].gc, 1, false);
    int b = s_tcp_conn(&fx, l6, (struct sockaddr *) &via4, sizeof via4, &joined);
    assert_int_equal(joined, 0);
    router_guard_progress(&fx.e[b].gc, 1, false);
    /* 127.0.0.1 holds its two, whichever listener: a third is refused. */
    s_tcp_conn(&fx, l6, (struct sockaddr *) &via4, sizeof via4, &joined);
    assert_int_equal(joined, -1);
    s_tcp_conn(&fx, l4, (struct sockaddr *) &a4, sizeof a4, &joined);
    assert_int_equal(joined, -1);
    assert_int_equal(s_stats(&fx).refused_per_source[ROUTER_GUARD_COMMS], 2);
    /* ::1 is another source. */
    s_tcp_conn(&fx, l6, (struct sockaddr *) &via6, sizeof via6, &joined);
    assert_int_equal(joined, 0);
    assert_int_equal(s_stats(&fx).unauth, 3);
    assert_int_equal(s_source_evicted(&fx), 0);
    s_fx_done(&fx);
    close(l4);
    close(l6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_silent_cut_for_newcomer),
        cmocka_unit_test(test_oldest_silent_before_mid_frame),
        cmocka_unit_test(test_stalest_mid_frame_when_none_silent),
        cmocka_unit_test(test_all_delivered_refuses),
        cmocka_unit_test(test_share_of_one),
        cmocka_unit_test(test_only_own_source_cut),
        cmocka_unit_test(test_events_refused_not_cut),
        cmocka_unit_test(test_inproc_exempt),
        cmocka_unit_test(test_left_entry_inert),
        cmocka_unit_test(test_tcp_sources),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
