/* tests/conn_test.c — connections and listeners against plain blocking
 * clients in other threads: echo over TCP v4, v6, dual-stack and Unix
 * sockets, many concurrent connections, the slow-consumer cut, connection
 * limits, outbound connect (success and refusal), half-close and EOF,
 * read pausing, graceful close (flush and timeout), abort, shutdown, stale
 * Unix socket files, accepts failing for want of descriptors (EMFILE) and
 * an accept callback that sets no handlers, and address parsing; and the
 * failures midway: a peer that resets mid-frame or after our FIN, out of
 * memory inside a frame's send or for input parked past its turn, no timer
 * slot for a close or a deadline, an abort while input waits its turn;
 * and buffers shared by many send queues (counted once in the loop's
 * unsent total, partial sends, freed with the last holder, no memory).
 *
 * Every test that touches a backend is registered twice, once per backend
 * (names end in @uring / @epoll); the backend is the test's initial state,
 * so one ctest run covers both. Where the kernel refuses io_uring, the
 * @uring variants are skipped, visibly. The loop runs on the test's thread
 * (cmocka asserts live there); client threads record failures and the
 * test asserts after joining them. No test depends on timing; a guard timer
 * only turns a hang into a failure. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "have_ipv6.h"
#include "alloc_fail.h"
#include "loop_until.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/net/loop_mem.h"
#include "router/net/shared_buf.h"

#define HANG_GUARD_MS 60000
#define MAX_CLIENTS 8
#define MAX_REASONS 512

static router_loop_backend_t s_uring = ROUTER_LOOP_URING;
static router_loop_backend_t s_epoll = ROUTER_LOOP_EPOLL;

/* ------------------------------------------------------------ fixture */

typedef struct s_ctx s_ctx_t;
typedef void (*s_client_fn)(s_ctx_t *ctx, int idx);

struct s_ctx {
    router_loop_t *loop;           /* the loop under test */
    router_listener_t *l;          /* the listener, if any */
    router_addr_t addr;            /* where clients connect */
    unsigned accepted;             /* server: conns accepted */
    unsigned closed;               /* server: on_close calls */
    router_close_reason_t reasons[MAX_REASONS]; /* ...their reasons, in order */
    unsigned want_closed;          /* stop once this many closed and clients are done */
    unsigned nclients;             /* client threads started */
    unsigned clients_done;         /* client threads finished (loop side) */
    pthread_t th[MAX_CLIENTS];     /* client threads */
    s_client_fn client;            /* what each client thread does */
    atomic_int client_fail;        /* 0, or the line of a client's first failure */
    bool hung;                     /* the guard timer fired */
    atomic_bool flag;              /* a loop→client signal for some tests */
    router_conn_t *conn;           /* the connection a test is about */
    int send_rc, send_errno;       /* a router_conn_send outcome to check */
    uint8_t got[256];              /* bytes a server or outbound conn kept */
    size_t got_len;                /* ...how many */
    unsigned violations;           /* things that must never happen */
    router_close_reason_t out_reason; /* close reason of our outbound conn */
    void *extra;                   /* per-test state */
};

#define CHECK(ctx, cond)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            int zero = 0;                                                         \
            atomic_compare_exchange_strong(&(ctx)->client_fail, &zero, __LINE__); \
            return;                                                               \
        }                                                                         \
    } while (0)

static void s_loop_new(s_ctx_t *ctx, void **state, router_loop_opts_t *opts)
{
    router_loop_opts_t o = opts ? *opts : (router_loop_opts_t){0};
    o.backend = *(router_loop_backend_t *) *state;
    memset(ctx, 0, sizeof *ctx);
    ctx->loop = router_loop_new(&o);
    if (!ctx->loop && o.backend == ROUTER_LOOP_URING && (errno == ENOSYS || errno == EPERM)) {
        print_message("io_uring refused here (%s): skipping\n", strerror(errno));
        skip();
    }
    assert_non_null(ctx->loop);
}

static void s_maybe_stop(s_ctx_t *ctx)
{
    if (ctx->clients_done == ctx->nclients && ctx->closed >= ctx->want_closed)
        router_loop_stop(ctx->loop);
}

static void s_on_client_done(router_loop_t *loop, void *arg)
{
    s_ctx_t *ctx = arg;
    (void) loop;
    ctx->clients_done++;
    s_maybe_stop(ctx);
}

typedef struct {
    s_ctx_t *ctx; /* the fixture */
    int idx;      /* which client */
} s_client_arg_t;

static s_client_arg_t s_args[MAX_CLIENTS];

static void *s_client_main(void *p)
{
    s_client_arg_t *a = p;
    a->ctx->client(a->ctx, a->idx);
    while (router_loop_post(a->ctx->loop, s_on_client_done, a->ctx) != 0)
        sched_yield();
    return NULL;
}

static void s_clients_start(s_ctx_t *ctx, s_client_fn fn, unsigned n)
{
    ctx->client = fn;
    ctx->nclients = n;
    for (unsigned i = 0; i < n; i++) {
        s_args[i] = (s_client_arg_t){.ctx = ctx, .idx = (int) i};
        assert_int_equal(pthread_create(&ctx->th[i], NULL, s_client_main, &s_args[i]), 0);
    }
}

static void s_guard(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    ((s_ctx_t *) ud)->hung = true;
    router_loop_stop(loop);
}

/* Runs the loop until the clients are done and the expected connections
 * closed, then joins the clients and checks they saw no failure. */
static void s_run(s_ctx_t *ctx)
{
    uint64_t guard = router_loop_timer_add(ctx->loop, HANG_GUARD_MS, s_guard, ctx);
    assert_true(guard != 0);
    assert_int_equal(router_loop_run(ctx->loop), 0);
    (void) router_loop_timer_cancel(ctx->loop, guard);
    if (ctx->hung) {
        /* Unblock clients stuck on sockets before joining them. */
        router_listener_close(&ctx->l);
        router_loop_destroy(&ctx->loop);
    }
    for (unsigned i = 0; i < ctx->nclients; i++)
        pthread_join(ctx->th[i], NULL);
    assert_false(ctx->hung);
    assert_int_equal(atomic_load(&ctx->client_fail), 0);
}

static void s_done(s_ctx_t *ctx)
{
    router_listener_close(&ctx->l);
    router_loop_destroy(&ctx->loop);
}

/* ------------------------------------------------------------ server handlers */

static void s_srv_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) c;
    if (ctx->closed < MAX_REASONS)
        ctx->reasons[ctx->closed] = reason;
    ctx->closed++;
    if (c == ctx->conn)
        ctx->conn = NULL;
    s_maybe_stop(ctx);
}

static void s_echo_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) ud;
    assert_int_equal(router_conn_send(c, data, len), 0);
}

static const router_conn_handlers_t s_echo = {
    .on_data = s_echo_data,
    .on_close = s_srv_close,
};

static void s_accept_echo(router_listener_t *l, router_conn_t *c, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) l;
    ctx->accepted++;
    router_conn_set_handlers(c, &s_echo, ctx);
}

static void s_listen(s_ctx_t *ctx, const char *text, router_accept_fn fn)
{
    router_addr_t a;
    router_addr_err_t err;
    assert_int_equal(router_addr_parse(text, &a, &err), 0);
    ctx->l = router_loop_listen(ctx->loop, &a, fn, ctx);
    assert_non_null(ctx->l);
    ctx->addr = *router_listener_addr(ctx->l);
}

/* ------------------------------------------------------------ client helpers */

static int s_dial(const router_addr_t *a, int rcvbuf)
{
    int fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = HANG_GUARD_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (connect(fd, &a->u.sa, a->len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int s_send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t r = send(fd, b, n, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        b += r;
        n -= (size_t) r;
    }
    return 0;
}

static int s_recv_exact(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    while (n > 0) {
        ssize_t r = recv(fd, b, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        b += r;
        n -= (size_t) r;
    }
    return 0;
}

/* Reads to EOF; returns the bytes read, or -1 on an error (a reset). */
static ssize_t s_recv_eof(int fd, void *p, size_t cap)
{
    uint8_t *b = p;
    size_t got = 0;
    for (;;) {
        uint8_t sink[4096];
        uint8_t *dst = got < cap ? b + got : sink;
        size_t room = got < cap ? cap - got : sizeof sink;
        ssize_t r = recv(fd, dst, room, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return (ssize_t) got;
        got += (size_t) r;
    }
}

static void s_wait_flag(s_ctx_t *ctx)
{
    struct timespec ms = {.tv_nsec = 1000000};
    while (!atomic_load(&ctx->flag))
        nanosleep(&ms, NULL);
}

/* ------------------------------------------------------------ echo */

static void s_echo_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    const router_addr_t *target = ctx->extra ? ctx->extra : &ctx->addr;
    int fd = s_dial(target, 0);
    CHECK(ctx, fd >= 0);
    char small[6];
    CHECK(ctx, s_send_all(fd, "hello!", 6) == 0);
    CHECK(ctx, s_recv_exact(fd, small, 6) == 0 && memcmp(small, "hello!", 6) == 0);
    /* Larger than any receive buffer, so it arrives in many pieces. */
    size_t n = 256 * 1024;
    uint8_t *out = malloc(n), *in = malloc(n);
    CHECK(ctx, out && in);
    for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t) (i * 7 + i / 251);
    bool ok = s_send_all(fd, out, n) == 0 && s_recv_exact(fd, in, n) == 0 &&
              memcmp(in, out, n) == 0;
    free(out);
    free(in);
    close(fd);
    CHECK(ctx, ok);
}

/* Echo through a listener on listen_text; clients dial dial_host at the
 * listener's port when given, else the listener's own address. */
static void s_echo_test(void **state, const char *listen_text, const char *dial_host)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, listen_text, s_accept_echo);
    router_addr_t dial;
    if (dial_host) {
        char buf[ROUTER_ADDR_TEXT_MAX];
        snprintf(buf, sizeof buf, "%s:%u", dial_host, router_addr_port(&ctx.addr));
        assert_int_equal(router_addr_parse(buf, &dial, NULL), 0);
        ctx.extra = &dial;
    }
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_echo_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.accepted, 1);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_EOF);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.accepted, 1);
    assert_int_equal(st.bytes_in, 6 + 256 * 1024);
    assert_int_equal(st.bytes_out, 6 + 256 * 1024);
    assert_int_equal(st.conns_open, 0);
    s_done(&ctx);
}

static void test_echo_tcp4(void **state)
{
    s_echo_test(state, "127.0.0.1:0", NULL);
}

static void test_echo_tcp6(void **state)
{
    if (!test_have_ipv6_loopback()) {
        print_message("no IPv6 loopback here: skipping\n");
        skip();
    }
    s_echo_test(state, "[::1]:0", NULL);
}

/* `[::]` listens dual-stack: an IPv4 client gets through. */
static void test_echo_dual_stack(void **state)
{
    if (!test_have_ipv6_loopback()) {
        print_message("no IPv6 here: skipping\n");
        skip();
    }
    s_echo_test(state, "tcp://[::]:0", "127.0.0.1");
}

static char s_tmpdir[64];

static void s_mktmp(void)
{
    snprintf(s_tmpdir, sizeof s_tmpdir, "/tmp/kith-conn-XXXXXX");
    assert_non_null(mkdtemp(s_tmpdir));
}

static void s_rmtmp(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmpdir);
    assert_int_equal(system(cmd), 0);
}

static void test_echo_uds(void **state)
{
    char text[128];
    s_mktmp();
    /* Parent directories are created. */
    snprintf(text, sizeof text, "%s/a/b/echo.sock", s_tmpdir);
    s_echo_test(state, text, NULL);
    struct stat st;
    assert_int_equal(stat(text, &st), -1); /* closing the listener removed the file */
    s_rmtmp();
}

/* ------------------------------------------------------------ many connections */

#define CONN_THREADS 4
#define CONNS_EACH 50

static void s_many_client(s_ctx_t *ctx, int idx)
{
    int fds[CONNS_EACH];
    char msg[32], back[32];
    for (int i = 0; i < CONNS_EACH; i++) {
        fds[i] = s_dial(&ctx->addr, 0);
        CHECK(ctx, fds[i] >= 0);
    }
    for (int i = 0; i < CONNS_EACH; i++) {
        int n = snprintf(msg, sizeof msg, "client %d conn %d", idx, i);
        CHECK(ctx, s_send_all(fds[i], msg, (size_t) n) == 0);
    }
    for (int i = 0; i < CONNS_EACH; i++) {
        int n = snprintf(msg, sizeof msg, "client %d conn %d", idx, i);
        CHECK(ctx, s_recv_exact(fds[i], back, (size_t) n) == 0);
        CHECK(ctx, memcmp(back, msg, (size_t) n) == 0);
        close(fds[i]);
    }
}

static void test_many_connections(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_echo);
    ctx.want_closed = CONN_THREADS * CONNS_EACH;
    s_clients_start(&ctx, s_many_client, CONN_THREADS);
    s_run(&ctx);
    assert_int_equal(ctx.accepted, CONN_THREADS * CONNS_EACH);
    for (unsigned i = 0; i < ctx.closed; i++)
        assert_int_equal(ctx.reasons[i], ROUTER_CLOSE_EOF);
    router_listener_stats_t ls;
    router_listener_stats(ctx.l, &ls);
    assert_int_equal(ls.accepted, CONN_THREADS * CONNS_EACH);
    assert_int_equal(ls.open, 0);
    s_done(&ctx);
}

/* ------------------------------------------------------------ slow consumer */

