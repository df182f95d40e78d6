/* router/workers/broker.c — the embedded MDP 0.2 broker on the node's loop:
 * ROUTER sockets drained through ZMQ_FD (edge-triggered), services with an
 * LRU queue of idle workers and a bounded queue of requests, heartbeats and
 * expiry on one loop timer, CURVE with a ZAP certificate store for
 * non-loopback endpoints. */
#include "router/workers/broker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>

#include "router/clock.h"
#include "router/log.h"
#include "router/state/home.h"
#include "router/workers/mdp_worker.h"
#include "router/workers/worker_conns.h"

#define MOD "workers"

/* Messages read per wake before yielding to the loop (a 0 ms timer then
 * goes on), so a flood of worker traffic cannot starve connections. */
#define S_DRAIN_BATCH 256
/* The ROUTER sockets, by index. */
#define S_SOCK_INPROC 0
#define S_SOCK_LISTEN 1
#define S_SOCKS 2
/* How long the DISCONNECTs sent at destroy may take to leave (the
 * process's ZeroMQ context waits that long for them at its end). */
#define S_DISCONNECT_LINGER_MS 100
/* Longest name CZMQ gives a certificate's secret file: zcert_save and
 * zcert_load (4.2) build "<path>_secret" in a char[256], cut silently. */
#define S_CZMQ_SECRET_NAME_MAX 255
/* ZAP domain of the CURVE endpoint. */
#define S_ZAP_DOMAIN "kith.workers"
/* kith_workers_alive series registered, ever: metrics cannot be removed,
 * and a service slot is reused by other names (s_service), so past this
 * a new name gets no series (a flood of made-up names stays bounded). */
#define S_ALIVE_SERIES_MAX (ROUTER_BROKER_SERVICES_MAX * 4)

typedef struct s_req s_req_t;
typedef struct s_worker s_worker_t;
typedef struct s_service s_service_t;

struct s_req {
    int64_t h;                  /* handle, also the MDP client address (8 bytes BE) */
    s_service_t *svc;
    uint8_t *body;              /* while queued */
    size_t len;
    router_broker_reply_fn *cb; /* NULL: cancelled (a zombie a worker still holds) */
    void *ud;
    s_worker_t *worker;         /* the holder, or NULL while queued */
    s_req_t *next;              /* queue link */
};

struct s_worker {
    int sock;                   /* S_SOCK_* */
    zframe_t *identity;         /* ROUTER routing id */
    char key[2 + 2 * 256 + 1];  /* sock digit + hex identity: the hash key */
    s_service_t *svc;
    uint64_t expiry_ms;         /* loop clock: dead when passed */
    s_req_t *req;               /* held request, or NULL (idle) */
    s_worker_t *prev, *next;    /* idle list links */
    bool idle;
    uint64_t conn;              /* its workers.listen connection (worker_conns serial), or 0 */
};

struct s_service {
    char name[ROUTER_MDP_SERVICE_MAX + 1]; /* "" : the slot is free */
    s_worker_t *idle_head, *idle_tail; /* least recently used first */
    s_req_t *q_head, *q_tail;          /* requests waiting */
    size_t nqueued;
    size_t nworkers;
    router_metric_t *m_alive;          /* kith_workers_alive{service}, NULL: none */
    bool by_listen;                    /* named by a READY on workers.listen, and by
                                        * nothing of the router's since */
};

struct router_broker {
    router_loop_t *loop;
    zsock_t *socks[S_SOCKS];
    router_watch_t *watches[S_SOCKS];
    bool draining[S_SOCKS];     /* a drain of that socket is on the stack */
    uint64_t more_timer;        /* 0 ms timer resuming a drain cut at a batch */
    uint64_t beat_timer;
    router_worker_conns_t *conns; /* the listen socket's connections, or NULL */
    zactor_t *auth;             /* zauth, for CURVE */
    zcert_t *cert;              /* the broker's certificate, for CURVE */
    char *listen_endpoint;      /* as bound */
    uint64_t heartbeat_ms;
    uint64_t expiry_span_ms;    /* heartbeat × liveness */
    size_t queue_max;
    uint64_t listen_workers;    /* workers registered on workers.listen now */
    uint64_t listen_workers_max;
    zhash_t *workers;           /* key → s_worker_t (not owned by the hash) */
    s_service_t services[ROUTER_BROKER_SERVICES_MAX];
    size_t nservices;           /* slots ever used: [0, nservices) */
    struct {
        char name[ROUTER_MDP_SERVICE_MAX + 1];
        router_metric_t *m;
    } alive[S_ALIVE_SERIES_MAX]; /* kith_workers_alive series by service name */
    size_t nalive;
    int64_t next_h;
    router_broker_stats_t st;
    router_metrics_t *metrics;  /* where per-service series are registered, or NULL */
    router_metric_t *m_queued, *m_late, *m_expired, *m_lost, *m_requests;
};

/* ------------------------------------------------------------ helpers */

static void s_gauges(router_broker_t *b)
{
    router_metric_set(b->m_queued, b->st.queued);
    for (size_t i = 0; i < b->nservices; i++)
        router_metric_set(b->services[i].m_alive, b->services[i].nworkers);
}

/* kith_workers_alive{service=name}: the series registered for that name
 * before, or a new one; NULL without metrics, for a name that would need
 * escaping in a label, or past S_ALIVE_SERIES_MAX names. */
