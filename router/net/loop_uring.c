/* router/net/loop_uring.c — the io_uring backend (liburing 2.3).
 *
 * Per opcode:
 * - ACCEPT: no request names a listening socket (it would outlive a killed
 *   process, see "listeners"): one multishot poll on an epoll set of the
 *   listeners, then nonblocking accept4(); EMFILE and friends take the
 *   listener out of the set for a moment.
 *   A poll the kernel ends with an error is armed again after 10 ms.
 * - RECV: one multishot recv per connection reading into a ring of provided
 *   buffers (IOSQE_BUFFER_SELECT); the buffer id comes back in the CQE
 *   flags and the buffer returns to the ring right after on_data. -ENOBUFS
 *   (ring empty) or a missing F_MORE re-arms it; pausing cancels it.
 * - SEND: at most one send in flight per connection: a plain send for one
 *   queued block, a sendmsg over up to 16; a short write re-submits the
 *   rest.
 * - CONNECT: prep_connect on a nonblocking socket.
 * - POLL: multishot poll for watches (edge-triggered), re-armed when it ends
 *   (after 10 ms when the kernel ended it for want of memory).
 * user_data is the object's address with the opcode in its low bits; an
 * object is freed only once all its requests have completed (inflight).
 * Kernels without multishot recv get single-shot receives re-armed after
 * each completion.
 * Each wait dispatches at most ROUTER_LOOP_BATCH completions and
 * ROUTER_LOOP_BATCH_BYTES of received data (loop.h, "Fairness"); the rest
 * stay in the ring for the next iteration. */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/log.h"
#include "router/net/loop_internal.h"

/* Submission and completion queue sizes. */
#define S_SQ_ENTRIES 1024
#define S_CQ_ENTRIES 8192
/* The one provided-buffer group. */
#define S_BGID 0
/* Connections accepted per listener per wake-up, so one busy listener
 * cannot starve the connections already open. */
#define S_ACCEPT_BURST 64
/* Ready listeners taken from their epoll set per call. */
#define S_ACCEPT_EVENTS 32
/* How long destroy waits for cancelled requests to complete. */
#define S_DRAIN_MS 1000
/* How long a poll the kernel ended with a passing error (no memory) waits
 * before it is armed again: at once, an error the kernel repeats would
 * spin the loop. */
#define S_REARM_MS 10
/* IORING_NOP_INJECT_RESULT (Linux 6.10), newer than liburing 2.3's header. */
#define S_NOP_INJECT_RESULT (1u << 0)

typedef struct s_uring {
    struct io_uring ring;          /* the ring */
    bool enabled;                  /* false until the first wait when set up R_DISABLED */
    unsigned inflight;             /* requests of every object still in flight */
    struct io_uring_buf_ring *br;  /* the provided-buffer ring */
    size_t br_bytes;               /* its mapping's size */
    uint8_t *bufs;                 /* the buffers, buf_count × buf_size */
    size_t bufs_bytes;             /* their mapping's size */
    unsigned buf_size;             /* bytes per buffer */
    unsigned buf_count;            /* buffers (power of two) */
    bool recv_oneshot;             /* kernel refused multishot recv (< 6.0) */
    int accept_ep;                 /* epoll set of the listeners (see "listeners") */
    bool accept_polled;            /* a multishot poll on accept_ep is in flight */
    bool accept_again;             /* a listener may have connections waiting */
    bool watch_rearm;              /* a live watch's poll ended and was not armed again */
    uint64_t watch_rearm_at;       /* ...not before this (monotonic ms; 0: at once) */
    uint64_t accept_rearm_at;      /* the accept poll failed: armed again then, 0 if not */
    uint64_t accept_logged_ms;     /* when its failure was last logged (at most once a second) */
} s_uring_t;

static s_uring_t *s_u(const router_loop_t *loop)
{
    return loop->be_data;
}

/* The test seam for a submission queue that cannot be drained (the kernel
 * refuses io_uring_enter while its completion queue overflows): a weak
 * definition that refuses nothing, which the unit tests replace
 * (tests/uring_fail.h) to run every path below that finds no SQE. */
__attribute__((weak)) bool router_uring_sqe_refused(void)
{
    return false;
}

