/* router/state/inbox.c — bounded inbox with durable admission: a ring of entries
 * under one mutex, a list of entries not yet handed to the store, and a
 * store thread that takes that list by pointer swap and group-commits it
 * (with the ids' seen rows, and deletes of popped entries) in one SQLite
 * transaction. The mutex is held only for O(1) hand-overs, never across I/O. */
#include "router/state/inbox.h"
#include "router/state/dblock.h"
#include "router/state/dbcheck.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "router/clock.h"
#include "router/log.h"
#include "router/metrics.h"
#include "router/thread.h"

/* Expired seen rows are pruned at most this often, this many at a time. */
#define S_PRUNE_INTERVAL_MS 5000u
#define S_PRUNE_BATCH 4096
/* Stored floors beyond this are folded (oldest first) into one for all. */
#define S_FLOORS_MAX 65536
/* Retry backoff for a failing commit, and how often it is logged again. */
#define S_RETRY_MIN_MS 50u
#define S_RETRY_MAX_MS 1000u
#define S_FAIL_LOG_EVERY_MS 10000u
/* Failed attempts after a stop was asked before the store gives up (what
 * is left was never acked, so nothing acked is lost). */
#define S_STOP_RETRIES 5

typedef struct s_node s_node_t;

/* An idempotency key to write with its entry (router_inbox_admit_keyed). */
typedef struct {
    char scope[ROUTER_INBOX_IDEM_SCOPE_MAX + 1];
    char key[ROUTER_INBOX_IDEM_KEY_MAX + 1];
    int status;
    char body[ROUTER_INBOX_IDEM_BODY_MAX];
    uint64_t expires_ms;
} s_idem_row_t;

struct s_node {
    router_inbox_entry_t e;   /* the entry; e.frame owned here until popped */
    s_node_t *next;           /* next on the unwritten (or parked) list */
    bool remember;            /* write a seen row with it */
    router_inbox_seen_t seen; /* what that row holds */
    s_idem_row_t *idem;       /* a key row to write with it, or NULL; owned */
    bool withdraw;            /* withdrawn while its commit ran: drop it if that fails */
    bool in_doubt;            /* a COMMIT holding it failed with its frames perhaps in the
                               * WAL: only a commit of it settles it, never a withdrawal */
};

struct router_inbox_t {
    pthread_mutex_t mu;         /* guards everything below but the atomics and db */
    pthread_cond_t changed;     /* entries became durable, or work arrived */
    s_node_t **ring;            /* held entries in admission order */
    size_t ring_cap;            /* slots in ring (≥ capacity) */
    size_t head;                /* oldest held entry */
    size_t count;               /* held entries (leased or not) */
    size_t leased;              /* the first `leased` held entries are taken, turns running */
    size_t capacity;            /* admission bound on count */
    size_t bytes;               /* frame bytes held */
    size_t max_bytes;           /* admission bound on bytes */
    uint64_t next_seq;          /* sequence for the next admission */
    s_node_t *pend_head;        /* admitted, not yet taken by the store thread */
    s_node_t *pend_tail;
    size_t npend;               /* nodes on that list */
    size_t unwritten;           /* held entries not yet durable */
    uint64_t inflight_top;      /* highest seq of the commit running now, 0: none */
    s_node_t *parked;           /* withdrawn during a commit that failed: out of the ring,
                                 * freed when router_inbox_withdraw asks again */
    uint64_t *deletes;          /* popped seqs to delete from disk */
    size_t ndeletes, deletes_cap;
    _Atomic uint64_t durable_seq; /* all seq ≤ this are durable */
    _Atomic uint64_t failures;  /* commits that failed */
    bool on_flush;              /* commit_on_flush: admissions wait for a flush */
    bool flush_req;             /* a flush came since the store thread last took work */
    bool sync_req;              /* router_inbox_sync waits: commit without gathering */
    uint64_t admitted;          /* admissions so far, for the store thread's pace */
    _Atomic bool dirty;         /* admitted or popped since the last flush */

    char *session;              /* owner session name */
    pthread_mutex_t db_mu;      /* the connection: store thread and seen_load */
    sqlite3 *db;                /* NULL: memory only */
    char last_err[160];         /* why the last commit failed (under db_mu) */
    router_dblock_t *wlock;     /* state.db's writer queue, shared with sessions */
    sqlite3_stmt *insert;       /* INSERT one row */
    sqlite3_stmt *delete;       /* DELETE one row by seq */
    sqlite3_stmt *seen;         /* remember one id */
    sqlite3_stmt *floor;        /* raise one sender's floor */
    sqlite3_stmt *idem;         /* store one idempotency key */
    pthread_t thread;           /* the store thread, when db */
    bool thread_started;
    bool stopping;              /* store thread: finish and exit */
    router_inbox_durable_fn *on_durable;
    void *ud;
    router_metric_t *m_commits;   /* kith_inbox_commits_total, or NULL */
    router_metric_t *m_committed; /* kith_inbox_committed_total, or NULL */
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
    " frame BLOB NOT NULL);"
    /* Every admitted (sender, id), kept until expires_ms (WIRE §6.1). */
    "CREATE TABLE IF NOT EXISTS seen ("
    " sender BLOB NOT NULL,"
    " id BLOB NOT NULL,"
    " seq INTEGER NOT NULL,"
    " v7_ms INTEGER NOT NULL,"
    " admitted_ms INTEGER NOT NULL,"
    " expires_ms INTEGER NOT NULL,"
    " PRIMARY KEY (sender, id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS seen_expiry ON seen(expires_ms);"
    "CREATE INDEX IF NOT EXISTS seen_sender_seq ON seen(sender, seq);"
    /* Per-sender v7 floor; the all-zero sender holds the floor for all. */
    "CREATE TABLE IF NOT EXISTS replay_floor ("
    " sender BLOB PRIMARY KEY,"
    " floor_ms INTEGER NOT NULL);"
    /* Gateway idempotency keys, written with their entries (WIRE §17.4). */
    "CREATE TABLE IF NOT EXISTS inbox_idempotency ("
    " scope TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " status INTEGER NOT NULL,"
    " body TEXT NOT NULL,"
    " expires_ms INTEGER NOT NULL,"
    " PRIMARY KEY (scope, key)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS inbox_idempotency_expiry ON inbox_idempotency(expires_ms);"
    "CREATE INDEX IF NOT EXISTS inbox_idempotency_scope_expiry"
    " ON inbox_idempotency(scope, expires_ms);";

/* ---------------------------------------------------------------- the ring */

static s_node_t *s_at(const router_inbox_t *self, size_t i)
{
    return self->ring[(self->head + i) % self->ring_cap];
}

/* Removes ring position idx (0 = head), keeping the order: shifts the
 * shorter side by one (O(idx) for a turn's entry among the leased few; it
 * used to move the whole backlog, ~1 ms per ended turn with a million
 * entries held). Caller holds mu. Returns the node. */
static s_node_t *s_ring_cut(router_inbox_t *self, size_t idx)
{
    s_node_t *n = s_at(self, idx);
    if (idx < self->count - 1 - idx) {
        /* Near the head (a turn's entry, among the leased): move the few
         * before it up and advance the head, not the backlog behind it. */
        for (size_t i = idx; i > 0; i--)
            self->ring[(self->head + i) % self->ring_cap] = s_at(self, i - 1);
        self->ring[self->head] = NULL;
        self->head = (self->head + 1) % self->ring_cap;
    } else {
        for (size_t i = idx; i + 1 < self->count; i++)
            self->ring[(self->head + i) % self->ring_cap] = s_at(self, i + 1);
        self->ring[(self->head + self->count - 1) % self->ring_cap] = NULL;
    }
    self->count--;
    self->bytes -= n->e.frame_len;
    return n;
}

/* Takes node n, held and not yet durable, out of the ring (it was never
 * written: no delete). Binary search: the ring is in seq order. Caller
 * holds mu. */
static void s_ring_drop(router_inbox_t *self, const s_node_t *n)
{
    size_t lo = 0, hi = self->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s_at(self, mid)->e.seq < n->e.seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < self->count && s_at(self, lo) == n)
        (void) s_ring_cut(self, lo);
    self->unwritten--;
    pthread_cond_broadcast(&self->changed); /* router_inbox_sync counts unwritten */
}

