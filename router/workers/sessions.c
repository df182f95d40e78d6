/* router/workers/sessions.c — the sessions store: a job queue under one
 * mutex, a thread running the jobs against SQLite, an eventfd the loop
 * watches to run the finished jobs' callbacks, and the loop's cache of
 * recent history (history_cache.c) that answers most history reads without
 * the thread. Writes whose commit fails for the disk are held and retried
 * (s_chunk_fail, s_retry), never dropped. */
#include "router/workers/sessions.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

#include "router/clock.h"
#include "router/log.h"
#include "router/state/dblock.h"
#include "router/workers/history_cache.h"
#include "router/workers/session_ids.h"
#include "router/thread.h"

#define MOD "sessions"
/* The most appends, and the longest time, one transaction holds state.db's
 * write lock for (s_main). */
#define S_TXN_MAX_APPENDS 8192u
#define S_TXN_MAX_US 5000u
/* A failing disk: the wait before retrying the writes whose commit failed
 * (doubling up to the most), how often the failure is logged again, and
 * the retries a stop makes before it gives the writes up. */
#define S_RETRY_MIN_MS 10u
#define S_RETRY_MAX_MS 1000u
#define S_FAIL_LOG_EVERY_MS 10000u
#define S_STOP_RETRIES 5u

/* J_ROW: a new session's row an open made, kept until it is committed so
 * a failed commit retries it (with its name). */
typedef enum { J_OPEN, J_HISTORY, J_APPEND, J_LIST, J_GET, J_DELETE, J_ROW } s_kind_t;

/* The statements every turn runs, prepared once on the thread (s_stmt):
 * parsing them again per append was a third of the thread's time. */
typedef enum {
    Q_ROW_NEW,        /* a session's row, if missing */
    Q_ROW_GET,        /* its name and count */
    Q_ROW_BUMP,       /* an append counted on its row: count and octets after it */
    Q_MSG_INSERT,     /* an append's message */
    Q_PRUNE_ONE,      /* a session's oldest message out: its content's octets */
    Q_ROW_SHRINK,     /* what the pruning took, off its row */
    Q_HISTORY,        /* the last n messages */
    Q_SAVEPOINT,      /* each append is its own savepoint in the batch */
    Q_RELEASE,
    Q_ROLLBACK_TO,
    Q_COUNT
} s_query_t;

static const char *const s_sql[Q_COUNT] = {
    [Q_ROW_NEW] = "INSERT INTO sessions(id,name,created_ms,updated_ms) VALUES(?,?,?,?)"
                  " ON CONFLICT(id) DO NOTHING",
    [Q_ROW_GET] = "SELECT name, message_count FROM sessions WHERE id=?",
    [Q_ROW_BUMP] = "UPDATE sessions SET message_count=message_count+1, bytes=bytes+?1,"
                   " updated_ms=?2 WHERE id=?3 RETURNING message_count, bytes",
    [Q_MSG_INSERT] = "INSERT INTO messages(session_id,role,content,turn_id,time_ms)"
                     " VALUES(?,?,?,?,?)",
    [Q_HISTORY] = "SELECT role, content, time_ms, turn_id FROM (SELECT * FROM messages"
                  " WHERE session_id=? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
    [Q_PRUNE_ONE] = "DELETE FROM messages WHERE seq=(SELECT seq FROM messages WHERE"
                    " session_id=?1 ORDER BY seq LIMIT 1) RETURNING length(CAST(content AS BLOB))",
    [Q_ROW_SHRINK] = "UPDATE sessions SET message_count=message_count-?1, bytes=bytes-?2"
                     " WHERE id=?3",
    [Q_SAVEPOINT] = "SAVEPOINT append",
    [Q_RELEASE] = "RELEASE append",
    [Q_ROLLBACK_TO] = "ROLLBACK TO append",
};

typedef struct s_job s_job_t;
struct s_job {
    s_kind_t kind;
    char *id;                 /* session id */
    char *name;               /* J_OPEN */
    char role[16];            /* J_APPEND */
    char *content;            /* J_APPEND */
    size_t len;
    char turn_id[40];         /* J_APPEND */
    uint64_t time_ms;         /* J_APPEND: when it was queued, as the cache has it; J_ROW: made */
    int64_t seq;              /* J_APPEND: its message's seq in the running transaction */
    bool transient;           /* J_APPEND, J_ROW: failed for the disk, not for itself */
    bool made;                /* J_OPEN: it made the session's row */
    unsigned limit;
    uint64_t ticket;          /* J_HISTORY: the cache's load ticket, or 0 */
    router_history_view_t *view; /* J_HISTORY answered by the cache: msgs are its */
    void *fn;                 /* callback, by kind */
    void *ud;
    uint64_t tag;
    /* results */
    int rc;
    bool resumed;
    uint64_t count;
    char *res_name;
    router_sessions_msg_t *msgs;
    size_t nmsgs;
    char *json;               /* J_LIST, J_GET, J_DELETE */
    size_t json_len;
    int status;
    s_job_t *next;
};

struct router_sessions {
    router_loop_t *loop;
    int efd;                   /* written by the thread when jobs finish */
    router_watch_t *watch;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    s_job_t *todo_head, *todo_tail;
    size_t ntodo;
    _Atomic bool refuse;       /* test seam: refuse every job (router_sessions_refuse) */
    s_job_t *done_head, *done_tail;
    bool stopping;
    sqlite3 *db;               /* the thread's; opened by new */
    sqlite3_stmt *stmt[Q_COUNT]; /* the thread's, prepared on first use */
    router_dblock_t *wlock;    /* state.db's writer queue, shared with the inbox */
    router_history_cache_t *cache; /* the loop's */
    size_t hits_out;           /* cache answers not yet delivered (≤ JOBS_MAX) */
    _Atomic uint64_t failures;
    router_sessions_bounds_t b; /* in force, defaults filled in */
    uint64_t nsessions, nbytes; /* the thread's count of what state.db keeps */
    router_session_ids_t *ids; /* the ids state.db keeps (the thread writes, any reads) */
    _Atomic uint64_t pub_sessions, pub_bytes; /* the same, for other threads */
    _Atomic uint64_t pruned;   /* messages the bounds took */
    /* A failing disk (s_chunk_fail): the writes whose commit failed wait
     * here, in queue order, and are retried until they commit. */
    s_job_t *held_head, *held_tail; /* the thread's */
    size_t nheld;              /* their count, under mu: s_queue bounds todo + held */
    uint64_t retry_at_ms;      /* the thread's: when the held writes are tried again */
    unsigned backoff_ms;       /* the thread's: the wait after the last failure */
    uint64_t failing;          /* the thread's: failed attempts since writes last committed */
    uint64_t unreported;       /* the thread's: failed attempts since the last log line */
    uint64_t last_log_ms;      /* the thread's: when the failure was last logged */
    char why[160];             /* the thread's: SQLite's reason for the last failure */
};

static const char *const s_schema =
    "PRAGMA journal_mode=WAL;"
    "CREATE TABLE IF NOT EXISTS sessions ("
    " id TEXT PRIMARY KEY,"
    " name TEXT NOT NULL DEFAULT '',"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " message_count INTEGER NOT NULL DEFAULT 0,"
    " bytes INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated_ms);"
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " session_id TEXT NOT NULL,"
    " role TEXT NOT NULL,"
    " content TEXT NOT NULL,"
    " turn_id TEXT NOT NULL DEFAULT '',"
    " time_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS messages_session ON messages(session_id, seq);";

