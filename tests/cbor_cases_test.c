/* tests/cbor_cases_test.c — kith's CBOR decoders against inputs an
 * independent implementation made: every line of tests/data/cbor_cases.txt
 * (written by tests/data/cbor_cases.py with Python's cbor2) goes through the
 * worker, audit and envelope decoders and the canonical encoder, and must
 * get the verdict spec/worker.cddl, spec/envelope.cddl and WIRE.md give it,
 * with the bytes cbor2's canonical encoding says kith writes back. Every
 * mismatch is printed before the test fails, so one run shows them all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/audit_msg.h"
#include "proto/cbor_canon.h"
#include "proto/envelope.h"
#include "proto/worker_msg.h"

/* Longest line the generator writes (hex doubles the bytes). */
#define S_LINE_MAX (1u << 20)

/* hex (or "-": nothing) into a new buffer; *len its bytes. */
static uint8_t *s_unhex(const char *hex, size_t *len)
{
    size_t n = strcmp(hex, "-") == 0 ? 0 : strlen(hex) / 2;
    uint8_t *out = malloc(n + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t) v;
    }
    *len = n;
    return out;
}

static void s_hex_print(const char *what, const uint8_t *p, size_t n)
{
    fprintf(stderr, "    %s: ", what);
    for (size_t i = 0; i < n && i < 200; i++)
        fprintf(stderr, "%02x", p[i]);
    fprintf(stderr, "%s\n", n > 200 ? "…" : "");
}

/* One case's outcome: the reason name, the field (worker), and the bytes
 * kith wrote back (NULL when it writes none for this decoder). */
typedef struct {
    const char *reason;
    const char *field;
    uint8_t *back;
    size_t back_len;
} s_got_t;

static void s_run_worker_req(const uint8_t *p, size_t n, s_got_t *got)
{
    proto_worker_request_t req;
    proto_worker_error_t err;
    int rc = proto_worker_request_decode(p, n, &req, &err);
    got->reason = proto_worker_reason_str(err.reason);
    got->field = err.field;
    assert_int_equal(rc == 0, err.reason == PROTO_WORKER_OK);
    if (rc != 0) {
        assert_int_equal(req.type, 0); /* cleared */
        return;
    }
    /* What was read is written again, and that reads back the same. */
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    proto_worker_request_t again;
    assert_int_equal(proto_worker_request_encode(&req, &a, &alen, &err), 0);
    assert_int_equal(proto_worker_request_decode(a, alen, &again, &err), 0);
    assert_int_equal(proto_worker_request_encode(&again, &b, &blen, &err), 0);
    assert_int_equal(alen, blen);
    assert_memory_equal(a, b, alen);
    free(a);
    free(b);
    proto_worker_request_clear(&again);
    proto_worker_request_clear(&req);
}

static void s_run_worker_rep(const uint8_t *p, size_t n, s_got_t *got)
{
    proto_worker_reply_t rep;
    proto_worker_error_t err;
    int rc = proto_worker_reply_decode(p, n, &rep, &err);
    got->reason = proto_worker_reason_str(err.reason);
    got->field = err.field;
    assert_int_equal(rc == 0, err.reason == PROTO_WORKER_OK);
    if (rc != 0)
        return;
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    proto_worker_reply_t again;
    assert_int_equal(proto_worker_reply_encode(&rep, &a, &alen, &err), 0);
    assert_int_equal(proto_worker_reply_decode(a, alen, &again, &err), 0);
    assert_int_equal(proto_worker_reply_encode(&again, &b, &blen, &err), 0);
    assert_int_equal(alen, blen);
    assert_memory_equal(a, b, alen);
    free(a);
    free(b);
    proto_worker_reply_clear(&again);
    proto_worker_reply_clear(&rep);
}

static void s_run_audit(const uint8_t *p, size_t n, s_got_t *got)
{
    proto_audit_msg_t m;
    proto_audit_err_t err;
    int rc = proto_audit_msg_decode(p, n, &m, &err);
    got->reason = proto_audit_err_str(err);
    assert_int_equal(rc == 0, err == PROTO_AUDIT_OK);
    if (rc != 0)
        return;
    assert_int_equal(proto_audit_msg_encode(&m, &got->back, &got->back_len, &err), 0);
    proto_audit_msg_clear(&m);
}

