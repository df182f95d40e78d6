/* router/net/loop_internal.h — private to the event loop: the structures shared
 * by loop.c, conn.c, listen.c and the backends (loop_uring.c, loop_epoll.c),
 * and the interface every backend implements. Include it nowhere else.
 *
 * Object lifetime, the one rule both backends follow: connections,
 * listeners and watches are freed only between dispatch batches (in
 * router_loop_settle), and only once the backend reports no operation of
 * theirs in flight. So a completion or event can always dereference the
 * object it names, even one closed a moment earlier. */
#ifndef KITH_ROUTER_LOOP_INTERNAL_H
#define KITH_ROUTER_LOOP_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"

/* ------------------------------------------------------------ op tags */

/* What an io_uring completion (user_data) or an epoll event (data.u64) is
 * about: the object's address with the operation in its low three bits
 * (every object comes from malloc, so is at least 8-byte aligned). The
 * provided-buffer id travels in the CQE flags, the fd in the object. */
typedef enum router_op {
    ROUTER_OP_IGNORE = 0, /* cancel requests: their completions are dropped */
    ROUTER_OP_ACCEPT,     /* listeners ready (io_uring: the poll on their epoll set) */
    ROUTER_OP_RECV,       /* a connection receiving (epoll: any conn event) */
    ROUTER_OP_SEND,       /* a connection's sendmsg */
    ROUTER_OP_CONNECT,    /* a connection's outbound connect */
    ROUTER_OP_POLL,       /* a watch's poll */
} router_op_t;

#define ROUTER_OP_MASK UINT64_C(7)

static inline uint64_t router_op_pack(const void *obj, router_op_t op)
{
    return (uint64_t) (uintptr_t) obj | (uint64_t) op;
}

static inline void *router_op_obj(uint64_t tag)
{
    return (void *) (uintptr_t) (tag & ~ROUTER_OP_MASK);
}

static inline router_op_t router_op_of(uint64_t tag)
{
    return (router_op_t) (tag & ROUTER_OP_MASK);
}

/* ------------------------------------------------------------ connections */

/* Most send-queue blocks handed to one sendmsg. */
#define ROUTER_CONN_IOV_MAX 16
/* Pieces of one send when more blocks than that are queued (many small
 * shared frames: an SSE burst to each subscriber), so a backlog leaves in
 * a few sends, not one per 16 frames; the io_uring backend holds them on
 * the heap only while such a send is in flight. */
#define ROUTER_CONN_IOV_BIG 256
/* Smallest and largest send-queue block allocated for small writes. */
#define ROUTER_WQ_BLOCK_MIN 1024u
#define ROUTER_WQ_BLOCK_MAX (64u * 1024u)

/* One block of a connection's send queue: bytes [head, tail) are unsent.
 * A block either holds copied bytes in data[] (counted byte by byte in the
 * loop's wq_total) or references a buffer many queues share (cap 0; its
 * bytes are counted in wq_total once, while any block holds it). */
typedef struct router_wq_block {
    struct router_wq_block *next; /* the next block to send */
    struct router_shared_buf *shared; /* the shared bytes, or NULL: data[] */
    size_t cap;                   /* bytes of data[] (0 for a shared block) */
    size_t head;                  /* first unsent byte */
    size_t tail;                  /* end of the queued bytes */
    uint8_t data[];               /* the bytes */
} router_wq_block_t;

typedef enum router_conn_state {
    ROUTER_CONN_CONNECTING, /* outbound, not established yet */
    ROUTER_CONN_OPEN,       /* established */
    ROUTER_CONN_CLOSING,    /* graceful close: flushing, then awaiting EOF */
    ROUTER_CONN_DEAD,       /* I/O stopped; on_close pending or delivered */
} router_conn_state_t;

/* Work a connection waits for in router_loop_settle. */
enum {
    ROUTER_PEND_FLUSH = 1u << 0,   /* write what is queued */
    ROUTER_PEND_DELIVER = 1u << 1, /* hand parked input (and EOF) to the user */
    ROUTER_PEND_CLOSED = 1u << 2,  /* call on_close */
};

