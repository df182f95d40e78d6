/* tools/kith/cmd_id.c — `kith id`: print this node's public key and PeerId. */
#include "router/state/identity.h"
#include "tools/kith/cmd.h"
#include "tools/kith/cmd_identity.h"

static const char s_usage[] =
    "usage: kith id [--home DIR] [--export-meerkat MDIR]\n"
    "\n"
    "Prints {\"pubkey\":\"ed25519:…\",\"peer_id\":\"…\"} for the identity in DIR/identity/;\n"
    "peer_id is the UUIDv5 of the public key (DESIGN §8). Give both to peers\n"
    "that should trust this node (kith peers add).\n"
    "\n"
    "  --home DIR            state directory (else $KITH_HOME, else ~/.kith)\n"
    "  --export-meerkat MDIR also write the identity as Meerkat keeps it: MDIR/identity.key\n"
    "                        (raw 32-byte seed, mode 0600) and MDIR/identity.pub (raw\n"
    "                        32-byte public key); never replaces either. spec/WIRE.md §23.5\n";

int kith_cmd_id(int argc, char **argv)
{
    return kith_identity_cmd_run(argc, argv, "id", s_usage, router_identity_load);
}
