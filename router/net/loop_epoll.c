/* router/net/loop_epoll.c — the epoll backend, for kernels or sandboxes that
 * refuse io_uring. Connections and listeners are level-triggered (one read
 * per connection per wake-up keeps the loop fair); watches are
 * edge-triggered (EPOLLET) to match io_uring's multishot poll. Reads land
 * in one loop-wide buffer, so an idle connection holds no receive memory.
 * Once a wait's events have delivered ROUTER_LOOP_BATCH_BYTES, the
 * remaining connection events are left for the next wait (level-triggered:
 * they come back), so posts and signals run in between (loop.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/log.h"
#include "router/net/loop_internal.h"

/* Events taken per epoll_wait. */
#define S_EVENTS ROUTER_LOOP_BATCH
/* Accepts per listener per wake-up, so one busy listener cannot starve
 * the connections already open. */
#define S_ACCEPT_BURST 64

typedef struct s_epoll {
    int epfd;                              /* the epoll instance */
    uint8_t *rbuf;                         /* shared receive buffer */
    size_t rbuf_size;                      /* its size (recv_buf_size) */
    size_t batch_bytes;                    /* bytes delivered in this wait's batch */
    struct epoll_event events[S_EVENTS];   /* epoll_wait output */
} s_epoll_t;

static s_epoll_t *s_ep(const router_loop_t *loop)
{
    return loop->be_data;
}

/* The test seam for epoll_ctl failing as the kernel can make it fail
 * (ENOMEM, ENOSPC past fs.epoll.max_user_watches): a weak definition that
 * fails nothing, which tests/loop_test.c replaces to run the paths below
 * that a refused EPOLL_CTL_ADD or _MOD takes. Returns 0, or the errno the
 * call `op` fails with. */
int router_epoll_ctl_fault(int op);
__attribute__((weak)) int router_epoll_ctl_fault(int op)
{
    (void) op;
    return 0;
}

static int s_ctl(router_loop_t *loop, int op, int fd, uint32_t events, uint64_t tag)
{
    int fault = router_epoll_ctl_fault(op);
    if (fault)
        return -fault;
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    return epoll_ctl(s_ep(loop)->epfd, op, fd, &ev) == 0 ? 0 : -errno;
}

static int s_init(router_loop_t *loop)
{
    s_epoll_t *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->rbuf_size = loop->opts.recv_buf_size;
    e->rbuf = malloc(e->rbuf_size);
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!e->rbuf || e->epfd < 0) {
        int err = e->rbuf ? errno : ENOMEM;
        if (e->epfd >= 0)
            close(e->epfd);
        free(e->rbuf);
        free(e);
        return -err;
    }
    loop->be_data = e;
    return 0;
}

static void s_fini(router_loop_t *loop)
{
    s_epoll_t *e = s_ep(loop);
    if (!e)
        return;
    close(e->epfd);
    free(e->rbuf);
    free(e);
    loop->be_data = NULL;
}

/* ------------------------------------------------------------ listeners */

static int s_listener_start(router_listener_t *l)
{
    int rc = s_ctl(l->loop, l->be_added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, l->fd, EPOLLIN,
                   router_op_pack(l, ROUTER_OP_ACCEPT));
    if (rc == 0)
        l->be_added = true;
    return rc;
}

static void s_listener_stop(router_listener_t *l)
{
    if (l->be_added)
        (void) s_ctl(l->loop, EPOLL_CTL_DEL, l->fd, 0, 0);
    l->be_added = false;
}

static bool s_listener_busy(const router_listener_t *l)
{
    (void) l;
    return false;
}

static void s_on_listener(router_listener_t *l)
{
    (void) router_listener_accept_burst(l, S_ACCEPT_BURST); /* level-triggered: the rest comes back */
}

/* ------------------------------------------------------------ connections */

static void s_conn_sync(router_conn_t *c)
{
    if (c->state == ROUTER_CONN_DEAD)
        return;
    uint32_t events = 0;
    if (c->state == ROUTER_CONN_CONNECTING) {
        events = EPOLLOUT;
    } else {
        if (router_conn_wants_read(c))
            events |= EPOLLIN | EPOLLRDHUP;
        if (c->be.e.write_blocked)
            events |= EPOLLOUT;
    }
    if (c->be.e.added && events == c->be.e.events)
        return;
    int rc = s_ctl(c->loop, c->be.e.added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, events,
                   router_op_pack(c, ROUTER_OP_RECV));
    if (rc < 0) {
        router_conn_on_error(c, -rc);
        return;
    }
    c->be.e.added = true;
    c->be.e.events = events;
}

static int s_conn_connect(router_conn_t *c)
{
    if (connect(c->fd, &c->peer.u.sa, c->peer.len) != 0 && errno != EINPROGRESS)
        return -errno;
    /* Connected or in progress: either way EPOLLOUT reports the outcome.
     * A socket the set refuses is a connect that failed (conn.h: on_close
     * with ROUTER_CLOSE_CONNECT_FAILED, so a sender tries the next
     * address), not a lost connection (s_conn_sync's ROUTER_CLOSE_ERROR). */
    int rc = s_ctl(c->loop, EPOLL_CTL_ADD, c->fd, EPOLLOUT, router_op_pack(c, ROUTER_OP_RECV));
    if (rc < 0)
        return rc;
    c->be.e.added = true;
    c->be.e.events = EPOLLOUT;
    return 0;
}

