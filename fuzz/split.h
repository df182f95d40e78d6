/* fuzz/split.h — what the stream-parser harnesses share: a digest of what a
 * parser produced (FNV-1a), and a sequence of chunk sizes so one input can be
 * fed whole, byte by byte, or in pseudo-random pieces; the digests of the
 * three feeds must agree. Header-only: each harness is its own program. */
#ifndef KITH_FUZZ_SPLIT_H
#define KITH_FUZZ_SPLIT_H

#include <stddef.h>
#include <stdint.h>

static inline void fuzz_hash(uint64_t *h, const void *bytes, size_t len)
{
    const uint8_t *b = bytes;
    for (size_t i = 0; i < len; i++) {
        *h ^= b[i];
        *h *= 0x100000001b3ull;
    }
}

static inline void fuzz_hash_u64(uint64_t *h, uint64_t v)
{
    fuzz_hash(h, &v, sizeof v);
}

/* The next chunk size for feed `mode`: 0 whole (0 means "all the rest"),
 * 1 byte by byte, otherwise 1..max bytes from a xorshift generator. */
static inline size_t fuzz_chunk(uint32_t *rng, size_t mode, uint32_t max)
{
    if (mode == 0)
        return 0;
    if (mode == 1)
        return 1;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 17;
    *rng ^= *rng << 5;
    return 1 + *rng % max;
}

#endif
