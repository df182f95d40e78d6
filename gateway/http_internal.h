/* gateway/http_internal.h — private to gateway/http_*.c: the server, its
 * connections, routes and the response being built. Include it nowhere else. */
#ifndef KITH_GATEWAY_HTTP_INTERNAL_H
#define KITH_GATEWAY_HTTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "gateway/http_server.h"
#include "gateway/ws.h"
#include "proto/ws_handshake.h"
#include "router/net/conn.h"
#include "router/net/sources.h"

/* Rejections counted in kith_http_rejected_total: the parser's reasons,
 * then the server's own. */
enum {
    GATEWAY_HTTP_REJECT_TIMEOUT = PROTO_HTTP_REASON_COUNT, /* "request_timeout" */
    GATEWAY_HTTP_REJECT_CONN_LIMIT,                        /* "too_many_connections" */
    GATEWAY_HTTP_REJECT_UPGRADE,                           /* "websocket_not_found" */
    GATEWAY_HTTP_REJECT_HANDSHAKE,                         /* "websocket_handshake" */
    GATEWAY_HTTP_REJECT_UNAUTH_SOURCE,                     /* "unauth_per_source" */
    GATEWAY_HTTP_REJECT_UNAUTH_FULL,                       /* "unauth_full" */
    GATEWAY_HTTP_REJECT_UNAUTH_EVICTED,                    /* "unauth_evicted" */
    GATEWAY_HTTP_REJECT_UNAUTH_BODIES,                     /* "unauth_bodies_full" */
    GATEWAY_HTTP_REJECT_INCOMPLETE,                        /* "request_incomplete" */
    GATEWAY_HTTP_REJECT_COUNT
};

/* Statuses a response may carry, as an index range for the counters. */
#define GATEWAY_HTTP_STATUS_MIN 100
#define GATEWAY_HTTP_STATUS_MAX 599

/* Distinct statuses counted per route in kith_http_route_requests_total;
 * later ones are counted under code="other", so a route answering many
 * statuses cannot fill the metrics registry. */
#define GATEWAY_HTTP_ROUTE_CODES_MAX 8u

/* One cell of kith_http_route_requests_total. */
typedef struct {
    int status;                 /* -1: "other" */
    router_metric_t *m;         /* the cell, NULL when the registry was full */
} gateway_http_route_code_t;

/* Where a connection is in its current request. */
typedef enum {
    GATEWAY_HTTP_WAIT,    /* no octet of the next request yet */
    GATEWAY_HTTP_HEAD,    /* reading a request head */
    GATEWAY_HTTP_BODY,    /* the head is done; reading its body */
    GATEWAY_HTTP_CLOSING, /* closing: nothing more is read or answered */
    GATEWAY_HTTP_UPGRADED, /* now a WebSocket: gateway/ws.c has the connection */
    GATEWAY_HTTP_DEFERRED, /* a handler deferred its answer (gateway_http_res_defer) */
    GATEWAY_HTTP_STREAM,  /* a streamed response (gateway_http_respond_stream): input is dropped */
} gateway_http_phase_t;

typedef struct gateway_http_conn gateway_http_conn_t;

/* One route of the table. */
typedef struct {
    char method[GATEWAY_HTTP_METHOD_MAX];   /* "" for any method */
    char pattern[GATEWAY_HTTP_PATTERN_MAX]; /* the path, or the prefix without its '*' */
    size_t pattern_len;                     /* octets of pattern */
    bool prefix;                            /* pattern is a prefix */
    gateway_http_handler_fn fn;             /* the handler */
    void *ud;                               /* its user data, borrowed */
    bool ws;                                /* takes WebSocket upgrades (gateway/ws.h) */
    const char *const *protocols;           /* ws: subprotocols offered, borrowed */
    size_t nprotocols;                      /* ws: entries in protocols */
} gateway_http_route_t;

