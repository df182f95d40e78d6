/* router/comms/guard.c — admission bounds for comms and plain-event
 * connections: a source table (per-address counts), the unauthenticated
 * list (oldest first, cut to make room), the partial-frame budget (cut the
 * largest unauthenticated holder first) and the per-connection deadlines. */
#include "router/comms/guard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "router/log.h"

/* One source: an IP address (IPv4-mapped IPv6 counts as IPv4), or a Unix
 * socket listener (its peers have no address: they share one source). */
struct router_guard_source {
    router_guard_kind_t kind;        /* sources are counted per kind */
    uint8_t len;                     /* 4, 16, or sizeof(void *) for a listener */
    uint8_t key[16];                 /* the address bytes, or the listener pointer */
    unsigned count;                  /* connections counted against it */
    router_guard_source_t *next;     /* hash chain */
};

struct router_guard {
    router_loop_t *loop;
    router_guard_opts_t o;
    router_guard_source_t **buckets; /* source table */
    size_t nbuckets;                 /* a power of two */
    router_guard_conn_t *unauth_head, *unauth_tail; /* unauthenticated comms, oldest first */
    router_guard_conn_t *holders;    /* entries holding partial bytes */
    router_guard_stats_t stats;
    router_metric_t *m_refused[ROUTER_GUARD_KINDS];
    router_metric_t *m_cut[ROUTER_GUARD_KINDS][ROUTER_GUARD_CUTS];
    router_metric_t *m_unauth, *m_held;
};

static const char *const s_kind_names[ROUTER_GUARD_KINDS] = {"comms", "events"};

const char *router_guard_cut_str(router_guard_cut_t why)
{
    switch (why) {
    case ROUTER_GUARD_CUT_UNAUTH_EVICTED: return "unauth_evicted";
    case ROUTER_GUARD_CUT_PARTIAL_BUDGET: return "partial_budget";
    case ROUTER_GUARD_CUT_DEADLINE: return "deadline";
    case ROUTER_GUARD_CUT_SLOW_CONSUMER: return "slow_consumer";
    case ROUTER_GUARD_CUTS: break;
    }
    return "unknown";
}

/* ---------------------------------------------------------------- sources */

/* The source key of a connection; false when it has none (then exempt). */
static bool s_source_key(const router_conn_t *conn, const router_listener_t *l,
                         router_guard_source_t *k)
{
    const router_addr_t *a = router_conn_peer(conn);
    memset(k, 0, sizeof *k);
    if (!a || a->len == 0)
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
            k->len = 16;
            memcpy(k->key, b, 16);
        }
    } else if (a->u.sa.sa_family == AF_UNIX) {
        k->len = sizeof l;
        memcpy(k->key, &l, sizeof l);
    } else {
        return false;
    }
    return true;
}

static size_t s_hash(const router_guard_source_t *k)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t) k->kind;
    for (size_t i = 0; i < k->len; i++)
        h = (h ^ k->key[i]) * 1099511628211ull;
    return (size_t) (h ^ (h >> 29));
}

