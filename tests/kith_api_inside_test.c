/* tests/kith_api_inside_test.c — the public library (router/kith_api.c)
 * compiled into the test, so its failure paths can be reached through the
 * seams a DSO's calls escape (tests/alloc_fail.h, tests/io_fail.h): a
 * kith_node_trust whose second edit fails leaves neither node trusting the
 * other; an edit of one row keeps every other row whole. kith_api_test
 * checks the library as users link it; this one what it does when the
 * machine fails it. */
#include <errno.h>
#include <pthread.h>
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

#define S_SHELLS_MAX 4 /* a net keeps at most 4 destroyed nodes' shells */
#include "router/kith_api.c"

#include "alloc_fail.h"
#include "alloc_fail_loop.h"
#include "io_fail.h"

/* Generous: waits that must end, never a measure of speed. */
#define S_WAIT_MS 20000

/* ---------------------------------------------------------------- helpers */

static kith_node_t *s_node(kith_net_t *net, const char *name, const char *home)
{
    kith_node_t *n = kith_node_new(net, name, home);
    if (!n)
        fprintf(stderr, "kith_node_new %s: %s\n", name, kith_last_error());
    assert_non_null(n);
    return n;
}

/* How many peers n trusts now, and whether one of them is named `name`. */
static size_t s_trusted(kith_node_t *n, const char *name, bool *has)
{
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_node_trust_copy(n->node, err, sizeof err);
    assert_non_null(t);
    *has = router_trust_by_name(t, name, NULL) != NULL;
    size_t count = router_trust_count(t);
    router_trust_destroy(&t);
    return count;
}

typedef struct {
    io_fail_call_t call; /* IO_FAIL_CALLS: disarm */
    unsigned failed;     /* disarm: calls that failed since armed */
    sem_t done;
} s_io_arm_t;

static void s_io_arm_on(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_io_arm_t *a = arg;
    if (a->call != IO_FAIL_CALLS)
        io_fail_arm(a->call, 0, ENOSPC);
    else
        a->failed = io_fail_disarm();
    sem_post(&a->done);
}

/* tests/io_fail.h on n's loop thread, where its trust edits run: the next
 * `call` there fails with ENOSPC (IO_FAIL_CALLS: disarm, returning how many
 * failed). */
static unsigned s_io_fail_on_loop(kith_node_t *n, io_fail_call_t call)
{
    s_io_arm_t a = {.call = call};
    assert_int_equal(sem_init(&a.done, 0, 0), 0);
    assert_int_equal(router_loop_post(router_node_loop(n->node), s_io_arm_on, &a), 0);
    while (sem_wait(&a.done) != 0)
        assert_int_equal(errno, EINTR);
    sem_destroy(&a.done);
    return a.failed;
}

static char s_tmp[64];

static void s_tmp_make(void)
{
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kith_api_inside.XXXXXX");
    assert_non_null(mkdtemp(s_tmp));
}

static void s_tmp_remove(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_tmp);
    assert_int_equal(system(cmd), 0);
}

/* ---------------------------------------------------------------- kith_node_trust, all or nothing */

/* b's edit cannot be written (its disk is full): the call fails, and a,
 * whose edit went first, is put back as it was — in memory and on disk. */
