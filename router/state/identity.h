/* router/state/identity.h — this node's Ed25519 identity: the key pair kept under
 * $KITH_HOME/identity/ and the PeerId derived from it (DESIGN §4, §8).
 *
 * Files:
 *   identity/identity.key  mode 0600, one line: "ed25519-seed:" followed by
 *                          the 32-byte Ed25519 seed in standard padded base64.
 *                          The full secret key is re-derived from the seed.
 *   identity/identity.pub  one line: "ed25519:" + standard padded base64 of
 *                          the 32-byte public key (the text form of DESIGN §8).
 *
 * A key file that group or others may read or write, that is not a regular
 * file owned by this user, or whose identity.pub names another key is refused
 * with a message saying how to fix it. A missing identity.pub is rewritten from
 * the key (it holds nothing secret). A missing identity.key beside a kept
 * identity.pub is a lost identity, never a first start: nothing makes a new
 * key there until identity.pub is deleted on purpose. */
#ifndef KITH_ROUTER_IDENTITY_H
#define KITH_ROUTER_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Paths relative to $KITH_HOME. */
#define ROUTER_IDENTITY_DIR      "identity"
#define ROUTER_IDENTITY_KEY_FILE "identity/identity.key"
#define ROUTER_IDENTITY_PUB_FILE "identity/identity.pub"

/* Room for any error message the functions below write. */
#define ROUTER_IDENTITY_ERR_MAX 512

typedef struct {
    uint8_t pk[32];      /* Ed25519 public key */
    uint8_t sk[64];      /* libsodium secret key (seed ‖ pk); wipe with router_identity_wipe */
    uint8_t peer_id[16]; /* UUIDv5 of pk in the kith namespace (DESIGN §8) */
} router_identity_t;

/* Loads the identity under `home` into *out. Returns 0, or -1 with a one-line
 * reason in err[errcap] (missing key, unsafe mode, malformed file, pub file
 * naming another key…); *out is wiped on failure. */
int router_identity_load(const char *home, router_identity_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Makes a new identity under `home` (creating identity/ with mode 0700) and
 * writes both files. Never replaces an existing identity.key, and never
 * makes one beside a kept identity.pub (the key was lost: err says how to
 * recover): both are errors. Returns 0 with *out filled, or -1 with err set
 * and *out wiped. */
int router_identity_create(const char *home, router_identity_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* As router_identity_create with a given 32-byte Ed25519 seed instead of a
 * random one (importing a key made elsewhere: router/state/identity_meerkat.h). */
int router_identity_create_from_seed(const char *home, const uint8_t seed[32],
                                     router_identity_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Loads the identity under `home`, creating one when there is neither key
 * nor pub file yet (the daemon's first start). *created (may be NULL) says
 * which happened. Returns 0, or -1 with err set. */
int router_identity_load_or_create(const char *home, router_identity_t *out, bool *created,
                                   char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Room for router_identity_json()'s output, NUL included. */
#define ROUTER_IDENTITY_JSON_CAP 128

/* Writes {"pubkey":"ed25519:…","peer_id":"<uuid>"} (one line, no newline) —
 * what `kith id` prints. */
void router_identity_json(const router_identity_t *id, char out[ROUTER_IDENTITY_JSON_CAP]);

/* Zeroes every byte of *id (sodium_memzero); NULL is allowed. */
void router_identity_wipe(router_identity_t *id);

#endif
