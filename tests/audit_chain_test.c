/* tests/audit_chain_test.c — the audit chain on disk (audit/chain, record,
 * head; WIRE §21): appends and reopening, verification naming the first bad
 * record for a flip of every byte of a record, cut-off tails, HMAC on and
 * off, group commit (one log fsync and one head fsync per batch), an
 * injected fsync failure that acknowledges nothing, and a failing ftruncate
 * (tests/io_fail.h) when a torn tail is repaired or a failed batch is cut
 * back. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "io_fail.h"
#include "audit/chain.h"
#include "audit/head.h"
#include "audit/record.h"

typedef struct {
    char dir[64];
    char log[128];
    char head[160];
} s_fix_t;

static int s_setup(void **state)
{
    s_fix_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kith-audit-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->log, sizeof f->log, "%s/audit.log", f->dir);
    snprintf(f->head, sizeof f->head, "%s/audit.log.head", f->dir);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    unlink(f->log);
    unlink(f->head);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Counts syncs and fails them on demand. */
typedef struct {
    unsigned calls;
    int fail_at; /* fail the call with this number (1-based), 0: never */
} s_sync_t;

static int s_sync(int fd, void *ud)
{
    s_sync_t *s = ud;
    s->calls++;
    if (s->fail_at && (int) s->calls == s->fail_at) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static audit_chain_t *s_open(const s_fix_t *f, const audit_key_t *key, s_sync_t *sync)
{
    audit_chain_opts_t o = {.path = f->log, .key = key};
    if (sync) {
        o.sync = s_sync;
        o.sync_ud = sync;
    }
    audit_error_t err = {0};
    audit_chain_t *c = audit_chain_open(&o, &err);
    if (!c)
        fprintf(stderr, "open: %s\n", err.msg);
    return c;
}

static void s_append(audit_chain_t *c, const char *type, const char *detail, uint64_t want_seq)
{
    proto_audit_event_t ev = {.time_ms = 1700000000000ull + want_seq, .type = type,
                              .type_len = strlen(type), .detail = detail,
                              .detail_len = strlen(detail)};
    uint64_t first = 0;
    audit_error_t err = {0};
    int rc = audit_chain_append(c, &ev, 1, &first, &err);
    if (rc != 0)
        fprintf(stderr, "append: %s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(first, want_seq);
}

static char *s_slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t) n + 1);
    assert_int_equal(fread(buf, 1, (size_t) n, fp), (size_t) n);
    buf[n] = '\0';
    fclose(fp);
    *len = (size_t) n;
    return buf;
}

static void s_spit(const char *path, const char *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, len, fp), len);
    fclose(fp);
}

/* Start offset of record `seq` (1-based) in buf, and its length with the newline. */
static size_t s_line_at(const char *buf, uint64_t seq, size_t *len)
{
    const char *p = buf;
    for (uint64_t i = 1; i < seq; i++)
        p = strchr(p, '\n') + 1;
    *len = (size_t) (strchr(p, '\n') - p) + 1;
    return (size_t) (p - buf);
}

static void s_make(const s_fix_t *f, const audit_key_t *key, unsigned n)
{
    audit_chain_t *c = s_open(f, key, NULL);
    assert_non_null(c);
    for (unsigned i = 1; i <= n; i++) {
        char detail[96];
        snprintf(detail, sizeof detail, " { \"n\" : %u, \"who\": \"peer\\u0041\", \"x\": [1, 2.5, null] } ", i);
        s_append(c, i % 2 ? "envelope_rejected" : "pair", detail, i);
    }
    audit_chain_close(&c);
}

/* ------------------------------------------------------------------ tests */

