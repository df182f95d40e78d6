/* router/net/sources.c — a fixed-size hash table of source addresses and
 * their connection counts (see sources.h). */
#include "router/net/sources.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "router/net/addr.h"

struct router_source {
    unsigned klass;                  /* sources are counted per class */
    uint8_t len;                     /* 4 (IPv4), 8 (an IPv6 /64), 9 (a Unix listener) */
    uint8_t key[16];                 /* the address bytes, or 'u' and the listener pointer */
    unsigned count;                  /* connections counted against it */
    router_source_list_t list;       /* the caller's list (router_source_list) */
    router_source_t *next;           /* hash chain */
};

struct router_sources {
    router_source_t **buckets;
    size_t nbuckets;                 /* a power of two */
};

/* The source key of a connection; false when it has none. */
static bool s_key(const router_conn_t *conn, const router_listener_t *l, router_source_t *k)
{
    const router_addr_t *a = router_conn_peer(conn);
    memset(k, 0, sizeof *k);
    if (!l || !a || a->len == 0)
        return false;
    if (a->u.sa.sa_family == AF_INET) {
        k->len = 4;
        memcpy(k->key, &a->u.in4.sin_addr, 4);
    } else if (a->u.sa.sa_family == AF_INET6) {
        const uint8_t *b = a->u.in6.sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(b, mapped, 12) == 0) {
            k->len = 4;
            memcpy(k->key, b + 12, 4);
        } else {
            /* The /64: one site's subnet. Anyone handed a /64 (every IPv6
             * customer is) has 2^64 addresses; per full address, one
             * attacker would be as many sources as he liked. */
            k->len = 8;
            memcpy(k->key, b, 8);
        }
    } else if (a->u.sa.sa_family == AF_UNIX) {
        /* A length of its own, so no /64 can ever equal a pointer's bytes. */
        _Static_assert(1 + sizeof l <= sizeof k->key && 1 + sizeof l != 8 && 1 + sizeof l != 4,
                       "a listener key has a length of its own");
        k->len = 1 + sizeof l;
        k->key[0] = 'u';
        memcpy(k->key + 1, &l, sizeof l);
    } else {
        return false;
    }
    return true;
}

static size_t s_hash(const router_source_t *k)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t) k->klass;
    for (size_t i = 0; i < k->len; i++)
        h = (h ^ k->key[i]) * 1099511628211ull;
    return (size_t) (h ^ (h >> 29));
}

static router_source_t **s_slot(router_sources_t *self, const router_source_t *k)
{
    router_source_t **p = &self->buckets[s_hash(k) & (self->nbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->klass == k->klass && (*p)->len == k->len && !memcmp((*p)->key, k->key, k->len))
            break;
    return p;
}

router_sources_t *router_sources_new(size_t expect)
{
    router_sources_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->nbuckets = 64;
    while (self->nbuckets < 2 * expect && self->nbuckets < (1u << 20))
        self->nbuckets *= 2;
    if (!(self->buckets = calloc(self->nbuckets, sizeof *self->buckets))) {
        free(self);
        return NULL;
    }
    return self;
}

void router_sources_destroy(router_sources_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_sources_t *self = *self_p;
    for (size_t i = 0; i < self->nbuckets; i++)
        for (router_source_t *s = self->buckets[i], *n; s; s = n) {
            n = s->next;
            free(s);
        }
    free(self->buckets);
    free(self);
    *self_p = NULL;
}

router_sources_add_t router_sources_add(router_sources_t *self, const router_conn_t *conn,
                                        const router_listener_t *listener, unsigned klass,
                                        unsigned cap, router_source_t **out)
{
    *out = NULL;
    router_source_t k;
    if (!s_key(conn, listener, &k))
        return ROUTER_SOURCES_NONE;
    k.klass = klass;
    router_source_t **slot = s_slot(self, &k);
    if (*slot && (*slot)->count >= cap)
        return ROUTER_SOURCES_FULL;
    if (!*slot) {
        router_source_t *s = malloc(sizeof *s);
        if (!s)
            return ROUTER_SOURCES_NOMEM;
        *s = k;
        s->count = 0;
        s->next = NULL;
        *slot = s;
    }
    (*slot)->count++;
    *out = *slot;
    return ROUTER_SOURCES_COUNTED;
}

void router_sources_release(router_sources_t *self, router_source_t **source_p)
{
    router_source_t *s = source_p ? *source_p : NULL;
    if (!s)
        return;
    *source_p = NULL;
    if (--s->count > 0)
        return;
    router_source_t **p = s_slot(self, s);
    *p = s->next;
    free(s);
}

router_source_t *router_sources_find(router_sources_t *self, const router_conn_t *conn,
                                     const router_listener_t *listener, unsigned klass)
{
    router_source_t k;
    if (!s_key(conn, listener, &k))
        return NULL;
    k.klass = klass;
    return *s_slot(self, &k);
}

router_source_list_t *router_source_list(router_source_t *source)
{
    return &source->list;
}
