/* gateway/route_admin.c — the loopback-only admin routes (WIRE §17.3):
 * GET|POST /admin/paircode, a fresh one-time pairing code for `kith
 * paircode`, and POST /admin/shutdown, a graceful stop. */
#include <stdio.h>

#include <sodium.h>

#include "gateway/routes_auth.h"
#include "router/log.h"

static bool s_loopback(const gateway_route_admin_t *admin, const gateway_http_req_t *req,
                       gateway_http_res_t *res)
{
    return gateway_auth_require_loopback(admin->auth, req, res) == 0;
}

static void s_paircode(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_admin_t *admin = ud;
    if (!s_loopback(admin, req, res))
        return;
    char code[GATEWAY_AUTH_CODE_LEN + 1], body[64];
    gateway_auth_code_mint(admin->auth, code);
    snprintf(body, sizeof body, "{\"code\":\"%s\"}", code);
    (void) gateway_http_res_header(res, "Cache-Control", "no-store");
    (void) gateway_http_respond_json(res, 200, body);
    sodium_memzero(code, sizeof code);
    sodium_memzero(body, sizeof body);
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "pairing: a new code was minted by /admin/paircode");
}

/* The answer is queued before the stop begins (the stop is posted to the
 * loop), and the gateway's drain flushes it before the connection closes. */
static void s_shutdown(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_route_admin_t *admin = ud;
    if (!s_loopback(admin, req, res))
        return;
    if (!admin->shutdown) {
        (void) gateway_http_respond_error(res, 503, "unavailable",
                                          "this server cannot be shut down over HTTP");
        return;
    }
    gateway_http_res_close(res);
    (void) gateway_http_respond_json(res, 202, "{\"shutting_down\":true}");
    ROUTER_LOG(ROUTER_LOG_INFO, "gateway", "POST /admin/shutdown: stopping");
    admin->shutdown(admin->shutdown_ud);
}

int gateway_route_admin(gateway_http_t *g, gateway_route_admin_t *admin)
{
    if (gateway_http_route(g, "GET", "/admin/paircode", s_paircode, admin) != 0 ||
        gateway_http_route(g, "POST", "/admin/paircode", s_paircode, admin) != 0 ||
        gateway_http_route(g, "POST", "/admin/shutdown", s_shutdown, admin) != 0)
        return -1;
    return 0;
}