#define PUMP_CHUNK (64 * 1024)

typedef struct {
    router_conn_t *flood;          /* the connection that never reads */
    router_close_reason_t reason;  /* its close reason */
    bool closed;                   /* it closed */
    uint8_t chunk[PUMP_CHUNK];     /* what is pumped into it */
} s_flood_t;

static void s_pump(router_loop_t *loop, uint64_t id, void *ud)
{
    s_ctx_t *ctx = ud;
    s_flood_t *f = ctx->extra;
    (void) id;
    if (!f->flood)
        return;
    if (router_conn_send(f->flood, f->chunk, sizeof f->chunk) == 0) {
        assert_true(router_loop_timer_add(loop, 0, s_pump, ctx) != 0);
        return;
    }
    ctx->send_rc = -1;
    ctx->send_errno = errno;
}

static void s_flood_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    s_flood_t *f = ctx->extra;
    if (len >= 5 && memcmp(data, "flood", 5) == 0 && !f->flood) {
        int small = 16 * 1024; /* so the kernel absorbs little of the flood */
        setsockopt(router_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        f->flood = c;
        assert_true(router_loop_timer_add(ctx->loop, 0, s_pump, ctx) != 0);
        return;
    }
    assert_int_equal(router_conn_send(c, data, len), 0);
}

static void s_flood_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_ctx_t *ctx = ud;
    s_flood_t *f = ctx->extra;
    if (c == f->flood) {
        f->flood = NULL;
        f->closed = true;
        f->reason = reason;
        atomic_store(&ctx->flag, true);
    }
    s_srv_close(c, reason, ud);
}

static const router_conn_handlers_t s_flood_handlers = {
    .on_data = s_flood_data,
    .on_close = s_flood_close,
};

static void s_accept_flood(router_listener_t *l, router_conn_t *c, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) l;
    ctx->accepted++;
    router_conn_set_handlers(c, &s_flood_handlers, ctx);
}

static void s_flood_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    char buf[8];
    int a = s_dial(&ctx->addr, 4096);
    CHECK(ctx, a >= 0);
    int b = s_dial(&ctx->addr, 0);
    CHECK(ctx, b >= 0);
    CHECK(ctx, s_send_all(b, "ping1", 5) == 0 && s_recv_exact(b, buf, 5) == 0);
    CHECK(ctx, s_send_all(a, "flood", 5) == 0); /* and never read from a */
    s_wait_flag(ctx);                            /* the server cut a */
    CHECK(ctx, s_send_all(b, "ping2", 5) == 0 && s_recv_exact(b, buf, 5) == 0);
    CHECK(ctx, memcmp(buf, "ping2", 5) == 0);
    /* A (which read nothing until cut) reads what got through, then sees a
     * reset, not an orderly end. */
    uint8_t *sink = malloc(1 << 20);
    CHECK(ctx, sink != NULL);
    ssize_t n = s_recv_eof(a, sink, 1 << 20);
    int e = errno;
    free(sink);
    close(b);
    close(a);
    CHECK(ctx, n < 0 && e == ECONNRESET);
}

static void test_slow_consumer_cut(void **state)
{
    s_ctx_t ctx;
    s_flood_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    s_loop_new(&ctx, state, NULL);
    ctx.extra = f;
    s_listen(&ctx, "127.0.0.1:0", s_accept_flood);
    ctx.want_closed = 2;
    s_clients_start(&ctx, s_flood_client, 1);
    s_run(&ctx);
    assert_true(f->closed);
    assert_int_equal(f->reason, ROUTER_CLOSE_SLOW_CONSUMER);
    assert_int_equal(ctx.send_rc, -1);
    assert_int_equal(ctx.send_errno, ENOBUFS);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.slow_consumer_cuts, 1);
    /* More than the limit was offered, and the cut kept memory bounded. */
    assert_true(st.bytes_out < 64u * 1024 * 1024);
    s_done(&ctx);
    free(f);
}

/* The limit is exact: up to it is queued, one byte more cuts at once. */
static void s_limit_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    static uint8_t zeros[1000];
    (void) data;
    (void) len;
    if (ctx->send_rc != 0)
        return;
    router_conn_set_send_limit(c, 1000);
    assert_int_equal(router_conn_send(c, zeros, 600), 0);
    struct iovec iov[2] = {{zeros, 300}, {zeros, 100}};
    assert_int_equal(router_conn_sendv(c, iov, 2), 0);
    assert_int_equal(router_conn_send_queued(c), 1000);
    ctx->send_rc = router_conn_send(c, zeros, 1);
    ctx->send_errno = errno;
    assert_int_equal(router_conn_send(c, zeros, 1), -1); /* already cut */
    assert_int_equal(errno, EPIPE);
}

static const router_conn_handlers_t s_limit_handlers = {
    .on_data = s_limit_data,
    .on_close = s_srv_close,
};

static void s_accept_limit(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_limit_handlers, ud);
}

static void s_limit_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    char buf[2048];
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "x", 1) == 0);
    (void) s_recv_eof(fd, buf, sizeof buf); /* EOF or reset: the server cut us */
    close(fd);
}

static void test_send_limit_exact(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_limit);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_limit_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.send_rc, -1);
    assert_int_equal(ctx.send_errno, ENOBUFS);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_SLOW_CONSUMER);
    s_done(&ctx);
}

/* The loop's connections together: once a send would take their unsent
 * bytes past send_total_limit, a connection may hold only its share
 * (the limit / connections open). The one that stopped reading is cut;
 * the others, and a newcomer below its share, go on. On the memory loop:
 * nothing is written until it runs, so the queues hold what is sent. */
typedef struct {
    unsigned closed;
    router_close_reason_t reason;
    size_t out;
} s_share_t;

static void s_share_output(router_conn_t *c, const uint8_t *d, size_t n, void *ud)
{
    (void) c;
    (void) d;
    ((s_share_t *) ud)->out += n;
}

static void s_share_data(router_conn_t *c, uint8_t *d, size_t n, void *ud)
{
    (void) c;
    (void) d;
    (void) n;
    (void) ud;
}

static void s_share_close(router_conn_t *c, router_close_reason_t r, void *ud)
{
    (void) c;
    s_share_t *s = ud;
    s->closed++;
    s->reason = r;
}

static void test_unsent_total_share(void **state)
{
    (void) state;
    const size_t k = 1024;
    router_loop_t *loop = router_loop_new(&(router_loop_opts_t){
        .backend = ROUTER_LOOP_MEMORY, .send_limit = 1024 * k, .send_total_limit = 1024 * k});
    assert_non_null(loop);
    s_share_t peer = {0}, side[3] = {{0}};
    const router_mem_peer_t mp = {.on_output = s_share_output};
    assert_int_equal(router_mem_peer_set(loop, &mp, &peer, 0), 0);
    const router_conn_handlers_t h = {.on_data = s_share_data, .on_close = s_share_close};
    router_conn_t *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = router_mem_conn_new(loop);
        assert_non_null(c[i]);
        router_conn_set_handlers(c[i], &h, &side[i]);
    }
    uint8_t *big = calloc(1, 600 * k);
    assert_non_null(big);
    assert_int_equal(router_conn_send(c[0], big, 600 * k), 0);
    assert_int_equal(router_conn_send(c[1], big, 300 * k), 0);
    /* 1,100 KiB would pass the 1 MiB: c[0]'s share is a third of it. */
    errno = 0;
    assert_int_equal(router_conn_send(c[0], big, 200 * k), -1);
    assert_int_equal(errno, ENOBUFS);
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    assert_int_equal(st.slow_consumer_cuts, 1);
    assert_int_equal(st.unsent_total_cuts, 1);
    assert_int_equal(st.unsent_total, 900 * k); /* c[0]'s bytes go when it is freed */
    /* Still past the bound, but c[2] holds less than its half; the room
     * the loop reports is exactly what it takes. */
    assert_int_equal(router_conn_send_room(c[0]), 0);
    assert_int_equal(router_conn_send_room(c[2]), 512 * k);
    assert_int_equal(router_conn_send_room(c[1]), 212 * k); /* 512 of its share − 300 */
    assert_int_equal(router_conn_send(c[2], big, 200 * k), 0);
    assert_int_equal(router_conn_send_room(c[2]), 312 * k);
    /* Below the bound each connection has its own limit again. */
    (void) router_mem_run(loop, 0);
    router_loop_stats(loop, &st);
    assert_int_equal(st.unsent_total, 0);
    assert_int_equal(side[0].closed, 1);
    assert_int_equal(side[0].reason, ROUTER_CLOSE_SLOW_CONSUMER);
    assert_int_equal(side[1].closed + side[2].closed, 0);
    assert_int_equal(peer.out, 500 * k);
    assert_int_equal(router_conn_send_room(c[1]), 1024 * k);
    assert_int_equal(router_conn_send(c[1], big, 600 * k), 0);
    assert_int_equal(router_conn_send_room(c[2]), 512 * k); /* its share: more than the total has left */
    assert_int_equal(router_conn_send(c[2], big, 400 * k), 0);
    /* Past the bound now (c[1] 600, c[2] 400 of 1,024 and more asked):
     * each holds its share's worth at most. */
    assert_int_equal(router_conn_send_room(c[2]), 112 * k);
    assert_int_equal(router_conn_send(c[2], big, 112 * k), 0);
    /* Past its share, the last bytes before a close still go (a Close
     * frame: why it is cut), within ROUTER_CONN_LAST_MAX. */
    assert_int_equal(router_conn_send_last(c[2], big, ROUTER_CONN_LAST_MAX + 1), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_conn_send_last(c[2], big, 17), 0);
    assert_int_equal(router_conn_send(c[2], big, 1), -1);
    router_loop_stats(loop, &st);
    assert_int_equal(st.unsent_total_cuts, 2);
    free(big);
    router_loop_destroy(&loop);
    assert_int_equal(side[1].closed + side[2].closed, 2);
}

/* ------------------------------------------------------------ connection limits */

typedef struct {
    router_listener_t *l2;  /* a second listener without its own cap */
    router_addr_t addr2;    /* its address */
} s_limits_t;

static void s_limits_client(s_ctx_t *ctx, int idx)
{
    s_limits_t *lim = ctx->extra;
    char buf[8];
    (void) idx;
    /* Listener 1 caps itself at 1; the loop caps everything at 3. */
    int c1 = s_dial(&ctx->addr, 0);
    CHECK(ctx, c1 >= 0 && s_send_all(c1, "1", 1) == 0 && s_recv_exact(c1, buf, 1) == 0);
    int c2 = s_dial(&ctx->addr, 0); /* refused by listener 1's cap */
    CHECK(ctx, c2 >= 0);
    CHECK(ctx, s_recv_eof(c2, buf, sizeof buf) <= 0);
    close(c2);
    int c3 = s_dial(&lim->addr2, 0);
    CHECK(ctx, c3 >= 0 && s_send_all(c3, "3", 1) == 0 && s_recv_exact(c3, buf, 1) == 0);
    int c4 = s_dial(&lim->addr2, 0);
    CHECK(ctx, c4 >= 0 && s_send_all(c4, "4", 1) == 0 && s_recv_exact(c4, buf, 1) == 0);
    int c5 = s_dial(&lim->addr2, 0); /* refused by the loop's cap */
    CHECK(ctx, c5 >= 0);
    CHECK(ctx, s_recv_eof(c5, buf, sizeof buf) <= 0);
    close(c5);
    close(c1);
    close(c3);
    close(c4);
}

static void test_connection_limits(void **state)
{
    s_ctx_t ctx;
    s_limits_t lim;
    router_loop_opts_t o = {.max_conns = 3};
    s_loop_new(&ctx, state, &o);
    s_listen(&ctx, "127.0.0.1:0", s_accept_echo);
    router_listener_set_max_conns(ctx.l, 1);
    router_addr_t a;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &a, NULL), 0);
    lim.l2 = router_loop_listen(ctx.loop, &a, s_accept_echo, &ctx);
    assert_non_null(lim.l2);
    lim.addr2 = *router_listener_addr(lim.l2);
    ctx.extra = &lim;
    ctx.want_closed = 3;
    s_clients_start(&ctx, s_limits_client, 1);
    s_run(&ctx);
    router_loop_stats_t st;
    router_listener_stats_t l1, l2;
    router_loop_stats(ctx.loop, &st);
    router_listener_stats(ctx.l, &l1);
    router_listener_stats(lim.l2, &l2);
    assert_int_equal(st.accepted, 3);
    assert_int_equal(st.refused, 2);
    assert_int_equal(l1.accepted, 1);
    assert_int_equal(l1.refused, 1);
    assert_int_equal(l2.accepted, 2);
    assert_int_equal(l2.refused, 1);
    router_listener_close(&lim.l2);
    s_done(&ctx);
}

/* ------------------------------------------------------------ outbound connect */

static void s_out_open(router_conn_t *c, void *ud)
{
    s_ctx_t *ctx = ud;
    assert_int_equal(router_conn_send(c, "ping", 4), 0);
    ctx->accepted += 100; /* marks on_open */
}

static void s_out_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    assert_true(ctx->got_len + len <= sizeof ctx->got);
    memcpy(ctx->got + ctx->got_len, data, len);
    ctx->got_len += len;
    if (ctx->got_len == 9)
        router_conn_close(c);
}

static const router_conn_handlers_t s_out = {
    .on_open = s_out_open,
    .on_data = s_out_data,
    .on_close = s_srv_close,
};

