/* tests/chat_frame_test.c — gateway/chat_frame: every client frame type and
 * what it hands back, every refusal with its code (INVALID_JSON,
 * EMPTY_CONTENT, UNKNOWN_MESSAGE_TYPE), the bounds, and every server frame's
 * JSON, escaping included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc_fail.h"
#include "gateway/chat_frame.h"
#include "proto/utf8.h"

static gateway_chat_reason_t s_dec(const char *text, size_t len, gateway_chat_in_t *in)
{
    char why[GATEWAY_CHAT_WHY_MAX];
    gateway_chat_reason_t r =
        gateway_chat_frame_decode((const uint8_t *) text, len, in, why, sizeof why);
    assert_true(why[0]);
    if (r != GATEWAY_CHAT_OK) {
        assert_null(in->content);
        assert_null(in->page_context);
        assert_null(in->attachments);
    }
    return r;
}

#define S_D(text) s_dec(text, sizeof text - 1, &in)

static void test_client_frames(void **state)
{
    (void) state;
    gateway_chat_in_t in;
    assert_int_equal(S_D("{\"type\":\"connect\"}"), GATEWAY_CHAT_OK);
    assert_int_equal(in.type, GATEWAY_CHAT_IN_CONNECT);
    gateway_chat_in_clear(&in);
    /* Members a type does not know are ignored, whatever they hold. */
    assert_int_equal(S_D("{\"client\":{\"v\":[1,2]},\"type\":\"connect\",\"content\":5}"),
                     GATEWAY_CHAT_OK);
    assert_null(in.content);
    gateway_chat_in_clear(&in);
    assert_int_equal(S_D(" {\"type\":\"stop\"}\n"), GATEWAY_CHAT_OK);
    assert_int_equal(in.type, GATEWAY_CHAT_IN_STOP);
    gateway_chat_in_clear(&in);
    assert_int_equal(S_D("{\"content\":\"h\\u00e9 \\ud83d\\ude00\\n\",\"type\":\"message\"}"),
                     GATEWAY_CHAT_OK);
    assert_int_equal(in.type, GATEWAY_CHAT_IN_MESSAGE);
    assert_string_equal(in.content, "h\xc3\xa9 \xf0\x9f\x98\x80\n");
    assert_int_equal(in.content_len, 9);
    assert_null(in.page_context);
    assert_null(in.attachments);
    gateway_chat_in_clear(&in);
    assert_int_equal(S_D("{\"type\":\"message\",\"content\":\"x\",\"page_context\":{ \"url\" : "
                         "\"http://a/\", \"n\": [1, 2.5e3, true, null]},\"attachments\":[{\"name\":"
                         "\"a.txt\",\"data\":\"aGk=\"},{}]}"),
                     GATEWAY_CHAT_OK);
    assert_string_equal(in.page_context, "{\"url\":\"http://a/\",\"n\":[1,2.5e3,true,null]}");
    assert_int_equal(in.page_context_len, strlen(in.page_context));
    assert_string_equal(in.attachments, "[{\"name\":\"a.txt\",\"data\":\"aGk=\"},{}]");
    assert_int_equal(in.attachments_count, 2);
    gateway_chat_in_clear(&in);
    /* Scalars, null and [] for the optional members. */
    assert_int_equal(S_D("{\"type\":\"message\",\"content\":\"x\",\"page_context\":\"p\","
                         "\"attachments\":null}"),
                     GATEWAY_CHAT_OK);
    assert_string_equal(in.page_context, "\"p\"");
    assert_null(in.attachments);
    gateway_chat_in_clear(&in);
    assert_int_equal(S_D("{\"type\":\"message\",\"content\":\"x\",\"page_context\":null,"
                         "\"attachments\":[]}"),
                     GATEWAY_CHAT_OK);
    assert_null(in.page_context);
    assert_null(in.attachments);
    gateway_chat_in_clear(&in);
    assert_int_equal(S_D("{\"type\":\"message\",\"content\":\"x\",\"page_context\":false}"),
                     GATEWAY_CHAT_OK);
    assert_string_equal(in.page_context, "false");
    gateway_chat_in_clear(&in);
    assert_int_equal(S_D("{\"type\":\"steer\",\"content\":\"go left\",\"page_context\":{}}"),
                     GATEWAY_CHAT_OK);
    assert_int_equal(in.type, GATEWAY_CHAT_IN_STEER);
    assert_string_equal(in.content, "go left");
    assert_null(in.page_context); /* only a message carries it */
    gateway_chat_in_clear(&in);
}

