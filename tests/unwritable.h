/* tests/unwritable.h — makes a file this process cannot write, for the
 * tests of stores that must refuse a state.db they could only read
 * (inbox_test, tokens_test). */
#ifndef KITH_TESTS_UNWRITABLE_H
#define KITH_TESTS_UNWRITABLE_H

#include <fcntl.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Makes `path` a file this process cannot write: mode 0444, and for root
 * (whom modes do not stop) the immutable attribute; `on` false undoes it.
 * Returns false when the file system cannot do that (the caller skips). */
static inline bool test_make_unwritable(const char *path, bool on)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    int flags = 0;
    bool ok = !on || chmod(path, 0444) == 0; /* an immutable file's mode is fixed */
    if (geteuid() == 0) {
        ok = ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && ok;
        flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
        ok = ok && ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
    }
    close(fd);
    if (!on)
        ok = chmod(path, 0600) == 0 && ok;
    if (on && ok) {
        fd = open(path, O_WRONLY | O_CLOEXEC);
        ok = fd < 0;
        if (fd >= 0)
            close(fd);
    }
    return ok;
}

#endif
