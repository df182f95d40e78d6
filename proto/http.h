/* proto/http.h — incremental, zero-copy HTTP/1.1 request parser (RFC 9112,
 * RFC 9110) for the gateway: the request head, then the body (Content-Length
 * or chunked). Nothing here allocates or does I/O; every result is a
 * (pointer, length) slice into the caller's buffer.
 *
 * Head: proto_http_parse(p, buf, len) is called with the unfinished head,
 *   from its first octet, each time more of it has arrived. Contract:
 *   - buf[0..len) is the head so far, contiguous; octets already passed are
 *     never changed, len never shrinks.
 *   - Between calls the caller may move or grow that buffer (the parser keeps
 *     offsets, not pointers), so a connection may realloc or compact it.
 *   - Only octets not yet scanned are looked at again: the total work is
 *     linear in the head size, however it is split.
 *   - Return: the head length n > 0 (bytes consumed: the body or the next
 *     pipelined request starts at buf + n), -2 (need more: call again with
 *     more), or -1 (invalid: p->reason says why, proto_http_reason_status()
 *     which status to answer; then close the connection).
 *   - After n > 0 the results point into the buf of that call, and stay
 *     valid while the caller keeps those octets where they are. Calling
 *     again returns n again and repoints the results at the new buf; after
 *     -1 every call returns -1.
 *   - A head longer than limits.max_head is refused (431) as soon as
 *     max_head octets have been scanned without its end.
 *   The same octets give the same result whether they arrive whole, one at
 *   a time or in any other split.
 *
 * Body: proto_http_body_init(b, p, max_body) after the head, then
 *   proto_http_body_parse(b, buf, len, &data) on whatever arrives (no
 *   contiguity needed). Each call consumes octets and hands back at most one
 *   slice of body data (chunked bodies are de-chunked: the slice points at
 *   chunk-data inside buf). proto_http_body_done() says the body is
 *   complete; octets after it belong to the next request.
 *
 * Pipelining: after the body is done, proto_http_parser_init() the parser
 * again and parse the octets that follow. */
#ifndef KITH_PROTO_HTTP_H
#define KITH_PROTO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---------------------------------------------------------------- limits */

/* DESIGN §10 defaults; each can be overridden per parser (limits below). */
#define PROTO_HTTP_HEAD_MAX (16u * 1024)                   /* request line + fields + blank line */
#define PROTO_HTTP_HEADERS_MAX 100u                        /* field lines; also the parser's storage */
#define PROTO_HTTP_BODY_MAX (1024u * 1024)                 /* decoded body octets */
#define PROTO_HTTP_BODY_ATTACHMENT_MAX (25u * 1024 * 1024) /* body of a route taking attachments */
/* RFC 9112 §3 asks servers to take request lines of at least 8000 octets. */
#define PROTO_HTTP_TARGET_MAX (8u * 1024)

/* Fixed bounds on chunked framing, so a body cannot carry unbounded octets
 * that are not data: a chunk-size has at most 16 hex digits (64 bits), and
 * the chunk extensions of one body add up to at most 4 KiB. Trailer fields
 * are bounded by the head limit of the request. */
#define PROTO_HTTP_CHUNK_SIZE_DIGITS_MAX 16u
#define PROTO_HTTP_CHUNK_EXT_MAX 4096u

typedef struct {
    uint32_t max_head;    /* octets of the head, CRLFs included; 431 past it */
    uint32_t max_headers; /* field lines, 1..PROTO_HTTP_HEADERS_MAX; 431 past it */
    uint32_t max_target;  /* octets of the request-target, 1..max_head; 414 past it */
    uint64_t max_body;    /* largest Content-Length any route takes; 413 past it */
} proto_http_limits_t;

#define PROTO_HTTP_LIMITS_DEFAULT \
    { PROTO_HTTP_HEAD_MAX, PROTO_HTTP_HEADERS_MAX, PROTO_HTTP_TARGET_MAX, PROTO_HTTP_BODY_MAX }

/* ---------------------------------------------------------------- reasons */

/* Why a request was refused. Each maps to one status via
 * proto_http_reason_status() (in brackets) and to a stable snake_case name
 * via proto_http_reason_str(), for logs and JSON error codes. */
