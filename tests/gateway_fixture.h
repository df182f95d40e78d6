/* tests/gateway_fixture.h — what a gateway route needs, for unit tests
 * that run the route's loop on the test's own thread (route_chat_test,
 * route_openclaw_test): an epoll loop, an in-memory token store, auth with
 * pairing off, the HTTP server, an embedded broker on its own inproc name
 * and turns on it. The test makes its route between test_gw_new and
 * test_gw_listen, and destroys it between test_gw_stop and test_gw_free.
 * Include after <cmocka.h>. */
#ifndef KITH_TESTS_GATEWAY_FIXTURE_H
#define KITH_TESTS_GATEWAY_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/state/tokens.h"
#include "router/workers/broker.h"
#include "router/workers/turns.h"

typedef struct {
    router_loop_t *loop;
    router_tokens_t *tokens;
    gateway_auth_t *auth;
    gateway_http_t *gw;
    router_broker_t *broker;
    router_turns_t *turns;
    uint16_t port;             /* after test_gw_listen */
} test_gw_t;

/* Everything but the route and the listening socket; `name` names the
 * broker's inproc endpoint (one per test file). */
static inline void test_gw_new(test_gw_t *b, const char *name)
{
    memset(b, 0, sizeof *b);
    router_loop_opts_t lo = {.backend = ROUTER_LOOP_EPOLL};
    b->loop = router_loop_new(&lo);
    assert_non_null(b->loop);
    char err[256];
    b->tokens = router_tokens_new(NULL, b->loop, err, sizeof err);
    assert_non_null(b->tokens);
    gateway_auth_opts_t ao = {.require_pairing = false};
    b->auth = gateway_auth_new(b->tokens, &ao);
    assert_non_null(b->auth);
    b->gw = gateway_http_new(b->loop, NULL);
    assert_non_null(b->gw);
    static int n;
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://%s-%d", name, ++n);
    router_broker_opts_t bo = {.loop = b->loop, .endpoint = ep};
    b->broker = router_broker_new(&bo, err, sizeof err);
    assert_non_null(b->broker);
    router_turns_opts_t to = {.loop = b->loop, .broker = b->broker};
    b->turns = router_turns_new(&to, err, sizeof err);
    assert_non_null(b->turns);
}

/* Listens on 127.0.0.1 at a port the kernel picks (b->port). */
static inline void test_gw_listen(test_gw_t *b)
{
    router_addr_t addr, bound;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    assert_int_equal(gateway_http_listen(b->gw, &addr, &bound), 0);
    b->port = router_addr_port(&bound);
}

/* The first half of teardown, before the route is destroyed: the server
 * (its connections go) and the token store's thread. */
static inline void test_gw_stop(test_gw_t *b)
{
    gateway_http_destroy(&b->gw);
    router_tokens_stop(b->tokens);
}

/* The rest, after the route. */
static inline void test_gw_free(test_gw_t *b)
{
    router_turns_destroy(&b->turns);
    router_broker_destroy(&b->broker);
    gateway_auth_destroy(&b->auth);
    router_loop_destroy(&b->loop); /* runs posts still queued, which name the token store */
    router_tokens_destroy(&b->tokens);
}

#endif
