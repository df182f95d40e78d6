/* router/workers/turns.h — sessions and their turns (DESIGN §6, §8, §9):
 * one turn in flight per session, later messages waiting FIFO (bounded),
 * each turn sent to an agent worker through the embedded broker and its
 * frames delivered to every subscriber attached to the session. Messages come
 * from chat sockets (router_turns_submit), and from the inbox: admitted
 * envelopes, webhooks and external events become turns of their session and
 * leave the inbox only when their turn has ended. A `request` envelope's
 * turn ends with a signed `response` to its sender. Tools whose executor is
 * "router" (send_message, send_request, send_response, peers) run here.
 * Sessions and their messages are kept in state.db by a thread of their own
 * (router/workers/sessions.h). spec/WIRE.md §19 is the contract.
 *
 * A chat socket (/ws/chat) uses it like this, all on the loop thread:
 *
 *     sub = router_turns_attach(turns, session_id_or_NULL, name_or_NULL, on_frame, conn);
 *     // on_frame gets {"type":"session_start",…} first, then every frame of
 *     // every turn of that session, and the errors meant for this subscriber
 *     router_turns_submit(turns, sub, content, len, &code);  // SESSION_BUSY, EMPTY_CONTENT
 *     router_turns_steer(turns, sub, content, len, &code);   // NO_ACTIVE_TURN
 *     router_turns_stop(turns, sub);
 *     router_turns_detach(turns, sub);                       // socket closed
 *
 * Threads: every function runs on the loop thread; callbacks run there too
 * and may call any function here except router_turns_destroy. */
#ifndef KITH_ROUTER_TURNS_H
#define KITH_ROUTER_TURNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cbor.h>

#include "router/comms/outbound.h"
#include "router/metrics.h"
#include "router/net/loop.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"
#include "router/workers/broker.h"
#include "router/workers/sessions.h"

typedef struct router_turns router_turns_t;

/* Longest session id: 1..128 of A-Z a-z 0-9 . _ : - */
#define ROUTER_TURNS_SESSION_ID_MAX 128
/* Defaults (DESIGN §6, §10). */
#define ROUTER_TURNS_QUEUE_MAX 16u            /* messages waiting per session */
#define ROUTER_TURNS_LOCK_TIMEOUT_S 300u      /* KITH_SESSION_LOCK_TIMEOUT_SECS */
#define ROUTER_TURNS_SUBSCRIBERS_MAX 4096u    /* attached at once, all sessions */

/* What a subscriber is handed: one /ws/chat server frame (DESIGN §6,
 * WIRE §19.5), ready to send as a text message. */
typedef enum {
    ROUTER_TURN_FRAME_SESSION_START = 1, /* first frame after attach */
    ROUTER_TURN_FRAME_CHUNK,
    ROUTER_TURN_FRAME_THINKING,
    ROUTER_TURN_FRAME_CHUNK_RESET,
    ROUTER_TURN_FRAME_TOOL_CALL,
    ROUTER_TURN_FRAME_TOOL_RESULT,
    ROUTER_TURN_FRAME_OPERATOR_STATUS,
    ROUTER_TURN_FRAME_AGENT_EVENT,
    ROUTER_TURN_FRAME_DONE,              /* final: the turn answered */
    ROUTER_TURN_FRAME_STOPPED,           /* final: the turn stopped, or a stop found none */
    ROUTER_TURN_FRAME_ERROR,             /* final for a turn, or an error for one message */
} router_turn_frame_type_t;

typedef struct {
    router_turn_frame_type_t type;
    const char *json;       /* the frame, a JSON object text; valid during the call */
    size_t json_len;
    const char *session_id; /* the session */
    const char *code;       /* ERROR: "SESSION_BUSY", "AGENT_ERROR", …; else NULL */
    uint64_t submitter;     /* a turn's frame: the subscriber whose message the turn
                             * answers (0: an inbox turn, or no turn's frame) */
} router_turn_frame_t;

typedef void(router_turns_frame_fn)(const router_turn_frame_t *frame, void *ud);

/* /api/events sink: `type` (agent_start, llm_request, tool_call_start,
 * tool_call, agent_end, error) and the event's other members as a JSON
 * object text (WIRE §19.6); json_object NULL: an event of `type` was lost
 * (no memory to make it), which the sink owes its readers word of
 * (DESIGN §7: the event or a stream_gap). Loop thread. */
typedef void(router_turns_event_fn)(const char *type, const char *json_object, void *ud);

