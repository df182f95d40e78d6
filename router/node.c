/* router/node.c — composing a node: start-up in dependency order, the
 * listeners config asks for, blocking sends for other threads, and a
 * shutdown that loses nothing it acked. */
#include "router/node.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "proto/envelope.h"
#include "proto/envelope_meerkat.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/comms/comms.h"
#include "router/comms/events.h"
#include "router/comms/guard.h"
#include "router/log.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/net/resolver.h"
#include "router/state/home.h"
#include "router/state/identity.h"
#include "router/state/trust.h"
#include "router/workers/broker.h"
#include "router/workers/turns.h"

/* The last trust_sets a restore can undo (kith_node_trust makes one
 * before it may undo it). */
#define S_TRUST_SETS_MAX 16

struct router_node {
    router_config_t cfg;                 /* effective configuration */
    char home[ROUTER_PATH_MAX];          /* state directory, "" for none */
    int home_lock;                       /* flock'd <home>/node.lock while we use its state, or -1 */
    char comms_bound[ROUTER_ADDR_STR_MAX]; /* the TCP comms listener's address, "" for none */
    router_identity_t identity;          /* our key */
    router_trust_t *trust;               /* trusted peers; a reload swaps in a new store */
    pthread_rwlock_t trust_lock;         /* guards `trust` against that swap for other threads */
    struct {
        uint8_t pk[32];
        char name[ROUTER_PEER_NAME_MAX + 1];
    } trust_sets[S_TRUST_SETS_MAX];      /* loop: the keys and names the last trust_sets wrote,
                                          * oldest first, what a restore may put back */
    size_t ntrust_sets;                  /* entries in trust_sets */
    int trust_inotify;                   /* inotify on home for trusted_peers.json, or -1 */
    router_watch_t *trust_watch;         /* the loop's watch of trust_inotify */
    router_metrics_t *metrics;           /* counters for /metrics */
    router_loop_t *loop;                 /* everything below runs on it */
    router_inbox_t *inbox;               /* admitted envelopes and events */
    router_comms_t *comms;               /* inbound pipeline */
    router_outbound_t *outbound;         /* sends and their acks */
    router_resolver_t *resolver;         /* peers' DNS names, off the loop; made on first use */
    struct s_dns_send *dns_sends;        /* the loop's sends waiting for a name's answer */
    router_inproc_t *inproc;             /* namespace for inproc:// */
    char inproc_name[ROUTER_INPROC_NAME_MAX + 1]; /* bound name, "" for none */
    router_guard_t *guard;               /* connection bounds and deadlines (comms, events) */
    router_events_t *events;             /* plain event connections */
    router_pairing_t *pairing;           /* Meerkat pairing on the comms port, or NULL (WIRE §23.6) */
    router_broker_t *broker;             /* the worker broker (opts.workers) */
    router_turns_t *turns;               /* sessions and turns (opts.workers) */
    pthread_t thread;                    /* when started on its own thread */
    bool threaded;
    pthread_mutex_t life_mu;             /* threaded: guards the two flags below */
    pthread_cond_t life_cv;              /* ...signalled when either changes */
    bool loop_done;                      /* threaded: router_loop_run returned */
    bool teardown;                       /* threaded: destroy asks the thread to tear down */
    _Atomic bool running;                /* the loop runs (or is about to) */
    _Atomic bool ran;                    /* router_node_run's loop has ended: never again */
    bool stopping;                       /* loop thread: a drain has begun */
    _Atomic bool stopped;                /* stop requested from outside */
    pthread_mutex_t post_mu;             /* other threads' sends and calls check `stopped` and
                                          * post under it, so none is queued after the stop */
    _Atomic bool wake_posted;            /* a durable wake-up is queued on the loop */
    router_audit_feed_t *audit;          /* security events go here, or NULL (audit off) */
    router_comms_event_fn *sink;         /* also told of every comms event, or NULL */
    void *sink_ud;                       /* its argument */
    router_channel_event_fn *channel_sink; /* told of the event lines each read queued, or NULL */
    void *channel_sink_ud;
    void (*on_stop)(void *ud);           /* told when a graceful stop begins */
    void *on_stop_ud;
    unsigned drain_holds;                /* loop thread: drains still running (comms, holders) */
    void (*on_durable)(void *ud);        /* told on the loop after each durable batch */
    void *on_durable_ud;
};

/* ---------------------------------------------------------------- events from comms */

/* Every admission is counted (kith_comms_admitted_total) and published on
 * /api/events; its log line is DEBUG, so the default level writes nothing
 * per envelope (issue 13) and the id and key are not even formatted.
 * Refusals stay WARN. */
static void s_on_comms_event(const router_comms_event_t *ev, void *ud)
{
    router_node_t *self = ud;
    router_log_level_t level = ev->admitted ? ROUTER_LOG_DEBUG : ROUTER_LOG_WARN;
    if (level < router_log_level())
        goto sink;
    char id[PROTO_UUID_TEXT_CAP] = "-";
    char from[PROTO_PUBKEY_TEXT_CAP] = "-";
    if (ev->id)
        proto_uuid_format(ev->id, id);
    if (ev->from)
        (void) proto_pubkey_format(ev->from, from, sizeof from);
    if (ev->admitted)
        ROUTER_LOG(ROUTER_LOG_DEBUG, "comms",
                   "admitted envelope id=%s kind=%s from=%s peer=%s seq=%llu conn=%llu", id,
                   ev->kind, from, ev->peer_name ? ev->peer_name : "-",
                   (unsigned long long) ev->seq, (unsigned long long) ev->conn_id);
    else
        ROUTER_LOG(ROUTER_LOG_WARN, "comms",
                   "rejected envelope reason=%s detail=%s id=%s kind=%s from=%s peer=%s conn=%llu",
                   proto_wire_reason_str(ev->reason), ev->detail, id, ev->kind ? ev->kind : "-",
                   from, ev->peer_name ? ev->peer_name : "-", (unsigned long long) ev->conn_id);
sink:
    if (self)
        router_audit_feed_on_comms(self->audit, ev);
    if (self && self->sink)
        self->sink(ev, self->sink_ud);
}

void router_node_set_audit(router_node_t *self, router_audit_feed_t *feed)
{
    self->audit = feed;
    if (self->turns)
        router_turns_set_audit(self->turns, feed);
}

void router_node_set_event_sink(router_node_t *self, router_comms_event_fn *fn, void *ud)
{
    self->sink = fn;
    self->sink_ud = ud;
}

/* Plain event lines were queued: their session is comms.session (WIRE §19). */
static void s_on_channel_event(const router_channel_event_t *ev, void *ud)
{
    router_node_t *self = ud;
    if (!self->channel_sink)
        return;
    router_channel_event_t e = *ev;
    if (!e.session_id)
        e.session_id = self->cfg.comms.session;
    self->channel_sink(&e, self->channel_sink_ud);
}

void router_node_set_channel_sink(router_node_t *self, router_channel_event_fn *fn, void *ud)
{
    self->channel_sink = fn;
    self->channel_sink_ud = ud;
}

/* On the loop thread: acks may go out. comms is NULL once the node is being
 * destroyed (pending posts still run inside router_loop_destroy). */
static void s_durable_wake(router_loop_t *loop, void *arg)
{
    (void) loop;
    router_node_t *self = arg;
    atomic_store(&self->wake_posted, false);
    if (self->comms)
        router_comms_release_acks(self->comms);
    if (self->comms && self->on_durable) /* !comms: inside teardown */
        self->on_durable(self->on_durable_ud);
    if (self->comms)
        router_turns_kick(self->turns);
}

/* End of a loop iteration: what it admitted (comms, events, webhooks) and
 * popped goes to disk in one commit. An idle loop gets here right after
 * each admission, so this adds no wait; a saturated one batches a whole
 * iteration per fsync (issue 13: group commit). */
static void s_on_drained(router_loop_t *loop, void *ud)
{
    (void) loop;
    router_node_t *self = ud;
    router_inbox_flush(self->inbox);
}

/* On the inbox's store thread, after each durable batch. It touches only
 * the node and its loop, which outlive the store thread (see destroy). */
static void s_on_durable(void *ud)
{
    router_node_t *self = ud;
    if (atomic_exchange(&self->wake_posted, true))
        return;
    if (router_loop_post(self->loop, s_durable_wake, self) != 0)
        atomic_store(&self->wake_posted, false); /* comms' timer releases them */
}

/* ---------------------------------------------------------------- in-process accept */

typedef struct {
    router_node_t *node;
    int fd;
} s_adopt_t;

static void s_adopt(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_adopt_t *a = arg;
    if (a->node->comms && !a->node->stopping)
        router_comms_serve_fd(a->node->comms, a->fd);
    else
        close(a->fd);
    free(a);
}

