/* tests/inproc_test.c — router/net/inproc and its relay: binding and
 * dialing names, refusals (bad names, a taken name, an acceptor that says
 * no, out of memory at each allocation) that leak no descriptor, and the
 * relay of a faulty namespace when things go wrong: a peer that vanishes
 * mid-frame, a reader that is gone while the writer goes on, a held queue
 * that reaches its bound, a partition holding bytes and an end, and a
 * namespace destroyed with connections in it.
 *
 * No test depends on timing: every wait is bounded by a hang guard that
 * fails the test instead of hanging it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "alloc_fail.h"
#include "router/net/inproc.h"
#include "router/net/inproc_relay.h"

/* A wait longer than this has hung: fail instead. */
#define HANG_GUARD_MS 30000

/* The acceptor: keeps the server ends it is given, or refuses. */
typedef struct {
    int fds[8];
    size_t n;
    bool refuse;
} s_acc_t;

static int s_accept(int fd, void *ud)
{
    s_acc_t *a = ud;
    if (a->refuse || a->n == sizeof a->fds / sizeof *a->fds)
        return -1;
    a->fds[a->n++] = fd;
    return 0;
}

static void s_acc_close(s_acc_t *a)
{
    for (size_t i = 0; i < a->n; i++)
        close(a->fds[i]);
    a->n = 0;
}

/* Descriptors open in this process now. */
static int s_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void s_wait(int fd, short ev)
{
    struct pollfd p = {.fd = fd, .events = ev};
    int r;
    while ((r = poll(&p, 1, HANG_GUARD_MS)) < 0 && errno == EINTR)
        ;
    assert_int_equal(r, 1); /* 0: hung */
}

/* Reads exactly len bytes (nonblocking fd), then returns. */
static void s_read_exact(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            s_wait(fd, POLLIN);
            continue;
        }
        assert_true(n > 0);
        got += (size_t) n;
    }
}

/* The next read sees the end (0), after waiting for it if need be. */
static void s_expect_eof(int fd)
{
    uint8_t b;
    for (;;) {
        ssize_t n = read(fd, &b, 1);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            s_wait(fd, POLLIN);
            continue;
        }
        assert_int_equal(n, 0);
        return;
    }
}

/* The connection ended, orderly (0) or reset (a peer closed with bytes it
 * never read), after waiting for it if need be. */
static void s_expect_end(int fd)
{
    uint8_t b;
    for (;;) {
        ssize_t n = read(fd, &b, 1);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            s_wait(fd, POLLIN);
            continue;
        }
        assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
        return;
    }
}

/* ---------------------------------------------------------------- registry */

static void test_bind_dial(void **state)
{
    (void) state;
    router_inproc_t *ns = router_inproc_new();
    assert_non_null(ns);
    s_acc_t acc = {0};
    assert_int_equal(router_inproc_bind(ns, "a", s_accept, &acc), 0);
    int c = router_inproc_dial(ns, "a");
    assert_true(c >= 0);
    assert_int_equal(acc.n, 1);
    assert_int_equal(write(c, "hi", 2), 2);
    uint8_t buf[2];
    s_read_exact(acc.fds[0], buf, 2);
    assert_memory_equal(buf, "hi", 2);
    close(c);
    s_expect_eof(acc.fds[0]);
    s_acc_close(&acc);
    router_inproc_unbind(ns, "a");
    router_inproc_unbind(ns, "a"); /* unbinding twice is harmless */
    router_inproc_destroy(&ns);
    assert_null(ns);
    router_inproc_destroy(&ns);
}

