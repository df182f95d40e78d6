/* proto/worker_msg.c — CBOR encode and hardened decode of worker.cddl's turn
 * bodies (see worker_msg.h for what is accepted). */
#include "proto/worker_msg.h"
#include "proto/cbor_cursor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/cbor_canon.h"
#include "proto/utf8.h"

/* ================================================================ names */

const char *proto_worker_reason_str(proto_worker_reason_t r)
{
    switch (r) {
    case PROTO_WORKER_OK: return "ok";
    case PROTO_WORKER_TOO_LARGE: return "too_large";
    case PROTO_WORKER_BAD_CBOR: return "bad_cbor";
    case PROTO_WORKER_NOT_MAP: return "not_map";
    case PROTO_WORKER_UNKNOWN_TYPE: return "unknown_type";
    case PROTO_WORKER_MISSING_FIELD: return "missing_field";
    case PROTO_WORKER_WRONG_TYPE: return "wrong_type";
    case PROTO_WORKER_BAD_VALUE: return "bad_value";
    case PROTO_WORKER_TOO_LONG: return "too_long";
    case PROTO_WORKER_DUPLICATE_KEY: return "duplicate_key";
    case PROTO_WORKER_BAD_UTF8: return "bad_utf8";
    case PROTO_WORKER_NO_MEMORY: return "no_memory";
    }
    return "unknown";
}

static const char *const s_roles[] = {NULL, "system", "user", "assistant", "tool"};
static const char *const s_executors[] = {NULL, "worker", "router"};
static const char *const s_channels[] = {NULL, "ws", "webhook", "external_event", "comms"};
static const char *const s_envtypes[] = {NULL, "message", "request", "lifecycle",
                                         "incarnation_fenced_message"};
static const char *const s_codes[] = {NULL, "AGENT_INIT_FAILED", "PROVIDER_ERROR", "AGENT_ERROR"};
static const char *const s_events[] = {NULL,          "chunk",           "thinking",
                                       "chunk_reset", "tool_call",       "tool_result",
                                       "operator_status", "agent_event", "llm_request"};
static const char *const s_req_types[] = {NULL, "turn", "steer", "stop", "tool_result"};
static const char *const s_final_types[] = {NULL, "done", "stopped", "error"};

#define S_COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* names[v] for 1 <= v < n, else NULL. */
static const char *s_name(const char *const *names, size_t n, unsigned v)
{
    return v >= 1 && v < n ? names[v] : NULL;
}

const char *proto_worker_role_str(proto_worker_role_t r)
{
    const char *s = s_name(s_roles, S_COUNT(s_roles), r);
    return s ? s : "?";
}

const char *proto_worker_code_str(proto_worker_code_t c)
{
    const char *s = s_name(s_codes, S_COUNT(s_codes), c);
    return s ? s : "?";
}

const char *proto_worker_event_type_str(proto_worker_event_type_t t)
{
    const char *s = s_name(s_events, S_COUNT(s_events), t);
    return s ? s : "?";
}

/* ================================================================ encoding */

/* An encoder's state: the buffer and the first error met. */
typedef struct {
    proto_cbor_buf_t b;
    proto_worker_error_t err;
} s_enc_t;

static void s_enc_fail(s_enc_t *e, proto_worker_reason_t r, const char *field)
{
    if (e->err.reason == PROTO_WORKER_OK) {
        e->err.reason = r;
        e->err.field = field;
    }
}

static void s_put_key(s_enc_t *e, const char *key)
{
    proto_cbor_put_text(&e->b, key, strlen(key));
}

static void s_put_map(s_enc_t *e, size_t n)
{
    proto_cbor_put_head(&e->b, 5, n);
}

/* key: text, checked against `max` and UTF-8. A missing string is an error:
 * callers test optional strings before calling. */
static void s_put_str(s_enc_t *e, const char *key, proto_worker_str_t s, size_t max)
{
    if (!s.p && s.len == 0)
        s.p = "";
    if (!s.p) {
        s_enc_fail(e, PROTO_WORKER_BAD_VALUE, key);
        return;
    }
    if (s.len > max) {
        s_enc_fail(e, PROTO_WORKER_TOO_LONG, key);
        return;
    }
    if (!proto_utf8_valid((const uint8_t *) s.p, s.len)) {
        s_enc_fail(e, PROTO_WORKER_BAD_UTF8, key);
        return;
    }
    s_put_key(e, key);
    proto_cbor_put_text(&e->b, s.p, s.len);
}

/* key: one of names[] (the enum value v). */
static void s_put_enum(s_enc_t *e, const char *key, const char *const *names, size_t n, unsigned v)
{
    const char *s = s_name(names, n, v);
    if (!s) {
        s_enc_fail(e, PROTO_WORKER_BAD_VALUE, key);
        return;
    }
    s_put_key(e, key);
    proto_cbor_put_text(&e->b, s, strlen(s));
}

static void s_put_uint(s_enc_t *e, const char *key, uint64_t v)
{
    s_put_key(e, key);
    proto_cbor_put_head(&e->b, 0, v);
}

static void s_put_bool(s_enc_t *e, const char *key, bool v)
{
    s_put_key(e, key);
    uint8_t byte = v ? 0xf5 : 0xf4;
    proto_cbor_put_raw(&e->b, &byte, 1);
}

static void s_put_bstr(s_enc_t *e, const char *key, const uint8_t *p, size_t n)
{
    s_put_key(e, key);
    proto_cbor_put_bytes(&e->b, p, n);
}

static void s_put_tool_call(s_enc_t *e, const proto_worker_tool_call_t *c)
{
    s_put_map(e, 3);
    s_put_str(e, "id", c->id, PROTO_WORKER_NAME_MAX);
    s_put_str(e, "name", c->name, PROTO_WORKER_NAME_MAX);
    s_put_str(e, "arguments", c->arguments, PROTO_WORKER_TEXT_MAX);
}

