/* tests/utf8_test.c — kith's one UTF-8 validator (proto/utf8), incremental
 * and whole-buffer, against a reference that decodes code points the slow
 * way: every string of up to three bytes, a sweep of four-byte ones, the
 * classic edge cases, every split of each, and the promise to fail at the
 * first byte no well-formed string allows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto/utf8.h"

/* ------------------------------------------------------------------ reference */

/* Decodes s[0..n) as UTF-8 by arithmetic (RFC 3629 §3-4): lead byte gives
 * the length, continuation bytes carry 6 bits each, and the value must need
 * that length, not be a surrogate, and not exceed U+10FFFF. With `partial`,
 * a truncated last code point is accepted when some continuation would make
 * it valid. Returns 1 when acceptable. */
static int s_ref(const uint8_t *s, size_t n, int partial)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        size_t have = n - i < len ? n - i : len;
        for (size_t k = 1; k < have; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        /* Values the missing continuation bytes could still produce. */
        unsigned free_bits = (unsigned) (6 * (len - have));
        uint32_t lo = cp << free_bits, hi = lo + ((uint32_t) 1 << free_bits) - 1;
        if (have < len && !partial)
            return 0;
        if (hi < min || lo > 0x10FFFF || (lo >= 0xD800 && hi <= 0xDFFF))
            return 0;
        i += have;
    }
    return 1;
}

/* Feeds s one byte at a time; returns how many bytes were accepted before
 * the first failure (n when none). */
static size_t s_fail_at(const uint8_t *s, size_t n)
{
    proto_utf8_t u;
    proto_utf8_init(&u);
    for (size_t i = 0; i < n; i++)
        if (proto_utf8_feed(&u, s + i, 1) != 0)
            return i;
    return n;
}

/* Checks s against the reference: whole, every two-piece split, byte by byte,
 * and the failure position. */
static void s_agree(const uint8_t *s, size_t n)
{
    int want = s_ref(s, n, 0);
    assert_int_equal(proto_utf8_valid(s, n), want);
    for (size_t cut = 0; cut <= n; cut++) {
        proto_utf8_t u;
        proto_utf8_init(&u);
        int ok = proto_utf8_feed(&u, s, cut) == 0 && proto_utf8_feed(&u, s + cut, n - cut) == 0 &&
                 proto_utf8_complete(&u);
        assert_int_equal(ok, want);
    }
    size_t first_bad = n;
    for (size_t k = 1; k <= n; k++) {
        if (!s_ref(s, k, 1)) {
            first_bad = k - 1;
            break;
        }
    }
    assert_int_equal(s_fail_at(s, n), first_bad);
}

/* ------------------------------------------------------------------ tests */

static void test_exhaustive_short(void **state)
{
    (void) state;
    uint8_t s[3];
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t) a;
        s_agree(s, 1);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t) b;
            s_agree(s, 2);
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t) c;
                /* s_agree's splits cost too much at 2^24: compare whole and fail position. */
                int want = s_ref(s, 3, 0);
                if (proto_utf8_valid(s, 3) != want)
                    fail_msg("%02x %02x %02x: validator disagrees with reference", a, b, c);
                size_t first_bad = !s_ref(s, 1, 1) ? 0 : !s_ref(s, 2, 1) ? 1 : !s_ref(s, 3, 1) ? 2 : 3;
                if (s_fail_at(s, 3) != first_bad)
                    fail_msg("%02x %02x %02x: failed at the wrong byte", a, b, c);
            }
        }
    }
}

