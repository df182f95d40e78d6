/* tests/line_test.c — the newline-delimited line splitter of the plain event
 * listener: LF and CR LF, lone CRs kept, the length limit exact under any
 * split (including a CR LF straddling reads), over-long lines reported once
 * and skipped without storage, and slices whenever a line lies whole in a
 * read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/line.h"

#define OUT_MAX 65536

/* Feed `in` cut at `cuts`, each piece an exactly-sized heap copy; write
 * "[line]" per line (unprintables escaped), "[TOO_LONG]" per notice, then
 * "END". Returns how many lines came out as copies rather than slices. */
static int s_read_cut(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts,
                      size_t max, char *out)
{
    int copies = 0;
    uint8_t *acc = malloc(max);
    proto_line_reader_t r;
    assert_int_equal(proto_line_reader_init(&r, acc, max, max), 0);
    size_t at = 0, from = 0;
    out[0] = '\0';
    for (size_t c = 0; c <= ncuts; c++) {
        size_t to = c < ncuts ? cuts[c] : len;
        size_t n = to - from;
        uint8_t *chunk = malloc(n ? n : 1);
        memcpy(chunk, in + from, n);
        size_t off = 0;
        while (off < n) {
            proto_line_t line;
            ssize_t got = proto_line_read(&r, chunk + off, n - off, &line);
            if (got == -2)
                break;
            assert_true(got > 0 && (size_t) got <= n - off);
            if (line.kind == PROTO_LINE_TOO_LONG) {
                at += (size_t) snprintf(out + at, OUT_MAX - at, "[TOO_LONG]");
            } else {
                assert_true(line.len <= max);
                if (line.at >= chunk && line.at <= chunk + n) {
                    assert_true(line.at + line.len <= chunk + n);
                } else {
                    assert_ptr_equal(line.at, acc);
                    copies++;
                }
                at += (size_t) snprintf(out + at, OUT_MAX - at, "[");
                for (size_t i = 0; i < line.len && at + 6 < OUT_MAX; i++) {
                    uint8_t b = line.at[i];
                    if (b >= 0x20 && b < 0x7f && b != '[' && b != ']' && b != '\\')
                        out[at++] = (char) b;
                    else
                        at += (size_t) snprintf(out + at, OUT_MAX - at, "\\x%02x", b);
                }
                at += (size_t) snprintf(out + at, OUT_MAX - at, "]");
            }
            off += (size_t) got;
        }
        free(chunk);
        from = to;
    }
    snprintf(out + at, OUT_MAX - at, "END");
    free(acc);
    return copies;
}

/* `in` yields `want` whole, in small steps and in every two-piece split. */
static void s_expect_n(const char *in, size_t len, size_t max, const char *want)
{
    char *got = malloc(OUT_MAX);
    size_t cuts[4096];
    static const size_t steps[] = {0, 1, 2, 3, 5, 7};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n = 0;
        if (steps[i])
            for (size_t at = steps[i]; at < len && n < 4096; at += steps[i])
                cuts[n++] = at;
        int copies = s_read_cut((const uint8_t *) in, len, cuts, n, max, got);
        if (strcmp(got, want) != 0)
            fail_msg("step %zu:\n got: %s\nwant: %s", steps[i], got, want);
        if (steps[i] == 0)
            assert_int_equal(copies, 0); /* fed whole: every line is a slice */
    }
    for (size_t cut = 0; cut <= len; cut++) {
        (void) s_read_cut((const uint8_t *) in, len, &cut, 1, max, got);
        if (strcmp(got, want) != 0)
            fail_msg("cut at %zu:\n got: %s\nwant: %s", cut, got, want);
    }
    free(got);
}

static void s_expect(const char *in, size_t max, const char *want)
{
    s_expect_n(in, strlen(in), max, want);
}

static void test_lf_and_crlf(void **state)
{
    (void) state;
    s_expect("{\"body\":\"hi\"}\nplain text\r\n\n\r\nlast", 64,
             "[{\"body\":\"hi\"}][plain text][][]END");
}

/* Only the CR right before LF is part of the end-of-line. */
static void test_lone_cr_is_content(void **state)
{
    (void) state;
    s_expect("a\rb\n\r\r\n\rx\r\r\n", 64, "[a\\x0db][\\x0d][\\x0dx\\x0d]END");
    s_expect("\r", 64, "END");
    s_expect("\r\r\r\n", 64, "[\\x0d\\x0d]END");
}

