/* router/workers/mdp_worker.c — an MDP 0.2 worker whose socket lives on a
 * CZMQ actor thread (heartbeats, liveness, reconnect), with bodies handed to
 * and from the caller's thread over the actor's pipe; or, with same_thread,
 * on the caller's thread itself, the same state machine run from recv. */
#include "router/workers/mdp_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <czmq.h>

#include "router/clock.h"
#include "router/log.h"

#define MOD "mdp_worker"

/* Pipe markers, actor → caller: a REQUEST that starts a turn, or one about
 * the turn held. Caller → actor: a PARTIAL or the FINAL. */
#define PIPE_TURN "T"
#define PIPE_MORE "C"
#define PIPE_PARTIAL "P"
#define PIPE_FINAL "F"

/* Longest name CZMQ gives a certificate's secret file: zcert_save and
 * zcert_load (4.2) build "<path>_secret" in a char[256], cut silently. */
#define CZMQ_SECRET_NAME_MAX 255

/* How long the DISCONNECT sent at destroy may take to leave. */
#define DISCONNECT_LINGER_MS 500

struct router_mdp_worker {
    /* set by new, read-only afterwards (the actor reads them too) */
    char *endpoint;
    char *service;
    int heartbeat_ms;
    int liveness;
    bool curve;
    char server_key[41];
    zcert_t *cert;         /* this worker's certificate when curve */
    zsock_t *first;        /* the socket new() connected; the actor takes it */

    zactor_t *actor;       /* owns the DEALER; the caller's thread owns this end */
    struct s_actor *own;   /* same_thread: the socket's state, run by recv instead */
    int stop_fd;           /* eventfd written by interrupt */
    atomic_bool stopped;
    bool holding;          /* the caller's view: a turn is held */
    atomic_uint_fast64_t reconnects;
};

/* ------------------------------------------------------------ the socket */

