/* tests/peer_row_test.c — POST /api/peers' body decoder (gateway/peer_row.c,
 * WIRE §17.3a): a full row decodes with every member; every kind of bad
 * body is refused with its code (invalid_json, invalid_body,
 * invalid_pubkey) and a reason, leaving nothing to clear; and each of its
 * allocations failing in turn is "unavailable" or a whole row, never a
 * leak (LSan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "gateway/peer_row.h"
#include "alloc_fail.h"

static uint8_t s_pk[crypto_sign_PUBLICKEYBYTES];
static char s_pk_text[64]; /* "ed25519:" + padded base64 */

static int s_decode(const char *body, gateway_peer_row_t *row, const char **code, char *why,
                    size_t cap)
{
    return gateway_peer_row_decode((const uint8_t *) body, strlen(body), row, code, why, cap);
}

static void test_full_row(void **state)
{
    (void) state;
    char body[512];
    snprintf(body, sizeof body,
             "{\"name\":\"alice\",\"pubkey\":\"%s\",\"addr\":\"tcp://127.0.0.1:4200\","
             "\"profile\":\"meerkat\",\"meta\":{\"description\":\"the lab box\","
             "\"labels\":{\"env\":\"lab\",\"team\":\"\"}}}",
             s_pk_text);
    gateway_peer_row_t row;
    const char *code = NULL;
    char why[GATEWAY_PEER_ROW_WHY_MAX];
    assert_int_equal(s_decode(body, &row, &code, why, sizeof why), 0);
    assert_string_equal(row.name, "alice");
    assert_string_equal(row.addr, "tcp://127.0.0.1:4200");
    assert_string_equal(row.description, "the lab box");
    assert_memory_equal(row.pk, s_pk, sizeof s_pk);
    assert_int_equal(row.profile, ROUTER_PEER_PROFILE_MEERKAT);
    assert_int_equal(row.nlabels, 2);
    assert_string_equal(row.labels[0].key, "env");
    assert_string_equal(row.labels[0].value, "lab");
    assert_string_equal(row.labels[1].key, "team");
    assert_string_equal(row.labels[1].value, "");
    gateway_peer_row_clear(&row);
    gateway_peer_row_clear(&row); /* idempotent */

    /* The least a row is: no profile (kith), no meta. */
    snprintf(body, sizeof body, "{\"addr\":\"x\",\"pubkey\":\"%s\",\"name\":\"b\"}", s_pk_text);
    assert_int_equal(s_decode(body, &row, &code, why, sizeof why), 0);
    assert_int_equal(row.profile, ROUTER_PEER_PROFILE_KITH);
    assert_null(row.description);
    assert_int_equal(row.nlabels, 0);
    gateway_peer_row_clear(&row);
}

/* tmpl with its "%s" (if any) replaced by pk. */
static void s_fill(char *out, size_t cap, const char *tmpl, const char *pk)
{
    const char *at = strstr(tmpl, "%s");
    if (!at) {
        snprintf(out, cap, "%s", tmpl);
        return;
    }
    snprintf(out, cap, "%.*s%s%s", (int) (at - tmpl), tmpl, pk, at + 2);
}