static void s_job_free(s_job_t *j)
{
    if (!j)
        return;
    free(j->id);
    free(j->name);
    free(j->content);
    free(j->res_name);
    if (j->view) {
        router_history_view_free(&j->view);
        j->msgs = NULL;
        j->nmsgs = 0;
    }
    for (size_t i = 0; i < j->nmsgs; i++) {
        free((char *) j->msgs[i].content);
        free((char *) j->msgs[i].role);
        free((char *) j->msgs[i].turn_id);
    }
    free(j->msgs);
    free(j->json);
    free(j);
}

/* ------------------------------------------------------------ the thread */

static int s_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

/* Statement q, ready to bind: prepared on first use, and reset and
 * unbound by s_stmt_end after each use. NULL: the error is the db's. */
static sqlite3_stmt *s_stmt(router_sessions_t *s, s_query_t q)
{
    if (!s->stmt[q] && sqlite3_prepare_v3(s->db, s_sql[q], -1, SQLITE_PREPARE_PERSISTENT,
                                          &s->stmt[q], NULL) != SQLITE_OK) {
        sqlite3_finalize(s->stmt[q]);
        s->stmt[q] = NULL;
    }
    return s->stmt[q];
}

/* Ends a use of a statement from s_stmt: a reset statement holds no lock
 * and no pointer into a job's (SQLITE_STATIC) strings. Keeps the db's
 * error message of a failed step for the log. */
static void s_stmt_end(sqlite3_stmt *st)
{
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

/* Runs a statement that returns no rows: 0 when it is done. */
static int s_stmt_run(router_sessions_t *s, s_query_t q)
{
    sqlite3_stmt *st = s_stmt(s, q);
    int rc = st && sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    s_stmt_end(st);
    return rc;
}

/* The thread's counts, for router_sessions_room on other threads. */
static void s_publish(router_sessions_t *s)
{
    atomic_store(&s->pub_sessions, s->nsessions);
    atomic_store(&s->pub_bytes, s->nbytes);
}

/* The ids kept, again from state.db. 0, or -1 (a query failed; the set
 * may then miss ids, which the door refuses at the bound as new ones). */
static int s_reload_ids(router_sessions_t *s)
{
    sqlite3_stmt *st = NULL;
    router_session_ids_clear(s->ids);
    if (sqlite3_prepare_v2(s->db, "SELECT id FROM sessions", -1, &st, NULL) != SQLITE_OK)
        return -1;
    int step;
    bool short_of_memory = false;
    while ((step = sqlite3_step(st)) == SQLITE_ROW)
        short_of_memory |= router_session_ids_add(s->ids, (const char *) sqlite3_column_text(
                                                              st, 0)) != 0;
    sqlite3_finalize(st);
    if (short_of_memory)
        ROUTER_LOG(ROUTER_LOG_WARN, MOD, "out of memory for the ids of the sessions kept: at "
                   "limits.sessions_max, messages for some of them are refused as new");
    return step == SQLITE_DONE ? 0 : -1;
}

/* The counts and the ids again from state.db: at open, and after a
 * rollback took back what the thread had counted. 0, or -1 (the counts are
 * left as they are). */
static int s_recount(router_sessions_t *s)
{
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT count(*), coalesce(sum(bytes),0) FROM sessions", -1,
                           &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        s->nsessions = (uint64_t) sqlite3_column_int64(st, 0);
        s->nbytes = (uint64_t) sqlite3_column_int64(st, 1);
        s_publish(s);
        rc = s_reload_ids(s);
    }
    sqlite3_finalize(st);
    return rc;
}

/* Makes j->id's row when missing (*made: it was). 0, or -1. */
static int s_row_new(router_sessions_t *s, const char *id, const char *name, uint64_t now,
                     bool *made)
{
    sqlite3_stmt *st = s_stmt(s, Q_ROW_NEW);
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64) now);
    sqlite3_bind_int64(st, 4, (sqlite3_int64) now);
    int step = sqlite3_step(st);
    *made = step == SQLITE_DONE && sqlite3_changes(s->db) > 0;
    s_stmt_end(st);
    return step == SQLITE_DONE ? 0 : -1;
}

/* An open's read of its session's row: a kept one resumes it (rc 0, its
 * name and count; -1 when the name cannot be copied). Returns SQLite's
 * step: SQLITE_DONE when there is no such row (rc stays -1). */
static int s_open_read(router_sessions_t *s, s_job_t *j)
{
    j->rc = -1;
    sqlite3_stmt *st = s_stmt(s, Q_ROW_GET);
    if (!st)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        j->res_name = strdup((const char *) sqlite3_column_text(st, 0));
        j->count = (uint64_t) sqlite3_column_int64(st, 1);
        j->resumed = true;
        j->rc = j->res_name ? 0 : -1;
    }
    s_stmt_end(st);
    return step;
}

/* A session that is kept is resumed; one that is not is made, unless
 * sessions_max are kept (rc ROUTER_SESSIONS_FULL_SESSIONS). */
static void s_run_open(router_sessions_t *s, s_job_t *j)
{
    if (s_open_read(s, j) != SQLITE_DONE)
        return;
    if (s->nsessions >= s->b.sessions_max) {
        j->rc = ROUTER_SESSIONS_FULL_SESSIONS;
        return;
    }
    const char *name = j->name ? j->name : "";
    bool made = false;
    if (s_row_new(s, j->id, name, router_clock_wall_ms(), &made) != 0)
        return;
    /* Counted as soon as the row is there, answered or not: it is
     * committed with the batch either way. */
    if (made) {
        s->nsessions++;
        (void) router_session_ids_add(s->ids, j->id);
        s_publish(s);
    }
    j->made = made;
    if ((j->res_name = strdup(name)))
        j->rc = 0;
}

/* Whether SQLite's last error is the disk's (full, failing, busy, short of
 * memory): what fails for it is retried, never dropped. Anything else (a
 * constraint, a damaged schema) is the write's own and fails it alone. */
static bool s_transient(router_sessions_t *s)
{
    switch (sqlite3_extended_errcode(s->db) & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
        return true;
    default:
        return false;
    }
}

/* A held open's row (J_ROW), made again if missing, with its name. */
static void s_run_row(router_sessions_t *s, s_job_t *j)
{
    bool made = false;
    j->rc = s_row_new(s, j->id, j->name ? j->name : "", j->time_ms, &made);
    if (j->rc != 0) {
        j->transient = s_transient(s);
        snprintf(s->why, sizeof s->why, "%s", sqlite3_errmsg(s->db));
        return;
    }
    if (made) {
        s->nsessions++;
        (void) router_session_ids_add(s->ids, j->id);
        s_publish(s);
    }
}

/* Takes the oldest messages of a session out while it keeps more than the
 * bounds allow, never its last one; count and bytes are its row's after
 * the append. *gone and *freed say what went. The loop's history cache
 * applies the same rule (router_history_cache_bound), so it answers what
 * is kept. */