/* A new DEALER connected to the endpoint, CURVE applied when asked. */
static zsock_t *s_dealer_new(router_mdp_worker_t *w, char *err, size_t errcap)
{
    zsock_t *s = zsock_new(ZMQ_DEALER);
    if (!s) {
        snprintf(err, errcap, "cannot make a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    zsock_set_linger(s, 0);
    zsock_set_maxmsgsize(s, (int) ROUTER_MDP_BODY_MAX + 4096);
    zsock_set_ipv6(s, router_mdp_endpoint_ipv6(w->endpoint));
    if (w->curve) {
        zcert_apply(w->cert, s);
        zsock_set_curve_serverkey(s, w->server_key);
    }
    if (zsock_connect(s, "%s", w->endpoint) != 0) {
        snprintf(err, errcap, "cannot connect to %s: %s", w->endpoint,
                 zmq_strerror(zmq_errno()));
        zsock_destroy(&s);
        return NULL;
    }
    return s;
}

/* Sends [""]["MDPW02"][cmd] then, when given, [arg] (service or address),
 * and [""][body] for replies. A message that cannot be queued (broker
 * unreachable, queue full) is dropped at once, -1, or with wait_ms after
 * waiting that long for room: a reply must not be dropped for a broker
 * that only fell behind (the heartbeat logic notices a dead one). */
static int s_send(zsock_t *s, uint8_t cmd, const void *arg, size_t arglen, bool has_body,
                  const void *body, size_t bodylen, int wait_ms)
{
    void *h = zsock_resolve(s);
    bool more_after_cmd = arg != NULL;
    if (zmq_send(h, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        uint64_t until = router_clock_mono_ms() + (uint64_t) (wait_ms > 0 ? wait_ms : 0);
        for (;;) {
            if (zmq_errno() != EAGAIN && zmq_errno() != EINTR)
                return -1;
            uint64_t now = router_clock_mono_ms();
            if (now >= until)
                return -1;
            zmq_pollitem_t it = {h, 0, ZMQ_POLLOUT, 0};
            (void) zmq_poll(&it, 1, (long) (until - now));
            if (zmq_send(h, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) == 0)
                break;
        }
    }
    /* The first part is queued: the rest of the message is guaranteed. */
    zmq_send(h, ROUTER_MDP_WORKER_PROTO, strlen(ROUTER_MDP_WORKER_PROTO), ZMQ_SNDMORE);
    zmq_send(h, &cmd, 1, more_after_cmd ? ZMQ_SNDMORE : 0);
    if (!arg)
        return 0;
    zmq_send(h, arg, arglen, has_body ? ZMQ_SNDMORE : 0);
    if (!has_body)
        return 0;
    zmq_send(h, "", 0, ZMQ_SNDMORE);
    zmq_send(h, body, bodylen, 0);
    return 0;
}

/* ------------------------------------------------------------ the actor */

typedef struct s_actor {
    router_mdp_worker_t *w;
    zsock_t *pipe;     /* to the caller; NULL with same_thread */
    zframe_t *handed;  /* same_thread: a body for recv to return */
    const char *handed_what; /* PIPE_TURN or PIPE_MORE */
    zsock_t *dealer;
    bool ready_sent;   /* READY went out on this connection */
    bool holding;      /* a turn is held */
    bool stale;        /* the broker was declared dead while holding */
    bool given_up;     /* same_thread: a request about the turn held could not be kept */
    zframe_t *addr;    /* client address of the turn held */
    zframe_t *done;    /* client address of the turn last finished */
    uint64_t heard_at; /* last message from the broker (mono ms) */
    uint64_t beat_at;  /* next heartbeat due (mono ms) */
} actor_t;

static void s_reply_out(actor_t *a, bool final, const uint8_t *body, size_t len);

/* A REQUEST body goes to the caller: over the pipe, or (same_thread) kept
 * for recv, which returns after each message it reads. A turn that cannot
 * be kept (no memory) is answered at once with an empty FINAL, which the
 * router ends as malformed: the broker then has the worker back, where
 * silence would have held it until the router's own timeout and after. */
static void s_hand(actor_t *a, const char *what, zframe_t *body)
{
    if (a->pipe) {
        zsock_send(a->pipe, "sf", what, body);
        return;
    }
    zframe_destroy(&a->handed);
    a->handed = zframe_dup(body);
    a->handed_what = what;
    if (!a->handed && !strcmp(what, PIPE_TURN))
        s_reply_out(a, true, (const uint8_t *) "", 0);
    else if (!a->handed)
        a->given_up = true; /* recv ends the turn, as s_give does */
}

static void s_ready(actor_t *a)
{
    s_send(a->dealer, ROUTER_MDP_READY, a->w->service, strlen(a->w->service), false, NULL, 0, 0);
    a->ready_sent = true;
}

/* A fresh socket (a new identity) and READY on it. */
static void s_connect(actor_t *a)
{
    char err[256];
    a->dealer = s_dealer_new(a->w, err, sizeof err);
    if (!a->dealer) {
        /* The endpoint connected once, so this is a resource shortage:
         * try again at the next heartbeat. */
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s", err);
        return;
    }
    s_ready(a);
    ROUTER_LOG(ROUTER_LOG_INFO, MOD, "%s: reconnected to %s", a->w->service, a->w->endpoint);
}

/* The broker went silent or said DISCONNECT: the socket goes. A fresh one
 * connects at once after silence (which took heartbeat × liveness to
 * notice), at the next heartbeat after a DISCONNECT (`at_once` false): a
 * broker that refuses every READY (1 024 workers, 16 services) answers it
 * with DISCONNECT at once, and reconnecting at once made the two spin,
 * a connection and a READY per round trip, for as long as the refusal
 * lasted. Unless the caller still holds a turn: then only after its FINAL,
 * since READY must wait for it and a connection that says nothing is cut
 * by the broker (WIRE §19.2). */
static void s_reconnect(actor_t *a, bool at_once)
{
    zsock_destroy(&a->dealer);
    a->ready_sent = false;
    atomic_fetch_add(&a->w->reconnects, 1);
    if (a->holding) {
        a->stale = true;
        ROUTER_LOG(ROUTER_LOG_INFO, MOD,
                   "%s: broker gone; reconnecting once the turn held is over", a->w->service);
        return;
    }
    if (at_once)
        s_connect(a);
    else /* s_tick connects a worker without a socket when the beat is due */
        a->beat_at = router_clock_mono_ms() + (uint64_t) a->w->heartbeat_ms;
}

/* One message from the broker, if one waits: false when none did. */
static bool s_on_broker(actor_t *a)
{
    zmsg_t *m = zmsg_recv_nowait(a->dealer);
    if (!m)
        return false;
    a->heard_at = router_clock_mono_ms();
    zframe_t *empty = zmsg_pop(m);
    zframe_t *proto = zmsg_pop(m);
    zframe_t *cmd = zmsg_pop(m);
    if (!empty || zframe_size(empty) != 0 || !proto || !zframe_streq(proto, ROUTER_MDP_WORKER_PROTO)
        || !cmd || zframe_size(cmd) != 1) {
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s: malformed message from the broker, ignored",
                   a->w->service);
        goto done;
    }
    switch (zframe_data(cmd)[0]) {
    case ROUTER_MDP_HEARTBEAT:
        break;
    case ROUTER_MDP_DISCONNECT:
        s_reconnect(a, false);
        break;
    case ROUTER_MDP_REQUEST: {
        zframe_t *addr = zmsg_pop(m);
        zframe_t *sep = zmsg_pop(m);
        zframe_t *body = zmsg_pop(m);
        if (!addr || !sep || zframe_size(sep) != 0 || !body || zmsg_size(m) != 0) {
            ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s: malformed REQUEST, ignored", a->w->service);
        } else if (a->holding) {
            s_hand(a, PIPE_MORE, body);
        } else if (a->done && zframe_eq(addr, a->done)) {
            /* about a turn already finished (a steer racing its FINAL) */
        } else {
            a->holding = true;
            a->stale = false;
            zframe_destroy(&a->addr);
            a->addr = zframe_dup(addr);
            s_hand(a, PIPE_TURN, body);
        }
        zframe_destroy(&addr);
        zframe_destroy(&sep);
        zframe_destroy(&body);
        break;
    }
    default:
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s: unexpected command 0x%02x from the broker",
                   a->w->service, zframe_data(cmd)[0]);
        break;
    }
done:
    zframe_destroy(&empty);
    zframe_destroy(&proto);
    zframe_destroy(&cmd);
    zmsg_destroy(&m);
    return true;
}

/* The caller's PARTIAL or FINAL goes to the broker, unless the turn went
 * stale (the broker was declared dead meanwhile: it failed the turn). One
 * that finds the socket's queue full waits for room, up to the span after
 * which a silent broker is declared dead (heartbeat × liveness), and then
 * the broker is declared dead: before, it was dropped at once, a PARTIAL's
 * text missing from the reply without a word, and a FINAL's loss left the
 * broker holding the request for ever from a worker it then never handed
 * anything again (it heartbeats). The wait holds this thread (the caller's,
 * with same_thread): that is the back-pressure of a broker behind. */
static void s_reply_out(actor_t *a, bool final, const uint8_t *body, size_t len)
{
    long long span = (long long) a->w->heartbeat_ms * a->w->liveness;
    int patience = span > INT_MAX ? INT_MAX : (int) span;
    if (a->holding && !a->stale && a->dealer && a->ready_sent &&
        s_send(a->dealer, final ? ROUTER_MDP_FINAL : ROUTER_MDP_PARTIAL, zframe_data(a->addr),
               zframe_size(a->addr), true, body, len, patience) != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s: the broker took no reply for %d ms: declared dead",
                   a->w->service, patience);
        s_reconnect(a, true); /* holding: the turn goes stale, READY after its FINAL */
        a->heard_at = router_clock_mono_ms();
    }
    if (final && a->holding) {
        a->holding = false;
        zframe_destroy(&a->done);
        a->done = a->addr;
        a->addr = NULL;
        if (a->stale) {
            a->stale = false;
            s_connect(a);
        }
    }
}

