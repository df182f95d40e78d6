/* tests/audit_msg_test.c — the audit bodies of spec/worker.cddl
 * (proto/audit_msg): every kind round-trips, the encoding is canonical
 * CBOR byte for byte, and each refusal carries its typed reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "proto/audit_msg.h"

static void s_unhex(const char *hex, uint8_t *out, size_t *len)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t) v;
    }
    *len = n;
}

static proto_audit_err_t s_refuse(const char *hex)
{
    uint8_t buf[512];
    size_t len;
    s_unhex(hex, buf, &len);
    proto_audit_msg_t m;
    proto_audit_err_t err = PROTO_AUDIT_OK;
    assert_int_equal(proto_audit_msg_decode(buf, len, &m, &err), -1);
    assert_int_equal(m.kind, 0);
    return err;
}

/* Encodes m, checks the bytes against `hex` (canonical CBOR, written out by
 * hand from RFC 8949), decodes them back into *out. */
static void s_round(const proto_audit_msg_t *m, const char *hex, proto_audit_msg_t *out)
{
    uint8_t *enc = NULL;
    size_t len = 0;
    proto_audit_err_t err;
    assert_int_equal(proto_audit_msg_encode(m, &enc, &len, &err), 0);
    if (hex) {
        uint8_t want[512];
        size_t wlen;
        s_unhex(hex, want, &wlen);
        assert_int_equal(len, wlen);
        assert_memory_equal(enc, want, len);
    }
    assert_int_equal(proto_audit_msg_decode(enc, len, out, &err), 0);
    assert_int_equal(out->kind, m->kind);
    free(enc);
}

static void test_append(void **state)
{
    (void) state;
    proto_audit_event_t ev[2] = {
        {.time_ms = 1, .type = "pair", .type_len = 4, .detail = "{}", .detail_len = 2},
        {.time_ms = 1700000000000ull, .type = "auth_failure", .type_len = 12,
         .detail = "{\"path\":\"/api/peers\"}", .detail_len = 21},
    };
    proto_audit_msg_t m = {.kind = PROTO_AUDIT_APPEND, .events = ev, .n_events = 2}, d;
    s_round(&m, NULL, &d);
    assert_int_equal(d.n_events, 2);
    assert_int_equal(d.events[1].time_ms, 1700000000000ull);
    assert_string_equal(d.events[1].type, "auth_failure");
    assert_string_equal(d.events[1].detail, "{\"path\":\"/api/peers\"}");
    assert_int_equal(d.events[0].detail_len, 2);
    proto_audit_msg_clear(&d);
    assert_null(d.events);
}

static void test_small_kinds_bytes(void **state)
{
    (void) state;
    proto_audit_msg_t d;
    /* {"type":"audit_verify"} */
    proto_audit_msg_t v = {.kind = PROTO_AUDIT_VERIFY};
    s_round(&v, "a164747970656c61756469745f766572696679", &d);
    proto_audit_msg_clear(&d);
    /* {"type":"audit_appended","count":2,"first_seq":7}: keys length-first */
    proto_audit_msg_t a = {.kind = PROTO_AUDIT_APPENDED, .first_seq = 7, .count = 2};
    s_round(&a,
            "a3" "6474797065" "6e61756469745f617070656e646564" "65636f756e74" "02"
            "6966697273745f736571" "07",
            &d);
    assert_int_equal(d.first_seq, 7);
    assert_int_equal(d.count, 2);
    proto_audit_msg_clear(&d);
    /* audit_verified: ok first (2-byte key), then type, reason, records, first_bad */
    proto_audit_msg_t f = {.kind = PROTO_AUDIT_VERIFIED, .ok = false, .checked = 3,
                           .has_first_bad = true, .first_bad = 2, .reason = "hash", .reason_len = 4};
    s_round(&f,
            "a5" "626f6b" "f4" "6474797065" "6e61756469745f7665726966696564"
            "66726561736f6e" "6468617368" "677265636f726473" "03"
            "6966697273745f626164" "02",
            &d);
    assert_false(d.ok);
    assert_int_equal(d.checked, 3);
    assert_true(d.has_first_bad);
    assert_int_equal(d.first_bad, 2);
    assert_string_equal(d.reason, "hash");
    assert_int_equal(d.files, 0);
    assert_false(d.has_first_seq);
    proto_audit_msg_clear(&d);
    /* a rotated chain: ok, type, files, records, first_seq (WIRE §21.10) */
    proto_audit_msg_t r = {.kind = PROTO_AUDIT_VERIFIED, .ok = true, .checked = 84, .files = 4,
                           .has_first_seq = true, .first_seq = 2123};
    s_round(&r,
            "a5" "626f6b" "f5" "6474797065" "6e61756469745f7665726966696564"
            "6566696c6573" "04" "677265636f726473" "1854"
            "6966697273745f736571" "19084b",
            &d);
    assert_true(d.ok);
    assert_int_equal(d.checked, 84);
    assert_int_equal(d.files, 4);
    assert_true(d.has_first_seq);
    assert_int_equal(d.first_seq, 2123);
    proto_audit_msg_clear(&d);
    /* audit_error: code, type, message */
    proto_audit_msg_t e = {.kind = PROTO_AUDIT_ERROR, .code = "io", .code_len = 2,
                           .reason = "disk", .reason_len = 4};
    s_round(&e, "a3" "64636f6465" "62696f" "6474797065" "6b61756469745f6572726f72"
                "676d657373616765" "646469736b",
            &d);
    assert_string_equal(d.code, "io");
    assert_string_equal(d.reason, "disk");
    proto_audit_msg_clear(&d);
}

