/* router/state/config.c — the config.json schema (one table of every key), its
 * strict reader on yajl callbacks, and command-line overrides. */
#include "router/state/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

#include "proto/http.h"
#include "proto/utf8.h"
#include "router/net/addr.h"
#include "router/state/home.h"
#include "router/state/jsonc.h"
#include "router/state/statefile.h"

/* ------------------------------------------------------------ value checks */

/* Each check looks at a NUL-terminated, non-empty string free of control
 * characters and returns 0, or -1 with a short reason in why[whycap]. */
typedef int (*s_check_fn)(const char *s, char *why, size_t whycap);

static bool s_is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* The address a listener binds: the daemon takes an IP literal or
 * localhost, never a name to look up (router_addr_from_host), so a name
 * here would pass the check and then stop the daemon. */
static int s_check_listen_host(const char *s, char *why, size_t whycap)
{
    router_addr_t a;
    router_addr_err_t e;
    if (router_addr_from_host(s, 0, &a, &e) == 0)
        return 0;
    snprintf(why, whycap, "%s",
             s[0] == '[' ? "an IPv6 address here goes without brackets"
                         : "a listener binds an address; kith looks no name up for it");
    return -1;
}

/* "host:port" a listener binds, host as s_check_listen_host takes it. */
static int s_check_listen_hostport(const char *s, char *why, size_t whycap)
{
    router_hostport_t hp;
    router_addr_t a;
    router_addr_err_t e;
    if (router_addr_split(s, &hp, &e) != 0 || router_addr_from_host(hp.host, hp.port, &a, &e) != 0) {
        snprintf(why, whycap, "%s", router_addr_err_str(e));
        return -1;
    }
    return 0;
}

/* "host:port" or "[v6]:port", split as every address is (router/net/addr). */
static int s_check_hostport(const char *s, char *why, size_t whycap)
{
    router_hostport_t hp;
    router_addr_err_t e;
    if (router_addr_split(s, &hp, &e) != 0) {
        snprintf(why, whycap, "%s", router_addr_err_str(e));
        return -1;
    }
    if (!router_addr_host_valid(hp.host)) {
        snprintf(why, whycap, "host is not an IPv4 address or a host name");
        return -1;
    }
    return 0;
}

static int s_check_abs_path(const char *s, char *why, size_t whycap)
{
    if (s[0] != '/') {
        snprintf(why, whycap, "not an absolute path");
        return -1;
    }
    if (s[strlen(s) - 1] == '/') {
        snprintf(why, whycap, "names a directory");
        return -1;
    }
    return 0;
}

/* The plain event listener's address, checked by the parser that will
 * listen on it (router_addr_parse), so config accepts exactly what the
 * daemon can open: WIRE §10. A socket path must be absolute (the daemon's
 * working directory is nobody's business). */
static int s_check_event_address(const char *s, char *why, size_t whycap)
{
    router_addr_t addr;
    router_addr_err_t e;
    if (router_addr_parse(s, &addr, &e) != 0) {
        snprintf(why, whycap, "%s", router_addr_err_str(e));
        return -1;
    }
    if (router_addr_family(&addr) == AF_UNIX) {
        const char *path = addr.u.un.sun_path;
        if (path[0] != '/') {
            snprintf(why, whycap, "a socket path must be absolute");
            return -1;
        }
        if (path[strlen(path) - 1] == '/') {
            snprintf(why, whycap, "names a directory");
            return -1;
        }
    }
    return 0;
}

static int s_check_env_name(const char *s, char *why, size_t whycap)
{
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char) *p;
        if (!(c == '_' || s_is_alnum(c)) || (p == s && c >= '0' && c <= '9')) {
            snprintf(why, whycap, "not an environment variable name");
            return -1;
        }
    }
    return 0;
}

static int s_check_session(const char *s, char *why, size_t whycap)
{
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char) *p;
        if (!s_is_alnum(c) && c != '.' && c != '_' && c != '-') {
            snprintf(why, whycap, "only letters, digits, '.', '_' and '-' are allowed");
            return -1;
        }
    }
    return 0;
}

static bool s_has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Whether the part of s after `prefix` is non-empty and has no space. */
static bool s_rest_ok(const char *s, const char *prefix)
{
    const char *rest = s + strlen(prefix);
    return *rest && !strchr(rest, ' ');
}

static int s_check_zmq_endpoint(const char *s, char *why, size_t whycap)
{
    static const char *const schemes[] = {"tcp://", "ipc://", "inproc://"};
    /* A relative socket path would be found from the daemon's working
     * directory, which is / under systemd: bound, if at all, where no
     * worker looks. An abstract name (@name) is no path. */
    if (s_has_prefix(s, "ipc://") && s[6] && s[6] != '/' && s[6] != '@') {
        snprintf(why, whycap, "an ipc:// socket path must be absolute");
        return -1;
    }
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (s_has_prefix(s, schemes[i]) && s_rest_ok(s, schemes[i]))
            return 0;
    snprintf(why, whycap, "not a ZeroMQ endpoint");
    return -1;
}

static int s_check_url(const char *s, char *why, size_t whycap)
{
    if ((s_has_prefix(s, "http://") && s_rest_ok(s, "http://")) ||
        (s_has_prefix(s, "https://") && s_rest_ok(s, "https://")))
        return 0;
    snprintf(why, whycap, "not an http:// or https:// URL");
    return -1;
}

