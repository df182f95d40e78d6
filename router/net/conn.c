/* router/net/conn.c — connections: the bounded send queue (copied bytes
 * and buffers shared by many queues), the close state
 * machine (graceful, abort, EOF, slow consumer, timeout), read pausing, and
 * the entry points both backends call when I/O completes. */
#include "router/net/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "router/log.h"
#include "router/net/loop_internal.h"
#include "router/net/shared_buf.h"

static void s_begin_close(router_conn_t *c, router_close_reason_t as);

const char *router_close_reason_str(router_close_reason_t reason)
{
    switch (reason) {
    case ROUTER_CLOSE_EOF: return "eof";
    case ROUTER_CLOSE_LOCAL: return "local";
    case ROUTER_CLOSE_ABORT: return "abort";
    case ROUTER_CLOSE_ERROR: return "error";
    case ROUTER_CLOSE_SLOW_CONSUMER: return "slow_consumer";
    case ROUTER_CLOSE_TIMEOUT: return "timeout";
    case ROUTER_CLOSE_CONNECT_FAILED: return "connect_failed";
    case ROUTER_CLOSE_SHUTDOWN: return "shutdown";
    case ROUTER_CLOSE_DEADLINE: return "deadline";
    }
    return "unknown";
}

/* ------------------------------------------------------------ lifecycle */

static const router_loop_owner_ops_t s_owner_ops;

router_conn_t *router_conn_new(router_loop_t *loop, int fd)
{
    router_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    c->fd = fd;
    c->id = ++loop->next_conn_id;
    loop->conn_ops = &s_owner_ops;
    c->state = ROUTER_CONN_OPEN;
    c->send_limit = loop->opts.send_limit;
    ROUTER_LIST_PUSH(loop->conns, c);
    loop->stats.conns_open++;
    return c;
}

void router_conn_pend(router_conn_t *c, unsigned what)
{
    router_loop_t *loop = c->loop;
    c->pending |= what;
    if (c->in_pending)
        return;
    c->in_pending = true;
    c->pend_next = NULL;
    if (loop->pend_tail)
        loop->pend_tail->pend_next = c;
    else
        loop->pend_head = c;
    loop->pend_tail = c;
}

/* Only an orderly end (the queue flushed, FIN sent) may look orderly to the
 * peer: every other end resets, so a sender never mistakes a cut for a
 * refusal (spec/WIRE.md §9.1). */
static bool s_ends_with_reset(router_close_reason_t reason)
{
    return reason != ROUTER_CLOSE_EOF && reason != ROUTER_CLOSE_LOCAL &&
           reason != ROUTER_CLOSE_CONNECT_FAILED;
}

void router_conn_kill(router_conn_t *c, router_close_reason_t reason, int err)
{
    router_loop_t *loop = c->loop;
    if (c->state == ROUTER_CONN_DEAD)
        return;
    if (c->fd >= 0 && s_ends_with_reset(reason) && c->state != ROUTER_CONN_CONNECTING) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        (void) setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    c->state = ROUTER_CONN_DEAD;
    c->reason = reason;
    c->error = err;
    if (c->deadline) {
        c->deadline = 0;
        loop->deadline_conns--;
    }
    if (c->close_timer) {
        (void) router_loop_timer_cancel(loop, c->close_timer);
        c->close_timer = 0;
    }
    if (c->listener) {
        c->listener->stats.open--;
        c->listener = NULL;
    }
    loop->stats.conns_open--;
    ROUTER_LIST_UNLINK(loop->conns, c);
    loop->be->conn_kill(c);
    router_conn_pend(c, ROUTER_PEND_CLOSED);
}

static void s_backlog_remove(router_conn_t *c);

/* Lets go of parked input (the connection is closing or gone). */
static void s_park_drop(router_conn_t *c)
{
    c->loop->park_total -= c->park_len;
    free(c->park);
    c->park = NULL;
    c->park_off = c->park_len = c->park_cap = 0;
    s_backlog_remove(c);
}

static void s_wq_block_free(router_conn_t *c, router_wq_block_t *b);

static bool s_release(router_conn_t *c, bool force)
{
    router_loop_t *loop = c->loop;
    if (!force && loop->be->conn_busy(c))
        return false;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    for (router_wq_block_t *b = c->wq_head, *next; b; b = next) {
        next = b->next;
        s_wq_block_free(c, b);
    }
    c->wq_head = c->wq_tail = NULL;
    free(c->iov_big);
    s_park_drop(c);
    ROUTER_LIST_UNLINK(loop->dead_conns, c);
    free(c);
    return true;
}

/* ------------------------------------------------------------ send queue */

/* Appends len bytes, filling the newest block first; new blocks grow
 * geometrically so a busy connection makes few allocations and an idle one
 * holds little. Returns 0 or -1 (ENOMEM) with a prefix possibly queued. */
