/* tests/sessions_test.c — the sessions store: history reads answer in queue
 * order whether the loop's cache or the database answers them, and the
 * database alone answers them the same after a restart; an append the
 * database refuses takes back only itself, in the middle of a batch; a
 * delete is durable and forgotten by the cache; a full or failing disk
 * (a failed write, fsync or lock) loses nothing: the appends wait, count
 * against the queue's bound, and are stored once each, in order, when it
 * recovers, logged once each way; reads of their sessions answer 503
 * meanwhile, a delete of one 503, a stop gives them up saying how many;
 * the bounds keep each session's newest
 * messages, refuse a new session past sessions_max, say when the octets
 * are spent, and count the same after a restart, a failed commit and an
 * upgrade from a state.db without counts; the job queue at its bound refuses
 * each kind of job at once and loses nothing it accepted; a COMMIT whose
 * fsync fails holds its batch for a retry; queries that fail answer each job's
 * typed failure (503 JSON for the HTTP API), logged with SQLite's reason;
 * while writes are held, new sessions' rows count against sessions_max,
 * history reads of their sessions answer unavailable, and held writes that
 * then fail for themselves are given up and forgotten by the cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "alloc_fail.h"
#include "vfs_fail.h"
#include "router/log.h"
#include "router/net/loop.h"
#include "router/workers/history_cache.h"
#include "router/workers/sessions.h"

/* A message costs its octets and ROUTER_SESSIONS_MSG_COST. */
#define COST(n) ((uint64_t) (n) + ROUTER_SESSIONS_MSG_COST)

typedef struct {
    router_loop_t *loop;
    int answers;          /* history callbacks so far */
    char text[8][512];    /* each answer as "role:content@time,…" */
    int rc[8];
    char json[8][1024];   /* each JSON answer */
    int status[8];
    uint64_t deadline;
    int want;
} env_t;

static void s_on_history(void *ud, uint64_t tag, int rc, const router_sessions_msg_t *msgs,
                         size_t n)
{
    env_t *e = ud;
    assert_true(tag < 8);
    size_t o = 0;
    char *out = e->text[tag];
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        o += (size_t) snprintf(out + o, sizeof e->text[0] - o, "%s%s:%.*s@%llu/%s", i ? "," : "",
                               msgs[i].role, (int) msgs[i].len, msgs[i].content,
                               (unsigned long long) msgs[i].time_ms, msgs[i].turn_id);
    e->rc[tag] = rc;
    e->answers++;
}

static void s_on_json(void *ud, uint64_t tag, int status, const char *json, size_t len)
{
    env_t *e = ud;
    assert_true(tag < 8);
    snprintf(e->json[tag], sizeof e->json[0], "%.*s", (int) len, json);
    e->status[tag] = status;
    e->answers++;
}

static void s_check(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    env_t *e = ud;
    if (e->answers >= e->want || router_loop_now_ms(loop) > e->deadline) {
        router_loop_stop(loop);
        return;
    }
    router_loop_timer_add(loop, 5, s_check, e);
}

/* Runs the loop until `want` answers came (a generous bound, not a timing). */
static void s_wait(env_t *e, int want)
{
    e->want = want;
    e->deadline = router_loop_now_ms(e->loop) + 60000;
    router_loop_timer_add(e->loop, 0, s_check, e);
    assert_int_equal(router_loop_run(e->loop), 0);
    assert_int_equal(e->answers, want);
}

