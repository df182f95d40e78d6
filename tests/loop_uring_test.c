/* tests/loop_uring_test.c — the io_uring backend when the kernel has no
 * submission slot to give (tests/uring_fail.h): a kernel whose completion
 * queue overflows refuses io_uring_enter, and every SQE kith asks for then
 * comes back NULL. Each case makes one kind of request unobtainable — a
 * send, a receive, a connect, a cancel, a poll, the listeners' poll, the
 * teardown's cancel — and checks what the loop promises: the connection it
 * concerns ends with a reason (EBUSY), the peer is told (FIN or RST, never
 * silence), nothing leaks (LSan), and every other connection goes on being
 * served. Also a wait the kernel answers with -EBADR (completions dropped):
 * the loop goes on; and polls the kernel ends with an error
 * (router_uring_op_fault: the listeners' poll, a watch's, the loop's own
 * eventfd's), armed again after a pause, never left dead, never spinning.
 * Skipped, visibly, where the kernel refuses io_uring. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <cmocka.h>
#include <liburing.h>

#include "router/log.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/net/loop_internal.h"
#include "loop_until.h"
#include "uring_fail.h"

/* Bound on every wait: a hang fails the test instead of hanging CI. */
#define S_MAX_MS 10000u

/* ------------------------------------------------------------ fixtures */

#define S_SLOTS 4

/* What the server side saw of one accepted (or dialled) connection. */
typedef struct {
    router_conn_t *conn;           /* while open */
    unsigned closes;               /* on_close calls (must stay ≤ 1) */
    router_close_reason_t reason;  /* the last on_close's */
    int err;                       /* router_conn_error() then */
    char got[64];                  /* bytes received, first 63 */
    size_t got_len;
} s_side_t;

typedef struct {
    router_loop_t *loop;
    router_listener_t *l;
    s_side_t side[S_SLOTS];
    unsigned accepted;
} s_fix_t;

static void s_on_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) c;
    s_side_t *s = ud;
    size_t room = sizeof s->got - 1 - s->got_len;
    size_t n = len < room ? len : room;
    memcpy(s->got + s->got_len, data, n);
    s->got_len += n;
}

static void s_on_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_side_t *s = ud;
    s->closes++;
    s->reason = reason;
    s->err = router_conn_error(c);
    s->conn = NULL;
}

static const router_conn_handlers_t s_handlers = {.on_data = s_on_data, .on_close = s_on_close};

static void s_on_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    s_fix_t *f = ud;
    assert_true(f->accepted < S_SLOTS);
    s_side_t *s = &f->side[f->accepted++];
    s->conn = c;
    router_conn_set_handlers(c, &s_handlers, s);
}

static int s_setup(void **state)
{
    static s_fix_t f;
    memset(&f, 0, sizeof f);
    router_loop_opts_t o = {.backend = ROUTER_LOOP_URING};
    f.loop = router_loop_new(&o);
    *state = &f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    (void) uring_fail_disarm(); /* a case that failed half-way may have left it armed */
    router_listener_close(&f->l);
    router_loop_destroy(&f->loop);
    return 0;
}

/* The fixture's loop, or the test skipped where io_uring is refused. */
static s_fix_t *s_fix(void **state)
{
    s_fix_t *f = *state;
    if (!f->loop) {
        print_message("io_uring refused here: skipping\n");
        skip();
    }
    return f;
}

static void s_listen(s_fix_t *f)
{
    router_addr_t addr;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    f->l = router_loop_listen(f->loop, &addr, s_on_accept, f);
    assert_non_null(f->l);
}

/* A blocking client socket connected to the fixture's listener; reads give
 * up after S_MAX_MS (a hang guard, never a measurement). */
static int s_client(const s_fix_t *f)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(router_addr_port(router_listener_addr(f->l))),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *) &sin, sizeof sin), 0);
    struct timeval tv = {.tv_sec = S_MAX_MS / 1000};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    return fd;
}

typedef struct {
    s_fix_t *f;
    unsigned n;
} s_count_t;

static bool s_accepted(void *ud)
{
    s_count_t *w = ud;
    return w->f->accepted >= w->n;
}

static bool s_closed(void *ud)
{
    return ((s_side_t *) ud)->closes > 0;
}

/* Runs the loop until `n` connections were accepted. */
static void s_accept_n(s_fix_t *f, unsigned n)
{
    s_count_t w = {f, n};
    test_loop_until(f->loop, s_accepted, &w, 2, S_MAX_MS);
}

/* The client's side of a connection kith ended: an orderly FIN or a reset,
 * and no data. */
static void s_client_sees_end(int fd)
{
    char b[8];
    ssize_t n = recv(fd, b, sizeof b, 0);
    assert_true(n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)));
}

typedef struct {
    int fd;
    char buf[16];
    size_t len;
    size_t want;
} s_read_t;

/* Reads what a client socket has without blocking the loop that feeds it. */
static bool s_client_got(void *ud)
{
    s_read_t *r = ud;
    ssize_t n = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, MSG_DONTWAIT);
    if (n > 0)
        r->len += (size_t) n;
    return r->len >= r->want;
}