static void s_connect_test(void **state, const char *listen_text)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, listen_text, s_accept_echo);
    router_conn_t *c = router_loop_connect(ctx.loop, &ctx.addr, &s_out, &ctx);
    assert_non_null(c);
    /* Sent before the connection exists: queued, and goes out first. */
    assert_int_equal(router_conn_send(c, "early", 5), 0);
    ctx.want_closed = 2; /* both ends */
    s_run(&ctx);
    assert_int_equal(ctx.accepted, 101);
    assert_int_equal(ctx.got_len, 9);
    assert_memory_equal(ctx.got, "earlyping", 9);
    /* Our close flushed and shut down; the server saw EOF and closed too. */
    bool local = false, eof = false;
    for (unsigned i = 0; i < 2; i++) {
        local |= ctx.reasons[i] == ROUTER_CLOSE_LOCAL;
        eof |= ctx.reasons[i] == ROUTER_CLOSE_EOF;
    }
    assert_true(local && eof);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.connects, 1);
    s_done(&ctx);
}

static void test_connect_tcp(void **state)
{
    s_connect_test(state, "127.0.0.1:0");
}

static void test_connect_uds(void **state)
{
    char text[128];
    s_mktmp();
    snprintf(text, sizeof text, "uds://%s/out.sock", s_tmpdir);
    s_connect_test(state, text);
    s_rmtmp();
}

typedef struct {
    int errors[4];          /* router_conn_error at on_close */
    router_close_reason_t reasons[4]; /* close reasons */
    unsigned n;             /* how many closed */
    router_loop_t *loop;    /* to stop */
} s_refused_t;

static void s_refused_data(router_conn_t *c, uint8_t *d, size_t n, void *ud)
{
    (void) c;
    (void) d;
    (void) n;
    (void) ud;
    fail_msg("data on a connection that never opened");
}

static void s_refused_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_refused_t *r = ud;
    r->errors[r->n] = router_conn_error(c);
    r->reasons[r->n] = reason;
    if (++r->n == 2)
        router_loop_stop(r->loop);
}

static const router_conn_handlers_t s_refused_handlers = {
    .on_data = s_refused_data,
    .on_close = s_refused_close,
};

static void test_connect_refused(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_refused_t r = {.loop = ctx.loop};
    /* A bound socket that does not listen refuses connections. */
    int hold = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    assert_int_equal(bind(hold, (struct sockaddr *) &sin, sizeof sin), 0);
    assert_int_equal(getsockname(hold, (struct sockaddr *) &sin, &len), 0);
    router_addr_t a;
    char text[128];
    snprintf(text, sizeof text, "127.0.0.1:%u", ntohs(sin.sin_port));
    assert_int_equal(router_addr_parse(text, &a, NULL), 0);
    assert_non_null(router_loop_connect(ctx.loop, &a, &s_refused_handlers, &r));
    s_mktmp();
    snprintf(text, sizeof text, "%s/nobody.sock", s_tmpdir);
    assert_int_equal(router_addr_parse(text, &a, NULL), 0);
    assert_non_null(router_loop_connect(ctx.loop, &a, &s_refused_handlers, &r));
    /* Local misuse fails at once. */
    assert_int_equal(router_addr_parse("127.0.0.1:0", &a, NULL), 0);
    errno = 0;
    assert_null(router_loop_connect(ctx.loop, &a, &s_refused_handlers, &r));
    assert_int_equal(errno, EINVAL);
    uint64_t guard = router_loop_timer_add(ctx.loop, HANG_GUARD_MS, s_guard, &ctx);
    assert_int_equal(router_loop_run(ctx.loop), 0);
    (void) router_loop_timer_cancel(ctx.loop, guard);
    assert_false(ctx.hung);
    assert_int_equal(r.n, 2);
    for (unsigned i = 0; i < 2; i++)
        assert_int_equal(r.reasons[i], ROUTER_CLOSE_CONNECT_FAILED);
    assert_true((r.errors[0] == ECONNREFUSED && r.errors[1] == ENOENT) ||
                (r.errors[0] == ENOENT && r.errors[1] == ECONNREFUSED));
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.connect_failures, 2);
    close(hold);
    s_rmtmp();
    s_done(&ctx);
}

/* Closed while still connecting: with nothing queued it ends at once; with
 * data queued it connects, flushes, then closes. */
static void s_drain_mark(router_conn_t *c, void *ud)
{
    (void) c;
    ((s_ctx_t *) ud)->violations += 1000; /* counted, checked below */
}

static const router_conn_handlers_t s_out_quiet = {
    .on_data = s_echo_data,
    .on_drain = s_drain_mark,
    .on_close = s_srv_close,
};

static void s_got_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) c;
    if (ctx->got_len + len <= sizeof ctx->got) {
        memcpy(ctx->got + ctx->got_len, data, len);
        ctx->got_len += len;
    }
}

static const router_conn_handlers_t s_collect = {
    .on_data = s_got_data,
    .on_close = s_srv_close,
};

static void s_accept_collect(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_collect, ud);
}

static void test_close_while_connecting(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_collect);
    router_conn_t *empty = router_loop_connect(ctx.loop, &ctx.addr, &s_out_quiet, &ctx);
    assert_non_null(empty);
    router_conn_close(empty); /* nothing queued: closes without connecting */
    router_conn_t *full = router_loop_connect(ctx.loop, &ctx.addr, &s_out_quiet, &ctx);
    assert_non_null(full);
    assert_int_equal(router_conn_send(full, "last words", 10), 0);
    router_conn_close(full);
    assert_int_equal(router_conn_send(full, "more", 4), -1); /* closing */
    assert_int_equal(errno, EPIPE);
    ctx.want_closed = 3; /* empty, full, and the server side of full */
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_LOCAL); /* empty */
    assert_int_equal(ctx.got_len, 10);
    assert_memory_equal(ctx.got, "last words", 10);
    assert_int_equal(ctx.violations, 0); /* on_drain is for open connections */
    s_done(&ctx);
}

/* on_drain fires when the queue empties; close_all closes everyone (the
 * server side too, so whether it read the byte first is not checked). */
static void s_drain_open(router_conn_t *c, void *ud)
{
    (void) ud;
    assert_int_equal(router_conn_send(c, "x", 1), 0);
}

static void s_drain_count(router_conn_t *c, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) c;
    if (++ctx->violations == 1) /* first drain: close everything */
        router_loop_close_all(ctx->loop);
}

static void s_drain_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    ((s_ctx_t *) ud)->out_reason = reason;
    s_srv_close(c, reason, ud);
}

static const router_conn_handlers_t s_drain_handlers = {
    .on_open = s_drain_open,
    .on_data = s_got_data,
    .on_drain = s_drain_count,
    .on_close = s_drain_close,
};

static void test_drain_and_close_all(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_collect);
    assert_non_null(router_loop_connect(ctx.loop, &ctx.addr, &s_drain_handlers, &ctx));
    ctx.want_closed = 2; /* our connection, then the server side */
    s_run(&ctx);
    assert_int_equal(ctx.violations, 1); /* one drain */
    assert_int_equal(ctx.out_reason, ROUTER_CLOSE_LOCAL);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.conns_open, 0);
    s_done(&ctx);
}

/* ------------------------------------------------------------ half-close, EOF */

static void s_half_client(s_ctx_t *ctx, int idx)
{
    char buf[64];
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "hello", 5) == 0);
    CHECK(ctx, shutdown(fd, SHUT_WR) == 0);
    ssize_t n = s_recv_eof(fd, buf, sizeof buf);
    close(fd);
    /* No on_eof: the server flushes the echo, then closes. With on_eof it
     * answers after our EOF, then closes. */
    if (ctx->extra)
        CHECK(ctx, n == 8 && memcmp(buf, "hellobye", 8) == 0);
    else
        CHECK(ctx, n == 5 && memcmp(buf, "hello", 5) == 0);
}

static void s_on_eof_bye(router_conn_t *c, void *ud)
{
    (void) ud;
    assert_int_equal(router_conn_send(c, "bye", 3), 0);
    router_conn_close(c);
}

static const router_conn_handlers_t s_eof_handlers = {
    .on_data = s_echo_data,
    .on_eof = s_on_eof_bye,
    .on_close = s_srv_close,
};

static void s_accept_eof(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_eof_handlers, ud);
}

static void test_half_close_default(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_echo);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_half_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_EOF);
    s_done(&ctx);
}

static void test_half_close_on_eof(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_eof);
    ctx.extra = &ctx; /* tells the client to expect "bye" */
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_half_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_LOCAL);
    s_done(&ctx);
}

/* ------------------------------------------------------------ pause, resume */

static bool s_paused;

static void s_pause_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    if (s_paused)
        ctx->violations++;
    assert_true(ctx->got_len + len <= sizeof ctx->got);
    memcpy(ctx->got + ctx->got_len, data, len);
    ctx->got_len += len;
    if (ctx->got_len == 1) {
        router_conn_pause_read(c);
        s_paused = true;
        ctx->conn = c;
        assert_int_equal(router_conn_send(c, "paused", 6), 0);
    }
}

static const router_conn_handlers_t s_pause_handlers = {
    .on_data = s_pause_data,
    .on_close = s_srv_close,
};

static void s_accept_pause(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_pause_handlers, ud);
}

static void s_resume(router_loop_t *loop, void *arg)
{
    s_ctx_t *ctx = arg;
    (void) loop;
    s_paused = false;
    router_conn_resume_read(ctx->conn);
}

static void s_pause_client(s_ctx_t *ctx, int idx)
{
    char buf[16];
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "a", 1) == 0);
    CHECK(ctx, s_recv_exact(fd, buf, 6) == 0 && memcmp(buf, "paused", 6) == 0);
    /* Sent while the server is not reading; EOF too. */
    CHECK(ctx, s_send_all(fd, "bc", 2) == 0);
    CHECK(ctx, shutdown(fd, SHUT_WR) == 0);
    while (router_loop_post(ctx->loop, s_resume, ctx) != 0)
        sched_yield();
    CHECK(ctx, s_recv_eof(fd, buf, sizeof buf) == 0);
    close(fd);
}

static void test_pause_resume(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_paused = false;
    s_listen(&ctx, "127.0.0.1:0", s_accept_pause);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_pause_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.violations, 0);
    assert_int_equal(ctx.got_len, 3);
    assert_memory_equal(ctx.got, "abc", 3);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_EOF); /* EOF came after the data */
    s_done(&ctx);
}

/* Pausing after every read and resuming from a timer, while the peer
 * streams: no on_data while paused, and every byte arrives once, in order
 * (with io_uring, bytes already in flight at the pause are parked). */
#define STRESS_MSGS 400
#define STRESS_LEN 10

typedef struct {
    uint8_t buf[STRESS_MSGS * STRESS_LEN]; /* bytes received */
    size_t len;                            /* how many */
    unsigned pauses;                       /* pauses made */
} s_stress_t;

static void s_stress_resume(router_loop_t *loop, uint64_t id, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) loop;
    (void) id;
    s_paused = false;
    if (ctx->conn)
        router_conn_resume_read(ctx->conn);
}

static void s_stress_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    s_stress_t *st = ctx->extra;
    if (s_paused)
        ctx->violations++;
    if (st->len + len > sizeof st->buf) {
        ctx->violations++;
        return;
    }
    memcpy(st->buf + st->len, data, len);
    st->len += len;
    ctx->conn = c;
    router_conn_pause_read(c);
    s_paused = true;
    st->pauses++;
    assert_true(router_loop_timer_add(ctx->loop, 0, s_stress_resume, ctx) != 0);
}

static const router_conn_handlers_t s_stress_handlers = {
    .on_data = s_stress_data,
    .on_close = s_srv_close,
};

static void s_accept_stress(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_stress_handlers, ud);
}

static void s_stress_client(s_ctx_t *ctx, int idx)
{
    char msg[STRESS_LEN + 1], buf[8];
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    for (int i = 0; i < STRESS_MSGS; i++) {
        snprintf(msg, sizeof msg, "m%08d;", i);
        CHECK(ctx, s_send_all(fd, msg, STRESS_LEN) == 0);
    }
    CHECK(ctx, shutdown(fd, SHUT_WR) == 0);
    CHECK(ctx, s_recv_eof(fd, buf, sizeof buf) == 0);
    close(fd);
}

static void test_pause_resume_stress(void **state)
{
    s_ctx_t ctx;
    s_stress_t *st = calloc(1, sizeof *st);
    assert_non_null(st);
    router_loop_opts_t o = {.recv_buf_size = 512}; /* many small reads */
    s_loop_new(&ctx, state, &o);
    s_paused = false;
    ctx.extra = st;
    s_listen(&ctx, "127.0.0.1:0", s_accept_stress);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_stress_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.violations, 0);
    assert_int_equal(st->len, sizeof st->buf);
    char want[STRESS_LEN + 1];
    for (int i = 0; i < STRESS_MSGS; i++) {
        snprintf(want, sizeof want, "m%08d;", i);
        assert_memory_equal(st->buf + (size_t) i * STRESS_LEN, want, STRESS_LEN);
    }
    assert_true(st->pauses >= 1);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_EOF);
    s_done(&ctx);
    free(st);
}

/* Two provided buffers for 200 busy connections: receives run dry
 * (io_uring: -ENOBUFS), are re-armed, and nothing is lost. */