static int s_check_file_path(const char *s, char *why, size_t whycap)
{
    if (s[strlen(s) - 1] == '/') {
        snprintf(why, whycap, "names a directory");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ the schema */

typedef enum {
    S_BOOL,   /* JSON true/false into a bool */
    S_UINT,   /* JSON integer min..max into a uint16_t, uint32_t or uint64_t */
    S_STRING, /* JSON string into a char[size] */
    S_CHOICE, /* JSON string, one of `choices`, into an enum (its index) */
} s_kind_t;

typedef struct {
    const char *name;            /* key within its section */
    s_kind_t kind;               /* JSON type and storage */
    size_t offset;               /* of the field in router_config_t */
    size_t size;                 /* sizeof the field */
    bool nullable;               /* S_STRING: null (stored as "") allowed */
    uint64_t min, max;           /* S_UINT: inclusive range */
    const char *const *choices;  /* S_CHOICE: names, NULL-terminated */
    s_check_fn check;            /* S_STRING: syntax beyond "a string", or NULL */
    const char *expect;          /* S_STRING: what `check` wants, for errors */
} s_key_t;

typedef struct {
    const char *name;   /* top-level key */
    const s_key_t *keys;
    size_t nkeys;
} s_section_t;

#define S_FIELD(f) .offset = offsetof(router_config_t, f), .size = sizeof(((router_config_t *) 0)->f)
#define S_B(n, f)  {.name = n, .kind = S_BOOL, S_FIELD(f)}
#define S_U(n, f, lo, hi) {.name = n, .kind = S_UINT, S_FIELD(f), .min = lo, .max = hi}
#define S_S(n, f, nul, fn, what) \
    {.name = n, .kind = S_STRING, S_FIELD(f), .nullable = nul, .check = fn, .expect = what}
#define S_C(n, f, list) {.name = n, .kind = S_CHOICE, S_FIELD(f), .choices = list}
#define S_N(a) (sizeof(a) / sizeof((a)[0]))

/* Indexed by the enums in config.h. */
static const char *const s_modes[] = {"tcp", "uds", "inproc", "none", NULL};
static const char *const s_auths[] = {"ed25519", "none", NULL};
static const char *const s_providers[] = {"scripted", "openai", NULL};

#define S_HOSTPORT "\"host:port\" (IPv6 as \"[::1]:4200\")"
#define S_LISTEN_HOSTPORT "\"host:port\" to listen on (host an IP address or localhost; IPv6 as " \
                          "\"[::1]:4200\")"
#define S_ENV      "an environment variable name"
#define S_EVENT_ADDR                                                                   \
    "\"tcp://host:port\" or \"host:port\" (host an IP address or localhost; IPv6 as " \
    "\"[::1]:4200\"), or \"uds:///abs/path\" or \"/abs/path\" (a Unix socket)"

static const s_key_t s_gateway_keys[] = {
    S_S("host", gateway.host, false, s_check_listen_host,
        "an IP address or localhost (the address to listen on)"),
    S_U("port", gateway.port, 0, 65535),
    S_B("require_pairing", gateway.require_pairing),
    S_B("allow_query_token", gateway.allow_query_token),
    S_B("echo", gateway.echo),
    S_S("webhook_secret_env", gateway.webhook_secret_env, true, s_check_env_name, S_ENV),
    S_U("max_connections", gateway.max_connections, 1, 1048576),
};

static const s_key_t s_comms_keys[] = {
    S_C("mode", comms.mode, s_modes),
    S_S("address", comms.address, false, s_check_listen_hostport, S_LISTEN_HOSTPORT),
    S_S("advertise_address", comms.advertise_address, true, s_check_hostport, S_HOSTPORT),
    S_S("uds_path", comms.uds_path, true, s_check_abs_path, "an absolute socket path"),
    S_C("auth", comms.auth, s_auths),
    S_B("require_peer_auth", comms.require_peer_auth),
    S_S("event_address", comms.event_address, true, s_check_event_address, S_EVENT_ADDR),
    S_U("ack_timeout_ms", comms.ack_timeout_ms, 1, 3600000),
    S_U("inbox_capacity", comms.inbox_capacity, 1, 1048576),
    S_U("replay_window_s", comms.replay_window_s, 1, 86400),
    S_U("replay_horizon_s", comms.replay_horizon_s, 1, 31536000),
    S_U("inbox_max_bytes", comms.inbox_max_bytes, 1024, 17179869184ull),
    S_S("session", comms.session, false, s_check_session, "a session name"),
    S_S("pairing_password_env", comms.pairing_password_env, true, s_check_env_name, S_ENV),
    S_U("crypto_threads", comms.crypto_threads, 0, ROUTER_CONFIG_CRYPTO_THREADS_MAX),
};

static const s_key_t s_workers_keys[] = {
    S_U("agent_threads", workers.agent_threads, 0, 256),
    S_S("listen", workers.listen, true, s_check_zmq_endpoint,
        "a ZeroMQ endpoint (tcp://, ipc:// or inproc://)"),
    S_U("heartbeat_ms", workers.heartbeat_ms, 10, 600000),
    S_U("liveness", workers.liveness, 1, 100),
};

static const s_key_t s_agent_keys[] = {
    S_C("provider", agent.provider, s_providers),
    S_S("base_url", agent.base_url, true, s_check_url, "an http:// or https:// URL"),
    S_S("model", agent.model, true, NULL, NULL),
    S_S("api_key_env", agent.api_key_env, true, s_check_env_name, S_ENV),
    S_U("max_tool_iterations", agent.max_tool_iterations, 1, 10000),
    S_U("max_history_messages", agent.max_history_messages, 1, 1000000),
    S_U("turn_timeout_s", agent.turn_timeout_s, 1, 86400),
};

static const s_key_t s_audit_keys[] = {
    S_B("enabled", audit.enabled),
    S_S("path", audit.path, false, s_check_file_path, "a file path"),
    S_S("hmac_key_env", audit.hmac_key_env, true, s_check_env_name, S_ENV),
    S_U("rotate_bytes", audit.rotate_bytes, 0, 1ull << 50),
    S_U("keep", audit.keep, 1, 1000),
    S_U("query_scan_bytes", audit.query_scan_bytes, 0, 1ull << 50),
};

/* DESIGN §10. Byte counts that are size_t in the struct are stored through
 * the same S_U (s_store_uint handles the width). */
static const s_key_t s_limits_keys[] = {
    S_U("envelope_frame_max", limits.envelope_frame_max, 1, 1048576),
    S_U("conn_unsent_max", limits.conn_unsent_max, 1024, 1073741824),
    S_U("conn_unsent_total_max", limits.conn_unsent_total_max, 1048576, 1ull << 44),
    S_U("comms_connections_max", limits.comms_connections_max, 1, 1048576),
    S_U("comms_unauth_connections_max", limits.comms_unauth_connections_max, 1, 1048576),
    S_U("comms_unauth_per_source_max", limits.comms_unauth_per_source_max, 1, 1048576),
    S_U("http_unauth_connections_max", limits.http_unauth_connections_max, 1, 1048576),
    S_U("http_unauth_per_source_max", limits.http_unauth_per_source_max, 1, 1048576),
    S_U("partial_frame_bytes_max", limits.partial_frame_bytes_max, 1024, 4294967295u),
    S_U("first_frame_timeout_ms", limits.first_frame_timeout_ms, 1, 3600000),
    S_U("frame_timeout_ms", limits.frame_timeout_ms, 1, 3600000),
    S_U("comms_idle_timeout_ms", limits.comms_idle_timeout_ms, 1, 86400000),
    S_U("event_connections_max", limits.event_connections_max, 1, 1048576),
    S_U("workers_pending_max", limits.workers_pending_max, 1, 65536),
    S_U("workers_pending_per_source_max", limits.workers_pending_per_source_max, 1, 65536),
    S_U("http_head_max", limits.http_head_max, 1024, 1048576),
    /* The parser keeps at most PROTO_HTTP_HEADERS_MAX field lines: past it
     * the gateway refused to start ("cannot set up: Invalid argument"). */
    S_U("http_headers_max", limits.http_headers_max, 1, PROTO_HTTP_HEADERS_MAX),
    S_U("http_body_max", limits.http_body_max, 1, 1073741824),
    /* DESIGN §10's "25 MiB for attachments": no HTTP route takes them, so
     * it bounds a /ws/chat message's attachments (WIRE §24.3); it was in
     * the struct, but no file could set it and nothing read it. */
    S_U("http_attachment_body_max", limits.http_attachment_body_max, 1, 1073741824),
    /* The gateway's deadlines (WIRE §11.2 request_timeout, §11.2's idle
     * keep-alive close): constants until these keys, so DESIGN §10's "all
     * configurable" did not hold for them. */
    S_U("http_head_timeout_ms", limits.http_head_timeout_ms, 100, 3600000),
    S_U("http_body_timeout_ms", limits.http_body_timeout_ms, 100, 3600000),
    S_U("http_idle_timeout_ms", limits.http_idle_timeout_ms, 100, 3600000),
    S_U("ws_message_max", limits.ws_message_max, 1, 1073741824),
    S_U("ws_preauth_frame_max", limits.ws_preauth_frame_max, 125, 16777216),
    S_U("ws_ping_interval_ms", limits.ws_ping_interval_ms, 100, 3600000),
    /* spec/WIRE.md §19.5 names it; it was set in the struct but no file
     * could change it ("unknown key"). */
    S_U("session_queue_max", limits.session_queue_max, 1, 65536),
    S_U("sse_ring_events", limits.sse_ring_events, 1, 1048576),
    S_U("sessions_max", limits.sessions_max, 1, 100000000),
    S_U("session_messages_max", limits.session_messages_max, 1, 100000000),
    S_U("session_bytes_max", limits.session_bytes_max, 4096, 1ull << 40),
    S_U("sessions_bytes_max", limits.sessions_bytes_max, 4096, 1ull << 50),
};

static const s_section_t s_sections[] = {
    {"gateway", s_gateway_keys, S_N(s_gateway_keys)},
    {"comms", s_comms_keys, S_N(s_comms_keys)},
    {"workers", s_workers_keys, S_N(s_workers_keys)},
    {"agent", s_agent_keys, S_N(s_agent_keys)},
    {"audit", s_audit_keys, S_N(s_audit_keys)},
    {"limits", s_limits_keys, S_N(s_limits_keys)},
};

/* Seen-key bitmaps are 32 bits wide for sections, 64 for one section's keys
 * (limits holds 31 keys: one more and 32 bits would not do). */
_Static_assert(S_N(s_sections) <= 32, "too many sections");
_Static_assert(S_N(s_comms_keys) <= 64, "too many keys in a section");
_Static_assert(S_N(s_limits_keys) <= 64, "too many keys in a section");

void router_config_defaults(router_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->gateway.host, sizeof cfg->gateway.host, "127.0.0.1");
    cfg->gateway.port = 42617;
    cfg->gateway.require_pairing = true;
    cfg->gateway.allow_query_token = true;
    cfg->gateway.echo = false;
    cfg->gateway.max_connections = 10000;

    cfg->comms.mode = ROUTER_COMMS_TCP;
    snprintf(cfg->comms.address, sizeof cfg->comms.address, "127.0.0.1:4200");
    cfg->comms.auth = ROUTER_COMMS_AUTH_ED25519;
    cfg->comms.require_peer_auth = true;
    cfg->comms.ack_timeout_ms = 30000;
    cfg->comms.inbox_capacity = 1024;
    cfg->comms.replay_window_s = 300;
    cfg->comms.replay_horizon_s = 86400;
    cfg->comms.inbox_max_bytes = 64ull * 1024 * 1024;
    snprintf(cfg->comms.session, sizeof cfg->comms.session, "comms");
    /* One crypto thread per online CPU, at most 8 (WIRE §14.12): the loop
     * itself does little else at saturation, and past 8 the replay window
     * and the inbox on the one loop thread are what limit. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->comms.crypto_threads = cpus < 1 ? 1
                                : (unsigned long) cpus > ROUTER_CONFIG_CRYPTO_THREADS_DEFAULT
                                    ? ROUTER_CONFIG_CRYPTO_THREADS_DEFAULT
                                    : (uint32_t) cpus;

    cfg->workers.agent_threads = 2;
    cfg->workers.heartbeat_ms = 1000;
    cfg->workers.liveness = 3;

    cfg->agent.provider = ROUTER_AGENT_SCRIPTED;
    cfg->agent.max_tool_iterations = 60;
    cfg->agent.max_history_messages = 1000;
    cfg->agent.turn_timeout_s = 600;

    cfg->audit.enabled = true;
    snprintf(cfg->audit.path, sizeof cfg->audit.path, "audit.log");
    cfg->audit.rotate_bytes = 64ull * 1024 * 1024;
    cfg->audit.keep = 8;
    cfg->audit.query_scan_bytes = 64ull * 1024 * 1024;

    cfg->limits.envelope_frame_max = 1024 * 1024;
    cfg->limits.conn_unsent_max = 4 * 1024 * 1024;
    cfg->limits.conn_unsent_total_max = (size_t) 1 << 30;
    cfg->limits.comms_connections_max = 10000;
    cfg->limits.comms_unauth_connections_max = 2500;
    cfg->limits.comms_unauth_per_source_max = 32;
    cfg->limits.http_unauth_connections_max = 2500; /* WIRE §11.3; at most gateway.max_connections */
    cfg->limits.http_unauth_per_source_max = 32;
    cfg->limits.partial_frame_bytes_max = 64 * 1024 * 1024;
    cfg->limits.first_frame_timeout_ms = 10000;
    cfg->limits.frame_timeout_ms = 30000;
    cfg->limits.comms_idle_timeout_ms = 300000;
    cfg->limits.event_connections_max = 1024;
    cfg->limits.workers_pending_max = 64;           /* WIRE §19.2 */
    cfg->limits.workers_pending_per_source_max = 16;
    cfg->limits.http_head_max = 16 * 1024;
    cfg->limits.http_headers_max = 100;
    cfg->limits.http_body_max = 1024 * 1024;
    cfg->limits.http_attachment_body_max = 25 * 1024 * 1024;
    cfg->limits.http_head_timeout_ms = 10000;       /* WIRE §11.2 */
    cfg->limits.http_body_timeout_ms = 60000;
    cfg->limits.http_idle_timeout_ms = 60000;
    cfg->limits.ws_message_max = 1024 * 1024;
    cfg->limits.ws_preauth_frame_max = 64 * 1024;
    cfg->limits.ws_ping_interval_ms = 25000;
    cfg->limits.session_queue_max = 16;
    cfg->limits.sse_ring_events = 4096;
    cfg->limits.sessions_max = 100000;              /* WIRE §24.10 */
    cfg->limits.session_messages_max = 10000;
    cfg->limits.session_bytes_max = 64ull << 20;
    cfg->limits.sessions_bytes_max = 1ull << 30;
}

const char *router_comms_mode_str(router_comms_mode_t mode)
{
    return (unsigned) mode < S_N(s_modes) - 1 ? s_modes[mode] : "?";
}

const char *router_comms_auth_str(router_comms_auth_t auth)
{
    return (unsigned) auth < S_N(s_auths) - 1 ? s_auths[auth] : "?";
}

const char *router_agent_provider_str(router_agent_provider_t provider)
{
    return (unsigned) provider < S_N(s_providers) - 1 ? s_providers[provider] : "?";
}

/* ------------------------------------------------------------ storing one value */

/* Writes what `key` expects ("an integer 1..1024", "one of …") into out. */
static void s_expectation(const s_key_t *key, char *out, size_t cap)
{
    switch (key->kind) {
    case S_BOOL: snprintf(out, cap, "true or false"); break;
    case S_UINT:
        snprintf(out, cap, "an integer %llu..%llu", (unsigned long long) key->min,
                 (unsigned long long) key->max);
        break;
    case S_STRING:
        snprintf(out, cap, "%s%s", key->expect ? key->expect : "a string",
                 key->nullable ? " or null" : "");
        break;
    case S_CHOICE: {
        size_t used = (size_t) snprintf(out, cap, "one of");
        for (size_t i = 0; key->choices[i] && used < cap; i++)
            used += (size_t) snprintf(out + used, cap - used, "%s \"%s\"", i ? "," : "",
                                      key->choices[i]);
        break;
    }
    }
}

/* "<path>: expected <what key wants>, got <v>[ (<why>)]"; returns -1. */
static int s_refuse(const char *path, const s_key_t *key, const router_jsonc_value_t *v,
                    const char *why, char *err, size_t errcap)
{
    char want[160], got[ROUTER_JSONC_QUOTE_MAX + 16];
    s_expectation(key, want, sizeof want);
    router_jsonc_describe(v, got, sizeof got);
    if (why && *why)
        router_jsonc_fail(err, errcap, "%s: expected %s, got %s (%s)", path, want, got, why);
    else
        router_jsonc_fail(err, errcap, "%s: expected %s, got %s", path, want, got);
    return -1;
}

/* A JSON number token as an unsigned integer in key's range. */
static int s_store_uint(router_config_t *cfg, const char *path, const s_key_t *key,
                        const router_jsonc_value_t *v, char *err, size_t errcap)
{
    if (v->type != ROUTER_JSONC_NUMBER)
        return s_refuse(path, key, v, NULL, err, errcap);
    const unsigned char *p = v->s, *end = v->s + v->len;
    bool negative = p < end && *p == '-';
    if (negative)
        p++;
    uint64_t n = 0;
    if (p == end)
        return s_refuse(path, key, v, NULL, err, errcap);
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return s_refuse(path, key, v, NULL, err, errcap); /* a fraction or exponent */
        n = n <= (UINT64_MAX - 9) / 10 ? n * 10 + (uint64_t) (*p - '0') : UINT64_MAX;
    }
    if ((negative && n != 0) || n < key->min || n > key->max)
        return s_refuse(path, key, v, NULL, err, errcap);
    char *field = (char *) cfg + key->offset;
    if (key->size == sizeof(uint16_t)) {
        uint16_t x = (uint16_t) n;
        memcpy(field, &x, sizeof x);
    } else if (key->size == sizeof(uint32_t)) {
        uint32_t x = (uint32_t) n;
        memcpy(field, &x, sizeof x);
    } else if (key->size == sizeof(uint64_t)) {
        memcpy(field, &n, sizeof n);
    } else {
        return router_jsonc_fail(err, errcap, "%s: unsupported field width", path), -1;
    }
    return 0;
}

