/* agent/turn.c — the tool loop of one turn (see turn.h). */
#include "agent/turn.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/json_buf.h"
#include "proto/pubkey.h"
#include "proto/utf8.h"
#include "router/clock.h"
#include "router/log.h"

/* turn_timeout_s 0 is read as the config default. */
#define S_TIMEOUT_DEFAULT_S 600u
/* Request bodies one yield(0) reads before letting the provider go on. */
#define S_DRAIN_MAX 64

typedef struct {
    const agent_io_t *io;
    const proto_worker_turn_t *req;
    agent_provider_t *provider;
    uint64_t seq;                       /* next PARTIAL's seq */
    uint64_t deadline_ms;               /* monotonic */
    bool stopped;                       /* a stop arrived */
    bool timed_out;
    bool link_lost;
    bool final_replaced;                /* the FINAL meant could not be encoded: an error went */
    bool given_up;                      /* recv said -2: the FINAL went below, send nothing */
    bool too_large;                     /* the response outgrew AGENT_RESPONSE_MAX, or */
    bool resp_oom;                      /* its buffer could not grow */
    /* The conversation: [0, n_borrowed) are shallow copies of the request's
     * history and message; the rest are owned. */
    proto_worker_chat_msg_t *conv;
    size_t n_conv, cap_conv, n_borrowed;
    char *steers[AGENT_STEERS_MAX];     /* steer contents waiting for a boundary */
    size_t n_steers;
    size_t steers_dropped;
    /* full_response: chunk text since the last chunk_reset. */
    char *resp;
    size_t resp_len, resp_cap;
    /* The router-run tool call being waited for. */
    const char *await_id;
    proto_worker_str_t await_result;    /* owned once it came */
    bool await_is_error;
    bool await_done;
    /* A request envelope's turn: the system message naming it (s_origin_note). */
    char origin_note[384];
} s_turn_t;

/* A request envelope's turn starts with a system message that names the
 * request and its sender: the model needs the id to answer it with
 * send_response (the turn's message holds only the intent and params). */
static size_t s_origin_note(s_turn_t *t)
{
    const proto_worker_origin_t *o = &t->req->origin;
    if (!o->has_envelope_id || o->envelope_type != PROTO_WORKER_ENVTYPE_REQUEST)
        return 0;
    char id[PROTO_UUID_TEXT_CAP], from[PROTO_PUBKEY_TEXT_CAP] = "an unknown peer";
    proto_uuid_format(o->envelope_id, id);
    if (o->has_from && proto_pubkey_format(o->from, from, sizeof from) != 0)
        snprintf(from, sizeof from, "an unknown peer");
    int n = snprintf(t->origin_note, sizeof t->origin_note,
                     "This turn is request envelope %s from %s. To choose its status or result, "
                     "call send_response with in_reply_to \"%s\"; otherwise your final answer "
                     "is sent to the peer as its completed response.",
                     id, from, id);
    return n > 0 && (size_t) n < sizeof t->origin_note ? (size_t) n : 0;
}

const char *agent_turn_outcome_str(agent_turn_outcome_t o)
{
    switch (o) {
    case AGENT_TURN_DONE: return "done";
    case AGENT_TURN_STOPPED: return "stopped";
    case AGENT_TURN_TIMEOUT: return "timeout";
    case AGENT_TURN_PROVIDER_ERROR: return "provider_error";
    case AGENT_TURN_AGENT_ERROR: return "agent_error";
    case AGENT_TURN_INIT_FAILED: return "init_failed";
    case AGENT_TURN_LINK_LOST: return "link_lost";
    }
    return "?";
}

/* ================================================================ replies */

/* Sends one PARTIAL. One that cannot be encoded is skipped (0) unless it
 * is `needed`: then -2, for the caller to end the turn (a router tool's
 * call the router never heard of would be waited on until the deadline). */
