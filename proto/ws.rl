/* proto/ws.rl — the RFC 6455 frame parser: a Ragel grammar over the sequence
 * of frame headers, and the C that hands payloads to the caller in place.
 *
 * The grammar sees header bytes only. When a header ends, the machine stops
 * (fbreak) and the payload is sliced, unmasked and checked in C; the next
 * header resumes the machine where it stopped. So the grammar is the whole
 * framing contract of §5: the bits of each header, the length encodings and
 * the order of frames (fragmentation, §5.4). Every byte it refuses goes
 * through a named reject production that records the reason. */
#include "proto/ws.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "proto/utf8.h"

struct proto_ws_parser {
    int cs;                             /* Ragel state: where the header grammar stands */
    proto_ws_mode_t mode;               /* which side's frames are read */
    proto_ws_reason_t reason;           /* first violation; once set, every call fails */
    uint64_t limit;                     /* largest message accepted, in payload bytes */
    uint8_t b0;                         /* current frame's first byte: FIN, RSV1-3, opcode */
    uint64_t len;                       /* current frame's payload length */
    uint64_t left;                      /* payload bytes of the current frame not yet delivered; 0 between frames */
    uint8_t mask[PROTO_WS_MASK_LEN];    /* current frame's masking key (server mode) */
    uint8_t mask_fill;                  /* masking-key bytes read so far */
    bool closed;                        /* a Close frame was delivered: nothing may follow */
    proto_ws_opcode_t msg_opcode;       /* TEXT or BINARY: the message in progress */
    uint64_t msg_len;                   /* payload bytes announced so far for that message */
    proto_utf8_t utf8;                  /* validator for a text message in progress */
    uint8_t ctl[PROTO_WS_CONTROL_MAX];  /* a control payload arriving in pieces: the first len - left bytes */
};

#define WS_FIN 0x80
#define WS_OPCODE 0x0F

static void s_reject(proto_ws_parser_t *self, proto_ws_reason_t reason)
{
    if (self->reason == PROTO_WS_OK)
        self->reason = reason;
}

