/* tests/statefile_test.c — router/state/statefile: bounded reads that refuse
 * what is not a small regular file (at once, never waiting on a FIFO), and
 * the atomic replace whose every failing step (fsync, rename across file
 * systems or on a failing disk, the directory's fsync, a missing
 * directory, out of memory) leaves the old file intact byte for byte and
 * no temp file behind (tests/io_fail.h, tests/alloc_fail.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc_fail.h"
#include "io_fail.h"
#include "router/state/home.h"
#include "router/state/statefile.h"

#define S_OLD "{\"peers\":[{\"name\":\"old\"}]}\n"
#define S_NEW "{\"peers\":[]}\n"

typedef struct {
    char dir[64];   /* a fresh temp directory */
    char path[128]; /* dir/state.json */
} s_env_t;

static int s_setup(void **state)
{
    s_env_t *e = calloc(1, sizeof *e);
    if (!e)
        return -1;
    snprintf(e->dir, sizeof e->dir, "/tmp/kith-statefile-test-XXXXXX");
    if (!mkdtemp(e->dir)) {
        free(e);
        return -1;
    }
    snprintf(e->path, sizeof e->path, "%s/state.json", e->dir);
    *state = e;
    return 0;
}

static int s_teardown(void **state)
{
    s_env_t *e = *state;
    DIR *d = opendir(e->dir);
    if (d) {
        struct dirent *de;
        char p[512];
        while ((de = readdir(d)))
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                snprintf(p, sizeof p, "%s/%s", e->dir, de->d_name);
                if (unlink(p) != 0)
                    (void) rmdir(p);
            }
        closedir(d);
    }
    (void) rmdir(e->dir);
    free(e);
    return 0;
}

/* Entries in dir, "." and ".." not counted. */
static int s_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void s_write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

/* The file holds exactly `text` and has permission bits `mode`. */
static void s_expect_file(const char *path, const char *text, unsigned mode)
{
    char *got = NULL, err[256];
    size_t len = 0;
    unsigned m = 0;
    assert_int_equal(router_statefile_read(path, 4096, &got, &len, &m, err, sizeof err), 0);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(got, text, len);
    assert_int_equal(m, mode);
    free(got);
}

/* err starts with the path it is about. */
static void s_expect_err_names(const char *err, const char *path)
{
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
}

/* ---------------------------------------------------------------- reading */

static void test_read_round_trip(void **state)
{
    s_env_t *e = *state;
    s_write_file(e->path, S_OLD, 0640);
    s_expect_file(e->path, S_OLD, 0640);
    /* Exactly max bytes is allowed; one more is not. */
    char *got = NULL, err[256];
    size_t len = 0;
    assert_int_equal(router_statefile_read(e->path, strlen(S_OLD), &got, &len, NULL, err,
                                           sizeof err), 0);
    assert_int_equal(got[len], '\0');
    free(got);
    errno = 0;
    assert_int_equal(router_statefile_read(e->path, strlen(S_OLD) - 1, &got, &len, NULL, err,
                                           sizeof err), -1);
    assert_int_equal(errno, EFBIG);
    assert_null(got);
    assert_int_equal(len, 0);
    s_expect_err_names(err, e->path);
    assert_non_null(strstr(err, "more than the"));
}

static void test_read_refuses(void **state)
{
    s_env_t *e = *state;
    char *got = (char *) 1, err[256];
    size_t len = 1;
    /* Missing: ENOENT, named. */
    assert_int_equal(router_statefile_read(e->path, 4096, &got, &len, NULL, err, sizeof err), -1);
    assert_int_equal(errno, ENOENT);
    assert_null(got);
    s_expect_err_names(err, e->path);
    /* A FIFO nobody writes: refused at once (a blocking open would hang). */
    assert_int_equal(mkfifo(e->path, 0600), 0);
    assert_int_equal(router_statefile_read(e->path, 4096, &got, &len, NULL, err, sizeof err), -1);
    assert_int_equal(errno, EINVAL);
    assert_non_null(strstr(err, "a FIFO"));
    assert_int_equal(unlink(e->path), 0);
    /* A directory, and a device. */
    assert_int_equal(mkdir(e->path, 0700), 0);
    assert_int_equal(router_statefile_read(e->path, 4096, &got, &len, NULL, err, sizeof err), -1);
    assert_int_equal(errno, EINVAL);
    assert_non_null(strstr(err, "a directory"));
    assert_int_equal(rmdir(e->path), 0);
    assert_int_equal(router_statefile_read("/dev/null", 4096, &got, &len, NULL, err, sizeof err),
                     -1);
    assert_int_equal(errno, EINVAL);
    assert_non_null(strstr(err, "a device"));
    s_expect_err_names(err, "/dev/null");
}

/* Out of memory for the buffer: ENOMEM, a reason, nothing leaked. */
static void test_read_without_memory(void **state)
{
    s_env_t *e = *state;
    s_write_file(e->path, S_OLD, 0600);
    char *got = NULL, err[256];
    size_t len = 0;
    alloc_fail_arm(0);
    int rc = router_statefile_read(e->path, 4096, &got, &len, NULL, err, sizeof err);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, ENOMEM);
    assert_null(got);
    s_expect_err_names(err, e->path);
    assert_non_null(strstr(err, "out of memory"));
}

/* ---------------------------------------------------------------- replacing */

static void test_replace_round_trip(void **state)
{
    s_env_t *e = *state;
    char err[256];
    mode_t old = umask(022);
    assert_int_equal(router_statefile_replace(e->path, S_NEW, strlen(S_NEW), 0644, err, sizeof err),
                     0);
    s_expect_file(e->path, S_NEW, 0644);
    /* The mode is less the umask, as open(2) makes it. */
    umask(077);
    assert_int_equal(router_statefile_replace(e->path, S_OLD, strlen(S_OLD), 0644, err, sizeof err),
                     0);
    umask(old);
    s_expect_file(e->path, S_OLD, 0600);
    assert_int_equal(s_entries(e->dir), 1);
}