typedef struct {
    const s_side_t *s;
    size_t want;
} s_got_t;

static bool s_side_got(void *ud)
{
    const s_got_t *g = ud;
    return g->s->got_len >= g->want || g->s->closes > 0;
}

/* Checks that the connection of side `s` (client `fd`) still works both
 * ways: kith reads what the client sends and the client reads what kith
 * sends. */
static void s_still_served(s_fix_t *f, s_side_t *s, int fd)
{
    assert_non_null(s->conn);
    size_t before = s->got_len;
    assert_int_equal(send(fd, "ok", 2, MSG_NOSIGNAL), 2);
    s_read_t r = {.fd = fd, .want = 4};
    assert_int_equal(router_conn_send(s->conn, "pong", 4), 0);
    test_loop_until(f->loop, s_client_got, &r, 2, S_MAX_MS);
    assert_memory_equal(r.buf, "pong", 4);
    s_got_t g = {s, before + 2};
    test_loop_until(f->loop, s_side_got, &g, 2, S_MAX_MS);
    assert_int_equal(s->closes, 0);
    assert_memory_equal(s->got + before, "ok", 2);
}

/* ------------------------------------------------------------ cases */

/* A reply with no SQE to carry it: that connection ends with EBUSY (the
 * peer sees it end rather than wait forever for bytes that cannot be
 * sent); the one beside it is untouched. */
static void test_send_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    s_listen(f);
    int c0 = s_client(f), c1 = s_client(f);
    s_accept_n(f, 2);
    uring_fail_arm(0, 1);
    assert_int_equal(router_conn_send(f->side[0].conn, "lost", 4), 0);
    test_loop_until(f->loop, s_closed, &f->side[0], 2, S_MAX_MS);
    assert_int_equal(uring_fail_disarm(), 1);
    assert_int_equal(f->side[0].closes, 1);
    assert_int_equal(f->side[0].reason, ROUTER_CLOSE_ERROR);
    assert_int_equal(f->side[0].err, EBUSY);
    s_client_sees_end(c0);
    s_still_served(f, &f->side[1], c1);
    close(c0);
    close(c1);
}

/* A newcomer whose receive cannot be queued is ended (it could never be
 * read); the loop accepts and serves the next one. */
static void test_recv_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    s_listen(f);
    uring_fail_arm(0, 1);
    int c0 = s_client(f);
    s_accept_n(f, 1);
    test_loop_until(f->loop, s_closed, &f->side[0], 2, S_MAX_MS);
    assert_int_equal(uring_fail_disarm(), 1);
    assert_int_equal(f->side[0].reason, ROUTER_CLOSE_ERROR);
    assert_int_equal(f->side[0].err, EBUSY);
    s_client_sees_end(c0);
    int c1 = s_client(f);
    s_accept_n(f, 2);
    s_still_served(f, &f->side[1], c1);
    close(c0);
    close(c1);
}

/* Ending a connection needs a cancel for its receive; with none to be had
 * the loop shuts the socket down so the receive ends by itself. Nothing
 * at all can be submitted meanwhile, yet on_close runs once, the peer
 * sees the end and the connection's memory goes (LSan at teardown). */
static void test_abort_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    s_listen(f);
    int c0 = s_client(f), c1 = s_client(f);
    s_accept_n(f, 2);
    router_loop_stats_t st;
    router_loop_stats(f->loop, &st);
    assert_int_equal(st.conns_open, 2);
    uring_fail_arm(0, -1);
    router_conn_abort(f->side[0].conn);
    test_loop_until(f->loop, s_closed, &f->side[0], 2, S_MAX_MS);
    s_client_sees_end(c0);
    assert_true(uring_fail_disarm() >= 1);
    assert_int_equal(f->side[0].closes, 1);
    assert_int_equal(f->side[0].reason, ROUTER_CLOSE_ABORT);
    router_loop_stats(f->loop, &st);
    assert_int_equal(st.conns_open, 1);
    s_still_served(f, &f->side[1], c1);
    close(c0);
    close(c1);
}

/* An outbound connect that cannot be queued is reported like any failed
 * connect: from the loop, through on_close, with the reason. */
static void test_connect_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    s_listen(f);
    s_side_t out = {0};
    uring_fail_arm(0, 1);
    out.conn = router_loop_connect(f->loop, router_listener_addr(f->l), &s_handlers, &out);
    assert_non_null(out.conn);
    assert_int_equal(out.closes, 0); /* never from inside the call */
    test_loop_until(f->loop, s_closed, &out, 2, S_MAX_MS);
    assert_int_equal(uring_fail_disarm(), 1);
    assert_int_equal(out.closes, 1);
    assert_int_equal(out.reason, ROUTER_CLOSE_CONNECT_FAILED);
    assert_int_equal(out.err, EBUSY);
    /* The next connect goes through. */
    s_side_t ok = {0};
    ok.conn = router_loop_connect(f->loop, router_listener_addr(f->l), &s_handlers, &ok);
    assert_non_null(ok.conn);
    s_accept_n(f, 1);
    assert_non_null(ok.conn);
    router_conn_abort(ok.conn);
    test_loop_until(f->loop, s_closed, &ok, 2, S_MAX_MS);
}

