/* router/net/resolver.c — DNS names for the loop, resolved on a thread of
 * their own (router/net/resolver.h). The loop keeps the cache and the
 * callers waiting; the thread only ever sees a copy of one name at a time.
 * What both touch (the queue in, the answers out, the eventfd) lives in a
 * block shared by reference count, so the loop can let go of it without
 * waiting for a getaddrinfo that may take seconds. */
#include "router/net/resolver.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "router/thread.h"

/* One lookup: made by the loop, resolved by the thread, answered back. */
typedef struct s_job {
    struct s_job *next;
    unsigned slot;                    /* the name it is for */
    char host[ROUTER_ADDR_HOST_MAX];  /* a copy: the thread reads only this */
    uint16_t port;
    bool ok;                          /* answered: resolved */
    router_addr_list_t addrs;         /* ...to these */
    char why[128];                    /* ...or not, and why */
} s_job_t;

/* What the loop and the thread share; freed by whichever lets go last. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* the thread waits here for work */
    unsigned refs;          /* the loop's and the thread's */
    bool stopping;          /* the loop let go: answer nothing more */
    bool thread_started;
    int efd;                /* written when an answer is ready */
    s_job_t *todo, *todo_tail;
    s_job_t *done;
} s_shared_t;

typedef struct s_waiter {
    struct s_waiter *next;
    router_resolve_fn *cb;
    void *ud;
    uint16_t port;          /* the caller's (a name's answer serves every port) */
} s_waiter_t;

typedef struct {
    bool used;
    bool busy;                        /* a job is out for it */
    char host[ROUTER_ADDR_HOST_MAX];
    bool ok;                          /* the last answer */
    router_addr_list_t addrs;
    char why[128];
    uint64_t expires_ms;              /* the last answer holds until then */
    uint64_t used_ms;                 /* last asked for (the least recent goes first) */
    s_waiter_t *waiters;
} s_name_t;

struct router_resolver {
    router_loop_t *loop;
    s_shared_t *sh;
    router_watch_t *watch;
    s_name_t names[ROUTER_RESOLVER_NAMES_MAX];
    unsigned waiting;                 /* callers waiting, all names */
    router_metric_t *m_lookups, *m_failed;
    bool answering;                   /* s_on_ready is giving answers: destroy leaves the free to it */
    bool destroyed;                   /* destroy ran meanwhile (a callback's) */
};

/* A name's answer serves every port: the caller's goes in. */
static void s_set_port(router_addr_list_t *l, uint16_t port)
{
    for (unsigned i = 0; i < l->n; i++) {
        router_addr_t *a = &l->addr[i];
        if (a->u.ss.ss_family == AF_INET)
            a->u.in4.sin_port = htons(port);
        else if (a->u.ss.ss_family == AF_INET6)
            a->u.in6.sin6_port = htons(port);
    }
}

/* ---------------------------------------------------------------- the shared block */

static void s_shared_release(s_shared_t *sh)
{
    pthread_mutex_lock(&sh->mu);
    bool last = --sh->refs == 0;
    pthread_mutex_unlock(&sh->mu);
    if (!last)
        return;
    for (s_job_t *lists[2] = {sh->todo, sh->done}, **l = lists; l < lists + 2; l++)
        while (*l) {
            s_job_t *j = *l;
            *l = j->next;
            free(j);
        }
    close(sh->efd);
    pthread_cond_destroy(&sh->cv);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
}

/* Appends a to the list unless it is there already or the list is full. */
static void s_list_add(router_addr_list_t *l, const struct addrinfo *a)
{
    if (l->n >= ROUTER_RESOLVE_ADDRS_MAX || a->ai_addrlen > sizeof l->addr[0].u)
        return;
    for (unsigned i = 0; i < l->n; i++)
        if (l->addr[i].len == a->ai_addrlen &&
            memcmp(&l->addr[i].u, a->ai_addr, a->ai_addrlen) == 0)
            return;
    router_addr_t *out = &l->addr[l->n++];
    memset(out, 0, sizeof *out);
    memcpy(&out->u, a->ai_addr, a->ai_addrlen);
    out->len = a->ai_addrlen;
}

/* Every IPv4 address, then every IPv6 one, each family in getaddrinfo's
 * order. IPv4 first because a name with both often has an IPv6 address
 * nothing routes to (a container host's), and kith listens on IPv4 unless
 * told otherwise; all of them, because a sender tries the next when one
 * does not connect (spec/WIRE.md §1.1). */
int router_resolve_blocking(const char *host, uint16_t port, router_addr_list_t *out, char *why,
                            size_t whycap)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char service[8];
    snprintf(service, sizeof service, "%u", port);
    int g = getaddrinfo(host, service, &hints, &res);
    int g_errno = errno;
    static const int families[] = {AF_INET, AF_INET6};
    out->n = 0;
    for (size_t f = 0; g == 0 && f < sizeof families / sizeof families[0]; f++)
        for (const struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == families[f])
                s_list_add(out, a);
    if (res)
        freeaddrinfo(res);
    if (out->n == 0) {
        const char *what = g == 0 ? "no IPv4 or IPv6 address"
                           : g == EAI_SYSTEM ? strerror(g_errno)
                           : gai_strerror(g);
        snprintf(why, whycap, "%s", what);
        return -1;
    }
    s_set_port(out, port);
    return 0;
}

