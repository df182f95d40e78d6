/* tests/ws_handshake_test.c — the opening handshake: the RFC 6455 §1.3 and
 * §4.2.2 accept-key example, the §1.2/§1.3 request and response, every
 * refusal reason, subprotocol choice and the bearer entry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto/ws_handshake.h"

typedef struct {
    const char *name;
    const char *value;
} header_t;

static const char *const s_supported[] = {"kith.v1", "chat"};

/* Feeds a NULL-terminated header list to a server speaking `supported` and
 * checks it; returns the reason. */
static proto_ws_handshake_reason_t s_check_for(proto_ws_upgrade_t *up, const char *const *supported,
                                              size_t n_supported, const header_t *h)
{
    proto_ws_upgrade_init(up, supported, n_supported);
    for (; h->name; h++)
        proto_ws_upgrade_feed(up, h->name, strlen(h->name), h->value, strlen(h->value));
    int rc = proto_ws_upgrade_check(up);
    assert_int_equal(rc == 0, up->reason == PROTO_WS_HS_OK);
    return up->reason;
}

static proto_ws_handshake_reason_t s_check(proto_ws_upgrade_t *up, const header_t *h)
{
    return s_check_for(up, s_supported, 2, h);
}

#define BASE                                          \
    {"Host", "server.example.com"},                   \
    {"Upgrade", "websocket"},                         \
    {"Connection", "Upgrade"},                        \
    {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}

/* ------------------------------------------------------------------ accept */