static int s_wq_append(router_conn_t *c, const uint8_t *data, size_t len)
{
    while (len > 0) {
        router_wq_block_t *b = c->wq_tail;
        if (b && !b->shared && b->tail < b->cap) {
            size_t k = b->cap - b->tail < len ? b->cap - b->tail : len;
            memcpy(b->data + b->tail, data, k);
            b->tail += k;
            c->wq_bytes += k;
            c->loop->wq_total += k;
            data += k;
            len -= k;
            continue;
        }
        size_t cap = b && !b->shared ? 2 * b->cap : ROUTER_WQ_BLOCK_MIN;
        if (cap > ROUTER_WQ_BLOCK_MAX)
            cap = ROUTER_WQ_BLOCK_MAX;
        if (cap < len)
            cap = len;
        router_wq_block_t *nb = malloc(sizeof *nb + cap);
        if (!nb)
            return -1;
        nb->next = NULL;
        nb->shared = NULL;
        nb->cap = cap;
        nb->head = nb->tail = 0;
        if (b)
            b->next = nb;
        else
            c->wq_head = nb;
        c->wq_tail = nb;
        c->wq_blocks++;
    }
    return 0;
}

/* Queues a block referencing sb, all of its bytes unsent. Returns 0, or
 * -1 with errno (EINVAL: another loop's queues hold sb; ENOMEM) and
 * nothing queued. */
static int s_wq_append_shared(router_conn_t *c, router_shared_buf_t *sb)
{
    router_wq_block_t *nb = malloc(sizeof *nb);
    if (!nb) {
        errno = ENOMEM;
        return -1;
    }
    int first = router_shared_buf_hold(sb, c->loop);
    if (first < 0) {
        free(nb);
        errno = EINVAL;
        return -1;
    }
    size_t len = router_shared_buf_len(sb);
    nb->next = NULL;
    nb->shared = sb;
    nb->cap = 0;
    nb->head = 0;
    nb->tail = len;
    if (c->wq_tail)
        c->wq_tail->next = nb;
    else
        c->wq_head = nb;
    c->wq_tail = nb;
    c->wq_blocks++;
    c->wq_bytes += len;
    if (first)
        c->loop->wq_total += len;
    return 0;
}

/* Frees one block (already unlinked or about to be), taking its unsent
 * bytes out of the connection's count and the loop's total: a copied
 * block's byte by byte, a shared buffer's all at once when no other block
 * holds it. */
static void s_wq_block_free(router_conn_t *c, router_wq_block_t *b)
{
    c->wq_blocks--;
    c->wq_bytes -= b->tail - b->head;
    if (!b->shared) {
        c->loop->wq_total -= b->tail - b->head;
    } else {
        size_t len = router_shared_buf_len(b->shared);
        if (router_shared_buf_unhold(&b->shared))
            c->loop->wq_total -= len;
    }
    free(b);
}

static const uint8_t *s_wq_block_bytes(const router_wq_block_t *b)
{
    return b->shared ? router_shared_buf_data(b->shared) : b->data;
}

int router_conn_wq_iov(const router_conn_t *c, struct iovec *iov, int max)
{
    int n = 0;
    for (const router_wq_block_t *b = c->wq_head; b && n < max; b = b->next) {
        if (b->tail == b->head)
            continue;
        iov[n].iov_base = (void *) (s_wq_block_bytes(b) + b->head);
        iov[n].iov_len = b->tail - b->head;
        n++;
    }
    return n;
}

/* Drops n sent bytes from the front of the queue. A shared block that is
 * partly sent stays (its offset moves); its bytes leave the loop's total
 * only when the last block holding it goes. */
static void s_wq_consume(router_conn_t *c, size_t n)
{
    while (n > 0 && c->wq_head) {
        router_wq_block_t *b = c->wq_head;
        size_t k = b->tail - b->head < n ? b->tail - b->head : n;
        n -= k;
        if (b->head + k == b->tail) {
            c->wq_head = b->next;
            if (!c->wq_head)
                c->wq_tail = NULL;
            s_wq_block_free(c, b);
            continue;
        }
        b->head += k;
        c->wq_bytes -= k;
        if (!b->shared)
            c->loop->wq_total -= k;
    }
}

/* Whether queueing `more` bytes would take the loop's connections
 * together past opts.send_total_limit. */
static bool s_total_short(const router_loop_t *loop, size_t more)
{
    size_t cap = loop->opts.send_total_limit;
    return loop->wq_total > cap || more > cap - loop->wq_total;
}

/* What one connection may hold unsent while all of them together are at
 * send_total_limit: its share of the bound. */
static size_t s_share(const router_loop_t *loop)
{
    unsigned open = loop->stats.conns_open ? loop->stats.conns_open : 1;
    return loop->opts.send_total_limit / open;
}

size_t router_conn_send_room(const router_conn_t *c)
{
    if (!c || c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CLOSING ||
        c->close_when_open || c->wq_bytes >= c->send_limit)
        return 0;
    size_t own = c->send_limit - c->wq_bytes;
    const router_loop_t *loop = c->loop;
    size_t cap = loop->opts.send_total_limit;
    size_t below_cap = loop->wq_total < cap ? cap - loop->wq_total : 0;
    if (below_cap >= own)
        return own;
    /* Past what the total has room for, a send is queued only within the
     * connection's share. */
    size_t share = s_share(loop);
    size_t in_share = share > c->wq_bytes ? share - c->wq_bytes : 0;
    size_t room = below_cap > in_share ? below_cap : in_share;
    return room < own ? room : own;
}

