/* tests/listen_test.c — router/net/listen.c's failure handling, on both
 * backends, with real sockets on the test's thread: out of memory at each
 * allocation of router_loop_listen (TCP and Unix: nothing leaks, no socket
 * file is left) and of an accept (the client is reset, the failure logged
 * and the listener paused); a connection over the listener's or the
 * loop's cap (reset, never an orderly end); an accept callback that sets no
 * handlers; a process out of descriptors (EMFILE: the listener backs off
 * and accepts again once descriptors are free), a listener closed while
 * backing off, and backing off with every timer slot taken (no spin:
 * accept attempts counted over loop iterations; made without a slot or
 * not). Listening and
 * Unix socket files in the ordinary case are tests/conn_test.c. */
#include <dirent.h>
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "loop_until.h"
#include "router/log.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"

#define WAIT_EVERY_MS 2
#define WAIT_MAX_MS 20000

static router_loop_backend_t s_uring = ROUTER_LOOP_URING;
static router_loop_backend_t s_epoll = ROUTER_LOOP_EPOLL;

static router_loop_t *s_loop_new(void **state, router_loop_opts_t *opts)
{
    router_loop_opts_t o = opts ? *opts : (router_loop_opts_t){0};
    o.backend = *(router_loop_backend_t *) *state;
    router_loop_t *loop = router_loop_new(&o);
    if (!loop && o.backend == ROUTER_LOOP_URING && (errno == ENOSYS || errno == EPERM)) {
        print_message("io_uring refused here (%s): skipping\n", strerror(errno));
        skip();
    }
    assert_non_null(loop);
    return loop;
}

static unsigned s_fd_count(void)
{
    unsigned n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

typedef struct {
    router_loop_t *loop;
    router_listener_t *l;
    unsigned accepted;  /* on_accept calls */
    unsigned closed;    /* on_close calls */
    router_addr_t peer; /* the last accepted connection's peer address */
    bool no_handlers;   /* on_accept leaves the connection without handlers */
    int fd;             /* the client s_until_gone watches */
    uint64_t want;      /* what the predicates wait for */
    struct rlimit restore; /* RLIMIT_NOFILE to put back */
    int end;            /* s_until_end: 0 for an orderly end, else the error */
} s_fx_t;

static void s_on_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) c;
    (void) data;
    (void) len;
    (void) ud;
}

static void s_on_close(router_conn_t *c, router_close_reason_t why, void *ud)
{
    (void) c;
    (void) why;
    ((s_fx_t *) ud)->closed++;
}

static void s_on_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    s_fx_t *fx = ud;
    fx->accepted++;
    fx->peer = *router_conn_peer(c);
    if (fx->no_handlers)
        return;
    static const router_conn_handlers_t h = {.on_data = s_on_data, .on_close = s_on_close};
    router_conn_set_handlers(c, &h, fx);
}

static void s_listen_tcp(s_fx_t *fx)
{
    router_addr_t addr;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    fx->l = router_loop_listen(fx->loop, &addr, s_on_accept, fx);
    assert_non_null(fx->l);
}

static int s_connect(const s_fx_t *fx)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(router_addr_port(router_listener_addr(fx->l))),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *) &a, sizeof a), 0);
    return fd;
}

static bool s_peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return false;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

static router_loop_stats_t s_loop_stats(const s_fx_t *fx)
{
    router_loop_stats_t st;
    router_loop_stats(fx->loop, &st);
    return st;
}

static bool s_until_gone(void *ud)
{
    return s_peer_gone(((s_fx_t *) ud)->fd);
}

/* How the client fx->fd saw its connection end, kept in fx->end (a
 * reset's error is reported by one recv only). */
