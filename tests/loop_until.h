/* tests/loop_until.h — runs a router loop on the test's thread until a
 * condition holds, checked every few milliseconds; past max_ms the test
 * fails. max_ms is there so a hang fails instead of hanging CI, never to
 * time anything. For the tests that drive a loop and a broker by hand
 * (broker_test, turns_test, agent_pool_test, audit_worker_test,
 * route_audit_test); include after <cmocka.h>. */
#ifndef KITH_TESTS_LOOP_UNTIL_H
#define KITH_TESTS_LOOP_UNTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "router/net/loop.h"

typedef struct {
    bool (*until)(void *ud);
    void *ud;
    uint32_t every_ms;
    uint64_t deadline;
    bool timed_out;
} test_loop_until_t;

static void test_loop_until_check(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    test_loop_until_t *w = ud;
    if (w->until(w->ud)) {
        router_loop_stop(loop);
        return;
    }
    if (router_loop_now_ms(loop) > w->deadline) {
        w->timed_out = true;
        router_loop_stop(loop);
        return;
    }
    if (!router_loop_timer_add(loop, w->every_ms, test_loop_until_check, w))
        fail_msg("no timer for the loop's next check");
}

/* Runs `loop` until until(ud) holds (checked at once, then every every_ms)
 * or max_ms pass: true when it held. */
static inline bool test_loop_wait(router_loop_t *loop, bool (*until)(void *), void *ud,
                                  uint32_t every_ms, uint32_t max_ms)
{
    test_loop_until_t w = {.until = until, .ud = ud, .every_ms = every_ms,
                           .deadline = router_loop_now_ms(loop) + max_ms};
    if (!router_loop_timer_add(loop, 0, test_loop_until_check, &w))
        fail_msg("no timer for the loop's first check");
    assert_int_equal(router_loop_run(loop), 0);
    return !w.timed_out;
}

/* test_loop_wait, failing the test when max_ms pass first. */
static inline void test_loop_until(router_loop_t *loop, bool (*until)(void *), void *ud,
                                   uint32_t every_ms, uint32_t max_ms)
{
    assert_true(test_loop_wait(loop, until, ud, every_ms, max_ms));
}

#endif
