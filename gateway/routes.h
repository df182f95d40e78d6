/* gateway/routes.h — the gateway's routes (DESIGN §5), each installed on a
 * server by the module that serves it. */
#ifndef KITH_GATEWAY_ROUTES_H
#define KITH_GATEWAY_ROUTES_H

#include "gateway/http_server.h"
#include "gateway/ws.h"
#include "router/metrics.h"

/* kith's version as /health reports it; the same as `kith --version` and
 * project(VERSION) in CMakeLists.txt. */
#define GATEWAY_KITH_VERSION KITH_VERSION /* from CMake's project() */

/* GET /health → 200 {"status":"ok","version":GATEWAY_KITH_VERSION}: liveness,
 * no secrets. Returns 0 or -1 (errno from gateway_http_route). */
int gateway_route_health(gateway_http_t *g) __attribute__((warn_unused_result));

/* GET /metrics → 200 text/plain; version=0.0.4: the Prometheus text of
 * `metrics` (borrowed; must outlive the server). Returns 0 or -1. */
int gateway_route_metrics(gateway_http_t *g, router_metrics_t *metrics)
    __attribute__((warn_unused_result));

/* GET / (no Upgrade), /console.js, /console.css, /favicon.svg → the web console (its
 * files are built in). Returns 0 or -1 (errno from gateway_http_route). */
int gateway_route_console(gateway_http_t *g) __attribute__((warn_unused_result));

/* GET /ws/echo (Upgrade) → an RFC 6455 echo socket with the bounds in
 * `opts` (borrowed; must outlive the server; NULL for the defaults). Only
 * installed when gateway.echo is on. Returns 0 or -1. */
int gateway_route_ws_echo(gateway_http_t *g, const gateway_ws_opts_t *opts)
    __attribute__((warn_unused_result));

#endif
