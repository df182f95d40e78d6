/* router/workers/worker_conns.h — the connections to `workers.listen`
 * (spec/WIRE.md §19.2): each one either carries a registered worker or is
 * *pending* (accepted, no READY yet). Pending ones have a share of their
 * own, a share per source address and a deadline; past any of them kith
 * cuts the connection. A worker's connection is never cut here.
 *
 * ZeroMQ accepts and owns these sockets. This module learns of them through
 * a socket monitor on the ROUTER socket (ZMQ_EVENT_ACCEPTED and
 * ZMQ_EVENT_DISCONNECTED carry the descriptor) and cuts one with
 * shutdown(2), which ZeroMQ sees as the peer leaving: it closes the
 * descriptor itself and reports it. Descriptor numbers are reused the moment
 * ZeroMQ closes them, so each connection's local and peer addresses (and, on
 * a Unix socket, the peer's pid) are recorded at accept and compared before
 * any cut: a number that now names another socket is never touched.
 *
 * Threads: the loop thread only (new may run before the loop does). */
#ifndef KITH_ROUTER_WORKER_CONNS_H
#define KITH_ROUTER_WORKER_CONNS_H

#include <stdint.h>

#include "router/metrics.h"
#include "router/net/loop.h"

/* Defaults of limits.workers_pending_max and _per_source_max. */
#define ROUTER_WORKER_CONNS_PENDING_MAX 64u
#define ROUTER_WORKER_CONNS_PER_SOURCE_MAX 16u

typedef struct router_worker_conns router_worker_conns_t;

typedef struct {
    router_loop_t *loop;          /* borrowed: the monitor is watched on it, the deadline timed */
    uint32_t pending_max;         /* pending at once; past it the oldest is cut. 0: default */
    uint32_t per_source_max;      /* pending from one source; past it the newcomer is cut. 0: default */
    uint32_t ready_timeout_ms;    /* accept (or its worker's end) to READY; past it, cut. 0: 10 s */
    router_metrics_t *metrics;    /* may be NULL */
} router_worker_conns_opts_t;

/* Starts monitoring `zmq_socket` (a libzmq socket handle, not yet bound or
 * bound a moment ago) and watching the monitor on o->loop. Returns NULL with
 * a one-line reason in err[errcap]. The caller owns the result and destroys
 * it before the socket. */
router_worker_conns_t *router_worker_conns_new(void *zmq_socket,
                                               const router_worker_conns_opts_t *o, char *err,
                                               size_t errcap);

/* Stops the monitor and the timer, forgets every connection (none is cut).
 * Idempotent; nulls *self_p. */
void router_worker_conns_destroy(router_worker_conns_t **self_p);

/* What router_worker_conns_ready returns for a connection kith has cut. */
#define ROUTER_WORKER_CONNS_CUT UINT64_MAX

/* The connection on descriptor `fd` (ZMQ_SRCFD of a message just read)
 * said READY and is to carry a worker: it leaves the pending share.
 * Returns the connection's serial (> 0) for router_worker_conns_left; 0
 * when no connection of this socket has that descriptor; or
 * ROUTER_WORKER_CONNS_CUT when that connection was cut (its READY was
 * read after the cut): it is going, and no worker should be taken on it. */
uint64_t router_worker_conns_ready(router_worker_conns_t *c, int fd);

/* The worker on connection `serial` is gone (left, expired, refused) while
 * its connection may stay: it is pending again, with a fresh deadline.
 * Unknown or 0 serial: nothing. */
void router_worker_conns_left(router_worker_conns_t *c, uint64_t serial);

typedef struct {
    uint64_t pending;       /* connections without a worker now */
    uint64_t workers;       /* connections carrying a worker now */
    uint64_t cut_share;     /* cut: the oldest pending, for a newcomer past pending_max */
    uint64_t cut_source;    /* cut: a newcomer past per_source_max from its address */
    uint64_t cut_deadline;  /* cut: no READY within ready_timeout_ms */
} router_worker_conns_stats_t;

void router_worker_conns_stats(const router_worker_conns_t *c, router_worker_conns_stats_t *out);

#endif