/* Runs on the dialing thread: hand the fd to our loop. */
static int s_inproc_accept(int fd, void *ud)
{
    s_adopt_t *a = malloc(sizeof *a);
    if (!a)
        return -1;
    a->node = ud;
    a->fd = fd;
    if (router_loop_post(a->node->loop, s_adopt, a) != 0) {
        free(a);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- listeners */

/* The address as a refusal names it: at most S_ADDR_SHOWN bytes of it, so
 * the reason after it fits a caller's line (a kith_last_error()). */
#define S_ADDR_SHOWN 100

static int s_listen_one(router_node_t *self, const char *text, bool events, char *err,
                        size_t errcap, uint16_t *port)
{
    router_addr_t addr;
    router_addr_err_t why;
    const char *more = strlen(text) > S_ADDR_SHOWN ? "…" : "";
    if (router_addr_parse(text, &addr, &why) != 0) {
        snprintf(err, errcap, "cannot listen on %.*s%s: %s", S_ADDR_SHOWN, text, more,
                 router_addr_err_str(why));
        return -1;
    }
    router_listener_t *l = events ? router_events_listen(self->events, &addr)
                                  : router_comms_listen(self->comms, &addr);
    if (!l) {
        snprintf(err, errcap, "cannot listen on %.*s%s: %s", S_ADDR_SHOWN, text, more,
                 strerror(errno));
        return -1;
    }
    if (!events)
        router_listener_set_max_conns(l, self->cfg.limits.comms_connections_max);
    char bound[ROUTER_ADDR_STR_MAX] = "?";
    (void) router_addr_format(router_listener_addr(l), bound, sizeof bound);
    ROUTER_LOG(ROUTER_LOG_INFO, events ? "events" : "comms", "listening on %s://%s (%s, %s)",
               router_addr_family(&addr) == AF_UNIX ? "uds" : "tcp", bound,
               events ? "plain events" : "signed envelopes", router_loop_backend_name(self->loop));
    /* Doors harmless on loopback are named when other machines reach them. */
    if (!router_addr_is_loopback(router_listener_addr(l))) {
        if (events)
            ROUTER_LOG(ROUTER_LOG_WARN, "events",
                       "tcp://%s is reachable from other machines: each line any of them "
                       "sends is queued as an event, unauthenticated (comms.auth \"none\")",
                       bound);
        else if (!self->cfg.comms.require_peer_auth)
            ROUTER_LOG(ROUTER_LOG_WARN, "comms",
                       "tcp://%s is reachable from other machines with comms.require_peer_auth "
                       "false: envelopes from any key, trusted or not, are admitted", bound);
    }
    if (port)
        *port = router_addr_port(router_listener_addr(l));
    /* What pairing advertises when nothing else is configured: the TCP
     * comms address as bound (the port the kernel chose for port 0). */
    if (!events && router_addr_family(&addr) != AF_UNIX && !self->comms_bound[0])
        snprintf(self->comms_bound, sizeof self->comms_bound, "%s", bound);
    return 0;
}

static int s_listen(router_node_t *self, char *err, size_t errcap)
{
    const router_config_t *c = &self->cfg;
    if (c->comms.mode == ROUTER_COMMS_TCP &&
        s_listen_one(self, c->comms.address, false, err, errcap, NULL) != 0)
        return -1;
    if ((c->comms.mode == ROUTER_COMMS_TCP || c->comms.mode == ROUTER_COMMS_UDS) &&
        c->comms.uds_path[0] && s_listen_one(self, c->comms.uds_path, false, err, errcap, NULL))
        return -1;
    if (c->comms.mode != ROUTER_COMMS_NONE && c->comms.auth == ROUTER_COMMS_AUTH_NONE &&
        c->comms.event_address[0] && s_listen_one(self, c->comms.event_address, true, err, errcap, NULL))
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- seeding the replay window */

typedef struct {
    router_node_t *node;
    uint64_t now_ms;
    size_t ids;
} s_seed_t;

static int s_seed_id(const uint8_t sender[32], const uint8_t id[16], uint64_t expires_ms, void *ud)
{
    s_seed_t *sd = ud;
    bool trusted = router_trust_by_pubkey(sd->node->trust, sender) != NULL;
    sd->ids++;
    return router_replay_seed(router_comms_replay(sd->node->comms), sender, id, expires_ms,
                              sd->now_ms, trusted);
}

static int s_seed_floor(const uint8_t sender[32], uint64_t floor_ms, void *ud)
{
    s_seed_t *sd = ud;
    bool trusted = router_trust_by_pubkey(sd->node->trust, sender) != NULL;
    return router_replay_seed_floor(router_comms_replay(sd->node->comms), sender, floor_ms,
                                    sd->now_ms, trusted);
}

/* Rebuilds the replay window from what earlier runs admitted, so a restart
 * (graceful or kill -9) forgets no admitted id (WIRE §6.1). */
static int s_seed_replay(router_node_t *self, char *err, size_t errcap)
{
    s_seed_t sd = {.node = self, .now_ms = router_clock_wall_ms()};
    if (router_inbox_seen_load(self->inbox, ROUTER_REPLAY_PER_PEER_MAX, s_seed_id, s_seed_floor,
                               &sd, err, errcap) != 0)
        return -1;
    if (sd.ids)
        ROUTER_LOG(ROUTER_LOG_INFO, "comms", "replay window: %zu ids remembered from before",
                   router_replay_size(router_comms_replay(self->comms)));
    return 0;
}

/* ---------------------------------------------------------------- trust reload */

/* A trust store change (or a refused one) for the audit log. */
static void s_audit_trust(router_node_t *self, const char *type, const char *why,
                          const router_trust_diff_t *d, const char *err)
{
    if (!self->audit)
        return;
    router_audit_detail_t det;
    router_audit_detail_init(&det);
    router_audit_detail_str(&det, "cause", why);
    if (d) {
        router_audit_detail_u64(&det, "added", d->added);
        router_audit_detail_u64(&det, "removed", d->removed);
        router_audit_detail_u64(&det, "changed", d->changed);
        router_audit_detail_str(&det, "summary", d->text);
    }
    if (err)
        router_audit_detail_str(&det, "error", err);
    (void) router_audit_feed_push(self->audit, type, router_audit_detail_end(&det));
}

/* On the loop thread: loads trusted_peers.json again and, if it loads,
 * swaps it in (WIRE §7.1). Fail-closed: a file that does not load leaves
 * the store as it was and logs why, naming the row; a missing file is an
 * empty store. The old store is freed under the write lock's protection:
 * router_node_send readers copy what they need while holding the read lock,
 * so none can still point into it. */
static void s_trust_reload(router_node_t *self, const char *why)
{
    char path[ROUTER_PATH_MAX], err[ROUTER_TRUST_ERR_MAX] = "";
    if (!self->home[0] || router_home_path(self->home, ROUTER_TRUST_FILE, path, sizeof path) != 0)
        return;
    router_trust_t *next = router_trust_load(path, err, sizeof err);
    if (!next) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "trust",
                   "reload (%s) refused; keeping the %zu peers trusted before: %s", why,
                   router_trust_count(self->trust), err);
        s_audit_trust(self, "trust_reload_refused", why, NULL, err);
        return;
    }
    router_trust_diff_t d;
    router_trust_diff(self->trust, next, &d);
    if (d.added + d.removed + d.changed == 0) {
        ROUTER_LOG(ROUTER_LOG_INFO, "trust", "reloaded (%s): no change, %zu peers", why,
                   router_trust_count(next));
        router_trust_destroy(&next);
        return;
    }
    pthread_rwlock_wrlock(&self->trust_lock);
    router_trust_t *old = self->trust;
    self->trust = next;
    pthread_rwlock_unlock(&self->trust_lock);
    router_comms_set_trust(self->comms, next);
    router_trust_destroy(&old);
    ROUTER_LOG(ROUTER_LOG_INFO, "trust", "reloaded (%s): %zu peers; %s", why,
               router_trust_count(next), d.text);
    s_audit_trust(self, "trust_changed", why, &d, NULL);
}

void router_node_trust_reload(router_node_t *self, const char *why)
{
    s_trust_reload(self, why);
}

const char *router_node_home(const router_node_t *self)
{
    return self->home[0] ? self->home : NULL;
}

/* inotify on the home directory: reload when trusted_peers.json is written
 * and closed, renamed into place (kith peers), moved away or deleted. */
static void s_on_trust_inotify(router_watch_t *watch, int fd, unsigned events, void *ud)
{
    (void) watch;
    (void) events;
    router_node_t *self = ud;
    bool hit = false;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* EAGAIN: drained */
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *) p;
            if ((ev->mask & IN_Q_OVERFLOW) ||
                (ev->len && strcmp(ev->name, ROUTER_TRUST_FILE) == 0))
                hit = true;
            p += sizeof *ev + ev->len;
        }
    }
    if (hit)
        s_trust_reload(self, "trusted_peers.json changed");
}

/* Watches the home for trust changes. Without inotify the node still
 * reloads on SIGHUP, and says so. */
static void s_trust_watch_start(router_node_t *self)
{
    self->trust_inotify = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (self->trust_inotify >= 0 &&
        inotify_add_watch(self->trust_inotify, self->home,
                          IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE) >= 0 &&
        (self->trust_watch = router_loop_watch_fd(self->loop, self->trust_inotify, ROUTER_EV_READ,
                                                  s_on_trust_inotify, self)))
        return;
    ROUTER_LOG(ROUTER_LOG_WARN, "trust",
               "cannot watch %s for trust changes (%s); send SIGHUP after editing %s",
               self->home, strerror(errno), ROUTER_TRUST_FILE);
    if (self->trust_inotify >= 0)
        close(self->trust_inotify);
    self->trust_inotify = -1;
}

