/* tools/kith/cmd_audit.c — `kith audit verify|tail|query`: the audit log
 * read offline, straight from the file (WIRE §21), so it works with the
 * daemon stopped, beside a running one, or on a copy elsewhere. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "audit/chain.h"
#include "audit/record.h"
#include "router/state/config.h"
#include "router/state/home.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

static const char s_usage[] =
    "usage: kith audit verify [FILE] [--hmac-key-env VAR] [--no-head]\n"
    "       kith audit tail   [-n N] [FILE]\n"
    "       kith audit query  [--type T] [--since MS] [--limit N] [FILE]\n"
    "       (each also takes --home DIR and --config FILE)\n"
    "\n"
    "Reads the audit log (default: audit.path under the home, audit.log).\n"
    "  verify  recomputes every record's hash (and HMAC with a key), checks the\n"
    "          chain and the head file FILE.head, back through the files rotation\n"
    "          kept (FILE.<seq of their first record>, oldest first); exit 0 when\n"
    "          intact, 1 naming the first bad record (changed, missing, or cut off\n"
    "          at the end).\n"
    "          The key comes from --hmac-key-env, else audit.hmac_key_env.\n"
    "          --no-head skips the head file (a log copied without it).\n"
    "  tail    prints the last N records (default 10), one JSON line each,\n"
    "          reading the rotated files too when FILE holds fewer.\n"
    "  query   prints the newest matching records (default limit 100, at most\n"
    "          1000), oldest first: --type T, --since MS (Unix ms, time_ms >= MS).\n"
    "  tail and query exit 1, after printing what they found, when FILE ends\n"
    "  inside a line (a torn record, as a crash can leave), as verify does.\n";

typedef struct {
    const char *home_flag;
    const char *config_flag;
    const char *key_env;       /* --hmac-key-env */
    bool no_head;
    bool has_since;
    uint64_t since_ms;
    const char *type;
    uint32_t limit;
} s_args_t;

static int s_uint_arg(const char *flag, const char *text, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v > max) {
        fprintf(stderr, "kith audit: %s must be a number from 0 to %llu; see kith audit --help\n",
                flag, (unsigned long long) max);
        return -1;
    }
    *out = v;
    return 0;
}

/* The log's path: FILE, else audit.path from the configuration (relative
 * to the home). Also fills *cfg. */
static int s_log_path(const s_args_t *a, const char *verb, const char *file, router_config_t *cfg,
                      char *out, size_t cap)
{
    char home[ROUTER_PATH_MAX], err[KITH_ERR_MAX] = "";
    router_config_defaults(cfg);
    bool have_home = router_home_resolve(a->home_flag, home, sizeof home) == 0;
    if (have_home && router_config_load(cfg, home, a->config_flag, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "kith audit: %s\n", err);
        return -1;
    }
    if (file) {
        /* A log named on the command line must be there: a mistyped path
         * read as an empty log, and verify said "intact: 0 records", exit
         * 0. (The home's own log may not exist yet: no daemon has run.) */
        struct stat st;
        if (stat(file, &st) != 0 && errno == ENOENT) {
            fprintf(stderr, "kith audit %s: %s: no such file; name an audit log, or none to "
                            "read the home's (audit.path)\n", verb, file);
            return -1;
        }
        snprintf(out, cap, "%s", file);
        return 0;
    }
    if (!have_home) {
        fprintf(stderr, "kith audit: no home directory: pass FILE, --home DIR or set KITH_HOME\n");
        return -1;
    }
    if (cfg->audit.path[0] == '/') {
        snprintf(out, cap, "%s", cfg->audit.path);
        return 0;
    }
    if (router_home_path(home, cfg->audit.path, out, cap) != 0) {
        fprintf(stderr, "kith audit: the audit log's path is too long; pass FILE, or give a "
                        "shorter audit.path\n");
        return -1;
    }
    return 0;
}

