/* gateway/openclaw_frame.h — the JSON frames of the OpenClaw-compatible
 * endpoint (DESIGN §5 `GET /` with Upgrade, spec/WIRE.md §25): a strict
 * decoder for what clients send (a `req` frame, the `connect` params, the
 * params of `agent`, `chat.send` and `chat.abort`) with typed refusals, and
 * the frame wrappers the server sends. No I/O.
 *
 * Decoding: a frame is one JSON object, well-formed UTF-8, no NUL (raw or
 * \u0000), no lone surrogate escape, nested at most
 * GATEWAY_OPENCLAW_DEPTH_MAX, no repeated member name in any object.
 * Members a shape does not know are ignored (newer clients add some); the
 * ones it knows must have their JSON type and fit their bound. */
#ifndef KITH_GATEWAY_OPENCLAW_FRAME_H
#define KITH_GATEWAY_OPENCLAW_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <yajl/yajl_tree.h>

/* ---------------------------------------------------------------- limits */

#define GATEWAY_OPENCLAW_PREAUTH_MAX (64u * 1024)   /* a frame before hello-ok */
#define GATEWAY_OPENCLAW_DEPTH_MAX 32u              /* containers nested in one frame */
#define GATEWAY_OPENCLAW_KEYS_MAX 256u              /* members of one object */
#define GATEWAY_OPENCLAW_ID_MAX 128u                /* octets of a request id */
#define GATEWAY_OPENCLAW_METHOD_MAX 64u             /* octets of a method name */
#define GATEWAY_OPENCLAW_STR_MAX 128u               /* client metadata, role, nonce, … */
#define GATEWAY_OPENCLAW_SCOPES_MAX 16u             /* entries of connect.scopes */
#define GATEWAY_OPENCLAW_SCOPE_MAX 64u              /* octets of one scope */
#define GATEWAY_OPENCLAW_TOKEN_MAX 512u             /* octets of an auth secret */
#define GATEWAY_OPENCLAW_KEY_B64_MAX 256u           /* device.publicKey / signature text */
#define GATEWAY_OPENCLAW_RUN_KEY_MAX 128u           /* sessionKey, idempotencyKey, runId */
#define GATEWAY_OPENCLAW_MESSAGE_MAX (1024u * 1024) /* octets of agent/chat message text */
#define GATEWAY_OPENCLAW_WHY_MAX 160u               /* a refusal's text, NUL included */

/* ---------------------------------------------------------------- requests */

/* A decoded `{type:"req", id, method, params?}`. `tree` is the whole parsed
 * frame (owned; freed by gateway_openclaw_req_clear); `params` points into
 * it (NULL when absent). */
typedef struct {
    char id[GATEWAY_OPENCLAW_ID_MAX + 1];
    char method[GATEWAY_OPENCLAW_METHOD_MAX + 1];
    yajl_val tree;
    yajl_val params;
} gateway_openclaw_req_t;

/* Decodes one text message data[len] as a request frame into *out (zeroed
 * first). Returns 0; or -1 with why[cap] saying what was wrong, for
 * people — out->id is then set when the frame had a usable id (so the
 * refusal can be a `res` to it) and empty otherwise. Nothing to clear
 * after -1. */
int gateway_openclaw_req_decode(const uint8_t *data, size_t len, gateway_openclaw_req_t *out,
                                char *why, size_t cap) __attribute__((warn_unused_result));

void gateway_openclaw_req_clear(gateway_openclaw_req_t *req);

/* ---------------------------------------------------------------- connect */

/* The `connect` params kith reads (WIRE §25.3). Strings are NUL-terminated
 * copies; an absent optional string is "". */
