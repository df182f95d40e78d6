/* tools/kith/cmd_peers.c — `kith peers add|remove|list`: edit and show
 * $KITH_HOME/trusted_peers.json. Edits go through router_trust_edit, which
 * holds the exclusive lock on trusted_peers.json.lock across load and save,
 * so two concurrent edits cannot lose one another's change. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "router/state/home.h"
#include "router/state/trust.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"
#include "tools/kith/peers_import.h"

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kith peers add --name NAME --pubkey ed25519:KEY --addr ADDR\n"
            "                      [--profile kith|meerkat]\n"
            "                      [--description TEXT] [--label KEY=VALUE]... [--home DIR]\n"
            "       kith peers remove NAME|PEER_ID [--home DIR]\n"
            "       kith peers list [--json] [--home DIR]\n"
            "       kith peers import FILE [--home DIR]\n"
            "\n"
            "Edits DIR/trusted_peers.json, the peers this node accepts envelopes from.\n"
            "  NAME    1..64 characters of [A-Za-z0-9._-]; several peers may share one\n"
            "  KEY     the peer's `kith id` pubkey (standard padded base64 of 32 bytes)\n"
            "  ADDR    tcp://host:port, tcp://[v6]:port, uds:///abs/path or inproc://name\n"
            "  PEER_ID the peer's UUID from `kith id` or `kith peers list`\n"
            "  --json  print the store as JSON, with each peer's peer_id\n"
            "  --profile  how to talk to the peer: kith (default; envelopes pipelined on one\n"
            "          connection) or meerkat (one envelope per connection; only what Meerkat\n"
            "          can read is sent). A running daemon applies changes at once.\n"
            "  import FILE  add the rows of a Meerkat trusted_peers.json (Meerkat accepts any\n"
            "          non-blank name and ignores unknown keys; kith's file stays strict):\n"
            "          each row gets profile meerkat; a name kith cannot hold is renamed,\n"
            "          unknown keys are left behind, and a row kith cannot trust is dropped;\n"
            "          every such change is printed. spec/WIRE.md §23.5\n"
            "  --home DIR  state directory (else $KITH_HOME, else ~/.kith)\n");
}

/* Takes --home DIR (or --home=DIR) given before the subcommand (`kith
 * peers --home DIR list`) out of argv. After the subcommand, --home is one
 * of its flags, read by getopt, which alone knows which entries are other
 * flags' values (`--description --home` describes a peer as "--home"). */
static int s_take_home(int *argc, char **argv, const char **home_flag)
{
    int i = 1;
    while (i < *argc && argv[i][0] == '-') {
        if (!strncmp(argv[i], "--home=", 7)) {
            *home_flag = argv[i] + 7;
            i++;
        } else if (!strcmp(argv[i], "--home")) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "kith peers: --home needs a directory; see kith peers --help\n");
                return -1;
            }
            *home_flag = argv[i + 1];
            i += 2;
        } else {
            break; /* --help, or a mistake the subcommand check names */
        }
    }
    memmove(argv + 1, argv + i, (size_t) (*argc - i) * sizeof *argv);
    *argc -= i - 1;
    return 0;
}

/* The store path and the loaded store, for reading (edits go through
 * router_trust_edit). */
typedef struct {
    char home[ROUTER_PATH_MAX];
    char path[ROUTER_PATH_MAX];
    router_trust_t *trust;
} s_store_t;

static void s_close(s_store_t *s)
{
    router_trust_destroy(&s->trust);
}