/* The test seam for what io_uring_enter answers a wait: a weak definition
 * that passes the kernel's answer on, which tests/loop_uring_test.c
 * replaces to return the errors a kernel gives rarely (-EBADR). */
int router_uring_wait_fault(int rc);
__attribute__((weak)) int router_uring_wait_fault(int rc)
{
    return rc;
}

/* The test seam for a request the kernel ends with an error: a weak
 * definition that fails nothing, which tests/loop_uring_test.c replaces.
 * A nonzero answer (-errno) turns the request about to be queued into a
 * NOP that the kernel completes, under the request's own tag and without
 * IORING_CQE_F_MORE, with that result: the completion a poll ended by the
 * kernel brings. */
int router_uring_op_fault(int op);
__attribute__((weak)) int router_uring_op_fault(int op)
{
    (void) op;
    return 0;
}

/* True if the seam asked for op to fail: sqe is then that NOP. */
static bool s_prep_fault(struct io_uring_sqe *sqe, router_op_t op)
{
    int res = router_uring_op_fault((int) op);
    if (res == 0)
        return false;
    io_uring_prep_nop(sqe);
    sqe->rw_flags = S_NOP_INJECT_RESULT;
    sqe->len = (unsigned) res;
    return true;
}

/* An SQE, submitting what is queued if the SQ is full. NULL if none can be
 * had (the ring is not enabled yet, or the kernel is backed up). */
static struct io_uring_sqe *s_sqe(s_uring_t *u)
{
    if (router_uring_sqe_refused())
        return NULL;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (sqe || !u->enabled)
        return sqe;
    (void) io_uring_submit(&u->ring);
    return io_uring_get_sqe(&u->ring);
}

/* Queues a cancel for the request tagged `tag`; its completion is ignored. */
static bool s_cancel(s_uring_t *u, uint64_t tag)
{
    struct io_uring_sqe *sqe = s_sqe(u);
    if (!sqe)
        return false;
    io_uring_prep_cancel64(sqe, tag, 0);
    io_uring_sqe_set_data64(sqe, router_op_pack(NULL, ROUTER_OP_IGNORE));
    return true;
}

/* A relative timeout for io_uring, normalised (tv_nsec below a second). */
static struct __kernel_timespec s_timeout(uint64_t ms)
{
    return (struct __kernel_timespec){.tv_sec = (long long) (ms / 1000u),
                                      .tv_nsec = (long long) (ms % 1000u) * 1000000};
}

/* ------------------------------------------------------------ setup */

static int s_ring_init(s_uring_t *u)
{
    /* Fastest first: one issuer with deferred task work (6.1+), started
     * disabled so the thread that runs the loop becomes its issuer; then
     * plain setups for older kernels. */
    static const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED |
            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
        IORING_SETUP_CQSIZE,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = flag_sets[i];
        p.cq_entries = S_CQ_ENTRIES;
        rc = io_uring_queue_init_params(S_SQ_ENTRIES, &u->ring, &p);
        if (rc == 0) {
            u->enabled = !(p.flags & IORING_SETUP_R_DISABLED);
            return 0;
        }
        if (rc != -EINVAL)
            return rc; /* ENOSYS, EPERM (seccomp, sysctl), ENOMEM: no retry helps */
    }
    return rc;
}

static int s_bufs_init(s_uring_t *u, unsigned size, unsigned count)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t ps = page > 0 ? (size_t) page : 4096;
    u->buf_size = size;
    u->buf_count = count;
    u->br_bytes = ((count * sizeof(struct io_uring_buf)) + ps - 1) / ps * ps;
    u->bufs_bytes = ((size_t) size * count + ps - 1) / ps * ps;
    void *br = mmap(NULL, u->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED)
        return -errno;
    u->br = br;
    void *bufs = mmap(NULL, u->bufs_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (bufs == MAP_FAILED)
        return -errno;
    u->bufs = bufs;
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t) (uintptr_t) u->br;
    reg.ring_entries = count;
    reg.bgid = S_BGID;
    int rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    if (rc < 0)
        return rc;
    io_uring_buf_ring_init(u->br);
    int mask = io_uring_buf_ring_mask(count);
    for (unsigned i = 0; i < count; i++)
        io_uring_buf_ring_add(u->br, u->bufs + (size_t) i * size, size, (unsigned short) i, mask,
                              (int) i);
    io_uring_buf_ring_advance(u->br, (int) count);
    return 0;
}

