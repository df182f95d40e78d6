/* fuzz/fuzz_openai_error.c — the reader of a non-200 chat-completions body
 * (agent/openai_error.c), which reads whatever an LLM server or a proxy in
 * front of it answers: never crashes, leaks or reads past the body, and
 * the text it gives is one line of well-formed UTF-8 within its bounds,
 * under a full-size buffer and under a small one (picked by the input). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/openai_error.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void s_check(const char *out, size_t cap)
{
    size_t n = strnlen(out, cap);
    if (n == cap || n > AGENT_OAI_ERROR_TEXT_MAX)
        abort(); /* not terminated, or over the bound */
    if (!proto_utf8_valid((const uint8_t *) out, n))
        abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) out[i] < 0x20)
            abort(); /* not one line */
    if (n && out[n - 1] == ' ')
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *) data;
    char big[AGENT_OAI_ERROR_TEXT_MAX + 20];
    agent_oai_error_message(body, size, big, sizeof big);
    s_check(big, sizeof big);
    if (size == 0 && big[0])
        abort();

    /* A small buffer, its size from the last octet so seeds stay readable. */
    size_t cap = size ? (size_t) data[size - 1] % 24 + 1 : 1;
    char small[24];
    agent_oai_error_message(body, size, small, cap);
    s_check(small, cap);
    return 0;
}
