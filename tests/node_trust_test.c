/* tests/node_trust_test.c — a node's own trust edits (router_node_trust_set,
 * _copy, _restore) share $home/trusted_peers.json with every other writer
 * (`kith peers add`, pairing, the REST routes, all through
 * router_trust_edit): a row another writer added after the node read the
 * file is neither lost from the file nor left untrusted by the node's next
 * edit, nor by an undo; a failed load or write changes nothing. */
#include <errno.h>
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

#include "alloc_fail.h"
#include "io_fail.h"
#include "proto/pubkey.h"
#include "router/net/inproc.h"
#include "router/node.h"
#include "router/state/trust.h"

/* The public key of the pair one repeated seed byte makes. */
static void s_key(uint8_t seed_byte, uint8_t pk[32])
{
    uint8_t seed[32], sk[64];
    memset(seed, seed_byte, sizeof seed);
    proto_ed25519_seed_keypair(seed, pk, sk);
}

/* What `kith peers add NAME KEY ADDR --home` does: one locked edit. */
typedef struct {
    const char *name;
    uint8_t pk[32];
    const char *addr;
} s_add_t;

static int s_edit_add(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    s_add_t *a = ud;
    return router_trust_add(t, a->name, a->pk, a->addr, NULL, NULL, 0, err, errcap);
}

static void s_peers_add(const char *home, const char *name, uint8_t seed_byte, const char *addr)
{
    s_add_t a = {.name = name, .addr = addr};
    s_key(seed_byte, a.pk);
    char err[ROUTER_TRUST_ERR_MAX] = "";
    int rc = router_trust_edit(home, s_edit_add, &a, err, sizeof err);
    if (rc != 0 && !strstr(err, "already trusted")) /* a test adds x once a run */
        fail_msg("router_trust_edit: %s", err);
}

/* The file as it is now (an empty store when it is missing). */
static router_trust_t *s_file(const char *home)
{
    char path[512], err[ROUTER_TRUST_ERR_MAX] = "";
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_TRUST_FILE);
    router_trust_t *t = router_trust_load(path, err, sizeof err);
    if (!t)
        fprintf(stderr, "load: %s\n", err);
    assert_non_null(t);
    return t;
}

/* The addr of the one row named `name` in t, or NULL when none. */
static const char *s_addr(const router_trust_t *t, const char *name)
{
    size_t n = 0;
    const router_peer_t *p = router_trust_by_name(t, name, &n);
    assert_true(n <= 1);
    return p ? p->addr : NULL;
}

/* Asserts the store in force and the file hold exactly the rows named in
 * `names` (NULL-terminated), with those addrs. */
static void s_expect(router_node_t *n, const char *home, const char *const *pairs)
{
    char err[ROUTER_TRUST_ERR_MAX] = "";
    router_trust_t *mem = router_node_trust_copy(n, err, sizeof err);
    assert_non_null(mem);
    router_trust_t *disk = s_file(home);
    const router_trust_t *both[] = {mem, disk};
    for (size_t k = 0; k < 2; k++) {
        size_t rows = 0;
        for (const char *const *p = pairs; *p; p += 2, rows++) {
            const char *addr = s_addr(both[k], p[0]);
            if (!addr)
                fprintf(stderr, "%s: no row %s\n", k ? "file" : "in force", p[0]);
            assert_non_null(addr);
            assert_string_equal(addr, p[1]);
        }
        assert_int_equal(router_trust_count(both[k]), rows);
    }
    router_trust_destroy(&mem);
    router_trust_destroy(&disk);
}

static void s_rm_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static router_node_t *s_node(router_inproc_t *net, const char *home, bool start)
{
    router_node_opts_t o = {.home = home, .inproc = net, .inproc_name = "a"};
    char err[256] = "";
    router_node_t *n = router_node_new(&o, err, sizeof err);
    if (!n)
        fprintf(stderr, "router_node_new: %s\n", err);
    assert_non_null(n);
    if (start)
        assert_int_equal(router_node_start(n), 0);
    return n;
}

/* A running node with a home; `kith peers add x` after it read the file;
 * then the node trusts b (as kith_node_trust does): the file holds x and
 * b, and the node trusts both — x as a reload would have it. */