/* The limit a send is held to: the connection's own, or, when it would
 * take all connections together past send_total_limit by `total_more`
 * bytes, its share of that bound if smaller. `last`: router_conn_send_last's
 * pass past the share. */
static size_t s_limit_for(const router_conn_t *c, size_t total_more, bool last)
{
    size_t limit = c->send_limit;
    if (!last && s_total_short(c->loop, total_more)) {
        /* All connections together are at their bound: each may hold its
         * share of it, so the ones that stopped reading give way and the
         * ones that keep up go on. */
        size_t share = s_share(c->loop);
        limit = share < limit ? share : limit;
    }
    return limit;
}

/* Whether `own` more bytes on c (of which `total_more` are new to the
 * loop's total: fewer for a shared buffer other queues already hold) stay
 * within s_limit_for. */
static bool s_fits(const router_conn_t *c, size_t own, size_t total_more, bool last)
{
    size_t limit = s_limit_for(c, total_more, last);
    return own <= limit && c->wq_bytes <= limit - own;
}

/* Lets a send of `own` bytes (`total_more` of them new to the loop's
 * total) through, or cuts c as a slow consumer: -1 with ENOBUFS. */
static int s_admit(router_conn_t *c, size_t own, size_t total_more, bool last)
{
    if (s_fits(c, own, total_more, last))
        return 0;
    size_t limit = s_limit_for(c, total_more, last);
    char peer[ROUTER_ADDR_STR_MAX] = "?";
    (void) router_addr_format(&c->peer, peer, sizeof peer);
    c->loop->stats.slow_consumer_cuts++;
    if (limit < c->send_limit)
        c->loop->stats.unsent_total_cuts++;
    ROUTER_LOG(ROUTER_LOG_WARN, "conn",
               "conn %llu (%s) cut as a slow consumer: %zu bytes unsent, %zu more, limit %zu%s",
               (unsigned long long) c->id, peer, c->wq_bytes, own, limit,
               limit < c->send_limit ? " (its share: all connections hold "
                                       "send_total_limit unsent)" : "");
    router_conn_kill(c, ROUTER_CLOSE_SLOW_CONSUMER, ENOBUFS);
    errno = ENOBUFS;
    return -1;
}

/* A send found no memory for a piece of the stream the caller counts on:
 * the byte stream is broken, so the connection cannot go on. -1, ENOMEM. */
static int s_stream_broken(router_conn_t *c)
{
    router_conn_kill(c, ROUTER_CLOSE_ERROR, ENOMEM);
    errno = ENOMEM;
    return -1;
}

/* What was queued goes out at the loop's next flush (once connected). */
static int s_queued(router_conn_t *c)
{
    if (c->state != ROUTER_CONN_CONNECTING)
        router_conn_pend(c, ROUTER_PEND_FLUSH);
    return 0;
}

/* router_conn_sendv; `last`: router_conn_send_last's pass past the share. */
static int s_sendv(router_conn_t *c, const struct iovec *iov, int iovcnt, bool last)
{
    if (!c || (iovcnt > 0 && !iov) || iovcnt < 0) {
        errno = EINVAL;
        return -1;
    }
    if (c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CLOSING || c->close_when_open) {
        errno = EPIPE;
        return -1;
    }
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > SIZE_MAX - total) {
            total = SIZE_MAX;
            break;
        }
        total += iov[i].iov_len;
    }
    if (total == 0)
        return 0;
    if (last && total > ROUTER_CONN_LAST_MAX) {
        errno = EINVAL;
        return -1;
    }
    if (s_admit(c, total, total, last) != 0)
        return -1;
    for (int i = 0; i < iovcnt; i++)
        if (s_wq_append(c, iov[i].iov_base, iov[i].iov_len) != 0)
            return s_stream_broken(c); /* part of the stream is queued, part not */
    return s_queued(c);
}

int router_conn_sendv(router_conn_t *c, const struct iovec *iov, int iovcnt)
{
    return s_sendv(c, iov, iovcnt, false);
}

/* What queueing sb on c adds to the loop's total: nothing when c's loop
 * counts it already. */
static size_t s_shared_total_more(const router_conn_t *c, const router_shared_buf_t *sb)
{
    return router_shared_buf_holder(sb) == c->loop ? 0 : router_shared_buf_len(sb);
}

int router_conn_send_shared(router_conn_t *c, router_shared_buf_t *sb)
{
    if (!c || !sb) {
        errno = EINVAL;
        return -1;
    }
    if (c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CLOSING || c->close_when_open) {
        errno = EPIPE;
        return -1;
    }
    const void *holder = router_shared_buf_holder(sb);
    if (holder && holder != c->loop) {
        errno = EINVAL; /* another loop counts it: its thread may be sending it */
        return -1;
    }
    size_t len = router_shared_buf_len(sb);
    if (s_admit(c, len, s_shared_total_more(c, sb), false) != 0)
        return -1;
    if (s_wq_append_shared(c, sb) != 0)
        return s_stream_broken(c); /* nothing queued, but the caller counted on it */
    return s_queued(c);
}

