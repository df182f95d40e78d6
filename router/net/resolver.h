/* router/net/resolver.h — DNS names for the loop, resolved off it. The loop
 * never blocks, and getaddrinfo can block for seconds, so a name that is
 * not an IP literal or `localhost` goes to one thread of the resolver's
 * own (started on first use), and the answer comes back to the loop
 * through an eventfd it watches. Answers are cached for a while (failures
 * for less), the names cached and the callers waiting are bounded, and a
 * resolver destroyed with a lookup in flight leaves the thread to finish
 * it and drop the answer: the loop never waits for DNS, not even to stop. */
#ifndef KITH_ROUTER_NET_RESOLVER_H
#define KITH_ROUTER_NET_RESOLVER_H

#include <stddef.h>
#include <stdint.h>

#include "router/metrics.h"
#include "router/net/addr.h"
#include "router/net/loop.h"

#define ROUTER_RESOLVER_NAMES_MAX 64u     /* names cached or being resolved */
#define ROUTER_RESOLVER_WAITERS_MAX 1024u /* callers waiting, all names together */
#define ROUTER_RESOLVER_TTL_MS 30000u     /* an answer is used this long */
#define ROUTER_RESOLVER_FAIL_TTL_MS 5000u /* a failure is given again this long */
#define ROUTER_RESOLVE_ADDRS_MAX 8u       /* addresses kept per name (a sender tries each) */

typedef struct router_resolver router_resolver_t;

/* A name's addresses, in the order a sender dials them (spec/WIRE.md
 * §1.1): every IPv4 address getaddrinfo gave, in its order, then the
 * others, without repeats, at most ROUTER_RESOLVE_ADDRS_MAX. Plain data. */
typedef struct router_addr_list {
    unsigned n;                                   /* addresses in addr[], 1.. when resolved */
    router_addr_t addr[ROUTER_RESOLVE_ADDRS_MAX]; /* each with the caller's port */
} router_addr_list_t;

/* An answer, on the loop thread: `addrs` (at least one, ports set; valid
 * during the call) or NULL with `why` saying what failed. */
typedef void(router_resolve_fn)(const router_addr_list_t *addrs, const char *why, void *ud);

/* getaddrinfo for `host`, on a thread that may wait seconds (never the
 * loop's): its addresses in dialing order (router_addr_list_t), with
 * `port`. 0, or -1 with why[whycap]. The resolver's thread and callers
 * that send from their own thread order them the same way. */
int router_resolve_blocking(const char *host, uint16_t port, router_addr_list_t *out, char *why,
                            size_t whycap) __attribute__((warn_unused_result));

/* A resolver for `loop` (borrowed; loop thread, or before it runs).
 * `metrics` is optional. Returns NULL with errno set. The caller owns it. */
router_resolver_t *router_resolver_new(router_loop_t *loop, router_metrics_t *metrics);

/* Loop thread. Callers still waiting are dropped without a call. A lookup
 * in flight finishes on its thread and is thrown away. Idempotent; nulls
 * *self_p. */
void router_resolver_destroy(router_resolver_t **self_p);

/* Loop thread. Resolves host (a DNS name) for `port`:
 *   0: a fresh answer was cached: *out is set, cb is not called;
 *   1: cb(addrs or NULL, why, ud) runs later on the loop, exactly once
 *      (unless the resolver is destroyed first);
 *  -1: not now: the name failed within ROUTER_RESOLVER_FAIL_TTL_MS, or too
 *      many names or callers wait, or no thread could start; `why` says which.
 * An IP literal or `localhost` answers 0 at once, one address. */
int router_resolver_lookup(router_resolver_t *self, const char *host, uint16_t port,
                           router_addr_list_t *out, router_resolve_fn *cb, void *ud, char *why,
                           size_t whycap) __attribute__((warn_unused_result));

#endif
