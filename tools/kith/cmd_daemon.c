/* tools/kith/cmd_daemon.c — `kith daemon`: load the configuration, start the
 * node with its listeners and the HTTP gateway on its loop, run until
 * SIGINT/SIGTERM, then drain: every envelope acked is durable in the inbox
 * before the process exits. */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/worker.h"
#include "audit/worker.h"
#include "gateway/events.h"
#include "gateway/http_server.h"
#include "gateway/log_tap.h"
#include "gateway/routes.h"
#include "gateway/routes_audit.h"
#include "gateway/routes_auth.h"
#include "gateway/routes_canvas.h"
#include "gateway/routes_chat.h"
#include "gateway/routes_nodes.h"
#include "gateway/routes_openclaw.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "router/log.h"
#include "router/net/addr.h"
#include "router/net/fdlimit.h"
#include "router/node.h"
#include "router/state/config.h"
#include "router/state/home.h"
#include "router/state/tokens.h"
#include "router/workers/audit_feed.h"
#include "router/workers/broker.h"
#include "router/workers/turns.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cli_statedb.h"
#include "tools/kith/cmd.h"

static void s_usage(FILE *out, const char *cmd)
{
    if (!strcmp(cmd, "gateway")) {
        fprintf(out,
                "usage: kith gateway [--home DIR] [--config FILE] [--host H] [--port P] [--echo]\n"
                "                    [--log-level debug|info|warn|error]\n"
                "Runs `kith daemon` with comms.mode \"none\": the HTTP gateway, its workers and\n"
                "the inbox, without the signed-envelope or plain event listeners. Same flags,\n"
                "files and signals as kith daemon (kith daemon --help).\n");
        return;
    }
    fprintf(out,
            "usage: kith daemon [--home DIR] [--config FILE] [--host H] [--port P] [--echo]\n"
            "                   [--log-level debug|info|warn|error]\n"
            "Runs the router: signed comms listeners (TCP, Unix socket, in-process), the\n"
            "plain event listener when configured, the durable inbox, and the HTTP gateway\n"
            "(GET /health, GET /metrics) on gateway.host:gateway.port. With no config\n"
            "file it runs on the embedded defaults (DESIGN §4). SIGINT/SIGTERM drain and exit 0.\n"
            "Edits to DIR/trusted_peers.json apply while it runs; SIGHUP reloads that file\n"
            "and reopens logs/daemon.log (for logrotate).\n");
}

/* ---------------------------------------------------------------- pairing and ingress */

/* What the gateway's pairing, bearer and ingress routes keep (WIRE §17). */
typedef struct {
    router_tokens_t *tokens;    /* token hashes, lockouts, idempotency (state.db) */
    gateway_auth_t *auth;       /* bearer checks and the pairing code */
    gateway_ingress_t *ingress; /* /webhook and /sessions/{id}/external-events */
    gateway_route_peers_t peers; /* GET /api/peers */
    gateway_route_admin_t admin; /* /admin/paircode, /admin/shutdown */
    gateway_route_tokens_t tokens_routes; /* /api/tokens, /admin/tokens */
    gateway_route_pair_t pair;            /* POST /pair */
    router_audit_feed_t *audit_feed;      /* pairing, auth failures, admin calls; NULL: off */
    router_broker_t *audit_broker;        /* /api/audit asks the audit worker through it */
    gateway_route_audit_t *audit_routes;  /* GET /api/audit, /api/audit/verify */
} s_gw_auth_t;

static void s_shutdown(void *node)
{
    router_node_stop_async(node);
}

static void s_gw_auth_durable(void *ud)
{
    gateway_ingress_durable(ud);
}

/* Opens the token store beside the inbox and installs /pair,
 * /admin/paircode, /webhook and the external-event route. */