static int s_store_string(router_config_t *cfg, const char *path, const s_key_t *key,
                          const router_jsonc_value_t *v, char *err, size_t errcap)
{
    char *field = (char *) cfg + key->offset;
    if (v->type == ROUTER_JSONC_NULL && key->nullable) {
        field[0] = '\0';
        return 0;
    }
    if (v->type != ROUTER_JSONC_STRING || v->len == 0)
        return s_refuse(path, key, v, v->type == ROUTER_JSONC_STRING ? "empty" : NULL, err,
                        errcap);
    if (v->len >= key->size) {
        char why[64];
        snprintf(why, sizeof why, "%zu bytes, at most %zu allowed", v->len, key->size - 1);
        return s_refuse(path, key, v, why, err, errcap);
    }
    for (size_t i = 0; i < v->len; i++)
        if (v->s[i] < 0x20 || v->s[i] == 0x7f)
            return s_refuse(path, key, v, "control characters are not allowed", err, errcap);
    /* Text from router_config_set() has not been through yajl. */
    if (!proto_utf8_valid(v->s, v->len))
        return s_refuse(path, key, v, "not UTF-8", err, errcap);
    char text[ROUTER_CONFIG_URL_CAP]; /* the largest string field */
    if (v->len >= sizeof text)
        return s_refuse(path, key, v, "too long", err, errcap);
    memcpy(text, v->s, v->len);
    text[v->len] = '\0';
    char why[128] = "";
    if (key->check && key->check(text, why, sizeof why) != 0)
        return s_refuse(path, key, v, why, err, errcap);
    memcpy(field, text, v->len + 1);
    return 0;
}

