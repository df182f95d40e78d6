/* tests/outbound_test.c — router/comms/outbound.c against a loop with no
 * timer slot left: a send whose ack could never time out is refused at
 * once (ENOSPC) instead of waiting forever, and no callback is owed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto/frame.h"
#include "router/comms/outbound.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
}

static int s_calls;

static void s_sent(router_send_outcome_t outcome, const char *detail, const uint8_t *ack_id,
                   void *ud)
{
    (void) outcome;
    (void) detail;
    (void) ack_id;
    (void) ud;
    s_calls++;
}

static void s_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    (void) ud;
    router_conn_abort(c);
}

static void test_ack_timer_failure_fails_the_send(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.backend = ROUTER_LOOP_EPOLL, .max_timers = 1};
    router_loop_t *loop = router_loop_new(&lo);
    assert_non_null(loop);
    /* The only timer slot is taken. */
    assert_true(router_loop_timer_add(loop, 3600000, s_never, NULL) != 0);
    router_addr_t a;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &a, NULL), 0);
    router_listener_t *l = router_loop_listen(loop, &a, s_accept, NULL);
    assert_non_null(l);
    router_identity_t id;
    memset(&id, 0, sizeof id);
    router_outbound_opts_t oo = {.loop = loop, .identity = &id, .ack_timeout_ms = 1000};
    router_outbound_t *ob = router_outbound_new(&oo);
    assert_non_null(ob);
    uint8_t pk[32] = {1}, msg_id[16] = {2};
    uint8_t frame[PROTO_FRAME_HEADER_LEN + 1] = {0, 0, 0, 1, 0xa0};
    errno = 0;
    int rc = router_outbound_send(ob, pk, router_listener_addr(l), frame, sizeof frame, msg_id,
                                  s_sent, NULL);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, ENOSPC);
    router_outbound_destroy(&ob);
    assert_int_equal(s_calls, 0); /* refused sends owe no callback */
    router_listener_close(&l);
    router_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ack_timer_failure_fails_the_send),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
