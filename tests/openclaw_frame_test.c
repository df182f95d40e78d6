/* tests/openclaw_frame_test.c — gateway/openclaw_frame and
 * gateway/openclaw_device: request frames and connect params accepted and
 * refused, the params of the run methods, the frame wrappers, and the
 * device proof against the golden vectors in spec/vectors/openclaw_device.json
 * (each refusal reason in the order WIRE §25.4 checks them). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <yajl/yajl_tree.h>

#include "gateway/openclaw_device.h"
#include "gateway/openclaw_frame.h"

#define VECTORS_PATH KITH_SOURCE_DIR "/spec/vectors/openclaw_device.json"

static int s_req(const char *text, gateway_openclaw_req_t *r)
{
    char why[GATEWAY_OPENCLAW_WHY_MAX] = "";
    int rc = gateway_openclaw_req_decode((const uint8_t *) text, strlen(text), r, why, sizeof why);
    if (rc != 0)
        assert_true(why[0]);
    return rc;
}

static void test_req(void **state)
{
    (void) state;
    gateway_openclaw_req_t r;
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1:a\",\"method\":\"health\",\"params\":{}}", &r), 0);
    assert_string_equal(r.id, "1:a");
    assert_string_equal(r.method, "health");
    assert_true(YAJL_IS_OBJECT(r.params));
    gateway_openclaw_req_clear(&r);
    /* Unknown members are ignored; params may be absent. */
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"x\",\"method\":\"m\",\"new\":[1]}", &r), 0);
    assert_null(r.params);
    gateway_openclaw_req_clear(&r);

    assert_int_equal(s_req("not json", &r), -1);
    assert_string_equal(r.id, "");
    assert_int_equal(s_req("[1]", &r), -1);
    /* A refusal that still names the request. */
    assert_int_equal(s_req("{\"type\":\"res\",\"id\":\"7\",\"method\":\"m\"}", &r), -1);
    assert_string_equal(r.id, "7");
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"7\"}", &r), -1);
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"\",\"method\":\"m\"}", &r), -1);
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":7,\"method\":\"m\"}", &r), -1);
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1\",\"id\":\"2\",\"method\":\"m\"}", &r), -1);
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1\",\"method\":\"m\",\"p\":\"\\u0000\"}", &r), -1);
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1\",\"method\":\"m\",\"p\":\"\\udc00\"}", &r), -1);
    const uint8_t bad_utf8[] = "{\"type\":\"req\",\"id\":\"1\",\"method\":\"\xff\"}";
    char why[GATEWAY_OPENCLAW_WHY_MAX];
    assert_int_equal(gateway_openclaw_req_decode(bad_utf8, sizeof bad_utf8 - 1, &r, why, sizeof why), -1);
    char deep[256] = "{\"type\":\"req\",\"id\":\"1\",\"method\":\"m\",\"params\":";
    size_t n = strlen(deep);
    for (int i = 0; i < 40; i++)
        deep[n++] = '[';
    for (int i = 0; i < 40; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = '\0';
    assert_int_equal(s_req(deep, &r), -1);
}

static int s_connect(const char *params, gateway_openclaw_connect_t *c)
{
    char text[4096];
    snprintf(text, sizeof text, "{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":%s}",
             params);
    gateway_openclaw_req_t r;
    assert_int_equal(s_req(text, &r), 0);
    char why[GATEWAY_OPENCLAW_WHY_MAX] = "";
    int rc = gateway_openclaw_connect_decode(r.params, c, why, sizeof why);
    if (rc != 0)
        assert_true(why[0]);
    gateway_openclaw_req_clear(&r);
    return rc;
}

static void test_connect(void **state)
{
    (void) state;
    gateway_openclaw_connect_t *c = malloc(sizeof *c);
    assert_non_null(c);
    assert_int_equal(s_connect("{\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"cli\","
                               "\"version\":\"1\",\"platform\":\"linux\",\"mode\":\"cli\"},"
                               "\"role\":\"operator\",\"scopes\":[\"operator.write\"],"
                               "\"auth\":{\"token\":\"t\"},\"device\":{\"id\":\"d\","
                               "\"publicKey\":\"k\",\"signature\":\"s\",\"signedAt\":5,"
                               "\"nonce\":\"n\"},\"caps\":[]}",
                               c),
                     0);
    assert_int_equal(c->min_protocol, 4);
    assert_string_equal(c->client_id, "cli");
    assert_string_equal(c->token, "t");
    assert_true(c->has_device);
    assert_int_equal(c->device_signed_at, 5);
    assert_int_equal(c->nscopes, 1);
    /* role defaults to operator; no device, no auth. */
    assert_int_equal(s_connect("{\"minProtocol\":3,\"maxProtocol\":4,\"client\":{\"id\":\"x\","
                               "\"mode\":\"backend\"}}",
                               c),
                     0);
    assert_string_equal(c->role, "operator");
    assert_false(c->has_device);
    assert_int_equal(s_connect("{\"maxProtocol\":4,\"client\":{\"id\":\"x\",\"mode\":\"m\"}}", c), -1);
    assert_int_equal(s_connect("{\"minProtocol\":-1,\"maxProtocol\":4,\"client\":{\"id\":\"x\",\"mode\":\"m\"}}", c), -1);
    assert_int_equal(s_connect("{\"minProtocol\":4,\"maxProtocol\":4}", c), -1);
    assert_int_equal(s_connect("{\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"x\","
                               "\"mode\":\"m\"},\"scopes\":\"operator.admin\"}",
                               c),
                     -1);
    assert_int_equal(s_connect("{\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"x\","
                               "\"mode\":\"m\"},\"device\":{\"id\":\"d\"}}",
                               c),
                     -1);
    free(c);
}

