/* router/workers/broker.h — the router's embedded Majordomo (MDP 0.2,
 * rfc.zeromq.org spec 18) broker: ROUTER sockets bound to
 * inproc://kith.workers and, when `workers.listen` is set, to that endpoint
 * (CURVE when it is not loopback), watched by the node's event loop through
 * ZMQ_FD. The router is its only client, through the functions below.
 * spec/WIRE.md §19 is the contract.
 *
 * Workers say READY for a service and wait in a least-recently-used queue;
 * a request goes to the idle worker that has waited longest (one silent
 * past heartbeat_ms × liveness is dead, and gets none), or waits in a
 * bounded per-service queue. The broker heartbeats every worker every
 * heartbeat_ms and declares one dead after heartbeat_ms × liveness without a
 * word from it; the request it held then ends with kind -1. A reply from a
 * worker that no longer holds that request is dropped and counted.
 *
 * Threads: everything here runs on the loop thread (new may run before the
 * loop does). Callbacks run on the loop thread and may call back into the
 * broker (request, send_to_holder, cancel) but not destroy it. */
#ifndef KITH_ROUTER_BROKER_H
#define KITH_ROUTER_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "router/metrics.h"
#include "router/net/loop.h"
#include "router/workers/worker_conns.h"

/* The endpoint embedded workers connect to. */
#define ROUTER_BROKER_INPROC "inproc://kith.workers"
/* Requests waiting per service when no worker is idle. */
#define ROUTER_BROKER_QUEUE_MAX 4096u
/* Workers registered at once (a READY beyond is answered DISCONNECT). */
#define ROUTER_BROKER_WORKERS_MAX 1024u
/* ...of them on workers.listen (the default of listen_workers_max): the
 * rest stay for the embedded workers, which other processes' READYs could
 * otherwise keep out once they reconnect. */
#define ROUTER_BROKER_LISTEN_WORKERS_MAX 768u
/* Services known at once. */
#define ROUTER_BROKER_SERVICES_MAX 16u
/* ...of them named first by a READY on workers.listen: the rest stay for
 * the router's own (its requests, the embedded workers), so workers of
 * other processes cannot take every slot from kith.agent and kith.audit. */
#define ROUTER_BROKER_LISTEN_SERVICES_MAX 12u
/* CURVE files under $KITH_HOME (WIRE §19.x). */
#define ROUTER_BROKER_CURVE_DIR "workers"
#define ROUTER_BROKER_CURVE_CERT "workers/broker.cert"
#define ROUTER_BROKER_CURVE_AUTHORIZED "workers/authorized"

typedef struct router_broker router_broker_t;

/* kind 0: a PARTIAL body; 1: the FINAL body (the request is then over);
 * -1: no body (NULL, 0): the worker holding the request died or said
 * DISCONNECT, the request is over. body is valid during the call only. */
typedef void(router_broker_reply_fn)(int kind, const uint8_t *body, size_t len, void *ud);

typedef struct {
    router_loop_t *loop;        /* borrowed; the broker's sockets are watched on it */
    const char *endpoint;       /* NULL: ROUTER_BROKER_INPROC */
    const char *listen;         /* workers.listen: tcp://… or ipc://…; NULL or "": none */
    const char *home;           /* $KITH_HOME, for the CURVE files; needed for a
                                 * non-loopback listen */
    uint32_t heartbeat_ms;      /* 0: 1000 */
    uint32_t liveness;          /* 0: 3 */
    size_t queue_max;           /* per service; 0: ROUTER_BROKER_QUEUE_MAX */
    /* The listen socket's connections without a worker (WIRE §19.2): */
    uint32_t pending_max;       /* at once; 0: ROUTER_WORKER_CONNS_PENDING_MAX */
    uint32_t pending_per_source_max; /* from one address; 0: ..._PER_SOURCE_MAX */
    uint32_t ready_timeout_ms;  /* accept to READY, handshake included; 0: 10 s */
    uint32_t listen_workers_max; /* workers on workers.listen at once;
                                  * 0: ROUTER_BROKER_LISTEN_WORKERS_MAX */
    router_metrics_t *metrics;  /* may be NULL */
} router_broker_opts_t;

/* Binds and starts watching. Returns NULL with a one-line reason in
 * err[errcap] (an endpoint that cannot be bound, CURVE files that cannot be
 * made or read). The caller owns the result. */
router_broker_t *router_broker_new(const router_broker_opts_t *o, char *err, size_t errcap);

/* Sends DISCONNECT to every worker, closes the sockets, frees every request
 * without calling its callback. Loop thread (or any thread if the loop never
 * ran). Idempotent; nulls *self_p. */
void router_broker_destroy(router_broker_t **self_p);

/* Sends body (copied) to a worker of `service`; queued (bounded) when
 * none is idle. on_reply(kind, body, len, ud) runs on the loop thread
 * for each PARTIAL (kind 0) and the FINAL (kind 1); kind -1 with no
 * body when the worker holding it died or the request expired. Never
 * called from inside this function. Returns a request handle > 0, or -1
 * (queue full, bad service name, body over ROUTER_MDP_BODY_MAX, no memory). */
int64_t router_broker_request(router_broker_t *b, const char *service, const uint8_t *body,
                              size_t len, router_broker_reply_fn *on_reply, void *ud);

/* A further REQUEST (steer/stop/tool_result) to the worker holding
 * request h. 0, or -1 when no worker holds it (still queued, over, unknown). */
int router_broker_send_to_holder(router_broker_t *b, int64_t h, const uint8_t *body,
                                 size_t len);

/* Forgets request h: no callback runs for it any more. A queued request is
 * dropped; one a worker holds stays with that worker (it gets no new request
 * until it sends a FINAL, which is then dropped). Unknown h: nothing. */
void router_broker_cancel(router_broker_t *b, int64_t h);

/* True while request h waits in a queue (no worker has it yet). */
int router_broker_queued(const router_broker_t *b, int64_t h);

typedef struct {
    uint64_t workers;         /* registered now */
    uint64_t workers_idle;    /* ...of them waiting for work */
    uint64_t queued;          /* requests waiting for a worker */
    uint64_t in_flight;       /* requests a worker holds */
    uint64_t requests;        /* requests accepted since start */
    uint64_t expired;         /* workers declared dead after silence */
    uint64_t lost;            /* requests ended with kind -1 */
    uint64_t late_replies;    /* replies from workers not holding that request */
    uint64_t refused;         /* messages refused (malformed, unknown worker, limits) */
} router_broker_stats_t;

void router_broker_stats(const router_broker_t *b, router_broker_stats_t *out);

/* The workers.listen connections' counts (WIRE §19.2); all 0 without a
 * listen endpoint. */
void router_broker_listen_stats(const router_broker_t *b, router_worker_conns_stats_t *out);

/* Workers of `service` registered now. */
size_t router_broker_workers(const router_broker_t *b, const char *service);

/* The endpoint workers.listen was bound to, with the port the kernel chose
 * (tcp://127.0.0.1:41234), or NULL without a listen endpoint. Borrowed. */
const char *router_broker_listen_endpoint(const router_broker_t *b);

/* The broker's CURVE public key (Z85, 40 characters) when the listen
 * endpoint uses CURVE, else NULL. Borrowed. */
const char *router_broker_curve_public(const router_broker_t *b);

/* True when `endpoint` stays on this host (tcp:// to 127.0.0.0/8, [::1] or
 * localhost; ipc://; inproc://): no CURVE then. */
int router_broker_endpoint_is_local(const char *endpoint);

#endif
