/* tests/ws_test.c — the WebSocket frame parser and encoder: the RFC 6455 §5.7
 * examples byte for byte, every rule of §5 and its close code, UTF-8 across
 * fragments, the message limit, Close frames, and each case fed whole, byte by
 * byte, split at every point and at random points, with the same result. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "proto/ws.h"

/* ------------------------------------------------------------------ transcript */

#define TEXT_CAP 16384
#define FRAME_CAP (70u * 1024)

/* What a parse produced, rendered as text: one entry per completed frame,
 * then the error if any. Data slices are joined per frame, so any split of
 * the input must render the same. */
typedef struct {
    char text[TEXT_CAP];            /* the rendering */
    size_t text_len;                /* bytes used in text */
    uint8_t frame[FRAME_CAP];       /* payload of the data frame being assembled */
    size_t frame_len;               /* bytes in frame */
    bool frame_open;                /* a data frame has begun and not ended */
    bool message_open;              /* a data message has begun and not ended */
    proto_ws_event_t head;          /* first event of the open frame */
    bool failed;                    /* the parser returned -1 */
} transcript_t;

static void s_put(transcript_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_put(transcript_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->text + t->text_len, TEXT_CAP - t->text_len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t) n < TEXT_CAP - t->text_len);
    t->text_len += (size_t) n;
}

static uint64_t s_fnv(const uint8_t *d, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 0x100000001b3ULL;
    return h;
}

/* Short payloads as a C-ish string, long ones by length and hash. */
static void s_put_payload(transcript_t *t, const uint8_t *d, size_t n)
{
    if (n > 48) {
        s_put(t, "<%zu bytes %016llx>", n, (unsigned long long) s_fnv(d, n));
        return;
    }
    s_put(t, "\"");
    for (size_t i = 0; i < n; i++) {
        if (d[i] >= 0x20 && d[i] < 0x7F && d[i] != '"' && d[i] != '\\')
            s_put(t, "%c", d[i]);
        else
            s_put(t, "\\x%02x", d[i]);
    }
    s_put(t, "\"");
}

static void s_sep(transcript_t *t)
{
    if (t->text_len > 0)
        s_put(t, "; ");
}

static void s_put_frame(transcript_t *t)
{
    const proto_ws_event_t *h = &t->head;
    s_sep(t);
    s_put(t, "%s", h->opcode == PROTO_WS_OP_TEXT ? "text" : "binary");
    if (!(h->message_begin && h->fin))
        s_put(t, "[%s]", h->message_begin ? "first" : h->fin ? "last" : "cont");
    s_put(t, " ");
    s_put_payload(t, t->frame, t->frame_len);
}

/* Records one event, checking the promises proto_ws_event_t makes. */
static void s_record(transcript_t *t, const proto_ws_event_t *ev)
{
    switch (ev->opcode) {
    case PROTO_WS_OP_TEXT:
    case PROTO_WS_OP_BINARY:
        assert_int_equal(ev->frame_begin, !t->frame_open);
        if (ev->frame_begin) {
            assert_int_equal(ev->message_begin, !t->message_open);
            t->head = *ev;
            t->frame_open = true;
            t->message_open = true;
            t->frame_len = 0;
        } else {
            assert_int_equal(ev->opcode, t->head.opcode);
            assert_int_equal(ev->fin, t->head.fin);
            assert_int_equal(ev->frame_len, t->head.frame_len);
            assert_false(ev->message_begin);
        }
        assert_true(t->frame_len + ev->len <= FRAME_CAP);
        if (ev->len > 0)
            memcpy(t->frame + t->frame_len, ev->data, ev->len);
        t->frame_len += ev->len;
        assert_int_equal(ev->frame_end, t->frame_len == ev->frame_len);
        assert_int_equal(ev->message_end, ev->frame_end && ev->fin);
        if (ev->frame_end) {
            s_put_frame(t);
            t->frame_open = false;
            t->message_open = !ev->message_end;
        }
        break;
    case PROTO_WS_OP_PING:
    case PROTO_WS_OP_PONG:
    case PROTO_WS_OP_CLOSE:
        assert_false(t->frame_open);
        assert_true(ev->fin && ev->frame_begin && ev->frame_end && ev->message_begin && ev->message_end);
        assert_true(ev->len <= PROTO_WS_CONTROL_MAX);
        s_sep(t);
        if (ev->opcode == PROTO_WS_OP_CLOSE)
            s_put(t, "close %u ", ev->close_code);
        else
            s_put(t, "%s ", ev->opcode == PROTO_WS_OP_PING ? "ping" : "pong");
        s_put_payload(t, ev->data, ev->len);
        break;
    default:
        fail_msg("event with opcode %d", ev->opcode);
    }
}

/* ------------------------------------------------------------------ feeding */

typedef enum { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_AT, SPLIT_RANDOM } split_kind_t;

typedef struct {
    split_kind_t kind;   /* how to cut the input */
    size_t at;           /* SPLIT_AT: the one cut */
    uint64_t rng;        /* SPLIT_RANDOM: xorshift state */
} split_t;

static uint64_t s_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static size_t s_chunk(split_t *sp, size_t done, size_t remaining)
{
    switch (sp->kind) {
    case SPLIT_WHOLE:
        return remaining;
    case SPLIT_BYTES:
        return 1;
    case SPLIT_AT:
        return done < sp->at && sp->at - done < remaining ? sp->at - done : remaining;
    case SPLIT_RANDOM: {
        uint64_t r = s_rand(&sp->rng);
        size_t max = (r & 3) == 0 ? 4096 : 17;
        size_t n = 1 + (size_t) (s_rand(&sp->rng) % max);
        return n < remaining ? n : remaining;
    }
    }
    return remaining;
}

/* Parses `in` in the chunks `sp` cuts, each chunk in its own exactly-sized
 * buffer (so reads past a chunk trip ASan), and renders the result. */
