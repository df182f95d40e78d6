/* fuzz/fuzz_event_line.c — the plain event line decoder: never crashes, and
 * an accepted body is NUL-ended with the reported length. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router/comms/event_line.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = NULL;
    size_t len = 0;
    if (router_event_line_parse(data, size, &body, &len) == ROUTER_EVENT_LINE_OK) {
        if (!body || strlen(body) > len || body[len] != '\0')
            abort();
    } else if (body) {
        abort();
    }
    free(body);
    return 0;
}
