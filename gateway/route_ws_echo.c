/* gateway/route_ws_echo.c — GET /ws/echo (DESIGN §5): an RFC 6455 echo for
 * conformance suites and benchmarks. Off unless gateway.echo (or --echo)
 * turns it on; it needs no token, so it must stay off on a public address
 * unless that is wanted. Every message comes back as it went, text as
 * text and binary as binary, under the bounds of gateway/ws.h. */
#include "gateway/routes.h"
#include "gateway/ws.h"

static void s_on_message(gateway_ws_t *ws, bool text, const uint8_t *data, size_t len, void *ud)
{
    (void) ud;
    (void) gateway_ws_send(ws, text, data, len); /* a failure closes the socket itself */
}

static const gateway_ws_handlers_t s_handlers = {.on_message = s_on_message};

static void s_upgrade(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    const gateway_ws_opts_t *opts = ud;
    if (!gateway_ws_accept(res, &s_handlers, NULL, opts))
        (void) gateway_http_respond_error(res, 500, "internal_error",
                                          "the server is out of memory");
}

int gateway_route_ws_echo(gateway_http_t *g, const gateway_ws_opts_t *opts)
{
    return gateway_http_route_ws(g, "/ws/echo", NULL, 0, s_upgrade, (void *) opts);
}
