/* fuzz/fuzz_turn_source.c — inbox entries into turn messages
 * (router/workers/turn_source.c): the first byte picks the entry kind
 * (webhook, event, message envelope), the rest is its stored frame. Never
 * crashes; an accepted entry has a NUL-ended content of the reported length
 * and a valid session id. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "router/workers/turn_source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const kinds[] = {"webhook", "event", "message", "request"};
    if (size < 1 || sodium_init() < 0)
        return 0;
    router_inbox_entry_t e = {.seq = 1};
    snprintf(e.kind, sizeof e.kind, "%s", kinds[data[0] % 4]);
    e.frame = (uint8_t *) data + 1;
    e.frame_len = size - 1;
    router_turn_source_t src;
    char why[160];
    if (router_turn_source_from_entry(&e, "comms", &src, why, sizeof why) == 0) {
        if (!src.content || src.content[src.len] != '\0' ||
            !router_turn_session_id_ok(src.session, strlen(src.session)))
            abort();
        router_turn_source_clear(&src);
    }
    return 0;
}
