/* agent/openai_stream.h — reads a streamed chat-completions response
 * (OpenAI's `stream: true`): Server-Sent Events whose `data:` payloads are
 * JSON chunks, ended by `data: [DONE]`. Bytes go in as they arrive, split
 * anywhere (one at a time is fine); each complete event's JSON is run
 * through yajl's streaming parser (yajl_parse with callbacks, no tree), and
 * what matters comes out:
 *
 *   choices[].delta.content                      → on_content (as it arrives)
 *   choices[].delta.reasoning_content | reasoning → on_reasoning
 *   choices[].delta.tool_calls[] {index, id, function.name, function.arguments}
 *                                                → assembled across chunks by index
 *   choices[].finish_reason                      → finish_reason
 *   usage.total_tokens (else prompt + completion) → tokens
 *   error.message (or a string `error`)          → the stream's error
 *
 * Every buffer is bounded (AGENT_OAI_* below); past a bound, a malformed
 * chunk, text that is not UTF-8, or a stream that ends before [DONE] or a
 * finish_reason is an error with a one-line reason. No I/O. */
#ifndef KITH_AGENT_OPENAI_STREAM_H
#define KITH_AGENT_OPENAI_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/provider.h"

/* One SSE line (one `data:` payload, usually one JSON chunk). */
#define AGENT_OAI_LINE_MAX (256u * 1024u)
/* One event's data (its data lines joined). */
#define AGENT_OAI_EVENT_MAX (256u * 1024u)
/* The whole response body. */
#define AGENT_OAI_RESPONSE_MAX (16u * 1024u * 1024u)
/* One tool call's assembled arguments. */
#define AGENT_OAI_ARGS_MAX (256u * 1024u)
/* Tool calls in one completion (their `index` must be below this). */
#define AGENT_OAI_TOOL_CALLS_MAX 64
/* Nesting inside one JSON chunk. */
#define AGENT_OAI_DEPTH_MAX 32

typedef struct agent_oai_stream agent_oai_stream_t;

/* What comes out as it arrives. Each returns 0, or -1 to stop reading (the
 * feed then returns AGENT_OAI_ABORTED). Text is UTF-8, valid during the call. */
typedef struct {
    int (*on_content)(void *ud, const char *p, size_t n);
    int (*on_reasoning)(void *ud, const char *p, size_t n);
    void *ud;
} agent_oai_cb_t;

typedef enum {
    AGENT_OAI_OK = 0,
    AGENT_OAI_ERROR = -1,   /* malformed or over a bound: agent_oai_stream_error says why */
    AGENT_OAI_ABORTED = -2, /* a callback said stop */
} agent_oai_rc_t;

/* A new reader (caller owns it), or NULL when out of memory. */
agent_oai_stream_t *agent_oai_stream_new(const agent_oai_cb_t *cb);
void agent_oai_stream_destroy(agent_oai_stream_t **self_p);

/* The next n bytes of the body. After an error or abort every call returns
 * the same. */
agent_oai_rc_t agent_oai_stream_feed(agent_oai_stream_t *s, const char *p, size_t n);

/* The body has ended: a last event without its blank line is dispatched;
 * an ending with neither [DONE] nor a finish_reason is an error. */
agent_oai_rc_t agent_oai_stream_finish(agent_oai_stream_t *s);

/* The reason of the last AGENT_OAI_ERROR ("" otherwise). */
const char *agent_oai_stream_error(const agent_oai_stream_t *s);
/* The last finish_reason seen, or "". */
const char *agent_oai_stream_finish_reason(const agent_oai_stream_t *s);
/* Whether any content or reasoning went out through the callbacks. */
bool agent_oai_stream_emitted(const agent_oai_stream_t *s);
/* Whether `data: [DONE]` has been read: nothing after it counts, so the
 * caller need not wait for the body's end (a server or proxy that keeps
 * it open would otherwise hold a finished answer until a timeout). */
bool agent_oai_stream_done(const agent_oai_stream_t *s);
/* Whether any `data:` line has been read: a body without one is no event
 * stream at all (a whole JSON object, an error page), which the caller
 * can say better than "ended before [DONE]". */
bool agent_oai_stream_saw_data(const agent_oai_stream_t *s);

/* Moves the assembled tool calls and token count into *out (after a
 * successful finish). A call without an id gets "call_<index>"; one without
 * a name, or whose arguments are not JSON (cut by max_tokens, when the
 * finish_reason is "length", and said so), is an error. So is an answer
 * with no content text and no tool call unless its finish_reason is
 * "stop": the reason ("length", "content_filter", none at all) is said
 * rather than passed on as an empty answer. Returns 0 or -1 (error set). */
int agent_oai_stream_take(agent_oai_stream_t *s, agent_completion_t *out);

#endif
