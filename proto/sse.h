/* proto/sse.h — Server-Sent Events (WHATWG HTML §9.2 "Server-sent events"):
 * the event stream parser (sse.rl), an event accumulator on top of it, and
 * the encoder (sse_encode.c).
 *
 * Three layers, pick the one you need:
 *   - proto_sse_parse: the grammar. Hands each field's value to a callback as
 *     slices of the caller's buffer ("pieces"), so an event of any size passes
 *     through without the parser storing a byte; stops at every blank line
 *     (the end of an event block).
 *   - proto_sse_reader_next: the interpretation (§9.2.6). Builds dispatched
 *     events in a caller-provided buffer, with typed errors at its bounds.
 *   - proto_sse_encode / proto_sse_encode_comment: the server side.
 *
 * The stream is treated as octets. UTF-8 decoding (which the spec applies
 * first, replacing invalid sequences with U+FFFD) is left to the consumer:
 * values are handed out byte for byte. A leading UTF-8 BOM is stripped.
 *
 * Parsing convention (picohttpparser): bytes consumed, -2 for "took every
 * byte, need more", -1 for an error with a typed reason. Fed whole or a byte
 * at a time, the same stream yields the same pieces and events. */
#ifndef KITH_PROTO_SSE_H
#define KITH_PROTO_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Longest line the parser accepts by default, excluding its end-of-line; a
 * parser may be configured lower, never higher. */
#define PROTO_SSE_LINE_MAX (1024u * 1024u)

/* Largest `retry:` value (milliseconds) taken; larger ones are ignored. */
#define PROTO_SSE_RETRY_MAX UINT32_MAX

/* Longest event type and last event ID the reader keeps. */
#define PROTO_SSE_TYPE_MAX 128u
#define PROTO_SSE_ID_MAX 256u

/* Why parsing, reading or encoding failed. */
typedef enum {
    PROTO_SSE_OK = 0,          /* no error */
    PROTO_SSE_LINE_TOO_LONG,   /* parser: a line exceeds its limit */
    PROTO_SSE_ABORTED,         /* parser: the piece callback returned non-zero */
    PROTO_SSE_DATA_TOO_LONG,   /* reader: event data exceeds the caller's buffer */
    PROTO_SSE_TYPE_TOO_LONG,   /* reader: event type exceeds PROTO_SSE_TYPE_MAX */
    PROTO_SSE_ID_TOO_LONG,     /* reader: an id exceeds PROTO_SSE_ID_MAX */
    PROTO_SSE_NO_ROOM,         /* encoder: the output buffer is too small */
    PROTO_SSE_BAD_ID,          /* encoder: id contains CR, LF or NUL */
    PROTO_SSE_BAD_TYPE,        /* encoder: event type contains CR, LF or NUL */
    PROTO_SSE_BAD_RETRY,       /* encoder: retry above PROTO_SSE_RETRY_MAX */
} proto_sse_reason_t;

/* A stable lower-case name for a reason, e.g. "line_too_long". */
const char *proto_sse_reason_str(proto_sse_reason_t reason);

/* ------------------------------------------------------------ the parser */

/* The fields the spec gives meaning to, plus comments. Lines naming any
 * other field are ignored (§9.2.6) and produce no pieces. */
typedef enum {
    PROTO_SSE_FIELD_NONE = 0, /* no field (internal: unknown or between lines) */
    PROTO_SSE_FIELD_DATA,     /* "data" */
    PROTO_SSE_FIELD_EVENT,    /* "event" */
    PROTO_SSE_FIELD_ID,       /* "id" */
    PROTO_SSE_FIELD_RETRY,    /* "retry" */
    PROTO_SSE_FIELD_COMMENT,  /* a line starting with ':' */
} proto_sse_field_t;

/* Part of one line's value. A line yields one or more pieces: the first has
 * `first`, the last `last` (one piece may be both). The value is what follows
 * the first ':' with one leading space removed; a field line without ':' has
 * an empty value. */
typedef struct {
    proto_sse_field_t field; /* which field this line sets */
    const uint8_t *value;    /* fragment, into the buffer being parsed; NULL when len is 0 */
    size_t len;              /* fragment length; may be 0 */
    bool first;              /* first piece of this line */
    bool last;               /* the line ended: the value is complete */
    bool ignore;             /* with `last`: the spec says to ignore this field
                              * (an id containing NUL; a retry that is not
                              * 1+ ASCII digits or exceeds PROTO_SSE_RETRY_MAX) */
    uint32_t retry_ms;       /* with `last` on a retry not ignored: its value */
} proto_sse_piece_t;

/* Receives pieces; `piece` and the bytes it points to are valid only during
 * the call. Return 0 to go on, non-zero to stop the parser
 * (PROTO_SSE_ABORTED). */
typedef int (*proto_sse_piece_fn)(void *user, const proto_sse_piece_t *piece);

/* Incremental parser. Embed it anywhere; fields are private to sse.rl. */
typedef struct {
    int cs;                    /* Ragel state */
    size_t line_max;           /* longest line accepted */
    size_t line_len;           /* octets of the current line so far */
    proto_sse_field_t field;   /* field of the current line */
    const uint8_t *mark;       /* start of the value bytes in the current buffer */
    bool in_value;             /* value bytes have started on this line */
    bool first;                /* no piece of this line delivered yet */
    bool ignore;               /* id with NUL, or retry not a valid number */
    bool retry_digits;         /* retry value has at least one digit */
    uint32_t retry_ms;         /* retry value so far */
    bool blank;                /* exec stopped at a blank line */
    proto_sse_piece_fn on_piece; /* callback of the current parse call */
    void *user;                /* its argument */
    proto_sse_reason_t reason; /* why the parser failed; sticky */
} proto_sse_parser_t;

