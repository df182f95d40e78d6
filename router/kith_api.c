/* router/kith_api.c — the public library (router/kith.h, DESIGN §13) over
 * router_node_*: nets are faulty inproc namespaces, nodes are router nodes
 * on their own threads, messages are inbox entries shown as JSON. The only
 * file built with kith_* symbols visible; everything it pulls in stays
 * hidden in libkith.so. */
#include "router/kith.h"

#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#include "proto/envelope.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/net/inproc.h"
#include "router/net/inproc_relay.h"
#include "router/node.h"
#include "router/state/config.h"
#include "router/state/home.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"
#include "router/comms/envelope_json.h"

/* Room for a kith_last_error() line. */
#define S_ERROR_CAP 512
/* Destroyed nodes' shells a net keeps at most (see kith_node_destroy):
 * past it the oldest goes, so a harness that restarts nodes for ever in
 * one net does not grow without bound. */
#ifndef S_SHELLS_MAX /* tests/kith_api_inside_test.c sets a small one */
#define S_SHELLS_MAX 1024
#endif
/* A recv waiting for an entry looks again at least this often, should a
 * wake-up be missed (the loop's post queue was full). */
#define S_RECV_SLICE_MS 50

struct kith_net {
    router_inproc_t *inproc; /* the namespace, with fault injection */
    pthread_mutex_t mu;      /* guards nodes and fault read-modify-writes */
    pthread_mutex_t trust_mu; /* one kith_node_trust at a time: its undo puts back a
                               * whole store, which must not lose another's edit */
    kith_node_t *nodes;      /* nodes not yet destroyed */
    kith_node_t *shells;     /* destroyed nodes' shells, newest first (prev, next) */
    kith_node_t *shells_tail; /* ...and the oldest */
    size_t nshells;          /* how many */
};

struct kith_node {
    kith_net_t *net;                        /* owner */
    router_node_t *node;                    /* running on its own thread */
    char name[ROUTER_PEER_NAME_MAX + 1];    /* also inproc://<name> */
    char pubkey[PROTO_PUBKEY_TEXT_CAP];     /* "ed25519:…" */
    bool home;                              /* state kept in a home: persist trust */
    bool dead;                              /* destroy has begun (net->mu) */
    bool shelved;                           /* destroyed: a shell in net->shells (net->mu) */
    kith_node_t *prev, *next;               /* in net->nodes, or in net->shells */
    pthread_mutex_t mu;                     /* guards the five below */
    pthread_cond_t idle;                    /* signalled when calls drops to 0 while closing */
    pthread_cond_t arrived;                 /* signalled on arrivals and on closing */
    unsigned calls;                         /* calls on other threads using the node now */
    uint64_t arrivals;                      /* counts admissions and durable batches */
    bool closing;                           /* destroy has begun: new calls are refused */
    bool gone;                              /* destroy has ended: only the shell is left */
    pthread_mutex_t recv_mu;                /* one recv takes, converts and forgets at a time */
};

struct kith_msg {
    char *json;          /* {"id","from","kind"} */
    uint8_t id[16];      /* the envelope's id */
    uint8_t from[32];    /* its sender */
    proto_kind_t kind;   /* its kind.type */
};

/* ---------------------------------------------------------------- errors */

static _Thread_local char s_error[S_ERROR_CAP];

static int s_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int s_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s_error, sizeof s_error, fmt, ap);
    va_end(ap);
    return -1;
}

const char *kith_last_error(void)
{
    return s_error;
}

const char *kith_version(void)
{
    return KITH_VERSION;
}

/* ---------------------------------------------------------------- once per process */

static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static bool s_ready;

/* libsodium, and a quiet logger: a test harness wants warnings, not a line
 * per admitted envelope (KITH_LOG overrides). */
static void s_init(void)
{
    if (sodium_init() < 0)
        return;
    router_log_level_t level = ROUTER_LOG_WARN;
    const char *env = getenv("KITH_LOG");
    bool bad = env && router_log_level_parse(env, &level) != 0;
    if (bad)
        level = ROUTER_LOG_WARN;
    router_log_set_level(level);
    if (bad) /* said once, so a misspelt level is not taken for silence */
        ROUTER_LOG(ROUTER_LOG_WARN, "kith", "KITH_LOG=%.40s is not debug, info, warn or error: "
                   "logging warnings and errors", env);
    s_ready = true;
}

