/* tests/inbox_test.c — the bounded inbox: refuses rather than drops when full,
 * admission order, durable admission through SQLite surviving a reopen,
 * popped entries deleted, cross-thread pop, seen ids stored with their
 * admissions and read back, a failing commit withholding durability, and
 * the pruning of expired seen rows, and a reopen with each allocation
 * (kith's and SQLite's) failing in turn; a statement failing in the middle
 * of a batch, a stop while the disk is full, out of memory for a delete
 * (refused at the take, which reserves it, never at the done), withdrawals
 * from both ends of the unwritten list, load callbacks
 * that refuse, and a withdrawal after a failed fsync that a kill -9 must
 * not undo. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "alloc_fail.h"
#include "unwritable.h"
#include "vfs_fail.h"
#include "router/metrics.h"
#include "router/state/inbox.h"

static void s_id(uint8_t id[16], uint32_t n)
{
    memset(id, 0, 16);
    memcpy(id, &n, sizeof n);
}

static router_inbox_t *s_open(size_t cap, size_t max_bytes, const char *db)
{
    char err[256] = "";
    router_inbox_opts_t o = {.capacity = cap, .max_bytes = max_bytes, .db_path = db,
                             .session = "comms"};
    router_inbox_t *in = router_inbox_new(&o, err, sizeof err);
    if (!in)
        fprintf(stderr, "inbox: %s\n", err);
    assert_non_null(in);
    return in;
}

/* Makes the directory `dir` (a mkdtemp template) and puts its state.db
 * path in db. */
static void s_tmp_db(char *dir, char *db, size_t cap)
{
    assert_non_null(mkdtemp(dir));
    snprintf(db, cap, "%s/state.db", dir);
}

static void test_full_refuses(void **state)
{
    (void) state;
    router_inbox_t *in = s_open(3, 0, NULL);
    uint8_t id[16], from[32] = {1}, frame[8] = {0xA0};
    uint64_t seq = 0;
    for (uint32_t i = 0; i < 3; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
        assert_int_equal(seq, i + 1);
    }
    s_id(id, 3);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_FULL);
    assert_int_equal(router_inbox_count(in), 3);
    assert_int_equal(router_inbox_durable_seq(in), 3);
    /* Popping makes room; order is admission order. */
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 1);
    router_inbox_entry_clear(&e);
    assert_int_equal(router_inbox_admit(in, id, from, "request", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    for (uint64_t want = 2; want <= 4; want++) {
        assert_int_equal(router_inbox_pop(in, &e, 0), 0);
        assert_int_equal(e.seq, want);
        router_inbox_entry_clear(&e);
    }
    assert_int_equal(router_inbox_pop(in, &e, 0), -1);
    assert_int_equal(router_inbox_pop(in, &e, 10), -1);
    router_inbox_destroy(&in);
    assert_null(in);
}

static void test_byte_bound(void **state)
{
    (void) state;
    router_inbox_t *in = s_open(100, 10, NULL);
    uint8_t id[16] = {0}, from[32] = {0}, frame[8] = {0};
    uint64_t seq;
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 8, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 3, 1, NULL, &seq),
                     ROUTER_INBOX_FULL);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 2, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    router_inbox_destroy(&in);
}

static void test_durable_reopen(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);

    router_inbox_t *in = s_open(16, 0, db);
    uint8_t id[16], from[32] = {7}, frame[3] = {0x63, 'h', 'i'};
    uint64_t seq;
    for (uint32_t i = 0; i < 5; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 3, 42, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    router_inbox_sync(in);
    assert_int_equal(router_inbox_durable_seq(in), 5);
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(in, &e, 1000), 0);
    assert_int_equal(e.seq, 1);
    router_inbox_entry_clear(&e);
    router_inbox_destroy(&in); /* flushes the delete */

    in = s_open(16, 0, db);
    assert_int_equal(router_inbox_count(in), 4);
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 2);
    assert_int_equal(e.frame_len, 3);
    assert_memory_equal(e.frame, frame, 3);
    assert_memory_equal(e.from, from, 32);
    assert_string_equal(e.kind, "message");
    assert_int_equal(e.received_ms, 42);
    s_id(id, 1);
    assert_memory_equal(e.id, id, 16);
    router_inbox_entry_clear(&e);
    /* New admissions continue the sequence. */
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 3, 42, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    assert_int_equal(seq, 6);
    router_inbox_destroy(&in);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

typedef struct {
    router_inbox_t *in;
    int got;
} s_consumer_t;

static void *s_consume(void *arg)
{
    s_consumer_t *c = arg;
    router_inbox_entry_t e;
    uint64_t last = 0;
    while (c->got < 1000 && router_inbox_pop(c->in, &e, 5000) == 0) {
        if (e.seq != last + 1)
            break;
        last = e.seq;
        c->got++;
        router_inbox_entry_clear(&e);
    }
    return NULL;
}

