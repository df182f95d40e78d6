/* proto/uuid.h — UUIDs (RFC 9562): the text form, v7 ids for envelopes and
 * v5 name-based ids for PeerIds. A UUID is always 16 raw bytes in network
 * order; nothing here allocates. */
#ifndef KITH_PROTO_UUID_H
#define KITH_PROTO_UUID_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_UUID_LEN 16
/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" without and with its NUL. */
#define PROTO_UUID_TEXT_LEN 36
#define PROTO_UUID_TEXT_CAP 37
/* Largest Unix time in milliseconds a v7 id can carry (48 bits). */
#define PROTO_UUID_V7_MS_MAX ((UINT64_C(1) << 48) - 1)

/* Writes the lowercase 8-4-4-4-12 text form and a NUL into out. */
void proto_uuid_format(const uint8_t id[PROTO_UUID_LEN], char out[PROTO_UUID_TEXT_CAP]);

/* Parses exactly `len` bytes of 8-4-4-4-12 hex text (either case; no braces,
 * no "urn:uuid:"). Returns 0, or -1 when the text is not exactly that. */
int proto_uuid_parse(const char *text, size_t len, uint8_t out[PROTO_UUID_LEN])
    __attribute__((warn_unused_result));

/* A new v7 id from the real-time clock and 74 random bits from a
 * per-thread ChaCha20 generator seeded once from libsodium's CSPRNG (no
 * system call per id). Ids made in the same millisecond are unique but not
 * ordered. */
void proto_uuid_v7_new(uint8_t out[PROTO_UUID_LEN]);

/* The v7 id for `unix_ms` (at most PROTO_UUID_V7_MS_MAX) with the given 10
 * random bytes, of which 74 bits are used: for tests and golden vectors. */
void proto_uuid_v7_make(uint64_t unix_ms, const uint8_t rand[10], uint8_t out[PROTO_UUID_LEN]);

/* Reads the Unix time in milliseconds out of a v7 id. Returns 0, or -1 when
 * `id` is not a v7 (version 7, variant 10) UUID. */
int proto_uuid_v7_ms(const uint8_t id[PROTO_UUID_LEN], uint64_t *unix_ms)
    __attribute__((warn_unused_result));

/* The v5 (SHA-1, name-based) UUID of `len` bytes at `name` in namespace `ns`. */
void proto_uuid_v5(const uint8_t ns[PROTO_UUID_LEN], const void *name, size_t len,
                   uint8_t out[PROTO_UUID_LEN]);

/* The version nibble (1…8 for RFC 9562 UUIDs; anything for other bytes). */
unsigned proto_uuid_version(const uint8_t id[PROTO_UUID_LEN]);

#endif
