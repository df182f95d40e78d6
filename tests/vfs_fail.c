/* tests/vfs_fail.c — a SQLite VFS over the default one that fails or holds
 * the writes and syncs of chosen files on demand (tests/vfs_fail.h). */
#include "vfs_fail.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#define S_MATCH_MAX 256u /* octets of a rule's path substring */
#define S_PATH_MAX 1024u /* octets of a file's path kept for matching */

typedef struct {
    char match[S_MATCH_MAX]; /* "" for no rule */
    long skip;               /* calls still let through */
    long count;              /* calls still to fail; < 0: all */
    unsigned failed;         /* calls failed since armed */
} s_rule_t;

static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_cv = PTHREAD_COND_INITIALIZER;
static s_rule_t s_rules[2];          /* by vfs_fail_kind_t */
static char s_hold[S_MATCH_MAX];     /* "" for no hold */
static unsigned s_nheld;             /* syncs waiting on the hold */
static sqlite3_vfs *s_real;          /* the default VFS we wrap */
static sqlite3_vfs s_vfs;            /* ours */

/* A file of ours: the real one follows it in the same allocation. */
typedef struct {
    sqlite3_file base;
    sqlite3_file *real;
    char path[S_PATH_MAX];
} s_file_t;

/* True when the rule of `kind` fails this call of f's (counting it). */
static bool s_fails(const s_file_t *f, vfs_fail_kind_t kind)
{
    bool fail = false;
    pthread_mutex_lock(&s_mu);
    s_rule_t *r = &s_rules[kind];
    if (r->match[0] && strstr(f->path, r->match)) {
        if (r->skip > 0)
            r->skip--;
        else if (r->count != 0) {
            if (r->count > 0)
                r->count--;
            r->failed++;
            fail = true;
        }
    }
    pthread_mutex_unlock(&s_mu);
    return fail;
}

/* ---------------------------------------------------------------- io methods */

static int s_close(sqlite3_file *p)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xClose(f->real);
}

static int s_read(sqlite3_file *p, void *buf, int n, sqlite3_int64 off)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xRead(f->real, buf, n, off);
}

static int s_write(sqlite3_file *p, const void *buf, int n, sqlite3_int64 off)
{
    s_file_t *f = (s_file_t *) p;
    if (s_fails(f, VFS_FAIL_WRITE))
        return SQLITE_FULL;
    return f->real->pMethods->xWrite(f->real, buf, n, off);
}

static int s_truncate(sqlite3_file *p, sqlite3_int64 size)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xTruncate(f->real, size);
}

static int s_sync(sqlite3_file *p, int flags)
{
    s_file_t *f = (s_file_t *) p;
    pthread_mutex_lock(&s_mu);
    while (s_hold[0] && strstr(f->path, s_hold)) {
        s_nheld++;
        pthread_cond_wait(&s_cv, &s_mu);
        s_nheld--;
    }
    pthread_mutex_unlock(&s_mu);
    if (s_fails(f, VFS_FAIL_SYNC))
        return SQLITE_IOERR_FSYNC;
    return f->real->pMethods->xSync(f->real, flags);
}

static int s_file_size(sqlite3_file *p, sqlite3_int64 *size)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xFileSize(f->real, size);
}

static int s_lock(sqlite3_file *p, int level)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xLock(f->real, level);
}

static int s_unlock(sqlite3_file *p, int level)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xUnlock(f->real, level);
}

static int s_check_lock(sqlite3_file *p, int *out)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int s_control(sqlite3_file *p, int op, void *arg)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xFileControl(f->real, op, arg);
}

static int s_sector(sqlite3_file *p)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xSectorSize(f->real);
}

static int s_device(sqlite3_file *p)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xDeviceCharacteristics(f->real);
}

static int s_shm_map(sqlite3_file *p, int pg, int sz, int extend, void volatile **out)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xShmMap(f->real, pg, sz, extend, out);
}

static int s_shm_lock(sqlite3_file *p, int off, int n, int flags)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xShmLock(f->real, off, n, flags);
}

static void s_shm_barrier(sqlite3_file *p)
{
    s_file_t *f = (s_file_t *) p;
    f->real->pMethods->xShmBarrier(f->real);
}

static int s_shm_unmap(sqlite3_file *p, int del)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xShmUnmap(f->real, del);
}

static int s_fetch(sqlite3_file *p, sqlite3_int64 off, int n, void **out)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xFetch(f->real, off, n, out);
}

static int s_unfetch(sqlite3_file *p, sqlite3_int64 off, void *ptr)
{
    s_file_t *f = (s_file_t *) p;
    return f->real->pMethods->xUnfetch(f->real, off, ptr);
}

/* Ours mirror the real file's version: a method it lacks stays NULL. */
static sqlite3_io_methods s_methods_for(const sqlite3_io_methods *real)
{
    sqlite3_io_methods m = {
        .iVersion = real->iVersion,
        .xClose = s_close,
        .xRead = s_read,
        .xWrite = s_write,
        .xTruncate = s_truncate,
        .xSync = s_sync,
        .xFileSize = s_file_size,
        .xLock = s_lock,
        .xUnlock = s_unlock,
        .xCheckReservedLock = s_check_lock,
        .xFileControl = s_control,
        .xSectorSize = s_sector,
        .xDeviceCharacteristics = s_device,
    };
    if (real->iVersion >= 2 && real->xShmMap) {
        m.xShmMap = s_shm_map;
        m.xShmLock = s_shm_lock;
        m.xShmBarrier = s_shm_barrier;
        m.xShmUnmap = s_shm_unmap;
    }
    if (real->iVersion >= 3 && real->xFetch) {
        m.xFetch = s_fetch;
        m.xUnfetch = s_unfetch;
    }
    return m;
}

