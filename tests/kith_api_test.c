/* tests/kith_api_test.c — the public library (router/kith.h) as users link
 * it (libkith.so): ten nodes and a thousand messages, each acked and
 * received once; partitions and heals; a delay seen in the order things
 * arrive, never in how long they took; a restart from the same home that
 * keeps the identity and still refuses a replay; requests and responses;
 * and every error path a caller can reach. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>
#include <yajl/yajl_tree.h>

#include "proto/envelope.h"
#include "router/kith.h"
#include "router/state/identity.h"

/* Generous: waits that must end, never a measure of speed. */
#define S_WAIT_MS 20000
/* Sends that cannot be acked (partitioned, held): how long they wait. */
#define S_SHORT_MS 300

/* ---------------------------------------------------------------- helpers */

static kith_node_t *s_node(kith_net_t *net, const char *name, const char *home)
{
    kith_node_t *n = kith_node_new(net, name, home);
    if (!n)
        fprintf(stderr, "kith_node_new %s: %s\n", name, kith_last_error());
    assert_non_null(n);
    return n;
}

static void s_trust(kith_node_t *a, kith_node_t *b)
{
    if (kith_node_trust(a, b) != 0)
        fprintf(stderr, "kith_node_trust: %s\n", kith_last_error());
    assert_int_equal(kith_node_trust(a, b), 0);
}

static void s_send(kith_node_t *from, const char *to, const char *body, int expect)
{
    int rc = kith_node_send(from, to, body, expect == KITH_ACKED ? S_WAIT_MS : S_SHORT_MS);
    if (rc != expect)
        fprintf(stderr, "send %s to %s: %d (%s)\n", body, to, rc, kith_last_error());
    assert_int_equal(rc, expect);
}

/* Receives one message and returns its JSON parsed (caller frees). */
static yajl_val s_recv(kith_node_t *at, int timeout_ms, kith_msg_t **keep)
{
    kith_msg_t *m = NULL;
    int rc = kith_node_recv(at, &m, timeout_ms);
    if (rc != 0)
        fprintf(stderr, "recv: %s\n", kith_last_error());
    assert_int_equal(rc, 0);
    char err[256];
    yajl_val v = yajl_tree_parse(kith_msg_json(m), err, sizeof err);
    if (!v)
        fprintf(stderr, "not JSON (%s): %s\n", err, kith_msg_json(m));
    assert_non_null(v);
    if (keep)
        *keep = m;
    else
        kith_msg_destroy(&m);
    return v;
}

static const char *s_str(yajl_val v, const char *k1, const char *k2)
{
    const char *path[] = {k1, k2, NULL};
    yajl_val s = yajl_tree_get(v, path, yajl_t_string);
    return s ? YAJL_GET_STRING(s) : NULL;
}

/* Receives one message and checks its body (and sender, when given). */
static void s_expect(kith_node_t *at, const char *body, const kith_node_t *from)
{
    yajl_val v = s_recv(at, S_WAIT_MS, NULL);
    assert_string_equal(s_str(v, "kind", "type"), "message");
    assert_string_equal(s_str(v, "kind", "body"), body);
    if (from)
        assert_string_equal(s_str(v, "from", NULL), kith_node_pubkey(from));
    yajl_tree_free(v);
}

static void s_expect_nothing(kith_node_t *at)
{
    kith_msg_t *m = NULL;
    assert_int_equal(kith_node_recv(at, &m, 0), -1);
    assert_null(m);
    assert_string_equal(kith_last_error(), "timeout");
}

/* ---------------------------------------------------------------- ten nodes, a thousand messages */

#define TEN 10
#define PER_NODE 100

typedef struct {
    kith_node_t **nodes;
    int i;
    int acked;
} s_sender_t;

static void *s_sender(void *arg)
{
    s_sender_t *s = arg;
    for (int k = 0; k < PER_NODE; k++) {
        char to[8], body[32];
        snprintf(to, sizeof to, "n%d", (s->i + 1 + k % (TEN - 1)) % TEN);
        snprintf(body, sizeof body, "m-%d-%d", s->i, k);
        if (kith_node_send(s->nodes[s->i], to, body, S_WAIT_MS) == KITH_ACKED)
            s->acked++;
        else
            fprintf(stderr, "%s to %s: %s\n", body, to, kith_last_error());
    }
    return NULL;
}