static void test_accept_rfc_example(void **state)
{
    (void) state;
    char accept[PROTO_WS_ACCEPT_LEN + 1];
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    assert_int_equal(proto_ws_accept_compute(key, strlen(key), accept), 0);
    assert_string_equal(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_accept_rejects_bad_keys(void **state)
{
    (void) state;
    static const char *const bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ",          /* padding missing */
        "dGhlIHNhbXBsZSBub25jZQ=",         /* padding short */
        "dGhlIHNhbXBsZSBub25jZR==",        /* non-zero trailing bits */
        "dGhlIHNhbXBsZSBub25jZQ==AAAA",    /* 19 bytes */
        "dGhlIHNhbXBsZSBub25j",            /* 15 bytes */
        "dGhlIHNhbXBsZSBub25jZQ=a",        /* junk after padding */
        "dGhlIHNhbXBsZSBub25jZ!==",        /* not base64 */
        "dGhlIHNhbXBsZSBub25jZQ-_",        /* URL-safe alphabet */
        "dGhlIHNhbXBsZSB ub25jZQ=",        /* space inside */
    };
    char accept[PROTO_WS_ACCEPT_LEN + 1];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (proto_ws_accept_compute(bad[i], strlen(bad[i]), accept) != -1)
            fail_msg("key \"%s\" accepted", bad[i]);
}

/* ------------------------------------------------------------------ request */

/* The request of RFC 6455 §1.3 and the response it gets. */
static void test_rfc_request_and_response(void **state)
{
    (void) state;
    static const header_t req[] = {
        BASE,
        {"Origin", "http://example.com"},
        {"Sec-WebSocket-Protocol", "chat, superchat"},
        {"Sec-WebSocket-Version", "13"},
        {NULL, NULL},
    };
    proto_ws_upgrade_t up;
    assert_int_equal(s_check(&up, req), PROTO_WS_HS_OK);
    assert_string_equal(up.protocol, "chat");
    assert_null(up.bearer);
    char out[256];
    static const char want[] =
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        "Sec-WebSocket-Protocol: chat\r\n"
        "\r\n";
    assert_int_equal(proto_ws_upgrade_response(&up, out, sizeof out), (int) strlen(want));
    assert_string_equal(out, want);
    assert_int_equal(proto_ws_upgrade_response(&up, out, strlen(want)), -1);
    assert_int_equal(proto_ws_upgrade_response(&up, out, strlen(want) + 1), (int) strlen(want));
}

/* Values as browsers and other clients write them. */
static void test_header_variants(void **state)
{
    (void) state;
    static const header_t firefox[] = {
        {"host", "localhost"},
        {"UPGRADE", "WebSocket"},
        {"connection", "keep-alive, Upgrade"},
        {"sec-websocket-key", " dGhlIHNhbXBsZSBub25jZQ==\t"},
        {"SEC-WEBSOCKET-VERSION", " 13 "},
        {NULL, NULL},
    };
    proto_ws_upgrade_t up;
    assert_int_equal(s_check(&up, firefox), PROTO_WS_HS_OK);
    assert_null(up.protocol);
    assert_string_equal(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    char out[256];
    int n = proto_ws_upgrade_response(&up, out, sizeof out);
    assert_true(n > 0);
    assert_null(strstr(out, "Sec-WebSocket-Protocol"));

    /* Connection spread over lines, with empty list elements. */
    static const header_t lines[] = {
        {"Host", "h"},
        {"Upgrade", "h2c, websocket"},
        {"Connection", "keep-alive"},
        {"Connection", ",, upgrade ,"},
        {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
        {"Sec-WebSocket-Version", "13"},
        {NULL, NULL},
    };
    assert_int_equal(s_check(&up, lines), PROTO_WS_HS_OK);
}

static void test_refusals(void **state)
{
    (void) state;
    static const struct {
        proto_ws_handshake_reason_t want;
        int status;
        header_t h[10];
    } cases[] = {
        {PROTO_WS_HS_ERR_UPGRADE, 400,
         {{"Connection", "Upgrade"}, {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
          {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_UPGRADE, 400,
         {{"Upgrade", "websockets"}, {"Connection", "Upgrade"}, {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
          {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_CONNECTION, 400,
         {{"Upgrade", "websocket"}, {"Connection", "keep-alive"}, {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
          {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_CONNECTION, 400,
         {{"Upgrade", "websocket"}, {"Connection", "upgraded"}, {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
          {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_VERSION_MISSING, 400, {BASE, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_VERSION_REPEATED, 400,
         {BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_VERSION, 426, {BASE, {"Sec-WebSocket-Version", "8"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_VERSION, 426, {BASE, {"Sec-WebSocket-Version", "13, 8"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_VERSION, 426, {BASE, {"Sec-WebSocket-Version", "013"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_KEY_MISSING, 400,
         {{"Upgrade", "websocket"}, {"Connection", "Upgrade"}, {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_KEY_REPEATED, 400,
         {BASE, {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}, {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_KEY, 400,
         {{"Upgrade", "websocket"}, {"Connection", "Upgrade"}, {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j"},
          {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_KEY, 400,
         {{"Upgrade", "websocket"}, {"Connection", "Upgrade"}, {"Sec-WebSocket-Key", ""},
          {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_PROTOCOL, 400,
         {BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "chat, super chat"}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_PROTOCOL, 400,
         {BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "kith.v1, \"quoted\""}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_BEARER, 400,
         {BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "kith.v1, bearer."}, {NULL, NULL}}},
        {PROTO_WS_HS_ERR_BEARER, 400,
         {BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "bearer.a"},
          {"Sec-WebSocket-Protocol", "bearer.b"}, {NULL, NULL}}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        proto_ws_upgrade_t up;
        proto_ws_handshake_reason_t r = s_check(&up, cases[i].h);
        if (r != cases[i].want)
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, proto_ws_handshake_reason_str(r),
                     proto_ws_handshake_reason_str(cases[i].want));
        assert_int_equal(proto_ws_handshake_reason_status(r), cases[i].status);
        assert_null(up.protocol);
    }
    for (int r = PROTO_WS_HS_OK; r <= PROTO_WS_HS_ERR_BEARER; r++)
        assert_string_not_equal(proto_ws_handshake_reason_str((proto_ws_handshake_reason_t) r), "unknown reason");
    assert_int_equal(proto_ws_handshake_reason_status(PROTO_WS_HS_OK), 101);
}

/* ------------------------------------------------------------------ subprotocols */

static void test_protocol_choice(void **state)
{
    (void) state;
    proto_ws_upgrade_t up;
    /* The server's order wins over the client's. */
    static const header_t pref[] = {
        BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "chat, kith.v1"}, {NULL, NULL}};
    assert_int_equal(s_check(&up, pref), PROTO_WS_HS_OK);
    assert_string_equal(up.protocol, "kith.v1");
    /* Across header lines too. */
    static const header_t lines[] = {
        BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "chat"},
        {"Sec-WebSocket-Protocol", "other, kith.v1"}, {NULL, NULL}};
    assert_int_equal(s_check(&up, lines), PROTO_WS_HS_OK);
    assert_string_equal(up.protocol, "kith.v1");
    /* Names match case-sensitively; nothing offered that the server speaks. */
    static const header_t none[] = {
        BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "KITH.V1, Chat"}, {NULL, NULL}};
    assert_int_equal(s_check(&up, none), PROTO_WS_HS_OK);
    assert_null(up.protocol);
    /* No supported list at all. */
    static const header_t chat[] = {
        BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "chat"}, {NULL, NULL}};
    assert_int_equal(s_check_for(&up, NULL, 0, chat), PROTO_WS_HS_OK);
    assert_null(up.protocol);
}

/* DESIGN §5: a bearer token may ride in Sec-WebSocket-Protocol as
 * bearer.<token>; it is taken out and never echoed back. */
static void test_bearer_entry(void **state)
{
    (void) state;
    static const char token[] = "kith_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    static const header_t req[] = {
        BASE, {"Sec-WebSocket-Version", "13"},
        {"Sec-WebSocket-Protocol", "bearer.kith_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef, kith.v1"},
        {NULL, NULL}};
    proto_ws_upgrade_t up;
    assert_int_equal(s_check(&up, req), PROTO_WS_HS_OK);
    assert_int_equal(up.bearer_len, strlen(token));
    assert_memory_equal(up.bearer, token, up.bearer_len);
    assert_string_equal(up.protocol, "kith.v1");
    char out[256];
    assert_true(proto_ws_upgrade_response(&up, out, sizeof out) > 0);
    assert_null(strstr(out, "bearer"));
    assert_null(strstr(out, "kith_0123"));

    /* A server that lists a bearer. name still never selects the entry. */
    static const char *const odd[] = {"bearer.x"};
    static const header_t x[] = {
        BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "bearer.x"}, {NULL, NULL}};
    assert_int_equal(s_check_for(&up, odd, 1, x), PROTO_WS_HS_OK);
    assert_null(up.protocol);
    assert_int_equal(up.bearer_len, 1);

    /* Only the bearer entry offered: a token, no subprotocol. */
    static const header_t only[] = {
        BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", " bearer.abc "}, {NULL, NULL}};
    assert_int_equal(s_check(&up, only), PROTO_WS_HS_OK);
    assert_int_equal(up.bearer_len, 3);
    assert_memory_equal(up.bearer, "abc", 3);
    assert_null(up.protocol);
    /* "Bearer." is not the prefix: names are case-sensitive. */
    static const header_t caps[] = {
        BASE, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Protocol", "Bearer.abc"}, {NULL, NULL}};
    assert_int_equal(s_check(&up, caps), PROTO_WS_HS_OK);
    assert_null(up.bearer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_rfc_example),
        cmocka_unit_test(test_accept_rejects_bad_keys),
        cmocka_unit_test(test_rfc_request_and_response),
        cmocka_unit_test(test_header_variants),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_protocol_choice),
        cmocka_unit_test(test_bearer_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