static void s_run(transcript_t *t, proto_ws_mode_t mode, uint64_t limit, const uint8_t *in, size_t n,
                  split_t sp)
{
    memset(t, 0, sizeof *t);
    proto_ws_parser_t *p = proto_ws_parser_new(mode);
    assert_non_null(p);
    proto_ws_parser_set_limit(p, limit);
    size_t done = 0;
    while (done < n && !t->failed) {
        size_t len = s_chunk(&sp, done, n - done);
        uint8_t *chunk = malloc(len);
        assert_non_null(chunk);
        memcpy(chunk, in + done, len);
        size_t off = 0;
        while (off < len) {
            proto_ws_event_t ev;
            ssize_t r = proto_ws_parse(p, chunk + off, len - off, &ev);
            if (r == -2)
                break;
            if (r == -1) {
                t->failed = true;
                break;
            }
            assert_true(r > 0 && (size_t) r <= len - off);
            s_record(t, &ev);
            off += (size_t) r;
        }
        free(chunk);
        done += len;
    }
    if (t->failed) {
        proto_ws_reason_t r = proto_ws_parser_reason(p);
        assert_int_not_equal(r, PROTO_WS_OK);
        s_sep(t);
        s_put(t, "error %u: %s", proto_ws_reason_close_code(r), proto_ws_reason_str(r));
        /* The failure sticks. */
        proto_ws_event_t ev;
        uint8_t byte = 0x81;
        assert_int_equal(proto_ws_parse(p, &byte, 1, &ev), -1);
    } else if (t->frame_open) {
        s_put_frame(t);
        s_put(t, " (partial)");
    }
    proto_ws_parser_destroy(&p);
    assert_null(p);
}

/* Parses `in` whole, byte by byte, cut at every point (short inputs) and
 * at random points, and checks every rendering equals `want`. */
static void s_expect_limit(proto_ws_mode_t mode, uint64_t limit, const uint8_t *in, size_t n,
                           const char *want)
{
    transcript_t *t = malloc(sizeof *t);
    assert_non_null(t);
    s_run(t, mode, limit, in, n, (split_t) {.kind = SPLIT_WHOLE});
    assert_string_equal(t->text, want);
    s_run(t, mode, limit, in, n, (split_t) {.kind = SPLIT_BYTES});
    assert_string_equal(t->text, want);
    if (n <= 600) {
        for (size_t at = 1; at < n; at++) {
            s_run(t, mode, limit, in, n, (split_t) {.kind = SPLIT_AT, .at = at});
            assert_string_equal(t->text, want);
        }
    }
    for (uint64_t seed = 1; seed <= 24; seed++) {
        s_run(t, mode, limit, in, n, (split_t) {.kind = SPLIT_RANDOM, .rng = seed * 0x9E3779B97F4A7C15ULL});
        assert_string_equal(t->text, want);
    }
    free(t);
}

static void s_expect(proto_ws_mode_t mode, const uint8_t *in, size_t n, const char *want)
{
    s_expect_limit(mode, PROTO_WS_MESSAGE_MAX_DEFAULT, in, n, want);
}

#define SERVER PROTO_WS_MODE_SERVER
#define CLIENT PROTO_WS_MODE_CLIENT
#define EXPECT(mode, bytes, want) s_expect(mode, (const uint8_t *) (bytes), sizeof(bytes) - 1, want)

/* ------------------------------------------------------------------ streams */

/* A byte stream built frame by frame with the encoder. */
typedef struct {
    uint8_t buf[FRAME_CAP];   /* the stream */
    size_t len;               /* bytes in buf */
    bool masked;              /* frames are masked: sent by a client */
    uint8_t key_seed;         /* varies the masking key from frame to frame */
} stream_t;

static void s_stream_init(stream_t *s, proto_ws_mode_t reader)
{
    memset(s, 0, sizeof *s);
    s->masked = reader == SERVER;
}

static void s_frame(stream_t *s, proto_ws_opcode_t op, bool fin, const void *payload, size_t len)
{
    uint8_t key[PROTO_WS_MASK_LEN] = {0x37, 0xfa, 0x21, (uint8_t) (0x3d + s->key_seed++)};
    ssize_t n = proto_ws_frame_encode(s->buf + s->len, sizeof s->buf - s->len, op, fin, payload, len,
                                      s->masked ? key : NULL);
    assert_true(n > 0);
    s->len += (size_t) n;
}

static void s_str(stream_t *s, proto_ws_opcode_t op, bool fin, const char *payload)
{
    s_frame(s, op, fin, payload, strlen(payload));
}

/* A Close frame with status `code` (sent as is, even when not valid). */
static void s_close(stream_t *s, uint16_t code, const char *reason)
{
    uint8_t body[PROTO_WS_CONTROL_MAX];
    size_t n = strlen(reason);
    body[0] = (uint8_t) (code >> 8);
    body[1] = (uint8_t) code;
    memcpy(body + 2, reason, n);
    s_frame(s, PROTO_WS_OP_CLOSE, true, body, n + 2);
}

/* ------------------------------------------------------------------ RFC 6455 §5.7 */

static void test_rfc_single_frame_unmasked_text(void **state)
{
    (void) state;
    EXPECT(CLIENT, "\x81\x05\x48\x65\x6c\x6c\x6f", "text \"Hello\"");
}

static void test_rfc_single_frame_masked_text(void **state)
{
    (void) state;
    EXPECT(SERVER, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", "text \"Hello\"");
}

static void test_rfc_fragmented_unmasked_text(void **state)
{
    (void) state;
    EXPECT(CLIENT, "\x01\x03\x48\x65\x6c" "\x80\x02\x6c\x6f", "text[first] \"Hel\"; text[last] \"lo\"");
}

static void test_rfc_ping_and_pong(void **state)
{
    (void) state;
    EXPECT(CLIENT, "\x89\x05\x48\x65\x6c\x6c\x6f", "ping \"Hello\"");
    EXPECT(SERVER, "\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", "pong \"Hello\"");
}

/* "256 bytes binary message in a single unmasked frame" and the 64 KiB one:
 * 0x82 0x7E 0x0100 and 0x82 0x7F 0x0000000000010000. */
static void s_rfc_binary(size_t n, const uint8_t *header, size_t header_len)
{
    uint8_t *in = malloc(header_len + n);
    assert_non_null(in);
    memcpy(in, header, header_len);
    for (size_t i = 0; i < n; i++)
        in[header_len + i] = (uint8_t) (i * 7 + 3);
    char want[128];
    snprintf(want, sizeof want, "binary <%zu bytes %016llx>", n,
             (unsigned long long) s_fnv(in + header_len, n));
    s_expect(CLIENT, in, header_len + n, want);

    uint8_t out[PROTO_WS_HEADER_MAX];
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_BINARY, true, n, NULL), (int) header_len);
    assert_memory_equal(out, header, header_len);
    free(in);
}

