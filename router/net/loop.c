/* router/net/loop.c — the backend-independent half of the event loop: backend
 * choice, the run loop, deferred work, timers, signals through signalfd,
 * cross-thread wake-ups and posts through one eventfd, and fd watches. */
#include "router/net/loop.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "router/clock.h"
#include "router/log.h"
#include "router/net/loop_internal.h"

/* Longest timer accepted: a year, far from overflowing the ms clock. */
#define S_TIMER_MAX_MS (366ull * 24 * 3600 * 1000)
/* Largest provided-buffer ring io_uring allows. */
#define S_RECV_BUF_COUNT_MAX 32768u
/* Bounds on one receive buffer. */
#define S_RECV_BUF_SIZE_MIN 512u
#define S_RECV_BUF_SIZE_MAX (1024u * 1024u)
/* Largest post queue. */
#define S_POST_CAPACITY_MAX (1u << 20)
/* While busy, the signalfd is read at least this often (ms), whatever
 * its own completion's place in the queue. */
#define S_SIGNAL_POLL_MS 10

static atomic_bool s_fallback_logged;

static void s_on_eventfd(router_watch_t *w, int fd, unsigned events, void *ud);

/* ------------------------------------------------------------ timers */

static uint64_t s_now_ms(void)
{
    return router_clock_mono_ms();
}

uint64_t router_loop_now_ms(const router_loop_t *loop)
{
    (void) loop;
    return s_now_ms();
}

static bool s_timer_before(const router_timers_t *t, uint32_t a, uint32_t b)
{
    const router_timer_slot_t *x = &t->slots[a], *y = &t->slots[b];
    return x->deadline < y->deadline || (x->deadline == y->deadline && x->seq < y->seq);
}

static void s_heap_set(router_timers_t *t, uint32_t pos, uint32_t slot)
{
    t->heap[pos] = slot;
    t->slots[slot].heap_pos = pos;
}

static void s_heap_up(router_timers_t *t, uint32_t pos)
{
    uint32_t slot = t->heap[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (!s_timer_before(t, slot, t->heap[parent]))
            break;
        s_heap_set(t, pos, t->heap[parent]);
        pos = parent;
    }
    s_heap_set(t, pos, slot);
}

static void s_heap_down(router_timers_t *t, uint32_t pos)
{
    uint32_t slot = t->heap[pos];
    for (;;) {
        uint32_t child = 2 * pos + 1;
        if (child >= t->nheap)
            break;
        if (child + 1 < t->nheap && s_timer_before(t, t->heap[child + 1], t->heap[child]))
            child++;
        if (!s_timer_before(t, t->heap[child], slot))
            break;
        s_heap_set(t, pos, t->heap[child]);
        pos = child;
    }
    s_heap_set(t, pos, slot);
}

/* Takes a slot out of the heap and back to the free list. */
static void s_timer_free(router_timers_t *t, uint32_t slot)
{
    uint32_t pos = t->slots[slot].heap_pos;
    uint32_t last = --t->nheap;
    if (pos != last) {
        s_heap_set(t, pos, t->heap[last]);
        s_heap_down(t, pos);
        s_heap_up(t, t->slots[t->heap[pos]].heap_pos);
    }
    router_timer_slot_t *s = &t->slots[slot];
    s->cb = NULL;
    s->ud = NULL;
    s->gen++;
    s->next_free = t->free_head;
    t->free_head = slot;
}

static int s_timers_grow(router_loop_t *loop)
{
    router_timers_t *t = &loop->timers;
    uint32_t max = loop->opts.max_timers;
    if (t->nslots >= max)
        return -1;
    uint32_t n = t->nslots ? t->nslots * 2 : 64;
    if (n > max)
        n = max;
    router_timer_slot_t *slots = realloc(t->slots, n * sizeof *slots);
    if (!slots)
        return -1;
    t->slots = slots;
    uint32_t *heap = realloc(t->heap, n * sizeof *heap);
    if (!heap)
        return -1;
    t->heap = heap;
    for (uint32_t i = n; i-- > t->nslots;) {
        memset(&slots[i], 0, sizeof slots[i]);
        slots[i].gen = 1;
        slots[i].next_free = t->free_head;
        t->free_head = i;
    }
    t->nslots = n;
    return 0;
}

