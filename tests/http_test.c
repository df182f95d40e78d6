/* tests/http_test.c — the HTTP/1.1 request parser and body decoder: valid
 * requests, every refusal reason, the limits, and every case fed whole, one
 * octet at a time and at random split points with identical results. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/http.h"

#define REQ(s) (s), (sizeof(s) - 1)

/* ---------------------------------------------------------------- harness */

/* One request run through head parser and body decoder. */
typedef struct {
    char *buf;                  /* the copy the head slices point into */
    proto_http_parser_t p;      /* the head parser after the run */
    ssize_t head;               /* what proto_http_parse() returned last */
    int body_init;              /* what proto_http_body_init() returned (0 if not reached) */
    proto_http_reason_t reason; /* head or body refusal */
    char *body;                 /* decoded body octets */
    size_t body_len;            /* their count */
    bool done;                  /* the body decoder finished */
    size_t used;                /* input octets the request took, head and body */
    char digest[8192];          /* everything above, as text, to compare feeds */
} s_run_t;

/* How a feed is cut: every piece whole, one octet, or random lengths. */
typedef enum { S_WHOLE, S_BYTES, S_RANDOM } s_cut_t;

static uint64_t s_rng = 1;

static size_t s_step(s_cut_t cut, size_t left)
{
    size_t n = left;
    if (cut == S_BYTES) {
        n = 1;
    } else if (cut == S_RANDOM) {
        s_rng ^= s_rng << 13;
        s_rng ^= s_rng >> 7;
        s_rng ^= s_rng << 17;
        n = 1 + (size_t) (s_rng % ((s_rng >> 32) % 4 == 0 ? 400 : 9));
    }
    return n < left ? n : left;
}

static char *s_dup(const char *s, size_t n)
{
    char *d = malloc(n ? n : 1);
    assert_non_null(d);
    if (n)
        memcpy(d, s, n);
    return d;
}

static uint64_t s_fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char) s[i]) * 1099511628211ull;
    return h;
}

static void s_put_slice(char *d, size_t cap, const char *label, proto_http_slice_t s)
{
    size_t at = strlen(d);
    if (!s.ptr)
        snprintf(d + at, cap - at, " %s=(none)", label);
    else
        snprintf(d + at, cap - at, " %s=[%.*s]", label, (int) s.len, s.ptr);
}

static void s_digest(s_run_t *r)
{
    char *d = r->digest;
    size_t cap = sizeof r->digest;
    const proto_http_parser_t *p = &r->p;
    snprintf(d, cap, "head=%zd init=%d reason=%s", r->head, r->body_init,
             proto_http_reason_str(r->reason));
    if (r->head > 0) {
        s_put_slice(d, cap, "method", p->method);
        s_put_slice(d, cap, "target", p->target);
        s_put_slice(d, cap, "path", p->path);
        s_put_slice(d, cap, "query", p->query);
        s_put_slice(d, cap, "version", p->version);
        s_put_slice(d, cap, "host", p->host);
        size_t at = strlen(d);
        snprintf(d + at, cap - at,
                 " form=%d minor=%d cl=%d/%llu chunked=%d ka=%d up=%d ws=%d expect=%d n=%zu",
                 (int) p->form, p->version_minor, p->has_content_length,
                 (unsigned long long) p->content_length, p->chunked, p->keep_alive,
                 p->upgrade, p->websocket, p->expect_continue, p->header_count);
        for (size_t i = 0; i < p->header_count; i++) {
            proto_http_header_t h = proto_http_header_get(p, i);
            s_put_slice(d, cap, "name", h.name);
            s_put_slice(d, cap, "value", h.value);
        }
    }
    size_t at = strlen(d);
    snprintf(d + at, cap - at, " body=%zu/%016llx done=%d used=%zu", r->body_len,
             (unsigned long long) s_fnv(r->body, r->body_len), r->done, r->used);
}

/* Feed req[0..len) cut by `cut`: the head by growing prefixes, each call
 * on a fresh copy (the buffer may move between calls; reads past the end
 * trip ASan), then the body in pieces, each its own exact-size copy. */
static void s_feed(const char *req, size_t len, const proto_http_limits_t *limits,
                   uint64_t max_body, s_cut_t cut, s_run_t *r)
{
    memset(r, 0, offsetof(s_run_t, digest));
    r->body = malloc(len + 1);
    assert_non_null(r->body);
    assert_int_equal(proto_http_parser_init(&r->p, limits), 0);

    size_t have = 0;
    r->head = -2;
    while (r->head == -2 && have < len) {
        have += s_step(cut, len - have);
        free(r->buf);
        r->buf = s_dup(req, have);
        r->head = proto_http_parse(&r->p, r->buf, have);
    }
    if (r->head < 0) {
        r->reason = r->head == -1 ? r->p.reason : PROTO_HTTP_OK;
        s_digest(r);
        return;
    }
    assert_int_equal(r->p.reason, PROTO_HTTP_OK);

    proto_http_body_t b;
    r->body_init = proto_http_body_init(&b, &r->p, max_body);
    if (r->body_init != 0) {
        r->reason = b.reason;
        r->used = (size_t) r->head;
        s_digest(r);
        return;
    }
    size_t off = (size_t) r->head;
    while (!proto_http_body_done(&b) && off < len) {
        size_t n = s_step(cut, len - off);
        char *piece = s_dup(req + off, n);
        size_t in = 0;
        while (in < n && !proto_http_body_done(&b)) {
            proto_http_slice_t data;
            ssize_t got = proto_http_body_parse(&b, piece + in, n - in, &data);
            if (got < 0) {
                r->reason = b.reason;
                break;
            }
            assert_true(got > 0 || proto_http_body_done(&b));
            if (data.ptr) {
                assert_true(data.ptr >= piece + in && data.ptr + data.len <= piece + in + (size_t) got);
                memcpy(r->body + r->body_len, data.ptr, data.len);
                r->body_len += data.len;
            }
            in += (size_t) got;
        }
        free(piece);
        off += in;
        if (r->reason != PROTO_HTTP_OK)
            break;
    }
    r->done = proto_http_body_done(&b);
    r->used = r->reason == PROTO_HTTP_OK ? off : 0; /* where a refusal is seen depends on the cuts */
    s_digest(r);
}

