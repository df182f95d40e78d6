/* tests/comms_fail_test.c — comms' failure handling (router/comms/comms.c)
 * on a real loop with real TCP sockets, on the test's thread. Drain
 * (spec/WIRE.md §9): connections mid-frame and idle close orderly and the
 * drain ends; a drain that cannot finish (the crypto threads held) is cut
 * at its bound (shortened through router_comms_opts_t.drain_timeout_ms)
 * and ends; a drain that can have no timer (the loop's timer slots all
 * taken) still ends; a second drain leaves no timer behind to fire on
 * freed comms. Acks released by comms' own tick when no durable wake-up
 * is posted. Out of memory at each allocation of router_comms_new and of
 * a connection's life (accept, frames, the checks, the acks owed): each
 * run refuses or resets cleanly, the acks the sender got are a prefix of
 * what was admitted, and nothing stays counted. The bounds on frames in
 * the checks are tests/comms_test.c. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "loop_until.h"
#include "proto/envelope.h"
#include "router/comms/comms.h"
#include "router/comms/guard.h"
#include "router/metrics.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/state/identity.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"
#include "sock_util.h"

/* Bounded waits: a hang fails the test instead of hanging CI. */
#define WAIT_EVERY_MS 2
#define WAIT_MAX_MS 20000
/* The drain bound the tests that reach it use (never a threshold: the
 * tests wait for its effect, however long it takes). */
#define DRAIN_MS 50

static uint8_t s_alice_pk[32], s_alice_sk[64];

typedef struct {
    router_loop_t *loop;
    router_inbox_t *inbox;
    router_trust_t *trust;
    router_comms_t *comms;
    router_identity_t id;
    uint16_t port;
    unsigned drained;     /* drain callbacks run */
    unsigned drained_other;
    int fd;               /* for s_until_gone */
    bool gone_reset;
    unsigned want_open;   /* for s_until_open_is */
    size_t ack_bytes;     /* acks read by s_until_acked_or_gone_fd */
    bool ended;           /* ...which saw the end of the connection */
} s_fx_t;

static void s_fx_init(s_fx_t *fx, const router_loop_opts_t *lo, unsigned crypto_threads)
{
    memset(fx, 0, sizeof *fx);
    fx->loop = router_loop_new(lo);
    assert_non_null(fx->loop);
    char err[256];
    router_inbox_opts_t io = {.capacity = 1000, .session = "comms"};
    fx->inbox = router_inbox_new(&io, err, sizeof err);
    assert_non_null(fx->inbox);
    fx->trust = router_trust_new();
    assert_non_null(fx->trust);
    assert_int_equal(router_trust_add(fx->trust, "alice", s_alice_pk, "tcp://127.0.0.1:9", NULL,
                                      NULL, 0, err, sizeof err),
                     0);
    crypto_sign_keypair(fx->id.pk, fx->id.sk);
    router_comms_opts_t co = {.loop = fx->loop, .identity = &fx->id, .trust = fx->trust,
                              .inbox = fx->inbox, .require_peer_auth = true,
                              .crypto_threads = crypto_threads, .drain_timeout_ms = DRAIN_MS};
    fx->comms = router_comms_new(&co);
    assert_non_null(fx->comms);
    router_addr_t addr;
    router_addr_err_t why;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, &why), 0);
    router_listener_t *l = router_comms_listen(fx->comms, &addr);
    assert_non_null(l);
    fx->port = router_addr_port(router_listener_addr(l));
}

static void s_fx_fini(s_fx_t *fx)
{
    if (fx->comms)
        router_comms_test_hold_crypto(fx->comms, false);
    router_comms_destroy(&fx->comms);
    router_loop_destroy(&fx->loop);
    router_inbox_destroy(&fx->inbox);
    router_trust_destroy(&fx->trust);
}

static router_comms_stats_t s_stats(const s_fx_t *fx)
{
    router_comms_stats_t st;
    router_comms_stats(fx->comms, &st);
    return st;
}

