/* agent/openai_stream.c — SSE framing and yajl streaming parse of a
 * chat-completions stream, tool-call deltas assembled by index
 * (openai_stream.h). */
#include "agent/openai_stream.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "agent/json_buf.h"
#include "agent/openai_error.h"
#include "proto/utf8.h"

/* Longest map key kept for path matching; longer keys match nothing. */
#define S_KEY_MAX 24
/* Most octets of a server's own error message kept as the reason. */
#define S_SERVER_MSG_MAX 200

typedef struct {
    bool is_map;
    char key[S_KEY_MAX + 1];      /* the map's current key ("" when too long) */
    size_t index;                 /* the array's current element */
} s_frame_t;

/* A tool call's pieces (the slot by index, or one element being read). */
typedef struct {
    char *id, *name, *args;
    size_t id_len, name_len, args_len;
    bool used;
} s_call_t;

struct agent_oai_stream {
    agent_oai_cb_t cb;
    agent_oai_rc_t rc;            /* sticky once not OK */
    char err[256];
    /* SSE framing */
    char *line;
    size_t line_len, line_cap;
    bool skip_lf;                 /* the last line ended with CR: a LF next is part of it */
    char *data;                   /* the event's data lines, joined with LF */
    size_t data_len, data_cap;
    bool has_data;
    bool saw_data;                /* a `data` field came at all: the body is an event stream */
    size_t total;                 /* body bytes so far */
    bool done;                    /* data: [DONE] seen */
    bool emitted;
    bool content_seen;            /* some choices[].delta.content text came */
    char finish_reason[64];
    /* JSON of one event */
    s_frame_t frames[AGENT_OAI_DEPTH_MAX];
    size_t depth;
    bool error_seen;              /* this chunk's top-level `error` is not null */
    bool in_elem;                 /* inside choices[].delta.tool_calls[k] */
    int64_t elem_index;           /* its `index`, or -1 */
    size_t elem_pos;              /* its position in the array */
    s_call_t elem;
    s_call_t calls[AGENT_OAI_TOOL_CALLS_MAX];
    /* usage */
    bool has_total, has_prompt, has_completion;
    uint64_t total_tokens, prompt_tokens, completion_tokens;
};

static agent_oai_rc_t s_fail(agent_oai_stream_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static agent_oai_rc_t s_fail(agent_oai_stream_t *s, const char *fmt, ...)
{
    if (s->rc == AGENT_OAI_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->err, sizeof s->err, fmt, ap);
        va_end(ap);
        s->rc = AGENT_OAI_ERROR;
    }
    return s->rc;
}

/* s_append's and s_piece_append's refusals. */
#define S_PAST_MAX (-1)
#define S_NO_MEMORY (-2)

/* Appends p[n] to *buf (len, cap): 0, S_PAST_MAX past max, or S_NO_MEMORY. */
static int s_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n, size_t max)
{
    if (n > max || *len > max - n)
        return S_PAST_MAX;
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < *len + n + 1)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return S_NO_MEMORY;
        *buf = b;
        *cap = c;
    }
    if (n)
        memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

/* Appends to one piece of a call (its own capacity is its length: these
 * are few and small, so a realloc per fragment is fine). */
static int s_piece_append(char **piece, size_t *len, const char *p, size_t n, size_t max)
{
    size_t cap = *piece ? *len + 1 : 0;
    return s_append(piece, len, &cap, p, n, max);
}

/* A refusal of s_append (r < 0) as the stream's error: out of memory, or
 * the bound the caller names. */
#define S_REFUSED(s, r, ...) ((r) == S_NO_MEMORY ? s_fail((s), "out of memory") : s_fail((s), __VA_ARGS__))

/* The server's own message as the stream's error: one line (control
 * characters become spaces), at most S_SERVER_MSG_MAX octets, cut on a code
 * point; an empty one says so. */
