/* gateway/events.h — one Server-Sent Events stream of the gateway (DESIGN
 * §7): a bounded ring of the latest events and the subscribers reading it.
 * /api/events and /api/daemon/logs are two of these (gateway/route_events.c).
 *
 * Every event gets the next id of its stream (1, 2, … per process) and is
 * encoded once, as `id: N` and a `data:` line of JSON whose first member is
 * "type", into one buffer that the ring and every subscriber's send queue
 * share (router_conn_send_shared): however many subscribers an event goes
 * to, it is one copy, counted once in the loop's bound on all connections'
 * unsent bytes, and freed when the ring and the last queue let it go. A
 * subscriber starts at the newest event, or, with Last-Event-ID N,
 * right after N: the events still in the ring are replayed, paced by its
 * connection's drain, and when some after N are gone a `stream_gap` event
 * says how many (spec/WIRE.md §18). Keep-alive comment lines go out every
 * keepalive_ms.
 *
 * Bounds: the ring holds at most ring_events events and ring_bytes_max
 * octets; a subscriber may have at most unsent_max octets unsent: a live
 * subscriber that would pass it, a replaying one the ring overtakes, or
 * any whose next event is larger than unsent_max, is cut (its connection
 * aborted; counted in kith_sse_cut_total, as is one the connection layer
 * cuts for holding more than its share of the loop's unsent total). One
 * that cannot be queued an event for want of memory is cut too (logged):
 * it never goes on without it, and a reconnect replays it. At most
 * subscribers_max subscribe at once (then 503).
 *
 * When the keep-alive timer cannot be re-armed, every subscriber is sent a
 * comment naming the reason and closed (logged, counted in
 * kith_sse_keepalive_lost_total); a later subscribe arms it again or is
 * refused 503 keepalive_unavailable.
 *
 * Threads: loop thread only. */
#ifndef KITH_GATEWAY_EVENTS_H
#define KITH_GATEWAY_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/http_server.h"
#include "router/comms/comms.h"
#include "router/comms/events.h"
#include "router/metrics.h"
#include "router/net/loop.h"

/* Defaults used when an option is 0. */
#define GATEWAY_EVENTS_RING_DEFAULT 4096u                /* DESIGN §10 */
#define GATEWAY_EVENTS_RING_BYTES_MAX (16u * 1024 * 1024) /* octets the ring may hold */
#define GATEWAY_EVENTS_UNSENT_MAX (1024u * 1024)         /* a subscriber's unsent octets */
#define GATEWAY_EVENTS_KEEPALIVE_MS 15000u               /* DESIGN §7 */
#define GATEWAY_EVENTS_SUBSCRIBERS_MAX 1024u             /* subscribers of one stream */

/* Largest JSON object one event carries, and longest type. */
#define GATEWAY_EVENTS_JSON_MAX (64u * 1024)
#define GATEWAY_EVENTS_TYPE_MAX 64u

typedef struct gateway_events gateway_events_t;

typedef struct {
    const char *name;          /* the stream's label in metrics and logs ("events"); copied */
    uint32_t ring_events;      /* GATEWAY_EVENTS_RING_DEFAULT */
    size_t ring_bytes_max;     /* GATEWAY_EVENTS_RING_BYTES_MAX */
    size_t unsent_max;         /* GATEWAY_EVENTS_UNSENT_MAX */
    uint32_t subscribers_max;  /* GATEWAY_EVENTS_SUBSCRIBERS_MAX */
    unsigned keepalive_ms;     /* GATEWAY_EVENTS_KEEPALIVE_MS */
    const struct gateway_auth *auth; /* bearer check for subscribers (gateway/auth.h),
                                * borrowed; NULL: none */
    router_metrics_t *metrics; /* borrowed; NULL: no metrics. Registers, labelled
                                * stream="<name>": kith_sse_subscribers (gauge),
                                * kith_sse_cut_total, kith_sse_events_total,
                                * kith_sse_keepalive_lost_total */
} gateway_events_opts_t;

/* A stream on `loop` (borrowed). Returns NULL with errno set (EINVAL for an
 * option out of range, ENOMEM, ENOSPC when the loop has no timer slot for
 * the keep-alives). Caller owns the result. */
gateway_events_t *gateway_events_new(router_loop_t *loop, const gateway_events_opts_t *opts);

/* Frees the stream and its subscribers without touching their connections:
 * call it after gateway_http_destroy, which lets them go. Idempotent; nulls
 * *self_p. */
void gateway_events_destroy(gateway_events_t **self_p);

