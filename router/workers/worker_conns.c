/* router/workers/worker_conns.c — bounds and a deadline for the connections
 * to `workers.listen` that carry no worker yet (WIRE §19.2), learnt from a
 * ZeroMQ socket monitor and cut with shutdown(2) on a descriptor of our own. */
#include "router/workers/worker_conns.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <czmq.h>

#include "router/log.h"

#define MOD "workers"

/* Monitor events that may wait for the loop (two frames each, ~100
 * octets): beyond, libzmq drops them (see s_cut for what then). */
#define S_EVENTS_MAX 65536
/* Descriptor hash buckets (a power of two). */
#define S_BUCKETS 256u
/* A source address as a key: family tag, then 16 octets (IPv4 in the first
 * 4; a Unix peer's uid in the first 4). */
#define S_SRC_LEN 17

enum { S_CUT_SHARE, S_CUT_SOURCE, S_CUT_DEADLINE, S_CUTS };

typedef struct s_conn s_conn_t;

struct s_conn {
    int fd;                  /* ZeroMQ's descriptor: the key of the monitor's events */
    int own;                 /* our duplicate of it: shutdown goes here, never to a reused number */
    uint64_t serial;         /* for router_worker_conns_left */
    bool worker;             /* carries a registered worker */
    bool cut;                /* shut down by us; waits for ZeroMQ's DISCONNECTED */
    uint64_t since_ms;       /* pending since (loop clock) */
    uint8_t src[S_SRC_LEN];  /* the source, for the per-source share */
    s_conn_t *hnext;         /* bucket chain */
    s_conn_t *prev, *next;   /* the pending or the cut list, oldest first */
};

/* A list of connections, oldest first. */
typedef struct {
    s_conn_t *head, *tail;
} s_list_t;

struct router_worker_conns {
    router_loop_t *loop;
    void *sock;                     /* the monitored socket (borrowed) */
    zsock_t *mon;                   /* PAIR receiving the monitor's events */
    router_watch_t *watch;
    uint64_t timer;                 /* the oldest pending's deadline, or 0 */
    uint32_t pending_max, per_source_max, ready_timeout_ms;
    s_conn_t *buckets[S_BUCKETS];
    s_list_t pending;               /* no worker, not cut: the share and the deadline */
    s_list_t cut;                   /* cut, ZeroMQ's DISCONNECTED not seen yet */
    uint64_t next_serial;
    router_worker_conns_stats_t st;
    router_metric_t *m_pending, *m_workers, *m_cut[S_CUTS];
};

static const char *const s_cut_name[S_CUTS] = {"share", "per_source", "deadline"};

static void s_on_timer(router_loop_t *loop, uint64_t id, void *ud);

/* ------------------------------------------------------------ bookkeeping */

static void s_gauges(router_worker_conns_t *c)
{
    router_metric_set(c->m_pending, c->st.pending);
    router_metric_set(c->m_workers, c->st.workers);
}

static s_conn_t **s_slot(router_worker_conns_t *c, int fd)
{
    s_conn_t **pp = &c->buckets[(unsigned) fd & (S_BUCKETS - 1)];
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->hnext;
    return pp;
}

static void s_list_append(s_list_t *l, s_conn_t *k, uint64_t now)
{
    k->since_ms = now;
    k->prev = l->tail;
    k->next = NULL;
    if (l->tail)
        l->tail->next = k;
    else
        l->head = k;
    l->tail = k;
}

static void s_list_unlink(s_list_t *l, s_conn_t *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        l->head = k->next;
    if (k->next)
        k->next->prev = k->prev;
    else
        l->tail = k->prev;
    k->prev = k->next = NULL;
}

static void s_pending_append(router_worker_conns_t *c, s_conn_t *k)
{
    s_list_append(&c->pending, k, router_loop_now_ms(c->loop));
    c->st.pending++;
}

static void s_pending_unlink(router_worker_conns_t *c, s_conn_t *k)
{
    s_list_unlink(&c->pending, k);
    c->st.pending--;
}

/* Takes k out of every count and list and frees it (our duplicate closes,
 * so the socket goes once ZeroMQ has closed its own descriptor too). */
static void s_forget(router_worker_conns_t *c, s_conn_t *k)
{
    s_conn_t **pp = s_slot(c, k->fd);
    if (*pp == k)
        *pp = k->hnext;
    if (k->worker)
        c->st.workers--;
    else if (k->cut)
        s_list_unlink(&c->cut, k);
    else
        s_pending_unlink(c, k);
    if (k->own >= 0)
        close(k->own);
    free(k);
}

