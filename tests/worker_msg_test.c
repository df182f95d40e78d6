/* tests/worker_msg_test.c — worker.cddl turn bodies: every variant round
 * trips byte for byte, and each kind of bad body gets its typed refusal.
 * With KITH_WORKER_MSG_SEEDS=DIR set, every body here (good and bad) is also
 * written to DIR: that is how fuzz/corpus/worker_msg/ was seeded. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "proto/cbor_canon.h"
#include "proto/worker_msg.h"

#define S(lit) ((proto_worker_str_t){(lit), sizeof(lit) - 1})

static const uint8_t s_tid[PROTO_UUID_LEN] = {0x01, 0x8f, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00,
                                              0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a};

/* ------------------------------------------------------------ seeds */

static void s_seed(const char *name, const uint8_t *p, size_t len)
{
    const char *dir = getenv("KITH_WORKER_MSG_SEEDS");
    if (!dir)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, len, f), len);
    fclose(f);
}

static bool s_str_eq(proto_worker_str_t a, proto_worker_str_t b)
{
    if (!a.p || !b.p)
        return !a.p && !b.p;
    return a.len == b.len && memcmp(a.p, b.p, a.len) == 0 && a.p[a.len] == '\0';
}

/* ------------------------------------------------------------ requests */

static proto_worker_tool_call_t s_calls[] = {
    {S("call_1"), S("send_message"), S("{\"peer\":\"bob\",\"text\":\"hi\"}")},
    {S("call_2"), S("peers"), S("{}")},
};

static proto_worker_chat_msg_t s_history[] = {
    {PROTO_WORKER_ROLE_SYSTEM, S("be brief"), {0}, NULL, 0, false},
    {PROTO_WORKER_ROLE_USER, S("hello \xc3\xa9t\xc3\xa9"), {0}, NULL, 0, false},
    {PROTO_WORKER_ROLE_ASSISTANT, S(""), {0}, s_calls, 2, true},
    {PROTO_WORKER_ROLE_TOOL, S("{\"ok\":true}"), S("call_1"), NULL, 0, false},
    {PROTO_WORKER_ROLE_ASSISTANT, S("done"), {0}, NULL, 0, true},
};

static proto_worker_tool_spec_t s_tools[] = {
    {S("peers"), S("List peers"), S("{\"type\":\"object\"}"), PROTO_WORKER_EXEC_ROUTER},
    {S("clock"), S("Time"), S("{}"), PROTO_WORKER_EXEC_WORKER},
};

static proto_worker_request_t s_turn_full(void)
{
    proto_worker_request_t r = {0};
    r.type = PROTO_WORKER_REQ_TURN;
    memcpy(r.turn.turn_id, s_tid, sizeof s_tid);
    r.turn.session_id = S("sess-1");
    r.turn.message = (proto_worker_chat_msg_t){PROTO_WORKER_ROLE_USER, S("/peers"), {0}, NULL, 0, false};
    r.turn.history = s_history;
    r.turn.n_history = sizeof s_history / sizeof s_history[0];
    r.turn.tools = s_tools;
    r.turn.n_tools = 2;
    r.turn.max_tool_iterations = 60;
    r.turn.turn_timeout_s = 600;
    r.turn.origin.channel = PROTO_WORKER_CHANNEL_COMMS;
    r.turn.origin.has_envelope_id = true;
    memset(r.turn.origin.envelope_id, 0x11, PROTO_UUID_LEN);
    r.turn.origin.has_from = true;
    memset(r.turn.origin.from, 0x22, PROTO_WORKER_PEER_KEY_LEN);
    r.turn.origin.envelope_type = PROTO_WORKER_ENVTYPE_REQUEST;
    return r;
}

static void s_chat_eq(const proto_worker_chat_msg_t *a, const proto_worker_chat_msg_t *b)
{
    assert_int_equal(a->role, b->role);
    assert_true(s_str_eq(a->content, b->content));
    assert_true(s_str_eq(a->tool_call_id, b->tool_call_id));
    assert_int_equal(a->has_tool_calls, b->has_tool_calls);
    assert_int_equal(a->n_tool_calls, b->n_tool_calls);
    for (size_t i = 0; i < a->n_tool_calls; i++) {
        assert_true(s_str_eq(a->tool_calls[i].id, b->tool_calls[i].id));
        assert_true(s_str_eq(a->tool_calls[i].name, b->tool_calls[i].name));
        assert_true(s_str_eq(a->tool_calls[i].arguments, b->tool_calls[i].arguments));
    }
}

/* Encodes, decodes, compares by re-encoding; returns the decoded request. */
static void s_request_roundtrip(const proto_worker_request_t *in, const char *seed, proto_worker_request_t *out)
{
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_request_encode(in, &a, &alen, &err), 0);
    s_seed(seed, a, alen);
    assert_int_equal(proto_worker_request_decode(a, alen, out, &err), 0);
    assert_int_equal(err.reason, PROTO_WORKER_OK);
    assert_int_equal(out->type, in->type);
    assert_int_equal(proto_worker_request_encode(out, &b, &blen, &err), 0);
    assert_int_equal(alen, blen);
    assert_memory_equal(a, b, alen);
    free(a);
    free(b);
}