/* A listener whose accept poll finds no SQE is still made: the loop arms
 * the poll before its next wait (accept_again), so a moment's full
 * submission queue does not fail the daemon's start. */
static void test_listen_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    uring_fail_arm(0, 1);
    s_listen(f);
    assert_int_equal(uring_fail_disarm(), 1);
    int c0 = s_client(f);
    s_accept_n(f, 1);
    s_still_served(f, &f->side[0], c0);
    int c1 = s_client(f); /* the poll armed after the first wait serves later ones */
    s_accept_n(f, 2);
    s_still_served(f, &f->side[1], c1);
    close(c0);
    close(c1);
}

/* Watches: a watch that cannot start is refused with EBUSY; an update whose
 * new poll cannot be queued says so and is not done (the watch re-arms
 * with its old events when the old poll's removal completes), and the
 * same update asked again is made. */
typedef struct {
    unsigned fired;
    unsigned events;
} s_watch_seen_t;

static void s_watch_cb(router_watch_t *w, int fd, unsigned events, void *ud)
{
    (void) w;
    s_watch_seen_t *s = ud;
    s->fired++;
    s->events |= events;
    char b[16];
    if (events & ROUTER_EV_READ)
        (void) read(fd, b, sizeof b);
}

static bool s_watch_fired(void *ud)
{
    return ((s_watch_seen_t *) ud)->fired > 0;
}

static void test_watch_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    int p[2];
    assert_int_equal(pipe(p), 0);
    s_watch_seen_t seen = {0};
    uring_fail_arm(0, 1);
    errno = 0;
    assert_null(router_loop_watch_fd(f->loop, p[0], ROUTER_EV_READ, s_watch_cb, &seen));
    assert_int_equal(errno, EBUSY);
    assert_int_equal(uring_fail_disarm(), 1);

    /* Watch the write end for writability, then move it to the read end's
     * events... on the same pipe: the read end, first for WRITE (never
     * ready), then updated to READ with the new poll refused. */
    router_watch_t *w = router_loop_watch_fd(f->loop, p[0], ROUTER_EV_WRITE, s_watch_cb, &seen);
    assert_non_null(w);
    uring_fail_arm(1, 1); /* the removal is queued, the new poll refused */
    errno = 0;
    assert_int_equal(router_watch_update(w, ROUTER_EV_READ), -1);
    assert_int_equal(errno, EBUSY);
    assert_int_equal(uring_fail_disarm(), 1);
    /* Refused means not done: the watch re-arms for what it watched when
     * the removal completes, and the update asked again is made. */
    assert_int_equal(router_watch_update(w, ROUTER_EV_READ), 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    test_loop_until(f->loop, s_watch_fired, &seen, 2, S_MAX_MS);
    assert_true(seen.events & ROUTER_EV_READ);
    router_watch_destroy(&w);
    close(p[0]);
    close(p[1]);
}

static void s_pipe_write(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    assert_int_equal(write(*(int *) ud, "x", 1), 1);
}

/* A watch's poll that ends when no SQE can be had to re-arm it (the
 * kernel ends multishot polls when its completion queue overflows, just
 * when SQEs are refused; here: the old poll's removal after a refused
 * update) is re-armed before a later wait. It used to be reported as an
 * error and left unwatched for good: the loop's own eventfd watch ignores
 * the error, so posts from other threads no longer woke an idle loop. */
static void test_watch_rearm_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    int p[2];
    assert_int_equal(pipe(p), 0);
    s_watch_seen_t seen = {0};
    router_watch_t *w = router_loop_watch_fd(f->loop, p[0], ROUTER_EV_READ, s_watch_cb, &seen);
    assert_non_null(w);
    /* The removal is queued; the new poll is refused, and so is the old
     * one's re-arm when its removal completes. */
    uring_fail_arm(1, 2);
    assert_int_equal(router_watch_update(w, ROUTER_EV_WRITE), -1);
    /* The byte comes after the first wait has submitted the removal, so
     * only a re-armed poll can report it. */
    assert_true(router_loop_timer_add(f->loop, 0, s_pipe_write, &p[1]) != 0);
    test_loop_until(f->loop, s_watch_fired, &seen, 2, S_MAX_MS);
    assert_int_equal(uring_fail_disarm(), 2);
    assert_int_equal(seen.events & ROUTER_EV_ERROR, 0);
    assert_true(seen.events & ROUTER_EV_READ);
    router_watch_destroy(&w);
    close(p[0]);
    close(p[1]);
}

/* A poll holds its file: closing the fd does not end it. A watch destroyed
 * while no SQE could be had must still have its poll removed once one can
 * be: then the pipe's read end is really gone and a write fails with EPIPE
 * (while the poll lingered, the kernel still counted a reader). */
typedef struct {
    int wfd;
    int err;
} s_pipe_t;