/* Shuts the connection down; ZeroMQ then reports it gone. Only ever on our
 * own duplicate, which no other socket can have been given. The entry waits
 * for that report on the cut list, at most ready_timeout_ms: the monitor's
 * queue has a bound and may drop an event under a flood. */
static void s_cut(router_worker_conns_t *c, s_conn_t *k, int why)
{
    s_pending_unlink(c, k);
    k->cut = true;
    s_list_append(&c->cut, k, router_loop_now_ms(c->loop));
    (void) shutdown(k->own, SHUT_RDWR);
    if (why == S_CUT_SHARE)
        c->st.cut_share++;
    else if (why == S_CUT_SOURCE)
        c->st.cut_source++;
    else
        c->st.cut_deadline++;
    router_metric_inc(c->m_cut[why], 1);
    /* A flood would make a line per connection: the log's own rate limit
     * (per call site) keeps it to a burst a second. */
    ROUTER_LOG(ROUTER_LOG_WARN, MOD, "a connection to workers.listen cut (%s%s)",
               s_cut_name[why],
               why == S_CUT_DEADLINE ? ": no READY in time" : ": too many without READY");
}

/* Arms the timer for the earliest deadline: the oldest pending
 * connection's, or the oldest cut one's wait. */
static void s_arm(router_worker_conns_t *c)
{
    if (c->timer || (!c->pending.head && !c->cut.head))
        return;
    uint64_t now = router_loop_now_ms(c->loop), due = UINT64_MAX;
    if (c->pending.head)
        due = c->pending.head->since_ms + c->ready_timeout_ms;
    if (c->cut.head && c->cut.head->since_ms + c->ready_timeout_ms < due)
        due = c->cut.head->since_ms + c->ready_timeout_ms;
    c->timer = router_loop_timer_add(c->loop, due > now ? due - now : 0, s_on_timer, c);
}

static void s_expire(router_worker_conns_t *c)
{
    uint64_t now = router_loop_now_ms(c->loop);
    while (c->pending.head && now >= c->pending.head->since_ms + c->ready_timeout_ms)
        s_cut(c, c->pending.head, S_CUT_DEADLINE);
    while (c->cut.head && now >= c->cut.head->since_ms + c->ready_timeout_ms)
        s_forget(c, c->cut.head);
    s_gauges(c);
    s_arm(c);
}

static void s_on_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    router_worker_conns_t *c = ud;
    c->timer = 0;
    s_expire(c);
}

/* ------------------------------------------------------------ accepting */

/* The source of a peer: its IP address (an IPv4-mapped IPv6 one as IPv4),
 * or a Unix peer's uid. -1 when the socket has none (gone already). */
static int s_source(int fd, const struct sockaddr_storage *peer, uint8_t out[S_SRC_LEN])
{
    memset(out, 0, S_SRC_LEN);
    if (peer->ss_family == AF_INET) {
        out[0] = 4;
        memcpy(out + 1, &((const struct sockaddr_in *) peer)->sin_addr, 4);
        return 0;
    }
    if (peer->ss_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *) peer)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            out[0] = 4;
            memcpy(out + 1, a + 12, 4);
        } else {
            out[0] = 6; /* its /64, as router/net/sources.h counts sources */
            memcpy(out + 1, a, 8);
        }
        return 0;
    }
    if (peer->ss_family == AF_UNIX) {
        struct ucred cr;
        socklen_t len = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
            return -1;
        out[0] = 1;
        memcpy(out + 1, &cr.uid, sizeof cr.uid);
        return 0;
    }
    return -1;
}

/* True when `fd` is a connection accepted on `endpoint` (the monitor's
 * event names the listening endpoint): the same TCP port, or the same Unix
 * path. Between ZeroMQ's accept and this check ZeroMQ may have closed the
 * descriptor and the number gone to another socket (a gateway connection,
 * say); such a socket is not ours to count or cut. */