static void test_turn_roundtrip(void **state)
{
    (void) state;
    proto_worker_request_t in = s_turn_full(), out;
    s_request_roundtrip(&in, "turn_full", &out);
    const proto_worker_turn_t *t = &out.turn;
    assert_memory_equal(t->turn_id, s_tid, PROTO_UUID_LEN);
    assert_true(s_str_eq(t->session_id, S("sess-1")));
    s_chat_eq(&t->message, &in.turn.message);
    assert_int_equal(t->n_history, in.turn.n_history);
    for (size_t i = 0; i < t->n_history; i++)
        s_chat_eq(&t->history[i], &in.turn.history[i]);
    assert_int_equal(t->n_tools, 2);
    assert_true(s_str_eq(t->tools[0].name, S("peers")));
    assert_int_equal(t->tools[0].executor, PROTO_WORKER_EXEC_ROUTER);
    assert_int_equal(t->tools[1].executor, PROTO_WORKER_EXEC_WORKER);
    assert_true(s_str_eq(t->tools[1].parameters, S("{}")));
    assert_int_equal(t->max_tool_iterations, 60);
    assert_int_equal(t->turn_timeout_s, 600);
    assert_int_equal(t->origin.channel, PROTO_WORKER_CHANNEL_COMMS);
    assert_true(t->origin.has_envelope_id && t->origin.has_from);
    assert_int_equal(t->origin.from[31], 0x22);
    assert_int_equal(t->origin.envelope_type, PROTO_WORKER_ENVTYPE_REQUEST);
    proto_worker_request_clear(&out);
    assert_null(out.turn.history);

    /* The smallest turn: no history, no tools, an origin with only a channel. */
    proto_worker_request_t min = {0};
    min.type = PROTO_WORKER_REQ_TURN;
    min.turn.session_id = S("s");
    min.turn.message = (proto_worker_chat_msg_t){PROTO_WORKER_ROLE_USER, S("hi"), {0}, NULL, 0, false};
    min.turn.origin.channel = PROTO_WORKER_CHANNEL_WS;
    min.turn.max_tool_iterations = 1;
    s_request_roundtrip(&min, "turn_min", &out);
    assert_int_equal(out.turn.n_history, 0);
    assert_false(out.turn.origin.has_from);
    assert_int_equal(out.turn.origin.envelope_type, PROTO_WORKER_ENVTYPE_NONE);
    proto_worker_request_clear(&out);
}

static void test_control_and_tool_result_roundtrip(void **state)
{
    (void) state;
    proto_worker_request_t in = {0}, out;
    in.type = PROTO_WORKER_REQ_STEER;
    memcpy(in.control.turn_id, s_tid, PROTO_UUID_LEN);
    in.control.content = S("shorter please");
    s_request_roundtrip(&in, "steer", &out);
    assert_true(s_str_eq(out.control.content, S("shorter please")));
    proto_worker_request_clear(&out);

    in.type = PROTO_WORKER_REQ_STOP;
    s_request_roundtrip(&in, "stop", &out);
    assert_null(out.control.content.p); /* a stop carries no content */
    proto_worker_request_clear(&out);

    memset(&in, 0, sizeof in);
    in.type = PROTO_WORKER_REQ_TOOL_RESULT;
    memcpy(in.tool_result.turn_id, s_tid, PROTO_UUID_LEN);
    in.tool_result.id = S("call_1");
    in.tool_result.result = S("{\"status\":\"acked\"}");
    in.tool_result.is_error = true;
    s_request_roundtrip(&in, "tool_result", &out);
    assert_true(out.tool_result.is_error);
    assert_true(s_str_eq(out.tool_result.result, S("{\"status\":\"acked\"}")));
    proto_worker_request_clear(&out);
}

/* ------------------------------------------------------------ replies */

static void s_reply_roundtrip(const proto_worker_reply_t *in, const char *seed, proto_worker_reply_t *out)
{
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_reply_encode(in, &a, &alen, &err), 0);
    s_seed(seed, a, alen);
    assert_int_equal(proto_worker_reply_decode(a, alen, out, &err), 0);
    assert_int_equal(out->type, in->type);
    assert_int_equal(proto_worker_reply_encode(out, &b, &blen, &err), 0);
    assert_int_equal(alen, blen);
    assert_memory_equal(a, b, alen);
    free(a);
    free(b);
}

