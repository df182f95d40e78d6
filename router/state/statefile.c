/* router/state/statefile.c — bounded reads and atomic replacement of state files. */
#include "router/state/statefile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router/state/home.h"

int router_statefile_read(const char *path, size_t max, char **out, size_t *len, unsigned *mode,
                          char *err, size_t errcap)
{
    *out = NULL;
    *len = 0;
    char *buf = NULL;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer forever, hanging start-up; fstat below refuses it at once. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errcap, "%s: %s", path, strerror(e));
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "%s: not a regular file (%s); kith reads only regular files", path,
                 S_ISFIFO(st.st_mode)  ? "a FIFO"
                 : S_ISDIR(st.st_mode) ? "a directory"
                 : S_ISSOCK(st.st_mode) ? "a socket"
                                        : "a device");
        errno = EINVAL;
        goto fail;
    }
    if ((unsigned long long) st.st_size > max) {
        snprintf(err, errcap, "%s: %lld bytes, more than the %zu allowed", path,
                 (long long) st.st_size, max);
        errno = EFBIG;
        goto fail;
    }
    /* The size may change under us: read up to max + 1 bytes and judge what
     * actually arrived, not what fstat said. */
    buf = malloc(max + 2);
    if (!buf) {
        snprintf(err, errcap, "%s: out of memory", path);
        errno = ENOMEM;
        goto fail;
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, max + 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errcap, "%s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        got += (size_t) n;
        if (got > max) {
            snprintf(err, errcap, "%s: more than the %zu bytes allowed", path, max);
            errno = EFBIG;
            goto fail;
        }
    }
    close(fd);
    buf[got] = '\0';
    if (mode)
        *mode = (unsigned) (st.st_mode & 07777);
    *out = buf;
    *len = got;
    return 0;
fail:;
    int e = errno;
    free(buf);
    close(fd);
    errno = e;
    return -1;
}

void router_statefile_err_too_long(const char *path, const char *what, char *err, size_t errcap)
{
    size_t n = strlen(path);
    if (n <= 64)
        snprintf(err, errcap, "%s: path too long%s", path, what);
    else
        snprintf(err, errcap, "%.64s...: path too long%s (%zu bytes)", path, what, n);
}

int router_statefile_sync_dir(const char *path)
{
    char copy[ROUTER_PATH_MAX];
    if (strlen(path) >= sizeof copy) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(copy, path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

int router_statefile_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t) n;
    }
    return 0;
}

/* The process umask, read without leaving it changed. For the instant the
 * probe holds it the mask is 077, which can only make a file another thread
 * creates meanwhile more private, never less. */
static mode_t s_umask(void)
{
    mode_t mask = umask(077);
    umask(mask);
    return mask;
}

int router_statefile_replace(const char *path, const void *data, size_t len, unsigned mode,
                             char *err, size_t errcap)
{
    char tmp[ROUTER_PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    if (n < 0 || (size_t) n >= sizeof tmp) {
        router_statefile_err_too_long(path, "", err, errcap);
        errno = ENAMETOOLONG;
        return -1;
    }
    /* mkostemp creates the file 0600 with O_EXCL; fchmod then sets `mode`
     * less the umask, as open(2) would: kith runs with umask 077, so what
     * it writes stays its owner's alone. */
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errcap, "%s: cannot create a temp file: %s", path, strerror(e));
        errno = e;
        return -1;
    }
    if (fchmod(fd, (mode_t) mode & ~s_umask()) != 0 || router_statefile_write_all(fd, data, len) != 0 ||
        fsync(fd) != 0) {
        snprintf(err, errcap, "%s: cannot write %s: %s", path, tmp, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        snprintf(err, errcap, "%s: cannot write %s: %s", path, tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        snprintf(err, errcap, "%s: cannot replace: %s", path, strerror(errno));
        goto fail;
    }
    if (router_statefile_sync_dir(path) != 0) {
        /* The new content is in place; only its durability is in doubt. */
        snprintf(err, errcap, "%s: replaced, but syncing its directory failed: %s", path,
                 strerror(errno));
        return -1;
    }
    return 0;
fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    errno = e;
    return -1;
}
