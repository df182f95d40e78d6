/* tools/kith/cmd_paircode.c — `kith paircode`: ask the running daemon for a
 * fresh one-time pairing code (GET /admin/paircode on the configured
 * gateway address, a loopback route; tools/kith/admin_http.c) and print it. */
#include <stdio.h>
#include <string.h>

#include "tools/kith/admin_http.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

static const char s_usage[] =
    "usage: kith paircode [--home DIR] [--config FILE]\n"
    "\n"
    "Asks the running daemon (gateway.host:gateway.port) for a new one-time\n"
    "pairing code and prints it. Pair with: curl -X POST -H 'X-Pairing-Code: CODE'\n"
    "http://HOST:PORT/pair. Exit 0 with the code, 1 when the daemon is not running.\n"
    "\n"
    "  --home DIR     state directory (else $KITH_HOME, else ~/.kith)\n"
    "  --config FILE  configuration file (else DIR/config.json)\n";

int kith_cmd_paircode(int argc, char **argv)
{
    const char *home_flag = NULL, *config_flag = NULL;
    enum { S_HOME = 256, S_CONFIG };
    static const struct option flags[] = {
        {"home", required_argument, NULL, S_HOME},
        {"config", required_argument, NULL, S_CONFIG},
        {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "paircode", .help = "paircode",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP: fputs(s_usage, stdout); return KITH_EXIT_OK;
        case S_HOME: home_flag = optarg; break;
        case S_CONFIG: config_flag = optarg; break;
        default: return KITH_EXIT_FAIL;
        }
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith paircode: unexpected argument '%s'; see kith paircode --help\n",
                argv[kith_opts_rest(&o)]);
        return KITH_EXIT_FAIL;
    }
    char err[KITH_ERR_MAX];
    kith_admin_answer_t ans;
    if (kith_admin_call("paircode", home_flag, config_flag, "GET", "/admin/paircode", NULL, &ans,
                        err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return KITH_EXIT_FAIL;
    }
    const char *code = ans.status == 200 ? strstr(ans.body, "\"code\":\"") : NULL;
    if (!code) {
        char shown[KITH_ADMIN_LINE_CAP];
        fprintf(stderr, "kith paircode: /admin/paircode answered %d: %s\n", ans.status,
                kith_admin_line(ans.body, shown));
        kith_admin_answer_free(&ans);
        return KITH_EXIT_FAIL;
    }
    code += 8;
    size_t n = strspn(code, "0123456789");
    int rc = KITH_EXIT_OK;
    if (n != 6 || code[n] != '"') {
        char shown[KITH_ADMIN_LINE_CAP];
        fprintf(stderr, "kith paircode: unexpected answer: %s\n", kith_admin_line(ans.body, shown));
        rc = KITH_EXIT_FAIL;
    } else {
        printf("%.6s\n", code);
    }
    kith_admin_answer_free(&ans);
    return rc;
}
