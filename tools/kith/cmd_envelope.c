/* tools/kith/cmd_envelope.c — `kith envelope` (placeholder until its issue lands). */
#include <stdio.h>

#include "tools/kith/cmd.h"

int kith_cmd_envelope(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "kith envelope: not built yet\n");
    return KITH_EXIT_FAIL;
}
