/* router/state/identity_meerkat.c — Meerkat's raw identity files in and out
 * (identity_meerkat.h). */
#include "router/state/identity_meerkat.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router/state/home.h"
#include "router/state/statefile.h"

#define S_RAW_LEN 32

/* Reads exactly 32 bytes from dir/name into out. *missing says the file is
 * not there. `secret`: refuse a file group or others can read. */
static int s_read_raw(const char *dir, const char *name, uint8_t out[S_RAW_LEN], bool secret,
                      bool *missing, char *err, size_t errcap)
{
    char path[ROUTER_PATH_MAX];
    *missing = false;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int) sizeof path) {
        router_statefile_err_too_long(dir, "", err, errcap);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        *missing = errno == ENOENT;
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    uint8_t buf[S_RAW_LEN + 1];
    int rc = -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "%s: not a regular file", path);
        goto done;
    }
    if (secret && (st.st_mode & 077)) {
        snprintf(err, errcap, "%s: group or others may read it (mode %04o); run: chmod 600 %s",
                 path, (unsigned) (st.st_mode & 07777), path);
        goto done;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    if (n != S_RAW_LEN) {
        snprintf(err, errcap,
                 "%s: expected exactly %d raw bytes (a Meerkat %s), got %s", path, S_RAW_LEN,
                 secret ? "secret key" : "public key", n < 0 ? strerror(errno) : n > S_RAW_LEN ? "more" : "fewer");
        goto done;
    }
    memcpy(out, buf, S_RAW_LEN);
    rc = 0;
done:
    sodium_memzero(buf, sizeof buf);
    close(fd);
    return rc;
}

int router_identity_import_meerkat(const char *home, const char *dir, router_identity_t *out,
                                   char *err, size_t errcap)
{
    uint8_t seed[S_RAW_LEN], pub[S_RAW_LEN];
    bool missing;
    memset(out, 0, sizeof *out);
    if (sodium_init() < 0) {
        snprintf(err, errcap, "libsodium failed to initialise");
        return -1;
    }
    if (s_read_raw(dir, "identity.key", seed, true, &missing, err, errcap) != 0)
        return -1;
    uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_seed_keypair(pk, sk, seed);
    sodium_memzero(sk, sizeof sk);
    if (s_read_raw(dir, "identity.pub", pub, false, &missing, err, errcap) != 0 && !missing) {
        sodium_memzero(seed, sizeof seed);
        return -1;
    }
    if (!missing && memcmp(pub, pk, S_RAW_LEN) != 0) {
        snprintf(err, errcap, "%s: identity.pub names another key than identity.key makes; "
                              "nothing was imported", dir);
        sodium_memzero(seed, sizeof seed);
        return -1;
    }
    int rc = router_identity_create_from_seed(home, seed, out, err, errcap);
    sodium_memzero(seed, sizeof seed);
    return rc;
}

/* True when path holds exactly data[32]: an export that stopped after it
 * (a kill, a failed write of the other file) already wrote it. */
static bool s_same_raw(const char *path, const uint8_t *data)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return false;
    uint8_t have[S_RAW_LEN + 1];
    ssize_t n = read(fd, have, sizeof have);
    close(fd);
    bool same = n == S_RAW_LEN && sodium_memcmp(have, data, S_RAW_LEN) == 0;
    sodium_memzero(have, sizeof have);
    return same;
}

/* Creates dir/name with `mode` holding data[32], never replacing it: the
 * bytes go to a temp file that is synced and then linked in (link(2)
 * never replaces a name), so a kill leaves the file whole or absent, never
 * half written. A file already holding exactly these bytes is kept (the
 * retry of an export that stopped half way); *made says whether this call
 * made it. */
static int s_write_raw(const char *dir, const char *name, const uint8_t *data, unsigned mode,
                       bool *made, char *err, size_t errcap)
{
    *made = false;
    char path[ROUTER_PATH_MAX], tmp[ROUTER_PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int) sizeof path ||
        snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= (int) sizeof tmp) {
        router_statefile_err_too_long(dir, "", err, errcap);
        return -1;
    }
    if (s_same_raw(path, data))
        return 0;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fchmod(fd, mode) != 0 || router_statefile_write_all(fd, data, S_RAW_LEN) != 0 ||
        fsync(fd) != 0) {
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (link(tmp, path) != 0) {
        snprintf(err, errcap, "%s: %s%s", path, strerror(errno),
                 errno == EEXIST ? " (kith never replaces an identity file)" : "");
        unlink(tmp);
        return -1;
    }
    unlink(tmp);
    *made = true;
    return 0;
}

int router_identity_export_meerkat(const router_identity_t *id, const char *dir, char *err,
                                   size_t errcap)
{
    if (router_home_mkdirs(dir, 0700) != 0) {
        snprintf(err, errcap, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    /* libsodium's secret key is seed ‖ public key: the seed is its first half. */
    bool made_key, made_pub;
    if (s_write_raw(dir, "identity.key", id->sk, 0600, &made_key, err, errcap) != 0)
        return -1;
    char path[ROUTER_PATH_MAX];
    if (s_write_raw(dir, "identity.pub", id->pk, 0644, &made_pub, err, errcap) != 0) {
        /* The key just made goes too, so nothing is left half exported. */
        if (made_key) {
            snprintf(path, sizeof path, "%s/identity.key", dir);
            unlink(path);
        }
        return -1;
    }
    snprintf(path, sizeof path, "%s/identity.pub", dir);
    if (router_statefile_sync_dir(path) != 0) {
        snprintf(err, errcap, "%s: written, but syncing the directory failed: %s", dir,
                 strerror(errno));
        return -1;
    }
    return 0;
}
