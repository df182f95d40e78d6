/* tests/uuid_test.c — UUID text form, v5 and v7 against RFC 9562 Appendix A,
 * and refusal of every malformed text form. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "proto/uuid.h"

static void s_parse_ok(const char *text, uint8_t out[PROTO_UUID_LEN])
{
    assert_int_equal(proto_uuid_parse(text, strlen(text), out), 0);
}

static void test_format_parse_roundtrip(void **state)
{
    (void) state;
    uint8_t id[PROTO_UUID_LEN], back[PROTO_UUID_LEN];
    char text[PROTO_UUID_TEXT_CAP];
    s_parse_ok("6D656572-6b61-7450-6565-724964300001", id);
    static const uint8_t want[PROTO_UUID_LEN] = {0x6d, 0x65, 0x65, 0x72, 0x6b, 0x61, 0x74, 0x50,
                                                 0x65, 0x65, 0x72, 0x49, 0x64, 0x30, 0x00, 0x01};
    assert_memory_equal(id, want, sizeof want);
    proto_uuid_format(id, text);
    assert_string_equal(text, "6d656572-6b61-7450-6565-724964300001");
    s_parse_ok(text, back);
    assert_memory_equal(back, id, sizeof id);
}

static void test_parse_rejects(void **state)
{
    (void) state;
    static const char *bad[] = {
        "",
        "6d656572-6b61-7450-6565-72496430000",     /* short */
        "6d656572-6b61-7450-6565-7249643000010",   /* long */
        "6d6565726b617450656572496430000100000",   /* no dashes, padded to 36 */
        "6d656572-6b61-7450-6565_724964300001",    /* wrong separator */
        "6d656572-6b61-7450-65657-24964300001",    /* dash moved */
        "6d656572-6b61-7450-6565-72496430000g",    /* not hex */
        "{d656572-6b61-7450-6565-724964300001",    /* brace */
        " 6d65657-6b61-7450-6565-724964300001",    /* space */
    };
    uint8_t id[PROTO_UUID_LEN];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(proto_uuid_parse(bad[i], strlen(bad[i]), id), -1);
    /* An embedded NUL inside the stated length is not hex. */
    assert_int_equal(proto_uuid_parse("6d656572-6b61-7450-6565-72496430000\0", 36, id), -1);
}

/* RFC 9562 Appendix A.4: v5 of "www.example.com" in the DNS namespace. */
static void test_v5_rfc9562(void **state)
{
    (void) state;
    uint8_t ns[PROTO_UUID_LEN], id[PROTO_UUID_LEN];
    char text[PROTO_UUID_TEXT_CAP];
    s_parse_ok("6ba7b810-9dad-11d1-80b4-00c04fd430c8", ns);
    proto_uuid_v5(ns, "www.example.com", 15, id);
    proto_uuid_format(id, text);
    assert_string_equal(text, "2ed6657d-e927-568b-95e1-2665a8aea6a2");
    assert_int_equal(proto_uuid_version(id), 5);
}

/* RFC 9562 Appendix A.6: 017f22e2-79b0-7cc3-98c4-dc0c0c07398f, made at
 * 2022-02-22T19:22:22Z = 1645557742000 ms. */
static void test_v7_rfc9562(void **state)
{
    (void) state;
    static const uint8_t rand[10] = {0x7c, 0xc3, 0x98, 0xc4, 0xdc, 0x0c, 0x0c, 0x07, 0x39, 0x8f};
    uint8_t id[PROTO_UUID_LEN];
    char text[PROTO_UUID_TEXT_CAP];
    uint64_t ms = 0;
    proto_uuid_v7_make(UINT64_C(1645557742000), rand, id);
    proto_uuid_format(id, text);
    assert_string_equal(text, "017f22e2-79b0-7cc3-98c4-dc0c0c07398f");
    assert_int_equal(proto_uuid_v7_ms(id, &ms), 0);
    assert_true(ms == UINT64_C(1645557742000));
    /* The version and variant bits are forced whatever the random bytes. */
    static const uint8_t ones[10] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    proto_uuid_v7_make(PROTO_UUID_V7_MS_MAX, ones, id);
    proto_uuid_format(id, text);
    assert_string_equal(text, "ffffffff-ffff-7fff-bfff-ffffffffffff");
    assert_int_equal(proto_uuid_v7_ms(id, &ms), 0);
    assert_true(ms == PROTO_UUID_V7_MS_MAX);
}

