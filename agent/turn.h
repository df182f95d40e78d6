/* agent/turn.h — one turn of the agent worker: the tool loop (DESIGN §6,
 * §9; spec/WIRE.md §20). A turn-request goes in; PARTIAL bodies (seq from
 * 0, in order) and exactly one FINAL come out through an agent_io_t, which
 * is the seam between the loop and ZeroMQ: the worker plugs in
 * router_mdp_worker_*, unit tests a queue.
 *
 * The loop: ask the provider; stream its text as chunks; when it asks for
 * tools, announce each call (tool_call PARTIAL), run it (router tools: wait
 * for the router-tool-result the router sends; worker tools: none exist
 * yet, so they answer an error), report the result (tool_result PARTIAL),
 * append calls and results to the conversation and ask again — at most
 * limits.max_tool_iterations times. A steer joins the conversation as a user
 * message at the next boundary (before the next provider call; an answer
 * that would end the turn with a steer pending gets one more round instead).
 * A stop ends the turn at once (FINAL stopped), aborting any provider
 * transfer; so does limits.turn_timeout_s (FINAL error AGENT_ERROR). */
#ifndef KITH_AGENT_TURN_H
#define KITH_AGENT_TURN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/provider.h"
#include "proto/worker_msg.h"

/* The seam: how a turn reads further requests and sends its replies. */
typedef struct {
    /* The next request body: 1 (*body is the caller's, free()), 0 nothing
     * within timeout_ms (0: only looks), -1 the worker is stopping or the
     * link failed, -2 the turn was given up below (a request about it could
     * not be read for want of memory; its FINAL went already): the turn
     * ends without more replies. */
    int (*recv)(void *ud, uint8_t **body, size_t *len, int timeout_ms);
    /* One reply body, a PARTIAL (final false) or the FINAL. 0 or -1. */
    int (*send)(void *ud, bool final, const uint8_t *body, size_t len);
    void *ud;
} agent_io_t;

/* Steers kept for the next boundary; more are dropped (and logged). */
#define AGENT_STEERS_MAX 16
/* Bytes of chunk text one turn may stream (full_response must fit a body). */
#define AGENT_RESPONSE_MAX (PROTO_WORKER_BODY_MAX - 4096)
/* Messages the conversation may grow to (history included). */
#define AGENT_CONV_MAX (PROTO_WORKER_HISTORY_MAX + 4096)

/* Why a turn ended (for the worker's log and tests; the FINAL says it too). */
typedef enum {
    AGENT_TURN_DONE = 0,
    AGENT_TURN_STOPPED,
    AGENT_TURN_TIMEOUT,
    AGENT_TURN_PROVIDER_ERROR,
    AGENT_TURN_AGENT_ERROR,     /* iteration limit, response too large, no memory
                                 * (the FINAL meant could not be encoded either) */
    AGENT_TURN_INIT_FAILED,     /* no provider */
    AGENT_TURN_LINK_LOST,       /* recv/send failed: the FINAL may not have gone out */
} agent_turn_outcome_t;

const char *agent_turn_outcome_str(agent_turn_outcome_t o);

/* Room for agent_final_oom_encode's body. */
#define AGENT_FINAL_OOM_MAX 160

/* The last resort when a FINAL cannot be encoded (out of memory): writes
 * an error FINAL (AGENT_ERROR, "out of memory: …") for turn_id into
 * out[cap] without allocating, so the router always hears that the turn
 * ended, where silence would hold the worker and the turn until the turn
 * timeout. turn_id NULL: all zero. Returns its length, or 0 when cap is
 * under AGENT_FINAL_OOM_MAX. */
size_t agent_final_oom_encode(const uint8_t *turn_id, uint8_t *out, size_t cap);

/* Runs `turn` to its FINAL. `provider` NULL means the provider could not be
 * made: the turn ends at once with AGENT_INIT_FAILED carrying init_err.
 * Returns how it ended. */
agent_turn_outcome_t agent_turn_run(agent_provider_t *provider, const char *init_err,
                                    const agent_io_t *io, const proto_worker_turn_t *turn);

#endif
