/* proto/envelope.h — Meerkat-compatible signed envelopes (DESIGN §8): strict
 * bounded decoding, the canonical signable bytes, Ed25519 signing and
 * verification, canonical encoding, and a no-allocation ack fast path.
 *
 * Wire form: a CBOR map {id: bstr 16, from: bstr 32, to: bstr 32,
 * kind: map, sig: bstr 64}; the signature covers the canonical CBOR of the
 * array [id, from, to, kind] (proto/cbor_canon.h). The verifier re-encodes
 * what it decoded, so a sender's key order and integer/float widths never
 * matter.
 *
 * What kith accepts (each refusal is a typed reason below):
 *   - at most PROTO_ENVELOPE_MAX bytes and PROTO_ENVELOPE_ITEMS_MAX data
 *     items, one top-level item, nothing after it;
 *   - definite lengths only; nesting at most PROTO_ENVELOPE_DEPTH_MAX (the
 *     envelope map is level 1, kind level 2);
 *   - the JSON data model plus byte strings: integers, finite floats, text
 *     (valid UTF-8), bytes, arrays, maps with text keys, true/false/null; no
 *     tags, no undefined, no other simple values; no duplicate keys anywhere;
 *   - exactly the five envelope keys, with exact byte-string lengths;
 *   - in kind: `type` naming a known variant, its required fields present
 *     with the right types, optional fields omitted rather than null. Fields
 *     kith does not know are kept as opaque values and signed and re-encoded
 *     with the rest, so a newer peer's extra fields neither break its
 *     signature nor get dropped.
 *
 * Variants (kind.type):
 *   message   {body: text, blocks?: array, handling_mode?: "queue"|"steer"}
 *   request   {intent: text, params: any, blocks?: array, handling_mode?}
 *   response  {in_reply_to: bstr 16, status: "accepted"|"completed"|"failed", result: any,
 *              blocks?: array, handling_mode?}
 *   ack       {in_reply_to: bstr 16}
 *   lifecycle {kind: text, params: any}
 *   incarnation_fenced_message {body: text, expected_recipient: map (mob_id, agent_identity,
 *              host_id, member_session_id: text; binding_generation, generation,
 *              fence_token: unsigned), blocks?: array, handling_mode?}
 * Meerkat's other optional fields (content_taint, objective_id,
 * reply_endpoint) are carried like any field kith does not know.
 * `blocks` is an array of arbitrary values (Meerkat content blocks), checked
 * only against the data model above.
 *
 * An envelope is immutable once made, except for its signature. libsodium
 * must be initialised before any function here is called. */
#ifndef KITH_PROTO_ENVELOPE_H
#define KITH_PROTO_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cbor.h>

#include "proto/frame.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"

/* Largest envelope CBOR item (the frame payload), DESIGN §10. */
#define PROTO_ENVELOPE_MAX (1024u * 1024u)
/* Deepest nesting in an envelope; the envelope map itself is level 1. */
#define PROTO_ENVELOPE_DEPTH_MAX 32
/* Most CBOR data items in one envelope (map keys count): bounds the heap a
 * decode takes to about 15 MiB, however the 1 MiB is spent. */
#define PROTO_ENVELOPE_ITEMS_MAX 131072
/* A complete signed ack frame (header included) is always this long. */
#define PROTO_ACK_FRAME_LEN 215

typedef struct proto_envelope proto_envelope_t;

/* kind.type */
typedef enum {
    PROTO_KIND_MESSAGE = 1,
    PROTO_KIND_REQUEST,
    PROTO_KIND_RESPONSE,
    PROTO_KIND_ACK,
    PROTO_KIND_LIFECYCLE,
    PROTO_KIND_FENCED_MESSAGE, /* "incarnation_fenced_message" (Meerkat, WIRE §23.3) */
} proto_kind_t;

/* handling_mode on message and request; NONE when absent. */
typedef enum {
    PROTO_HANDLING_NONE = 0,
    PROTO_HANDLING_QUEUE,
    PROTO_HANDLING_STEER,
} proto_handling_t;

/* response.status */
typedef enum {
    PROTO_STATUS_NONE = 0, /* not a response */
    PROTO_STATUS_ACCEPTED,
    PROTO_STATUS_COMPLETED,
    PROTO_STATUS_FAILED,
} proto_status_t;

/* Why an envelope was refused, finely. proto_envelope_reason_wire() maps
 * each to the reason DESIGN §8 puts on the wire. */