static void test_query_and_records(void **state)
{
    (void) state;
    proto_audit_msg_t d;
    proto_audit_msg_t q = {.kind = PROTO_AUDIT_QUERY, .limit = 1000, .event_type = "pair",
                           .event_type_len = 4, .has_since = true, .since_ms = 99};
    s_round(&q, NULL, &d);
    assert_int_equal(d.limit, 1000);
    assert_string_equal(d.event_type, "pair");
    assert_true(d.has_since);
    assert_int_equal(d.since_ms, 99);
    proto_audit_msg_clear(&d);
    proto_audit_msg_t q0 = {.kind = PROTO_AUDIT_QUERY, .limit = 5};
    s_round(&q0, NULL, &d);
    assert_null(d.event_type);
    assert_false(d.has_since);
    proto_audit_msg_clear(&d);

    proto_audit_text_t recs[2] = {{"{\"seq\":1}", 9}, {"{\"seq\":2}", 9}};
    proto_audit_msg_t r = {.kind = PROTO_AUDIT_RECORDS, .records = recs, .n_records = 2};
    s_round(&r, NULL, &d);
    assert_int_equal(d.n_records, 2);
    assert_string_equal(d.records[1].p, "{\"seq\":2}");
    proto_audit_msg_clear(&d);
    assert_false(d.partial);
    proto_audit_msg_clear(&d);
    /* A read a bound stopped: type, partial, records ("partial" sorts
     * before "records", the same length). */
    proto_audit_msg_t rp = {.kind = PROTO_AUDIT_RECORDS, .records = recs + 1, .n_records = 1,
                            .partial = true};
    s_round(&rp,
            "a3" "6474797065" "6d61756469745f7265636f726473" "677061727469616c" "f5"
            "677265636f726473" "81" "697b22736571223a327d",
            &d);
    assert_true(d.partial);
    assert_int_equal(d.n_records, 1);
    proto_audit_msg_clear(&d);
    /* worker.cddl says `? partial: true`: false is not a value it has
     * (absent says "not partial"), and not a bool is the wrong type. */
    assert_int_equal(s_refuse("a3" "6474797065" "6d61756469745f7265636f726473" "677061727469616c"
                              "f4" "677265636f726473" "80"),
                     PROTO_AUDIT_E_BAD_VALUE);
    assert_int_equal(s_refuse("a3" "6474797065" "6d61756469745f7265636f726473" "677061727469616c"
                              "01" "677265636f726473" "80"),
                     PROTO_AUDIT_E_WRONG_TYPE);
    proto_audit_msg_t r0 = {.kind = PROTO_AUDIT_RECORDS};
    s_round(&r0, NULL, &d);
    assert_int_equal(d.n_records, 0);
    proto_audit_msg_clear(&d);
}