static void test_run_params(void **state)
{
    (void) state;
    gateway_openclaw_req_t r;
    gateway_openclaw_run_params_t p;
    char why[GATEWAY_OPENCLAW_WHY_MAX];
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1\",\"method\":\"chat.send\",\"params\":"
                           "{\"sessionKey\":\"agent:main:main\",\"message\":\"hi\","
                           "\"idempotencyKey\":\"k-1\"}}",
                           &r),
                     0);
    assert_int_equal(gateway_openclaw_chat_send_decode(r.params, &p, why, sizeof why), 0);
    assert_string_equal(p.session_key, "agent:main:main");
    assert_int_equal(p.message_len, 2);
    assert_int_equal(gateway_openclaw_agent_decode(r.params, &p, why, sizeof why), 0);
    gateway_openclaw_req_clear(&r);
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1\",\"method\":\"agent\",\"params\":"
                           "{\"message\":\"\",\"idempotencyKey\":\"k\"}}",
                           &r),
                     0);
    assert_int_equal(gateway_openclaw_agent_decode(r.params, &p, why, sizeof why), -1);
    assert_int_equal(gateway_openclaw_chat_send_decode(r.params, &p, why, sizeof why), -1);
    gateway_openclaw_req_clear(&r);
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1\",\"method\":\"agent\",\"params\":"
                           "{\"message\":\"m\",\"idempotencyKey\":\"has space\"}}",
                           &r),
                     0);
    assert_int_equal(gateway_openclaw_agent_decode(r.params, &p, why, sizeof why), -1);
    gateway_openclaw_req_clear(&r);
    char key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1], run[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1];
    assert_int_equal(s_req("{\"type\":\"req\",\"id\":\"1\",\"method\":\"chat.abort\",\"params\":"
                           "{\"sessionKey\":\"s\"}}",
                           &r),
                     0);
    assert_int_equal(gateway_openclaw_chat_abort_decode(r.params, key, run, why, sizeof why), 0);
    assert_string_equal(run, "");
    gateway_openclaw_req_clear(&r);
    /* A message past GATEWAY_OPENCLAW_MESSAGE_MAX (a frame may be larger
     * when limits.ws_message_max is): refused, saying so; at it, taken. */
    for (size_t extra = 0; extra < 2; extra++) {
        size_t n = GATEWAY_OPENCLAW_MESSAGE_MAX + extra;
        char *text = malloc(n + 256);
        assert_non_null(text);
        int at = snprintf(text, 256, "{\"type\":\"req\",\"id\":\"1\",\"method\":\"agent\","
                                     "\"params\":{\"idempotencyKey\":\"k\",\"message\":\"");
        memset(text + at, 'm', n);
        snprintf(text + at + n, 8, "\"}}");
        assert_int_equal(s_req(text, &r), 0);
        free(text);
        int rc = gateway_openclaw_agent_decode(r.params, &p, why, sizeof why);
        assert_int_equal(rc, extra ? -1 : 0);
        if (extra)
            assert_non_null(strstr(why, "longer than 1 MiB"));
        else
            assert_int_equal(p.message_len, GATEWAY_OPENCLAW_MESSAGE_MAX);
        gateway_openclaw_req_clear(&r);
    }
}

static void test_encode(void **state)
{
    (void) state;
    size_t len;
    char *j = gateway_openclaw_event_encode("tick", "{\"ts\":1}", 9, &len);
    assert_non_null(j);
    assert_string_equal(j, "{\"type\":\"event\",\"event\":\"tick\",\"payload\":{\"ts\":1},\"seq\":9}");
    assert_int_equal(len, strlen(j));
    free(j);
    j = gateway_openclaw_res_error_encode("a\"b", "INVALID_REQUEST", "bad \"x\"", "{\"code\":\"C\"}",
                                          true, NULL, &len);
    assert_non_null(j);
    yajl_val v = yajl_tree_parse(j, NULL, 0);
    assert_non_null(v);
    const char *path[] = {"error", "details", "code", NULL};
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(v, path, yajl_t_string)), "C");
    yajl_tree_free(v);
    free(j);
}

