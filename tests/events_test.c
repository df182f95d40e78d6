/* tests/events_test.c — gateway/events.c and gateway/log_tap.c: event ids
 * and the ring's bounds (count and bytes), refused types and objects, the
 * JSON escape publishers use, and log lines from another thread reaching
 * the stream through the tap on the loop thread. Subscribers over real
 * sockets are covered by tests/integration/test_sse.py. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "gateway/events.h"
#include "gateway/log_tap.h"
#include "proto/sse.h"
#include "router/log.h"
#include "router/net/loop.h"

static void test_ids_and_ring_count(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    gateway_events_t *ev = gateway_events_new(loop, &(gateway_events_opts_t){.ring_events = 4});
    assert_non_null(ev);
    gateway_events_stats_t st;
    gateway_events_stats(ev, &st);
    assert_int_equal(st.newest, 0);
    assert_int_equal(st.oldest, 1);
    for (uint64_t i = 1; i <= 10; i++)
        assert_int_equal(gateway_events_publish(ev, "agent_start", "{\"n\":1}"), i);
    gateway_events_stats(ev, &st);
    assert_int_equal(st.newest, 10);
    assert_int_equal(st.oldest, 7); /* 4 kept: 7..10 */
    assert_int_equal(gateway_events_publish(ev, "error", "{}"), 11);
    gateway_events_destroy(&ev);
    gateway_events_destroy(&ev); /* idempotent */
    assert_null(ev);
    router_loop_destroy(&loop);
}

