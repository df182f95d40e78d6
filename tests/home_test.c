/* tests/home_test.c — router/state/home.c: the folders of $KITH_HOME are
 * made with their missing parents, a folder already there is fine, and
 * anything else in the way (a file where the folder or one of its parents
 * should be) or a path too long is refused with its errno, never taken
 * for made. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router/state/home.h"

static char s_dir[] = "/tmp/kith-home-test-XXXXXX";

static int s_setup(void **state)
{
    (void) state;
    strcpy(s_dir, "/tmp/kith-home-test-XXXXXX");
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void) state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void s_touch(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
}

/* Parents made, with the mode asked for; a second call finds it made. */
static void test_mkdirs_makes_parents(void **state)
{
    (void) state;
    char path[256];
    snprintf(path, sizeof path, "%s/a/b/c", s_dir);
    assert_int_equal(router_home_mkdirs(path, 0700), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(router_home_mkdirs(path, 0700), 0);
}

/* A file where the folder should be: ENOTDIR. mkdir says only EEXIST, and
 * this was taken for the folder made, so the caller failed later at the
 * first file it made inside, with a reason that did not say why. */
static void test_mkdirs_refuses_a_file_in_the_way(void **state)
{
    (void) state;
    char path[256], below[300];
    snprintf(path, sizeof path, "%s/logs", s_dir);
    s_touch(path);
    errno = 0;
    assert_int_equal(router_home_mkdirs(path, 0700), -1);
    assert_int_equal(errno, ENOTDIR);
    snprintf(below, sizeof below, "%s/deeper", path);
    errno = 0;
    assert_int_equal(router_home_mkdirs(below, 0700), -1);
    assert_int_equal(errno, ENOTDIR);
}

/* A symbolic link to a folder is a folder; a dangling one is not made
 * into one. */
static void test_mkdirs_links(void **state)
{
    (void) state;
    char target[256], link_ok[256], link_bad[256];
    snprintf(target, sizeof target, "%s/real", s_dir);
    assert_int_equal(mkdir(target, 0700), 0);
    snprintf(link_ok, sizeof link_ok, "%s/via", s_dir);
    assert_int_equal(symlink(target, link_ok), 0);
    assert_int_equal(router_home_mkdirs(link_ok, 0700), 0);
    snprintf(link_bad, sizeof link_bad, "%s/gone", s_dir);
    assert_int_equal(symlink("/nonexistent/kith-home-test", link_bad), 0);
    assert_int_equal(router_home_mkdirs(link_bad, 0700), -1);
}

static void test_mkdirs_too_long(void **state)
{
    (void) state;
    static char path[ROUTER_PATH_MAX + 8];
    memset(path, 'a', sizeof path - 1);
    path[0] = '/';
    path[sizeof path - 1] = '\0';
    errno = 0;
    assert_int_equal(router_home_mkdirs(path, 0700), -1);
    assert_int_equal(errno, ENAMETOOLONG);
    assert_int_equal(router_home_mkdirs("", 0700), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mkdirs_makes_parents, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_mkdirs_refuses_a_file_in_the_way, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_mkdirs_links, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_mkdirs_too_long, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