static int s_verify(const s_args_t *a, const char *path, const router_config_t *cfg)
{
    audit_key_t key;
    char err[256];
    const char *env = a->key_env ? a->key_env : cfg->audit.hmac_key_env;
    if (audit_key_from_env(&key, env, err, sizeof err) != 0) {
        if (a->key_env) {
            fprintf(stderr, "kith audit verify: %s\n", err);
            return KITH_EXIT_FAIL;
        }
        fprintf(stderr, "kith audit verify: %s: HMACs are not checked\n", err);
        memset(&key, 0, sizeof key);
    }
    audit_verify_opts_t vo = {.key = &key, .no_head = a->no_head};
    audit_verify_result_t r;
    int rc = audit_chain_verify(path, &vo, &r);
    audit_key_clear(&key);
    if (rc == 0) {
        char span[96] = "";
        if (r.files > 1 || r.first_seq > 1)
            snprintf(span, sizeof span, " in %u file%s, from record %llu%s", r.files,
                     r.files > 1 ? "s" : "", (unsigned long long) r.first_seq,
                     r.first_seq > 1 ? " (older ones rotated away)" : "");
        printf("%s: intact: %llu records%s%s\n", path, (unsigned long long) r.records, span,
               r.hmac_seen_unchecked ? " (HMACs present but not checked: no key)" : "");
        return KITH_EXIT_OK;
    }
    if (r.has_first_bad) {
        printf("%s: first bad record: %llu (%s): %s\n", path, (unsigned long long) r.first_bad,
               audit_verify_reason_str(r.reason), r.detail);
        fprintf(stderr, "kith audit verify: %s: record %llu is bad (%s); %llu records before it are intact\n",
                path, (unsigned long long) r.first_bad, audit_verify_reason_str(r.reason),
                (unsigned long long) r.records);
    } else {
        printf("%s: not verified (%s): %s\n", path, audit_verify_reason_str(r.reason), r.detail);
        fprintf(stderr, "kith audit verify: %s: %s\n", path, r.detail);
    }
    return KITH_EXIT_FAIL;
}

/* How far back s_torn_end looks for the start of the torn line. */
#define S_TORN_SCAN_MAX (1024u * 1024u)

/* Whether the log at path ends inside a line, as verify reports it (torn):
 * a crash after a preallocation can leave a file of zero bytes, whose
 * "lines" the query skips, so tail printed nothing and said all was well.
 * Describes the torn part in msg. A file that cannot be read now is left
 * to the query, which read it. */
static bool s_torn_end(const char *path, char *msg, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    uint8_t buf[4096];
    bool torn = false;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0 ||
        pread(fd, buf, 1, st.st_size - 1) != 1 || buf[0] == '\n')
        goto done;
    torn = true;
    /* Back to the last newline, to say where the torn line starts and
     * whether it is all zero bytes. */
    off_t end = st.st_size, at = end;
    bool zeros = true, found = false;
    while (at > 0 && end - at < (off_t) S_TORN_SCAN_MAX && !found) {
        size_t n = at < (off_t) sizeof buf ? (size_t) at : sizeof buf;
        if (pread(fd, buf, n, at - (off_t) n) != (ssize_t) n)
            break;
        size_t i = n;
        while (i > 0 && buf[i - 1] != '\n') {
            zeros = zeros && buf[i - 1] == 0;
            i--;
        }
        found = i > 0;
        at -= (off_t) (n - i);
    }
    if (found || at == 0)
        snprintf(msg, cap, "the log ends inside a line (%lld %sbytes at offset %lld, no newline)",
                 (long long) (end - at), zeros ? "zero " : "", (long long) at);
    else
        snprintf(msg, cap, "the log ends inside a line (no newline in its last %lld bytes)",
                 (long long) (end - at));
done:
    close(fd);
    return torn;
}

