/* tests/crypto_pool_test.c — the crypto threads: every job comes back to
 * the loop thread once, with the verdict the loop used to reach itself
 * (good, bad signature, weak key, malformed) and a pre-signed ack for the
 * acked kinds addressed to us; inline with 0 threads; and a pool destroyed
 * with jobs still queued frees them (LSan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "router/comms/crypto_pool.h"
#include "router/net/loop.h"

#define N 400

static uint8_t s_pk[32], s_sk[64];       /* the router */
static uint8_t s_peer_pk[32], s_peer_sk[64];

/* A signed `message` from the peer to `to`, encoded; caller frees. */
static uint8_t *s_envelope(const uint8_t to[32], unsigned n, size_t *len)
{
    char body[32];
    int bl = snprintf(body, sizeof body, "hello %u", n);
    proto_envelope_reason_t why;
    cbor_item_t *kind = proto_kind_message(body, (size_t) bl, NULL, PROTO_HANDLING_NONE);
    proto_envelope_t *env = proto_envelope_new(NULL, s_peer_pk, to, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, s_peer_sk), 0);
    uint8_t *out = NULL;
    assert_int_equal(proto_envelope_encode(env, &out, len), 0);
    proto_envelope_destroy(&env);
    return out;
}

/* What job i is: 0 good, 1 bad signature, 2 misaddressed (good, no ack), 3 garbage. */
static int s_type(unsigned i)
{
    return i % 7 == 3 ? 1 : i % 11 == 5 ? 2 : i % 13 == 7 ? 3 : 0;
}

static router_crypto_job_t *s_make(unsigned i)
{
    size_t len;
    uint8_t other[32];
    memset(other, 7, sizeof other);
    int t = s_type(i);
    if (t == 3) {
        static const uint8_t junk[] = {0xa5, 0x01, 0x02};
        return router_crypto_job_new(junk, sizeof junk);
    }
    uint8_t *b = s_envelope(t == 2 ? other : s_pk, i, &len);
    if (t == 1)
        b[len - 70] ^= 0x01; /* inside the signature or the body: either fails */
    router_crypto_job_t *job = router_crypto_job_new(b, len);
    free(b);
    return job;
}

typedef struct {
    router_loop_t *loop;
    unsigned back;
    router_crypto_job_t *jobs[N];
} s_ctx_t;

static void s_check(router_crypto_job_t *job, unsigned i)
{
    int t = s_type(i);
    assert_true(job->done);
    switch (t) {
    case 0:
        assert_true(router_crypto_job_verified(job));
        assert_true(job->ack_ready);
        /* the ack is a valid signed ack from us to the peer for this id */
        proto_envelope_t *ack = NULL;
        proto_envelope_reason_t why;
        assert_int_equal(proto_envelope_decode_frame(job->ack, sizeof job->ack, &ack, &why), 0);
        assert_int_equal(proto_envelope_verify(ack, &why), 0);
        assert_memory_equal(proto_envelope_from(ack), s_pk, 32);
        assert_memory_equal(proto_envelope_to(ack), s_peer_pk, 32);
        uint8_t irt[16];
        assert_int_equal(proto_envelope_in_reply_to(ack, irt), 0);
        assert_memory_equal(irt, proto_envelope_id(job->env), 16);
        proto_envelope_destroy(&ack);
        break;
    case 1:
        assert_false(router_crypto_job_verified(job));
        assert_false(job->ack_ready);
        break;
    case 2:
        assert_true(router_crypto_job_verified(job));
        assert_false(job->ack_ready); /* misaddressed: refused on the loop, never acked */
        break;
    case 3:
        assert_null(job->env);
        assert_int_equal(proto_envelope_reason_wire(job->why), PROTO_WIRE_MALFORMED);
        break;
    }
}

