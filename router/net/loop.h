/* router/net/loop.h — kith's event loop, in the manner of Redis `ae`: a small
 * API with the backend in its own file. io_uring (loop_uring.c) is the
 * engine; epoll (loop_epoll.c) runs the same API where io_uring is refused.
 *
 * Threads: a loop is driven by one thread, the one that calls
 * router_loop_run. Before the first run any single thread may set it up
 * (listen, connect, timers, watches); from then on every function of the
 * router loop, conn and listener APIs is for that thread only, except
 * router_loop_wake, router_loop_post and router_loop_stop, which any thread
 * may call; router_loop_destroy too belongs to that thread once it has run
 * the loop. A call of those three from another thread that began while
 * the loop ran may still be inside when the loop thread, acting on what it
 * published (a stop, a post that ends the run), returns and destroys the
 * loop: destroy waits until no such call is inside. Callbacks always run on
 * the loop thread and must not block.
 *
 * Connections: router/net/conn.h. Listeners and addresses: router/net/listen.h. */
#ifndef KITH_ROUTER_LOOP_H
#define KITH_ROUTER_LOOP_H

#include <stddef.h>
#include <stdint.h>

typedef struct router_loop router_loop_t;
typedef struct router_conn router_conn_t;
typedef struct router_listener router_listener_t;
typedef struct router_watch router_watch_t;

/* ------------------------------------------------------------ creation */

typedef enum router_loop_backend {
    ROUTER_LOOP_AUTO = 0, /* io_uring, else epoll (logged once per process) */
    ROUTER_LOOP_URING,    /* io_uring or fail */
    ROUTER_LOOP_EPOLL,    /* epoll */
    ROUTER_LOOP_MEMORY,   /* no kernel I/O: connections fed by the caller (router/net/loop_mem.h) */
} router_loop_backend_t;

/* Defaults (DESIGN §10) used when an option is 0. */
#define ROUTER_LOOP_MAX_CONNS 10000u
#define ROUTER_LOOP_CLOSE_TIMEOUT_MS 5000u
#define ROUTER_LOOP_RECV_BUF_SIZE (16u * 1024u)
#define ROUTER_LOOP_RECV_BUF_COUNT 256u
#define ROUTER_LOOP_MAX_TIMERS (256u * 1024u)
#define ROUTER_LOOP_POST_CAPACITY 4096u
#define ROUTER_LOOP_SEND_TOTAL_LIMIT ((size_t) 1 << 30)

/* Loop options; zero-initialise and set what you need. */
typedef struct router_loop_opts {
    router_loop_backend_t backend; /* AUTO: env KITH_LOOP_BACKEND=uring|epoll decides */
    unsigned max_conns;        /* open connections (accepted + outbound) */
    size_t send_limit;         /* per-connection unsent bytes (ROUTER_CONN_SEND_LIMIT) */
    size_t send_total_limit;   /* unsent bytes of all connections together (1 GiB; conn.h) */
    unsigned close_timeout_ms; /* bound on a graceful close */
    unsigned recv_buf_size;    /* most bytes one on_data call delivers */
    unsigned recv_buf_count;   /* io_uring provided buffers (power of two, ≤ 32768) */
    unsigned max_timers;       /* timers pending at once */
    unsigned post_capacity;    /* router_loop_post queue slots (rounded up to 2^n) */
} router_loop_opts_t;

/* Creates a loop (opts may be NULL for defaults). With backend AUTO the
 * environment variable KITH_LOOP_BACKEND (`uring` or `epoll`) forces one;
 * otherwise io_uring is tried (SINGLE_ISSUER|DEFER_TASKRUN, then plain
 * setup) and, if the kernel or a seccomp profile refuses it, epoll is used
 * and a warning is logged once per process. Returns NULL with errno set on
 * failure (EINVAL for a bad option or KITH_LOOP_BACKEND value; the io_uring
 * error when URING was forced). The caller owns the loop. */
router_loop_t *router_loop_new(const router_loop_opts_t *opts);

/* Runs posts still queued, closes every connection (on_close with
 * ROUTER_CLOSE_SHUTDOWN), listener and watch, drops pending timers without
 * calling them, restores the signal mask changed by router_loop_on_signal
 * and frees the loop. Never from inside a callback.
 * Threads: call it on the thread that ran the loop (after router_loop_run
 * returned), or on any thread if it never ran. io_uring rings are set up
 * SINGLE_ISSUER, so only that thread can submit the cancels for requests
 * still in flight and wait for them before their buffers are freed; from
 * another thread the cancel drain fails with EEXIST — logged as an error,
 * never silent, and a warning names the wrong thread. (A threaded owner
 * such as router/node.c tears its loop down at the end of its thread.)
 * Nulls *loop; idempotent. */
void router_loop_destroy(router_loop_t **loop);

/* "io_uring" or "epoll". */
const char *router_loop_backend_name(const router_loop_t *loop);