static void s_fail_server(agent_oai_stream_t *s, const char *t, size_t n)
{
    char msg[S_SERVER_MSG_MAX + 1];
    size_t k = agent_oai_error_line(t, n, msg, sizeof msg, S_SERVER_MSG_MAX);
    s_fail(s, "%s", k ? msg : "the server sent an error without a message");
}

static void s_call_free(s_call_t *c)
{
    free(c->id);
    free(c->name);
    free(c->args);
    memset(c, 0, sizeof *c);
}

/* ================================================================ JSON paths */

static bool s_path_is(const agent_oai_stream_t *s, size_t n, const char *const *pat)
{
    if (s->depth != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        const s_frame_t *f = &s->frames[i];
        if (pat[i][0] == '*' && pat[i][1] == '\0') {
            if (f->is_map)
                return false;
        } else if (!f->is_map || strcmp(f->key, pat[i]) != 0) {
            return false;
        }
    }
    return true;
}

#define S_PATH(s, ...) \
    s_path_is((s), sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *), (const char *[]){__VA_ARGS__})

/* After a value at the top: an array moves to its next element. */
static void s_value_done(agent_oai_stream_t *s)
{
    if (s->depth > 0 && !s->frames[s->depth - 1].is_map)
        s->frames[s->depth - 1].index++;
}

static int s_push(agent_oai_stream_t *s, bool is_map)
{
    if (s->depth == AGENT_OAI_DEPTH_MAX) {
        s_fail(s, "a stream chunk nests deeper than %d", AGENT_OAI_DEPTH_MAX);
        return 0;
    }
    s_frame_t *f = &s->frames[s->depth++];
    f->is_map = is_map;
    f->key[0] = '\0';
    f->index = 0;
    return 1;
}

/* ================================================================ callbacks */

static int s_cb_string(void *ud, const unsigned char *p, size_t n)
{
    agent_oai_stream_t *s = ud;
    const char *t = (const char *) p;
    if (!proto_utf8_valid(p, n)) {
        s_fail(s, "a stream chunk holds text that is not UTF-8");
        return 0;
    }
    int rc = 1, r;
    if (S_PATH(s, "choices", "*", "delta", "content")) {
        s->content_seen |= n > 0;
        if (n && s->cb.on_content) {
            s->emitted = true;
            if (s->cb.on_content(s->cb.ud, t, n) < 0) {
                s->rc = AGENT_OAI_ABORTED;
                rc = 0;
            }
        }
    } else if (S_PATH(s, "choices", "*", "delta", "reasoning_content") ||
               S_PATH(s, "choices", "*", "delta", "reasoning")) {
        if (n && s->cb.on_reasoning) {
            s->emitted = true;
            if (s->cb.on_reasoning(s->cb.ud, t, n) < 0) {
                s->rc = AGENT_OAI_ABORTED;
                rc = 0;
            }
        }
    } else if (s->in_elem && S_PATH(s, "choices", "*", "delta", "tool_calls", "*", "id")) {
        if ((r = s_piece_append(&s->elem.id, &s->elem.id_len, t, n, PROTO_WORKER_NAME_MAX)) < 0) {
            S_REFUSED(s, r, "a tool call id passed %d bytes", PROTO_WORKER_NAME_MAX);
            rc = 0;
        }
    } else if (s->in_elem && S_PATH(s, "choices", "*", "delta", "tool_calls", "*", "function", "name")) {
        if ((r = s_piece_append(&s->elem.name, &s->elem.name_len, t, n, PROTO_WORKER_NAME_MAX)) < 0) {
            S_REFUSED(s, r, "a tool name passed %d bytes", PROTO_WORKER_NAME_MAX);
            rc = 0;
        }
    } else if (s->in_elem && S_PATH(s, "choices", "*", "delta", "tool_calls", "*", "function", "arguments")) {
        if ((r = s_piece_append(&s->elem.args, &s->elem.args_len, t, n, AGENT_OAI_ARGS_MAX)) < 0) {
            S_REFUSED(s, r, "a tool call's arguments passed %u bytes", (unsigned) AGENT_OAI_ARGS_MAX);
            rc = 0;
        }
    } else if (S_PATH(s, "choices", "*", "finish_reason")) {
        size_t k = n < sizeof s->finish_reason - 1 ? n : sizeof s->finish_reason - 1;
        memcpy(s->finish_reason, t, k);
        s->finish_reason[k] = '\0';
    } else if (S_PATH(s, "error", "message") || S_PATH(s, "error")) {
        s_fail_server(s, t, n);
        rc = 0;
    }
    s_value_done(s);
    return rc;
}

