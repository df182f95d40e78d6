/* router/state/statefile.h — reading and atomically replacing the small files
 * kith keeps under $KITH_HOME (config.json, trusted_peers.json,
 * identity/identity.pub). */
#ifndef KITH_ROUTER_STATEFILE_H
#define KITH_ROUTER_STATEFILE_H

#include <stddef.h>

/* Reads the regular file at `path` when it holds at most `max` bytes.
 * On success *out is a new NUL-terminated buffer the caller frees, *len its
 * length without the NUL, *mode (when not NULL) the file's permission bits as
 * seen on the open file, and 0 is returned. Otherwise -1 with errno kept
 * (ENOENT when the file is missing, EFBIG when it is larger than max, EINVAL
 * when it is not a regular file: a FIFO is refused at once, never waited on)
 * and a one-line reason in err[errcap] that starts with the path. */
int router_statefile_read(const char *path, size_t max, char **out, size_t *len, unsigned *mode,
                          char *err, size_t errcap) __attribute__((warn_unused_result));

/* Replaces `path` with data[len] so that readers see the old file or the new
 * one, never a mix: a temp file in the same directory created with `mode`
 * less the process umask (as open(2) does; kith's main sets 077),
 * written, fsynced, renamed over `path`, then the directory fsynced.
 * Returns 0, or -1 with errno kept and err set; the temp file is removed on
 * failure. */
int router_statefile_replace(const char *path, const void *data, size_t len, unsigned mode,
                             char *err, size_t errcap) __attribute__((warn_unused_result));

/* write(2)s all of data[len] to fd, retrying on EINTR and short writes.
 * Returns 0 or -1 (errno). */
int router_statefile_write_all(int fd, const void *data, size_t len)
    __attribute__((warn_unused_result));

/* Says in err[errcap] that `path` is too long, as "<path>: path too long"
 * followed by `what` (may be ""). Of a path longer than 64 bytes only the
 * start is shown, with its length: the whole of it would crowd the reason
 * out of err. */
void router_statefile_err_too_long(const char *path, const char *what, char *err, size_t errcap);

/* fsyncs the directory holding `path`, so a rename or link into it is
 * durable. Returns 0 or -1 (errno). */
int router_statefile_sync_dir(const char *path) __attribute__((warn_unused_result));

#endif
