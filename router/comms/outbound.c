/* router/comms/outbound.c — per-peer links: a connection, a frame reader for the
 * acks coming back, and the sends waiting for them, each with its timer.
 *
 * How a link's end settles the sends still waiting (spec/WIRE.md §9.1): the
 * peer's orderly close (FIN) with no ack is a refusal, because a receiver
 * closes orderly only after a typed refusal (or on drain, unread), and that
 * holds however our side of the close then ends; a reset, a socket error,
 * our own cut or a timeout with no FIN first says nothing about the
 * envelope: offline.
 *
 * Meerkat-profile sends (WIRE §23.1) each get a link of their own that is
 * never reused: the envelope, its one answer, our orderly close.
 *
 * A link given several addresses (a DNS name's) dials them in turn until
 * one connects (spec/WIRE.md §1.1). While another address is left to try,
 * each waiting send keeps a copy of its frame, so that what a failed
 * connect dropped can be queued again on the next one. */
#include "router/comms/outbound.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/envelope.h"
#include "proto/frame.h"
#include "router/comms/framed.h"
#include "router/log.h"
#include "router/net/conn.h"

/* Sends waiting on one link; past this, send fails with ENOBUFS. */
#define S_WAITING_MAX 65536u
/* One-envelope connections (Meerkat profile) open at once, all peers
 * together; past this, send fails with ENOBUFS. */
#define S_ONESHOT_MAX 256u

typedef struct s_wait s_wait_t;
typedef struct s_link s_link_t;

/* One envelope waiting for its ack. */
struct s_wait {
    uint8_t id[16];       /* the envelope's id: the ack's in_reply_to */
    uint64_t timer;       /* ack timeout */
    uint64_t until_ms;    /* ...when it fires (loop clock) */
    uint8_t *frame;       /* a copy while the link may dial another address, else NULL */
    size_t len;
    bool no_ack;          /* a kind that gets no ack: settled "sent" by its timer */
    router_send_fn *cb;   /* told once */
    void *ud;
    s_link_t *link;       /* owner */
    s_wait_t *prev, *next;
};

/* One peer connection. */
struct s_link {
    router_outbound_t *ob;        /* owner */
    uint8_t pk[32];               /* the peer */
    router_conn_t *conn;          /* NULL once closed */
    router_framed_t framed;       /* acks coming back */
    bool opened;                  /* connected (on_open ran) or adopted connected */
    router_addr_t addrs[ROUTER_OUTBOUND_ADDRS_MAX]; /* where to dial, in turn */
    unsigned naddrs;              /* ...how many */
    unsigned dialed;              /* ...how many tried so far */
    int dial_err;                 /* why the last connect failed */
    bool peer_closed;             /* the peer's orderly close (FIN) was read */
    bool ending;                  /* we closed or cut conn: no new send may use it */
    bool oneshot;                 /* one envelope, one answer, then closed (WIRE §23.1); never reused */
    s_wait_t *head, *tail;        /* waiting sends, in send order */
    size_t waiting;
    s_link_t *prev, *next;
};

struct router_outbound {
    router_loop_t *loop;
    const router_identity_t *identity;
    uint32_t ack_timeout_ms;
    s_link_t *links;
    unsigned oneshots;            /* one-envelope links open */
    bool destroying;              /* in router_outbound_destroy: close nothing more */
};

/* ---------------------------------------------------------------- waits */

static void s_wait_unlink(s_wait_t *w)
{
    s_link_t *l = w->link;
    if (w->prev)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    l->waiting--;
}

/* Removes the wait, cancels its timer and tells its owner. */
static void s_wait_finish(s_wait_t *w, router_send_outcome_t outcome, const char *detail,
                          const uint8_t *ack_id)
{
    router_outbound_t *ob = w->link->ob;
    s_wait_unlink(w);
    if (w->timer)
        router_loop_timer_cancel(ob->loop, w->timer);
    router_send_fn *cb = w->cb;
    void *ud = w->ud;
    s_link_t *l = w->link;
    free(w->frame);
    free(w);
    /* A one-envelope link has had its answer: close it orderly (what was
     * written is flushed first). */
    if (l->oneshot && l->waiting == 0 && l->conn && !ob->destroying)
        router_conn_close(l->conn);
    cb(outcome, detail, ack_id, ud);
}