/* S_CHOICE fields are enums, written as the int index of the choice. */
_Static_assert(sizeof(router_comms_mode_t) == sizeof(int) &&
                   sizeof(router_comms_auth_t) == sizeof(int) &&
                   sizeof(router_agent_provider_t) == sizeof(int),
               "enums are stored as int");

static int s_store_choice(router_config_t *cfg, const char *path, const s_key_t *key,
                          const router_jsonc_value_t *v, char *err, size_t errcap)
{
    if (v->type == ROUTER_JSONC_STRING)
        for (int i = 0; key->choices[i]; i++)
            if (strlen(key->choices[i]) == v->len && !memcmp(key->choices[i], v->s, v->len)) {
                memcpy((char *) cfg + key->offset, &i, sizeof i);
                return 0;
            }
    return s_refuse(path, key, v, NULL, err, errcap);
}

/* Checks v against key and stores it into cfg; -1 with err set otherwise. */
static int s_store(router_config_t *cfg, const s_section_t *sec, const s_key_t *key,
                   const router_jsonc_value_t *v, char *err, size_t errcap)
{
    char path[64];
    snprintf(path, sizeof path, "%s.%s", sec->name, key->name);
    switch (key->kind) {
    case S_BOOL:
        if (v->type != ROUTER_JSONC_BOOL)
            return s_refuse(path, key, v, NULL, err, errcap);
        *(bool *) ((char *) cfg + key->offset) = v->b;
        return 0;
    case S_UINT: return s_store_uint(cfg, path, key, v, err, errcap);
    case S_STRING: return s_store_string(cfg, path, key, v, err, errcap);
    case S_CHOICE: return s_store_choice(cfg, path, key, v, err, errcap);
    }
    return -1;
}

