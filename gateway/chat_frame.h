/* gateway/chat_frame.h — the JSON frames of /ws/chat (DESIGN §6, spec/WIRE.md
 * §24): a strict decoder for what clients send (connect, message, steer,
 * stop) with typed refusals, and an encoder for every server frame. No I/O.
 *
 * Decoding: a frame is one JSON object, well-formed UTF-8, no NUL (raw or
 * \u0000), no lone surrogate escape, no repeated member name at any depth,
 * nested at most GATEWAY_CHAT_DEPTH_MAX, with a string "type". Members a
 * frame type does not know are ignored (so newer clients can add some);
 * the ones it knows must have their type. Every length is bounded below.
 *
 * Encoding: every string is escaped for JSON ('"', '\\', control bytes),
 * and octets that are not well-formed UTF-8 become U+FFFD, so a frame is
 * always a valid WebSocket text message. JSON-valued fields (tool
 * arguments and results, event data) are embedded as JSON values when they
 * parse as strict JSON, re-serialised compactly; otherwise as a string. */
#ifndef KITH_GATEWAY_CHAT_FRAME_H
#define KITH_GATEWAY_CHAT_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- limits */

#define GATEWAY_CHAT_FRAME_MAX (26u * 1024 * 1024)    /* octets of one client frame (25 MiB
                                                        * attachments plus the rest, DESIGN §10;
                                                        * more with a larger attachments bound) */
#define GATEWAY_CHAT_CONTENT_MAX (1024u * 1024)       /* message/steer content octets */
#define GATEWAY_CHAT_PAGE_CONTEXT_MAX (64u * 1024)    /* page_context, re-serialised */
#define GATEWAY_CHAT_ATTACHMENTS_MAX 16u              /* entries of attachments */
#define GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX (25u * 1024 * 1024) /* attachments, re-serialised: the
                                                                * default of
                                                                * limits.http_attachment_body_max */
#define GATEWAY_CHAT_DEPTH_MAX 32u                    /* containers nested in one frame */
#define GATEWAY_CHAT_KEYS_MAX 256u                    /* members of one object */
#define GATEWAY_CHAT_TYPE_MAX 32u                     /* octets of "type" */
#define GATEWAY_CHAT_WHY_MAX 128u                     /* a refusal's text, NUL included */
#define GATEWAY_CHAT_JSON_VALUE_MAX (4u * 1024 * 1024) /* a JSON value embedded by the encoder */

/* ---------------------------------------------------------------- decoding */

typedef enum {
    GATEWAY_CHAT_OK = 0,
    GATEWAY_CHAT_INVALID_JSON,          /* not strict JSON, or a known member of the wrong type
                                         * or size: error INVALID_JSON */
    GATEWAY_CHAT_EMPTY_CONTENT,         /* message/steer without content, or only whitespace */
    GATEWAY_CHAT_UNKNOWN_MESSAGE_TYPE,  /* no string "type", or one no frame has */
    GATEWAY_CHAT_NOMEM,                 /* out of memory: error AGENT_ERROR */
} gateway_chat_reason_t;

typedef enum {
    GATEWAY_CHAT_IN_CONNECT = 1, /* {"type":"connect", …}: answered `connected` */
    GATEWAY_CHAT_IN_MESSAGE,     /* {"type":"message","content","page_context"?,"attachments"?} */
    GATEWAY_CHAT_IN_STEER,       /* {"type":"steer","content"} */
    GATEWAY_CHAT_IN_STOP,        /* {"type":"stop"} */
} gateway_chat_in_type_t;

/* A decoded client frame. Strings are owned, NUL-terminated, and freed by
 * gateway_chat_in_clear. */
typedef struct {
    gateway_chat_in_type_t type;
    char *content;             /* MESSAGE, STEER: non-empty, not only whitespace */
    size_t content_len;
    char *page_context;        /* MESSAGE: compact JSON text of the value; NULL when absent or null */
    size_t page_context_len;
    char *attachments;         /* MESSAGE: compact JSON text of the array of objects; NULL when
                                * absent, null or [] */
    size_t attachments_len;
    unsigned attachments_count; /* entries in it */
} gateway_chat_in_t;

