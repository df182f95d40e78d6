/* tools/kith/cli_statedb.h — whether SQLite can open a home's state.db,
 * checked before a server starts so a long home path is refused with its
 * reason and fix rather than SQLite's "unable to open database file". */
#ifndef KITH_CLI_STATEDB_H
#define KITH_CLI_STATEDB_H

/* 0 when home/state.db (and its journal beside it) have paths SQLite's
 * default VFS can open; else prints one line naming the length, the bound
 * and the fix ("kith <cmd>: …") and returns -1. home must exist. */
int kith_statedb_check(const char *cmd, const char *home);

#endif