static void test_tiny_buffer_pool(void **state)
{
    s_ctx_t ctx;
    router_loop_opts_t o = {.recv_buf_count = 2, .recv_buf_size = 512};
    s_loop_new(&ctx, state, &o);
    s_listen(&ctx, "127.0.0.1:0", s_accept_echo);
    ctx.want_closed = CONN_THREADS * CONNS_EACH;
    s_clients_start(&ctx, s_many_client, CONN_THREADS);
    s_run(&ctx);
    assert_int_equal(ctx.accepted, CONN_THREADS * CONNS_EACH);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    print_message("receives re-armed after -ENOBUFS: %llu\n",
                  (unsigned long long) st.recv_nobufs);
    s_done(&ctx);
}

/* ------------------------------------------------------------ graceful close, abort */

#define BULK (1024 * 1024)

static void s_bulk_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) data;
    (void) len;
    if (ctx->got_len++ > 0)
        return;
    uint8_t *bulk = malloc(BULK);
    assert_non_null(bulk);
    for (size_t i = 0; i < BULK; i++)
        bulk[i] = (uint8_t) (i % 253);
    uint32_t hdr = htonl(BULK);
    struct iovec iov[2] = {{&hdr, sizeof hdr}, {bulk, BULK}};
    assert_int_equal(router_conn_sendv(c, iov, 2), 0);
    free(bulk); /* sendv copied it */
    if (ctx->extra)
        router_conn_abort(c);
    else
        router_conn_close(c);
    assert_int_equal(router_conn_send(c, "late", 4), -1);
    assert_int_equal(errno, EPIPE);
}

static const router_conn_handlers_t s_bulk_handlers = {
    .on_data = s_bulk_data,
    .on_close = s_srv_close,
};

static void s_accept_bulk(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_bulk_handlers, ud);
}

static void s_bulk_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "go", 2) == 0);
    uint8_t *buf = malloc(BULK + 4);
    CHECK(ctx, buf != NULL);
    ssize_t n = s_recv_eof(fd, buf, BULK + 4);
    bool ok = true;
    if (!ctx->extra) {
        /* Graceful: everything, then EOF. */
        ok = n == BULK + 4 && ntohl(*(uint32_t *) buf) == BULK;
        for (size_t i = 0; ok && i < BULK; i++)
            ok = buf[4 + i] == (uint8_t) (i % 253);
    } else {
        /* Aborted: the queue was discarded and the end is a reset, never
         * an orderly EOF a sender could take for a refusal. */
        ok = n < 0 && errno == ECONNRESET;
    }
    free(buf);
    close(fd);
    CHECK(ctx, ok);
}

static void test_close_flushes(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_bulk);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_bulk_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_LOCAL);
    s_done(&ctx);
}

static void test_abort_discards(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_bulk);
    ctx.extra = &ctx; /* abort instead of close */
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_bulk_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_ABORT);
    s_done(&ctx);
}

/* ------------------------------------------------------------ deadlines */

/* Each accepted connection gets a deadline; a byte "x" clears it, a byte
 * "m" moves it 50 ms on. */
static void s_deadline_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) ud;
    for (size_t i = 0; i < len; i++) {
        if (data[i] == 'x')
            router_conn_set_deadline(c, 0);
        else if (data[i] == 'm')
            router_conn_set_deadline(c, router_loop_now_ms(router_conn_loop(c)) + 50);
    }
    (void) router_conn_send(c, data, len);
}

static const router_conn_handlers_t s_deadline_handlers = {
    .on_data = s_deadline_data,
    .on_close = s_srv_close,
};

static void s_accept_deadline(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    s_ctx_t *ctx = ud;
    ctx->accepted++;
    router_conn_set_handlers(c, &s_deadline_handlers, ud);
    router_conn_set_deadline(c, router_loop_now_ms(ctx->loop) + 30);
}

/* Client 0 stays silent: cut at its deadline, it sees a reset. Client 1
 * clears its deadline, waits for client 0's cut, and is still served. */
static void s_deadline_client(s_ctx_t *ctx, int idx)
{
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    uint8_t buf[64];
    if (idx == 0) {
        ssize_t n = s_recv_eof(fd, buf, sizeof buf);
        int e = errno;
        close(fd);
        atomic_store(&ctx->flag, true);
        CHECK(ctx, n < 0 && e == ECONNRESET);
        return;
    }
    CHECK(ctx, s_send_all(fd, "x", 1) == 0 && s_recv_exact(fd, buf, 1) == 0);
    s_wait_flag(ctx);
    CHECK(ctx, s_send_all(fd, "y", 1) == 0 && s_recv_exact(fd, buf, 1) == 0);
    CHECK(ctx, buf[0] == 'y');
    close(fd);
}

static void test_deadline_cuts_silent(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_deadline);
    ctx.want_closed = 2;
    s_clients_start(&ctx, s_deadline_client, 2);
    s_run(&ctx);
    unsigned deadline = 0, eof = 0;
    for (unsigned i = 0; i < ctx.closed; i++) {
        deadline += ctx.reasons[i] == ROUTER_CLOSE_DEADLINE;
        eof += ctx.reasons[i] == ROUTER_CLOSE_EOF;
    }
    assert_int_equal(deadline, 1);
    assert_int_equal(eof, 1);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.deadline_cuts, 1);
    assert_string_equal(router_close_reason_str(ROUTER_CLOSE_DEADLINE), "deadline");
    s_done(&ctx);
}

/* A connection whose fd someone else closed (a double close elsewhere in
 * the process) and whose number was taken again: at its deadline the loop
 * finds the fd is no longer its socket, counts and logs it, and cuts the
 * connection without closing the fd's new owner. The swap happens a
 * moment after the accept, so both backends have the receive armed. */
static int s_stolen_fd = -1;

static void s_steal_fd(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_ctx_t *ctx = ud;
    int fd = router_conn_fd(ctx->conn);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || null < 0 || dup2(null, fd) != fd)
        ctx->violations++;
    if (null >= 0)
        close(null);
    s_stolen_fd = fd;
}

static void s_accept_stolen(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    s_ctx_t *ctx = ud;
    ctx->accepted++;
    ctx->conn = c;
    router_conn_set_handlers(c, &s_deadline_handlers, ud);
    router_conn_set_deadline(c, router_loop_now_ms(ctx->loop) + 50);
    if (!router_loop_timer_add(ctx->loop, 5, s_steal_fd, ctx))
        ctx->violations++;
}

static void s_stolen_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    uint8_t buf[16];
    ssize_t n = s_recv_eof(fd, buf, sizeof buf); /* EOF or a reset: the socket is gone */
    CHECK(ctx, n <= 0);
    close(fd);
}

static void test_deadline_finds_a_stolen_fd(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_stolen);
    ctx.want_closed = 1;
    s_stolen_fd = -1;
    s_clients_start(&ctx, s_stolen_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.violations, 0);
    assert_int_equal(ctx.closed, 1);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_DEADLINE);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.deadline_cuts, 1);
    assert_int_equal(st.fds_lost, 1);
    s_done(&ctx);
    /* The fd's new owner still has it. */
    assert_true(s_stolen_fd >= 0);
    assert_int_not_equal(fcntl(s_stolen_fd, F_GETFD), -1);
    close(s_stolen_fd);
}

/* Out of memory at each allocation of router_loop_adopt and
 * router_loop_connect: NULL with ENOMEM and the fd closed (adopt takes it
 * either way), or a connection, which an abort ends; bad arguments are
 * EINVAL, and adopt closes the fd it was given then too. */
static void test_adopt_and_connect_without_memory(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    router_conn_handlers_t h = {.on_data = s_deadline_data, .on_close = s_srv_close};
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        errno = 0;
        alloc_fail_arm(i);
        router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &h, &ctx);
        bool failed = alloc_fail_disarm() > 0;
        if (!c) {
            assert_true(failed);
            assert_int_equal(errno, ENOMEM);
            assert_int_equal(fcntl(sv[0], F_GETFD), -1); /* closed for us */
        } else {
            router_conn_abort(c);
        }
        close(sv[1]);
        if (!failed)
            break;
    }
    router_addr_t addr;
    router_addr_err_t why;
    assert_int_equal(router_addr_parse("127.0.0.1:9", &addr, &why), 0);
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        errno = 0;
        alloc_fail_arm(i);
        router_conn_t *c = router_loop_connect(ctx.loop, &addr, &h, &ctx);
        bool failed = alloc_fail_disarm() > 0;
        if (!c) {
            assert_true(failed);
            assert_int_equal(errno, ENOMEM);
        } else {
            router_conn_abort(c);
        }
        if (!failed)
            break;
    }
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    router_conn_handlers_t none = {0};
    errno = 0;
    assert_null(router_loop_adopt(ctx.loop, sv[0], &none, &ctx));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(fcntl(sv[0], F_GETFD), -1);
    close(sv[1]);
    errno = 0;
    assert_null(router_loop_connect(ctx.loop, &addr, &none, &ctx));
    assert_int_equal(errno, EINVAL);
    s_done(&ctx);
}

/* A deadline moved on by traffic holds as long as traffic comes, then cuts. */
static void s_deadline_move_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    uint8_t buf[64];
    for (int i = 0; i < 5; i++)
        CHECK(ctx, s_send_all(fd, "m", 1) == 0 && s_recv_exact(fd, buf, 1) == 0);
    ssize_t n = s_recv_eof(fd, buf, sizeof buf);
    int e = errno;
    close(fd);
    CHECK(ctx, n < 0 && e == ECONNRESET);
}

static void test_deadline_moves(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_deadline);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_deadline_move_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_DEADLINE);
    s_done(&ctx);
}

/* A peer that never reads cannot hold a graceful close open forever. */
static void s_stall_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    int fd = s_dial(&ctx->addr, 4096);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "go", 2) == 0);
    s_wait_flag(ctx); /* the server closed us: only now read (or not) */
    close(fd);
}

static void s_stall_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_ctx_t *ctx = ud;
    atomic_store(&ctx->flag, true);
    s_srv_close(c, reason, ud);
}

static void s_stall_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    int small = 16 * 1024;
    setsockopt(router_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    s_bulk_data(c, data, len, ud);
}

static const router_conn_handlers_t s_stall_handlers = {
    .on_data = s_stall_data,
    .on_close = s_stall_close,
};

static void s_accept_stall(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_stall_handlers, ud);
}

static void test_close_timeout(void **state)
{
    s_ctx_t ctx;
    router_loop_opts_t o = {.close_timeout_ms = 20};
    s_loop_new(&ctx, state, &o);
    s_listen(&ctx, "127.0.0.1:0", s_accept_stall);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_stall_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_TIMEOUT);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.close_timeouts, 1);
    s_done(&ctx);
}

/* ------------------------------------------------------------ shutdown */

static void s_hold_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) data;
    (void) len;
    ctx->conn = c;
    router_loop_stop(ctx->loop);
}

static const router_conn_handlers_t s_hold_handlers = {
    .on_data = s_hold_data,
    .on_close = s_srv_close,
};

static void s_accept_hold(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_hold_handlers, ud);
}

static void s_hold_client(s_ctx_t *ctx, int idx)
{
    char buf[8];
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "hi", 2) == 0);
    CHECK(ctx, s_recv_eof(fd, buf, sizeof buf) <= 0); /* the loop went away */
    close(fd);
}

/* Unlike s_client_main, does not post to the loop: it is destroyed. */
static void *s_hold_client_main(void *p)
{
    s_hold_client(p, 0);
    return NULL;
}

/* Destroying a loop with connections open reports them closed. */
static void test_destroy_closes_connections(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_hold);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_hold_client_main, &ctx), 0);
    assert_int_equal(router_loop_run(ctx.loop), 0);
    assert_non_null(ctx.conn);
    assert_int_equal(ctx.closed, 0);
    router_listener_close(&ctx.l);
    router_loop_destroy(&ctx.loop);
    assert_int_equal(ctx.closed, 1);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_SHUTDOWN);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&ctx.client_fail), 0);
}

/* ------------------------------------------------------------ Unix socket files */

static void s_noop_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    (void) ud;
    router_conn_abort(c);
}

static void test_uds_stale_file(void **state)
{
    s_ctx_t ctx;
    char path[128];
    router_addr_t a;
    s_loop_new(&ctx, state, NULL);
    s_mktmp();
    snprintf(path, sizeof path, "%s/kith.sock", s_tmpdir);
    assert_int_equal(router_addr_parse(path, &a, NULL), 0);

    /* A socket file left by a dead process is replaced. */
    int old = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(old, &a.u.sa, a.len), 0);
    close(old);
    router_listener_t *l = router_loop_listen(ctx.loop, &a, s_noop_accept, NULL);
    assert_non_null(l);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    /* A live socket is not stolen. */
    errno = 0;
    assert_null(router_loop_listen(ctx.loop, &a, s_noop_accept, NULL));
    assert_int_equal(errno, EADDRINUSE);
    router_listener_close(&l);
    assert_null(l);
    assert_int_equal(stat(path, &st), -1); /* removed on close */

    /* Anything that is not a socket is left alone. */
    int f = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(f >= 0);
    close(f);
    errno = 0;
    assert_null(router_loop_listen(ctx.loop, &a, s_noop_accept, NULL));
    assert_int_equal(errno, EEXIST);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    s_rmtmp();
    s_done(&ctx);
}

/* ------------------------------------------------------------ addresses */

