/* tools/kith/cmd_id.c — `kith id`: print this node's public key and PeerId. */
#include <stdio.h>
#include <string.h>

#include "router/home.h"
#include "router/identity.h"
#include "tools/kith/cmd.h"

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kith id [--home DIR]\n"
            "\n"
            "Prints {\"pubkey\":\"ed25519:…\",\"peer_id\":\"…\"} for the identity in DIR/identity/;\n"
            "peer_id is the UUIDv5 of the public key (DESIGN §8). Give both to peers\n"
            "that should trust this node (kith peers add).\n"
            "\n"
            "  --home DIR  state directory (else $KITH_HOME, else ~/.kith)\n");
}

int kith_cmd_id(int argc, char **argv)
{
    const char *home_flag = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return KITH_EXIT_OK;
        } else if (!strcmp(argv[i], "--home") && i + 1 < argc) {
            home_flag = argv[++i];
        } else {
            fprintf(stderr, "kith id: unexpected argument '%s'; see kith id --help\n", argv[i]);
            return KITH_EXIT_FAIL;
        }
    }
    char home[ROUTER_PATH_MAX];
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith id: no home directory; pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    if (router_identity_load(home, &id, err, sizeof err) != 0) {
        fprintf(stderr, "kith id: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    char json[ROUTER_IDENTITY_JSON_CAP];
    router_identity_json(&id, json);
    router_identity_wipe(&id);
    printf("%s\n", json);
    return KITH_EXIT_OK;
}