static void test_partials_roundtrip(void **state)
{
    (void) state;
    proto_worker_event_t evs[] = {
        {.type = PROTO_WORKER_EV_CHUNK, .text = S("echo: ")},
        {.type = PROTO_WORKER_EV_THINKING, .text = S("hmm")},
        {.type = PROTO_WORKER_EV_CHUNK_RESET},
        {.type = PROTO_WORKER_EV_TOOL_CALL, .call = {S("c1"), S("peers"), S("{}")}},
        {.type = PROTO_WORKER_EV_TOOL_RESULT, .id = S("c1"), .result = S("[]"), .is_error = false},
        {.type = PROTO_WORKER_EV_OPERATOR_STATUS, .text = S("waiting")},
        {.type = PROTO_WORKER_EV_AGENT_EVENT, .name = S("agent_start"), .data = S("{\"a\":1}")},
        {.type = PROTO_WORKER_EV_LLM_REQUEST, .provider = S("openai"), .model = S("gpt"), .iteration = 3},
        {.type = PROTO_WORKER_EV_LLM_REQUEST, .provider = S("scripted"), .iteration = 0},
    };
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++) {
        proto_worker_reply_t in = {0}, out;
        in.type = PROTO_WORKER_REPLY_PARTIAL;
        memcpy(in.partial.turn_id, s_tid, PROTO_UUID_LEN);
        in.partial.seq = i * 1000;
        in.partial.event = evs[i];
        char seed[64];
        snprintf(seed, sizeof seed, "partial_%zu", i);
        s_reply_roundtrip(&in, seed, &out);
        assert_int_equal(out.partial.seq, i * 1000);
        assert_int_equal(out.partial.event.type, evs[i].type);
        assert_true(s_str_eq(out.partial.event.text, evs[i].text));
        assert_true(s_str_eq(out.partial.event.model, evs[i].model));
        assert_true(s_str_eq(out.partial.event.call.name, evs[i].call.name));
        proto_worker_reply_clear(&out);
    }
}

static void test_finals_roundtrip(void **state)
{
    (void) state;
    proto_worker_reply_t in = {0}, out;
    in.type = PROTO_WORKER_REPLY_FINAL;
    memcpy(in.final.turn_id, s_tid, PROTO_UUID_LEN);
    in.final.type = PROTO_WORKER_FINAL_DONE;
    in.final.full_response = S("echo: hi");
    in.final.tool_iterations = 2;
    in.final.has_tokens_used = true;
    in.final.tokens_used = 77;
    in.final.has_cost_usd = true;
    in.final.cost_usd = 0.25;
    s_reply_roundtrip(&in, "done", &out);
    assert_int_equal(out.final.type, PROTO_WORKER_FINAL_DONE);
    assert_int_equal(out.final.tokens_used, 77);
    assert_true(out.final.cost_usd == 0.25);
    proto_worker_reply_clear(&out);

    in.final.has_tokens_used = in.final.has_cost_usd = false;
    s_reply_roundtrip(&in, "done_min", &out);
    assert_false(out.final.has_tokens_used);
    proto_worker_reply_clear(&out);

    memset(&in.final, 0, sizeof in.final);
    in.final.type = PROTO_WORKER_FINAL_STOPPED;
    s_reply_roundtrip(&in, "stopped", &out);
    assert_null(out.final.message.p);
    proto_worker_reply_clear(&out);
    in.final.message = S("stopped by the user");
    s_reply_roundtrip(&in, "stopped_msg", &out);
    assert_true(s_str_eq(out.final.message, S("stopped by the user")));
    proto_worker_reply_clear(&out);

    in.final.type = PROTO_WORKER_FINAL_ERROR;
    in.final.code = PROTO_WORKER_CODE_PROVIDER_ERROR;
    in.final.message = S("HTTP 500: boom");
    s_reply_roundtrip(&in, "error", &out);
    assert_int_equal(out.final.code, PROTO_WORKER_CODE_PROVIDER_ERROR);
    assert_string_equal(proto_worker_code_str(out.final.code), "PROVIDER_ERROR");
    proto_worker_reply_clear(&out);
}

/* ------------------------------------------------------------ refusals */

static void s_refuse_req(const char *seed, const uint8_t *p, size_t len, proto_worker_reason_t want)
{
    proto_worker_request_t out;
    proto_worker_error_t err;
    s_seed(seed, p, len);
    assert_int_equal(proto_worker_request_decode(p, len, &out, &err), -1);
    if (err.reason != want)
        fail_msg("%s: got %s (%s), want %s", seed, proto_worker_reason_str(err.reason), err.field,
                 proto_worker_reason_str(want));
    assert_int_equal(out.type, 0);
    assert_null(out.turn.history);
}

static void s_refuse_rep(const char *seed, const uint8_t *p, size_t len, proto_worker_reason_t want)
{
    proto_worker_reply_t out;
    proto_worker_error_t err;
    s_seed(seed, p, len);
    assert_int_equal(proto_worker_reply_decode(p, len, &out, &err), -1);
    if (err.reason != want)
        fail_msg("%s: got %s (%s), want %s", seed, proto_worker_reason_str(err.reason), err.field,
                 proto_worker_reason_str(want));
}

static void s_text(proto_cbor_buf_t *b, const char *s)
{
    proto_cbor_put_text(b, s, strlen(s));
}

/* A tool_result request with one field's value replaced by raw CBOR. */
static void s_tool_result_with(proto_cbor_buf_t *b, const char *key, const uint8_t *raw, size_t rawlen)
{
    static const char *const keys[] = {"type", "turn_id", "id", "result", "is_error"};
    proto_cbor_put_head(b, 5, 5);
    for (size_t i = 0; i < 5; i++) {
        s_text(b, keys[i]);
        if (strcmp(keys[i], key) == 0) {
            proto_cbor_put_raw(b, raw, rawlen);
            continue;
        }
        switch (i) {
        case 0: s_text(b, "tool_result"); break;
        case 1: proto_cbor_put_bytes(b, s_tid, PROTO_UUID_LEN); break;
        case 2: s_text(b, "c1"); break;
        case 3: s_text(b, "{}"); break;
        case 4: proto_cbor_put_raw(b, "\xf4", 1); break;
        }
    }
}

