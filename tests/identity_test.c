/* tests/identity_test.c — router/identity: file modes, round trip, the
 * RFC 8032 key and its PeerId (computed independently with Python's
 * hashlib), refusal of unsafe, malformed and mismatched files (and of a
 * symbolic link to a key not there, named as such), no overwrite,
 * and creation whose fsync or rename fails (tests/io_fail.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io_fail.h"
#include "proto/pubkey.h"
#include "router/state/identity.h"
#include "router/state/identity_meerkat.h"

/* RFC 8032 §7.1, TEST 1: the secret key (seed) and public key. */
static const uint8_t s_rfc_seed[32] = {
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
};
static const uint8_t s_rfc_pk[32] = {
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
};
/* The seed as the key file holds it, and the pub file line. */
#define S_RFC_KEY_LINE "ed25519-seed:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n"
#define S_RFC_PUB_LINE "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n"
/* uuid.UUID(bytes=sha1(ns.bytes + pk)[:16] with version 5 and variant bits)
 * in Python, ns = 6d656572-6b61-7450-6565-724964300001. */
#define S_RFC_PEER_ID \
    "{\"pubkey\":\"ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"," \
    "\"peer_id\":\"799d7474-517f-5045-9ae5-ca7af62e35c6\"}"

typedef struct {
    char home[64];  /* a fresh temp directory */
    char key[128];  /* home/identity/identity.key */
    char pub[128];  /* home/identity/identity.pub */
    char dir[128];  /* home/identity */
} s_env_t;

static int s_setup(void **state)
{
    s_env_t *e = calloc(1, sizeof *e);
    if (!e)
        return -1;
    snprintf(e->home, sizeof e->home, "/tmp/kith-identity-test-XXXXXX");
    if (!mkdtemp(e->home))
        return -1;
    snprintf(e->dir, sizeof e->dir, "%s/identity", e->home);
    snprintf(e->key, sizeof e->key, "%s/identity/identity.key", e->home);
    snprintf(e->pub, sizeof e->pub, "%s/identity/identity.pub", e->home);
    *state = e;
    return 0;
}

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void) st;
    (void) flag;
    (void) ftw;
    return remove(path);
}

