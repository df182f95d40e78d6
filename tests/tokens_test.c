/* tests/tokens_test.c — router/state/tokens: a token is checked only once
 * durable, and every kind of state (token hashes, pairing lockouts,
 * idempotency answers, OpenClaw devices) comes back from state.db after a
 * reopen; callbacks run on the loop; a stop runs the callbacks still owed.
 * A failing disk withholds every answer until the row is written; every
 * table (the devices table included) and the write queue have a bound.
 * Out of memory, a write is refused and leaves nothing reserved, and a
 * reopen refuses with a reason or loads everything. Tokens keep a scope
 * and a name; a revoked token, and every deviceToken it earned (one whose
 * record was still being written too), is refused at once and after a
 * reopen. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sodium.h>
#include <sqlite3.h>

#include "alloc_fail.h"
#include "unwritable.h"
#include "vfs_fail.h"
#include "router/clock.h"
#include "router/state/tokens.h"

typedef struct {
    router_loop_t *loop;
    int calls;
    bool ok;
} s_done_t;

static void s_done(bool ok, void *ud)
{
    s_done_t *d = ud;
    d->calls++;
    d->ok = ok;
    router_loop_stop(d->loop);
}

static void s_give_up(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id, (void) ud;
    router_loop_stop(loop);
}

/* Runs the loop until the callback ran (or 30 s passed: a failure). */
static void s_wait(s_done_t *d)
{
    uint64_t t = router_loop_timer_add(d->loop, 30000, s_give_up, NULL);
    while (d->calls == 0) {
        assert_int_equal(router_loop_run(d->loop), 0);
        break;
    }
    (void) router_loop_timer_cancel(d->loop, t);
    assert_int_equal(d->calls, 1);
}

static char s_dir[64];
static char s_db[128];

static int s_setup(void **state)
{
    (void) state;
    snprintf(s_dir, sizeof s_dir, "/tmp/kith-tokens-XXXXXX");
    assert_non_null(mkdtemp(s_dir));
    snprintf(s_db, sizeof s_db, "%s/state.db", s_dir);
    return 0;
}

static int s_teardown(void **state)
{
    (void) state;
    char p[192];
    const char *sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", s_db, sfx[i]);
        unlink(p);
    }
    rmdir(s_dir);
    return 0;
}

static void test_token_durable_then_reloaded(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    uint8_t h[32], other[32];
    randombytes_buf(h, sizeof h);
    randombytes_buf(other, sizeof other);
    assert_int_equal(router_tokens_count(t), 0);
    s_done_t d = {.loop = loop};
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_done, &d), 0);
    assert_false(router_tokens_check(t, h, NULL)); /* not before it is durable */
    s_wait(&d);
    assert_true(d.ok);
    assert_true(router_tokens_check(t, h, NULL));
    assert_false(router_tokens_check(t, other, NULL));

    /* Five bad codes lock; the lock and the token survive a reopen. */
    uint64_t until = 0;
    for (int i = 1; i <= 5; i++) {
        s_done_t f = {.loop = loop};
        assert_int_equal(router_tokens_fail(t, "10.0.0.9", 1000, 5, 300000, &until, s_done, &f), 0);
        s_wait(&f);
        assert_int_equal(until, i == 5 ? 301000 : 0);
    }
    assert_int_equal(router_tokens_locked_until(t, "10.0.0.9", 2000), 301000);
    assert_int_equal(router_tokens_locked_until(t, "10.0.0.8", 2000), 0);
    assert_int_equal(router_tokens_locked_until(t, "10.0.0.9", 301000), 0);

    /* An idempotency answer, remembered. */
    int status = 0;
    const char *body = NULL;
    uint64_t now = 1000;
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, now, &status, &body),
                     ROUTER_IDEM_BUSY);
    s_done_t g = {.loop = loop};
    /* Expiry is judged against the wall clock when pruning: use a real now. */
    now = (uint64_t) time(NULL) * 1000;
    assert_int_equal(router_tokens_idem_finish(t, "webhook", "k1", 2, 202, "{\"queued\":true}",
                                               now, s_done, &g), 0);
    s_wait(&g);
    assert_true(g.ok);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    assert_null(t);
    loop = router_loop_new(NULL);

    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_tokens_count(t), 1);
    assert_true(router_tokens_check(t, h, NULL));
    assert_int_equal(router_tokens_locked_until(t, "10.0.0.9", 2000), 301000);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, now, &status, &body),
                     ROUTER_IDEM_DONE);
    assert_int_equal(status, 202);
    assert_string_equal(body, "{\"queued\":true}");
    /* Scopes are apart; a key is forgotten after its TTL. */
    assert_int_equal(router_tokens_idem_begin(t, "event", "k1", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_idem_release(t, "event", "k1", 2);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2,
                                              now + ROUTER_TOKENS_IDEM_TTL_MS + 1, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_stop(t);
    router_loop_destroy(&loop); /* runs posts still queued, which name t */
    router_tokens_destroy(&t);
}

static void test_forgive_and_stop_runs_callbacks(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err); /* memory only */
    assert_non_null(t);
    uint64_t until = 0;
    for (int i = 0; i < 4; i++)
        assert_int_equal(router_tokens_fail(t, "c", 10, 5, 1000, &until, NULL, NULL), 0);
    router_tokens_forgive(t, "c");
    assert_int_equal(router_tokens_fail(t, "c", 10, 5, 1000, &until, NULL, NULL), 0);
    assert_int_equal(until, 0); /* the count restarted */
    /* A callback owed when the store stops runs inside stop. */
    uint8_t h[32] = {1};
    s_done_t d = {.loop = loop};
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_done, &d), 0);
    router_tokens_stop(t);
    assert_int_equal(d.calls, 1);
    assert_true(d.ok);
    router_tokens_stop(t);
    router_loop_destroy(&loop); /* runs posts still queued, which name t */
    router_tokens_destroy(&t);
}

static void s_noop_post(router_loop_t *loop, void *arg)
{
    (void) loop, (void) arg;
}

/* The loop's post queue is full (a busy loop: every store and crypto
 * thread posts to it) just when a write becomes durable. Its callback
 * used to wait for the next write's post, so with none to come the client
 * (a /pair, a token mint) was never answered and the token never usable.
 * The store thread now tries the post again until the loop takes it. */
static void test_done_posted_when_the_loop_queue_was_full(void **state)
{
    (void) state;
    char err[256];
    router_loop_opts_t o = {.post_capacity = 4};
    router_loop_t *loop = router_loop_new(&o);
    assert_non_null(loop);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err); /* memory only */
    assert_non_null(t);
    int filled = 0;
    while (router_loop_post(loop, s_noop_post, NULL) == 0)
        filled++;
    assert_true(filled > 0);
    router_loop_stats_t st;
    router_loop_stats(loop, &st);
    uint64_t refused = st.posts_refused;
    uint8_t h[32] = {7};
    s_done_t d = {.loop = loop};
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_done, &d), 0);
    /* The store thread wrote it and found the queue full. */
    for (int i = 0; i < 3000 && st.posts_refused == refused; i++) {
        usleep(10 * 1000);
        router_loop_stats(loop, &st);
    }
    assert_true(st.posts_refused > refused);
    /* No other write comes: the loop runs its queue, and the answer owed
     * must follow. */
    s_wait(&d);
    assert_true(d.ok);
    assert_true(router_tokens_check(t, h, NULL));
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* Counts callbacks; stops the loop once `want` have run. */
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

