/* tests/replay_test.c — the replay window: seen ids refused per peer, the v7
 * time window, growth, eviction watermark, forgetting, a clock stepped back,
 * seeding from the durable store, and the bound on unknown keys' sets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "router/comms/replay.h"

#define NOW 1763700000000ull /* a fixed Unix time in ms */
#define WINDOW_S 300

/* A UUIDv7 with time ms and a counter in the random bits. */
static void s_v7(uint8_t id[16], uint64_t ms, uint32_t n)
{
    memset(id, 0, 16);
    for (int i = 0; i < 6; i++)
        id[i] = (uint8_t) (ms >> (40 - 8 * i));
    id[6] = 0x70;
    id[8] = 0x80;
    memcpy(id + 12, &n, 4);
}

/* A UUIDv4-shaped id from a counter. */
static void s_v4(uint8_t id[16], uint32_t n)
{
    memset(id, 0xAB, 16);
    id[6] = 0x40;
    id[8] = 0x80;
    memcpy(id + 12, &n, 4);
}

static void test_seen_per_peer(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t a[32] = {1}, b[32] = {2}, id[16];
    s_v7(id, NOW, 1);
    assert_int_equal(router_replay_check_insert(r, a, id, NOW, true), ROUTER_REPLAY_FRESH);
    assert_int_equal(router_replay_check_insert(r, a, id, NOW, true), ROUTER_REPLAY_SEEN);
    /* The same id from another peer is that peer's business. */
    assert_int_equal(router_replay_check_insert(r, b, id, NOW, true), ROUTER_REPLAY_FRESH);
    assert_int_equal(router_replay_size(r), 2);
    router_replay_destroy(&r);
    assert_null(r);
    router_replay_destroy(&r);
}

static void test_v7_window(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {1}, id[16];
    s_v7(id, NOW - WINDOW_S * 1000 - 1, 1);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_STALE);
    s_v7(id, NOW + WINDOW_S * 1000 + 1, 2);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_STALE);
    s_v7(id, NOW - WINDOW_S * 1000, 3);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    s_v7(id, NOW + WINDOW_S * 1000, 4);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    /* A v4 id has no time: only the set applies. */
    s_v4(id, 5);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_SEEN);
    router_replay_destroy(&r);
}

/* Thousands of ids: growth keeps every one of them remembered up to the cap. */
static void test_growth_remembers_all(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {7}, id[16];
    for (uint32_t i = 0; i < ROUTER_REPLAY_PER_PEER_MAX; i++) {
        s_v4(id, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    }
    for (uint32_t i = 0; i < ROUTER_REPLAY_PER_PEER_MAX; i++) {
        s_v4(id, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_SEEN);
    }
    router_replay_destroy(&r);
}

/* Past the cap the oldest v7 id is evicted, and the watermark still refuses
 * it: eviction never re-opens a v7 id. */
static void test_eviction_watermark(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {9}, id[16];
    for (uint32_t i = 0; i <= ROUTER_REPLAY_PER_PEER_MAX; i++) {
        s_v7(id, NOW - 1000 + i / 8, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    }
    assert_int_equal(router_replay_size(r), ROUTER_REPLAY_PER_PEER_MAX);
    s_v7(id, NOW - 1000, 0); /* the evicted one */
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_EVICTED);
    s_v7(id, NOW - 1000, 999999); /* never seen, but no newer than the watermark */
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_EVICTED);
    s_v7(id, NOW, 1000000);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    router_replay_destroy(&r);
}

/* An id the inbox refuses leaves no trace, also when the window is full:
 * the id its insert evicted is remembered again and the watermark goes
 * back, so the refused id's retry is fresh (spec/ack.pml, WIRE §6). */