static bool s_pipe_broken(void *ud)
{
    s_pipe_t *p = ud;
    if (write(p->wfd, "x", 1) < 0)
        p->err = errno;
    return p->err != 0;
}

static void test_watch_destroyed_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK), 0);
    s_watch_seen_t seen = {0};
    router_watch_t *w = router_loop_watch_fd(f->loop, p[0], ROUTER_EV_READ, s_watch_cb, &seen);
    assert_non_null(w);
    assert_int_equal(write(p[1], "x", 1), 1);
    test_loop_until(f->loop, s_watch_fired, &seen, 2, S_MAX_MS); /* its poll is in the kernel */
    seen.fired = 0;
    uring_fail_arm(0, 1);
    router_watch_destroy(&w);
    assert_int_equal(uring_fail_disarm(), 1);
    close(p[0]);
    void (*was)(int) = signal(SIGPIPE, SIG_IGN);
    s_pipe_t pp = {.wfd = p[1]};
    test_loop_until(f->loop, s_pipe_broken, &pp, 2, S_MAX_MS);
    signal(SIGPIPE, was);
    assert_int_equal(pp.err, EPIPE);
    assert_int_equal(seen.fired, 0); /* a dead watch is never called */
    close(p[1]);
}

/* Teardown with nothing submittable: the cancels cannot be queued, the
 * open connection is shut down so its receive ends, and the listeners'
 * poll is left for the ring's close to cancel (logged, never silent); no
 * memory is left behind (LSan). */
static void test_destroy_without_sqe(void **state)
{
    s_fix_t *f = s_fix(state);
    s_listen(f);
    int c0 = s_client(f);
    s_accept_n(f, 1);
    router_listener_close(&f->l);
    uring_fail_arm(0, -1);
    router_loop_destroy(&f->loop);
    assert_true(uring_fail_disarm() >= 1);
    assert_int_equal(f->side[0].closes, 1);
    assert_int_equal(f->side[0].reason, ROUTER_CLOSE_SHUTDOWN);
    s_client_sees_end(c0);
    close(c0);
}

/* The same teardown when SQEs come back after a few refusals: the cancel
 * of everything is asked for again each round, so every request is reaped
 * before the memory goes, and nothing is left for the ring's close (no
 * "not drained" line in the log). */
static void test_destroy_sqe_back(void **state)
{
    s_fix_t *f = s_fix(state);
    char logpath[] = "/tmp/kith-uring-log-XXXXXX";
    int lfd = mkstemp(logpath);
    assert_true(lfd >= 0);
    close(lfd);
    router_log_opts_t lo = {.level = ROUTER_LOG_INFO, .path = logpath, .no_stderr = true};
    assert_int_equal(router_log_start(&lo), 0);
    s_listen(f);
    int c0 = s_client(f);
    s_accept_n(f, 1);
    router_listener_close(&f->l);
    uring_fail_arm(0, 3); /* the connection's cancel, the wake-up poll's removal, the first try */
    router_loop_destroy(&f->loop);
    assert_int_equal(uring_fail_disarm(), 3);
    router_log_flush();
    router_log_stop();
    assert_int_equal(f->side[0].reason, ROUTER_CLOSE_SHUTDOWN);
    s_client_sees_end(c0);
    close(c0);
    FILE *fp = fopen(logpath, "r");
    assert_non_null(fp);
    char line[512];
    while (fgets(line, sizeof line, fp))
        if (strstr(line, "not drained"))
            fail_msg("teardown left requests: %s", line);
    fclose(fp);
    unlink(logpath);
}

/* ------------------------------------------------------------ an empty buffer ring */

#define S_NOBUFS_BYTES (256u * 1024u)

typedef struct {
    size_t got;    /* bytes delivered so far */
    size_t bad;    /* ...not the byte expected at their offset */
    unsigned closes;
} s_stream_t;

static void s_stream_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) c;
    s_stream_t *s = ud;
    for (size_t i = 0; i < len; i++)
        s->bad += data[i] != (uint8_t) ((s->got + i) % 251);
    s->got += len;
}

static void s_stream_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    (void) c;
    (void) reason;
    ((s_stream_t *) ud)->closes++;
}

static const router_conn_handlers_t s_stream_handlers = {.on_data = s_stream_data,
                                                         .on_close = s_stream_close};

static bool s_stream_done(void *ud)
{
    const s_stream_t *s = ud;
    return s->got >= S_NOBUFS_BYTES || s->closes > 0;
}

static bool s_stream_done_closed(void *ud)
{
    return ((const s_stream_t *) ud)->closes > 0;
}

/* One provided buffer for two busy connections: the kernel finds the ring
 * empty (-ENOBUFS ends the multishot receive) again and again, and each
 * time the receive is re-armed once the buffer is back: every byte of
 * both streams arrives, in order, and neither connection is ended. */