static bool s_accepted_here(int fd, const char *endpoint)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    if (getsockname(fd, (struct sockaddr *) &local, &len) != 0)
        return false;
    if (strncmp(endpoint, "tcp://", 6) == 0) {
        const char *colon = strrchr(endpoint, ':');
        long port = colon ? strtol(colon + 1, NULL, 10) : -1;
        if (local.ss_family == AF_INET)
            return ntohs(((struct sockaddr_in *) &local)->sin_port) == port;
        if (local.ss_family == AF_INET6)
            return ntohs(((struct sockaddr_in6 *) &local)->sin6_port) == port;
        return false;
    }
    if (strncmp(endpoint, "ipc://", 6) == 0 && local.ss_family == AF_UNIX) {
        /* The name is the `len` bytes getsockname filled, no more: an
         * abstract one has no NUL after it, and the buffer past it was
         * never set (strncmp over sun_path read those bytes and took no
         * abstract connection for one of ours: none was bounded). */
        const struct sockaddr_un *u = (const struct sockaddr_un *) &local;
        const char *path = endpoint + 6;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = len > off ? len - off : 0, want = strlen(path);
        if (path[0] == '@') /* abstract: a NUL first in sun_path */
            return n == want && u->sun_path[0] == '\0' &&
                   memcmp(u->sun_path + 1, path + 1, want - 1) == 0;
        while (n > 0 && u->sun_path[n - 1] == '\0') /* a path's NUL, counted or not */
            n--;
        return n == want && memcmp(u->sun_path, path, want) == 0;
    }
    return false;
}

static void s_on_accepted(router_worker_conns_t *c, int fd, const char *endpoint)
{
    s_conn_t **pp = s_slot(c, fd);
    if (*pp) /* a connection that number named before is gone */
        s_forget(c, *pp);
    /* The duplicate first: from then on it names this socket, whatever
     * happens to ZeroMQ's number. */
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) {
        /* No descriptor to hold it by: refused rather than left unbounded,
         * once it is known to be a connection of ours. */
        if (s_accepted_here(fd, endpoint))
            (void) shutdown(fd, SHUT_RDWR);
        return;
    }
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    uint8_t src[S_SRC_LEN];
    s_conn_t *k = NULL;
    if (!s_accepted_here(own, endpoint)) {
        close(own);
        return;
    }
    if (getpeername(own, (struct sockaddr *) &peer, &plen) != 0 ||
        s_source(own, &peer, src) != 0 || !(k = calloc(1, sizeof *k))) {
        /* Gone already, or no memory to hold it by: refused. */
        (void) shutdown(own, SHUT_RDWR);
        close(own);
        return;
    }
    *k = (s_conn_t){.fd = fd, .own = own, .serial = ++c->next_serial};
    memcpy(k->src, src, S_SRC_LEN);
    uint32_t same = 0;
    for (const s_conn_t *p = c->pending.head; p; p = p->next)
        same += memcmp(p->src, src, S_SRC_LEN) == 0;
    *s_slot(c, fd) = k;
    s_pending_append(c, k);
    if (same >= c->per_source_max)
        s_cut(c, k, S_CUT_SOURCE);
    else if (c->st.pending > c->pending_max)
        s_cut(c, c->pending.head, S_CUT_SHARE);
    s_arm(c);
}

/* Reads every event the monitor holds. */
static void s_drain(router_worker_conns_t *c)
{
    void *h = zsock_resolve(c->mon);
    for (;;) {
        zmq_msg_t ev, ep;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, h, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        zmq_msg_init(&ep);
        char endpoint[512] = "";
        if (zmq_msg_more(&ev) && zmq_msg_recv(&ep, h, 0) >= 0) {
            size_t n = zmq_msg_size(&ep) < sizeof endpoint - 1 ? zmq_msg_size(&ep)
                                                               : sizeof endpoint - 1;
            memcpy(endpoint, zmq_msg_data(&ep), n);
        }
        if (zmq_msg_size(&ev) >= 6) {
            uint16_t event;
            uint32_t value;
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (uint8_t *) zmq_msg_data(&ev) + 2, 4);
            if (event == ZMQ_EVENT_ACCEPTED) {
                s_on_accepted(c, (int) value, endpoint);
            } else if (event == ZMQ_EVENT_DISCONNECTED) {
                s_conn_t *k = *s_slot(c, (int) value);
                if (k)
                    s_forget(c, k);
            }
        }
        zmq_msg_close(&ev);
        zmq_msg_close(&ep);
    }
    s_gauges(c);
}

static void s_on_fd(router_watch_t *watch, int fd, unsigned events, void *ud)
{
    (void) watch;
    (void) fd;
    (void) events;
    s_drain(ud);
}

/* ------------------------------------------------------------ the API */