/* ---------------------------------------------------------------- device proof */

static const char *s_vs(yajl_val o, const char *a, const char *b)
{
    const char *path[] = {a, b, NULL};
    yajl_val v = yajl_tree_get(o, path, yajl_t_string);
    assert_non_null(v);
    return YAJL_GET_STRING(v);
}

/* A connect built from one vector, as its client would send it. */
static void s_from_vector(yajl_val vec, gateway_openclaw_connect_t *c, char nonce[65], int64_t *ts)
{
    memset(c, 0, sizeof *c);
    snprintf(c->client_id, sizeof c->client_id, "%s", s_vs(vec, "client", "id"));
    snprintf(c->client_mode, sizeof c->client_mode, "%s", s_vs(vec, "client", "mode"));
    snprintf(c->client_platform, sizeof c->client_platform, "%s", s_vs(vec, "client", "platform"));
    snprintf(c->client_device_family, sizeof c->client_device_family, "%s",
             s_vs(vec, "client", "deviceFamily"));
    snprintf(c->role, sizeof c->role, "%s", s_vs(vec, "role", NULL));
    const char *sp[] = {"scopes", NULL};
    yajl_val scopes = yajl_tree_get(vec, sp, yajl_t_array);
    assert_non_null(scopes);
    for (size_t i = 0; i < scopes->u.array.len; i++)
        snprintf(c->scopes[c->nscopes++], sizeof c->scopes[0], "%s",
                 YAJL_GET_STRING(scopes->u.array.values[i]));
    snprintf(c->token, sizeof c->token, "%s", s_vs(vec, "token", NULL));
    c->has_device = true;
    snprintf(c->device_id, sizeof c->device_id, "%s", s_vs(vec, "device_id", NULL));
    snprintf(c->device_public_key, sizeof c->device_public_key, "%s", s_vs(vec, "public_key", NULL));
    snprintf(c->device_signature, sizeof c->device_signature, "%s", s_vs(vec, "signature", NULL));
    snprintf(nonce, 65, "%s", s_vs(vec, "challenge", "nonce"));
    snprintf(c->device_nonce, sizeof c->device_nonce, "%s", nonce);
    const char *tp[] = {"signed_at", NULL};
    *ts = YAJL_GET_INTEGER(yajl_tree_get(vec, tp, yajl_t_number));
    c->device_signed_at = *ts;
}