/* A consumer thread sees every durable entry in order. */
static void test_cross_thread(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db);
    s_consumer_t c = {.in = in};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_consume, &c), 0);
    uint8_t id[16], from[32] = {0}, frame[1] = {0xF6};
    uint64_t seq;
    for (uint32_t i = 0; i < 1000;) {
        s_id(id, i);
        router_inbox_outcome_t o = router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq);
        if (o == ROUTER_INBOX_ADMITTED)
            i++;
        else
            usleep(100); /* full: the consumer drains it */
    }
    pthread_join(t, NULL);
    assert_int_equal(c.got, 1000);
    router_inbox_destroy(&in);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static sqlite3_int64 s_scalar(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    sqlite3_int64 v = -1;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

/* Waits, bounded, for the store thread's prune (every few seconds) to
 * bring the count `sql` answers down to at most `at_most`. */
static void s_wait_prune(const char *db, const char *sql, sqlite3_int64 at_most)
{
    for (int i = 0; i < 600 && s_scalar(db, sql) > at_most; i++)
        usleep(100 * 1000);
}

static void s_rmdir(const char *dir)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

typedef struct {
    uint8_t sender[32][4];
    uint8_t id[16][64];
    uint64_t expires[64];
    uint8_t who[64];
    size_t n;
    uint64_t floor;
    size_t nfloors;
} s_loaded_t;

static int s_on_seen(const uint8_t sender[32], const uint8_t id[16], uint64_t expires_ms, void *ud)
{
    s_loaded_t *l = ud;
    if (l->n == 64)
        return -1;
    memcpy(l->id[l->n], id, 16);
    l->expires[l->n] = expires_ms;
    l->who[l->n] = sender[0];
    l->n++;
    return 0;
}

static int s_on_floor(const uint8_t sender[32], uint64_t floor_ms, void *ud)
{
    (void) sender;
    s_loaded_t *l = ud;
    l->floor = floor_ms;
    l->nfloors++;
    return 0;
}

/* Admitted ids are remembered with their entries (events are not), a
 * raised floor is stored, and the load gives each sender's newest ids,
 * oldest first, up to the cap — also after the entries were popped. */
static void test_seen_rows(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db);
    uint8_t id[16], a[32] = {1}, b[32] = {2}, zero[32] = {0}, frame[1] = {0xF6};
    uint64_t seq;
    for (uint32_t i = 0; i < 5; i++) {
        s_id(id, i);
        router_inbox_seen_t seen = {.expires_ms = 1000 + i, .floor_ms = i == 3 ? 77 : 0};
        assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, &seen, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    s_id(id, 9);
    router_inbox_seen_t seen = {.v7_ms = 5, .expires_ms = 2000};
    assert_int_equal(router_inbox_admit(in, id, b, "request", frame, 1, 1, &seen, &seq),
                     ROUTER_INBOX_ADMITTED);
    assert_int_equal(router_inbox_admit(in, id, zero, "event", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    router_inbox_sync(in);
    router_inbox_entry_t e;
    while (router_inbox_pop(in, &e, 0) == 0)
        router_inbox_entry_clear(&e);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM seen"), 6);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 0);
    assert_int_equal(s_scalar(db, "SELECT floor_ms FROM replay_floor"), 77);

    in = s_open(64, 0, db);
    s_loaded_t l = {0};
    char err[256] = "";
    assert_int_equal(router_inbox_seen_load(in, 3, s_on_seen, s_on_floor, &l, err, sizeof err), 0);
    assert_int_equal(l.n, 4); /* a's newest 3, oldest first, then b's 1 */
    for (uint32_t i = 0; i < 3; i++) {
        s_id(id, 2 + i);
        assert_memory_equal(l.id[i], id, 16);
        assert_int_equal(l.expires[i], 1002 + i);
        assert_int_equal(l.who[i], 1);
    }
    assert_int_equal(l.who[3], 2);
    assert_int_equal(l.nfloors, 1);
    assert_int_equal(l.floor, 77);
    /* New admissions never reuse a seq a seen row holds. */
    s_id(id, 10);
    assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    assert_int_equal(seq, 7); /* 7 (the popped event) was never remembered */
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

/* A failing commit keeps its entries un-durable (so un-acked) and is
 * retried; once the disk recovers they become durable, nothing lost. The
 * disk fails under SQLite (tests/vfs_fail.h): full (a write refused) or
 * failing (an fsync refused), so the store's own COMMIT fails and is rolled
 * back, as on a real disk. */
static void test_commit_failure_withholds(void **state)
{
    (void) state;
    for (int kind = VFS_FAIL_SYNC; kind <= VFS_FAIL_WRITE; kind++) {
        char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
        s_tmp_db(dir, db, sizeof db);
        router_inbox_t *in = s_open(64, 0, db);
        uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
        uint64_t seq;
        vfs_fail_arm((vfs_fail_kind_t) kind, dir, 0, -1);
        for (uint32_t i = 0; i < 3; i++) {
            s_id(id, i);
            router_inbox_seen_t seen = {.expires_ms = UINT64_MAX / 2};
            assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, &seen, &seq),
                             ROUTER_INBOX_ADMITTED);
        }
        /* Wait (bounded) until the store has failed a few times. */
        for (int i = 0; i < 600 && router_inbox_commit_failures(in) < 3; i++)
            usleep(50 * 1000);
        assert_true(router_inbox_commit_failures(in) >= 3);
        assert_true(vfs_fail_failed((vfs_fail_kind_t) kind) >= 3);
        assert_int_equal(router_inbox_durable_seq(in), 0);
        router_inbox_entry_t e;
        assert_int_equal(router_inbox_pop(in, &e, 0), -1);
        assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 0);
        vfs_fail_clear();
        router_inbox_sync(in);
        assert_int_equal(router_inbox_durable_seq(in), 3);
        assert_int_equal(router_inbox_pop(in, &e, 0), 0);
        router_inbox_entry_clear(&e);
        router_inbox_destroy(&in);
        assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM seen"), 3);
        assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 2);
        s_rmdir(dir);
    }
}

/* ---------------------------------------------------------------- idempotency keys */

typedef struct {
    int n;
    char keys[4][64];
} s_idem_loaded_t;

static int s_idem_row(const router_inbox_idem_t *row, void *ud)
{
    s_idem_loaded_t *l = ud;
    assert_true(l->n < 4);
    snprintf(l->keys[l->n++], sizeof l->keys[0], "%s:%.*s:%d:%s", row->scope,
             (int) row->key_len, row->key, row->status, row->body);
    return 0;
}

/* A key rides in its entry's transaction: both are there after a reopen,
 * an expired key is not loaded and is pruned, bounds are checked. */
static void test_idem_with_entry(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db);
    uint8_t id[16], zero[32] = {0}, frame[2] = {'{', '}'};
    uint64_t seq;
    router_inbox_idem_t live = {.scope = "webhook", .key = "k-1xx", .key_len = 3,
                                .status = 202, .body = "{\"queued\":true}",
                                .expires_ms = UINT64_MAX / 2};
    router_inbox_idem_t old = live;
    old.key = "k-2";
    old.expires_ms = 5; /* long gone */
    s_id(id, 1);
    assert_int_equal(router_inbox_admit_keyed(in, id, zero, "webhook", frame, 2, 1, NULL, &live,
                                              &seq), ROUTER_INBOX_ADMITTED);
    s_id(id, 2);
    assert_int_equal(router_inbox_admit_keyed(in, id, zero, "event", frame, 2, 1, NULL, &old,
                                              &seq), ROUTER_INBOX_ADMITTED);
    router_inbox_idem_t bad = live;
    bad.key_len = ROUTER_INBOX_IDEM_KEY_MAX + 1;
    assert_int_equal(router_inbox_admit_keyed(in, id, zero, "event", frame, 2, 1, NULL, &bad,
                                              &seq), ROUTER_INBOX_NOMEM);
    bad = live;
    bad.scope = "a-scope-longer-than-16";
    assert_int_equal(router_inbox_admit_keyed(in, id, zero, "event", frame, 2, 1, NULL, &bad,
                                              &seq), ROUTER_INBOX_NOMEM);
    router_inbox_sync(in);
    assert_int_equal(router_inbox_count(in), 2);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"), 2);

    in = s_open(64, 0, db);
    s_idem_loaded_t got = {0};
    char err[128];
    assert_int_equal(router_inbox_idem_load(in, 1000, s_idem_row, &got, err, sizeof err), 0);
    assert_int_equal(got.n, 1);
    assert_string_equal(got.keys[0], "webhook:k-1:202:{\"queued\":true}");
    /* The prune (every few seconds) deletes the expired key durably. */
    s_wait_prune(db, "SELECT COUNT(*) FROM inbox_idempotency", 1);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency WHERE key='k-1'"), 1);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"), 1);
    router_inbox_destroy(&in);

    /* Memory only: nothing to load, and an admission is durable at once. */
    in = s_open(4, 0, NULL);
    got.n = 0;
    assert_int_equal(router_inbox_idem_load(in, 1000, s_idem_row, &got, err, sizeof err), 0);
    assert_int_equal(got.n, 0);
    assert_int_equal(router_inbox_admit_keyed(in, id, zero, "webhook", frame, 2, 1, NULL, &live,
                                              &seq), ROUTER_INBOX_ADMITTED);
    assert_int_equal(router_inbox_withdraw(in, seq), ROUTER_INBOX_IS_DURABLE);
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

