/* router/net/inproc_relay.c — one poll() thread per faulty namespace carries
 * the bytes of its in-process connections, chunk by chunk, in order,
 * holding them while a partition or a delay says so (inproc_relay.h). */
#include "router/net/inproc_relay.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/clock.h"
#include "router/net/inproc.h"

/* Largest single read; each read becomes one held chunk of its own size. */
#define S_READ_MAX (64u * 1024u)

/* Bytes read from one end, waiting to be written to the other. */
typedef struct s_chunk {
    struct s_chunk *next;
    uint64_t read_ms; /* monotonic ms when the relay read it */
    size_t len;       /* bytes in data */
    size_t off;       /* bytes of data already written on */
    uint8_t data[];
} s_chunk_t;

/* One direction of a connection: src end to dst end. */
typedef struct {
    s_chunk_t *head, *tail; /* held, oldest first */
    size_t held;            /* unwritten bytes in the chunks */
    bool eof;               /* src ended (EOF or error) */
    uint64_t eof_ms;        /* when, to delay the end like the bytes */
    bool shut;              /* the end was passed on: dst shut down for writing */
    bool dead;              /* dst refused a write (its reader is gone): discard */
    bool want_out;          /* dst was full: wait until it is writable */
} s_dir_t;

/* One in-process connection. fd[0] faces the dialer, fd[1] the acceptor;
 * dir[d] carries fd[d] to fd[1 - d]. */
typedef struct s_link {
    struct s_link *next;
    int fd[2];
    char from[ROUTER_INPROC_NAME_MAX + 1]; /* the dialer's name, "" when unnamed */
    char to[ROUTER_INPROC_NAME_MAX + 1];   /* the name dialed */
    bool partitioned;                      /* copied from the fault table */
    uint32_t delay_ms;                     /* copied from the fault table */
    s_dir_t dir[2];
} s_link_t;

/* Faults set between two names (a < b bytewise). */
typedef struct s_fault {
    struct s_fault *next;
    char a[ROUTER_INPROC_NAME_MAX + 1];
    char b[ROUTER_INPROC_NAME_MAX + 1];
    bool partitioned;
    uint32_t delay_ms;
} s_fault_t;

struct router_inproc_relay {
    pthread_mutex_t mu;   /* guards faults, gen, pending, stop */
    s_fault_t *faults;    /* the fault table */
    uint64_t gen;         /* bumped on every fault change */
    s_link_t *pending;    /* added, not yet seen by the thread */
    bool stop;            /* destroy asks the thread to end */
    int wake;             /* eventfd: something above changed */
    pthread_t thread;
    /* The thread's own: */
    s_link_t *links;      /* connections carried */
    uint64_t seen_gen;    /* gen the links' copies reflect */
    struct pollfd *pfd;   /* poll set, rebuilt each turn */
    s_link_t **pfd_link;  /* which link each pfd entry belongs to */
    size_t pfd_cap;
};

/* ---------------------------------------------------------------- fault table */

/* The entry for {a, b} in either order, or NULL. Caller holds mu. */
static s_fault_t *s_fault_find(router_inproc_relay_t *self, const char *a, const char *b)
{
    if (strcmp(a, b) > 0) {
        const char *t = a;
        a = b;
        b = t;
    }
    for (s_fault_t *f = self->faults; f; f = f->next)
        if (strcmp(f->a, a) == 0 && strcmp(f->b, b) == 0)
            return f;
    return NULL;
}

int router_inproc_relay_set(router_inproc_relay_t *self, const char *a, const char *b,
                            bool partitioned, uint32_t delay_ms)
{
    if (!a || !b || strlen(a) > ROUTER_INPROC_NAME_MAX || strlen(b) > ROUTER_INPROC_NAME_MAX) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&self->mu);
    s_fault_t *f = s_fault_find(self, a, b);
    if (!f) {
        if (!(f = calloc(1, sizeof *f))) {
            pthread_mutex_unlock(&self->mu);
            errno = ENOMEM;
            return -1;
        }
        bool swap = strcmp(a, b) > 0;
        strcpy(f->a, swap ? b : a);
        strcpy(f->b, swap ? a : b);
        f->next = self->faults;
        self->faults = f;
    }
    f->partitioned = partitioned;
    f->delay_ms = delay_ms;
    self->gen++;
    pthread_mutex_unlock(&self->mu);
    uint64_t one = 1;
    (void) !write(self->wake, &one, sizeof one);
    return 0;
}

void router_inproc_relay_get(router_inproc_relay_t *self, const char *a, const char *b,
                             bool *partitioned, uint32_t *delay_ms)
{
    pthread_mutex_lock(&self->mu);
    s_fault_t *f = s_fault_find(self, a, b);
    *partitioned = f && f->partitioned;
    *delay_ms = f ? f->delay_ms : 0;
    pthread_mutex_unlock(&self->mu);
}

/* Copies the faults in force into a link. Caller holds mu. */
static void s_link_refresh(router_inproc_relay_t *self, s_link_t *l)
{
    s_fault_t *f = l->from[0] ? s_fault_find(self, l->from, l->to) : NULL;
    l->partitioned = f && f->partitioned;
    l->delay_ms = f ? f->delay_ms : 0;
}