static void test_refusals(void **state)
{
    (void) state;
    gateway_chat_in_t in;
    /* Not strict JSON, or not an object. */
    static const char *const invalid[] = {
        "", "{", "{\"type\":\"stop\"", "{\"type\":\"stop\",}", "{\"type\":\"stop\"} x",
        "[]", "\"stop\"", "null", "{\"type\":\"stop\",\"type\":\"stop\"}",
        "{\"type\":\"stop\",\"x\":{\"a\":1,\"a\":2}}", "/*c*/{\"type\":\"stop\"}",
        "{\"type\":\"st\\u0000op\"}", "{\"type\":\"stop\",\"x\":\"\\ud800\"}",
        "{\"type\":\"stop\",\"x\":\"\\udc00\"}", "{'type':'stop'}",
        "{\"type\":\"message\",\"content\":7}", "{\"type\":\"message\",\"content\":[\"a\"]}",
        "{\"type\":\"steer\",\"content\":{}}",
        "{\"type\":\"message\",\"content\":\"x\",\"attachments\":{}}",
        "{\"type\":\"message\",\"content\":\"x\",\"attachments\":\"a\"}",
        "{\"type\":\"message\",\"content\":\"x\",\"attachments\":[1]}",
        "{\"type\":\"message\",\"content\":\"x\",\"attachments\":[[]]}",
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        gateway_chat_reason_t r = s_dec(invalid[i], strlen(invalid[i]), &in);
        if (r != GATEWAY_CHAT_INVALID_JSON)
            fail_msg("%s: %d", invalid[i], r);
    }
    /* Raw NUL, bad UTF-8, a UTF-8-encoded surrogate. */
    assert_int_equal(s_dec("{\"type\":\"stop\"}\0", 16, &in), GATEWAY_CHAT_INVALID_JSON);
    assert_int_equal(S_D("{\"type\":\"stop\",\"x\":\"\xff\"}"), GATEWAY_CHAT_INVALID_JSON);
    assert_int_equal(S_D("{\"type\":\"stop\",\"x\":\"\xed\xa0\x80\"}"), GATEWAY_CHAT_INVALID_JSON);
    /* No type, or none we know. */
    static const char *const unknown[] = {
        "{}", "{\"content\":\"x\"}", "{\"type\":5}", "{\"type\":null}", "{\"type\":{}}",
        "{\"type\":\"\"}", "{\"type\":\"MESSAGE\"}", "{\"type\":\"ping\",\"content\":\"x\"}",
        "{\"type\":\"messagemessagemessagemessagemessage\"}",
    };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        gateway_chat_reason_t r = s_dec(unknown[i], strlen(unknown[i]), &in);
        if (r != GATEWAY_CHAT_UNKNOWN_MESSAGE_TYPE)
            fail_msg("%s: %d", unknown[i], r);
    }
    /* Empty content. */
    static const char *const empty[] = {
        "{\"type\":\"message\"}", "{\"type\":\"message\",\"content\":\"\"}",
        "{\"type\":\"message\",\"content\":\" \\t\\r\\n \"}", "{\"type\":\"steer\"}",
        "{\"type\":\"steer\",\"content\":\"\\n\"}",
    };
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        gateway_chat_reason_t r = s_dec(empty[i], strlen(empty[i]), &in);
        if (r != GATEWAY_CHAT_EMPTY_CONTENT)
            fail_msg("%s: %d", empty[i], r);
    }
    assert_string_equal(gateway_chat_reason_code(GATEWAY_CHAT_INVALID_JSON), "INVALID_JSON");
    assert_string_equal(gateway_chat_reason_code(GATEWAY_CHAT_EMPTY_CONTENT), "EMPTY_CONTENT");
    assert_string_equal(gateway_chat_reason_code(GATEWAY_CHAT_UNKNOWN_MESSAGE_TYPE),
                        "UNKNOWN_MESSAGE_TYPE");
}

