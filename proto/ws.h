/* proto/ws.h — RFC 6455 WebSocket framing: the incremental, zero-copy frame
 * parser (its grammar is proto/ws.rl), the frame encoder, masking and Close
 * frames. The opening handshake lives in proto/ws_handshake.h.
 *
 * kith negotiates no extension, so RSV1-3 are always 0. The parser reads one
 * direction of a connection: PROTO_WS_MODE_SERVER reads what clients send
 * (every frame masked), PROTO_WS_MODE_CLIENT reads what servers send (no frame
 * masked; used by tests and benchmarks). */
#ifndef KITH_PROTO_WS_H
#define KITH_PROTO_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ------------------------------------------------------------------ limits */

/* Largest control-frame payload (RFC 6455 §5.5). */
#define PROTO_WS_CONTROL_MAX 125
/* Largest Close reason: a control payload less the 2-byte status code. */
#define PROTO_WS_CLOSE_REASON_MAX (PROTO_WS_CONTROL_MAX - 2)
/* Largest frame header: 2 bytes, 8 of extended length, 4 of masking key. */
#define PROTO_WS_HEADER_MAX 14
/* Size of a masking key. */
#define PROTO_WS_MASK_LEN 4
/* Default message size limit, and the one for sockets not yet authenticated
 * (DESIGN §10); set with proto_ws_parser_set_limit(). */
#define PROTO_WS_MESSAGE_MAX_DEFAULT ((uint64_t) 1 << 20)
#define PROTO_WS_MESSAGE_MAX_PREAUTH ((uint64_t) 64 << 10)

/* ------------------------------------------------------------------ codes */

typedef enum {
    PROTO_WS_OP_CONTINUATION = 0x0,
    PROTO_WS_OP_TEXT = 0x1,
    PROTO_WS_OP_BINARY = 0x2,
    PROTO_WS_OP_CLOSE = 0x8,
    PROTO_WS_OP_PING = 0x9,
    PROTO_WS_OP_PONG = 0xA,
} proto_ws_opcode_t;

/* Close status codes (RFC 6455 §7.4.1) that kith sends or reports. */
#define PROTO_WS_CLOSE_NORMAL 1000
#define PROTO_WS_CLOSE_GOING_AWAY 1001
#define PROTO_WS_CLOSE_PROTOCOL_ERROR 1002
#define PROTO_WS_CLOSE_UNSUPPORTED_DATA 1003
#define PROTO_WS_CLOSE_NO_STATUS 1005   /* never on the wire: a Close frame without a body */
#define PROTO_WS_CLOSE_BAD_DATA 1007
#define PROTO_WS_CLOSE_POLICY 1008
#define PROTO_WS_CLOSE_TOO_BIG 1009
#define PROTO_WS_CLOSE_INTERNAL_ERROR 1011

typedef enum {
    PROTO_WS_MODE_SERVER,   /* reads client frames: each must be masked */
    PROTO_WS_MODE_CLIENT,   /* reads server frames: none may be masked */
} proto_ws_mode_t;

/* Why the parser refused its input. Each reason maps to the close code to
 * send (proto_ws_reason_close_code) and a short text fit for the Close
 * reason (proto_ws_reason_str). */
