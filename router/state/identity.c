/* router/state/identity.c — loading and creating this node's Ed25519 identity
 * under $KITH_HOME/identity/ (file formats in identity.h). Secrets live only
 * in buffers that are wiped before they go out of scope. */
#include "router/state/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "router/state/home.h"
#include "router/state/statefile.h"

/* The key file is one line: the prefix, 44 base64 characters, a newline. */
static const char s_seed_prefix[] = "ed25519-seed:";
#define S_SEED_PREFIX_LEN (sizeof s_seed_prefix - 1)
#define S_SEED_B64_LEN    44
#define S_KEY_LINE_LEN    (S_SEED_PREFIX_LEN + S_SEED_B64_LEN)
/* Anything longer than a key line and its newline is not a key file; read
 * one byte more than that to see it. */
#define S_KEY_FILE_MAX (S_KEY_LINE_LEN + 1)
#define S_PUB_FILE_MAX 256

/* Both file paths under one home. */
typedef struct {
    char dir[ROUTER_PATH_MAX]; /* <home>/identity */
    char key[ROUTER_PATH_MAX]; /* <home>/identity/identity.key */
    char pub[ROUTER_PATH_MAX]; /* <home>/identity/identity.pub */
} s_paths_t;

static int s_paths(const char *home, s_paths_t *p, char *err, size_t errcap)
{
    if (router_home_path(home, ROUTER_IDENTITY_DIR, p->dir, sizeof p->dir) != 0 ||
        router_home_path(home, ROUTER_IDENTITY_KEY_FILE, p->key, sizeof p->key) != 0 ||
        router_home_path(home, ROUTER_IDENTITY_PUB_FILE, p->pub, sizeof p->pub) != 0) {
        router_statefile_err_too_long(home, " for a home directory", err, errcap);
        return -1;
    }
    return 0;
}

static int s_sodium(char *err, size_t errcap)
{
    if (sodium_init() < 0) {
        snprintf(err, errcap, "libsodium failed to initialise");
        return -1;
    }
    return 0;
}

/* Fills pk, sk and peer_id of *id from a seed. */
static void s_from_seed(const uint8_t seed[PROTO_SEED_LEN], router_identity_t *id)
{
    proto_ed25519_seed_keypair(seed, id->pk, id->sk);
    proto_peer_id(id->pk, id->peer_id);
}

/* The identity.pub line for pk, newline included. */
static void s_pub_line(const uint8_t pk[PROTO_PUBKEY_LEN], char out[PROTO_PUBKEY_TEXT_CAP + 1])
{
    (void) proto_pubkey_format(pk, out, PROTO_PUBKEY_TEXT_CAP);
    out[PROTO_PUBKEY_TEXT_LEN] = '\n';
    out[PROTO_PUBKEY_TEXT_LEN + 1] = '\0';
}

static int s_write_pub(const s_paths_t *p, const uint8_t pk[PROTO_PUBKEY_LEN], char *err,
                       size_t errcap)
{
    char line[PROTO_PUBKEY_TEXT_CAP + 1];
    s_pub_line(pk, line);
    return router_statefile_replace(p->pub, line, strlen(line), 0644, err, errcap);
}

/* ------------------------------------------------------------ loading */

/* Opens the key file and refuses it unless it is a regular file of ours that
 * nobody else may read or write. Returns the fd or -1; *missing says the file
 * does not exist. */