/* While commits fail (a full disk), an admission can be withdrawn (from
 * the unwritten list, or parked when its commit was running and then
 * failed): neither it nor its key is ever written, and what follows it
 * still commits. (A failed fsync is another matter:
 * test_withdrawn_after_failed_fsync_stays_out.) */
static void test_withdraw(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db);
    uint8_t id[16], zero[32] = {0}, frame[2] = {'{', '}'};
    uint64_t seq[3];
    router_inbox_idem_t key = {.scope = "webhook", .key = "a", .key_len = 1, .status = 202,
                               .body = "{}", .expires_ms = UINT64_MAX / 2};
    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1);
    for (uint32_t i = 0; i < 3; i++) {
        s_id(id, i);
        key.key = i == 0 ? "a" : i == 1 ? "b" : "c";
        assert_int_equal(router_inbox_admit_keyed(in, id, zero, "webhook", frame, 2, 1, NULL,
                                                  &key, &seq[i]), ROUTER_INBOX_ADMITTED);
    }
    for (int i = 0; i < 600 && router_inbox_commit_failures(in) < 2; i++)
        usleep(10 * 1000);
    assert_true(router_inbox_commit_failures(in) >= 2);
    /* Taken back: at once, or once the commit holding it has failed. */
    router_inbox_withdraw_t w = ROUTER_INBOX_COMMITTING;
    for (int i = 0; i < 6000 && w == ROUTER_INBOX_COMMITTING; i++) {
        w = router_inbox_withdraw(in, seq[1]);
        if (w == ROUTER_INBOX_COMMITTING)
            usleep(1000);
    }
    assert_int_equal(w, ROUTER_INBOX_WITHDRAWN);
    assert_int_equal(router_inbox_count(in), 2);
    vfs_fail_clear();
    router_inbox_sync(in);
    assert_int_equal(router_inbox_durable_seq(in), seq[2]);
    assert_int_equal(router_inbox_withdraw(in, seq[0]), ROUTER_INBOX_IS_DURABLE);
    assert_int_equal(router_inbox_withdraw(in, seq[2]), ROUTER_INBOX_IS_DURABLE);
    /* Only durable entries are taken, and the withdrawn one is not there. */
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, seq[0]);
    router_inbox_entry_clear(&e);
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, seq[2]);
    router_inbox_entry_clear(&e);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"), 2);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency WHERE key='b'"), 0);
    s_rmdir(dir);
}

/* The parked path: withdrawn while the commit holding it runs
 * (COMMITTING), that commit's fsync fails once (the WAL, truncated at
 * once, holds nothing of it), and the entry is dropped rather than
 * retried; one withdrawn while its commit runs and succeeds is durable. */
static void test_withdraw_parked(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db);
    uint8_t id[16], zero[32] = {0}, frame[2] = {'{', '}'};
    uint64_t seq, next;
    router_inbox_idem_t key = {.scope = "event", .key = "p", .key_len = 1, .status = 202,
                               .body = "{}", .expires_ms = UINT64_MAX / 2};
    vfs_fail_hold(dir);
    /* Admit until the store thread holds one in its commit (an earlier
     * try withdrawn before it was taken is simply gone). */
    router_inbox_withdraw_t w = ROUTER_INBOX_WITHDRAWN;
    for (uint32_t i = 0; i < 200 && w != ROUTER_INBOX_COMMITTING; i++) {
        s_id(id, 100 + i);
        assert_int_equal(router_inbox_admit_keyed(in, id, zero, "event", frame, 2, 1, NULL, &key,
                                                  &seq), ROUTER_INBOX_ADMITTED);
        usleep(1000 * (i + 1));
        w = router_inbox_withdraw(in, seq);
    }
    assert_int_equal(w, ROUTER_INBOX_COMMITTING);
    s_id(id, 2);
    assert_int_equal(router_inbox_admit(in, id, zero, "event", frame, 2, 1, NULL, &next),
                     ROUTER_INBOX_ADMITTED);
    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, 1);
    vfs_fail_hold(NULL);
    for (int i = 0; i < 6000 && router_inbox_commit_failures(in) < 1; i++)
        usleep(1000);
    router_inbox_sync(in);
    assert_int_equal(vfs_fail_failed(VFS_FAIL_SYNC), 1);
    vfs_fail_clear();
    /* The later admission committed past it; it stays withdrawn. */
    assert_int_equal(router_inbox_durable_seq(in), next);
    assert_int_equal(router_inbox_withdraw(in, seq), ROUTER_INBOX_WITHDRAWN);
    assert_int_equal(router_inbox_count(in), 1);

    /* Withdrawn during a commit that succeeds: durable after all. */
    vfs_fail_hold(dir);
    s_id(id, 3);
    assert_int_equal(router_inbox_admit_keyed(in, id, zero, "event", frame, 2, 1, NULL, &key,
                                              &seq), ROUTER_INBOX_ADMITTED);
    usleep(200 * 1000); /* not a threshold: either answer below is checked */
    w = router_inbox_withdraw(in, seq);
    vfs_fail_hold(NULL);
    router_inbox_sync(in);
    if (w == ROUTER_INBOX_COMMITTING)
        assert_int_equal(router_inbox_withdraw(in, seq), ROUTER_INBOX_IS_DURABLE);
    else
        assert_int_equal(w, ROUTER_INBOX_WITHDRAWN);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), w == ROUTER_INBOX_COMMITTING ? 2 : 1);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"),
                     w == ROUTER_INBOX_COMMITTING ? 1 : 0);
    s_rmdir(dir);
}

/* Expired seen rows are pruned by the store thread, and a pruned v7 id
 * raises its sender's floor. */
static void test_prune(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq;
    s_id(id, 1);
    router_inbox_seen_t old = {.v7_ms = 1234, .expires_ms = 1};
    assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, &old, &seq),
                     ROUTER_INBOX_ADMITTED);
    s_id(id, 2);
    router_inbox_seen_t keep = {.v7_ms = 0, .expires_ms = UINT64_MAX / 2};
    assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, &keep, &seq),
                     ROUTER_INBOX_ADMITTED);
    router_inbox_sync(in);
    s_wait_prune(db, "SELECT COUNT(*) FROM seen", 1);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM seen"), 1);
    assert_int_equal(s_scalar(db, "SELECT floor_ms FROM replay_floor"), 1234);
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

/* Past the newest ROUTER_INBOX_IDEM_ROWS_PER_SCOPE keys of a scope, the
 * prune deletes the older rows (memory holds no more of a scope, WIRE
 * §17.4); another scope's rows are not touched. */
