/* proto/ws_close.c — the Close frame (RFC 6455 §5.5.1, §7.4): which status
 * codes may travel, checking a received Close payload, building one to send. */
#include "proto/ws.h"

#include <string.h>

#include "proto/utf8.h"

/* Size of the status code at the front of a Close payload. */
#define WS_CLOSE_CODE_LEN 2

bool proto_ws_close_code_valid(uint16_t code)
{
    /* 1004 is reserved, 1005, 1006 and 1015 are for reports, never the wire;
     * 1012-1014 (service restart, try again later, bad gateway) are in the
     * IANA registry RFC 6455 §11.7 set up, and browsers and proxies send
     * them; 1016-2999 are unassigned or belong to extensions, none
     * negotiated; 3000-4999 are for libraries and applications. */
    return (code >= 1000 && code <= 1003) ||
           (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

proto_ws_reason_t proto_ws_close_parse(const uint8_t *payload, size_t len, uint16_t *code,
                                       const uint8_t **reason, size_t *reason_len)
{
    *code = PROTO_WS_CLOSE_NO_STATUS;
    *reason = payload;
    *reason_len = 0;
    if (len == 0)
        return PROTO_WS_OK;
    if (len > PROTO_WS_CONTROL_MAX)
        return PROTO_WS_ERR_CONTROL_TOO_LONG;
    if (len < WS_CLOSE_CODE_LEN)
        return PROTO_WS_ERR_CLOSE_PAYLOAD_SHORT;
    uint16_t c = (uint16_t) (payload[0] << 8 | payload[1]);
    if (!proto_ws_close_code_valid(c))
        return PROTO_WS_ERR_CLOSE_CODE;
    if (!proto_utf8_valid(payload + WS_CLOSE_CODE_LEN, len - WS_CLOSE_CODE_LEN))
        return PROTO_WS_ERR_CLOSE_REASON_UTF8;
    *code = c;
    *reason = payload + WS_CLOSE_CODE_LEN;
    *reason_len = len - WS_CLOSE_CODE_LEN;
    return PROTO_WS_OK;
}

ssize_t proto_ws_close_encode(uint8_t *out, size_t cap, uint16_t code, const char *reason,
                              size_t reason_len, const uint8_t *mask_key)
{
    uint8_t body[PROTO_WS_CONTROL_MAX];
    size_t n = 0;
    if (code == PROTO_WS_CLOSE_NO_STATUS) {
        if (reason_len != 0)
            return -1;
    } else {
        if (!proto_ws_close_code_valid(code) || reason_len > PROTO_WS_CLOSE_REASON_MAX ||
            !proto_utf8_valid((const uint8_t *) reason, reason_len))
            return -1;
        body[0] = (uint8_t) (code >> 8);
        body[1] = (uint8_t) code;
        if (reason_len > 0)
            memcpy(body + WS_CLOSE_CODE_LEN, reason, reason_len);
        n = WS_CLOSE_CODE_LEN + reason_len;
    }
    return proto_ws_frame_encode(out, cap, PROTO_WS_OP_CLOSE, true, body, n, mask_key);
}
