/* gateway/routes_openclaw.h — the OpenClaw-compatible control endpoint
 * (DESIGN §5: `GET /` with Upgrade; spec/WIRE.md §25): OpenClaw's gateway
 * protocol v4 (req/res/event JSON frames, the connect.challenge → connect
 * handshake with a kith bearer token and an Ed25519 device identity,
 * hello-ok, tick and presence events) with the methods agent front-ends
 * run turns with — `agent`, `chat.send`, `chat.abort`, `health`,
 * `system-presence` — on the same sessions and workers as /ws/chat
 * (router/workers/turns.h). Kept apart from gateway/routes.h so each group
 * of routes has its own header. */
#ifndef KITH_GATEWAY_ROUTES_OPENCLAW_H
#define KITH_GATEWAY_ROUTES_OPENCLAW_H

#include <stdint.h>

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/ws.h"
#include "router/metrics.h"
#include "router/workers/turns.h"

#define GATEWAY_OPENCLAW_PROTOCOL 4             /* the one protocol version spoken */
#define GATEWAY_OPENCLAW_TICK_MS 15000u         /* tick events; the client gives up after 2 */
#define GATEWAY_OPENCLAW_TICK_MIN_MS 100u       /* smallest tick interval taken */
#define GATEWAY_OPENCLAW_HANDSHAKE_MS 15000u    /* upgrade → hello-ok, else close 1008 */
#define GATEWAY_OPENCLAW_RECORD_WAIT_MS 2000u   /* connect → its device record durable, else
                                                 * hello-ok without a deviceToken */
#define GATEWAY_OPENCLAW_CONNS_MAX 1024u        /* sockets open at once */
#define GATEWAY_OPENCLAW_HANDSHAKES_MAX 256u    /* ...of them before hello-ok (WIRE §25.2) */
#define GATEWAY_OPENCLAW_SESSIONS_MAX 8u        /* sessions one socket is attached to */
#define GATEWAY_OPENCLAW_RUNS_MAX 16u           /* runs one socket has unfinished */
#define GATEWAY_OPENCLAW_TEXT_MAX (256u * 1024) /* a run's text kept for agent events */
#define GATEWAY_OPENCLAW_DEFAULT_SESSION "main" /* `agent` without sessionKey */

typedef struct gateway_openclaw gateway_openclaw_t;

typedef struct {
    gateway_auth_t *auth;       /* borrowed: bearer tokens from pairing, the audit feed, and
                                 * its token store (idempotency keys, devices) */
    router_turns_t *turns;      /* borrowed: sessions and their turns */
    gateway_ws_opts_t ws;       /* bounds of each socket (0s: gateway/ws.h defaults);
                                 * message_max is hello-ok's policy.maxPayload */
    unsigned tick_ms;           /* 0: GATEWAY_OPENCLAW_TICK_MS */
    unsigned record_wait_ms;    /* 0: GATEWAY_OPENCLAW_RECORD_WAIT_MS */
    size_t preauth_max;         /* a message before hello-ok (limits.ws_preauth_frame_max);
                                 * 0: GATEWAY_OPENCLAW_PREAUTH_MAX */
    const char *version;        /* hello-ok server.version; NULL: "kith" */
    router_metrics_t *metrics;  /* borrowed, optional: kith_openclaw_sockets,
                                 * kith_openclaw_connected, kith_openclaw_runs */
} gateway_openclaw_opts_t;

/* Installs the WebSocket route `/` on `g`. Everything borrowed must
 * outlive the result. Returns NULL with errno (EINVAL, ENOMEM, or
 * gateway_http_route_ws's). Caller owns the result. Loop thread. */
gateway_openclaw_t *gateway_openclaw_new(gateway_http_t *g, router_loop_t *loop,
                                         const gateway_openclaw_opts_t *opts);

/* Lets go of every socket (detaching it from its sessions). Call it after
 * gateway_http_destroy (which let the sockets' connections go), after
 * router_tokens_stop (which runs the callbacks of writes it waits for; one
 * that comes later finds no endpoint and does nothing) and before
 * router_turns_destroy. Idempotent; nulls *self_p. */
void gateway_openclaw_destroy(gateway_openclaw_t **self_p);

#endif
