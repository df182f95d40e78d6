/* tests/loop_test.c — the event loop core: backend choice, timers, signals
 * through signalfd, cross-thread posts and wake-ups (and posts queued
 * after a stop), fairness under a receive flood, fd watches, the
 * open-file limit, and what fails: out of memory or descriptors in
 * router_loop_new, a signal handler that cannot be set up, out of memory
 * when the timer table grows, calls the API refuses, a watch update, a
 * connect, a listener or its restart the backend refuses (epoll_ctl
 * through router_epoll_ctl_fault, io_uring SQEs through tests/uring_fail.h).
 *
 * Every test that touches a backend is registered twice, once per backend
 * (names end in @uring / @epoll); the backend is passed as the test's
 * initial state, so one ctest run covers both. Where the kernel refuses
 * io_uring, the @uring variants are skipped, visibly. No test depends on
 * timing: waits are for events, and the one timer that could fire on a
 * hang only turns the hang into a failure. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <zmq.h>

#include "alloc_fail.h"
#include "loop_until.h"
#include "uring_fail.h"

#include "router/log.h"
#include "router/net/conn.h"
#include "router/net/fdlimit.h"
#include "router/net/listen.h"
#include "router/net/loop.h"

/* A test that runs this long has hung: fail it instead of waiting for ctest. */
#define HANG_GUARD_MS 60000

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
    assert_string_equal(router_loop_backend_name(loop),
                        o.backend == ROUTER_LOOP_URING ? "io_uring" : "epoll");
    return loop;
}

static void s_timer_stop_cb(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    (void) ud;
    router_loop_stop(loop);
}

static void s_hang(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    *(bool *) ud = true;
    router_loop_stop(loop);
}

/* Runs the loop until something stops it; fails if the guard fired. */
static void s_run(router_loop_t *loop)
{
    bool hung = false;
    uint64_t guard = router_loop_timer_add(loop, HANG_GUARD_MS, s_hang, &hung);
    assert_true(guard != 0);
    assert_int_equal(router_loop_run(loop), 0);
    assert_false(hung);
    (void) router_loop_timer_cancel(loop, guard);
}

/* ------------------------------------------------------------ backend choice */

static void test_backend_env(void **state)
{
    (void) state;
    router_loop_t *loop;
    router_loop_opts_t o = {0};

    setenv("KITH_LOOP_BACKEND", "epoll", 1);
    loop = router_loop_new(NULL);
    assert_non_null(loop);
    assert_string_equal(router_loop_backend_name(loop), "epoll");
    router_loop_destroy(&loop);
    assert_null(loop);
    router_loop_destroy(&loop); /* idempotent */

    setenv("KITH_LOOP_BACKEND", "uring", 1);
    loop = router_loop_new(NULL);
    if (loop) {
        assert_string_equal(router_loop_backend_name(loop), "io_uring");
        router_loop_destroy(&loop);
    } else {
        assert_true(errno == ENOSYS || errno == EPERM); /* forced: no fallback */
    }

    /* An explicit choice in code wins over the environment. */
    o.backend = ROUTER_LOOP_EPOLL;
    loop = router_loop_new(&o);
    assert_non_null(loop);
    assert_string_equal(router_loop_backend_name(loop), "epoll");
    router_loop_destroy(&loop);

    setenv("KITH_LOOP_BACKEND", "kqueue", 1);
    errno = 0;
    assert_null(router_loop_new(NULL));
    assert_int_equal(errno, EINVAL);
    unsetenv("KITH_LOOP_BACKEND");
}

static void test_bad_opts(void **state)
{
    (void) state;
    router_loop_opts_t o = {.recv_buf_count = 3}; /* not a power of two */
    errno = 0;
    assert_null(router_loop_new(&o));
    assert_int_equal(errno, EINVAL);
    o = (router_loop_opts_t){.recv_buf_size = 16};
    assert_null(router_loop_new(&o));
    o = (router_loop_opts_t){.backend = (router_loop_backend_t) 7};
    assert_null(router_loop_new(&o));
}

/* ------------------------------------------------------------ running */

static void test_stop_before_run(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    router_loop_stop(loop);
    assert_int_equal(router_loop_run(loop), 0); /* returns at once */
    router_loop_stop(loop);
    assert_int_equal(router_loop_run(loop), 0); /* and can run again */
    router_loop_destroy(&loop);
}

/* Runs the loop, then destroys it on the same thread (loop.h). */
static void *s_run_thread(void *arg)
{
    router_loop_t *loop = arg;
    intptr_t rc = router_loop_run(loop);
    router_loop_destroy(&loop);
    return (void *) rc;
}

/* Set up on one thread, run and destroyed on another: with io_uring's
 * SINGLE_ISSUER the running thread becomes the issuer, and only it can
 * drain the ring at destroy. */
static void test_run_on_another_thread(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    assert_true(router_loop_timer_add(loop, 1, s_timer_stop_cb, NULL) != 0);
    pthread_t th;
    void *rc;
    assert_int_equal(pthread_create(&th, NULL, s_run_thread, loop), 0);
    pthread_join(th, &rc);
    assert_int_equal((intptr_t) rc, 0);
}

/* ------------------------------------------------------------ timers */

typedef struct {
    char order[16];      /* names of the timers in firing order */
    size_t n;            /* how many fired */
    unsigned chain;      /* 0 ms timers re-added so far */
    bool chain_stop;     /* the later timer fired: end the chain */
} s_timers_t;

typedef struct {
    s_timers_t *t;       /* where to record */
    char name;           /* this timer's name */
} s_mark_t;

static void s_timer_mark(router_loop_t *loop, uint64_t id, void *ud)
{
    s_mark_t *m = ud;
    (void) loop;
    (void) id;
    m->t->order[m->t->n++] = m->name;
}

static void s_timer_stop(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    (void) ud;
    router_loop_stop(loop);
}

static void test_timers_order_and_cancel(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    s_timers_t t = {0};
    s_mark_t m[5];
    for (int i = 0; i < 5; i++)
        m[i] = (s_mark_t){.t = &t, .name = "ABCDE"[i]};
    /* Deadline order, ties in the order added; C is cancelled. */
    assert_true(router_loop_timer_add(loop, 30, s_timer_mark, &m[0]) != 0);
    assert_true(router_loop_timer_add(loop, 10, s_timer_mark, &m[1]) != 0);
    uint64_t c = router_loop_timer_add(loop, 20, s_timer_mark, &m[2]);
    assert_true(c != 0);
    assert_true(router_loop_timer_add(loop, 10, s_timer_mark, &m[3]) != 0);
    uint64_t e = router_loop_timer_add(loop, 0, s_timer_mark, &m[4]);
    assert_true(e != 0);
    assert_int_equal(router_loop_timer_cancel(loop, c), 0);
    errno = 0;
    assert_int_equal(router_loop_timer_cancel(loop, c), -1); /* already cancelled */
    assert_int_equal(errno, ENOENT);
    assert_int_equal(router_loop_timer_cancel(loop, 0), -1);
    assert_true(router_loop_timer_add(loop, 40, s_timer_stop, NULL) != 0);
    s_run(loop);
    assert_int_equal(t.n, 4);
    assert_memory_equal(t.order, "EBDA", 4);
    assert_int_equal(router_loop_timer_cancel(loop, e), -1); /* fired: stale id */
    router_loop_destroy(&loop);
}

