/* router/net/conn.h — connections driven by the loop: callbacks for data, EOF
 * and close, and a bounded send queue per connection (DESIGN §10).
 *
 * Lifetime: the loop owns every router_conn_t. A connection pointer handed
 * to you (by on_accept or router_loop_connect) stays valid until its
 * on_close callback returns; on_close is called exactly once, always from
 * the loop (never from inside a router_conn_* call), after which the loop
 * frees the connection. After router_conn_close/abort no more on_data calls
 * are made. All functions here are for the loop thread only. */
#ifndef KITH_ROUTER_CONN_H
#define KITH_ROUTER_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/net/shared_buf.h"

/* Per-connection unsent-byte limit by default (DESIGN §10). */
#define ROUTER_CONN_SEND_LIMIT (4u * 1024u * 1024u)

/* Why a connection closed, as passed to on_close. */
typedef enum router_close_reason {
    ROUTER_CLOSE_EOF = 1,       /* the peer closed; queued data was flushed first */
    ROUTER_CLOSE_LOCAL,         /* router_conn_close finished: queue flushed */
    ROUTER_CLOSE_ABORT,         /* router_conn_abort, or no handlers given at accept */
    ROUTER_CLOSE_ERROR,         /* a socket error; router_conn_error() says which */
    ROUTER_CLOSE_SLOW_CONSUMER, /* the send queue would have exceeded its limit */
    ROUTER_CLOSE_TIMEOUT,       /* router_conn_close could not flush in time */
    ROUTER_CLOSE_CONNECT_FAILED,/* an outbound connect failed; router_conn_error() */
    ROUTER_CLOSE_SHUTDOWN,      /* the loop was destroyed with the connection open */
    ROUTER_CLOSE_DEADLINE,      /* the deadline set by router_conn_set_deadline passed */
} router_close_reason_t;

/* "eof", "local", "abort", "error", "slow_consumer", "timeout",
 * "connect_failed", "shutdown", "deadline". */
const char *router_close_reason_str(router_close_reason_t reason);

/* Connection callbacks; only on_data and on_close are required. */
typedef struct router_conn_handlers {
    /* Outbound only: the connection is established. Data sent before this
     * was queued and goes out now. */
    void (*on_open)(router_conn_t *conn, void *ud);
    /* Bytes arrived. `data` is a loop-owned buffer valid only during this
     * call (with io_uring it goes back to the provided-buffer ring right
     * after); copy what you keep. Writable so parsers may work in place. */
    void (*on_data)(router_conn_t *conn, uint8_t *data, size_t len, void *ud);
    /* Optional: the peer shut down its sending side. The connection stays
     * open for sending; close it when done. Without on_eof the loop closes
     * the connection gracefully itself (reason ROUTER_CLOSE_EOF). */
    void (*on_eof)(router_conn_t *conn, void *ud);
    /* Optional: the send queue became empty (for producers that stopped
     * writing to respect the limit). */
    void (*on_drain)(router_conn_t *conn, void *ud);
    /* The connection is gone; the pointer is invalid after this returns. */
    void (*on_close)(router_conn_t *conn, router_close_reason_t reason, void *ud);
} router_conn_handlers_t;

/* Installs handlers (copied) and their user data. Call it from on_accept,
 * or pass handlers to router_loop_connect. */
void router_conn_set_handlers(router_conn_t *conn, const router_conn_handlers_t *handlers,
                              void *ud);

/* Starts an outbound connection (io_uring: prep_connect; epoll: nonblocking
 * connect + EPOLLOUT). The result is always reported from the loop: on_open,
 * or on_close with ROUTER_CLOSE_CONNECT_FAILED and router_conn_error() (e.g.
 * ECONNREFUSED, ENOENT). router_conn_send may be called at once; the data
 * waits for the connection. Outbound connections count towards max_conns
 * but are never refused by it. Returns the connection (owned by the loop,
 * see above), or NULL with errno set for local failures (EINVAL for an
 * empty or port-0 address, EMFILE, ENOMEM). handlers->on_data and
 * handlers->on_close are required. */
router_conn_t *router_loop_connect(router_loop_t *loop, const router_addr_t *addr,
                                   const router_conn_handlers_t *handlers, void *ud);

/* Serves an already connected stream socket (one end of a socket pair, as
 * the in-process transport makes): the loop takes `fd`, also on failure
 * (then it is closed). The fd is made nonblocking. Returns the connection
 * (owned by the loop, see above), or NULL with errno set. handlers->on_data
 * and handlers->on_close are required. */
router_conn_t *router_loop_adopt(router_loop_t *loop, int fd, const router_conn_handlers_t *handlers,
                                 void *ud);

/* Copies len bytes into the connection's send queue; they are written when
 * the loop next runs. If the unsent bytes would exceed the connection's
 * limit, nothing is queued and the connection is cut (on_close with
 * ROUTER_CLOSE_SLOW_CONSUMER, counted): returns -1 with errno ENOBUFS.
 * The loop's connections together hold at most about twice the loop's
 * send_total_limit: once len would take them past it, a connection's
 * limit is its share (send_total_limit / connections open), so one that
 * stopped reading is cut and one that keeps up goes on (counted in
 * unsent_total_cuts too).
 * Returns -1 with EPIPE on a connection that is closing or closed. */
int router_conn_send(router_conn_t *conn, const void *data, size_t len);

/* How many bytes router_conn_send would queue now without cutting the
 * connection: what its own limit leaves, or, when all connections together
 * are near the loop's send_total_limit, what its share leaves. 0 on a
 * connection that is closing or closed. For protocols that end a
 * connection politely (a WebSocket Close) before the loop would cut it. */
size_t router_conn_send_room(const router_conn_t *conn);