typedef enum {
    PROTO_WS_OK = 0,
    PROTO_WS_ERR_RSV_SET,                 /* 1002: RSV1-3 not 0, no extension was negotiated */
    PROTO_WS_ERR_OPCODE_RESERVED,         /* 1002: opcode 0x3-0x7 or 0xB-0xF */
    PROTO_WS_ERR_CONTROL_FRAGMENTED,      /* 1002: control frame with FIN = 0 */
    PROTO_WS_ERR_CONTROL_TOO_LONG,        /* 1002: control payload over 125 bytes */
    PROTO_WS_ERR_UNMASKED,                /* 1002: server mode, a client frame is not masked */
    PROTO_WS_ERR_MASKED,                  /* 1002: client mode, a server frame is masked */
    PROTO_WS_ERR_LENGTH_NOT_MINIMAL,      /* 1002: extended length that fits a shorter form */
    PROTO_WS_ERR_LENGTH_MSB,              /* 1002: 64-bit length with its top bit set */
    PROTO_WS_ERR_CONTINUATION_UNEXPECTED, /* 1002: continuation frame outside a fragmented message */
    PROTO_WS_ERR_MESSAGE_UNFINISHED,      /* 1002: text/binary frame inside a fragmented message */
    PROTO_WS_ERR_AFTER_CLOSE,             /* 1002: bytes after the Close frame */
    PROTO_WS_ERR_CLOSE_PAYLOAD_SHORT,     /* 1002: Close payload of exactly 1 byte */
    PROTO_WS_ERR_CLOSE_CODE,              /* 1002: Close status code not allowed on the wire */
    PROTO_WS_ERR_CLOSE_REASON_UTF8,       /* 1007: Close reason not well-formed UTF-8 */
    PROTO_WS_ERR_TEXT_UTF8,               /* 1007: text message not well-formed UTF-8 */
    PROTO_WS_ERR_TOO_BIG,                 /* 1009: message larger than the parser's limit */
} proto_ws_reason_t;

/* Static text naming `r` (at most PROTO_WS_CLOSE_REASON_MAX bytes, ASCII). */
const char *proto_ws_reason_str(proto_ws_reason_t r);

/* Close code to send for `r`: 1002, 1007 or 1009; 1000 for PROTO_WS_OK. */
uint16_t proto_ws_reason_close_code(proto_ws_reason_t r);

/* ------------------------------------------------------------------ parser */

typedef struct proto_ws_parser proto_ws_parser_t;

/* One thing the parser found. Data frames are handed over in slices as their
 * bytes arrive; a control frame is handed over whole. Text is UTF-8 checked
 * as it arrives (a slice may end inside a code point), so a bad byte fails
 * the parse before it is handed over.
 *
 * `data` points into the caller's buffer, unmasked in place. The one
 * exception: a control frame whose payload arrived across several calls is
 * gathered in the parser, and `data` then points there, valid until the next
 * proto_ws_parse() call. */
typedef struct {
    proto_ws_opcode_t opcode;   /* TEXT or BINARY: a slice of such a message (continuation frames carry the message's opcode); CLOSE, PING or PONG: a whole control frame */
    uint8_t *data;              /* the payload slice; for CLOSE, the reason after the status code */
    size_t len;                 /* bytes at data */
    uint64_t frame_len;         /* payload length of the frame this slice belongs to */
    bool fin;                   /* the frame's FIN bit */
    bool frame_begin;           /* first slice of the frame (a zero-length frame is one empty slice) */
    bool frame_end;             /* last slice of the frame */
    bool message_begin;         /* first slice of a message */
    bool message_end;           /* last slice of a message; a text message is then complete, well-formed UTF-8 */
    uint16_t close_code;        /* CLOSE: the status code, PROTO_WS_CLOSE_NO_STATUS when the frame had no body */
} proto_ws_event_t;

/* A parser for one direction of one connection, limit PROTO_WS_MESSAGE_MAX_DEFAULT.
 * Returns NULL when out of memory. The caller owns it. */
proto_ws_parser_t *proto_ws_parser_new(proto_ws_mode_t mode);

/* Frees *self_p and sets it to NULL; does nothing when it is already NULL. */
void proto_ws_parser_destroy(proto_ws_parser_t **self_p);

/* Sets the largest message accepted, in payload bytes summed over its frames.
 * It is checked as soon as a data frame's length is read, before its masking
 * key and payload (PROTO_WS_ERR_TOO_BIG); raise it once a socket
 * authenticates. Takes effect from the next data frame. */
void proto_ws_parser_set_limit(proto_ws_parser_t *self, uint64_t max_message);

/* Why the parser failed; PROTO_WS_OK while it has not. */
proto_ws_reason_t proto_ws_parser_reason(const proto_ws_parser_t *self);

