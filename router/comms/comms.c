/* router/comms/comms.c — the inbound envelope pipeline: one small state per
 * connection (frame reader, frames in arrival order while crypto threads
 * decode and verify them, acks owed in admission order, a refusal waiting
 * for those acks), the checks of DESIGN §8 in their order, and the release
 * of acks as the inbox makes admissions durable. The checks that need no
 * loop state (decode, signature, signing the ack) run on the crypto pool
 * (router/comms/crypto_pool.h, WIRE §14.12); the rest run here, in order. */
#include "router/comms/comms.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto/frame.h"
#include "router/clock.h"
#include "router/comms/crypto_order.h"
#include "router/comms/crypto_pool.h"
#include "router/comms/framed.h"
#include "router/comms/guard.h"
#include "router/comms/pairing.h"
#include "router/comms/replay.h"
#include "router/log.h"
#include "router/net/addr.h"

/* Acks owed on one connection before it stops reading (backpressure while
 * the store catches up); reading resumes below half of it. */
#define S_PENDING_PAUSE 4096u
/* While acks are owed, how often they are also released by a timer, in
 * case a durable wake-up could not be posted (the post queue was full). */
#define S_RELEASE_TICK_MS 50u
/* Bound on a graceful drain before remaining connections are aborted
 * (router_comms_opts_t.drain_timeout_ms, for tests, when not 0). */
#define S_DRAIN_TIMEOUT_MS 10000u
/* The bounds on frames in the checks are in comms.h (ROUTER_COMMS_*). */
#define S_CONN_JOBS_MAX ROUTER_COMMS_CONN_JOBS_MAX
#define S_CONN_JOB_BYTES_MAX ROUTER_COMMS_CONN_JOB_BYTES_MAX
#define S_JOBS_MAX ROUTER_COMMS_JOBS_MAX
#define S_JOB_BYTES_MAX ROUTER_COMMS_JOB_BYTES_MAX

typedef struct {
    uint64_t seq;       /* inbox sequence of the admitted envelope */
    bool ack;           /* proto_kind_acked: message, fenced message, request, lifecycle */
    uint8_t frame[PROTO_ACK_FRAME_LEN]; /* the ack, signed on the crypto pool (when ack) */
} s_owed_t;

typedef struct s_cc s_cc_t;

/* One inbound connection. */
struct s_cc {
    router_comms_t *comms;       /* owner */
    router_conn_t *conn;         /* the loop's connection */
    router_framed_t framed;      /* frames out of the byte stream */
    router_guard_conn_t guard;   /* bounds and deadlines (router/comms/guard.h) */
    router_crypto_order_t order; /* frames read, not yet checked, in arrival order */
    s_owed_t *owed;              /* ring of admitted envelopes awaiting durability */
    size_t owed_head, owed_count, owed_cap;
    bool finishing;              /* no more reading (a refusal, or the peer's EOF): close once
                                  * order and owed are empty */
    bool paused;                 /* reading paused for backpressure */
    bool closing;                /* router_conn_close was called */
    bool aborted;                /* router_conn_abort was called: admit nothing more */
    bool waiting;                /* on the comms' list of connections waiting for job room */
    s_cc_t *wprev, *wnext;       /* that list */
    uint8_t sender[32];          /* key of the last trusted, verified sender; zeros until one */
    int transport;               /* S_TCP, S_UDS or S_INPROC, for the per-transport gauge */
    bool sniffed;                /* the first byte was seen (a '{' starts Meerkat pairing) */
    router_pairing_conn_t *pairing; /* a pairing handshake owns the connection (WIRE §23.6) */
    s_cc_t *prev, *next;         /* all connections */
};

/* How a connection reached us: the label of kith_comms_connections_open. */
enum { S_TCP, S_UDS, S_INPROC, S_TRANSPORTS };
static const char *const s_transport_names[S_TRANSPORTS] = {"tcp", "uds", "inproc"};

struct router_comms {
    router_loop_t *loop;
    const router_identity_t *identity;
    const router_trust_t *trust;
    router_inbox_t *inbox;
    router_replay_t *replay;
    router_guard_t *guard;             /* shared with plain events; borrowed or own */
    router_pairing_t *pairing;         /* Meerkat pairing on the comms port; borrowed, or NULL: off */
    bool own_guard;                    /* ...made here (opts.guard was NULL) */
    uint32_t frame_max;
    bool require_peer_auth;
    router_comms_event_fn *on_event;
    void *ud;