static void test_refusals(void **state)
{
    (void) state;
    /* not a map; not CBOR; trailing bytes */
    assert_int_equal(s_refuse("80"), PROTO_AUDIT_E_NOT_MAP);
    assert_int_equal(s_refuse("1c"), PROTO_AUDIT_E_MALFORMED);
    assert_int_equal(s_refuse("a164747970656c61756469745f76657269667900"), PROTO_AUDIT_E_MALFORMED);
    /* indefinite map */
    assert_int_equal(s_refuse("bf64747970656c61756469745f766572696679ff"), PROTO_AUDIT_E_MALFORMED);
    /* no type; unknown type; type not text */
    assert_int_equal(s_refuse("a0"), PROTO_AUDIT_E_MISSING_FIELD);
    assert_int_equal(s_refuse("a1647479706563666f6f"), PROTO_AUDIT_E_UNKNOWN_TYPE);
    assert_int_equal(s_refuse("a16474797065f5"), PROTO_AUDIT_E_WRONG_TYPE);
    /* an extra key; a duplicated key; a non-text key */
    assert_int_equal(s_refuse("a264747970656c61756469745f766572696679617801"), PROTO_AUDIT_E_UNKNOWN_FIELD);
    assert_int_equal(s_refuse("a264747970656c61756469745f76657269667964747970656c61756469745f766572696679"),
                     PROTO_AUDIT_E_DUPLICATE_KEY);
    assert_int_equal(s_refuse("a264747970656c61756469745f7665726966790101"), PROTO_AUDIT_E_NOT_MAP);
    /* appended with a negative count; with a missing count */
    assert_int_equal(s_refuse("a36474797065" "6e61756469745f617070656e646564" "65636f756e74" "20"
                              "6966697273745f736571" "07"),
                     PROTO_AUDIT_E_WRONG_TYPE);
    assert_int_equal(s_refuse("a26474797065" "6e61756469745f617070656e646564" "6966697273745f736571" "07"),
                     PROTO_AUDIT_E_MISSING_FIELD);
    /* query with limit 1001; with a tagged limit */
    assert_int_equal(s_refuse("a26474797065" "6b61756469745f7175657279" "656c696d6974" "1903e9"),
                     PROTO_AUDIT_E_BAD_VALUE);
    assert_int_equal(s_refuse("a26474797065" "6b61756469745f7175657279" "656c696d6974" "c105"),
                     PROTO_AUDIT_E_WRONG_TYPE);
    /* append with no events; an event with an empty type; with NUL in its detail */
    assert_int_equal(s_refuse("a26474797065" "6c61756469745f617070656e64" "666576656e7473" "80"),
                     PROTO_AUDIT_E_BAD_VALUE);
    assert_int_equal(s_refuse("a26474797065" "6c61756469745f617070656e64" "666576656e7473" "81"
                              "a3" "6474797065" "60" "6664657461696c" "627b7d" "6774696d655f6d73" "01"),
                     PROTO_AUDIT_E_BAD_VALUE);
    assert_int_equal(s_refuse("a26474797065" "6c61756469745f617070656e64" "666576656e7473" "81"
                              "a3" "6474797065" "6470616972" "6664657461696c" "627b00" "6774696d655f6d73" "01"),
                     PROTO_AUDIT_E_BAD_VALUE);
    /* bad UTF-8 in a detail */
    assert_int_equal(s_refuse("a26474797065" "6c61756469745f617070656e64" "666576656e7473" "81"
                              "a3" "6474797065" "6470616972" "6664657461696c" "62c328" "6774696d655f6d73" "01"),
                     PROTO_AUDIT_E_BAD_UTF8);
    /* too deep: an event whose detail is a nested array */
    assert_int_equal(s_refuse("a26474797065" "6c61756469745f617070656e64" "666576656e7473" "81"
                              "a3" "6474797065" "6470616972" "6664657461696c" "818181" "80" "6774696d655f6d73" "01"),
                     PROTO_AUDIT_E_TOO_DEEP);
}

