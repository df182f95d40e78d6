/* tests/audit_limit_test.c — the rate limit on the audit records outsiders
 * can cause (router/workers/audit_limit.c, WIRE §21.7): only the limited
 * types are limited; one source gets its burst then one a second; all
 * sources of a type together get theirs; what was held back comes out
 * counted, per (type, source), with the first and last times, once; a
 * pair let go for a newer one hands its counts to "*"; no memory for a new
 * pair counts the event against "*". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "router/workers/audit_limit.h"

#define S_SEEN_MAX 8

typedef struct {
    int n;
    char type[S_SEEN_MAX][80], source[S_SEEN_MAX][80];
    uint64_t count[S_SEEN_MAX], first[S_SEEN_MAX], last[S_SEEN_MAX];
} seen_t;

static void s_seen(const char *type, const char *source, uint64_t count, uint64_t first_ms,
                   uint64_t last_ms, void *ud)
{
    seen_t *s = ud;
    assert_true(s->n < S_SEEN_MAX);
    snprintf(s->type[s->n], sizeof s->type[0], "%s", type);
    snprintf(s->source[s->n], sizeof s->source[0], "%s", source);
    s->count[s->n] = count;
    s->first[s->n] = first_ms;
    s->last[s->n] = last_ms;
    s->n++;
}

static void test_which_types(void **state)
{
    (void) state;
    assert_true(router_audit_limit_applies("auth_failure"));
    assert_true(router_audit_limit_applies("pair_failed"));
    assert_true(router_audit_limit_applies("envelope_rejected"));
    assert_true(router_audit_limit_applies("admin"));
    assert_false(router_audit_limit_applies("pair"));
    assert_false(router_audit_limit_applies("tool_call"));
    assert_false(router_audit_limit_applies("trust_changed"));
    router_audit_limit_t *l = router_audit_limit_new();
    for (int i = 0; i < 1000; i++)
        assert_true(router_audit_limit_take(l, "pair", "10.0.0.1", 5));
    assert_int_equal(router_audit_limit_pending(l), 0);
    router_audit_limit_destroy(&l);
    router_audit_limit_destroy(&l);
}

static void test_one_source(void **state)
{
    (void) state;
    router_audit_limit_t *l = router_audit_limit_new();
    uint64_t t = 1000000;
    for (unsigned i = 0; i < ROUTER_AUDIT_LIMIT_SOURCE_BURST; i++)
        assert_true(router_audit_limit_take(l, "auth_failure", "10.0.0.1", t));
    assert_false(router_audit_limit_take(l, "auth_failure", "10.0.0.1", t));
    assert_false(router_audit_limit_take(l, "auth_failure", "10.0.0.1", t + 500));
    /* Its other types, and other sources, have their own buckets. */
    assert_true(router_audit_limit_take(l, "pair_failed", "10.0.0.1", t + 500));
    assert_true(router_audit_limit_take(l, "auth_failure", "10.0.0.2", t + 500));
    /* A second on, one more. */
    assert_true(router_audit_limit_take(l, "auth_failure", "10.0.0.1", t + 1000));
    assert_false(router_audit_limit_take(l, "auth_failure", "10.0.0.1", t + 1001));
    assert_int_equal(router_audit_limit_pending(l), 3);
    seen_t s = {0};
    router_audit_limit_flush(l, s_seen, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.type[0], "auth_failure");
    assert_string_equal(s.source[0], "10.0.0.1");
    assert_int_equal(s.count[0], 3);
    assert_int_equal(s.first[0], t);
    assert_int_equal(s.last[0], t + 1001);
    /* Said once. */
    assert_int_equal(router_audit_limit_pending(l), 0);
    memset(&s, 0, sizeof s);
    router_audit_limit_flush(l, s_seen, &s);
    assert_int_equal(s.n, 0);
    /* No source is a source of its own ("unknown"). */
    for (unsigned i = 0; i < ROUTER_AUDIT_LIMIT_SOURCE_BURST; i++)
        assert_true(router_audit_limit_take(l, "admin", NULL, t));
    assert_false(router_audit_limit_take(l, "admin", "", t));
    router_audit_limit_flush(l, s_seen, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.source[0], "unknown");
    router_audit_limit_destroy(&l);
}

static void test_all_sources(void **state)
{
    (void) state;
    router_audit_limit_t *l = router_audit_limit_new();
    uint64_t t = 5000000;
    char src[32];
    for (unsigned i = 0; i < ROUTER_AUDIT_LIMIT_TYPE_BURST; i++) {
        snprintf(src, sizeof src, "10.1.%u.%u", i / 256, i % 256);
        assert_true(router_audit_limit_take(l, "envelope_rejected", src, t));
    }
    assert_false(router_audit_limit_take(l, "envelope_rejected", "10.2.0.1", t));
    /* 50 a second for all of them: 20 ms buys one. */
    assert_false(router_audit_limit_take(l, "envelope_rejected", "10.2.0.2", t + 19));
    assert_true(router_audit_limit_take(l, "envelope_rejected", "10.2.0.3", t + 20));
    /* Another type is not touched. */
    assert_true(router_audit_limit_take(l, "auth_failure", "10.2.0.1", t + 20));
    seen_t s = {0};
    router_audit_limit_flush(l, s_seen, &s);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.count[0] + s.count[1], 2);
    router_audit_limit_destroy(&l);
}

static void test_pairs_let_go(void **state)
{
    (void) state;
    router_audit_limit_t *l = router_audit_limit_new();
    uint64_t t = 9000000;
    /* A source held back, then more pairs than are kept: it is let go and
     * its count is the type's "*". */
    for (unsigned i = 0; i <= ROUTER_AUDIT_LIMIT_SOURCE_BURST; i++)
        (void) router_audit_limit_take(l, "pair_failed", "first", t);
    char src[32];
    for (unsigned i = 0; i < ROUTER_AUDIT_LIMIT_SOURCES_MAX; i++) {
        snprintf(src, sizeof src, "s%u", i);
        (void) router_audit_limit_take(l, "pair_failed", src, t + 1000000 + i * 100);
    }
    seen_t s = {0};
    router_audit_limit_flush(l, s_seen, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.source[0], "*");
    assert_int_equal(s.count[0], 1);
    assert_int_equal(s.first[0], t);
    /* No memory for a new pair: counted against "*" too. */
    alloc_fail_arm(0);
    assert_false(router_audit_limit_take(l, "pair_failed", "brand-new", t + 9000000));
    alloc_fail_disarm();
    memset(&s, 0, sizeof s);
    router_audit_limit_flush(l, s_seen, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.source[0], "*");
    /* A source longer than kept is cut, and still one source. */
    char longsrc[200];
    memset(longsrc, 'x', sizeof longsrc - 1);
    longsrc[sizeof longsrc - 1] = '\0';
    for (unsigned i = 0; i < ROUTER_AUDIT_LIMIT_SOURCE_BURST; i++)
        assert_true(router_audit_limit_take(l, "admin", longsrc, t + 9000000));
    assert_false(router_audit_limit_take(l, "admin", longsrc, t + 9000000));
    router_audit_limit_destroy(&l);
    alloc_fail_arm(0);
    assert_null(router_audit_limit_new());
    alloc_fail_disarm();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_which_types),
        cmocka_unit_test(test_one_source),
        cmocka_unit_test(test_all_sources),
        cmocka_unit_test(test_pairs_let_go),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