    router_crypto_pool_t *crypto;      /* decode, verify, sign acks (inline with 0 threads) */
    size_t jobs, job_bytes;            /* jobs alive (in orders, on the pool, orphans) and their bytes */
    s_cc_t *waiters;                   /* connections paused until jobs drop below the totals */
    s_cc_t *conns;                     /* every open connection */
    router_listener_t *listeners[8];   /* what drain must close */
    size_t nlisteners;
    uint64_t tick_timer;               /* fallback release timer while acks are owed, 0 when none */
    bool draining;
    uint32_t drain_timeout_ms;         /* bound on a drain */
    void (*drain_done)(void *ud);
    void *drain_ud;
    uint64_t drain_timer;

    router_comms_stats_t stats;
    router_metric_t *m_admitted, *m_acked, *m_rejected[PROTO_WIRE_INTERNAL + 1];
    router_metric_t *m_open[S_TRANSPORTS];  /* kith_comms_connections_open{transport} */
    uint64_t open_by[S_TRANSPORTS];         /* what they show */
};

static void s_release(s_cc_t *cc);
static void s_maybe_finish_drain(router_comms_t *self);
static void s_tick_arm(router_comms_t *self);

/* ---------------------------------------------------------------- events */

static void s_emit(router_comms_t *self, s_cc_t *cc, bool admitted, proto_wire_reason_t reason,
                   const char *detail, const proto_envelope_t *env, const router_peer_t *peer,
                   uint64_t seq)
{
    if (admitted) {
        self->stats.admitted++;
        router_metric_inc(self->m_admitted, 1);
    } else {
        self->stats.rejected[reason]++;
        router_metric_inc(self->m_rejected[reason], 1);
    }
    if (!self->on_event)
        return;
    router_comms_event_t ev = {
        .admitted = admitted,
        .reason = reason,
        .detail = detail ? detail : proto_wire_reason_str(reason),
        .id = env ? proto_envelope_id(env) : NULL,
        .from = env ? proto_envelope_from(env) : NULL,
        .peer_name = peer ? peer->name : NULL,
        .kind = env ? proto_kind_str(proto_envelope_kind(env)) : NULL,
        .seq = seq,
        .conn_id = router_conn_id(cc->conn),
        .addr = router_conn_peer(cc->conn),
    };
    self->on_event(&ev, self->ud);
}

/* ---------------------------------------------------------------- jobs */

/* Frees a job comms is done with and takes it off the totals. */
static void s_job_free(router_comms_t *self, router_crypto_job_t *job)
{
    self->jobs--;
    self->job_bytes -= job->len;
    router_crypto_job_free(&job);
}

static void s_job_free_cb(router_crypto_job_t *job, void *ud)
{
    s_job_free(ud, job);
}

/* Drops the frames a connection read and has not admitted (after a
 * refusal, an abort, a close): those done are freed now, those still on a
 * crypto thread are orphaned and freed when they come back (s_on_job_done). */
static void s_discard(s_cc_t *cc)
{
    router_crypto_order_abandon(&cc->order, s_job_free_cb, cc->comms);
}

/* ---------------------------------------------------------------- closing */

static bool s_idle(const s_cc_t *cc)
{
    return cc->owed_count == 0 && router_crypto_order_count(&cc->order) == 0;
}

static void s_close(s_cc_t *cc)
{
    if (cc->closing)
        return;
    cc->closing = true;
    router_conn_close(cc->conn);
}

/* Reads nothing more from cc for now: its frame and idle deadlines stop
 * with it (the peer waits for us, not we for it). */
static void s_stop_reading(s_cc_t *cc)
{
    router_conn_pause_read(cc->conn);
    router_guard_pause(&cc->guard);
}

/* A reset: the sender must read "unknown outcome", never "refused"
 * (WIRE §9.1); nothing it sent after what was admitted is admitted. */
static void s_abort(s_cc_t *cc)
{
    cc->finishing = true;
    cc->aborted = true;
    s_discard(cc);
    router_framed_release(&cc->framed);
    router_conn_abort(cc->conn);
}

/* A refusal: stop reading; the frames read after the refused one are
 * discarded unread (WIRE §7); the connection closes as soon as the acks
 * owed for earlier admissions have been queued, so the sender fails fast
 * but never loses an ack it earned. */
static void s_refuse(s_cc_t *cc, proto_wire_reason_t reason, const char *detail,
                     const proto_envelope_t *env, const router_peer_t *peer)
{
    s_emit(cc->comms, cc, false, reason, detail, env, peer, 0);
    cc->finishing = true;
    s_discard(cc);
    s_stop_reading(cc);
    if (s_idle(cc))
        s_close(cc);
}

/* ---------------------------------------------------------------- backpressure */

static bool s_totals_full(const router_comms_t *self)
{
    return self->jobs >= S_JOBS_MAX || self->job_bytes >= S_JOB_BYTES_MAX;
}