static void s_run_free(s_run_t *r)
{
    free(r->buf);
    free(r->body);
    r->buf = r->body = NULL;
}

/* Run req whole, byte by byte and at random splits under several seeds;
 * every feed must give the same digest. *r keeps the whole feed. */
static void s_run_limits(const char *req, size_t len, const proto_http_limits_t *limits,
                         uint64_t max_body, s_run_t *r)
{
    s_feed(req, len, limits, max_body, S_WHOLE, r);
    s_run_t *other = malloc(sizeof *other);
    assert_non_null(other);
    s_feed(req, len, limits, max_body, S_BYTES, other);
    assert_string_equal(other->digest, r->digest);
    s_run_free(other);
    for (uint64_t seed = 1; seed <= 8; seed++) {
        s_rng = seed * 0x9e3779b97f4a7c15ull;
        s_feed(req, len, limits, max_body, S_RANDOM, other);
        assert_string_equal(other->digest, r->digest);
        s_run_free(other);
    }
    free(other);
}

static s_run_t *s_run(const char *req, size_t len)
{
    s_run_t *r = malloc(sizeof *r);
    assert_non_null(r);
    s_run_limits(req, len, NULL, PROTO_HTTP_BODY_MAX, r);
    return r;
}

static void s_done(s_run_t *r)
{
    s_run_free(r);
    free(r);
}

static void s_assert_slice(proto_http_slice_t s, const char *want)
{
    if (!want) {
        assert_null(s.ptr);
        assert_int_equal(s.len, 0);
        return;
    }
    assert_non_null(s.ptr);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.ptr, want, s.len);
}

/* A request accepted whole: head and body complete, all input used. */
static s_run_t *s_accept(const char *req, size_t len)
{
    s_run_t *r = s_run(req, len);
    if (r->head <= 0 || r->reason != PROTO_HTTP_OK || !r->done || r->used != len)
        fail_msg("not accepted: %s", r->digest);
    return r;
}

static void s_expect_reason_limits(const char *req, size_t len, const proto_http_limits_t *limits,
                                   uint64_t max_body, proto_http_reason_t want)
{
    s_run_t *r = malloc(sizeof *r);
    assert_non_null(r);
    s_run_limits(req, len, limits, max_body, r);
    if (r->reason != want)
        fail_msg("want %s, got: %s", proto_http_reason_str(want), r->digest);
    s_done(r);
}

static void s_expect_reason(const char *req, size_t len, proto_http_reason_t want)
{
    s_expect_reason_limits(req, len, NULL, PROTO_HTTP_BODY_MAX, want);
}

#define REJECT(want, s) s_expect_reason(REQ(s), (want))

/* ---------------------------------------------------------------- valid heads */

static void test_get_curl(void **state)
{
    (void) state;
    s_run_t *r = s_accept(REQ("GET /health HTTP/1.1\r\n"
                              "Host: 127.0.0.1:42617\r\n"
                              "User-Agent: curl/7.88.1\r\n"
                              "Accept: */*\r\n"
                              "\r\n"));
    s_assert_slice(r->p.method, "GET");
    s_assert_slice(r->p.target, "/health");
    s_assert_slice(r->p.path, "/health");
    s_assert_slice(r->p.query, NULL);
    s_assert_slice(r->p.version, "HTTP/1.1");
    s_assert_slice(r->p.host, "127.0.0.1:42617");
    assert_int_equal(r->p.form, PROTO_HTTP_FORM_ORIGIN);
    assert_int_equal(r->p.version_minor, 1);
    assert_true(r->p.keep_alive);
    assert_false(r->p.has_content_length);
    assert_false(r->p.chunked);
    assert_false(r->p.upgrade);
    assert_int_equal(r->p.header_count, 3);
    proto_http_header_t h = proto_http_header_get(&r->p, 1);
    s_assert_slice(h.name, "User-Agent");
    s_assert_slice(h.value, "curl/7.88.1");
    proto_http_slice_t v;
    assert_true(proto_http_header_find(&r->p, "accept", &v));
    s_assert_slice(v, "*/*");
    assert_false(proto_http_header_find(&r->p, "accept-encoding", &v));
    assert_int_equal(r->body_len, 0);
    s_done(r);
}

static void test_query_split(void **state)
{
    (void) state;
    s_run_t *r = s_accept(REQ("GET /ws/chat?session_id=a1%2F&name=x|y HTTP/1.1\r\nHost: h\r\n\r\n"));
    s_assert_slice(r->p.path, "/ws/chat");
    s_assert_slice(r->p.query, "session_id=a1%2F&name=x|y");
    s_done(r);

    r = s_accept(REQ("GET /? HTTP/1.1\r\nHost: h\r\n\r\n"));
    s_assert_slice(r->p.path, "/");
    s_assert_slice(r->p.query, ""); /* present, empty */
    s_done(r);

    r = s_accept(REQ("GET /a/b;p=1/c?x=/?y[0]={z} HTTP/1.1\r\nHost: h\r\n\r\n"));
    s_assert_slice(r->p.path, "/a/b;p=1/c");
    s_assert_slice(r->p.query, "x=/?y[0]={z}");
    s_done(r);
}

static void test_field_values(void **state)
{
    (void) state;
    /* OWS trimmed both sides, inner whitespace kept, empty values, obs-text,
     * names as sent, every tchar in a name. */
    s_run_t *r = s_accept(REQ("GET / HTTP/1.1\r\n"
                              "Host:h\r\n"
                              "X-Pad: \t a \t b \t\r\n"
                              "X-Empty:\r\n"
                              "X-Blank:   \r\n"
                              "X-Utf8: caf\xc3\xa9\r\n"
                              "!#$%&'*+-.^_`|~09azAZ: t\r\n"
                              "\r\n"));
    assert_int_equal(r->p.header_count, 6);
    s_assert_slice(proto_http_header_get(&r->p, 0).value, "h");
    s_assert_slice(proto_http_header_get(&r->p, 1).value, "a \t b");
    s_assert_slice(proto_http_header_get(&r->p, 2).value, "");
    s_assert_slice(proto_http_header_get(&r->p, 3).value, "");
    s_assert_slice(proto_http_header_get(&r->p, 4).value, "caf\xc3\xa9");
    s_assert_slice(proto_http_header_get(&r->p, 5).name, "!#$%&'*+-.^_`|~09azAZ");
    proto_http_slice_t v;
    assert_true(proto_http_header_find(&r->p, "x-pad", &v));
    s_assert_slice(v, "a \t b");
    s_done(r);
}