/* A fresh state.db in a new temporary dir, a loop and the store on it. */
static router_sessions_t *s_start(char *dir, char *db, size_t dbcap, env_t *e)
{
    assert_non_null(mkdtemp(dir));
    snprintf(db, dbcap, "%s/state.db", dir);
    e->loop = router_loop_new(NULL);
    assert_non_null(e->loop);
    char err[256];
    router_sessions_t *s = router_sessions_new(e->loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    return s;
}

/* s_start with bounds. */
static router_sessions_t *s_start_bounded(char *dir, char *db, size_t dbcap, env_t *e,
                                          const router_sessions_bounds_t *b)
{
    assert_non_null(mkdtemp(dir));
    snprintf(db, dbcap, "%s/state.db", dir);
    e->loop = router_loop_new(NULL);
    assert_non_null(e->loop);
    char err[256];
    router_sessions_t *s = router_sessions_new(e->loop, db, b, err, sizeof err);
    assert_non_null(s);
    return s;
}

static void s_expect_usage(router_sessions_t *s, uint64_t sessions, uint64_t bytes)
{
    uint64_t n = 0, b = 0;
    router_sessions_usage(s, &n, &b);
    assert_int_equal(n, sessions);
    assert_int_equal(b, bytes);
}

/* The loop and the dir go (the store was destroyed by the test). */
static void s_finish(const char *dir, env_t *e)
{
    router_loop_destroy(&e->loop);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Waits until the store holds n writes for a failing disk (a bound for
 * progress, not a timing). */
static void s_wait_waiting(router_sessions_t *s, size_t n)
{
    for (int i = 0; i < 60000 && router_sessions_waiting(s) != n; i++)
        usleep(1000);
    assert_int_equal(router_sessions_waiting(s), n);
}

static void test_history_cache_and_restart(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);

    static const char *const words[] = {"one", "two", "three", "four", "five", "six"};
    for (int i = 0; i < 5; i++)
        assert_int_equal(router_sessions_append(s, "a", i % 2 ? "assistant" : "user", words[i],
                                                strlen(words[i]), "t1"), 0);
    /* A miss: the thread reads, after the appends queued before it. */
    assert_int_equal(router_sessions_history(s, "a", 3, s_on_history, &e, 0), 0);
    s_wait(&e, 1);
    router_history_cache_stats_t st;
    router_sessions_cache_stats(s, &st);
    assert_int_equal(st.hits, 0);
    /* A hit: the same answer, and never inside the call. */
    assert_int_equal(router_sessions_history(s, "a", 3, s_on_history, &e, 1), 0);
    assert_int_equal(e.answers, 1);
    s_wait(&e, 2);
    router_sessions_cache_stats(s, &st);
    assert_int_equal(st.hits, 1);
    assert_string_equal(e.text[0], e.text[1]);
    assert_non_null(strstr(e.text[1], "user:three@"));
    assert_null(strstr(e.text[1], "two"));
    /* An append, then reads from the cache and (another session) the thread. */
    assert_int_equal(router_sessions_append(s, "a", "assistant", "six", 3, "t2"), 0);
    assert_int_equal(router_sessions_history(s, "a", 3, s_on_history, &e, 2), 0);
    assert_int_equal(router_sessions_history(s, "b", 3, s_on_history, &e, 3), 0);
    s_wait(&e, 4);
    assert_int_equal(e.rc[2], 0);
    assert_int_equal(e.rc[3], 0);
    assert_non_null(strstr(e.text[2], "assistant:six@"));
    assert_non_null(strstr(e.text[2], "/t2"));
    assert_string_equal(e.text[3], "");
    router_sessions_cache_stats(s, &st);
    assert_int_equal(st.hits, 2);
    router_sessions_destroy(&s);
    assert_null(s);

    /* After a restart the database answers, the same as the cache did. */
    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(router_sessions_history(s, "a", 3, s_on_history, &e, 4), 0);
    s_wait(&e, 5);
    assert_string_equal(e.text[4], e.text[2]);
    router_sessions_cache_stats(s, &st);
    assert_int_equal(st.hits, 0);
    assert_int_equal(router_sessions_history(s, "a", 3, s_on_history, &e, 5), 0);
    s_wait(&e, 6);
    assert_string_equal(e.text[5], e.text[2]);
    router_sessions_cache_stats(s, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(router_sessions_failures(s), 0);
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* A delete takes the session and every message, after the appends queued
 * before it and in a commit of its own; the cache forgets the session, a
 * read after it finds nothing, and a restart brings nothing back. */
static void test_delete(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    for (int i = 0; i < 3; i++)
        assert_int_equal(router_sessions_append(s, "gone", "user", "x", 1, ""), 0);
    assert_int_equal(router_sessions_append(s, "kept", "user", "y", 1, ""), 0);
    assert_int_equal(router_sessions_history(s, "gone", 10, s_on_history, &e, 0), 0);
    s_wait(&e, 1); /* the cache holds "gone" now */
    assert_int_equal(router_sessions_delete(s, "gone", s_on_json, &e, 1), 0);
    assert_int_equal(router_sessions_history(s, "gone", 10, s_on_history, &e, 2), 0);
    assert_int_equal(router_sessions_delete(s, "nobody", s_on_json, &e, 3), 0);
    s_wait(&e, 4);
    assert_int_equal(e.status[1], 200);
    assert_string_equal(e.json[1], "{\"deleted\":true,\"id\":\"gone\",\"messages\":3}");
    assert_int_equal(e.rc[2], 0);
    assert_string_equal(e.text[2], "");
    assert_int_equal(e.status[3], 404);
    assert_non_null(strstr(e.json[3], "not_found"));
    /* The store refusing: 503, nothing deleted. */
    router_sessions_refuse(s, true);
    assert_int_equal(router_sessions_delete(s, "kept", s_on_json, &e, 4), -1);
    router_sessions_refuse(s, false);
    router_sessions_destroy(&s);

    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(router_sessions_get_json(s, "gone", 10, s_on_json, &e, 5), 0);
    assert_int_equal(router_sessions_get_json(s, "kept", 10, s_on_json, &e, 6), 0);
    s_wait(&e, 6);
    assert_int_equal(e.status[5], 404);
    assert_int_equal(e.status[6], 200);
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* Appends are savepoints in one transaction: one the database refuses
 * (a trigger here, as a full disk or a constraint would) leaves no half of
 * itself (the message_count it raised) and takes none of its neighbours. */
static void test_refused_append_takes_back_only_itself(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "a", "user", "first", 5, "t1"), 0);
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    sqlite3 *side = NULL;
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    sqlite3_busy_timeout(side, 10000);
    assert_int_equal(sqlite3_exec(side,
                                  "CREATE TRIGGER poison BEFORE INSERT ON messages"
                                  " WHEN NEW.content = 'poison'"
                                  " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
                                  NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(side);

    /* Likely one batch (they queue faster than the thread wakes); the
     * outcome is the same in any split. */
    assert_int_equal(router_sessions_append(s, "a", "assistant", "second", 6, "t1"), 0);
    assert_int_equal(router_sessions_append(s, "a", "user", "poison", 6, "t2"), 0);
    assert_int_equal(router_sessions_append(s, "b", "user", "poison", 6, "t3"), 0);
    assert_int_equal(router_sessions_append(s, "a", "assistant", "third", 5, "t2"), 0);
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 1), 0);
    assert_int_equal(router_sessions_get_json(s, "b", 10, s_on_json, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(router_sessions_failures(s), 2);
    assert_int_equal(e.status[1], 200);
    assert_non_null(strstr(e.json[1], "\"message_count\":3"));
    assert_non_null(strstr(e.json[1], "\"content\":\"first\""));
    assert_non_null(strstr(e.json[1], "\"content\":\"second\""));
    assert_non_null(strstr(e.json[1], "\"content\":\"third\""));
    assert_null(strstr(e.json[1], "poison"));
    assert_int_equal(e.status[2], 404); /* its row went back with its message */

    /* The database forgot what it refused, and so did the cache. */
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 3), 0);
    s_wait(&e, 4);
    assert_null(strstr(e.text[3], "poison"));
    assert_non_null(strstr(e.text[3], "assistant:third@"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* The disk full under the store (tests/vfs_fail.h): appends whose COMMIT
 * fails are held, not lost, and the session's cached history still
 * answers with them; reads that the held appends would change answer 503
 * (the list, the session's own), one of a session with nothing held reads
 * state.db; a delete of the session answers 503 and deletes nothing. Once
 * the disk has room again, every held append is stored once, in order,
 * and a restart finds them. */
static void test_disk_full(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "a", "user", "kept", 4, "t1"), 0);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 0), 0);
    s_wait(&e, 1); /* stored, and the cache holds "a" */
    assert_int_equal(router_sessions_failures(s), 0);

    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1);
    assert_int_equal(router_sessions_append(s, "a", "assistant", "held", 4, "t1"), 0);
    assert_int_equal(router_sessions_append(s, "a", "user", "held too", 8, "t2"), 0);
    assert_int_equal(router_sessions_append(s, "b", "user", "new", 3, "t3"), 0);
    s_wait_waiting(s, 3);
    assert_true(router_sessions_failures(s) >= 1);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 1), 0);
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 2), 0);
    assert_int_equal(router_sessions_get_json(s, "none", 10, s_on_json, &e, 3), 0);
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 4), 0);
    assert_int_equal(router_sessions_delete(s, "a", s_on_json, &e, 5), 0);
    s_wait(&e, 6);
    assert_true(vfs_fail_failed(VFS_FAIL_WRITE) >= 1);
    assert_int_equal(e.rc[1], 0); /* the cache: what will be stored */
    assert_non_null(strstr(e.text[1], "user:kept@"));
    assert_non_null(strstr(e.text[1], "assistant:held@"));
    assert_non_null(strstr(e.text[1], "user:held too@"));
    assert_int_equal(e.status[2], 503);
    assert_non_null(strstr(e.json[2], "unavailable"));
    assert_int_equal(e.status[3], 404);
    assert_int_equal(e.status[4], 503);
    assert_int_equal(e.status[5], 503);
    assert_int_equal(router_sessions_waiting(s), 3);
    vfs_fail_clear();
    s_wait_waiting(s, 0);

    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 6), 0);
    assert_int_equal(router_sessions_get_json(s, "b", 10, s_on_json, &e, 7), 0);
    s_wait(&e, 8);
    assert_int_equal(e.status[6], 200);
    assert_non_null(strstr(e.json[6], "\"message_count\":3"));
    char *k = strstr(e.json[6], "\"content\":\"kept\"");
    char *h = strstr(e.json[6], "\"content\":\"held\"");
    char *h2 = strstr(e.json[6], "\"content\":\"held too\"");
    assert_true(k && h && h2 && k < h && h < h2);
    assert_int_equal(e.status[7], 200);
    assert_non_null(strstr(e.json[7], "\"content\":\"new\""));
    router_sessions_destroy(&s);

    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    s_expect_usage(s, 2, COST(4) + COST(4) + COST(8) + COST(3));
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 0), 0);
    s_wait(&e, 9);
    assert_int_equal(e.status[0], 200);
    assert_non_null(strstr(e.json[0], "\"message_count\":3"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

static void s_on_open(void *ud, uint64_t tag, int rc, bool resumed, uint64_t count,
                      const char *name)
{
    env_t *e = ud;
    assert_true(tag < 8);
    snprintf(e->text[tag], sizeof e->text[0], "%s:%llu:%s", resumed ? "resumed" : "new",
             (unsigned long long) count, name ? name : "-");
    e->rc[tag] = rc;
    e->answers++;
}

/* A session opened on a full disk: the open is answered (from what it
 * read; its row is written with the next commit, which fails: the row is
 * held, with its name); opening it again while the row waits answers the
 * store failed; once there is room the row is stored with its name and
 * keeps its messages. */
static void test_open_on_full_disk(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1);
    assert_int_equal(router_sessions_open(s, "fresh", "a name", s_on_open, &e, 0), 0);
    s_wait(&e, 1);
    assert_int_equal(e.rc[0], 0);
    assert_string_equal(e.text[0], "new:0:a name");
    s_wait_waiting(s, 1); /* its row */
    assert_true(vfs_fail_failed(VFS_FAIL_WRITE) >= 1);
    assert_int_equal(router_sessions_open(s, "fresh", "a name", s_on_open, &e, 1), 0);
    /* A new session while writes wait: answered, its row held too. */
    assert_int_equal(router_sessions_open(s, "other", "two", s_on_open, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(e.rc[1], -1);
    assert_int_equal(e.rc[2], 0);
    assert_string_equal(e.text[2], "new:0:two");
    assert_int_equal(router_sessions_waiting(s), 2);
    vfs_fail_clear();
    s_wait_waiting(s, 0);
    assert_true(router_sessions_kept(s, "fresh"));
    assert_true(router_sessions_kept(s, "other"));
    assert_int_equal(router_sessions_append(s, "fresh", "user", "hello", 5, "t1"), 0);
    router_sessions_destroy(&s);

    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(router_sessions_get_json(s, "fresh", 10, s_on_json, &e, 3), 0);
    assert_int_equal(router_sessions_get_json(s, "other", 10, s_on_json, &e, 4), 0);
    s_wait(&e, 5);
    assert_int_equal(e.status[3], 200);
    assert_non_null(strstr(e.json[3], "\"name\":\"a name\""));
    assert_non_null(strstr(e.json[3], "\"content\":\"hello\""));
    assert_int_equal(e.status[4], 200);
    assert_non_null(strstr(e.json[4], "\"name\":\"two\""));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* New sessions opened while a failing disk holds writes count against
 * sessions_max with the rows held: past the bound an open is refused as it
 * is when the disk works, and once the rows are stored state.db keeps no
 * more sessions than the bound. Before, the held rows were not counted:
 * every new session was answered made, and the bound was passed by as many
 * as the job queue holds (8192). */
static void test_sessions_max_while_held(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_bounds_t b = {.sessions_max = 3};
    router_sessions_t *s = s_start_bounded(dir, db, sizeof db, &e, &b);
    assert_int_equal(router_sessions_append(s, "kept", "user", "hi", 2, ""), 0);
    router_sessions_destroy(&s); /* runs what is queued */
    char err[256];
    s = router_sessions_new(e.loop, db, &b, err, sizeof err);
    assert_non_null(s);
    s_expect_usage(s, 1, COST(2));
    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, -1);
    assert_int_equal(router_sessions_open(s, "one", "", s_on_open, &e, 0), 0);
    s_wait(&e, 1);
    assert_int_equal(e.rc[0], 0);
    s_wait_waiting(s, 1); /* its row, held */
    assert_int_equal(router_sessions_open(s, "two", "", s_on_open, &e, 1), 0);
    assert_int_equal(router_sessions_open(s, "three", "", s_on_open, &e, 2), 0);
    assert_int_equal(router_sessions_open(s, "kept", "", s_on_open, &e, 3), 0);
    s_wait(&e, 4);
    assert_int_equal(e.rc[1], 0);
    assert_int_equal(e.rc[2], ROUTER_SESSIONS_FULL_SESSIONS);
    assert_int_equal(e.rc[3], 0); /* a kept one resumes */
    assert_string_equal(e.text[3], "resumed:1:");
    assert_int_equal(router_sessions_waiting(s), 2);
    vfs_fail_clear();
    s_wait_waiting(s, 0);
    uint64_t n = 0, bytes = 0;
    router_sessions_usage(s, &n, &bytes);
    assert_int_equal(n, 3);
    assert_true(router_sessions_kept(s, "one"));
    assert_true(router_sessions_kept(s, "two"));
    assert_false(router_sessions_kept(s, "three"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* History reads past the cache while a failing disk holds writes: one of
 * a session whose messages wait answers unavailable (state.db lacks them:
 * it would answer a history without them), one of a session with none
 * waiting reads state.db; once the writes are stored the first reads them
 * too. */
static void test_history_while_held(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "cold", "user", "kept", 4, "t0"), 0);
    router_sessions_destroy(&s); /* runs what is queued */
    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, -1);
    assert_int_equal(router_sessions_append(s, "a", "user", "waits", 5, "t1"), 0);
    s_wait_waiting(s, 1);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 0), 0);
    assert_int_equal(router_sessions_history(s, "cold", 10, s_on_history, &e, 1), 0);
    s_wait(&e, 2);
    assert_int_equal(e.rc[0], -1);
    assert_int_equal(e.rc[1], 0);
    assert_non_null(strstr(e.text[1], "user:kept@"));
    vfs_fail_clear();
    s_wait_waiting(s, 0);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(e.rc[2], 0);
    assert_non_null(strstr(e.text[2], "user:waits@"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* Out of memory at every allocation of the constructor (SQLite's
 * included) and of each call the loop makes: the constructor refuses with a
 * reason, a call refuses with -1 and its callback never runs, and what was
 * accepted is stored: the history read at the end holds every append that
 * returned 0, in order. */
static void test_without_memory(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/state.db", dir);
    e.loop = router_loop_new(NULL);
    assert_non_null(e.loop);
    router_sessions_t *s = NULL;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !s; i++) {
        err[0] = '\0';
        alloc_fail_arm(i);
        s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!s)
            assert_true(failed && err[0]);
        else if (failed) {
            router_sessions_destroy(&s); /* it coped: go on failing later allocations */
        }
    }
    assert_non_null(s);
    int stored = 0;
    char want[512] = "";
    size_t w = 0;
    for (int n = 0; n < 3; n++) {
        char word[8];
        snprintf(word, sizeof word, "w%d", n);
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            alloc_fail_arm(i);
            int rc = router_sessions_append(s, "oom", "user", word, strlen(word), "t1");
            bool failed = alloc_fail_disarm() > 0;
            if (rc == 0) {
                stored++;
                w += (size_t) snprintf(want + w, sizeof want - w, "%suser:%s@", w ? "," : "", word);
            } else {
                assert_true(failed);
            }
            if (!failed)
                break;
        }
    }
    int tag = 0;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        alloc_fail_arm(i);
        int rc = router_sessions_history(s, "oom", 100, s_on_history, &e, (uint64_t) tag);
        bool failed = alloc_fail_disarm() > 0;
        if (rc == 0) {
            s_wait(&e, tag + 1);
            tag++;
            if (tag == 8)
                break;
        } else {
            assert_true(failed);
        }
        if (!failed)
            break;
    }
    /* Each answer (the cache's or the database's) holds every stored append. */
    assert_true(tag >= 1);
    for (int k = 0; k < tag; k++) {
        assert_int_equal(e.rc[k], 0);
        char *p = e.text[k];
        for (char *q = want; *q;) { /* "user:wN@" pieces appear in order */
            char piece[32];
            size_t n = strcspn(q, ",");
            snprintf(piece, sizeof piece, "%.*s", (int) n, q);
            p = strstr(p, piece);
            assert_non_null(p);
            q += n + (q[n] == ',');
        }
    }
    assert_true(stored >= 3);
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}


