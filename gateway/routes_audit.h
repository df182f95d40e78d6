/* gateway/routes_audit.h — GET /api/audit and GET /api/audit/verify (DESIGN
 * §5, WIRE §21.8), answered by the audit worker through the broker. */
#ifndef KITH_GATEWAY_ROUTES_AUDIT_H
#define KITH_GATEWAY_ROUTES_AUDIT_H

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "router/net/loop.h"
#include "router/workers/broker.h"

/* audit-query requests at the worker at once; more are answered 503. */
#define GATEWAY_AUDIT_QUERIES_MAX 4u

typedef struct gateway_route_audit gateway_route_audit_t;

/* Installs both routes on `g` (bearer-protected through `auth`):
 *   GET /api/audit?limit=N&event_type=T&since=MS → 200 {"records":[…],
 *     "partial"?}: the newest matching records (limit default 100, at most
 *     1000), oldest first, each the record's own JSON object;
 *   GET /api/audit/verify → 200 {"ok","records","first_bad"?,"reason"?,
 *     "files"?,"first_seq"?}; one verify at the worker at once, whose
 *     answer every verify asked meanwhile gets.
 * 400 for a bad parameter; 503 audit_unavailable when the worker is off,
 * gone, failed or silent for 15 s, or GATEWAY_AUDIT_QUERIES_MAX queries are
 * at it already. `broker` may be NULL (audit off); all pointers are
 * borrowed. Returns NULL (errno) on failure. Destroy after the loop
 * stopped, before the broker and the server. */
gateway_route_audit_t *gateway_route_audit_new(gateway_http_t *g, router_loop_t *loop,
                                               router_broker_t *broker, gateway_auth_t *auth);

/* HTTP answers waiting for the worker (loop thread; tests). */
size_t gateway_route_audit_waiting(const gateway_route_audit_t *self);

/* Answers what still waits (503), cancels its requests, frees. Idempotent. */
void gateway_route_audit_destroy(gateway_route_audit_t **self_p);

#endif
