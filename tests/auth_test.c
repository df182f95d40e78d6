/* tests/auth_test.c — gateway/auth: where a bearer token is taken from and
 * in which order (Authorization, bearer.<t> subprotocol, ?token= when
 * allowed), what counts as a paired token, the one-time pairing code, and
 * client keys and loopback checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <cmocka.h>

#include <sodium.h>

#include "gateway/auth.h"
#include "gateway/http_internal.h"
#include "router/net/addr.h"

/* A request parsed from text, as a handler would see it. */
typedef struct {
    proto_http_parser_t p;
    gateway_http_req_t req;
} s_req_t;

static void s_parse(s_req_t *r, const char *text)
{
    static const proto_http_limits_t lim = PROTO_HTTP_LIMITS_DEFAULT;
    assert_int_equal(proto_http_parser_init(&r->p, &lim), 0);
    ssize_t n = proto_http_parse(&r->p, text, strlen(text));
    assert_int_equal(n, (ssize_t) strlen(text));
    r->req = (gateway_http_req_t){.method = r->p.method, .path = r->p.path,
                                  .query = r->p.query, .head = &r->p};
}

static bool s_bearer(const char *text, const gateway_http_res_t *res, bool allow_query,
                     char *out, size_t cap)
{
    s_req_t r;
    s_parse(&r, text);
    const char *t;
    size_t n;
    if (!gateway_auth_bearer(&r.req, res, allow_query, &t, &n))
        return false;
    snprintf(out, cap, "%.*s", (int) n, t);
    return true;
}

static void test_bearer_order(void **state)
{
    (void) state;
    char t[128];
    assert_true(s_bearer("GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer AAA\r\n\r\n", NULL,
                         true, t, sizeof t));
    assert_string_equal(t, "AAA");
    assert_true(s_bearer("GET /x HTTP/1.1\r\nHost: h\r\nauthorization: bearer  BBB\r\n\r\n",
                         NULL, true, t, sizeof t));
    assert_string_equal(t, "BBB");
    /* The header wins over the query. */
    assert_true(s_bearer("GET /x?token=Q HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer H\r\n\r\n",
                         NULL, true, t, sizeof t));
    assert_string_equal(t, "H");
    assert_true(s_bearer("GET /x?a=1&token=Q&b=2 HTTP/1.1\r\nHost: h\r\n\r\n", NULL, true, t,
                         sizeof t));
    assert_string_equal(t, "Q");
    /* The query can be switched off; other schemes and empty values are none. */
    assert_false(s_bearer("GET /x?token=Q HTTP/1.1\r\nHost: h\r\n\r\n", NULL, false, t, sizeof t));
    assert_false(s_bearer("GET /x?token= HTTP/1.1\r\nHost: h\r\n\r\n", NULL, true, t, sizeof t));
    assert_false(s_bearer("GET /x?xtoken=Q HTTP/1.1\r\nHost: h\r\n\r\n", NULL, true, t, sizeof t));
    assert_false(s_bearer("GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: Basic Zm9v\r\n\r\n", NULL,
                          true, t, sizeof t));

    /* The subprotocol entry comes after the header and before the query. */
    static const char *const protos[] = {"kith.v1"};
    proto_ws_upgrade_t up;
    proto_ws_upgrade_init(&up, protos, 1);
    static const char *const h[][2] = {
        {"Host", "h"}, {"Upgrade", "websocket"}, {"Connection", "Upgrade"},
        {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
        {"Sec-WebSocket-Protocol", "bearer.WS, kith.v1"},
    };
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++)
        proto_ws_upgrade_feed(&up, h[i][0], strlen(h[i][0]), h[i][1], strlen(h[i][1]));
    assert_int_equal(proto_ws_upgrade_check(&up), 0);
    gateway_http_res_t res;
    memset(&res, 0, sizeof res);
    res.upgrade = &up;
    assert_true(s_bearer("GET /ws?token=Q HTTP/1.1\r\nHost: h\r\n\r\n", &res, true, t, sizeof t));
    assert_string_equal(t, "WS");
    assert_true(s_bearer("GET /ws?token=Q HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer H\r\n\r\n",
                         &res, true, t, sizeof t));
    assert_string_equal(t, "H");
}