%%{
    machine proto_ws;
    alphtype unsigned char;
    variable cs self->cs;

    # ---------------------------------------------------------- actions

    action frame_start { self->b0 = fc; self->len = 0; self->mask_fill = 0; }
    action len7        { self->len = fc & 0x7F; }
    action len_ext     { self->len = (self->len << 8) | fc; }
    action mask_key    { self->mask[self->mask_fill++] = fc; }
    action data_length { s_data_length(self); if (self->reason != PROTO_WS_OK) fbreak; }
    action header_done { header_done = true; fbreak; }

    action reject_rsv          { s_reject(self, PROTO_WS_ERR_RSV_SET); fbreak; }
    action reject_opcode       { s_reject(self, PROTO_WS_ERR_OPCODE_RESERVED); fbreak; }
    action reject_control_frag { s_reject(self, PROTO_WS_ERR_CONTROL_FRAGMENTED); fbreak; }
    action reject_control_long { s_reject(self, PROTO_WS_ERR_CONTROL_TOO_LONG); fbreak; }
    action reject_unmasked     { s_reject(self, PROTO_WS_ERR_UNMASKED); fbreak; }
    action reject_masked       { s_reject(self, PROTO_WS_ERR_MASKED); fbreak; }
    action reject_not_minimal  { s_reject(self, PROTO_WS_ERR_LENGTH_NOT_MINIMAL); fbreak; }
    action reject_length_msb   { s_reject(self, PROTO_WS_ERR_LENGTH_MSB); fbreak; }
    action reject_continuation { s_reject(self, PROTO_WS_ERR_CONTINUATION_UNEXPECTED); fbreak; }
    action reject_unfinished   { s_reject(self, PROTO_WS_ERR_MESSAGE_UNFINISHED); fbreak; }

    # ---------------------------------------------------------- first byte
    # §5.2: frame-fin frame-rsv1 frame-rsv2 frame-rsv3 frame-opcode, 1+1+1+1+4
    # bits. RSV1-3 MUST be 0 unless an extension says otherwise; kith
    # negotiates none.

    control        = 0x88 .. 0x8A;      # FIN=1; %x8 close, %x9 ping, %xA pong
    whole          = 0x81 .. 0x82;      # FIN=1; %x1 text, %x2 binary: a message in one frame
    first          = 0x01 .. 0x02;      # FIN=0; text or binary: a fragmented message begins
    middle         = 0x00;              # FIN=0; %x0 continuation
    last           = 0x80;              # FIN=1; continuation that ends the message

    rsv_set         = 0x10 .. 0x7F | 0x90 .. 0xFF;
    opcode_reserved = 0x03 .. 0x07 | 0x0B .. 0x0F | 0x83 .. 0x87 | 0x8B .. 0x8F;
    control_nofin   = 0x08 .. 0x0A;     # §5.5: control frames MUST NOT be fragmented

    bad_first = rsv_set @reject_rsv
              | opcode_reserved @reject_opcode
              | control_nofin @reject_control_frag;
    # §5.4: outside a message, a continuation has nothing to continue;
    bad_idle  = bad_first | (middle | last) @reject_continuation;
    # inside one, a new text or binary frame may not start another.
    bad_frag  = bad_first | (whole | first) @reject_unfinished;

    # ---------------------------------------------------------- payload length
    # §5.2 frame-payload-length: 7 bits; 126 then 16 bits; 127 then 64 bits,
    # most significant bit 0. "The minimal number of bytes MUST be used to
    # encode the length."

    ext16 = ( 0x00 0x7E .. 0xFF | 0x01 .. 0xFF any ) $len_ext
          | 0x00 0x00 .. 0x7D @reject_not_minimal;

    ext64 = ( 0x01 .. 0x7F any{7}
            | 0x00{1} 0x01 .. 0xFF any{6}
            | 0x00{2} 0x01 .. 0xFF any{5}
            | 0x00{3} 0x01 .. 0xFF any{4}
            | 0x00{4} 0x01 .. 0xFF any{3}
            | 0x00{5} 0x01 .. 0xFF any{2} ) $len_ext
          | 0x80 .. 0xFF @reject_length_msb
          | 0x00{6} @reject_not_minimal;

    # §5.2 frame-masking-key: 4 bytes, present when frame-masked is 1.
    masking_key = any{4} $mask_key;

    # ---------------------------------------------------------- second byte
    # frame-masked (1 bit), frame-payload-length (7 bits). §5.1: a client
    # masks every frame it sends, a server none; §5.5: control payloads fit
    # the 7-bit form.
    #
    # A data frame's length is held to the message limit as soon as it is
    # known, before the masking key and the payload. Ragel runs a
    # transition's actions inner machine first, so the length is whole when
    # data_length runs, and data_length runs before header_done where both
    # fall on the last header byte (client mode).

    # Server mode: frames from a client.
    s_len_data = ( 0x80 .. 0xFD @len7 | 0xFE ext16 | 0xFF ext64 ) @data_length
               | 0x00 .. 0x7F @reject_unmasked;
    s_len_ctl  = 0x80 .. 0xFD @len7
               | 0xFE .. 0xFF @reject_control_long
               | 0x00 .. 0x7F @reject_unmasked;
    s_data = s_len_data masking_key;
    s_ctl  = s_len_ctl masking_key;

    # Client mode: frames from a server.
    c_data = ( 0x00 .. 0x7D @len7 | 0x7E ext16 | 0x7F ext64 ) @data_length
           | 0x80 .. 0xFF @reject_masked;
    c_ctl  = 0x00 .. 0x7D @len7
           | 0x7E .. 0x7F @reject_control_long
           | 0x80 .. 0xFF @reject_masked;

    # ---------------------------------------------------------- frame order
    # §5.4: a message is one whole frame, or a first frame, continuations and
    # a last frame; control frames may come between fragments.

    s_control = ( control s_ctl ) >frame_start @header_done;
    s_whole   = ( whole s_data )  >frame_start @header_done;
    s_first   = ( first s_data )  >frame_start @header_done;
    s_middle  = ( middle s_data ) >frame_start @header_done;
    s_last    = ( last s_data )   >frame_start @header_done;

    c_control = ( control c_ctl ) >frame_start @header_done;
    c_whole   = ( whole c_data )  >frame_start @header_done;
    c_first   = ( first c_data )  >frame_start @header_done;
    c_middle  = ( middle c_data ) >frame_start @header_done;
    c_last    = ( last c_data )   >frame_start @header_done;

    server := ( s_control | s_whole | bad_idle
              | s_first ( s_control | s_middle | bad_frag )* s_last )*;

    client := ( c_control | c_whole | bad_idle
              | c_first ( c_control | c_middle | bad_frag )* c_last )*;

    write data;
}%%

/* ------------------------------------------------------------------ reasons */