/* ------------------------------------------------------------ running */

/* Fairness. One loop iteration dispatches at most ROUTER_LOOP_BATCH
 * completions (io_uring) or events (epoll), and takes no more receives
 * once ROUTER_LOOP_BATCH_BYTES have been delivered (so at most that plus
 * one receive buffer). Between two batches the loop runs queued posts and
 * the wake callback, reads the signalfd (at least every 10 ms while busy)
 * and fires due timers: none of them waits behind more than one batch of
 * receives, however many are queued (WIRE §9.2). Bytes matter more than
 * completions: one 16 KiB receive can carry ~75 envelopes to verify.
 *
 * Between connections: each gets at most ROUTER_CONN_TURN_BYTES of input
 * handed to on_data per iteration. What a fast sender's receives bring
 * beyond its turn is parked (copied; io_uring's provided buffer goes back at
 * once) and handed over in later turns, so the completions of other
 * connections queued behind a flood are reached in the same iteration, not
 * after the flood has been parsed. A connection with more than
 * ROUTER_CONN_PARK_MAX parked, or with anything parked while the loop's
 * connections together hold more than ROUTER_LOOP_PARK_TOTAL_MAX, stops
 * reading until it is below again (TCP pushes back on the sender). */
#define ROUTER_LOOP_BATCH 256
#define ROUTER_LOOP_BATCH_BYTES (128u * 1024u)
#define ROUTER_CONN_TURN_BYTES (16u * 1024u)
#define ROUTER_CONN_PARK_MAX (256u * 1024u)
#define ROUTER_LOOP_PARK_TOTAL_MAX (4u * 1024u * 1024u)

/* Runs until router_loop_stop, then runs the posts still queued (those
 * other threads made while the last iteration ran). Returns 0 when
 * stopped, or -1 with errno
 * set when the backend fails (with SINGLE_ISSUER io_uring, EEXIST means a
 * second thread tried to drive the loop). */
int router_loop_run(router_loop_t *loop);

/* Runs, on the thread that runs the loop and while it is not running,
 * every post queued so far (waiting out a post still being published) and
 * those they queue. router_loop_run does this before it returns, so a post
 * queued after router_loop_stop but before the last iteration ended has
 * run when run returns; an owner that goes on refusing posts of its own
 * after the run (router/node.c) calls this once it refuses them, so none
 * waits for router_loop_destroy. No-op while running or destroyed. */
void router_loop_run_posts(router_loop_t *loop);

/* Makes router_loop_run return after the current iteration. Any thread;
 * async-signal-safe. A stop requested before run makes run return at once. */
void router_loop_stop(router_loop_t *loop);

/* Gracefully closes every open connection (router_conn_close on each):
 * the first step of a clean shutdown after closing the listeners. */
void router_loop_close_all(router_loop_t *loop);

/* Counters for metrics; read them on the loop thread. */
typedef struct router_loop_stats {
    uint64_t accepted;         /* connections accepted and handed over */
    uint64_t refused;          /* accepted then closed: a connection limit */
    uint64_t accept_errors;    /* accept failures (EMFILE, ENFILE, ENOMEM…) */
    uint64_t connects;         /* outbound connections established */
    uint64_t connect_failures; /* outbound connections that failed */
    uint64_t bytes_in;         /* bytes received on connections */
    uint64_t bytes_out;        /* bytes written to connections */
    uint64_t sends;            /* sends that wrote (send/sendmsg calls, io_uring completions) */
    uint64_t slow_consumer_cuts; /* connections cut for exceeding the send limit */
    uint64_t unsent_total_cuts;  /* ...of which for holding more than their share of the
                                  * loop's send_total_limit when it ran short */
    size_t unsent_total;         /* bytes queued unsent on all connections now */
    uint64_t close_timeouts;   /* graceful closes that hit the timeout */
    uint64_t deadline_cuts;    /* connections aborted at their deadline */
    uint64_t fds_lost;         /* ...of which had lost their fd to a close elsewhere */
    uint64_t recv_nobufs;      /* io_uring: receives re-armed after -ENOBUFS */
    uint64_t posts;            /* router_loop_post calls run */
    uint64_t posts_refused;    /* router_loop_post calls refused: queue full */
    uint64_t cqes_dropped;     /* io_uring: waits told completions were lost (-EBADR) */
    unsigned conns_open;       /* connections open now */
} router_loop_stats_t;

void router_loop_stats(const router_loop_t *loop, router_loop_stats_t *out);

/* ------------------------------------------------------------ timers */

/* One-shot timer callback; `id` is the one router_loop_timer_add returned. */
typedef void (*router_timer_fn)(router_loop_t *loop, uint64_t id, void *ud);

/* Calls cb once, ms milliseconds from now (monotonic clock; at the earliest
 * in the next loop iteration, so a callback re-adding a 0 ms timer cannot
 * starve the loop). Timers due together fire in deadline order, then in the
 * order they were added. Returns a nonzero id, or 0 with errno set (ENOSPC
 * when max_timers are pending, ENOMEM). */
