/* gateway/routes_chat.h — the chat surface of the gateway (DESIGN §6,
 * spec/WIRE.md §24): GET /ws/chat, GET /api/sessions and GET
 * /api/sessions/{id}, on top of the router's session turns
 * (router/workers/turns.h). Also where turn events reach /api/events and
 * the listen-only relay sockets. Kept apart from gateway/routes.h so each
 * group of routes has its own header. */
#ifndef KITH_GATEWAY_ROUTES_CHAT_H
#define KITH_GATEWAY_ROUTES_CHAT_H

#include "gateway/auth.h"
#include "gateway/events.h"
#include "gateway/http_server.h"
#include "gateway/ws.h"
#include "router/metrics.h"
#include "router/workers/turns.h"

#define GATEWAY_CHAT_PROTOCOL "kith.v1"         /* the subprotocol a client must offer */
#define GATEWAY_CHAT_LISTEN_ONLY_MS 5000u       /* silence after upgrade → listen-only relay */
#define GATEWAY_CHAT_EARLY_FRAMES_MAX 16u       /* client frames held until session_start */
#define GATEWAY_CHAT_NAME_MAX 256u              /* octets of ?name= once decoded */
#define GATEWAY_CHAT_SESSIONS_LIMIT 100u        /* GET /api/sessions without ?limit= */
#define GATEWAY_CHAT_HISTORY_LIMIT 1000u        /* GET /api/sessions/{id} without ?limit= */
#define GATEWAY_CHAT_LIMIT_MAX 1000u            /* largest ?limit= of either */
#define GATEWAY_CHAT_REST_PENDING_MAX 1024u     /* session API answers awaited at once */
#define GATEWAY_CHAT_POSTS_MAX 256u             /* turns over HTTP awaited at once */
#define GATEWAY_CHAT_GAP_RETRY_MS 100u          /* a stream_gap not published is tried again */

typedef struct gateway_chat gateway_chat_t;

typedef struct {
    gateway_auth_t *auth;       /* borrowed: the bearer check of every route */
    router_turns_t *turns;      /* borrowed: sessions and their turns */
    gateway_events_t *events;   /* borrowed: /api/events, where turn events are published
                                 * and what relay sockets get; NULL: neither */
    gateway_ws_opts_t ws;       /* bounds of each chat socket (0s: gateway/ws.h defaults) */
    unsigned listen_only_ms;    /* 0: GATEWAY_CHAT_LISTEN_ONLY_MS */
    router_metrics_t *metrics;  /* borrowed, optional: kith_chat_sockets, kith_chat_relays,
                                 * kith_chat_http_turns, kith_turn_events_lost_total */
} gateway_chat_opts_t;

/* Installs GET /ws/chat, GET /api/sessions and GET /api/sessions/{id} on
 * `g`, and becomes the turns' event sink (router_turns_set_event_sink).
 * A turn event lost on the way (no memory to make or publish it, or larger
 * than GATEWAY_EVENTS_JSON_MAX) is followed on /api/events by a
 * {"type":"stream_gap","reason":"dropped","last_event_id","lost"} (with the
 * next event, or GATEWAY_CHAT_GAP_RETRY_MS later), and closes the
 * listen-only relays with 1011.
 * Everything borrowed must outlive the result. Returns NULL with errno
 * (ENOMEM, or gateway_http_route's). Caller owns the result. Loop thread. */
gateway_chat_t *gateway_chat_new(gateway_http_t *g, router_loop_t *loop,
                                 const gateway_chat_opts_t *opts);

/* Lets go of every chat socket (detaching it from its session) and of the
 * session API answers still awaited. Call it after gateway_http_destroy
 * (which let the sockets' connections go) and before router_turns_destroy.
 * Idempotent; nulls *self_p. */
void gateway_chat_destroy(gateway_chat_t **self_p);

#endif