static bool s_until_end(void *ud)
{
    s_fx_t *fx = ud;
    struct pollfd p = {.fd = fx->fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return false;
    char c;
    ssize_t n = recv(fx->fd, &c, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    assert_true(n <= 0); /* nothing is ever sent to these clients */
    fx->end = n == 0 ? 0 : errno;
    return true;
}

/* Counts the log lines that say an accept failed for want of memory. */
static void s_tap_nomem(router_log_level_t level, const char *module, const char *line,
                        size_t len, void *ud)
{
    static const char needle[] = "accept failed (Cannot allocate memory)";
    (void) level;
    (void) module;
    if (memmem(line, len, needle, sizeof needle - 1))
        ++*(unsigned *) ud;
}

static bool s_until_accepted(void *ud)
{
    s_fx_t *fx = ud;
    return fx->accepted >= fx->want;
}

static bool s_until_accept_errors(void *ud)
{
    s_fx_t *fx = ud;
    return s_loop_stats(fx).accept_errors >= fx->want;
}

static bool s_never(void *ud)
{
    (void) ud;
    return false;
}

static void s_wait(s_fx_t *fx, bool (*until)(void *))
{
    test_loop_until(fx->loop, until, fx, WAIT_EVERY_MS, WAIT_MAX_MS);
}

/* Lowers the descriptor limit so that no descriptor is free: an accept
 * fails with EMFILE. */
static void s_fds_exhaust(s_fx_t *fx)
{
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &fx->restore), 0);
    int lowest = dup(0);
    assert_true(lowest >= 0);
    close(lowest);
    struct rlimit rl = fx->restore;
    rl.rlim_cur = (rlim_t) lowest;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
}

static void s_fds_restore(s_fx_t *fx)
{
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &fx->restore), 0);
}

/* ------------------------------------------------------------ tests */

/* Out of memory at each allocation of router_loop_listen, TCP and Unix:
 * NULL with ENOMEM, no descriptor kept, no socket file left behind; the
 * run that fails nothing listens. */
static void test_listen_without_memory(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    char dir[] = "/tmp/kith-listen-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "uds://%s/sub/l.sock", dir);
    const char *texts[] = {"127.0.0.1:0", path};
    s_fx_t fx = {.loop = loop};
    for (size_t k = 0; k < 2; k++) {
        router_addr_t addr;
        assert_int_equal(router_addr_parse(texts[k], &addr, NULL), 0);
        long run;
        for (run = 0; run < ALLOC_FAIL_RUNS_MAX; run++) {
            unsigned fds = s_fd_count();
            alloc_fail_arm(run);
            router_listener_t *l = router_loop_listen(loop, &addr, s_on_accept, &fx);
            unsigned failed = alloc_fail_disarm();
            if (!l) {
                assert_true(failed > 0);
                assert_int_equal(errno, ENOMEM);
                assert_int_equal(s_fd_count(), fds);
                if (k == 1)
                    assert_int_not_equal(access(addr.u.un.sun_path, F_OK), 0);
                continue;
            }
            router_listener_close(&l);
            if (k == 1)
                assert_int_not_equal(access(addr.u.un.sun_path, F_OK), 0);
            if (failed == 0)
                break;
        }
        assert_true(run > 0 && run < ALLOC_FAIL_RUNS_MAX);
    }
    router_loop_destroy(&loop);
    snprintf(path, sizeof path, "%s/sub", dir);
    rmdir(path);
    assert_int_equal(rmdir(dir), 0);
}

/* An accept whose connection cannot be allocated: the socket is closed
 * (its client sees the end), counted as an accept error, and the next
 * connection is served. */
static void test_accept_without_memory(void **state)
{
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, NULL);
    s_listen_tcp(&fx);
    /* Warm up: the loop's first run makes what it keeps (timer slots). */
    assert_false(test_loop_wait(fx.loop, s_never, &fx, 1, 1));
    int a = s_connect(&fx);
    struct pollfd p = {.fd = a};
    poll(&p, 1, 0);
    alloc_fail_arm(0);
    fx.fd = a;
    s_wait(&fx, s_until_gone);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(fx.accepted, 0);
    assert_int_equal(s_loop_stats(&fx).accept_errors, 1);
    int b = s_connect(&fx);
    fx.want = 1;
    s_wait(&fx, s_until_accepted);
    close(a);
    close(b);
    router_loop_destroy(&fx.loop);
}

/* The same, as the client and the operator see it: the client is reset
 * (WIRE §9.1: an orderly end means "refused", and nothing refused the
 * envelope it may have sent), the failure is logged like accept4()'s own
 * ENOMEM (it was only counted) and the listener pauses, then serves the
 * next client. */