static int s_partial_send(s_turn_t *t, const proto_worker_event_t *ev, bool needed)
{
    if (t->link_lost || t->given_up)
        return -1;
    proto_worker_partial_t p = {.seq = t->seq, .event = *ev};
    memcpy(p.turn_id, t->req->turn_id, PROTO_UUID_LEN);
    uint8_t *body = NULL;
    size_t len = 0;
    proto_worker_error_t err;
    if (proto_worker_partial_encode(&p, &body, &len, &err) < 0) {
        /* Our own bug or a provider string we failed to clean: skip the
         * event, never the turn. */
        ROUTER_LOG(ROUTER_LOG_WARN, "agent", "partial %s not sent: %s (%s)", proto_worker_event_type_str(ev->type),
                        proto_worker_reason_str(err.reason), err.field);
        return needed ? -2 : 0;
    }
    int rc = t->io->send(t->io->ud, false, body, len);
    free(body);
    if (rc < 0) {
        t->link_lost = true;
        return -1;
    }
    t->seq++;
    return 0;
}

static int s_send_partial(s_turn_t *t, const proto_worker_event_t *ev)
{
    return s_partial_send(t, ev, false);
}

/* CBOR text string head and bytes (n < 256) at out[*at]. */
static void s_cbor_text(uint8_t *out, size_t *at, const char *s)
{
    size_t n = strlen(s);
    if (n < 24) {
        out[(*at)++] = (uint8_t) (0x60 | n);
    } else {
        out[(*at)++] = 0x78;
        out[(*at)++] = (uint8_t) n;
    }
    memcpy(out + *at, s, n);
    *at += n;
}

size_t agent_final_oom_encode(const uint8_t *turn_id, uint8_t *out, size_t cap)
{
    if (cap < AGENT_FINAL_OOM_MAX)
        return 0;
    /* turn-error of worker.cddl, keys in the order proto_worker_final_encode
     * writes them. */
    size_t at = 0;
    out[at++] = 0xa4; /* map(4) */
    s_cbor_text(out, &at, "type");
    s_cbor_text(out, &at, "error");
    s_cbor_text(out, &at, "turn_id");
    out[at++] = 0x40 | PROTO_UUID_LEN; /* bstr(16) */
    if (turn_id)
        memcpy(out + at, turn_id, PROTO_UUID_LEN);
    else
        memset(out + at, 0, PROTO_UUID_LEN);
    at += PROTO_UUID_LEN;
    s_cbor_text(out, &at, "code");
    s_cbor_text(out, &at, "AGENT_ERROR");
    s_cbor_text(out, &at, "message");
    s_cbor_text(out, &at, "out of memory: the worker could not encode the turn's result");
    return at;
}

/* Sends the FINAL f_in, or, when it cannot be encoded, an error FINAL in
 * its place (t->final_replaced: the turn then ends AGENT_ERROR, not as f_in
 * said). A FINAL always goes out, unless the link failed. */
static int s_send_final(s_turn_t *t, const proto_worker_final_t *f_in)
{
    if (t->given_up)
        return -1;
    proto_worker_final_t f = *f_in;
    memcpy(f.turn_id, t->req->turn_id, PROTO_UUID_LEN);
    uint8_t *body = NULL;
    size_t len = 0;
    proto_worker_error_t err;
    uint8_t oom[AGENT_FINAL_OOM_MAX];
    const uint8_t *out;
    if (proto_worker_final_encode(&f, &body, &len, &err) < 0) {
        /* An oversize or non-UTF-8 message, or no memory: say so instead. */
        ROUTER_LOG(ROUTER_LOG_WARN, "agent", "final not encodable: %s (%s); an error goes in its place",
                   proto_worker_reason_str(err.reason), err.field);
        t->final_replaced = true;
        proto_worker_final_t g = {.type = PROTO_WORKER_FINAL_ERROR, .code = PROTO_WORKER_CODE_AGENT_ERROR};
        static const char msg[] = "the worker could not encode the turn's result";
        g.message = (proto_worker_str_t){msg, sizeof msg - 1};
        memcpy(g.turn_id, t->req->turn_id, PROTO_UUID_LEN);
        if (proto_worker_final_encode(&g, &body, &len, &err) < 0)
            len = agent_final_oom_encode(t->req->turn_id, oom, sizeof oom);
    }
    out = body ? body : oom;
    int rc = t->io->send(t->io->ud, true, out, len);
    free(body);
    if (rc < 0)
        t->link_lost = true;
    return rc;
}

/* How a turn whose FINAL went out (or was tried) ended: as `o`, unless the
 * link failed or the FINAL had to be replaced by an error. */