static void test_ring_bytes(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(
        loop, &(gateway_events_opts_t){.ring_events = 100, .ring_bytes_max = 1000});
    assert_non_null(ev);
    char big[400];
    memset(big, 'x', sizeof big);
    memcpy(big, "{\"t\":\"", 6);
    memcpy(big + sizeof big - 3, "\"}", 3);
    for (int i = 0; i < 10; i++)
        assert_true(gateway_events_publish(ev, "tool_call", big) > 0);
    gateway_events_stats_t st;
    gateway_events_stats(ev, &st);
    assert_true(st.ring_bytes <= 1000);
    assert_int_equal(st.newest, 10);
    assert_int_equal(st.oldest, 9); /* two ~430-octet frames fit */
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

static void test_refused(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(loop, NULL);
    const char *bad_types[] = {"", "Upper", "has space", "new\nline", NULL};
    for (size_t i = 0; i < 5; i++) {
        errno = 0;
        assert_int_equal(gateway_events_publish(ev, bad_types[i], "{}"), 0);
        assert_int_equal(errno, EINVAL);
    }
    const char *bad_json[] = {NULL, "", "{", "[]", "x{}", "\"s\""};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(gateway_events_publish(ev, "error", bad_json[i]), 0);
    char type[GATEWAY_EVENTS_TYPE_MAX + 1];
    memset(type, 'a', sizeof type - 1);
    type[sizeof type - 1] = '\0';
    assert_int_equal(gateway_events_publish(ev, type, "{}"), 0);
    gateway_events_stats_t st;
    gateway_events_stats(ev, &st);
    assert_int_equal(st.newest, 0); /* nothing refused took an id */
    assert_null(gateway_events_new(loop, &(gateway_events_opts_t){.name = "Bad Name"}));
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

/* Checks the frame of event `id` against the SSE encoder's own output
 * for that id and data. */
static void s_frame_is(gateway_events_t *ev, uint64_t id, const char *data)
{
    char idt[24];
    snprintf(idt, sizeof idt, "%llu", (unsigned long long) id);
    proto_sse_message_t m = {.id = idt, .id_len = strlen(idt), .data = (const uint8_t *) data,
                             .data_len = strlen(data), .retry_ms = -1};
    uint8_t want[512];
    ssize_t n = proto_sse_encode(want, sizeof want, &m, NULL);
    assert_true(n > 0);
    size_t len = 0;
    const uint8_t *got = gateway_events_frame(ev, id, &len);
    assert_non_null(got);
    assert_int_equal(len, (size_t) n);
    assert_memory_equal(got, want, len);
}

/* What subscribers read: {"type":…} first, then the object's members;
 * members with line breaks (whitespace between JSON tokens) become more
 * data lines, which the client joins back with LF. */
static void test_frames(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(loop, NULL);
    assert_int_equal(gateway_events_publish(ev, "agent_start", "{\"n\":1}"), 1);
    s_frame_is(ev, 1, "{\"type\":\"agent_start\",\"n\":1}");
    assert_int_equal(gateway_events_publish(ev, "error", "{}"), 2);
    s_frame_is(ev, 2, "{\"type\":\"error\"}");
    assert_int_equal(gateway_events_publish(ev, "error", "{ \t }"), 3);
    s_frame_is(ev, 3, "{\"type\":\"error\"}");
    assert_int_equal(gateway_events_publish(ev, "log", "{\n \"a\": 1,\r\n \"b\":\r2\n}"), 4);
    s_frame_is(ev, 4, "{\"type\":\"log\",\"a\": 1,\r\n \"b\":\r2\n}");
    assert_null(gateway_events_frame(ev, 5, &(size_t){0}));
    assert_null(gateway_events_frame(ev, 0, &(size_t){0}));
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

/* Out of memory at each allocation of a publish, both ways a frame is
 * made: the publish returns 0 with ENOMEM and takes no id, and the ring
 * keeps what it had; the next publish that can allocate takes the next id. */
static void test_publish_without_memory(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *ev = gateway_events_new(loop, &(gateway_events_opts_t){.ring_events = 4});
    assert_non_null(ev);
    const char *objects[] = {"{\"n\":1}", "{\"a\":\n1}"};
    uint64_t next = 1;
    for (size_t k = 0; k < 2; k++)
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            errno = 0;
            alloc_fail_arm(i);
            uint64_t id = gateway_events_publish(ev, "agent_start", objects[k]);
            bool failed = alloc_fail_disarm() > 0;
            gateway_events_stats_t st;
            gateway_events_stats(ev, &st);
            if (id == 0) {
                assert_true(failed);
                assert_int_equal(errno, ENOMEM);
                assert_int_equal(st.newest, next - 1);
                continue;
            }
            assert_int_equal(id, next++);
            assert_int_equal(st.newest, id);
            if (!failed)
                break;
        }
    assert_true(next >= 3);
    gateway_events_destroy(&ev);
    router_loop_destroy(&loop);
}

static void test_json_escape(void **state)
{
    (void) state;
    char out[64];
    size_t n = 0;
    assert_int_equal(gateway_events_json_escape(out, sizeof out, &n, "a\"b\\c\n\x01", 7), 0);
    assert_string_equal(out, "a\\\"b\\\\c\\u000a\\u0001");
    n = 0;
    assert_int_equal(gateway_events_json_escape(out, sizeof out, &n, "caf\xc3\xa9", 5), 0);
    assert_string_equal(out, "caf\xc3\xa9"); /* UTF-8 passes */
    n = 0;
    assert_int_equal(gateway_events_json_escape(out, sizeof out, &n, "\xff", 1), 0);
    assert_string_equal(out, "\\u00ff"); /* not UTF-8: escaped octets */
    n = 0;
    char small[4];
    assert_int_equal(gateway_events_json_escape(small, sizeof small, &n, "abcdef", 6), -1);
    assert_int_equal(n, 0);
}

/* ---------------------------------------------------------------- the log tap */

typedef struct {
    gateway_events_t *logs;
    int polls;
    bool seen;
} s_tap_ctx_t;

static void *s_logger(void *arg)
{
    (void) arg;
    router_log_write(ROUTER_LOG_WARN, "tester", "a line from another thread \"quoted\"");
    return NULL;
}

/* Polls the stream until the line arrived; the hang guard is the count. */
static void s_poll(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) id;
    s_tap_ctx_t *c = ud;
    gateway_events_stats_t st;
    gateway_events_stats(c->logs, &st);
    if (st.newest >= 1 || ++c->polls > 3000) {
        c->seen = st.newest >= 1;
        router_loop_stop(loop);
        return;
    }
    assert_true(router_loop_timer_add(loop, 10, s_poll, c) != 0);
}

static void test_log_tap(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    gateway_events_t *logs = gateway_events_new(loop, &(gateway_events_opts_t){.name = "logs"});
    gateway_log_tap_t *tap = gateway_log_tap_new(loop, logs);
    assert_non_null(tap);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_logger, NULL), 0);
    s_tap_ctx_t c = {.logs = logs};
    assert_true(router_loop_timer_add(loop, 1, s_poll, &c) != 0);
    assert_int_equal(router_loop_run(loop), 0);
    pthread_join(t, NULL);
    assert_true(c.seen);
    gateway_log_tap_destroy(&tap);
    gateway_log_tap_destroy(&tap);
    router_log_write(ROUTER_LOG_WARN, "tester", "after the tap: reaches no stream");
    gateway_events_destroy(&logs);
    router_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_ring_count),
        cmocka_unit_test(test_ring_bytes),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_publish_without_memory),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_log_tap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