/* ------------------------------------------------------------ the reader */

typedef struct {
    router_config_t *cfg;       /* being filled */
    char *err;                  /* the caller's error buffer */
    size_t errcap;
    int depth;                  /* objects open: 1 the document, 2 a section */
    const s_section_t *section; /* named by the last top-level key, or open */
    const s_key_t *key;         /* named by the last key in the open section */
    uint32_t seen_sections;     /* bit i: s_sections[i] appeared */
    uint64_t seen_keys;         /* bit i: key i of the open section appeared */
} s_reader_t;

/* How much of a section's key list an unknown-key error shows whole. */
#define S_KNOWN_SHOWN_MAX 240

/* Lists a section's keys ("host, port, …") or the top-level keys. */
static void s_key_list(const s_section_t *sec, char *out, size_t cap)
{
    size_t used = 0, n = sec ? sec->nkeys : S_N(s_sections);
    out[0] = '\0';
    for (size_t i = 0; i < n && used < cap; i++)
        used += (size_t) snprintf(out + used, cap - used, "%s%s", i ? ", " : "",
                                  sec ? sec->keys[i].name : s_sections[i].name);
}

/* Edit distance (insert, delete, substitute, swap two neighbours: the
 * optimal string alignment distance) between a and b, both at most 64
 * octets; longer ones are "far" (SIZE_MAX). */
static size_t s_distance(const unsigned char *a, size_t alen, const char *bs)
{
    const unsigned char *b = (const unsigned char *) bs;
    size_t blen = strlen(bs), d[65][65];
    if (alen > 64 || blen > 64)
        return SIZE_MAX;
    for (size_t i = 0; i <= alen; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= blen; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= alen; i++)
        for (size_t j = 1; j <= blen; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[alen][blen];
}

/* The known key (of sec, or a section name) a typo most likely meant:
 * within a quarter of its length in edits (at least 1), else NULL. */
static const char *s_key_nearest(const s_section_t *sec, const unsigned char *k, size_t len)
{
    size_t n = sec ? sec->nkeys : S_N(s_sections), best = SIZE_MAX;
    const char *found = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *name = sec ? sec->keys[i].name : s_sections[i].name;
        size_t d = s_distance(k, len, name), allowed = strlen(name) / 4;
        if (d <= (allowed ? allowed : 1) && d < best) {
            best = d;
            found = name;
        }
    }
    return found;
}

/* Writes a key for a key path: as is when it is a plain word, quoted
 * otherwise, so odd bytes never reach a terminal raw. */
