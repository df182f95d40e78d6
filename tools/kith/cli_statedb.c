/* tools/kith/cli_statedb.c — the path length SQLite takes for state.db. */
#include "tools/kith/cli_statedb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

/* SQLite names the rollback journal "<db>-journal" (WAL mode still uses it
 * while the database is first made), so the longest of the paths it opens
 * is the database's plus this. */
#define S_JOURNAL_SUFFIX "-journal"

int kith_statedb_check(const char *cmd, const char *home)
{
    /* SQLite makes the path absolute and resolves symbolic links before it
     * measures it against the VFS's mxPathname (512 for unix): what counts
     * is the real path, so a symlink to a long home does not help. */
    sqlite3_vfs *vfs = sqlite3_vfs_find(NULL);
    char *real = realpath(home, NULL);
    if (!vfs || !real) {
        free(real); /* the open itself reports what is wrong */
        return 0;
    }
    size_t len = strlen(real) + sizeof "/state.db" - 1;
    size_t max = (size_t) vfs->mxPathname - (sizeof S_JOURNAL_SUFFIX - 1);
    free(real);
    if (len <= max)
        return 0;
    fprintf(stderr, "kith %s: %s/state.db is %zu characters long as a real path; SQLite opens "
                    "at most %zu: use a home with a shorter path\n", cmd, home, len, max);
    return -1;
}
