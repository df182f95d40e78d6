/* proto/http_fields.c — what the fields the gateway relies on mean
 * (RFC 9110, RFC 9112 §6): Host, Content-Length, Transfer-Encoding,
 * Connection, Upgrade and Expect, folded into the parser's facts, and the
 * framing checks that refuse every request-smuggling shape. */
#include <assert.h>
#include <string.h>

#include "proto/http_internal.h"

/* ---------------------------------------------------------------- octets */

static bool s_ows(char c) { return c == ' ' || c == '\t'; }
static bool s_digit(char c) { return c >= '0' && c <= '9'; }

static bool s_hexdig(char c)
{
    return s_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool s_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* RFC 3986 §2.3 unreserved and §2.2 sub-delims */
static bool s_unreserved(char c)
{
    return s_alpha(c) || s_digit(c) || (c != '\0' && strchr("-._~", c) != NULL);
}

static bool s_sub_delim(char c) { return c != '\0' && strchr("!$&'()*+,;=", c) != NULL; }

/* RFC 9110 §5.6.2 tchar */
static bool s_tchar(char c)
{
    return s_alpha(c) || s_digit(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool s_token(proto_http_slice_t s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!s_tchar(s.ptr[i]))
            return false;
    return true;
}

static char s_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char) (c - 'A' + 'a') : c; }

bool proto_http_equals_ci(proto_http_slice_t s, const char *name)
{
    size_t i = 0;
    for (; i < s.len && name[i] != '\0'; i++)
        if (s_lower(s.ptr[i]) != s_lower(name[i]))
            return false;
    return i == s.len && name[i] == '\0';
}

proto_http_slice_t proto_http_ows_trim(const char *s, size_t len)
{
    while (len > 0 && s_ows(s[0])) {
        s++;
        len--;
    }
    while (len > 0 && s_ows(s[len - 1]))
        len--;
    return (proto_http_slice_t) { s, len };
}

/* Next element of a comma-separated list (RFC 9110 §5.6.1) in s[0..len),
 * OWS trimmed; empty elements are returned too, for the caller to skip or
 * refuse. *pos starts at 0; false once the list is exhausted. */
static bool s_list_next(const char *s, size_t len, size_t *pos, proto_http_slice_t *elem)
{
    if (*pos > len)
        return false;
    size_t start = *pos, end = start;
    while (end < len && s[end] != ',')
        end++;
    *pos = end + 1;
    *elem = proto_http_ows_trim(s + start, end - start);
    return true;
}

/* ---------------------------------------------------------------- authority */

bool proto_http_authority_valid(const char *s, size_t len, bool need_port)
{
    size_t i = 0;
    if (len > 0 && s[0] == '[') {
        /* IP-literal = "[" ( IPv6address / IPvFuture ) "]": the octets
         * those may hold; the address itself is not parsed. */
        for (i = 1; i < len && s[i] != ']'; i++)
            if (!s_unreserved(s[i]) && !s_sub_delim(s[i]) && s[i] != ':')
                return false;
        if (i == len || i == 1)
            return false;
        i++;
    } else {
        /* reg-name = *( unreserved / pct-encoded / sub-delims ), which
         * covers IPv4address */
        while (i < len && s[i] != ':') {
            if (s[i] == '%') {
                if (len - i < 3 || !s_hexdig(s[i + 1]) || !s_hexdig(s[i + 2]))
                    return false;
                i += 3;
            } else if (s_unreserved(s[i]) || s_sub_delim(s[i])) {
                i++;
            } else {
                return false;
            }
        }
        if (i == 0)
            return false;
    }
    if (i == len)
        return !need_port;
    if (s[i] != ':')
        return false;
    /* port = *DIGIT, bounded to what a port can be */
    size_t digits = len - i - 1;
    if (digits > 5 || (need_port && digits == 0))
        return false;
    unsigned long port = 0;
    for (i++; i < len; i++) {
        if (!s_digit(s[i]))
            return false;
        port = port * 10 + (unsigned long) (s[i] - '0');
    }
    return port <= 65535;
}

