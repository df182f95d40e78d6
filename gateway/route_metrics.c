/* gateway/route_metrics.c — GET /metrics: the metrics registry in the
 * Prometheus text exposition format (version 0.0.4). */
#include <stdlib.h>

#include "gateway/routes.h"

/* First render buffer, and the bound it may double up to: the registry
 * holds at most ROUTER_METRICS_MAX series, well under it. */
#define S_RENDER_FIRST (16u * 1024)
#define S_RENDER_MAX (1024u * 1024)

static void s_metrics(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    router_metrics_t *metrics = ud;
    for (size_t cap = S_RENDER_FIRST; cap <= S_RENDER_MAX; cap *= 2) {
        char *text = malloc(cap);
        if (!text)
            break;
        long n = router_metrics_render(metrics, text, cap);
        if (n >= 0) {
            (void) gateway_http_respond(res, 200, "text/plain; version=0.0.4; charset=utf-8",
                                        text, (size_t) n);
            free(text);
            return;
        }
        free(text);
    }
    (void) gateway_http_respond_error(res, 500, "internal_error", "the metrics do not fit");
}

int gateway_route_metrics(gateway_http_t *g, router_metrics_t *metrics)
{
    return gateway_http_route(g, "GET", "/metrics", s_metrics, metrics);
}
