/* tests/inbox_test.c — the bounded inbox: refuses rather than drops when full,
 * admission order, durable admission through SQLite surviving a reopen,
 * popped entries deleted, and cross-thread pop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "router/state/inbox.h"

static void s_id(uint8_t id[16], uint32_t n)
{
    memset(id, 0, 16);
    memcpy(id, &n, sizeof n);
}

static router_inbox_t *s_open(size_t cap, size_t max_bytes, const char *db)
{
    char err[256] = "";
    router_inbox_opts_t o = {.capacity = cap, .max_bytes = max_bytes, .db_path = db,
                             .session = "comms"};
    router_inbox_t *in = router_inbox_new(&o, err, sizeof err);
    if (!in)
        fprintf(stderr, "inbox: %s\n", err);
    assert_non_null(in);
    return in;
}

static void test_full_refuses(void **state)
{
    (void) state;
    router_inbox_t *in = s_open(3, 0, NULL);
    uint8_t id[16], from[32] = {1}, frame[8] = {0xA0};
    uint64_t seq = 0;
    for (uint32_t i = 0; i < 3; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
        assert_int_equal(seq, i + 1);
    }
    s_id(id, 3);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_FULL);
    assert_int_equal(router_inbox_count(in), 3);
    assert_int_equal(router_inbox_durable_seq(in), 3);
    /* Popping makes room; order is admission order. */
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 1);
    router_inbox_entry_clear(&e);
    assert_int_equal(router_inbox_admit(in, id, from, "request", frame, 1, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    for (uint64_t want = 2; want <= 4; want++) {
        assert_int_equal(router_inbox_pop(in, &e, 0), 0);
        assert_int_equal(e.seq, want);
        router_inbox_entry_clear(&e);
    }
    assert_int_equal(router_inbox_pop(in, &e, 0), -1);
    assert_int_equal(router_inbox_pop(in, &e, 10), -1);
    router_inbox_destroy(&in);
    assert_null(in);
}

static void test_byte_bound(void **state)
{
    (void) state;
    router_inbox_t *in = s_open(100, 10, NULL);
    uint8_t id[16] = {0}, from[32] = {0}, frame[8] = {0};
    uint64_t seq;
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 8, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 3, 1, NULL, &seq),
                     ROUTER_INBOX_FULL);
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 2, 1, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    router_inbox_destroy(&in);
}

static void test_durable_reopen(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char db[256];
    snprintf(db, sizeof db, "%s/state.db", dir);

    router_inbox_t *in = s_open(16, 0, db);
    uint8_t id[16], from[32] = {7}, frame[3] = {0x63, 'h', 'i'};
    uint64_t seq;
    for (uint32_t i = 0; i < 5; i++) {
        s_id(id, i);
        assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 3, 42, NULL, &seq),
                         ROUTER_INBOX_ADMITTED);
    }
    router_inbox_sync(in);
    assert_int_equal(router_inbox_durable_seq(in), 5);
    router_inbox_entry_t e;
    assert_int_equal(router_inbox_pop(in, &e, 1000), 0);
    assert_int_equal(e.seq, 1);
    router_inbox_entry_clear(&e);
    router_inbox_destroy(&in); /* flushes the delete */

    in = s_open(16, 0, db);
    assert_int_equal(router_inbox_count(in), 4);
    assert_int_equal(router_inbox_pop(in, &e, 0), 0);
    assert_int_equal(e.seq, 2);
    assert_int_equal(e.frame_len, 3);
    assert_memory_equal(e.frame, frame, 3);
    assert_memory_equal(e.from, from, 32);
    assert_string_equal(e.kind, "message");
    assert_int_equal(e.received_ms, 42);
    s_id(id, 1);
    assert_memory_equal(e.id, id, 16);
    router_inbox_entry_clear(&e);
    /* New admissions continue the sequence. */
    assert_int_equal(router_inbox_admit(in, id, from, "message", frame, 3, 42, NULL, &seq),
                     ROUTER_INBOX_ADMITTED);
    assert_int_equal(seq, 6);
    router_inbox_destroy(&in);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

typedef struct {
    router_inbox_t *in;
    int got;
} s_consumer_t;

static void *s_consume(void *arg)
{
    s_consumer_t *c = arg;
    router_inbox_entry_t e;
    uint64_t last = 0;
    while (c->got < 1000 && router_inbox_pop(c->in, &e, 5000) == 0) {
        if (e.seq != last + 1)
            break;
        last = e.seq;
        c->got++;
        router_inbox_entry_clear(&e);
    }
    return NULL;
}

/* A consumer thread sees every durable entry in order. */
static void test_cross_thread(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-inbox-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char db[256];
    snprintf(db, sizeof db, "%s/state.db", dir);
    router_inbox_t *in = s_open(64, 0, db);
    s_consumer_t c = {.in = in};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_consume, &c), 0);
    uint8_t id[16], from[32] = {0}, frame[1] = {0xF6};
    uint64_t seq;
    for (uint32_t i = 0; i < 1000;) {
        s_id(id, i);
        router_inbox_outcome_t o = router_inbox_admit(in, id, from, "message", frame, 1, 1, NULL, &seq);
        if (o == ROUTER_INBOX_ADMITTED)
            i++;
        else
            usleep(100); /* full: the consumer drains it */
    }
    pthread_join(t, NULL);
    assert_int_equal(c.got, 1000);
    router_inbox_destroy(&in);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_refuses),
        cmocka_unit_test(test_byte_bound),
        cmocka_unit_test(test_durable_reopen),
        cmocka_unit_test(test_cross_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