/* ---------------------------------------------------------------- nets */

kith_net_t *kith_net_new(void)
{
    pthread_once(&s_once, s_init);
    if (!s_ready) {
        s_fail("libsodium failed to initialise");
        return NULL;
    }
    kith_net_t *net = calloc(1, sizeof *net);
    if (!net) {
        s_fail("out of memory");
        return NULL;
    }
    if (!(net->inproc = router_inproc_new_faulty())) {
        s_fail("cannot make the in-process namespace: %s", strerror(errno));
        free(net);
        return NULL;
    }
    pthread_mutex_init(&net->mu, NULL);
    pthread_mutex_init(&net->trust_mu, NULL);
    return net;
}

/* A call begins using n: 0, or -1 (error set) when n is being destroyed. */
static int s_enter(kith_node_t *n, const char *what)
{
    pthread_mutex_lock(&n->mu);
    bool closing = n->closing, gone = n->gone;
    if (!closing)
        n->calls++;
    pthread_mutex_unlock(&n->mu);
    if (closing)
        return s_fail("%s: %s %s", what, n->name, gone ? "was destroyed" : "is being destroyed");
    return 0;
}

static void s_leave(kith_node_t *n)
{
    pthread_mutex_lock(&n->mu);
    if (--n->calls == 0 && n->closing)
        pthread_cond_broadcast(&n->idle);
    pthread_mutex_unlock(&n->mu);
}

/* Stops n once no other thread uses it: the stop fails the sends blocked
 * on other threads (offline), and receivers see `closing` within a slice,
 * so none is left waiting on a freed node. What is left is a shell that
 * refuses every call (s_enter): s_node_release frees it. */
static void s_node_stop(kith_node_t *n)
{
    pthread_mutex_lock(&n->mu);
    n->closing = true;
    pthread_cond_broadcast(&n->arrived); /* receivers waiting return */
    pthread_mutex_unlock(&n->mu);
    router_node_stop(n->node);
    pthread_mutex_lock(&n->mu);
    while (n->calls)
        pthread_cond_wait(&n->idle, &n->mu);
    pthread_mutex_unlock(&n->mu);
    router_node_destroy(&n->node);
    pthread_mutex_lock(&n->mu);
    n->gone = true;
    pthread_mutex_unlock(&n->mu);
}

static void s_node_release(kith_node_t *n)
{
    pthread_cond_destroy(&n->idle);
    pthread_cond_destroy(&n->arrived);
    pthread_mutex_destroy(&n->mu);
    pthread_mutex_destroy(&n->recv_mu);
    free(n);
}

void kith_net_destroy(kith_net_t **net_p)
{
    if (!net_p || !*net_p)
        return;
    kith_net_t *net = *net_p;
    pthread_mutex_lock(&net->mu);
    kith_node_t *nodes = net->nodes;
    net->nodes = NULL;
    pthread_mutex_unlock(&net->mu);
    while (nodes) {
        kith_node_t *n = nodes;
        nodes = n->next;
        s_node_stop(n);
        s_node_release(n);
    }
    while (net->shells) {
        kith_node_t *n = net->shells;
        net->shells = n->next;
        s_node_release(n);
    }
    router_inproc_destroy(&net->inproc);
    pthread_mutex_destroy(&net->mu);
    pthread_mutex_destroy(&net->trust_mu);
    free(net);
    *net_p = NULL;
}

/* ---------------------------------------------------------------- nodes */

/* On n's loop thread: something may be there for a recv. */
static void s_arrival(kith_node_t *n)
{
    pthread_mutex_lock(&n->mu);
    n->arrivals++;
    pthread_cond_broadcast(&n->arrived);
    pthread_mutex_unlock(&n->mu);
}

static void s_on_event(const router_comms_event_t *ev, void *ud)
{
    if (ev->admitted)
        s_arrival(ud);
}

static void s_on_durable(void *ud)
{
    s_arrival(ud);
}

