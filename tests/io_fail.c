/* tests/io_fail.c — the fsync, rename and ftruncate wrappers tests/io_fail.h
 * describes: linked into every unit test, which CMakeLists.txt links with
 * -Wl,--wrap=fsync (and rename, ftruncate), so kith's calls come here and
 * __real_* are the C library's (or the sanitizer's). */
#include <errno.h>
#include <stdbool.h>
#include <sys/types.h>

#include "io_fail.h"

int __real_fsync(int fd);
int __real_rename(const char *from, const char *to);
int __real_ftruncate(int fd, off_t len);
int __wrap_fsync(int fd);
int __wrap_rename(const char *from, const char *to);
int __wrap_ftruncate(int fd, off_t len);

/* One call's rule on this thread. */
typedef struct {
    long fail_at; /* successes left before the failure; -1: off */
    int err;      /* the errno the failure sets */
} s_rule_t;

static _Thread_local s_rule_t s_rules[IO_FAIL_CALLS] = {
    [IO_FAIL_FSYNC] = {.fail_at = -1},
    [IO_FAIL_RENAME] = {.fail_at = -1},
    [IO_FAIL_FTRUNCATE] = {.fail_at = -1},
};
static _Thread_local unsigned s_failed; /* failures injected since the last disarm */

void io_fail_arm(io_fail_call_t call, long skip, int err)
{
    s_rules[call] = (s_rule_t){.fail_at = skip, .err = err};
}

unsigned io_fail_disarm(void)
{
    for (int i = 0; i < IO_FAIL_CALLS; i++)
        s_rules[i].fail_at = -1;
    unsigned n = s_failed;
    s_failed = 0;
    return n;
}

unsigned io_fail_failed(void)
{
    return s_failed;
}

static bool s_fail_now(io_fail_call_t call)
{
    s_rule_t *r = &s_rules[call];
    if (r->fail_at < 0)
        return false;
    if (r->fail_at-- > 0)
        return false;
    s_failed++; /* fail_at is now -1: once */
    errno = r->err;
    return true;
}

int __wrap_fsync(int fd)
{
    return s_fail_now(IO_FAIL_FSYNC) ? -1 : __real_fsync(fd);
}

int __wrap_rename(const char *from, const char *to)
{
    return s_fail_now(IO_FAIL_RENAME) ? -1 : __real_rename(from, to);
}

int __wrap_ftruncate(int fd, off_t len)
{
    return s_fail_now(IO_FAIL_FTRUNCATE) ? -1 : __real_ftruncate(fd, len);
}