uint64_t router_loop_timer_add(router_loop_t *loop, uint64_t ms, router_timer_fn cb, void *ud)
{
    if (!loop || !cb || loop->destroying) {
        errno = EINVAL;
        return 0;
    }
    router_timers_t *t = &loop->timers;
    if (t->free_head == UINT32_MAX && s_timers_grow(loop) != 0) {
        errno = t->nslots >= loop->opts.max_timers ? ENOSPC : ENOMEM;
        return 0;
    }
    uint32_t slot = t->free_head;
    router_timer_slot_t *s = &t->slots[slot];
    t->free_head = s->next_free;
    s->deadline = s_now_ms() + (ms > S_TIMER_MAX_MS ? S_TIMER_MAX_MS : ms);
    s->seq = t->seq++;
    s->cb = cb;
    s->ud = ud;
    t->heap[t->nheap] = slot;
    s_heap_up(t, t->nheap++);
    return ((uint64_t) s->gen << 32) | (uint64_t) (slot + 1);
}

int router_loop_timer_cancel(router_loop_t *loop, uint64_t id)
{
    if (!loop) {
        errno = EINVAL;
        return -1;
    }
    router_timers_t *t = &loop->timers;
    uint64_t slot1 = id & 0xffffffffu;
    if (slot1 == 0 || slot1 > t->nslots || !t->slots[slot1 - 1].cb ||
        t->slots[slot1 - 1].gen != (uint32_t) (id >> 32)) {
        errno = ENOENT;
        return -1;
    }
    s_timer_free(t, (uint32_t) (slot1 - 1));
    return 0;
}

/* Fires the timers due now that existed when this pass began: a timer
 * added by a callback waits for the next iteration. */
static void s_timers_run(router_loop_t *loop)
{
    router_timers_t *t = &loop->timers;
    uint64_t now = s_now_ms();
    uint64_t seq_end = t->seq;
    while (t->nheap > 0) {
        uint32_t slot = t->heap[0];
        router_timer_slot_t *s = &t->slots[slot];
        if (s->deadline > now || s->seq >= seq_end)
            break;
        router_timer_fn cb = s->cb;
        void *ud = s->ud;
        uint64_t id = ((uint64_t) s->gen << 32) | (uint64_t) (slot + 1);
        s_timer_free(t, slot);
        cb(loop, id, ud);
    }
}

/* Milliseconds until the next timer, -1 for none. */
static int s_timers_timeout(router_loop_t *loop)
{
    router_timers_t *t = &loop->timers;
    if (t->nheap == 0)
        return -1;
    uint64_t deadline = t->slots[t->heap[0]].deadline;
    uint64_t now = s_now_ms();
    if (deadline <= now)
        return 0;
    uint64_t wait = deadline - now;
    return wait > INT32_MAX ? INT32_MAX : (int) wait;
}

/* ------------------------------------------------------------ wake-ups and posts */

/* Writes the eventfd unless a write is already unread. */
static void s_kick(router_loop_t *loop)
{
    if (atomic_exchange(&loop->wake_armed, 1) == 0) {
        uint64_t one = 1;
        ssize_t n = write(loop->event_fd, &one, sizeof one);
        (void) n; /* EAGAIN: the counter is saturated, the loop wakes anyway */
    }
}

/* Another thread's call into the loop (post, wake, stop) is counted while
 * it touches the loop: once it has published its work, the loop thread may
 * act on it before the call returns — a stop or a post that ends the run —
 * and destroy the loop; router_loop_destroy waits until no call is inside. */
static void s_foreign_enter(router_loop_t *loop)
{
    atomic_fetch_add(&loop->foreign, 1);
}

static void s_foreign_leave(router_loop_t *loop)
{
    atomic_fetch_sub(&loop->foreign, 1);
}

/* Waits out the calls of other threads still inside (each is a few
 * instructions from returning). */
static void s_foreign_wait(router_loop_t *loop)
{
    while (atomic_load(&loop->foreign))
        sched_yield();
}