kith_node_t *kith_node_new(kith_net_t *net, const char *name, const char *home)
{
    char err[ROUTER_TRUST_ERR_MAX] = "";
    if (!net || !name) {
        s_fail("kith_node_new: net and name are required");
        return NULL;
    }
    if (!router_peer_name_valid(name)) {
        s_fail("kith_node_new: bad name \"%.80s\": 1..64 of [A-Za-z0-9._-]", name);
        return NULL;
    }
    if (home && (!home[0] || router_home_mkdirs(home, 0700) != 0)) {
        s_fail("kith_node_new: cannot make the home \"%.200s\": %s", home,
               home[0] ? strerror(errno) : "empty path");
        return NULL;
    }
    kith_node_t *n = calloc(1, sizeof *n);
    if (!n) {
        s_fail("out of memory");
        return NULL;
    }
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->idle, NULL);
    pthread_cond_init(&n->arrived, NULL);
    pthread_mutex_init(&n->recv_mu, NULL);
    router_config_t cfg;
    router_config_defaults(&cfg);
    /* A library process runs many nodes: each verifies on its own loop
     * thread, as deterministic as before the crypto pool (WIRE §14.12). */
    cfg.comms.crypto_threads = 0;
    router_node_opts_t o = {
        .home = home,
        .config = &cfg,
        .inproc = net->inproc,
        .inproc_name = name,
    };
    if (!(n->node = router_node_new(&o, err, sizeof err))) {
        s_fail("kith_node_new %s: %s", name, err);
        s_node_stop(n);
        s_node_release(n);
        return NULL;
    }
    /* Wake receivers when an entry may have become takeable: at admission
     * (a memory inbox), and after each durable batch (a home's). */
    router_node_set_event_sink(n->node, s_on_event, n);
    router_node_on_durable(n->node, s_on_durable, n);
    if (router_node_start(n->node) != 0) {
        s_fail("kith_node_new %s: cannot start its thread: %s", name, strerror(errno));
        s_node_stop(n);
        s_node_release(n);
        return NULL;
    }
    n->net = net;
    n->home = home != NULL;
    snprintf(n->name, sizeof n->name, "%s", name);
    proto_pubkey_format(router_node_pubkey(n->node), n->pubkey, sizeof n->pubkey);
    pthread_mutex_lock(&net->mu);
    n->next = net->nodes;
    if (net->nodes)
        net->nodes->prev = n;
    net->nodes = n;
    pthread_mutex_unlock(&net->mu);
    return n;
}

/* Off net->shells. Caller holds net->mu. */
static void s_shell_unlink(kith_net_t *net, kith_node_t *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        net->shells = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        net->shells_tail = n->prev;
    n->prev = n->next = NULL;
    net->nshells--;
}

/* The node stops and is freed but for a shell, which refuses the calls
 * still coming with its pointer: a caller whose call was on its way in
 * when another thread destroyed the node (the Python module's threads)
 * gets an error, not a freed node. The shell goes with the net, or when
 * the pointer is destroyed again (the Python module does, once its calls
 * have left), or when S_SHELLS_MAX newer ones push it out. */
void kith_node_destroy(kith_node_t **node_p)
{
    if (!node_p || !*node_p)
        return;
    kith_node_t *n = *node_p;
    kith_net_t *net = n->net;
    *node_p = NULL;
    pthread_mutex_lock(&net->mu);
    if (n->dead) {
        bool shelved = n->shelved; /* else: its first destroy is still running */
        if (shelved)
            s_shell_unlink(net, n);
        pthread_mutex_unlock(&net->mu);
        if (shelved)
            s_node_release(n);
        return;
    }
    n->dead = true;
    if (n->prev)
        n->prev->next = n->next;
    else
        net->nodes = n->next;
    if (n->next)
        n->next->prev = n->prev;
    n->prev = n->next = NULL;
    pthread_mutex_unlock(&net->mu);
    s_node_stop(n);
    kith_node_t *old = NULL;
    pthread_mutex_lock(&net->mu);
    n->shelved = true;
    n->next = net->shells;
    if (net->shells)
        net->shells->prev = n;
    else
        net->shells_tail = n;
    net->shells = n;
    if (++net->nshells > S_SHELLS_MAX) {
        old = net->shells_tail;
        s_shell_unlink(net, old);
    }
    pthread_mutex_unlock(&net->mu);
    if (old)
        s_node_release(old);
}

const char *kith_node_pubkey(const kith_node_t *n)
{
    if (!n) {
        s_fail("kith_node_pubkey: no node");
        return NULL;
    }
    return n->pubkey;
}

