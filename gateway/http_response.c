/* gateway/http_response.c — writing one response: the head (status line,
 * Date, Content-Type, Content-Length, added fields, Connection), the body,
 * JSON error bodies, and the words and counters that go with statuses. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>

#include "gateway/http_internal.h"
#include "proto/utf8.h"
#include "router/log.h"

/* Room for a response head: the fixed fields plus what handlers add. */
#define S_HEAD_MAX (512u + GATEWAY_HTTP_CONTENT_TYPE_MAX + GATEWAY_HTTP_RES_HEADERS_MAX)

/* ---------------------------------------------------------------- words */

const char *gateway_http_status_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    }
    return "";
}

const char *gateway_http_reason_text(proto_http_reason_t reason)
{
    switch (reason) {
    case PROTO_HTTP_OK: return "no error";
    case PROTO_HTTP_ERR_METHOD: return "the request method is not a token";
    case PROTO_HTTP_ERR_TARGET: return "the request target is malformed or does not fit the method";
    case PROTO_HTTP_ERR_TARGET_TOO_LONG: return "the request target is too long";
    case PROTO_HTTP_ERR_VERSION: return "the HTTP version is malformed";
    case PROTO_HTTP_ERR_VERSION_UNSUPPORTED: return "only HTTP/1.0 and HTTP/1.1 are served";
    case PROTO_HTTP_ERR_BARE_CR: return "a CR is not followed by LF";
    case PROTO_HTTP_ERR_BARE_LF: return "a line ends in LF without CR";
    case PROTO_HTTP_ERR_FIELD_NAME: return "a header field name is empty or not a token";
    case PROTO_HTTP_ERR_FIELD_VALUE: return "a header field value holds a control character";
    case PROTO_HTTP_ERR_SPACE_BEFORE_COLON: return "whitespace between a header field name and its colon";
    case PROTO_HTTP_ERR_OBS_FOLD: return "a header field is folded over lines (obsolete)";
    case PROTO_HTTP_ERR_HEAD_TOO_LARGE: return "the request head is too large";
    case PROTO_HTTP_ERR_TOO_MANY_FIELDS: return "the request has too many header fields";
    case PROTO_HTTP_ERR_HOST_MISSING: return "an HTTP/1.1 request needs a Host header";
    case PROTO_HTTP_ERR_HOST_DUPLICATE: return "the request has more than one Host header";
    case PROTO_HTTP_ERR_HOST_INVALID: return "the Host header is not host[:port]";
    case PROTO_HTTP_ERR_CL_INVALID: return "Content-Length is not a decimal number";
    case PROTO_HTTP_ERR_CL_OVERFLOW: return "Content-Length is too large";
    case PROTO_HTTP_ERR_CL_DUPLICATE: return "Content-Length is sent more than once";
    case PROTO_HTTP_ERR_CL_CONFLICT: return "Content-Length is sent with different values";
    case PROTO_HTTP_ERR_CL_WITH_TE: return "Content-Length and Transfer-Encoding are both sent";
    case PROTO_HTTP_ERR_TE_INVALID: return "Transfer-Encoding is malformed";
    case PROTO_HTTP_ERR_TE_DUPLICATE: return "Transfer-Encoding is sent more than once";
    case PROTO_HTTP_ERR_TE_NOT_CHUNKED: return "the final transfer coding is not chunked";
    case PROTO_HTTP_ERR_TE_UNSUPPORTED: return "only the chunked transfer coding is served";
    case PROTO_HTTP_ERR_TE_HTTP10: return "Transfer-Encoding is not allowed in HTTP/1.0";
    case PROTO_HTTP_ERR_BODY_TOO_LARGE: return "the request body is too large";
    case PROTO_HTTP_ERR_CHUNK_SIZE: return "a chunk size is not hexadecimal";
    case PROTO_HTTP_ERR_CHUNK_SIZE_OVERFLOW: return "a chunk size has too many digits";
    case PROTO_HTTP_ERR_CHUNK_EXT: return "a chunk extension is malformed";
    case PROTO_HTTP_ERR_CHUNK_EXT_TOO_LARGE: return "the chunk extensions are too large";
    case PROTO_HTTP_ERR_CHUNK_DATA_END: return "chunk data is not followed by CRLF";
    case PROTO_HTTP_ERR_TRAILER_TOO_LARGE: return "the trailer section is too large";
    case PROTO_HTTP_ERR_USAGE:
    case PROTO_HTTP_REASON_COUNT: break;
    }
    return "internal error";
}