static void test_append_reopen_verify(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 3);
    audit_chain_t *c = s_open(f, NULL, NULL);
    assert_non_null(c);
    assert_int_equal(audit_chain_last_seq(c), 3);
    s_append(c, "trust_changed", "{}", 4);
    audit_chain_close(&c);
    audit_chain_close(&c); /* idempotent */

    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.records, 4);
    assert_false(r.has_first_bad);

    /* The detail was re-written compactly; the genesis prev is 64 zeros. */
    size_t len;
    char *buf = s_slurp(f->log, &len);
    assert_non_null(strstr(buf, "\"detail\":{\"n\":1,\"who\":\"peerA\",\"x\":[1,2.5,null]}"));
    assert_non_null(strstr(buf, "\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\""));
    static const char first[] = "{\"seq\":1,\"time_ms\":1700000000001,\"type\":\"envelope_rejected\",";
    assert_memory_equal(buf, first, sizeof first - 1);
    free(buf);
}

static void test_bad_events_refused(void **state)
{
    s_fix_t *f = *state;
    audit_chain_t *c = s_open(f, NULL, NULL);
    assert_non_null(c);
    static const char *const bad[] = {"[1]", "1", "", "{\"a\":1} {}", "{\"a\":}", "\"x\"",
                                      "{\"a\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        proto_audit_event_t ev[2] = {
            {.time_ms = 1, .type = "ok", .type_len = 2, .detail = "{}", .detail_len = 2},
            {.time_ms = 1, .type = "x", .type_len = 1, .detail = bad[i], .detail_len = strlen(bad[i])},
        };
        uint64_t first;
        audit_error_t err = {0};
        assert_int_equal(audit_chain_append(c, ev, 2, &first, &err), -1);
        assert_int_equal(err.code, AUDIT_E_EVENT);
    }
    /* The good event in each refused batch left nothing behind. */
    assert_int_equal(audit_chain_last_seq(c), 0);
    struct stat st;
    assert_int_equal(stat(f->log, &st), 0);
    assert_int_equal(st.st_size, 0);
    s_append(c, "ok", "{}", 1);
    audit_chain_close(&c);
}

/* Every byte of record 3 of 5, flipped, is caught and record 3 named. */
static void s_flip_each_byte(const s_fix_t *f, const audit_key_t *key)
{
    s_make(f, key, 5);
    size_t len;
    char *orig = s_slurp(f->log, &len);
    size_t llen, at = s_line_at(orig, 3, &llen);
    audit_verify_opts_t vo = {.key = key};
    for (size_t i = at; i < at + llen; i++) {
        char *buf = malloc(len);
        memcpy(buf, orig, len);
        buf[i] ^= 0x01;
        s_spit(f->log, buf, len);
        audit_verify_result_t r;
        int rc = audit_chain_verify(f->log, &vo, &r);
        if (rc != -1 || !r.has_first_bad || r.first_bad != 3)
            fail_msg("flipping byte %zu of record 3 ('%c'): rc %d first_bad %llu reason %s", i - at,
                     orig[i], rc, (unsigned long long) r.first_bad, audit_verify_reason_str(r.reason));
        free(buf);
    }
    s_spit(f->log, orig, len);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, &vo, &r), 0);
    free(orig);
}

static void test_flip_every_byte(void **state)
{
    s_flip_each_byte(*state, NULL);
}

static void test_flip_every_byte_hmac(void **state)
{
    audit_key_t key = {.len = 32};
    memset(key.bytes, 'k', 32);
    s_flip_each_byte(*state, &key);
}

static void test_field_reasons(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 4);
    size_t len;
    char *orig = s_slurp(f->log, &len);
    size_t llen, at = s_line_at(orig, 2, &llen);
    char *line = orig + at;
    /* seq, time_ms, type, detail, prev, hash: each changed → record 2, and why */
    static const struct {
        const char *field;
        int reason;
    } cases[] = {
        {"\"seq\":", AUDIT_V_HASH},  {"\"time_ms\":", AUDIT_V_HASH}, {"\"type\":", AUDIT_V_HASH},
        {"\"detail\":", AUDIT_V_HASH}, {"\"prev\":", AUDIT_V_HASH}, {"\"hash\":", AUDIT_V_HASH},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *buf = malloc(len);
        memcpy(buf, orig, len);
        char *p = strstr(buf + at, cases[i].field) + strlen(cases[i].field);
        if (*p == '"' || *p == '{')
            p += 2;
        *p = *p == '1' ? '2' : '1';
        s_spit(f->log, buf, len);
        audit_verify_result_t r;
        assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
        assert_int_equal(r.first_bad, 2);
        assert_int_equal(r.reason, cases[i].reason);
        assert_int_equal(r.records, 1);
        free(buf);
    }
    /* Record 2 removed whole: record 3 says seq 3 where 2 is due. */
    char *buf = malloc(len);
    memcpy(buf, orig, at);
    memcpy(buf + at, line + llen, len - at - llen);
    s_spit(f->log, buf, len - llen);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.first_bad, 2);
    assert_int_equal(r.reason, AUDIT_V_SEQ);
    free(buf);
    free(orig);
}