static agent_turn_outcome_t s_ended(const s_turn_t *t, agent_turn_outcome_t o)
{
    if (t->link_lost)
        return AGENT_TURN_LINK_LOST;
    return t->final_replaced ? AGENT_TURN_AGENT_ERROR : o;
}

static void s_final_error(s_turn_t *t, proto_worker_code_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void s_final_error(s_turn_t *t, proto_worker_code_t code, const char *fmt, ...)
{
    char msg[AGENT_PROVIDER_ERR_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* A provider message cut inside a code point would not encode. */
    size_t n = strlen(msg);
    while (n > 0 && !proto_utf8_valid((const uint8_t *) msg, n))
        n--;
    proto_worker_final_t f = {.type = PROTO_WORKER_FINAL_ERROR, .code = code, .message = {msg, n}};
    s_send_final(t, &f);
}

/* ================================================================ requests */

/* One request body read while the turn runs. */
static void s_handle(s_turn_t *t, const uint8_t *body, size_t len)
{
    proto_worker_request_t r;
    proto_worker_error_t err;
    if (proto_worker_request_decode(body, len, &r, &err) < 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "agent", "request refused mid-turn: %s (%s)", proto_worker_reason_str(err.reason), err.field);
        return;
    }
    const uint8_t *tid = r.type == PROTO_WORKER_REQ_TOOL_RESULT ? r.tool_result.turn_id
                         : r.type == PROTO_WORKER_REQ_TURN     ? r.turn.turn_id
                                                               : r.control.turn_id;
    if (r.type == PROTO_WORKER_REQ_TURN || memcmp(tid, t->req->turn_id, PROTO_UUID_LEN) != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "agent", "%s for another turn ignored", r.type == PROTO_WORKER_REQ_TURN ? "turn" : "control");
        goto out;
    }
    switch (r.type) {
    case PROTO_WORKER_REQ_STOP:
        t->stopped = true;
        break;
    case PROTO_WORKER_REQ_STEER:
        if (t->n_steers == AGENT_STEERS_MAX) {
            t->steers_dropped++;
            ROUTER_LOG(ROUTER_LOG_WARN, "agent", "steer dropped, %d already wait for the next boundary", AGENT_STEERS_MAX);
            break;
        }
        t->steers[t->n_steers++] = (char *) r.control.content.p;
        r.control.content.p = NULL; /* taken */
        r.control.content.len = 0;
        break;
    case PROTO_WORKER_REQ_TOOL_RESULT:
        if (!t->await_id || t->await_done || strcmp(r.tool_result.id.p, t->await_id) != 0) {
            ROUTER_LOG(ROUTER_LOG_WARN, "agent", "tool_result for a call not awaited ignored");
            break;
        }
        t->await_result = r.tool_result.result;
        t->await_is_error = r.tool_result.is_error;
        t->await_done = true;
        r.tool_result.result.p = NULL; /* taken */
        r.tool_result.result.len = 0;
        break;
    case PROTO_WORKER_REQ_TURN:
        break;
    }
out:
    proto_worker_request_clear(&r);
}

static bool s_must_end(const s_turn_t *t)
{
    return t->stopped || t->timed_out || t->link_lost || t->too_large || t->given_up;
}

/* Reads the socket for up to ms (bounded by the deadline). -1 when the
 * turn must end. */
static int s_poll(s_turn_t *t, int ms)
{
    uint64_t start = router_clock_mono_ms();
    uint64_t until = start + (uint64_t) (ms > 0 ? ms : 0);
    int drained = 0;
    for (;;) {
        if (s_must_end(t))
            return -1;
        uint64_t now = router_clock_mono_ms();
        if (now >= t->deadline_ms) {
            t->timed_out = true;
            return -1;
        }
        if (until > t->deadline_ms)
            until = t->deadline_ms;
        int wait = now >= until ? 0 : (int) (until - now);
        if (wait == 0 && drained >= S_DRAIN_MAX)
            return 0;
        uint8_t *body = NULL;
        size_t len = 0;
        int rc = t->io->recv(t->io->ud, &body, &len, wait);
        if (rc == -2) {
            t->given_up = true;
            return -1;
        }
        if (rc < 0) {
            t->link_lost = true;
            return -1;
        }
        if (rc == 0) {
            if (router_clock_mono_ms() >= until)
                return s_must_end(t) ? -1 : 0;
            continue;
        }
        s_handle(t, body, len);
        free(body);
        drained++;
        /* Something that ends a wait early: a result awaited. */
        if (t->await_done)
            return s_must_end(t) ? -1 : 0;
    }
}

