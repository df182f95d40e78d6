/* gateway/http_server.h — the gateway's HTTP/1.1 server on a router loop:
 * listeners, per-connection request reading (proto/http.h), a route table,
 * and a response writer. Routes are added by the modules that serve them
 * (gateway/routes.h); the server itself answers only what no route can:
 * malformed or oversized requests, timeouts, 404 and 405.
 *
 * Every request is bounded: a head of at most head_max octets and
 * headers_max fields, a body of at most body_max octets, a head that must
 * arrive within head_timeout_ms of the connection (or, on a kept-alive
 * connection, of its first octet), a body within body_timeout_ms of its
 * head. A kept-alive connection with no request under way is closed after
 * idle_timeout_ms. Pipelined requests are answered in order; while the
 * answers waiting to be written pass send_high_water octets the server
 * stops reading from that connection.
 *
 * Errors the server answers carry a JSON body {"error": text, "code": code}
 * and, when the request could not be read to its end, `Connection: close`,
 * after which the connection closes.
 *
 * Threads: everything here runs on the loop's thread (set up before the loop
 * runs, or from loop callbacks). Handlers run on it too and must not block. */
#ifndef KITH_GATEWAY_HTTP_SERVER_H
#define KITH_GATEWAY_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/http.h"
#include "router/metrics.h"
#include "router/net/listen.h"
#include "router/net/loop.h"
#include "router/state/config.h"

/* ---------------------------------------------------------------- limits */

/* Defaults used when an option is 0. */
#define GATEWAY_HTTP_HEAD_TIMEOUT_MS 10000u      /* slow-loris bound on a request head */
#define GATEWAY_HTTP_BODY_TIMEOUT_MS 60000u      /* bound on reading one body */
#define GATEWAY_HTTP_IDLE_TIMEOUT_MS 60000u      /* kept-alive connection with nothing to do */
#define GATEWAY_HTTP_UNAUTH_MAX 2500u            /* connections not yet authenticated (WIRE §11.3) */
#define GATEWAY_HTTP_UNAUTH_PER_SOURCE_MAX 32u   /* ...from one non-loopback source */
#define GATEWAY_HTTP_UNAUTH_BODY_MAX (64u << 20) /* body and message octets they hold together */
#define GATEWAY_HTTP_SEND_HIGH_WATER (64u * 1024) /* unsent answer octets before reads pause */

#define GATEWAY_HTTP_ROUTES_MAX 64u      /* routes in one server */
#define GATEWAY_HTTP_LISTENERS_MAX 8u    /* listeners in one server */
#define GATEWAY_HTTP_METHOD_MAX 16u      /* a route's method, NUL included */
#define GATEWAY_HTTP_PATTERN_MAX 128u    /* a route's path pattern, NUL included */
#define GATEWAY_HTTP_RES_HEADERS_MAX 1024u /* octets of header lines a handler may add */
#define GATEWAY_HTTP_CONTENT_TYPE_MAX 128u /* a Content-Type value */
#define GATEWAY_HTTP_ERROR_BODY_MAX 1024u  /* a JSON error body */

typedef struct gateway_http gateway_http_t;
typedef struct gateway_http_res gateway_http_res_t;

/* Server options; zero-initialise and set what you need (0 means the default). */
typedef struct {
    size_t head_max;            /* request head octets, ≤ UINT32_MAX (PROTO_HTTP_HEAD_MAX) */
    uint32_t headers_max;       /* header field lines, ≤ PROTO_HTTP_HEADERS_MAX */
    size_t body_max;            /* decoded body octets (PROTO_HTTP_BODY_MAX) */
    size_t attachment_body_max; /* attachments of one chat message, re-serialised: no route
                                 * takes them over HTTP, so the server only keeps the bound
                                 * for gateway/route_chat.c (PROTO_HTTP_BODY_ATTACHMENT_MAX) */
    uint32_t max_connections;   /* open connections over all listeners (ROUTER_LOOP_MAX_CONNS) */
    uint32_t unauth_max;        /* ...of them not yet authenticated (2,500; at most max_connections) */
    uint32_t unauth_per_source_max; /* ...from one non-loopback source (32; at most unauth_max) */
    size_t unauth_body_max;     /* request-body and unfinished WebSocket-message octets
                                 * unauthenticated connections hold together (64 MiB,
                                 * limits.partial_frame_bytes_max) */
    unsigned head_timeout_ms;   /* see the top of this file */
    unsigned body_timeout_ms;   /* see the top of this file */
    unsigned idle_timeout_ms;   /* see the top of this file */
    size_t send_high_water;     /* see the top of this file */
    size_t send_limit;          /* a WebSocket's unsent bytes before the cut (ROUTER_CONN_SEND_LIMIT) */
    router_metrics_t *metrics;  /* borrowed, must outlive the server; NULL: no counters */
} gateway_http_opts_t;

