/* router/state/trust_edit.c — one edit of $KITH_HOME/trusted_peers.json:
 * under the exclusive lock on trusted_peers.json.lock, load, change, save
 * (atomically, router_statefile_replace). Every writer of the file — `kith
 * peers`, Meerkat pairing, POST/DELETE /api/peers — goes through here, so
 * no two edits lose one another's change. Blocking file I/O: never on a
 * loop thread. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "router/log.h"
#include "router/state/home.h"
#include "router/state/trust.h"

int router_trust_edit(const char *home, router_trust_edit_fn *edit, void *ud, char *err,
                      size_t errcap)
{
    char path[ROUTER_PATH_MAX], lock_path[ROUTER_PATH_MAX];
    if (router_home_path(home, ROUTER_TRUST_FILE, path, sizeof path) != 0 ||
        router_home_path(home, ROUTER_TRUST_FILE ".lock", lock_path, sizeof lock_path) != 0) {
        snprintf(err, errcap, "%.300s: path too long; use a shorter home", home);
        return -1;
    }
    if (router_home_mkdirs(home, 0700) != 0) {
        snprintf(err, errcap, "cannot create %.300s: %s", home, strerror(errno));
        return -1;
    }
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX) != 0) {
        snprintf(err, errcap, "cannot lock %.300s: %s", lock_path, strerror(errno));
        if (lock >= 0)
            close(lock);
        return -1;
    }
    int rc = -1;
    router_trust_t *t = router_trust_load(path, err, errcap);
    if (t && edit(t, ud, err, errcap) == 0)
        rc = router_trust_save(t, path, err, errcap);
    router_trust_destroy(&t);
    close(lock);
    return rc;
}

int router_trust_sweep_temps(const char *home)
{
    static const char prefix[] = ROUTER_TRUST_FILE ".tmp-";
    char lock_path[ROUTER_PATH_MAX], path[ROUTER_PATH_MAX];
    if (router_home_path(home, ROUTER_TRUST_FILE ".lock", lock_path, sizeof lock_path) != 0)
        return 0;
    DIR *d = opendir(home);
    if (!d)
        return 0;
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int gone = 0;
    if (lock < 0 || flock(lock, LOCK_EX) != 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "trust", "cannot lock %s to sweep temp files: %s", lock_path,
                   strerror(errno));
        goto done;
    }
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, prefix, sizeof prefix - 1) != 0 ||
            router_home_path(home, e->d_name, path, sizeof path) != 0)
            continue;
        if (unlink(path) == 0)
            gone++;
        else
            ROUTER_LOG(ROUTER_LOG_WARN, "trust", "cannot remove %s: %s", path, strerror(errno));
    }
    if (gone)
        ROUTER_LOG(ROUTER_LOG_INFO, "trust",
                   "removed %d temp file%s of %s left by saves that never finished", gone,
                   gone == 1 ? "" : "s", ROUTER_TRUST_FILE);
done:
    if (lock >= 0)
        close(lock);
    closedir(d);
    return gone;
}