void router_loop_wake(router_loop_t *loop)
{
    if (!loop)
        return;
    s_foreign_enter(loop);
    atomic_store(&loop->wake_requested, 1);
    s_kick(loop);
    s_foreign_leave(loop);
}

void router_loop_set_wake_cb(router_loop_t *loop, router_wake_fn cb, void *ud)
{
    if (!loop)
        return;
    loop->wake_cb = cb;
    loop->wake_ud = ud;
}

void router_loop_set_drained_cb(router_loop_t *loop, router_wake_fn cb, void *ud)
{
    if (!loop)
        return;
    loop->drained_cb = cb;
    loop->drained_ud = ud;
}

void router_loop_stop(router_loop_t *loop)
{
    if (!loop)
        return;
    s_foreign_enter(loop);
    atomic_store(&loop->stop, true);
    s_kick(loop);
    s_foreign_leave(loop);
}

int router_loop_post(router_loop_t *loop, router_post_fn fn, void *arg)
{
    if (!loop || !fn) {
        errno = EINVAL;
        return -1;
    }
    s_foreign_enter(loop);
    size_t pos = atomic_load_explicit(&loop->post_tail, memory_order_relaxed);
    router_post_cell_t *cell;
    for (;;) {
        cell = &loop->post_cells[pos & loop->post_mask];
        size_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        intptr_t dif = (intptr_t) seq - (intptr_t) pos;
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&loop->post_tail, &pos, pos + 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            atomic_fetch_add_explicit(&loop->posts_refused, 1, memory_order_relaxed);
            s_foreign_leave(loop);
            errno = EAGAIN;
            return -1;
        } else {
            pos = atomic_load_explicit(&loop->post_tail, memory_order_relaxed);
        }
    }
    cell->fn = fn;
    cell->arg = arg;
    atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
    s_kick(loop);
    s_foreign_leave(loop);
    return 0;
}

int router_loop_post_wait(router_loop_t *loop, router_post_fn fn, void *arg, unsigned max_ms)
{
    for (unsigned waited = 0; router_loop_post(loop, fn, arg) != 0; waited++) {
        if (max_ms && waited >= max_ms) {
            errno = EAGAIN;
            return -1;
        }
        struct timespec ms = {0, 1000000L}; /* the queue drains as the loop runs */
        nanosleep(&ms, NULL);
    }
    return 0;
}

/* Runs up to `budget` queued posts; returns true if more are waiting. */
static bool s_posts_run(router_loop_t *loop, size_t budget)
{
    for (;;) {
        router_post_cell_t *cell = &loop->post_cells[loop->post_head & loop->post_mask];
        size_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        if (seq != loop->post_head + 1)
            return false;
        if (budget-- == 0)
            return true;
        router_post_fn fn = cell->fn;
        void *arg = cell->arg;
        atomic_store_explicit(&cell->seq, loop->post_head + loop->post_mask + 1,
                              memory_order_release);
        loop->post_head++;
        loop->stats.posts++;
        fn(loop, arg);
    }
}

/* Runs every queued post, and those they queue, until none is left. */
static void s_posts_drain(router_loop_t *loop)
{
    while (s_posts_run(loop, SIZE_MAX))
        ;
}

/* Outside router_loop_run: waits out posts still being published, runs
 * every queued post and those they queue, then settles what they closed. */
static void s_posts_finish(router_loop_t *loop)
{
    s_foreign_wait(loop);
    s_posts_drain(loop);
    router_loop_settle(loop);
}

static void s_on_eventfd(router_watch_t *w, int fd, unsigned events, void *ud)
{
    router_loop_t *loop = ud;
    uint64_t count;
    (void) w;
    (void) events;
    ssize_t n = read(fd, &count, sizeof count);
    (void) n;
    /* An RMW, so it reads the producers' release: posts queued before it
     * are visible to the drain below; later ones write the eventfd again. */
    (void) atomic_exchange(&loop->wake_armed, 0);
    if (s_posts_run(loop, loop->post_mask + 1))
        s_kick(loop); /* more than a queue's worth: finish next iteration */
    if (atomic_exchange(&loop->wake_requested, 0) && loop->wake_cb)
        loop->wake_cb(loop, loop->wake_ud);
}