/* Decodes one text message data[len] into *out (zeroed first). On a
 * refusal nothing is handed back and why[cap] says what was wrong, for
 * people (at most GATEWAY_CHAT_WHY_MAX is useful). */
gateway_chat_reason_t gateway_chat_frame_decode(const uint8_t *data, size_t len,
                                                gateway_chat_in_t *out, char *why, size_t cap)
    __attribute__((warn_unused_result));

/* gateway_chat_frame_decode with the attachments of a message bounded at
 * attachments_max octets re-serialised (the configured
 * limits.http_attachment_body_max; 0: GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX)
 * instead of the default. Past it: GATEWAY_CHAT_INVALID_JSON, why naming
 * the bound. A bound above the default raises the frame's bound with it
 * (GATEWAY_CHAT_FRAME_MAX is the default's attachments plus 1 MiB). */
gateway_chat_reason_t gateway_chat_frame_decode_limited(const uint8_t *data, size_t len,
                                                        size_t attachments_max,
                                                        gateway_chat_in_t *out, char *why,
                                                        size_t cap)
    __attribute__((warn_unused_result));

void gateway_chat_in_clear(gateway_chat_in_t *in);

/* The WIRE §24 error code of a refusal ("INVALID_JSON", …; "AGENT_ERROR"
 * for NOMEM). */
const char *gateway_chat_reason_code(gateway_chat_reason_t r);

/* ---------------------------------------------------------------- encoding */

typedef enum {
    GATEWAY_CHAT_OUT_SESSION_START = 1, /* session_id, resumed, message_count, name (NULL: "") */
    GATEWAY_CHAT_OUT_CONNECTED,         /* session_id */
    GATEWAY_CHAT_OUT_CHUNK,             /* turn_id, text → "content" */
    GATEWAY_CHAT_OUT_THINKING,          /* turn_id, text → "content" */
    GATEWAY_CHAT_OUT_TOOL_CALL,         /* turn_id, id, name, json → "arguments" */
    GATEWAY_CHAT_OUT_TOOL_RESULT,       /* turn_id, id, json → "result", is_error */
    GATEWAY_CHAT_OUT_OPERATOR_STATUS,   /* turn_id, text → "status" */
    GATEWAY_CHAT_OUT_AGENT_EVENT,       /* turn_id?, session_id?, name, json → "data" */
    GATEWAY_CHAT_OUT_CHUNK_RESET,       /* turn_id */
    GATEWAY_CHAT_OUT_DONE,              /* turn_id, text → "full_response" */
    GATEWAY_CHAT_OUT_STOPPED,           /* turn_id?, text → "message" */
    GATEWAY_CHAT_OUT_ERROR,             /* code, text → "message", turn_id? */
} gateway_chat_out_type_t;

/* A server frame to encode; borrowed pointers, set what the type uses
 * (listed above; "?" members are left out when NULL). `text` and `json`
 * take explicit lengths and may hold any octets. */
typedef struct {
    gateway_chat_out_type_t type;
    const char *session_id;
    const char *turn_id;
    const char *name;
    const char *id;
    const char *code;
    const char *text;
    size_t text_len;
    const char *json;
    size_t json_len;
    uint64_t message_count;
    bool resumed;
    bool is_error;
} gateway_chat_out_t;

/* Encodes *f as one JSON object into *json (NUL-terminated, caller frees
 * with free()) and its length into *len. Returns 0, or -1 with errno
 * EINVAL (unknown type) or ENOMEM. */
int gateway_chat_frame_encode(const gateway_chat_out_t *f, char **json, size_t *len)
    __attribute__((warn_unused_result));

/* The name of a server frame type ("chunk", …), NULL when unknown. */
const char *gateway_chat_out_type_name(gateway_chat_out_type_t t);

#endif