/* An acked kind's timeout; for a kind that gets no ack, the turn after
 * its connection opened (sent), or its timeout while none did (offline:
 * it never left). */
static void s_on_ack_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_wait_t *w = ud;
    w->timer = 0;
    if (w->no_ack && w->link->opened)
        s_wait_finish(w, ROUTER_SEND_SENT, "written; this kind gets no ack", NULL);
    else if (w->no_ack)
        s_wait_finish(w, ROUTER_SEND_OFFLINE, "no connection before the timeout", NULL);
    else
        s_wait_finish(w, ROUTER_SEND_OFFLINE, "no ack before the timeout", NULL);
}

/* ---------------------------------------------------------------- acks */

/* Checks one frame from the peer: a signed ack from that peer, to us, for
 * something we are waiting on. Anything else is logged and ignored. */
static void s_on_ack_frame(s_link_t *l, const uint8_t *p, size_t len)
{
    router_outbound_t *ob = l->ob;
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t why;
    const char *bad = NULL;
    uint8_t reply_to[16];
    if (proto_envelope_decode(p, len, &env, &why) != 0)
        bad = proto_envelope_reason_str(why);
    else if (memcmp(proto_envelope_from(env), l->pk, 32) != 0)
        bad = "not from the peer";
    else if (memcmp(proto_envelope_to(env), ob->identity->pk, 32) != 0)
        bad = "not addressed to us";
    else if (proto_envelope_kind(env) != PROTO_KIND_ACK ||
             proto_envelope_in_reply_to(env, reply_to) != 0)
        bad = "not an ack";
    else if (proto_envelope_verify(env, &why) != 0)
        bad = proto_envelope_reason_str(why);
    if (bad) {
        ROUTER_LOG(ROUTER_LOG_WARN, "comms", "ignoring a frame from a peer: %s", bad);
        goto done;
    }
    for (s_wait_t *w = l->head; w; w = w->next) {
        if (memcmp(w->id, reply_to, 16) == 0) {
            uint8_t ack_id[16];
            memcpy(ack_id, proto_envelope_id(env), 16);
            s_wait_finish(w, ROUTER_SEND_ACKED, "acked", ack_id);
            goto done;
        }
    }
    ROUTER_LOG(ROUTER_LOG_DEBUG, "comms", "an ack for nothing we wait on");
done:
    proto_envelope_destroy(&env);
}

static void s_on_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    s_link_t *l = ud;
    while (len > 0) {
        proto_frame_t f;
        ssize_t n = router_framed_read(&l->framed, data, len, &f);
        if (n == -2)
            break;
        if (n < 0) {
            ROUTER_LOG(ROUTER_LOG_WARN, "comms", "peer's frames unreadable (%s); closing",
                       router_framed_error_str(router_framed_error(&l->framed)));
            router_framed_release(&l->framed);
            l->ending = true;
            router_conn_abort(conn);
            return;
        }
        data += n;
        len -= (size_t) n;
        s_on_ack_frame(l, f.payload, f.len);
    }
    if (!router_framed_busy(&l->framed))
        router_framed_release(&l->framed);
}

static void s_link_free(s_link_t *l)
{
    router_outbound_t *ob = l->ob;
    if (l->oneshot)
        ob->oneshots--;
    if (l->prev)
        l->prev->next = l->next;
    else
        ob->links = l->next;
    if (l->next)
        l->next->prev = l->prev;
    router_framed_release(&l->framed);
    free(l);
}

static int s_link_redial(s_link_t *l);

