/* tests/frame_test.c — the 4-byte length-prefixed frame reader and header
 * encoder: slices versus copies, empty frames, the size limit judged from
 * the header alone, and the same frames whatever way the input is cut. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/frame.h"

/* ------------------------------------------------------------ helpers */

/* Storage handed to the reader: one heap block, grown to exactly what the
 * reader needs each time it asks (realloc keeps what was received). */
typedef struct {
    uint8_t *block;   /* the block handed out */
    size_t asked;     /* room asked for last */
    size_t len_seen;  /* the frame length given last */
    int calls;        /* times asked */
    bool refuse;      /* answer NULL */
} storage_t;

static uint8_t *s_storage(void *user, size_t need, size_t len, size_t *cap)
{
    storage_t *st = user;
    st->calls++;
    st->asked = need;
    st->len_seen = len;
    if (st->refuse)
        return NULL;
    uint8_t *b = realloc(st->block, need);
    if (!b)
        return NULL;
    st->block = b;
    *cap = need;
    return st->block;
}

#define OUT_MAX 65536

/* Feed `in` cut at `cuts`, each piece in an exactly-sized heap copy, and
 * describe what comes out as "len:hex-of-first-8;" per frame, then
 * "ERR:<reason>" or "END" (and "+<n>" when a frame was left half read). */
static void s_read_cut(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts,
                       uint32_t max, char *out)
{
    storage_t st = {0};
    proto_frame_reader_t r;
    assert_int_equal(proto_frame_reader_init(&r, max, s_storage, &st), 0);
    size_t at = 0, from = 0;
    out[0] = '\0';
    for (size_t c = 0; c <= ncuts; c++) {
        size_t to = c < ncuts ? cuts[c] : len;
        size_t n = to - from;
        uint8_t *chunk = malloc(n ? n : 1);
        memcpy(chunk, in + from, n);
        size_t off = 0;
        while (off < n) {
            proto_frame_t f;
            ssize_t got = proto_frame_read(&r, chunk + off, n - off, &f);
            if (got == -2)
                break;
            if (got == -1) {
                snprintf(out + at, OUT_MAX - at, "ERR:%s",
                         proto_frame_reason_str(proto_frame_reader_reason(&r)));
                free(chunk);
                free(st.block);
                return;
            }
            assert_true((size_t) got <= n - off);
            /* A slice points into the chunk just given; a copy into storage. */
            if (f.copied)
                assert_ptr_equal(f.payload, st.block);
            else
                assert_true(f.payload >= chunk + off && f.payload + f.len <= chunk + n);
            at += (size_t) snprintf(out + at, OUT_MAX - at, "%zu:", f.len);
            for (size_t i = 0; i < f.len && i < 8; i++)
                at += (size_t) snprintf(out + at, OUT_MAX - at, "%02x", f.payload[i]);
            at += (size_t) snprintf(out + at, OUT_MAX - at, ";");
            off += (size_t) got;
        }
        free(chunk);
        from = to;
    }
    snprintf(out + at, OUT_MAX - at, "END");
    free(st.block);
}

static void s_expect(const void *in, size_t len, uint32_t max, const char *want)
{
    char *got = malloc(OUT_MAX);
    size_t cuts[8192];
    static const size_t steps[] = {0, 1, 2, 3, 4, 5, 7, 1000};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n = 0;
        if (steps[i])
            for (size_t at = steps[i]; at < len && n < 8192; at += steps[i])
                cuts[n++] = at;
        s_read_cut(in, len, cuts, n, max, got);
        if (strcmp(got, want) != 0)
            fail_msg("step %zu:\n got: %s\nwant: %s", steps[i], got, want);
    }
    for (size_t cut = 0; cut <= len && len < 4096; cut++) {
        s_read_cut(in, len, &cut, 1, max, got);
        if (strcmp(got, want) != 0)
            fail_msg("cut at %zu:\n got: %s\nwant: %s", cut, got, want);
    }
    free(got);
}

/* ------------------------------------------------------------ tests */

