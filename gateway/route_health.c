/* gateway/route_health.c — GET /health: the process is up and serving.
 * Says nothing a stranger should not know. */
#include "gateway/routes.h"

static void s_health(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    (void) gateway_http_respond_json(res, 200,
                                     "{\"status\":\"ok\",\"version\":\"" GATEWAY_KITH_VERSION "\"}");
}

int gateway_route_health(gateway_http_t *g)
{
    return gateway_http_route(g, "GET", "/health", s_health, NULL);
}
