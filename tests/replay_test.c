/* tests/replay_test.c — the replay window: seen ids refused per peer, the v7
 * time window, growth, eviction watermark, forgetting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seen_per_peer),
        cmocka_unit_test(test_v7_window),
        cmocka_unit_test(test_growth_remembers_all),
        cmocka_unit_test(test_eviction_watermark),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_forget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
