/* tests/alloc_fail.c — the allocator wrappers tests/alloc_fail.h describes:
 * linked into every unit test, which CMakeLists.txt links with
 * -Wl,--wrap=malloc (and calloc, realloc, strdup, strndup), so kith's calls
 * come here and __real_* are the C library's (or the sanitizer's). */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>

#include <sqlite3.h>

#include "alloc_fail.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

static _Thread_local long s_fail_at = -1;    /* successes left before the failure; -1: off */
static _Thread_local unsigned s_failed;      /* failures injected since armed */
static sqlite3_mem_methods s_sqlite_real;    /* SQLite's own allocator, wrapped below */

void alloc_fail_arm(long skip)
{
    s_failed = 0;
    s_fail_at = skip;
}

unsigned alloc_fail_disarm(void)
{
    s_fail_at = -1;
    return s_failed;
}

unsigned alloc_fail_failed(void)
{
    return s_failed;
}

static bool s_fail_now(void)
{
    if (s_fail_at < 0)
        return false;
    if (s_fail_at-- > 0)
        return false;
    s_failed++;     /* s_fail_at is now -1: once */
    errno = ENOMEM;
    return true;
}

void *__wrap_malloc(size_t n)
{
    return s_fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return s_fail_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return s_fail_now() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return s_fail_now() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return s_fail_now() ? NULL : __real_strndup(s, n);
}

static void *s_sqlite_malloc(int n)
{
    return s_fail_now() ? NULL : s_sqlite_real.xMalloc(n);
}

static void *s_sqlite_realloc(void *p, int n)
{
    return s_fail_now() ? NULL : s_sqlite_real.xRealloc(p, n);
}

int alloc_fail_sqlite_install(void)
{
    if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &s_sqlite_real) != SQLITE_OK)
        return -1;
    sqlite3_mem_methods m = s_sqlite_real;
    m.xMalloc = s_sqlite_malloc;
    m.xRealloc = s_sqlite_realloc;
    return sqlite3_config(SQLITE_CONFIG_MALLOC, &m) == SQLITE_OK ? 0 : -1;
}