static void test_rfc_binary_256(void **state)
{
    (void) state;
    s_rfc_binary(256, (const uint8_t *) "\x82\x7E\x01\x00", 4);
}

static void test_rfc_binary_64k(void **state)
{
    (void) state;
    s_rfc_binary(65536, (const uint8_t *) "\x82\x7F\x00\x00\x00\x00\x00\x01\x00\x00", 10);
}

/* The encoder writes the §5.7 examples exactly. */
static void test_rfc_examples_encoded(void **state)
{
    (void) state;
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t out[64];
    assert_int_equal(proto_ws_frame_encode(out, sizeof out, PROTO_WS_OP_TEXT, true, (const uint8_t *) "Hello", 5, NULL), 7);
    assert_memory_equal(out, "\x81\x05\x48\x65\x6c\x6c\x6f", 7);
    assert_int_equal(proto_ws_frame_encode(out, sizeof out, PROTO_WS_OP_TEXT, true, (const uint8_t *) "Hello", 5, key), 11);
    assert_memory_equal(out, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
    assert_int_equal(proto_ws_frame_encode(out, sizeof out, PROTO_WS_OP_TEXT, false, (const uint8_t *) "Hel", 3, NULL), 5);
    assert_memory_equal(out, "\x01\x03\x48\x65\x6c", 5);
    assert_int_equal(proto_ws_frame_encode(out, sizeof out, PROTO_WS_OP_CONTINUATION, true, (const uint8_t *) "lo", 2, NULL), 4);
    assert_memory_equal(out, "\x80\x02\x6c\x6f", 4);
    assert_int_equal(proto_ws_frame_encode(out, sizeof out, PROTO_WS_OP_PING, true, (const uint8_t *) "Hello", 5, NULL), 7);
    assert_memory_equal(out, "\x89\x05\x48\x65\x6c\x6c\x6f", 7);
    assert_int_equal(proto_ws_frame_encode(out, sizeof out, PROTO_WS_OP_PONG, true, (const uint8_t *) "Hello", 5, key), 11);
    assert_memory_equal(out, "\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
}

/* ------------------------------------------------------------------ delivery */

/* Payloads are unmasked in the caller's buffer and handed back as slices of
 * it; -2 means every byte was taken. */
static void test_in_place_delivery(void **state)
{
    (void) state;
    uint8_t in[] = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    proto_ws_parser_t *p = proto_ws_parser_new(SERVER);
    assert_non_null(p);
    proto_ws_event_t ev;
    assert_int_equal(proto_ws_parse(p, in, 6, &ev), -2);          /* the header alone */
    assert_int_equal(proto_ws_parse(p, in + 6, 5, &ev), 5);
    assert_ptr_equal(ev.data, in + 6);
    assert_memory_equal(in + 6, "Hello", 5);
    proto_ws_parser_destroy(&p);

    /* Header and one payload byte, then the rest: two slices of one frame. */
    uint8_t again[] = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    p = proto_ws_parser_new(SERVER);
    assert_non_null(p);
    assert_int_equal(proto_ws_parse(p, again, 7, &ev), 7);
    assert_true(ev.frame_begin && !ev.frame_end && ev.len == 1 && ev.data == again + 6);
    assert_int_equal(proto_ws_parse(p, again + 7, 4, &ev), 4);
    assert_true(!ev.frame_begin && ev.frame_end && ev.message_end && ev.data == again + 7);
    assert_memory_equal(again + 6, "Hello", 5);
    assert_int_equal(proto_ws_parse(p, again, 0, &ev), -2);
    proto_ws_parser_destroy(&p);
    assert_null(p);
    proto_ws_parser_destroy(&p);   /* idempotent */
    proto_ws_parser_destroy(NULL);
}

/* A control frame all in one buffer is delivered in place; one that arrives
 * in pieces is gathered in the parser. */
static void test_control_frame_gathering(void **state)
{
    (void) state;
    uint8_t in[] = "\x89\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    proto_ws_parser_t *p = proto_ws_parser_new(SERVER);
    assert_non_null(p);
    proto_ws_event_t ev;
    assert_int_equal(proto_ws_parse(p, in, 11, &ev), 11);
    assert_int_equal(ev.opcode, PROTO_WS_OP_PING);
    assert_ptr_equal(ev.data, in + 6);
    assert_memory_equal(ev.data, "Hello", 5);

    uint8_t split[] = "\x89\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    assert_int_equal(proto_ws_parse(p, split, 8, &ev), -2);
    assert_int_equal(proto_ws_parse(p, split + 8, 3, &ev), 3);
    assert_int_equal(ev.len, 5);
    assert_memory_equal(ev.data, "Hello", 5);
    assert_true(ev.data < split || ev.data >= split + sizeof split);
    proto_ws_parser_destroy(&p);
}

static void test_control_between_fragments(void **state)
{
    (void) state;
    for (int m = 0; m < 2; m++) {
        proto_ws_mode_t mode = m ? CLIENT : SERVER;
        stream_t *s = malloc(sizeof *s);
        assert_non_null(s);
        s_stream_init(s, mode);
        s_str(s, PROTO_WS_OP_TEXT, false, "Hel");
        s_str(s, PROTO_WS_OP_PING, true, "are you there");
        s_str(s, PROTO_WS_OP_CONTINUATION, false, "l");
        s_str(s, PROTO_WS_OP_PONG, true, "");
        s_str(s, PROTO_WS_OP_CONTINUATION, false, "");
        s_str(s, PROTO_WS_OP_CONTINUATION, true, "o");
        s_str(s, PROTO_WS_OP_BINARY, true, "");
        s_str(s, PROTO_WS_OP_BINARY, false, "\x01\x02");
        s_str(s, PROTO_WS_OP_CONTINUATION, true, "");
        s_close(s, 1000, "bye");
        s_expect(mode, s->buf, s->len,
                 "text[first] \"Hel\"; ping \"are you there\"; text[cont] \"l\"; pong \"\"; "
                 "text[cont] \"\"; text[last] \"o\"; binary \"\"; binary[first] \"\\x01\\x02\"; "
                 "binary[last] \"\"; close 1000 \"bye\"");
        free(s);
    }
}

static void test_partial_frame(void **state)
{
    (void) state;
    /* The stream ends inside a payload: what came is delivered. */
    EXPECT(CLIENT, "\x01\x03\x48\x65\x6c" "\x80\x05\x6c\x6f", "text[first] \"Hel\"; text[last] \"lo\" (partial)");
    /* Inside a header, or a control frame's payload: nothing yet. */
    EXPECT(CLIENT, "\x81\x7e\x01", "");
    EXPECT(SERVER, "\x89\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51", "");
}

/* Lengths at the edges of each form. */
static void test_length_forms(void **state)
{
    (void) state;
    static const uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int m = 0; m < 2; m++) {
            proto_ws_mode_t mode = m ? CLIENT : SERVER;
            stream_t *s = malloc(sizeof *s);
            assert_non_null(s);
            s_stream_init(s, mode);
            uint8_t *payload = calloc(1, lens[i] + 1);
            assert_non_null(payload);
            s_frame(s, PROTO_WS_OP_BINARY, true, payload, lens[i]);
            size_t header = s->len - lens[i];
            size_t want_header = (lens[i] <= 125 ? 2 : lens[i] <= 65535 ? 4 : 10) + (m ? 0 : 4);
            assert_int_equal(header, want_header);
            transcript_t *want = calloc(1, sizeof *want);
            assert_non_null(want);
            proto_ws_event_t ev = {.opcode = PROTO_WS_OP_BINARY, .data = payload, .len = lens[i],
                                   .frame_len = lens[i], .fin = true, .frame_begin = true,
                                   .frame_end = true, .message_begin = true, .message_end = true};
            s_record(want, &ev);
            s_expect(mode, s->buf, s->len, want->text);
            free(want);
            free(payload);
            free(s);
        }
    }
}