static void test_set_keeps_a_row_added_meanwhile(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_inproc_t *net = router_inproc_new();
    s_peers_add(home, "w", 0x40, "inproc://w"); /* before the node: read at start */
    router_node_t *n = s_node(net, home, true);
    s_peers_add(home, "x", 0x41, "inproc://x");

    uint8_t pkb[32];
    s_key(0x42, pkb);
    char err[ROUTER_TRUST_ERR_MAX] = "";
    assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", true, err, sizeof err), 0);
    s_expect(n, home, (const char *const[]){"w", "inproc://w", "x", "inproc://x", "b",
                                            "inproc://b", NULL});

    /* Trusting again what is trusted writes nothing, and still brings in
     * what the file gained. */
    s_peers_add(home, "y", 0x43, "inproc://y");
    struct stat before, after;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_TRUST_FILE);
    assert_int_equal(stat(path, &before), 0);
    assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", true, err, sizeof err), 0);
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(before.st_ino, after.st_ino);
    s_expect(n, home, (const char *const[]){"w", "inproc://w", "x", "inproc://x", "b",
                                            "inproc://b", "y", "inproc://y", NULL});

    /* A row of the same name is replaced, in the file too. */
    assert_int_equal(router_node_trust_set(n, "x", pkb, "inproc://b2", true, err, sizeof err), 0);
    s_expect(n, home, (const char *const[]){"w", "inproc://w", "y", "inproc://y", "x",
                                            "inproc://b2", NULL});
    router_node_destroy(&n);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

/* kith_node_trust's undo (copy, set, restore when the other side fails):
 * only what the set wrote goes back — b's row is gone, the row b's name
 * replaced is back — and rows other writers added before the set (x) or
 * between the set and the undo (y) stay, in the file and in force. */
