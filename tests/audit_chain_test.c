/* tests/audit_chain_test.c — the audit chain on disk (audit/chain, record,
 * head; WIRE §21): appends and reopening, verification naming the first bad
 * record for a flip of every byte of a record, cut-off tails, HMAC on and
 * off, group commit (one log fsync and one head fsync per batch), an
 * injected fsync failure that acknowledges nothing, and a failing ftruncate
 * (tests/io_fail.h) when a torn tail is repaired or a failed batch is cut
 * back; rotation: the chain across files, retention, what verify says of
 * files removed, replaced or renamed, every crash state and failing step of
 * a rotation (and of its recovery), and a rotation without memory; a write
 * that fails part way (RLIMIT_FSIZE), a head sync that fails alone, a log
 * that is a directory or a looping link, a key added or dropped between
 * runs, rotations refused (a stale new head, a first line that is not a
 * record) and a query across files without memory. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
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
    DIR *d = opendir(f->dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[400];
        snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
        if (e->d_name[0] != '.')
            unlink(p);
    }
    if (d)
        closedir(d);
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

/* The fixture's chain, rotated at rotate_bytes (0: never) keeping `keep`. */
static audit_chain_t *s_open_with(const s_fix_t *f, const audit_key_t *key, s_sync_t *sync,
                                  uint64_t rotate_bytes, uint32_t keep)
{
    audit_chain_opts_t o = {.path = f->log, .key = key, .rotate_bytes = rotate_bytes, .keep = keep};
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

static audit_chain_t *s_open(const s_fix_t *f, const audit_key_t *key, s_sync_t *sync)
{
    return s_open_with(f, key, sync, 0, 0);
}

/* Appends one event as a batch of its own; returns its seq. */
static uint64_t s_append_one(audit_chain_t *c, const char *type, const char *detail,
                             uint64_t time_ms)
{
    proto_audit_event_t ev = {.time_ms = time_ms, .type = type, .type_len = strlen(type),
                              .detail = detail, .detail_len = strlen(detail)};
    uint64_t first = 0;
    audit_error_t err = {0};
    int rc = audit_chain_append(c, &ev, 1, &first, &err);
    if (rc != 0)
        fprintf(stderr, "append: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return first;
}

static void s_append(audit_chain_t *c, const char *type, const char *detail, uint64_t want_seq)
{
    assert_int_equal(s_append_one(c, type, detail, 1700000000000ull + want_seq), want_seq);
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
    assert_true(l.partial); /* fewer than asked, and older ones left out */
    audit_lines_free(&l);
    /* limit found within the bound, or everything read: not partial. */
    q = (audit_query_t){.limit = 1, .bytes_max = 500, .scan_max = 1};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 1);
    assert_false(l.partial);
    audit_lines_free(&l);
    q = (audit_query_t){.limit = 1000, .bytes_max = 1 << 20, .scan_max = 1 << 20};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 9);
    assert_false(l.partial);
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

/* The query reads each file from its end back: whatever lies between the
 * records (lines too long to be one, on either side of a chunk's edge,
 * garbage, empty lines) and a torn last line, it finds exactly the records
 * a forward read finds, newest last, and under scan_max a suffix of them
 * that says it is partial. */
static void test_query_reads_back(void **state)
{
    s_fix_t *f = *state;
    enum { N = 400 };
    s_make(f, NULL, N);
    size_t len;
    char *orig = s_slurp(f->log, &len);
    const char *rec[N];
    size_t rlen[N], k = 0;
    for (char *p = orig; k < N; k++) {
        char *nl = memchr(p, '\n', len - (size_t) (p - orig));
        assert_non_null(nl);
        rec[k] = p;
        rlen[k] = (size_t) (nl - p);
        p = nl + 1;
    }
    static const size_t longs[] = {AUDIT_LINE_MAX - 1, AUDIT_LINE_MAX, AUDIT_LINE_MAX + 1,
                                   40000, 65535, 65536, 65537, 140000};
    char *junk = malloc(140001);
    assert_non_null(junk);
    memset(junk, 'x', 140000);
    srand(7);
    for (int round = 0; round < 12; round++) {
        FILE *fp = fopen(f->log, "wb");
        assert_non_null(fp);
        size_t written = 0;
        for (size_t i = 0; i < N; i++) {
            switch (rand() % 6) {
            case 0: written += fwrite("junk\n", 1, 5, fp); break;
            case 1: written += fwrite("\n", 1, 1, fp); break;
            case 2: {
                size_t n = longs[(size_t) rand() % (sizeof longs / sizeof longs[0])];
                written += fwrite(junk, 1, n, fp);
                written += fwrite("\n", 1, 1, fp);
                break;
            }
            default: break;
            }
            written += fwrite(rec[i], 1, rlen[i] + 1, fp);
        }
        if (round % 3 == 1) /* an append cut short: not a record */
            written += fwrite(rec[0], 1, rlen[0] / 2, fp);
        if (round % 3 == 2) /* ... not even when only its newline is missing */
            written += fwrite(rec[0], 1, rlen[0], fp);
        if (round % 3 == 0 && round) { /* ... nor a record and one octet more */
            written += fwrite(rec[0], 1, rlen[0], fp);
            written += fwrite(" ", 1, 1, fp);
        }
        if (round % 4 == 3) /* ... or a long line with no end */
            written += fwrite(junk, 1, 70000, fp);
        fclose(fp);

        audit_lines_t l;
        audit_error_t err = {0};
        audit_query_t q = {.limit = 1000};
        assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
        assert_int_equal(l.n, N);
        assert_false(l.partial);
        for (size_t i = 0; i < N; i++) {
            assert_int_equal(l.lens[i], rlen[i]);
            assert_memory_equal(l.lines[i], rec[i], rlen[i]);
        }
        audit_lines_free(&l);
        q.limit = 7;
        assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
        assert_int_equal(l.n, 7);
        assert_false(l.partial);
        assert_memory_equal(l.lines[0], rec[N - 7], rlen[N - 7]);
        audit_lines_free(&l);
        /* A scan bound: the newest found within it, and partial. */
        q = (audit_query_t){.limit = 1000, .scan_max = (uint64_t) (rand() % (int) written)};
        assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
        assert_true(l.partial);
        assert_true(l.n < N);
        for (size_t i = 0; i < l.n; i++)
            assert_memory_equal(l.lines[i], rec[N - l.n + i], rlen[N - l.n + i]);
        audit_lines_free(&l);
    }
    free(junk);
    free(orig);
}

/* The words kith audit verify, /api/audit/verify and audit_error carry
 * (WIRE 21.6, 21.9): each enum value has its own, and a value past the
 * last is "unknown". */
static void test_names(void **state)
{
    (void) state;
    static const char *const errs[] = {"ok", "io", "event", "broken", "no_memory"};
    for (int i = 0; i <= AUDIT_E_NO_MEMORY; i++)
        assert_string_equal(audit_err_str((audit_err_t) i), errs[i]);
    assert_string_equal(audit_err_str((audit_err_t) 99), "unknown");
    static const char *const reasons[] = {
        "ok",   "malformed",    "torn",          "seq",          "prev",     "hash", "hmac",
        "hmac_missing", "truncated", "head_mismatch", "head_missing", "head_bad", "io", "rotation"};
    for (int i = 0; i <= AUDIT_V_ROTATION; i++)
        assert_string_equal(audit_verify_reason_str((audit_verify_reason_t) i), reasons[i]);
    assert_string_equal(audit_verify_reason_str((audit_verify_reason_t) 99), "unknown");
}

/* A file that opens but cannot be read (a directory where a log should
 * be: read gives EISDIR) fails a query with AUDIT_E_IO naming it, and a
 * verify with AUDIT_V_IO; in a rotated file's place, the same. */
static void test_read_errors(void **state)
{
    s_fix_t *f = *state;
    audit_lines_t l;
    audit_error_t err = {0};
    audit_query_t q = {.limit = 10};
    audit_verify_result_t r;
    assert_int_equal(mkdir(f->log, 0700), 0);
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), -1);
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, f->log));
    assert_non_null(strstr(err.msg, strerror(EISDIR)));
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_IO);
    assert_int_equal(rmdir(f->log), 0);

    s_make(f, NULL, 3);
    char rotated[400];
    snprintf(rotated, sizeof rotated, "%s.00000000000000000001", f->log);
    assert_int_equal(mkdir(rotated, 0700), 0);
    memset(&err, 0, sizeof err);
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), -1); /* 3 < 10: it reads on */
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, rotated));
    q.limit = 3; /* found in the log: the rotated file is never read */
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 3);
    audit_lines_free(&l);
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_IO);
    assert_non_null(strstr(r.detail, rotated));
    assert_int_equal(rmdir(rotated), 0);
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