router_worker_conns_t *router_worker_conns_new(void *zmq_socket,
                                               const router_worker_conns_opts_t *o, char *err,
                                               size_t errcap)
{
    router_worker_conns_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errcap, "workers: out of memory");
        return NULL;
    }
    c->loop = o->loop;
    c->sock = zmq_socket;
    c->pending_max = o->pending_max ? o->pending_max : ROUTER_WORKER_CONNS_PENDING_MAX;
    c->per_source_max = o->per_source_max ? o->per_source_max : ROUTER_WORKER_CONNS_PER_SOURCE_MAX;
    c->ready_timeout_ms = o->ready_timeout_ms ? o->ready_timeout_ms : 10000;
    if (o->metrics) {
        c->m_pending = router_metrics_add(o->metrics, "kith_workers_listen_connections",
                                          "state=\"pending\"", ROUTER_METRIC_GAUGE,
                                          "Connections to workers.listen, by whether they carry a worker");
        c->m_workers = router_metrics_add(o->metrics, "kith_workers_listen_connections",
                                          "state=\"worker\"", ROUTER_METRIC_GAUGE,
                                          "Connections to workers.listen, by whether they carry a worker");
        for (int i = 0; i < S_CUTS; i++) {
            char labels[32];
            snprintf(labels, sizeof labels, "reason=\"%s\"", s_cut_name[i]);
            c->m_cut[i] = router_metrics_add(o->metrics, "kith_workers_listen_cut_total", labels,
                                             ROUTER_METRIC_COUNTER,
                                             "Connections to workers.listen cut before READY");
        }
    }
    /* One inproc name per monitor, never used twice: several nodes may
     * share the context, and libzmq lets go of a closed monitor's name
     * only later. */
    static atomic_uint_fast64_t s_monitors;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://kith.workers.monitor.%llu",
             (unsigned long long) atomic_fetch_add(&s_monitors, 1));
    if (zmq_socket_monitor(zmq_socket, ep, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0 ||
        !(c->mon = zsock_new(ZMQ_PAIR))) {
        snprintf(err, errcap, "workers: cannot monitor the listen socket: %s",
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    /* The events wait in an inproc pipe whose bound is the monitor's send
     * bound (1,000) plus this receive bound: room for a loop that falls
     * behind a burst of connections, and still a bound (S_EVENTS_MAX). */
    zsock_set_rcvhwm(c->mon, S_EVENTS_MAX);
    if (zsock_connect(c->mon, "%s", ep) != 0) {
        snprintf(err, errcap, "workers: cannot monitor the listen socket: %s",
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (!(c->watch = router_loop_watch_fd(c->loop, zsock_fd(c->mon), ROUTER_EV_READ, s_on_fd, c))) {
        snprintf(err, errcap, "workers: cannot watch the listen socket's monitor: %s",
                 strerror(errno));
        goto fail;
    }
    /* ZMQ_FD signals only after a read has found the socket empty: one
     * read now, or no event would ever wake the loop. */
    s_drain(c);
    return c;
fail:
    router_worker_conns_destroy(&c);
    return NULL;
}

void router_worker_conns_destroy(router_worker_conns_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_worker_conns_t *c = *self_p;
    if (c->timer)
        (void) router_loop_timer_cancel(c->loop, c->timer);
    router_watch_destroy(&c->watch);
    (void) zmq_socket_monitor(c->sock, NULL, 0);
    zsock_destroy(&c->mon);
    for (unsigned i = 0; i < S_BUCKETS; i++)
        while (c->buckets[i])
            s_forget(c, c->buckets[i]);
    free(c);
    *self_p = NULL;
}

uint64_t router_worker_conns_ready(router_worker_conns_t *c, int fd)
{
    /* The monitor's events first, always: the READY may have overtaken
     * its connection's ACCEPTED (the monitor is a queue of its own), and
     * when the connection was given the number of one gone a moment
     * before, the entry under that number is the old connection's until
     * its DISCONNECTED is read: taken for this one, it made this worker's
     * connection pending once the events came, and cut at the deadline. */
    s_drain(c);
    s_conn_t *k = *s_slot(c, fd);
    if (!k)
        return 0;
    if (k->cut)
        return ROUTER_WORKER_CONNS_CUT;
    if (!k->worker) {
        s_pending_unlink(c, k);
        k->worker = true;
        c->st.workers++;
        s_gauges(c);
    }
    return k->serial;
}

void router_worker_conns_left(router_worker_conns_t *c, uint64_t serial)
{
    if (!serial)
        return;
    for (unsigned i = 0; i < S_BUCKETS; i++)
        for (s_conn_t *k = c->buckets[i]; k; k = k->hnext) {
            if (k->serial != serial)
                continue;
            if (k->worker) {
                k->worker = false;
                c->st.workers--;
                s_pending_append(c, k);
                if (c->st.pending > c->pending_max)
                    s_cut(c, c->pending.head, S_CUT_SHARE);
                s_gauges(c);
                s_arm(c);
            }
            return;
        }
}

void router_worker_conns_stats(const router_worker_conns_t *c, router_worker_conns_stats_t *out)
{
    *out = c->st;
}
