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

/* ,"<key>":"<value>", or ,"<key>":null when value is NULL. `safe` values
 * come from kith's own formatters (a UUID, a key, a kind name) and hold no
 * character JSON must escape; the others are escaped. */
static void s_member(gateway_events_json_t *j, const char *key, const char *value, bool safe)
{
    gateway_events_json_raw(j, ",\"", 2);
    gateway_events_json_raw(j, key, strlen(key));
    if (!value) {
        gateway_events_json_raw(j, "\":null", 6);
        return;
    }
    gateway_events_json_raw(j, "\":\"", 3);
    size_t len = strlen(value);
    if (safe)
        gateway_events_json_raw(j, value, len);
    else
        gateway_events_json_str(j, value, len);
    gateway_events_json_raw(j, "\"", 1);
}

void gateway_events_on_comms(const router_comms_event_t *ev, void *ud)
{
    char id[PROTO_UUID_TEXT_CAP], from[PROTO_PUBKEY_TEXT_CAP];
    if (ev->id)
        proto_uuid_format(ev->id, id);
    if (ev->from && proto_pubkey_format(ev->from, from, sizeof from) != 0)
        from[0] = '\0';
    char buf[1024];
    gateway_events_json_t j = {.p = buf, .cap = sizeof buf};
    gateway_events_json_raw(&j, "{\"conn\":", 8);
    gateway_events_json_u64(&j, ev->conn_id);
    s_member(&j, "id", ev->id ? id : NULL, true);
    s_member(&j, "from", ev->from && from[0] ? from : NULL, true);
    s_member(&j, "peer", ev->peer_name, false);
    s_member(&j, "kind", ev->kind, true);
    if (ev->admitted) {
        gateway_events_json_raw(&j, ",\"seq\":", 7);
        gateway_events_json_u64(&j, ev->seq);
    } else {
        s_member(&j, "reason", proto_wire_reason_str(ev->reason), true);
        s_member(&j, "detail", ev->detail, false);
    }
    gateway_events_json_raw(&j, "}", 1);
    if (!j.full)
        (void) gateway_events_publish(ud, ev->admitted ? "comms_message" : "comms_rejected",
                                      buf);
}

void gateway_events_on_channel(const router_channel_event_t *ev, void *ud)
{
    char id[PROTO_UUID_TEXT_CAP];
    proto_uuid_format(ev->id, id);
    char buf[512];
    gateway_events_json_t j = {.p = buf, .cap = sizeof buf};
    gateway_events_json_raw(&j, "{\"channel\":\"", 12);
    gateway_events_json_raw(&j, ev->channel, strlen(ev->channel));
    gateway_events_json_raw(&j, "\"", 1);
    s_member(&j, "id", id, true);
    gateway_events_json_raw(&j, ",\"seq\":", 7);
    gateway_events_json_u64(&j, ev->seq);
    gateway_events_json_raw(&j, ",\"count\":", 9);
    gateway_events_json_u64(&j, ev->count ? ev->count : 1);
    gateway_events_json_raw(&j, ",\"last_seq\":", 12);
    gateway_events_json_u64(&j, ev->count > 1 ? ev->last_seq : ev->seq);
    s_member(&j, "session_id", ev->session_id, false);
    if (ev->event_type)
        s_member(&j, "event_type", ev->event_type, false);
    gateway_events_json_raw(&j, ",\"bytes\":", 9);
    gateway_events_json_u64(&j, ev->bytes);
    gateway_events_json_raw(&j, "}", 1);
    if (!j.full)
        (void) gateway_events_publish(ud, "channel_event", buf);
}
