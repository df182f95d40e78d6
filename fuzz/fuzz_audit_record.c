/* fuzz/fuzz_audit_record.c — audit.log lines read back (audit/record.c,
 * WIRE §21.1): `kith audit verify`, GET /api/audit/verify and the query
 * read whatever the file holds, and a tampered file is what the chain is
 * for. The first byte picks a mode:
 *   bit 0: an HMAC key is in force;
 *   bit 1: the rest is a line to read and check (else: a detail to write).
 * Reading: never crashes; a line that checks OK also reads OK, with the
 * same fields, and a line that reads OK has seq ≥ 1 and a type within its
 * bound. Writing: a detail audit_record_format accepts gives a line of
 * one line (no LF) that checks OK under the same key, reads back the seq,
 * time and type it was given, and whose hash is the one returned; changing
 * any one byte of it makes the check fail. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audit/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static audit_key_t s_key;

static void s_read(const char *line, size_t len, const audit_key_t *key)
{
    audit_record_t a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int rd = audit_record_read(line, len, &a);
    audit_rec_err_t ck = audit_record_check(line, len, key, &b);
    if (rd == 0 && (a.seq < 1 || strlen(a.type) == 0 || strlen(a.type) > PROTO_AUDIT_TYPE_MAX))
        abort();
    if (ck == AUDIT_REC_OK) {
        if (rd != 0 || a.seq != b.seq || a.time_ms != b.time_ms || strcmp(a.type, b.type) != 0 ||
            memcmp(a.prev, b.prev, sizeof a.prev) != 0 || memcmp(a.hash, b.hash, sizeof a.hash) != 0)
            abort();
        if (key->len && !b.has_hmac)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > AUDIT_LINE_MAX + 1)
        return 0;
    if (!s_key.len) {
        memset(s_key.bytes, 0x5a, 32);
        s_key.len = 32;
    }
    audit_key_t none = {.len = 0};
    const audit_key_t *key = (data[0] & 1) ? &s_key : &none;
    const char *p = (const char *) data + 1;
    size_t n = size - 1;
    if (data[0] & 2) {
        s_read(p, n, key);
        return 0;
    }
    /* Writing: p[n] is the detail; seq and time from the mode byte. */
    char *detail = malloc(n + 1);
    char *line = malloc(AUDIT_LINE_MAX);
    if (!detail || !line)
        abort();
    memcpy(detail, p, n);
    detail[n] = '\0';
    uint8_t prev[AUDIT_HASH_LEN], hash[AUDIT_HASH_LEN];
    memset(prev, data[0], sizeof prev);
    uint64_t seq = 1u + (data[0] >> 2);
    proto_audit_event_t ev = {.time_ms = 1700000000000ull + data[0], .type = "fuzz.event",
                              .type_len = 10, .detail = detail, .detail_len = n};
    char err[160];
    long len = audit_record_format(seq, &ev, prev, key, line, AUDIT_LINE_MAX, hash, err, sizeof err);
    if (len >= 0) {
        if (memchr(line, '\n', (size_t) len))
            abort();
        audit_record_t r;
        if (audit_record_check(line, (size_t) len, key, &r) != AUDIT_REC_OK || r.seq != seq ||
            r.time_ms != ev.time_ms || strcmp(r.type, "fuzz.event") != 0 ||
            memcmp(r.hash, hash, sizeof hash) != 0 || memcmp(r.prev, prev, sizeof prev) != 0)
            abort();
        /* One changed byte is caught. */
        size_t at = (size_t) data[0] * 7919u % (size_t) len;
        line[at] ^= 0x01;
        if (audit_record_check(line, (size_t) len, key, &r) == AUDIT_REC_OK)
            abort();
        s_read(line, (size_t) len, key);
    }
    free(detail);
    free(line);
    return 0;
}