static void test_accept_without_memory_reset_and_logged(void **state)
{
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, NULL);
    s_listen_tcp(&fx);
    assert_false(test_loop_wait(fx.loop, s_never, &fx, 1, 1));
    unsigned lines = 0;
    router_log_set_tap(s_tap_nomem, &lines);
    fx.fd = s_connect(&fx);
    alloc_fail_arm(0);
    s_wait(&fx, s_until_end);
    assert_int_equal(alloc_fail_disarm(), 1);
    router_log_set_tap(NULL, NULL);
    assert_int_equal(fx.end, ECONNRESET);
    assert_int_equal(lines, 1);
    assert_int_equal(fx.accepted, 0);
    assert_int_equal(s_loop_stats(&fx).accept_errors, 1);
    int b = s_connect(&fx);
    fx.want = 1;
    s_wait(&fx, s_until_accepted);
    close(fx.fd);
    close(b);
    router_loop_destroy(&fx.loop);
}

/* A connection over the listener's cap, or the loop's, is reset, not
 * ended orderly: a comms sender reads an orderly end without an ack as
 * "refused" (WIRE §9.1) and would not send again. */
static void test_over_cap_reset(void **state)
{
    router_loop_opts_t o = {.max_conns = 2};
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, &o);
    s_listen_tcp(&fx);
    router_listener_set_max_conns(fx.l, 1);
    int a = s_connect(&fx);
    fx.want = 1;
    s_wait(&fx, s_until_accepted);
    fx.fd = s_connect(&fx); /* over the listener's cap */
    s_wait(&fx, s_until_end);
    assert_int_equal(fx.end, ECONNRESET);
    close(fx.fd);
    router_listener_set_max_conns(fx.l, 0);
    int b = s_connect(&fx);
    fx.want = 2;
    s_wait(&fx, s_until_accepted);
    fx.fd = s_connect(&fx); /* over the loop's */
    s_wait(&fx, s_until_end);
    assert_int_equal(fx.end, ECONNRESET);
    close(fx.fd);
    router_loop_stats_t st = s_loop_stats(&fx);
    assert_int_equal(st.refused, 2);
    assert_int_equal(fx.accepted, 2);
    close(a);
    close(b);
    router_loop_destroy(&fx.loop);
}

/* An accept callback that gives the connection no handlers: the loop
 * aborts it; the listener goes on. */
static void test_accept_without_handlers(void **state)
{
    s_fx_t fx = {.no_handlers = true};
    fx.loop = s_loop_new(state, NULL);
    s_listen_tcp(&fx);
    int a = s_connect(&fx);
    fx.fd = a;
    s_wait(&fx, s_until_gone);
    assert_int_equal(fx.accepted, 1);
    router_listener_stats_t ls;
    router_listener_stats(fx.l, &ls);
    assert_int_equal(ls.open, 0);
    fx.no_handlers = false;
    int b = s_connect(&fx);
    fx.want = 2;
    s_wait(&fx, s_until_accepted);
    router_listener_stats(fx.l, &ls);
    assert_int_equal(ls.open, 1);
    close(a);
    close(b);
    router_loop_destroy(&fx.loop);
}

/* A peer that resets before its connection is accepted: the connection
 * still carries its address (getpeername() would fail with ENOTCONN by
 * then, and a connection without an address was exempt from the
 * per-source and unauthenticated bounds, as if from inside the process). */
static void test_reset_before_accept_keeps_peer(void **state)
{
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, NULL);
    s_listen_tcp(&fx);
    int a = s_connect(&fx);
    struct sockaddr_in mine;
    socklen_t len = sizeof mine;
    assert_int_equal(getsockname(a, (struct sockaddr *) &mine, &len), 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(a); /* a reset, while the connection waits in the accept queue */
    fx.want = 1;
    s_wait(&fx, s_until_accepted);
    assert_int_equal(fx.peer.len, sizeof mine);
    assert_int_equal(fx.peer.u.in4.sin_family, AF_INET);
    assert_int_equal(fx.peer.u.in4.sin_port, mine.sin_port);
    assert_int_equal(fx.peer.u.in4.sin_addr.s_addr, mine.sin_addr.s_addr);
    router_loop_destroy(&fx.loop);
}

/* Out of descriptors when listening (a daemon started at its limit): TCP
 * fails with EMFILE at socket(); Unix with a stale socket file at the path
 * fails at the probe that tells a stale file from a live one, and leaves
 * the file alone. Nothing is kept open. With descriptors back both listen,
 * the stale file replaced by a live socket. */