/* A value other than a string or null begins. At the top-level `error` it
 * makes the chunk an error all the same, said when it has been read (its
 * message may follow). As a tool call's `arguments` (an object some servers
 * send in place of its JSON text) or a delta's `content` it is refused:
 * ignored, the call would run with {} instead of what the model asked, the
 * text would be lost. 0 to stop. */
static int s_other_value(agent_oai_stream_t *s)
{
    if (S_PATH(s, "error"))
        s->error_seen = true;
    if (s->in_elem && S_PATH(s, "choices", "*", "delta", "tool_calls", "*", "function", "arguments")) {
        s_fail(s, "a tool call's arguments are not a JSON string");
        return 0;
    }
    /* Text in parts ([{"type":"text",…}]) or any other shape: dropped, the
     * answer would have reached the client empty or with holes. */
    if (S_PATH(s, "choices", "*", "delta", "content")) {
        s_fail(s, "a chunk's content is not a string");
        return 0;
    }
    return 1;
}

static int s_cb_integer(void *ud, long long v)
{
    agent_oai_stream_t *s = ud;
    if (!s_other_value(s))
        return 0;
    if (s->in_elem && S_PATH(s, "choices", "*", "delta", "tool_calls", "*", "index")) {
        if (v < 0 || v >= AGENT_OAI_TOOL_CALLS_MAX) {
            s_fail(s, "a tool call index %lld is outside 0..%d", v, AGENT_OAI_TOOL_CALLS_MAX - 1);
            return 0;
        }
        s->elem_index = v;
    } else if (v >= 0 && S_PATH(s, "usage", "total_tokens")) {
        s->has_total = true;
        s->total_tokens = (uint64_t) v;
    } else if (v >= 0 && S_PATH(s, "usage", "prompt_tokens")) {
        s->has_prompt = true;
        s->prompt_tokens = (uint64_t) v;
    } else if (v >= 0 && S_PATH(s, "usage", "completion_tokens")) {
        s->has_completion = true;
        s->completion_tokens = (uint64_t) v;
    }
    s_value_done(s);
    return 1;
}

static int s_cb_scalar(void *ud)
{
    s_value_done(ud);
    return 1;
}

static int s_cb_null(void *ud)
{
    return s_cb_scalar(ud);
}

static int s_cb_bool(void *ud, int b)
{
    (void) b;
    return s_other_value(ud) ? s_cb_scalar(ud) : 0;
}

static int s_cb_double(void *ud, double d)
{
    (void) d;
    return s_other_value(ud) ? s_cb_scalar(ud) : 0;
}

static int s_cb_start_map(void *ud)
{
    agent_oai_stream_t *s = ud;
    if (!s_other_value(s))
        return 0;
    /* An element of choices[].delta.tool_calls begins. */
    if (S_PATH(s, "choices", "*", "delta", "tool_calls", "*")) {
        s->in_elem = true;
        s->elem_index = -1;
        s->elem_pos = s->frames[s->depth - 1].index;
        s_call_free(&s->elem);
    }
    return s_push(s, true);
}

static int s_cb_map_key(void *ud, const unsigned char *p, size_t n)
{
    agent_oai_stream_t *s = ud;
    s_frame_t *f = &s->frames[s->depth - 1];
    if (n > S_KEY_MAX) {
        f->key[0] = '\0';
        return 1;
    }
    memcpy(f->key, p, n);
    f->key[n] = '\0';
    /* A key holding a NUL would match a shorter one: make it match nothing. */
    if (memchr(p, '\0', n))
        f->key[0] = '\0';
    return 1;
}

