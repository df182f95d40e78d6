/* router/listen.h — socket addresses (`host:port`, `[v6]:port`, `/path`) and
 * listeners: TCP over IPv4 and IPv6, and Unix-domain stream sockets. */
#ifndef KITH_ROUTER_LISTEN_H
#define KITH_ROUTER_LISTEN_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "router/loop.h"

/* ------------------------------------------------------------ addresses */

/* Longest address text accepted by router_addr_parse. */
#define ROUTER_ADDR_TEXT_MAX 256
/* Room for any address router_addr_format writes, NUL included. */
#define ROUTER_ADDR_STR_MAX 128

/* A parsed socket address; plain data, copy it freely. */
typedef struct router_addr {
    union {
        struct sockaddr sa;          /* family-independent view */
        struct sockaddr_in in4;      /* AF_INET */
        struct sockaddr_in6 in6;     /* AF_INET6 */
        struct sockaddr_un un;       /* AF_UNIX */
        struct sockaddr_storage ss;  /* room for any of them */
    } u;
    socklen_t len; /* bytes of u in use; 0 for an empty address */
} router_addr_t;

/* Why an address text was refused. */
typedef enum router_addr_err {
    ROUTER_ADDR_OK = 0,
    ROUTER_ADDR_EMPTY,         /* empty, or longer than ROUTER_ADDR_TEXT_MAX */
    ROUTER_ADDR_BAD_SCHEME,    /* a scheme other than tcp:// or uds:// */
    ROUTER_ADDR_BAD_HOST,      /* not an IPv4 literal, [IPv6] literal or localhost */
    ROUTER_ADDR_BAD_PORT,      /* missing, not decimal, or over 65535 */
    ROUTER_ADDR_BAD_PATH,      /* a socket path not starting with / (or ./ ../) */
    ROUTER_ADDR_PATH_TOO_LONG, /* does not fit sockaddr_un.sun_path */
} router_addr_err_t;

/* Parses one of:
 *   `127.0.0.1:4200`, `localhost:4200` (always 127.0.0.1: no DNS here),
 *   `[::1]:4200`, `[::]:4200` (IPv6; `[::]` also accepts IPv4, see
 *   router_loop_listen), `tcp://` + any of those,
 *   `/abs/path.sock`, `./rel.sock`, `uds:///abs/path.sock` (Unix socket;
 *   `inproc://` is not a socket address and is refused as BAD_SCHEME).
 * Names that would need DNS are refused: the loop thread never resolves.
 * Port 0 is accepted (an ephemeral port when listening). Returns 0, or -1
 * with *err (when err is non-NULL) saying why. */
int router_addr_parse(const char *text, router_addr_t *out, router_addr_err_t *err)
    __attribute__((warn_unused_result));

const char *router_addr_err_str(router_addr_err_t err);

/* Writes `a.b.c.d:port`, `[v6]:port` or the socket path into out[cap].
 * Returns 0, or -1 when it does not fit or the address is empty. */
int router_addr_format(const router_addr_t *addr, char *out, size_t cap);

/* AF_INET, AF_INET6, AF_UNIX, or AF_UNSPEC for an empty address. */
int router_addr_family(const router_addr_t *addr);

/* The TCP port, or 0 for a Unix socket address. */
uint16_t router_addr_port(const router_addr_t *addr);

/* ------------------------------------------------------------ listeners */

/* Called on the loop thread for every accepted connection. The callback
 * must either give the connection handlers (router_conn_set_handlers) or
 * abort it; a connection left without handlers is aborted by the loop.
 * The loop owns `conn` (see router/conn.h for its lifetime). */
typedef void (*router_accept_fn)(router_listener_t *listener, router_conn_t *conn, void *ud);

/* Default listen(2) backlog. */
#define ROUTER_LISTEN_BACKLOG 511

/* Opens a listening socket on `addr` and starts accepting (io_uring:
 * multishot accept; epoll: level-triggered accept4 loop).
 * - TCP: SO_REUSEADDR; `[::]` listens dual-stack (IPV6_V6ONLY off, IPv4
 *   peers appear as ::ffff:a.b.c.d); any other IPv6 address is IPv6-only.
 * - Unix: missing parent directories are created (0700) and the socket
 *   file is made 0600 (owner only) before listen(). An existing file
 *   at the path is replaced only when it is a socket nobody listens on (a
 *   stale one); a live socket fails with EADDRINUSE, any other kind of file
 *   with EEXIST. The socket file is removed again by router_listener_close.
 * Accepted connections beyond the loop's max_conns (or the listener's own
 * cap) are closed at once and counted as refused.
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
    uint64_t refused;  /* connections closed at once: a limit was reached */
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
