/* tests/node_test.c — the in-process harness: several nodes in one process,
 * each on its own loop thread, connected through a private inproc namespace;
 * messages and requests acked, refusals typed, inboxes read directly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "proto/envelope.h"
#include "router/net/inproc.h"
#include "router/node.h"
#include "router/state/config.h"
#include "router/state/inbox.h"

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

/* A full node (home, listeners, workers) built with each of its
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
    char endpoint[64];
    router_node_opts_t o = {.home = home, .config = &cfg, .listen = true, .workers = true,
                            .workers_endpoint = endpoint};
    unsigned refused = 0, coped = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        /* One endpoint per run: ZeroMQ frees a closed socket's inproc name
         * on its own thread, some time after the broker is gone. */
        snprintf(endpoint, sizeof endpoint, "inproc://kith.workers.node-oom.%ld", i);
        char err[256] = "";
        alloc_fail_arm(i);
        router_node_t *n = router_node_new(&o, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!n) {
            if (!failed)
                print_error("refused without an allocation failing: %s\n", err);
            assert_true(failed); /* only a failed allocation refuses here */
            assert_true(err[0] != '\0');
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
        cmocka_unit_test(test_new_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
