/* tests/alloc_fail_loop.h — tests/alloc_fail.h for a loop another thread
 * runs: arming is per thread, so the arming is posted to the loop's thread
 * and waited for. For tests whose server runs on a loop thread of its own
 * (gateway_test, route_webhook_test). Include after <cmocka.h>. */
#ifndef KITH_TESTS_ALLOC_FAIL_LOOP_H
#define KITH_TESTS_ALLOC_FAIL_LOOP_H

#include <errno.h>
#include <semaphore.h>

#include "alloc_fail.h"
#include "router/net/loop.h"

typedef struct {
    long skip;        /* >= 0: arm; < 0: disarm */
    unsigned failed;  /* disarm: failures injected since armed */
    sem_t done;
} alloc_fail_loop_arm_t;

static void alloc_fail_loop_on(router_loop_t *loop, void *arg)
{
    (void) loop;
    alloc_fail_loop_arm_t *a = arg;
    if (a->skip >= 0)
        alloc_fail_arm(a->skip);
    else
        a->failed = alloc_fail_disarm();
    sem_post(&a->done);
}

/* On loop's thread: arms allocation failures after `skip` successes
 * (skip >= 0), or disarms them (skip < 0) and returns how many failed.
 * Returns once the loop's thread has done it. */
static inline unsigned alloc_fail_on_loop(router_loop_t *loop, long skip)
{
    alloc_fail_loop_arm_t a = {.skip = skip};
    assert_int_equal(sem_init(&a.done, 0, 0), 0);
    assert_int_equal(router_loop_post(loop, alloc_fail_loop_on, &a), 0);
    while (sem_wait(&a.done) != 0)
        assert_int_equal(errno, EINTR);
    sem_destroy(&a.done);
    return a.failed;
}

#endif