/* One direction of kith_node_trust: `self` trusts `peer`. */
static int s_trust_one(kith_node_t *self, const kith_node_t *peer)
{
    char addr[ROUTER_INPROC_NAME_MAX + 16], err[ROUTER_TRUST_ERR_MAX];
    snprintf(addr, sizeof addr, "inproc://%s", peer->name);
    if (router_node_trust_set(self->node, peer->name, router_node_pubkey(peer->node), addr,
                              self->home, err, sizeof err) != 0)
        return s_fail("kith_node_trust: %s cannot trust %s: %s", self->name, peer->name, err);
    return 0;
}

/* All or nothing: a's store is copied first and put back when b's edit
 * fails, so a failed call never leaves a trusting b while b refuses a. */
int kith_node_trust(kith_node_t *a, kith_node_t *b)
{
    char err[ROUTER_TRUST_ERR_MAX], why[S_ERROR_CAP];
    if (!a || !b)
        return s_fail("kith_node_trust: two nodes are required");
    if (a == b)
        return s_fail("kith_node_trust: a node does not need to trust itself");
    if (a->net != b->net)
        return s_fail("kith_node_trust: %s and %s are in different nets", a->name, b->name);
    if (s_enter(a, "kith_node_trust") != 0)
        return -1;
    if (s_enter(b, "kith_node_trust") != 0) {
        s_leave(a);
        return -1;
    }
    int rc = -1;
    pthread_mutex_lock(&a->net->trust_mu);
    router_trust_t *undo = router_node_trust_copy(a->node, err, sizeof err);
    if (!undo) {
        s_fail("kith_node_trust: %s: %s", a->name, err);
        goto done;
    }
    if (s_trust_one(a, b) != 0)
        goto done;
    if (s_trust_one(b, a) != 0) {
        snprintf(why, sizeof why, "%s", s_error);
        if (router_node_trust_restore(a->node, &undo, a->home, err, sizeof err) != 0)
            s_fail("%.300s; and %s still trusts %s: %.150s", why, a->name, b->name, err);
        goto done;
    }
    rc = 0;
done:
    router_trust_destroy(&undo);
    pthread_mutex_unlock(&a->net->trust_mu);
    s_leave(b);
    s_leave(a);
    return rc;
}

int kith_node_listen(kith_node_t *n, const char *addr)
{
    char err[256];
    if (!n || !addr)
        return s_fail("kith_node_listen: node and address are required");
    if (strncmp(addr, "tcp://", 6) != 0 && strncmp(addr, "uds://", 6) != 0)
        return s_fail("kith_node_listen: \"%.200s\" is not tcp://HOST:PORT or uds:///PATH", addr);
    if (s_enter(n, "kith_node_listen") != 0)
        return -1;
    int port = router_node_listen(n->node, addr, err, sizeof err);
    s_leave(n);
    if (port < 0)
        return s_fail("kith_node_listen %s: %s", n->name, err);
    return port;
}

/* ---------------------------------------------------------------- sending */

/* `to` as router_node_send takes it: an "ed25519:…" key becomes its
 * PeerId. Returns 0, or -1 with why[whycap] set. */
static int s_peer(const char *to, char *out, size_t cap, char *why, size_t whycap)
{
    if (!to || !to[0]) {
        snprintf(why, whycap, "no peer named");
        return -1;
    }
    if (strncmp(to, "ed25519:", 8) == 0) {
        uint8_t pk[PROTO_PUBKEY_LEN], id[16];
        if (proto_pubkey_parse(to, strlen(to), pk) != 0) {
            snprintf(why, whycap, "\"%.80s\" is not an ed25519 public key", to);
            return -1;
        }
        proto_peer_id(pk, id);
        proto_uuid_format(id, out);
        return 0;
    }
    if (strlen(to) >= cap) {
        snprintf(why, whycap, "no trusted peer named %.80s…", to);
        return -1;
    }
    strcpy(out, to);
    return 0;
}