const char *proto_ws_reason_str(proto_ws_reason_t r)
{
    switch (r) {
    case PROTO_WS_OK: return "ok";
    case PROTO_WS_ERR_RSV_SET: return "RSV bit set without a negotiated extension";
    case PROTO_WS_ERR_OPCODE_RESERVED: return "reserved opcode";
    case PROTO_WS_ERR_CONTROL_FRAGMENTED: return "fragmented control frame";
    case PROTO_WS_ERR_CONTROL_TOO_LONG: return "control frame payload over 125 bytes";
    case PROTO_WS_ERR_UNMASKED: return "client frame not masked";
    case PROTO_WS_ERR_MASKED: return "server frame masked";
    case PROTO_WS_ERR_LENGTH_NOT_MINIMAL: return "payload length not in its shortest form";
    case PROTO_WS_ERR_LENGTH_MSB: return "64-bit payload length with the top bit set";
    case PROTO_WS_ERR_CONTINUATION_UNEXPECTED: return "continuation frame outside a fragmented message";
    case PROTO_WS_ERR_MESSAGE_UNFINISHED: return "new message inside a fragmented message";
    case PROTO_WS_ERR_AFTER_CLOSE: return "data after the Close frame";
    case PROTO_WS_ERR_CLOSE_PAYLOAD_SHORT: return "Close payload of one byte";
    case PROTO_WS_ERR_CLOSE_CODE: return "Close status code not allowed";
    case PROTO_WS_ERR_CLOSE_REASON_UTF8: return "Close reason not valid UTF-8";
    case PROTO_WS_ERR_TEXT_UTF8: return "text message not valid UTF-8";
    case PROTO_WS_ERR_TOO_BIG: return "message too big";
    }
    return "unknown reason";
}

uint16_t proto_ws_reason_close_code(proto_ws_reason_t r)
{
    switch (r) {
    case PROTO_WS_OK:
        return PROTO_WS_CLOSE_NORMAL;
    case PROTO_WS_ERR_CLOSE_REASON_UTF8:
    case PROTO_WS_ERR_TEXT_UTF8:
        return PROTO_WS_CLOSE_BAD_DATA;
    case PROTO_WS_ERR_TOO_BIG:
        return PROTO_WS_CLOSE_TOO_BIG;
    default:
        return PROTO_WS_CLOSE_PROTOCOL_ERROR;
    }
}

/* ------------------------------------------------------------------ parser */

proto_ws_parser_t *proto_ws_parser_new(proto_ws_mode_t mode)
{
    proto_ws_parser_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->mode = mode;
    self->cs = mode == PROTO_WS_MODE_SERVER ? proto_ws_en_server : proto_ws_en_client;
    self->limit = PROTO_WS_MESSAGE_MAX_DEFAULT;
    return self;
}