static void test_recv_nobufs_rearmed(void **state)
{
    (void) state;
    router_loop_opts_t o = {.backend = ROUTER_LOOP_URING, .recv_buf_size = 512,
                            .recv_buf_count = 1};
    router_loop_t *loop = router_loop_new(&o);
    if (!loop) {
        print_message("io_uring refused here: skipping\n");
        skip();
    }
    int sv[2][2];
    s_stream_t st[2] = {{0}};
    router_conn_t *c[2];
    for (int k = 0; k < 2; k++) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[k]), 0);
        c[k] = router_loop_adopt(loop, sv[k][0], &s_stream_handlers, &st[k]);
        assert_non_null(c[k]);
    }
    static uint8_t buf[S_NOBUFS_BYTES];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t) (i % 251);
    /* Written from here while the loop reads: nonblocking, in turns. */
    size_t sent[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        int fl = fcntl(sv[k][1], F_GETFL);
        assert_int_equal(fcntl(sv[k][1], F_SETFL, fl | O_NONBLOCK), 0);
    }
    uint64_t deadline = router_loop_now_ms(loop) + 30000;
    while ((st[0].got < sizeof buf || st[1].got < sizeof buf) &&
           router_loop_now_ms(loop) < deadline && !st[0].closes && !st[1].closes) {
        for (int k = 0; k < 2; k++)
            while (sent[k] < sizeof buf) {
                ssize_t n = send(sv[k][1], buf + sent[k], sizeof buf - sent[k], MSG_NOSIGNAL);
                if (n <= 0)
                    break;
                sent[k] += (size_t) n;
            }
        (void) test_loop_wait(loop, s_stream_done, &st[0], 1, 5);
    }
    test_loop_until(loop, s_stream_done, &st[0], 1, S_MAX_MS);
    test_loop_until(loop, s_stream_done, &st[1], 1, S_MAX_MS);
    router_loop_stats_t stats;
    router_loop_stats(loop, &stats);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(st[k].closes, 0);
        assert_int_equal(st[k].got, sizeof buf);
        assert_int_equal(st[k].bad, 0);
    }
    print_message("receives re-armed after -ENOBUFS: %llu\n",
                  (unsigned long long) stats.recv_nobufs);
    assert_true(stats.recv_nobufs > 0);
    for (int k = 0; k < 2; k++) {
        router_conn_abort(c[k]);
        close(sv[k][1]);
    }
    router_loop_destroy(&loop);
}

/* Many connections against a ring of two buffers, each sending its
 * stream while the others do: -ENOBUFS over and over, yet every byte of
 * every stream arrives in order, none is ended and none is left behind
 * (a receive never re-armed, or re-armed and starved for good, would stop
 * its stream short at the deadline). */
#define S_MANY 24
#define S_MANY_BYTES (64u * 1024u)

typedef struct {
    s_stream_t *st;
    unsigned n;
} s_many_t;

static bool s_many_done(void *ud)
{
    const s_many_t *m = ud;
    for (unsigned k = 0; k < m->n; k++)
        if (m->st[k].got < S_MANY_BYTES && !m->st[k].closes)
            return false;
    return true;
}

static void test_recv_nobufs_many(void **state)
{
    (void) state;
    router_loop_opts_t o = {.backend = ROUTER_LOOP_URING, .recv_buf_size = 512,
                            .recv_buf_count = 2};
    router_loop_t *loop = router_loop_new(&o);
    if (!loop) {
        print_message("io_uring refused here: skipping\n");
        skip();
    }
    int sv[S_MANY][2];
    s_stream_t st[S_MANY];
    memset(st, 0, sizeof st);
    router_conn_t *c[S_MANY];
    for (int k = 0; k < S_MANY; k++) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[k]), 0);
        int fl = fcntl(sv[k][1], F_GETFL);
        assert_int_equal(fcntl(sv[k][1], F_SETFL, fl | O_NONBLOCK), 0);
        c[k] = router_loop_adopt(loop, sv[k][0], &s_stream_handlers, &st[k]);
        assert_non_null(c[k]);
    }
    static uint8_t buf[S_MANY_BYTES];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t) (i % 251);
    size_t sent[S_MANY] = {0};
    s_many_t m = {st, S_MANY};
    uint64_t deadline = router_loop_now_ms(loop) + 60000;
    while (!s_many_done(&m) && router_loop_now_ms(loop) < deadline) {
        for (int k = 0; k < S_MANY; k++)
            while (sent[k] < sizeof buf) {
                ssize_t n = send(sv[k][1], buf + sent[k], sizeof buf - sent[k], MSG_NOSIGNAL);
                if (n <= 0)
                    break;
                sent[k] += (size_t) n;
            }
        (void) test_loop_wait(loop, s_many_done, &m, 1, 5);
    }
    router_loop_stats_t stats;
    router_loop_stats(loop, &stats);
    print_message("%d streams, 2 buffers: receives re-armed after -ENOBUFS: %llu\n", S_MANY,
                  (unsigned long long) stats.recv_nobufs);
    for (int k = 0; k < S_MANY; k++) {
        assert_int_equal(st[k].closes, 0);
        assert_int_equal(st[k].got, sizeof buf);
        assert_int_equal(st[k].bad, 0);
    }
    assert_true(stats.recv_nobufs > 0);
    for (int k = 0; k < S_MANY; k++) {
        router_conn_abort(c[k]);
        close(sv[k][1]);
    }
    router_loop_destroy(&loop);
}

