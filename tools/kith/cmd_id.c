/* tools/kith/cmd_id.c — `kith id` (placeholder until its issue lands). */
#include <stdio.h>

#include "tools/kith/cmd.h"

int kith_cmd_id(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "kith id: not built yet\n");
    return KITH_EXIT_FAIL;
}
