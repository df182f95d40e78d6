/* router/comms/guard.c — admission bounds for comms and plain-event
 * connections: counts per source address (router/net/sources.h), the unauthenticated
 * list (oldest first, cut to make room; per source too, cut to make room
 * at the source's share), the partial-frame budget (cut the largest
 * unauthenticated holder first) and the per-connection deadlines. */
#include "router/comms/guard.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/log.h"
#include "router/net/addr.h"

struct router_guard {
    router_loop_t *loop;
    router_guard_opts_t o;
    router_sources_t *sources;       /* connections per source, by kind */
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
    case ROUTER_GUARD_CUT_SOURCE_EVICTED: return "source_evicted";
    case ROUTER_GUARD_CUTS: break;
    }
    return "unknown";
}

static void s_format_source(const router_conn_t *conn, char *out, size_t cap)
{
    snprintf(out, cap, "?");
    (void) router_addr_format(router_conn_peer(conn), out, cap);
}

/* ---------------------------------------------------------------- lists */

/* Appends gc to the unauthenticated list, and to its source's. */
static void s_unauth_link(router_guard_t *g, router_guard_conn_t *gc)
{
    gc->unauth = true;
    gc->uprev = g->unauth_tail;
    if (g->unauth_tail)
        g->unauth_tail->unext = gc;
    else
        g->unauth_head = gc;
    g->unauth_tail = gc;
    g->stats.unauth++;
    router_metric_set(g->m_unauth, g->stats.unauth);
    router_source_list_t *l = router_source_list(gc->source);
    gc->sprev = l->tail;
    if (l->tail)
        ((router_guard_conn_t *) l->tail)->snext = gc;
    else
        l->head = gc;
    l->tail = gc;
}