static void test_listen_without_descriptors(void **state)
{
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, NULL);
    char dir[] = "/tmp/kith-listen-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char text[128];
    snprintf(text, sizeof text, "uds://%s/l.sock", dir);
    router_addr_t tcp, uds;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &tcp, NULL), 0);
    assert_int_equal(router_addr_parse(text, &uds, NULL), 0);
    int stale = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(stale >= 0);
    assert_int_equal(bind(stale, &uds.u.sa, uds.len), 0);
    close(stale); /* the file stays, nobody listening: stale */
    unsigned fds = s_fd_count();
    s_fds_exhaust(&fx);
    errno = 0;
    router_listener_t *t = router_loop_listen(fx.loop, &tcp, s_on_accept, &fx);
    int t_err = errno;
    errno = 0;
    router_listener_t *u = router_loop_listen(fx.loop, &uds, s_on_accept, &fx);
    int u_err = errno;
    s_fds_restore(&fx);
    assert_null(t);
    assert_int_equal(t_err, EMFILE);
    assert_null(u);
    assert_int_equal(u_err, EMFILE);
    assert_int_equal(s_fd_count(), fds);
    struct stat st;
    assert_int_equal(lstat(uds.u.un.sun_path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    t = router_loop_listen(fx.loop, &tcp, s_on_accept, &fx);
    assert_non_null(t);
    u = router_loop_listen(fx.loop, &uds, s_on_accept, &fx);
    assert_non_null(u);
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c >= 0);
    assert_int_equal(connect(c, &uds.u.sa, uds.len), 0); /* live now */
    fx.want = 1;
    s_wait(&fx, s_until_accepted);
    close(c);
    router_listener_close(&u);
    assert_int_not_equal(access(uds.u.un.sun_path, F_OK), 0);
    router_listener_close(&t);
    router_loop_destroy(&fx.loop);
    assert_int_equal(rmdir(dir), 0);
}

/* Out of descriptors: accepts fail, the listener backs off (counted, no
 * spin), and once descriptors are free again the waiting connection is
 * accepted. */
static void test_emfile_backs_off_and_recovers(void **state)
{
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, NULL);
    s_listen_tcp(&fx);
    int a = s_connect(&fx);
    s_fds_exhaust(&fx);
    fx.want = 1;
    s_wait(&fx, s_until_accept_errors);
    s_fds_restore(&fx);
    assert_int_equal(fx.accepted, 0);
    fx.want = 1;
    s_wait(&fx, s_until_accepted);
    router_listener_stats_t ls;
    router_listener_stats(fx.l, &ls);
    assert_int_equal(ls.accepted, 1);
    close(a);
    router_loop_destroy(&fx.loop);
}

/* Counts the log lines that report accept failures suppressed earlier. */
static void s_tap_suppressed(router_log_level_t level, const char *module, const char *line,
                             size_t len, void *ud)
{
    static const char needle[] = "similar suppressed)";
    (void) level;
    (void) module;
    if (memmem(line, len, needle, sizeof needle - 1))
        ++*(unsigned *) ud;
}

static bool s_until_clock(void *ud)
{
    s_fx_t *fx = ud;
    return router_loop_now_ms(fx->loop) >= fx->want;
}

/* Accept failures not logged (at most one line a second) are not lost: a
 * first streak ends with some suppressed (a retry failed within the
 * second); the next failure, a second or more later, says how many. */
static void test_suppressed_failures_reported(void **state)
{
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, NULL);
    s_listen_tcp(&fx);
    unsigned lines = 0;
    router_log_set_tap(s_tap_suppressed, &lines);
    int a = s_connect(&fx);
    s_fds_exhaust(&fx);
    fx.want = 2; /* the first, logged; the retry's, suppressed */
    s_wait(&fx, s_until_accept_errors);
    s_fds_restore(&fx);
    fx.want = 1;
    s_wait(&fx, s_until_accepted);
    fx.want = router_loop_now_ms(fx.loop) + 1100; /* past the second since the line */
    s_wait(&fx, s_until_clock);
    assert_int_equal(lines, 0);
    int b = s_connect(&fx);
    s_fds_exhaust(&fx);
    fx.want = s_loop_stats(&fx).accept_errors + 1;
    s_wait(&fx, s_until_accept_errors);
    s_fds_restore(&fx);
    fx.want = 2;
    s_wait(&fx, s_until_accepted);
    router_log_set_tap(NULL, NULL);
    assert_int_equal(lines, 1);
    close(a);
    close(b);
    router_loop_destroy(&fx.loop);
}