static int s_gw_auth_start(s_gw_auth_t *ga, router_node_t *node, const router_config_t *cfg,
                           const char *home, gateway_http_t *gw, char *err, size_t errcap)
{
    char db[ROUTER_PATH_MAX];
    if (router_home_path(home, "state.db", db, sizeof db) != 0) {
        snprintf(err, errcap, "home path too long");
        return -1;
    }
    if (!(ga->tokens = router_tokens_new(db, router_node_loop(node), err, errcap)))
        return -1;
    router_node_use_tokens(node, ga->tokens); /* Meerkat pairing's lockouts, durable too */
    router_tokens_use_metrics(ga->tokens, router_node_metrics(node));
    gateway_auth_opts_t ao = {.require_pairing = cfg->gateway.require_pairing,
                              .allow_query_token = cfg->gateway.allow_query_token,
                              .audit = ga->audit_feed};
    gateway_ingress_opts_t io = {.inbox = router_node_inbox(node),
                                 .turns = router_node_turns(node),
                                 .secret_env = cfg->gateway.webhook_secret_env};
    ga->auth = gateway_auth_new(ga->tokens, &ao);
    ga->peers = (gateway_route_peers_t){.node = node, .auth = ga->auth};
    ga->admin = (gateway_route_admin_t){.auth = ga->auth, .shutdown = s_shutdown,
                                        .shutdown_ud = node};
    /* The token routes answer within their wait (GATEWAY_TOKENS_WAIT_MS)
     * when the disk holds a write: the loop times them. */
    ga->pair = (gateway_route_pair_t){.auth = ga->auth, .loop = router_node_loop(node)};
    ga->tokens_routes.auth = ga->auth;
    ga->tokens_routes.loop = router_node_loop(node);
    if (!ga->auth || gateway_route_pair_serve(gw, &ga->pair) != 0 ||
        gateway_route_admin(gw, &ga->admin) != 0 || gateway_route_peers(gw, &ga->peers) != 0 ||
        gateway_route_tokens(gw, &ga->tokens_routes) != 0 ||
        !(ga->audit_routes = gateway_route_audit_new(gw, router_node_loop(node),
                                                     ga->audit_feed ? ga->audit_broker : NULL,
                                                     ga->auth))) {
        snprintf(err, errcap, "gateway: cannot set up pairing: %s", strerror(errno));
        return -1;
    }
    io.auth = ga->auth;
    if (!(ga->ingress = gateway_ingress_new(gw, router_node_loop(node), &io))) {
        if (errno == ENOENT)
            snprintf(err, errcap, "gateway.webhook_secret_env names %s, which is not set",
                     cfg->gateway.webhook_secret_env);
        else
            snprintf(err, errcap, "gateway: cannot set up /webhook: %s", strerror(errno));
        return -1;
    }
    router_node_on_durable(node, s_gw_auth_durable, ga->ingress);
    return 0;
}

/* A gateway other machines can reach, with a door left open that is
 * harmless on loopback, says so once at start (README "Exposing the
 * gateway"). */
static void s_gw_exposure_warn(const router_config_t *cfg, const router_addr_t *bound,
                               const char *shown)
{
    if (router_addr_is_loopback(bound))
        return;
    if (!cfg->gateway.require_pairing)
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "http://%s is reachable from other machines with pairing off: every bearer "
                   "route is open to them (set gateway.require_pairing true)", shown);
    if (!cfg->gateway.webhook_secret_env[0])
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway",
                   "http://%s is reachable from other machines without a webhook secret: "
                   "POST /sessions/{id}/external-events takes their events, and each can "
                   "become a turn (set gateway.webhook_secret_env)", shown);
}

/* With pairing on and no operator's token yet (node tokens open nothing
 * an operator needs), a one-time code to pair with. */
static void s_gw_auth_announce(s_gw_auth_t *ga)
{
    if (!gateway_auth_pairing_required(ga->auth) ||
        router_tokens_count_scope(ga->tokens, ROUTER_TOKEN_OPERATOR) > 0)
        return;
    char code[GATEWAY_AUTH_CODE_LEN + 1];
    gateway_auth_code_mint(ga->auth, code);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway",
               "no token paired: pairing code %s (POST /pair with X-Pairing-Code; one use)", code);
    fprintf(stderr, "kith daemon: pairing code: %s\n", code);
}

/* The loop has stopped: owed answers go out (or nowhere), then the rest. */
static void s_gw_auth_stop(s_gw_auth_t *ga, router_node_t *node)
{
    router_node_on_durable(node, NULL, NULL);
    router_node_use_tokens(node, NULL);
    gateway_route_peers_stop(&ga->peers);
    gateway_route_audit_destroy(&ga->audit_routes);
    router_tokens_stop(ga->tokens);
    gateway_ingress_destroy(&ga->ingress);
}

static void s_gw_auth_destroy(s_gw_auth_t *ga)
{
    gateway_route_audit_destroy(&ga->audit_routes);
    gateway_ingress_destroy(&ga->ingress);
    router_tokens_destroy(&ga->tokens);
    gateway_auth_destroy(&ga->auth);
}

/* How long a stopping gateway waits for answers in progress (WIRE §9.2). */
#define S_GATEWAY_DRAIN_MS 5000u

/* How long a stopping daemon waits for the audit events queued to be
 * written (WIRE §21.7). */
#define S_AUDIT_DRAIN_MS 2000u

/* The gateway, the audit feed, and the node whose stop waits for them. */
typedef struct {
    gateway_http_t *gw;
    router_audit_feed_t *audit; /* NULL: audit off */
    router_node_t *node;
} s_gw_drain_t;