static void s_waiter_remove(s_cc_t *cc)
{
    if (!cc->waiting)
        return;
    if (cc->wprev)
        cc->wprev->wnext = cc->wnext;
    else
        cc->comms->waiters = cc->wnext;
    if (cc->wnext)
        cc->wnext->wprev = cc->wprev;
    cc->wprev = cc->wnext = NULL;
    cc->waiting = false;
}

/* Pauses or resumes reading after what a connection holds changed: acks
 * owed (the store catching up), frames in the checks (the crypto threads
 * catching up), and the jobs of all connections together. */
static void s_flow(s_cc_t *cc)
{
    router_comms_t *self = cc->comms;
    if (cc->finishing || cc->closing || self->draining)
        return; /* reading stopped for good */
    const router_crypto_order_t *o = &cc->order;
    bool full = s_totals_full(self);
    if (!cc->paused) {
        bool own = cc->owed_count >= S_PENDING_PAUSE || o->count >= S_CONN_JOBS_MAX ||
                   o->bytes >= S_CONN_JOB_BYTES_MAX;
        if (!own && !full)
            return;
        cc->paused = true;
        s_stop_reading(cc);
    } else if (cc->owed_count < S_PENDING_PAUSE / 2 && o->count < S_CONN_JOBS_MAX / 2 &&
               o->bytes < S_CONN_JOB_BYTES_MAX / 2 && !full) {
        cc->paused = false;
        s_waiter_remove(cc);
        router_conn_resume_read(cc->conn);
        router_guard_progress(&cc->guard, 0, router_framed_busy(&cc->framed));
        return;
    }
    /* Paused: if the totals are (part of) the reason, be told when they drop. */
    if (full && !cc->waiting) {
        cc->waiting = true;
        cc->wprev = NULL;
        cc->wnext = self->waiters;
        if (self->waiters)
            self->waiters->wprev = cc;
        self->waiters = cc;
    }
}

/* Jobs were freed: connections waiting for room read again. */
static void s_waiters_wake(router_comms_t *self)
{
    while (self->waiters && !s_totals_full(self)) {
        s_cc_t *cc = self->waiters;
        s_waiter_remove(cc);
        s_flow(cc);
    }
}

/* ---------------------------------------------------------------- acks owed */

static int s_owe(s_cc_t *cc, uint64_t seq, const router_crypto_job_t *job, bool ack)
{
    if (cc->owed_count == cc->owed_cap) {
        size_t ncap = cc->owed_cap ? cc->owed_cap * 2 : 16;
        s_owed_t *n = malloc(ncap * sizeof *n);
        if (!n)
            return -1;
        for (size_t i = 0; i < cc->owed_count; i++)
            n[i] = cc->owed[(cc->owed_head + i) % cc->owed_cap];
        free(cc->owed);
        cc->owed = n;
        cc->owed_cap = ncap;
        cc->owed_head = 0;
    }
    s_owed_t *o = &cc->owed[(cc->owed_head + cc->owed_count) % cc->owed_cap];
    o->seq = seq;
    o->ack = ack;
    if (ack)
        memcpy(o->frame, job->ack, sizeof o->frame);
    cc->owed_count++;
    s_tick_arm(cc->comms);
    return 0;
}

/* Sends the acks whose admissions are durable, in order. */
static void s_release(s_cc_t *cc)
{
    router_comms_t *self = cc->comms;
    if (cc->closing || cc->aborted)
        return;
    uint64_t durable = router_inbox_durable_seq(self->inbox);
    while (cc->owed_count > 0) {
        s_owed_t *o = &cc->owed[cc->owed_head];
        if (o->seq > durable)
            break;
        if (o->ack) {
            if (router_conn_send(cc->conn, o->frame, sizeof o->frame) != 0)
                return; /* cut (slow consumer) or closing: on_close follows */
            self->stats.acked++;
            router_metric_inc(self->m_acked, 1);
        }
        cc->owed_head = (cc->owed_head + 1) % cc->owed_cap;
        cc->owed_count--;
    }
    if (s_idle(cc) && (cc->finishing || self->draining)) {
        s_close(cc);
        return;
    }
    if (cc->paused)
        s_flow(cc);
}

static void s_release_all(router_comms_t *self)
{
    for (s_cc_t *cc = self->conns, *next; cc; cc = next) {
        next = cc->next; /* s_release may close, never free, but be safe */
        if (cc->owed_count > 0 || cc->finishing || self->draining)
            s_release(cc);
    }
}

void router_comms_release_acks(router_comms_t *self)
{
    s_release_all(self);
}

static void s_on_tick(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    router_comms_t *self = ud;
    self->tick_timer = 0;
    s_release_all(self);
    for (s_cc_t *cc = self->conns; cc; cc = cc->next)
        if (cc->owed_count > 0) {
            s_tick_arm(self);
            break;
        }
}