static void s_key_show(const unsigned char *k, size_t len, char *out, size_t cap)
{
    bool plain = len > 0 && len <= ROUTER_JSONC_QUOTE_MAX;
    for (size_t i = 0; plain && i < len; i++)
        plain = s_is_alnum(k[i]) || k[i] == '_' || k[i] == '-';
    if (plain)
        snprintf(out, cap, "%.*s", (int) len, (const char *) k);
    else
        router_jsonc_quote(k, len, out, cap);
}

/* Every value the document holds arrives here, objects and arrays included. */
static int s_on_value(void *ctx, const router_jsonc_value_t *v)
{
    s_reader_t *r = ctx;
    char got[ROUTER_JSONC_QUOTE_MAX + 16];
    if (r->depth == 0) {
        if (v->type == ROUTER_JSONC_OBJECT) {
            r->depth = 1;
            return 1;
        }
        router_jsonc_describe(v, got, sizeof got);
        return router_jsonc_fail(r->err, r->errcap,
                                 "the document: expected an object, got %s", got);
    }
    if (r->depth == 1) {
        if (v->type == ROUTER_JSONC_OBJECT) {
            r->depth = 2;
            r->seen_keys = 0;
            return 1;
        }
        router_jsonc_describe(v, got, sizeof got);
        return router_jsonc_fail(r->err, r->errcap, "%s: expected an object, got %s",
                                 r->section->name, got);
    }
    return s_store(r->cfg, r->section, r->key, v, r->err, r->errcap) == 0;
}

static int s_on_key(void *ctx, const unsigned char *k, size_t len)
{
    s_reader_t *r = ctx;
    const s_section_t *sec = r->depth == 1 ? NULL : r->section;
    size_t n = sec ? sec->nkeys : S_N(s_sections);
    for (size_t i = 0; i < n; i++) {
        const char *name = sec ? sec->keys[i].name : s_sections[i].name;
        if (strlen(name) != len || memcmp(name, k, len) != 0)
            continue;
        uint64_t seen = sec ? r->seen_keys : r->seen_sections;
        if (seen & ((uint64_t) 1 << i))
            return router_jsonc_fail(r->err, r->errcap, "%s%s%s: duplicate key",
                                     sec ? sec->name : "", sec ? "." : "", name);
        if (sec) {
            r->seen_keys |= (uint64_t) 1 << i;
            r->key = &sec->keys[i];
        } else {
            r->seen_sections |= (uint32_t) 1 << i;
            r->section = &s_sections[i];
        }
        return 1;
    }
    /* The known keys, when they fit on the line; a section with more
     * (limits) would be cut mid-name, so the line says where to see them.
     * A near miss ("sesion_queue_max") is named first. */
    char shown[ROUTER_JSONC_QUOTE_MAX + 16], known[S_KNOWN_SHOWN_MAX + 1], hint[96] = "";
    s_key_show(k, len, shown, sizeof shown);
    s_key_list(sec, known, sizeof known);
    const char *near = s_key_nearest(sec, k, len);
    if (near)
        snprintf(hint, sizeof hint, "did you mean %s? ", near);
    if (strlen(known) < S_KNOWN_SHOWN_MAX)
        return router_jsonc_fail(r->err, r->errcap, "%s%s%s: unknown key (%sknown%s: %s)",
                                 sec ? sec->name : "", sec ? "." : "", shown, hint,
                                 sec ? "" : " top-level keys", known);
    return router_jsonc_fail(r->err, r->errcap,
                             "%s%s%s: unknown key (%skith config check --print lists the %zu "
                             "keys of %s)",
                             sec ? sec->name : "", sec ? "." : "", shown, hint,
                             sec ? sec->nkeys : S_N(s_sections), sec ? sec->name : "the file");
}

static int s_on_end(void *ctx)
{
    s_reader_t *r = ctx;
    r->depth--;
    return 1;
}

static const router_jsonc_reader_t s_config_reader = {
    .value = s_on_value,
    .key = s_on_key,
    .end = s_on_end,
};

/* ------------------------------------------------------------ listeners that collide */

/* The name the daemon's own broker binds for its embedded workers
 * (ROUTER_BROKER_INPROC in router/workers/broker.h; config_test checks the
 * two agree). */
#define S_BROKER_INPROC "inproc://kith.workers"

/* One address the daemon will listen on, and the key that names it. */
typedef struct {
    const char *key;    /* "gateway.port", "comms.address", … */
    router_addr_t addr; /* AF_INET, AF_INET6 or AF_UNIX */
} s_listener_t;

static bool s_addr_unspecified(const router_addr_t *a)
{
    if (router_addr_family(a) == AF_INET)
        return a->u.in4.sin_addr.s_addr == htonl(INADDR_ANY);
    return router_addr_family(a) == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&a->u.in6.sin6_addr);
}

/* Whether the kernel would refuse the second bind: one socket path, or
 * one port (not 0, which the kernel picks) on one address, or on the
 * wildcard of its family; `[::]` listens dual-stack (router/net/listen.h),
 * so it covers every IPv4 address too. */
static bool s_listeners_collide(const router_addr_t *a, const router_addr_t *b)
{
    int fa = router_addr_family(a), fb = router_addr_family(b);
    if (fa == AF_UNIX || fb == AF_UNIX)
        return fa == fb && !strcmp(a->u.un.sun_path, b->u.un.sun_path);
    uint16_t port = router_addr_port(a);
    if (port == 0 || port != router_addr_port(b))
        return false;
    if (fa != fb) /* one IPv4, one IPv6 */
        return fa == AF_INET6 ? s_addr_unspecified(a) : s_addr_unspecified(b);
    if (s_addr_unspecified(a) || s_addr_unspecified(b))
        return true;
    return fa == AF_INET ? a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr
                         : !memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr,
                                   sizeof a->u.in6.sin6_addr);
}

