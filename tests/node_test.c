/* tests/node_test.c — the in-process harness: several nodes in one process,
 * each on its own loop thread, connected through a private inproc namespace;
 * messages and requests acked, refusals typed, inboxes read directly. And
 * what goes wrong: peers that cannot be reached (by the blocking sends and
 * by the router-run tools' sends on the loop, DNS names included), a node
 * not yet running or stopped, nodes that cannot be made, trust files that
 * do not load, and allocations failing in turn. A peer's DNS name whose
 * first addresses are dead (refusing, or silent) still delivers, through
 * the next one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "fake_dns.h"
#include "worker_reply.h"
#include "proto/envelope.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "proto/worker_msg.h"
#include "router/net/inproc.h"
#include "router/node.h"
#include "router/state/config.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"
#include "router/workers/mdp_worker.h"
#include "router/workers/turns.h"

#define NODES 3

typedef struct {
    router_inproc_t *net;
    router_node_t *node[NODES];
} s_net_t;

static const char *const s_names[NODES] = {"a", "b", "c"};

static router_node_t *s_node(router_inproc_t *net, const char *name, uint8_t seed_byte)
{
    char err[256] = "";
    uint8_t seed[32];
    memset(seed, seed_byte, sizeof seed);
    router_config_t cfg;
    router_config_defaults(&cfg);
    cfg.comms.ack_timeout_ms = 10000;
    router_node_opts_t o = {.inproc = net, .inproc_name = name, .seed = seed, .config = &cfg};
    router_node_t *n = router_node_new(&o, err, sizeof err);
    if (!n)
        fprintf(stderr, "node %s: %s\n", name, err);
    assert_non_null(n);
    return n;
}

/* Three nodes that all trust each other, running. */
static int s_setup(void **state)
{
    s_net_t *t = calloc(1, sizeof *t);
    t->net = router_inproc_new();
    for (int i = 0; i < NODES; i++)
        t->node[i] = s_node(t->net, s_names[i], (uint8_t) (0x10 + i));
    char err[256], addr[64];
    for (int i = 0; i < NODES; i++)
        for (int j = 0; j < NODES; j++) {
            if (i == j)
                continue;
            snprintf(addr, sizeof addr, "inproc://%s", s_names[j]);
            assert_int_equal(router_node_trust(t->node[i], s_names[j],
                                               router_node_pubkey(t->node[j]), addr, err,
                                               sizeof err),
                             0);
        }
    for (int i = 0; i < NODES; i++)
        assert_int_equal(router_node_start(t->node[i]), 0);
    *state = t;
    return 0;
}

static int s_teardown(void **state)
{
    s_net_t *t = *state;
    for (int i = 0; i < NODES; i++)
        router_node_destroy(&t->node[i]);
    router_inproc_destroy(&t->net);
    free(t);
    return 0;
}

/* Pops one entry and checks who sent it and what kind it is. */
static void s_expect(router_node_t *at, router_node_t *from, const char *kind,
                     const uint8_t id[16], proto_envelope_t **env_out)
{
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(router_node_inbox(at), &e, 10000), 0);
    assert_memory_equal(e.from, router_node_pubkey(from), 32);
    assert_string_equal(e.kind, kind);
    assert_memory_equal(e.id, id, 16);
    /* What the inbox holds is the envelope as it came, still verifiable. */
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t why;
    assert_int_equal(proto_envelope_decode(e.frame, e.frame_len, &env, &why), 0);
    assert_int_equal(proto_envelope_verify(env, &why), 0);
    router_inbox_entry_clear(&e);
    if (env_out)
        *env_out = env;
    else
        proto_envelope_destroy(&env);
}

static void test_messages_between_three(void **state)
{
    s_net_t *t = *state;
    router_node_receipt_t r;
    for (int i = 0; i < NODES; i++) {
        for (int j = 0; j < NODES; j++) {
            if (i == j)
                continue;
            char body[64];
            snprintf(body, sizeof body, "%s to %s", s_names[i], s_names[j]);
            assert_int_equal(router_node_send_message(t->node[i], s_names[j], body, &r), 0);
            assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
            proto_envelope_t *env = NULL;
            s_expect(t->node[j], t->node[i], "message", r.id, &env);
            const char *p;
            size_t n;
            assert_int_equal(proto_envelope_text(env, "body", &p, &n), 0);
            assert_int_equal(n, strlen(body));
            assert_memory_equal(p, body, n);
            proto_envelope_destroy(&env);
        }
    }
}

static void test_request_and_reused_link(void **state)
{
    s_net_t *t = *state;
    router_node_receipt_t r;
    for (int k = 0; k < 50; k++) {
        cbor_item_t *params = cbor_new_definite_map(1);
        assert_true(cbor_map_add(params, (struct cbor_pair){
                                             .key = cbor_move(cbor_build_string("n")),
                                             .value = cbor_move(cbor_build_uint8((uint8_t) k))}));
        cbor_item_t *kind = proto_kind_request("count", 5, &params, NULL, PROTO_HANDLING_QUEUE);
        assert_non_null(kind);
        assert_int_equal(router_node_send(t->node[0], "c", &kind, &r), 0);
        assert_null(kind);
        assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
        s_expect(t->node[2], t->node[0], "request", r.id, NULL);
    }
    /* A PeerId names a peer as well as its name does. */
    (void) r;
}

static void test_unknown_peer_and_untrusted(void **state)
{
    s_net_t *t = *state;
    router_node_receipt_t r;
    assert_int_equal(router_node_send_message(t->node[0], "nobody", "x", &r), -1);
    assert_non_null(strstr(r.detail, "no trusted peer"));

    /* A stranger that trusts b, but b does not trust it: refused at once. */
    router_node_t *x = s_node(t->net, "x", 0x77);
    char err[256];
    assert_int_equal(router_node_trust(x, "b", router_node_pubkey(t->node[1]), "inproc://b", err,
                                       sizeof err),
                     0);
    assert_int_equal(router_node_start(x), 0);
    assert_int_equal(router_node_send_message(x, "b", "let me in", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_REJECTED);
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(router_node_inbox(t->node[1]), &e, 0), -1);

    /* A name nobody is bound at: offline. */
    assert_int_equal(router_node_trust(x, "ghost", router_node_pubkey(t->node[2]),
                                       "inproc://ghost", err, sizeof err),
                     0);
    router_node_destroy(&x);
}