/* Fills *opts from the configuration: gateway.max_connections, the
 * limits.http_* values (the deadlines among them), the unauthenticated
 * bodies' budget (limits.partial_frame_bytes_max) and the unsent bound
 * (limits.conn_unsent_max); send_high_water and metrics are left 0/NULL. */
void gateway_http_opts_from_config(gateway_http_opts_t *opts, const router_config_t *cfg);

/* The server's attachment bound (opts.attachment_body_max, its default
 * filled in), for the routes that read attachments. */
size_t gateway_http_attachment_body_max(const gateway_http_t *g);

/* ---------------------------------------------------------------- lifecycle */

/* Creates a server on `loop` (borrowed; must outlive the server). When
 * opts->metrics is set, registers there:
 *   kith_http_requests_total{code="<status>"}   responses sent, by status
 *   kith_http_connections_open                 gauge
 *   kith_http_rejected_total{reason="<code>"}  requests refused before any
 *       route saw them: every proto_http_reason_str() code, plus
 *       "request_timeout", "too_many_connections", "upgrade_not_implemented".
 * Returns NULL with errno set (EINVAL for an option out of range, ENOMEM).
 * Caller owns the result. */
gateway_http_t *gateway_http_new(router_loop_t *loop, const gateway_http_opts_t *opts);

/* Accepts connections on `addr` (TCP or Unix socket). *bound (may be NULL)
 * receives the address actually bound (the real port for port 0).
 * Returns 0, or -1 with errno set (ENOSPC past GATEWAY_HTTP_LISTENERS_MAX,
 * or listen's own errors). */
int gateway_http_listen(gateway_http_t *g, const router_addr_t *addr, router_addr_t *bound)
    __attribute__((warn_unused_result));

/* Serves `conn` (open, without handlers yet) as if it had been accepted on
 * a listener: the same connection limit, deadlines and handlers. For
 * connections that come another way (a memory loop in the fuzz harness,
 * router/net/loop_mem.h). On refusal the connection is aborted. */
void gateway_http_adopt(gateway_http_t *g, router_conn_t *conn);

/* Stops accepting on every listener; open connections carry on. Idempotent. */
void gateway_http_close_listeners(gateway_http_t *g);

/* A graceful stop: closes the listeners, closes idle keep-alive
 * connections and event streams, sends WebSockets a 1001 close, and lets
 * each request in progress (a deferred answer included) finish with
 * `Connection: close`. A deferred request still unanswered a second before
 * deadline_ms (half-way, for a short drain), and a request whose head or
 * body is still arriving then, is answered 503 {"code":"shutting_down"}
 * and closed (at once when the loop has no timer left for the deadline).
 * done(ud) runs on the loop once no connection is left, or after
 * deadline_ms, when the rest are cut. Once. */
void gateway_http_drain(gateway_http_t *g, void (*done)(void *ud), void *ud,
                        unsigned deadline_ms);

/* Closes the listeners, aborts the open connections (the loop finishes
 * closing them; no handler runs again) and frees the server. Not from
 * inside a handler. Idempotent; nulls *g_p. */
void gateway_http_destroy(gateway_http_t **g_p);

/* ---------------------------------------------------------------- requests */

/* One request, as a handler sees it. Every pointer is valid during the
 * handler call only. */
typedef struct {
    proto_http_slice_t method;       /* token as sent, e.g. "GET" (case-sensitive) */
    proto_http_slice_t path;         /* as sent, not percent-decoded: "/…" or "*";
                                      * ptr NULL for a CONNECT authority-form */
    proto_http_slice_t query;        /* after "?", without it; ptr NULL when there is no "?" */
    const char *body;                /* decoded body, followed by a NUL not counted in body_len */
    size_t body_len;                 /* its octets (0 without a body) */
    const router_addr_t *peer;       /* the client's address */
    uint64_t conn_id;                /* the connection, for logs */
    const proto_http_parser_t *head; /* the parsed head: every field line, flags */
} gateway_http_req_t;

/* The value of the first header field named `name` (case-insensitive) into
 * *value; false if there is none. */
bool gateway_http_req_header(const gateway_http_req_t *req, const char *name,
                             proto_http_slice_t *value);

/* The raw value (not percent-decoded) of the first `name=` member among
 * the &-separated pairs of query q into *value; false if there is none. */
bool gateway_http_query_find(proto_http_slice_t q, const char *name, proto_http_slice_t *value);

/* True when req->method is `method` (exactly, as methods are case-sensitive). */
bool gateway_http_req_method_is(const gateway_http_req_t *req, const char *method);