static void s_put_chat_msg(s_enc_t *e, const proto_worker_chat_msg_t *m)
{
    bool calls = m->has_tool_calls || m->n_tool_calls > 0;
    if (m->n_tool_calls > PROTO_WORKER_TOOL_CALLS_MAX) {
        s_enc_fail(e, PROTO_WORKER_TOO_LONG, "tool_calls");
        return;
    }
    s_put_map(e, 2 + (m->tool_call_id.p != NULL) + calls);
    s_put_enum(e, "role", s_roles, S_COUNT(s_roles), m->role);
    s_put_str(e, "content", m->content, PROTO_WORKER_TEXT_MAX);
    if (m->tool_call_id.p)
        s_put_str(e, "tool_call_id", m->tool_call_id, PROTO_WORKER_NAME_MAX);
    if (calls) {
        s_put_key(e, "tool_calls");
        proto_cbor_put_head(&e->b, 4, m->n_tool_calls);
        for (size_t i = 0; i < m->n_tool_calls; i++)
            s_put_tool_call(e, &m->tool_calls[i]);
    }
}

static void s_put_turn(s_enc_t *e, const proto_worker_turn_t *t)
{
    if (t->session_id.len < 1) {
        s_enc_fail(e, PROTO_WORKER_BAD_VALUE, "session_id");
        return;
    }
    if (t->n_history > PROTO_WORKER_HISTORY_MAX) {
        s_enc_fail(e, PROTO_WORKER_TOO_LONG, "history");
        return;
    }
    if (t->n_tools > PROTO_WORKER_TOOLS_MAX) {
        s_enc_fail(e, PROTO_WORKER_TOO_LONG, "tools");
        return;
    }
    s_put_map(e, 8);
    s_put_key(e, "type");
    proto_cbor_put_text(&e->b, "turn", 4);
    s_put_bstr(e, "turn_id", t->turn_id, PROTO_UUID_LEN);
    s_put_str(e, "session_id", t->session_id, PROTO_WORKER_SESSION_ID_MAX);
    s_put_key(e, "message");
    s_put_chat_msg(e, &t->message);
    s_put_key(e, "history");
    proto_cbor_put_head(&e->b, 4, t->n_history);
    for (size_t i = 0; i < t->n_history; i++)
        s_put_chat_msg(e, &t->history[i]);
    s_put_key(e, "tools");
    proto_cbor_put_head(&e->b, 4, t->n_tools);
    for (size_t i = 0; i < t->n_tools; i++) {
        const proto_worker_tool_spec_t *s = &t->tools[i];
        s_put_map(e, 4);
        s_put_str(e, "name", s->name, PROTO_WORKER_NAME_MAX);
        s_put_str(e, "description", s->description, PROTO_WORKER_TEXT_MAX);
        s_put_str(e, "parameters", s->parameters, PROTO_WORKER_TEXT_MAX);
        s_put_enum(e, "executor", s_executors, S_COUNT(s_executors), s->executor);
    }
    s_put_key(e, "limits");
    s_put_map(e, 2);
    s_put_uint(e, "max_tool_iterations", t->max_tool_iterations);
    s_put_uint(e, "turn_timeout_s", t->turn_timeout_s);
    const proto_worker_origin_t *o = &t->origin;
    s_put_key(e, "origin");
    s_put_map(e, 1 + o->has_envelope_id + o->has_from + (o->envelope_type != PROTO_WORKER_ENVTYPE_NONE));
    s_put_enum(e, "channel", s_channels, S_COUNT(s_channels), o->channel);
    if (o->has_envelope_id)
        s_put_bstr(e, "envelope_id", o->envelope_id, PROTO_UUID_LEN);
    if (o->has_from)
        s_put_bstr(e, "from", o->from, PROTO_WORKER_PEER_KEY_LEN);
    if (o->envelope_type != PROTO_WORKER_ENVTYPE_NONE)
        s_put_enum(e, "envelope_type", s_envtypes, S_COUNT(s_envtypes), o->envelope_type);
}

static void s_put_event(s_enc_t *e, const proto_worker_event_t *ev)
{
    switch (ev->type) {
    case PROTO_WORKER_EV_CHUNK:
    case PROTO_WORKER_EV_THINKING:
        s_put_map(e, 2);
        s_put_enum(e, "type", s_events, S_COUNT(s_events), ev->type);
        s_put_str(e, "text", ev->text, PROTO_WORKER_TEXT_MAX);
        return;
    case PROTO_WORKER_EV_CHUNK_RESET:
        s_put_map(e, 1);
        s_put_enum(e, "type", s_events, S_COUNT(s_events), ev->type);
        return;
    case PROTO_WORKER_EV_TOOL_CALL:
        s_put_map(e, 2);
        s_put_enum(e, "type", s_events, S_COUNT(s_events), ev->type);
        s_put_key(e, "call");
        s_put_tool_call(e, &ev->call);
        return;
    case PROTO_WORKER_EV_TOOL_RESULT:
        s_put_map(e, 4);
        s_put_enum(e, "type", s_events, S_COUNT(s_events), ev->type);
        s_put_str(e, "id", ev->id, PROTO_WORKER_NAME_MAX);
        s_put_str(e, "result", ev->result, PROTO_WORKER_TEXT_MAX);
        s_put_bool(e, "is_error", ev->is_error);
        return;
    case PROTO_WORKER_EV_OPERATOR_STATUS:
        s_put_map(e, 2);
        s_put_enum(e, "type", s_events, S_COUNT(s_events), ev->type);
        s_put_str(e, "status", ev->text, PROTO_WORKER_TEXT_MAX);
        return;
    case PROTO_WORKER_EV_AGENT_EVENT:
        s_put_map(e, 3);
        s_put_enum(e, "type", s_events, S_COUNT(s_events), ev->type);
        s_put_str(e, "name", ev->name, PROTO_WORKER_NAME_MAX);
        s_put_str(e, "data", ev->data, PROTO_WORKER_TEXT_MAX);
        return;
    case PROTO_WORKER_EV_LLM_REQUEST:
        s_put_map(e, 3 + (ev->model.p != NULL));
        s_put_enum(e, "type", s_events, S_COUNT(s_events), ev->type);
        s_put_str(e, "provider", ev->provider, PROTO_WORKER_NAME_MAX);
        if (ev->model.p)
            s_put_str(e, "model", ev->model, PROTO_WORKER_NAME_MAX);
        s_put_uint(e, "iteration", ev->iteration);
        return;
    }
    s_enc_fail(e, PROTO_WORKER_BAD_VALUE, "event");
}