/* Signs and sends *kind (taken) to the peer with key `to`, through the
 * node's outbound path, on the loop thread, without blocking; id_out gets the
 * envelope's id; cb runs once, later, with the outcome. Returns 0, or -1
 * with detail[detailcap] saying why nothing was sent (no callback). */
typedef int(router_turns_send_fn)(void *ud, const uint8_t to[32], cbor_item_t **kind,
                                  uint8_t id_out[16], router_send_fn *cb, void *cb_ud,
                                  char *detail, size_t detailcap);

typedef struct {
    router_loop_t *loop;             /* borrowed */
    router_broker_t *broker;         /* borrowed: turns go to service "kith.agent" */
    router_inbox_t *inbox;           /* borrowed, or NULL: no inbox turns */
    const char *db_path;             /* state.db, or NULL: sessions kept in memory */
    const char *comms_session;       /* comms.session: envelopes' and plain events' session */
    uint32_t max_history_messages;   /* agent.max_history_messages */
    uint32_t max_tool_iterations;    /* agent.max_tool_iterations */
    uint32_t turn_timeout_s;         /* agent.turn_timeout_s */
    uint32_t queue_max;              /* waiting messages per session; 0: 16 */
    uint32_t lock_timeout_s;         /* 0: $KITH_SESSION_LOCK_TIMEOUT_SECS, else 300 */
    router_sessions_bounds_t store_bounds; /* what state.db keeps (limits.sessions_max, …); 0s: defaults */
    router_metrics_t *metrics;       /* may be NULL */
    /* Comms for router-run tools and responses; NULL send: they fail. */
    router_turns_send_fn *send;
    void *send_ud;
    /* The trust store in force (peers, names → keys); NULL: none. Called on
     * the loop thread, the result used at once. */
    const router_trust_t *(*trust)(void *ud);
    void *trust_ud;
} router_turns_opts_t;

/* Opens the sessions store (state.db tables sessions and messages) and
 * starts taking inbox entries. Returns NULL with a reason in err[errcap].
 * The caller owns the result. */
router_turns_t *router_turns_new(const router_turns_opts_t *o, char *err, size_t errcap);

/* Ends every turn (subscribers get nothing more), stops the store thread
 * after writing what is queued, frees. Inbox entries of unfinished turns
 * stay in the inbox for the next run. Idempotent; nulls *self_p. */
void router_turns_destroy(router_turns_t **self_p);

/* ------------------------------------------------------------ chat */

typedef uint64_t router_turns_sub_t;

/* Attaches a subscriber to session `session_id` (NULL or "": a new session
 * with a fresh id), `name` (NULL: none; kept with a new session). fn's
 * first call, later on the loop thread, is the session_start frame
 * {"type":"session_start","session_id","resumed","message_count","name"},
 * or an ERROR frame instead: "STORAGE_FULL" (a session state.db does not
 * keep, and it keeps limits.sessions_max), "AGENT_ERROR" (the store failed).
 * Returns the subscriber (> 0), or 0 with errno: EINVAL (a bad session id,
 * no fn), EMFILE (ROUTER_TURNS_SUBSCRIBERS_MAX attached), EAGAIN (the
 * session store's queue is full), ENOMEM. */
router_turns_sub_t router_turns_attach(router_turns_t *t, const char *session_id,
                                       const char *name, router_turns_frame_fn *fn, void *ud);

/* No more frames for sub (its queued messages still run). Unknown: nothing. */
void router_turns_detach(router_turns_t *t, router_turns_sub_t sub);

/* The session sub is attached to (NUL-terminated, borrowed until detach),
 * or NULL. */
const char *router_turns_session_of(const router_turns_t *t, router_turns_sub_t sub);

/* Queues a user message for sub's session. Returns 0 (the turn's frames
 * follow), or -1 with *code "EMPTY_CONTENT", "SESSION_BUSY" (16 already
 * waiting), "STORAGE_FULL" (state.db keeps limits.sessions_bytes_max
 * octets) or "AGENT_ERROR" (unknown sub, no memory). A message that waits
 * longer than the lock timeout gets an ERROR frame SESSION_BUSY, to sub
 * only. */
int router_turns_submit(router_turns_t *t, router_turns_sub_t sub, const char *content,
                        size_t len, const char **code);

/* router_turns_submit, and in *msg (may be NULL) the message's handle for
 * router_turns_withdraw (never 0). */
int router_turns_submit_msg(router_turns_t *t, router_turns_sub_t sub, const char *content,
                            size_t len, uint64_t *msg, const char **code);

/* Takes sub's message `msg` out of its session's queue while its turn has
 * not begun: it never runs, and no frame is sent for it. Returns 0, or -1
 * when it is not waiting (its turn began or ended, or sub is unknown):
 * then only router_turns_stop reaches it, once its turn is in flight. */