static router_metric_t *s_alive_series(router_broker_t *b, const char *name)
{
    if (!b->metrics || strpbrk(name, "\"\\"))
        return NULL;
    for (size_t i = 0; i < b->nalive; i++)
        if (strcmp(b->alive[i].name, name) == 0)
            return b->alive[i].m;
    if (b->nalive == S_ALIVE_SERIES_MAX)
        return NULL;
    char labels[ROUTER_MDP_SERVICE_MAX + 16];
    snprintf(labels, sizeof labels, "service=\"%s\"", name);
    router_metric_t *m = router_metrics_add(b->metrics, "kith_workers_alive", labels, ROUTER_METRIC_GAUGE,
                                            "Workers registered with the broker, by service");
    if (m) {
        snprintf(b->alive[b->nalive].name, sizeof b->alive[b->nalive].name, "%s", name);
        b->alive[b->nalive++].m = m;
    }
    return m;
}

/* A service name (WIRE §19.1): 1..64 octets of visible ASCII. */
static bool s_service_name_ok(const char *name, size_t len)
{
    if (len == 0 || len > ROUTER_MDP_SERVICE_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char) name[i] < 0x21 || (unsigned char) name[i] > 0x7e)
            return false;
    return true;
}

static bool s_service_free(const s_service_t *s)
{
    return s->nworkers == 0 && s->nqueued == 0;
}

/* The service `name`, or (make) a slot for it. A slot with no worker and
 * no request queued is free for another name: nothing points at it (a
 * request in flight is held by a worker of its service). So services that
 * come and go, and requests refused for a name no worker serves, never
 * use the 16 slots up for good. `listen`: asked by a READY on
 * workers.listen, which may name at most ROUTER_BROKER_LISTEN_SERVICES_MAX
 * of them: before, READYs there for made-up names took every slot a
 * moment free (kith.agent's, between its workers' reconnects, say), and
 * kith.agent's workers were then refused, and every turn, for as long as
 * those connections stayed. */
static s_service_t *s_service(router_broker_t *b, const char *name, size_t len, bool make,
                              bool listen)
{
    if (len == 0 || len > ROUTER_MDP_SERVICE_MAX)
        return NULL;
    s_service_t *s = NULL;
    for (size_t i = 0; i < b->nservices && !s; i++)
        if (strlen(b->services[i].name) == len && memcmp(b->services[i].name, name, len) == 0)
            s = &b->services[i];
    /* A free slot that still has the name counts as a new one for
     * workers.listen: its share is of the slots in use. */
    if (s && (!listen || !s_service_free(s))) {
        if (!listen)
            s->by_listen = false;
        return s;
    }
    if (!make || !s_service_name_ok(name, len))
        return NULL;
    size_t by_listen = 0;
    for (size_t i = 0; i < b->nservices; i++) {
        if (s_service_free(&b->services[i]))
            s = s ? s : &b->services[i];
        else
            by_listen += b->services[i].by_listen;
    }
    if (listen && by_listen >= ROUTER_BROKER_LISTEN_SERVICES_MAX)
        return NULL;
    if (!s && b->nservices < ROUTER_BROKER_SERVICES_MAX)
        s = &b->services[b->nservices++];
    if (!s)
        return NULL;
    memset(s, 0, sizeof *s);
    memcpy(s->name, name, len);
    s->name[len] = '\0';
    s->by_listen = listen;
    s->m_alive = s_alive_series(b, s->name);
    return s;
}

static void s_addr(int64_t h, uint8_t out[8])
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t) (h & 0xff);
        h >>= 8;
    }
}

static int64_t s_addr_h(const uint8_t *p, size_t len)
{
    if (len != 8)
        return -1;
    int64_t h = 0;
    for (int i = 0; i < 8; i++)
        h = (h << 8) | p[i];
    return h;
}

/* Sends [identity][""]["MDPW02"][cmd] (+ [addr][""][body]) without ever
 * blocking. Returns 0, or -1: EHOSTUNREACH (the worker's connection is
 * gone) or EAGAIN (its queue is full). */
static int s_send(router_broker_t *b, s_worker_t *w, uint8_t cmd, const uint8_t *addr,
                  const uint8_t *body, size_t len)
{
    void *h = zsock_resolve(b->socks[w->sock]);
    int more = ZMQ_SNDMORE | ZMQ_DONTWAIT;
    if (zmq_send(h, zframe_data(w->identity), zframe_size(w->identity), more) < 0)
        return -1;
    zmq_send(h, "", 0, ZMQ_SNDMORE);
    zmq_send(h, ROUTER_MDP_WORKER_PROTO, strlen(ROUTER_MDP_WORKER_PROTO), ZMQ_SNDMORE);
    zmq_send(h, &cmd, 1, addr ? ZMQ_SNDMORE : 0);
    if (addr) {
        zmq_send(h, addr, 8, ZMQ_SNDMORE);
        zmq_send(h, "", 0, ZMQ_SNDMORE);
        zmq_send(h, body, len, 0);
    }
    return 0;
}

