/* proto/envelope_meerkat.h — what a Meerkat peer can read (spec/WIRE.md §23.4).
 *
 * kith accepts the JSON data model plus byte strings anywhere, and keeps
 * fields it does not know. Meerkat decodes a kind into typed Rust structs:
 * values are serde_json values (no byte strings, integers within i64/u64),
 * lifecycle kinds are its `mob.*` names, blocks are its ContentBlock shape,
 * and a field its struct does not know is dropped on decode, so the
 * re-encoded signable bytes no longer match and the signature fails. This
 * check refuses, with a reason naming the field, any envelope a Meerkat
 * peer would misread; `kith send` and the node run it before signing for a
 * peer whose trust row says "profile": "meerkat". No allocation, no I/O. */
#ifndef KITH_PROTO_ENVELOPE_MEERKAT_H
#define KITH_PROTO_ENVELOPE_MEERKAT_H

#include <stddef.h>

#include "proto/envelope.h"

/* Meerkat's lifecycle kinds (PeerLifecycleKind). */
#define PROTO_MEERKAT_LIFECYCLE_KINDS "mob.peer_added, mob.peer_retired, mob.peer_unwired"

/* Returns 0 when a Meerkat peer can decode env and re-verify its signature;
 * -1 with a one-line reason in why[whycap] (e.g. "kind.params.blob: a byte
 * string has no JSON form") otherwise. */
int proto_envelope_meerkat_check(const proto_envelope_t *env, char *why, size_t whycap)
    __attribute__((warn_unused_result));

#endif
