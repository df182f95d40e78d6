/* gateway/node_frame.h — the frames a node sends on /ws/nodes (spec/WIRE.md
 * §27): `register` and `result`, decoded strictly (gateway_json_tree_parse)
 * with every length bounded. No I/O. */
#ifndef KITH_GATEWAY_NODE_FRAME_H
#define KITH_GATEWAY_NODE_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GATEWAY_NODE_NAME_MAX 64u          /* octets of a node's name */
#define GATEWAY_NODE_COMMANDS_MAX 64u      /* commands one node offers */
#define GATEWAY_NODE_COMMAND_MAX 64u       /* octets of a command: A-Z a-z 0-9 . _ : - */
#define GATEWAY_NODE_META_MAX (16u * 1024) /* octets of `meta`, re-serialised */
#define GATEWAY_NODE_CALL_ID_MAX 64u       /* octets of a call id */
#define GATEWAY_NODE_ERROR_MAX 1024u       /* octets of a failed call's error text */
#define GATEWAY_NODE_DEPTH_MAX 32u         /* containers nested in one frame */
#define GATEWAY_NODE_KEYS_MAX 256u         /* members of one object */
#define GATEWAY_NODE_WHY_MAX 160u          /* a refusal's text, NUL included */

typedef enum {
    GATEWAY_NODE_FRAME_REGISTER = 1, /* {type, name, commands, meta?} */
    GATEWAY_NODE_FRAME_RESULT,       /* {type, call_id, ok, result? | error} */
} gateway_node_frame_type_t;

typedef enum {
    GATEWAY_NODE_OK = 0,
    GATEWAY_NODE_INVALID_JSON,   /* not strict JSON, or not an object */
    GATEWAY_NODE_UNKNOWN_TYPE,   /* no "type", or one not above */
    GATEWAY_NODE_INVALID_FRAME,  /* a member missing, of the wrong type or out of bounds */
    GATEWAY_NODE_NOMEM,
} gateway_node_reason_t;

/* A decoded frame; heap members owned (gateway_node_frame_clear). */
typedef struct {
    gateway_node_frame_type_t type;
    /* register */
    char name[GATEWAY_NODE_NAME_MAX + 1];
    char commands[GATEWAY_NODE_COMMANDS_MAX][GATEWAY_NODE_COMMAND_MAX + 1];
    size_t ncommands;
    char *meta;                 /* compact JSON object text; "{}" when absent */
    /* result */
    char call_id[GATEWAY_NODE_CALL_ID_MAX + 1];
    bool ok;
    char *result;               /* ok: compact JSON text of `result` ("null" when absent) */
    char error[GATEWAY_NODE_ERROR_MAX + 1]; /* !ok: the node's words */
} gateway_node_frame_t;

/* Decodes one text message data[len] into *out (zeroed first). On a
 * refusal why[cap] says what was wrong, for people; nothing to clear. */
gateway_node_reason_t gateway_node_frame_decode(const uint8_t *data, size_t len,
                                                gateway_node_frame_t *out, char *why, size_t cap)
    __attribute__((warn_unused_result));

void gateway_node_frame_clear(gateway_node_frame_t *f);

/* The error code of a refusal on the socket (WIRE §27): "INVALID_JSON",
 * "UNKNOWN_MESSAGE_TYPE", "INVALID_FRAME", "INTERNAL". */
const char *gateway_node_reason_code(gateway_node_reason_t r);

/* True for a command name or call id: 1..max of A-Z a-z 0-9 . _ : - */
bool gateway_node_token_ok(const char *s, size_t len, size_t max);

#endif
