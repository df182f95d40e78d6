/* tests/sse_test.c — the SSE parser, reader and encoder against the examples
 * of WHATWG HTML §9.2 and the web-platform-tests eventsource/format-*
 * streams, each fed whole, a byte at a time, in odd-sized chunks and in
 * every two-piece split, with LF, CR and CR LF line ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/sse.h"

/* ------------------------------------------------------------ helpers */

#define OUT_MAX 16384

/* Append `len` bytes to a transcript, escaping anything unprintable. */
static void s_out_bytes(char *out, const void *bytes, size_t len)
{
    const uint8_t *b = bytes;
    size_t at = strlen(out);
    for (size_t i = 0; i < len && at + 5 < OUT_MAX; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\' && b[i] != '|')
            out[at++] = (char) b[i];
        else
            at += (size_t) snprintf(out + at, OUT_MAX - at, "\\x%02x", b[i]);
    }
    out[at] = '\0';
}

static void s_out_str(char *out, const char *s)
{
    size_t at = strlen(out);
    snprintf(out + at, OUT_MAX - at, "%s", s);
}

/* One event as "type|id|data|retry;". */
static void s_out_event(char *out, const proto_sse_event_t *ev)
{
    char retry[32];
    s_out_bytes(out, ev->type, ev->type_len);
    s_out_str(out, "|");
    s_out_bytes(out, ev->id, ev->id_len);
    s_out_str(out, "|");
    s_out_bytes(out, ev->data, ev->data_len);
    snprintf(retry, sizeof retry, "|%lld;", (long long) ev->retry_ms);
    s_out_str(out, retry);
}

/* Limits a run uses. */
typedef struct {
    size_t data_cap; /* reader data buffer */
    size_t line_max; /* parser line limit */
} limits_t;

static const limits_t s_roomy = {.data_cap = 4096, .line_max = PROTO_SSE_LINE_MAX};

/* Feed `in` to a fresh reader, cut at `cuts` (ascending offsets), each
 * piece in its own exactly-sized heap copy so ASan sees any over-read.
 * Writes every event, then "ERR:<reason>" or "END", into `out`. */
static void s_read_cut(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts,
                       limits_t lim, char *out)
{
    out[0] = '\0';
    uint8_t *data = lim.data_cap ? malloc(lim.data_cap) : NULL;
    proto_sse_reader_t r;
    assert_int_equal(proto_sse_reader_init(&r, data, lim.data_cap, lim.line_max), 0);
    size_t from = 0;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t to = c < ncuts ? cuts[c] : len;
        size_t n = to - from;
        uint8_t *chunk = malloc(n ? n : 1);
        memcpy(chunk, in + from, n);
        size_t off = 0;
        for (;;) {
            proto_sse_event_t ev;
            ssize_t got = proto_sse_reader_next(&r, chunk + off, n - off, &ev);
            if (got == -2)
                break;
            if (got == -1) {
                s_out_str(out, "ERR:");
                s_out_str(out, proto_sse_reason_str(proto_sse_reader_reason(&r)));
                free(chunk);
                free(data);
                return;
            }
            assert_true(got > 0 && (size_t) got <= n - off);
            s_out_event(out, &ev);
            off += (size_t) got;
        }
        free(chunk);
        from = to;
    }
    s_out_str(out, "END");
    free(data);
}

/* Feed in steps of `step` bytes (0: whole). */
static void s_read_step(const uint8_t *in, size_t len, size_t step, limits_t lim, char *out)
{
    size_t cuts[4096];
    size_t n = 0;
    if (step)
        for (size_t at = step; at < len && n < 4096; at += step)
            cuts[n++] = at;
    s_read_cut(in, len, cuts, n, lim, out);
}

/* The heart of every reader test: `in` gives `want` however it is cut. */
static void s_expect_lim(const char *in, size_t len, limits_t lim, const char *want)
{
    char *got = malloc(OUT_MAX);
    const uint8_t *b = (const uint8_t *) in;
    static const size_t steps[] = {0, 1, 2, 3, 5, 7, 64};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        s_read_step(b, len, steps[i], lim, got);
        if (strcmp(got, want) != 0)
            fail_msg("step %zu:\n got: %s\nwant: %s", steps[i], got, want);
    }
    for (size_t cut = 0; cut <= len; cut++) {
        s_read_cut(b, len, &cut, 1, lim, got);
        if (strcmp(got, want) != 0)
            fail_msg("cut at %zu:\n got: %s\nwant: %s", cut, got, want);
    }
    free(got);
}