/* As router_conn_send for the last bytes before a close (a WebSocket
 * Close frame, a final error), at most ROUTER_CONN_LAST_MAX of them: queued
 * even past the connection's share of the loop's send_total_limit (never
 * past its own limit), so a connection cut for holding more than its
 * share is still told why. -1 with EINVAL when len is larger. */
#define ROUTER_CONN_LAST_MAX 256u
int router_conn_send_last(router_conn_t *conn, const void *data, size_t len);

/* As router_conn_send for several pieces (a frame header and its body, say):
 * all are queued or none. */
int router_conn_sendv(router_conn_t *conn, const struct iovec *iov, int iovcnt);

/* Queues a buffer many connections share (router/net/shared_buf.h: a
 * fan-out frame, say) without copying it: the queue takes its own
 * reference, so the caller may drop theirs at once; sb must not change
 * from now on. Its bytes count in full against this connection's limit,
 * but only once against the loop's send_total_limit however many
 * connections hold it, for as long as one does. Otherwise as
 * router_conn_send: -1 with ENOBUFS (cut as a slow consumer), EPIPE
 * (closing or closed), ENOMEM (cut: the stream misses a piece), or EINVAL
 * (sb NULL, or held by another loop's connections: nothing queued, the
 * connection goes on). */
int router_conn_send_shared(router_conn_t *conn, router_shared_buf_t *sb);

/* Whether router_conn_send_shared(conn, sb) and then `extra` more copied
 * bytes (a Close frame) would be queued now without a cut: the
 * counterpart of router_conn_send_room for a shared buffer, whose bytes
 * may already be counted in the loop's total. false on a connection that
 * is closing or closed. */
bool router_conn_send_shared_fits(const router_conn_t *conn, const router_shared_buf_t *sb,
                                  size_t extra);

/* Graceful close: stop delivering data, flush the send queue, shut down
 * our side, then close (reason ROUTER_CLOSE_LOCAL). Bounded by the loop's
 * close_timeout_ms (then ROUTER_CLOSE_TIMEOUT if data was still unsent). */
void router_conn_close(router_conn_t *conn);

/* Immediate close: queued data is discarded and the connection is reset
 * (SO_LINGER {1, 0}: the peer sees RST, never an orderly FIN), reason
 * ROUTER_CLOSE_ABORT. Every end that is not orderly resets the same way:
 * ROUTER_CLOSE_ABORT, _ERROR, _SLOW_CONSUMER, _TIMEOUT, _SHUTDOWN and
 * _DEADLINE. Only _EOF and _LOCAL end with FIN, so a peer can tell "closed
 * on purpose" from "cut" (spec/WIRE.md §9.1). */
void router_conn_abort(router_conn_t *conn);

/* Aborts the connection (as router_conn_abort, reason ROUTER_CLOSE_DEADLINE)
 * if it is still open at monotonic time `mono_ms` (router_loop_now_ms's
 * clock); 0 removes the deadline. Set it again to move it. Enforced by one
 * coarse sweep over the loop's connections (at most every
 * ROUTER_CONN_SWEEP_MS, and only while some connection has a deadline), so
 * a connection may outlive its deadline by up to that much. A graceful
 * close (router_conn_close) clears the deadline: the close is bounded by
 * close_timeout_ms instead. */
void router_conn_set_deadline(router_conn_t *conn, uint64_t mono_ms);

/* The sweep's granularity. */
#define ROUTER_CONN_SWEEP_MS 250u

/* For an owner that is going away while its connections are still open:
 * no callback reaches the owner again (not even on_close), queued data is
 * discarded, and the loop closes and frees the connection. The owner may
 * free its per-connection state right after this returns. */
void router_conn_disown(router_conn_t *conn);

/* Backpressure: stop reading from the socket (the kernel buffers fill and
 * TCP pushes back on the peer) until router_conn_resume_read. No on_data
 * call happens while paused; bytes already received when pausing are kept
 * and delivered on resume. EOF is reported after them. */
void router_conn_pause_read(router_conn_t *conn);
/* The most input this connection is handed per loop iteration (its turn,
 * loop.h "Fairness"), for a protocol whose input costs much per byte: what
 * arrives beyond it is parked and handed over in later iterations, never
 * dropped. 0 restores ROUTER_CONN_TURN_BYTES, which is also the maximum. */
void router_conn_set_turn_bytes(router_conn_t *conn, size_t bytes);
void router_conn_resume_read(router_conn_t *conn);

/* Sets this connection's unsent-byte limit (0: back to the loop default).
 * Takes effect for the next send. */
void router_conn_set_send_limit(router_conn_t *conn, size_t bytes);

/* Bytes queued and not yet written to the socket. */
size_t router_conn_send_queued(const router_conn_t *conn);

/* Bytes sent and not yet taken by the peer: the queue, and what the
 * kernel holds unsent or unacknowledged after it (SIOCOUTQ; one ioctl, so
 * for timers, not for every send). The kernel's part is most of it for a
 * slow reader: it drains first, and the queue moves once it has room. */
size_t router_conn_send_untaken(const router_conn_t *conn);

/* The socket, for setsockopt; never close it yourself. -1 once closed. */
int router_conn_fd(const router_conn_t *conn);

/* A number unique within the loop, for logs and maps. */
uint64_t router_conn_id(const router_conn_t *conn);

/* The peer's address (for a Unix socket, usually unnamed: len 2). */
const router_addr_t *router_conn_peer(const router_conn_t *conn);

/* The errno behind ROUTER_CLOSE_ERROR or ROUTER_CLOSE_CONNECT_FAILED, else 0. */
int router_conn_error(const router_conn_t *conn);

router_loop_t *router_conn_loop(const router_conn_t *conn);
void *router_conn_userdata(const router_conn_t *conn);

#endif