static void test_leading_empty_lines(void **state)
{
    (void) state;
    /* RFC 9112 §2.2: empty lines before the request-line are ignored. */
    s_run_t *r = s_accept(REQ("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"));
    s_assert_slice(r->p.method, "GET");
    assert_int_equal(r->head, 31);
    s_done(r);
}

static void test_http10(void **state)
{
    (void) state;
    s_run_t *r = s_accept(REQ("GET / HTTP/1.0\r\n\r\n")); /* no Host needed */
    assert_int_equal(r->p.version_minor, 0);
    s_assert_slice(r->p.version, "HTTP/1.0");
    s_assert_slice(r->p.host, NULL);
    assert_false(r->p.keep_alive);
    s_done(r);
}

static void test_target_forms(void **state)
{
    (void) state;
    /* absolute-form: the authority wins over Host (RFC 9112 §3.2.2) */
    s_run_t *r = s_accept(REQ("GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: other\r\n\r\n"));
    assert_int_equal(r->p.form, PROTO_HTTP_FORM_ABSOLUTE);
    s_assert_slice(r->p.host, "example.com:8080");
    s_assert_slice(r->p.path, "/a/b");
    s_assert_slice(r->p.query, "c=d");
    s_done(r);

    r = s_accept(REQ("GET https://[::1]:42617 HTTP/1.1\r\nHost: [::1]:42617\r\n\r\n"));
    s_assert_slice(r->p.host, "[::1]:42617");
    s_assert_slice(r->p.path, "/");
    s_assert_slice(r->p.query, NULL);
    s_done(r);

    r = s_accept(REQ("GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n"));
    s_assert_slice(r->p.host, "h");
    s_assert_slice(r->p.path, "/");
    s_assert_slice(r->p.query, "q");
    s_done(r);

    r = s_accept(REQ("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert_int_equal(r->p.form, PROTO_HTTP_FORM_ASTERISK);
    s_assert_slice(r->p.path, "*");
    s_assert_slice(r->p.host, "h");
    s_done(r);

    r = s_accept(REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"));
    assert_int_equal(r->p.form, PROTO_HTTP_FORM_AUTHORITY);
    s_assert_slice(r->p.host, "example.com:443");
    s_assert_slice(r->p.path, NULL);
    s_done(r);
}

static void test_target_max(void **state)
{
    (void) state;
    /* Exactly PROTO_HTTP_TARGET_MAX octets is fine; one more is a 414. */
    static char req[PROTO_HTTP_TARGET_MAX + 64];
    for (size_t extra = 0; extra <= 1; extra++) {
        size_t n = 0;
        n += (size_t) sprintf(req, "GET /");
        memset(req + n, 'a', PROTO_HTTP_TARGET_MAX - 1 + extra);
        n += PROTO_HTTP_TARGET_MAX - 1 + extra;
        n += (size_t) sprintf(req + n, " HTTP/1.1\r\nHost: h\r\n\r\n");
        s_run_t *r = s_run(req, n);
        if (extra == 0) {
            assert_true(r->head > 0);
            assert_int_equal(r->p.target.len, PROTO_HTTP_TARGET_MAX);
        } else {
            assert_int_equal(r->reason, PROTO_HTTP_ERR_TARGET_TOO_LONG);
            assert_int_equal(proto_http_reason_status(r->reason), 414);
        }
        s_done(r);
    }
}

/* ---------------------------------------------------------------- keep-alive, upgrade */

static void s_expect_keep_alive(const char *req, size_t len, bool want)
{
    s_run_t *r = s_accept(req, len);
    assert_int_equal(r->p.keep_alive, want);
    s_done(r);
}

static void test_keep_alive(void **state)
{
    (void) state;
    /* RFC 9112 §9.3 */
    s_expect_keep_alive(REQ("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), true);
    s_expect_keep_alive(REQ("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), false);
    s_expect_keep_alive(REQ("GET / HTTP/1.1\r\nHost: h\r\nConnection: CLOSE\r\n\r\n"), false);
    s_expect_keep_alive(REQ("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n"), false);
    s_expect_keep_alive(REQ("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo\r\nConnection: close\r\n\r\n"), false);
    s_expect_keep_alive(REQ("GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n"), true);
    s_expect_keep_alive(REQ("GET / HTTP/1.0\r\n\r\n"), false);
    s_expect_keep_alive(REQ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), true);
    s_expect_keep_alive(REQ("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), false);
}

static void test_websocket_upgrade(void **state)
{
    (void) state;
    /* RFC 6455 §1.2 */
    s_run_t *r = s_accept(REQ("GET /chat HTTP/1.1\r\n"
                              "Host: server.example.com\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Origin: http://example.com\r\n"
                              "Sec-WebSocket-Protocol: chat, superchat\r\n"
                              "Sec-WebSocket-Version: 13\r\n"
                              "\r\n"));
    assert_true(r->p.upgrade);
    assert_true(r->p.websocket);
    proto_http_slice_t v;
    assert_true(proto_http_header_find(&r->p, "SEC-WEBSOCKET-KEY", &v));
    s_assert_slice(v, "dGhlIHNhbXBsZSBub25jZQ==");
    s_done(r);

    /* Firefox sends "keep-alive, Upgrade"; the token may carry a version. */
    r = s_accept(REQ("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
                     "Upgrade: WebSocket/13\r\n\r\n"));
    assert_true(r->p.websocket);
    s_done(r);

    /* Upgrade without the connection option, in HTTP/1.0, or to another
     * protocol, or not a GET */
    r = s_accept(REQ("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"));
    assert_false(r->p.upgrade);
    assert_false(r->p.websocket);
    s_done(r);
    r = s_accept(REQ("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
    assert_false(r->p.upgrade);
    s_done(r);
    r = s_accept(REQ("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"));
    assert_true(r->p.upgrade);
    assert_false(r->p.websocket);
    s_done(r);
    r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
    assert_true(r->p.upgrade);
    assert_false(r->p.websocket);
    s_done(r);
}

static void test_expect_continue(void **state)
{
    (void) state;
    s_run_t *r = s_accept(REQ("POST /webhook HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
                              "Expect: 100-Continue\r\n\r\nhi"));
    assert_true(r->p.expect_continue);
    s_done(r);
    r = s_accept(REQ("POST /webhook HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
                     "Expect: something\r\n\r\nhi"));
    assert_false(r->p.expect_continue);
    s_done(r);
    /* an HTTP/1.0 client cannot wait for a 100 (RFC 9110 §10.1.1) */
    r = s_accept(REQ("POST /webhook HTTP/1.0\r\nContent-Length: 2\r\n"
                     "Expect: 100-continue\r\n\r\nhi"));
    assert_false(r->p.expect_continue);
    s_done(r);
}

/* ---------------------------------------------------------------- bodies */

static void test_content_length_body(void **state)
{
    (void) state;
    s_run_t *r = s_accept(REQ("POST /webhook HTTP/1.1\r\n"
                              "Host: localhost\r\n"
                              "Authorization: Bearer kith_00\r\n"
                              "Content-Type: application/json\r\n"
                              "Content-Length: 16\r\n"
                              "\r\n"
                              "{\"message\":\"hi\"}"));
    assert_true(r->p.has_content_length);
    assert_int_equal(r->p.content_length, 16);
    assert_int_equal(r->body_len, 16);
    assert_memory_equal(r->body, "{\"message\":\"hi\"}", 16);
    s_done(r);

    r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"));
    assert_int_equal(r->body_len, 0);
    s_done(r);

    r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n\r\n\0\r\x80\n\n"));
    assert_int_equal(r->p.content_length, 7);
    assert_memory_equal(r->body, "\r\n\0\r\x80\n\n", 7);
    s_done(r);
}

static void test_chunked_body(void **state)
{
    (void) state;
    /* chunk extensions (token and quoted-string values, BWS) and trailers */
    s_run_t *r = s_accept(REQ("POST /webhook HTTP/1.1\r\n"
                              "Host: h\r\n"
                              "Transfer-Encoding: Chunked\r\n"
                              "\r\n"
                              "4;foo=bar\r\n"
                              "Wiki\r\n"
                              "5 ; name = \"q\\\"x;y\" ;flag\r\n"
                              "pedia\r\n"
                              "E\r\n"
                              " in\r\n\r\nchunks.\r\n"
                              "000;last\r\n"
                              "Expires: never\r\n"
                              "X-Sum:\t1 \r\n"
                              "\r\n"));
    assert_true(r->p.chunked);
    assert_false(r->p.has_content_length);
    assert_int_equal(r->body_len, 23);
    assert_memory_equal(r->body, "Wikipedia in\r\n\r\nchunks.", 23);
    s_done(r);

    /* the smallest chunked body, and upper-case hex */
    r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
    assert_int_equal(r->body_len, 0);
    s_done(r);
    r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "A\r\n0123456789\r\n0\r\n\r\n"));
    assert_int_equal(r->body_len, 10);
    s_done(r);
}

static void test_chunk_size_max_digits(void **state)
{
    (void) state;
    /* 16 hex digits with leading zeros are fine; the value still counts. */
    s_run_t *r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "0000000000000003\r\nabc\r\n0\r\n\r\n"));
    assert_int_equal(r->body_len, 3);
    s_done(r);
}

static void test_pipelined(void **state)
{
    (void) state;
    static const char req[] =
        "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        "\r\n" /* a stray CRLF after a body, tolerated (RFC 9112 §2.2) */
        "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        "GET /d HTTP/1.0\r\n\r\n"
        "GET /e HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    static const struct {
        const char *path, *body;
        bool keep_alive;
    } want[] = {
        { "/a", "", true }, { "/b", "hello", true }, { "/c", "abc", true },
        { "/d", "", false }, { "/e", "", false },
    };
    size_t len = sizeof req - 1, off = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        s_run_t *r = s_run(req + off, len - off);
        if (r->head <= 0 || !r->done)
            fail_msg("request %zu: %s", i, r->digest);
        s_assert_slice(r->p.path, want[i].path);
        assert_int_equal(r->body_len, strlen(want[i].body));
        assert_memory_equal(r->body, want[i].body, r->body_len);
        assert_int_equal(r->p.keep_alive, want[i].keep_alive);
        off += r->used;
        s_done(r);
    }
    assert_int_equal(off, len);
}

static void test_reparse_after_done(void **state)
{
    (void) state;
    /* A second call after completion returns the same length and repoints
     * the results at the buffer given. */
    static const char req[] = "GET /x HTTP/1.1\r\nHost: h\r\n\r\nnext";
    proto_http_parser_t p;
    assert_int_equal(proto_http_parser_init(&p, NULL), 0);
    assert_int_equal(proto_http_parse(&p, req, sizeof req - 1), 28);
    char *moved = s_dup(req, sizeof req - 1);
    assert_int_equal(proto_http_parse(&p, moved, sizeof req - 1), 28);
    assert_ptr_equal(p.path.ptr, moved + 4);
    assert_ptr_equal(proto_http_header_get(&p, 0).value.ptr, moved + 23);
    free(moved);
    /* After -1, always -1. */
    assert_int_equal(proto_http_parser_init(&p, NULL), 0);
    assert_int_equal(proto_http_parse(&p, REQ("GET / HTTP/1.1\r\nHost: h\r\nBad\0: x\r\n\r\n")), -1);
    assert_int_equal(proto_http_parse(&p, REQ("GET / HTTP/1.1\r\nHost: h\r\n\r\n")), -1);
    assert_int_equal(p.reason, PROTO_HTTP_ERR_FIELD_NAME);
}

/* ---------------------------------------------------------------- request line */

static void test_reject_method(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_METHOD, " GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_METHOD, "G(T / HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_METHOD, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");   /* TLS hello */
    REJECT(PROTO_HTTP_ERR_METHOD, "GET\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_METHOD, "\r\n GET / HTTP/1.1\r\n\r\n");
}

static void test_reject_target(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_TARGET, "GET  / HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /%4 HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /a\\..\\b HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /\"x\" HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET * HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET example.com:80 HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "CONNECT example.com HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "CONNECT http://example.com:443/ HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET http://h:99999/ HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET  HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TARGET, "GET /\r\n\r\n"); /* HTTP/0.9 simple request */
}

static void test_reject_version(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_VERSION, "GET / HTTP/1.1x\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION, "GET / http/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION, "GET / HTTP/1.10\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION, "GET / HTTP/11\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION, "GET / HTTP/1.1 \r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION, "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION, "GET / \r\n\r\n");
}

static void test_reject_version_unsupported(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_VERSION_UNSUPPORTED, "GET / HTTP/2.0\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION_UNSUPPORTED, "GET / HTTP/1.2\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION_UNSUPPORTED, "GET / HTTP/0.9\r\nHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_VERSION_UNSUPPORTED, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); /* h2 preface */
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_VERSION_UNSUPPORTED), 505);
}

/* ---------------------------------------------------------------- line endings, fields */

static void test_reject_bare_cr_lf(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_BARE_CR, "GET / HTTP/1.1\rHost: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_CR, "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_CR, "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_CR, "GET / HTTP/1.1\r\nHost: h\r\n\rX");
    REJECT(PROTO_HTTP_ERR_BARE_CR, "\rGET / HTTP/1.1\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_LF, "GET / HTTP/1.1\nHost: h\n\n");
    REJECT(PROTO_HTTP_ERR_BARE_LF, "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_LF, "GET / HTTP/1.1\r\nHost: h\r\n\n");
    REJECT(PROTO_HTTP_ERR_BARE_LF, "\nGET / HTTP/1.1\r\n\r\n");
}

static void test_reject_field_name(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, "GET / HTTP/1.1\r\nHost: h\r\nX(y): z\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, "GET / HTTP/1.1\r\nHost: h\r\n: empty\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, "GET / HTTP/1.1\r\nHost: h\r\nX\0: z\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, "GET / HTTP/1.1\r\nHost: h\r\nX\x80y: z\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, "GET / HTTP/1.1\r\nHost: h\r\nX/y: z\r\n\r\n");
}

static void test_reject_field_value(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_FIELD_VALUE, "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_VALUE, "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_VALUE, "GET / HTTP/1.1\r\nHost: h\r\nX: \x7f\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_VALUE, "GET / HTTP/1.1\r\nHost: h\r\nX: a\x1b[31m\r\n\r\n");
}

static void test_reject_space_before_colon(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_SPACE_BEFORE_COLON, "GET / HTTP/1.1\r\nHost : h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_SPACE_BEFORE_COLON,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_SPACE_BEFORE_COLON,
           "POST / HTTP/1.1\r\nHost: h\r\nContent Length: 3\r\n\r\nabc");
}

static void test_reject_obs_fold(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_OBS_FOLD, "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_OBS_FOLD, "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n");
    /* whitespace between the request line and the first field (RFC 9112 §2.2) */
    REJECT(PROTO_HTTP_ERR_OBS_FOLD, "GET / HTTP/1.1\r\n Host: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_OBS_FOLD,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n , chunked\r\n\r\n");
}

/* ---------------------------------------------------------------- limits */

/* A request whose head is exactly `head` octets, padded with one field. */
static size_t s_head_of(char *buf, size_t head)
{
    static const char start[] = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
    static const char end[] = "\r\n\r\n";
    size_t pad = head - (sizeof start - 1) - (sizeof end - 1);
    memcpy(buf, start, sizeof start - 1);
    memset(buf + sizeof start - 1, 'p', pad);
    memcpy(buf + sizeof start - 1 + pad, end, sizeof end - 1);
    return head;
}

static void test_head_limit(void **state)
{
    (void) state;
    static char buf[PROTO_HTTP_HEAD_MAX + 2];
    s_run_t *r = s_run(buf, s_head_of(buf, PROTO_HTTP_HEAD_MAX));
    assert_int_equal(r->head, PROTO_HTTP_HEAD_MAX);
    s_done(r);
    r = s_run(buf, s_head_of(buf, PROTO_HTTP_HEAD_MAX + 1));
    assert_int_equal(r->reason, PROTO_HTTP_ERR_HEAD_TOO_LARGE);
    assert_int_equal(proto_http_reason_status(r->reason), 431);
    s_done(r);

    /* A per-parser limit. */
    proto_http_limits_t small = PROTO_HTTP_LIMITS_DEFAULT;
    small.max_head = 64;
    small.max_target = 32;
    s_expect_reason_limits(buf, s_head_of(buf, 65), &small, 0, PROTO_HTTP_ERR_HEAD_TOO_LARGE);
    r = malloc(sizeof *r);
    assert_non_null(r);
    s_run_limits(buf, s_head_of(buf, 64), &small, 0, r);
    assert_int_equal(r->head, 64);
    s_done(r);

    /* An endless head is refused once max_head octets are in, not later. */
    proto_http_parser_t p;
    assert_int_equal(proto_http_parser_init(&p, &small), 0);
    s_head_of(buf, 1000);
    assert_int_equal(proto_http_parse(&p, buf, 63), -2);
    assert_int_equal(proto_http_parse(&p, buf, 64), -1);
    assert_int_equal(p.reason, PROTO_HTTP_ERR_HEAD_TOO_LARGE);
}

static size_t s_fields_of(char *buf, unsigned fields)
{
    size_t n = (size_t) sprintf(buf, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (unsigned i = 1; i < fields; i++)
        n += (size_t) sprintf(buf + n, "X-%u: %u\r\n", i, i);
    n += (size_t) sprintf(buf + n, "\r\n");
    return n;
}

static void test_field_count_limit(void **state)
{
    (void) state;
    static char buf[4096];
    s_run_t *r = s_run(buf, s_fields_of(buf, PROTO_HTTP_HEADERS_MAX));
    assert_true(r->head > 0);
    assert_int_equal(r->p.header_count, PROTO_HTTP_HEADERS_MAX);
    s_assert_slice(proto_http_header_get(&r->p, 99).name, "X-99");
    s_done(r);
}

static void test_field_count_over(void **state)
{
    (void) state;
    static char buf[4096];
    s_expect_reason(buf, s_fields_of(buf, PROTO_HTTP_HEADERS_MAX + 1),
                    PROTO_HTTP_ERR_TOO_MANY_FIELDS);
    proto_http_limits_t few = PROTO_HTTP_LIMITS_DEFAULT;
    few.max_headers = 2;
    s_expect_reason_limits(buf, s_fields_of(buf, 3), &few, 0, PROTO_HTTP_ERR_TOO_MANY_FIELDS);
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_TOO_MANY_FIELDS), 431);
}

static void test_limits_invalid(void **state)
{
    (void) state;
    proto_http_parser_t p;
    proto_http_limits_t l = PROTO_HTTP_LIMITS_DEFAULT;
    l.max_headers = PROTO_HTTP_HEADERS_MAX + 1;
    assert_int_equal(proto_http_parser_init(&p, &l), -1);
    assert_int_equal(p.reason, PROTO_HTTP_ERR_USAGE);
    assert_int_equal(proto_http_parse(&p, REQ("GET / HTTP/1.1\r\nHost: h\r\n\r\n")), -1);
    l = (proto_http_limits_t) PROTO_HTTP_LIMITS_DEFAULT;
    l.max_target = l.max_head + 1;
    assert_int_equal(proto_http_parser_init(&p, &l), -1);
    l = (proto_http_limits_t) PROTO_HTTP_LIMITS_DEFAULT;
    l.max_head = 0;
    assert_int_equal(proto_http_parser_init(&p, &l), -1);

    /* A body decoder for an unfinished head, and a shrinking buffer. */
    assert_int_equal(proto_http_parser_init(&p, NULL), 0);
    assert_int_equal(proto_http_parse(&p, REQ("GET / HT")), -2);
    proto_http_body_t b;
    assert_int_equal(proto_http_body_init(&b, &p, 10), -1);
    assert_int_equal(b.reason, PROTO_HTTP_ERR_USAGE);
    assert_int_equal(proto_http_parse(&p, REQ("GET")), -1);
    assert_int_equal(p.reason, PROTO_HTTP_ERR_USAGE);
}

static void test_body_limit(void **state)
{
    (void) state;
    /* Content-Length past the parser's limit: 413 at the head. */
    static char req[128];
    int n = snprintf(req, sizeof req, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %u\r\n\r\n",
                     PROTO_HTTP_BODY_MAX + 1);
    s_expect_reason(req, (size_t) n, PROTO_HTTP_ERR_BODY_TOO_LARGE);
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_BODY_TOO_LARGE), 413);
    /* 18446744073709551615 fits 64 bits: too large, not overflow */
    REJECT(PROTO_HTTP_ERR_BODY_TOO_LARGE,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n");

    /* A raised limit (attachments) takes what the default refuses. */
    proto_http_limits_t big = PROTO_HTTP_LIMITS_DEFAULT;
    big.max_body = PROTO_HTTP_BODY_ATTACHMENT_MAX;
    proto_http_parser_t p;
    assert_int_equal(proto_http_parser_init(&p, &big), 0);
    assert_int_equal(proto_http_parse(&p, req, (size_t) n), n);
    proto_http_body_t b;
    assert_int_equal(proto_http_body_init(&b, &p, PROTO_HTTP_BODY_ATTACHMENT_MAX), 0);
    /* …and the route's own bound applies at body_init. */
    assert_int_equal(proto_http_body_init(&b, &p, PROTO_HTTP_BODY_MAX), -1);
    assert_int_equal(b.reason, PROTO_HTTP_ERR_BODY_TOO_LARGE);

    /* Content-Length at the route's bound exactly, and one over. */
    s_run_t *r = malloc(sizeof *r);
    assert_non_null(r);
    s_run_limits(REQ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"), NULL, 5, r);
    assert_true(r->done);
    s_run_free(r);
    s_run_limits(REQ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"), NULL, 4, r);
    assert_int_equal(r->reason, PROTO_HTTP_ERR_BODY_TOO_LARGE);
    s_run_free(r);

    /* Chunked: refused at the chunk-size that would pass the bound. */
    s_run_limits(REQ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), NULL, 5, r);
    assert_true(r->done);
    assert_int_equal(r->body_len, 5);
    s_run_free(r);
    s_run_limits(REQ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), NULL, 5, r);
    assert_int_equal(r->reason, PROTO_HTTP_ERR_BODY_TOO_LARGE);
    assert_int_equal(r->body_len, 3); /* nothing of the refused chunk was handed back */
    s_run_free(r);
    s_run_limits(REQ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "ffffffffffffffff\r\n"), NULL, PROTO_HTTP_BODY_MAX, r);
    assert_int_equal(r->reason, PROTO_HTTP_ERR_BODY_TOO_LARGE);
    s_done(r);
}

static void test_body_default_max(void **state)
{
    (void) state;
    /* A body of exactly PROTO_HTTP_BODY_MAX octets, chunked in 64 KiB
     * chunks, passes; one octet more does not. */
    const size_t chunk = 64 * 1024, chunks = PROTO_HTTP_BODY_MAX / chunk;
    static const char head[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    size_t cap = sizeof head + (chunks + 1) * (chunk + 16) + 16;
    char *req = malloc(cap);
    assert_non_null(req);
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t) sprintf(req, "%s", head);
        for (size_t i = 0; i < chunks; i++) {
            n += (size_t) sprintf(req + n, "%zx\r\n", chunk);
            memset(req + n, 'a' + (int) (i % 26), chunk);
            n += chunk;
            n += (size_t) sprintf(req + n, "\r\n");
        }
        if (extra)
            n += (size_t) sprintf(req + n, "1\r\nz\r\n");
        n += (size_t) sprintf(req + n, "0\r\n\r\n");
        s_run_t *r = malloc(sizeof *r);
        assert_non_null(r);
        s_feed(req, n, NULL, PROTO_HTTP_BODY_MAX, S_WHOLE, r);
        if (extra) {
            assert_int_equal(r->reason, PROTO_HTTP_ERR_BODY_TOO_LARGE);
        } else {
            assert_true(r->done);
            assert_int_equal(r->body_len, PROTO_HTTP_BODY_MAX);
            assert_int_equal(r->used, n);
        }
        char want[sizeof r->digest];
        memcpy(want, r->digest, sizeof want);
        s_run_free(r);
        s_rng = 42;
        s_feed(req, n, NULL, PROTO_HTTP_BODY_MAX, S_RANDOM, r);
        assert_string_equal(r->digest, want);
        s_done(r);
    }
    free(req);
}

