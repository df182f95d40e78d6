/* tests/config_limits_test.c — the DESIGN §10 limits of config.json reach
 * the HTTP gateway that enforces them: gateway_http_opts_from_config maps
 * every limits.http_* key (the deadlines and the attachment bound among
 * them), and the server keeps what it was given, its defaults only for 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "gateway/chat_frame.h"
#include "gateway/http_server.h"
#include "router/net/loop.h"
#include "router/state/config.h"

static void s_parse(router_config_t *cfg, const char *text)
{
    char err[ROUTER_CONFIG_ERR_MAX];
    if (router_config_parse(cfg, text, strlen(text), err, sizeof err) != 0)
        fail_msg("refused: %s", err);
}

/* Every value differs from its default, so a key left unmapped shows. */
static void test_every_http_limit_mapped(void **state)
{
    (void) state;
    router_config_t cfg;
    s_parse(&cfg, "{\"gateway\":{\"max_connections\":900},"
                  "\"limits\":{\"http_head_max\":2048,\"http_headers_max\":20,"
                  "\"http_body_max\":4096,\"http_attachment_body_max\":8192,"
                  "\"http_head_timeout_ms\":300,\"http_body_timeout_ms\":400,"
                  "\"http_idle_timeout_ms\":500,\"http_unauth_connections_max\":90,"
                  "\"http_unauth_per_source_max\":9,\"partial_frame_bytes_max\":65536,"
                  "\"conn_unsent_max\":32768}}");
    gateway_http_opts_t o;
    gateway_http_opts_from_config(&o, &cfg);
    assert_int_equal(o.max_connections, 900);
    assert_int_equal(o.head_max, 2048);
    assert_int_equal(o.headers_max, 20);
    assert_int_equal(o.body_max, 4096);
    assert_int_equal(o.attachment_body_max, 8192);
    assert_int_equal(o.head_timeout_ms, 300);
    assert_int_equal(o.body_timeout_ms, 400);
    assert_int_equal(o.idle_timeout_ms, 500);
    assert_int_equal(o.unauth_max, 90);
    assert_int_equal(o.unauth_per_source_max, 9);
    assert_int_equal(o.unauth_body_max, 65536);
    assert_int_equal(o.send_limit, 32768);
    assert_null(o.metrics);

    /* The defaults of config.json are the server's own. */
    router_config_defaults(&cfg);
    gateway_http_opts_from_config(&o, &cfg);
    assert_int_equal(o.head_timeout_ms, GATEWAY_HTTP_HEAD_TIMEOUT_MS);
    assert_int_equal(o.body_timeout_ms, GATEWAY_HTTP_BODY_TIMEOUT_MS);
    assert_int_equal(o.idle_timeout_ms, GATEWAY_HTTP_IDLE_TIMEOUT_MS);
    assert_int_equal(o.attachment_body_max, GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX);
    assert_int_equal(o.attachment_body_max, PROTO_HTTP_BODY_ATTACHMENT_MAX);
}

/* The server hands its routes the attachment bound it was configured
 * with; the constant is only the default of an unset option. */
static void test_server_keeps_the_attachment_bound(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.backend = ROUTER_LOOP_EPOLL};
    router_loop_t *loop = router_loop_new(&lo);
    assert_non_null(loop);
    gateway_http_t *g = gateway_http_new(loop, NULL);
    assert_non_null(g);
    assert_int_equal(gateway_http_attachment_body_max(g), PROTO_HTTP_BODY_ATTACHMENT_MAX);
    gateway_http_destroy(&g);
    gateway_http_opts_t o = {.attachment_body_max = 1000};
    g = gateway_http_new(loop, &o);
    assert_non_null(g);
    assert_int_equal(gateway_http_attachment_body_max(g), 1000);
    gateway_http_destroy(&g);
    router_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_http_limit_mapped),
        cmocka_unit_test(test_server_keeps_the_attachment_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
