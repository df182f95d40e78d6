/* agent/provider.h — what the tool loop asks of an LLM provider: one
 * streamed completion of a conversation, text and thinking handed back as it
 * arrives, tool calls returned at the end. Providers: `scripted` (built in,
 * spec/WIRE.md §20) and `openai` (any OpenAI-compatible chat-completions
 * server, agent/provider_openai.c).
 *
 * A provider never blocks for long without calling sink->yield: that is how
 * a stop, a steer or the turn's deadline reach it, and how a stop aborts a
 * transfer at once. One provider object serves one worker thread, one turn
 * at a time. */
#ifndef KITH_AGENT_PROVIDER_H
#define KITH_AGENT_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/worker_msg.h"

/* Longest provider error message kept (the FINAL's `message`). */
#define AGENT_PROVIDER_ERR_MAX 512
/* How long a provider may wait for anything before it yields again. */
#define AGENT_POLL_MS 50

/* One completion: the conversation (oldest first) and the tools offered. */
typedef struct {
    const proto_worker_chat_msg_t *msgs;
    size_t n_msgs;
    const proto_worker_tool_spec_t *tools;
    size_t n_tools;
    uint64_t iteration;        /* 0 for the turn's first completion */
} agent_completion_req_t;

/* The provider's way back into the turn while it runs. Every function
 * returns 0 to go on or -1 when the turn must end now (stopped, timed out,
 * the link lost, the response over its bound): the provider then returns
 * AGENT_COMPLETE_ABORTED as soon as it can. */
typedef struct {
    int (*chunk)(void *ud, const char *p, size_t n);    /* answer text, valid UTF-8 */
    int (*thinking)(void *ud, const char *p, size_t n); /* reasoning text, valid UTF-8 */
    /* Reads the turn's socket for up to ms milliseconds (0: only looks). */
    int (*yield)(void *ud, int ms);
    void *ud;
} agent_sink_t;

/* What a completion returns besides its streamed text. */
typedef struct {
    proto_worker_tool_call_t *calls; /* heap strings; release with agent_completion_clear */
    size_t n_calls;
    bool has_tokens_used;
    uint64_t tokens_used;            /* prompt + completion, when the server said */
} agent_completion_t;

typedef enum {
    AGENT_COMPLETE_OK = 0,
    AGENT_COMPLETE_ERROR = -1,   /* provider error: err holds the provider's message */
    AGENT_COMPLETE_ABORTED = -2, /* a sink function said stop */
} agent_complete_rc_t;

typedef struct agent_provider agent_provider_t;

struct agent_provider {
    const char *name;   /* "scripted" | "openai": llm_request.provider */
    const char *model;  /* llm_request.model, or NULL */
    /* One completion. *out is zeroed by the caller; on ERROR or ABORTED the
     * provider leaves it empty. */
    agent_complete_rc_t (*complete)(agent_provider_t *self, const agent_completion_req_t *req,
                                    const agent_sink_t *sink, agent_completion_t *out, char *err,
                                    size_t errcap);
    void (*destroy)(agent_provider_t *self);
};

/* Frees the calls and zeroes *c. */
void agent_completion_clear(agent_completion_t *c);

/* Destroys *self_p (idempotent; nulls it). */
void agent_provider_destroy(agent_provider_t **self_p);

/* ------------------------------------------------------------ making one */

/* openai provider defaults. */
#define AGENT_OPENAI_BASE_URL "https://api.openai.com/v1"
#define AGENT_OPENAI_CONNECT_TIMEOUT_MS 10000
#define AGENT_OPENAI_IDLE_TIMEOUT_MS 120000
#define AGENT_OPENAI_ATTEMPTS 3
#define AGENT_OPENAI_BACKOFF_MS 500
/* A Retry-After longer than this is cut to it. */
#define AGENT_OPENAI_RETRY_AFTER_MAX_MS 60000
/* Bytes of a non-200 answer kept for its error message. */
#define AGENT_OPENAI_ERROR_BODY_MAX (64u * 1024u)
/* The request body (the whole conversation as JSON). */
#define AGENT_OPENAI_REQUEST_MAX (32u * 1024u * 1024u)

typedef enum {
    AGENT_PROVIDER_SCRIPTED = 0,
    AGENT_PROVIDER_OPENAI,
} agent_provider_kind_t;

/* The provider settings (config `agent.*` and `kith agent` flags). Strings
 * are borrowed for the call only. */
typedef struct {
    agent_provider_kind_t kind;
    const char *base_url;       /* openai: "http(s)://host[:port][/v1]"; NULL/"": https://api.openai.com/v1 */
    const char *model;          /* openai: required */
    const char *api_key_env;    /* openai: env var holding the key; NULL/"": no Authorization header */
    int connect_timeout_ms;     /* openai: 0 → AGENT_OPENAI_CONNECT_TIMEOUT_MS */
    int idle_timeout_ms;        /* openai: no byte for this long → error; 0 → AGENT_OPENAI_IDLE_TIMEOUT_MS */
    int max_attempts;           /* openai: tries on 429/5xx/connect failure; 0 → AGENT_OPENAI_ATTEMPTS */
    int backoff_ms;             /* openai: first retry delay, doubled each time; 0 → AGENT_OPENAI_BACKOFF_MS */
} agent_provider_opts_t;

/* A new provider (caller owns it: agent_provider_destroy), or NULL with a
 * one-line reason in err (an openai provider without a model, a named API
 * key variable that is unset, a bad URL). The reason is what a turn's
 * AGENT_INIT_FAILED carries. The API key itself never appears in it. */
agent_provider_t *agent_provider_new(const agent_provider_opts_t *o, char *err, size_t errcap);

agent_provider_t *agent_provider_scripted_new(void);
agent_provider_t *agent_provider_openai_new(const agent_provider_opts_t *o, char *err, size_t errcap);

#endif