/* ---------------------------------------------------------------- Host */

static void test_reject_host(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_HOST_MISSING, "GET / HTTP/1.1\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_MISSING, "GET / HTTP/1.1\r\nHost-Name: h\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_MISSING, "GET http://h/ HTTP/1.1\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_DUPLICATE, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_DUPLICATE, "GET / HTTP/1.1\r\nhost: a\r\nHOST: a\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_DUPLICATE, "GET / HTTP/1.0\r\nHost: a\r\nHost:\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: []\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: :80\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: a%2\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_HOST_INVALID, "GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n");

    /* valid shapes: port, IPv6 literal, empty value, pct-encoded reg-name */
    const char *ok[] = { "h:0", "[::1]:42617", "[v1.x]", "", "ex%41mple.com", "a:" };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char req[128];
        int n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", ok[i]);
        s_run_t *r = s_accept(req, (size_t) n);
        s_assert_slice(r->p.host, ok[i]);
        s_done(r);
    }
}

/* ---------------------------------------------------------------- smuggling */

static void test_reject_content_length(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5a\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1.0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \"5\"\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_OVERFLOW,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_OVERFLOW,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999999\r\n\r\n");
    /* strict: an identical repeat is refused too (RFC 9110 §8.6 allows
     * folding it; kith does not) */
    REJECT(PROTO_HTTP_ERR_CL_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello");
    REJECT(PROTO_HTTP_ERR_CL_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello");
    REJECT(PROTO_HTTP_ERR_CL_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\nCONTENT-LENGTH: 005\r\n\r\nhello");
    REJECT(PROTO_HTTP_ERR_CL_CONFLICT,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!");
    REJECT(PROTO_HTTP_ERR_CL_CONFLICT,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,6\r\n\r\nhello!");
}

static void test_reject_cl_with_te(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_CL_WITH_TE,
           "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
           "0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_WITH_TE,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
           "0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CL_WITH_TE,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nContent-Length: 4\r\n\r\n");
    /* a lookalike field name is only a field */
    s_run_t *r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                              "Transfer-Encoding-X: chunked\r\nX-Content-Length: 9\r\n\r\nz"));
    assert_false(r->p.chunked);
    assert_int_equal(r->p.content_length, 1);
    s_done(r);
}

static void test_reject_transfer_encoding(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \t \r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;x=1\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chun ked\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_NOT_CHUNKED, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_NOT_CHUNKED, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_NOT_CHUNKED, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_NOT_CHUNKED, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_UNSUPPORTED, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_HTTP10, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_TE_UNSUPPORTED), 501);

    /* list syntax: OWS around elements is fine, case does not matter */
    s_run_t *r = s_accept(REQ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  CHUNKED \t\r\n\r\n"
                              "0\r\n\r\n"));
    assert_true(r->p.chunked);
    s_done(r);
}