/* Runs the loop until `want` callbacks ran in all (or 60 s: a failure). */
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

/* Waits (bounded) until the store thread has failed `n` commits. */
static void s_wait_failures(router_tokens_t *t, uint64_t n)
{
    for (int i = 0; i < 1200 && router_tokens_commit_failures(t) < n; i++)
        usleep(50 * 1000);
    assert_true(router_tokens_commit_failures(t) >= n);
}

static int s_scalar(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

/* A failing disk: nothing is usable or answered until written; the writes
 * wait in a bounded queue (EAGAIN past it, the key released) and are
 * written, once each, when the disk recovers. */
static void test_failed_commits_withhold_then_write(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    vfs_fail_arm(VFS_FAIL_SYNC, s_dir, 0, -1); /* fsync fails, so every COMMIT does */
    s_count_t c = {.loop = loop};
    uint8_t h[32];
    randombytes_buf(h, sizeof h);
    uint64_t now = (uint64_t) time(NULL) * 1000, until = 0;
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", now, s_count, &c), 0);
    assert_int_equal(router_tokens_fail(t, "10.0.0.1", now, 5, 1000, &until, s_count, &c), 0);
    int status = 0;
    const char *body = NULL;
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_finish(t, "webhook", "k1", 2, 202, "{}", now, s_count, &c),
                     0);
    s_wait_failures(t, 2);
    assert_false(router_tokens_check(t, h, NULL)); /* not durable, so not usable */

    /* The queue fills while the disk fails: its bound holds. */
    int queued = 3;
    uint8_t more[32];
    for (;;) {
        randombytes_buf(more, sizeof more);
        if (router_tokens_add(t, more, ROUTER_TOKEN_OPERATOR, "", now, s_count, &c) != 0)
            break;
        queued++;
        assert_true(queued <= (int) ROUTER_TOKENS_JOBS_MAX);
    }
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(queued, ROUTER_TOKENS_JOBS_MAX);
    assert_int_equal(router_tokens_fail(t, "10.0.0.2", now, 5, 1000, &until, s_count, &c), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k2", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_finish(t, "webhook", "k2", 2, 200, "{}", now, s_count, &c),
                     -1);
    /* Refused, so released: the next request with the key is new. */
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k2", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_idem_release(t, "webhook", "k2", 2);
    assert_int_equal(c.calls, 0);

    vfs_fail_clear();
    s_wait_n(&c, queued);
    assert_int_equal(c.oks, queued);
    assert_true(router_tokens_check(t, h, NULL));
    assert_int_equal(router_tokens_count(t), ROUTER_TOKENS_JOBS_MAX - 2);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_tokens"),
                     ROUTER_TOKENS_JOBS_MAX - 2);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_pair_lockouts"), 1);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_idempotency"), 1);
}

/* Stopping while the disk still fails answers what was never written with
 * ok false, and a reopen knows nothing of it. The disk is full (writes
 * refused): after a failed fsync instead, what was written may or may not
 * be there after a reopen, which is the disk's answer, not the store's. */
static void test_stop_while_failing_answers_not_written(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    vfs_fail_arm(VFS_FAIL_WRITE, s_dir, 0, -1); /* full: every COMMIT fails */
    s_count_t c = {.loop = loop};
    uint8_t h[32];
    randombytes_buf(h, sizeof h);
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), 0);
    s_wait_failures(t, 1);
    router_tokens_stop(t);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.oks, 0);
    assert_false(router_tokens_check(t, h, NULL));
    uint8_t h2[32] = {2};
    assert_int_equal(router_tokens_add(t, h2, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), -1); /* stopped */
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    vfs_fail_clear(); /* the disk recovers: the reopen finds nothing */
    loop = router_loop_new(NULL);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_tokens_count(t), 0);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* state.db that cannot be opened or read gives a reason, not a store. */