static void s_expect_n(const char *in, size_t len, const char *want)
{
    s_expect_lim(in, len, s_roomy, want);
}

static void s_expect(const char *in, const char *want)
{
    s_expect_n(in, strlen(in), want);
}

/* `in` with each LF replaced by `eol` ("\r" or "\r\n"). */
static char *s_with_eol(const char *in, const char *eol)
{
    size_t n = strlen(in), e = strlen(eol);
    char *out = malloc(n * e + 1);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '\n') {
            memcpy(out + at, eol, e);
            at += e;
        } else {
            out[at++] = in[i];
        }
    }
    out[at] = '\0';
    return out;
}

/* The same expectation with LF, CR and CR LF line ends. */
static void s_expect_eols(const char *in, const char *want)
{
    s_expect(in, want);
    char *cr = s_with_eol(in, "\r");
    s_expect(cr, want);
    free(cr);
    char *crlf = s_with_eol(in, "\r\n");
    s_expect(crlf, want);
    free(crlf);
}

/* ------------------------------------------------------------ the spec's examples */

/* §9.2.6: "data: YHOO / data: +2 / data: 10" is one event with the three
 * lines joined by LF. */
static void test_spec_stock_ticker(void **state)
{
    (void) state;
    s_expect_eols("data: YHOO\ndata: +2\ndata: 10\n\n", "message||YHOO\\x0a+2\\x0a10|-1;END");
}

/* §9.2.6: a comment-only block fires nothing; "id: 1" sets the last event
 * ID; a bare "id" resets it; "data:  third event" keeps one leading space;
 * and a block the stream ends without a blank line is never dispatched. */
static void test_spec_four_blocks(void **state)
{
    (void) state;
    static const char stream[] =
        ": test stream\n"
        "\n"
        "data: first event\n"
        "id: 1\n"
        "\n"
        "data:second event\n"
        "id\n"
        "\n"
        "data:  third event\n";
    s_expect_eols(stream, "message|1|first event|-1;message||second event|-1;END");

    char terminated[sizeof stream + 1];
    snprintf(terminated, sizeof terminated, "%s\n", stream);
    s_expect_eols(terminated,
                  "message|1|first event|-1;message||second event|-1;message|| third event|-1;END");
}

/* §9.2.6: "data" alone is an empty data line: the first block dispatches
 * empty data, the second a single LF, the third (unterminated) nothing. */
static void test_spec_empty_data(void **state)
{
    (void) state;
    s_expect_eols("data\n\ndata\ndata\n\ndata:", "message|||-1;message||\\x0a|-1;END");
}

/* §9.2.6: "data:test" and "data: test" are the same event. */
static void test_spec_space_after_colon(void **state)
{
    (void) state;
    s_expect_eols("data:test\n\ndata: test\n\n", "message||test|-1;message||test|-1;END");
}

/* §9.2.1: event types "add" and "remove", then an untyped "message". */
static void test_spec_event_types(void **state)
{
    (void) state;
    s_expect_eols("event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\ndata: 113411\n\n",
                  "add||73857293|-1;remove||2153|-1;message||113411|-1;END");
}

/* ------------------------------------------------------------ web-platform-tests */

/* eventsource/format-field-parsing: NUL in data, two spaces, a capitalised
 * name, NUL in a name, a leading space before a name, CR / LF / CR LF. */
static void test_wpt_field_parsing(void **state)
{
    (void) state;
    static const char in[] = "data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\r"
                             "data_5\ndata:3\rdata:\r\n data:32\ndata:4\n\n";
    s_expect_n(in, sizeof in - 1, "message||\\x00\\x0a 2\\x0a1\\x0a3\\x0a\\x0a4|-1;END");
}

/* eventsource/format-field-unknown: unknown fields, a bare name, a comment. */
static void test_wpt_unknown_fields(void **state)
{
    (void) state;
    s_expect_eols("data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:test\n\n",
                  "message||test\\x0a\\x0atest|-1;END");
}

/* eventsource/format-data-before-final-empty-line and format-field-data. */
static void test_wpt_data_fields(void **state)
{
    (void) state;
    s_expect("data:\n\ndata\ndata\n\ndata:test\n\n", "message|||-1;message||\\x0a|-1;message||test|-1;END");
}