static void test_refusals(void **state)
{
    (void) state;
    router_inproc_t *ns = router_inproc_new();
    assert_non_null(ns);
    s_acc_t acc = {0};
    char lng[ROUTER_INPROC_NAME_MAX + 2];
    memset(lng, 'n', sizeof lng - 1);
    lng[sizeof lng - 1] = '\0';
    const char *bad[] = {NULL, "", lng};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        errno = 0;
        assert_int_equal(router_inproc_bind(ns, bad[i], s_accept, &acc), -1);
        assert_int_equal(errno, EINVAL);
    }
    assert_int_equal(router_inproc_bind(ns, "a", NULL, &acc), -1);
    assert_int_equal(errno, EINVAL);
    lng[ROUTER_INPROC_NAME_MAX] = '\0'; /* the longest name is fine */
    assert_int_equal(router_inproc_bind(ns, lng, s_accept, &acc), 0);
    assert_int_equal(router_inproc_bind(ns, lng, s_accept, &acc), -1);
    assert_int_equal(errno, EADDRINUSE);
    /* Nobody there; then an acceptor that refuses: no descriptor stays. */
    int before = s_open_fds();
    assert_int_equal(router_inproc_dial(ns, "nobody"), -1);
    assert_int_equal(errno, ECONNREFUSED);
    acc.refuse = true;
    assert_int_equal(router_inproc_dial(ns, lng), -1);
    assert_int_equal(errno, ECONNREFUSED);
    assert_int_equal(s_open_fds(), before);
    router_inproc_unbind(ns, lng);
    router_inproc_destroy(&ns);
    /* Faults need a faulty namespace. */
    bool part = true;
    uint32_t delay = 1;
    ns = router_inproc_new();
    assert_int_equal(router_inproc_set_faults(ns, "a", "b", true, 0), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_inproc_get_faults(ns, "a", "b", &part, &delay), -1);
    assert_int_equal(errno, EINVAL);
    router_inproc_destroy(&ns);
    ns = router_inproc_new_faulty();
    assert_non_null(ns);
    assert_int_equal(router_inproc_set_faults(ns, "a", "b", false, ROUTER_INPROC_DELAY_MAX + 1),
                     -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_inproc_set_faults(ns, "a", lng, false, 1), 0);
    char over[ROUTER_INPROC_NAME_MAX + 2];
    memset(over, 'o', sizeof over - 1);
    over[sizeof over - 1] = '\0';
    assert_int_equal(router_inproc_set_faults(ns, "a", over, true, 0), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_inproc_set_faults(ns, NULL, "b", true, 0), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_inproc_get_faults(ns, "x", "y", &part, &delay), 0);
    assert_false(part);
    assert_int_equal(delay, 0);
    router_inproc_destroy(&ns);
}

/* Every allocation of making a namespace, binding and dialing through a
 * relay fails in turn: each run refuses cleanly (NULL or -1 with ENOMEM)
 * or succeeds, leaking neither memory (LSan) nor a descriptor; a dial
 * refused after the acceptor took its end shows that end closed. */
static void test_without_memory(void **state)
{
    (void) state;
    int before = s_open_fds();
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        s_acc_t acc = {0};
        int c = -1;
        alloc_fail_arm(i);
        router_inproc_t *ns = router_inproc_new_faulty();
        int bound = ns ? router_inproc_bind(ns, "a", s_accept, &acc) : -1;
        int bind_errno = errno;
        if (bound == 0)
            c = router_inproc_dial_from(ns, "b", "a");
        int dial_errno = errno;
        unsigned failed = alloc_fail_disarm();
        if (!ns) {
            assert_int_equal(failed, 1);
        } else if (bound != 0) {
            assert_int_equal(bind_errno, ENOMEM);
        } else if (c < 0) {
            assert_int_equal(dial_errno, ENOMEM);
            assert_int_equal(acc.n, 1);
            s_expect_eof(acc.fds[0]); /* the half-made connection is seen to end */
        } else {
            assert_int_equal(write(c, "x", 1), 1);
            uint8_t b;
            s_read_exact(acc.fds[0], &b, 1);
            close(c);
        }
        s_acc_close(&acc);
        if (ns)
            router_inproc_unbind(ns, "a");
        router_inproc_destroy(&ns);
        assert_int_equal(s_open_fds(), before);
        if (failed == 0)
            return;
    }
    fail_msg("the allocation sweep never ended");
}

/* ---------------------------------------------------------------- relay */

typedef struct {
    router_inproc_t *ns;
    s_acc_t acc;
    int dialer; /* the dialer's end */
    int server; /* the acceptor's end */
} s_pair_t;

static void s_pair_open(s_pair_t *p)
{
    memset(p, 0, sizeof *p);
    p->ns = router_inproc_new_faulty();
    assert_non_null(p->ns);
    assert_int_equal(router_inproc_bind(p->ns, "srv", s_accept, &p->acc), 0);
    p->dialer = router_inproc_dial_from(p->ns, "cli", "srv");
    assert_true(p->dialer >= 0);
    assert_int_equal(p->acc.n, 1);
    p->server = p->acc.fds[0];
}

static void s_pair_close(s_pair_t *p)
{
    if (p->dialer >= 0)
        close(p->dialer);
    s_acc_close(&p->acc);
    router_inproc_unbind(p->ns, "srv");
    router_inproc_destroy(&p->ns);
}

/* A peer that writes half a frame and vanishes: the other end gets the
 * half, then the end of the stream (its parser then fails the frame),
 * never a hang. */