static void s_on_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    s_link_t *l = ud;
    l->conn = NULL;
    char detail[128];
    router_send_outcome_t outcome;
    /* Not connected: refused, unreachable, or past its share of the time
     * (its deadline). Nothing was delivered, so the next address may be
     * tried with the same frames. */
    bool no_connect = reason == ROUTER_CLOSE_CONNECT_FAILED ||
                      (reason == ROUTER_CLOSE_DEADLINE && !l->opened);
    if (no_connect) {
        l->dial_err = router_conn_error(conn);
        if (l->head && l->dialed < l->naddrs) {
            ROUTER_LOG(ROUTER_LOG_INFO, "comms",
                       "a peer's address %u of %u does not connect (%s): trying the next",
                       l->dialed, l->naddrs, strerror(l->dial_err));
            if (s_link_redial(l) == 0)
                return;
        }
    }
    if (no_connect) {
        outcome = ROUTER_SEND_OFFLINE;
        if (l->naddrs > 1)
            snprintf(detail, sizeof detail,
                     "cannot connect to any of its %u addresses (the last: %s)", l->naddrs,
                     strerror(l->dial_err));
        else
            snprintf(detail, sizeof detail, "cannot connect: %s", strerror(l->dial_err));
    } else if (l->peer_closed) {
        /* The peer's orderly end came first, after the acks it owed: what
         * still waits was refused (typed) or never read, so not admitted,
         * however our own close then ended (a reset for what we were still
         * writing into it, or the close's timeout; WIRE §8.3, §9.1). */
        outcome = ROUTER_SEND_REJECTED;
        snprintf(detail, sizeof detail, "the peer closed the connection without an ack");
    } else if (reason == ROUTER_CLOSE_ERROR) {
        /* A reset (the receiver cut us: deadline, slow consumer, drain
         * timeout, its own trouble) or a broken path: outcome unknown. */
        outcome = ROUTER_SEND_OFFLINE;
        snprintf(detail, sizeof detail, "connection lost: %s", strerror(router_conn_error(conn)));
    } else {
        outcome = ROUTER_SEND_OFFLINE;
        snprintf(detail, sizeof detail, "connection %s", router_close_reason_str(reason));
    }
    while (l->head)
        s_wait_finish(l->head, outcome, detail, NULL);
    s_link_free(l);
}

static void s_on_eof(router_conn_t *conn, void *ud)
{
    s_link_t *l = ud;
    /* The peer closed orderly and will send no more acks: whatever waits
     * was refused. */
    l->peer_closed = true;
    l->ending = true;
    router_conn_close(conn);
}

/* Connected: what was queued goes out now. Sends of kinds that get no ack
 * settle "sent" on the next turn (never inside this callback); until now
 * their timer was the send's timeout, so a connection that never opens
 * reports them offline, not sent. */
static void s_on_open(router_conn_t *conn, void *ud)
{
    (void) conn;
    s_link_t *l = ud;
    router_outbound_t *ob = l->ob;
    l->opened = true;
    router_conn_set_deadline(conn, 0); /* the connect's share of the time is no limit now */
    for (s_wait_t *w = l->head; w; w = w->next) {
        free(w->frame); /* no other address will be dialed */
        w->frame = NULL;
        if (!w->no_ack)
            continue;
        uint64_t t = router_loop_timer_add(ob->loop, 0, s_on_ack_timeout, w);
        if (!t)
            continue; /* no timer slot: its timeout settles it, as sent */
        if (w->timer)
            router_loop_timer_cancel(ob->loop, w->timer);
        w->timer = t;
    }
}

static const router_conn_handlers_t s_handlers = {
    .on_open = s_on_open,
    .on_data = s_on_data,
    .on_eof = s_on_eof,
    .on_close = s_on_close,
};

/* ---------------------------------------------------------------- links */

/* The open link to the peer. A link whose connection is ending (the peer
 * closed it, or we cut it) is not one: its close may take until what it
 * still writes is flushed, and a send queued there would be refused
 * (EPIPE) although the peer may be there to dial again. */
static s_link_t *s_link_find(const router_outbound_t *self, const uint8_t pk[32])
{
    for (s_link_t *l = self->links; l; l = l->next)
        if (l->conn && !l->oneshot && !l->ending && memcmp(l->pk, pk, 32) == 0)
            return l;
    return NULL;
}

static s_link_t *s_link_new(router_outbound_t *self, const uint8_t pk[32])
{
    s_link_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    if (router_framed_init(&l->framed, PROTO_FRAME_MAX, NULL) != 0) {
        free(l);
        return NULL;
    }
    l->ob = self;
    memcpy(l->pk, pk, 32);
    l->next = self->links;
    if (self->links)
        self->links->prev = l;
    self->links = l;
    return l;
}

/* Whether a failed connect would be followed by another: frames are kept
 * for it until then. */
static bool s_link_may_redial(const s_link_t *l)
{
    return !l->opened && l->dialed < l->naddrs;
}