static void s_put_final(s_enc_t *e, const proto_worker_final_t *f)
{
    switch (f->type) {
    case PROTO_WORKER_FINAL_DONE:
        s_put_map(e, 4 + f->has_tokens_used + f->has_cost_usd);
        s_put_enum(e, "type", s_final_types, S_COUNT(s_final_types), f->type);
        s_put_bstr(e, "turn_id", f->turn_id, PROTO_UUID_LEN);
        s_put_str(e, "full_response", f->full_response, PROTO_WORKER_TEXT_MAX);
        s_put_uint(e, "tool_iterations", f->tool_iterations);
        if (f->has_tokens_used)
            s_put_uint(e, "tokens_used", f->tokens_used);
        if (f->has_cost_usd) {
            if (!isfinite(f->cost_usd))
                s_enc_fail(e, PROTO_WORKER_BAD_VALUE, "cost_usd");
            s_put_key(e, "cost_usd");
            proto_cbor_put_float(&e->b, f->cost_usd);
        }
        return;
    case PROTO_WORKER_FINAL_STOPPED:
        s_put_map(e, 2 + (f->message.p != NULL));
        s_put_enum(e, "type", s_final_types, S_COUNT(s_final_types), f->type);
        s_put_bstr(e, "turn_id", f->turn_id, PROTO_UUID_LEN);
        if (f->message.p)
            s_put_str(e, "message", f->message, PROTO_WORKER_TEXT_MAX);
        return;
    case PROTO_WORKER_FINAL_ERROR:
        s_put_map(e, 4);
        s_put_enum(e, "type", s_final_types, S_COUNT(s_final_types), f->type);
        s_put_bstr(e, "turn_id", f->turn_id, PROTO_UUID_LEN);
        s_put_enum(e, "code", s_codes, S_COUNT(s_codes), f->code);
        s_put_str(e, "message", f->message, PROTO_WORKER_TEXT_MAX);
        return;
    }
    s_enc_fail(e, PROTO_WORKER_BAD_VALUE, "type");
}

/* Hands the buffer out, or reports the first failure. */
static int s_enc_finish(s_enc_t *e, uint8_t **out, size_t *len, proto_worker_error_t *err)
{
    if (e->err.reason == PROTO_WORKER_OK && e->b.failed != PROTO_CBOR_OK)
        s_enc_fail(e, e->b.failed == PROTO_CBOR_TOO_LARGE ? PROTO_WORKER_TOO_LARGE : PROTO_WORKER_NO_MEMORY,
                   "");
    if (e->err.reason != PROTO_WORKER_OK) {
        proto_cbor_buf_free(&e->b);
        *out = NULL;
        *len = 0;
        *err = e->err;
        return -1;
    }
    *out = proto_cbor_buf_take(&e->b, len);
    if (!*out) {
        *len = 0;
        err->reason = PROTO_WORKER_NO_MEMORY;
        err->field = "";
        return -1;
    }
    err->reason = PROTO_WORKER_OK;
    err->field = "";
    return 0;
}

static void s_enc_init(s_enc_t *e)
{
    proto_cbor_buf_init(&e->b, PROTO_WORKER_BODY_MAX);
    e->err.reason = PROTO_WORKER_OK;
    e->err.field = "";
}

int proto_worker_request_encode(const proto_worker_request_t *req, uint8_t **out, size_t *len,
                                proto_worker_error_t *err)
{
    s_enc_t e;
    s_enc_init(&e);
    switch (req->type) {
    case PROTO_WORKER_REQ_TURN:
        s_put_turn(&e, &req->turn);
        break;
    case PROTO_WORKER_REQ_STEER:
    case PROTO_WORKER_REQ_STOP: {
        const proto_worker_control_t *c = &req->control;
        bool content = req->type == PROTO_WORKER_REQ_STEER;
        s_put_map(&e, 2 + content);
        s_put_enum(&e, "type", s_req_types, S_COUNT(s_req_types), req->type);
        s_put_bstr(&e, "turn_id", c->turn_id, PROTO_UUID_LEN);
        if (content)
            s_put_str(&e, "content", c->content, PROTO_WORKER_TEXT_MAX);
        break;
    }
    case PROTO_WORKER_REQ_TOOL_RESULT: {
        const proto_worker_tool_result_t *r = &req->tool_result;
        s_put_map(&e, 5);
        s_put_enum(&e, "type", s_req_types, S_COUNT(s_req_types), req->type);
        s_put_bstr(&e, "turn_id", r->turn_id, PROTO_UUID_LEN);
        s_put_str(&e, "id", r->id, PROTO_WORKER_NAME_MAX);
        s_put_str(&e, "result", r->result, PROTO_WORKER_TEXT_MAX);
        s_put_bool(&e, "is_error", r->is_error);
        break;
    }
    default:
        s_enc_fail(&e, PROTO_WORKER_BAD_VALUE, "type");
    }
    return s_enc_finish(&e, out, len, err);
}

int proto_worker_partial_encode(const proto_worker_partial_t *p, uint8_t **out, size_t *len,
                                proto_worker_error_t *err)
{
    s_enc_t e;
    s_enc_init(&e);
    s_put_map(&e, 4);
    s_put_key(&e, "type");
    proto_cbor_put_text(&e.b, "partial", 7);
    s_put_bstr(&e, "turn_id", p->turn_id, PROTO_UUID_LEN);
    s_put_uint(&e, "seq", p->seq);
    s_put_key(&e, "event");
    s_put_event(&e, &p->event);
    return s_enc_finish(&e, out, len, err);
}