static int s_teardown(void **state)
{
    s_env_t *e = *state;
    nftw(e->home, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    free(e);
    return 0;
}

static void s_write(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static void s_read(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
}

/* Installs the RFC 8032 identity by hand. */
static void s_install_rfc(const s_env_t *e)
{
    mkdir(e->dir, 0700);
    s_write(e->key, S_RFC_KEY_LINE, 0600);
    s_write(e->pub, S_RFC_PUB_LINE, 0644);
}

static bool s_all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* ------------------------------------------------------------ create */

static void test_create_writes_0600_key_and_pub(void **state)
{
    s_env_t *e = *state;
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_create(e->home, &id, err, sizeof err), 0);

    struct stat st;
    assert_int_equal(stat(e->key, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(stat(e->dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);

    /* The key file is one line; its seed derives the same key pair. */
    char text[256];
    s_read(e->key, text, sizeof text);
    assert_int_equal(strncmp(text, "ed25519-seed:", 13), 0);
    assert_int_equal(strlen(text), 13 + 44 + 1);
    assert_int_equal(text[strlen(text) - 1], '\n');

    /* The pub file is the text form of pk. */
    char want[PROTO_PUBKEY_TEXT_CAP + 1];
    assert_int_equal(proto_pubkey_format(id.pk, want, PROTO_PUBKEY_TEXT_CAP), 0);
    strcat(want, "\n");
    s_read(e->pub, text, sizeof text);
    assert_string_equal(text, want);

    /* sk is seed ‖ pk, as libsodium lays it out. */
    assert_memory_equal(id.sk + 32, id.pk, 32);
    assert_int_equal(proto_pubkey_check(id.pk), 0);

    router_identity_wipe(&id);
}

static void test_create_never_overwrites(void **state)
{
    s_env_t *e = *state;
    s_install_rfc(e);
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_create(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "already exists"));
    assert_true(s_all_zero(&id, sizeof id));
    char text[256];
    s_read(e->key, text, sizeof text);
    assert_string_equal(text, S_RFC_KEY_LINE);
}

static void test_create_leaves_no_temp_files(void **state)
{
    s_env_t *e = *state;
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_create(e->home, &id, err, sizeof err), 0);
    assert_int_equal(router_identity_create(e->home, &id, err, sizeof err), -1);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 2", e->dir);
    assert_int_equal(system(cmd), 0);
}

/* ------------------------------------------------------------ load */

static void test_round_trip(void **state)
{
    s_env_t *e = *state;
    router_identity_t a, b;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_create(e->home, &a, err, sizeof err), 0);
    assert_int_equal(router_identity_load(e->home, &b, err, sizeof err), 0);
    assert_memory_equal(&a, &b, sizeof a);
    router_identity_wipe(&a);
    router_identity_wipe(&b);
}

static void test_rfc8032_key_and_peer_id(void **state)
{
    s_env_t *e = *state;
    s_install_rfc(e);
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    if (router_identity_load(e->home, &id, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_memory_equal(id.pk, s_rfc_pk, 32);
    assert_memory_equal(id.sk, s_rfc_seed, 32);
    assert_memory_equal(id.sk + 32, s_rfc_pk, 32);
    char json[ROUTER_IDENTITY_JSON_CAP];
    router_identity_json(&id, json);
    assert_string_equal(json, S_RFC_PEER_ID);
    router_identity_wipe(&id);
}

static void test_key_without_newline_loads(void **state)
{
    s_env_t *e = *state;
    s_install_rfc(e);
    char line[] = S_RFC_KEY_LINE;
    line[strlen(line) - 1] = '\0';
    s_write(e->key, line, 0600);
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), 0);
    assert_memory_equal(id.pk, s_rfc_pk, 32);
}

static void test_refuses_modes_open_to_others(void **state)
{
    s_env_t *e = *state;
    static const mode_t modes[] = {0644, 0640, 0604, 0620, 0602, 0660, 0666, 0700, 0610, 0601};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        s_install_rfc(e);
        assert_int_equal(chmod(e->key, modes[i]), 0);
        router_identity_t id;
        char err[ROUTER_IDENTITY_ERR_MAX];
        int rc = router_identity_load(e->home, &id, err, sizeof err);
        bool open_to_others = (modes[i] & 077) != 0;
        if (!open_to_others) {
            assert_int_equal(rc, 0); /* 0700: owner only, still private */
            continue;
        }
        if (rc == 0)
            fail_msg("mode %04o accepted", (unsigned) modes[i]);
        assert_non_null(strstr(err, "chmod 600"));
        assert_non_null(strstr(err, e->key));
        assert_true(s_all_zero(&id, sizeof id));
    }
    assert_int_equal(chmod(e->key, 0400), 0);
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), 0);
}

static void test_refuses_malformed_key_files(void **state)
{
    s_env_t *e = *state;
    static const char *const bad[] = {
        "",
        "ed25519-seed:\n",
        "ed25519-seed:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\n",     /* 43 characters */
        "ed25519-seed:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A==\n",   /* 45 */
        "ed25519-seed:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2B=\n",    /* non-zero pad bits */
        "ed25519-seed:nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n",    /* URL-safe alphabet */
        "ed25519:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n",         /* the pub prefix */
        "ed25519-seed:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n\n",  /* two newlines */
        " ed25519-seed:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n",
        "ed25519-seed:nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_install_rfc(e);
        s_write(e->key, bad[i], 0600);
        router_identity_t id;
        char err[ROUTER_IDENTITY_ERR_MAX];
        if (router_identity_load(e->home, &id, err, sizeof err) == 0)
            fail_msg("accepted key file %zu", i);
        assert_non_null(strstr(err, "is not a kith key file"));
        /* The message never echoes the file's content. */
        assert_null(strstr(err, "nWGx"));
        assert_true(s_all_zero(&id, sizeof id));
    }
}

static void test_refuses_a_directory_or_missing_key(void **state)
{
    s_env_t *e = *state;
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "kith keygen"));
    mkdir(e->dir, 0700);
    assert_int_equal(mkdir(e->key, 0700), 0);
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file"));
    rmdir(e->key);
}

/* identity.key as a FIFO (a bad restore, a mistaken mkfifo): opening it
 * to read used to block until some writer came, so the daemon hung at
 * start with nothing said. It is refused at once as not a regular file.
 * The load runs in a child, so a hang fails this test instead of hanging
 * it. */