/* ------------------------------------------------------------------ rejects */

static void test_reject_rsv(void **state)
{
    (void) state;
    EXPECT(SERVER, "\xc1\x80\x00\x00\x00\x00", "error 1002: RSV bit set without a negotiated extension");
    EXPECT(SERVER, "\xa2\x80", "error 1002: RSV bit set without a negotiated extension");
    EXPECT(CLIENT, "\x91\x00", "error 1002: RSV bit set without a negotiated extension");
    EXPECT(CLIENT, "\x79\x00", "error 1002: RSV bit set without a negotiated extension");
}

static void test_reject_reserved_opcodes(void **state)
{
    (void) state;
    static const uint8_t ops[] = {0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < sizeof ops; i++) {
        uint8_t in[2] = {(uint8_t) (0x80 | ops[i]), 0x80};
        s_expect(SERVER, in, 2, "error 1002: reserved opcode");
        in[0] = ops[i];
        in[1] = 0x00;
        s_expect(CLIENT, in, 2, "error 1002: reserved opcode");
    }
}

static void test_reject_control_rules(void **state)
{
    (void) state;
    EXPECT(CLIENT, "\x09\x00", "error 1002: fragmented control frame");
    EXPECT(SERVER, "\x08\x80", "error 1002: fragmented control frame");
    EXPECT(CLIENT, "\x0a\x00", "error 1002: fragmented control frame");
    EXPECT(CLIENT, "\x89\x7e\x00\x7e", "error 1002: control frame payload over 125 bytes");
    EXPECT(CLIENT, "\x88\x7f", "error 1002: control frame payload over 125 bytes");
    EXPECT(SERVER, "\x8a\xfe\x00\x7e", "error 1002: control frame payload over 125 bytes");
    /* 125 is the most a control frame carries. */
    uint8_t ping[2 + 125] = {0x89, 125};
    memset(ping + 2, 'p', 125);
    transcript_t *t = malloc(sizeof *t);
    assert_non_null(t);
    s_run(t, CLIENT, PROTO_WS_MESSAGE_MAX_DEFAULT, ping, sizeof ping, (split_t) {.kind = SPLIT_BYTES});
    assert_false(t->failed);
    free(t);
}