/* An idle router has no timer running; one runs only while acks are owed. */
static void s_tick_arm(router_comms_t *self)
{
    if (!self->tick_timer)
        self->tick_timer = router_loop_timer_add(self->loop, S_RELEASE_TICK_MS, s_on_tick, self);
}

/* ---------------------------------------------------------------- the pipeline */

/* The checks after the signature, on the loop, for one frame whose turn
 * has come (every frame before it on the connection went through here). */
static void s_check(s_cc_t *cc, router_crypto_job_t *job)
{
    router_comms_t *self = cc->comms;
    proto_envelope_t *env = job->env;

    /* frame size, found while reading (WIRE §7 check 1) */
    if (job->preset != PROTO_WIRE_OK) {
        s_refuse(cc, job->preset, proto_wire_reason_str(job->preset), NULL, NULL);
        return;
    }
    /* decode, on the crypto pool */
    if (!env) {
        s_refuse(cc, proto_envelope_reason_wire(job->why), proto_envelope_reason_str(job->why),
                 NULL, NULL);
        return;
    }
    /* signature, on the crypto pool */
    const uint8_t *from = proto_envelope_from(env);
    if (!router_crypto_job_verified(job)) {
        s_refuse(cc, proto_envelope_reason_wire(job->why), proto_envelope_reason_str(job->why),
                 env, NULL);
        return;
    }
    const router_peer_t *peer = self->trust ? router_trust_by_pubkey(self->trust, from) : NULL;
    /* addressed to us */
    if (memcmp(proto_envelope_to(env), self->identity->pk, 32) != 0) {
        s_refuse(cc, PROTO_WIRE_MISADDRESSED, NULL, env, peer);
        return;
    }
    /* sender trusted */
    if (!peer && self->require_peer_auth) {
        s_refuse(cc, PROTO_WIRE_UNTRUSTED_SENDER, NULL, env, NULL);
        return;
    }
    router_guard_authenticated(&cc->guard); /* signature (and trust) passed */
    if (peer)
        memcpy(cc->sender, from, 32); /* so a trust reload can close this connection */
    /* not a replay */
    uint64_t now = router_clock_wall_ms();
    const uint8_t *id = proto_envelope_id(env);
    router_replay_verdict_t v =
        router_replay_check_insert(self->replay, from, id, now, peer != NULL);
    if (v != ROUTER_REPLAY_FRESH) {
        /* No room to track another unknown key is a capacity refusal the
         * sender may retry, like a full inbox (WIRE §6.2). */
        proto_wire_reason_t r = v == ROUTER_REPLAY_NOMEM  ? PROTO_WIRE_INTERNAL
                                : v == ROUTER_REPLAY_BUSY ? PROTO_WIRE_INBOX_FULL
                                                          : PROTO_WIRE_REPLAY;
        s_refuse(cc, r, router_replay_verdict_str(v), env, peer);
        return;
    }
    /* admitted to the inbox, the id remembered durably in the same
     * transaction (the ack waits for both) */
    router_inbox_seen_t seen;
    router_replay_durable_info(self->replay, from, id, now, &seen.v7_ms, &seen.expires_ms,
                               &seen.floor_ms);
    proto_kind_t kind = proto_envelope_kind(env);
    uint64_t seq = 0;
    router_inbox_outcome_t out = router_inbox_admit(self->inbox, id, from, proto_kind_str(kind),
                                                    job->payload, job->len, now, &seen, &seq);
    if (out != ROUTER_INBOX_ADMITTED) {
        /* Not admitted, so not remembered: the sender may retry it later. */
        router_replay_forget(self->replay, from, id);
        s_refuse(cc, out == ROUTER_INBOX_NOMEM ? PROTO_WIRE_INTERNAL : PROTO_WIRE_INBOX_FULL,
                 router_inbox_outcome_str(out), env, peer);
        return;
    }
    /* message, incarnation_fenced_message, request and lifecycle, as
     * Meerkat acks them (WIRE §8.2, §23.2); the pool signed the ack. */
    bool wants_ack = proto_kind_acked(kind);
    if (s_owe(cc, seq, job, wants_ack) != 0) {
        /* Admitted but we cannot track its ack: it stays in the inbox, and
         * the sender must not read "refused" into what follows, so the
         * connection is reset (unknown outcome), never closed orderly. */
        s_emit(self, cc, true, PROTO_WIRE_OK, "admitted", env, peer, seq);
        ROUTER_LOG(ROUTER_LOG_WARN, "comms",
                   "connection %llu reset: no memory to track the ack of an admitted envelope",
                   (unsigned long long) router_conn_id(cc->conn));
        s_abort(cc);
        return;
    }
    s_emit(self, cc, true, PROTO_WIRE_OK, "admitted", env, peer, seq);
}