/* ================================================================ the sink */

static int s_sink_chunk(void *ud, const char *p, size_t n)
{
    s_turn_t *t = ud;
    if (s_must_end(t))
        return -1;
    if (n == 0)
        return 0;
    if (t->resp_len + n > AGENT_RESPONSE_MAX) {
        t->too_large = true;
        return -1;
    }
    if (t->resp_len + n + 1 > t->resp_cap) {
        size_t cap = t->resp_cap ? t->resp_cap : 256;
        while (cap < t->resp_len + n + 1)
            cap *= 2;
        char *r = realloc(t->resp, cap);
        if (!r) {
            t->too_large = t->resp_oom = true;
            return -1;
        }
        t->resp = r;
        t->resp_cap = cap;
    }
    memcpy(t->resp + t->resp_len, p, n);
    t->resp_len += n;
    t->resp[t->resp_len] = '\0';
    proto_worker_event_t ev = {.type = PROTO_WORKER_EV_CHUNK, .text = {p, n}};
    return s_send_partial(t, &ev);
}

static int s_sink_thinking(void *ud, const char *p, size_t n)
{
    s_turn_t *t = ud;
    if (s_must_end(t))
        return -1;
    if (n == 0)
        return 0;
    proto_worker_event_t ev = {.type = PROTO_WORKER_EV_THINKING, .text = {p, n}};
    return s_send_partial(t, &ev);
}

static int s_sink_yield(void *ud, int ms)
{
    return s_poll(ud, ms);
}

/* ================================================================ conversation */

/* Appends m (taking what it owns on success). 0, -1 out of memory, or -2
 * at AGENT_CONV_MAX. */
static int s_conv_push(s_turn_t *t, proto_worker_chat_msg_t m)
{
    if (t->n_conv == AGENT_CONV_MAX)
        return -2;
    if (t->n_conv == t->cap_conv) {
        size_t cap = t->cap_conv ? t->cap_conv * 2 : 16;
        proto_worker_chat_msg_t *c = realloc(t->conv, cap * sizeof *c);
        if (!c)
            return -1;
        t->conv = c;
        t->cap_conv = cap;
    }
    t->conv[t->n_conv++] = m;
    return 0;
}