static void test_ten_nodes_thousand_messages(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    assert_non_null(net);
    kith_node_t *nodes[TEN];
    for (int i = 0; i < TEN; i++) {
        char name[8];
        snprintf(name, sizeof name, "n%d", i);
        nodes[i] = s_node(net, name, NULL);
    }
    for (int i = 0; i < TEN; i++)
        for (int j = i + 1; j < TEN; j++)
            s_trust(nodes[i], nodes[j]);

    /* Every node sends from a thread of its own, all at once. */
    pthread_t threads[TEN];
    s_sender_t senders[TEN];
    for (int i = 0; i < TEN; i++) {
        senders[i] = (s_sender_t){.nodes = nodes, .i = i};
        assert_int_equal(pthread_create(&threads[i], NULL, s_sender, &senders[i]), 0);
    }
    for (int i = 0; i < TEN; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(senders[i].acked, PER_NODE);
    }

    /* Acked means admitted: all thousand are there, each once. */
    static bool seen[TEN][PER_NODE];
    memset(seen, 0, sizeof seen);
    for (int j = 0; j < TEN; j++) {
        for (int got = 0; got < PER_NODE; got++) {
            yajl_val v = s_recv(nodes[j], S_WAIT_MS, NULL);
            int i, k;
            assert_int_equal(sscanf(s_str(v, "kind", "body"), "m-%d-%d", &i, &k), 2);
            assert_true(i >= 0 && i < TEN && k >= 0 && k < PER_NODE);
            assert_int_equal((i + 1 + k % (TEN - 1)) % TEN, j); /* sent to j */
            assert_string_equal(s_str(v, "from", NULL), kith_node_pubkey(nodes[i]));
            assert_false(seen[i][k]);
            seen[i][k] = true;
            yajl_tree_free(v);
        }
        s_expect_nothing(nodes[j]);
    }
    kith_net_destroy(&net);
    assert_null(net);
}

/* ---------------------------------------------------------------- partition and heal */

static void test_partition_then_heal(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL), *c = s_node(net, "c", NULL);
    s_trust(a, b);
    s_trust(c, b);
    s_trust(c, a);
    s_send(a, "b", "before", KITH_ACKED);
    s_expect(b, "before", a);
    s_send(b, "a", "hello", KITH_ACKED);
    s_expect(a, "hello", b);

    assert_int_equal(kith_net_partition(net, a, b), 0);
    /* Both ways, on the connections open before it. */
    s_send(a, "b", "during", KITH_OFFLINE);
    assert_non_null(strstr(kith_last_error(), "offline"));
    s_send(b, "a", "back", KITH_OFFLINE);
    /* Only that pair: c still reaches b. */
    s_send(c, "b", "from c", KITH_ACKED);
    s_expect(b, "from c", c);
    s_expect_nothing(b);
    s_expect_nothing(a);

    /* Near the frame limit: more than the socket buffers hold, so it waits
     * in the sender's queue too, and still arrives whole. */
    size_t big_len = 900 * 1024;
    char *big = malloc(big_len + 1);
    assert_non_null(big);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char) ('a' + i % 26);
    big[big_len] = '\0';
    s_send(a, "b", big, KITH_OFFLINE);

    assert_int_equal(kith_net_heal(net, a, b), 0);
    s_send(a, "b", "after", KITH_ACKED);
    /* What was written during the partition stayed queued, in order. */
    s_expect(b, "during", a);
    s_expect(b, big, a);
    free(big);
    s_expect(b, "after", a);
    s_expect(a, "back", b);
    s_expect_nothing(b);

    /* A connection made during a partition carries nothing until the heal
     * (which comes long before a's 10 s first-frame deadline could cut it,
     * WIRE §22.3). */
    assert_int_equal(kith_net_partition(net, c, a), 0);
    s_send(c, "a", "c during", KITH_OFFLINE);
    assert_int_equal(kith_net_heal(net, a, c), 0);
    s_send(c, "a", "c after", KITH_ACKED);
    s_expect(a, "c during", c);
    s_expect(a, "c after", c);
    s_expect_nothing(a);
    kith_net_destroy(&net);
}

/* ---------------------------------------------------------------- delay, seen by order */