static void s_on_open(void *ud, uint64_t tag, int rc, bool resumed, uint64_t count,
                      const char *name);

/* Each session keeps its newest messages within messages_max and
 * session_bytes_max, never fewer than its last one; a history read after
 * the octets bound cut a session the cache held answers what the database
 * keeps. sessions_max refuses a new session, not a kept one, and not an
 * append (accepted work is stored); a delete makes room; the counts
 * survive a restart. */
static void test_bounds_keep_the_newest(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_bounds_t b = {.sessions_max = 2, .messages_max = 3,
                                  .session_bytes_max = 2 * COST(100) + 50, .bytes_max = 100000};
    router_sessions_t *s = s_start_bounded(dir, db, sizeof db, &e, &b);
    for (int i = 0; i < 5; i++) {
        char m[4];
        snprintf(m, sizeof m, "m%d", i);
        assert_int_equal(router_sessions_append(s, "a", "user", m, 2, ""), 0);
    }
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 0), 0);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 1), 0);
    s_wait(&e, 2); /* and the cache holds "a" */
    assert_non_null(strstr(e.json[0], "\"message_count\":3"));
    assert_null(strstr(e.json[0], "\"m1\""));
    assert_non_null(strstr(e.json[0], "\"m2\""));
    assert_non_null(strstr(e.json[0], "\"m4\""));
    assert_int_equal(router_sessions_pruned(s), 2);
    s_expect_usage(s, 1, 3 * COST(2));

    /* 300 octets: the count takes m2, the octets m3 and m4. */
    char big[601];
    memset(big, 'Y', 300);
    assert_int_equal(router_sessions_append(s, "a", "user", big, 300, ""), 0);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 3), 0);
    s_wait(&e, 4);
    assert_null(strstr(e.text[3], "m4")); /* the cache forgot what the bound took */
    assert_non_null(strstr(e.text[3], "user:YYY"));
    assert_null(strchr(e.text[3], ','));
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 4), 0);
    s_wait(&e, 5); /* the thread has stored it */
    assert_non_null(strstr(e.json[4], "\"message_count\":1,"));
    s_expect_usage(s, 1, COST(300));
    /* One message larger than the bound is kept, alone. */
    memset(big, 'Z', 600);
    assert_int_equal(router_sessions_append(s, "a", "user", big, 600, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 4), 0);
    s_wait(&e, 6);
    assert_non_null(strstr(e.json[4], "\"message_count\":1,"));
    assert_non_null(strstr(e.json[4], "ZZZ"));
    assert_int_equal(router_sessions_pruned(s), 6);
    s_expect_usage(s, 1, COST(600));

    /* Two sessions are kept: a third is refused, a kept one resumes. */
    assert_int_equal(router_sessions_room(s, true), ROUTER_SESSIONS_ROOM);
    assert_int_equal(router_sessions_open(s, "b", "bee", s_on_open, &e, 5), 0);
    s_wait(&e, 7);
    assert_int_equal(e.rc[5], 0);
    assert_int_equal(router_sessions_room(s, true), ROUTER_SESSIONS_FULL_SESSIONS);
    assert_int_equal(router_sessions_room(s, false), ROUTER_SESSIONS_ROOM);
    assert_int_equal(router_sessions_open(s, "c", NULL, s_on_open, &e, 6), 0);
    assert_int_equal(router_sessions_open(s, "a", NULL, s_on_open, &e, 7), 0);
    s_wait(&e, 9);
    assert_int_equal(e.rc[6], ROUTER_SESSIONS_FULL_SESSIONS);
    assert_int_equal(e.rc[7], 0);
    assert_string_equal(e.text[7], "resumed:1:");
    /* The ids kept are known without a query: the door lets them in. */
    assert_true(router_sessions_kept(s, "a"));
    assert_true(router_sessions_kept(s, "b"));
    assert_false(router_sessions_kept(s, "c"));
    assert_int_equal(router_sessions_failures(s), 0);
    /* What ingress accepted is stored past the bound. */
    assert_int_equal(router_sessions_append(s, "c", "user", "late", 4, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "c", 10, s_on_json, &e, 0), 0);
    s_wait(&e, 10);
    assert_int_equal(e.status[0], 200);
    s_expect_usage(s, 3, COST(600) + COST(4));
    router_sessions_destroy(&s);

    /* A restart counts the same; deletes make room. */
    s = router_sessions_new(e.loop, db, &b, err, sizeof err);
    assert_non_null(s);
    s_expect_usage(s, 3, COST(600) + COST(4));
    assert_true(router_sessions_kept(s, "b"));
    assert_true(router_sessions_kept(s, "c")); /* made by its append, read at start */
    assert_int_equal(router_sessions_delete(s, "c", s_on_json, &e, 1), 0);
    assert_int_equal(router_sessions_delete(s, "b", s_on_json, &e, 2), 0);
    s_wait(&e, 12);
    assert_int_equal(e.status[1], 200);
    assert_int_equal(e.status[2], 200);
    s_expect_usage(s, 1, COST(600));
    assert_false(router_sessions_kept(s, "b"));
    assert_false(router_sessions_kept(s, "c"));
    assert_true(router_sessions_kept(s, "a"));
    assert_int_equal(router_sessions_room(s, true), ROUTER_SESSIONS_ROOM);
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* bytes_max: past it ingress is told there is no room for any message
 * (appends already accepted are stored); a delete gives it back. */
