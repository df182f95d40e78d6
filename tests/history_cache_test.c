/* tests/history_cache_test.c — the loop's history cache: it answers what a
 * database read queued at the same point would, within its bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "router/workers/history_cache.h"

static router_sessions_msg_t s_m(const char *role, const char *content, uint64_t t)
{
    return (router_sessions_msg_t){role, content, strlen(content), t, "turn"};
}

/* The view's contents as "a,b,c". */
static void s_text(const router_history_view_t *v, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < v->n && o < cap; i++)
        o += (size_t) snprintf(out + o, cap - o, "%s%.*s", i ? "," : "", (int) v->msgs[i].len,
                               v->msgs[i].content);
}

static void s_expect(router_history_cache_t *c, const char *id, unsigned limit, const char *want)
{
    router_history_view_t *v = NULL;
    assert_int_equal(router_history_cache_get(c, id, limit, &v), 1);
    char got[512];
    s_text(v, got, sizeof got);
    assert_string_equal(got, want);
    router_history_view_free(&v);
    assert_null(v);
}

static void s_expect_miss(router_history_cache_t *c, const char *id, unsigned limit)
{
    router_history_view_t *v = NULL;
    assert_int_equal(router_history_cache_get(c, id, limit, &v), 0);
    assert_null(v);
}

static void test_load_then_appends(void **state)
{
    (void) state;
    router_history_cache_t *c = router_history_cache_new(0, 0);
    assert_non_null(c);
    s_expect_miss(c, "s", 10);
    router_sessions_msg_t a = s_m("user", "a", 1);
    router_history_cache_append(c, "s", &a); /* not held: nothing */
    s_expect_miss(c, "s", 10);
    uint64_t t = router_history_cache_loading(c, "s", 10);
    assert_true(t != 0);
    assert_int_equal(router_history_cache_loading(c, "s", 10), 0); /* one load at a time */
    s_expect_miss(c, "s", 10);                                     /* loading */
    /* Appended after the read was queued: kept after what it returns. */
    router_sessions_msg_t b = s_m("assistant", "b", 2), x = s_m("user", "x", 3);
    router_history_cache_append(c, "s", &x);
    router_history_cache_loaded(c, "s", t, 0, (router_sessions_msg_t[]){a, b}, 2);
    s_expect(c, "s", 10, "a,b,x");
    s_expect(c, "s", 2, "b,x");
    router_sessions_msg_t y = s_m("assistant", "y", 4);
    router_history_cache_append(c, "s", &y);
    s_expect(c, "s", 10, "a,b,x,y");
    router_history_view_t *v = NULL;
    assert_int_equal(router_history_cache_get(c, "s", 1, &v), 1);
    assert_string_equal(v->msgs[0].role, "assistant");
    assert_string_equal(v->msgs[0].turn_id, "turn");
    assert_int_equal(v->msgs[0].time_ms, 4);
    router_history_cache_destroy(&c);
    assert_null(c);
    assert_string_equal(v->msgs[0].content, "y"); /* a view outlives the cache */
    router_history_view_free(&v);
}

static void test_cap_and_completeness(void **state)
{
    (void) state;
    router_history_cache_t *c = router_history_cache_new(0, 0);
    router_sessions_msg_t m[5] = {s_m("user", "1", 1), s_m("user", "2", 2), s_m("user", "3", 3),
                                  s_m("user", "4", 4), s_m("user", "5", 5)};
    /* The read returned as many as asked: older ones may exist. */
    uint64_t t = router_history_cache_loading(c, "s", 3);
    router_history_cache_loaded(c, "s", t, 0, m, 3);
    s_expect(c, "s", 3, "1,2,3");
    s_expect(c, "s", 2, "2,3");
    s_expect_miss(c, "s", 4);
    router_history_cache_append(c, "s", &m[3]);
    s_expect(c, "s", 3, "2,3,4"); /* the oldest let go at the cap */
    /* A read for more loads it again. */
    t = router_history_cache_loading(c, "s", 10);
    assert_true(t != 0);
    s_expect_miss(c, "s", 3);
    router_history_cache_loaded(c, "s", t, 0, m, 4);
    s_expect(c, "s", 10, "1,2,3,4"); /* fewer than asked: the whole session */
    s_expect(c, "s", 100, "1,2,3,4");
    router_history_cache_destroy(&c);
}