static int s_open_key(const s_paths_t *p, const char *home, bool *missing, char *err,
                      size_t errcap)
{
    *missing = false;
    /* O_NONBLOCK: a FIFO there would otherwise block the open until a
     * writer came (a daemon hung at start, saying nothing); a regular
     * file reads the same either way. */
    int fd = open(p->key, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int open_errno = errno;
        struct stat lst;
        if (open_errno == ENOENT && lstat(p->key, &lst) == 0 && S_ISLNK(lst.st_mode)) {
            /* A link to a key on a volume not mounted (or moved): not a
             * first start. Told "run kith keygen", the operator met
             * keygen's "already exists", and was pushed towards moving
             * the link away and minting a new identity. */
            char to[256];
            ssize_t n = readlink(p->key, to, sizeof to - 1);
            to[n > 0 ? (size_t) n : 0] = '\0';
            snprintf(err, errcap,
                     "%s is a symbolic link to %s, which does not exist (a volume not mounted?); "
                     "make the key file it names available, or replace the link with the key file",
                     p->key, n > 0 ? to : "a missing file");
        } else if (open_errno == ENOENT) {
            *missing = true;
            snprintf(err, errcap, "no identity at %s; run: kith keygen --home %s", p->key, home);
        } else {
            snprintf(err, errcap, "%s: %s", p->key, strerror(open_errno));
        }
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errcap, "%s: %s", p->key, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "%s is not a regular file; put the key file there", p->key);
        goto fail;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errcap, "%s is owned by uid %u, not by this user (uid %u); run: chown %u %s",
                 p->key, (unsigned) st.st_uid, (unsigned) geteuid(), (unsigned) geteuid(), p->key);
        goto fail;
    }
    if (st.st_mode & 077) {
        snprintf(err, errcap,
                 "%s is accessible by group or others (mode %04o), so the secret key may have "
                 "leaked; run: chmod 600 %s",
                 p->key, (unsigned) (st.st_mode & 07777), p->key);
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

/* Reads the seed out of an open key file. */
static int s_read_seed(int fd, const char *path, uint8_t seed[PROTO_SEED_LEN], char *err,
                       size_t errcap)
{
    char buf[S_KEY_FILE_MAX + 1];
    size_t got = 0;
    int rc = -1;
    for (;;) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errcap, "%s: %s", path, strerror(errno));
            goto done;
        }
        if (n == 0 || (got += (size_t) n) == sizeof buf)
            break;
    }
    size_t len = got;
    if (len == S_KEY_LINE_LEN + 1 && buf[len - 1] == '\n')
        len--;
    size_t used = 0;
    const char *end = NULL;
    if (len != S_KEY_LINE_LEN || memcmp(buf, s_seed_prefix, S_SEED_PREFIX_LEN) != 0 ||
        sodium_base642bin(seed, PROTO_SEED_LEN, buf + S_SEED_PREFIX_LEN, S_SEED_B64_LEN, NULL,
                          &used, &end, sodium_base64_VARIANT_ORIGINAL) != 0 ||
        used != PROTO_SEED_LEN || end != buf + len) {
        snprintf(err, errcap,
                 "%s is not a kith key file (expected one line \"%s<base64 of 32 bytes>\"); "
                 "restore it from a backup, or move it away and run kith keygen",
                 path, s_seed_prefix);
        goto done;
    }
    rc = 0;
done:
    sodium_memzero(buf, sizeof buf);
    if (rc != 0)
        sodium_memzero(seed, PROTO_SEED_LEN);
    return rc;
}

/* Checks identity.pub against the key; rewrites it when it is missing. */
static int s_check_pub(const s_paths_t *p, const uint8_t pk[PROTO_PUBKEY_LEN], char *err,
                       size_t errcap)
{
    char *text = NULL;
    size_t len = 0;
    if (router_statefile_read(p->pub, S_PUB_FILE_MAX, &text, &len, NULL, err, errcap) != 0) {
        if (errno == ENOENT)
            return s_write_pub(p, pk, err, errcap);
        return -1;
    }
    if (len > 0 && text[len - 1] == '\n')
        len--;
    uint8_t named[PROTO_PUBKEY_LEN];
    int rc = 0;
    if (proto_pubkey_parse(text, len, named) != 0) {
        snprintf(err, errcap,
                 "%s is not an \"ed25519:<base64>\" key line; delete it and it will be "
                 "rewritten from identity.key",
                 p->pub);
        rc = -1;
    } else if (memcmp(named, pk, PROTO_PUBKEY_LEN) != 0) {
        char have[PROTO_PUBKEY_TEXT_CAP];
        (void) proto_pubkey_format(pk, have, sizeof have);
        snprintf(err, errcap,
                 "%s names another key than identity.key (%s); restore the matching pair, or "
                 "delete identity.pub to have it rewritten from the key",
                 p->pub, have);
        rc = -1;
    }
    free(text);
    return rc;
}