/* SIGHUP: reopen the log file (logrotate moved it) and reload trust. */
static void s_on_hup(router_loop_t *loop, int signo, void *ud)
{
    (void) loop;
    (void) signo;
    if (router_log_reopen() != 0)
        ROUTER_LOG(ROUTER_LOG_ERROR, "node",
                   "SIGHUP: cannot reopen the log file: %s (lines go on where they went; "
                   "SIGHUP again once the path is free); reloading trust",
                   strerror(errno));
    else
        ROUTER_LOG(ROUTER_LOG_INFO, "node", "SIGHUP: log reopened; reloading trust");
    s_trust_reload(ud, "SIGHUP");
}

/* ---------------------------------------------------------------- stopping */

/* The loop ends once every drain that began with the stop has ended:
 * comms's, and each module's that took a hold (the gateway's). */
static void s_drained(void *ud)
{
    router_node_drain_release(ud);
}

void router_node_drain_hold(router_node_t *self)
{
    self->drain_holds++;
}

void router_node_drain_release(router_node_t *self)
{
    if (!self->drain_holds || --self->drain_holds)
        return;
    ROUTER_LOG(ROUTER_LOG_INFO, "node", "drained; stopping");
    router_loop_stop(self->loop);
}

/* On the loop thread: stop taking anything new, then drain comms. */
static void s_begin_stop(router_loop_t *loop, void *arg)
{
    (void) loop;
    router_node_t *self = arg;
    if (self->stopping || !self->comms) /* !comms: run late, inside teardown */
        return;
    self->stopping = true;
    self->drain_holds = 1; /* comms's own drain, released by s_drained */
    if (self->on_stop)
        self->on_stop(self->on_stop_ud);
    if (self->inproc_name[0])
        router_inproc_unbind(self->inproc, self->inproc_name);
    router_events_drain(self->events);
    router_comms_drain(self->comms, s_drained, self);
}

static void s_on_signal(router_loop_t *loop, int signo, void *ud)
{
    ROUTER_LOG(ROUTER_LOG_INFO, "node", "%s: draining", strsignal(signo));
    s_begin_stop(loop, ud);
}

/* ---------------------------------------------------------------- sends for the turns */

/* A send of the loop's to a peer named by DNS, signed and waiting for the
 * name's answer (router/net/resolver.h). */
typedef struct s_dns_send {
    struct s_dns_send *prev, *next;
    router_node_t *node;
    uint8_t to[32];
    uint8_t id[16];
    uint8_t *frame;                     /* owned */
    size_t len;
    char host[ROUTER_CONFIG_HOST_CAP];
    router_send_fn *cb;
    void *cb_ud;
} s_dns_send_t;

/* Off the node's list, and freed. */
static void s_dns_send_free(router_node_t *self, s_dns_send_t *d)
{
    if (d->prev)
        d->prev->next = d->next;
    else
        self->dns_sends = d->next;
    if (d->next)
        d->next->prev = d->prev;
    free(d->frame);
    free(d);
}

/* The name's answer: send (to each of its addresses in turn until one
 * connects), or tell the caller the peer is offline. */
static void s_dns_answered(const router_addr_list_t *addrs, const char *why, void *ud)
{
    s_dns_send_t *d = ud;
    router_node_t *self = d->node;
    char detail[ROUTER_CONFIG_HOST_CAP + 160];
    router_outbound_msg_t m = {.peer_pk = d->to, .fd = -1, .frame = d->frame, .len = d->len,
                               .id = d->id, .cb = d->cb, .ud = d->cb_ud};
    if (addrs) {
        m.addr = addrs->addr;
        m.naddrs = addrs->n;
    }
    if (!addrs) {
        snprintf(detail, sizeof detail, "cannot resolve %s: %s", d->host, why);
        d->cb(ROUTER_SEND_OFFLINE, detail, NULL, d->cb_ud);
    } else if (!self->outbound || self->stopping) {
        d->cb(ROUTER_SEND_OFFLINE, "the node is stopping", NULL, d->cb_ud);
    } else if (router_outbound_send_msg(self->outbound, &m) != 0) {
        snprintf(detail, sizeof detail, "cannot send: %s", strerror(errno));
        d->cb(ROUTER_SEND_OFFLINE, detail, NULL, d->cb_ud);
    }
    s_dns_send_free(self, d);
}

/* At teardown, before the turns go: sends still waiting for DNS fail, as
 * outbound's own do. */
static void s_dns_sends_fail(router_node_t *self)
{
    router_resolver_destroy(&self->resolver); /* drops its waiters uncalled */
    while (self->dns_sends) {
        s_dns_send_t *d = self->dns_sends;
        d->cb(ROUTER_SEND_OFFLINE, "the node is stopping", NULL, d->cb_ud);
        s_dns_send_free(self, d);
    }
}

/* A peer whose address is a DNS name: 0 with *addrs set when the answer
 * is cached (the caller sends as to any address), 1 when the send waits
 * for the answer (taking *frame_p), -1 with detail. */
static int s_send_by_name(router_node_t *self, const router_peer_t *peer, uint8_t **frame_p,
                          size_t len, const uint8_t id[16], router_send_fn *cb, void *cb_ud,
                          router_addr_list_t *addrs, char *detail, size_t detailcap)
{
    const char *host = peer->dial.host;
    char why[160];
    if (!self->resolver && !(self->resolver = router_resolver_new(self->loop, self->metrics))) {
        snprintf(detail, detailcap, "cannot resolve %s: %s", host, strerror(errno));
        return -1;
    }
    s_dns_send_t *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(detail, detailcap, "out of memory");
        return -1;
    }
    int r = router_resolver_lookup(self->resolver, host, peer->dial.port, addrs, s_dns_answered,
                                   d, why, sizeof why);
    if (r != 1) {
        free(d);
        if (r < 0)
            snprintf(detail, detailcap, "cannot resolve %s: %s", host, why);
        return r;
    }
    d->node = self;
    memcpy(d->to, peer->pk, 32);
    memcpy(d->id, id, 16);
    d->frame = *frame_p;
    *frame_p = NULL;
    d->len = len;
    snprintf(d->host, sizeof d->host, "%s", host);
    d->cb = cb;
    d->cb_ud = cb_ud;
    d->next = self->dns_sends;
    if (d->next)
        d->next->prev = d;
    self->dns_sends = d;
    return 1;
}

/* router_turns_send_fn: signs and sends on the loop thread, without
 * blocking. A peer named by DNS is resolved on the resolver's thread and
 * sent to when the answer comes (router/net/resolver.h). */
static int s_turns_send(void *ud, const uint8_t to[32], cbor_item_t **kind, uint8_t id_out[16],
                        router_send_fn *cb, void *cb_ud, char *detail, size_t detailcap)
{
    router_node_t *self = ud;
    proto_envelope_t *env = NULL;
    uint8_t *frame = NULL;
    size_t len = 0;
    int rc = -1;
    const router_peer_t *peer = router_trust_by_pubkey(self->trust, to);
    router_addr_list_t addrs = {.n = 1};
    router_addr_err_t why;
    char inproc[ROUTER_INPROC_NAME_MAX + 1] = "";
    bool by_name = false;
    if (!peer) {
        snprintf(detail, detailcap, "the peer is not trusted");
        goto done;
    }
    if (!self->outbound || self->stopping) {
        snprintf(detail, detailcap, "the node is stopping");
        goto done;
    }
    if (peer->dial.transport == ROUTER_PEER_INPROC) {
        snprintf(inproc, sizeof inproc, "%s", peer->dial.path);
    } else if (peer->dial.transport == ROUTER_PEER_UDS) {
        if (router_addr_parse(peer->dial.path, &addrs.addr[0], &why) != 0) {
            snprintf(detail, detailcap, "bad socket path: %s", router_addr_err_str(why));
            goto done;
        }
    } else if (router_addr_from_host(peer->dial.host, peer->dial.port, &addrs.addr[0], &why) != 0) {
        by_name = !router_outbound_connected(self->outbound, to);
    }
    proto_envelope_reason_t r;
    env = proto_envelope_new(NULL, self->identity.pk, to, kind, &r);
    if (!env) {
        snprintf(detail, detailcap, "cannot build the envelope: %s",
                 r == PROTO_ENV_NO_MEMORY ? "out of memory" : proto_envelope_reason_str(r));
        goto done;
    }
    errno = 0;
    if (proto_envelope_sign(env, self->identity.sk) != 0 ||
        proto_envelope_encode_frame(env, &frame, &len) != 0) {
        snprintf(detail, detailcap, "cannot sign or encode the envelope%s",
                 errno == ENOMEM ? ": out of memory" : "");
        goto done;
    }
    memcpy(id_out, proto_envelope_id(env), 16);
    if (by_name) {
        int waits = s_send_by_name(self, peer, &frame, len, id_out, cb, cb_ud, &addrs, detail,
                                   detailcap);
        if (waits != 0) {
            rc = waits > 0 ? 0 : -1;
            goto done;
        }
    }
    if (inproc[0] && !router_outbound_connected(self->outbound, to)) {
        int fd = router_inproc_dial(self->inproc, inproc);
        if (fd < 0) {
            snprintf(detail, detailcap, "nobody is bound at inproc://%s", inproc);
            goto done;
        }
        rc = router_outbound_send_fd(self->outbound, to, fd, frame, len, id_out, cb, cb_ud);
    } else {
        router_outbound_msg_t m = {.peer_pk = to, .addr = addrs.addr, .naddrs = addrs.n, .fd = -1,
                                   .frame = frame, .len = len, .id = id_out, .cb = cb,
                                   .ud = cb_ud};
        rc = router_outbound_send_msg(self->outbound, &m);
    }
    if (rc != 0)
        snprintf(detail, detailcap, "cannot send: %s", strerror(errno));
done:
    if (kind && *kind)
        cbor_decref(kind);
    proto_envelope_destroy(&env);
    free(frame);
    return rc;
}