/* The cell of kith_http_route_requests_total for (route, status), made on
 * first use; statuses past GATEWAY_HTTP_ROUTE_CODES_MAX share code="other". */
static router_metric_t *s_route_cell(gateway_http_t *g, const gateway_http_route_t *route,
                                     int status)
{
    size_t r = route ? (size_t) (route - g->routes) : GATEWAY_HTTP_ROUTES_MAX;
    gateway_http_route_code_t *cells = g->route_codes[r];
    size_t n = g->route_ncodes[r];
    for (size_t i = 0; i < n; i++)
        if (cells[i].status == status)
            return cells[i].m;
    if (n == GATEWAY_HTTP_ROUTE_CODES_MAX + 1u) /* the "other" cell exists */
        return cells[GATEWAY_HTTP_ROUTE_CODES_MAX].m;
    if (n == GATEWAY_HTTP_ROUTE_CODES_MAX)
        status = -1;
    char labels[GATEWAY_HTTP_PATTERN_MAX + 48], code[16] = "other";
    if (status > 0)
        snprintf(code, sizeof code, "%d", status);
    snprintf(labels, sizeof labels, "route=\"%s%s\",code=\"%s\"", route ? route->pattern : "",
             route && route->prefix ? "*" : "", code);
    cells[n].status = status;
    cells[n].m = router_metrics_add(g->opts.metrics, "kith_http_route_requests_total", labels,
                                    ROUTER_METRIC_COUNTER,
                                    "HTTP responses sent, by route pattern (\"\": none matched) "
                                    "and status code.");
    g->route_ncodes[r]++; /* registered or not (a full registry): tried once */
    return cells[n].m;
}

void gateway_http_count_status(gateway_http_t *g, const gateway_http_route_t *route, int status)
{
    if (!g->opts.metrics || status < GATEWAY_HTTP_STATUS_MIN || status > GATEWAY_HTTP_STATUS_MAX)
        return;
    router_metric_inc(s_route_cell(g, route, status), 1);
    size_t i = (size_t) (status - GATEWAY_HTTP_STATUS_MIN);
    if (!g->m_status_tried[i]) {
        char labels[32];
        snprintf(labels, sizeof labels, "code=\"%d\"", status);
        g->m_status[i] = router_metrics_add(g->opts.metrics, "kith_http_requests_total", labels,
                                            ROUTER_METRIC_COUNTER,
                                            "HTTP responses sent, by status code.");
        g->m_status_tried[i] = true;
    }
    router_metric_inc(g->m_status[i], 1);
}

/* IMF-fixdate (RFC 9110 §5.6.7) of the current second, formatted once per
 * second and without the locale. */
static const char *s_date(gateway_http_t *g)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if (now != g->date_at || !g->date[0]) {
        struct tm tm;
        if (!gmtime_r(&now, &tm))
            return "Thu, 01 Jan 1970 00:00:00 GMT";
        snprintf(g->date, sizeof g->date, "%s, %02d %s %04d %02d:%02d:%02d GMT",
                 days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900,
                 tm.tm_hour, tm.tm_min, tm.tm_sec);
        g->date_at = now;
    }
    return g->date;
}

/* ---------------------------------------------------------------- building */

void gateway_http_res_init(gateway_http_res_t *res, gateway_http_conn_t *hc, bool close)
{
    res->hc = hc;
    res->extra_len = 0;
    res->sent = false;
    res->close = close || hc->g->draining; /* a stopping server keeps nothing open */
    res->upgrade = NULL;
    res->ws = NULL;
    res->deferred = NULL;
    res->credential[0] = '\0';
}

void gateway_http_res_credential(gateway_http_res_t *res, const char *id)
{
    snprintf(res->credential, sizeof res->credential, "%s", id ? id : "");
    gateway_http_res_authenticated(res);
}

const char *gateway_http_res_credential_of(const gateway_http_res_t *res)
{
    return res->credential;
}

/* field-value octets we send: visible ASCII, SP, HTAB (no obs-text, so
 * nothing a client could read as a line end). */
static bool s_value_ok(const char *v, size_t max)
{
    size_t n = 0;
    for (; v[n]; n++) {
        unsigned char c = (unsigned char) v[n];
        if (n + 1 >= max || (c < 0x20 && c != '\t') || c >= 0x7f)
            return false;
    }
    return true;
}