/* ------------------------------------------------------------------ rotation */

static audit_chain_t *s_open_rot(const s_fix_t *f, uint64_t rotate_bytes, uint32_t keep,
                                 s_sync_t *sync)
{
    return s_open_with(f, NULL, sync, rotate_bytes, keep);
}

/* Appends one event, whatever its seq; returns it. */
static uint64_t s_add(audit_chain_t *c, int i)
{
    char detail[64];
    snprintf(detail, sizeof detail, "{\"n\":%d,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxx\"}", i);
    return s_append_one(c, "tool_call", detail, 1700000000000ull + (uint64_t) i);
}

/* The rotated files in the fixture's directory, ascending (names of at
 * most 16). */
static size_t s_rotated(const s_fix_t *f, char names[16][64])
{
    size_t n = 0;
    DIR *d = opendir(f->dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (strlen(e->d_name) == strlen("audit.log.") + 20 && !strncmp(e->d_name, "audit.log.", 10)) {
            assert_true(n < 16);
            memcpy(names[n++], e->d_name, strlen("audit.log.") + 20 + 1);
        }
    closedir(d);
    qsort(names, n, 64, (int (*)(const void *, const void *)) strcmp);
    return n;
}

static void s_path(const s_fix_t *f, const char *name, const char *suffix, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s%s", f->dir, name, suffix);
}

static void s_expect_intact(const s_fix_t *f, uint64_t last, uint32_t files)
{
    audit_verify_result_t r;
    int rc = audit_chain_verify(f->log, NULL, &r);
    if (rc != 0)
        fprintf(stderr, "verify: %s\n", r.detail);
    assert_int_equal(rc, 0);
    assert_int_equal(r.files, files);
    assert_int_equal(r.records, last - r.first_seq + 1);
}

static void s_expect_rotation_broken(const s_fix_t *f)
{
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_ROTATION);
    assert_true(r.has_first_bad);
}