/* A growing text for the bound tests. */
static char *s_repeat(const char *head, char fill, size_t n, const char *tail, size_t *len)
{
    size_t h = strlen(head), t = strlen(tail);
    char *s = malloc(h + n + t + 1);
    assert_non_null(s);
    memcpy(s, head, h);
    memset(s + h, fill, n);
    memcpy(s + h + n, tail, t + 1);
    *len = h + n + t;
    return s;
}

static void test_bounds(void **state)
{
    (void) state;
    gateway_chat_in_t in;
    size_t len;
    char *s = s_repeat("{\"type\":\"message\",\"content\":\"", 'a', GATEWAY_CHAT_CONTENT_MAX, "\"}",
                       &len);
    assert_int_equal(s_dec(s, len, &in), GATEWAY_CHAT_OK);
    assert_int_equal(in.content_len, GATEWAY_CHAT_CONTENT_MAX);
    gateway_chat_in_clear(&in);
    free(s);
    s = s_repeat("{\"type\":\"message\",\"content\":\"", 'a', GATEWAY_CHAT_CONTENT_MAX + 1, "\"}",
                 &len);
    assert_int_equal(s_dec(s, len, &in), GATEWAY_CHAT_INVALID_JSON);
    free(s);
    s = s_repeat("{\"type\":\"message\",\"content\":\"x\",\"page_context\":\"", 'a',
                 GATEWAY_CHAT_PAGE_CONTEXT_MAX, "\"}", &len);
    assert_int_equal(s_dec(s, len, &in), GATEWAY_CHAT_INVALID_JSON);
    free(s);
    /* Nesting: 32 containers pass, 33 do not. */
    char deep[256];
    int n = snprintf(deep, sizeof deep, "{\"type\":\"stop\",\"x\":");
    for (int i = 0; i < 30; i++)
        deep[n++] = '[';
    for (int i = 0; i < 30; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    assert_int_equal(s_dec(deep, (size_t) n, &in), GATEWAY_CHAT_OK);
    gateway_chat_in_clear(&in);
    n = snprintf(deep, sizeof deep, "{\"type\":\"stop\",\"x\":");
    for (int i = 0; i < 32; i++)
        deep[n++] = '[';
    for (int i = 0; i < 32; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    assert_int_equal(s_dec(deep, (size_t) n, &in), GATEWAY_CHAT_INVALID_JSON);
    /* Attachments: 16 pass, 17 do not. */
    char att[512];
    n = snprintf(att, sizeof att, "{\"type\":\"message\",\"content\":\"x\",\"attachments\":[");
    for (int i = 0; i < 16; i++)
        n += snprintf(att + n, sizeof att - (size_t) n, "%s{}", i ? "," : "");
    n += snprintf(att + n, sizeof att - (size_t) n, "]}");
    assert_int_equal(s_dec(att, (size_t) n, &in), GATEWAY_CHAT_OK);
    assert_int_equal(in.attachments_count, 16);
    gateway_chat_in_clear(&in);
    n -= 2;
    n += snprintf(att + n, sizeof att - (size_t) n, ",{}]}");
    assert_int_equal(s_dec(att, (size_t) n, &in), GATEWAY_CHAT_INVALID_JSON);
    /* Members of one object: 256 pass, 257 do not. */
    size_t cap = 16 + 257 * 16;
    char *many = malloc(cap);
    assert_non_null(many);
    for (int want = 256; want <= 257; want++) {
        n = snprintf(many, cap, "{\"type\":\"stop\",\"x\":{");
        for (int i = 0; i < want; i++)
            n += snprintf(many + n, cap - (size_t) n, "%s\"k%d\":1", i ? "," : "", i);
        n += snprintf(many + n, cap - (size_t) n, "}}");
        gateway_chat_reason_t r = s_dec(many, (size_t) n, &in);
        assert_int_equal(r, want == 256 ? GATEWAY_CHAT_OK : GATEWAY_CHAT_INVALID_JSON);
        gateway_chat_in_clear(&in);
    }
    free(many);
}

static char *s_enc(const gateway_chat_out_t *f)
{
    char *json;
    size_t len;
    assert_int_equal(gateway_chat_frame_encode(f, &json, &len), 0);
    assert_int_equal(strlen(json), len);
    assert_true(proto_utf8_valid((const uint8_t *) json, len));
    return json;
}

#define S_EXPECT(frame, want)                                                                     \
    do {                                                                                          \
        gateway_chat_out_t f_ = frame;                                                            \
        char *j_ = s_enc(&f_);                                                                    \
        assert_string_equal(j_, want);                                                            \
        free(j_);                                                                                 \
    } while (0)

static void test_server_frames(void **state)
{
    (void) state;
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_SESSION_START, .session_id = "s1",
                                   .resumed = true, .message_count = 42, .name = "n\"q"}),
             "{\"type\":\"session_start\",\"session_id\":\"s1\",\"resumed\":true,"
             "\"message_count\":42,\"name\":\"n\\\"q\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_SESSION_START, .session_id = "s1"}),
             "{\"type\":\"session_start\",\"session_id\":\"s1\",\"resumed\":false,"
             "\"message_count\":0,\"name\":\"\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_CONNECTED, .session_id = "s1"}),
             "{\"type\":\"connected\",\"session_id\":\"s1\",\"protocol\":\"kith.v1\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_CHUNK, .turn_id = "t",
                                   .text = "a\\b\n\x01", .text_len = 5}),
             "{\"type\":\"chunk\",\"turn_id\":\"t\",\"content\":\"a\\\\b\\n\\u0001\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_THINKING, .turn_id = "t",
                                   .text = "h\xc3\xa9", .text_len = 3}),
             "{\"type\":\"thinking\",\"turn_id\":\"t\",\"content\":\"h\xc3\xa9\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_TOOL_CALL, .turn_id = "t", .id = "c1",
                                   .name = "shell", .json = "{ \"cmd\" : [1, \"x\"] }",
                                   .json_len = 20}),
             "{\"type\":\"tool_call\",\"turn_id\":\"t\",\"id\":\"c1\",\"name\":\"shell\","
             "\"arguments\":{\"cmd\":[1,\"x\"]}}");
    /* Not JSON: embedded as a string. */
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_TOOL_RESULT, .turn_id = "t",
                                   .id = "c1", .json = "oops {", .json_len = 6, .is_error = true}),
             "{\"type\":\"tool_result\",\"turn_id\":\"t\",\"id\":\"c1\",\"result\":\"oops {\","
             "\"is_error\":true}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_TOOL_RESULT, .turn_id = "t",
                                   .id = "c1", .json = "\"ok\"", .json_len = 4}),
             "{\"type\":\"tool_result\",\"turn_id\":\"t\",\"id\":\"c1\",\"result\":\"ok\","
             "\"is_error\":false}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_OPERATOR_STATUS, .turn_id = "t",
                                   .text = "thinking", .text_len = 8}),
             "{\"type\":\"operator_status\",\"turn_id\":\"t\",\"status\":\"thinking\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_AGENT_EVENT, .name = "agent_start",
                                   .session_id = "s", .json = "{\"a\":1}", .json_len = 7}),
             "{\"type\":\"agent_event\",\"session_id\":\"s\",\"name\":\"agent_start\","
             "\"data\":{\"a\":1}}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_AGENT_EVENT, .name = "x"}),
             "{\"type\":\"agent_event\",\"name\":\"x\",\"data\":null}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_CHUNK_RESET, .turn_id = "t"}),
             "{\"type\":\"chunk_reset\",\"turn_id\":\"t\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_DONE, .turn_id = "t",
                                   .text = "echo: hi", .text_len = 8}),
             "{\"type\":\"done\",\"turn_id\":\"t\",\"full_response\":\"echo: hi\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_STOPPED, .text = "no turn",
                                   .text_len = 7}),
             "{\"type\":\"stopped\",\"message\":\"no turn\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_ERROR, .code = "SESSION_BUSY",
                                   .text = "busy", .text_len = 4}),
             "{\"type\":\"error\",\"message\":\"busy\",\"code\":\"SESSION_BUSY\"}");
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_ERROR, .code = "AGENT_ERROR",
                                   .text = "x", .text_len = 1, .turn_id = "t"}),
             "{\"type\":\"error\",\"message\":\"x\",\"code\":\"AGENT_ERROR\",\"turn_id\":\"t\"}");
    /* Octets that are not UTF-8 become U+FFFD; a NUL is escaped. */
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_CHUNK, .turn_id = "t",
                                   .text = "a\xff\xc3\0b\xe2\x82", .text_len = 7}),
             "{\"type\":\"chunk\",\"turn_id\":\"t\",\"content\":\"a\xef\xbf\xbd\xef\xbf\xbd"
             "\\u0000b\xef\xbf\xbd\xef\xbf\xbd\"}");
    /* JSON text that is not UTF-8 is a string of replacement characters. */
    S_EXPECT(((gateway_chat_out_t){.type = GATEWAY_CHAT_OUT_AGENT_EVENT, .name = "x",
                                   .json = "\"\xff\"", .json_len = 3}),
             "{\"type\":\"agent_event\",\"name\":\"x\",\"data\":\"\\\"\xef\xbf\xbd\\\"\"}");
    char *json = (char *) 1;
    size_t len = 1;
    assert_int_equal(gateway_chat_frame_encode(&(gateway_chat_out_t){.type = 99}, &json, &len), -1);
    assert_null(json);
    assert_string_equal(gateway_chat_out_type_name(GATEWAY_CHAT_OUT_DONE), "done");
    assert_null(gateway_chat_out_type_name(99));
}