static void test_addr_parse(void **state)
{
    (void) state;
    router_addr_t a;
    router_addr_err_t err;
    char out[ROUTER_ADDR_STR_MAX];
    static const struct {
        const char *in;   /* text */
        const char *out;  /* formatted back, or NULL if refused */
        router_addr_err_t err; /* reason when refused */
    } cases[] = {
        {"127.0.0.1:4200", "127.0.0.1:4200", 0},
        {"tcp://10.1.2.3:0", "10.1.2.3:0", 0},
        {"localhost:80", "127.0.0.1:80", 0},
        {"[::1]:4200", "[::1]:4200", 0},
        {"tcp://[::]:65535", "[::]:65535", 0},
        {"[2001:db8::7]:9", "[2001:db8::7]:9", 0},
        {"/run/kith/comms.sock", "/run/kith/comms.sock", 0},
        {"./rel.sock", "./rel.sock", 0},
        {"uds:///tmp/x.sock", "/tmp/x.sock", 0},
        {"", NULL, ROUTER_ADDR_EMPTY},
        {"inproc://node-a", NULL, ROUTER_ADDR_BAD_SCHEME},
        {"http://1.2.3.4:80", NULL, ROUTER_ADDR_BAD_SCHEME},
        {"example.com:80", NULL, ROUTER_ADDR_BAD_HOST},
        {"::1:4200", NULL, ROUTER_ADDR_UNBRACKETED_V6},
        {"1.2.3:80", NULL, ROUTER_ADDR_BAD_HOST},
        {"[::1]4200", NULL, ROUTER_ADDR_BAD_PORT},
        {"[::1:4200", NULL, ROUTER_ADDR_BAD_BRACKETS},
        {"127.0.0.1", NULL, ROUTER_ADDR_BAD_PORT},
        {"127.0.0.1:", NULL, ROUTER_ADDR_BAD_PORT},
        {"127.0.0.1:65536", NULL, ROUTER_ADDR_BAD_PORT},
        {"127.0.0.1:-1", NULL, ROUTER_ADDR_BAD_PORT},
        {"127.0.0.1:000080", NULL, ROUTER_ADDR_BAD_PORT},
        {"127.0.0.1:80 ", NULL, ROUTER_ADDR_BAD_PORT},
        {"uds://rel.sock", NULL, ROUTER_ADDR_BAD_PATH},
        {"/very/long/path/0123456789012345678901234567890123456789012345678901234567890123456789"
         "01234567890123456789.sock",
         NULL, ROUTER_ADDR_PATH_TOO_LONG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = router_addr_parse(cases[i].in, &a, &err);
        if (cases[i].out) {
            if (rc != 0)
                fail_msg("%s: refused (%s)", cases[i].in, router_addr_err_str(err));
            assert_int_equal(router_addr_format(&a, out, sizeof out), 0);
            assert_string_equal(out, cases[i].out);
        } else {
            if (rc != -1)
                fail_msg("%s: accepted", cases[i].in);
            assert_int_equal(err, cases[i].err);
            assert_int_equal(router_addr_family(&a), AF_UNSPEC);
        }
    }
    char huge[ROUTER_ADDR_TEXT_MAX + 2];
    memset(huge, '1', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    assert_int_equal(router_addr_parse(huge, &a, &err), -1);
    assert_int_equal(err, ROUTER_ADDR_EMPTY);
    assert_int_equal(router_addr_parse(NULL, &a, NULL), -1);
    assert_int_equal(router_addr_parse("[::1]:7", &a, NULL), 0);
    assert_int_equal(router_addr_port(&a), 7);
    assert_int_equal(router_addr_family(&a), AF_INET6);
    assert_int_equal(router_addr_format(&a, out, 4), -1); /* does not fit */
}

#define BOTH(f)                                                        \
    {#f "@uring", f, NULL, NULL, &s_uring}, {#f "@epoll", f, NULL, NULL, &s_epoll}

/* ------------------------------------------------------------ fairness */

/* Turns (loop.h, "Fairness"): a connection whose peer has sent a lot must
 * not make another wait until all of it is parsed. A has 150 KiB queued
 * before B's 5 bytes, both before the loop runs: B's bytes must reach
 * on_data while most of A's are still to come (before turns, io_uring
 * handed A's whole backlog over first), and all of A's arrive, in order. */
#define FAIR_A_BYTES (150u * 1024u)

typedef struct {
    size_t a_got;        /* bytes A delivered so far */
    size_t a_at_b;       /* ...when B's bytes arrived (SIZE_MAX: not yet) */
    bool a_in_order;     /* A's bytes came in the order sent */
    router_conn_t *a, *b;
} s_fair_t;

static void s_fair_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    s_fair_t *f = ctx->extra;
    if (c == f->a) {
        for (size_t i = 0; i < len; i++)
            if (data[i] != (uint8_t) ((f->a_got + i) * 7u))
                f->a_in_order = false;
        f->a_got += len;
    } else if (c == f->b && f->a_at_b == SIZE_MAX) {
        f->a_at_b = f->a_got;
    }
    if (f->a_got == FAIR_A_BYTES && f->a_at_b != SIZE_MAX)
        router_loop_stop(ctx->loop);
}

static void s_fair_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    (void) c;
    (void) reason;
    (void) ud;
}

static const router_conn_handlers_t s_fair_handlers = {
    .on_data = s_fair_data,
    .on_close = s_fair_close,
};

static void test_turns_between_connections(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_fair_t f = {.a_at_b = SIZE_MAX, .a_in_order = true};
    ctx.extra = &f;
    int a[2], b[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    int big = 1 << 20;
    (void) setsockopt(a[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    (void) setsockopt(a[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    uint8_t *blob = malloc(FAIR_A_BYTES);
    assert_non_null(blob);
    for (size_t i = 0; i < FAIR_A_BYTES; i++)
        blob[i] = (uint8_t) (i * 7u);
    assert_int_equal(s_send_all(a[1], blob, FAIR_A_BYTES), 0);
    assert_int_equal(s_send_all(b[1], "hello", 5), 0);
    f.a = router_loop_adopt(ctx.loop, a[0], &s_fair_handlers, &ctx);
    f.b = router_loop_adopt(ctx.loop, b[0], &s_fair_handlers, &ctx);
    assert_non_null(f.a);
    assert_non_null(f.b);
    s_run(&ctx);
    assert_false(ctx.hung);
    assert_int_equal(f.a_got, FAIR_A_BYTES);
    assert_true(f.a_in_order);
    assert_true(f.a_at_b != SIZE_MAX);
    if (f.a_at_b > FAIR_A_BYTES / 2)
        fail_msg("B waited until A had delivered %zu of %u bytes", f.a_at_b, FAIR_A_BYTES);
    free(blob);
    close(a[1]);
    close(b[1]);
    s_done(&ctx);
}

/* An answer does not wait for parked input's turn: B's request is
 * answered in the batch that read it, and the answer has left (its bytes
 * are readable at B's peer) before A, which has input parked, gets its next
 * turn. Before, the answer was submitted only at the next wait, after that
 * turn (a GET /health behind a flood of event lines, issue 13). */
typedef struct {
    router_conn_t *a, *b;
    int b_peer;           /* the test's end of B */
    size_t a_got;
    bool answered;        /* B's answer was queued */
    int checked;          /* A's turns after that: 1 = the next one looked */
    bool arrived;         /* ...and found the answer at B's peer */
} s_answer_t;

static void s_answer_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) data;
    s_ctx_t *ctx = ud;
    s_answer_t *f = ctx->extra;
    if (c == f->b && !f->answered) {
        assert_int_equal(router_conn_send(c, "pong", 4), 0);
        f->answered = true;
    } else if (c == f->a) {
        /* B's request comes while A has input parked for its turns. */
        if (f->a_got == 0)
            assert_int_equal(s_send_all(f->b_peer, "ping", 4), 0);
        f->a_got += len;
        if (f->answered && f->checked++ == 0) {
            char buf[8];
            f->arrived = recv(f->b_peer, buf, sizeof buf, MSG_DONTWAIT) == 4;
        }
    }
    if (f->a_got == FAIR_A_BYTES && f->checked)
        router_loop_stop(ctx->loop);
}

static const router_conn_handlers_t s_answer_handlers = {
    .on_data = s_answer_data,
    .on_close = s_fair_close,
};

static void test_answer_before_parked_turn(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    int a[2], b[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    s_answer_t f = {.b_peer = b[1]};
    ctx.extra = &f;
    int big = 1 << 20;
    (void) setsockopt(a[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    (void) setsockopt(a[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    uint8_t *blob = calloc(1, FAIR_A_BYTES);
    assert_non_null(blob);
    assert_int_equal(s_send_all(a[1], blob, FAIR_A_BYTES), 0);
    f.a = router_loop_adopt(ctx.loop, a[0], &s_answer_handlers, &ctx);
    f.b = router_loop_adopt(ctx.loop, b[0], &s_answer_handlers, &ctx);
    assert_non_null(f.a);
    assert_non_null(f.b);
    router_conn_set_turn_bytes(f.a, 1024); /* most of A stays parked */
    s_run(&ctx);
    assert_false(ctx.hung);
    assert_int_equal(f.a_got, FAIR_A_BYTES);
    assert_true(f.answered);
    assert_true(f.checked > 0);
    assert_true(f.arrived);
    free(blob);
    close(a[1]);
    close(b[1]);
    s_done(&ctx);
}

/* ------------------------------------------------------------ accept failures */

/* The process is out of descriptors (EMFILE): the listener counts each
 * failed accept, pauses and retries, and once descriptors are free again
 * the connections that waited in the backlog are accepted. */
#define EMFILE_CLIENTS 3
#define EMFILE_FAILURES 12 /* past S_ACCEPT_LOG_MS of retries: one summary line */

typedef struct {
    int fillers[4096]; /* descriptors held to use every number below the limit */
    int nfillers;
    struct rlimit saved;
    bool restored;
} s_emfile_t;

static void s_emfile_restore(s_emfile_t *e)
{
    if (e->restored)
        return;
    e->restored = true;
    for (int i = 0; i < e->nfillers; i++)
        close(e->fillers[i]);
    e->nfillers = 0;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &e->saved), 0);
}

static void s_emfile_watch(router_loop_t *loop, uint64_t id, void *ud)
{
    s_ctx_t *ctx = ud;
    s_emfile_t *e = ctx->extra;
    (void) id;
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    if (!e->restored && st.accept_errors >= EMFILE_FAILURES) {
        if (ctx->accepted != 0)
            ctx->violations++; /* nothing can be accepted without a descriptor */
        s_emfile_restore(e);
    }
    if (e->restored && ctx->accepted == EMFILE_CLIENTS) {
        router_loop_stop(loop);
        return;
    }
    (void) router_loop_timer_add(loop, 10, s_emfile_watch, ctx);
}

static void test_accept_emfile_backs_off(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_echo);
    static s_emfile_t e;
    memset(&e, 0, sizeof e);
    ctx.extra = &e;
    int cl[EMFILE_CLIENTS];
    for (int i = 0; i < EMFILE_CLIENTS; i++) {
        cl[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(cl[i] >= 0);
    }
    /* Fill every free descriptor number below the highest one in use, then
     * make that the limit: the next descriptor the process asks for fails. */
    int top = -1;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        if (fd > cl[EMFILE_CLIENTS - 1]) { /* every number below it is in use */
            top = fd;
            close(fd);
            break;
        }
        assert_true(e.nfillers < (int) (sizeof e.fillers / sizeof e.fillers[0]));
        e.fillers[e.nfillers++] = fd;
    }
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &e.saved), 0);
    struct rlimit low = e.saved;
    low.rlim_cur = (rlim_t) top;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    assert_true(open("/dev/null", O_RDONLY) < 0 && errno == EMFILE);
    /* The kernel completes the handshakes; they wait in the backlog. */
    for (int i = 0; i < EMFILE_CLIENTS; i++)
        assert_int_equal(connect(cl[i], &ctx.addr.u.sa, ctx.addr.len), 0);
    (void) router_loop_timer_add(ctx.loop, 10, s_emfile_watch, &ctx);
    uint64_t guard = router_loop_timer_add(ctx.loop, HANG_GUARD_MS, s_guard, &ctx);
    assert_int_equal(router_loop_run(ctx.loop), 0);
    (void) router_loop_timer_cancel(ctx.loop, guard);
    s_emfile_restore(&e);
    assert_false(ctx.hung);
    assert_int_equal(ctx.violations, 0);
    assert_int_equal(ctx.accepted, EMFILE_CLIENTS);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_true(st.accept_errors >= EMFILE_FAILURES);
    /* Each accepted connection serves. */
    for (int i = 0; i < EMFILE_CLIENTS; i++)
        close(cl[i]);
    s_done(&ctx);
}

/* An accept callback that sets no handlers: the connection is aborted, the
 * listener keeps serving. */
static void s_accept_none(router_listener_t *l, router_conn_t *c, void *ud)
{
    s_ctx_t *ctx = ud;
    (void) l, (void) c;
    ctx->accepted++;
    if (ctx->accepted == 2)
        router_loop_stop(ctx->loop);
}

static void test_accept_without_handlers_aborts(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_none);
    int a = s_dial(&ctx.addr, 0), b = s_dial(&ctx.addr, 0);
    assert_true(a >= 0 && b >= 0);
    s_run(&ctx);
    assert_int_equal(ctx.accepted, 2);
    char buf[8];
    assert_true(recv(a, buf, sizeof buf, 0) <= 0); /* aborted: EOF or reset */
    assert_true(recv(b, buf, sizeof buf, 0) <= 0);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.conns_open, 0);
    close(a);
    close(b);
    s_done(&ctx);
}

/* ------------------------------------------------------------ failures midway */

/* The server side of these tests: keeps what arrives, notes the close's
 * error, stops the loop on the flag or a close. */
static void s_mid_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    ctx->conn = c;
    size_t k = len < sizeof ctx->got - ctx->got_len ? len : sizeof ctx->got - ctx->got_len;
    memcpy(ctx->got + ctx->got_len, data, k);
    ctx->got_len += k;
    atomic_store(&ctx->flag, true);
}

static void s_mid_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_ctx_t *ctx = ud;
    ctx->send_errno = router_conn_error(c);
    s_srv_close(c, reason, ud);
}