/* State of a connection on the io_uring backend. */
typedef struct router_conn_uring {
    unsigned inflight;   /* requests whose last completion has not arrived */
    bool recv_armed;     /* a (multishot) receive is in flight */
    bool recv_cancelled; /* ...and a cancel for it was submitted */
    bool send_armed;     /* a sendmsg is in flight */
    bool connect_armed;  /* the connect is in flight */
    bool cancelled;      /* kill: cancels for everything were submitted */
    struct msghdr msg;   /* the in-flight sendmsg's header */
    struct iovec iov[ROUTER_CONN_IOV_MAX]; /* ...and its pieces */
} router_conn_uring_t;

/* State of a connection on the epoll backend. */
typedef struct router_conn_epoll {
    uint32_t events;    /* the epoll interest registered */
    bool added;         /* the fd is in the epoll set */
    bool write_blocked; /* sendmsg hit EAGAIN: wait for EPOLLOUT */
} router_conn_epoll_t;

struct router_conn {
    router_loop_t *loop;             /* the owner */
    router_listener_t *listener;     /* accepted through (until DEAD), or NULL */
    uint64_t id;                     /* unique within the loop */
    int fd;                          /* the socket, -1 once closed */
    router_conn_state_t state;       /* see router_conn_state_t */
    router_conn_handlers_t h;        /* the user's callbacks */
    void *ud;                        /* their user data */
    bool has_handlers;               /* h was set */
    router_close_reason_t reason;    /* reported by on_close */
    int error;                       /* errno behind ERROR / CONNECT_FAILED */
    router_close_reason_t closing_as;/* what CLOSING ends as: LOCAL or EOF */
    bool close_when_open;            /* router_conn_close while CONNECTING */
    bool read_paused;                /* router_conn_pause_read in effect */
    bool eof;                        /* the peer's EOF was read */
    bool eof_told;                   /* ...and handled (on_eof or close) */
    bool wr_shut;                    /* shutdown(SHUT_WR) done */
    unsigned pending;                /* ROUTER_PEND_* bits */
    bool in_pending;                 /* on the loop's pending list */
    router_conn_t *pend_next;        /* pending list link */
    router_conn_t *prev, *next;      /* the loop's live or dead list */
    uint64_t close_timer;            /* graceful-close deadline timer, or 0 */
    bool close_by_sweep;             /* no close timer: the deadline sweep bounds the close */
    uint64_t deadline;               /* router_conn_set_deadline: abort at this monotonic ms, 0 none */
    router_wq_block_t *wq_head;      /* send queue: oldest block */
    router_wq_block_t *wq_tail;      /* send queue: newest block */
    size_t wq_bytes;                 /* unsent bytes queued */
    size_t wq_blocks;                /* blocks in the send queue */
    struct iovec *iov_big;           /* io_uring: the pieces of a big send in flight, or NULL */
    size_t send_limit;               /* most unsent bytes allowed */
    uint8_t *park;                   /* input received but not yet delivered */
    size_t park_off;                 /* first undelivered byte in park */
    size_t park_len;                 /* undelivered bytes, from park_off */
    size_t park_cap;                 /* park's allocation */
    uint64_t turn_iter;              /* loop iteration turn_used belongs to */
    size_t turn_used;                /* bytes delivered in that iteration */
    size_t turn_bytes;               /* its turn: 0 is ROUTER_CONN_TURN_BYTES */
    bool in_backlog;                 /* on the loop's backlog (parked input, next turn) */
    router_conn_t *backlog_next;     /* backlog link */
    router_addr_t peer;              /* the remote address */
    union {
        router_conn_uring_t u;       /* io_uring backend */
        router_conn_epoll_t e;       /* epoll backend */
    } be;                            /* backend state */
};

/* ------------------------------------------------------------ listeners, watches */

