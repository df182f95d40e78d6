/* tools/kith/cmd_keygen.c — `kith keygen`: create this node's identity. */
#include "router/state/identity.h"
#include "tools/kith/cmd.h"
#include "tools/kith/cmd_identity.h"

static const char s_usage[] =
    "usage: kith keygen [--home DIR] [--import-meerkat MDIR]\n"
    "\n"
    "Creates an Ed25519 identity in DIR/identity/ (identity.key, mode 0600, and\n"
    "identity.pub) and prints {\"pubkey\":\"ed25519:…\",\"peer_id\":\"…\"}.\n"
    "Never replaces an existing identity.key.\n"
    "\n"
    "  --home DIR            state directory (else $KITH_HOME, else ~/.kith)\n"
    "  --import-meerkat MDIR take the key from a Meerkat identity directory instead of\n"
    "                        making one: MDIR/identity.key, the raw 32-byte Ed25519 seed\n"
    "                        (mode 0600), and MDIR/identity.pub, the raw 32-byte public\n"
    "                        key (optional; must match). The PeerId is the one Meerkat\n"
    "                        computes. spec/WIRE.md §23.5\n";

int kith_cmd_keygen(int argc, char **argv)
{
    return kith_identity_cmd_run(argc, argv, "keygen", s_usage, router_identity_create);
}