static const router_conn_handlers_t s_mid_handlers = {
    .on_data = s_mid_data,
    .on_close = s_mid_close,
};

static void s_accept_mid(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_mid_handlers, ud);
}

/* Runs loop iterations until the peer end `fd` reads EOF, and returns the
 * bytes it read before (the connection's fd is closed once the backend
 * lets go of it: not necessarily in the iteration that killed it). */
static size_t s_peer_eof(s_ctx_t *ctx, int fd)
{
    size_t got = 0;
    for (int i = 0; i < 100000; i++) {
        uint8_t buf[4096];
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0)
            return got;
        if (r > 0) {
            got += (size_t) r;
            continue;
        }
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
        assert_true(router_loop_timer_add(ctx->loop, 1, s_guard, ctx) != 0);
        assert_int_equal(router_loop_run(ctx->loop), 0);
        ctx->hung = false;
    }
    fail_msg("the peer never saw the connection close");
    return got;
}

/* Closes fd with a reset (RST), as a peer that crashed or was killed. */
static void s_reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    (void) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* A peer that sends half a frame, then vanishes (reset). */
static void s_vanish_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "\x00\x00\x01\x00half", 8) == 0);
    s_wait_flag(ctx); /* the server has the half frame */
    s_reset_close(fd);
}

/* A peer gone mid-frame is a socket error, not an orderly end: the
 * connection closes with ROUTER_CLOSE_ERROR (ECONNRESET) once, after the
 * bytes that did arrive were handed over, and nothing more. */
static void test_peer_vanishes_mid_frame(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_mid);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_vanish_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.closed, 1);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_ERROR);
    assert_int_equal(ctx.send_errno, ECONNRESET);
    assert_int_equal(ctx.got_len, 8);
    assert_memory_equal(ctx.got, "\x00\x00\x01\x00half", 8);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.conns_open, 0);
    s_done(&ctx);
}

/* Answers, then closes gracefully. */
static void s_bye_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) data;
    (void) len;
    (void) ud;
    if (router_conn_send(c, "bye", 3) == 0)
        router_conn_close(c);
}

static const router_conn_handlers_t s_bye_handlers = {
    .on_data = s_bye_data,
    .on_close = s_mid_close,
};

static void s_accept_bye(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    ((s_ctx_t *) ud)->accepted++;
    router_conn_set_handlers(c, &s_bye_handlers, ud);
}

/* Reads everything the server sent and its FIN, then resets instead of
 * answering with its own FIN. */
static void s_reset_after_fin_client(s_ctx_t *ctx, int idx)
{
    (void) idx;
    int fd = s_dial(&ctx->addr, 0);
    CHECK(ctx, fd >= 0);
    CHECK(ctx, s_send_all(fd, "hi", 2) == 0);
    char buf[16];
    ssize_t n = s_recv_eof(fd, buf, sizeof buf);
    s_reset_close(fd);
    CHECK(ctx, n == 3 && memcmp(buf, "bye", 3) == 0);
}

/* A graceful close whose queue was flushed and FIN sent ends as
 * ROUTER_CLOSE_LOCAL even when the peer then resets instead of closing in
 * turn: everything was delivered, so it is not an error. */
static void test_reset_after_graceful_close(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    s_listen(&ctx, "127.0.0.1:0", s_accept_bye);
    ctx.want_closed = 1;
    s_clients_start(&ctx, s_reset_after_fin_client, 1);
    s_run(&ctx);
    assert_int_equal(ctx.closed, 1);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_LOCAL);
    assert_int_equal(ctx.send_errno, 0);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.close_timeouts, 0);
    s_done(&ctx);
}

/* A graceful close whose peer never sends its FIN ends at close_timeout_ms
 * as ROUTER_CLOSE_LOCAL (everything was sent), not as a timeout. */
static void test_close_timeout_all_sent(void **state)
{
    s_ctx_t ctx;
    router_loop_opts_t o = {.close_timeout_ms = 20};
    s_loop_new(&ctx, state, &o);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &s_mid_handlers, &ctx);
    assert_non_null(c);
    assert_int_equal(router_conn_send(c, "last", 4), 0);
    router_conn_close(c);
    assert_int_equal(router_conn_send(c, "more", 4), -1);
    assert_int_equal(errno, EPIPE);
    ctx.want_closed = 1;
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_LOCAL);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.close_timeouts, 0);
    char buf[8];
    assert_int_equal(s_recv_eof(sv[1], buf, sizeof buf), 4);
    assert_memory_equal(buf, "last", 4);
    close(sv[1]);
    s_done(&ctx);
}

static void s_stop_on_drain(router_conn_t *c, void *ud)
{
    (void) c;
    router_loop_stop(((s_ctx_t *) ud)->loop);
}

/* A frame in two pieces (a header and its body) with each allocation of
 * the send queue failing in turn: the send refuses with ENOMEM and the
 * connection is cut (ROUTER_CLOSE_ERROR), so the peer never reads a
 * partial frame; once no allocation fails the whole frame arrives. */
static void test_sendv_without_memory(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    router_conn_handlers_t h = s_mid_handlers;
    h.on_drain = s_stop_on_drain;
    static uint8_t body[3000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (uint8_t) i;
    struct iovec iov[2] = {{.iov_base = "head", .iov_len = 4},
                           {.iov_base = body, .iov_len = sizeof body}};
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &h, &ctx);
        assert_non_null(c);
        errno = 0;
        alloc_fail_arm(i);
        int rc = router_conn_sendv(c, iov, 2);
        int e = errno;
        bool failed = alloc_fail_disarm() > 0;
        uint8_t buf[4096];
        if (failed) {
            assert_int_equal(rc, -1);
            assert_int_equal(e, ENOMEM);
            assert_int_equal(router_conn_send(c, "x", 1), -1); /* cut already */
            ctx.want_closed = ctx.closed + 1;
            s_run(&ctx);
            assert_int_equal(ctx.reasons[ctx.closed - 1], ROUTER_CLOSE_ERROR);
            assert_int_equal(ctx.send_errno, ENOMEM);
            assert_int_equal(s_peer_eof(&ctx, sv[1]), 0); /* not a byte */
            close(sv[1]);
            refused++;
            continue;
        }
        assert_int_equal(rc, 0);
        s_run(&ctx); /* until the queue drained */
        assert_int_equal(s_recv_exact(sv[1], buf, 4 + sizeof body), 0);
        assert_memory_equal(buf, "head", 4);
        assert_memory_equal(buf + 4, body, sizeof body);
        router_conn_abort(c);
        ctx.want_closed = ctx.closed + 1;
        s_run(&ctx);
        assert_int_equal(ctx.reasons[ctx.closed - 1], ROUTER_CLOSE_ABORT);
        close(sv[1]);
        break;
    }
    assert_true(refused >= 2); /* the header's block and the body's */
    s_done(&ctx);
}

/* Out of memory for input held past the connection's turn: it cannot be
 * kept and must not be handed over twice or lost silently, so the
 * connection is cut (ROUTER_CLOSE_ERROR, ENOMEM) after the bytes of its
 * turn. */
static void s_park_oom_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_mid_data(c, data, len, ud);
    alloc_fail_arm(0); /* the next allocation: the parking of the rest */
}

static void test_park_without_memory(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    router_conn_handlers_t h = {.on_data = s_park_oom_data, .on_close = s_mid_close};
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &h, &ctx);
    assert_non_null(c);
    router_conn_set_turn_bytes(c, 1);
    assert_int_equal(s_send_all(sv[1], "0123456789", 10), 0);
    ctx.want_closed = 1;
    s_run(&ctx);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(ctx.closed, 1);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_ERROR);
    assert_int_equal(ctx.send_errno, ENOMEM);
    assert_int_equal(ctx.got_len, 1);
    assert_int_equal(ctx.got[0], '0');
    close(sv[1]);
    s_done(&ctx);
}

/* router_conn_disown: the owner's handlers are never called again, and the
 * connection is reset. */
static void test_disown(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &s_mid_handlers, &ctx);
    assert_non_null(c);
    assert_int_equal(router_conn_send(c, "unsent", 6), 0);
    router_conn_disown(c);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.conns_open, 0);
    assert_int_equal(s_peer_eof(&ctx, sv[1]), 0); /* queued data discarded */
    assert_int_equal(ctx.closed, 0);
    close(sv[1]);
    s_done(&ctx);
}

/* Bad arguments and the edges of the API answer without touching a
 * connection; a total that overflows is over any limit (the cut). */
static void test_send_arguments(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    errno = 0;
    assert_int_equal(router_conn_sendv(NULL, NULL, 0), -1);
    assert_int_equal(errno, EINVAL);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &s_mid_handlers, &ctx);
    assert_non_null(c);
    errno = 0;
    assert_int_equal(router_conn_sendv(c, NULL, 1), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(router_conn_sendv(c, (struct iovec[1]){{0}}, -1), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_conn_sendv(c, NULL, 0), 0); /* nothing to send */
    static uint8_t one;
    struct iovec huge[2] = {{.iov_base = &one, .iov_len = SIZE_MAX / 2 + 1},
                            {.iov_base = &one, .iov_len = SIZE_MAX / 2 + 1}};
    errno = 0;
    assert_int_equal(router_conn_sendv(c, huge, 2), -1);
    assert_int_equal(errno, ENOBUFS);
    assert_int_equal(router_conn_fd(c), -1); /* cut */
    ctx.want_closed = 1;
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_SLOW_CONSUMER);
    close(sv[1]);
    /* adopt of a descriptor that is not open: refused with its errno. */
    int dead = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(dead >= 0);
    close(dead);
    errno = 0;
    assert_null(router_loop_adopt(ctx.loop, dead, &s_mid_handlers, &ctx));
    assert_int_equal(errno, EBADF);
    /* The accessors take NULL. */
    assert_int_equal(router_conn_id(NULL), 0);
    assert_null(router_conn_peer(NULL));
    assert_null(router_conn_userdata(NULL));
    assert_int_equal(router_conn_error(NULL), 0);
    static const char *const names[] = {"?", "eof", "local", "abort", "error", "slow_consumer",
                                        "timeout", "connect_failed", "shutdown", "deadline"};
    for (int r = ROUTER_CLOSE_EOF; r <= ROUTER_CLOSE_DEADLINE; r++)
        assert_string_equal(router_close_reason_str((router_close_reason_t) r), names[r]);
    assert_string_equal(router_close_reason_str((router_close_reason_t) 99), "unknown");
    s_done(&ctx);
}

static void s_noop_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id, (void) ud;
}

/* Without a timer slot left (max_timers pending), a graceful close cannot
 * be bounded, so it ends at once: as a timeout with data unsent, as a
 * local close without; and a deadline that could not arm the sweep is
 * armed by the next router_conn_set_deadline, an earlier one moving the
 * sweep forward. */
static void test_no_timer_slot(void **state)
{
    s_ctx_t ctx;
    router_loop_opts_t o = {.max_timers = 8};
    s_loop_new(&ctx, state, &o);
    router_conn_t *c[4];
    int peer[4];
    for (int i = 0; i < 4; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        c[i] = router_loop_adopt(ctx.loop, sv[0], &s_mid_handlers, &ctx);
        assert_non_null(c[i]);
        peer[i] = sv[1];
    }
    uint64_t fill[8];
    int nfill = 0;
    while (nfill < 8 && (fill[nfill] = router_loop_timer_add(ctx.loop, 60000, s_noop_timer, NULL)))
        nfill++;
    assert_true(nfill > 0 && nfill < 8 + 1);
    assert_int_equal(router_loop_timer_add(ctx.loop, 60000, s_noop_timer, NULL), 0);
    assert_int_equal(errno, ENOSPC);
    assert_int_equal(router_conn_send(c[0], "unsent", 6), 0);
    router_conn_close(c[0]);
    router_conn_close(c[1]);
    assert_int_equal(router_conn_fd(c[0]), -1); /* ended at once */
    assert_int_equal(router_conn_fd(c[1]), -1);
    uint64_t now = router_loop_now_ms(ctx.loop);
    router_conn_set_deadline(c[2], now + 1); /* no sweep: nothing would cut it */
    for (int i = 0; i < nfill; i++)
        assert_int_equal(router_loop_timer_cancel(ctx.loop, fill[i]), 0);
    router_conn_set_deadline(c[2], now + 60000); /* armed now */
    router_conn_set_deadline(c[3], now + 1);     /* earlier: the sweep moves */
    ctx.want_closed = 3;
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_TIMEOUT);
    assert_int_equal(ctx.reasons[1], ROUTER_CLOSE_LOCAL);
    assert_int_equal(ctx.reasons[2], ROUTER_CLOSE_DEADLINE);
    assert_true(router_conn_fd(c[2]) >= 0); /* its deadline is a minute away */
    router_conn_abort(c[2]);
    ctx.want_closed = 4;
    s_run(&ctx);
    assert_int_equal(ctx.reasons[3], ROUTER_CLOSE_ABORT);
    for (int i = 0; i < 4; i++)
        close(peer[i]);
    s_done(&ctx);
}

/* Without a timer slot of its own, a graceful close is bounded by the
 * loop's deadline sweep instead of ending at once: what was written still
 * reaches the peer, then its FIN, and a peer that never closes its side
 * is let go at close_timeout_ms, as with the close's own timer. */
