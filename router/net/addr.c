/* router/net/addr.c — socket addresses: splitting `host:port` and
 * `[v6]:port` (the one splitter the config checker, the trust loader, the
 * resolver and the listeners share), parsing `tcp://…`, `uds://…` and paths
 * (never DNS), and formatting them back. */
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
    case ROUTER_ADDR_NO_HOST: return "no host before the port, or a host longer than 253 bytes";
    case ROUTER_ADDR_BAD_BRACKETS: return "not an IPv6 address inside [ ], as in [::1]:4200";
    case ROUTER_ADDR_UNBRACKETED_V6: return "an IPv6 address needs brackets, as in [::1]:4200";
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

/* ------------------------------------------------------------ host:port */

static bool s_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* RFC 1123 §2.1 host name, with the last label not all digits. */
static bool s_dns_name_valid(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    bool all_digits = true;
    for (size_t i = 0; i <= len; i++) {
        char c = s[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || label > 63 || s[i - 1] == '-')
                return false;
            if (c == '\0')
                break;
            label = 0;
            all_digits = true;
            continue;
        }
        if ((!s_alnum(c) && c != '-') || (label == 0 && c == '-'))
            return false;
        if (c < '0' || c > '9')
            all_digits = false;
        label++;
    }
    return !all_digits;
}

bool router_addr_host_valid(const char *host)
{
    struct in6_addr a6;
    struct in_addr a4;
    return inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1 ||
           s_dns_name_valid(host);
}

int router_addr_split(const char *text, router_hostport_t *out, router_addr_err_t *err)
{
    const char *hs, *port;
    size_t hlen;
    bool bracketed = text[0] == '[';
    if (bracketed) {
        const char *close = strchr(text, ']');
        if (!close)
            return s_fail(err, ROUTER_ADDR_BAD_BRACKETS);
        if (close[1] != ':')
            return s_fail(err, ROUTER_ADDR_BAD_PORT);
        hs = text + 1;
        hlen = (size_t) (close - hs);
        port = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon)
            return s_fail(err, ROUTER_ADDR_BAD_PORT);
        hs = text;
        hlen = (size_t) (colon - text);
        if (memchr(text, ':', hlen))
            return s_fail(err, ROUTER_ADDR_UNBRACKETED_V6);
        port = colon + 1;
    }
    if (hlen == 0 || hlen >= sizeof out->host)
        return s_fail(err, ROUTER_ADDR_NO_HOST);
    router_hostport_t hp;
    memcpy(hp.host, hs, hlen);
    hp.host[hlen] = '\0';
    struct in6_addr a6;
    if (bracketed && inet_pton(AF_INET6, hp.host, &a6) != 1)
        return s_fail(err, ROUTER_ADDR_BAD_BRACKETS);
    if (s_parse_port(port, &hp.port) != 0)
        return s_fail(err, ROUTER_ADDR_BAD_PORT);
    *out = hp;
    return 0;
}

int router_addr_from_host(const char *host, uint16_t port, router_addr_t *out,
                          router_addr_err_t *err)
{
    router_addr_t a;
    memset(&a, 0, sizeof a);
    memset(out, 0, sizeof *out);
    if (strchr(host, ':')) {
        a.u.in6.sin6_family = AF_INET6;
        a.u.in6.sin6_port = htons(port);
        if (inet_pton(AF_INET6, host, &a.u.in6.sin6_addr) != 1)
            return s_fail(err, ROUTER_ADDR_BAD_HOST);
        a.len = sizeof a.u.in6;
    } else {
        a.u.in4.sin_family = AF_INET;
        a.u.in4.sin_port = htons(port);
        if (strcmp(host, "localhost") == 0)
            a.u.in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &a.u.in4.sin_addr) != 1)
            return s_fail(err, ROUTER_ADDR_BAD_HOST);
        a.len = sizeof a.u.in4;
    }
    *out = a;
    return 0;
}

static int s_parse_inet(const char *text, router_addr_t *out, router_addr_err_t *err)
{
    router_hostport_t hp;
    if (router_addr_split(text, &hp, err) != 0)
        return -1;
    return router_addr_from_host(hp.host, hp.port, out, err);
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

bool router_addr_is_loopback(const router_addr_t *a)
{
    switch (router_addr_family(a)) {
    case AF_INET:
        return (ntohl(a->u.in4.sin_addr.s_addr) >> 24) == 127;
    case AF_INET6: {
        const uint8_t *b = a->u.in6.sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (IN6_IS_ADDR_LOOPBACK(&a->u.in6.sin6_addr))
            return true;
        return !memcmp(b, mapped, 12) && b[12] == 127;
    }
    case AF_UNIX:
        return true;
    default:
        return false;
    }
}

void router_addr_client(const router_addr_t *peer, char out[ROUTER_ADDR_CLIENT_MAX])
{
    snprintf(out, ROUTER_ADDR_CLIENT_MAX, "unknown");
    switch (peer ? router_addr_family(peer) : AF_UNSPEC) {
    case AF_INET:
        inet_ntop(AF_INET, &peer->u.in4.sin_addr, out, ROUTER_ADDR_CLIENT_MAX);
        break;
    case AF_INET6:
        if (IN6_IS_ADDR_V4MAPPED(&peer->u.in6.sin6_addr))
            inet_ntop(AF_INET, &peer->u.in6.sin6_addr.s6_addr[12], out, ROUTER_ADDR_CLIENT_MAX);
        else
            inet_ntop(AF_INET6, &peer->u.in6.sin6_addr, out, ROUTER_ADDR_CLIENT_MAX);
        break;
    case AF_UNIX:
        snprintf(out, ROUTER_ADDR_CLIENT_MAX, "unix");
        break;
    }
}

void router_addr_source(const router_addr_t *peer, char out[ROUTER_ADDR_CLIENT_MAX])
{
    if (!peer || router_addr_family(peer) != AF_INET6 ||
        IN6_IS_ADDR_V4MAPPED(&peer->u.in6.sin6_addr)) {
        router_addr_client(peer, out);
        return;
    }
    struct in6_addr net = peer->u.in6.sin6_addr;
    memset(net.s6_addr + 8, 0, 8);
    char text[INET6_ADDRSTRLEN];
    if (!inet_ntop(AF_INET6, &net, text, sizeof text))
        snprintf(text, sizeof text, "unknown");
    snprintf(out, ROUTER_ADDR_CLIENT_MAX, "%s/64", text);
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
