/* router/comms/outbound.h — sending signed envelopes to peers (DESIGN §8): one
 * connection per peer, reused (or, toward a Meerkat-profile peer, one
 * connection per envelope, WIRE §23.1); each acked kind waits for the peer's signed
 * ack up to the ack timeout, then the peer is reported offline. A peer that
 * closes the connection orderly (FIN) while envelopes wait has refused them
 * (it closes orderly only on a typed rejection); a reset, an error or a cut
 * leaves their fate unknown: offline (spec/WIRE.md §9.1). Loop thread only. */
#ifndef KITH_ROUTER_OUTBOUND_H
#define KITH_ROUTER_OUTBOUND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/state/identity.h"

typedef struct router_outbound router_outbound_t;

/* Addresses one send may dial in turn (a DNS name's, spec/WIRE.md §1.1);
 * more are ignored. */
#define ROUTER_OUTBOUND_ADDRS_MAX 8u

typedef enum {
    ROUTER_SEND_ACKED = 0,  /* the peer's signed ack arrived */
    ROUTER_SEND_OFFLINE,    /* no connection, no ack before the timeout, a reset: unknown */
    ROUTER_SEND_REJECTED,   /* the peer closed orderly without an ack: a typed refusal */
    ROUTER_SEND_SENT,       /* written; the kind gets no ack (response, ack), so that is all we know */
} router_send_outcome_t;

/* Called once per send, on the loop thread. `detail` says more ("ack
 * timeout", "connection refused", …); `ack_id` is the ack's id when acked,
 * else NULL. */
typedef void(router_send_fn)(router_send_outcome_t outcome, const char *detail,
                             const uint8_t *ack_id, void *ud);

typedef struct {
    router_loop_t *loop;               /* borrowed */
    const router_identity_t *identity; /* our key, to check acks are for us; borrowed */
    uint32_t ack_timeout_ms;           /* DESIGN: 30000 */
} router_outbound_opts_t;

/* Returns NULL on allocation failure. Caller owns the result. */
router_outbound_t *router_outbound_new(const router_outbound_opts_t *opts);

/* Fails every waiting send (offline: "shutting down"), closes the peer
 * connections, frees. Idempotent; nulls *self_p. */
void router_outbound_destroy(router_outbound_t **self_p);

/* Sends one framed, signed envelope (`frame`: 4-byte length + CBOR, copied)
 * with id `id` to the peer with key `peer_pk` at `addr`, reusing the open
 * connection to that peer if there is one (not one that is ending: the
 * send then dials anew). `cb` runs exactly once, never from inside this
 * call. Returns 0, or -1 with errno set (nothing sent, no callback): ENOSPC
 * or ENOMEM when the ack's timer cannot be set, ENOBUFS when too many sends
 * wait on the link, EPIPE when it broke under the send. */
int router_outbound_send(router_outbound_t *self, const uint8_t peer_pk[32],
                         const router_addr_t *addr, const uint8_t *frame, size_t len,
                         const uint8_t id[16], router_send_fn *cb, void *ud)
    __attribute__((warn_unused_result));

/* As router_outbound_send over an already connected socket (the in-process
 * transport hands one end of a socket pair); `fd` is taken, also on
 * failure. Used only when no connection to the peer is open. */
int router_outbound_send_fd(router_outbound_t *self, const uint8_t peer_pk[32], int fd,
                            const uint8_t *frame, size_t len, const uint8_t id[16],
                            router_send_fn *cb, void *ud) __attribute__((warn_unused_result));

/* One send, fully described (router_outbound_send_msg). */
typedef struct {
    const uint8_t *peer_pk;     /* the peer's key, 32 bytes */
    const router_addr_t *addr;  /* where (TCP, UDS); NULL: serve fd instead */
    size_t naddrs;              /* addr[] holds this many (0 means 1), dialed in turn
                                 * until one connects: a refusal or a connect past its
                                 * share of the time left moves on (spec/WIRE.md §1.1) */
    int fd;                     /* with addr NULL: a connected socket, taken (also on failure) */
    const uint8_t *frame;       /* 4-byte length + CBOR, copied */
    size_t len;
    const uint8_t *id;          /* the envelope's id, 16 bytes */
    bool oneshot;               /* Meerkat profile: a connection of its own, closed after
                                 * its answer (WIRE §23.1); at most 256 open at once */
    bool no_ack;                /* the kind gets no ack (proto_kind_acked false), or the
                                 * caller wants none: the send settles ROUTER_SEND_SENT
                                 * once queued on an open connection, or OFFLINE when no
                                 * connection opened within timeout_ms */
    uint32_t timeout_ms;        /* how long to wait for the ack; 0: ack_timeout_ms */
    router_send_fn *cb;         /* runs exactly once, never from inside the call */
    void *ud;
} router_outbound_msg_t;

/* The general send: router_outbound_send and _send_fd are this with
 * oneshot and no_ack false. Returns 0, or -1 with errno set as they do
 * (ENOBUFS also when 256 one-envelope connections are open). */
int router_outbound_send_msg(router_outbound_t *self, const router_outbound_msg_t *m)
    __attribute__((warn_unused_result));

/* True when a connection to this peer is open and not ending (so no new fd
 * is needed): one whose peer closed it, or that we cut, is not reused. */
int router_outbound_connected(const router_outbound_t *self, const uint8_t peer_pk[32]);

const char *router_send_outcome_str(router_send_outcome_t o);

#endif