/* An element ended: its pieces join the slot its index names. */
static int s_elem_merge(agent_oai_stream_t *s)
{
    int64_t idx = s->elem_index >= 0 ? s->elem_index : (int64_t) s->elem_pos;
    s->in_elem = false;
    if (idx >= AGENT_OAI_TOOL_CALLS_MAX) {
        s_fail(s, "more than %d tool calls", AGENT_OAI_TOOL_CALLS_MAX);
        return 0;
    }
    s_call_t *c = &s->calls[idx];
    c->used = true;
    int r = 0;
    if (s->elem.id_len && !c->id_len &&
        (r = s_piece_append(&c->id, &c->id_len, s->elem.id, s->elem.id_len, PROTO_WORKER_NAME_MAX)) < 0)
        S_REFUSED(s, r, "tool call %" PRId64 ": its id passed %d bytes", idx, PROTO_WORKER_NAME_MAX);
    else if (s->elem.name_len &&
             (r = s_piece_append(&c->name, &c->name_len, s->elem.name, s->elem.name_len, PROTO_WORKER_NAME_MAX)) < 0)
        S_REFUSED(s, r, "tool call %" PRId64 ": its name passed %d bytes", idx, PROTO_WORKER_NAME_MAX);
    else if (s->elem.args_len &&
             (r = s_piece_append(&c->args, &c->args_len, s->elem.args, s->elem.args_len, AGENT_OAI_ARGS_MAX)) < 0)
        S_REFUSED(s, r, "tool call %" PRId64 ": its arguments passed %u bytes", idx, (unsigned) AGENT_OAI_ARGS_MAX);
    s_call_free(&s->elem);
    return r < 0 ? 0 : 1;
}

static int s_cb_end_map(void *ud)
{
    agent_oai_stream_t *s = ud;
    s->depth--;
    if (s->in_elem && S_PATH(s, "choices", "*", "delta", "tool_calls", "*") && !s_elem_merge(s))
        return 0;
    s_value_done(s);
    return 1;
}

static int s_cb_start_array(void *ud)
{
    return s_other_value(ud) ? s_push(ud, false) : 0;
}

static int s_cb_end_array(void *ud)
{
    agent_oai_stream_t *s = ud;
    s->depth--;
    s_value_done(s);
    return 1;
}

static const yajl_callbacks s_callbacks = {
    .yajl_null = s_cb_null,
    .yajl_boolean = s_cb_bool,
    .yajl_integer = s_cb_integer,
    .yajl_double = s_cb_double,
    .yajl_string = s_cb_string,
    .yajl_start_map = s_cb_start_map,
    .yajl_map_key = s_cb_map_key,
    .yajl_end_map = s_cb_end_map,
    .yajl_start_array = s_cb_start_array,
    .yajl_end_array = s_cb_end_array,
};

/* ================================================================ events */

/* One event's data: [DONE], or one JSON chunk. */
static agent_oai_rc_t s_dispatch(agent_oai_stream_t *s)
{
    if (!s->has_data)
        return s->rc;
    s->has_data = false;
    size_t n = s->data_len;
    s->data_len = 0;
    if (s->done)
        return s->rc; /* nothing counts after [DONE] */
    if (n == 6 && memcmp(s->data, "[DONE]", 6) == 0) {
        s->done = true;
        return s->rc;
    }
    yajl_handle h = yajl_alloc(&s_callbacks, NULL, s);
    if (!h)
        return s_fail(s, "out of memory");
    s->depth = 0;
    s->in_elem = false;
    s->error_seen = false;
    yajl_status st = yajl_parse(h, (const unsigned char *) s->data, n);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st != yajl_status_ok && s->rc == AGENT_OAI_OK) {
        unsigned char *why = yajl_get_error(h, 0, (const unsigned char *) s->data, n);
        /* yajl's message is ASCII prose; keep its first line (NULL: its
         * allocation failed). */
        const char *w = why ? (const char *) why : "?";
        s_fail(s, "a malformed stream chunk: %.*s", (int) strcspn(w, "\n"), w);
        if (why)
            yajl_free_error(h, why);
    }
    if (s->error_seen)
        s_fail(s, "the server sent an error without a message");
    yajl_free(h);
    s_call_free(&s->elem);
    s->in_elem = false;
    return s->rc;
}

