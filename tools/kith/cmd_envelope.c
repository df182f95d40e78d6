/* tools/kith/cmd_envelope.c — `kith envelope encode|decode|verify`: make and
 * inspect signed envelope frames on stdin/stdout (DESIGN §3, §8). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "proto/envelope.h"
#include "router/state/home.h"
#include "router/state/identity.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"
#include "router/comms/envelope_json.h"

/* Options shared by the three subcommands. */
typedef struct {
    const char *home; /* --home DIR, or NULL */
    int raw;          /* --raw: bare CBOR, no 4-byte length */
    int pretty;       /* --pretty: indented JSON */
} s_opts_t;

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kith envelope encode [--home DIR] [--raw]\n"
            "       kith envelope decode [--raw] [--pretty]\n"
            "       kith envelope verify [--raw]\n"
            "\n"
            "  encode  read an envelope as JSON on stdin, sign it with this node's\n"
            "          identity and write one frame (4-byte big-endian length + CBOR)\n"
            "  decode  read one frame on stdin and print it as JSON with\n"
            "          \"signature_valid\"\n"
            "  verify  read one frame on stdin; exit 0 when it decodes and its\n"
            "          signature is valid, else exit 1 with the reason on stderr\n"
            "\n"
            "  --home DIR  state directory holding identity/ (else $KITH_HOME, else ~/.kith)\n"
            "  --raw       bare CBOR instead of a length-prefixed frame\n"
            "  --pretty    indent the JSON\n"
            "\n"
            "JSON form: {\"id\"?: UUID, \"to\": \"ed25519:…\", \"kind\": {\"type\": \"message\",\n"
            "\"body\": \"hi\"}}; \"id\" defaults to a new UUIDv7; byte strings are\n"
            "{\"$bytes\": \"<base64>\"}; in_reply_to is a UUID string.\n"
            "Run 'kith envelope SUBCOMMAND --help' for one subcommand.\n");
}

static void s_usage_encode(FILE *out)
{
    fprintf(out,
            "usage: kith envelope encode [--home DIR] [--raw]\n"
            "\n"
            "Reads one envelope as JSON on stdin, for example\n"
            "  {\"to\":\"ed25519:…\",\"kind\":{\"type\":\"message\",\"body\":\"hi\"}}\n"
            "signs it with the identity in DIR/identity/ and writes one frame to stdout.\n"
            "Kinds: message {body, blocks?, handling_mode? queue|steer}; request {intent,\n"
            "params, blocks?, handling_mode?}; response {in_reply_to, status\n"
            "accepted|completed|failed, result}; ack {in_reply_to}; lifecycle {kind, params}.\n"
            "\n"
            "  --home DIR  state directory (else $KITH_HOME, else ~/.kith)\n"
            "  --raw       write bare CBOR instead of a length-prefixed frame\n");
}

static void s_usage_decode(FILE *out)
{
    fprintf(out,
            "usage: kith envelope decode [--raw] [--pretty]\n"
            "\n"
            "Reads one frame (4-byte big-endian length + CBOR) on stdin and prints the\n"
            "envelope as JSON with \"signature_valid\" (and \"signature_error\" when it is\n"
            "false). Exits 1 when the frame does not decode.\n"
            "\n"
            "  --raw     read bare CBOR instead of a frame\n"
            "  --pretty  indent the JSON\n");
}

static void s_usage_verify(FILE *out)
{
    fprintf(out,
            "usage: kith envelope verify [--raw]\n"
            "\n"
            "Reads one frame on stdin. Exits 0 when it decodes and its signature is valid\n"
            "under kith's key policy; otherwise exits 1 and prints the wire reason and\n"
            "the exact one, e.g. \"malformed (duplicate_key)\", on stderr.\n"
            "\n"
            "  --raw  read bare CBOR instead of a frame\n");
}

/* Reads all of stdin, up to `limit` bytes; more is an error. Returns a heap
 * buffer (caller frees) with one spare byte for a NUL, or NULL. */