static void test_open_failures_say_why(void **state)
{
    (void) state;
    char err[256] = "";
    router_loop_t *loop = router_loop_new(NULL);
    char p[192];
    snprintf(p, sizeof p, "%s/missing/state.db", s_dir);
    assert_null(router_tokens_new(p, loop, err, sizeof err));
    assert_non_null(strstr(err, p));

    FILE *f = fopen(s_db, "w"); /* not a database */
    assert_non_null(f);
    fputs("this is not an SQLite file, but it is long enough to have a header....", f);
    fclose(f);
    err[0] = '\0';
    assert_null(router_tokens_new(s_db, loop, err, sizeof err));
    assert_non_null(strstr(err, s_db));
    assert_non_null(strstr(err, "damaged")); /* and what to do about it */
    unlink(s_db);

    /* A table of that name but another shape: its rows cannot be read. */
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(s_db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "CREATE TABLE gateway_tokens(x)", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    err[0] = '\0';
    assert_null(router_tokens_new(s_db, loop, err, sizeof err));
    assert_non_null(strstr(err, "cannot read gateway tables"));
    router_loop_destroy(&loop);
}

/* A state.db kith may not write (a restore made read-only, a wrong owner)
 * opens, and its tables are all there, so the store used to start — and
 * then every pairing, token and lockout write failed for ever (retried
 * each second, logged each time), each client waiting for an answer that
 * never came. It is refused at start, with the reason. */
static void test_read_only_db_refused(void **state)
{
    (void) state;
    char err[256] = "";
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    router_tokens_destroy(&t);
    if (!test_make_unwritable(s_db, true)) {
        test_make_unwritable(s_db, false);
        router_loop_destroy(&loop);
        skip();
    }
    err[0] = '\0';
    t = router_tokens_new(s_db, loop, err, sizeof err);
    bool started = t != NULL;
    test_make_unwritable(s_db, false);
    router_tokens_destroy(&t);
    router_loop_destroy(&loop);
    assert_false(started);
    assert_non_null(strstr(err, s_db));
    assert_non_null(strstr(err, "read-only"));
}

/* A state.db a newer kith wrote, whose lockouts table has a column that
 * must be set: the store used to start, and then every write failed its
 * constraint and was retried for ever (each pairing client waiting). It
 * is refused at start, saying why. */
static void test_newer_schema_refused(void **state)
{
    (void) state;
    char err[256] = "";
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(s_db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h,
                                  "CREATE TABLE gateway_pair_lockouts (client TEXT PRIMARY KEY,"
                                  " failures INTEGER NOT NULL, until_ms INTEGER NOT NULL,"
                                  " reason TEXT NOT NULL) WITHOUT ROWID",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    bool started = t != NULL;
    router_tokens_destroy(&t);
    router_loop_destroy(&loop);
    assert_false(started);
    assert_non_null(strstr(err, "newer kith"));
    assert_non_null(strstr(err, "reason"));
}

/* Every table in memory has a bound, and what is past it is refused with
 * a reason the caller can act on. */
static void test_tables_are_bounded(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err);
    assert_non_null(t);
    s_count_t c = {.loop = loop};

    /* Tokens: ROUTER_TOKENS_MAX, then ENOSPC. */
    uint8_t h[32] = {0};
    for (uint32_t i = 0; i < ROUTER_TOKENS_MAX; i++) {
        memcpy(h, &i, sizeof i);
        assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), 0);
        if ((i + 1) % 128 == 0)
            s_wait_n(&c, (int) i + 1);
    }
    assert_int_equal(router_tokens_count(t), ROUTER_TOKENS_MAX);
    h[31] = 0xFF;
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), -1);
    assert_int_equal(errno, ENOSPC);

    /* Lockouts: every slot a live lock, so a new client counts as locked;
     * once the locks have ended, a new client takes the stalest slot. */
    c = (s_count_t){.loop = loop};
    uint64_t until = 0;
    char client[32];
    for (uint32_t i = 0; i < ROUTER_TOKENS_CLIENTS_MAX; i++) {
        snprintf(client, sizeof client, "10.1.%u.%u", i / 256, i % 256);
        assert_int_equal(router_tokens_fail(t, client, 1000 + i, 1, 5000, &until, s_count, &c),
                         0);
        assert_int_equal(until, 1000 + i + 5000);
        if ((i + 1) % 128 == 0)
            s_wait_n(&c, (int) i + 1);
    }
    assert_int_equal(router_tokens_fail(t, "10.2.0.1", 2000, 1, 5000, &until, NULL, NULL), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(until, 7000);
    /* Not remembered, so locked until the first live lock ends: were it
     * not, each of its codes would be checked, answered 429 and forgotten. */
    assert_int_equal(router_tokens_locked_until(t, "10.2.0.1", 2000), 6000);
    assert_int_equal(router_tokens_locked_until(t, "10.1.0.5", 2000), 6005); /* its own */
    assert_int_equal(router_tokens_locked_until(t, "10.2.0.1", 6000), 0);   /* a stale slot */
    assert_int_equal(router_tokens_fail(t, "10.2.0.1", 6001, 5, 5000, &until, s_count, &c), 0);
    s_wait_n(&c, (int) ROUTER_TOKENS_CLIENTS_MAX + 1);
    assert_int_equal(router_tokens_locked_until(t, "10.1.0.0", 6001), 0);
    assert_int_equal(router_tokens_fail(t, "10.2.0.1", 6002, 2, 5000, &until, NULL, NULL), 0);
    assert_int_equal(until, 11002); /* the evicted slot is this client's now */
    router_tokens_forgive(t, "10.2.0.1");
    router_tokens_forgive(t, "10.2.0.1"); /* nothing to forgive: no write */
    router_tokens_forgive(t, "never-seen");

    /* Idempotency keys: bad keys and scopes, unknown keys, long bodies,
     * and a full table. */
    int status = 0;
    const char *body = NULL;
    char key[ROUTER_TOKENS_IDEM_KEY_MAX + 2];
    memset(key, 'k', sizeof key);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", key, 0, 1, &status, &body),
                     ROUTER_IDEM_FULL);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", key, ROUTER_TOKENS_IDEM_KEY_MAX + 1,
                                              1, &status, &body),
                     ROUTER_IDEM_FULL);
    assert_int_equal(router_tokens_idem_begin(t, "a-scope-longer-than-16", "k", 1, 1, &status,
                                              &body),
                     ROUTER_IDEM_FULL);
    router_tokens_idem_release(t, "webhook", key, 0);
    assert_int_equal(router_tokens_idem_finish(t, "webhook", "nope", 4, 200, "{}", 1, NULL, NULL),
                     -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "long", 4, 1, &status, &body),
                     ROUTER_IDEM_NEW);
    char big[ROUTER_TOKENS_IDEM_BODY_MAX + 1];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(router_tokens_idem_finish(t, "webhook", "long", 4, 200, big, 1, NULL, NULL),
                     -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "long", 4, 1, &status, &body),
                     ROUTER_IDEM_NEW); /* released by the refusal */
    /* One scope holds at most its share: external events (which may need
     * no credential) cannot take the places of webhooks' keys. */
    for (uint32_t i = 0; i < ROUTER_TOKENS_IDEM_SCOPE_MAX; i++) {
        snprintf(key, sizeof key, "key-%u", i);
        assert_int_equal(router_tokens_idem_begin(t, "event", key, strlen(key), 1, &status, &body),
                         ROUTER_IDEM_NEW);
    }
    assert_int_equal(router_tokens_idem_begin(t, "event", "one-more", 8, 1, &status, &body),
                     ROUTER_IDEM_FULL);
    for (uint32_t i = 1; i < ROUTER_TOKENS_IDEM_MAX - ROUTER_TOKENS_IDEM_SCOPE_MAX; i++) {
        snprintf(key, sizeof key, "key-%u", i);
        assert_int_equal(router_tokens_idem_begin(t, "webhook", key, strlen(key), 1, &status,
                                                  &body),
                         ROUTER_IDEM_NEW);
    }
    /* And the table as a whole is full. */
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "k", 1, 1, &status, &body),
                     ROUTER_IDEM_FULL);
    router_tokens_idem_release(t, "event", "key-0", 5);
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "k", 1, 1, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}


/* The key table reclaims expired keys: when no slot is free, a sweep
 * frees every expired one (at most once a second), a lookup that meets an
 * expired key lets it go, and each scope's count follows, so a scope can
 * fill its whole share again. Keys answered a second ago are never let go
 * for newer ones. */