static void s_resolve(s_job_t *j)
{
    j->ok = router_resolve_blocking(j->host, j->port, &j->addrs, j->why, sizeof j->why) == 0;
}

static void *s_thread_main(void *arg)
{
    s_shared_t *sh = arg;
    router_thread_bulk("kith-resolve");
    pthread_mutex_lock(&sh->mu);
    for (;;) {
        while (!sh->todo && !sh->stopping)
            pthread_cond_wait(&sh->cv, &sh->mu);
        if (sh->stopping)
            break;
        s_job_t *j = sh->todo;
        sh->todo = j->next;
        if (!sh->todo)
            sh->todo_tail = NULL;
        pthread_mutex_unlock(&sh->mu);
        s_resolve(j); /* may take seconds: nothing is held */
        pthread_mutex_lock(&sh->mu);
        if (sh->stopping) {
            free(j);
            break;
        }
        j->next = sh->done;
        sh->done = j;
        uint64_t one = 1;
        (void) !write(sh->efd, &one, sizeof one); /* cannot fill: the loop reads it to 0 */
    }
    pthread_mutex_unlock(&sh->mu);
    s_shared_release(sh);
    return NULL;
}

/* ---------------------------------------------------------------- answers on the loop */

/* Drops callers detached from their name without calling them. */
static void s_waiters_free(s_waiter_t *w)
{
    while (w) {
        s_waiter_t *next = w->next;
        free(w);
        w = next;
    }
}

/* Gives a name its answer and calls its waiters. A callback may destroy
 * the resolver (it runs on the loop thread, as destroy may): then
 * self->destroyed turns true, and the callers not yet called are dropped
 * uncalled, as destroy drops those waiting; self itself is freed by
 * s_on_ready once the answers are done. */
static void s_answer(router_resolver_t *self, s_job_t *j)
{
    s_name_t *n = &self->names[j->slot];
    uint64_t now = router_loop_now_ms(self->loop);
    n->busy = false;
    n->ok = j->ok;
    n->addrs = j->addrs;
    snprintf(n->why, sizeof n->why, "%s", j->why);
    n->expires_ms = now + (j->ok ? ROUTER_RESOLVER_TTL_MS : ROUTER_RESOLVER_FAIL_TTL_MS);
    if (!j->ok)
        router_metric_inc(self->m_failed, 1);
    /* Detached first: a callback may look the name up again. */
    s_waiter_t *w = n->waiters;
    n->waiters = NULL;
    while (w) {
        s_waiter_t *next = w->next;
        self->waiting--;
        router_addr_list_t a = j->addrs;
        s_set_port(&a, w->port);
        w->cb(j->ok ? &a : NULL, j->why, w->ud);
        free(w);
        w = next;
        if (self->destroyed) {
            s_waiters_free(w);
            return;
        }
    }
}

static void s_on_ready(router_watch_t *watch, int fd, unsigned events, void *ud)
{
    (void) watch;
    (void) events;
    router_resolver_t *self = ud;
    uint64_t v;
    while (read(fd, &v, sizeof v) == (ssize_t) sizeof v) {
    }
    pthread_mutex_lock(&self->sh->mu);
    s_job_t *done = self->sh->done;
    self->sh->done = NULL;
    pthread_mutex_unlock(&self->sh->mu);
    self->answering = true;
    while (done) {
        s_job_t *j = done;
        done = j->next;
        if (!self->destroyed)
            s_answer(self, j);
        free(j); /* once destroyed, the other answers have nobody to go to */
    }
    self->answering = false;
    if (self->destroyed)
        free(self); /* router_resolver_destroy left it to us */
}

/* ---------------------------------------------------------------- lookups */

static s_name_t *s_find(router_resolver_t *self, const char *host)
{
    for (unsigned i = 0; i < ROUTER_RESOLVER_NAMES_MAX; i++)
        if (self->names[i].used && strcmp(self->names[i].host, host) == 0)
            return &self->names[i];
    return NULL;
}

/* A free slot, or the least recently asked-for name not being resolved. */
static s_name_t *s_slot(router_resolver_t *self)
{
    s_name_t *best = NULL;
    for (unsigned i = 0; i < ROUTER_RESOLVER_NAMES_MAX; i++) {
        s_name_t *n = &self->names[i];
        if (!n->used)
            return n;
        if (!n->busy && (!best || n->used_ms < best->used_ms))
            best = n;
    }
    return best;
}

