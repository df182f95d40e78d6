/* tools/kith/cmd_send.c — `kith send`: sign one message, request, lifecycle
 * event or response with this node's identity, send it to a trusted peer,
 * wait for the signed ack (a response gets none: "sent" once written), and
 * print a JSON receipt (one per envelope with --count). Exit 0 acked; 3 refused (the peer closed orderly
 * without an ack, which it does only after a typed refusal); 2 offline or
 * unknown (no ack in time, a reset, a broken connection: the envelope may
 * have been admitted; spec/WIRE.md §9.1); 1 usage or local error. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_gen.h>

#include "proto/envelope.h"
#include "proto/uuid.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/node.h"
#include "router/state/config.h"
#include "router/state/home.h"
#include "router/state/identity.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"
#include "router/comms/envelope_json.h"

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kith send --to NAME|PEER_ID\n"
            "                 (--body TEXT | --request INTENT [--params JSON] |\n"
            "                  --lifecycle KIND [--params JSON] |\n"
            "                  --response IN_REPLY_TO --status accepted|completed|failed\n"
            "                  [--result JSON])\n"
            "                 [--count N] [--home DIR] [--timeout SECONDS]\n"
            "Signs and sends one envelope (N with --count, one after another) to a trusted\n"
            "peer and waits for its signed ack (default: comms.ack_timeout_ms, 30 s); a\n"
            "response gets no ack and is reported \"sent\" once written. Prints one JSON\n"
            "receipt per envelope. Toward a peer whose trust row has \"profile\": \"meerkat\"\n"
            "each envelope goes on a connection of its own, and what Meerkat cannot read is\n"
            "refused before sending: byte strings or integers below -2^63 in params/result,\n"
            "a lifecycle KIND other than mob.peer_added, mob.peer_retired, mob.peer_unwired\n"
            "(spec/WIRE.md §23).\n"
            "exit: 0 acked (or sent), 3 refused by the peer (orderly close, no ack),\n"
            "      2 offline or unknown (no ack in time, reset, connection lost), 1 error;\n"
            "      with --count, the worst outcome\n");
}

static void s_str(yajl_gen g, const char *key, const char *value)
{
    yajl_gen_string(g, (const unsigned char *) key, strlen(key));
    yajl_gen_string(g, (const unsigned char *) value, strlen(value));
}

/* One line of JSON: what happened, for scripts. */
static void s_print_receipt(const router_node_receipt_t *r, const char *to, uint64_t elapsed)
{
    char id[PROTO_UUID_TEXT_CAP], ack[PROTO_UUID_TEXT_CAP];
    proto_uuid_format(r->id, id);
    proto_uuid_format(r->ack_id, ack);
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return;
    yajl_gen_map_open(g);
    s_str(g, "status", router_send_outcome_str(r->outcome));
    s_str(g, "id", id);
    s_str(g, "to", to);
    if (r->outcome == ROUTER_SEND_ACKED)
        s_str(g, "ack_id", ack);
    yajl_gen_string(g, (const unsigned char *) "elapsed_ms", 10);
    yajl_gen_integer(g, (long long) elapsed);
    s_str(g, "detail", r->detail);
    yajl_gen_map_close(g);
    const unsigned char *buf;
    size_t len;
    yajl_gen_get_buf(g, &buf, &len);
    printf("%.*s\n", (int) len, (const char *) buf);
    yajl_gen_free(g);
}

/* The kind to send, built anew for each envelope (a send takes it). NULL
 * with err set when a JSON argument does not parse. */
static cbor_item_t *s_kind(const char *body, const char *intent, const char *params,
                           const char *lifecycle, proto_status_t st, const uint8_t reply_to[16],
                           const char *result, char *err, size_t errcap)
{
    cbor_item_t *kind = NULL;
    if (body) {
        kind = proto_kind_message(body, strlen(body), NULL, PROTO_HANDLING_NONE);
    } else {
        const char *json = st != PROTO_STATUS_NONE ? result : params;
        cbor_item_t *v = router_json_to_cbor(json, strlen(json), err, errcap);
        if (!v) {
            char why[160];
            snprintf(why, sizeof why, "%s", kith_one_line(err));
            snprintf(err, errcap, "--%s: %s", st != PROTO_STATUS_NONE ? "result" : "params", why);
            return NULL;
        }
        if (intent)
            kind = proto_kind_request(intent, strlen(intent), &v, NULL, PROTO_HANDLING_NONE);
        else if (lifecycle)
            kind = proto_kind_lifecycle(lifecycle, strlen(lifecycle), &v);
        else
            kind = proto_kind_response(reply_to, st, &v);
    }
    if (!kind)
        snprintf(err, errcap, "out of memory");
    return kind;
}