/* A record spliced in from another chain: its seq, fields and own hash
 * all hold, and only its prev (another chain's record 1) tells. */
static void test_prev_link(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 3);
    s_fix_t other = *f;
    snprintf(other.log, sizeof other.log, "%s/other.log", f->dir);
    snprintf(other.head, sizeof other.head, "%s/other.log.head", f->dir);
    audit_chain_t *c = s_open(&other, NULL, NULL);
    assert_non_null(c);
    s_append(c, "trust_changed", "{\"other\":true}", 1);
    s_append(c, "pair", "{}", 2);
    audit_chain_close(&c);
    size_t alen, blen, a2len, b2len;
    char *a = s_slurp(f->log, &alen), *b = s_slurp(other.log, &blen);
    size_t a2 = s_line_at(a, 2, &a2len), b2 = s_line_at(b, 2, &b2len);
    char *spliced = malloc(alen + b2len);
    size_t n = 0;
    memcpy(spliced, a, a2);
    n = a2;
    memcpy(spliced + n, b + b2, b2len);
    n += b2len;
    memcpy(spliced + n, a + a2 + a2len, alen - a2 - a2len);
    n += alen - a2 - a2len;
    s_spit(f->log, spliced, n);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_PREV);
    assert_int_equal(r.first_bad, 2);
    assert_int_equal(r.records, 1);
    assert_non_null(strstr(r.detail, "prev is not record 1's hash"));
    free(spliced);
    free(a);
    free(b);
    unlink(other.log);
    unlink(other.head);
}

static void test_truncation(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 6);
    size_t len;
    char *orig = s_slurp(f->log, &len);
    size_t llen, at = s_line_at(orig, 5, &llen);
    /* Records 5 and 6 cut off: every record left chains, the head tells. */
    s_spit(f->log, orig, at);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_TRUNCATED);
    assert_int_equal(r.first_bad, 5);
    assert_int_equal(r.records, 4);
    assert_non_null(strstr(r.detail, "5 to 6"));
    /* The writer refuses to go on from it. */
    audit_chain_opts_t o = {.path = f->log};
    audit_error_t err = {0};
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    /* Half of record 5 left: torn. */
    s_spit(f->log, orig, at + llen / 2);
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_TORN);
    assert_int_equal(r.first_bad, 5);
    /* Everything cut: the head still names 6. */
    s_spit(f->log, orig, 0);
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_TRUNCATED);
    assert_int_equal(r.first_bad, 1);
    /* The head removed as well: reported as missing. */
    s_spit(f->log, orig, at);
    unlink(f->head);
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_HEAD_MISSING);
    audit_verify_opts_t vo = {.no_head = true};
    assert_int_equal(audit_chain_verify(f->log, &vo, &r), 0);
    assert_int_equal(r.records, 4);
    free(orig);
}

/* Appends the start of a record that a crash cut short. */
static void s_append_torn(const s_fix_t *f)
{
    FILE *fp = fopen(f->log, "ab");
    assert_non_null(fp);
    fputs("{\"seq\":3,\"time_ms\":1,\"ty", fp);
    fclose(fp);
}

/* The log of two records and a torn third opens with the tear cut off,
 * and the chain goes on from record 2. */