static void test_frames(void **state)
{
    (void) state;
    static const uint8_t in[] = {
        0, 0, 0, 3, 'a', 'b', 'c',
        0, 0, 0, 0,                      /* an empty frame */
        0, 0, 0, 1, 0xff,
        0, 0, 1, 2,                      /* 258 bytes follow */
    };
    uint8_t big[sizeof in + 258];
    memcpy(big, in, sizeof in);
    for (int i = 0; i < 258; i++)
        big[sizeof in + i] = (uint8_t) i;
    s_expect(big, sizeof big, PROTO_FRAME_MAX, "3:616263;0:;1:ff;258:0001020304050607;END");
    /* Cut short: the last frame never comes out. */
    s_expect(big, sizeof big - 1, PROTO_FRAME_MAX, "3:616263;0:;1:ff;END");
}

/* The limit is judged from the header alone, before any payload arrives,
 * and without asking for storage. */
static void test_oversize(void **state)
{
    (void) state;
    static const uint8_t over[] = {0, 0x10, 0, 1};   /* PROTO_FRAME_MAX + 1 */
    s_expect(over, sizeof over, PROTO_FRAME_MAX, "ERR:oversize");
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff};
    s_expect(huge, sizeof huge, PROTO_FRAME_MAX, "ERR:oversize");
    /* A good frame first still comes out. */
    static const uint8_t then[] = {0, 0, 0, 1, 'x', 0, 0, 0, 17};
    s_expect(then, sizeof then, 16, "1:78;ERR:oversize");
    static const uint8_t edge[] = {0, 0, 0, 16};
    s_expect(edge, sizeof edge, 16, "END");

    storage_t st = {0};
    proto_frame_reader_t r;
    proto_frame_t f;
    assert_int_equal(proto_frame_reader_init(&r, PROTO_FRAME_MAX, s_storage, &st), 0);
    assert_int_equal(proto_frame_read(&r, huge, sizeof huge, &f), -1);
    assert_int_equal(proto_frame_reader_reason(&r), PROTO_FRAME_OVERSIZE);
    assert_int_equal(proto_frame_reader_declared(&r), 0xffffffffu);
    assert_int_equal(st.calls, 0);
    /* Sticky. */
    assert_int_equal(proto_frame_read(&r, then, sizeof then, &f), -1);
}

/* Exactly PROTO_FRAME_MAX is accepted, whole (a slice) or in pieces (a copy). */
static void test_max_frame(void **state)
{
    (void) state;
    size_t len = PROTO_FRAME_HEADER_LEN + PROTO_FRAME_MAX;
    uint8_t *in = malloc(len);
    assert_int_equal(proto_frame_header_encode(PROTO_FRAME_MAX, in), 0);
    memset(in + PROTO_FRAME_HEADER_LEN, 0x5a, PROTO_FRAME_MAX);

    storage_t st = {0};
    proto_frame_reader_t r;
    proto_frame_t f;
    assert_int_equal(proto_frame_reader_init(&r, PROTO_FRAME_MAX, s_storage, &st), 0);
    assert_int_equal(proto_frame_read(&r, in, len, &f), (ssize_t) len);
    assert_false(f.copied);
    assert_ptr_equal(f.payload, in + PROTO_FRAME_HEADER_LEN);
    assert_int_equal(f.len, PROTO_FRAME_MAX);
    assert_int_equal(st.calls, 0);

    size_t half = len / 2;
    assert_int_equal(proto_frame_read(&r, in, half, &f), -2);
    assert_int_equal(proto_frame_read(&r, in + half, len - half, &f), (ssize_t) (len - half));
    assert_true(f.copied);
    assert_int_equal(st.calls, 2); /* what the first half needed, then the rest */
    assert_int_equal(st.asked, PROTO_FRAME_MAX);
    assert_int_equal(f.len, PROTO_FRAME_MAX);
    assert_memory_equal(f.payload, in + PROTO_FRAME_HEADER_LEN, PROTO_FRAME_MAX);
    free(st.block);
    free(in);
}

/* Storage is asked for only when a payload really is split: a header that
 * ends a read, followed by the whole payload, still yields a slice. */