typedef enum {
    PROTO_ENV_OK = 0,
    PROTO_ENV_OVERSIZE,          /* more than PROTO_ENVELOPE_MAX bytes          → oversize */
    PROTO_ENV_TOO_MANY_ITEMS,    /* more than PROTO_ENVELOPE_ITEMS_MAX items    → oversize */
    PROTO_ENV_TRUNCATED,         /* input ends inside an item                    → malformed */
    PROTO_ENV_TRAILING_BYTES,    /* bytes after the envelope                     → malformed */
    PROTO_ENV_ILL_FORMED,        /* not well-formed CBOR                         → malformed */
    PROTO_ENV_INDEFINITE_LENGTH, /* an indefinite-length item                    → malformed */
    PROTO_ENV_TOO_DEEP,          /* nesting beyond PROTO_ENVELOPE_DEPTH_MAX      → malformed */
    PROTO_ENV_UNSUPPORTED_TYPE,  /* tag, undefined, simple value, NaN/infinity   → malformed */
    PROTO_ENV_BAD_UTF8,          /* a text string that is not UTF-8              → malformed */
    PROTO_ENV_NON_TEXT_KEY,      /* a map key that is not a text string          → malformed */
    PROTO_ENV_DUPLICATE_KEY,     /* one key twice in a map                       → malformed */
    PROTO_ENV_MISSING_FIELD,     /* a required field is absent                   → malformed */
    PROTO_ENV_UNKNOWN_FIELD,     /* an envelope key other than the five          → malformed */
    PROTO_ENV_WRONG_TYPE,        /* a field of the wrong CBOR type (or null)     → malformed */
    PROTO_ENV_BAD_LENGTH,        /* id/from/to/sig/in_reply_to of the wrong size → malformed */
    PROTO_ENV_UNKNOWN_KIND,      /* kind.type names no known variant             → malformed */
    PROTO_ENV_BAD_VALUE,         /* handling_mode or status outside its set      → malformed */
    PROTO_ENV_WEAK_KEY,          /* `from` is not a full-order public key        → invalid_signature */
    PROTO_ENV_BAD_SIGNATURE,     /* the signature does not verify                → invalid_signature */
    PROTO_ENV_NO_MEMORY,         /* kith ran out of memory (not the sender's fault) → internal */
} proto_envelope_reason_t;

/* The receive-path reasons of DESIGN §8, in the order they are checked, plus
 * `internal` for failures that are kith's own. */
typedef enum {
    PROTO_WIRE_OK = 0,
    PROTO_WIRE_OVERSIZE,
    PROTO_WIRE_MALFORMED,
    PROTO_WIRE_INVALID_SIGNATURE,
    PROTO_WIRE_MISADDRESSED,
    PROTO_WIRE_UNTRUSTED_SENDER,
    PROTO_WIRE_REPLAY,
    PROTO_WIRE_INBOX_FULL,
    PROTO_WIRE_INTERNAL,
} proto_wire_reason_t;

/* Stable snake_case names: "duplicate_key", "malformed", "message", … */
const char *proto_envelope_reason_str(proto_envelope_reason_t r);
proto_wire_reason_t proto_envelope_reason_wire(proto_envelope_reason_t r);
const char *proto_wire_reason_str(proto_wire_reason_t r);
const char *proto_kind_str(proto_kind_t k);
/* Whether a receiver acks this kind (message, incarnation_fenced_message,
 * request, lifecycle: as Meerkat does), so whether a sender waits for one. */
bool proto_kind_acked(proto_kind_t k);
const char *proto_handling_str(proto_handling_t h); /* NULL for NONE */
const char *proto_status_str(proto_status_t s);     /* NULL for NONE */

/* ------------------------------------------------------------ decode */

/* Decodes exactly len bytes (one envelope, no frame header). Returns 0 with
 * *out set (caller owns it: proto_envelope_destroy), or -1 with *reason set
 * and *out NULL. Does not verify the signature. */
int proto_envelope_decode(const uint8_t *p, size_t len, proto_envelope_t **out,
                          proto_envelope_reason_t *reason) __attribute__((warn_unused_result));

/* proto_envelope_decode without its fast path for the canonical head (the
 * fixed bytes a canonical envelope starts with, WIRE §4): the same
 * result on every input, slower. For tests and the fuzz harness, which
 * check that the two agree. */
int proto_envelope_decode_general(const uint8_t *p, size_t len, proto_envelope_t **out,
                                  proto_envelope_reason_t *reason) __attribute__((warn_unused_result));

/* Decodes one whole frame: the 4-byte big-endian length, which must be at
 * most PROTO_ENVELOPE_MAX (else oversize) and match the bytes that follow
 * exactly (else truncated / trailing_bytes), then the envelope. For tools and
 * tests; the router reads frames incrementally and calls decode. */
int proto_envelope_decode_frame(const uint8_t *p, size_t len, proto_envelope_t **out,
                                proto_envelope_reason_t *reason) __attribute__((warn_unused_result));

/* ------------------------------------------------------------ build */

/* kind maps for proto_envelope_new. Each returns a new item (one reference,
 * owned by the caller) or NULL when out of memory. A `cbor_item_t **`
 * argument is taken: *p is released or absorbed and set to NULL, also on
 * failure; NULL or *p == NULL means "absent" for optional fields. Values are
 * checked against the data model only when the envelope is made. */