typedef enum {
    PROTO_HTTP_OK = 0,
    /* request line (RFC 9112 §3) */
    PROTO_HTTP_ERR_METHOD,              /* [400] method is not a token */
    PROTO_HTTP_ERR_TARGET,              /* [400] request-target malformed, or its form does not fit the method */
    PROTO_HTTP_ERR_TARGET_TOO_LONG,     /* [414] request-target longer than limits.max_target */
    PROTO_HTTP_ERR_VERSION,             /* [400] HTTP-version malformed */
    PROTO_HTTP_ERR_VERSION_UNSUPPORTED, /* [505] well-formed, but not HTTP/1.0 or HTTP/1.1 */
    /* line endings (RFC 9112 §2.2) */
    PROTO_HTTP_ERR_BARE_CR,             /* [400] CR not followed by LF */
    PROTO_HTTP_ERR_BARE_LF,             /* [400] LF not preceded by CR */
    /* field lines (RFC 9112 §5, RFC 9110 §5) */
    PROTO_HTTP_ERR_FIELD_NAME,          /* [400] field name empty or not a token, or no colon */
    PROTO_HTTP_ERR_FIELD_VALUE,         /* [400] control octet (other than HTAB) or DEL in a value */
    PROTO_HTTP_ERR_SPACE_BEFORE_COLON,  /* [400] whitespace between field name and colon */
    PROTO_HTTP_ERR_OBS_FOLD,            /* [400] field line starting with SP or HTAB */
    PROTO_HTTP_ERR_HEAD_TOO_LARGE,      /* [431] head longer than limits.max_head */
    PROTO_HTTP_ERR_TOO_MANY_FIELDS,     /* [431] more than limits.max_headers field lines */
    /* Host (RFC 9112 §3.2, RFC 9110 §7.2) */
    PROTO_HTTP_ERR_HOST_MISSING,        /* [400] HTTP/1.1 request without Host */
    PROTO_HTTP_ERR_HOST_DUPLICATE,      /* [400] more than one Host field line */
    PROTO_HTTP_ERR_HOST_INVALID,        /* [400] Host value is not uri-host [ ":" port ] */
    /* message framing (RFC 9112 §6) */
    PROTO_HTTP_ERR_CL_INVALID,          /* [400] Content-Length not 1*DIGIT */
    PROTO_HTTP_ERR_CL_OVERFLOW,         /* [400] Content-Length does not fit 64 bits */
    PROTO_HTTP_ERR_CL_DUPLICATE,        /* [400] Content-Length repeated with the same value */
    PROTO_HTTP_ERR_CL_CONFLICT,         /* [400] Content-Length repeated with different values */
    PROTO_HTTP_ERR_CL_WITH_TE,          /* [400] both Content-Length and Transfer-Encoding */
    PROTO_HTTP_ERR_TE_INVALID,          /* [400] Transfer-Encoding malformed, empty (or an empty list element), or chunked twice */
    PROTO_HTTP_ERR_TE_DUPLICATE,        /* [400] a second Transfer-Encoding field line */
    PROTO_HTTP_ERR_TE_NOT_CHUNKED,      /* [400] final transfer coding is not chunked */
    PROTO_HTTP_ERR_TE_UNSUPPORTED,      /* [501] a coding other than chunked before the final chunked */
    PROTO_HTTP_ERR_TE_HTTP10,           /* [400] Transfer-Encoding in an HTTP/1.0 request */
    /* body (RFC 9112 §6, §7.1) */
    PROTO_HTTP_ERR_BODY_TOO_LARGE,      /* [413] body longer than the limit */
    PROTO_HTTP_ERR_CHUNK_SIZE,          /* [400] chunk-size is not 1*HEXDIG */
    PROTO_HTTP_ERR_CHUNK_SIZE_OVERFLOW, /* [400] chunk-size longer than PROTO_HTTP_CHUNK_SIZE_DIGITS_MAX */
    PROTO_HTTP_ERR_CHUNK_EXT,           /* [400] chunk-ext malformed */
    PROTO_HTTP_ERR_CHUNK_EXT_TOO_LARGE, /* [400] chunk-ext octets past PROTO_HTTP_CHUNK_EXT_MAX */
    PROTO_HTTP_ERR_CHUNK_DATA_END,      /* [400] chunk-data not followed by CRLF */
    PROTO_HTTP_ERR_TRAILER_TOO_LARGE,   /* [431] trailer section longer than the head limit */
    /* the caller's side */
    PROTO_HTTP_ERR_USAGE,               /* [500] bad limits, or the API contract broken */
    PROTO_HTTP_REASON_COUNT
} proto_http_reason_t;

/* Stable snake_case name of `reason` ("content_length_conflict", …);
 * "unknown" for a value outside the enum. Static storage. */
const char *proto_http_reason_str(proto_http_reason_t reason);