static void test_restore_keeps_rows_added_meanwhile(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_inproc_t *net = router_inproc_new();
    s_peers_add(home, "b", 0x50, "inproc://old-b"); /* b under an older key */
    router_node_t *n = s_node(net, home, true);
    s_peers_add(home, "x", 0x51, "inproc://x");

    char err[ROUTER_TRUST_ERR_MAX] = "";
    router_trust_t *undo = router_node_trust_copy(n, err, sizeof err);
    assert_non_null(undo);
    uint8_t pkb[32];
    s_key(0x52, pkb);
    assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", true, err, sizeof err), 0);
    s_expect(n, home, (const char *const[]){"x", "inproc://x", "b", "inproc://b", NULL});
    s_peers_add(home, "y", 0x53, "inproc://y");

    assert_int_equal(router_node_trust_restore(n, &undo, true, err, sizeof err), 0);
    assert_null(undo);
    s_expect(n, home, (const char *const[]){"x", "inproc://x", "y", "inproc://y", "b",
                                            "inproc://old-b", NULL});

    /* Nothing set since the last copy: a restore changes no row. */
    undo = router_node_trust_copy(n, err, sizeof err);
    assert_non_null(undo);
    s_peers_add(home, "z", 0x54, "inproc://z");
    assert_int_equal(router_node_trust_restore(n, &undo, true, err, sizeof err), 0);
    s_expect(n, home, (const char *const[]){"x", "inproc://x", "y", "inproc://y", "b",
                                            "inproc://old-b", "z", "inproc://z", NULL});
    router_node_destroy(&n);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

/* Several sets between the copy and the restore, and rows other writers
 * add or change meanwhile: every row a set wrote goes back, and only
 * those — a row another writer changed after the node set it is theirs. */
static void test_restore_after_several_sets(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_inproc_t *net = router_inproc_new();
    router_node_t *n = s_node(net, home, true);
    char err[ROUTER_TRUST_ERR_MAX] = "";
    uint8_t pk[32];
    s_key(0x60, pk);
    assert_int_equal(router_node_trust_set(n, "keep", pk, "inproc://keep", true, err, sizeof err),
                     0);
    router_trust_t *undo = router_node_trust_copy(n, err, sizeof err);
    assert_non_null(undo);
    for (int i = 0; i < 10; i++) {
        char name[16], addr[32];
        snprintf(name, sizeof name, "p%d", i);
        snprintf(addr, sizeof addr, "inproc://p%d", i);
        s_key((uint8_t) (0x61 + i), pk);
        assert_int_equal(router_node_trust_set(n, name, pk, addr, true, err, sizeof err), 0);
        if (i == 4)
            s_peers_add(home, "x", 0x7f, "inproc://x");
    }
    /* Another writer moves p9 after the node set it: theirs stays. */
    s_key(0x61 + 9, pk);
    s_peers_add(home, "tmp", 0x7e, "inproc://tmp"); /* the file is written */
    char path[512];
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_TRUST_FILE);
    router_trust_t *f = s_file(home), *g = router_trust_new();
    for (size_t i = 0; i < router_trust_count(f); i++) {
        const router_peer_t *p = router_trust_at(f, i);
        assert_int_equal(router_trust_add(g, p->name, p->pk,
                                          strcmp(p->name, "p9") ? p->addr : "inproc://p9-moved",
                                          NULL, NULL, 0, err, sizeof err), 0);
    }
    assert_int_equal(router_trust_save(g, path, err, sizeof err), 0);
    router_trust_destroy(&f);
    router_trust_destroy(&g);

    assert_int_equal(router_node_trust_restore(n, &undo, true, err, sizeof err), 0);
    s_expect(n, home, (const char *const[]){"keep", "inproc://keep", "x", "inproc://x", "tmp",
                                            "inproc://tmp", "p9", "inproc://p9-moved", NULL});
    router_node_destroy(&n);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

/* The write fails (the disk is full: rename, or fsync), or the file does
 * not load: the set and the restore are refused with why, and nothing
 * changes — not the file, not the store in force. The node is not started,
 * so its edits run here, where the failure is armed. */
static void test_failed_write_changes_nothing(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_inproc_t *net = router_inproc_new();
    router_node_t *n = s_node(net, home, false);
    s_peers_add(home, "x", 0x71, "inproc://x");
    char err[ROUTER_TRUST_ERR_MAX] = "";
    uint8_t pkb[32];
    s_key(0x72, pkb);
    const io_fail_call_t calls[] = {IO_FAIL_RENAME, IO_FAIL_FSYNC};
    for (size_t i = 0; i < 2; i++) {
        err[0] = '\0';
        io_fail_arm(calls[i], 0, ENOSPC);
        assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", true, err, sizeof err),
                         -1);
        assert_int_equal(io_fail_disarm(), 1);
        assert_non_null(strstr(err, "No space left on device"));
        char none[ROUTER_TRUST_ERR_MAX];
        router_trust_t *mem = router_node_trust_copy(n, none, sizeof none);
        assert_int_equal(router_trust_count(mem), 0); /* x not pulled in either */
        router_trust_destroy(&mem);
        router_trust_t *disk = s_file(home);
        assert_int_equal(router_trust_count(disk), 1);
        router_trust_destroy(&disk);
    }

    router_trust_t *undo = router_node_trust_copy(n, err, sizeof err);
    assert_non_null(undo);
    assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", true, err, sizeof err), 0);
    io_fail_arm(IO_FAIL_RENAME, 0, ENOSPC);
    assert_int_equal(router_node_trust_restore(n, &undo, true, err, sizeof err), -1);
    assert_int_equal(io_fail_disarm(), 1);
    assert_null(undo);
    assert_non_null(strstr(err, "No space left on device"));
    s_expect(n, home, (const char *const[]){"x", "inproc://x", "b", "inproc://b", NULL});

    /* A file that does not load is never written over. */
    char path[512];
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_TRUST_FILE);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"peers\": [", f);
    assert_int_equal(fclose(f), 0);
    uint8_t pkc[32];
    s_key(0x73, pkc);
    err[0] = '\0';
    assert_int_equal(router_node_trust_set(n, "c", pkc, "inproc://c", true, err, sizeof err), -1);
    assert_non_null(strstr(err, ROUTER_TRUST_FILE));
    router_trust_t *mem = router_node_trust_copy(n, err, sizeof err);
    assert_int_equal(router_trust_count(mem), 2);
    assert_null(router_trust_by_name(mem, "c", NULL));
    router_trust_destroy(&mem);
    char text[64] = "";
    f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(text, sizeof text, f));
    fclose(f);
    assert_string_equal(text, "{\"peers\": [");
    router_node_destroy(&n);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

/* Out of memory at each allocation of a persisted set in turn, with a row
 * another writer added: refused with a reason and nothing changed, or done
 * whole, both rows in the file and in force. */