/* router_identity_load, also saying whether the key file was missing. */
static int s_load(const char *home, router_identity_t *out, bool *missing, char *err,
                  size_t errcap)
{
    *missing = false;
    memset(out, 0, sizeof *out);
    s_paths_t p;
    if (s_sodium(err, errcap) != 0 || s_paths(home, &p, err, errcap) != 0)
        return -1;
    int fd = s_open_key(&p, home, missing, err, errcap);
    if (fd < 0)
        return -1;
    uint8_t seed[PROTO_SEED_LEN];
    int rc = s_read_seed(fd, p.key, seed, err, errcap);
    close(fd);
    if (rc != 0)
        return -1;
    s_from_seed(seed, out);
    sodium_memzero(seed, sizeof seed);
    if (s_check_pub(&p, out->pk, err, errcap) != 0) {
        router_identity_wipe(out);
        return -1;
    }
    return 0;
}

int router_identity_load(const char *home, router_identity_t *out, char *err, size_t errcap)
{
    bool missing;
    return s_load(home, out, &missing, err, errcap);
}

/* ------------------------------------------------------------ creating */

static void s_key_exists(const s_paths_t *p, char *err, size_t errcap)
{
    snprintf(err, errcap,
             "%s already exists; kith never replaces an identity (move it away first to make a "
             "new one)",
             p->key);
}

/* Writes the key line to a fresh 0600 temp file, then links it in as
 * identity.key: link(2) never replaces an existing name, so two processes
 * creating at once cannot both win, and readers never see half a key.
 * *exists says identity.key was already there. */
static int s_write_key(const s_paths_t *p, const uint8_t seed[PROTO_SEED_LEN], bool *exists,
                       char *err, size_t errcap)
{
    *exists = false;
    char line[S_KEY_LINE_LEN + 2];
    memcpy(line, s_seed_prefix, S_SEED_PREFIX_LEN);
    sodium_bin2base64(line + S_SEED_PREFIX_LEN, S_SEED_B64_LEN + 1, seed, PROTO_SEED_LEN,
                      sodium_base64_VARIANT_ORIGINAL);
    line[S_KEY_LINE_LEN] = '\n';
    line[S_KEY_LINE_LEN + 1] = '\0';

    char tmp[ROUTER_PATH_MAX];
    int rc = -1, fd = -1;
    if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", p->key) >= (int) sizeof tmp) {
        router_statefile_err_too_long(p->key, "", err, errcap);
        goto done;
    }
    /* mkostemp: O_CREAT | O_EXCL, mode 0600 from the first instant. */
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errcap, "cannot create a key file in %s: %s", p->dir, strerror(errno));
        goto done;
    }
    if (fchmod(fd, 0600) != 0 ||
        router_statefile_write_all(fd, line, S_KEY_LINE_LEN + 1) != 0 || fsync(fd) != 0) {
        snprintf(err, errcap, "cannot write %s: %s", tmp, strerror(errno));
        goto unlink_tmp;
    }
    if (link(tmp, p->key) != 0) {
        *exists = errno == EEXIST;
        if (*exists)
            s_key_exists(p, err, errcap);
        else
            snprintf(err, errcap, "cannot create %s: %s", p->key, strerror(errno));
        goto unlink_tmp;
    }
    if (router_statefile_sync_dir(p->key) != 0) {
        snprintf(err, errcap, "%s: created, but syncing %s failed: %s", p->key, p->dir,
                 strerror(errno));
        goto unlink_tmp;
    }
    rc = 0;
unlink_tmp:
    unlink(tmp);
done:
    if (fd >= 0)
        close(fd);
    sodium_memzero(line, sizeof line);
    return rc;
}

/* A kept identity.pub without its key is a lost identity, not a first
 * start: making a new key there would quietly turn this node into a
 * stranger its peers no longer trust. Says how to recover instead. */