/* ---------------------------------------------------------------- fields */

/* RFC 9110 §8.6: Content-Length = 1*DIGIT. A list ("42, 42") is what a
 * recipient sees when lines were combined; like a second line, it is
 * refused even when the values agree: kith is often behind a proxy, and
 * two parties counting the same body differently is the root of request
 * smuggling, so there is exactly one way to say how long a body is. */
static proto_http_reason_t s_content_length(proto_http_parser_t *p, const char *value, size_t len)
{
    size_t pos = 0;
    proto_http_slice_t e;
    while (s_list_next(value, len, &pos, &e)) {
        if (e.len == 0)
            return PROTO_HTTP_ERR_CL_INVALID;
        uint64_t n = 0;
        bool overflow = false;
        for (size_t i = 0; i < e.len; i++) {
            if (!s_digit(e.ptr[i]))
                return PROTO_HTTP_ERR_CL_INVALID;
            unsigned d = (unsigned) (e.ptr[i] - '0');
            if (n > (UINT64_MAX - d) / 10)
                overflow = true;
            else
                n = n * 10 + d;
        }
        if (overflow)
            return PROTO_HTTP_ERR_CL_OVERFLOW;
        if (p->has_content_length)
            return p->content_length == n ? PROTO_HTTP_ERR_CL_DUPLICATE
                                          : PROTO_HTTP_ERR_CL_CONFLICT;
        p->has_content_length = true;
        p->content_length = n;
    }
    return PROTO_HTTP_OK;
}

/* RFC 9112 §6.1: Transfer-Encoding = #transfer-coding; only bare tokens
 * are taken (no transfer-parameter: chunked has none, and any other coding
 * is refused anyway). Stricter than the RFC's list rule (§5.6.1 lets a
 * recipient skip empty elements), for the reason Content-Length is: a
 * proxy in front may read `chunked,`, `,chunked` or a second line
 * differently, and a disguised Transfer-Encoding is how request smuggling
 * starts. So one line, and no empty element. The verdict on the list as a
 * whole is in proto_http_fields_finish(). */
static proto_http_reason_t s_transfer_encoding(proto_http_head_state_t *st, const char *value,
                                               size_t len)
{
    size_t pos = 0;
    proto_http_slice_t e;
    if (st->te_seen)
        return PROTO_HTTP_ERR_TE_DUPLICATE;
    st->te_seen = true;
    while (s_list_next(value, len, &pos, &e)) {
        if (!s_token(e)) /* also an empty element, and so an empty value */
            return PROTO_HTTP_ERR_TE_INVALID;
        bool chunked = proto_http_equals_ci(e, "chunked");
        if (chunked && st->te_chunked)
            return PROTO_HTTP_ERR_TE_INVALID; /* §6.1: never chunked twice */
        st->te_chunked |= chunked;
        st->te_other |= !chunked;
        st->te_chunked_last = chunked;
    }
    return PROTO_HTTP_OK;
}

/* RFC 9110 §7.6.1: Connection = #connection-option; the options kith acts
 * on. Anything else is ignored, as the RFC allows. */
static void s_connection(proto_http_head_state_t *st, const char *value, size_t len)
{
    size_t pos = 0;
    proto_http_slice_t e;
    while (s_list_next(value, len, &pos, &e)) {
        st->conn_close |= proto_http_equals_ci(e, "close");
        st->conn_keep_alive |= proto_http_equals_ci(e, "keep-alive");
        st->conn_upgrade |= proto_http_equals_ci(e, "upgrade");
    }
}

/* RFC 9110 §7.8: Upgrade = #protocol, protocol = protocol-name
 * [ "/" protocol-version ]. */
static void s_upgrade(proto_http_head_state_t *st, const char *value, size_t len)
{
    size_t pos = 0;
    proto_http_slice_t e;
    while (s_list_next(value, len, &pos, &e)) {
        if (e.len == 0)
            continue;
        st->upgrade_seen = true;
        const char *slash = memchr(e.ptr, '/', e.len);
        if (slash)
            e.len = (size_t) (slash - e.ptr);
        st->upgrade_websocket |= proto_http_equals_ci(e, "websocket");
    }
}