static void test_token_ok_and_code(void **state)
{
    (void) state;
    char err[128];
    router_loop_t *loop = router_loop_new(NULL);
    router_tokens_t *tokens = router_tokens_new(NULL, loop, err, sizeof err);
    assert_non_null(tokens);
    gateway_auth_opts_t o = {.require_pairing = true, .allow_query_token = true};
    gateway_auth_t *a = gateway_auth_new(tokens, &o);
    char text[GATEWAY_AUTH_TOKEN_LEN + 1];
    uint8_t hash[32];
    gateway_auth_token_new(text, hash);
    assert_int_equal(strlen(text), GATEWAY_AUTH_TOKEN_LEN);
    assert_memory_equal(text, "kith_", 5);
    uint8_t again[32];
    crypto_hash_sha256(again, (const unsigned char *) text, strlen(text));
    assert_memory_equal(again, hash, 32);
    assert_false(gateway_auth_token_ok(a, text, strlen(text), NULL));
    char node_text[GATEWAY_AUTH_TOKEN_LEN + 1];
    uint8_t node_hash[32];
    gateway_auth_token_new(node_text, node_hash);
    assert_int_equal(router_tokens_add(tokens, hash, ROUTER_TOKEN_OPERATOR, "", 1, NULL, NULL), 0);
    assert_int_equal(router_tokens_add(tokens, node_hash, ROUTER_TOKEN_NODE, "n", 1, NULL, NULL), 0);
    router_tokens_stop(tokens); /* written, and now known to checks */
    char id[ROUTER_TOKENS_ID_LEN + 1], want[ROUTER_TOKENS_ID_LEN + 1];
    assert_true(gateway_auth_token_ok(a, text, strlen(text), id));
    router_tokens_id(hash, want);
    assert_string_equal(id, want);
    /* A node token is a token, but not an operator's. */
    router_token_scope_t scope = ROUTER_TOKEN_OPERATOR;
    assert_false(gateway_auth_token_ok(a, node_text, strlen(node_text), NULL));
    assert_true(gateway_auth_token_find(a, node_text, strlen(node_text), &scope, NULL));
    assert_int_equal(scope, ROUTER_TOKEN_NODE);
    /* Names: UTF-8 without control characters, 1..64 octets. */
    assert_true(gateway_auth_token_name_ok("caf\xc3\xa9 tablet", 12));
    assert_false(gateway_auth_token_name_ok("", 0));
    assert_false(gateway_auth_token_name_ok("a\tb", 3));
    assert_false(gateway_auth_token_name_ok("a\x7f", 2));
    assert_false(gateway_auth_token_name_ok("\xc3", 1));
    assert_false(gateway_auth_token_name_ok(text, ROUTER_TOKENS_NAME_MAX + 1));
    assert_false(gateway_auth_token_ok(a, text, strlen(text) - 1, NULL));
    text[7] = text[7] == 'a' ? 'b' : 'a';
    assert_false(gateway_auth_token_ok(a, text, strlen(text), NULL));
    text[7] = 'A'; /* uppercase hex is not a kith token */
    assert_false(gateway_auth_token_ok(a, text, strlen(text), NULL));

    char code[GATEWAY_AUTH_CODE_LEN + 1], old[GATEWAY_AUTH_CODE_LEN + 1];
    uint64_t hold = 0, hold2 = 0;
    assert_false(gateway_auth_code_take(a, "000000", 6, &hold)); /* none minted */
    gateway_auth_code_mint(a, old);
    gateway_auth_code_mint(a, code);
    assert_int_equal(strspn(code, "0123456789"), 6);
    if (strcmp(old, code) != 0)
        assert_false(gateway_auth_code_take(a, old, 6, &hold)); /* replaced */
    assert_false(gateway_auth_code_take(a, code, 5, &hold));
    assert_true(gateway_auth_code_take(a, code, 6, &hold));
    assert_false(gateway_auth_code_take(a, code, 6, &hold2)); /* held: as spent to others */
    assert_true(gateway_auth_code_release(a, hold)); /* no token was issued: usable again */
    assert_false(gateway_auth_code_release(a, hold)); /* once */
    assert_true(gateway_auth_code_take(a, code, 6, &hold2));
    assert_false(gateway_auth_code_release(a, hold)); /* an ended hold ends no newer one */
    assert_false(gateway_auth_code_take(a, code, 6, &hold));
    gateway_auth_code_spend(a, hold2); /* issued */
    assert_false(gateway_auth_code_release(a, hold2));
    assert_false(gateway_auth_code_take(a, code, 6, &hold)); /* spent */
    /* A code minted while one is held replaces it: releasing the held one
     * brings nothing back, and the new one stays. */
    gateway_auth_code_mint(a, old);
    assert_true(gateway_auth_code_take(a, old, 6, &hold));
    gateway_auth_code_mint(a, code);
    assert_false(gateway_auth_code_release(a, hold));
    if (strcmp(old, code) != 0)
        assert_false(gateway_auth_code_take(a, old, 6, &hold2));
    assert_true(gateway_auth_code_take(a, code, 6, &hold2));
    gateway_auth_destroy(&a);
    assert_null(a);
    router_loop_destroy(&loop);
    router_tokens_destroy(&tokens);
}

static void test_clients(void **state)
{
    (void) state;
    router_addr_t a;
    router_addr_err_t why;
    char c[GATEWAY_AUTH_CLIENT_MAX];
    assert_int_equal(router_addr_from_host("127.0.0.1", 5555, &a, &why), 0);
    gateway_auth_client(&a, c);
    assert_string_equal(c, "127.0.0.1");
    assert_true(router_addr_is_loopback(&a));
    assert_int_equal(router_addr_from_host("127.9.9.9", 1, &a, &why), 0);
    assert_true(router_addr_is_loopback(&a));
    assert_int_equal(router_addr_from_host("::1", 1, &a, &why), 0);
    assert_true(router_addr_is_loopback(&a));
    gateway_auth_client(&a, c);
    assert_string_equal(c, "::1");
    assert_int_equal(router_addr_from_host("::ffff:127.0.0.1", 1, &a, &why), 0);
    assert_true(router_addr_is_loopback(&a));
    assert_int_equal(router_addr_from_host("192.0.2.1", 1, &a, &why), 0);
    assert_false(router_addr_is_loopback(&a));
    assert_int_equal(router_addr_from_host("::ffff:192.0.2.1", 1, &a, &why), 0);
    assert_false(router_addr_is_loopback(&a));
    assert_false(router_addr_is_loopback(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer_order),
        cmocka_unit_test(test_token_ok_and_code),
        cmocka_unit_test(test_clients),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
