/* tests/cli_opts_test.c — the commands' option parser (tools/kith/cli_opts.c):
 * short flags read by getopt itself, so a value that looks like a flag
 * stays the value of the flag before it, and kith_one_line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "tools/kith/cli_opts.h"

enum { S_TYPE = 256, S_HOME };

static const struct option s_flags[] = {
    {"type", required_argument, NULL, S_TYPE},
    {"home", required_argument, NULL, S_HOME},
    {"lines", required_argument, NULL, 'n'},
    {0},
};

/* One parse of argv (argv[0] the command): what -n/--lines and --type got,
 * and the last code kith_opts_next returned. */
typedef struct {
    const char *lines, *type, *home;
    int last;
    int rest;
} s_parse_t;

static s_parse_t s_parse(int argc, char **argv)
{
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "test", .help = "test",
                     .longopts = s_flags, .shorts = "n:"};
    s_parse_t p = {0};
    int c;
    while ((c = kith_opts_next(&o)) != KITH_OPT_END && c != KITH_OPT_ERROR) {
        if (c == 'n')
            p.lines = optarg;
        else if (c == S_TYPE)
            p.type = optarg;
        else if (c == S_HOME)
            p.home = optarg;
    }
    p.last = c;
    p.rest = c == KITH_OPT_END ? kith_opts_rest(&o) : -1;
    return p;
}

static void test_short_flag_forms(void **state)
{
    (void) state;
    char *a[] = {"tail", "-n", "5", "log"};
    s_parse_t p = s_parse(4, a);
    assert_int_equal(p.last, KITH_OPT_END);
    assert_string_equal(p.lines, "5");
    assert_int_equal(p.rest, 3);
    char *b[] = {"tail", "-n7"};
    p = s_parse(2, b);
    assert_string_equal(p.lines, "7");
    char *c[] = {"tail", "--lines=9"};
    p = s_parse(2, c);
    assert_string_equal(p.lines, "9");
}

static void test_value_that_looks_like_a_flag(void **state)
{
    (void) state;
    /* Each value is the flag before it's, however it looks. */
    char *a[] = {"query", "--type", "-n", "--home", "--type"};
    s_parse_t p = s_parse(5, a);
    assert_int_equal(p.last, KITH_OPT_END);
    assert_string_equal(p.type, "-n");
    assert_string_equal(p.home, "--type");
    assert_null(p.lines);
    char *b[] = {"query", "--type", "-n5"};
    p = s_parse(3, b);
    assert_string_equal(p.type, "-n5");
    assert_null(p.lines);
}

static void test_errors(void **state)
{
    (void) state;
    char *a[] = {"tail", "-n"};
    assert_int_equal(s_parse(2, a).last, KITH_OPT_ERROR); /* "-n needs a value" */
    char *b[] = {"tail", "-x"};
    assert_int_equal(s_parse(2, b).last, KITH_OPT_ERROR);
    char *c[] = {"tail", "--bogus"};
    assert_int_equal(s_parse(2, c).last, KITH_OPT_ERROR);
    /* Without shorts, -n is unknown. */
    char *d[] = {"tail", "-n", "5"};
    kith_opts_t o = {.argc = 3, .argv = d, .cmd = "test", .help = "test", .longopts = s_flags};
    assert_int_equal(kith_opts_next(&o), KITH_OPT_ERROR);
}

static void test_one_line(void **state)
{
    (void) state;
    char text[] = "parse error\n  (right here) ---^\n  ";
    assert_string_equal(kith_one_line(text), "parse error   (right here) ---^");
}

/* An empty --home was read as no --home: the command went on in
 * $KITH_HOME or ~/.kith (kith daemon --home "$UNSET" made an identity
 * there). Both spellings are refused; an empty value of another flag is
 * that flag's to judge. */
static void test_empty_home_refused(void **state)
{
    (void) state;
    char *a[] = {"id", "--home", ""};
    assert_int_equal(s_parse(3, a).last, KITH_OPT_ERROR);
    char *b[] = {"id", "--home="};
    assert_int_equal(s_parse(2, b).last, KITH_OPT_ERROR);
    char *c[] = {"id", "--type", "", "--home", "h"};
    s_parse_t p = s_parse(5, c);
    assert_int_equal(p.last, KITH_OPT_END);
    assert_string_equal(p.type, "");
    assert_string_equal(p.home, "h");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_home_refused),
        cmocka_unit_test(test_short_flag_forms),
        cmocka_unit_test(test_value_that_looks_like_a_flag),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