static const router_trust_t *s_turns_trust(void *ud)
{
    return ((router_node_t *) ud)->trust;
}

/* The broker on the node's loop, and the turns that feed it. */
static int s_workers_start(router_node_t *self, const router_node_opts_t *opts, char *err,
                           size_t errcap)
{
    const router_config_t *c = &self->cfg;
    router_broker_opts_t bo = {
        .loop = self->loop,
        .endpoint = opts->workers_endpoint,
        .listen = c->workers.listen,
        .home = self->home[0] ? self->home : NULL,
        .heartbeat_ms = c->workers.heartbeat_ms,
        .liveness = c->workers.liveness,
        .pending_max = c->limits.workers_pending_max,
        .pending_per_source_max = c->limits.workers_pending_per_source_max,
        .ready_timeout_ms = c->limits.first_frame_timeout_ms,
        .metrics = self->metrics,
    };
    if (!(self->broker = router_broker_new(&bo, err, errcap)))
        return -1;
    char db[ROUTER_PATH_MAX];
    bool has_db = self->home[0] && !opts->memory_inbox &&
                  router_home_path(self->home, "state.db", db, sizeof db) == 0;
    router_turns_opts_t to = {
        .loop = self->loop,
        .broker = self->broker,
        .inbox = self->inbox,
        .db_path = has_db ? db : NULL,
        .comms_session = c->comms.session,
        .max_history_messages = c->agent.max_history_messages,
        .max_tool_iterations = c->agent.max_tool_iterations,
        .turn_timeout_s = c->agent.turn_timeout_s,
        .queue_max = c->limits.session_queue_max,
        .store_bounds = {.sessions_max = c->limits.sessions_max,
                         .messages_max = c->limits.session_messages_max,
                         .session_bytes_max = c->limits.session_bytes_max,
                         .bytes_max = c->limits.sessions_bytes_max},
        .metrics = self->metrics,
        .send = s_turns_send,
        .send_ud = self,
        .trust = s_turns_trust,
        .trust_ud = self,
    };
    if (!(self->turns = router_turns_new(&to, err, errcap)))
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- lifecycle */

static void s_on_paired(void *ud)
{
    s_trust_reload(ud, "a Meerkat peer paired");
}

/* Meerkat pairing on the comms port, with the password from the variable
 * comms.pairing_password_env names (WIRE §23.6). */
static int s_pairing(router_node_t *self, char *err, size_t errcap)
{
    const char *var = self->cfg.comms.pairing_password_env;
    const char *password = getenv(var);
    if (!password || strlen(password) < ROUTER_PAIRING_PASSWORD_MIN) {
        snprintf(err, errcap,
                 "comms.pairing_password_env: $%s must hold a pairing password of at least %d "
                 "bytes (a random one-time secret)", var, ROUTER_PAIRING_PASSWORD_MIN);
        return -1;
    }
    if (!self->home[0]) {
        snprintf(err, errcap, "comms.pairing_password_env: pairing needs a home directory");
        return -1;
    }
    char name[32], address[ROUTER_CONFIG_ADDR_CAP + 8];
    snprintf(name, sizeof name, "kith-%02x%02x%02x%02x", self->identity.peer_id[0],
             self->identity.peer_id[1], self->identity.peer_id[2], self->identity.peer_id[3]);
    snprintf(address, sizeof address, "tcp://%s",
             self->cfg.comms.advertise_address[0] ? self->cfg.comms.advertise_address
             : self->comms_bound[0]               ? self->comms_bound
                                                  : self->cfg.comms.address);
    router_pairing_opts_t po = {.loop = self->loop, .identity = &self->identity,
                                .password = password, .name = name, .address = address,
                                .home = self->home, .on_paired = s_on_paired, .ud = self};
    if (!(self->pairing = router_pairing_new(&po))) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    router_comms_set_pairing(self->comms, self->pairing);
    return 0;
}

/* One node at a time keeps its state in a home: two would share one
 * state.db with two replay windows (a replay admitted twice) and one key.
 * A lock, not a pid file: the kernel drops it with the process, kill -9
 * included. Nodes that only read the home (kith send: memory inbox) take
 * none. */
static int s_home_lock(router_node_t *self, char *err, size_t errcap)
{
    char path[ROUTER_PATH_MAX];
    if (router_home_path(self->home, "node.lock", path, sizeof path) != 0) {
        snprintf(err, errcap, "home path too long");
        return -1;
    }
    self->home_lock = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (self->home_lock < 0) {
        snprintf(err, errcap, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(self->home_lock, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errcap, "%s is in use by another running node (%s): one node per home",
                 self->home, errno == EWOULDBLOCK ? "locked" : strerror(errno));
        return -1;
    }
    return 0;
}

/* SQLite opens state.db (and its -journal, -wal) by full path in at most
 * the VFS's mxPathname bytes (512 on unix) and refuses a longer one with
 * only "unable to open database file": say why instead. 0, or -1 with err. */
static int s_db_path_check(const char *db, char *err, size_t errcap)
{
    sqlite3_vfs *vfs = sqlite3_vfs_find(NULL);
    if (!vfs || vfs->mxPathname < (int) sizeof "-journal")
        return 0;
    size_t len = strlen(db), max = (size_t) vfs->mxPathname - (sizeof "-journal" - 1);
    char cwd[ROUTER_PATH_MAX];
    if (db[0] != '/' && getcwd(cwd, sizeof cwd))
        len += strlen(cwd) + 1; /* made absolute by SQLite */
    if (len <= max)
        return 0;
    snprintf(err, errcap,
             "home path too long: its state.db would be named in %zu bytes, and SQLite takes at "
             "most %zu; use a shorter home", len, max);
    return -1;
}

router_node_t *router_node_new(const router_node_opts_t *opts, char *err, size_t errcap)
{
    if (errcap)
        err[0] = '\0'; /* steps below that fail without a reason of their own check it */
    router_node_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    pthread_rwlock_init(&self->trust_lock, NULL);
    pthread_mutex_init(&self->post_mu, NULL);
    self->trust_inotify = -1;
    self->home_lock = -1;
    if (sodium_init() < 0) {
        snprintf(err, errcap, "libsodium failed to initialise");
        goto fail;
    }
    if (opts->config)
        self->cfg = *opts->config;
    else
        router_config_defaults(&self->cfg);
    self->inproc = opts->inproc ? opts->inproc : router_inproc_default();

    /* identity and trust */
    if (opts->home) {
        snprintf(self->home, sizeof self->home, "%s", opts->home);
        bool created = false;
        if (router_identity_load_or_create(self->home, &self->identity, &created, err, errcap) != 0)
            goto fail;
        if (created)
            ROUTER_LOG(ROUTER_LOG_INFO, "node", "created a new identity in %s/identity",
                       self->home);
        if (!opts->memory_inbox && s_home_lock(self, err, errcap) != 0)
            goto fail;
        if (!opts->memory_inbox)
            (void) router_trust_sweep_temps(self->home);
        char path[ROUTER_PATH_MAX];
        if (router_home_path(self->home, ROUTER_TRUST_FILE, path, sizeof path) != 0) {
            snprintf(err, errcap, "home path too long");
            goto fail;
        }
        if (access(path, F_OK) == 0)
            self->trust = router_trust_load(path, err, errcap);
        else
            self->trust = router_trust_new();
    } else {
        uint8_t seed[32];
        if (opts->seed)
            memcpy(seed, opts->seed, sizeof seed);
        else
            randombytes_buf(seed, sizeof seed);
        proto_ed25519_seed_keypair(seed, self->identity.pk, self->identity.sk);
        proto_peer_id(self->identity.pk, self->identity.peer_id);
        sodium_memzero(seed, sizeof seed);
        self->trust = router_trust_new();
    }
    if (!self->trust) {
        if (!err[0])
            snprintf(err, errcap, "out of memory");
        goto fail;
    }

    /* the loop, the inbox, the pipeline */
    router_loop_opts_t lo = {
        /* The gateway serves on this loop too (kith daemon). */
        .max_conns = self->cfg.limits.comms_connections_max +
                     self->cfg.limits.event_connections_max + self->cfg.gateway.max_connections,
        .send_limit = self->cfg.limits.conn_unsent_max,
        .send_total_limit = self->cfg.limits.conn_unsent_total_max,
    };
    if (!(self->loop = router_loop_new(&lo))) {
        snprintf(err, errcap, "cannot create the event loop: %s", strerror(errno));
        goto fail;
    }
    if (!(self->metrics = router_metrics_new())) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    char db[ROUTER_PATH_MAX];
    router_inbox_opts_t io = {
        .capacity = self->cfg.comms.inbox_capacity,
        .max_bytes = (size_t) self->cfg.comms.inbox_max_bytes,
        .session = self->cfg.comms.session,
        .on_durable = s_on_durable,
        .ud = self,
        .metrics = self->metrics,
        /* Group commit: the loop flushes once per iteration (below). */
        .commit_on_flush = true,
    };
    if (self->home[0] && !opts->memory_inbox) {
        if (router_home_path(self->home, "state.db", db, sizeof db) != 0) {
            snprintf(err, errcap, "home path too long");
            goto fail;
        }
        if (s_db_path_check(db, err, errcap) != 0)
            goto fail;
        /* state.db 0600 whatever the umask: SQLite gives its -wal and -shm
         * the database file's mode, so all three stay private. */
        int dbfd = open(db, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (dbfd >= 0)
            close(dbfd);
        io.db_path = db;
    }
    if (!(self->inbox = router_inbox_new(&io, err, errcap)))
        goto fail;
    router_loop_set_drained_cb(self->loop, s_on_drained, self);
    /* One guard for comms and plain events: the partial-frame budget is
     * one budget (DESIGN §10). */
    router_guard_opts_t go = {
        .loop = self->loop,
        .metrics = self->metrics,
        .unauth_max = self->cfg.limits.comms_unauth_connections_max,
        .unauth_per_source_max = self->cfg.limits.comms_unauth_per_source_max,
        .events_per_source_max = self->cfg.limits.comms_unauth_per_source_max,
        .partial_bytes_max = self->cfg.limits.partial_frame_bytes_max,
        .first_frame_ms = self->cfg.limits.first_frame_timeout_ms,
        .frame_ms = self->cfg.limits.frame_timeout_ms,
        .idle_ms = self->cfg.limits.comms_idle_timeout_ms,
    };
    if (!(self->guard = router_guard_new(&go))) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    router_events_opts_t eo = {
        .loop = self->loop,
        .inbox = self->inbox,
        .metrics = self->metrics,
        .guard = self->guard,
        .connections_max = self->cfg.limits.event_connections_max,
        .on_queued = s_on_channel_event,
        .ud = self,
    };
    router_comms_opts_t co = {
        .loop = self->loop,
        .identity = &self->identity,
        .trust = self->trust,
        .inbox = self->inbox,
        .metrics = self->metrics,
        .guard = self->guard,
        .replay_window_s = self->cfg.comms.replay_window_s,
        .replay_horizon_s = self->cfg.comms.replay_horizon_s,
        .frame_max = (uint32_t) self->cfg.limits.envelope_frame_max,
        .require_peer_auth = self->cfg.comms.require_peer_auth,
        .crypto_threads = self->cfg.comms.crypto_threads,
        .on_event = s_on_comms_event,
        .ud = self,
    };
    router_outbound_opts_t oo = {
        .loop = self->loop,
        .identity = &self->identity,
        .ack_timeout_ms = self->cfg.comms.ack_timeout_ms,
    };
    if (!(self->comms = router_comms_new(&co))) {
        if (errno == ENOMEM)
            snprintf(err, errcap, "out of memory");
        else /* the crypto threads (WIRE §14.12) */
            snprintf(err, errcap,
                     "cannot start %u crypto threads (%s): lower comms.crypto_threads, or raise "
                     "the limit on processes (ulimit -u)",
                     co.crypto_threads, strerror(errno));
        goto fail;
    }
    if (!(self->outbound = router_outbound_new(&oo)) || !(self->events = router_events_new(&eo))) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    if (s_seed_replay(self, err, errcap) != 0)
        goto fail;
    if (opts->workers && s_workers_start(self, opts, err, errcap) != 0)
        goto fail;

    if (opts->listen && s_listen(self, err, errcap) != 0)
        goto fail;
    /* After listening: pairing advertises the port bound. Nothing is read
     * before the loop runs, so no handshake can come first. */
    if (opts->listen && self->cfg.comms.pairing_password_env[0] && s_pairing(self, err, errcap) != 0)
        goto fail;
    if (opts->inproc_name) {
        snprintf(self->inproc_name, sizeof self->inproc_name, "%s", opts->inproc_name);
        if (router_inproc_bind(self->inproc, self->inproc_name, s_inproc_accept, self) != 0) {
            snprintf(err, errcap, "inproc://%s: %s", self->inproc_name, strerror(errno));
            self->inproc_name[0] = '\0';
            goto fail;
        }
    }
    if (opts->listen && self->home[0])
        s_trust_watch_start(self);
    if (opts->handle_signals &&
        (router_loop_on_signal(self->loop, SIGINT, s_on_signal, self) != 0 ||
         router_loop_on_signal(self->loop, SIGTERM, s_on_signal, self) != 0 ||
         router_loop_on_signal(self->loop, SIGHUP, s_on_hup, self) != 0)) {
        snprintf(err, errcap, "cannot handle signals: %s", strerror(errno));
        goto fail;
    }
    return self;
fail:
    router_node_destroy(&self);
    return NULL;
}

int router_node_run(router_node_t *self)
{
    /* running first: a stop from another thread either sees it (and
     * begins the drain on the loop) or is seen here. */
    atomic_store(&self->running, true);
    if (atomic_load(&self->stopped) || atomic_load(&self->ran)) {
        atomic_store(&self->running, false);
        return 0; /* stopped before it ran, or ran and drained: nothing would end the loop */
    }
    int rc = router_loop_run(self->loop);
    /* Under post_mu, which other threads' calls and sends hold to look at
     * `running` and post: none is queued after this. One queued after the
     * run's last look at its posts is run (and refused) now, not left
     * waiting for router_loop_destroy with its caller. */
    pthread_mutex_lock(&self->post_mu);
    atomic_store(&self->ran, true);
    atomic_store(&self->running, false);
    pthread_mutex_unlock(&self->post_mu);
    router_loop_run_posts(self->loop);
    return rc < 0 ? -1 : 0;
}

/* Everything bound to the loop, on the thread that ran it: io_uring rings
 * are SINGLE_ISSUER, so only that thread can cancel and reap the requests
 * still in flight (router_loop_destroy). Order matters: the store thread
 * may post wake-ups until the inbox is destroyed, so the loop outlives the
 * inbox; posts still pending run inside router_loop_destroy and find comms
 * and outbound gone. Idempotent. */
static void s_teardown(router_node_t *self)
{
    if (self->inproc_name[0])
        router_inproc_unbind(self->inproc, self->inproc_name);
    router_events_destroy(&self->events);
    router_watch_destroy(&self->trust_watch);
    if (self->trust_inotify >= 0)
        close(self->trust_inotify);
    self->trust_inotify = -1;
    /* Order matters: the store thread may post wake-ups until the inbox is
     * destroyed, so the loop outlives the inbox; posts still pending run
     * inside router_loop_destroy and find comms and outbound gone. */
    s_dns_sends_fail(self);                   /* turns still there to be told */
    router_outbound_destroy(&self->outbound); /* fails its sends: turns still there */
    router_turns_destroy(&self->turns);     /* unfinished entries stay in the inbox */
    router_broker_destroy(&self->broker);
    router_comms_destroy(&self->comms);
    router_pairing_quiesce(self->pairing); /* its file writes finish before the loop goes */
    router_guard_destroy(&self->guard); /* every entry left with comms and events */
    router_inbox_destroy(&self->inbox); /* flushes what is pending, joins the store thread */
    router_loop_destroy(&self->loop);
    router_pairing_destroy(&self->pairing);
}

/* The node's own thread: runs the loop, then waits for router_node_destroy
 * (until then senders may still post, and the inbox stays readable) and
 * tears the loop down here. */
static void *s_thread_main(void *arg)
{
    router_node_t *self = arg;
    router_node_run(self);
    /* Nothing will be sent now: senders blocked on other threads are told
     * at once (offline), not when destroy comes — which may be waiting for
     * them to return (kith_node_destroy). */
    s_dns_sends_fail(self);
    router_outbound_destroy(&self->outbound);
    pthread_mutex_lock(&self->life_mu);
    self->loop_done = true;
    pthread_cond_broadcast(&self->life_cv);
    while (!self->teardown)
        pthread_cond_wait(&self->life_cv, &self->life_mu);
    pthread_mutex_unlock(&self->life_mu);
    s_teardown(self);
    return NULL;
}

int router_node_start(router_node_t *self)
{
    /* Once: a second thread on the same loop, or a loop started after its
     * stop (nothing would end it, and destroy would wait for ever), is
     * refused. */
    if (self->threaded || atomic_load(&self->running)) {
        errno = EALREADY;
        return -1;
    }
    if (atomic_load(&self->stopped) || atomic_load(&self->ran)) {
        errno = ECANCELED;
        return -1;
    }
    atomic_store(&self->running, true);
    pthread_mutex_init(&self->life_mu, NULL);
    pthread_cond_init(&self->life_cv, NULL);
    int e = pthread_create(&self->thread, NULL, s_thread_main, self);
    if (e != 0) {
        atomic_store(&self->running, false);
        pthread_cond_destroy(&self->life_cv);
        pthread_mutex_destroy(&self->life_mu);
        errno = e;
        return -1;
    }
    self->threaded = true;
    return 0;
}

void router_node_stop(router_node_t *self)
{
    if (!self)
        return;
    pthread_mutex_lock(&self->post_mu);
    bool again = atomic_exchange(&self->stopped, true);
    pthread_mutex_unlock(&self->post_mu);
    if (again)
        return;
    if (self->threaded) {
        (void) router_loop_post_wait(self->loop, s_begin_stop, self, 0);
        pthread_mutex_lock(&self->life_mu);
        while (!self->loop_done)
            pthread_cond_wait(&self->life_cv, &self->life_mu);
        pthread_mutex_unlock(&self->life_mu);
    } else if (atomic_load(&self->running)) {
        /* router_node_run on some thread, maybe this one: begin the drain
         * there; its router_node_run returns when it is done. */
        (void) router_loop_post_wait(self->loop, s_begin_stop, self, 1000);
    }
}

void router_node_stop_async(router_node_t *self)
{
    (void) router_loop_post(self->loop, s_begin_stop, self);
}

void router_node_destroy(router_node_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_node_t *self = *self_p;
    router_node_stop(self);
    if (self->threaded) {
        pthread_mutex_lock(&self->life_mu);
        self->teardown = true;
        pthread_cond_broadcast(&self->life_cv);
        pthread_mutex_unlock(&self->life_mu);
        pthread_join(self->thread, NULL);
        self->threaded = false;
        pthread_cond_destroy(&self->life_cv);
        pthread_mutex_destroy(&self->life_mu);
    }
    s_teardown(self); /* not threaded: the caller's thread ran the loop, if anyone did */
    router_trust_destroy(&self->trust);
    pthread_rwlock_destroy(&self->trust_lock);
    router_metrics_destroy(&self->metrics);
    router_identity_wipe(&self->identity);
    if (self->home_lock >= 0)
        close(self->home_lock); /* after the inbox closed state.db */
    pthread_mutex_destroy(&self->post_mu);
    free(self);
    *self_p = NULL;
}

const uint8_t *router_node_pubkey(const router_node_t *self) { return self->identity.pk; }
const router_trust_t *router_node_trust_view(const router_node_t *self) { return self->trust; }
router_inbox_t *router_node_inbox(router_node_t *self) { return self->inbox; }
router_metrics_t *router_node_metrics(router_node_t *self) { return self->metrics; }
router_loop_t *router_node_loop(router_node_t *self) { return self->loop; }
router_broker_t *router_node_broker(router_node_t *self) { return self->broker; }
router_turns_t *router_node_turns(router_node_t *self) { return self->turns; }

void router_node_on_durable(router_node_t *self, void (*fn)(void *ud), void *ud)
{
    self->on_durable = fn;
    self->on_durable_ud = ud;
}

void router_node_use_tokens(router_node_t *self, struct router_tokens *tokens)
{
    if (self->pairing)
        router_pairing_set_lockouts(self->pairing, tokens);
}

void router_node_on_stop(router_node_t *self, void (*fn)(void *ud), void *ud)
{
    self->on_stop = fn;
    self->on_stop_ud = ud;
}

int router_node_trust(router_node_t *self, const char *name, const uint8_t pk[32],
                      const char *addr, char *err, size_t errcap)
{
    pthread_rwlock_wrlock(&self->trust_lock);
    int rc = router_trust_add(self->trust, name, pk, addr, NULL, NULL, 0, err, errcap);
    pthread_rwlock_unlock(&self->trust_lock);
    return rc;
}

/* ---------------------------------------------------------------- blocking sends */

/* One send handed from a caller's thread to the loop and back. Lives on
 * the caller's stack; the caller waits until `done`. */
typedef struct {
    router_node_t *node;
    uint8_t pk[32];                         /* the peer */
    router_addr_list_t addrs;               /* where, for TCP and UDS: dialed in turn */
    char inproc[ROUTER_INPROC_NAME_MAX + 1];/* where, for in-process ("" otherwise) */
    uint8_t *frame;                         /* signed frame */
    size_t len;
    bool oneshot;                           /* the peer's profile is meerkat (WIRE §23.1) */
    bool no_ack;                            /* the kind gets no ack, or the caller wants none */
    uint32_t timeout_ms;                    /* the ack timeout; 0: comms.ack_timeout_ms */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    router_node_receipt_t *out;
} s_send_job_t;

static void s_send_done(router_send_outcome_t outcome, const char *detail, const uint8_t *ack_id,
                        void *ud)
{
    s_send_job_t *job = ud;
    pthread_mutex_lock(&job->mu);
    job->out->outcome = outcome;
    snprintf(job->out->detail, sizeof job->out->detail, "%s", detail);
    if (ack_id)
        memcpy(job->out->ack_id, ack_id, 16);
    job->done = true;
    pthread_cond_signal(&job->cv);
    pthread_mutex_unlock(&job->mu);
}

static void s_send_on_loop(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_send_job_t *job = arg;
    router_node_t *self = job->node;
    int rc;
    if (!self->outbound || self->stopping || atomic_load(&self->ran)) {
        s_send_done(ROUTER_SEND_OFFLINE, "the node is stopping", NULL, job);
        return;
    }
    router_outbound_msg_t m = {.peer_pk = job->pk, .addr = job->addrs.addr,
                               .naddrs = job->addrs.n, .fd = -1,
                               .frame = job->frame, .len = job->len, .id = job->out->id,
                               .oneshot = job->oneshot, .no_ack = job->no_ack,
                               .timeout_ms = job->timeout_ms, .cb = s_send_done, .ud = job};
    if (job->inproc[0] && (job->oneshot || !router_outbound_connected(self->outbound, job->pk))) {
        int fd = router_inproc_dial_from(self->inproc,
                                         self->inproc_name[0] ? self->inproc_name : NULL,
                                         job->inproc);
        if (fd < 0) {
            s_send_done(ROUTER_SEND_OFFLINE, "nobody is bound at that inproc:// name", NULL, job);
            return;
        }
        m.addr = NULL;
        m.fd = fd;
    }
    rc = router_outbound_send_msg(self->outbound, &m);
    if (rc != 0) {
        char why[128];
        snprintf(why, sizeof why, "cannot send: %s", strerror(errno));
        s_send_done(ROUTER_SEND_OFFLINE, why, NULL, job);
    }
}

/* TCP peers may be named by DNS: resolve here, on the caller's thread,
 * never on the loop; every address the name has, in dialing order. */
static int s_resolve(const router_peer_addr_t *dial, router_addr_list_t *out, char *why,
                     size_t whycap)
{
    router_addr_err_t e;
    out->n = 1;
    if (dial->transport == ROUTER_PEER_UDS) {
        if (router_addr_parse(dial->path, &out->addr[0], &e) == 0)
            return 0;
        snprintf(why, whycap, "bad socket path: %s", router_addr_err_str(e));
        return -1;
    }
    if (router_addr_from_host(dial->host, dial->port, &out->addr[0], &e) == 0)
        return 0; /* a literal or localhost */
    char gai[128];
    if (router_resolve_blocking(dial->host, dial->port, out, gai, sizeof gai) == 0)
        return 0;
    snprintf(why, whycap, "cannot resolve %.100s: %.40s", dial->host, gai);
    return -1;
}

static const router_peer_t *s_find_peer(const router_trust_t *trust, const char *to)
{
    uint8_t id[16];
    if (proto_uuid_parse(to, strlen(to), id) == 0)
        return router_trust_by_peer_id(trust, id);
    return router_trust_by_name(trust, to, NULL);
}

int router_node_send(router_node_t *self, const char *to, cbor_item_t **kind,
                     router_node_receipt_t *out)
{
    return router_node_send_ex(self, to, kind, NULL, out);
}

int router_node_send_ex(router_node_t *self, const char *to, cbor_item_t **kind,
                        const router_node_send_opts_t *o, router_node_receipt_t *out)
{
    memset(out, 0, sizeof *out);
    out->outcome = ROUTER_SEND_OFFLINE;
    proto_envelope_t *env = NULL;
    s_send_job_t job = {.node = self, .out = out};
    if (o)
        job.timeout_ms = o->timeout_ms;
    int rc = -1;
    /* A reload may swap the store at any moment: copy the peer out under
     * the read lock, and use only the copy. */
    router_peer_addr_t dial;
    router_peer_profile_t profile = ROUTER_PEER_PROFILE_KITH;
    pthread_rwlock_rdlock(&self->trust_lock);
    const router_peer_t *peer = s_find_peer(self->trust, to);
    if (peer) {
        memcpy(job.pk, peer->pk, 32);
        dial = peer->dial;
        profile = peer->profile;
    }
    pthread_rwlock_unlock(&self->trust_lock);
    if (!peer) {
        snprintf(out->detail, sizeof out->detail, "no trusted peer named %s", to);
        goto done;
    }
    if (dial.transport == ROUTER_PEER_INPROC)
        snprintf(job.inproc, sizeof job.inproc, "%s", dial.path);
    else if (s_resolve(&dial, &job.addrs, out->detail, sizeof out->detail) != 0)
        goto done;
    proto_envelope_reason_t why;
    env = proto_envelope_new(NULL, self->identity.pk, job.pk, kind, &why);
    if (!env) {
        snprintf(out->detail, sizeof out->detail, "cannot build the envelope: %s",
                 why == PROTO_ENV_NO_MEMORY ? "out of memory" : proto_envelope_reason_str(why));
        goto done;
    }
    /* Toward Meerkat: only what it can read and re-verify (WIRE §23.4). */
    char mwhy[128];
    if (profile == ROUTER_PEER_PROFILE_MEERKAT &&
        proto_envelope_meerkat_check(env, mwhy, sizeof mwhy) != 0) {
        snprintf(out->detail, sizeof out->detail, "a Meerkat peer cannot read this: %.110s",
                 mwhy);
        goto done;
    }
    job.oneshot = profile == ROUTER_PEER_PROFILE_MEERKAT;
    job.no_ack = !proto_kind_acked(proto_envelope_kind(env)) || (o && o->no_ack);
    errno = 0;
    if (proto_envelope_sign(env, self->identity.sk) != 0 ||
        proto_envelope_encode_frame(env, &job.frame, &job.len) != 0) {
        snprintf(out->detail, sizeof out->detail, "cannot sign or encode the envelope%s",
                 errno == ENOMEM ? ": out of memory" : "");
        goto done;
    }
    memcpy(out->id, proto_envelope_id(env), 16);
    pthread_mutex_init(&job.mu, NULL);
    pthread_cond_init(&job.cv, NULL);
    /* Under post_mu: a job is queued before the stop's s_begin_stop, so
     * the loop runs it (and its end fails it), or not at all. */
    pthread_mutex_lock(&self->post_mu);
    int posted = -1;
    if (!atomic_load(&self->running) || atomic_load(&self->stopped))
        snprintf(out->detail, sizeof out->detail, "the node is not running");
    else if ((posted = router_loop_post(self->loop, s_send_on_loop, &job)) != 0)
        snprintf(out->detail, sizeof out->detail, "the node is busy: try again");
    pthread_mutex_unlock(&self->post_mu);
    if (posted == 0) {
        /* The loop always answers: an ack, its timeout, or shutdown. */
        pthread_mutex_lock(&job.mu);
        while (!job.done)
            pthread_cond_wait(&job.cv, &job.mu);
        pthread_mutex_unlock(&job.mu);
        rc = 0;
    }
    pthread_cond_destroy(&job.cv);
    pthread_mutex_destroy(&job.mu);
done:
    if (kind && *kind) {
        cbor_decref(kind);
    }
    proto_envelope_destroy(&env);
    free(job.frame);
    return rc;
}

int router_node_send_message(router_node_t *self, const char *to, const char *body,
                             router_node_receipt_t *out)
{
    cbor_item_t *kind = proto_kind_message(body, strlen(body), NULL, PROTO_HANDLING_NONE);
    if (!kind) {
        memset(out, 0, sizeof *out);
        snprintf(out->detail, sizeof out->detail, "out of memory");
        return -1;
    }
    return router_node_send(self, to, &kind, out);
}

/* ---------------------------------------------------------------- calls from other threads */

/* One call handed to the loop and back; lives on the caller's stack. */
typedef struct {
    router_node_t *node;
    router_node_call_fn *fn;
    void *arg;
    int rc;
    int err; /* errno on the loop after fn (or ECANCELED): the caller's errno */
    bool done;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} s_call_t;

static void s_call_on_loop(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_call_t *c = arg;
    int rc, err = ECANCELED;
    if (c->node->comms && !c->node->stopping && !atomic_load(&c->node->ran)) {
        errno = 0;
        rc = c->fn(c->node, c->arg);
        err = errno;
    } else {
        rc = -1;
    }
    pthread_mutex_lock(&c->mu);
    c->rc = rc;
    c->err = err;
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

int router_node_call(router_node_t *self, router_node_call_fn *fn, void *arg)
{
    if (atomic_load(&self->stopped) || !self->comms) {
        errno = ECANCELED;
        return -1;
    }
    if (!atomic_load(&self->running)) {
        /* Its loop has ended (a stop begun on the loop): the thread that
         * ran it owns the loop still (io_uring's single issuer), and comms
         * has drained, so nothing may run here. */
        if (self->threaded || atomic_load(&self->ran)) {
            errno = ECANCELED;
            return -1;
        }
        return fn(self, arg); /* not started: no loop thread to hand it to */
    }
    s_call_t c = {.node = self, .fn = fn, .arg = arg};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    int rc = -1;
    /* As router_node_send_ex: never queued after the stop. */
    pthread_mutex_lock(&self->post_mu);
    int posted = -1, err = ECANCELED;
    if (!atomic_load(&self->stopped) && atomic_load(&self->running) &&
        (posted = router_loop_post(self->loop, s_call_on_loop, &c)) != 0)
        err = errno; /* EAGAIN: the queue is full */
    pthread_mutex_unlock(&self->post_mu);
    if (posted == 0) {
        pthread_mutex_lock(&c.mu);
        while (!c.done)
            pthread_cond_wait(&c.cv, &c.mu);
        pthread_mutex_unlock(&c.mu);
        rc = c.rc;
        err = c.err;
    }
    pthread_cond_destroy(&c.cv);
    pthread_mutex_destroy(&c.mu);
    if (rc != 0)
        errno = err; /* the loop thread's, or why it never ran there */
    return rc;
}

/* ---------------------------------------------------------------- trust and listeners at any time */

typedef struct {
    const char *name;
    const uint8_t *pk;
    const char *addr;
    bool persist;
    char *err;
    size_t errcap;
} s_trust_set_t;

/* Appends p to t whole: meta and profile too, so an edit of one row never
 * turns a Meerkat peer into a kith one. 0, or -1 with err. */
static int s_trust_add_row(router_trust_t *t, const router_peer_t *p, char *err, size_t errcap)
{
    if (router_trust_add(t, p->name, p->pk, p->addr, p->description, p->labels, p->nlabels, err,
                         errcap) != 0)
        return -1;
    /* Cannot fail: the row was just added. */
    (void) router_trust_set_profile(t, router_trust_at(t, router_trust_count(t) - 1), p->profile);
    return 0;
}

/* Appends to `next` every row of `from`, whole. 0, or -1 with err. */
static int s_trust_copy_rows(router_trust_t *next, const router_trust_t *from, char *err,
                             size_t errcap)
{
    for (size_t i = 0; i < router_trust_count(from); i++)
        if (s_trust_add_row(next, router_trust_at(from, i), err, errcap) != 0)
            return -1;
    return 0;
}

/* A new store with every row of `from`, or NULL with err. */
static router_trust_t *s_trust_dup(const router_trust_t *from, char *err, size_t errcap)
{
    router_trust_t *t = router_trust_new();
    if (!t) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    if (s_trust_copy_rows(t, from, err, errcap) != 0)
        router_trust_destroy(&t);
    return t;
}

/* Removes from t every row with key pk or name `name` (NULL: matches none). */
static void s_trust_drop(router_trust_t *t, const uint8_t *pk, const char *name)
{
    for (size_t i = router_trust_count(t); i-- > 0;) {
        const router_peer_t *p = router_trust_at(t, i);
        if ((pk && memcmp(p->pk, pk, 32) == 0) || (name && strcmp(p->name, name) == 0))
            (void) router_trust_remove(t, p);
    }
}

static bool s_text_same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool s_peer_same(const router_peer_t *a, const router_peer_t *b)
{
    if (memcmp(a->pk, b->pk, 32) != 0 || strcmp(a->name, b->name) != 0 ||
        strcmp(a->addr, b->addr) != 0 || a->profile != b->profile ||
        !s_text_same(a->description, b->description) || a->nlabels != b->nlabels)
        return false;
    for (size_t i = 0; i < a->nlabels; i++)
        if (strcmp(a->labels[i].key, b->labels[i].key) != 0 ||
            strcmp(a->labels[i].value, b->labels[i].value) != 0)
            return false;
    return true;
}

/* Whether a and b hold the same rows with key pk or name `name`. */
static bool s_trust_same_rows(const router_trust_t *a, const router_trust_t *b,
                              const uint8_t pk[32], const char *name)
{
    size_t na = 0, nb = 0;
    for (size_t i = 0; i < router_trust_count(a); i++) {
        const router_peer_t *p = router_trust_at(a, i);
        if (memcmp(p->pk, pk, 32) != 0 && strcmp(p->name, name) != 0)
            continue;
        const router_peer_t *q = router_trust_by_pubkey(b, p->pk);
        if (!q || !s_peer_same(p, q))
            return false;
        na++;
    }
    for (size_t i = 0; i < router_trust_count(b); i++) {
        const router_peer_t *p = router_trust_at(b, i);
        nb += memcmp(p->pk, pk, 32) == 0 || strcmp(p->name, name) == 0;
    }
    return na == nb;
}

/* Under the file's lock, before an edit: a noted set whose rows the file
 * holds otherwise than the store in force was changed since by another
 * writer (or never saved): a restore leaves those rows as they are. */
static void s_trust_notes_check(router_node_t *self, const router_trust_t *file)
{
    size_t kept = 0;
    for (size_t i = 0; i < self->ntrust_sets; i++)
        if (s_trust_same_rows(file, self->trust, self->trust_sets[i].pk, self->trust_sets[i].name))
            self->trust_sets[kept++] = self->trust_sets[i];
    self->ntrust_sets = kept;
}

/* Puts `next` (taken) in force, as a reload does, and says what changed. */
static void s_trust_swap(router_node_t *self, router_trust_t *next, const char *why)
{
    router_trust_diff_t d;
    router_trust_diff(self->trust, next, &d);
    pthread_rwlock_wrlock(&self->trust_lock);
    router_trust_t *old = self->trust;
    self->trust = next;
    pthread_rwlock_unlock(&self->trust_lock);
    router_comms_set_trust(self->comms, next);
    router_trust_destroy(&old);
    if (d.added + d.removed + d.changed == 0)
        return;
    ROUTER_LOG(ROUTER_LOG_INFO, "trust", "changed (%s): %zu peers; %s", why,
               router_trust_count(next), d.text);
    s_audit_trust(self, "trust_changed", why, &d, NULL);
}

/* One change to a store, in place: 0 when it changed it, 1 when there was
 * nothing to change, -1 with err. */
typedef int(s_trust_change_fn)(router_node_t *self, router_trust_t *t, void *job, char *err,
                               size_t errcap);

/* A change on its way through router_trust_edit. */
typedef struct {
    router_node_t *node;
    s_trust_change_fn *change;
    void *job;
    router_trust_t *next; /* a copy of the file as changed: what the node puts in force */
    bool same;            /* nothing to change: the file stays, and is put in force */
} s_trust_edit_t;

/* router_trust_edit_fn: the change on the file as it is now, under its
 * lock, and a copy of the result for the node. */
static int s_trust_edit_file(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    s_trust_edit_t *e = ud;
    s_trust_notes_check(e->node, t);
    int r = e->change(e->node, t, e->job, err, errcap);
    if (r < 0 || !(e->next = s_trust_dup(t, err, errcap)))
        return -1;
    if (r == 1) {
        e->same = true;
        return -1; /* nothing to save */
    }
    return 0;
}

/* On the loop (or before it runs): applies `change`. With persist and a
 * home, to trusted_peers.json as it is now, under its lock
 * (router_trust_edit, as `kith peers`, pairing and the REST routes edit
 * it), and the store saved is the one put in force: rows other writers
 * added since the node read the file stay, in the file and in force, as a
 * reload would have them. Otherwise to a copy of the store in force. A
 * change or save that fails changes nothing. Blocking file I/O (the file
 * lock, fsync) on the loop thread: a library node's loop serves only its
 * own calls, and other writers hold the lock for one save. 0, or -1 with
 * err. */
static int s_trust_apply(router_node_t *self, s_trust_change_fn *change, void *job, bool persist,
                         const char *why, char *err, size_t errcap)
{
    router_trust_t *next;
    if (persist && self->home[0]) {
        s_trust_edit_t e = {.node = self, .change = change, .job = job};
        if (router_trust_edit(self->home, s_trust_edit_file, &e, err, errcap) != 0 && !e.same) {
            router_trust_destroy(&e.next);
            return -1;
        }
        next = e.next;
    } else {
        if (!(next = s_trust_dup(self->trust, err, errcap)))
            return -1;
        int r = change(self, next, job, err, errcap);
        if (r != 0) {
            router_trust_destroy(&next);
            return r < 0 ? -1 : 0;
        }
    }
    s_trust_swap(self, next, why);
    return 0;
}

/* Drops the rows with the key or the name, adds the new row; 1 when it
 * is the only row with that name and its key's row already. */
static int s_trust_set_change(router_node_t *self, router_trust_t *t, void *arg, char *err,
                              size_t errcap)
{
    (void) self;
    s_trust_set_t *j = arg;
    const router_peer_t *same = router_trust_by_pubkey(t, j->pk);
    size_t named = 0;
    (void) router_trust_by_name(t, j->name, &named);
    if (same && named == 1 && strcmp(same->name, j->name) == 0 && strcmp(same->addr, j->addr) == 0)
        return 1; /* already so */
    s_trust_drop(t, j->pk, j->name);
    return router_trust_add(t, j->name, j->pk, j->addr, NULL, NULL, 0, err, errcap);
}

/* On the loop (or before it runs): notes a key and name a trust_set
 * wrote, for router_node_trust_restore to know which rows to put back;
 * the oldest note goes when there is no room. */
static void s_trust_note(router_node_t *self, const uint8_t pk[32], const char *name)
{
    size_t i = 0;
    while (i < self->ntrust_sets && (memcmp(self->trust_sets[i].pk, pk, 32) != 0 ||
                                     strcmp(self->trust_sets[i].name, name) != 0))
        i++;
    if (i < self->ntrust_sets)
        return;
    if (self->ntrust_sets == S_TRUST_SETS_MAX) {
        memmove(&self->trust_sets[0], &self->trust_sets[1],
                (S_TRUST_SETS_MAX - 1) * sizeof self->trust_sets[0]);
        self->ntrust_sets--;
    }
    i = self->ntrust_sets++;
    memcpy(self->trust_sets[i].pk, pk, 32);
    snprintf(self->trust_sets[i].name, sizeof self->trust_sets[i].name, "%s", name);
}

/* On the loop (or before it runs). */
static int s_trust_set(router_node_t *self, void *arg)
{
    s_trust_set_t *j = arg;
    if (s_trust_apply(self, s_trust_set_change, j, j->persist, "router_node_trust_set", j->err,
                      j->errcap) != 0)
        return -1;
    s_trust_note(self, j->pk, j->name);
    return 0;
}

int router_node_trust_set(router_node_t *self, const char *name, const uint8_t pk[32],
                          const char *addr, bool persist, char *err, size_t errcap)
{
    s_trust_set_t j = {name, pk, addr, persist, err, errcap};
    err[0] = '\0';
    int rc = router_node_call(self, s_trust_set, &j);
    if (rc != 0 && !err[0])
        snprintf(err, errcap, "%s",
                 errno == EAGAIN ? "the node is busy: try again" : "the node is stopping");
    return rc;
}

router_trust_t *router_node_trust_copy(router_node_t *self, char *err, size_t errcap)
{
    /* The store in force is never edited, only swapped (under the write
     * lock): reading it under the read lock is safe from any thread. */
    pthread_rwlock_rdlock(&self->trust_lock);
    router_trust_t *copy = s_trust_dup(self->trust, err, errcap);
    pthread_rwlock_unlock(&self->trust_lock);
    return copy;
}

typedef struct {
    router_trust_t *store; /* the copy to go back to (the caller's) */
    bool persist;
    char *err;
    size_t errcap;
} s_trust_restore_t;

/* In t, the rows with key pk or name `name` become those of `to`; 0, 1
 * when the store in force and `to` agree on them already, -1 with err. */
static int s_trust_put_back(router_node_t *self, router_trust_t *t, const router_trust_t *to,
                            const uint8_t pk[32], const char *name, char *err, size_t errcap)
{
    if (s_trust_same_rows(to, self->trust, pk, name))
        return 1;
    s_trust_drop(t, pk, name);
    for (size_t i = 0; i < router_trust_count(to); i++) {
        const router_peer_t *p = router_trust_at(to, i);
        if (memcmp(p->pk, pk, 32) != 0 && strcmp(p->name, name) != 0)
            continue;
        s_trust_drop(t, p->pk, NULL); /* its key, renamed since by someone else */
        if (s_trust_add_row(t, p, err, errcap) != 0)
            return -1;
    }
    return 0;
}

/* Undoes the noted trust_sets the copy disagrees with: only the rows
 * they wrote or dropped go back to the copy's, so rows another writer
 * added to the file meanwhile (`kith peers add`) stay. */
static int s_trust_restore_change(router_node_t *self, router_trust_t *t, void *arg, char *err,
                                  size_t errcap)
{
    s_trust_restore_t *j = arg;
    int changed = 1;
    for (size_t i = 0; i < self->ntrust_sets; i++) {
        int r = s_trust_put_back(self, t, j->store, self->trust_sets[i].pk,
                                 self->trust_sets[i].name, err, errcap);
        if (r < 0)
            return -1;
        changed &= r;
    }
    return changed;
}

static int s_trust_restore(router_node_t *self, void *arg)
{
    s_trust_restore_t *j = arg;
    if (s_trust_apply(self, s_trust_restore_change, j, j->persist, "router_node_trust_restore",
                      j->err, j->errcap) != 0)
        return -1;
    self->ntrust_sets = 0;
    return 0;
}

int router_node_trust_restore(router_node_t *self, router_trust_t **store_p, bool persist,
                              char *err, size_t errcap)
{
    s_trust_restore_t j = {*store_p, persist, err, errcap};
    *store_p = NULL;
    err[0] = '\0';
    int rc = router_node_call(self, s_trust_restore, &j);
    router_trust_destroy(&j.store);
    if (rc != 0 && !err[0])
        snprintf(err, errcap, "%s",
                 errno == EAGAIN ? "the node is busy: try again" : "the node is stopping");
    return rc;
}

typedef struct {
    const char *addr;
    uint16_t port;
    char *err;
    size_t errcap;
} s_listen_call_t;

static int s_listen_call(router_node_t *self, void *arg)
{
    s_listen_call_t *j = arg;
    return s_listen_one(self, j->addr, false, j->err, j->errcap, &j->port);
}

int router_node_listen(router_node_t *self, const char *addr, char *err, size_t errcap)
{
    s_listen_call_t j = {.addr = addr, .err = err, .errcap = errcap};
    err[0] = '\0';
    if (router_node_call(self, s_listen_call, &j) != 0) {
        if (!err[0])
            snprintf(err, errcap, "%s",
                     errno == EAGAIN ? "the node is busy: try again" : "the node is stopping");
        return -1;
    }
    return j.port;
}