static char *s_strndup(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        return NULL;
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* Steers waiting become user messages. */
static int s_apply_steers(s_turn_t *t)
{
    for (size_t i = 0; i < t->n_steers; i++) {
        proto_worker_chat_msg_t m = {.role = PROTO_WORKER_ROLE_USER};
        m.content.p = t->steers[i];
        m.content.len = strlen(t->steers[i]); /* decoded text: NUL-ended */
        t->steers[i] = NULL;
        int rc = s_conv_push(t, m);
        if (rc < 0) {
            free((void *) m.content.p);
            for (size_t j = i + 1; j < t->n_steers; j++) {
                free(t->steers[j]);
                t->steers[j] = NULL;
            }
            t->n_steers = 0;
            return rc;
        }
    }
    t->n_steers = 0;
    return 0;
}

/* By the whole name: one the model wrote with a NUL inside ("peers\0x")
 * is no tool, not the one its first part names. */
static const proto_worker_tool_spec_t *s_tool_find(const s_turn_t *t, const proto_worker_str_t *name)
{
    for (size_t i = 0; i < t->req->n_tools; i++) {
        const proto_worker_str_t *n = &t->req->tools[i].name;
        if (n->len == name->len && memcmp(n->p, name->p, name->len) == 0)
            return &t->req->tools[i];
    }
    return NULL;
}

/* A JSON text {"error": "<what> <name>"} for a tool that could not run. */
static char *s_tool_error_json(const char *what, const proto_worker_str_t *name)
{
    agent_json_buf_t b;
    agent_json_buf_init(&b, PROTO_WORKER_NAME_MAX * 8);
    agent_json_buf_puts(&b, "{\"error\":");
    agent_json_buf_t msg;
    agent_json_buf_init(&msg, PROTO_WORKER_NAME_MAX * 2);
    agent_json_buf_puts(&msg, what);
    agent_json_buf_put(&msg, name->p, name->len);
    size_t n = 0;
    char *m = agent_json_buf_take(&msg, &n);
    if (!m) {
        agent_json_buf_free(&b);
        return NULL;
    }
    agent_json_buf_quote(&b, m, n);
    free(m);
    agent_json_buf_puts(&b, "}");
    return agent_json_buf_take(&b, NULL);
}

/* Runs one tool call: announce, get the result, report it, append it.
 * 0; -1 the turn must end (stop, timeout, link); -2 out of memory; -3 the
 * conversation is at AGENT_CONV_MAX. */
static int s_tool_run(s_turn_t *t, const proto_worker_tool_call_t *call)
{
    const proto_worker_tool_spec_t *spec = s_tool_find(t, &call->name);
    bool router_runs = spec && spec->executor != PROTO_WORKER_EXEC_WORKER;
    proto_worker_event_t ev = {.type = PROTO_WORKER_EV_TOOL_CALL, .call = *call};
    int src = s_partial_send(t, &ev, router_runs);
    if (src < 0)
        return src == -2 ? -2 : -1;

    char *result = NULL;
    size_t result_len = 0;
    bool is_error = true;
    if (!spec) {
        result = s_tool_error_json("unknown tool ", &call->name);
    } else if (spec->executor == PROTO_WORKER_EXEC_WORKER) {
        result = s_tool_error_json("no worker runs the tool ", &call->name);
    } else {
        t->await_id = call->id.p;
        t->await_done = false;
        while (!t->await_done)
            if (s_poll(t, AGENT_POLL_MS * 10) < 0)
                break;
        t->await_id = NULL;
        if (!t->await_done)
            return -1; /* stop, timeout or link: s_must_end says which */
        t->await_done = false;
        result = (char *) t->await_result.p;
        result_len = t->await_result.len;
        is_error = t->await_is_error;
        t->await_result.p = NULL;
        t->await_result.len = 0;
    }
    if (!result)
        return -2;
    if (result_len == 0)
        result_len = strlen(result);

    proto_worker_event_t rev = {.type = PROTO_WORKER_EV_TOOL_RESULT, .id = call->id,
                                .result = {result, result_len}, .is_error = is_error};
    if (s_send_partial(t, &rev) < 0) {
        free(result);
        return -1;
    }
    proto_worker_chat_msg_t m = {.role = PROTO_WORKER_ROLE_TOOL, .content = {result, result_len}};
    m.tool_call_id.p = s_strndup(call->id.p, call->id.len);
    m.tool_call_id.len = call->id.len;
    int prc = m.tool_call_id.p ? s_conv_push(t, m) : -1;
    if (prc < 0) {
        proto_worker_chat_msg_clear(&m);
        return prc == -2 ? -3 : -2;
    }
    return 0;
}

/* ================================================================ the loop */

static void s_turn_free(s_turn_t *t)
{
    for (size_t i = t->n_borrowed; i < t->n_conv; i++)
        proto_worker_chat_msg_clear(&t->conv[i]);
    free(t->conv);
    for (size_t i = 0; i < t->n_steers; i++)
        free(t->steers[i]);
    free(t->resp);
    free((void *) t->await_result.p);
}

/* Ends the turn for the reason s_must_end found. */
static agent_turn_outcome_t s_end_aborted(s_turn_t *t)
{
    if (t->link_lost) {
        return AGENT_TURN_LINK_LOST;
    }
    if (t->given_up) {
        ROUTER_LOG(ROUTER_LOG_WARN, "agent", "turn given up: a request about it was lost for want of memory");
        return AGENT_TURN_AGENT_ERROR;
    }
    if (t->stopped) {
        static const char msg[] = "stopped";
        proto_worker_final_t f = {.type = PROTO_WORKER_FINAL_STOPPED, .message = {msg, sizeof msg - 1}};
        s_send_final(t, &f);
        return s_ended(t, AGENT_TURN_STOPPED);
    }
    if (t->timed_out) {
        uint64_t s = t->req->turn_timeout_s ? t->req->turn_timeout_s : S_TIMEOUT_DEFAULT_S;
        s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR, "the turn timed out after %" PRIu64 " s", s);
        return s_ended(t, AGENT_TURN_TIMEOUT);
    }
    if (t->resp_oom)
        s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR, "out of memory");
    else
        s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR, "the response grew past %u bytes",
                      (unsigned) AGENT_RESPONSE_MAX);
    return s_ended(t, AGENT_TURN_AGENT_ERROR);
}