/* An encoded frame is strict JSON to the decoder too: a chunk whose
 * content is every octet value but NUL (which the decoder refuses even
 * escaped). */
static void test_round_trip(void **state)
{
    (void) state;
    char all[255];
    for (int i = 0; i < 255; i++)
        all[i] = (char) (i + 1);
    gateway_chat_out_t f = {.type = GATEWAY_CHAT_OUT_CHUNK, .turn_id = "t", .text = all,
                            .text_len = sizeof all};
    char *json;
    size_t len;
    assert_int_equal(gateway_chat_frame_encode(&f, &json, &len), 0);
    /* Re-use the decoder's strictness: wrap it as a stop frame's member. */
    size_t cap = len + 64;
    char *frame = malloc(cap);
    assert_non_null(frame);
    int n = snprintf(frame, cap, "{\"type\":\"stop\",\"x\":%s}", json);
    gateway_chat_in_t in;
    assert_int_equal(s_dec(frame, (size_t) n, &in), GATEWAY_CHAT_OK);
    gateway_chat_in_clear(&in);
    free(frame);
    free(json);
}

/* limits.http_attachment_body_max is the bound applied, not the 25 MiB
 * constant: a configured small one refuses what the default takes, naming
 * the key; a large one lets a frame past the default frame bound. */
