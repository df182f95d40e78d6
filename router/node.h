/* router/node.h — one kith node: identity, trust store, durable inbox,
 * comms listeners (TCP, Unix socket, in-process, plain events) and outbound
 * sends, on one event loop. `kith daemon` runs one on its main thread; the
 * in-process harness starts several in one process, each on its own thread,
 * connected through a private inproc namespace (tests/node_test.c does this;
 * error checks left out here):
 *
 *     char err[256];
 *     router_inproc_t *net = router_inproc_new();
 *     router_node_opts_t o = {.inproc = net, .inproc_name = "a"};
 *     router_node_t *a = router_node_new(&o, err, sizeof err);     // and b, c …
 *     router_node_trust(a, "b", router_node_pubkey(b), "inproc://b", err, sizeof err);
 *     router_node_start(a);                                        // own thread
 *     router_node_receipt_t r;
 *     router_node_send_message(a, "b", "hi", &r);  // blocks up to comms.ack_timeout_ms
 *     if (r.outcome == ROUTER_SEND_ACKED) …
 *     router_inbox_entry_t e;
 *     router_inbox_pop(router_node_inbox(b), &e, 5000);            // at b
 *     router_inbox_entry_clear(&e);
 *     router_node_destroy(&a);                                     // drains, joins
 *     router_inproc_destroy(&net);                                 // after every node
 */
#ifndef KITH_ROUTER_NODE_H
#define KITH_ROUTER_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cbor.h>

#include "router/comms/comms.h"
#include "router/comms/events.h"
#include "router/comms/outbound.h"
#include "router/metrics.h"
#include "router/net/inproc.h"
#include "router/state/config.h"
#include "router/state/inbox.h"
#include "router/workers/audit_feed.h"

typedef struct router_node router_node_t;

typedef struct {
    const char *home;              /* state directory (identity, trust, state.db); NULL:
                                    * identity in memory, empty trust, memory inbox */
    const router_config_t *config; /* NULL: DESIGN §4 defaults */
    router_inproc_t *inproc;       /* namespace for inproc:// (NULL: the process default) */
    const char *inproc_name;       /* also reachable as inproc://<name>; NULL: not */
    const uint8_t *seed;           /* 32-byte identity seed when home is NULL; NULL: random */
    bool listen;                   /* open the TCP/UDS/event listeners from config */
    bool memory_inbox;             /* keep the inbox in memory even with a home (kith send) */
    bool handle_signals;           /* SIGINT/SIGTERM drain and stop the node (daemon) */
    bool workers;                  /* run the worker broker and turn inbox entries into
                                    * turns (router/workers/turns.h); false: nothing
                                    * consumes the inbox but router_inbox_pop */
    const char *workers_endpoint;  /* the broker's in-process endpoint; NULL:
                                    * inproc://kith.workers (one node per process) */
} router_node_opts_t;

/* Builds a node; nothing runs until router_node_run or _start. Returns NULL
 * with a one-line reason in err[errcap]. Caller owns the result. */
router_node_t *router_node_new(const router_node_opts_t *opts, char *err, size_t errcap);

/* Runs the node's loop on the calling thread until it is stopped (a signal
 * when handle_signals, or router_node_stop), once: a node stopped before,
 * or whose run ended, returns 0 at once. Returns 0, or -1 when the loop
 * failed. */
int router_node_run(router_node_t *self);

/* Runs the node on a thread of its own, once. Returns 0 or -1 (errno:
 * EALREADY when it runs already, ECANCELED when it was stopped or its
 * router_node_run ended). */
int router_node_start(router_node_t *self) __attribute__((warn_unused_result));

/* Graceful stop from any thread: stop accepting and reading, send the acks
 * owed for admitted envelopes once durable, close, then end the loop. Waits
 * for the node's thread's loop to end when it has one (the thread then tears
 * the loop down inside router_node_destroy; sends other threads are blocked
 * in return offline as soon as its loop ends). Sends and calls begun after
 * it are refused. Idempotent. */
void router_node_stop(router_node_t *self);