bool router_conn_send_shared_fits(const router_conn_t *c, const router_shared_buf_t *sb,
                                  size_t extra)
{
    if (!c || !sb || c->state == ROUTER_CONN_DEAD || c->state == ROUTER_CONN_CLOSING ||
        c->close_when_open)
        return false;
    size_t len = router_shared_buf_len(sb);
    if (extra > SIZE_MAX - len)
        return false;
    return s_fits(c, len + extra, s_shared_total_more(c, sb) + extra, false);
}

int router_conn_send_last(router_conn_t *c, const void *data, size_t len)
{
    struct iovec iov = {.iov_base = (void *) data, .iov_len = len};
    return s_sendv(c, &iov, 1, true);
}

int router_conn_send(router_conn_t *c, const void *data, size_t len)
{
    struct iovec iov = {.iov_base = (void *) data, .iov_len = len};
    return router_conn_sendv(c, &iov, 1);
}

/* ------------------------------------------------------------ closing */

/* Moves a CLOSING connection on: flush, then shut our side, then wait for
 * the peer's EOF (reads discarded) before closing, so the peer reads all we
 * sent instead of a reset. */
static void s_closing_progress(router_conn_t *c)
{
    if (c->state != ROUTER_CONN_CLOSING)
        return;
    if (c->wq_bytes > 0) {
        router_conn_pend(c, ROUTER_PEND_FLUSH);
        return;
    }
    if (!c->wr_shut) {
        (void) shutdown(c->fd, SHUT_WR);
        c->wr_shut = true;
    }
    if (c->eof)
        router_conn_kill(c, c->closing_as, 0);
}

/* A graceful close ran out of time: a timeout if data was still unsent,
 * else the close it was. */
static void s_close_expired(router_conn_t *c)
{
    if (c->state == ROUTER_CONN_DEAD)
        return;
    if (c->wq_bytes > 0 || c->state == ROUTER_CONN_CONNECTING) {
        c->loop->stats.close_timeouts++;
        router_conn_kill(c, ROUTER_CLOSE_TIMEOUT, ETIMEDOUT);
        return;
    }
    router_conn_kill(c, c->closing_as, 0);
}

static void s_close_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    router_conn_t *c = ud;
    (void) loop;
    (void) id;
    c->close_timer = 0;
    s_close_expired(c);
}

/* Starts the bounded graceful close. Without a timer slot of its own the
 * loop's deadline sweep, one timer for every connection, bounds it, so
 * what was written (an HTTP answer, a Close frame) still goes out; only
 * when the sweep cannot be armed either does the close end at once. */
static bool s_arm_close_timer(router_conn_t *c)
{
    if (c->close_timer || c->close_by_sweep)
        return true;
    router_loop_t *loop = c->loop;
    c->close_timer = router_loop_timer_add(loop, loop->opts.close_timeout_ms, s_close_timeout, c);
    if (c->close_timer)
        return true;
    router_conn_set_deadline(c, router_loop_now_ms(loop) + loop->opts.close_timeout_ms);
    if (loop->sweep_timer) {
        c->close_by_sweep = true;
        return true;
    }
    router_conn_kill(c, c->wq_bytes ? ROUTER_CLOSE_TIMEOUT : c->closing_as, ENOSPC);
    return false;
}

static void s_begin_close(router_conn_t *c, router_close_reason_t as)
{
    router_conn_set_deadline(c, 0);
    c->state = ROUTER_CONN_CLOSING;
    c->closing_as = as;
    s_park_drop(c);
    if (!s_arm_close_timer(c))
        return;
    c->loop->be->conn_sync(c);
    s_closing_progress(c);
}

void router_conn_close(router_conn_t *c)
{
    if (!c)
        return;
    if (c->state == ROUTER_CONN_OPEN) {
        s_begin_close(c, ROUTER_CLOSE_LOCAL);
    } else if (c->state == ROUTER_CONN_CONNECTING && !c->close_when_open) {
        if (c->wq_bytes == 0) {
            router_conn_kill(c, ROUTER_CLOSE_LOCAL, 0);
            return;
        }
        c->close_when_open = true;
        c->closing_as = ROUTER_CLOSE_LOCAL;
        (void) s_arm_close_timer(c);
    }
}

void router_conn_abort(router_conn_t *c)
{
    if (c && c->state != ROUTER_CONN_DEAD)
        router_conn_kill(c, ROUTER_CLOSE_ABORT, 0);
}

/* ------------------------------------------------------------ deadlines */

static void s_sweep_arm(router_loop_t *loop, uint64_t at);

/* Whether c's fd no longer holds its socket: closed (EBADF), or its number
 * reused for another file or socket, by code elsewhere in the process that
 * closed it without its owner (a double close). Under epoll such a
 * connection just falls silent (the closed fd left the epoll set), so its
 * deadline is where the loss shows; checked only there. */