static uint8_t *s_read_stdin(size_t limit, size_t *len, const char *who)
{
    size_t cap = 64 * 1024, n = 0;
    int read_errno = 0;
    uint8_t *buf = malloc(cap + 1);
    if (!buf)
        goto oom;
    for (;;) {
        if (n == cap) {
            if (cap > limit)
                break;
            cap *= 2;
            uint8_t *grown = realloc(buf, cap + 1);
            if (!grown)
                goto oom;
            buf = grown;
        }
        errno = 0;
        size_t got = fread(buf + n, 1, cap - n, stdin);
        read_errno = errno;
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(stdin)) {
        fprintf(stderr, "kith envelope %s: cannot read stdin (%s); give it a file or a pipe\n",
                who, read_errno ? strerror(read_errno) : "read error");
        free(buf);
        return NULL;
    }
    if (n > limit) {
        fprintf(stderr, "kith envelope %s: oversize: more than %zu bytes on stdin\n", who, limit);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
oom:
    fprintf(stderr, "kith envelope %s: out of memory\n", who);
    free(buf);
    return NULL;
}

/* Reads and decodes one frame (or raw item) from stdin. Returns 0 with *env
 * set, or -1 having said why on stderr. */
static int s_read_envelope(const s_opts_t *o, const char *who, proto_envelope_t **env)
{
    size_t len = 0;
    /* One byte past the limit is enough to tell "too big" from "fits". */
    size_t limit = PROTO_ENVELOPE_MAX + (o->raw ? 0 : PROTO_FRAME_HEADER_LEN) + 1;
    uint8_t *buf = s_read_stdin(limit, &len, who);
    proto_envelope_reason_t why;
    if (!buf)
        return -1;
    int rc = o->raw ? proto_envelope_decode(buf, len, env, &why) : proto_envelope_decode_frame(buf, len, env, &why);
    free(buf);
    if (rc != 0) {
        fprintf(stderr, "kith envelope %s: %s (%s)\n", who, proto_wire_reason_str(proto_envelope_reason_wire(why)),
                proto_envelope_reason_str(why));
        return -1;
    }
    return 0;
}

static int s_encode(const s_opts_t *o)
{
    char home[ROUTER_PATH_MAX], err[KITH_ERR_MAX];
    router_identity_t id;
    proto_envelope_t *env = NULL;
    uint8_t *json = NULL, *out = NULL;
    size_t json_len = 0, out_len = 0;
    int rc = KITH_EXIT_FAIL;

    memset(&id, 0, sizeof id);
    if (router_home_resolve(o->home, home, sizeof home) != 0) {
        fprintf(stderr, "kith envelope encode: no home directory; pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    if (router_identity_load(home, &id, err, sizeof err) != 0) {
        fprintf(stderr, "kith envelope encode: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    json = s_read_stdin(ROUTER_JSON_MAX, &json_len, "encode");
    if (!json)
        goto done;
    if (router_envelope_from_json((const char *) json, json_len, id.pk, &env, err, sizeof err) != 0) {
        fprintf(stderr, "kith envelope encode: %s\n", kith_one_line(err));
        goto done;
    }
    if (proto_envelope_sign(env, id.sk) != 0) {
        fprintf(stderr, "kith envelope encode: the identity's secret and public keys do not match\n");
        goto done;
    }
    if ((o->raw ? proto_envelope_encode(env, &out, &out_len) : proto_envelope_encode_frame(env, &out, &out_len)) != 0) {
        fprintf(stderr, "kith envelope encode: out of memory\n");
        goto done;
    }
    errno = 0;
    if (fwrite(out, 1, out_len, stdout) != out_len || fflush(stdout) != 0) {
        fprintf(stderr, "kith envelope encode: cannot write stdout (%s); check the file or pipe "
                        "it goes to\n", errno ? strerror(errno) : "write error");
        goto done;
    }
    rc = KITH_EXIT_OK;
done:
    router_identity_wipe(&id);
    proto_envelope_destroy(&env);
    free(json);
    free(out);
    return rc;
}

static int s_decode(const s_opts_t *o)
{
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t verdict;
    char *json = NULL;
    size_t len = 0;
    if (s_read_envelope(o, "decode", &env) != 0)
        return KITH_EXIT_FAIL;
    /* The verdict goes into the JSON; decoding itself succeeded either way. */
    if (proto_envelope_verify(env, &verdict) != 0 && verdict == PROTO_ENV_OK)
        verdict = PROTO_ENV_BAD_SIGNATURE;
    int rc = router_envelope_to_json(env, &verdict, o->pretty, &json, &len);
    proto_envelope_destroy(&env);
    if (rc == ROUTER_JSON_NO_MEMORY) {
        fprintf(stderr, "kith envelope decode: out of memory\n");
        return KITH_EXIT_FAIL;
    }
    if (rc != 0) {
        fprintf(stderr, "kith envelope decode: the envelope holds a map {\"$bytes\": …}, which has "
                        "no JSON form; use kith envelope verify\n");
        return KITH_EXIT_FAIL;
    }
    printf("%s\n", json);
    free(json);
    return KITH_EXIT_OK;
}

static int s_verify(const s_opts_t *o)
{
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t why;
    if (s_read_envelope(o, "verify", &env) != 0)
        return KITH_EXIT_FAIL;
    int rc = proto_envelope_verify(env, &why);
    proto_envelope_destroy(&env);
    if (rc != 0) {
        fprintf(stderr, "kith envelope verify: %s (%s)\n", proto_wire_reason_str(proto_envelope_reason_wire(why)),
                proto_envelope_reason_str(why));
        return KITH_EXIT_FAIL;
    }
    return KITH_EXIT_OK;
}

int kith_cmd_envelope(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "kith envelope: expected encode, decode or verify; see kith envelope "
                        "--help for the usage\n");
        return KITH_EXIT_FAIL;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        s_usage(stdout);
        return KITH_EXIT_OK;
    }
    const char *sub = argv[1];
    int is_encode = !strcmp(sub, "encode"), is_decode = !strcmp(sub, "decode"), is_verify = !strcmp(sub, "verify");
    if (!is_encode && !is_decode && !is_verify) {
        fprintf(stderr, "kith envelope: unknown subcommand '%s'; see kith envelope --help\n", sub);
        return KITH_EXIT_FAIL;
    }
    void (*usage)(FILE *) = is_encode ? s_usage_encode : is_decode ? s_usage_decode : s_usage_verify;
    s_opts_t o = {0};
    /* Each subcommand has its own flags. */
    static const struct option encode_flags[] = {
        {"raw", no_argument, NULL, 'r'}, {"home", required_argument, NULL, 'H'}, {0}};
    static const struct option decode_flags[] = {
        {"raw", no_argument, NULL, 'r'}, {"pretty", no_argument, NULL, 'p'}, {0}};
    static const struct option verify_flags[] = {{"raw", no_argument, NULL, 'r'}, {0}};
    char cmd[32];
    snprintf(cmd, sizeof cmd, "envelope %s", sub);
    kith_opts_t p = {.argc = argc - 1, .argv = argv + 1, .cmd = cmd, .help = cmd,
                     .longopts = is_encode ? encode_flags : is_decode ? decode_flags : verify_flags};
    for (int c; (c = kith_opts_next(&p)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP:
            usage(stdout);
            return KITH_EXIT_OK;
        case 'r': o.raw = 1; break;
        case 'H': o.home = optarg; break;
        case 'p': o.pretty = 1; break;
        default: return KITH_EXIT_FAIL;
        }
    }
    if (kith_opts_rest(&p) < p.argc) {
        fprintf(stderr, "kith %s: unexpected argument '%s'; see kith %s --help\n", cmd,
                p.argv[kith_opts_rest(&p)], cmd);
        return KITH_EXIT_FAIL;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "kith envelope: libsodium failed to initialise\n");
        return KITH_EXIT_FAIL;
    }
    return is_encode ? s_encode(&o) : is_decode ? s_decode(&o) : s_verify(&o);
}
