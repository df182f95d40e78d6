/* tests/config_test.c — router/config: DESIGN §4 defaults, every key good,
 * of the wrong type and out of range, unknown and duplicate keys at each
 * level, comments, bounds, overrides, cross-key rules and load policy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc_fail.h"
#include "router/net/addr.h"
#include "router/state/config.h"
#include "router/workers/broker.h"

/* Parses text (NUL-terminated) into *cfg; returns the rc, err filled. */
static int s_parse(router_config_t *cfg, const char *text, char *err, size_t errcap)
{
    return router_config_parse(cfg, text, strlen(text), err, errcap);
}

/* Asserts text is refused with an error starting with `prefix`. */
static void s_refused(const char *text, const char *prefix)
{
    router_config_t cfg;
    router_config_defaults(&cfg);
    char err[ROUTER_CONFIG_ERR_MAX] = "";
    if (s_parse(&cfg, text, err, sizeof err) == 0)
        fail_msg("accepted: %s", text);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("for %s\n  error: %s\n  wanted prefix: %s", text, err, prefix);
}

/* ------------------------------------------------------------ defaults */

static void test_defaults_match_design(void **state)
{
    (void) state;
    router_config_t c;
    router_config_defaults(&c);
    assert_string_equal(c.gateway.host, "127.0.0.1");
    assert_int_equal(c.gateway.port, 42617);
    assert_true(c.gateway.require_pairing);
    assert_true(c.gateway.allow_query_token);
    assert_false(c.gateway.echo);
    assert_string_equal(c.gateway.webhook_secret_env, "");
    assert_int_equal(c.gateway.max_connections, 10000);
    assert_int_equal(c.comms.mode, ROUTER_COMMS_TCP);
    assert_string_equal(c.comms.address, "127.0.0.1:4200");
    assert_string_equal(c.comms.advertise_address, "");
    assert_string_equal(c.comms.uds_path, "");
    assert_int_equal(c.comms.auth, ROUTER_COMMS_AUTH_ED25519);
    assert_true(c.comms.require_peer_auth);
    assert_string_equal(c.comms.event_address, "");
    assert_int_equal(c.comms.ack_timeout_ms, 30000);
    assert_int_equal(c.comms.inbox_capacity, 1024);
    assert_int_equal(c.comms.replay_window_s, 300);
    /* the online CPUs, at most 8 (WIRE §14.12) */
    assert_in_range(c.comms.crypto_threads, 1, ROUTER_CONFIG_CRYPTO_THREADS_DEFAULT);
    assert_string_equal(c.comms.session, "comms");
    assert_int_equal(c.workers.agent_threads, 2);
    assert_string_equal(c.workers.listen, "");
    assert_int_equal(c.workers.heartbeat_ms, 1000);
    assert_int_equal(c.workers.liveness, 3);
    assert_int_equal(c.agent.provider, ROUTER_AGENT_SCRIPTED);
    assert_string_equal(c.agent.base_url, "");
    assert_string_equal(c.agent.model, "");
    assert_string_equal(c.agent.api_key_env, "");
    assert_int_equal(c.agent.max_tool_iterations, 60);
    assert_int_equal(c.agent.max_history_messages, 1000);
    assert_int_equal(c.agent.turn_timeout_s, 600);
    assert_true(c.audit.enabled);
    assert_string_equal(c.audit.path, "audit.log");
    assert_string_equal(c.audit.hmac_key_env, "");
    assert_int_equal(c.audit.rotate_bytes, 64 * 1024 * 1024);
    assert_int_equal(c.audit.keep, 8);
    assert_int_equal(c.audit.query_scan_bytes, 64 * 1024 * 1024);
    /* DESIGN §10 */
    assert_int_equal(c.limits.envelope_frame_max, 1024 * 1024);
    assert_int_equal(c.limits.conn_unsent_max, 4 * 1024 * 1024);
    assert_int_equal(c.limits.conn_unsent_total_max, (size_t) 1 << 30);
    assert_int_equal(c.limits.comms_connections_max, 10000);
    assert_int_equal(c.limits.http_head_max, 16 * 1024);
    assert_int_equal(c.limits.http_headers_max, 100);
    assert_int_equal(c.limits.http_body_max, 1024 * 1024);
    assert_int_equal(c.limits.http_attachment_body_max, 25 * 1024 * 1024);
    assert_int_equal(c.limits.http_head_timeout_ms, 10000);  /* WIRE §11.2 request_timeout */
    assert_int_equal(c.limits.http_body_timeout_ms, 60000);
    assert_int_equal(c.limits.http_idle_timeout_ms, 60000);  /* WIRE §11.2 keep-alive */
    assert_int_equal(c.limits.ws_message_max, 1024 * 1024);
    assert_int_equal(c.limits.ws_preauth_frame_max, 64 * 1024);
    assert_int_equal(c.limits.session_queue_max, 16);
    assert_int_equal(c.limits.sse_ring_events, 4096);
    assert_int_equal(c.limits.sessions_max, 100000);
    assert_int_equal(c.limits.http_unauth_connections_max, 2500);
    assert_int_equal(c.limits.http_unauth_per_source_max, 32);
    assert_int_equal(c.limits.session_messages_max, 10000);
    assert_int_equal(c.limits.session_bytes_max, 64 * 1024 * 1024);
    assert_true(c.limits.sessions_bytes_max == 1ull << 30);
}

/* DESIGN §4's example block, verbatim, is a valid config equal to the
 * defaults. */