/* Runs the loop's checks on the connection's frames that are done, from
 * the front, stopping at the first one still on a crypto thread: so
 * envelopes are admitted, and acked, in the order they arrived. */
static void s_advance(s_cc_t *cc)
{
    router_comms_t *self = cc->comms;
    router_crypto_job_t *job;
    while (!cc->aborted && (job = router_crypto_order_pop(&cc->order)) != NULL) {
        s_check(cc, job);
        s_job_free(self, job);
    }
}

/* A job came back from a crypto thread (loop thread). */
static void s_on_job_done(router_crypto_job_t *job, void *ud)
{
    router_comms_t *self = ud;
    s_cc_t *cc = job->owner;
    if (!cc) {
        s_job_free(self, job); /* its connection is gone or refused: discarded */
    } else {
        s_advance(cc);
        s_release(cc); /* acks at once when admission is already durable; closes a
                        * finishing connection once nothing is left */
    }
    s_waiters_wake(self);
}

/* A frame read: into the connection's order, then to the crypto pool (or
 * through it at once, with no crypto threads). Returns -1 when out of
 * memory (the caller resets the connection). */
static int s_on_frame(s_cc_t *cc, router_crypto_job_t *job)
{
    router_comms_t *self = cc->comms;
    if (!job)
        return -1;
    if (router_crypto_order_push(&cc->order, job, cc) != 0) {
        router_crypto_job_free(&job);
        return -1;
    }
    self->jobs++;
    self->job_bytes += job->len;
    if (job->preset != PROTO_WIRE_OK)
        job->done = true; /* a refusal already: nothing to run */
    else if (!router_crypto_pool_submit(self->crypto, job))
        return 0; /* comes back through s_on_job_done */
    s_advance(cc);
    return 0;
}

static void s_on_data_frames(router_conn_t *conn, uint8_t *data, size_t len, s_cc_t *cc)
{
    unsigned frames = 0;
    /* A frame starts with its length; no envelope under 1 MiB starts with
     * '{' (0x7b), so a first '{' is Meerkat's JSON pairing (WIRE §23.6). */
    if (!cc->sniffed && len > 0) {
        cc->sniffed = true;
        if (data[0] == '{' && cc->comms->pairing) {
            cc->pairing = router_pairing_conn_new(cc->comms->pairing, conn);
            if (!cc->pairing) {
                cc->finishing = true;
                router_conn_abort(conn); /* too many at once: "try later" */
                return;
            }
            /* Begun, for the guard: a newcomer from this address cuts a
             * silent connection before a handshake under way. The first
             * frame's deadline still bounds the handshake (WIRE §23.6). */
            router_guard_progress(&cc->guard, 0, true);
        }
    }
    if (cc->pairing) {
        router_pairing_conn_data(cc->pairing, data, len);
        return;
    }
    while (len > 0 && !cc->finishing) {
        proto_frame_t f;
        ssize_t n = router_framed_read(&cc->framed, data, len, &f);
        if (n == -2)
            break;
        if (n < 0) {
            router_framed_error_t e = router_framed_error(&cc->framed);
            if (e == ROUTER_FRAMED_OVERSIZE) {
                /* refused in its turn, after the frames read before it */
                if (s_on_frame(cc, router_crypto_job_new_refusal(PROTO_WIRE_OVERSIZE)) != 0)
                    goto nomem;
                cc->finishing = true; /* nothing after it is read */
                s_stop_reading(cc);
                break;
            }
            /* Not the sender's fault (no memory), or the partial budget cut
             * this one (counted by the guard): reset, so the sender reads
             * "unknown", not "refused". */
            ROUTER_LOG(ROUTER_LOG_WARN, "comms", "connection %llu cut: reason=%s",
                       (unsigned long long) router_conn_id(conn), router_framed_error_str(e));
            s_abort(cc);
            return;
        }
        data += n;
        len -= (size_t) n;
        frames++;
        if (s_on_frame(cc, router_crypto_job_new(f.payload, f.len)) != 0)
            goto nomem;
    }
    if (cc->aborted)
        return;
    if (!router_framed_busy(&cc->framed))
        router_framed_release(&cc->framed); /* an idle connection holds nothing */
    if (!cc->finishing && !cc->paused && !cc->comms->draining)
        router_guard_progress(&cc->guard, frames, router_framed_busy(&cc->framed));
    /* Acks for whatever this read admitted (at once with a memory inbox). */
    s_release(cc);
    s_flow(cc);
    return;
nomem:
    ROUTER_LOG(ROUTER_LOG_WARN, "comms", "connection %llu cut: no memory for a frame",
               (unsigned long long) router_conn_id(conn));
    s_abort(cc);
}

