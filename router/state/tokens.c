/* router/state/tokens.c — bearer token hashes (with their scope, name and
 * revocation), pairing lockouts, idempotency answers and OpenClaw devices:
 * a copy in memory for the loop thread, and a store thread that writes them
 * to state.db before their callbacks run. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <sqlite3.h>

#include "router/clock.h"
#include "router/log.h"
#include "router/state/dbcheck.h"
#include "router/state/tokens.h"
#include "router/thread.h"

#define S_IDEM_FULLKEY_MAX (24u + ROUTER_TOKENS_IDEM_KEY_MAX) /* "scope:" + key + NUL */
#define S_IDEM_SCOPES 8u           /* distinct scopes counted ("webhook", "event", OpenClaw's) */
#define S_IDEM_SWEEP_MS 1000u      /* a full sweep for expired keys, at most this often */
#define S_IDEM_BOUND_MS 5000u      /* state.db's rows cut to what memory holds, this often */
#define S_POST_RETRY_MS 100u       /* a full loop queue: how long one post try waits */
_Static_assert((ROUTER_TOKENS_IDEM_MAX & (ROUTER_TOKENS_IDEM_MAX - 1)) == 0,
               "the key table's buckets are a power of two");

typedef enum { S_JOB_TOKEN, S_JOB_REVOKE, S_JOB_LOCK, S_JOB_IDEM, S_JOB_DEVICE } s_job_kind_t;

/* One write for the store thread. */
typedef struct s_job {
    s_job_kind_t kind;
    uint8_t hash[32];                       /* TOKEN, REVOKE; DEVICE: its deviceToken hash */
    bool has_hash;                          /* DEVICE: hash is a new deviceToken hash */
    router_tokens_device_t dev;             /* DEVICE */
    char key[S_IDEM_FULLKEY_MAX];           /* TOKEN: name; LOCK: client; IDEM: scope:key */
    uint64_t a, b;                          /* TOKEN: created, scope; LOCK: failures, until;
                                               IDEM: status, expires */
    char body[ROUTER_TOKENS_IDEM_BODY_MAX]; /* IDEM: the answer; LOCK: the client whose
                                               slot this one took ("" for none) */
    bool ok;                                /* written */
    router_tokens_done_fn *done;            /* may be NULL */
    void *ud;
    struct s_job *next;
} s_job_t;

/* A token as the loop thread checks it. */
typedef struct {
    uint8_t hash[32];                      /* SHA-256 of the token text */
    router_token_scope_t scope;            /* what it opens */
    char name[ROUTER_TOKENS_NAME_MAX + 1]; /* the operator's label, may be "" */
    uint64_t created_ms;                   /* Unix ms */
    bool revoked;                          /* a revoke is being written: refused already */
} s_token_t;

typedef struct {
    char client[ROUTER_TOKENS_CLIENT_MAX]; /* "" for a free slot */
    unsigned failures;                     /* bad codes in a row */
    uint64_t until_ms;                     /* locked until, 0 for not */
} s_lock_t;

typedef struct {
    char key[S_IDEM_FULLKEY_MAX];           /* "scope:key"; "" for a free slot */
    bool busy;                              /* reserved, not answered yet */
    int status;                             /* the answer, when !busy */
    char body[ROUTER_TOKENS_IDEM_BODY_MAX];
    uint64_t expires_ms;                    /* forgotten after */
    uint32_t next;                          /* the next slot of its hash chain + 1; 0: none */
    uint32_t older, newer;                  /* answered keys of its scope by expiry: slot + 1 */
} s_idem_t;

/* Live keys per scope (the share of ROUTER_TOKENS_IDEM_SCOPE_MAX), and its
 * answered ones in order of expiry, the oldest first to go. */
typedef struct {
    char name[17];                          /* "" for a free entry */
    uint32_t n;
    uint32_t oldest, newest;                /* slot + 1; 0: none answered */
} s_idem_scope_t;

static int s_idem_put(router_tokens_t *self, const char *full, int status, const char *body,
                      uint64_t expires_ms, uint64_t now_ms);

typedef struct {
    router_tokens_device_t d;               /* d.id "" for a free slot */
    uint8_t token_hash[32];
    bool has_token;                         /* token_hash holds a deviceToken's hash */
    bool durable;                           /* false: reserved by a write not done yet */
} s_device_t;

struct router_tokens {
    router_loop_t *loop;                    /* callbacks are posted here */
    s_token_t *tokens;                      /* durable tokens, oldest first */
    size_t ntokens;
    size_t tokens_owed;                     /* mints submitted whose done has not run
                                               (loop thread): they count toward the bound */
    s_lock_t *locks;                        /* ROUTER_TOKENS_CLIENTS_MAX slots */
    s_idem_t *idem;                         /* ROUTER_TOKENS_IDEM_MAX slots (touched as used) */
    uint32_t *idem_heads;                   /* hash buckets: first slot + 1, 0 for none */
    uint32_t *idem_free;                    /* free slots, a stack */
    uint32_t idem_nfree;
    uint64_t idem_swept_ms;                 /* the last full sweep for expired keys */
    s_idem_scope_t idem_scopes[S_IDEM_SCOPES];
    router_metric_t *m_idem_held;           /* kith_idempotency_keys */
    router_metric_t *m_idem_evicted;        /* kith_idempotency_keys_evicted_total */
    s_device_t *devices;                    /* ROUTER_TOKENS_DEVICES_MAX slots */
    size_t ndevices;                        /* durable ones */
    sqlite3 *db;                            /* NULL: memory only */
    pthread_t thread;
    bool thread_started;
    bool stopped;                           /* router_tokens_stop ran */
    pthread_mutex_t mu;                     /* guards the lists below and stopping */
    pthread_cond_t cv;
    s_job_t *todo, **todo_tail;             /* waiting for the thread */
    size_t njobs;                           /* queued or being written */
    s_job_t *done_list;                     /* written, callbacks owed */
    bool stopping;
    _Atomic bool wake_posted;               /* a callback run is queued on the loop */
    _Atomic uint64_t failures;              /* commits that failed */
    uint64_t idem_bounded_ms;               /* store thread: rows last cut to the bound */
};