/* A done FINAL whose cost_usd is the raw CBOR given. */
static void s_done_with_cost(proto_cbor_buf_t *b, const char *raw, size_t rawlen)
{
    proto_cbor_put_head(b, 5, 5);
    s_text(b, "type");
    s_text(b, "done");
    s_text(b, "turn_id");
    proto_cbor_put_bytes(b, s_tid, PROTO_UUID_LEN);
    s_text(b, "full_response");
    s_text(b, "ok");
    s_text(b, "tool_iterations");
    proto_cbor_put_head(b, 0, 0);
    s_text(b, "cost_usd");
    proto_cbor_put_raw(b, raw, rawlen);
}

/* cost_usd in each float width CBOR has (the encoder writes the shortest
 * exact one; another writer may not), and what is not a finite float. */
static void test_cost_usd_widths(void **state)
{
    (void) state;
    static const struct {
        const char *raw;
        size_t len;
        double want;
    } ok[] = {
        {"\xf9\x3c\x00", 3, 1.0},                                  /* half */
        {"\xf9\xb4\x00", 3, -0.25},                                /* half, negative */
        {"\xf9\x00\x01", 3, 5.9604644775390625e-08},               /* half, subnormal */
        {"\xf9\x7b\xff", 3, 65504.0},                              /* half, largest */
        {"\xfa\x3e\x80\x00\x00", 5, 0.25},                         /* single */
        {"\xfb\x3f\xb9\x99\x99\x99\x99\x99\x9a", 9, 0.1},          /* double */
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        proto_cbor_buf_t b;
        proto_cbor_buf_init(&b, 1024);
        s_done_with_cost(&b, ok[i].raw, ok[i].len);
        proto_worker_reply_t out;
        proto_worker_error_t err;
        assert_int_equal(proto_worker_reply_decode(b.data, b.len, &out, &err), 0);
        assert_true(out.final.has_cost_usd);
        if (out.final.cost_usd != ok[i].want)
            fail_msg("case %zu: %.17g, want %.17g", i, out.final.cost_usd, ok[i].want);
        proto_worker_reply_clear(&out);
        proto_cbor_buf_free(&b);
    }
    static const struct {
        const char *seed, *raw;
        size_t len;
        proto_worker_reason_t want;
    } bad[] = {
        {"bad_cost_nan", "\xf9\x7e\x00", 3, PROTO_WORKER_BAD_VALUE},
        {"bad_cost_inf", "\xfa\x7f\x80\x00\x00", 5, PROTO_WORKER_BAD_VALUE},
        {"bad_cost_neg_inf", "\xfb\xff\xf0\x00\x00\x00\x00\x00\x00", 9, PROTO_WORKER_BAD_VALUE},
        {"bad_cost_true", "\xf5", 1, PROTO_WORKER_WRONG_TYPE},
        {"bad_cost_null", "\xf6", 1, PROTO_WORKER_WRONG_TYPE},
        {"bad_cost_simple", "\xf8\x20", 2, PROTO_WORKER_WRONG_TYPE},
        {"bad_cost_int", "\x01", 1, PROTO_WORKER_WRONG_TYPE},
        {"bad_cost_tagged", "\xc1\xf9\x3c\x00", 4, PROTO_WORKER_WRONG_TYPE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        proto_cbor_buf_t b;
        proto_cbor_buf_init(&b, 1024);
        s_done_with_cost(&b, bad[i].raw, bad[i].len);
        s_refuse_rep(bad[i].seed, b.data, b.len, bad[i].want);
        proto_cbor_buf_free(&b);
    }
}

static void test_refusals(void **state)
{
    (void) state;
    proto_cbor_buf_t b;

    s_refuse_req("bad_empty", (const uint8_t *) "", 0, PROTO_WORKER_BAD_CBOR);
    s_refuse_req("bad_break", (const uint8_t *) "\xff", 1, PROTO_WORKER_BAD_CBOR);
    s_refuse_req("bad_array", (const uint8_t *) "\x81\x01", 2, PROTO_WORKER_NOT_MAP);
    s_refuse_req("bad_trailing", (const uint8_t *) "\xa0\x00", 2, PROTO_WORKER_BAD_CBOR);
    s_refuse_req("bad_indefinite", (const uint8_t *) "\xbf\xff", 2, PROTO_WORKER_BAD_CBOR);
    s_refuse_req("bad_no_type", (const uint8_t *) "\xa0", 1, PROTO_WORKER_UNKNOWN_TYPE);
    s_refuse_req("bad_int_type", (const uint8_t *) "\xa1\x64type\x01", 7, PROTO_WORKER_UNKNOWN_TYPE);
    s_refuse_req("bad_int_key", (const uint8_t *) "\xa1\x01\x01", 3, PROTO_WORKER_WRONG_TYPE);
    /* An audit body is not a turn body; a reply is not a request. */
    s_refuse_req("bad_audit", (const uint8_t *) "\xa1\x64type\x6c" "audit_verify", 19, PROTO_WORKER_UNKNOWN_TYPE);
    s_refuse_req("bad_done_as_req", (const uint8_t *) "\xa1\x64type\x64" "done", 11, PROTO_WORKER_UNKNOWN_TYPE);
    s_refuse_rep("bad_turn_as_rep", (const uint8_t *) "\xa1\x64type\x64turn", 11, PROTO_WORKER_UNKNOWN_TYPE);
    /* Text that is not UTF-8 is caught before any field is read. */
    s_refuse_req("bad_utf8", (const uint8_t *) "\xa1\x64type\x62\xc3\x28", 9, PROTO_WORKER_BAD_UTF8);

    /* Field by field, through tool_result. */
    static const struct {
        const char *seed, *key;
        const char *raw;
        size_t len;
        proto_worker_reason_t want;
    } cases[] = {
        {"bad_tid_short", "turn_id", "\x41\x00", 2, PROTO_WORKER_BAD_VALUE},
        {"bad_tid_text", "turn_id", "\x61x", 2, PROTO_WORKER_WRONG_TYPE},
        {"bad_id_bytes", "id", "\x41x", 2, PROTO_WORKER_WRONG_TYPE},
        {"bad_result_null", "result", "\xf6", 1, PROTO_WORKER_WRONG_TYPE},
        {"bad_is_error_int", "is_error", "\x01", 1, PROTO_WORKER_WRONG_TYPE},
        {"bad_is_error_tag", "is_error", "\xc1\xf5", 2, PROTO_WORKER_WRONG_TYPE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        proto_cbor_buf_init(&b, PROTO_WORKER_BODY_MAX);
        s_tool_result_with(&b, cases[i].key, (const uint8_t *) cases[i].raw, cases[i].len);
        s_refuse_req(cases[i].seed, b.data, b.len, cases[i].want);
        proto_cbor_buf_free(&b);
    }

    /* A tool call id past PROTO_WORKER_NAME_MAX. */
    char longname[PROTO_WORKER_NAME_MAX + 1];
    memset(longname, 'a', sizeof longname);
    proto_cbor_buf_t raw;
    proto_cbor_buf_init(&raw, 4096);
    proto_cbor_put_text(&raw, longname, sizeof longname);
    proto_cbor_buf_init(&b, PROTO_WORKER_BODY_MAX);
    s_tool_result_with(&b, "id", raw.data, raw.len);
    s_refuse_req("bad_id_long", b.data, b.len, PROTO_WORKER_TOO_LONG);
    proto_cbor_buf_free(&b);
    proto_cbor_buf_free(&raw);

    /* A missing field. */
    proto_cbor_buf_init(&b, 1024);
    proto_cbor_put_head(&b, 5, 2);
    s_text(&b, "type");
    s_text(&b, "stop");
    s_text(&b, "content");
    s_text(&b, "x");
    s_refuse_req("bad_stop_no_tid", b.data, b.len, PROTO_WORKER_MISSING_FIELD);
    proto_cbor_buf_free(&b);

    /* A duplicate key. */
    proto_cbor_buf_init(&b, 1024);
    proto_cbor_put_head(&b, 5, 3);
    s_text(&b, "type");
    s_text(&b, "stop");
    s_text(&b, "turn_id");
    proto_cbor_put_bytes(&b, s_tid, PROTO_UUID_LEN);
    s_text(&b, "turn_id");
    proto_cbor_put_bytes(&b, s_tid, PROTO_UUID_LEN);
    s_refuse_req("bad_dup", b.data, b.len, PROTO_WORKER_DUPLICATE_KEY);
    proto_cbor_buf_free(&b);

    /* A steer with no content. */
    proto_cbor_buf_init(&b, 1024);
    proto_cbor_put_head(&b, 5, 2);
    s_text(&b, "type");
    s_text(&b, "steer");
    s_text(&b, "turn_id");
    proto_cbor_put_bytes(&b, s_tid, PROTO_UUID_LEN);
    s_refuse_req("bad_steer_empty", b.data, b.len, PROTO_WORKER_MISSING_FIELD);
    proto_cbor_buf_free(&b);

    /* Nesting past the limit. */
    proto_cbor_buf_init(&b, 1024);
    proto_cbor_put_head(&b, 5, 2);
    s_text(&b, "type");
    s_text(&b, "stop");
    s_text(&b, "deep");
    for (int i = 0; i < PROTO_WORKER_DEPTH_MAX; i++)
        proto_cbor_put_head(&b, 4, 1);
    proto_cbor_put_head(&b, 0, 0);
    s_refuse_req("bad_deep", b.data, b.len, PROTO_WORKER_BAD_CBOR);
    proto_cbor_buf_free(&b);

    /* Over the body limit, whatever is in it. */
    size_t big = PROTO_WORKER_BODY_MAX + 1;
    uint8_t *huge = calloc(1, big);
    assert_non_null(huge);
    proto_worker_request_t rq;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_request_decode(huge, big, &rq, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_TOO_LARGE);
    free(huge);
}

/* A turn body written by hand: session id `sid`, `n_history` empty maps as
 * history (refused as chat messages unless the count is refused first). */
static void s_hand_turn_n(proto_cbor_buf_t *b, const char *sid, size_t sidlen, size_t n_history)
{
    proto_cbor_buf_init(b, PROTO_WORKER_BODY_MAX);
    proto_cbor_put_head(b, 5, 8);
    s_text(b, "type");
    s_text(b, "turn");
    s_text(b, "turn_id");
    proto_cbor_put_bytes(b, s_tid, PROTO_UUID_LEN);
    s_text(b, "session_id");
    proto_cbor_put_text(b, sid, sidlen);
    s_text(b, "message");
    proto_cbor_put_head(b, 5, 2);
    s_text(b, "role");
    s_text(b, "user");
    s_text(b, "content");
    s_text(b, "x");
    s_text(b, "history");
    proto_cbor_put_head(b, 4, n_history);
    for (size_t i = 0; i < n_history; i++)
        proto_cbor_put_head(b, 5, 0);
    s_text(b, "tools");
    proto_cbor_put_head(b, 4, 0);
    s_text(b, "limits");
    proto_cbor_put_head(b, 5, 2);
    s_text(b, "max_tool_iterations");
    proto_cbor_put_head(b, 0, 3);
    s_text(b, "turn_timeout_s");
    proto_cbor_put_head(b, 0, 30);
    s_text(b, "origin");
    proto_cbor_put_head(b, 5, 1);
    s_text(b, "channel");
    s_text(b, "ws");
    assert_int_equal(b->failed, PROTO_CBOR_OK);
}

static void s_hand_turn(proto_cbor_buf_t *b, const char *sid, size_t sidlen)
{
    s_hand_turn_n(b, sid, sidlen, 0);
}

static void s_patch(uint8_t *p, size_t len, const char *from, const char *to)
{
    size_t n = strlen(from);
    assert_int_equal(strlen(to), n);
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(p + i, from, n) == 0) {
            memcpy(p + i, to, n);
            return;
        }
    fail_msg("no %s in the body", from);
}

static void test_turn_refusals(void **state)
{
    (void) state;
    proto_worker_request_t r = s_turn_full();
    uint8_t *p = NULL;
    size_t len = 0;
    proto_worker_error_t err;
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), 0);

    static const struct {
        const char *seed, *from, *to;
        proto_worker_reason_t want;
    } patches[] = {
        {"bad_role", "\x64role\x66system", "\x64role\x66robots", PROTO_WORKER_BAD_VALUE},
        {"bad_executor", "\x66router", "\x66rooter", PROTO_WORKER_BAD_VALUE},
        {"bad_channel", "\x65" "comms", "\x65" "coms_", PROTO_WORKER_BAD_VALUE},
        {"bad_no_origin", "\x66origin", "\x66orijin", PROTO_WORKER_MISSING_FIELD},
        {"bad_no_limits", "\x66limits", "\x66limitz", PROTO_WORKER_MISSING_FIELD},
        {"bad_no_history", "\x67history", "\x67histo_y", PROTO_WORKER_MISSING_FIELD},
        {"bad_envtype", "\x67request", "\x67regular", PROTO_WORKER_BAD_VALUE},
        /* max_tool_iterations 60 (0x18 0x3c) becomes a negative integer. */
        {"bad_negative", "iterations\x18\x3c", "iterations\x38\x3c", PROTO_WORKER_WRONG_TYPE},
    };
    for (size_t i = 0; i < sizeof patches / sizeof patches[0]; i++) {
        uint8_t *q = malloc(len);
        assert_non_null(q);
        memcpy(q, p, len);
        s_patch(q, len, patches[i].from, patches[i].to);
        s_refuse_req(patches[i].seed, q, len, patches[i].want);
        free(q);
    }
    free(p);

    /* Unknown keys are skipped, so a newer router may add fields. */
    proto_cbor_buf_t b;
    proto_cbor_buf_init(&b, 1024);
    proto_cbor_put_head(&b, 5, 3);
    s_text(&b, "type");
    s_text(&b, "stop");
    s_text(&b, "turn_id");
    proto_cbor_put_bytes(&b, s_tid, PROTO_UUID_LEN);
    s_text(&b, "reason_v2");
    proto_cbor_put_head(&b, 5, 0);
    s_seed("stop_extra_key", b.data, b.len);
    proto_worker_request_t out;
    assert_int_equal(proto_worker_request_decode(b.data, b.len, &out, &err), 0);
    assert_int_equal(out.type, PROTO_WORKER_REQ_STOP);
    proto_worker_request_clear(&out);
    proto_cbor_buf_free(&b);

    /* Session ids: one byte too long is refused by the encoder; an empty
     * one (which the encoder will not write) by the decoder. */
    char sid[PROTO_WORKER_SESSION_ID_MAX + 1];
    memset(sid, 's', sizeof sid);
    r.turn.session_id = (proto_worker_str_t){sid, sizeof sid};
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_TOO_LONG);
    s_hand_turn(&b, "", 0);
    s_refuse_req("bad_empty_session", b.data, b.len, PROTO_WORKER_BAD_VALUE);
    proto_cbor_buf_free(&b);
    s_hand_turn(&b, sid, sizeof sid);
    s_refuse_req("bad_long_session", b.data, b.len, PROTO_WORKER_TOO_LONG);
    proto_cbor_buf_free(&b);
}