static router_guard_source_t **s_source_slot(router_guard_t *g, const router_guard_source_t *k)
{
    router_guard_source_t **p = &g->buckets[s_hash(k) & (g->nbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->kind == k->kind && (*p)->len == k->len && !memcmp((*p)->key, k->key, k->len))
            break;
    return p;
}

static void s_source_drop(router_guard_t *g, router_guard_source_t *s)
{
    if (--s->count > 0)
        return;
    router_guard_source_t **p = s_source_slot(g, s);
    *p = s->next;
    free(s);
}

static void s_format_source(const router_conn_t *conn, char *out, size_t cap)
{
    snprintf(out, cap, "?");
    (void) router_addr_format(router_conn_peer(conn), out, cap);
}

/* ---------------------------------------------------------------- lists */

static void s_unauth_unlink(router_guard_t *g, router_guard_conn_t *gc)
{
    if (!gc->unauth)
        return;
    if (gc->uprev)
        gc->uprev->unext = gc->unext;
    else
        g->unauth_head = gc->unext;
    if (gc->unext)
        gc->unext->uprev = gc->uprev;
    else
        g->unauth_tail = gc->uprev;
    gc->uprev = gc->unext = NULL;
    gc->unauth = false;
    g->stats.unauth--;
    router_metric_set(g->m_unauth, g->stats.unauth);
}

static void s_held_set(router_guard_t *g, router_guard_conn_t *gc, size_t bytes)
{
    if (gc->held == 0 && bytes > 0) {
        gc->hprev = NULL;
        gc->hnext = g->holders;
        if (g->holders)
            g->holders->hprev = gc;
        g->holders = gc;
    } else if (gc->held > 0 && bytes == 0) {
        if (gc->hprev)
            gc->hprev->hnext = gc->hnext;
        else
            g->holders = gc->hnext;
        if (gc->hnext)
            gc->hnext->hprev = gc->hprev;
        gc->hprev = gc->hnext = NULL;
    }
    g->stats.held = g->stats.held - gc->held + bytes;
    gc->held = bytes;
    if (g->stats.held > g->stats.held_peak)
        g->stats.held_peak = g->stats.held;
    router_metric_set(g->m_held, g->stats.held);
}

/* ---------------------------------------------------------------- cutting */

void router_guard_count_cut(router_guard_conn_t *gc, router_guard_cut_t why)
{
    router_guard_t *g = gc->guard;
    if (!g || why >= ROUTER_GUARD_CUTS)
        return;
    g->stats.cuts[gc->kind][why]++;
    router_metric_inc(g->m_cut[gc->kind][why], 1);
}

static void s_cut(router_guard_conn_t *gc, router_guard_cut_t why)
{
    char src[ROUTER_ADDR_STR_MAX];
    s_format_source(gc->conn, src, sizeof src);
    router_guard_count_cut(gc, why);
    ROUTER_LOG(ROUTER_LOG_WARN, s_kind_names[gc->kind], "connection %llu from %s cut: reason=%s held=%zu",
               (unsigned long long) router_conn_id(gc->conn), src, router_guard_cut_str(why),
               gc->held);
    router_guard_leave(gc);
    gc->on_cut(gc, why, gc->ud);
}

/* An unauthenticated holder goes before an authenticated one; among
 * equals, the largest. `self` is compared at the size it asks for. */
static router_guard_conn_t *s_pick_victim(router_guard_t *g, router_guard_conn_t *self,
                                          size_t self_size)
{
    router_guard_conn_t *best = NULL;
    bool best_unauth = false;
    size_t best_size = 0;
    for (router_guard_conn_t *c = g->holders;; c = c->hnext) {
        router_guard_conn_t *x = c ? c : self;
        if (!c && self->held > 0)
            break; /* self is on the list and was seen */
        size_t size = x == self ? self_size : x->held;
        bool unauth = x->unauth || x->kind == ROUTER_GUARD_EVENTS;
        if (!best || (unauth && !best_unauth) || (unauth == best_unauth && size > best_size)) {
            best = x;
            best_unauth = unauth;
            best_size = size;
        }
        if (!c)
            break;
    }
    return best;
}

/* ---------------------------------------------------------------- entries */

int router_guard_join(router_guard_t *g, router_guard_conn_t *gc, router_guard_kind_t kind,
                      router_conn_t *conn, const router_listener_t *listener,
                      router_guard_cut_fn *on_cut, void *ud)
{
    memset(gc, 0, sizeof *gc);
    gc->kind = kind;
    gc->conn = conn;
    gc->on_cut = on_cut;
    gc->ud = ud;
    router_guard_source_t k;
    if (listener && s_source_key(conn, listener, &k)) {
        k.kind = kind;
        router_guard_source_t **slot = s_source_slot(g, &k);
        unsigned cap = kind == ROUTER_GUARD_COMMS ? g->o.unauth_per_source_max
                                                  : g->o.events_per_source_max;
        if (*slot && (*slot)->count >= cap) {
            char src[ROUTER_ADDR_STR_MAX];
            s_format_source(conn, src, sizeof src);
            g->stats.refused_per_source[kind]++;
            router_metric_inc(g->m_refused[kind], 1);
            ROUTER_LOG(ROUTER_LOG_WARN, s_kind_names[kind],
                       "connection from %s refused: reason=per_source (%u %s open from it)", src,
                       (*slot)->count, kind == ROUTER_GUARD_COMMS ? "unauthenticated" : "");
            return -1;
        }
        if (kind == ROUTER_GUARD_COMMS && g->stats.unauth >= g->o.unauth_max && g->unauth_head)
            s_cut(g->unauth_head, ROUTER_GUARD_CUT_UNAUTH_EVICTED);
        slot = s_source_slot(g, &k); /* the cut may have freed a source */
        if (!*slot) {
            router_guard_source_t *s = malloc(sizeof *s);
            if (!s)
                return -1;
            *s = k;
            s->count = 0;
            s->next = NULL;
            *slot = s;
        }
        (*slot)->count++;
        gc->source = *slot;
        if (kind == ROUTER_GUARD_COMMS) {
            gc->unauth = true;
            gc->uprev = g->unauth_tail;
            if (g->unauth_tail)
                g->unauth_tail->unext = gc;
            else
                g->unauth_head = gc;
            g->unauth_tail = gc;
            g->stats.unauth++;
            router_metric_set(g->m_unauth, g->stats.unauth);
        }
    }
    gc->guard = g;
    if (g->o.first_frame_ms)
        router_conn_set_deadline(conn, router_loop_now_ms(g->loop) + g->o.first_frame_ms);
    return 0;
}

void router_guard_authenticated(router_guard_conn_t *gc)
{
    router_guard_t *g = gc->guard;
    if (!g || !gc->unauth)
        return;
    s_unauth_unlink(g, gc);
    if (gc->source) {
        s_source_drop(g, gc->source);
        gc->source = NULL;
    }
}

void router_guard_leave(router_guard_conn_t *gc)
{
    router_guard_t *g = gc->guard;
    if (!g)
        return;
    s_unauth_unlink(g, gc);
    if (gc->source) {
        s_source_drop(g, gc->source);
        gc->source = NULL;
    }
    s_held_set(g, gc, 0);
    gc->guard = NULL;
}

int router_guard_hold(router_guard_conn_t *gc, size_t bytes)
{
    router_guard_t *g = gc->guard;
    if (!g)
        return 0;
    if (bytes > gc->held) {
        size_t more = bytes - gc->held;
        while (g->stats.held + more > g->o.partial_bytes_max) {
            router_guard_conn_t *victim = s_pick_victim(g, gc, bytes);
            if (victim == gc) {
                router_guard_count_cut(gc, ROUTER_GUARD_CUT_PARTIAL_BUDGET);
                return -1;
            }
            s_cut(victim, ROUTER_GUARD_CUT_PARTIAL_BUDGET);
        }
    }
    s_held_set(g, gc, bytes);
    return 0;
}

void router_guard_drop(router_guard_conn_t *gc, size_t bytes)
{
    if (gc->guard && bytes < gc->held)
        s_held_set(gc->guard, gc, bytes);
}

/* ---------------------------------------------------------------- deadlines */

void router_guard_progress(router_guard_conn_t *gc, unsigned frames_done, bool mid_frame)
{
    router_guard_t *g = gc->guard;
    if (!g)
        return;
    bool was_mid = gc->mid_frame;
    gc->mid_frame = mid_frame;
    if (frames_done)
        gc->seen_frame = true;
    if (!gc->seen_frame)
        return; /* the first frame's deadline, set at join, holds */
    uint64_t now = router_loop_now_ms(g->loop);
    if (mid_frame) {
        /* A frame begun in this read (after one ended, or after idling). */
        if (!was_mid || frames_done)
            router_conn_set_deadline(gc->conn, g->o.frame_ms ? now + g->o.frame_ms : 0);
    } else {
        router_conn_set_deadline(gc->conn, g->o.idle_ms ? now + g->o.idle_ms : 0);
    }
}

void router_guard_pause(router_guard_conn_t *gc)
{
    if (!gc->guard)
        return;
    gc->mid_frame = false;
    gc->seen_frame = true; /* the peer did its part; the next read starts afresh */
    router_conn_set_deadline(gc->conn, 0);
}

/* ---------------------------------------------------------------- lifecycle */

router_guard_t *router_guard_new(const router_guard_opts_t *opts)
{
    router_guard_t *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->loop = opts->loop;
    g->o = *opts;
    if (!g->o.unauth_max)
        g->o.unauth_max = 2500;
    if (!g->o.unauth_per_source_max)
        g->o.unauth_per_source_max = 32;
    if (!g->o.events_per_source_max)
        g->o.events_per_source_max = 32;
    if (!g->o.partial_bytes_max)
        g->o.partial_bytes_max = 64u * 1024 * 1024;
    g->nbuckets = 64;
    while (g->nbuckets < 2u * g->o.unauth_max && g->nbuckets < (1u << 20))
        g->nbuckets *= 2;
    g->buckets = calloc(g->nbuckets, sizeof *g->buckets);
    if (!g->buckets) {
        free(g);
        return NULL;
    }
    if (opts->metrics) {
        for (int k = 0; k < ROUTER_GUARD_KINDS; k++) {
            char labels[96];
            snprintf(labels, sizeof labels, "kind=\"%s\",reason=\"per_source\"", s_kind_names[k]);
            g->m_refused[k] = router_metrics_add(
                opts->metrics, "kith_comms_conn_refused_total", labels, ROUTER_METRIC_COUNTER,
                "Connections refused at accept, by kind and reason.");
            for (int c = 0; c < ROUTER_GUARD_CUTS; c++) {
                snprintf(labels, sizeof labels, "kind=\"%s\",reason=\"%s\"", s_kind_names[k],
                         router_guard_cut_str((router_guard_cut_t) c));
                g->m_cut[k][c] = router_metrics_add(
                    opts->metrics, "kith_comms_conn_cut_total", labels, ROUTER_METRIC_COUNTER,
                    "Connections cut (reset) by the router, by kind and reason.");
            }
        }
        g->m_unauth = router_metrics_add(opts->metrics, "kith_comms_unauth_connections", NULL,
                                         ROUTER_METRIC_GAUGE,
                                         "Comms connections not yet authenticated.");
        g->m_held = router_metrics_add(opts->metrics, "kith_comms_partial_bytes", NULL,
                                       ROUTER_METRIC_GAUGE,
                                       "Bytes held in partial frames and lines, all connections.");
    }
    return g;
}

void router_guard_destroy(router_guard_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_guard_t *g = *self_p;
    for (size_t i = 0; i < g->nbuckets; i++)
        for (router_guard_source_t *s = g->buckets[i], *n; s; s = n) {
            n = s->next;
            free(s);
        }
    free(g->buckets);
    free(g);
    *self_p = NULL;
}

void router_guard_stats(const router_guard_t *self, router_guard_stats_t *out)
{
    *out = self->stats;
}