static void test_reject_masking(void **state)
{
    (void) state;
    EXPECT(SERVER, "\x81\x05\x48\x65\x6c\x6c\x6f", "error 1002: client frame not masked");
    EXPECT(SERVER, "\x89\x00", "error 1002: client frame not masked");
    EXPECT(SERVER, "\x82\x7e\x01\x00", "error 1002: client frame not masked");
    EXPECT(CLIENT, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", "error 1002: server frame masked");
    EXPECT(CLIENT, "\x8a\x80\x00\x00\x00\x00", "error 1002: server frame masked");
}

static void test_reject_lengths(void **state)
{
    (void) state;
    /* 16-bit form for a length that fits in 7 bits. */
    EXPECT(CLIENT, "\x82\x7e\x00\x7d", "error 1002: payload length not in its shortest form");
    EXPECT(CLIENT, "\x82\x7e\x00\x00", "error 1002: payload length not in its shortest form");
    EXPECT(SERVER, "\x82\xfe\x00\x05", "error 1002: payload length not in its shortest form");
    /* 64-bit form for lengths that fit in 16 bits. */
    EXPECT(CLIENT, "\x82\x7f\x00\x00\x00\x00\x00\x00\xff\xff", "error 1002: payload length not in its shortest form");
    EXPECT(CLIENT, "\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x7e", "error 1002: payload length not in its shortest form");
    EXPECT(SERVER, "\x82\xff\x00\x00\x00\x00\x00\x00\x00\x00", "error 1002: payload length not in its shortest form");
    /* Most significant bit of the 64-bit length set. */
    EXPECT(CLIENT, "\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00", "error 1002: 64-bit payload length with the top bit set");
    EXPECT(SERVER, "\x82\xff\xff\xff\xff\xff\xff\xff\xff\xff", "error 1002: 64-bit payload length with the top bit set");
    /* The shortest forms are accepted: 126 in 16 bits, 65536 in 64 bits,
     * and a huge but legal length is refused only by the size limit. */
    EXPECT(CLIENT, "\x82\x7e\x00\x7e", "");
    EXPECT(CLIENT, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", "");
    EXPECT(CLIENT, "\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff", "error 1009: message too big");
}

static void test_reject_fragmentation(void **state)
{
    (void) state;
    EXPECT(CLIENT, "\x80\x02\x6c\x6f", "error 1002: continuation frame outside a fragmented message");
    EXPECT(CLIENT, "\x00\x00", "error 1002: continuation frame outside a fragmented message");
    EXPECT(CLIENT, "\x81\x01\x41\x80\x00", "text \"A\"; error 1002: continuation frame outside a fragmented message");
    EXPECT(CLIENT, "\x01\x01\x41\x81\x01\x42", "text[first] \"A\"; error 1002: new message inside a fragmented message");
    EXPECT(CLIENT, "\x01\x01\x41\x02\x00", "text[first] \"A\"; error 1002: new message inside a fragmented message");
    EXPECT(CLIENT, "\x02\x01\x41\x89\x00\x82\x00",
           "binary[first] \"A\"; ping \"\"; error 1002: new message inside a fragmented message");
    /* Rules that hold everywhere also hold inside a fragmented message. */
    EXPECT(CLIENT, "\x01\x00\xc0\x00", "text[first] \"\"; error 1002: RSV bit set without a negotiated extension");
    EXPECT(CLIENT, "\x01\x00\x09\x00", "text[first] \"\"; error 1002: fragmented control frame");
    EXPECT(CLIENT, "\x01\x00\x03\x00", "text[first] \"\"; error 1002: reserved opcode");
    EXPECT(SERVER, "\x01\x80\x01\x02\x03\x04\x00\x00",
           "text[first] \"\"; error 1002: client frame not masked");
}

static void test_reject_after_close(void **state)
{
    (void) state;
    EXPECT(CLIENT, "\x88\x00\x81\x00", "close 1005 \"\"; error 1002: data after the Close frame");
    EXPECT(CLIENT, "\x88\x02\x03\xe8\x00", "close 1000 \"\"; error 1002: data after the Close frame");
}

/* ------------------------------------------------------------------ close */

static void test_close_codes(void **state)
{
    (void) state;
    static const uint16_t valid[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                     1012, 1013, 1014, 3000, 3999, 4000, 4999};
    static const uint16_t invalid[] = {0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100,
                                       2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        assert_true(proto_ws_close_code_valid(valid[i]));
        stream_t *s = malloc(sizeof *s);
        assert_non_null(s);
        s_stream_init(s, SERVER);
        s_close(s, valid[i], "done");
        char want[64];
        snprintf(want, sizeof want, "close %u \"done\"", valid[i]);
        s_expect(SERVER, s->buf, s->len, want);
        free(s);
    }
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        assert_false(proto_ws_close_code_valid(invalid[i]));
        stream_t *s = malloc(sizeof *s);
        assert_non_null(s);
        s_stream_init(s, CLIENT);
        s_close(s, invalid[i], "");
        s_expect(CLIENT, s->buf, s->len, "error 1002: Close status code not allowed");
        free(s);
    }
}

static void test_close_payloads(void **state)
{
    (void) state;
    EXPECT(CLIENT, "\x88\x00", "close 1005 \"\"");
    EXPECT(CLIENT, "\x88\x01\x03", "error 1002: Close payload of one byte");
    EXPECT(SERVER, "\x88\x81\x01\x02\x03\x04\x05", "error 1002: Close payload of one byte");
    EXPECT(CLIENT, "\x88\x05\x03\xe8\xce\xba\x21", "close 1000 \"\\xce\\xba!\"");
    EXPECT(CLIENT, "\x88\x04\x03\xe8\xce\x21", "error 1007: Close reason not valid UTF-8");
    EXPECT(CLIENT, "\x88\x03\x03\xe8\xce", "error 1007: Close reason not valid UTF-8");
    EXPECT(CLIENT, "\x88\x05\x03\xe8\xed\xa0\x80", "error 1007: Close reason not valid UTF-8");

    /* Close payload checks on their own. */
    uint16_t code;
    const uint8_t *reason;
    size_t reason_len;
    uint8_t big[126] = {0x03, 0xe8};
    memset(big + 2, 'x', sizeof big - 2);
    assert_int_equal(proto_ws_close_parse(big, sizeof big, &code, &reason, &reason_len),
                     PROTO_WS_ERR_CONTROL_TOO_LONG);
    assert_int_equal(proto_ws_close_parse(big, 125, &code, &reason, &reason_len), PROTO_WS_OK);
    assert_int_equal(code, 1000);
    assert_ptr_equal(reason, big + 2);
    assert_int_equal(reason_len, 123);
}

static void test_close_encode(void **state)
{
    (void) state;
    uint8_t out[PROTO_WS_HEADER_MAX + PROTO_WS_CONTROL_MAX];
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1000, "bye", 3, NULL), 7);
    assert_memory_equal(out, "\x88\x05\x03\xe8" "bye", 7);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, PROTO_WS_CLOSE_NO_STATUS, NULL, 0, NULL), 2);
    assert_memory_equal(out, "\x88\x00", 2);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1009, NULL, 0, NULL), 4);
    assert_memory_equal(out, "\x88\x02\x03\xf1", 4);

    /* Masked, then read back by a server-mode parser. */
    static const uint8_t key[4] = {1, 2, 3, 4};
    ssize_t n = proto_ws_close_encode(out, sizeof out, 4001, "app", 3, key);
    assert_int_equal(n, 11);
    s_expect(SERVER, out, (size_t) n, "close 4001 \"app\"");

    char reason[PROTO_WS_CLOSE_REASON_MAX + 1];
    memset(reason, 'r', sizeof reason);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1000, reason, PROTO_WS_CLOSE_REASON_MAX, NULL), 127);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1000, reason, sizeof reason, NULL), -1);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1005, "x", 1, NULL), -1);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1006, NULL, 0, NULL), -1);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1015, NULL, 0, NULL), -1);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 999, NULL, 0, NULL), -1);
    assert_int_equal(proto_ws_close_encode(out, sizeof out, 1000, "\xc0\xaf", 2, NULL), -1);
    assert_int_equal(proto_ws_close_encode(out, 6, 1000, "bye", 3, NULL), -1);
    assert_int_equal(proto_ws_close_encode(out, 7, 1000, "bye", 3, NULL), 7);
}

