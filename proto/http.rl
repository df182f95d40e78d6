/* proto/http.rl — the HTTP/1.1 request head (RFC 9112 §2-§5) as a Ragel
 * machine, and the incremental, zero-copy parser around it. The contract
 * callers rely on is in proto/http.h; field semantics are in http_fields.c,
 * the chunked body in http_body.rl. */
#include "proto/http.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

#include "proto/http_internal.h"

/* ---------------------------------------------------------------- grammar */

/* The RFC core rules, shared with http_body.rl (which includes this
 * machine by name; the build regenerates a .rl only when that file
 * changes, so touch http_body.rl after editing these in a build tree).
 * Rule names follow RFC 5234, 9110, 9112 and 3986, "-" spelt "_". */
%%{
machine http_core;
alphtype unsigned char;

# RFC 5234 Appendix B.1 (digit, xdigit, alpha, alnum are Ragel's own)
CR    = "\r";
LF    = "\n";
SP    = " ";
HTAB  = "\t";
CRLF  = CR LF;
VCHAR = 0x21..0x7e;

# RFC 9110 §5.6.3: optional and "bad" whitespace
OWS = ( SP | HTAB )*;
BWS = OWS;

# RFC 9110 §5.6.2: tokens
tchar = "!" | "#" | "$" | "%" | "&" | "'" | "*" | "+" | "-" | "." | "^" | "_"
      | "`" | "|" | "~" | digit | alpha;
token = tchar+;

# RFC 9110 §5.5: field values. obs-text is accepted as opaque octets.
obs_text    = 0x80..0xff;
field_vchar = VCHAR | obs_text;
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS, and
# field-value = *field-content. As a set of octet strings, OWS field-value
# OWS is ( field-vchar / SP / HTAB )*: no CTL but HTAB, no DEL, no CR or LF
# (so no obs-fold). The parser trims the OWS off the slice.
field_octets = ( field_vchar | SP | HTAB )*;

# RFC 9110 §5.6.4: quoted strings
qdtext        = HTAB | SP | 0x21 | 0x23..0x5b | 0x5d..0x7e | obs_text;
quoted_pair   = "\\" ( HTAB | SP | VCHAR | obs_text );
quoted_string = "\"" ( qdtext | quoted_pair )* "\"";
}%%