static void s_chain(router_loop_t *loop, uint64_t id, void *ud)
{
    s_timers_t *t = ud;
    (void) id;
    t->chain++;
    if (t->chain_stop)
        router_loop_stop(loop);
    else
        assert_true(router_loop_timer_add(loop, 0, s_chain, t) != 0);
}

static void s_chain_end(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    ((s_timers_t *) ud)->chain_stop = true;
}

/* A callback re-adding a 0 ms timer forever must not starve later timers. */
static void test_timer_zero_chain_no_starvation(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    s_timers_t t = {0};
    assert_true(router_loop_timer_add(loop, 0, s_chain, &t) != 0);
    assert_true(router_loop_timer_add(loop, 5, s_chain_end, &t) != 0);
    s_run(loop);
    assert_true(t.chain_stop);
    assert_true(t.chain > 1);
    router_loop_destroy(&loop);
}

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
    fail_msg("cancelled timer fired");
}

static void test_timer_limit(void **state)
{
    router_loop_opts_t o = {.max_timers = 4};
    router_loop_t *loop = s_loop_new(state, &o);
    uint64_t ids[4];
    for (int i = 0; i < 4; i++) {
        ids[i] = router_loop_timer_add(loop, 1000, s_never, NULL);
        assert_true(ids[i] != 0);
    }
    errno = 0;
    assert_int_equal(router_loop_timer_add(loop, 1000, s_never, NULL), 0);
    assert_int_equal(errno, ENOSPC);
    assert_int_equal(router_loop_timer_cancel(loop, ids[1]), 0);
    uint64_t again = router_loop_timer_add(loop, 1000, s_never, NULL);
    assert_true(again != 0);
    assert_true(again != ids[1]); /* the slot is reused under a new id */
    assert_int_equal(router_loop_timer_cancel(loop, ids[1]), -1);
    for (int i = 0; i < 4; i++)
        (void) router_loop_timer_cancel(loop, i == 1 ? again : ids[i]);
    router_loop_destroy(&loop);
}

/* ------------------------------------------------------------ signals */

typedef struct {
    int count;     /* signals delivered */
    int last;      /* the last signal number */
} s_sig_t;

static void s_on_sig(router_loop_t *loop, int signo, void *ud)
{
    s_sig_t *s = ud;
    s->count++;
    s->last = signo;
    if (signo == SIGTERM)
        router_loop_stop(loop);
}

static void s_raise_hup_term(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
    raise(SIGHUP);
    raise(SIGTERM);
}

static void test_signalfd(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    s_sig_t s = {0};
    assert_int_equal(router_loop_on_signal(loop, SIGTERM, s_on_sig, &s), 0);
    assert_int_equal(router_loop_on_signal(loop, SIGHUP, s_on_sig, &s), 0);
    errno = 0;
    assert_int_equal(router_loop_on_signal(loop, SIGKILL, s_on_sig, &s), -1);
    assert_int_equal(errno, EINVAL);
    assert_true(router_loop_timer_add(loop, 0, s_raise_hup_term, NULL) != 0);
    s_run(loop);
    assert_int_equal(s.count, 2);
    assert_int_equal(s.last, SIGTERM);
    router_loop_destroy(&loop);
    /* The mask is restored: SIGTERM is no longer blocked in this thread. */
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    assert_false(sigismember(&cur, SIGTERM));
    assert_false(sigismember(&cur, SIGHUP));
}

/* ------------------------------------------------------------ posts and wake-ups */

#define PRODUCERS 3
#define POSTS_EACH 4000

typedef struct {
    router_loop_t *loop;
    unsigned next[PRODUCERS];   /* the sequence number expected from each producer */
    unsigned out_of_order;      /* posts that broke per-producer FIFO */
    unsigned done;              /* producers finished */
    unsigned wakes;             /* wake callback calls */
    unsigned ran;               /* posts run */
} s_post_ctx_t;

typedef struct {
    s_post_ctx_t *ctx;  /* shared context */
    unsigned who;       /* producer index */
    unsigned seq;       /* its sequence number, or UINT32_MAX for "done" */
} s_post_item_t;

static void s_post_fn(router_loop_t *loop, void *arg)
{
    s_post_item_t *it = arg;
    s_post_ctx_t *ctx = it->ctx;
    ctx->ran++;
    if (it->seq == UINT32_MAX) {
        if (++ctx->done == PRODUCERS)
            router_loop_stop(loop);
    } else if (it->seq != ctx->next[it->who]++) {
        ctx->out_of_order++;
    }
    free(it);
}

static void *s_producer(void *arg)
{
    s_post_item_t *proto = arg;
    for (unsigned i = 0; i <= POSTS_EACH; i++) {
        s_post_item_t *it = malloc(sizeof *it);
        if (!it)
            abort();
        *it = *proto;
        it->seq = i == POSTS_EACH ? UINT32_MAX : i;
        while (router_loop_post(proto->ctx->loop, s_post_fn, it) != 0) {
            if (errno != EAGAIN)
                abort();
            sched_yield(); /* full: the loop drains it */
        }
        if (i % 500 == 0)
            router_loop_wake(proto->ctx->loop);
    }
    return NULL;
}

static void s_on_wake(router_loop_t *loop, void *ud)
{
    (void) loop;
    ((s_post_ctx_t *) ud)->wakes++;
}

static void test_post_and_wake_across_threads(void **state)
{
    router_loop_opts_t o = {.post_capacity = 64}; /* small: producers hit "full" */
    router_loop_t *loop = s_loop_new(state, &o);
    s_post_ctx_t ctx = {.loop = loop};
    router_loop_set_wake_cb(loop, s_on_wake, &ctx);
    pthread_t th[PRODUCERS];
    s_post_item_t protos[PRODUCERS];
    for (unsigned i = 0; i < PRODUCERS; i++) {
        protos[i] = (s_post_item_t){.ctx = &ctx, .who = i};
        assert_int_equal(pthread_create(&th[i], NULL, s_producer, &protos[i]), 0);
    }
    s_run(loop);
    for (unsigned i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(ctx.done, PRODUCERS);
    assert_int_equal(ctx.out_of_order, 0);
    for (unsigned i = 0; i < PRODUCERS; i++)
        assert_int_equal(ctx.next[i], POSTS_EACH);
    assert_true(ctx.wakes >= 1);
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    assert_int_equal(st.posts, ctx.ran);
    router_loop_destroy(&loop);
}

static void s_count_post(router_loop_t *loop, void *arg)
{
    (void) loop;
    (*(int *) arg)++;
}

/* Posts accepted but not yet run still run, inside destroy; a post that
 * waits for room in a full queue no one drains gives up at its bound. */
static void test_posts_run_at_destroy(void **state)
{
    router_loop_opts_t o = {.post_capacity = 4};
    router_loop_t *loop = s_loop_new(state, &o);
    int ran = 0;
    for (int i = 0; i < 4; i++)
        assert_int_equal(router_loop_post(loop, s_count_post, &ran), 0);
    errno = 0;
    assert_int_equal(router_loop_post(loop, s_count_post, &ran), -1);
    assert_int_equal(errno, EAGAIN);
    /* Waiting for room gives up at its bound when nothing drains the queue. */
    errno = 0;
    assert_int_equal(router_loop_post_wait(loop, s_count_post, &ran, 3), -1);
    assert_int_equal(errno, EAGAIN);
    router_loop_destroy(&loop);
    assert_int_equal(ran, 4);
}

typedef struct {
    router_loop_t *loop;
    int ran;  /* posts run */
} s_late_t;

static void s_late_count(router_loop_t *loop, void *arg)
{
    (void) loop;
    ((s_late_t *) arg)->ran++;
}

static void *s_late_poster(void *arg)
{
    s_late_t *l = arg;
    assert_int_equal(router_loop_post(l->loop, s_late_count, l), 0);
    return NULL;
}

/* Another thread's post, returned before the caller goes on. */
static void s_post_from_thread(s_late_t *l)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_late_poster, l), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
}