static void test_trust_undone_when_second_write_fails(void **state)
{
    (void) state;
    s_tmp_make();
    char home_a[128], home_b[128], file_a[160];
    snprintf(home_a, sizeof home_a, "%s/a", s_tmp);
    snprintf(home_b, sizeof home_b, "%s/b", s_tmp);
    snprintf(file_a, sizeof file_a, "%s/%s", home_a, ROUTER_TRUST_FILE);
    kith_net_t *net = kith_net_new();
    assert_non_null(net);
    kith_node_t *a = s_node(net, "a", home_a), *b = s_node(net, "b", home_b);

    s_io_fail_on_loop(b, IO_FAIL_RENAME);
    assert_int_equal(kith_node_trust(a, b), -1);
    assert_int_equal(s_io_fail_on_loop(b, IO_FAIL_CALLS), 1);
    assert_non_null(strstr(kith_last_error(), "b cannot trust a"));

    bool has;
    assert_int_equal(s_trusted(a, "b", &has), 0);
    assert_false(has);
    assert_int_equal(s_trusted(b, "a", &has), 0);
    assert_int_equal(kith_node_send(a, "b", "half", S_WAIT_MS), KITH_ERROR);
    assert_non_null(strstr(kith_last_error(), "no trusted peer named b"));
    /* A restart would not bring the half back either. */
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *on_disk = router_trust_load(file_a, err, sizeof err);
    assert_non_null(on_disk);
    assert_int_equal(router_trust_count(on_disk), 0);
    router_trust_destroy(&on_disk);

    /* The disk has room again: the same call now does both. */
    assert_int_equal(kith_node_trust(a, b), 0);
    assert_int_equal(kith_node_send(a, "b", "whole", S_WAIT_MS), KITH_ACKED);
    assert_int_equal(kith_node_send(b, "a", "whole", S_WAIT_MS), KITH_ACKED);
    kith_net_destroy(&net);
    s_tmp_remove();
}

/* Out of memory at each allocation of b's edit in turn (on b's loop
 * thread, where it runs): each call either does both edits or neither. */
static void test_trust_all_or_nothing_out_of_memory(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    assert_non_null(net);
    kith_node_t *c = s_node(net, "c", NULL);
    bool done = false;
    for (long skip = 0; skip < ALLOC_FAIL_RUNS_MAX && !done; skip++) {
        kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
        /* a trusts c already: the undo must keep that row. */
        assert_int_equal(kith_node_trust(a, c), 0);
        alloc_fail_on_loop(router_node_loop(b->node), skip);
        int rc = kith_node_trust(a, b);
        unsigned failed = alloc_fail_on_loop(router_node_loop(b->node), -1);
        bool a_has_b, b_has_a, a_has_c;
        size_t na = s_trusted(a, "b", &a_has_b);
        s_trusted(b, "a", &b_has_a);
        (void) s_trusted(a, "c", &a_has_c);
        assert_true(a_has_c);
        if (rc == 0) {
            assert_true(a_has_b && b_has_a);
            assert_int_equal(na, 2);
            done = failed == 0;
        } else {
            assert_true(failed > 0);
            assert_non_null(strstr(kith_last_error(), "b cannot trust a"));
            assert_false(a_has_b);
            assert_false(b_has_a);
            assert_int_equal(na, 1);
        }
        kith_node_destroy(&a);
        kith_node_destroy(&b);
    }
    assert_true(done);
    kith_net_destroy(&net);
}

/* ---------------------------------------------------------------- trust edits keep other rows whole */

/* A Meerkat peer in a's trusted_peers.json stays a Meerkat peer (one
 * envelope per connection, WIRE §23.1) when a trusts another node: in
 * memory and in the file written back. */
static void test_trust_keeps_other_rows_profile(void **state)
{
    (void) state;
    s_tmp_make();
    char home_a[128], file_a[160];
    snprintf(home_a, sizeof home_a, "%s/a", s_tmp);
    snprintf(file_a, sizeof file_a, "%s/%s", home_a, ROUTER_TRUST_FILE);
    assert_int_equal(router_home_mkdirs(home_a, 0700), 0);
    uint8_t pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    char key[PROTO_PUBKEY_TEXT_CAP];
    proto_pubkey_format(pk, key, sizeof key);
    FILE *f = fopen(file_a, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"peers\": [{\"name\": \"m\", \"pubkey\": \"%s\", \"addr\": \"tcp://127.0.0.1:9\","
            " \"profile\": \"meerkat\", \"meta\": {\"description\": \"a phone\"}}]}\n",
            key);
    fclose(f);
    assert_int_equal(chmod(file_a, 0600), 0);

    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", home_a), *b = s_node(net, "b", NULL);
    assert_int_equal(kith_node_trust(a, b), 0);

    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *mem = router_node_trust_copy(a->node, err, sizeof err);
    router_trust_t *disk = router_trust_load(file_a, err, sizeof err);
    assert_non_null(mem);
    assert_non_null(disk);
    const router_trust_t *stores[] = {mem, disk};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(router_trust_count(stores[i]), 2);
        const router_peer_t *m = router_trust_by_pubkey(stores[i], pk);
        assert_non_null(m);
        assert_int_equal(m->profile, ROUTER_PEER_PROFILE_MEERKAT);
        assert_string_equal(m->description, "a phone");
    }
    router_trust_destroy(&mem);
    router_trust_destroy(&disk);
    kith_net_destroy(&net);
    s_tmp_remove();
}

