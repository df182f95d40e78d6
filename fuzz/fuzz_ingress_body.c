/* fuzz/fuzz_ingress_body.c — the webhook and external-event body decoder
 * (gateway_ingress_body_parse), both shapes. Beyond not crashing: an
 * accepted body is well-formed UTF-8 with no NUL, and the values it hands
 * back are within their bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/ingress_body.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[128];
    for (int shape = GATEWAY_INGRESS_WEBHOOK; shape <= GATEWAY_INGRESS_EVENT; shape++) {
        gateway_ingress_body_t b;
        gateway_ingress_reason_t r = gateway_ingress_body_parse(
            (gateway_ingress_shape_t) shape, (const char *) data, size, &b, why, sizeof why);
        if (r == GATEWAY_INGRESS_OK) {
            if (!proto_utf8_valid(data, size) || memchr(data, 0, size))
                abort();
            if (shape == GATEWAY_INGRESS_WEBHOOK &&
                (!b.message || !b.message_len || strlen(b.message) != b.message_len ||
                 !proto_utf8_valid((const uint8_t *) b.message, b.message_len)))
                abort();
            if (b.session_id[0] && !gateway_ingress_id_ok(b.session_id, strlen(b.session_id)))
                abort();
            if (shape == GATEWAY_INGRESS_EVENT &&
                !gateway_ingress_id_ok(b.event_type, strlen(b.event_type)))
                abort();
        } else if (b.message) {
            abort(); /* a refusal hands nothing back */
        }
        gateway_ingress_body_clear(&b);
    }
    return 0;
}
