/* proto/sha1.h — SHA-1 (FIPS 180-4), only for the two places the wire demands
 * it: the WebSocket Sec-WebSocket-Accept key (RFC 6455 §4.2.2) and UUIDv5
 * PeerIds (RFC 9562 §5.5). Never used for anything that needs collision
 * resistance. libsodium has no SHA-1, hence this file. */
#ifndef KITH_PROTO_SHA1_H
#define KITH_PROTO_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_SHA1_LEN 20

typedef struct {
    uint32_t h[5];       /* chaining state */
    uint64_t bytes;      /* total bytes absorbed */
    uint8_t block[64];   /* partial input block */
    size_t fill;         /* bytes used in block */
} proto_sha1_t;

void proto_sha1_init(proto_sha1_t *ctx);
void proto_sha1_update(proto_sha1_t *ctx, const void *data, size_t len);
void proto_sha1_final(proto_sha1_t *ctx, uint8_t out[PROTO_SHA1_LEN]);

/* One-shot digest of `len` bytes at `data`. */
void proto_sha1(const void *data, size_t len, uint8_t out[PROTO_SHA1_LEN]);

#endif