/* What `kith peers add NAME KEY tcp://127.0.0.1:9 --home` does to a's
 * file while a runs: one locked edit (router_trust_edit). */
static int s_add_row(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    const char *name = ud;
    uint8_t pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    return router_trust_add(t, name, pk, "tcp://127.0.0.1:9", NULL, NULL, 0, err, errcap);
}

/* A peer added to a's trusted_peers.json by another writer after a
 * started survives a's trust edits: kith_node_trust writes it back with
 * b's row and a trusts it (as a reload would have it), and an undone
 * kith_node_trust (b's write fails) keeps it too. */
static void test_trust_keeps_rows_added_meanwhile(void **state)
{
    (void) state;
    s_tmp_make();
    char home_a[128], home_b[128], file_a[160], err[ROUTER_TRUST_ERR_MAX];
    snprintf(home_a, sizeof home_a, "%s/a", s_tmp);
    snprintf(home_b, sizeof home_b, "%s/b", s_tmp);
    snprintf(file_a, sizeof file_a, "%s/%s", home_a, ROUTER_TRUST_FILE);
    kith_net_t *net = kith_net_new();
    assert_non_null(net);
    kith_node_t *a = s_node(net, "a", home_a), *b = s_node(net, "b", home_b);

    assert_int_equal(router_trust_edit(home_a, s_add_row, "x", err, sizeof err), 0);
    s_io_fail_on_loop(b, IO_FAIL_RENAME);
    assert_int_equal(kith_node_trust(a, b), -1);
    assert_int_equal(s_io_fail_on_loop(b, IO_FAIL_CALLS), 1);
    router_trust_t *disk = router_trust_load(file_a, err, sizeof err);
    assert_non_null(disk);
    assert_int_equal(router_trust_count(disk), 1);
    assert_non_null(router_trust_by_name(disk, "x", NULL));
    router_trust_destroy(&disk);
    bool has;
    (void) s_trusted(a, "b", &has);
    assert_false(has);

    assert_int_equal(router_trust_edit(home_a, s_add_row, "y", err, sizeof err), 0);
    assert_int_equal(kith_node_trust(a, b), 0);
    disk = router_trust_load(file_a, err, sizeof err);
    assert_non_null(disk);
    assert_int_equal(router_trust_count(disk), 3);
    const char *names[] = {"x", "y", "b"};
    for (size_t i = 0; i < 3; i++) {
        assert_non_null(router_trust_by_name(disk, names[i], NULL));
        assert_int_equal(s_trusted(a, names[i], &has), 3);
        assert_true(has);
    }
    router_trust_destroy(&disk);
    kith_net_destroy(&net);
    s_tmp_remove();
}

/* ---------------------------------------------------------------- recv out of memory */

/* Out of memory at each allocation of kith_node_recv in turn: the call
 * fails with a reason, and the acked message is still there for the next
 * recv — a pop forgets what it took, so a message made after it must not
 * be the only copy. */