/* A listener closed while it backs off: its retry never runs (on freed
 * memory: ASan would say so), the loop runs on past the retry's time. */
static void test_close_while_backing_off(void **state)
{
    s_fx_t fx = {0};
    fx.loop = s_loop_new(state, NULL);
    s_listen_tcp(&fx);
    int a = s_connect(&fx);
    s_fds_exhaust(&fx);
    fx.want = 1;
    s_wait(&fx, s_until_accept_errors);
    s_fds_restore(&fx);
    uint64_t errors = s_loop_stats(&fx).accept_errors;
    router_listener_close(&fx.l);
    assert_null(fx.l);
    /* Timers fire in deadline order: past this wait, a retry would have. */
    assert_false(test_loop_wait(fx.loop, s_never, &fx, 50, 400));
    assert_int_equal(fx.accepted, 0);
    assert_int_equal(s_loop_stats(&fx).accept_errors, errors);
    close(a);
    router_loop_destroy(&fx.loop);
}

static void s_hang(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    *(bool *) ud = true;
    router_loop_stop(loop);
}

/* Fills every free timer slot with timers that never fire in the test;
 * returns how many. */
static unsigned s_timers_fill(router_loop_t *loop, uint64_t *ids, unsigned max, bool *hung)
{
    unsigned n = 0;
    while (n < max && (ids[n] = router_loop_timer_add(loop, 3600000, s_hang, hung)) != 0)
        n++;
    assert_int_equal(errno, ENOSPC);
    return n;
}

/* Backing off with every other slot taken: the listener's own slot serves
 * the retry, which accepts once descriptors are free. Driven by posts,
 * since the test can have no timer of its own. */
typedef struct {
    s_fx_t *fx;
    unsigned phase;  /* 0: waiting for failures; 1: for the accept */
    bool hung;
} s_post_drive_t;

static void s_drive(router_loop_t *loop, void *arg)
{
    s_post_drive_t *d = arg;
    if (d->phase == 0 && s_loop_stats(d->fx).accept_errors >= 1) {
        s_fds_restore(d->fx);
        d->phase = 1;
    }
    if (d->phase == 1 && d->fx->accepted >= 1) {
        router_loop_stop(loop);
        return;
    }
    assert_int_equal(router_loop_post(loop, s_drive, d), 0);
}

static void test_backing_off_without_timer(void **state)
{
    enum { TIMERS = 4 };
    s_fx_t fx = {0};
    router_loop_opts_t o = {.max_timers = TIMERS};
    fx.loop = s_loop_new(state, &o);
    s_listen_tcp(&fx);
    s_post_drive_t d = {.fx = &fx};
    uint64_t guard = router_loop_timer_add(fx.loop, WAIT_MAX_MS, s_hang, &d.hung);
    assert_true(guard != 0);
    uint64_t ids[TIMERS];
    unsigned n = s_timers_fill(fx.loop, ids, TIMERS, &d.hung);
    assert_int_equal(n, TIMERS - 2); /* the guard's, and the listener's own */
    int a = s_connect(&fx);
    s_fds_exhaust(&fx);
    assert_int_equal(router_loop_post(fx.loop, s_drive, &d), 0);
    int rc = router_loop_run(fx.loop);
    if (d.phase == 0)
        s_fds_restore(&fx);
    assert_int_equal(rc, 0);
    assert_false(d.hung);
    assert_int_equal(fx.accepted, 1);
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(router_loop_timer_cancel(fx.loop, ids[i]), 0);
    assert_int_equal(router_loop_timer_cancel(fx.loop, guard), 0);
    close(a);
    router_loop_destroy(&fx.loop);
}

/* Accept failing with no timer slot free must not spin: accept attempts
 * are counted over a window of loop iterations (wake callbacks, each of
 * which wakes the loop again), not over time. Then descriptors come back
 * (and, for a listener that never had a slot, one slot is freed): the
 * waiting connection is accepted. */
enum { S_WINDOW_WAKES = 400 };