static void test_forget_undoes_eviction(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {10}, id[16], first[16], x[16];
    for (uint32_t i = 0; i < ROUTER_REPLAY_PER_PEER_MAX; i++) {
        s_v7(id, NOW - 1000 + i / 8, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    }
    s_v7(first, NOW - 1000, 0);
    s_v7(x, NOW, 1000000);
    assert_int_equal(router_replay_check_insert(r, pk, x, NOW, true), ROUTER_REPLAY_FRESH);
    router_replay_forget(r, pk, x); /* the inbox refused it */
    assert_int_equal(router_replay_size(r), ROUTER_REPLAY_PER_PEER_MAX);
    assert_int_equal(router_replay_check_insert(r, pk, first, NOW, true), ROUTER_REPLAY_SEEN);
    uint64_t v7, exp, floor;
    router_replay_durable_info(r, pk, x, NOW, &v7, &exp, &floor);
    assert_int_equal(floor, 0);
    /* The retry of the refused id is admitted, evicting the oldest again. */
    assert_int_equal(router_replay_check_insert(r, pk, x, NOW, true), ROUTER_REPLAY_FRESH);
    assert_int_equal(router_replay_check_insert(r, pk, first, NOW, true), ROUTER_REPLAY_EVICTED);
    assert_int_equal(router_replay_size(r), ROUTER_REPLAY_PER_PEER_MAX);
    router_replay_destroy(&r);
}

/* Ids whose time has left the window are dropped as time moves on. */
static void test_expiry(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {3}, id[16];
    for (uint32_t i = 0; i < 100; i++) {
        s_v7(id, NOW, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    }
    uint64_t later = NOW + WINDOW_S * 1000 + 1;
    s_v7(id, later, 100);
    assert_int_equal(router_replay_check_insert(r, pk, id, later, true), ROUTER_REPLAY_FRESH);
    assert_int_equal(router_replay_size(r), 1);
    router_replay_destroy(&r);
}

static void test_forget(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {4}, id[16];
    for (uint32_t i = 0; i < 200; i++) {
        s_v4(id, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    }
    for (uint32_t i = 0; i < 200; i += 2) {
        s_v4(id, i);
        router_replay_forget(r, pk, id);
    }
    assert_int_equal(router_replay_size(r), 100);
    for (uint32_t i = 0; i < 200; i++) {
        s_v4(id, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true),
                         (i % 2) ? ROUTER_REPLAY_SEEN : ROUTER_REPLAY_FRESH);
    }
    router_replay_forget(r, (uint8_t[32]){0xEE}, id); /* unknown peer: no-op */
    router_replay_destroy(&r);
}

/* A clock stepped back after time eviction: the dropped v7 ids stay
 * refused (the watermark rose to their time), and so does an id whose
 * future time the step makes valid again. */
static void test_clock_step_back(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {5}, old[16], id[16];
    s_v7(old, NOW, 1);
    assert_int_equal(router_replay_check_insert(r, pk, old, NOW, true), ROUTER_REPLAY_FRESH);
    /* Ten minutes on, a new id drops the old one from the window. */
    uint64_t later = NOW + 2 * WINDOW_S * 1000;
    s_v7(id, later, 2);
    assert_int_equal(router_replay_check_insert(r, pk, id, later, true), ROUTER_REPLAY_FRESH);
    assert_int_equal(router_replay_size(r), 1);
    /* The clock steps back to NOW: the old id is fresh by time again. */
    assert_int_equal(router_replay_check_insert(r, pk, old, NOW, true), ROUTER_REPLAY_EVICTED);
    /* And back further still, to just after NOW: still refused. */
    assert_int_equal(router_replay_check_insert(r, pk, old, NOW + 1000, true),
                     ROUTER_REPLAY_EVICTED);
    /* The newer id, refused as stale at NOW, is seen once the clock is back. */
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_STALE);
    assert_int_equal(router_replay_check_insert(r, pk, id, later, true), ROUTER_REPLAY_SEEN);
    router_replay_destroy(&r);
}

/* The watermark a drop raised is handed to the inbox once (to be stored
 * with the admission), and handed back when that admission fails. */
static void test_floor_taken_once(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    uint8_t pk[32] = {6}, id[16];
    uint64_t v7, exp, floor;
    s_v7(id, NOW, 1);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    router_replay_durable_info(r, pk, id, NOW, &v7, &exp, &floor);
    assert_int_equal(v7, NOW);
    assert_int_equal(exp, NOW + WINDOW_S * 1000);
    assert_int_equal(floor, 0);
    uint64_t later = NOW + 2 * WINDOW_S * 1000;
    s_v7(id, later, 2);
    assert_int_equal(router_replay_check_insert(r, pk, id, later, true), ROUTER_REPLAY_FRESH);
    router_replay_durable_info(r, pk, id, later, &v7, &exp, &floor);
    assert_int_equal(floor, NOW);
    router_replay_forget(r, pk, id); /* the inbox refused it */
    assert_int_equal(router_replay_check_insert(r, pk, id, later, true), ROUTER_REPLAY_FRESH);
    router_replay_durable_info(r, pk, id, later, &v7, &exp, &floor);
    assert_int_equal(floor, NOW);
    router_replay_durable_info(r, pk, id, later, &v7, &exp, &floor);
    assert_int_equal(floor, 0);
    /* A v4 id expires after the horizon, counted from admission. */
    uint8_t v4[16];
    s_v4(v4, 1);
    router_replay_durable_info(r, pk, v4, NOW, &v7, &exp, &floor);
    assert_int_equal(v7, 0);
    assert_int_equal(exp, NOW + 86400ull * 1000);
    router_replay_destroy(&r);
}

/* Seeding from what a previous run stored: ids are refused again, a v7
 * id already outside the window becomes a floor, a floor is restored, and
 * more ids than a set holds raise its watermark. */
static void test_seed(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 60);
    uint8_t a[32] = {7}, b[32] = {8}, c[32] = {9}, id[16], v4[16], gone[16];
    s_v7(id, NOW - 1000, 1);
    s_v4(v4, 1);
    s_v4(gone, 2);
    assert_int_equal(router_replay_seed(r, a, id, NOW - 1000 + WINDOW_S * 1000, NOW, true), 0);
    assert_int_equal(router_replay_seed(r, a, v4, NOW + 1000, NOW, true), 0);
    assert_int_equal(router_replay_seed(r, a, gone, NOW - 1, NOW, true), 0); /* expired */
    assert_int_equal(router_replay_check_insert(r, a, id, NOW, true), ROUTER_REPLAY_SEEN);
    assert_int_equal(router_replay_check_insert(r, a, v4, NOW, true), ROUTER_REPLAY_SEEN);
    assert_int_equal(router_replay_check_insert(r, a, gone, NOW, true), ROUTER_REPLAY_FRESH);
    /* A stale v7 row: refused after a clock step back to its time. */
    uint8_t stale[16];
    uint64_t t = NOW - 2 * WINDOW_S * 1000;
    s_v7(stale, t, 3);
    assert_int_equal(router_replay_seed(r, b, stale, t + WINDOW_S * 1000, NOW, true), 0);
    assert_int_equal(router_replay_check_insert(r, b, stale, t, true), ROUTER_REPLAY_EVICTED);
    /* A stored floor in the window belongs to its peer. */
    assert_int_equal(router_replay_seed_floor(r, c, NOW - 10, NOW, true), 0);
    s_v7(id, NOW - 20, 4);
    assert_int_equal(router_replay_check_insert(r, c, id, NOW, true), ROUTER_REPLAY_EVICTED);
    s_v7(id, NOW, 5);
    assert_int_equal(router_replay_check_insert(r, c, id, NOW, true), ROUTER_REPLAY_FRESH);
    /* The all-zero key's floor is every sender's, however recent (it was
     * kept as a window of its own, and bound no one). */
    uint8_t zero[32] = {0}, e[32] = {11};
    assert_int_equal(router_replay_seed_floor(r, zero, NOW - 30, NOW, false), 0);
    s_v7(id, NOW - 40, 6);
    assert_int_equal(router_replay_check_insert(r, e, id, NOW, true), ROUTER_REPLAY_EVICTED);
    assert_int_equal(router_replay_check_insert(r, a, id, NOW, true), ROUTER_REPLAY_EVICTED);
    s_v7(id, NOW - 25, 7);
    assert_int_equal(router_replay_check_insert(r, e, id, NOW, true), ROUTER_REPLAY_FRESH);
    /* Seeding past the cap keeps the newest and raises the watermark. */
    uint8_t d[32] = {10};
    for (uint32_t i = 0; i < ROUTER_REPLAY_PER_PEER_MAX + 1; i++) {
        s_v7(id, NOW - 100000 + i / 8, i);
        assert_int_equal(router_replay_seed(r, d, id, NOW + 1, NOW, true), 0);
    }
    s_v7(id, NOW - 100000, 0);
    assert_int_equal(router_replay_check_insert(r, d, id, NOW, true), ROUTER_REPLAY_EVICTED);
    router_replay_destroy(&r);
}

