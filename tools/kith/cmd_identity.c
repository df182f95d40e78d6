/* tools/kith/cmd_identity.c — the shared body of `kith id` and `kith keygen`. */
#include "tools/kith/cmd_identity.h"

#include <stdio.h>
#include <string.h>

#include "router/state/home.h"
#include "tools/kith/cmd.h"

int kith_identity_cmd_run(int argc, char **argv, const char *name, const char *usage,
                          kith_identity_get_fn get)
{
    const char *home_flag = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return KITH_EXIT_OK;
        } else if (!strcmp(argv[i], "--home") && i + 1 < argc) {
            home_flag = argv[++i];
        } else {
            fprintf(stderr, "kith %s: unexpected argument '%s'; see kith %s --help\n", name,
                    argv[i], name);
            return KITH_EXIT_FAIL;
        }
    }
    char home[ROUTER_PATH_MAX];
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith %s: no home directory; pass --home DIR or set KITH_HOME\n", name);
        return KITH_EXIT_FAIL;
    }
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    if (get(home, &id, err, sizeof err) != 0) {
        fprintf(stderr, "kith %s: %s\n", name, err);
        return KITH_EXIT_FAIL;
    }
    char json[ROUTER_IDENTITY_JSON_CAP];
    router_identity_json(&id, json);
    router_identity_wipe(&id);
    printf("%s\n", json);
    return KITH_EXIT_OK;
}