static void test_refuses_a_fifo_key_without_hanging(void **state)
{
    s_env_t *e = *state;
    mkdir(e->dir, 0700);
    assert_int_equal(mkfifo(e->key, 0600), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        router_identity_t id;
        char err[ROUTER_IDENTITY_ERR_MAX] = "";
        int rc = router_identity_load(e->home, &id, err, sizeof err);
        _exit(rc == -1 && strstr(err, "not a regular file") ? 0 : 1);
    }
    int status = 0;
    pid_t got = 0;
    for (int i = 0; i < 3000 && (got = waitpid(pid, &status, WNOHANG)) == 0; i++)
        usleep(10 * 1000);
    if (got == 0) {
        kill(pid, SIGKILL);
        (void) waitpid(pid, &status, 0);
        fail_msg("router_identity_load still blocked on a FIFO after 30 s");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    unlink(e->key);
}

/* identity.key as a symbolic link to a key that is not there (its volume
 * not mounted): not a first start. The load said "no identity; run kith
 * keygen", and keygen "already exists", so the way out offered was to
 * move the link away and mint a stranger's identity. It now names the
 * link and its target; nothing is created; once the target is there the
 * linked key loads. */
static void test_dangling_symlink_key_says_so(void **state)
{
    s_env_t *e = *state;
    char vol[128], target[160];
    snprintf(vol, sizeof vol, "%s/vol", e->home);
    snprintf(target, sizeof target, "%s/identity.key", vol);
    mkdir(e->dir, 0700);
    assert_int_equal(symlink(target, e->key), 0);
    router_identity_t id;
    bool created = true;
    char err[ROUTER_IDENTITY_ERR_MAX] = "";
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "symbolic link"));
    assert_non_null(strstr(err, target));
    assert_null(strstr(err, "keygen"));
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), -1);
    assert_false(created);
    assert_non_null(strstr(err, "symbolic link"));
    struct stat st;
    assert_int_equal(lstat(e->key, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(access(target, F_OK), -1);
    assert_int_equal(access(e->pub, F_OK), -1);

    assert_int_equal(mkdir(vol, 0700), 0);
    s_write(target, S_RFC_KEY_LINE, 0600);
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), 0);
    assert_memory_equal(id.pk, s_rfc_pk, 32);
    router_identity_wipe(&id);
}

/* A key file owned by another user (a restore by root, a home shared by
 * mistake) is refused with the chown that fixes it, and never replaced:
 * load_or_create does not take it for a first start. Needs root to give a
 * file away; skipped otherwise. */
static void test_key_of_another_user_refused(void **state)
{
    s_env_t *e = *state;
    if (geteuid() != 0) {
        print_message("not root: cannot give a file away; skipped\n");
        return;
    }
    s_install_rfc(e);
    assert_int_equal(chown(e->key, 4242, 4242), 0);
    router_identity_t id;
    bool created = true;
    char err[ROUTER_IDENTITY_ERR_MAX] = "";
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "owned by uid 4242"));
    assert_non_null(strstr(err, "chown 0"));
    assert_true(s_all_zero(&id, sizeof id));
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), -1);
    assert_false(created);
    char text[256];
    s_read(e->key, text, sizeof text);
    assert_string_equal(text, S_RFC_KEY_LINE); /* untouched */
}

static void test_pub_file_must_agree(void **state)
{
    s_env_t *e = *state;
    s_install_rfc(e);
    /* Another valid key: RFC 8032 TEST 2's public key. */
    s_write(e->pub, "ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=\n", 0644);
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "names another key"));
    assert_true(s_all_zero(&id, sizeof id));

    s_write(e->pub, "not a key\n", 0644);
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, e->pub));
}

static void test_missing_pub_is_rewritten(void **state)
{
    s_env_t *e = *state;
    s_install_rfc(e);
    unlink(e->pub);
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), 0);
    char text[256];
    s_read(e->pub, text, sizeof text);
    assert_string_equal(text, S_RFC_PUB_LINE);
}

static void test_load_or_create(void **state)
{
    s_env_t *e = *state;
    router_identity_t a, b;
    bool created = false;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load_or_create(e->home, &a, &created, err, sizeof err), 0);
    assert_true(created);
    assert_int_equal(router_identity_load_or_create(e->home, &b, &created, err, sizeof err), 0);
    assert_false(created);
    assert_memory_equal(a.pk, b.pk, 32);
    /* An unsafe key is an error, never a reason to make a new one. */
    assert_int_equal(chmod(e->key, 0644), 0);
    assert_int_equal(router_identity_load_or_create(e->home, &b, &created, err, sizeof err), -1);
    assert_false(created);
    assert_non_null(strstr(err, "chmod 600"));
}

