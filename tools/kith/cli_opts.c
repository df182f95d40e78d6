/* tools/kith/cli_opts.c — getopt_long for the commands, with kith's errors. */
#include "tools/kith/cli_opts.h"

#include <stdio.h>
#include <string.h>

/* Room for a command's flags and the --help every command takes. */
#define S_OPTS_MAX 16
/* Room for a command's short flags ("n:"), beyond -h. */
#define S_SHORTS_MAX 16

/* The flag `--name=VALUE` in arg names when glibc refused it for taking no
 * value (opt, glibc's optopt, is then its val), or NULL: an unknown flag,
 * or a short one. */
static const struct option *s_given(const struct option *all, const char *arg, int opt)
{
    const char *eq = strchr(arg, '=');
    if (opt == 0 || arg[0] != '-' || arg[1] != '-' || !eq)
        return NULL;
    size_t len = (size_t) (eq - arg - 2);
    for (const struct option *f = all; f->name; f++)
        if (f->val == opt && f->has_arg == no_argument && !strncmp(f->name, arg + 2, len))
            return f;
    return NULL;
}

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
    /* Short flags go to getopt too, never rewritten in argv beforehand:
     * only getopt knows which entries are other flags' values (`--type -n`
     * is a type named "-n"). */
    char shorts[S_SHORTS_MAX + 3] = ":h";
    if (o->shorts)
        snprintf(shorts + 2, sizeof shorts - 2, "%s", o->shorts);
    int at = -1;
    int c = getopt_long(o->argc, o->argv, shorts, all, &at);
    if (c == -1)
        return KITH_OPT_END;
    /* `--home ""` (`--home "$DIR"` with DIR unset) read as no --home at
     * all: the command went on in $KITH_HOME or ~/.kith, and kith daemon
     * made an identity there. */
    if (at >= 0 && !strcmp(all[at].name, "home") && optarg && !optarg[0]) {
        fprintf(stderr, "kith %s: --home is empty (an unset variable?); give a directory, or "
                        "leave --home out for $KITH_HOME or ~/.kith\n", o->cmd);
        return KITH_OPT_ERROR;
    }
    if (c == '?' || c == ':') {
        /* A long flag always moves optind past itself; a short one inside
         * a group (-xy) does not, so argv[optind - 1] names the bad flag
         * only when it is a long one. glibc's optopt tells which: 0 for an
         * unknown long flag, the letter for a short one, the flag's val
         * for a long one given a value it takes none of. */
        const char *arg = optind > 0 && optind <= o->argc ? o->argv[optind - 1] : "?";
        const struct option *given = s_given(all, arg, optopt);
        if (c == ':')
            fprintf(stderr, "kith %s: %s needs a value; see kith %s --help\n", o->cmd, arg,
                    o->help);
        else if (given)
            fprintf(stderr, "kith %s: --%s takes no value; see kith %s --help\n", o->cmd,
                    given->name, o->help);
        else if (optopt == 0 && arg[0] == '-' && arg[1] == '-')
            fprintf(stderr, "kith %s: unknown option '%s'; see kith %s --help\n", o->cmd, arg,
                    o->help);
        else
            fprintf(stderr, "kith %s: unknown option '-%c'; see kith %s --help\n", o->cmd,
                    optopt > 0 && optopt < 256 ? optopt : '?', o->help);
        return KITH_OPT_ERROR;
    }
    return c;
}

int kith_opts_rest(const kith_opts_t *o)
{
    (void) o;
    return optind;
}

char *kith_one_line(char *text)
{
    size_t n = 0;
    for (; text[n]; n++)
        if ((unsigned char) text[n] < 0x20 || text[n] == 0x7f)
            text[n] = ' ';
    while (n > 0 && text[n - 1] == ' ')
        text[--n] = '\0';
    return text;
}