cbor_item_t *proto_kind_message(const char *body, size_t body_len, cbor_item_t **blocks,
                                proto_handling_t mode);
cbor_item_t *proto_kind_request(const char *intent, size_t intent_len, cbor_item_t **params,
                                cbor_item_t **blocks, proto_handling_t mode);
cbor_item_t *proto_kind_response(const uint8_t in_reply_to[PROTO_UUID_LEN], proto_status_t status,
                                 cbor_item_t **result);
cbor_item_t *proto_kind_ack(const uint8_t in_reply_to[PROTO_UUID_LEN]);
cbor_item_t *proto_kind_lifecycle(const char *kind, size_t kind_len, cbor_item_t **params);

/* An unsigned envelope around *kind (taken, see above), checked exactly as
 * decoding would check it. id NULL makes a new UUIDv7. Returns the envelope
 * (caller owns it) or NULL with *reason set. */
proto_envelope_t *proto_envelope_new(const uint8_t id[PROTO_UUID_LEN], const uint8_t from[PROTO_PUBKEY_LEN],
                                     const uint8_t to[PROTO_PUBKEY_LEN], cbor_item_t **kind,
                                     proto_envelope_reason_t *reason);

/* Frees env and sets *env to NULL; NULL and *env == NULL are fine. */
void proto_envelope_destroy(proto_envelope_t **env);

/* ------------------------------------------------------------ sign, verify, encode */

/* Signs with sk, whose public half must be env's `from`. Returns 0, or -1
 * when sk belongs to another key. */
int proto_envelope_sign(proto_envelope_t *env, const uint8_t sk[PROTO_SECKEY_LEN])
    __attribute__((warn_unused_result));

/* Returns 0 when `sig` is a valid signature of the signable bytes by `from`
 * under kith's key policy (proto/pubkey.h), else -1 with *reason set to
 * PROTO_ENV_WEAK_KEY or PROTO_ENV_BAD_SIGNATURE. */
int proto_envelope_verify(const proto_envelope_t *env, proto_envelope_reason_t *reason)
    __attribute__((warn_unused_result));

/* As proto_envelope_verify for a `from` the caller has already checked with
 * proto_pubkey_check (a trusted peer's key): half the cost. */
int proto_envelope_verify_prechecked(const proto_envelope_t *env, proto_envelope_reason_t *reason)
    __attribute__((warn_unused_result));

/* The canonical CBOR of [id, from, to, kind], borrowed from env (valid until
 * it is destroyed). */
const uint8_t *proto_envelope_signable(const proto_envelope_t *env, size_t *len);

/* The envelope as canonical CBOR (keys in canonical order: id, to, sig,
 * from, kind), without (encode) or with (encode_frame) the 4-byte length.
 * Returns 0 with *out a new buffer (caller frees with free()), or -1 when
 * out of memory. */
int proto_envelope_encode(const proto_envelope_t *env, uint8_t **out, size_t *len);
int proto_envelope_encode_frame(const proto_envelope_t *env, uint8_t **out, size_t *len);

/* Writes a complete signed ack frame for `in_reply_to`, from the key in sk
 * to `to`, with id `id` (NULL: a new UUIDv7), into out — byte for byte what
 * proto_kind_ack + proto_envelope_new + sign + encode_frame would produce,
 * but with no allocation (the router's hot path). */
void proto_envelope_ack_frame(const uint8_t sk[PROTO_SECKEY_LEN], const uint8_t to[PROTO_PUBKEY_LEN],
                              const uint8_t in_reply_to[PROTO_UUID_LEN], const uint8_t id[PROTO_UUID_LEN],
                              uint8_t out[PROTO_ACK_FRAME_LEN]);

/* ------------------------------------------------------------ accessors */

/* Fixed fields, borrowed from env. */
const uint8_t *proto_envelope_id(const proto_envelope_t *env);
const uint8_t *proto_envelope_from(const proto_envelope_t *env);
const uint8_t *proto_envelope_to(const proto_envelope_t *env);
const uint8_t *proto_envelope_sig(const proto_envelope_t *env);
proto_kind_t proto_envelope_kind(const proto_envelope_t *env);

/* The kind map (borrowed; do not modify or release). */
const cbor_item_t *proto_envelope_kind_map(const proto_envelope_t *env);
/* kind[name] (borrowed), or NULL when absent. */
const cbor_item_t *proto_envelope_field(const proto_envelope_t *env, const char *name);
/* kind[name] as text borrowed from env: 0, or -1 when absent or not text. */
int proto_envelope_text(const proto_envelope_t *env, const char *name, const char **p, size_t *len);
/* kind.in_reply_to of a response or ack: 0, or -1 for other kinds. */
int proto_envelope_in_reply_to(const proto_envelope_t *env, uint8_t out[PROTO_UUID_LEN]);
proto_handling_t proto_envelope_handling(const proto_envelope_t *env);
proto_status_t proto_envelope_status(const proto_envelope_t *env);

#endif