/* Hands the name to the thread (starting it the first time). */
static int s_submit(router_resolver_t *self, s_name_t *n, uint16_t port, char *why, size_t whycap)
{
    s_shared_t *sh = self->sh;
    s_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(why, whycap, "out of memory");
        return -1;
    }
    j->slot = (unsigned) (n - self->names);
    snprintf(j->host, sizeof j->host, "%s", n->host);
    j->port = port;
    pthread_mutex_lock(&sh->mu);
    if (!sh->thread_started) {
        pthread_attr_t attr;
        pthread_t th;
        int e = pthread_attr_init(&attr);
        if (!e) {
            (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            sh->refs++; /* the thread's */
            e = pthread_create(&th, &attr, s_thread_main, sh);
            if (e)
                sh->refs--;
            pthread_attr_destroy(&attr);
        }
        if (e) {
            pthread_mutex_unlock(&sh->mu);
            free(j);
            snprintf(why, whycap, "cannot start the resolver thread: %s", strerror(e));
            return -1;
        }
        sh->thread_started = true;
    }
    if (sh->todo_tail)
        sh->todo_tail->next = j;
    else
        sh->todo = j;
    sh->todo_tail = j;
    pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    n->busy = true;
    router_metric_inc(self->m_lookups, 1);
    return 0;
}

int router_resolver_lookup(router_resolver_t *self, const char *host, uint16_t port,
                           router_addr_list_t *out, router_resolve_fn *cb, void *ud, char *why,
                           size_t whycap)
{
    router_addr_err_t e;
    if (router_addr_from_host(host, port, &out->addr[0], &e) == 0) {
        out->n = 1;
        return 0; /* a literal or localhost: nothing to look up */
    }
    if (strlen(host) >= ROUTER_ADDR_HOST_MAX) {
        snprintf(why, whycap, "the name is too long");
        return -1;
    }
    uint64_t now = router_loop_now_ms(self->loop);
    s_name_t *n = s_find(self, host);
    if (n && !n->busy && now < n->expires_ms) {
        n->used_ms = now;
        if (!n->ok) {
            snprintf(why, whycap, "%s", n->why);
            return -1;
        }
        *out = n->addrs;
        s_set_port(out, port);
        return 0;
    }
    if (self->waiting >= ROUTER_RESOLVER_WAITERS_MAX) {
        snprintf(why, whycap, "too many sends wait for DNS answers");
        return -1;
    }
    s_waiter_t *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(why, whycap, "out of memory");
        return -1;
    }
    if (!n) {
        if (!(n = s_slot(self))) {
            free(w);
            snprintf(why, whycap, "too many names are being resolved");
            return -1;
        }
        memset(n, 0, sizeof *n);
        n->used = true;
        snprintf(n->host, sizeof n->host, "%s", host);
    }
    n->used_ms = now;
    if (!n->busy && s_submit(self, n, port, why, whycap) != 0) {
        free(w);
        if (!n->waiters)
            n->used = false; /* nothing cached, nobody waits: the slot is free again */
        return -1;
    }
    w->cb = cb;
    w->ud = ud;
    w->port = port;
    w->next = n->waiters;
    n->waiters = w;
    self->waiting++;
    return 1;
}

/* ---------------------------------------------------------------- lifecycle */

router_resolver_t *router_resolver_new(router_loop_t *loop, router_metrics_t *metrics)
{
    router_resolver_t *self = calloc(1, sizeof *self);
    s_shared_t *sh = calloc(1, sizeof *sh);
    if (!self || !sh)
        goto fail;
    sh->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sh->efd < 0)
        goto fail;
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->cv, NULL);
    sh->refs = 1;
    self->sh = sh;
    self->loop = loop;
    if (!(self->watch = router_loop_watch_fd(loop, sh->efd, ROUTER_EV_READ, s_on_ready, self))) {
        int e = errno;
        s_shared_release(sh);
        free(self);
        errno = e;
        return NULL;
    }
    if (metrics) {
        self->m_lookups = router_metrics_add(metrics, "kith_dns_lookups_total", NULL,
                                             ROUTER_METRIC_COUNTER,
                                             "DNS names of peers resolved off the loop");
        self->m_failed = router_metrics_add(metrics, "kith_dns_lookups_failed_total", NULL,
                                            ROUTER_METRIC_COUNTER,
                                            "...of which gave no address");
    }
    return self;
fail:;
    int e = errno ? errno : ENOMEM;
    if (sh && sh->efd > 0)
        close(sh->efd);
    free(sh);
    free(self);
    errno = e;
    return NULL;
}

void router_resolver_destroy(router_resolver_t **self_p)
{
    router_resolver_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    *self_p = NULL;
    router_watch_destroy(&self->watch);
    pthread_mutex_lock(&self->sh->mu);
    self->sh->stopping = true;
    pthread_cond_broadcast(&self->sh->cv);
    pthread_mutex_unlock(&self->sh->mu);
    s_shared_release(self->sh);
    for (unsigned i = 0; i < ROUTER_RESOLVER_NAMES_MAX; i++) {
        s_waiters_free(self->names[i].waiters);
        self->names[i].waiters = NULL;
    }
    if (self->answering)
        self->destroyed = true; /* an answer's callback: s_on_ready frees self */
    else
        free(self);
}