static bool s_fd_lost(const router_conn_t *c)
{
    int type;
    socklen_t tl = sizeof type;
    if (getsockopt(c->fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0)
        return errno == EBADF || errno == ENOTSOCK;
    router_addr_t now;
    socklen_t len = sizeof now.u;
    if (c->peer.len == 0 || getpeername(c->fd, &now.u.sa, &len) != 0)
        return false; /* nothing to compare, or our peer is gone: still ours */
    return len != c->peer.len || memcmp(&now.u, &c->peer.u, len) != 0;
}

/* A connection cut at its deadline while it was not paused and its socket
 * held input unread was stalled by kith, not by its peer: a lost wake-up
 * (the backend's interest and the connection's state disagree) or the
 * loop's budget for parked input. It is cut all the same, but its state
 * is logged loudly for whoever debugs it; a peer that just stopped
 * sending leaves nothing unread, so slow senders are not logged here. */
static void s_stall_check(router_conn_t *c)
{
    int unread = 0;
    if (ioctl(c->fd, FIONREAD, &unread) != 0 || unread <= 0 || c->eof ||
        c->state != ROUTER_CONN_OPEN || c->read_paused)
        return;
    bool ep = c->loop->be == &router_backend_epoll;
    ROUTER_LOG(ROUTER_LOG_ERROR, "conn",
               "conn %llu: cut at its deadline with %d bytes unread while it wanted input "
               "(wants_read=%d park=%zu park_total=%zu backlog=%d pending=%#x unsent=%zu "
               "backend=%s epoll_events=%#x epoll_added=%d write_blocked=%d): kith held it "
               "back (a lost wake-up, or the loop's parked-input budget)",
               (unsigned long long) c->id, unread, router_conn_wants_read(c), c->park_len,
               c->loop->park_total, c->in_backlog, c->pending, c->wq_bytes, c->loop->be->name,
               ep ? c->be.e.events : 0u, ep && c->be.e.added, ep && c->be.e.write_blocked);
}

/* Aborts every connection whose deadline has passed and re-arms for the
 * earliest one left: O(connections) per sweep, at most one sweep per
 * ROUTER_CONN_SWEEP_MS. */
static void s_sweep(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    (void) ud;
    loop->sweep_timer = 0;
    uint64_t now = router_loop_now_ms(loop);
    loop->swept_at = now;
    uint64_t next = UINT64_MAX;
    for (router_conn_t *c = loop->conns, *nc; c; c = nc) {
        nc = c->next;
        if (!c->deadline)
            continue;
        if (c->deadline <= now && c->close_by_sweep) {
            s_close_expired(c);
        } else if (c->deadline <= now) {
            loop->stats.deadline_cuts++;
            if (c->fd >= 0 && s_fd_lost(c)) {
                /* Not ours to close any more: closing it would break its
                 * new owner. A bug elsewhere; say so loudly. */
                loop->stats.fds_lost++;
                ROUTER_LOG(ROUTER_LOG_ERROR, "conn",
                           "conn %llu: fd %d no longer holds its socket (closed elsewhere in "
                           "the process); cut at its deadline without closing it",
                           (unsigned long long) c->id, c->fd);
                c->fd = -1;
            }
            else if (c->fd >= 0)
                s_stall_check(c);
            router_conn_kill(c, ROUTER_CLOSE_DEADLINE, ETIMEDOUT);
        } else if (c->deadline < next) {
            next = c->deadline;
        }
    }
    if (next != UINT64_MAX)
        s_sweep_arm(loop, next);
}

static void s_sweep_arm(router_loop_t *loop, uint64_t at)
{
    if (loop->destroying)
        return;
    if (at < loop->swept_at + ROUTER_CONN_SWEEP_MS)
        at = loop->swept_at + ROUTER_CONN_SWEEP_MS;
    if (loop->sweep_timer) {
        if (at >= loop->sweep_at)
            return;
        (void) router_loop_timer_cancel(loop, loop->sweep_timer);
        loop->sweep_timer = 0;
    }
    uint64_t now = router_loop_now_ms(loop);
    loop->sweep_timer = router_loop_timer_add(loop, at > now ? at - now : 0, s_sweep, NULL);
    if (loop->sweep_timer)
        loop->sweep_at = at;
    else
        /* No timer slot: the next router_conn_set_deadline tries again. */
        ROUTER_LOG(ROUTER_LOG_WARN, "conn", "cannot arm the deadline sweep: %s",
                   strerror(errno));
}

void router_conn_set_deadline(router_conn_t *c, uint64_t mono_ms)
{
    if (!c || c->state == ROUTER_CONN_DEAD || c->close_by_sweep)
        return; /* a close the sweep bounds keeps its bound */
    router_loop_t *loop = c->loop;
    if (mono_ms && !c->deadline)
        loop->deadline_conns++;
    else if (!mono_ms && c->deadline)
        loop->deadline_conns--;
    c->deadline = mono_ms;
    if (mono_ms && (!loop->sweep_timer || mono_ms < loop->sweep_at))
        s_sweep_arm(loop, mono_ms);
}

static void s_disowned_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    (void) conn;
    (void) data;
    (void) len;
    (void) ud;
}

static void s_disowned_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    (void) conn;
    (void) reason;
    (void) ud;
}