/* True when `method` is one the server recognises: RFC 9110's methods and
 * PATCH (case-sensitive). A method it does not is 501 on every path (RFC
 * 9110 §15.6.2); a route that takes any method answers the same way with
 * this check, so the two never disagree. */
bool gateway_http_method_known(proto_http_slice_t method);

/* True when the request's Content-Type is application/json (any case),
 * alone or with parameters ("; charset=utf-8"). */
bool gateway_http_req_is_json(const gateway_http_req_t *req);

/* The request's body as one strict JSON text (gateway_json_tree_parse's
 * rules, nesting at most depth_max, objects of at most keys_max members),
 * for a route that takes application/json: the tree (caller frees it with
 * yajl_tree_free), or NULL once res is answered 415 unsupported_media_type
 * (another Content-Type), 400 invalid_json (saying what was wrong) or 503
 * unavailable (out of memory). */
struct yajl_val_s;
struct yajl_val_s *gateway_http_req_json(const gateway_http_req_t *req, gateway_http_res_t *res,
                                         unsigned depth_max, size_t keys_max)
    __attribute__((warn_unused_result));

/* ---------------------------------------------------------------- responses */

/* Adds a header line to the response about to be sent. `name` must be a
 * token and `value` visible ASCII, SP or HTAB (no CR/LF: nothing can be
 * smuggled into the head). Content-Length, Connection, Date and
 * Transfer-Encoding are the server's and refused. Returns 0, or -1 with
 * errno EINVAL (bad name or value), ENOSPC (past
 * GATEWAY_HTTP_RES_HEADERS_MAX) or EALREADY (the response was sent). */
int gateway_http_res_header(gateway_http_res_t *res, const char *name, const char *value);

/* Asks for the connection to close after this response. */
void gateway_http_res_close(gateway_http_res_t *res);

/* Sends the response: status line, Date, Content-Type (when given),
 * Content-Length (not for 204 and 304, which have no body), the added
 * headers, Connection when it closes, then `len` octets of `body` (copied;
 * none for HEAD). Once per request. A response is queued whole: one
 * larger on its own than the unsent-byte limit (opts.send_limit) is
 * answered 500 response_too_large instead, and one that fits the limit but
 * not the room left now (answers still unsent ahead of it, or all
 * connections at the loop's send_total_limit) 503 send_buffers_full with
 * Retry-After, closing. Returns 0 (also when it answered one of those
 * errors instead), or -1 with errno EINVAL
 * (status outside 200..599, a body on 204/304, a bad content type),
 * EALREADY (already sent) or EPIPE (the connection is gone; nothing to do). */
int gateway_http_respond(gateway_http_res_t *res, int status, const char *content_type,
                         const void *body, size_t len);

/* gateway_http_respond() of a NUL-terminated JSON text as application/json. */
int gateway_http_respond_json(gateway_http_res_t *res, int status, const char *json);

/* gateway_http_respond() of {"error": text, "code": code} as
 * application/json. `code` is a stable snake_case name clients can switch
 * on, `text` is for people. Both are JSON-escaped (octets that are not
 * well-formed UTF-8 become U+FFFD). The body is at most
 * GATEWAY_HTTP_ERROR_BODY_MAX octets: a text too long for it is cut after
 * a whole character and ends in "…"; a code too long is -1, EINVAL. */
int gateway_http_respond_error(gateway_http_res_t *res, int status, const char *code,
                               const char *text);

/* ---------------------------------------------------------------- deferred answers */

/* A request answered later, once work off the loop thread is done (a row
 * made durable, say). */
typedef struct gateway_http_pending gateway_http_pending_t;

/* In a handler (not an upgrade): the answer will come later. The
 * connection reads nothing more (pipelined requests wait) and its request
 * deadlines stop until gateway_http_pending_end; the route bounds the wait
 * itself. Headers already added are kept. Returns the handle (owned by the
 * route until _end), or NULL with errno (EALREADY answered, EINVAL in an
 * upgrade, ENOMEM) — then answer now. A route that finds, before its
 * handler returns, that it can answer at once after all may answer through
 * the handle and end it there, as it would later. */
gateway_http_pending_t *gateway_http_res_defer(gateway_http_res_t *res);

/* The response of a deferred request, to fill with gateway_http_res_header
 * and answer with gateway_http_respond* (which fail with EPIPE when the
 * connection is gone). Valid until gateway_http_pending_end; asked for
 * while the deferring handler runs, it is that handler's own response,
 * valid only until the handler returns: ask again each time. */
gateway_http_res_t *gateway_http_pending_res(gateway_http_pending_t *p);

/* Ends a deferred request (a 500 if nothing was answered), lets the
 * connection go on with what it holds, and frees p. On the loop thread.
 * Idempotent; nulls *p_p. */
void gateway_http_pending_end(gateway_http_pending_t **p_p);