static void test_idem_table_reclaims(void **state)
{
    (void) state;
    char err[256], key[32];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err);
    assert_non_null(t);
    int status = 0;
    const char *body = NULL;
    uint64_t now = router_clock_wall_ms(), ttl = ROUTER_TOKENS_IDEM_TTL_MS;
    for (uint32_t i = 0; i < ROUTER_TOKENS_IDEM_MAX; i++) {
        snprintf(key, sizeof key, "key-%u", i);
        assert_int_equal(router_tokens_idem_settle(t, i % 2 ? "webhook" : "event", key,
                                                   strlen(key), 202, "{}", now + ttl - 1000),
                         0);
    }
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "x", 1, now, &status, &body),
                     ROUTER_IDEM_FULL);
    assert_int_equal(router_tokens_idem_begin(t, "event", "key-0", 5, now, &status, &body),
                     ROUTER_IDEM_DONE);
    /* Past their expiry: the next new key sweeps them all. */
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "x", 1, now + ttl, &status, &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_begin(t, "event", "key-0", 5, now + ttl, &status, &body),
                     ROUTER_IDEM_NEW);
    for (uint32_t i = 1; i < ROUTER_TOKENS_IDEM_SCOPE_MAX; i++) {
        snprintf(key, sizeof key, "again-%u", i);
        assert_int_equal(router_tokens_idem_begin(t, "event", key, strlen(key), now + ttl,
                                                  &status, &body),
                         ROUTER_IDEM_NEW);
    }
    assert_int_equal(router_tokens_idem_begin(t, "event", "over", 4, now + ttl, &status, &body),
                     ROUTER_IDEM_FULL);
    /* A released key gives its place back to its scope. */
    router_tokens_idem_release(t, "event", "key-0", 5);
    assert_int_equal(router_tokens_idem_begin(t, "event", "over", 4, now + ttl, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

static uint64_t s_metric(router_metrics_t *m, const char *line)
{
    static char text[64 * 1024];
    assert_true(router_metrics_render(m, text, sizeof text) > 0);
    const char *at = strstr(text, line);
    assert_non_null(at);
    return strtoull(at + strlen(line), NULL, 10);
}

/* A full scope lets its oldest answered key go for a new one, once that
 * key was answered ROUTER_TOKENS_IDEM_KEEP_MS ago: keyed requests are
 * served at any sustained rate below a scope's share per KEEP, and a retry
 * within KEEP is always recognised. Only the full scope's own keys go;
 * reserved keys never do; a table full of several scopes takes from the
 * one holding the most. */
static void test_idem_evicts_oldest(void **state)
{
    (void) state;
    char err[256], key[32];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err);
    router_metrics_t *m = router_metrics_new();
    assert_non_null(t);
    assert_non_null(m);
    router_tokens_use_metrics(t, m);
    int status = 0;
    const char *body = NULL;
    uint64_t t0 = router_clock_wall_ms(), keep = ROUTER_TOKENS_IDEM_KEEP_MS;
    /* A webhook key, answered long before, and a reserved one. */
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "w-old", 5, t0 - keep, &status, &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_finish(t, "webhook", "w-old", 5, 202, "{\"w\":1}",
                                               t0 - keep, NULL, NULL),
                     0);
    assert_int_equal(router_tokens_idem_begin(t, "event", "busy", 4, t0, &status, &body),
                     ROUTER_IDEM_NEW);
    /* The event scope fills, key i answered at t0 + i ms, out of order
     * once (key 2 before key 1), as commits may settle them. */
    for (uint32_t i = 1; i < ROUTER_TOKENS_IDEM_SCOPE_MAX; i++) {
        uint32_t n = i == 1 ? 2 : i == 2 ? 1 : i;
        snprintf(key, sizeof key, "key-%u", n);
        assert_int_equal(router_tokens_idem_settle(t, "event", key, strlen(key), 202, "{}",
                                                   t0 + n + ROUTER_TOKENS_IDEM_TTL_MS),
                         0);
    }
    assert_int_equal(s_metric(m, "\nkith_idempotency_keys "), ROUTER_TOKENS_IDEM_SCOPE_MAX + 1);
    /* Every key of the scope was answered less than KEEP ago: refused. */
    assert_int_equal(router_tokens_idem_begin(t, "event", "new-0", 5, t0 + keep - 1, &status,
                                              &body),
                     ROUTER_IDEM_FULL);
    /* From KEEP on, the oldest answered goes (key-1), then key-2; the
     * reserved key stays, and the webhook's. */
    assert_int_equal(router_tokens_idem_begin(t, "event", "new-1", 5, t0 + keep + 1, &status,
                                              &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_begin(t, "event", "key-2", 5, t0 + keep + 1, &status,
                                              &body),
                     ROUTER_IDEM_DONE);
    assert_int_equal(router_tokens_idem_begin(t, "event", "new-2", 5, t0 + keep + 2, &status,
                                              &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_begin(t, "event", "key-2", 5, t0 + keep + 2, &status,
                                              &body),
                     ROUTER_IDEM_FULL); /* let go, and key-3 answered under KEEP ago */
    assert_int_equal(router_tokens_idem_begin(t, "event", "key-3", 5, t0 + keep + 2, &status,
                                              &body),
                     ROUTER_IDEM_DONE);
    assert_int_equal(router_tokens_idem_begin(t, "event", "busy", 4, t0 + keep + 2, &status,
                                              &body),
                     ROUTER_IDEM_BUSY);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "w-old", 5, t0 + keep + 2, &status,
                                              &body),
                     ROUTER_IDEM_DONE);
    assert_string_equal(body, "{\"w\":1}");
    assert_int_equal(s_metric(m, "\nkith_idempotency_keys_evicted_total "), 2);
    /* The table full: webhook keys fill the rest (to the events' share:
     * the scope first counted holds the most), and a third scope's key
     * takes its oldest, the webhook's first key. */
    uint32_t room = ROUTER_TOKENS_IDEM_MAX - ROUTER_TOKENS_IDEM_SCOPE_MAX - 1;
    for (uint32_t i = 0; i < room; i++) {
        snprintf(key, sizeof key, "w-%u", i);
        assert_int_equal(router_tokens_idem_settle(t, "webhook", key, strlen(key), 202, "{}",
                                                   t0 + 100000 + ROUTER_TOKENS_IDEM_TTL_MS),
                         0);
    }
    assert_int_equal(s_metric(m, "\nkith_idempotency_keys "), ROUTER_TOKENS_IDEM_MAX);
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "o", 1, t0 + keep + 3, &status,
                                              &body),
                     ROUTER_IDEM_NEW);
    /* w-old is gone (not DONE), and nothing else is old enough a moment
     * earlier. */
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "w-old", 5, t0 + keep + 2, &status,
                                              &body),
                     ROUTER_IDEM_FULL);
    assert_int_equal(s_metric(m, "\nkith_idempotency_keys_evicted_total "), 3);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    router_metrics_destroy(&m);
}

/* state.db keeps no more OpenClaw keys than memory can hold again: past
 * the newest ROUTER_TOKENS_IDEM_SCOPE_MAX, the next commit deletes the
 * older rows; a reopen loads the newest first and stops at the share. */
static void test_idem_rows_bounded(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err); /* makes the tables */
    router_tokens_stop(t);
    router_tokens_destroy(&t);
    const int64_t base = (int64_t) router_clock_wall_ms() + 3600 * 1000, over = 50;
    const int n = (int) ROUTER_TOKENS_IDEM_SCOPE_MAX + (int) over;
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(s_db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "INSERT INTO gateway_idempotency"
                                           "(key,status,body,expires_ms)"
                                           " VALUES(printf('openclaw:k-%d',?1),200,'{}',?2)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int i = 0; i < n; i++) {
        sqlite3_bind_int(st, 1, i);
        sqlite3_bind_int64(st, 2, base + i);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);

    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    int status = 0;
    const char *body = NULL;
    uint64_t now = router_clock_wall_ms();
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "k-50", 4, now, &status, &body),
                     ROUTER_IDEM_DONE);
    /* k-49 was not loaded: it is new, and the oldest loaded key (k-50,
     * answered 23 h ago) goes for it. */
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "k-49", 4, now, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_idem_release(t, "openclaw", "k-49", 4);
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "k-51", 4, now, &status, &body),
                     ROUTER_IDEM_DONE);
    s_count_t c = {.loop = loop};
    uint8_t tok[32];
    randombytes_buf(tok, sizeof tok);
    assert_int_equal(router_tokens_add(t, tok, ROUTER_TOKEN_OPERATOR, "", now, s_count, &c), 0);
    s_wait_n(&c, 1);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_idempotency"),
                     ROUTER_TOKENS_IDEM_SCOPE_MAX);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_idempotency"
                                    " WHERE key='openclaw:k-49'"),
                     0);
}

/* ---------------------------------------------------------------- devices */

static void s_device(router_tokens_device_t *d, unsigned n)
{
    memset(d, 0, sizeof *d);
    for (size_t i = 0; i < 32; i++)
        d->public_key[i] = (uint8_t) i;
    d->public_key[0] = (uint8_t) n;
    d->public_key[1] = (uint8_t) (n >> 8);
    uint8_t h[32];
    crypto_hash_sha256(h, d->public_key, 32);
    sodium_bin2hex(d->id, sizeof d->id, h, sizeof h);
    snprintf(d->client_id, sizeof d->client_id, "cli");
    snprintf(d->client_mode, sizeof d->client_mode, "cli");
    snprintf(d->platform, sizeof d->platform, "linux");
}

