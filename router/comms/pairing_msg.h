/* router/comms/pairing_msg.h — the messages of Meerkat's pairing handshake
 * (spec/WIRE.md §23.6): one JSON object a line, at most
 * ROUTER_PAIRING_LINE_MAX bytes, read from a connection nobody has
 * authenticated yet. This is the decoder and the password proof; the
 * connection side is router/comms/pairing.h.
 *
 *   → {"kind":"meerkat_pairing_hello","version":1}
 *   ← {"kind":"meerkat_pairing_challenge","version":1,"challenge":"<uuid>",
 *      "target":{"name","address","identity":{"kind":"ed25519_public_key",
 *      "public_key":"ed25519:<b64>"}}}
 *   → {"kind":"meerkat_pairing_proof","caller":{"name","address",
 *      "identity":{"kind":"ed25519_public_key","public_key":"ed25519:<b64>"}},
 *      "password_proof":"<b64>"}
 *   ← {"kind":"meerkat_pairing_complete","version":1,"comms_name":…,…}
 *
 * Unknown keys are ignored (Meerkat's serde does the same); a missing or
 * mistyped field, an unknown kind or an oversized string is refused with a
 * reason. No I/O; allocates only inside yajl while parsing. */
#ifndef KITH_ROUTER_PAIRING_MSG_H
#define KITH_ROUTER_PAIRING_MSG_H

#include <stddef.h>
#include <stdint.h>

/* A line, its newline included (Meerkat's MAX_PAIRING_MESSAGE_BYTES). */
#define ROUTER_PAIRING_LINE_MAX (16u * 1024u)
/* The only handshake version. */
#define ROUTER_PAIRING_VERSION 1
/* String bounds (bytes, NUL excluded). */
#define ROUTER_PAIRING_NAME_MAX 256
#define ROUTER_PAIRING_ADDR_MAX 300
#define ROUTER_PAIRING_KEY_MAX 64
#define ROUTER_PAIRING_PROOF_MAX 64
/* base64 of a SHA-256, NUL included. */
#define ROUTER_PAIRING_PROOF_CAP 45

typedef enum {
    ROUTER_PAIRING_HELLO = 1, /* meerkat_pairing_hello */
    ROUTER_PAIRING_PROOF,     /* meerkat_pairing_proof */
} router_pairing_kind_t;

/* One decoded client message. Strings are NUL-terminated copies. */
typedef struct {
    router_pairing_kind_t kind;
    uint32_t version;                          /* hello */
    char name[ROUTER_PAIRING_NAME_MAX + 1];    /* proof: caller.name */
    char address[ROUTER_PAIRING_ADDR_MAX + 1]; /* proof: caller.address */
    char public_key[ROUTER_PAIRING_KEY_MAX + 1]; /* proof: caller.identity.public_key, as sent */
    uint8_t pk[32];                            /* proof: that key, parsed (full order) */
    char proof[ROUTER_PAIRING_PROOF_MAX + 1];  /* proof: password_proof */
} router_pairing_msg_t;

/* Parses line[len] (one JSON object; a trailing newline is allowed).
 * Returns 0 with *out filled, or -1 with a short reason in why[whycap] and
 * errno saying whose fault: EINVAL the line's (answered "malformed"),
 * ENOMEM ours (the line may be fine: "internal"). */
int router_pairing_msg_parse(const char *line, size_t len, router_pairing_msg_t *out, char *why,
                             size_t whycap) __attribute__((warn_unused_result));

/* The password proof Meerkat computes: standard padded base64 of
 * SHA-256("meerkat-comms-pairing-v1" 0 password 0 challenge 0 public_key 0
 * address), into out. */
void router_pairing_proof(const char *password, const char *challenge, const char *public_key,
                          const char *address, char out[ROUTER_PAIRING_PROOF_CAP]);

#endif