/* Ends the turn for a message the conversation could not take: push_rc
 * is s_conv_push's (-1 out of memory, -2 at its bound). */
static agent_turn_outcome_t s_conv_refused(s_turn_t *t, int push_rc)
{
    if (push_rc == -2)
        s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR, "the conversation grew past %u messages",
                      (unsigned) AGENT_CONV_MAX);
    else
        s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR, "out of memory");
    return s_ended(t, AGENT_TURN_AGENT_ERROR);
}

static agent_turn_outcome_t s_loop(s_turn_t *t)
{
    const proto_worker_turn_t *req = t->req;
    uint64_t tool_iterations = 0, rounds = 0, tokens = 0;
    bool has_tokens = false;
    agent_sink_t sink = {s_sink_chunk, s_sink_thinking, s_sink_yield, t};

    for (;;) {
        if (s_poll(t, 0) < 0)
            return s_end_aborted(t);
        int sr = s_apply_steers(t);
        if (sr < 0)
            return s_conv_refused(t, sr);
        proto_worker_event_t lev = {.type = PROTO_WORKER_EV_LLM_REQUEST, .iteration = rounds};
        lev.provider = (proto_worker_str_t){t->provider->name, strlen(t->provider->name)};
        if (t->provider->model && t->provider->model[0])
            lev.model = (proto_worker_str_t){t->provider->model, strlen(t->provider->model)};
        if (s_send_partial(t, &lev) < 0)
            return s_must_end(t) ? s_end_aborted(t) : AGENT_TURN_LINK_LOST;

        agent_completion_req_t creq = {t->conv, t->n_conv, req->tools, req->n_tools, rounds};
        agent_completion_t out = {0};
        char err[AGENT_PROVIDER_ERR_MAX] = "";
        agent_complete_rc_t rc = t->provider->complete(t->provider, &creq, &sink, &out, err, sizeof err);
        rounds++;
        if (rc != AGENT_COMPLETE_OK && s_must_end(t)) {
            agent_completion_clear(&out);
            return s_end_aborted(t);
        }
        if (rc == AGENT_COMPLETE_ABORTED) { /* never told to: a provider bug */
            agent_completion_clear(&out);
            s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR, "the provider gave up without a reason");
            return s_ended(t, AGENT_TURN_AGENT_ERROR);
        }
        if (rc == AGENT_COMPLETE_ERROR) {
            agent_completion_clear(&out);
            s_final_error(t, PROTO_WORKER_CODE_PROVIDER_ERROR, "%s", err[0] ? err : "provider error");
            return s_ended(t, AGENT_TURN_PROVIDER_ERROR);
        }
        if (out.has_tokens_used) {
            has_tokens = true;
            tokens += out.tokens_used;
        }

        if (out.n_calls == 0) {
            agent_completion_clear(&out);
            /* A steer that came during the last answer gets its own round. */
            if (s_poll(t, 0) < 0)
                return s_end_aborted(t);
            if (t->n_steers > 0) {
                proto_worker_chat_msg_t m = {.role = PROTO_WORKER_ROLE_ASSISTANT};
                m.content.p = s_strndup(t->resp ? t->resp : "", t->resp_len);
                m.content.len = t->resp_len;
                int prc = m.content.p ? s_conv_push(t, m) : -1;
                if (prc < 0) {
                    proto_worker_chat_msg_clear(&m);
                    return s_conv_refused(t, prc);
                }
                continue;
            }
            proto_worker_final_t f = {.type = PROTO_WORKER_FINAL_DONE,
                                      .full_response = {t->resp ? t->resp : "", t->resp_len},
                                      .tool_iterations = tool_iterations,
                                      .has_tokens_used = has_tokens,
                                      .tokens_used = tokens};
            s_send_final(t, &f);
            return s_ended(t, AGENT_TURN_DONE);
        }

        /* Calls from a provider that went on after the sink said to stop
         * (the built-in ones never do) are not run: the stop, the deadline
         * or the bound ends the turn first. */
        if (s_must_end(t)) {
            agent_completion_clear(&out);
            return s_end_aborted(t);
        }
        if (tool_iterations >= req->max_tool_iterations) {
            agent_completion_clear(&out);
            s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR,
                          "the turn reached max_tool_iterations (%" PRIu64 ")", req->max_tool_iterations);
            return s_ended(t, AGENT_TURN_AGENT_ERROR);
        }
        tool_iterations++;

        /* The assistant's calls join the conversation, then each result. The
         * calls move into the message, which owns them from here. */
        proto_worker_chat_msg_t am = {.role = PROTO_WORKER_ROLE_ASSISTANT, .has_tool_calls = true};
        am.content.p = s_strndup("", 0);
        am.tool_calls = out.calls;
        am.n_tool_calls = out.n_calls;
        out.calls = NULL;
        out.n_calls = 0;
        int prc = am.content.p ? s_conv_push(t, am) : -1;
        if (prc < 0) {
            proto_worker_chat_msg_clear(&am);
            return s_conv_refused(t, prc);
        }
        size_t at = t->n_conv - 1;
        for (size_t i = 0; i < t->conv[at].n_tool_calls; i++) {
            /* conv may move as it grows: copy the call's handles first. */
            proto_worker_tool_call_t call = t->conv[at].tool_calls[i];
            int trc = s_tool_run(t, &call);
            if (trc == -1)
                return s_must_end(t) ? s_end_aborted(t) : AGENT_TURN_LINK_LOST;
            if (trc == -3)
                return s_conv_refused(t, -2);
            if (trc < 0) {
                s_final_error(t, PROTO_WORKER_CODE_AGENT_ERROR, "out of memory running a tool");
                return s_ended(t, AGENT_TURN_AGENT_ERROR);
            }
        }
    }
}

