/* agent/provider_scripted.c — the built-in `scripted` provider (spec/WIRE.md
 * §20): deterministic, offline, and able to drive every path of the tool
 * loop — echoed text streamed word by word, slash commands that become
 * router tool calls, thinking, a held turn and a provider error. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/json_buf.h"
#include "agent/provider.h"
#include "router/clock.h"

/* Longest /sleep (ms): a turn's own timeout still applies. */
#define S_SLEEP_MAX_MS 3600000u
/* Largest text the scripted provider writes (an echo, a tool answer). */
#define S_TEXT_MAX (PROTO_WORKER_BODY_MAX / 2)

/* Streams text as chunks: each chunk is a word and the spaces after it, so
 * the chunks put together are the text. Yields between chunks. */
static agent_complete_rc_t s_stream(const agent_sink_t *sink, const char *text, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && text[j] != ' ')
            j++;
        while (j < n && text[j] == ' ')
            j++;
        if (sink->chunk(sink->ud, text + i, j - i) < 0 || sink->yield(sink->ud, 0) < 0)
            return AGENT_COMPLETE_ABORTED;
        i = j;
    }
    return AGENT_COMPLETE_OK;
}

/* "prefix" + p[n], streamed. */
static agent_complete_rc_t s_say(const agent_sink_t *sink, const char *prefix, const char *p, size_t n, char *err,
                                 size_t errcap)
{
    agent_json_buf_t b; /* used as a plain text buffer */
    agent_json_buf_init(&b, S_TEXT_MAX);
    agent_json_buf_puts(&b, prefix);
    agent_json_buf_put(&b, p, n);
    size_t len = 0;
    char *text = agent_json_buf_take(&b, &len);
    if (!text) {
        snprintf(err, errcap, "scripted: the answer would pass %u bytes", (unsigned) S_TEXT_MAX);
        return AGENT_COMPLETE_ERROR;
    }
    agent_complete_rc_t rc = s_stream(sink, text, len);
    free(text);
    return rc;
}

/* The completion asks for one tool: out gets call "call_<iteration>". */
static agent_complete_rc_t s_call(agent_completion_t *out, uint64_t iteration, const char *name, char *args,
                                  size_t args_len, char *err, size_t errcap)
{
    char id[32];
    snprintf(id, sizeof id, "call_%" PRIu64, iteration);
    proto_worker_tool_call_t *c = calloc(1, sizeof *c);
    char *idc = strdup(id), *namec = strdup(name);
    if (!c || !idc || !namec || !args) {
        free(c);
        free(idc);
        free(namec);
        free(args);
        snprintf(err, errcap, "scripted: out of memory");
        return AGENT_COMPLETE_ERROR;
    }
    c->id = (proto_worker_str_t){idc, strlen(idc)};
    c->name = (proto_worker_str_t){namec, strlen(namec)};
    c->arguments = (proto_worker_str_t){args, args_len};
    out->calls = c;
    out->n_calls = 1;
    return AGENT_COMPLETE_OK;
}

/* Splits off the next space-separated word of s[*n] into (*w, *wn). */
static bool s_word(const char **s, size_t *n, const char **w, size_t *wn)
{
    size_t i = 0;
    while (i < *n && (*s)[i] != ' ')
        i++;
    if (i == 0)
        return false;
    *w = *s;
    *wn = i;
    if (i < *n)
        i++; /* the one separating space */
    *s += i;
    *n -= i;
    return true;
}

static bool s_is(const char *w, size_t wn, const char *lit)
{
    return wn == strlen(lit) && memcmp(w, lit, wn) == 0;
}

/* The answer to the tool results that end the conversation. */
static agent_complete_rc_t s_answer_results(const agent_completion_req_t *req, const agent_sink_t *sink, char *err,
                                            size_t errcap)
{
    size_t first = req->n_msgs;
    while (first > 0 && req->msgs[first - 1].role == PROTO_WORKER_ROLE_TOOL)
        first--;
    agent_json_buf_t b;
    agent_json_buf_init(&b, S_TEXT_MAX);
    for (size_t i = first; i < req->n_msgs; i++) {
        const proto_worker_chat_msg_t *m = &req->msgs[i];
        /* The call's name, from the assistant message that made it. */
        const char *name = NULL;
        for (size_t k = first; !name && m->tool_call_id.p && k-- > 0;)
            for (size_t c = 0; !name && c < req->msgs[k].n_tool_calls; c++)
                if (!strcmp(req->msgs[k].tool_calls[c].id.p, m->tool_call_id.p))
                    name = req->msgs[k].tool_calls[c].name.p;
        if (!name)
            name = "tool";
        if (i > first)
            agent_json_buf_puts(&b, "\n");
        agent_json_buf_puts(&b, name);
        agent_json_buf_puts(&b, " returned: ");
        agent_json_buf_put(&b, m->content.p, m->content.len);
    }
    size_t len = 0;
    char *text = agent_json_buf_take(&b, &len);
    if (!text) {
        snprintf(err, errcap, "scripted: the answer would pass %u bytes", (unsigned) S_TEXT_MAX);
        return AGENT_COMPLETE_ERROR;
    }
    agent_complete_rc_t rc = s_stream(sink, text, len);
    free(text);
    return rc;
}

