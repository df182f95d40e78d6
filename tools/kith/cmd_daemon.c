/* tools/kith/cmd_daemon.c — `kith daemon`: run the router until SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "router/home.h"
#include "tools/kith/cmd.h"

int kith_cmd_daemon(int argc, char **argv)
{
    const char *home_flag = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--home") && i + 1 < argc)
            home_flag = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: kith daemon [--home DIR]\n");
            return KITH_EXIT_OK;
        }
    }
    char home[ROUTER_PATH_MAX];
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith daemon: no home directory; pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    fprintf(stderr, "kith daemon: home %s; waiting for SIGINT/SIGTERM\n", home);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "kith daemon: %s, stopping\n", strsignal(sig));
    return KITH_EXIT_OK;
}