/* eventsource/format-newlines and format-leading-space. */
static void test_wpt_newlines_and_spaces(void **state)
{
    (void) state;
    s_expect("data:test\r\ndata\ndata:test\r\n\r\n", "message||test\\x0a\\x0atest|-1;END");
    s_expect("data:\ttest\rdata: \rdata:test\n\n", "message||\\x09test\\x0a\\x0atest|-1;END");
}

/* eventsource/format-null-character and format-field-event-empty. */
static void test_wpt_null_and_empty_event(void **state)
{
    (void) state;
    s_expect_n("data:\0\n\n\n\n", 9, "message||\\x00|-1;END");
    s_expect("event: \ndata:data\n\n", "message||data|-1;END");
}

/* eventsource/format-bom and format-bom-2: only the very first BOM is
 * stripped; a later one is part of a (then unknown) field name. */
static void test_wpt_bom(void **state)
{
    (void) state;
    s_expect("\xEF\xBB\xBF" "data:1\n\n\xEF\xBB\xBF" "data:2\n\ndata:3\n\n",
             "message||1|-1;message||3|-1;END");
    s_expect("\xEF\xBB\xBF\xEF\xBB\xBF" "data:1\n\ndata:2\n\ndata:3\n\n",
             "message||2|-1;message||3|-1;END");
}

/* ------------------------------------------------------------ interpretation details */

/* A stream opening with part of a BOM: those octets start an unknown field
 * name, so that first line is neither blank nor "data". */
static void test_broken_bom(void **state)
{
    (void) state;
    s_expect("\xEF\xBB" "data: x\n\ndata: y\n\n", "message||y|-1;END");
    s_expect("\xEF" "data: x\n\ndata: y\n\n", "message||y|-1;END");
    s_expect("\xEF\n" "data: z\n\n", "message||z|-1;END");
    s_expect("\xEF\xBB\r\n" "data: z\n\n", "message||z|-1;END");
    s_expect("\xEF\xBB:x\n" "data: z\n\n", "message||z|-1;END");
    s_expect("\xEF\xBB\xBF", "END");
    s_expect("\xEF\xBB\xBF\n" "data: z\n\n", "message||z|-1;END");
}

/* The last event ID survives dispatch and blocks without data; an id
 * containing NUL is ignored; "id" with a value of spaces keeps all but one. */
static void test_last_event_id(void **state)
{
    (void) state;
    static const char in[] = "id: 7\n\ndata: a\n\nid: 8\0x\ndata: b\n\nid:  sp\ndata: c\n\nid\ndata: d\n\n";
    s_expect_n(in, sizeof in - 1, "message|7|a|-1;message|7|b|-1;message| sp|c|-1;message||d|-1;END");
}

/* retry: digits only, within PROTO_SSE_RETRY_MAX, else ignored; it stays. */
static void test_retry(void **state)
{
    (void) state;
    s_expect_eols("retry: 1500\ndata: a\n\nretry: 15x\ndata: b\n\nretry:\ndata: c\n\n"
                  "retry: 99999999999\ndata: d\n\nretry:  3\ndata: e\n\nretry:4294967295\ndata: f\n\n",
                  "message||a|1500;message||b|1500;message||c|1500;message||d|1500;"
                  "message||e|1500;message||f|4294967295;END");
    s_expect("retry: 0\ndata: x\n\n", "message||x|0;END");
}

/* The event type applies to one block only, dispatched or not. */
static void test_event_type_resets(void **state)
{
    (void) state;
    s_expect("event: a\n\ndata: x\n\nevent: b\nevent: c\ndata: y\n\n", "message||x|-1;c||y|-1;END");
}

/* CR LF split over two reads counts once; CR CR is two line ends; CR LF LF
 * is a line end then a blank line. */
static void test_line_end_edges(void **state)
{
    (void) state;
    s_expect("data: a\r\n\r\n", "message||a|-1;END");
    s_expect("data: a\r\rdata: b\r\n\n", "message||a|-1;message||b|-1;END");
    s_expect("data: a\n\r\ndata: b\r\r", "message||a|-1;message||b|-1;END");
    s_expect("\r\n\r\n\n\r", "END");
}

/* An event is dispatched as soon as its blank line's CR arrives, with no
 * byte after it: a server ending events with CR is not kept waiting. */