static void test_design_example_is_the_defaults(void **state)
{
    (void) state;
    static const char design[] =
        "{\n"
        "  \"gateway\": { \"host\": \"127.0.0.1\", \"port\": 42617, \"require_pairing\": true,\n"
        "               \"allow_query_token\": true, \"echo\": false, \"webhook_secret_env\": null,\n"
        "               \"max_connections\": 10000 },\n"
        "  \"comms\":   { \"mode\": \"tcp\", \"address\": \"127.0.0.1:4200\", \"advertise_address\": null,\n"
        "               \"uds_path\": null, \"auth\": \"ed25519\", \"require_peer_auth\": true,\n"
        "               \"event_address\": null, \"ack_timeout_ms\": 30000, \"inbox_capacity\": 1024,\n"
        "               \"replay_window_s\": 300, \"session\": \"comms\" },\n"
        "  \"workers\": { \"agent_threads\": 2, \"listen\": null, \"heartbeat_ms\": 1000, \"liveness\": 3 },\n"
        "  \"agent\":   { \"provider\": \"scripted\", \"base_url\": null, \"model\": null, \"api_key_env\": null,\n"
        "               \"max_tool_iterations\": 60, \"max_history_messages\": 1000, \"turn_timeout_s\": 600 },\n"
        "  \"audit\":   { \"enabled\": true, \"path\": \"audit.log\", \"hmac_key_env\": null }\n"
        "}\n";
    router_config_t parsed, defaults;
    router_config_defaults(&defaults);
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&parsed, design, err, sizeof err), 0);
    char *a = router_config_to_json(&parsed), *b = router_config_to_json(&defaults);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a, b);
    free(a);
    free(b);
}

static void test_empty_object_and_empty_sections(void **state)
{
    (void) state;
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, "{}", err, sizeof err), 0);
    assert_int_equal(c.gateway.port, 42617);
    assert_int_equal(
        s_parse(&c, "{\"gateway\":{},\"comms\":{},\"workers\":{},\"agent\":{},\"audit\":{}}", err,
                sizeof err),
        0);
    assert_int_equal(c.comms.inbox_capacity, 1024);
}

/* ------------------------------------------------------------ every key */

typedef struct {
    const char *section;
    const char *key;
    const char *good;     /* a valid JSON value other than the default */
    const char *bad_type; /* a JSON value of the wrong type */
    const char *bad;      /* right type, out of range or wrong syntax; NULL for booleans */
    const char *with;     /* other keys of the section the good value needs, or NULL */
} s_case_t;

static const s_case_t s_cases[] = {
    {"gateway", "host", "\"::1\"", "5", "\"bad host!\"", NULL},
    {"gateway", "port", "8080", "\"8080\"", "65536", NULL},
    {"gateway", "require_pairing", "false", "1", NULL, NULL},
    {"gateway", "allow_query_token", "false", "\"no\"", NULL, NULL},
    {"gateway", "echo", "true", "null", NULL, NULL},
    {"gateway", "webhook_secret_env", "\"KITH_WEBHOOK_SECRET\"", "5", "\"1BAD\"", NULL},
    {"gateway", "max_connections", "500", "true", "0", NULL},
    {"comms", "mode", "\"inproc\"", "1", "\"udp\"", NULL},
    {"comms", "address", "\"[::1]:4300\"", "4300", "\"localhost\"", NULL},
    {"comms", "advertise_address", "\"node-1.example.com:4200\"", "[]", "\"node.example.com\"",
     NULL},
    {"comms", "uds_path", "\"/run/kith/comms.sock\"", "{}", "\"relative.sock\"", NULL},
    {"comms", "auth", "\"none\"", "false", "\"rsa\"", NULL},
    {"comms", "require_peer_auth", "false", "\"false\"", NULL, NULL},
    {"comms", "event_address", "\"127.0.0.1:4300\"", "7", "\"127.0.0.1\"", "\"auth\": \"none\""},
    {"comms", "ack_timeout_ms", "5000", "\"5s\"", "0", NULL},
    {"comms", "inbox_capacity", "1048576", "\"x\"", "1048577", NULL},
    {"comms", "replay_window_s", "60", "1.5", "86401", NULL},
    {"comms", "session", "\"ops.comms-1\"", "1", "\"a b\"", NULL},
    {"comms", "crypto_threads", "0", "\"2\"", "65", NULL},
    {"workers", "agent_threads", "0", "\"2\"", "257", NULL},
    {"workers", "listen", "\"tcp://127.0.0.1:5555\"", "1", "\"http://x\"", NULL},
    {"workers", "heartbeat_ms", "250", "[1]", "9", NULL},
    {"workers", "liveness", "5", "true", "0", NULL},
    {"agent", "provider", "\"openai\"", "1", "\"anthropic\"", NULL},
    {"agent", "base_url", "\"http://localhost:11434/v1\"", "1", "\"ftp://x\"", NULL},
    {"agent", "model", "\"llama3\"", "1", "\"\"", NULL},
    {"agent", "api_key_env", "\"OPENAI_API_KEY\"", "1", "\"OPENAI-KEY\"", NULL},
    {"agent", "max_tool_iterations", "10", "\"10\"", "0", NULL},
    {"agent", "max_history_messages", "50", "null", "1000001", NULL},
    {"agent", "turn_timeout_s", "30", "\"30\"", "86401", NULL},
    {"audit", "enabled", "false", "0", NULL, NULL},
    {"audit", "path", "\"/var/log/kith/audit.log\"", "1", "\"logs/\"", NULL},
    {"audit", "hmac_key_env", "\"AUDIT_KEY\"", "1", "\"A B\"", NULL},
    {"audit", "rotate_bytes", "0", "\"64M\"", "1125899906842625", NULL},
    {"audit", "keep", "1000", "-1", "1001", NULL},
    {"audit", "query_scan_bytes", "0", "\"64M\"", "1125899906842625", NULL},
    {"limits", "session_queue_max", "64", "\"64\"", "0", NULL},
    {"limits", "sessions_max", "5", "\"5\"", "0", NULL},
    {"limits", "http_unauth_connections_max", "3000", "\"3000\"", "0", NULL},
    {"limits", "http_unauth_per_source_max", "8", "[8]", "1048577", NULL},
    {"limits", "session_messages_max", "2000", "true", "100000001", NULL},
    {"limits", "session_bytes_max", "1048576", "\"1\"", "4095", NULL},
    {"limits", "sessions_bytes_max", "17179869184", "[]", "4095", NULL},
};

/* {"<section>": {[with, ]"<key>": <value>}} */
static void s_doc(const s_case_t *c, const char *value, char *out, size_t cap)
{
    snprintf(out, cap, "{\"%s\": {%s%s\"%s\": %s}}", c->section, c->with ? c->with : "",
             c->with ? ", " : "", c->key, value);
}

