/* audit/chain.h — the tamper-evident audit log (DESIGN §9, WIRE §21): an
 * append-only file of JSON lines, each carrying the previous line's hash,
 * plus a head file that remembers the last durable record.
 *
 *   - append: a batch of events becomes consecutive records, written with
 *     one write and made durable with one fsync of the log and one of the
 *     head (group commit); nothing is acknowledged before both.
 *   - rotation: once the log holds rotate_bytes, it is renamed for the seq
 *     of its first record (path.<20 digits>; the oldest past `keep`
 *     deleted) and a new log goes on with the same chain, opened by an
 *     `audit_rotated` record (WIRE §21.10).
 *   - verify: recomputes every hash (and HMAC with a key), checks seq and
 *     prev links and the head, follows the chain back through the rotated
 *     files, and names the first bad record.
 *   - query: the newest matching records, oldest first, across the files,
 *     read from their ends back, so a query costs what it reads back to
 *     its oldest match (and at most scan_max bytes), not the whole log.
 *
 * A chain is used by one thread at a time (the audit worker's). verify and
 * query only read, so `kith audit` runs them beside a live daemon. */
#ifndef KITH_AUDIT_CHAIN_H
#define KITH_AUDIT_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit/record.h"
#include "proto/audit_msg.h"

#define AUDIT_ERR_MAX 320
/* The head file's name is the log's with this appended. */
#define AUDIT_HEAD_SUFFIX ".head"
/* The type of the record that opens a log after a rotation: it chains on
 * from the last record of the file before (the newest path.<seq>). */
#define AUDIT_ROTATED_TYPE "audit_rotated"
/* Rotated files a chain keeps at most (audit.keep). */
#define AUDIT_KEEP_MAX 1000u

typedef enum {
    AUDIT_OK = 0,
    AUDIT_E_IO,        /* a read, write or fsync failed (the message names it) */
    AUDIT_E_EVENT,     /* an event was refused: type, or detail not a JSON object */
    AUDIT_E_BROKEN,    /* the log disagrees with its head or key: refuses to append */
    AUDIT_E_NO_MEMORY,
} audit_err_t;

typedef struct {
    audit_err_t code;
    char msg[AUDIT_ERR_MAX]; /* one line for people */
} audit_error_t;

const char *audit_err_str(audit_err_t e);

/* Failure injection: stands in for fdatasync(fd); returns 0 or -1 (errno). */
typedef int (*audit_sync_fn)(int fd, void *ud);

typedef struct {
    const char *path;          /* the log; the head is path + AUDIT_HEAD_SUFFIX */
    const audit_key_t *key;    /* HMAC key; NULL or empty: none. Copied. */
    audit_sync_fn sync;        /* NULL: fdatasync */
    void *sync_ud;
    uint64_t rotate_bytes;     /* rotate once the log holds this many bytes; 0: never */
    uint32_t keep;             /* rotated files kept, 1..AUDIT_KEEP_MAX (0: 1) */
} audit_chain_opts_t;

typedef struct audit_chain audit_chain_t;

/* Opens (or creates, 0600) the log and its head and finds where the chain
 * goes on: the last record's seq and hash, checked against the head and
 * the key. A rotation a crash interrupted is finished or undone first, and
 * a last line torn by a crash (no newline, never acknowledged) is cut off. Refuses (AUDIT_E_BROKEN) a log whose head says records are
 * missing, whose last record does not check, or that was written with a
 * different key. Returns NULL with *err set. Caller owns the result. */
audit_chain_t *audit_chain_open(const audit_chain_opts_t *o, audit_error_t *err);

/* Closes the files. Idempotent; nulls *self_p. */
void audit_chain_close(audit_chain_t **self_p);

/* Appends ev[0..n) as records last_seq+1 …, durably (group commit), and
 * sets *first_seq. A log that holds rotate_bytes is rotated first; a
 * rotation that fails is logged and undone, and the batch goes on in the
 * same log (tried again with the next batch). All or nothing: on any failure no record is
 * acknowledged, the log is cut back to its last durable length (a cut that
 * fails is retried before the next batch is written, which is refused while
 * it keeps failing), and the chain goes on from the last durable record.
 * Returns 0, or -1 with *err. */