static int s_open(s_store_t *s, const char *home_flag)
{
    s->trust = NULL;
    if (router_home_resolve(home_flag, s->home, sizeof s->home) != 0) {
        fprintf(stderr, "kith peers: no home directory; pass --home DIR or set KITH_HOME\n");
        return -1;
    }
    if (router_home_path(s->home, ROUTER_TRUST_FILE, s->path, sizeof s->path) != 0) {
        fprintf(stderr, "kith peers: %s: path too long; use a shorter --home\n", s->home);
        return -1;
    }
    char err[KITH_ERR_MAX];
    s->trust = router_trust_load(s->path, err, sizeof err);
    if (!s->trust) {
        fprintf(stderr, "kith peers: %s\n", err);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ add */

/* One row to add, and what the edit reports back. */
typedef struct {
    const char *name, *addr, *description;
    const router_label_t *labels;
    size_t nlabels;
    uint8_t pk[PROTO_PUBKEY_LEN];
    router_peer_profile_t profile;
    char uuid[PROTO_UUID_TEXT_CAP]; /* out: the new row's PeerId */
    size_t count;                   /* out: rows after the edit */
} s_add_t;

static int s_add_edit(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    s_add_t *a = ud;
    if (router_trust_add(t, a->name, a->pk, a->addr, a->description, a->labels, a->nlabels, err,
                         errcap) != 0)
        return -1;
    const router_peer_t *p = router_trust_by_pubkey(t, a->pk);
    (void) router_trust_set_profile(t, p, a->profile);
    proto_uuid_format(p->peer_id, a->uuid);
    a->count = router_trust_count(t);
    return 0;
}

static int s_add(int argc, char **argv, const char *home_flag)
{
    const char *name = NULL, *pubkey = NULL, *addr = NULL, *description = NULL;
    router_peer_profile_t profile = ROUTER_PEER_PROFILE_KITH;
    router_label_t labels[ROUTER_PEER_LABELS_MAX];
    char *label_text[ROUTER_PEER_LABELS_MAX];
    size_t nlabels = 0;
    int rc = KITH_EXIT_FAIL;
    static const struct option flags[] = {
        {"name", required_argument, NULL, 'n'},        {"pubkey", required_argument, NULL, 'k'},
        {"addr", required_argument, NULL, 'a'},        {"label", required_argument, NULL, 'l'},
        {"description", required_argument, NULL, 'd'}, {"profile", required_argument, NULL, 'P'},
        {"home", required_argument, NULL, 'H'},        {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "peers add", .help = "peers",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        const char *val = optarg;
        if (c == KITH_OPT_HELP) {
            s_usage(stdout);
            rc = KITH_EXIT_OK;
            goto done;
        } else if (c == 'n') {
            name = val;
        } else if (c == 'k') {
            pubkey = val;
        } else if (c == 'a') {
            addr = val;
        } else if (c == 'd') {
            description = val;
        } else if (c == 'H') {
            home_flag = val;
        } else if (c == 'P') {
            if (router_peer_profile_parse(val, &profile) != 0) {
                fprintf(stderr, "kith peers add: --profile is kith or meerkat, got '%s'\n", val);
                goto done;
            }
        } else if (c == 'l') {
            const char *eq = strchr(val, '=');
            if (!eq || eq == val) {
                fprintf(stderr, "kith peers add: --label needs KEY=VALUE, got '%s'\n", val);
                goto done;
            }
            if (nlabels == ROUTER_PEER_LABELS_MAX) {
                fprintf(stderr, "kith peers add: at most %d labels\n", ROUTER_PEER_LABELS_MAX);
                goto done;
            }
            char *copy = strdup(val);
            if (!copy) {
                fprintf(stderr, "kith peers add: out of memory\n");
                goto done;
            }
            copy[eq - val] = '\0';
            label_text[nlabels] = copy;
            labels[nlabels].key = copy;
            labels[nlabels].value = copy + (eq - val) + 1;
            nlabels++;
        } else {
            goto done; /* the error is printed */
        }
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith peers add: unexpected '%s'; see kith peers --help\n",
                argv[kith_opts_rest(&o)]);
        goto done;
    }
    if (!name || !pubkey || !addr) {
        fprintf(stderr, "kith peers add: --name, --pubkey and --addr are required; "
                        "see kith peers --help\n");
        goto done;
    }
    uint8_t pk[PROTO_PUBKEY_LEN];
    proto_pubkey_reason_t reason;
    if (proto_pubkey_parse_reason(pubkey, strlen(pubkey), pk, &reason) != 0) {
        fprintf(stderr, "kith peers add: --pubkey %s; pass the pubkey the peer's `kith id` prints\n",
                reason == PROTO_PUBKEY_NO_PREFIX ? "must start with \"ed25519:\""
                : reason == PROTO_PUBKEY_WEAK    ? "is not a full-order Ed25519 key"
                                                 : "is not 44 characters of standard padded "
                                                   "base64 (32 bytes) after \"ed25519:\"");
        goto done;
    }
    char home[ROUTER_PATH_MAX], err[KITH_ERR_MAX];
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith peers: no home directory; pass --home DIR or set KITH_HOME\n");
        goto done;
    }
    s_add_t add = {.name = name, .addr = addr, .description = description, .labels = labels,
                   .nlabels = nlabels, .profile = profile};
    memcpy(add.pk, pk, sizeof pk);
    if (router_trust_edit(home, s_add_edit, &add, err, sizeof err) != 0) {
        fprintf(stderr, "kith peers add: %s\n", err);
        goto done;
    }
    printf("added %s %s (%zu trusted)\n", name, add.uuid, add.count);
    rc = KITH_EXIT_OK;
done:
    for (size_t i = 0; i < nlabels; i++)
        free(label_text[i]);
    return rc;
}

/* ------------------------------------------------------------ remove */

/* The row to remove (a name or a PeerId), and what the edit reports back. */
typedef struct {
    const char *which;
    char name[ROUTER_PEER_NAME_MAX + 1]; /* out: the removed row's name */
    char uuid[PROTO_UUID_TEXT_CAP];      /* out: its PeerId */
    size_t count;                        /* out: rows after the edit */
} s_remove_t;

static int s_remove_edit(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    s_remove_t *rm = ud;
    uint8_t id[PROTO_UUID_LEN];
    const router_peer_t *p = NULL;
    size_t matches = 0;
    if (proto_uuid_parse(rm->which, strlen(rm->which), id) == 0)
        p = router_trust_by_peer_id(t, id);
    if (p)
        matches = 1;
    else
        p = router_trust_by_name(t, rm->which, &matches);
    if (matches == 0) {
        snprintf(err, errcap, "no peer named or with PeerId '%.100s' in %s; kith peers list "
                 "shows them", rm->which, ROUTER_TRUST_FILE);
        return -1;
    }
    if (matches > 1) {
        snprintf(err, errcap, "%zu peers are named '%.100s'; remove one by its PeerId (kith "
                 "peers list shows them)", matches, rm->which);
        return -1;
    }
    proto_uuid_format(p->peer_id, rm->uuid);
    snprintf(rm->name, sizeof rm->name, "%s", p->name);
    if (router_trust_remove(t, p) != 0) {
        snprintf(err, errcap, "cannot remove '%.100s'", rm->which);
        return -1;
    }
    rm->count = router_trust_count(t);
    return 0;
}

static int s_remove(int argc, char **argv, const char *home_flag)
{
    static const struct option flags[] = {{"home", required_argument, NULL, 'H'}, {0}};
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "peers remove", .help = "peers",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        if (c == 'H') {
            home_flag = optarg;
            continue;
        }
        if (c != KITH_OPT_HELP)
            return KITH_EXIT_FAIL;
        s_usage(stdout);
        return KITH_EXIT_OK;
    }
    if (argc - kith_opts_rest(&o) != 1) {
        fprintf(stderr, "kith peers remove: expected one NAME or PEER_ID; see kith peers --help\n");
        return KITH_EXIT_FAIL;
    }
    s_remove_t rm = {.which = argv[kith_opts_rest(&o)]};
    char home[ROUTER_PATH_MAX], err[KITH_ERR_MAX];
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith peers: no home directory; pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    if (router_trust_edit(home, s_remove_edit, &rm, err, sizeof err) != 0) {
        fprintf(stderr, "kith peers remove: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    printf("removed %s %s (%zu trusted)\n", rm.name, rm.uuid, rm.count);
    return KITH_EXIT_OK;
}

/* ------------------------------------------------------------ list */

static int s_list(int argc, char **argv, const char *home_flag)
{
    bool json = false;
    static const struct option flags[] = {{"json", no_argument, NULL, 'j'},
                                          {"home", required_argument, NULL, 'H'}, {0}};
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "peers list", .help = "peers",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        if (c == KITH_OPT_HELP) {
            s_usage(stdout);
            return KITH_EXIT_OK;
        }
        if (c == 'H')
            home_flag = optarg;
        else if (c == 'j')
            json = true;
        else
            return KITH_EXIT_FAIL;
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith peers list: unexpected '%s'; see kith peers --help\n",
                argv[kith_opts_rest(&o)]);
        return KITH_EXIT_FAIL;
    }
    s_store_t store = {0};
    if (s_open(&store, home_flag) != 0)
        return KITH_EXIT_FAIL;
    int rc = KITH_EXIT_OK;
    if (json) {
        char *text = router_trust_to_json(store.trust, true);
        if (text) {
            fputs(text, stdout);
            free(text);
        } else {
            fprintf(stderr, "kith peers list: out of memory\n");
            rc = KITH_EXIT_FAIL;
        }
    } else {
        size_t n = router_trust_count(store.trust);
        if (n == 0)
            printf("no trusted peers in %s\n", store.path);
        else
            printf("%-24s %-36s %-52s %s\n", "NAME", "PEER_ID", "PUBKEY", "ADDR");
        for (size_t i = 0; i < n; i++) {
            const router_peer_t *p = router_trust_at(store.trust, i);
            char uuid[PROTO_UUID_TEXT_CAP], pub[PROTO_PUBKEY_TEXT_CAP];
            proto_uuid_format(p->peer_id, uuid);
            (void) proto_pubkey_format(p->pk, pub, sizeof pub);
            printf("%-24s %-36s %-52s %s\n", p->name, uuid, pub, p->addr);
        }
    }
    s_close(&store);
    return rc;
}