/* The status the gateway answers a request refused for `reason`: 400, 413,
 * 414, 431, 501, 505 (500 for PROTO_HTTP_ERR_USAGE, 200 for PROTO_HTTP_OK). */
int proto_http_reason_status(proto_http_reason_t reason);

/* ---------------------------------------------------------------- head */

/* `len` octets at `ptr`, inside the caller's buffer. An absent part has
 * ptr NULL and len 0; a present but empty one has ptr non-NULL. */
typedef struct {
    const char *ptr; /* first octet */
    size_t len;      /* octets */
} proto_http_slice_t;

typedef struct {
    proto_http_slice_t name;  /* field-name as sent; compare case-insensitively */
    proto_http_slice_t value; /* field-value, leading and trailing OWS removed */
} proto_http_header_t;

/* Where one field line lies in the head; private to proto/http*. */
typedef struct {
    uint32_t name_off;  /* offset of the field-name */
    uint32_t name_len;  /* its octets */
    uint32_t value_off; /* offset of the trimmed field-value */
    uint32_t value_len; /* its octets */
} proto_http_field_t;

/* How the request-target was written (RFC 9112 §3.2). */
typedef enum {
    PROTO_HTTP_FORM_ORIGIN = 0, /* "/path?query" */
    PROTO_HTTP_FORM_ABSOLUTE,   /* "http://host/path?query" */
    PROTO_HTTP_FORM_AUTHORITY,  /* "host:port", CONNECT only */
    PROTO_HTTP_FORM_ASTERISK    /* "*", OPTIONS only */
} proto_http_form_t;

/* The parser's working state; private to proto/http*. */
typedef struct {
    proto_http_limits_t limits;  /* bounds of this parser */
    const char *base;            /* buffer of the completed head, for the header accessors */
    size_t scanned;              /* octets run through the machine so far */
    int cs;                      /* Ragel state */
    bool done;                   /* the head is complete */
    uint8_t ctx;                 /* grammar part being read (proto_http_ctx_t), for errors */
    uint8_t kind;                /* interpreted field of the current line (proto_http_kind_t) */
    uint8_t major, minor;        /* HTTP-version digits */
    uint32_t method_off, method_len; /* method, as offset and octets */
    uint32_t target_off, target_len; /* request-target, likewise */
    uint32_t path_off;           /* 0: none (no path starts the head) */
    uint32_t query_off;          /* first octet after "?"; 0: no "?" */
    uint32_t authority_off;      /* absolute-form authority; 0: not absolute-form */
    uint32_t version_off;        /* "HTTP/" */
    uint32_t name_off, name_len; /* field-name of the current line */
    uint32_t host_off, host_len; /* Host value */
    uint32_t host_count;         /* Host field lines */
    bool te_seen;                /* a Transfer-Encoding line was sent */
    bool te_chunked;             /* chunked was listed */
    bool te_chunked_last;        /* the last coding listed is chunked */
    bool te_other;               /* a coding other than chunked was listed */
    bool conn_close;             /* Connection: close */
    bool conn_keep_alive;        /* Connection: keep-alive */
    bool conn_upgrade;           /* Connection: upgrade */
    bool upgrade_seen;           /* Upgrade named a protocol */
    bool upgrade_websocket;      /* Upgrade lists websocket */
    /* last, so proto_http_parser_init() need not clear it */
    proto_http_field_t fields[PROTO_HTTP_HEADERS_MAX]; /* the field lines */
} proto_http_head_state_t;

/* Caller-allocated; proto_http_parser_init() before each request. The
 * results are meaningful once proto_http_parse() has returned > 0. */
typedef struct {
    /* results: slices into the buffer of the call that returned > 0 */
    proto_http_slice_t method;  /* token, case-sensitive (RFC 9110 §9.1) */
    proto_http_slice_t target;  /* request-target as sent */
    proto_http_slice_t path;    /* origin/absolute-form path ("/" string literal when an
                                   absolute-form has none), "*" for asterisk-form,
                                   absent for authority-form */
    proto_http_slice_t query;   /* after "?", without it; absent when there is no "?" */
    proto_http_slice_t version; /* "HTTP/1.0" or "HTTP/1.1" */
    proto_http_slice_t host;    /* authority of an absolute-form or authority-form target
                                   (RFC 9112 §3.2.2), else the Host value; absent if neither */
    proto_http_form_t form;     /* how the target was written */
    int version_minor;          /* 0 or 1: HTTP/1.x */
    size_t header_count;        /* field lines; read them with proto_http_header_get() */
    uint64_t content_length;    /* the Content-Length value, when has_content_length */
    bool has_content_length;    /* a valid Content-Length was sent */
    bool chunked;               /* Transfer-Encoding: chunked frames the body */
    bool keep_alive;            /* the connection persists after this exchange (RFC 9112 §9.3) */
    bool upgrade;               /* HTTP/1.1 Upgrade with the "upgrade" connection option */
    bool websocket;             /* GET upgrading to "websocket" (RFC 6455 §4.1) */
    bool expect_continue;       /* Expect: 100-continue (RFC 9110 §10.1.1) */
    proto_http_reason_t reason; /* why proto_http_parse() returned -1 */
    proto_http_head_state_t state; /* private; last, see proto_http_head_state_t */
} proto_http_parser_t;

