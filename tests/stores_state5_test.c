/* tests/stores_state5_test.c — the durable stores' failure paths a client or
 * the machine reaches and the module tests did not: another program holding
 * state.db's write lock (SQLITE_BUSY past the busy timeout) while the inbox
 * and the token store have writes waiting, the deletes of ended turns
 * arriving while a failing disk makes their commit retry, and SQLite out of
 * memory on the inbox's store thread at each allocation of a commit in
 * turn. In each, nothing is answered or acked before it is written, what
 * is answered survives a reopen, and nothing leaks (LSan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>
#include <sqlite3.h>

#include "alloc_fail.h"
#include "vfs_fail.h"
#include "router/state/inbox.h"
#include "router/state/tokens.h"

/* ---------------------------------------------------------------- helpers */

static void s_tmp_db(char *dir, char *db, size_t cap)
{
    assert_non_null(mkdtemp(dir));
    snprintf(db, cap, "%s/state.db", dir);
}

static void s_rmdir(const char *dir)
{
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

/* Another program's connection holding state.db's write lock (as the
 * sqlite3 shell in a BEGIN IMMEDIATE would), so every writer of ours gets
 * SQLITE_BUSY once its busy timeout has passed. */
static sqlite3 *s_lock_db(const char *db)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return h;
}

static void s_unlock_db(sqlite3 **h)
{
    assert_int_equal(sqlite3_exec(*h, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(*h);
    *h = NULL;
}

static void s_id(uint8_t id[16], uint32_t n)
{
    memset(id, 0, 16);
    memcpy(id, &n, sizeof n);
}

static router_inbox_t *s_inbox(const char *db)
{
    char err[256] = "";
    router_inbox_opts_t o = {.capacity = 64, .db_path = db, .session = "comms"};
    router_inbox_t *in = router_inbox_new(&o, err, sizeof err);
    if (!in)
        fprintf(stderr, "inbox: %s\n", err);
    assert_non_null(in);
    return in;
}

/* A deadline for progress (a failing store thread's next attempt), never
 * a measure of how long anything takes. */
#define S_DEADLINE_POLLS 1200 /* of 50 ms: a minute */

static void s_wait_inbox_failures(router_inbox_t *in, uint64_t n)
{
    for (int i = 0; i < S_DEADLINE_POLLS && router_inbox_commit_failures(in) < n; i++)
        usleep(50 * 1000);
    assert_true(router_inbox_commit_failures(in) >= n);
}

static void s_wait_rows(const char *db, const char *sql, sqlite3_int64 want)
{
    sqlite3_int64 v = -1;
    for (int i = 0; i < S_DEADLINE_POLLS; i++) {
        if ((v = s_scalar(db, sql)) == want)
            break;
        usleep(50 * 1000);
    }
    assert_int_equal(v, want);
}

/* ---------------------------------------------------------------- inbox */

/* Another program holds state.db's write lock past the busy timeout: the
 * admissions stay un-acked (not durable, nothing takeable), the failure is
 * counted, and once the lock is let go they are written and come back
 * after a reopen. */
static void test_inbox_busy_db_withholds_then_writes(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-state5-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_inbox(db);
    sqlite3 *other = s_lock_db(db);
    uint8_t id[16], from[32] = {7}, frame[3] = {0xA1, 0x01, 0x02};
    uint64_t seq[3];
    for (uint32_t i = 0; i < 3; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, sizeof frame, 1, NULL,
                                            &seq[i]),
                         ROUTER_INBOX_ADMITTED);
    }
    s_wait_inbox_failures(in, 1);
    assert_true(router_inbox_durable_seq(in) < seq[0]); /* nothing acked */
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_take(in, &e), -1);
    assert_int_equal(router_inbox_count(in), 3);
    s_unlock_db(&other);
    router_inbox_sync(in);
    assert_int_equal(router_inbox_durable_seq(in), seq[2]);
    router_inbox_destroy(&in);

    in = s_inbox(db);
    assert_int_equal(router_inbox_count(in), 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(router_inbox_take(in, &e), 0);
        assert_int_equal(e.seq, seq[i]);
        assert_int_equal(router_inbox_done(in, e.seq), 0);
        router_inbox_entry_clear(&e);
    }
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 0);
    s_rmdir(dir);
}