typedef struct {
    s_fx_t *fx;
    unsigned phase;        /* 0: first failure; 1: counting; 2: the accept */
    unsigned wakes;        /* wake callbacks in the window */
    uint64_t errors_at;    /* accept_errors when the window opened */
    uint64_t window_errors;/* ...and how many more by its end */
    uint64_t free_id;      /* a timer to cancel when the window ends, or 0 */
    bool hung;
} s_spin_t;

static void s_spin_wake(router_loop_t *loop, void *ud)
{
    s_spin_t *d = ud;
    uint64_t errors = s_loop_stats(d->fx).accept_errors;
    if (d->phase == 0 && errors >= 1) {
        d->phase = 1;
        d->errors_at = errors;
    } else if (d->phase == 1 && ++d->wakes == S_WINDOW_WAKES) {
        d->window_errors = errors - d->errors_at;
        s_fds_restore(d->fx);
        if (d->free_id)
            assert_int_equal(router_loop_timer_cancel(loop, d->free_id), 0);
        d->phase = 2;
    } else if (d->phase == 2 && d->fx->accepted >= 1) {
        router_loop_stop(loop);
        return;
    }
    router_loop_wake(loop);
}

static void s_no_spin(void **state, bool reserved)
{
    enum { TIMERS = 8 };
    s_fx_t fx = {0};
    router_loop_opts_t o = {.max_timers = TIMERS};
    fx.loop = s_loop_new(state, &o);
    s_spin_t d = {.fx = &fx};
    uint64_t guard = router_loop_timer_add(fx.loop, WAIT_MAX_MS, s_hang, &d.hung);
    assert_true(guard != 0);
    uint64_t ids[TIMERS];
    unsigned n = 0;
    if (reserved) {
        s_listen_tcp(&fx);
        n = s_timers_fill(fx.loop, ids, TIMERS, &d.hung);
    } else {
        n = s_timers_fill(fx.loop, ids, TIMERS, &d.hung);
        s_listen_tcp(&fx); /* no slot for it */
        d.free_id = ids[--n];
    }
    int a = s_connect(&fx);
    s_fds_exhaust(&fx);
    router_loop_set_wake_cb(fx.loop, s_spin_wake, &d);
    router_loop_wake(fx.loop);
    int rc = router_loop_run(fx.loop);
    if (d.phase < 2)
        s_fds_restore(&fx);
    assert_int_equal(rc, 0);
    assert_false(d.hung);
    print_message("accept failures in %u wake-ups: %llu\n", (unsigned) S_WINDOW_WAKES,
                  (unsigned long long) d.window_errors);
    /* Paused, one retry per 100 ms at most: a spinning listener fails at
     * least once per iteration (two wake-ups). */
    assert_true(d.window_errors < S_WINDOW_WAKES / 20);
    assert_int_equal(fx.accepted, 1);
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(router_loop_timer_cancel(fx.loop, ids[i]), 0);
    assert_int_equal(router_loop_timer_cancel(fx.loop, guard), 0);
    close(a);
    router_loop_destroy(&fx.loop);
}

static void test_no_spin_without_timer(void **state)
{
    s_no_spin(state, true);
}

/* A listener made while every slot was pending has no slot of its own:
 * it stays paused (no spin) until a slot is free, then retries. */
static void test_no_spin_without_any_slot(void **state)
{
    s_no_spin(state, false);
}

#define BOTH(f)                                                        \
    {#f "@uring", f, NULL, NULL, &s_uring}, {#f "@epoll", f, NULL, NULL, &s_epoll}

int main(void)
{
    const struct CMUnitTest tests[] = {
        BOTH(test_listen_without_memory),
        BOTH(test_accept_without_memory),
        BOTH(test_accept_without_memory_reset_and_logged),
        BOTH(test_over_cap_reset),
        BOTH(test_accept_without_handlers),
        BOTH(test_listen_without_descriptors),
        BOTH(test_reset_before_accept_keeps_peer),
        BOTH(test_emfile_backs_off_and_recovers),
        BOTH(test_suppressed_failures_reported),
        BOTH(test_close_while_backing_off),
        BOTH(test_backing_off_without_timer),
        BOTH(test_no_spin_without_timer),
        BOTH(test_no_spin_without_any_slot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