/* What to do about a send that failed or was not acked, after its
 * reason: the node's detail says what happened, not where to look. */
static const char *s_fix(int rc, router_send_outcome_t outcome, const char *detail)
{
    if (rc != 0) {
        if (!strncmp(detail, "no trusted peer named ", 22))
            return "; kith peers list shows the trusted ones (kith peers add adds one)";
        if (!strncmp(detail, "cannot resolve ", 15))
            return "; check the peer's addr (kith peers list) and this machine's DNS";
        return "";
    }
    if (outcome == ROUTER_SEND_OFFLINE)
        return "; check that the peer runs at its addr (kith peers list), then retry";
    if (outcome == ROUTER_SEND_REJECTED)
        return "; the peer's log names the reason (does it trust this node's key? kith id "
               "prints it)";
    return "";
}

/* Which exit code wins with --count: error, then offline, then refused. */
static int s_rank(int code)
{
    return code == KITH_EXIT_FAIL ? 3 : code == KITH_EXIT_OFFLINE ? 2 : code == KITH_EXIT_REJECTED ? 1 : 0;
}

int kith_cmd_send(int argc, char **argv)
{
    const char *home_flag = NULL, *to = NULL, *body = NULL, *intent = NULL, *params = "{}";
    const char *timeout = NULL, *lifecycle = NULL, *response = NULL, *status = NULL;
    const char *result = "null", *count_text = NULL;
    bool params_given = false, result_given = false;
    static const struct option flags[] = {
        {"home", required_argument, NULL, 'H'},      {"to", required_argument, NULL, 't'},
        {"body", required_argument, NULL, 'b'},      {"request", required_argument, NULL, 'r'},
        {"params", required_argument, NULL, 'p'},    {"timeout", required_argument, NULL, 'T'},
        {"lifecycle", required_argument, NULL, 'l'}, {"response", required_argument, NULL, 'R'},
        {"status", required_argument, NULL, 's'},    {"result", required_argument, NULL, 'x'},
        {"count", required_argument, NULL, 'n'},     {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "send", .help = "send", .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP:
            s_usage(stdout);
            return KITH_EXIT_OK;
        case 'H': home_flag = optarg; break;
        case 't': to = optarg; break;
        case 'b': body = optarg; break;
        case 'r': intent = optarg; break;
        case 'p': params = optarg; params_given = true; break;
        case 'T': timeout = optarg; break;
        case 'l': lifecycle = optarg; break;
        case 'R': response = optarg; break;
        case 's': status = optarg; break;
        case 'x': result = optarg; result_given = true; break;
        case 'n': count_text = optarg; break;
        default: return KITH_EXIT_FAIL;
        }
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith send: unexpected argument '%s'; see kith send --help\n",
                argv[kith_opts_rest(&o)]);
        return KITH_EXIT_FAIL;
    }
    if (!to || (!!body + !!intent + !!lifecycle + !!response) != 1) {
        fprintf(stderr, "kith send: give --to and exactly one of --body, --request, --lifecycle "
                        "or --response\n");
        return KITH_EXIT_FAIL;
    }
    /* A flag the chosen kind does not read is a mistake to say, not to drop. */
    if (params_given && !intent && !lifecycle) {
        fprintf(stderr, "kith send: --params goes with --request or --lifecycle; see kith send "
                        "--help\n");
        return KITH_EXIT_FAIL;
    }
    if ((status || result_given) && !response) {
        fprintf(stderr, "kith send: --status and --result go with --response; see kith send "
                        "--help\n");
        return KITH_EXIT_FAIL;
    }
    proto_status_t st = PROTO_STATUS_NONE;
    uint8_t reply_to[16];
    if (response) {
        if (proto_uuid_parse(response, strlen(response), reply_to) != 0) {
            fprintf(stderr, "kith send: --response takes the request's id (a UUID)\n");
            return KITH_EXIT_FAIL;
        }
        st = !status                            ? PROTO_STATUS_NONE
             : strcmp(status, "accepted") == 0  ? PROTO_STATUS_ACCEPTED
             : strcmp(status, "completed") == 0 ? PROTO_STATUS_COMPLETED
             : strcmp(status, "failed") == 0    ? PROTO_STATUS_FAILED
                                                : PROTO_STATUS_NONE;
        if (st == PROTO_STATUS_NONE) {
            fprintf(stderr, "kith send: --response needs --status accepted|completed|failed\n");
            return KITH_EXIT_FAIL;
        }
    }
    long count = 1;
    if (count_text) {
        char *end;
        count = strtol(count_text, &end, 10);
        if (*end || count < 1 || count > 1000000) {
            fprintf(stderr, "kith send: --count takes 1 to 1000000\n");
            return KITH_EXIT_FAIL;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    /* stderr is for what went wrong (one line, DESIGN §3), not the node's
     * progress ("drained; stopping" after every send) */
    router_log_set_level(ROUTER_LOG_WARN);

    char home[ROUTER_PATH_MAX], err[KITH_ERR_MAX] = "";
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith send: no home directory: pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    router_config_t cfg;
    if (router_config_load(&cfg, home, NULL, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "kith send: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    if (timeout) {
        char *end;
        double s = strtod(timeout, &end);
        if (*end || !(s > 0 && s <= 3600)) {
            fprintf(stderr, "kith send: --timeout takes seconds, more than 0 and at most 3600\n");
            return KITH_EXIT_FAIL;
        }
        cfg.comms.ack_timeout_ms = (uint32_t) (s * 1000 + 0.5);
        if (cfg.comms.ack_timeout_ms == 0)
            cfg.comms.ack_timeout_ms = 1;
    }
    /* No identity yet is a usage error here: sending never creates one. */
    router_identity_t probe;
    if (router_identity_load(home, &probe, err, sizeof err) != 0) {
        fprintf(stderr, "kith send: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    router_identity_wipe(&probe);

    router_node_opts_t no = {.home = home, .config = &cfg, .memory_inbox = true};
    router_node_t *node = router_node_new(&no, err, sizeof err);
    if (!node) {
        fprintf(stderr, "kith send: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    if (router_node_start(node) != 0) {
        /* Only a thread that cannot be made fails here: the process or
         * user limit is the usual cause. */
        fprintf(stderr, "kith send: cannot start the sending thread (%s); raise the limit on "
                        "processes (ulimit -u) or free memory, and retry\n", strerror(errno));
        router_node_destroy(&node);
        return KITH_EXIT_FAIL;
    }
    int worst = KITH_EXIT_OK;
    for (long i = 0; i < count && worst != KITH_EXIT_FAIL; i++) {
        cbor_item_t *kind = s_kind(body, intent, params, lifecycle, st, reply_to, result, err,
                                   sizeof err);
        if (!kind) {
            fprintf(stderr, "kith send: %s\n", err);
            worst = KITH_EXIT_FAIL;
            break;
        }
        router_node_receipt_t r;
        uint64_t t0 = router_clock_mono_ms();
        int rc = router_node_send(node, to, &kind, &r);
        uint64_t elapsed = router_clock_mono_ms() - t0;
        if (rc != 0) {
            fprintf(stderr, "kith send: %s%s\n", r.detail, s_fix(rc, r.outcome, r.detail));
            worst = KITH_EXIT_FAIL;
            break;
        }
        s_print_receipt(&r, to, elapsed);
        int code = KITH_EXIT_FAIL;
        switch (r.outcome) {
        case ROUTER_SEND_ACKED:
        case ROUTER_SEND_SENT: code = KITH_EXIT_OK; break;
        case ROUTER_SEND_OFFLINE: code = KITH_EXIT_OFFLINE; break;
        case ROUTER_SEND_REJECTED: code = KITH_EXIT_REJECTED; break;
        }
        if (code != KITH_EXIT_OK)
            fprintf(stderr, "kith send: %s: %s%s\n", router_send_outcome_str(r.outcome), r.detail,
                    s_fix(rc, r.outcome, r.detail));
        if (s_rank(code) > s_rank(worst))
            worst = code;
    }
    router_node_destroy(&node);
    return worst;
}

