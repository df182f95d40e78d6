/* gateway/openclaw_device.h — the device proof of an OpenClaw `connect`
 * (spec/WIRE.md §25.4): an Ed25519 key whose id is the hex SHA-256 of its
 * 32 raw bytes, and a signature over the pipe-joined v3 (or v2) string
 * that binds the challenge nonce, the time, the client, the role, the
 * scopes and the token. No I/O; the caller gives the clock. */
#ifndef KITH_GATEWAY_OPENCLAW_DEVICE_H
#define KITH_GATEWAY_OPENCLAW_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/openclaw_frame.h"

#define GATEWAY_OPENCLAW_DEVICE_SKEW_MS 120000u   /* |now - signedAt| allowed */
#define GATEWAY_OPENCLAW_DEVICE_ID_LEN 64u        /* hex SHA-256 */
/* The longest signed string kith builds: every field at its bound. */
#define GATEWAY_OPENCLAW_PAYLOAD_MAX                                                          \
    (16u + 5u * GATEWAY_OPENCLAW_STR_MAX + GATEWAY_OPENCLAW_SCOPES_MAX * (GATEWAY_OPENCLAW_SCOPE_MAX + 1) + \
     GATEWAY_OPENCLAW_TOKEN_MAX + 24u + GATEWAY_OPENCLAW_STR_MAX * 2u)

/* Why a device proof was refused, in the order they are checked. */
typedef enum {
    GATEWAY_OPENCLAW_DEVICE_OK = 0,
    GATEWAY_OPENCLAW_DEVICE_PUBLIC_KEY_INVALID, /* not 32 bytes of base64url/base64 */
    GATEWAY_OPENCLAW_DEVICE_ID_MISMATCH,        /* id ≠ hex SHA-256 of the key */
    GATEWAY_OPENCLAW_DEVICE_SIGNATURE_EXPIRED,  /* signedAt more than the skew from now */
    GATEWAY_OPENCLAW_DEVICE_NONCE_REQUIRED,     /* no nonce, or only blanks */
    GATEWAY_OPENCLAW_DEVICE_NONCE_MISMATCH,     /* not the challenge's nonce */
    GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID,  /* verifies over neither v3 nor v2 */
} gateway_openclaw_device_reason_t;

/* The fields a signed string binds. */
typedef struct {
    const char *device_id;
    const char *client_id;
    const char *client_mode;
    const char *role;
    const char *const *scopes;   /* joined with "," */
    unsigned nscopes;
    int64_t signed_at_ms;
    const char *token;           /* "" when none */
    const char *nonce;
    const char *platform;        /* v3 only: trimmed and ASCII-lowercased here */
    const char *device_family;   /* v3 only: likewise */
} gateway_openclaw_device_fields_t;

/* Writes the signed string of `version` (2 or 3) into out[cap]
 * (NUL-terminated). Returns its length, or -1 when it does not fit. */
int gateway_openclaw_device_payload(const gateway_openclaw_device_fields_t *f, int version,
                                    char *out, size_t cap);

/* hex[65] = the lowercase hex SHA-256 of pk[32]. */
void gateway_openclaw_device_id(const uint8_t pk[32], char hex[GATEWAY_OPENCLAW_DEVICE_ID_LEN + 1]);

/* Decodes base64url (padded or not) or standard base64 text into exactly
 * `want` bytes. Returns 0 or -1. */
int gateway_openclaw_b64_decode(const char *text, uint8_t *out, size_t want)
    __attribute__((warn_unused_result));

/* Checks c's device proof against the challenge `nonce` at `now_ms`;
 * `token` is the secret the client signed (auth.token, else
 * auth.deviceToken, else auth.bootstrapToken, else ""). *version gets 3
 * or 2 on success. */
gateway_openclaw_device_reason_t
gateway_openclaw_device_verify(const gateway_openclaw_connect_t *c, const char *token,
                               const char *nonce, uint64_t now_ms, int *version)
    __attribute__((warn_unused_result));

/* WIRE §25.5 names of a refusal: the details.code ("DEVICE_AUTH_…"), the
 * details.reason ("device-id-mismatch", …) and the message. */
const char *gateway_openclaw_device_code(gateway_openclaw_device_reason_t r);
const char *gateway_openclaw_device_reason(gateway_openclaw_device_reason_t r);
const char *gateway_openclaw_device_message(gateway_openclaw_device_reason_t r);

#endif
