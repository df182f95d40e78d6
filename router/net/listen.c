/* router/net/listen.c — listening sockets (TCP v4/v6, Unix with stale-file
 * replacement), and the accept path: limits, refusals, back-off when the
 * process runs out of descriptors. */
#include "router/net/listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router/log.h"
#include "router/net/conn.h"
#include "router/net/loop_internal.h"
#include "router/state/home.h"

static const router_loop_owner_ops_t s_owner_ops;

/* Pause before accepting again after EMFILE, ENFILE, ENOMEM and the like. */
#define S_ACCEPT_RETRY_MS 100
/* How far off a listener's reserved timer slot fires (it only re-reserves
 * itself): a day, well inside the loop's longest timer. */
#define S_RESERVE_MS (24u * 3600u * 1000u)
/* Accept failures are logged at most once per this many ms per listener;
 * the next line counts those suppressed meanwhile. */
#define S_ACCEPT_LOG_MS 1000

/* ------------------------------------------------------------ sockets */

/* Makes room for a Unix socket at path: nothing there is fine; a socket
 * file nobody accepts on is stale and removed; a live socket or any other
 * kind of file is left alone and refused. */
static int s_uds_clear_stale(const router_addr_t *addr)
{
    const char *path = addr->u.un.sun_path;
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISSOCK(st.st_mode)) {
        errno = EEXIST;
        return -1;
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return -1;
    int rc = connect(probe, &addr->u.sa, addr->len);
    int err = errno;
    close(probe);
    if (rc == 0 || err == EAGAIN) {
        errno = EADDRINUSE; /* someone is listening (EAGAIN: backlog full) */
        return -1;
    }
    if (err != ECONNREFUSED) {
        errno = err;
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT)
        return -1;
    return 0;
}

/* Creates the missing parent directories of a socket path (0700). */
static int s_uds_mkparents(const char *path)
{
    char dir[sizeof ((struct sockaddr_un *) 0)->sun_path];
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path)
        return 0;
    size_t len = (size_t) (slash - path);
    memcpy(dir, path, len);
    dir[len] = '\0';
    return router_home_mkdirs(dir, 0700);
}

static bool s_in6_is_any(const struct in6_addr *a)
{
    return memcmp(a, &in6addr_any, sizeof *a) == 0;
}

int router_listen_socket_open(const router_addr_t *addr, int backlog)
{
    int family = router_addr_family(addr);
    if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) {
        errno = EINVAL;
        return -1;
    }
    if (family == AF_UNIX) {
        if (addr->u.un.sun_path[0] == '\0') {
            errno = EINVAL; /* abstract sockets are not supported */
            return -1;
        }
        if (s_uds_mkparents(addr->u.un.sun_path) != 0 || s_uds_clear_stale(addr) != 0)
            return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    if (family != AF_UNIX && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        goto fail;
    if (family == AF_INET6) {
        int v6only = s_in6_is_any(&addr->u.in6.sin6_addr) ? 0 : 1;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) != 0)
            goto fail;
    }
    if (bind(fd, &addr->u.sa, addr->len) != 0)
        goto fail;
    /* Owner only: nobody can connect before listen(), so this is not racy. */
    if (family == AF_UNIX && chmod(addr->u.un.sun_path, 0600) != 0)
        goto fail_unlink;
    if (listen(fd, backlog > 0 ? backlog : ROUTER_LISTEN_BACKLOG) != 0)
        goto fail_unlink;
    return fd;

fail_unlink:
    if (family == AF_UNIX) {
        int err = errno;
        unlink(addr->u.un.sun_path);
        errno = err;
    }
fail:;
    int err = errno;
    close(fd);
    errno = err;
    return -1;
}

/* ------------------------------------------------------------ listeners */

static void s_accept_retry(router_loop_t *loop, uint64_t id, void *ud);

/* A listener keeps one timer slot of its own (retry_timer while not
 * backing off), so backing off after EMFILE never depends on a free slot:
 * the reservation is cancelled and the retry takes the slot it freed.
 * Without that, a loop whose max_timers were pending restarted accepting
 * at once and spun on EMFILE at full CPU. */