/* A deleted key beside a kept identity.pub is a lost identity: neither the
 * daemon's start nor keygen mints a new key there, and both say how to
 * recover; deleting identity.pub on purpose makes a new identity. */
static void test_lost_key_is_not_replaced(void **state)
{
    s_env_t *e = *state;
    s_install_rfc(e);
    unlink(e->key);
    router_identity_t id;
    bool created = true;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), -1);
    assert_false(created);
    assert_true(s_all_zero(&id, sizeof id));
    assert_non_null(strstr(err, "identity.key is missing"));
    assert_non_null(strstr(err, "restore identity.key from a backup"));
    assert_non_null(strstr(err, "delete identity.pub"));
    assert_non_null(strstr(err, "ed25519:11qYAYKx")); /* which identity was lost */
    assert_int_equal(access(e->key, F_OK), -1);     /* nothing was made */
    char text[256];
    s_read(e->pub, text, sizeof text);
    assert_string_equal(text, S_RFC_PUB_LINE);

    assert_int_equal(router_identity_create(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "identity.key is missing"));
    assert_int_equal(access(e->key, F_OK), -1);

    /* a pub file that is not even a key line still means a lost identity */
    s_write(e->pub, "garbage\n", 0644);
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), -1);
    assert_non_null(strstr(err, "identity.key is missing"));

    /* restoring the key brings the identity back */
    s_write(e->key, S_RFC_KEY_LINE, 0600);
    s_write(e->pub, S_RFC_PUB_LINE, 0644);
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), 0);
    assert_false(created);
    assert_memory_equal(id.pk, s_rfc_pk, 32);

    /* deleting identity.pub on purpose starts over */
    unlink(e->key);
    unlink(e->pub);
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), 0);
    assert_true(created);
    assert_memory_not_equal(id.pk, s_rfc_pk, 32);
    router_identity_wipe(&id);
}

/* A key that does not match identity.pub is refused on start too, never
 * replaced and never used. */
static void test_load_or_create_refuses_mismatch(void **state)
{
    s_env_t *e = *state;
    s_install_rfc(e);
    s_write(e->pub, "ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=\n", 0644);
    router_identity_t id;
    bool created = true;
    char err[ROUTER_IDENTITY_ERR_MAX];
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), -1);
    assert_false(created);
    assert_non_null(strstr(err, "names another key"));
    assert_true(s_all_zero(&id, sizeof id));
    char text[256];
    s_read(e->key, text, sizeof text);
    assert_string_equal(text, S_RFC_KEY_LINE);
}

/* ------------------------------------------------------------ failing disk */

/* The names in dir other than "." and "..". */
static unsigned s_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    unsigned n = 0;
    for (struct dirent *ent; (ent = readdir(d));)
        n += strcmp(ent->d_name, ".") != 0 && strcmp(ent->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* The key cannot be made durable (the fsync of its temp file fails) on a
 * first start: the start fails naming the file and why, and leaves no key,
 * whole or half, and no temp file, so the next start trusts nothing of it
 * and makes a new identity. */
static void test_key_fsync_failure_leaves_no_key(void **state)
{
    s_env_t *e = *state;
    router_identity_t id;
    bool created = true;
    char err[ROUTER_IDENTITY_ERR_MAX];
    io_fail_arm(IO_FAIL_FSYNC, 0, EIO);
    int rc = router_identity_load_or_create(e->home, &id, &created, err, sizeof err);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_false(created);
    assert_true(s_all_zero(&id, sizeof id));
    assert_non_null(strstr(err, "cannot write"));
    assert_non_null(strstr(err, "identity.key.tmp-"));
    assert_non_null(strstr(err, strerror(EIO)));
    assert_int_equal(s_entries(e->dir), 0);

    assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "no identity at"));
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), 0);
    assert_true(created);
    router_identity_wipe(&id);
}

/* The key is linked in but its directory cannot be synced (the second
 * fsync): creating fails, saying the key was created; it is whole, and
 * the next start loads it (and writes the missing identity.pub). */
