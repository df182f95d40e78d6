/* tools/kith/cmd_send.c — `kith send` (placeholder until its issue lands). */
#include <stdio.h>

#include "tools/kith/cmd.h"

int kith_cmd_send(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "kith send: not built yet\n");
    return KITH_EXIT_FAIL;
}
