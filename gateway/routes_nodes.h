/* gateway/routes_nodes.h — the dynamic node registry (DESIGN §5,
 * spec/WIRE.md §27): GET /ws/nodes for nodes, GET /api/nodes, GET|DELETE
 * /api/nodes/{id} and POST /api/nodes/{id}/invoke for operators, all
 * bearer-protected. Loop thread only. */
#ifndef KITH_GATEWAY_ROUTES_NODES_H
#define KITH_GATEWAY_ROUTES_NODES_H

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/ws.h"
#include "router/net/loop.h"

#define GATEWAY_NODES_MAX 256u                    /* node sockets open at once */
#define GATEWAY_NODES_REGISTER_MS 10000u          /* upgrade → register, else close 1008 */
#define GATEWAY_NODES_CALLS_PER_NODE_MAX 16u      /* invokes waiting on one node */
#define GATEWAY_NODES_CALLS_MAX 1024u             /* invokes waiting, all nodes */
#define GATEWAY_NODES_CALL_TIMEOUT_MS 30000u      /* an invoke's default wait */
#define GATEWAY_NODES_CALL_TIMEOUT_MAX_MS 300000u /* the longest timeout_ms taken */

typedef struct gateway_nodes gateway_nodes_t;

/* Installs the routes on g, on `loop` (borrowed; timers), with auth
 * (borrowed) and ws_opts (copied; NULL: defaults). NULL with errno.
 * Caller owns the result. */
gateway_nodes_t *gateway_nodes_new(gateway_http_t *g, router_loop_t *loop, gateway_auth_t *auth,
                                   const gateway_ws_opts_t *ws_opts);

/* Ends the calls still waiting and frees; call it after
 * gateway_http_destroy (which lets the sockets go), while the loop exists.
 * Idempotent; nulls *self_p. */
void gateway_nodes_destroy(gateway_nodes_t **self_p);

#endif