static void test_overflow_while_loading(void **state)
{
    (void) state;
    router_history_cache_t *c = router_history_cache_new(0, 0);
    router_sessions_msg_t m[4] = {s_m("user", "1", 1), s_m("user", "2", 2), s_m("user", "3", 3),
                                  s_m("user", "4", 4)};
    uint64_t t = router_history_cache_loading(c, "s", 2);
    router_history_cache_append(c, "s", &m[2]);
    router_history_cache_append(c, "s", &m[3]);
    router_history_cache_loaded(c, "s", t, 0, m, 1);
    s_expect(c, "s", 2, "3,4");
    s_expect_miss(c, "s", 3); /* not the whole session */
    router_history_cache_destroy(&c);
}

/* More appended while a read of an empty session is out than its limit:
 * the oldest go, and the entry is not the whole session (a read for more
 * must go to the database, which keeps them all). */
static void test_more_than_the_limit_while_loading(void **state)
{
    (void) state;
    router_history_cache_t *c = router_history_cache_new(0, 0);
    router_sessions_msg_t m[3] = {s_m("user", "1", 1), s_m("user", "2", 2), s_m("user", "3", 3)};
    uint64_t t = router_history_cache_loading(c, "s", 2);
    for (int i = 0; i < 3; i++)
        router_history_cache_append(c, "s", &m[i]);
    router_history_cache_loaded(c, "s", t, 0, NULL, 0);
    s_expect(c, "s", 2, "2,3");
    s_expect_miss(c, "s", 3);
    router_history_cache_destroy(&c);
}

static void test_stale_and_failed_reads(void **state)
{
    (void) state;
    router_history_cache_t *c = router_history_cache_new(0, 0);
    router_sessions_msg_t a = s_m("user", "a", 1);
    uint64_t t = router_history_cache_loading(c, "s", 5);
    router_history_cache_loaded(c, "s", t + 1, 0, &a, 1); /* not its ticket */
    s_expect_miss(c, "s", 5);
    router_history_cache_loaded(c, "s", t, -1, NULL, 0); /* failed: forgotten */
    s_expect_miss(c, "s", 5);
    router_history_cache_loaded(c, "s", t, 0, &a, 1); /* too late */
    s_expect_miss(c, "s", 5);
    t = router_history_cache_loading(c, "s", 5);
    router_history_cache_loaded(c, "s", t, 0, &a, 1);
    s_expect(c, "s", 5, "a");
    router_history_cache_forget(c, "s");
    s_expect_miss(c, "s", 5);
    assert_int_equal(router_history_cache_loading(c, "s", 0), 0);
    router_history_cache_destroy(&c);
}