static void test_recv_out_of_memory_loses_nothing(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    assert_non_null(net);
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
    assert_int_equal(kith_node_trust(a, b), 0);
    bool done = false;
    for (long skip = 0; skip < ALLOC_FAIL_RUNS_MAX && !done; skip++) {
        char body[32];
        snprintf(body, sizeof body, "m-%ld", skip);
        assert_int_equal(kith_node_send(a, "b", body, S_WAIT_MS), KITH_ACKED);
        kith_msg_t *m = NULL;
        alloc_fail_arm(skip);
        int rc = kith_node_recv(b, &m, S_WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        if (rc != 0) {
            assert_true(failed > 0);
            assert_null(m);
            if (!strstr(kith_last_error(), "out of memory"))
                fprintf(stderr, "skip %ld: %s\n", skip, kith_last_error());
            assert_non_null(strstr(kith_last_error(), "out of memory"));
            rc = kith_node_recv(b, &m, S_WAIT_MS); /* the same one, whole */
            if (rc != 0)
                fprintf(stderr, "skip %ld: %s\n", skip, kith_last_error());
            assert_int_equal(rc, 0);
        }
        done = failed == 0;
        assert_non_null(strstr(kith_msg_json(m), body));
        kith_msg_destroy(&m);
        assert_int_equal(kith_node_recv(b, &m, 0), -1);
        assert_string_equal(kith_last_error(), "timeout");
    }
    assert_true(done);
    kith_net_destroy(&net);
}

/* As above, with b keeping its state in a home, and b destroyed right
 * after the failed recv and made again from the home (a restart): the
 * acked message is given out then. A recv that had already taken it from
 * the inbox (a pop forgets, in state.db too) and kept it only in the
 * destroyed node's memory lost it for good. */
static void test_recv_out_of_memory_then_restart_loses_nothing(void **state)
{
    (void) state;
    s_tmp_make();
    char home[128];
    snprintf(home, sizeof home, "%s/b", s_tmp);
    kith_net_t *net = kith_net_new();
    assert_non_null(net);
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", home);
    assert_int_equal(kith_node_trust(a, b), 0);
    bool done = false;
    unsigned restarts = 0;
    for (long skip = 0; skip < ALLOC_FAIL_RUNS_MAX && !done; skip++) {
        char body[32];
        snprintf(body, sizeof body, "m-%ld", skip);
        assert_int_equal(kith_node_send(a, "b", body, S_WAIT_MS), KITH_ACKED);
        kith_msg_t *m = NULL;
        alloc_fail_arm(skip);
        int rc = kith_node_recv(b, &m, S_WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        if (rc != 0) {
            assert_true(failed > 0);
            assert_non_null(strstr(kith_last_error(), "out of memory"));
            kith_node_destroy(&b);
            b = s_node(net, "b", home);
            restarts++;
            rc = kith_node_recv(b, &m, S_WAIT_MS);
            if (rc != 0)
                fprintf(stderr, "skip %ld: %s\n", skip, kith_last_error());
            assert_int_equal(rc, 0);
        }
        done = failed == 0;
        assert_non_null(strstr(kith_msg_json(m), body));
        kith_msg_destroy(&m);
        assert_int_equal(kith_node_recv(b, &m, 0), -1);
        assert_string_equal(kith_last_error(), "timeout");
    }
    assert_true(done);
    assert_true(restarts > 0);
    kith_net_destroy(&net);
    s_tmp_remove();
}

/* ---------------------------------------------------------------- constructors out of memory */

/* kith_net_new and kith_node_new (in memory and with a home) with their
 * 1st, 2nd, … allocation failing: each refuses with a reason and leaks
 * nothing (LSan), or makes a node that works. */
static void test_constructors_out_of_memory(void **state)
{
    (void) state;
    s_tmp_make();
    char home[128];
    snprintf(home, sizeof home, "%s/h", s_tmp);
    for (int with_home = 0; with_home < 2; with_home++) {
        bool done = false;
        for (long skip = 0; skip < ALLOC_FAIL_RUNS_MAX && !done; skip++) {
            alloc_fail_arm(skip);
            kith_net_t *net = kith_net_new();
            kith_node_t *a = net ? kith_node_new(net, "a", with_home ? home : NULL) : NULL;
            unsigned failed = alloc_fail_disarm();
            if (!a) {
                assert_true(failed > 0);
                assert_true(kith_last_error()[0] != '\0');
            }
            if (!net) {
                done = false;
                continue;
            }
            /* Whatever failed, the net still makes nodes that talk. */
            kith_node_t *b = s_node(net, "b", NULL);
            if (!a)
                a = s_node(net, "a", with_home ? home : NULL);
            assert_int_equal(kith_node_trust(a, b), 0);
            assert_int_equal(kith_node_send(a, "b", "hi", S_WAIT_MS), KITH_ACKED);
            assert_int_equal(kith_node_send(b, "a", "hi", S_WAIT_MS), KITH_ACKED);
            kith_net_destroy(&net);
            done = failed == 0;
            char cmd[160];
            snprintf(cmd, sizeof cmd, "rm -rf %s", home); /* each run starts afresh */
            assert_int_equal(system(cmd), 0);
        }
        assert_true(done);
    }
    s_tmp_remove();
}

/* ---------------------------------------------------------------- destroy while others wait */

typedef struct {
    kith_node_t *node;
    int rc;
    char error[S_ERROR_CAP];
} s_waiter_t;

static void *s_recv_forever(void *arg)
{
    s_waiter_t *w = arg;
    kith_msg_t *m = NULL;
    w->rc = kith_node_recv(w->node, &m, -1);
    kith_msg_destroy(&m);
    snprintf(w->error, sizeof w->error, "%s", kith_last_error());
    return NULL;
}

static void *s_send_held(void *arg)
{
    s_waiter_t *w = arg;
    w->rc = kith_node_send(w->node, "b", "held", 3600 * 1000);
    snprintf(w->error, sizeof w->error, "%s", kith_last_error());
    return NULL;
}

/* Until n has `calls` calls in it (a deadline for progress). */
static void s_wait_calls(kith_node_t *n, unsigned calls)
{
    uint64_t deadline = router_clock_mono_ms() + S_WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&n->mu);
        unsigned now = n->calls;
        pthread_mutex_unlock(&n->mu);
        if (now == calls)
            return;
        assert_true(router_clock_mono_ms() < deadline);
        usleep(1000);
    }
}