/* Every reason has a text fit for a Close reason and the right code. */
static void test_reason_table(void **state)
{
    (void) state;
    for (int r = PROTO_WS_OK; r <= PROTO_WS_ERR_TOO_BIG; r++) {
        const char *s = proto_ws_reason_str((proto_ws_reason_t) r);
        assert_true(strlen(s) > 0 && strlen(s) <= PROTO_WS_CLOSE_REASON_MAX);
        assert_string_not_equal(s, "unknown reason");
        uint16_t code = proto_ws_reason_close_code((proto_ws_reason_t) r);
        uint16_t want = r == PROTO_WS_OK ? 1000
                      : r == PROTO_WS_ERR_TEXT_UTF8 || r == PROTO_WS_ERR_CLOSE_REASON_UTF8 ? 1007
                      : r == PROTO_WS_ERR_TOO_BIG ? 1009 : 1002;
        assert_int_equal(code, want);
        assert_true(proto_ws_close_code_valid(code));
    }
}

/* ------------------------------------------------------------------ UTF-8 */

static void test_text_utf8(void **state)
{
    (void) state;
    /* U+20AC split across three frames, and a 4-byte code point across two. */
    EXPECT(CLIENT, "\x01\x01\xe2" "\x00\x01\x82" "\x80\x01\xac",
           "text[first] \"\\xe2\"; text[cont] \"\\x82\"; text[last] \"\\xac\"");
    EXPECT(CLIENT, "\x01\x02\xf0\x9f" "\x89\x00" "\x80\x02\x98\x80",
           "text[first] \"\\xf0\\x9f\"; ping \"\"; text[last] \"\\x98\\x80\"");
    /* Binary messages are not UTF-8 checked. */
    EXPECT(CLIENT, "\x82\x02\xc0\xaf", "binary \"\\xc0\\xaf\"");
    EXPECT(CLIENT, "\x81\x02\xc0\xaf", "error 1007: text message not valid UTF-8");
    EXPECT(CLIENT, "\x81\x03\xed\xa0\x80", "error 1007: text message not valid UTF-8");
    EXPECT(CLIENT, "\x81\x04\xf4\x90\x80\x80", "error 1007: text message not valid UTF-8");
    /* Truncated at the end of the message, whether the last frame is empty or not. */
    EXPECT(CLIENT, "\x81\x02\xe2\x82", "error 1007: text message not valid UTF-8");
    EXPECT(CLIENT, "\x01\x02\xe2\x82\x80\x00", "text[first] \"\\xe2\\x82\"; error 1007: text message not valid UTF-8");
    /* Invalid across fragments: the continuation that breaks it is refused. */
    EXPECT(CLIENT, "\x01\x02\xe2\x82\x80\x01\x41", "text[first] \"\\xe2\\x82\"; error 1007: text message not valid UTF-8");
    /* A new message starts a new validation. */
    EXPECT(CLIENT, "\x81\x01\x41\x81\x02\xce\xba", "text \"A\"; text \"\\xce\\xba\"");
    /* Fail fast: the bad byte is refused even before the frame ends. */
    EXPECT(CLIENT, "\x81\x05\x41\xff", "error 1007: text message not valid UTF-8");
    EXPECT(CLIENT, "\x81\x05\x41\x42", "text \"AB\" (partial)");
    /* Masked text, validated after unmasking. */
    stream_t *s = malloc(sizeof *s);
    assert_non_null(s);
    s_stream_init(s, SERVER);
    s_str(s, PROTO_WS_OP_TEXT, false, "\xf0\x9f");
    s_str(s, PROTO_WS_OP_CONTINUATION, true, "\x98\x80 ok");
    s_expect(SERVER, s->buf, s->len, "text[first] \"\\xf0\\x9f\"; text[last] \"\\x98\\x80 ok\"");
    s_stream_init(s, SERVER);
    s_str(s, PROTO_WS_OP_TEXT, true, "\xed\xbf\xbf");
    s_expect(SERVER, s->buf, s->len, "error 1007: text message not valid UTF-8");
    free(s);
}

/* ------------------------------------------------------------------ limit */

static void test_message_limit(void **state)
{
    (void) state;
    const uint8_t *ten = (const uint8_t *) "\x82\x0a" "0123456789";
    s_expect_limit(CLIENT, 10, ten, 12, "binary \"0123456789\"");
    s_expect_limit(CLIENT, 9, ten, 12, "error 1009: message too big");
    /* Refused from the header alone, before any payload arrives. */
    s_expect_limit(CLIENT, 9, ten, 2, "error 1009: message too big");
    /* The sum over fragments counts; control frames do not. */
    const uint8_t *frags = (const uint8_t *) "\x02\x03" "abc" "\x89\x05" "hello" "\x80\x03" "def";
    s_expect_limit(CLIENT, 6, frags, 17, "binary[first] \"abc\"; ping \"hello\"; binary[last] \"def\"");
    s_expect_limit(CLIENT, 5, frags, 17, "binary[first] \"abc\"; ping \"hello\"; error 1009: message too big");
    /* Each message starts afresh. */
    const uint8_t *two = (const uint8_t *) "\x82\x03" "abc" "\x82\x03" "def";
    s_expect_limit(CLIENT, 3, two, 10, "binary \"abc\"; binary \"def\"");
    /* Defaults: 1 MiB, and 64 KiB before authentication. */
    s_expect(CLIENT, (const uint8_t *) "\x82\x7f\x00\x00\x00\x00\x00\x10\x00\x00", 10, "");
    s_expect(CLIENT, (const uint8_t *) "\x82\x7f\x00\x00\x00\x00\x00\x10\x00\x01", 10, "error 1009: message too big");
    s_expect_limit(SERVER, PROTO_WS_MESSAGE_MAX_PREAUTH, (const uint8_t *) "\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00", 10, "");
    s_expect_limit(SERVER, PROTO_WS_MESSAGE_MAX_PREAUTH, (const uint8_t *) "\x82\xff\x00\x00\x00\x00\x00\x01\x00\x01", 10,
                   "error 1009: message too big");
}

/* ------------------------------------------------------------------ encoder */

