/* router/state/dblock.c — writer locks shared by path (see dblock.h): a
 * process-wide list of {device, inode} → lock, reference counted. */
#include "router/state/dblock.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>

struct router_dblock_t {
    dev_t dev;                /* the file's device */
    ino_t ino;                /* and inode: the key */
    unsigned refs;            /* callers holding it (under s_registry_mu) */
    pthread_mutex_t mu;       /* guards the fields below */
    pthread_cond_t turn;      /* the lock came free */
    bool held;                /* a writer is inside */
    unsigned urgent_waiting;  /* urgent writers waiting */
    unsigned bulk_waiting;    /* bulk writers waiting */
    unsigned passed;          /* urgent writers let in while a bulk one waited */
    router_dblock_t *link;    /* next in the registry */
};

static pthread_mutex_t s_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static router_dblock_t *s_registry;

router_dblock_t *router_dblock_get(const char *path)
{
    struct stat st;
    if (!path || stat(path, &st) != 0)
        return NULL;
    pthread_mutex_lock(&s_registry_mu);
    router_dblock_t *l = s_registry;
    while (l && (l->dev != st.st_dev || l->ino != st.st_ino))
        l = l->link;
    if (!l && (l = calloc(1, sizeof *l)) != NULL) {
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        pthread_mutex_init(&l->mu, NULL);
        pthread_cond_init(&l->turn, NULL);
        l->link = s_registry;
        s_registry = l;
    }
    if (l)
        l->refs++;
    pthread_mutex_unlock(&s_registry_mu);
    return l;
}

void router_dblock_put(router_dblock_t **lock_p)
{
    if (!lock_p || !*lock_p)
        return;
    router_dblock_t *l = *lock_p;
    *lock_p = NULL;
    pthread_mutex_lock(&s_registry_mu);
    if (--l->refs == 0) {
        router_dblock_t **p = &s_registry;
        while (*p != l)
            p = &(*p)->link;
        *p = l->link;
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->turn);
        free(l);
    }
    pthread_mutex_unlock(&s_registry_mu);
}

void router_dblock_enter(router_dblock_t *l, router_dblock_class_t cls)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    if (cls == ROUTER_DBLOCK_URGENT) {
        l->urgent_waiting++;
        while (l->held || (l->bulk_waiting && l->passed >= ROUTER_DBLOCK_URGENT_RUN))
            pthread_cond_wait(&l->turn, &l->mu);
        l->urgent_waiting--;
        if (l->bulk_waiting)
            l->passed++;
    } else {
        l->bulk_waiting++;
        while (l->held || (l->urgent_waiting && l->passed < ROUTER_DBLOCK_URGENT_RUN))
            pthread_cond_wait(&l->turn, &l->mu);
        l->bulk_waiting--;
        l->passed = 0;
    }
    l->held = true;
    pthread_mutex_unlock(&l->mu);
}

void router_dblock_leave(router_dblock_t *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->held = false;
    pthread_cond_broadcast(&l->turn);
    pthread_mutex_unlock(&l->mu);
}