static void s_expect_repaired(const s_fix_t *f)
{
    audit_chain_t *c = s_open(f, NULL, NULL);
    assert_non_null(c);
    assert_int_equal(audit_chain_last_seq(c), 2);
    s_append(c, "pair", "{}", 3);
    audit_chain_close(&c);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 3);
}

/* A crash tore the last write (no head names it): reopening cuts it off
 * and the chain goes on. */
static void test_torn_tail_repaired(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 2);
    s_append_torn(f);
    s_expect_repaired(f);
}

static void test_hmac(void **state)
{
    s_fix_t *f = *state;
    audit_key_t key = {.len = 20}, other = {.len = 20};
    memcpy(key.bytes, "0123456789abcdefghij", 20);
    memcpy(other.bytes, "0123456789abcdefghiX", 20);
    s_make(f, &key, 3);
    size_t len;
    char *buf = s_slurp(f->log, &len);
    assert_non_null(strstr(buf, "\",\"hmac\":\""));
    free(buf);
    audit_verify_opts_t with = {.key = &key}, wrong = {.key = &other};
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, &with, &r), 0);
    assert_int_equal(r.records, 3);
    assert_false(r.hmac_seen_unchecked);
    /* Without the key the hashes still check, and it says HMACs went unchecked. */
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_true(r.hmac_seen_unchecked);
    /* The wrong key: the head is not its own, so the head is refused first. */
    assert_int_equal(audit_chain_verify(f->log, &wrong, &r), -1);
    wrong.no_head = true;
    assert_int_equal(audit_chain_verify(f->log, &wrong, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_HMAC);
    assert_int_equal(r.first_bad, 1);
    /* The writer will not go on without the key, nor with another. */
    audit_chain_opts_t o = {.path = f->log};
    audit_error_t err = {0};
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    o.key = &other;
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    /* A log written without a key fails verification with one. */
    unlink(f->log);
    unlink(f->head);
    s_make(f, NULL, 2);
    assert_int_equal(audit_chain_verify(f->log, &with, &r), -1);
    with.no_head = true;
    assert_int_equal(audit_chain_verify(f->log, &with, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_HMAC_MISSING);
    assert_int_equal(r.first_bad, 1);
}

static void test_group_commit(void **state)
{
    s_fix_t *f = *state;
    s_sync_t sync = {0};
    audit_chain_t *c = s_open(f, NULL, &sync);
    assert_non_null(c);
    unsigned at_open = sync.calls;
    proto_audit_event_t ev[100];
    for (int i = 0; i < 100; i++)
        ev[i] = (proto_audit_event_t){.time_ms = (uint64_t) i, .type = "auth_failure", .type_len = 12,
                                      .detail = "{\"path\":\"/api/peers\"}", .detail_len = 21};
    uint64_t first;
    audit_error_t err = {0};
    assert_int_equal(audit_chain_append(c, ev, 100, &first, &err), 0);
    assert_int_equal(first, 1);
    assert_int_equal(sync.calls - at_open, 2); /* the log once, the head once */
    assert_int_equal(audit_chain_append(c, ev, 100, &first, &err), 0);
    assert_int_equal(first, 101);
    assert_int_equal(sync.calls - at_open, 4);
    audit_chain_close(&c);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 200);
}

/* Three "pair" events, a batch for the failure tests. */
static void s_pair_batch(proto_audit_event_t ev[3])
{
    for (int i = 0; i < 3; i++)
        ev[i] = (proto_audit_event_t){.time_ms = 5, .type = "pair", .type_len = 4, .detail = "{}",
                                      .detail_len = 2};
}

/* After a failed batch on a log holding record 1: the batch goes in as
 * records 2..4, and the closed log verifies with 4 records. */
static void s_expect_chained_from_one(s_fix_t *f, audit_chain_t **c_p, proto_audit_event_t ev[3])
{
    uint64_t first = 0;
    audit_error_t err = {0};
    assert_int_equal(audit_chain_append(*c_p, ev, 3, &first, &err), 0);
    assert_int_equal(first, 2);
    audit_chain_close(c_p);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 4);
}