static void s_free(s_uring_t *u, bool ring_up)
{
    if (ring_up)
        io_uring_queue_exit(&u->ring);
    if (u->accept_ep >= 0)
        close(u->accept_ep);
    if (u->bufs)
        munmap(u->bufs, u->bufs_bytes);
    if (u->br)
        munmap(u->br, u->br_bytes);
    free(u);
}

static int s_init(router_loop_t *loop)
{
    s_uring_t *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->accept_ep = epoll_create1(EPOLL_CLOEXEC);
    if (u->accept_ep < 0) {
        int err = errno;
        free(u);
        return -err;
    }
    int rc = s_ring_init(u);
    if (rc < 0) {
        s_free(u, false);
        return rc;
    }
    rc = s_bufs_init(u, loop->opts.recv_buf_size, loop->opts.recv_buf_count);
    if (rc < 0) {
        s_free(u, true); /* no provided-buffer rings (< 5.19): use epoll */
        return rc;
    }
    loop->be_data = u;
    return 0;
}

static size_t s_dispatch(router_loop_t *loop, const struct io_uring_cqe *cqe);

/* Cancels whatever is still in flight and waits (bounded) for the
 * completions, so no request outlives the memory it points into. */
static void s_fini(router_loop_t *loop)
{
    s_uring_t *u = s_u(loop);
    if (!u)
        return;
    if (u->enabled) {
        bool cancelled = false;
        uint64_t deadline = router_loop_now_ms(loop) + S_DRAIN_MS;
        int rc = 0;
        while (u->inflight > 0) {
            /* Asked again each round while no SQE can be had: the
             * completions reaped below make room. */
            struct io_uring_sqe *sqe = cancelled ? NULL : s_sqe(u);
            if (sqe) {
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
                io_uring_sqe_set_data64(sqe, router_op_pack(NULL, ROUTER_OP_IGNORE));
                cancelled = true;
            }
            uint64_t now = router_loop_now_ms(loop);
            if (now >= deadline)
                break;
            struct __kernel_timespec ts = s_timeout(deadline - now);
            struct io_uring_cqe *cqe;
            rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
            if (rc < 0 && rc != -ETIME && rc != -EINTR)
                break;
            while (io_uring_peek_cqe(&u->ring, &cqe) == 0) {
                struct io_uring_cqe copy = *cqe;
                io_uring_cqe_seen(&u->ring, cqe);
                s_dispatch(loop, &copy);
            }
        }
        /* Never silent: requests left in flight may still touch buffers
         * about to be freed (EEXIST: not the thread that ran the loop). */
        if (u->inflight > 0)
            ROUTER_LOG(ROUTER_LOG_ERROR, "loop",
                       "io_uring teardown: %u requests not drained (%s); the kernel cancels "
                       "them as the ring closes",
                       u->inflight, rc < 0 && rc != -ETIME && rc != -EINTR ? strerror(-rc)
                                                                         : "timed out");
    }
    s_free(u, true);
    loop->be_data = NULL;
}

/* ------------------------------------------------------------ listeners */

/* Listening sockets are never named in an io_uring request. A request holds
 * a reference to its file, and when a process dies the kernel tears its
 * ring down asynchronously (a workqueue, ~10 ms here): a pending multishot
 * accept kept the listening socket open — accepting into its backlog and
 * resetting those connections when it finally closed — after the process
 * was reaped, so an immediate restart failed with EADDRINUSE (WIRE §9.2).
 * Instead the listeners sit in an epoll set (which holds no reference: the
 * last close removes the socket from it), the ring polls that epoll fd, and
 * ready listeners are drained with nonblocking accept4(). The set is
 * edge-triggered; a listener left ready by the per-wake burst is retried
 * before the next wait (accept_again). */

static int s_accept_arm(s_uring_t *u)
{
    if (u->accept_polled)
        return 0;
    struct io_uring_sqe *sqe = s_sqe(u);
    if (!sqe)
        return -EBUSY;
    if (!s_prep_fault(sqe, ROUTER_OP_ACCEPT))
        io_uring_prep_poll_multishot(sqe, u->accept_ep, POLLIN);
    io_uring_sqe_set_data64(sqe, router_op_pack(u, ROUTER_OP_ACCEPT));
    u->accept_polled = true;
    u->inflight++;
    return 0;
}