/* ------------------------------------------------------------ signals */

static void s_on_signalfd(router_watch_t *w, int fd, unsigned events, void *ud)
{
    router_loop_t *loop = ud;
    struct signalfd_siginfo si;
    (void) w;
    (void) events;
    while (read(fd, &si, sizeof si) == (ssize_t) sizeof si) {
        int signo = (int) si.ssi_signo;
        if (signo > 0 && signo < NSIG && loop->sig[signo].cb)
            loop->sig[signo].cb(loop, signo, loop->sig[signo].ud);
    }
}

int router_loop_on_signal(router_loop_t *loop, int signo, router_signal_fn cb, void *ud)
{
    if (!loop || signo <= 0 || signo >= NSIG || signo == SIGKILL || signo == SIGSTOP ||
        signo == SIGSEGV || signo == SIGBUS || signo == SIGFPE || signo == SIGILL ||
        loop->destroying) {
        errno = EINVAL;
        return -1;
    }
    if (!sigismember(&loop->sig_set, signo)) {
        sigset_t one, old, next = loop->sig_set;
        sigemptyset(&one);
        sigaddset(&one, signo);
        sigaddset(&next, signo);
        int rc = pthread_sigmask(SIG_BLOCK, &one, &old);
        if (rc != 0) {
            errno = rc;
            return -1;
        }
        int fd = signalfd(loop->signal_fd, &next, SFD_NONBLOCK | SFD_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (!sigismember(&old, signo))
                pthread_sigmask(SIG_UNBLOCK, &one, NULL);
            errno = err;
            return -1;
        }
        if (loop->signal_fd < 0) {
            loop->signal_watch = router_loop_watch_fd(loop, fd, ROUTER_EV_READ, s_on_signalfd,
                                                      loop);
            if (!loop->signal_watch) {
                int err = errno;
                close(fd);
                if (!sigismember(&old, signo))
                    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
                errno = err;
                return -1;
            }
            loop->signal_fd = fd;
        }
        loop->sig_set = next;
        if (!sigismember(&old, signo))
            sigaddset(&loop->sig_blocked, signo);
    }
    loop->sig[signo].cb = cb;
    loop->sig[signo].ud = ud;
    return 0;
}

/* Reads away what is pending, then unblocks what this loop blocked. */
static void s_signals_release(router_loop_t *loop)
{
    if (loop->signal_fd < 0)
        return;
    struct signalfd_siginfo si;
    while (read(loop->signal_fd, &si, sizeof si) == (ssize_t) sizeof si)
        ;
    close(loop->signal_fd);
    loop->signal_fd = -1;
    pthread_sigmask(SIG_UNBLOCK, &loop->sig_blocked, NULL);
}

/* ------------------------------------------------------------ watches */

router_watch_t *router_loop_watch_fd(router_loop_t *loop, int fd, unsigned events,
                                     router_watch_fn cb, void *ud)
{
    events &= ROUTER_EV_READ | ROUTER_EV_WRITE;
    if (!loop || fd < 0 || !cb || !events || loop->destroying) {
        errno = EINVAL;
        return NULL;
    }
    router_watch_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->loop = loop;
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    w->ud = ud;
    int rc = loop->be->watch_start(w);
    if (rc < 0) {
        free(w);
        errno = -rc;
        return NULL;
    }
    ROUTER_LIST_PUSH(loop->watches, w);
    return w;
}

int router_watch_update(router_watch_t *w, unsigned events)
{
    events &= ROUTER_EV_READ | ROUTER_EV_WRITE;
    if (!w || w->dead || !events) {
        errno = EINVAL;
        return -1;
    }
    if (events == w->events)
        return 0;
    unsigned was = w->events;
    w->events = events;
    int rc = w->loop->be->watch_update(w);
    if (rc < 0) {
        /* Still watched for what it was (io_uring re-arms its poll with
         * w->events), and a retry of the same update is not taken for a
         * no-op. */
        w->events = was;
        errno = -rc;
        return -1;
    }
    return 0;
}