static void s_reserve_fire(router_loop_t *loop, uint64_t id, void *ud)
{
    router_listener_t *l = ud;
    (void) id;
    /* The slot that fired was freed just before this call: taking it back
     * cannot fail. */
    l->retry_timer = router_loop_timer_add(loop, S_RESERVE_MS, s_reserve_fire, l);
}

/* Takes the listener's slot, if one is free: a listener made while every
 * slot was pending tries again at each settle (listener_ops). */
static void s_reserve(router_listener_t *l)
{
    if (!l->retry_timer)
        l->retry_timer = router_loop_timer_add(l->loop, S_RESERVE_MS, s_reserve_fire, l);
}

router_listener_t *router_loop_listen(router_loop_t *loop, const router_addr_t *addr,
                                      router_accept_fn on_accept, void *ud)
{
    if (!loop || !addr || !on_accept || loop->destroying) {
        errno = EINVAL;
        return NULL;
    }
    router_listener_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->loop = loop;
    l->on_accept = on_accept;
    l->ud = ud;
    l->fd = router_listen_socket_open(addr, 0);
    if (l->fd < 0)
        goto fail;
    l->addr = *addr;
    if (router_addr_family(addr) == AF_UNIX) {
        struct stat st;
        l->uds_path = strdup(addr->u.un.sun_path);
        if (!l->uds_path || stat(l->uds_path, &st) != 0)
            goto fail;
        l->uds_dev = st.st_dev;
        l->uds_ino = st.st_ino;
    } else {
        socklen_t len = sizeof l->addr.u;
        if (getsockname(l->fd, &l->addr.u.sa, &len) != 0)
            goto fail;
        l->addr.len = len;
    }
    int rc = loop->be->listener_start(l);
    if (rc < 0) {
        errno = -rc;
        goto fail;
    }
    ROUTER_LIST_PUSH(loop->listeners, l);
    loop->listener_ops = &s_owner_ops;
    s_reserve(l);
    char text[ROUTER_ADDR_STR_MAX] = "?";
    (void) router_addr_format(&l->addr, text, sizeof text);
    ROUTER_LOG(ROUTER_LOG_DEBUG, "listen", "listening on %s (%s)", text, loop->be->name);
    return l;

fail:;
    int err = errno;
    if (l->fd >= 0) {
        close(l->fd);
        if (router_addr_family(addr) == AF_UNIX)
            unlink(addr->u.un.sun_path);
    }
    free(l->uds_path);
    free(l);
    errno = err;
    return NULL;
}

/* Removes the socket file, unless it has been replaced since we made it. */
static void s_uds_unlink_own(router_listener_t *l)
{
    struct stat st;
    if (!l->uds_path)
        return;
    if (lstat(l->uds_path, &st) == 0 && st.st_dev == l->uds_dev && st.st_ino == l->uds_ino)
        unlink(l->uds_path);
    free(l->uds_path);
    l->uds_path = NULL;
}

void router_listener_close(router_listener_t **lp)
{
    if (!lp || !*lp)
        return;
    router_listener_t *l = *lp;
    router_loop_t *loop = l->loop;
    *lp = NULL;
    if (l->closed)
        return;
    l->closed = true;
    if (l->retry_timer) {
        (void) router_loop_timer_cancel(loop, l->retry_timer);
        l->retry_timer = 0;
    }
    loop->be->listener_stop(l);
    s_uds_unlink_own(l);
    ROUTER_LIST_UNLINK(loop->listeners, l);
    ROUTER_LIST_PUSH(loop->dead_listeners, l);
}

static bool s_release(router_listener_t *l, bool force)
{
    router_loop_t *loop = l->loop;
    if (!force && loop->be->listener_busy(l))
        return false;
    if (l->fd >= 0) {
        close(l->fd);
        l->fd = -1;
    }
    /* Connections still open decrement stats.open through this pointer. */
    if (!force && l->stats.open > 0)
        return false;
    ROUTER_LIST_UNLINK(loop->dead_listeners, l);
    free(l->uds_path);
    free(l);
    return true;
}

/* The loop's settle step for listeners: a listener without a timer slot
 * (none was free when it was made or backed off) takes one as soon as one
 * is, and a backing-off listener that had none then retries through it:
 * it stays paused meanwhile, never spins; the closed ones are freed. */