static void test_delay_reorders(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL), *c = s_node(net, "c", NULL);
    s_trust(a, c);
    s_trust(b, c);
    s_send(a, "c", "warm", KITH_ACKED); /* a's connection to c is open before the delay */
    s_expect(c, "warm", a);

    /* A delay far longer than the test: a's envelope is held. Its send
     * gives up first (its ack would be held too), so "slow" was written
     * before "fast" was sent — yet "fast" arrives first. */
    assert_int_equal(kith_net_delay(net, a, c, 3600 * 1000), 0);
    s_send(a, "c", "slow", KITH_OFFLINE);
    s_send(b, "c", "fast", KITH_ACKED);
    s_expect(c, "fast", b);
    s_expect_nothing(c);

    /* Lifting the delay releases what it held. */
    assert_int_equal(kith_net_delay(net, a, c, 0), 0);
    s_expect(c, "slow", a);
    s_send(a, "c", "after", KITH_ACKED);
    s_expect(c, "after", a);
    kith_net_destroy(&net);
}

/* ---------------------------------------------------------------- restart from a home */

static char s_tmp[64];

static void s_path(char *out, size_t cap, const char *rel)
{
    snprintf(out, cap, "%s/%s", s_tmp, rel);
}

/* A signed message envelope from a (its key read from its home) to b, as
 * a whole frame. Caller frees. */
static uint8_t *s_frame(const char *home_a, const char *home_b, const char *body, size_t *len)
{
    char err[ROUTER_IDENTITY_ERR_MAX];
    router_identity_t ia, ib;
    assert_int_equal(router_identity_load(home_a, &ia, err, sizeof err), 0);
    assert_int_equal(router_identity_load(home_b, &ib, err, sizeof err), 0);
    cbor_item_t *kind = proto_kind_message(body, strlen(body), NULL, PROTO_HANDLING_NONE);
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(NULL, ia.pk, ib.pk, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, ia.sk), 0);
    uint8_t *frame = NULL;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, len), 0);
    proto_envelope_destroy(&env);
    router_identity_wipe(&ia);
    router_identity_wipe(&ib);
    return frame;
}

/* Writes the frame on a new connection to the Unix socket at path and
 * reads what comes back until EOF or an ack's worth: returns the bytes
 * read (PROTO_ACK_FRAME_LEN: acked; 0: closed without an ack). */
static size_t s_raw_send(const char *path, const uint8_t *frame, size_t len)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof sa), 0);
    assert_int_equal(write(fd, frame, len), (ssize_t) len);
    uint8_t buf[PROTO_ACK_FRAME_LEN];
    size_t got = 0;
    while (got < sizeof buf) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, S_WAIT_MS), 1);
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n <= 0)
            break;
        got += (size_t) n;
    }
    close(fd);
    return got;
}

static void test_restart_keeps_identity_and_refuses_replay(void **state)
{
    (void) state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kith_api_test.XXXXXX");
    assert_non_null(mkdtemp(s_tmp));
    char home_a[128], home_b[128], sock[128], sock2[128], listen_at[160];
    s_path(home_a, sizeof home_a, "a");
    s_path(home_b, sizeof home_b, "b");
    s_path(sock, sizeof sock, "b.sock");
    s_path(sock2, sizeof sock2, "b2.sock");

    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", home_a), *b = s_node(net, "b", home_b);
    s_trust(a, b);
    char key_b[64];
    snprintf(key_b, sizeof key_b, "%s", kith_node_pubkey(b));
    snprintf(listen_at, sizeof listen_at, "uds://%s", sock);
    assert_int_equal(kith_node_listen(b, listen_at), 0);
    /* TCP too: port 0 gives one, and says which. */
    assert_true(kith_node_listen(b, "tcp://127.0.0.1:0") > 0);

    /* Another program (this test, with a's key) sends over the socket. */
    size_t len;
    uint8_t *frame = s_frame(home_a, home_b, "once", &len);
    assert_int_equal(s_raw_send(sock, frame, len), PROTO_ACK_FRAME_LEN);
    s_expect(b, "once", a);
    s_send(a, "b", "kept", KITH_ACKED); /* admitted, left unread across the restart */

    /* Restart b from its home. */
    kith_node_destroy(&b);
    assert_null(b);
    b = s_node(net, "b", home_b);
    assert_string_equal(kith_node_pubkey(b), key_b); /* the same identity */
    s_expect(b, "kept", a);                          /* the inbox survived */
    snprintf(listen_at, sizeof listen_at, "uds://%s", sock2);
    assert_int_equal(kith_node_listen(b, listen_at), 0);
    /* The same envelope again: refused (closed, no ack), nothing admitted. */
    assert_int_equal(s_raw_send(sock2, frame, len), 0);
    s_expect_nothing(b);
    /* A new one from the same sender is fine: the refusal was the replay. */
    uint8_t *fresh = s_frame(home_a, home_b, "fresh", &len);
    assert_int_equal(s_raw_send(sock2, fresh, len), PROTO_ACK_FRAME_LEN);
    s_expect(b, "fresh", a);
    /* Trust survived too, in both directions, without trusting again. */
    s_send(b, "a", "hello again", KITH_ACKED);
    s_expect(a, "hello again", b);
    free(frame);
    free(fresh);
    kith_net_destroy(&net);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_tmp);
    assert_int_equal(system(cmd), 0);
}