static void test_every_key_good(void **state)
{
    (void) state;
    for (size_t i = 0; i < sizeof s_cases / sizeof s_cases[0]; i++) {
        const s_case_t *c = &s_cases[i];
        char doc[512], err[ROUTER_CONFIG_ERR_MAX], want[256];
        s_doc(c, c->good, doc, sizeof doc);
        router_config_t cfg;
        if (s_parse(&cfg, doc, err, sizeof err) != 0)
            fail_msg("refused %s: %s", doc, err);
        /* The value reads back as written. */
        char *json = router_config_to_json(&cfg);
        assert_non_null(json);
        snprintf(want, sizeof want, "\"%s\": %s", c->key, c->good);
        if (!strstr(json, want))
            fail_msg("%s.%s: %s not in\n%s", c->section, c->key, want, json);
        free(json);
    }
}

static void test_every_key_wrong_type(void **state)
{
    (void) state;
    for (size_t i = 0; i < sizeof s_cases / sizeof s_cases[0]; i++) {
        const s_case_t *c = &s_cases[i];
        char doc[512], prefix[128];
        s_doc(c, c->bad_type, doc, sizeof doc);
        snprintf(prefix, sizeof prefix, "%s.%s: expected ", c->section, c->key);
        s_refused(doc, prefix);
    }
}

static void test_every_key_out_of_range(void **state)
{
    (void) state;
    for (size_t i = 0; i < sizeof s_cases / sizeof s_cases[0]; i++) {
        const s_case_t *c = &s_cases[i];
        if (!c->bad)
            continue;
        char doc[512], prefix[128];
        s_doc(c, c->bad, doc, sizeof doc);
        snprintf(prefix, sizeof prefix, "%s.%s: expected ", c->section, c->key);
        s_refused(doc, prefix);
    }
}

static void test_error_text_names_key_value_and_line(void **state)
{
    (void) state;
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, "{\n  \"comms\": {\n    \"inbox_capacity\": \"x\"\n  }\n}", err,
                             sizeof err),
                     -1);
    assert_string_equal(err, "comms.inbox_capacity: expected an integer 1..1048576, got \"x\" "
                             "(line 3, column 26)");
}

static void test_integer_forms(void **state)
{
    (void) state;
    s_refused("{\"gateway\":{\"port\":1e3}}", "gateway.port: expected an integer 0..65535, got 1e3");
    s_refused("{\"gateway\":{\"port\":80.0}}", "gateway.port: expected an integer");
    s_refused("{\"gateway\":{\"port\":-1}}", "gateway.port: expected an integer");
    s_refused("{\"gateway\":{\"port\":99999999999999999999999999}}",
              "gateway.port: expected an integer 0..65535, got 99999999999999999999999999");
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, "{\"gateway\":{\"port\":65535,\"max_connections\":1048576}}", err,
                             sizeof err),
                     0);
    assert_int_equal(c.gateway.port, 65535);
    assert_int_equal(c.gateway.max_connections, 1048576);
}

static void test_nullable_and_not(void **state)
{
    (void) state;
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, "{\"agent\":{\"model\":\"m\"}}", err, sizeof err), 0);
    assert_string_equal(c.agent.model, "m");
    assert_int_equal(s_parse(&c, "{\"agent\":{\"model\":null}}", err, sizeof err), 0);
    assert_string_equal(c.agent.model, "");
    s_refused("{\"gateway\":{\"host\":null}}", "gateway.host: expected ");
    s_refused("{\"comms\":{\"session\":null}}", "comms.session: expected ");
    s_refused("{\"audit\":{\"path\":null}}", "audit.path: expected ");
}

static void test_strings_bounded_and_clean(void **state)
{
    (void) state;
    char doc[4096];
    char model[ROUTER_CONFIG_MODEL_CAP + 1];
    memset(model, 'm', sizeof model - 1);
    model[sizeof model - 1] = '\0';
    snprintf(doc, sizeof doc, "{\"agent\":{\"model\":\"%s\"}}", model);
    s_refused(doc, "agent.model: expected a string or null, got \"mmm");
    model[ROUTER_CONFIG_MODEL_CAP - 1] = '\0'; /* exactly the maximum */
    snprintf(doc, sizeof doc, "{\"agent\":{\"model\":\"%s\"}}", model);
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, doc, err, sizeof err), 0);
    assert_int_equal(strlen(c.agent.model), ROUTER_CONFIG_MODEL_CAP - 1);
    s_refused("{\"agent\":{\"model\":\"a\\u0000b\"}}", "agent.model: expected");
    s_refused("{\"agent\":{\"model\":\"a\\nb\"}}", "agent.model: expected");
    /* A socket path longer than sun_path allows. */
    char path[200] = "/";
    memset(path + 1, 'p', 150);
    path[151] = '\0';
    snprintf(doc, sizeof doc, "{\"comms\":{\"uds_path\":\"%s\"}}", path);
    s_refused(doc, "comms.uds_path: expected an absolute socket path or null");
}

static void test_addresses(void **state)
{
    (void) state;
    static const char *const good[] = {"127.0.0.1:4200", "[::1]:4200", "[fe80::1]:1", "localhost:0",
                                       "node-1.example.com:65535", "0.0.0.0:80"};
    static const char *const bad[] = {"::1:4200", "127.0.0.1", "[::1]", "[::1]4200", ":80",
                                      "host:", "host:65536", "host:-1", "host:8o", "1.2.3:80",
                                      "bad_host:80", "-a.com:80", "a..b:80", "[127.0.0.1]:80",
                                      "host:123456"};
    /* the config's check: router/net/addr's splitter, and a host that may be a name */
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        router_hostport_t hp;
        router_addr_err_t e;
        if (router_addr_split(good[i], &hp, &e) != 0 || !router_addr_host_valid(hp.host))
            fail_msg("refused %s", good[i]);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        router_hostport_t hp;
        router_addr_err_t e;
        if (router_addr_split(bad[i], &hp, &e) == 0 && router_addr_host_valid(hp.host))
            fail_msg("accepted %s", bad[i]);
    }
    router_hostport_t hp = {0};
    assert_int_equal(router_addr_split("[::1]:4200", &hp, NULL), 0);
    assert_string_equal(hp.host, "::1");
    assert_int_equal(hp.port, 4200);
}

/* ------------------------------------------------------------ structure */

