/* tests/node_life_test.c — a node's life at its edges: calls, trust edits,
 * listens and sends made while a graceful stop drains (refused with the
 * reason and the errno the header promises, nothing changed), homes that
 * cannot be used (a lock that cannot be opened, paths too long for each
 * file the node keeps), listeners that cannot open, and a send a Meerkat
 * peer could not read. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "proto/pubkey.h"
#include "router/net/inproc.h"
#include "router/net/loop.h"
#include "router/node.h"
#include "router/state/home.h"
#include "router/state/trust.h"

static void s_key(uint8_t seed_byte, uint8_t pk[32])
{
    uint8_t seed[32], sk[64];
    memset(seed, seed_byte, sizeof seed);
    proto_ed25519_seed_keypair(seed, pk, sk);
}

static void s_rm_tree(const char *dir)
{
    char cmd[ROUTER_PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static int s_nothing(router_node_t *self, void *arg)
{
    (void) self;
    ++*(int *) arg;
    return 0;
}

static int s_where(router_node_t *self, void *arg)
{
    (void) self;
    *(pthread_t *) arg = pthread_self();
    return 0;
}

/* A stop hook that holds the drain (as the gateway does while it answers)
 * until the test lets go, and says when it ran. */
typedef struct {
    router_node_t *node;
    sem_t ran;
} s_hold_t;

static void s_hold_on_stop(void *ud)
{
    s_hold_t *h = ud;
    router_node_drain_hold(h->node);
    sem_post(&h->ran);
}

static void s_hold_release(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_hold_t *h = arg;
    router_node_drain_release(h->node);
}

/* A graceful stop begun on the loop (router_node_stop_async, as POST
 * /admin/shutdown does) is draining: a call from another thread is
 * refused with errno ECANCELED — the caller's errno, whatever it was
 * before (the loop thread's was set, the caller's left as it was: a
 * caller that had seen EAGAIN was told "busy") — and a trust edit, a
 * listen and a send are refused as "the node is stopping", the file and
 * the store as they were. */
static void test_calls_while_stopping(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-life-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_inproc_t *net = router_inproc_new();
    router_node_opts_t o = {.home = home, .inproc = net, .inproc_name = "a"};
    char err[ROUTER_TRUST_ERR_MAX] = "";
    router_node_t *a = router_node_new(&o, err, sizeof err);
    assert_non_null(a);
    uint8_t pkb[32];
    s_key(0x21, pkb);
    assert_int_equal(router_node_trust_set(a, "b", pkb, "inproc://b", true, err, sizeof err), 0);
    s_hold_t h = {.node = a};
    assert_int_equal(sem_init(&h.ran, 0, 0), 0);
    router_node_on_stop(a, s_hold_on_stop, &h);
    assert_int_equal(router_node_start(a), 0);
    router_node_stop_async(a);
    while (sem_wait(&h.ran) != 0)
        assert_int_equal(errno, EINTR);

    int calls = 0;
    errno = EAGAIN;
    assert_int_equal(router_node_call(a, s_nothing, &calls), -1);
    assert_int_equal(errno, ECANCELED);
    assert_int_equal(calls, 0);

    uint8_t pkc[32];
    s_key(0x22, pkc);
    errno = EAGAIN;
    assert_int_equal(router_node_trust_set(a, "c", pkc, "inproc://c", true, err, sizeof err), -1);
    assert_string_equal(err, "the node is stopping");
    router_trust_t *undo = router_node_trust_copy(a, err, sizeof err);
    assert_non_null(undo);
    errno = EAGAIN;
    assert_int_equal(router_node_trust_restore(a, &undo, true, err, sizeof err), -1);
    assert_null(undo);
    assert_string_equal(err, "the node is stopping");
    errno = EAGAIN;
    assert_int_equal(router_node_listen(a, "tcp://127.0.0.1:0", err, sizeof err), -1);
    assert_string_equal(err, "the node is stopping");
    router_node_receipt_t r;
    assert_int_equal(router_node_send_message(a, "b", "late", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_OFFLINE);
    assert_string_equal(r.detail, "the node is stopping");

    char path[512];
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_TRUST_FILE);
    router_trust_t *disk = router_trust_load(path, err, sizeof err);
    assert_non_null(disk);
    assert_int_equal(router_trust_count(disk), 1);
    router_trust_destroy(&disk);
    router_trust_t *mem = router_node_trust_copy(a, err, sizeof err);
    assert_int_equal(router_trust_count(mem), 1);
    router_trust_destroy(&mem);

    assert_int_equal(router_loop_post(router_node_loop(a), s_hold_release, &h), 0);
    router_node_destroy(&a);
    sem_destroy(&h.ran);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

/* A thread of the caller's that runs the node, says when the run ended,
 * and destroys the node there (the loop's owner must) when told. */
typedef struct {
    router_node_t *node;
    int rc;
    sem_t ended, destroy;
} s_runner_t;

static void *s_run_main(void *arg)
{
    s_runner_t *r = arg;
    r->rc = router_node_run(r->node);
    sem_post(&r->ended);
    while (sem_wait(&r->destroy) != 0)
        ;
    router_node_destroy(&r->node);
    return NULL;
}

/* A node run on a thread of the caller's (router_node_run, as kith daemon
 * runs it on main), whose run ended by a stop begun on the loop
 * (router_node_stop_async, POST /admin/shutdown) but not destroyed yet: a
 * call, a trust edit, a listen are refused (ECANCELED, "the node is
 * stopping") — they ran on the caller's thread as if the node had never
 * started, against a drained node and a loop another thread owns — and it
 * does not start again. */
static void test_calls_after_run_ended(void **state)
{
    (void) state;
    router_inproc_t *net = router_inproc_new();
    router_node_opts_t o = {.inproc = net, .inproc_name = "r"};
    char err[ROUTER_TRUST_ERR_MAX] = "";
    router_node_t *n = router_node_new(&o, err, sizeof err);
    assert_non_null(n);
    s_runner_t run = {.node = n};
    assert_int_equal(sem_init(&run.ended, 0, 0), 0);
    assert_int_equal(sem_init(&run.destroy, 0, 0), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_run_main, &run), 0);
    /* It runs once a call runs on its loop, not here. */
    pthread_t where = pthread_self();
    for (int i = 0; pthread_equal(where, pthread_self()); i++) {
        assert_true(i < 100000);
        assert_int_equal(router_node_call(n, s_where, &where), 0);
        if (pthread_equal(where, pthread_self()))
            sched_yield();
    }
    int calls = 0;
    router_node_stop_async(n);
    while (sem_wait(&run.ended) != 0)
        assert_int_equal(errno, EINTR);
    assert_int_equal(run.rc, 0);

    calls = 0;
    errno = 0;
    assert_int_equal(router_node_call(n, s_nothing, &calls), -1);
    assert_int_equal(errno, ECANCELED);
    assert_int_equal(calls, 0);
    uint8_t pk[32];
    s_key(0x41, pk);
    assert_int_equal(router_node_trust_set(n, "late", pk, "inproc://late", false, err, sizeof err),
                     -1);
    assert_string_equal(err, "the node is stopping");
    assert_int_equal(router_trust_count(router_node_trust_view(n)), 0);
    assert_int_equal(router_node_listen(n, "tcp://127.0.0.1:0", err, sizeof err), -1);
    assert_string_equal(err, "the node is stopping");
    errno = 0;
    assert_int_equal(router_node_start(n), -1);
    assert_int_equal(errno, ECANCELED);
    sem_post(&run.destroy);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_null(run.node);
    sem_destroy(&run.ended);
    sem_destroy(&run.destroy);
    router_inproc_destroy(&net);
}