static void s_run_envelope(const uint8_t *p, size_t n, s_got_t *got)
{
    proto_envelope_t *env = NULL, *gen = NULL;
    proto_envelope_reason_t why = PROTO_ENV_OK, gwhy = PROTO_ENV_OK;
    int rc = proto_envelope_decode(p, n, &env, &why);
    int grc = proto_envelope_decode_general(p, n, &gen, &gwhy);
    got->reason = proto_envelope_reason_str(why);
    /* The fast path for kith's own key order says what the general one says. */
    assert_int_equal(rc, grc);
    assert_int_equal(why, gwhy);
    if (rc != 0) {
        assert_null(env);
        return;
    }
    size_t len = 0, glen = 0;
    const uint8_t *s = proto_envelope_signable(env, &len);
    const uint8_t *gs = proto_envelope_signable(gen, &glen);
    assert_int_equal(len, glen);
    assert_memory_equal(s, gs, len);
    got->back = malloc(len);
    assert_non_null(got->back);
    memcpy(got->back, s, len);
    got->back_len = len;
    proto_envelope_destroy(&env);
    proto_envelope_destroy(&gen);
}

static void s_run_canon(const uint8_t *p, size_t n, s_got_t *got)
{
    static const proto_cbor_limits_t lim = {.max_depth = 64, .allow_indefinite = 1};
    proto_cbor_reason_t why = PROTO_CBOR_OK;
    cbor_item_t *item = proto_cbor_load(p, n, &lim, &why);
    if (item) {
        (void) proto_cbor_canon_bytes(item, 64, 1u << 20, &got->back, &got->back_len, &why);
        cbor_decref(&item);
    }
    got->reason = proto_cbor_reason_str(why);
}

static const struct {
    const char *name;
    void (*run)(const uint8_t *, size_t, s_got_t *);
} s_decoders[] = {
    {"worker_req", s_run_worker_req}, {"worker_rep", s_run_worker_rep}, {"audit", s_run_audit},
    {"envelope", s_run_envelope},     {"canon", s_run_canon},
};

static void test_cbor2_cases(void **state)
{
    (void) state;
    FILE *f = fopen(KITH_TEST_DATA "/cbor_cases.txt", "r");
    assert_non_null(f);
    char *line = malloc(S_LINE_MAX);
    assert_non_null(line);
    unsigned cases = 0, bad = 0, lineno = 0;
    while (fgets(line, S_LINE_MAX, f)) {
        lineno++;
        assert_non_null(strchr(line, '\n')); /* no line cut by the buffer */
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char *save = NULL;
        char *dec = strtok_r(line, " ", &save);
        char *expect = strtok_r(NULL, " ", &save);
        char *field = strtok_r(NULL, " ", &save);
        char *in_hex = strtok_r(NULL, " ", &save);
        char *want_hex = strtok_r(NULL, " \n", &save);
        char *name = strtok_r(NULL, "\n", &save);
        assert_non_null(want_hex);
        size_t in_len = 0, want_len = 0;
        uint8_t *in = s_unhex(in_hex, &in_len);
        uint8_t *want = s_unhex(want_hex, &want_len);
        s_got_t got = {0};
        size_t d = 0;
        while (d < sizeof s_decoders / sizeof s_decoders[0] && strcmp(s_decoders[d].name, dec) != 0)
            d++;
        assert_true(d < sizeof s_decoders / sizeof s_decoders[0]);
        s_decoders[d].run(in, in_len, &got);
        const char *want_field = strcmp(field, "^") == 0 ? "" : field;
        bool ok = strcmp(got.reason, expect) == 0 &&
                  (strcmp(field, "-") == 0 || (got.field && strcmp(got.field, want_field) == 0)) &&
                  (strcmp(want_hex, "-") == 0 ||
                   (got.back && got.back_len == want_len && memcmp(got.back, want, want_len) == 0));
        if (!ok) {
            bad++;
            fprintf(stderr, "line %u (%s, %s): want %s/%s, got %s/%s\n", lineno, dec,
                    name ? name : "", expect, field, got.reason, got.field ? got.field : "-");
            if (strcmp(want_hex, "-") != 0) {
                s_hex_print("want", want, want_len);
                s_hex_print("got ", got.back, got.back ? got.back_len : 0);
            }
        }
        cases++;
        free(got.back);
        free(in);
        free(want);
    }
    free(line);
    fclose(f);
    fprintf(stderr, "%u cases, %u wrong\n", cases, bad);
    assert_true(cases > 300);
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cbor2_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