static void s_drain_done(void *node)
{
    router_node_drain_release(node);
}

/* A graceful stop began: the gateway stops accepting at once, finishes
 * the answers in progress and closes; the audit feed writes what it holds
 * (the rate limit's counts too); and the loop waits for both. */
static void s_gateway_drain(void *ud)
{
    s_gw_drain_t *d = ud;
    router_node_drain_hold(d->node);
    router_node_drain_hold(d->node);
    gateway_http_drain(d->gw, s_drain_done, d->node, S_GATEWAY_DRAIN_MS);
    router_audit_feed_drain(d->audit, s_drain_done, d->node, S_AUDIT_DRAIN_MS);
}

/* The gateway's SSE streams (DESIGN §7) and the log tap feeding one. */
typedef struct {
    gateway_events_t *events; /* /api/events: comms events, and later turns and tools */
    gateway_events_t *logs;   /* /api/daemon/logs */
    gateway_log_tap_t *tap;   /* daemon log lines → logs */
} s_sse_t;

/* Lets the streams go: after gateway_http_destroy (which let their
 * connections go), before router_node_destroy. Idempotent. */
static void s_sse_stop(router_node_t *node, s_sse_t *sse)
{
    gateway_log_tap_destroy(&sse->tap);
    router_node_set_event_sink(node, NULL, NULL);
    router_node_set_channel_sink(node, NULL, NULL);
    if (router_node_turns(node))
        router_turns_set_event_sink(router_node_turns(node), NULL, NULL);
    gateway_events_destroy(&sse->events);
    gateway_events_destroy(&sse->logs);
}

/* Turn events (agent_start, llm_request, tool_call_start, tool_call,
 * agent_end, error) on /api/events. */
static void s_sse_turn_event(const char *type, const char *json_object, void *ud)
{
    /* NULL: an event turns could not make. /ws/chat's sink, which replaces
     * this one once the chat route is up, tells subscribers with a
     * stream_gap; before that there are no turns to lose events of. */
    if (json_object)
        (void) gateway_events_publish(ud, type, json_object);
}

static int s_sse_start(router_node_t *node, const router_config_t *cfg, gateway_http_t *gw,
                       const gateway_auth_t *auth, s_sse_t *sse)
{
    /* A subscriber's unsent bound: 1 MiB, lower when connections are held
     * lower, but always room for a few of the largest events. */
    size_t unsent = cfg->limits.conn_unsent_max < GATEWAY_EVENTS_UNSENT_MAX
                        ? cfg->limits.conn_unsent_max
                        : GATEWAY_EVENTS_UNSENT_MAX;
    if (unsent < 2 * GATEWAY_EVENTS_JSON_MAX)
        unsent = 2 * GATEWAY_EVENTS_JSON_MAX;
    gateway_events_opts_t eo = {
        .name = "events",
        .ring_events = cfg->limits.sse_ring_events,
        .unsent_max = unsent,
        /* One place below the gateway's cap, so the 503 that says so can
         * be answered (a connection past the cap is reset unanswered) and
         * a stream never takes the last place from other requests. */
        .subscribers_max = cfg->gateway.max_connections > 1 ? cfg->gateway.max_connections - 1 : 1,
        .auth = auth,
        .metrics = router_node_metrics(node),
    };
    router_loop_t *loop = router_node_loop(node);
    if (!(sse->events = gateway_events_new(loop, &eo)))
        return -1;
    eo.name = "logs";
    if (!(sse->logs = gateway_events_new(loop, &eo)) ||
        gateway_route_events(gw, sse->events) != 0 ||
        gateway_route_daemon_logs(gw, sse->logs) != 0 ||
        !(sse->tap = gateway_log_tap_new(loop, sse->logs)))
        return -1;
    router_node_set_event_sink(node, gateway_events_on_comms, sse->events);
    router_node_set_channel_sink(node, gateway_events_on_channel, sse->events);
    if (router_node_turns(node))
        router_turns_set_event_sink(router_node_turns(node), s_sse_turn_event, sse->events);
    return 0;
}

/* The WebSocket bounds of DESIGN §10 from the configuration, the same for
 * every WebSocket route: message size, ping interval, and the time to
 * finish a frame once begun (limits.frame_timeout_ms, as on comms). */
static gateway_ws_opts_t s_ws_opts(const router_config_t *cfg)
{
    return (gateway_ws_opts_t){.message_max = cfg->limits.ws_message_max,
                               .frame_timeout_ms = cfg->limits.frame_timeout_ms,
                               .ping_interval_ms = cfg->limits.ws_ping_interval_ms};
}