static int s_prune(router_sessions_t *s, const char *id, uint64_t count, uint64_t bytes,
                   uint64_t *gone, uint64_t *freed)
{
    *gone = *freed = 0;
    while (count - *gone > 1 && (count - *gone > s->b.messages_max ||
                                 bytes - *freed > s->b.session_bytes_max)) {
        sqlite3_stmt *st = s_stmt(s, Q_PRUNE_ONE);
        if (!st)
            return -1;
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        int step = sqlite3_step(st);
        bool got = step == SQLITE_ROW;
        uint64_t len = got ? (uint64_t) sqlite3_column_int64(st, 0) : 0;
        while (step == SQLITE_ROW)
            step = sqlite3_step(st);
        s_stmt_end(st);
        if (step != SQLITE_DONE || !got)
            return -1; /* the row counts more than there is */
        *gone += 1;
        *freed += len + ROUTER_SESSIONS_MSG_COST;
    }
    if (*gone == 0)
        return 0;
    sqlite3_stmt *st = s_stmt(s, Q_ROW_SHRINK);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, (sqlite3_int64) *gone);
    sqlite3_bind_int64(st, 2, (sqlite3_int64) *freed);
    sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    s_stmt_end(st);
    return step == SQLITE_DONE ? 0 : -1;
}

/* One message in its own savepoint: the row (made if missing), the
 * message, and what the bounds take. The counts change only once it is
 * all done. */
static void s_run_append(router_sessions_t *s, s_job_t *j)
{
    uint64_t now = j->time_ms, cost = (uint64_t) j->len + ROUTER_SESSIONS_MSG_COST;
    uint64_t count = 0, bytes = 0, gone = 0, freed = 0;
    bool made = false;
    j->rc = -1;
    if (s_stmt_run(s, Q_SAVEPOINT) != 0)
        return;
    if (s_row_new(s, j->id, "", now, &made) != 0)
        goto fail;
    sqlite3_stmt *st = s_stmt(s, Q_ROW_BUMP);
    if (!st)
        goto fail;
    sqlite3_bind_int64(st, 1, (sqlite3_int64) cost);
    sqlite3_bind_int64(st, 2, (sqlite3_int64) now);
    sqlite3_bind_text(st, 3, j->id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        count = (uint64_t) sqlite3_column_int64(st, 0);
        bytes = (uint64_t) sqlite3_column_int64(st, 1);
        step = sqlite3_step(st);
    }
    s_stmt_end(st);
    if (step != SQLITE_DONE || count == 0 || !(st = s_stmt(s, Q_MSG_INSERT)))
        goto fail;
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->role, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, j->content, (int) j->len, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, j->turn_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64) now);
    bool stored = sqlite3_step(st) == SQLITE_DONE;
    j->seq = stored ? sqlite3_last_insert_rowid(s->db) : 0;
    s_stmt_end(st);
    if (!stored || s_prune(s, j->id, count, bytes, &gone, &freed) != 0 ||
        s_stmt_run(s, Q_RELEASE) != 0)
        goto fail;
    s->nsessions += made;
    if (made)
        (void) router_session_ids_add(s->ids, j->id);
    s->nbytes = s->nbytes + cost > freed ? s->nbytes + cost - freed : 0;
    s_publish(s);
    if (gone)
        atomic_fetch_add(&s->pruned, gone);
    j->rc = 0;
    return;
fail:;
    /* Said now: the rollback's success resets the db's message. */
    char why[160];
    snprintf(why, sizeof why, "%s", sqlite3_errmsg(s->db));
    j->transient = s_transient(s);
    s_stmt_run(s, Q_ROLLBACK_TO);
    s_stmt_run(s, Q_RELEASE);
    if (j->transient) { /* kept and retried (s_chunk_fail), logged as the disk's failure */
        snprintf(s->why, sizeof s->why, "%s", why);
        return;
    }
    ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "state.db: a message of session %s not stored: %s", j->id,
               why);
}

/* The last `limit` messages of j->id, oldest first, into j->msgs. */
static int s_load_msgs(router_sessions_t *s, s_job_t *j)
{
    sqlite3_stmt *st = s_stmt(s, Q_HISTORY);
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, j->limit);
    size_t cap = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (j->nmsgs == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            router_sessions_msg_t *g = realloc(j->msgs, ncap * sizeof *g);
            if (!g)
                break;
            j->msgs = g;
            cap = ncap;
        }
        router_sessions_msg_t *m = &j->msgs[j->nmsgs];
        size_t len = (size_t) sqlite3_column_bytes(st, 1);
        char *c = malloc(len + 1);
        char *role = strdup((const char *) sqlite3_column_text(st, 0));
        char *tid = strdup((const char *) sqlite3_column_text(st, 3));
        if (!c || !role || !tid) {
            free(c);
            free(role);
            free(tid);
            break;
        }
        memcpy(c, sqlite3_column_text(st, 1), len);
        c[len] = '\0';
        m->role = role;
        m->content = c;
        m->len = len;
        m->time_ms = (uint64_t) sqlite3_column_int64(st, 2);
        m->turn_id = tid;
        j->nmsgs++;
    }
    s_stmt_end(st);
    return step == SQLITE_DONE ? 0 : -1;
}

static void s_gen_str(yajl_gen g, const char *s)
{
    yajl_gen_string(g, (const unsigned char *) s, strlen(s));
}

/* One session row's members (an open map in g). */
static void s_gen_session(yajl_gen g, sqlite3_stmt *st)
{
    s_gen_str(g, "id");
    s_gen_str(g, (const char *) sqlite3_column_text(st, 0));
    s_gen_str(g, "name");
    s_gen_str(g, (const char *) sqlite3_column_text(st, 1));
    s_gen_str(g, "created_ms");
    yajl_gen_integer(g, sqlite3_column_int64(st, 2));
    s_gen_str(g, "updated_ms");
    yajl_gen_integer(g, sqlite3_column_int64(st, 3));
    s_gen_str(g, "message_count");
    yajl_gen_integer(g, sqlite3_column_int64(st, 4));
}

/* The answer's text into j (status 200). -1: out of memory. */
static int s_take_json(yajl_gen g, s_job_t *j)
{
    const unsigned char *buf;
    size_t len;
    if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok || !(j->json = malloc(len + 1)))
        return -1;
    memcpy(j->json, buf, len);
    j->json[len] = '\0';
    j->json_len = len;
    j->status = 200;
    return 0;
}

