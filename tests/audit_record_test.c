/* tests/audit_record_test.c — one record of the audit chain (WIRE §21.1,
 * §21.2): the HMAC key from the environment and its bounds, what
 * audit_record_format refuses and says, the reading of a line back (one
 * spelling per number, the type's bounds) and what audit_record_check
 * finds: a changed hash, an HMAC under another key, a record without one
 * while a key is in force. The chain's own tests (audit_chain_test) cover
 * records in a file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "audit/record.h"

static void test_names(void **state)
{
    (void) state;
    static const char *const names[] = {"ok", "malformed", "hash", "hmac", "hmac_missing",
                                        "no_memory"};
    for (int i = 0; i <= AUDIT_REC_NO_MEMORY; i++)
        assert_string_equal(audit_rec_err_str((audit_rec_err_t) i), names[i]);
    assert_string_equal(audit_rec_err_str((audit_rec_err_t) 42), "unknown");
}

static void test_key_from_env(void **state)
{
    (void) state;
    audit_key_t k;
    char err[256] = "";
    assert_int_equal(audit_key_from_env(&k, NULL, err, sizeof err), 0);
    assert_int_equal(k.len, 0);
    assert_int_equal(audit_key_from_env(&k, "", err, sizeof err), 0);
    assert_int_equal(k.len, 0);
    unsetenv("KITH_TEST_AUDIT_KEY");
    assert_int_equal(audit_key_from_env(&k, "KITH_TEST_AUDIT_KEY", err, sizeof err), -1);
    assert_string_equal(err, "audit.hmac_key_env names KITH_TEST_AUDIT_KEY, which is not set");
    setenv("KITH_TEST_AUDIT_KEY", "fifteen bytes!!", 1);
    assert_int_equal(audit_key_from_env(&k, "KITH_TEST_AUDIT_KEY", err, sizeof err), -1);
    assert_string_equal(err, "the audit HMAC key in KITH_TEST_AUDIT_KEY must be 16 to 1024 bytes "
                             "(it is 15)");
    char big[AUDIT_HMAC_KEY_MAX + 2];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    setenv("KITH_TEST_AUDIT_KEY", big, 1);
    assert_int_equal(audit_key_from_env(&k, "KITH_TEST_AUDIT_KEY", err, sizeof err), -1);
    assert_non_null(strstr(err, "(it is 1025)"));
    big[AUDIT_HMAC_KEY_MAX] = '\0'; /* exactly the most */
    setenv("KITH_TEST_AUDIT_KEY", big, 1);
    assert_int_equal(audit_key_from_env(&k, "KITH_TEST_AUDIT_KEY", err, sizeof err), 0);
    assert_int_equal(k.len, AUDIT_HMAC_KEY_MAX);
    audit_key_clear(&k);
    assert_int_equal(k.len, 0);
    unsetenv("KITH_TEST_AUDIT_KEY");
}

static long s_format(const char *type, size_t type_len, const char *detail, size_t cap,
                     const audit_key_t *key, char *out, char *err)
{
    proto_audit_event_t ev = {.time_ms = 1700000000000ull, .type = type, .type_len = type_len,
                              .detail = detail, .detail_len = strlen(detail)};
    uint8_t hash[AUDIT_HASH_LEN];
    return audit_record_format(7, &ev, audit_genesis, key, out, cap, hash, err, 256);
}

static void test_format_refusals(void **state)
{
    (void) state;
    static char out[AUDIT_LINE_MAX];
    char err[256];
    char type[PROTO_AUDIT_TYPE_MAX + 2];
    memset(type, 't', sizeof type);
    assert_int_equal(s_format("x", 0, "{}", sizeof out, NULL, out, err), -1);
    assert_string_equal(err, "type must be 1 to 64 bytes of UTF-8");
    assert_int_equal(s_format(type, PROTO_AUDIT_TYPE_MAX + 1, "{}", sizeof out, NULL, out, err), -1);
    assert_int_equal(s_format("a\0b", 3, "{}", sizeof out, NULL, out, err), -1);
    assert_int_equal(s_format("\xff", 1, "{}", sizeof out, NULL, out, err), -1);
    assert_string_equal(err, "type must be 1 to 64 bytes of UTF-8");
    assert_true(s_format(type, PROTO_AUDIT_TYPE_MAX, "{}", sizeof out, NULL, out, err) > 0);

    char *detail = malloc(PROTO_AUDIT_DETAIL_MAX + 2);
    assert_non_null(detail);
    memset(detail, ' ', PROTO_AUDIT_DETAIL_MAX + 1);
    detail[0] = '{';
    detail[PROTO_AUDIT_DETAIL_MAX] = '}';
    detail[PROTO_AUDIT_DETAIL_MAX + 1] = '\0'; /* one octet too many, even if only blanks */
    assert_int_equal(s_format("pair", 4, detail, sizeof out, NULL, out, err), -1);
    assert_string_equal(err, "detail is longer than 8192 bytes");
    detail[PROTO_AUDIT_DETAIL_MAX - 1] = '}';
    detail[PROTO_AUDIT_DETAIL_MAX] = '\0';
    assert_true(s_format("pair", 4, detail, sizeof out, NULL, out, err) > 0);
    free(detail);

    /* A line that does not fit the caller's room. */
    long n = s_format("pair", 4, "{\"a\":1}", sizeof out, NULL, out, err);
    assert_true(n > 0);
    assert_int_equal(s_format("pair", 4, "{\"a\":1}", (size_t) n - 1, NULL, out, err), -1);
    assert_string_equal(err, "the record would be longer than 16384 bytes");
    assert_int_equal(s_format("pair", 4, "{\"a\":1}", (size_t) n, NULL, out, err), n);
}