/* DISCONNECT to an identity the broker does not (or no longer) know. */
static void s_send_disconnect(router_broker_t *b, int sock, zframe_t *identity)
{
    void *h = zsock_resolve(b->socks[sock]);
    uint8_t cmd = ROUTER_MDP_DISCONNECT;
    if (zmq_send(h, zframe_data(identity), zframe_size(identity), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return;
    zmq_send(h, "", 0, ZMQ_SNDMORE);
    zmq_send(h, ROUTER_MDP_WORKER_PROTO, strlen(ROUTER_MDP_WORKER_PROTO), ZMQ_SNDMORE);
    zmq_send(h, &cmd, 1, 0);
}

static void s_req_free(s_req_t *r)
{
    if (!r)
        return;
    free(r->body);
    free(r);
}

static void s_idle_unlink(s_worker_t *w)
{
    if (!w->idle)
        return;
    s_service_t *s = w->svc;
    if (w->prev)
        w->prev->next = w->next;
    else
        s->idle_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        s->idle_tail = w->prev;
    w->prev = w->next = NULL;
    w->idle = false;
}

static void s_idle_append(router_broker_t *b, s_worker_t *w)
{
    s_service_t *s = w->svc;
    w->prev = s->idle_tail;
    w->next = NULL;
    if (s->idle_tail)
        s->idle_tail->next = w;
    else
        s->idle_head = w;
    s->idle_tail = w;
    w->idle = true;
    b->st.workers_idle++;
}

static void s_kick(router_broker_t *b);

/* Ends a request whose worker is gone: kind -1 unless cancelled. */
static void s_req_lost(router_broker_t *b, s_req_t *r)
{
    b->st.in_flight--;
    if (r->cb) {
        b->st.lost++;
        router_metric_inc(b->m_lost, 1);
        r->cb(-1, NULL, 0, r->ud);
    }
    s_req_free(r);
}

/* Forgets a worker (dead, disconnected, or refused); its request is lost.
 * `say_disconnect`: tell it (it broke the protocol or we stop). */
static void s_worker_delete(router_broker_t *b, s_worker_t *w, bool say_disconnect)
{
    if (say_disconnect)
        s_send(b, w, ROUTER_MDP_DISCONNECT, NULL, NULL, 0);
    if (w->idle) {
        s_idle_unlink(w);
        b->st.workers_idle--;
    }
    zhash_delete(b->workers, w->key);
    if (b->conns)
        router_worker_conns_left(b->conns, w->conn);
    w->svc->nworkers--;
    b->st.workers--;
    b->listen_workers -= w->sock == S_SOCK_LISTEN;
    s_req_t *r = w->req;
    w->req = NULL;
    zframe_destroy(&w->identity);
    free(w);
    s_gauges(b);
    if (r)
        s_req_lost(b, r);
}

/* Forgets a worker silent past its span, as s_beat does. */
static void s_worker_expire(router_broker_t *b, s_worker_t *w)
{
    b->st.expired++;
    router_metric_inc(b->m_expired, 1);
    ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s: worker silent for %llu ms, declared dead%s",
               w->svc->name, (unsigned long long) b->expiry_span_ms,
               w->req ? " (its request fails)" : "");
    s_worker_delete(b, w, true);
}

/* Hands queued requests of `s` to its idle workers, oldest to longest idle.
 * An idle worker silent past its span is dead, only not yet forgotten
 * (s_beat looks once a heartbeat, and a request lost in its pass makes
 * the router send the next at once): it is forgotten here instead of
 * taking, and losing, the request. */
static void s_dispatch(router_broker_t *b, s_service_t *s)
{
    uint64_t now = router_loop_now_ms(b->loop);
    while (s->q_head && s->idle_head) {
        s_worker_t *w = s->idle_head;
        if (now > w->expiry_ms) {
            s_worker_expire(b, w); /* idle: no request, no callback */
            continue;
        }
        s_req_t *r = s->q_head;
        uint8_t addr[8];
        s_addr(r->h, addr);
        if (s_send(b, w, ROUTER_MDP_REQUEST, addr, r->body, r->len) != 0) {
            /* Its connection is gone or stuck: forget it, keep the request. */
            ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s: worker unreachable (%s), dropped", s->name,
                       zmq_strerror(zmq_errno()));
            s_worker_delete(b, w, false);
            continue;
        }
        s_idle_unlink(w);
        b->st.workers_idle--;
        s->q_head = r->next;
        if (!s->q_head)
            s->q_tail = NULL;
        r->next = NULL;
        s->nqueued--;
        b->st.queued--;
        free(r->body);
        r->body = NULL;
        r->len = 0;
        r->worker = w;
        w->req = r;
        b->st.in_flight++;
    }
    s_gauges(b);
}

/* ------------------------------------------------------------ messages */

