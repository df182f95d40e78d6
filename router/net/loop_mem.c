/* router/net/loop_mem.c — the memory backend (router/net/loop_mem.h): the
 * backend interface of loop_internal.h with no kernel behind it. Writes go
 * to the peer's on_output at flush time (at most `window` bytes per
 * connection and iteration); reads are whatever the caller feeds. */
#include "router/net/loop_mem.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "router/net/loop_internal.h"

typedef struct {
    router_mem_peer_t peer; /* the far end */
    void *ud;               /* its user data */
    size_t window;          /* bytes read per connection and iteration, 0: all */
    uint8_t *rbuf;          /* one read's buffer, recv_buf_size bytes */
} s_mem_t;

static s_mem_t *s_mem(const router_loop_t *loop)
{
    return loop->be == &router_backend_mem ? loop->be_data : NULL;
}

/* ---------------------------------------------------------------- backend ops */

static int s_init(router_loop_t *loop)
{
    s_mem_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->rbuf = malloc(loop->opts.recv_buf_size);
    if (!m->rbuf) {
        free(m);
        return -ENOMEM;
    }
    loop->be_data = m;
    return 0;
}

static void s_fini(router_loop_t *loop)
{
    s_mem_t *m = loop->be_data;
    if (m)
        free(m->rbuf);
    free(m);
    loop->be_data = NULL;
}

/* Nothing to wait for; a connection the peer's window left with queued
 * bytes is flushed again in this iteration. */
static int s_wait(router_loop_t *loop, int timeout_ms)
{
    (void) timeout_ms;
    for (router_conn_t *c = loop->conns; c; c = c->next)
        if (c->wq_bytes > 0 && c->state != ROUTER_CONN_CONNECTING)
            router_conn_pend(c, ROUTER_PEND_FLUSH);
    return 0;
}

static int s_listener_start(router_listener_t *l)
{
    (void) l;
    return -EOPNOTSUPP;
}

static void s_listener_stop(router_listener_t *l)
{
    (void) l;
}

static bool s_listener_busy(const router_listener_t *l)
{
    (void) l;
    return false;
}

static int s_conn_connect(router_conn_t *c)
{
    (void) c;
    return -EOPNOTSUPP;
}

static void s_conn_sync(router_conn_t *c)
{
    (void) c;
}

static void s_conn_flush(router_conn_t *c)
{
    s_mem_t *m = c->loop->be_data;
    if (c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CONNECTING || !m->peer.on_output)
        return;
    size_t budget = m->window ? m->window : SIZE_MAX;
    while (c->wq_bytes > 0 && budget > 0) {
        struct iovec iov[ROUTER_CONN_IOV_MAX];
        int n = router_conn_wq_iov(c, iov, ROUTER_CONN_IOV_MAX);
        size_t sent = 0;
        for (int i = 0; i < n && budget > 0; i++) {
            size_t k = iov[i].iov_len < budget ? iov[i].iov_len : budget;
            m->peer.on_output(c, iov[i].iov_base, k, m->ud);
            sent += k;
            budget -= k;
        }
        router_conn_on_sent(c, sent);
        if (c->state == ROUTER_CONN_DEAD)
            return;
    }
}

static void s_conn_kill(router_conn_t *c)
{
    s_mem_t *m = c->loop->be_data;
    if (m && m->peer.on_end)
        m->peer.on_end(c, c->reason, m->ud);
}

static bool s_conn_busy(const router_conn_t *c)
{
    (void) c;
    return false;
}

static int s_watch_start(router_watch_t *w)
{
    (void) w;
    return 0;
}

static int s_watch_update(router_watch_t *w)
{
    (void) w;
    return 0;
}

static void s_watch_stop(router_watch_t *w)
{
    (void) w;
}

static bool s_watch_busy(const router_watch_t *w)
{
    (void) w;
    return false;
}

const router_backend_ops_t router_backend_mem = {
    .name = "memory",
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

/* ---------------------------------------------------------------- the caller's side */

int router_mem_peer_set(router_loop_t *loop, const router_mem_peer_t *peer, void *ud,
                        size_t window)
{
    s_mem_t *m = loop ? s_mem(loop) : NULL;
    if (!m || !peer || !peer->on_output) {
        errno = EINVAL;
        return -1;
    }
    m->peer = *peer;
    m->ud = ud;
    m->window = window;
    return 0;
}

router_conn_t *router_mem_conn_new(router_loop_t *loop)
{
    if (!loop || !s_mem(loop) || loop->destroying) {
        errno = EINVAL;
        return NULL;
    }
    router_conn_t *c = router_conn_new(loop, -1);
    if (!c)
        errno = ENOMEM;
    return c;
}

size_t router_mem_conn_feed(router_conn_t *c, const uint8_t *data, size_t len)
{
    s_mem_t *m = s_mem(c->loop);
    size_t taken = 0;
    while (taken < len) {
        if (c->state != ROUTER_CONN_OPEN || c->eof)
            return len; /* closing or gone: dropped */
        if (!router_conn_wants_read(c))
            break; /* the "kernel" holds the rest */
        size_t k = len - taken;
        if (k > c->loop->opts.recv_buf_size)
            k = c->loop->opts.recv_buf_size;
        memcpy(m->rbuf, data + taken, k); /* a loop-owned buffer, as a real read */
        (void) router_conn_on_read(c, m->rbuf, k);
        taken += k;
    }
    return taken;
}

void router_mem_conn_eof(router_conn_t *c)
{
    router_conn_on_eof(c);
}

static void s_stop(router_loop_t *loop, void *ud)
{
    (void) ud;
    router_loop_stop(loop);
}

static bool s_busy(const router_loop_t *loop)
{
    if (loop->pend_head || loop->backlog)
        return true;
    for (const router_conn_t *c = loop->conns; c; c = c->next)
        if (c->wq_bytes > 0 && c->state != ROUTER_CONN_CONNECTING)
            return true;
    return false;
}

unsigned router_mem_run(router_loop_t *loop, unsigned max_iterations)
{
    if (!max_iterations)
        max_iterations = 10000;
    router_wake_fn before = loop->drained_cb;
    void *before_ud = loop->drained_ud;
    router_loop_set_drained_cb(loop, s_stop, NULL);
    unsigned runs = 0;
    do {
        if (router_loop_run(loop) != 0)
            break;
        runs++;
    } while (runs < max_iterations && s_busy(loop));
    router_loop_set_drained_cb(loop, before, before_ud);
    return runs;
}