static void s_on_drained(void *ud)
{
    ((s_fx_t *) ud)->drained++;
}

static void s_on_drained_other(void *ud)
{
    ((s_fx_t *) ud)->drained_other++;
}

/* n signed `message`s from alice to fx's node, as frames; caller frees. */
static size_t s_envelopes(const s_fx_t *fx, unsigned n, uint8_t **out)
{
    uint8_t *all = NULL;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) {
        proto_envelope_reason_t why;
        cbor_item_t *kind = proto_kind_message("hi", 2, NULL, PROTO_HANDLING_NONE);
        proto_envelope_t *env = proto_envelope_new(NULL, s_alice_pk, fx->id.pk, &kind, &why);
        assert_non_null(env);
        assert_int_equal(proto_envelope_sign(env, s_alice_sk), 0);
        uint8_t *frame = NULL;
        size_t len = 0;
        assert_int_equal(proto_envelope_encode_frame(env, &frame, &len), 0);
        proto_envelope_destroy(&env);
        uint8_t *more = realloc(all, total + len);
        assert_non_null(more);
        all = more;
        memcpy(all + total, frame, len);
        total += len;
        free(frame);
    }
    *out = all;
    return total;
}

/* Sends one signed `message` from alice to fx's node. */
static void s_send_envelope(const s_fx_t *fx, int fd)
{
    proto_envelope_reason_t why;
    cbor_item_t *kind = proto_kind_message("hi", 2, NULL, PROTO_HANDLING_NONE);
    proto_envelope_t *env = proto_envelope_new(NULL, s_alice_pk, fx->id.pk, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, s_alice_sk), 0);
    uint8_t *frame = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, &len), 0);
    proto_envelope_destroy(&env);
    test_sock_send_all(fd, frame, len);
    free(frame);
}

/* The peer's end: EOF (an orderly close) or a reset, after reading away
 * any acks. A reset is reported once, so it is noted the first time. */
static bool s_peer_gone(int fd, bool *reset)
{
    return test_sock_read_ready(fd, NULL, reset);
}

static bool s_until_gone(void *ud)
{
    s_fx_t *fx = ud;
    return s_peer_gone(fx->fd, &fx->gone_reset);
}

static bool s_until_drained(void *ud)
{
    return ((s_fx_t *) ud)->drained > 0;
}

static bool s_until_admitted(void *ud)
{
    return s_stats(ud).admitted > 0;
}

static bool s_until_job(void *ud)
{
    return s_stats(ud).jobs > 0;
}

static bool s_until_open2(void *ud)
{
    return s_stats(ud).open == 2;
}

static bool s_until_open_is(void *ud)
{
    s_fx_t *fx = ud;
    return s_stats(fx).open == fx->want_open;
}

/* drained_other acks sent in all, or the connection at fd ended (reset,
 * refused at accept): the acks that came are read away into ack_bytes. */
static bool s_until_acked_or_gone_fd(void *ud)
{
    s_fx_t *fx = ud;
    if (s_stats(fx).acked >= fx->drained_other)
        return true;
    if (!test_sock_read_ready(fx->fd, &fx->ack_bytes, &fx->gone_reset))
        return false;
    fx->ended = true;
    return true;
}

static bool s_never(void *ud)
{
    (void) ud;
    return false;
}

static void s_wait(s_fx_t *fx, bool (*until)(void *))
{
    test_loop_until(fx->loop, until, fx, WAIT_EVERY_MS, WAIT_MAX_MS);
}

static void s_wait_gone(s_fx_t *fx, int fd)
{
    fx->fd = fd;
    s_wait(fx, s_until_gone);
}

/* ------------------------------------------------------------ tests */

/* A connection that was acked and one mid-frame are closed orderly (EOF,
 * not a reset) as soon as their peers close too; the drain then ends,
 * with nothing held in partial frames. */