static void test_rotation_keeps_the_chain(void **state)
{
    s_fix_t *f = *state;
    audit_chain_t *c = s_open_rot(f, 600, 3, NULL);
    assert_non_null(c);
    uint64_t last = 0;
    for (int i = 0; i < 40; i++)
        last = s_add(c, i);
    char names[16][64];
    size_t n = s_rotated(f, names);
    assert_int_equal(n, 3); /* audit.keep */
    s_expect_intact(f, last, 4);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_true(r.first_seq > 1); /* the ones before were deleted */
    assert_int_equal(strtoull(names[0] + 10, NULL, 10), r.first_seq);

    /* The log opens with the record that chains it on. */
    size_t len;
    char *buf = s_slurp(f->log, &len);
    assert_non_null(strstr(buf, "\"type\":\"audit_rotated\""));
    assert_true(strstr(buf, "\"type\":\"audit_rotated\"") < strchr(buf, '\n'));
    free(buf);

    /* A query reads back through the files, oldest first, with no gap. */
    audit_lines_t l;
    audit_error_t err = {0};
    audit_query_t q = {.limit = 1000};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, r.records);
    for (size_t i = 0; i < l.n; i++) {
        char want[32];
        snprintf(want, sizeof want, "{\"seq\":%llu,", (unsigned long long) (r.first_seq + i));
        assert_memory_equal(l.lines[i], want, strlen(want));
    }
    audit_lines_free(&l);
    /* The newest 5 take records from the file before the log when the log
     * holds fewer; a type filter; a byte bound across files. */
    q = (audit_query_t){.limit = 5};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_int_equal(l.n, 5);
    char want[32];
    snprintf(want, sizeof want, "{\"seq\":%llu,", (unsigned long long) last - 4);
    assert_memory_equal(l.lines[0], want, strlen(want));
    audit_lines_free(&l);
    q = (audit_query_t){.limit = 1000, .type = AUDIT_ROTATED_TYPE};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_true(l.n >= 3);
    audit_lines_free(&l);
    q = (audit_query_t){.limit = 1000, .bytes_max = 1500};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    size_t total = 0;
    for (size_t i = 0; i < l.n; i++)
        total += l.lens[i];
    assert_true(l.n >= 3 && l.n < r.records && total <= 1500);
    snprintf(want, sizeof want, "{\"seq\":%llu,", (unsigned long long) last);
    assert_memory_equal(l.lines[l.n - 1], want, strlen(want));
    assert_true(l.partial);
    audit_lines_free(&l);
    /* A scan bound past the log: the log's records and some of the file
     * before it, the newest, and partial. */
    struct stat st;
    assert_int_equal(stat(f->log, &st), 0);
    q = (audit_query_t){.limit = 1000, .scan_max = (uint64_t) st.st_size + 1};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
    assert_true(l.partial && l.n > 1 && l.n < r.records);
    assert_memory_equal(l.lines[l.n - 1], want, strlen(want));
    for (size_t i = 1; i < l.n; i++) { /* consecutive */
        char at[32];
        snprintf(at, sizeof at, "{\"seq\":%llu,", (unsigned long long) (last - l.n + 1 + i));
        assert_memory_equal(l.lines[i], at, strlen(at));
    }
    audit_lines_free(&l);

    /* Reopened, the chain goes on. */
    audit_chain_close(&c);
    assert_non_null(c = s_open_rot(f, 600, 3, NULL));
    assert_int_equal(audit_chain_last_seq(c), last);
    for (int i = 0; i < 5; i++)
        last = s_add(c, 100 + i);
    audit_chain_close(&c);
    s_expect_intact(f, last, 4);
    /* No rotation: the log grows on. */
    assert_non_null(c = s_open_rot(f, 0, 3, NULL));
    for (int i = 0; i < 10; i++)
        last = s_add(c, 200 + i);
    audit_chain_close(&c);
    assert_int_equal(s_rotated(f, names), 3);
    s_expect_intact(f, last, 4);
}

/* Four rotations kept; returns the last seq. */
static uint64_t s_four_rotations(s_fix_t *f, char names[16][64])
{
    audit_chain_t *c = s_open_rot(f, 500, 10, NULL);
    assert_non_null(c);
    uint64_t last = 0;
    for (int i = 0; i < 40 && s_rotated(f, names) < 4; i++)
        last = s_add(c, i);
    audit_chain_close(&c);
    assert_int_equal(s_rotated(f, names), 4);
    s_expect_intact(f, last, 5);
    return last;
}

