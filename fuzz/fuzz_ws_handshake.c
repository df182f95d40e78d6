/* fuzz/fuzz_ws_handshake.c — the opening-handshake checks
 * (proto/ws_handshake.c). The input is header lines, "name: value" separated
 * by newlines. Whatever the lines, the verdict must be consistent: a request
 * that passes yields a well-formed 101 head with a 28-character accept, a
 * subprotocol from the server's list and a bearer token taken from the input
 * that never appears in the response. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/ws_handshake.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const supported[] = {"kith.v1", "chat", "bearer.x"};
    const char *in = (const char *) data, *end = in + size;
    proto_ws_upgrade_t up;
    proto_ws_upgrade_init(&up, supported, 3);
    while (in < end) {
        const char *nl = memchr(in, '\n', (size_t) (end - in));
        const char *line_end = nl ? nl : end;
        const char *colon = memchr(in, ':', (size_t) (line_end - in));
        if (colon)
            proto_ws_upgrade_feed(&up, in, (size_t) (colon - in), colon + 1,
                                  (size_t) (line_end - colon - 1));
        in = nl ? nl + 1 : end;
    }
    if (proto_ws_upgrade_check(&up) != 0) {
        CHECK(up.reason != PROTO_WS_HS_OK && up.protocol == NULL);
        CHECK(proto_ws_handshake_reason_status(up.reason) >= 400);
        return 0;
    }
    CHECK(strlen(up.accept) == PROTO_WS_ACCEPT_LEN);
    CHECK(up.protocol == NULL || up.protocol == supported[0] || up.protocol == supported[1]);
    if (up.bearer) {
        CHECK(up.bearer_len > 0);
        CHECK((const char *) data <= up.bearer && up.bearer + up.bearer_len <= end);
    }
    char out[256];
    int n = proto_ws_upgrade_response(&up, out, sizeof out);
    CHECK(n > 0 && (size_t) n < sizeof out && strcmp(out + n - 4, "\r\n\r\n") == 0);
    CHECK(strstr(out, "bearer") == NULL);
    return 0;
}
