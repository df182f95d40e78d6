/* audit/record.h — one record of the audit chain (WIRE §21.1): the JSON
 * line that holds it, the bytes its hash and HMAC cover, and the strict
 * reading of a line back. No I/O.
 *
 * A line (keys in this order, no whitespace outside strings):
 *
 *   {"seq":N,"time_ms":T,"type":S,"detail":D,"prev":P[,"hmac":M],"hash":H}
 *
 * U, the record's unsigned form, is the line up to (not including) the
 * `,"hash":"` that starts its tail, followed by `}`; H = hex(SHA-256(U)),
 * so H covers every other byte of the line, M included, and a changed byte
 * anywhere is caught without the key. With a key, M = hex(HMAC-SHA256(key,
 * V)), V being U's line part up to the `,"hmac":"` member, followed by `}`
 * (the JSON object {seq, time_ms, type, detail, prev}). P = the previous
 * record's H, or 64 zeros for seq 1. Hex is lowercase. */
#ifndef KITH_AUDIT_RECORD_H
#define KITH_AUDIT_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include "proto/audit_msg.h"

#define AUDIT_HASH_LEN 32u                  /* SHA-256 and HMAC-SHA256 */
#define AUDIT_HEX_LEN 64u                   /* their lowercase hex */
#define AUDIT_LINE_MAX PROTO_AUDIT_RECORD_MAX /* one line, newline excluded */
#define AUDIT_DETAIL_DEPTH_MAX 16u          /* nesting inside a detail object */
#define AUDIT_HMAC_KEY_MIN 16u              /* shortest HMAC key accepted, bytes */
#define AUDIT_HMAC_KEY_MAX 1024u            /* longest */

/* `prev` of the first record. */
extern const uint8_t audit_genesis[AUDIT_HASH_LEN];

/* An HMAC key (the bytes of the environment variable audit.hmac_key_env
 * names). Wipe with audit_key_clear. */
typedef struct {
    uint8_t bytes[AUDIT_HMAC_KEY_MAX];
    size_t len;                         /* 0: no key */
} audit_key_t;

/* Takes the key from environment variable `name` (NULL or "": no key, 0).
 * Returns 0, or -1 with a one-line reason (unset, too short, too long). */
int audit_key_from_env(audit_key_t *key, const char *name, char *err, size_t errcap)
    __attribute__((warn_unused_result));
void audit_key_clear(audit_key_t *key);

/* Why a line is not a good record (also the `reason` verify reports). */
typedef enum {
    AUDIT_REC_OK = 0,
    AUDIT_REC_MALFORMED,    /* not a record line: JSON, keys, types, tail */
    AUDIT_REC_HASH,         /* H is not SHA-256(U) */
    AUDIT_REC_HMAC,         /* M is not HMAC-SHA256(key, U) */
    AUDIT_REC_HMAC_MISSING, /* a key is in force and the record has no M */
    AUDIT_REC_NO_MEMORY,    /* not checked: out of memory (says nothing of the line) */
} audit_rec_err_t;

const char *audit_rec_err_str(audit_rec_err_t e);

/* What a line says, once read. */
typedef struct {
    uint64_t seq;
    uint64_t time_ms;
    char type[PROTO_AUDIT_TYPE_MAX + 1];   /* unescaped */
    uint8_t prev[AUDIT_HASH_LEN];
    uint8_t hash[AUDIT_HASH_LEN];
    bool has_hmac;
    uint8_t hmac[AUDIT_HASH_LEN];
} audit_record_t;

/* Writes the line of record `seq` for `ev` after `prev` into out[cap]
 * (newline excluded, not NUL-terminated) and its hash into hash. The detail
 * must be JSON text of one object (nested at most AUDIT_DETAIL_DEPTH_MAX);
 * it is re-written compactly, so the record stays one line. `key` may be
 * NULL or empty (no HMAC). Returns the line's length, or -1 with a reason in
 * err (bad detail, type, or the line would not fit). */
long audit_record_format(uint64_t seq, const proto_audit_event_t *ev,
                         const uint8_t prev[AUDIT_HASH_LEN], const audit_key_t *key, char *out,
                         size_t cap, uint8_t hash[AUDIT_HASH_LEN], char *err, size_t errcap);

/* Reads line[0..len) (newline excluded) into *out without checking its
 * hash: for query, which trusts the file. Returns 0, -1 (malformed) or -2
 * (out of memory: the line was not read, which says nothing of it). */
int audit_record_read(const char *line, size_t len, audit_record_t *out)
    __attribute__((warn_unused_result));

/* audit_record_read, then recomputes H (and M when `key` is non-empty).
 * Returns AUDIT_REC_OK or why not; *out is filled as far as it was read. */
audit_rec_err_t audit_record_check(const char *line, size_t len, const audit_key_t *key,
                                   audit_record_t *out) __attribute__((warn_unused_result));

void audit_hex(const uint8_t *bin, size_t n, char *out); /* out: 2n + 1 */

#endif
