/* tests/loop_timer_fill.h — takes a running loop's timer slots from the
 * test's thread, all but a few, to drive the paths where a route finds no
 * timer left (route_tokens_test, route_webhook_test): the fill runs on the
 * loop's own thread (router_loop_post) and the test waits for it. A filler
 * timer that fires fails the test. Include after <cmocka.h>. */
#ifndef KITH_TESTS_LOOP_TIMER_FILL_H
#define KITH_TESTS_LOOP_TIMER_FILL_H

#include <errno.h>
#include <semaphore.h>
#include <stdint.h>

#include "router/net/loop.h"

typedef struct {
    long spare;       /* >= 0: take all timer slots but this many; < 0: give them back */
    uint64_t ids[256];
    unsigned n;
    sem_t done;
} test_timer_fill_t;

static void test_timer_fill_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id, (void) ud;
    fail_msg("a filler timer fired");
}

static void test_timer_fill_on(router_loop_t *loop, void *arg)
{
    test_timer_fill_t *f = arg;
    if (f->spare >= 0) {
        while (f->n < 256 &&
               (f->ids[f->n] = router_loop_timer_add(loop, 3600000, test_timer_fill_never, NULL)))
            f->n++;
        for (long i = 0; i < f->spare && f->n > 0; i++)
            (void) router_loop_timer_cancel(loop, f->ids[--f->n]);
    } else {
        while (f->n > 0)
            (void) router_loop_timer_cancel(loop, f->ids[--f->n]);
    }
    sem_post(&f->done);
}

/* Takes every timer slot of `loop` but `spare` (spare < 0: gives back
 * what f holds), on the loop's thread, and waits for it. */
static void test_timer_fill(router_loop_t *loop, test_timer_fill_t *f, long spare)
{
    f->spare = spare;
    assert_int_equal(sem_init(&f->done, 0, 0), 0);
    assert_int_equal(router_loop_post(loop, test_timer_fill_on, f), 0);
    while (sem_wait(&f->done) != 0)
        assert_int_equal(errno, EINTR);
    sem_destroy(&f->done);
}

#endif