static void test_v7_new(void **state)
{
    (void) state;
    uint8_t a[PROTO_UUID_LEN], b[PROTO_UUID_LEN];
    uint64_t ms_a = 0, ms_b = 0;
    proto_uuid_v7_new(a);
    proto_uuid_v7_new(b);
    assert_int_equal(proto_uuid_version(a), 7);
    assert_int_equal(a[8] & 0xc0, 0x80);
    assert_memory_not_equal(a, b, PROTO_UUID_LEN);
    assert_int_equal(proto_uuid_v7_ms(a, &ms_a), 0);
    assert_int_equal(proto_uuid_v7_ms(b, &ms_b), 0);
    assert_true(ms_b >= ms_a);
    /* After 2024-01-01 and before 2100-01-01: the clock went in, not zeros. */
    assert_true(ms_a > UINT64_C(1704067200000) && ms_a < UINT64_C(4102444800000));
}

static int s_cmp_id(const void *a, const void *b) { return memcmp(a, b, PROTO_UUID_LEN); }

/* The per-thread generator behind v7_new: many ids across several
 * re-keyed blocks are all distinct v7 ids, and a forked child does not
 * continue the parent's stream. */
static void test_v7_new_generator(void **state)
{
    (void) state;
    enum { N = 5000 };
    uint8_t(*ids)[PROTO_UUID_LEN] = malloc(N * sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < N; i++) {
        uint64_t ms;
        proto_uuid_v7_new(ids[i]);
        assert_int_equal(proto_uuid_v7_ms(ids[i], &ms), 0);
    }
    qsort(ids, N, sizeof *ids, s_cmp_id);
    for (int i = 1; i < N; i++)
        assert_int_not_equal(memcmp(ids[i - 1], ids[i], PROTO_UUID_LEN), 0);
    free(ids);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint8_t id[PROTO_UUID_LEN];
        proto_uuid_v7_new(id);
        _exit(write(fds[1], id, sizeof id) == (ssize_t) sizeof id ? 0 : 1);
    }
    uint8_t mine[PROTO_UUID_LEN], child[PROTO_UUID_LEN];
    proto_uuid_v7_new(mine);
    assert_int_equal(read(fds[0], child, sizeof child), (ssize_t) sizeof child);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* Same millisecond or not, the random 74 bits differ. */
    assert_int_not_equal(memcmp(mine + 6, child + 6, PROTO_UUID_LEN - 6), 0);
    close(fds[0]);
    close(fds[1]);
}

static void test_v7_ms_rejects_other_versions(void **state)
{
    (void) state;
    uint8_t id[PROTO_UUID_LEN];
    uint64_t ms = 42;
    s_parse_ok("2ed6657d-e927-568b-95e1-2665a8aea6a2", id); /* v5 */
    assert_int_equal(proto_uuid_v7_ms(id, &ms), -1);
    s_parse_ok("017f22e2-79b0-7cc3-58c4-dc0c0c07398f", id); /* v7, variant 01 */
    assert_int_equal(proto_uuid_v7_ms(id, &ms), -1);
    s_parse_ok("00000000-0000-0000-0000-000000000000", id); /* nil */
    assert_int_equal(proto_uuid_v7_ms(id, &ms), -1);
    assert_true(ms == 42);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_parse_roundtrip),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_v5_rfc9562),
        cmocka_unit_test(test_v7_rfc9562),
        cmocka_unit_test(test_v7_new),
        cmocka_unit_test(test_v7_new_generator),
        cmocka_unit_test(test_v7_ms_rejects_other_versions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
