/* router/workers/history_cache.c — the loop's bounded cache of recent
 * session history (see history_cache.h for what it promises). */
#include "router/workers/history_cache.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <czmq.h>

/* One message, shared by the cache and the views handed out. */
typedef struct {
    unsigned refs;
    size_t bytes;             /* what it counts against bytes_max */
    router_sessions_msg_t m;  /* its strings point into data */
    char data[];
} s_msg_t;

typedef struct s_entry s_entry_t;
struct s_entry {
    char *id;
    s_msg_t **v;              /* the last messages, oldest first */
    size_t n, vcap;
    unsigned cap;             /* most messages kept: the limit it was loaded with */
    bool loading;             /* a database read is out; v holds what came after it */
    bool complete;            /* v is the whole session */
    bool dropped;             /* an old message was let go while loading */
    bool appended;            /* a message was appended while loading */
    uint64_t cost;            /* what the store's bounds count of v: octets + msg_cost each */
    uint64_t ticket;          /* of the read while loading */
    size_t bytes;             /* its messages' bytes and v */
    s_entry_t *prev, *next;   /* most recently used first */
};

struct router_history_cache {
    zhash_t *by_id;           /* id → s_entry_t (not owned by the hash) */
    s_entry_t *head, *tail;
    size_t sessions_max, bytes_max;
    uint64_t keep_msgs, keep_bytes, msg_cost; /* the store's per-session bounds, 0: none */
    uint64_t next_ticket;
    router_history_cache_stats_t st;
};

static void s_msg_unref(s_msg_t *m)
{
    if (m && --m->refs == 0)
        free(m);
}

static s_msg_t *s_msg_new(const router_sessions_msg_t *src)
{
    size_t rl = strlen(src->role), tl = strlen(src->turn_id);
    size_t bytes = sizeof(s_msg_t) + rl + 1 + tl + 1 + src->len + 1;
    s_msg_t *m = malloc(bytes);
    if (!m)
        return NULL;
    m->refs = 1;
    m->bytes = bytes;
    char *p = m->data;
    memcpy(p, src->role, rl + 1);
    m->m.role = p;
    p += rl + 1;
    memcpy(p, src->turn_id, tl + 1);
    m->m.turn_id = p;
    p += tl + 1;
    if (src->len)
        memcpy(p, src->content, src->len);
    p[src->len] = '\0';
    m->m.content = p;
    m->m.len = src->len;
    m->m.time_ms = src->time_ms;
    return m;
}