/* `fd`: the descriptor the READY came in on (ZMQ_SRCFD), or -1. */
static void s_on_ready(router_broker_t *b, int sock, zframe_t *id, zmsg_t *m, int fd)
{
    zframe_t *svcf = zmsg_pop(m);
    s_service_t *s = NULL;
    char why[80] = "";
    /* Each refusal says which it is: a full table of services read "bad
     * service name" before, for kith.audit say, sending its operator after
     * a typo that was not there. */
    if (!svcf || zmsg_size(m) != 0 ||
        !s_service_name_ok((const char *) zframe_data(svcf), zframe_size(svcf)))
        snprintf(why, sizeof why, "bad service name");
    else if (!(s = s_service(b, (const char *) zframe_data(svcf), zframe_size(svcf), true,
                             sock == S_SOCK_LISTEN)))
        snprintf(why, sizeof why, "too many services: %u with workers or requests%s",
                 sock == S_SOCK_LISTEN ? ROUTER_BROKER_LISTEN_SERVICES_MAX
                                       : ROUTER_BROKER_SERVICES_MAX,
                 sock == S_SOCK_LISTEN ? " named on workers.listen" : "");
    else if (b->st.workers >= ROUTER_BROKER_WORKERS_MAX)
        snprintf(why, sizeof why, "too many workers: %u", ROUTER_BROKER_WORKERS_MAX);
    else if (sock == S_SOCK_LISTEN && b->listen_workers >= b->listen_workers_max)
        snprintf(why, sizeof why, "too many workers on workers.listen: %llu",
                 (unsigned long long) b->listen_workers_max);
    zframe_destroy(&svcf);
    if (why[0]) {
        b->st.refused++;
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "READY refused (%s)", why);
        s_send_disconnect(b, sock, id);
        return;
    }
    /* A READY read after its connection was cut (the share's oldest, or
     * its deadline, a moment before) comes from a connection that is
     * going: a worker taken on it was handed the request waiting, which
     * was lost with it at the next heartbeat (a turn failed for nothing).
     * Refused: the request waits for a live worker; a worker that
     * reconnects says READY again. */
    uint64_t conn = 0;
    if (sock == S_SOCK_LISTEN && b->conns && fd >= 0 &&
        (conn = router_worker_conns_ready(b->conns, fd)) == ROUTER_WORKER_CONNS_CUT) {
        b->st.refused++;
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "READY refused (its connection was cut)");
        s_send_disconnect(b, sock, id);
        return;
    }
    s_worker_t *w = calloc(1, sizeof *w);
    if (!w || !(w->identity = zframe_dup(id))) {
        free(w);
        if (b->conns)
            router_worker_conns_left(b->conns, conn); /* pending again */
        s_send_disconnect(b, sock, id);
        return;
    }
    w->sock = sock;
    w->svc = s;
    char *hex = zframe_strhex(id);
    snprintf(w->key, sizeof w->key, "%d%s", sock, hex ? hex : "");
    free(hex);
    w->expiry_ms = router_loop_now_ms(b->loop) + b->expiry_span_ms;
    if (zhash_insert(b->workers, w->key, w) != 0) {
        zframe_destroy(&w->identity);
        free(w);
        if (b->conns)
            router_worker_conns_left(b->conns, conn);
        s_send_disconnect(b, sock, id);
        return;
    }
    w->conn = conn;
    s->nworkers++;
    b->st.workers++;
    b->listen_workers += sock == S_SOCK_LISTEN;
    s_idle_append(b, w);
    ROUTER_LOG(ROUTER_LOG_INFO, MOD, "%s: worker joined (%zu now)", s->name, s->nworkers);
    s_dispatch(b, s);
}

/* PARTIAL or FINAL from w. */
static void s_on_reply(router_broker_t *b, s_worker_t *w, uint8_t cmd, zmsg_t *m)
{
    zframe_t *addr = zmsg_pop(m), *sep = zmsg_pop(m), *body = zmsg_pop(m);
    /* An address that is not 8 octets is no handle at all: malformed,
     * refused, where it was counted a late reply (a request that ended). */
    bool ok = addr && zframe_size(addr) == 8 && sep && body && zframe_size(sep) == 0 &&
              zmsg_size(m) == 0;
    int64_t h = ok ? s_addr_h(zframe_data(addr), zframe_size(addr)) : -1;
    s_req_t *r = w->req;
    if (!ok) {
        b->st.refused++;
    } else if (!r || r->h != h) {
        b->st.late_replies++;
        router_metric_inc(b->m_late, 1);
    } else if (cmd == ROUTER_MDP_PARTIAL) {
        if (r->cb)
            r->cb(0, zframe_data(body), zframe_size(body), r->ud);
        /* The callback may have cancelled r: it stays held as a zombie. */
    } else {
        /* w is idle before the callback runs: the callback may hand it new
         * work, and must find this request over. w may be gone after. */
        s_service_t *svc = w->svc;
        w->req = NULL;
        b->st.in_flight--;
        s_idle_append(b, w);
        if (r->cb)
            r->cb(1, zframe_data(body), zframe_size(body), r->ud);
        s_req_free(r);
        s_dispatch(b, svc);
    }
    zframe_destroy(&addr);
    zframe_destroy(&sep);
    zframe_destroy(&body);
}

/* One message read from a ROUTER socket, on descriptor fd (or -1). */
static void s_on_message(router_broker_t *b, int sock, zmsg_t *m, int fd)
{
    zframe_t *id = zmsg_pop(m), *empty = zmsg_pop(m), *proto = zmsg_pop(m), *cmdf = zmsg_pop(m);
    if (!id || !empty || zframe_size(empty) != 0 || !proto ||
        !zframe_streq(proto, ROUTER_MDP_WORKER_PROTO) || !cmdf || zframe_size(cmdf) != 1) {
        b->st.refused++;
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "malformed message from a worker, ignored");
        goto done;
    }
    uint8_t cmd = zframe_data(cmdf)[0];
    char key[sizeof ((s_worker_t *) 0)->key];
    char *hex = zframe_strhex(id);
    snprintf(key, sizeof key, "%d%s", sock, hex ? hex : "");
    free(hex);
    s_worker_t *w = zhash_lookup(b->workers, key);
    if (w)
        w->expiry_ms = router_loop_now_ms(b->loop) + b->expiry_span_ms;
    switch (cmd) {
    case ROUTER_MDP_READY:
        if (w) { /* READY twice: a protocol error */
            b->st.refused++;
            s_worker_delete(b, w, true);
        } else {
            s_on_ready(b, sock, id, m, fd);
        }
        break;
    case ROUTER_MDP_HEARTBEAT:
        if (!w)
            s_send_disconnect(b, sock, id);
        break;
    case ROUTER_MDP_PARTIAL:
    case ROUTER_MDP_FINAL:
        if (w) {
            s_on_reply(b, w, cmd, m);
        } else {
            b->st.late_replies++;
            router_metric_inc(b->m_late, 1);
            s_send_disconnect(b, sock, id);
        }
        break;
    case ROUTER_MDP_DISCONNECT:
        if (w) {
            ROUTER_LOG(ROUTER_LOG_INFO, MOD, "%s: worker left", w->svc->name);
            s_worker_delete(b, w, false);
        }
        break;
    default:
        b->st.refused++;
        if (w)
            s_worker_delete(b, w, true);
        else
            s_send_disconnect(b, sock, id);
        break;
    }