static void test_nul_and_high_octets(void **state)
{
    (void) state;
    s_expect_n("a\0b\n\xff\xfe\n", 7, 64, "[a\\x00b][\\xff\\xfe]END");
}

/* A line of exactly `max` octets is a line, with either end-of-line and
 * however it is cut; one more octet makes it TOO_LONG. */
static void test_limit_exact(void **state)
{
    (void) state;
    s_expect("12345678\n", 8, "[12345678]END");
    s_expect("12345678\r\n", 8, "[12345678]END");
    s_expect("1234567\r\r\n", 8, "[1234567\\x0d]END");
    s_expect("123456789\n", 8, "[TOO_LONG]END");
    s_expect("12345678\rx\n", 8, "[TOO_LONG]END");
    s_expect("12345678\r\r\n", 8, "[TOO_LONG]END");
}

/* An over-long line is reported once, skipped to its LF, and the stream
 * goes on; one with no LF yet is reported all the same. */
static void test_too_long_skipped(void **state)
{
    (void) state;
    s_expect("ok\n0123456789abcdef0123456789\nnext\r\n\n", 8, "[ok][TOO_LONG][next][]END");
    s_expect("0123456789\n0123456789\n", 8, "[TOO_LONG][TOO_LONG]END");
    s_expect("0123456789", 8, "[TOO_LONG]END");
    s_expect("0123456789\r\n\r\nx\n", 8, "[TOO_LONG][][x]END");
}

/* The notice comes as soon as the first octet over the limit arrives,
 * before the rest of the line (which might never end). */
static void test_too_long_reported_early(void **state)
{
    (void) state;
    uint8_t acc[4];
    proto_line_reader_t r;
    proto_line_t line;
    assert_int_equal(proto_line_reader_init(&r, acc, sizeof acc, 4), 0);
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "abcdefgh", 8, &line), 5);
    assert_int_equal(line.kind, PROTO_LINE_TOO_LONG);
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "fgh", 3, &line), -2);
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "zz\nok\n", 6, &line), 6);
    assert_int_equal(line.kind, PROTO_LINE_TEXT);
    assert_int_equal(line.len, 2);
    assert_memory_equal(line.at, "ok", 2);
}

/* Lines whole in a read are slices of it; split ones come from `acc`. */
static void test_slices(void **state)
{
    (void) state;
    uint8_t acc[16];
    proto_line_reader_t r;
    proto_line_t line;
    static const uint8_t in[] = "one\r\ntwo\nthr";
    assert_int_equal(proto_line_reader_init(&r, acc, sizeof acc, 16), 0);
    assert_int_equal(proto_line_read(&r, in, sizeof in - 1, &line), 5);
    assert_ptr_equal(line.at, in);
    assert_int_equal(line.len, 3);
    assert_int_equal(proto_line_read(&r, in + 5, sizeof in - 6, &line), 4);
    assert_ptr_equal(line.at, in + 5);
    assert_int_equal(proto_line_read(&r, in + 9, sizeof in - 10, &line), -2);
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "ee\r", 3, &line), -2);
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "\n", 1, &line), 1);
    assert_ptr_equal(line.at, acc);
    assert_int_equal(line.len, 5);
    assert_memory_equal(line.at, "three", 5);
    /* A CR held at the end of one read that turns out to be content. */
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "\r", 1, &line), -2);
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "x\n", 2, &line), 2);
    assert_int_equal(line.len, 2);
    assert_memory_equal(line.at, "\rx", 2);
    assert_int_equal(proto_line_read(&r, NULL, 0, &line), -2);
}

static void test_init_rejects(void **state)
{
    (void) state;
    uint8_t acc[8];
    proto_line_reader_t r;
    assert_int_equal(proto_line_reader_init(&r, acc, sizeof acc, 0), -1);
    assert_int_equal(proto_line_reader_init(&r, acc, sizeof acc, 9), -1);
    assert_int_equal(proto_line_reader_init(&r, NULL, 8, 8), -1);
    assert_int_equal(proto_line_reader_init(&r, acc, PROTO_LINE_MAX + 1, PROTO_LINE_MAX + 1), -1);
    assert_int_equal(proto_line_reader_init(&r, acc, sizeof acc, 8), 0);
}