int proto_worker_final_encode(const proto_worker_final_t *f, uint8_t **out, size_t *len,
                              proto_worker_error_t *err)
{
    s_enc_t e;
    s_enc_init(&e);
    s_put_final(&e, f);
    return s_enc_finish(&e, out, len, err);
}

int proto_worker_reply_encode(const proto_worker_reply_t *rep, uint8_t **out, size_t *len,
                              proto_worker_error_t *err)
{
    if (rep->type == PROTO_WORKER_REPLY_PARTIAL)
        return proto_worker_partial_encode(&rep->partial, out, len, err);
    if (rep->type == PROTO_WORKER_REPLY_FINAL)
        return proto_worker_final_encode(&rep->final, out, len, err);
    *out = NULL;
    *len = 0;
    err->reason = PROTO_WORKER_BAD_VALUE;
    err->field = "type";
    return -1;
}

/* ================================================================ decoding */

/* A decoder's first error; every s_in_* returns 0 or -1 after recording it. */
typedef struct {
    proto_worker_error_t err;
} s_dec_t;

static int s_dec_fail(s_dec_t *d, proto_worker_reason_t r, const char *field)
{
    if (d->err.reason == PROTO_WORKER_OK) {
        d->err.reason = r;
        d->err.field = field;
    }
    return -1;
}

/* Most keys any map here names. */
#define S_KEYS_MAX 8

/* A required value: where its item starts (NULL: absent). */
static int s_need(s_dec_t *d, const void *v, const char *key)
{
    return v ? 0 : s_dec_fail(d, PROTO_WORKER_MISSING_FIELD, key);
}

static void s_str_free(proto_worker_str_t *s)
{
    free((void *) s->p);
    s->p = NULL;
    s->len = 0;
}

void proto_worker_tool_call_clear(proto_worker_tool_call_t *c)
{
    if (!c)
        return;
    s_str_free(&c->id);
    s_str_free(&c->name);
    s_str_free(&c->arguments);
}

void proto_worker_chat_msg_clear(proto_worker_chat_msg_t *m)
{
    if (!m)
        return;
    s_str_free(&m->content);
    s_str_free(&m->tool_call_id);
    for (size_t i = 0; i < m->n_tool_calls; i++)
        proto_worker_tool_call_clear(&m->tool_calls[i]);
    free(m->tool_calls);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------- decoding, in place
 *
 * Every body is read with proto/cbor_cursor.h, never as a libcbor tree: a
 * turn request carries up to PROTO_WORKER_HISTORY_MAX messages, and a tree
 * costs an allocation per item and per string; replies come several per
 * turn, on the router's loop thread. A value is named by where its item
 * starts in the buffer (NULL: absent); every text string was checked as
 * UTF-8 by proto_cbor_check (s_in_load) before any of this runs. */

/* The body being read: its end bounds every cursor. */
typedef struct {
    s_dec_t *d;
    const uint8_t *end;
} s_in_t;

/* The head of the item at `at`; *next (optional) is where the item's
 * contents (or the next item, for a scalar or string) begin. */
static int s_in_head(const s_in_t *in, const uint8_t *at, proto_cbor_head_t *h, const uint8_t **next)
{
    proto_cbor_cursor_t c = proto_cbor_cursor_at(at, in->end);
    if (proto_cbor_cursor_head(&c, h) < 0)
        return -1;
    if (next)
        *next = c.p;
    return 0;
}

/* Finds keys[0..n) in the map at `at`: vals[k] is where the value of
 * keys[k] starts, or NULL. Every key must be text; a known key twice is
 * refused; unknown keys are skipped. */
static int s_in_fields(const s_in_t *in, const uint8_t *at, const char *field, const char *const *keys,
                       size_t n, const uint8_t **vals)
{
    proto_cbor_head_t h;
    const uint8_t *next;
    if (!at || s_in_head(in, at, &h, &next) < 0 || h.major != 5)
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, field);
    for (size_t k = 0; k < n; k++)
        vals[k] = NULL;
    proto_cbor_cursor_t c = proto_cbor_cursor_at(next, in->end);
    for (uint64_t i = 0; i < h.arg; i++) {
        proto_cbor_head_t key;
        if (proto_cbor_cursor_head(&c, &key) < 0 || key.major != 3)
            return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, field);
        const uint8_t *val = c.p;
        for (size_t k = 0; k < n; k++) {
            if (key.arg != strlen(keys[k]) || memcmp(key.data, keys[k], key.arg) != 0)
                continue;
            if (vals[k])
                return s_dec_fail(in->d, PROTO_WORKER_DUPLICATE_KEY, keys[k]);
            vals[k] = val;
            break;
        }
        if (proto_cbor_cursor_skip(&c) < 0)
            return s_dec_fail(in->d, PROTO_WORKER_BAD_CBOR, field);
    }
    return 0;
}

/* The text at `at`, 0..max bytes, copied to the heap with a NUL. */
static int s_in_str(const s_in_t *in, const uint8_t *at, const char *key, size_t max, proto_worker_str_t *out)
{
    proto_cbor_head_t h;
    if (s_need(in->d, at, key) < 0)
        return -1;
    if (s_in_head(in, at, &h, NULL) < 0 || h.major != 3)
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, key);
    if (h.arg > max)
        return s_dec_fail(in->d, PROTO_WORKER_TOO_LONG, key);
    char *copy = malloc((size_t) h.arg + 1);
    if (!copy)
        return s_dec_fail(in->d, PROTO_WORKER_NO_MEMORY, key);
    if (h.arg > 0)
        memcpy(copy, h.data, (size_t) h.arg);
    copy[h.arg] = '\0';
    out->p = copy;
    out->len = (size_t) h.arg;
    return 0;
}

