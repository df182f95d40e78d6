/* fuzz/fuzz_chat_frame.c — the /ws/chat client-frame decoder
 * (gateway_chat_frame_decode) and, on what it accepts, the encoder.
 * Beyond not crashing: an accepted frame is well-formed UTF-8 with no NUL,
 * what it hands back is within its bounds and consistent with its type, a
 * refusal hands nothing back, and every frame the encoder makes from the
 * decoded strings is well-formed UTF-8 and decodes again as strict JSON. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "gateway/chat_frame.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Encodes one frame carrying `text` and `json` and checks it. */
static void s_encode_check(gateway_chat_out_type_t t, const char *text, size_t len,
                           const char *json, size_t json_len)
{
    gateway_chat_out_t f = {.type = t, .session_id = "s", .turn_id = "t", .id = "c",
                            .name = "n", .code = "AGENT_ERROR", .text = text,
                            .text_len = len, .json = json, .json_len = json_len};
    char *out;
    size_t n;
    if (gateway_chat_frame_encode(&f, &out, &n) != 0)
        return; /* out of memory */
    if (strlen(out) != n || !proto_utf8_valid((const uint8_t *) out, n))
        abort();
    /* It is JSON to yajl; and without an embedded JSON value (which may
     * repeat member names or nest deeper than a client may), as a member
     * of a stop frame it decodes as strict JSON (the decoder refuses
     * \u0000, which the encoder writes for a NUL). */
    yajl_handle h = yajl_alloc(NULL, NULL, NULL);
    if (h) {
        if (yajl_parse(h, (const unsigned char *) out, n) != yajl_status_ok ||
            yajl_complete_parse(h) != yajl_status_ok)
            abort();
        yajl_free(h);
    }
    if (!json && !memchr(text ? text : "", '\0', text ? len : 0)) {
        size_t cap = n + 32;
        char *wrap = malloc(cap);
        if (wrap) {
            int m = snprintf(wrap, cap, "{\"type\":\"stop\",\"x\":%s}", out);
            gateway_chat_in_t in;
            gateway_chat_reason_t r =
                gateway_chat_frame_decode((const uint8_t *) wrap, (size_t) m, &in, NULL, 0);
            if (r != GATEWAY_CHAT_OK && r != GATEWAY_CHAT_NOMEM)
                abort();
            gateway_chat_in_clear(&in);
            free(wrap);
        }
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[GATEWAY_CHAT_WHY_MAX];
    gateway_chat_in_t in;
    gateway_chat_reason_t r = gateway_chat_frame_decode(data, size, &in, why, sizeof why);
    if (r != GATEWAY_CHAT_OK) {
        if (in.content || in.page_context || in.attachments)
            abort(); /* a refusal hands nothing back */
    } else {
        if (!proto_utf8_valid(data, size) || memchr(data, 0, size))
            abort();
        bool has_content = in.type == GATEWAY_CHAT_IN_MESSAGE || in.type == GATEWAY_CHAT_IN_STEER;
        if (has_content != (in.content != NULL))
            abort();
        if (in.content && (!in.content_len || in.content_len > GATEWAY_CHAT_CONTENT_MAX ||
                           strlen(in.content) != in.content_len ||
                           !proto_utf8_valid((const uint8_t *) in.content, in.content_len)))
            abort();
        if (in.page_context && (in.type != GATEWAY_CHAT_IN_MESSAGE ||
                                in.page_context_len > GATEWAY_CHAT_PAGE_CONTEXT_MAX ||
                                strlen(in.page_context) != in.page_context_len))
            abort();
        if (in.attachments && (in.type != GATEWAY_CHAT_IN_MESSAGE || !in.attachments_count ||
                               in.attachments_count > GATEWAY_CHAT_ATTACHMENTS_MAX ||
                               in.attachments[0] != '['))
            abort();
        s_encode_check(GATEWAY_CHAT_OUT_DONE, in.content, in.content_len, NULL, 0);
        s_encode_check(GATEWAY_CHAT_OUT_TOOL_CALL, NULL, 0, in.page_context, in.page_context_len);
    }
    gateway_chat_in_clear(&in);
    /* The encoder on raw octets: text and JSON-valued fields. */
    s_encode_check(GATEWAY_CHAT_OUT_CHUNK, (const char *) data, size, NULL, 0);
    s_encode_check(GATEWAY_CHAT_OUT_AGENT_EVENT, NULL, 0, (const char *) data, size);
    return 0;
}