void router_conn_disown(router_conn_t *c)
{
    static const router_conn_handlers_t nobody = {
        .on_data = s_disowned_data,
        .on_close = s_disowned_close,
    };
    router_conn_set_handlers(c, &nobody, NULL);
    router_conn_abort(c);
}

void router_loop_close_all(router_loop_t *loop)
{
    for (router_conn_t *c = loop->conns, *next; c; c = next) {
        next = c->next;
        router_conn_close(c);
    }
}

/* ------------------------------------------------------------ reading */

bool router_conn_wants_read(const router_conn_t *c)
{
    if (c->eof)
        return false;
    if (c->state == ROUTER_CONN_CLOSING)
        return true;
    return c->state == ROUTER_CONN_OPEN && !c->read_paused && c->park_len <= ROUTER_CONN_PARK_MAX &&
           (c->park_len == 0 || c->loop->park_total <= ROUTER_LOOP_PARK_TOTAL_MAX);
}

/* The peer's EOF reaches the user: on_eof, or a graceful close. */
static void s_eof_tell(router_conn_t *c)
{
    c->eof_told = true;
    if (c->h.on_eof)
        c->h.on_eof(c, c->ud);
    else
        s_begin_close(c, ROUTER_CLOSE_EOF);
}

/* Keeps input that cannot be handed over now: it arrived while paused
 * (io_uring completions already in flight when the receive was cancelled)
 * or past the connection's turn. Bounded: reading stops past
 * ROUTER_CONN_PARK_MAX, and no more than the provided-buffer pool can be
 * in flight after that. Returns 0, or -1 when the connection was killed. */
static int s_park(router_conn_t *c, const uint8_t *data, size_t len)
{
    size_t limit = ROUTER_CONN_PARK_MAX +
                   (size_t) c->loop->opts.recv_buf_size * c->loop->opts.recv_buf_count;
    if (len > limit - c->park_len) {
        router_conn_kill(c, ROUTER_CLOSE_ERROR, ENOBUFS);
        return -1;
    }
    if (c->park_off + c->park_len + len > c->park_cap && c->park_off > 0) {
        memmove(c->park, c->park + c->park_off, c->park_len);
        c->park_off = 0;
    }
    if (c->park_len + len > c->park_cap) {
        size_t cap = c->park_cap ? c->park_cap : 4096;
        while (cap < c->park_len + len)
            cap *= 2;
        uint8_t *p = realloc(c->park, cap);
        if (!p) {
            router_conn_kill(c, ROUTER_CLOSE_ERROR, ENOMEM);
            return -1;
        }
        c->park = p;
        c->park_cap = cap;
    }
    memcpy(c->park + c->park_off + c->park_len, data, len);
    c->park_len += len;
    c->loop->park_total += len;
    return 0;
}

/* Bytes this connection may still be handed in the current iteration. */
static size_t s_turn_left(router_conn_t *c)
{
    if (c->turn_iter != c->loop->iter) {
        c->turn_iter = c->loop->iter;
        c->turn_used = 0;
    }
    size_t turn = c->turn_bytes ? c->turn_bytes : ROUTER_CONN_TURN_BYTES;
    return c->turn_used < turn ? turn - c->turn_used : 0;
}

void router_conn_set_turn_bytes(router_conn_t *conn, size_t bytes)
{
    if (conn)
        conn->turn_bytes = bytes > ROUTER_CONN_TURN_BYTES ? ROUTER_CONN_TURN_BYTES : bytes;
}

/* Parked input waits for the connection's next turn. */
static void s_backlog_add(router_conn_t *c)
{
    if (c->in_backlog)
        return;
    c->in_backlog = true;
    c->backlog_next = c->loop->backlog;
    c->loop->backlog = c;
}

static void s_backlog_remove(router_conn_t *c)
{
    if (!c->in_backlog)
        return;
    for (router_conn_t **pp = &c->loop->backlog; *pp; pp = &(*pp)->backlog_next)
        if (*pp == c) {
            *pp = c->backlog_next;
            break;
        }
    c->in_backlog = false;
    c->backlog_next = NULL;
}

static void s_backlog_run(router_loop_t *loop)
{
    router_conn_t *c = loop->backlog;
    loop->backlog = NULL;
    while (c) {
        router_conn_t *next = c->backlog_next;
        c->in_backlog = false;
        c->backlog_next = NULL;
        if (c->state == ROUTER_CONN_OPEN)
            router_conn_pend(c, ROUTER_PEND_DELIVER);
        c = next;
    }
}

size_t router_conn_on_read(router_conn_t *c, uint8_t *data, size_t len)
{
    c->loop->stats.bytes_in += len;
    if (c->state != ROUTER_CONN_OPEN)
        return 0; /* closing: the peer's bytes are discarded */
    size_t now = 0;
    if (!c->read_paused && c->park_len == 0) {
        now = s_turn_left(c);
        if (now > len)
            now = len;
        if (now) {
            c->turn_used += now;
            c->h.on_data(c, data, now, c->ud);
        }
    }
    if (now == len || c->state != ROUTER_CONN_OPEN)
        return now;
    if (s_park(c, data + now, len - now) != 0)
        return now;
    if (!c->read_paused)
        s_backlog_add(c);
    if (!router_conn_wants_read(c))
        c->loop->be->conn_sync(c); /* stop reading: TCP pushes back */
    return now;
}

