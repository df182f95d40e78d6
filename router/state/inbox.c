/* router/state/inbox.c — bounded inbox with durable admission: a ring of entries
 * under one mutex, and a store thread that group-commits new entries (and
 * deletes popped ones) in SQLite transactions. */
#include "router/state/inbox.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "router/clock.h"

typedef struct {
    router_inbox_entry_t e; /* the entry; e.frame owned here until popped */
    bool durable;           /* written and committed (or memory-only) */
} s_node_t;

struct router_inbox_t {
    pthread_mutex_t mu;         /* guards everything below but durable_seq */
    pthread_cond_t changed;     /* entries became durable, or work arrived */
    s_node_t **ring;            /* held entries in admission order */
    size_t ring_cap;            /* slots in ring (≥ capacity) */
    size_t head;                /* oldest held entry */
    size_t count;               /* held entries */
    size_t capacity;            /* admission bound on count */
    size_t bytes;               /* frame bytes held */
    size_t max_bytes;           /* admission bound on bytes */
    uint64_t next_seq;          /* sequence for the next admission */
    size_t unwritten;           /* held entries not yet durable */
    uint64_t *deletes;          /* popped seqs to delete from disk */
    size_t ndeletes, deletes_cap;
    _Atomic uint64_t durable_seq; /* all seq ≤ this are durable */

    char *session;              /* owner session name */
    sqlite3 *db;                /* NULL: memory only */
    sqlite3_stmt *insert;       /* INSERT one row */
    sqlite3_stmt *delete;       /* DELETE one row by seq */
    pthread_t thread;           /* the store thread, when db */
    bool thread_started;
    bool stopping;              /* store thread: finish and exit */
    router_inbox_durable_fn *on_durable;
    void *ud;
};

