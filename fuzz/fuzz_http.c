/* fuzz/fuzz_http.c — the HTTP/1.1 request parser and body decoder on
 * arbitrary octets: every request of the input (pipelined) is parsed once
 * whole and once in fragments, under the default limits and under tight
 * ones; both feeds must agree on everything, and the results must respect
 * the limits and point inside the input. Any disagreement aborts. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http.h"

/* Requests parsed from one input, so a long input stays fast. */
#define FUZZ_HTTP_REQUESTS_MAX 16

/* Where one feed of one request ended up. */
typedef struct {
    ssize_t head;               /* last proto_http_parse() result */
    proto_http_reason_t reason; /* head or body refusal */
    uint64_t facts;             /* hash of every head result, as offsets into the input */
    uint64_t body;              /* hash of the decoded body */
    uint64_t body_len;          /* its octets */
    size_t used;                /* input octets the request took (when it completed) */
    bool done;                  /* the body completed */
} s_outcome_t;

static uint64_t s_mix(uint64_t h, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        h = (h ^ ((v >> (8 * i)) & 0xff)) * 1099511628211ull;
    return h;
}

/* Hash a slice as (offset, length) in `base`, checking it lies in the head. */
static uint64_t s_mix_slice(uint64_t h, proto_http_slice_t s, const char *base, size_t head)
{
    if (!s.ptr)
        return s_mix(h, UINT64_MAX);
    uintptr_t at = (uintptr_t) s.ptr, start = (uintptr_t) base;
    if (at < start || s.len > head || at - start > head - s.len)
        abort();
    return s_mix(s_mix(h, at - start), s.len);
}

static bool s_outside(proto_http_slice_t s, const char *base, size_t head)
{
    uintptr_t at = (uintptr_t) s.ptr, start = (uintptr_t) base;
    return at < start || at >= start + head;
}

static uint64_t s_facts(const proto_http_parser_t *p, const char *base, size_t head)
{
    uint64_t h = 1469598103934665603ull;
    h = s_mix_slice(h, p->method, base, head);
    h = s_mix_slice(h, p->target, base, head);
    if (p->path.ptr && s_outside(p->path, base, head)) {
        /* only the "/" standing for an absolute-form's empty path */
        if (p->form != PROTO_HTTP_FORM_ABSOLUTE || p->path.len != 1 || p->path.ptr[0] != '/')
            abort();
        h = s_mix(h, UINT64_MAX - 1);
    } else {
        h = s_mix_slice(h, p->path, base, head);
    }
    h = s_mix_slice(h, p->query, base, head);
    h = s_mix_slice(h, p->version, base, head);
    h = s_mix_slice(h, p->host, base, head);
    h = s_mix(h, (uint64_t) p->form);
    h = s_mix(h, (uint64_t) p->version_minor);
    h = s_mix(h, p->content_length);
    h = s_mix(h, (uint64_t) p->has_content_length << 5 | (uint64_t) p->chunked << 4 |
                     (uint64_t) p->keep_alive << 3 | (uint64_t) p->upgrade << 2 |
                     (uint64_t) p->websocket << 1 | (uint64_t) p->expect_continue);
    h = s_mix(h, p->header_count);
    for (size_t i = 0; i < p->header_count; i++) {
        proto_http_header_t f = proto_http_header_get(p, i);
        h = s_mix_slice(h, f.name, base, head);
        h = s_mix_slice(h, f.value, base, head);
    }
    return h;
}

static bool s_same(const s_outcome_t *a, const s_outcome_t *b)
{
    return a->head == b->head && a->reason == b->reason && a->facts == b->facts &&
           a->body == b->body && a->body_len == b->body_len && a->used == b->used &&
           a->done == b->done;
}

static uint64_t s_rng;

static size_t s_step(bool fragment, size_t left)
{
    if (!fragment)
        return left;
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    size_t n = 1 + (size_t) (s_rng % ((s_rng >> 40) % 4 == 0 ? 1024 : 16));
    return n < left ? n : left;
}

/* Parse one request from in[0..len), whole or in fragments: the head by
 * growing prefixes, each on a fresh exact-size copy, the body in pieces. */
