/* tools/kith/cmd_tokens.c — `kith tokens list|mint|revoke`: the running
 * daemon's bearer tokens (WIRE §28) through its loopback /admin/tokens
 * routes, so an operator on the machine can see, mint and withdraw tokens
 * without holding one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <yajl/yajl_tree.h>

#include "tools/kith/admin_http.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

static const char s_usage[] =
    "usage: kith tokens list [--json]\n"
    "       kith tokens mint --scope node|operator --name NAME [--json]\n"
    "       kith tokens revoke ID\n"
    "       (each also takes [--home DIR] [--config FILE])\n"
    "\n"
    "The running daemon's bearer tokens, through its loopback admin routes\n"
    "(/admin/tokens on gateway.host:gateway.port): no token is needed.\n"
    "\n"
    "  list    one line per token: ID, scope, created (UTC), name\n"
    "  mint    a new token; prints the token itself (shown this once).\n"
    "          A node token opens /ws/nodes and nothing else.\n"
    "  revoke  refuses the token from now on and closes every socket and\n"
    "          event stream it opened\n"
    "\n"
    "  --json         print the daemon's JSON answer as it is\n"
    "  --home DIR     state directory (else $KITH_HOME, else ~/.kith)\n"
    "  --config FILE  configuration file (else DIR/config.json)\n"
    "\n"
    "Exit 0 done; 1 usage, the daemon not running, or a refusal (on stderr).\n";

/* The longest token name, in octets (WIRE §28). */
#define S_NAME_MAX 64

/* Flags every verb takes. */
typedef struct {
    const char *home, *config, *scope, *name;
    bool json;
} s_flags_t;

enum { S_HOME = 256, S_CONFIG, S_SCOPE, S_NAME, S_JSON };

/* Parses the verb's flags; its operands start at *rest. */
static int s_parse(int argc, char **argv, const char *verb, s_flags_t *f, int *rest)
{
    static const struct option flags[] = {
        {"home", required_argument, NULL, S_HOME},
        {"config", required_argument, NULL, S_CONFIG},
        {"scope", required_argument, NULL, S_SCOPE},
        {"name", required_argument, NULL, S_NAME},
        {"json", no_argument, NULL, S_JSON},
        {0},
    };
    char cmd[32];
    snprintf(cmd, sizeof cmd, "tokens %s", verb);
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = cmd, .help = "tokens", .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP: fputs(s_usage, stdout); return 1;
        case S_HOME: f->home = optarg; break;
        case S_CONFIG: f->config = optarg; break;
        case S_SCOPE: f->scope = optarg; break;
        case S_NAME: f->name = optarg; break;
        case S_JSON: f->json = true; break;
        default: return -1;
        }
    }
    *rest = kith_opts_rest(&o);
    return 0;
}

/* The call; a refusal's JSON error is said on stderr. Returns the answer's
 * body (caller frees) when its status is `want`, else NULL. */