void router_conn_on_eof(router_conn_t *c)
{
    if (c->state == ROUTER_CONN_DEAD || c->eof)
        return;
    c->eof = true;
    c->loop->be->conn_sync(c);
    if (c->state == ROUTER_CONN_CLOSING) {
        s_closing_progress(c);
        return;
    }
    if (c->state == ROUTER_CONN_OPEN && !c->read_paused && c->park_len == 0)
        s_eof_tell(c);
}

void router_conn_on_error(router_conn_t *c, int err)
{
    if (c->state == ROUTER_CONN_DEAD)
        return;
    if (c->state == ROUTER_CONN_CLOSING && c->wr_shut) {
        /* Everything was sent; the peer left without its EOF. */
        router_conn_kill(c, c->closing_as, 0);
        return;
    }
    ROUTER_LOG(ROUTER_LOG_DEBUG, "conn", "conn %llu: %s", (unsigned long long) c->id,
               strerror(err));
    router_conn_kill(c, ROUTER_CLOSE_ERROR, err);
}

void router_conn_pause_read(router_conn_t *c)
{
    if (!c || c->state == ROUTER_CONN_DEAD || c->read_paused)
        return;
    c->read_paused = true;
    c->loop->be->conn_sync(c);
}

void router_conn_resume_read(router_conn_t *c)
{
    if (!c || c->state == ROUTER_CONN_DEAD || !c->read_paused)
        return;
    c->read_paused = false;
    if (c->park_len > 0 || (c->eof && !c->eof_told))
        router_conn_pend(c, ROUTER_PEND_DELIVER);
    c->loop->be->conn_sync(c);
}

/* Hands parked input, at most one turn's worth, then a held-back EOF, to
 * the user; what is left waits for the next turn. */
static void s_deliver(router_conn_t *c)
{
    if (c->state != ROUTER_CONN_OPEN || c->read_paused)
        return;
    if (c->park_len > 0) {
        size_t n = s_turn_left(c);
        if (n > c->park_len)
            n = c->park_len;
        if (n == 0) {
            s_backlog_add(c);
            return;
        }
        /* Detached while on_data runs: it may pause, resume or close. */
        uint8_t *p = c->park;
        size_t off = c->park_off, rest = c->park_len - n, cap = c->park_cap;
        c->park = NULL;
        c->park_off = c->park_len = c->park_cap = 0;
        c->loop->park_total -= n + rest;
        c->turn_used += n;
        c->h.on_data(c, p + off, n, c->ud);
        if (rest == 0 || c->state != ROUTER_CONN_OPEN || c->park) {
            free(p); /* c->park is only set again by a read, which cannot happen here */
        } else {
            c->park = p;
            c->park_off = off + n;
            c->park_len = rest;
            c->park_cap = cap;
            c->loop->park_total += rest;
        }
        if (c->state != ROUTER_CONN_OPEN)
            return;
        if (!c->read_paused)
            c->loop->be->conn_sync(c); /* below the marks again: read on */
        if (c->park_len > 0) {
            if (!c->read_paused)
                s_backlog_add(c);
            return;
        }
    }
    if (c->state == ROUTER_CONN_OPEN && !c->read_paused && c->park_len == 0 && c->eof &&
        !c->eof_told)
        s_eof_tell(c);
}

/* ------------------------------------------------------------ writing, connecting */

void router_conn_on_sent(router_conn_t *c, size_t n)
{
    c->loop->stats.bytes_out += n;
    c->loop->stats.sends++;
    s_wq_consume(c, n);
    if (c->wq_bytes > 0)
        return;
    if (c->state == ROUTER_CONN_OPEN && c->h.on_drain)
        c->h.on_drain(c, c->ud);
    else if (c->state == ROUTER_CONN_CLOSING)
        s_closing_progress(c);
}

void router_conn_on_connected(router_conn_t *c, int err)
{
    router_loop_t *loop = c->loop;
    if (c->state != ROUTER_CONN_CONNECTING)
        return;
    if (err) {
        char peer[ROUTER_ADDR_STR_MAX] = "?";
        (void) router_addr_format(&c->peer, peer, sizeof peer);
        loop->stats.connect_failures++;
        ROUTER_LOG(ROUTER_LOG_DEBUG, "conn", "connect to %s failed: %s", peer, strerror(err));
        router_conn_kill(c, ROUTER_CLOSE_CONNECT_FAILED, err);
        return;
    }
    loop->stats.connects++;
    c->state = ROUTER_CONN_OPEN;
    if (c->h.on_open)
        c->h.on_open(c, c->ud);
    if (c->state != ROUTER_CONN_OPEN)
        return;
    if (c->close_when_open) {
        s_begin_close(c, ROUTER_CLOSE_LOCAL);
        return;
    }
    loop->be->conn_sync(c);
    if (c->wq_bytes > 0)
        router_conn_pend(c, ROUTER_PEND_FLUSH);
}

