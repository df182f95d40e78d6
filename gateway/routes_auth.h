/* gateway/routes_auth.h — the gateway's pairing, admin and ingress routes
 * (DESIGN §5, WIRE §17), each installed by the module that serves it. Kept
 * apart from gateway/routes.h so each group of routes has its own header. */
#ifndef KITH_GATEWAY_ROUTES_AUTH_H
#define KITH_GATEWAY_ROUTES_AUTH_H

#include <pthread.h>
#include <stdbool.h>

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "router/node.h"
#include "router/state/inbox.h"

/* Pairing attempts and lockouts (WIRE §17.2). */
#define GATEWAY_PAIR_FAILURES_MAX 5u          /* bad codes in a row before the lockout */
#define GATEWAY_PAIR_LOCK_MS (300u * 1000u)   /* how long the lockout lasts */

/* How long a token or pairing answer waits for the token store's write
 * (a full or stalled disk is retried for ever) before the client is told
 * what is true without it (WIRE §17.2, §28). */
#define GATEWAY_TOKENS_WAIT_MS 5000u

/* What POST /pair needs; the caller keeps it for the server's life. */
typedef struct {
    gateway_auth_t *auth;  /* borrowed: codes, lockouts, the token store */
    router_loop_t *loop;   /* borrowed: the answers' deadlines; NULL: none (wait for the disk) */
    unsigned wait_ms;      /* that deadline; 0 → GATEWAY_TOKENS_WAIT_MS */
} gateway_route_pair_t;

/* POST /pair: X-Pairing-Code → 200 {"paired":true,"token":"kith_…"} once
 * the token's hash is durable; 401 invalid_pairing_code; 429
 * too_many_attempts with Retry-After, each once the bad code's count is
 * durable. When the disk has not taken the write within wait_ms: a right
 * code is 503 unavailable (no token issued; the code still valid unless a
 * newer one was minted), a wrong one 401 or 429 as the count in memory
 * says. 503 unavailable, nothing done,
 * when no timer bounds the wait. Returns 0 or -1. */
int gateway_route_pair_serve(gateway_http_t *g, gateway_route_pair_t *route)
    __attribute__((warn_unused_result));

/* What the admin routes need; the caller keeps it for the server's life. */
typedef struct {
    gateway_auth_t *auth;          /* borrowed: mints pairing codes */
    void (*shutdown)(void *ud);    /* begins a graceful stop (loop thread), or NULL */
    void *shutdown_ud;             /* its argument */
} gateway_route_admin_t;

/* Loopback peers only (403 forbidden otherwise), WIRE §17.3:
 * GET|POST /admin/paircode → 200 {"code":"NNNNNN"}, a fresh one-time code;
 * POST /admin/shutdown → 202 {"shutting_down":true} with Connection:
 * close, then the graceful stop SIGTERM starts. Returns 0 or -1. */
int gateway_route_admin(gateway_http_t *g, gateway_route_admin_t *admin)
    __attribute__((warn_unused_result));

/* Token management (WIRE §28); the caller keeps it for the server's life. */
typedef struct gateway_route_tokens {
    gateway_auth_t *auth;                /* borrowed: the token store and bearer checks */
    router_loop_t *loop;                 /* borrowed: the answers' deadlines; NULL: none */
    unsigned wait_ms;                    /* that deadline; 0 → GATEWAY_TOKENS_WAIT_MS */
    gateway_http_t *g;                   /* set by gateway_route_tokens: what revoking ends */
    struct gateway_route_tokens_door {
        struct gateway_route_tokens *route;
        bool admin;                      /* /admin/tokens: loopback, no bearer */
    } doors[2];                          /* set by gateway_route_tokens */
} gateway_route_tokens_t;

/* GET /api/tokens → {"tokens":[{"id","scope","name","created_ms","current"}]};
 * POST /api/tokens {"scope","name"} → 201 {"id","scope","name",
 * "created_ms","token"} once durable; DELETE /api/tokens/{id} → 200
 * {"revoked":true,"id","closed"} once durable, having ended what the token
 * opened. The same on /admin/tokens for loopback peers without a bearer.
 * When the disk has not taken the write within wait_ms: a mint is 503
 * unavailable (not issued; a row that lands later is revoked, as nobody
 * holds it), a revocation 503 durability_unknown (in force now, not yet
 * durable). 503 unavailable, nothing done, when no timer bounds the wait.
 * Returns 0 or -1. */
int gateway_route_tokens(gateway_http_t *g, gateway_route_tokens_t *route)
    __attribute__((warn_unused_result));

#define GATEWAY_PEERS_EDITS_MAX 4u /* peer edits being written at once (503 busy past it) */

/* What the peer routes read and edit; the caller keeps it for the server's
 * life, and past the loop's (its posts name it). */
typedef struct {
    router_node_t *node;  /* borrowed: whose trust store */
    gateway_auth_t *auth; /* borrowed: the bearer check */
    /* set up by gateway_route_peers: */
    pthread_mutex_t mu;   /* guards writers and stopped */
    pthread_cond_t cv;    /* a writer finished */
    unsigned writers;     /* edit threads running */
    bool stopped;         /* gateway_route_peers_stop ran: edits done now answer nobody */
    bool ready;           /* mu and cv are initialised */
} gateway_route_peers_t;

/* GET /api/peers (bearer) → 200 {"peers":[{"name","pubkey","peer_id","addr",
 * "profile"?,"meta"?}]}: the trust store in force, as `kith peers list
 * --json` prints it, after any live reload. POST /api/peers {"name",
 * "pubkey","addr","profile"?,"meta"?} → 201 the row, and DELETE
 * /api/peers/{name|peer_id} → 200 {"removed":true,"name","peer_id"}, each
 * once trusted_peers.json is written and reloaded (WIRE §17.3a). Returns
 * 0 or -1. */
int gateway_route_peers(gateway_http_t *g, gateway_route_peers_t *route)
    __attribute__((warn_unused_result));

/* Once the loop has stopped: waits for the edits being written; what they
 * post back answers nobody. Idempotent. */
void gateway_route_peers_stop(gateway_route_peers_t *route);

/* The webhook and external-event ingress (gateway/route_webhook.c). */
typedef struct gateway_ingress gateway_ingress_t;

typedef struct {
    gateway_auth_t *auth;          /* borrowed: bearer checks, idempotency store */
    router_inbox_t *inbox;         /* borrowed: where accepted work goes */
    struct router_turns *turns;    /* borrowed: asked whether state.db has room; NULL: not asked */
    const char *secret_env;        /* env var naming the webhook secret; NULL/"" for none */
    unsigned durable_timeout_ms;   /* 503 when not durable within; 0 → 10000 */
} gateway_ingress_opts_t;

/* POST /webhook and POST /sessions/{id}/external-events on `g` (WIRE §17.4).
 * Returns NULL (errno) on failure. Caller owns the result; destroy it after
 * the loop stopped and before the gateway is destroyed. */
gateway_ingress_t *gateway_ingress_new(gateway_http_t *g, router_loop_t *loop,
                                       const gateway_ingress_opts_t *opts);

/* The inbox made a batch durable: answer the requests waiting for it. On
 * the loop thread. */
void gateway_ingress_durable(gateway_ingress_t *self);

/* Where each admitted webhook and external event is published as
 * `channel_event` (WIRE §18.2; borrowed; NULL: nowhere). */
struct gateway_events;
void gateway_ingress_set_events(gateway_ingress_t *self, struct gateway_events *events);

/* Answers what still waits (503) and frees. Idempotent; nulls *self_p. */
void gateway_ingress_destroy(gateway_ingress_t **self_p);

#endif