static void test_dispatch_on_cr(void **state)
{
    (void) state;
    static const uint8_t in[] = "data: now\r\r";
    uint8_t data[64];
    proto_sse_reader_t r;
    proto_sse_event_t ev;
    assert_int_equal(proto_sse_reader_init(&r, data, sizeof data, 1024), 0);
    assert_int_equal(proto_sse_reader_next(&r, in, sizeof in - 1, &ev), (ssize_t) sizeof in - 1);
    assert_memory_equal(ev.data, "now", 3);
    /* The LF that may follow belongs to that CR and dispatches nothing. */
    assert_int_equal(proto_sse_reader_next(&r, (const uint8_t *) "\n", 1, &ev), -2);
    assert_int_equal(proto_sse_reader_next(&r, (const uint8_t *) "data: x\n\n", 9, &ev), 9);
    assert_memory_equal(ev.data, "x", 1);
}

/* ------------------------------------------------------------ bounds */

static void test_data_bound(void **state)
{
    (void) state;
    limits_t eight = {.data_cap = 8, .line_max = 64};
    /* Lines joined by LF: 3 + 1 + 4 = 8 bytes fit exactly. */
    s_expect_lim("data: abc\ndata: defg\n\n", 22, eight, "message||abc\\x0adefg|-1;END");
    s_expect_lim("data: abc\ndata: defgh\n\n", 23, eight, "ERR:data_too_long");
    s_expect_lim("data: 123456789\n\n", 17, eight, "ERR:data_too_long");
    /* The buffer is reused: many events of 8 bytes each fit one after the other. */
    s_expect_lim("data:12345678\n\ndata:abcdefgh\n\n", 30, eight, "message||12345678|-1;message||abcdefgh|-1;END");
    /* A zero-sized buffer still takes events with empty data. */
    limits_t none = {.data_cap = 0, .line_max = 64};
    s_expect_lim("data\n\ndata:\n\n", 13, none, "message|||-1;message|||-1;END");
    s_expect_lim("data:x\n\n", 8, none, "ERR:data_too_long");
}

static void test_line_bound(void **state)
{
    (void) state;
    limits_t ten = {.data_cap = 64, .line_max = 10};
    /* "data: 1234" is 10 octets: accepted with any line end. */
    s_expect_lim("data: 1234\n\n", 12, ten, "message||1234|-1;END");
    s_expect_lim("data: 1234\r\n\r\n", 14, ten, "message||1234|-1;END");
    s_expect_lim("data: 12345\n\n", 13, ten, "ERR:line_too_long");
    /* Comments and unknown fields count too. */
    s_expect_lim(": 123456789\n\n", 13, ten, "ERR:line_too_long");
    s_expect_lim("whatever:1234\n\n", 15, ten, "ERR:line_too_long");
    /* Over both bounds at once: the reader's data bound wins whenever the
     * value bytes before the line's limit already break it, however cut. */
    limits_t tight = {.data_cap = 2, .line_max = 8};
    s_expect_lim("data:123456789\n\n", 16, tight, "ERR:data_too_long");
    limits_t loose = {.data_cap = 4, .line_max = 8};
    s_expect_lim("data:123456789\n\n", 16, loose, "ERR:line_too_long");
    /* A partial BOM counts toward its line. */
    limits_t two = {.data_cap = 64, .line_max = 2};
    s_expect_lim("\xEF\xBB\n", 3, two, "END");
    s_expect_lim("\xEF\xBBx\n", 4, two, "ERR:line_too_long");
    s_expect_lim("\xEF\xBB\xBF" "ab\n", 6, two, "END");
}

static void test_id_and_type_bounds(void **state)
{
    (void) state;
    char in[1024];
    char want[1024];
    char id[PROTO_SSE_ID_MAX + 2];
    memset(id, 'i', sizeof id);
    id[PROTO_SSE_ID_MAX] = '\0';
    snprintf(in, sizeof in, "id: %s\ndata: x\n\n", id);
    snprintf(want, sizeof want, "message|%s|x|-1;END", id);
    s_expect(in, want);
    id[PROTO_SSE_ID_MAX] = 'i';
    id[PROTO_SSE_ID_MAX + 1] = '\0';
    snprintf(in, sizeof in, "id: %s\ndata: x\n\n", id);
    s_expect(in, "ERR:id_too_long");

    char type[PROTO_SSE_TYPE_MAX + 2];
    memset(type, 't', sizeof type);
    type[PROTO_SSE_TYPE_MAX] = '\0';
    snprintf(in, sizeof in, "event: %s\ndata: x\n\n", type);
    snprintf(want, sizeof want, "%s||x|-1;END", type);
    s_expect(in, want);
    type[PROTO_SSE_TYPE_MAX] = 't';
    type[PROTO_SSE_TYPE_MAX + 1] = '\0';
    snprintf(in, sizeof in, "event: %s\ndata: x\n\n", type);
    s_expect(in, "ERR:type_too_long");
}