static void s_on_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    s_cc_t *cc = ud;
    router_comms_t *self = cc->comms;
    s_on_data_frames(conn, data, len, cc);
    /* The frames of this read go to the crypto threads together (cc may
     * be aborted by now; its jobs are orphans and come back all the same). */
    router_crypto_pool_flush(self->crypto);
}

static void s_on_eof(router_conn_t *conn, void *ud)
{
    (void) conn;
    s_cc_t *cc = ud;
    if (cc->pairing) {
        /* Nothing more will come, but the client may still read: an answer
         * whose file write is in flight must reach it (the pairing then
         * closes); one still awaiting a line is refused there. */
        router_pairing_conn_data(cc->pairing, NULL, 0);
        return;
    }
    /* The sender is done sending; it may still want its acks. */
    cc->finishing = true;
    router_guard_pause(&cc->guard);
    s_release(cc);
}

static void s_on_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    (void) conn;
    s_cc_t *cc = ud;
    router_comms_t *self = cc->comms;
    if (reason == ROUTER_CLOSE_SLOW_CONSUMER || reason == ROUTER_CLOSE_TIMEOUT ||
        reason == ROUTER_CLOSE_DEADLINE)
        ROUTER_LOG(ROUTER_LOG_WARN, "comms", "connection %llu cut: reason=%s (%zu acks unsent)",
                   (unsigned long long) router_conn_id(conn), router_close_reason_str(reason),
                   cc->owed_count);
    if (reason == ROUTER_CLOSE_DEADLINE)
        router_guard_count_cut(&cc->guard, ROUTER_GUARD_CUT_DEADLINE);
    else if (reason == ROUTER_CLOSE_SLOW_CONSUMER)
        router_guard_count_cut(&cc->guard, ROUTER_GUARD_CUT_SLOW_CONSUMER);
    router_guard_leave(&cc->guard);
    router_framed_release(&cc->framed);
    router_pairing_conn_free(&cc->pairing);
    s_discard(cc); /* frames still on a crypto thread are orphaned, freed when back */
    s_waiter_remove(cc);
    if (cc->prev)
        cc->prev->next = cc->next;
    else
        self->conns = cc->next;
    if (cc->next)
        cc->next->prev = cc->prev;
    self->stats.open--;
    router_metric_set(self->m_open[cc->transport], --self->open_by[cc->transport]);
    free(cc->owed);
    free(cc);
    s_waiters_wake(self);
    s_maybe_finish_drain(self);
}

static const router_conn_handlers_t s_handlers = {
    .on_data = s_on_data,
    .on_eof = s_on_eof,
    .on_close = s_on_close,
};

/* The guard cut this connection to make room for another. */
static void s_on_cut(router_guard_conn_t *gc, router_guard_cut_t why, void *ud)
{
    (void) gc;
    (void) why;
    s_abort(ud);
}

static s_cc_t *s_cc_new(router_comms_t *self)
{
    s_cc_t *cc = calloc(1, sizeof *cc);
    if (!cc || self->draining ||
        router_framed_init(&cc->framed, self->frame_max, &cc->guard) != 0) {
        free(cc);
        return NULL;
    }
    cc->comms = self;
    return cc;
}

static void s_cc_attach(router_comms_t *self, s_cc_t *cc, router_conn_t *conn, int transport)
{
    cc->conn = conn;
    cc->transport = transport;
    router_metric_set(self->m_open[transport], ++self->open_by[transport]);
    cc->next = self->conns;
    if (self->conns)
        self->conns->prev = cc;
    self->conns = cc;
    self->stats.open++;
}

static void s_on_accept(router_listener_t *listener, router_conn_t *conn, void *ud)
{
    router_comms_t *self = ud;
    s_cc_t *cc = s_cc_new(self);
    if (!cc || router_guard_join(self->guard, &cc->guard, ROUTER_GUARD_COMMS, conn, listener,
                                 s_on_cut, cc) != 0) {
        free(cc);
        router_conn_abort(conn); /* reset: "try later", never "refused" */
        return;
    }
    router_conn_set_handlers(conn, &s_handlers, cc);
    s_cc_attach(self, cc, conn,
                router_addr_family(router_listener_addr(listener)) == AF_UNIX ? S_UDS : S_TCP);
}

int router_comms_serve_fd(router_comms_t *self, int fd)
{
    s_cc_t *cc = s_cc_new(self);
    router_conn_t *conn = cc ? router_loop_adopt(self->loop, fd, &s_handlers, cc) : NULL;
    if (!conn) {
        if (!cc)
            close(fd);
        free(cc);
        return -1;
    }
    /* In-process: no source address, exempt from the unauthenticated
     * bounds (it comes from code in this process); deadlines still hold. */
    if (router_guard_join(self->guard, &cc->guard, ROUTER_GUARD_COMMS, conn, NULL, s_on_cut, cc) !=
        0) {
        router_conn_disown(conn);
        free(cc);
        return -1;
    }
    s_cc_attach(self, cc, conn, S_INPROC);
    return 0;
}

