/* fuzz/fuzz_scripted_cmd.c — the scripted provider's command parser
 * (agent/provider_scripted.c, WIRE §20), which reads a chat user's text:
 * /send, /request, /think, /sleep, /peers, /fail or an echo. The first byte
 * picks the shape: bit 0 clear, the rest is the last user message; set, the
 * rest is split at '\n' into an assistant message whose calls are the first
 * line's words and the tool results that answer them (the conversation a
 * turn has after router tools ran). Beyond not crashing or leaking: the
 * streamed text is valid UTF-8 and, for an echo, is "echo: " and the
 * message; every tool call has an id, a router tool's name and JSON object
 * arguments; an error has a message. Only valid UTF-8 is fed, as the
 * worker_msg decoder guarantees for real turns. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/json_buf.h"
#include "agent/provider.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    char *text;
    size_t len, cap;
    int yields;
} s_out_t;

static int s_chunk(void *ud, const char *p, size_t n)
{
    s_out_t *o = ud;
    if (!proto_utf8_valid((const uint8_t *) p, n))
        abort();
    if (o->len + n > o->cap) {
        size_t cap = (o->len + n) * 2;
        char *g = realloc(o->text, cap);
        if (!g)
            abort();
        o->text = g;
        o->cap = cap;
    }
    memcpy(o->text + o->len, p, n);
    o->len += n;
    return 0;
}

static int s_thinking(void *ud, const char *p, size_t n)
{
    (void) ud;
    if (!proto_utf8_valid((const uint8_t *) p, n))
        abort();
    return 0;
}

/* A /sleep ends at once: the third wait says the turn was stopped. */
static int s_yield(void *ud, int ms)
{
    (void) ms;
    s_out_t *o = ud;
    return ++o->yields > 2 && ms > 0 ? -1 : 0;
}

#define S_MSGS_MAX 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 65536)
        return 0;
    const char *p = (const char *) data + 1;
    size_t n = size - 1;
    if (!proto_utf8_valid((const uint8_t *) p, n) || memchr(p, '\0', n))
        return 0;
    /* NUL-ended copies: decoded worker strings always are. */
    char *buf = malloc(n + 1);
    if (!buf)
        abort();
    memcpy(buf, p, n);
    buf[n] = '\0';

    proto_worker_chat_msg_t msgs[S_MSGS_MAX];
    proto_worker_tool_call_t calls[S_MSGS_MAX];
    memset(msgs, 0, sizeof msgs);
    memset(calls, 0, sizeof calls);
    static char ids[S_MSGS_MAX][8];
    size_t nm = 0;
    if (!(data[0] & 1)) {
        msgs[nm++] = (proto_worker_chat_msg_t) {.role = PROTO_WORKER_ROLE_USER,
                                                .content = {buf, n}};
    } else {
        /* line 1: the names of the calls, space-separated; lines 2…: results */
        msgs[nm++] = (proto_worker_chat_msg_t) {.role = PROTO_WORKER_ROLE_USER,
                                                .content = {"/peers", 6}};
        char *nl = strchr(buf, '\n');
        if (nl)
            *nl = '\0';
        size_t nc = 0;
        for (char *s = buf, *save = NULL, *w; nc < S_MSGS_MAX - 2 && (w = strtok_r(s, " ", &save));
             s = NULL) {
            snprintf(ids[nc], sizeof ids[nc], "c%zu", nc);
            calls[nc] = (proto_worker_tool_call_t) {.id = {ids[nc], strlen(ids[nc])},
                                                    .name = {w, strlen(w)},
                                                    .arguments = {"{}", 2}};
            nc++;
        }
        msgs[nm++] = (proto_worker_chat_msg_t) {.role = PROTO_WORKER_ROLE_ASSISTANT,
                                                .content = {"", 0},
                                                .tool_calls = calls,
                                                .n_tool_calls = nc,
                                                .has_tool_calls = true};
        /* Each later line answers a call, in order; more lines than calls
         * answer ids nobody made. */
        for (char *line = nl ? nl + 1 : NULL; line && nm < S_MSGS_MAX;) {
            char *end = strchr(line, '\n');
            if (end)
                *end = '\0';
            size_t k = nm - 2;
            const char *id = k < nc ? ids[k] : "nobody";
            msgs[nm++] = (proto_worker_chat_msg_t) {.role = PROTO_WORKER_ROLE_TOOL,
                                                    .content = {line, strlen(line)},
                                                    .tool_call_id = {id, strlen(id)}};
            line = end ? end + 1 : NULL;
        }
    }

    agent_provider_t *prov = agent_provider_scripted_new();
    if (!prov)
        abort();
    s_out_t o = {0};
    agent_sink_t sink = {s_chunk, s_thinking, s_yield, &o};
    agent_completion_req_t req = {.msgs = msgs, .n_msgs = nm, .iteration = data[0] >> 1};
    agent_completion_t out = {0};
    char err[AGENT_PROVIDER_ERR_MAX] = "";
    agent_complete_rc_t rc = prov->complete(prov, &req, &sink, &out, err, sizeof err);
    if (rc == AGENT_COMPLETE_ERROR && !err[0])
        abort();
    if (rc != AGENT_COMPLETE_OK && out.n_calls)
        abort();
    static const char *const router_tools[] = {"peers", "send_message", "send_request"};
    for (size_t i = 0; i < out.n_calls; i++) {
        bool known = false;
        for (size_t k = 0; k < sizeof router_tools / sizeof router_tools[0]; k++)
            known |= strcmp(out.calls[i].name.p, router_tools[k]) == 0;
        if (!known || !out.calls[i].id.len ||
            !agent_json_valid(out.calls[i].arguments.p, out.calls[i].arguments.len) ||
            out.calls[i].arguments.p[0] != '{')
            abort();
    }
    /* An echo is the message itself, whole. */
    if (rc == AGENT_COMPLETE_OK && !out.n_calls && nm == 1 && o.len >= 6 &&
        memcmp(o.text, "echo: ", 6) == 0 && (o.len - 6 != n || memcmp(o.text + 6, buf, n) != 0))
        abort();
    agent_completion_clear(&out);
    agent_provider_destroy(&prov);
    free(o.text);
    free(buf);
    return 0;
}