static int s_print(const char *verb, const char *path, const audit_query_t *q)
{
    audit_lines_t l;
    audit_error_t err = {0};
    if (audit_chain_query(path, q, &l, &err) != 0) {
        fprintf(stderr, "kith audit: %s\n", err.msg);
        return KITH_EXIT_FAIL;
    }
    for (size_t i = 0; i < l.n; i++)
        printf("%s\n", l.lines[i]);
    audit_lines_free(&l);
    char torn[160];
    if (s_torn_end(path, torn, sizeof torn)) {
        fprintf(stderr, "kith audit %s: %s: %s: a torn record, not shown; kith audit verify says "
                        "more\n", verb, path, torn);
        return KITH_EXIT_FAIL;
    }
    return KITH_EXIT_OK; /* a write that failed is said once, by main */
}

int kith_cmd_audit(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "kith audit: expected verify, tail or query; see kith audit --help for the "
                        "usage\n");
        return KITH_EXIT_FAIL;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(s_usage, stdout);
        return KITH_EXIT_OK;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "verify") && strcmp(verb, "tail") && strcmp(verb, "query")) {
        fprintf(stderr, "kith audit: unknown subcommand '%s'; see kith audit --help\n", verb);
        return KITH_EXIT_FAIL;
    }
    enum { S_HOME = 256, S_CONFIG, S_KEY_ENV, S_NO_HEAD, S_TYPE, S_SINCE, S_LIMIT };
    static const struct option flags[] = {
        {"home", required_argument, NULL, S_HOME},
        {"config", required_argument, NULL, S_CONFIG},
        {"hmac-key-env", required_argument, NULL, S_KEY_ENV},
        {"no-head", no_argument, NULL, S_NO_HEAD},
        {"type", required_argument, NULL, S_TYPE},
        {"since", required_argument, NULL, S_SINCE},
        {"limit", required_argument, NULL, S_LIMIT},
        {"lines", required_argument, NULL, 'n'},
        {0},
    };
    char cmdname[32];
    snprintf(cmdname, sizeof cmdname, "audit %s", verb);
    /* -n N (and -nN) is tail's habit: a short flag, so getopt tells it
     * from another flag's value (`--type -n`). */
    kith_opts_t o = {.argc = argc - 1, .argv = argv + 1, .cmd = cmdname, .help = "audit",
                     .longopts = flags, .shorts = "n:"};
    s_args_t a = {.limit = strcmp(verb, "tail") ? 100 : 10};
    uint64_t v;
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP: fputs(s_usage, stdout); return KITH_EXIT_OK;
        case S_HOME: a.home_flag = optarg; break;
        case S_CONFIG: a.config_flag = optarg; break;
        case S_KEY_ENV: a.key_env = optarg; break;
        case S_NO_HEAD: a.no_head = true; break;
        case S_TYPE: a.type = optarg; break;
        case S_SINCE:
            if (s_uint_arg("--since", optarg, UINT64_MAX, &a.since_ms) != 0)
                return KITH_EXIT_FAIL;
            a.has_since = true;
            break;
        case 'n':
        case S_LIMIT:
            if (s_uint_arg(c == 'n' ? "-n" : "--limit", optarg, 1000, &v) != 0)
                return KITH_EXIT_FAIL;
            a.limit = (uint32_t) v;
            break;
        default: return KITH_EXIT_FAIL;
        }
    }
    int rest = kith_opts_rest(&o);
    int nargs = argc - 1 - rest;
    if (nargs > 1) {
        fprintf(stderr, "kith audit %s: unexpected argument '%s'; see kith audit --help\n", verb,
                argv[1 + rest + 1]);
        return KITH_EXIT_FAIL;
    }
    const char *file = nargs == 1 ? argv[1 + rest] : NULL;
    if (sodium_init() < 0) {
        fprintf(stderr, "kith audit: libsodium failed to start\n");
        return KITH_EXIT_FAIL;
    }
    router_config_t cfg;
    char path[ROUTER_PATH_MAX];
    if (s_log_path(&a, verb, file, &cfg, path, sizeof path) != 0)
        return KITH_EXIT_FAIL;
    if (!strcmp(verb, "verify"))
        return s_verify(&a, path, &cfg);
    audit_query_t q = {.limit = a.limit, .type = a.type, .has_since = a.has_since,
                       .since_ms = a.since_ms};
    return s_print(verb, path, &q);
}