struct router_listener {
    router_loop_t *loop;          /* the owner */
    int fd;                       /* the listening socket, -1 once closed */
    router_addr_t addr;           /* the address bound */
    router_accept_fn on_accept;   /* the user's callback */
    void *ud;                     /* its user data */
    unsigned max_conns;           /* own cap, 0 for none */
    router_listener_stats_t stats;/* counters */
    bool closed;                  /* router_listener_close was called */
    bool refusing;                /* a refusal streak was logged */
    bool backing_off;             /* accepting paused after EMFILE and such */
    uint64_t retry_timer;         /* backing off: the retry; else the slot kept for it */
    uint64_t err_logged_ms;       /* when an accept failure was last logged, 0: never */
    uint64_t err_suppressed;      /* failures not logged since then */
    int err_last;                 /* the latest accept failure's errno */
    char *uds_path;               /* the socket file we created, or NULL */
    dev_t uds_dev;                /* its device, to unlink only our own file */
    ino_t uds_ino;                /* its inode */
    router_listener_t *prev, *next; /* the loop's live or dead list */
    bool be_added;                /* in the backend's epoll set (both backends) */
};

struct router_watch {
    router_loop_t *loop;          /* the owner */
    int fd;                       /* the caller's fd (not ours to close) */
    unsigned events;              /* ROUTER_EV_* wanted */
    router_watch_fn cb;           /* the callback */
    void *ud;                     /* its user data */
    bool dead;                    /* destroyed: no more callbacks */
    router_watch_t *prev, *next;  /* the loop's live or dead list */
    union {
        struct {
            unsigned inflight;    /* poll requests in flight */
            bool failed;          /* the kernel refused the poll: not re-armed */
            bool removing;        /* a removal of the newest poll was queued */
        } u;                      /* io_uring backend */
        struct {
            bool added;           /* in the epoll set */
        } e;                      /* epoll backend */
    } be;                         /* backend state */
};

/* Intrusive doubly-linked lists over `prev`/`next` fields. */
#define ROUTER_LIST_PUSH(head, obj)                                     \
    do {                                                                \
        (obj)->prev = NULL;                                             \
        (obj)->next = (head);                                           \
        if (head)                                                       \
            (head)->prev = (obj);                                       \
        (head) = (obj);                                                 \
    } while (0)

#define ROUTER_LIST_UNLINK(head, obj)                                   \
    do {                                                                \
        if ((obj)->prev)                                                \
            (obj)->prev->next = (obj)->next;                            \
        else                                                            \
            (head) = (obj)->next;                                       \
        if ((obj)->next)                                                \
            (obj)->next->prev = (obj)->prev;                            \
        (obj)->prev = (obj)->next = NULL;                               \
    } while (0)

/* ------------------------------------------------------------ timers, posts */

typedef struct router_timer_slot {
    uint64_t deadline; /* monotonic ms */
    uint64_t seq;      /* order added, breaks deadline ties */
    router_timer_fn cb;/* callback, NULL when the slot is free */
    void *ud;          /* its user data */
    uint32_t gen;      /* bumped on every reuse: ids of old timers go stale */
    uint32_t heap_pos; /* index in the heap */
    uint32_t next_free;/* free-list link */
} router_timer_slot_t;

/* A binary min-heap of timer slots with a free list; ids are
 * (gen << 32) | (slot + 1), so a stale id never cancels a newer timer. */
typedef struct router_timers {
    router_timer_slot_t *slots; /* every slot */
    uint32_t *heap;             /* slot indexes, earliest first */
    uint32_t nslots;            /* slots allocated */
    uint32_t nheap;             /* timers pending */
    uint32_t free_head;         /* first free slot, UINT32_MAX for none */
    uint64_t seq;               /* next seq */
} router_timers_t;

/* One cell of the bounded MPSC post queue (Vyukov's sequence scheme). */
typedef struct router_post_cell {
    _Atomic size_t seq; /* publication sequence */
    router_post_fn fn;  /* the work */
    void *arg;          /* its argument */
} router_post_cell_t;

/* ------------------------------------------------------------ the loop */

typedef struct router_backend_ops router_backend_ops_t;

/* What the loop core (loop.c) asks of the modules owning its connections
 * (conn.c) and listeners (listen.c). Each attaches its table when it first
 * gives the loop an object, so loop.c calls neither by name and the
 * dependencies run one way: conn.c and listen.c use loop.c; the backends
 * use all three. */