static void test_bounds_octets_over_all(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_bounds_t b = {.bytes_max = 2 * COST(500)};
    router_sessions_t *s = s_start_bounded(dir, db, sizeof db, &e, &b);
    char text[500];
    memset(text, 'x', sizeof text);
    assert_int_equal(router_sessions_append(s, "one", "user", text, sizeof text, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "one", 1, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    assert_int_equal(router_sessions_room(s, false), ROUTER_SESSIONS_ROOM);
    assert_int_equal(router_sessions_append(s, "two", "user", text, sizeof text, ""), 0);
    assert_int_equal(router_sessions_append(s, "two", "user", text, sizeof text, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "two", 1, s_on_json, &e, 1), 0);
    s_wait(&e, 2);
    assert_int_equal(router_sessions_room(s, false), ROUTER_SESSIONS_FULL_BYTES);
    assert_int_equal(router_sessions_room(s, true), ROUTER_SESSIONS_FULL_BYTES);
    s_expect_usage(s, 2, 3 * COST(500));
    assert_int_equal(router_sessions_delete(s, "two", s_on_json, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(router_sessions_room(s, false), ROUTER_SESSIONS_ROOM);
    s_expect_usage(s, 1, COST(500));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* A batch whose COMMIT fails takes back what the thread had counted for
 * it: the counts are the database's again while it is held, so a failing
 * disk cannot make the bounds drift either way; once it is stored, they
 * count it. */
static void test_bounds_after_a_failed_commit(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "a", "user", "kept", 4, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "a", 1, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    s_expect_usage(s, 1, COST(4));
    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1);
    assert_int_equal(router_sessions_append(s, "a", "user", "held", 4, ""), 0);
    assert_int_equal(router_sessions_append(s, "new", "user", "held", 4, ""), 0);
    assert_int_equal(router_sessions_open(s, "opened", NULL, s_on_open, &e, 1), 0);
    /* A delete commits alone, after the batch before it: once it is
     * answered, that batch has failed and is held. */
    assert_int_equal(router_sessions_delete(s, "a", s_on_json, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(e.status[2], 503);
    s_wait_waiting(s, 3);
    s_expect_usage(s, 1, COST(4));
    /* The ids the failed batch made went with it, until it is stored. */
    assert_true(router_sessions_kept(s, "a"));
    assert_false(router_sessions_kept(s, "new"));
    assert_false(router_sessions_kept(s, "opened"));
    vfs_fail_clear();
    s_wait_waiting(s, 0);
    s_expect_usage(s, 3, 3 * COST(4));
    assert_true(router_sessions_kept(s, "new"));
    assert_true(router_sessions_kept(s, "opened"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* A state.db as kith wrote it before the counts (no `bytes` column, in
 * WAL mode, with the store's indexes, so an upgrade is the store's only
 * write), in a new temporary dir, with `rows` inserted. */
static void s_old_state_db(char *dir, char *db, size_t dbcap, const char *rows)
{
    assert_non_null(mkdtemp(dir));
    snprintf(db, dbcap, "%s/state.db", dir);
    sqlite3 *old = NULL;
    assert_int_equal(sqlite3_open(db, &old), SQLITE_OK);
    assert_int_equal(sqlite3_exec(old,
                                  "PRAGMA journal_mode=WAL;"
                                  "CREATE TABLE sessions (id TEXT PRIMARY KEY,"
                                  " name TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL,"
                                  " updated_ms INTEGER NOT NULL,"
                                  " message_count INTEGER NOT NULL DEFAULT 0);"
                                  "CREATE INDEX sessions_updated ON sessions(updated_ms);"
                                  "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                                  " session_id TEXT NOT NULL, role TEXT NOT NULL,"
                                  " content TEXT NOT NULL, turn_id TEXT NOT NULL DEFAULT '',"
                                  " time_ms INTEGER NOT NULL);"
                                  "CREATE INDEX messages_session ON messages(session_id, seq);",
                                  NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(old, rows, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(old);
}

/* A state.db from before the counts: the store adds its `bytes` column,
 * counts every session's messages into it once, and bounds it from then
 * on (its oldest message goes when the count bound is lower). */
static void test_bounds_upgrade_old_state_db(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    s_old_state_db(dir, db, sizeof db,
                   "INSERT INTO sessions VALUES('old','',1,2,3);"
                   "INSERT INTO sessions VALUES('empty','',1,2,0);"
                   "INSERT INTO messages(session_id,role,content,time_ms)"
                   " VALUES('old','user','hello',1), ('old','assistant','h\xc3\xa9llo',2),"
                   " ('old','user','third',3);");
    e.loop = router_loop_new(NULL);
    assert_non_null(e.loop);
    router_sessions_bounds_t b = {.messages_max = 3};
    router_sessions_t *s = router_sessions_new(e.loop, db, &b, err, sizeof err);
    assert_non_null(s);
    s_expect_usage(s, 2, COST(5) + COST(6) + COST(5));
    assert_int_equal(router_sessions_append(s, "old", "assistant", "four", 4, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "old", 10, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    assert_non_null(strstr(e.json[0], "\"message_count\":3"));
    assert_null(strstr(e.json[0], "\"hello\""));
    s_expect_usage(s, 2, COST(6) + COST(5) + COST(4));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* An append whose pruning the database refuses (a trigger here) is taken
 * back whole: its message, its row's count and octets, the thread's
 * counts, and the cache's copy; the session stays as it was. */
static void test_bounds_prune_refused(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_bounds_t b = {.messages_max = 2};
    router_sessions_t *s = s_start_bounded(dir, db, sizeof db, &e, &b);
    assert_int_equal(router_sessions_append(s, "a", "user", "stuck", 5, ""), 0);
    assert_int_equal(router_sessions_append(s, "a", "user", "b", 1, ""), 0);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 0), 0);
    s_wait(&e, 1); /* stored, and the cache holds "a" */
    sqlite3 *side = NULL;
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    sqlite3_busy_timeout(side, 10000);
    assert_int_equal(sqlite3_exec(side,
                                  "CREATE TRIGGER stuck BEFORE DELETE ON messages"
                                  " WHEN OLD.content = 'stuck'"
                                  " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
                                  NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(side);
    assert_int_equal(router_sessions_append(s, "a", "user", "c", 1, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 1), 0);
    s_wait(&e, 2);
    assert_int_equal(router_sessions_failures(s), 1);
    assert_non_null(strstr(e.json[1], "\"message_count\":2,"));
    assert_null(strstr(e.json[1], "\"c\""));
    s_expect_usage(s, 1, COST(5) + COST(1));
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 2), 0);
    s_wait(&e, 3);
    assert_null(strstr(e.text[2], "user:c@"));
    assert_non_null(strstr(e.text[2], "user:stuck@"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* The upgrade of an old state.db on a full disk: the store refuses to open,
 * saying why, and the file is as it was; with room, it upgrades. */
static void test_bounds_upgrade_on_full_disk(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    s_old_state_db(dir, db, sizeof db,
                   "INSERT INTO sessions VALUES('old','',1,2,1);"
                   "INSERT INTO messages(session_id,role,content,time_ms)"
                   " VALUES('old','user','hello',1);");
    e.loop = router_loop_new(NULL);
    assert_non_null(e.loop);
    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1);
    err[0] = '\0';
    router_sessions_t *s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_null(s);
    assert_true(vfs_fail_failed(VFS_FAIL_WRITE) >= 1);
    assert_non_null(strstr(err, "full"));
    vfs_fail_clear();
    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    s_expect_usage(s, 1, COST(5));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* The job queue at its bound (ROUTER_SESSIONS_JOBS_MAX), the thread held
 * in a COMMIT's fsync (a slow disk): every job past the bound is refused
 * at once with -1 and counted, its callback never runs; a refused append
 * leaves nothing behind in the cache, a refused history read leaves no
 * load pending; and every job that was accepted is stored once the disk
 * moves again, in order. */
static void test_queue_at_its_bound(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "a", "user", "first", 5, "t0"), 0);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 0), 0);
    s_wait(&e, 1); /* the cache holds "a" */

    vfs_fail_hold(dir);
    assert_int_equal(router_sessions_append(s, "a", "assistant", "held", 4, "t0"), 0);
    for (int i = 0; i < 30000 && vfs_fail_held() == 0; i++) /* a bound, not a timing */
        usleep(1000);
    assert_int_equal(vfs_fail_held(), 1); /* the thread waits in its commit */

    unsigned accepted = 0;
    char word[16];
    for (;;) {
        int n = snprintf(word, sizeof word, "m%u", accepted);
        if (router_sessions_append(s, "a", "user", word, (size_t) n, "t1") != 0)
            break;
        accepted++;
        assert_true(accepted <= ROUTER_SESSIONS_JOBS_MAX);
    }
    assert_int_equal(accepted, ROUTER_SESSIONS_JOBS_MAX);
    assert_int_equal(router_sessions_failures(s), 1);
    /* Each kind of job is refused the same way. */
    assert_int_equal(router_sessions_history(s, "cold", 10, s_on_history, &e, 1), -1);
    assert_int_equal(router_sessions_open(s, "b", "name", s_on_open, &e, 1), -1);
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 1), -1);
    assert_int_equal(router_sessions_get_json(s, "a", 1, s_on_json, &e, 1), -1);
    assert_int_equal(router_sessions_delete(s, "a", s_on_json, &e, 1), -1);
    assert_int_equal(router_sessions_failures(s), 6);
    /* The refused append made the cache forget "a": a read of it waits its
     * turn behind the queue (a cache hit is no job, and it would have
     * served the refused message). */
    assert_int_equal(router_sessions_history(s, "a", 1, s_on_history, &e, 2), -1);
    assert_int_equal(router_sessions_failures(s), 7);

    vfs_fail_hold(NULL);
    /* The thread counts each append as it runs it: once it counts past
     * the two before the hold, it has taken the whole queue. */
    uint64_t n = 0, bytes = 0;
    for (int i = 0; i < 30000 && bytes <= COST(5) + COST(4); i++) { /* a bound, not a timing */
        router_sessions_usage(s, &n, &bytes);
        usleep(1000);
    }
    assert_true(bytes > COST(5) + COST(4));
    assert_int_equal(router_sessions_history(s, "cold", 10, s_on_history, &e, 3), 0);
    assert_int_equal(router_sessions_get_json(s, "a", 1, s_on_json, &e, 4), 0);
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 5), 0);
    s_wait(&e, 4);
    assert_int_equal(e.rc[1], 0); /* never called for tag 1 */
    assert_int_equal(e.rc[3], 0);
    assert_string_equal(e.text[3], ""); /* no load was left pending for "cold" */
    assert_int_equal(e.status[4], 200);
    char want[64];
    snprintf(want, sizeof want, "\"message_count\":%u,", ROUTER_SESSIONS_JOBS_MAX + 2);
    if (!strstr(e.json[4], want))
        fail_msg("%s lacks %s", e.json[4], want);
    snprintf(want, sizeof want, "\"content\":\"m%u\"", ROUTER_SESSIONS_JOBS_MAX - 1);
    assert_non_null(strstr(e.json[4], want));
    assert_int_equal(e.status[5], 200);
    assert_non_null(strstr(e.json[5], "{\"sessions\":[{\"id\":\"a\",\"name\":\"\","));
    assert_null(strstr(e.json[5], "\"b\""));
    assert_int_equal(router_sessions_failures(s), 7); /* and nothing failed after */
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* A COMMIT whose fsync fails (tests/vfs_fail.h): the batch is held and
 * retried, a session it makes is not kept until it is stored; the store
 * goes on serving, and once the fsyncs succeed the batch is stored once,
 * and a restart finds it. */
static void test_commit_fsync_fails(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "a", "user", "kept", 4, "t1"), 0);
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 0), 0);
    s_wait(&e, 1);
    s_expect_usage(s, 1, COST(4));

    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, -1);
    assert_int_equal(router_sessions_append(s, "a", "assistant", "held", 4, "t1"), 0);
    assert_int_equal(router_sessions_append(s, "n", "user", "held", 4, "t2"), 0);
    assert_int_equal(router_sessions_delete(s, "a", s_on_json, &e, 1), 0);
    s_wait(&e, 2);
    assert_int_equal(e.status[1], 503);
    assert_string_equal(e.json[1], "{\"error\":\"the session store failed\",\"code\":\"unavailable\"}");
    s_wait_waiting(s, 2);
    assert_true(vfs_fail_failed(VFS_FAIL_SYNC) >= 1);
    s_expect_usage(s, 1, COST(4));
    assert_false(router_sessions_kept(s, "n"));
    /* The retries go on failing while the disk does. */
    for (int i = 0; i < 60000 && vfs_fail_failed(VFS_FAIL_SYNC) < 3; i++) /* a bound */
        usleep(1000);
    assert_true(vfs_fail_failed(VFS_FAIL_SYNC) >= 3);
    assert_int_equal(router_sessions_waiting(s), 2);
    vfs_fail_clear();
    s_wait_waiting(s, 0);
    assert_true(router_sessions_kept(s, "n"));
    s_expect_usage(s, 2, 3 * COST(4));
    router_sessions_destroy(&s);

    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    s_expect_usage(s, 2, 3 * COST(4));
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 2), 0);
    assert_int_equal(router_sessions_get_json(s, "n", 10, s_on_json, &e, 3), 0);
    s_wait(&e, 4);
    assert_non_null(strstr(e.json[2], "\"message_count\":2"));
    assert_non_null(strstr(e.json[2], "\"content\":\"held\""));
    assert_non_null(strstr(e.json[3], "\"message_count\":1"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* The store's log lines, as the tap (router/log.h) sees them. */
static char s_log[4096];
static size_t s_log_len;

static void s_tap(router_log_level_t level, const char *module, const char *line, size_t len,
                  void *ud)
{
    (void) level;
    (void) ud;
    if (strcmp(module, "sessions") == 0 && s_log_len + len < sizeof s_log) {
        memcpy(s_log + s_log_len, line, len);
        s_log_len += len;
        s_log[s_log_len] = '\0';
    }
}

/* Renames a table of state.db from another connection (as a damaged
 * database would answer: the store's statements fail). */
static void s_rename(const char *db, const char *from, const char *to)
{
    sqlite3 *side = NULL;
    char sql[128];
    snprintf(sql, sizeof sql, "ALTER TABLE %s RENAME TO %s", from, to);
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    sqlite3_busy_timeout(side, 10000);
    assert_int_equal(sqlite3_exec(side, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(side);
}

/* A database whose queries fail: every kind of job answers its typed
 * failure — an open or a history read rc -1, the HTTP API 503 with the
 * JSON error, a delete 503 that deletes nothing, an append not stored (the
 * cache forgets the session) — each counted, and the store keeps serving:
 * once the database answers again, what was stored before is all there. */
static void test_store_fails_queries(void **state)
{
    (void) state;
    static const char e503[] = "{\"error\":\"the session store failed\",\"code\":\"unavailable\"}";
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    s_log_len = 0;
    s_log[0] = '\0';
    router_log_set_tap(s_tap, NULL);
    assert_int_equal(router_sessions_append(s, "a", "user", "kept", 4, "t1"), 0);
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    assert_int_equal(e.status[0], 200);
    assert_non_null(strstr(e.json[0], "\"id\":\"a\""));
    assert_non_null(strstr(e.json[0], "\"message_count\":1}]}"));

    /* The messages are out of reach; the sessions' rows are not. */
    s_rename(db, "messages", "messages_away");
    assert_int_equal(router_sessions_get_json(s, "a", 10, s_on_json, &e, 1), 0);
    assert_int_equal(router_sessions_history(s, "uncached", 10, s_on_history, &e, 2), 0);
    assert_int_equal(router_sessions_delete(s, "a", s_on_json, &e, 3), 0);
    assert_int_equal(router_sessions_append(s, "a", "user", "not stored", 10, "t2"), 0);
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 4), 0);
    s_wait(&e, 5);
    assert_int_equal(e.status[1], 503);
    assert_string_equal(e.json[1], e503);
    assert_int_equal(e.rc[2], -1);
    assert_int_equal(e.status[3], 503);
    assert_string_equal(e.json[3], e503);
    assert_int_equal(e.status[4], 200); /* the sessions answer still */
    assert_non_null(strstr(e.json[4], "\"message_count\":1}]}"));
    assert_int_equal(router_sessions_failures(s), 4);
    /* Each failure is logged with SQLite's reason (the read of a session
     * said "not an error": its reason was read after a finalize reset it). */
    router_log_set_tap(NULL, NULL);
    if (strstr(s_log, "not an error") || !strstr(s_log, "session a: no such table: messages"))
        fail_msg("%s", s_log);

    /* Now the sessions' rows too. */
    s_rename(db, "sessions", "sessions_away");
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 5), 0);
    assert_int_equal(router_sessions_open(s, "b", NULL, s_on_open, &e, 6), 0);
    s_wait(&e, 7);
    assert_int_equal(e.status[5], 503);
    assert_string_equal(e.json[5], e503);
    assert_int_equal(e.rc[6], -1);
    assert_int_equal(router_sessions_failures(s), 6);

    s_rename(db, "sessions_away", "sessions");
    s_rename(db, "messages_away", "messages");
    memset(&e.answers, 0, sizeof e - offsetof(env_t, answers));
    assert_int_equal(router_sessions_history(s, "a", 10, s_on_history, &e, 0), 0);
    assert_int_equal(router_sessions_open(s, "b", "bee", s_on_open, &e, 1), 0);
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(e.rc[0], 0);
    assert_non_null(strstr(e.text[0], "user:kept@"));
    assert_null(strstr(e.text[0], "not stored"));
    assert_int_equal(e.rc[1], 0);
    assert_string_equal(e.text[1], "new:0:bee");
    assert_int_equal(e.status[2], 200);
    assert_non_null(strstr(e.json[2], "\"id\":\"a\""));
    assert_non_null(strstr(e.json[2], "\"id\":\"b\""));
    assert_int_equal(router_sessions_failures(s), 6);
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* The contents of session id's messages in seq order, joined by ',', read
 * from state.db by a connection of the test's own. */
static void s_stored(const char *db, const char *id, char *out, size_t cap)
{
    sqlite3 *side = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(side,
                                        "SELECT content FROM messages WHERE session_id=?"
                                        " ORDER BY seq", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    size_t o = 0;
    out[0] = '\0';
    while (sqlite3_step(st) == SQLITE_ROW)
        o += (size_t) snprintf(out + o, cap - o, "%s%s", o ? "," : "",
                               (const char *) sqlite3_column_text(st, 0));
    assert_true(o < cap);
    sqlite3_finalize(st);
    sqlite3_close(side);
}

/* Appends made over a failing disk in several batches, to two sessions,
 * while the retries fail again and again: once the fsyncs succeed, every
 * one is stored exactly once, in queue order; the log says once that
 * state.db refuses writes and once that it takes them again. A delete of
 * a session whose appends waited, answered once they are stored, stays
 * deleted across a restart. */
static void test_held_stored_once_in_order(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256], err[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "s", "user", "s0", 2, "t0"), 0);
    assert_int_equal(router_sessions_get_json(s, "s", 1, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    s_log_len = 0;
    s_log[0] = '\0';
    router_log_set_tap(s_tap, NULL);

    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, -1);
    char want_s[1024] = "s0", want_t[1024] = "";
    size_t ws = 2, wt = 0;
    unsigned n = 0;
    for (unsigned round = 0; round < 5; round++) {
        for (unsigned i = 0; i < 10; i++, n++) {
            char word[16];
            int len = snprintf(word, sizeof word, "m%u", n);
            const char *id = n % 3 ? "s" : "t";
            assert_int_equal(router_sessions_append(s, id, n % 2 ? "assistant" : "user", word,
                                                    (size_t) len, "tt"), 0);
            if (n % 3)
                ws += (size_t) snprintf(want_s + ws, sizeof want_s - ws, ",%s", word);
            else
                wt += (size_t) snprintf(want_t + wt, sizeof want_t - wt, "%s%s", wt ? "," : "",
                                        word);
        }
        s_wait_waiting(s, n); /* a batch of its own, behind the held ones */
        unsigned failed = vfs_fail_failed(VFS_FAIL_SYNC);
        for (int i = 0; i < 60000 && vfs_fail_failed(VFS_FAIL_SYNC) == failed; i++) /* a bound */
            usleep(1000);
        assert_true(vfs_fail_failed(VFS_FAIL_SYNC) > failed); /* a retry failed */
    }
    vfs_fail_clear();
    s_wait_waiting(s, 0);
    router_log_set_tap(NULL, NULL);
    char got[1024];
    s_stored(db, "s", got, sizeof got);
    assert_string_equal(got, want_s);
    s_stored(db, "t", got, sizeof got);
    assert_string_equal(got, want_t);
    char *first = strstr(s_log, "state.db refuses writes");
    assert_non_null(first);
    assert_null(strstr(first + 1, "state.db refuses writes"));
    char *again = strstr(s_log, "takes writes again");
    assert_non_null(again);
    assert_null(strstr(again + 1, "takes writes again"));

    assert_int_equal(router_sessions_delete(s, "t", s_on_json, &e, 1), 0);
    s_wait(&e, 2);
    assert_int_equal(e.status[1], 200);
    router_sessions_destroy(&s);
    s = router_sessions_new(e.loop, db, NULL, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(router_sessions_get_json(s, "t", 10, s_on_json, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(e.status[2], 404);
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* The job queue's bound while appends wait for a failing disk: what is held
 * counts with what is queued, so exactly ROUTER_SESSIONS_JOBS_MAX are taken
 * and the next of each kind is refused at once (EAGAIN: the callers answer
 * 503 unavailable); once the disk recovers every accepted append is stored
 * once, in order. */
static void test_queue_bound_while_held(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, -1);
    unsigned accepted = 0;
    char word[16];
    int n = snprintf(word, sizeof word, "m%u", accepted);
    assert_int_equal(router_sessions_append(s, "q", "user", word, (size_t) n, ""), 0);
    accepted++;
    s_wait_waiting(s, 1);
    for (;;) {
        n = snprintf(word, sizeof word, "m%u", accepted);
        if (router_sessions_append(s, "q", "user", word, (size_t) n, "") != 0)
            break;
        accepted++;
        assert_true(accepted <= ROUTER_SESSIONS_JOBS_MAX);
    }
    assert_int_equal(accepted, ROUTER_SESSIONS_JOBS_MAX);
    assert_int_equal(router_sessions_history(s, "cold", 10, s_on_history, &e, 0), -1);
    assert_int_equal(router_sessions_open(s, "b", "name", s_on_open, &e, 0), -1);
    assert_int_equal(router_sessions_list_json(s, 10, s_on_json, &e, 0), -1);
    s_wait_waiting(s, ROUTER_SESSIONS_JOBS_MAX);
    vfs_fail_clear();
    s_wait_waiting(s, 0);

    sqlite3 *side = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(side, "SELECT content FROM messages ORDER BY seq", -1,
                                        &st, NULL), SQLITE_OK);
    unsigned i = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(word, sizeof word, "m%u", i++);
        assert_string_equal((const char *) sqlite3_column_text(st, 0), word);
    }
    assert_int_equal(i, ROUTER_SESSIONS_JOBS_MAX);
    sqlite3_finalize(st);
    sqlite3_close(side);
    uint64_t bytes = 0;
    for (unsigned k = 0; k < ROUTER_SESSIONS_JOBS_MAX; k++)
        bytes += COST(snprintf(word, sizeof word, "m%u", k));
    s_expect_usage(s, 1, bytes);
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* A stop while appends wait for a disk that does not recover: the stop
 * retries them a few times, gives them up saying how many, and ends;
 * nothing leaks (LSan). */
static void test_stop_while_held(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    s_log_len = 0;
    s_log[0] = '\0';
    router_log_set_tap(s_tap, NULL);
    vfs_fail_arm(VFS_FAIL_WRITE, dir, 0, -1);
    assert_int_equal(router_sessions_append(s, "a", "user", "one", 3, ""), 0);
    assert_int_equal(router_sessions_open(s, "b", "bee", s_on_open, &e, 0), 0);
    s_wait(&e, 1);
    s_wait_waiting(s, 2);
    router_sessions_destroy(&s);
    router_log_set_tap(NULL, NULL);
    vfs_fail_clear();
    if (!strstr(s_log, "stopping with 2 messages and sessions not stored"))
        fail_msg("%s", s_log);
    s_finish(dir, &e);
}

/* Another writer holds state.db's write lock past the busy timeout (5 s):
 * BEGIN IMMEDIATE fails SQLITE_BUSY, and the appends wait, held, instead
 * of running outside a transaction where each failed the same way and was
 * dropped; once the lock is free they are stored, in order. */
static void test_writer_lock_held(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "w", "user", "before", 6, ""), 0);
    assert_int_equal(router_sessions_get_json(s, "w", 1, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    sqlite3 *side = NULL;
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    sqlite3_busy_timeout(side, 10000); /* the store may still be committing */
    assert_int_equal(sqlite3_exec(side, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(router_sessions_append(s, "w", "assistant", "during", 6, ""), 0);
    assert_int_equal(router_sessions_append(s, "w", "user", "during too", 10, ""), 0);
    s_wait_waiting(s, 2);
    assert_true(router_sessions_failures(s) >= 1);
    assert_int_equal(sqlite3_exec(side, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(side);
    s_wait_waiting(s, 0);
    char got[256];
    s_stored(db, "w", got, sizeof got);
    assert_string_equal(got, "before,during,during too");
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

/* Writes held behind another writer's lock, whose retry then fails for
 * the writes themselves (the other writer renamed their table away): they
 * are given up, not retried for ever (nothing is left waiting), the cache
 * forgets their session so no read serves what state.db lacks, and the
 * store goes on storing once the table is back. */
static void test_held_writes_that_fail_for_themselves(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "w", "user", "before", 6, ""), 0);
    assert_int_equal(router_sessions_history(s, "w", 10, s_on_history, &e, 0), 0);
    s_wait(&e, 1); /* the cache holds "w" */
    sqlite3 *side = NULL;
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    sqlite3_busy_timeout(side, 10000); /* the store may still be committing */
    assert_int_equal(sqlite3_exec(side, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(router_sessions_append(s, "w", "assistant", "during", 6, ""), 0);
    assert_int_equal(router_sessions_append(s, "w", "user", "during too", 10, ""), 0);
    s_wait_waiting(s, 2);
    assert_int_equal(sqlite3_exec(side, "ALTER TABLE messages RENAME TO gone; COMMIT", NULL,
                                  NULL, NULL), SQLITE_OK);
    sqlite3_close(side);
    s_wait_waiting(s, 0);
    s_rename(db, "gone", "messages");
    /* The failed appends reach the loop before this answer (in order). */
    assert_int_equal(router_sessions_get_json(s, "w", 10, s_on_json, &e, 1), 0);
    s_wait(&e, 2);
    assert_int_equal(e.status[1], 200);
    assert_null(strstr(e.json[1], "during"));
    assert_int_equal(router_sessions_history(s, "w", 10, s_on_history, &e, 2), 0);
    s_wait(&e, 3);
    assert_int_equal(e.rc[2], 0);
    assert_null(strstr(e.text[2], "during"));
    assert_non_null(strstr(e.text[2], "user:before@"));
    assert_int_equal(router_sessions_append(s, "w", "assistant", "after", 5, ""), 0);
    router_sessions_destroy(&s);
    char got[256];
    s_stored(db, "w", got, sizeof got);
    assert_string_equal(got, "before,after");
    s_finish(dir, &e);
}

/* An append whose statement makes SQLite roll the whole transaction back
 * (a RAISE(ROLLBACK) here; SQLite does the same on some failures of its
 * own) takes the appends before it in the transaction along: they are
 * held and stored again, not counted as written by a later COMMIT that a
 * following append, run outside any transaction, made look landed. The
 * side connection's write lock makes the three one batch: the store's
 * thread waits in BEGIN IMMEDIATE until all are queued. */
static void test_append_that_rolls_back_the_transaction(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX", db[256];
    env_t e = {0};
    router_sessions_t *s = s_start(dir, db, sizeof db, &e);
    assert_int_equal(router_sessions_append(s, "r", "user", "first", 5, "t1"), 0);
    assert_int_equal(router_sessions_get_json(s, "r", 10, s_on_json, &e, 0), 0);
    s_wait(&e, 1);
    sqlite3 *side = NULL;
    assert_int_equal(sqlite3_open(db, &side), SQLITE_OK);
    sqlite3_busy_timeout(side, 10000); /* the store may still be committing */
    assert_int_equal(sqlite3_exec(side,
                                  "CREATE TRIGGER undo BEFORE INSERT ON messages"
                                  " WHEN NEW.content = 'undo'"
                                  " BEGIN SELECT RAISE(ROLLBACK, 'rolled back by the test'); END;"
                                  " BEGIN IMMEDIATE",
                                  NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(router_sessions_append(s, "r", "assistant", "second", 6, "t1"), 0);
    assert_int_equal(router_sessions_append(s, "r", "user", "undo", 4, "t2"), 0);
    assert_int_equal(router_sessions_append(s, "r", "assistant", "third", 5, "t2"), 0);
    assert_int_equal(sqlite3_exec(side, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(side);
    char got[256] = "";
    for (int i = 0; i < 60000 && strcmp(got, "first,second,third") != 0; i++) { /* a bound */
        usleep(1000);
        s_stored(db, "r", got, sizeof got);
    }
    assert_string_equal(got, "first,second,third");
    s_wait_waiting(s, 0);
    assert_int_equal(router_sessions_get_json(s, "r", 10, s_on_json, &e, 1), 0);
    s_wait(&e, 2);
    assert_int_equal(e.status[1], 200);
    assert_non_null(strstr(e.json[1], "\"message_count\":3"));
    router_sessions_destroy(&s);
    s_finish(dir, &e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_history_cache_and_restart),
        cmocka_unit_test(test_refused_append_takes_back_only_itself),
        cmocka_unit_test(test_without_memory),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_disk_full),
        cmocka_unit_test(test_open_on_full_disk),
        cmocka_unit_test(test_sessions_max_while_held),
        cmocka_unit_test(test_history_while_held),
        cmocka_unit_test(test_bounds_keep_the_newest),
        cmocka_unit_test(test_bounds_octets_over_all),
        cmocka_unit_test(test_bounds_after_a_failed_commit),
        cmocka_unit_test(test_bounds_upgrade_old_state_db),
        cmocka_unit_test(test_bounds_prune_refused),
        cmocka_unit_test(test_bounds_upgrade_on_full_disk),
        cmocka_unit_test(test_queue_at_its_bound),
        cmocka_unit_test(test_commit_fsync_fails),
        cmocka_unit_test(test_store_fails_queries),
        cmocka_unit_test(test_held_stored_once_in_order),
        cmocka_unit_test(test_queue_bound_while_held),
        cmocka_unit_test(test_stop_while_held),
        cmocka_unit_test(test_writer_lock_held),
        cmocka_unit_test(test_held_writes_that_fail_for_themselves),
        cmocka_unit_test(test_append_that_rolls_back_the_transaction),
    };
    if (alloc_fail_sqlite_install() != 0 || vfs_fail_install() != 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