static void s_join(pthread_t t)
{
    struct timespec deadline = router_clock_deadline(CLOCK_REALTIME, S_WAIT_MS);
    assert_int_equal(pthread_timedjoin_np(t, NULL, &deadline), 0);
}

/* A test harness ends with kith_net_destroy while a thread of its own is
 * still in kith_node_recv(…, -1) and another in a send that cannot be
 * acked: both return, with a reason, and nothing is touched after it is
 * freed (ASan). */
static void test_destroy_while_blocked(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
    assert_int_equal(kith_node_trust(a, b), 0);
    assert_int_equal(kith_net_partition(net, a, b), 0);
    s_waiter_t r = {.node = b}, w = {.node = a};
    pthread_t tr, tw;
    assert_int_equal(pthread_create(&tr, NULL, s_recv_forever, &r), 0);
    assert_int_equal(pthread_create(&tw, NULL, s_send_held, &w), 0);
    s_wait_calls(b, 1);
    s_wait_calls(a, 1);
    kith_net_destroy(&net);
    s_join(tr);
    s_join(tw);
    assert_int_equal(r.rc, -1);
    assert_non_null(strstr(r.error, "destroyed"));
    /* Offline when it was written; an error when the stop came first. */
    assert_true(w.rc == KITH_OFFLINE || w.rc == KITH_ERROR);
    assert_non_null(strstr(w.error, "kith_node_send"));
}

/* A thread whose call was on its way in (it had the pointer) when another
 * destroyed the node — the Python module's threads do this — is refused,
 * saying so, by the node's shell: not given a freed node (ASan). A new
 * node under the name is no business of the old pointer's faults. */