/* The disguised shapes smuggling uses once a proxy sits in front: two
 * independent parsers refuse them, so kith does too (whole, octet by octet
 * and at random cuts, as every REJECT). */
static void test_reject_transfer_encoding_disguised(void **state)
{
    (void) state;
    /* an empty list element, anywhere */
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,,\r\n\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , CHUNKED ,\r\n\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, ,chunked\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_INVALID, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked , \t\r\n\r\n");
    /* a second line, whatever either says, and in either order */
    REJECT(PROTO_HTTP_ERR_TE_INVALID, /* the first offending line decides */
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_TE_DUPLICATE,
           "POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\nX: y\r\nTRANSFER-ENCODING: chunked\r\n\r\n");
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_TE_DUPLICATE), 400);
    assert_string_equal(proto_http_reason_str(PROTO_HTTP_ERR_TE_DUPLICATE), "transfer_encoding_duplicate");
}

/* ---------------------------------------------------------------- chunked framing */

#define CHUNKED_HEAD "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"

static void test_reject_chunk_size(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE, CHUNKED_HEAD "g\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE, CHUNKED_HEAD "\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE, CHUNKED_HEAD "-1\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE, CHUNKED_HEAD "0x5\r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE, CHUNKED_HEAD " 5\r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE, CHUNKED_HEAD "5\r\nhello\r\nz\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE_OVERFLOW, CHUNKED_HEAD "00000000000000001\r\na\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_SIZE_OVERFLOW, CHUNKED_HEAD "10000000000000000\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_LF, CHUNKED_HEAD "5\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_CR, CHUNKED_HEAD "5\rhello\r\n0\r\n\r\n");
}

