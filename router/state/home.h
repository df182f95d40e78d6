/* router/state/home.h — where kith keeps its state: --home DIR, else $KITH_HOME,
 * else ~/.kith (DESIGN §4). */
#ifndef KITH_ROUTER_HOME_H
#define KITH_ROUTER_HOME_H

#include <stddef.h>

/* Longest path kith builds under its home. */
#define ROUTER_PATH_MAX 4096

/* Writes the home directory into out[cap]: `flag` when non-NULL, else
 * $KITH_HOME, else $HOME/.kith. Returns 0, or -1 when no home can be named or
 * the path does not fit. */
int router_home_resolve(const char *flag, char *out, size_t cap)
    __attribute__((warn_unused_result));

/* Writes "<home>/<rel>" into out[cap]. Returns 0, or -1 when it does not fit. */
int router_home_path(const char *home, const char *rel, char *out, size_t cap)
    __attribute__((warn_unused_result));

/* Creates `dir` and its missing parents with `mode`. Returns 0 or -1 (errno). */
int router_home_mkdirs(const char *dir, unsigned mode) __attribute__((warn_unused_result));

#endif