/* Sends *kind (taken) and maps the receipt to KITH_*. */
static int s_send(kith_node_t *n, const char *what, const char *to, cbor_item_t **kind,
                  int timeout_ms, bool no_ack)
{
    char peer[PROTO_UUID_TEXT_CAP + ROUTER_PEER_NAME_MAX], why[160];
    if (s_peer(to, peer, sizeof peer, why, sizeof why) != 0) {
        cbor_decref(kind);
        return s_fail("%s: %s", what, why);
    }
    router_node_send_opts_t o = {
        .timeout_ms = timeout_ms > 0 ? (uint32_t) timeout_ms : KITH_TIMEOUT_DEFAULT_MS,
        .no_ack = no_ack,
    };
    router_node_receipt_t r;
    if (s_enter(n, what) != 0) {
        cbor_decref(kind);
        return KITH_ERROR;
    }
    int rc = router_node_send_ex(n->node, peer, kind, &o, &r);
    s_leave(n);
    if (rc != 0)
        return s_fail("%s: %s", what, r.detail);
    switch (r.outcome) {
    case ROUTER_SEND_ACKED:
    case ROUTER_SEND_SENT: /* a kind that is never acked (response): written */
        return KITH_ACKED;
    case ROUTER_SEND_REJECTED:
        s_fail("%s to %s refused: %s", what, to, r.detail);
        return KITH_REFUSED;
    case ROUTER_SEND_OFFLINE:
        break;
    }
    s_fail("%s to %s: offline: %s", what, to, r.detail);
    return KITH_OFFLINE;
}

int kith_node_send(kith_node_t *n, const char *to, const char *body, int timeout_ms)
{
    if (!n || !body)
        return s_fail("kith_node_send: node and body are required");
    cbor_item_t *kind = proto_kind_message(body, strlen(body), NULL, PROTO_HANDLING_NONE);
    if (!kind)
        return s_fail("kith_node_send: out of memory");
    return s_send(n, "kith_node_send", to, &kind, timeout_ms, false);
}

/* JSON text (NULL: null) as a new CBOR value, or NULL with the error set. */
static cbor_item_t *s_value(const char *what, const char *field, const char *json)
{
    char err[256];
    cbor_item_t *v = json ? router_json_to_cbor(json, strlen(json), err, sizeof err)
                          : cbor_new_null();
    if (!v)
        s_fail("%s: %s: %s", what, field, json ? err : "out of memory");
    return v;
}

int kith_node_request(kith_node_t *n, const char *to, const char *intent,
                      const char *params_json, int timeout_ms)
{
    if (!n || !intent)
        return s_fail("kith_node_request: node and intent are required");
    cbor_item_t *params = s_value("kith_node_request", "params_json", params_json);
    if (!params)
        return -1;
    cbor_item_t *kind = proto_kind_request(intent, strlen(intent), &params, NULL,
                                           PROTO_HANDLING_NONE);
    if (!kind)
        return s_fail("kith_node_request: out of memory");
    return s_send(n, "kith_node_request", to, &kind, timeout_ms, false);
}

int kith_node_respond(kith_node_t *n, const kith_msg_t *request, const char *status,
                      const char *result_json, int timeout_ms)
{
    static const struct {
        const char *text;
        proto_status_t status;
    } s_statuses[] = {
        {"accepted", PROTO_STATUS_ACCEPTED},
        {"completed", PROTO_STATUS_COMPLETED},
        {"failed", PROTO_STATUS_FAILED},
    };
    if (!n || !request || !status)
        return s_fail("kith_node_respond: node, request and status are required");
    if (request->kind != PROTO_KIND_REQUEST)
        return s_fail("kith_node_respond: the message is a %s, not a request",
                      proto_kind_str(request->kind));
    proto_status_t st = PROTO_STATUS_NONE;
    for (size_t i = 0; i < sizeof s_statuses / sizeof s_statuses[0]; i++)
        if (strcmp(status, s_statuses[i].text) == 0)
            st = s_statuses[i].status;
    if (st == PROTO_STATUS_NONE)
        return s_fail("kith_node_respond: status \"%.40s\" is not accepted, completed or failed",
                      status);
    cbor_item_t *result = s_value("kith_node_respond", "result_json", result_json);
    if (!result)
        return -1;
    cbor_item_t *kind = proto_kind_response(request->id, st, &result);
    if (!kind)
        return s_fail("kith_node_respond: out of memory");
    char to[PROTO_PUBKEY_TEXT_CAP];
    proto_pubkey_format(request->from, to, sizeof to);
    return s_send(n, "kith_node_respond", to, &kind, timeout_ms, true);
}

