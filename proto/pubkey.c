/* proto/pubkey.c — Ed25519 key text form, PeerId, full-order policy and
 * detached sign/verify; see pubkey.h for the policy. */
#include "proto/pubkey.h"

#include <string.h>

#include <sodium.h>

#include "proto/uuid.h"

static const char s_prefix[] = "ed25519:";
#define S_PREFIX_LEN (sizeof s_prefix - 1)
/* Padded base64 of 32 bytes: 4 * ceil(32 / 3). */
#define S_B64_LEN 44

/* 6d656572-6b61-7450-6565-724964300001: "meerkatPeerId0" + 0x0001. */
static const uint8_t s_peer_ns[PROTO_UUID_LEN] = {
    0x6d, 0x65, 0x65, 0x72, 0x6b, 0x61, 0x74, 0x50,
    0x65, 0x65, 0x72, 0x49, 0x64, 0x30, 0x00, 0x01,
};

const char *proto_pubkey_reason_str(proto_pubkey_reason_t r)
{
    switch (r) {
    case PROTO_PUBKEY_OK:         return "ok";
    case PROTO_PUBKEY_NO_PREFIX:  return "no_prefix";
    case PROTO_PUBKEY_BAD_BASE64: return "bad_base64";
    case PROTO_PUBKEY_WEAK:       return "weak_key";
    }
    return "unknown";
}

/* libsodium 1.0.18's crypto_core_ed25519_is_valid_point refuses a
 * non-canonical y, the small-order points, points off the curve and points
 * outside the main subgroup ([L]P != identity). That is exactly the policy;
 * tests/pubkey_test.c cross-checks it against an independent [L]P
 * computation over every CCTV key. */
int proto_pubkey_check(const uint8_t pk[PROTO_PUBKEY_LEN])
{
    return crypto_core_ed25519_is_valid_point(pk) == 1 ? 0 : -1;
}

int proto_pubkey_format(const uint8_t pk[PROTO_PUBKEY_LEN], char *out, size_t cap)
{
    if (cap < PROTO_PUBKEY_TEXT_CAP)
        return -1;
    memcpy(out, s_prefix, S_PREFIX_LEN);
    sodium_bin2base64(out + S_PREFIX_LEN, cap - S_PREFIX_LEN, pk, PROTO_PUBKEY_LEN,
                      sodium_base64_VARIANT_ORIGINAL);
    return 0;
}

int proto_pubkey_parse_reason(const char *text, size_t len, uint8_t pk[PROTO_PUBKEY_LEN],
                              proto_pubkey_reason_t *reason)
{
    proto_pubkey_reason_t why = PROTO_PUBKEY_OK;
    uint8_t raw[PROTO_PUBKEY_LEN];
    char again[S_B64_LEN + 1];
    size_t raw_len = 0;
    const char *end = NULL;

    if (len < S_PREFIX_LEN || memcmp(text, s_prefix, S_PREFIX_LEN) != 0) {
        why = PROTO_PUBKEY_NO_PREFIX;
        goto done;
    }
    text += S_PREFIX_LEN;
    len -= S_PREFIX_LEN;
    /* One spelling per key: exact length, everything consumed, and the
     * re-encoding equal to the input (so no stray low bits in the last
     * character). */
    if (len != S_B64_LEN ||
        sodium_base642bin(raw, sizeof raw, text, len, NULL, &raw_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        raw_len != sizeof raw || end != text + len) {
        why = PROTO_PUBKEY_BAD_BASE64;
        goto done;
    }
    sodium_bin2base64(again, sizeof again, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
    if (memcmp(again, text, S_B64_LEN) != 0) {
        why = PROTO_PUBKEY_BAD_BASE64;
        goto done;
    }
    if (proto_pubkey_check(raw) != 0) {
        why = PROTO_PUBKEY_WEAK;
        goto done;
    }
    memcpy(pk, raw, sizeof raw);
done:
    if (reason)
        *reason = why;
    return why == PROTO_PUBKEY_OK ? 0 : -1;
}

int proto_pubkey_parse(const char *text, size_t len, uint8_t pk[PROTO_PUBKEY_LEN])
{
    return proto_pubkey_parse_reason(text, len, pk, NULL);
}

void proto_peer_id(const uint8_t pk[PROTO_PUBKEY_LEN], uint8_t id[16])
{
    proto_uuid_v5(s_peer_ns, pk, PROTO_PUBKEY_LEN, id);
}

void proto_ed25519_sign(const uint8_t sk[PROTO_SECKEY_LEN], const uint8_t *msg, size_t len,
                        uint8_t sig[PROTO_SIG_LEN])
{
    crypto_sign_detached(sig, NULL, msg, len, sk);
}

int proto_ed25519_verify_checked(const uint8_t pk[PROTO_PUBKEY_LEN], const uint8_t *msg, size_t len,
                                 const uint8_t sig[PROTO_SIG_LEN])
{
    return crypto_sign_verify_detached(sig, msg, len, pk) == 0 ? 0 : -1;
}

int proto_ed25519_verify(const uint8_t pk[PROTO_PUBKEY_LEN], const uint8_t *msg, size_t len,
                         const uint8_t sig[PROTO_SIG_LEN])
{
    if (proto_pubkey_check(pk) != 0)
        return -1;
    return proto_ed25519_verify_checked(pk, msg, len, sig);
}

void proto_ed25519_seed_keypair(const uint8_t seed[PROTO_SEED_LEN], uint8_t pk[PROTO_PUBKEY_LEN],
                                uint8_t sk[PROTO_SECKEY_LEN])
{
    crypto_sign_seed_keypair(pk, sk, seed);
}