static void s_run_json(router_sessions_t *s, s_job_t *j)
{
    sqlite3_stmt *st = NULL;
    const char *why = "out of memory"; /* unless SQLite's message says more */
    yajl_gen g = yajl_gen_alloc(NULL);
    j->status = 503;
    if (!g)
        goto done;
    const char *cols = "SELECT id, name, created_ms, updated_ms, message_count FROM sessions";
    char sql[256];
    if (j->kind == J_LIST)
        snprintf(sql, sizeof sql, "%s ORDER BY updated_ms DESC, id LIMIT ?", cols);
    else
        snprintf(sql, sizeof sql, "%s WHERE id=?", cols);
    why = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        goto done;
    if (j->kind == J_LIST) {
        sqlite3_bind_int64(st, 1, j->limit);
        yajl_gen_map_open(g);
        s_gen_str(g, "sessions");
        yajl_gen_array_open(g);
        int step;
        while ((step = sqlite3_step(st)) == SQLITE_ROW) {
            yajl_gen_map_open(g);
            s_gen_session(g, st);
            yajl_gen_map_close(g);
        }
        if (step != SQLITE_DONE)
            goto done;
        yajl_gen_array_close(g);
        yajl_gen_map_close(g);
        if (s_take_json(g, j) != 0)
            why = "out of memory";
        goto done;
    }
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        j->status = 404;
        goto done;
    }
    if (step != SQLITE_ROW || s_load_msgs(s, j) != 0)
        goto done;
    yajl_gen_map_open(g);
    s_gen_session(g, st);
    s_gen_str(g, "messages");
    yajl_gen_array_open(g);
    for (size_t i = 0; i < j->nmsgs; i++) {
        yajl_gen_map_open(g);
        s_gen_str(g, "role");
        s_gen_str(g, j->msgs[i].role);
        s_gen_str(g, "content");
        yajl_gen_string(g, (const unsigned char *) j->msgs[i].content, j->msgs[i].len);
        s_gen_str(g, "time_ms");
        yajl_gen_integer(g, (long long) j->msgs[i].time_ms);
        s_gen_str(g, "turn_id");
        s_gen_str(g, j->msgs[i].turn_id);
        yajl_gen_map_close(g);
    }
    yajl_gen_array_close(g);
    yajl_gen_map_close(g);
    if (s_take_json(g, j) != 0)
        why = "out of memory";
done:
    /* Said before the finalize, which resets the db's message (a failed
     * read of a session whose messages failed said "not an error"). */
    if (j->status == 503)
        ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "state.db: %s%s: %s",
                   j->kind == J_LIST ? "the list of sessions" : "a read of session ",
                   j->kind == J_LIST ? "" : j->id, why ? why : sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    if (g)
        yajl_gen_free(g);
}

/* A session and its messages, in a commit of their own, so the answer
 * says what is durable. 404 when there is no such session. */
static void s_run_delete(router_sessions_t *s, s_job_t *j)
{
    sqlite3_stmt *st = NULL;
    j->status = 503;
    router_dblock_enter(s->wlock, ROUTER_DBLOCK_BULK);
    if (s_exec(s->db, "BEGIN IMMEDIATE") != 0) {
        ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "state.db: delete of session %s: %s", j->id,
                   sqlite3_errmsg(s->db));
        router_dblock_leave(s->wlock);
        return;
    }
    bool ok = false, found = false;
    uint64_t freed = 0;
    if (sqlite3_prepare_v2(s->db, "DELETE FROM sessions WHERE id=? RETURNING bytes", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        int step;
        while ((step = sqlite3_step(st)) == SQLITE_ROW) {
            found = true;
            freed = (uint64_t) sqlite3_column_int64(st, 0);
        }
        ok = step == SQLITE_DONE;
        sqlite3_finalize(st);
        st = NULL;
    }
    if (ok && sqlite3_prepare_v2(s->db, "DELETE FROM messages WHERE session_id=?", -1, &st,
                                 NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
        j->count = (uint64_t) sqlite3_changes(s->db);
        sqlite3_finalize(st);
    } else {
        ok = false;
    }
    if (ok && s_exec(s->db, "COMMIT") == 0) {
        j->status = found ? 200 : 404;
        if (found) {
            s->nsessions -= s->nsessions > 0;
            router_session_ids_remove(s->ids, j->id);
            s->nbytes = s->nbytes > freed ? s->nbytes - freed : 0;
            s_publish(s);
        }
    } else {
        /* Said before the ROLLBACK, which replaces the connection's
         * message (SQLite may have rolled back already, on a full disk). */
        ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "state.db: delete of session %s: %s", j->id,
                   sqlite3_errmsg(s->db));
        s_exec(s->db, "ROLLBACK");
    }
    router_dblock_leave(s->wlock);
}

static void s_run(router_sessions_t *s, s_job_t *j)
{
    switch (j->kind) {
    case J_OPEN: s_run_open(s, j); break;
    case J_APPEND: s_run_append(s, j); break;
    case J_HISTORY: j->rc = s_load_msgs(s, j); break;
    case J_LIST:
    case J_GET: s_run_json(s, j); break;
    case J_DELETE: s_run_delete(s, j); break;
    case J_ROW: s_run_row(s, j); break;
    }
    if (j->rc == ROUTER_SESSIONS_FULL_SESSIONS) /* a bound, not a failure */
        return;
    if ((j->kind == J_APPEND || j->kind == J_ROW) && j->transient) /* retried, not failed */
        return;
    if (j->rc != 0 || ((j->kind == J_LIST || j->kind == J_GET || j->kind == J_DELETE) &&
                       j->status == 503)) {
        atomic_fetch_add(&s->failures, 1);
        if (j->kind == J_OPEN || j->kind == J_HISTORY) /* the others said why */
            ROUTER_LOG(ROUTER_LOG_ERROR, MOD, "state.db: %s", sqlite3_errmsg(s->db));
    }
}

/* Hands a finished read job to the loop. Called with s->mu held. */
static void s_done_push(router_sessions_t *s, s_job_t *j)
{
    bool was_empty = !s->done_head;
    if (s->done_tail)
        s->done_tail->next = j;
    else
        s->done_head = j;
    s->done_tail = j;
    if (was_empty) {
        uint64_t one = 1;
        ssize_t w = write(s->efd, &one, sizeof one);
        (void) w;
    }
}

/* ------------------------------------------------------------ a failing disk */

/* The writes of one transaction, in queue order (appends, and J_ROWs for
 * the rows opens made): freed once committed, held for a retry if not. */
typedef struct {
    s_job_t *head, *tail;
    size_t n;
    int64_t last_seq; /* the seq of its last message, 0 if none */
} s_chunk_t;

static void s_chunk_add(s_chunk_t *c, s_job_t *j)
{
    j->next = NULL;
    if (c->tail)
        c->tail->next = j;
    else
        c->head = j;
    c->tail = j;
    c->n++;
    if (j->kind == J_APPEND && j->seq)
        c->last_seq = j->seq;
}

/* A failed attempt: logged once, then at most every S_FAIL_LOG_EVERY_MS
 * with the count since (a broken disk is seen, never floods the log); the
 * next retry waits twice as long as the last, up to S_RETRY_MAX_MS. */
static void s_fail_note(router_sessions_t *s)
{
    uint64_t now = router_clock_mono_ms();
    atomic_fetch_add(&s->failures, 1);
    s->failing++;
    s->unreported++;
    if (s->failing == 1 || now - s->last_log_ms >= S_FAIL_LOG_EVERY_MS) {
        pthread_mutex_lock(&s->mu);
        size_t held = s->nheld;
        pthread_mutex_unlock(&s->mu);
        ROUTER_LOG(ROUTER_LOG_ERROR, MOD,
                   "state.db refuses writes (%llu failure%s since the last report): %s; %zu"
                   " writes (messages, new sessions) wait and are retried, reads of their"
                   " sessions answer unavailable until then",
                   (unsigned long long) s->unreported, s->unreported == 1 ? "" : "s",
                   s->why[0] ? s->why : "?", held);
        s->unreported = 0;
        s->last_log_ms = now;
    }
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : S_RETRY_MIN_MS;
    if (s->backoff_ms > S_RETRY_MAX_MS)
        s->backoff_ms = S_RETRY_MAX_MS;
    s->retry_at_ms = now + s->backoff_ms;
}