/* A timer (the last step of an iteration, after the posts' turn) stops the
 * loop, and meanwhile another thread posts. */
static void s_stop_then_post(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    router_loop_stop(loop);
    s_post_from_thread(ud);
}

/* A post queued after router_loop_stop, before the last iteration ended,
 * has run when router_loop_run returns (it waited for destroy, and a
 * sender waiting for its answer with it); one queued after run returned
 * runs in router_loop_run_posts, which is a no-op while nothing waits. */
static void test_posts_after_stop_run(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    s_late_t l = {.loop = loop};
    assert_true(router_loop_timer_add(loop, 0, s_stop_then_post, &l) != 0);
    s_run(loop);
    assert_int_equal(l.ran, 1);
    s_post_from_thread(&l);
    assert_int_equal(l.ran, 1);
    router_loop_run_posts(loop);
    assert_int_equal(l.ran, 2);
    router_loop_run_posts(loop);
    assert_int_equal(l.ran, 2);
    router_loop_run_posts(NULL);
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    assert_int_equal(st.posts, 2);
    router_loop_destroy(&loop);
    assert_int_equal(l.ran, 2);
}

/* ------------------------------------------------------------ fairness */

#define FLOOD_CONNS 32
#define FLOOD_BYTES_EACH (32u * 1024u)

typedef struct {
    size_t received;      /* bytes delivered to on_data so far */
    size_t expected;      /* bytes written to the peers */
    size_t at_post;       /* received when the post was queued */
    size_t post_ran_at;   /* received when it ran, SIZE_MAX until then */
    size_t wake_ran_at;   /* received when the wake callback ran */
    router_conn_t *conns[FLOOD_CONNS]; /* the receiving ends */
} s_flood_t;

static void s_flood_post(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_flood_t *f = arg;
    f->post_ran_at = f->received;
}

static void s_flood_wake(router_loop_t *loop, void *ud)
{
    (void) loop;
    s_flood_t *f = ud;
    if (f->wake_ran_at == SIZE_MAX)
        f->wake_ran_at = f->received;
}

static void s_flood_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) data;
    s_flood_t *f = ud;
    router_loop_t *loop = router_conn_loop(c);
    if (f->received == 0) {
        f->at_post = len;
        assert_int_equal(router_loop_post(loop, s_flood_post, f), 0);
        router_loop_wake(loop);
    }
    f->received += len;
    if (f->received == f->expected)
        router_loop_stop(loop);
}

static void s_flood_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_flood_t *f = ud;
    (void) reason;
    for (unsigned i = 0; i < FLOOD_CONNS; i++)
        if (f->conns[i] == c)
            f->conns[i] = NULL;
}

/* A post and a wake-up queued while megabytes of receives are ready run
 * after at most one batch of them (loop.h, "Fairness"), on both backends:
 * on io_uring they used to wait for their eventfd completion, queued
 * behind every receive completion already in the ring. Deterministic: the
 * bound counts bytes, not time. */
static void test_post_not_starved_by_receives(void **state)
{
    /* Small buffers, many of them: thousands of receive completions. */
    router_loop_opts_t o = {.recv_buf_size = 512, .recv_buf_count = 8192};
    router_loop_t *loop = s_loop_new(state, &o);
    s_flood_t f = {.post_ran_at = SIZE_MAX, .wake_ran_at = SIZE_MAX};
    router_loop_set_wake_cb(loop, s_flood_wake, &f);
    router_conn_handlers_t h = {.on_data = s_flood_data, .on_close = s_flood_close};
    static uint8_t chunk[FLOOD_BYTES_EACH];
    int peers[FLOOD_CONNS];
    for (unsigned i = 0; i < FLOOD_CONNS; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        int buf = 4 * FLOOD_BYTES_EACH;
        (void) setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        fcntl(sv[1], F_SETFL, O_NONBLOCK);
        ssize_t n = write(sv[1], chunk, sizeof chunk);
        assert_true(n > 0);
        f.expected += (size_t) n;
        peers[i] = sv[1];
        f.conns[i] = router_loop_adopt(loop, sv[0], &h, &f);
        assert_non_null(f.conns[i]);
    }
    /* Enough queued that the bound means something. */
    assert_true(f.expected > 4 * (ROUTER_LOOP_BATCH_BYTES + o.recv_buf_size));
    s_run(loop);
    assert_int_equal(f.received, f.expected);
    assert_true(f.post_ran_at != SIZE_MAX && f.wake_ran_at != SIZE_MAX);
    print_message("  post ran after %zu more bytes, wake after %zu (bound %u, flood %zu)\n",
                  f.post_ran_at - f.at_post, f.wake_ran_at - f.at_post,
                  ROUTER_LOOP_BATCH_BYTES + o.recv_buf_size, f.expected);
    assert_true(f.post_ran_at - f.at_post <= ROUTER_LOOP_BATCH_BYTES + o.recv_buf_size);
    assert_true(f.wake_ran_at - f.at_post <= ROUTER_LOOP_BATCH_BYTES + o.recv_buf_size);
    for (unsigned i = 0; i < FLOOD_CONNS; i++)
        close(peers[i]);
    router_loop_destroy(&loop);
}

/* ------------------------------------------------------------ fd watches */

typedef struct {
    router_loop_t *loop;   /* the loop under test */
    int rfd, wfd;          /* the pipe */
    router_watch_t *rw;    /* watch on the read end */
    router_watch_t *ww;    /* watch on the write end */
    unsigned writes_done;  /* 3-byte writes made */
    unsigned reads;        /* read callbacks that found data */
    unsigned bytes;        /* bytes drained */
    unsigned writable;     /* write-ready callbacks */
    unsigned errors;       /* callbacks with ROUTER_EV_ERROR */
    bool eof;              /* read() returned 0 */
} s_pipe_t;

static void s_pipe_write(router_loop_t *loop, uint64_t id, void *ud)
{
    s_pipe_t *p = ud;
    (void) loop;
    (void) id;
    assert_int_equal(write(p->wfd, "xyz", 3), 3);
    p->writes_done++;
}