static const char *const s_schema =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS gateway_tokens ("
    " hash BLOB PRIMARY KEY, created_ms INTEGER NOT NULL,"
    " scope TEXT NOT NULL DEFAULT 'operator', name TEXT NOT NULL DEFAULT '') WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS gateway_pair_lockouts ("
    " client TEXT PRIMARY KEY, failures INTEGER NOT NULL, until_ms INTEGER NOT NULL)"
    " WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS gateway_idempotency ("
    " key TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL,"
    " expires_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS gateway_idempotency_expiry ON gateway_idempotency(expires_ms);"
    "CREATE TABLE IF NOT EXISTS gateway_devices ("
    " id TEXT PRIMARY KEY, public_key BLOB NOT NULL, client_id TEXT NOT NULL,"
    " client_mode TEXT NOT NULL, platform TEXT NOT NULL, token_hash BLOB,"
    " first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,"
    " via TEXT NOT NULL DEFAULT '') WITHOUT ROWID;";

static const char *const s_scope_names[] = {[ROUTER_TOKEN_OPERATOR] = "operator",
                                            [ROUTER_TOKEN_NODE] = "node"};

const char *router_tokens_scope_name(router_token_scope_t scope)
{
    return (unsigned) scope < sizeof s_scope_names / sizeof *s_scope_names ? s_scope_names[scope]
                                                                            : "unknown";
}

bool router_tokens_scope_parse(const char *text, size_t len, router_token_scope_t *scope)
{
    for (size_t i = 0; i < sizeof s_scope_names / sizeof *s_scope_names; i++)
        if (strlen(s_scope_names[i]) == len && !memcmp(s_scope_names[i], text, len)) {
            *scope = (router_token_scope_t) i;
            return true;
        }
    return false;
}

void router_tokens_id(const uint8_t hash[32], char id[ROUTER_TOKENS_ID_LEN + 1])
{
    sodium_bin2hex(id, ROUTER_TOKENS_ID_LEN + 1, hash, ROUTER_TOKENS_ID_LEN / 2);
}

/* ---------------------------------------------------------------- callbacks on the loop */

static s_token_t *s_token_find(router_tokens_t *self, const uint8_t hash[32])
{
    for (size_t i = 0; i < self->ntokens; i++)
        if (!memcmp(self->tokens[i].hash, hash, 32))
            return &self->tokens[i];
    return NULL;
}

/* A token write is done: a new token becomes usable, a revoked one leaves
 * (order kept: the list is oldest first). */
static void s_token_done(router_tokens_t *self, const s_job_t *j)
{
    if (j->kind == S_JOB_TOKEN && self->tokens_owed > 0)
        self->tokens_owed--;
    if (!j->ok)
        return; /* only at stop: a revoked token stays refused until then */
    if (j->kind == S_JOB_TOKEN) {
        if (self->ntokens >= ROUTER_TOKENS_MAX)
            return;
        s_token_t *t = &self->tokens[self->ntokens++];
        memset(t, 0, sizeof *t);
        memcpy(t->hash, j->hash, 32);
        t->scope = (router_token_scope_t) j->b;
        snprintf(t->name, sizeof t->name, "%.*s", (int) ROUTER_TOKENS_NAME_MAX, j->key);
        t->created_ms = j->a;
        return;
    }
    s_token_t *t = s_token_find(self, j->hash);
    if (!t)
        return;
    size_t i = (size_t) (t - self->tokens);
    memmove(t, t + 1, (self->ntokens - i - 1) * sizeof *t);
    self->ntokens--;
    sodium_memzero(&self->tokens[self->ntokens], sizeof *t);
}

static s_device_t *s_device_find(const router_tokens_t *self, const char *id)
{
    for (size_t i = 0; i < ROUTER_TOKENS_DEVICES_MAX; i++)
        if (self->devices[i].d.id[0] && !strcmp(self->devices[i].d.id, id))
            return &self->devices[i];
    return NULL;
}

/* Whether the bearer token whose id is `id` is in force (known, not
 * revoked). */
static bool s_token_live(const router_tokens_t *self, const char *id)
{
    char tid[ROUTER_TOKENS_ID_LEN + 1];
    for (size_t i = 0; i < self->ntokens; i++) {
        router_tokens_id(self->tokens[i].hash, tid);
        if (!self->tokens[i].revoked && !strcmp(tid, id))
            return true;
    }
    return false;
}

/* A device write is done: the memory copy follows what is durable (a slot
 * reserved for a new device that could not be written is freed). */
static void s_device_done(router_tokens_t *self, const s_job_t *j)
{
    s_device_t *e = s_device_find(self, j->dev.id);
    if (!e)
        return;
    if (!j->ok) {
        if (!e->durable)
            memset(e, 0, sizeof *e);
        return;
    }
    if (!e->durable)
        self->ndevices++;
    char via[sizeof e->d.via];
    memcpy(via, e->d.via, sizeof via);
    e->d = j->dev;
    e->durable = true;
    if (j->has_hash && j->dev.via[0] && !s_token_live(self, j->dev.via)) {
        /* The bearer token that earned this deviceToken was revoked while
         * the record was written: the revocation's write, queued after
         * it, clears the row's token, and memory must not install it (it
         * was accepted until a restart, and the revoked token's holder
         * can derive it, WIRE §25.8). */
        e->has_token = false;
        sodium_memzero(e->token_hash, sizeof e->token_hash);
        e->d.via[0] = '\0';
    } else if (j->has_hash) {
        memcpy(e->token_hash, j->hash, 32);
        e->has_token = true;
    } else {
        memcpy(e->d.via, via, sizeof via); /* the deviceToken kept keeps its via */
    }
}

/* Runs every owed callback; on the loop thread (or in stop). */
static void s_run_done(router_tokens_t *self)
{
    pthread_mutex_lock(&self->mu);
    s_job_t *list = self->done_list;
    self->done_list = NULL;
    pthread_mutex_unlock(&self->mu);
    /* Written in order; the list was built newest first. */
    s_job_t *rev = NULL;
    while (list) {
        s_job_t *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    for (s_job_t *j = rev, *n; j; j = n) {
        n = j->next;
        if (j->kind == S_JOB_TOKEN || j->kind == S_JOB_REVOKE)
            s_token_done(self, j);
        if (j->kind == S_JOB_DEVICE)
            s_device_done(self, j);
        if (j->done)
            j->done(j->ok, j->ud);
        free(j);
    }
}

static void s_wake(router_loop_t *loop, void *arg)
{
    (void) loop;
    router_tokens_t *self = arg;
    atomic_store(&self->wake_posted, false);
    if (!self->stopped)
        s_run_done(self);
}

/* ---------------------------------------------------------------- the store thread */

static int s_write(router_tokens_t *self, const s_job_t *j)
{
    if (!self->db)
        return 0;
    sqlite3_stmt *st = NULL;
    const char *sql = j->kind == S_JOB_TOKEN
                          ? "INSERT OR REPLACE INTO gateway_tokens(hash,created_ms,scope,name)"
                            " VALUES(?,?,?,?)"
                      : j->kind == S_JOB_REVOKE
                          ? "DELETE FROM gateway_tokens WHERE hash=?"
                      : j->kind == S_JOB_LOCK
                          ? "INSERT OR REPLACE INTO gateway_pair_lockouts(client,failures,until_ms)"
                            " VALUES(?,?,?)"
                      : j->kind == S_JOB_DEVICE
                          ? "INSERT INTO gateway_devices(id,public_key,client_id,client_mode,"
                            "platform,token_hash,first_seen_ms,last_seen_ms,via)"
                            " VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
                            " public_key=excluded.public_key, client_id=excluded.client_id,"
                            " client_mode=excluded.client_mode, platform=excluded.platform,"
                            " via=CASE WHEN excluded.token_hash IS NULL THEN via"
                            " ELSE excluded.via END,"
                            " token_hash=coalesce(excluded.token_hash, token_hash),"
                            " last_seen_ms=excluded.last_seen_ms"
                          : "INSERT OR REPLACE INTO gateway_idempotency(key,status,body,expires_ms)"
                            " VALUES(?,?,?,?)";
    if (sqlite3_prepare_v2(self->db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    if (j->kind == S_JOB_TOKEN) {
        sqlite3_bind_blob(st, 1, j->hash, 32, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64) j->a);
        sqlite3_bind_text(st, 3, router_tokens_scope_name((router_token_scope_t) j->b), -1,
                          SQLITE_STATIC);
        sqlite3_bind_text(st, 4, j->key, -1, SQLITE_STATIC);
    } else if (j->kind == S_JOB_REVOKE) {
        sqlite3_bind_blob(st, 1, j->hash, 32, SQLITE_STATIC);
    } else if (j->kind == S_JOB_LOCK) {
        sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64) j->a);
        sqlite3_bind_int64(st, 3, (sqlite3_int64) j->b);
    } else if (j->kind == S_JOB_DEVICE) {
        sqlite3_bind_text(st, 1, j->dev.id, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, j->dev.public_key, 32, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, j->dev.client_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, j->dev.client_mode, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, j->dev.platform, -1, SQLITE_STATIC);
        if (j->has_hash)
            sqlite3_bind_blob(st, 6, j->hash, 32, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 6);
        sqlite3_bind_int64(st, 7, (sqlite3_int64) j->dev.first_seen_ms);
        sqlite3_bind_int64(st, 8, (sqlite3_int64) j->dev.last_seen_ms);
        sqlite3_bind_text(st, 9, j->dev.via, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64) j->a);
        sqlite3_bind_text(st, 3, j->body, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (sqlite3_int64) j->b);
    }
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    if (rc == 0 && j->kind == S_JOB_LOCK && j->body[0]) {
        /* The client this one displaced from memory goes from state.db in
         * the same commit: left there, every new address would add a row
         * for good (the table's bound is the memory's, WIRE §24.10). */
        if (sqlite3_prepare_v2(self->db, "DELETE FROM gateway_pair_lockouts WHERE client=?", -1,
                               &st, NULL) != SQLITE_OK)
            return -1;
        sqlite3_bind_text(st, 1, j->body, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(st);
    }
    if (rc == 0 && j->kind == S_JOB_REVOKE) {
        /* The deviceTokens the revoked token earned go in the same commit. */
        char id[ROUTER_TOKENS_ID_LEN + 1];
        router_tokens_id(j->hash, id);
        if (sqlite3_prepare_v2(self->db,
                               "UPDATE gateway_devices SET token_hash=NULL, via='' WHERE via=?",
                               -1, &st, NULL) != SQLITE_OK)
            return -1;
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(st);
    }
    return rc;
}

/* One transaction per batch; expired idempotency rows go in the same one. */
static bool s_commit(router_tokens_t *self, s_job_t *batch)
{
    if (!self->db)
        return true;
    if (sqlite3_exec(self->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return false;
    for (s_job_t *j = batch; j; j = j->next)
        if (s_write(self, j) != 0)
            goto fail;
    uint64_t now = router_clock_wall_ms();
    char sql[192];
    snprintf(sql, sizeof sql, "DELETE FROM gateway_idempotency WHERE expires_ms < %llu",
             (unsigned long long) now);
    if (sqlite3_exec(self->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    /* Rows past the newest the memory can hold again at start are dead
     * weight (their keys were let go for newer ones): at most every
     * S_IDEM_BOUND_MS, since finding the bound walks that many index
     * entries. The table holds one scope's keys (OpenClaw's). */
    if (now - self->idem_bounded_ms >= S_IDEM_BOUND_MS) {
        self->idem_bounded_ms = now;
        snprintf(sql, sizeof sql,
                 "DELETE FROM gateway_idempotency WHERE expires_ms < (SELECT expires_ms FROM"
                 " gateway_idempotency ORDER BY expires_ms DESC LIMIT 1 OFFSET %u)",
                 ROUTER_TOKENS_IDEM_SCOPE_MAX - 1);
        if (sqlite3_exec(self->db, sql, NULL, NULL, NULL) != SQLITE_OK)
            goto fail;
    }
    if (sqlite3_exec(self->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
        return true;
fail:
    ROUTER_LOG(ROUTER_LOG_WARN, "tokens", "cannot write state.db: %s", sqlite3_errmsg(self->db));
    sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
    return false;
}

/* Posts the run of owed callbacks to the loop. A full post queue (a busy
 * loop) is tried again until the loop takes it: left for the next batch,
 * the answers would wait for a write that may never come (a /pair client
 * never answered, its durable token never usable). Gives up only when a
 * stop is asked, whose router_tokens_stop runs them. */
static void s_post_wake(router_tokens_t *self)
{
    for (;;) {
        if (router_loop_post_wait(self->loop, s_wake, self, S_POST_RETRY_MS) == 0)
            return;
        pthread_mutex_lock(&self->mu);
        bool stopping = self->stopping;
        pthread_mutex_unlock(&self->mu);
        if (stopping) {
            atomic_store(&self->wake_posted, false);
            return;
        }
    }
}

static void *s_thread(void *arg)
{
    router_tokens_t *self = arg;
    router_thread_name("kith-tokens");
    unsigned backoff_ms = 10;
    pthread_mutex_lock(&self->mu);
    for (;;) {
        while (!self->todo && !self->stopping)
            pthread_cond_wait(&self->cv, &self->mu);
        if (!self->todo && self->stopping)
            break;
        s_job_t *batch = self->todo;
        self->todo = NULL;
        self->todo_tail = &self->todo;
        pthread_mutex_unlock(&self->mu);
        bool ok = s_commit(self, batch);
        if (!ok)
            atomic_fetch_add(&self->failures, 1);
        pthread_mutex_lock(&self->mu); /* stopping is the stop's to write */
        bool stopping = self->stopping;
        pthread_mutex_unlock(&self->mu);
        if (!ok && !stopping) {
            /* A failing disk: put the batch back and retry with backoff, so
             * nothing is answered before it is written. */
            /* tv_nsec must stay below a second: at 1000 ms it made
             * nanosleep fail at once (EINVAL), and the thread spun. */
            struct timespec ts = {(time_t) (backoff_ms / 1000),
                                  (long) (backoff_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            backoff_ms = backoff_ms * 2 < 1000 ? backoff_ms * 2 : 1000;
            pthread_mutex_lock(&self->mu);
            s_job_t *last = batch;
            while (last->next)
                last = last->next;
            last->next = self->todo;
            if (!self->todo)
                self->todo_tail = &last->next;
            self->todo = batch;
            continue;
        }
        backoff_ms = 10;
        pthread_mutex_lock(&self->mu);
        for (s_job_t *j = batch, *n; j; j = n) {
            n = j->next;
            j->ok = ok;
            j->next = self->done_list;
            self->done_list = j;
            self->njobs--;
        }
        pthread_mutex_unlock(&self->mu);
        if (!atomic_exchange(&self->wake_posted, true))
            s_post_wake(self);
        pthread_mutex_lock(&self->mu);
    }
    pthread_mutex_unlock(&self->mu);
    return NULL;
}

/* Queues a job; without a database it is "written" at once (callbacks
 * still run from a post, never inside the caller). */
static int s_submit(router_tokens_t *self, s_job_t *j)
{
    pthread_mutex_lock(&self->mu);
    if (self->njobs >= ROUTER_TOKENS_JOBS_MAX || self->stopping) {
        pthread_mutex_unlock(&self->mu);
        free(j);
        errno = EAGAIN;
        return -1;
    }
    self->njobs++;
    j->next = NULL;
    *self->todo_tail = j;
    self->todo_tail = &j->next;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    return 0;
}

static s_job_t *s_job_new(s_job_kind_t kind, router_tokens_done_fn *done, void *ud)
{
    s_job_t *j = calloc(1, sizeof *j);
    if (j) {
        j->kind = kind;
        j->done = done;
        j->ud = ud;
    }
    return j;
}

/* ---------------------------------------------------------------- loading */

/* A remembered answer's status: an HTTP one a client can be given again.
 * A stored row with another (a damaged state.db) is not loaded: replaying
 * it would be an invalid answer, every retry for as long as it lasted. */
static bool s_idem_status_ok(int status)
{
    return status >= 200 && status <= 599;
}

/* A stored expiry, at most a key's lifetime from now: a damaged row (or a
 * clock set back since it was written) must not hold a key for longer than
 * any key is kept. */
static uint64_t s_idem_expiry_cap(uint64_t expires_ms, uint64_t now_ms)
{
    return expires_ms > now_ms && expires_ms - now_ms > ROUTER_TOKENS_IDEM_TTL_MS
               ? now_ms + ROUTER_TOKENS_IDEM_TTL_MS
               : expires_ms;
}

static int s_load(router_tokens_t *self, char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    uint64_t now = router_clock_wall_ms();
    int step = SQLITE_DONE;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT hash, created_ms, scope, name FROM gateway_tokens"
                           " ORDER BY created_ms", -1, &st, NULL) != SQLITE_OK)
        goto fail;
    while ((step = sqlite3_step(st)) == SQLITE_ROW && self->ntokens < ROUTER_TOKENS_MAX) {
        const char *scope = (const char *) sqlite3_column_text(st, 2);
        const char *name = (const char *) sqlite3_column_text(st, 3);
        s_token_t *t = &self->tokens[self->ntokens];
        /* A row this build cannot read opens nothing (fails closed). */
        if (sqlite3_column_bytes(st, 0) != 32 || !scope || !name ||
            strlen(name) > ROUTER_TOKENS_NAME_MAX ||
            !router_tokens_scope_parse(scope, strlen(scope), &t->scope))
            continue;
        memcpy(t->hash, sqlite3_column_blob(st, 0), 32);
        t->created_ms = (uint64_t) sqlite3_column_int64(st, 1);
        snprintf(t->name, sizeof t->name, "%s", name);
        self->ntokens++;
    }
    /* A step that failed (out of memory, I/O) ends a loop as the last row
     * would: refuse rather than run without the rows not read. */
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    /* The same rows, in the same order, as the bound below keeps. */
    char lock_rows[256];
    snprintf(lock_rows, sizeof lock_rows,
             "FROM gateway_pair_lockouts WHERE length(CAST(client AS BLOB)) < %u"
             " ORDER BY until_ms DESC, client LIMIT %u", ROUTER_TOKENS_CLIENT_MAX,
             ROUTER_TOKENS_CLIENTS_MAX);
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT client, failures, until_ms %s", lock_rows);
    if (sqlite3_prepare_v2(self->db, sql, -1, &st, NULL) != SQLITE_OK)
        goto fail;
    for (size_t i = 0; i < ROUTER_TOKENS_CLIENTS_MAX && (step = sqlite3_step(st)) == SQLITE_ROW;) {
        const char *c = (const char *) sqlite3_column_text(st, 0);
        if (!c || strlen(c) >= ROUTER_TOKENS_CLIENT_MAX)
            continue;
        snprintf(self->locks[i].client, ROUTER_TOKENS_CLIENT_MAX, "%s", c);
        self->locks[i].failures = (unsigned) sqlite3_column_int64(st, 1);
        self->locks[i].until_ms = (uint64_t) sqlite3_column_int64(st, 2);
        i++;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    /* Rows past those (an earlier build kept a displaced client's row, so
     * the table grew with every new address) are dropped: memory acts as
     * if they were not there. Not fatal: they are only dead weight. */
    snprintf(sql, sizeof sql,
             "DELETE FROM gateway_pair_lockouts WHERE client NOT IN (SELECT client %s)",
             lock_rows);
    if (sqlite3_exec(self->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        ROUTER_LOG(ROUTER_LOG_WARN, "tokens", "cannot trim gateway_pair_lockouts: %s",
                   sqlite3_errmsg(self->db));
    if (sqlite3_prepare_v2(self->db,
                           "SELECT key, status, body, expires_ms FROM gateway_idempotency"
                           " WHERE expires_ms >= ? ORDER BY expires_ms DESC", -1, &st,
                           NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, (sqlite3_int64) now);
    while (self->idem_nfree && (step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *) sqlite3_column_text(st, 0);
        const char *b = (const char *) sqlite3_column_text(st, 2);
        int status = sqlite3_column_int(st, 1);
        if (!k || !b || strlen(k) >= S_IDEM_FULLKEY_MAX || strlen(b) >= ROUTER_TOKENS_IDEM_BODY_MAX ||
            !strchr(k, ':') || !s_idem_status_ok(status))
            continue;
        (void) s_idem_put(self, k, status, b,
                          s_idem_expiry_cap((uint64_t) sqlite3_column_int64(st, 3), now), now);
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(self->db,
                           "SELECT id, public_key, client_id, client_mode, platform, token_hash,"
                           " first_seen_ms, last_seen_ms, via FROM gateway_devices"
                           " ORDER BY last_seen_ms DESC", -1, &st, NULL) != SQLITE_OK)
        goto fail;
    while (self->ndevices < ROUTER_TOKENS_DEVICES_MAX && (step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *) sqlite3_column_text(st, 0);
        const void *pk = sqlite3_column_blob(st, 1);
        int pk_len = sqlite3_column_bytes(st, 1);
        const char *t[3];
        bool fits = id && strlen(id) == ROUTER_TOKENS_DEVICE_ID_LEN && pk && pk_len == 32;
        for (int k = 0; k < 3; k++) {
            t[k] = (const char *) sqlite3_column_text(st, 2 + k);
            fits = fits && t[k] && strlen(t[k]) <= ROUTER_TOKENS_DEVICE_TEXT_MAX;
        }
        if (!fits)
            continue;
        s_device_t *e = &self->devices[self->ndevices++];
        memcpy(e->d.id, id, ROUTER_TOKENS_DEVICE_ID_LEN + 1);
        memcpy(e->d.public_key, pk, 32);
        snprintf(e->d.client_id, sizeof e->d.client_id, "%s", t[0]);
        snprintf(e->d.client_mode, sizeof e->d.client_mode, "%s", t[1]);
        snprintf(e->d.platform, sizeof e->d.platform, "%s", t[2]);
        if (sqlite3_column_bytes(st, 5) == 32) {
            memcpy(e->token_hash, sqlite3_column_blob(st, 5), 32);
            e->has_token = true;
        }
        e->d.first_seen_ms = (uint64_t) sqlite3_column_int64(st, 6);
        e->d.last_seen_ms = (uint64_t) sqlite3_column_int64(st, 7);
        const char *via = (const char *) sqlite3_column_text(st, 8);
        if (via && strlen(via) == ROUTER_TOKENS_ID_LEN)
            memcpy(e->d.via, via, sizeof e->d.via);
        e->durable = true;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    return 0;
fail:
    router_dbcheck_error(self->db, "", NULL, "cannot read gateway tables: ", err, errcap);
    sqlite3_finalize(st);
    return -1;
}

/* ---------------------------------------------------------------- lifecycle */

/* Brings an older state.db's tables up to this build's columns: tokens
 * written before they had a scope and a name were all paired, so an
 * operator's; devices written before they had a via earned their
 * deviceToken with a token not known (it outlives a revocation until it is
 * replaced). */
static int s_migrate(sqlite3 *db)
{
    /* One column per step, each a single statement (so atomic): two in one
     * step committed one at a time, and a kill -9 or a full disk between
     * them left scope without name, which the next start tried to add
     * again ("duplicate column name"), refusing to start for ever. A file
     * left so by an earlier build is finished here. */
    static const struct {
        const char *probe; /* fails to prepare on an older file */
        const char *sql;   /* what brings it up to date */
    } steps[] = {
        {"SELECT scope FROM gateway_tokens LIMIT 0",
         "ALTER TABLE gateway_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'operator'"},
        {"SELECT name FROM gateway_tokens LIMIT 0",
         "ALTER TABLE gateway_tokens ADD COLUMN name TEXT NOT NULL DEFAULT ''"},
        {"SELECT via FROM gateway_devices LIMIT 0",
         "ALTER TABLE gateway_devices ADD COLUMN via TEXT NOT NULL DEFAULT ''"},
    };
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        sqlite3_stmt *st = NULL;
        int probed = sqlite3_prepare_v2(db, steps[i].probe, -1, &st, NULL);
        if (probed == SQLITE_OK) {
            sqlite3_finalize(st);
            continue;
        }
        /* Only "no such column" (SQLITE_ERROR) says the file is older:
         * a probe that ran out of memory went on to add a column that
         * was there, and the start was refused as "duplicate column
         * name", the very message of a half-migrated file. */
        if (probed != SQLITE_ERROR ||
            sqlite3_exec(db, steps[i].sql, NULL, NULL, NULL) != SQLITE_OK)
            return -1;
    }
    return 0;
}

/* The columns this build writes, per table (router_dbcheck_columns). */
static const char *const s_token_cols[] = {"hash", "created_ms", "scope", "name", NULL};
static const char *const s_lock_cols[] = {"client", "failures", "until_ms", NULL};
static const char *const s_idem_cols[] = {"key", "status", "body", "expires_ms", NULL};
static const char *const s_device_cols[] = {"id", "public_key", "client_id", "client_mode",
                                            "platform", "token_hash", "first_seen_ms",
                                            "last_seen_ms", "via", NULL};
static const router_dbcheck_table_t s_tables[] = {
    {"gateway_tokens", s_token_cols},
    {"gateway_pair_lockouts", s_lock_cols},
    {"gateway_idempotency", s_idem_cols},
    {"gateway_devices", s_device_cols},
};

router_tokens_t *router_tokens_new(const char *db_path, router_loop_t *loop, char *err,
                                   size_t errcap)
{
    router_tokens_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    self->loop = loop;
    self->todo_tail = &self->todo;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    self->tokens = calloc(ROUTER_TOKENS_MAX, sizeof *self->tokens);
    self->locks = calloc(ROUTER_TOKENS_CLIENTS_MAX, sizeof *self->locks);
    self->idem = calloc(ROUTER_TOKENS_IDEM_MAX, sizeof *self->idem);
    self->idem_heads = calloc(ROUTER_TOKENS_IDEM_MAX, sizeof *self->idem_heads);
    self->idem_free = malloc(ROUTER_TOKENS_IDEM_MAX * sizeof *self->idem_free);
    self->devices = calloc(ROUTER_TOKENS_DEVICES_MAX, sizeof *self->devices);
    if (!self->tokens || !self->locks || !self->idem || !self->idem_heads || !self->idem_free ||
        !self->devices) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < ROUTER_TOKENS_IDEM_MAX; i++) /* slot 0 is handed out first */
        self->idem_free[i] = ROUTER_TOKENS_IDEM_MAX - 1 - i;
    self->idem_nfree = ROUTER_TOKENS_IDEM_MAX;
    if (db_path) {
        int opened = sqlite3_open_v2(db_path, &self->db,
                                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                         SQLITE_OPEN_FULLMUTEX,
                                     NULL);
        /* Read-only: with the tables there nothing below writes, and
         * every write would fail for ever, each client waiting on it. */
        if (opened == SQLITE_OK && router_dbcheck_writable(self->db, "", db_path, err, errcap) != 0)
            goto fail;
        if (opened != SQLITE_OK ||
            (sqlite3_busy_timeout(self->db, 5000),
             sqlite3_exec(self->db, s_schema, NULL, NULL, NULL) != SQLITE_OK) ||
            s_migrate(self->db) != 0) {
            if (self->db)
                router_dbcheck_error(self->db, "", db_path, "", err, errcap);
            else
                snprintf(err, errcap, "%s: cannot open", db_path);
            goto fail;
        }
        if (router_dbcheck_columns(self->db, s_tables, sizeof s_tables / sizeof *s_tables, "",
                                   db_path, err, errcap) != 0 ||
            s_load(self, err, errcap) != 0)
            goto fail;
    }
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        snprintf(err, errcap, "cannot start the token store thread");
        goto fail;
    }
    self->thread_started = true;
    return self;
fail:
    router_tokens_destroy(&self);
    return NULL;
}

void router_tokens_stop(router_tokens_t *self)
{
    if (!self || self->stopped)
        return;
    if (self->thread_started) {
        pthread_mutex_lock(&self->mu);
        self->stopping = true;
        pthread_cond_signal(&self->cv);
        pthread_mutex_unlock(&self->mu);
        pthread_join(self->thread, NULL);
        self->thread_started = false;
    }
    s_run_done(self);
    self->stopped = true;
}

void router_tokens_destroy(router_tokens_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_tokens_t *self = *self_p;
    router_tokens_stop(self);
    for (s_job_t *j = self->todo, *n; j; j = n) {
        n = j->next;
        free(j);
    }
    if (self->db)
        sqlite3_close(self->db);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cv);
    if (self->tokens)
        sodium_memzero(self->tokens, ROUTER_TOKENS_MAX * sizeof *self->tokens);
    free(self->tokens);
    free(self->locks);
    free(self->idem);
    free(self->idem_heads);
    free(self->idem_free);
    if (self->devices)
        sodium_memzero(self->devices, ROUTER_TOKENS_DEVICES_MAX * sizeof *self->devices);
    free(self->devices);
    free(self);
    *self_p = NULL;
}

/* ---------------------------------------------------------------- tokens */

size_t router_tokens_count(const router_tokens_t *self)
{
    size_t n = 0;
    for (size_t i = 0; i < self->ntokens; i++)
        n += !self->tokens[i].revoked;
    return n;
}

size_t router_tokens_count_scope(const router_tokens_t *self, router_token_scope_t scope)
{
    size_t n = 0;
    for (size_t i = 0; i < self->ntokens; i++)
        n += !self->tokens[i].revoked && self->tokens[i].scope == scope;
    return n;
}

bool router_tokens_check(const router_tokens_t *self, const uint8_t hash[32],
                         router_token_scope_t *scope)
{
    /* Every entry is compared, so the time says nothing of which matched. */
    bool found = false;
    unsigned got = 0;
    for (size_t i = 0; i < self->ntokens; i++) {
        const s_token_t *t = &self->tokens[i];
        unsigned hit = (unsigned) (sodium_memcmp(t->hash, hash, 32) == 0) & (unsigned) !t->revoked;
        found |= hit;
        got |= (0u - hit) & (unsigned) t->scope;
    }
    if (scope)
        *scope = (router_token_scope_t) got;
    return found;
}

int router_tokens_add(router_tokens_t *self, const uint8_t hash[32], router_token_scope_t scope,
                      const char *name, uint64_t now_ms, router_tokens_done_fn *done, void *ud)
{
    if ((unsigned) scope >= sizeof s_scope_names / sizeof *s_scope_names || !name ||
        strlen(name) > ROUTER_TOKENS_NAME_MAX) {
        errno = EINVAL;
        return -1;
    }
    /* A mint counts from its submit until its done has run here: the
     * store thread's queue forgets it at the commit, before that, and a
     * mint let in then was written past the bound, answered 201 and then
     * left out of memory (refused until a restart, and then never). */
    if (self->ntokens + self->tokens_owed >= ROUTER_TOKENS_MAX) {
        errno = ENOSPC;
        return -1;
    }
    s_job_t *j = s_job_new(S_JOB_TOKEN, done, ud);
    if (!j) {
        errno = EAGAIN;
        return -1;
    }
    memcpy(j->hash, hash, 32);
    j->a = now_ms;
    j->b = (uint64_t) scope;
    snprintf(j->key, sizeof j->key, "%s", name);
    if (s_submit(self, j) != 0) /* frees j */
        return -1;
    self->tokens_owed++;
    return 0;
}

size_t router_tokens_list(const router_tokens_t *self, router_tokens_info_t *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < self->ntokens && n < cap; i++) {
        const s_token_t *t = &self->tokens[i];
        if (t->revoked)
            continue;
        router_tokens_id(t->hash, out[n].id);
        out[n].scope = t->scope;
        snprintf(out[n].name, sizeof out[n].name, "%s", t->name);
        out[n].created_ms = t->created_ms;
        n++;
    }
    return n;
}

int router_tokens_revoke(router_tokens_t *self, const char *id, router_tokens_done_fn *done,
                         void *ud)
{
    s_token_t *t = NULL;
    char tid[ROUTER_TOKENS_ID_LEN + 1];
    for (size_t i = 0; i < self->ntokens && !t; i++) {
        router_tokens_id(self->tokens[i].hash, tid);
        if (!self->tokens[i].revoked && !strcmp(tid, id))
            t = &self->tokens[i];
    }
    if (!t) {
        errno = ENOENT;
        return -1;
    }
    s_job_t *j = s_job_new(S_JOB_REVOKE, done, ud);
    if (!j) {
        errno = EAGAIN;
        return -1;
    }
    memcpy(j->hash, t->hash, 32);
    if (s_submit(self, j) != 0) /* frees j */
        return -1;
    t->revoked = true; /* refused from now on; gone once the delete is durable */
    for (size_t i = 0; i < ROUTER_TOKENS_DEVICES_MAX; i++) {
        s_device_t *e = &self->devices[i];
        if (e->d.id[0] && !strcmp(e->d.via, id)) {
            e->has_token = false;
            e->d.via[0] = '\0';
            sodium_memzero(e->token_hash, sizeof e->token_hash);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- lockouts */

static s_lock_t *s_lock_find(const router_tokens_t *self, const char *client)
{
    for (size_t i = 0; i < ROUTER_TOKENS_CLIENTS_MAX; i++)
        if (self->locks[i].client[0] && !strcmp(self->locks[i].client, client))
            return &self->locks[i];
    return NULL;
}

/* A slot for a new client: a free one, else the one whose lock ended
 * longest ago (a live lock is never evicted while a stale one exists). */
static s_lock_t *s_lock_slot(router_tokens_t *self, uint64_t now_ms)
{
    s_lock_t *best = NULL;
    for (size_t i = 0; i < ROUTER_TOKENS_CLIENTS_MAX; i++) {
        s_lock_t *l = &self->locks[i];
        if (!l->client[0])
            return l;
        if (l->until_ms <= now_ms && (!best || l->until_ms < best->until_ms))
            best = l;
    }
    return best;
}

/* A client with no slot, while every slot holds a live lock, could not be
 * counted: its wrong codes would each be answered 429 and forgotten, and
 * one address could try every code once 4,096 others were locked out. It
 * is locked too, until the first of those locks ends (WIRE §17.2). */
uint64_t router_tokens_locked_until(const router_tokens_t *self, const char *client,
                                    uint64_t now_ms)
{
    const s_lock_t *l = s_lock_find(self, client);
    if (l)
        return l->until_ms > now_ms ? l->until_ms : 0;
    uint64_t first_end = 0;
    for (size_t i = 0; i < ROUTER_TOKENS_CLIENTS_MAX; i++) {
        const s_lock_t *x = &self->locks[i];
        if (!x->client[0] || x->until_ms <= now_ms)
            return 0; /* a slot a new client may take */
        if (!first_end || x->until_ms < first_end)
            first_end = x->until_ms;
    }
    return first_end;
}

static int s_lock_write(router_tokens_t *self, const s_lock_t *l, const char *displaced,
                        router_tokens_done_fn *done, void *ud)
{
    s_job_t *j = s_job_new(S_JOB_LOCK, done, ud);
    if (!j) {
        errno = EAGAIN;
        return -1;
    }
    snprintf(j->key, sizeof j->key, "%s", l->client);
    snprintf(j->body, sizeof j->body, "%s", displaced ? displaced : "");
    j->a = l->failures;
    j->b = l->until_ms;
    return s_submit(self, j);
}

int router_tokens_fail(router_tokens_t *self, const char *client, uint64_t now_ms,
                       unsigned limit, uint64_t lock_ms, uint64_t *until_ms,
                       router_tokens_done_fn *done, void *ud)
{
    s_lock_t *l = s_lock_find(self, client);
    char displaced[ROUTER_TOKENS_CLIENT_MAX] = "";
    *until_ms = 0;
    if (!l) {
        l = s_lock_slot(self, now_ms);
        if (!l) {
            /* Every slot holds a live lock: treat this client as locked too. */
            *until_ms = now_ms + lock_ms;
            errno = EAGAIN;
            return -1;
        }
        memcpy(displaced, l->client, sizeof displaced);
        memset(l, 0, sizeof *l);
        snprintf(l->client, sizeof l->client, "%s", client);
    }
    if (l->until_ms && l->until_ms <= now_ms) {
        l->until_ms = 0;
        l->failures = 0;
    }
    if (++l->failures >= limit) {
        l->failures = 0;
        l->until_ms = now_ms + lock_ms;
        *until_ms = l->until_ms;
    }
    return s_lock_write(self, l, displaced, done, ud);
}

void router_tokens_forgive(router_tokens_t *self, const char *client)
{
    s_lock_t *l = s_lock_find(self, client);
    if (!l || (!l->failures && !l->until_ms))
        return;
    l->failures = 0;
    l->until_ms = 0;
    (void) s_lock_write(self, l, NULL, NULL, NULL);
}

/* ---------------------------------------------------------------- idempotency */

/* Keys are found through a chained hash of "scope:key"; a free slot comes
 * off a stack; an expired key goes when a lookup meets it, and all of them
 * in a sweep when no slot is free (at most every S_IDEM_SWEEP_MS, so a
 * full table under load costs one scan a second, not one per request).
 * Each scope keeps its answered keys in a list by expiry, so the one to
 * let go for a newer key, when its scope or the table is full, is found
 * in O(1). */

static int s_idem_key(char out[S_IDEM_FULLKEY_MAX], const char *scope, const char *key,
                      size_t key_len)
{
    if (!key_len || key_len > ROUTER_TOKENS_IDEM_KEY_MAX || strlen(scope) > 16)
        return -1;
    snprintf(out, S_IDEM_FULLKEY_MAX, "%s:%.*s", scope, (int) key_len, key);
    return 0;
}

static uint32_t s_idem_bucket(const char *full)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *) full; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (uint32_t) (h ^ (h >> 32)) & (ROUTER_TOKENS_IDEM_MAX - 1);
}

/* The count of full's scope; NULL when it has none and `make` is false,
 * or S_IDEM_SCOPES other scopes are counted already. */
static s_idem_scope_t *s_idem_scope(router_tokens_t *self, const char *full, bool make)
{
    size_t n = strcspn(full, ":");
    s_idem_scope_t *free_one = NULL;
    for (size_t i = 0; i < S_IDEM_SCOPES; i++) {
        s_idem_scope_t *sc = &self->idem_scopes[i];
        if (!sc->name[0]) {
            if (!free_one)
                free_one = sc;
        } else if (strlen(sc->name) == n && !memcmp(sc->name, full, n)) {
            return sc;
        }
    }
    if (!make || !free_one || n >= sizeof free_one->name)
        return NULL;
    memset(free_one, 0, sizeof *free_one);
    memcpy(free_one->name, full, n);
    return free_one;
}

static void s_idem_held(router_tokens_t *self)
{
    router_metric_set(self->m_idem_held, ROUTER_TOKENS_IDEM_MAX - self->idem_nfree);
}

/* Puts answered key e into its scope's list by expiry: keys are answered
 * in about that order, so the place is found from the newest end in a
 * step or two (and at the oldest end at once, as the load at start, which
 * reads the newest first, needs); past a few steps the key goes there,
 * which only makes the order in which keys are let go approximate. */
static void s_idem_age_link(router_tokens_t *self, s_idem_scope_t *sc, s_idem_t *e)
{
    uint32_t idx = (uint32_t) (e - self->idem) + 1, after = sc->newest;
    if (after && e->expires_ms < self->idem[after - 1].expires_ms) {
        if (e->expires_ms < self->idem[sc->oldest - 1].expires_ms)
            after = 0;
        for (int steps = 0; after && self->idem[after - 1].expires_ms > e->expires_ms &&
                            steps < 64; steps++)
            after = self->idem[after - 1].older;
    }
    e->older = after;
    e->newer = after ? self->idem[after - 1].newer : sc->oldest;
    if (e->older)
        self->idem[e->older - 1].newer = idx;
    else
        sc->oldest = idx;
    if (e->newer)
        self->idem[e->newer - 1].older = idx;
    else
        sc->newest = idx;
}

static void s_idem_age_unlink(router_tokens_t *self, s_idem_scope_t *sc, s_idem_t *e)
{
    if (e->older)
        self->idem[e->older - 1].newer = e->newer;
    else
        sc->oldest = e->newer;
    if (e->newer)
        self->idem[e->newer - 1].older = e->older;
    else
        sc->newest = e->older;
    e->older = e->newer = 0;
}

/* Frees slot e: off its chain, its scope's list and count, onto the free
 * stack. */
static void s_idem_drop(router_tokens_t *self, s_idem_t *e)
{
    uint32_t idx = (uint32_t) (e - self->idem);
    for (uint32_t *link = &self->idem_heads[s_idem_bucket(e->key)]; *link;
         link = &self->idem[*link - 1].next)
        if (*link - 1 == idx) {
            *link = e->next;
            break;
        }
    s_idem_scope_t *sc = s_idem_scope(self, e->key, false);
    if (sc && !e->busy)
        s_idem_age_unlink(self, sc, e);
    if (sc && sc->n > 0 && --sc->n == 0)
        sc->name[0] = '\0'; /* the entry is free for another scope */
    e->key[0] = '\0';
    e->next = 0;
    self->idem_free[self->idem_nfree++] = idx;
    s_idem_held(self);
}

static bool s_idem_expired(const s_idem_t *e, uint64_t now_ms)
{
    return !e->busy && e->expires_ms < now_ms;
}

/* The live slot of full, or NULL; expired keys met on the way go. */
static s_idem_t *s_idem_find(router_tokens_t *self, const char *full, uint64_t now_ms)
{
    uint32_t link = self->idem_heads[s_idem_bucket(full)];
    while (link) {
        s_idem_t *e = &self->idem[link - 1];
        link = e->next;
        if (s_idem_expired(e, now_ms))
            s_idem_drop(self, e);
        else if (!strcmp(e->key, full))
            return e;
    }
    return NULL;
}

/* Lets the oldest answered key of sc go for a newer one, when it was
 * answered at least ROUTER_TOKENS_IDEM_KEEP_MS ago (its answer time is its
 * expiry less the TTL). Returns whether a slot was freed. */
static bool s_idem_evict(router_tokens_t *self, s_idem_scope_t *sc, uint64_t now_ms)
{
    if (!sc || !sc->oldest)
        return false;
    s_idem_t *e = &self->idem[sc->oldest - 1];
    if (e->expires_ms + ROUTER_TOKENS_IDEM_KEEP_MS > now_ms + ROUTER_TOKENS_IDEM_TTL_MS)
        return false;
    if (!s_idem_expired(e, now_ms))
        router_metric_inc(self->m_idem_evicted, 1);
    s_idem_drop(self, e);
    return true;
}

/* The scope holding the most keys, NULL when none holds any. */
static s_idem_scope_t *s_idem_largest(router_tokens_t *self)
{
    s_idem_scope_t *best = NULL;
    for (size_t i = 0; i < S_IDEM_SCOPES; i++)
        if (self->idem_scopes[i].name[0] && (!best || self->idem_scopes[i].n > best->n))
            best = &self->idem_scopes[i];
    return best;
}

/* A new slot for full (busy), counted in its scope. When its scope holds
 * its share, or no slot is free after a sweep, an old key goes for it
 * when `evict` (a new request) allows, else NULL (as it is for the load at
 * start, which reads the newest keys first and stops at the bounds). */
static s_idem_t *s_idem_new(router_tokens_t *self, const char *full, uint64_t now_ms, bool evict)
{
    s_idem_scope_t *sc = s_idem_scope(self, full, false);
    if (sc && sc->n >= ROUTER_TOKENS_IDEM_SCOPE_MAX && !(evict && s_idem_evict(self, sc, now_ms)))
        return NULL;
    if (!self->idem_nfree && now_ms - self->idem_swept_ms >= S_IDEM_SWEEP_MS) {
        self->idem_swept_ms = now_ms;
        for (uint32_t i = 0; i < ROUTER_TOKENS_IDEM_MAX; i++)
            if (self->idem[i].key[0] && s_idem_expired(&self->idem[i], now_ms))
                s_idem_drop(self, &self->idem[i]);
    }
    if (!self->idem_nfree && !(evict && s_idem_evict(self, s_idem_largest(self), now_ms)))
        return NULL;
    if (!(sc = s_idem_scope(self, full, true)))
        return NULL;
    uint32_t idx = self->idem_free[--self->idem_nfree];
    s_idem_t *e = &self->idem[idx];
    memset(e, 0, sizeof *e);
    snprintf(e->key, sizeof e->key, "%s", full);
    e->busy = true;
    uint32_t *head = &self->idem_heads[s_idem_bucket(full)];
    e->next = *head;
    *head = idx + 1;
    sc->n++;
    s_idem_held(self);
    return e;
}

/* Records e's answer and puts it in its scope's list by expiry. */
static void s_idem_answer(router_tokens_t *self, s_idem_t *e, int status, const char *body,
                          uint64_t expires_ms)
{
    s_idem_scope_t *sc = s_idem_scope(self, e->key, false);
    if (sc && !e->busy)
        s_idem_age_unlink(self, sc, e);
    e->busy = false;
    e->status = status;
    snprintf(e->body, sizeof e->body, "%s", body);
    e->expires_ms = expires_ms;
    if (sc)
        s_idem_age_link(self, sc, e);
}

void router_tokens_use_metrics(router_tokens_t *self, router_metrics_t *metrics)
{
    self->m_idem_held = router_metrics_add(
        metrics, "kith_idempotency_keys", NULL, ROUTER_METRIC_GAUGE,
        "Idempotency keys held in memory (webhooks, external events, OpenClaw runs)");
    self->m_idem_evicted = router_metrics_add(
        metrics, "kith_idempotency_keys_evicted_total", NULL, ROUTER_METRIC_COUNTER,
        "Idempotency keys let go before their 24 h for newer ones: their scope was full");
    s_idem_held(self);
}

router_idem_t router_tokens_idem_begin(router_tokens_t *self, const char *scope, const char *key,
                                       size_t key_len, uint64_t now_ms, int *status,
                                       const char **body)
{
    char full[S_IDEM_FULLKEY_MAX];
    if (s_idem_key(full, scope, key, key_len) != 0)
        return ROUTER_IDEM_FULL;
    s_idem_t *e = s_idem_find(self, full, now_ms);
    if (e) {
        if (e->busy)
            return ROUTER_IDEM_BUSY;
        *status = e->status;
        *body = e->body;
        return ROUTER_IDEM_DONE;
    }
    return s_idem_new(self, full, now_ms, true) ? ROUTER_IDEM_NEW : ROUTER_IDEM_FULL;
}

int router_tokens_idem_finish(router_tokens_t *self, const char *scope, const char *key,
                              size_t key_len, int status, const char *body, uint64_t now_ms,
                              router_tokens_done_fn *done, void *ud)
{
    char full[S_IDEM_FULLKEY_MAX];
    s_idem_t *e = NULL;
    if (s_idem_key(full, scope, key, key_len) == 0)
        e = s_idem_find(self, full, now_ms);
    if (!e || strlen(body) >= ROUTER_TOKENS_IDEM_BODY_MAX) {
        if (e)
            s_idem_drop(self, e);
        errno = EINVAL;
        return -1;
    }
    s_job_t *j = s_job_new(S_JOB_IDEM, done, ud);
    if (!j) {
        s_idem_drop(self, e);
        errno = EAGAIN;
        return -1;
    }
    /* Answered from memory at once; the caller answers its own client
     * only once the row is durable. */
    s_idem_answer(self, e, status, body, now_ms + ROUTER_TOKENS_IDEM_TTL_MS);
    snprintf(j->key, sizeof j->key, "%s", full);
    j->a = (uint64_t) status;
    j->b = e->expires_ms;
    snprintf(j->body, sizeof j->body, "%s", body);
    if (s_submit(self, j) != 0) {
        s_idem_drop(self, e);
        return -1;
    }
    return 0;
}

/* Remembers an answer as it stands (settle, and the load at start). */
static int s_idem_put(router_tokens_t *self, const char *full, int status, const char *body,
                      uint64_t expires_ms, uint64_t now_ms)
{
    s_idem_t *e = s_idem_find(self, full, now_ms);
    if (!e && !(e = s_idem_new(self, full, now_ms, false))) {
        errno = ENOSPC;
        return -1;
    }
    s_idem_answer(self, e, status, body, expires_ms);
    return 0;
}

int router_tokens_idem_settle(router_tokens_t *self, const char *scope, const char *key,
                              size_t key_len, int status, const char *body, uint64_t expires_ms)
{
    char full[S_IDEM_FULLKEY_MAX];
    if (s_idem_key(full, scope, key, key_len) != 0 || strlen(body) >= ROUTER_TOKENS_IDEM_BODY_MAX ||
        !s_idem_status_ok(status)) {
        errno = EINVAL;
        return -1;
    }
    return s_idem_put(self, full, status, body, expires_ms, router_clock_wall_ms());
}

void router_tokens_idem_release(router_tokens_t *self, const char *scope, const char *key,
                                size_t key_len)
{
    char full[S_IDEM_FULLKEY_MAX];
    if (s_idem_key(full, scope, key, key_len) != 0)
        return;
    s_idem_t *e = s_idem_find(self, full, router_clock_wall_ms());
    if (e && e->busy)
        s_idem_drop(self, e);
}

/* ---------------------------------------------------------------- devices */

size_t router_tokens_device_count(const router_tokens_t *self)
{
    return self->ndevices;
}

bool router_tokens_device_get(const router_tokens_t *self, const char *id,
                              router_tokens_device_t *out)
{
    const s_device_t *e = s_device_find(self, id);
    if (!e || !e->durable)
        return false;
    *out = e->d;
    return true;
}

bool router_tokens_device_check(const router_tokens_t *self, const char *id,
                                const uint8_t public_key[32], const uint8_t token_hash[32])
{
    const s_device_t *e = s_device_find(self, id);
    if (!e || !e->durable || !e->has_token)
        return false;
    bool key = sodium_memcmp(e->d.public_key, public_key, 32) == 0;
    bool token = sodium_memcmp(e->token_hash, token_hash, 32) == 0;
    return key & token;
}

static bool s_device_id_ok(const char *id)
{
    size_t n = strnlen(id, ROUTER_TOKENS_DEVICE_ID_LEN + 1);
    if (n != ROUTER_TOKENS_DEVICE_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

int router_tokens_device_record(router_tokens_t *self, const router_tokens_device_t *d,
                                const uint8_t token_hash[32], uint64_t now_ms,
                                router_tokens_done_fn *done, void *ud)
{
    if (!s_device_id_ok(d->id) ||
        strnlen(d->client_id, sizeof d->client_id) >= sizeof d->client_id ||
        strnlen(d->client_mode, sizeof d->client_mode) >= sizeof d->client_mode ||
        strnlen(d->platform, sizeof d->platform) >= sizeof d->platform) {
        errno = EINVAL;
        return -1;
    }
    s_device_t *e = s_device_find(self, d->id);
    bool reserved = false;
    if (!e) {
        /* A new device takes a free slot now, so writes in flight count
         * against the bound; it is seen by get()/check() once durable. */
        for (size_t i = 0; i < ROUTER_TOKENS_DEVICES_MAX && !e; i++)
            if (!self->devices[i].d.id[0])
                e = &self->devices[i];
        if (!e) {
            errno = ENOSPC;
            return -1;
        }
        memset(e, 0, sizeof *e);
        memcpy(e->d.id, d->id, ROUTER_TOKENS_DEVICE_ID_LEN + 1);
        reserved = true;
    }
    s_job_t *j = s_job_new(S_JOB_DEVICE, done, ud);
    if (!j) {
        if (reserved)
            memset(e, 0, sizeof *e);
        errno = EAGAIN;
        return -1;
    }
    j->dev = *d;
    j->dev.first_seen_ms = e->durable ? e->d.first_seen_ms : now_ms;
    j->dev.last_seen_ms = now_ms;
    if (token_hash) {
        memcpy(j->hash, token_hash, 32);
        j->has_hash = true;
    }
    if (s_submit(self, j) != 0) { /* frees j */
        if (reserved)
            memset(e, 0, sizeof *e);
        return -1;
    }
    return 0;
}

uint64_t router_tokens_commit_failures(const router_tokens_t *self)
{
    return atomic_load(&((router_tokens_t *) self)->failures);
}