/* One complete line (without its end). */
static agent_oai_rc_t s_line(agent_oai_stream_t *s, const char *p, size_t n)
{
    if (n == 0)
        return s_dispatch(s);
    if (p[0] == ':')
        return s->rc; /* a comment (keep-alive) */
    const char *colon = memchr(p, ':', n);
    size_t flen = colon ? (size_t) (colon - p) : n;
    if (flen != 4 || memcmp(p, "data", 4) != 0)
        return s->rc; /* event:, id:, retry:, or a field no one uses */
    const char *v = colon ? colon + 1 : p + n;
    size_t vlen = (size_t) (p + n - v);
    if (vlen && v[0] == ' ') {
        v++;
        vlen--;
    }
    int r = s->has_data ? s_append(&s->data, &s->data_len, &s->data_cap, "\n", 1, AGENT_OAI_EVENT_MAX) : 0;
    if (r == 0)
        r = s_append(&s->data, &s->data_len, &s->data_cap, v, vlen, AGENT_OAI_EVENT_MAX);
    if (r < 0)
        return S_REFUSED(s, r, "a stream event passed %u bytes", (unsigned) AGENT_OAI_EVENT_MAX);
    s->has_data = s->saw_data = true;
    return s->rc;
}

agent_oai_rc_t agent_oai_stream_feed(agent_oai_stream_t *s, const char *p, size_t n)
{
    if (s->rc != AGENT_OAI_OK)
        return s->rc;
    if (n > AGENT_OAI_RESPONSE_MAX - s->total)
        return s_fail(s, "the response passed %u bytes", (unsigned) AGENT_OAI_RESPONSE_MAX);
    s->total += n;
    size_t i = 0;
    while (i < n && s->rc == AGENT_OAI_OK) {
        if (s->skip_lf) {
            s->skip_lf = false;
            if (p[i] == '\n') {
                i++;
                continue;
            }
        }
        /* The rest of this line in this piece. */
        size_t j = i;
        while (j < n && p[j] != '\n' && p[j] != '\r')
            j++;
        int r = j > i ? s_append(&s->line, &s->line_len, &s->line_cap, p + i, j - i, AGENT_OAI_LINE_MAX) : 0;
        if (r < 0)
            return S_REFUSED(s, r, "a stream line passed %u bytes", (unsigned) AGENT_OAI_LINE_MAX);
        if (j == n)
            break;
        s->skip_lf = p[j] == '\r';
        size_t len = s->line_len;
        s->line_len = 0;
        s_line(s, s->line ? s->line : "", len);
        i = j + 1;
    }
    return s->rc;
}

agent_oai_rc_t agent_oai_stream_finish(agent_oai_stream_t *s)
{
    if (s->rc != AGENT_OAI_OK)
        return s->rc;
    if (s->line_len) {
        size_t len = s->line_len;
        s->line_len = 0;
        if (s_line(s, s->line, len) != AGENT_OAI_OK)
            return s->rc;
    }
    if (s_dispatch(s) != AGENT_OAI_OK)
        return s->rc;
    if (!s->done && !s->finish_reason[0])
        return s_fail(s, "the stream ended before [DONE] or a finish_reason");
    return s->rc;
}

/* ================================================================ results */