/* One message from the caller: a reply, or $TERM. Returns -1 on $TERM. */
static int s_on_pipe(actor_t *a)
{
    zmsg_t *m = zmsg_recv(a->pipe);
    if (!m)
        return -1;
    char *what = zmsg_popstr(m);
    int rc = 0;
    if (!what || streq(what, "$TERM")) {
        rc = -1;
    } else {
        zframe_t *body = zmsg_pop(m);
        if (body)
            s_reply_out(a, streq(what, PIPE_FINAL), zframe_data(body), zframe_size(body));
        zframe_destroy(&body);
    }
    zstr_free(&what);
    zmsg_destroy(&m);
    return rc;
}

/* Heartbeat due: one to the broker, or, after heartbeat × liveness of
 * silence, a fresh connection. */
static void s_tick(actor_t *a)
{
    router_mdp_worker_t *w = a->w;
    uint64_t now = router_clock_mono_ms();
    if (now < a->beat_at)
        return;
    if (!a->dealer) {
        if (!a->holding) /* a connect that failed: again */
            s_connect(a);
        a->heard_at = now;
    } else if (now - a->heard_at > (uint64_t) w->heartbeat_ms * (uint64_t) w->liveness) {
        s_reconnect(a, true);
        a->heard_at = now;
    } else if (a->ready_sent) {
        s_send(a->dealer, ROUTER_MDP_HEARTBEAT, NULL, 0, false, NULL, 0, 0);
    }
    a->beat_at = now + (uint64_t) w->heartbeat_ms;
}

