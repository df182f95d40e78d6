/* fuzz/fuzz_openai_stream.c — the chat-completions stream reader
 * (agent/openai_stream.c), which reads whatever an LLM server sends: never
 * crashes or leaks, gives the same outcome whether the body comes whole or
 * in pieces (the first byte picks the piece size), and every tool call it
 * hands out has a name, an id and JSON arguments. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/json_buf.h"
#include "agent/openai_stream.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int s_text(void *ud, const char *p, size_t n)
{
    (void) ud;
    if (!proto_utf8_valid((const uint8_t *) p, n))
        abort();
    return 0;
}

/* Feeds body in pieces of `step` (0: whole); the outcome and call count. */
static agent_oai_rc_t s_read(const char *p, size_t n, size_t step, size_t *calls)
{
    agent_oai_cb_t cb = {s_text, s_text, NULL};
    agent_oai_stream_t *s = agent_oai_stream_new(&cb);
    if (!s)
        abort();
    agent_oai_rc_t rc = AGENT_OAI_OK;
    for (size_t i = 0; i < n && rc == AGENT_OAI_OK;) {
        size_t k = step && step < n - i ? step : n - i;
        rc = agent_oai_stream_feed(s, p + i, k);
        i += k;
    }
    if (rc == AGENT_OAI_OK)
        rc = agent_oai_stream_finish(s);
    *calls = 0;
    if (rc == AGENT_OAI_OK) {
        agent_completion_t c = {0};
        if (agent_oai_stream_take(s, &c) == 0) {
            for (size_t i = 0; i < c.n_calls; i++)
                if (!c.calls[i].name.len || !c.calls[i].id.len ||
                    !agent_json_valid(c.calls[i].arguments.p, c.calls[i].arguments.len))
                    abort();
            *calls = c.n_calls;
        } else {
            rc = AGENT_OAI_ERROR;
        }
        agent_completion_clear(&c);
    }
    agent_oai_stream_destroy(&s);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t step = (size_t) (data[0] % 17) + 1;
    size_t ca = 0, cb = 0;
    agent_oai_rc_t a = s_read((const char *) data + 1, size - 1, 0, &ca);
    agent_oai_rc_t b = s_read((const char *) data + 1, size - 1, step, &cb);
    if (a != b || ca != cb)
        abort();
    return 0;
}