static int s_listener_start(router_listener_t *l)
{
    s_uring_t *u = s_u(l->loop);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = l};
    if (epoll_ctl(u->accept_ep, l->be_added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, l->fd, &ev) != 0)
        return -errno;
    l->be_added = true;
    u->accept_again = true; /* connections may be queued already */
    /* No SQE now is no failure: with accept_again set, the loop accepts
     * and arms the poll after its next wait. */
    (void) s_accept_arm(u);
    return 0;
}

static void s_listener_stop(router_listener_t *l)
{
    if (l->be_added && l->fd >= 0)
        (void) epoll_ctl(s_u(l->loop)->accept_ep, EPOLL_CTL_DEL, l->fd, NULL);
    l->be_added = false;
}

static bool s_listener_busy(const router_listener_t *l)
{
    (void) l;
    return false; /* no request ever names a listener */
}

/* Accepts up to S_ACCEPT_BURST connections on l; leaves accept_again set
 * if l may have more. */
static void s_listener_drain(s_uring_t *u, router_listener_t *l)
{
    if (l->be_added && router_listener_accept_burst(l, S_ACCEPT_BURST))
        u->accept_again = true;
}

/* Accepts on the listeners the epoll set reports, and on all of them when
 * a burst was cut short last time. */
static void s_listeners_accept(router_loop_t *loop)
{
    s_uring_t *u = s_u(loop);
    bool again = u->accept_again;
    u->accept_again = false;
    struct epoll_event evs[S_ACCEPT_EVENTS];
    int n = epoll_wait(u->accept_ep, evs, S_ACCEPT_EVENTS, 0);
    for (int i = 0; i < n; i++)
        s_listener_drain(u, evs[i].data.ptr);
    if (n == S_ACCEPT_EVENTS)
        again = true; /* more ready than one call returns */
    if (again)
        for (router_listener_t *l = loop->listeners, *next; l; l = next) {
            next = l->next; /* on_accept may close l */
            s_listener_drain(u, l);
        }
}

static void s_on_accept(router_loop_t *loop, const struct io_uring_cqe *cqe)
{
    s_uring_t *u = s_u(loop);
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        u->accept_polled = false;
        u->inflight--;
    }
    if (loop->destroying)
        return; /* the teardown's cancel */
    if (cqe->res < 0) {
        /* Armed again after a pause, whatever the error (ECANCELED too:
         * only the teardown cancels it): never, and every listener was
         * deaf for good; at once, an error the kernel repeats spun the
         * loop and logged a line per turn. Connections wait meanwhile in
         * their backlog. */
        uint64_t now = router_loop_now_ms(loop);
        if (!u->accept_logged_ms || now - u->accept_logged_ms >= 1000) {
            ROUTER_LOG(ROUTER_LOG_WARN, "loop",
                       "poll on the listeners failed (%s): re-arming in %d ms",
                       strerror(-cqe->res), S_REARM_MS);
            u->accept_logged_ms = now;
        }
        if (!u->accept_polled)
            u->accept_rearm_at = now + S_REARM_MS;
        return;
    }
    s_listeners_accept(loop);
    if (!u->accept_polled && s_accept_arm(u) < 0)
        u->accept_again = true; /* no SQE now: try again before the next wait */
}

/* ------------------------------------------------------------ connections */

static void s_buf_recycle(s_uring_t *u, unsigned bid)
{
    io_uring_buf_ring_add(u->br, u->bufs + (size_t) bid * u->buf_size, u->buf_size,
                          (unsigned short) bid, io_uring_buf_ring_mask(u->buf_count), 0);
    io_uring_buf_ring_advance(u->br, 1);
}

static bool s_recv_arm(router_conn_t *c)
{
    s_uring_t *u = s_u(c->loop);
    struct io_uring_sqe *sqe = s_sqe(u);
    if (!sqe)
        return false;
    if (s_prep_fault(sqe, ROUTER_OP_RECV)) {
        /* the seam's NOP: no buffer to select */
    } else {
        if (u->recv_oneshot)
            io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
        else
            io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = S_BGID;
    }
    io_uring_sqe_set_data64(sqe, router_op_pack(c, ROUTER_OP_RECV));
    c->be.u.inflight++;
    c->be.u.recv_armed = true;
    c->be.u.recv_cancelled = false;
    u->inflight++;
    return true;
}

