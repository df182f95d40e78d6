/* tools/kith/cmd_config.c — `kith config check [FILE]`: strict validation of
 * a config file, exit 0 when kith daemon would accept it, 1 otherwise. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/state/config.h"
#include "router/state/home.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kith config check [FILE] [--home DIR] [--print]\n"
            "\n"
            "Checks FILE (default: $KITH_HOME/config.json) the way `kith daemon` reads it:\n"
            "JSON with comments, every key known, every value of the right type and range.\n"
            "Prints one line naming the first problem and exits 1, or exits 0.\n"
            "With no FILE and no config.json in the home, the defaults apply (exit 0).\n"
            "\n"
            "  --home DIR  state directory (else $KITH_HOME, else ~/.kith)\n"
            "  --print     print the effective configuration as JSON\n");
}

static int s_check(int argc, char **argv)
{
    const char *file = NULL, *home_flag = NULL;
    bool print = false;
    static const struct option flags[] = {
        {"home", required_argument, NULL, 'H'},
        {"print", no_argument, NULL, 'p'},
        {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "config check", .help = "config check",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP:
            s_usage(stdout);
            return KITH_EXIT_OK;
        case 'H':
            home_flag = optarg;
            break;
        case 'p':
            print = true;
            break;
        default:
            return KITH_EXIT_FAIL;
        }
    }
    int rest = kith_opts_rest(&o);
    if (argc - rest > 1) {
        fprintf(stderr, "kith config check: one FILE at most; see kith config check --help\n");
        return KITH_EXIT_FAIL;
    }
    if (rest < argc)
        file = argv[rest];
    char home[ROUTER_PATH_MAX] = "";
    if (!file && router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith config check: no home directory; pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    router_config_t *cfg = malloc(sizeof *cfg);
    if (!cfg) {
        fprintf(stderr, "kith config check: out of memory\n");
        return KITH_EXIT_FAIL;
    }
    char err[KITH_ERR_MAX];
    bool used = false;
    int rc = KITH_EXIT_FAIL;
    if (router_config_load(cfg, home, file, &used, err, sizeof err) != 0) {
        fprintf(stderr, "kith config check: %s\n", err);
        goto done;
    }
    if (print) {
        char *json = router_config_to_json(cfg);
        if (!json) {
            fprintf(stderr, "kith config check: out of memory\n");
            goto done;
        }
        fputs(json, stdout);
        free(json);
    } else if (used) {
        printf("%s: ok\n", file ? file : ROUTER_CONFIG_FILE);
    } else {
        printf("no %s in %s: the defaults apply\n", ROUTER_CONFIG_FILE, home);
    }
    rc = KITH_EXIT_OK;
done:
    free(cfg);
    return rc;
}

int kith_cmd_config(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "check"))
        return s_check(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        s_usage(stdout);
        return KITH_EXIT_OK;
    }
    fprintf(stderr, "kith config: expected 'check'; see kith config --help\n");
    return KITH_EXIT_FAIL;
}
