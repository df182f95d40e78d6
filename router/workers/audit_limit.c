/* router/workers/audit_limit.c — token buckets per (type, source) and per
 * type for the audit records outsiders can cause, and the counts of what
 * they held back. See audit_limit.h and WIRE §21.7. */
#include "router/workers/audit_limit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hash buckets of the pairs (a power of two). */
#define S_BUCKETS 256u
/* Tokens are counted in thousandths, so a refill of a few a second loses
 * nothing to rounding at millisecond steps. */
#define S_MILLI 1000u

/* The limited types, in the order of s_types. */
static const char *const s_types[] = {"auth_failure", "pair_failed", "envelope_rejected", "admin"};
#define S_NTYPES (sizeof s_types / sizeof s_types[0])

typedef struct s_pair s_pair_t;

struct s_pair {
    unsigned type;                                  /* index into s_types */
    char source[ROUTER_AUDIT_LIMIT_SOURCE_LEN + 1];
    uint64_t tokens;                                /* thousandths */
    uint64_t at_ms;                                 /* last refill */
    uint64_t count, first_ms, last_ms;              /* held back, not flushed */
    s_pair_t *hnext;                                /* bucket chain */
    s_pair_t *prev, *next;                          /* recency, most recent first */
};

typedef struct {
    uint64_t tokens, at_ms; /* all sources' bucket */
    s_pair_t star;          /* "*": counts of pairs let go, and of events with no memory */
} s_type_t;

struct router_audit_limit {
    s_type_t types[S_NTYPES];
    s_pair_t *buckets[S_BUCKETS];
    s_pair_t *head, *tail;  /* recency list */
    size_t npairs;
    uint64_t pending;
};

static unsigned s_type_index(const char *type)
{
    for (unsigned i = 0; i < S_NTYPES; i++)
        if (strcmp(type, s_types[i]) == 0)
            return i;
    return S_NTYPES;
}

static unsigned s_hash(unsigned type, const char *source)
{
    uint32_t h = 2166136261u ^ type;
    for (const unsigned char *p = (const unsigned char *) source; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h & (S_BUCKETS - 1);
}

/* Adds what the time since at_ms earned, up to burst. */
static void s_refill(uint64_t *tokens, uint64_t *at_ms, uint64_t now, unsigned burst,
                     unsigned per_s)
{
    if (now > *at_ms) {
        uint64_t earned = (now - *at_ms) * per_s; /* ms × per second = thousandths */
        uint64_t cap = (uint64_t) burst * S_MILLI;
        *tokens = *tokens + earned > cap ? cap : *tokens + earned;
    }
    *at_ms = now;
}

static void s_count(router_audit_limit_t *self, s_pair_t *p, uint64_t now)
{
    if (!p->count)
        p->first_ms = now;
    p->count++;
    p->last_ms = now;
    self->pending++;
}

static void s_unlink(router_audit_limit_t *self, s_pair_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        self->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        self->tail = p->prev;
    p->prev = p->next = NULL;
}

static void s_push_front(router_audit_limit_t *self, s_pair_t *p)
{
    p->prev = NULL;
    p->next = self->head;
    if (self->head)
        self->head->prev = p;
    else
        self->tail = p;
    self->head = p;
}

/* Lets the least recently seen pair go; what it held back moves to its
 * type's "*". */
static void s_evict(router_audit_limit_t *self)
{
    s_pair_t *p = self->tail;
    s_unlink(self, p);
    s_pair_t **pp = &self->buckets[s_hash(p->type, p->source)];
    while (*pp != p)
        pp = &(*pp)->hnext;
    *pp = p->hnext;
    if (p->count) {
        s_pair_t *star = &self->types[p->type].star;
        if (!star->count || p->first_ms < star->first_ms)
            star->first_ms = p->first_ms;
        if (p->last_ms > star->last_ms)
            star->last_ms = p->last_ms;
        star->count += p->count;
    }
    free(p);
    self->npairs--;
}

router_audit_limit_t *router_audit_limit_new(void)
{
    router_audit_limit_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    for (unsigned i = 0; i < S_NTYPES; i++) {
        self->types[i].tokens = (uint64_t) ROUTER_AUDIT_LIMIT_TYPE_BURST * S_MILLI;
        self->types[i].star.type = i;
        snprintf(self->types[i].star.source, sizeof self->types[i].star.source, "*");
    }
    return self;
}

void router_audit_limit_destroy(router_audit_limit_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_audit_limit_t *self = *self_p;
    while (self->head) {
        s_pair_t *p = self->head;
        self->head = p->next;
        free(p);
    }
    free(self);
    *self_p = NULL;
}

bool router_audit_limit_applies(const char *type)
{
    return s_type_index(type) < S_NTYPES;
}

bool router_audit_limit_take(router_audit_limit_t *self, const char *type, const char *source,
                             uint64_t now_ms)
{
    unsigned t = s_type_index(type);
    if (t == S_NTYPES)
        return true;
    char src[ROUTER_AUDIT_LIMIT_SOURCE_LEN + 1];
    snprintf(src, sizeof src, "%s", source && source[0] ? source : "unknown");
    s_pair_t **slot = &self->buckets[s_hash(t, src)];
    s_pair_t *p = *slot;
    while (p && (p->type != t || strcmp(p->source, src) != 0))
        p = p->hnext;
    if (p) {
        s_unlink(self, p);
    } else {
        if (self->npairs >= ROUTER_AUDIT_LIMIT_SOURCES_MAX)
            s_evict(self);
        if (!(p = calloc(1, sizeof *p))) {
            s_count(self, &self->types[t].star, now_ms);
            return false;
        }
        p->type = t;
        memcpy(p->source, src, sizeof p->source);
        p->tokens = (uint64_t) ROUTER_AUDIT_LIMIT_SOURCE_BURST * S_MILLI;
        p->at_ms = now_ms;
        p->hnext = *slot;
        *slot = p;
        self->npairs++;
    }
    s_push_front(self, p);
    s_type_t *ty = &self->types[t];
    s_refill(&p->tokens, &p->at_ms, now_ms, ROUTER_AUDIT_LIMIT_SOURCE_BURST,
             ROUTER_AUDIT_LIMIT_SOURCE_PER_S);
    s_refill(&ty->tokens, &ty->at_ms, now_ms, ROUTER_AUDIT_LIMIT_TYPE_BURST,
             ROUTER_AUDIT_LIMIT_TYPE_PER_S);
    if (p->tokens >= S_MILLI && ty->tokens >= S_MILLI) {
        p->tokens -= S_MILLI;
        ty->tokens -= S_MILLI;
        return true;
    }
    s_count(self, p, now_ms);
    return false;
}

uint64_t router_audit_limit_pending(const router_audit_limit_t *self)
{
    return self->pending;
}

static void s_flush_one(s_pair_t *p, router_audit_limit_fn *fn, void *ud)
{
    if (!p->count)
        return;
    fn(s_types[p->type], p->source, p->count, p->first_ms, p->last_ms, ud);
    p->count = 0;
}

void router_audit_limit_flush(router_audit_limit_t *self, router_audit_limit_fn *fn, void *ud)
{
    /* Oldest first, then each type's "*". */
    for (s_pair_t *p = self->tail; p; p = p->prev)
        s_flush_one(p, fn, ud);
    for (unsigned i = 0; i < S_NTYPES; i++)
        s_flush_one(&self->types[i].star, fn, ud);
    self->pending = 0;
}