done:
    zframe_destroy(&id);
    zframe_destroy(&empty);
    zframe_destroy(&proto);
    zframe_destroy(&cmdf);
}

/* ------------------------------------------------------------ the loop side */

static void s_more(router_loop_t *loop, uint64_t id, void *ud);

/* One whole message from the workers.listen socket, and the descriptor of
 * the connection it came in on (ZMQ_SRCFD of its routing-id frame): the
 * READY of a connection takes it out of the pending share. NULL when
 * nothing waits. The caller owns the result. */
static zmsg_t *s_recv(zsock_t *sock, int *fd)
{
    void *h = zsock_resolve(sock);
    zmq_msg_t first;
again:
    zmq_msg_init(&first);
    if (zmq_msg_recv(&first, h, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&first);
        return NULL;
    }
    *fd = zmq_msg_get(&first, ZMQ_SRCFD);
    bool more = zmq_msg_more(&first);
    zmsg_t *m = zmsg_new();
    zframe_t *f = zframe_new(zmq_msg_data(&first), zmq_msg_size(&first));
    zmq_msg_close(&first);
    if (!m || !f || zmsg_append(m, &f) != 0) {
        zframe_destroy(&f);
        zmsg_destroy(&m);
        /* Out of memory: this message is dropped whole (as an over-long
         * one is), and the next one read. */
        while (more) {
            zframe_t *rest = zframe_recv(sock);
            more = rest && zframe_more(rest);
            zframe_destroy(&rest);
        }
        goto again;
    }
    /* A message's parts arrive together: the rest is already here. */
    while (more) {
        zframe_t *rest = zframe_recv(sock);
        if (!rest)
            break;
        more = zframe_more(rest);
        zmsg_append(m, &rest);
    }
    return m;
}

/* Reads what a socket holds, up to a batch. ZMQ_FD is edge-triggered and
 * any send or receive may consume the edge, so this runs after every wake
 * and after every send (s_kick), receiving until there is nothing (the
 * EAGAIN of a non-blocking receive has processed the socket's commands,
 * as asking ZMQ_EVENTS would: but that asks the kernel, a poll and a
 * getpid, before every message, and a receive does not). */
static void s_drain(router_broker_t *b, int sock)
{
    if (!b->socks[sock] || b->draining[sock])
        return;
    b->draining[sock] = true;
    int n = 0;
    while (b->socks[sock]) {
        if (n++ == S_DRAIN_BATCH) {
            if (!b->more_timer)
                b->more_timer = router_loop_timer_add(b->loop, 0, s_more, b);
            break;
        }
        /* Only a workers.listen READY needs its descriptor: the embedded
         * workers' messages (the hot path) are read as before. */
        int fd = -1;
        zmsg_t *m = sock == S_SOCK_LISTEN ? s_recv(b->socks[sock], &fd)
                                          : zmsg_recv_nowait(b->socks[sock]);
        if (!m)
            break;
        s_on_message(b, sock, m, fd);
        zmsg_destroy(&m);
    }
    b->draining[sock] = false;
}

static void s_beat(router_loop_t *loop, uint64_t id, void *ud);

/* The heartbeat timer, unless it is set already. */
static void s_beat_arm(router_broker_t *b)
{
    if (!b->beat_timer)
        b->beat_timer = router_loop_timer_add(b->loop, b->heartbeat_ms, s_beat, b);
}

static void s_kick(router_broker_t *b)
{
    s_beat_arm(b); /* one s_beat could not set (no timer slot, no memory) */
    for (int i = 0; i < S_SOCKS; i++)
        s_drain(b, i);
}

static void s_more(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    router_broker_t *b = ud;
    b->more_timer = 0;
    s_kick(b);
}

/* A drain after this call returns: the API functions below send, and ZMQ_FD
 * is edge-triggered, so they must look at the sockets again, but draining
 * inside them would run reply callbacks re-entrantly (a caller flushing its
 * own queue through send_to_holder would see it change under it). */
static void s_kick_later(router_broker_t *b)
{
    if (!b->more_timer)
        b->more_timer = router_loop_timer_add(b->loop, 0, s_more, b);
}

static void s_on_fd(router_watch_t *watch, int fd, unsigned events, void *ud)
{
    (void) watch;
    (void) fd;
    (void) events;
    s_kick(ud);
}

/* Every heartbeat: expire the silent, beat the living. The next beat is
 * set first: the callbacks of the requests lost below may take the timer
 * slot this one freed (the router arms timers of its own when a turn
 * ends), and a beat that could not be set again stopped for good: no
 * worker was ever expired or beaten again, so every worker reconnected
 * each heartbeat × liveness as a new one, the old ones never forgotten,
 * until 1 024 refused every READY. One that still cannot be set is set by
 * the next drain (s_kick). */
static void s_beat(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    router_broker_t *b = ud;
    b->beat_timer = 0;
    s_beat_arm(b);
    uint64_t now = router_loop_now_ms(loop);
    zlist_t *keys = zhash_keys(b->workers);
    for (char *k = keys ? zlist_first(keys) : NULL; k; k = zlist_next(keys)) {
        s_worker_t *w = zhash_lookup(b->workers, k);
        if (!w)
            continue; /* deleted by a callback of an earlier expiry */
        if (now > w->expiry_ms) {
            s_worker_expire(b, w);
        } else if (s_send(b, w, ROUTER_MDP_HEARTBEAT, NULL, NULL, 0) != 0 &&
                   zmq_errno() == EHOSTUNREACH) {
            s_worker_delete(b, w, false);
        }
    }
    zlist_destroy(&keys);
    s_kick(b);
}