/* Turns end while the disk is full: their deletes ride a commit that
 * fails and is retried, more deletes (and an admission) join the retry,
 * and when the disk recovers every delete and the admission reach it. A
 * delete is never lost while the process runs (a lost one would replay a
 * finished turn after the next restart). */
static void test_inbox_deletes_join_a_failing_retry(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-state5-XXXXXX", db[256];
    s_tmp_db(dir, db, sizeof db);
    router_inbox_t *in = s_inbox(db);
    enum { N = 40 };
    uint8_t id[16], from[32] = {7}, frame[1] = {0xF6};
    uint64_t seq;
    for (uint32_t i = 0; i < N; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    router_inbox_sync(in);
    static router_inbox_entry_t e[N];
    for (size_t i = 0; i < N; i++)
        assert_int_equal(router_inbox_take(in, &e[i]), 0);

    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1); /* full: every commit fails */
    assert_int_equal(router_inbox_done(in, e[0].seq), 0);
    s_wait_inbox_failures(in, 1);
    /* The rest end while that batch is being retried. */
    for (size_t i = 1; i < N; i++) {
        assert_int_equal(router_inbox_done(in, e[i].seq), 0);
        if (i % 8 == 0)
            s_wait_inbox_failures(in, router_inbox_commit_failures(in) + 1);
    }
    s_id(id, N);
    uint64_t last;
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &last),
                     ROUTER_INBOX_ADMITTED);
    s_wait_inbox_failures(in, router_inbox_commit_failures(in) + 1);
    assert_true(router_inbox_durable_seq(in) < last);
    assert_true(vfs_fail_failed(VFS_FAIL_WRITE) >= 3);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), N); /* nothing yet */

    vfs_fail_clear();
    router_inbox_sync(in);
    assert_int_equal(router_inbox_durable_seq(in), last);
    s_wait_rows(db, "SELECT COUNT(*) FROM inbox", 1);
    assert_int_equal(s_scalar(db, "SELECT seq FROM inbox"), (sqlite3_int64) last);
    for (size_t i = 0; i < N; i++)
        router_inbox_entry_clear(&e[i]);
    router_inbox_destroy(&in);
    s_rmdir(dir);
}

/* What the store thread's next on_durable does to that thread's
 * allocations (tests/alloc_fail.h arms per thread, and on_durable is the
 * one call the store thread makes into the test). */
enum { S_ARM_NONE = -1, S_ARM_DISARM = -2 };
static _Atomic long s_store_arm = S_ARM_NONE;

static void s_arm_store_thread(void *ud)
{
    (void) ud;
    long k = atomic_exchange(&s_store_arm, S_ARM_NONE);
    if (k == S_ARM_DISARM)
        (void) alloc_fail_disarm();
    else if (k >= 0)
        alloc_fail_arm(k);
}

static void s_wait_durable(router_inbox_t *in, uint64_t seq)
{
    for (int i = 0; i < S_DEADLINE_POLLS * 10 && router_inbox_durable_seq(in) < seq; i++)
        usleep(5 * 1000);
    assert_true(router_inbox_durable_seq(in) >= seq);
}

/* SQLite out of memory on the store thread, at each allocation of a
 * commit in turn (its BEGIN, the entry's row, its seen row and key row, a
 * delete, the COMMIT, the scrub after it): the commit fails and is
 * retried, never acked before it is written, and once written every row
 * is there after a reopen; a failure never wedges the connection (a
 * transaction left open would refuse every later BEGIN). */