static void test_drain_mid_frame(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0);
    int a = test_sock_connect(fx.port), b = test_sock_connect(fx.port);
    s_send_envelope(&fx, a);
    uint8_t head[4] = {0, 0, 0x10, 0}; /* a 4 KiB frame, begun */
    test_sock_send_all(b, head, sizeof head);
    test_sock_send_all(b, "partial", 7);
    s_wait(&fx, s_until_admitted);
    s_wait(&fx, s_until_open2);
    router_comms_drain(fx.comms, s_on_drained, &fx);
    s_wait_gone(&fx, a);
    assert_false(fx.gone_reset);
    s_wait_gone(&fx, b);
    assert_false(fx.gone_reset);
    close(a);
    close(b);
    s_wait(&fx, s_until_drained);
    assert_int_equal(fx.drained, 1);
    router_comms_stats_t st = s_stats(&fx);
    assert_int_equal(st.open, 0);
    assert_int_equal(st.acked, 1);
    s_fx_fini(&fx);
}

/* Frames stuck in the checks (the crypto threads held) keep the drain from
 * finishing: at its bound the connection is reset and the drain ends. */
static void test_drain_timeout(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 1);
    router_comms_test_hold_crypto(fx.comms, true);
    int a = test_sock_connect(fx.port);
    s_send_envelope(&fx, a);
    s_wait(&fx, s_until_job);
    router_comms_drain(fx.comms, s_on_drained, &fx);
    s_wait(&fx, s_until_drained);
    s_wait_gone(&fx, a);
    assert_true(fx.gone_reset);
    assert_int_equal(s_stats(&fx).open, 0);
    assert_int_equal(s_stats(&fx).admitted, 0);
    close(a);
    s_fx_fini(&fx);
}

static void s_stop(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    *(bool *) ud = true;
    router_loop_stop(loop);
}

static void s_on_drained_stop(void *ud)
{
    s_fx_t *fx = ud;
    fx->drained++;
    router_loop_stop(fx->loop);
}

/* With every timer slot of the loop taken, a drain has no bound to wait
 * for: it must end anyway (the connections left are reset at once), not
 * hang the shutdown. */
static void test_drain_without_timer(void **state)
{
    (void) state;
    enum { TIMERS = 8 };
    s_fx_t fx;
    router_loop_opts_t lo = {.max_timers = TIMERS};
    s_fx_init(&fx, &lo, 1);
    router_comms_test_hold_crypto(fx.comms, true);
    int a = test_sock_connect(fx.port);
    s_send_envelope(&fx, a);
    s_wait(&fx, s_until_job);
    /* One slot for the hang guard, the rest never fire. */
    bool hung = false;
    uint64_t guard = router_loop_timer_add(fx.loop, WAIT_MAX_MS, s_stop, &hung);
    assert_true(guard != 0);
    uint64_t filler[TIMERS];
    unsigned nfill = 0;
    while (nfill < TIMERS &&
           (filler[nfill] = router_loop_timer_add(fx.loop, 3600000, s_stop, &hung)) != 0)
        nfill++;
    assert_int_equal(errno, ENOSPC);
    router_comms_drain(fx.comms, s_on_drained_stop, &fx);
    if (!fx.drained)
        assert_int_equal(router_loop_run(fx.loop), 0);
    assert_false(hung);
    assert_int_equal(fx.drained, 1);
    for (unsigned i = 0; i < nfill; i++)
        assert_int_equal(router_loop_timer_cancel(fx.loop, filler[i]), 0);
    (void) router_loop_timer_cancel(fx.loop, guard);
    s_wait_gone(&fx, a); /* io_uring closes the socket a turn later */
    assert_true(fx.gone_reset);
    close(a);
    s_fx_fini(&fx);
}

/* A second drain while the first is under way replaces its callback and
 * leaves no timer of the first behind: comms destroyed after the drain
 * ended, the loop runs past the bound, and nothing fires on freed
 * memory (ASan would say so). */
