/* tests/alloc_fail.h — allocation-failure injection for unit tests. Every
 * unit test is linked with tests/alloc_fail.c and -Wl,--wrap for kith's
 * allocator calls, so each malloc, calloc, realloc, strdup and strndup in
 * kith's own code can be made to fail. Libraries kith links as shared
 * objects (libcbor, CZMQ, yajl) allocate as before, but for SQLite, which
 * takes an allocator of ours (alloc_fail_sqlite_install), so that a query
 * or a commit can fail as out of memory too.
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

/* On this thread, the allocation after `skip` more that succeed fails, once
 * (errno ENOMEM, as the C library's allocator says it). */
void alloc_fail_arm(long skip);

/* Stops injecting; returns how many allocations failed since armed. */
unsigned alloc_fail_disarm(void);

/* How many allocations failed on this thread since armed, still armed. */
unsigned alloc_fail_failed(void);

/* Makes SQLite's allocations fail with the others. Call it first in main,
 * before anything opens a database. Returns 0 or -1 (SQLite in use already). */
int alloc_fail_sqlite_install(void);

/* A bound on the runs of one loop over a constructor's allocations: far
 * more than any constructor here makes, so reaching it means the loop never
 * ended. */
#define ALLOC_FAIL_RUNS_MAX 20000

#endif
