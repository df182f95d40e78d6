/* tools/kith/cmd_keygen.c — `kith keygen` (placeholder until its issue lands). */
#include <stdio.h>

#include "tools/kith/cmd.h"

int kith_cmd_keygen(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "kith keygen: not built yet\n");
    return KITH_EXIT_FAIL;
}