/* Reads `buf[0..len)`, the next bytes of the stream, and writes into it:
 * masked payloads are unmasked in place.
 *
 * Returns the number of bytes consumed (at least 1) when it filled *ev: the
 * event's slice lies in those bytes; call again with the rest. Returns -2
 * when it consumed all `len` bytes without completing an event (they are
 * held in the parser: a header or part of one, part of a control frame);
 * call again with the bytes that follow. Returns -1 when the stream breaks RFC
 * 6455: proto_ws_parser_reason() says why, and every later call fails too.
 *
 * Feeding the stream whole, byte by byte or split anywhere yields the same
 * frames. After a CLOSE event any further byte is an error. */
__attribute__((warn_unused_result))
ssize_t proto_ws_parse(proto_ws_parser_t *self, uint8_t *buf, size_t len, proto_ws_event_t *ev);

/* ------------------------------------------------------------------ encoder */

/* XORs `len` bytes at `data` with masking key `key`; `offset` is the position
 * of data[0] within the frame's payload, so a payload may be masked (or
 * unmasked) in pieces. */
void proto_ws_mask(uint8_t *data, size_t len, const uint8_t key[PROTO_WS_MASK_LEN], uint64_t offset);

/* Writes the header of a frame carrying `len` payload bytes into `out`.
 * `mask_key` NULL: unmasked (server to client). Otherwise the MASK bit and
 * the key are written (client to server) and the caller masks the payload
 * with proto_ws_mask(payload, len, mask_key, 0). Returns the header length
 * (2 to 14), or -1 for a frame RFC 6455 forbids: an unknown opcode, a control
 * frame with fin false or over 125 bytes, a length of 2^63 or more. */
int proto_ws_header_encode(uint8_t out[PROTO_WS_HEADER_MAX], proto_ws_opcode_t opcode, bool fin,
                           uint64_t len, const uint8_t *mask_key);

/* Writes a whole frame (header, then `payload` copied and, with `mask_key`,
 * masked) into `out`. Returns the frame length, or -1 when the frame is
 * forbidden (as for proto_ws_header_encode) or does not fit in `cap`. */
ssize_t proto_ws_frame_encode(uint8_t *out, size_t cap, proto_ws_opcode_t opcode, bool fin,
                              const uint8_t *payload, size_t len, const uint8_t *mask_key);

/* ------------------------------------------------------------------ close */

/* True for status codes a Close frame may carry: 1000-1003, 1007-1011 and
 * 3000-4999 (RFC 6455 §7.4). */
bool proto_ws_close_code_valid(uint16_t code);

/* Checks a whole Close payload: empty, or a valid status code followed by a
 * well-formed UTF-8 reason. Sets *code (PROTO_WS_CLOSE_NO_STATUS when empty)
 * and the reason slice, which points into `payload`. Returns PROTO_WS_OK or
 * PROTO_WS_ERR_CONTROL_TOO_LONG (over 125 bytes), _CLOSE_PAYLOAD_SHORT,
 * _CLOSE_CODE or _CLOSE_REASON_UTF8. */
__attribute__((warn_unused_result))
proto_ws_reason_t proto_ws_close_parse(const uint8_t *payload, size_t len, uint16_t *code,
                                       const uint8_t **reason, size_t *reason_len);

/* Writes a Close frame into `out`: `code` and `reason` (UTF-8, at most
 * PROTO_WS_CLOSE_REASON_MAX bytes), or an empty body when code is
 * PROTO_WS_CLOSE_NO_STATUS (reason must then be empty). `mask_key` as for
 * proto_ws_header_encode. Returns the frame length, or -1 when the code may
 * not be sent, the reason is too long or not UTF-8, or `cap` is too small. */
ssize_t proto_ws_close_encode(uint8_t *out, size_t cap, uint16_t code, const char *reason,
                              size_t reason_len, const uint8_t *mask_key);

#endif