static int s_refuse_lost_key(const s_paths_t *p, char *err, size_t errcap)
{
    struct stat st;
    if (lstat(p->pub, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errcap, "%s: %s", p->pub, strerror(errno));
        return -1;
    }
    char *text = NULL;
    size_t len = 0;
    char named[PROTO_PUBKEY_TEXT_CAP] = "an unreadable key";
    char ignored[ROUTER_IDENTITY_ERR_MAX];
    if (router_statefile_read(p->pub, S_PUB_FILE_MAX, &text, &len, NULL, ignored,
                              sizeof ignored) == 0) {
        while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
            len--;
        uint8_t pk[PROTO_PUBKEY_LEN];
        if (proto_pubkey_parse(text, len, pk) == 0)
            (void) proto_pubkey_format(pk, named, sizeof named);
        free(text);
    }
    snprintf(err, errcap,
             "%s: identity.key is missing but identity.pub (%s) is kept, so this node's identity "
             "is lost and kith will not make a new one; restore identity.key from a backup, or "
             "delete identity.pub to start over with a new identity (peers will not trust it "
             "until they add it again)",
             p->dir, named);
    return -1;
}

/* router_identity_create (a random seed, or `given`), also saying whether a
 * key file was already there. */
static int s_create(const char *home, const uint8_t *given, router_identity_t *out, bool *exists,
                    char *err, size_t errcap)
{
    *exists = false;
    memset(out, 0, sizeof *out);
    s_paths_t p;
    if (s_sodium(err, errcap) != 0 || s_paths(home, &p, err, errcap) != 0)
        return -1;
    if (router_home_mkdirs(p.dir, 0700) != 0) {
        snprintf(err, errcap, "cannot create %s: %s", p.dir, strerror(errno));
        return -1;
    }
    if (access(p.key, F_OK) == 0) {
        *exists = true;
        s_key_exists(&p, err, errcap);
        return -1;
    }
    if (s_refuse_lost_key(&p, err, errcap) != 0)
        return -1;
    uint8_t seed[PROTO_SEED_LEN];
    if (given)
        memcpy(seed, given, sizeof seed);
    else
        randombytes_buf(seed, sizeof seed);
    int rc = s_write_key(&p, seed, exists, err, errcap);
    if (rc == 0)
        s_from_seed(seed, out);
    sodium_memzero(seed, sizeof seed);
    if (rc != 0)
        return -1;
    if (s_write_pub(&p, out->pk, err, errcap) != 0) {
        /* The key stands; the next load rewrites the missing pub file. */
        router_identity_wipe(out);
        return -1;
    }
    return 0;
}

int router_identity_create(const char *home, router_identity_t *out, char *err, size_t errcap)
{
    bool exists;
    return s_create(home, NULL, out, &exists, err, errcap);
}

int router_identity_create_from_seed(const char *home, const uint8_t seed[32],
                                     router_identity_t *out, char *err, size_t errcap)
{
    bool exists;
    return s_create(home, seed, out, &exists, err, errcap);
}

int router_identity_load_or_create(const char *home, router_identity_t *out, bool *created,
                                   char *err, size_t errcap)
{
    bool missing = false, exists = false;
    if (created)
        *created = false;
    if (s_load(home, out, &missing, err, errcap) == 0)
        return 0;
    if (!missing)
        return -1;
    if (s_create(home, NULL, out, &exists, err, errcap) == 0) {
        if (created)
            *created = true;
        return 0;
    }
    /* Another process created it between our load and our create. */
    if (exists)
        return s_load(home, out, &missing, err, errcap);
    return -1;
}

void router_identity_json(const router_identity_t *id, char out[ROUTER_IDENTITY_JSON_CAP])
{
    char pub[PROTO_PUBKEY_TEXT_CAP], uuid[PROTO_UUID_TEXT_CAP];
    (void) proto_pubkey_format(id->pk, pub, sizeof pub);
    proto_uuid_format(id->peer_id, uuid);
    snprintf(out, ROUTER_IDENTITY_JSON_CAP, "{\"pubkey\":\"%s\",\"peer_id\":\"%s\"}", pub, uuid);
}

void router_identity_wipe(router_identity_t *id)
{
    if (id)
        sodium_memzero(id, sizeof *id);
}