static void test_rotation_tampering(void **state)
{
    s_fix_t *f = *state;
    char names[16][64], p[400], q[400], aside[400], aside_head[400];
    /* Beside the chain, under names that are no rotated file's. */
    snprintf(aside, sizeof aside, "%s/aside", f->dir);
    snprintf(aside_head, sizeof aside_head, "%s/aside.head", f->dir);
    /* The oldest removed, as retention would: still intact. */
    uint64_t last = s_four_rotations(f, names);
    s_path(f, names[0], "", p, sizeof p);
    assert_int_equal(unlink(p), 0);
    s_path(f, names[0], ".head", p, sizeof p);
    assert_int_equal(unlink(p), 0);
    s_expect_intact(f, last, 4);
    /* One from the middle removed: the chain has a gap. */
    s_path(f, names[2], "", p, sizeof p);
    s_path(f, names[2], ".head", q, sizeof q);
    assert_int_equal(rename(p, aside), 0);
    assert_int_equal(rename(q, aside_head), 0);
    s_expect_rotation_broken(f);
    assert_int_equal(rename(aside, p), 0);
    assert_int_equal(rename(aside_head, q), 0);
    s_expect_intact(f, last, 4);
    /* A rotated file renamed to another seq: past its neighbour (out of
     * the chain's order), and one past its own first record (in order,
     * but not the name its first record gives it). */
    char r1[400];
    unsigned long long seq2 = strtoull(names[2] + 10, NULL, 10);
    unsigned long long tries[] = {999999ull, seq2 + 1};
    for (size_t k = 0; k < 2; k++) {
        s_path(f, names[2], "", p, sizeof p);
        snprintf(r1, sizeof r1, "%s/audit.log.%020llu", f->dir, tries[k]);
        assert_int_equal(rename(p, r1), 0);
        s_path(f, names[2], ".head", q, sizeof q);
        char r1h[420];
        snprintf(r1h, sizeof r1h, "%s.head", r1);
        assert_int_equal(rename(q, r1h), 0);
        audit_verify_result_t rv;
        assert_int_equal(audit_chain_verify(f->log, NULL, &rv), -1);
        assert_int_equal(rv.reason, AUDIT_V_ROTATION);
        if (k == 1)
            assert_non_null(strstr(rv.detail, "is named for record"));
        assert_int_equal(rename(r1, p), 0);
        assert_int_equal(rename(r1h, q), 0);
        s_expect_intact(f, last, 4);
    }
    /* The log replaced by a chain of its own. */
    assert_int_equal(rename(f->log, aside), 0);
    assert_int_equal(rename(f->head, aside_head), 0);
    audit_chain_t *c = s_open_rot(f, 0, 10, NULL);
    assert_non_null(c);
    s_append(c, "tool_call", "{}", 1);
    audit_chain_close(&c);
    s_expect_rotation_broken(f);
    assert_int_equal(rename(aside, f->log), 0);
    assert_int_equal(rename(aside_head, f->head), 0);
    s_expect_intact(f, last, 4);
    /* A changed byte in a rotated file names that file. */
    s_path(f, names[1], "", p, sizeof p);
    size_t len;
    char *buf = s_slurp(p, &len);
    buf[20] ^= 1;
    s_spit(p, buf, len);
    free(buf);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_non_null(strstr(r.detail, names[1]));
}

/* Makes the state a crash leaves between two steps of a rotation, from the
 * files a whole rotation left: `step` is how many of (2)-(4) ran. */
static void s_unrotate(const s_fix_t *f, const char *rotated, int step)
{
    char log_new[400], head_new[400], rot[400], rot_head[400];
    snprintf(log_new, sizeof log_new, "%s.new", f->log);
    snprintf(head_new, sizeof head_new, "%s.new.head", f->log);
    s_path(f, rotated, "", rot, sizeof rot);
    s_path(f, rotated, ".head", rot_head, sizeof rot_head);
    if (step < 3) /* (3) not run: the new log is still path.new */
        assert_int_equal(rename(f->log, log_new), 0);
    if (step < 4) /* (4) not run: the new head is still path.new.head */
        assert_int_equal(rename(f->head, head_new), 0);
    if (step < 2) { /* nothing moved: the log and its head are back */
        assert_int_equal(rename(rot, f->log), 0);
        assert_int_equal(rename(rot_head, f->head), 0);
        /* and the batch after the rotation never written: path.new holds
         * the audit_rotated record alone. */
        size_t len;
        char *buf = s_slurp(log_new, &len);
        s_spit(log_new, buf, (size_t) (strchr(buf, '\n') - buf) + 1);
        free(buf);
    } else if (step == 2) { /* the log moved, its head not yet */
        assert_int_equal(rename(rot_head, f->head), 0);
    }
}