/* RFC 9110 §10.1.1: only 100-continue is defined; others are ignored. */
static void s_expect(proto_http_parser_t *p, const char *value, size_t len)
{
    size_t pos = 0;
    proto_http_slice_t e;
    while (s_list_next(value, len, &pos, &e))
        p->expect_continue |= proto_http_equals_ci(e, "100-continue");
}

proto_http_reason_t proto_http_field_apply(proto_http_parser_t *p, proto_http_kind_t kind,
                                           const char *value, size_t len)
{
    proto_http_head_state_t *st = &p->state;
    switch (kind) {
    case PROTO_HTTP_KIND_HOST:
        /* RFC 9112 §3.2: more than one Host, or an invalid one, is a 400.
         * An empty Host is allowed (a target without authority). */
        if (++st->host_count > 1)
            return PROTO_HTTP_ERR_HOST_DUPLICATE;
        if (len > 0 && !proto_http_authority_valid(value, len, false))
            return PROTO_HTTP_ERR_HOST_INVALID;
        return PROTO_HTTP_OK;
    case PROTO_HTTP_KIND_CONTENT_LENGTH:
        return s_content_length(p, value, len);
    case PROTO_HTTP_KIND_TRANSFER_ENCODING:
        return s_transfer_encoding(st, value, len);
    case PROTO_HTTP_KIND_CONNECTION:
        s_connection(st, value, len);
        return PROTO_HTTP_OK;
    case PROTO_HTTP_KIND_UPGRADE:
        s_upgrade(st, value, len);
        return PROTO_HTTP_OK;
    case PROTO_HTTP_KIND_EXPECT:
        s_expect(p, value, len);
        return PROTO_HTTP_OK;
    case PROTO_HTTP_KIND_OTHER:
        break;
    }
    return PROTO_HTTP_OK;
}

/* ---------------------------------------------------------------- the head */

proto_http_reason_t proto_http_fields_finish(proto_http_parser_t *p, const char *base)
{
    proto_http_head_state_t *st = &p->state;
    p->version_minor = st->minor;

    /* RFC 9112 §6.1-§6.3: one framing, and chunked last. */
    if (st->te_seen) {
        if (p->has_content_length)
            return PROTO_HTTP_ERR_CL_WITH_TE;
        if (st->minor == 0)
            return PROTO_HTTP_ERR_TE_HTTP10; /* §6.1: framing of such a message is faulty */
        assert(st->te_chunked || st->te_other); /* s_transfer_encoding refused an empty list */
        if (!st->te_chunked_last)
            return PROTO_HTTP_ERR_TE_NOT_CHUNKED; /* §6.3 ¶4: length unknowable, 400 */
        if (st->te_other)
            return PROTO_HTTP_ERR_TE_UNSUPPORTED; /* §6.1: a coding kith cannot decode, 501 */
        p->chunked = true;
    }
    if (st->minor == 1 && st->host_count == 0)
        return PROTO_HTTP_ERR_HOST_MISSING; /* RFC 9112 §3.2 */
    if (p->has_content_length && p->content_length > st->limits.max_body)
        return PROTO_HTTP_ERR_BODY_TOO_LARGE;

    /* RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with
     * "keep-alive". RFC 9110 §7.8: Upgrade is ignored in HTTP/1.0 and
     * without the "upgrade" connection option; §10.1.1: so is
     * 100-continue. */
    p->keep_alive = !st->conn_close && (st->minor == 1 || st->conn_keep_alive);
    p->upgrade = st->minor == 1 && st->conn_upgrade && st->upgrade_seen;
    p->expect_continue &= st->minor == 1;
    p->websocket = p->upgrade && st->upgrade_websocket && st->method_len == 3 &&
                   memcmp(base + st->method_off, "GET", 3) == 0;
    return PROTO_HTTP_OK;
}
