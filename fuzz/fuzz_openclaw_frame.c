/* fuzz/fuzz_openclaw_frame.c — the OpenClaw endpoint's request decoder
 * (gateway_openclaw_req_decode) and, on what it accepts, the decoders of
 * the connect params and of the run methods' params, then the device
 * proof check on what the connect decoder accepts. Beyond not crashing:
 * an accepted frame is well-formed UTF-8 without NUL, its id and method
 * are within bounds and non-empty, decoded strings fit their bounds, and a
 * refused frame hands no tree back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/openclaw_device.h"
#include "gateway/openclaw_frame.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > GATEWAY_OPENCLAW_PREAUTH_MAX * 4)
        return 0;
    char why[GATEWAY_OPENCLAW_WHY_MAX];
    gateway_openclaw_req_t req;
    if (gateway_openclaw_req_decode(data, size, &req, why, sizeof why) != 0) {
        if (req.tree || strlen(why) >= sizeof why || strlen(req.id) > GATEWAY_OPENCLAW_ID_MAX)
            abort();
        return 0;
    }
    if (!proto_utf8_valid(data, size) || memchr(data, '\0', size) || !req.id[0] ||
        !req.method[0] || strlen(req.method) > GATEWAY_OPENCLAW_METHOD_MAX)
        abort();
    /* Every params decoder sees every accepted frame, whatever its method. */
    static gateway_openclaw_connect_t c;
    if (gateway_openclaw_connect_decode(req.params, &c, why, sizeof why) == 0) {
        if (!c.client_id[0] || !c.client_mode[0] || !c.role[0] ||
            c.nscopes > GATEWAY_OPENCLAW_SCOPES_MAX)
            abort();
        if (c.has_device) {
            int version = 0;
            gateway_openclaw_device_reason_t r = gateway_openclaw_device_verify(
                &c, c.token, "fuzz-nonce", (uint64_t) c.device_signed_at, &version);
            if (r == GATEWAY_OPENCLAW_DEVICE_OK && version != 2 && version != 3)
                abort();
            if (!gateway_openclaw_device_code(r)[0])
                abort();
        }
    }
    gateway_openclaw_run_params_t p;
    if (gateway_openclaw_chat_send_decode(req.params, &p, why, sizeof why) == 0 &&
        (!gateway_openclaw_key_ok(p.session_key) || !gateway_openclaw_key_ok(p.idempotency_key) ||
         strlen(p.message) != p.message_len))
        abort();
    if (gateway_openclaw_agent_decode(req.params, &p, why, sizeof why) == 0 && !p.message_len)
        abort();
    char key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1], run[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1];
    if (gateway_openclaw_chat_abort_decode(req.params, key, run, why, sizeof why) == 0 &&
        !gateway_openclaw_key_ok(key))
        abort();
    /* A res to it encodes. */
    size_t n;
    char *out = gateway_openclaw_res_error_encode(req.id, "INVALID_REQUEST", why, NULL, false,
                                                  NULL, &n);
    if (out && (strlen(out) != n || !proto_utf8_valid((const uint8_t *) out, n)))
        abort();
    free(out);
    gateway_openclaw_req_clear(&req);
    return 0;
}
