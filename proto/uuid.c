/* proto/uuid.c — UUID text form, v7 and v5 generation (RFC 9562). */
#include "proto/uuid.h"

#include <pthread.h>
#include <stdbool.h>
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

/* The random bits of v7 ids, without a system call per id (the router
 * makes one for every ack; issue 13): a per-thread ChaCha20 generator keyed
 * once from libsodium's CSPRNG (one getrandom) and re-keyed from its own
 * keystream at every refill ("fast key erasure"): the first 32 bytes of each
 * block become the next key, the rest is handed out and wiped as it is
 * used, so the state left in memory never reveals ids already made. The
 * output is a CSPRNG's, as unpredictable as randombytes_buf for replay ids.
 * A forked child re-seeds (pthread_atfork), so parent and child never share
 * a stream. */
#define S_RNG_BLOCK 1024u

static _Thread_local struct {
    uint8_t key[crypto_stream_chacha20_ietf_KEYBYTES]; /* the next block's key */
    uint8_t buf[S_RNG_BLOCK];                           /* keystream not yet used */
    size_t used;                                        /* bytes of buf handed out */
    bool seeded;                                        /* key came from the CSPRNG */
} s_rng;

static pthread_once_t s_rng_once = PTHREAD_ONCE_INIT;

static void s_rng_forget(void)
{
    sodium_memzero(&s_rng, sizeof s_rng);
}

static void s_rng_atfork(void)
{
    (void) pthread_atfork(NULL, NULL, s_rng_forget);
}

static void s_rng_bytes(uint8_t *out, size_t len)
{
    if (!s_rng.seeded) {
        (void) pthread_once(&s_rng_once, s_rng_atfork);
        randombytes_buf(s_rng.key, sizeof s_rng.key);
        s_rng.used = S_RNG_BLOCK;
        s_rng.seeded = true;
    }
    if (S_RNG_BLOCK - s_rng.used < len) {
        static const uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES]; /* a new key each block */
        uint8_t block[sizeof s_rng.key + S_RNG_BLOCK];
        crypto_stream_chacha20_ietf(block, sizeof block, nonce, s_rng.key);
        memcpy(s_rng.key, block, sizeof s_rng.key);
        memcpy(s_rng.buf, block + sizeof s_rng.key, S_RNG_BLOCK);
        sodium_memzero(block, sizeof block);
        s_rng.used = 0;
    }
    memcpy(out, s_rng.buf + s_rng.used, len);
    sodium_memzero(s_rng.buf + s_rng.used, len);
    s_rng.used += len;
}

void proto_uuid_v7_new(uint8_t out[PROTO_UUID_LEN])
{
    struct timespec ts;
    uint8_t rand[10];
    uint64_t ms = 0;
    /* CLOCK_REALTIME cannot fail with a valid clock id (and is a vDSO call,
     * not a system call); a clock before 1970 would only give a v7 that
     * peers refuse as outside their window. */
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && ts.tv_sec >= 0)
        ms = (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
    s_rng_bytes(rand, sizeof rand);
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