/* ------------------------------------------------------------ what a wait answers */

int router_uring_wait_fault(int rc);

static _Thread_local int s_wait_fault;        /* the next wait's answer, 0: the kernel's */
static _Thread_local unsigned s_wait_faulted; /* waits answered so */

/* Replaces loop_uring.c's weak seam: the armed answer, once. */
int router_uring_wait_fault(int rc)
{
    if (!s_wait_fault)
        return rc;
    rc = s_wait_fault;
    s_wait_fault = 0;
    s_wait_faulted++;
    return rc;
}

/* A wait told that completions were dropped (-EBADR: the completion queue
 * overflowed and the kernel could not keep some) is counted and logged,
 * and the loop goes on serving: it used to end router_loop_run with an
 * error, which ends the daemon and every connection with it, for the few
 * whose completions were lost (the kernel clears the condition once it
 * has said it). */
static void test_wait_dropped_cqes(void **state)
{
    s_fix_t *f = s_fix(state);
    s_listen(f);
    int c0 = s_client(f);
    s_accept_n(f, 1);
    s_wait_fault = -EBADR;
    s_wait_faulted = 0;
    s_still_served(f, &f->side[0], c0);
    assert_int_equal(s_wait_faulted, 1);
    router_loop_stats_t st;
    router_loop_stats(f->loop, &st);
    assert_int_equal(st.cqes_dropped, 1);
    close(c0);
}

static void s_count_post(router_loop_t *loop, void *arg)
{
    (void) loop;
    ++*(int *) arg;
}

/* A wait the kernel fails outright (ENXIO: the ring is being torn down)
 * ends router_loop_run with that error — an owner such as the daemon ends
 * with it, said, never a silent spin — and the posts queued meanwhile have
 * run when it returns. */
static void test_wait_failed(void **state)
{
    s_fix_t *f = s_fix(state);
    int ran = 0;
    assert_int_equal(router_loop_post(f->loop, s_count_post, &ran), 0);
    s_wait_fault = -ENXIO;
    s_wait_faulted = 0;
    errno = 0;
    assert_int_equal(router_loop_run(f->loop), -1);
    assert_int_equal(errno, ENXIO);
    assert_int_equal(s_wait_faulted, 1);
    assert_int_equal(ran, 1);
}

/* ------------------------------------------------------------ polls the kernel ends with an error */

int router_uring_op_fault(int op);

static _Thread_local int s_fault_op = -1;     /* the request kind to fail, -1: none */
static _Thread_local int s_fault_res[2];      /* ...with these results, in turn */
static _Thread_local long s_fault_count;      /* ...this many more times (< 0: always) */
static _Thread_local unsigned s_faulted;      /* requests failed so */

/* Replaces loop_uring.c's weak seam: the armed kind of request completes
 * with the armed error (the first, then the second for every later one),
 * as when the kernel ends a poll. */
int router_uring_op_fault(int op)
{
    if (op != s_fault_op || s_fault_count == 0)
        return 0;
    if (s_fault_count > 0)
        s_fault_count--;
    return s_fault_res[s_faulted++ ? 1 : 0];
}

/* Whether the kernel completes a NOP with the result asked for
 * (IORING_NOP_INJECT_RESULT, Linux 6.10): the seam needs it. */
static bool s_nop_inject_works(void)
{
    struct io_uring ring;
    if (io_uring_queue_init(2, &ring, 0) != 0)
        return false;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_nop(sqe);
    sqe->rw_flags = 1u << 0;
    sqe->len = (unsigned) -ENOMEM;
    struct io_uring_cqe *cqe;
    bool ok = io_uring_submit(&ring) == 1 && io_uring_wait_cqe(&ring, &cqe) == 0 &&
              cqe->res == -ENOMEM;
    io_uring_queue_exit(&ring);
    return ok;
}

static void s_fault_arm2(router_op_t op, int first, int then, long count)
{
    if (!s_nop_inject_works()) {
        print_message("this kernel cannot complete a request with a chosen error: skipping\n");
        skip();
    }
    s_fault_op = (int) op;
    s_fault_res[0] = first;
    s_fault_res[1] = then;
    s_fault_count = count;
    s_faulted = 0;
}

static void s_fault_arm(router_op_t op, int res, long count)
{
    s_fault_arm2(op, res, res, count);
}

static unsigned s_fault_disarm(void)
{
    s_fault_op = -1;
    return s_faulted;
}

/* The listeners' poll ended by the kernel, not by the teardown (an error,
 * then ECANCELED): it is armed again, and later connections are accepted.
 * With ECANCELED it was taken for the teardown's cancel and never armed
 * again: every listener deaf for good. (The first failure is there so
 * that the second ends a poll armed after the listener's first look.) */