static void test_relay_peer_vanishes_mid_frame(void **state)
{
    (void) state;
    s_pair_t p;
    s_pair_open(&p);
    const uint8_t half[] = {0, 0, 1, 0, 0xa5, 0x62, 0x69}; /* says 256 bytes follow */
    assert_int_equal(write(p.dialer, half, sizeof half), (ssize_t) sizeof half);
    close(p.dialer);
    p.dialer = -1;
    uint8_t got[sizeof half];
    s_read_exact(p.server, got, sizeof got);
    assert_memory_equal(got, half, sizeof half);
    s_expect_eof(p.server);
    /* The other way too: the acceptor vanishes, the dialer sees the end. */
    s_pair_t q;
    s_pair_open(&q);
    assert_int_equal(write(q.server, half, 3), 3);
    close(q.acc.fds[0]);
    q.acc.n = 0;
    s_read_exact(q.dialer, got, 3);
    s_expect_eof(q.dialer);
    s_pair_close(&q);
    s_pair_close(&p);
}

/* The reader is gone and the writer goes on: the relay drops what it can
 * no longer deliver instead of holding it, so the writer is never stuck on
 * a full queue, and sees the end of the reverse direction. */
static void test_relay_reader_gone(void **state)
{
    (void) state;
    s_pair_t p;
    s_pair_open(&p);
    close(p.acc.fds[0]);
    p.acc.n = 0;
    s_expect_eof(p.dialer);
    static uint8_t chunk[64 * 1024];
    size_t total = 0, target = 3u * ROUTER_INPROC_HELD_MAX;
    while (total < target) {
        ssize_t n = send(p.dialer, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            s_wait(p.dialer, POLLOUT); /* the relay drains it */
            continue;
        }
        if (n < 0) { /* the relay passed the reader's end on: as good */
            assert_true(errno == EPIPE || errno == ECONNRESET);
            break;
        }
        total += (size_t) n;
    }
    s_pair_close(&p);
}

/* Writes as much as the dialer's end takes without blocking, up to cap
 * (then a little more): a relay with no bound would take everything. */
static size_t s_fill(int fd, uint32_t *counter, size_t cap)
{
    size_t total = 0;
    uint32_t buf[4096];
    while (total <= cap) {
        for (size_t i = 0; i < sizeof buf / sizeof *buf; i++)
            buf[i] = *counter + (uint32_t) i;
        ssize_t n = send(fd, buf, sizeof buf, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            /* The relay may still be taking bytes: call it full when
             * nothing more goes for a while. Stopping early only makes the
             * test weaker, never wrong: what it checks is the upper bound. */
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            if (poll(&pf, 1, 200) == 0)
                return total;
            continue;
        }
        assert_true(n > 0);
        /* Whole words only (the socket takes them in multiples here). */
        assert_int_equal(n % 4, 0);
        *counter += (uint32_t) n / 4;
        total += (size_t) n;
    }
    return total;
}

/* What a held direction may take in all: the relay's bound and, generously,
 * what the two socket pairs buffer. */
#define S_HELD_ROOM (ROUTER_INPROC_HELD_MAX + 16u * 1024 * 1024)

/* A delay holds chunks up to the per-direction bound and no further: past
 * it the writer is pushed back (its own send limit then applies); released,
 * every byte arrives in order. */
static void test_relay_held_bound(void **state)
{
    (void) state;
    s_pair_t p;
    s_pair_open(&p);
    assert_int_equal(router_inproc_set_faults(p.ns, "cli", "srv", false,
                                              ROUTER_INPROC_DELAY_MAX), 0);
    bool part = true;
    uint32_t delay = 0;
    assert_int_equal(router_inproc_get_faults(p.ns, "srv", "cli", &part, &delay), 0);
    assert_false(part);
    assert_int_equal(delay, ROUTER_INPROC_DELAY_MAX);
    uint32_t counter = 0;
    size_t sent = s_fill(p.dialer, &counter, S_HELD_ROOM);
    /* The relay's bound plus what the two socket pairs buffer, no more. */
    assert_true(sent > 0);
    assert_true(sent <= S_HELD_ROOM);
    uint8_t probe;
    assert_int_equal(read(p.server, &probe, 1), -1); /* nothing passed the delay */
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(router_inproc_set_faults(p.ns, "cli", "srv", false, 0), 0);
    static uint32_t got[S_HELD_ROOM / 4 + 4096];
    s_read_exact(p.server, (uint8_t *) got, sent);
    for (size_t i = 0; i < sent / 4; i++)
        if (got[i] != (uint32_t) i)
            fail_msg("word %zu is %u", i, got[i]);
    s_pair_close(&p);
}

