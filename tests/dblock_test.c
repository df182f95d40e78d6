/* tests/dblock_test.c — state.db's writer queue: one lock per file (by
 * device and inode, whatever path names it), freed with its last user, and
 * writers of both classes that take turns: no two inside at once, none
 * starved (every thread finishes its turns). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "router/state/dblock.h"

static char s_dir[] = "/tmp/kith-dblock-XXXXXX";

static void s_touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static void test_same_file_same_lock(void **state)
{
    (void) state;
    assert_non_null(mkdtemp(s_dir));
    char a[256], a2[256], b[256];
    snprintf(a, sizeof a, "%s/state.db", s_dir);
    snprintf(a2, sizeof a2, "%s/./state.db", s_dir);
    snprintf(b, sizeof b, "%s/other.db", s_dir);
    s_touch(a);
    s_touch(b);
    router_dblock_t *l1 = router_dblock_get(a), *l2 = router_dblock_get(a2);
    router_dblock_t *l3 = router_dblock_get(b);
    assert_non_null(l1);
    assert_ptr_equal(l1, l2);
    assert_non_null(l3);
    assert_ptr_not_equal(l1, l3);
    /* A missing file has no lock; NULL locks do nothing. */
    char missing[256];
    snprintf(missing, sizeof missing, "%s/missing.db", s_dir);
    assert_null(router_dblock_get(missing));
    assert_null(router_dblock_get(NULL));
    router_dblock_enter(NULL, ROUTER_DBLOCK_URGENT);
    router_dblock_leave(NULL);
    router_dblock_put(&l1);
    assert_null(l1);
    router_dblock_put(&l1); /* idempotent */
    /* l2 still holds it: the lock still works and is the same one. */
    router_dblock_enter(l2, ROUTER_DBLOCK_BULK);
    router_dblock_leave(l2);
    router_dblock_t *l4 = router_dblock_get(a);
    assert_ptr_equal(l4, l2);
    router_dblock_put(&l4);
    router_dblock_put(&l2);
    router_dblock_put(&l3);
    unlink(a);
    unlink(b);
    rmdir(s_dir);
}

typedef struct {
    router_dblock_t *lock;
    router_dblock_class_t cls;
    int *inside;     /* writers inside now (must never exceed 1) */
    int *max_inside;
    long *total;
} s_writer_t;

static void *s_writer(void *arg)
{
    s_writer_t *w = arg;
    for (int i = 0; i < 2000; i++) {
        router_dblock_enter(w->lock, w->cls);
        int now = __atomic_add_fetch(w->inside, 1, __ATOMIC_SEQ_CST);
        if (now > *w->max_inside)
            *w->max_inside = now;
        (*w->total)++; /* unsynchronised on purpose: the lock must guard it */
        __atomic_sub_fetch(w->inside, 1, __ATOMIC_SEQ_CST);
        router_dblock_leave(w->lock);
    }
    return NULL;
}

/* Four threads, two urgent and two bulk, 2000 turns each: every increment
 * survives, nobody was ever inside with another, and the bulk threads
 * finish too. */
static void test_mutual_exclusion(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-dblock-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/state.db", dir);
    s_touch(path);
    int inside = 0, max_inside = 0;
    long total = 0;
    pthread_t t[4];
    s_writer_t w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (s_writer_t){router_dblock_get(path), i < 2 ? ROUTER_DBLOCK_URGENT : ROUTER_DBLOCK_BULK,
                            &inside, &max_inside, &total};
        assert_non_null(w[i].lock);
        assert_int_equal(pthread_create(&t[i], NULL, s_writer, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        router_dblock_put(&w[i].lock);
    }
    assert_int_equal(total, 4 * 2000);
    assert_int_equal(max_inside, 1);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_file_same_lock),
        cmocka_unit_test(test_mutual_exclusion),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