/* Unknown keys: at most ROUTER_REPLAY_UNKNOWN_PEERS_MAX sets, then BUSY;
 * dead sets are freed and their room reused; trusted keys always get one. */
static void test_unknown_bound(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 60);
    uint8_t pk[32] = {0}, id[16];
    for (uint32_t i = 0; i < ROUTER_REPLAY_UNKNOWN_PEERS_MAX; i++) {
        memcpy(pk, &i, sizeof i);
        s_v7(id, NOW, i);
        assert_int_equal(router_replay_check_insert(r, pk, id, NOW, false), ROUTER_REPLAY_FRESH);
    }
    assert_int_equal(router_replay_unknown_sets(r), ROUTER_REPLAY_UNKNOWN_PEERS_MAX);
    uint32_t extra = 0xFFFFFF;
    memcpy(pk, &extra, sizeof extra);
    s_v7(id, NOW, extra);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, false), ROUTER_REPLAY_BUSY);
    assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_FRESH);
    assert_int_equal(router_replay_unknown_sets(r), ROUTER_REPLAY_UNKNOWN_PEERS_MAX);
    /* All those ids expire: new unknown keys find room again. */
    uint64_t later = NOW + 3 * WINDOW_S * 1000;
    uint32_t fresh = 0xFFFFFE;
    memcpy(pk, &fresh, sizeof fresh);
    s_v7(id, later, fresh);
    assert_int_equal(router_replay_check_insert(r, pk, id, later, false), ROUTER_REPLAY_FRESH);
    assert_true(router_replay_unknown_sets(r) < ROUTER_REPLAY_UNKNOWN_PEERS_MAX);
    /* Ids of freed sets and of kept ones stay refused when the clock steps
     * back to NOW. */
    unsigned evicted = 0;
    for (uint32_t i = 0; i < ROUTER_REPLAY_UNKNOWN_PEERS_MAX; i++) {
        memcpy(pk, &i, sizeof i);
        s_v7(id, NOW, i);
        router_replay_verdict_t v = router_replay_check_insert(r, pk, id, NOW, false);
        assert_true(v == ROUTER_REPLAY_SEEN || v == ROUTER_REPLAY_EVICTED);
        evicted += v == ROUTER_REPLAY_EVICTED;
    }
    assert_true(evicted > 0);
    router_replay_destroy(&r);
}

