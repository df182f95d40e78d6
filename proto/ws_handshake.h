/* proto/ws_handshake.h — the server side of the RFC 6455 opening handshake
 * (§4.2): check an upgrade request's WebSocket headers, pick a subprotocol,
 * take a bearer token offered as a subprotocol entry (DESIGN §5), format the
 * 101 response; and the Sec-WebSocket-Accept value both sides compute.
 * No I/O, no allocation.
 *
 * The HTTP layer checks the request line (GET, HTTP/1.1) and Host, then:
 *
 *     proto_ws_upgrade_t up;
 *     proto_ws_upgrade_init(&up, supported, n_supported);
 *     for each header line:
 *         proto_ws_upgrade_feed(&up, name, name_len, value, value_len);
 *     if (proto_ws_upgrade_check(&up) != 0)
 *         answer proto_ws_handshake_reason_status(up.reason), naming
 *         proto_ws_handshake_reason_str(up.reason);
 *     n = proto_ws_upgrade_response(&up, out, cap);   // the 101 head
 *
 * Header lines are fed one at a time, as the request carries them, so a
 * header repeated on several lines needs no joining and a repeated
 * Sec-WebSocket-Key or -Version is caught. The struct keeps slices of the
 * values fed: the request buffer must outlive it. */
#ifndef KITH_PROTO_WS_HANDSHAKE_H
#define KITH_PROTO_WS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

/* Length of a Sec-WebSocket-Key: base64 of 16 bytes. */
#define PROTO_WS_KEY_LEN 24
/* Length of a Sec-WebSocket-Accept: base64 of a SHA-1 digest. */
#define PROTO_WS_ACCEPT_LEN 28
/* The one protocol version spoken (Sec-WebSocket-Version). */
#define PROTO_WS_VERSION "13"
/* Prefix of the Sec-WebSocket-Protocol entry that carries a bearer token. */
#define PROTO_WS_BEARER_PREFIX "bearer."

/* Why an upgrade request was refused. */
typedef enum {
    PROTO_WS_HS_OK = 0,
    PROTO_WS_HS_ERR_UPGRADE,            /* 400: no Upgrade header listing "websocket" */
    PROTO_WS_HS_ERR_CONNECTION,         /* 400: no Connection header listing "upgrade" */
    PROTO_WS_HS_ERR_VERSION_MISSING,    /* 400: no Sec-WebSocket-Version */
    PROTO_WS_HS_ERR_VERSION_REPEATED,   /* 400: Sec-WebSocket-Version on several lines */
    PROTO_WS_HS_ERR_VERSION,            /* 426: Sec-WebSocket-Version is not 13 */
    PROTO_WS_HS_ERR_KEY_MISSING,        /* 400: no Sec-WebSocket-Key */
    PROTO_WS_HS_ERR_KEY_REPEATED,       /* 400: Sec-WebSocket-Key on several lines */
    PROTO_WS_HS_ERR_KEY,                /* 400: Sec-WebSocket-Key is not base64 of 16 bytes */
    PROTO_WS_HS_ERR_PROTOCOL,           /* 400: a Sec-WebSocket-Protocol entry is not a token */
    PROTO_WS_HS_ERR_BEARER,             /* 400: an empty bearer. entry, or more than one */
} proto_ws_handshake_reason_t;

/* Static text naming `r`. */
const char *proto_ws_handshake_reason_str(proto_ws_handshake_reason_t r);

/* HTTP status to refuse with: 426 (send "Sec-WebSocket-Version: 13" with it,
 * RFC 6455 §4.2.2) for an unsupported version, else 400; 101 for OK. */
int proto_ws_handshake_reason_status(proto_ws_handshake_reason_t r);

/* An upgrade request being checked. Fields are filled by the functions
 * below; read the results after proto_ws_upgrade_check(). */
typedef struct {
    const char *const *supported;   /* server's subprotocols, most preferred first; not owned */
    size_t n_supported;             /* entries in supported */
    size_t protocol_rank;           /* index in supported of the best one offered; n_supported for none */
    bool upgrade;                   /* an Upgrade header listed "websocket" */
    bool connection;                /* a Connection header listed "upgrade" */
    bool protocol_malformed;        /* a Sec-WebSocket-Protocol entry was not a token */
    bool bearer_malformed;          /* a bearer. entry was empty or not the first one */
    unsigned versions;              /* Sec-WebSocket-Version lines seen */
    unsigned keys;                  /* Sec-WebSocket-Key lines seen */
    const char *version;            /* Sec-WebSocket-Version value, whitespace trimmed */
    size_t version_len;             /* its length */
    const char *key;                /* Sec-WebSocket-Key value, whitespace trimmed */
    size_t key_len;                 /* its length */

    proto_ws_handshake_reason_t reason;   /* why check failed; PROTO_WS_HS_OK otherwise */
    const char *protocol;           /* chosen subprotocol (an entry of supported); NULL for none */
    const char *bearer;             /* token of the bearer.<token> entry, in the request; NULL for none; never echoed */
    size_t bearer_len;              /* its length */
    char accept[PROTO_WS_ACCEPT_LEN + 1];  /* Sec-WebSocket-Accept value, NUL-terminated */
} proto_ws_upgrade_t;

/* Starts checking a request. `supported` (server's subprotocols, most
 * preferred first) must outlive `up`; it may be NULL when n_supported is 0. */
void proto_ws_upgrade_init(proto_ws_upgrade_t *up, const char *const *supported, size_t n_supported);

/* Takes one request header line. Names are matched case-insensitively;
 * headers the handshake does not use are ignored. */
void proto_ws_upgrade_feed(proto_ws_upgrade_t *up, const char *name, size_t name_len,
                           const char *value, size_t value_len);

/* After the last header: returns 0 when the request is a valid upgrade (and
 * fills protocol and accept), -1 otherwise with up->reason set. */
__attribute__((warn_unused_result))
int proto_ws_upgrade_check(proto_ws_upgrade_t *up);

/* Writes the 101 Switching Protocols response head, blank line included, for
 * a request that passed proto_ws_upgrade_check(). Returns its length (a NUL
 * follows it), or -1 when `cap` is too small. */
int proto_ws_upgrade_response(const proto_ws_upgrade_t *up, char *out, size_t cap);

/* Computes Sec-WebSocket-Accept for `key` (RFC 6455 §4.2.2: base64 of the
 * SHA-1 of the key and the protocol's GUID). Returns 0, or -1 when the key is
 * not the base64 of exactly 16 bytes. */
__attribute__((warn_unused_result))
int proto_ws_accept_compute(const char *key, size_t key_len, char out[PROTO_WS_ACCEPT_LEN + 1]);

#endif