/* The socket's state at start (the connection made by new), READY sent. */
static void s_actor_init(actor_t *a, router_mdp_worker_t *w, zsock_t *pipe)
{
    *a = (actor_t){.w = w, .pipe = pipe, .dealer = w->first};
    w->first = NULL;
    uint64_t now = router_clock_mono_ms();
    a->heard_at = now;
    a->beat_at = now + (uint64_t) w->heartbeat_ms;
    s_ready(a);
}

/* DISCONNECT (given a moment to leave), then the socket's state goes. */
static void s_actor_fini(actor_t *a)
{
    if (a->dealer && a->ready_sent) {
        s_send(a->dealer, ROUTER_MDP_DISCONNECT, NULL, 0, false, NULL, 0, 0);
        zsock_set_linger(a->dealer, DISCONNECT_LINGER_MS);
    }
    zsock_destroy(&a->dealer);
    zframe_destroy(&a->addr);
    zframe_destroy(&a->done);
    zframe_destroy(&a->handed);
}

static void s_actor(zsock_t *pipe, void *args)
{
    router_mdp_worker_t *w = args;
    actor_t a;
    s_actor_init(&a, w, pipe);
    zsock_signal(pipe, 0);

    for (;;) {
        uint64_t now = router_clock_mono_ms();
        long timeout = a.beat_at > now ? (long) (a.beat_at - now) : 0;
        zmq_pollitem_t items[2] = {
            {zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
            {a.dealer ? zsock_resolve(a.dealer) : NULL, 0, ZMQ_POLLIN, 0},
        };
        int n = zmq_poll(items, a.dealer ? 2 : 1, timeout);
        if (n < 0 && zmq_errno() != EINTR)
            break;
        if (n > 0 && (items[0].revents & ZMQ_POLLIN) && s_on_pipe(&a) < 0)
            break;
        if (n > 0 && a.dealer && (items[1].revents & ZMQ_POLLIN))
            (void) s_on_broker(&a);
        s_tick(&a);
    }
    s_actor_fini(&a);
}

/* ------------------------------------------------------------ the API */

/* Workers of one process (kith agent --threads N --cert FILE) load or make
 * the same certificate: one at a time, so that none reads the file another
 * is still writing, or finds the secret file it was about to create. */
static pthread_mutex_t s_cert_lock = PTHREAD_MUTEX_INITIALIZER;

/* Loads the worker's certificate, or makes it when `path` does not exist
 * yet: `path` gets the public half (to copy into the broker's
 * $KITH_HOME/workers/authorized/), path_secret (created 0600 first) both. */
static zcert_t *s_cert_load_or_make(const char *path, char *err, size_t errcap)
{
    char secret[4096];
    snprintf(secret, sizeof secret, "%s_secret", path);
    /* Past CZMQ's 255, its secret went under the cut name: for a path of
     * 255 bytes that is `path` itself, the public half operators copy to
     * the broker, which then held the secret key. */
    if (strlen(path) + 7 > CZMQ_SECRET_NAME_MAX) {
        snprintf(err, errcap, "mdp worker: %s is %zu bytes long, past the %d CZMQ can write a "
                 "certificate's secret to (with \"_secret\"): a shorter path", path,
                 strlen(path), CZMQ_SECRET_NAME_MAX - 7);
        return NULL;
    }
    if (access(secret, F_OK) == 0 || access(path, F_OK) == 0) {
        zcert_t *c = zcert_load(path);
        if (!c || !zcert_secret_txt(c)[0] ||
            strcmp(zcert_secret_txt(c), "0000000000000000000000000000000000000000") == 0) {
            zcert_destroy(&c);
            snprintf(err, errcap, "mdp worker: %s is not a CZMQ certificate with its secret key",
                     path);
        }
        return c;
    }
    zcert_t *c = zcert_new();
    int fd = c ? open(secret, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600) : -1;
    if (fd < 0) {
        snprintf(err, errcap, "mdp worker: cannot create %s: %s", secret, strerror(errno));
        zcert_destroy(&c);
        return NULL;
    }
    close(fd);
    zcert_set_meta(c, "name", "kith worker");
    if (zcert_save(c, path) != 0) {
        snprintf(err, errcap, "mdp worker: cannot write %s", path);
        unlink(secret);
        zcert_destroy(&c);
        return NULL;
    }
    ROUTER_LOG(ROUTER_LOG_INFO, MOD,
               "made the worker certificate %s: copy it into the broker's "
               "$KITH_HOME/workers/authorized/", path);
    return c;
}

router_mdp_worker_t *router_mdp_worker_new(const router_mdp_worker_opts_t *o, char *err,
                                           size_t errcap)
{
    router_mdp_worker_t *w = NULL;
    if (!o || !o->endpoint || !o->service) {
        snprintf(err, errcap, "mdp worker: endpoint and service are required");
        return NULL;
    }
    size_t slen = strlen(o->service);
    if (slen == 0 || slen > ROUTER_MDP_SERVICE_MAX) {
        snprintf(err, errcap, "mdp worker: service name must be 1..%u bytes",
                 ROUTER_MDP_SERVICE_MAX);
        return NULL;
    }
    /* CZMQ would otherwise take SIGINT/SIGTERM from the daemon's signalfd. */
    zsys_handler_set(NULL);
    w = calloc(1, sizeof *w);
    if (!w)
        goto nomem;
    w->stop_fd = -1;
    w->endpoint = strdup(o->endpoint);
    w->service = strdup(o->service);
    if (!w->endpoint || !w->service)
        goto nomem;
    w->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : 1000;
    w->liveness = o->liveness > 0 ? o->liveness : 3;
    if (o->curve_server_key) {
        if (strlen(o->curve_server_key) != 40) {
            snprintf(err, errcap, "mdp worker: the broker's CURVE key must be 40 Z85 characters");
            goto fail;
        }
        uint8_t bin[32];
        if (!zmq_z85_decode(bin, o->curve_server_key)) {
            snprintf(err, errcap, "mdp worker: the broker's CURVE key is not Z85");
            goto fail;
        }
        memcpy(w->server_key, o->curve_server_key, 41);
        w->curve = true;
        snprintf(err, errcap, "mdp worker: cannot make a CURVE certificate");
        if (o->curve_cert_path) {
            pthread_mutex_lock(&s_cert_lock);
            w->cert = s_cert_load_or_make(o->curve_cert_path, err, errcap);
            pthread_mutex_unlock(&s_cert_lock);
        } else {
            w->cert = zcert_new();
        }
        if (!w->cert)
            goto fail;
    }
    w->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->stop_fd < 0) {
        snprintf(err, errcap, "mdp worker: eventfd: %s", strerror(errno));
        goto fail;
    }
    w->first = s_dealer_new(w, err, errcap);
    if (!w->first)
        goto fail;
    if (o->same_thread) {
        if (!(w->own = malloc(sizeof *w->own)))
            goto nomem;
        s_actor_init(w->own, w, NULL);
        return w;
    }
    w->actor = zactor_new(s_actor, w);
    if (!w->actor) {
        snprintf(err, errcap, "mdp worker: cannot start its thread");
        goto fail;
    }
    return w;
nomem:
    snprintf(err, errcap, "mdp worker: out of memory");
fail:
    router_mdp_worker_destroy(&w);
    return NULL;
}

