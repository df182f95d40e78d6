/* tools/kith/cli_opts.c — getopt_long for the commands, with kith's errors. */
#include "tools/kith/cli_opts.h"

#include <stdio.h>
#include <string.h>

/* Room for a command's flags and the --help every command takes. */
#define S_OPTS_MAX 16

int kith_opts_next(kith_opts_t *o)
{
    struct option all[S_OPTS_MAX + 2];
    size_t n = 0;
    for (; o->longopts && o->longopts[n].name && n < S_OPTS_MAX; n++)
        all[n] = o->longopts[n];
    all[n++] = (struct option) {"help", no_argument, NULL, KITH_OPT_HELP};
    all[n] = (struct option) {0};

    if (!o->started) {
        optind = 0; /* glibc: start over, with a fresh argv */
        o->started = true;
    }
    opterr = 0; /* errors are printed below, in kith's words */
    int c = getopt_long(o->argc, o->argv, ":h", all, NULL);
    if (c == -1)
        return KITH_OPT_END;
    if (c == '?' || c == ':') {
        const char *arg = optind > 0 && optind <= o->argc ? o->argv[optind - 1] : "?";
        if (c == ':')
            fprintf(stderr, "kith %s: %s needs a value; see kith %s --help\n", o->cmd, arg,
                    o->help);
        else if (arg[0] == '-' && arg[1] == '-')
            fprintf(stderr, "kith %s: unknown option '%s'; see kith %s --help\n", o->cmd, arg,
                    o->help);
        else
            fprintf(stderr, "kith %s: unknown option '-%c'; see kith %s --help\n", o->cmd,
                    optopt ? optopt : '?', o->help);
        return KITH_OPT_ERROR;
    }
    return c;
}

int kith_opts_rest(const kith_opts_t *o)
{
    (void) o;
    return optind;
}