/* Drains the read end (edge-triggered), then drives the test: three writes
 * each seen, then the writer closes and the reader must see EOF. */
static void s_on_pipe_read(router_watch_t *w, int fd, unsigned events, void *ud)
{
    s_pipe_t *p = ud;
    char buf[64];
    ssize_t n;
    bool got = false;
    (void) w;
    if (events & ROUTER_EV_ERROR)
        p->errors++;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        p->bytes += (unsigned) n;
        got = true;
    }
    if (n == 0)
        p->eof = true;
    if (got)
        p->reads++;
    if (p->eof) {
        router_loop_stop(p->loop);
    } else if (got && p->bytes == 3 * p->writes_done) {
        if (p->writes_done < 3) {
            assert_true(router_loop_timer_add(p->loop, 0, s_pipe_write, p) != 0);
        } else {
            router_watch_destroy(&p->ww);
            close(p->wfd);
            p->wfd = -1;
        }
    }
}

static void s_on_pipe_write(router_watch_t *w, int fd, unsigned events, void *ud)
{
    s_pipe_t *p = ud;
    (void) w;
    (void) fd;
    if (events & ROUTER_EV_WRITE)
        p->writable++;
}

static void test_watch_pipe(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    s_pipe_t p = {.loop = loop};
    int fds[2];
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    p.rfd = fds[0];
    p.wfd = fds[1];
    p.rw = router_loop_watch_fd(loop, p.rfd, ROUTER_EV_READ, s_on_pipe_read, &p);
    assert_non_null(p.rw);
    p.ww = router_loop_watch_fd(loop, p.wfd, ROUTER_EV_WRITE, s_on_pipe_write, &p);
    assert_non_null(p.ww);
    errno = 0;
    assert_null(router_loop_watch_fd(loop, -1, ROUTER_EV_READ, s_on_pipe_read, &p));
    assert_int_equal(errno, EINVAL);
    assert_true(router_loop_timer_add(loop, 0, s_pipe_write, &p) != 0);
    s_run(loop);
    assert_int_equal(p.bytes, 9);
    assert_true(p.reads >= 3);
    assert_true(p.writable >= 1); /* an empty pipe is writable from the start */
    assert_true(p.eof);
    assert_true(p.errors >= 1); /* the writer's close is a hang-up */
    router_watch_destroy(&p.rw);
    assert_null(p.rw);
    router_watch_destroy(&p.rw); /* idempotent */
    close(p.rfd);
    router_loop_destroy(&loop);
}

typedef struct {
    router_loop_t *loop; /* the loop under test */
    int fires;           /* callbacks seen */
    unsigned last;       /* their events */
} s_upd_t;

static void s_on_upd(router_watch_t *w, int fd, unsigned events, void *ud)
{
    s_upd_t *u = ud;
    (void) w;
    (void) fd;
    u->fires++;
    u->last = events;
    if (events & ROUTER_EV_WRITE)
        router_loop_stop(u->loop);
}

static void s_do_update(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    assert_int_equal(router_watch_update(ud, ROUTER_EV_WRITE), 0);
}

/* A write end watched for reading stays silent; switched to writing, it
 * reports at once (it is writable). */
static void test_watch_update(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    s_upd_t u = {.loop = loop};
    int fds[2];
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    router_watch_t *w = router_loop_watch_fd(loop, fds[1], ROUTER_EV_READ, s_on_upd, &u);
    assert_non_null(w);
    assert_true(router_loop_timer_add(loop, 0, s_do_update, w) != 0);
    s_run(loop);
    assert_true(u.last & ROUTER_EV_WRITE);
    router_watch_destroy(&w);
    close(fds[0]);
    close(fds[1]);
    router_loop_destroy(&loop);
}

#define ZMQ_MSGS 5000

typedef struct {
    router_loop_t *loop;  /* the loop under test */
    void *ctx;            /* the ZeroMQ context */
    void *pull;           /* watched through its ZMQ_FD */
    unsigned got;         /* messages received */
    unsigned bad;         /* messages with unexpected contents */
} s_zmq_t;

static void *s_zmq_pusher(void *arg)
{
    s_zmq_t *z = arg;
    void *push = zmq_socket(z->ctx, ZMQ_PUSH);
    if (!push || zmq_connect(push, "inproc://loop-test") != 0)
        abort();
    for (unsigned i = 0; i < ZMQ_MSGS; i++) {
        char msg[16];
        int n = snprintf(msg, sizeof msg, "%u", i);
        if (zmq_send(push, msg, (size_t) n, 0) != n) /* blocks at the HWM */
            abort();
    }
    int linger = -1;
    zmq_setsockopt(push, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(push);
    return NULL;
}

/* ZMQ_FD is edge-triggered: drain ZMQ_EVENTS until POLLIN is clear. */
static void s_on_zmq(router_watch_t *w, int fd, unsigned events, void *ud)
{
    s_zmq_t *z = ud;
    (void) w;
    (void) fd;
    (void) events;
    for (;;) {
        int zev = 0;
        size_t len = sizeof zev;
        if (zmq_getsockopt(z->pull, ZMQ_EVENTS, &zev, &len) != 0 || !(zev & ZMQ_POLLIN))
            break;
        char buf[16];
        int n;
        while ((n = zmq_recv(z->pull, buf, sizeof buf - 1, ZMQ_DONTWAIT)) >= 0) {
            buf[n] = '\0';
            if (strtoul(buf, NULL, 10) != z->got)
                z->bad++;
            z->got++;
        }
    }
    if (z->got == ZMQ_MSGS)
        router_loop_stop(z->loop);
}

static void test_watch_zmq_fd(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    s_zmq_t z = {.loop = loop};
    z.ctx = zmq_ctx_new();
    assert_non_null(z.ctx);
    z.pull = zmq_socket(z.ctx, ZMQ_PULL);
    assert_non_null(z.pull);
    assert_int_equal(zmq_bind(z.pull, "inproc://loop-test"), 0);
    int zfd;
    size_t len = sizeof zfd;
    assert_int_equal(zmq_getsockopt(z.pull, ZMQ_FD, &zfd, &len), 0);
    router_watch_t *w = router_loop_watch_fd(loop, zfd, ROUTER_EV_READ, s_on_zmq, &z);
    assert_non_null(w);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_zmq_pusher, &z), 0);
    s_run(loop);
    pthread_join(th, NULL);
    assert_int_equal(z.got, ZMQ_MSGS);
    assert_int_equal(z.bad, 0);
    router_watch_destroy(&w);
    zmq_close(z.pull);
    zmq_ctx_term(z.ctx);
    router_loop_destroy(&loop);
}

/* ------------------------------------------------------------ fd limit */

/* In a child: the hard limit can only go down, and the tests after this
 * one need descriptors. Exits 0 when every check holds. */
