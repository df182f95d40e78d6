/* tools/kith/cmd_identity.c — the shared body of `kith id` and `kith keygen`. */
#include "tools/kith/cmd_identity.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "router/state/home.h"
#include "router/state/identity_meerkat.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

int kith_identity_cmd_run(int argc, char **argv, const char *name, const char *usage,
                          kith_identity_get_fn get)
{
    const char *home_flag = NULL, *import_dir = NULL, *export_dir = NULL;
    bool keygen = strcmp(name, "keygen") == 0;
    static const struct option keygen_flags[] = {{"home", required_argument, NULL, 'H'},
                                                 {"import-meerkat", required_argument, NULL, 'I'},
                                                 {0}};
    static const struct option id_flags[] = {{"home", required_argument, NULL, 'H'},
                                             {"export-meerkat", required_argument, NULL, 'E'},
                                             {0}};
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = name, .help = name,
                     .longopts = keygen ? keygen_flags : id_flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        if (c == KITH_OPT_HELP) {
            fputs(usage, stdout);
            return KITH_EXIT_OK;
        }
        if (c == KITH_OPT_ERROR)
            return KITH_EXIT_FAIL;
        if (c == 'I')
            import_dir = optarg;
        else if (c == 'E')
            export_dir = optarg;
        else
            home_flag = optarg; /* 'H' */
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith %s: unexpected argument '%s'; see kith %s --help\n", name,
                argv[kith_opts_rest(&o)], name);
        return KITH_EXIT_FAIL;
    }
    char home[ROUTER_PATH_MAX];
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith %s: no home directory; pass --home DIR or set KITH_HOME\n", name);
        return KITH_EXIT_FAIL;
    }
    router_identity_t id;
    char err[KITH_ERR_MAX];
    int rc = import_dir ? router_identity_import_meerkat(home, import_dir, &id, err, sizeof err)
                        : get(home, &id, err, sizeof err);
    if (rc != 0) {
        /* Which of two folders a path in err is under: the flag says. */
        fprintf(stderr, "kith %s: %s%s\n", name, import_dir ? "--import-meerkat: " : "", err);
        return KITH_EXIT_FAIL;
    }
    if (export_dir && router_identity_export_meerkat(&id, export_dir, err, sizeof err) != 0) {
        router_identity_wipe(&id);
        fprintf(stderr, "kith %s: --export-meerkat: %s\n", name, err);
        return KITH_EXIT_FAIL;
    }
    char json[ROUTER_IDENTITY_JSON_CAP];
    router_identity_json(&id, json);
    router_identity_wipe(&id);
    printf("%s\n", json);
    return KITH_EXIT_OK;
}
