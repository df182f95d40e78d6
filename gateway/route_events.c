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

/* A bounded JSON writer for the comms events below: appends fail (and
 * stay failed) once the buffer would overflow. */
typedef struct {
    char *p;     /* the buffer */
    size_t cap;  /* its size */
    size_t n;    /* bytes written, a NUL after them */
    bool full;   /* an append did not fit */
} s_json_t;

static void s_raw(s_json_t *j, const char *s, size_t len)
{
    if (j->full || len >= j->cap - j->n) {
        j->full = true;
        return;
    }
    memcpy(j->p + j->n, s, len);
    j->n += len;
    j->p[j->n] = '\0';
}

static void s_u64(s_json_t *j, uint64_t v)
{
    char d[20];
    size_t k = sizeof d;
    do
        d[--k] = (char) ('0' + v % 10);
    while ((v /= 10) != 0);
    s_raw(j, d + k, sizeof d - k);
}

/* ,"<key>":"<value>", or ,"<key>":null when value is NULL. `safe` values
 * come from kith's own formatters (a UUID, a key, a kind name) and hold no
 * character JSON must escape; the others are escaped. */
static void s_member(s_json_t *j, const char *key, const char *value, bool safe)
{
    s_raw(j, ",\"", 2);
    s_raw(j, key, strlen(key));
    if (!value) {
        s_raw(j, "\":null", 6);
        return;
    }
    s_raw(j, "\":\"", 3);
    size_t len = strlen(value);
    if (safe)
        s_raw(j, value, len);
    else if (!j->full && gateway_events_json_escape(j->p, j->cap, &j->n, value, len) != 0)
        j->full = true;
    s_raw(j, "\"", 1);
}

void gateway_events_on_comms(const router_comms_event_t *ev, void *ud)
{
    char id[PROTO_UUID_TEXT_CAP], from[PROTO_PUBKEY_TEXT_CAP];
    if (ev->id)
        proto_uuid_format(ev->id, id);
    if (ev->from && proto_pubkey_format(ev->from, from, sizeof from) != 0)
        from[0] = '\0';
    char buf[1024];
    s_json_t j = {.p = buf, .cap = sizeof buf};
    s_raw(&j, "{\"conn\":", 8);
    s_u64(&j, ev->conn_id);
    s_member(&j, "id", ev->id ? id : NULL, true);
    s_member(&j, "from", ev->from && from[0] ? from : NULL, true);
    s_member(&j, "peer", ev->peer_name, false);
    s_member(&j, "kind", ev->kind, true);
    if (ev->admitted) {
        s_raw(&j, ",\"seq\":", 7);
        s_u64(&j, ev->seq);
    } else {
        s_member(&j, "reason", proto_wire_reason_str(ev->reason), true);
        s_member(&j, "detail", ev->detail, false);
    }
    s_raw(&j, "}", 1);
    if (!j.full)
        (void) gateway_events_publish(ud, ev->admitted ? "comms_message" : "comms_rejected",
                                      buf);
}