/* ---------------------------------------------------------------- receiving */

/* {"id","from","kind"} of env into m->json. 0; -1 when the kind has no
 * JSON form (router_cbor_to_json); -2 when out of memory. */
static int s_msg_json(kith_msg_t *m, const proto_envelope_t *env)
{
    char id[PROTO_UUID_TEXT_CAP], from[PROTO_PUBKEY_TEXT_CAP];
    const unsigned char *buf;
    size_t len;
    int rc = -2;
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return -2;
    proto_uuid_format(m->id, id);
    proto_pubkey_format(m->from, from, sizeof from);
    if (yajl_gen_map_open(g) != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *) "id", 2) != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *) id, strlen(id)) != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *) "from", 4) != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *) from, strlen(from)) != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *) "kind", 4) != yajl_gen_status_ok)
        goto done;
    errno = 0; /* it fails alike for both: only an allocator sets ENOMEM */
    if (router_envelope_kind_to_json(g, env) != 0) {
        rc = errno == ENOMEM ? -2 : -1;
        goto done;
    }
    if (yajl_gen_map_close(g) != yajl_gen_status_ok ||
        yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
        goto done;
    if (!(m->json = malloc(len + 1)))
        goto done;
    memcpy(m->json, buf, len);
    m->json[len] = '\0';
    rc = 0;
done:
    yajl_gen_free(g);
    return rc;
}

/* The oldest entry nobody has taken, as a message: 0 with *msg_p set, 1
 * when there is none, -1 with the error set. The entry is leased while
 * its message is made and forgotten only once that worked: out of memory
 * anywhere gives it back for the next recv (router_inbox_untake), so an
 * acked envelope is never lost to a passing shortage — not even when the
 * node is destroyed before that recv, since a home's state.db still has it. */
static int s_take(kith_node_t *n, kith_msg_t **msg_p)
{
    router_inbox_t *inbox = router_node_inbox(n->node);
    router_inbox_entry_t e = {0};
    proto_envelope_t *env = NULL;
    int rc = -1;
    pthread_mutex_lock(&n->recv_mu);
    kith_msg_t *m = calloc(1, sizeof *m);
    if (!m) {
        s_fail("kith_node_recv: out of memory");
        goto unlock;
    }
    errno = 0;
    if (router_inbox_take(inbox, &e) != 0) {
        if (errno == ENOMEM) /* the copy: the entry stays */
            s_fail("kith_node_recv: out of memory (the envelope stays for the next recv)");
        else
            rc = 1;
        goto unlock;
    }
    proto_envelope_reason_t why;
    if (proto_envelope_decode(e.frame, e.frame_len, &env, &why) != 0) {
        if (why == PROTO_ENV_NO_MEMORY)
            goto untake;
        /* Only plain event listeners admit anything else, and library
         * nodes have none. Given out once, as the error. */
        if (router_inbox_done(inbox, e.seq) != 0)
            goto untake;
        s_fail("kith_node_recv: an inbox entry (%s) that is not an envelope: %s", e.kind,
               proto_envelope_reason_str(why));
        goto unlock;
    }
    memcpy(m->id, proto_envelope_id(env), 16);
    memcpy(m->from, proto_envelope_from(env), 32);
    m->kind = proto_envelope_kind(env);
    int made = s_msg_json(m, env);
    if (made == -2)
        goto untake;
    if (router_inbox_done(inbox, e.seq) != 0)
        goto untake;
    if (made != 0) {
        /* Admitted from a program that is not a kith library (listen):
         * a value JSON cannot carry. Given out once, as the error. */
        char from[PROTO_PUBKEY_TEXT_CAP];
        proto_pubkey_format(m->from, from, sizeof from);
        s_fail("kith_node_recv: the %s from %s has no JSON form (WIRE §22)", e.kind, from);
        goto unlock;
    }
    *msg_p = m;
    m = NULL;
    rc = 0;
    goto unlock;
untake:
    (void) router_inbox_untake(inbox, e.seq);
    s_fail("kith_node_recv: out of memory (the envelope stays for the next recv)");
unlock:
    pthread_mutex_unlock(&n->recv_mu);
    router_inbox_entry_clear(&e);
    proto_envelope_destroy(&env);
    kith_msg_destroy(&m);
    return rc;
}