static void s_unauth_unlink(router_guard_t *g, router_guard_conn_t *gc)
{
    if (!gc->unauth)
        return;
    router_source_list_t *l = router_source_list(gc->source);
    if (gc->sprev)
        gc->sprev->snext = gc->snext;
    else
        l->head = gc->snext;
    if (gc->snext)
        gc->snext->sprev = gc->sprev;
    else
        l->tail = gc->sprev;
    gc->sprev = gc->snext = NULL;
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

/* Which of a full source's unauthenticated connections makes room for a
 * newcomer from it: one that has not delivered a frame. The oldest silent
 * one first (no byte of a frame read: a newcomer that just connected is
 * silent too, so one peer connecting while an attacker floods is cut only
 * once the attacker's older ones are); else the one mid-way through its
 * first frame that has gone longest without a read, so a peer streaming a
 * large first envelope outlasts connections that sent a byte and stopped
 * (were those never cut, 32 connections with a byte each would lock the
 * address out again, renewed every first-frame deadline). A connection
 * whose envelope is being checked is never cut for this: it is done
 * sending its part. NULL when all have delivered one. */
static router_guard_conn_t *s_source_victim(router_source_t *source)
{
    router_guard_conn_t *stalest = NULL;
    for (router_guard_conn_t *c = router_source_list(source)->head; c; c = c->snext) {
        if (c->seen_frame)
            continue;
        if (!c->mid_frame && c->held == 0)
            return c;
        if (!stalest || c->read_at < stalest->read_at)
            stalest = c;
    }
    return stalest;
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
    unsigned cap = kind == ROUTER_GUARD_COMMS ? g->o.unauth_per_source_max
                                              : g->o.events_per_source_max;
    router_sources_add_t added = router_sources_add(g->sources, conn, listener, kind, cap, &gc->source);
    if (added == ROUTER_SOURCES_FULL && kind == ROUTER_GUARD_COMMS) {
        router_source_t *source = router_sources_find(g->sources, conn, listener, kind);
        router_guard_conn_t *victim = source ? s_source_victim(source) : NULL;
        if (victim) {
            /* Its count goes (the source itself may, at a share of one):
             * count the newcomer afresh. */
            s_cut(victim, ROUTER_GUARD_CUT_SOURCE_EVICTED);
            added = router_sources_add(g->sources, conn, listener, kind, cap, &gc->source);
        }
    }
    switch (added) {
    case ROUTER_SOURCES_FULL: {
        char src[ROUTER_ADDR_STR_MAX];
        s_format_source(conn, src, sizeof src);
        g->stats.refused_per_source[kind]++;
        router_metric_inc(g->m_refused[kind], 1);
        ROUTER_LOG(ROUTER_LOG_WARN, s_kind_names[kind],
                   "connection from %s refused: reason=per_source (%u%s open from it%s)", src,
                   cap, kind == ROUTER_GUARD_COMMS ? " unauthenticated" : "",
                   kind == ROUTER_GUARD_COMMS ? ", each with a frame delivered" : "");
        return -1;
    }
    case ROUTER_SOURCES_NOMEM: return -1;
    case ROUTER_SOURCES_NONE: break; /* in-process: exempt */
    case ROUTER_SOURCES_COUNTED:
        if (kind != ROUTER_GUARD_COMMS)
            break;
        if (g->stats.unauth >= g->o.unauth_max && g->unauth_head)
            s_cut(g->unauth_head, ROUTER_GUARD_CUT_UNAUTH_EVICTED);
        s_unauth_link(g, gc);
        break;
    }
    gc->guard = g;
    gc->read_at = router_loop_now_ms(g->loop);
    if (g->o.first_frame_ms)
        router_conn_set_deadline(conn, gc->read_at + g->o.first_frame_ms);
    return 0;
}

void router_guard_authenticated(router_guard_conn_t *gc)
{
    router_guard_t *g = gc->guard;
    if (!g || !gc->unauth)
        return;
    s_unauth_unlink(g, gc);
    router_sources_release(g->sources, &gc->source);
}

void router_guard_leave(router_guard_conn_t *gc)
{
    router_guard_t *g = gc->guard;
    if (!g)
        return;
    s_unauth_unlink(g, gc);
    router_sources_release(g->sources, &gc->source);
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

/* A peer kith stopped reading met a shut TCP window, and its kernel
 * probes that window with backoff (up to ROUTER_GUARD_GRACE_MAX_MS apart):
 * when the update that reopens it is lost, the peer sends again only at
 * its next probe, which comes at most as long after the resume as the
 * pause lasted. Until then the peer is not late; a deadline set meanwhile
 * counts from then. Returns the time to add to a deadline set now. */
static uint64_t s_grace(router_guard_conn_t *gc, uint64_t now)
{
    if (gc->paused_at) {
        uint64_t held = now > gc->paused_at ? now - gc->paused_at : 0;
        gc->grace_until = now + (held < ROUTER_GUARD_GRACE_MAX_MS ? held : ROUTER_GUARD_GRACE_MAX_MS);
        gc->paused_at = 0;
    }
    if (gc->grace_until <= now) {
        gc->grace_until = 0;
        return 0;
    }
    return gc->grace_until - now;
}

void router_guard_progress(router_guard_conn_t *gc, unsigned frames_done, bool mid_frame)
{
    router_guard_t *g = gc->guard;
    if (!g)
        return;
    uint64_t now = router_loop_now_ms(g->loop);
    uint64_t grace = s_grace(gc, now);
    gc->read_at = now;
    bool was_mid = gc->mid_frame;
    gc->mid_frame = mid_frame;
    if (frames_done)
        gc->seen_frame = true;
    if (!gc->seen_frame)
        return; /* the first frame's deadline, set at join, holds */
    if (mid_frame) {
        /* A frame begun in this read (after one ended, or after idling). */
        if (!was_mid || frames_done)
            router_conn_set_deadline(gc->conn, g->o.frame_ms ? now + g->o.frame_ms + grace : 0);
    } else {
        router_conn_set_deadline(gc->conn, g->o.idle_ms ? now + g->o.idle_ms + grace : 0);
    }
}

void router_guard_pause(router_guard_conn_t *gc)
{
    if (!gc->guard)
        return;
    gc->mid_frame = false;
    gc->seen_frame = true; /* the peer did its part; the next read starts afresh */
    if (!gc->paused_at) {
        uint64_t now = router_loop_now_ms(gc->guard->loop);
        gc->paused_at = now ? now : 1;
    }
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
    if (!(g->sources = router_sources_new(g->o.unauth_max))) {
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
    router_sources_destroy(&g->sources);
    free(g);
    *self_p = NULL;
}

void router_guard_stats(const router_guard_t *self, router_guard_stats_t *out)
{
    *out = self->stats;
}