static void test_set_out_of_memory(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    router_inproc_t *net = router_inproc_new();
    router_node_t *n = s_node(net, home, false);
    uint8_t pkb[32];
    s_key(0x82, pkb);
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        char addr[64], err[ROUTER_TRUST_ERR_MAX] = "";
        s_peers_add(home, "x", 0x81, "inproc://x"); /* once; then "already trusted" */
        snprintf(addr, sizeof addr, "inproc://b%ld", i); /* each run changes b's row */
        alloc_fail_arm(i);
        int rc = router_node_trust_set(n, "b", pkb, addr, true, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        char none[ROUTER_TRUST_ERR_MAX];
        router_trust_t *mem = router_node_trust_copy(n, none, sizeof none);
        router_trust_t *disk = s_file(home);
        if (rc != 0) {
            assert_true(failed);
            assert_true(err[0] != '\0');
            const char *was = s_addr(disk, "b");
            assert_true(!was || strcmp(was, addr) != 0);
            const char *in_force = s_addr(mem, "b");
            assert_true(!in_force || strcmp(in_force, addr) != 0);
            refused++;
        } else {
            assert_string_equal(s_addr(disk, "b"), addr);
            assert_string_equal(s_addr(mem, "b"), addr);
            assert_non_null(s_addr(mem, "x"));
        }
        router_trust_destroy(&mem);
        router_trust_destroy(&disk);
        if (rc == 0 && !failed)
            break;
    }
    assert_true(refused > 0);
    router_node_destroy(&n);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

/* trusted_peers.json with one Meerkat row for pk, with meta. */
static void s_write_meerkat(const char *home, const uint8_t pk[32])
{
    char key[PROTO_PUBKEY_TEXT_CAP], path[512];
    assert_true(proto_pubkey_format(pk, key, sizeof key) >= 0);
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_TRUST_FILE);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"peers\": [{\"name\": \"b\", \"pubkey\": \"%s\", \"addr\": \"tcp://127.0.0.1:9\","
            " \"profile\": \"meerkat\", \"meta\": {\"description\": \"a phone\","
            " \"labels\": {\"room\": \"hall\", \"floor\": \"2\"}}}]}\n",
            key);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
}

/* A row with meta (labels, a description) and the Meerkat profile that a
 * set replaced comes back whole; out of memory at each allocation of the
 * restore in turn, it is refused with a reason and nothing changes, or
 * done whole. The node is not started: its edits run here. */
static void test_restore_whole_rows_out_of_memory(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    uint8_t pk[32], pkb[32];
    s_key(0x90, pk);
    s_key(0x91, pkb);
    s_write_meerkat(home, pk);
    router_inproc_t *net = router_inproc_new();
    router_node_t *n = s_node(net, home, false);
    char err[ROUTER_TRUST_ERR_MAX] = "";
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        router_trust_t *undo = router_node_trust_copy(n, err, sizeof err);
        assert_non_null(undo);
        assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", true, err, sizeof err),
                         0);
        err[0] = '\0';
        alloc_fail_arm(i);
        int rc = router_node_trust_restore(n, &undo, true, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        assert_null(undo);
        router_trust_t *mem = router_node_trust_copy(n, err, sizeof err);
        router_trust_t *disk = s_file(home);
        const router_trust_t *both[] = {mem, disk};
        for (size_t k = 0; k < 2; k++) {
            assert_int_equal(router_trust_count(both[k]), 1);
            const router_peer_t *p = router_trust_at(both[k], 0);
            if (rc != 0) {
                assert_memory_equal(p->pk, pkb, 32); /* still the set's row */
                continue;
            }
            assert_memory_equal(p->pk, pk, 32);
            assert_int_equal(p->profile, ROUTER_PEER_PROFILE_MEERKAT);
            assert_string_equal(p->description, "a phone");
            assert_int_equal(p->nlabels, 2);
            assert_string_equal(p->labels[1].key, "floor");
            assert_string_equal(p->labels[1].value, "2");
        }
        router_trust_destroy(&mem);
        router_trust_destroy(&disk);
        if (rc == 0 && !failed)
            break;
        if (rc != 0) {
            assert_true(failed);
            assert_true(err[0] != '\0');
            refused++;
            s_write_meerkat(home, pk); /* as before the set, for the next run */
            router_node_trust_reload(n, "test: as before");
        }
    }
    assert_true(refused > 0);
    router_node_destroy(&n);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