static void test_close_bounded_by_sweep(void **state)
{
    s_ctx_t ctx;
    router_loop_opts_t o = {.max_timers = 8, .close_timeout_ms = 20};
    s_loop_new(&ctx, state, &o);
    router_conn_t *c[3];
    int peer[3];
    for (int i = 0; i < 3; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        c[i] = router_loop_adopt(ctx.loop, sv[0], &s_mid_handlers, &ctx);
        assert_non_null(c[i]);
        peer[i] = sv[1];
    }
    router_conn_set_deadline(c[2], router_loop_now_ms(ctx.loop) + 600000); /* arms the sweep */
    uint64_t fill[8];
    int nfill = 0;
    while (nfill < 8 && (fill[nfill] = router_loop_timer_add(ctx.loop, 60000, s_noop_timer, NULL)))
        nfill++;
    assert_true(nfill > 0);
    assert_int_equal(router_loop_timer_add(ctx.loop, 60000, s_noop_timer, NULL), 0);
    assert_int_equal(router_conn_send(c[0], "answer", 6), 0);
    router_conn_close(c[0]);
    router_conn_close(c[1]);
    assert_true(router_conn_fd(c[0]) >= 0); /* not ended at once */
    assert_true(router_conn_fd(c[1]) >= 0);
    assert_int_equal(router_loop_timer_cancel(ctx.loop, fill[--nfill]), 0); /* s_run's guard */
    ctx.want_closed = 2;
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_LOCAL);
    assert_int_equal(ctx.reasons[1], ROUTER_CLOSE_LOCAL);
    char buf[16];
    assert_int_equal(recv(peer[0], buf, sizeof buf, 0), 6);
    assert_memory_equal(buf, "answer", 6);
    assert_int_equal(recv(peer[0], buf, sizeof buf, 0), 0); /* then its FIN */
    assert_int_equal(recv(peer[1], buf, sizeof buf, 0), 0);
    assert_true(router_conn_fd(c[2]) >= 0); /* an open one keeps its own deadline */
    router_conn_abort(c[2]);
    for (int i = 0; i < nfill; i++)
        assert_int_equal(router_loop_timer_cancel(ctx.loop, fill[i]), 0);
    ctx.want_closed = 3;
    s_run(&ctx);
    assert_int_equal(ctx.reasons[2], ROUTER_CLOSE_ABORT);
    for (int i = 0; i < 3; i++)
        close(peer[i]);
    s_done(&ctx);
}

/* A connection aborted while its input waits parked for its next turn
 * leaves the loop's backlog with it (ASan: no use after free). */
static void s_backlog_abort(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id;
    s_ctx_t *ctx = ud;
    if (ctx->conn)
        router_conn_abort(ctx->conn);
}

static void s_backlog_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    s_ctx_t *ctx = ud;
    if (ctx->got_len == 0)
        assert_true(router_loop_timer_add(ctx->loop, 0, s_backlog_abort, ctx) != 0);
    s_mid_data(c, data, len, ud);
}

static void test_abort_while_parked(void **state)
{
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    router_conn_handlers_t h = {.on_data = s_backlog_data, .on_close = s_mid_close};
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &h, &ctx);
    assert_non_null(c);
    router_conn_set_turn_bytes(c, 1);
    static const char many[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    assert_int_equal(s_send_all(sv[1], many, sizeof many - 1), 0);
    ctx.want_closed = 1;
    s_run(&ctx);
    assert_int_equal(ctx.reasons[0], ROUTER_CLOSE_ABORT);
    assert_true(ctx.got_len >= 1 && ctx.got_len < sizeof many - 1);
    assert_memory_equal(ctx.got, many, ctx.got_len);
    close(sv[1]);
    s_done(&ctx);
}

/* ------------------------------------------------------------ shared buffers */

/* One buffer in many send queues (router_conn_send_shared): counted once
 * in the loop's unsent total while any queue holds it, in full in each
 * connection's own count. The peer of a memory loop keeps what each
 * connection wrote, to check it byte for byte. */
#define SHARED_CONNS 3

typedef struct {
    router_conn_t *c[SHARED_CONNS];     /* the connections */
    uint8_t *out[SHARED_CONNS];         /* what each wrote */
    size_t out_len[SHARED_CONNS];       /* ...how much */
    size_t out_cap;                     /* each out's allocation */
    unsigned closed[SHARED_CONNS];      /* on_close calls */
    router_close_reason_t reason[SHARED_CONNS]; /* ...the last reason */
} s_fan_t;

static int s_fan_index(const s_fan_t *f, const router_conn_t *c)
{
    for (int i = 0; i < SHARED_CONNS; i++)
        if (f->c[i] == c)
            return i;
    return -1;
}

static void s_fan_output(router_conn_t *c, const uint8_t *d, size_t n, void *ud)
{
    s_fan_t *f = ud;
    int i = s_fan_index(f, c);
    if (i < 0 || n > f->out_cap - f->out_len[i])
        return; /* caught by the length checks */
    memcpy(f->out[i] + f->out_len[i], d, n);
    f->out_len[i] += n;
}

static void s_fan_close(router_conn_t *c, router_close_reason_t r, void *ud)
{
    s_fan_t *f = ud;
    int i = s_fan_index(f, c);
    if (i < 0)
        return;
    f->closed[i]++;
    f->reason[i] = r;
}

static const router_conn_handlers_t s_fan_handlers = {.on_data = s_share_data,
                                                      .on_close = s_fan_close};

static router_shared_buf_t *s_shared_pattern(size_t len, unsigned seed)
{
    router_shared_buf_t *sb = router_shared_buf_new(len);
    assert_non_null(sb);
    uint8_t *p = router_shared_buf_data(sb);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t) (i * 13 + i / 509 + seed);
    return sb;
}

static router_loop_t *s_fan_loop(s_fan_t *f, size_t limit, size_t total_limit, size_t window)
{
    router_loop_t *loop = router_loop_new(&(router_loop_opts_t){
        .backend = ROUTER_LOOP_MEMORY, .send_limit = limit, .send_total_limit = total_limit});
    assert_non_null(loop);
    memset(f, 0, sizeof *f);
    f->out_cap = 4 * limit;
    const router_mem_peer_t mp = {.on_output = s_fan_output};
    assert_int_equal(router_mem_peer_set(loop, &mp, f, window), 0);
    for (int i = 0; i < SHARED_CONNS; i++) {
        f->c[i] = router_mem_conn_new(loop);
        assert_non_null(f->c[i]);
        router_conn_set_handlers(f->c[i], &s_fan_handlers, f);
        f->out[i] = malloc(f->out_cap);
        assert_non_null(f->out[i]);
    }
    return loop;
}

static void s_fan_free(s_fan_t *f)
{
    for (int i = 0; i < SHARED_CONNS; i++)
        free(f->out[i]);
}

static size_t s_unsent_total(router_loop_t *loop)
{
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    return st.unsent_total;
}

/* Three connections hold one 600 KiB buffer under a 1 MiB bound on all of
 * them: counted once, so none is cut (with a copy each, 1.8 MiB, the
 * second and third were cut by their share); a partly sent buffer stays
 * counted until the last queue lets go; a connection's own limit still
 * cuts (the same buffer twice on one is 1.2 MiB of its 1 MiB); a new
 * buffer that would take the total past the bound is held to the share;
 * and the buffer is freed with the last reference (LSan checks). */
static void test_shared_counted_once(void **state)
{
    (void) state;
    const size_t k = 1024, len = 600 * k;
    s_fan_t f;
    router_loop_t *loop = s_fan_loop(&f, 1024 * k, 1024 * k, 100 * k);
    /* A window per iteration: the buffer goes out in pieces. */
    router_shared_buf_t *sb = s_shared_pattern(len, 1);
    for (int i = 0; i < SHARED_CONNS; i++) {
        assert_true(router_conn_send_shared_fits(f.c[i], sb, 256));
        assert_int_equal(router_conn_send_shared(f.c[i], sb), 0);
        assert_int_equal(router_conn_send_queued(f.c[i]), len);
        assert_ptr_equal(router_shared_buf_holder(sb), loop);
    }
    assert_int_equal(s_unsent_total(loop), len);
    assert_int_equal(router_conn_send(f.c[0], "tail", 4), 0);
    assert_int_equal(s_unsent_total(loop), len + 4);
    assert_int_equal(router_conn_send_queued(f.c[0]), len + 4);
    /* The room a copy may take is unchanged by the sharing: 424 KiB - 4
     * below the bound, or the share (341 KiB) less what c[2] holds. */
    assert_int_equal(router_conn_send_room(f.c[2]), 424 * k - 4);
    /* A second, different buffer would take the total past the bound:
     * c[0] may hold only its share, a third of it. */
    router_shared_buf_t *other = s_shared_pattern(len, 2);
    assert_false(router_conn_send_shared_fits(f.c[0], other, 0));
    errno = 0;
    assert_int_equal(router_conn_send_shared(f.c[0], other), -1);
    assert_int_equal(errno, ENOBUFS);
    assert_null(router_shared_buf_holder(other));
    router_shared_buf_destroy(&other);
    assert_null(other);
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    assert_int_equal(st.unsent_total_cuts, 1);
    /* The same buffer again on c[1]: nothing new for the total, but 1.2
     * MiB for c[1]'s own 1 MiB: cut by its limit, not by the share. */
    assert_false(router_conn_send_shared_fits(f.c[1], sb, 0));
    assert_int_equal(router_conn_send_shared(f.c[1], sb), -1);
    assert_int_equal(errno, ENOBUFS);
    router_loop_stats(loop, &st);
    assert_int_equal(st.slow_consumer_cuts, 2);
    assert_int_equal(st.unsent_total_cuts, 1);
    /* One iteration: the cut ones are freed (c[0]'s copied tail leaves the
     * total), c[2] sends a window of the buffer, which stays counted. */
    (void) router_mem_run(loop, 1);
    assert_int_equal(f.closed[0] + f.closed[1], 2);
    assert_int_equal(f.reason[0], ROUTER_CLOSE_SLOW_CONSUMER);
    assert_int_equal(f.reason[1], ROUTER_CLOSE_SLOW_CONSUMER);
    assert_true(f.out_len[2] >= 100 * k && f.out_len[2] < len);
    assert_int_equal(router_conn_send_queued(f.c[2]), len - f.out_len[2]);
    assert_int_equal(s_unsent_total(loop), len);
    assert_ptr_equal(router_shared_buf_holder(sb), loop);
    (void) router_mem_run(loop, 0);
    assert_int_equal(s_unsent_total(loop), 0);
    assert_null(router_shared_buf_holder(sb));
    assert_int_equal(f.out_len[2], len);
    assert_memory_equal(f.out[2], router_shared_buf_data(sb), len);
    /* Queued again after all of it went, then the caller lets go: the
     * queue's reference keeps it until the loop frees the connection. */
    assert_int_equal(router_conn_send_shared(f.c[2], sb), 0);
    assert_int_equal(s_unsent_total(loop), len);
    router_shared_buf_destroy(&sb);
    router_loop_destroy(&loop);
    assert_int_equal(f.closed[2], 1);
    s_fan_free(&f);
}

/* A buffer interleaved with copies, twice on one connection, while the
 * peer reads odd-sized windows: every connection writes exactly its own
 * stream, in order, and the total counts the buffer once throughout. */
static void test_shared_partial_sends_in_order(void **state)
{
    (void) state;
    const size_t k = 1024, len = 70 * k + 3;
    s_fan_t f;
    router_loop_t *loop = s_fan_loop(&f, 1024 * k, 1024 * k, 7777);
    router_shared_buf_t *sb = s_shared_pattern(len, 3);
    uint8_t head[100];
    memset(head, 'h', sizeof head);
    for (int i = 0; i < SHARED_CONNS; i++) {
        assert_int_equal(router_conn_send(f.c[i], head, sizeof head), 0);
        assert_int_equal(router_conn_send_shared(f.c[i], sb), 0);
        assert_int_equal(router_conn_send(f.c[i], "mid", 3), 0);
        if (i == 0)
            assert_int_equal(router_conn_send_shared(f.c[i], sb), 0);
        assert_int_equal(router_conn_send(f.c[i], "end", 3), 0);
    }
    assert_int_equal(s_unsent_total(loop), len + SHARED_CONNS * (sizeof head + 6));
    unsigned iters = 0;
    while (s_unsent_total(loop) > 0) {
        assert_true(iters++ < 1000);
        (void) router_mem_run(loop, 1);
        size_t queued = 0;
        for (int i = 0; i < SHARED_CONNS; i++)
            queued += router_conn_send_queued(f.c[i]);
        /* While a connection holds the buffer it is counted whole (however
         * much of it went), and once: the total is at most one buffer and
         * the copies (100 + 6 bytes per connection). */
        if (router_shared_buf_holder(sb))
            assert_true(s_unsent_total(loop) >= len &&
                        s_unsent_total(loop) <= len + SHARED_CONNS * (sizeof head + 6));
        else
            assert_true(s_unsent_total(loop) == queued && queued <= SHARED_CONNS * 6);
    }
    const uint8_t *p = router_shared_buf_data(sb);
    for (int i = 0; i < SHARED_CONNS; i++) {
        size_t want = sizeof head + len + 3 + (i == 0 ? len : 0) + 3;
        assert_int_equal(f.out_len[i], want);
        const uint8_t *o = f.out[i];
        assert_memory_equal(o, head, sizeof head);
        o += sizeof head;
        assert_memory_equal(o, p, len);
        o += len;
        assert_memory_equal(o, "mid", 3);
        o += 3;
        if (i == 0) {
            assert_memory_equal(o, p, len);
            o += len;
        }
        assert_memory_equal(o, "end", 3);
    }
    assert_null(router_shared_buf_holder(sb));
    router_shared_buf_destroy(&sb);
    router_loop_destroy(&loop);
    s_fan_free(&f);
}

