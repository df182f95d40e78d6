/* router/net/inproc.h — the in-process transport (DESIGN §8 `inproc://name`): a
 * namespaced registry of node names. Dialing a name makes a connected Unix
 * socket pair and hands one end to the named node, so in-process peers run
 * through exactly the same framing, pipeline, bounds and backpressure as
 * TCP peers. A namespace is one network: tests make their own so several
 * networks can share a process. Every function is thread-safe. */
#ifndef KITH_ROUTER_INPROC_H
#define KITH_ROUTER_INPROC_H

#include <stdbool.h>
#include <stdint.h>

/* Longest name, "inproc://" not included. */
#define ROUTER_INPROC_NAME_MAX 128

typedef struct router_inproc router_inproc_t;

/* Receives the server end of a new connection on the dialing thread; it
 * must hand `fd` to its own loop (router_loop_post) and return 0, or return
 * -1 to refuse (the registry then closes fd and the dial fails). */
typedef int(router_inproc_accept_fn)(int fd, void *ud);

/* A new, empty namespace. Returns NULL on allocation failure. */
router_inproc_t *router_inproc_new(void);

/* The process-wide namespace used when none is given. Never freed. */
router_inproc_t *router_inproc_default(void);

/* Names must be unbound first. Idempotent; nulls *self_p. */
void router_inproc_destroy(router_inproc_t **self_p);

/* Binds `name` (1..ROUTER_INPROC_NAME_MAX bytes) to an acceptor. Returns 0,
 * or -1 with errno EADDRINUSE (taken), EINVAL (bad name) or ENOMEM. */
int router_inproc_bind(router_inproc_t *self, const char *name, router_inproc_accept_fn *fn,
                       void *ud) __attribute__((warn_unused_result));

/* Removes the binding; after it returns, the acceptor is never called again. */
void router_inproc_unbind(router_inproc_t *self, const char *name);

/* Connects to `name`: returns the dialer's end (nonblocking, close-on-exec),
 * or -1 with errno ECONNREFUSED (nobody bound, or the acceptor refused),
 * EMFILE or ENFILE (no descriptors for the socket pairs), or ENOMEM (a
 * faulty namespace's relay could not take the connection: the acceptor
 * saw its end close). */
int router_inproc_dial(router_inproc_t *self, const char *name)
    __attribute__((warn_unused_result));

/* ---------------------------------------------------------------- faults
 * A namespace made with router_inproc_new_faulty carries every connection
 * through a relay thread (router/net/inproc_relay.h) instead of one socket
 * pair, so that tests can make the network misbehave between two names.
 * Faults never drop or reorder bytes: a partition holds them (both ways)
 * until healed, a delay holds each chunk that long. The framing, checks
 * and bounds at both ends are unchanged. */

/* A new, empty namespace with fault injection. NULL on failure (errno). */
router_inproc_t *router_inproc_new_faulty(void);

/* As router_inproc_dial, naming the dialer by its bound name `from` so the
 * faults between `from` and `name` apply (NULL: none do). */
int router_inproc_dial_from(router_inproc_t *self, const char *from, const char *name)
    __attribute__((warn_unused_result));

/* Faults between names a and b, both directions, on connections open now
 * and made later: partitioned holds every byte, delay_ms holds each chunk
 * that long (0: none; a new value applies to what is held). Returns 0, or
 * -1 with errno EINVAL (bad name, or a namespace without faults) or ENOMEM. */
int router_inproc_set_faults(router_inproc_t *self, const char *a, const char *b,
                             bool partitioned, uint32_t delay_ms)
    __attribute__((warn_unused_result));

/* The faults in force between a and b. Returns 0, or -1 (EINVAL) for a
 * namespace without faults. */
int router_inproc_get_faults(router_inproc_t *self, const char *a, const char *b,
                             bool *partitioned, uint32_t *delay_ms);

#endif