/* The request head. */
%%{
machine http_request;
include http_core;

# Actions. `base` is the head's first octet; OFF() makes the offsets the
# parser keeps, so the caller may move the buffer between calls.

action method_start  { st->method_off = OFF(fpc); }
action method_end    { st->method_len = OFF(fpc) - st->method_off;
                       st->ctx = PROTO_HTTP_CTX_TARGET; }
action target_start  { st->target_off = OFF(fpc); }
action target_octet  {
    if (OFF(fpc) - st->target_off >= st->limits.max_target) {
        parser->reason = PROTO_HTTP_ERR_TARGET_TOO_LONG;
        fbreak;
    }
}
action target_end    { st->target_len = OFF(fpc) - st->target_off;
                       st->ctx = PROTO_HTTP_CTX_VERSION; }
action path_start    { st->path_off = OFF(fpc); }
action query_start   { st->query_off = OFF(fpc) + 1; }
action authority_start { st->authority_off = OFF(fpc) + 1; }
action version_start { st->version_off = OFF(fpc); }
action version_major { st->major = (uint8_t) (fc - '0'); }
action version_minor { st->minor = (uint8_t) (fc - '0'); }
action request_line_done {
    if (s_request_line_done(parser, base) != PROTO_HTTP_OK)
        fbreak;
    st->ctx = PROTO_HTTP_CTX_LINE_START;
}

action field_start {
    if (parser->header_count >= st->limits.max_headers) {
        parser->reason = PROTO_HTTP_ERR_TOO_MANY_FIELDS;
        fbreak;
    }
    st->name_off = OFF(fpc);
    st->kind = PROTO_HTTP_KIND_OTHER;
    st->ctx = PROTO_HTTP_CTX_FIELD_NAME;
}
action field_name_end { st->name_len = OFF(fpc) - st->name_off;
                        st->ctx = PROTO_HTTP_CTX_FIELD_VALUE; }
action kind_host              { st->kind = PROTO_HTTP_KIND_HOST; }
action kind_content_length    { st->kind = PROTO_HTTP_KIND_CONTENT_LENGTH; }
action kind_transfer_encoding { st->kind = PROTO_HTTP_KIND_TRANSFER_ENCODING; }
action kind_connection        { st->kind = PROTO_HTTP_KIND_CONNECTION; }
action kind_upgrade           { st->kind = PROTO_HTTP_KIND_UPGRADE; }
action kind_expect            { st->kind = PROTO_HTTP_KIND_EXPECT; }
action field_done {
    if (s_field_done(parser, base, OFF(fpc)) != PROTO_HTTP_OK)
        fbreak;
    st->ctx = PROTO_HTTP_CTX_LINE_START;
}

action head_done { st->done = true; fbreak; }

# RFC 3986 §2-§3: the octets of a request-target.
unreserved  = alnum | "-" | "." | "_" | "~";
pct_encoded = "%" xdigit xdigit;
sub_delims  = "!" | "$" | "&" | "'" | "(" | ")" | "*" | "+" | "," | ";" | "=";
# Not in RFC 3986, but left unencoded in paths and queries by the WHATWG URL
# serialiser browsers use; harmless to framing, so accepted. ("\" is not:
# some stacks read it as "/".)
url_lenient = "[" | "]" | "{" | "}" | "|" | "^" | "`";
pchar       = unreserved | pct_encoded | sub_delims | ":" | "@" | url_lenient;
segment     = pchar*;
query       = ( pchar | "/" | "?" )*;
absolute_path = ( "/" segment )+;          # RFC 9110 §4.1
path_abempty  = ( "/" segment )*;          # RFC 3986 §3.3
scheme        = alpha ( alpha | digit | "+" | "-" | "." )*;
# The octets of uri-host [ ":" port ]; their structure is checked by
# proto_http_authority_valid(), the rule Host uses too. No userinfo
# (RFC 9110 §4.2.4: its presence is an error).
authority     = ( unreserved | pct_encoded | sub_delims | ":" | "[" | "]" )*;

# RFC 9112 §3.2: the four forms of request-target.
origin_form    = absolute_path >path_start ( "?" @query_start query )?;
# (An action entering a machine that may be empty also runs on leaving it
# empty, so path_start sits on the non-empty path_abempty.)
absolute_form  = scheme "://" @authority_start authority
                 ( ( path_abempty - zlen ) >path_start )? ( "?" @query_start query )?;
authority_form = authority - zlen;
asterisk_form  = "*";
request_target = ( origin_form | absolute_form | authority_form | asterisk_form )
                 >target_start $target_octet %target_end;

# RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT, HTTP-name
# being case-sensitive.
http_version = ( "HTTP/" digit @version_major "." digit @version_minor ) >version_start;

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version,
# with exactly one SP between the parts.
method       = token;                       # RFC 9110 §9.1
request_line = method >method_start %method_end SP request_target SP http_version
               CRLF @request_line_done;

# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; no
# whitespace before the colon (§5.1). The interpreted names are matched
# case-insensitively here; any other token is a field-name too.
known_name = "host"i              %kind_host
           | "content-length"i    %kind_content_length
           | "transfer-encoding"i %kind_transfer_encoding
           | "connection"i        %kind_connection
           | "upgrade"i           %kind_upgrade
           | "expect"i            %kind_expect;
field_name = ( token | known_name ) >field_start %field_name_end;
field_line = field_name ":" field_octets CRLF @field_done;

# RFC 9112 §2.1: HTTP-message = start-line CRLF *( field-line CRLF ) CRLF;
# §2.2: empty lines before the request-line are ignored.
main := CRLF* request_line field_line* CRLF @head_done;
}%%

%% write data;

/* ---------------------------------------------------------------- parser */

#define OFF(q) ((uint32_t) ((q) - base))