static void test_rotation_crash_states(void **state)
{
    s_fix_t *f = *state;
    char names[16][64];
    for (int step = 1; step <= 4; step++) {
        /* step 1: only (1) ran; 2: the log moved; 3: (3) ran; 4: all but (5).
         * step 2 also stands for "the log and its head moved". */
        audit_chain_t *c = s_open_rot(f, 300, 100, NULL);
        assert_non_null(c);
        size_t before = s_rotated(f, names);
        uint64_t last = 0;
        while (s_rotated(f, names) == before)
            last = s_add(c, (int) last);
        audit_chain_close(&c);
        size_t n = s_rotated(f, names);
        s_unrotate(f, names[n - 1], step);
        /* Each rename of the recovery failing in turn (step 2: the head's,
         * then the log's; step 3: the new head's): the open is refused
         * and what is left is a state the next open finishes. */
        for (long k = 0; k < (step == 2 ? 2 : step == 3 ? 1 : 0); k++) {
            io_fail_arm(IO_FAIL_RENAME, k, EIO);
            audit_error_t err = {0};
            audit_chain_opts_t o = {.path = f->log, .rotate_bytes = 300, .keep = 100};
            assert_null(audit_chain_open(&o, &err));
            assert_int_equal(io_fail_disarm(), 1);
            assert_int_equal(err.code, AUDIT_E_IO);
            assert_non_null(strstr(err.msg, "cannot finish the rotation"));
        }
        assert_non_null(c = s_open_rot(f, 300, 100, NULL));
        /* Undone (step 1): the log ends at the record before the
         * audit_rotated one; finished: at the batch after it. Either way
         * nothing acknowledged is lost. */
        assert_int_equal(audit_chain_last_seq(c), step == 1 ? last - 2 : last);
        last = s_add(c, 1000 + step);
        audit_chain_close(&c);
        char leftover[400];
        snprintf(leftover, sizeof leftover, "%s.new", f->log);
        assert_false(access(leftover, F_OK) == 0);
        snprintf(leftover, sizeof leftover, "%s.new.head", f->log);
        assert_false(access(leftover, F_OK) == 0);
        audit_verify_result_t r;
        int rc = audit_chain_verify(f->log, NULL, &r);
        if (rc != 0)
            fprintf(stderr, "step %d: %s\n", step, r.detail);
        assert_int_equal(rc, 0);
        assert_int_equal(r.first_seq, 1);
        assert_int_equal(r.records, last);
    }
}

static void test_rotation_failures(void **state)
{
    s_fix_t *f = *state;
    char names[16][64];
    audit_chain_t *c = s_open_rot(f, 300, 100, NULL);
    assert_non_null(c);
    uint64_t last = 0;
    while (s_rotated(f, names) == 0)
        last = s_add(c, (int) last);
    /* Each rename of a rotation failing in turn: the batch is kept in the
     * log, the files are as they were, and the chain is whole. */
    for (long k = 0; k < 3; k++) {
        audit_chain_close(&c);
        assert_non_null(c = s_open_rot(f, 300, 100, NULL));
        size_t before = s_rotated(f, names);
        io_fail_arm(IO_FAIL_RENAME, k, EIO);
        last = s_add(c, 500 + (int) k);
        assert_int_equal(io_fail_disarm(), 1);
        assert_int_equal(s_rotated(f, names), before);
        char leftover[400];
        snprintf(leftover, sizeof leftover, "%s.new", f->log);
        assert_false(access(leftover, F_OK) == 0);
        s_expect_intact(f, last, (uint32_t) before + 1);
    }
    /* The new head failing to move: the rotation stands, the next open
     * puts the head in place. */
    audit_chain_close(&c);
    assert_non_null(c = s_open_rot(f, 300, 100, NULL));
    size_t before = s_rotated(f, names);
    io_fail_arm(IO_FAIL_RENAME, 3, EIO);
    last = s_add(c, 600);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(s_rotated(f, names), before + 1);
    last = s_add(c, 601); /* the head first, then this rotation */
    assert_int_equal(s_rotated(f, names), before + 2);
    audit_chain_close(&c);
    assert_non_null(c = s_open_rot(f, 300, 100, NULL));
    assert_int_equal(audit_chain_last_seq(c), last);
    s_expect_intact(f, last, (uint32_t) before + 3);
    /* The new log failing to sync: no rotation; it is tried again once the
     * log has grown by a sixteenth of rotate_bytes. */
    audit_chain_close(&c);
    s_sync_t sync = {.fail_at = 1};
    assert_non_null(c = s_open_rot(f, 300, 100, &sync));
    before = s_rotated(f, names);
    last = s_add(c, 700);
    assert_int_equal(s_rotated(f, names), before);
    last = s_add(c, 701);
    assert_int_equal(s_rotated(f, names), before + 1);
    audit_chain_close(&c);
    s_expect_intact(f, last, (uint32_t) before + 2);
    /* A file already named for the log's first record: refused, kept. */
    assert_non_null(c = s_open_rot(f, 300, 100, NULL));
    char taken[400];
    size_t len;
    char *buf = s_slurp(f->log, &len);
    unsigned long long first = strtoull(buf + strlen("{\"seq\":"), NULL, 10);
    free(buf);
    snprintf(taken, sizeof taken, "%s.%020llu", f->log, first);
    s_spit(taken, "x", 1);
    before = s_rotated(f, names);
    last = s_add(c, 800);
    assert_int_equal(s_rotated(f, names), before);
    audit_chain_close(&c);
    assert_int_equal(unlink(taken), 0);
    s_expect_intact(f, last, (uint32_t) before);
}

