/* tools/kith/cli_opts.h — the commands' argument parsing: getopt_long with
 * kith's one-line errors, so every command reads flags the same way
 * (`--flag VALUE` or `--flag=VALUE`, flags and operands in any order, `--`
 * ends the flags, `-h`/`--help` everywhere). */
#ifndef KITH_CLI_OPTS_H
#define KITH_CLI_OPTS_H

#include <getopt.h>
#include <stdbool.h>

#include "router/state/home.h"

/* Room for one error line: a reason may name two paths of up to
 * ROUTER_PATH_MAX each ("no identity at PATH; run: kith keygen --home
 * HOME"), and the reason and its fix come after them, so a smaller buffer
 * would cut exactly the part that says what to do. */
#define KITH_ERR_MAX (2 * ROUTER_PATH_MAX + 512)

/* What kith_opts_next() returns besides an option's `val`. */
enum {
    KITH_OPT_END = -1,   /* no flags left: operands are argv[kith_opts_rest()..argc) */
    KITH_OPT_ERROR = -2, /* a bad flag; the one-line error is printed: exit KITH_EXIT_FAIL */
    KITH_OPT_HELP = 'h', /* -h or --help: print the usage on stdout, exit KITH_EXIT_OK */
};

/* One pass over a command's argv (argv[0] is the command's own name). */
typedef struct {
    int argc;
    char **argv;                 /* permuted by getopt_long: operands end up last */
    const char *cmd;             /* "peers add": names the command in errors */
    const char *help;            /* "peers": `kith <help> --help` is the fix errors name */
    const struct option *longopts; /* the command's flags, {0} ended; --help is added */
    const char *shorts;          /* short flags beyond -h in getopt's syntax ("n:"), or NULL;
                                  * each one's val is its letter */
    bool started;                /* getopt has been reset for this argv */
} kith_opts_t;

/* The next flag: its `val`, or one of KITH_OPT_END, KITH_OPT_ERROR (the
 * error already printed: "kith peers add: unknown option '--x'; see kith
 * peers --help") or KITH_OPT_HELP. A flag's value is in optarg. */
int kith_opts_next(kith_opts_t *o);

/* The index of the first operand, once kith_opts_next returned KITH_OPT_END. */
int kith_opts_rest(const kith_opts_t *o);

/* A message from elsewhere made fit for a one-line error, in place:
 * control characters become spaces (yajl ends its parse errors with a line
 * break) and trailing spaces are dropped. Returns text. */
char *kith_one_line(char *text);

#endif