static void test_device_record_check_reload(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    router_tokens_device_t d, got, other;
    s_device(&d, 1);
    s_device(&other, 2);
    uint8_t h1[32], h2[32];
    randombytes_buf(h1, sizeof h1);
    randombytes_buf(h2, sizeof h2);

    /* Seen only once durable; first and last seen are the record's now. */
    s_done_t a = {.loop = loop};
    assert_int_equal(router_tokens_device_record(t, &d, h1, 1000, s_done, &a), 0);
    assert_int_equal(router_tokens_device_count(t), 0);
    assert_false(router_tokens_device_get(t, d.id, &got));
    assert_false(router_tokens_device_check(t, d.id, d.public_key, h1));
    s_wait(&a);
    assert_true(a.ok);
    assert_int_equal(router_tokens_device_count(t), 1);
    assert_true(router_tokens_device_get(t, d.id, &got));
    assert_string_equal(got.client_id, "cli");
    assert_string_equal(got.platform, "linux");
    assert_int_equal(got.first_seen_ms, 1000);
    assert_int_equal(got.last_seen_ms, 1000);
    assert_true(router_tokens_device_check(t, d.id, d.public_key, h1));
    assert_false(router_tokens_device_check(t, d.id, d.public_key, h2));      /* wrong token */
    assert_false(router_tokens_device_check(t, d.id, other.public_key, h1));  /* wrong key */
    assert_false(router_tokens_device_check(t, other.id, other.public_key, h1)); /* unknown */

    /* Seen again without a token: the token stays, the first sighting too. */
    s_done_t b = {.loop = loop};
    snprintf(d.platform, sizeof d.platform, "darwin");
    assert_int_equal(router_tokens_device_record(t, &d, NULL, 2000, s_done, &b), 0);
    s_wait(&b);
    assert_true(router_tokens_device_get(t, d.id, &got));
    assert_int_equal(got.first_seen_ms, 1000);
    assert_int_equal(got.last_seen_ms, 2000);
    assert_string_equal(got.platform, "darwin");
    assert_true(router_tokens_device_check(t, d.id, d.public_key, h1));

    /* A new token replaces the old one, once durable. */
    s_done_t c = {.loop = loop};
    assert_int_equal(router_tokens_device_record(t, &d, h2, 3000, s_done, &c), 0);
    assert_true(router_tokens_device_check(t, d.id, d.public_key, h1));
    s_wait(&c);
    assert_false(router_tokens_device_check(t, d.id, d.public_key, h1));
    assert_true(router_tokens_device_check(t, d.id, d.public_key, h2));

    /* Refused before anything is queued: a malformed id, a text without room. */
    router_tokens_device_t bad = d;
    bad.id[0] = 'X';
    assert_int_equal(router_tokens_device_record(t, &bad, NULL, 1, NULL, NULL), -1);
    assert_int_equal(errno, EINVAL);
    bad = d;
    memset(bad.client_id, 'x', sizeof bad.client_id);
    assert_int_equal(router_tokens_device_record(t, &bad, NULL, 1, NULL, NULL), -1);
    assert_int_equal(errno, EINVAL);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);

    /* Everything comes back from state.db. */
    loop = router_loop_new(NULL);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_tokens_device_count(t), 1);
    assert_true(router_tokens_device_get(t, d.id, &got));
    assert_memory_equal(got.public_key, d.public_key, 32);
    assert_string_equal(got.client_mode, "cli");
    assert_string_equal(got.platform, "darwin");
    assert_int_equal(got.first_seen_ms, 1000);
    assert_int_equal(got.last_seen_ms, 3000);
    assert_true(router_tokens_device_check(t, d.id, d.public_key, h2));
    assert_false(router_tokens_device_check(t, d.id, d.public_key, h1));
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* ---------------------------------------------------------------- scopes and revocation */

/* A bearer token revoked while the record of a deviceToken it earned is
 * being written (its fsync, or a disk failing for minutes): the record
 * lands after the revocation, and its done used to install the
 * deviceToken in memory, accepted until the next restart (the revoked
 * token's holder can make it again: it derives from the secret). It is
 * refused at once, after the record lands, and after a reopen. */
static void test_device_token_of_a_token_revoked_in_flight(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    uint8_t op[32], devtok[32];
    randombytes_buf(op, 32);
    randombytes_buf(devtok, 32);
    char op_id[ROUTER_TOKENS_ID_LEN + 1];
    router_tokens_id(op, op_id);
    s_count_t c = {.loop = loop};
    assert_int_equal(router_tokens_add(t, op, ROUTER_TOKEN_OPERATOR, "laptop", 10, s_count, &c),
                     0);
    s_wait_n(&c, 1);
    router_tokens_device_t d, got;
    s_device(&d, 7);
    memcpy(d.via, op_id, sizeof d.via);
    /* The record is queued; its done runs on the loop, not yet run. */
    assert_int_equal(router_tokens_device_record(t, &d, devtok, 30, s_count, &c), 0);
    assert_int_equal(router_tokens_revoke(t, op_id, s_count, &c), 0);
    assert_false(router_tokens_check(t, op, NULL));
    s_wait_n(&c, 3);
    assert_int_equal(c.oks, 3);
    assert_false(router_tokens_device_check(t, d.id, d.public_key, devtok));
    assert_true(router_tokens_device_get(t, d.id, &got)); /* the device is known, */
    assert_string_equal(got.via, "");                     /* with no deviceToken */
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);

    loop = router_loop_new(NULL);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_false(router_tokens_device_check(t, d.id, d.public_key, devtok));
    assert_true(router_tokens_device_get(t, d.id, &got));
    assert_string_equal(got.via, "");
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* A token's scope and name come back from check() and list() and from
 * state.db; a revoked token is refused at once, and so is every
 * deviceToken it earned, and both stay so after a reopen. */