typedef struct router_loop_owner_ops {
    void (*turn)(router_loop_t *loop);     /* once per iteration, before settling; may be NULL */
    void (*settle)(router_loop_t *loop);   /* run pending work; free what the backend let go */
    void (*shutdown)(router_loop_t *loop); /* router_loop_destroy: end every object it owns */
} router_loop_owner_ops_t;

struct router_loop {
    const router_backend_ops_t *be;  /* the backend */
    void *be_data;                   /* its private state */
    router_loop_opts_t opts;         /* options, defaults filled in */
    router_loop_stats_t stats;       /* counters */
    atomic_bool stop;                /* router_loop_stop was called */
    bool running;                    /* inside router_loop_run */
    bool has_run;                    /* router_loop_run was called */
    pthread_t runner;                /* ...by this thread (the io_uring issuer) */
    bool destroying;                 /* inside router_loop_destroy */
    bool be_finished;                /* backend torn down: free without asking it */
    uint64_t next_conn_id;           /* the next router_conn_id */
    router_conn_t *conns;            /* connections not DEAD */
    router_conn_t *dead_conns;       /* DEAD, on_close done, awaiting the backend */
    router_conn_t *pend_head;        /* connections with pending work */
    router_conn_t *pend_tail;        /* ...its tail */
    router_conn_t *backlog;          /* connections with input for their next turn */
    const router_loop_owner_ops_t *conn_ops;     /* conn.c's, once a connection exists */
    const router_loop_owner_ops_t *listener_ops; /* listen.c's, once a listener exists */
    uint64_t iter;                   /* loop iterations so far: the turn clock */
    size_t park_total;               /* bytes parked on all connections */
    size_t wq_total;                 /* bytes queued unsent on all connections (a shared buffer once) */
    router_listener_t *listeners;    /* open listeners */
    router_listener_t *dead_listeners; /* closed, awaiting the backend or their conns */
    router_watch_t *watches;         /* live watches */
    router_watch_t *dead_watches;    /* destroyed, awaiting the backend */
    router_timers_t timers;          /* pending timers */
    unsigned deadline_conns;         /* live connections with a deadline set */
    uint64_t sweep_timer;            /* the deadline sweep's timer, 0 when not armed */
    uint64_t sweep_at;               /* ...and when it fires (monotonic ms) */
    uint64_t swept_at;               /* when the last sweep ran */
    int event_fd;                    /* eventfd for wake-ups and posts */
    router_watch_t *event_watch;     /* its watch */
    atomic_int wake_armed;           /* the eventfd was written and not yet read */
    atomic_int wake_requested;       /* router_loop_wake was called */
    router_wake_fn wake_cb;          /* the wake callback */
    void *wake_ud;                   /* its user data */
    bool input_left;                 /* the last wait stopped at the batch bounds with input ready */
    router_wake_fn drained_cb;       /* end of each iteration (router_loop_set_drained_cb) */
    void *drained_ud;                /* its user data */
    router_post_cell_t *post_cells;  /* post queue cells */
    size_t post_mask;                /* capacity - 1 */
    _Atomic size_t post_tail;        /* producers' next position */
    size_t post_head;                /* the consumer's next position */
    _Atomic uint64_t posts_refused;  /* posts refused, counted by producers */
    atomic_uint foreign;             /* other threads inside post/wake/stop (destroy waits) */
    int signal_fd;                   /* signalfd, or -1 */
    router_watch_t *signal_watch;    /* its watch */
    sigset_t sig_set;                /* signals routed to the signalfd */
    sigset_t sig_blocked;            /* the subset this loop blocked itself */
    uint64_t signal_polled_ms;       /* when the signalfd was last read between batches */
    struct {
        router_signal_fn cb;         /* handler, or NULL */
        void *ud;                    /* its user data */
    } sig[NSIG];                     /* per signal number */
};

/* ------------------------------------------------------------ backends */

/* Everything a backend does; all run on the loop thread. Functions that
 * return int give 0 or -errno. */