/* /ws/chat and the session API (WIRE §24) on the node's turns; one per
 * process, like the echo's bounds. It takes over the turns' event sink,
 * publishing to /api/events itself and relaying to listen-only sockets. */
static gateway_chat_t *s_chat;

static int s_chat_start(router_node_t *node, const router_config_t *cfg, gateway_http_t *gw,
                        gateway_auth_t *auth, gateway_events_t *events)
{
    if (!router_node_turns(node))
        return 0;
    gateway_chat_opts_t co = {.auth = auth, .turns = router_node_turns(node), .events = events,
                              .ws = s_ws_opts(cfg), .metrics = router_node_metrics(node)};
    return (s_chat = gateway_chat_new(gw, router_node_loop(node), &co)) ? 0 : -1;
}

/* The OpenClaw-compatible endpoint, `GET /` with Upgrade (WIRE §25), on the
 * node's turns; KITH_OPENCLAW_TICK_MS sets its tick interval. */
static gateway_openclaw_t *s_openclaw;

static int s_openclaw_start(router_node_t *node, const router_config_t *cfg, gateway_http_t *gw,
                            gateway_auth_t *auth)
{
    if (!router_node_turns(node))
        return 0;
    const char *tick = getenv("KITH_OPENCLAW_TICK_MS");
    gateway_openclaw_opts_t oo = {.auth = auth, .turns = router_node_turns(node),
                                  .ws = s_ws_opts(cfg),
                                  .tick_ms = tick ? (unsigned) strtoul(tick, NULL, 10) : 0,
                                  .preauth_max = cfg->limits.ws_preauth_frame_max,
                                  .version = KITH_VERSION, .metrics = router_node_metrics(node)};
    return (s_openclaw = gateway_openclaw_new(gw, router_node_loop(node), &oo)) ? 0 : -1;
}

/* Live canvases (WIRE §26); their sockets' bounds live here, like the echo's. */
static gateway_canvas_t *s_canvas;

static int s_canvas_start(const router_config_t *cfg, gateway_http_t *gw, gateway_auth_t *auth)
{
    gateway_ws_opts_t wo = s_ws_opts(cfg);
    return (s_canvas = gateway_canvas_new(gw, auth, &wo)) ? 0 : -1;
}

/* The node registry (WIRE §27). */
static gateway_nodes_t *s_nodes;

static int s_nodes_start(router_node_t *node, const router_config_t *cfg, gateway_http_t *gw,
                         gateway_auth_t *auth)
{
    gateway_ws_opts_t wo = s_ws_opts(cfg);
    return (s_nodes = gateway_nodes_new(gw, router_node_loop(node), auth, &wo)) ? 0 : -1;
}

/* The HTTP gateway on the node's loop, listening on gateway.host:port with
 * the configured limits and the node's metrics. Returns the server, or
 * NULL with a one-line reason in err. */
static gateway_http_t *s_gateway_start(router_node_t *node, const router_config_t *cfg,
                                       const char *home, s_gw_auth_t *ga, s_sse_t *sse,
                                       char *err, size_t errcap)
{
    char shown[ROUTER_ADDR_STR_MAX] = "?";
    router_addr_t addr, bound;
    router_addr_err_t why;
    if (router_addr_from_host(cfg->gateway.host, cfg->gateway.port, &addr, &why) != 0) {
        snprintf(err, errcap, "gateway.host %s: %s (use an IP address or localhost)",
                 cfg->gateway.host, router_addr_err_str(why));
        return NULL;
    }
    gateway_http_opts_t o;
    gateway_http_opts_from_config(&o, cfg);
    o.metrics = router_node_metrics(node);
    gateway_http_t *gw = gateway_http_new(router_node_loop(node), &o);
    if (!gw || gateway_route_health(gw) != 0 || gateway_route_metrics(gw, o.metrics) != 0 ||
        gateway_route_console(gw) != 0) {
        snprintf(err, errcap, "gateway: cannot set up: %s", strerror(errno));
        goto fail;
    }
    /* One gateway per process, so the echo's bounds can live here. */
    static gateway_ws_opts_t echo_opts;
    echo_opts = s_ws_opts(cfg);
    if (cfg->gateway.echo && gateway_route_ws_echo(gw, &echo_opts) != 0) {
        snprintf(err, errcap, "gateway: cannot serve /ws/echo: %s", strerror(errno));
        goto fail;
    }
    if (s_gw_auth_start(ga, node, cfg, home, gw, err, errcap) != 0)
        goto fail;
    if (s_sse_start(node, cfg, gw, ga->auth, sse) != 0) {
        snprintf(err, errcap, "gateway: cannot serve /api/events: %s", strerror(errno));
        goto fail;
    }
    gateway_ingress_set_events(ga->ingress, sse->events);
    if (s_chat_start(node, cfg, gw, ga->auth, sse->events) != 0) {
        snprintf(err, errcap, "gateway: cannot serve /ws/chat: %s", strerror(errno));
        goto fail;
    }
    if (s_openclaw_start(node, cfg, gw, ga->auth) != 0) {
        snprintf(err, errcap, "gateway: cannot serve the OpenClaw endpoint: %s", strerror(errno));
        goto fail;
    }
    if (s_canvas_start(cfg, gw, ga->auth) != 0) {
        snprintf(err, errcap, "gateway: cannot serve the canvases: %s", strerror(errno));
        goto fail;
    }
    if (s_nodes_start(node, cfg, gw, ga->auth) != 0) {
        snprintf(err, errcap, "gateway: cannot serve the node registry: %s", strerror(errno));
        goto fail;
    }
    (void) router_addr_format(&addr, shown, sizeof shown);
    if (gateway_http_listen(gw, &addr, &bound) != 0) {
        snprintf(err, errcap, "gateway: cannot listen on http://%s: %s", shown, strerror(errno));
        goto fail;
    }
    (void) router_addr_format(&bound, shown, sizeof shown);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "listening on http://%s (%s)", shown,
               router_loop_backend_name(router_node_loop(node)));
    if (cfg->gateway.echo)
        ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "serving ws://%s/ws/echo (gateway.echo; no token)",
                   shown);
    s_gw_exposure_warn(cfg, &bound, shown);
    s_gw_auth_announce(ga);
    return gw;