struct gateway_http {
    router_loop_t *loop;                 /* borrowed */
    gateway_http_opts_t opts;            /* resolved: no zero left */
    proto_http_limits_t limits;          /* the parser's bounds, from opts */
    gateway_http_route_t routes[GATEWAY_HTTP_ROUTES_MAX]; /* the table, in registration order */
    size_t nroutes;                      /* routes in use */
    router_listener_t *listeners[GATEWAY_HTTP_LISTENERS_MAX]; /* open listeners, NULL in free slots */
    gateway_http_conn_t *conns;          /* every open connection */
    gateway_ws_t *ws;                    /* every open WebSocket (counted in open) */
    uint32_t open;                       /* how many */
    bool refusing;                       /* at the connection limit (logged once) */
    bool draining;                       /* gateway_http_drain began: answers close */
    void (*drain_done)(void *ud);        /* told once the last connection is gone */
    void *drain_ud;                      /* its argument */
    uint64_t drain_timer;                /* cuts what is left at the drain's deadline */
    uint64_t last_call_timer;            /* answers deferred requests before that */
    time_t date_at;                      /* second `date` was formatted for */
    char date[64];                       /* IMF-fixdate for the Date header */
    router_metric_t *m_open;             /* kith_http_connections_open */
    router_metric_t *m_ws_open;          /* kith_ws_connections_open */
    router_metric_t *m_ws_frames_in;     /* kith_ws_frames_total{direction="in"} */
    router_metric_t *m_ws_frames_out;    /* kith_ws_frames_total{direction="out"} */
    uint32_t ws_open;                    /* WebSockets among `open` */
    router_sources_t *sources;           /* unauthenticated connections per source */
    gateway_http_conn_t *unauth_head, *unauth_tail; /* not yet authenticated, oldest first */
    size_t unauth_body_held;             /* body and unfinished-message octets allocated by
                                          * unauthenticated connections and sockets */
    gateway_ws_t *ws_unauth_head, *ws_unauth_tail; /* WebSockets not yet authenticated, oldest first */
    uint32_t unauth;                     /* how many, both lists */
    router_metric_t *m_unauth;           /* kith_http_unauth_connections */
    router_metric_t *m_unauth_body;      /* kith_http_unauth_body_bytes */
    router_metric_t *m_rejected[GATEWAY_HTTP_REJECT_COUNT]; /* kith_http_rejected_total */
    router_metric_t *m_status[GATEWAY_HTTP_STATUS_MAX - GATEWAY_HTTP_STATUS_MIN + 1];
                                         /* kith_http_requests_total, registered on first use */
    bool m_status_tried[GATEWAY_HTTP_STATUS_MAX - GATEWAY_HTTP_STATUS_MIN + 1];
                                         /* registration attempted (the registry may be full) */
    gateway_http_route_code_t route_codes[GATEWAY_HTTP_ROUTES_MAX + 1][GATEWAY_HTTP_ROUTE_CODES_MAX + 1];
                                         /* by route index (last: no route), then status */
    uint8_t route_ncodes[GATEWAY_HTTP_ROUTES_MAX + 1]; /* cells in use per route */
};