static void s_accept_poll_ended(void **state, int res)
{
    s_fix_t *f = s_fix(state);
    s_fault_arm2(ROUTER_OP_ACCEPT, -ENOMEM, res, 2);
    s_listen(f);
    int c0 = s_client(f); /* taken by the first look at the listeners */
    s_accept_n(f, 1);
    int c1 = s_client(f); /* only the poll armed again sees this one */
    s_accept_n(f, 2);
    assert_int_equal(s_fault_disarm(), 2);
    s_still_served(f, &f->side[1], c1);
    s_still_served(f, &f->side[0], c0);
    close(c0);
    close(c1);
}

static void test_accept_poll_cancelled(void **state)
{
    s_accept_poll_ended(state, -ECANCELED);
}

static void test_accept_poll_error(void **state)
{
    s_accept_poll_ended(state, -ENOMEM);
}

/* Counted over loop iterations, never over time (as listen_test's "no
 * spin"): each wake callback wakes the loop again. */
enum { S_WINDOW_WAKES = 400 };

typedef struct {
    s_fix_t *f;
    unsigned phase;       /* 0: waiting for the first failure; 1: counting; 2: the accept */
    unsigned wakes;       /* wake callbacks in the window */
    unsigned at;          /* failures when the window opened */
    unsigned window;      /* ...and in it */
    bool hung;
} s_spin_t;

static void s_spin_wake(router_loop_t *loop, void *ud)
{
    s_spin_t *d = ud;
    if (d->phase == 0 && s_faulted >= 1) {
        d->phase = 1;
        d->at = s_faulted;
    } else if (d->phase == 1 && ++d->wakes == S_WINDOW_WAKES) {
        d->window = s_faulted - d->at;
        (void) s_fault_disarm();
        d->phase = 2;
    } else if (d->phase == 2 && d->f->accepted >= 1) {
        router_loop_stop(loop);
        return;
    }
    router_loop_wake(loop);
}

static void s_spin_hang(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    *(bool *) ud = true;
    router_loop_stop(loop);
}

/* A listeners' poll the kernel keeps ending with an error is armed again
 * at most every 10 ms, not on every turn of the loop (which spun at full
 * CPU, a log line each turn); the listeners are looked at each time, so a
 * connection waiting meanwhile is accepted, and once the poll holds, later
 * ones are too. */
static void test_accept_poll_failing_no_spin(void **state)
{
    s_fix_t *f = s_fix(state);
    s_fault_arm(ROUTER_OP_ACCEPT, -ENOMEM, -1); /* every poll on the listeners fails */
    s_listen(f);
    int c0 = s_client(f);
    s_spin_t d = {.f = f};
    uint64_t guard = router_loop_timer_add(f->loop, S_MAX_MS, s_spin_hang, &d.hung);
    assert_true(guard != 0);
    router_loop_set_wake_cb(f->loop, s_spin_wake, &d);
    router_loop_wake(f->loop);
    assert_int_equal(router_loop_run(f->loop), 0);
    router_loop_set_wake_cb(f->loop, NULL, NULL);
    (void) s_fault_disarm();
    assert_false(d.hung);
    print_message("accept poll failures in %u wake-ups: %u\n", (unsigned) S_WINDOW_WAKES,
                  d.window);
    assert_true(d.window < S_WINDOW_WAKES / 20);
    assert_int_equal(router_loop_timer_cancel(f->loop, guard), 0);
    int c1 = s_client(f);
    s_accept_n(f, 2);
    s_still_served(f, &f->side[0], c0);
    s_still_served(f, &f->side[1], c1);
    close(c0);
    close(c1);
}

/* A watch whose poll the kernel ends for want of memory goes on: it is
 * armed again (after a pause) and reports the next read, with no error.
 * It was taken for a dead file: ROUTER_EV_ERROR, and never watched again. */
static void test_watch_poll_nomem(void **state)
{
    s_fix_t *f = s_fix(state);
    int p[2];
    assert_int_equal(pipe(p), 0);
    s_watch_seen_t seen = {0};
    s_fault_arm(ROUTER_OP_POLL, -ENOMEM, 1);
    router_watch_t *w = router_loop_watch_fd(f->loop, p[0], ROUTER_EV_READ, s_watch_cb, &seen);
    assert_int_equal(s_fault_disarm(), 1);
    assert_non_null(w);
    assert_true(router_loop_timer_add(f->loop, 30, s_pipe_write, &p[1]) != 0);
    test_loop_until(f->loop, s_watch_fired, &seen, 2, S_MAX_MS);
    assert_int_equal(seen.events & ROUTER_EV_ERROR, 0);
    assert_true(seen.events & ROUTER_EV_READ);
    router_watch_destroy(&w);
    close(p[0]);
    close(p[1]);
}

/* A kernel without multishot receive (before 6.0) answers the first one
 * with EINVAL: the loop says so once and reads with single receives,
 * re-armed after each, from then on; every byte of the streams arrives in
 * order and no connection is ended. */