static void test_init_rejects(void **state)
{
    (void) state;
    proto_sse_parser_t sp;
    proto_sse_reader_t r;
    uint8_t buf[4];
    assert_int_equal(proto_sse_parser_init(&sp, 0), -1);
    assert_int_equal(proto_sse_parser_init(&sp, PROTO_SSE_LINE_MAX + 1), -1);
    assert_int_equal(proto_sse_parser_init(&sp, PROTO_SSE_LINE_MAX), 0);
    assert_int_equal(proto_sse_reader_init(&r, NULL, 4, 64), -1);
    assert_int_equal(proto_sse_reader_init(&r, buf, sizeof buf, 0), -1);
}

/* Errors are sticky: nothing more comes out of a failed reader. */
static void test_error_sticky(void **state)
{
    (void) state;
    uint8_t data[2];
    proto_sse_reader_t r;
    proto_sse_event_t ev;
    assert_int_equal(proto_sse_reader_init(&r, data, sizeof data, 64), 0);
    assert_int_equal(proto_sse_reader_next(&r, (const uint8_t *) "data: abc\n\n", 11, &ev), -1);
    assert_int_equal(proto_sse_reader_reason(&r), PROTO_SSE_DATA_TOO_LONG);
    assert_int_equal(proto_sse_reader_next(&r, (const uint8_t *) "data: a\n\n", 9, &ev), -1);
}

/* ------------------------------------------------------------ the parser's pieces */

/* Collects pieces as "F:value" for complete lines, checking the first/last
 * flags as it goes. */
typedef struct {
    char out[OUT_MAX];  /* transcript */
    bool open;          /* a line's pieces have started */
    int abort_after;    /* return non-zero on this piece (1-based), 0: never */
    int count;          /* pieces seen */
} pieces_t;

static int s_on_piece(void *user, const proto_sse_piece_t *pc)
{
    pieces_t *ps = user;
    static const char *names[] = {"?", "data", "event", "id", "retry", "comment"};
    ps->count++;
    assert_true(pc->first == !ps->open);
    assert_true(pc->len == 0 || pc->value != NULL);
    if (pc->first) {
        s_out_str(ps->out, names[pc->field]);
        s_out_str(ps->out, "=");
    }
    s_out_bytes(ps->out, pc->value, pc->len);
    ps->open = !pc->last;
    if (pc->last) {
        if (pc->ignore)
            s_out_str(ps->out, "(ignored)");
        if (pc->field == PROTO_SSE_FIELD_RETRY && !pc->ignore) {
            char n[24];
            snprintf(n, sizeof n, "(%u)", pc->retry_ms);
            s_out_str(ps->out, n);
        }
        s_out_str(ps->out, ";");
    }
    return ps->abort_after && ps->count >= ps->abort_after;
}

/* Parse `in` cut every `step` bytes; blank lines show as "/". */
static void s_parse_step(const char *in, size_t len, size_t step, pieces_t *ps)
{
    proto_sse_parser_t sp;
    assert_int_equal(proto_sse_parser_init(&sp, PROTO_SSE_LINE_MAX), 0);
    size_t from = 0;
    while (from < len) {
        size_t n = step && step < len - from ? step : len - from;
        size_t off = 0;
        while (off < n) {
            ssize_t got = proto_sse_parse(&sp, (const uint8_t *) in + from + off, n - off, s_on_piece, ps);
            if (got == -2)
                break;
            if (got == -1) {
                s_out_str(ps->out, "ERR:");
                s_out_str(ps->out, proto_sse_reason_str(proto_sse_parser_reason(&sp)));
                return;
            }
            s_out_str(ps->out, "/");
            off += (size_t) got;
        }
        from += n;
    }
}

