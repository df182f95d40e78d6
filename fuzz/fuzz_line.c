/* fuzz/fuzz_line.c — the line splitter fed whole, a byte at a time and in
 * input-chosen chunks must return the same items at the same stream
 * offsets, and they must match a plain reference splitter written from the
 * rules in line.h (split at LF, drop one CR before it, lines over the limit
 * become one TOO_LONG notice, an unterminated tail is never returned but is
 * still noticed if it is already too long).
 *
 * Input: byte 0 picks the limit, byte 1 seeds the chunking; the rest is the
 * stream. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/split.h"
#include "proto/line.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Items hashed without offsets (`content`) and with them (`placed`). */
typedef struct {
    uint64_t content;
    uint64_t placed;
} hashes_t;

static void s_item(hashes_t *hs, proto_line_kind_t kind, const uint8_t *at, size_t len)
{
    fuzz_hash_u64(&hs->content, kind);
    fuzz_hash_u64(&hs->content, len);
    fuzz_hash(&hs->content, at, len);
}

static hashes_t s_read(const uint8_t *in, size_t len, size_t max, size_t mode, uint32_t seed)
{
    hashes_t hs = {0xcbf29ce484222325ull, 0xcbf29ce484222325ull};
    uint8_t *acc = malloc(max);
    proto_line_reader_t r;
    if (!acc || proto_line_reader_init(&r, acc, max, max) != 0)
        abort();
    size_t from = 0;
    while (from < len) {
        size_t n = fuzz_chunk(&seed, mode, 61);
        if (n == 0 || n > len - from)
            n = len - from;
        uint8_t *chunk = malloc(n);
        if (!chunk)
            abort();
        memcpy(chunk, in + from, n);
        size_t off = 0;
        while (off < n) {
            proto_line_t line;
            ssize_t got = proto_line_read(&r, chunk + off, n - off, &line);
            if (got == -2)
                break;
            if (got <= 0 || (size_t) got > n - off || line.len > max)
                abort();
            if (line.kind == PROTO_LINE_TEXT) {
                bool slice = line.at >= chunk && line.at + line.len <= chunk + n;
                if (!slice && line.at != acc)
                    abort();
                if (memchr(line.at, '\n', line.len))
                    abort();
            }
            off += (size_t) got;
            s_item(&hs, line.kind, line.at, line.len);
            fuzz_hash_u64(&hs.placed, from + off);
            fuzz_hash_u64(&hs.placed, line.kind);
            fuzz_hash(&hs.placed, line.at, line.len);
        }
        free(chunk);
        from += n;
    }
    free(acc);
    return hs;
}

/* The rules, written the obvious way over the whole input. */
static uint64_t s_reference(const uint8_t *in, size_t len, size_t max)
{
    hashes_t hs = {0xcbf29ce484222325ull, 0};
    size_t start = 0;
    while (start < len) {
        const uint8_t *lf = memchr(in + start, '\n', len - start);
        if (!lf) {
            /* Unterminated: a trailing CR is not yet known to be content. */
            size_t n = len - start;
            if (n && in[len - 1] == '\r')
                n--;
            if (n > max)
                s_item(&hs, PROTO_LINE_TOO_LONG, NULL, 0);
            break;
        }
        size_t end = (size_t) (lf - in);
        size_t n = end - start;
        if (n && in[end - 1] == '\r')
            n--;
        if (n > max)
            s_item(&hs, PROTO_LINE_TOO_LONG, NULL, 0);
        else
            s_item(&hs, PROTO_LINE_TEXT, in + start, n);
        start = end + 1;
    }
    return hs.content;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max = data[0] == 0xff ? PROTO_LINE_MAX : 1 + (size_t) data[0] % 64;
    uint32_t seed = 0x9e3779b9u ^ data[1];
    const uint8_t *in = data + 2;
    size_t len = size - 2;

    hashes_t whole = s_read(in, len, max, 0, seed);
    hashes_t bytes = s_read(in, len, max, 1, seed);
    hashes_t chunks = s_read(in, len, max, 2, seed);
    if (bytes.placed != whole.placed || chunks.placed != whole.placed)
        abort();
    if (whole.content != s_reference(in, len, max))
        abort();
    return 0;
}