static void test_key_dir_sync_failure_keeps_whole_key(void **state)
{
    s_env_t *e = *state;
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX];
    io_fail_arm(IO_FAIL_FSYNC, 1, EIO);
    int rc = router_identity_create_from_seed(e->home, s_rfc_seed, &id, err, sizeof err);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_true(s_all_zero(&id, sizeof id));
    assert_int_equal(strncmp(err, e->key, strlen(e->key)), 0);
    assert_non_null(strstr(err, "created, but syncing"));
    char text[256];
    s_read(e->key, text, sizeof text);
    assert_string_equal(text, S_RFC_KEY_LINE);
    assert_int_equal(s_entries(e->dir), 1); /* the key alone: no temp file */

    bool created = true;
    assert_int_equal(router_identity_load_or_create(e->home, &id, &created, err, sizeof err), 0);
    assert_false(created);
    assert_memory_equal(id.pk, s_rfc_pk, 32);
    s_read(e->pub, text, sizeof text);
    assert_string_equal(text, S_RFC_PUB_LINE);
    router_identity_wipe(&id);
}

/* identity.pub cannot be written (its fsync, after the key's two, or its
 * rename fails): creating fails naming identity.pub; the key stands whole,
 * no temp file is left, and the next start rewrites identity.pub. */
static void test_pub_failure_keeps_key(void **state)
{
    s_env_t *e = *state;
    static const struct {
        io_fail_call_t call;
        long skip;
        int err;
    } fail[] = {{IO_FAIL_FSYNC, 2, EIO}, {IO_FAIL_RENAME, 0, ENOSPC}};
    for (size_t i = 0; i < sizeof fail / sizeof fail[0]; i++) {
        unlink(e->key);
        unlink(e->pub);
        router_identity_t id;
        char err[ROUTER_IDENTITY_ERR_MAX];
        io_fail_arm(fail[i].call, fail[i].skip, fail[i].err);
        int rc = router_identity_create_from_seed(e->home, s_rfc_seed, &id, err, sizeof err);
        assert_int_equal(io_fail_disarm(), 1);
        assert_int_equal(rc, -1);
        assert_true(s_all_zero(&id, sizeof id));
        assert_int_equal(strncmp(err, e->pub, strlen(e->pub)), 0);
        assert_non_null(strstr(err, strerror(fail[i].err)));
        assert_int_equal(access(e->pub, F_OK), -1);
        char text[256];
        s_read(e->key, text, sizeof text);
        assert_string_equal(text, S_RFC_KEY_LINE);
        assert_int_equal(s_entries(e->dir), 1);

        assert_int_equal(router_identity_load(e->home, &id, err, sizeof err), 0);
        assert_memory_equal(id.pk, s_rfc_pk, 32);
        s_read(e->pub, text, sizeof text);
        assert_string_equal(text, S_RFC_PUB_LINE);
        router_identity_wipe(&id);
    }
}

/* Exporting for Meerkat (`kith id --export-meerkat`) when a file cannot be
 * made durable: the export fails naming it and leaves nothing behind — no
 * identity.key without its identity.pub, which would refuse the retry
 * ("never replaces") — and the retry then writes both. */
