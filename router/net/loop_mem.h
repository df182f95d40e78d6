/* router/net/loop_mem.h — a loop backend without kernel I/O
 * (ROUTER_LOOP_MEMORY), for harnesses that run the real connection code
 * (conn.c and the protocol on top) on bytes: the caller makes connections,
 * feeds them input and EOF, and is handed what they write. A wait never
 * blocks; timers still run on the monotonic clock. Listeners and outbound
 * connects are refused (EOPNOTSUPP). Loop thread only, like the rest. */
#ifndef KITH_ROUTER_LOOP_MEM_H
#define KITH_ROUTER_LOOP_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "router/net/conn.h"
#include "router/net/loop.h"

/* The far end of every connection of a memory loop. */
typedef struct {
    /* Bytes a connection wrote, in order; valid during the call only. */
    void (*on_output)(router_conn_t *conn, const uint8_t *data, size_t len, void *ud);
    /* The connection went down (its owner's on_close follows when the loop
     * settles); ROUTER_CLOSE_LOCAL and _EOF are orderly ends (FIN), the
     * others resets. Optional. */
    void (*on_end)(router_conn_t *conn, router_close_reason_t reason, void *ud);
} router_mem_peer_t;

/* Installs the peer (copied; ud borrowed) on a ROUTER_LOOP_MEMORY loop.
 * `window` is the most bytes the peer reads from one connection per loop
 * iteration (0: all), so a slow reader can be played. Returns 0, or -1
 * with errno EINVAL (not a memory loop, or no on_output). */
int router_mem_peer_set(router_loop_t *loop, const router_mem_peer_t *peer, void *ud,
                        size_t window) __attribute__((warn_unused_result));

/* A new connection, open and as yet without handlers, as on_accept would
 * get it: hand it to its owner (which calls router_conn_set_handlers) or
 * abort it. Owned by the loop (conn.h). NULL with errno (EINVAL, ENOMEM). */
router_conn_t *router_mem_conn_new(router_loop_t *loop);

/* As if the peer sent data[0..len): handed to the connection in reads of
 * at most the loop's recv_buf_size. Returns the bytes taken: all of them
 * on a connection that is closing or gone (they are dropped, as the
 * kernel would), fewer when the connection stops reading (paused, or its
 * parked input is at its bound): run the loop and offer the rest again. */
size_t router_mem_conn_feed(router_conn_t *conn, const uint8_t *data, size_t len);

/* As if the peer shut down its sending side. */
void router_mem_conn_eof(router_conn_t *conn);

/* Runs the loop until nothing is left to do now: no pending work, no
 * parked input due, nothing queued the peer would still read (at most
 * `max_iterations`; 0: 10000). Returns the iterations run. */
unsigned router_mem_run(router_loop_t *loop, unsigned max_iterations);

#endif
