/* router/comms/crypto_pool.c — the crypto threads: one queue of jobs to
 * run, one queue of jobs done, both under one mutex, and an eventfd that
 * tells the loop a batch is done.
 *
 * Memory ordering (TSan is not in the build, so the argument is written
 * here): a job crosses between threads only inside the mutex — the loop
 * appends it to `todo` under the lock, a thread takes it under the lock,
 * runs it unlocked, and appends it to `done` under the lock, where the loop
 * takes it. Each unlock→lock pair is a release→acquire edge, so every
 * write to a job before a hand-over is visible after it, and no two threads
 * touch the same job fields at once: while a thread runs a job, the loop
 * may write only job->owner (orphaning it), a field of its own that the
 * thread never reads (crypto_job.h groups the fields by owner), reads
 * only job->done, which nobody but the loop ever writes, and sets the
 * atomic job->cancelled (relaxed: it guards no data; a thread that reads it
 * late merely runs a job nobody waits for, which is freed all the same).
 * The eventfd carries no data; `signalled` (under the mutex) keeps the
 * threads from writing it again before the loop has taken the batch. */
#include "router/comms/crypto_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "router/log.h"
#include "router/thread.h"

typedef struct {
    router_crypto_pool_t *pool;     /* owner */
    pthread_t tid;                  /* the thread */
    router_crypto_keycache_t cache; /* this thread's full-order keys */
} s_worker_t;

struct router_crypto_pool {
    router_loop_t *loop;
    const uint8_t *sk, *pk;
    router_crypto_done_fn *on_done;
    void *ud;
    unsigned nthreads;               /* threads started */
    s_worker_t *workers;             /* nthreads of them */
    router_crypto_keycache_t inline_cache; /* the loop's, with no threads */
    int efd;                         /* eventfd: a batch is done; -1 with no threads */
    router_watch_t *watch;           /* the loop's watch on efd */
    size_t inflight;                 /* loop: submitted, not yet handed to on_done */
    router_crypto_job_t *staged_head, *staged_tail; /* loop: submitted, not yet queued */
    unsigned staged;                 /* loop: how many */

    pthread_mutex_t mu;              /* guards everything below */
    pthread_cond_t cv;               /* todo became non-empty, or stop */
    router_crypto_job_t *todo_head, *todo_tail; /* to run, oldest first */
    router_crypto_job_t *done_head, *done_tail; /* run, not yet taken by the loop */
    unsigned idle;                   /* threads waiting on cv */
    unsigned ndone;                  /* jobs on `done` */
    bool signalled;                  /* efd written since the loop last took `done` */
    bool held;                       /* test seam: threads take no job (router_crypto_pool_test_hold) */
    bool stop;                       /* threads must exit */
};

static void s_append(router_crypto_job_t **head, router_crypto_job_t **tail,
                     router_crypto_job_t *job)
{
    job->next = NULL;
    if (*tail)
        (*tail)->next = job;
    else
        *head = job;
    *tail = job;
}

/* Most jobs a thread lets wait on `done` while it has more to run before
 * it wakes the loop: at saturation the loop is woken once per batch, not
 * once per job; with nothing more queued the wake is immediate. */
#define S_DONE_BATCH 16u

