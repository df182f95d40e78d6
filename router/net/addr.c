/* router/net/addr.c — socket addresses: parsing `host:port`, `[v6]:port`,
 * `tcp://…`, `uds://…` and paths (never DNS), and formatting them back. */
#include "router/net/addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ addresses */

const char *router_addr_err_str(router_addr_err_t err)
{
    switch (err) {
    case ROUTER_ADDR_OK: return "ok";
    case ROUTER_ADDR_EMPTY: return "empty or too long";
    case ROUTER_ADDR_BAD_SCHEME: return "unsupported scheme (tcp:// or uds:// only)";
    case ROUTER_ADDR_BAD_HOST:
        return "host must be an IPv4 literal, a bracketed IPv6 literal or localhost";
    case ROUTER_ADDR_BAD_PORT: return "port must be a decimal number from 0 to 65535";
    case ROUTER_ADDR_BAD_PATH: return "a Unix socket path must start with / or ./";
    case ROUTER_ADDR_PATH_TOO_LONG: return "Unix socket path too long";
    }
    return "unknown";
}

static int s_fail(router_addr_err_t *err, router_addr_err_t why)
{
    if (err)
        *err = why;
    return -1;
}

/* 1 to 5 decimal digits, at most 65535. */
static int s_parse_port(const char *s, uint16_t *out)
{
    unsigned v = 0;
    size_t n = 0;
    for (; s[n]; n++) {
        if (s[n] < '0' || s[n] > '9' || n == 5)
            return -1;
        v = v * 10 + (unsigned) (s[n] - '0');
    }
    if (n == 0 || v > 65535)
        return -1;
    *out = (uint16_t) v;
    return 0;
}

static int s_parse_path(const char *path, bool need_abs, router_addr_t *out,
                        router_addr_err_t *err)
{
    bool rel = path[0] == '.' && (path[1] == '/' || (path[1] == '.' && path[2] == '/'));
    if (path[0] != '/' && (need_abs || !rel))
        return s_fail(err, ROUTER_ADDR_BAD_PATH);
    size_t len = strlen(path);
    if (len >= sizeof out->u.un.sun_path)
        return s_fail(err, ROUTER_ADDR_PATH_TOO_LONG);
    out->u.un.sun_family = AF_UNIX;
    memcpy(out->u.un.sun_path, path, len + 1);
    out->len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len + 1);
    return 0;
}

static int s_parse_inet(const char *hp, router_addr_t *out, router_addr_err_t *err)
{
    char host[INET6_ADDRSTRLEN];
    const char *port;
    size_t hlen;
    bool v6 = hp[0] == '[';
    if (v6) {
        const char *close = strchr(hp, ']');
        if (!close)
            return s_fail(err, ROUTER_ADDR_BAD_HOST);
        if (close[1] != ':')
            return s_fail(err, ROUTER_ADDR_BAD_PORT);
        hp++;
        hlen = (size_t) (close - hp);
        port = close + 2;
    } else {
        const char *colon = strrchr(hp, ':');
        if (!colon)
            return s_fail(err, ROUTER_ADDR_BAD_PORT);
        hlen = (size_t) (colon - hp);
        if (memchr(hp, ':', hlen))
            return s_fail(err, ROUTER_ADDR_BAD_HOST); /* IPv6 needs brackets */
        port = colon + 1;
    }
    if (hlen == 0 || hlen >= sizeof host)
        return s_fail(err, ROUTER_ADDR_BAD_HOST);
    memcpy(host, hp, hlen);
    host[hlen] = '\0';
    uint16_t p;
    if (s_parse_port(port, &p) != 0)
        return s_fail(err, ROUTER_ADDR_BAD_PORT);
    if (v6) {
        out->u.in6.sin6_family = AF_INET6;
        out->u.in6.sin6_port = htons(p);
        if (inet_pton(AF_INET6, host, &out->u.in6.sin6_addr) != 1)
            return s_fail(err, ROUTER_ADDR_BAD_HOST);
        out->len = sizeof out->u.in6;
        return 0;
    }
    out->u.in4.sin_family = AF_INET;
    out->u.in4.sin_port = htons(p);
    if (strcmp(host, "localhost") == 0)
        out->u.in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &out->u.in4.sin_addr) != 1)
        return s_fail(err, ROUTER_ADDR_BAD_HOST);
    out->len = sizeof out->u.in4;
    return 0;
}

int router_addr_parse(const char *text, router_addr_t *out, router_addr_err_t *err)
{
    router_addr_t a;
    memset(&a, 0, sizeof a);
    if (out)
        memset(out, 0, sizeof *out);
    if (err)
        *err = ROUTER_ADDR_OK;
    if (!text || !out || !*text || strnlen(text, ROUTER_ADDR_TEXT_MAX + 1) > ROUTER_ADDR_TEXT_MAX)
        return s_fail(err, ROUTER_ADDR_EMPTY);
    int rc;
    if (strncmp(text, "tcp://", 6) == 0)
        rc = s_parse_inet(text + 6, &a, err);
    else if (strncmp(text, "uds://", 6) == 0)
        rc = s_parse_path(text + 6, true, &a, err);
    else if (strstr(text, "://"))
        rc = s_fail(err, ROUTER_ADDR_BAD_SCHEME);
    else if (text[0] == '/' || text[0] == '.')
        rc = s_parse_path(text, false, &a, err);
    else
        rc = s_parse_inet(text, &a, err);
    if (rc == 0)
        *out = a;
    return rc;
}

int router_addr_family(const router_addr_t *a)
{
    return a && a->len > 0 ? a->u.sa.sa_family : AF_UNSPEC;
}

uint16_t router_addr_port(const router_addr_t *a)
{
    switch (router_addr_family(a)) {
    case AF_INET: return ntohs(a->u.in4.sin_port);
    case AF_INET6: return ntohs(a->u.in6.sin6_port);
    default: return 0;
    }
}

int router_addr_format(const router_addr_t *a, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN];
    int n;
    switch (router_addr_family(a)) {
    case AF_INET:
        if (!inet_ntop(AF_INET, &a->u.in4.sin_addr, host, sizeof host))
            return -1;
        n = snprintf(out, cap, "%s:%u", host, ntohs(a->u.in4.sin_port));
        break;
    case AF_INET6:
        if (!inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof host))
            return -1;
        n = snprintf(out, cap, "[%s]:%u", host, ntohs(a->u.in6.sin6_port));
        break;
    case AF_UNIX:
        if (a->len <= offsetof(struct sockaddr_un, sun_path) || a->u.un.sun_path[0] == '\0')
            n = snprintf(out, cap, "unix:(unnamed)");
        else
            n = snprintf(out, cap, "%.*s",
                         (int) (a->len - offsetof(struct sockaddr_un, sun_path)),
                         a->u.un.sun_path);
        break;
    default:
        return -1;
    }
    return (n < 0 || (size_t) n >= cap) ? -1 : 0;
}