/* Dials the link's next address that a connection can be started to.
 * An attempt with more addresses after it gets an equal share of the time
 * left until `until_ms` (its deadline ends it, to on_close), so every
 * address gets a try before the sends time out; the last gets whatever is
 * left. 0, or -1 with errno when none is left. */
static int s_link_dial(s_link_t *l, uint64_t until_ms)
{
    router_outbound_t *ob = l->ob;
    while (l->dialed < l->naddrs) {
        unsigned left = l->naddrs - l->dialed; /* this one included */
        l->conn = router_loop_connect(ob->loop, &l->addrs[l->dialed++], &s_handlers, l);
        if (!l->conn) {
            l->dial_err = errno; /* e.g. no IPv6 on this host: the next */
            continue;
        }
        if (left > 1) {
            uint64_t now = router_loop_now_ms(ob->loop);
            uint64_t share = until_ms > now ? (until_ms - now) / left : 0;
            router_conn_set_deadline(l->conn, now + (share ? share : 1));
        }
        return 0;
    }
    errno = l->dial_err ? l->dial_err : EHOSTUNREACH;
    return -1;
}

/* After a connect failed: dials the next address and queues there again,
 * in order, every frame still waiting. 0, or -1 when no address is left
 * (the caller then fails the sends). */
static int s_link_redial(s_link_t *l)
{
    uint64_t until = 0;
    for (s_wait_t *w = l->head; w; w = w->next)
        if (w->until_ms > until)
            until = w->until_ms;
    if (s_link_dial(l, until) != 0)
        return -1;
    bool keep = s_link_may_redial(l);
    for (s_wait_t *w = l->head; w; w = w->next) {
        /* Each has its copy (kept while another address was left), and
         * they fit: they did before. A send that fails cuts the new
         * connection, whose on_close then fails the sends. */
        if (!w->frame || router_conn_send(l->conn, w->frame, w->len) != 0)
            break;
        if (!keep) {
            free(w->frame); /* the last address: no other will be dialed */
            w->frame = NULL;
        }
    }
    return 0;
}

/* Queues the frame and the wait on a link that has a connection. */
static int s_link_send(s_link_t *l, const uint8_t *frame, size_t len, const uint8_t id[16],
                       bool no_ack, uint32_t timeout_ms, router_send_fn *cb, void *ud)
{
    router_outbound_t *self = l->ob;
    if (l->waiting >= S_WAITING_MAX) {
        errno = ENOBUFS;
        return -1;
    }
    s_wait_t *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    if (s_link_may_redial(l)) {
        if (!(w->frame = malloc(len))) {
            free(w);
            errno = ENOMEM;
            return -1;
        }
        memcpy(w->frame, frame, len);
        w->len = len;
    }
    /* The timer first: a send that could never time out would leave its
     * caller waiting forever (router_node_send blocks on it). */
    /* A kind that gets no ack settles "sent" on the next turn of the loop
     * (never inside this call), after the write was queued, once the
     * connection is open (s_on_open); until then it waits as long as an
     * acked kind would. */
    w->no_ack = no_ack;
    if (!timeout_ms)
        timeout_ms = self->ack_timeout_ms;
    w->until_ms = router_loop_now_ms(self->loop) + timeout_ms;
    w->timer = router_loop_timer_add(self->loop, no_ack && l->opened ? 0 : timeout_ms,
                                     s_on_ack_timeout, w);
    if (!w->timer) {
        int e = errno;
        ROUTER_LOG(ROUTER_LOG_WARN, "comms", "cannot time an ack (%s): send refused", strerror(e));
        free(w->frame);
        free(w);
        errno = e;
        return -1;
    }
    if (router_conn_send(l->conn, frame, len) != 0) {
        int e = errno;
        router_loop_timer_cancel(self->loop, w->timer);
        free(w->frame);
        free(w); /* the connection is closing; its on_close tells the others */
        errno = e;
        return -1;
    }
    memcpy(w->id, id, 16);
    w->cb = cb;
    w->ud = ud;
    w->link = l;
    w->prev = l->tail;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
    l->waiting++;
    return 0;
}

/* A new link to the peer: dialing m->addr (each of its naddrs in turn,
 * the first send timing out after timeout_ms), or serving m->fd (already
 * connected; taken, also on failure) when addr is NULL. NULL with errno
 * set on failure. */