static void s_conn_sync(router_conn_t *c)
{
    router_conn_uring_t *cu = &c->be.u;
    if (c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CONNECTING)
        return;
    bool want = router_conn_wants_read(c);
    if (want && !cu->recv_armed) {
        if (!s_recv_arm(c))
            router_conn_on_error(c, EBUSY);
    } else if (!want && cu->recv_armed && !cu->recv_cancelled) {
        if (s_cancel(s_u(c->loop), router_op_pack(c, ROUTER_OP_RECV)))
            cu->recv_cancelled = true;
    }
}

static int s_conn_connect(router_conn_t *c)
{
    s_uring_t *u = s_u(c->loop);
    struct io_uring_sqe *sqe = s_sqe(u);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_connect(sqe, c->fd, &c->peer.u.sa, c->peer.len);
    io_uring_sqe_set_data64(sqe, router_op_pack(c, ROUTER_OP_CONNECT));
    c->be.u.inflight++;
    c->be.u.connect_armed = true;
    u->inflight++;
    return 0;
}

static void s_conn_flush(router_conn_t *c)
{
    router_conn_uring_t *cu = &c->be.u;
    if (c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CONNECTING ||
        cu->send_armed || c->wq_bytes == 0)
        return;
    s_uring_t *u = s_u(c->loop);
    struct io_uring_sqe *sqe = s_sqe(u);
    if (!sqe) {
        router_conn_on_error(c, EBUSY);
        return;
    }
    /* The kernel reads msg and iov at issue time, and the queued blocks
     * until completion: appends only touch bytes past these pieces. One
     * piece (a queue that is drained as fast as it fills: the common case)
     * goes as a plain send, which spares the kernel copying and walking a
     * msghdr for every message. */
    struct iovec *iov = cu->iov;
    int max = ROUTER_CONN_IOV_MAX;
    if (c->wq_blocks > ROUTER_CONN_IOV_MAX &&
        (c->iov_big = malloc(ROUTER_CONN_IOV_BIG * sizeof *c->iov_big))) {
        iov = c->iov_big; /* freed when the send completes; without it, 16 pieces */
        max = ROUTER_CONN_IOV_BIG;
    }
    int n = router_conn_wq_iov(c, iov, max);
    if (n == 1) {
        io_uring_prep_send(sqe, c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        memset(&cu->msg, 0, sizeof cu->msg);
        cu->msg.msg_iov = iov;
        cu->msg.msg_iovlen = (size_t) n;
        io_uring_prep_sendmsg(sqe, c->fd, &cu->msg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, router_op_pack(c, ROUTER_OP_SEND));
    cu->inflight++;
    cu->send_armed = true;
    u->inflight++;
}

static void s_conn_kill(router_conn_t *c)
{
    router_conn_uring_t *cu = &c->be.u;
    s_uring_t *u = s_u(c->loop);
    bool ok = true;
    if (cu->recv_armed && !cu->recv_cancelled)
        ok &= s_cancel(u, router_op_pack(c, ROUTER_OP_RECV));
    if (cu->send_armed)
        ok &= s_cancel(u, router_op_pack(c, ROUTER_OP_SEND));
    if (cu->connect_armed)
        ok &= s_cancel(u, router_op_pack(c, ROUTER_OP_CONNECT));
    cu->recv_cancelled = true;
    if (!ok && c->fd >= 0)
        (void) shutdown(c->fd, SHUT_RDWR); /* no SQE: make the requests end by themselves */
}

static bool s_conn_busy(const router_conn_t *c)
{
    return c->be.u.inflight > 0;
}

/* Returns the bytes delivered. */
static size_t s_on_recv(router_loop_t *loop, router_conn_t *c, const struct io_uring_cqe *cqe)
{
    s_uring_t *u = s_u(loop);
    router_conn_uring_t *cu = &c->be.u;
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        cu->inflight--;
        cu->recv_armed = false;
        cu->recv_cancelled = false;
        u->inflight--;
    }
    int res = cqe->res;
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    bool has_buf = (cqe->flags & IORING_CQE_F_BUFFER) && bid < u->buf_count;
    size_t delivered = 0;
    if (res > 0 && has_buf) {
        delivered = router_conn_on_read(c, u->bufs + (size_t) bid * u->buf_size, (size_t) res);
    } else if (res == 0) {
        router_conn_on_eof(c);
    } else if (res == -ENOBUFS) {
        loop->stats.recv_nobufs++; /* buffers are back by now: re-armed below */
    } else if (res == -EINVAL && !u->recv_oneshot && c->state != ROUTER_CONN_DEAD) {
        u->recv_oneshot = true;
        ROUTER_LOG(ROUTER_LOG_INFO, "loop", "no multishot recv: re-arming single receives");
    } else if (res < 0 && res != -ECANCELED && res != -EAGAIN && res != -EINTR) {
        router_conn_on_error(c, -res);
    }
    /* Back to the ring only now: on_data has returned. */
    if (has_buf)
        s_buf_recycle(u, bid);
    if (!more && c->state != ROUTER_CONN_DEAD)
        s_conn_sync(c);
    return delivered; /* parked bytes cost a copy, not a parse: not counted */
}

static void s_on_send(router_loop_t *loop, router_conn_t *c, const struct io_uring_cqe *cqe)
{
    s_uring_t *u = s_u(loop);
    c->be.u.inflight--;
    c->be.u.send_armed = false;
    u->inflight--;
    free(c->iov_big); /* the kernel is done with the pieces */
    c->iov_big = NULL;
    if (c->state == ROUTER_CONN_DEAD)
        return;
    if (cqe->res == -EAGAIN || cqe->res == -EINTR) {
        s_conn_flush(c);
        return;
    }
    if (cqe->res <= 0) {
        router_conn_on_error(c, cqe->res < 0 ? -cqe->res : EPIPE);
        return;
    }
    router_conn_on_sent(c, (size_t) cqe->res);
    if (c->state != ROUTER_CONN_DEAD && c->wq_bytes > 0)
        s_conn_flush(c);
}

static void s_on_connect(router_loop_t *loop, router_conn_t *c, const struct io_uring_cqe *cqe)
{
    s_uring_t *u = s_u(loop);
    c->be.u.inflight--;
    c->be.u.connect_armed = false;
    u->inflight--;
    router_conn_on_connected(c, cqe->res < 0 ? -cqe->res : 0);
}

/* ------------------------------------------------------------ watches */

static unsigned s_poll_mask(unsigned events)
{
    unsigned mask = 0;
    if (events & ROUTER_EV_READ)
        mask |= POLLIN | POLLRDHUP;
    if (events & ROUTER_EV_WRITE)
        mask |= POLLOUT;
    return mask;
}

static int s_watch_start(router_watch_t *w)
{
    s_uring_t *u = s_u(w->loop);
    struct io_uring_sqe *sqe = s_sqe(u);
    if (!sqe)
        return -EBUSY;
    if (!s_prep_fault(sqe, ROUTER_OP_POLL))
        io_uring_prep_poll_multishot(sqe, w->fd, s_poll_mask(w->events));
    io_uring_sqe_set_data64(sqe, router_op_pack(w, ROUTER_OP_POLL));
    w->be.u.inflight++;
    w->be.u.failed = false;
    w->be.u.removing = false;
    u->inflight++;
    return 0;
}

static void s_watch_stop(router_watch_t *w)
{
    s_uring_t *u = s_u(w->loop);
    if (w->be.u.inflight == 0)
        return;
    struct io_uring_sqe *sqe = s_sqe(u);
    if (!sqe)
        return; /* a dead watch's removal is queued again before the next wait */
    io_uring_prep_poll_remove(sqe, router_op_pack(w, ROUTER_OP_POLL));
    io_uring_sqe_set_data64(sqe, router_op_pack(NULL, ROUTER_OP_IGNORE));
    w->be.u.removing = true;
}

/* A poll request holds its file: closing the fd does not end it. A watch
 * destroyed when no SQE could be had would keep its poll (and the file,
 * and its own memory) until the ring closes, so its removal is queued
 * again here, before each wait, until one is. */
static void s_watch_retry_stops(router_loop_t *loop)
{
    for (router_watch_t *w = loop->dead_watches; w; w = w->next)
        if (w->be.u.inflight > 0 && !w->be.u.removing)
            s_watch_stop(w);
}

/* Remove then add: SQEs are issued in order, so the remove always finds the
 * newest poll and the old one's final completion does not re-arm (another
 * is in flight). */
static int s_watch_update(router_watch_t *w)
{
    s_watch_stop(w);
    return s_watch_start(w);
}

static bool s_watch_busy(const router_watch_t *w)
{
    return w->be.u.inflight > 0;
}

/* Errors that say nothing about the watched file: the kernel was short of
 * memory for the poll, or the like. */
static bool s_poll_err_passing(int res)
{
    return res == -ENOMEM || res == -EAGAIN || res == -EINTR || res == -ENOBUFS ||
           res == -EBUSY;
}

static void s_on_poll(router_loop_t *loop, router_watch_t *w, const struct io_uring_cqe *cqe)
{
    s_uring_t *u = s_u(loop);
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        w->be.u.inflight--;
        u->inflight--;
    }
    bool passing = cqe->res < 0 && s_poll_err_passing(cqe->res);
    if (cqe->res >= 0) {
        unsigned ev = (unsigned) cqe->res, out = 0;
        if (ev & (POLLIN | POLLRDHUP | POLLPRI))
            out |= ROUTER_EV_READ;
        if (ev & POLLOUT)
            out |= ROUTER_EV_WRITE;
        if (ev & (POLLERR | POLLHUP)) {
            out |= ROUTER_EV_ERROR;
            if (w->events & ROUTER_EV_READ)
                out |= ROUTER_EV_READ;
        }
        router_watch_fire(w, out & (w->events | ROUTER_EV_ERROR));
    } else if (cqe->res != -ECANCELED && !passing && !w->dead) {
        w->be.u.failed = true; /* EBADF and the like: re-arming would only fail again */
        router_watch_fire(w, ROUTER_EV_ERROR);
    }
    /* A passing error (no memory for the poll) is no end of the watch: it
     * was reported as one and left unwatched for good — the loop's own
     * eventfd watch ignores the error, so posts from other threads no
     * longer woke an idle loop. It is armed again after a pause. */
    if (passing && !more && !w->dead && w->be.u.inflight == 0) {
        u->watch_rearm = true;
        u->watch_rearm_at = router_loop_now_ms(loop) + S_REARM_MS;
        return;
    }
    /* A poll that ended with no SQE to re-arm it (the kernel ends
     * multishot polls when its completion queue overflows, just when SQEs
     * are refused) is re-armed before a later wait: firing ROUTER_EV_ERROR
     * left it unwatched for good, and the loop's own eventfd with it, so
     * posts from other threads no longer woke an idle loop. */
    if (!more && !w->dead && !w->be.u.failed && w->be.u.inflight == 0 &&
        s_watch_start(w) < 0)
        u->watch_rearm = true;
}