/* workers.listen as a socket address, when it is one kith can compare:
 * tcp://IP:PORT, a star for the host (ZeroMQ's IPv4 wildcard), or ipc:// and
 * an absolute path.
 * An interface name, a port ZeroMQ picks, inproc: false. */
static bool s_workers_addr(const char *ep, router_addr_t *out)
{
    router_addr_err_t e;
    if (!strncmp(ep, "ipc://", 6))
        return ep[6] == '/' && router_addr_parse(ep + 6, out, &e) == 0;
    if (strncmp(ep, "tcp://", 6) != 0)
        return false;
    router_hostport_t hp;
    if (router_addr_split(ep + 6, &hp, &e) != 0)
        return false;
    return router_addr_from_host(strcmp(hp.host, "*") ? hp.host : "0.0.0.0", hp.port, out, &e) ==
           0;
}

/* Two listeners of one daemon on one address: the second bind would fail
 * at start with "Address already in use", which reads as another process
 * holding the port. Said here instead, naming both keys, so that
 * `kith config check` refuses what the daemon cannot start with. */
static int s_check_listeners(const router_config_t *cfg, char *err, size_t errcap)
{
    s_listener_t l[5];
    size_t n = 0;
    router_addr_err_t e;
    if (router_addr_from_host(cfg->gateway.host, cfg->gateway.port, &l[n].addr, &e) == 0)
        l[n++].key = "gateway.port";
    if (cfg->comms.mode == ROUTER_COMMS_TCP && router_addr_parse(cfg->comms.address, &l[n].addr, &e) == 0)
        l[n++].key = "comms.address";
    if ((cfg->comms.mode == ROUTER_COMMS_TCP || cfg->comms.mode == ROUTER_COMMS_UDS) &&
        cfg->comms.uds_path[0] && router_addr_parse(cfg->comms.uds_path, &l[n].addr, &e) == 0)
        l[n++].key = "comms.uds_path";
    if (cfg->comms.mode != ROUTER_COMMS_NONE && cfg->comms.auth == ROUTER_COMMS_AUTH_NONE &&
        cfg->comms.event_address[0] && router_addr_parse(cfg->comms.event_address, &l[n].addr, &e) == 0)
        l[n++].key = "comms.event_address";
    if (cfg->workers.listen[0] && s_workers_addr(cfg->workers.listen, &l[n].addr))
        l[n++].key = "workers.listen";
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            if (!s_listeners_collide(&l[i].addr, &l[j].addr))
                continue;
            char a[ROUTER_ADDR_STR_MAX] = "?", b[ROUTER_ADDR_STR_MAX] = "?";
            (void) router_addr_format(&l[i].addr, a, sizeof a);
            (void) router_addr_format(&l[j].addr, b, sizeof b);
            return router_jsonc_fail(err, errcap,
                                     "%s: %s would listen where %s does (%s); give each "
                                     "listener an address of its own",
                                     l[j].key, b, l[i].key, a),
                   -1;
        }
    if (!strcmp(cfg->workers.listen, S_BROKER_INPROC))
        return router_jsonc_fail(err, errcap,
                                 "workers.listen: %s is the embedded workers' own endpoint; "
                                 "choose another name, or tcp:// or ipc://",
                                 S_BROKER_INPROC),
               -1;
    return 0;
}

int router_config_check(const router_config_t *cfg, char *err, size_t errcap)
{
    if (s_check_listeners(cfg, err, errcap) != 0)
        return -1;
    if (cfg->comms.mode == ROUTER_COMMS_UDS && !cfg->comms.uds_path[0])
        return router_jsonc_fail(err, errcap, "comms.uds_path: required when comms.mode is \"uds\""),
               -1;
    if (cfg->comms.event_address[0] && cfg->comms.auth != ROUTER_COMMS_AUTH_NONE)
        return router_jsonc_fail(err, errcap,
                                 "comms.event_address: plain events need comms.auth \"none\"; "
                                 "set it or remove comms.event_address"),
               -1;
    /* limits: the unauthenticated share leaves room under the connection
     * cap, or connections that prove nothing could fill the listener and
     * a trusted peer's fresh connection would be refused before the guard
     * could evict one of them for it. */
    if (cfg->limits.comms_unauth_connections_max >= cfg->limits.comms_connections_max)
        return router_jsonc_fail(err, errcap,
                                 "limits.comms_unauth_connections_max: %u is not less than "
                                 "limits.comms_connections_max (%u)",
                                 cfg->limits.comms_unauth_connections_max,
                                 cfg->limits.comms_connections_max),
               -1;
    if (cfg->limits.comms_unauth_per_source_max > cfg->limits.comms_unauth_connections_max)
        return router_jsonc_fail(err, errcap,
                                 "limits.comms_unauth_per_source_max: %u is more than "
                                 "limits.comms_unauth_connections_max (%u)",
                                 cfg->limits.comms_unauth_per_source_max,
                                 cfg->limits.comms_unauth_connections_max),
               -1;
    if (cfg->limits.http_unauth_per_source_max > cfg->limits.http_unauth_connections_max)
        return router_jsonc_fail(err, errcap,
                                 "limits.http_unauth_per_source_max: %u is more than "
                                 "limits.http_unauth_connections_max (%u)",
                                 cfg->limits.http_unauth_per_source_max,
                                 cfg->limits.http_unauth_connections_max),
               -1;
    if (cfg->limits.workers_pending_per_source_max > cfg->limits.workers_pending_max)
        return router_jsonc_fail(err, errcap,
                                 "limits.workers_pending_per_source_max: %u is more than "
                                 "limits.workers_pending_max (%u)",
                                 cfg->limits.workers_pending_per_source_max,
                                 cfg->limits.workers_pending_max),
               -1;
    /* A session keeps at least the history a turn is sent: the bound never
     * takes a message a turn (or the history cache) would read. */
    if (cfg->limits.session_messages_max < cfg->agent.max_history_messages)
        return router_jsonc_fail(err, errcap,
                                 "limits.session_messages_max: %llu is less than "
                                 "agent.max_history_messages (%u)",
                                 (unsigned long long) cfg->limits.session_messages_max,
                                 cfg->agent.max_history_messages),
               -1;
    return 0;
}