static void s_feed(const char *in, size_t len, const proto_http_limits_t *limits, bool fragment,
                   s_outcome_t *out)
{
    memset(out, 0, sizeof *out);
    proto_http_parser_t p;
    if (proto_http_parser_init(&p, limits) != 0)
        abort();

    char *copy = NULL;
    size_t have = 0;
    out->head = -2;
    while (out->head == -2 && have < len) {
        have += s_step(fragment, len - have);
        free(copy);
        copy = malloc(have);
        if (!copy)
            abort();
        memcpy(copy, in, have);
        out->head = proto_http_parse(&p, copy, have);
    }
    if (out->head == -1) {
        out->reason = p.reason;
        if (p.reason <= PROTO_HTTP_OK || p.reason >= PROTO_HTTP_REASON_COUNT ||
            proto_http_reason_status(p.reason) < 400)
            abort();
    }
    if (out->head <= 0) {
        free(copy);
        return;
    }

    size_t head = (size_t) out->head;
    if (head > have || head > limits->max_head || p.header_count > limits->max_headers ||
        p.version_minor > 1 || (p.chunked && p.has_content_length) ||
        p.target.len > limits->max_target || p.reason != PROTO_HTTP_OK)
        abort();
    out->facts = s_facts(&p, copy, head);
    free(copy);

    proto_http_body_t b;
    if (proto_http_body_init(&b, &p, limits->max_body) != 0) {
        out->reason = b.reason;
        return;
    }
    uint64_t hash = 1469598103934665603ull;
    size_t off = head;
    while (!proto_http_body_done(&b) && off < len) {
        size_t n = s_step(fragment, len - off);
        char *piece = malloc(n);
        if (!piece)
            abort();
        memcpy(piece, in + off, n);
        size_t at = 0;
        while (at < n && !proto_http_body_done(&b)) {
            proto_http_slice_t data;
            ssize_t got = proto_http_body_parse(&b, piece + at, n - at, &data);
            if (got < 0) {
                out->reason = b.reason;
                break;
            }
            if (got == 0 && !proto_http_body_done(&b))
                abort(); /* no progress */
            if (data.ptr) {
                if (data.ptr < piece + at || data.len > (size_t) got ||
                    (size_t) (data.ptr - (piece + at)) > (size_t) got - data.len)
                    abort();
                for (size_t i = 0; i < data.len; i++)
                    hash = (hash ^ (unsigned char) data.ptr[i]) * 1099511628211ull;
                out->body_len += data.len;
            }
            at += (size_t) got;
        }
        free(piece);
        off += at;
        if (out->reason != PROTO_HTTP_OK)
            break;
    }
    out->body = hash;
    out->done = proto_http_body_done(&b);
    out->used = out->reason == PROTO_HTTP_OK ? off : 0;
    if (out->body_len > limits->max_body ||
        (out->done && p.has_content_length && out->body_len != p.content_length))
        abort();
}

static void s_run(const uint8_t *data, size_t size, const proto_http_limits_t *limits)
{
    const char *in = (const char *) data;
    size_t off = 0;
    for (int i = 0; i < FUZZ_HTTP_REQUESTS_MAX && off < size; i++) {
        s_outcome_t whole, parts;
        s_feed(in + off, size - off, limits, false, &whole);
        s_feed(in + off, size - off, limits, true, &parts);
        if (!s_same(&whole, &parts))
            abort();
        if (!whole.done || whole.used == 0)
            return;
        off += whole.used;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const proto_http_limits_t defaults = PROTO_HTTP_LIMITS_DEFAULT;
    static const proto_http_limits_t tight = { 256, 8, 64, 64 };
    /* The cuts depend on the input only, so a crash replays. */
    s_rng = 0x9e3779b97f4a7c15ull ^ size;
    for (size_t i = 0; i < size && i < 64; i++)
        s_rng = (s_rng ^ data[i]) * 1099511628211ull;
    if (!s_rng)
        s_rng = 1;
    s_run(data, size, &defaults);
    s_run(data, size, &tight);
    return 0;
}