void router_mdp_worker_destroy(router_mdp_worker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_mdp_worker_t *w = *self_p;
    zactor_destroy(&w->actor);
    if (w->own) {
        s_actor_fini(w->own);
        free(w->own);
    }
    zsock_destroy(&w->first);
    zcert_destroy(&w->cert);
    if (w->stop_fd >= 0)
        close(w->stop_fd);
    free(w->endpoint);
    free(w->service);
    free(w);
    *self_p = NULL;
}

/* The turn held ends here, the caller's replies for it refused from now:
 * an empty FINAL (the router ends the turn as malformed, AGENT_ERROR, and
 * has the worker back). recv's -2. */
static int s_give_up(router_mdp_worker_t *self)
{
    ROUTER_LOG(ROUTER_LOG_WARN, MOD, "%s: out of memory for a request about the turn held; "
               "that turn ends here", self->service);
    if (self->holding && router_mdp_worker_final(self, (const uint8_t *) "", 0) != 0)
        self->holding = false;
    return -2;
}

/* A body recv returns: the caller's copy (free()), and the turn held once
 * it is one that starts a turn. Returns 1; 0 when a new turn could not be
 * copied (no memory: answered at once with an empty FINAL, as s_hand does,
 * so the broker has the worker back and the caller goes on waiting, where
 * -1 would tell it the worker stopped); or -2 for a turn's later request
 * that could not be copied (a tool result, steer or stop lost: the turn
 * cannot go on as the router means it, so it ends here the same way, with
 * an empty FINAL, and the caller ends it without replies and serves on). */