static void test_parser_pieces(void **state)
{
    (void) state;
    static const char in[] = ": keep-alive\n:\nevent:up\nid:\0\nid: 9\nretry: 12\nretry: -1\n"
                             "data:  x\nfoo: bar\ndata\n\n";
    static const char want[] = "comment=keep-alive;comment=;event=up;id=\\x00(ignored);id=9;retry=12(12);"
                               "retry=-1(ignored);data= x;data=;/";
    for (size_t step = 0; step < 9; step++) {
        pieces_t ps = {0};
        s_parse_step(in, sizeof in - 1, step, &ps);
        assert_string_equal(ps.out, want);
        assert_false(ps.open);
    }
}

/* A long value crosses many reads as many pieces, none stored. */
static void test_parser_long_value(void **state)
{
    (void) state;
    size_t n = 100000;
    char *in = malloc(n + 9);
    memcpy(in, "data:", 5);
    memset(in + 5, 'v', n);
    memcpy(in + 5 + n, "\n\n", 2);
    pieces_t *ps = calloc(1, sizeof *ps);
    s_parse_step(in, n + 7, 4093, ps);
    assert_null(strstr(ps->out, "ERR"));
    assert_int_equal(ps->count, (int) (n / 4093 + 1));
    free(ps);
    free(in);
}

static void test_parser_abort(void **state)
{
    (void) state;
    pieces_t ps = {.abort_after = 2};
    s_parse_step("data: a\ndata: b\ndata: c\n\n", 25, 0, &ps);
    assert_string_equal(ps.out, "data=a;data=b;ERR:aborted");
}

/* ------------------------------------------------------------ the encoder */

static void s_encode_ok(const proto_sse_message_t *m, const char *want)
{
    uint8_t out[1024];
    proto_sse_reason_t why = PROTO_SSE_BAD_ID;
    ssize_t n = proto_sse_encode(out, sizeof out, m, &why);
    assert_int_equal(why, PROTO_SSE_OK);
    assert_int_equal(n, (ssize_t) strlen(want));
    assert_memory_equal(out, want, (size_t) n);
    assert_int_equal(proto_sse_encoded_len(m, NULL), n);
    /* Every buffer one byte short is refused, the exact size accepted. */
    for (size_t cap = 0; cap < (size_t) n; cap++) {
        assert_int_equal(proto_sse_encode(out, cap, m, &why), -1);
        assert_int_equal(why, PROTO_SSE_NO_ROOM);
    }
    assert_int_equal(proto_sse_encode(out, (size_t) n, m, NULL), n);
}

static void test_encode_exact(void **state)
{
    (void) state;
    proto_sse_message_t m = {
        .id = "42", .id_len = 2,
        .type = "update", .type_len = 6,
        .retry_ms = 5000,
        .data = (const uint8_t *) "{\"a\":1}", .data_len = 7,
    };
    s_encode_ok(&m, "id: 42\nevent: update\nretry: 5000\ndata: {\"a\":1}\n\n");

    proto_sse_message_t lines = {.data = (const uint8_t *) "one\ntwo\r\nthree\rfour\n", .data_len = 20, .retry_ms = -1};
    s_encode_ok(&lines, "data: one\ndata: two\ndata: three\ndata: four\ndata:\n\n");

    proto_sse_message_t empty = {.data = (const uint8_t *) "", .data_len = 0, .retry_ms = -1};
    s_encode_ok(&empty, "data:\n\n");

    proto_sse_message_t id_only = {.id = "", .id_len = 0, .retry_ms = -1};
    s_encode_ok(&id_only, "id:\n\n");

    proto_sse_message_t retry_only = {.retry_ms = 0};
    s_encode_ok(&retry_only, "retry: 0\n\n");
}

static void test_encode_rejects(void **state)
{
    (void) state;
    uint8_t out[256];
    proto_sse_reason_t why;
    static const struct {
        const char *id;
        size_t id_len;
        const char *type;
        size_t type_len;
        int64_t retry;
        proto_sse_reason_t want;
    } bad[] = {
        {"a\nb", 3, NULL, 0, -1, PROTO_SSE_BAD_ID},
        {"a\rb", 3, NULL, 0, -1, PROTO_SSE_BAD_ID},
        {"a\0b", 3, NULL, 0, -1, PROTO_SSE_BAD_ID},
        {NULL, 0, "x\n", 2, -1, PROTO_SSE_BAD_TYPE},
        {NULL, 0, "x\r", 2, -1, PROTO_SSE_BAD_TYPE},
        {NULL, 0, "\0", 1, -1, PROTO_SSE_BAD_TYPE},
        {NULL, 0, NULL, 0, (int64_t) PROTO_SSE_RETRY_MAX + 1, PROTO_SSE_BAD_RETRY},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        proto_sse_message_t m = {
            .id = bad[i].id, .id_len = bad[i].id_len,
            .type = bad[i].type, .type_len = bad[i].type_len,
            .retry_ms = bad[i].retry,
            .data = (const uint8_t *) "x", .data_len = 1,
        };
        assert_int_equal(proto_sse_encode(out, sizeof out, &m, &why), -1);
        assert_int_equal(why, bad[i].want);
        assert_int_equal(proto_sse_encoded_len(&m, NULL), -1);
    }
}