void proto_ws_parser_destroy(proto_ws_parser_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

void proto_ws_parser_set_limit(proto_ws_parser_t *self, uint64_t max_message)
{
    self->limit = max_message;
}

proto_ws_reason_t proto_ws_parser_reason(const proto_ws_parser_t *self)
{
    return self->reason;
}

/* A data frame's length is known: count it toward its message, which must
 * stay within the limit. Runs before the payload arrives. */
static void s_data_length(proto_ws_parser_t *self)
{
    proto_ws_opcode_t opcode = (proto_ws_opcode_t) (self->b0 & WS_OPCODE);
    if (opcode != PROTO_WS_OP_CONTINUATION) {
        self->msg_opcode = opcode;
        self->msg_len = 0;
        proto_utf8_init(&self->utf8);
    }
    if (self->msg_len > self->limit || self->len > self->limit - self->msg_len) {
        s_reject(self, PROTO_WS_ERR_TOO_BIG);
        return;
    }
    self->msg_len += self->len;
}

/* Runs the header grammar over buf[0..len) until a header ends or the bytes
 * do; sets *used to the bytes consumed. Returns true when a header ended. */
static bool s_header(proto_ws_parser_t *self, const uint8_t *buf, size_t len, size_t *used)
{
    const uint8_t *p = buf;
    const uint8_t *pe = buf + len;
    bool header_done = false;

    %% write exec;

    /* The grammar names a reason for every byte it refuses: the machine never
     * falls into its error state, and it stops at the end of each header. */
    assert(self->cs != proto_ws_error);
    assert(p <= pe);
    assert(header_done || self->reason != PROTO_WS_OK || p == pe);
    *used = (size_t) (p - buf);
    if (header_done)
        self->left = self->len;
    return header_done;
}

/* Delivers the next slice of a data frame from buf[pos..len). */
static ssize_t s_data(proto_ws_parser_t *self, uint8_t *buf, size_t pos, size_t len,
                      proto_ws_event_t *ev)
{
    size_t n = len - pos;
    if (n > self->left)
        n = (size_t) self->left;
    if (n == 0 && self->left > 0)
        return -2;  /* no payload byte in this buffer */

    uint8_t *slice = buf + pos;
    uint64_t offset = self->len - self->left;
    if (self->mode == PROTO_WS_MODE_SERVER)
        proto_ws_mask(slice, n, self->mask, offset);
    self->left -= n;

    bool fin = self->b0 & WS_FIN;
    bool frame_end = self->left == 0;
    bool message_end = frame_end && fin;
    if (self->msg_opcode == PROTO_WS_OP_TEXT &&
        (proto_utf8_feed(&self->utf8, slice, n) != 0 ||
         (message_end && !proto_utf8_complete(&self->utf8)))) {
        s_reject(self, PROTO_WS_ERR_TEXT_UTF8);
        return -1;
    }
    *ev = (proto_ws_event_t) {
        .opcode = self->msg_opcode,
        .data = slice,
        .len = n,
        .frame_len = self->len,
        .fin = fin,
        .frame_begin = offset == 0,
        .frame_end = frame_end,
        .message_begin = offset == 0 && (self->b0 & WS_OPCODE) != PROTO_WS_OP_CONTINUATION,
        .message_end = message_end,
    };
    return (ssize_t) (pos + n);
}

/* Delivers a control frame once its payload is complete: in place when it is
 * all in this buffer, otherwise gathered (at most 125 bytes) across calls. */
static ssize_t s_control(proto_ws_parser_t *self, uint8_t *buf, size_t pos, size_t len,
                         proto_ws_event_t *ev)
{
    bool masked = self->mode == PROTO_WS_MODE_SERVER;
    size_t avail = len - pos;
    size_t have = (size_t) (self->len - self->left);   /* bytes gathered so far */
    uint8_t *payload;
    if (have == 0 && avail >= self->left) {
        payload = buf + pos;
        pos += (size_t) self->len;
        if (masked)
            proto_ws_mask(payload, (size_t) self->len, self->mask, 0);
    } else {
        size_t n = avail < self->left ? avail : (size_t) self->left;
        memcpy(self->ctl + have, buf + pos, n);
        if (masked)
            proto_ws_mask(self->ctl + have, n, self->mask, have);
        self->left -= n;
        pos += n;
        if (self->left > 0)
            return -2;
        payload = self->ctl;
    }
    self->left = 0;

    *ev = (proto_ws_event_t) {
        .opcode = (proto_ws_opcode_t) (self->b0 & WS_OPCODE),
        .data = payload,
        .len = (size_t) self->len,
        .frame_len = self->len,
        .fin = true,
        .frame_begin = true,
        .frame_end = true,
        .message_begin = true,
        .message_end = true,
    };
    if (ev->opcode == PROTO_WS_OP_CLOSE) {
        const uint8_t *reason;
        proto_ws_reason_t r = proto_ws_close_parse(payload, ev->len, &ev->close_code, &reason, &ev->len);
        if (r != PROTO_WS_OK) {
            s_reject(self, r);
            return -1;
        }
        ev->data = payload + (reason - payload);   /* the reason, still writable */
        self->closed = true;
    }
    return (ssize_t) pos;
}

ssize_t proto_ws_parse(proto_ws_parser_t *self, uint8_t *buf, size_t len, proto_ws_event_t *ev)
{
    if (self->reason != PROTO_WS_OK)
        return -1;
    size_t pos = 0;
    if (self->left == 0) {
        /* Between frames: the next bytes are a header. A frame's payload is
         * delivered (a zero-length one included) in the call that ends its
         * header, so left is 0 here only between frames. */
        if (len == 0)
            return -2;
        if (self->closed) {
            s_reject(self, PROTO_WS_ERR_AFTER_CLOSE);
            return -1;
        }
        bool header_done = s_header(self, buf, len, &pos);
        if (self->reason != PROTO_WS_OK)
            return -1;
        if (!header_done)
            return -2;
    }
    if ((self->b0 & WS_OPCODE) >= PROTO_WS_OP_CLOSE)
        return s_control(self, buf, pos, len, ev);
    return s_data(self, buf, pos, len, ev);
}