uint64_t router_loop_timer_add(router_loop_t *loop, uint64_t ms, router_timer_fn cb, void *ud);

/* Cancels a pending timer. Returns 0, or -1 with errno ENOENT when it
 * already fired, was cancelled, or never existed. */
int router_loop_timer_cancel(router_loop_t *loop, uint64_t id);

/* The loop's monotonic clock, in milliseconds. */
uint64_t router_loop_now_ms(const router_loop_t *loop);

/* ------------------------------------------------------------ signals */

typedef void (*router_signal_fn)(router_loop_t *loop, int signo, void *ud);

/* Delivers signo through a signalfd: cb runs on the loop thread. Blocks the
 * signal in the calling thread; call it before starting other threads so
 * they inherit the mask (a thread that does not block it would take the
 * signal's default action). For SIGINT, SIGTERM, SIGHUP and the like; not
 * SIGKILL, SIGSTOP or fault signals. cb NULL removes the handler (the
 * signal stays blocked and is then ignored). Returns 0 or -1 (errno). */
int router_loop_on_signal(router_loop_t *loop, int signo, router_signal_fn cb, void *ud);

/* ------------------------------------------------------------ other threads */

/* Wakes the loop from any thread (an eventfd write; async-signal-safe).
 * The wake callback, if set, runs on the loop thread afterwards (several
 * wakes may be merged into one call). */
void router_loop_wake(router_loop_t *loop);

typedef void (*router_wake_fn)(router_loop_t *loop, void *ud);
void router_loop_set_wake_cb(router_loop_t *loop, router_wake_fn cb, void *ud);

/* Sets the callback run at the end of each iteration that drained the
 * loop's ready input: its completions (none left behind by the batch
 * bounds), parked input and posts were all handled, so the loop is about
 * to wait for more. The point where the work input queued elsewhere forms
 * a batch (router/node.c flushes the inbox's group commit there); a
 * saturated loop reaches it only when it catches up. One per loop; cb NULL
 * removes it. Loop thread; it must be quick. */
void router_loop_set_drained_cb(router_loop_t *loop, router_wake_fn cb, void *ud);

/* Work handed to the loop thread. */
typedef void (*router_post_fn)(router_loop_t *loop, void *arg);

/* Queues fn(loop, arg) to run on the loop thread, from any thread, in FIFO
 * order per posting thread. The queue is bounded (post_capacity): when full
 * returns -1 with errno EAGAIN and nothing is queued (the caller keeps arg).
 * Every accepted post runs exactly once: in an iteration of
 * router_loop_run, before run returns, in router_loop_run_posts, or at the
 * latest inside router_loop_destroy; posting threads must be done before
 * destroy. */
int router_loop_post(router_loop_t *loop, router_post_fn fn, void *arg);

/* router_loop_post from a thread that may block (never the loop's own):
 * while the queue is full, tries again every millisecond, for at most
 * max_ms (0: until it is taken). Returns 0, or -1 (EAGAIN) when max_ms
 * passed first and nothing was queued. */
int router_loop_post_wait(router_loop_t *loop, router_post_fn fn, void *arg, unsigned max_ms);

/* ------------------------------------------------------------ fd watches */

/* Readiness bits for watches. ROUTER_EV_ERROR is only ever reported. */
enum {
    ROUTER_EV_READ = 1u << 0,
    ROUTER_EV_WRITE = 1u << 1,
    ROUTER_EV_ERROR = 1u << 2, /* error or hang-up on the fd */
};

typedef void (*router_watch_fn)(router_watch_t *watch, int fd, unsigned events, void *ud);

/* Watches an fd the caller owns (io_uring: multishot poll, re-armed when it
 * ends; epoll: EPOLLET). Edge-triggered on both backends: cb runs when the
 * fd becomes ready (and once at the start if it already is), and must
 * drain it — read until EAGAIN. For a ZeroMQ socket's ZMQ_FD, watch
 * ROUTER_EV_READ and in the callback loop on ZMQ_EVENTS until neither
 * ZMQ_POLLIN nor the ZMQ_POLLOUT you wait for is set; also check
 * ZMQ_EVENTS after every zmq_send/zmq_recv done outside the callback, since
 * those can consume the edge. Returns the watch (owned by the loop until
 * router_watch_destroy or router_loop_destroy) or NULL with errno set. */
router_watch_t *router_loop_watch_fd(router_loop_t *loop, int fd, unsigned events,
                                     router_watch_fn cb, void *ud);

/* Changes the events watched. Returns 0 or -1 (errno). */
int router_watch_update(router_watch_t *watch, unsigned events);

/* Stops watching (the fd is not closed; close it after this if you like).
 * No callback runs after this returns. Nulls *watch; idempotent. */
void router_watch_destroy(router_watch_t **watch);

#endif