static int s_fdlimit_child(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_max < 512)
        return 10;
    /* The soft limit is raised toward the hard one, as far as needed. */
    struct rlimit low = {.rlim_cur = 256, .rlim_max = rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &low) != 0)
        return 11;
    unsigned want = (unsigned) (rl.rlim_max > 100000 ? 100000 : rl.rlim_max) - ROUTER_FDLIMIT_SLACK;
    if (router_fdlimit_raise(want) != want)
        return 12;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want + ROUTER_FDLIMIT_SLACK)
        return 13;
    /* Never lowered. */
    if (router_fdlimit_raise(10) != 10 || getrlimit(RLIMIT_NOFILE, &rl) != 0 ||
        rl.rlim_cur < want + ROUTER_FDLIMIT_SLACK)
        return 14;
    /* A hard limit too low: what it allows is reported. */
    struct rlimit hard = {.rlim_cur = 300, .rlim_max = 300};
    if (setrlimit(RLIMIT_NOFILE, &hard) != 0)
        return 15;
    if (router_fdlimit_raise(5000) != 300 - ROUTER_FDLIMIT_SLACK)
        return 16;
    return 0;
}

static void test_fdlimit_raise(void **state)
{
    (void) state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(s_fdlimit_child());
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* ------------------------------------------------------------ accepting */

static void s_accept_then_timer(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    router_conn_handlers_t h = {.on_data = s_flood_data, .on_close = s_flood_close};
    router_conn_set_handlers(c, &h, ud);
    assert_true(router_loop_timer_add(router_conn_loop(c), 1, s_timer_stop_cb, NULL) != 0);
}

/* A connection waiting before the loop first runs is accepted, and a timer
 * its accept callback adds fires: the io_uring backend once accepted such
 * connections just before blocking, with a wait timeout computed before
 * the timer existed (the hang guard turns that hang into a failure). */
static void test_accept_timer_before_first_wait(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    router_addr_t addr;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    s_flood_t f = {0};
    router_listener_t *l = router_loop_listen(loop, &addr, s_accept_then_timer, &f);
    assert_non_null(l);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(router_addr_port(router_listener_addr(l))),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *) &sin, sizeof sin), 0);
    s_run(loop);
    router_listener_stats_t st;
    router_listener_stats(l, &st);
    assert_int_equal(st.accepted, 1);
    close(fd);
    router_loop_destroy(&loop);
}

/* ------------------------------------------------------------ accept failures */

#define ACCEPT_FAILURES 15

static void s_accept_keep(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    router_conn_handlers_t h = {.on_data = s_flood_data, .on_close = s_flood_close};
    router_conn_set_handlers(c, &h, ud);
}

static void s_accept_check(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    (void) ud;
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    if (st.accept_errors >= ACCEPT_FAILURES)
        router_loop_stop(loop);
    else
        assert_true(router_loop_timer_add(loop, 20, s_accept_check, NULL) != 0);
}

/* In a child (the descriptor limit is lowered): a process out of
 * descriptors fails every accept retry (one per 100 ms); the log gets the
 * first failure and then at most one line per second. Exits 0 when so. */
static int s_accept_log_child(router_loop_backend_t backend, const char *logpath)
{
    router_log_opts_t lo = {.level = ROUTER_LOG_INFO, .path = logpath, .no_stderr = true};
    if (router_log_start(&lo) != 0)
        return 20;
    router_loop_opts_t o = {.backend = backend};
    router_loop_t *loop = router_loop_new(&o);
    router_addr_t addr;
    router_addr_err_t why;
    if (!loop || router_addr_parse("127.0.0.1:0", &addr, &why) != 0)
        return 21;
    s_flood_t f = {0};
    router_listener_t *l = router_loop_listen(loop, &addr, s_accept_keep, &f);
    if (!l)
        return 22;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(router_addr_port(router_listener_addr(l))),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int cs[4], top = 0;
    for (int i = 0; i < 4; i++) {
        cs[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cs[i] < 0 || connect(cs[i], (struct sockaddr *) &sin, sizeof sin) != 0)
            return 23;
        top = cs[i] > top ? cs[i] : top;
    }
    /* No descriptor left for an accepted socket. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = (rlim_t) top + 1;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 24;
    uint64_t t0 = router_loop_now_ms(loop);
    if (!router_loop_timer_add(loop, 20, s_accept_check, NULL) ||
        !router_loop_timer_add(loop, HANG_GUARD_MS, s_timer_stop_cb, NULL))
        return 25;
    if (router_loop_run(loop) != 0)
        return 26;
    uint64_t elapsed = router_loop_now_ms(loop) - t0;
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    router_loop_destroy(&loop);
    for (int i = 0; i < 4; i++)
        close(cs[i]);
    router_log_flush();
    router_log_stop();
    if (st.accept_errors < ACCEPT_FAILURES)
        return 27; /* the guard fired */
    FILE *fp = fopen(logpath, "r");
    if (!fp)
        return 28;
    char line[1024];
    unsigned lines = 0, counted = 0;
    while (fgets(line, sizeof line, fp)) {
        if (strstr(line, "accept failed") || strstr(line, "more accept failures"))
            lines++;
        if (strstr(line, "suppressed)") || strstr(line, "more accept failures"))
            counted++;
    }
    fclose(fp);
    /* The first line, then one per full second at most: a bound from the
     * time it took, not an assumption about speed. */
    unsigned bound = 1 + (unsigned) (elapsed / 1000);
    fprintf(stderr, "  %llu accept failures in %llu ms: %u lines (bound %u), %u with a count\n",
            (unsigned long long) st.accept_errors, (unsigned long long) elapsed, lines, bound,
            counted);
    if (lines < 1 || lines > bound)
        return 29;
    return 0;
}

static void test_accept_failures_rate_limited(void **state)
{
    router_loop_backend_t backend = *(router_loop_backend_t *) *state;
    router_loop_opts_t o = {.backend = backend};
    router_loop_t *probe = router_loop_new(&o);
    if (!probe) {
        print_message("backend refused here (%s): skipping\n", strerror(errno));
        skip();
    }
    router_loop_destroy(&probe);
    char path[] = "/tmp/kith-accept-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(s_accept_log_child(backend, path));
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    unlink(path);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* ------------------------------------------------------------ failures */

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

/* Out of memory at each allocation of router_loop_new: NULL with ENOMEM
 * (or the backend's own error), no descriptor kept (LSan: nothing leaked);
 * the run that fails nothing makes a loop that runs. */
static void test_new_without_memory(void **state)
{
    router_loop_opts_t o = {.backend = *(router_loop_backend_t *) *state};
    router_loop_t *probe = router_loop_new(&o);
    if (!probe) {
        print_message("backend refused here (%s): skipping\n", strerror(errno));
        skip();
    }
    router_loop_destroy(&probe);
    long run;
    for (run = 0; run < ALLOC_FAIL_RUNS_MAX; run++) {
        unsigned fds = s_fd_count();
        alloc_fail_arm(run);
        router_loop_t *loop = router_loop_new(&o);
        unsigned failed = alloc_fail_disarm();
        if (!loop) {
            assert_true(failed > 0);
            assert_int_equal(errno, ENOMEM);
            assert_int_equal(s_fd_count(), fds);
            continue;
        }
        router_loop_stop(loop);
        assert_int_equal(router_loop_run(loop), 0);
        router_loop_destroy(&loop);
        assert_int_equal(s_fd_count(), fds);
        if (failed == 0)
            break;
    }
    assert_true(run > 0 && run < ALLOC_FAIL_RUNS_MAX);
}

/* The lowest descriptor free now: with RLIMIT_NOFILE's soft limit set to
 * it (plus `room`), the process is out of descriptors (but for `room`). */
static void s_fds_limit(unsigned room, struct rlimit *restore)
{
    assert_int_equal(getrlimit(RLIMIT_NOFILE, restore), 0);
    int lowest = dup(0);
    assert_true(lowest >= 0);
    close(lowest);
    struct rlimit rl = *restore;
    rl.rlim_cur = (rlim_t) lowest + room;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
}

/* Out of descriptors at each one router_loop_new opens: NULL with EMFILE,
 * nothing kept; with enough, a loop that runs. */
static void test_new_without_descriptors(void **state)
{
    router_loop_opts_t o = {.backend = *(router_loop_backend_t *) *state};
    router_loop_t *probe = router_loop_new(&o);
    if (!probe) {
        print_message("backend refused here (%s): skipping\n", strerror(errno));
        skip();
    }
    router_loop_destroy(&probe);
    unsigned room, refused = 0;
    for (room = 0; room < 16; room++) {
        unsigned fds = s_fd_count();
        struct rlimit restore;
        s_fds_limit(room, &restore);
        errno = 0;
        router_loop_t *loop = router_loop_new(&o);
        int err = errno;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &restore), 0);
        if (!loop) {
            assert_int_equal(err, EMFILE);
            assert_int_equal(s_fd_count(), fds);
            refused++;
            continue;
        }
        router_loop_stop(loop);
        assert_int_equal(router_loop_run(loop), 0);
        router_loop_destroy(&loop);
        assert_int_equal(s_fd_count(), fds);
        break;
    }
    assert_true(refused > 0 && room < 16);
}

