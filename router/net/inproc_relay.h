/* router/net/inproc_relay.h — the in-process transport's fault injector: a
 * thread that carries the bytes of every connection in a namespace made
 * with router_inproc_new_faulty, between two socket pairs, and can hold
 * them (partition) or hold each chunk for a while (delay) per pair of node
 * names. Nothing is ever dropped or reordered: a partition stops the
 * relay reading either end, so what was written stays queued (in the relay
 * or the kernel) and flows, in order, once healed — as TCP's
 * retransmissions carry a stream across a cut cable that is mended in time.
 * Used only through router/net/inproc.h; every function is thread-safe. */
#ifndef KITH_ROUTER_INPROC_RELAY_H
#define KITH_ROUTER_INPROC_RELAY_H

#include <stdbool.h>
#include <stdint.h>

/* Bytes the relay holds per direction of one connection; past this it
 * stops reading that end and the socket buffers push back on the writer
 * (whose own send limit then applies, DESIGN §10). Room for a whole
 * largest frame (1 MiB) and then some. */
#define ROUTER_INPROC_HELD_MAX (2u * 1024u * 1024u)

/* Longest delay accepted, ms (a day: longer is a partition). */
#define ROUTER_INPROC_DELAY_MAX (24u * 3600u * 1000u)

typedef struct router_inproc_relay router_inproc_relay_t;

/* Starts the relay thread. NULL with errno set on failure. */
router_inproc_relay_t *router_inproc_relay_new(void);

/* Stops the thread, closes every descriptor it holds, frees. Idempotent;
 * nulls *self_p. */
void router_inproc_relay_destroy(router_inproc_relay_t **self_p);

/* Carries bytes between `dialer_fd` and `acceptor_fd` (the relay's ends of
 * the two socket pairs; both taken, also on failure), subject to the
 * faults set between names `from` (may be NULL: none apply) and `to`.
 * Returns 0, or -1 with errno ENOMEM. */
int router_inproc_relay_add(router_inproc_relay_t *self, int dialer_fd, int acceptor_fd,
                            const char *from, const char *to) __attribute__((warn_unused_result));

/* Sets the faults between names a and b, both directions, for connections
 * open now and made later: `partitioned` true holds every byte, false lets
 * them flow; `delay_ms` holds each chunk that long after the relay read it
 * (a changed delay applies to chunks already held: 0 releases them).
 * Returns 0, or -1 with errno ENOMEM or EINVAL (a name too long). */
int router_inproc_relay_set(router_inproc_relay_t *self, const char *a, const char *b,
                            bool partitioned, uint32_t delay_ms)
    __attribute__((warn_unused_result));

/* The faults in force between a and b (false / 0 when none were set). */
void router_inproc_relay_get(router_inproc_relay_t *self, const char *a, const char *b,
                             bool *partitioned, uint32_t *delay_ms);

/* Called first on the relay thread of every relay. Does nothing in kith:
 * a weak symbol unit tests override to reach the thread's failure paths. */
void router_inproc_relay_thread_started(void);

#endif