static void test_drain_twice(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0);
    int a = test_sock_connect(fx.port);
    s_send_envelope(&fx, a);
    s_wait(&fx, s_until_admitted);
    router_comms_drain(fx.comms, s_on_drained_other, &fx);
    router_comms_drain(fx.comms, s_on_drained, &fx);
    s_wait_gone(&fx, a);
    assert_false(fx.gone_reset);
    close(a);
    s_wait(&fx, s_until_drained);
    assert_int_equal(fx.drained, 1);
    assert_int_equal(fx.drained_other, 0);
    router_comms_destroy(&fx.comms);
    /* Timers fire in deadline order: once this wait's own checks run past
     * the bound, any timer of the drain has fired. */
    assert_false(test_loop_wait(fx.loop, s_never, &fx, DRAIN_MS, 4 * DRAIN_MS));
    s_fx_fini(&fx);
}

/* router_comms_new with each of its allocations failing in turn. */
static void test_new_without_memory(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0);
    router_metrics_t *metrics = router_metrics_new();
    assert_non_null(metrics);
    long run;
    for (run = 0; run < ALLOC_FAIL_RUNS_MAX; run++) {
        router_comms_opts_t co = {.loop = fx.loop, .identity = &fx.id, .trust = fx.trust,
                                  .inbox = fx.inbox, .metrics = run % 2 ? metrics : NULL,
                                  .crypto_threads = 1};
        alloc_fail_arm(run / 2);
        router_comms_t *c = router_comms_new(&co);
        unsigned failed = alloc_fail_disarm();
        if (!c) {
            assert_true(failed > 0);
            continue;
        }
        router_comms_destroy(&c);
        if (failed == 0 && run % 2)
            break;
    }
    assert_true(run > 2 && run < ALLOC_FAIL_RUNS_MAX);
    router_metrics_destroy(&metrics);
    s_fx_fini(&fx);
}

/* Reads the acks still coming on fx->fd until its end: how many came in
 * all (each PROTO_ACK_FRAME_LEN), and whether it ended with a reset. */
static unsigned s_acks_until_end(s_fx_t *fx, bool *reset)
{
    if (!fx->ended) {
        test_sock_read_to_end(fx->fd, &fx->ack_bytes, &fx->gone_reset, WAIT_MAX_MS);
        fx->ended = true;
    }
    *reset = fx->gone_reset;
    assert_int_equal(fx->ack_bytes % PROTO_ACK_FRAME_LEN, 0);
    return (unsigned) (fx->ack_bytes / PROTO_ACK_FRAME_LEN);
}

/* One connection sending three envelopes in one write, with the 1st, 2nd,
 * … allocation on the loop thread failing: the connection serves them all
 * or is reset; what was acked is what was admitted, in order; once it is
 * gone nothing is held in the checks or in partial frames. */