static void test_header_encode(void **state)
{
    (void) state;
    uint8_t out[PROTO_WS_HEADER_MAX];
    static const uint8_t key[4] = {0xa, 0xb, 0xc, 0xd};
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_TEXT, true, 125, NULL), 2);
    assert_memory_equal(out, "\x81\x7d", 2);
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_TEXT, true, 126, NULL), 4);
    assert_memory_equal(out, "\x81\x7e\x00\x7e", 4);
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_BINARY, false, 65535, key), 8);
    assert_memory_equal(out, "\x02\xfe\xff\xff\x0a\x0b\x0c\x0d", 8);
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_CONTINUATION, true, 0x7fffffffffffffffULL, key), 14);
    assert_memory_equal(out, "\x80\xff\x7f\xff\xff\xff\xff\xff\xff\xff\x0a\x0b\x0c\x0d", 14);
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_CLOSE, true, 125, NULL), 2);
    /* What RFC 6455 forbids cannot be encoded. */
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_BINARY, true, 0x8000000000000000ULL, NULL), -1);
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_PING, true, 126, NULL), -1);
    assert_int_equal(proto_ws_header_encode(out, PROTO_WS_OP_PONG, false, 0, NULL), -1);
    assert_int_equal(proto_ws_header_encode(out, (proto_ws_opcode_t) 0x3, true, 0, NULL), -1);
    assert_int_equal(proto_ws_header_encode(out, (proto_ws_opcode_t) 0xB, true, 0, NULL), -1);
    uint8_t small[8];
    assert_int_equal(proto_ws_frame_encode(small, sizeof small, PROTO_WS_OP_TEXT, true, (const uint8_t *) "1234567", 7, NULL), -1);
    assert_int_equal(proto_ws_frame_encode(small, sizeof small, PROTO_WS_OP_TEXT, true, (const uint8_t *) "123456", 6, NULL), 8);
    assert_int_equal(proto_ws_frame_encode(small, 1, PROTO_WS_OP_TEXT, true, NULL, 0, NULL), -1);
}

static void test_mask_in_pieces(void **state)
{
    (void) state;
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t whole[100], pieces[100], orig[100];
    for (size_t i = 0; i < sizeof orig; i++)
        orig[i] = (uint8_t) (i * 31);
    memcpy(whole, orig, sizeof whole);
    proto_ws_mask(whole, sizeof whole, key, 0);
    for (size_t i = 0; i < sizeof whole; i++)
        assert_int_equal(whole[i], orig[i] ^ key[i % 4]);
    for (size_t a = 0; a <= sizeof pieces; a += 7) {
        for (size_t b = a; b <= sizeof pieces; b += 5) {
            memcpy(pieces, orig, sizeof pieces);
            proto_ws_mask(pieces, a, key, 0);
            proto_ws_mask(pieces + a, b - a, key, a);
            proto_ws_mask(pieces + b, sizeof pieces - b, key, b);
            assert_memory_equal(pieces, whole, sizeof whole);
        }
    }
    proto_ws_mask(whole, sizeof whole, key, 0);
    assert_memory_equal(whole, orig, sizeof orig);
}

/* Random messages, fragmented at random and interleaved with pings, written
 * by the encoder for each side and read back at random splits. */
static void test_round_trip(void **state)
{
    (void) state;
    uint64_t rng = 0x243F6A8885A308D3ULL;
    for (int round = 0; round < 40; round++) {
        proto_ws_mode_t mode = round & 1 ? CLIENT : SERVER;
        stream_t *s = malloc(sizeof *s);
        transcript_t *want = malloc(sizeof *want);
        assert_true(s && want);
        s_stream_init(s, mode);
        memset(want, 0, sizeof *want);
        int messages = 1 + (int) (s_rand(&rng) % 6);
        for (int m = 0; m < messages; m++) {
            proto_ws_opcode_t op = s_rand(&rng) & 1 ? PROTO_WS_OP_TEXT : PROTO_WS_OP_BINARY;
            int frames = 1 + (int) (s_rand(&rng) % 4);
            for (int f = 0; f < frames; f++) {
                uint8_t payload[300];
                size_t len = (size_t) (s_rand(&rng) % (s_rand(&rng) & 1 ? 8 : sizeof payload));
                for (size_t i = 0; i < len; i++)
                    payload[i] = (uint8_t) ('a' + s_rand(&rng) % 26);
                bool fin = f == frames - 1;
                s_frame(s, f == 0 ? op : PROTO_WS_OP_CONTINUATION, fin, payload, len);
                proto_ws_event_t ev = {.opcode = op, .data = payload, .len = len, .frame_len = len,
                                       .fin = fin, .frame_begin = true, .frame_end = true,
                                       .message_begin = f == 0, .message_end = fin};
                s_record(want, &ev);
                if (s_rand(&rng) % 3 == 0) {
                    s_str(s, PROTO_WS_OP_PING, true, "p");
                    proto_ws_event_t ping = {.opcode = PROTO_WS_OP_PING, .data = (uint8_t *) "p", .len = 1,
                                             .frame_len = 1, .fin = true, .frame_begin = true,
                                             .frame_end = true, .message_begin = true, .message_end = true};
                    s_record(want, &ping);
                }
            }
        }
        s_expect(mode, s->buf, s->len, want->text);
        free(want);
        free(s);
    }
}

/* ------------------------------------------------------------------ python-websockets */

/* Frames written by python-websockets (tests/data/ws/make_vectors.py): the
 * parser must read them, and the encoder, given the same masking keys, must
 * write them again byte for byte. */

#define VECTOR_FRAMES_MAX 32

typedef struct {
    int opcode;                       /* wire opcode */
    bool fin;                         /* FIN bit */
    bool masked;                      /* the frame carried a masking key */
    uint8_t key[PROTO_WS_MASK_LEN];   /* that key */
    size_t len;                       /* payload length */
    char sha256[65];                  /* payload digest, hex */
} vector_frame_t;

typedef struct {
    int opcode;                       /* wire opcode */
    bool fin;                         /* FIN bit */
    uint8_t *payload;                 /* the payload as the peer sent it (Close: code and reason) */
    size_t len;                       /* its length */
} parsed_frame_t;

static uint8_t *s_slurp(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/ws/%s", KITH_TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    assert_true(size > 0);
    rewind(f);
    uint8_t *buf = malloc((size_t) size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t) size, f), (size_t) size);
    fclose(f);
    buf[size] = 0;
    *len = (size_t) size;
    return buf;
}

