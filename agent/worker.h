/* agent/worker.h — the agent worker: one MDP worker of service "kith.agent"
 * (router/workers/mdp_worker.h) that takes turn-requests one at a time,
 * runs each through the tool loop (agent/turn.h) and replies; and the pool
 * of such workers on threads inside `kith daemon` (workers.agent_threads)
 * or `kith agent`. Workers are stateless between turns: everything a turn
 * needs comes in its request.
 *
 * A request that is not a turn while no turn is held (a bad body, a steer
 * for a turn already over that reached a fresh hold) still gets the FINAL
 * the hold needs: a turn-final error AGENT_ERROR saying why. */
#ifndef KITH_AGENT_WORKER_H
#define KITH_AGENT_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "agent/provider.h"
#include "agent/turn.h"
#include "router/state/config.h"

/* The MDP service agent workers register for. */
#define AGENT_SERVICE "kith.agent"
/* Most embedded or `kith agent` threads (config workers.agent_threads: 0..256). */
#define AGENT_THREADS_MAX 256

/* Everything a worker needs. Strings are copied by agent_pool_start. */
typedef struct {
    const char *endpoint;           /* NULL: inproc://kith.workers */
    int heartbeat_ms;               /* workers.heartbeat_ms; 0: 1000 */
    int liveness;                   /* workers.liveness; 0: 3 */
    const char *curve_server_key;   /* broker's public key (Z85), or NULL */
    const char *curve_cert_path;    /* this worker's CZMQ certificate, or NULL */
    agent_provider_opts_t provider; /* provider settings (agent.*) */
    unsigned threads;               /* workers; 0 starts none */
} agent_pool_opts_t;

/* Fills *o from the configuration: provider, base_url, model, api_key_env,
 * heartbeat, liveness, agent_threads; endpoint inproc. Strings point into
 * *cfg, which must outlive the call to agent_pool_start. */
void agent_pool_opts_from_config(agent_pool_opts_t *o, const router_config_t *cfg);

/* Answers one REQUEST body received while no turn is held: a turn runs to
 * its FINAL; anything else gets a turn-final error AGENT_ERROR. `provider`
 * NULL: turns end AGENT_INIT_FAILED with init_err. */
agent_turn_outcome_t agent_worker_serve(agent_provider_t *provider, const char *init_err,
                                        const agent_io_t *io, const uint8_t *body, size_t len);

typedef struct agent_pool agent_pool_t;

/* Starts o->threads workers, each on its own thread with its own provider
 * and MDP connection, and returns once every one is connected (connecting
 * is asynchronous: a broker not bound yet is waited for). A provider that
 * cannot be made (an unset API key variable) is not a start failure: that
 * worker answers each turn AGENT_INIT_FAILED with the reason, which is also
 * logged once. Returns NULL with a one-line reason in err when a thread or
 * an MDP worker cannot be made (bad endpoint or CURVE settings). The
 * caller owns the result. */
agent_pool_t *agent_pool_start(const agent_pool_opts_t *o, char *err, size_t errcap);

/* Interrupts every worker (a turn in progress ends at once: its FINAL may
 * not reach the router, which then fails it), joins the threads and frees.
 * Idempotent; nulls *self_p. */
void agent_pool_stop(agent_pool_t **self_p);

/* Turns finished by this pool's workers (every outcome counts), for tests and logs. */
uint64_t agent_pool_turns(const agent_pool_t *self);

#endif