static int s_give(router_mdp_worker_t *self, const char *what, zframe_t *f, uint8_t **body,
                  size_t *len)
{
    size_t n = zframe_size(f);
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy && streq(what, PIPE_TURN)) {
        self->holding = true;
        if (router_mdp_worker_final(self, (const uint8_t *) "", 0) != 0)
            self->holding = false;
        return 0;
    }
    if (!copy)
        return s_give_up(self);
    memcpy(copy, zframe_data(f), n);
    if (streq(what, PIPE_TURN))
        self->holding = true;
    *body = copy;
    *len = n;
    return 1;
}

/* recv with same_thread: the actor's loop, run here until a body comes,
 * the caller's timeout passes, or interrupt. */
static int s_recv_here(router_mdp_worker_t *self, uint8_t **body, size_t *len, int timeout_ms)
{
    actor_t *a = self->own;
    uint64_t deadline = timeout_ms > 0 ? router_clock_mono_ms() + (uint64_t) timeout_ms : 0;
    for (;;) {
        if (atomic_load(&self->stopped))
            return -1;
        /* What already waits is read without a poll first (a turn's
         * controls, the next request under load). */
        while (a->dealer && !a->handed && s_on_broker(a)) {
        }
        s_tick(a);
        if (a->given_up) {
            a->given_up = false;
            return s_give_up(self);
        }
        if (a->handed) {
            int rc = s_give(self, a->handed_what, a->handed, body, len);
            zframe_destroy(&a->handed);
            if (rc != 0)
                return rc;
        }
        if (timeout_ms == 0)
            return 0; /* only looked: the receives above did */
        uint64_t now = router_clock_mono_ms();
        long wait = a->beat_at > now ? (long) (a->beat_at - now) : 0;
        if (timeout_ms > 0 && (long) (deadline > now ? deadline - now : 0) < wait)
            wait = (long) (deadline > now ? deadline - now : 0);
        zmq_pollitem_t items[2] = {
            {NULL, self->stop_fd, ZMQ_POLLIN, 0},
            {a->dealer ? zsock_resolve(a->dealer) : NULL, 0, ZMQ_POLLIN, 0},
        };
        int n = zmq_poll(items, a->dealer ? 2 : 1, wait);
        if (n < 0 && zmq_errno() != EINTR)
            return -1;
        if (atomic_load(&self->stopped))
            return -1;
        if (n == 0 && timeout_ms > 0 && router_clock_mono_ms() >= deadline)
            return 0;
    }
}