static size_t s_vector_frames(const char *name, vector_frame_t *v)
{
    size_t text_len;
    char *text = (char *) s_slurp(name, &text_len);
    size_t n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        assert_true(n < VECTOR_FRAMES_MAX);
        char key[9];
        int fin;
        assert_int_equal(sscanf(line, "%d %d %8s %zu %64s", &v[n].opcode, &fin, key, &v[n].len, v[n].sha256), 5);
        v[n].fin = fin;
        v[n].masked = strcmp(key, "-") != 0;
        if (v[n].masked)
            assert_int_equal(sodium_hex2bin(v[n].key, sizeof v[n].key, key, 8, NULL, NULL, NULL), 0);
        n++;
    }
    free(text);
    return n;
}

/* Parses buf whole into frames as they were on the wire. */
static size_t s_parsed_frames(proto_ws_mode_t mode, uint8_t *buf, size_t len, parsed_frame_t *out)
{
    proto_ws_parser_t *p = proto_ws_parser_new(mode);
    assert_non_null(p);
    size_t n = 0, off = 0;
    while (off < len) {
        proto_ws_event_t ev;
        ssize_t r = proto_ws_parse(p, buf + off, len - off, &ev);
        assert_true(r > 0);
        off += (size_t) r;
        if (ev.opcode == PROTO_WS_OP_TEXT || ev.opcode == PROTO_WS_OP_BINARY) {
            if (ev.frame_begin) {
                assert_true(n < VECTOR_FRAMES_MAX);
                out[n] = (parsed_frame_t) {
                    .opcode = ev.message_begin ? (int) ev.opcode : PROTO_WS_OP_CONTINUATION,
                    .fin = ev.fin,
                    .payload = malloc((size_t) ev.frame_len + 1),
                };
                assert_non_null(out[n].payload);
                n++;
            }
            memcpy(out[n - 1].payload + out[n - 1].len, ev.data, ev.len);
            out[n - 1].len += ev.len;
            continue;
        }
        assert_true(n < VECTOR_FRAMES_MAX);
        parsed_frame_t *f = &out[n++];
        *f = (parsed_frame_t) {.opcode = ev.opcode, .fin = true, .payload = malloc(PROTO_WS_CONTROL_MAX)};
        assert_non_null(f->payload);
        if (ev.opcode == PROTO_WS_OP_CLOSE && ev.close_code != PROTO_WS_CLOSE_NO_STATUS) {
            f->payload[0] = (uint8_t) (ev.close_code >> 8);
            f->payload[1] = (uint8_t) ev.close_code;
            f->len = 2;
        }
        memcpy(f->payload + f->len, ev.data, ev.len);
        f->len += ev.len;
    }
    proto_ws_parser_destroy(&p);
    return n;
}

static void s_check_vectors(const char *name, proto_ws_mode_t mode)
{
    char file[64];
    snprintf(file, sizeof file, "%s.txt", name);
    vector_frame_t want[VECTOR_FRAMES_MAX];
    size_t n_want = s_vector_frames(file, want);
    snprintf(file, sizeof file, "%s.bin", name);
    size_t len;
    uint8_t *wire = s_slurp(file, &len);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    memcpy(buf, wire, len);

    parsed_frame_t got[VECTOR_FRAMES_MAX];
    size_t n_got = s_parsed_frames(mode, buf, len, got);
    assert_int_equal(n_got, n_want);
    uint8_t *again = malloc(len);
    assert_non_null(again);
    size_t again_len = 0;
    for (size_t i = 0; i < n_got; i++) {
        assert_int_equal(got[i].opcode, want[i].opcode);
        assert_int_equal(got[i].fin, want[i].fin);
        assert_int_equal(got[i].len, want[i].len);
        uint8_t digest[crypto_hash_sha256_BYTES];
        char hex[2 * crypto_hash_sha256_BYTES + 1];
        crypto_hash_sha256(digest, got[i].payload, got[i].len);
        sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
        assert_string_equal(hex, want[i].sha256);
        assert_int_equal(want[i].masked, mode == SERVER);
        ssize_t w = proto_ws_frame_encode(again + again_len, len - again_len, (proto_ws_opcode_t) got[i].opcode,
                                          got[i].fin, got[i].payload, got[i].len,
                                          want[i].masked ? want[i].key : NULL);
        assert_true(w > 0);
        again_len += (size_t) w;
        free(got[i].payload);
    }
    assert_int_equal(again_len, len);
    assert_memory_equal(again, wire, len);

    /* And the same frames whatever the split. */
    transcript_t *t = malloc(sizeof *t);
    assert_non_null(t);
    s_run(t, mode, PROTO_WS_MESSAGE_MAX_DEFAULT, wire, len, (split_t) {.kind = SPLIT_WHOLE});
    assert_false(t->failed);
    s_expect(mode, wire, len, t->text);
    free(t);
    free(again);
    free(buf);
    free(wire);
}

static void test_python_websockets_client_frames(void **state)
{
    (void) state;
    s_check_vectors("websockets_client", SERVER);
}

static void test_python_websockets_server_frames(void **state)
{
    (void) state;
    s_check_vectors("websockets_server", CLIENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_single_frame_unmasked_text),
        cmocka_unit_test(test_rfc_single_frame_masked_text),
        cmocka_unit_test(test_rfc_fragmented_unmasked_text),
        cmocka_unit_test(test_rfc_ping_and_pong),
        cmocka_unit_test(test_rfc_binary_256),
        cmocka_unit_test(test_rfc_binary_64k),
        cmocka_unit_test(test_rfc_examples_encoded),
        cmocka_unit_test(test_in_place_delivery),
        cmocka_unit_test(test_control_frame_gathering),
        cmocka_unit_test(test_control_between_fragments),
        cmocka_unit_test(test_partial_frame),
        cmocka_unit_test(test_length_forms),
        cmocka_unit_test(test_reject_rsv),
        cmocka_unit_test(test_reject_reserved_opcodes),
        cmocka_unit_test(test_reject_control_rules),
        cmocka_unit_test(test_reject_masking),
        cmocka_unit_test(test_reject_lengths),
        cmocka_unit_test(test_reject_fragmentation),
        cmocka_unit_test(test_reject_after_close),
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_close_payloads),
        cmocka_unit_test(test_close_encode),
        cmocka_unit_test(test_reason_table),
        cmocka_unit_test(test_text_utf8),
        cmocka_unit_test(test_message_limit),
        cmocka_unit_test(test_header_encode),
        cmocka_unit_test(test_mask_in_pieces),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_python_websockets_client_frames),
        cmocka_unit_test(test_python_websockets_server_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
