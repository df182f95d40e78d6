/* router/state/home.c — resolving and creating kith's state directory. */
#include "router/state/home.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int router_home_resolve(const char *flag, char *out, size_t cap)
{
    const char *env = getenv("KITH_HOME");
    int n;
    if (flag && *flag)
        n = snprintf(out, cap, "%s", flag);
    else if (env && *env)
        n = snprintf(out, cap, "%s", env);
    else {
        const char *home = getenv("HOME");
        if (!home || !*home)
            return -1;
        n = snprintf(out, cap, "%s/.kith", home);
    }
    return (n < 0 || (size_t) n >= cap) ? -1 : 0;
}

int router_home_path(const char *home, const char *rel, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s", home, rel);
    return (n < 0 || (size_t) n >= cap) ? -1 : 0;
}

int router_home_mkdirs(const char *dir, unsigned mode)
{
    char path[ROUTER_PATH_MAX];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(path, dir, len + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, (mode_t) mode) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(path, (mode_t) mode) != 0 && errno != EEXIST)
        return -1;
    /* EEXIST says only that something is there: a file where the folder
     * should be is refused here, with its reason, not later with a
     * puzzling one (ENOTDIR at the first file made inside). */
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}