/* One lock per job: hand back the job just run and take the next. */
static void *s_worker_main(void *arg)
{
    s_worker_t *w = arg;
    router_thread_name("kith-crypto");
    router_crypto_pool_t *p = w->pool;
    router_crypto_job_t *ran = NULL;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (ran) {
            s_append(&p->done_head, &p->done_tail, ran);
            p->ndone++;
            ran = NULL;
            if (!p->signalled && (p->ndone >= S_DONE_BATCH || !p->todo_head || p->held || p->stop)) {
                p->signalled = true;
                /* An eventfd write never blocks here (the counter is far
                 * from overflowing: the loop reads it to zero on every
                 * wake). */
                uint64_t one = 1;
                ssize_t n = write(p->efd, &one, sizeof one);
                (void) n;
            }
        }
        if (p->stop)
            break;
        router_crypto_job_t *job = p->held ? NULL : p->todo_head;
        if (!job) {
            p->idle++;
            pthread_cond_wait(&p->cv, &p->mu);
            p->idle--;
            continue;
        }
        p->todo_head = job->next;
        if (!p->todo_head)
            p->todo_tail = NULL;
        pthread_mutex_unlock(&p->mu);

        if (!atomic_load_explicit(&job->cancelled, memory_order_relaxed))
            router_crypto_job_run(job, p->sk, p->pk, &w->cache);
        ran = job;

        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* On the loop thread: a batch is done. */
static void s_on_efd(router_watch_t *watch, int fd, unsigned events, void *ud)
{
    (void) watch;
    (void) events;
    router_crypto_pool_t *p = ud;
    uint64_t v;
    while (read(fd, &v, sizeof v) > 0) {
    }
    pthread_mutex_lock(&p->mu);
    router_crypto_job_t *job = p->done_head;
    p->done_head = p->done_tail = NULL;
    p->ndone = 0;
    p->signalled = false;
    pthread_mutex_unlock(&p->mu);
    while (job) {
        router_crypto_job_t *next = job->next;
        job->next = NULL;
        job->done = true;
        p->inflight--;
        p->on_done(job, p->ud);
        job = next;
    }
}

static void s_free_list(router_crypto_job_t *job)
{
    while (job) {
        router_crypto_job_t *next = job->next;
        router_crypto_job_free(&job);
        job = next;
    }
}

router_crypto_pool_t *router_crypto_pool_new(const router_crypto_pool_opts_t *opts)
{
    if (opts->threads > ROUTER_CRYPTO_THREADS_MAX || (opts->threads && !opts->on_done)) {
        errno = EINVAL;
        return NULL;
    }
    router_crypto_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->loop = opts->loop;
    p->sk = opts->sk;
    p->pk = opts->pk;
    p->on_done = opts->on_done;
    p->ud = opts->ud;
    p->efd = -1;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    if (opts->threads == 0)
        return p;
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    p->workers = calloc(opts->threads, sizeof *p->workers);
    if (p->efd < 0 || !p->workers)
        goto fail;
    if (!(p->watch = router_loop_watch_fd(p->loop, p->efd, ROUTER_EV_READ, s_on_efd, p)))
        goto fail;
    for (unsigned i = 0; i < opts->threads; i++) {
        p->workers[i].pool = p;
        int rc = pthread_create(&p->workers[i].tid, NULL, s_worker_main, &p->workers[i]);
        if (rc != 0) {
            errno = rc;
            goto fail;
        }
        p->nthreads++;
    }
    return p;
fail:;
    int e = errno;
    router_crypto_pool_destroy(&p);
    errno = e;
    return NULL;
}

void router_crypto_pool_destroy(router_crypto_pool_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_crypto_pool_t *p = *self_p;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->workers[i].tid, NULL);
    router_watch_destroy(&p->watch);
    if (p->efd >= 0)
        close(p->efd);
    /* Orphans only (crypto_pool.h): nobody else points at them now. */
    s_free_list(p->staged_head);
    s_free_list(p->todo_head);
    s_free_list(p->done_head);
    free(p->workers);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
    *self_p = NULL;
}

bool router_crypto_pool_submit(router_crypto_pool_t *self, router_crypto_job_t *job)
{
    if (self->nthreads == 0) {
        router_crypto_job_run(job, self->sk, self->pk, &self->inline_cache);
        job->done = true;
        return true;
    }
    self->inflight++;
    s_append(&self->staged_head, &self->staged_tail, job);
    self->staged++;
    return false;
}

void router_crypto_pool_flush(router_crypto_pool_t *self)
{
    if (!self->staged)
        return;
    pthread_mutex_lock(&self->mu);
    if (self->todo_tail)
        self->todo_tail->next = self->staged_head;
    else
        self->todo_head = self->staged_head;
    self->todo_tail = self->staged_tail;
    if (self->idle == 1 || (self->idle && self->staged == 1))
        pthread_cond_signal(&self->cv);
    else if (self->idle)
        pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
    self->staged_head = self->staged_tail = NULL;
    self->staged = 0;
}

void router_crypto_pool_test_hold(router_crypto_pool_t *self, bool hold)
{
    if (!self->nthreads)
        return;
    pthread_mutex_lock(&self->mu);
    self->held = hold;
    if (!hold)
        pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

size_t router_crypto_pool_inflight(const router_crypto_pool_t *self)
{
    return self->inflight;
}

unsigned router_crypto_pool_threads(const router_crypto_pool_t *self)
{
    return self->nthreads;
}
