/* proto/sha1.c — a small, portable SHA-1; see sha1.h for why it exists. */
#include "proto/sha1.h"

#include <string.h>

static uint32_t s_rol(uint32_t x, unsigned n) { return (x << n) | (x >> (32 - n)); }

static void s_block(uint32_t h[5], const uint8_t p[64])
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t) p[4 * i] << 24 | (uint32_t) p[4 * i + 1] << 16 |
               (uint32_t) p[4 * i + 2] << 8 | (uint32_t) p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = s_rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);

    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20)      { f = (b & c) | (~b & d);           k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d;                    k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d);  k = 0x8F1BBCDC; }
        else             { f = b ^ c ^ d;                    k = 0xCA62C1D6; }
        uint32_t t = s_rol(a, 5) + f + e + k + w[i];
        e = d; d = c; c = s_rol(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

void proto_sha1_init(proto_sha1_t *ctx)
{
    static const uint32_t iv[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    memcpy(ctx->h, iv, sizeof iv);
    ctx->bytes = 0;
    ctx->fill = 0;
}

void proto_sha1_update(proto_sha1_t *ctx, const void *data, size_t len)
{
    const uint8_t *p = data;
    ctx->bytes += len;
    while (len > 0) {
        size_t take = 64 - ctx->fill;
        if (take > len)
            take = len;
        memcpy(ctx->block + ctx->fill, p, take);
        ctx->fill += take;
        p += take;
        len -= take;
        if (ctx->fill == 64) {
            s_block(ctx->h, ctx->block);
            ctx->fill = 0;
        }
    }
}

void proto_sha1_final(proto_sha1_t *ctx, uint8_t out[PROTO_SHA1_LEN])
{
    uint64_t bits = ctx->bytes * 8;
    static const uint8_t pad0x80 = 0x80, zero[64] = {0};
    proto_sha1_update(ctx, &pad0x80, 1);
    size_t zeros = (ctx->fill <= 56) ? 56 - ctx->fill : 120 - ctx->fill;
    proto_sha1_update(ctx, zero, zeros);
    uint8_t len_be[8];
    for (int i = 0; i < 8; i++)
        len_be[i] = (uint8_t) (bits >> (56 - 8 * i));
    proto_sha1_update(ctx, len_be, 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t) (ctx->h[i] >> 24);
        out[4 * i + 1] = (uint8_t) (ctx->h[i] >> 16);
        out[4 * i + 2] = (uint8_t) (ctx->h[i] >> 8);
        out[4 * i + 3] = (uint8_t) ctx->h[i];
    }
    memset(ctx, 0, sizeof *ctx);
}

void proto_sha1(const void *data, size_t len, uint8_t out[PROTO_SHA1_LEN])
{
    proto_sha1_t ctx;
    proto_sha1_init(&ctx);
    proto_sha1_update(&ctx, data, len);
    proto_sha1_final(&ctx, out);
}