static void test_rotation_without_memory(void **state)
{
    s_fix_t *f = *state;
    char names[16][64];
    audit_chain_t *c = s_open_rot(f, 250, 4, NULL);
    assert_non_null(c);
    uint64_t last = s_add(c, 0);
    last = s_add(c, 1);
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        /* Every allocation of an append that rotates, failing in turn:
         * the append is refused or kept, and the chain stays whole. */
        size_t before = s_rotated(f, names);
        proto_audit_event_t ev = {.time_ms = 1, .type = "tool_call", .type_len = 9,
                                  .detail = "{}", .detail_len = 2};
        uint64_t first;
        audit_error_t err = {0};
        alloc_fail_arm(i);
        int rc = audit_chain_append(c, &ev, 1, &first, &err);
        bool failed = alloc_fail_disarm() > 0;
        if (rc == 0)
            last = first;
        else
            assert_true(failed && err.code == AUDIT_E_NO_MEMORY);
        audit_verify_result_t r;
        int vr = audit_chain_verify(f->log, NULL, &r);
        if (vr != 0)
            fprintf(stderr, "allocation %ld: %s\n", i, r.detail);
        assert_int_equal(vr, 0);
        assert_int_equal(audit_chain_last_seq(c), last);
        if (!failed) { /* rotated, and pruned to audit.keep */
            assert_int_equal(s_rotated(f, names), before + 1 > 4 ? 4 : before + 1);
            break;
        }
        /* Back to a log that holds rotate_bytes, for the next round. */
        audit_chain_close(&c);
        assert_non_null(c = s_open_rot(f, 250, 4, NULL));
    }
    audit_chain_close(&c);
}

/* A writer that rotates at every batch, on a thread of its own. */
typedef struct {
    audit_chain_t *c;
    atomic_bool stop;
    atomic_int batches;
} s_writer_t;

static void *s_writer(void *arg)
{
    s_writer_t *w = arg;
    proto_audit_event_t ev = {.time_ms = 1, .type = "tool_call", .type_len = 9, .detail = "{}",
                              .detail_len = 2};
    while (!atomic_load(&w->stop)) {
        uint64_t first;
        audit_error_t err;
        if (audit_chain_append(w->c, &ev, 1, &first, &err) == 0)
            atomic_fetch_add(&w->batches, 1);
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void test_reads_beside_a_rotating_writer(void **state)
{
    /* `kith audit verify` and `query` beside a running daemon: a rotation
     * between listing the files and reading them must not read as a break
     * in the chain, nor give records out of order. */
    s_fix_t *f = *state;
    s_writer_t w = {.c = s_open_rot(f, 1, 3, NULL)};
    assert_non_null(w.c);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_writer, &w), 0);
    /* The reader reads on and on, so the writer's rotations fall inside its
     * reads; each is 10 ms after the last, far longer than a read, so a
     * read done again finds the files at rest. */
    for (int i = 0; atomic_load(&w.batches) < 40; i++) {
        audit_verify_result_t r;
        int rc = audit_chain_verify(f->log, NULL, &r);
        if (rc != 0)
            fprintf(stderr, "verify %d: %s\n", i, r.detail);
        assert_int_equal(rc, 0);
        audit_lines_t l;
        audit_error_t err = {0};
        audit_query_t q = {.limit = 1000};
        assert_int_equal(audit_chain_query(f->log, &q, &l, &err), 0);
        for (size_t k = 1; k < l.n; k++)
            assert_true(strtoull(l.lines[k] + 7, NULL, 10) == strtoull(l.lines[k - 1] + 7, NULL, 10) + 1);
        audit_lines_free(&l);
    }
    atomic_store(&w.stop, true);
    assert_int_equal(pthread_join(t, NULL), 0);
    audit_chain_close(&w.c);
}

/* ------------------------------------------------------------------ more failures */

/* The write itself fails part way (the file may grow no more: EFBIG under
 * RLIMIT_FSIZE, as a full disk's ENOSPC would): the append is reported,
 * nothing of the batch is acknowledged or left in the log, and the next
 * batch chains from the last durable record. */
static void test_write_failure(void **state)
{
    s_fix_t *f = *state;
    audit_chain_t *c = s_open(f, NULL, NULL);
    assert_non_null(c);
    s_append(c, "pair", "{}", 1);
    struct stat before, after;
    assert_int_equal(stat(f->log, &before), 0);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_xfsz)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = (struct rlimit){.rlim_cur = (rlim_t) before.st_size + 40, .rlim_max = old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    proto_audit_event_t ev[3];
    s_pair_batch(ev);
    uint64_t first = 0;
    audit_error_t err = {0};
    int rc = audit_chain_append(c, ev, 3, &first, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_xfsz);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, "cannot write"));
    assert_non_null(strstr(err.msg, f->log));
    assert_int_equal(first, 0);
    assert_int_equal(audit_chain_last_seq(c), 1);
    assert_int_equal(stat(f->log, &after), 0);
    assert_int_equal(after.st_size, before.st_size); /* the 40 bytes written were cut */
    s_expect_chained_from_one(f, &c, ev);
}

/* Only the head's sync fails: the records are durable, so the append is
 * acknowledged (the head lags one batch, which verify accepts), and the
 * head catches up with the next open. */
static void test_head_sync_failure(void **state)
{
    s_fix_t *f = *state;
    s_sync_t sync = {0};
    audit_chain_t *c = s_open(f, NULL, &sync);
    assert_non_null(c);
    s_append(c, "pair", "{}", 1);
    sync.fail_at = (int) sync.calls + 2; /* the log's sync works, the head's fails */
    s_append(c, "pair", "{}", 2);
    assert_int_equal(sync.calls, (unsigned) sync.fail_at);
    audit_chain_close(&c);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 2);
    assert_non_null(c = s_open(f, NULL, NULL));
    assert_int_equal(audit_chain_last_seq(c), 2);
    audit_chain_close(&c);
    audit_head_t h;
    assert_int_equal(audit_head_read(f->head, NULL, &h), 1);
    assert_int_equal(h.seq, 2);
}