static void s_unlink(router_history_cache_t *c, s_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void s_touch(router_history_cache_t *c, s_entry_t *e)
{
    if (c->head == e)
        return;
    if (e->prev) /* linked (not the head): a new entry is not yet */
        s_unlink(c, e);
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

/* What the store's bounds count of one message. */
static uint64_t s_cost(const router_history_cache_t *c, const s_msg_t *m)
{
    return m->m.len + c->msg_cost;
}

static void s_clear_msgs(router_history_cache_t *c, s_entry_t *e)
{
    for (size_t i = 0; i < e->n; i++) {
        e->bytes -= e->v[i]->bytes;
        c->st.bytes -= e->v[i]->bytes;
        s_msg_unref(e->v[i]);
    }
    e->n = 0;
    e->cost = 0;
}

static void s_remove(router_history_cache_t *c, s_entry_t *e)
{
    s_clear_msgs(c, e);
    c->st.bytes -= e->bytes; /* what is left: its id and v */
    s_unlink(c, e);
    zhash_delete(c->by_id, e->id);
    c->st.sessions--;
    free(e->v);
    free(e->id);
    free(e);
}

/* Least recently used first, down to both bounds. */
static void s_evict(router_history_cache_t *c)
{
    while (c->tail && (c->st.sessions > c->sessions_max || c->st.bytes > c->bytes_max)) {
        s_remove(c, c->tail);
        c->st.evicted++;
    }
}

/* Room for one more message in e->v. */
static int s_reserve(router_history_cache_t *c, s_entry_t *e, size_t want)
{
    if (want <= e->vcap)
        return 0;
    size_t ncap = e->vcap ? e->vcap : 8;
    while (ncap < want)
        ncap *= 2;
    if (ncap > e->cap && e->cap >= want)
        ncap = e->cap;
    s_msg_t **v = realloc(e->v, ncap * sizeof *v);
    if (!v)
        return -1;
    e->bytes += (ncap - e->vcap) * sizeof *v;
    c->st.bytes += (ncap - e->vcap) * sizeof *v;
    e->v = v;
    e->vcap = ncap;
    return 0;
}

/* Takes m (its one reference) into e, letting the oldest go past e->cap. */
static int s_push(router_history_cache_t *c, s_entry_t *e, s_msg_t *m)
{
    if (e->n == e->cap) {
        e->bytes -= e->v[0]->bytes;
        c->st.bytes -= e->v[0]->bytes;
        e->cost -= s_cost(c, e->v[0]);
        s_msg_unref(e->v[0]);
        memmove(e->v, e->v + 1, (e->n - 1) * sizeof *e->v);
        e->n--;
        e->complete = false;
        if (e->loading)
            e->dropped = true;
    }
    if (s_reserve(c, e, e->n + 1) != 0) {
        s_msg_unref(m);
        return -1;
    }
    e->v[e->n++] = m;
    e->bytes += m->bytes;
    c->st.bytes += m->bytes;
    e->cost += s_cost(c, m);
    return 0;
}

/* The store's bounds on e, after an append (router_history_cache_bound):
 * the newest messages that fit. The store keeps the longest run of a
 * session's newest messages within both bounds, and any shorter run of
 * them is within too, so cutting the newest messages held here gives
 * exactly what the store keeps whenever the cut takes anything; and then
 * they are the whole session. */
static void s_keep(router_history_cache_t *c, s_entry_t *e)
{
    if (!c->keep_msgs && !c->keep_bytes)
        return;
    size_t drop = 0;
    while (e->n - drop > 1 && ((c->keep_msgs && e->n - drop > c->keep_msgs) ||
                               (c->keep_bytes && e->cost > c->keep_bytes))) {
        e->cost -= s_cost(c, e->v[drop]);
        e->bytes -= e->v[drop]->bytes;
        c->st.bytes -= e->v[drop]->bytes;
        s_msg_unref(e->v[drop]);
        drop++;
    }
    if (!drop)
        return;
    memmove(e->v, e->v + drop, (e->n - drop) * sizeof *e->v);
    e->n -= drop;
    e->complete = true;
}

void router_history_cache_bound(router_history_cache_t *c, uint64_t messages_max,
                                uint64_t bytes_max, uint64_t msg_cost)
{
    c->keep_msgs = messages_max;
    c->keep_bytes = bytes_max;
    c->msg_cost = msg_cost;
}

router_history_cache_t *router_history_cache_new(size_t sessions_max, size_t bytes_max)
{
    router_history_cache_t *c = calloc(1, sizeof *c);
    if (!c || !(c->by_id = zhash_new())) {
        free(c);
        return NULL;
    }
    c->sessions_max = sessions_max ? sessions_max : ROUTER_HISTORY_CACHE_SESSIONS_MAX;
    c->bytes_max = bytes_max ? bytes_max : ROUTER_HISTORY_CACHE_BYTES_MAX;
    return c;
}

void router_history_cache_destroy(router_history_cache_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_history_cache_t *c = *self_p;
    while (c->head)
        s_remove(c, c->head);
    zhash_destroy(&c->by_id);
    free(c);
    *self_p = NULL;
}

int router_history_cache_get(router_history_cache_t *c, const char *id, unsigned limit,
                             router_history_view_t **out)
{
    *out = NULL;
    s_entry_t *e = zhash_lookup(c->by_id, id);
    if (!e || e->loading || (e->n < limit && !e->complete)) {
        c->st.misses++;
        return 0;
    }
    size_t k = e->n < limit ? e->n : limit;
    router_history_view_t *view = calloc(1, sizeof *view);
    if (!view || (k && (!(view->msgs = malloc(k * sizeof *view->msgs)) ||
                        !(view->refs = malloc(k * sizeof *view->refs))))) {
        router_history_view_free(&view);
        return -1;
    }
    for (size_t i = 0; i < k; i++) {
        s_msg_t *m = e->v[e->n - k + i];
        m->refs++;
        view->refs[i] = m;
        view->msgs[i] = m->m;
    }
    view->n = k;
    s_touch(c, e);
    c->st.hits++;
    *out = view;
    return 1;
}

void router_history_view_free(router_history_view_t **view_p)
{
    if (!view_p || !*view_p)
        return;
    router_history_view_t *view = *view_p;
    for (size_t i = 0; i < view->n; i++)
        s_msg_unref(view->refs[i]);
    free(view->msgs);
    free(view->refs);
    free(view);
    *view_p = NULL;
}

uint64_t router_history_cache_loading(router_history_cache_t *c, const char *id, unsigned limit)
{
    if (limit == 0)
        return 0;
    s_entry_t *e = zhash_lookup(c->by_id, id);
    if (e && e->loading)
        return 0; /* the first read in flight fills it */
    if (e) {
        s_clear_msgs(c, e); /* held too few for this limit: load again */
    } else {
        if (!(e = calloc(1, sizeof *e)) || !(e->id = strdup(id))) {
            free(e);
            return 0;
        }
        if (zhash_insert(c->by_id, id, e) != 0) {
            free(e->id);
            free(e);
            return 0;
        }
        e->bytes = sizeof *e + strlen(id) + 1;
        c->st.bytes += e->bytes;
        c->st.sessions++;
    }
    e->cap = limit;
    e->loading = true;
    e->complete = e->dropped = e->appended = false;
    e->ticket = ++c->next_ticket;
    s_touch(c, e);
    uint64_t ticket = e->ticket;
    s_evict(c);
    return zhash_lookup(c->by_id, id) ? ticket : 0;
}

void router_history_cache_loaded(router_history_cache_t *c, const char *id, uint64_t ticket,
                                 int rc, const router_sessions_msg_t *msgs, size_t n)
{
    s_entry_t *e = ticket ? zhash_lookup(c->by_id, id) : NULL;
    if (!e || !e->loading || e->ticket != ticket)
        return;
    if (rc != 0) {
        s_remove(c, e);
        return;
    }
    /* The read, then what was appended after it was queued. */
    size_t after = e->n, total = n + after;
    size_t keep = total < e->cap ? total : e->cap;
    s_msg_t **v = malloc((keep ? keep : 1) * sizeof *v);
    if (!v) {
        s_remove(c, e);
        return;
    }
    size_t skip = total - keep, k = 0;
    bool fail = false;
    for (size_t i = skip; i < n; i++)
        if (!(v[k++] = s_msg_new(&msgs[i])))
            fail = true;
    if (fail) {
        for (size_t i = 0; i < k; i++)
            s_msg_unref(v[i]);
        free(v);
        s_remove(c, e);
        return;
    }
    size_t from_after = skip > n ? skip - n : 0;
    for (size_t i = 0; i < e->n; i++) {
        if (i < from_after) {
            e->bytes -= e->v[i]->bytes;
            c->st.bytes -= e->v[i]->bytes;
            s_msg_unref(e->v[i]);
        } else {
            v[k++] = e->v[i];
        }
    }
    c->st.bytes -= e->vcap * sizeof *e->v;
    e->bytes -= e->vcap * sizeof *e->v;
    free(e->v);
    e->v = v;
    e->vcap = keep ? keep : 1;
    e->n = k;
    c->st.bytes += e->vcap * sizeof *v;
    e->bytes += e->vcap * sizeof *v;
    for (size_t i = 0; i < k && i < n - (skip < n ? skip : n); i++) {
        e->bytes += v[i]->bytes;
        c->st.bytes += v[i]->bytes;
    }
    e->cost = 0;
    for (size_t i = 0; i < k; i++)
        e->cost += s_cost(c, v[i]);
    e->complete = n < e->cap && !e->dropped && total <= e->cap;
    e->loading = false;
    e->dropped = false;
    if (e->appended) /* the store applied its bounds at those appends */
        s_keep(c, e);
    e->appended = false;
    s_evict(c);
}

void router_history_cache_append(router_history_cache_t *c, const char *id,
                                 const router_sessions_msg_t *m)
{
    s_entry_t *e = zhash_lookup(c->by_id, id);
    if (!e)
        return;
    s_msg_t *cm = s_msg_new(m);
    if (!cm || s_push(c, e, cm) != 0) {
        s_remove(c, e); /* it would miss this message: not held any more */
        return;
    }
    if (e->loading)
        e->appended = true; /* the bounds apply once the read is in */
    else
        s_keep(c, e);
    s_touch(c, e);
    s_evict(c);
}

void router_history_cache_forget(router_history_cache_t *c, const char *id)
{
    s_entry_t *e = zhash_lookup(c->by_id, id);
    if (e)
        s_remove(c, e);
}

void router_history_cache_stats(const router_history_cache_t *c,
                                router_history_cache_stats_t *out)
{
    *out = c->st;
}
