/* gateway/route_admin.c — GET|POST /admin/paircode: a fresh one-time
 * pairing code for `kith paircode`, to loopback peers only (WIRE §17.3). */
#include <stdio.h>

#include <sodium.h>

#include "gateway/routes_auth.h"
#include "router/log.h"

static void s_paircode(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_auth_t *auth = ud;
    gateway_auth_audit_req(auth, "admin", req,
                           gateway_auth_is_loopback(req->peer) ? "allowed" : "forbidden");
    if (!gateway_auth_is_loopback(req->peer)) {
        (void) gateway_http_respond_error(res, 403, "forbidden",
                                          "admin routes answer loopback clients only");
        return;
    }
    char code[GATEWAY_AUTH_CODE_LEN + 1], body[64];
    gateway_auth_code_mint(auth, code);
    snprintf(body, sizeof body, "{\"code\":\"%s\"}", code);
    (void) gateway_http_res_header(res, "Cache-Control", "no-store");
    (void) gateway_http_respond_json(res, 200, body);
    sodium_memzero(code, sizeof code);
    sodium_memzero(body, sizeof body);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "pairing: a new code was minted by /admin/paircode");
}

int gateway_route_admin(gateway_http_t *g, gateway_auth_t *auth)
{
    if (gateway_http_route(g, "GET", "/admin/paircode", s_paircode, auth) != 0 ||
        gateway_http_route(g, "POST", "/admin/paircode", s_paircode, auth) != 0)
        return -1;
    return 0;
}
