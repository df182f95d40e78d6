/* gateway/log_tap.h — the daemon's log lines as events of a stream
 * (/api/daemon/logs): a tap on router/log.h hands each line, from whatever
 * thread logged it, to a bounded queue; the loop thread publishes them as
 * `log` events {"level","module","time","text"}. A full queue drops lines
 * (the logger never waits) and says so with one `log_dropped` event {"count"}. */
#ifndef KITH_GATEWAY_LOG_TAP_H
#define KITH_GATEWAY_LOG_TAP_H

#include "gateway/events.h"
#include "router/net/loop.h"

/* Lines waiting for the loop thread; past this they are dropped. */
#define GATEWAY_LOG_TAP_LINES 512u

typedef struct gateway_log_tap gateway_log_tap_t;

/* Installs the tap (router_log_set_tap: one per process) publishing on
 * `logs` (borrowed; must outlive the tap) from `loop`'s thread. Returns NULL
 * with errno set. Caller owns the result. */
gateway_log_tap_t *gateway_log_tap_new(router_loop_t *loop, gateway_events_t *logs);

/* Removes the tap (no line reaches it once this returns) and frees it; lines
 * still queued are dropped. On the loop thread, or once the loop stopped.
 * Idempotent; nulls *self_p. */
void gateway_log_tap_destroy(gateway_log_tap_t **self_p);

#endif