int router_config_parse(router_config_t *cfg, const char *text, size_t len, char *err,
                        size_t errcap)
{
    if (len > ROUTER_CONFIG_FILE_MAX)
        return router_jsonc_fail(err, errcap, "config is %zu bytes, more than the %u allowed",
                                 len, ROUTER_CONFIG_FILE_MAX),
               -1;
    router_config_t *next = malloc(sizeof *next);
    if (!next)
        return router_jsonc_fail(err, errcap, "out of memory"), -1;
    router_config_defaults(next);
    s_reader_t r = {.cfg = next, .err = err, .errcap = errcap};
    if (router_jsonc_read(text, len, &s_config_reader, &r, err, errcap) != 0 ||
        router_config_check(next, err, errcap) != 0) {
        free(next);
        return -1;
    }
    *cfg = *next;
    free(next);
    return 0;
}

int router_config_load_file(router_config_t *cfg, const char *path, char *err, size_t errcap)
{
    char *text = NULL;
    size_t len = 0;
    if (router_statefile_read(path, ROUTER_CONFIG_FILE_MAX, &text, &len, NULL, err, errcap) != 0)
        return -1;
    char why[ROUTER_CONFIG_ERR_MAX];
    int rc = router_config_parse(cfg, text, len, why, sizeof why);
    if (rc != 0)
        router_jsonc_fail(err, errcap, "%s: %s", path, why);
    free(text);
    /* router_config_load() tells "missing" (ENOENT) from "refused" by errno. */
    errno = rc != 0 ? EINVAL : 0;
    return rc;
}

int router_config_load(router_config_t *cfg, const char *home, const char *path, bool *used,
                       char *err, size_t errcap)
{
    if (used)
        *used = false;
    if (path) {
        if (router_config_load_file(cfg, path, err, errcap) != 0) {
            if (errno == ENOENT)
                router_jsonc_fail(err, errcap,
                                  "%s: no such file (a config file named explicitly must exist)",
                                  path);
            return -1;
        }
        if (used)
            *used = true;
        return 0;
    }
    char def[ROUTER_PATH_MAX];
    if (router_home_path(home, ROUTER_CONFIG_FILE, def, sizeof def) != 0)
        return router_jsonc_fail(err, errcap, "%s: path too long", home), -1;
    if (router_config_load_file(cfg, def, err, errcap) == 0) {
        if (used)
            *used = true;
        return 0;
    }
    if (errno != ENOENT)
        return -1;
    router_config_defaults(cfg);
    err[0] = '\0';
    return 0;
}

/* ------------------------------------------------------------ overrides */

int router_config_set(router_config_t *cfg, const char *keypath, const char *text, char *err,
                      size_t errcap)
{
    const char *dot = strchr(keypath, '.');
    for (size_t i = 0; dot && i < S_N(s_sections); i++) {
        const s_section_t *sec = &s_sections[i];
        if (strlen(sec->name) != (size_t) (dot - keypath) ||
            memcmp(sec->name, keypath, (size_t) (dot - keypath)) != 0)
            continue;
        for (size_t j = 0; j < sec->nkeys; j++) {
            const s_key_t *key = &sec->keys[j];
            if (strcmp(key->name, dot + 1) != 0)
                continue;
            router_jsonc_value_t v = {.type = ROUTER_JSONC_STRING,
                                      .s = (const unsigned char *) text, .len = strlen(text)};
            if (key->kind == S_BOOL && (!strcmp(text, "true") || !strcmp(text, "false")))
                v = (router_jsonc_value_t){.type = ROUTER_JSONC_BOOL, .b = text[0] == 't'};
            else if (key->kind == S_UINT)
                v.type = ROUTER_JSONC_NUMBER;
            else if (key->kind == S_STRING && key->nullable && !strcmp(text, "null"))
                v = (router_jsonc_value_t){.type = ROUTER_JSONC_NULL};
            router_config_t next = *cfg;
            if (s_store(&next, sec, key, &v, err, errcap) != 0)
                return -1;
            *cfg = next;
            return 0;
        }
    }
    return router_jsonc_fail(err, errcap, "%s: no such configuration key", keypath), -1;
}

/* ------------------------------------------------------------ writing */

char *router_config_to_json(const router_config_t *cfg)
{
    yajl_gen g = router_jsonc_gen_new();
    if (!g)
        return NULL;
    yajl_gen_map_open(g);
    for (size_t i = 0; i < S_N(s_sections); i++) {
        const s_section_t *sec = &s_sections[i];
        router_jsonc_gen_text(g, sec->name);
        yajl_gen_map_open(g);
        for (size_t j = 0; j < sec->nkeys; j++) {
            const s_key_t *key = &sec->keys[j];
            const char *field = (const char *) cfg + key->offset;
            router_jsonc_gen_text(g, key->name);
            switch (key->kind) {
            case S_BOOL: yajl_gen_bool(g, *(const bool *) field); break;
            case S_UINT: {
                uint64_t n;
                if (key->size == sizeof(uint16_t)) {
                    uint16_t x;
                    memcpy(&x, field, sizeof x);
                    n = x;
                } else if (key->size == sizeof(uint32_t)) {
                    uint32_t x;
                    memcpy(&x, field, sizeof x);
                    n = x;
                } else {
                    size_t x;
                    memcpy(&x, field, sizeof x);
                    n = x;
                }
                yajl_gen_integer(g, (long long) n);
                break;
            }
            case S_STRING:
                if (field[0])
                    router_jsonc_gen_text(g, field);
                else
                    yajl_gen_null(g);
                break;
            case S_CHOICE: {
                int c;
                memcpy(&c, field, sizeof c);
                router_jsonc_gen_text(g, key->choices[c]);
                break;
            }
            }
        }
        yajl_gen_map_close(g);
    }
    yajl_gen_map_close(g);
    return router_jsonc_gen_finish(&g);
}