static const char *const s_schema =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS inbox ("
    " seq INTEGER PRIMARY KEY,"
    " session TEXT NOT NULL,"
    " envelope_id BLOB NOT NULL,"
    " sender BLOB NOT NULL,"
    " kind TEXT NOT NULL,"
    " received_ms INTEGER NOT NULL,"
    " frame BLOB NOT NULL);";

/* ---------------------------------------------------------------- the ring */

static s_node_t *s_at(const router_inbox_t *self, size_t i)
{
    return self->ring[(self->head + i) % self->ring_cap];
}

static void s_node_free(s_node_t *n)
{
    if (!n)
        return;
    free(n->e.frame);
    free(n);
}

/* ---------------------------------------------------------------- the store */

static int s_db_open(router_inbox_t *self, const char *path, char *err, size_t errcap)
{
    if (sqlite3_open_v2(path, &self->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                             SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(self->db, 5000);
    if (sqlite3_exec(self->db, s_schema, NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(self->db,
                           "INSERT INTO inbox(seq,session,envelope_id,sender,kind,received_ms,frame)"
                           " VALUES(?,?,?,?,?,?,?)", -1, &self->insert, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(self->db, "DELETE FROM inbox WHERE seq=?", -1, &self->delete, NULL) !=
        SQLITE_OK)
        goto fail;
    return 0;
fail:
    snprintf(err, errcap, "inbox database %s: %s", path,
             self->db ? sqlite3_errmsg(self->db) : "cannot open");
    return -1;
}

/* Reloads what a previous run admitted and nobody consumed. */
static int s_db_reload(router_inbox_t *self, char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(self->db, "SELECT COALESCE(MAX(seq),0) FROM inbox", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto done;
    self->next_seq = (uint64_t) sqlite3_column_int64(st, 0) + 1;
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT seq,envelope_id,sender,kind,received_ms,frame FROM inbox"
                           " WHERE session=? ORDER BY seq", -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_text(st, 1, self->session, -1, SQLITE_STATIC);
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 1) != 16 || sqlite3_column_bytes(st, 2) != 32)
            continue; /* not a row this code wrote: leave it alone */
        if (self->count == self->ring_cap) {
            size_t ncap = self->ring_cap * 2;
            s_node_t **ring = calloc(ncap, sizeof *ring);
            if (!ring)
                goto done;
            for (size_t i = 0; i < self->count; i++)
                ring[i] = s_at(self, i);
            free(self->ring);
            self->ring = ring;
            self->ring_cap = ncap;
            self->head = 0;
        }
        s_node_t *n = calloc(1, sizeof *n);
        size_t len = (size_t) sqlite3_column_bytes(st, 5);
        if (!n || !(n->e.frame = malloc(len ? len : 1))) {
            free(n);
            goto done;
        }
        n->e.seq = (uint64_t) sqlite3_column_int64(st, 0);
        memcpy(n->e.id, sqlite3_column_blob(st, 1), 16);
        memcpy(n->e.from, sqlite3_column_blob(st, 2), 32);
        snprintf(n->e.kind, sizeof n->e.kind, "%s", (const char *) sqlite3_column_text(st, 3));
        n->e.received_ms = (uint64_t) sqlite3_column_int64(st, 4);
        if (len)
            memcpy(n->e.frame, sqlite3_column_blob(st, 5), len);
        n->e.frame_len = len;
        n->durable = true;
        self->ring[(self->head + self->count) % self->ring_cap] = n;
        self->count++;
        self->bytes += len;
    }
    rc = (step == SQLITE_DONE) ? 0 : -1;
done:
    if (rc != 0)
        snprintf(err, errcap, "inbox database: cannot reload: %s", sqlite3_errmsg(self->db));
    sqlite3_finalize(st);
    atomic_store(&self->durable_seq, self->next_seq - 1);
    return rc;
}

/* One transaction: insert the given nodes, delete the given seqs. */
static int s_db_batch(router_inbox_t *self, s_node_t **nodes, size_t n, const uint64_t *dels,
                      size_t nd)
{
    if (sqlite3_exec(self->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const router_inbox_entry_t *e = &nodes[i]->e;
        sqlite3_reset(self->insert);
        sqlite3_bind_int64(self->insert, 1, (sqlite3_int64) e->seq);
        sqlite3_bind_text(self->insert, 2, self->session, -1, SQLITE_STATIC);
        sqlite3_bind_blob(self->insert, 3, e->id, 16, SQLITE_STATIC);
        sqlite3_bind_blob(self->insert, 4, e->from, 32, SQLITE_STATIC);
        sqlite3_bind_text(self->insert, 5, e->kind, -1, SQLITE_STATIC);
        sqlite3_bind_int64(self->insert, 6, (sqlite3_int64) e->received_ms);
        sqlite3_bind_blob(self->insert, 7, e->frame, (int) e->frame_len, SQLITE_STATIC);
        if (sqlite3_step(self->insert) != SQLITE_DONE)
            goto fail;
    }
    for (size_t i = 0; i < nd; i++) {
        sqlite3_reset(self->delete);
        sqlite3_bind_int64(self->delete, 1, (sqlite3_int64) dels[i]);
        if (sqlite3_step(self->delete) != SQLITE_DONE)
            goto fail;
    }
    if (sqlite3_exec(self->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    return 0;
fail:
    sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* The store thread: each pass takes everything admitted or popped since the
 * last one and commits it in one transaction (group commit). A failed commit
 * is retried; entries stay un-acked until it succeeds, so a full or broken
 * disk shows up as senders timing out, never as acked-and-lost. */
static void *s_store_main(void *arg)
{
    router_inbox_t *self = arg;
    s_node_t **batch = NULL;
    uint64_t *dels = NULL;
    size_t batch_cap = 0, dels_cap = 0;

    pthread_mutex_lock(&self->mu);
    for (;;) {
        while (!self->stopping && self->unwritten == 0 && self->ndeletes == 0)
            pthread_cond_wait(&self->changed, &self->mu);
        if (self->unwritten == 0 && self->ndeletes == 0)
            break; /* stopping with nothing left */

        /* Collect under the lock; nodes not yet durable cannot be popped, so
         * they stay valid while the lock is released. */
        size_t n = 0;
        if (batch_cap < self->unwritten) {
            s_node_t **nb = realloc(batch, self->unwritten * sizeof *nb);
            if (!nb)
                goto retry;
            batch = nb;
            batch_cap = self->unwritten;
        }
        for (size_t i = 0; i < self->count && n < self->unwritten; i++) {
            s_node_t *node = s_at(self, i);
            if (!node->durable)
                batch[n++] = node;
        }
        size_t nd = self->ndeletes;
        if (dels_cap < nd) {
            uint64_t *ndl = realloc(dels, nd * sizeof *ndl);
            if (!ndl)
                goto retry;
            dels = ndl;
            dels_cap = nd;
        }
        if (nd)
            memcpy(dels, self->deletes, nd * sizeof *dels);
        self->ndeletes = 0;
        pthread_mutex_unlock(&self->mu);

        int rc = s_db_batch(self, batch, n, dels, nd);

        pthread_mutex_lock(&self->mu);
        if (rc != 0) {
            /* Put the deletes back (ahead of newer ones) and try again. */
            uint64_t *grown = nd ? realloc(self->deletes, (self->ndeletes + nd) * sizeof *grown)
                                 : NULL;
            if (grown) {
                memmove(grown + nd, grown, self->ndeletes * sizeof *grown);
                memcpy(grown, dels, nd * sizeof *dels);
                self->deletes = grown;
                self->ndeletes += nd;
                if (self->deletes_cap < self->ndeletes)
                    self->deletes_cap = self->ndeletes;
            }
            goto retry;
        }
        uint64_t top = atomic_load(&self->durable_seq);
        for (size_t i = 0; i < n; i++) {
            batch[i]->durable = true;
            if (batch[i]->e.seq > top)
                top = batch[i]->e.seq;
        }
        self->unwritten -= n;
        atomic_store(&self->durable_seq, top);
        pthread_cond_broadcast(&self->changed);
        if (n && self->on_durable) {
            pthread_mutex_unlock(&self->mu);
            self->on_durable(self->ud);
            pthread_mutex_lock(&self->mu);
        }
        continue;
    retry:
        pthread_mutex_unlock(&self->mu);
        nanosleep(&(struct timespec){.tv_nsec = 50 * 1000 * 1000}, NULL);
        pthread_mutex_lock(&self->mu);
    }
    pthread_mutex_unlock(&self->mu);
    free(batch);
    free(dels);
    return NULL;
}

/* ---------------------------------------------------------------- API */

router_inbox_t *router_inbox_new(const router_inbox_opts_t *opts, char *err, size_t errcap)
{
    router_inbox_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errcap, "inbox: out of memory");
        return NULL;
    }
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->changed, NULL);
    self->capacity = opts->capacity ? opts->capacity : ROUTER_INBOX_CAPACITY;
    self->max_bytes = opts->max_bytes ? opts->max_bytes : ROUTER_INBOX_MAX_BYTES;
    self->ring_cap = self->capacity;
    self->ring = calloc(self->ring_cap, sizeof *self->ring);
    self->session = strdup(opts->session ? opts->session : "comms");
    self->on_durable = opts->on_durable;
    self->ud = opts->ud;
    self->next_seq = 1;
    if (!self->ring || !self->session) {
        snprintf(err, errcap, "inbox: out of memory");
        goto fail;
    }
    if (opts->db_path) {
        if (s_db_open(self, opts->db_path, err, errcap) != 0 || s_db_reload(self, err, errcap) != 0)
            goto fail;
        if (pthread_create(&self->thread, NULL, s_store_main, self) != 0) {
            snprintf(err, errcap, "inbox: cannot start the store thread");
            goto fail;
        }
        self->thread_started = true;
    }
    return self;
fail:
    router_inbox_destroy(&self);
    return NULL;
}

void router_inbox_destroy(router_inbox_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_inbox_t *self = *self_p;
    if (self->thread_started) {
        pthread_mutex_lock(&self->mu);
        self->stopping = true;
        pthread_cond_broadcast(&self->changed);
        pthread_mutex_unlock(&self->mu);
        pthread_join(self->thread, NULL);
    }
    sqlite3_finalize(self->insert);
    sqlite3_finalize(self->delete);
    if (self->db)
        sqlite3_close(self->db);
    for (size_t i = 0; self->ring && i < self->count; i++)
        s_node_free(s_at(self, i));
    free(self->ring);
    free(self->deletes);
    free(self->session);
    pthread_cond_destroy(&self->changed);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

router_inbox_outcome_t router_inbox_admit(router_inbox_t *self, const uint8_t id[16],
                                          const uint8_t from[32], const char *kind,
                                          const uint8_t *frame, size_t frame_len,
                                          uint64_t now_ms, uint64_t *seq)
{
    /* Allocate before taking the lock: the lock is shared with consumers. */
    s_node_t *n = calloc(1, sizeof *n);
    if (!n || !(n->e.frame = malloc(frame_len ? frame_len : 1))) {
        free(n);
        return ROUTER_INBOX_NOMEM;
    }
    memcpy(n->e.frame, frame, frame_len);
    n->e.frame_len = frame_len;
    memcpy(n->e.id, id, 16);
    memcpy(n->e.from, from, 32);
    snprintf(n->e.kind, sizeof n->e.kind, "%s", kind);
    n->e.received_ms = now_ms;

    pthread_mutex_lock(&self->mu);
    if (self->count >= self->capacity || self->count >= self->ring_cap ||
        self->bytes + frame_len > self->max_bytes) {
        pthread_mutex_unlock(&self->mu);
        s_node_free(n);
        return ROUTER_INBOX_FULL;
    }
    n->e.seq = self->next_seq++;
    *seq = n->e.seq;
    self->ring[(self->head + self->count) % self->ring_cap] = n;
    self->count++;
    self->bytes += frame_len;
    if (self->db) {
        self->unwritten++;
        pthread_cond_broadcast(&self->changed);
    } else {
        n->durable = true;
        atomic_store(&self->durable_seq, n->e.seq);
        pthread_cond_broadcast(&self->changed);
    }
    pthread_mutex_unlock(&self->mu);
    return ROUTER_INBOX_ADMITTED;
}

uint64_t router_inbox_durable_seq(const router_inbox_t *self)
{
    return atomic_load(&((router_inbox_t *) self)->durable_seq);
}

void router_inbox_sync(router_inbox_t *self)
{
    pthread_mutex_lock(&self->mu);
    while (self->unwritten > 0)
        pthread_cond_wait(&self->changed, &self->mu);
    pthread_mutex_unlock(&self->mu);
}

int router_inbox_pop(router_inbox_t *self, router_inbox_entry_t *out, int timeout_ms)
{
    struct timespec deadline =
        router_clock_deadline(CLOCK_REALTIME, timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
    pthread_mutex_lock(&self->mu);
    while (self->count == 0 || !s_at(self, 0)->durable) {
        if (timeout_ms == 0)
            goto none;
        if (timeout_ms < 0)
            pthread_cond_wait(&self->changed, &self->mu);
        else if (pthread_cond_timedwait(&self->changed, &self->mu, &deadline) == ETIMEDOUT)
            goto none;
    }
    s_node_t *n = s_at(self, 0);
    if (self->db) {
        if (self->ndeletes == self->deletes_cap) {
            size_t ncap = self->deletes_cap ? self->deletes_cap * 2 : 64;
            uint64_t *grown = realloc(self->deletes, ncap * sizeof *grown);
            if (!grown)
                goto none; /* keep the entry; the caller may retry */
            self->deletes = grown;
            self->deletes_cap = ncap;
        }
        self->deletes[self->ndeletes++] = n->e.seq;
        pthread_cond_broadcast(&self->changed);
    }
    self->ring[self->head] = NULL;
    self->head = (self->head + 1) % self->ring_cap;
    self->count--;
    self->bytes -= n->e.frame_len;
    pthread_mutex_unlock(&self->mu);
    *out = n->e;
    free(n);
    return 0;
none:
    pthread_mutex_unlock(&self->mu);
    return -1;
}

void router_inbox_entry_clear(router_inbox_entry_t *e)
{
    if (!e)
        return;
    free(e->frame);
    memset(e, 0, sizeof *e);
}

size_t router_inbox_count(router_inbox_t *self)
{
    pthread_mutex_lock(&self->mu);
    size_t n = self->count;
    pthread_mutex_unlock(&self->mu);
    return n;
}

const char *router_inbox_outcome_str(router_inbox_outcome_t o)
{
    switch (o) {
    case ROUTER_INBOX_ADMITTED: return "admitted";
    case ROUTER_INBOX_FULL: return "inbox_full";
    case ROUTER_INBOX_NOMEM: return "inbox_full";
    }
    return "unknown";
}
