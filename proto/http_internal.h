/* proto/http_internal.h — what the HTTP grammars (http.rl, http_body.rl)
 * share with the field semantics (http_fields.c) and the reason table
 * (http_reason.c). Private to proto/http*; other modules use proto/http.h. */
#ifndef KITH_PROTO_HTTP_INTERNAL_H
#define KITH_PROTO_HTTP_INTERNAL_H

#include "proto/http.h"

/* The part of the grammar being read. The machines set it on the octet
 * before each part starts, so a failure on a part's first octet is
 * attributed to that part. */
typedef enum {
    PROTO_HTTP_CTX_METHOD = 0,    /* leading empty lines and the method */
    PROTO_HTTP_CTX_TARGET,        /* request-target */
    PROTO_HTTP_CTX_VERSION,       /* HTTP-version and the request line's CRLF */
    PROTO_HTTP_CTX_LINE_START,    /* first octet of a field line, or the blank line */
    PROTO_HTTP_CTX_FIELD_NAME,    /* rest of a field-name, up to the colon */
    PROTO_HTTP_CTX_FIELD_VALUE,   /* after the colon, up to CRLF */
    PROTO_HTTP_CTX_CHUNK_SIZE,    /* chunk-size */
    PROTO_HTTP_CTX_CHUNK_EXT,     /* chunk-ext and the chunk line's CRLF */
    PROTO_HTTP_CTX_CHUNK_DATA_END /* the CRLF after chunk-data */
} proto_http_ctx_t;

/* The fields the parser interprets (names matched case-insensitively by
 * the grammar); every other field is only stored. */
typedef enum {
    PROTO_HTTP_KIND_OTHER = 0,
    PROTO_HTTP_KIND_HOST,
    PROTO_HTTP_KIND_CONTENT_LENGTH,
    PROTO_HTTP_KIND_TRANSFER_ENCODING,
    PROTO_HTTP_KIND_CONNECTION,
    PROTO_HTTP_KIND_UPGRADE,
    PROTO_HTTP_KIND_EXPECT
} proto_http_kind_t;

/* The reason for a grammar failure on octet `c` in part `ctx`, `prev`
 * being the octet consumed just before it (0 if none). */
proto_http_reason_t proto_http_syntax_reason(proto_http_ctx_t ctx, unsigned char c,
                                             unsigned char prev);

/* Fold one interpreted field line (trimmed value) into p's facts; returns
 * PROTO_HTTP_OK or why the request must be refused. */
proto_http_reason_t proto_http_field_apply(proto_http_parser_t *p, proto_http_kind_t kind,
                                           const char *value, size_t len);

/* The checks that need the whole head (framing, Host presence, body
 * limit) and the derived facts (chunked, keep_alive, upgrade, websocket);
 * `base` is the head's first octet. */
proto_http_reason_t proto_http_fields_finish(proto_http_parser_t *p, const char *base);

/* s[0..len) without leading and trailing OWS (SP, HTAB). */
proto_http_slice_t proto_http_ows_trim(const char *s, size_t len);

/* ASCII case-insensitive equality of `s` and the string `name`, as field
 * names and the tokens kith interprets compare (RFC 9110 §5.1, §5.6.2). */
bool proto_http_equals_ci(proto_http_slice_t s, const char *name);

/* RFC 3986 §3.2.2-3: uri-host [ ":" port ], as in Host (RFC 9110 §7.2) and
 * in absolute-form and authority-form targets. With `need_port` the
 * ":" port part is required (authority-form, RFC 9112 §3.2.3). An empty
 * host is refused; an empty Host value is the caller's case to allow. */
bool proto_http_authority_valid(const char *s, size_t len, bool need_port);

#endif