static bool s_sig_blocked(int signo)
{
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    return sigismember(&cur, signo);
}

static void s_raise_usr2(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
    raise(SIGUSR2);
}

static void s_on_sig_stop(router_loop_t *loop, int signo, void *ud)
{
    s_on_sig(loop, signo, ud);
    router_loop_stop(loop);
}

/* A signal handler that cannot be set up — no descriptor for the
 * signalfd, no memory or (io_uring) no SQE for its watch — is refused
 * with the reason, and the signal is unblocked again: left blocked, the
 * signal (a SIGTERM) would be neither delivered nor act. No descriptor is
 * kept; asked again once it can be, it is set up and delivers. */
static void test_signal_setup_failures(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    bool uring = strcmp(router_loop_backend_name(loop), "io_uring") == 0;
    s_sig_t s = {0};
    assert_false(s_sig_blocked(SIGUSR2));
    unsigned fds = s_fd_count();

    struct rlimit restore;
    s_fds_limit(0, &restore);
    errno = 0;
    int rc = router_loop_on_signal(loop, SIGUSR2, s_on_sig_stop, &s);
    int err = errno;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &restore), 0);
    assert_int_equal(rc, -1);
    assert_int_equal(err, EMFILE);
    assert_false(s_sig_blocked(SIGUSR2));
    assert_int_equal(s_fd_count(), fds);

    alloc_fail_arm(0);
    errno = 0;
    rc = router_loop_on_signal(loop, SIGUSR2, s_on_sig_stop, &s);
    err = errno;
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_int_equal(err, ENOMEM);
    assert_false(s_sig_blocked(SIGUSR2));
    assert_int_equal(s_fd_count(), fds);

    if (uring) {
        uring_fail_arm(0, 1);
        errno = 0;
        rc = router_loop_on_signal(loop, SIGUSR2, s_on_sig_stop, &s);
        err = errno;
        assert_int_equal(uring_fail_disarm(), 1);
        assert_int_equal(rc, -1);
        assert_int_equal(err, EBUSY);
        assert_false(s_sig_blocked(SIGUSR2));
        assert_int_equal(s_fd_count(), fds);
    }

    assert_int_equal(router_loop_on_signal(loop, SIGUSR2, s_on_sig_stop, &s), 0);
    assert_true(s_sig_blocked(SIGUSR2));
    assert_true(router_loop_timer_add(loop, 0, s_raise_usr2, NULL) != 0);
    s_run(loop);
    assert_int_equal(s.count, 1);
    assert_int_equal(s.last, SIGUSR2);
    router_loop_destroy(&loop);
    assert_false(s_sig_blocked(SIGUSR2));
}

static void s_count_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (*(unsigned *) ud)++;
}

/* The timer table grows by reallocating its slots and its heap; either
 * failing refuses that one timer (0, ENOMEM), and the timers already
 * pending and those added later all fire, in deadline order. */
static void test_timer_grow_without_memory(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    unsigned fired = 0;
    uint64_t first = router_loop_timer_add(loop, 0, s_count_timer, &fired);
    assert_true(first != 0);
    for (unsigned i = 1; i < 64; i++) /* the first 64 slots, all taken */
        assert_true(router_loop_timer_add(loop, 0, s_count_timer, &fired) != 0);
    for (long k = 0; k < 2; k++) {
        alloc_fail_arm(k); /* 0: the slots' realloc; 1: the heap's */
        errno = 0;
        assert_int_equal(router_loop_timer_add(loop, 0, s_count_timer, &fired), 0);
        assert_int_equal(errno, ENOMEM);
        assert_int_equal(alloc_fail_disarm(), 1);
    }
    for (unsigned i = 0; i < 64; i++)
        assert_true(router_loop_timer_add(loop, 0, s_count_timer, &fired) != 0);
    assert_true(router_loop_timer_add(loop, 1, s_timer_stop_cb, NULL) != 0);
    s_run(loop);
    assert_int_equal(fired, 128);
    assert_int_equal(router_loop_timer_cancel(loop, first), -1);
    router_loop_destroy(&loop);
}

static void s_run_again(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    errno = 0;
    *(int *) ud = router_loop_run(loop) == -1 ? errno : 0;
    router_loop_stop(loop);
}

static void s_drained(router_loop_t *loop, void *ud)
{
    (*(unsigned *) ud)++;
    router_loop_stop(loop);
}