/* Make `p` ready for a new request head. `limits` NULL means
 * PROTO_HTTP_LIMITS_DEFAULT; it is copied. Returns -1 (reason
 * PROTO_HTTP_ERR_USAGE) if the limits are out of range. */
__attribute__((warn_unused_result))
int proto_http_parser_init(proto_http_parser_t *p, const proto_http_limits_t *limits);

/* Parse the head in buf[0..len); see the contract at the top of this file.
 * Returns the head length, -2 (need more) or -1 (invalid, p->reason). */
__attribute__((warn_unused_result))
ssize_t proto_http_parse(proto_http_parser_t *p, const char *buf, size_t len);

/* Field line `i` (< p->header_count) of a completed head, in order. */
proto_http_header_t proto_http_header_get(const proto_http_parser_t *p, size_t i);

/* The value of the first field line named `name` (case-insensitive) of a
 * completed head, into *value; false if there is none. */
bool proto_http_header_find(const proto_http_parser_t *p, const char *name,
                            proto_http_slice_t *value);

/* ---------------------------------------------------------------- body */

/* The body decoder's working state; private to proto/http_body.rl. */
typedef struct {
    uint64_t max_body;      /* bound on decoded octets */
    uint64_t remaining;     /* octets of content or chunk-data still to hand back */
    uint64_t announced;     /* chunk-size octets announced so far */
    uint64_t chunk_size;    /* chunk-size being read */
    uint32_t size_digits;   /* hex digits of chunk_size so far */
    uint32_t ext_bytes;     /* chunk-ext octets of this body so far */
    uint32_t trailer_bytes; /* trailer-section octets so far */
    uint32_t trailer_max;   /* bound on trailer_bytes: the head limit */
    int cs;                 /* Ragel state (chunked) */
    uint8_t mode;           /* none, Content-Length or chunked */
    uint8_t ctx;            /* grammar part being read (proto_http_ctx_t), for errors */
    uint8_t prev;           /* last octet consumed, to tell a bare CR across calls */
} proto_http_body_state_t;

/* Caller-allocated body decoder for one request. */
typedef struct {
    bool done;                     /* the whole body has been consumed */
    proto_http_reason_t reason;    /* why proto_http_body_parse() returned -1 */
    proto_http_body_state_t state; /* private */
} proto_http_body_t;

/* Prepare `b` for the body of the request whose head `p` has parsed,
 * allowing at most `max_body` decoded octets (the route's own bound, e.g.
 * PROTO_HTTP_BODY_MAX or PROTO_HTTP_BODY_ATTACHMENT_MAX). A request
 * without Content-Length or chunked has no body: done at once. Returns -1
 * with b->reason PROTO_HTTP_ERR_BODY_TOO_LARGE when Content-Length exceeds
 * max_body (answer 413 without reading), or PROTO_HTTP_ERR_USAGE when the
 * head is not complete. */
__attribute__((warn_unused_result))
int proto_http_body_init(proto_http_body_t *b, const proto_http_parser_t *p, uint64_t max_body);

/* Decode body octets from buf[0..len). Sets *data to the body data found
 * (absent if none; it points into buf) and returns the octets consumed.
 * One call hands back at most one slice: while octets remain and the body
 * is not done, call again with the rest. Once done, the octets left belong
 * to the next request. Returns 0 only when done or len is 0, and -1 on
 * invalid framing or a body past the limit (b->reason). Never -2: the
 * decoder keeps all the state it needs, so no octet is passed twice. */
__attribute__((warn_unused_result))
ssize_t proto_http_body_parse(proto_http_body_t *b, const char *buf, size_t len,
                              proto_http_slice_t *data);

/* True once the body is complete (and for requests without a body). */
bool proto_http_body_done(const proto_http_body_t *b);

#endif