/* ------------------------------------------------------------ CURVE */

int router_broker_endpoint_is_local(const char *e)
{
    if (strncmp(e, "ipc://", 6) == 0 || strncmp(e, "inproc://", 9) == 0)
        return 1;
    if (strncmp(e, "tcp://", 6) != 0)
        return 0;
    const char *host = e + 6;
    return strncmp(host, "127.", 4) == 0 || strncmp(host, "[::1]:", 6) == 0 ||
           strncmp(host, "localhost:", 10) == 0;
}

/* Makes the directory `path` (0700) unless it is one already. Anything
 * else there is an error: ZAP would read no certificates from a file
 * named like the authorized directory, and admit no worker, silently. */
static int s_dir_ensure(const char *path, char *err, size_t errcap)
{
    struct stat st;
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errcap, "workers: cannot make %s: %s", path, strerror(errno));
        return -1;
    }
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errcap, "workers: %s is not a directory: remove it, and kith makes it",
                 path);
        return -1;
    }
    return 0;
}

/* Loads $home/workers/broker.cert (with its _secret), or makes it: the
 * secret file is created 0600 before CZMQ writes into it. */
static zcert_t *s_cert_load_or_make(const char *home, char *err, size_t errcap)
{
    char dir[ROUTER_PATH_MAX], auth[ROUTER_PATH_MAX], path[ROUTER_PATH_MAX],
        secret[ROUTER_PATH_MAX + 8];
    if (router_home_path(home, ROUTER_BROKER_CURVE_DIR, dir, sizeof dir) != 0 ||
        router_home_path(home, ROUTER_BROKER_CURVE_AUTHORIZED, auth, sizeof auth) != 0 ||
        router_home_path(home, ROUTER_BROKER_CURVE_CERT, path, sizeof path) != 0) {
        snprintf(err, errcap, "workers: home path too long");
        return NULL;
    }
    snprintf(secret, sizeof secret, "%s_secret", path);
    /* Past CZMQ's 255, its secret went under the cut name: with a path
     * of 255 bytes that is broker.cert itself, the public file operators
     * hand out, which then held the secret key (mode 0644). */
    if (strlen(secret) > S_CZMQ_SECRET_NAME_MAX) {
        snprintf(err, errcap, "workers: %s is %zu bytes long, past the %d CZMQ can write a "
                 "certificate's secret to: a shorter $KITH_HOME", secret, strlen(secret),
                 S_CZMQ_SECRET_NAME_MAX);
        return NULL;
    }
    if (s_dir_ensure(dir, err, errcap) != 0 || s_dir_ensure(auth, err, errcap) != 0)
        return NULL;
    if (access(secret, F_OK) == 0) {
        zcert_t *c = zcert_load(path);
        if (!c || !zcert_secret_txt(c)[0] || strcmp(zcert_secret_txt(c), "0000000000000000000000000000000000000000") == 0) {
            zcert_destroy(&c);
            snprintf(err, errcap, "workers: %s is not a CZMQ certificate with a secret key", secret);
            return NULL;
        }
        return c;
    }
    zcert_t *c = zcert_new();
    if (!c) {
        snprintf(err, errcap, "workers: cannot make a CURVE certificate");
        return NULL;
    }
    zcert_set_meta(c, "name", "kith broker");
    int fd = open(secret, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errcap, "workers: cannot create %s: %s", secret, strerror(errno));
        zcert_destroy(&c);
        return NULL;
    }
    close(fd);
    if (zcert_save(c, path) != 0) {
        snprintf(err, errcap, "workers: cannot write %s", path);
        unlink(secret);
        zcert_destroy(&c);
        return NULL;
    }
    ROUTER_LOG(ROUTER_LOG_INFO, MOD, "made the broker's CURVE certificate %s", path);
    return c;
}

/* CURVE server on the listen socket; ZAP admits the public keys of the
 * certificates in $home/workers/authorized/. */
static int s_curve_on(router_broker_t *b, zsock_t *s, const char *home, char *err,
                      size_t errcap)
{
    char auth[ROUTER_PATH_MAX];
    if (!home || !home[0]) {
        snprintf(err, errcap, "workers.listen %s is not loopback: CURVE needs a home directory",
                 b->listen_endpoint);
        return -1;
    }
    if (!(b->cert = s_cert_load_or_make(home, err, errcap)))
        return -1;
    if (router_home_path(home, ROUTER_BROKER_CURVE_AUTHORIZED, auth, sizeof auth) != 0)
        return -1; /* cannot happen: s_cert_load_or_make built it already */
    b->auth = zactor_new(zauth, NULL);
    if (!b->auth || zstr_sendx(b->auth, "CURVE", auth, NULL) != 0 || zsock_wait(b->auth) != 0) {
        snprintf(err, errcap, "workers: cannot start the ZAP handler");
        return -1;
    }
    zcert_apply(b->cert, s);
    zsock_set_curve_server(s, 1);
    zsock_set_zap_domain(s, S_ZAP_DOMAIN);
    return 0;
}

/* ------------------------------------------------------------ lifecycle */

static zsock_t *s_router_new(void)
{
    zsock_t *s = zsock_new(ZMQ_ROUTER);
    if (!s)
        return NULL;
    zsock_set_linger(s, 0);
    zsock_set_router_mandatory(s, 1);
    zsock_set_maxmsgsize(s, (int) ROUTER_MDP_BODY_MAX + 4096);
    return s;
}

