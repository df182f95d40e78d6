/* tests/vfs_fail.h — disk-failure injection for unit tests: a SQLite VFS
 * that wraps the default one and, on demand, fails or holds the writes and
 * syncs of chosen database files, as a full, failing or slow disk would.
 *
 * kith's stores (the inbox, the session store, the token store) open their
 * databases with SQLite's default VFS; vfs_fail_install() makes this one the
 * default, so a test reaches the stores' real failure paths — a COMMIT that
 * fails, the ROLLBACK after it, the retry — without a seam in the product.
 *
 * Unlike tests/alloc_fail.h this is armed for every thread: the writes it
 * fails are made by the stores' own threads. A rule names the files it
 * applies to by a substring of their path (a test's own temporary folder),
 * so other databases the process holds are not disturbed. */
#ifndef KITH_TESTS_VFS_FAIL_H
#define KITH_TESTS_VFS_FAIL_H

#include <stdbool.h>

/* Registers the wrapping VFS as SQLite's default. Call first in main, before
 * any database is opened. Returns 0 or -1. */
int vfs_fail_install(void);

/* What a rule does to the files whose path contains its match. */
typedef enum {
    VFS_FAIL_SYNC,  /* xSync answers SQLITE_IOERR_FSYNC (fsync failed) */
    VFS_FAIL_WRITE, /* xWrite answers SQLITE_FULL (the disk is full) */
} vfs_fail_kind_t;

/* From now on, after `skip` more calls of that kind succeed, the next `count`
 * fail (count < 0: every one until vfs_fail_clear). Replaces the rule of the
 * same kind. */
void vfs_fail_arm(vfs_fail_kind_t kind, const char *match, long skip, long count);

/* While held, every xSync of a file whose path contains match waits (a slow
 * disk): commits stay in flight. vfs_fail_hold(NULL) releases them. */
void vfs_fail_hold(const char *match);

/* How many calls each rule has failed since it was armed, and how many syncs
 * wait on a hold now. */
unsigned vfs_fail_failed(vfs_fail_kind_t kind);
unsigned vfs_fail_held(void);

/* Drops every rule and releases every hold. */
void vfs_fail_clear(void);

#endif
