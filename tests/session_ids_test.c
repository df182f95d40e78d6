/* tests/session_ids_test.c — the set of session ids state.db keeps
 * (router/workers/session_ids.c): membership stays exact through growth,
 * removals in any order (the backward shift of linear probing) and a
 * clear; a table that cannot grow refuses the new id and keeps the rest;
 * a set that cannot be made is NULL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "router/workers/session_ids.h"

#define S_N 20000

static void s_id(char *out, size_t cap, const char *prefix, int i)
{
    snprintf(out, cap, "%s-%d", prefix, i);
}

static void test_membership_through_growth_and_removal(void **state)
{
    (void) state;
    router_session_ids_t *set = router_session_ids_new();
    assert_non_null(set);
    char id[32];
    for (int i = 0; i < S_N; i++) {
        s_id(id, sizeof id, "kept", i);
        assert_int_equal(router_session_ids_add(set, id), 0);
    }
    s_id(id, sizeof id, "kept", 7);
    assert_int_equal(router_session_ids_add(set, id), 0); /* there already */
    assert_int_equal(router_session_ids_count(set), S_N);
    for (int i = 0; i < S_N; i++) {
        s_id(id, sizeof id, "kept", i);
        assert_true(router_session_ids_has(set, id));
        s_id(id, sizeof id, "never", i);
        assert_false(router_session_ids_has(set, id));
    }
    /* Every third out, in a scattered order: the runs left behind must
     * still find every member. */
    for (int k = 0; k < 3; k++)
        for (int i = k; i < S_N; i += 9) {
            s_id(id, sizeof id, "kept", i);
            router_session_ids_remove(set, id);
        }
    s_id(id, sizeof id, "never", 1);
    router_session_ids_remove(set, id); /* absent: nothing */
    size_t left = 0;
    for (int i = 0; i < S_N; i++) {
        s_id(id, sizeof id, "kept", i);
        bool gone = i % 9 < 3;
        assert_true(router_session_ids_has(set, id) == !gone);
        left += !gone;
    }
    assert_int_equal(router_session_ids_count(set), left);
    /* Back in, then all out. */
    for (int i = 0; i < S_N; i += 9) {
        s_id(id, sizeof id, "kept", i);
        assert_int_equal(router_session_ids_add(set, id), 0);
        assert_true(router_session_ids_has(set, id));
    }
    router_session_ids_clear(set);
    assert_int_equal(router_session_ids_count(set), 0);
    s_id(id, sizeof id, "kept", 0);
    assert_false(router_session_ids_has(set, id));
    router_session_ids_destroy(&set);
    router_session_ids_destroy(&set);
    assert_null(set);
}

static void test_out_of_memory(void **state)
{
    (void) state;
    alloc_fail_arm(0);
    assert_null(router_session_ids_new());
    alloc_fail_disarm();
    alloc_fail_arm(1);
    assert_null(router_session_ids_new());
    alloc_fail_disarm();

    router_session_ids_t *set = router_session_ids_new();
    assert_non_null(set);
    char id[32];
    int i = 0;
    /* Fill to the first growth, which fails: that id is refused, the rest
     * stay, and the next add grows. */
    alloc_fail_arm(0);
    for (;; i++) {
        s_id(id, sizeof id, "kept", i);
        if (router_session_ids_add(set, id) != 0)
            break;
        assert_true(i < S_N);
    }
    assert_true(alloc_fail_disarm() > 0);
    assert_false(router_session_ids_has(set, id));
    assert_int_equal(router_session_ids_count(set), (size_t) i);
    for (int k = 0; k < i; k++) {
        s_id(id, sizeof id, "kept", k);
        assert_true(router_session_ids_has(set, id));
    }
    s_id(id, sizeof id, "kept", i);
    assert_int_equal(router_session_ids_add(set, id), 0);
    assert_true(router_session_ids_has(set, id));
    router_session_ids_destroy(&set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_membership_through_growth_and_removal),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