/* kith_node_recv, with n entered: takes, or waits for an arrival (or a
 * slice, or the destroy) and takes again, until the deadline. */
static int s_recv(kith_node_t *n, kith_msg_t **msg_p, int timeout_ms)
{
    uint64_t deadline = router_clock_mono_ms() + (uint64_t) (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        pthread_mutex_lock(&n->mu);
        uint64_t seen = n->arrivals;
        pthread_mutex_unlock(&n->mu);
        int rc = s_take(n, msg_p);
        if (rc <= 0)
            return rc;
        uint64_t now = router_clock_mono_ms();
        if (timeout_ms >= 0 && now >= deadline)
            return s_fail("timeout");
        uint64_t wait = timeout_ms < 0 || deadline - now > S_RECV_SLICE_MS ? S_RECV_SLICE_MS
                                                                           : deadline - now;
        struct timespec until = router_clock_deadline(CLOCK_REALTIME, wait);
        pthread_mutex_lock(&n->mu);
        if (!n->closing && n->arrivals == seen)
            (void) pthread_cond_timedwait(&n->arrived, &n->mu, &until);
        bool closing = n->closing;
        pthread_mutex_unlock(&n->mu);
        if (closing)
            return s_fail("kith_node_recv: the node was destroyed while waiting");
    }
}

int kith_node_recv(kith_node_t *n, kith_msg_t **msg_p, int timeout_ms)
{
    if (!n || !msg_p)
        return s_fail("kith_node_recv: node and msg_p are required");
    *msg_p = NULL;
    if (s_enter(n, "kith_node_recv") != 0)
        return -1;
    int rc = s_recv(n, msg_p, timeout_ms);
    s_leave(n);
    return rc;
}

const char *kith_msg_json(const kith_msg_t *m)
{
    if (!m) {
        s_fail("kith_msg_json: no message");
        return NULL;
    }
    return m->json;
}

void kith_msg_destroy(kith_msg_t **msg_p)
{
    if (!msg_p || !*msg_p)
        return;
    free((*msg_p)->json);
    free(*msg_p);
    *msg_p = NULL;
}

/* ---------------------------------------------------------------- faults */

/* Changes the faults between a and b: partition (-1 keeps it) and delay
 * (-1 keeps it). */
static int s_fault(const char *what, kith_net_t *net, kith_node_t *a, kith_node_t *b,
                   int partitioned, long delay_ms)
{
    if (!net || !a || !b)
        return s_fail("%s: net and two nodes are required", what);
    if (a->net != net || b->net != net)
        return s_fail("%s: %s and %s must both be in this net", what, a->name, b->name);
    if (a == b)
        return s_fail("%s: a node is never cut from itself", what);
    /* A destroyed node's name may be taken by a new one: not its faults. */
    if (s_enter(a, what) != 0)
        return -1;
    if (s_enter(b, what) != 0) {
        s_leave(a);
        return -1;
    }
    bool part;
    uint32_t delay;
    int rc = -1;
    pthread_mutex_lock(&net->mu);
    if (router_inproc_get_faults(net->inproc, a->name, b->name, &part, &delay) == 0) {
        if (partitioned >= 0)
            part = partitioned != 0;
        if (delay_ms >= 0)
            delay = (uint32_t) delay_ms;
        rc = router_inproc_set_faults(net->inproc, a->name, b->name, part, delay);
    }
    pthread_mutex_unlock(&net->mu);
    s_leave(b);
    s_leave(a);
    if (rc != 0)
        return s_fail("%s: %s", what, strerror(errno));
    return 0;
}

int kith_net_partition(kith_net_t *net, kith_node_t *a, kith_node_t *b)
{
    return s_fault("kith_net_partition", net, a, b, 1, -1);
}

int kith_net_heal(kith_net_t *net, kith_node_t *a, kith_node_t *b)
{
    return s_fault("kith_net_heal", net, a, b, 0, -1);
}

int kith_net_delay(kith_net_t *net, kith_node_t *a, kith_node_t *b, int ms)
{
    if (ms < 0 || (unsigned) ms > ROUTER_INPROC_DELAY_MAX)
        return s_fail("kith_net_delay: %d ms is outside 0..%u", ms, ROUTER_INPROC_DELAY_MAX);
    return s_fault("kith_net_delay", net, a, b, -1, ms);
}
