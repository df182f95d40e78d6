/* router/state/identity_meerkat.h — bringing a Meerkat identity over, and
 * back (spec/WIRE.md §23.5).
 *
 * Meerkat keeps its key pair as two raw files in one directory:
 *   identity.key  the 32-byte Ed25519 seed (ed25519-dalek's secret key bytes)
 *   identity.pub  the 32-byte public key
 * kith keeps text lines (router/state/identity.h). The same seed gives the
 * same public key, so the same PeerId (UUIDv5 of the key) in both. */
#ifndef KITH_ROUTER_IDENTITY_MEERKAT_H
#define KITH_ROUTER_IDENTITY_MEERKAT_H

#include <stddef.h>

#include "router/state/identity.h"

/* Makes kith's identity under `home` from the Meerkat files in `dir`.
 * identity.key must be a regular file of exactly 32 bytes that group and
 * others cannot read; identity.pub, when present, must be 32 bytes naming
 * the same key. Never replaces an existing kith identity. Returns 0 with
 * *out filled, or -1 with a one-line reason in err (and *out wiped). */
int router_identity_import_meerkat(const char *home, const char *dir, router_identity_t *out,
                                   char *err, size_t errcap) __attribute__((warn_unused_result));

/* Writes this identity as Meerkat's two raw files into `dir` (made with mode
 * 0700 when missing): identity.key mode 0600, identity.pub 0644. Never
 * replaces either file. Returns 0, or -1 with err set. */
int router_identity_export_meerkat(const router_identity_t *id, const char *dir, char *err,
                                   size_t errcap) __attribute__((warn_unused_result));

#endif