/* Stops (if running) and frees. Idempotent; nulls *self_p. */
void router_node_destroy(router_node_t **self_p);

/* The node's public key (32 bytes), its inbox, its metrics. Borrowed. */
const uint8_t *router_node_pubkey(const router_node_t *self);
router_inbox_t *router_node_inbox(router_node_t *self);
router_metrics_t *router_node_metrics(router_node_t *self);

/* The node's event loop, for modules that serve on the same thread (the
 * gateway). Borrowed; valid until router_node_destroy. */
router_loop_t *router_node_loop(router_node_t *self);

/* The worker broker and the turns (opts.workers), or NULL. Loop thread
 * only (the broker may also be used before the node runs). Borrowed. */
struct router_broker *router_node_broker(router_node_t *self);
struct router_turns *router_node_turns(router_node_t *self);

/* Runs fn(ud) on the loop thread when a graceful stop begins, before comms
 * drains: modules serving on the node's loop (the gateway) stop accepting
 * there. One hook; set it before the node runs. */
void router_node_on_stop(router_node_t *self, void (*fn)(void *ud), void *ud);

/* Loop thread, inside the on_stop hook: the loop does not end until a
 * matching router_node_drain_release, so a module can finish what it owes
 * (answers being written) before its connections are torn down. */
void router_node_drain_hold(router_node_t *self);
void router_node_drain_release(router_node_t *self);

/* Begins the graceful stop router_node_stop describes without waiting for
 * it: from the loop thread itself (POST /admin/shutdown) or any other. */
void router_node_stop_async(router_node_t *self);

/* Runs fn(ud) on the loop thread after the inbox made a batch durable
 * (gateway ingress answers its 202s then). One hook; set it on the loop
 * thread or before the node runs; fn NULL removes it. */
void router_node_on_durable(router_node_t *self, void (*fn)(void *ud), void *ud);

/* The token store whose lockouts count wrong Meerkat pairing proofs on the
 * comms port (borrowed; the daemon's, beside the gateway's /pair). Set it
 * before the node runs and NULL once the store stops; until it is set,
 * pairing refuses every handshake. No pairing configured: nothing. */
struct router_tokens;
void router_node_use_tokens(router_node_t *self, struct router_tokens *tokens);

/* Hands every comms event (each admission and each typed refusal, DESIGN
 * §8) to fn(ev, ud) on the loop thread, after the node has logged it: the
 * gateway publishes them on /api/events. One sink; NULL removes it. Set it
 * before the node runs, or on the loop thread. */
void router_node_set_event_sink(router_node_t *self, router_comms_event_fn *fn, void *ud);

/* Also tells fn(ev, ud) of the plain event lines each read queued (WIRE
 * §18.2 `channel_event`; session_id filled with comms.session), on the
 * loop thread; fn NULL removes it. Set it before the node runs. */
void router_node_set_channel_sink(router_node_t *self, router_channel_event_fn *fn, void *ud);

/* Sends the node's security events (envelope refusals, trust store
 * reloads and refused reloads) to `feed` (borrowed; NULL: none). Set it
 * before the node runs, or on the loop thread. */
void router_node_set_audit(router_node_t *self, router_audit_feed_t *feed);

/* The node's home directory, NULL when it keeps nothing on disk. Borrowed;
 * valid for the node's life. */
const char *router_node_home(const router_node_t *self);

/* Reloads trusted_peers.json now (as SIGHUP and the file watch do),
 * logging and auditing what changed with `why`; a file that does not load
 * keeps the store in force. Loop thread only. */
void router_node_trust_reload(router_node_t *self, const char *why);

/* The trust store in force. Loop thread only: reloads swap it there, so the
 * pointer is valid until the callback that asked returns. Borrowed. */
const router_trust_t *router_node_trust_view(const router_node_t *self);

/* Adds a trusted peer (name, key, "tcp://…" | "uds://…" | "inproc://…").
 * Before router_node_start/run only. Returns 0, or -1 with err set. */
