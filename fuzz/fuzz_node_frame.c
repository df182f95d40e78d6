/* fuzz/fuzz_node_frame.c — the frames nodes send on /ws/nodes
 * (gateway_node_frame_decode). Beyond not crashing: an accepted frame is
 * well-formed UTF-8 without NUL; a register has a name and commands within
 * their bounds (each a valid token, none twice) and meta as JSON object
 * text within 16 KiB; a result has a valid call id and either result text
 * or an error within its bound; a refusal leaves nothing allocated and
 * names a code. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/node_frame.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return 0;
    char why[GATEWAY_NODE_WHY_MAX];
    static gateway_node_frame_t f;
    gateway_node_reason_t r = gateway_node_frame_decode(data, size, &f, why, sizeof why);
    if (r != GATEWAY_NODE_OK) {
        if (f.meta || f.result || !why[0] || !strcmp(gateway_node_reason_code(r), "OK"))
            abort();
        return 0;
    }
    if (!proto_utf8_valid(data, size) || memchr(data, '\0', size))
        abort();
    if (f.type == GATEWAY_NODE_FRAME_REGISTER) {
        size_t n = strlen(f.name);
        if (!n || n > GATEWAY_NODE_NAME_MAX || f.ncommands > GATEWAY_NODE_COMMANDS_MAX ||
            !f.meta || f.meta[0] != '{' || strlen(f.meta) > GATEWAY_NODE_META_MAX || f.result)
            abort();
        for (size_t i = 0; i < f.ncommands; i++) {
            if (!gateway_node_token_ok(f.commands[i], strlen(f.commands[i]),
                                       GATEWAY_NODE_COMMAND_MAX))
                abort();
            for (size_t j = 0; j < i; j++)
                if (!strcmp(f.commands[i], f.commands[j]))
                    abort();
        }
    } else if (f.type == GATEWAY_NODE_FRAME_RESULT) {
        if (!gateway_node_token_ok(f.call_id, strlen(f.call_id), GATEWAY_NODE_CALL_ID_MAX) ||
            f.meta || (f.ok && !f.result) || (!f.ok && (f.result || strlen(f.error) >
                                                        GATEWAY_NODE_ERROR_MAX)))
            abort();
    } else {
        abort();
    }
    gateway_node_frame_clear(&f);
    return 0;
}
