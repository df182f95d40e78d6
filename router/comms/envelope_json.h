/* router/comms/envelope_json.h — the JSON form of signed envelopes (yajl), for
 * `kith envelope`, `kith send`, the gateway and the router-run tools of
 * router/workers/turns.c (moved here from tools/kith/ so the router can use it).
 *
 * Envelope:
 *   {"id": "<uuid>", "from": "ed25519:<b64>", "to": "ed25519:<b64>",
 *    "kind": {"type": "message", "body": "hi", …}, "sig": "<b64>",
 *    "signature_valid": true}
 * On input only "to" and "kind" are required: "id" defaults to a new
 * UUIDv7; "from", when given, must be the signing key; "sig",
 * "signature_valid" and "signature_error" are ignored, so decoded output can
 * be fed back in to be re-signed. Any other key is an error.
 *
 * Values map naturally: strings ⇄ text, true/false/null, arrays, objects
 * (text keys), numbers without '.', 'e' or 'E' ⇄ integers (-2^64 … 2^64-1),
 * other numbers ⇄ finite floats. Byte strings are {"$bytes": "<standard
 * padded base64>"}: an object whose only key is "$bytes" always means bytes.
 * The UUID-valued kind field in_reply_to (response, ack) is a UUID string.
 * Floats are written in the shortest form that reads back to the same value,
 * always with a '.' or exponent so they stay floats. */
#ifndef KITH_ROUTER_ENVELOPE_JSON_H
#define KITH_ROUTER_ENVELOPE_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <cbor.h>
#include <yajl/yajl_gen.h>

#include "proto/envelope.h"

/* Largest JSON text accepted (a 1 MiB envelope of bytes grows by 4/3 in
 * base64, plus syntax). */
#define ROUTER_JSON_MAX (4u * 1024u * 1024u)

/* Parses one JSON value into a new CBOR item (caller owns it: cbor_decref).
 * Nesting is limited to PROTO_ENVELOPE_DEPTH_MAX. Returns NULL with a
 * one-line reason in err[errcap] on failure. */
cbor_item_t *router_json_to_cbor(const char *json, size_t len, char *err, size_t errcap);

/* The two ways writing JSON fails, so that a caller can tell a value a
 * non-kith peer sent (answer "no JSON form", keep going) from the machine
 * running out (answer "try again"). Each is also left in errno (EINVAL,
 * ENOMEM). */
#define ROUTER_JSON_NO_FORM   (-1) /* a value has no JSON form */
#define ROUTER_JSON_NO_MEMORY (-2) /* out of memory (ours or yajl's buffer) */

/* Writes `item` into g as JSON, map keys in canonical order. Returns 0,
 * ROUTER_JSON_NO_FORM when the item has no JSON form: tags, undefined,
 * non-finite floats, non-text keys, or a map whose only key is "$bytes" (it
 * would read back as bytes), or ROUTER_JSON_NO_MEMORY. On failure the output
 * is incomplete and errno is EINVAL or ENOMEM to match. */
int router_cbor_to_json(yajl_gen g, const cbor_item_t *item);

/* Builds the unsigned envelope described by json, from `from`. Returns 0
 * with *out set (caller owns it), or -1 with a one-line reason in err. */
int router_envelope_from_json(const char *json, size_t len, const uint8_t from[PROTO_PUBKEY_LEN],
                              proto_envelope_t **out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Writes env's kind into g as router_envelope_to_json writes it ("type"
 * first, in_reply_to as a UUID string). Returns 0, ROUTER_JSON_NO_FORM or
 * ROUTER_JSON_NO_MEMORY, with errno to match (as router_cbor_to_json). */
int router_envelope_kind_to_json(yajl_gen g, const proto_envelope_t *env);

/* The JSON form of env as a new NUL-terminated string (caller frees with
 * free()), pretty-printed when `pretty`. With `verdict` non-NULL, adds
 * "signature_valid" (and "signature_error" naming the reason when it is not
 * PROTO_ENV_OK). Returns 0, ROUTER_JSON_NO_FORM when a value has no JSON
 * form (see router_cbor_to_json) or ROUTER_JSON_NO_MEMORY. Reading the
 * output back with router_envelope_from_json gives the same signable bytes. */
int router_envelope_to_json(const proto_envelope_t *env, const proto_envelope_reason_t *verdict, int pretty,
                            char **out, size_t *len);

#endif