/* The first head of a new log cannot be made durable: the open is refused
 * with an I/O error naming the head, and the next open makes it. */
static void test_open_head_sync_failure(void **state)
{
    s_fix_t *f = *state;
    s_sync_t sync = {.fail_at = 1};
    audit_chain_opts_t o = {.path = f->log, .sync = s_sync, .sync_ud = &sync};
    audit_error_t err = {0};
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, f->head));
    audit_chain_t *c = s_open(f, NULL, NULL);
    assert_non_null(c);
    s_append(c, "pair", "{}", 1);
    audit_chain_close(&c);
    s_expect_intact(f, 1, 1);
}

/* A batch of no events, or of more than a request may hold: refused as an
 * event error, nothing written. */
static void test_batch_bounds(void **state)
{
    s_fix_t *f = *state;
    audit_chain_t *c = s_open(f, NULL, NULL);
    assert_non_null(c);
    proto_audit_event_t ev[1];
    ev[0] = (proto_audit_event_t){.time_ms = 1, .type = "pair", .type_len = 4, .detail = "{}",
                                  .detail_len = 2};
    uint64_t first = 0;
    audit_error_t err = {0};
    assert_int_equal(audit_chain_append(c, ev, 0, &first, &err), -1);
    assert_int_equal(err.code, AUDIT_E_EVENT);
    assert_int_equal(audit_chain_append(c, ev, PROTO_AUDIT_EVENTS_MAX + 1, &first, &err), -1);
    assert_int_equal(err.code, AUDIT_E_EVENT);
    assert_int_equal(audit_chain_last_seq(c), 0);
    struct stat st;
    assert_int_equal(stat(f->log, &st), 0);
    assert_int_equal(st.st_size, 0);
    audit_chain_close(&c);
}

/* A log that cannot be read (a directory where it should be, a link that
 * loops): open, verify and query each say so with an I/O error naming it,
 * and nothing is created or changed. */
static void test_unreadable_log(void **state)
{
    s_fix_t *f = *state;
    audit_error_t err = {0};
    audit_verify_result_t r;
    audit_query_t q = {.limit = 10};
    audit_lines_t lines;
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 0)
            assert_int_equal(mkdir(f->log, 0700), 0);
        else
            assert_int_equal(symlink(f->log, f->log), 0); /* ELOOP */
        audit_chain_opts_t o = {.path = f->log};
        memset(&err, 0, sizeof err);
        assert_null(audit_chain_open(&o, &err));
        assert_int_equal(err.code, AUDIT_E_IO);
        assert_non_null(strstr(err.msg, f->log));
        assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
        assert_int_equal(r.reason, AUDIT_V_IO);
        assert_non_null(strstr(r.detail, f->log));
        memset(&err, 0, sizeof err);
        assert_int_equal(audit_chain_query(f->log, &q, &lines, &err), -1);
        assert_int_equal(err.code, AUDIT_E_IO);
        assert_non_null(strstr(err.msg, f->log));
        assert_int_equal(lines.n, 0);
        unlink(f->head); /* the failed open may have made it */
        if (kind == 0)
            assert_int_equal(rmdir(f->log), 0);
        else
            assert_int_equal(unlink(f->log), 0);
    }
    /* A path.new beside the log (a rotation a crash interrupted) that
     * cannot be dropped: the open is refused, saying so; the log is whole. */
    s_make(f, NULL, 1);
    char new_dir[400], inside[420];
    snprintf(new_dir, sizeof new_dir, "%s.new", f->log);
    snprintf(inside, sizeof inside, "%s/x", new_dir);
    assert_int_equal(mkdir(new_dir, 0700), 0);
    s_spit(inside, "x", 1);
    audit_chain_opts_t o = {.path = f->log};
    memset(&err, 0, sizeof err);
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_IO);
    assert_non_null(strstr(err.msg, "cannot finish the rotation"));
    assert_int_equal(unlink(inside), 0);
    assert_int_equal(rmdir(new_dir), 0);
    s_expect_intact(f, 1, 1);
}

/* A key added to, or dropped from, a log between runs. Records written
 * without a key do not go on under one (the last record has no HMAC), and
 * an empty log's unkeyed head is not taken under a key either (anyone could
 * have written it, over a keyed chain); a keyed empty log opened without
 * the key goes on unkeyed, its head re-written. */
