/* gateway/route_events.c — GET /api/events and GET /api/daemon/logs (DESIGN
 * §5, §7): the two SSE streams, and the comms events /api/events carries
 * (DESIGN §8: every admission and every typed refusal). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gateway/auth.h"
#include "gateway/events.h"
#include "proto/envelope.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"

static void s_stream(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    /* DESIGN §5: both streams need a bearer token (when pairing is on). */
    const gateway_auth_t *auth = gateway_events_auth(ud);
    if (auth && gateway_auth_require(auth, req, res) != 0)
        return;
    gateway_events_subscribe(ud, req, res);
}

int gateway_route_events(gateway_http_t *g, gateway_events_t *events)
{
    return gateway_http_route(g, "GET", "/api/events", s_stream, events);
}

int gateway_route_daemon_logs(gateway_http_t *g, gateway_events_t *logs)
{
    return gateway_http_route(g, "GET", "/api/daemon/logs", s_stream, logs);
}

/* Appends ,"<key>":"<value>" (or null when value is NULL). */
static int s_member(char *out, size_t cap, size_t *n, const char *key, const char *value)
{
    int k = snprintf(out + *n, cap - *n, ",\"%s\":%s", key, value ? "\"" : "null");
    if (k < 0 || (size_t) k >= cap - *n)
        return -1;
    *n += (size_t) k;
    if (!value)
        return 0;
    if (gateway_events_json_escape(out, cap, n, value, strlen(value)) != 0 || *n + 2 >= cap)
        return -1;
    out[(*n)++] = '"';
    out[*n] = '\0';
    return 0;
}

void gateway_events_on_comms(const router_comms_event_t *ev, void *ud)
{
    char id[PROTO_UUID_TEXT_CAP], from[PROTO_PUBKEY_TEXT_CAP];
    if (ev->id)
        proto_uuid_format(ev->id, id);
    if (ev->from && proto_pubkey_format(ev->from, from, sizeof from) != 0)
        from[0] = '\0';
    char json[1024];
    size_t n = (size_t) snprintf(json, sizeof json, "{\"conn\":%" PRIu64, ev->conn_id);
    int bad = s_member(json, sizeof json, &n, "id", ev->id ? id : NULL) ||
              s_member(json, sizeof json, &n, "from", ev->from && from[0] ? from : NULL) ||
              s_member(json, sizeof json, &n, "peer", ev->peer_name) ||
              s_member(json, sizeof json, &n, "kind", ev->kind);
    if (!bad && !ev->admitted)
        bad = s_member(json, sizeof json, &n, "reason", proto_wire_reason_str(ev->reason)) ||
              s_member(json, sizeof json, &n, "detail", ev->detail);
    if (!bad) {
        int k = ev->admitted ? snprintf(json + n, sizeof json - n, ",\"seq\":%" PRIu64 "}", ev->seq)
                             : snprintf(json + n, sizeof json - n, "}");
        bad = k < 0 || (size_t) k >= sizeof json - n;
    }
    if (!bad)
        (void) gateway_events_publish(ud, ev->admitted ? "comms_message" : "comms_rejected",
                                      json);
}