static agent_complete_rc_t s_complete(agent_provider_t *self, const agent_completion_req_t *req,
                                      const agent_sink_t *sink, agent_completion_t *out, char *err, size_t errcap)
{
    (void) self;
    if (req->n_msgs == 0) {
        snprintf(err, errcap, "scripted: empty conversation");
        return AGENT_COMPLETE_ERROR;
    }
    const proto_worker_chat_msg_t *last = &req->msgs[req->n_msgs - 1];
    if (last->role == PROTO_WORKER_ROLE_TOOL)
        return s_answer_results(req, sink, err, errcap);

    const char *content = last->content.p ? last->content.p : "";
    size_t clen = last->content.len;
    const char *rest = content, *cmd = NULL;
    size_t rlen = clen, cmdlen = 0;
    if (clen > 0 && content[0] == '/')
        s_word(&rest, &rlen, &cmd, &cmdlen);

    if (cmd && s_is(cmd, cmdlen, "/fail") && rlen == 0) {
        snprintf(err, errcap, "scripted provider: /fail");
        return AGENT_COMPLETE_ERROR;
    }
    if (cmd && s_is(cmd, cmdlen, "/peers") && rlen == 0)
        return s_call(out, req->iteration, "peers", strdup("{}"), 2, err, errcap);
    if (cmd && s_is(cmd, cmdlen, "/send")) {
        const char *peer;
        size_t plen;
        if (s_word(&rest, &rlen, &peer, &plen) && rlen > 0) {
            agent_json_buf_t b;
            agent_json_buf_init(&b, PROTO_WORKER_TEXT_MAX);
            agent_json_buf_puts(&b, "{\"peer\":");
            agent_json_buf_quote(&b, peer, plen);
            agent_json_buf_puts(&b, ",\"body\":");
            agent_json_buf_quote(&b, rest, rlen);
            agent_json_buf_puts(&b, "}");
            size_t alen = 0;
            char *args = agent_json_buf_take(&b, &alen);
            return s_call(out, req->iteration, "send_message", args, alen, err, errcap);
        }
    }
    if (cmd && s_is(cmd, cmdlen, "/request")) {
        const char *peer, *intent;
        size_t plen, ilen;
        if (s_word(&rest, &rlen, &peer, &plen) && s_word(&rest, &rlen, &intent, &ilen) && rlen > 0) {
            if (!agent_json_valid(rest, rlen)) {
                snprintf(err, errcap, "scripted provider: /request params are not JSON");
                return AGENT_COMPLETE_ERROR;
            }
            agent_json_buf_t b;
            agent_json_buf_init(&b, PROTO_WORKER_TEXT_MAX);
            agent_json_buf_puts(&b, "{\"peer\":");
            agent_json_buf_quote(&b, peer, plen);
            agent_json_buf_puts(&b, ",\"intent\":");
            agent_json_buf_quote(&b, intent, ilen);
            agent_json_buf_puts(&b, ",\"params\":");
            agent_json_buf_put(&b, rest, rlen);
            agent_json_buf_puts(&b, "}");
            size_t alen = 0;
            char *args = agent_json_buf_take(&b, &alen);
            return s_call(out, req->iteration, "send_request", args, alen, err, errcap);
        }
    }
    if (cmd && s_is(cmd, cmdlen, "/think") && rlen > 0) {
        if (sink->thinking(sink->ud, rest, rlen) < 0)
            return AGENT_COMPLETE_ABORTED;
    }
    if (cmd && s_is(cmd, cmdlen, "/sleep") && rlen > 0 && rlen <= 7) {
        uint64_t ms = 0;
        bool digits = true;
        for (size_t i = 0; i < rlen; i++) {
            if (rest[i] < '0' || rest[i] > '9')
                digits = false;
            else
                ms = ms * 10 + (uint64_t) (rest[i] - '0');
        }
        if (digits && ms <= S_SLEEP_MAX_MS) {
            uint64_t until = router_clock_mono_ms() + ms;
            for (uint64_t now = router_clock_mono_ms(); now < until; now = router_clock_mono_ms()) {
                uint64_t left = until - now;
                if (sink->yield(sink->ud, (int) (left < 1000 ? left : 1000)) < 0)
                    return AGENT_COMPLETE_ABORTED;
            }
            char text[64];
            int n = snprintf(text, sizeof text, "slept %" PRIu64 " ms", ms);
            return s_stream(sink, text, (size_t) n);
        }
    }
    return s_say(sink, "echo: ", content, clen, err, errcap);
}

static void s_destroy(agent_provider_t *self)
{
    free(self);
}

agent_provider_t *agent_provider_scripted_new(void)
{
    agent_provider_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->name = "scripted";
    p->model = NULL;
    p->complete = s_complete;
    p->destroy = s_destroy;
    return p;
}