int gateway_http_res_header(gateway_http_res_t *res, const char *name, const char *value)
{
    static const char *const reserved[] = {"content-length", "connection", "date",
                                           "transfer-encoding"};
    if (res->sent) {
        errno = EALREADY;
        return -1;
    }
    if (!name || !value || !gateway_http_is_token(name, 64) ||
        !s_value_ok(value, GATEWAY_HTTP_RES_HEADERS_MAX)) {
        errno = EINVAL;
        return -1;
    }
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (!strcasecmp(name, reserved[i])) {
            errno = EINVAL;
            return -1;
        }
    size_t room = sizeof res->extra - res->extra_len;
    int n = snprintf(res->extra + res->extra_len, room, "%s: %s\r\n", name, value);
    if (n < 0 || (size_t) n >= room) {
        res->extra[res->extra_len] = '\0';
        errno = ENOSPC;
        return -1;
    }
    res->extra_len += (size_t) n;
    return 0;
}

void gateway_http_res_close(gateway_http_res_t *res)
{
    res->close = true;
}

/* Whether the handler added a field named `name`. */
static bool s_extra_has(const gateway_http_res_t *res, const char *name)
{
    size_t n = strlen(name);
    for (size_t at = 0; at + n < res->extra_len;) {
        if (res->extra[at + n] == ':' && !strncasecmp(res->extra + at, name, n))
            return true;
        const char *eol = memchr(res->extra + at, '\n', res->extra_len - at);
        if (!eol)
            break;
        at = (size_t) (eol - res->extra) + 1;
    }
    return false;
}

/* Writes the part of a response head every answer shares — status line,
 * Date, Content-Type when given, the handler's headers — into head[cap].
 * Returns its length (cap or more when it does not fit). */
static int s_head_start(const gateway_http_res_t *res, int status, const char *content_type,
                        char *head, size_t cap)
{
    return snprintf(head, cap,
                    "HTTP/1.1 %d %s\r\n"
                    "Date: %s\r\n"
                    "%s%s%s"
                    "%.*s",
                    status, gateway_http_status_phrase(status), s_date(res->hc->g),
                    content_type ? "Content-Type: " : "", content_type ? content_type : "",
                    content_type ? "\r\n" : "", (int) res->extra_len, res->extra);
}

static int s_respond_error(gateway_http_res_t *res, int status, const char *code,
                           const char *text, bool fallback);

/* gateway_http_respond; `fallback`: an answer that cannot be queued is
 * replaced by an error saying why. The error itself is sent without one
 * (when even it does not fit, the loop cuts the connection), so the
 * replacement never recurses. */