int router_node_trust(router_node_t *self, const char *name, const uint8_t pk[32],
                      const char *addr, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* What became of one send. */
typedef struct {
    router_send_outcome_t outcome; /* acked, offline, rejected */
    uint8_t id[16];                /* the envelope's id */
    uint8_t ack_id[16];            /* the ack's id when acked */
    char detail[160];              /* why, for people */
} router_node_receipt_t;

/* Signs and sends an envelope with kind *kind (taken) to the trusted peer
 * named `to` (a name or a PeerId), waiting up to the node's ack timeout.
 * Blocks: call it from any thread but the node's own loop thread, with the
 * node running. Returns 0 with *out filled (whatever the outcome), or -1
 * with out->detail saying why nothing was sent (unknown peer, …). */
int router_node_send(router_node_t *self, const char *to, cbor_item_t **kind,
                     router_node_receipt_t *out);

/* What one send asks beyond the defaults. */
typedef struct {
    uint32_t timeout_ms; /* wait this long for the ack; 0: comms.ack_timeout_ms */
    bool no_ack;         /* expect no ack (kinds that are never acked already do):
                          * outcome ROUTER_SEND_SENT once written */
} router_node_send_opts_t;

/* router_node_send on the terms in *o (NULL: the defaults). */
int router_node_send_ex(router_node_t *self, const char *to, cbor_item_t **kind,
                        const router_node_send_opts_t *o, router_node_receipt_t *out);

/* router_node_send of a `message` kind with `body`. */
int router_node_send_message(router_node_t *self, const char *to, const char *body,
                             router_node_receipt_t *out);

/* Runs fn(self, arg) on the node's loop thread and returns what it
 * returned, waiting for it, with the errno fn left there; runs it on the
 * calling thread when the node is not running yet. Never from the loop
 * thread itself. Returns -1 (errno ECANCELED) once the node is stopping or
 * its loop has ended, or EAGAIN when the loop's post queue is full. */
typedef int(router_node_call_fn)(router_node_t *self, void *arg);
int router_node_call(router_node_t *self, router_node_call_fn *fn, void *arg);

/* As router_node_trust, at any time (running or not), replacing rows with
 * the same key or the same name, so the new row is the one `name` finds.
 * With persist and a home, the edit is made to trusted_peers.json as it is
 * now, under its lock (router_trust_edit, as `kith peers` makes its edits),
 * and the store saved is the one put in force: rows another writer added
 * to the file meanwhile are kept and trusted, as a reload would; rows the
 * node holds only in memory go, as in a reload. A failed load, edit or
 * write changes nothing. Trusting again what is trusted writes nothing.
 * Returns 0, or -1 with err set. */
int router_node_trust_set(router_node_t *self, const char *name, const uint8_t pk[32],
                          const char *addr, bool persist, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* A copy of the trust store in force, every row whole (caller owns it):
 * what router_node_trust_restore goes back to, to undo a trust_set. Any
 * thread. NULL with err set (out of memory). */
router_trust_t *router_node_trust_copy(router_node_t *self, char *err, size_t errcap);

/* Undoes the router_node_trust_set calls made since *store_p (taken,
 * nulled; a router_node_trust_copy) was copied, at any time: the rows
 * with the keys and names they wrote become *store_p's again. Every other
 * row stays as it is, in force and in the file: a peer `kith peers add`
 * added meanwhile is kept, and so is a row another writer changed after
 * the set. The node remembers its last 16 sets. With persist and a home
 * the edit is made to trusted_peers.json under its lock, as
 * router_node_trust_set makes it (a failed write changes nothing).
 * Returns 0, or -1 with err set. */
int router_node_trust_restore(router_node_t *self, router_trust_t **store_p, bool persist,
                              char *err, size_t errcap) __attribute__((warn_unused_result));

/* Also serves signed envelopes on `addr` (tcp://… or uds://…, as
 * comms.address takes them), at any time. Returns the bound TCP port (the
 * one chosen for port 0), 0 for a Unix socket, or -1 with err set. */
int router_node_listen(router_node_t *self, const char *addr, char *err, size_t errcap)
    __attribute__((warn_unused_result));

#endif
