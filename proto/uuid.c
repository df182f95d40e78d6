/* proto/uuid.c — UUID text form, v7 and v5 generation (RFC 9562). */
#include "proto/uuid.h"

#include <string.h>
#include <time.h>

#include <sodium.h>

#include "proto/sha1.h"

/* Sets the 4-bit version and the RFC 9562 variant bits (10xx). */
static void s_stamp(uint8_t id[PROTO_UUID_LEN], unsigned version)
{
    id[6] = (uint8_t) ((id[6] & 0x0f) | (version << 4));
    id[8] = (uint8_t) ((id[8] & 0x3f) | 0x80);
}

static int s_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Byte offsets in the text form where a '-' separates the groups. */
static int s_is_dash_at(size_t i) { return i == 8 || i == 13 || i == 18 || i == 23; }

void proto_uuid_format(const uint8_t id[PROTO_UUID_LEN], char out[PROTO_UUID_TEXT_CAP])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < PROTO_UUID_LEN; i++) {
        if (s_is_dash_at(o))
            out[o++] = '-';
        out[o++] = hex[id[i] >> 4];
        out[o++] = hex[id[i] & 0x0f];
    }
    out[o] = '\0';
}

int proto_uuid_parse(const char *text, size_t len, uint8_t out[PROTO_UUID_LEN])
{
    uint8_t id[PROTO_UUID_LEN];
    size_t n = 0;
    if (len != PROTO_UUID_TEXT_LEN)
        return -1;
    for (size_t i = 0; i < len;) {
        if (s_is_dash_at(i)) {
            if (text[i] != '-')
                return -1;
            i++;
            continue;
        }
        int hi = s_hexval(text[i]);
        int lo = s_hexval(text[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        id[n++] = (uint8_t) (hi << 4 | lo);
        i += 2;
    }
    memcpy(out, id, sizeof id);
    return 0;
}

void proto_uuid_v7_make(uint64_t unix_ms, const uint8_t rand[10], uint8_t out[PROTO_UUID_LEN])
{
    unix_ms &= PROTO_UUID_V7_MS_MAX;
    for (int i = 0; i < 6; i++)
        out[i] = (uint8_t) (unix_ms >> (40 - 8 * i));
    memcpy(out + 6, rand, 10);
    s_stamp(out, 7);
}

void proto_uuid_v7_new(uint8_t out[PROTO_UUID_LEN])
{
    struct timespec ts;
    uint8_t rand[10];
    uint64_t ms = 0;
    /* CLOCK_REALTIME cannot fail with a valid clock id; a clock before 1970
     * would only give a v7 that peers refuse as outside their window. */
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && ts.tv_sec >= 0)
        ms = (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
    randombytes_buf(rand, sizeof rand);
    proto_uuid_v7_make(ms, rand, out);
    sodium_memzero(rand, sizeof rand);
}

int proto_uuid_v7_ms(const uint8_t id[PROTO_UUID_LEN], uint64_t *unix_ms)
{
    if (proto_uuid_version(id) != 7 || (id[8] & 0xc0) != 0x80)
        return -1;
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | id[i];
    *unix_ms = ms;
    return 0;
}

void proto_uuid_v5(const uint8_t ns[PROTO_UUID_LEN], const void *name, size_t len,
                   uint8_t out[PROTO_UUID_LEN])
{
    proto_sha1_t ctx;
    uint8_t digest[PROTO_SHA1_LEN];
    proto_sha1_init(&ctx);
    proto_sha1_update(&ctx, ns, PROTO_UUID_LEN);
    proto_sha1_update(&ctx, name, len);
    proto_sha1_final(&ctx, digest);
    memcpy(out, digest, PROTO_UUID_LEN);
    s_stamp(out, 5);
}

unsigned proto_uuid_version(const uint8_t id[PROTO_UUID_LEN]) { return id[6] >> 4; }