static void test_bounds(void **state)
{
    (void) state;
    /* 1025 events cannot be encoded; 1024 can and decode back. */
    size_t n = PROTO_AUDIT_EVENTS_MAX + 1;
    proto_audit_event_t *ev = calloc(n, sizeof *ev);
    assert_non_null(ev);
    for (size_t i = 0; i < n; i++)
        ev[i] = (proto_audit_event_t){.time_ms = i, .type = "t", .type_len = 1, .detail = "{}", .detail_len = 2};
    proto_audit_msg_t m = {.kind = PROTO_AUDIT_APPEND, .events = ev, .n_events = n}, d;
    uint8_t *enc;
    size_t len;
    proto_audit_err_t err;
    assert_int_equal(proto_audit_msg_encode(&m, &enc, &len, &err), -1);
    assert_int_equal(err, PROTO_AUDIT_E_TOO_MANY);
    m.n_events = PROTO_AUDIT_EVENTS_MAX;
    s_round(&m, NULL, &d);
    assert_int_equal(d.n_events, PROTO_AUDIT_EVENTS_MAX);
    proto_audit_msg_clear(&d);
    /* a type of 65 bytes is refused on both sides */
    char type[PROTO_AUDIT_TYPE_MAX + 1];
    memset(type, 'a', sizeof type);
    ev[0].type = type;
    ev[0].type_len = sizeof type;
    m.n_events = 1;
    assert_int_equal(proto_audit_msg_encode(&m, &enc, &len, &err), -1);
    assert_int_equal(err, PROTO_AUDIT_E_BAD_VALUE);
    free(ev);
    /* oversize input */
    uint8_t *big = calloc(1, PROTO_AUDIT_MSG_MAX + 1);
    assert_non_null(big);
    assert_int_equal(proto_audit_msg_decode(big, PROTO_AUDIT_MSG_MAX + 1, &d, &err), -1);
    assert_int_equal(err, PROTO_AUDIT_E_TOO_LARGE);
    free(big);
    assert_string_equal(proto_audit_err_str(PROTO_AUDIT_E_DUPLICATE_KEY), "duplicate_key");
}

/* audit-error's code is one of worker.cddl's five, on both sides. */
static void test_error_codes(void **state)
{
    (void) state;
    static const char *const codes[] = {"bad_request", "event", "io", "broken", "no_memory"};
    proto_audit_msg_t d;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        proto_audit_msg_t e = {.kind = PROTO_AUDIT_ERROR, .code = codes[i], .code_len = strlen(codes[i]),
                               .reason = "m", .reason_len = 1};
        s_round(&e, NULL, &d);
        assert_string_equal(d.code, codes[i]);
        proto_audit_msg_clear(&d);
    }
    uint8_t *enc = NULL;
    size_t len = 0;
    proto_audit_err_t err;
    proto_audit_msg_t e = {.kind = PROTO_AUDIT_ERROR, .code = "oops", .code_len = 4, .reason = "", .reason_len = 0};
    assert_int_equal(proto_audit_msg_encode(&e, &enc, &len, &err), -1);
    assert_int_equal(err, PROTO_AUDIT_E_BAD_VALUE);
    assert_null(enc);
    e.code = "io2"; /* a known code's prefix is not that code */
    e.code_len = 2;
    assert_int_equal(proto_audit_msg_encode(&e, &enc, &len, &err), 0);
    free(enc);
    proto_audit_msg_t q = {.kind = PROTO_AUDIT_QUERY, .limit = PROTO_AUDIT_LIMIT_MAX + 1};
    assert_int_equal(proto_audit_msg_encode(&q, &enc, &len, &err), -1);
    assert_int_equal(err, PROTO_AUDIT_E_BAD_VALUE);
    /* {"code": "IO", "type": "audit_error", "message": ""} */
    assert_int_equal(s_refuse("a3" "64636f6465" "62494f" "6474797065" "6b61756469745f6572726f72"
                              "676d657373616765" "60"),
                     PROTO_AUDIT_E_BAD_VALUE);
}

/* Out of memory at each of kith's allocations in turn, decoding and
 * encoding every kind that allocates: NO_MEMORY, nothing leaked (LSan),
 * and the message empty; until a run fails none and succeeds. */
