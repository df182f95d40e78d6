/* tests/sessions_test.c — the sessions store: history reads answer in queue
 * order whether the loop's cache or the database answers them, and the
 * database alone answers them the same after a restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "router/net/loop.h"
#include "router/workers/history_cache.h"
#include "router/workers/sessions.h"

typedef struct {
    router_loop_t *loop;
    int answers;          /* history callbacks so far */
    char text[8][512];    /* each answer as "role:content@time,…" */
    int rc[8];
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

static void test_history_cache_and_restart(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-sessions-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char db[256];
    snprintf(db, sizeof db, "%s/state.db", dir);
    env_t e = {0};
    e.loop = router_loop_new(NULL);
    assert_non_null(e.loop);
    char err[256];
    router_sessions_t *s = router_sessions_new(e.loop, db, err, sizeof err);
    assert_non_null(s);

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
    s = router_sessions_new(e.loop, db, err, sizeof err);
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
    router_loop_destroy(&e.loop);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_history_cache_and_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