static void test_bounds(void **state)
{
    (void) state;
    router_history_cache_t *c = router_history_cache_new(2, 0);
    router_sessions_msg_t a = s_m("user", "a", 1);
    const char *ids[3] = {"s1", "s2", "s3"};
    for (int i = 0; i < 3; i++) {
        uint64_t t = router_history_cache_loading(c, ids[i], 5);
        router_history_cache_loaded(c, ids[i], t, 0, &a, 1);
        if (i == 1)
            s_expect(c, "s1", 5, "a"); /* s1 is now the most recently used */
    }
    router_history_cache_stats_t st;
    router_history_cache_stats(c, &st);
    assert_int_equal(st.sessions, 2);
    assert_int_equal(st.evicted, 1);
    s_expect(c, "s1", 5, "a");
    s_expect_miss(c, "s2", 5);
    s_expect(c, "s3", 5, "a");
    router_history_cache_destroy(&c);

    /* Bytes: a session growing past the bound goes; the total never exceeds it. */
    enum { BYTES = 4096 };
    c = router_history_cache_new(0, BYTES);
    uint64_t t = router_history_cache_loading(c, "big", 1000);
    router_history_cache_loaded(c, "big", t, 0, NULL, 0);
    char body[300];
    memset(body, 'x', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    router_sessions_msg_t m = s_m("user", body, 1);
    bool gone = false;
    for (int i = 0; i < 100; i++) {
        router_history_cache_append(c, "big", &m);
        router_history_cache_stats(c, &st);
        assert_true(st.bytes <= BYTES);
        router_history_view_t *v = NULL;
        if (router_history_cache_get(c, "big", 1000, &v) != 1)
            gone = true;
        router_history_view_free(&v);
    }
    assert_true(gone);
    router_history_cache_stats(c, &st);
    assert_int_equal(st.sessions, 0);
    assert_int_equal(st.bytes, 0);
    router_history_cache_destroy(&c);
}

/* The store's per-session bounds, applied as the store applies them: after
 * an append (at once, or once the read in flight is in), never to what a
 * read alone brought (the store cuts a session only when it appends), and
 * never below one message. A cut makes what is held the whole session. */
static void test_store_bounds(void **state)
{
    (void) state;
    router_history_cache_t *c = router_history_cache_new(0, 0);
    assert_non_null(c);
    router_history_cache_bound(c, 3, 2 * (10 + 10), 10); /* 3 messages, 2 of 10 octets */
    router_sessions_msg_t m[4] = {s_m("user", "a", 1), s_m("user", "b", 2),
                                  s_m("user", "c", 3), s_m("user", "d", 4)};
    uint64_t t = router_history_cache_loading(c, "s", 10);
    router_history_cache_loaded(c, "s", t, 0, m, 4); /* over the bound: as read */
    s_expect(c, "s", 10, "a,b,c,d");
    router_sessions_msg_t e = s_m("user", "e", 5);
    router_history_cache_append(c, "s", &e);
    s_expect(c, "s", 10, "c,d,e");
    /* Octets: 2 messages of 10 fit, a third does not. */
    router_sessions_msg_t big = s_m("user", "0123456789", 6);
    router_history_cache_append(c, "s", &big);
    s_expect(c, "s", 10, "e,0123456789");
    router_history_cache_append(c, "s", &big);
    s_expect(c, "s", 10, "0123456789,0123456789");
    /* One message past the bound alone is kept. */
    char huge[300];
    memset(huge, 'h', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    router_sessions_msg_t h = s_m("user", huge, 7);
    router_history_cache_append(c, "s", &h);
    s_expect(c, "s", 1, huge);
    s_expect(c, "s", 10, huge); /* the whole session */

    /* Appended while a read is out: the bound applies once it is in. */
    t = router_history_cache_loading(c, "r", 10);
    router_history_cache_append(c, "r", &e);
    router_history_cache_append(c, "r", &e);
    router_history_cache_loaded(c, "r", t, 0, m, 2);
    s_expect(c, "r", 10, "b,e,e");
    /* A window of the newest (cap 3) cut by the bound is the whole session. */
    t = router_history_cache_loading(c, "w", 3);
    router_history_cache_loaded(c, "w", t, 0, m + 1, 3);
    s_expect_miss(c, "w", 5); /* more than it holds, and not the whole session */
    router_history_cache_append(c, "w", &big);
    s_expect(c, "w", 5, "d,0123456789");
    router_history_cache_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_then_appends),
        cmocka_unit_test(test_cap_and_completeness),
        cmocka_unit_test(test_overflow_while_loading),
        cmocka_unit_test(test_more_than_the_limit_while_loading),
        cmocka_unit_test(test_stale_and_failed_reads),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_store_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
