/* fuzz/fuzz_frame.c — the length-prefixed frame reader fed whole, a byte
 * at a time and in input-chosen chunks must return the same frames at the
 * same stream offsets and fail the same way; a slice must lie inside the
 * read it came from, a copy inside the storage asked for; and each frame's
 * header must be what the encoder writes for its length.
 *
 * Input: byte 0 picks the size limit, byte 1 seeds the chunking; the rest
 * is the stream. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/split.h"
#include "proto/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Storage: one heap block, grown to exactly the room asked for (realloc
 * keeps the bytes received so far), freed when the run ends. */
typedef struct {
    uint8_t *block; /* the block handed out */
    size_t asked;   /* the room asked for last */
} storage_t;

static uint8_t *s_storage(void *user, size_t need, size_t len, size_t *cap)
{
    storage_t *st = user;
    if (need == 0 || need > len)
        abort();
    uint8_t *b = realloc(st->block, need);
    if (!b)
        abort();
    st->block = b;
    st->asked = need;
    *cap = need;
    return st->block;
}

static uint64_t s_read(const uint8_t *in, size_t len, uint32_t max, size_t mode, uint32_t seed)
{
    uint64_t h = 0xcbf29ce484222325ull;
    storage_t st = {0};
    proto_frame_reader_t r;
    if (proto_frame_reader_init(&r, max, s_storage, &st) != 0)
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
            proto_frame_t f;
            ssize_t got = proto_frame_read(&r, chunk + off, n - off, &f);
            if (got == -2)
                break;
            if (got == -1) {
                fuzz_hash_u64(&h, 0xE0 + proto_frame_reader_reason(&r));
                fuzz_hash_u64(&h, proto_frame_reader_declared(&r));
                if (proto_frame_reader_reason(&r) == PROTO_FRAME_OVERSIZE &&
                    proto_frame_reader_declared(&r) <= max)
                    abort();
                free(chunk);
                free(st.block);
                return h;
            }
            if (got <= 0 || (size_t) got > n - off || f.len > max)
                abort();
            if (f.copied) {
                if (f.payload != st.block || st.asked != f.len)
                    abort();
            } else if (f.payload < chunk + off || f.payload + f.len > chunk + off + (size_t) got) {
                abort();
            }
            off += (size_t) got;
            size_t end = from + off;
            uint8_t hdr[PROTO_FRAME_HEADER_LEN];
            if (proto_frame_header_encode(f.len, hdr) != 0 ||
                memcmp(in + end - f.len - PROTO_FRAME_HEADER_LEN, hdr, sizeof hdr) != 0 ||
                (f.len && memcmp(in + end - f.len, f.payload, f.len) != 0))
                abort();
            fuzz_hash_u64(&h, end);
            fuzz_hash_u64(&h, f.len);
            fuzz_hash(&h, f.payload, f.len);
        }
        free(chunk);
        from += n;
    }
    free(st.block);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t max = data[0] == 0xff ? PROTO_FRAME_MAX : 1 + (uint32_t) data[0] * 3;
    uint32_t seed = 0x9e3779b9u ^ data[1];
    const uint8_t *in = data + 2;
    size_t len = size - 2;

    uint64_t whole = s_read(in, len, max, 0, seed);
    if (s_read(in, len, max, 1, seed) != whole)
        abort();
    if (s_read(in, len, max, 2, seed) != whole)
        abort();
    return 0;
}
