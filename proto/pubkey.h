/* proto/pubkey.h — Ed25519 public keys as kith uses them (DESIGN §8): the
 * text form "ed25519:<standard padded base64>", the PeerId (UUIDv5 of the raw
 * key), the full-order policy, and detached sign/verify over libsodium.
 *
 * Policy: a public key is acceptable only when it is the canonical encoding
 * of a point of prime order L (the main subgroup): small-order points and
 * mixed-order points (main-subgroup point + torsion component) are refused
 * everywhere — parsing, trust store, verification — so every kith node gives
 * the same verdict whatever its peers' Ed25519 library would say.
 *
 * libsodium must be initialised (sodium_init() >= 0) before these are used. */
#ifndef KITH_PROTO_PUBKEY_H
#define KITH_PROTO_PUBKEY_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_PUBKEY_LEN 32  /* raw Ed25519 public key */
#define PROTO_SECKEY_LEN 64  /* libsodium secret key: seed || public key */
#define PROTO_SEED_LEN 32    /* the seed a secret key is derived from */
#define PROTO_SIG_LEN 64     /* detached Ed25519 signature */
/* "ed25519:" + 44 base64 characters, without and with the NUL. */
#define PROTO_PUBKEY_TEXT_LEN 52
#define PROTO_PUBKEY_TEXT_CAP 53

/* Why a key text or key was refused. */
typedef enum {
    PROTO_PUBKEY_OK = 0,      /* accepted */
    PROTO_PUBKEY_NO_PREFIX,   /* does not start with "ed25519:" */
    PROTO_PUBKEY_BAD_BASE64,  /* not exactly 44 characters of canonical padded standard base64 */
    PROTO_PUBKEY_WEAK,        /* not a canonical point of prime order (small/mixed order, off curve) */
} proto_pubkey_reason_t;

/* A short stable name for `r` ("ok", "no_prefix", "bad_base64", "weak_key"). */
const char *proto_pubkey_reason_str(proto_pubkey_reason_t r);

/* Returns 0 when pk is a canonical encoding of a point in the prime-order
 * subgroup other than the identity, -1 otherwise. Costs about one scalar
 * multiplication; callers on a hot path check a key once and remember it. */
int proto_pubkey_check(const uint8_t pk[PROTO_PUBKEY_LEN]) __attribute__((warn_unused_result));

/* Writes "ed25519:<base64>" and a NUL into out[cap]. Returns 0, or -1 when
 * cap < PROTO_PUBKEY_TEXT_CAP. */
int proto_pubkey_format(const uint8_t pk[PROTO_PUBKEY_LEN], char *out, size_t cap);

/* Parses exactly `len` bytes of key text into pk and applies the full-order
 * policy. Returns 0, or -1 (pk untouched). */
int proto_pubkey_parse(const char *text, size_t len, uint8_t pk[PROTO_PUBKEY_LEN])
    __attribute__((warn_unused_result));

/* As proto_pubkey_parse, also saying why in *reason (may be NULL). */
int proto_pubkey_parse_reason(const char *text, size_t len, uint8_t pk[PROTO_PUBKEY_LEN],
                              proto_pubkey_reason_t *reason) __attribute__((warn_unused_result));

/* The PeerId of pk: UUIDv5 in namespace 6d656572-6b61-7450-6565-724964300001
 * over the 32 raw key bytes. */
void proto_peer_id(const uint8_t pk[PROTO_PUBKEY_LEN], uint8_t id[16]);

/* Detached Ed25519 signature of msg[len] with sk (libsodium's 64-byte form). */
void proto_ed25519_sign(const uint8_t sk[PROTO_SECKEY_LEN], const uint8_t *msg, size_t len,
                        uint8_t sig[PROTO_SIG_LEN]);

/* Returns 0 when sig is a valid signature of msg[len] by pk under kith's
 * policy: pk passes proto_pubkey_check and libsodium's strict verification
 * accepts (canonical S < L, canonical R and A encodings, R not of small
 * order). -1 otherwise. */
int proto_ed25519_verify(const uint8_t pk[PROTO_PUBKEY_LEN], const uint8_t *msg, size_t len,
                         const uint8_t sig[PROTO_SIG_LEN]) __attribute__((warn_unused_result));

/* As proto_ed25519_verify for a key that already passed proto_pubkey_check
 * (a trusted peer's key, checked when the trust store loaded): skips the
 * subgroup check, which costs as much as the verification itself. */
int proto_ed25519_verify_checked(const uint8_t pk[PROTO_PUBKEY_LEN], const uint8_t *msg, size_t len,
                                 const uint8_t sig[PROTO_SIG_LEN]) __attribute__((warn_unused_result));

/* The key pair derived from a 32-byte seed (deterministic: tests, golden
 * vectors and identity files that store the seed). */
void proto_ed25519_seed_keypair(const uint8_t seed[PROTO_SEED_LEN], uint8_t pk[PROTO_PUBKEY_LEN],
                                uint8_t sk[PROTO_SECKEY_LEN]);

#endif
