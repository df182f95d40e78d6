/* tests/io_fail.h — file-durability failure injection for unit tests. Every
 * unit test is linked with tests/io_fail.c and -Wl,--wrap for fsync, rename
 * and ftruncate, so kith's own calls to them can fail on demand, as a
 * failing disk (EIO), a full one (ENOSPC) or a rename across file systems
 * (EXDEV) would make them: the atomic replace of a state file, the writing
 * of the identity and the audit chain's repair then run their real failure
 * paths. Libraries kith links as shared objects (SQLite: tests/vfs_fail.h)
 * call the C library as before.
 *
 * Arming is per thread, as in tests/alloc_fail.h: only the thread that
 * armed a rule sees the failure, so the threads a test starts run as usual.
 *
 * The usual use: io_fail_arm(IO_FAIL_FSYNC, 0, EIO), call the code under
 * test, then assert io_fail_disarm() == 1 (the failure was reached) and what
 * the code promises after it. */
#ifndef KITH_TESTS_IO_FAIL_H
#define KITH_TESTS_IO_FAIL_H

/* The calls that can be made to fail. */
typedef enum {
    IO_FAIL_FSYNC,
    IO_FAIL_RENAME,
    IO_FAIL_FTRUNCATE,
    IO_FAIL_CALLS /* how many there are */
} io_fail_call_t;

/* On this thread, after `skip` more calls of `call` succeed, the next one
 * fails, once, returning -1 with errno `err`. Replaces the rule for that
 * call; the rules for the others stay. */
void io_fail_arm(io_fail_call_t call, long skip, int err);

/* Drops every rule; returns how many calls failed on this thread since the
 * last io_fail_disarm. */
unsigned io_fail_disarm(void);

/* How many calls failed on this thread since the last io_fail_disarm. */
unsigned io_fail_failed(void);

#endif