/* Re-arms the live watches whose poll ended while no SQE could be had. */
static void s_watch_retry_starts(router_loop_t *loop)
{
    s_uring_t *u = s_u(loop);
    u->watch_rearm = false;
    for (router_watch_t *w = loop->watches; w; w = w->next)
        if (!w->dead && !w->be.u.failed && w->be.u.inflight == 0 && s_watch_start(w) < 0)
            u->watch_rearm = true;
}

/* ------------------------------------------------------------ waiting */

/* Handles one completion; returns the bytes it delivered to a connection. */
static size_t s_dispatch(router_loop_t *loop, const struct io_uring_cqe *cqe)
{
    void *obj = router_op_obj(cqe->user_data);
    switch (router_op_of(cqe->user_data)) {
    case ROUTER_OP_ACCEPT:
        s_on_accept(loop, cqe);
        break;
    case ROUTER_OP_RECV:
        return s_on_recv(loop, obj, cqe);
    case ROUTER_OP_SEND:
        s_on_send(loop, obj, cqe);
        break;
    case ROUTER_OP_CONNECT:
        s_on_connect(loop, obj, cqe);
        break;
    case ROUTER_OP_POLL:
        s_on_poll(loop, obj, cqe);
        break;
    case ROUTER_OP_IGNORE:
    default:
        break;
    }
    return 0;
}