int agent_oai_stream_take(agent_oai_stream_t *s, agent_completion_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < AGENT_OAI_TOOL_CALLS_MAX; i++)
        if (s->calls[i].used)
            n = i + 1;
    if (n) {
        out->calls = calloc(n, sizeof *out->calls);
        if (!out->calls) {
            s_fail(s, "out of memory");
            return -1;
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        s_call_t *c = &s->calls[i];
        if (!c->used)
            continue; /* a gap in the indexes: nothing came for it */
        if (!c->name_len) {
            s_fail(s, "tool call %zu has no function name", i);
            goto fail;
        }
        if (!c->id_len) {
            char id[32];
            int m = snprintf(id, sizeof id, "call_%zu", i);
            if (s_piece_append(&c->id, &c->id_len, id, (size_t) m, PROTO_WORKER_NAME_MAX) < 0)
                goto nomem;
        }
        if (!c->args_len && s_piece_append(&c->args, &c->args_len, "{}", 2, AGENT_OAI_ARGS_MAX) < 0)
            goto nomem;
        if (!agent_json_valid(c->args, c->args_len)) {
            if (strcmp(s->finish_reason, "length") == 0)
                s_fail(s, "tool call %zu (%s): its arguments were cut at the token limit (finish_reason length)",
                       i, c->name);
            else
                s_fail(s, "tool call %zu (%s): its arguments are not JSON", i, c->name);
            goto fail;
        }
        proto_worker_tool_call_t *t = &out->calls[k++];
        t->id = (proto_worker_str_t){c->id, c->id_len};
        t->name = (proto_worker_str_t){c->name, c->name_len};
        t->arguments = (proto_worker_str_t){c->args, c->args_len};
        c->id = c->name = c->args = NULL; /* moved */
        c->id_len = c->name_len = c->args_len = 0;
        c->used = false;
        out->n_calls = k;
    }
    /* No text and no call: only a model that chose to say nothing ("stop")
     * is an answer; anything else would reach the client as a silent empty
     * one (a reasoning model that spent its tokens thinking, a content
     * filter, a server that sent [DONE] alone). */
    if (k == 0 && !s->content_seen && strcmp(s->finish_reason, "stop") != 0) {
        if (!s->finish_reason[0])
            s_fail(s, "the stream ended with no text, no tool call and no finish_reason");
        else if (strcmp(s->finish_reason, "length") == 0)
            s_fail(s, "the answer reached the token limit (finish_reason length) before any text");
        else {
            char why[sizeof s->finish_reason];
            agent_oai_error_line(s->finish_reason, strlen(s->finish_reason), why, sizeof why, sizeof why - 1);
            s_fail(s, "the answer ended with finish_reason %s and no text", why);
        }
        goto fail;
    }
    if (s->has_total || s->has_prompt || s->has_completion) {
        out->has_tokens_used = true;
        out->tokens_used = s->has_total ? s->total_tokens : s->prompt_tokens + s->completion_tokens;
    }
    return 0;
nomem:
    s_fail(s, "out of memory");
fail:
    agent_completion_clear(out);
    return -1;
}

agent_oai_stream_t *agent_oai_stream_new(const agent_oai_cb_t *cb)
{
    agent_oai_stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (cb)
        s->cb = *cb;
    return s;
}

void agent_oai_stream_destroy(agent_oai_stream_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    agent_oai_stream_t *s = *self_p;
    *self_p = NULL;
    free(s->line);
    free(s->data);
    s_call_free(&s->elem);
    for (size_t i = 0; i < AGENT_OAI_TOOL_CALLS_MAX; i++)
        s_call_free(&s->calls[i]);
    free(s);
}

const char *agent_oai_stream_error(const agent_oai_stream_t *s)
{
    return s->err;
}

const char *agent_oai_stream_finish_reason(const agent_oai_stream_t *s)
{
    return s->finish_reason;
}

bool agent_oai_stream_emitted(const agent_oai_stream_t *s)
{
    return s->emitted;
}

bool agent_oai_stream_done(const agent_oai_stream_t *s)
{
    return s->done;
}

bool agent_oai_stream_saw_data(const agent_oai_stream_t *s)
{
    return s->saw_data;
}