static void test_fsync_failure(void **state)
{
    s_fix_t *f = *state;
    s_sync_t sync = {0};
    audit_chain_t *c = s_open(f, NULL, &sync);
    assert_non_null(c);
    s_append(c, "pair", "{}", 1);
    struct stat before;
    assert_int_equal(stat(f->log, &before), 0);
    sync.fail_at = (int) sync.calls + 1; /* the next log fsync */
    proto_audit_event_t ev[3];
    s_pair_batch(ev);
    uint64_t first = 0;
    audit_error_t err = {0};
    assert_int_equal(audit_chain_append(c, ev, 3, &first, &err), -1);
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, "fsync"));
    assert_int_equal(first, 0);
    assert_int_equal(audit_chain_last_seq(c), 1);
    struct stat after;
    assert_int_equal(stat(f->log, &after), 0);
    assert_int_equal(after.st_size, before.st_size); /* cut back: nothing of the batch stays */
    /* The next batch chains from record 1. */
    s_expect_chained_from_one(f, &c, ev);
}

/* The torn tail cannot be cut (ftruncate fails): open fails with an I/O
 * error naming the log and why, and changes nothing, so the next open,
 * with a working disk, repairs it and the chain goes on. */
static void test_torn_tail_repair_fails(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 2);
    s_append_torn(f);
    size_t len_before, len_after;
    char *before = s_slurp(f->log, &len_before);

    audit_chain_opts_t o = {.path = f->log};
    audit_error_t err = {0};
    io_fail_arm(IO_FAIL_FTRUNCATE, 0, EIO);
    audit_chain_t *c = audit_chain_open(&o, &err);
    assert_int_equal(io_fail_disarm(), 1);
    assert_null(c);
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, "cannot repair"));
    assert_non_null(strstr(err.msg, f->log));
    assert_non_null(strstr(err.msg, strerror(EIO)));
    char *after = s_slurp(f->log, &len_after);
    assert_int_equal(len_after, len_before);
    assert_memory_equal(after, before, len_before);

    s_expect_repaired(f);
    free(before);
    free(after);
}

/* A batch whose fsync fails and whose cut-back fails too (ftruncate): its
 * records stay in the file for now, but the next batch cuts them before it
 * writes, so it chains from the last durable record and the log verifies
 * with none of the failed batch in it. While the cut keeps failing, each
 * batch is refused (an I/O error naming the log) and nothing is written. */
static void test_cut_back_failure(void **state)
{
    s_fix_t *f = *state;
    s_sync_t sync = {0};
    audit_chain_t *c = s_open(f, NULL, &sync);
    assert_non_null(c);
    s_append(c, "pair", "{}", 1);
    struct stat durable, st;
    assert_int_equal(stat(f->log, &durable), 0);
    proto_audit_event_t ev[3];
    s_pair_batch(ev);
    uint64_t first = 0;
    audit_error_t err = {0};
    sync.fail_at = (int) sync.calls + 1; /* the next log fsync */
    io_fail_arm(IO_FAIL_FTRUNCATE, 0, EIO);
    assert_int_equal(audit_chain_append(c, ev, 3, &first, &err), -1);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, "fsync"));
    assert_int_equal(audit_chain_last_seq(c), 1);
    assert_int_equal(stat(f->log, &st), 0);
    assert_true(st.st_size > durable.st_size); /* the batch could not be cut */

    /* The cut fails again when the next batch comes: refused, unwritten. */
    io_fail_arm(IO_FAIL_FTRUNCATE, 0, EIO);
    memset(&err, 0, sizeof err);
    assert_int_equal(audit_chain_append(c, ev, 1, &first, &err), -1);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, f->log));
    assert_non_null(strstr(err.msg, strerror(EIO)));
    assert_int_equal(audit_chain_last_seq(c), 1);
    struct stat again;
    assert_int_equal(stat(f->log, &again), 0);
    assert_int_equal(again.st_size, st.st_size);

    /* Then it works: the batch chains from record 1. */
    s_expect_chained_from_one(f, &c, ev);
}