/* Publishes one event of `type` (1..GATEWAY_EVENTS_TYPE_MAX-1 of [a-z0-9_])
 * whose other members are those of `json_object` (a JSON object text, "{…}",
 * at most GATEWAY_EVENTS_JSON_MAX octets, not checked further: callers build
 * it). Subscribers see {"type":"<type>", …members}. Returns the event's id,
 * or 0 with errno EINVAL (bad type or object) or ENOMEM. */
uint64_t gateway_events_publish(gateway_events_t *self, const char *type,
                                const char *json_object);

/* The encoded frame of event `id` while it is in the ring (borrowed, valid
 * until the next publish), with its length in *len; NULL when it is not. */
const uint8_t *gateway_events_frame(const gateway_events_t *self, uint64_t id, size_t *len);

/* In a GET handler: answers the request with the stream (200
 * text/event-stream), honouring Last-Event-ID; or 400 bad_last_event_id,
 * 503 too_many_subscribers, 503 keepalive_unavailable (the keep-alive
 * timer could not be armed), 500. */
void gateway_events_subscribe(gateway_events_t *self, const gateway_http_req_t *req,
                              gateway_http_res_t *res);

/* For tests and logs. */
typedef struct {
    uint64_t newest;      /* id of the newest event, 0 before the first */
    uint64_t oldest;      /* id of the oldest event still in the ring (newest+1 when empty) */
    size_t ring_bytes;    /* octets the ring holds */
    uint32_t subscribers; /* subscribers now */
    uint64_t cut;         /* subscribers cut since start */
    uint64_t keepalive_lost; /* subscribers closed since start: keep-alive timer lost */
} gateway_events_stats_t;

/* A test seam: 0, or the errno with which the stream's next keep-alive
 * timer is refused as if the loop had refused it. kith defines it weak,
 * returning 0; a test may define its own. */
int gateway_events_timer_fault(void);

void gateway_events_stats(const gateway_events_t *self, gateway_events_stats_t *out);

/* Appends `s` (len octets) to out[*n..cap) as the inside of a JSON string
 * (no quotes): '"', '\\' and control bytes escaped, and, when s is not
 * UTF-8, every octet above 0x7F as \u00XX. Returns 0, or -1 when it does
 * not fit (out is then cut at *n). A helper for publishers. */
int gateway_events_json_escape(char *out, size_t cap, size_t *n, const char *s, size_t len);

/* A bounded writer of the JSON objects publishers build in a buffer of
 * their own: an append that would not fit (with the NUL kept after it)
 * marks the writer full, and it stays full; publish only what is not. */
typedef struct {
    char *p;     /* the buffer */
    size_t cap;  /* its size */
    size_t n;    /* bytes written, a NUL after them */
    bool full;   /* an append did not fit */
} gateway_events_json_t;

void gateway_events_json_raw(gateway_events_json_t *j, const char *s, size_t len);
/* v in decimal. */
void gateway_events_json_u64(gateway_events_json_t *j, uint64_t v);
/* s escaped as gateway_events_json_escape does (no quotes). */
void gateway_events_json_str(gateway_events_json_t *j, const char *s, size_t len);

/* The bearer check the stream's routes apply (opts.auth), or NULL. */
const struct gateway_auth *gateway_events_auth(const gateway_events_t *ev);

/* ---------------------------------------------------------------- routes (route_events.c) */

/* GET /api/events → the stream `events` (borrowed; must outlive the
 * server). Returns 0 or -1 (errno from gateway_http_route). */
int gateway_route_events(gateway_http_t *g, gateway_events_t *events)
    __attribute__((warn_unused_result));

/* GET /api/daemon/logs → the stream `logs` (fed by gateway/log_tap.h). */
int gateway_route_daemon_logs(gateway_http_t *g, gateway_events_t *logs)
    __attribute__((warn_unused_result));

/* A router_comms_event_fn (router_node_set_event_sink) publishing each
 * admission as `comms_message` and each refusal as `comms_rejected` on
 * `ud`, a gateway_events_t. Loop thread. */
void gateway_events_on_comms(const router_comms_event_t *ev, void *ud);

/* A router_channel_event_fn publishing `channel_event` {"channel","id",
 * "seq","count","last_seq","session_id","event_type"?,"bytes"} on `ud`, a
 * gateway_events_t: the plain event lines of one read
 * (router_node_set_channel_sink), or one webhook or external event
 * (gateway_ingress_set_events) admitted. Loop thread. */
void gateway_events_on_channel(const router_channel_event_t *ev, void *ud);

#endif