static void test_encoder_refusals(void **state)
{
    (void) state;
    uint8_t *p = (uint8_t *) 1;
    size_t len = 1;
    proto_worker_error_t err;

    proto_worker_partial_t pa = {0};
    pa.event.type = PROTO_WORKER_EV_CHUNK;
    pa.event.text = (proto_worker_str_t){"\xc3\x28", 2};
    assert_int_equal(proto_worker_partial_encode(&pa, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_UTF8);
    assert_null(p);

    pa.event.type = 99;
    assert_int_equal(proto_worker_partial_encode(&pa, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);

    proto_worker_final_t f = {0};
    f.type = PROTO_WORKER_FINAL_ERROR;
    f.message = S("x");
    assert_int_equal(proto_worker_final_encode(&f, &p, &len, &err), -1); /* no code */
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "code");

    /* A body past 1 MiB is refused by the encoder too. */
    size_t n = PROTO_WORKER_BODY_MAX;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'x', n);
    f.type = PROTO_WORKER_FINAL_DONE;
    f.full_response = (proto_worker_str_t){big, n};
    assert_int_equal(proto_worker_final_encode(&f, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_TOO_LARGE);
    free(big);

    /* A history longer than the limit: caught before any byte is written. */
    proto_worker_request_t r = s_turn_full();
    r.turn.n_history = PROTO_WORKER_HISTORY_MAX + 1;
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_TOO_LONG);
}