/* A drain's last call (gateway_http_drain) tells a deferred request still
 * owed an answer 503 shutting_down, "may or may not be done". A route that
 * can say more (done, or nothing was done) sets `fn`: at the last call it
 * runs first, on the loop thread, and may answer through the handle and
 * end it; what it leaves unanswered gets the 503 as before. Until then, or
 * _end, ud must stay valid. */
void gateway_http_pending_on_last_call(gateway_http_pending_t *p, void (*fn)(void *ud),
                                       void *ud);

/* ---------------------------------------------------------------- credentials */

#define GATEWAY_HTTP_CREDENTIAL_MAX 24u /* a credential's name, NUL included */

/* Names the credential that let this request in (a bearer token's public
 * id), so that revoking it later ends what the request opened: its
 * WebSocket (gateway_ws_accept takes the name along) or its streamed
 * response. An id too long is cut. The connection is authenticated
 * (gateway_http_res_authenticated). */
void gateway_http_res_credential(gateway_http_res_t *res, const char *id);

/* The request proved a credential (a bearer token, the webhook secret, a
 * pairing code, or the loopback and pairing-off rules of auth.h): its
 * connection leaves the unauthenticated bounds (WIRE §11.3) for good. */
void gateway_http_res_authenticated(gateway_http_res_t *res);

/* The credential named on res, "" for none. Points into res. */
const char *gateway_http_res_credential_of(const gateway_http_res_t *res);

/* Ends everything open that credential `id` let in: WebSockets are closed
 * 1008 with `reason`, streamed responses are closed. Requests still to
 * come are the auth's to refuse. Returns how many ended. */
size_t gateway_http_revoke(gateway_http_t *g, const char *id, const char *reason);

/* ---------------------------------------------------------------- streamed responses */

/* Callbacks of a streamed response's connection (gateway_http_respond_stream). */
typedef struct {
    /* Optional: every unsent byte has been written (for a producer that
     * waits for room before sending more). */
    void (*on_drain)(router_conn_t *conn, void *ud);
    /* The connection has closed (the client went away, a bound cut it, or
     * the route closed it); conn is invalid once this returns. Not called
     * when gateway_http_destroy lets go of the connection. */
    void (*on_close)(router_conn_t *conn, void *ud);
} gateway_http_stream_handlers_t;

/* Sends the head of a response whose body is written later, for as long as
 * the route likes (Server-Sent Events): status line, Date, Content-Type,
 * the added headers and `Connection: close`, without Content-Length, so
 * the body ends when the connection closes (RFC 9112 §6.3). The connection
 * is then the route's to write to (router_conn_send, router_conn_close or
 * _abort; router_conn_set_send_limit to bound it); it still counts among
 * the server's connections, what the client sends on it is read and
 * dropped, and no server timeout applies; begun during a drain, it is
 * closed in order at once, as the drain closed the others (sends then
 * fail with EPIPE; h->on_close follows). `h` is copied. Returns the
 * connection (borrowed; valid until h->on_close), or NULL with errno
 * EINVAL (status outside 200..599 or 204/304, bad content type), EALREADY
 * (already answered), EPIPE (the connection is gone) or ECANCELED (a HEAD
 * request: only the head was sent, and the connection closes). */
router_conn_t *gateway_http_respond_stream(gateway_http_res_t *res, int status,
                                           const char *content_type,
                                           const gateway_http_stream_handlers_t *h, void *ud);

/* ---------------------------------------------------------------- routes */

/* Answers one request: call one of the gateway_http_respond*() functions
 * before returning (a handler that does not is answered 500). */
typedef void (*gateway_http_handler_fn)(const gateway_http_req_t *req, gateway_http_res_t *res,
                                        void *ud);

/* Routes requests for `method` ("GET", "POST", …; NULL for any method) and
 * `pattern` to fn(req, res, ud). A pattern is an exact path ("/health") or,
 * ending in '*', a prefix: "/api/canvas/" with a '*' after it takes
 * "/api/canvas/" and every path under it. Of the routes taking the request's
 * path and method the most specific wins: an exact path over any prefix, a
 * longer prefix over a shorter one; on the same pattern a route for the
 * method over one for any method. Paths are matched as sent (no
 * percent-decoding). A GET route also answers HEAD (the server drops the
 * body). A path some route takes, but not with this method, is answered
 * 405 with `Allow`; a path none takes, 404. `ud` is borrowed. Returns 0, or -1 with errno EINVAL (bad method or
 * pattern), EEXIST (same method and pattern again) or ENOSPC (table full). */
int gateway_http_route(gateway_http_t *g, const char *method, const char *pattern,
                       gateway_http_handler_fn fn, void *ud)
    __attribute__((warn_unused_result));

#endif
