/* tools/kith/cmd_identity.h — what `kith id` and `kith keygen` share: the
 * `[--home DIR]` command line and printing the identity as one JSON line. */
#ifndef KITH_CMD_IDENTITY_H
#define KITH_CMD_IDENTITY_H

#include <stddef.h>

#include "router/state/identity.h"

/* How a command gets its identity: router_identity_load or _create. */
typedef int (*kith_identity_get_fn)(const char *home, router_identity_t *out, char *err,
                                    size_t errcap);

/* Runs `kith <name> [--home DIR]`: --help/-h prints `usage` to stdout;
 * otherwise resolves the home, calls `get` and prints router_identity_json's
 * line. Errors go to stderr as "kith <name>: …". Returns the exit code. */
int kith_identity_cmd_run(int argc, char **argv, const char *name, const char *usage,
                          kith_identity_get_fn get);

#endif