static int s_in_opt_str(const s_in_t *in, const uint8_t *at, const char *key, size_t max,
                        proto_worker_str_t *out)
{
    return at ? s_in_str(in, at, key, max, out) : 0;
}

/* Text that must be one of names[1..n); *out is its index. */
static int s_in_enum(const s_in_t *in, const uint8_t *at, const char *key, const char *const *names,
                     size_t n, unsigned *out)
{
    proto_cbor_head_t h;
    if (s_need(in->d, at, key) < 0)
        return -1;
    if (s_in_head(in, at, &h, NULL) < 0 || h.major != 3)
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, key);
    for (size_t i = 1; i < n; i++)
        if (h.arg == strlen(names[i]) && memcmp(h.data, names[i], h.arg) == 0) {
            *out = (unsigned) i;
            return 0;
        }
    return s_dec_fail(in->d, PROTO_WORKER_BAD_VALUE, key);
}

static int s_in_uint(const s_in_t *in, const uint8_t *at, const char *key, uint64_t *out)
{
    proto_cbor_head_t h;
    if (s_need(in->d, at, key) < 0)
        return -1;
    if (s_in_head(in, at, &h, NULL) < 0 || h.major != 0)
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, key);
    *out = h.arg;
    return 0;
}

/* A byte string of exactly n bytes. */
static int s_in_bstr(const s_in_t *in, const uint8_t *at, const char *key, uint8_t *out, size_t n)
{
    proto_cbor_head_t h;
    if (s_need(in->d, at, key) < 0)
        return -1;
    if (s_in_head(in, at, &h, NULL) < 0 || h.major != 2)
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, key);
    if (h.arg != n)
        return s_dec_fail(in->d, PROTO_WORKER_BAD_VALUE, key);
    memcpy(out, h.data, n);
    return 0;
}

static int s_in_bool(const s_in_t *in, const uint8_t *at, const char *key, bool *out)
{
    proto_cbor_head_t h;
    if (s_need(in->d, at, key) < 0)
        return -1;
    if (s_in_head(in, at, &h, NULL) < 0 || h.major != 7 || (h.ai != 20 && h.ai != 21))
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, key);
    *out = h.ai == 21;
    return 0;
}

/* IEEE 754 binary16 (a CBOR half float) as a double. */
static double s_half(uint16_t v)
{
    int exp = (v >> 10) & 0x1f;
    double mant = v & 0x3ff;
    double x = exp == 0    ? ldexp(mant, -24)
               : exp == 31 ? (mant == 0 ? INFINITY : NAN)
                           : ldexp(mant + 1024, exp - 25);
    return v & 0x8000 ? -x : x;
}

/* A float of any width (a simple value is not one), finite. */
static int s_in_float(const s_in_t *in, const uint8_t *at, const char *key, double *out)
{
    proto_cbor_head_t h;
    if (s_need(in->d, at, key) < 0)
        return -1;
    if (s_in_head(in, at, &h, NULL) < 0 || h.major != 7 || h.ai < 25 || h.ai > 27)
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, key);
    if (h.ai == 25) {
        *out = s_half((uint16_t) h.arg);
    } else if (h.ai == 26) {
        uint32_t bits = (uint32_t) h.arg;
        float f;
        memcpy(&f, &bits, sizeof f);
        *out = f;
    } else {
        memcpy(out, &h.arg, sizeof *out);
    }
    if (!isfinite(*out))
        return s_dec_fail(in->d, PROTO_WORKER_BAD_VALUE, key);
    return 0;
}

/* An array of at most max entries at `at`: *n is its size, *c a cursor at
 * its first entry (each read with the cursor's p, then skipped). */
static int s_in_array(const s_in_t *in, const uint8_t *at, const char *key, size_t max, size_t *n,
                      proto_cbor_cursor_t *c)
{
    proto_cbor_head_t h;
    const uint8_t *next;
    if (s_need(in->d, at, key) < 0)
        return -1;
    if (s_in_head(in, at, &h, &next) < 0 || h.major != 4)
        return s_dec_fail(in->d, PROTO_WORKER_WRONG_TYPE, key);
    if (h.arg > max)
        return s_dec_fail(in->d, PROTO_WORKER_TOO_LONG, key);
    *n = (size_t) h.arg;
    *c = proto_cbor_cursor_at(next, in->end);
    return 0;
}

/* The entry at c->p, then c moves past it. */
static const uint8_t *s_in_next(const s_in_t *in, proto_cbor_cursor_t *c, const char *key)
{
    const uint8_t *at = c->p;
    if (proto_cbor_cursor_skip(c) < 0) {
        s_dec_fail(in->d, PROTO_WORKER_BAD_CBOR, key);
        return NULL;
    }
    return at;
}

static int s_in_tool_call(const s_in_t *in, const uint8_t *at, proto_worker_tool_call_t *c)
{
    static const char *const keys[] = {"id", "name", "arguments"};
    const uint8_t *f[S_KEYS_MAX];
    if (s_in_fields(in, at, "call", keys, 3, f) < 0 ||
        s_in_str(in, f[0], "id", PROTO_WORKER_NAME_MAX, &c->id) < 0 ||
        s_in_str(in, f[1], "name", PROTO_WORKER_NAME_MAX, &c->name) < 0 ||
        s_in_str(in, f[2], "arguments", PROTO_WORKER_TEXT_MAX, &c->arguments) < 0)
        return -1;
    return 0;
}

