/* proto/worker_msg.h — the turn bodies of spec/worker.cddl as typed C
 * structs, with their CBOR encoders and hardened decoders: what the router's
 * broker side sends an agent worker (turn-request, turn-control,
 * router-tool-result) and what the worker answers (turn-partial, turn-final).
 * No I/O; libcbor only. The audit bodies live in proto/audit_msg.h.
 *
 * Encoding: definite lengths, shortest heads, keys in the order of the CDDL;
 * optional fields are omitted, never null. Every text field is checked to be
 * UTF-8 before it is written (an encoder refuses rather than emit a body the
 * other side must refuse).
 *
 * Decoding accepts exactly one CBOR item of at most PROTO_WORKER_BODY_MAX
 * bytes, definite lengths only, nesting at most PROTO_WORKER_DEPTH_MAX, at
 * most PROTO_WORKER_ITEMS_MAX data items; the top level is a map whose
 * `type` names a variant of the direction being decoded (anything else is
 * PROTO_WORKER_UNKNOWN_TYPE, so a worker can ignore requests it does not
 * know, as worker.cddl allows). Known keys must have exactly their CDDL type
 * and appear once; every count and length is checked against the limits
 * below before anything is allocated for it. Keys the CDDL does not name are
 * skipped (a newer router or worker may add fields), which spec/WIRE.md §20.4
 * states. JSON-valued fields (`json = tstr`) are checked as UTF-8 text only:
 * proto/ has no JSON parser, so their users parse them.
 *
 * Strings: every decoded string is a heap copy with a NUL after its `len`
 * bytes (a CBOR text string may itself hold U+0000, so `len` is the truth).
 * An absent optional string has p == NULL. Decoded structs own their strings
 * and arrays: release them with the matching *_clear function, which is safe
 * on a zeroed or partly filled struct and leaves it zeroed. Structs built by a
 * caller for an encoder are only read. */
#ifndef KITH_PROTO_WORKER_MSG_H
#define KITH_PROTO_WORKER_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/uuid.h"

/* ------------------------------------------------------------------ limits */

/* One body frame (worker.cddl: at most 1 MiB). */
#define PROTO_WORKER_BODY_MAX (1024u * 1024u)
/* Nesting (worker.cddl: at most 32; the body map is level 1). */
#define PROTO_WORKER_DEPTH_MAX 32
/* CBOR data items in one body (keys count): bounds libcbor's heap per decode. */
#define PROTO_WORKER_ITEMS_MAX 131072
/* turn-request.session_id (worker.cddl: .size (1..128)). */
#define PROTO_WORKER_SESSION_ID_MAX 128
/* Messages in turn-request.history. */
#define PROTO_WORKER_HISTORY_MAX 65536
/* Entries in turn-request.tools. */
#define PROTO_WORKER_TOOLS_MAX 256
/* Entries in one chat-message.tool_calls. */
#define PROTO_WORKER_TOOL_CALLS_MAX 256
/* Names and ids: tool names, tool call ids, event names, provider, model. */
#define PROTO_WORKER_NAME_MAX 256
/* Any other text (content, JSON text, responses): bounded by the body. */
#define PROTO_WORKER_TEXT_MAX PROTO_WORKER_BODY_MAX
/* The sending peer's public key in origin.from. */
#define PROTO_WORKER_PEER_KEY_LEN 32

/* ------------------------------------------------------------------ errors */

/* Why a body was refused (by a decoder) or could not be made (by an encoder). */
typedef enum {
    PROTO_WORKER_OK = 0,
    PROTO_WORKER_TOO_LARGE,     /* body over PROTO_WORKER_BODY_MAX */
    PROTO_WORKER_BAD_CBOR,      /* not one well-formed definite CBOR item in the limits */
    PROTO_WORKER_NOT_MAP,       /* the body is not a map */
    PROTO_WORKER_UNKNOWN_TYPE,  /* `type` missing, not text, or no variant of this direction */
    PROTO_WORKER_MISSING_FIELD, /* a required key is absent */
    PROTO_WORKER_WRONG_TYPE,    /* a key's value has the wrong CBOR type (or a key is not text) */
    PROTO_WORKER_BAD_VALUE,     /* right type, value outside the CDDL (enum, byte length) */
    PROTO_WORKER_TOO_LONG,      /* a string or array beyond its limit */
    PROTO_WORKER_DUPLICATE_KEY, /* a known key twice in one map */
    PROTO_WORKER_BAD_UTF8,      /* text that is not UTF-8 */
    PROTO_WORKER_NO_MEMORY,     /* allocation failed */
} proto_worker_reason_t;

/* A refusal: the reason and the key it concerns ("history[3].role"-style
 * paths are not built; `field` is the CDDL key name, a static string, or ""). */
typedef struct {
    proto_worker_reason_t reason;
    const char *field;
} proto_worker_error_t;

/* A short stable name for `r` ("unknown_type", "too_long", …). */
const char *proto_worker_reason_str(proto_worker_reason_t r);

/* ------------------------------------------------------------------ shared */

/* A string of `len` bytes; p[len] is NUL in decoded structs. p NULL: absent. */
typedef struct {
    const char *p;
    size_t len;
} proto_worker_str_t;