static void test_reject_chunk_ext(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_CHUNK_EXT, CHUNKED_HEAD "5;\r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_EXT, CHUNKED_HEAD "5 \r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_EXT, CHUNKED_HEAD "5;a=\r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_EXT, CHUNKED_HEAD "5;a=b c\r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_EXT, CHUNKED_HEAD "5;a=\"open\r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_EXT, CHUNKED_HEAD "5;a\0\r\nhello\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_EXT, CHUNKED_HEAD "0;(\r\n\r\n");
}

static void test_chunk_ext_limit(void **state)
{
    (void) state;
    /* chunk-ext octets of a whole body add up to at most 4 KiB */
    static char req[2 * PROTO_HTTP_CHUNK_EXT_MAX + 256];
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t) sprintf(req, CHUNKED_HEAD);
        /* two chunks, each ";" + name: half the budget (plus one) each */
        for (int c = 0; c < 2; c++) {
            size_t ext = PROTO_HTTP_CHUNK_EXT_MAX / 2 + (size_t) (c == 1 ? extra : 0);
            n += (size_t) sprintf(req + n, "1;");
            memset(req + n, 'e', ext - 1);
            n += ext - 1;
            n += (size_t) sprintf(req + n, "\r\nx\r\n");
        }
        n += (size_t) sprintf(req + n, "0\r\n\r\n");
        s_run_t *r = s_run(req, n);
        if (extra) {
            assert_int_equal(r->reason, PROTO_HTTP_ERR_CHUNK_EXT_TOO_LARGE);
        } else {
            assert_true(r->done);
            assert_int_equal(r->body_len, 2);
        }
        s_done(r);
    }
}