/* ---------------------------------------------------------------- lifecycle */

router_comms_t *router_comms_new(const router_comms_opts_t *opts)
{
    router_comms_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = opts->loop;
    self->identity = opts->identity;
    self->trust = opts->trust;
    self->inbox = opts->inbox;
    self->frame_max = opts->frame_max ? opts->frame_max : PROTO_FRAME_MAX;
    self->require_peer_auth = opts->require_peer_auth;
    self->on_event = opts->on_event;
    self->ud = opts->ud;
    self->drain_timeout_ms = opts->drain_timeout_ms ? opts->drain_timeout_ms : S_DRAIN_TIMEOUT_MS;
    self->replay = router_replay_new(opts->replay_window_s ? opts->replay_window_s : 300,
                                     opts->replay_horizon_s);
    self->guard = opts->guard;
    if (!self->guard) {
        router_guard_opts_t go = {.loop = opts->loop, .metrics = opts->metrics};
        self->guard = router_guard_new(&go);
        self->own_guard = true;
    }
    router_crypto_pool_opts_t cpo = {
        .loop = opts->loop,
        .threads = opts->crypto_threads,
        .sk = opts->identity->sk,
        .pk = opts->identity->pk,
        .on_done = s_on_job_done,
        .ud = self,
    };
    int err = ENOMEM;
    if (self->replay && self->guard && !(self->crypto = router_crypto_pool_new(&cpo))) {
        err = errno ? errno : ENOMEM;
        if (err == ENOMEM)
            ROUTER_LOG(ROUTER_LOG_ERROR, "comms", "cannot set up envelope checks: out of memory");
        else
            ROUTER_LOG(ROUTER_LOG_ERROR, "comms", "cannot start %u crypto threads: %s",
                       opts->crypto_threads, strerror(err));
    }
    if (!self->replay || !self->guard || !self->crypto) {
        router_replay_destroy(&self->replay);
        if (self->own_guard)
            router_guard_destroy(&self->guard);
        free(self);
        errno = err;
        return NULL;
    }
    if (opts->metrics) {
        self->m_admitted = router_metrics_add(opts->metrics, "kith_comms_admitted_total", NULL,
                                              ROUTER_METRIC_COUNTER,
                                              "Signed envelopes admitted to the inbox.");
        self->m_acked = router_metrics_add(opts->metrics, "kith_comms_acked_total", NULL,
                                           ROUTER_METRIC_COUNTER, "Signed acks sent.");
        for (int r = PROTO_WIRE_OVERSIZE; r <= PROTO_WIRE_INTERNAL; r++) {
            char labels[64];
            snprintf(labels, sizeof labels, "reason=\"%s\"",
                     proto_wire_reason_str((proto_wire_reason_t) r));
            self->m_rejected[r] = router_metrics_add(opts->metrics, "kith_comms_rejected_total",
                                                     labels, ROUTER_METRIC_COUNTER,
                                                     "Envelopes refused, by typed reason.");
        }
        for (int t = 0; t < S_TRANSPORTS; t++) {
            char labels[32];
            snprintf(labels, sizeof labels, "transport=\"%s\"", s_transport_names[t]);
            self->m_open[t] = router_metrics_add(opts->metrics, "kith_comms_connections_open",
                                                 labels, ROUTER_METRIC_GAUGE,
                                                 "Signed-envelope connections open, by transport.");
        }
    }
    return self;
}

void router_comms_destroy(router_comms_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_comms_t *self = *self_p;
    for (size_t i = 0; i < self->nlisteners; i++)
        router_listener_close(&self->listeners[i]);
    if (self->tick_timer)
        router_loop_timer_cancel(self->loop, self->tick_timer);
    if (self->drain_timer)
        router_loop_timer_cancel(self->loop, self->drain_timer);
    /* Connections still open belong to the loop: let them go. */
    for (s_cc_t *cc = self->conns, *next; cc; cc = next) {
        next = cc->next;
        router_conn_disown(cc->conn);
        router_guard_leave(&cc->guard);
        router_framed_release(&cc->framed);
        router_pairing_conn_free(&cc->pairing);
        s_discard(cc);
        free(cc->owed);
        free(cc);
    }
    /* Every job left is an orphan now: the pool frees them. */
    router_crypto_pool_destroy(&self->crypto);
    router_replay_destroy(&self->replay);
    if (self->own_guard)
        router_guard_destroy(&self->guard);
    free(self);
    *self_p = NULL;
}