static void test_read_and_check(void **state)
{
    (void) state;
    char line[AUDIT_LINE_MAX];
    char err[256];
    audit_key_t key = {.len = 32}, other = {.len = 32};
    memset(key.bytes, 1, 32);
    memset(other.bytes, 2, 32);
    long n = s_format("pair", 4, "{ \"who\" : \"a\" }", sizeof line, &key, line, err);
    assert_true(n > 0);
    audit_record_t r;
    assert_int_equal(audit_record_check(line, (size_t) n, &key, &r), AUDIT_REC_OK);
    assert_int_equal(r.seq, 7);
    assert_true(r.has_hmac);
    assert_string_equal(r.type, "pair");
    /* Another key: the HMAC; no key: the hash still holds. */
    assert_int_equal(audit_record_check(line, (size_t) n, &other, &r), AUDIT_REC_HMAC);
    assert_int_equal(audit_record_check(line, (size_t) n, NULL, &r), AUDIT_REC_OK);
    /* A record written without a key, read with one. */
    char plain[AUDIT_LINE_MAX];
    long p = s_format("pair", 4, "{}", sizeof plain, NULL, plain, err);
    assert_true(p > 0);
    assert_int_equal(audit_record_check(plain, (size_t) p, &key, &r), AUDIT_REC_HMAC_MISSING);
    /* A changed hash digit; a hash in upper case. */
    line[n - 3] = line[n - 3] == '0' ? '1' : '0';
    assert_int_equal(audit_record_check(line, (size_t) n, NULL, &r), AUDIT_REC_HASH);
    plain[p - 3] = 'A';
    assert_int_equal(audit_record_check(plain, (size_t) p, NULL, &r), AUDIT_REC_MALFORMED);

    /* One spelling per number; seq from 1; a type of 1..64. */
    static const char *const bad[] = {
        "{\"seq\":01,\"time_ms\":1,\"type\":\"t\",\"detail\":{}",
        "{\"seq\":0,\"time_ms\":1,\"type\":\"t\",\"detail\":{}",
        "{\"seq\":1,\"time_ms\":-1,\"type\":\"t\",\"detail\":{}",
        "{\"seq\":1,\"time_ms\":1,\"type\":\"\",\"detail\":{}",
        "{\"seq\":1,\"time_ms\":1,\"type\":\"tttttttttttttttttttttttttttttttttttttttttttttttttttttttttt"
        "ttttttt\",\"detail\":{}",
        "{\"seq\":1,\"time_ms\":1,\"type\":\"t\",\"detail\":[]",
        "{\"seq\":1,\"time_ms\":1,\"type\":1,\"detail\":{}",
    };
    char zeros[AUDIT_HEX_LEN + 1];
    memset(zeros, '0', AUDIT_HEX_LEN);
    zeros[AUDIT_HEX_LEN] = '\0';
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        int len = snprintf(text, sizeof text, "%s,\"prev\":\"%s\",\"hash\":\"%s\"}", bad[i],
                           zeros, zeros);
        assert_int_equal(audit_record_read(text, (size_t) len, &r), -1);
    }
    char good[512];
    int len = snprintf(good, sizeof good,
                       "{\"seq\":1,\"time_ms\":0,\"type\":\"t\",\"detail\":{},\"prev\":\"%s\","
                       "\"hash\":\"%s\"}",
                       zeros, zeros);
    assert_int_equal(audit_record_read(good, (size_t) len, &r), 0);
    assert_int_equal(r.time_ms, 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_key_from_env),
        cmocka_unit_test(test_format_refusals),
        cmocka_unit_test(test_read_and_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