static void test_reject_chunk_data_end(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_CHUNK_DATA_END, CHUNKED_HEAD "5\r\nhelloX\r\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_DATA_END, CHUNKED_HEAD "5\r\nhello0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_CHUNK_DATA_END, CHUNKED_HEAD "3\r\nhello\r\n0\r\n\r\n");
    /* a CR that is chunk-data is not a line ending */
    REJECT(PROTO_HTTP_ERR_CHUNK_DATA_END, CHUNKED_HEAD "1\r\n\r0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_CR, CHUNKED_HEAD "1\r\nx\rx\n0\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_LF, CHUNKED_HEAD "1\r\nx\n0\r\n\r\n");
}

static void test_reject_trailers(void **state)
{
    (void) state;
    REJECT(PROTO_HTTP_ERR_OBS_FOLD, CHUNKED_HEAD "0\r\nX: a\r\n b\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, CHUNKED_HEAD "0\r\nX(: a\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_NAME, CHUNKED_HEAD "0\r\nnocolon\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_SPACE_BEFORE_COLON, CHUNKED_HEAD "0\r\nX : a\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_FIELD_VALUE, CHUNKED_HEAD "0\r\nX: a\x01\r\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_LF, CHUNKED_HEAD "0\r\nX: a\n\r\n");
    REJECT(PROTO_HTTP_ERR_BARE_CR, CHUNKED_HEAD "0\r\n\rX");

    /* the trailer section is bounded by the head limit */
    proto_http_limits_t small = PROTO_HTTP_LIMITS_DEFAULT;
    small.max_head = 100;
    small.max_target = 100;
    static char req[256];
    s_run_t *r = malloc(sizeof *r);
    assert_non_null(r);
    for (size_t extra = 0; extra <= 1; extra++) {
        /* "X: " value CRLF, 100 octets of trailer fields, then one more */
        size_t n = (size_t) sprintf(req, CHUNKED_HEAD "0\r\nX: ");
        memset(req + n, 'v', 95 + extra);
        n += 95 + extra;
        n += (size_t) sprintf(req + n, "\r\n\r\n");
        s_run_limits(req, n, &small, 10, r);
        if (extra == 0)
            assert_true(r->done);
        else
            break;
        s_run_free(r);
    }
    assert_int_equal(r->reason, PROTO_HTTP_ERR_TRAILER_TOO_LARGE);
    s_done(r);
}

/* ---------------------------------------------------------------- reasons */

static void test_reason_table(void **state)
{
    (void) state;
    static const int allowed[] = { 200, 400, 413, 414, 431, 500, 501, 505 };
    for (int i = 0; i < PROTO_HTTP_REASON_COUNT; i++) {
        const char *name = proto_http_reason_str((proto_http_reason_t) i);
        assert_non_null(name);
        assert_string_not_equal(name, "unknown");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(name, proto_http_reason_str((proto_http_reason_t) j));
        int status = proto_http_reason_status((proto_http_reason_t) i);
        bool ok = false;
        for (size_t k = 0; k < sizeof allowed / sizeof allowed[0]; k++)
            ok |= status == allowed[k];
        assert_true(ok);
    }
    assert_string_equal(proto_http_reason_str(PROTO_HTTP_REASON_COUNT), "unknown");
    assert_string_equal(proto_http_reason_str(PROTO_HTTP_ERR_CL_CONFLICT), "content_length_conflict");
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_TARGET_TOO_LONG), 414);
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_TRAILER_TOO_LARGE), 431);
    assert_int_equal(proto_http_reason_status(PROTO_HTTP_ERR_BARE_CR), 400);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_curl),
        cmocka_unit_test(test_query_split),
        cmocka_unit_test(test_field_values),
        cmocka_unit_test(test_leading_empty_lines),
        cmocka_unit_test(test_http10),
        cmocka_unit_test(test_target_forms),
        cmocka_unit_test(test_target_max),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_websocket_upgrade),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_content_length_body),
        cmocka_unit_test(test_chunked_body),
        cmocka_unit_test(test_chunk_size_max_digits),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_reparse_after_done),
        cmocka_unit_test(test_reject_method),
        cmocka_unit_test(test_reject_target),
        cmocka_unit_test(test_reject_version),
        cmocka_unit_test(test_reject_version_unsupported),
        cmocka_unit_test(test_reject_bare_cr_lf),
        cmocka_unit_test(test_reject_field_name),
        cmocka_unit_test(test_reject_field_value),
        cmocka_unit_test(test_reject_space_before_colon),
        cmocka_unit_test(test_reject_obs_fold),
        cmocka_unit_test(test_head_limit),
        cmocka_unit_test(test_field_count_limit),
        cmocka_unit_test(test_field_count_over),
        cmocka_unit_test(test_limits_invalid),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_body_default_max),
        cmocka_unit_test(test_reject_host),
        cmocka_unit_test(test_reject_content_length),
        cmocka_unit_test(test_reject_cl_with_te),
        cmocka_unit_test(test_reject_transfer_encoding),
        cmocka_unit_test(test_reject_transfer_encoding_disguised),
        cmocka_unit_test(test_reject_chunk_size),
        cmocka_unit_test(test_reject_chunk_ext),
        cmocka_unit_test(test_chunk_ext_limit),
        cmocka_unit_test(test_reject_chunk_data_end),
        cmocka_unit_test(test_reject_trailers),
        cmocka_unit_test(test_reason_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
