/* router/comms/outbound.h — sending signed envelopes to peers (DESIGN §8): one
 * connection per peer, reused; each envelope waits for the peer's signed
 * ack up to the ack timeout, then the peer is reported offline. A peer that
 * closes the connection orderly (FIN) while envelopes wait has refused them
 * (it closes orderly only on a typed rejection); a reset, an error or a cut
 * leaves their fate unknown: offline (spec/WIRE.md §9.1). Loop thread only. */
#ifndef KITH_ROUTER_OUTBOUND_H
#define KITH_ROUTER_OUTBOUND_H

#include <stddef.h>
#include <stdint.h>

#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/state/identity.h"

typedef struct router_outbound router_outbound_t;

typedef enum {
    ROUTER_SEND_ACKED = 0,  /* the peer's signed ack arrived */
    ROUTER_SEND_OFFLINE,    /* no connection, no ack before the timeout, a reset: unknown */
    ROUTER_SEND_REJECTED,   /* the peer closed orderly without an ack: a typed refusal */
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
 * connection to that peer if there is one. `cb` runs exactly once, never
 * from inside this call. Returns 0, or -1 with errno set (nothing sent, no
 * callback): ENOSPC or ENOMEM when the ack's timer cannot be set, ENOBUFS
 * when too many sends wait on the link, EPIPE when it is closing. */
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

/* One send's own terms, for router_outbound_send_ex. */
typedef struct {
    uint32_t timeout_ms; /* wait this long for the ack; 0: the outbound's ack_timeout_ms */
    int no_ack;          /* a kind the peer never acks (response, WIRE §8.2): settled
                          * acked ("written", ack_id NULL) once the frame is written */
} router_outbound_send_opts_t;

/* As router_outbound_send (addr non-NULL) or router_outbound_send_fd (addr
 * NULL, fd taken) with the terms in *o (NULL: the defaults). */
int router_outbound_send_ex(router_outbound_t *self, const uint8_t peer_pk[32],
                            const router_addr_t *addr, int fd, const uint8_t *frame, size_t len,
                            const uint8_t id[16], const router_outbound_send_opts_t *o,
                            router_send_fn *cb, void *ud) __attribute__((warn_unused_result));

/* True when a connection to this peer is open (so no new fd is needed). */
int router_outbound_connected(const router_outbound_t *self, const uint8_t peer_pk[32]);

const char *router_send_outcome_str(router_send_outcome_t o);

#endif