static s_link_t *s_link_open(router_outbound_t *self, const router_outbound_msg_t *m,
                             uint32_t timeout_ms)
{
    s_link_t *l = s_link_new(self, m->peer_pk);
    if (!l) {
        if (!m->addr)
            close(m->fd);
        return NULL;
    }
    if (m->addr) {
        size_t n = m->naddrs ? m->naddrs : 1;
        l->naddrs = n < ROUTER_OUTBOUND_ADDRS_MAX ? (unsigned) n : ROUTER_OUTBOUND_ADDRS_MAX;
        memcpy(l->addrs, m->addr, l->naddrs * sizeof l->addrs[0]);
        if (s_link_dial(l, router_loop_now_ms(self->loop) + timeout_ms) != 0)
            l->conn = NULL;
    } else {
        l->conn = router_loop_adopt(self->loop, m->fd, &s_handlers, l);
        l->opened = true; /* an adopted socket is connected already */
    }
    if (!l->conn) {
        int e = errno;
        s_link_free(l);
        errno = e;
        return NULL;
    }
    return l;
}

int router_outbound_send_msg(router_outbound_t *self, const router_outbound_msg_t *m)
{
    s_link_t *l = NULL;
    if (m->oneshot && self->oneshots >= S_ONESHOT_MAX) {
        if (!m->addr && m->fd >= 0)
            close(m->fd);
        errno = ENOBUFS;
        return -1;
    }
    if (!m->oneshot && m->addr)
        l = s_link_find(self, m->peer_pk);
    if (!l) {
        if (!(l = s_link_open(self, m, m->timeout_ms ? m->timeout_ms : self->ack_timeout_ms)))
            return -1;
        if (m->oneshot) {
            l->oneshot = true;
            self->oneshots++;
        }
    }
    if (s_link_send(l, m->frame, m->len, m->id, m->no_ack, m->timeout_ms, m->cb, m->ud) != 0) {
        int e = errno;
        if (l->oneshot && l->waiting == 0 && l->conn)
            router_conn_close(l->conn); /* nothing to wait for: its on_close frees it */
        errno = e;
        return -1;
    }
    return 0;
}

int router_outbound_send(router_outbound_t *self, const uint8_t peer_pk[32],
                         const router_addr_t *addr, const uint8_t *frame, size_t len,
                         const uint8_t id[16], router_send_fn *cb, void *ud)
{
    router_outbound_msg_t m = {.peer_pk = peer_pk, .addr = addr, .fd = -1, .frame = frame,
                               .len = len, .id = id, .cb = cb, .ud = ud};
    return router_outbound_send_msg(self, &m);
}

int router_outbound_send_fd(router_outbound_t *self, const uint8_t peer_pk[32], int fd,
                            const uint8_t *frame, size_t len, const uint8_t id[16],
                            router_send_fn *cb, void *ud)
{
    router_outbound_msg_t m = {.peer_pk = peer_pk, .fd = fd, .frame = frame, .len = len,
                               .id = id, .cb = cb, .ud = ud};
    return router_outbound_send_msg(self, &m);
}

int router_outbound_connected(const router_outbound_t *self, const uint8_t peer_pk[32])
{
    return s_link_find(self, peer_pk) != NULL;
}

/* ---------------------------------------------------------------- lifecycle */

router_outbound_t *router_outbound_new(const router_outbound_opts_t *opts)
{
    router_outbound_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = opts->loop;
    self->identity = opts->identity;
    self->ack_timeout_ms = opts->ack_timeout_ms ? opts->ack_timeout_ms : 30000;
    return self;
}

void router_outbound_destroy(router_outbound_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_outbound_t *self = *self_p;
    self->destroying = true;
    while (self->links) {
        s_link_t *l = self->links;
        while (l->head)
            s_wait_finish(l->head, ROUTER_SEND_OFFLINE, "shutting down", NULL);
        if (l->conn)
            router_conn_disown(l->conn);
        s_link_free(l);
    }
    free(self);
    *self_p = NULL;
}

const char *router_send_outcome_str(router_send_outcome_t o)
{
    switch (o) {
    case ROUTER_SEND_ACKED: return "acked";
    case ROUTER_SEND_OFFLINE: return "offline";
    case ROUTER_SEND_REJECTED: return "rejected";
    case ROUTER_SEND_SENT: return "sent";
    }
    return "unknown";
}