static void test_scope_name_revoke(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    uint8_t op[32], node[32], devtok[32], other_devtok[32];
    randombytes_buf(op, 32);
    randombytes_buf(node, 32);
    randombytes_buf(devtok, 32);
    randombytes_buf(other_devtok, 32);
    char op_id[ROUTER_TOKENS_ID_LEN + 1], node_id[ROUTER_TOKENS_ID_LEN + 1];
    router_tokens_id(op, op_id);
    router_tokens_id(node, node_id);
    assert_int_equal(strlen(op_id), ROUTER_TOKENS_ID_LEN);

    /* Refused before anything is queued. */
    char long_name[ROUTER_TOKENS_NAME_MAX + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    assert_int_equal(router_tokens_add(t, node, ROUTER_TOKEN_NODE, long_name, 1, NULL, NULL), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_tokens_add(t, node, (router_token_scope_t) 7, "x", 1, NULL, NULL), -1);
    assert_int_equal(errno, EINVAL);

    s_done_t a = {.loop = loop}, b = {.loop = loop};
    assert_int_equal(router_tokens_add(t, op, ROUTER_TOKEN_OPERATOR, "laptop", 10, s_done, &a), 0);
    s_wait(&a);
    assert_int_equal(router_tokens_add(t, node, ROUTER_TOKEN_NODE, "tablet", 20, s_done, &b), 0);
    s_wait(&b);
    router_token_scope_t scope = ROUTER_TOKEN_NODE;
    assert_true(router_tokens_check(t, op, &scope));
    assert_int_equal(scope, ROUTER_TOKEN_OPERATOR);
    assert_true(router_tokens_check(t, node, &scope));
    assert_int_equal(scope, ROUTER_TOKEN_NODE);
    router_tokens_info_t list[4];
    assert_int_equal(router_tokens_list(t, list, 4), 2);
    assert_string_equal(list[0].id, op_id);
    assert_string_equal(list[0].name, "laptop");
    assert_int_equal(list[0].created_ms, 10);
    assert_string_equal(list[1].id, node_id);
    assert_int_equal(list[1].scope, ROUTER_TOKEN_NODE);
    assert_int_equal(router_tokens_list(t, list, 1), 1); /* bounded by the caller's room */

    /* Two devices: one earned its deviceToken with op, one with no known token. */
    router_tokens_device_t d1, d2, got;
    s_device(&d1, 1);
    s_device(&d2, 2);
    memcpy(d1.via, op_id, sizeof d1.via);
    s_done_t c = {.loop = loop}, e = {.loop = loop};
    assert_int_equal(router_tokens_device_record(t, &d1, devtok, 30, s_done, &c), 0);
    s_wait(&c);
    assert_int_equal(router_tokens_device_record(t, &d2, other_devtok, 30, s_done, &e), 0);
    s_wait(&e);
    /* Seen again without a new deviceToken: the via stays with the one kept. */
    router_tokens_device_t again = d1;
    again.via[0] = '\0';
    s_done_t f = {.loop = loop};
    assert_int_equal(router_tokens_device_record(t, &again, NULL, 40, s_done, &f), 0);
    s_wait(&f);
    assert_true(router_tokens_device_get(t, d1.id, &got));
    assert_string_equal(got.via, op_id);

    /* Revoked: refused at once (before the delete is durable), the
     * deviceToken it earned too; the other device keeps its own. */
    s_done_t g = {.loop = loop};
    assert_int_equal(router_tokens_revoke(t, "0123456789abcdef", NULL, NULL), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(router_tokens_revoke(t, op_id, s_done, &g), 0);
    assert_false(router_tokens_check(t, op, NULL));
    assert_false(router_tokens_device_check(t, d1.id, d1.public_key, devtok));
    assert_true(router_tokens_device_check(t, d2.id, d2.public_key, other_devtok));
    assert_int_equal(router_tokens_count(t), 1);
    assert_int_equal(router_tokens_count_scope(t, ROUTER_TOKEN_OPERATOR), 0);
    assert_int_equal(router_tokens_count_scope(t, ROUTER_TOKEN_NODE), 1);
    assert_int_equal(router_tokens_list(t, list, 4), 1);
    assert_int_equal(router_tokens_revoke(t, op_id, NULL, NULL), -1); /* once only */
    assert_int_equal(errno, ENOENT);
    s_wait(&g);
    assert_true(g.ok);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);

    loop = router_loop_new(NULL);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_false(router_tokens_check(t, op, NULL));
    assert_true(router_tokens_check(t, node, &scope));
    assert_int_equal(scope, ROUTER_TOKEN_NODE);
    assert_int_equal(router_tokens_list(t, list, 4), 1);
    assert_string_equal(list[0].name, "tablet");
    assert_int_equal(list[0].created_ms, 20);
    assert_false(router_tokens_device_check(t, d1.id, d1.public_key, devtok));
    assert_true(router_tokens_device_get(t, d1.id, &got)); /* the device stays, its token not */
    assert_string_equal(got.via, "");
    assert_true(router_tokens_device_check(t, d2.id, d2.public_key, other_devtok));
    /* A row this build cannot read opens nothing. */
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(s_db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE gateway_tokens SET scope='root'", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    loop = router_loop_new(NULL);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_false(router_tokens_check(t, node, NULL));
    assert_int_equal(router_tokens_count(t), 0);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

static void test_device_bound_and_stop(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err); /* memory only */
    assert_non_null(t);
    router_tokens_device_t d;
    /* Fill the table in batches the write queue holds. */
    for (unsigned n = 0; n < ROUTER_TOKENS_DEVICES_MAX; n += 128) {
        s_done_t last = {.loop = loop};
        for (unsigned k = n; k < n + 128; k++) {
            s_device(&d, k);
            bool end = k == n + 127;
            assert_int_equal(router_tokens_device_record(t, &d, NULL, 1, end ? s_done : NULL,
                                                         end ? &last : NULL), 0);
        }
        s_wait(&last);
    }
    assert_int_equal(router_tokens_device_count(t), ROUTER_TOKENS_DEVICES_MAX);
    /* A new device has no room; a known one is still seen again. */
    s_device(&d, ROUTER_TOKENS_DEVICES_MAX);
    assert_int_equal(router_tokens_device_record(t, &d, NULL, 2, NULL, NULL), -1);
    assert_int_equal(errno, ENOSPC);
    s_device(&d, 7);
    uint8_t h[32] = {7};
    s_done_t s = {.loop = loop};
    assert_int_equal(router_tokens_device_record(t, &d, h, 2, s_done, &s), 0);
    /* A stop runs the callback owed, and the write counts. */
    router_tokens_stop(t);
    assert_int_equal(s.calls, 1);
    assert_true(s.ok);
    assert_true(router_tokens_device_check(t, d.id, d.public_key, h));
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* settle: memory only, for keys made durable elsewhere (the inbox). A
 * reserved key becomes DONE, an unknown one is added, bounds are checked,
 * and nothing is written to state.db. */
static void test_idem_settle(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err);
    assert_non_null(t);
    int status = 0;
    const char *body = NULL;
    uint64_t now = router_clock_wall_ms();
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "s1", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_idem_settle(t, "webhook", "s1", 2, 202, "{\"a\":1}", now + 10),
                     0);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "s1", 2, now, &status, &body),
                     ROUTER_IDEM_DONE);
    assert_int_equal(status, 202);
    assert_string_equal(body, "{\"a\":1}");
    /* Forgotten after its own expiry. */
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "s1", 2, now + 11, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_idem_release(t, "webhook", "s1", 2);
    /* Loaded at start: not reserved before. */
    assert_int_equal(router_tokens_idem_settle(t, "event", "s2", 2, 202, "{}", now + 1000), 0);
    assert_int_equal(router_tokens_idem_begin(t, "event", "s2", 2, now, &status, &body),
                     ROUTER_IDEM_DONE);
    char big[ROUTER_TOKENS_IDEM_BODY_MAX + 1];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    errno = 0;
    assert_int_equal(router_tokens_idem_settle(t, "event", "s3", 2, 202, big, now + 1000), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_tokens_idem_settle(t, "event", "s3", 0, 202, "{}", now + 1000), -1);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* A damaged state.db: idempotency rows whose status is no HTTP status, or
 * whose expiry is further than any key is kept, or whose key has no
 * scope. None is replayed as it stands: the bad status would be an invalid
 * answer to every retry (a 500 from the server instead), the far expiry
 * would hold the key for ever; the good row beside them still loads. A
 * key settled from the inbox's rows has its status checked the same way. */