static void test_call_after_destroy_meets_the_shell(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
    assert_int_equal(kith_node_trust(a, b), 0);
    kith_node_t *late = a;
    kith_node_destroy(&a);
    assert_null(a);
    assert_int_equal(kith_node_send(late, "b", "late", S_WAIT_MS), KITH_ERROR);
    assert_string_equal(kith_last_error(), "kith_node_send: a was destroyed");
    kith_msg_t *m = NULL;
    assert_int_equal(kith_node_recv(late, &m, S_WAIT_MS), -1);
    assert_non_null(strstr(kith_last_error(), "a was destroyed"));
    assert_int_equal(kith_node_listen(late, "tcp://127.0.0.1:0"), -1);
    assert_int_equal(kith_node_trust(b, late), -1);
    assert_non_null(strstr(kith_last_error(), "a was destroyed"));

    kith_node_t *a2 = s_node(net, "a", NULL);
    assert_int_equal(kith_node_trust(a2, b), 0);
    assert_int_equal(kith_net_partition(net, late, b), -1);
    assert_non_null(strstr(kith_last_error(), "kith_net_partition: a was destroyed"));
    assert_int_equal(kith_net_delay(net, b, late, 1000), -1);
    assert_int_equal(kith_node_send(a2, "b", "new a", S_WAIT_MS), KITH_ACKED);
    kith_node_destroy(&late); /* a second destroy frees the shell (LSan) */
    assert_null(late);
    pthread_mutex_lock(&net->mu);
    assert_int_equal(net->nshells, 0);
    pthread_mutex_unlock(&net->mu);

    /* Shells nobody frees are bounded: the oldest go. */
    for (int i = 0; i < S_SHELLS_MAX + 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "r%d", i);
        kith_node_t *r = s_node(net, name, NULL);
        kith_node_destroy(&r);
        pthread_mutex_lock(&net->mu);
        assert_int_equal(net->nshells, i < S_SHELLS_MAX ? (size_t) i + 1 : S_SHELLS_MAX);
        pthread_mutex_unlock(&net->mu);
    }
    kith_net_destroy(&net);   /* frees the shells left (LSan) */
}

/* ---------------------------------------------------------------- what JSON cannot carry */

/* A program that is not a kith library (here a router node in the same
 * namespace, as a daemon reached by listen would be) sends a request whose
 * params JSON cannot carry ({"$bytes": 2}, which would read back as a
 * byte string): b's recv gives it
 * out once, as the error naming it, and the envelope after it arrives
 * whole; nothing is left behind (LSan). */
static void test_recv_of_a_value_json_cannot_carry(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *b = s_node(net, "b", NULL);
    char err[256] = "";
    router_node_opts_t o = {.inproc = net->inproc, .inproc_name = "x"};
    router_node_t *x = router_node_new(&o, err, sizeof err);
    assert_non_null(x);
    assert_int_equal(router_node_trust(x, "b", router_node_pubkey(b->node), "inproc://b", err,
                                       sizeof err), 0);
    assert_int_equal(router_node_start(x), 0);
    assert_int_equal(router_node_trust_set(b->node, "x", router_node_pubkey(x), "inproc://x",
                                           false, err, sizeof err), 0);

    cbor_item_t *params = cbor_new_definite_map(1);
    assert_non_null(params);
    assert_true(cbor_map_add(params, (struct cbor_pair){.key = cbor_move(cbor_build_string("$bytes")),
                                                        .value = cbor_move(cbor_build_uint8(2))}));
    cbor_item_t *kind = proto_kind_request("odd", 3, &params, NULL, PROTO_HANDLING_NONE);
    assert_non_null(kind);
    router_node_receipt_t r;
    int sent = router_node_send(x, "b", &kind, &r);
    if (sent != 0)
        fprintf(stderr, "send: %s\n", r.detail);
    assert_int_equal(sent, 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);
    assert_int_equal(router_node_send_message(x, "b", "plain", &r), 0);
    assert_int_equal(r.outcome, ROUTER_SEND_ACKED);

    kith_msg_t *m = NULL;
    assert_int_equal(kith_node_recv(b, &m, S_WAIT_MS), -1);
    assert_null(m);
    assert_non_null(strstr(kith_last_error(), "the request from ed25519:"));
    assert_non_null(strstr(kith_last_error(), "has no JSON form"));
    assert_int_equal(kith_node_recv(b, &m, S_WAIT_MS), 0);
    assert_non_null(strstr(kith_msg_json(m), "\"body\":\"plain\""));
    kith_msg_destroy(&m);
    assert_int_equal(kith_node_recv(b, &m, 0), -1);
    assert_string_equal(kith_last_error(), "timeout");
    router_node_destroy(&x);
    kith_net_destroy(&net);
}

/* ---------------------------------------------------------------- sends out of memory */

/* Out of memory at each allocation a send, a request and a respond make
 * on the caller's thread: each returns KITH_ERROR saying so — and then
 * nothing arrived, as KITH_ERROR promises — or goes through whole. */