/* Prepare a parser for a new stream, with lines of at most `line_max` octets
 * (1 .. PROTO_SSE_LINE_MAX). Returns 0, or -1 when line_max is out of range. */
int proto_sse_parser_init(proto_sse_parser_t *sp, size_t line_max)
    __attribute__((warn_unused_result));

/* Parse `buf` (len bytes), calling `on_piece` for each piece. Returns the
 * bytes consumed through a blank line (the end of an event block: the caller
 * dispatches if the block set data), -2 when all `len` bytes were taken
 * without reaching one, or -1 on error (every later call fails too). Call
 * again with the rest of the buffer after a blank line. */
ssize_t proto_sse_parse(proto_sse_parser_t *sp, const uint8_t *buf, size_t len,
                        proto_sse_piece_fn on_piece, void *user)
    __attribute__((warn_unused_result));

/* Why the parser failed; PROTO_SSE_OK while it has not. */
proto_sse_reason_t proto_sse_parser_reason(const proto_sse_parser_t *sp);

/* ------------------------------------------------------------ the reader */

/* A dispatched event. Every pointer is into the reader (or its data buffer)
 * and stays valid until the next call on that reader. */
typedef struct {
    const char *type;      /* event type; "message" when the block set none */
    size_t type_len;       /* its length */
    const uint8_t *data;   /* data lines joined with LF (no trailing LF) */
    size_t data_len;       /* its length; may be 0 */
    const char *id;        /* the last event ID at dispatch; "" if none */
    size_t id_len;         /* its length */
    int64_t retry_ms;      /* the latest valid retry on the stream, or -1 */
} proto_sse_event_t;

/* Accumulates pieces into events (§9.2.6 "Interpreting an event stream").
 * Embed it anywhere; fields are private to sse.rl. */
typedef struct {
    proto_sse_parser_t parser;       /* the grammar underneath */
    uint8_t *data;                   /* caller's buffer for event data */
    size_t data_cap;                 /* its capacity: the largest event data */
    size_t data_len;                 /* bytes of data so far */
    size_t data_lines;               /* data lines in the current block */
    char type[PROTO_SSE_TYPE_MAX];   /* event type buffer */
    size_t type_len;                 /* its length */
    char id[PROTO_SSE_ID_MAX];       /* last event ID buffer */
    size_t id_len;                   /* its length */
    char id_next[PROTO_SSE_ID_MAX];  /* an id line being read, kept unless ignored */
    size_t id_next_len;              /* its length */
    int64_t retry_ms;                /* reconnection time from the stream, or -1 */
    bool delivered;                  /* an event was handed out: clear on next call */
    proto_sse_reason_t reason;       /* why the reader failed; sticky */
} proto_sse_reader_t;

/* Prepare a reader for a new stream, assembling event data in `data`
 * (data_cap bytes, caller-owned, must outlive the reader; data_cap may be 0
 * for a reader that only accepts events with empty data), with lines of at
 * most `line_max` octets. Returns 0, or -1 when an argument is out of range. */
int proto_sse_reader_init(proto_sse_reader_t *r, uint8_t *data, size_t data_cap,
                          size_t line_max)
    __attribute__((warn_unused_result));

/* Read from `buf` (len bytes) until an event is dispatched: fills `ev` and
 * returns the bytes consumed through the blank line that dispatched it.
 * Returns -2 when all `len` bytes were taken and no event is complete (an
 * incomplete event at the end of the stream is discarded, as the spec says),
 * or -1 on error (reason below; every later call fails too). */
ssize_t proto_sse_reader_next(proto_sse_reader_t *r, const uint8_t *buf, size_t len,
                              proto_sse_event_t *ev)
    __attribute__((warn_unused_result));

/* Why the reader failed; PROTO_SSE_OK while it has not. */
proto_sse_reason_t proto_sse_reader_reason(const proto_sse_reader_t *r);

/* ------------------------------------------------------------ the encoder */

/* An event to send. Each part is optional; the lines are written in the
 * order id, event, retry, data, then the blank line that dispatches it. */
typedef struct {
    const char *id;        /* "id:" line when non-NULL; no CR, LF or NUL */
    size_t id_len;         /* its length (may be 0: resets the client's last event ID) */
    const char *type;      /* "event:" line when non-NULL; no CR, LF or NUL */
    size_t type_len;       /* its length */
    const uint8_t *data;   /* "data:" lines when non-NULL: one per line of the
                            * value, split at CR LF, CR or LF (so a client
                            * receives every line break as LF) */
    size_t data_len;       /* its length (0 still sends one empty data line) */
    int64_t retry_ms;      /* "retry:" line when >= 0 */
} proto_sse_message_t;

/* Bytes proto_sse_encode would write for `msg`, or -1 when `msg` is invalid
 * (reason in *why when why is non-NULL). */
ssize_t proto_sse_encoded_len(const proto_sse_message_t *msg, proto_sse_reason_t *why);

/* Write `msg` into `out` (cap bytes). Returns the bytes written, or -1 when
 * the message is invalid or does not fit (reason in *why when non-NULL;
 * nothing useful is left in `out`). */
ssize_t proto_sse_encode(uint8_t *out, size_t cap, const proto_sse_message_t *msg,
                         proto_sse_reason_t *why)
    __attribute__((warn_unused_result));

/* Write a comment (e.g. "keep-alive" gives ": keep-alive\n"): one ':' line
 * per line of `text`, split like data; no blank line follows, so a comment
 * never dispatches anything. Returns the bytes written, or -1 with
 * PROTO_SSE_NO_ROOM. */
ssize_t proto_sse_encode_comment(uint8_t *out, size_t cap, const char *text, size_t len,
                                 proto_sse_reason_t *why)
    __attribute__((warn_unused_result));

#endif