router_listener_t *router_comms_listen(router_comms_t *self, const router_addr_t *addr)
{
    if (self->nlisteners == sizeof self->listeners / sizeof self->listeners[0]) {
        errno = ENOSPC;
        return NULL;
    }
    router_listener_t *l = router_loop_listen(self->loop, addr, s_on_accept, self);
    if (l)
        self->listeners[self->nlisteners++] = l;
    return l;
}

static void s_maybe_finish_drain(router_comms_t *self)
{
    if (!self->draining || self->conns || !self->drain_done)
        return;
    void (*done)(void *) = self->drain_done;
    self->drain_done = NULL;
    if (self->drain_timer) {
        router_loop_timer_cancel(self->loop, self->drain_timer);
        self->drain_timer = 0;
    }
    done(self->drain_ud);
}

/* Resets the connections a drain is still waiting for, so it ends. */
static void s_drain_cut(router_comms_t *self, const char *why)
{
    ROUTER_LOG(ROUTER_LOG_WARN, "comms", "%s; aborting %u connections", why, self->stats.open);
    for (s_cc_t *cc = self->conns, *next; cc; cc = next) {
        next = cc->next;
        router_conn_abort(cc->conn);
    }
}

static void s_on_drain_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    router_comms_t *self = ud;
    self->drain_timer = 0;
    s_drain_cut(self, "drain timed out");
}

void router_comms_drain(router_comms_t *self, void (*done)(void *ud), void *ud)
{
    self->draining = true;
    self->drain_done = done;
    self->drain_ud = ud;
    for (size_t i = 0; i < self->nlisteners; i++)
        router_listener_close(&self->listeners[i]);
    self->nlisteners = 0;
    for (s_cc_t *cc = self->conns; cc; cc = cc->next) {
        s_stop_reading(cc);
        cc->paused = true;
    }
    /* Acks owed go out as their admissions become durable; then each
     * connection closes. */
    s_release_all(self);
    /* A second drain restarts the bound: the first's timer must not be
     * left to fire on comms freed after the drain ended. */
    if (self->drain_timer) {
        (void) router_loop_timer_cancel(self->loop, self->drain_timer);
        self->drain_timer = 0;
    }
    if (self->conns) {
        self->drain_timer = router_loop_timer_add(self->loop, self->drain_timeout_ms,
                                                  s_on_drain_timeout, self);
        /* No timer slot: nothing would bound the wait, and a shutdown must
         * end, so what the bound would do is done now. */
        if (!self->drain_timer)
            s_drain_cut(self, "no timer for the drain's bound");
    }
    s_maybe_finish_drain(self);
}

void router_comms_set_pairing(router_comms_t *self, router_pairing_t *pairing)
{
    self->pairing = pairing;
}

router_replay_t *router_comms_replay(router_comms_t *self)
{
    return self->replay;
}

/* ---------------------------------------------------------------- trust changes */

/* A reloaded trust store: frames read from now on are checked against it,
 * and a connection whose sender it no longer trusts finishes as after a
 * refusal (no more reading; the acks it earned go out; then an orderly
 * close), so a removed peer keeps nothing open. WIRE §7.1. */
void router_comms_set_trust(router_comms_t *self, const router_trust_t *trust)
{
    static const uint8_t none[32];
    self->trust = trust;
    if (!self->require_peer_auth)
        return; /* untrusted senders are admitted anyway */
    for (s_cc_t *cc = self->conns, *next; cc; cc = next) {
        next = cc->next;
        if (cc->closing || cc->finishing || memcmp(cc->sender, none, 32) == 0 ||
            (trust && router_trust_by_pubkey(trust, cc->sender)))
            continue;
        ROUTER_LOG(ROUTER_LOG_INFO, "comms",
                   "closing connection %llu: its sender is no longer trusted (%zu acks owed go "
                   "out first)",
                   (unsigned long long) router_conn_id(cc->conn), cc->owed_count);
        cc->finishing = true;
        s_stop_reading(cc); /* no idle deadline while its acks wait for the store */
        if (s_idle(cc))
            s_close(cc);
    }
}

void router_comms_stats(const router_comms_t *self, router_comms_stats_t *out)
{
    *out = self->stats;
    out->jobs = self->jobs;
    out->job_bytes = self->job_bytes;
    out->paused = out->waiting = 0;
    for (const s_cc_t *cc = self->conns; cc; cc = cc->next) {
        out->paused += cc->paused;
        out->waiting += cc->waiting;
    }
}

void router_comms_test_hold_crypto(router_comms_t *self, bool hold)
{
    router_crypto_pool_test_hold(self->crypto, hold);
}