/* ------------------------------------------------------------ import */

/* A Meerkat file's text to import, and what the edit reports back. */
typedef struct {
    const char *text;
    size_t len;
    kith_peers_import_t res; /* out */
    size_t count;            /* out: rows after the edit */
} s_import_t;

static int s_import_edit(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    s_import_t *im = ud;
    if (kith_peers_import_meerkat(t, im->text, im->len, stdout, &im->res, err, errcap) != 0)
        return -1;
    im->count = router_trust_count(t);
    return 0;
}

static int s_import(int argc, char **argv, const char *home_flag)
{
    static const struct option flags[] = {{"home", required_argument, NULL, 'H'}, {0}};
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "peers import", .help = "peers",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        if (c == KITH_OPT_HELP) {
            s_usage(stdout);
            return KITH_EXIT_OK;
        }
        if (c != 'H')
            return KITH_EXIT_FAIL;
        home_flag = optarg;
    }
    if (argc - kith_opts_rest(&o) != 1) {
        fprintf(stderr, "kith peers import: expected one FILE (a Meerkat trusted_peers.json); "
                        "see kith peers --help\n");
        return KITH_EXIT_FAIL;
    }
    const char *file = argv[kith_opts_rest(&o)];
    FILE *f = fopen(file, "rb");
    if (!f) {
        fprintf(stderr, "kith peers import: %s: %s\n", file, strerror(errno));
        return KITH_EXIT_FAIL;
    }
    char *text = malloc(ROUTER_TRUST_FILE_MAX + 1);
    errno = 0;
    size_t len = text ? fread(text, 1, ROUTER_TRUST_FILE_MAX + 1, f) : 0;
    int read_errno = errno;
    bool bad = ferror(f) || !text;
    fclose(f);
    if (bad) {
        fprintf(stderr, "kith peers import: %s: %s; give the path of a Meerkat "
                        "trusted_peers.json\n", file,
                !text ? "out of memory" : read_errno ? strerror(read_errno) : "cannot read");
        free(text);
        return KITH_EXIT_FAIL;
    }
    if (len > ROUTER_TRUST_FILE_MAX) { /* only MAX + 1 octets were read: no size to name */
        fprintf(stderr, "kith peers import: %s: more than the %u bytes a trust file may be; "
                        "nothing was imported\n", file, ROUTER_TRUST_FILE_MAX);
        free(text);
        return KITH_EXIT_FAIL;
    }
    int rc = KITH_EXIT_FAIL;
    char home[ROUTER_PATH_MAX], err[KITH_ERR_MAX];
    s_import_t im = {.text = text, .len = len};
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith peers: no home directory; pass --home DIR or set KITH_HOME\n");
    } else if (router_trust_edit(home, s_import_edit, &im, err, sizeof err) != 0) {
        fprintf(stderr, "kith peers import: %s: %s; nothing was imported\n", file, err);
    } else {
        printf("imported %zu (%zu renamed), dropped %zu; %zu trusted\n", im.res.imported,
               im.res.renamed, im.res.dropped, im.count);
        rc = KITH_EXIT_OK;
    }
    free(text);
    return rc;
}

int kith_cmd_peers(int argc, char **argv)
{
    const char *home_flag = NULL;
    if (s_take_home(&argc, argv, &home_flag) != 0)
        return KITH_EXIT_FAIL;
    if (argc < 2) {
        fprintf(stderr, "kith peers: expected add, remove, list or import; see kith peers "
                        "--help\n");
        return KITH_EXIT_FAIL;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        s_usage(stdout);
        return KITH_EXIT_OK;
    }
    if (!strcmp(sub, "add"))
        return s_add(argc - 1, argv + 1, home_flag);
    if (!strcmp(sub, "remove"))
        return s_remove(argc - 1, argv + 1, home_flag);
    if (!strcmp(sub, "list"))
        return s_list(argc - 1, argv + 1, home_flag);
    if (!strcmp(sub, "import"))
        return s_import(argc - 1, argv + 1, home_flag);
    fprintf(stderr, "kith peers: unknown subcommand '%s'; expected add, remove, list or import; "
                    "see kith peers --help\n", sub);
    return KITH_EXIT_FAIL;
}