/* ---------------------------------------------------------------- links */

static void s_dir_discard(s_dir_t *d)
{
    while (d->head) {
        s_chunk_t *c = d->head;
        d->head = c->next;
        free(c);
    }
    d->tail = NULL;
    d->held = 0;
}

static void s_link_free(s_link_t *l)
{
    for (int i = 0; i < 2; i++) {
        s_dir_discard(&l->dir[i]);
        if (l->fd[i] >= 0)
            close(l->fd[i]);
    }
    free(l);
}

/* Both directions ended and were passed on (or had nowhere to go). */
static bool s_link_done(const s_link_t *l)
{
    for (int i = 0; i < 2; i++) {
        const s_dir_t *d = &l->dir[i];
        if (!d->eof || d->head || !(d->shut || d->dead))
            return false;
    }
    return true;
}

/* Ends the connection both ways at once: what is held is dropped and both
 * ends see the end of the stream (a reset if they had unread bytes). */
static void s_link_cut(s_link_t *l, uint64_t now)
{
    for (int i = 0; i < 2; i++) {
        s_dir_t *d = &l->dir[i];
        d->eof = true;
        d->eof_ms = now;
        d->dead = true;
        s_dir_discard(d);
        (void) shutdown(l->fd[i], SHUT_RDWR);
    }
}

static bool s_dir_reads(const s_link_t *l, int i)
{
    const s_dir_t *d = &l->dir[i];
    return !l->partitioned && !d->eof && d->held < ROUTER_INPROC_HELD_MAX;
}

/* One read from fd[i] into a new chunk of dir[i]. */
static void s_dir_read(s_link_t *l, int i, uint64_t now)
{
    static _Thread_local uint8_t buf[S_READ_MAX];
    s_dir_t *d = &l->dir[i];
    size_t room = ROUTER_INPROC_HELD_MAX - d->held;
    ssize_t n = read(l->fd[i], buf, room < sizeof buf ? room : sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) { /* the end, orderly or not: passed on as an orderly end */
        d->eof = true;
        d->eof_ms = now;
        return;
    }
    if (d->dead)
        return; /* nobody reads the other end any more */
    s_chunk_t *c = malloc(sizeof *c + (size_t) n);
    if (!c) {
        /* Cannot hold it: the stream is broken, so the connection is cut,
         * both ways, for both ends to see at once, as a cut TCP connection
         * is seen. Marking this direction alone ended left the reader
         * waiting out its frame deadline for bytes that were gone, and the
         * writer writing into a stream nobody read. */
        s_link_cut(l, now);
        return;
    }
    c->next = NULL;
    c->read_ms = now;
    c->len = (size_t) n;
    c->off = 0;
    memcpy(c->data, buf, (size_t) n);
    if (d->tail)
        d->tail->next = c;
    else
        d->head = c;
    d->tail = c;
    d->held += (size_t) n;
}

static void s_timeout_min(int *timeout, uint64_t due, uint64_t now)
{
    uint64_t wait = due - now;
    if (wait > 60000)
        wait = 60000; /* re-check now and then; a delay may be a day */
    if (*timeout < 0 || (uint64_t) *timeout > wait)
        *timeout = (int) wait;
}

/* Writes on what is due in both directions and passes on ends that are
 * due; lowers *timeout to the next moment something falls due. */
static void s_link_pump(s_link_t *l, uint64_t now, int *timeout)
{
    for (int i = 0; i < 2; i++) {
        s_dir_t *d = &l->dir[i];
        int dst = l->fd[1 - i];
        d->want_out = false;
        if (l->partitioned)
            continue;
        while (d->head) {
            s_chunk_t *c = d->head;
            uint64_t due = c->read_ms + l->delay_ms;
            if (now < due) {
                s_timeout_min(timeout, due, now);
                break;
            }
            ssize_t n = send(dst, c->data + c->off, c->len - c->off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    d->want_out = true;
                    break;
                }
                d->dead = true; /* EPIPE, ECONNRESET: its reader is gone */
                s_dir_discard(d);
                break;
            }
            c->off += (size_t) n;
            d->held -= (size_t) n;
            if (c->off == c->len) {
                d->head = c->next;
                if (!d->head)
                    d->tail = NULL;
                free(c);
            }
        }
        if (!d->head && d->eof && !d->shut && !d->dead) {
            uint64_t due = d->eof_ms + l->delay_ms;
            if (now < due) {
                s_timeout_min(timeout, due, now);
            } else {
                (void) shutdown(dst, SHUT_WR);
                d->shut = true;
            }
        }
    }
}

/* ---------------------------------------------------------------- the thread */

static int s_pfd_reserve(router_inproc_relay_t *self, size_t n)
{
    if (n <= self->pfd_cap)
        return 0;
    size_t cap = self->pfd_cap ? self->pfd_cap : 16;
    while (cap < n)
        cap *= 2;
    struct pollfd *p = realloc(self->pfd, cap * sizeof *p);
    if (!p)
        return -1;
    self->pfd = p;
    s_link_t **q = realloc(self->pfd_link, cap * sizeof *q);
    if (!q)
        return -1;
    self->pfd_link = q;
    self->pfd_cap = cap;
    return 0;
}