static void s_conn_flush(router_conn_t *c)
{
    if (c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CONNECTING ||
        c->be.e.write_blocked)
        return;
    while (c->wq_bytes > 0) {
        struct iovec iov[ROUTER_CONN_IOV_BIG];
        struct msghdr msg = {.msg_iov = iov};
        msg.msg_iovlen = (size_t) router_conn_wq_iov(c, iov, ROUTER_CONN_IOV_BIG);
        ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            router_conn_on_sent(c, (size_t) n);
            if (c->state == ROUTER_CONN_DEAD)
                return;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->be.e.write_blocked = true;
            s_conn_sync(c);
            return;
        }
        router_conn_on_error(c, n < 0 ? errno : EPIPE);
        return;
    }
}

static void s_conn_kill(router_conn_t *c)
{
    if (c->be.e.added && c->fd >= 0)
        (void) s_ctl(c->loop, EPOLL_CTL_DEL, c->fd, 0, 0);
    c->be.e.added = false;
}

static bool s_conn_busy(const router_conn_t *c)
{
    (void) c;
    return false;
}

static int s_so_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

static void s_conn_read(router_conn_t *c)
{
    s_epoll_t *e = s_ep(c->loop);
    ssize_t n = recv(c->fd, e->rbuf, e->rbuf_size, MSG_DONTWAIT);
    if (n > 0) {
        e->batch_bytes += (size_t) n;
        router_conn_on_read(c, e->rbuf, (size_t) n);
    } else if (n == 0)
        router_conn_on_eof(c);
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        router_conn_on_error(c, errno);
}

static void s_on_conn(router_conn_t *c, uint32_t ev)
{
    if (c->state == ROUTER_CONN_DEAD)
        return;
    if (c->state == ROUTER_CONN_CONNECTING) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            router_conn_on_connected(c, s_so_error(c->fd));
        return;
    }
    if ((ev & EPOLLOUT) && c->be.e.write_blocked) {
        c->be.e.write_blocked = false;
        s_conn_flush(c);
        if (c->state == ROUTER_CONN_DEAD)
            return;
        s_conn_sync(c);
    }
    if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return;
    if (router_conn_wants_read(c)) {
        s_conn_read(c);
        return;
    }
    if (ev & EPOLLERR) {
        int err = s_so_error(c->fd);
        router_conn_on_error(c, err ? err : EPIPE);
    } else if (ev & EPOLLHUP) {
        /* Both directions are shut while we are not reading: stop polling
         * (HUP cannot be masked) until reading resumes. */
        (void) s_ctl(c->loop, EPOLL_CTL_DEL, c->fd, 0, 0);
        c->be.e.added = false;
    }
}

/* ------------------------------------------------------------ watches */

static uint32_t s_watch_events(unsigned events)
{
    uint32_t ev = EPOLLET;
    if (events & ROUTER_EV_READ)
        ev |= EPOLLIN | EPOLLRDHUP;
    if (events & ROUTER_EV_WRITE)
        ev |= EPOLLOUT;
    return ev;
}

static int s_watch_start(router_watch_t *w)
{
    int rc = s_ctl(w->loop, EPOLL_CTL_ADD, w->fd, s_watch_events(w->events),
                   router_op_pack(w, ROUTER_OP_POLL));
    if (rc == 0)
        w->be.e.added = true;
    return rc;
}

static int s_watch_update(router_watch_t *w)
{
    return s_ctl(w->loop, EPOLL_CTL_MOD, w->fd, s_watch_events(w->events),
                 router_op_pack(w, ROUTER_OP_POLL));
}

static void s_watch_stop(router_watch_t *w)
{
    /* The caller may have closed the fd already: then it left the set. */
    if (w->be.e.added)
        (void) s_ctl(w->loop, EPOLL_CTL_DEL, w->fd, 0, 0);
    w->be.e.added = false;
}

static bool s_watch_busy(const router_watch_t *w)
{
    (void) w;
    return false;
}

static void s_on_watch(router_watch_t *w, uint32_t ev)
{
    unsigned out = 0;
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLPRI))
        out |= ROUTER_EV_READ;
    if (ev & EPOLLOUT)
        out |= ROUTER_EV_WRITE;
    if (ev & (EPOLLERR | EPOLLHUP)) {
        out |= ROUTER_EV_ERROR;
        if (w->events & ROUTER_EV_READ)
            out |= ROUTER_EV_READ; /* reading reports the EOF or the error */
    }
    router_watch_fire(w, out & (w->events | ROUTER_EV_ERROR));
}

/* ------------------------------------------------------------ waiting */

static int s_wait(router_loop_t *loop, int timeout_ms)
{
    s_epoll_t *e = s_ep(loop);
    int n = epoll_wait(e->epfd, e->events, S_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    e->batch_bytes = 0;
    for (int i = 0; i < n; i++) {
        uint64_t tag = e->events[i].data.u64;
        uint32_t ev = e->events[i].events;
        switch (router_op_of(tag)) {
        case ROUTER_OP_ACCEPT:
            s_on_listener(router_op_obj(tag));
            break;
        case ROUTER_OP_RECV:
            /* Over the byte budget, connections wait for the next batch:
             * they are level-triggered, so the event comes back. Watches
             * are edge-triggered and always handled. */
            if (e->batch_bytes < ROUTER_LOOP_BATCH_BYTES)
                s_on_conn(router_op_obj(tag), ev);
            break;
        case ROUTER_OP_POLL:
            s_on_watch(router_op_obj(tag), ev);
            break;
        default:
            break;
        }
    }
    loop->input_left = n == S_EVENTS || e->batch_bytes >= ROUTER_LOOP_BATCH_BYTES;
    return n;
}

const router_backend_ops_t router_backend_epoll = {
    .name = "epoll",
    .init = s_init,
    .fini = s_fini,
    .wait = s_wait,
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