static void s_settle(router_loop_t *loop)
{
    for (router_listener_t *l = loop->listeners; l; l = l->next) {
        if (l->retry_timer || l->closed)
            continue;
        if (!l->backing_off)
            s_reserve(l);
        else
            l->retry_timer = router_loop_timer_add(loop, S_ACCEPT_RETRY_MS, s_accept_retry, l);
    }
    for (router_listener_t *l = loop->dead_listeners, *next; l; l = next) {
        next = l->next;
        (void) s_release(l, loop->be_finished);
    }
}

static void s_shutdown(router_loop_t *loop)
{
    while (loop->listeners) {
        router_listener_t *l = loop->listeners;
        router_listener_close(&l);
    }
}

static const router_loop_owner_ops_t s_owner_ops = {
    .settle = s_settle,
    .shutdown = s_shutdown,
};

/* Ends an accepted socket kith will not serve with a reset (SO_LINGER
 * {1, 0}): WIRE §9.1 keeps an orderly end for a typed refusal, the peer's
 * own end and drain, and a comms sender reads FIN without an ack as
 * "refused" (kith send exits 3) when the connection was only over a
 * limit or out of memory, and the envelope is worth sending again. */
static void s_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    (void) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* Hands an accepted socket, and the peer address accept4() gave, to the
 * listener's callback. */