/* A partition holds bytes and the end of a peer that vanished meanwhile;
 * healed, both arrive, in order. */
static void test_relay_partition_holds_end(void **state)
{
    (void) state;
    s_pair_t p;
    s_pair_open(&p);
    assert_int_equal(router_inproc_set_faults(p.ns, "srv", "cli", true, 0), 0);
    assert_int_equal(write(p.dialer, "abc", 3), 3);
    close(p.dialer);
    p.dialer = -1;
    uint8_t b[3];
    assert_int_equal(read(p.server, b, 1), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(router_inproc_set_faults(p.ns, "srv", "cli", false, 0), 0);
    s_read_exact(p.server, b, 3);
    assert_memory_equal(b, "abc", 3);
    s_expect_eof(p.server);
    s_pair_close(&p);
}

/* The relay thread's allocation after this many more that succeed fails
 * (-1: none); read by the seam below when a relay thread starts. */
static _Atomic long s_relay_skip = -1;

void router_inproc_relay_thread_started(void)
{
    long skip = atomic_load(&s_relay_skip);
    if (skip >= 0)
        alloc_fail_arm(skip);
}

/* The relay thread out of memory at each of its first allocations in turn
 * (its poll set, then the chunk of the first bytes read): where it cannot
 * hold bytes it cuts the connection, so both ends see the end at once,
 * never a reader waiting for bytes that are gone (its frame deadline) nor
 * a writer writing into a stream nobody reads; elsewhere the bytes arrive. */
static void test_relay_without_memory(void **state)
{
    (void) state;
    unsigned cuts = 0;
    for (long skip = 0; skip < 4; skip++) {
        atomic_store(&s_relay_skip, skip);
        s_pair_t p;
        s_pair_open(&p); /* its relay thread reads the skip when it starts */
        assert_int_equal(write(p.dialer, "abc", 3), 3);
        uint8_t b[3];
        ssize_t n;
        while ((n = read(p.server, b, sizeof b)) < 0 && (errno == EAGAIN || errno == EINTR))
            s_wait(p.server, POLLIN);
        if (n > 0) { /* carried: all of it, in order */
            if (n < 3)
                s_read_exact(p.server, b + n, (size_t) (3 - n));
            assert_memory_equal(b, "abc", 3);
        } else { /* cut: the reader saw the end, and so does the writer */
            assert_true(n == 0 || errno == ECONNRESET);
            cuts++;
            s_expect_end(p.dialer);
            assert_int_equal(send(p.dialer, "d", 1, MSG_NOSIGNAL), -1);
            assert_true(errno == EPIPE || errno == ECONNRESET);
        }
        s_pair_close(&p); /* joins the relay thread */
        atomic_store(&s_relay_skip, -1);
    }
    assert_true(cuts > 0); /* the chunk's allocation was reached */
}

/* Destroyed with connections still carried, and one just added: nothing
 * leaks (LSan), every relay descriptor is closed. */
static void test_relay_destroy_with_links(void **state)
{
    (void) state;
    int before = s_open_fds();
    router_inproc_t *ns = router_inproc_new_faulty();
    assert_non_null(ns);
    s_acc_t acc = {0};
    assert_int_equal(router_inproc_bind(ns, "srv", s_accept, &acc), 0);
    assert_int_equal(router_inproc_set_faults(ns, "cli", "srv", true, 0), 0);
    int c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = router_inproc_dial_from(ns, "cli", "srv");
        assert_true(c[i] >= 0);
        assert_int_equal(write(c[i], "held", 4), 4);
    }
    router_inproc_unbind(ns, "srv");
    router_inproc_destroy(&ns);
    for (int i = 0; i < 3; i++) {
        s_expect_end(c[i]);
        close(c[i]);
    }
    for (size_t i = 0; i < acc.n; i++)
        s_expect_end(acc.fds[i]);
    s_acc_close(&acc);
    assert_int_equal(s_open_fds(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bind_dial),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_without_memory),
        cmocka_unit_test(test_relay_peer_vanishes_mid_frame),
        cmocka_unit_test(test_relay_reader_gone),
        cmocka_unit_test(test_relay_held_bound),
        cmocka_unit_test(test_relay_partition_holds_end),
        cmocka_unit_test(test_relay_destroy_with_links),
        cmocka_unit_test(test_relay_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
