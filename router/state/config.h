/* router/state/config.h — kith's configuration: $KITH_HOME/config.json (JSON with
 * comments) read strictly into a plain struct with DESIGN §4's defaults.
 *
 * Strict means: an unknown key, a duplicate key, a value of the wrong type or
 * out of range, or a string that is not what its key needs refuses the whole
 * file, with an error that starts with the key path, e.g.
 *   comms.inbox_capacity: expected an integer 1..1048576, got "x" (line 3, column 23)
 *
 * Every key of DESIGN §4 is here; a string key that DESIGN shows as null is
 * "unset" and reads as the empty string (an empty string in the file is refused,
 * so "" and null never mean different things). The DESIGN §10 limits
 * ("defaults, all configurable") are keys of the top-level object `limits`,
 * every one of them, each the value the daemon enforces. */
#ifndef KITH_ROUTER_CONFIG_H
#define KITH_ROUTER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The configuration file, relative to $KITH_HOME. */
#define ROUTER_CONFIG_FILE "config.json"

/* Largest config file read, and room for any error message written below. */
#define ROUTER_CONFIG_FILE_MAX (1024u * 1024u)
#define ROUTER_CONFIG_ERR_MAX  512

/* String capacities, NUL included. */
#define ROUTER_CONFIG_HOST_CAP     254  /* a DNS name (253) or an IP literal */
#define ROUTER_CONFIG_ADDR_CAP     262  /* "host:port", "[v6]:port" */
#define ROUTER_CONFIG_UDS_PATH_CAP 108  /* sockaddr_un.sun_path */
#define ROUTER_CONFIG_ENV_CAP      128  /* an environment variable name */
#define ROUTER_CONFIG_ENDPOINT_CAP 256  /* a ZeroMQ endpoint */
#define ROUTER_CONFIG_URL_CAP      2048 /* agent.base_url */
#define ROUTER_CONFIG_MODEL_CAP    256  /* agent.model */
#define ROUTER_CONFIG_PATH_CAP     1024 /* audit.path */
#define ROUTER_CONFIG_SESSION_CAP  65   /* comms.session: 1..64 of [A-Za-z0-9._-] */
/* comms.crypto_threads: 0..this; default the online CPUs, at most _DEFAULT. */
#define ROUTER_CONFIG_CRYPTO_THREADS_MAX 64u
#define ROUTER_CONFIG_CRYPTO_THREADS_DEFAULT 8u

/* comms.mode: which comms listener runs. */
typedef enum {
    ROUTER_COMMS_TCP,    /* "tcp": comms.address, plus comms.uds_path when set */
    ROUTER_COMMS_UDS,    /* "uds": comms.uds_path only (then required) */
    ROUTER_COMMS_INPROC, /* "inproc": no socket; reachable in-process only */
    ROUTER_COMMS_NONE,   /* "none": comms off */
} router_comms_mode_t;

/* comms.auth: how inbound comms traffic is authenticated. */
typedef enum {
    ROUTER_COMMS_AUTH_ED25519, /* "ed25519": signed envelopes (DESIGN §8) */
    ROUTER_COMMS_AUTH_NONE,    /* "none": allows the plain event listener */
} router_comms_auth_t;

/* agent.provider. */
typedef enum {
    ROUTER_AGENT_SCRIPTED, /* "scripted": built in, offline, deterministic */
    ROUTER_AGENT_OPENAI,   /* "openai": any OpenAI-compatible server */
} router_agent_provider_t;

