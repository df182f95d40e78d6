/* tests/comms_meerkat_identity_test.c — importing a Meerkat identity
 * (router/state/identity_meerkat.c, WIRE §23.5) from files that must not be
 * taken: a secret key truncated or too long, readable by group or others,
 * not a regular file or a symlink, a public key that is truncated or names
 * another key. Each is refused with a reason naming the file and what to
 * do, the caller's identity is left wiped, and nothing is written to the
 * home: the good files imported afterwards make the identity (an import
 * never replaces one, so a half-made one would refuse it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "router/state/identity.h"
#include "router/state/identity_meerkat.h"

typedef struct {
    char root[64];   /* the test's folder */
    char home[96];   /* kith's home, empty */
    char mk[96];     /* Meerkat's identity folder */
    uint8_t seed[32], pk[32];
} s_fix_t;

static void s_put(const s_fix_t *f, const char *name, const uint8_t *data, size_t len, mode_t mode)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%s", f->mk, name);
    (void) unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t) len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static void s_drop(const s_fix_t *f, const char *name)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%s", f->mk, name);
    (void) unlink(path);
    (void) rmdir(path);
}

/* Refused with a reason holding each of want[] (NULL-ended); out wiped. */
static void s_refused(const s_fix_t *f, const char *const *want)
{
    router_identity_t id;
    memset(&id, 0xa5, sizeof id);
    char err[512] = "";
    assert_int_equal(router_identity_import_meerkat(f->home, f->mk, &id, err, sizeof err), -1);
    for (; *want; want++)
        if (!strstr(err, *want))
            fail_msg("reason \"%s\" lacks \"%s\"", err, *want);
    assert_true(sodium_is_zero((const unsigned char *) &id, sizeof id));
}

static void test_bad_files_refused(void **state)
{
    (void) state;
    s_fix_t f;
    snprintf(f.root, sizeof f.root, "/tmp/kith-mk-ident-XXXXXX");
    assert_non_null(mkdtemp(f.root));
    snprintf(f.home, sizeof f.home, "%s/home", f.root);
    snprintf(f.mk, sizeof f.mk, "%s/mk", f.root);
    assert_int_equal(mkdir(f.home, 0700), 0);
    assert_int_equal(mkdir(f.mk, 0700), 0);
    randombytes_buf(f.seed, sizeof f.seed);
    uint8_t sk[64], other_pk[32], other_sk[64], long_key[33];
    crypto_sign_seed_keypair(f.pk, sk, f.seed);
    crypto_sign_keypair(other_pk, other_sk);
    memcpy(long_key, f.seed, 32);
    long_key[32] = 0;

    s_refused(&f, (const char *const[]){"identity.key", "No such file", NULL});
    s_put(&f, "identity.key", f.seed, 31, 0600);
    s_refused(&f, (const char *const[]){"identity.key", "exactly 32 raw bytes", "secret key", "fewer", NULL});
    s_put(&f, "identity.key", long_key, sizeof long_key, 0600);
    s_refused(&f, (const char *const[]){"identity.key", "more", NULL});
    s_put(&f, "identity.key", f.seed, 32, 0640);
    s_refused(&f, (const char *const[]){"identity.key", "group or others may read it", "mode 0640", "chmod 600",
                                        NULL});
    s_put(&f, "identity.key", f.seed, 32, 0604);
    s_refused(&f, (const char *const[]){"mode 0604", NULL});
    s_drop(&f, "identity.key");
    char path[160], target[160];
    snprintf(path, sizeof path, "%s/identity.key", f.mk);
    assert_int_equal(mkdir(path, 0700), 0);
    s_refused(&f, (const char *const[]){"identity.key", "not a regular file", NULL});
    s_drop(&f, "identity.key");
    /* A symlink, even to a good file, is not followed. */
    snprintf(target, sizeof target, "%s/real.key", f.root);
    int fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, f.seed, 32), 32);
    close(fd);
    assert_int_equal(symlink(target, path), 0);
    s_refused(&f, (const char *const[]){"identity.key", NULL});
    s_drop(&f, "identity.key");

    /* The secret key is right from here on; the public one is not. */
    s_put(&f, "identity.key", f.seed, 32, 0600);
    s_put(&f, "identity.pub", f.pk, 20, 0644);
    s_refused(&f, (const char *const[]){"identity.pub", "public key", "fewer", NULL});
    s_put(&f, "identity.pub", other_pk, 32, 0644);
    s_refused(&f, (const char *const[]){"names another key", "nothing was imported", NULL});

    /* Nothing was written to the home: the right files import now. */
    s_put(&f, "identity.pub", f.pk, 32, 0644);
    router_identity_t id;
    char err[512] = "";
    if (router_identity_import_meerkat(f.home, f.mk, &id, err, sizeof err) != 0)
        fail_msg("the right files refused after the wrong ones: %s", err);
    assert_memory_equal(id.pk, f.pk, 32);
    assert_memory_equal(id.sk, sk, 64);
    /* ...once: an identity is never replaced. */
    router_identity_t again;
    assert_int_equal(router_identity_import_meerkat(f.home, f.mk, &again, err, sizeof err), -1);
    sodium_memzero(&id, sizeof id);
    sodium_memzero(sk, sizeof sk);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f.root);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    umask(022);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_files_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
