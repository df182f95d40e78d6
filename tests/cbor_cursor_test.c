/* tests/cbor_cursor_test.c — the zero-copy CBOR reader: heads of every
 * major type and length width, strings as slices of the input, whole
 * nested items skipped, and every truncation or lying count refused
 * without a read past the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto/cbor_cursor.h"

static void test_heads(void **state)
{
    (void) state;
    /* 0, 24, 500, 70000, 2^32, -1, h'0102', "hi", [..2], {..1}, tag 1, true, 1.5 (f16) */
    static const uint8_t in[] = {0x00, 0x18, 0x18, 0x19, 0x01, 0xf4, 0x1a, 0x00, 0x01, 0x11,
                                 0x70, 0x1b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
                                 0x20, 0x42, 0x01, 0x02, 0x62, 'h',  'i',  0x82, 0x81, 0xa1,
                                 0xc1, 0xf5, 0xf9, 0x3e, 0x00};
    static const struct { unsigned major; uint64_t arg; } want[] = {
        {0, 0}, {0, 24}, {0, 500}, {0, 70000}, {0, 1ull << 32}, {1, 0}, {2, 2}, {3, 2},
        {4, 2}, {4, 1}, {5, 1}, {6, 1}, {7, 21}, {7, 0x3e00}};
    proto_cbor_cursor_t c = proto_cbor_cursor_at(in, in + sizeof in);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        proto_cbor_head_t h;
        assert_int_equal(proto_cbor_cursor_head(&c, &h), 0);
        assert_int_equal(h.major, want[i].major);
        assert_true(h.arg == want[i].arg);
        if (h.major == 3) {
            assert_ptr_equal(h.data, in + 25); /* a slice, not a copy */
            assert_memory_equal(h.data, "hi", 2);
        }
    }
    assert_ptr_equal(c.p, in + sizeof in);
    proto_cbor_head_t h;
    assert_int_equal(proto_cbor_cursor_head(&c, &h), -1); /* nothing left */
}

static void test_skip_nested(void **state)
{
    (void) state;
    /* {"a": [1, {"b": h'00'}, tag 0 "x"], "c": 2} then 7 */
    static const uint8_t in[] = {0xa2, 0x61, 'a', 0x83, 0x01, 0xa1, 0x61, 'b', 0x41, 0x00,
                                 0xc0, 0x61, 'x', 0x61, 'c', 0x02, 0x07};
    proto_cbor_cursor_t c = proto_cbor_cursor_at(in, in + sizeof in);
    assert_int_equal(proto_cbor_cursor_skip(&c), 0);
    assert_ptr_equal(c.p, in + sizeof in - 1);
    proto_cbor_head_t h;
    assert_int_equal(proto_cbor_cursor_head(&c, &h), 0);
    assert_int_equal(h.arg, 7);
}

static void test_refusals(void **state)
{
    (void) state;
    static const struct { uint8_t b[8]; size_t n; } bad[] = {
        {{0x19, 0x01}, 2},             /* a 2-byte argument cut short */
        {{0x63, 'a', 'b'}, 3},         /* a string longer than what is left */
        {{0x9f, 0x01, 0xff}, 3},       /* indefinite: refused */
        {{0x1c}, 1},                   /* reserved additional info */
        {{0x85, 0x01, 0x02}, 3},       /* an array claiming more items than bytes */
        {{0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 8}, /* a huge map, truncated head */
        {{0xc1}, 1},                   /* a tag with nothing tagged */
        {{0}, 0},                      /* empty */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        proto_cbor_cursor_t c = proto_cbor_cursor_at(bad[i].b, bad[i].b + bad[i].n);
        assert_int_equal(proto_cbor_cursor_skip(&c), -1);
        assert_true(c.p <= bad[i].b + bad[i].n);
    }
    /* A map whose count would overflow the items to skip. */
    static const uint8_t huge[] = {0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02};
    proto_cbor_cursor_t c = proto_cbor_cursor_at(huge, huge + sizeof huge);
    assert_int_equal(proto_cbor_cursor_skip(&c), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heads),
        cmocka_unit_test(test_skip_nested),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