static void test_no_memory(void **state)
{
    (void) state;
    static proto_audit_event_t evs[] = {
        {1, "pair", 4, "{\"a\":1}", 7},
        {2, "auth_failure", 12, "{}", 2},
    };
    static proto_audit_text_t recs[] = {{"line one", 8}, {"line two", 8}};
    const proto_audit_msg_t kinds[] = {
        {.kind = PROTO_AUDIT_APPEND, .events = evs, .n_events = 2},
        {.kind = PROTO_AUDIT_QUERY, .limit = 5, .event_type = "pair", .event_type_len = 4},
        {.kind = PROTO_AUDIT_RECORDS, .records = recs, .n_records = 2, .partial = true},
        {.kind = PROTO_AUDIT_VERIFIED, .ok = false, .checked = 3, .reason = "hmac", .reason_len = 4},
        {.kind = PROTO_AUDIT_ERROR, .code = "io", .code_len = 2, .reason = "disk", .reason_len = 4},
    };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        uint8_t *enc = NULL;
        size_t len = 0;
        proto_audit_err_t err;
        assert_int_equal(proto_audit_msg_encode(&kinds[k], &enc, &len, &err), 0);
        long i = 0;
        for (; i < ALLOC_FAIL_RUNS_MAX; i++) {
            proto_audit_msg_t d;
            alloc_fail_arm(i);
            int rc = proto_audit_msg_decode(enc, len, &d, &err);
            unsigned failed = alloc_fail_disarm();
            if (rc == 0) {
                assert_int_equal(failed, 0);
                assert_int_equal(d.kind, kinds[k].kind);
                proto_audit_msg_clear(&d);
                break;
            }
            assert_int_equal(err, PROTO_AUDIT_E_NO_MEMORY);
            assert_int_equal(d.kind, 0);
            assert_null(d.events);
            assert_null(d.records);
        }
        assert_true(i > 0 && i < ALLOC_FAIL_RUNS_MAX);
        for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            uint8_t *again = NULL;
            size_t alen = 0;
            alloc_fail_arm(i);
            int rc = proto_audit_msg_encode(&kinds[k], &again, &alen, &err);
            unsigned failed = alloc_fail_disarm();
            if (rc == 0) {
                assert_int_equal(failed, 0);
                assert_int_equal(alen, len);
                assert_memory_equal(again, enc, len);
                free(again);
                break;
            }
            assert_int_equal(err, PROTO_AUDIT_E_NO_MEMORY);
            assert_null(again);
        }
        assert_true(i > 0 && i < ALLOC_FAIL_RUNS_MAX);
        free(enc);
    }
}

/* Every reason and kind has its own stable name. */
static void test_names(void **state)
{
    (void) state;
    for (int a = PROTO_AUDIT_OK; a <= PROTO_AUDIT_E_NO_MEMORY; a++) {
        assert_string_not_equal(proto_audit_err_str((proto_audit_err_t) a), "unknown");
        for (int b = PROTO_AUDIT_OK; b < a; b++)
            assert_string_not_equal(proto_audit_err_str((proto_audit_err_t) a),
                                    proto_audit_err_str((proto_audit_err_t) b));
    }
    assert_string_equal(proto_audit_err_str((proto_audit_err_t) 99), "unknown");
    assert_null(proto_audit_kind_str((proto_audit_kind_t) 0));
    assert_string_equal(proto_audit_kind_str(PROTO_AUDIT_VERIFIED), "audit_verified");
}

/* More data items than PROTO_AUDIT_ITEMS_MAX is too large, before libcbor
 * builds anything: records of one-byte strings. */
static void test_items_bound(void **state)
{
    (void) state;
    size_t n = PROTO_AUDIT_ITEMS_MAX; /* + the map, its keys and type: past the bound */
    size_t cap = 64 + 2 * n;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    size_t w = 0;
    static const uint8_t head[] = {0xa2, 0x64, 't', 'y', 'p', 'e', 0x6d, 'a', 'u', 'd', 'i', 't', '_',
                                   'r', 'e', 'c', 'o', 'r', 'd', 's', 0x67, 'r', 'e', 'c', 'o', 'r',
                                   'd', 's', 0x99};
    memcpy(buf, head, sizeof head);
    w = sizeof head;
    buf[w++] = (uint8_t) (n >> 8);
    buf[w++] = (uint8_t) n;
    for (size_t i = 0; i < n; i++) {
        buf[w++] = 0x61;
        buf[w++] = 'a';
    }
    proto_audit_msg_t d;
    proto_audit_err_t err;
    assert_int_equal(proto_audit_msg_decode(buf, w, &d, &err), -1);
    assert_int_equal(err, PROTO_AUDIT_E_TOO_LARGE);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append),
        cmocka_unit_test(test_small_kinds_bytes),
        cmocka_unit_test(test_query_and_records),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_no_memory),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_items_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