/* Takes new links and fault changes. Returns false when asked to stop. */
static bool s_sync(router_inproc_relay_t *self)
{
    pthread_mutex_lock(&self->mu);
    bool go = !self->stop;
    bool refresh = self->gen != self->seen_gen;
    self->seen_gen = self->gen;
    if (refresh)
        for (s_link_t *l = self->links; l; l = l->next)
            s_link_refresh(self, l);
    while (self->pending) {
        s_link_t *l = self->pending;
        self->pending = l->next;
        s_link_refresh(self, l);
        l->next = self->links;
        self->links = l;
    }
    pthread_mutex_unlock(&self->mu);
    return go;
}

/* The test seam: runs first on the relay thread. A weak definition that
 * does nothing, which tests/inproc_test.c replaces to make the relay
 * thread's own allocations fail (tests/alloc_fail.h arms one thread). */
__attribute__((weak)) void router_inproc_relay_thread_started(void)
{
}

static void *s_main(void *arg)
{
    router_inproc_relay_t *self = arg;
    router_inproc_relay_thread_started();
    while (s_sync(self)) {
        uint64_t now = router_clock_mono_ms();
        int timeout = -1;
        size_t n = 0, links = 0;
        for (s_link_t *l = self->links; l; l = l->next)
            links++;
        if (s_pfd_reserve(self, 1 + 2 * links) != 0) {
            usleep(10000); /* out of memory: try again shortly */
            continue;
        }
        self->pfd[n++] = (struct pollfd){.fd = self->wake, .events = POLLIN};
        for (s_link_t **p = &self->links; *p;) {
            s_link_t *l = *p;
            s_link_pump(l, now, &timeout);
            if (s_link_done(l)) {
                *p = l->next;
                s_link_free(l);
                continue;
            }
            for (int i = 0; i < 2; i++) {
                short ev = (short) ((s_dir_reads(l, i) ? POLLIN : 0) |
                                    (l->dir[1 - i].want_out ? POLLOUT : 0));
                /* No events: leave it out, or a hung-up end would wake
                 * us for ever while a partition holds it. */
                self->pfd_link[n] = l;
                self->pfd[n++] = (struct pollfd){.fd = ev ? l->fd[i] : -1, .events = ev};
            }
            p = &l->next;
        }
        if (poll(self->pfd, n, timeout) < 0 && errno != EINTR)
            usleep(1000);
        if (self->pfd[0].revents) {
            uint64_t v;
            (void) !read(self->wake, &v, sizeof v);
        }
        now = router_clock_mono_ms();
        for (size_t k = 1; k < n; k++) {
            s_link_t *l = self->pfd_link[k];
            int i = (int) ((k - 1) % 2);
            if ((self->pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) &&
                (self->pfd[k].events & POLLIN))
                s_dir_read(l, i, now);
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- lifecycle */

router_inproc_relay_t *router_inproc_relay_new(void)
{
    router_inproc_relay_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->mu, NULL);
    self->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->wake < 0)
        goto fail;
    int e = pthread_create(&self->thread, NULL, s_main, self);
    if (e != 0) {
        errno = e;
        goto fail;
    }
    return self;
fail:
    if (self->wake >= 0)
        close(self->wake);
    pthread_mutex_destroy(&self->mu);
    free(self);
    return NULL;
}

void router_inproc_relay_destroy(router_inproc_relay_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_inproc_relay_t *self = *self_p;
    pthread_mutex_lock(&self->mu);
    self->stop = true;
    pthread_mutex_unlock(&self->mu);
    uint64_t one = 1;
    (void) !write(self->wake, &one, sizeof one);
    pthread_join(self->thread, NULL);
    s_link_t *lists[2] = {self->links, self->pending};
    for (int k = 0; k < 2; k++)
        while (lists[k]) {
            s_link_t *l = lists[k];
            lists[k] = l->next;
            s_link_free(l);
        }
    while (self->faults) {
        s_fault_t *f = self->faults;
        self->faults = f->next;
        free(f);
    }
    free(self->pfd);
    free(self->pfd_link);
    close(self->wake);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

int router_inproc_relay_add(router_inproc_relay_t *self, int dialer_fd, int acceptor_fd,
                            const char *from, const char *to)
{
    s_link_t *l = calloc(1, sizeof *l);
    if (!l) {
        close(dialer_fd);
        close(acceptor_fd);
        errno = ENOMEM;
        return -1;
    }
    l->fd[0] = dialer_fd;
    l->fd[1] = acceptor_fd;
    snprintf(l->from, sizeof l->from, "%s", from ? from : "");
    snprintf(l->to, sizeof l->to, "%s", to);
    pthread_mutex_lock(&self->mu);
    l->next = self->pending;
    self->pending = l;
    pthread_mutex_unlock(&self->mu);
    uint64_t one = 1;
    (void) !write(self->wake, &one, sizeof one);
    return 0;
}