/* A home whose node.lock cannot be opened (a directory stands there): the
 * node is not made, and the reason names the file and why. */
static void test_home_lock_cannot_open(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-life-XXXXXX";
    assert_non_null(mkdtemp(home));
    char lock[512];
    snprintf(lock, sizeof lock, "%s/node.lock", home);
    assert_int_equal(mkdir(lock, 0700), 0);
    router_node_opts_t o = {.home = home};
    char err[512] = "";
    assert_null(router_node_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "node.lock"));
    assert_non_null(strstr(err, strerror(EISDIR)));
    s_rm_tree(home);
}

/* Makes (and returns, in a static buffer) a directory under root whose
 * path is `want` bytes long. */
static const char *s_dir_of_length(const char *root, size_t want)
{
    static char path[ROUTER_PATH_MAX];
    size_t len = strlen(root);
    assert_true(want > len + 1 && want < sizeof path);
    memcpy(path, root, len + 1);
    while (len < want) {
        size_t part = want - len - 1 > 200 ? 200 : want - len - 1;
        if (want - len - 1 - part == 1)
            part--; /* never leave a component of 0 bytes */
        path[len] = '/';
        memset(path + len + 1, 'd', part);
        len += part + 1;
        path[len] = '\0';
    }
    assert_int_equal(router_home_mkdirs(path, 0700), 0);
    return path;
}

/* Homes whose paths leave no room for a file the node keeps there: a
 * state.db SQLite cannot open (it takes at most 504 bytes: the reason was
 * only "unable to open database file"), and, one length after another,
 * homes too long for the files they hold past the longest path (identity
 * is the first to say so). Each is refused with a reason that says the
 * path is too long. */