static int s_in_chat_msg(const s_in_t *in, const uint8_t *at, const char *field, proto_worker_chat_msg_t *m)
{
    static const char *const keys[] = {"role", "content", "tool_call_id", "tool_calls"};
    const uint8_t *f[S_KEYS_MAX];
    unsigned role = 0;
    if (s_need(in->d, at, field) < 0 ||
        s_in_fields(in, at, field, keys, 4, f) < 0 ||
        s_in_enum(in, f[0], "role", s_roles, S_COUNT(s_roles), &role) < 0 ||
        s_in_str(in, f[1], "content", PROTO_WORKER_TEXT_MAX, &m->content) < 0 ||
        s_in_opt_str(in, f[2], "tool_call_id", PROTO_WORKER_NAME_MAX, &m->tool_call_id) < 0)
        return -1;
    m->role = (proto_worker_role_t) role;
    if (!f[3])
        return 0;
    size_t n = 0;
    proto_cbor_cursor_t c;
    if (s_in_array(in, f[3], "tool_calls", PROTO_WORKER_TOOL_CALLS_MAX, &n, &c) < 0)
        return -1;
    m->has_tool_calls = true;
    if (n == 0)
        return 0;
    m->tool_calls = calloc(n, sizeof *m->tool_calls);
    if (!m->tool_calls)
        return s_dec_fail(in->d, PROTO_WORKER_NO_MEMORY, "tool_calls");
    m->n_tool_calls = n;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *e = s_in_next(in, &c, "tool_calls");
        if (!e || s_in_tool_call(in, e, &m->tool_calls[i]) < 0)
            return -1;
    }
    return 0;
}

static int s_in_turn(const s_in_t *in, const uint8_t *const *f, proto_worker_turn_t *t)
{
    /* f: turn_id, session_id, message, history, tools, limits, origin */
    if (s_in_bstr(in, f[0], "turn_id", t->turn_id, PROTO_UUID_LEN) < 0 ||
        s_in_str(in, f[1], "session_id", PROTO_WORKER_SESSION_ID_MAX, &t->session_id) < 0)
        return -1;
    if (t->session_id.len < 1)
        return s_dec_fail(in->d, PROTO_WORKER_BAD_VALUE, "session_id");
    if (s_in_chat_msg(in, f[2], "message", &t->message) < 0)
        return -1;

    size_t n = 0;
    proto_cbor_cursor_t c;
    if (s_in_array(in, f[3], "history", PROTO_WORKER_HISTORY_MAX, &n, &c) < 0)
        return -1;
    if (n > 0) {
        t->history = calloc(n, sizeof *t->history);
        if (!t->history)
            return s_dec_fail(in->d, PROTO_WORKER_NO_MEMORY, "history");
        t->n_history = n;
        for (size_t i = 0; i < n; i++) {
            const uint8_t *e = s_in_next(in, &c, "history");
            if (!e || s_in_chat_msg(in, e, "history", &t->history[i]) < 0)
                return -1;
        }
    }

    if (s_in_array(in, f[4], "tools", PROTO_WORKER_TOOLS_MAX, &n, &c) < 0)
        return -1;
    if (n > 0) {
        t->tools = calloc(n, sizeof *t->tools);
        if (!t->tools)
            return s_dec_fail(in->d, PROTO_WORKER_NO_MEMORY, "tools");
        t->n_tools = n;
        static const char *const keys[] = {"name", "description", "parameters", "executor"};
        for (size_t i = 0; i < n; i++) {
            proto_worker_tool_spec_t *s = &t->tools[i];
            const uint8_t *g[S_KEYS_MAX];
            const uint8_t *e = s_in_next(in, &c, "tools");
            unsigned ex = 0;
            if (!e || s_in_fields(in, e, "tools", keys, 4, g) < 0 ||
                s_in_str(in, g[0], "name", PROTO_WORKER_NAME_MAX, &s->name) < 0 ||
                s_in_str(in, g[1], "description", PROTO_WORKER_TEXT_MAX, &s->description) < 0 ||
                s_in_str(in, g[2], "parameters", PROTO_WORKER_TEXT_MAX, &s->parameters) < 0 ||
                s_in_enum(in, g[3], "executor", s_executors, S_COUNT(s_executors), &ex) < 0)
                return -1;
            s->executor = (proto_worker_executor_t) ex;
        }
    }

    static const char *const lkeys[] = {"max_tool_iterations", "turn_timeout_s"};
    const uint8_t *l[S_KEYS_MAX];
    if (s_need(in->d, f[5], "limits") < 0 ||
        s_in_fields(in, f[5], "limits", lkeys, 2, l) < 0 ||
        s_in_uint(in, l[0], "max_tool_iterations", &t->max_tool_iterations) < 0 ||
        s_in_uint(in, l[1], "turn_timeout_s", &t->turn_timeout_s) < 0)
        return -1;

    static const char *const okeys[] = {"channel", "envelope_id", "from", "envelope_type"};
    const uint8_t *o[S_KEYS_MAX];
    proto_worker_origin_t *org = &t->origin;
    unsigned ch = 0, et = 0;
    if (s_need(in->d, f[6], "origin") < 0 ||
        s_in_fields(in, f[6], "origin", okeys, 4, o) < 0 ||
        s_in_enum(in, o[0], "channel", s_channels, S_COUNT(s_channels), &ch) < 0)
        return -1;
    org->channel = (proto_worker_channel_t) ch;
    if (o[1]) {
        if (s_in_bstr(in, o[1], "envelope_id", org->envelope_id, PROTO_UUID_LEN) < 0)
            return -1;
        org->has_envelope_id = true;
    }
    if (o[2]) {
        if (s_in_bstr(in, o[2], "from", org->from, PROTO_WORKER_PEER_KEY_LEN) < 0)
            return -1;
        org->has_from = true;
    }
    if (o[3]) {
        if (s_in_enum(in, o[3], "envelope_type", s_envtypes, S_COUNT(s_envtypes), &et) < 0)
            return -1;
        org->envelope_type = (proto_worker_envtype_t) et;
    }
    return 0;
}