struct gateway_http_conn {
    gateway_http_t *g;              /* owner */
    router_conn_t *conn;            /* the loop's connection */
    gateway_http_phase_t phase;     /* see above */
    proto_http_parser_t parser;     /* the current request's head */
    proto_http_body_t body;         /* its body decoder */
    char *head;                     /* the head, when it had to be kept across reads */
    size_t head_len;                /* octets in head (or of the head at head_at) */
    size_t head_cap;                /* allocated octets of head */
    const char *head_at;            /* a complete head still in the read buffer, else NULL */
    char *body_buf;                 /* decoded body so far */
    size_t body_len, body_cap;      /* its octets, allocated octets */
    size_t body_counted;            /* body_cap, counted in unauth_body_held while unauthenticated */
    const gateway_http_route_t *route; /* route of the current request */
    bool head_only;                 /* the current request is HEAD: answers carry no body */
    bool paused;                    /* reads paused: answers are waiting to be written */
    size_t paused_unsent;           /* paused: octets unsent when its idle deadline was set */
    char *held;                     /* input that arrived before reads paused */
    size_t held_len;                /* its octets */
    uint64_t timer;                 /* the armed timer, 0 for none */
    uint64_t timer_due;             /* when it fires (loop clock, ms) */
    uint64_t deadline;              /* when the current phase times out (loop clock, ms) */
    uint64_t served;                /* responses sent on this connection */
    gateway_ws_t *ws;               /* UPGRADED: the WebSocket it became */
    gateway_http_pending_t *pending; /* DEFERRED: the answer owed */
    gateway_http_stream_handlers_t stream; /* STREAM: the route's callbacks */
    void *stream_ud;                /* STREAM: their argument */
    char credential[GATEWAY_HTTP_CREDENTIAL_MAX]; /* STREAM: what let it in (gateway_http_revoke) */
    bool unauth;                    /* on the unauthenticated list (no request has proved a credential) */
    router_source_t *source;        /* counted against this source while unauthenticated, or NULL */
    gateway_http_conn_t *uprev, *unext; /* the unauthenticated list */
    gateway_http_conn_t *prev, *next; /* the server's list */
};

/* The response a handler is building; lives on the server's stack for one
 * dispatch. */
struct gateway_http_res {
    gateway_http_conn_t *hc;                 /* the connection it answers */
    char extra[GATEWAY_HTTP_RES_HEADERS_MAX]; /* header lines added by the handler */
    size_t extra_len;                        /* octets of extra */
    bool sent;                               /* the response went out */
    bool close;                              /* close the connection after it */
    proto_ws_upgrade_t *upgrade;             /* an upgrade route's checked handshake, else NULL */
    gateway_ws_t *ws;                        /* what gateway_ws_accept made of the connection */
    gateway_http_pending_t *deferred;        /* what gateway_http_res_defer made of it */
    char credential[GATEWAY_HTTP_CREDENTIAL_MAX]; /* what let the request in ("": nothing named) */
};

/* A deferred answer: the response, kept off the stack until the route
 * sends it. res.hc is NULL once the connection is gone. While the handler
 * that deferred still runs, the answer is the handler's own (origin), so a
 * route that finds it can answer at once after all may do so through the
 * handle, and end it, without a special path. */
struct gateway_http_pending {
    gateway_http_res_t res;
    gateway_http_res_t *origin; /* the handler's response while it runs, else NULL */
    bool ended;                 /* _end was called while the handler ran */
    void (*last_call)(void *ud); /* the route's word at a drain's last call, or NULL */
    void *last_call_ud;         /* its argument */
};

/* ---------------------------------------------------------------- http_route.c */

/* The best route for (method, path) among the WebSocket routes (ws) or
 * the others (!ws), or NULL. When NULL and some route
 * takes the path with another method, allow[0..cap) gets the value of an
 * Allow header ("GET, HEAD, POST"); otherwise allow is "". */
const gateway_http_route_t *gateway_http_route_find(const gateway_http_t *g,
                                                    proto_http_slice_t method,
                                                    proto_http_slice_t path, bool ws,
                                                    char *allow, size_t cap);

/* Adds a route (plain or WebSocket); gateway_http_route's rules. */
int gateway_http_route_add(gateway_http_t *g, const gateway_http_route_t *r, const char *pattern);

/* True when s is a token (RFC 9110 §5.6.2) of 1..max-1 octets. */
bool gateway_http_is_token(const char *s, size_t max);

/* ---------------------------------------------------------------- http_response.c */

/* Prepares *res for answering the current request of hc; `close` says
 * whether the connection closes after it (a handler may still ask). */
void gateway_http_res_init(gateway_http_res_t *res, gateway_http_conn_t *hc, bool close);