void router_watch_destroy(router_watch_t **wp)
{
    if (!wp || !*wp)
        return;
    router_watch_t *w = *wp;
    router_loop_t *loop = w->loop;
    *wp = NULL;
    if (w->dead)
        return;
    w->dead = true;
    loop->be->watch_stop(w);
    ROUTER_LIST_UNLINK(loop->watches, w);
    ROUTER_LIST_PUSH(loop->dead_watches, w);
}

void router_watch_fire(router_watch_t *w, unsigned events)
{
    if (!w->dead && events)
        w->cb(w, w->fd, events, w->ud);
}

static bool s_watch_release(router_watch_t *w, bool force)
{
    router_loop_t *loop = w->loop;
    if (!force && loop->be->watch_busy(w))
        return false;
    ROUTER_LIST_UNLINK(loop->dead_watches, w);
    free(w);
    return true;
}

/* ------------------------------------------------------------ settle */

void router_loop_settle(router_loop_t *loop)
{
    if (loop->conn_ops)
        loop->conn_ops->settle(loop);
    if (loop->listener_ops)
        loop->listener_ops->settle(loop);
    for (router_watch_t *w = loop->dead_watches, *next; w; w = next) {
        next = w->next;
        (void) s_watch_release(w, loop->be_finished);
    }
}

/* ------------------------------------------------------------ creation */

static int s_opts_resolve(const router_loop_opts_t *in, router_loop_opts_t *o)
{
    *o = in ? *in : (router_loop_opts_t){0};
    if (!o->max_conns)
        o->max_conns = ROUTER_LOOP_MAX_CONNS;
    if (!o->send_limit)
        o->send_limit = ROUTER_CONN_SEND_LIMIT;
    if (!o->send_total_limit)
        o->send_total_limit = ROUTER_LOOP_SEND_TOTAL_LIMIT;
    if (!o->close_timeout_ms)
        o->close_timeout_ms = ROUTER_LOOP_CLOSE_TIMEOUT_MS;
    if (!o->recv_buf_size)
        o->recv_buf_size = ROUTER_LOOP_RECV_BUF_SIZE;
    if (!o->recv_buf_count)
        o->recv_buf_count = ROUTER_LOOP_RECV_BUF_COUNT;
    if (!o->max_timers)
        o->max_timers = ROUTER_LOOP_MAX_TIMERS;
    if (!o->post_capacity)
        o->post_capacity = ROUTER_LOOP_POST_CAPACITY;
    if (o->recv_buf_size < S_RECV_BUF_SIZE_MIN || o->recv_buf_size > S_RECV_BUF_SIZE_MAX ||
        o->recv_buf_count > S_RECV_BUF_COUNT_MAX ||
        (o->recv_buf_count & (o->recv_buf_count - 1)) != 0 ||
        o->post_capacity > S_POST_CAPACITY_MAX || o->max_timers >= UINT32_MAX ||
        o->backend > ROUTER_LOOP_MEMORY)
        return -1;
    unsigned cap = 1;
    while (cap < o->post_capacity)
        cap <<= 1;
    o->post_capacity = cap;
    if (o->backend == ROUTER_LOOP_AUTO) {
        const char *env = getenv("KITH_LOOP_BACKEND");
        if (env && *env) {
            if (strcmp(env, "uring") == 0 || strcmp(env, "io_uring") == 0) {
                o->backend = ROUTER_LOOP_URING;
            } else if (strcmp(env, "epoll") == 0) {
                o->backend = ROUTER_LOOP_EPOLL;
            } else {
                ROUTER_LOG(ROUTER_LOG_ERROR, "loop",
                           "KITH_LOOP_BACKEND=%s: expected uring or epoll", env);
                return -1;
            }
        }
    }
    return 0;
}

/* Sets up the backend: io_uring unless epoll is asked for; AUTO falls back
 * to epoll when the kernel or a seccomp profile refuses io_uring. */