static void test_inbox_store_thread_out_of_memory(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-state5-XXXXXX", db[256], err[256] = "";
    s_tmp_db(dir, db, sizeof db);
    enum { RUNS = 160 };
    router_inbox_opts_t o = {.capacity = 4 * RUNS, .db_path = db, .session = "comms",
                             .on_durable = s_arm_store_thread};
    router_inbox_t *in = router_inbox_new(&o, err, sizeof err);
    assert_non_null(in);
    uint8_t id[16], from[32] = {9}, frame[2] = {0x82, 0x01};
    uint64_t now = (uint64_t) time(NULL) * 1000;
    uint64_t trigger, seq;
    for (uint32_t k = 0; k < RUNS; k++) {
        /* A commit whose on_durable arms the store thread ... */
        atomic_store(&s_store_arm, (long) k);
        s_id(id, 2 * k);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, sizeof frame, now,
                                            NULL, &trigger),
                         ROUTER_INBOX_ADMITTED);
        s_wait_durable(in, trigger);
        /* ... so that the k-th allocation of the next one fails: an
         * entry with a seen row, a floor and a key, and a delete. */
        router_inbox_entry_t e; /* the oldest held */
        assert_int_equal(router_inbox_take(in, &e), 0);
        router_inbox_seen_t seen = {.v7_ms = now, .expires_ms = now + 3600000,
                                    .floor_ms = now - 1000};
        char key[16];
        snprintf(key, sizeof key, "k%u", k);
        router_inbox_idem_t idem = {.scope = "webhook", .key = key, .key_len = strlen(key),
                                    .status = 202, .body = "{}", .expires_ms = now + 3600000};
        s_id(id, 2 * k + 1);
        assert_int_equal(router_inbox_admit_keyed(in, id, from, "message", frame, sizeof frame,
                                                  now, &seen, &idem, &seq),
                         ROUTER_INBOX_ADMITTED);
        assert_int_equal(router_inbox_done(in, e.seq), 0);
        router_inbox_entry_clear(&e);
        s_wait_durable(in, seq);
    }
    /* Disarm the store thread (its armed failure may not have come). */
    atomic_store(&s_store_arm, S_ARM_DISARM);
    s_id(id, 2 * RUNS);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, sizeof frame, now, NULL,
                                        &seq),
                     ROUTER_INBOX_ADMITTED);
    s_wait_durable(in, seq);
    assert_true(router_inbox_commit_failures(in) >= 10); /* the failures did come */
    assert_int_equal(router_inbox_count(in), RUNS + 1);
    router_inbox_destroy(&in);

    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), RUNS + 1);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM seen"), RUNS);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox_idempotency"), RUNS);
    s_rmdir(dir);
}

/* What the store thread's armed failures came to, read by an on_durable
 * that disarms (S_ARM_DISARM). */
static _Atomic long s_store_failed = -1;

static void s_arm_store_thread_count(void *ud)
{
    (void) ud;
    long k = atomic_exchange(&s_store_arm, S_ARM_NONE);
    if (k == S_ARM_DISARM)
        atomic_store(&s_store_failed, (long) alloc_fail_disarm());
    else if (k >= 0)
        alloc_fail_arm(k);
}

/* The store thread out of memory to take the ended turns' deletes (its
 * array smaller than the loop's, which holds the leases' reserved room):
 * the deletes wait, neither lost nor spun on, and go with the next pass;
 * no commit fails for it. */
static void test_inbox_deletes_wait_for_store_memory(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-state5-XXXXXX", db[256], err[256] = "";
    s_tmp_db(dir, db, sizeof db);
    router_inbox_opts_t o = {.capacity = 8, .db_path = db, .session = "comms",
                             .on_durable = s_arm_store_thread_count};
    router_inbox_t *in = router_inbox_new(&o, err, sizeof err);
    assert_non_null(in);
    uint8_t id[16], from[32] = {9}, frame[1] = {0xF6};
    uint64_t seq;
    atomic_store(&s_store_arm, 0); /* the store thread's next allocation fails */
    s_id(id, 1);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    s_wait_durable(in, seq);
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_take(in, &e), 0);
    assert_int_equal(router_inbox_done(in, e.seq), 0); /* the store thread wakes for it */
    router_inbox_entry_clear(&e);
    s_wait_rows(db, "SELECT COUNT(*) FROM inbox", 0);
    assert_int_equal(router_inbox_commit_failures(in), 0);

    atomic_store(&s_store_arm, S_ARM_DISARM);
    s_id(id, 2);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    s_wait_durable(in, seq);
    for (int i = 0; i < S_DEADLINE_POLLS && atomic_load(&s_store_failed) < 0; i++)
        usleep(50 * 1000);
    assert_int_equal(atomic_load(&s_store_failed), 1); /* the take of the deletes failed */
    router_inbox_destroy(&in);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM inbox"), 1);
    s_rmdir(dir);
}

