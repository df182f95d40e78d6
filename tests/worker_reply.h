/* tests/worker_reply.h — what a test's stand-in agent worker says back: a
 * reply encoded as spec/worker.cddl has it and sent as a PARTIAL or FINAL
 * on its Majordomo worker. For the tests that play a worker (turns_test,
 * node_test); include after <cmocka.h>. */
#ifndef KITH_TESTS_WORKER_REPLY_H
#define KITH_TESTS_WORKER_REPLY_H

#include <stdlib.h>

#include "proto/worker_msg.h"
#include "router/workers/mdp_worker.h"

static inline void test_worker_reply(router_mdp_worker_t *w, const proto_worker_reply_t *rep)
{
    uint8_t *body;
    size_t len;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_reply_encode(rep, &body, &len, &err), 0);
    if (rep->type == PROTO_WORKER_REPLY_PARTIAL)
        assert_int_equal(router_mdp_worker_partial(w, body, len), 0);
    else
        assert_int_equal(router_mdp_worker_final(w, body, len), 0);
    free(body);
}

#endif