static void test_idem_rows_bounded(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db); /* makes the tables */
    router_inbox_destroy(&in);
    const int64_t base = INT64_MAX / 4, over = 100;
    const int n = (int) ROUTER_INBOX_IDEM_ROWS_PER_SCOPE + (int) over;
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "INSERT INTO inbox_idempotency"
                                           "(scope,key,status,body,expires_ms)"
                                           " VALUES(?1,printf('k-%d',?2),202,'{}',?3)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int i = 0; i < n + 10; i++) {
        bool webhook = i < n; /* then 10 of another scope */
        sqlite3_bind_text(st, 1, webhook ? "webhook" : "event", -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, i);
        sqlite3_bind_int64(st, 3, base + i);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);

    in = s_open(64, 0, db);
    s_wait_prune(db, "SELECT COUNT(*) FROM inbox_idempotency WHERE scope='webhook'", n - over);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency WHERE scope='webhook'"),
                     ROUTER_INBOX_IDEM_ROWS_PER_SCOPE);
    assert_int_equal(s_scalar(db, "SELECT MIN(expires_ms) FROM inbox_idempotency"
                                  " WHERE scope='webhook'"),
                     base + over);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency WHERE scope='event'"),
                     10);
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

/* The floors table is bounded: past 65,536 senders' floors, a prune folds
 * the oldest half into the floor for all senders (the all-zero key), which
 * binds everyone after a restart (router/comms/replay.c). */
static void test_floors_fold(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db); /* makes the tables */
    router_inbox_destroy(&in);
    /* 65,537 senders with floors 10, 20, …: one more than the bound. */
    const int n = 65537;
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "INSERT INTO replay_floor(sender,floor_ms) VALUES(?1,?2)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int i = 1; i <= n; i++) {
        uint8_t sender[32] = {0};
        memcpy(sender, &i, sizeof i);
        sqlite3_bind_blob(st, 1, sender, sizeof sender, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64) i * 10);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);

    in = s_open(64, 0, db);
    s_wait_prune(db, "SELECT COUNT(*) FROM replay_floor", 32768);
    /* The 32,770 oldest folded (floors up to the 32,770th, 327,700 ms),
     * the newest 32,767 kept, and the fold is everyone's floor now. */
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM replay_floor"), 32768);
    assert_int_equal(s_scalar(db, "SELECT floor_ms FROM replay_floor WHERE sender = zeroblob(32)"),
                     327700);
    assert_int_equal(s_scalar(db, "SELECT MIN(floor_ms) FROM replay_floor"
                                  " WHERE sender != zeroblob(32)"),
                     327710);
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

/* Leases: taken entries stay held and stored until done, in any order;
 * after a reopen the unfinished ones are there to take again. */
static void test_lease(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(4, 0, db);
    uint8_t id[16], from[32] = {7}, frame[1] = {0xA0};
    uint64_t seq;
    for (uint32_t i = 0; i < 4; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    router_inbox_sync(in);
    router_inbox_entry_t e[4];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(router_inbox_take(in, &e[i]), 0);
        assert_int_equal(e[i].seq, (uint64_t) i + 1);
    }
    assert_int_equal(router_inbox_leased(in), 3);
    /* Leased entries still count: the inbox is full. */
    s_id(id, 9);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_FULL);
    /* Done out of order; unknown or repeated seqs are refused. */
    assert_int_equal(router_inbox_done(in, 2), 0);
    assert_int_equal(router_inbox_done(in, 2), -1);
    assert_int_equal(router_inbox_done(in, 4), -1); /* not leased */
    assert_int_equal(router_inbox_count(in), 3);
    assert_int_equal(router_inbox_leased(in), 2);
    /* A lease given back (its consumer was short of memory) is the next
     * take, ahead of entries never taken; only a leased seq goes back. */
    assert_int_equal(router_inbox_untake(in, 3), 0);
    assert_int_equal(router_inbox_untake(in, 3), -1);
    assert_int_equal(router_inbox_untake(in, 4), -1);
    assert_int_equal(router_inbox_leased(in), 1);
    router_inbox_entry_clear(&e[2]);
    assert_int_equal(router_inbox_take(in, &e[2]), 0);
    assert_int_equal(e[2].seq, 3);
    assert_int_equal(router_inbox_leased(in), 2);
    /* pop skips leased entries. */
    router_inbox_entry_t p;
    assert_int_equal(router_inbox_pop(in, &p, 0), 0);
    assert_int_equal(p.seq, 4);
    router_inbox_entry_clear(&p);
    assert_int_equal(router_inbox_take(in, &e[3]), -1);
    router_inbox_sync(in);
    for (int i = 0; i < 3; i++)
        router_inbox_entry_clear(&e[i]);
    router_inbox_destroy(&in); /* like a crash: seqs 1 and 3 never done */

    in = s_open(4, 0, db);
    assert_int_equal(router_inbox_count(in), 2);
    assert_int_equal(router_inbox_take(in, &e[0]), 0);
    assert_int_equal(e[0].seq, 1);
    assert_int_equal(router_inbox_take(in, &e[1]), 0);
    assert_int_equal(e[1].seq, 3);
    assert_int_equal(router_inbox_done(in, 3), 0);
    assert_int_equal(router_inbox_done(in, 1), 0);
    assert_int_equal(router_inbox_count(in), 0);
    router_inbox_entry_clear(&e[0]);
    router_inbox_entry_clear(&e[1]);
    router_inbox_destroy(&in);
    in = s_open(4, 0, db);
    assert_int_equal(router_inbox_count(in), 0);
    router_inbox_destroy(&in);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---------------------------------------------------------------- out of memory */

static void s_exec(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
}

/* A reopen that loads more entries than its ring holds at first, the seen
 * ids and floors, a key, and leases an entry, with each allocation on the
 * way failing in turn: every step refuses with a reason or succeeds, and
 * once a run fails none everything stored is there as it was written —
 * no failed run lost or changed a row. Rows this code did not write are
 * stepped past. */
