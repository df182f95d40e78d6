/* fuzz/fuzz_ws.c — the WebSocket frame parser (proto/ws.rl). The first input
 * byte picks the mode (server or client) and the message limit, the second
 * seeds the split; the rest is the byte stream. The stream is parsed whole,
 * in random pieces (each in its own exactly-sized buffer, so a read past a
 * piece trips ASan) and, when short, byte by byte: all must produce the same
 * frames and the same verdict. Every event is checked against the promises
 * of proto_ws_event_t; any mismatch aborts. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/utf8.h"
#include "proto/ws.h"

/* Inputs up to this size are also fed one byte at a time. */
#define FUZZ_BYTEWISE_MAX 4096

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* A digest of what a parse produced, normalised so any split gives the same:
 * completed frames are hashed in order; the open frame's bytes are kept apart
 * and dropped on error (a split may deliver part of a slice the whole
 * parse refuses at once). */
typedef struct {
    uint64_t done;              /* hash over completed frames */
    uint64_t open;              /* hash of the open data frame so far */
    bool frame_open;            /* a data frame has begun and not ended */
    bool message_open;          /* a data message has begun and not ended */
    proto_ws_event_t head;      /* first slice of the open frame */
    uint64_t got;               /* payload bytes of the open frame so far */
    proto_utf8_t text;          /* re-validation of the open text message's slices */
    proto_ws_reason_t reason;   /* the verdict */
} digest_t;

static uint64_t s_mix(uint64_t h, const void *data, size_t n)
{
    const uint8_t *d = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 0x100000001b3ULL;
    return h;
}

static uint64_t s_mix_u64(uint64_t h, uint64_t v)
{
    return s_mix(h, &v, sizeof v);
}

static void s_event(digest_t *d, const proto_ws_event_t *ev)
{
    if (ev->opcode == PROTO_WS_OP_TEXT || ev->opcode == PROTO_WS_OP_BINARY) {
        CHECK(ev->frame_begin == !d->frame_open);
        if (ev->frame_begin) {
            CHECK(ev->message_begin == !d->message_open);
            d->head = *ev;
            d->frame_open = d->message_open = true;
            d->got = 0;
            d->open = s_mix_u64(s_mix_u64(s_mix_u64(d->done, ev->opcode), ev->message_begin), ev->fin);
            if (ev->message_begin)
                proto_utf8_init(&d->text);
        } else {
            CHECK(ev->opcode == d->head.opcode && ev->fin == d->head.fin && !ev->message_begin);
            CHECK(ev->frame_len == d->head.frame_len);
        }
        d->got += ev->len;
        CHECK(d->got <= ev->frame_len);
        CHECK(ev->frame_end == (d->got == ev->frame_len));
        CHECK(ev->message_end == (ev->frame_end && ev->fin));
        d->open = s_mix(d->open, ev->data, ev->len);
        if (ev->opcode == PROTO_WS_OP_TEXT) {
            CHECK(proto_utf8_feed(&d->text, ev->data, ev->len) == 0);
            CHECK(!ev->message_end || proto_utf8_complete(&d->text));
        }
        if (ev->frame_end) {
            d->done = s_mix_u64(d->open, ev->frame_len);
            d->frame_open = false;
            d->message_open = !ev->message_end;
        }
        return;
    }
    CHECK(ev->opcode == PROTO_WS_OP_PING || ev->opcode == PROTO_WS_OP_PONG || ev->opcode == PROTO_WS_OP_CLOSE);
    CHECK(!d->frame_open);
    CHECK(ev->fin && ev->frame_begin && ev->frame_end && ev->message_begin && ev->message_end);
    CHECK(ev->frame_len <= PROTO_WS_CONTROL_MAX && ev->len <= ev->frame_len);
    if (ev->opcode == PROTO_WS_OP_CLOSE) {
        CHECK(ev->close_code == PROTO_WS_CLOSE_NO_STATUS || proto_ws_close_code_valid(ev->close_code));
        CHECK(proto_utf8_valid(ev->data, ev->len));
    } else {
        CHECK(ev->len == ev->frame_len);
    }
    d->done = s_mix_u64(s_mix_u64(s_mix(s_mix_u64(d->done, ev->opcode), ev->data, ev->len), ev->close_code), ev->len);
}

static uint64_t s_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Parses in[0..n) in pieces: `piece` 0 means whole, 1 byte by byte, other
 * values seed random piece sizes. */
static void s_parse(digest_t *d, proto_ws_mode_t mode, uint64_t limit, const uint8_t *in, size_t n,
                    uint64_t piece)
{
    memset(d, 0, sizeof *d);
    d->done = 0xcbf29ce484222325ULL;
    proto_ws_parser_t *p = proto_ws_parser_new(mode);
    CHECK(p);
    proto_ws_parser_set_limit(p, limit);
    uint64_t rng = piece * 0x9E3779B97F4A7C15ULL + 1;
    size_t done = 0;
    while (done < n && d->reason == PROTO_WS_OK) {
        size_t len = n - done;
        if (piece == 1) {
            len = 1;
        } else if (piece > 1) {
            size_t max = (s_rand(&rng) & 7) == 0 ? 1024 : 16;
            size_t want = 1 + (size_t) (s_rand(&rng) % max);
            len = want < len ? want : len;
        }
        uint8_t *chunk = malloc(len);
        CHECK(chunk);
        memcpy(chunk, in + done, len);
        size_t off = 0;
        while (off < len) {
            proto_ws_event_t ev;
            ssize_t r = proto_ws_parse(p, chunk + off, len - off, &ev);
            if (r == -2)
                break;
            if (r == -1) {
                d->reason = proto_ws_parser_reason(p);
                CHECK(d->reason != PROTO_WS_OK);
                break;
            }
            CHECK(r > 0 && (size_t) r <= len - off);
            /* Slices lie in the bytes consumed; only a gathered control frame does not. */
            uintptr_t at = (uintptr_t) ev.data, lo = (uintptr_t) (chunk + off);
            CHECK((at >= lo && at + ev.len <= lo + (size_t) r) || ev.opcode >= PROTO_WS_OP_CLOSE);
            s_event(d, &ev);
            off += (size_t) r;
        }
        free(chunk);
        done += len;
    }
    if (d->reason == PROTO_WS_OK && d->frame_open)
        d->done = d->open;
    proto_ws_parser_destroy(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    proto_ws_mode_t mode = data[0] & 1 ? PROTO_WS_MODE_CLIENT : PROTO_WS_MODE_SERVER;
    unsigned shift = (data[0] >> 1) & 0x1F;
    uint64_t limit = shift >= 24 ? PROTO_WS_MESSAGE_MAX_DEFAULT : (uint64_t) 1 << shift;
    uint64_t seed = (uint64_t) data[1] + 2;
    const uint8_t *in = data + 2;
    size_t n = size - 2;

    digest_t whole, pieces, bytes;
    s_parse(&whole, mode, limit, in, n, 0);
    s_parse(&pieces, mode, limit, in, n, seed);
    CHECK(whole.reason == pieces.reason && whole.done == pieces.done);
    if (n <= FUZZ_BYTEWISE_MAX) {
        s_parse(&bytes, mode, limit, in, n, 1);
        CHECK(whole.reason == bytes.reason && whole.done == bytes.done);
    }
    return 0;
}