/* A connection that dies holding the buffer lets go of it when the loop
 * frees it; with the last holder gone the total is 0 again. A buffer held
 * by another loop's queues is refused (EINVAL) without harm to the
 * connection: that loop's thread may be sending from it. */
static void test_shared_released_by_dead_and_other_loop(void **state)
{
    (void) state;
    const size_t k = 1024, len = 64 * k;
    s_fan_t f, g;
    router_loop_t *loop = s_fan_loop(&f, 1024 * k, 1024 * k, 0);
    router_loop_t *loop2 = s_fan_loop(&g, 1024 * k, 1024 * k, 0);
    router_shared_buf_t *sb = s_shared_pattern(len, 4);
    assert_int_equal(router_conn_send_shared(f.c[0], sb), 0);
    assert_int_equal(router_conn_send_shared(f.c[1], sb), 0);
    errno = 0;
    assert_int_equal(router_conn_send_shared(g.c[0], sb), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_conn_send_queued(g.c[0]), 0);
    assert_true(router_conn_send_room(g.c[0]) > 0); /* still open */
    assert_int_equal(s_unsent_total(loop2), 0);
    assert_int_equal(router_conn_send_shared(NULL, sb), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_conn_send_shared(f.c[2], NULL), -1);
    assert_int_equal(errno, EINVAL);
    router_conn_abort(f.c[0]);
    assert_int_equal(router_conn_send_shared(f.c[0], sb), -1); /* dead */
    assert_int_equal(errno, EPIPE);
    assert_false(router_conn_send_shared_fits(f.c[0], sb, 0));
    router_conn_abort(f.c[1]);
    assert_int_equal(s_unsent_total(loop), len); /* until the loop frees them */
    (void) router_mem_run(loop, 1);
    assert_int_equal(f.closed[0] + f.closed[1], 2);
    assert_int_equal(f.out_len[0] + f.out_len[1], 0);
    assert_int_equal(s_unsent_total(loop), 0);
    assert_null(router_shared_buf_holder(sb));
    /* Now no loop holds it: the other loop may. */
    assert_int_equal(router_conn_send_shared(g.c[0], sb), 0);
    (void) router_mem_run(loop2, 0);
    assert_int_equal(g.out_len[0], len);
    assert_int_equal(s_unsent_total(loop2), 0);
    router_shared_buf_destroy(&sb);
    router_shared_buf_destroy(&sb); /* idempotent */
    router_shared_buf_destroy(NULL);
    errno = 0;
    assert_null(router_shared_buf_new(0));
    assert_int_equal(errno, EINVAL);
    router_loop_destroy(&loop);
    router_loop_destroy(&loop2);
    s_fan_free(&f);
    s_fan_free(&g);
}

/* Out of memory for the queue block that would reference the buffer:
 * nothing is queued or counted, the buffer keeps only the caller's
 * reference, and the connection is cut (ROUTER_CLOSE_ERROR, ENOMEM), since
 * its stream now misses a piece; the other holders go on. */
static void test_shared_without_memory(void **state)
{
    (void) state;
    const size_t k = 1024, len = 32 * k;
    s_fan_t f;
    router_loop_t *loop = s_fan_loop(&f, 1024 * k, 1024 * k, 0);
    router_shared_buf_t *sb = s_shared_pattern(len, 5);
    assert_int_equal(router_conn_send_shared(f.c[0], sb), 0);
    errno = 0;
    alloc_fail_arm(0);
    int rc = router_conn_send_shared(f.c[1], sb);
    int e = errno;
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_int_equal(e, ENOMEM);
    assert_int_equal(router_conn_send_queued(f.c[1]), 0);
    assert_int_equal(s_unsent_total(loop), len);
    assert_int_equal(router_conn_send_room(f.c[1]), 0); /* cut */
    alloc_fail_arm(0);
    errno = 0;
    router_shared_buf_t *none = router_shared_buf_new(len);
    e = errno;
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_null(none);
    assert_int_equal(e, ENOMEM);
    (void) router_mem_run(loop, 0);
    assert_int_equal(f.closed[1], 1);
    assert_int_equal(f.reason[1], ROUTER_CLOSE_ERROR);
    assert_int_equal(f.out_len[0], len);
    assert_int_equal(f.closed[0], 0);
    assert_int_equal(s_unsent_total(loop), 0);
    router_shared_buf_destroy(&sb);
    router_loop_destroy(&loop);
    s_fan_free(&f);
}

/* On the real backends: a buffer far larger than a socket's buffers goes
 * to three sockets in many partial sends (interleaved with copies, twice
 * on one), each peer reading slowly in odd-sized pieces; the streams
 * arrive whole and in order. Queued before the loop runs, all of it is
 * unsent at once: with 1 MiB of bound, three copies (1.8 MiB) were cut,
 * one shared buffer is not. */
typedef struct {
    int peer[SHARED_CONNS];           /* the clients' ends */
    const uint8_t *bytes;             /* the buffer's bytes */
    size_t len;                       /* ...and length */
} s_fan_sock_t;

static void s_fan_client(s_ctx_t *ctx, int idx)
{
    s_fan_sock_t *fs = ctx->extra;
    int fd = fs->peer[idx];
    size_t want = 5 + fs->len + 3 + (idx == 0 ? fs->len : 0);
    uint8_t *in = malloc(want);
    CHECK(ctx, in);
    size_t got = 0;
    while (got < want) {
        size_t n = want - got < 3001 ? want - got : 3001;
        ssize_t r = recv(fd, in + got, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t) r;
    }
    bool ok = got == want && memcmp(in, "head", 5) == 0 &&
              memcmp(in + 5, fs->bytes, fs->len) == 0 &&
              memcmp(in + 5 + fs->len, "end", 3) == 0 &&
              (idx != 0 || memcmp(in + 8 + fs->len, fs->bytes, fs->len) == 0);
    free(in);
    close(fd); /* our EOF: the server closes in turn */
    CHECK(ctx, ok);
}

static void test_shared_partial_sends_sockets(void **state)
{
    const size_t k = 1024, len = 600 * k;
    s_ctx_t ctx;
    s_loop_new(&ctx, state, &(router_loop_opts_t){.send_total_limit = 1024 * k});
    router_shared_buf_t *sb = s_shared_pattern(len, 6);
    uint8_t *copy = malloc(len); /* the clients' reference: sb goes with its last holder */
    assert_non_null(copy);
    memcpy(copy, router_shared_buf_data(sb), len);
    s_fan_sock_t fs = {.bytes = copy, .len = len};
    router_conn_t *c[SHARED_CONNS];
    for (int i = 0; i < SHARED_CONNS; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        fs.peer[i] = sv[1];
        c[i] = router_loop_adopt(ctx.loop, sv[0], &s_mid_handlers, &ctx);
        assert_non_null(c[i]);
        assert_int_equal(router_conn_send(c[i], "head", 5), 0);
        assert_int_equal(router_conn_send_shared(c[i], sb), 0);
        assert_int_equal(router_conn_send(c[i], "end", 3), 0);
        if (i == 0)
            assert_int_equal(router_conn_send_shared(c[i], sb), 0);
    }
    assert_int_equal(s_unsent_total(ctx.loop), len + SHARED_CONNS * 8);
    router_shared_buf_destroy(&sb); /* the queues hold it now */
    ctx.extra = &fs;
    ctx.want_closed = SHARED_CONNS;
    s_clients_start(&ctx, s_fan_client, SHARED_CONNS);
    s_run(&ctx);
    for (int i = 0; i < SHARED_CONNS; i++)
        assert_int_equal(ctx.reasons[i], ROUTER_CLOSE_EOF);
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.slow_consumer_cuts, 0);
    assert_int_equal(st.bytes_out, SHARED_CONNS * (len + 8) + len);
    assert_int_equal(st.unsent_total, 0);
    free(copy);
    s_done(&ctx);
}

/* Many small shared frames queued on one connection (an SSE burst to a
 * subscriber) leave in a few sends, not one per 16 frames: a send takes up
 * to ROUTER_CONN_IOV_BIG pieces. Every byte arrives, in order; and on
 * io_uring a send whose list of pieces finds no memory goes out 16 pieces
 * at a time. */
static bool s_all_sent(void *ud)
{
    return s_unsent_total(ud) == 0;
}

static void s_many_small_shared(void **state, bool no_memory)
{
    enum { N = 300, LEN = 7 };
    s_ctx_t ctx;
    s_loop_new(&ctx, state, NULL);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    router_conn_t *c = router_loop_adopt(ctx.loop, sv[0], &s_mid_handlers, &ctx);
    assert_non_null(c);
    char want[N * LEN + 1];
    for (int i = 0; i < N; i++) {
        router_shared_buf_t *sb = router_shared_buf_new(LEN);
        assert_non_null(sb);
        char text[LEN + 1];
        snprintf(text, sizeof text, "msg%03d|", i);
        memcpy(router_shared_buf_data(sb), text, LEN);
        memcpy(want + i * LEN, text, LEN);
        assert_int_equal(router_conn_send_shared(c, sb), 0);
        router_shared_buf_destroy(&sb);
    }
    router_loop_stats_t st;
    router_loop_stats(ctx.loop, &st);
    uint64_t sends = st.sends;
    if (no_memory) {
        /* The loop's timer table is had before arming, so the allocation
         * that fails is the first send's list of pieces. */
        uint64_t warm = router_loop_timer_add(ctx.loop, 1000, s_noop_timer, NULL);
        assert_true(warm != 0);
        assert_int_equal(router_loop_timer_cancel(ctx.loop, warm), 0);
        alloc_fail_arm(0);
    }
    test_loop_until(ctx.loop, s_all_sent, ctx.loop, 2, HANG_GUARD_MS);
    if (no_memory)
        assert_int_equal(alloc_fail_disarm(), 1);
    router_loop_stats(ctx.loop, &st);
    assert_int_equal(st.bytes_out, N * LEN);
    if (!no_memory)
        assert_true(st.sends - sends <= 3); /* 19 at 16 pieces a send */
    else
        assert_true(st.sends - sends >= 2); /* the first send had 16 pieces */
    char got[N * LEN];
    size_t have = 0;
    while (have < sizeof got) {
        ssize_t r = recv(sv[1], got + have, sizeof got - have, 0);
        assert_true(r > 0);
        have += (size_t) r;
    }
    assert_memory_equal(got, want, sizeof got);
    router_conn_abort(c);
    ctx.want_closed = 1;
    s_run(&ctx);
    close(sv[1]);
    s_done(&ctx);
}

static void test_shared_many_small(void **state)
{
    s_many_small_shared(state, false);
}

static void test_shared_many_small_without_memory(void **state)
{
    s_many_small_shared(state, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr_parse),
        BOTH(test_echo_tcp4),
        BOTH(test_echo_tcp6),
        BOTH(test_echo_dual_stack),
        BOTH(test_echo_uds),
        BOTH(test_many_connections),
        BOTH(test_slow_consumer_cut),
        BOTH(test_turns_between_connections),
        BOTH(test_answer_before_parked_turn),
        BOTH(test_send_limit_exact),
        cmocka_unit_test(test_unsent_total_share),
        BOTH(test_connection_limits),
        BOTH(test_connect_tcp),
        BOTH(test_connect_uds),
        BOTH(test_connect_refused),
        BOTH(test_close_while_connecting),
        BOTH(test_drain_and_close_all),
        BOTH(test_half_close_default),
        BOTH(test_half_close_on_eof),
        BOTH(test_pause_resume),
        BOTH(test_pause_resume_stress),
        BOTH(test_tiny_buffer_pool),
        BOTH(test_close_flushes),
        BOTH(test_abort_discards),
        BOTH(test_deadline_cuts_silent),
        BOTH(test_deadline_moves),
        BOTH(test_deadline_finds_a_stolen_fd),
        BOTH(test_adopt_and_connect_without_memory),
        BOTH(test_close_timeout),
        BOTH(test_destroy_closes_connections),
        BOTH(test_uds_stale_file),
        BOTH(test_accept_emfile_backs_off),
        BOTH(test_accept_without_handlers_aborts),
        BOTH(test_peer_vanishes_mid_frame),
        BOTH(test_reset_after_graceful_close),
        BOTH(test_close_timeout_all_sent),
        BOTH(test_sendv_without_memory),
        BOTH(test_park_without_memory),
        BOTH(test_disown),
        BOTH(test_send_arguments),
        BOTH(test_no_timer_slot),
        BOTH(test_close_bounded_by_sweep),
        BOTH(test_shared_many_small),
        /* only io_uring holds the pieces on the heap (epoll: the stack) */
        {"test_shared_many_small_without_memory@uring", test_shared_many_small_without_memory,
         NULL, NULL, &s_uring},
        BOTH(test_abort_while_parked),
        cmocka_unit_test(test_shared_counted_once),
        cmocka_unit_test(test_shared_partial_sends_in_order),
        cmocka_unit_test(test_shared_released_by_dead_and_other_loop),
        cmocka_unit_test(test_shared_without_memory),
        BOTH(test_shared_partial_sends_sockets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
