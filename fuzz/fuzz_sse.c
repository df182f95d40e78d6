/* fuzz/fuzz_sse.c — the SSE reader fed whole, a byte at a time and in
 * input-chosen chunks must dispatch the same events at the same stream
 * offsets and fail the same way; the piece-level parser must agree with
 * itself likewise; and every event it dispatches must survive a trip
 * through the encoder and back.
 *
 * Input: byte 0 picks the line limit, byte 1 the data buffer size, byte 2
 * seeds the chunking; the rest is the stream. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/split.h"
#include "proto/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A private, exactly-sized copy so ASan catches reads past a chunk. */
static uint8_t *s_copy(const uint8_t *in, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    if (!c)
        abort();
    memcpy(c, in, n);
    return c;
}

/* Encode an event and read it back: the same type, id and data. */
static void s_roundtrip(const proto_sse_event_t *ev, size_t line_max)
{
    proto_sse_message_t m = {
        .id = ev->id, .id_len = ev->id_len,
        .type = ev->type, .type_len = ev->type_len,
        .data = ev->data, .data_len = ev->data_len,
        .retry_ms = -1,
    };
    proto_sse_reason_t why;
    ssize_t need = proto_sse_encoded_len(&m, &why);
    if (need < 0) {
        /* Only a type with NUL can come out of the reader and not go back. */
        if (why != PROTO_SSE_BAD_TYPE || !memchr(ev->type, 0, ev->type_len))
            abort();
        return;
    }
    uint8_t *wire = malloc((size_t) need);
    uint8_t *data = malloc(ev->data_len ? ev->data_len : 1);
    if (!wire || !data)
        abort();
    if (proto_sse_encode(wire, (size_t) need, &m, NULL) != need)
        abort();
    proto_sse_reader_t r;
    proto_sse_event_t back;
    /* The encoder adds "data: " (6) and LF to a line. */
    size_t lmax = line_max + 8 > PROTO_SSE_LINE_MAX ? PROTO_SSE_LINE_MAX : line_max + 8;
    if (proto_sse_reader_init(&r, data, ev->data_len, lmax) != 0)
        abort();
    if (proto_sse_reader_next(&r, wire, (size_t) need, &back) != need)
        abort();
    if (back.type_len != ev->type_len || memcmp(back.type, ev->type, ev->type_len) != 0 ||
        back.id_len != ev->id_len || memcmp(back.id, ev->id, ev->id_len) != 0 ||
        back.data_len != ev->data_len || memcmp(back.data, ev->data, ev->data_len) != 0)
        abort();
    free(data);
    free(wire);
}

/* Run the reader over `in` in chunks chosen by `mode`; hash what it says. */
static uint64_t s_read(const uint8_t *in, size_t len, size_t line_max, size_t data_cap,
                       size_t mode, uint32_t seed, bool roundtrip)
{
    uint64_t h = 0xcbf29ce484222325ull;
    uint8_t *data = data_cap ? malloc(data_cap) : NULL;
    proto_sse_reader_t r;
    if (proto_sse_reader_init(&r, data, data_cap, line_max) != 0)
        abort();
    size_t from = 0;
    while (from < len) {
        size_t n = fuzz_chunk(&seed, mode, 97);
        if (n == 0 || n > len - from)
            n = len - from;
        uint8_t *chunk = s_copy(in + from, n);
        size_t off = 0;
        while (off < n) {
            proto_sse_event_t ev;
            ssize_t got = proto_sse_reader_next(&r, chunk + off, n - off, &ev);
            if (got == -2)
                break;
            if (got == -1) {
                fuzz_hash_u64(&h, 0xE0 + proto_sse_reader_reason(&r));
                free(chunk);
                free(data);
                return h;
            }
            if (got <= 0 || (size_t) got > n - off)
                abort();
            off += (size_t) got;
            fuzz_hash_u64(&h, from + off); /* where in the stream it was dispatched */
            fuzz_hash(&h, ev.type, ev.type_len);
            fuzz_hash_u64(&h, ev.type_len);
            fuzz_hash(&h, ev.id, ev.id_len);
            fuzz_hash_u64(&h, ev.id_len);
            fuzz_hash(&h, ev.data, ev.data_len);
            fuzz_hash_u64(&h, ev.data_len);
            fuzz_hash_u64(&h, (uint64_t) ev.retry_ms);
            if (roundtrip)
                s_roundtrip(&ev, line_max);
        }
        free(chunk);
        from += n;
    }
    free(data);
    return h;
}

/* Piece-level state: a line's pieces must be well-bracketed. */
typedef struct {
    uint64_t h;  /* hash of complete lines */
    bool open;   /* inside a line's pieces */
} pieces_t;

static int s_on_piece(void *user, const proto_sse_piece_t *pc)
{
    pieces_t *ps = user;
    if (pc->first == ps->open || (pc->len && !pc->value))
        abort();
    if (pc->first)
        fuzz_hash_u64(&ps->h, 0xF0 + pc->field);
    fuzz_hash(&ps->h, pc->value, pc->len);
    ps->open = !pc->last;
    if (pc->last)
        fuzz_hash_u64(&ps->h, ((uint64_t) pc->ignore << 32) | pc->retry_ms);
    return 0;
}

static uint64_t s_parse(const uint8_t *in, size_t len, size_t line_max, size_t mode, uint32_t seed)
{
    pieces_t ps = {.h = 0xcbf29ce484222325ull, .open = false};
    proto_sse_parser_t sp;
    if (proto_sse_parser_init(&sp, line_max) != 0)
        abort();
    size_t from = 0;
    while (from < len) {
        size_t n = fuzz_chunk(&seed, mode, 97);
        if (n == 0 || n > len - from)
            n = len - from;
        uint8_t *chunk = s_copy(in + from, n);
        size_t off = 0;
        while (off < n) {
            ssize_t got = proto_sse_parse(&sp, chunk + off, n - off, s_on_piece, &ps);
            if (got == -2)
                break;
            if (got == -1) {
                fuzz_hash_u64(&ps.h, 0xE0 + proto_sse_parser_reason(&sp));
                free(chunk);
                return ps.h;
            }
            off += (size_t) got;
            fuzz_hash_u64(&ps.h, from + off); /* a blank line ended here */
        }
        free(chunk);
        from += n;
    }
    return ps.h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t line_max = 1 + (size_t) data[0] * 8;
    size_t data_cap = (size_t) data[1] * 4;
    uint32_t seed = 0x9e3779b9u ^ data[2];
    const uint8_t *in = data + 3;
    size_t len = size - 3;

    uint64_t whole = s_read(in, len, line_max, data_cap, 0, seed, true);
    if (s_read(in, len, line_max, data_cap, 1, seed, false) != whole)
        abort();
    if (s_read(in, len, line_max, data_cap, 2, seed, false) != whole)
        abort();

    uint64_t pwhole = s_parse(in, len, line_max, 0, seed);
    if (s_parse(in, len, line_max, 1, seed) != pwhole)
        abort();
    return 0;
}
