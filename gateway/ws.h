/* gateway/ws.h — WebSocket endpoints on the gateway (RFC 6455): routes that
 * take an upgrade, and the connection a route accepts.
 *
 * An upgrade route runs like any handler, on a request that already passed
 * the handshake checks (proto/ws_handshake.h): it may refuse with an
 * ordinary HTTP answer (401 before the upgrade, say), or call
 * gateway_ws_accept(), which sends 101 and turns the connection into a
 * WebSocket. From then on whole messages reach on_message; pings are
 * answered, the close handshake is run, and every bound is kept here:
 *   - a message over message_max is refused with close 1009;
 *   - a socket not yet authenticated holds its unfinished message within
 *     the budget of such connections, shared with request bodies
 *     (limits.partial_frame_bytes_max): when it runs out, the holder of
 *     the most is closed 1013;
 *   - a frame begun and not finished within frame_timeout_ms (counted
 *     from that frame's first byte) closes with 1008;
 *   - every ping_interval_ms the server pings; a socket that has not
 *     answered the previous ping by then closes with 1001 (a socket that
 *     only listens stays open as long as it answers; one inside a frame it
 *     is sending, which its pong must follow, or one still reading what
 *     was sent before the ping, is judged an interval later);
 *   - a send that would queue more than the connection's unsent-byte limit
 *     (DESIGN §10, 4 MiB) cuts the slow consumer with close 1008, pongs and
 *     pings included;
 *   - a protocol error closes with the code proto_ws_reason_close_code()
 *     gives (1002, 1007, 1009).
 * Everything runs on the loop thread; callbacks must not block. */
#ifndef KITH_GATEWAY_WS_H
#define KITH_GATEWAY_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/http_server.h"
#include "router/net/shared_buf.h"

/* Defaults used when an option is 0. */
#define GATEWAY_WS_MESSAGE_MAX (1024u * 1024u)  /* DESIGN §10 */
#define GATEWAY_WS_FRAME_TIMEOUT_MS 30000u      /* a frame once begun */
#define GATEWAY_WS_PING_INTERVAL_MS 25000u      /* server pings; no pong by the next: gone */
#define GATEWAY_WS_CLOSE_WAIT_MS 5000u          /* our Close sent, waiting for theirs */
#define GATEWAY_WS_PROTOCOLS_MAX 4u             /* subprotocols one route offers */

typedef struct gateway_ws gateway_ws_t;

/* Callbacks of one accepted WebSocket. */
typedef struct {
    /* A whole message: text (well-formed UTF-8) or binary. `data` is valid
     * during the call only. */
    void (*on_message)(gateway_ws_t *ws, bool text, const uint8_t *data, size_t len, void *ud);
    /* The socket stopped being open: no message reaches it or leaves it
     * from now on. Called once for every socket, before on_close. A close
     * the server starts (gateway_ws_close or _end, a token revoked, a slow
     * consumer cut inside gateway_ws_send, a protocol error, shutdown) calls
     * it at once, from inside that call, while the close handshake may take
     * up to GATEWAY_WS_CLOSE_WAIT_MS more: a route that lists its sockets
     * drops this one here, not at on_close. Never called from inside
     * gateway_ws_accept (a socket that fails there is told before its
     * on_close). ws stays valid until on_close returns. Optional. */
    void (*on_closing)(gateway_ws_t *ws, void *ud);
    /* The socket is gone; `code` is the close code exchanged (1006 when the
     * connection dropped without one). ws is invalid after this returns. */
    void (*on_close)(gateway_ws_t *ws, uint16_t code, void *ud);
} gateway_ws_handlers_t;

/* Bounds of one socket; zero-initialise and set what you need. */
typedef struct {
    size_t message_max;         /* GATEWAY_WS_MESSAGE_MAX */
    unsigned frame_timeout_ms;  /* GATEWAY_WS_FRAME_TIMEOUT_MS */
    unsigned ping_interval_ms;  /* GATEWAY_WS_PING_INTERVAL_MS */
} gateway_ws_opts_t;

/* Routes upgrade requests for the exact path `pattern` (or a prefix ending
 * in '*') to fn, offering `protocols` (most preferred first, at most
 * GATEWAY_WS_PROTOCOLS_MAX; the array must outlive the server). A request
 * that fails the handshake is answered 400 (426 for a wrong version)
 * without reaching fn. Returns 0, or -1 with errno as gateway_http_route. */
