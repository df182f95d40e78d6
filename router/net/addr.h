/* router/net/addr.h — socket addresses (`host:port`, `[v6]:port`, `/path`):
 * kith's one host:port splitter, parsing and formatting; no DNS, no I/O. */
#ifndef KITH_ROUTER_NET_ADDR_H
#define KITH_ROUTER_NET_ADDR_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

/* ------------------------------------------------------------ addresses */

/* Longest address text accepted by router_addr_parse. */
#define ROUTER_ADDR_TEXT_MAX 256
/* Room for any address router_addr_format writes, NUL included. */
#define ROUTER_ADDR_STR_MAX 128
/* Room for the host part of `host:port`: a DNS name (253) or an IP
 * literal, NUL included. */
#define ROUTER_ADDR_HOST_MAX 254

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
    ROUTER_ADDR_NO_HOST,       /* nothing before the port, or the host is too long */
    ROUTER_ADDR_BAD_BRACKETS,  /* "[" without "]", or no IPv6 literal inside them */
    ROUTER_ADDR_UNBRACKETED_V6, /* a ":" in a host outside brackets */
} router_addr_err_t;

/* The two parts of `host:port`. */
typedef struct router_hostport {
    char host[ROUTER_ADDR_HOST_MAX]; /* as written, brackets removed */
    uint16_t port;                   /* 0..65535 */
} router_hostport_t;

/* Splits `host:port` or `[v6]:port` (RFC 3986 §3.2.2): a host in brackets
 * must be an IPv6 literal, and a host outside them has no ":" (so an IPv6
 * address always needs brackets); the host is not empty; the port is 1 to
 * 5 decimal digits, at most 65535 (0 allowed). The host text is not
 * otherwise judged: router_addr_host_valid() says whether it may be a
 * name, router_addr_from_host() turns literals into a socket address.
 * Every host:port kith reads goes through here. Returns 0, or -1 with
 * *err (when err is non-NULL) saying why. */
int router_addr_split(const char *text, router_hostport_t *out, router_addr_err_t *err)
    __attribute__((warn_unused_result));

/* Whether `host` (no brackets) is an IPv4 literal, an IPv6 literal or an
 * RFC 1123 host name (labels of letters, digits and inner hyphens, at most
 * 253 bytes, the last label not all digits, so "1.2.3" is never a name). */
bool router_addr_host_valid(const char *host);

/* The TCP socket address for `host` (no brackets) and `port`: an IPv4 or
 * IPv6 literal, or `localhost` (always 127.0.0.1). Other names need DNS,
 * which is the caller's business: -1 with *err ROUTER_ADDR_BAD_HOST. */
int router_addr_from_host(const char *host, uint16_t port, router_addr_t *out,
                          router_addr_err_t *err) __attribute__((warn_unused_result));

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

/* Room for what router_addr_client writes, NUL included. */
#define ROUTER_ADDR_CLIENT_MAX 64

/* A peer as the audit log, the logs and the lockouts name it: its IP
 * address without the port (an IPv4-mapped IPv6 address as the IPv4 one,
 * as sources are counted: a client of a dual-stack listener is the same
 * client as on an IPv4 one), "unix" for a Unix socket, "unknown" for NULL
 * or anything else. */
void router_addr_client(const router_addr_t *peer, char out[ROUTER_ADDR_CLIENT_MAX]);

/* A peer as lockouts count it (spec/WIRE.md §17.2, §23.6), the way
 * router/net/sources.h counts sources: as router_addr_client, except that
 * an IPv6 address is its /64 ("2001:db8:1:2::/64"), since whoever holds
 * one address of a /64 usually holds them all. */
void router_addr_source(const router_addr_t *peer, char out[ROUTER_ADDR_CLIENT_MAX]);

/* AF_INET, AF_INET6, AF_UNIX, or AF_UNSPEC for an empty address. */
int router_addr_family(const router_addr_t *addr);

/* The TCP port, or 0 for a Unix socket address. */
uint16_t router_addr_port(const router_addr_t *addr);

/* True when only this machine can use the address: 127.0.0.0/8, ::1, an
 * IPv4-mapped 127.x, or a Unix socket. The wildcard (0.0.0.0, ::) is not. */
bool router_addr_is_loopback(const router_addr_t *addr);

#endif