router_conn_t *router_loop_connect(router_loop_t *loop, const router_addr_t *addr,
                                   const router_conn_handlers_t *handlers, void *ud)
{
    if (!loop || !addr || !handlers || !handlers->on_data || !handlers->on_close ||
        loop->destroying) {
        errno = EINVAL;
        return NULL;
    }
    int family = router_addr_family(addr);
    if (family == AF_UNSPEC || (family != AF_UNIX && router_addr_port(addr) == 0)) {
        errno = EINVAL;
        return NULL;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (family != AF_UNIX) {
        int one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    router_conn_t *c = router_conn_new(loop, fd);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->state = ROUTER_CONN_CONNECTING;
    c->peer = *addr;
    router_conn_set_handlers(c, handlers, ud);
    int rc = loop->be->conn_connect(c);
    if (rc < 0) {
        /* Reported like any other failure: from the loop, via on_close. */
        router_conn_on_connected(c, -rc);
    }
    return c;
}

router_conn_t *router_loop_adopt(router_loop_t *loop, int fd, const router_conn_handlers_t *handlers,
                                 void *ud)
{
    if (!loop || fd < 0 || !handlers || !handlers->on_data || !handlers->on_close ||
        loop->destroying) {
        if (fd >= 0)
            close(fd);
        errno = EINVAL;
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    router_conn_t *c = router_conn_new(loop, fd);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    socklen_t len = sizeof c->peer.u;
    if (getpeername(fd, &c->peer.u.sa, &len) == 0)
        c->peer.len = len;
    router_conn_set_handlers(c, handlers, ud);
    loop->be->conn_sync(c);
    return c;
}

/* ------------------------------------------------------------ settle */

static void s_run_pending(router_conn_t *c)
{
    router_loop_t *loop = c->loop;
    unsigned what = c->pending;
    c->pending = 0;
    if (c->state == ROUTER_CONN_DEAD) {
        if (what & ROUTER_PEND_CLOSED) {
            if (c->has_handlers && c->h.on_close)
                c->h.on_close(c, c->reason, c->ud);
            c->has_handlers = false;
            ROUTER_LIST_PUSH(loop->dead_conns, c);
        }
        return;
    }
    if (what & ROUTER_PEND_DELIVER)
        s_deliver(c);
    if ((what & ROUTER_PEND_FLUSH) && c->state != ROUTER_CONN_DEAD)
        loop->be->conn_flush(c);
}

/* The loop's settle step for connections: their pending work, in the order
 * it was asked for, then freeing the dead ones the backend let go of. */
static void s_settle(router_loop_t *loop)
{
    router_conn_t *c;
    while ((c = loop->pend_head) != NULL) {
        loop->pend_head = c->pend_next;
        if (!loop->pend_head)
            loop->pend_tail = NULL;
        c->in_pending = false;
        c->pend_next = NULL;
        s_run_pending(c);
    }
    for (router_conn_t *d = loop->dead_conns, *next; d; d = next) {
        next = d->next;
        (void) s_release(d, loop->be_finished);
    }
}

static void s_shutdown(router_loop_t *loop)
{
    while (loop->conns)
        router_conn_kill(loop->conns, ROUTER_CLOSE_SHUTDOWN, 0);
}

static const router_loop_owner_ops_t s_owner_ops = {
    .turn = s_backlog_run,
    .settle = s_settle,
    .shutdown = s_shutdown,
};

/* ------------------------------------------------------------ accessors */

void router_conn_set_handlers(router_conn_t *c, const router_conn_handlers_t *handlers, void *ud)
{
    if (!c || !handlers)
        return;
    c->h = *handlers;
    c->ud = ud;
    c->has_handlers = handlers->on_data != NULL && handlers->on_close != NULL;
}

void router_conn_set_send_limit(router_conn_t *c, size_t bytes)
{
    if (c)
        c->send_limit = bytes ? bytes : c->loop->opts.send_limit;
}

size_t router_conn_send_queued(const router_conn_t *c)
{
    return c ? c->wq_bytes : 0;
}

size_t router_conn_send_untaken(const router_conn_t *c)
{
    size_t n = router_conn_send_queued(c);
    int outq = 0;
    if (c && c->fd >= 0 && ioctl(c->fd, SIOCOUTQ, &outq) == 0 && outq > 0)
        n += (size_t) outq;
    return n;
}

int router_conn_fd(const router_conn_t *c)
{
    return c && c->state != ROUTER_CONN_DEAD ? c->fd : -1;
}

uint64_t router_conn_id(const router_conn_t *c)
{
    return c ? c->id : 0;
}

const router_addr_t *router_conn_peer(const router_conn_t *c)
{
    return c ? &c->peer : NULL;
}

int router_conn_error(const router_conn_t *c)
{
    return c ? c->error : 0;
}

router_loop_t *router_conn_loop(const router_conn_t *c)
{
    return c ? c->loop : NULL;
}

void *router_conn_userdata(const router_conn_t *c)
{
    return c ? c->ud : NULL;
}