/* The node remembers its last 16 sets (a bound, like every queue's): a
 * restore after 20 undoes the last 16, and the 4 before them stay. */
static void test_restore_remembers_sixteen_sets(void **state)
{
    (void) state;
    router_inproc_t *net = router_inproc_new();
    router_node_opts_t o = {.inproc = net, .inproc_name = "a"};
    char err[ROUTER_TRUST_ERR_MAX] = "";
    router_node_t *n = router_node_new(&o, err, sizeof err);
    assert_non_null(n);
    assert_int_equal(router_node_start(n), 0);
    router_trust_t *undo = router_node_trust_copy(n, err, sizeof err);
    assert_non_null(undo);
    for (int i = 0; i < 20; i++) {
        char name[16], addr[32];
        uint8_t pk[32];
        snprintf(name, sizeof name, "p%d", i);
        snprintf(addr, sizeof addr, "inproc://p%d", i);
        s_key((uint8_t) (0xa0 + i), pk);
        assert_int_equal(router_node_trust_set(n, name, pk, addr, false, err, sizeof err), 0);
    }
    assert_int_equal(router_node_trust_restore(n, &undo, false, err, sizeof err), 0);
    router_trust_t *mem = router_node_trust_copy(n, err, sizeof err);
    assert_int_equal(router_trust_count(mem), 4);
    for (int i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof name, "p%d", i);
        assert_non_null(router_trust_by_name(mem, name, NULL));
    }
    router_trust_destroy(&mem);
    router_node_destroy(&n);
    router_inproc_destroy(&net);
}

/* A home whose trusted_peers.json.lock cannot be opened (a directory
 * stands there) and with a temp file a save left that cannot be removed
 * (a directory with something in it): the node starts (the sweep logs
 * why, and moves on), and a persisted trust edit is refused with the lock
 * file and the reason, nothing changed; an edit kept in memory works. */
static void test_trust_file_cannot_lock(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-node-trust-XXXXXX";
    assert_non_null(mkdtemp(home));
    char lock[512], temp[512], inside[600];
    snprintf(lock, sizeof lock, "%s/%s.lock", home, ROUTER_TRUST_FILE);
    snprintf(temp, sizeof temp, "%s/%s.tmp-left", home, ROUTER_TRUST_FILE);
    snprintf(inside, sizeof inside, "%s/x", temp);
    assert_int_equal(mkdir(temp, 0700), 0);
    assert_int_equal(mkdir(inside, 0700), 0);
    router_inproc_t *net = router_inproc_new();
    router_node_t *n = s_node(net, home, false); /* sweeps: cannot remove the temp */
    router_node_destroy(&n);
    assert_int_equal(access(inside, F_OK), 0);

    assert_int_equal(unlink(lock), 0); /* the sweep made it */
    assert_int_equal(mkdir(lock, 0700), 0);
    n = s_node(net, home, true); /* sweeps: cannot lock */
    char err[ROUTER_TRUST_ERR_MAX] = "";
    uint8_t pkb[32];
    s_key(0xc1, pkb);
    assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", true, err, sizeof err), -1);
    char want[700];
    snprintf(want, sizeof want, "cannot lock %s: %s", lock, strerror(EISDIR));
    assert_string_equal(err, want);
    router_trust_t *mem = router_node_trust_copy(n, err, sizeof err);
    assert_int_equal(router_trust_count(mem), 0);
    router_trust_destroy(&mem);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_TRUST_FILE);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(router_node_trust_set(n, "b", pkb, "inproc://b", false, err, sizeof err), 0);
    router_node_destroy(&n);
    router_inproc_destroy(&net);
    s_rm_tree(home);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_keeps_a_row_added_meanwhile),
        cmocka_unit_test(test_restore_keeps_rows_added_meanwhile),
        cmocka_unit_test(test_restore_after_several_sets),
        cmocka_unit_test(test_failed_write_changes_nothing),
        cmocka_unit_test(test_set_out_of_memory),
        cmocka_unit_test(test_restore_whole_rows_out_of_memory),
        cmocka_unit_test(test_restore_remembers_sixteen_sets),
        cmocka_unit_test(test_trust_file_cannot_lock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
