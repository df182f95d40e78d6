/* kith.h — kith as a library: many kith nodes in one process, for testing
 * agents (DESIGN §13). Installed as <kith/kith.h>; link with
 * `pkg-config --cflags --libs kith` (add --static for libkith.a).
 *
 * A net is a private in-process namespace; each node in it has its own
 * Ed25519 identity, trust store and inbox, and runs on its own thread.
 * Nodes reach each other as inproc://<name> through exactly the framing,
 * checks and bounds TCP peers go through (spec/WIRE.md), and the net can
 * be told to misbehave: partition, heal, delay.
 *
 *     kith_net_t *net = kith_net_new();
 *     kith_node_t *a = kith_node_new(net, "a", NULL), *b = kith_node_new(net, "b", NULL);
 *     kith_node_trust(a, b);
 *     if (kith_node_send(a, "b", "hi", 5000) == KITH_ACKED) {
 *         kith_msg_t *m = NULL;
 *         if (kith_node_recv(b, &m, 5000) == 0)
 *             puts(kith_msg_json(m));   // {"id":"…","from":"ed25519:…","kind":{"type":"message","body":"hi"}}
 *         kith_msg_destroy(&m);
 *     }
 *     kith_net_destroy(&net);           // destroys a and b too
 *
 * Conventions. Every function is thread-safe: any thread may call any of
 * them on any object, except that an object must not be used after it is
 * destroyed, nor calls on it begun while it is being destroyed. Calls
 * already running on another thread when a node is destroyed (a recv or a
 * send waiting) return first, with -1 or KITH_OFFLINE and a reason, before
 * destroy frees it. A call that reaches a node another thread has
 * destroyed while its net lives is refused ("… was destroyed"): the net
 * keeps a small shell of each destroyed node (at most 1,024; a second
 * kith_node_destroy of the same pointer frees its shell at once), which the
 * Python module relies on. A `**` argument is taken: destroy functions
 * free the object and set the caller's pointer to NULL, and accept NULL.
 * Functions that fail return -1 (or NULL) and leave a one-line reason in
 * kith_last_error(), which, like errno, belongs to the calling thread and
 * is not cleared by calls that succeed. Strings returned are owned by the
 * object they come from and live as long as it does. Kinds, params and
 * results travel as JSON text, in the form spec/WIRE.md §22 gives.
 *
 * Nodes log warnings and errors (each refused envelope, for one) to
 * stderr, rate-limited; set KITH_LOG=debug|info|warn|error before the
 * first kith_net_new to change the level. This header includes nothing. */
#ifndef KITH_KITH_H
#define KITH_KITH_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KITH_EXPORT __attribute__((visibility("default")))
#else
#define KITH_EXPORT
#endif

/* What kith_node_send, _request and _respond return. */
#define KITH_ACKED   0  /* the peer's signed ack arrived (respond: written) */
#define KITH_OFFLINE 2  /* no ack in time, no connection, or a reset: it may or may not
                         * have arrived (spec/WIRE.md §8.3) */
#define KITH_REFUSED 3  /* the peer refused it (untrusted, replay, inbox full, …) */
#define KITH_ERROR   (-1) /* nothing was sent: bad arguments, unknown peer, … */

/* The wait a send uses when given timeout_ms <= 0 (DESIGN §8: 30 s). */
#define KITH_TIMEOUT_DEFAULT_MS 30000

typedef struct kith_net kith_net_t;   /* a private inproc namespace and its nodes */
typedef struct kith_node kith_node_t; /* one node */
typedef struct kith_msg kith_msg_t;   /* one received envelope */

/* ---------------------------------------------------------------- nets */

/* A new, empty, private inproc namespace. Caller owns it. NULL on failure. */
KITH_EXPORT kith_net_t *kith_net_new(void);

/* Destroys every node still in the net (as kith_node_destroy), then the
 * net; pointers to those nodes become invalid. NULL-safe; nulls *net_p. */
KITH_EXPORT void kith_net_destroy(kith_net_t **net_p);

/* ---------------------------------------------------------------- nodes */

/* A new node in `net`, reachable there as inproc://<name>, running on a
 * thread of its own. `name`: 1..64 of [A-Za-z0-9._-], unique in the net.
 * `home`: NULL keeps everything in memory (a fresh identity each time);
 * a directory (created, mode 0700, if missing) keeps the node's state as
 * `kith daemon --home` does — identity, trusted_peers.json, and the inbox
 * with the replay window in state.db — so destroying a node and making it
 * again from the same home models a restart: same key, trust kept,
 * undelivered messages kept, replays still refused. One live node per
 * home, in this process or another (a `kith daemon` included): the node
 * holds a lock on <home>/node.lock, and a second is refused, saying so.
 * The net owns the node: kith_net_destroy destroys it.
 * NULL on failure. */
KITH_EXPORT kith_node_t *kith_node_new(kith_net_t *net, const char *name, const char *home);