static int s_respond(gateway_http_res_t *res, int status, const char *content_type,
                     const void *body, size_t len, bool fallback)
{
    gateway_http_conn_t *hc = res->hc;
    bool bodiless = status == 204 || status == 304;
    if (res->sent) {
        errno = EALREADY;
        return -1;
    }
    if (status < 200 || status > GATEWAY_HTTP_STATUS_MAX || (len && !body) || (bodiless && len) ||
        (content_type && !s_value_ok(content_type, GATEWAY_HTTP_CONTENT_TYPE_MAX))) {
        errno = EINVAL;
        return -1;
    }
    res->sent = true;
    if (!hc || hc->phase == GATEWAY_HTTP_CLOSING) { /* !hc: a deferred answer's connection went */
        errno = EPIPE;
        return -1;
    }
    /* A deferred answer was begun before a drain: a stopping server keeps
     * nothing open, so it closes too (else the client is told keep-alive,
     * idles, and is reset at the drain's deadline). */
    if (hc->g->draining)
        res->close = true;
    const proto_http_parser_t *p = &hc->parser;
    bool keep_alive_10 = !res->close && p->version_minor == 0;
    char head[S_HEAD_MAX];
    int n = s_head_start(res, status, content_type, head, sizeof head);
    if (n > 0 && (size_t) n < sizeof head && !bodiless)
        n += snprintf(head + n, sizeof head - (size_t) n, "Content-Length: %zu\r\n", len);
    /* A sender of Upgrade (a 426) names it in Connection too, so no
     * intermediary forwards it (RFC 9110 §7.8). */
    bool upgrade = s_extra_has(res, "Upgrade");
    if (n > 0 && (size_t) n < sizeof head)
        n += snprintf(head + n, sizeof head - (size_t) n, "%s\r\n",
                      res->close      ? (upgrade ? "Connection: close, upgrade\r\n"
                                                 : "Connection: close\r\n")
                      : keep_alive_10 ? (upgrade ? "Connection: keep-alive, upgrade\r\n"
                                                 : "Connection: keep-alive\r\n")
                      : upgrade       ? "Connection: upgrade\r\n"
                                      : "");
    if (n <= 0 || (size_t) n >= sizeof head) {
        /* Cannot happen with the bounds above; refuse rather than cut a head. */
        errno = EINVAL;
        res->sent = false;
        return -1;
    }
    struct iovec iov[2] = {
        {.iov_base = head, .iov_len = (size_t) n},
        {.iov_base = (void *) body, .iov_len = len},
    };
    int iovcnt = hc->head_only || bodiless || !len ? 1 : 2;
    size_t limit = hc->g->opts.send_limit ? hc->g->opts.send_limit : ROUTER_CONN_SEND_LIMIT;
    if (fallback && iovcnt == 2 && len > limit - (limit < (size_t) n ? limit : (size_t) n)) {
        /* Larger on its own than the unsent bound: the loop would cut the
         * connection without a word, however fast the client reads. Say
         * why instead; nothing was written, so the connection goes on. */
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "conn %llu: a %d answer of %zu octets passes limits.conn_unsent_max (%zu)",
                   (unsigned long long) router_conn_id(hc->conn), status, len, limit);
        res->sent = false;
        res->extra_len = 0; /* the handler's fields were for the answer not sent */
        char text[128];
        snprintf(text, sizeof text,
                 "the answer would be larger than %zu octets (limits.conn_unsent_max); ask for"
                 " less", limit);
        return s_respond_error(res, 500, "response_too_large", text, false);
    }
    if (fallback && iovcnt == 2 && (size_t) n + len > router_conn_send_room(hc->conn)) {
        /* It fits the bound, not what is left of it now: answers to
         * pipelined requests are still unsent, or all connections together
         * hold limits.conn_unsent_total_max. The loop would cut the
         * connection without a word; say so and close instead. */
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "conn %llu: a %d answer of %zu octets does not fit the unsent room left (%zu)",
                   (unsigned long long) router_conn_id(hc->conn), status, len,
                   router_conn_send_room(hc->conn));
        res->sent = false;
        res->extra_len = 0;
        res->close = true;
        (void) gateway_http_res_header(res, "Retry-After", "1");
        return s_respond_error(res, 503, "send_buffers_full",
                               "the answer does not fit what the server may hold unsent now"
                               " (limits.conn_unsent_max, limits.conn_unsent_total_max);"
                               " ask again", false);
    }
    if (router_conn_sendv(hc->conn, iov, iovcnt) != 0) {
        /* Cut as a slow consumer, or already closing: on_close follows. */
        ROUTER_LOG(ROUTER_LOG_DEBUG, "gateway", "conn %llu: response %d not sent: %s",
                   (unsigned long long) router_conn_id(hc->conn), status, strerror(errno));
        hc->phase = GATEWAY_HTTP_CLOSING;
        errno = EPIPE;
        return -1;
    }
    hc->served++;
    gateway_http_count_status(hc->g, hc->route, status);
    return 0;
}

int gateway_http_respond(gateway_http_res_t *res, int status, const char *content_type,
                         const void *body, size_t len)
{
    return s_respond(res, status, content_type, body, len, true);
}

router_conn_t *gateway_http_respond_stream(gateway_http_res_t *res, int status,
                                           const char *content_type,
                                           const gateway_http_stream_handlers_t *h, void *ud)
{
    gateway_http_conn_t *hc = res->hc;
    if (res->sent) {
        errno = EALREADY;
        return NULL;
    }
    if (status < 200 || status > GATEWAY_HTTP_STATUS_MAX || status == 204 || status == 304 ||
        !h || !h->on_close ||
        (content_type && !s_value_ok(content_type, GATEWAY_HTTP_CONTENT_TYPE_MAX))) {
        errno = EINVAL;
        return NULL;
    }
    res->sent = true;
    res->close = true;
    if (!hc || hc->phase == GATEWAY_HTTP_CLOSING) { /* !hc: a deferred answer's connection went */
        errno = EPIPE;
        return NULL;
    }
    char head[S_HEAD_MAX];
    int n = s_head_start(res, status, content_type, head, sizeof head);
    if (n > 0 && (size_t) n < sizeof head)
        n += snprintf(head + n, sizeof head - (size_t) n, "Connection: close\r\n\r\n");
    if (n <= 0 || (size_t) n >= sizeof head) {
        errno = EINVAL;
        res->sent = false;
        return NULL;
    }
    if (router_conn_send(hc->conn, head, (size_t) n) != 0) {
        hc->phase = GATEWAY_HTTP_CLOSING;
        errno = EPIPE;
        return NULL;
    }
    hc->served++;
    gateway_http_count_status(hc->g, hc->route, status);
    if (hc->head_only) {
        errno = ECANCELED; /* the server closes it after this request */
        return NULL;
    }
    hc->phase = GATEWAY_HTTP_STREAM;
    hc->stream = *h;
    hc->stream_ud = ud;
    memcpy(hc->credential, res->credential, sizeof hc->credential);
    /* Begun after a drain closed the streams (its request was under way
     * then): closed in order as they were, not left to the drain's
     * deadline. The route's sends fail with EPIPE; on_close follows. */
    if (hc->g->draining)
        router_conn_close(hc->conn);
    return hc->conn;
}

