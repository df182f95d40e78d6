/* gateway/route_peers.c — GET /api/peers (DESIGN §5): the trusted peers in
 * force, for dashboards and scripts. Bearer-protected; the same JSON as
 * `kith peers list --json`, so there is one format for both. */
#include <stdlib.h>

#include "gateway/routes_auth.h"
#include "router/state/trust.h"

static void s_peers(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_peers_t *self = ud;
    if (gateway_auth_require(self->auth, req, res) != 0)
        return;
    char *json = router_trust_to_json(router_node_trust_view(self->node), true);
    if (!json) {
        (void) gateway_http_respond_error(res, 503, "unavailable", "the server is out of memory");
        return;
    }
    (void) gateway_http_respond_json(res, 200, json);
    free(json);
}

int gateway_route_peers(gateway_http_t *g, gateway_route_peers_t *route)
{
    return gateway_http_route(g, "GET", "/api/peers", s_peers, route);
}