/* The reason phrase of a status ("Not Found"), "" for one without. */
const char *gateway_http_status_phrase(int status);

/* The human text of a parser refusal (for the JSON "error" member). */
const char *gateway_http_reason_text(proto_http_reason_t reason);

/* Counts a response with `status` to a request of `route` (NULL: none
 * matched) in kith_http_requests_total and kith_http_route_requests_total. */
void gateway_http_count_status(gateway_http_t *g, const gateway_http_route_t *route, int status);

/* An unauthenticated connection becoming a WebSocket keeps its place in
 * the unauthenticated share (WIRE §11.3): hc leaves the list, the count
 * and its source's count stay. Returns the source handle (NULL when the
 * source is not counted) and sets *was to whether hc held a place. */
router_source_t *gateway_http_unauth_hand_over(gateway_http_conn_t *hc, bool *was);

/* Gives back a place handed over (the socket authenticated or closed). */
void gateway_http_unauth_give_back(gateway_http_t *g, router_source_t **source_p);

/* ---------------------------------------------------------------- ws.c */

/* Takes over `conn` (whose HTTP state the caller frees) as a WebSocket of
 * server g: installs its own connection handlers and links it in g->ws.
 * on_closing is held back until gateway_ws_accept clears ws->accepting.
 * Returns NULL (errno ENOMEM) and leaves conn alone on failure. */
gateway_ws_t *gateway_ws_adopt(gateway_http_t *g, router_conn_t *conn,
                               const gateway_ws_handlers_t *h, void *ud,
                               const gateway_ws_opts_t *opts);

/* Frames that arrived behind the upgrade request, in the same read. */
void gateway_ws_input(gateway_ws_t *ws, uint8_t *data, size_t len);

/* The unauthenticated share is full: cuts the oldest WebSocket that has
 * not authenticated (1008) and gives its place back. False when there is
 * none. */
bool gateway_ws_unauth_evict(gateway_http_t *g);

/* The unauthenticated WebSocket (not `spare`) whose unfinished message
 * holds the most octets of the unauthenticated budget, or NULL; its count
 * in *held. */
gateway_ws_t *gateway_ws_unauth_largest(gateway_http_t *g, const void *spare, size_t *held);

/* Cuts ws for the unauthenticated budget: its message is freed and
 * uncounted at once, and it is closed 1013. */
void gateway_ws_unauth_cut(gateway_ws_t *ws);

/* For gateway_http_destroy: lets every socket go without callbacks. */
void gateway_ws_disown_all(gateway_http_t *g);

/* For gateway_http_revoke: closes (1008, `reason`) every socket let in
 * with credential `id`; returns how many. */
size_t gateway_ws_close_credential(gateway_http_t *g, const char *id, const char *reason);

/* For gateway_http_drain: closes every socket with `code`, or aborts them
 * (abort true) when the drain's deadline passed. */
void gateway_ws_close_all(gateway_http_t *g, uint16_t code, bool abort);

/* ---------------------------------------------------------------- http_server.c */

/* A connection (HTTP or WebSocket) has gone: ends a drain left with none. */
void gateway_http_drain_check(gateway_http_t *g);

/* Room in the budget of unfinished request bodies and WebSocket messages
 * held by unauthenticated connections (limits.partial_frame_bytes_max,
 * WIRE §11.3) for `asker` (an HTTP connection or a socket, never cut),
 * now counted for `held` octets, to hold `cap`: the holder of the most is
 * cut, as many times as needed, while it holds more than `cap`. False:
 * the asker would hold the most, and is the one to refuse. */
bool gateway_http_unauth_room(gateway_http_t *g, const void *asker, size_t held, size_t cap);

/* What one connection or socket holds in that budget becomes `bytes` (0
 * when it is not `unauth`); *counted is its share, updated. */
void gateway_http_unauth_count(gateway_http_t *g, size_t *counted, bool unauth, size_t bytes);

#endif