static void test_meerkat_export_failure_leaves_nothing(void **state)
{
    s_env_t *e = *state;
    router_identity_t id;
    char err[ROUTER_IDENTITY_ERR_MAX], mk[160], path[200];
    assert_int_equal(router_identity_create_from_seed(e->home, s_rfc_seed, &id, err, sizeof err),
                     0);
    snprintf(mk, sizeof mk, "%s/meerkat", e->home);
    static const struct {
        long skip;         /* fsyncs let through first */
        const char *named; /* the file the error names */
    } fail[] = {{0, "identity.key"}, {1, "identity.pub"}};
    for (size_t i = 0; i < sizeof fail / sizeof fail[0]; i++) {
        io_fail_arm(IO_FAIL_FSYNC, fail[i].skip, EIO);
        int rc = router_identity_export_meerkat(&id, mk, err, sizeof err);
        assert_int_equal(io_fail_disarm(), 1);
        assert_int_equal(rc, -1);
        assert_non_null(strstr(err, fail[i].named));
        assert_non_null(strstr(err, strerror(EIO)));
        assert_int_equal(s_entries(mk), 0);
    }
    /* Both written, then the directory's sync fails: said, files whole. */
    io_fail_arm(IO_FAIL_FSYNC, 2, EIO);
    assert_int_equal(router_identity_export_meerkat(&id, mk, err, sizeof err), -1);
    assert_int_equal(io_fail_disarm(), 1);
    assert_non_null(strstr(err, "syncing the directory failed"));
    assert_int_equal(s_entries(mk), 2);
    snprintf(path, sizeof path, "%s/identity.key", mk);
    unlink(path);
    snprintf(path, sizeof path, "%s/identity.pub", mk);
    unlink(path);
    /* The retry: the seed and the public key, 32 raw octets each. */
    assert_int_equal(router_identity_export_meerkat(&id, mk, err, sizeof err), 0);
    uint8_t raw[64];
    snprintf(path, sizeof path, "%s/identity.key", mk);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(raw, 1, sizeof raw, f), 32);
    fclose(f);
    assert_memory_equal(raw, s_rfc_seed, 32);
    snprintf(path, sizeof path, "%s/identity.pub", mk);
    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(raw, 1, sizeof raw, f), 32);
    fclose(f);
    assert_memory_equal(raw, s_rfc_pk, 32);

    /* An export stopped after its key (a kill): the retry keeps the key it
     * finds, since it holds these very bytes, and writes the public half. */
    snprintf(path, sizeof path, "%s/identity.pub", mk);
    unlink(path);
    assert_int_equal(router_identity_export_meerkat(&id, mk, err, sizeof err), 0);
    assert_int_equal(s_entries(mk), 2);
    /* Another key there is never replaced, and nothing is taken away. */
    unlink(path);
    snprintf(path, sizeof path, "%s/identity.key", mk);
    f = fopen(path, "wb");
    assert_non_null(f);
    fputs("not this key", f);
    fclose(f);
    assert_int_equal(router_identity_export_meerkat(&id, mk, err, sizeof err), -1);
    assert_non_null(strstr(err, "never replaces"));
    assert_int_equal(s_entries(mk), 1);
    router_identity_wipe(&id);
}

static void test_wipe(void **state)
{
    (void) state;
    router_identity_t id;
    memset(&id, 0xa5, sizeof id);
    router_identity_wipe(&id);
    assert_true(s_all_zero(&id, sizeof id));
    router_identity_wipe(NULL);
}

/* A home or a Meerkat folder whose path is too long: the error says so
 * (showing the path's start), rather than a path of kilobytes that cuts
 * the reason out of err. */
static void test_too_long_paths_say_so(void **state)
{
    (void) state;
    static char lng[4090];
    memset(lng, 'h', sizeof lng - 1);
    lng[0] = '/';
    lng[sizeof lng - 1] = '\0';
    router_identity_t id;
    bool created = true;
    char err[ROUTER_IDENTITY_ERR_MAX] = "";
    assert_int_equal(router_identity_load_or_create(lng, &id, &created, err, sizeof err), -1);
    assert_false(created);
    assert_non_null(strstr(err, "path too long for a home directory"));
    assert_int_equal(strncmp(err, lng, 64), 0);
    err[0] = '\0';
    assert_int_equal(router_identity_import_meerkat("/tmp", lng, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "path too long"));
    assert_true(s_all_zero(&id, sizeof id));
}

#define T(f) cmocka_unit_test_setup_teardown(f, s_setup, s_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_create_writes_0600_key_and_pub),
        T(test_create_never_overwrites),
        T(test_create_leaves_no_temp_files),
        T(test_round_trip),
        T(test_rfc8032_key_and_peer_id),
        T(test_key_without_newline_loads),
        T(test_refuses_modes_open_to_others),
        T(test_refuses_malformed_key_files),
        T(test_refuses_a_directory_or_missing_key),
        T(test_refuses_a_fifo_key_without_hanging),
        T(test_dangling_symlink_key_says_so),
        T(test_key_of_another_user_refused),
        T(test_pub_file_must_agree),
        T(test_missing_pub_is_rewritten),
        T(test_load_or_create),
        T(test_lost_key_is_not_replaced),
        T(test_load_or_create_refuses_mismatch),
        T(test_key_fsync_failure_leaves_no_key),
        T(test_meerkat_export_failure_leaves_nothing),
        T(test_key_dir_sync_failure_keeps_whole_key),
        T(test_pub_failure_keeps_key),
        T(test_wipe),
        T(test_too_long_paths_say_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