void proto_worker_request_clear(proto_worker_request_t *req)
{
    if (!req)
        return;
    proto_worker_turn_t *t = &req->turn;
    s_str_free(&t->session_id);
    proto_worker_chat_msg_clear(&t->message);
    for (size_t i = 0; i < t->n_history; i++)
        proto_worker_chat_msg_clear(&t->history[i]);
    free(t->history);
    for (size_t i = 0; i < t->n_tools; i++) {
        s_str_free(&t->tools[i].name);
        s_str_free(&t->tools[i].description);
        s_str_free(&t->tools[i].parameters);
    }
    free(t->tools);
    s_str_free(&req->control.content);
    s_str_free(&req->tool_result.id);
    s_str_free(&req->tool_result.result);
    memset(req, 0, sizeof *req);
}

/* The body's size, its CBOR (proto_cbor_check, UTF-8 included) and a map
 * at the root. */
static int s_in_load(s_dec_t *d, const uint8_t *p, size_t len)
{
    static const proto_cbor_limits_t lim = {
        .max_depth = PROTO_WORKER_DEPTH_MAX, .allow_indefinite = 0, .max_items = PROTO_WORKER_ITEMS_MAX};
    if (len > PROTO_WORKER_BODY_MAX)
        return s_dec_fail(d, PROTO_WORKER_TOO_LARGE, "");
    proto_cbor_reason_t cr = PROTO_CBOR_OK;
    if (proto_cbor_check(p, len, &lim, &cr) != 0)
        return s_dec_fail(d, cr == PROTO_CBOR_BAD_UTF8 ? PROTO_WORKER_BAD_UTF8 : PROTO_WORKER_BAD_CBOR, "");
    if (len == 0 || p[0] >> 5 != 5)
        return s_dec_fail(d, PROTO_WORKER_NOT_MAP, "");
    return 0;
}

/* s_in_load, then the root's `type` as one of names[1..n) (else
 * UNKNOWN_TYPE): what every body is read by first. */
static int s_in_root_type(s_in_t *in, const uint8_t *p, size_t len, const char *const *names,
                          size_t n, unsigned *type)
{
    static const char *const tkeys[] = {"type"};
    const uint8_t *tf[1];
    if (s_in_load(in->d, p, len) < 0 || s_in_fields(in, p, "", tkeys, 1, tf) < 0)
        return -1;
    if (!tf[0] || s_in_enum(in, tf[0], "type", names, n, type) < 0) {
        in->d->err.reason = PROTO_WORKER_UNKNOWN_TYPE;
        in->d->err.field = "type";
        return -1;
    }
    return 0;
}

int proto_worker_request_decode(const uint8_t *p, size_t len, proto_worker_request_t *out,
                                proto_worker_error_t *err)
{
    s_dec_t d = {{PROTO_WORKER_OK, ""}};
    s_in_t in = {&d, p + len};
    unsigned type = 0;
    memset(out, 0, sizeof *out);
    if (s_in_root_type(&in, p, len, s_req_types, S_COUNT(s_req_types), &type) < 0)
        goto fail;
    out->type = (proto_worker_req_type_t) type;
    if (out->type == PROTO_WORKER_REQ_TURN) {
        static const char *const keys[] = {"turn_id", "session_id", "message", "history",
                                           "tools",   "limits",     "origin"};
        const uint8_t *f[S_KEYS_MAX];
        if (s_in_fields(&in, p, "", keys, 7, f) < 0 || s_in_turn(&in, f, &out->turn) < 0)
            goto fail;
    }
    switch (out->type) {
    case PROTO_WORKER_REQ_TURN:
        break; /* read above */
    case PROTO_WORKER_REQ_STEER:
    case PROTO_WORKER_REQ_STOP: {
        static const char *const keys[] = {"turn_id", "content"};
        const uint8_t *f[S_KEYS_MAX];
        if (s_in_fields(&in, p, "", keys, 2, f) < 0 ||
            s_in_bstr(&in, f[0], "turn_id", out->control.turn_id, PROTO_UUID_LEN) < 0)
            goto fail;
        /* A steer without content has nothing to steer with. */
        if (out->type == PROTO_WORKER_REQ_STEER
                ? s_in_str(&in, f[1], "content", PROTO_WORKER_TEXT_MAX, &out->control.content) < 0
                : s_in_opt_str(&in, f[1], "content", PROTO_WORKER_TEXT_MAX, &out->control.content) < 0)
            goto fail;
        break;
    }
    case PROTO_WORKER_REQ_TOOL_RESULT: {
        static const char *const keys[] = {"turn_id", "id", "result", "is_error"};
        const uint8_t *f[S_KEYS_MAX];
        proto_worker_tool_result_t *r = &out->tool_result;
        if (s_in_fields(&in, p, "", keys, 4, f) < 0 ||
            s_in_bstr(&in, f[0], "turn_id", r->turn_id, PROTO_UUID_LEN) < 0 ||
            s_in_str(&in, f[1], "id", PROTO_WORKER_NAME_MAX, &r->id) < 0 ||
            s_in_str(&in, f[2], "result", PROTO_WORKER_TEXT_MAX, &r->result) < 0 ||
            s_in_bool(&in, f[3], "is_error", &r->is_error) < 0)
            goto fail;
        break;
    }
    }
    *err = d.err;
    return 0;
fail:
    proto_worker_request_clear(out);
    *err = d.err;
    return -1;
}

static void s_event_clear(proto_worker_event_t *ev)
{
    s_str_free(&ev->text);
    proto_worker_tool_call_clear(&ev->call);
    s_str_free(&ev->id);
    s_str_free(&ev->result);
    s_str_free(&ev->name);
    s_str_free(&ev->data);
    s_str_free(&ev->provider);
    s_str_free(&ev->model);
}

void proto_worker_reply_clear(proto_worker_reply_t *rep)
{
    if (!rep)
        return;
    s_event_clear(&rep->partial.event);
    s_str_free(&rep->final.full_response);
    s_str_free(&rep->final.message);
    memset(rep, 0, sizeof *rep);
}