static char *s_call(const s_flags_t *f, const char *verb, const char *method, const char *path,
                    const char *body, int want)
{
    char err[KITH_ERR_MAX];
    kith_admin_answer_t ans;
    if (kith_admin_call("tokens", f->home, f->config, method, path, body, &ans, err,
                        sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    if (ans.status == want)
        return ans.body;
    const char *epath[] = {"error", NULL};
    yajl_val doc = yajl_tree_parse(ans.body, NULL, 0);
    yajl_val e = doc ? yajl_tree_get(doc, epath, yajl_t_string) : NULL;
    char shown[KITH_ADMIN_LINE_CAP];
    fprintf(stderr, "kith tokens %s: the daemon answered %d: %s\n", verb, ans.status,
            kith_admin_line(e ? YAJL_GET_STRING(e) : ans.body, shown));
    yajl_tree_free(doc);
    kith_admin_answer_free(&ans);
    return NULL;
}

static yajl_val s_member(yajl_val obj, const char *name, yajl_type type)
{
    const char *path[] = {name, NULL};
    return yajl_tree_get(obj, path, type);
}

static int s_list(const s_flags_t *f)
{
    char *body = s_call(f, "list", "GET", "/admin/tokens", NULL, 200);
    if (!body)
        return KITH_EXIT_FAIL;
    if (f->json) {
        printf("%s\n", body);
        free(body);
        return KITH_EXIT_OK;
    }
    yajl_val doc = yajl_tree_parse(body, NULL, 0);
    yajl_val all = doc ? s_member(doc, "tokens", yajl_t_array) : NULL;
    if (!all) {
        char shown[KITH_ADMIN_LINE_CAP];
        fprintf(stderr, "kith tokens list: unexpected answer: %s\n", kith_admin_line(body, shown));
        yajl_tree_free(doc);
        free(body);
        return KITH_EXIT_FAIL;
    }
    for (size_t i = 0; i < YAJL_GET_ARRAY(all)->len; i++) {
        yajl_val t = YAJL_GET_ARRAY(all)->values[i];
        yajl_val id = s_member(t, "id", yajl_t_string), scope = s_member(t, "scope", yajl_t_string),
                 name = s_member(t, "name", yajl_t_string),
                 created = s_member(t, "created_ms", yajl_t_number);
        char when[32] = "?";
        if (created && YAJL_IS_INTEGER(created)) {
            time_t secs = (time_t) (YAJL_GET_INTEGER(created) / 1000);
            struct tm tm;
            if (gmtime_r(&secs, &tm))
                strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        /* The name as one line on a terminal (the daemon's answer is not
         * trusted to be clean), and no trailing spaces for a token with none. */
        char shown[KITH_ADMIN_LINE_CAP];
        const char *nm = name ? kith_admin_line(YAJL_GET_STRING(name), shown) : "";
        printf("%s  %-8s  %s%s%s\n", id ? YAJL_GET_STRING(id) : "?",
               scope ? YAJL_GET_STRING(scope) : "?", when, *nm ? "  " : "", nm);
    }
    /* Nothing at all read as "the command did nothing"; say so, and how
     * a token is made. */
    if (YAJL_GET_ARRAY(all)->len == 0)
        printf("no tokens: pair a client with the code kith paircode prints, or mint one "
               "(kith tokens mint)\n");
    yajl_tree_free(doc);
    free(body);
    return KITH_EXIT_OK;
}

/* Appends s to out as a JSON string (quotes and escapes); false when it
 * does not fit. */
static bool s_json_string(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    if (cap < 3)
        return false;
    out[n++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char) *s;
        if (n + 7 >= cap)
            return false;
        if (ch == '"' || ch == '\\')
            n += (size_t) snprintf(out + n, cap - n, "\\%c", ch);
        else if (ch < 0x20)
            n += (size_t) snprintf(out + n, cap - n, "\\u%04x", ch);
        else
            out[n++] = (char) ch;
    }
    out[n++] = '"';
    out[n] = '\0';
    return true;
}

static int s_mint(const s_flags_t *f)
{
    if (!f->scope || !f->name) {
        fprintf(stderr, "kith tokens mint: --scope and --name are required; see kith tokens "
                        "--help\n");
        return KITH_EXIT_FAIL;
    }
    /* Whether scope and name are ones the daemon takes is its to say (its
     * 400 is shown); only what cannot be sent at all is refused here. */
    char scope[64], name[512], body[sizeof scope + sizeof name + 32];
    if (!s_json_string(scope, sizeof scope, f->scope) ||
        !s_json_string(name, sizeof name, f->name)) {
        fprintf(stderr, "kith tokens mint: --%s is too long: a token's name is 1 to %d octets, "
                        "its scope node or operator\n",
                strlen(f->scope) > 16 ? "scope" : "name", S_NAME_MAX);
        return KITH_EXIT_FAIL;
    }
    snprintf(body, sizeof body, "{\"scope\":%s,\"name\":%s}", scope, name);
    char *ans = s_call(f, "mint", "POST", "/admin/tokens", body, 201);
    if (!ans)
        return KITH_EXIT_FAIL;
    int rc = KITH_EXIT_OK;
    yajl_val doc = f->json ? NULL : yajl_tree_parse(ans, NULL, 0);
    yajl_val token = doc ? s_member(doc, "token", yajl_t_string) : NULL;
    if (f->json)
        printf("%s\n", ans);
    else if (token)
        printf("%s\n", YAJL_GET_STRING(token));
    else {
        fprintf(stderr, "kith tokens mint: unexpected answer\n");
        rc = KITH_EXIT_FAIL;
    }
    yajl_tree_free(doc);
    free(ans);
    return rc;
}

static int s_revoke(const s_flags_t *f, const char *id)
{
    /* The id goes into a path: 16 lowercase hex digits, nothing else. */
    if (strlen(id) != 16 || strspn(id, "0123456789abcdef") != 16) {
        fprintf(stderr, "kith tokens revoke: %s is not a token id (16 hex digits, as `kith "
                        "tokens list` shows)\n", id);
        return KITH_EXIT_FAIL;
    }
    char path[64];
    snprintf(path, sizeof path, "/admin/tokens/%s", id);
    char *ans = s_call(f, "revoke", "DELETE", path, NULL, 200);
    if (!ans)
        return KITH_EXIT_FAIL;
    yajl_val doc = yajl_tree_parse(ans, NULL, 0);
    yajl_val closed = doc ? s_member(doc, "closed", yajl_t_number) : NULL;
    printf("revoked %s (%lld connections closed)\n", id,
           closed && YAJL_IS_INTEGER(closed) ? YAJL_GET_INTEGER(closed) : 0LL);
    yajl_tree_free(doc);
    free(ans);
    return KITH_EXIT_OK;
}

int kith_cmd_tokens(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "kith tokens: expected list, mint or revoke; see kith tokens --help\n");
        return KITH_EXIT_FAIL;
    }
    const char *verb = argv[1];
    if (!strcmp(verb, "--help") || !strcmp(verb, "-h")) {
        fputs(s_usage, stdout);
        return KITH_EXIT_OK;
    }
    bool list = !strcmp(verb, "list"), mint = !strcmp(verb, "mint"),
         revoke = !strcmp(verb, "revoke");
    if (!list && !mint && !revoke) {
        fprintf(stderr, "kith tokens: unknown verb '%s'; expected list, mint or revoke; see kith "
                        "tokens --help\n", verb);
        return KITH_EXIT_FAIL;
    }
    s_flags_t f = {0};
    int rest = 0, p = s_parse(argc - 1, argv + 1, verb, &f, &rest);
    if (p != 0)
        return p > 0 ? KITH_EXIT_OK : KITH_EXIT_FAIL;
    int operands = argc - 1 - rest, want = revoke ? 1 : 0;
    if (operands != want) {
        fprintf(stderr, "kith tokens %s: %s; see kith tokens --help\n", verb,
                revoke ? "expected one token ID" : "unexpected argument");
        return KITH_EXIT_FAIL;
    }
    if (list)
        return s_list(&f);
    if (mint)
        return s_mint(&f);
    return s_revoke(&f, argv[1 + rest]);
}