static void test_offline_after_stop(void **state)
{
    s_net_t *t = *state;
    router_node_receipt_t r;
    router_node_destroy(&t->node[2]); /* c leaves the network */
    assert_int_equal(router_node_send_message(t->node[0], "c", "anyone?", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_OFFLINE);
}

typedef struct {
    router_node_t *node;
    router_node_receipt_t r;
    int rc;
} s_blocked_send_t;

static void *s_blocked_send(void *arg)
{
    s_blocked_send_t *b = arg;
    cbor_item_t *kind = proto_kind_message("hello?", 6, NULL, PROTO_HANDLING_NONE);
    router_node_send_opts_t o = {.timeout_ms = 3600u * 1000u};
    b->rc = router_node_send_ex(b->node, "silent", &kind, &o, &b->r);
    return NULL;
}

static void s_key(uint8_t seed_byte, uint8_t pk[32]);

/* A thread waits for an ack that will not come in the hour it allows (the
 * peer takes the connection and says nothing); the node is stopped: the
 * send returns offline then, not when someone destroys the node — a
 * destroy that may be waiting for that very thread (kith_node_destroy). */
static void test_stop_releases_blocked_send(void **state)
{
    s_net_t *t = *state;
    router_node_t *a = t->node[0];
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t salen = sizeof sa;
    assert_int_equal(bind(lfd, (struct sockaddr *) &sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *) &sa, &salen), 0);
    char addr[64], err[256];
    snprintf(addr, sizeof addr, "tcp://127.0.0.1:%u", (unsigned) ntohs(sa.sin_port));
    uint8_t pk[32];
    s_key(0x77, pk);
    assert_int_equal(router_node_trust_set(a, "silent", pk, addr, false, err, sizeof err), 0);

    s_blocked_send_t b = {.node = a};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_blocked_send, &b), 0);
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 20000), 1); /* the send dialed: it waits for its ack */
    router_node_stop(a);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    int joined = pthread_timedjoin_np(th, NULL, &deadline);
    if (joined != 0)
        router_node_destroy(&t->node[0]); /* the old way out, so the test can end */
    assert_int_equal(joined, 0);
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.r.outcome, ROUTER_SEND_OFFLINE);
    close(lfd);
}

/* The public key of the pair one repeated seed byte makes. */
static void s_key(uint8_t seed_byte, uint8_t pk[32])
{
    uint8_t seed[32], sk[64];
    memset(seed, seed_byte, sizeof seed);
    proto_ed25519_seed_keypair(seed, pk, sk);
}

/* Peers a running node cannot reach, each named as trust_set allows at
 * any time (on the node's loop): an inproc name nobody holds, a TCP port
 * nobody listens on, a socket path that is not there, a DNS name that
 * does not resolve. Each send ends offline (or is refused) with a reason;
 * then a listener opened at run time carries a send over TCP. */