static void test_attachments_bound_configured(void **state)
{
    (void) state;
    /* [{"d":"xxx…"}] re-serialised is 10 octets plus the string */
    char text[2200];
    char why[GATEWAY_CHAT_WHY_MAX];
    gateway_chat_in_t in;
    for (size_t body = 990; body <= 991; body++) {
        int n = snprintf(text, sizeof text,
                         "{\"type\":\"message\",\"content\":\"x\",\"attachments\": [ {\"d\": \"");
        memset(text + n, 'a', body);
        n += (int) body;
        n += snprintf(text + n, sizeof text - (size_t) n, "\"} ]}");
        gateway_chat_reason_t r = gateway_chat_frame_decode_limited((const uint8_t *) text,
                                                                    (size_t) n, 1000, &in, why,
                                                                    sizeof why);
        if (body == 990) {
            assert_int_equal(r, GATEWAY_CHAT_OK);
            assert_int_equal(in.attachments_len, 1000);
        } else {
            assert_int_equal(r, GATEWAY_CHAT_INVALID_JSON);
            assert_null(in.attachments);
            assert_string_equal(
                why, "attachments are longer than 1000 octets (limits.http_attachment_body_max)");
        }
        gateway_chat_in_clear(&in);
        /* the default bound takes both */
        assert_int_equal(s_dec(text, (size_t) n, &in), GATEWAY_CHAT_OK);
        gateway_chat_in_clear(&in);
        /* 0 is the default */
        assert_int_equal(gateway_chat_frame_decode_limited((const uint8_t *) text, (size_t) n, 0,
                                                           &in, why, sizeof why),
                         GATEWAY_CHAT_OK);
        gateway_chat_in_clear(&in);
    }
    /* A bound above the default: a frame past 26 MiB whose attachments fit
     * it is taken; the default refuses the frame. */
    size_t att = GATEWAY_CHAT_FRAME_MAX, cap = att + 128;
    char *big = malloc(cap);
    assert_non_null(big);
    int n = snprintf(big, cap, "{\"type\":\"message\",\"content\":\"x\",\"attachments\":[{\"d\":\"");
    memset(big + n, 'b', att);
    size_t len = (size_t) n + att;
    len += (size_t) snprintf(big + len, cap - len, "\"}]}");
    assert_true(len > GATEWAY_CHAT_FRAME_MAX);
    assert_int_equal(gateway_chat_frame_decode((const uint8_t *) big, len, &in, why, sizeof why),
                     GATEWAY_CHAT_INVALID_JSON);
    assert_string_equal(why, "the frame is longer than 26 MiB");
    assert_int_equal(gateway_chat_frame_decode_limited((const uint8_t *) big, len, 27u << 20, &in,
                                                       why, sizeof why),
                     GATEWAY_CHAT_OK);
    assert_int_equal(in.attachments_count, 1);
    assert_int_equal(in.attachments_len, att + 10);
    gateway_chat_in_clear(&in);
    free(big);
}

