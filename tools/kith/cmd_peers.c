/* tools/kith/cmd_peers.c — `kith peers` (placeholder until its issue lands). */
#include <stdio.h>

#include "tools/kith/cmd.h"

int kith_cmd_peers(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "kith peers: not built yet\n");
    return KITH_EXIT_FAIL;
}