/* a trusts b and b trusts a, each under the other's name at inproc://<name>
 * (replacing a row with the same key or name; trusting again is a no-op).
 * With a home, the edit is made to <home>/trusted_peers.json under its
 * lock, as `kith peers` makes it: rows another writer added there since
 * the node started are kept, and trusted from then on. Both nodes must be
 * in the same net. All or nothing: returns 0, or -1 with neither node's trust
 * changed. */
KITH_EXPORT int kith_node_trust(kith_node_t *a, kith_node_t *b);

/* Also serves signed envelopes on `addr`: "tcp://HOST:PORT" (port 0: one
 * is chosen) or "uds:///ABS/PATH", so other programs — a `kith daemon`,
 * another kith library, a Meerkat peer — can send to the node. They must
 * be trusted: put them in <home>/trusted_peers.json before kith_node_new.
 * Returns the bound TCP port for tcp://, 0 for uds://, or -1. */
KITH_EXPORT int kith_node_listen(kith_node_t *n, const char *addr);

/* "ed25519:" + standard padded base64 of the node's public key. Owned by n. */
KITH_EXPORT const char *kith_node_pubkey(const kith_node_t *n);

/* Signs and sends a `message` {body} to the trusted peer `to` (its name,
 * its PeerId, or its "ed25519:…" key) and waits up to timeout_ms (<= 0:
 * KITH_TIMEOUT_DEFAULT_MS) for its ack. Returns KITH_ACKED, KITH_OFFLINE,
 * KITH_REFUSED (kith_last_error() then says why) or KITH_ERROR. */
KITH_EXPORT int kith_node_send(kith_node_t *n, const char *to, const char *body, int timeout_ms);

/* As kith_node_send for a `request` {intent, params}; params_json is any
 * JSON value (NULL: null). The answer, if the peer gives one, arrives as a
 * `response` through kith_node_recv. */
KITH_EXPORT int kith_node_request(kith_node_t *n, const char *to, const char *intent,
                                  const char *params_json, int timeout_ms);

/* Takes the oldest received envelope into *msg_p (caller owns it: free it
 * with kith_msg_destroy), waiting up to timeout_ms (0: do not wait; < 0:
 * for ever). Each admitted envelope is given out once. Returns 0, or -1 on
 * timeout (kith_last_error(): "timeout"), out of memory (the envelope
 * stays for the next recv), the node being destroyed meanwhile, or bad
 * arguments. */
KITH_EXPORT int kith_node_recv(kith_node_t *n, kith_msg_t **msg_p, int timeout_ms);

/* The envelope as one line of JSON: {"id","from","kind":{…}} (WIRE §22).
 * Owned by m. */
KITH_EXPORT const char *kith_msg_json(const kith_msg_t *m);

/* Answers `request` (a received `request`) with a signed `response`
 * {in_reply_to: its id, status, result} to its sender. status: "accepted",
 * "completed" or "failed"; result_json any JSON value (NULL: null).
 * Responses are not acked (WIRE §8.2): KITH_ACKED here means written to
 * the connection within timeout_ms; KITH_REFUSED that the peer closed it
 * first. Returns as kith_node_send. */
KITH_EXPORT int kith_node_respond(kith_node_t *n, const kith_msg_t *request, const char *status,
                                  const char *result_json, int timeout_ms);

/* NULL-safe; nulls *msg_p. */
KITH_EXPORT void kith_msg_destroy(kith_msg_t **msg_p);

/* Stops the node — it finishes what it admitted and acks it, then closes
 * its connections — and frees it. Its peers see it offline. NULL-safe;
 * nulls *node_p. */
KITH_EXPORT void kith_node_destroy(kith_node_t **node_p);

/* ---------------------------------------------------------------- faults
 * For tests of what agents do when the network misbehaves. Faults are set
 * between two nodes of one net, both directions, on the connections open
 * now and those made later. Bytes are never dropped or reordered. */

/* Holds every byte between a and b: sends report KITH_OFFLINE once their
 * timeout passes. What was written stays queued and is delivered, in
 * order, on heal (as TCP carries a stream across a cut mended in time).
 * Returns 0 or -1. */
KITH_EXPORT int kith_net_partition(kith_net_t *net, kith_node_t *a, kith_node_t *b);

/* Ends a partition between a and b; held bytes flow. Returns 0 or -1. */
KITH_EXPORT int kith_net_heal(kith_net_t *net, kith_node_t *a, kith_node_t *b);

/* Holds each chunk of bytes between a and b `ms` milliseconds (0..86400000;
 * 0 ends the delay) after it was written. A new value applies to bytes
 * already held, so setting 0 releases them. Returns 0 or -1. */
KITH_EXPORT int kith_net_delay(kith_net_t *net, kith_node_t *a, kith_node_t *b, int ms);

/* ---------------------------------------------------------------- misc */

/* This thread's last error, "" when there was none. Valid until this
 * thread's next failing call. */
KITH_EXPORT const char *kith_last_error(void);

/* The library's version, "MAJOR.MINOR.PATCH". */
KITH_EXPORT const char *kith_version(void);

#ifdef __cplusplus
}
#endif

#endif