static int s_wait(router_loop_t *loop, int timeout_ms)
{
    s_uring_t *u = s_u(loop);
    if (!u->enabled) {
        /* The first thread to run the loop becomes the ring's single issuer. */
        int rc = io_uring_register(u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
        if (rc < 0)
            return rc == -1 ? -errno : rc;
        u->enabled = true;
    }
    if (loop->dead_watches)
        s_watch_retry_stops(loop);
    if (u->watch_rearm) {
        uint64_t now = router_loop_now_ms(loop);
        if (now >= u->watch_rearm_at)
            s_watch_retry_starts(loop);
        /* Still none, or pausing: try again soon, not never. */
        int left = u->watch_rearm_at > now ? (int) (u->watch_rearm_at - now) : S_REARM_MS;
        if (u->watch_rearm && (timeout_ms < 0 || timeout_ms > left))
            timeout_ms = left;
    }
    if (u->accept_rearm_at) {
        uint64_t now = router_loop_now_ms(loop);
        if (now >= u->accept_rearm_at) {
            u->accept_rearm_at = 0;
            u->accept_again = true; /* accepted and armed after the wait */
        } else if (timeout_ms < 0 || timeout_ms > (int) (u->accept_rearm_at - now)) {
            timeout_ms = (int) (u->accept_rearm_at - now);
        }
    }
    if (u->accept_again)
        timeout_ms = 0; /* accepted below, after the wait: not a reason to sleep */
    struct io_uring_cqe *cqe;
    int rc;
    if (timeout_ms == 0) {
        rc = io_uring_submit_and_get_events(&u->ring);
    } else if (timeout_ms < 0) {
        rc = io_uring_submit_and_wait(&u->ring, 1);
    } else {
        struct __kernel_timespec ts = s_timeout((uint64_t) timeout_ms);
        rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
    }
    rc = router_uring_wait_fault(rc);
    if (rc == -EBADR) {
        /* The completion queue overflowed and the kernel could not keep
         * some completions (an atomic allocation failed): said once, then
         * the ring goes on. Ending the loop would end every connection for
         * the few whose completions are gone; those meet their deadlines. */
        loop->stats.cqes_dropped++;
        ROUTER_LOG(ROUTER_LOG_ERROR, "loop",
                   "io_uring dropped completions (completion queue overflow): "
                   "the requests concerned end at their deadlines");
    } else if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        return rc;
    }
    int n = 0;
    size_t bytes = 0;
    for (; n < ROUTER_LOOP_BATCH && bytes < ROUTER_LOOP_BATCH_BYTES &&
           io_uring_peek_cqe(&u->ring, &cqe) == 0;
         n++) {
        /* Copied and released first: handlers may submit, even wait. */
        struct io_uring_cqe copy = *cqe;
        io_uring_cqe_seen(&u->ring, cqe);
        bytes += s_dispatch(loop, &copy);
    }
    loop->input_left = (n == ROUTER_LOOP_BATCH || bytes >= ROUTER_LOOP_BATCH_BYTES) &&
                       io_uring_cq_ready(&u->ring) > 0;
    /* After the wait, never before it: an accept's callbacks may add
     * timers, and the wait's timeout was computed without them. */
    if (u->accept_again) {
        s_listeners_accept(loop);
        if (!u->accept_polled && s_accept_arm(u) < 0)
            u->accept_again = true;
    }
    return n;
}

static void s_submit(router_loop_t *loop)
{
    s_uring_t *u = s_u(loop);
    if (u->enabled && io_uring_sq_ready(&u->ring) > 0)
        (void) io_uring_submit(&u->ring);
}

const router_backend_ops_t router_backend_uring = {
    .name = "io_uring",
    .init = s_init,
    .fini = s_fini,
    .wait = s_wait,
    .submit = s_submit,
    .listener_start = s_listener_start,
    .listener_stop = s_listener_stop,
    .listener_busy = s_listener_busy,
    .conn_connect = s_conn_connect,
    .conn_sync = s_conn_sync,
    .conn_flush = s_conn_flush,
    .conn_kill = s_conn_kill,
    .conn_busy = s_conn_busy,
    .watch_start = s_watch_start,
    .watch_update = s_watch_update,
    .watch_stop = s_watch_stop,
    .watch_busy = s_watch_busy,
};