/* The unix VFS gives every file of a kind the same methods; one table of
 * ours per real table seen (a handful at most). */
#define S_TABLES_MAX 8u
static struct {
    const sqlite3_io_methods *real;
    sqlite3_io_methods ours;
} s_tables[S_TABLES_MAX];

static const sqlite3_io_methods *s_methods(const sqlite3_io_methods *real)
{
    const sqlite3_io_methods *out = NULL;
    pthread_mutex_lock(&s_mu);
    for (unsigned i = 0; i < S_TABLES_MAX && !out; i++) {
        if (s_tables[i].real == real)
            out = &s_tables[i].ours;
        else if (!s_tables[i].real) {
            s_tables[i].real = real;
            s_tables[i].ours = s_methods_for(real);
            out = &s_tables[i].ours;
        }
    }
    pthread_mutex_unlock(&s_mu);
    return out;
}

/* ---------------------------------------------------------------- the VFS */

static int s_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *p, int flags, int *out_flags)
{
    (void) vfs;
    s_file_t *f = (s_file_t *) p;
    f->real = (sqlite3_file *) (f + 1);
    snprintf(f->path, sizeof f->path, "%s", name ? name : "");
    int rc = s_real->xOpen(s_real, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK || !f->real->pMethods) {
        p->pMethods = NULL;
        return rc;
    }
    p->pMethods = s_methods(f->real->pMethods);
    if (!p->pMethods) { /* more kinds of file than expected */
        f->real->pMethods->xClose(f->real);
        return SQLITE_CANTOPEN;
    }
    return SQLITE_OK;
}

static int s_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    (void) vfs;
    return s_real->xDelete(s_real, name, sync_dir);
}

static int s_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    (void) vfs;
    return s_real->xAccess(s_real, name, flags, out);
}

static int s_full_path(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    (void) vfs;
    return s_real->xFullPathname(s_real, name, n, out);
}

static void *s_dl_open(sqlite3_vfs *vfs, const char *name)
{
    (void) vfs;
    return s_real->xDlOpen(s_real, name);
}

static void s_dl_error(sqlite3_vfs *vfs, int n, char *out)
{
    (void) vfs;
    s_real->xDlError(s_real, n, out);
}

static void (*s_dl_sym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
    (void) vfs;
    return s_real->xDlSym(s_real, h, sym);
}

static void s_dl_close(sqlite3_vfs *vfs, void *h)
{
    (void) vfs;
    s_real->xDlClose(s_real, h);
}

static int s_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    (void) vfs;
    return s_real->xRandomness(s_real, n, out);
}

static int s_sleep(sqlite3_vfs *vfs, int us)
{
    (void) vfs;
    return s_real->xSleep(s_real, us);
}

static int s_current_time(sqlite3_vfs *vfs, double *out)
{
    (void) vfs;
    return s_real->xCurrentTime(s_real, out);
}

static int s_last_error(sqlite3_vfs *vfs, int n, char *out)
{
    (void) vfs;
    return s_real->xGetLastError(s_real, n, out);
}

static int s_current_time_i64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
    (void) vfs;
    return s_real->xCurrentTimeInt64(s_real, out);
}

int vfs_fail_install(void)
{
    if (s_real)
        return 0;
    if (sqlite3_initialize() != SQLITE_OK || !(s_real = sqlite3_vfs_find(NULL)))
        return -1;
    s_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int) sizeof(s_file_t) + s_real->szOsFile,
        .mxPathname = s_real->mxPathname,
        .zName = "kith-vfs-fail",
        .xOpen = s_open,
        .xDelete = s_delete,
        .xAccess = s_access,
        .xFullPathname = s_full_path,
        .xDlOpen = s_dl_open,
        .xDlError = s_dl_error,
        .xDlSym = s_dl_sym,
        .xDlClose = s_dl_close,
        .xRandomness = s_randomness,
        .xSleep = s_sleep,
        .xCurrentTime = s_current_time,
        .xGetLastError = s_last_error,
        .xCurrentTimeInt64 = s_current_time_i64,
    };
    return sqlite3_vfs_register(&s_vfs, 1) == SQLITE_OK ? 0 : -1;
}

void vfs_fail_arm(vfs_fail_kind_t kind, const char *match, long skip, long count)
{
    pthread_mutex_lock(&s_mu);
    s_rule_t *r = &s_rules[kind];
    snprintf(r->match, sizeof r->match, "%s", match ? match : "");
    r->skip = skip;
    r->count = count;
    r->failed = 0;
    pthread_mutex_unlock(&s_mu);
}

void vfs_fail_hold(const char *match)
{
    pthread_mutex_lock(&s_mu);
    snprintf(s_hold, sizeof s_hold, "%s", match ? match : "");
    pthread_cond_broadcast(&s_cv);
    pthread_mutex_unlock(&s_mu);
}

unsigned vfs_fail_failed(vfs_fail_kind_t kind)
{
    pthread_mutex_lock(&s_mu);
    unsigned n = s_rules[kind].failed;
    pthread_mutex_unlock(&s_mu);
    return n;
}

unsigned vfs_fail_held(void)
{
    pthread_mutex_lock(&s_mu);
    unsigned n = s_nheld;
    pthread_mutex_unlock(&s_mu);
    return n;
}

void vfs_fail_clear(void)
{
    pthread_mutex_lock(&s_mu);
    memset(s_rules, 0, sizeof s_rules);
    s_hold[0] = '\0';
    pthread_cond_broadcast(&s_cv);
    pthread_mutex_unlock(&s_mu);
}
