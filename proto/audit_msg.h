/* proto/audit_msg.h — the audit bodies of spec/worker.cddl (DESIGN §9,
 * WIRE §21): typed encode and strict, bounded decode of
 *
 *   audit-append   {type:"audit_append", events:[+ {time_ms, type, detail}]}
 *   audit-appended {type:"audit_appended", first_seq, count}
 *   audit-query    {type:"audit_query", limit, ? event_type, ? since_ms}
 *   audit-records  {type:"audit_records", records:[* tstr], ? partial}
 *   audit-verify   {type:"audit_verify"}
 *   audit-verified {type:"audit_verified", ok, records, ? first_bad, ? reason,
 *                   ? files, ? first_seq}
 *   audit-error    {type:"audit_error", code, message}   (any request that failed)
 *
 * What the decoder accepts (each refusal a typed reason below): one CBOR
 * item of at most PROTO_AUDIT_MSG_MAX bytes, definite lengths, nesting at
 * most PROTO_AUDIT_DEPTH_MAX, at most PROTO_AUDIT_ITEMS_MAX data items; a
 * map with text keys, exactly the keys its `type` allows (CDDL maps are
 * closed), none twice; unsigned integers where the schema says uint (no
 * negative, float or tagged stand-ins); text that is UTF-8 without NUL
 * bytes, within the length bounds below; an audit-error `code` of the five
 * worker.cddl names and `partial` only as true (both BAD_VALUE otherwise,
 * and the encoder refuses what the decoder would). No I/O; no libsodium. */
#ifndef KITH_PROTO_AUDIT_MSG_H
#define KITH_PROTO_AUDIT_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One body, as worker.cddl bounds it (1 MiB). */
#define PROTO_AUDIT_MSG_MAX (1024u * 1024u)
/* Nesting: the body map, an array, an event map (3); slack for nothing else. */
#define PROTO_AUDIT_DEPTH_MAX 4u
/* Data items in one body (keys count): bounds libcbor's heap per decode. */
#define PROTO_AUDIT_ITEMS_MAX 16384u
/* Events in one audit-append: one group commit each. */
#define PROTO_AUDIT_EVENTS_MAX 1024u
/* An event's type: 1..64 bytes (worker.cddl). */
#define PROTO_AUDIT_TYPE_MAX 64u
/* An event's detail, JSON text bytes. */
#define PROTO_AUDIT_DETAIL_MAX 8192u
/* audit-query limit (worker.cddl: at most 1000), and records in one reply. */
#define PROTO_AUDIT_LIMIT_MAX 1000u
/* One record line of audit.log, newline excluded (WIRE §21.1). */
#define PROTO_AUDIT_RECORD_MAX 16384u
/* audit-verified reason and audit-error message, bytes. */
#define PROTO_AUDIT_REASON_MAX 256u
/* audit-error code, bytes ("bad_request", "event", "io", "broken", "no_memory"). */
#define PROTO_AUDIT_CODE_MAX 32u

typedef enum {
    PROTO_AUDIT_APPEND = 1, /* "audit_append"   router → worker */
    PROTO_AUDIT_APPENDED,   /* "audit_appended" worker → router */
    PROTO_AUDIT_QUERY,      /* "audit_query"    router → worker */
    PROTO_AUDIT_RECORDS,    /* "audit_records"  worker → router */
    PROTO_AUDIT_VERIFY,     /* "audit_verify"   router → worker */
    PROTO_AUDIT_VERIFIED,   /* "audit_verified" worker → router */
    PROTO_AUDIT_ERROR,      /* "audit_error"    worker → router */
} proto_audit_kind_t;