static void s_accepted(router_listener_t *l, int fd, const router_addr_t *peer)
{
    router_loop_t *loop = l->loop;
    char text[ROUTER_ADDR_STR_MAX] = "?";
    if (l->closed) {
        s_reset(fd);
        return;
    }
    bool own_cap = l->max_conns && l->stats.open >= l->max_conns;
    if (own_cap || loop->stats.conns_open >= loop->opts.max_conns) {
        s_reset(fd);
        loop->stats.refused++;
        l->stats.refused++;
        /* Logged once per streak: a flood must not flood the log too. */
        if (!l->refusing) {
            l->refusing = true;
            (void) router_addr_format(&l->addr, text, sizeof text);
            ROUTER_LOG(ROUTER_LOG_WARN, "listen",
                       "%s: %s limit of %u connections reached: refusing new ones", text,
                       own_cap ? "listener" : "loop", own_cap ? l->max_conns : loop->opts.max_conns);
        }
        return;
    }
    l->refusing = false;
    router_conn_t *c = router_conn_new(loop, fd);
    if (!c) {
        /* As accept4()'s own ENOMEM: logged (it was only counted, so
         * clients were cut with nothing said) and the listener pauses,
         * leaving the next ones queued instead of cutting each in turn. */
        s_reset(fd);
        router_listener_on_accept_error(l, ENOMEM);
        return;
    }
    /* From accept4(), not getpeername(), which fails (ENOTCONN) once the
     * peer has reset: a connection without an address escapes the
     * per-source and unauthenticated bounds (sources.c) as if it came from
     * inside the process. */
    c->peer = *peer;
    if (router_addr_family(&l->addr) != AF_UNIX) {
        int one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->listener = l;
    l->stats.open++;
    l->stats.accepted++;
    loop->stats.accepted++;
    l->on_accept(l, c, l->ud);
    if (c->state == ROUTER_CONN_DEAD)
        return;
    if (!c->has_handlers) {
        ROUTER_LOG(ROUTER_LOG_WARN, "listen", "accept callback set no handlers: conn aborted");
        router_conn_kill(c, ROUTER_CLOSE_ABORT, 0);
        return;
    }
    loop->be->conn_sync(c);
}

/* Logs an accept failure: the first at once, then at most one line per
 * S_ACCEPT_LOG_MS with the number suppressed in between, so a process out
 * of descriptors does not flood the log too. `err` 0: only report what was
 * suppressed, if a line is due. */
static void s_accept_error_log(router_listener_t *l, int err)
{
    uint64_t now = router_loop_now_ms(l->loop);
    if (err)
        l->err_last = err;
    bool due = l->err_logged_ms == 0 || now - l->err_logged_ms >= S_ACCEPT_LOG_MS;
    if (!due || (!err && l->err_suppressed == 0)) {
        if (err)
            l->err_suppressed++;
        return;
    }
    char text[ROUTER_ADDR_STR_MAX] = "?";
    (void) router_addr_format(&l->addr, text, sizeof text);
    if (!err)
        ROUTER_LOG(ROUTER_LOG_WARN, "listen", "%s: %llu more accept failures (%s) in the last %llu ms",
                   text, (unsigned long long) l->err_suppressed, strerror(l->err_last),
                   (unsigned long long) (now - l->err_logged_ms));
    else if (l->err_suppressed)
        ROUTER_LOG(ROUTER_LOG_WARN, "listen",
                   "%s: accept failed (%s): pausing accepts for %d ms (%llu similar suppressed)",
                   text, strerror(err), S_ACCEPT_RETRY_MS,
                   (unsigned long long) l->err_suppressed);
    else
        ROUTER_LOG(ROUTER_LOG_WARN, "listen", "%s: accept failed (%s): pausing accepts for %d ms",
                   text, strerror(err), S_ACCEPT_RETRY_MS);
    l->err_logged_ms = now;
    l->err_suppressed = 0;
}

static void s_accept_retry(router_loop_t *loop, uint64_t id, void *ud)
{
    router_listener_t *l = ud;
    (void) id;
    l->retry_timer = 0;
    l->backing_off = false;
    if (l->closed)
        return;
    s_reserve(l); /* the slot this retry held, freed just before the call */
    s_accept_error_log(l, 0); /* the count, if failures stopped being logged */
    int rc = loop->be->listener_start(l);
    if (rc < 0)
        router_listener_on_accept_error(l, -rc);
}

/* Whether a connection waits in l's queue. Linux reserves the new
 * descriptor before it looks at the queue, so accept4() on a listener
 * nobody is connecting to fails with EMFILE too; the io_uring backend
 * tries every listener again after one restarts, and without this check
 * each idle listener would log failures and pause as if it were flooded. */
static bool s_pending(const router_listener_t *l)
{
    struct pollfd p = {.fd = l->fd, .events = POLLIN};
    return poll(&p, 1, 0) != 0; /* ready, or poll itself failed: report the error */
}

bool router_listener_accept_burst(router_listener_t *l, int burst)
{
    for (int i = 0; i < burst; i++) {
        if (l->closed || l->backing_off)
            return false;
        router_addr_t peer = {0};
        socklen_t len = sizeof peer.u;
        int fd = accept4(l->fd, &peer.u.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            peer.len = len <= sizeof peer.u ? len : 0;
            s_accepted(l, fd, &peer);
            continue;
        }
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK)
            return false;
        if ((err == EMFILE || err == ENFILE) && !s_pending(l))
            return false; /* nothing was waiting here: not this listener's failure */
        router_listener_on_accept_error(l, err);
    }
    return true;
}

void router_listener_on_accept_error(router_listener_t *l, int err)
{
    router_loop_t *loop = l->loop;
    switch (err) {
    case EAGAIN:
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM: /* a firewall rule refused this one */
        return;
    default:
        break;
    }
    loop->stats.accept_errors++;
    if (l->closed || l->backing_off)
        return;
    s_accept_error_log(l, err);
    l->backing_off = true;
    loop->be->listener_stop(l);
    /* The reservation's slot goes to the retry (a slot just freed: the add
     * cannot fail). With no reservation and no free slot the listener
     * stays paused until s_settle finds a slot: restarting it at once
     * would spin on accept for as long as descriptors are short. */
    if (l->retry_timer)
        (void) router_loop_timer_cancel(loop, l->retry_timer);
    l->retry_timer = router_loop_timer_add(loop, S_ACCEPT_RETRY_MS, s_accept_retry, l);
}

const router_addr_t *router_listener_addr(const router_listener_t *l)
{
    return l ? &l->addr : NULL;
}

void router_listener_set_max_conns(router_listener_t *l, unsigned max_conns)
{
    if (l)
        l->max_conns = max_conns;
}

void router_listener_stats(const router_listener_t *l, router_listener_stats_t *out)
{
    if (l && out)
        *out = l->stats;
}