static void test_reopen_without_memory(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(16, 0, db);
    uint8_t id[16], a[32] = {1}, b[32] = {2}, zero[32] = {0}, frame[3] = {0xA1, 0x61, 0x78};
    uint64_t seq;
    for (uint32_t i = 0; i < 6; i++) {
        s_id(id, i);
        router_inbox_seen_t seen = {.expires_ms = UINT64_MAX / 2, .floor_ms = i == 2 ? 77 : 0};
        assert_int_equal(router_inbox_admit(in, id, i % 2 ? b : a, "message", frame, sizeof frame,
                                            1, &seen, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    router_inbox_idem_t key = {.scope = "webhook", .key = "k-1", .key_len = 3, .status = 202,
                               .body = "{\"queued\":true}", .expires_ms = UINT64_MAX / 2};
    s_id(id, 6);
    assert_int_equal(router_inbox_admit_keyed(in, id, zero, "webhook", frame, sizeof frame, 1, NULL,
                                              &key, &seq),
                     ROUTER_INBOX_ADMITTED);
    router_inbox_sync(in);
    router_inbox_destroy(&in);
    /* A row of each table this code did not write (ids of the wrong size). */
    s_exec(db, "INSERT INTO inbox(seq,session,envelope_id,sender,kind,received_ms,frame)"
               " VALUES(100,'comms',x'01',x'02','message',1,x'F6');"
               "INSERT INTO seen(sender,id,seq,v7_ms,admitted_ms,expires_ms)"
               " VALUES(x'0303',x'04',101,0,1,4000000000000);"
               "INSERT INTO seen(sender,id,seq,v7_ms,admitted_ms,expires_ms)"
               " VALUES(x'0100000000000000000000000000000000000000000000000000000000000000',"
               " x'05',102,0,1,4000000000000);");

    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        char err[256] = "";
        router_inbox_opts_t o = {.capacity = 4, .db_path = db, .session = "comms"};
        s_loaded_t l = {0};
        s_idem_loaded_t got = {0};
        router_inbox_entry_t e = {0};
        int seen_rc = -2, idem_rc = -2, take_rc = -2;
        alloc_fail_arm(i);
        in = router_inbox_new(&o, err, sizeof err);
        if (in)
            seen_rc = router_inbox_seen_load(in, 3, s_on_seen, s_on_floor, &l, err, sizeof err);
        if (seen_rc == 0)
            idem_rc = router_inbox_idem_load(in, 1000, s_idem_row, &got, err, sizeof err);
        if (idem_rc == 0)
            take_rc = router_inbox_take(in, &e);
        bool failed = alloc_fail_disarm() > 0;
        if (!failed) {
            assert_int_equal(take_rc, 0);
            assert_int_equal(router_inbox_count(in), 7);
            assert_int_equal(e.seq, 1);
            assert_int_equal(e.frame_len, sizeof frame);
            assert_memory_equal(e.frame, frame, sizeof frame);
            assert_int_equal(l.n, 6); /* b's 3, a's newest 3 (the foreign row takes no place) */
            assert_int_equal(l.nfloors, 1);
            assert_int_equal(l.floor, 77);
            assert_int_equal(got.n, 1);
            assert_string_equal(got.keys[0], "webhook:k-1:202:{\"queued\":true}");
            router_inbox_entry_clear(&e);
            router_inbox_destroy(&in);
            break;
        }
        /* The failure refused one step, with a reason, or none at all. */
        if (!in || seen_rc != 0 || idem_rc != 0) {
            assert_true(err[0] != '\0');
            /* Out of memory, never the file's fault ("another row
             * available" was given for the reload's own allocation). */
            if (!strstr(err, "out of memory") && !strstr(err, "cannot open"))
                fail_msg("allocation %ld failing: refused as \"%s\"", i, err);
            refused++;
        } else if (take_rc != 0) {
            assert_null(e.frame); /* nothing leased: the entry is takeable again */
            assert_int_equal(router_inbox_leased(in), 0);
            assert_int_equal(router_inbox_take(in, &e), 0);
            assert_int_equal(e.seq, 1);
            refused++;
        }
        router_inbox_entry_clear(&e);
        router_inbox_destroy(&in);
    }
    assert_true(refused > 0);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 8);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM seen"), 8);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"), 1);
    print_message("%u allocations refused a step of the reopen\n", refused);
    s_rmdir(dir);
}

/* ---------------------------------------------------------------- failures midway */

/* s_exec with a busy timeout: the store thread may hold the write lock. */
static void s_exec_busy(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_busy_timeout(h, 10000);
    assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
}

static void s_wait_failures(router_inbox_t *in, uint64_t at_least)
{
    for (int i = 0; i < 10000 && router_inbox_commit_failures(in) < at_least; i++)
        usleep(1000);
    assert_true(router_inbox_commit_failures(in) >= at_least);
}

/* A statement failing in the middle of a batch — the entry's row, its
 * key, its seen row, its sender's floor, or a delete of a popped entry —
 * fails the whole transaction: it is rolled back (no row of it stays),
 * nothing of it becomes durable, and the retry once the cause is gone
 * writes every row exactly once. The failures are triggers of the test's
 * own (RAISE while a switch row is set), as a constraint or a full table
 * would fail a statement. Deletes that come while a failing batch waits
 * join its retry. */
static void test_batch_fails_midway(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(64, 0, db); /* the schema */
    router_inbox_destroy(&in);
    static const char *const where[] = {"inbox", "inbox_idempotency", "seen", "replay_floor"};
    char sql[512];
    s_exec(db, "CREATE TABLE fail_switch(what TEXT);"
               "CREATE TRIGGER fail_delete BEFORE DELETE ON inbox WHEN EXISTS(SELECT 1 FROM"
               " fail_switch WHERE what = 'delete') BEGIN SELECT RAISE(ABORT, 'injected'); END;");
    for (size_t k = 0; k < 4; k++) {
        snprintf(sql, sizeof sql,
                 "CREATE TRIGGER fail_%s BEFORE INSERT ON %s WHEN EXISTS(SELECT 1 FROM"
                 " fail_switch WHERE what = '%s') BEGIN SELECT RAISE(ABORT, 'injected'); END;",
                 where[k], where[k], where[k]);
        s_exec(db, sql);
    }
    in = s_open(64, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq, durable = 0;
    uint32_t nid = 0;
    for (size_t k = 0; k < 4; k++) {
        snprintf(sql, sizeof sql, "INSERT INTO fail_switch VALUES('%s')", where[k]);
        s_exec_busy(db, sql);
        uint64_t failures = router_inbox_commit_failures(in);
        char key[8];
        snprintf(key, sizeof key, "k%zu", k);
        router_inbox_idem_t idem = {.scope = "event", .key = key, .key_len = strlen(key),
                                    .status = 202, .body = "{}", .expires_ms = UINT64_MAX / 2};
        router_inbox_seen_t floor = {.expires_ms = UINT64_MAX / 2, .floor_ms = 100 + k};
        router_inbox_seen_t plain = {.expires_ms = UINT64_MAX / 2};
        /* The one that fails first: no batch can commit without it (a
         * failed batch goes back in front of what came after). */
        s_id(id, nid++);
        assert_int_equal(router_inbox_admit_keyed(in, id, a, "message", frame, 1, 1, &floor,
                                                  &idem, &seq), ROUTER_INBOX_ADMITTED);
        s_id(id, nid++);
        assert_int_equal(router_inbox_admit(in, id, a, "event", frame, 1, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
        s_id(id, nid++);
        assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, &plain, &seq),
                         ROUTER_INBOX_ADMITTED);
        s_wait_failures(in, failures + 2); /* failed, and failed again on the retry */
        assert_int_equal(router_inbox_durable_seq(in), durable);
        assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), (sqlite3_int64) durable);
        assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM seen"), (sqlite3_int64) (2 * k));
        s_exec_busy(db, "DELETE FROM fail_switch");
        router_inbox_sync(in);
        durable += 3;
        assert_int_equal(router_inbox_durable_seq(in), durable);
    }
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 12);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM seen"), 8);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"), 4);
    assert_int_equal(s_scalar(db, "SELECT floor_ms FROM replay_floor"), 103);

    /* Deletes: a popped entry's delete fails, one more popped meanwhile
     * joins the retry, and an admission in the same batch waits too. */
    s_exec_busy(db, "INSERT INTO fail_switch VALUES('delete')");
    uint64_t failures = router_inbox_commit_failures(in);
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 1);
    router_inbox_entry_clear(&e);
    s_wait_failures(in, failures + 1);
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 2);
    router_inbox_entry_clear(&e);
    s_id(id, nid++);
    assert_int_equal(router_inbox_admit(in, id, a, "event", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    failures = router_inbox_commit_failures(in);
    s_wait_failures(in, failures + 2);
    assert_int_equal(router_inbox_durable_seq(in), durable);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 12);
    s_exec_busy(db, "DELETE FROM fail_switch");
    router_inbox_sync(in);
    assert_int_equal(router_inbox_durable_seq(in), seq);
    assert_int_equal(router_inbox_count(in), 11);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 11);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox WHERE seq <= 2"), 0);
    s_rmdir(dir);
}