int router_turns_withdraw(router_turns_t *t, router_turns_sub_t sub, uint64_t msg);

/* Steers the session's turn in flight (applied at its next tool-loop
 * boundary). Returns 0, or -1 with *code "NO_ACTIVE_TURN" (none, a stop
 * asked, or 16 steers held for a turn no worker took yet),
 * "EMPTY_CONTENT" or "AGENT_ERROR" (no memory for the steer). */
int router_turns_steer(router_turns_t *t, router_turns_sub_t sub, const char *content,
                       size_t len, const char **code);

/* The turn in flight in sub's session: its id (borrowed until the turn
 * ends), and in *submitter (may be NULL) the subscriber whose message it
 * answers (0: an inbox turn). NULL when no turn is in flight. */
const char *router_turns_active(const router_turns_t *t, router_turns_sub_t sub,
                                router_turns_sub_t *submitter);

/* Stops the session's turn in flight: every subscriber then gets its
 * `stopped` frame. With no turn in flight, sub alone gets
 * {"type":"stopped","message":"no active turn"}. */
void router_turns_stop(router_turns_t *t, router_turns_sub_t sub);

/* ------------------------------------------------------------ sessions API */

/* Answers with JSON text (valid during the call) on the loop thread, later:
 * status 200 and the document, or 404 / 503 and {"error","code"}. */
typedef void(router_turns_json_fn)(int status, const char *json, size_t len, void *ud);

/* GET /api/sessions: {"sessions":[{"id","name","created_ms","updated_ms",
 * "message_count"}]}, most recently updated first, at most `limit`
 * (0 or over 1000: 1000). Returns 0 (fn runs later, once), or -1 (the
 * store's queue is full: answer 503). */
int router_turns_sessions_list(router_turns_t *t, unsigned limit, router_turns_json_fn *fn,
                               void *ud);

/* GET /api/sessions/{id}: {"id","name","created_ms","updated_ms",
 * "message_count","messages":[{"role","content","time_ms","turn_id"}]}
 * with the last `limit` messages (0: agent.max_history_messages), oldest
 * first; status 404 for an unknown id. Returns 0, or -1 for a bad id or a
 * full queue. */
int router_turns_session_get(router_turns_t *t, const char *session_id, unsigned limit,
                             router_turns_json_fn *fn, void *ud);

/* DELETE /api/sessions/{id}: the session and its messages go, durably;
 * fn gets 200 {"deleted":true,"id","messages":N}, 404 for an unknown id, 503
 * when the store failed. Returns 0; -1 for a bad id or a full queue; -2
 * (nothing done) while a socket is attached to the session or a turn of
 * it runs or waits. */
int router_turns_session_delete(router_turns_t *t, const char *session_id,
                                router_turns_json_fn *fn, void *ud);

/* Whether a message for session `session_id` may be accepted at ingress
 * that answers before its turn opens the session (webhooks, external
 * events): NULL yes, else why not, in a sentence (*code "STORAGE_FULL").
 * The session counts as new unless it is open here now (a socket, a turn
 * or a message waiting): at limits.sessions_max, a message for a session
 * only state.db knows is refused too. Signed envelopes and plain event
 * lines are not asked: they go to comms.session, which the per-session
 * bounds keep. */
const char *router_turns_room(const router_turns_t *t, const char *session_id);

/* ------------------------------------------------------------ wiring */

/* Where turn events for /api/events go (NULL: nowhere). */
void router_turns_set_event_sink(router_turns_t *t, router_turns_event_fn *fn, void *ud);

/* Where each finished tool call is recorded (router_audit_feed_tool_call);
 * NULL: nowhere. Borrowed; loop thread. */
struct router_audit_feed;
void router_turns_set_audit(router_turns_t *t, struct router_audit_feed *feed);

/* The inbox has new durable entries (the node calls it from its durable
 * wake-up); turns also polls, so this only makes them start sooner. */
void router_turns_kick(router_turns_t *t);

typedef struct {
    uint64_t running;     /* turns in flight */
    uint64_t waiting;     /* messages waiting for their session */
    uint64_t done, stopped, errors; /* turns ended, by status */
    uint64_t sessions;    /* sessions with a subscriber, a turn or a message waiting */
} router_turns_stats_t;

void router_turns_stats(const router_turns_t *t, router_turns_stats_t *out);

/* Test seam: the session store refuses every job while on (as when its
 * queue is full), so turns fail to start. */
void router_turns_store_refuse(router_turns_t *t, bool on);

#endif