static bool s_equals(const unsigned char *s, size_t len, const char *lit)
{
    return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

/* Where the path ends: at the "?" or the end of the target. */
static uint32_t s_path_end(const proto_http_head_state_t *st)
{
    return st->query_off ? st->query_off - 1 : st->target_off + st->target_len;
}

/* Where an absolute-form's authority ends: at the path, "?" or the end. */
static uint32_t s_authority_end(const proto_http_head_state_t *st)
{
    return st->path_off ? st->path_off : s_path_end(st);
}

/* The request line is complete: check what the grammar cannot — the
 * version (505), and that the target's form suits the method (RFC 9112
 * §3.2.3-4: authority-form only and always for CONNECT, "*" only for
 * OPTIONS) with a well-formed authority. */
static proto_http_reason_t s_request_line_done(proto_http_parser_t *parser,
                                               const unsigned char *base)
{
    proto_http_head_state_t *st = &parser->state;
    if (st->major != 1 || st->minor > 1)
        return parser->reason = PROTO_HTTP_ERR_VERSION_UNSUPPORTED;

    const unsigned char *method = base + st->method_off;
    const unsigned char *target = base + st->target_off;
    bool connect = s_equals(method, st->method_len, "CONNECT");
    bool ok;
    if (target[0] == '/') {
        parser->form = PROTO_HTTP_FORM_ORIGIN;
        ok = !connect;
    } else if (st->authority_off) {
        parser->form = PROTO_HTTP_FORM_ABSOLUTE;
        ok = !connect && proto_http_authority_valid((const char *) base + st->authority_off,
                                                    s_authority_end(st) - st->authority_off,
                                                    false);
    } else if (connect) {
        parser->form = PROTO_HTTP_FORM_AUTHORITY;
        ok = proto_http_authority_valid((const char *) target, st->target_len, true);
    } else {
        /* what is left of the grammar: "*" or an authority without CONNECT */
        parser->form = PROTO_HTTP_FORM_ASTERISK;
        ok = s_equals(target, st->target_len, "*") && s_equals(method, st->method_len, "OPTIONS");
    }
    if (!ok)
        return parser->reason = PROTO_HTTP_ERR_TARGET;
    return PROTO_HTTP_OK;
}

/* A field line ends at the LF at `lf`: store it, and interpret it if the
 * grammar recognised its name. */
static proto_http_reason_t s_field_done(proto_http_parser_t *parser,
                                        const unsigned char *base, uint32_t lf)
{
    proto_http_head_state_t *st = &parser->state;
    uint32_t after_colon = st->name_off + st->name_len + 1;
    proto_http_slice_t value = proto_http_ows_trim((const char *) base + after_colon,
                                                   lf - 1 - after_colon); /* up to the CR */
    uint32_t value_off = OFF((const unsigned char *) value.ptr);

    assert(parser->header_count < st->limits.max_headers);
    st->fields[parser->header_count++] = (proto_http_field_t) {
        .name_off = st->name_off, .name_len = st->name_len,
        .value_off = value_off, .value_len = (uint32_t) value.len,
    };
    if (st->kind == PROTO_HTTP_KIND_OTHER)
        return PROTO_HTTP_OK;
    if (st->kind == PROTO_HTTP_KIND_HOST) {
        st->host_off = value_off;
        st->host_len = (uint32_t) value.len;
    }
    parser->reason = proto_http_field_apply(parser, (proto_http_kind_t) st->kind,
                                            value.ptr, value.len);
    return parser->reason;
}

static proto_http_slice_t s_slice(const char *base, uint32_t off, uint32_t len)
{
    return (proto_http_slice_t) { base + off, len };
}

/* Point the results of a completed head at `buf`. */
static void s_results_set(proto_http_parser_t *parser, const char *buf)
{
    proto_http_head_state_t *st = &parser->state;
    const proto_http_slice_t none = { NULL, 0 };
    uint32_t target_end = st->target_off + st->target_len;
    uint32_t path_end = s_path_end(st);
    st->base = buf;
    parser->method = s_slice(buf, st->method_off, st->method_len);
    parser->target = s_slice(buf, st->target_off, st->target_len);
    parser->version = s_slice(buf, st->version_off, sizeof "HTTP/1.1" - 1);
    parser->query = st->query_off ? s_slice(buf, st->query_off, target_end - st->query_off) : none;
    parser->path = st->path_off ? s_slice(buf, st->path_off, path_end - st->path_off) : none;
    parser->host = st->host_count ? s_slice(buf, st->host_off, st->host_len) : none;
    switch (parser->form) {
    case PROTO_HTTP_FORM_ORIGIN:
        break;
    case PROTO_HTTP_FORM_ABSOLUTE: /* RFC 9112 §3.2.2: the target's authority wins over Host */
        parser->host = s_slice(buf, st->authority_off, s_authority_end(st) - st->authority_off);
        if (!st->path_off)
            parser->path = (proto_http_slice_t) { "/", 1 }; /* RFC 9110 §4.2.3 */
        break;
    case PROTO_HTTP_FORM_AUTHORITY:
        parser->host = parser->target;
        break;
    case PROTO_HTTP_FORM_ASTERISK:
        parser->path = parser->target;
        break;
    }
}

int proto_http_parser_init(proto_http_parser_t *p, const proto_http_limits_t *limits)
{
    static const proto_http_limits_t defaults = PROTO_HTTP_LIMITS_DEFAULT;
    if (!limits)
        limits = &defaults;
    /* Everything but the field array, which header_count = 0 makes unreachable. */
    memset(p, 0, offsetof(proto_http_parser_t, state.fields));
    p->state.limits = *limits;
    p->state.cs = http_request_start;
    p->state.ctx = PROTO_HTTP_CTX_METHOD;
    if (limits->max_head == 0 || limits->max_headers == 0 ||
        limits->max_headers > PROTO_HTTP_HEADERS_MAX || limits->max_target == 0 ||
        limits->max_target > limits->max_head) {
        p->reason = PROTO_HTTP_ERR_USAGE;
        return -1;
    }
    return 0;
}

ssize_t proto_http_parse(proto_http_parser_t *parser, const char *buf, size_t len)
{
    proto_http_head_state_t *st = &parser->state;
    if (parser->reason != PROTO_HTTP_OK)
        return -1;
    if (len < st->scanned) {
        parser->reason = PROTO_HTTP_ERR_USAGE;
        return -1;
    }
    if (st->done) {
        s_results_set(parser, buf);
        return (ssize_t) st->scanned;
    }

    /* Never look past max_head: a head that has not ended by then is refused. */
    size_t avail = len < st->limits.max_head ? len : st->limits.max_head;
    const unsigned char *base = (const unsigned char *) buf;
    const unsigned char *p = base + st->scanned;
    const unsigned char *pe = base + avail;
    int cs = st->cs;

    %% write exec;

    assert(p >= base + st->scanned && p <= pe);
    st->cs = cs;
    st->scanned = (size_t) (p - base);

    if (parser->reason != PROTO_HTTP_OK)
        return -1; /* refused by an action */
    if (cs == http_request_error) {
        parser->reason = proto_http_syntax_reason((proto_http_ctx_t) st->ctx, *p,
                                                  p > base ? p[-1] : 0);
        return -1;
    }
    if (st->done) {
        assert(cs >= http_request_first_final);
        assert(parser->header_count <= st->limits.max_headers);
        assert(st->target_len > 0 && st->method_len > 0);
        parser->reason = proto_http_fields_finish(parser, buf);
        if (parser->reason != PROTO_HTTP_OK)
            return -1;
        s_results_set(parser, buf);
        return (ssize_t) st->scanned;
    }
    assert(p == pe);
    if (st->scanned >= st->limits.max_head) {
        parser->reason = PROTO_HTTP_ERR_HEAD_TOO_LARGE;
        return -1;
    }
    return -2;
}

proto_http_header_t proto_http_header_get(const proto_http_parser_t *p, size_t i)
{
    assert(p->state.done && p->state.base && i < p->header_count);
    const proto_http_field_t *f = &p->state.fields[i];
    return (proto_http_header_t) {
        .name = s_slice(p->state.base, f->name_off, f->name_len),
        .value = s_slice(p->state.base, f->value_off, f->value_len),
    };
}

bool proto_http_header_find(const proto_http_parser_t *p, const char *name,
                            proto_http_slice_t *value)
{
    for (size_t i = 0; i < p->header_count; i++) {
        proto_http_header_t h = proto_http_header_get(p, i);
        if (proto_http_equals_ci(h.name, name)) {
            *value = h.value;
            return true;
        }
    }
    return false;
}