int gateway_http_route_ws(gateway_http_t *g, const char *pattern, const char *const *protocols,
                          size_t nprotocols, gateway_http_handler_fn fn, void *ud)
    __attribute__((warn_unused_result));

/* In an upgrade route's handler: the subprotocol chosen from the client's
 * offer (NULL for none), and the token of a `bearer.<token>` entry (NULL
 * for none; never echoed back) with its length. */
const char *gateway_ws_req_protocol(const gateway_http_res_t *res);
const char *gateway_ws_req_bearer(const gateway_http_res_t *res, size_t *len);

/* In an upgrade route's handler: answers 101 and makes the connection a
 * WebSocket with these handlers (copied) and bounds (NULL: defaults).
 * Returns the socket (owned by the gateway; valid until on_close returns),
 * or NULL with errno set (EINVAL outside an upgrade handler, EALREADY when
 * already answered, ENOMEM) — then answer the request some other way. */
gateway_ws_t *gateway_ws_accept(gateway_http_res_t *res, const gateway_ws_handlers_t *h,
                                void *ud, const gateway_ws_opts_t *opts);

/* Sends one whole message. Returns 0; or -1 with errno EPIPE when the
 * socket is closing, ENOBUFS when it would pass the unsent-byte limit (the
 * socket is then closed with 1008, on_closing called before this returns),
 * EMSGSIZE when larger than 2^63. */
int gateway_ws_send(gateway_ws_t *ws, bool text, const void *data, size_t len);

/* One whole message encoded once as a frame for many sockets (server
 * frames are unmasked, so every socket gets the same bytes, header and
 * payload): send it with gateway_ws_send_frame to each. Caller owns the
 * one reference (router_shared_buf_destroy); each socket it is queued on
 * holds its own. NULL with errno ENOMEM, or EMSGSIZE (larger than 2^63). */
router_shared_buf_t *gateway_ws_frame_new(bool text, const void *data, size_t len);

/* As gateway_ws_send for a frame from gateway_ws_frame_new, queued without
 * a copy: its bytes count in full against this socket's unsent-byte limit
 * (a socket that stops reading is still cut, 1008) but once, however many
 * sockets hold it, against all connections' unsent bound
 * (limits.conn_unsent_total_max), so watchers that stopped reading cannot
 * crowd out those that read. Returns 0, or -1 with errno as
 * gateway_ws_send (EPIPE, ENOBUFS, ENOMEM: the socket is then closing), or
 * EINVAL (frame NULL or held by another loop's sockets; the socket goes
 * on). */
int gateway_ws_send_frame(gateway_ws_t *ws, router_shared_buf_t *frame);

/* Starts the close handshake with `code` and a reason (UTF-8, at most 123
 * octets; longer is cut at a character boundary). No on_message after this;
 * on_close follows once the client answers or GATEWAY_WS_CLOSE_WAIT_MS pass. */
void gateway_ws_close(gateway_ws_t *ws, uint16_t code, const char *reason);

/* Sends Close with `code` and `reason` and ends the socket without waiting
 * for the client's (what was queued is flushed first): for a socket whose
 * place another needs now. on_close follows; nothing more is read. */
void gateway_ws_end(gateway_ws_t *ws, uint16_t code, const char *reason);

/* The socket authenticated after its upgrade (OpenClaw's connect): it
 * leaves the unauthenticated share (WIRE §11.3), where a socket whose
 * upgrade request proved no credential stays until then (and may be cut,
 * oldest first, to make room). `id` names the credential that let it in:
 * revoking it closes the socket (gateway_http_revoke); NULL or "" names
 * none. */
void gateway_ws_set_credential(gateway_ws_t *ws, const char *id);

/* A number unique within the loop, for logs. */
uint64_t gateway_ws_id(const gateway_ws_t *ws);

/* Changes the largest message this socket takes (at most opts.message_max):
 * a protocol that authenticates inside the socket holds it at
 * PROTO_WS_MESSAGE_MAX_PREAUTH until the client is known (DESIGN §10), so
 * a stranger cannot make the server buffer a full-size message. A larger
 * message is refused by the parser, before its payload, with close 1009. */
void gateway_ws_set_message_max(gateway_ws_t *ws, size_t max);

#endif