typedef struct {
    int64_t min_protocol, max_protocol;
    char client_id[GATEWAY_OPENCLAW_STR_MAX + 1];
    char client_version[GATEWAY_OPENCLAW_STR_MAX + 1];
    char client_platform[GATEWAY_OPENCLAW_STR_MAX + 1];
    char client_device_family[GATEWAY_OPENCLAW_STR_MAX + 1];
    char client_mode[GATEWAY_OPENCLAW_STR_MAX + 1];
    char client_instance_id[GATEWAY_OPENCLAW_STR_MAX + 1];
    char role[GATEWAY_OPENCLAW_STR_MAX + 1];               /* "operator" when absent */
    char scopes[GATEWAY_OPENCLAW_SCOPES_MAX][GATEWAY_OPENCLAW_SCOPE_MAX + 1];
    unsigned nscopes;
    bool has_scopes;                                       /* "scopes" was given */
    char token[GATEWAY_OPENCLAW_TOKEN_MAX + 1];            /* auth.token */
    char device_token[GATEWAY_OPENCLAW_TOKEN_MAX + 1];     /* auth.deviceToken */
    char bootstrap_token[GATEWAY_OPENCLAW_TOKEN_MAX + 1];  /* auth.bootstrapToken */
    bool has_device;
    char device_id[GATEWAY_OPENCLAW_STR_MAX + 1];
    char device_public_key[GATEWAY_OPENCLAW_KEY_B64_MAX + 1];
    char device_signature[GATEWAY_OPENCLAW_KEY_B64_MAX + 1];
    char device_nonce[GATEWAY_OPENCLAW_STR_MAX + 1];
    int64_t device_signed_at;
} gateway_openclaw_connect_t;

/* Decodes a connect request's params into *out (zeroed first). Returns 0,
 * or -1 with why[cap]. */
int gateway_openclaw_connect_decode(yajl_val params, gateway_openclaw_connect_t *out, char *why,
                                    size_t cap) __attribute__((warn_unused_result));

/* ---------------------------------------------------------------- runs */

/* The params of `agent` {message, idempotencyKey, sessionKey?} and
 * `chat.send` {sessionKey, message, idempotencyKey}; `message` points into
 * the request's tree (valid until it is cleared). */
typedef struct {
    const char *message;
    size_t message_len;
    char session_key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1];   /* "" when absent (agent) */
    char idempotency_key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1];
} gateway_openclaw_run_params_t;

/* `agent` params: message non-empty; idempotencyKey required; sessionKey
 * optional. Returns 0 or -1 with why[cap]. */
int gateway_openclaw_agent_decode(yajl_val params, gateway_openclaw_run_params_t *out, char *why,
                                  size_t cap) __attribute__((warn_unused_result));

/* `chat.send` params: sessionKey, message (a string, may be empty: the
 * turns refuse it), idempotencyKey. Returns 0 or -1 with why[cap]. */
int gateway_openclaw_chat_send_decode(yajl_val params, gateway_openclaw_run_params_t *out,
                                      char *why, size_t cap) __attribute__((warn_unused_result));

/* `chat.abort` params {sessionKey, runId?}: run_id "" when absent. */
int gateway_openclaw_chat_abort_decode(yajl_val params,
                                       char session_key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1],
                                       char run_id[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1], char *why,
                                       size_t cap) __attribute__((warn_unused_result));

/* True when s (NUL-terminated) is a key kith takes as a sessionKey or
 * idempotencyKey: 1..GATEWAY_OPENCLAW_RUN_KEY_MAX of A-Z a-z 0-9 . _ : - */
bool gateway_openclaw_key_ok(const char *s);

/* ---------------------------------------------------------------- frames out */

/* Each returns a new NUL-terminated JSON text (caller frees) and its length
 * in *len, or NULL (out of memory). JSON-valued arguments must be JSON
 * texts kith made; they are spliced in as they are. */

/* {"type":"event","event":E,"payload":P} with "seq":S when seq > 0. */
char *gateway_openclaw_event_encode(const char *event, const char *payload_json, uint64_t seq,
                                    size_t *len);

/* {"type":"res","id":I,"ok":true,"payload":P} */
char *gateway_openclaw_res_ok_encode(const char *id, const char *payload_json, size_t *len);

/* {"type":"res","id":I,"ok":false,"error":{"code":C,"message":M,
 * "details":D?,"retryable":R?}} plus "payload":P when payload_json. */
char *gateway_openclaw_res_error_encode(const char *id, const char *code, const char *message,
                                        const char *details_json, bool retryable,
                                        const char *payload_json, size_t *len);

#endif