static void test_query(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 9); /* odd seqs envelope_rejected, even pair; time_ms = base + seq */
    audit_lines_t l;
    audit_error_t err = {0};
    audit_query_t q = {.limit = 3};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 3);
    assert_memory_equal(l.lines[0], "{\"seq\":7,", 9);
    assert_memory_equal(l.lines[2], "{\"seq\":9,", 9);
    assert_int_equal(l.lens[2], strlen(l.lines[2]));
    audit_lines_free(&l);
    q = (audit_query_t){.limit = 1000, .type = "pair", .has_since = true, .since_ms = 1700000000000ull + 5};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 2); /* 6 and 8 */
    assert_memory_equal(l.lines[0], "{\"seq\":6,", 9);
    audit_lines_free(&l);
    /* A byte bound keeps the newest that fit. */
    q = (audit_query_t){.limit = 10, .bytes_max = 500};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_true(l.n >= 1 && l.n < 9);
    assert_memory_equal(l.lines[l.n - 1], "{\"seq\":9,", 9);
    audit_lines_free(&l);
    q = (audit_query_t){.limit = 0};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 0);
    /* No log: no records, and verify calls it intact. */
    q.limit = 5;
    assert_int_equal(audit_chain_query("/nonexistent/audit.log", &q, &l, &err), 0);
    assert_int_equal(l.n, 0);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify("/nonexistent/audit.log", NULL, &r), 0);
    assert_int_equal(r.records, 0);
}

static void test_long_and_garbage_lines(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 2);
    FILE *fp = fopen(f->log, "ab");
    for (int i = 0; i < 40000; i++)
        fputc('x', fp);
    fputc('\n', fp);
    fclose(fp);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_MALFORMED);
    assert_int_equal(r.first_bad, 3);
    audit_lines_t l;
    audit_error_t err = {0};
    audit_query_t q = {.limit = 10};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 2);
    audit_lines_free(&l);
}

static void test_head_slots(void **state)
{
    (void) state;
    audit_head_t h = {.seq = 7};
    memset(h.hash, 0xab, sizeof h.hash);
    char slot[AUDIT_HEAD_SLOT];
    audit_head_format(&h, NULL, slot);
    assert_memory_equal(slot, "kith-audit-head 1 seq=00000000000000000007 hash=abab", 52);
    assert_int_equal(slot[AUDIT_HEAD_SLOT - 1], '\n');
}

/* A writer refuses a log its head does not vouch for, and says why; the
 * verifier names the same fault. */
static void test_open_refuses_what_the_head_denies(void **state)
{
    s_fix_t *f = *state;
    audit_chain_opts_t o = {.path = f->log};
    audit_error_t err = {0};
    audit_verify_result_t r;
    s_make(f, NULL, 3);
    size_t hlen;
    char *head = s_slurp(f->head, &hlen);

    /* A head with no valid slot. */
    s_spit(f->head, "not a head at all, only garbage that fills some bytes\n", 54);
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    assert_non_null(strstr(err.msg, "no valid slot"));
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_HEAD_BAD);

    /* Records but no head: a cut-off tail could not be told. */
    unlink(f->head);
    memset(&err, 0, sizeof err);
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    assert_non_null(strstr(err.msg, "is missing"));

    /* A head that remembers another chain's record 3. */
    s_fix_t other = *f;
    snprintf(other.log, sizeof other.log, "%s/other.log", f->dir);
    snprintf(other.head, sizeof other.head, "%s/other.log.head", f->dir);
    audit_chain_t *c = s_open(&other, NULL, NULL);
    assert_non_null(c);
    for (uint64_t i = 1; i <= 3; i++)
        s_append(c, "pair", "{\"other\":true}", i);
    audit_chain_close(&c);
    size_t olen;
    char *ohead = s_slurp(other.head, &olen);
    s_spit(f->head, ohead, olen);
    memset(&err, 0, sizeof err);
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    assert_non_null(strstr(err.msg, "is not the one its head remembers"));
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_HEAD_MISMATCH);
    unlink(other.log);
    unlink(other.head);
    free(ohead);

    /* Its own head back: it opens and goes on. */
    s_spit(f->head, head, hlen);
    c = s_open(f, NULL, NULL);
    assert_non_null(c);
    s_append(c, "pair", "{}", 4);
    audit_chain_close(&c);
    free(head);
}