static void s_on_done(router_crypto_job_t *job, void *ud)
{
    s_ctx_t *c = ud;
    unsigned i = (unsigned) (uintptr_t) job->owner;
    assert_ptr_equal(c->jobs[i], job);
    s_check(job, i);
    c->jobs[i] = NULL; /* back exactly once */
    router_crypto_job_free(&job);
    if (++c->back == N)
        router_loop_stop(c->loop);
}

static void s_on_timeout(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    (void) ud;
    router_loop_stop(loop);
}

static void test_threads(void **state)
{
    (void) state;
    s_ctx_t c = {0};
    c.loop = router_loop_new(NULL);
    assert_non_null(c.loop);
    router_crypto_pool_opts_t o = {.loop = c.loop, .threads = 3, .sk = s_sk, .pk = s_pk,
                                   .on_done = s_on_done, .ud = &c};
    router_crypto_pool_t *p = router_crypto_pool_new(&o);
    assert_non_null(p);
    assert_int_equal(router_crypto_pool_threads(p), 3);
    for (unsigned i = 0; i < N; i++) {
        c.jobs[i] = s_make(i);
        assert_non_null(c.jobs[i]);
        c.jobs[i]->owner = (void *) (uintptr_t) i;
        assert_false(router_crypto_pool_submit(p, c.jobs[i]));
        if (i % 37 == 36)
            router_crypto_pool_flush(p); /* batches of several sizes */
    }
    router_crypto_pool_flush(p);
    assert_true(router_loop_timer_add(c.loop, 120000, s_on_timeout, NULL) != 0);
    assert_int_equal(router_loop_run(c.loop), 0);
    assert_int_equal(c.back, N);
    assert_int_equal(router_crypto_pool_inflight(p), 0);
    router_crypto_pool_destroy(&p);
    router_crypto_pool_destroy(&p);
    router_loop_destroy(&c.loop);
}

static void test_inline(void **state)
{
    (void) state;
    router_crypto_pool_opts_t o = {.threads = 0, .sk = s_sk, .pk = s_pk};
    router_crypto_pool_t *p = router_crypto_pool_new(&o);
    assert_non_null(p);
    assert_int_equal(router_crypto_pool_threads(p), 0);
    for (unsigned i = 0; i < 60; i++) {
        router_crypto_job_t *job = s_make(i);
        assert_true(router_crypto_pool_submit(p, job));
        s_check(job, i);
        router_crypto_job_free(&job);
    }
    assert_int_equal(router_crypto_pool_inflight(p), 0);
    router_crypto_pool_destroy(&p);
}

static void s_never(router_crypto_job_t *job, void *ud)
{
    (void) ud;
    router_crypto_job_free(&job);
}

/* Jobs still queued or done-but-not-taken when the pool goes: freed by it. */
static void test_destroy_in_flight(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    router_crypto_pool_opts_t o = {.loop = loop, .threads = 2, .sk = s_sk, .pk = s_pk,
                                   .on_done = s_never};
    router_crypto_pool_t *p = router_crypto_pool_new(&o);
    assert_non_null(p);
    for (unsigned i = 0; i < 50; i++) {
        router_crypto_pool_submit(p, s_make(i));
        if (i == 30)
            router_crypto_pool_flush(p); /* some queued, some still staged */
    }
    router_crypto_pool_destroy(&p);
    router_loop_destroy(&loop);
}

static void test_bad_options(void **state)
{
    (void) state;
    router_crypto_pool_opts_t o = {.threads = ROUTER_CRYPTO_THREADS_MAX + 1, .sk = s_sk,
                                   .pk = s_pk, .on_done = s_never};
    assert_null(router_crypto_pool_new(&o));
    o.threads = 1;
    o.on_done = NULL;
    assert_null(router_crypto_pool_new(&o));
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    crypto_sign_keypair(s_pk, s_sk);
    crypto_sign_keypair(s_peer_pk, s_peer_sk);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_inline),
        cmocka_unit_test(test_destroy_in_flight),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
