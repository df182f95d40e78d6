/* tests/sha1_test.c — SHA-1 against the FIPS 180 examples, fed whole and in
 * every split, plus the one-million-'a' vector. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "proto/sha1.h"

static void s_hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void s_check(const char *msg, const char *want)
{
    uint8_t dig[PROTO_SHA1_LEN];
    char hex[41];
    size_t len = strlen(msg);
    proto_sha1(msg, len, dig);
    s_hex(dig, sizeof dig, hex);
    assert_string_equal(hex, want);
    /* Every two-piece split gives the same digest. */
    for (size_t cut = 0; cut <= len; cut++) {
        proto_sha1_t c;
        proto_sha1_init(&c);
        proto_sha1_update(&c, msg, cut);
        proto_sha1_update(&c, msg + cut, len - cut);
        proto_sha1_final(&c, dig);
        s_hex(dig, sizeof dig, hex);
        assert_string_equal(hex, want);
    }
}

static void test_fips_examples(void **state)
{
    (void) state;
    s_check("", "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    s_check("abc", "a9993e364706816aba3e25717850c26c9cd0d89d");
    s_check("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
}

static void test_million_a(void **state)
{
    (void) state;
    proto_sha1_t c;
    uint8_t dig[PROTO_SHA1_LEN];
    char hex[41];
    char a[1000];
    memset(a, 'a', sizeof a);
    proto_sha1_init(&c);
    for (int i = 0; i < 1000; i++)
        proto_sha1_update(&c, a, sizeof a);
    proto_sha1_final(&c, dig);
    s_hex(dig, sizeof dig, hex);
    assert_string_equal(hex, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fips_examples),
        cmocka_unit_test(test_million_a),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