/* What cannot be opened is an I/O error naming the file. */
static void test_open_io_errors(void **state)
{
    s_fix_t *f = *state;
    audit_error_t err = {0};
    char missing[192];
    snprintf(missing, sizeof missing, "%s/no/such/dir/audit.log", f->dir);
    audit_chain_opts_t o = {.path = missing};
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, missing));

    /* The head's name taken by a directory: neither writer nor verifier
     * can read it. */
    assert_int_equal(mkdir(f->head, 0700), 0);
    o.path = f->log;
    memset(&err, 0, sizeof err);
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, f->head));
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_IO);
    assert_int_equal(rmdir(f->head), 0);
    assert_string_equal(audit_err_str(AUDIT_E_IO), "io");
}

/* Every allocation of open, append, verify and query fails in turn: each
 * run refuses cleanly with a typed error (no memory) or succeeds, leaks
 * nothing (LSan), and the log stays whole: verify finds it intact at the
 * end, with every record an append reported. */
static void test_without_memory(void **state)
{
    s_fix_t *f = *state;
    s_make(f, NULL, 3);
    uint64_t want = 3;
    audit_chain_opts_t o = {.path = f->log};
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        audit_error_t err = {0};
        alloc_fail_arm(i);
        audit_chain_t *c = audit_chain_open(&o, &err);
        uint64_t first = 0;
        int rc = -1;
        if (c) {
            proto_audit_event_t ev = {.time_ms = 1700000000000ull, .type = "pair", .type_len = 4,
                                      .detail = "{}", .detail_len = 2};
            rc = audit_chain_append(c, &ev, 1, &first, &err);
        }
        bool failed = alloc_fail_disarm() > 0;
        if (!c || rc != 0) /* out of memory, never "broken" */
            assert_true(failed && (err.code == AUDIT_E_NO_MEMORY || err.code == AUDIT_E_IO));
        if (rc == 0)
            assert_int_equal(first, ++want);
        audit_chain_close(&c);
        if (!failed)
            break;
    }
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        audit_verify_result_t r;
        alloc_fail_arm(i);
        int rc = audit_chain_verify(f->log, NULL, &r);
        bool failed = alloc_fail_disarm() > 0;
        if (rc != 0)
            assert_true(failed && r.reason == AUDIT_V_IO);
        else
            assert_int_equal(r.records, want);
        if (!failed)
            break;
    }
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        audit_lines_t l;
        audit_error_t err = {0};
        audit_query_t q = {.limit = 1000};
        alloc_fail_arm(i);
        int rc = audit_chain_query(f->log, &q, &l, &err);
        bool failed = alloc_fail_disarm() > 0;
        if (rc != 0) {
            assert_true(failed && err.code == AUDIT_E_NO_MEMORY);
            continue;
        }
        assert_int_equal(l.n, want);
        audit_lines_free(&l);
        if (!failed)
            break;
    }
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
#define T(fn) cmocka_unit_test_setup_teardown(fn, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        T(test_append_reopen_verify), T(test_bad_events_refused), T(test_flip_every_byte),
        T(test_flip_every_byte_hmac), T(test_field_reasons),      T(test_truncation), T(test_prev_link),
        T(test_torn_tail_repaired),   T(test_hmac),               T(test_group_commit),
        T(test_fsync_failure),        T(test_torn_tail_repair_fails), T(test_cut_back_failure),
        T(test_query),                T(test_long_and_garbage_lines),
        T(test_head_slots),           T(test_open_refuses_what_the_head_denies),
        T(test_open_io_errors),       T(test_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