static int s_in_event(const s_in_t *in, const uint8_t *at, proto_worker_event_t *ev)
{
    static const char *const keys[] = {"type", "text",   "call",     "id",    "result",
                                       "is_error", "status", "name"};
    static const char *const keys2[] = {"data", "provider", "model", "iteration"};
    const uint8_t *f[S_KEYS_MAX], *g[S_KEYS_MAX];
    unsigned type = 0;
    if (s_need(in->d, at, "event") < 0 || s_in_fields(in, at, "event", keys, 8, f) < 0 ||
        s_in_fields(in, at, "event", keys2, 4, g) < 0)
        return -1;
    if (!f[0] || s_in_enum(in, f[0], "type", s_events, S_COUNT(s_events), &type) < 0) {
        in->d->err.reason = PROTO_WORKER_UNKNOWN_TYPE;
        in->d->err.field = "event";
        return -1;
    }
    ev->type = (proto_worker_event_type_t) type;
    switch (ev->type) {
    case PROTO_WORKER_EV_CHUNK:
    case PROTO_WORKER_EV_THINKING:
        return s_in_str(in, f[1], "text", PROTO_WORKER_TEXT_MAX, &ev->text);
    case PROTO_WORKER_EV_CHUNK_RESET:
        return 0;
    case PROTO_WORKER_EV_TOOL_CALL:
        return s_need(in->d, f[2], "call") < 0 ? -1 : s_in_tool_call(in, f[2], &ev->call);
    case PROTO_WORKER_EV_TOOL_RESULT:
        if (s_in_str(in, f[3], "id", PROTO_WORKER_NAME_MAX, &ev->id) < 0 ||
            s_in_str(in, f[4], "result", PROTO_WORKER_TEXT_MAX, &ev->result) < 0 ||
            s_in_bool(in, f[5], "is_error", &ev->is_error) < 0)
            return -1;
        return 0;
    case PROTO_WORKER_EV_OPERATOR_STATUS:
        return s_in_str(in, f[6], "status", PROTO_WORKER_TEXT_MAX, &ev->text);
    case PROTO_WORKER_EV_AGENT_EVENT:
        if (s_in_str(in, f[7], "name", PROTO_WORKER_NAME_MAX, &ev->name) < 0 ||
            s_in_str(in, g[0], "data", PROTO_WORKER_TEXT_MAX, &ev->data) < 0)
            return -1;
        return 0;
    case PROTO_WORKER_EV_LLM_REQUEST:
        if (s_in_str(in, g[1], "provider", PROTO_WORKER_NAME_MAX, &ev->provider) < 0 ||
            s_in_opt_str(in, g[2], "model", PROTO_WORKER_NAME_MAX, &ev->model) < 0 ||
            s_in_uint(in, g[3], "iteration", &ev->iteration) < 0)
            return -1;
        return 0;
    }
    return s_dec_fail(in->d, PROTO_WORKER_UNKNOWN_TYPE, "event");
}

int proto_worker_reply_decode(const uint8_t *p, size_t len, proto_worker_reply_t *out,
                              proto_worker_error_t *err)
{
    static const char *const types[] = {NULL, "partial", "done", "stopped", "error"};
    s_dec_t d = {{PROTO_WORKER_OK, ""}};
    s_in_t in = {&d, p + len};
    unsigned type = 0;
    memset(out, 0, sizeof *out);
    if (s_in_root_type(&in, p, len, types, S_COUNT(types), &type) < 0)
        goto fail;
    if (type == 1) {
        static const char *const keys[] = {"turn_id", "seq", "event"};
        const uint8_t *f[S_KEYS_MAX];
        proto_worker_partial_t *pa = &out->partial;
        out->type = PROTO_WORKER_REPLY_PARTIAL;
        if (s_in_fields(&in, p, "", keys, 3, f) < 0 ||
            s_in_bstr(&in, f[0], "turn_id", pa->turn_id, PROTO_UUID_LEN) < 0 ||
            s_in_uint(&in, f[1], "seq", &pa->seq) < 0 || s_in_event(&in, f[2], &pa->event) < 0)
            goto fail;
    } else {
        static const char *const keys[] = {"turn_id",     "full_response", "tool_iterations", "tokens_used",
                                           "cost_usd",    "message",       "code"};
        const uint8_t *f[S_KEYS_MAX];
        proto_worker_final_t *fi = &out->final;
        out->type = PROTO_WORKER_REPLY_FINAL;
        fi->type = (proto_worker_final_type_t) (type - 1);
        if (s_in_fields(&in, p, "", keys, 7, f) < 0 ||
            s_in_bstr(&in, f[0], "turn_id", fi->turn_id, PROTO_UUID_LEN) < 0)
            goto fail;
        switch (fi->type) {
        case PROTO_WORKER_FINAL_DONE:
            if (s_in_str(&in, f[1], "full_response", PROTO_WORKER_TEXT_MAX, &fi->full_response) < 0 ||
                s_in_uint(&in, f[2], "tool_iterations", &fi->tool_iterations) < 0)
                goto fail;
            if (f[3]) {
                if (s_in_uint(&in, f[3], "tokens_used", &fi->tokens_used) < 0)
                    goto fail;
                fi->has_tokens_used = true;
            }
            if (f[4]) {
                if (s_in_float(&in, f[4], "cost_usd", &fi->cost_usd) < 0)
                    goto fail;
                fi->has_cost_usd = true;
            }
            break;
        case PROTO_WORKER_FINAL_STOPPED:
            if (s_in_opt_str(&in, f[5], "message", PROTO_WORKER_TEXT_MAX, &fi->message) < 0)
                goto fail;
            break;
        case PROTO_WORKER_FINAL_ERROR: {
            unsigned code = 0;
            if (s_in_enum(&in, f[6], "code", s_codes, S_COUNT(s_codes), &code) < 0 ||
                s_in_str(&in, f[5], "message", PROTO_WORKER_TEXT_MAX, &fi->message) < 0)
                goto fail;
            fi->code = (proto_worker_code_t) code;
            break;
        }
        }
    }
    *err = d.err;
    return 0;
fail:
    proto_worker_reply_clear(out);
    *err = d.err;
    return -1;
}