static void test_refusals(void **state)
{
    (void) state;
    static const struct {
        const char *body; /* "%s" stands for a good pubkey */
        const char *code;
    } cases[] = {
        {"", "invalid_json"},
        {"{", "invalid_json"},
        {"{nope}", "invalid_json"},
        {"{\"name\":\"a\",\"name\":\"b\",\"pubkey\":\"%s\",\"addr\":\"x\"}", "invalid_json"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\"} {}", "invalid_json"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"meta\":{\"labels\":{\"k\":[[]]}}}",
         "invalid_json"}, /* deeper than the row nests */
        {"[]", "invalid_body"},
        {"\"alice\"", "invalid_body"},
        {"{}", "invalid_body"},
        {"{\"pubkey\":\"%s\",\"addr\":\"x\"}", "invalid_body"},
        {"{\"name\":1,\"pubkey\":\"%s\",\"addr\":\"x\"}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":null}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"peer_id\":\"p\"}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"profile\":\"zmq\"}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"profile\":1}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"meta\":[]}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"meta\":{\"owner\":\"o\"}}",
         "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"meta\":{\"description\":1}}",
         "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"meta\":{\"labels\":{\"k\":1}}}",
         "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"ed25519:AAAA\",\"addr\":\"x\"}", "invalid_pubkey"},
        {"{\"name\":\"a\",\"pubkey\":\"x25519:%s\",\"addr\":\"x\"}", "invalid_pubkey"},
        {"{\"name\":\"a\",\"pubkey\":\"\",\"addr\":\"x\"}", "invalid_pubkey"},
        /* The identity point: a key of small order (WIRE §5). */
        {"{\"name\":\"a\",\"pubkey\":\"ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\","
         "\"addr\":\"x\"}",
         "invalid_pubkey"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512];
        const char *pk = s_pk_text;
        if (!strncmp(cases[i].body, "{\"name\":\"a\",\"pubkey\":\"x25519:", 29))
            pk = s_pk_text + strlen("ed25519:");
        s_fill(body, sizeof body, cases[i].body, pk);
        gateway_peer_row_t row;
        const char *code = NULL;
        char why[GATEWAY_PEER_ROW_WHY_MAX] = "";
        int rc = s_decode(body, &row, &code, why, sizeof why);
        if (rc != -1 || !code || strcmp(code, cases[i].code) != 0)
            fail_msg("%s: rc %d code %s (%s), wanted %s", body, rc, code ? code : "-", why,
                     cases[i].code);
        assert_true(why[0] != '\0');
        /* Nothing held: a clear is harmless, not needed. */
        assert_null(row.name);
        assert_null(row.addr);
        assert_int_equal(row.nlabels, 0);
    }
}

/* 65 labels: past the bound, however well-formed. */
static void test_labels_bounded(void **state)
{
    (void) state;
    char body[4096];
    int n = snprintf(body, sizeof body,
                     "{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"x\",\"meta\":{\"labels\":{",
                     s_pk_text);
    for (int i = 0; i < (int) ROUTER_PEER_LABELS_MAX + 1; i++)
        n += snprintf(body + n, sizeof body - (size_t) n, "%s\"k%d\":\"v\"", i ? "," : "", i);
    snprintf(body + n, sizeof body - (size_t) n, "}}}");
    gateway_peer_row_t row;
    const char *code = NULL;
    char why[GATEWAY_PEER_ROW_WHY_MAX];
    assert_int_equal(s_decode(body, &row, &code, why, sizeof why), -1);
    assert_string_equal(code, "invalid_body");
}

static void test_alloc_failures(void **state)
{
    (void) state;
    char body[512];
    snprintf(body, sizeof body,
             "{\"name\":\"alice\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:1\",\"meta\":"
             "{\"description\":\"d\",\"labels\":{\"a\":\"1\",\"b\":\"2\"}}}",
             s_pk_text);
    bool whole = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !whole; i++) {
        gateway_peer_row_t row;
        const char *code = NULL;
        char why[GATEWAY_PEER_ROW_WHY_MAX];
        alloc_fail_arm(i);
        int rc = s_decode(body, &row, &code, why, sizeof why);
        bool failed = alloc_fail_disarm() > 0;
        if (rc == 0) {
            assert_string_equal(row.name, "alice");
            assert_int_equal(row.nlabels, 2);
            gateway_peer_row_clear(&row);
            whole = !failed;
        } else {
            assert_true(failed);
            /* The parser's own failure may read as bad JSON; ours never. */
            assert_true(!strcmp(code, "unavailable") || !strcmp(code, "invalid_json"));
        }
    }
    assert_true(whole);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    uint8_t sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(s_pk, sk);
    memcpy(s_pk_text, "ed25519:", 8);
    sodium_bin2base64(s_pk_text + 8, sizeof s_pk_text - 8, s_pk, sizeof s_pk,
                      sodium_base64_VARIANT_ORIGINAL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_row),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_labels_bounded),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