static int s_backend_init(router_loop_t *loop, router_loop_backend_t want)
{
    if (want == ROUTER_LOOP_MEMORY) {
        loop->be = &router_backend_mem;
        return loop->be->init(loop);
    }
    if (want != ROUTER_LOOP_EPOLL) {
        loop->be = &router_backend_uring;
        int rc = loop->be->init(loop);
        if (rc == 0 || want == ROUTER_LOOP_URING)
            return rc;
        if (!atomic_exchange(&s_fallback_logged, true))
            ROUTER_LOG(ROUTER_LOG_WARN, "loop", "io_uring unavailable (%s): using epoll",
                       strerror(-rc));
    }
    loop->be = &router_backend_epoll;
    return loop->be->init(loop);
}

router_loop_t *router_loop_new(const router_loop_opts_t *opts)
{
    router_loop_opts_t o;
    if (s_opts_resolve(opts, &o) != 0) {
        errno = EINVAL;
        return NULL;
    }
    router_loop_t *loop = calloc(1, sizeof *loop);
    if (!loop)
        return NULL;
    loop->opts = o;
    loop->event_fd = -1;
    loop->signal_fd = -1;
    loop->timers.free_head = UINT32_MAX;
    sigemptyset(&loop->sig_set);
    sigemptyset(&loop->sig_blocked);
    int err;
    loop->post_cells = calloc(o.post_capacity, sizeof *loop->post_cells);
    if (!loop->post_cells) {
        err = ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < o.post_capacity; i++)
        atomic_init(&loop->post_cells[i].seq, i);
    loop->post_mask = o.post_capacity - 1;
    loop->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->event_fd < 0) {
        err = errno;
        goto fail;
    }
    int rc = s_backend_init(loop, o.backend);
    if (rc < 0) {
        loop->be = NULL;
        err = -rc;
        goto fail;
    }
    loop->event_watch = router_loop_watch_fd(loop, loop->event_fd, ROUTER_EV_READ,
                                             s_on_eventfd, loop);
    if (!loop->event_watch) {
        err = errno;
        loop->be->fini(loop);
        loop->be = NULL;
        goto fail;
    }
    return loop;

fail:
    if (loop->event_fd >= 0)
        close(loop->event_fd);
    free(loop->post_cells);
    free(loop);
    errno = err;
    return NULL;
}

void router_loop_destroy(router_loop_t **lp)
{
    if (!lp || !*lp)
        return;
    router_loop_t *loop = *lp;
    *lp = NULL;
    if (loop->has_run && !pthread_equal(loop->runner, pthread_self()))
        ROUTER_LOG(ROUTER_LOG_WARN, "loop",
                   "destroyed on another thread than the one that ran it: %s",
                   loop->be == &router_backend_uring
                       ? "io_uring cannot cancel and reap its requests from here"
                       : "allowed for epoll, but not portable to io_uring");
    /* Nothing accepted is lost: queued posts run before teardown (a post
     * still being published is waited for first). */
    s_foreign_wait(loop);
    s_posts_drain(loop);
    loop->destroying = true;
    /* From here router_loop_connect/listen/watch_fd/timer_add refuse, so
     * on_close handlers cannot start anything new. */
    if (loop->conn_ops)
        loop->conn_ops->shutdown(loop);
    router_loop_settle(loop); /* on_close for every connection */
    if (loop->listener_ops)
        loop->listener_ops->shutdown(loop);
    /* Posts are still taken (router_loop_post does not refuse them): what
     * the on_close handlers and other threads queued meanwhile runs too,
     * while the backend can still take the watches they may destroy. */
    s_foreign_wait(loop);
    s_posts_drain(loop);
    loop->event_watch = NULL;
    loop->signal_watch = NULL;
    while (loop->watches) {
        router_watch_t *w = loop->watches;
        router_watch_destroy(&w);
    }
    loop->be->fini(loop);
    loop->be_finished = true;
    router_loop_settle(loop); /* frees everything: the kernel is done with it */
    s_signals_release(loop);
    s_foreign_wait(loop);
    s_posts_drain(loop); /* queued by the last settle's callbacks */
    close(loop->event_fd);
    free(loop->timers.slots);
    free(loop->timers.heap);
    free(loop->post_cells);
    free(loop);
}

const char *router_loop_backend_name(const router_loop_t *loop)
{
    return loop && loop->be ? loop->be->name : "none";
}

