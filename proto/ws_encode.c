/* proto/ws_encode.c — writing WebSocket frames (RFC 6455 §5.2) and the
 * masking transform (§5.3) that both the encoder and the parser apply. */
#include "proto/ws.h"

#include <string.h>

void proto_ws_mask(uint8_t *data, size_t len, const uint8_t key[PROTO_WS_MASK_LEN], uint64_t offset)
{
    /* Rotate the key so its first byte lines up with data[0], then XOR eight
     * bytes at a time; the rotation repeats every 4 bytes, so the tail keeps
     * the same phase. */
    unsigned phase = (unsigned) (offset & 3);
    uint8_t wide[8];
    for (unsigned j = 0; j < sizeof wide; j++)
        wide[j] = key[(phase + j) & 3];
    uint64_t k;
    memcpy(&k, wide, sizeof k);

    size_t i = 0;
    for (; len - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, sizeof w);
        w ^= k;
        memcpy(data + i, &w, sizeof w);
    }
    for (; i < len; i++)
        data[i] ^= wide[i & 7];
}

int proto_ws_header_encode(uint8_t out[PROTO_WS_HEADER_MAX], proto_ws_opcode_t opcode, bool fin,
                           uint64_t len, const uint8_t *mask_key)
{
    switch (opcode) {
    case PROTO_WS_OP_CONTINUATION:
    case PROTO_WS_OP_TEXT:
    case PROTO_WS_OP_BINARY:
        break;
    case PROTO_WS_OP_CLOSE:
    case PROTO_WS_OP_PING:
    case PROTO_WS_OP_PONG:
        if (!fin || len > PROTO_WS_CONTROL_MAX)
            return -1;
        break;
    default:
        return -1;
    }
    if (len >> 63)
        return -1;

    uint8_t mask_bit = mask_key ? 0x80 : 0x00;
    int n = 0;
    out[n++] = (uint8_t) ((fin ? 0x80 : 0x00) | opcode);
    if (len <= 125) {
        out[n++] = (uint8_t) (mask_bit | len);
    } else if (len <= 0xFFFF) {
        out[n++] = mask_bit | 126;
        out[n++] = (uint8_t) (len >> 8);
        out[n++] = (uint8_t) len;
    } else {
        out[n++] = mask_bit | 127;
        for (int shift = 56; shift >= 0; shift -= 8)
            out[n++] = (uint8_t) (len >> shift);
    }
    if (mask_key) {
        memcpy(out + n, mask_key, PROTO_WS_MASK_LEN);
        n += PROTO_WS_MASK_LEN;
    }
    return n;
}

ssize_t proto_ws_frame_encode(uint8_t *out, size_t cap, proto_ws_opcode_t opcode, bool fin,
                              const uint8_t *payload, size_t len, const uint8_t *mask_key)
{
    uint8_t header[PROTO_WS_HEADER_MAX];
    int h = proto_ws_header_encode(header, opcode, fin, len, mask_key);
    if (h < 0 || cap < (size_t) h || len > cap - (size_t) h)
        return -1;
    memcpy(out, header, (size_t) h);
    if (len > 0) {
        memcpy(out + h, payload, len);
        if (mask_key)
            proto_ws_mask(out + h, len, mask_key, 0);
    }
    return (ssize_t) h + (ssize_t) len;
}