static void test_storage_only_when_split(void **state)
{
    (void) state;
    static const uint8_t hdr[] = {0, 0, 0, 3};
    static const uint8_t body[] = {'x', 'y', 'z'};
    storage_t st = {0};
    proto_frame_reader_t r;
    proto_frame_t f;
    assert_int_equal(proto_frame_reader_init(&r, 64, s_storage, &st), 0);
    assert_int_equal(proto_frame_read(&r, hdr, 2, &f), -2);
    assert_int_equal(proto_frame_read(&r, hdr + 2, 2, &f), -2);
    assert_int_equal(proto_frame_read(&r, body, 0, &f), -2);
    assert_int_equal(proto_frame_read(&r, body, 3, &f), 3);
    assert_false(f.copied);
    assert_ptr_equal(f.payload, body);
    assert_int_equal(st.calls, 0);

    /* Split payload: storage grows with the bytes that arrived, never to
     * the announced length up front. */
    assert_int_equal(proto_frame_read(&r, hdr, 4, &f), -2);
    assert_int_equal(proto_frame_read(&r, body, 1, &f), -2);
    assert_int_equal(st.calls, 1);
    assert_int_equal(st.asked, 1);
    assert_int_equal(st.len_seen, 3);
    assert_true(proto_frame_reader_busy(&r));
    assert_int_equal(proto_frame_read(&r, body + 1, 1, &f), -2);
    assert_int_equal(st.asked, 2);
    assert_int_equal(proto_frame_read(&r, body + 2, 1, &f), 1);
    assert_true(f.copied);
    assert_memory_equal(f.payload, "xyz", 3);
    assert_int_equal(st.calls, 3);
    assert_int_equal(st.asked, 3);
    assert_false(proto_frame_reader_busy(&r));
    assert_int_equal(proto_frame_read(&r, hdr, 1, &f), -2);
    assert_true(proto_frame_reader_busy(&r)); /* one header byte starts a frame */
    free(st.block);

    /* A frame announcing the most but sending little asks for little. */
    static const uint8_t big[] = {0, 0x10, 0, 0}; /* 1 MiB */
    storage_t grow = {0};
    assert_int_equal(proto_frame_reader_init(&r, PROTO_FRAME_MAX, s_storage, &grow), 0);
    assert_int_equal(proto_frame_read(&r, big, 4, &f), -2);
    assert_int_equal(proto_frame_read(&r, body, 3, &f), -2);
    assert_int_equal(grow.asked, 3);
    assert_int_equal(grow.len_seen, PROTO_FRAME_MAX);
    free(grow.block);

    /* A refusal is a typed, sticky error. */
    storage_t no = {.refuse = true};
    assert_int_equal(proto_frame_reader_init(&r, 64, s_storage, &no), 0);
    assert_int_equal(proto_frame_read(&r, hdr, 4, &f), -2);
    assert_int_equal(proto_frame_read(&r, body, 1, &f), -1);
    assert_int_equal(proto_frame_reader_reason(&r), PROTO_FRAME_NO_STORAGE);
    assert_string_equal(proto_frame_reason_str(PROTO_FRAME_NO_STORAGE), "no_storage");
}

static void test_header_encode(void **state)
{
    (void) state;
    uint8_t h[PROTO_FRAME_HEADER_LEN];
    assert_int_equal(proto_frame_header_encode(0, h), 0);
    assert_memory_equal(h, "\0\0\0\0", 4);
    assert_int_equal(proto_frame_header_encode(258, h), 0);
    assert_memory_equal(h, "\0\0\x01\x02", 4);
    assert_int_equal(proto_frame_header_encode(PROTO_FRAME_MAX, h), 0);
    assert_memory_equal(h, "\0\x10\0\0", 4);
    assert_int_equal(proto_frame_header_encode(PROTO_FRAME_MAX + 1, h), -1);
    assert_int_equal(proto_frame_header_encode(SIZE_MAX, h), -1);
}

static void test_init_rejects(void **state)
{
    (void) state;
    proto_frame_reader_t r;
    storage_t st = {0};
    assert_int_equal(proto_frame_reader_init(&r, 0, s_storage, &st), -1);
    assert_int_equal(proto_frame_reader_init(&r, PROTO_FRAME_MAX + 1, s_storage, &st), -1);
    assert_int_equal(proto_frame_reader_init(&r, 16, NULL, &st), -1);
    assert_int_equal(proto_frame_reader_init(&r, 1, s_storage, &st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_max_frame),
        cmocka_unit_test(test_storage_only_when_split),
        cmocka_unit_test(test_header_encode),
        cmocka_unit_test(test_init_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