static void test_idem_damaged_rows(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    router_tokens_stop(t);
    router_tokens_destroy(&t);
    uint64_t now = router_clock_wall_ms();
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(s_db, &db), SQLITE_OK);
    static const struct {
        const char *key;
        int status;
        uint64_t ahead_ms;
    } rows[] = {
        {"openclaw:zero", 0, 60000},
        {"openclaw:huge", 999, 60000},
        {"openclaw:negative", -1, 60000},
        {"openclaw:forever", 200, 1000 * ROUTER_TOKENS_IDEM_TTL_MS},
        {"noscope", 200, 60000},
        {"openclaw:good", 200, 60000},
    };
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO gateway_idempotency VALUES(?,?,?,?)", -1,
                                        &st, NULL), SQLITE_OK);
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, rows[i].key, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, rows[i].status);
        sqlite3_bind_text(st, 3, "ok", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (sqlite3_int64) (now + rows[i].ahead_ms));
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    int status = -5;
    const char *body = NULL;
    const char *refused[] = {"zero", "huge", "negative"};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(router_tokens_idem_begin(t, "openclaw", refused[i], strlen(refused[i]),
                                                  now, &status, &body), ROUTER_IDEM_NEW);
        router_tokens_idem_release(t, "openclaw", refused[i], strlen(refused[i]));
    }
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "good", 4, now, &status, &body),
                     ROUTER_IDEM_DONE);
    assert_int_equal(status, 200);
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "forever", 7, now, &status, &body),
                     ROUTER_IDEM_DONE);
    /* Held at most a key's lifetime from the load, not a thousand. */
    uint64_t later = router_clock_wall_ms() + ROUTER_TOKENS_IDEM_TTL_MS + 1;
    assert_int_equal(router_tokens_idem_begin(t, "openclaw", "forever", 7, later, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_idem_release(t, "openclaw", "forever", 7);
    /* Settled from elsewhere (the inbox's rows): the same checks. */
    errno = 0;
    assert_int_equal(router_tokens_idem_settle(t, "webhook", "w0", 2, 0, "{}", now + 1000), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "w0", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    router_tokens_idem_release(t, "webhook", "w0", 2);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* ---------------------------------------------------------------- out of memory */

/* Each kind of write with its allocation failing: -1 with EAGAIN (what the
 * header promises), nothing queued, and what it reserved given back — the
 * key can be taken again, the device slot is free — so the same write
 * succeeds once memory is there. */
static void test_writes_refused_without_memory(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(NULL, loop, err, sizeof err); /* memory only */
    assert_non_null(t);
    uint8_t h[32];
    randombytes_buf(h, sizeof h);
    router_tokens_device_t d;
    s_device(&d, 7);
    uint64_t until = 0;
    int status = 0;
    const char *body = NULL;
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, 1, &status, &body),
                     ROUTER_IDEM_NEW);

    alloc_fail_arm(0);
    int rc = router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, NULL, NULL);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, EAGAIN);
    alloc_fail_arm(0);
    rc = router_tokens_fail(t, "10.0.0.9", 1000, 5, 300000, &until, NULL, NULL);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, EAGAIN);
    alloc_fail_arm(0);
    rc = router_tokens_idem_finish(t, "webhook", "k1", 2, 202, "{}", 1, NULL, NULL);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, EAGAIN);
    alloc_fail_arm(0);
    rc = router_tokens_device_record(t, &d, h, 1000, NULL, NULL);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, EAGAIN);

    /* Nothing reserved is left behind. */
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, 1, &status, &body),
                     ROUTER_IDEM_NEW);
    assert_int_equal(router_tokens_device_count(t), 0);
    assert_false(router_tokens_device_get(t, d.id, &d));
    s_done_t a = {.loop = loop};
    assert_int_equal(router_tokens_device_record(t, &d, h, 1000, s_done, &a), 0);
    s_wait(&a);
    assert_true(a.ok);
    assert_int_equal(router_tokens_device_count(t), 1);
    s_done_t b = {.loop = loop};
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_done, &b), 0);
    s_wait(&b);
    assert_true(router_tokens_check(t, h, NULL));
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* A reopen of a state.db holding a token, a lockout, a key and a device,
 * with each allocation (kith's or SQLite's) failing in turn: a store that
 * opens holds all four as written — a failed read is a refusal with a
 * reason, never a store that silently forgot a lockout or a key. */
static void test_reopen_without_memory(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    uint8_t h[32];
    randombytes_buf(h, sizeof h);
    s_done_t a = {.loop = loop};
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_done, &a), 0);
    s_wait(&a);
    uint64_t until = 0;
    for (int i = 1; i <= 5; i++) {
        s_done_t f = {.loop = loop};
        assert_int_equal(router_tokens_fail(t, "10.0.0.9", 1000, 5, 300000, &until, s_done, &f), 0);
        s_wait(&f);
    }
    int status = 0;
    const char *body = NULL;
    uint64_t now = (uint64_t) time(NULL) * 1000;
    assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, now, &status, &body),
                     ROUTER_IDEM_NEW);
    s_done_t g = {.loop = loop};
    assert_int_equal(router_tokens_idem_finish(t, "webhook", "k1", 2, 202, "{}", now, s_done, &g),
                     0);
    s_wait(&g);
    router_tokens_device_t d, got;
    s_device(&d, 3);
    s_done_t r = {.loop = loop};
    assert_int_equal(router_tokens_device_record(t, &d, h, 1000, s_done, &r), 0);
    s_wait(&r);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);

    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        loop = router_loop_new(NULL);
        assert_non_null(loop);
        err[0] = '\0';
        alloc_fail_arm(i);
        t = router_tokens_new(s_db, loop, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!t) {
            assert_true(failed);
            assert_true(err[0] != '\0');
            /* Out of memory, never state.db's fault. */
            if (!strstr(err, "out of memory") && !strstr(err, "cannot open"))
                fail_msg("allocation %ld failing: refused as \"%s\"", i, err);
            refused++;
        } else {
            assert_int_equal(router_tokens_count(t), 1);
            assert_true(router_tokens_check(t, h, NULL));
            assert_int_equal(router_tokens_locked_until(t, "10.0.0.9", 2000), 301000);
            assert_int_equal(router_tokens_idem_begin(t, "webhook", "k1", 2, now, &status, &body),
                             ROUTER_IDEM_DONE);
            assert_int_equal(status, 202);
            assert_int_equal(router_tokens_device_count(t), 1);
            assert_true(router_tokens_device_get(t, d.id, &got));
            assert_true(router_tokens_device_check(t, d.id, d.public_key, h));
            router_tokens_stop(t);
        }
        router_loop_destroy(&loop);
        router_tokens_destroy(&t);
        if (!failed)
            break;
    }
    assert_true(refused > 0);
    print_message("%u allocations refused the reopen\n", refused);
}

/* A disk that stays full: the store thread retries with a backoff that
 * grows to a second and stays there. The backoff once reached 1280 ms and
 * asked nanosleep for 1.28e9 ns, which it refuses (EINVAL) at once: from
 * the eighth failure on the thread spun, a core burnt and the log flooded
 * for as long as the disk was full. Counted, not timed: a slow machine
 * only makes fewer retries. */
static void test_failing_disk_backs_off(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    vfs_fail_arm(VFS_FAIL_WRITE, s_dir, 0, -1);
    s_count_t c = {.loop = loop};
    uint8_t h[32];
    randombytes_buf(h, sizeof h);
    assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), 0);
    s_wait_failures(t, 8); /* 10, 20, ... 640 ms: the backoff is at its cap */
    uint64_t from = router_tokens_commit_failures(t), t0 = router_clock_mono_ms();
    usleep(2500 * 1000);
    uint64_t n = router_tokens_commit_failures(t) - from;
    uint64_t secs = (router_clock_mono_ms() - t0 + 999) / 1000;
    print_message("%llu retries in %llu s\n", (unsigned long long) n, (unsigned long long) secs);
    assert_true(n <= secs + 1);
    assert_int_equal(c.calls, 0); /* nothing answered while not written */
    vfs_fail_clear();
    s_wait_n(&c, 1);
    assert_int_equal(c.oks, 1);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* Pairing lockouts are bounded in state.db as in memory (WIRE §17.2,
 * §24.10: 4096 client addresses): a new client that takes the slot of the
 * lock that ended longest ago takes its row too. The displaced client's
 * row used to stay, so every new address guessing a code added a row for
 * good. After a reopen the new client's lock is in force. */