/* The default limit: a 64 KiB line passes, one octet more does not. */
static void test_default_limit(void **state)
{
    (void) state;
    size_t len = PROTO_LINE_MAX + 2;
    uint8_t *in = malloc(len);
    uint8_t *acc = malloc(PROTO_LINE_MAX);
    memset(in, 'j', len);
    proto_line_reader_t r;
    proto_line_t line;
    assert_int_equal(proto_line_reader_init(&r, acc, PROTO_LINE_MAX, PROTO_LINE_MAX), 0);
    in[PROTO_LINE_MAX] = '\n';
    assert_int_equal(proto_line_read(&r, in, 1000, &line), -2);
    assert_int_equal(proto_line_read(&r, in + 1000, PROTO_LINE_MAX + 1 - 1000, &line),
                     (ssize_t) (PROTO_LINE_MAX + 1 - 1000));
    assert_int_equal(line.len, PROTO_LINE_MAX);
    assert_ptr_equal(line.at, acc);
    in[PROTO_LINE_MAX] = 'j';
    in[PROTO_LINE_MAX + 1] = '\n';
    assert_int_equal(proto_line_read(&r, in, len, &line), (ssize_t) PROTO_LINE_MAX + 1);
    assert_int_equal(line.kind, PROTO_LINE_TOO_LONG);
    free(acc);
    free(in);
}

/* ------------------------------------------------------------ growing storage */

typedef struct {
    uint8_t *block; /* the storage */
    size_t most;    /* the most asked for */
    int calls;      /* times asked */
    bool refuse;    /* answer NULL */
} s_grow_t;

static uint8_t *s_grow(void *user, size_t need, size_t *cap)
{
    s_grow_t *g = user;
    g->calls++;
    if (need > g->most)
        g->most = need;
    if (g->refuse)
        return NULL;
    uint8_t *b = realloc(g->block, need);
    if (!b)
        return NULL;
    g->block = b;
    *cap = need;
    return b;
}

/* A growing reader yields what a fixed one does, asks for storage only
 * when a line spans reads, and never for more than arrived (or max). */
static void test_grow_storage(void **state)
{
    (void) state;
    static const char in[] = "abc\nhello world\r\nx\ry\r\r\n\n0123456789ABCDEFtoolong\nend\n";
    const size_t len = sizeof in - 1;
    for (size_t step = 1; step <= len; step++) {
        s_grow_t g = {0};
        proto_line_reader_t r;
        assert_int_equal(proto_line_reader_init_grow(&r, 16, s_grow, &g), 0);
        char got[512] = "";
        size_t at = 0;
        for (size_t from = 0; from < len; from += step) {
            size_t n = from + step <= len ? step : len - from;
            const uint8_t *p = (const uint8_t *) in + from;
            while (n > 0) {
                proto_line_t item;
                ssize_t k = proto_line_read(&r, p, n, &item);
                if (k == -2)
                    break;
                assert_true(k > 0);
                at += (size_t) snprintf(got + at, sizeof got - at, "%s[%.*s]",
                                        item.kind == PROTO_LINE_TOO_LONG ? "!" : "",
                                        (int) item.len, (const char *) item.at);
                p += k;
                n -= (size_t) k;
            }
        }
        assert_string_equal(got, "[abc][hello world][x\ry\r][]![][end]");
        assert_true(g.most <= 16);
        if (step == len)
            assert_int_equal(g.calls, 0); /* fed whole: nothing held */
        free(g.block);
    }
    /* Refused storage is an error, not a silent cut. */
    s_grow_t no = {.refuse = true};
    proto_line_reader_t r;
    proto_line_t item;
    assert_int_equal(proto_line_reader_init_grow(&r, 16, s_grow, &no), 0);
    assert_int_equal(proto_line_read(&r, (const uint8_t *) "ab", 2, &item), -1);
    assert_true(proto_line_reader_init_grow(&r, 0, s_grow, &no) == -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lf_and_crlf),
        cmocka_unit_test(test_lone_cr_is_content),
        cmocka_unit_test(test_nul_and_high_octets),
        cmocka_unit_test(test_limit_exact),
        cmocka_unit_test(test_too_long_skipped),
        cmocka_unit_test(test_too_long_reported_early),
        cmocka_unit_test(test_slices),
        cmocka_unit_test(test_init_rejects),
        cmocka_unit_test(test_default_limit),
        cmocka_unit_test(test_grow_storage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
