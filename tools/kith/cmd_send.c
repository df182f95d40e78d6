/* tools/kith/cmd_send.c — `kith send`: sign one message or request with this
 * node's identity, send it to a trusted peer, wait for the signed ack, and
 * print a JSON receipt. Exit 0 acked; 3 refused (the peer closed orderly
 * without an ack, which it does only after a typed refusal); 2 offline or
 * unknown (no ack in time, a reset, a broken connection: the envelope may
 * have been admitted; spec/WIRE.md §9.1); 1 usage or local error. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_gen.h>

#include "proto/envelope.h"
#include "proto/uuid.h"
#include "router/clock.h"
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
            "usage: kith send --to NAME|PEER_ID (--body TEXT | --request INTENT [--params JSON])\n"
            "                 [--home DIR] [--timeout SECONDS]\n"
            "Signs and sends one envelope to a trusted peer and waits for its signed ack\n"
            "(default: comms.ack_timeout_ms, 30 s). Prints a JSON receipt.\n"
            "exit: 0 acked, 3 refused by the peer (orderly close, no ack),\n"
            "      2 offline or unknown (no ack in time, reset, connection lost), 1 error\n");
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

int kith_cmd_send(int argc, char **argv)
{
    const char *home_flag = NULL, *to = NULL, *body = NULL, *intent = NULL, *params = "{}";
    const char *timeout = NULL;
    static const struct option flags[] = {
        {"home", required_argument, NULL, 'H'},   {"to", required_argument, NULL, 't'},
        {"body", required_argument, NULL, 'b'},   {"request", required_argument, NULL, 'r'},
        {"params", required_argument, NULL, 'p'}, {"timeout", required_argument, NULL, 'T'},
        {0},
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
        case 'p': params = optarg; break;
        case 'T': timeout = optarg; break;
        default: return KITH_EXIT_FAIL;
        }
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith send: unexpected argument '%s'; see kith send --help\n",
                argv[kith_opts_rest(&o)]);
        return KITH_EXIT_FAIL;
    }
    if (!to || (!body == !intent)) {
        fprintf(stderr, "kith send: give --to and exactly one of --body or --request\n");
        return KITH_EXIT_FAIL;
    }
    signal(SIGPIPE, SIG_IGN);

    char home[ROUTER_PATH_MAX], err[ROUTER_CONFIG_ERR_MAX] = "";
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

    cbor_item_t *kind = NULL;
    if (body) {
        kind = proto_kind_message(body, strlen(body), NULL, PROTO_HANDLING_NONE);
    } else {
        cbor_item_t *p = router_json_to_cbor(params, strlen(params), err, sizeof err);
        if (!p) {
            fprintf(stderr, "kith send: --params: %s\n", err);
            return KITH_EXIT_FAIL;
        }
        kind = proto_kind_request(intent, strlen(intent), &p, NULL, PROTO_HANDLING_NONE);
    }
    if (!kind) {
        fprintf(stderr, "kith send: out of memory\n");
        return KITH_EXIT_FAIL;
    }

    router_node_opts_t no = {.home = home, .config = &cfg, .memory_inbox = true};
    router_node_t *node = router_node_new(&no, err, sizeof err);
    if (!node || router_node_start(node) != 0) {
        fprintf(stderr, "kith send: %s\n", node ? "cannot start" : err);
        cbor_decref(&kind);
        router_node_destroy(&node);
        return KITH_EXIT_FAIL;
    }
    router_node_receipt_t r;
    uint64_t t0 = router_clock_mono_ms();
    int rc = router_node_send(node, to, &kind, &r);
    uint64_t elapsed = router_clock_mono_ms() - t0;
    router_node_destroy(&node);
    if (rc != 0) {
        fprintf(stderr, "kith send: %s\n", r.detail);
        return KITH_EXIT_FAIL;
    }
    s_print_receipt(&r, to, elapsed);
    if (r.outcome != ROUTER_SEND_ACKED)
        fprintf(stderr, "kith send: %s: %s\n", router_send_outcome_str(r.outcome), r.detail);
    switch (r.outcome) {
    case ROUTER_SEND_ACKED: return KITH_EXIT_OK;
    case ROUTER_SEND_OFFLINE: return KITH_EXIT_OFFLINE;
    case ROUTER_SEND_REJECTED: return KITH_EXIT_REJECTED;
    }
    return KITH_EXIT_FAIL;
}