/* Calls the API refuses, each with its errno, and the drained callback. */
static void test_refusals(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    errno = 0;
    assert_int_equal(router_loop_timer_add(NULL, 1, s_never, NULL), 0);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_loop_timer_add(loop, 1, NULL, NULL), 0);
    assert_int_equal(router_loop_timer_cancel(NULL, 1), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_loop_timer_cancel(loop, 0), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(router_loop_post(NULL, s_post_fn, NULL), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_loop_post(loop, NULL, NULL), -1);
    assert_int_equal(router_loop_run(NULL), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_loop_on_signal(loop, SIGKILL, NULL, NULL), -1);
    assert_int_equal(errno, EINVAL);
    assert_null(router_loop_watch_fd(loop, -1, ROUTER_EV_READ, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_watch_update(NULL, ROUTER_EV_READ), -1);
    int inner = 0;
    assert_true(router_loop_timer_add(loop, 0, s_run_again, &inner) != 0);
    s_run(loop);
    assert_int_equal(inner, EBUSY);
    unsigned drained = 0;
    router_loop_set_drained_cb(loop, s_drained, &drained);
    s_run(loop);
    assert_int_equal(drained, 1);
    router_loop_set_drained_cb(loop, NULL, NULL);
    router_loop_destroy(&loop);
}

/* ------------------------------------------------------------ logger */

static void test_log_levels_and_escaping(void **state)
{
    (void) state;
    router_log_level_t lvl;
    assert_int_equal(router_log_level_parse("warn", &lvl), 0);
    assert_int_equal(lvl, ROUTER_LOG_WARN);
    assert_int_equal(router_log_level_parse("loud", &lvl), -1);
    assert_string_equal(router_log_level_str(ROUTER_LOG_ERROR), "error");

    char path[] = "/tmp/kith-log-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    router_log_opts_t o = {.level = ROUTER_LOG_INFO, .path = path, .no_stderr = true};
    assert_int_equal(router_log_start(&o), 0);
    errno = 0;
    assert_int_equal(router_log_start(&o), -1);
    assert_int_equal(errno, EALREADY);
    ROUTER_LOG(ROUTER_LOG_DEBUG, "test", "hidden");
    ROUTER_LOG(ROUTER_LOG_INFO, "test", "peer said %s", "a\nforged line\x1b");
    router_log_flush();
    router_log_stop();
    router_log_set_level(ROUTER_LOG_INFO);

    char buf[4096] = {0};
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    unlink(path);
    assert_null(strstr(buf, "hidden"));
    assert_non_null(strstr(buf, " INFO  test: peer said a\\x0aforged line\\x1b\n"));
    /* One event, one line. */
    size_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += buf[i] == '\n';
    assert_int_equal(lines, 1);
}

/* ------------------------------------------------------------ refused epoll_ctl and SQEs */

int router_epoll_ctl_fault(int op);

static _Thread_local int s_ctl_fail_op = -1; /* the epoll_ctl op to refuse once */
static _Thread_local int s_ctl_fail_err;     /* ...with this errno */
static _Thread_local unsigned s_ctl_failed;  /* refusals so far */

/* Replaces loop_epoll.c's weak seam: the armed op fails, once, as the
 * kernel fails it past fs.epoll.max_user_watches (ENOSPC). */
int router_epoll_ctl_fault(int op)
{
    if (op != s_ctl_fail_op)
        return 0;
    s_ctl_fail_op = -1;
    s_ctl_failed++;
    return s_ctl_fail_err;
}

static void s_ctl_fail_arm(int op, int err)
{
    s_ctl_fail_op = op;
    s_ctl_fail_err = err;
    s_ctl_failed = 0;
}

static bool s_upd_writable(void *ud)
{
    return ((s_upd_t *) ud)->last & ROUTER_EV_WRITE;
}

/* An update the backend refuses (epoll_ctl MOD: ENOSPC; io_uring: no SQE,
 * EBUSY) leaves the watch as it was, and the same update asked again is
 * made: it used to be taken for a no-op (the refused events were kept as
 * the watch's own), so the write end never reported it was writable. */
static void test_watch_update_refused_then_retried(void **state)
{
    bool uring = *(router_loop_backend_t *) *state == ROUTER_LOOP_URING;
    router_loop_t *loop = s_loop_new(state, NULL);
    s_upd_t u = {.loop = loop};
    int fds[2];
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    router_watch_t *w = router_loop_watch_fd(loop, fds[1], ROUTER_EV_READ, s_on_upd, &u);
    assert_non_null(w);
    if (uring)
        uring_fail_arm(0, -1);
    else
        s_ctl_fail_arm(EPOLL_CTL_MOD, ENOSPC);
    errno = 0;
    assert_int_equal(router_watch_update(w, ROUTER_EV_WRITE), -1);
    assert_int_equal(errno, uring ? EBUSY : ENOSPC);
    if (uring)
        assert_true(uring_fail_disarm() > 0);
    else
        assert_int_equal(s_ctl_failed, 1);
    assert_int_equal(router_watch_update(w, ROUTER_EV_WRITE), 0);
    test_loop_until(loop, s_upd_writable, &u, 5, 10000);
    router_watch_destroy(&w);
    close(fds[0]);
    close(fds[1]);
    router_loop_destroy(&loop);
}

typedef struct {
    int closes;                   /* on_close calls */
    router_close_reason_t reason; /* the last one's */
    int err;                      /* router_conn_error() then */
} s_dial_t;

static void s_dial_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) c;
    (void) data;
    (void) len;
    (void) ud;
}

static void s_dial_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_dial_t *d = ud;
    d->closes++;
    d->reason = reason;
    d->err = router_conn_error(c);
}

static bool s_dial_closed(void *ud)
{
    return ((s_dial_t *) ud)->closes > 0;
}

/* A dialled socket the epoll set refuses is a connect that failed, as
 * conn.h promises (ROUTER_CLOSE_CONNECT_FAILED and the errno, from the
 * loop), so outbound tries the peer's next address: it was reported as a
 * lost connection (ROUTER_CLOSE_ERROR: "outcome unknown", no next
 * address). The next connect goes through. */
static void test_connect_refused_by_epoll(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    assert_int_equal(bind(lfd, (struct sockaddr *) &sin, sizeof sin), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *) &sin, &sl), 0);
    char text[32];
    snprintf(text, sizeof text, "127.0.0.1:%u", (unsigned) ntohs(sin.sin_port));
    router_addr_t addr;
    assert_int_equal(router_addr_parse(text, &addr, NULL), 0);
    static const router_conn_handlers_t h = {.on_data = s_dial_data, .on_close = s_dial_close};

    s_dial_t refused = {0};
    s_ctl_fail_arm(EPOLL_CTL_ADD, ENOSPC);
    assert_non_null(router_loop_connect(loop, &addr, &h, &refused));
    assert_int_equal(s_ctl_failed, 1);
    assert_int_equal(refused.closes, 0); /* never from inside the call */
    test_loop_until(loop, s_dial_closed, &refused, 5, 10000);
    assert_int_equal(refused.closes, 1);
    assert_int_equal(refused.reason, ROUTER_CLOSE_CONNECT_FAILED);
    assert_int_equal(refused.err, ENOSPC);

    s_dial_t ok = {0};
    router_conn_t *c = router_loop_connect(loop, &addr, &h, &ok);
    assert_non_null(c);
    int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC); /* blocks until it connects */
    assert_true(afd >= 0);
    router_conn_abort(c);
    test_loop_until(loop, s_dial_closed, &ok, 5, 10000);
    assert_int_equal(ok.reason, ROUTER_CLOSE_ABORT);
    close(afd);
    close(lfd);
    router_loop_destroy(&loop);
}

typedef struct {
    s_dial_t side[2]; /* what each accepted connection saw */
    unsigned accepted;
    size_t got;       /* bytes the second one received */
} s_acc_t;

static void s_acc_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) c;
    (void) data;
    ((s_acc_t *) ud)->got += len;
}

static void s_acc_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    s_acc_t *a = ud;
    s_dial_t *d = &a->side[a->accepted > 1 ? 1 : 0];
    d->closes++;
    d->reason = reason;
    d->err = router_conn_error(c);
}