static void test_connection_without_memory(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0);
    int w = test_sock_connect(fx.port); /* warm up: the loop's own first allocations */
    s_send_envelope(&fx, w);
    s_wait(&fx, s_until_admitted);
    close(w);
    fx.want_open = 0;
    s_wait(&fx, s_until_open_is);
    long run;
    unsigned served = 0;
    for (run = 0; run < ALLOC_FAIL_RUNS_MAX; run++) {
        router_comms_stats_t before = s_stats(&fx);
        int fd = test_sock_connect(fx.port);
        uint8_t *frames = NULL;
        size_t len = s_envelopes(&fx, 3, &frames);
        alloc_fail_arm(run);
        test_sock_send_all(fd, frames, len);
        fx.drained_other = (unsigned) before.acked + 3; /* acked to wait for */
        fx.fd = fd;
        fx.ack_bytes = 0;
        fx.ended = false;
        test_loop_until(fx.loop, s_until_acked_or_gone_fd, &fx, WAIT_EVERY_MS, WAIT_MAX_MS);
        unsigned failed = alloc_fail_disarm();
        free(frames);
        shutdown(fd, SHUT_WR);
        fx.want_open = 0;
        s_wait(&fx, s_until_open_is);
        bool reset = false;
        unsigned acks = s_acks_until_end(&fx, &reset);
        close(fd);
        router_comms_stats_t after = s_stats(&fx);
        assert_int_equal(after.jobs, 0);
        assert_int_equal(after.job_bytes, 0);
        assert_int_equal(after.acked - before.acked, acks);
        assert_true(after.admitted - before.admitted >= acks);
        assert_true(after.admitted - before.admitted <= 3);
        /* Out of memory is never the sender's fault: at most `internal`. */
        for (int r = 0; r < PROTO_WIRE_INTERNAL; r++)
            if (after.rejected[r] != before.rejected[r])
                fail_msg("run %ld: out of memory refused an envelope as %s", run,
                         proto_wire_reason_str((proto_wire_reason_t) r));
        if (acks == 3 && !reset)
            served++;
        if (failed == 0) {
            assert_int_equal(acks, 3);
            assert_false(reset);
            break;
        }
    }
    assert_true(run > 3 && run < ALLOC_FAIL_RUNS_MAX);
    assert_true(served >= 1);
    s_fx_fini(&fx);
}

/* With a store that commits on its own thread, nothing here posts the
 * durable wake-up (as when the post queue is full and the wake-up cannot
 * be posted): the acks still go out, in order, through comms' own tick. */
static void test_acks_without_wakeup(void **state)
{
    (void) state;
    s_fx_t fx;
    s_fx_init(&fx, NULL, 0);
    char dir[] = "/tmp/kith-comms-fail-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char db[128], err[256];
    snprintf(db, sizeof db, "%s/state.db", dir);
    router_inbox_opts_t io = {.capacity = 1000, .session = "comms", .db_path = db};
    router_inbox_t *disk = router_inbox_new(&io, err, sizeof err);
    assert_non_null(disk);
    router_comms_destroy(&fx.comms);
    router_comms_opts_t co = {.loop = fx.loop, .identity = &fx.id, .trust = fx.trust,
                              .inbox = disk, .require_peer_auth = true};
    fx.comms = router_comms_new(&co);
    assert_non_null(fx.comms);
    router_addr_t addr;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    router_listener_t *l = router_comms_listen(fx.comms, &addr);
    assert_non_null(l);
    int fd = test_sock_connect(router_addr_port(router_listener_addr(l)));
    uint8_t *frames = NULL;
    size_t len = s_envelopes(&fx, 3, &frames);
    test_sock_send_all(fd, frames, len);
    free(frames);
    fx.fd = fd;
    fx.drained_other = 3;
    test_loop_until(fx.loop, s_until_acked_or_gone_fd, &fx, WAIT_EVERY_MS, WAIT_MAX_MS);
    assert_false(fx.ended);
    shutdown(fd, SHUT_WR);
    fx.want_open = 0;
    s_wait(&fx, s_until_open_is);
    bool reset = true;
    assert_int_equal(s_acks_until_end(&fx, &reset), 3);
    assert_false(reset);
    close(fd);
    router_comms_destroy(&fx.comms);
    router_inbox_destroy(&disk);
    s_fx_fini(&fx);
    char rm[160];
    snprintf(rm, sizeof rm, "rm -rf %s", dir);
    assert_int_equal(system(rm), 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    crypto_sign_keypair(s_alice_pk, s_alice_sk);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drain_mid_frame),
        cmocka_unit_test(test_drain_timeout),
        cmocka_unit_test(test_drain_without_timer),
        cmocka_unit_test(test_drain_twice),
        cmocka_unit_test(test_acks_without_wakeup),
        cmocka_unit_test(test_new_without_memory),
        cmocka_unit_test(test_connection_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