/* A history array claiming more entries than the limit is refused before
 * anything is allocated for them. */
static void test_history_limit(void **state)
{
    (void) state;
    proto_cbor_buf_t b;
    s_hand_turn(&b, "s", 1);
    proto_worker_request_t out;
    proto_worker_error_t err;
    s_seed("turn_hand", b.data, b.len);
    assert_int_equal(proto_worker_request_decode(b.data, b.len, &out, &err), 0);
    assert_int_equal(out.turn.turn_timeout_s, 30);
    proto_worker_request_clear(&out);
    proto_cbor_buf_free(&b);
    s_hand_turn_n(&b, "s", 1, 2);
    s_refuse_req("bad_history_entry", b.data, b.len, PROTO_WORKER_MISSING_FIELD);
    proto_cbor_buf_free(&b);
    s_hand_turn_n(&b, "s", 1, PROTO_WORKER_HISTORY_MAX + 1);
    s_refuse_req("bad_history_long", b.data, b.len, PROTO_WORKER_TOO_LONG);
    proto_cbor_buf_free(&b);
}

/* Every bound and missing value the encoder refuses, with its field, and
 * without writing a body. */
static void test_encoder_bounds(void **state)
{
    (void) state;
    uint8_t *p = (uint8_t *) 1;
    size_t len = 1;
    proto_worker_error_t err;

    proto_worker_request_t r = s_turn_full();
    r.turn.session_id = (proto_worker_str_t){NULL, 0};
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "session_id");
    assert_null(p);
    assert_int_equal(len, 0);

    r = s_turn_full();
    r.turn.n_tools = PROTO_WORKER_TOOLS_MAX + 1; /* checked before tools[] is read */
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_TOO_LONG);
    assert_string_equal(err.field, "tools");

    r = s_turn_full();
    r.turn.message.n_tool_calls = PROTO_WORKER_TOOL_CALLS_MAX + 1;
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_TOO_LONG);
    assert_string_equal(err.field, "tool_calls");

    r = s_turn_full();
    r.turn.message.content = (proto_worker_str_t){NULL, 3}; /* a length without bytes */
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "content");

    r = s_turn_full();
    r.turn.origin.channel = 0;
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "channel");

    r.type = 99;
    assert_int_equal(proto_worker_request_encode(&r, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "type");

    proto_worker_final_t f = {0};
    f.type = PROTO_WORKER_FINAL_DONE;
    f.has_cost_usd = true;
    f.cost_usd = NAN;
    assert_int_equal(proto_worker_final_encode(&f, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "cost_usd");
    f.cost_usd = -INFINITY;
    assert_int_equal(proto_worker_final_encode(&f, &p, &len, &err), -1);
    assert_string_equal(err.field, "cost_usd");
    f.type = 99;
    assert_int_equal(proto_worker_final_encode(&f, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "type");

    proto_worker_reply_t rep = {0};
    rep.type = 99;
    assert_int_equal(proto_worker_reply_encode(&rep, &p, &len, &err), -1);
    assert_int_equal(err.reason, PROTO_WORKER_BAD_VALUE);
    assert_string_equal(err.field, "type");
    assert_null(p);
}

/* Decodes `body` with each of kith's allocations failing in turn: every
 * failed run is NO_MEMORY with the struct cleared and nothing leaked (LSan),
 * until a run that fails none succeeds. Returns the runs that failed. */
static long s_decode_oom(const uint8_t *body, size_t len, bool request)
{
    long i = 0;
    for (; i < ALLOC_FAIL_RUNS_MAX; i++) {
        proto_worker_request_t req;
        proto_worker_reply_t rep;
        proto_worker_error_t err;
        alloc_fail_arm(i);
        int rc = request ? proto_worker_request_decode(body, len, &req, &err)
                         : proto_worker_reply_decode(body, len, &rep, &err);
        unsigned failed = alloc_fail_disarm();
        if (rc == 0) {
            assert_int_equal(failed, 0);
            if (request)
                proto_worker_request_clear(&req);
            else
                proto_worker_reply_clear(&rep);
            return i;
        }
        assert_int_equal(failed, 1);
        assert_int_equal(err.reason, PROTO_WORKER_NO_MEMORY);
        if (request) {
            assert_int_equal(req.type, 0);
            assert_null(req.turn.history);
            assert_null(req.turn.tools);
        } else {
            assert_int_equal(rep.type, 0);
        }
    }
    fail_msg("decode never succeeded");
    return i;
}

static void test_no_memory(void **state)
{
    (void) state;
    uint8_t *body = NULL;
    size_t len = 0;
    proto_worker_error_t err;
    proto_worker_request_t r = s_turn_full();
    assert_int_equal(proto_worker_request_encode(&r, &body, &len, &err), 0);
    /* strings, history, tools and tool calls each allocate */
    assert_true(s_decode_oom(body, len, true) > 10);
    free(body);

    /* The encoder's buffer growing fails: NO_MEMORY, nothing handed out. */
    long i = 0;
    for (; i < ALLOC_FAIL_RUNS_MAX; i++) {
        alloc_fail_arm(i);
        int rc = proto_worker_request_encode(&r, &body, &len, &err);
        unsigned failed = alloc_fail_disarm();
        if (rc == 0) {
            assert_int_equal(failed, 0);
            free(body);
            break;
        }
        assert_int_equal(err.reason, PROTO_WORKER_NO_MEMORY);
        assert_null(body);
    }
    assert_true(i > 0 && i < ALLOC_FAIL_RUNS_MAX);

    proto_worker_reply_t rep = {0};
    rep.type = PROTO_WORKER_REPLY_PARTIAL;
    rep.partial.event.type = PROTO_WORKER_EV_TOOL_CALL;
    rep.partial.event.call = s_calls[0];
    assert_int_equal(proto_worker_reply_encode(&rep, &body, &len, &err), 0);
    assert_true(s_decode_oom(body, len, false) == 3);
    free(body);
    rep = (proto_worker_reply_t){0};
    rep.type = PROTO_WORKER_REPLY_PARTIAL;
    rep.partial.event.type = PROTO_WORKER_EV_LLM_REQUEST;
    rep.partial.event.provider = S("openai");
    rep.partial.event.model = S("m");
    assert_int_equal(proto_worker_reply_encode(&rep, &body, &len, &err), 0);
    assert_true(s_decode_oom(body, len, false) == 2);
    free(body);
    rep = (proto_worker_reply_t){0};
    rep.type = PROTO_WORKER_REPLY_FINAL;
    rep.final.type = PROTO_WORKER_FINAL_ERROR;
    rep.final.code = PROTO_WORKER_CODE_PROVIDER_ERROR;
    rep.final.message = S("m");
    assert_int_equal(proto_worker_reply_encode(&rep, &body, &len, &err), 0);
    assert_true(s_decode_oom(body, len, false) == 1);
    free(body);
}

/* Every reason has its own name; names of values outside the enums. */
static void test_names(void **state)
{
    (void) state;
    for (int a = PROTO_WORKER_OK; a <= PROTO_WORKER_NO_MEMORY; a++) {
        assert_string_not_equal(proto_worker_reason_str((proto_worker_reason_t) a), "unknown");
        for (int b = PROTO_WORKER_OK; b < a; b++)
            assert_string_not_equal(proto_worker_reason_str((proto_worker_reason_t) a),
                                    proto_worker_reason_str((proto_worker_reason_t) b));
    }
    assert_string_equal(proto_worker_reason_str((proto_worker_reason_t) 99), "unknown");
    assert_string_equal(proto_worker_role_str(PROTO_WORKER_ROLE_TOOL), "tool");
    assert_string_equal(proto_worker_role_str((proto_worker_role_t) 0), "?");
    assert_string_equal(proto_worker_event_type_str(PROTO_WORKER_EV_LLM_REQUEST), "llm_request");
    assert_string_equal(proto_worker_event_type_str((proto_worker_event_type_t) 99), "?");
    assert_string_equal(proto_worker_code_str((proto_worker_code_t) 0), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_turn_roundtrip),
        cmocka_unit_test(test_control_and_tool_result_roundtrip),
        cmocka_unit_test(test_partials_roundtrip),
        cmocka_unit_test(test_finals_roundtrip),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_cost_usd_widths),
        cmocka_unit_test(test_turn_refusals),
        cmocka_unit_test(test_encoder_refusals),
        cmocka_unit_test(test_history_limit),
        cmocka_unit_test(test_encoder_bounds),
        cmocka_unit_test(test_no_memory),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