fail:
    gateway_http_destroy(&gw);
    gateway_chat_destroy(&s_chat);
    gateway_openclaw_destroy(&s_openclaw);
    gateway_canvas_destroy(&s_canvas);
    gateway_nodes_destroy(&s_nodes);
    s_sse_stop(node, sse);
    return NULL;
}

/* ---------------------------------------------------------------- audit */

/* The audit worker (its own thread: every fsync of audit.log happens
 * there) and the router's feed of security events to it (WIRE §21). */
typedef struct {
    router_broker_t *broker;       /* the node's (router_node_broker), borrowed */
    audit_worker_t *worker;        /* NULL when audit.enabled is false */
    router_audit_feed_t *feed;     /* NULL when audit.enabled is false */
} s_audit_t;

static int s_audit_start(s_audit_t *au, router_node_t *node, const router_config_t *cfg,
                         const char *home, char *err, size_t errcap)
{
    if (!cfg->audit.enabled) {
        ROUTER_LOG(ROUTER_LOG_INFO, "audit", "audit log off (audit.enabled false)");
        return 0;
    }
    char path[ROUTER_PATH_MAX];
    if (cfg->audit.path[0] == '/')
        snprintf(path, sizeof path, "%s", cfg->audit.path);
    else if (router_home_path(home, cfg->audit.path, path, sizeof path) != 0) {
        snprintf(err, errcap, "audit.path is too long");
        return -1;
    }
    /* A relative audit.path is under the home, which is kith's: its
     * folders are made as logs/ is ("audit/kith.log" stopped the daemon
     * with "No such file or directory"). An absolute one's are the
     * operator's. */
    char *slash = strrchr(path, '/');
    if (cfg->audit.path[0] != '/' && strchr(cfg->audit.path, '/') && slash) {
        *slash = '\0';
        int made = router_home_mkdirs(path, 0700);
        int e = errno;
        *slash = '/';
        if (made != 0) {
            snprintf(err, errcap,
                     "audit.path: cannot create the folder of %s: %s; make its folder, or set "
                     "audit.path to a file kith can write (audit.enabled false turns it off)",
                     path, strerror(e));
            return -1;
        }
    }
    if (!(au->broker = router_node_broker(node))) {
        snprintf(err, errcap, "audit: the node has no worker broker");
        return -1;
    }
    audit_worker_opts_t wo = {.path = path, .hmac_key_env = cfg->audit.hmac_key_env,
                              .heartbeat_ms = (int) cfg->workers.heartbeat_ms,
                              .liveness = (int) cfg->workers.liveness,
                              .rotate_bytes = cfg->audit.rotate_bytes, .keep = cfg->audit.keep,
                              .query_scan_max = cfg->audit.query_scan_bytes};
    if (!(au->worker = audit_worker_start(&wo, err, errcap))) {
        /* The log itself cannot be opened: name the key that placed it
         * and what to do ("cannot open …" alone named neither). */
        if (!strncmp(err, "cannot open ", 12)) {
            char why[KITH_ERR_MAX];
            snprintf(why, sizeof why, "%s", err);
            int n = snprintf(err, errcap, "audit.path: %s; make its folder, or set audit.path "
                                          "to a file kith can write (audit.enabled false turns "
                                          "it off)", why);
            if (n < 0 || (size_t) n >= errcap)
                snprintf(err, errcap, "%s", why); /* too long to add to: as it was */
        }
        return -1;
    }
    router_audit_feed_opts_t fo = {.loop = router_node_loop(node), .broker = au->broker,
                                   .metrics = router_node_metrics(node)};
    if (!(au->feed = router_audit_feed_new(&fo))) {
        snprintf(err, errcap, "audit: out of memory");
        return -1;
    }
    router_node_set_audit(node, au->feed);
    return 0;
}