/* ------------------------------------------------------------ running */

/* Runs, between two dispatch batches, what other threads and the kernel
 * asked of the loop: posts and the wake callback (two atomic loads), and
 * signals (a nonblocking read of the signalfd, at most every
 * S_SIGNAL_POLL_MS while the loop is busy). Their own eventfd and signalfd
 * completions may sit far behind a flood of receives — io_uring queues
 * them in arrival order, and recent kernels run only a few deferred task
 * works per enter — so they are not waited for; when they do come they
 * find little to do. The wake_armed protocol is untouched, so no wake-up
 * is lost. Returns true if posts are left over for the next iteration. */
static bool s_service(router_loop_t *loop, int dispatched)
{
    bool more = s_posts_run(loop, loop->post_mask + 1);
    if (atomic_exchange(&loop->wake_requested, 0) && loop->wake_cb)
        loop->wake_cb(loop, loop->wake_ud);
    if (dispatched > 0 && loop->signal_fd >= 0) {
        uint64_t now = s_now_ms();
        if (now - loop->signal_polled_ms >= S_SIGNAL_POLL_MS) {
            loop->signal_polled_ms = now;
            s_on_signalfd(loop->signal_watch, loop->signal_fd, ROUTER_EV_READ, loop);
        }
    }
    return more;
}

int router_loop_run(router_loop_t *loop)
{
    if (!loop || loop->running || loop->destroying) {
        errno = loop ? EBUSY : EINVAL;
        return -1;
    }
    loop->running = true;
    loop->runner = pthread_self();
    loop->has_run = true;
    int rc = 0;
    router_loop_settle(loop);
    bool busy = false;
    /* One iteration: at most ROUTER_LOOP_BATCH completions, then posts,
     * wake-ups, signals and due timers, so a flood of receives can delay
     * them by one batch and no more. */
    while (!atomic_load(&loop->stop)) {
        int timeout = loop->pend_head || loop->backlog || busy ? 0 : s_timers_timeout(loop);
        loop->iter++; /* a new turn for every connection (conn.c) */
        int r = loop->be->wait(loop, timeout);
        if (r < 0) {
            ROUTER_LOG(ROUTER_LOG_ERROR, "loop", "%s wait failed: %s", loop->be->name,
                       strerror(-r));
            errno = -r;
            rc = -1;
            break;
        }
        /* What this batch answered leaves before parked input's turn: a
         * flood's turn (events.c: 4 KiB of lines, tens of µs) and the rest
         * of the iteration would otherwise sit between a GET /health and
         * its response's submission at the next wait (issue 13). */
        if (loop->backlog) {
            router_loop_settle(loop);
            if (loop->be->submit)
                loop->be->submit(loop);
        }
        if (loop->conn_ops && loop->conn_ops->turn)
            loop->conn_ops->turn(loop); /* parked input gets its turn */
        router_loop_settle(loop);
        busy = s_service(loop, r);
        router_loop_settle(loop);
        s_timers_run(loop);
        router_loop_settle(loop);
        /* Drained: no completions left behind by the batch bounds, no parked
         * input, no posts left over. A saturated loop skips this until it
         * catches up, so what it queued meanwhile forms one batch. */
        if (loop->drained_cb && !loop->input_left && !loop->backlog && !busy)
            loop->drained_cb(loop, loop->drained_ud);
    }
    /* Posts other threads queued while the last iteration ran (after the
     * stop, say) run now, not when destroy comes: their senders may be
     * waiting for an answer, and destroy may wait for them. */
    s_posts_finish(loop);
    atomic_store(&loop->stop, false);
    loop->running = false;
    return rc;
}

void router_loop_run_posts(router_loop_t *loop)
{
    if (!loop || loop->running || loop->destroying)
        return;
    s_posts_finish(loop);
}

void router_loop_stats(const router_loop_t *loop, router_loop_stats_t *out)
{
    if (!loop || !out)
        return;
    *out = loop->stats;
    out->unsent_total = loop->wq_total;
    out->posts_refused = atomic_load_explicit(&loop->posts_refused, memory_order_relaxed);
}