/* ---------------------------------------------------------------- requests, responses, refusals */

static void test_request_and_response(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
    s_trust(a, b);
    assert_int_equal(kith_node_request(a, "b", "sum", "{\"of\":[1,2]}", S_WAIT_MS), KITH_ACKED);
    kith_msg_t *req = NULL;
    yajl_val v = s_recv(b, S_WAIT_MS, &req);
    assert_string_equal(s_str(v, "kind", "type"), "request");
    assert_string_equal(s_str(v, "kind", "intent"), "sum");
    const char *of[] = {"kind", "params", "of", NULL};
    yajl_val arr = yajl_tree_get(v, of, yajl_t_array);
    assert_non_null(arr);
    assert_int_equal(YAJL_GET_ARRAY(arr)->len, 2);
    char req_id[64];
    snprintf(req_id, sizeof req_id, "%s", s_str(v, "id", NULL));
    yajl_tree_free(v);

    /* Messages are not requests. */
    s_send(a, "b", "just a message", KITH_ACKED);
    kith_msg_t *msg = NULL;
    yajl_tree_free(s_recv(b, S_WAIT_MS, &msg));
    assert_int_equal(kith_node_respond(b, msg, "completed", NULL, S_WAIT_MS), KITH_ERROR);
    assert_non_null(strstr(kith_last_error(), "not a request"));
    kith_msg_destroy(&msg);

    assert_int_equal(kith_node_respond(b, req, "done", NULL, S_WAIT_MS), KITH_ERROR);
    assert_int_equal(kith_node_respond(b, req, "completed", "{\"sum\":", S_WAIT_MS), KITH_ERROR);
    assert_int_equal(kith_node_respond(b, req, "completed", "{\"sum\":3}", S_WAIT_MS), KITH_ACKED);
    kith_msg_destroy(&req);
    assert_null(req);
    v = s_recv(a, S_WAIT_MS, NULL);
    assert_string_equal(s_str(v, "kind", "type"), "response");
    assert_string_equal(s_str(v, "kind", "in_reply_to"), req_id);
    assert_string_equal(s_str(v, "kind", "status"), "completed");
    assert_string_equal(s_str(v, "from", NULL), kith_node_pubkey(b));
    const char *sum[] = {"kind", "result", "sum", NULL};
    yajl_val n = yajl_tree_get(v, sum, yajl_t_number);
    assert_non_null(n);
    assert_int_equal(YAJL_GET_INTEGER(n), 3);
    yajl_tree_free(v);

    /* A peer named by its key or its PeerId is the same peer. */
    assert_int_equal(kith_node_send(a, kith_node_pubkey(b), "by key", S_WAIT_MS), KITH_ACKED);
    s_expect(b, "by key", a);
    kith_net_destroy(&net);
}

static void test_untrusted_sender_is_refused(void **state)
{
    (void) state;
    char home[] = "/tmp/kith_api_test.XXXXXX";
    assert_non_null(mkdtemp(home));
    kith_net_t *net = kith_net_new();
    kith_node_t *b = s_node(net, "b", NULL);
    /* x trusts b through its home's trust store; b does not trust x. */
    char path[128];
    snprintf(path, sizeof path, "%s/trusted_peers.json", home);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "{\"peers\": [{\"name\": \"b\", \"pubkey\": \"%s\", \"addr\": \"inproc://b\"}]}\n",
            kith_node_pubkey(b));
    fclose(f);
    assert_int_equal(chmod(path, 0600), 0);
    kith_node_t *x = s_node(net, "x", home);
    assert_int_equal(kith_node_send(x, "b", "let me in", S_WAIT_MS), KITH_REFUSED);
    assert_non_null(strstr(kith_last_error(), "refused"));
    s_expect_nothing(b);
    /* A peer nobody is bound at: offline at once. */
    kith_node_destroy(&b);
    assert_int_equal(kith_node_send(x, "b", "anyone?", S_WAIT_MS), KITH_OFFLINE);
    kith_net_destroy(&net);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", home);
    assert_int_equal(system(cmd), 0);
}

