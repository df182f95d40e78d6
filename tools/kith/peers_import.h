/* tools/kith/peers_import.h — reading a Meerkat trusted_peers.json into kith's
 * trust store (`kith peers import`, spec/WIRE.md §23.5).
 *
 * Meerkat's file has kith's shape ({"peers": [{"name", "pubkey", "addr",
 * "meta"}]}) but a looser reader: any non-blank name, unknown keys ignored.
 * kith's own file stays strict, so importing translates row by row: a name
 * kith cannot hold is renamed, unknown keys are left behind, and a row kith
 * cannot trust (bad key or address, a PeerId already trusted) is dropped;
 * each of these is reported. Imported rows get "profile": "meerkat". */
#ifndef KITH_PEERS_IMPORT_H
#define KITH_PEERS_IMPORT_H

#include <stddef.h>
#include <stdio.h>

#include "router/state/trust.h"

/* What one import did. */
typedef struct {
    size_t imported; /* rows added */
    size_t renamed;  /* of those, added under another name */
    size_t dropped;  /* rows left out */
} kith_peers_import_t;

/* Adds the rows of the Meerkat document text[len] to `into`, writing one
 * line per renamed, trimmed or dropped row to `report`. Returns 0 with *out
 * filled, or -1 with err set when the document itself is unreadable (not
 * JSON, no "peers" array, too large); `into` may then hold some rows. */
int kith_peers_import_meerkat(router_trust_t *into, const char *text, size_t len, FILE *report,
                              kith_peers_import_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

#endif