static void test_encode_comment(void **state)
{
    (void) state;
    uint8_t out[64];
    proto_sse_reason_t why;
    assert_int_equal(proto_sse_encode_comment(out, sizeof out, "keep-alive", 10, &why), 13);
    assert_memory_equal(out, ": keep-alive\n", 13);
    assert_int_equal(proto_sse_encode_comment(out, sizeof out, "a\r\nb", 4, &why), 8);
    assert_memory_equal(out, ": a\n: b\n", 8);
    assert_int_equal(proto_sse_encode_comment(out, sizeof out, "", 0, &why), 2);
    assert_memory_equal(out, ":\n", 2);
    assert_int_equal(proto_sse_encode_comment(out, 12, "keep-alive", 10, &why), -1);
    assert_int_equal(why, PROTO_SSE_NO_ROOM);
}

/* What the encoder writes, the reader reads back: data whose line breaks
 * are CR, LF or CR LF comes back with LF; leading spaces survive. */
static void test_encode_roundtrip(void **state)
{
    (void) state;
    static const struct {
        const char *data;
        const char *want;
    } cases[] = {
        {"plain", "plain"},
        {" leading space", " leading space"},
        {"  two", "  two"},
        {"a\nb", "a\\x0ab"},
        {"a\r\nb\rc\n", "a\\x0ab\\x0ac\\x0a"},
        {"\n", "\\x0a"},
        {"", ""},
        {"tab\there: colon", "tab\\x09here: colon"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        proto_sse_message_t m = {
            .id = " 7", .id_len = 2,
            .type = "t", .type_len = 1,
            .retry_ms = 10,
            .data = (const uint8_t *) cases[i].data, .data_len = strlen(cases[i].data),
        };
        char wire[256];
        ssize_t n = proto_sse_encode((uint8_t *) wire, sizeof wire - 1, &m, NULL);
        assert_true(n > 0);
        wire[n] = '\0';
        char want[256];
        snprintf(want, sizeof want, "t| 7|%s|10;END", cases[i].want);
        s_expect(wire, want);
    }
    uint8_t out[16];
    assert_int_equal(proto_sse_encode_comment(out, sizeof out, "x", 1, NULL), 4);
    s_expect((const char *) ": x\n", "END");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_stock_ticker),
        cmocka_unit_test(test_spec_four_blocks),
        cmocka_unit_test(test_spec_empty_data),
        cmocka_unit_test(test_spec_space_after_colon),
        cmocka_unit_test(test_spec_event_types),
        cmocka_unit_test(test_wpt_field_parsing),
        cmocka_unit_test(test_wpt_unknown_fields),
        cmocka_unit_test(test_wpt_data_fields),
        cmocka_unit_test(test_wpt_newlines_and_spaces),
        cmocka_unit_test(test_wpt_null_and_empty_event),
        cmocka_unit_test(test_wpt_bom),
        cmocka_unit_test(test_broken_bom),
        cmocka_unit_test(test_last_event_id),
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_event_type_resets),
        cmocka_unit_test(test_line_end_edges),
        cmocka_unit_test(test_dispatch_on_cr),
        cmocka_unit_test(test_data_bound),
        cmocka_unit_test(test_line_bound),
        cmocka_unit_test(test_id_and_type_bounds),
        cmocka_unit_test(test_init_rejects),
        cmocka_unit_test(test_error_sticky),
        cmocka_unit_test(test_parser_pieces),
        cmocka_unit_test(test_parser_long_value),
        cmocka_unit_test(test_parser_abort),
        cmocka_unit_test(test_encode_exact),
        cmocka_unit_test(test_encode_rejects),
        cmocka_unit_test(test_encode_comment),
        cmocka_unit_test(test_encode_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