agent_turn_outcome_t agent_turn_run(agent_provider_t *provider, const char *init_err, const agent_io_t *io,
                                    const proto_worker_turn_t *turn)
{
    s_turn_t t = {.io = io, .req = turn, .provider = provider};
    uint64_t secs = turn->turn_timeout_s ? turn->turn_timeout_s : S_TIMEOUT_DEFAULT_S;
    if (secs > UINT64_MAX / 2000u)
        secs = UINT64_MAX / 2000u;
    t.deadline_ms = router_clock_mono_ms() + secs * 1000u;

    char tid[PROTO_UUID_TEXT_CAP];
    proto_uuid_format(turn->turn_id, tid);
    ROUTER_LOG(ROUTER_LOG_DEBUG, "agent", "turn %s started (provider %s)", tid, provider ? provider->name : "none");
    agent_turn_outcome_t o;
    if (!provider) {
        s_final_error(&t, PROTO_WORKER_CODE_AGENT_INIT_FAILED, "%s", init_err && *init_err ? init_err : "no provider");
        o = s_ended(&t, AGENT_TURN_INIT_FAILED);
        goto out;
    }
    bool ok = true;
    size_t note = s_origin_note(&t);
    if (note)
        ok = s_conv_push(&t, (proto_worker_chat_msg_t) {.role = PROTO_WORKER_ROLE_SYSTEM,
                                                        .content = {t.origin_note, note}}) == 0;
    for (size_t i = 0; ok && i < turn->n_history; i++)
        ok = s_conv_push(&t, turn->history[i]) == 0;
    if (ok)
        ok = s_conv_push(&t, turn->message) == 0;
    t.n_borrowed = t.n_conv;
    if (!ok) {
        s_final_error(&t, PROTO_WORKER_CODE_AGENT_ERROR, "out of memory");
        o = s_ended(&t, AGENT_TURN_AGENT_ERROR);
        goto out;
    }
    o = s_loop(&t);
out:
    s_turn_free(&t);
    ROUTER_LOG(ROUTER_LOG_DEBUG, "agent", "turn %s ended: %s", tid, agent_turn_outcome_str(o));
    return o;
}