static void test_unknown_keys_at_each_level(void **state)
{
    (void) state;
    s_refused("{\"gatway\":{}}",
              "gatway: unknown key (did you mean gateway? known top-level keys: gateway, comms");
    /* limits has too many keys for one line: the list was cut mid-name
     * ("…, first_frame_timeout_ms, frame_t)"); the line says where they are. */
    s_refused("{\"limits\":{\"nope\":1}}",
              "limits.nope: unknown key (kith config check --print lists the 31 keys of limits) "
              "(line 1, column 18)");
    /* A near miss is named: a letter missing, two swapped, one wrong. */
    s_refused("{\"limits\":{\"sesion_queue_max\":1}}",
              "limits.sesion_queue_max: unknown key (did you mean session_queue_max? kith config "
              "check --print lists the 31 keys of limits)");
    s_refused("{\"agent\":{\"modle\":\"m\"}}", "agent.modle: unknown key (did you mean model? known: ");
    s_refused("{\"gateway\":{\"hots\":\"::1\"}}", "gateway.hots: unknown key (did you mean host? ");
    s_refused("{\"comms\":{\"inbox\":1}}", "comms.inbox: unknown key (known: mode, ");
    static const char *const sections[] = {"gateway", "comms", "workers", "agent", "audit"};
    for (size_t i = 0; i < 5; i++) {
        char doc[128], prefix[128];
        snprintf(doc, sizeof doc, "{\"%s\":{\"nope\":1}}", sections[i]);
        snprintf(prefix, sizeof prefix, "%s.nope: unknown key (known: ", sections[i]);
        s_refused(doc, prefix);
    }
    /* Odd bytes in a key are shown escaped, never raw. */
    s_refused("{\"comms\":{\"a\\u001bb\":1}}", "comms.\"a\\x1bb\": unknown key");
}

static void test_wrong_shapes(void **state)
{
    (void) state;
    s_refused("[]", "the document: expected an object, got an array");
    s_refused("42", "the document: expected an object, got 42");
    s_refused("\"x\"", "the document: expected an object");
    s_refused("{\"comms\": 1}", "comms: expected an object, got 1");
    s_refused("{\"comms\": []}", "comms: expected an object, got an array");
    s_refused("{\"comms\": {\"mode\": {\"x\": 1}}}", "comms.mode: expected one of \"tcp\", "
                                                     "\"uds\", \"inproc\", \"none\", got an object");
}

static void test_duplicate_keys(void **state)
{
    (void) state;
    s_refused("{\"comms\":{}, \"comms\":{}}", "comms: duplicate key");
    s_refused("{\"gateway\":{\"port\":1, \"port\":2}}", "gateway.port: duplicate key");
}

static void test_comments(void **state)
{
    (void) state;
    static const char doc[] = "// kith config\n"
                              "{\n"
                              "  /* the HTTP side */\n"
                              "  \"gateway\": { \"port\": 8080 }, // inline\n"
                              "  \"comms\": { /* nothing */ }\n"
                              "}\n"
                              "// trailing comment\n";
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, doc, err, sizeof err), 0);
    assert_int_equal(c.gateway.port, 8080);
    s_refused("{\"gateway\": /* unterminated }", "syntax error: ");
}

static void test_syntax_errors(void **state)
{
    (void) state;
    s_refused("", "syntax error: ");
    s_refused("{", "syntax error: ");
    s_refused("{\"gateway\":{\"port\":1,}}", "syntax error: ");
    s_refused("{} {}", "syntax error: ");
    s_refused("{\"agent\":{\"model\":\"\xff\"}}", "syntax error: ");
}

static void test_deep_nesting_refused_at_once(void **state)
{
    (void) state;
    size_t n = 200000;
    char *doc = malloc(n + 1);
    assert_non_null(doc);
    memset(doc, '[', n);
    doc[n] = '\0';
    s_refused(doc, "the document: expected an object, got an array (line 1, column 2)");
    memcpy(doc, "{\"comms\":", 9);
    s_refused(doc, "comms: expected an object, got an array");
    free(doc);
}

static void test_size_bound(void **state)
{
    (void) state;
    size_t n = ROUTER_CONFIG_FILE_MAX + 1;
    char *doc = malloc(n + 1);
    assert_non_null(doc);
    memset(doc, ' ', n);
    doc[0] = '{';
    doc[n - 1] = '}';
    doc[n] = '\0';
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(router_config_parse(&c, doc, n, err, sizeof err), -1);
    assert_non_null(strstr(err, "more than"));
    /* One byte less is fine. */
    doc[n - 2] = '}';
    assert_int_equal(router_config_parse(&c, doc, n - 1, err, sizeof err), 0);
    free(doc);
}

static void test_refusal_leaves_config_untouched(void **state)
{
    (void) state;
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, "{\"gateway\":{\"port\":8080}}", err, sizeof err), 0);
    char *before = router_config_to_json(&c);
    assert_int_equal(s_parse(&c, "{\"gateway\":{\"port\":9090, \"echo\": 3}}", err, sizeof err), -1);
    char *after = router_config_to_json(&c);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

static void test_cross_key_rules(void **state)
{
    (void) state;
    s_refused("{\"comms\":{\"mode\":\"uds\"}}", "comms.uds_path: required when comms.mode is \"uds\"");
    s_refused("{\"comms\":{\"event_address\":\"/tmp/ev.sock\"}}",
              "comms.event_address: plain events need comms.auth \"none\"");
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(
        s_parse(&c, "{\"comms\":{\"mode\":\"uds\",\"uds_path\":\"/run/k.sock\"}}", err, sizeof err),
        0);
    assert_int_equal(c.comms.mode, ROUTER_COMMS_UDS);
    assert_int_equal(s_parse(&c, "{\"comms\":{\"auth\":\"none\",\"event_address\":\"/tmp/ev.sock\"}}",
                             err, sizeof err),
                     0);
    assert_string_equal(c.comms.event_address, "/tmp/ev.sock");
    assert_int_equal(c.comms.auth, ROUTER_COMMS_AUTH_NONE);
}

/* What a listener binds is an address the daemon can bind: an IP literal
 * or localhost, never a name to look up. The check used to take any host
 * name here (as for comms.advertise_address, which peers dial), so
 * `kith config check` passed a file that `kith daemon` then refused. */
/* Every limit WIRE.md tells an operator to set is a key config.json
 * takes: limits.session_queue_max (§19.5) was refused as unknown. */