/* tool-call */
typedef struct {
    proto_worker_str_t id;        /* the call's id (provider-made) */
    proto_worker_str_t name;      /* the tool's name */
    proto_worker_str_t arguments; /* a JSON object, as JSON text */
} proto_worker_tool_call_t;

typedef enum {
    PROTO_WORKER_ROLE_SYSTEM = 1,
    PROTO_WORKER_ROLE_USER,
    PROTO_WORKER_ROLE_ASSISTANT,
    PROTO_WORKER_ROLE_TOOL,
} proto_worker_role_t;

/* chat-message */
typedef struct {
    proto_worker_role_t role;
    proto_worker_str_t content;
    proto_worker_str_t tool_call_id;       /* role "tool": the call answered; p NULL: absent */
    proto_worker_tool_call_t *tool_calls;  /* role "assistant": calls it made */
    size_t n_tool_calls;
    bool has_tool_calls;                   /* the key is present (possibly with []) */
} proto_worker_chat_msg_t;

typedef enum {
    PROTO_WORKER_EXEC_WORKER = 1, /* the worker runs it */
    PROTO_WORKER_EXEC_ROUTER,     /* the router runs it; the worker awaits a tool_result */
} proto_worker_executor_t;

/* tool-spec */
typedef struct {
    proto_worker_str_t name;
    proto_worker_str_t description;
    proto_worker_str_t parameters; /* a JSON Schema object, as JSON text */
    proto_worker_executor_t executor;
} proto_worker_tool_spec_t;

typedef enum {
    PROTO_WORKER_CHANNEL_WS = 1,
    PROTO_WORKER_CHANNEL_WEBHOOK,
    PROTO_WORKER_CHANNEL_EXTERNAL_EVENT,
    PROTO_WORKER_CHANNEL_COMMS,
} proto_worker_channel_t;

typedef enum {
    PROTO_WORKER_ENVTYPE_NONE = 0, /* absent */
    PROTO_WORKER_ENVTYPE_MESSAGE,
    PROTO_WORKER_ENVTYPE_REQUEST,
    PROTO_WORKER_ENVTYPE_LIFECYCLE,
    PROTO_WORKER_ENVTYPE_INCARNATION_FENCED_MESSAGE,
} proto_worker_envtype_t;

/* origin */
typedef struct {
    proto_worker_channel_t channel;
    bool has_envelope_id;
    uint8_t envelope_id[PROTO_UUID_LEN];
    bool has_from;
    uint8_t from[PROTO_WORKER_PEER_KEY_LEN];
    proto_worker_envtype_t envelope_type;
} proto_worker_origin_t;

/* ------------------------------------------------------- router -> worker */

/* turn-request */
typedef struct {
    uint8_t turn_id[PROTO_UUID_LEN];
    proto_worker_str_t session_id;        /* 1..PROTO_WORKER_SESSION_ID_MAX bytes */
    proto_worker_chat_msg_t message;      /* what starts the turn */
    proto_worker_chat_msg_t *history;     /* oldest first */
    size_t n_history;
    proto_worker_tool_spec_t *tools;
    size_t n_tools;
    uint64_t max_tool_iterations;         /* limits.max_tool_iterations */
    uint64_t turn_timeout_s;              /* limits.turn_timeout_s */
    proto_worker_origin_t origin;
} proto_worker_turn_t;

typedef enum {
    PROTO_WORKER_REQ_TURN = 1,    /* "turn" */
    PROTO_WORKER_REQ_STEER,       /* "steer" */
    PROTO_WORKER_REQ_STOP,        /* "stop" */
    PROTO_WORKER_REQ_TOOL_RESULT, /* "tool_result" */
} proto_worker_req_type_t;

/* turn-control (steer, stop) */
typedef struct {
    uint8_t turn_id[PROTO_UUID_LEN];
    proto_worker_str_t content;   /* steer only; p NULL: absent */
} proto_worker_control_t;

/* router-tool-result */
typedef struct {
    uint8_t turn_id[PROTO_UUID_LEN];
    proto_worker_str_t id;        /* the tool call's id */
    proto_worker_str_t result;    /* JSON text */
    bool is_error;
} proto_worker_tool_result_t;

/* Any turn body the router sends; `type` says which member is filled. */
typedef struct {
    proto_worker_req_type_t type;
    proto_worker_turn_t turn;               /* REQ_TURN */
    proto_worker_control_t control;         /* REQ_STEER, REQ_STOP */
    proto_worker_tool_result_t tool_result; /* REQ_TOOL_RESULT */
} proto_worker_request_t;

/* ------------------------------------------------------- worker -> router */

typedef enum {
    PROTO_WORKER_EV_CHUNK = 1,        /* text */
    PROTO_WORKER_EV_THINKING,         /* text */
    PROTO_WORKER_EV_CHUNK_RESET,      /* nothing */
    PROTO_WORKER_EV_TOOL_CALL,        /* call */
    PROTO_WORKER_EV_TOOL_RESULT,      /* id, result, is_error */
    PROTO_WORKER_EV_OPERATOR_STATUS,  /* text (the CDDL's `status`) */
    PROTO_WORKER_EV_AGENT_EVENT,      /* name, data */
    PROTO_WORKER_EV_LLM_REQUEST,      /* provider, model?, iteration */
} proto_worker_event_type_t;

