/* router/comms/framed.h — one framed-stream reader for both ends of comms:
 * 4-byte length-prefixed frames (proto/frame.h) out of a connection's
 * bytes, with the storage for a frame that arrives in pieces grown as its
 * bytes arrive (geometrically, capped at the frame's length) and, when an
 * account is given, counted against the partial-frame budget
 * (router/comms/guard.h). comms.c reads envelopes with it, outbound.c acks. */
#ifndef KITH_ROUTER_FRAMED_H
#define KITH_ROUTER_FRAMED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/frame.h"
#include "router/comms/guard.h"

/* Why router_framed_read failed. */
typedef enum {
    ROUTER_FRAMED_OK = 0,
    ROUTER_FRAMED_OVERSIZE, /* the header declared more than the limit */
    ROUTER_FRAMED_NOMEM,    /* no memory for a frame arriving in pieces */
    ROUTER_FRAMED_BUDGET,   /* the partial-frame budget refused this connection more */
} router_framed_error_t;

/* Embed it; fields are private. */
typedef struct {
    proto_frame_reader_t reader; /* the frame grammar */
    uint8_t *buf;                /* storage of a frame arriving in pieces, or NULL */
    size_t cap;                  /* bytes of buf */
    router_guard_conn_t *acct;   /* the budget account, or NULL for none */
    router_framed_error_t error; /* why reading failed; sticky */
} router_framed_t;

/* Frames of at most `max` payload bytes (1 .. PROTO_FRAME_MAX); `acct` (may
 * be NULL) is charged for the storage held. Returns 0 or -1 (bad max). */
int router_framed_init(router_framed_t *f, uint32_t max, router_guard_conn_t *acct)
    __attribute__((warn_unused_result));

/* As proto_frame_read: bytes consumed through the end of one frame (its
 * payload in *out, valid until the next call or router_framed_release), -2
 * when every byte was taken and the frame is not complete, -1 on error
 * (router_framed_error; every later call fails too). Storage of a copied
 * frame is released at the start of the next call. */
ssize_t router_framed_read(router_framed_t *f, const uint8_t *data, size_t len, proto_frame_t *out)
    __attribute__((warn_unused_result));

/* Frees the storage (the account is credited). Call it when the connection
 * is cut or closes, and after the last frame of a read was handled. The
 * reader stays usable only between frames. */
void router_framed_release(router_framed_t *f);

/* A frame has begun (a header byte arrived) and not yet been returned. */
bool router_framed_busy(const router_framed_t *f);

router_framed_error_t router_framed_error(const router_framed_t *f);

/* "ok", "oversize", "no_memory", "partial_budget". */
const char *router_framed_error_str(router_framed_error_t e);

#endif