static void s_acc_on_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    s_acc_t *a = ud;
    a->accepted++;
    static const router_conn_handlers_t h = {.on_data = s_acc_data, .on_close = s_acc_close};
    router_conn_set_handlers(c, &h, a);
}

static bool s_acc_first_closed(void *ud)
{
    return ((s_acc_t *) ud)->side[0].closes > 0;
}

static bool s_acc_second_got(void *ud)
{
    return ((s_acc_t *) ud)->got >= 2;
}

static int s_tcp_client(router_listener_t *l)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(router_addr_port(router_listener_addr(l))),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *) &sin, sizeof sin), 0);
    struct timeval tv = {.tv_sec = 10};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    return fd;
}

/* An accepted connection the epoll set refuses (ENOSPC past
 * fs.epoll.max_user_watches) ends with that reason, its client sees the
 * end (never silence), and the listener goes on serving the next one. */
static void test_accepted_refused_by_epoll(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    router_addr_t addr;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    s_acc_t a = {0};
    router_listener_t *l = router_loop_listen(loop, &addr, s_acc_on_accept, &a);
    assert_non_null(l);
    int c1 = s_tcp_client(l);
    s_ctl_fail_arm(EPOLL_CTL_ADD, ENOSPC);
    test_loop_until(loop, s_acc_first_closed, &a, 5, 10000);
    assert_int_equal(s_ctl_failed, 1);
    assert_int_equal(a.side[0].closes, 1);
    assert_int_equal(a.side[0].reason, ROUTER_CLOSE_ERROR);
    assert_int_equal(a.side[0].err, ENOSPC);
    char b[8];
    ssize_t n = recv(c1, b, sizeof b, 0);
    assert_true(n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)));
    int c2 = s_tcp_client(l);
    assert_int_equal(send(c2, "hi", 2, MSG_NOSIGNAL), 2);
    test_loop_until(loop, s_acc_second_got, &a, 5, 10000);
    assert_int_equal(a.accepted, 2);
    assert_int_equal(a.side[1].closes, 0);
    close(c1);
    close(c2);
    router_listener_close(&l);
    router_loop_destroy(&loop);
}

typedef struct {
    router_loop_t *loop;
    s_acc_t *a;
    uint64_t errors; /* accept_errors to wait for */
} s_acc_err_t;

static bool s_acc_errors(void *ud)
{
    s_acc_err_t *e = ud;
    router_loop_stats_t st;
    router_loop_stats(e->loop, &st);
    return st.accept_errors >= e->errors;
}

static bool s_acc_one(void *ud)
{
    return ((s_acc_t *) ud)->accepted >= 1;
}

/* A listener backing off after EMFILE whose restart the epoll set refuses
 * (no memory for the entry): counted, paused again, and restarted at the
 * next retry, which accepts the connection that waited all along. */
static void test_listener_restart_refused_by_epoll(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    router_addr_t addr;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    s_acc_t a = {0};
    router_listener_t *l = router_loop_listen(loop, &addr, s_acc_on_accept, &a);
    assert_non_null(l);
    int c = s_tcp_client(l);
    struct rlimit restore;
    s_fds_limit(0, &restore);
    s_ctl_fail_arm(EPOLL_CTL_ADD, ENOMEM); /* the first restart's */
    s_acc_err_t e = {loop, &a, 2};         /* EMFILE, then the refused restart */
    bool ok = test_loop_wait(loop, s_acc_errors, &e, 2, 10000);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &restore), 0);
    assert_true(ok);
    assert_int_equal(s_ctl_failed, 1);
    assert_int_equal(a.accepted, 0);
    test_loop_until(loop, s_acc_one, &a, 2, 10000);
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    assert_int_equal(st.accept_errors, 2);
    close(c);
    router_listener_close(&l);
    router_loop_destroy(&loop);
}

/* A Unix listener the epoll set refuses is not made: NULL with the
 * reason, its descriptor closed and its socket file removed (a file left
 * there would be taken for another daemon's socket, or for a stale one,
 * by the next start), and the same address listens once it can. */
static void test_uds_listener_refused_by_epoll(void **state)
{
    router_loop_t *loop = s_loop_new(state, NULL);
    char dir[] = "/tmp/kith-loop-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char text[128];
    snprintf(text, sizeof text, "uds://%s/l.sock", dir);
    router_addr_t addr;
    assert_int_equal(router_addr_parse(text, &addr, NULL), 0);
    s_acc_t a = {0};
    unsigned fds = s_fd_count();
    s_ctl_fail_arm(EPOLL_CTL_ADD, ENOSPC);
    errno = 0;
    assert_null(router_loop_listen(loop, &addr, s_acc_on_accept, &a));
    assert_int_equal(errno, ENOSPC);
    assert_int_equal(s_ctl_failed, 1);
    assert_int_equal(s_fd_count(), fds);
    assert_int_not_equal(access(addr.u.un.sun_path, F_OK), 0);
    router_listener_t *l = router_loop_listen(loop, &addr, s_acc_on_accept, &a);
    assert_non_null(l);
    assert_int_equal(access(addr.u.un.sun_path, F_OK), 0);
    router_listener_close(&l);
    router_loop_destroy(&loop);
    assert_int_not_equal(access(addr.u.un.sun_path, F_OK), 0);
    assert_int_equal(rmdir(dir), 0);
}

#define BOTH(f)                                                        \
    {#f "@uring", f, NULL, NULL, &s_uring}, {#f "@epoll", f, NULL, NULL, &s_epoll}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_env),
        cmocka_unit_test(test_bad_opts),
        cmocka_unit_test(test_log_levels_and_escaping),
        cmocka_unit_test(test_fdlimit_raise),
        BOTH(test_stop_before_run),
        BOTH(test_run_on_another_thread),
        BOTH(test_timers_order_and_cancel),
        BOTH(test_timer_zero_chain_no_starvation),
        BOTH(test_timer_limit),
        BOTH(test_signalfd),
        BOTH(test_post_and_wake_across_threads),
        BOTH(test_posts_run_at_destroy),
        BOTH(test_posts_after_stop_run),
        BOTH(test_post_not_starved_by_receives),
        BOTH(test_accept_timer_before_first_wait),
        BOTH(test_accept_failures_rate_limited),
        BOTH(test_watch_pipe),
        BOTH(test_watch_update),
        BOTH(test_watch_zmq_fd),
        BOTH(test_new_without_memory),
        BOTH(test_new_without_descriptors),
        BOTH(test_signal_setup_failures),
        BOTH(test_timer_grow_without_memory),
        BOTH(test_refusals),
        BOTH(test_watch_update_refused_then_retried),
        {"test_connect_refused_by_epoll@epoll", test_connect_refused_by_epoll, NULL, NULL,
         &s_epoll},
        {"test_accepted_refused_by_epoll@epoll", test_accepted_refused_by_epoll, NULL, NULL,
         &s_epoll},
        {"test_listener_restart_refused_by_epoll@epoll", test_listener_restart_refused_by_epoll,
         NULL, NULL, &s_epoll},
        {"test_uds_listener_refused_by_epoll@epoll", test_uds_listener_refused_by_epoll, NULL,
         NULL, &s_epoll},
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