int gateway_http_respond_json(gateway_http_res_t *res, int status, const char *json)
{
    return gateway_http_respond(res, status, "application/json", json, json ? strlen(json) : 0);
}

/* Octets of the well-formed UTF-8 code point starting at s (lead octet
 * 0x80 or above), 0 when it is not one. */
static size_t s_utf8_point(const char *s)
{
    unsigned char c = (unsigned char) *s;
    size_t k = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    if (strnlen(s, k) < k || !proto_utf8_valid((const uint8_t *) s, k))
        return 0;
    return k;
}

/* Appends `s` as a JSON string (quotes included) to out[*len..cap). Texts
 * may carry a client's octets cut at a length (an unknown member's name,
 * say): what is not well-formed UTF-8 becomes U+FFFD, so the body stays
 * JSON (RFC 8259 §8.1) for every client's parser. With `cut`, a string too
 * long for the room is cut after a whole code point and ends in "…"
 * instead of refused. */
static int s_json_string(char *out, size_t cap, size_t *len, const char *s, bool cut)
{
    static const char hex[] = "0123456789abcdef";
    static const char ellipsis[] = "\xe2\x80\xa6";
    size_t n = *len;
    if (n + 1 >= cap)
        return -1;
    out[n++] = '"';
    /* Where the string may be cut: room is left there for "…" and the quote. */
    size_t cut_at = n;
    bool can_cut = cut && n + sizeof ellipsis < cap;
    for (; *s; s++) {
        unsigned char c = (unsigned char) *s;
        char esc[7];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            esc[k++] = '\\';
            esc[k++] = (char) c;
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            k = 6;
        } else if (c >= 0x80 && (k = s_utf8_point(s)) > 0) {
            memcpy(esc, s, k);
            s += k - 1;
        } else if (c >= 0x80) {
            memcpy(esc, "\\ufffd", 6);
            k = 6;
        } else {
            esc[k++] = (char) c;
        }
        if (n + k + 1 >= cap) {
            if (!can_cut)
                return -1;
            n = cut_at;
            memcpy(out + n, ellipsis, sizeof ellipsis - 1);
            n += sizeof ellipsis - 1;
            break;
        }
        memcpy(out + n, esc, k);
        n += k;
        if (n + sizeof ellipsis < cap)
            cut_at = n;
    }
    if (n + 1 >= cap)
        return -1;
    out[n++] = '"';
    out[n] = '\0';
    *len = n;
    return 0;
}

static int s_respond_error(gateway_http_res_t *res, int status, const char *code,
                           const char *text, bool fallback)
{
    char body[GATEWAY_HTTP_ERROR_BODY_MAX];
    char code_json[GATEWAY_HTTP_ERROR_BODY_MAX];
    size_t n = 9, code_len = 0;
    if (!code || !text || s_json_string(code_json, sizeof code_json, &code_len, code, false) != 0) {
        errno = EINVAL;
        return -1;
    }
    /* The code is for programs: whole or refused. The text is for people:
     * a long one is cut to what fits, rather than the answer lost. */
    size_t tail = 8 + code_len + 1; /* ,"code":…} */
    if (tail >= sizeof body - n) {
        errno = EINVAL;
        return -1;
    }
    memcpy(body, "{\"error\":", 9);
    if (s_json_string(body, sizeof body - tail, &n, text, true) != 0) {
        errno = EINVAL;
        return -1;
    }
    memcpy(body + n, ",\"code\":", 8);
    n += 8;
    memcpy(body + n, code_json, code_len);
    n += code_len;
    body[n++] = '}';
    return s_respond(res, status, "application/json", body, n, fallback);
}

int gateway_http_respond_error(gateway_http_res_t *res, int status, const char *code,
                               const char *text)
{
    return s_respond_error(res, status, code, text, true);
}