static void s_count_durable(void *ud)
{
    atomic_fetch_add((atomic_uint *) ud, 1);
}

/* Stopping while the disk is full: the store gives up after a few retries
 * instead of hanging the shutdown; what it could not write was never
 * acked (not durable), is freed (LSan), and is not in the database after
 * a reopen — while what was durable before is. The durable callback and
 * the commit counters report only real commits. (A full disk, not a
 * failing fsync: what a commit whose fsync failed wrote may still be read
 * back after a restart, WIRE §6.) */
static void test_stop_with_failing_disk(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    atomic_uint durable_calls = 0;
    router_metrics_t *m = router_metrics_new();
    assert_non_null(m);
    char err[256] = "";
    router_inbox_opts_t o = {.capacity = 16, .db_path = db, .session = "comms",
                             .on_durable = s_count_durable, .ud = &durable_calls, .metrics = m};
    router_inbox_t *in = router_inbox_new(&o, err, sizeof err);
    assert_non_null(in);
    uint8_t id[16], a[32] = {1}, frame[2] = {0xA0, 0xF6};
    uint64_t seq;
    s_id(id, 1);
    assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 2, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    router_inbox_sync(in);
    /* The store calls on_durable after it publishes what is durable, so
     * the call may come just after sync returns. */
    for (int i = 0; i < 10000 && atomic_load(&durable_calls) < 1; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&durable_calls), 1);
    char text[4096];
    assert_true(router_metrics_render(m, text, sizeof text) > 0);
    assert_non_null(strstr(text, "kith_inbox_commits_total 1\n"));
    assert_non_null(strstr(text, "kith_inbox_committed_total 1\n"));

    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1);
    for (uint32_t i = 2; i <= 3; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 2, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    s_wait_failures(in, 1);
    router_inbox_destroy(&in); /* returns: the store gave up */
    assert_true(vfs_fail_failed(VFS_FAIL_WRITE) >= 5);
    vfs_fail_clear();
    assert_int_equal(atomic_load(&durable_calls), 1);
    assert_true(router_metrics_render(m, text, sizeof text) > 0);
    assert_non_null(strstr(text, "kith_inbox_committed_total 1\n"));
    router_metrics_destroy(&m);

    in = s_open(16, 0, db);
    assert_int_equal(router_inbox_count(in), 1);
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 1);
    router_inbox_entry_clear(&e);
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

/* Out of memory for the delete of a taken or popped entry: the take (which
 * reserves the delete) or the pop is refused, the entry stays held and
 * takeable, and the retry succeeds; a done never allocates, so it
 * succeeds out of memory too (it failed, and the turns worker, which
 * cannot retry, left the entry leased and counted for good); a lease
 * given back from the middle of the leased ones is the next taken. */
static void test_delete_without_memory(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(8, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq;
    for (uint32_t i = 0; i < 3; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    router_inbox_sync(in);
    router_inbox_entry_t e1, e2, again;
    alloc_fail_arm(0);
    assert_int_equal(router_inbox_take(in, &e1), -1);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(router_inbox_leased(in), 0);
    assert_int_equal(router_inbox_take(in, &e1), 0);
    assert_int_equal(e1.seq, 1);
    assert_int_equal(router_inbox_take(in, &e2), 0);
    assert_int_equal(router_inbox_untake(in, e1.seq), 0);
    assert_int_equal(router_inbox_take(in, &again), 0);
    assert_int_equal(again.seq, e1.seq); /* ahead of seq 3, never taken */
    router_inbox_entry_clear(&again);
    alloc_fail_arm(0);
    assert_int_equal(router_inbox_done(in, e1.seq), 0);
    assert_int_equal(alloc_fail_disarm(), 0); /* nothing allocated */
    assert_int_equal(router_inbox_leased(in), 1);
    assert_int_equal(router_inbox_count(in), 2);
    router_inbox_entry_clear(&e1);
    router_inbox_entry_clear(&e2);
    router_inbox_destroy(&in); /* seq 2 stays leased: stored */

    in = s_open(8, 0, db); /* a new delete list */
    assert_int_equal(router_inbox_count(in), 2);
    router_inbox_entry_t e;
    alloc_fail_arm(0);
    assert_int_equal(router_inbox_pop(in, &e, 0), -1);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(router_inbox_count(in), 2);
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 2);
    router_inbox_entry_clear(&e);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 1);
    assert_int_equal(s_scalar(db, "SELECT seq FROM inbox"), 3);
    s_rmdir(dir);
}

/* Many leases, each turn ended out of memory, while the store thread
 * takes the deletes (by swapping arrays with the loop's): every done
 * succeeds without allocating (a swap that handed back a smaller array
 * would make one allocate, and fail), and every delete reaches the disk. */
static void test_done_never_allocates(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    enum { N = 200, STEP = 16 };
    router_inbox_t *in = s_open(N, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq;
    for (uint32_t i = 0; i < N; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    router_inbox_sync(in);
    static router_inbox_entry_t e[N];
    for (size_t i = 0; i < N; i++)
        assert_int_equal(router_inbox_take(in, &e[i]), 0);
    for (size_t i = 0; i < N; i++) {
        alloc_fail_arm(0);
        assert_int_equal(router_inbox_done(in, e[i].seq), 0);
        assert_int_equal(alloc_fail_disarm(), 0);
        router_inbox_entry_clear(&e[i]);
        if ((i + 1) % STEP == 0) {
            /* The store thread takes these deletes before the next run:
             * a deadline for progress, not a measure of time. */
            sqlite3_int64 left = -1;
            for (int t = 0; t < 20000; t++) {
                left = s_scalar(db, "SELECT COUNT(*) FROM inbox");
                if (left == (sqlite3_int64) (N - 1 - i))
                    break;
                usleep(1000);
            }
            assert_int_equal(left, N - 1 - i);
        }
    }
    assert_int_equal(router_inbox_count(in), 0);
    assert_int_equal(router_inbox_leased(in), 0);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 0);
    s_rmdir(dir);
}

/* Admissions waiting behind a commit in flight (its sync held) are on the
 * unwritten list: the first and the last of it can be withdrawn, and the
 * rest commits after; the one in flight, withdrawn too, is dropped when
 * its commit fails. */
static void test_withdraw_ends_of_list(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(8, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq[4];
    vfs_fail_hold(dir);
    s_id(id, 0);
    assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, NULL, &seq[0]),
                     ROUTER_INBOX_ADMITTED);
    for (int i = 0; i < 10000 && vfs_fail_held() == 0; i++)
        usleep(1000);
    assert_true(vfs_fail_held() > 0); /* seq[0]'s commit waits in its sync */
    for (uint32_t i = 1; i < 4; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, NULL, &seq[i]),
                         ROUTER_INBOX_ADMITTED);
    }
    assert_int_equal(router_inbox_withdraw(in, seq[3]), ROUTER_INBOX_WITHDRAWN); /* the tail */
    assert_int_equal(router_inbox_withdraw(in, seq[1]), ROUTER_INBOX_WITHDRAWN); /* the head */
    assert_int_equal(router_inbox_withdraw(in, seq[0]), ROUTER_INBOX_COMMITTING);
    assert_int_equal(router_inbox_count(in), 2);
    /* seq[0]'s commit fails: parked, never retried; nobody asks about it
     * again, so the inbox frees it when it goes (LSan). */
    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, 1);
    vfs_fail_hold(NULL);
    router_inbox_sync(in);
    assert_int_equal(vfs_fail_failed(VFS_FAIL_SYNC), 1);
    vfs_fail_clear();
    assert_int_equal(router_inbox_durable_seq(in), seq[2]);
    assert_int_equal(router_inbox_count(in), 1);
    s_id(id, 4);
    assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, NULL, &seq[3]),
                     ROUTER_INBOX_ADMITTED); /* the list works on after both ends went */
    router_inbox_sync(in);
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 2);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox WHERE seq IN (1, 2, 4)"), 0);
    s_rmdir(dir);
}

