/* gateway/routes_canvas.h — live canvases (DESIGN §5, spec/WIRE.md §26):
 * GET /api/canvas, GET|POST|DELETE /api/canvas/{id} and the watchers'
 * GET /ws/canvas/{id}, bearer-protected. Loop thread only. */
#ifndef KITH_GATEWAY_ROUTES_CANVAS_H
#define KITH_GATEWAY_ROUTES_CANVAS_H

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/ws.h"

#define GATEWAY_CANVAS_ID_MAX 128u                    /* 1..128 of A-Z a-z 0-9 . _ : - */
#define GATEWAY_CANVAS_TYPE_MAX 128u                  /* octets of a document's media type */
#define GATEWAY_CANVAS_MAX 256u                       /* canvases at once (posted or watched) */
#define GATEWAY_CANVAS_BYTES_MAX (64u * 1024u * 1024u) /* documents' octets, all together */
#define GATEWAY_CANVAS_WATCHERS_MAX 1024u             /* canvas sockets at once */

typedef struct gateway_canvas gateway_canvas_t;

/* Installs the routes on g; auth (borrowed) checks the bearer; ws_opts
 * (copied; NULL: defaults) bounds the sockets. A document is at most the
 * server's body limit. NULL with errno (ENOMEM, or gateway_http_route's).
 * Caller owns the result. */
gateway_canvas_t *gateway_canvas_new(gateway_http_t *g, gateway_auth_t *auth,
                                     const gateway_ws_opts_t *ws_opts);

/* Frees every canvas; call it after gateway_http_destroy (which lets the
 * sockets go). Idempotent; nulls *self_p. */
void gateway_canvas_destroy(gateway_canvas_t **self_p);

#endif