/* Writes committed again: said once, after a failure. */
static void s_fail_clear(router_sessions_t *s)
{
    if (s->failing)
        ROUTER_LOG(ROUTER_LOG_INFO, MOD,
                   "state.db takes writes again after %llu failed attempt%s: what waited is"
                   " stored", (unsigned long long) s->failing, s->failing == 1 ? "" : "s");
    s->failing = s->unreported = 0;
    s->backoff_ms = 0;
    s->why[0] = '\0';
}

/* Whether a write of session id waits for a retry. */
static bool s_held_has(const router_sessions_t *s, const char *id)
{
    for (const s_job_t *j = s->held_head; j; j = j->next)
        if (strcmp(j->id, id) == 0)
            return true;
    return false;
}

/* New sessions' rows that wait for a retry: made, not yet counted in
 * s->nsessions (a failed commit's recount took them back). */
static uint64_t s_held_rows(const router_sessions_t *s)
{
    uint64_t n = 0;
    for (const s_job_t *j = s->held_head; j; j = j->next)
        n += j->kind == J_ROW;
    return n;
}

/* j waits at the end of the held writes; `counted`: s->nheld counts it
 * already (s_main counted it when it took the batch). */
static void s_hold(router_sessions_t *s, s_job_t *j, bool counted)
{
    j->next = NULL;
    if (s->held_tail)
        s->held_tail->next = j;
    else
        s->held_head = j;
    s->held_tail = j;
    if (!counted) {
        pthread_mutex_lock(&s->mu);
        s->nheld++;
        pthread_mutex_unlock(&s->mu);
    }
}

/* The open transaction of chunk c failed (its COMMIT, or a write of it
 * for the disk): rolled back, and c goes back in front of the held
 * writes, in order (`counted`: s->nheld counts c already). What the thread
 * counted for c is taken back (s_recount); the retry counts it again. */
static void s_chunk_fail(router_sessions_t *s, s_chunk_t *c, bool counted)
{
    s_exec(s->db, "ROLLBACK");
    router_dblock_leave(s->wlock);
    (void) s_recount(s);
    if (c->head) {
        c->tail->next = s->held_head;
        s->held_head = c->head;
        if (!s->held_tail)
            s->held_tail = c->tail;
        if (!counted) {
            pthread_mutex_lock(&s->mu);
            s->nheld += c->n;
            pthread_mutex_unlock(&s->mu);
        }
    }
    *c = (s_chunk_t){0};
    s_fail_note(s);
}

/* A COMMIT that failed may still have landed (in doubt: WIRE §6). The
 * seqs of messages are AUTOINCREMENT, only this thread inserts them, and
 * a rolled-back transaction takes its bump of sqlite_sequence back: so
 * the chunk landed exactly when sqlite_sequence has reached its last
 * message. Read back after the ROLLBACK, before any retry: a chunk that
 * landed is never written twice. (One that did not land but left its
 * frames in the WAL is overwritten by the next commit, or found by a
 * restart's recovery — once, since the held writes die with the process.) */