/* An unknown key's set holds at most ROUTER_REPLAY_UNKNOWN_PER_PEER_MAX
 * ids (a trusted key's grows far past it): memory per open-door sender is
 * bounded, and the newest ids stay refused. */
static void test_unknown_set_is_small(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 60);
    uint8_t stranger[32] = {0x51}, friend[32] = {0x52}, id[16];
    uint32_t n = 3 * ROUTER_REPLAY_UNKNOWN_PER_PEER_MAX;
    for (uint32_t i = 0; i < n; i++) {
        s_v4(id, i);
        assert_int_equal(router_replay_check_insert(r, stranger, id, NOW, false),
                         ROUTER_REPLAY_FRESH);
        assert_int_equal(router_replay_check_insert(r, friend, id, NOW, true),
                         ROUTER_REPLAY_FRESH);
    }
    assert_int_equal(router_replay_size(r), ROUTER_REPLAY_UNKNOWN_PER_PEER_MAX + n);
    s_v4(id, n - 1);
    assert_int_equal(router_replay_check_insert(r, stranger, id, NOW, false), ROUTER_REPLAY_SEEN);
    router_replay_destroy(&r);
}

/* Out of memory at every allocation a check can make (a new sender's set,
 * the peers table, a set doubling): the verdict is NOMEM, the id is not
 * remembered (the retry is FRESH), and no id remembered before is lost
 * (each is still SEEN): a failed growth must never re-open a replay. */
static void test_without_memory(void **state)
{
    (void) state;
    router_replay_t *r = router_replay_new(WINDOW_S, 0);
    assert_non_null(r);
    /* 200 ids from one sender (its set doubles twice), then 40 senders
     * more (the peers table grows). */
    enum { IDS = 400, ONE = 200, SENDERS = 40 };
    uint8_t id[16], pk[32] = {0};
    unsigned nomem = 0;
    for (uint32_t n = 0; n < IDS; n++) {
        pk[0] = n < ONE ? 0 : (uint8_t) (1 + n % SENDERS);
        s_v4(id, n);
        router_replay_verdict_t v = ROUTER_REPLAY_NOMEM;
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            alloc_fail_arm(i);
            v = router_replay_check_insert(r, pk, id, NOW, true);
            if (alloc_fail_disarm() == 0)
                break;
            assert_int_equal(v, ROUTER_REPLAY_NOMEM);
            nomem++;
        }
        assert_int_equal(v, ROUTER_REPLAY_FRESH);
        for (uint32_t k = 0; k <= n; k++) {
            pk[0] = k < ONE ? 0 : (uint8_t) (1 + k % SENDERS);
            s_v4(id, k);
            assert_int_equal(router_replay_check_insert(r, pk, id, NOW, true), ROUTER_REPLAY_SEEN);
        }
    }
    assert_true(nomem > SENDERS); /* every new set, and growths, were refused once */
    assert_int_equal(router_replay_size(r), IDS);
    router_replay_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seen_per_peer),
        cmocka_unit_test(test_v7_window),
        cmocka_unit_test(test_growth_remembers_all),
        cmocka_unit_test(test_eviction_watermark),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_forget),
        cmocka_unit_test(test_forget_undoes_eviction),
        cmocka_unit_test(test_clock_step_back),
        cmocka_unit_test(test_floor_taken_once),
        cmocka_unit_test(test_seed),
        cmocka_unit_test(test_unknown_bound),
        cmocka_unit_test(test_unknown_set_is_small),
        cmocka_unit_test(test_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