/* turn-event: the members its type names are filled, the rest are zero. */
typedef struct {
    proto_worker_event_type_t type;
    proto_worker_str_t text;        /* chunk, thinking, operator_status */
    proto_worker_tool_call_t call;  /* tool_call */
    proto_worker_str_t id;          /* tool_result */
    proto_worker_str_t result;      /* tool_result: JSON text */
    bool is_error;                  /* tool_result */
    proto_worker_str_t name;        /* agent_event */
    proto_worker_str_t data;        /* agent_event: JSON text */
    proto_worker_str_t provider;    /* llm_request */
    proto_worker_str_t model;       /* llm_request; p NULL: absent */
    uint64_t iteration;             /* llm_request */
} proto_worker_event_t;

/* turn-partial */
typedef struct {
    uint8_t turn_id[PROTO_UUID_LEN];
    uint64_t seq;                   /* from 0 within a turn */
    proto_worker_event_t event;
} proto_worker_partial_t;

typedef enum {
    PROTO_WORKER_FINAL_DONE = 1,
    PROTO_WORKER_FINAL_STOPPED,
    PROTO_WORKER_FINAL_ERROR,
} proto_worker_final_type_t;

/* turn-error.code (DESIGN §6) */
typedef enum {
    PROTO_WORKER_CODE_NONE = 0,
    PROTO_WORKER_CODE_AGENT_INIT_FAILED,
    PROTO_WORKER_CODE_PROVIDER_ERROR,
    PROTO_WORKER_CODE_AGENT_ERROR,
} proto_worker_code_t;

/* turn-final: done, stopped or error. */
typedef struct {
    proto_worker_final_type_t type;
    uint8_t turn_id[PROTO_UUID_LEN];
    proto_worker_str_t full_response; /* done */
    uint64_t tool_iterations;         /* done */
    bool has_tokens_used;             /* done */
    uint64_t tokens_used;
    bool has_cost_usd;                /* done */
    double cost_usd;
    proto_worker_str_t message;       /* error (required), stopped (optional: p NULL) */
    proto_worker_code_t code;         /* error */
} proto_worker_final_t;

typedef enum {
    PROTO_WORKER_REPLY_PARTIAL = 1,
    PROTO_WORKER_REPLY_FINAL,
} proto_worker_reply_type_t;

/* Any turn body a worker sends. */
typedef struct {
    proto_worker_reply_type_t type;
    proto_worker_partial_t partial;   /* REPLY_PARTIAL */
    proto_worker_final_t final;       /* REPLY_FINAL */
} proto_worker_reply_t;

/* ------------------------------------------------------------------ names */

const char *proto_worker_role_str(proto_worker_role_t r);
const char *proto_worker_code_str(proto_worker_code_t c);
const char *proto_worker_event_type_str(proto_worker_event_type_t t);

/* ------------------------------------------------------------------ codecs */

/* Encoders: *out becomes a new heap buffer (caller frees with free()) of
 * *len bytes, at most PROTO_WORKER_BODY_MAX. Return 0, or -1 with *err set
 * (BAD_VALUE for an enum outside its range or a missing required string,
 * BAD_UTF8, TOO_LONG, TOO_LARGE, NO_MEMORY) and *out NULL. */
int proto_worker_request_encode(const proto_worker_request_t *req, uint8_t **out, size_t *len,
                                proto_worker_error_t *err) __attribute__((warn_unused_result));
int proto_worker_reply_encode(const proto_worker_reply_t *rep, uint8_t **out, size_t *len,
                              proto_worker_error_t *err) __attribute__((warn_unused_result));

/* Shorthands for the single bodies. */
int proto_worker_partial_encode(const proto_worker_partial_t *p, uint8_t **out, size_t *len,
                                proto_worker_error_t *err) __attribute__((warn_unused_result));
int proto_worker_final_encode(const proto_worker_final_t *f, uint8_t **out, size_t *len,
                              proto_worker_error_t *err) __attribute__((warn_unused_result));

/* Decoders: fill a zeroed *out from p[len]. Return 0; or -1 with *err set
 * and *out zeroed (nothing to release). On success release *out with the
 * matching clear function. */
int proto_worker_request_decode(const uint8_t *p, size_t len, proto_worker_request_t *out,
                                proto_worker_error_t *err) __attribute__((warn_unused_result));
int proto_worker_reply_decode(const uint8_t *p, size_t len, proto_worker_reply_t *out,
                              proto_worker_error_t *err) __attribute__((warn_unused_result));

void proto_worker_request_clear(proto_worker_request_t *req);
void proto_worker_reply_clear(proto_worker_reply_t *rep);
/* For structs a caller fills by hand with heap strings it owns (the agent's
 * conversation): frees every string and array and zeroes *m. */
void proto_worker_chat_msg_clear(proto_worker_chat_msg_t *m);
void proto_worker_tool_call_clear(proto_worker_tool_call_t *c);

#endif
