/* router/state/dbcheck.c — a state.db connection checked before a store
 * relies on writing it (router/state/dbcheck.h). */
#include "router/state/dbcheck.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int router_dbcheck_writable(sqlite3 *db, const char *what, const char *path, char *err,
                            size_t errcap)
{
    if (sqlite3_db_readonly(db, "main") != 1)
        return 0;
    snprintf(err, errcap,
             "%s%s is read-only to this user (uid %u): kith must write it; check its owner, "
             "mode and file system",
             what, path, (unsigned) geteuid());
    return -1;
}

int router_dbcheck_columns(sqlite3 *db, const router_dbcheck_table_t *tables, size_t ntables,
                           const char *what, const char *path, char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT name FROM pragma_table_info(?1)"
                               " WHERE \"notnull\" AND dflt_value IS NULL", -1, &st,
                           NULL) != SQLITE_OK) {
        snprintf(err, errcap, "%s%s: %s", what, path, sqlite3_errmsg(db));
        return -1;
    }
    int rc = 0, step = SQLITE_DONE;
    for (size_t t = 0; t < ntables && rc == 0; t++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, tables[t].table, -1, SQLITE_STATIC);
        while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
            const char *name = (const char *) sqlite3_column_text(st, 0);
            bool known = false;
            for (size_t i = 0; name && tables[t].cols[i] && !known; i++)
                known = strcmp(tables[t].cols[i], name) == 0;
            if (!known) {
                snprintf(err, errcap,
                         "%s%s was written by a newer kith (table %s has a column %s this "
                         "version cannot fill); run the newer version, or restore a state.db "
                         "this one wrote",
                         what, path, tables[t].table, name ? name : "?");
                rc = -1;
            }
        }
        if (rc == 0 && step != SQLITE_DONE) {
            snprintf(err, errcap, "%s%s: %s", what, path, sqlite3_errmsg(db));
            rc = -1;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

void router_dbcheck_error(sqlite3 *db, const char *what, const char *path, const char *doing,
                          char *err, size_t errcap)
{
    if (!path && db)
        path = sqlite3_db_filename(db, "main");
    int code = db ? (sqlite3_errcode(db) & 0xFF) : SQLITE_CANTOPEN;
    bool damaged = code == SQLITE_CORRUPT || code == SQLITE_NOTADB;
    snprintf(err, errcap, "%s%s: %s%s%s", what, path && *path ? path : "state.db", doing,
             db ? sqlite3_errmsg(db) : "cannot open",
             damaged ? "; the file is damaged: restore it (with its -wal file) from a backup, or "
                       "move state.db, state.db-wal and state.db-shm away to start with an empty "
                       "store (the inbox, replay window, tokens and sessions it held are lost)"
                     : "");
}