/* ---------------------------------------------------------------- tokens */

typedef struct {
    router_loop_t *loop;
    int calls, oks, want;
} s_count_t;

static void s_count(bool ok, void *ud)
{
    s_count_t *c = ud;
    c->calls++;
    c->oks += ok;
    if (c->calls >= c->want)
        router_loop_stop(c->loop);
}

static void s_give_up(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id, (void) ud;
    router_loop_stop(loop);
}

/* Runs the loop until `want` callbacks ran in all (a minute's deadline). */
static void s_wait_n(s_count_t *c, int want)
{
    c->want = want;
    if (c->calls < want) {
        uint64_t t = router_loop_timer_add(c->loop, 60000, s_give_up, NULL);
        assert_int_equal(router_loop_run(c->loop), 0);
        (void) router_loop_timer_cancel(c->loop, t);
    }
    assert_int_equal(c->calls, want);
}

/* Runs the loop until the store thread has failed `n` commits; the
 * callbacks it may run meanwhile are counted in c. */
static void s_wait_token_failures(router_tokens_t *t, s_count_t *c, uint64_t n)
{
    for (int i = 0; i < S_DEADLINE_POLLS && router_tokens_commit_failures(t) < n; i++) {
        c->want = 1 << 30;
        uint64_t tm = router_loop_timer_add(c->loop, 50, s_give_up, NULL);
        assert_int_equal(router_loop_run(c->loop), 0);
        (void) tm;
    }
    assert_true(router_tokens_commit_failures(t) >= n);
}

/* Another program holds state.db's write lock: a mint and a pairing
 * lockout wait (neither answered, the token not usable), the store keeps
 * retrying, and once the lock is let go both are written once, answered
 * ok, and the token and the lockout come back after a reopen. */
static void test_tokens_busy_db_withholds_then_writes(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-state5-XXXXXX", db[256], err[256] = "";
    s_tmp_db(dir, db, sizeof db);
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    router_tokens_t *t = router_tokens_new(db, loop, err, sizeof err);
    assert_non_null(t);
    sqlite3 *other = s_lock_db(db);
    s_count_t c = {.loop = loop};
    uint8_t h[32];
    randombytes_buf(h, sizeof h);
    uint64_t now = (uint64_t) time(NULL) * 1000, until = 0;
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "ci", now, s_count, &c), 0);
    assert_int_equal(router_tokens_fail(t, "10.9.9.9", now, 1, 600000, &until, s_count, &c), 0);
    assert_true(until > now); /* locked in memory at once */
    s_wait_token_failures(t, &c, 1);
    assert_int_equal(c.calls, 0); /* nothing answered before it is written */
    assert_false(router_tokens_check(t, h, NULL));
    s_unlock_db(&other);
    s_wait_n(&c, 2);
    assert_int_equal(c.oks, 2);
    assert_true(router_tokens_check(t, h, NULL));
    router_tokens_stop(t);
    router_tokens_destroy(&t);
    assert_int_equal(s_scalar(db, "SELECT COUNT(*) FROM gateway_tokens"), 1);

    t = router_tokens_new(db, loop, err, sizeof err);
    assert_non_null(t);
    assert_true(router_tokens_check(t, h, NULL));
    assert_int_equal(router_tokens_locked_until(t, "10.9.9.9", now), until);
    router_tokens_stop(t);
    router_tokens_destroy(&t);
    router_loop_destroy(&loop);
    s_rmdir(dir);
}

int main(void)
{
    if (sodium_init() < 0 || alloc_fail_sqlite_install() != 0 || vfs_fail_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inbox_busy_db_withholds_then_writes),
        cmocka_unit_test(test_inbox_deletes_join_a_failing_retry),
        cmocka_unit_test(test_inbox_store_thread_out_of_memory),
        cmocka_unit_test(test_inbox_deletes_wait_for_store_memory),
        cmocka_unit_test(test_tokens_busy_db_withholds_then_writes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