/* Two live nodes on one home would share its state.db with two replay
 * windows and one key: the second is refused, saying why, in this net or
 * another; once the first is gone the home is free again. */
static void test_one_node_per_home(void **state)
{
    (void) state;
    char home[] = "/tmp/kith_api_test.XXXXXX";
    assert_non_null(mkdtemp(home));
    kith_net_t *net = kith_net_new(), *other = kith_net_new();
    kith_node_t *a = s_node(net, "a", home);
    char key[64];
    snprintf(key, sizeof key, "%s", kith_node_pubkey(a));
    assert_null(kith_node_new(net, "a2", home));
    assert_non_null(strstr(kith_last_error(), "in use"));
    assert_null(kith_node_new(other, "a", home));
    assert_non_null(strstr(kith_last_error(), "in use"));
    kith_node_destroy(&a);
    a = s_node(other, "a", home);
    assert_string_equal(kith_node_pubkey(a), key);
    kith_net_destroy(&net);
    kith_net_destroy(&other);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", home);
    assert_int_equal(system(cmd), 0);
}

/* ---------------------------------------------------------------- error paths */

static void *s_fail_in_thread(void *arg)
{
    (void) arg;
    assert_int_equal(kith_node_send(NULL, "b", "x", 1), KITH_ERROR);
    return strdup(kith_last_error());
}