struct router_backend_ops {
    const char *name;
    int (*init)(router_loop_t *loop);
    /* Tears the kernel side down: no completion or event arrives after. */
    void (*fini)(router_loop_t *loop);
    /* Submits pending requests, waits up to timeout_ms (-1: no limit) for
     * something to happen and dispatches what did, at most
     * ROUTER_LOOP_BATCH completions or events. Returns how many. */
    int (*wait)(router_loop_t *loop, int timeout_ms);
    /* Submits pending requests now, without waiting; NULL when writes
     * leave without a submission (epoll writes at once). */
    void (*submit)(router_loop_t *loop);
    int (*listener_start)(router_listener_t *l);
    void (*listener_stop)(router_listener_t *l);
    bool (*listener_busy)(const router_listener_t *l);
    /* Begins an outbound connect; failures may also come back later
     * through router_conn_on_connected. */
    int (*conn_connect)(router_conn_t *c);
    /* Brings reading (and epoll's write interest) in line with the
     * connection's state: called after any change to it. */
    void (*conn_sync)(router_conn_t *c);
    /* Writes what is queued (from router_loop_settle and completions). */
    void (*conn_flush)(router_conn_t *c);
    /* The connection went DEAD: stop every operation on it. */
    void (*conn_kill)(router_conn_t *c);
    bool (*conn_busy)(const router_conn_t *c);
    int (*watch_start)(router_watch_t *w);
    /* w->events changed. */
    int (*watch_update)(router_watch_t *w);
    void (*watch_stop)(router_watch_t *w);
    bool (*watch_busy)(const router_watch_t *w);
};

extern const router_backend_ops_t router_backend_uring;
extern const router_backend_ops_t router_backend_epoll;
extern const router_backend_ops_t router_backend_mem; /* loop_mem.c */

/* ------------------------------------------------------------ shared helpers */

/* loop.c: runs pending connection work, then frees objects the backend is
 * done with. Called between dispatch batches. */
void router_loop_settle(router_loop_t *loop);

/* loop.c: calls a live watch's callback. */
void router_watch_fire(router_watch_t *w, unsigned events);

/* listen.c: accepting failed with err: transient errors are ignored,
 * resource exhaustion pauses accepting for a moment. */
void router_listener_on_accept_error(router_listener_t *l, int err);
/* listen.c: accept4()s up to `burst` connections on a ready listener, for
 * the backends. Returns true when it stopped at the burst (more may wait),
 * false when the queue is empty, the listener backs off or closed. */
bool router_listener_accept_burst(router_listener_t *l, int burst);

/* conn.c: a new connection on fd (accepted or outbound). NULL on ENOMEM. */
router_conn_t *router_conn_new(router_loop_t *loop, int fd);
/* conn.c: completion and event entry points used by the backends. */
/* Returns the bytes handed to the user now; the rest waits for the
 * connection's next turn (ROUTER_CONN_TURN_BYTES per iteration). */
size_t router_conn_on_read(router_conn_t *c, uint8_t *data, size_t len);
void router_conn_on_eof(router_conn_t *c);
void router_conn_on_error(router_conn_t *c, int err);
void router_conn_on_sent(router_conn_t *c, size_t n);
void router_conn_on_connected(router_conn_t *c, int err);
/* conn.c: whether the backend should be receiving on c. */
bool router_conn_wants_read(const router_conn_t *c);
/* conn.c: fills iov with up to max queued pieces; returns how many. */
int router_conn_wq_iov(const router_conn_t *c, struct iovec *iov, int max);
/* conn.c: ends the connection now (state DEAD, on_close queued). */
void router_conn_kill(router_conn_t *c, router_close_reason_t reason, int err);
/* conn.c: queues pending work for c. */
void router_conn_pend(router_conn_t *c, unsigned what);

/* loop_uring.c: whether the next SQE is to be refused, as a submission
 * queue the kernel cannot drain refuses it. Always false in kith; a weak
 * symbol the unit tests override (tests/uring_fail.h). */
bool router_uring_sqe_refused(void);

#endif
