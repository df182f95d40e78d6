/* router/workers/session_ids.c — a set of keyed 64-bit hashes of session
 * ids: open addressing with linear probing, deletion by shifting the run
 * back (no tombstones), doubled when half full. */
#include "router/workers/session_ids.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

/* Slots of a new table (a power of two). */
#define S_SLOTS_MIN 1024u

struct router_session_ids {
    pthread_mutex_t mu;
    uint64_t *slot;       /* 0: empty; a hash of 0 is stored as 1 */
    size_t cap;           /* a power of two */
    size_t n;
    unsigned char key[crypto_shorthash_KEYBYTES];
};

static uint64_t s_hash(const router_session_ids_t *self, const char *id)
{
    unsigned char out[crypto_shorthash_BYTES];
    (void) crypto_shorthash(out, (const unsigned char *) id, strlen(id), self->key);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return h ? h : 1;
}

/* The slot holding h, or the empty one where it would go. Under mu. */
static size_t s_find(const router_session_ids_t *self, uint64_t h)
{
    size_t i = (size_t) h & (self->cap - 1);
    while (self->slot[i] && self->slot[i] != h)
        i = (i + 1) & (self->cap - 1);
    return i;
}

/* Doubles the table. 0, or -1 (no memory: the old one stays). Under mu. */
static int s_grow(router_session_ids_t *self)
{
    size_t cap = self->cap * 2;
    uint64_t *slot = calloc(cap, sizeof *slot);
    if (!slot)
        return -1;
    uint64_t *old = self->slot;
    size_t oldcap = self->cap;
    self->slot = slot;
    self->cap = cap;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i])
            self->slot[s_find(self, old[i])] = old[i];
    free(old);
    return 0;
}

router_session_ids_t *router_session_ids_new(void)
{
    if (sodium_init() < 0)
        return NULL;
    router_session_ids_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cap = S_SLOTS_MIN;
    if (!(self->slot = calloc(self->cap, sizeof *self->slot))) {
        free(self);
        return NULL;
    }
    crypto_shorthash_keygen(self->key);
    pthread_mutex_init(&self->mu, NULL);
    return self;
}

void router_session_ids_destroy(router_session_ids_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_session_ids_t *self = *self_p;
    pthread_mutex_destroy(&self->mu);
    free(self->slot);
    sodium_memzero(self->key, sizeof self->key);
    free(self);
    *self_p = NULL;
}

int router_session_ids_add(router_session_ids_t *self, const char *id)
{
    uint64_t h = s_hash(self, id);
    int rc = 0;
    pthread_mutex_lock(&self->mu);
    size_t i = s_find(self, h);
    if (!self->slot[i]) {
        if ((self->n + 1) * 2 > self->cap) {
            if (s_grow(self) != 0) {
                rc = -1;
                goto out;
            }
            i = s_find(self, h);
        }
        self->slot[i] = h;
        self->n++;
    }
out:
    pthread_mutex_unlock(&self->mu);
    return rc;
}

void router_session_ids_remove(router_session_ids_t *self, const char *id)
{
    uint64_t h = s_hash(self, id);
    pthread_mutex_lock(&self->mu);
    size_t mask = self->cap - 1, i = s_find(self, h);
    if (self->slot[i]) {
        /* Shift back every later member of the run that may sit in the
         * hole (its home is not cyclically in (i, j]). */
        size_t j = i;
        for (;;) {
            self->slot[i] = 0;
            for (;;) {
                j = (j + 1) & mask;
                if (!self->slot[j])
                    goto done;
                size_t home = (size_t) self->slot[j] & mask;
                bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
                if (!stays)
                    break;
            }
            self->slot[i] = self->slot[j];
            i = j;
        }
    done:
        self->n--;
    }
    pthread_mutex_unlock(&self->mu);
}

bool router_session_ids_has(router_session_ids_t *self, const char *id)
{
    uint64_t h = s_hash(self, id);
    pthread_mutex_lock(&self->mu);
    bool has = self->slot[s_find(self, h)] != 0;
    pthread_mutex_unlock(&self->mu);
    return has;
}

void router_session_ids_clear(router_session_ids_t *self)
{
    pthread_mutex_lock(&self->mu);
    memset(self->slot, 0, self->cap * sizeof *self->slot);
    self->n = 0;
    pthread_mutex_unlock(&self->mu);
}

size_t router_session_ids_count(router_session_ids_t *self)
{
    pthread_mutex_lock(&self->mu);
    size_t n = self->n;
    pthread_mutex_unlock(&self->mu);
    return n;
}