static void test_key_changes_between_runs(void **state)
{
    s_fix_t *f = *state;
    audit_key_t key = {.len = 20};
    memcpy(key.bytes, "0123456789abcdefghij", 20);
    audit_chain_opts_t o = {.path = f->log, .key = &key};
    audit_error_t err = {0};
    /* Unkeyed records, then a key. */
    s_make(f, NULL, 2);
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    assert_non_null(strstr(err.msg, "does not check"));
    s_expect_intact(f, 2, 1);
    /* An unkeyed empty log, then a key. */
    assert_int_equal(unlink(f->log), 0);
    assert_int_equal(unlink(f->head), 0);
    audit_chain_t *c = s_open(f, NULL, NULL);
    assert_non_null(c);
    audit_chain_close(&c);
    memset(&err, 0, sizeof err);
    assert_null(audit_chain_open(&o, &err));
    assert_int_equal(err.code, AUDIT_E_BROKEN);
    assert_non_null(strstr(err.msg, "made with this HMAC key"));
    /* A keyed empty log, then no key: it goes on unkeyed. */
    assert_int_equal(unlink(f->log), 0);
    assert_int_equal(unlink(f->head), 0);
    assert_non_null(c = s_open(f, &key, NULL));
    audit_chain_close(&c);
    audit_head_t h;
    assert_int_equal(audit_head_read(f->head, &key, &h), 1);
    assert_true(h.authenticated);
    assert_non_null(c = s_open(f, NULL, NULL));
    s_append(c, "pair", "{}", 1);
    audit_chain_close(&c);
    assert_int_equal(audit_head_read(f->head, NULL, &h), 1);
    assert_false(h.keyed);
    assert_int_equal(h.seq, 1);
    s_expect_intact(f, 1, 1);
}

/* What stops a rotation and is not a failing call: the log's first line is
 * not a record (so the rotated file could not be named), or a stale
 * path.new.head beside the head. The rotation is refused and logged, the
 * batch goes into the log as usual, and a rotation goes ahead once the
 * cause is gone and the log has grown a sixteenth more. */
static void test_rotation_refused(void **state)
{
    s_fix_t *f = *state;
    char names[16][64], stale[400];
    snprintf(stale, sizeof stale, "%s.new.head", f->log);
    audit_chain_t *c = s_open(f, NULL, NULL); /* past rotate_bytes, not rotated yet */
    assert_non_null(c);
    uint64_t last = 0;
    while (audit_chain_last_seq(c) < 3)
        last = s_add(c, (int) last);
    audit_chain_close(&c);
    s_spit(stale, "left over", 9);
    assert_non_null(c = s_open_rot(f, 300, 4, NULL));
    last = s_add(c, 10);
    assert_int_equal(s_rotated(f, names), 0);
    assert_int_equal(access(stale, F_OK), 0); /* not ours to drop */
    assert_int_equal(unlink(stale), 0);
    s_expect_intact(f, last, 1);
    last = s_add(c, 11);
    assert_int_equal(s_rotated(f, names), 1);
    audit_chain_close(&c);
    s_expect_intact(f, last, 2);

    /* The first line of the (new) log mangled: the file cannot be named. */
    size_t len;
    char *buf = s_slurp(f->log, &len);
    memset(buf, 'x', (size_t) (strchr(buf, '\n') - buf));
    s_spit(f->log, buf, len);
    free(buf);
    while (!(c = s_open_rot(f, 300, 4, NULL)))
        fail_msg("a log whose last record checks opens");
    for (int i = 0; i < 3; i++)
        last = s_add(c, 20 + i);
    assert_int_equal(audit_chain_last_seq(c), last);
    assert_int_equal(s_rotated(f, names), 1);
    audit_chain_close(&c);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), -1);
    assert_int_equal(r.reason, AUDIT_V_MALFORMED);
}

/* A query across rotated files with each allocation failing in turn:
 * refused with no_memory or answered in full, leaking nothing. */
static void test_query_across_files_without_memory(void **state)
{
    s_fix_t *f = *state;
    char names[16][64];
    audit_chain_t *c = s_open_rot(f, 300, 8, NULL);
    assert_non_null(c);
    uint64_t last = 0;
    while (s_rotated(f, names) < 2)
        last = s_add(c, (int) last);
    audit_chain_close(&c);
    audit_query_t q = {.limit = 1000};
    audit_lines_t all;
    audit_error_t err = {0};
    assert_int_equal(audit_chain_query(f->log, &q, &all, &err), 0);
    assert_int_equal(all.n, last);
    bool done = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !done; i++) {
        audit_lines_t l;
        memset(&err, 0, sizeof err);
        alloc_fail_arm(i);
        int rc = audit_chain_query(f->log, &q, &l, &err);
        done = alloc_fail_disarm() == 0;
        if (rc != 0) {
            assert_false(done);
            assert_int_equal(err.code, AUDIT_E_NO_MEMORY);
            assert_int_equal(l.n, 0);
            continue;
        }
        assert_int_equal(l.n, all.n);
        for (size_t k = 0; k < l.n; k++)
            assert_string_equal(l.lines[k], all.lines[k]);
        audit_lines_free(&l);
    }
    assert_true(done);
    audit_lines_free(&all);
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
        T(test_query),                T(test_query_reads_back),
        T(test_long_and_garbage_lines), T(test_names), T(test_read_errors),
        T(test_head_slots),           T(test_open_refuses_what_the_head_denies),
        T(test_open_io_errors),       T(test_without_memory),
        T(test_rotation_keeps_the_chain), T(test_rotation_tampering),
        T(test_rotation_crash_states), T(test_rotation_failures), T(test_rotation_without_memory),
        T(test_reads_beside_a_rotating_writer),
        T(test_write_failure),        T(test_head_sync_failure),  T(test_open_head_sync_failure),
        T(test_batch_bounds),         T(test_unreadable_log),     T(test_key_changes_between_runs),
        T(test_rotation_refused),     T(test_query_across_files_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
