/* tests/alloc_fail.h — allocation-failure injection for unit tests: a test
 * that includes this header is linked with -Wl,--wrap for kith's allocator
 * calls (CMakeLists.txt looks for the include), so every malloc, calloc,
 * realloc, strdup and strndup in kith's own code goes through the wrappers
 * below. Libraries kith links as shared objects (libcbor, CZMQ, yajl)
 * allocate as before, but for SQLite, which takes an allocator of our own
 * (alloc_fail_sqlite_install), so a commit or a query can fail as out of
 * memory too. Include it from one file per test executable.
 *
 * Arming is per thread: only the thread that called alloc_fail_arm sees a
 * failure, so the threads a constructor starts (a node's loop, an inbox's
 * store thread) run as usual and each run of a test fails the same call.
 *
 * The usual use: run a constructor with its 1st, 2nd, … allocation failing,
 * one at a time (alloc_fail_arm(i), call, alloc_fail_disarm()), until a run
 * fails none. Each run must either refuse cleanly (NULL or -1, with an error
 * for people) or succeed in spite of the failure; LSan (leaks fatal) checks
 * that the refusals leaked nothing. */
#ifndef KITH_TESTS_ALLOC_FAIL_H
#define KITH_TESTS_ALLOC_FAIL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

static _Thread_local long s_alloc_fail_at = -1;    /* calls left before the failure; -1: off */
static _Thread_local unsigned s_alloc_fail_failed; /* failures injected since armed */

/* From now on, on this thread, the allocation after `skip` more succeed fails
 * (once). */
static inline void alloc_fail_arm(long skip)
{
    s_alloc_fail_failed = 0;
    s_alloc_fail_at = skip;
}

/* Stops injecting; returns how many allocations failed since armed. */
static inline unsigned alloc_fail_disarm(void)
{
    s_alloc_fail_at = -1;
    return s_alloc_fail_failed;
}

static inline bool s_alloc_fail_now(void)
{
    if (s_alloc_fail_at < 0)
        return false;
    if (s_alloc_fail_at-- > 0)
        return false;
    s_alloc_fail_failed++;
    errno = ENOMEM; /* as the C library's allocator says it */
    return true;    /* s_alloc_fail_at is now -1: once */
}

void *__wrap_malloc(size_t n);
void *__wrap_malloc(size_t n)
{
    return s_alloc_fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size)
{
    return s_alloc_fail_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n)
{
    return s_alloc_fail_now() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s);
char *__wrap_strdup(const char *s)
{
    return s_alloc_fail_now() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n);
char *__wrap_strndup(const char *s, size_t n)
{
    return s_alloc_fail_now() ? NULL : __real_strndup(s, n);
}

/* SQLite's own allocator, which the one below wraps. */
static sqlite3_mem_methods s_alloc_fail_sqlite_real;

static void *s_alloc_fail_sqlite_malloc(int n)
{
    return s_alloc_fail_now() ? NULL : s_alloc_fail_sqlite_real.xMalloc(n);
}

static void *s_alloc_fail_sqlite_realloc(void *p, int n)
{
    return s_alloc_fail_now() ? NULL : s_alloc_fail_sqlite_real.xRealloc(p, n);
}

/* Makes SQLite's allocations fail with the others. Call it first in main,
 * before anything opens a database. Returns 0 or -1 (SQLite in use already). */
static inline int alloc_fail_sqlite_install(void)
{
    if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &s_alloc_fail_sqlite_real) != SQLITE_OK)
        return -1;
    sqlite3_mem_methods m = s_alloc_fail_sqlite_real;
    m.xMalloc = s_alloc_fail_sqlite_malloc;
    m.xRealloc = s_alloc_fail_sqlite_realloc;
    return sqlite3_config(SQLITE_CONFIG_MALLOC, &m) == SQLITE_OK ? 0 : -1;
}

/* A bound on the runs of one loop over a constructor's allocations: far
 * more than any constructor here makes, so reaching it means the loop never
 * ended. */
#define ALLOC_FAIL_RUNS_MAX 20000

#endif