static bool s_chunk_landed(router_sessions_t *s, const s_chunk_t *c)
{
    if (!c->last_seq)
        return false;
    sqlite3_stmt *st = NULL;
    bool landed = false;
    if (sqlite3_prepare_v2(s->db, "SELECT seq FROM sqlite_sequence WHERE name='messages'", -1,
                           &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        landed = sqlite3_column_int64(st, 0) >= c->last_seq;
    sqlite3_finalize(st);
    return landed;
}

/* Ends chunk c's transaction: COMMIT, and its writes are freed (nobody
 * waits for them), or it is held for a retry (s_chunk_fail). 0 or -1. */
static int s_chunk_commit(router_sessions_t *s, s_chunk_t *c, bool counted)
{
    if (s_exec(s->db, "COMMIT") != 0) {
        snprintf(s->why, sizeof s->why, "%s", sqlite3_errmsg(s->db));
        s_exec(s->db, "ROLLBACK");
        if (!s_chunk_landed(s, c)) {
            s_chunk_fail(s, c, counted);
            return -1;
        }
        ROUTER_LOG(ROUTER_LOG_WARN, MOD,
                   "state.db: a commit of %zu writes said it failed (%s) but landed: kept once",
                   c->n, s->why);
        (void) s_recount(s);
    }
    router_dblock_leave(s->wlock);
    if (counted) {
        pthread_mutex_lock(&s->mu);
        s->nheld -= c->n;
        pthread_mutex_unlock(&s->mu);
    }
    if (!s->held_head)
        s_fail_clear(s);
    for (s_job_t *j = c->head, *n; j; j = n) {
        n = j->next;
        s_job_free(j);
    }
    *c = (s_chunk_t){0};
    return 0;
}

/* A write that failed for itself (not the disk): handed to the loop as
 * failed, whose cache forgets the session. A J_ROW just goes. */
static void s_write_failed(router_sessions_t *s, s_job_t *j)
{
    if (j->kind == J_ROW) {
        s_job_free(j);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s_done_push(s, j);
    pthread_mutex_unlock(&s->mu);
}

/* Retries the held writes, in order, in transactions as short as
 * s_main's; stops at the first failure (they stay held, the backoff
 * grows). Writes made nsheld smaller as they commit. */
static void s_retry(router_sessions_t *s)
{
    while (s->held_head) {
        router_dblock_enter(s->wlock, ROUTER_DBLOCK_BULK);
        if (s_exec(s->db, "BEGIN IMMEDIATE") != 0) {
            snprintf(s->why, sizeof s->why, "%s", sqlite3_errmsg(s->db));
            router_dblock_leave(s->wlock);
            s_fail_note(s);
            return;
        }
        uint64_t since = router_clock_mono_us();
        s_chunk_t c = {0};
        while (s->held_head && c.n < S_TXN_MAX_APPENDS &&
               router_clock_mono_us() - since < S_TXN_MAX_US) {
            s_job_t *j = s->held_head;
            s->held_head = j->next;
            if (!s->held_head)
                s->held_tail = NULL;
            j->next = NULL;
            j->transient = false;
            s_run(s, j);
            if (j->rc == 0) {
                s_chunk_add(&c, j);
                continue;
            }
            if (j->transient) {
                s_chunk_add(&c, j);
                s_chunk_fail(s, &c, true);
                return;
            }
            pthread_mutex_lock(&s->mu);
            s->nheld--;
            pthread_mutex_unlock(&s->mu);
            s_write_failed(s, j);
        }
        if (s_chunk_commit(s, &c, true) != 0)
            return;
    }
    s_fail_clear(s);
}

/* A job while writes are held: an append waits behind them (its order
 * kept); reads that the held writes would change answer unavailable (the
 * cache answers most history reads before they come here), others read
 * what state.db keeps; an open of a new session answers at once and
 * holds its row. `counted`: s_main counted j in s->nheld if it is an
 * append or an open. */
static void s_run_stalled(router_sessions_t *s, s_job_t *j, bool counted)
{
    bool held = s_held_has(s, j->id ? j->id : "");
    bool unavailable = false;
    switch (j->kind) {
    case J_APPEND:
        s_hold(s, j, counted);
        return;
    case J_HISTORY:
        if (held)
            j->rc = -1, unavailable = true;
        else
            s_run(s, j);
        break;
    case J_GET:
    case J_DELETE:
        if (held)
            j->status = 503, unavailable = true;
        else
            s_run(s, j);
        break;
    case J_LIST: /* the sessions held would be missing or miscounted */
        j->status = 503;
        unavailable = true;
        break;
    case J_OPEN: {
        s_job_t *row = NULL;
        if (held) {
            j->rc = -1;
            unavailable = true;
        } else {
            /* No transaction: the row read is all, the row made is held. */
            if (s_open_read(s, j) == SQLITE_DONE) {
                /* The rows held count: each is a session made. */
                if (s->nsessions + s_held_rows(s) >= s->b.sessions_max) {
                    j->rc = ROUTER_SESSIONS_FULL_SESSIONS;
                } else if ((row = calloc(1, sizeof *row)) && (row->id = strdup(j->id)) &&
                           (row->name = strdup(j->name ? j->name : "")) &&
                           (j->res_name = strdup(row->name))) {
                    row->kind = J_ROW;
                    row->time_ms = router_clock_wall_ms();
                    j->rc = 0;
                } else {
                    s_job_free(row);
                    row = NULL;
                }
            }
            if (j->rc == -1)
                atomic_fetch_add(&s->failures, 1);
        }
        if (row)
            s_hold(s, row, counted);
        else if (counted) {
            pthread_mutex_lock(&s->mu);
            s->nheld--;
            pthread_mutex_unlock(&s->mu);
        }
        break;
    }
    case J_ROW: /* never queued */
        break;
    }
    if (unavailable)
        atomic_fetch_add(&s->failures, 1);
    pthread_mutex_lock(&s->mu);
    s_done_push(s, j);
    pthread_mutex_unlock(&s->mu);
}

/* Runs a batch taken from the queue. Group commit: its jobs run in one
 * transaction, so a burst of appends (two per turn) costs one WAL sync,
 * not one each; each append is its own savepoint, so one that fails for
 * itself takes only itself back. Reads are handed to the loop as soon as
 * they ran, before the COMMIT's sync (they see the batch's own writes, in
 * queue order), so a turn's history never waits for a disk flush. A
 * transaction holds state.db's one write lock, which the inbox's commits
 * (acks, webhook answers) wait for, so it ends after S_TXN_MAX_APPENDS
 * appends or S_TXN_MAX_US, and a backlog of many thousands is written in
 * many short transactions, never one long one. A transaction that fails
 * for the disk holds its writes for a retry (s_chunk_fail), and the rest
 * of the batch runs behind them (s_run_stalled); `counted`: the batch came
 * while writes were held, and s->nheld counts its appends and opens. */
static void s_run_batch(router_sessions_t *s, s_job_t *batch, bool counted)
{
    bool txn = false;
    uint64_t txn_since = 0;
    s_chunk_t c = {0};
    while (batch) {
        s_job_t *j = batch;
        batch = j->next;
        j->next = NULL;
        if (j->kind == J_DELETE && txn) {
            /* What came before it is committed first: it commits alone. */
            (void) s_chunk_commit(s, &c, false);
            txn = false;
        }
        if (s->held_head) {
            s_run_stalled(s, j, counted);
            continue;
        }
        /* IMMEDIATE: the write lock up front (waiting out the inbox's
         * writer), never a read snapshot that a write must upgrade
         * (SQLITE_BUSY_SNAPSHOT, no retry); from the first write on (an
         * append, or a session's row), so reads before it hold no lock,
         * and a new session's row is not a commit — an fsync — of its own
         * (one per webhook at 10,000/s saturated the disk). */
        if ((j->kind == J_APPEND || j->kind == J_OPEN) && !txn) {
            router_dblock_enter(s->wlock, ROUTER_DBLOCK_BULK); /* behind the inbox's commits */
            if (s_exec(s->db, "BEGIN IMMEDIATE") != 0) {
                snprintf(s->why, sizeof s->why, "%s", sqlite3_errmsg(s->db));
                router_dblock_leave(s->wlock);
                s_run_stalled(s, j, false); /* an append is held; an open holds its row */
                s_fail_note(s);
                continue;
            }
            txn = true;
            txn_since = router_clock_mono_us();
        }
        s_run(s, j);
        if (j->kind == J_APPEND && (j->rc == 0 || j->transient)) {
            s_chunk_add(&c, j);
            if (j->transient) { /* the disk's failure: the transaction goes, held */
                s_chunk_fail(s, &c, false);
                txn = false;
                continue;
            }
        } else {
            s_job_t *row = NULL;
            if (j->kind == J_OPEN && j->made && (row = calloc(1, sizeof *row))) {
                /* Kept with the chunk: a failed commit holds the row, name and all. */
                row->kind = J_ROW;
                row->time_ms = router_clock_wall_ms();
                if ((row->id = strdup(j->id)) &&
                    (row->name = strdup(j->res_name ? j->res_name : "")))
                    s_chunk_add(&c, row);
                else
                    s_job_free(row);
            }
            pthread_mutex_lock(&s->mu);
            s_done_push(s, j);
            pthread_mutex_unlock(&s->mu);
        }
        if (txn && sqlite3_get_autocommit(s->db)) {
            /* SQLite ended the transaction itself: a RAISE(ROLLBACK), or a
             * failure it answers by rolling back (no memory, a page it
             * could not spill). What the chunk held is gone with it; held
             * as after a failed COMMIT, not taken for written by the
             * COMMIT below, which an append after this one, committed
             * alone, would have let s_chunk_landed read as landed. */
            snprintf(s->why, sizeof s->why, "SQLite rolled the transaction back");
            s_chunk_fail(s, &c, false);
            txn = false;
            continue;
        }
        if (txn && (c.n >= S_TXN_MAX_APPENDS || router_clock_mono_us() - txn_since >= S_TXN_MAX_US)) {
            (void) s_chunk_commit(s, &c, false);
            txn = false;
        }
    }
    if (txn)
        (void) s_chunk_commit(s, &c, false);
}

/* Appends and opens in a list: what s_run_stalled may hold. */
static size_t s_writes(const s_job_t *j)
{
    size_t n = 0;
    for (; j; j = j->next)
        n += j->kind == J_APPEND || j->kind == J_OPEN;
    return n;
}

/* The thread: takes what is queued as one batch (s_run_batch); while
 * writes are held, retries them first when their backoff is over. A stop
 * retries them S_STOP_RETRIES times more, then gives them up, saying so. */
static void *s_main(void *arg)
{
    router_sessions_t *s = arg;
    router_thread_name("kith-sessions");
    unsigned stop_tries = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->todo_head && !(s->stopping && !s->held_head)) {
            if (!s->held_head) {
                pthread_cond_wait(&s->cv, &s->mu);
                continue;
            }
            uint64_t now = router_clock_mono_ms();
            if (now >= s->retry_at_ms)
                break;
            struct timespec dl =
                router_clock_deadline_us(CLOCK_REALTIME, (s->retry_at_ms - now) * 1000u);
            pthread_cond_timedwait(&s->cv, &s->mu, &dl);
        }
        if (!s->todo_head && !s->held_head)
            break; /* stopping, nothing left */
        if (s->held_head && router_clock_mono_ms() >= s->retry_at_ms) {
            bool stopping = s->stopping;
            pthread_mutex_unlock(&s->mu);
            s_retry(s);
            pthread_mutex_lock(&s->mu);
            if (stopping && s->held_head && ++stop_tries >= S_STOP_RETRIES && !s->todo_head) {
                ROUTER_LOG(ROUTER_LOG_ERROR, MOD,
                           "stopping with %zu messages and sessions not stored: state.db"
                           " refuses writes (%s)", s->nheld, s->why);
                break; /* destroy frees them */
            }
            continue;
        }
        s_job_t *batch = s->todo_head;
        s->todo_head = s->todo_tail = NULL;
        s->ntodo = 0;
        bool counted = s->held_head != NULL;
        if (counted) /* the bound holds while they wait: todo + held */
            s->nheld += s_writes(batch);
        pthread_mutex_unlock(&s->mu);
        s_run_batch(s, batch, counted);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------ the loop side */

static void s_on_done(router_watch_t *watch, int fd, unsigned events, void *ud)
{
    (void) watch;
    (void) events;
    router_sessions_t *s = ud;
    uint64_t v;
    while (read(fd, &v, sizeof v) > 0) {
    }
    pthread_mutex_lock(&s->mu);
    s_job_t *list = s->done_head;
    s->done_head = s->done_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (list) {
        s_job_t *j = list;
        list = j->next;
        switch (j->kind) {
        case J_OPEN:
            ((router_sessions_open_fn *) j->fn)(j->ud, j->tag, j->rc, j->resumed, j->count,
                                                j->res_name ? j->res_name : "");
            break;
        case J_HISTORY:
            if (j->view)
                s->hits_out--;
            else if (j->ticket)
                router_history_cache_loaded(s->cache, j->id, j->ticket, j->rc, j->msgs,
                                            j->nmsgs);
            ((router_sessions_history_fn *) j->fn)(j->ud, j->tag, j->rc, j->msgs, j->nmsgs);
            break;
        case J_LIST:
        case J_GET: {
            static const char e503[] =
                "{\"error\":\"the session store failed\",\"code\":\"unavailable\"}";
            static const char e404[] = "{\"error\":\"no such session\",\"code\":\"not_found\"}";
            const char *body = j->json ? j->json : j->status == 404 ? e404 : e503;
            size_t len = j->json ? j->json_len : strlen(body);
            ((router_sessions_json_fn *) j->fn)(j->ud, j->tag, j->json ? 200 : j->status, body,
                                                len);
            break;
        }
        case J_APPEND: /* one that failed: the cache may hold what the database lost */
            router_history_cache_forget(s->cache, j->id);
            break;
        case J_ROW: /* never handed back */
            break;
        case J_DELETE: {
            /* A history read queued before the delete may have filled it again. */
            router_history_cache_forget(s->cache, j->id);
            char body[256]; /* the id is 1..128 of [A-Za-z0-9._:-]: nothing to escape */
            int n = snprintf(body, sizeof body,
                             "{\"deleted\":true,\"id\":\"%.128s\",\"messages\":%llu}", j->id,
                             (unsigned long long) j->count);
            static const char e503[] =
                "{\"error\":\"the session store failed\",\"code\":\"unavailable\"}";
            static const char e404[] = "{\"error\":\"no such session\",\"code\":\"not_found\"}";
            const char *out = j->status == 200 ? body : j->status == 404 ? e404 : e503;
            ((router_sessions_json_fn *) j->fn)(j->ud, j->tag, j->status, out,
                                                j->status == 200 ? (size_t) n : strlen(out));
            break;
        }
        }
        s_job_free(j);
    }
}

/* A state.db from before the bounds has no `bytes` column: it is added and
 * filled from the messages, in one transaction, once. -1 with SQLite's
 * reason in why[cap]. */
static int s_migrate(router_sessions_t *s, char *why, size_t cap)
{
    sqlite3_stmt *st = NULL;
    bool has = sqlite3_prepare_v2(s->db, "SELECT bytes FROM sessions LIMIT 0", -1, &st, NULL) ==
               SQLITE_OK;
    sqlite3_finalize(st);
    if (has)
        return 0;
    char sql[512];
    snprintf(sql, sizeof sql,
             "BEGIN IMMEDIATE;"
             "ALTER TABLE sessions ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;"
             "UPDATE sessions SET bytes=(SELECT coalesce(sum(length(CAST(content AS BLOB))+%u),0)"
             " FROM messages WHERE session_id=sessions.id);"
             "COMMIT;",
             ROUTER_SESSIONS_MSG_COST);
    if (s_exec(s->db, sql) == 0)
        return 0;
    snprintf(why, cap, "%s", sqlite3_errmsg(s->db)); /* before the ROLLBACK resets it */
    s_exec(s->db, "ROLLBACK");
    return -1;
}

/* Fills in the defaults of the bounds not given. */
static router_sessions_bounds_t s_bounds(const router_sessions_bounds_t *in)
{
    router_sessions_bounds_t b = in ? *in : (router_sessions_bounds_t){0};
    if (!b.sessions_max)
        b.sessions_max = ROUTER_SESSIONS_MAX;
    if (!b.messages_max)
        b.messages_max = ROUTER_SESSIONS_MESSAGES_MAX;
    if (!b.session_bytes_max)
        b.session_bytes_max = ROUTER_SESSIONS_SESSION_BYTES_MAX;
    if (!b.bytes_max)
        b.bytes_max = ROUTER_SESSIONS_BYTES_MAX;
    return b;
}

router_sessions_t *router_sessions_new(router_loop_t *loop, const char *db_path,
                                       const router_sessions_bounds_t *bounds, char *err,
                                       size_t errcap)
{
    router_sessions_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errcap, "sessions: out of memory");
        return NULL;
    }
    s->loop = loop;
    s->efd = -1;
    s->b = s_bounds(bounds);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    const char *path = db_path ? db_path : ":memory:";
    /* NOMUTEX: after new, only the thread uses the connection (destroy
     * joins it first), so SQLite's per-call locking is pure cost. */
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, errcap, "sessions: cannot open %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    if (db_path)
        s->wlock = router_dblock_get(db_path);
    if (!(s->cache = router_history_cache_new(0, 0)) || !(s->ids = router_session_ids_new())) {
        snprintf(err, errcap, "sessions: out of memory");
        goto fail;
    }
    router_history_cache_bound(s->cache, s->b.messages_max, s->b.session_bytes_max,
                               ROUTER_SESSIONS_MSG_COST);
    char why[160];
    if (s_exec(s->db, s_schema) != 0) {
        snprintf(err, errcap, "sessions: %s: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (s_migrate(s, why, sizeof why) != 0) {
        snprintf(err, errcap, "sessions: %s: adding the sessions' byte counts: %s", path, why);
        goto fail;
    }
    if (s_recount(s) != 0) {
        snprintf(err, errcap, "sessions: %s: counting what it keeps: %s", path,
                 sqlite3_errmsg(s->db));
        goto fail;
    }
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0 ||
        !(s->watch = router_loop_watch_fd(loop, s->efd, ROUTER_EV_READ, s_on_done, s))) {
        snprintf(err, errcap, "sessions: cannot watch its eventfd: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, s_main, s) != 0) {
        snprintf(err, errcap, "sessions: cannot start its thread");
        goto fail;
    }
    s->started = true;
    return s;
fail:
    router_sessions_destroy(&s);
    return NULL;
}

void router_sessions_destroy(router_sessions_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    router_sessions_t *s = *self_p;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    router_watch_destroy(&s->watch);
    if (s->efd >= 0)
        close(s->efd);
    for (s_job_t *j = s->done_head, *n; j; j = n) {
        n = j->next;
        s_job_free(j);
    }
    for (s_job_t *j = s->todo_head, *n; j; j = n) {
        n = j->next;
        s_job_free(j);
    }
    for (s_job_t *j = s->held_head, *n; j; j = n) { /* given up by the stop (s_main) */
        n = j->next;
        s_job_free(j);
    }
    for (size_t q = 0; q < Q_COUNT; q++)
        sqlite3_finalize(s->stmt[q]);
    if (s->db)
        sqlite3_close(s->db);
    router_dblock_put(&s->wlock);
    router_history_cache_destroy(&s->cache);
    router_session_ids_destroy(&s->ids);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    *self_p = NULL;
}

/* ------------------------------------------------------------ jobs */

static s_job_t *s_job(s_kind_t kind, const char *id, void *fn, void *ud, uint64_t tag)
{
    s_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->fn = fn;
    j->ud = ud;
    j->tag = tag;
    if (id && !(j->id = strdup(id))) {
        free(j);
        return NULL;
    }
    return j;
}

static int s_queue(router_sessions_t *s, s_job_t *j)
{
    if (!j)
        return -1;
    pthread_mutex_lock(&s->mu);
    /* Writes held for a failing disk count: they hold memory as surely. */
    if (s->ntodo + s->nheld >= ROUTER_SESSIONS_JOBS_MAX || atomic_load(&s->refuse)) {
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add(&s->failures, 1);
        s_job_free(j);
        errno = EAGAIN;
        return -1;
    }
    if (s->todo_tail)
        s->todo_tail->next = j;
    else
        s->todo_head = j;
    s->todo_tail = j;
    s->ntodo++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int router_sessions_open(router_sessions_t *s, const char *id, const char *name,
                         router_sessions_open_fn *fn, void *ud, uint64_t tag)
{
    s_job_t *j = s_job(J_OPEN, id, (void *) fn, ud, tag);
    if (j && name && !(j->name = strndup(name, ROUTER_SESSIONS_NAME_MAX))) {
        s_job_free(j);
        return -1;
    }
    return s_queue(s, j);
}

/* A hit answers now, through the done list (fn still runs later, as for a
 * read the thread made); a miss goes to the thread and loads the cache. */
int router_sessions_history(router_sessions_t *s, const char *id, unsigned limit,
                            router_sessions_history_fn *fn, void *ud, uint64_t tag)
{
    s_job_t *j = s_job(J_HISTORY, id, (void *) fn, ud, tag);
    if (!j)
        return -1;
    j->limit = limit;
    if (s->hits_out < ROUTER_SESSIONS_JOBS_MAX &&
        router_history_cache_get(s->cache, id, limit, &j->view) == 1) {
        j->msgs = j->view->msgs;
        j->nmsgs = j->view->n;
        s->hits_out++;
        pthread_mutex_lock(&s->mu);
        s_done_push(s, j);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    /* The ticket is taken before the job can run: its answer finds it. */
    uint64_t ticket = router_history_cache_loading(s->cache, id, limit);
    j->ticket = ticket;
    if (s_queue(s, j) != 0) {
        if (ticket) /* no read comes to fill it */
            router_history_cache_loaded(s->cache, id, ticket, -1, NULL, 0);
        return -1;
    }
    return 0;
}

int router_sessions_append(router_sessions_t *s, const char *id, const char *role,
                           const char *content, size_t len, const char *turn_id)
{
    s_job_t *j = s_job(J_APPEND, id, NULL, NULL, 0);
    if (!j)
        return -1;
    snprintf(j->role, sizeof j->role, "%s", role);
    snprintf(j->turn_id, sizeof j->turn_id, "%s", turn_id ? turn_id : "");
    if (!(j->content = malloc(len + 1))) {
        s_job_free(j);
        return -1;
    }
    memcpy(j->content, content, len);
    j->content[len] = '\0';
    j->len = len;
    j->time_ms = router_clock_wall_ms();
    router_sessions_msg_t m = {j->role, j->content, len, j->time_ms, j->turn_id};
    router_history_cache_append(s->cache, id, &m); /* now: once queued, j is the thread's */
    if (s_queue(s, j) != 0) {
        router_history_cache_forget(s->cache, id);
        return -1;
    }
    return 0;
}

int router_sessions_list_json(router_sessions_t *s, unsigned limit,
                              router_sessions_json_fn *fn, void *ud, uint64_t tag)
{
    s_job_t *j = s_job(J_LIST, NULL, (void *) fn, ud, tag);
    if (j)
        j->limit = limit;
    return s_queue(s, j);
}

int router_sessions_delete(router_sessions_t *s, const char *id, router_sessions_json_fn *fn,
                           void *ud, uint64_t tag)
{
    s_job_t *j = s_job(J_DELETE, id, (void *) fn, ud, tag);
    if (!j)
        return -1;
    router_history_cache_forget(s->cache, id); /* reads from now on see it gone */
    return s_queue(s, j);
}

int router_sessions_get_json(router_sessions_t *s, const char *id, unsigned limit,
                             router_sessions_json_fn *fn, void *ud, uint64_t tag)
{
    s_job_t *j = s_job(J_GET, id, (void *) fn, ud, tag);
    if (j)
        j->limit = limit;
    return s_queue(s, j);
}

void router_sessions_cache_stats(const router_sessions_t *s, struct router_history_cache_stats *out)
{
    router_history_cache_stats(s->cache, out);
}

size_t router_sessions_waiting(const router_sessions_t *s)
{
    router_sessions_t *m = (router_sessions_t *) s; /* the lock only */
    pthread_mutex_lock(&m->mu);
    size_t n = m->nheld;
    pthread_mutex_unlock(&m->mu);
    return n;
}

uint64_t router_sessions_failures(const router_sessions_t *s)
{
    return atomic_load(&((router_sessions_t *) s)->failures);
}

bool router_sessions_kept(const router_sessions_t *s, const char *id)
{
    return router_session_ids_has(s->ids, id);
}

router_sessions_room_t router_sessions_room(const router_sessions_t *s, bool creating)
{
    router_sessions_t *m = (router_sessions_t *) s; /* atomics only */
    if (atomic_load(&m->pub_bytes) >= s->b.bytes_max)
        return ROUTER_SESSIONS_FULL_BYTES;
    if (creating && atomic_load(&m->pub_sessions) >= s->b.sessions_max)
        return ROUTER_SESSIONS_FULL_SESSIONS;
    return ROUTER_SESSIONS_ROOM;
}

void router_sessions_usage(const router_sessions_t *s, uint64_t *sessions, uint64_t *bytes)
{
    router_sessions_t *m = (router_sessions_t *) s;
    *sessions = atomic_load(&m->pub_sessions);
    *bytes = atomic_load(&m->pub_bytes);
}

uint64_t router_sessions_pruned(const router_sessions_t *s)
{
    return atomic_load(&((router_sessions_t *) s)->pruned);
}

void router_sessions_refuse(router_sessions_t *s, bool on)
{
    atomic_store(&s->refuse, on);
}
