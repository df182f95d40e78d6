/* router/workers/turn_source.h — what turn an inbox entry becomes (WIRE
 * §19.4): its session, channel and message text, and for an envelope its
 * id, sender and kind. No I/O. */
#ifndef KITH_ROUTER_TURN_SOURCE_H
#define KITH_ROUTER_TURN_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/worker_msg.h"
#include "router/state/inbox.h"

/* Default session of a webhook without session_id. */
#define ROUTER_TURN_WEBHOOK_SESSION "webhook"

typedef struct {
    char session[129];               /* target session */
    proto_worker_channel_t channel;  /* comms, webhook, external_event */
    char *content;                   /* the message text (heap, NUL-terminated) */
    size_t len;
    bool envelope;                   /* an envelope: the three below are set */
    uint8_t envelope_id[16];
    uint8_t from[32];
    proto_worker_envtype_t envtype;  /* NONE for a response */
    bool is_request;                 /* a `request`: answered with a signed response */
} router_turn_source_t;

/* What router_turn_source_from_entry returns besides 0. */
#define ROUTER_TURN_SOURCE_REFUSED (-1)   /* never a turn: dropped (logged, done) */
#define ROUTER_TURN_SOURCE_NO_MEMORY (-2) /* out of memory: the entry waits for a retry */

/* Fills *out from entry e. comms_session: envelopes' and plain events'
 * session. Returns 0, or ROUTER_TURN_SOURCE_REFUSED or _NO_MEMORY with
 * why[whycap]; *out is cleared on either. */
int router_turn_source_from_entry(const router_inbox_entry_t *e, const char *comms_session,
                                  router_turn_source_t *out, char *why, size_t whycap);

void router_turn_source_clear(router_turn_source_t *s);

/* 1..128 of A-Z a-z 0-9 . _ : - */
bool router_turn_session_id_ok(const char *id, size_t len);

#endif