/* After the loop stopped: the feed (events still queued are counted as
 * dropped), then the worker; the broker is the node's. */
static void s_audit_stop(s_audit_t *au, router_node_t *node)
{
    if (node)
        router_node_set_audit(node, NULL);
    router_audit_feed_destroy(&au->feed);
    audit_worker_stop(&au->worker);
    au->broker = NULL;
}

/* The home holds the identity key and state.db: say so once at start when
 * group or others may read or write it, and how to fix it. */
static void s_warn_home_mode(const char *home)
{
    struct stat st;
    if (stat(home, &st) == 0 && (st.st_mode & 077))
        ROUTER_LOG(ROUTER_LOG_WARN, "daemon",
                   "%s is readable or writable by group or others (mode %04o): it holds this "
                   "node's secret key and state; run: chmod 700 %s",
                   home, (unsigned) (st.st_mode & 07777), home);
}

/* A start refused before anything ran takes back the folders it made:
 * logs/, and the home when this run made it (rmdir: only when empty). */
static void s_home_undo(const char *home, const char *logdir, bool home_new)
{
    if (!home_new)
        return;
    (void) rmdir(logdir);
    (void) rmdir(home);
}

/* What to do when a listener cannot be opened, after the reason (the
 * rest of the start failures name their key or file already). */
static const char *s_start_fix(const char *err)
{
    if (strstr(err, "Address already in use"))
        return "; another process listens there (another kith daemon?): stop it, or choose "
               "another address (--port, gateway.port, comms.address)";
    return "";
}

/* `kith daemon` and `kith gateway` (cmd names which): one server, the
 * gateway without the comms listeners. */
