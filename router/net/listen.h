/* router/net/listen.h — listeners: TCP over IPv4 and IPv6, and Unix-domain
 * stream sockets. Addresses: router/net/addr.h. */
#ifndef KITH_ROUTER_LISTEN_H
#define KITH_ROUTER_LISTEN_H

#include <stdint.h>

#include "router/net/addr.h"
#include "router/net/loop.h"

/* ------------------------------------------------------------ listeners */

/* Called on the loop thread for every accepted connection. The callback
 * must either give the connection handlers (router_conn_set_handlers) or
 * abort it; a connection left without handlers is aborted by the loop.
 * The loop owns `conn` (see router/net/conn.h for its lifetime). */
typedef void (*router_accept_fn)(router_listener_t *listener, router_conn_t *conn, void *ud);

/* Default listen(2) backlog. */
#define ROUTER_LISTEN_BACKLOG 511

/* Opens a listening socket on `addr` and starts accepting (epoll: a
 * level-triggered accept4 loop; io_uring: the same through an epoll set the
 * ring polls, so no io_uring request ever holds the socket and a killed
 * process's port is free the moment it is reaped — WIRE §9.2).
 * - TCP: SO_REUSEADDR; `[::]` listens dual-stack (IPV6_V6ONLY off, IPv4
 *   peers appear as ::ffff:a.b.c.d); any other IPv6 address is IPv6-only.
 * - Unix: missing parent directories are created (0700) and the socket
 *   file is made 0600 (owner only) before listen(). An existing file
 *   at the path is replaced only when it is a socket nobody listens on (a
 *   stale one); a live socket fails with EADDRINUSE, any other kind of file
 *   with EEXIST. The socket file is removed again by router_listener_close.
 * Accepted connections beyond the loop's max_conns (or the listener's own
 * cap) are reset at once (RST, never an orderly end: WIRE §9.1) and
 * counted as refused. When accept fails for want of descriptors or memory
 * (accept4's, or no memory for the connection, whose peer is reset) the
 * listener pauses for 100 ms; it keeps
 * one of the loop's timer slots (max_timers) for that pause, taken now or,
 * if none is free, as soon as one is — until then a failure pauses it
 * until a slot frees, it never retries in a tight loop.
 * Returns the listener, owned by the loop until router_listener_close (or
 * router_loop_destroy); NULL with errno set on failure. Loop thread only. */
router_listener_t *router_loop_listen(router_loop_t *loop, const router_addr_t *addr,
                                      router_accept_fn on_accept, void *ud);

/* Stops accepting and closes the listening socket; connections already
 * accepted carry on. No on_accept call happens after this returns. Nulls
 * *listener; idempotent. Loop thread only. */
void router_listener_close(router_listener_t **listener);

/* The address actually bound (the real port when listening on port 0). */
const router_addr_t *router_listener_addr(const router_listener_t *listener);

/* Caps the connections open through this listener (0: only the loop's
 * max_conns applies). */
void router_listener_set_max_conns(router_listener_t *listener, unsigned max_conns);

/* Per-listener counters, for metrics. */
typedef struct router_listener_stats {
    uint64_t accepted; /* connections handed to on_accept */
    uint64_t refused;  /* connections reset at once: a limit was reached */
    unsigned open;     /* connections from this listener still open */
} router_listener_stats_t;

void router_listener_stats(const router_listener_t *listener, router_listener_stats_t *out);

/* ------------------------------------------------------------ sockets */

/* Creates, binds and listens on a nonblocking, close-on-exec socket for
 * `addr` with the rules of router_loop_listen. Returns the fd, or -1 with
 * errno set. For callers that hand the socket to something else. */
int router_listen_socket_open(const router_addr_t *addr, int backlog)
    __attribute__((warn_unused_result));

#endif