int audit_chain_append(audit_chain_t *self, const proto_audit_event_t *ev, size_t n,
                       uint64_t *first_seq, audit_error_t *err) __attribute__((warn_unused_result));

/* The last durable record's seq (0 for an empty log). */
uint64_t audit_chain_last_seq(const audit_chain_t *self);
const char *audit_chain_path(const audit_chain_t *self);

/* ------------------------------------------------------------ verify */

typedef enum {
    AUDIT_V_OK = 0,
    AUDIT_V_MALFORMED,     /* a line that is not a record (first_bad: the seq due there) */
    AUDIT_V_TORN,          /* the last line has no newline */
    AUDIT_V_SEQ,           /* seq is not the previous one + 1 */
    AUDIT_V_PREV,          /* prev is not the previous record's hash */
    AUDIT_V_HASH,          /* the record's hash does not match its bytes */
    AUDIT_V_HMAC,          /* its HMAC does not match */
    AUDIT_V_HMAC_MISSING,  /* a key is in force and the record has no HMAC */
    AUDIT_V_TRUNCATED,     /* the head names a record past the log's end */
    AUDIT_V_HEAD_MISMATCH, /* the record the head names has another hash */
    AUDIT_V_HEAD_MISSING,  /* records, but no head file */
    AUDIT_V_HEAD_BAD,      /* a head file with no valid slot */
    AUDIT_V_IO,            /* the log or head cannot be read */
    AUDIT_V_ROTATION,      /* a log does not go on from the rotated file before it */
} audit_verify_reason_t;

/* The `reason` word on the wire and in `kith audit verify`: "hash", … */
const char *audit_verify_reason_str(audit_verify_reason_t r);

typedef struct {
    const audit_key_t *key; /* NULL or empty: HMACs are not checked */
    bool no_head;           /* skip the head (a log copied without it) */
} audit_verify_opts_t;

typedef struct {
    bool ok;
    uint64_t records;                /* good records read before the first bad one */
    bool has_first_bad;
    uint64_t first_bad;              /* seq of the first bad (or first missing) record */
    audit_verify_reason_t reason;
    bool hmac_seen_unchecked;        /* records carry HMACs but no key was given */
    uint32_t files;                  /* files read: the log and its rotated ones */
    uint64_t first_seq;              /* seq of the oldest record kept (0: none) */
    bool no_memory;                  /* reason io: out of memory, nothing is known of the log */
    char detail[AUDIT_ERR_MAX];      /* one line for people */
} audit_verify_result_t;

/* Verifies the log at `path` (a missing log is an empty one) and the
 * rotated files before it (path.<seq of its first record>, 20 digits),
 * oldest first: each file must chain on from the one before, and the
 * oldest kept may start where rotation deleted the ones before it. Returns
 * 0 when intact, -1 otherwise; *out says what was found either way. */
int audit_chain_verify(const char *path, const audit_verify_opts_t *o, audit_verify_result_t *out)
    __attribute__((warn_unused_result));

/* ------------------------------------------------------------ query */

typedef struct {
    uint32_t limit;          /* newest matches kept, at most PROTO_AUDIT_LIMIT_MAX */
    const char *type;        /* NULL: any */
    bool has_since;
    uint64_t since_ms;       /* time_ms >= since_ms */
    size_t bytes_max;        /* total line bytes kept; 0: no bound beyond limit */
    uint64_t scan_max;       /* bytes of the files read, all together; 0: no bound */
} audit_query_t;

typedef struct {
    char **lines;            /* NUL-terminated, oldest first; lines not kept are skipped */
    size_t *lens;
    size_t n;
    bool partial;            /* bytes_max or scan_max stopped the read: older matches may exist */
} audit_lines_t;

void audit_lines_free(audit_lines_t *l);

/* The newest q->limit records of `path` and its rotated files that match,
 * oldest first; lines that are not records are skipped (verify reports
 * them). The files are read newest first, each from its end back, until
 * limit matches are found, or the next would take the lines past
 * bytes_max, or scan_max bytes have been read; out->partial says one of
 * the last two stopped it with fewer than limit. Returns 0 with *out (the
 * caller frees it), or -1 with *err. A missing log has no records. */
int audit_chain_query(const char *path, const audit_query_t *q, audit_lines_t *out,
                      audit_error_t *err) __attribute__((warn_unused_result));

#endif