/* What a kill -9 leaves: state.db and its WAL as they are now, copied to
 * `copy` (a fresh folder) while the inbox still holds them open; the -shm
 * index is left behind, so opening the copy recovers the WAL from the file
 * alone, as the restarted daemon would. */
static void s_crash_copy(const char *dir, const char *copy)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cp %s/state.db %s/state.db && (test ! -e %s/state.db-wal ||"
             " cp %s/state.db-wal %s/state.db-wal)", dir, copy, dir, dir, copy);
    assert_int_equal(system(cmd), 0);
}

/* An fsync that fails under COMMIT leaves the batch's frames, commit frame
 * included, in the WAL file: SQLite only did not publish them. A crash
 * before another commit overwrites them, and the restart's WAL recovery
 * finds that batch committed. An entry withdrawn while that commit ran
 * must then not be answered WITHDRAWN ("nothing was queued": the gateway's
 * 503) — after the restart it is delivered, key and all. Whatever the
 * inbox answers must hold after a kill -9 at any point after it. */
static void test_withdrawn_after_failed_fsync_stays_out(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    char copy[] = "/tmp/kith-inbox-crash-XXXXXX", copy_db[256];
    s_tmp_db(dir, db, sizeof db);
    s_tmp_db(copy, copy_db, sizeof copy_db);
    router_inbox_t *in = s_open(8, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq;
    router_inbox_idem_t key = {.scope = "webhook", .key = "k", .key_len = 1, .status = 202,
                               .body = "{}", .expires_ms = UINT64_MAX / 2};
    vfs_fail_hold(dir);
    s_id(id, 7);
    assert_int_equal(router_inbox_admit_keyed(in, id, a, "webhook", frame, 1, 1, NULL, &key, &seq),
                     ROUTER_INBOX_ADMITTED);
    for (int i = 0; i < 10000 && vfs_fail_held() == 0; i++)
        usleep(1000);
    assert_true(vfs_fail_held() > 0); /* its commit waits in its fsync */
    assert_int_equal(router_inbox_withdraw(in, seq), ROUTER_INBOX_COMMITTING);
    /* That fsync fails, and so does every sync after it (the disk stays
     * broken until the "crash"). */
    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, -1);
    vfs_fail_hold(NULL);
    for (int i = 0; i < 10000 && router_inbox_commit_failures(in) < 1; i++)
        usleep(1000);
    assert_true(router_inbox_commit_failures(in) >= 1);
    router_inbox_withdraw_t w = router_inbox_withdraw(in, seq);
    s_crash_copy(dir, copy);
    sqlite3_int64 rows = s_scalar(copy_db, "SELECT COUNT(*) FROM inbox");
    sqlite3_int64 keys = s_scalar(copy_db, "SELECT COUNT(*) FROM inbox_idempotency");
    assert_int_equal(rows, keys);
    if (w == ROUTER_INBOX_WITHDRAWN)
        assert_int_equal(rows, 0); /* "nothing was queued" must stay true */
    else
        assert_int_equal(w, ROUTER_INBOX_COMMITTING); /* in doubt: said so */
    /* The disk heals: an entry in doubt is settled by its own commit. */
    vfs_fail_clear();
    if (w == ROUTER_INBOX_COMMITTING) {
        router_inbox_sync(in);
        assert_int_equal(router_inbox_withdraw(in, seq), ROUTER_INBOX_IS_DURABLE);
    }
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"),
                     w == ROUTER_INBOX_WITHDRAWN ? 0 : 1);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"),
                     w == ROUTER_INBOX_WITHDRAWN ? 0 : 1);
    s_rmdir(dir);
    s_rmdir(copy);
}

/* A state.db kith may not write opens read-only, and with its tables
 * there the schema writes nothing: the inbox used to start, then fail
 * every commit for ever, every sender timing out on acks that never
 * came. It is refused at start, with the reason. */
static void test_read_only_db_refused(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256], err[256] = "";
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(8, 0, db);
    router_inbox_destroy(&in);
    if (!test_make_unwritable(db, true)) {
        test_make_unwritable(db, false);
        s_rmdir(dir);
        skip();
    }
    router_inbox_opts_t o = {.capacity = 8, .db_path = db, .session = "comms"};
    in = router_inbox_new(&o, err, sizeof err);
    bool started = in != NULL;
    test_make_unwritable(db, false);
    router_inbox_destroy(&in);
    s_rmdir(dir);
    assert_false(started);
    assert_non_null(strstr(err, db));
    assert_non_null(strstr(err, "read-only"));
}

/* A state.db SQLite finds damaged (a page of the inbox table overwritten;
 * a file that is not a database) is refused at start naming the file and
 * what an operator can do: it used to say only "inbox database: cannot
 * reload: database disk image is malformed", without the path. */
static void test_damaged_db_refused(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256], err[512] = "";
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(8, 0, db);
    router_inbox_destroy(&in);
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "SELECT rootpage, (SELECT page_size FROM"
                                           " pragma_page_size) FROM sqlite_master"
                                           " WHERE name = 'inbox'", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long root = sqlite3_column_int(st, 0), page = sqlite3_column_int(st, 1);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(h, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    int fd = open(db, O_WRONLY);
    assert_true(fd >= 0);
    static const uint8_t junk[16] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                     0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    assert_int_equal(pwrite(fd, junk, sizeof junk, (off_t) ((root - 1) * page)),
                     (ssize_t) sizeof junk);
    close(fd);
    router_inbox_opts_t o = {.capacity = 8, .db_path = db, .session = "comms"};
    in = router_inbox_new(&o, err, sizeof err);
    assert_null(in);
    assert_non_null(strstr(err, db));
    assert_non_null(strstr(err, "damaged"));

    FILE *f = fopen(db, "w");
    assert_non_null(f);
    fputs("this is not an SQLite file, but it is long enough to have a header....", f);
    fclose(f);
    err[0] = '\0';
    in = router_inbox_new(&o, err, sizeof err);
    assert_null(in);
    assert_non_null(strstr(err, db));
    assert_non_null(strstr(err, "damaged"));
    s_rmdir(dir);
}