static void test_lockout_rows_bounded(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    s_count_t c = {.loop = loop};
    uint64_t until = 0;
    char client[32];
    for (uint32_t i = 0; i < ROUTER_TOKENS_CLIENTS_MAX; i++) {
        snprintf(client, sizeof client, "10.1.%u.%u", i / 256, i % 256);
        assert_int_equal(router_tokens_fail(t, client, 1000 + i, 1, 1000, &until, s_count, &c),
                         0);
        if ((i + 1) % 256 == 0)
            s_wait_n(&c, (int) i + 1);
    }
    /* Every lock has ended: each new client displaces the stalest. */
    uint64_t now = (uint64_t) time(NULL) * 1000;
    for (uint32_t i = 0; i < 10; i++) {
        snprintf(client, sizeof client, "10.2.0.%u", i);
        assert_int_equal(router_tokens_fail(t, client, now, 1, 300000, &until, s_count, &c), 0);
        assert_int_equal(until, now + 300000);
    }
    s_wait_n(&c, (int) ROUTER_TOKENS_CLIENTS_MAX + 10);
    assert_int_equal(c.oks, (int) ROUTER_TOKENS_CLIENTS_MAX + 10);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_pair_lockouts"),
                     (int) ROUTER_TOKENS_CLIENTS_MAX);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_pair_lockouts"
                                    " WHERE client IN ('10.1.0.0', '10.1.0.9')"), 0);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_pair_lockouts"
                                    " WHERE client = '10.1.0.10'"), 1);
    loop = router_loop_new(NULL);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_tokens_locked_until(t, "10.2.0.9", now), now + 300000);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);

    /* A table an earlier build let grow past the bound is cut back to the
     * rows memory loads (the newest locks) when it is opened. */
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(s_db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h,
                                  "INSERT INTO gateway_pair_lockouts VALUES ('10.3.0.1', 2, 0),"
                                  " ('10.3.0.2', 0, 5), ('10.3.0.3', 1, 0)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    loop = router_loop_new(NULL);
    t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_tokens_locked_until(t, "10.2.0.9", now), now + 300000);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_pair_lockouts"),
                     (int) ROUTER_TOKENS_CLIENTS_MAX);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_pair_lockouts"
                                    " WHERE client LIKE '10.3.%'"), 0);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_pair_lockouts"
                                    " WHERE client LIKE '10.2.%'"), 10);
}

/* A state.db whose gateway_tokens gained `scope` but not `name`: what a
 * kill -9 (or a full disk) between the two ALTER TABLEs of the migration
 * left, since each committed on its own. The next start tried to add
 * both again, failed on "duplicate column name: scope" and refused to
 * start for ever. It is finished: the token loads as an operator's, its
 * name "". */
static void test_half_migrated_db_opens(void **state)
{
    (void) state;
    char err[256] = "";
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(s_db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h,
                                  "CREATE TABLE gateway_tokens (hash BLOB PRIMARY KEY,"
                                  " created_ms INTEGER NOT NULL) WITHOUT ROWID;"
                                  "ALTER TABLE gateway_tokens ADD COLUMN scope TEXT NOT NULL"
                                  " DEFAULT 'operator';"
                                  "INSERT INTO gateway_tokens(hash, created_ms)"
                                  " VALUES (zeroblob(32), 7);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    if (!t)
        print_message("refused: %s\n", err);
    assert_non_null(t);
    uint8_t zero[32] = {0};
    router_token_scope_t scope = ROUTER_TOKEN_NODE;
    assert_true(router_tokens_check(t, zero, &scope));
    assert_int_equal(scope, ROUTER_TOKEN_OPERATOR);
    router_tokens_info_t info[2];
    assert_int_equal(router_tokens_list(t, info, 2), 1);
    assert_string_equal(info[0].name, "");
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
}

/* The bound on tokens counts a mint from its submit until its callback
 * ran on the loop. It used to count the store thread's queue, which lets
 * a job go at its commit, before the loop hears of it: a mint submitted
 * in between was let in past the bound, written, answered ok — and left
 * out of memory, its holder refused (and after a reopen, which loads the
 * oldest 1024, for good). The loop is not run between the two mints, so
 * the first one's callback is owed when the second comes. */
static void test_token_bound_counts_owed_mints(void **state)
{
    (void) state;
    char err[256];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *t = router_tokens_new(s_db, loop, err, sizeof err);
    assert_non_null(t);
    s_count_t c = {.loop = loop};
    uint8_t h[32] = {0};
    for (uint32_t i = 0; i < ROUTER_TOKENS_MAX - 1; i++) {
        memcpy(h, &i, sizeof i);
        assert_int_equal(router_tokens_add(t, h, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), 0);
        if ((i + 1) % 128 == 0)
            s_wait_n(&c, (int) i + 1);
    }
    s_wait_n(&c, (int) ROUTER_TOKENS_MAX - 1);
    uint8_t last[32], over[32];
    memset(last, 0xAA, sizeof last);
    memset(over, 0xBB, sizeof over);
    assert_int_equal(router_tokens_add(t, last, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), 0);
    /* Committed (the thread has let the job go); its callback waits for
     * the loop. */
    for (int i = 0; i < 600 && s_scalar(s_db, "SELECT COUNT(*) FROM gateway_tokens") <
                                   (int) ROUTER_TOKENS_MAX; i++)
        usleep(50 * 1000);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_tokens"),
                     (int) ROUTER_TOKENS_MAX);
    usleep(200 * 1000);
    assert_int_equal(router_tokens_add(t, over, ROUTER_TOKEN_OPERATOR, "", 1, s_count, &c), -1);
    assert_int_equal(errno, ENOSPC);
    s_wait_n(&c, (int) ROUTER_TOKENS_MAX);
    assert_int_equal(c.oks, (int) ROUTER_TOKENS_MAX);
    assert_true(router_tokens_check(t, last, NULL)); /* every token answered ok opens */
    assert_int_equal(router_tokens_count(t), ROUTER_TOKENS_MAX);
    router_tokens_stop(t);
    router_loop_destroy(&loop);
    router_tokens_destroy(&t);
    assert_int_equal(s_scalar(s_db, "SELECT COUNT(*) FROM gateway_tokens"),
                     (int) ROUTER_TOKENS_MAX);
}

int main(void)
{
    if (alloc_fail_sqlite_install() != 0 || vfs_fail_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_token_durable_then_reloaded, s_setup, s_teardown),
        cmocka_unit_test(test_forgive_and_stop_runs_callbacks),
        cmocka_unit_test(test_done_posted_when_the_loop_queue_was_full),
        cmocka_unit_test_setup_teardown(test_failed_commits_withhold_then_write, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_stop_while_failing_answers_not_written, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_open_failures_say_why, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_read_only_db_refused, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_refused, s_setup, s_teardown),
        cmocka_unit_test(test_tables_are_bounded),
        cmocka_unit_test(test_idem_settle),
        cmocka_unit_test_setup_teardown(test_idem_damaged_rows, s_setup, s_teardown),
        cmocka_unit_test(test_idem_table_reclaims),
        cmocka_unit_test(test_idem_evicts_oldest),
        cmocka_unit_test_setup_teardown(test_idem_rows_bounded, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_device_record_check_reload, s_setup, s_teardown),
        cmocka_unit_test(test_device_bound_and_stop),
        cmocka_unit_test_setup_teardown(test_scope_name_revoke, s_setup, s_teardown),
        cmocka_unit_test(test_writes_refused_without_memory),
        cmocka_unit_test_setup_teardown(test_reopen_without_memory, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_failing_disk_backs_off, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_lockout_rows_bounded, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_device_token_of_a_token_revoked_in_flight, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_half_migrated_db_opens, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_token_bound_counts_owed_mints, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