static void test_device_vectors(void **state)
{
    (void) state;
    FILE *f = fopen(VECTORS_PATH, "rb");
    assert_non_null(f);
    static char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    yajl_val doc = yajl_tree_parse(text, NULL, 0);
    assert_non_null(doc);
    const char *vp[] = {"vectors", NULL};
    yajl_val vecs = yajl_tree_get(doc, vp, yajl_t_array);
    assert_non_null(vecs);
    assert_int_equal(vecs->u.array.len, 2);
    gateway_openclaw_connect_t *c = malloc(sizeof *c);
    assert_non_null(c);
    for (size_t i = 0; i < vecs->u.array.len; i++) {
        yajl_val vec = vecs->u.array.values[i];
        int want = !strcmp(s_vs(vec, "name", NULL), "v3") ? 3 : 2;
        char nonce[65];
        int64_t ts;
        s_from_vector(vec, c, nonce, &ts);

        /* The signed string, byte for byte. */
        const char *scopes[GATEWAY_OPENCLAW_SCOPES_MAX];
        for (unsigned k = 0; k < c->nscopes; k++)
            scopes[k] = c->scopes[k];
        gateway_openclaw_device_fields_t fl = {
            .device_id = c->device_id, .client_id = c->client_id, .client_mode = c->client_mode,
            .role = c->role, .scopes = scopes, .nscopes = c->nscopes, .signed_at_ms = ts,
            .token = c->token, .nonce = nonce, .platform = c->client_platform,
            .device_family = c->client_device_family};
        char payload[GATEWAY_OPENCLAW_PAYLOAD_MAX];
        assert_true(gateway_openclaw_device_payload(&fl, want, payload, sizeof payload) > 0);
        assert_string_equal(payload, s_vs(vec, "payload", NULL));

        /* The device id is the key's SHA-256. */
        uint8_t pk[32];
        char id[GATEWAY_OPENCLAW_DEVICE_ID_LEN + 1];
        assert_int_equal(gateway_openclaw_b64_decode(c->device_public_key, pk, sizeof pk), 0);
        gateway_openclaw_device_id(pk, id);
        assert_string_equal(id, c->device_id);

        int version = 0;
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts + 119000,
                                                        &version),
                         GATEWAY_OPENCLAW_DEVICE_OK);
        assert_int_equal(version, want);
        /* Each refusal, alone. */
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts + 121000,
                                                        &version),
                         GATEWAY_OPENCLAW_DEVICE_SIGNATURE_EXPIRED);
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts - 121000,
                                                        &version),
                         GATEWAY_OPENCLAW_DEVICE_SIGNATURE_EXPIRED);
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, "another", (uint64_t) ts,
                                                        &version),
                         GATEWAY_OPENCLAW_DEVICE_NONCE_MISMATCH);
        assert_int_equal(gateway_openclaw_device_verify(c, "kith_other", nonce, (uint64_t) ts,
                                                        &version),
                         GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID);
        c->device_nonce[0] = '\0';
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts, &version),
                         GATEWAY_OPENCLAW_DEVICE_NONCE_REQUIRED);
        s_from_vector(vec, c, nonce, &ts);
        c->device_id[0] ^= 1;
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts, &version),
                         GATEWAY_OPENCLAW_DEVICE_ID_MISMATCH);
        s_from_vector(vec, c, nonce, &ts);
        snprintf(c->device_public_key, sizeof c->device_public_key, "short");
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts, &version),
                         GATEWAY_OPENCLAW_DEVICE_PUBLIC_KEY_INVALID);
        s_from_vector(vec, c, nonce, &ts);
        c->device_signature[3] = c->device_signature[3] == 'A' ? 'B' : 'A';
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts, &version),
                         GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID);
        /* A signature that is not base64 at all. */
        s_from_vector(vec, c, nonce, &ts);
        snprintf(c->device_signature, sizeof c->device_signature, "not base64!");
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts, &version),
                         GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID);
        /* The nonce is compared, and signed, without surrounding blanks
         * (as the reference server trims it). */
        s_from_vector(vec, c, nonce, &ts);
        snprintf(c->device_nonce, sizeof c->device_nonce, " \t%s\r\n ", nonce);
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts, &version),
                         GATEWAY_OPENCLAW_DEVICE_OK);
        snprintf(c->device_nonce, sizeof c->device_nonce, " \t ");
        assert_int_equal(gateway_openclaw_device_verify(c, c->token, nonce, (uint64_t) ts, &version),
                         GATEWAY_OPENCLAW_DEVICE_NONCE_REQUIRED);
        /* The signed string: only v2 and v3, and never cut short. */
        s_from_vector(vec, c, nonce, &ts);
        assert_int_equal(gateway_openclaw_device_payload(&fl, 4, payload, sizeof payload), -1);
        assert_int_equal(gateway_openclaw_device_payload(&fl, want, payload, 0), -1);
        size_t full = strlen(s_vs(vec, "payload", NULL));
        for (size_t cap = 1; cap <= full; cap++)
            assert_int_equal(gateway_openclaw_device_payload(&fl, want, payload, cap), -1);
        assert_int_equal(gateway_openclaw_device_payload(&fl, want, payload, full + 1),
                         (int) full);
    }
    /* Every reason has its three names; one out of range says invalid. */
    static const char *const codes[] = {
        "OK", "DEVICE_AUTH_PUBLIC_KEY_INVALID", "DEVICE_AUTH_DEVICE_ID_MISMATCH",
        "DEVICE_AUTH_SIGNATURE_EXPIRED", "DEVICE_AUTH_NONCE_REQUIRED",
        "DEVICE_AUTH_NONCE_MISMATCH", "DEVICE_AUTH_SIGNATURE_INVALID"};
    static const char *const reasons[] = {
        "ok", "device-public-key", "device-id-mismatch", "device-signature-stale",
        "device-nonce-missing", "device-nonce-mismatch", "device-signature"};
    for (int r = GATEWAY_OPENCLAW_DEVICE_OK; r <= GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID; r++) {
        assert_string_equal(gateway_openclaw_device_code((gateway_openclaw_device_reason_t) r),
                            codes[r]);
        assert_string_equal(gateway_openclaw_device_reason((gateway_openclaw_device_reason_t) r),
                            reasons[r]);
        assert_true(gateway_openclaw_device_message((gateway_openclaw_device_reason_t) r)[0]);
    }
    gateway_openclaw_device_reason_t bad = (gateway_openclaw_device_reason_t) 99;
    assert_string_equal(gateway_openclaw_device_code(bad), "DEVICE_AUTH_INVALID");
    assert_string_equal(gateway_openclaw_device_reason(bad), "device-invalid");
    assert_string_equal(gateway_openclaw_device_message(bad), "device auth invalid");
    free(c);
    yajl_tree_free(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req),
        cmocka_unit_test(test_connect),
        cmocka_unit_test(test_run_params),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_device_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