static void s_node_free(s_node_t *n)
{
    if (!n)
        return;
    free(n->e.frame);
    free(n->idem);
    free(n);
}

/* ---------------------------------------------------------------- the store */

static int s_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    return sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK ? 0 : -1;
}

/* The columns this build writes, per table (NULL-terminated lists). */
static const char *const s_inbox_cols[] = {"seq", "session", "envelope_id", "sender", "kind",
                                           "received_ms", "frame", NULL};
static const char *const s_seen_cols[] = {"sender", "id", "seq", "v7_ms", "admitted_ms",
                                          "expires_ms", NULL};
static const char *const s_floor_cols[] = {"sender", "floor_ms", NULL};
static const char *const s_idem_cols[] = {"scope", "key", "status", "body", "expires_ms", NULL};

static int s_db_open(router_inbox_t *self, const char *path, char *err, size_t errcap)
{
    if (sqlite3_open_v2(path, &self->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                             SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK)
        goto fail;
    /* Read-only: the schema below writes nothing when the tables are
     * there, and every commit would fail for ever, every admission left
     * un-acked. */
    if (router_dbcheck_writable(self->db, "inbox database ", path, err, errcap) != 0)
        return -1;
    sqlite3_busy_timeout(self->db, 5000);
    if (sqlite3_exec(self->db, s_schema, NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    static const router_dbcheck_table_t tables[] = {
        {"inbox", s_inbox_cols},
        {"seen", s_seen_cols},
        {"replay_floor", s_floor_cols},
        {"inbox_idempotency", s_idem_cols},
    };
    if (router_dbcheck_columns(self->db, tables, sizeof tables / sizeof *tables,
                               "inbox database ", path, err, errcap) != 0)
        return -1;
    self->wlock = router_dblock_get(path);
    if (s_prepare(self->db,
                  "INSERT INTO inbox(seq,session,envelope_id,sender,kind,received_ms,frame)"
                  " VALUES(?,?,?,?,?,?,?)", &self->insert) ||
        s_prepare(self->db, "DELETE FROM inbox WHERE seq=?", &self->delete) ||
        s_prepare(self->db,
                  "INSERT OR REPLACE INTO seen(sender,id,seq,v7_ms,admitted_ms,expires_ms)"
                  " VALUES(?,?,?,?,?,?)", &self->seen) ||
        s_prepare(self->db,
                  "INSERT INTO replay_floor(sender,floor_ms) VALUES(?,?) ON CONFLICT(sender)"
                  " DO UPDATE SET floor_ms=MAX(floor_ms,excluded.floor_ms)", &self->floor) ||
        s_prepare(self->db,
                  "INSERT OR REPLACE INTO inbox_idempotency(scope,key,status,body,expires_ms)"
                  " VALUES(?,?,?,?,?)", &self->idem))
        goto fail;
    return 0;
fail:
    if (self->db)
        router_dbcheck_error(self->db, "inbox database ", path, "", err, errcap);
    else
        snprintf(err, errcap, "inbox database %s: cannot open", path);
    return -1;
}

/* Why a load at start stopped: SQLite's reason when the database failed,
 * else `why` (the load's own allocation, or its caller refusing a row),
 * which is no fault of the file: SQLite's message for a statement that
 * had a row waiting ("another row available") blamed it. */
static void s_load_error(sqlite3 *db, const char *what, const char *why, char *err,
                         size_t errcap)
{
    char doing[96];
    if (!why) {
        snprintf(doing, sizeof doing, "cannot read the %s: ", what);
        router_dbcheck_error(db, "inbox database ", NULL, doing, err, errcap);
        return;
    }
    const char *path = sqlite3_db_filename(db, "main");
    snprintf(err, errcap, "inbox database %s: the %s read from it could not be held: %s",
             path && *path ? path : "state.db", what, why);
}

/* Reloads what a previous run admitted and nobody consumed. */
static int s_db_reload(router_inbox_t *self, char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    int rc = -1;
    const char *why = NULL; /* the reload's own failure, not the database's */
    if (sqlite3_prepare_v2(self->db, "SELECT COALESCE(MAX(seq),0) FROM inbox", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto done;
    self->next_seq = (uint64_t) sqlite3_column_int64(st, 0) + 1;
    sqlite3_finalize(st);
    st = NULL;
    /* Seen rows carry seqs too: never reuse one (the loader orders by it). */
    if (sqlite3_prepare_v2(self->db, "SELECT COALESCE(MAX(seq),0) FROM seen", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto done;
    if ((uint64_t) sqlite3_column_int64(st, 0) + 1 > self->next_seq)
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
            if (!ring) {
                why = "out of memory";
                goto done;
            }
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
            why = "out of memory";
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
        self->ring[(self->head + self->count) % self->ring_cap] = n;
        self->count++;
        self->bytes += len;
    }
    rc = (step == SQLITE_DONE) ? 0 : -1;
done:
    if (rc != 0)
        s_load_error(self->db, "entries", why, err, errcap);
    sqlite3_finalize(st);
    /* Everything reloaded is durable: seq ≤ durable_seq. */
    atomic_store(&self->durable_seq, self->next_seq - 1);
    return rc;
}

static int s_step_done(sqlite3_stmt *st)
{
    return sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
}

/* Writes one node: the entry, its seen row and its sender's floor. */
static int s_db_write(router_inbox_t *self, const s_node_t *n)
{
    const router_inbox_entry_t *e = &n->e;
    sqlite3_reset(self->insert);
    sqlite3_bind_int64(self->insert, 1, (sqlite3_int64) e->seq);
    sqlite3_bind_text(self->insert, 2, self->session, -1, SQLITE_STATIC);
    sqlite3_bind_blob(self->insert, 3, e->id, 16, SQLITE_STATIC);
    sqlite3_bind_blob(self->insert, 4, e->from, 32, SQLITE_STATIC);
    sqlite3_bind_text(self->insert, 5, e->kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(self->insert, 6, (sqlite3_int64) e->received_ms);
    sqlite3_bind_blob(self->insert, 7, e->frame, (int) e->frame_len, SQLITE_STATIC);
    if (s_step_done(self->insert) != 0)
        return -1;
    if (n->idem) {
        /* A live row with this key cannot exist: the gateway admits a key
         * only when it holds none (an expired one not yet pruned is
         * replaced). */
        sqlite3_reset(self->idem);
        sqlite3_bind_text(self->idem, 1, n->idem->scope, -1, SQLITE_STATIC);
        sqlite3_bind_text(self->idem, 2, n->idem->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(self->idem, 3, n->idem->status);
        sqlite3_bind_text(self->idem, 4, n->idem->body, -1, SQLITE_STATIC);
        sqlite3_bind_int64(self->idem, 5, (sqlite3_int64) n->idem->expires_ms);
        if (s_step_done(self->idem) != 0)
            return -1;
    }
    if (!n->remember)
        return 0;
    sqlite3_reset(self->seen);
    sqlite3_bind_blob(self->seen, 1, e->from, 32, SQLITE_STATIC);
    sqlite3_bind_blob(self->seen, 2, e->id, 16, SQLITE_STATIC);
    sqlite3_bind_int64(self->seen, 3, (sqlite3_int64) e->seq);
    sqlite3_bind_int64(self->seen, 4, (sqlite3_int64) n->seen.v7_ms);
    sqlite3_bind_int64(self->seen, 5, (sqlite3_int64) e->received_ms);
    sqlite3_bind_int64(self->seen, 6, (sqlite3_int64) n->seen.expires_ms);
    if (s_step_done(self->seen) != 0)
        return -1;
    if (!n->seen.floor_ms)
        return 0;
    sqlite3_reset(self->floor);
    sqlite3_bind_blob(self->floor, 1, e->from, 32, SQLITE_STATIC);
    sqlite3_bind_int64(self->floor, 2, (sqlite3_int64) n->seen.floor_ms);
    return s_step_done(self->floor);
}

/* After a COMMIT that failed (its fsync, most often), the batch's frames,
 * commit frame included, may be in the WAL file: SQLite only did not
 * publish them, and a crash before another commit overwrites them lets the
 * restart's WAL recovery find the batch committed. A checkpoint that
 * truncates the WAL removes them (and needs no fsync when the published
 * frames were already checkpointed). Returns true when it did: nothing of
 * the batch can come back. Caller holds db_mu and the writer lock. */
static bool s_db_scrub(router_inbox_t *self)
{
    return sqlite3_wal_checkpoint_v2(self->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL) ==
           SQLITE_OK;
}

/* One transaction: insert the listed nodes, delete the given seqs.
 * Returns 0; -1 when it failed and nothing of it can reach the disk; -2
 * when its COMMIT failed and the WAL may still hold it (s_db_scrub). */
static int s_db_batch(router_inbox_t *self, const s_node_t *list, const uint64_t *dels, size_t nd)
{
    int rc = -1;
    router_dblock_enter(self->wlock, ROUTER_DBLOCK_URGENT);
    if (sqlite3_exec(self->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(self->last_err, sizeof self->last_err, "%s", sqlite3_errmsg(self->db));
        router_dblock_leave(self->wlock);
        return -1;
    }
    for (const s_node_t *n = list; n; n = n->next)
        if (s_db_write(self, n) != 0)
            goto fail;
    for (size_t i = 0; i < nd; i++) {
        sqlite3_reset(self->delete);
        sqlite3_bind_int64(self->delete, 1, (sqlite3_int64) dels[i]);
        if (s_step_done(self->delete) != 0)
            goto fail;
    }
    if (sqlite3_exec(self->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        /* A full disk refused a write: the commit frame, written last,
         * is not there. Anything else (an fsync) may have left it. */
        if (sqlite3_extended_errcode(self->db) != SQLITE_FULL)
            rc = -2;
        goto fail;
    }
    router_dblock_leave(self->wlock);
    router_metric_inc(self->m_commits, 1);
    return 0;
fail:
    /* ROLLBACK resets the connection's message: keep the failure's. */
    snprintf(self->last_err, sizeof self->last_err, "%s", sqlite3_errmsg(self->db));
    sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
    if (rc == -2 && s_db_scrub(self))
        rc = -1;
    router_dblock_leave(self->wlock);
    return rc;
}

/* Runs one statement with up to two integer parameters (binding one the
 * statement lacks is a harmless SQLITE_RANGE); *out gets the first column
 * of the first row, -1 when there is none. */
static int s_exec_i64(sqlite3 *db, const char *sql, int64_t a, int64_t b, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    int rc = sqlite3_step(st);
    if (out)
        *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* Deletes up to about S_PRUNE_BATCH expired seen rows in one transaction,
 * raising each sender's floor to the newest v7 time deleted (so a clock
 * stepped back never re-opens them), and keeps the floors table bounded.
 * Returns the rows deleted, or -1. */
static int s_db_prune(router_inbox_t *self, uint64_t now_ms)
{
    int64_t cutoff = -1, n = 0;
    router_dblock_enter(self->wlock, ROUTER_DBLOCK_URGENT);
    if (sqlite3_exec(self->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        router_dblock_leave(self->wlock);
        return -1;
    }
    /* The batch: everything expiring at or before the S_PRUNE_BATCH-th. */
    if (s_exec_i64(self->db,
                   "SELECT expires_ms FROM seen WHERE expires_ms < ?1 ORDER BY expires_ms"
                   " LIMIT 1 OFFSET ?2", (int64_t) now_ms, S_PRUNE_BATCH - 1, &cutoff) != 0)
        goto fail;
    if (cutoff < 0)
        cutoff = (int64_t) now_ms - 1;
    if (s_exec_i64(self->db,
                   "INSERT INTO replay_floor(sender,floor_ms)"
                   " SELECT sender, MAX(v7_ms) FROM seen WHERE expires_ms <= ?1 AND v7_ms > 0"
                   " GROUP BY sender"
                   " ON CONFLICT(sender) DO UPDATE SET floor_ms=MAX(floor_ms,excluded.floor_ms)",
                   cutoff, 0, NULL) != 0 ||
        s_exec_i64(self->db, "DELETE FROM seen WHERE expires_ms <= ?1", cutoff, 0,
                   NULL) != 0)
        goto fail;
    n = sqlite3_changes(self->db);
    /* Expired idempotency keys, in batches of the same size. */
    if (s_exec_i64(self->db,
                   "DELETE FROM inbox_idempotency WHERE (scope, key) IN (SELECT scope, key"
                   " FROM inbox_idempotency WHERE expires_ms < ?1 LIMIT ?2)",
                   (int64_t) now_ms, S_PRUNE_BATCH, NULL) != 0)
        goto fail;
    if (sqlite3_changes(self->db) > n)
        n = sqlite3_changes(self->db);
    /* Past the newest ROUTER_INBOX_IDEM_ROWS_PER_SCOPE keys of a scope, rows
     * are dead weight: the gateway's memory, which loads the newest first,
     * holds no more, and lets older keys go for newer ones (WIRE §17.4).
     * The scopes are found by seeking the primary key, each one's bound by
     * walking its (scope, expiry) index. */
    if (s_exec_i64(self->db,
                   "WITH RECURSIVE sc(s) AS (SELECT MIN(scope) FROM inbox_idempotency"
                   " UNION ALL SELECT (SELECT MIN(scope) FROM inbox_idempotency WHERE scope > s)"
                   " FROM sc WHERE s IS NOT NULL),"
                   " cut(s, c) AS (SELECT s, (SELECT expires_ms FROM inbox_idempotency"
                   " WHERE scope = s ORDER BY expires_ms DESC LIMIT 1 OFFSET ?1)"
                   " FROM sc WHERE s IS NOT NULL)"
                   " DELETE FROM inbox_idempotency WHERE (scope, key) IN (SELECT i.scope, i.key"
                   " FROM cut JOIN inbox_idempotency i ON i.scope = cut.s AND i.expires_ms < cut.c"
                   " LIMIT ?2)",
                   ROUTER_INBOX_IDEM_ROWS_PER_SCOPE - 1, S_PRUNE_BATCH, NULL) != 0)
        goto fail;
    if (sqlite3_changes(self->db) > n)
        n = sqlite3_changes(self->db);
    int64_t floors = 0;
    if (s_exec_i64(self->db, "SELECT COUNT(*) FROM replay_floor", 0, 0, &floors) !=
        0)
        goto fail;
    if (floors > S_FLOORS_MAX) {
        /* Fold the oldest floors into the one for all senders: they lie far
         * in the past, so refusing older v7 ids from anyone costs nothing. */
        int64_t fold = -1;
        if (s_exec_i64(self->db,
                       "SELECT floor_ms FROM replay_floor WHERE sender != zeroblob(32)"
                       " ORDER BY floor_ms LIMIT 1 OFFSET ?1",
                       floors - S_FLOORS_MAX / 2, 0, &fold) != 0 ||
            fold < 0 ||
            s_exec_i64(self->db,
                       "INSERT INTO replay_floor(sender,floor_ms) VALUES(zeroblob(32), ?1)"
                       " ON CONFLICT(sender) DO UPDATE SET floor_ms=MAX(floor_ms,excluded.floor_ms)",
                       fold, 0, NULL) != 0 ||
            s_exec_i64(self->db,
                       "DELETE FROM replay_floor WHERE sender != zeroblob(32) AND floor_ms <= ?1",
                       fold, 0, NULL) != 0)
            goto fail;
    }
    if (sqlite3_exec(self->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    router_dblock_leave(self->wlock);
    router_metric_inc(self->m_commits, 1);
    return (int) n;
fail:
    sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
    router_dblock_leave(self->wlock);
    return -1;
}

/* Logs a failing commit once, then at most every S_FAIL_LOG_EVERY_MS with
 * the count since the last line, so a broken disk is seen but never floods. */
typedef struct {
    uint64_t failing;     /* consecutive failures */
    uint64_t unreported;  /* failures since the last line */
    uint64_t last_log_ms; /* monotonic time of the last line */
    uint32_t delay_ms;    /* current backoff */
} s_failing_t;

static void s_fail_note(router_inbox_t *self, s_failing_t *f, size_t pending)
{
    uint64_t now = router_clock_mono_ms();
    atomic_fetch_add(&self->failures, 1);
    f->failing++;
    f->unreported++;
    if (f->failing == 1 || now - f->last_log_ms >= S_FAIL_LOG_EVERY_MS) {
        pthread_mutex_lock(&self->db_mu);
        const char *why = self->last_err;
        ROUTER_LOG(ROUTER_LOG_ERROR, "inbox",
                   "commit failed (%llu failure%s since the last report, %zu admissions waiting,"
                   " not acked): %s; retrying",
                   (unsigned long long) f->unreported, f->unreported == 1 ? "" : "s", pending,
                   why ? why : "?");
        pthread_mutex_unlock(&self->db_mu);
        f->unreported = 0;
        f->last_log_ms = now;
    }
    f->delay_ms = f->delay_ms ? f->delay_ms * 2 : S_RETRY_MIN_MS;
    if (f->delay_ms > S_RETRY_MAX_MS)
        f->delay_ms = S_RETRY_MAX_MS;
}

static void s_fail_clear(s_failing_t *f)
{
    if (f->failing)
        ROUTER_LOG(ROUTER_LOG_INFO, "inbox", "commits succeed again after %llu failure%s",
                   (unsigned long long) f->failing, f->failing == 1 ? "" : "s");
    *f = (s_failing_t){0};
}

/* A commit of `list` failed: its nodes go back in front of the unwritten
 * list in order, except those withdrawn while it ran, which leave the ring
 * for the parked list — unless the WAL may hold that commit (`doubt`):
 * then every node of it is in doubt and is retried, withdrawn or not, so
 * that what router_inbox_withdraw answers stays true after a crash.
 * Caller holds mu. */
static void s_requeue(router_inbox_t *self, s_node_t *list, bool doubt)
{
    s_node_t *back = NULL, *last = NULL;
    size_t nback = 0;
    for (s_node_t *n = list, *next; n; n = next) {
        next = n->next;
        if (doubt)
            n->in_doubt = true;
        if (n->in_doubt)
            n->withdraw = false; /* asking again answers COMMITTING until it commits */
        if (n->withdraw) {
            s_ring_drop(self, n);
            n->next = self->parked;
            self->parked = n;
            continue;
        }
        n->next = NULL;
        if (last)
            last->next = n;
        else
            back = n;
        last = n;
        nback++;
    }
    if (!back)
        return;
    last->next = self->pend_head;
    if (!self->pend_head)
        self->pend_tail = last;
    self->pend_head = back;
    self->npend += nback;
}

/* How fast admissions arrive, as the store thread sees it from one take
 * of work to the next: what group commit needs to know whether waiting
 * can fill a batch. */
typedef struct {
    uint64_t gap_us;        /* smoothed µs between admissions, 0: not known yet */
    uint64_t taken_at_us;   /* when work was last taken */
    uint64_t admitted_then; /* admissions counted at that take */
    unsigned no_gather;     /* takes to go without gathering (a gathering fell short) */
} s_pace_t;

/* After a gathering that fell far short (half a batch or less), the takes
 * that commit at once before the next try: senders whose windows are
 * smaller than a batch (16 HTTP clients, one webhook each in flight) would
 * otherwise pay the stall wait on every commit; a saturated router whose
 * admissions come in bursts falls short by less, and goes on gathering. */
#define S_GATHER_COOLDOWN 16u

/* Deletes alone (no admission waiting) are committed once this many wait,
 * or this long after the first: a commit (an fsync) of nothing but turns
 * taken would otherwise follow every few turns. A delete lost in a crash
 * only means the entry's turn runs again after the restart (at least once,
 * WIRE §14.10). */
#define S_DELETES_BATCH 256u
#define S_DELETES_MAX_MS 20u

/* One more sample of the gap between admissions, at a take of work. A gap
 * longer than the gathering budget only says "too slow to gather", so it
 * counts as that budget: an idle minute must not take minutes to forget. */
static void s_pace_note(s_pace_t *pace, uint64_t admitted, uint64_t now_us)
{
    uint64_t n = admitted - pace->admitted_then;
    if (pace->taken_at_us && n) {
        uint64_t gap = (now_us - pace->taken_at_us) / n;
        if (gap > ROUTER_INBOX_GATHER_MAX_US)
            gap = ROUTER_INBOX_GATHER_MAX_US;
        pace->gap_us = pace->gap_us ? (3 * pace->gap_us + gap) / 4 : gap;
    }
    pace->taken_at_us = now_us;
    pace->admitted_then = admitted;
    if (pace->no_gather)
        pace->no_gather--;
}

/* Waits, under mu, until the store thread should take work (or prune, or
 * stop). Without commit_on_flush any work is taken at once. With it, work
 * waits for the loop's flush, for ROUTER_INBOX_BATCH_MIN admissions, or
 * ROUTER_INBOX_FLUSH_MAX_MS; and a flush is held back, gathering, while
 * admissions keep arriving fast enough to make up ROUTER_INBOX_BATCH_MIN
 * within ROUTER_INBOX_GATHER_MAX_US of the first, so that a busy router
 * puts a full batch behind each fsync (WIRE §14.10). Gathering ends when
 * none arrives for ROUTER_INBOX_GATHER_STALL_US; one that fell short so
 * is not tried again for S_GATHER_COOLDOWN takes. */
static void s_store_wait(router_inbox_t *self, s_pace_t *pace, uint64_t next_prune_ms)
{
    uint64_t since = 0;   /* µs: work first seen waiting */
    uint64_t grew_at = 0; /* µs: npend last seen growing */
    size_t seen = 0;
    bool gathering = false; /* a flush is being held back */
    while (!self->stopping) {
        uint64_t now = router_clock_mono_us();
        uint64_t until = next_prune_ms * 1000u;
        if (now >= until)
            return;
        if (self->pend_head || self->ndeletes) {
            if (!self->on_flush || self->sync_req || self->npend >= ROUTER_INBOX_BATCH_MIN)
                return;
            if (!since)
                since = now;
            if (!grew_at || self->npend != seen) {
                seen = self->npend;
                grew_at = now;
            }
            uint64_t end;
            if (!self->pend_head) {
                /* Only deletes (turns taken): nobody waits for them, so they
                 * ride with the next admissions' commit, or go alone once
                 * S_DELETES_BATCH wait or S_DELETES_MAX_MS have passed. */
                end = since + S_DELETES_MAX_MS * 1000u;
                if (self->ndeletes >= S_DELETES_BATCH || now >= end)
                    return;
            } else if (self->flush_req) {
                end = since + ROUTER_INBOX_GATHER_MAX_US;
                uint64_t need = pace->gap_us * (ROUTER_INBOX_BATCH_MIN - self->npend);
                uint64_t stall = grew_at + ROUTER_INBOX_GATHER_STALL_US;
                if (!pace->gap_us || pace->no_gather || now + need > end || now >= stall) {
                    /* It waited and fell far short (a sender window, not a
                     * pause in a burst): commit at once a while. */
                    if (gathering && self->npend <= ROUTER_INBOX_BATCH_MIN / 2)
                        pace->no_gather = S_GATHER_COOLDOWN;
                    return;
                }
                gathering = true;
                if (stall < end)
                    end = stall;
            } else {
                end = since + ROUTER_INBOX_FLUSH_MAX_MS * 1000u;
            }
            if (now >= end)
                return;
            if (end < until)
                until = end;
        }
        struct timespec dl = router_clock_deadline_us(CLOCK_REALTIME, until - now);
        pthread_cond_timedwait(&self->changed, &self->mu, &dl);
    }
}

/* The store thread: each pass takes everything admitted or popped since the
 * last one — by swapping list and array pointers, O(1) under the lock — and
 * commits it in one transaction (group commit). A failed commit keeps its
 * batch and retries it, with what arrived since, after a backoff; entries
 * stay un-acked until it succeeds, so a full or broken disk shows up as
 * senders timing out, never as acked-and-lost. */
static void *s_store_main(void *arg)
{
    router_inbox_t *self = arg;
    router_thread_name("kith-store");
    s_node_t *list = NULL, *tail = NULL; /* taken, not yet committed */
    size_t nlist = 0;
    uint64_t *dels = NULL;               /* taken deletes, not yet committed */
    size_t nd = 0, dels_cap = 0;
    s_failing_t fail = {0};
    s_pace_t pace = {0};
    uint64_t next_prune = router_clock_mono_ms() + S_PRUNE_INTERVAL_MS;

    pthread_mutex_lock(&self->mu);
    for (;;) {
        if (!list && !nd)
            s_store_wait(self, &pace, next_prune);
        self->flush_req = self->sync_req = false;
        if (self->stopping && !self->pend_head && self->ndeletes == 0 && !list && !nd)
            break; /* nothing left */

        /* Take what is new: the unwritten list whole, the deletes by swap. */
        bool starved = false; /* deletes wait: no memory to take them */
        if (self->pend_head) {
            s_pace_note(&pace, self->admitted, router_clock_mono_us());
            if (tail)
                tail->next = self->pend_head;
            else
                list = self->pend_head;
            tail = self->pend_tail;
            nlist += self->npend;
            self->pend_head = self->pend_tail = NULL;
            self->npend = 0;
        }
        if (self->ndeletes) {
            /* A swap must not hand back a smaller array: the leases'
             * deletes are reserved in it (s_delete_room). */
            if (nd == 0 && dels_cap >= self->deletes_cap) {
                uint64_t *t = dels;
                size_t tc = dels_cap;
                dels = self->deletes;
                dels_cap = self->deletes_cap;
                nd = self->ndeletes;
                self->deletes = t;
                self->deletes_cap = tc;
                self->ndeletes = 0;
            } else {
                /* Retrying a failed batch, or the array here is the smaller:
                 * append (only on these slow paths), growing to the
                 * loop's size so that the next pass swaps again. */
                size_t need = nd + self->ndeletes;
                if (need < self->deletes_cap)
                    need = self->deletes_cap;
                uint64_t *g = need <= dels_cap ? dels : realloc(dels, need * sizeof *dels);
                if (!g) {
                    starved = true; /* they wait for the next pass */
                } else {
                    if (need > dels_cap)
                        dels_cap = need;
                    dels = g;
                    memcpy(dels + nd, self->deletes, self->ndeletes * sizeof *dels);
                    nd += self->ndeletes;
                    self->ndeletes = 0;
                }
            }
        }
        bool stopping = self->stopping;
        if (starved && !list && !nd) {
            /* Nothing to commit: wait for memory rather than spin (a lost
             * delete at a stop only runs its turn again, WIRE §14.10). */
            if (stopping)
                break;
            pthread_mutex_unlock(&self->mu);
            nanosleep(&(struct timespec){.tv_nsec = S_RETRY_MIN_MS * 1000000L}, NULL);
            pthread_mutex_lock(&self->mu);
            continue;
        }
        self->inflight_top = tail ? tail->e.seq : 0; /* router_inbox_withdraw waits for it */
        pthread_mutex_unlock(&self->mu);

        int rc = 0;
        uint64_t top = 0;
        if (list || nd) {
            pthread_mutex_lock(&self->db_mu);
            rc = s_db_batch(self, list, dels, nd);
            pthread_mutex_unlock(&self->db_mu);
            if (rc == 0)
                top = tail ? tail->e.seq : 0;
        }
        if (rc == 0) {
            s_fail_clear(&fail);
            uint64_t now = router_clock_mono_ms();
            if (now >= next_prune) {
                pthread_mutex_lock(&self->db_mu);
                int pruned = s_db_prune(self, router_clock_wall_ms());
                pthread_mutex_unlock(&self->db_mu);
                /* A full batch: more may wait; otherwise rest a while. */
                next_prune = now + (pruned >= S_PRUNE_BATCH ? 100 : S_PRUNE_INTERVAL_MS);
            }
        }

        pthread_mutex_lock(&self->mu);
        self->inflight_top = 0;
        if (rc != 0) {
            /* The batch goes back to the front of the unwritten list, where
             * router_inbox_withdraw can take entries back; those withdrawn
             * while it ran are parked instead, never retried. */
            s_requeue(self, list, rc == -2);
            list = tail = NULL;
            nlist = 0;
            s_fail_note(self, &fail, self->npend);
            if (stopping && fail.failing >= S_STOP_RETRIES) {
                ROUTER_LOG(ROUTER_LOG_ERROR, "inbox",
                           "stopping with %zu admissions not written (never acked)", self->npend);
                break;
            }
            pthread_mutex_unlock(&self->mu);
            nanosleep(&(struct timespec){.tv_sec = fail.delay_ms / 1000,
                                         .tv_nsec = (long) (fail.delay_ms % 1000) * 1000000L},
                      NULL);
            pthread_mutex_lock(&self->mu);
            continue;
        }
        /* Committed: the taken nodes are durable (pop tests seq ≤ durable_seq). */
        size_t written = nlist;
        list = tail = NULL;
        nlist = 0;
        nd = 0;
        if (written) {
            router_metric_inc(self->m_committed, written);
            self->unwritten -= written;
            atomic_store(&self->durable_seq, top);
            pthread_cond_broadcast(&self->changed);
            if (self->on_durable) {
                pthread_mutex_unlock(&self->mu);
                self->on_durable(self->ud);
                pthread_mutex_lock(&self->mu);
            }
        }
    }
    pthread_mutex_unlock(&self->mu);
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
    pthread_mutex_init(&self->db_mu, NULL);
    pthread_cond_init(&self->changed, NULL);
    self->capacity = opts->capacity ? opts->capacity : ROUTER_INBOX_CAPACITY;
    self->max_bytes = opts->max_bytes ? opts->max_bytes : ROUTER_INBOX_MAX_BYTES;
    self->ring_cap = self->capacity;
    self->ring = calloc(self->ring_cap, sizeof *self->ring);
    self->session = strdup(opts->session ? opts->session : "comms");
    self->on_durable = opts->on_durable;
    self->ud = opts->ud;
    self->on_flush = opts->commit_on_flush;
    self->next_seq = 1;
    if (opts->metrics) {
        self->m_commits = router_metrics_add(opts->metrics, "kith_inbox_commits_total", NULL,
                                             ROUTER_METRIC_COUNTER,
                                             "Inbox transactions committed (one fsync each).");
        self->m_committed = router_metrics_add(opts->metrics, "kith_inbox_committed_total", NULL,
                                               ROUTER_METRIC_COUNTER,
                                               "Inbox entries made durable by those commits.");
    }
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
    sqlite3_finalize(self->seen);
    sqlite3_finalize(self->floor);
    sqlite3_finalize(self->idem);
    if (self->db)
        sqlite3_close(self->db);
    router_dblock_put(&self->wlock);
    /* Every node, written or not, is in the ring or parked. */
    for (size_t i = 0; self->ring && i < self->count; i++)
        s_node_free(s_at(self, i));
    for (s_node_t *n = self->parked, *next; n; n = next) {
        next = n->next;
        s_node_free(n);
    }
    free(self->ring);
    free(self->deletes);
    free(self->session);
    pthread_cond_destroy(&self->changed);
    pthread_mutex_destroy(&self->db_mu);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

router_inbox_outcome_t router_inbox_admit(router_inbox_t *self, const uint8_t id[16],
                                          const uint8_t from[32], const char *kind,
                                          const uint8_t *frame, size_t frame_len,
                                          uint64_t now_ms, const router_inbox_seen_t *seen,
                                          uint64_t *seq)
{
    return router_inbox_admit_keyed(self, id, from, kind, frame, frame_len, now_ms, seen, NULL,
                                    seq);
}

/* A copy of idem for its node, or NULL (out of memory or out of bounds). */
static s_idem_row_t *s_idem_copy(const router_inbox_idem_t *idem)
{
    size_t scope_len = strlen(idem->scope);
    if (!scope_len || scope_len > ROUTER_INBOX_IDEM_SCOPE_MAX || !idem->key_len ||
        idem->key_len > ROUTER_INBOX_IDEM_KEY_MAX || strlen(idem->body) >= ROUTER_INBOX_IDEM_BODY_MAX)
        return NULL;
    s_idem_row_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    memcpy(r->scope, idem->scope, scope_len);
    memcpy(r->key, idem->key, idem->key_len);
    snprintf(r->body, sizeof r->body, "%s", idem->body);
    r->status = idem->status;
    r->expires_ms = idem->expires_ms;
    return r;
}

router_inbox_outcome_t router_inbox_admit_keyed(router_inbox_t *self, const uint8_t id[16],
                                                const uint8_t from[32], const char *kind,
                                                const uint8_t *frame, size_t frame_len,
                                                uint64_t now_ms, const router_inbox_seen_t *seen,
                                                const router_inbox_idem_t *idem, uint64_t *seq)
{
    /* Allocate before taking the lock: the lock is shared with consumers. */
    s_node_t *n = calloc(1, sizeof *n);
    if (!n || !(n->e.frame = malloc(frame_len ? frame_len : 1)) ||
        (idem && !(n->idem = s_idem_copy(idem)))) {
        s_node_free(n);
        return ROUTER_INBOX_NOMEM;
    }
    memcpy(n->e.frame, frame, frame_len);
    n->e.frame_len = frame_len;
    memcpy(n->e.id, id, 16);
    memcpy(n->e.from, from, 32);
    size_t kind_len = strnlen(kind, sizeof n->e.kind - 1); /* no printf per envelope */
    memcpy(n->e.kind, kind, kind_len);
    n->e.received_ms = now_ms;
    if (seen) {
        n->remember = true;
        n->seen = *seen;
    }

    pthread_mutex_lock(&self->mu);
    if (self->count >= self->capacity || self->count >= self->ring_cap ||
        frame_len > self->max_bytes || self->bytes > self->max_bytes - frame_len) {
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
        bool was_idle = self->pend_head == NULL;
        if (self->pend_tail)
            self->pend_tail->next = n;
        else
            self->pend_head = n;
        self->pend_tail = n;
        self->npend++;
        self->unwritten++;
        self->admitted++;
        if (self->on_flush)
            atomic_store_explicit(&self->dirty, true, memory_order_relaxed);
        if (self->on_flush ? self->npend == ROUTER_INBOX_BATCH_MIN : was_idle)
            pthread_cond_broadcast(&self->changed);
    } else {
        atomic_store(&self->durable_seq, n->e.seq);
        pthread_cond_broadcast(&self->changed);
    }
    pthread_mutex_unlock(&self->mu);
    return ROUTER_INBOX_ADMITTED;
}

router_inbox_withdraw_t router_inbox_withdraw(router_inbox_t *self, uint64_t seq)
{
    router_inbox_withdraw_t out = ROUTER_INBOX_WITHDRAWN;
    s_node_t *drop = NULL;
    pthread_mutex_lock(&self->mu);
    /* Parked first: later commits may have carried durable_seq past it. */
    for (s_node_t **p = &self->parked; *p; p = &(*p)->next)
        if ((*p)->e.seq == seq) {
            drop = *p;
            *p = drop->next;
            goto done;
        }
    if (!self->db || seq <= atomic_load(&self->durable_seq)) {
        out = ROUTER_INBOX_IS_DURABLE;
        goto done;
    }
    /* Every unwritten seq above the commit in flight is on the list. */
    for (s_node_t *prev = NULL, *n = self->pend_head; n; prev = n, n = n->next)
        if (n->e.seq == seq) {
            if (n->in_doubt) {
                /* A failed COMMIT may have left it in the WAL: taking it
                 * back now could be undone by a crash (s_db_scrub). */
                out = ROUTER_INBOX_COMMITTING;
                goto done;
            }
            if (prev)
                prev->next = n->next;
            else
                self->pend_head = n->next;
            if (self->pend_tail == n)
                self->pend_tail = prev;
            self->npend--;
            s_ring_drop(self, n);
            drop = n;
            goto done;
        }
    if (self->inflight_top && seq <= self->inflight_top) {
        /* In the commit running now: marked, so a failure parks it (the
         * mark is read under mu once that commit has ended). */
        for (size_t i = self->count; i > 0; i--) {
            s_node_t *n = s_at(self, i - 1);
            if (n->e.seq == seq) {
                n->withdraw = true;
                out = ROUTER_INBOX_COMMITTING;
                break;
            }
            if (n->e.seq < seq)
                break;
        }
    }
    /* Anything else was never admitted: nothing of it can be written. */
done:
    pthread_mutex_unlock(&self->mu);
    s_node_free(drop);
    return out;
}

uint64_t router_inbox_durable_seq(const router_inbox_t *self)
{
    return atomic_load(&((router_inbox_t *) self)->durable_seq);
}

void router_inbox_flush(router_inbox_t *self)
{
    if (!self || !atomic_exchange_explicit(&self->dirty, false, memory_order_relaxed))
        return;
    pthread_mutex_lock(&self->mu);
    self->flush_req = true;
    pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->mu);
}

void router_inbox_sync(router_inbox_t *self)
{
    pthread_mutex_lock(&self->mu);
    self->flush_req = self->sync_req = true;
    pthread_cond_broadcast(&self->changed);
    while (self->unwritten > 0)
        pthread_cond_wait(&self->changed, &self->mu);
    pthread_mutex_unlock(&self->mu);
}

/* Removes the held entry at ring position idx (0 = head) and queues its
 * delete (s_ring_cut). Caller holds mu and has made room in deletes.
 * Returns the node. */
static s_node_t *s_remove_at(router_inbox_t *self, size_t idx)
{
    s_node_t *n = s_ring_cut(self, idx);
    if (self->db) {
        self->deletes[self->ndeletes++] = n->e.seq;
        if (self->on_flush)
            atomic_store_explicit(&self->dirty, true, memory_order_relaxed);
        else
            pthread_cond_broadcast(&self->changed);
    }
    return n;
}

/* Room for `need` deletes in all. Caller holds mu. 0, or -1 out of
 * memory (errno ENOMEM).
 *
 * A take reserves the delete of every entry leased (ndeletes + leased ≤
 * deletes_cap, and the store thread's swap never hands back a smaller
 * array), so router_inbox_done never allocates: a turn that ended under
 * memory pressure used to fail it, and its caller (the turns worker, which
 * cannot retry) left the entry leased and counted for good. */
static int s_delete_room(router_inbox_t *self, size_t need)
{
    if (!self->db || need <= self->deletes_cap)
        return 0;
    size_t ncap = self->deletes_cap ? self->deletes_cap : 64;
    while (ncap < need)
        ncap *= 2;
    uint64_t *grown = realloc(self->deletes, ncap * sizeof *grown);
    if (!grown) {
        errno = ENOMEM;
        return -1;
    }
    self->deletes = grown;
    self->deletes_cap = ncap;
    return 0;
}

/* The oldest entry nobody has taken is durable. Caller holds mu. */
static bool s_takeable(const router_inbox_t *self)
{
    return self->leased < self->count &&
           s_at(self, self->leased)->e.seq <= atomic_load(&self->durable_seq);
}

int router_inbox_pop(router_inbox_t *self, router_inbox_entry_t *out, int timeout_ms)
{
    struct timespec deadline =
        router_clock_deadline(CLOCK_REALTIME, timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
    pthread_mutex_lock(&self->mu);
    while (!s_takeable(self)) {
        if (timeout_ms == 0)
            goto none;
        if (timeout_ms < 0)
            pthread_cond_wait(&self->changed, &self->mu);
        else if (pthread_cond_timedwait(&self->changed, &self->mu, &deadline) == ETIMEDOUT)
            goto none;
    }
    if (s_delete_room(self, self->ndeletes + self->leased + 1) != 0)
        goto none; /* keep the entry; the caller may retry */
    s_node_t *n = s_remove_at(self, self->leased);
    pthread_mutex_unlock(&self->mu);
    *out = n->e;
    free(n->idem);
    free(n);
    return 0;
none:
    pthread_mutex_unlock(&self->mu);
    return -1;
}

/* Position of the leased entry `seq`, or -1. Caller holds mu. */
static long s_leased_at(const router_inbox_t *self, uint64_t seq)
{
    for (size_t i = 0; i < self->leased; i++)
        if (s_at(self, i)->e.seq == seq)
            return (long) i;
    return -1;
}

/* Gives a taken entry back (take could not copy it): it moves behind the
 * leased prefix, where the next take finds it. Caller holds mu. */
static int s_unlease(router_inbox_t *self, uint64_t seq)
{
    long i = s_leased_at(self, seq);
    if (i < 0)
        return -1;
    s_node_t *n = s_at(self, (size_t) i);
    for (size_t j = (size_t) i; j + 1 < self->leased; j++)
        self->ring[(self->head + j) % self->ring_cap] = s_at(self, j + 1);
    self->leased--;
    self->ring[(self->head + self->leased) % self->ring_cap] = n;
    return 0;
}

int router_inbox_take(router_inbox_t *self, router_inbox_entry_t *out)
{
    pthread_mutex_lock(&self->mu);
    if (!s_takeable(self)) {
        pthread_mutex_unlock(&self->mu);
        return -1;
    }
    if (s_delete_room(self, self->ndeletes + self->leased + 1) != 0) {
        pthread_mutex_unlock(&self->mu); /* the entry stays for the next take */
        return -1;
    }
    s_node_t *n = s_at(self, self->leased);
    self->leased++;
    pthread_mutex_unlock(&self->mu);
    /* The node stays put until router_inbox_done, which only this
     * consumer calls: copying outside the lock is safe. */
    *out = n->e;
    out->frame = malloc(n->e.frame_len ? n->e.frame_len : 1);
    if (!out->frame) {
        pthread_mutex_lock(&self->mu);
        (void) s_unlease(self, n->e.seq);
        pthread_mutex_unlock(&self->mu);
        memset(out, 0, sizeof *out);
        return -1;
    }
    memcpy(out->frame, n->e.frame, n->e.frame_len);
    return 0;
}

int router_inbox_untake(router_inbox_t *self, uint64_t seq)
{
    pthread_mutex_lock(&self->mu);
    int rc = s_unlease(self, seq);
    pthread_mutex_unlock(&self->mu);
    return rc;
}

int router_inbox_done(router_inbox_t *self, uint64_t seq)
{
    pthread_mutex_lock(&self->mu);
    long i = s_leased_at(self, seq);
    /* The take reserved its delete: no allocation here. */
    if (i < 0 || s_delete_room(self, self->ndeletes + 1) != 0) {
        pthread_mutex_unlock(&self->mu);
        return -1;
    }
    s_node_t *n = s_remove_at(self, (size_t) i);
    self->leased--;
    pthread_mutex_unlock(&self->mu);
    s_node_free(n);
    return 0;
}

size_t router_inbox_leased(router_inbox_t *self)
{
    pthread_mutex_lock(&self->mu);
    size_t n = self->leased;
    pthread_mutex_unlock(&self->mu);
    return n;
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

/* ---------------------------------------------------------------- seen ids at start */

typedef struct {
    uint8_t id[16];
    uint64_t expires_ms;
} s_seen_row_t;

int router_inbox_seen_load(router_inbox_t *self, size_t per_sender_max,
                           router_inbox_seen_fn *seen_fn, router_inbox_floor_fn *floor_fn,
                           void *ud, char *err, size_t errcap)
{
    if (!self->db)
        return 0;
    sqlite3_stmt *next = NULL, *rows = NULL, *floors = NULL;
    s_seen_row_t *buf = NULL;
    size_t cap = 0;
    int rc = -1, step;
    const char *why = NULL; /* the load's own failure, not the database's */
    uint8_t sender[32];
    pthread_mutex_lock(&self->db_mu);
    if (s_prepare(self->db, "SELECT sender FROM seen WHERE sender > ? ORDER BY sender LIMIT 1",
                  &next) ||
        s_prepare(self->db,
                  "SELECT id, expires_ms FROM seen WHERE sender = ? AND length(id) = 16"
                  " ORDER BY seq DESC LIMIT ?",
                  &rows) ||
        s_prepare(self->db, "SELECT sender, floor_ms FROM replay_floor", &floors))
        goto done;
    /* One index seek per sender, then its newest ids: never a full scan. */
    sqlite3_bind_blob(next, 1, "", 0, SQLITE_STATIC);
    while ((step = sqlite3_step(next)) == SQLITE_ROW) {
        int len = sqlite3_column_bytes(next, 0);
        if (len != 32) {
            /* Not a row this code wrote: step past it. */
            uint8_t *skip = malloc(len > 0 ? (size_t) len : 1);
            if (!skip) {
                why = "out of memory";
                goto done;
            }
            if (len > 0)
                memcpy(skip, sqlite3_column_blob(next, 0), (size_t) len);
            sqlite3_reset(next);
            sqlite3_bind_blob(next, 1, skip, len, SQLITE_TRANSIENT);
            free(skip);
            continue;
        }
        memcpy(sender, sqlite3_column_blob(next, 0), 32);
        sqlite3_reset(next);
        sqlite3_bind_blob(next, 1, sender, 32, SQLITE_TRANSIENT);
        sqlite3_reset(rows);
        sqlite3_bind_blob(rows, 1, sender, 32, SQLITE_STATIC);
        sqlite3_bind_int64(rows, 2, (sqlite3_int64) per_sender_max);
        size_t n = 0;
        while ((step = sqlite3_step(rows)) == SQLITE_ROW) {
            if (sqlite3_column_bytes(rows, 0) != 16)
                continue;
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 256;
                s_seen_row_t *g = realloc(buf, ncap * sizeof *g);
                if (!g) {
                    why = "out of memory";
                    goto done;
                }
                buf = g;
                cap = ncap;
            }
            memcpy(buf[n].id, sqlite3_column_blob(rows, 0), 16);
            buf[n].expires_ms = (uint64_t) sqlite3_column_int64(rows, 1);
            n++;
        }
        if (step != SQLITE_DONE)
            goto done;
        while (n > 0) {
            n--;
            if (seen_fn(sender, buf[n].id, buf[n].expires_ms, ud) != 0) {
                why = "the replay window refused one (out of memory?)";
                goto done;
            }
        }
    }
    if (step != SQLITE_DONE)
        goto done;
    while ((step = sqlite3_step(floors)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(floors, 0) != 32)
            continue;
        if (floor_fn((const uint8_t *) sqlite3_column_blob(floors, 0),
                     (uint64_t) sqlite3_column_int64(floors, 1), ud) != 0) {
            why = "the replay window refused a floor (out of memory?)";
            goto done;
        }
    }
    if (step != SQLITE_DONE)
        goto done;
    rc = 0;
done:
    if (rc != 0)
        s_load_error(self->db, "seen ids", why, err, errcap);
    sqlite3_finalize(next);
    sqlite3_finalize(rows);
    sqlite3_finalize(floors);
    pthread_mutex_unlock(&self->db_mu);
    free(buf);
    return rc;
}

int router_inbox_idem_load(router_inbox_t *self, uint64_t now_ms, router_inbox_idem_fn *fn,
                           void *ud, char *err, size_t errcap)
{
    if (!self->db)
        return 0;
    sqlite3_stmt *st = NULL;
    int rc = -1, step;
    const char *why = NULL; /* the caller's refusal, not the database's */
    pthread_mutex_lock(&self->db_mu);
    if (s_prepare(self->db,
                  "SELECT scope, key, status, body, expires_ms FROM inbox_idempotency"
                  " WHERE expires_ms >= ? ORDER BY expires_ms DESC", &st))
        goto done;
    sqlite3_bind_int64(st, 1, (sqlite3_int64) now_ms);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *scope = (const char *) sqlite3_column_text(st, 0);
        const char *key = (const char *) sqlite3_column_text(st, 1);
        const char *body = (const char *) sqlite3_column_text(st, 3);
        router_inbox_idem_t row = {.scope = scope, .key = key,
                                   .key_len = key ? (size_t) sqlite3_column_bytes(st, 1) : 0,
                                   .status = sqlite3_column_int(st, 2), .body = body,
                                   .expires_ms = (uint64_t) sqlite3_column_int64(st, 4)};
        if (!scope || !body || !row.key_len || row.key_len > ROUTER_INBOX_IDEM_KEY_MAX ||
            strlen(scope) > ROUTER_INBOX_IDEM_SCOPE_MAX ||
            strlen(body) >= ROUTER_INBOX_IDEM_BODY_MAX)
            continue; /* not a row this code wrote */
        if (fn(&row, ud) != 0) {
            why = "the caller refused one (out of memory?)";
            goto done;
        }
    }
    rc = step == SQLITE_DONE ? 0 : -1;
done:
    if (rc != 0)
        s_load_error(self->db, "idempotency keys", why, err, errcap);
    sqlite3_finalize(st);
    pthread_mutex_unlock(&self->db_mu);
    return rc;
}

uint64_t router_inbox_commit_failures(const router_inbox_t *self)
{
    return atomic_load(&((router_inbox_t *) self)->failures);
}

const char *router_inbox_outcome_str(router_inbox_outcome_t o)
{
    switch (o) {
    case ROUTER_INBOX_ADMITTED: return "admitted";
    case ROUTER_INBOX_FULL: return "inbox_full";
    case ROUTER_INBOX_NOMEM: return "nomem";
    }
    return "unknown";
}
