/* router/state/dbcheck.h — what a store checks of its state.db connection
 * before it relies on writing there: that it may write the file, and that
 * no table has a column a newer kith added that this build cannot fill.
 * Either would otherwise fail every commit for ever (WIRE §6, §17). */
#ifndef KITH_ROUTER_DBCHECK_H
#define KITH_ROUTER_DBCHECK_H

#include <stddef.h>
#include <sqlite3.h>

/* A table and the columns this build writes (NULL-terminated). */
typedef struct {
    const char *table;
    const char *const *cols;
} router_dbcheck_table_t;

/* 0 when db may be written; else -1 with err "<what><path> is read-only to
 * this user …" (SQLite opens a file it may not write read-only, silently). */
int router_dbcheck_writable(sqlite3 *db, const char *what, const char *path, char *err,
                            size_t errcap);

/* 0 when every column of these tables that must be set (NOT NULL, no
 * default) is one this build writes; else -1 with err "<what><path> was
 * written by a newer kith (table T has a column C …)", or the SQLite error.
 * Columns this build does not know but need not set are fine. */
int router_dbcheck_columns(sqlite3 *db, const router_dbcheck_table_t *tables, size_t ntables,
                           const char *what, const char *path, char *err, size_t errcap);

/* err gets "<what><path>: <doing><SQLite's words>" for the last failure
 * on db (path NULL: the file db has open); when SQLite found the file damaged
 * (SQLITE_CORRUPT, SQLITE_NOTADB) it adds what an operator can do, since
 * no retry or restart will mend it. */
void router_dbcheck_error(sqlite3 *db, const char *what, const char *path, const char *doing,
                          char *err, size_t errcap);

#endif
