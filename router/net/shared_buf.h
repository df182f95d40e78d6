/* router/net/shared_buf.h — an immutable, reference-counted byte buffer that
 * many connections' send queues hold at once (router_conn_send_shared): one
 * copy of a fan-out frame, however many sockets it goes to, counted once
 * against the loop's bound on all connections' unsent bytes.
 *
 * Life: router_shared_buf_new() hands the caller one reference and the
 * bytes to fill; once the buffer is first queued it is read-only (a socket
 * may be sending from it). Every queue holding it keeps a reference, so the
 * caller may drop its own right after queueing; the buffer is freed with
 * the last reference. Not thread-safe: one loop's thread only. */
#ifndef KITH_ROUTER_SHARED_BUF_H
#define KITH_ROUTER_SHARED_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct router_shared_buf router_shared_buf_t;

/* A buffer of `len` bytes (uninitialised; fill them through
 * router_shared_buf_data before the first send). Caller owns the one
 * reference. NULL with errno ENOMEM, or EINVAL for len 0. */
router_shared_buf_t *router_shared_buf_new(size_t len);

/* The bytes, writable until the buffer is first queued. */
uint8_t *router_shared_buf_data(router_shared_buf_t *sb);
size_t router_shared_buf_len(const router_shared_buf_t *sb);

/* One more reference to sb (returned), for the caller to destroy. */
router_shared_buf_t *router_shared_buf_ref(router_shared_buf_t *sb);

/* Drops the reference *sb_p holds (freeing the buffer with the last one)
 * and nulls *sb_p; nothing on NULL or *sb_p NULL. */
void router_shared_buf_destroy(router_shared_buf_t **sb_p);

/* ---- for the send queue (router/net/conn.c) only ----
 * The buffer's bytes count once in the unsent total of the loop ("owner")
 * whose queues hold it, for as long as one block holds it. */

/* A queue block of `owner` takes a reference. Returns 1 when it is the
 * first block holding sb (the caller counts its bytes), 0 when others of
 * the same owner already do, -1 (nothing taken) when another owner's
 * blocks hold it. */
int router_shared_buf_hold(router_shared_buf_t *sb, const void *owner)
    __attribute__((warn_unused_result));

/* A queue block lets go of its reference (nulling *sb_p; the buffer may be
 * freed). Returns true when it was the last block holding it: the caller
 * stops counting its bytes. */
bool router_shared_buf_unhold(router_shared_buf_t **sb_p);

/* The owner whose blocks hold sb (its bytes are counted there already), or
 * NULL while no block does. */
const void *router_shared_buf_holder(const router_shared_buf_t *sb);

#endif