static void test_four_byte_sweep(void **state)
{
    (void) state;
    static const uint8_t tails[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xF0, 0xFF};
    uint8_t s[4];
    for (unsigned a = 0xE0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (size_t c = 0; c < sizeof tails; c++)
                for (size_t d = 0; d < sizeof tails; d++) {
                    s[0] = (uint8_t) a, s[1] = (uint8_t) b, s[2] = tails[c], s[3] = tails[d];
                    s_agree(s, 4);
                }
}

typedef struct {
    const char *what;
    const char *bytes;
    int valid;
} utf8_case_t;

static void test_edge_cases(void **state)
{
    (void) state;
    static const utf8_case_t cases[] = {
        {"empty", "", 1},
        {"ascii", "Hello-\x7F", 1},
        {"U+0080", "\xC2\x80", 1},
        {"U+07FF", "\xDF\xBF", 1},
        {"U+0800", "\xE0\xA0\x80", 1},
        {"U+D7FF", "\xED\x9F\xBF", 1},
        {"U+E000", "\xEE\x80\x80", 1},
        {"U+FFFF", "\xEF\xBF\xBF", 1},
        {"U+10000", "\xF0\x90\x80\x80", 1},
        {"U+10FFFF", "\xF4\x8F\xBF\xBF", 1},
        {"kosme", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5", 1},
        {"overlong / in 2", "\xC0\xAF", 0},
        {"overlong / in 3", "\xE0\x80\xAF", 0},
        {"overlong / in 4", "\xF0\x80\x80\xAF", 0},
        {"overlong U+07FF", "\xE0\x9F\xBF", 0},
        {"overlong U+FFFF", "\xF0\x8F\xBF\xBF", 0},
        {"surrogate U+D800", "\xED\xA0\x80", 0},
        {"surrogate U+DFFF", "\xED\xBF\xBF", 0},
        {"surrogate pair", "\xED\xA0\x80\xED\xB0\x80", 0},
        {"U+110000", "\xF4\x90\x80\x80", 0},
        {"F5 lead", "\xF5\x80\x80\x80", 0},
        {"FE", "\xFE", 0},
        {"FF", "\xFF", 0},
        {"lone continuation", "\x80", 0},
        {"truncated 2", "\xC2", 0},
        {"truncated 3", "\xE2\x82", 0},
        {"truncated 4", "\xF0\x9F\x98", 0},
        {"ascii after lead", "\xC2" "A", 0},
        {"CESU-8 pair", "\xED\xA0\xBD\xED\xB8\x80", 0},
        {"modified UTF-8 NUL", "\xC0\x80", 0},
        {"emoji", "\xF0\x9F\x98\x80", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const uint8_t *s = (const uint8_t *) cases[i].bytes;
        size_t n = strlen(cases[i].bytes);
        if (proto_utf8_valid(s, n) != cases[i].valid)
            fail_msg("%s: expected %s", cases[i].what, cases[i].valid ? "valid" : "invalid");
        s_agree(s, n);
    }
}

/* The ASCII fast path reads words: a bad byte anywhere in a long run, at
 * every alignment, must still be seen, and the state must carry across. */
static void test_word_boundaries(void **state)
{
    (void) state;
    uint8_t s[64];
    for (size_t bad = 0; bad < sizeof s; bad++) {
        memset(s, 'a', sizeof s);
        s[bad] = 0x80;
        assert_false(proto_utf8_valid(s, sizeof s));
        assert_int_equal(s_fail_at(s, sizeof s), bad);
        for (size_t cut = 0; cut <= sizeof s; cut += 3) {
            proto_utf8_t u;
            proto_utf8_init(&u);
            int ok = proto_utf8_feed(&u, s, cut) == 0 && proto_utf8_feed(&u, s + cut, sizeof s - cut) == 0;
            assert_false(ok);
        }
    }
    for (size_t at = 0; at + 4 <= sizeof s; at++) {
        memset(s, 'a', sizeof s);
        memcpy(s + at, "\xF0\x9F\x98\x80", 4);
        s_agree(s, sizeof s);
        s[sizeof s - 1] = 0xE2;  /* now truncated at the end */
        s_agree(s, sizeof s);
    }
}

static void test_failure_is_sticky(void **state)
{
    (void) state;
    proto_utf8_t u;
    proto_utf8_init(&u);
    assert_int_equal(proto_utf8_feed(&u, (const uint8_t *) "\xC0", 1), -1);
    assert_int_equal(proto_utf8_feed(&u, (const uint8_t *) "abc", 3), -1);
    assert_false(proto_utf8_complete(&u));
    proto_utf8_init(&u);
    assert_int_equal(proto_utf8_feed(&u, (const uint8_t *) "abc", 3), 0);
    assert_true(proto_utf8_complete(&u));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_cases),
        cmocka_unit_test(test_word_boundaries),
        cmocka_unit_test(test_failure_is_sticky),
        cmocka_unit_test(test_four_byte_sweep),
        cmocka_unit_test(test_exhaustive_short),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
