/* router/workers/mdp_worker.h — the worker side of ZeroMQ's Majordomo
 * Protocol 0.2 (rfc.zeromq.org spec 18, "MDPW02"), as spec/WIRE.md §19
 * describes it: one worker of one service, connected to the router's
 * embedded broker (inproc://kith.workers) or to `workers.listen` (tcp://,
 * ipc://, CURVE when not loopback). Used by agent/, audit/ and tests.
 *
 * A background thread (a CZMQ actor) owns the DEALER socket: it sends READY,
 * heartbeats every heartbeat_ms whatever the caller is doing (a provider call
 * may run for minutes between two calls here), declares the broker dead after
 * heartbeat_ms × liveness of silence and reconnects with a fresh socket
 * (after a DISCONNECT, at the next heartbeat: a broker refusing it is not
 * asked again at once). The caller's thread sees only bodies:
 *
 *     router_mdp_worker_opts_t o = {.endpoint = "inproc://kith.workers",
 *                                   .service = "kith.agent",
 *                                   .heartbeat_ms = 1000, .liveness = 3};
 *     router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
 *     uint8_t *body; size_t len;
 *     while (router_mdp_worker_recv(w, &body, &len, -1) == 1) {
 *         …                                  // one turn-request (worker.cddl)
 *         router_mdp_worker_partial(w, p, plen);  // zero or more
 *         router_mdp_worker_final(w, f, flen);    // exactly one
 *         free(body);
 *     }
 *     router_mdp_worker_destroy(&w);         // sends DISCONNECT
 *
 * With same_thread the socket has no thread of its own: the caller's thread
 * runs the same heartbeats, liveness and reconnects inside recv. That saves
 * two thread hand-offs per message (a turn's request, each partial, its
 * final), the cost that bounded turns per second of in-process agents, and
 * asks one thing of the caller: call recv (0 ms is enough) at least every
 * heartbeat_ms while busy, as agent providers do (they yield every
 * AGENT_POLL_MS). A caller silent for heartbeat_ms × liveness is declared
 * dead by the broker (its turn fails AGENT_ERROR) and reconnects at its next
 * recv, as after any broker silence.
 *
 * Threads: new, recv, partial, final and destroy belong to one thread (the
 * worker's); router_mdp_worker_interrupt may be called from any thread.
 *
 * Which request a reply answers: the first REQUEST received while the worker
 * holds none starts a turn and its client address is kept; later REQUESTs
 * with that address (turn-control, router-tool-result) are handed over as
 * they come, and PARTIAL/FINAL go to the kept address. FINAL ends the hold.
 * A REQUEST for the address of the turn just finished (a steer racing the
 * FINAL) is dropped. If the broker is declared dead while a turn is held,
 * the broker has already failed that turn: replies for it are discarded
 * here, and READY is sent on the new connection only once the caller has
 * sent its FINAL, so a new turn never meets a caller still busy with the old
 * one. */
#ifndef KITH_ROUTER_MDP_WORKER_H
#define KITH_ROUTER_MDP_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Largest body (one CBOR item, spec/worker.cddl) in either direction. */
#define ROUTER_MDP_BODY_MAX (1u << 20)
/* Longest service name. */
#define ROUTER_MDP_SERVICE_MAX 64u

/* MDPW02 command bytes (the frame after the protocol header). */
enum {
    ROUTER_MDP_READY = 0x01,
    ROUTER_MDP_REQUEST = 0x02,
    ROUTER_MDP_PARTIAL = 0x03,
    ROUTER_MDP_FINAL = 0x04,
    ROUTER_MDP_HEARTBEAT = 0x05,
    ROUTER_MDP_DISCONNECT = 0x06,
};
#define ROUTER_MDP_WORKER_PROTO "MDPW02"

/* True for a tcp:// endpoint whose host is an IPv6 literal ([::1]):
 * ZeroMQ binds or connects to one only on a socket with ZMQ_IPV6 set.
 * Other endpoints keep IPv4, so that `*` and interface names mean what
 * they always did. */
static inline bool router_mdp_endpoint_ipv6(const char *e)
{
    return strncmp(e, "tcp://[", 7) == 0;
}

typedef struct router_mdp_worker router_mdp_worker_t;

typedef struct {
    const char *endpoint;         /* inproc://kith.workers, tcp://…, ipc://… */
    const char *service;          /* "kith.agent" | "kith.audit" */
    int heartbeat_ms;             /* workers.heartbeat_ms (1000); ≤ 0: 1000 */
    int liveness;                 /* workers.liveness (3); ≤ 0: 3 */
    const char *curve_server_key; /* broker's public key, Z85; NULL: no CURVE */
    bool same_thread;             /* the socket on the caller's thread (above) */
    const char *curve_cert_path;  /* this worker's CZMQ certificate (made, secret
                                   * 0600, when missing); NULL: ephemeral */
} router_mdp_worker_opts_t;

/* Connects and sends READY. Returns NULL with a one-line reason in
 * err[errcap] (bad endpoint, service, key or certificate). Connecting is
 * asynchronous: a broker not up yet is waited for, not an error. The caller
 * owns the result. */
router_mdp_worker_t *router_mdp_worker_new(const router_mdp_worker_opts_t *o, char *err,
                                           size_t errcap);

/* Sends DISCONNECT (waiting briefly for it to leave), stops the thread and
 * frees. Idempotent; nulls *self_p. */
void router_mdp_worker_destroy(router_mdp_worker_t **self_p);

/* Next REQUEST body: 1 (caller frees *body with free()), 0 timeout,
 * -1 stopped (router_mdp_worker_interrupt) or failed, -2 the turn held was
 * given up here (a request about it could not be copied, out of memory):
 * it was answered with an empty FINAL, the caller's replies for it are
 * refused, and the caller ends it and calls recv again. timeout_ms -1 waits
 * forever, 0 only looks. Heartbeats and reconnects run on the worker's own
 * thread, so calling this rarely never costs the connection; with
 * same_thread they run in here, so it must be called often (above). */
int router_mdp_worker_recv(router_mdp_worker_t *self, uint8_t **body, size_t *len,
                           int timeout_ms);

/* Replies to the turn held (see above): 0, or -1 (no turn held, body over
 * ROUTER_MDP_BODY_MAX, or the worker is gone). A reply the broker can no
 * longer use (it declared this worker dead) is discarded and still 0. A
 * reply that finds the socket's queue full (a broker behind) waits for
 * room, up to heartbeat_ms × liveness, on the socket's thread (with
 * same_thread, in this call); past that the broker is declared dead, as
 * after its silence. */
int router_mdp_worker_partial(router_mdp_worker_t *self, const uint8_t *body, size_t len);
int router_mdp_worker_final(router_mdp_worker_t *self, const uint8_t *body, size_t len);

/* Makes every recv, now and later, return -1 at once. Any thread. */
void router_mdp_worker_interrupt(router_mdp_worker_t *self);

/* Times the worker reconnected after declaring the broker dead (tests). */
uint64_t router_mdp_worker_reconnects(const router_mdp_worker_t *self);

#endif