static void test_error_paths(void **state)
{
    (void) state;
    assert_non_null(kith_version());
    assert_string_equal(kith_version(), KITH_VERSION);
    kith_net_t *net = kith_net_new(), *other = kith_net_new();
    assert_null(kith_node_new(NULL, "a", NULL));
    assert_non_null(strstr(kith_last_error(), "required"));
    assert_null(kith_node_new(net, NULL, NULL));
    assert_null(kith_node_new(net, "", NULL));
    assert_null(kith_node_new(net, "has space", NULL));
    assert_non_null(strstr(kith_last_error(), "bad name"));
    assert_null(kith_node_new(net, "", NULL));
    assert_null(kith_node_new(net, "a", ""));
    assert_null(kith_node_new(net, "a", "/proc/nope/home"));
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
    kith_node_t *z = s_node(other, "z", NULL);
    assert_null(kith_node_new(net, "a", NULL)); /* taken in this net */
    assert_non_null(strstr(kith_last_error(), "inproc://a"));
    kith_node_t *a2 = s_node(other, "a", NULL); /* but free in another */

    assert_int_equal(kith_node_trust(a, NULL), -1);
    assert_int_equal(kith_node_trust(a, a), -1);
    assert_int_equal(kith_node_trust(a, z), -1);
    assert_non_null(strstr(kith_last_error(), "different nets"));
    s_trust(a, b);
    s_trust(a, b); /* again: a no-op */

    assert_int_equal(kith_node_send(NULL, "b", "x", 1), KITH_ERROR);
    assert_int_equal(kith_node_send(a, NULL, "x", 1), KITH_ERROR);
    assert_int_equal(kith_node_send(a, "b", NULL, 1), KITH_ERROR);
    assert_int_equal(kith_node_send(a, "nobody", "x", 1), KITH_ERROR);
    assert_non_null(strstr(kith_last_error(), "no trusted peer named nobody"));
    char far_too_long[300];
    memset(far_too_long, 'n', sizeof far_too_long - 1);
    far_too_long[sizeof far_too_long - 1] = '\0';
    assert_int_equal(kith_node_send(a, far_too_long, "x", 1), KITH_ERROR);
    assert_non_null(strstr(kith_last_error(), "no trusted peer named nnnn"));
    assert_int_equal(kith_node_send(a, "ed25519:nonsense", "x", 1), KITH_ERROR);
    assert_int_equal(kith_node_send(a, "b", "\xff not utf-8", 1), KITH_ERROR);
    assert_int_equal(kith_node_request(a, "b", NULL, NULL, 1), KITH_ERROR);
    assert_int_equal(kith_node_request(a, "b", "i", "not json", 1), KITH_ERROR);
    assert_non_null(strstr(kith_last_error(), "params_json"));
    assert_int_equal(kith_node_request(a, "b", "i", NULL, S_WAIT_MS), KITH_ACKED);
    kith_msg_t *m = NULL;
    assert_int_equal(kith_node_recv(NULL, &m, 0), -1);
    assert_int_equal(kith_node_recv(b, NULL, 0), -1);
    assert_int_equal(kith_node_respond(b, NULL, "completed", NULL, 1), KITH_ERROR);
    assert_int_equal(kith_node_recv(b, &m, S_WAIT_MS), 0);
    assert_int_equal(kith_node_respond(NULL, m, "completed", NULL, 1), KITH_ERROR);
    assert_int_equal(kith_node_respond(b, m, NULL, NULL, 1), KITH_ERROR);
    kith_msg_destroy(&m);
    kith_msg_destroy(&m); /* NULL-safe */
    kith_msg_destroy(NULL);
    assert_null(kith_msg_json(NULL));
    assert_null(kith_node_pubkey(NULL));

    assert_int_equal(kith_node_listen(a, NULL), -1);
    assert_int_equal(kith_node_listen(a, "inproc://x"), -1);
    assert_int_equal(kith_node_listen(a, "tcp://no.such.host:1"), -1);
    assert_int_equal(kith_node_listen(a, "uds://relative.sock"), -1);
    /* An address too long for its kind: the reason is not cut off by it. */
    char longer[320];
    snprintf(longer, sizeof longer, "uds:///tmp/%0150d.sock", 7);
    assert_int_equal(kith_node_listen(a, longer), -1);
    assert_non_null(strstr(kith_last_error(), "Unix socket path too long"));
    snprintf(longer, sizeof longer, "tcp://%0300d:1", 7);
    assert_int_equal(kith_node_listen(a, longer), -1);
    assert_non_null(strstr(kith_last_error(), "too long"));
    /* A port another node holds: refused, saying why; both keep working. */
    int port = kith_node_listen(a, "tcp://127.0.0.1:0");
    assert_true(port > 0);
    char taken[64];
    snprintf(taken, sizeof taken, "tcp://127.0.0.1:%d", port);
    assert_int_equal(kith_node_listen(b, taken), -1);
    assert_non_null(strstr(kith_last_error(), "in use"));
    assert_int_equal(kith_node_listen(a, taken), -1); /* and by itself again */
    char sock[64], uds[80];
    snprintf(sock, sizeof sock, "/tmp/kith_api_test.%d.sock", (int) getpid());
    snprintf(uds, sizeof uds, "uds://%s", sock);
    assert_int_equal(kith_node_listen(a, uds), 0);
    assert_int_equal(kith_node_listen(b, uds), -1); /* a live socket is not taken over */
    assert_non_null(strstr(kith_last_error(), "in use"));
    s_send(b, "a", "still here", KITH_ACKED);
    kith_msg_t *still = NULL;
    assert_int_equal(kith_node_recv(a, &still, S_WAIT_MS), 0);
    kith_msg_destroy(&still);

    assert_int_equal(kith_net_partition(NULL, a, b), -1);
    assert_int_equal(kith_net_partition(net, a, a), -1);
    assert_int_equal(kith_net_partition(net, a, z), -1);
    assert_int_equal(kith_net_partition(other, a, b), -1);
    assert_int_equal(kith_net_heal(net, NULL, b), -1);
    assert_int_equal(kith_net_delay(net, a, b, -1), -1);
    assert_int_equal(kith_net_delay(net, a, b, 86400001), -1);
    assert_int_equal(kith_net_delay(net, a, b, 0), 0);

    /* The last error is per thread. */
    assert_int_equal(kith_net_delay(net, a, b, -5), -1);
    char mine[128];
    snprintf(mine, sizeof mine, "%s", kith_last_error());
    pthread_t t;
    char *theirs = NULL;
    assert_int_equal(pthread_create(&t, NULL, s_fail_in_thread, NULL), 0);
    pthread_join(t, (void **) &theirs);
    assert_non_null(strstr(theirs, "kith_node_send"));
    assert_string_equal(kith_last_error(), mine);
    free(theirs);

    kith_node_destroy(&a2);
    assert_null(a2);
    kith_node_destroy(&a2); /* NULL-safe */
    kith_node_destroy(NULL);
    kith_node_destroy(&b);
    kith_net_destroy(&net); /* a goes with it */
    assert_null(net);
    kith_net_destroy(&net);
    kith_net_destroy(NULL);
    kith_net_destroy(&other);
    unlink(sock);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ten_nodes_thousand_messages),
        cmocka_unit_test(test_partition_then_heal),
        cmocka_unit_test(test_delay_reorders),
        cmocka_unit_test(test_restart_keeps_identity_and_refuses_replay),
        cmocka_unit_test(test_request_and_response),
        cmocka_unit_test(test_untrusted_sender_is_refused),
        cmocka_unit_test(test_one_node_per_home),
        cmocka_unit_test(test_error_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