static void test_home_path_too_long(void **state)
{
    (void) state;
    char root[] = "/tmp/kith-node-life-XXXXXX";
    assert_non_null(mkdtemp(root));
    char err[ROUTER_PATH_MAX + 256];
    const size_t db_max = 504 - strlen("/state.db");
    router_node_opts_t o = {.home = s_dir_of_length(root, db_max)};
    router_node_t *n = router_node_new(&o, err, sizeof err);
    if (!n)
        fprintf(stderr, "%s\n", err);
    assert_non_null(n);
    router_node_destroy(&n);
    o.home = s_dir_of_length(root, db_max + 1);
    assert_null(router_node_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "home path too long: its state.db would be named in 505 bytes, "
                                "and SQLite takes at most 504"));
    o.memory_inbox = true; /* no state.db: this home does */
    assert_non_null(n = router_node_new(&o, err, sizeof err));
    router_node_destroy(&n);
    /* A relative home is measured from the working directory, as SQLite
     * makes it absolute. */
    char cwd[ROUTER_PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(s_dir_of_length(root, db_max - 1)), 0); /* + "/h" */
    assert_int_equal(mkdir("h", 0700), 0);
    router_node_opts_t rel = {.home = "h"};
    assert_null(router_node_new(&rel, err, sizeof err));
    assert_non_null(strstr(err, "would be named in 505 bytes"));
    assert_int_equal(chdir(cwd), 0);

    unsigned refused = 0;
    for (size_t want = ROUTER_PATH_MAX - 24; want < ROUTER_PATH_MAX - 1; want++) {
        o.home = s_dir_of_length(root, want);
        for (int memory = 0; memory < 2; memory++) {
            o.memory_inbox = memory;
            err[0] = '\0';
            assert_null(n = router_node_new(&o, err, sizeof err));
            if (getenv("NODE_LIFE_SHOW"))
                fprintf(stderr, "%zu %d: %.60s\n", want, memory, err);
            if (!strstr(err, "too long"))
                fprintf(stderr, "home of %zu bytes: %s\n", want, err);
            assert_non_null(strstr(err, "too long"));
            refused++;
        }
    }
    assert_int_equal(refused, 2 * 23);
    s_rm_tree(root);
}

/* comms on a Unix socket whose directory cannot be made: the node is not
 * made, and the reason names the path and why. */
static void test_listen_on_a_missing_directory(void **state)
{
    (void) state;
    router_config_t cfg;
    router_config_defaults(&cfg);
    cfg.comms.mode = ROUTER_COMMS_UDS;
    /* Its directory is made when missing: a file stands there instead. */
    char file[] = "/tmp/kith-node-life-XXXXXX";
    int fd = mkstemp(file);
    assert_true(fd >= 0);
    close(fd);
    snprintf(cfg.comms.uds_path, sizeof cfg.comms.uds_path, "%s/c.sock", file);
    router_node_opts_t o = {.config = &cfg, .listen = true};
    char err[512] = "", want[256];
    assert_null(router_node_new(&o, err, sizeof err));
    snprintf(want, sizeof want, "cannot listen on %s/c.sock: %s", file, strerror(ENOTDIR));
    assert_string_equal(err, want);
    assert_int_equal(unlink(file), 0);
}

/* A send to a Meerkat peer (trusted_peers.json "profile": "meerkat") of
 * a kind with a key Meerkat cannot read back and re-verify (WIRE §23.4):
 * refused before anything is sent, -1 with the reason. */
static void test_send_meerkat_cannot_read(void **state)
{
    (void) state;
    router_inproc_t *net = router_inproc_new();
    router_node_opts_t o = {.inproc = net, .inproc_name = "k"};
    char err[ROUTER_TRUST_ERR_MAX] = "";
    router_node_t *n = router_node_new(&o, err, sizeof err);
    assert_non_null(n);
    uint8_t pk[32];
    s_key(0x31, pk);
    assert_int_equal(router_node_trust_set(n, "m", pk, "inproc://m", false, err, sizeof err), 0);
    router_trust_t *t = router_node_trust_copy(n, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_trust_set_profile(t, router_trust_at(t, 0),
                                              ROUTER_PEER_PROFILE_MEERKAT), 0);
    /* As the file would have it: a restore brings back rows whole. */
    assert_int_equal(router_node_trust_set(n, "m", pk, "inproc://m2", false, err, sizeof err), 0);
    assert_int_equal(router_node_trust_restore(n, &t, false, err, sizeof err), 0);
    assert_int_equal(router_node_start(n), 0);

    cbor_item_t *kind = cbor_new_definite_map(3);
    struct cbor_pair pairs[] = {
        {cbor_move(cbor_build_string("type")), cbor_move(cbor_build_string("message"))},
        {cbor_move(cbor_build_string("body")), cbor_move(cbor_build_string("hi"))},
        {cbor_move(cbor_build_string("x_extra")), cbor_move(cbor_build_uint8(1))},
    };
    for (size_t i = 0; i < 3; i++)
        assert_true(cbor_map_add(kind, pairs[i]));
    router_node_receipt_t r;
    assert_int_equal(router_node_send(n, "m", &kind, &r), -1);
    assert_null(kind);
    assert_int_equal(r.outcome, ROUTER_SEND_OFFLINE);
    assert_non_null(strstr(r.detail, "a Meerkat peer cannot read this"));
    router_node_destroy(&n);
    router_inproc_destroy(&net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls_while_stopping),
        cmocka_unit_test(test_calls_after_run_ended),
        cmocka_unit_test(test_home_lock_cannot_open),
        cmocka_unit_test(test_home_path_too_long),
        cmocka_unit_test(test_listen_on_a_missing_directory),
        cmocka_unit_test(test_send_meerkat_cannot_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