static void test_sends_out_of_memory(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
    assert_int_equal(kith_node_trust(a, b), 0);
    assert_int_equal(kith_node_request(a, "b", "q", NULL, S_WAIT_MS), KITH_ACKED);
    kith_msg_t *req = NULL;
    assert_int_equal(kith_node_recv(b, &req, S_WAIT_MS), 0);
    for (int what = 0; what < 3; what++) {
        kith_node_t *to = what == 2 ? a : b;
        bool done = false;
        for (long skip = 0; skip < ALLOC_FAIL_RUNS_MAX && !done; skip++) {
            alloc_fail_arm(skip);
            int rc = what == 0   ? kith_node_send(a, "b", "m", S_WAIT_MS)
                     : what == 1 ? kith_node_request(a, "b", "i", "{\"k\":[1,2]}", S_WAIT_MS)
                                 : kith_node_respond(b, req, "completed", "[true]", S_WAIT_MS);
            unsigned failed = alloc_fail_disarm();
            done = failed == 0;
            kith_msg_t *m = NULL;
            if (rc == KITH_ERROR) {
                assert_true(failed > 0);
                if (!strstr(kith_last_error(), "out of memory"))
                    fprintf(stderr, "%d skip %ld: %s\n", what, skip, kith_last_error());
                assert_non_null(strstr(kith_last_error(), "out of memory"));
                assert_int_equal(kith_node_recv(to, &m, 0), -1);
                continue;
            }
            assert_int_equal(rc, KITH_ACKED);
            assert_int_equal(kith_node_recv(to, &m, S_WAIT_MS), 0);
            kith_msg_destroy(&m);
        }
        assert_true(done);
    }
    kith_msg_destroy(&req);
    kith_net_destroy(&net);
}

/* kith_net_partition and _delay out of memory at each allocation (the
 * relay's record of the pair): -1 saying why, and the faults are as
 * before — no partition half set; once they work, they hold. */
static void test_faults_out_of_memory(void **state)
{
    (void) state;
    kith_net_t *net = kith_net_new();
    kith_node_t *a = s_node(net, "a", NULL), *b = s_node(net, "b", NULL);
    assert_int_equal(kith_node_trust(a, b), 0);
    bool done = false;
    for (long skip = 0; skip < ALLOC_FAIL_RUNS_MAX && !done; skip++) {
        alloc_fail_arm(skip);
        int rc = kith_net_partition(net, a, b);
        unsigned failed = alloc_fail_disarm();
        done = failed == 0;
        bool part;
        uint32_t delay;
        assert_int_equal(router_inproc_get_faults(net->inproc, "a", "b", &part, &delay), 0);
        if (rc != 0) {
            assert_true(failed > 0);
            assert_non_null(strstr(kith_last_error(), "kith_net_partition: "));
            assert_false(part);
            assert_int_equal(kith_node_send(a, "b", "through", S_WAIT_MS), KITH_ACKED);
            continue;
        }
        assert_true(part);
    }
    assert_true(done);
    assert_int_equal(kith_node_send(a, "b", "held", 200), KITH_OFFLINE);
    assert_int_equal(kith_net_heal(net, a, b), 0);
    kith_net_destroy(&net);
}

int main(void)
{
    if (sodium_init() < 0 || alloc_fail_sqlite_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trust_undone_when_second_write_fails),
        cmocka_unit_test(test_trust_all_or_nothing_out_of_memory),
        cmocka_unit_test(test_trust_keeps_other_rows_profile),
        cmocka_unit_test(test_trust_keeps_rows_added_meanwhile),
        cmocka_unit_test(test_recv_out_of_memory_loses_nothing),
        cmocka_unit_test(test_recv_out_of_memory_then_restart_loses_nothing),
        cmocka_unit_test(test_destroy_while_blocked),
        cmocka_unit_test(test_constructors_out_of_memory),
        cmocka_unit_test(test_call_after_destroy_meets_the_shell),
        cmocka_unit_test(test_recv_of_a_value_json_cannot_carry),
        cmocka_unit_test(test_sends_out_of_memory),
        cmocka_unit_test(test_faults_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
