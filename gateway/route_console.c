/* gateway/route_console.c — GET / without Upgrade (DESIGN §5): the web
 * console, whose files (gateway/console/) CMake embeds in the binary, and
 * /console.js, /console.css and /favicon.svg beside it. No authentication and nothing
 * secret: the page pairs the browser itself. A strict Content-Security-
 * Policy holds the page to its own script and style and to this origin. */
#include "gateway/routes.h"

/* Embedded by CMakeLists.txt from gateway/console/ (gen/console_assets.c). */
extern const unsigned char gateway_console_index_html[], gateway_console_console_js[],
    gateway_console_console_css[], gateway_console_favicon_svg[];
extern const size_t gateway_console_index_html_len, gateway_console_console_js_len,
    gateway_console_console_css_len, gateway_console_favicon_svg_len;

typedef struct {
    const char *path;
    const char *type;
    const unsigned char *body;
    const size_t *len;
} s_asset_t;

static const s_asset_t s_assets[] = {
    {"/", "text/html; charset=utf-8", gateway_console_index_html,
     &gateway_console_index_html_len},
    {"/console.js", "text/javascript; charset=utf-8", gateway_console_console_js,
     &gateway_console_console_js_len},
    {"/console.css", "text/css; charset=utf-8", gateway_console_console_css,
     &gateway_console_console_css_len},
    {"/favicon.svg", "image/svg+xml", gateway_console_favicon_svg,
     &gateway_console_favicon_svg_len},
};

/* 'self' covers the same origin's ws:// and wss:// too (CSP Level 3). */
static const char s_csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                            "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                            "form-action 'self'; frame-ancestors 'none'";

static void s_serve(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    const s_asset_t *a = ud;
    if (gateway_http_res_header(res, "Content-Security-Policy", s_csp) != 0 ||
        gateway_http_res_header(res, "X-Content-Type-Options", "nosniff") != 0 ||
        gateway_http_res_header(res, "X-Frame-Options", "DENY") != 0 ||
        gateway_http_res_header(res, "Referrer-Policy", "no-referrer") != 0 ||
        gateway_http_res_header(res, "Cache-Control", "no-cache") != 0) {
        (void) gateway_http_respond_error(res, 500, "internal", "the console cannot be served");
        return;
    }
    (void) gateway_http_respond(res, 200, a->type, a->body, *a->len);
}

int gateway_route_console(gateway_http_t *g)
{
    for (size_t i = 0; i < sizeof s_assets / sizeof s_assets[0]; i++)
        if (gateway_http_route(g, "GET", s_assets[i].path, s_serve, (void *) &s_assets[i]) != 0)
            return -1;
    return 0;
}
