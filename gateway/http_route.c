/* gateway/http_route.c — the route table: registering (method, pattern)
 * pairs and finding the most specific one for a request, or the methods
 * that would have been allowed (405) when none fits. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "gateway/http_internal.h"

/* tchar (RFC 9110 §5.6.2). */
static bool s_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

bool gateway_http_is_token(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n + 1 >= max || !s_tchar((unsigned char) s[n]))
            return false;
    return n > 0;
}

/* A pattern is "/" followed by path characters, with '*' only at its end. */
static bool s_pattern_ok(const char *pattern)
{
    size_t n = strlen(pattern);
    if (n == 0 || n >= GATEWAY_HTTP_PATTERN_MAX || pattern[0] != '/')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) pattern[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || (c == '*' && i + 1 != n))
            return false;
    }
    return true;
}

int gateway_http_route(gateway_http_t *g, const char *method, const char *pattern,
                       gateway_http_handler_fn fn, void *ud)
{
    if (method && !gateway_http_is_token(method, GATEWAY_HTTP_METHOD_MAX)) {
        errno = EINVAL;
        return -1;
    }
    gateway_http_route_t r = {.fn = fn, .ud = ud};
    snprintf(r.method, sizeof r.method, "%s", method ? method : "");
    return gateway_http_route_add(g, &r, pattern);
}

int gateway_http_route_ws(gateway_http_t *g, const char *pattern, const char *const *protocols,
                          size_t nprotocols, gateway_http_handler_fn fn, void *ud)
{
    if (nprotocols > GATEWAY_WS_PROTOCOLS_MAX || (nprotocols && !protocols)) {
        errno = EINVAL;
        return -1;
    }
    for (size_t i = 0; i < nprotocols; i++)
        if (!protocols[i] || !gateway_http_is_token(protocols[i], 64)) {
            errno = EINVAL;
            return -1;
        }
    gateway_http_route_t r = {
        .method = "GET", .fn = fn, .ud = ud, .ws = true,
        .protocols = protocols, .nprotocols = nprotocols,
    };
    return gateway_http_route_add(g, &r, pattern);
}

int gateway_http_route_add(gateway_http_t *g, const gateway_http_route_t *route,
                           const char *pattern)
{
    if (!g || !pattern || !route->fn || !s_pattern_ok(pattern)) {
        errno = EINVAL;
        return -1;
    }
    gateway_http_route_t r = *route;
    r.pattern_len = strlen(pattern);
    r.prefix = pattern[r.pattern_len - 1] == '*';
    if (r.prefix)
        r.pattern_len--;
    memcpy(r.pattern, pattern, r.pattern_len);
    r.pattern[r.pattern_len] = '\0';
    for (size_t i = 0; i < g->nroutes; i++) {
        const gateway_http_route_t *o = &g->routes[i];
        if (o->prefix == r.prefix && !strcmp(o->pattern, r.pattern) &&
            !strcmp(o->method, r.method) && o->ws == r.ws) {
            errno = EEXIST;
            return -1;
        }
    }
    if (g->nroutes == GATEWAY_HTTP_ROUTES_MAX) {
        errno = ENOSPC;
        return -1;
    }
    g->routes[g->nroutes++] = r;
    return 0;
}

/* How well a route's pattern fits a path: 0 not at all, else larger is
 * more specific (any exact path beats any prefix). */
static size_t s_path_score(const gateway_http_route_t *r, proto_http_slice_t path)
{
    if (!path.ptr || path.len < r->pattern_len || memcmp(path.ptr, r->pattern, r->pattern_len))
        return 0;
    if (r->prefix)
        return 1 + r->pattern_len;
    return path.len == r->pattern_len ? SIZE_MAX : 0;
}

static bool s_method_eq(proto_http_slice_t m, const char *name)
{
    size_t n = strlen(name);
    return m.len == n && !memcmp(m.ptr, name, n);
}

/* How well a route's method fits: 0 not at all, 3 the same method, 2 any
 * method, 1 a GET route answering HEAD. */
static int s_method_score(const gateway_http_route_t *r, proto_http_slice_t method)
{
    if (!r->method[0])
        return 2;
    if (s_method_eq(method, r->method))
        return 3;
    if (!strcmp(r->method, "GET") && s_method_eq(method, "HEAD"))
        return 1;
    return 0;
}

/* Appends `m` to the comma-separated list in allow[cap] unless it is there. */
static void s_allow_add(char *allow, size_t cap, const char *m)
{
    size_t n = strlen(m), len = strlen(allow);
    for (const char *p = allow; *p;) {
        const char *end = strchr(p, ',');
        size_t k = end ? (size_t) (end - p) : strlen(p);
        if (k == n && !memcmp(p, m, n))
            return;
        p += k;
        while (*p == ',' || *p == ' ')
            p++;
    }
    if (len + (len ? 2 : 0) + n + 1 > cap)
        return;
    snprintf(allow + len, cap - len, "%s%s", len ? ", " : "", m);
}

const gateway_http_route_t *gateway_http_route_find(const gateway_http_t *g,
                                                    proto_http_slice_t method,
                                                    proto_http_slice_t path, bool ws,
                                                    char *allow, size_t cap)
{
    const gateway_http_route_t *best = NULL;
    size_t best_path = 0;
    int best_method = 0;
    bool path_taken = false;
    if (cap)
        allow[0] = '\0';
    for (size_t i = 0; i < g->nroutes; i++) {
        const gateway_http_route_t *r = &g->routes[i];
        size_t ps = r->ws == ws ? s_path_score(r, path) : 0;
        if (!ps)
            continue;
        path_taken = true;
        int ms = s_method_score(r, method);
        if (ms && (ps > best_path || (ps == best_path && ms > best_method))) {
            best = r;
            best_path = ps;
            best_method = ms;
        }
    }
    if (best || !path_taken || !cap)
        return best;
    /* Some route takes the path, none with this method: list what would do. */
    for (size_t i = 0; i < g->nroutes; i++) {
        const gateway_http_route_t *r = &g->routes[i];
        if (r->ws != ws || !s_path_score(r, path))
            continue;
        s_allow_add(allow, cap, r->method);
        if (!strcmp(r->method, "GET"))
            s_allow_add(allow, cap, "HEAD");
    }
    return NULL;
}