/* A state.db a newer kith wrote, whose inbox table has a column that
 * must be set: the inbox used to start, and then every commit failed (a
 * NOT NULL constraint) and was retried for ever, no admission ever acked.
 * It is refused at start, saying why; a column it need not fill is fine. */
static void test_newer_schema_refused(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256], err[256] = "";
    s_tmp_db(dir, db, sizeof db);
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h,
                                  "CREATE TABLE inbox (seq INTEGER PRIMARY KEY, session TEXT NOT "
                                  "NULL, envelope_id BLOB NOT NULL, sender BLOB NOT NULL, kind TEXT"
                                  " NOT NULL, received_ms INTEGER NOT NULL, frame BLOB NOT NULL,"
                                  " lane INTEGER NOT NULL, note TEXT)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    router_inbox_opts_t o = {.capacity = 8, .db_path = db, .session = "comms"};
    router_inbox_t *in = router_inbox_new(&o, err, sizeof err);
    bool started = in != NULL;
    router_inbox_destroy(&in);
    assert_false(started);
    assert_non_null(strstr(err, "newer kith"));
    assert_non_null(strstr(err, "lane"));

    /* A column it need not fill (nullable, or with a default) opens. */
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "ALTER TABLE inbox DROP COLUMN lane;"
                                     "ALTER TABLE inbox ADD COLUMN lane INTEGER NOT NULL DEFAULT 0",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    in = s_open(8, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq;
    s_id(id, 1);
    assert_int_equal(router_inbox_admit(in, id, a, "message", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    router_inbox_sync(in);
    assert_int_equal(router_inbox_durable_seq(in), seq);
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

static int s_seen_stop(const uint8_t sender[32], const uint8_t id[16], uint64_t expires_ms,
                       void *ud)
{
    (void) sender, (void) id, (void) expires_ms, (void) ud;
    return -1;
}

static int s_floor_stop(const uint8_t sender[32], uint64_t floor_ms, void *ud)
{
    (void) sender, (void) floor_ms, (void) ud;
    return -1;
}

static int s_idem_stop(const router_inbox_idem_t *row, void *ud)
{
    (void) row, (void) ud;
    return -1;
}

/* A load callback that refuses stops the load with an error; rows this
 * code did not write are stepped past; memory-only inboxes load nothing. */
static void test_load_stops(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_open(8, 0, db);
    uint8_t id[16], a[32] = {1}, frame[1] = {0xF6};
    uint64_t seq;
    router_inbox_seen_t seen = {.expires_ms = UINT64_MAX / 2, .floor_ms = 9};
    router_inbox_idem_t key = {.scope = "event", .key = "k", .key_len = 1, .status = 202,
                               .body = "{}", .expires_ms = UINT64_MAX / 2};
    s_id(id, 1);
    assert_int_equal(router_inbox_admit_keyed(in, id, a, "message", frame, 1, 1, &seen, &key,
                                              &seq), ROUTER_INBOX_ADMITTED);
    router_inbox_sync(in);
    router_inbox_destroy(&in);
    s_exec(db, "INSERT INTO replay_floor(sender,floor_ms) VALUES(x'0203', 5);"
               "INSERT INTO inbox_idempotency(scope,key,status,body,expires_ms)"
               " VALUES('event','',202,'{}',4000000000000);");
    in = s_open(8, 0, db);
    char err[256] = "";
    s_loaded_t l = {0};
    assert_int_equal(router_inbox_seen_load(in, 4, s_seen_stop, s_on_floor, &l, err, sizeof err),
                     -1);
    /* A callback's refusal is told as such, never as the file's fault
     * (SQLite's message for a statement with a row waiting, "another row
     * available", was given as why the database could not be read). */
    assert_non_null(strstr(err, "seen ids"));
    assert_non_null(strstr(err, "could not be held"));
    assert_non_null(strstr(err, db));
    assert_null(strstr(err, "row available"));
    err[0] = '\0';
    assert_int_equal(router_inbox_seen_load(in, 4, s_on_seen, s_floor_stop, &l, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "refused a floor"));
    assert_null(strstr(err, "row available"));
    memset(&l, 0, sizeof l);
    assert_int_equal(router_inbox_seen_load(in, 4, s_on_seen, s_on_floor, &l, err, sizeof err), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.nfloors, 1); /* the foreign floor row is stepped past */
    assert_int_equal(l.floor, 9);
    err[0] = '\0';
    assert_int_equal(router_inbox_idem_load(in, 1000, s_idem_stop, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "idempotency"));
    assert_non_null(strstr(err, "could not be held"));
    assert_null(strstr(err, "row available"));
    s_idem_loaded_t got = {0};
    assert_int_equal(router_inbox_idem_load(in, 1000, s_idem_row, &got, err, sizeof err), 0);
    assert_int_equal(got.n, 1); /* the empty key is not one this code wrote */
    router_inbox_destroy(&in);

    in = s_open(8, 0, NULL);
    assert_int_equal(router_inbox_seen_load(in, 4, s_seen_stop, s_floor_stop, NULL, err,
                                            sizeof err), 0);
    router_inbox_destroy(&in);
    router_inbox_entry_clear(NULL);
    assert_string_equal(router_inbox_outcome_str(ROUTER_INBOX_ADMITTED), "admitted");
    assert_string_equal(router_inbox_outcome_str(ROUTER_INBOX_FULL), "inbox_full");
    assert_string_equal(router_inbox_outcome_str(ROUTER_INBOX_NOMEM), "nomem");
    assert_string_equal(router_inbox_outcome_str((router_inbox_outcome_t) 42), "unknown");
    s_rmdir(dir);
}

int main(void)
{
    if (alloc_fail_sqlite_install() != 0 || vfs_fail_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_refuses),
        cmocka_unit_test(test_byte_bound),
        cmocka_unit_test(test_durable_reopen),
        cmocka_unit_test(test_cross_thread),
        cmocka_unit_test(test_seen_rows),
        cmocka_unit_test(test_commit_failure_withholds),
        cmocka_unit_test(test_prune),
        cmocka_unit_test(test_idem_rows_bounded),
        cmocka_unit_test(test_floors_fold),
        cmocka_unit_test(test_lease),
        cmocka_unit_test(test_idem_with_entry),
        cmocka_unit_test(test_withdraw),
        cmocka_unit_test(test_withdraw_parked),
        cmocka_unit_test(test_reopen_without_memory),
        cmocka_unit_test(test_batch_fails_midway),
        cmocka_unit_test(test_stop_with_failing_disk),
        cmocka_unit_test(test_delete_without_memory),
        cmocka_unit_test(test_done_never_allocates),
        cmocka_unit_test(test_withdraw_ends_of_list),
        cmocka_unit_test(test_load_stops),
        cmocka_unit_test(test_withdrawn_after_failed_fsync_stays_out),
        cmocka_unit_test(test_read_only_db_refused),
        cmocka_unit_test(test_newer_schema_refused),
        cmocka_unit_test(test_damaged_db_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