typedef struct {
    struct {
        char host[ROUTER_CONFIG_HOST_CAP];                 /* listen host: name, IPv4 or IPv6 (no brackets) */
        uint16_t port;                                     /* listen port; 0 lets the kernel pick */
        bool require_pairing;                              /* bearer token needed for the API */
        bool allow_query_token;                            /* accept ?token= */
        bool echo;                                         /* serve /ws/echo */
        char webhook_secret_env[ROUTER_CONFIG_ENV_CAP];    /* env var holding the webhook secret, or "" */
        uint32_t max_connections;                          /* open gateway connections, 1..1048576 */
    } gateway;
    struct {
        router_comms_mode_t mode;                          /* which listener runs */
        char address[ROUTER_CONFIG_ADDR_CAP];              /* TCP listen "host:port" */
        char advertise_address[ROUTER_CONFIG_ADDR_CAP];    /* "host:port" peers should dial, or "" */
        char uds_path[ROUTER_CONFIG_UDS_PATH_CAP];         /* absolute socket path, or "" */
        router_comms_auth_t auth;                          /* envelope signatures or none */
        bool require_peer_auth;                            /* refuse senders not in the trust store */
        char event_address[ROUTER_CONFIG_ADDR_CAP];        /* plain events: [tcp://]host:port or [uds://]/abs/path, or "" */
        uint32_t ack_timeout_ms;                           /* wait for a peer's ack, 1..3600000 */
        uint32_t inbox_capacity;                           /* admitted envelopes waiting, 1..1048576 */
        uint32_t replay_window_s;                          /* ± seconds for UUIDv7 ids, 1..86400 */
        uint32_t replay_horizon_s;                         /* how long ids without a time are remembered, 1..31536000 */
        uint64_t inbox_max_bytes;                          /* frame bytes the inbox holds, 1024..17179869184 */
        char session[ROUTER_CONFIG_SESSION_CAP];           /* session that takes comms turns */
        char pairing_password_env[ROUTER_CONFIG_ENV_CAP];  /* env var holding the Meerkat pairing password (WIRE §23.6), or "" */
        uint32_t crypto_threads;                           /* threads verifying and signing beside the loop, 0..64 (WIRE §14.12) */
    } comms;
    struct {
        uint32_t agent_threads;                            /* embedded agent workers, 0..256 */
        char listen[ROUTER_CONFIG_ENDPOINT_CAP];           /* broker endpoint for outside workers, or "" */
        uint32_t heartbeat_ms;                             /* MDP heartbeat, 10..600000 */
        uint32_t liveness;                                 /* missed heartbeats before a worker is dead, 1..100 */
    } workers;
    struct {
        router_agent_provider_t provider;                  /* LLM provider */
        char base_url[ROUTER_CONFIG_URL_CAP];              /* http(s):// URL, or "" for the provider's own */
        char model[ROUTER_CONFIG_MODEL_CAP];               /* model name, or "" */
        char api_key_env[ROUTER_CONFIG_ENV_CAP];           /* env var holding the API key, or "" */
        uint32_t max_tool_iterations;                      /* tool-loop rounds per turn, 1..10000 */
        uint32_t max_history_messages;                     /* history sent per turn, 1..1000000 */
        uint32_t turn_timeout_s;                           /* one turn's deadline, 1..86400 */
    } agent;
    struct {
        bool enabled;                                      /* run the audit worker */
        char path[ROUTER_CONFIG_PATH_CAP];                 /* log file, relative to $KITH_HOME or absolute */
        char hmac_key_env[ROUTER_CONFIG_ENV_CAP];          /* env var holding the HMAC key, or "" */
        uint64_t rotate_bytes;                             /* rotate the log at this size; 0: never */
        uint32_t keep;                                     /* rotated files kept, 1..1000 */
        uint64_t query_scan_bytes;                         /* log bytes one query reads; 0: all */
    } audit;
    /* DESIGN §10: the `limits` keys (defaults from router_config_defaults()). */
    struct {
        size_t envelope_frame_max;                         /* one envelope frame: 1 MiB, 1..1 MiB */
        size_t conn_unsent_max;                            /* a connection's unsent bytes: 4 MiB */
        size_t conn_unsent_total_max;                      /* all connections' unsent bytes: 1 GiB (WIRE §9.2) */
        uint32_t comms_connections_max;                    /* open comms connections: 10,000 */
        uint32_t comms_unauth_connections_max;             /* ...of them not yet authenticated: 2,500 */
        uint32_t comms_unauth_per_source_max;              /* ...from one source address: 32 */
        uint32_t http_unauth_connections_max;              /* gateway connections not yet authenticated: 2,500 */
        uint32_t http_unauth_per_source_max;               /* ...from one non-loopback source address: 32 */
        size_t partial_frame_bytes_max;                    /* bytes in partial frames and lines, all connections: 64 MiB */
        uint32_t first_frame_timeout_ms;                   /* new connection to its first complete frame or line: 10 s */
        uint32_t frame_timeout_ms;                         /* a frame or line once its first byte came: 30 s */
        uint32_t comms_idle_timeout_ms;                    /* no frame or line at all: 300 s */
        uint32_t event_connections_max;                    /* open plain-event connections: 1,024 */
        uint32_t workers_pending_max;                      /* workers.listen connections without READY: 64 */
        uint32_t workers_pending_per_source_max;           /* ...from one source address: 16 */
        size_t http_head_max;                              /* HTTP request head: 16 KiB */
        uint32_t http_headers_max;                         /* HTTP header lines: 100 */
        size_t http_body_max;                              /* HTTP body: 1 MiB */
        size_t http_attachment_body_max;                   /* a chat message's attachments, re-serialised: 25 MiB */
        uint32_t http_head_timeout_ms;                     /* connection (kept-alive: first octet) to a whole head: 10 s */
        uint32_t http_body_timeout_ms;                     /* a request body once its head came: 60 s */
        uint32_t http_idle_timeout_ms;                     /* kept-alive connection with no request under way: 60 s */
        size_t ws_message_max;                             /* WebSocket message: 1 MiB */
        size_t ws_preauth_frame_max;                       /* WebSocket frame before auth: 64 KiB */
        uint32_t ws_ping_interval_ms;                      /* WebSocket server ping; no pong by the next: closed (25 s) */
        uint32_t session_queue_max;                        /* messages waiting per session: 16 */
        uint32_t sse_ring_events;                          /* SSE replay ring: 4096 */
        uint64_t sessions_max;                             /* sessions state.db keeps: 100,000 */
        uint64_t session_messages_max;                     /* messages kept per session: 10,000 */
        uint64_t session_bytes_max;                        /* octets kept per session: 64 MiB */
        uint64_t sessions_bytes_max;                       /* octets kept over all sessions: 1 GiB */
    } limits;
} router_config_t;