/* Why a body was refused. */
typedef enum {
    PROTO_AUDIT_OK = 0,
    PROTO_AUDIT_E_TOO_LARGE,      /* more than PROTO_AUDIT_MSG_MAX bytes or ITEMS_MAX items */
    PROTO_AUDIT_E_MALFORMED,      /* not one well-formed definite-length CBOR item */
    PROTO_AUDIT_E_BAD_UTF8,       /* a text string that is not UTF-8 */
    PROTO_AUDIT_E_TOO_DEEP,       /* nesting beyond PROTO_AUDIT_DEPTH_MAX */
    PROTO_AUDIT_E_NOT_MAP,        /* the body (or an event) is not a map with text keys */
    PROTO_AUDIT_E_UNKNOWN_TYPE,   /* `type` names no audit body */
    PROTO_AUDIT_E_MISSING_FIELD,  /* a required key is absent */
    PROTO_AUDIT_E_UNKNOWN_FIELD,  /* a key the body's schema does not have */
    PROTO_AUDIT_E_DUPLICATE_KEY,  /* one key twice in a map */
    PROTO_AUDIT_E_WRONG_TYPE,     /* a value of the wrong CBOR type */
    PROTO_AUDIT_E_BAD_VALUE,      /* out of range: empty events, limit > 1000, type length, NUL,
                                     an unknown error code, partial false */
    PROTO_AUDIT_E_TOO_MANY,       /* more events or records than the bounds above */
    PROTO_AUDIT_E_NO_MEMORY,      /* kith ran out of memory */
} proto_audit_err_t;

/* A stable snake_case name: "missing_field", … */
const char *proto_audit_err_str(proto_audit_err_t e);
/* The wire `type` of a kind: "audit_append", … */
const char *proto_audit_kind_str(proto_audit_kind_t k);

/* One audit event. Text is NUL-terminated and its length given too. */
typedef struct {
    uint64_t time_ms;   /* Unix ms */
    const char *type;   /* 1..PROTO_AUDIT_TYPE_MAX bytes */
    size_t type_len;
    const char *detail; /* JSON text (a JSON object, checked by the audit worker) */
    size_t detail_len;
} proto_audit_event_t;

/* A text string with its length (record lines). */
typedef struct {
    const char *p;
    size_t len;
} proto_audit_text_t;

/* Any audit body. Fields beyond `kind` are used by that kind only. A
 * decoded message owns every pointer in it (proto_audit_msg_clear); one the
 * caller fills to encode borrows them. */
typedef struct {
    proto_audit_kind_t kind;
    /* APPEND */
    proto_audit_event_t *events;
    size_t n_events;            /* 1..PROTO_AUDIT_EVENTS_MAX */
    /* APPENDED; VERIFIED when has_first_seq */
    uint64_t first_seq;         /* the seq of events[0]; the oldest record verified */
    uint64_t count;             /* events appended */
    /* QUERY */
    uint32_t limit;             /* 0..PROTO_AUDIT_LIMIT_MAX */
    const char *event_type;     /* NULL: any type */
    size_t event_type_len;
    bool has_since;
    uint64_t since_ms;          /* records with time_ms >= since_ms */
    /* RECORDS */
    proto_audit_text_t *records;
    size_t n_records;           /* 0..PROTO_AUDIT_LIMIT_MAX */
    bool partial;               /* a bound stopped the read short of limit; sent when true */
    /* VERIFIED */
    bool ok;
    uint64_t checked;           /* `records`: how many records were checked */
    bool has_first_bad;
    uint64_t first_bad;         /* seq of the first bad record */
    bool has_first_seq;         /* first_seq is sent (a rotated chain, or seq 1 on) */
    uint64_t files;             /* files read: the log and its rotated ones; 0: not sent */
    const char *reason;         /* VERIFIED: NULL when absent; ERROR: the message */
    size_t reason_len;
    /* ERROR */
    const char *code;           /* 1..PROTO_AUDIT_CODE_MAX bytes */
    size_t code_len;
} proto_audit_msg_t;

/* Decodes exactly len bytes into *out (zeroed first). Returns 0, or -1 with
 * *err set and *out empty. The caller clears a decoded message. */
int proto_audit_msg_decode(const uint8_t *p, size_t len, proto_audit_msg_t *out,
                           proto_audit_err_t *err) __attribute__((warn_unused_result));

/* Frees what a decode allocated and zeroes *m. Only for decoded messages. */
void proto_audit_msg_clear(proto_audit_msg_t *m);

/* Encodes *m (its kind's fields) as worker.cddl says, in canonical key
 * order, into a new heap buffer (*out, caller frees with free()). The same
 * bounds as the decoder apply, so what is encoded decodes. Returns 0, or -1
 * with *err set (BAD_VALUE, TOO_MANY, TOO_LARGE, NO_MEMORY). */
int proto_audit_msg_encode(const proto_audit_msg_t *m, uint8_t **out, size_t *len,
                           proto_audit_err_t *err) __attribute__((warn_unused_result));

#endif