router_broker_t *router_broker_new(const router_broker_opts_t *o, char *err, size_t errcap)
{
    zsys_handler_set(NULL); /* the daemon's signalfd handles signals */
    router_broker_t *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errcap, "workers: out of memory");
        return NULL;
    }
    b->loop = o->loop;
    b->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : 1000;
    b->expiry_span_ms = b->heartbeat_ms * (o->liveness ? o->liveness : 3);
    b->queue_max = o->queue_max ? o->queue_max : ROUTER_BROKER_QUEUE_MAX;
    b->listen_workers_max = o->listen_workers_max && o->listen_workers_max < ROUTER_BROKER_WORKERS_MAX
                                ? o->listen_workers_max
                                : ROUTER_BROKER_LISTEN_WORKERS_MAX;
    /* Handles (the MDP client address) start from the wall clock, so one
     * from a run before a restart is never taken for one of this run: a
     * worker's stale FINAL then matches nothing (WIRE §19.9). 65,536
     * requests a millisecond before two runs could overlap. */
    b->next_h = (int64_t) (router_clock_wall_ms() << 16) + 1;
    b->workers = zhash_new();
    if (!b->workers)
        goto nomem;
    if (o->metrics) {
        b->metrics = o->metrics;
        b->m_queued = router_metrics_add(o->metrics, "kith_broker_requests_queued", NULL,
                                         ROUTER_METRIC_GAUGE, "Requests waiting for a worker");
        b->m_requests = router_metrics_add(o->metrics, "kith_broker_requests_total", NULL,
                                           ROUTER_METRIC_COUNTER, "Requests sent to workers");
        b->m_late = router_metrics_add(o->metrics, "kith_broker_late_replies_total", NULL,
                                       ROUTER_METRIC_COUNTER,
                                       "Replies dropped: the worker no longer held the request");
        b->m_expired = router_metrics_add(o->metrics, "kith_broker_workers_expired_total", NULL,
                                          ROUTER_METRIC_COUNTER,
                                          "Workers declared dead after heartbeat_ms x liveness");
        b->m_lost = router_metrics_add(o->metrics, "kith_broker_requests_lost_total", NULL,
                                       ROUTER_METRIC_COUNTER,
                                       "Requests whose worker died or left holding them");
    }
    const char *ep = o->endpoint ? o->endpoint : ROUTER_BROKER_INPROC;
    if (!(b->socks[S_SOCK_INPROC] = s_router_new()))
        goto nomem;
    if (zsock_bind(b->socks[S_SOCK_INPROC], "%s", ep) < 0) {
        snprintf(err, errcap, "workers: cannot bind %s: %s", ep, zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (o->listen && o->listen[0]) {
        zsock_t *s = s_router_new();
        if (!s)
            goto nomem;
        b->socks[S_SOCK_LISTEN] = s;
        zsock_set_ipv6(s, router_mdp_endpoint_ipv6(o->listen));
        b->listen_endpoint = strdup(o->listen);
        if (!b->listen_endpoint)
            goto nomem;
        bool local = router_broker_endpoint_is_local(o->listen);
        if (!local && s_curve_on(b, s, o->home, err, errcap) != 0)
            goto fail;
        /* A connection has ready_ms to finish its handshake and say READY
         * (worker_conns cuts it then, and counts it). ZeroMQ's own
         * handshake deadline, twice that, only catches a connection whose
         * monitor event was lost. */
        uint32_t ready_ms = o->ready_timeout_ms ? o->ready_timeout_ms : 10000;
        zsock_set_handshake_ivl(s, ready_ms > INT_MAX / 2 ? INT_MAX : (int) ready_ms * 2);
        router_worker_conns_opts_t co = {.loop = b->loop, .pending_max = o->pending_max,
                                         .per_source_max = o->pending_per_source_max,
                                         .ready_timeout_ms = ready_ms, .metrics = o->metrics};
        if (!(b->conns = router_worker_conns_new(zsock_resolve(s), &co, err, errcap)))
            goto fail;
        if (zsock_bind(s, "%s", o->listen) < 0) {
            snprintf(err, errcap, "workers: cannot bind %s: %s", o->listen,
                     zmq_strerror(zmq_errno()));
            goto fail;
        }
        char *last = zsock_last_endpoint(s);
        if (last) {
            free(b->listen_endpoint);
            b->listen_endpoint = last;
        }
        if (local)
            ROUTER_LOG(ROUTER_LOG_INFO, MOD, "listening on %s (MDP workers, CURVE off: local endpoint)",
                       b->listen_endpoint);
        else
            ROUTER_LOG(ROUTER_LOG_INFO, MOD,
                       "listening on %s (MDP workers, CURVE on, server key %s; workers' keys in"
                       " %s/%s)", b->listen_endpoint, zcert_public_txt(b->cert), o->home,
                       ROUTER_BROKER_CURVE_AUTHORIZED);
    }
    for (int i = 0; i < S_SOCKS; i++) {
        if (!b->socks[i])
            continue;
        b->watches[i] = router_loop_watch_fd(b->loop, zsock_fd(b->socks[i]), ROUTER_EV_READ,
                                             s_on_fd, b);
        if (!b->watches[i]) {
            snprintf(err, errcap, "workers: cannot watch the broker socket: %s", strerror(errno));
            goto fail;
        }
    }
    s_beat_arm(b);
    if (!b->beat_timer) {
        snprintf(err, errcap, "workers: cannot set the heartbeat timer");
        goto fail;
    }
    return b;
nomem:
    snprintf(err, errcap, "workers: out of memory");
fail:
    router_broker_destroy(&b);
    return NULL;
}

static void s_queue_free(s_service_t *s)
{
    while (s->q_head) {
        s_req_t *r = s->q_head;
        s->q_head = r->next;
        s_req_free(r);
    }
    s->q_tail = NULL;
    s->nqueued = 0;
}

void router_broker_destroy(router_broker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_broker_t *b = *self_p;
    if (b->beat_timer)
        (void) router_loop_timer_cancel(b->loop, b->beat_timer);
    if (b->more_timer)
        (void) router_loop_timer_cancel(b->loop, b->more_timer);
    for (int i = 0; i < S_SOCKS; i++)
        router_watch_destroy(&b->watches[i]);
    if (b->workers) {
        zlist_t *keys = zhash_keys(b->workers);
        for (char *k = keys ? zlist_first(keys) : NULL; k; k = zlist_next(keys)) {
            s_worker_t *w = zhash_lookup(b->workers, k);
            s_send(b, w, ROUTER_MDP_DISCONNECT, NULL, NULL, 0);
            zhash_delete(b->workers, k);
            s_req_free(w->req);
            zframe_destroy(&w->identity);
            free(w);
        }
        zlist_destroy(&keys);
        zhash_destroy(&b->workers);
    }
    for (size_t i = 0; i < b->nservices; i++)
        s_queue_free(&b->services[i]);
    router_worker_conns_destroy(&b->conns);
    for (int i = 0; i < S_SOCKS; i++) {
        /* The DISCONNECTs above may still wait in ZeroMQ's queues: with
         * the linger of 0 set at start they would go with the socket. */
        if (b->socks[i])
            zsock_set_linger(b->socks[i], S_DISCONNECT_LINGER_MS);
        zsock_destroy(&b->socks[i]);
    }
    zactor_destroy(&b->auth);
    zcert_destroy(&b->cert);
    free(b->listen_endpoint);
    free(b);
    *self_p = NULL;
}

/* ------------------------------------------------------------ the client API */

int64_t router_broker_request(router_broker_t *b, const char *service, const uint8_t *body,
                              size_t len, router_broker_reply_fn *on_reply, void *ud)
{
    if (len > ROUTER_MDP_BODY_MAX)
        return -1;
    s_service_t *s = s_service(b, service, strlen(service), true, false);
    if (!s || s->nqueued >= b->queue_max)
        return -1;
    s_req_t *r = calloc(1, sizeof *r);
    if (!r || !(r->body = malloc(len ? len : 1))) {
        free(r);
        return -1;
    }
    memcpy(r->body, body, len);
    r->len = len;
    r->h = b->next_h++;
    r->svc = s;
    r->cb = on_reply;
    r->ud = ud;
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->nqueued++;
    b->st.queued++;
    b->st.requests++;
    router_metric_inc(b->m_requests, 1);
    int64_t h = r->h;
    s_dispatch(b, s);
    s_kick_later(b);
    return h;
}

static s_worker_t *s_holder(const router_broker_t *b, int64_t h)
{
    zlist_t *keys = zhash_keys(b->workers);
    s_worker_t *found = NULL;
    for (char *k = keys ? zlist_first(keys) : NULL; k && !found; k = zlist_next(keys)) {
        s_worker_t *w = zhash_lookup(b->workers, k);
        if (w && w->req && w->req->h == h && w->req->cb)
            found = w;
    }
    zlist_destroy(&keys);
    return found;
}

int router_broker_send_to_holder(router_broker_t *b, int64_t h, const uint8_t *body,
                                 size_t len)
{
    if (len > ROUTER_MDP_BODY_MAX)
        return -1;
    s_worker_t *w = s_holder(b, h);
    if (!w)
        return -1;
    uint8_t addr[8];
    s_addr(h, addr);
    int rc = s_send(b, w, ROUTER_MDP_REQUEST, addr, body, len);
    s_kick_later(b);
    return rc;
}

void router_broker_cancel(router_broker_t *b, int64_t h)
{
    s_worker_t *w = s_holder(b, h);
    if (w) {
        w->req->cb = NULL; /* a zombie until the worker's FINAL */
        return;
    }
    for (size_t i = 0; i < b->nservices; i++) {
        s_service_t *s = &b->services[i];
        s_req_t *prev = NULL;
        for (s_req_t *r = s->q_head; r; prev = r, r = r->next) {
            if (r->h != h)
                continue;
            if (prev)
                prev->next = r->next;
            else
                s->q_head = r->next;
            if (s->q_tail == r)
                s->q_tail = prev;
            s->nqueued--;
            b->st.queued--;
            s_req_free(r);
            s_gauges(b);
            return;
        }
    }
}

int router_broker_queued(const router_broker_t *b, int64_t h)
{
    for (size_t i = 0; i < b->nservices; i++)
        for (const s_req_t *r = b->services[i].q_head; r; r = r->next)
            if (r->h == h)
                return 1;
    return 0;
}

void router_broker_stats(const router_broker_t *b, router_broker_stats_t *out)
{
    *out = b->st;
}

void router_broker_listen_stats(const router_broker_t *b, router_worker_conns_stats_t *out)
{
    if (b->conns)
        router_worker_conns_stats(b->conns, out);
    else
        memset(out, 0, sizeof *out);
}

size_t router_broker_workers(const router_broker_t *b, const char *service)
{
    for (size_t i = 0; i < b->nservices; i++)
        if (strcmp(b->services[i].name, service) == 0)
            return b->services[i].nworkers;
    return 0;
}

const char *router_broker_listen_endpoint(const router_broker_t *b)
{
    return b->listen_endpoint;
}

const char *router_broker_curve_public(const router_broker_t *b)
{
    return b->cert ? zcert_public_txt(b->cert) : NULL;
}