/* Fills *cfg with DESIGN §4's defaults and the §10 limits. */
void router_config_defaults(router_config_t *cfg);

/* Parses text[len] (JSON with comments, at most ROUTER_CONFIG_FILE_MAX
 * bytes): *cfg becomes the defaults overlaid with the document, then
 * router_config_check()ed. Returns 0; or -1 with err set and *cfg untouched.
 * No I/O. */
int router_config_parse(router_config_t *cfg, const char *text, size_t len, char *err,
                        size_t errcap) __attribute__((warn_unused_result));

/* router_config_parse() of the file at `path`; a missing file is an error.
 * err starts with the path. */
int router_config_load_file(router_config_t *cfg, const char *path, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* The daemon's rule: with `path` (from --config) load that file, which must
 * exist; without it load <home>/config.json, and when that file does not
 * exist use the defaults. *used (may be NULL) is set to whether a file was
 * read. Returns 0 or -1 with err set. */
int router_config_load(router_config_t *cfg, const char *home, const char *path, bool *used,
                       char *err, size_t errcap) __attribute__((warn_unused_result));

/* Sets one key from command-line text (--host, --port, --echo…) with the same
 * checks as the file: `key` is a path such as "gateway.port"; booleans are
 * "true"/"false", integers decimal, "null" unsets a nullable string.
 * Returns 0, or -1 with err set and *cfg untouched. Call router_config_check()
 * after the last one. */
int router_config_set(router_config_t *cfg, const char *key, const char *text, char *err,
                      size_t errcap) __attribute__((warn_unused_result));

/* The rules that tie keys together: comms.mode "uds" needs comms.uds_path;
 * comms.event_address needs comms.auth "none"; limits: the unauthenticated
 * share is at most comms_connections_max and the per-source cap at most the
 * unauthenticated share. Returns 0 or -1 with err set. */
int router_config_check(const router_config_t *cfg, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Writes every key of *cfg as a JSON object (the file format, two-space
 * indent, a final newline) into a new NUL-terminated buffer the caller frees. Returns NULL
 * when out of memory. */
char *router_config_to_json(const router_config_t *cfg);

/* The names used in the file for the enums above. */
const char *router_comms_mode_str(router_comms_mode_t mode);
const char *router_comms_auth_str(router_comms_auth_t auth);
const char *router_agent_provider_str(router_agent_provider_t provider);

#endif
