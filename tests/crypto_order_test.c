/* tests/crypto_order_test.c — a connection's jobs come out in arrival order
 * whatever order the crypto threads finish them in, and abandoning a
 * connection frees each job exactly once (the done ones now, the others
 * when they come back): the code side of spec/crypto.pml. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "router/comms/crypto_order.h"

static int s_owner; /* any address will do */

static router_crypto_job_t *s_job(uint8_t tag)
{
    router_crypto_job_t *job = router_crypto_job_new(&tag, 1);
    assert_non_null(job);
    return job;
}

/* Jobs finish 3,1,4,0,2: nothing comes out until 0 is done, then 0 and 1,
 * then nothing until 2 is done, then 2,3,4. */
static void test_out_of_order_completion(void **state)
{
    (void) state;
    router_crypto_order_t o;
    router_crypto_order_init(&o);
    router_crypto_job_t *jobs[5];
    for (uint8_t i = 0; i < 5; i++) {
        jobs[i] = s_job(i);
        assert_int_equal(router_crypto_order_push(&o, jobs[i], &s_owner), 0);
        assert_ptr_equal(jobs[i]->owner, &s_owner);
    }
    assert_int_equal(o.bytes, 5);
    static const int finish[] = {3, 1, 4, 0, 2};
    uint8_t next = 0;
    for (size_t k = 0; k < 5; k++) {
        jobs[finish[k]]->done = true;
        router_crypto_job_t *job;
        while ((job = router_crypto_order_pop(&o)) != NULL) {
            assert_int_equal(job->payload[0], next); /* arrival order */
            assert_null(job->owner);
            next++;
            router_crypto_job_free(&job);
        }
        /* after 3 and 1: nothing; after 4: nothing; after 0: 0,1; after 2: 2,3,4 */
        static const uint8_t expect[] = {0, 0, 0, 2, 5};
        assert_int_equal(next, expect[k]);
    }
    assert_int_equal(router_crypto_order_count(&o), 0);
    assert_int_equal(o.bytes, 0);
    assert_null(router_crypto_order_ready(&o));
    router_crypto_order_abandon(&o, NULL, NULL);
}

static unsigned s_freed;

static void s_count_free(router_crypto_job_t *job, void *ud)
{
    assert_ptr_equal(ud, &s_owner);
    s_freed++;
    router_crypto_job_free(&job);
}

/* Closed with jobs in flight: done ones freed at once, the others orphaned
 * for whoever sees them come back; nothing freed twice (ASan), nothing
 * leaked (LSan). */
static void test_abandon_frees_once(void **state)
{
    (void) state;
    router_crypto_order_t o;
    router_crypto_order_init(&o);
    router_crypto_job_t *jobs[4];
    for (uint8_t i = 0; i < 4; i++) {
        jobs[i] = s_job(i);
        assert_int_equal(router_crypto_order_push(&o, jobs[i], &s_owner), 0);
    }
    jobs[1]->done = true;
    jobs[3]->done = true;
    s_freed = 0;
    router_crypto_order_abandon(&o, s_count_free, &s_owner);
    assert_int_equal(s_freed, 2);
    assert_int_equal(router_crypto_order_count(&o), 0);
    /* the pool hands 0 and 2 back later: orphans, the loop frees them */
    assert_null(jobs[0]->owner);
    assert_null(jobs[2]->owner);
    assert_true(atomic_load(&jobs[0]->cancelled));
    assert_true(atomic_load(&jobs[2]->cancelled));
    router_crypto_job_free(&jobs[0]);
    router_crypto_job_free(&jobs[2]);
    router_crypto_order_abandon(&o, s_count_free, &s_owner); /* idempotent */
    assert_int_equal(s_freed, 2);
}

/* The ring grows past its first size while wrapped around. */
static void test_growth_wraps(void **state)
{
    (void) state;
    router_crypto_order_t o;
    router_crypto_order_init(&o);
    uint8_t in = 0, out = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 13; i++) {
            router_crypto_job_t *job = s_job(in++);
            job->done = true;
            assert_int_equal(router_crypto_order_push(&o, job, &s_owner), 0);
        }
        for (int i = 0; i < 7; i++) {
            router_crypto_job_t *job = router_crypto_order_pop(&o);
            assert_non_null(job);
            assert_int_equal(job->payload[0], out++);
            router_crypto_job_free(&job);
        }
    }
    assert_int_equal(router_crypto_order_count(&o), (size_t) (in - out));
    router_crypto_job_t *job;
    while ((job = router_crypto_order_pop(&o)) != NULL) {
        assert_int_equal(job->payload[0], out++);
        router_crypto_job_free(&job);
    }
    assert_int_equal(out, in);
    router_crypto_order_abandon(&o, NULL, NULL);
}

/* A preset refusal has no payload and waits its turn like the others. */
static void test_refusal_job(void **state)
{
    (void) state;
    router_crypto_job_t *job = router_crypto_job_new_refusal(PROTO_WIRE_OVERSIZE);
    assert_non_null(job);
    assert_null(job->payload);
    assert_int_equal(job->preset, PROTO_WIRE_OVERSIZE);
    assert_false(router_crypto_job_verified(job));
    router_crypto_job_run(job, NULL, NULL, NULL); /* nothing to run */
    assert_null(job->env);
    router_crypto_job_free(&job);
    router_crypto_job_free(&job);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_order_completion),
        cmocka_unit_test(test_abandon_frees_once),
        cmocka_unit_test(test_growth_wraps),
        cmocka_unit_test(test_refusal_job),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