static int s_serve(int argc, char **argv, const char *cmd)
{
    const char *home_flag = NULL, *config_flag = NULL, *host = NULL, *port = NULL;
    const char *level_text = "info";
    int echo = 0;
    enum { S_HOME = 256, S_CONFIG, S_HOST, S_PORT, S_LOG_LEVEL, S_ECHO };
    static const struct option flags[] = {
        {"home", required_argument, NULL, S_HOME},   {"config", required_argument, NULL, S_CONFIG},
        {"host", required_argument, NULL, S_HOST},   {"port", required_argument, NULL, S_PORT},
        {"log-level", required_argument, NULL, S_LOG_LEVEL}, {"echo", no_argument, NULL, S_ECHO},
        {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = cmd, .help = cmd,
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP:
            s_usage(stdout, cmd);
            return KITH_EXIT_OK;
        case S_HOME: home_flag = optarg; break;
        case S_CONFIG: config_flag = optarg; break;
        case S_HOST: host = optarg; break;
        case S_PORT: port = optarg; break;
        case S_LOG_LEVEL: level_text = optarg; break;
        case S_ECHO: echo = 1; break;
        default: return KITH_EXIT_FAIL;
        }
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith %s: unexpected argument '%s'; see kith %s --help\n", cmd,
                argv[kith_opts_rest(&o)], cmd);
        return KITH_EXIT_FAIL;
    }
    /* Checked before the home is made: a mistyped flag leaves nothing behind. */
    router_log_level_t level;
    if (router_log_level_parse(level_text, &level) != 0) {
        fprintf(stderr, "kith %s: --log-level must be debug, info, warn or error\n", cmd);
        return KITH_EXIT_FAIL;
    }

    /* Before any thread exists: SIGINT/SIGTERM/SIGHUP reach the loop's
     * signalfd only if every thread blocks them (an unblocked SIGHUP would
     * kill the daemon). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char home[ROUTER_PATH_MAX], err[KITH_ERR_MAX] = "";
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith %s: no home directory: pass --home DIR or set KITH_HOME\n", cmd);
        return KITH_EXIT_FAIL;
    }
    /* The configuration is read before the home is made: a mistake in it
     * or in a flag leaves no empty home behind (a home that does not exist
     * yet has no config.json: the defaults). */
    struct stat home_st;
    int home_stat = stat(home, &home_st);
    bool home_new = home_stat != 0 && errno == ENOENT; /* undone if the start is refused */
    if (home_stat == 0 && !S_ISDIR(home_st.st_mode)) {
        fprintf(stderr, "kith %s: %s is not a directory; pass --home DIR (or set KITH_HOME) to "
                        "a directory, which kith makes when missing\n", cmd, home);
        return KITH_EXIT_FAIL;
    }
    router_config_t cfg;
    bool used = false;
    if (router_config_load(&cfg, home, config_flag, &used, err, sizeof err) != 0) {
        fprintf(stderr, "kith %s: %s\n", cmd, err);
        return KITH_EXIT_FAIL;
    }
    /* A flag's value is named by the flag the user typed. The reason
     * router_config_set gives starts with the key it sets ("gateway.port: "). */
    static const struct { const char *flag, *key; } overrides[] = {
        {"--host", "gateway.host"}, {"--port", "gateway.port"}};
    const char *values[] = {host, port};
    for (size_t i = 0; i < 2; i++) {
        if (!values[i] ||
            router_config_set(&cfg, overrides[i].key, values[i], err, sizeof err) == 0)
            continue;
        size_t klen = strlen(overrides[i].key);
        const char *why = !strncmp(err, overrides[i].key, klen) && !strncmp(err + klen, ": ", 2)
                              ? err + klen + 2
                              : err;
        fprintf(stderr, "kith %s: %s (%s): %s\n", cmd, overrides[i].flag, overrides[i].key, why);
        return KITH_EXIT_FAIL;
    }
    if ((echo && router_config_set(&cfg, "gateway.echo", "true", err, sizeof err) != 0) ||
        (!strcmp(cmd, "gateway") &&
         router_config_set(&cfg, "comms.mode", "none", err, sizeof err) != 0) ||
        router_config_check(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "kith %s: %s\n", cmd, err);
        return KITH_EXIT_FAIL;
    }
    char logdir[ROUTER_PATH_MAX], logpath[ROUTER_PATH_MAX];
    if (router_home_path(home, "logs", logdir, sizeof logdir) != 0 ||
        router_home_path(home, "logs/daemon.log", logpath, sizeof logpath) != 0) {
        fprintf(stderr, "kith %s: %s/logs/daemon.log: path too long; use a shorter --home\n",
                cmd, home);
        return KITH_EXIT_FAIL;
    }
    if (router_home_mkdirs(home, 0700) != 0) {
        fprintf(stderr, "kith %s: cannot create %s: %m\n", cmd, home);
        return KITH_EXIT_FAIL;
    }
    if (router_home_mkdirs(logdir, 0700) != 0) {
        fprintf(stderr, "kith %s: cannot create %s: %m; the daemon keeps its log there: check "
                        "the home's permissions and free space\n", cmd, logdir);
        s_home_undo(home, logdir, home_new);
        return KITH_EXIT_FAIL;
    }
    if (kith_statedb_check(cmd, home) != 0) {
        s_home_undo(home, logdir, home_new);
        return KITH_EXIT_FAIL;
    }
    /* Only the log failing is no reason to stop: the daemon serves with
     * its log on stderr (and /api/daemon/logs) and SIGHUP opens the file
     * once it can be. */
    router_log_opts_t lo = {.level = level, .path = logpath};
    if (router_log_start(&lo) != 0)
        fprintf(stderr, "kith %s: cannot start the log writer (%m); logging to stderr only\n",
                cmd);
    else if (router_log_file_error() != 0)
        fprintf(stderr, "kith %s: cannot open %s (%s); logging to stderr only: make that path a "
                        "file kith can write, then send the daemon SIGHUP to open it\n",
                cmd, logpath, strerror(router_log_file_error()));

    ROUTER_LOG(ROUTER_LOG_INFO, "daemon", "starting: home %s, config %s", home,
               used ? "config.json" : "embedded defaults");
    s_warn_home_mode(home);
    /* A workers.listen connection takes two descriptors (ZeroMQ's, and the
     * one kith cuts it by: WIRE §19.2), for every worker and every pending
     * connection. */
    /* Only the listeners this run opens: `kith gateway` (comms.mode
     * "none") has no comms connections, and warned about a limit too low
     * for 10,000 of them. */
    uint64_t conns = cfg.gateway.max_connections;
    if (cfg.comms.mode != ROUTER_COMMS_NONE)
        conns += cfg.limits.comms_connections_max;
    if (cfg.workers.listen[0])
        conns += 2 * ((uint64_t) ROUTER_BROKER_WORKERS_MAX + cfg.limits.workers_pending_max);
    (void) router_fdlimit_raise(conns > UINT_MAX ? UINT_MAX : (unsigned) conns);
    /* Per-connection buffers of 128 KiB and more (partial frames, parked
     * input) are mapped on their own and go back to the system when the
     * connection goes. glibc would otherwise raise this threshold after the
     * first such free and keep them in the heap, where a flood of cut
     * connections leaves the daemon's memory high long after (WIRE §9.1). */
    (void) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    router_node_opts_t no = {.home = home, .config = &cfg, .listen = true, .handle_signals = true,
                             .workers = true};
    router_node_t *node = router_node_new(&no, err, sizeof err);
    if (!node) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "daemon", "cannot start: %s", err);
        router_log_stop();
        fprintf(stderr, "kith %s: %s%s\n", cmd, err, s_start_fix(err));
        return KITH_EXIT_FAIL;
    }
    char pk[PROTO_PUBKEY_TEXT_CAP], pid[PROTO_UUID_TEXT_CAP];
    uint8_t peer_id[16];
    (void) proto_pubkey_format(router_node_pubkey(node), pk, sizeof pk);
    proto_peer_id(router_node_pubkey(node), peer_id);
    proto_uuid_format(peer_id, pid);
    ROUTER_LOG(ROUTER_LOG_INFO, "daemon", "identity %s peer_id %s", pk, pid);
    if (cfg.comms.mode == ROUTER_COMMS_NONE)
        ROUTER_LOG(ROUTER_LOG_INFO, "daemon", "comms off (comms.mode \"none\")");
    s_audit_t au = {0};
    if (s_audit_start(&au, node, &cfg, home, err, sizeof err) != 0) {
        s_audit_stop(&au, node);
        ROUTER_LOG(ROUTER_LOG_ERROR, "daemon", "cannot start: %s", err);
        router_node_destroy(&node);
        router_log_stop();
        fprintf(stderr, "kith %s: %s%s\n", cmd, err, s_start_fix(err));
        return KITH_EXIT_FAIL;
    }
    s_gw_auth_t ga = {.audit_feed = au.feed, .audit_broker = au.broker};
    s_sse_t sse = {0};
    gateway_http_t *gw = s_gateway_start(node, &cfg, home, &ga, &sse, err, sizeof err);
    if (!gw) {
        s_gw_auth_stop(&ga, node);
        s_audit_stop(&au, node);
        ROUTER_LOG(ROUTER_LOG_ERROR, "daemon", "cannot start: %s", err);
        router_node_destroy(&node);
        s_gw_auth_destroy(&ga); /* after the loop: its posts may name the token store */
        router_log_stop();
        fprintf(stderr, "kith %s: %s%s\n", cmd, err, s_start_fix(err));
        return KITH_EXIT_FAIL;
    }
    /* Stop taking HTTP connections the moment the drain starts, and let
     * the answers in progress go out before the loop ends. */
    s_gw_drain_t drain = {.gw = gw, .audit = au.feed, .node = node};
    router_node_on_stop(node, s_gateway_drain, &drain);
    /* The embedded agent workers (workers.agent_threads) on inproc. */
    agent_pool_opts_t apo;
    agent_pool_opts_from_config(&apo, &cfg);
    agent_pool_t *agents = agent_pool_start(&apo, err, sizeof err);
    if (!agents)
        ROUTER_LOG(ROUTER_LOG_ERROR, "daemon", "no embedded agent workers: %s", err);
    ROUTER_LOG(ROUTER_LOG_INFO, "daemon", "ready; SIGINT or SIGTERM to stop");

    int rc = router_node_run(node);
    agent_pool_stop(&agents);
    s_gw_auth_stop(&ga, node);
    /* The loop has stopped: the gateway stops listening and lets go of its
     * connections (they belong to the loop, which closes them as the node
     * is destroyed). */
    gateway_http_destroy(&gw);
    gateway_chat_destroy(&s_chat); /* after the gateway let its sockets go, before the turns */
    gateway_openclaw_destroy(&s_openclaw);
    gateway_canvas_destroy(&s_canvas);
    gateway_nodes_destroy(&s_nodes);
    s_sse_stop(node, &sse);
    s_audit_stop(&au, node);
    router_node_destroy(&node);
    s_gw_auth_destroy(&ga); /* after the loop: its posts may name the token store */
    ROUTER_LOG(ROUTER_LOG_INFO, "daemon", "stopped");
    router_log_stop();
    return rc == 0 ? KITH_EXIT_OK : KITH_EXIT_FAIL;
}

int kith_cmd_daemon(int argc, char **argv)
{
    return s_serve(argc, argv, "daemon");
}

int kith_cmd_gateway(int argc, char **argv)
{
    return s_serve(argc, argv, "gateway");
}