/* Each step before the rename fails in turn, and the rename itself (a disk
 * error, a full disk, a temp dir on another file system): -1 with errno
 * kept, a reason naming the file, the old file as it was, byte for byte and
 * mode for mode, and no temp file left. */
static void test_replace_failure_keeps_old(void **state)
{
    s_env_t *e = *state;
    static const struct {
        io_fail_call_t call;
        long skip;
        int err;
    } fail[] = {
        {IO_FAIL_FSYNC, 0, EIO},
        {IO_FAIL_FSYNC, 0, ENOSPC},
        {IO_FAIL_RENAME, 0, EIO},
        {IO_FAIL_RENAME, 0, ENOSPC},
        {IO_FAIL_RENAME, 0, EXDEV},
    };
    for (size_t i = 0; i < sizeof fail / sizeof *fail; i++) {
        s_write_file(e->path, S_OLD, 0640);
        char err[256] = "";
        io_fail_arm(fail[i].call, fail[i].skip, fail[i].err);
        errno = 0;
        int rc = router_statefile_replace(e->path, S_NEW, strlen(S_NEW), 0600, err, sizeof err);
        int saved = errno;
        assert_int_equal(io_fail_disarm(), 1);
        assert_int_equal(rc, -1);
        assert_int_equal(saved, fail[i].err);
        s_expect_err_names(err, e->path);
        assert_non_null(strstr(err, strerror(fail[i].err)));
        s_expect_file(e->path, S_OLD, 0640);
        assert_int_equal(s_entries(e->dir), 1); /* the temp file is gone */
    }
}

/* The directory's fsync fails after the rename: the new content is in
 * place and whole (only its durability is in doubt), and the error says
 * so rather than claiming nothing changed. */
static void test_replace_dir_sync_fails(void **state)
{
    s_env_t *e = *state;
    s_write_file(e->path, S_OLD, 0600);
    char err[256] = "";
    io_fail_arm(IO_FAIL_FSYNC, 1, EIO);
    int rc = router_statefile_replace(e->path, S_NEW, strlen(S_NEW), 0600, err, sizeof err);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    s_expect_err_names(err, e->path);
    assert_non_null(strstr(err, "replaced, but syncing its directory failed"));
    s_expect_file(e->path, S_NEW, 0600);
    assert_int_equal(s_entries(e->dir), 1);
}

static void test_replace_refuses(void **state)
{
    s_env_t *e = *state;
    char err[256] = "";
    /* The directory is missing: no temp file can be made. */
    char missing[256];
    snprintf(missing, sizeof missing, "%s/gone/state.json", e->dir);
    assert_int_equal(router_statefile_replace(missing, S_NEW, strlen(S_NEW), 0600, err, sizeof err),
                     -1);
    assert_int_equal(errno, ENOENT);
    s_expect_err_names(err, missing);
    assert_non_null(strstr(err, "temp file"));
    /* A path with no room for the temp suffix. */
    char *lng = malloc(ROUTER_PATH_MAX + 1);
    assert_non_null(lng);
    memset(lng, 'a', ROUTER_PATH_MAX);
    lng[0] = '/';
    lng[ROUTER_PATH_MAX] = '\0';
    assert_int_equal(router_statefile_replace(lng, S_NEW, strlen(S_NEW), 0600, err, sizeof err), -1);
    assert_int_equal(errno, ENAMETOOLONG);
    assert_non_null(strstr(err, "path too long"));
    assert_int_equal(strncmp(err, lng, 64), 0); /* the path's start, then the reason */
    assert_int_equal(router_statefile_sync_dir(lng), -1);
    assert_int_equal(errno, ENAMETOOLONG);
    free(lng);
    assert_int_equal(router_statefile_sync_dir(missing), -1);
    assert_int_equal(errno, ENOENT);
    /* A path that is a directory: the rename over it fails, the directory
     * and what is in it stay, the temp file goes. */
    assert_int_equal(mkdir(e->path, 0700), 0);
    char inner[256];
    snprintf(inner, sizeof inner, "%s/keep", e->path);
    s_write_file(inner, S_OLD, 0600);
    assert_int_equal(router_statefile_replace(e->path, S_NEW, strlen(S_NEW), 0600, err, sizeof err),
                     -1);
    s_expect_err_names(err, e->path);
    assert_non_null(strstr(err, "cannot replace"));
    s_expect_file(inner, S_OLD, 0600);
    assert_int_equal(s_entries(e->dir), 1);
    assert_int_equal(unlink(inner), 0);
    assert_int_equal(rmdir(e->path), 0);
}

static void test_write_all(void **state)
{
    (void) state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(router_statefile_write_all(p[1], "abc", 3), 0);
    char buf[4] = {0};
    assert_int_equal(read(p[0], buf, sizeof buf), 3);
    assert_string_equal(buf, "abc");
    assert_int_equal(close(p[0]), 0);
    assert_int_equal(router_statefile_write_all(p[0], "abc", 3), -1); /* a closed fd */
    assert_int_equal(errno, EBADF);
    assert_int_equal(close(p[1]), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, s_setup, s_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_read_round_trip),       T(test_read_refuses),
        T(test_read_without_memory),   T(test_replace_round_trip),
        T(test_replace_failure_keeps_old), T(test_replace_dir_sync_fails),
        T(test_replace_refuses),       cmocka_unit_test(test_write_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