/* Out of memory at each of the decoder's own allocations in turn (the
 * content, the member names, each captured value): GATEWAY_CHAT_NOMEM
 * (error AGENT_ERROR) with nothing handed back and nothing leaked, or a
 * whole decode; never a frame decoded without part of it. */
static void test_decode_without_memory(void **state)
{
    (void) state;
    static const char frame[] =
        "{\"type\":\"message\",\"content\":\"hi\",\"page_context\":{\"u\":[1,{\"v\":2}]},"
        "\"attachments\":[{\"name\":\"a\",\"data\":\"aGk=\"},{\"n\":null}],\"x\":{\"y\":1}}";
    long skip = 0;
    for (; skip < ALLOC_FAIL_RUNS_MAX; skip++) {
        char why[GATEWAY_CHAT_WHY_MAX];
        gateway_chat_in_t in;
        alloc_fail_arm(skip);
        gateway_chat_reason_t r = gateway_chat_frame_decode_limited(
            (const uint8_t *) frame, sizeof frame - 1, 100, &in, why, sizeof why);
        unsigned failed = alloc_fail_disarm();
        if (failed == 0) {
            assert_int_equal(r, GATEWAY_CHAT_OK);
            assert_string_equal(in.content, "hi");
            assert_string_equal(in.page_context, "{\"u\":[1,{\"v\":2}]}");
            assert_string_equal(in.attachments, "[{\"name\":\"a\",\"data\":\"aGk=\"},{\"n\":null}]");
            assert_int_equal(in.attachments_count, 2);
            gateway_chat_in_clear(&in);
            break;
        }
        assert_int_equal(r, GATEWAY_CHAT_NOMEM);
        assert_string_equal(gateway_chat_reason_code(r), "AGENT_ERROR");
        assert_string_equal(why, "out of memory");
        assert_null(in.content);
        assert_null(in.page_context);
        assert_null(in.attachments);
    }
    assert_true(skip > 2); /* content, page_context, attachments at least */
    assert_true(skip < ALLOC_FAIL_RUNS_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_frames), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_bounds),        cmocka_unit_test(test_server_frames),
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_attachments_bound_configured),
        cmocka_unit_test(test_decode_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