int router_mdp_worker_recv(router_mdp_worker_t *self, uint8_t **body, size_t *len,
                           int timeout_ms)
{
    *body = NULL;
    *len = 0;
    if (self->own)
        return s_recv_here(self, body, len, timeout_ms);
    uint64_t deadline = timeout_ms > 0 ? router_clock_mono_ms() + (uint64_t) timeout_ms : 0;
    for (;;) {
        if (atomic_load(&self->stopped))
            return -1;
        long wait = timeout_ms < 0 ? -1 : 0;
        if (timeout_ms > 0) {
            uint64_t now = router_clock_mono_ms();
            wait = deadline > now ? (long) (deadline - now) : 0;
        }
        zmq_pollitem_t items[2] = {
            {zsock_resolve(zactor_sock(self->actor)), 0, ZMQ_POLLIN, 0},
            {NULL, self->stop_fd, ZMQ_POLLIN, 0},
        };
        int n = zmq_poll(items, 2, wait);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            return -1;
        }
        if (atomic_load(&self->stopped))
            return -1;
        if (n == 0 || !(items[0].revents & ZMQ_POLLIN)) {
            if (wait == 0 || (timeout_ms > 0 && router_clock_mono_ms() >= deadline))
                return 0;
            continue;
        }
        char *what = NULL;
        zframe_t *f = NULL;
        if (zsock_recv(self->actor, "sf", &what, &f) != 0 || !what || !f) {
            zstr_free(&what);
            zframe_destroy(&f);
            return -1;
        }
        /* A request about a turn the caller has ended (its FINAL, or -2)
         * that the socket's thread read before that FINAL reached it: a
         * steer or tool result racing the FINAL. The turn is over, so it
         * is dropped, as the socket's thread drops one that comes after;
         * handed over, it read as a new turn to a caller holding none. */
        int rc = streq(what, PIPE_MORE) && !self->holding ? 0 : s_give(self, what, f, body, len);
        zstr_free(&what);
        zframe_destroy(&f);
        if (rc != 0)
            return rc;
    }
}

static int s_reply(router_mdp_worker_t *self, const char *what, const uint8_t *body,
                   size_t len)
{
    if (!self->holding || len > ROUTER_MDP_BODY_MAX)
        return -1;
    if (self->own) {
        s_reply_out(self->own, streq(what, PIPE_FINAL), body, len);
        return 0;
    }
    zframe_t *f = zframe_new(body, len);
    if (!f)
        return -1;
    if (zsock_send(self->actor, "sf", what, f) != 0) {
        zframe_destroy(&f);
        return -1;
    }
    zframe_destroy(&f);
    return 0;
}

int router_mdp_worker_partial(router_mdp_worker_t *self, const uint8_t *body, size_t len)
{
    return s_reply(self, PIPE_PARTIAL, body, len);
}

int router_mdp_worker_final(router_mdp_worker_t *self, const uint8_t *body, size_t len)
{
    int rc = s_reply(self, PIPE_FINAL, body, len);
    if (rc == 0)
        self->holding = false;
    return rc;
}

void router_mdp_worker_interrupt(router_mdp_worker_t *self)
{
    atomic_store(&self->stopped, true);
    uint64_t one = 1;
    ssize_t r = write(self->stop_fd, &one, sizeof one);
    (void) r;
}

uint64_t router_mdp_worker_reconnects(const router_mdp_worker_t *self)
{
    return atomic_load(&((router_mdp_worker_t *) self)->reconnects);
}