static void test_unreachable_peers(void **state)
{
    s_net_t *t = *state;
    router_node_t *a = t->node[0], *b = t->node[1];
    static const struct {
        const char *name, *addr, *detail;
        int rc;
    } peers[] = {
        {"ghost", "inproc://ghost", "nobody is bound", 0},
        {"closed", "tcp://127.0.0.1:1", "", 0},
        {"nosock", "uds:///nonexistent-kith-dir/comms.sock", "", 0},
        {"nxdomain", "tcp://peer.invalid:9", "cannot resolve peer.invalid", -1},
    };
    char err[256];
    router_node_receipt_t r;
    for (size_t i = 0; i < sizeof peers / sizeof peers[0]; i++) {
        uint8_t pk[32];
        s_key((uint8_t) (0x60 + i), pk);
        assert_int_equal(router_node_trust_set(a, peers[i].name, pk, peers[i].addr, false, err,
                                               sizeof err), 0);
        assert_int_equal(router_node_send_message(a, peers[i].name, "anyone?", &r), peers[i].rc);
        assert_int_equal(r.outcome, ROUTER_SEND_OFFLINE);
        assert_non_null(strstr(r.detail, peers[i].detail));
        assert_true(r.detail[0] != '\0');
    }
    /* No such address to listen on; then b listens, and a reaches it there
     * instead of inproc (the row of the same key and name is replaced). */
    assert_int_equal(router_node_listen(b, "not an address", err, sizeof err), -1);
    assert_true(err[0] != '\0');
    int port = router_node_listen(b, "127.0.0.1:0", err, sizeof err);
    assert_true(port > 0);
    char addr[64];
    snprintf(addr, sizeof addr, "tcp://127.0.0.1:%d", port);
    assert_int_equal(router_node_trust_set(a, "b", router_node_pubkey(b), addr, false, err,
                                           sizeof err), 0);
    assert_int_equal(router_node_trust_set(a, "b", router_node_pubkey(b), addr, false, err,
                                           sizeof err), 0); /* already so */
    size_t named = 0;
    const router_peer_t *p = router_trust_by_name(router_node_trust_view(a), "b", &named);
    assert_non_null(p);
    assert_int_equal(named, 1);
    assert_string_equal(p->addr, addr);
    assert_int_equal(router_node_send_message(a, "b", "over tcp", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    s_expect(b, a, "message", r.id, NULL);
}

/* A listener on ip:port whose accept queue is full: a new connect to it
 * waits unanswered, as to a host that is down. Returns its fds' count in
 * fd[] (listener and fillers), to close. */
static int s_hole_open(int fd[17], const char *ip, uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    assert_int_equal(inet_pton(AF_INET, ip, &a.sin_addr), 1);
    int n = 0;
    fd[n] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd[n] >= 0);
    assert_int_equal(bind(fd[n], (struct sockaddr *) &a, sizeof a), 0);
    assert_int_equal(listen(fd[n++], 0), 0);
    for (;;) {
        assert_true(n < 17);
        int c = fd[n++] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(c >= 0);
        int rc = connect(c, (struct sockaddr *) &a, sizeof a);
        assert_true(rc == 0 || errno == EINPROGRESS);
        struct pollfd p = {.fd = c, .events = POLLOUT};
        if (rc != 0 && poll(&p, 1, 200) == 0)
            return n;
    }
}

/* b listens on 127.0.0.1; a knows it by names whose first addresses are
 * dead: 127.0.0.2 refuses, 127.0.0.3 takes the connect and never answers.
 * Both blocking sends are acked, through the address that listens, the
 * silent one's well within the send's time (it gets its share, half). */
static void test_dns_name_dead_addresses_first(void **state)
{
    s_net_t *t = *state;
    router_node_t *a = t->node[0], *b = t->node[1];
    char err[256], addr[64];
    int port = router_node_listen(b, "127.0.0.1:0", err, sizeof err);
    assert_true(port > 0);
    static const char *const refused_first[] = {"127.0.0.2", "127.0.0.1"};
    static const char *const silent_first[] = {"127.0.0.3", "127.0.0.1"};
    test_dns_set("refused-first.kith-test", refused_first, 2);
    test_dns_set("silent-first.kith-test", silent_first, 2);
    int hole[17];
    int holes = s_hole_open(hole, "127.0.0.3", (uint16_t) port);
    snprintf(addr, sizeof addr, "tcp://refused-first.kith-test:%d", port);
    assert_int_equal(router_node_trust_set(a, "b1", router_node_pubkey(b), addr, false, err,
                                           sizeof err), 0);
    router_node_receipt_t r;
    assert_int_equal(router_node_send_message(a, "b1", "past a refusal", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    s_expect(b, a, "message", r.id, NULL);

    router_node_t *c = t->node[2];
    snprintf(addr, sizeof addr, "tcp://silent-first.kith-test:%d", port);
    assert_int_equal(router_node_trust_set(c, "b2", router_node_pubkey(b), addr, false, err,
                                           sizeof err), 0);
    router_node_send_opts_t o = {.timeout_ms = 4000};
    cbor_item_t *kind = proto_kind_message("past silence", 12, NULL, PROTO_HANDLING_NONE);
    assert_non_null(kind);
    assert_int_equal(router_node_send_ex(c, "b2", &kind, &o, &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    s_expect(b, c, "message", r.id, NULL);
    while (holes > 0)
        close(hole[--holes]);
    test_dns_set("refused-first.kith-test", NULL, 0);
    test_dns_set("silent-first.kith-test", NULL, 0);
}

/* A blocking send with each of the caller's allocations failing in turn
 * (the envelope, its signature, its frame): refused with a reason and
 * nothing leaked (LSan), or sent and acked as usual; and a dial into a
 * node whose accept cannot allocate is refused, the node serving on. */
static void test_send_without_memory(void **state)
{
    s_net_t *t = *state;
    router_node_t *a = t->node[0], *b = t->node[1];
    router_node_receipt_t r;
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        alloc_fail_arm(i);
        int rc = router_node_send_message(a, "b", "short of memory", &r);
        bool failed = alloc_fail_disarm() > 0;
        if (rc != 0) {
            assert_true(failed);
            assert_int_equal(r.outcome, ROUTER_SEND_OFFLINE);
            assert_true(r.detail[0] != '\0');
            refused++;
            continue;
        }
        assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
        s_expect(b, a, "message", r.id, NULL);
        if (!failed)
            break;
    }
    assert_true(refused > 0);
    /* The accept of an in-process dial, on the dialing thread (here). */
    alloc_fail_arm(0);
    int fd = router_inproc_dial(t->net, "b");
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(fd, -1);
    assert_int_equal(router_node_send_message(a, "b", "still here", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    s_expect(b, a, "message", r.id, NULL);
}

/* Counts its calls, and says whether one ran on the caller's thread. */
typedef struct {
    int calls;       /* calls made */
    pthread_t caller; /* the test's thread */
    bool on_caller;  /* the last ran on it */
} s_call_count_t;

static int s_call_count(router_node_t *self, void *arg)
{
    (void) self;
    s_call_count_t *c = arg;
    c->calls++;
    c->on_caller = pthread_equal(pthread_self(), c->caller);
    return 0;
}

/* A graceful stop's hook: it takes a drain hold (as the gateway does) and
 * lets go of it on a later turn of the loop. */
typedef struct {
    router_node_t *node;
    int stops;       /* times the hook ran */
    bool released;   /* its hold was let go */
} s_stop_hook_t;

static void s_release(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    s_stop_hook_t *h = ud;
    h->released = true;
    router_node_drain_release(h->node);
}

static void s_on_stop(void *ud)
{
    s_stop_hook_t *h = ud;
    h->stops++;
    router_node_drain_hold(h->node);
    assert_true(router_loop_timer_add(router_node_loop(h->node), 1, s_release, h) != 0);
}

/* A node not yet started runs calls (and trust edits) on the caller's
 * thread and refuses sends ("not running"); started, it runs them on its
 * loop and sends to a peer named by its PeerId; stopped (its loop ends
 * only once the stop hook's drain hold is let go), it refuses all of them
 * with a reason. */
static void test_not_running(void **state)
{
    (void) state;
    router_inproc_t *net = router_inproc_new();
    router_node_t *a = s_node(net, "early-a", 0x51);
    router_node_t *b = s_node(net, "early-b", 0x52);
    char err[256];
    assert_int_equal(router_node_trust(a, "b", router_node_pubkey(b), "inproc://early-b", err,
                                       sizeof err), 0);
    assert_int_equal(router_node_trust(b, "a", router_node_pubkey(a), "inproc://early-a", err,
                                       sizeof err), 0);
    router_node_receipt_t r;
    assert_int_equal(router_node_send_message(a, "b", "too early", &r), -1);
    assert_int_equal(r.outcome, ROUTER_SEND_OFFLINE);
    assert_non_null(strstr(r.detail, "not running"));
    s_call_count_t c = {.caller = pthread_self()};
    assert_int_equal(router_node_call(a, s_call_count, &c), 0);
    assert_int_equal(c.calls, 1);
    assert_true(c.on_caller);
    /* b renamed: its row (same key) is replaced. */
    assert_int_equal(router_node_trust_set(a, "b2", router_node_pubkey(b), "inproc://early-b",
                                           false, err, sizeof err), 0);
    const router_trust_t *view = router_node_trust_view(a);
    assert_int_equal(router_trust_count(view), 1);
    assert_non_null(router_trust_by_name(view, "b2", NULL));
    /* An address trust does not take: refused, the store as it was. */
    uint8_t pk[32];
    s_key(0x53, pk);
    assert_int_equal(router_node_trust_set(a, "c", pk, "ftp://c", false, err, sizeof err), -1);
    assert_true(err[0] != '\0');
    assert_int_equal(router_trust_count(router_node_trust_view(a)), 1);

    s_stop_hook_t hook = {.node = a};
    router_node_on_stop(a, s_on_stop, &hook);
    assert_int_equal(router_node_start(a), 0);
    assert_int_equal(router_node_start(b), 0);
    assert_int_equal(router_node_call(a, s_call_count, &c), 0);
    assert_int_equal(c.calls, 2);
    assert_false(c.on_caller);
    uint8_t b_id[16];
    char b_text[PROTO_UUID_TEXT_CAP];
    proto_peer_id(router_node_pubkey(b), b_id);
    proto_uuid_format(b_id, b_text);
    assert_int_equal(router_node_send_message(a, b_text, "now", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    s_expect(b, a, "message", r.id, NULL);

    router_node_stop(a);
    assert_int_equal(hook.stops, 1);
    assert_true(hook.released);
    assert_int_equal(router_node_send_message(a, "b2", "too late", &r), -1);
    assert_non_null(strstr(r.detail, "not running"));
    errno = 0;
    assert_int_equal(router_node_call(a, s_call_count, &c), -1);
    assert_int_equal(errno, ECANCELED);
    assert_int_equal(c.calls, 2);
    assert_int_equal(router_node_trust_set(a, "c", pk, "inproc://c", false, err, sizeof err), -1);
    assert_string_equal(err, "the node is stopping");
    assert_int_equal(router_node_listen(a, "127.0.0.1:0", err, sizeof err), -1);
    assert_string_equal(err, "the node is stopping");
    router_node_destroy(&a);
    router_node_destroy(&b);
    router_inproc_destroy(&net);
}

/* A node whose loop ended by a stop begun on it (router_node_stop_async,
 * as POST /admin/shutdown does) but that is not destroyed yet: a call
 * from another thread is refused (ECANCELED), never run on the caller's
 * thread against a loop that another thread owns (it was: "not running"
 * looked like "not started"). */
static void test_calls_after_the_loop_ended(void **state)
{
    s_net_t *t = *state;
    router_node_t *a = t->node[0];
    router_node_stop_async(a);
    router_node_receipt_t r;
    /* The loop has ended once a send says the node is not running. */
    for (int i = 0;; i++) {
        assert_true(i < 1000);
        (void) router_node_send_message(a, "b", "anyone?", &r);
        if (strstr(r.detail, "not running"))
            break;
        struct timespec ms10 = {0, 10 * 1000 * 1000};
        nanosleep(&ms10, NULL);
    }
    s_call_count_t c = {.caller = pthread_self()};
    errno = 0;
    assert_int_equal(router_node_call(a, s_call_count, &c), -1);
    assert_int_equal(errno, ECANCELED);
    assert_int_equal(c.calls, 0);
    char err[256];
    assert_int_equal(router_node_listen(a, "127.0.0.1:0", err, sizeof err), -1);
    assert_string_equal(err, "the node is stopping");
}

/* A node is started once: starting it again, or after a stop, is refused
 * (EALREADY, ECANCELED) instead of running a second loop thread, or a
 * loop nobody would stop (destroy then waited for ever). */
static void test_start_twice_or_after_stop(void **state)
{
    (void) state;
    router_inproc_t *net = router_inproc_new();
    router_node_t *a = s_node(net, "twice", 0x54);
    assert_int_equal(router_node_start(a), 0);
    errno = 0;
    assert_int_equal(router_node_start(a), -1);
    assert_int_equal(errno, EALREADY);
    router_node_destroy(&a);
    router_node_t *b = s_node(net, "stopped-first", 0x55);
    router_node_stop(b);
    errno = 0;
    assert_int_equal(router_node_start(b), -1);
    assert_int_equal(errno, ECANCELED);
    assert_int_equal(router_node_run(b), 0); /* returns at once */
    router_node_destroy(&b);
    router_inproc_destroy(&net);
}

/* On the node's loop thread: its allocations fail from the arg-th on. */
static int s_loop_arm(router_node_t *self, void *arg)
{
    (void) self;
    alloc_fail_arm(*(long *) arg);
    return 0;
}

static int s_loop_disarm(router_node_t *self, void *arg)
{
    (void) self;
    *(unsigned *) arg = alloc_fail_disarm();
    return 0;
}

/* A send over TCP with each allocation on the sender's loop thread
 * failing in turn (its link, reader, wait, connection, queue, the ack's
 * reading): every send is told exactly once, offline with a reason or
 * acked, nothing leaks (LSan), and the node goes on sending. */
static void test_loop_send_without_memory(void **state)
{
    s_net_t *t = *state;
    router_node_t *a = t->node[0], *b = t->node[1];
    char err[256], addr[64];
    int port = router_node_listen(b, "127.0.0.1:0", err, sizeof err);
    assert_true(port > 0);
    snprintf(addr, sizeof addr, "tcp://127.0.0.1:%d", port);
    assert_int_equal(router_node_trust_set(a, "bt", router_node_pubkey(b), addr, false, err,
                                           sizeof err), 0);
    router_node_receipt_t r;
    unsigned offline = 0;
    for (long i = 0;; i++) {
        assert_true(i < 200);
        unsigned failed = 0;
        assert_int_equal(router_node_call(a, s_loop_arm, &i), 0);
        router_node_send_opts_t o = {.timeout_ms = 3000};
        cbor_item_t *kind = proto_kind_message("loop short of memory", 20, NULL,
                                               PROTO_HANDLING_NONE);
        assert_non_null(kind);
        assert_int_equal(router_node_send_ex(a, "bt", &kind, &o, &r), 0);
        assert_int_equal(router_node_call(a, s_loop_disarm, &failed), 0);
        if (r.outcome != ROUTER_SEND_ACKED) {
            assert_int_equal(r.outcome, ROUTER_SEND_OFFLINE);
            assert_true(r.detail[0] != '\0');
            offline++;
        }
        if (!failed && r.outcome == ROUTER_SEND_ACKED)
            break;
    }
    assert_true(offline > 0);
    router_inbox_entry_t e;
    while (router_inbox_pop(router_node_inbox(b), &e, 0) == 0)
        router_inbox_entry_clear(&e);
    assert_int_equal(router_node_send_message(a, "bt", "after", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    s_expect(b, a, "message", r.id, NULL);
}

/* Holds a node's loop thread inside a call until released. */
typedef struct {
    router_node_t *node;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, release;
} s_block_t;

static int s_block(router_node_t *self, void *arg)
{
    (void) self;
    s_block_t *b = arg;
    pthread_mutex_lock(&b->mu);
    b->entered = true;
    pthread_cond_broadcast(&b->cv);
    while (!b->release)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

static void *s_block_main(void *arg)
{
    s_block_t *b = arg;
    return (void *) (intptr_t) router_node_call(b->node, s_block, b);
}

static void s_noop(router_loop_t *loop, void *arg)
{
    (void) loop;
    (void) arg;
}

/* A node whose loop's post queue is full (its thread held in a call while
 * others post): a blocking send, a call, a trust edit and an in-process
 * dial to it are each refused at once with a reason ("busy", EAGAIN,
 * refused), none waits for ever, and once the loop runs again all of them
 * work. */
static void test_post_queue_full(void **state)
{
    s_net_t *t = *state;
    router_node_t *a = t->node[0];
    s_block_t blk = {.node = a};
    pthread_mutex_init(&blk.mu, NULL);
    pthread_cond_init(&blk.cv, NULL);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_block_main, &blk), 0);
    pthread_mutex_lock(&blk.mu);
    while (!blk.entered)
        pthread_cond_wait(&blk.cv, &blk.mu);
    pthread_mutex_unlock(&blk.mu);
    unsigned posted = 0;
    while (router_loop_post(router_node_loop(a), s_noop, NULL) == 0)
        assert_true(++posted <= 1u << 20);
    assert_int_equal(errno, EAGAIN);

    router_node_receipt_t r;
    assert_int_equal(router_node_send_message(a, "b", "no room", &r), -1);
    assert_non_null(strstr(r.detail, "busy"));
    s_call_count_t c = {.caller = pthread_self()};
    errno = 0;
    assert_int_equal(router_node_call(a, s_call_count, &c), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(c.calls, 0);
    char err[256];
    uint8_t pk[32];
    s_key(0x57, pk);
    assert_int_equal(router_node_trust_set(a, "d", pk, "inproc://d", false, err, sizeof err), -1);
    assert_string_equal(err, "the node is busy: try again");
    assert_int_equal(router_inproc_dial(t->net, "a"), -1);

    pthread_mutex_lock(&blk.mu);
    blk.release = true;
    pthread_cond_broadcast(&blk.cv);
    pthread_mutex_unlock(&blk.mu);
    void *rc = NULL;
    assert_int_equal(pthread_join(th, &rc), 0);
    assert_int_equal((intptr_t) rc, 0);
    pthread_cond_destroy(&blk.cv);
    pthread_mutex_destroy(&blk.mu);
    assert_int_equal(router_node_call(a, s_call_count, &c), 0);
    assert_int_equal(c.calls, 1);
    assert_int_equal(router_node_send_message(a, "b", "room again", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    s_expect(t->node[1], a, "message", r.id, NULL);
    assert_int_equal(router_node_send_message(t->node[1], "a", "and back", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
}

/* A node run on a thread of the caller's (router_node_run), then
 * destroyed there, as the loop's owner must. */
static void *s_run_main(void *arg)
{
    router_node_t *n = arg;
    int rc = router_node_run(n);
    router_node_destroy(&n);
    return (void *) (intptr_t) rc;
}

/* router_node_stop from another thread ends a node that router_node_run
 * runs, as the header says (it set a flag the loop never read). */
static void test_stop_ends_run(void **state)
{
    (void) state;
    router_inproc_t *net = router_inproc_new();
    router_node_t *a = s_node(net, "runner", 0x56);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_run_main, a), 0);
    /* It runs once a call runs on its loop, not here. */
    s_call_count_t c = {.caller = pthread_self()};
    for (int i = 0; c.calls == 0 || c.on_caller; i++) {
        assert_true(i < 1000);
        c.calls = 0;
        assert_int_equal(router_node_call(a, s_call_count, &c), 0);
        struct timespec ms10 = {0, 10 * 1000 * 1000};
        if (c.on_caller)
            nanosleep(&ms10, NULL);
    }
    router_node_stop(a);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    void *rc = NULL;
    assert_int_equal(pthread_timedjoin_np(th, &rc, &until), 0);
    assert_int_equal((intptr_t) rc, 0);
    router_inproc_destroy(&net);
}

/* Removes a test's home directory and what the node made in it. */
static void s_rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    char path[512];
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR)
            s_rm_tree(path);
        else
            assert_int_equal(unlink(path), 0);
    }
    closedir(d);
    assert_int_equal(rmdir(dir), 0);
}

/* ---------------------------------------------------------------- router tools through a node */

/* The peers the agent below sends a message to, in its tool calls' order. */
static const char *const s_tool_peers[] = {"b", "ghost", "closed", "nosock", "far", "far2",
                                           "multi"};
#define TOOL_PEERS (sizeof s_tool_peers / sizeof s_tool_peers[0])
/* The peers the agent sends to now (s_tool_peers, or a test's own). */
static const char *const *s_tool_list = s_tool_peers;
static size_t s_tool_count = TOOL_PEERS;

static proto_worker_str_t s_str(const char *p)
{
    return (proto_worker_str_t) {p, strlen(p)};
}

/* An agent worker that answers each turn by calling send_message to each
 * of s_tool_peers; its answer is the results, "i:result|" each. */
static void *s_agent_main(void *arg)
{
    router_mdp_worker_t *w = arg;
    uint8_t *body;
    size_t len;
    while (router_mdp_worker_recv(w, &body, &len, -1) == 1) {
        proto_worker_request_t req;
        proto_worker_error_t err;
        int rc = proto_worker_request_decode(body, len, &req, &err);
        free(body);
        if (rc != 0)
            continue;
        bool turn = req.type == PROTO_WORKER_REQ_TURN;
        uint8_t id[16];
        memcpy(id, req.turn.turn_id, 16);
        proto_worker_request_clear(&req);
        if (!turn)
            continue;
        char cids[TOOL_PEERS][24], args[TOOL_PEERS][96];
        for (size_t i = 0; i < s_tool_count; i++) {
            snprintf(cids[i], sizeof cids[i], "%zu", i);
            snprintf(args[i], sizeof args[i], "{\"peer\":\"%s\",\"body\":\"hello\"}",
                     s_tool_list[i]);
            proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_PARTIAL};
            memcpy(rep.partial.turn_id, id, 16);
            rep.partial.seq = i;
            rep.partial.event.type = PROTO_WORKER_EV_TOOL_CALL;
            rep.partial.event.call = (proto_worker_tool_call_t) {
                s_str(cids[i]), s_str("send_message"), s_str(args[i])};
            test_worker_reply(w, &rep);
        }
        char all[2048] = "";
        for (size_t got = 0; got < s_tool_count;) {
            if (router_mdp_worker_recv(w, &body, &len, -1) != 1)
                return NULL;
            rc = proto_worker_request_decode(body, len, &req, &err);
            free(body);
            if (rc != 0)
                continue;
            if (req.type == PROTO_WORKER_REQ_TOOL_RESULT) {
                size_t used = strlen(all);
                snprintf(all + used, sizeof all - used, "%s:%s|", req.tool_result.id.p,
                         req.tool_result.result.p);
                got++;
            }
            proto_worker_request_clear(&req);
        }
        proto_worker_reply_t rep = {.type = PROTO_WORKER_REPLY_FINAL};
        rep.final.type = PROTO_WORKER_FINAL_DONE;
        memcpy(rep.final.turn_id, id, 16);
        rep.final.full_response = s_str(all);
        test_worker_reply(w, &rep);
    }
    return NULL;
}

/* A chat subscriber on the node's loop, and the turn's last frame. */
typedef struct {
    pthread_mutex_t mu;        /* guards last: the loop writes, the test reads */
    pthread_cond_t cv;         /* signalled when last is written */
    char last[4096];           /* the DONE or ERROR frame, "" before */
    router_turns_sub_t sub;    /* the subscriber (loop thread) */
} s_chat_t;

static void s_on_chat_frame(const router_turn_frame_t *f, void *ud)
{
    s_chat_t *c = ud;
    if (f->type != ROUTER_TURN_FRAME_DONE && f->type != ROUTER_TURN_FRAME_ERROR)
        return;
    pthread_mutex_lock(&c->mu);
    snprintf(c->last, sizeof c->last, "%.*s", (int) f->json_len, f->json);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* On the loop: attach to session "tools" and send "go". */
static int s_chat_go(router_node_t *self, void *arg)
{
    s_chat_t *c = arg;
    router_turns_t *t = router_node_turns(self);
    const char *code = NULL;
    c->sub = router_turns_attach(t, "tools", NULL, s_on_chat_frame, c);
    return c->sub && router_turns_submit(t, c->sub, "go", 2, &code) == 0 ? 0 : -1;
}

/* On the loop: "go" once more. */
static int s_chat_again(router_node_t *self, void *arg)
{
    s_chat_t *c = arg;
    const char *code = NULL;
    return router_turns_submit(router_node_turns(self), c->sub, "go", 2, &code);
}

/* Waits (a minute at most) for the turn's last frame, then forgets it. */
static void s_chat_wait(s_chat_t *c, char *out, size_t cap)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&c->mu);
    while (!c->last[0])
        assert_int_not_equal(pthread_cond_timedwait(&c->cv, &c->mu, &until), ETIMEDOUT);
    snprintf(out, cap, "%s", c->last);
    c->last[0] = '\0';
    pthread_mutex_unlock(&c->mu);
}

static int s_chat_detach(router_node_t *self, void *arg)
{
    router_turns_detach(router_node_turns(self), ((s_chat_t *) arg)->sub);
    return 0;
}

/* Router-run tools sending through the node's own comms: a message to a
 * trusted peer is acked; to an inproc name nobody holds, a port nobody
 * listens on, a socket path that is not there or a DNS name that does not
 * resolve (looked up off the loop), the tool's result says offline and
 * why, and the turn goes on to its answer. */
static void test_router_tools_through_comms(void **state)
{
    (void) state;
    static const char endpoint[] = "inproc://kith.workers.node-test-tools";
    router_inproc_t *net = router_inproc_new();
    router_config_t cfg;
    router_config_defaults(&cfg);
    cfg.comms.ack_timeout_ms = 10000;
    uint8_t seed[32];
    memset(seed, 0x91, sizeof seed);
    router_node_opts_t o = {.inproc = net, .inproc_name = "wa", .seed = seed, .config = &cfg,
                            .workers = true, .workers_endpoint = endpoint};
    char err[256] = "";
    router_node_t *a = router_node_new(&o, err, sizeof err);
    if (!a)
        fprintf(stderr, "node wa: %s\n", err);
    assert_non_null(a);
    router_node_t *b = s_node(net, "wb", 0x92);
    assert_int_equal(router_node_trust(a, "b", router_node_pubkey(b), "inproc://wb", err,
                                       sizeof err), 0);
    assert_int_equal(router_node_trust(b, "a", router_node_pubkey(a), "inproc://wa", err,
                                       sizeof err), 0);
    /* "multi": another node over TCP, by a name whose first address
     * refuses. */
    router_node_t *m = s_node(net, "wm", 0x93);
    assert_int_equal(router_node_trust(m, "a", router_node_pubkey(a), "inproc://wa", err,
                                       sizeof err), 0);
    int port = router_node_listen(m, "127.0.0.1:0", err, sizeof err);
    assert_true(port > 0);
    static const char *const multi_ips[] = {"127.0.0.2", "127.0.0.1"};
    test_dns_set("multi.kith-test", multi_ips, 2);
    char multi[64];
    snprintf(multi, sizeof multi, "tcp://multi.kith-test:%d", port);
    assert_int_equal(router_node_trust(a, "multi", router_node_pubkey(m), multi, err, sizeof err),
                     0);
    static const char *const unreachable[][2] = {
        {"ghost", "inproc://nowhere"},
        {"closed", "tcp://127.0.0.1:1"},
        {"nosock", "uds:///nonexistent-kith-dir/comms.sock"},
        {"far", "tcp://peer.invalid:9"},
        {"far2", "tcp://peer2.invalid:9"},
    };
    for (size_t i = 0; i < sizeof unreachable / sizeof unreachable[0]; i++) {
        uint8_t pk[32];
        s_key((uint8_t) (0xa0 + i), pk);
        assert_int_equal(router_node_trust(a, unreachable[i][0], pk, unreachable[i][1], err,
                                           sizeof err), 0);
    }
    assert_int_equal(router_node_start(a), 0);
    assert_int_equal(router_node_start(b), 0);
    assert_int_equal(router_node_start(m), 0);
    router_mdp_worker_opts_t wo = {.endpoint = endpoint, .service = "kith.agent",
                                   .heartbeat_ms = cfg.workers.heartbeat_ms,
                                   .liveness = cfg.workers.liveness};
    router_mdp_worker_t *w = router_mdp_worker_new(&wo, err, sizeof err);
    assert_non_null(w);
    pthread_t agent;
    assert_int_equal(pthread_create(&agent, NULL, s_agent_main, w), 0);

    s_chat_t c = {.sub = 0};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    assert_int_equal(router_node_call(a, s_chat_go, &c), 0);
    char last[4096];
    /* The second turn finds both names' failures cached: refused at once. */
    for (int turn = 0; turn < 2; turn++) {
        if (turn)
            assert_int_equal(router_node_call(a, s_chat_again, &c), 0);
        s_chat_wait(&c, last, sizeof last);
        assert_non_null(strstr(last, "\"type\":\"done\""));
        assert_non_null(strstr(last, "0:{\\\"outcome\\\":\\\"acked\\\""));
        assert_non_null(strstr(last, "1:{\\\"outcome\\\":\\\"offline\\\",\\\"detail\\\":"
                                     "\\\"nobody is bound at inproc://nowhere\\\"}"));
        assert_non_null(strstr(last, "2:{\\\"outcome\\\":\\\"offline\\\""));
        assert_non_null(strstr(last, "3:{\\\"outcome\\\":\\\"offline\\\""));
        assert_non_null(strstr(last, "4:{\\\"outcome\\\":\\\"offline\\\""));
        assert_non_null(strstr(last, "cannot resolve peer.invalid"));
        assert_non_null(strstr(last, "5:{\\\"outcome\\\":\\\"offline\\\""));
        assert_non_null(strstr(last, "cannot resolve peer2.invalid"));
        assert_non_null(strstr(last, "6:{\\\"outcome\\\":\\\"acked\\\""));
    }
    for (int turn = 0; turn < 4; turn++) {
        router_inbox_entry_t e;
        assert_int_equal(router_inbox_pop(router_node_inbox(turn % 2 ? m : b), &e, 10000), 0);
        assert_memory_equal(e.from, router_node_pubkey(a), 32);
        assert_string_equal(e.kind, "message");
        router_inbox_entry_clear(&e);
    }

    assert_int_equal(router_node_call(a, s_chat_detach, &c), 0);
    router_mdp_worker_interrupt(w);
    pthread_join(agent, NULL);
    router_mdp_worker_destroy(&w);
    router_node_destroy(&a);
    router_node_destroy(&b);
    router_node_destroy(&m);
    router_inproc_destroy(&net);
    pthread_cond_destroy(&c.cv);
    pthread_mutex_destroy(&c.mu);
    test_dns_set("multi.kith-test", NULL, 0);
}

/* A router-run tool's send to a peer whose name is still being looked up
 * (a slow DNS server: the lookup is held) when the node is destroyed: the
 * send is told offline ("the node is stopping") at teardown, the turn's
 * tool result reaches the worker, and the lookup that finishes later is
 * dropped; nothing is leaked (LSan) or touched after it is freed (ASan).
 * Two sends wait for the one lookup. */
static void test_dns_lookup_pending_at_stop(void **state)
{
    (void) state;
    static const char endpoint[] = "inproc://kith.workers.node-test-slow-dns";
    static const char *const slow_peers[] = {"slow", "slow"};
    router_inproc_t *net = router_inproc_new();
    router_config_t cfg;
    router_config_defaults(&cfg);
    uint8_t seed[32];
    memset(seed, 0x94, sizeof seed);
    router_node_opts_t o = {.inproc = net, .inproc_name = "sa", .seed = seed, .config = &cfg,
                            .workers = true, .workers_endpoint = endpoint};
    char err[256] = "";
    router_node_t *a = router_node_new(&o, err, sizeof err);
    assert_non_null(a);
    static const char *const ips[] = {"127.0.0.1"};
    test_dns_set("slow.kith-test", ips, 1);
    test_dns_hold(true);
    unsigned asked = test_dns_asked(), done = test_dns_done();
    uint8_t pk[32];
    s_key(0x95, pk);
    assert_int_equal(router_node_trust(a, "slow", pk, "tcp://slow.kith-test:9", err, sizeof err),
                     0);
    assert_int_equal(router_node_start(a), 0);
    s_tool_list = slow_peers;
    s_tool_count = 2;
    router_mdp_worker_opts_t wo = {.endpoint = endpoint, .service = "kith.agent",
                                   .heartbeat_ms = cfg.workers.heartbeat_ms,
                                   .liveness = cfg.workers.liveness};
    router_mdp_worker_t *w = router_mdp_worker_new(&wo, err, sizeof err);
    assert_non_null(w);
    pthread_t agent;
    assert_int_equal(pthread_create(&agent, NULL, s_agent_main, w), 0);
    s_chat_t c = {.sub = 0};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    assert_int_equal(router_node_call(a, s_chat_go, &c), 0);
    for (int i = 0; test_dns_asked() == asked; i++) {
        assert_true(i < 6000);
        struct timespec ms10 = {0, 10 * 1000 * 1000};
        nanosleep(&ms10, NULL);
    }
    assert_int_equal(router_node_call(a, s_chat_detach, &c), 0);
    router_node_destroy(&a);
    test_dns_hold(false);
    router_mdp_worker_interrupt(w);
    pthread_join(agent, NULL);
    router_mdp_worker_destroy(&w);
    router_inproc_destroy(&net);
    pthread_cond_destroy(&c.cv);
    pthread_mutex_destroy(&c.mu);
    for (int i = 0; test_dns_done() == done; i++) {
        assert_true(i < 6000);
        struct timespec ms10 = {0, 10 * 1000 * 1000};
        nanosleep(&ms10, NULL);
    }
    s_tool_list = s_tool_peers;
    s_tool_count = TOOL_PEERS;
    test_dns_set("slow.kith-test", NULL, 0);
}

/* Writes text to home/name. */
static void s_write(const char *home, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", home, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Nodes that cannot be made, each refused with a reason for people and
 * nothing leaked: pairing on with its password's variable unset, or with
 * no home to keep paired peers in; an inproc name already bound; a home
 * that is a file; a trusted_peers.json that does not load. Pairing with a
 * password and a home starts. */
static void test_new_refusals(void **state)
{
    (void) state;
    router_config_t cfg;
    router_config_defaults(&cfg);
    snprintf(cfg.comms.address, sizeof cfg.comms.address, "127.0.0.1:0");
    snprintf(cfg.comms.pairing_password_env, sizeof cfg.comms.pairing_password_env,
             "KITH_NODE_TEST_PAIRING");
    assert_int_equal(unsetenv("KITH_NODE_TEST_PAIRING"), 0);
    router_node_opts_t o = {.config = &cfg, .listen = true};
    char err[256] = "";
    assert_null(router_node_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "$KITH_NODE_TEST_PAIRING must hold a pairing password"));
    assert_int_equal(setenv("KITH_NODE_TEST_PAIRING", "0123456789abcdef0123456789abcdef", 1), 0);
    err[0] = '\0';
    assert_null(router_node_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "pairing needs a home directory"));
    char home[] = "/tmp/kith-node-new-XXXXXX";
    assert_non_null(mkdtemp(home));
    o.home = home;
    router_node_t *n = router_node_new(&o, err, sizeof err);
    if (!n)
        fprintf(stderr, "pairing node: %s\n", err);
    assert_non_null(n);
    router_node_destroy(&n);
    assert_int_equal(unsetenv("KITH_NODE_TEST_PAIRING"), 0);

    /* The trust file does not load: the node is not made. */
    s_write(home, "trusted_peers.json", "{not json");
    router_node_opts_t h = {.home = home};
    err[0] = '\0';
    assert_null(router_node_new(&h, err, sizeof err));
    assert_non_null(strstr(err, "trusted_peers.json"));
    /* A home that is a file. */
    char file[600];
    snprintf(file, sizeof file, "%s/trusted_peers.json", home);
    h.home = file;
    err[0] = '\0';
    assert_null(router_node_new(&h, err, sizeof err));
    assert_true(err[0] != '\0');
    s_rm_tree(home);

    router_inproc_t *net = router_inproc_new();
    router_node_t *first = s_node(net, "taken", 0x71);
    router_node_opts_t d = {.inproc = net, .inproc_name = "taken"};
    err[0] = '\0';
    assert_null(router_node_new(&d, err, sizeof err));
    assert_non_null(strstr(err, "inproc://taken"));
    router_node_destroy(&first);
    router_inproc_destroy(&net);
}

/* trusted_peers.json read again (SIGHUP, inotify, pairing): a changed file
 * is swapped in, an unchanged one changes nothing, one that does not load
 * is refused and the peers trusted before stay, a missing one trusts
 * nobody. trust_set with persist writes the file a reload reads. */
static void test_trust_reload(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_node_opts_t o = {.home = home, .memory_inbox = true};
    char err[256] = "";
    router_node_t *n = router_node_new(&o, err, sizeof err);
    assert_non_null(n);
    assert_string_equal(router_node_home(n), home);
    uint8_t p1[32], p2[32];
    s_key(0x81, p1);
    s_key(0x82, p2);
    assert_int_equal(router_node_trust_set(n, "p1", p1, "inproc://p1", true, err, sizeof err), 0);
    router_node_trust_reload(n, "test: unchanged");
    assert_int_equal(router_trust_count(router_node_trust_view(n)), 1);

    s_write(home, "trusted_peers.json", "{\"peers\":[{\"name\":");
    router_node_trust_reload(n, "test: broken");
    assert_int_equal(router_trust_count(router_node_trust_view(n)), 1);
    assert_non_null(router_trust_by_pubkey(router_node_trust_view(n), p1));

    router_trust_t *next = router_trust_new();
    assert_int_equal(router_trust_add(next, "p1", p1, "inproc://p1", NULL, NULL, 0, err,
                                      sizeof err), 0);
    assert_int_equal(router_trust_add(next, "p2", p2, "inproc://p2", NULL, NULL, 0, err,
                                      sizeof err), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/trusted_peers.json", home);
    assert_int_equal(router_trust_save(next, path, err, sizeof err), 0);
    router_trust_destroy(&next);
    router_node_trust_reload(n, "test: a peer added");
    assert_int_equal(router_trust_count(router_node_trust_view(n)), 2);
    assert_non_null(router_trust_by_name(router_node_trust_view(n), "p2", NULL));

    /* trust_set with each of its allocations failing in turn (the node
     * is not started: it runs here, where the failures are armed): refused
     * with a reason and the store as it was, or done, the file with it. */
    unsigned refused = 0;
    char prev[64] = "";
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        uint8_t p3[32];
        s_key(0x83, p3);
        char addr[64];
        snprintf(addr, sizeof addr, "inproc://p3-%ld", i); /* each run changes the row */
        err[0] = '\0';
        alloc_fail_arm(i);
        int rc = router_node_trust_set(n, "p3", p3, addr, true, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        const router_peer_t *row = router_trust_by_name(router_node_trust_view(n), "p3", NULL);
        if (rc != 0) {
            assert_true(failed);
            assert_true(err[0] != '\0');
            if (prev[0])
                assert_string_equal(row->addr, prev);
            else
                assert_null(row);
            refused++;
            continue;
        }
        assert_non_null(row);
        assert_string_equal(row->addr, addr);
        snprintf(prev, sizeof prev, "%s", addr);
        if (!failed)
            break;
    }
    assert_true(refused > 0);
    router_node_trust_reload(n, "test: as set");
    assert_int_equal(router_trust_count(router_node_trust_view(n)), 3);
    assert_string_equal(router_trust_by_name(router_node_trust_view(n), "p3", NULL)->addr, prev);

    assert_int_equal(unlink(path), 0);
    router_node_trust_reload(n, "test: file gone");
    assert_int_equal(router_trust_count(router_node_trust_view(n)), 0);
    router_node_destroy(&n);
    s_rm_tree(home);
}

/* A full node (home, listeners, workers, an inproc name, signals) built with each of its
 * allocations failing in turn: every run refuses with an error for people
 * and leaks nothing (LSan), or copes and builds a node that runs and stops,
 * and at least one allocation refuses the whole node, as a node that cannot
 * allocate its own parts must. */
static void test_new_without_memory(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-oom-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_config_t cfg;
    router_config_defaults(&cfg);
    snprintf(cfg.comms.address, sizeof cfg.comms.address, "127.0.0.1:0");
    snprintf(cfg.comms.uds_path, sizeof cfg.comms.uds_path, "%s/comms.sock", home);
    /* The plain event listener too (comms.auth none), an inproc name and
     * the signals a daemon handles: every step of router_node_new. */
    cfg.comms.auth = ROUTER_COMMS_AUTH_NONE;
    snprintf(cfg.comms.event_address, sizeof cfg.comms.event_address, "127.0.0.1:0");
    char endpoint[64];
    router_inproc_t *net = router_inproc_new();
    router_node_opts_t o = {.home = home, .config = &cfg, .listen = true, .workers = true,
                            .workers_endpoint = endpoint, .inproc = net, .inproc_name = "oom",
                            .handle_signals = true};
    unsigned refused = 0, coped = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        /* One endpoint per run: ZeroMQ frees a closed socket's inproc name
         * on its own thread, some time after the broker is gone. */
        snprintf(endpoint, sizeof endpoint, "inproc://kith.workers.node-oom.%ld", i);
        /* What a caller's buffer held before: the reason must replace it. */
        char err[256] = "(stale)";
        alloc_fail_arm(i);
        router_node_t *n = router_node_new(&o, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!n) {
            if (!failed)
                print_error("refused without an allocation failing: %s\n", err);
            assert_true(failed); /* only a failed allocation refuses here */
            assert_true(err[0] != '\0');
            assert_string_not_equal(err, "(stale)");
            refused++;
            continue;
        }
        assert_int_equal(router_node_start(n), 0);
        router_node_destroy(&n);
        if (!failed)
            break;
        coped++;
    }
    assert_true(refused > 0);
    router_inproc_destroy(&net);
    s_rm_tree(home);
    print_message("%u allocations refused the node, %u were coped with\n", refused, coped);
}

int main(void)
{
    if (alloc_fail_sqlite_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_messages_between_three, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_request_and_reused_link, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_peer_and_untrusted, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_offline_after_stop, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_stop_releases_blocked_send, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_unreachable_peers, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_dns_name_dead_addresses_first, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_send_without_memory, s_setup, s_teardown),
        cmocka_unit_test(test_not_running),
        cmocka_unit_test_setup_teardown(test_calls_after_the_loop_ended, s_setup, s_teardown),
        cmocka_unit_test(test_start_twice_or_after_stop),
        cmocka_unit_test(test_stop_ends_run),
        cmocka_unit_test_setup_teardown(test_post_queue_full, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_loop_send_without_memory, s_setup, s_teardown),
        cmocka_unit_test(test_new_refusals),
        cmocka_unit_test(test_trust_reload),
        cmocka_unit_test(test_router_tools_through_comms),
        cmocka_unit_test(test_dns_lookup_pending_at_stop),
        cmocka_unit_test(test_new_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