static void test_session_queue_max(void **state)
{
    (void) state;
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, "{\"limits\":{\"session_queue_max\":64}}", err, sizeof err), 0);
    assert_int_equal(c.limits.session_queue_max, 64);
    s_refused("{\"limits\":{\"session_queue_max\":65537}}",
              "limits.session_queue_max: expected an integer 1..65536, got 65537");
}

static void test_listen_hosts(void **state)
{
    (void) state;
    s_refused("{\"gateway\":{\"host\":\"example.com\"}}",
              "gateway.host: expected an IP address or localhost (the address to listen on), "
              "got \"example.com\" (a listener binds an address; kith looks no name up for it)");
    s_refused("{\"gateway\":{\"host\":\"[::1]\"}}",
              "gateway.host: expected an IP address or localhost (the address to listen on), "
              "got \"[::1]\" (an IPv6 address here goes without brackets)");
    s_refused("{\"comms\":{\"address\":\"node-1.example.com:4200\"}}",
              "comms.address: expected \"host:port\" to listen on (host an IP address or "
              "localhost; IPv6 as \"[::1]:4200\"), got \"node-1.example.com:4200\" (host must be");
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    static const char *const good[] = {
        "{\"gateway\":{\"host\":\"localhost\"},\"comms\":{\"address\":\"localhost:4300\"}}",
        "{\"gateway\":{\"host\":\"::1\"},\"comms\":{\"address\":\"[::1]:4300\"}}",
        "{\"gateway\":{\"host\":\"0.0.0.0\"},\"comms\":{\"address\":\"[::]:4300\"}}",
        /* a name stays right where peers are told where to dial */
        "{\"comms\":{\"advertise_address\":\"node-1.example.com:4200\"}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (s_parse(&c, good[i], err, sizeof err) != 0)
            fail_msg("refused %s: %s", good[i], err);
    assert_int_equal(router_config_set(&c, "gateway.host", "gateway.example", err, sizeof err), -1);
    assert_non_null(strstr(err, "kith looks no name up for it"));
}

/* Two of the daemon's listeners on one address: the daemon's second bind
 * failed with "Address already in use; another process listens there",
 * and `kith config check` said ok. Now the check names both keys. */
static void test_listeners_collide(void **state)
{
    (void) state;
    s_refused("{\"comms\":{\"address\":\"127.0.0.1:42617\"}}",
              "comms.address: 127.0.0.1:42617 would listen where gateway.port does "
              "(127.0.0.1:42617); give each listener an address of its own");
    s_refused("{\"gateway\":{\"port\":4200}}",
              "comms.address: 127.0.0.1:4200 would listen where gateway.port does");
    s_refused("{\"gateway\":{\"host\":\"localhost\",\"port\":4200}}",
              "comms.address: 127.0.0.1:4200 would listen where gateway.port does");
    /* a wildcard covers its family; [::] listens dual-stack, so IPv4 too */
    s_refused("{\"comms\":{\"address\":\"0.0.0.0:42617\"}}", "comms.address: 0.0.0.0:42617 would");
    s_refused("{\"comms\":{\"address\":\"[::]:42617\"}}", "comms.address: [::]:42617 would");
    s_refused("{\"gateway\":{\"host\":\"::\",\"port\":4200}}", "comms.address: 127.0.0.1:4200 would");
    s_refused("{\"comms\":{\"auth\":\"none\",\"event_address\":\"tcp://localhost:4200\"}}",
              "comms.event_address: 127.0.0.1:4200 would listen where comms.address does");
    s_refused("{\"comms\":{\"auth\":\"none\",\"uds_path\":\"/run/k.sock\","
              "\"event_address\":\"uds:///run/k.sock\"}}",
              "comms.event_address: /run/k.sock would listen where comms.uds_path does");
    s_refused("{\"workers\":{\"listen\":\"tcp://*:42617\"}}",
              "workers.listen: 0.0.0.0:42617 would listen where gateway.port does");
    s_refused("{\"workers\":{\"listen\":\"tcp://127.0.0.1:4200\"}}",
              "workers.listen: 127.0.0.1:4200 would listen where comms.address does");
    s_refused("{\"comms\":{\"uds_path\":\"/run/k.sock\"},\"workers\":{\"listen\":\"ipc:///run/k.sock\"}}",
              "workers.listen: /run/k.sock would listen where comms.uds_path does");
    /* the daemon binds from its working directory, / under systemd */
    s_refused("{\"workers\":{\"listen\":\"ipc://run/w.sock\"}}",
              "workers.listen: expected a ZeroMQ endpoint (tcp://, ipc:// or inproc://) or null, "
              "got \"ipc://run/w.sock\" (an ipc:// socket path must be absolute)");
    s_refused("{\"workers\":{\"listen\":\"" ROUTER_BROKER_INPROC "\"}}",
              "workers.listen: " ROUTER_BROKER_INPROC " is the embedded workers' own endpoint");

    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    static const char *const good[] = {
        /* another address, another family, port 0 (the kernel picks), comms off */
        "{\"comms\":{\"address\":\"127.0.0.2:42617\"}}",
        "{\"comms\":{\"address\":\"[::1]:42617\"}}",
        "{\"gateway\":{\"host\":\"0.0.0.0\"},\"comms\":{\"address\":\"[::1]:42617\"}}",
        "{\"gateway\":{\"port\":0},\"comms\":{\"address\":\"127.0.0.1:0\"}}",
        "{\"gateway\":{\"port\":4200},\"comms\":{\"mode\":\"none\"}}",
        "{\"gateway\":{\"port\":4200},\"comms\":{\"mode\":\"uds\",\"uds_path\":\"/run/k.sock\"}}",
        /* the event listener is not opened without comms.auth "none" */
        "{\"comms\":{\"mode\":\"none\",\"auth\":\"none\",\"event_address\":\"127.0.0.1:4200\"},"
        "\"gateway\":{\"port\":4200}}",
        /* ZeroMQ addresses kith cannot compare are left to ZeroMQ */
        "{\"workers\":{\"listen\":\"tcp://lo:42617\"}}",
        "{\"workers\":{\"listen\":\"tcp://127.0.0.1:*\"}}",
        "{\"workers\":{\"listen\":\"inproc://kith.remote\"}}",
        "{\"workers\":{\"listen\":\"ipc:///run/w.sock\"}}",
        "{\"workers\":{\"listen\":\"ipc://@kith-workers\"}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (s_parse(&c, good[i], err, sizeof err) != 0)
            fail_msg("refused %s: %s", good[i], err);
    /* --port on the command line meets the same rule (router_config_check) */
    router_config_defaults(&c);
    assert_int_equal(router_config_set(&c, "gateway.port", "4200", err, sizeof err), 0);
    assert_int_equal(router_config_check(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "would listen where gateway.port does"));
}

static void test_to_json_round_trip(void **state)
{
    (void) state;
    router_config_t a, b;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(
        s_parse(&a,
                "{\"gateway\":{\"host\":\"::\",\"port\":1,\"echo\":true,\"webhook_secret_env\":\"W\"},"
                "\"comms\":{\"mode\":\"none\",\"auth\":\"none\",\"event_address\":\"[::1]:9\"},"
                "\"agent\":{\"provider\":\"openai\",\"model\":\"gpt \\\"x\\\"\"}}",
                err, sizeof err),
        0);
    char *ja = router_config_to_json(&a);
    assert_non_null(ja);
    assert_int_equal(s_parse(&b, ja, err, sizeof err), 0);
    char *jb = router_config_to_json(&b);
    assert_string_equal(ja, jb);
    assert_string_equal(b.agent.model, "gpt \"x\"");
    free(ja);
    free(jb);
}

/* ------------------------------------------------------------ overrides */

static void test_set_from_command_line(void **state)
{
    (void) state;
    router_config_t c;
    router_config_defaults(&c);
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(router_config_set(&c, "gateway.port", "8088", err, sizeof err), 0);
    assert_int_equal(c.gateway.port, 8088);
    assert_int_equal(router_config_set(&c, "gateway.host", "0.0.0.0", err, sizeof err), 0);
    assert_string_equal(c.gateway.host, "0.0.0.0");
    assert_int_equal(router_config_set(&c, "gateway.echo", "true", err, sizeof err), 0);
    assert_true(c.gateway.echo);
    assert_int_equal(router_config_set(&c, "agent.model", "m1", err, sizeof err), 0);
    assert_int_equal(router_config_set(&c, "agent.model", "null", err, sizeof err), 0);
    assert_string_equal(c.agent.model, "");
    assert_int_equal(router_config_set(&c, "comms.mode", "none", err, sizeof err), 0);
    assert_int_equal(c.comms.mode, ROUTER_COMMS_NONE);

    assert_int_equal(router_config_set(&c, "gateway.port", "80x", err, sizeof err), -1);
    assert_string_equal(err, "gateway.port: expected an integer 0..65535, got 80x");
    assert_int_equal(c.gateway.port, 8088);
    assert_int_equal(router_config_set(&c, "gateway.echo", "yes", err, sizeof err), -1);
    assert_int_equal(router_config_set(&c, "gateway.nope", "1", err, sizeof err), -1);
    assert_string_equal(err, "gateway.nope: no such configuration key");
    assert_int_equal(router_config_set(&c, "port", "1", err, sizeof err), -1);
    /* Command-line text is checked for UTF-8, as yajl checks the file. */
    assert_int_equal(router_config_set(&c, "agent.model", "caf\xe9", err, sizeof err), -1);
    assert_non_null(strstr(err, "not UTF-8"));
    assert_int_equal(router_config_set(&c, "agent.model", "caf\xc3\xa9", err, sizeof err), 0);
}

/* ------------------------------------------------------------ files */

static void s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_load_policy(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-config-test-XXXXXX";
    assert_non_null(mkdtemp(home));
    char path[512], err[ROUTER_CONFIG_ERR_MAX];
    router_config_t c;
    bool used = true;

    /* No file and no --config: the defaults. */
    assert_int_equal(router_config_load(&c, home, NULL, &used, err, sizeof err), 0);
    assert_false(used);
    assert_int_equal(c.gateway.port, 42617);

    /* An explicit --config that is missing is an error naming it. */
    snprintf(path, sizeof path, "%s/missing.json", home);
    assert_int_equal(router_config_load(&c, home, path, &used, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "no such file"));

    /* <home>/config.json is read when present. */
    snprintf(path, sizeof path, "%s/config.json", home);
    s_write(path, "{\"gateway\":{\"port\":1234}}");
    assert_int_equal(router_config_load(&c, home, NULL, &used, err, sizeof err), 0);
    assert_true(used);
    assert_int_equal(c.gateway.port, 1234);

    /* A bad one is an error that starts with its path (not the defaults). */
    s_write(path, "{\"gateway\":{\"port\":\"x\"}}");
    assert_int_equal(router_config_load(&c, home, NULL, &used, err, sizeof err), -1);
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
    assert_non_null(strstr(err, "gateway.port: expected an integer 0..65535, got \"x\""));

    /* A directory where the file should be. */
    unlink(path);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(router_config_load(&c, home, NULL, &used, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file"));
    rmdir(path);
    rmdir(home);
}

/* ------------------------------------------------------------ limits (DESIGN §10) */

static const s_case_t s_limits_cases[] = {
    {"limits", "envelope_frame_max", "65536", "\"1MiB\"", "1048577", NULL},
    {"limits", "conn_unsent_max", "1048576", "true", "1023", NULL},
    {"limits", "conn_unsent_total_max", "17592186044416", "\"1GiB\"", "1048575", NULL},
    {"limits", "comms_connections_max", "20000", "null", "0", NULL},
    {"limits", "comms_unauth_connections_max", "300", "\"300\"", "0", NULL},
    {"limits", "comms_unauth_per_source_max", "4", "[4]", "0", NULL},
    {"limits", "partial_frame_bytes_max", "4294967295", "{}", "4294967296", NULL},
    {"limits", "first_frame_timeout_ms", "500", "0.5", "0", NULL},
    {"limits", "frame_timeout_ms", "1000", "\"1s\"", "3600001", NULL},
    {"limits", "comms_idle_timeout_ms", "60000", "false", "86400001", NULL},
    {"limits", "event_connections_max", "8", "\"8\"", "1048577", NULL},
    {"limits", "workers_pending_max", "128", "\"128\"", "65537", NULL},
    {"limits", "workers_pending_per_source_max", "2", "2.5", "0", NULL},
    {"limits", "http_head_max", "8192", "1e4", "1023", NULL},
    /* the HTTP parser holds at most 100 field lines (PROTO_HTTP_HEADERS_MAX):
     * 101..10000 passed the check and stopped the gateway at start */
    {"limits", "http_headers_max", "50", "null", "101", NULL},
    {"limits", "http_body_max", "2097152", "true", "0", NULL},
    {"limits", "ws_message_max", "65536", "\"x\"", "1073741825", NULL},
    {"limits", "ws_preauth_frame_max", "4096", "[]", "124", NULL},
    /* DESIGN §10 "all configurable": in the struct, but no key set them */
    {"limits", "http_attachment_body_max", "1024", "\"25M\"", "1073741825", NULL},
    {"limits", "http_head_timeout_ms", "300", "\"10s\"", "99", NULL},
    {"limits", "http_body_timeout_ms", "3600000", "1.5", "3600001", NULL},
    {"limits", "http_idle_timeout_ms", "100", "null", "0", NULL},
};

static void test_limits_keys(void **state)
{
    (void) state;
    router_config_t d;
    router_config_defaults(&d);
    assert_int_equal(d.limits.comms_unauth_connections_max, 2500);
    assert_int_equal(d.limits.comms_unauth_per_source_max, 32);
    assert_int_equal(d.limits.partial_frame_bytes_max, 64u * 1024 * 1024);
    assert_int_equal(d.limits.first_frame_timeout_ms, 10000);
    assert_int_equal(d.limits.frame_timeout_ms, 30000);
    assert_int_equal(d.limits.comms_idle_timeout_ms, 300000);
    assert_int_equal(d.limits.event_connections_max, 1024);
    assert_int_equal(d.limits.workers_pending_max, 64);
    assert_int_equal(d.limits.workers_pending_per_source_max, 16);
    for (size_t i = 0; i < sizeof s_limits_cases / sizeof s_limits_cases[0]; i++) {
        const s_case_t *c = &s_limits_cases[i];
        char doc[512], err[ROUTER_CONFIG_ERR_MAX], want[256], prefix[128];
        router_config_t cfg;
        s_doc(c, c->good, doc, sizeof doc);
        if (s_parse(&cfg, doc, err, sizeof err) != 0)
            fail_msg("refused %s: %s", doc, err);
        char *json = router_config_to_json(&cfg);
        assert_non_null(json);
        snprintf(want, sizeof want, "\"%s\": %s", c->key, c->good);
        if (!strstr(json, want))
            fail_msg("limits.%s: %s not in\n%s", c->key, want, json);
        free(json);
        snprintf(prefix, sizeof prefix, "limits.%s: expected ", c->key);
        s_doc(c, c->bad_type, doc, sizeof doc);
        s_refused(doc, prefix);
        s_doc(c, c->bad, doc, sizeof doc);
        s_refused(doc, prefix);
    }
    /* A size_t field takes values past 32 bits' worth of int. */
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c, "{\"limits\":{\"partial_frame_bytes_max\":4294967295}}", err,
                             sizeof err),
                     0);
    assert_true(c.limits.partial_frame_bytes_max == 4294967295u);
    assert_int_equal(router_config_set(&c, "limits.frame_timeout_ms", "1500", err, sizeof err), 0);
    assert_int_equal(c.limits.frame_timeout_ms, 1500);
    /* The gateway's deadlines and attachment bound: set, named on refusal
     * with their range, and shown by `kith config check --print`. */
    assert_int_equal(router_config_set(&c, "limits.http_head_timeout_ms", "99", err, sizeof err),
                     -1);
    assert_string_equal(err, "limits.http_head_timeout_ms: expected an integer 100..3600000, got 99");
    assert_int_equal(s_parse(&c,
                             "{\"limits\":{\"http_head_timeout_ms\":300,\"http_body_timeout_ms\":400,"
                             "\"http_idle_timeout_ms\":500,\"http_attachment_body_max\":2048}}",
                             err, sizeof err),
                     0);
    assert_int_equal(c.limits.http_head_timeout_ms, 300);
    assert_int_equal(c.limits.http_body_timeout_ms, 400);
    assert_int_equal(c.limits.http_idle_timeout_ms, 500);
    assert_int_equal(c.limits.http_attachment_body_max, 2048);
    char *json = router_config_to_json(&c);
    assert_non_null(json);
    assert_non_null(strstr(json, "\"http_head_timeout_ms\": 300,"));
    assert_non_null(strstr(json, "\"http_body_timeout_ms\": 400,"));
    assert_non_null(strstr(json, "\"http_idle_timeout_ms\": 500,"));
    assert_non_null(strstr(json, "\"http_attachment_body_max\": 2048,"));
    free(json);
    /* The last key of limits is still tracked for duplicates. */
    s_refused("{\"limits\":{\"sessions_bytes_max\":4096,\"sessions_bytes_max\":4096}}",
              "limits.sessions_bytes_max: duplicate key");
}

static void test_limits_cross_rules(void **state)
{
    (void) state;
    s_refused("{\"limits\":{\"http_unauth_connections_max\":10}}",
              "limits.http_unauth_per_source_max: 32 is more than "
              "limits.http_unauth_connections_max (10)");
    s_refused("{\"limits\":{\"session_messages_max\":999}}",
              "limits.session_messages_max: 999 is less than agent.max_history_messages (1000)");
    s_refused("{\"limits\":{\"comms_connections_max\":100}}",
              "limits.comms_unauth_connections_max: 2500 is not less than limits.comms_connections_max");
    s_refused("{\"limits\":{\"comms_connections_max\":100,\"comms_unauth_connections_max\":100}}",
              "limits.comms_unauth_connections_max: 100 is not less than limits.comms_connections_max");
    s_refused("{\"limits\":{\"comms_unauth_connections_max\":10}}",
              "limits.comms_unauth_per_source_max: 32 is more than "
              "limits.comms_unauth_connections_max");
    s_refused("{\"limits\":{\"workers_pending_max\":8}}",
              "limits.workers_pending_per_source_max: 16 is more than "
              "limits.workers_pending_max (8)");
    router_config_t c;
    char err[ROUTER_CONFIG_ERR_MAX];
    assert_int_equal(s_parse(&c,
                             "{\"limits\":{\"comms_connections_max\":100,"
                             "\"comms_unauth_connections_max\":50,"
                             "\"comms_unauth_per_source_max\":5}}",
                             err, sizeof err),
                     0);
    assert_int_equal(c.limits.comms_unauth_per_source_max, 5);
}

/* ------------------------------------------------------------ issue 8: event_address, FIFOs */

/* comms.event_address takes what the listener opens (router_addr_parse,
 * WIRE §10): tcp://host:port, host:port, uds:///path, /abs/path. */
static void test_event_address_forms(void **state)
{
    (void) state;
    static const char *const good[] = {
        "tcp://127.0.0.1:4300", "127.0.0.1:4300", "tcp://[::1]:4300", "[::1]:0",
        "localhost:4300",       "uds:///run/kith/events.sock", "/run/kith/events.sock",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char text[256], err[ROUTER_CONFIG_ERR_MAX] = "";
        router_config_t c;
        snprintf(text, sizeof text, "{\"comms\":{\"auth\":\"none\",\"event_address\":\"%s\"}}",
                 good[i]);
        if (s_parse(&c, text, err, sizeof err) != 0)
            fail_msg("refused %s: %s", good[i], err);
        assert_string_equal(c.comms.event_address, good[i]);
    }
    static const struct {
        const char *addr, *why;
    } bad[] = {
        {"events.example.com:4300", "host must be an IPv4 literal"},
        {"127.0.0.1", "port must be"},
        {"http://127.0.0.1:80", "unsupported scheme"},
        {"uds://relative.sock", "a Unix socket path must start with"},
        {"./events.sock", "a socket path must be absolute"},
        {"/run/kith/", "names a directory"},
        {"tcp:///run/x.sock", "port must be"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256], err[ROUTER_CONFIG_ERR_MAX] = "";
        router_config_t c;
        snprintf(text, sizeof text, "{\"comms\":{\"auth\":\"none\",\"event_address\":\"%s\"}}",
                 bad[i].addr);
        if (s_parse(&c, text, err, sizeof err) == 0)
            fail_msg("accepted %s", bad[i].addr);
        /* The error names the key, lists every accepted form, and says why. */
        if (!strstr(err, "comms.event_address: expected \"tcp://host:port\" or \"host:port\"") ||
            !strstr(err, "\"uds:///abs/path\" or \"/abs/path\"") || !strstr(err, bad[i].why))
            fail_msg("for %s: %s", bad[i].addr, err);
    }
}

/* A FIFO (or any non-regular file) named as the config is refused at once
 * with its name, instead of blocking start-up until something writes it. */
static void test_fifo_config_refused(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-config-fifo-XXXXXX";
    assert_non_null(mkdtemp(home));
    char path[512], err[ROUTER_CONFIG_ERR_MAX] = "";
    snprintf(path, sizeof path, "%s/config.json", home);
    assert_int_equal(mkfifo(path, 0600), 0);
    router_config_t c;
    bool used = true;
    assert_int_equal(router_config_load(&c, home, NULL, &used, err, sizeof err), -1);
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
    assert_non_null(strstr(err, "not a regular file (a FIFO)"));
    /* The same through --config FILE. */
    assert_int_equal(router_config_load(&c, home, path, &used, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file (a FIFO)"));
    unlink(path);
    rmdir(home);
}

/* Every allocation of a parse fails in turn: each run refuses with an
 * error that says memory (never that the file is wrong) or gives the same
 * configuration, and leaks nothing (LSan). */
static void test_parse_without_memory(void **state)
{
    (void) state;
    static const char text[] =
        "// a configuration\n"
        "{ \"gateway\": { \"port\": 8080, \"webhook_secret_env\": \"KITH_HOOK\" },\n"
        "  \"comms\": { \"address\": \"127.0.0.1:4300\", \"session\": \"peers\" },\n"
        "  \"agent\": { \"provider\": \"openai\", \"base_url\": \"http://127.0.0.1:9\", \"model\": \"m\" },\n"
        "  \"audit\": { \"path\": \"/var/log/kith-audit.log\" } }\n";
    router_config_t want;
    char err[ROUTER_CONFIG_ERR_MAX] = "";
    assert_int_equal(s_parse(&want, text, err, sizeof err), 0);
    char *want_json = router_config_to_json(&want);
    assert_non_null(want_json);
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        router_config_t got;
        err[0] = '\0';
        alloc_fail_arm(i);
        int rc = s_parse(&got, text, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (rc != 0) {
            if (!failed || !strstr(err, "memory"))
                fail_msg("run %ld: %s", i, err);
            continue;
        }
        char *json = router_config_to_json(&got);
        assert_non_null(json);
        assert_string_equal(json, want_json);
        free(json);
        if (!failed)
            break;
    }
    free(want_json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_match_design),
        cmocka_unit_test(test_design_example_is_the_defaults),
        cmocka_unit_test(test_empty_object_and_empty_sections),
        cmocka_unit_test(test_every_key_good),
        cmocka_unit_test(test_every_key_wrong_type),
        cmocka_unit_test(test_every_key_out_of_range),
        cmocka_unit_test(test_error_text_names_key_value_and_line),
        cmocka_unit_test(test_integer_forms),
        cmocka_unit_test(test_nullable_and_not),
        cmocka_unit_test(test_strings_bounded_and_clean),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_unknown_keys_at_each_level),
        cmocka_unit_test(test_wrong_shapes),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_deep_nesting_refused_at_once),
        cmocka_unit_test(test_size_bound),
        cmocka_unit_test(test_parse_without_memory),
        cmocka_unit_test(test_refusal_leaves_config_untouched),
        cmocka_unit_test(test_cross_key_rules),
        cmocka_unit_test(test_session_queue_max),
        cmocka_unit_test(test_listen_hosts),
        cmocka_unit_test(test_listeners_collide),
        cmocka_unit_test(test_to_json_round_trip),
        cmocka_unit_test(test_set_from_command_line),
        cmocka_unit_test(test_load_policy),
        cmocka_unit_test(test_limits_keys),
        cmocka_unit_test(test_limits_cross_rules),
        cmocka_unit_test(test_event_address_forms),
        cmocka_unit_test(test_fifo_config_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