static void test_recv_oneshot_fallback(void **state)
{
    (void) state;
    router_loop_opts_t o = {.backend = ROUTER_LOOP_URING, .recv_buf_size = 512,
                            .recv_buf_count = 4};
    router_loop_t *loop = router_loop_new(&o);
    if (!loop) {
        print_message("io_uring refused here: skipping\n");
        skip();
    }
    int sv[2][2];
    s_stream_t st[2];
    memset(st, 0, sizeof st);
    router_conn_t *c[2];
    s_fault_arm(ROUTER_OP_RECV, -EINVAL, 1); /* the first receive: multishot refused */
    for (int k = 0; k < 2; k++) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[k]), 0);
        int fl = fcntl(sv[k][1], F_GETFL);
        assert_int_equal(fcntl(sv[k][1], F_SETFL, fl | O_NONBLOCK), 0);
        c[k] = router_loop_adopt(loop, sv[k][0], &s_stream_handlers, &st[k]);
        assert_non_null(c[k]);
    }
    assert_int_equal(s_fault_disarm(), 1);
    static uint8_t buf[S_MANY_BYTES];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t) (i % 251);
    size_t sent[2] = {0};
    s_many_t m = {st, 2};
    uint64_t deadline = router_loop_now_ms(loop) + 60000;
    while (!s_many_done(&m) && router_loop_now_ms(loop) < deadline) {
        for (int k = 0; k < 2; k++)
            while (sent[k] < sizeof buf) {
                ssize_t n = send(sv[k][1], buf + sent[k], sizeof buf - sent[k], MSG_NOSIGNAL);
                if (n <= 0)
                    break;
                sent[k] += (size_t) n;
            }
        (void) test_loop_wait(loop, s_many_done, &m, 1, 5);
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(st[k].closes, 0);
        assert_int_equal(st[k].got, sizeof buf);
        assert_int_equal(st[k].bad, 0);
    }
    /* The peer's end is seen too: on_close once, orderly. */
    close(sv[0][1]);
    test_loop_until(loop, s_stream_done_closed, &st[0], 1, S_MAX_MS);
    assert_int_equal(st[0].closes, 1);
    router_conn_abort(c[1]);
    close(sv[1][1]);
    router_loop_destroy(&loop);
}

/* The loop's own eventfd watch, its poll ended for want of memory: posts
 * from another thread still wake the idle loop, one after another. They
 * waited for the next timer (here the guard, far off): the error left the
 * eventfd unwatched for good. */
enum { S_POSTS = 20 };

typedef struct {
    router_loop_t *loop;
    sem_t ran;           /* posted by each post run */
    unsigned late;       /* posts not run within S_MAX_MS */
    bool hung;
} s_poster_t;

static void s_poster_mark(router_loop_t *loop, void *arg)
{
    (void) loop;
    sem_post(&((s_poster_t *) arg)->ran);
}

static void *s_poster_main(void *arg)
{
    s_poster_t *p = arg;
    for (int i = 0; i < S_POSTS; i++) {
        /* A moment first, so the loop has gone back to sleep. */
        struct timespec pause = {0, 2000000L};
        nanosleep(&pause, NULL);
        assert_int_equal(router_loop_post(p->loop, s_poster_mark, p), 0);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += S_MAX_MS / 1000;
        int rc;
        while ((rc = sem_timedwait(&p->ran, &until)) != 0 && errno == EINTR)
            ;
        if (rc != 0) {
            p->late++;
            break;
        }
    }
    router_loop_stop(p->loop);
    return NULL;
}

static void test_eventfd_poll_nomem(void **state)
{
    (void) state;
    router_loop_opts_t o = {.backend = ROUTER_LOOP_URING};
    s_fault_arm(ROUTER_OP_POLL, -ENOMEM, 1); /* the first poll: the eventfd's */
    router_loop_t *loop = router_loop_new(&o);
    assert_int_equal(s_fault_disarm(), 1);
    if (!loop) {
        print_message("io_uring refused here: skipping\n");
        skip();
    }
    s_poster_t p = {.loop = loop};
    assert_int_equal(sem_init(&p.ran, 0, 0), 0);
    uint64_t guard = router_loop_timer_add(loop, 2 * S_MAX_MS, s_spin_hang, &p.hung);
    assert_true(guard != 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_poster_main, &p), 0);
    assert_int_equal(router_loop_run(loop), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(p.late, 0);
    assert_false(p.hung);
    (void) router_loop_timer_cancel(loop, guard);
    sem_destroy(&p.ran);
    router_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_send_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_recv_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_abort_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_connect_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_listen_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_watch_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_watch_destroyed_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_watch_rearm_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_without_sqe, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_sqe_back, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_wait_dropped_cqes, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_wait_failed, s_setup, s_teardown),
        cmocka_unit_test(test_recv_nobufs_rearmed),
        cmocka_unit_test(test_recv_nobufs_many),
        cmocka_unit_test_setup_teardown(test_accept_poll_cancelled, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_accept_poll_error, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_accept_poll_failing_no_spin, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_watch_poll_nomem, s_setup, s_teardown),
        cmocka_unit_test(test_eventfd_poll_nomem),
        cmocka_unit_test(test_recv_oneshot_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
