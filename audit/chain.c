/* audit/chain.c — the audit log on disk: open and resume, group-committed
 * appends, rotation, verification and queries. See chain.h and WIRE §21. */
#include "audit/chain.h"

#include <assert.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit/head.h"
#include "router/clock.h"
#include "router/log.h"

/* A rotation writes the new log and its head under these names first, so a
 * crash at any step leaves the chain whole (s_rotation_recover). */
#define S_NEW_SUFFIX ".new"
#define S_NEW_HEAD_SUFFIX S_NEW_SUFFIX AUDIT_HEAD_SUFFIX

struct audit_chain {
    char *path;                      /* the log */
    char *head_path;                 /* path + ".head" */
    int fd;                          /* the log, O_APPEND */
    int head_fd;                     /* the head file */
    audit_key_t key;                 /* HMAC key, len 0 for none */
    audit_sync_fn sync;              /* fdatasync or the test's stand-in */
    void *sync_ud;
    uint64_t first_seq;              /* the log's first record (0: none yet) */
    uint64_t last_seq;               /* last durable record */
    uint8_t last_hash[AUDIT_HASH_LEN];
    off_t durable_len;               /* the log's length through last_seq */
    bool cut_owed;                   /* a failed batch's bytes may follow durable_len */
    uint64_t rotate_bytes;           /* rotate at this length; 0: never */
    off_t rotate_at;                 /* the next rotation is tried at this length */
    uint32_t keep;                   /* rotated files kept */
    char *batch;                     /* lines of one append, reused */
    size_t batch_cap;
};

const char *audit_err_str(audit_err_t e)
{
    switch (e) {
    case AUDIT_OK:          return "ok";
    case AUDIT_E_IO:        return "io";
    case AUDIT_E_EVENT:     return "event";
    case AUDIT_E_BROKEN:    return "broken";
    case AUDIT_E_NO_MEMORY: return "no_memory";
    }
    return "unknown";
}

const char *audit_verify_reason_str(audit_verify_reason_t r)
{
    switch (r) {
    case AUDIT_V_OK:            return "ok";
    case AUDIT_V_MALFORMED:     return "malformed";
    case AUDIT_V_TORN:          return "torn";
    case AUDIT_V_SEQ:           return "seq";
    case AUDIT_V_PREV:          return "prev";
    case AUDIT_V_HASH:          return "hash";
    case AUDIT_V_HMAC:          return "hmac";
    case AUDIT_V_HMAC_MISSING:  return "hmac_missing";
    case AUDIT_V_TRUNCATED:     return "truncated";
    case AUDIT_V_HEAD_MISMATCH: return "head_mismatch";
    case AUDIT_V_HEAD_MISSING:  return "head_missing";
    case AUDIT_V_HEAD_BAD:      return "head_bad";
    case AUDIT_V_IO:            return "io";
    case AUDIT_V_ROTATION:      return "rotation";
    }
    return "unknown";
}

__attribute__((format(printf, 3, 4))) static void s_err(audit_error_t *err, audit_err_t code,
                                                        const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
}

static int s_fdatasync(int fd, void *ud)
{
    (void) ud;
    return fdatasync(fd);
}

/* ================================================================ reading lines */

/* Reads a file line by line through a fixed buffer, so a line of any length
 * costs at most AUDIT_LINE_MAX + 1 bytes: a longer one is handed over cut
 * (`long_line`), which no record can be. */
typedef struct {
    int fd;
    char *buf;            /* AUDIT_LINE_MAX + 1 + S_READ_CHUNK */
    size_t len;           /* bytes buffered */
    size_t pos;           /* next unread byte */
    bool eof;
    off_t offset;         /* file offset of buf[pos] */
} s_reader_t;

#define S_READ_CHUNK (64u * 1024u)
#define S_READER_CAP (AUDIT_LINE_MAX + 1 + S_READ_CHUNK)

typedef struct {
    const char *p;        /* the line, newline excluded (valid until the next call) */
    size_t len;
    bool newline;         /* it ended in '\n' (false: the file's last bytes) */
    bool long_line;       /* longer than AUDIT_LINE_MAX: cut, the rest skipped */
    off_t offset;         /* where it starts in the file */
} s_line_t;

static void s_reader_consume(s_reader_t *r, size_t n)
{
    r->pos += n;
    r->offset += (off_t) n;
}

/* Moves what is unread to the front and reads more. 0, or -1 (errno). */
static int s_reader_fill(s_reader_t *r)
{
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->len - r->pos);
        r->len -= r->pos;
        r->pos = 0;
    }
    ssize_t n;
    do
        n = read(r->fd, r->buf + r->len, S_READER_CAP - r->len);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    if (n == 0)
        r->eof = true;
    r->len += (size_t) n;
    return 0;
}

/* 1 with *line, 0 at the end, -1 on a read error (errno). A line longer
 * than AUDIT_LINE_MAX comes back as long_line with no bytes (p NULL). */
static int s_reader_next(s_reader_t *r, s_line_t *line)
{
    bool skipping = false;
    for (;;) {
        char *start = r->buf + r->pos;
        size_t avail = r->len - r->pos;
        char *nl = memchr(start, '\n', avail);
        if (skipping) {
            if (nl) {
                s_reader_consume(r, (size_t) (nl - start) + 1);
                line->newline = true;
                return 1;
            }
            s_reader_consume(r, avail);
            if (r->eof)
                return 1; /* newline stays false */
        } else if (nl && (size_t) (nl - start) <= AUDIT_LINE_MAX) {
            *line = (s_line_t){.p = start, .len = (size_t) (nl - start), .newline = true,
                               .offset = r->offset};
            s_reader_consume(r, line->len + 1);
            return 1;
        } else if (nl || avail > AUDIT_LINE_MAX) {
            *line = (s_line_t){.long_line = true, .offset = r->offset};
            skipping = true;
            continue;
        } else if (r->eof) {
            if (avail == 0)
                return 0;
            *line = (s_line_t){.p = start, .len = avail, .offset = r->offset};
            s_reader_consume(r, avail);
            return 1;
        }
        if (s_reader_fill(r) != 0)
            return -1;
    }
}

/* Reads a file's lines last first, for queries, which want the newest
 * records: through the same fixed buffer, so a query costs the bytes back
 * to its oldest match, not the whole file. A line longer than
 * AUDIT_LINE_MAX (no record is) and the file's unterminated last bytes (an
 * append cut short) are passed over. Bytes appended after the reader was
 * opened are not read. */
typedef struct {
    int fd;
    char *buf;            /* S_READER_CAP */
    size_t lo, hi;        /* buf[lo, hi) holds the file's bytes from `offset` */
    off_t offset;         /* file offset of buf[lo]; everything from offset + hi - lo on is done */
    off_t size;           /* the file's size when opened */
    bool skipping;        /* the bytes before hi belong to a line passed over */
} s_rreader_t;

/* Reads the chunk before buf[lo], first moving what is held to the end of
 * the buffer when there is no room for a chunk before it. 0, or -1
 * (errno). */
static int s_rreader_fill(s_rreader_t *r)
{
    size_t have = r->hi - r->lo;
    assert(have <= AUDIT_LINE_MAX + 1); /* s_rreader_prev lets a longer line go */
    if (r->lo < S_READ_CHUNK) { /* so a chunk fits before it */
        memmove(r->buf + S_READER_CAP - have, r->buf + r->lo, have);
        r->lo = S_READER_CAP - have;
        r->hi = S_READER_CAP;
    }
    size_t n = (off_t) S_READ_CHUNK < r->offset ? S_READ_CHUNK : (size_t) r->offset;
    for (size_t got = 0; got < n;) {
        ssize_t k = pread(r->fd, r->buf + r->lo - n + got, n - got, r->offset - (off_t) (n - got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EIO; /* the file was cut shorter under the reader */
            return -1;
        }
        got += (size_t) k;
    }
    r->lo -= n;
    r->offset -= (off_t) n;
    return 0;
}

/* 1 with the line before the last one handed over (newline excluded, valid
 * until the next call), 0 at the start of the file, -1 on a read error
 * (errno). */
static int s_rreader_prev(s_rreader_t *r, const char **p, size_t *len)
{
    for (;;) {
        size_t have = r->hi - r->lo;
        if (have > 0) {
            if (!r->skipping && r->buf[r->hi - 1] != '\n')
                r->skipping = true; /* the file's last bytes, never terminated */
            size_t body = r->skipping ? have : have - 1; /* before the terminator */
            const char *nl = memrchr(r->buf + r->lo, '\n', body);
            if (nl || r->offset == 0) {
                size_t start = nl ? (size_t) (nl - r->buf) + 1 : r->lo;
                size_t n = r->lo + body - start;
                bool whole = !r->skipping && n <= AUDIT_LINE_MAX;
                r->hi = start;
                r->skipping = false;
                if (whole) {
                    *p = r->buf + start;
                    *len = n;
                    return 1;
                }
                continue;
            }
            if (body > AUDIT_LINE_MAX) { /* too long for a record: let it go */
                r->skipping = true;
                r->hi = r->lo;
            }
        } else if (r->offset == 0) {
            return 0;
        }
        if (s_rreader_fill(r) != 0)
            return -1;
    }
}

/* ================================================================ open */

static char *s_strcat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (s) {
        memcpy(s, a, na);
        memcpy(s + na, b, nb + 1);
    }
    return s;
}

/* Makes the files' names durable in their directory (once, at creation). */
static void s_sync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (dfd >= 0) {
        (void) fsync(dfd);
        close(dfd);
    }
}

/* ================================================================ rotation */

static int s_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t) w;
    }
    return 0;
}

/* A rotated file is named for the seq of its first record, 20 digits
 * ("audit.log.00000000000000000001"), so names never move once given,
 * sort as the chain runs, and a file removed from the middle shows as a
 * gap in the chain (verify). */
#define S_SEQ_DIGITS 20

/* `path` + suffix, or the rotated file path.<seq> + suffix when seq > 0.
 * Caller frees; NULL when out of memory. */
static char *s_file_name(const char *path, uint64_t seq, const char *suffix)
{
    if (!seq)
        return s_strcat(path, suffix);
    size_t n = strlen(path) + strlen(suffix) + S_SEQ_DIGITS + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s.%0*llu%s", path, S_SEQ_DIGITS, (unsigned long long) seq, suffix);
    return s;
}

static bool s_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static int s_u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

/* The rotated files of `path`: the first seq each is named for, ascending,
 * at most S_ROTATED_SCAN_MAX. Returns 0 with *seqs (caller frees) and
 * *n, or -1 (errno). A directory that holds none gives 0 and n 0. */
#define S_ROTATED_SCAN_MAX (4u * AUDIT_KEEP_MAX)
static int s_rotated_list(const char *path, uint64_t **seqs, size_t *n)
{
    *seqs = NULL;
    *n = 0;
    char *copy = strdup(path), *copy2 = strdup(path);
    uint64_t *out = calloc(S_ROTATED_SCAN_MAX, sizeof *out);
    DIR *d = copy && copy2 && out ? opendir(dirname(copy)) : NULL;
    int rc = -1;
    if (!copy || !copy2 || !out)
        errno = ENOMEM;
    if (!d) {
        if (errno == ENOENT) /* no directory: no files */
            rc = 0;
        goto done;
    }
    const char *base = basename(copy2);
    size_t blen = strlen(base), count = 0;
    struct dirent *e;
    while ((e = readdir(d)) && count < S_ROTATED_SCAN_MAX) {
        const char *nm = e->d_name;
        if (strlen(nm) != blen + 1 + S_SEQ_DIGITS || memcmp(nm, base, blen) || nm[blen] != '.')
            continue;
        uint64_t v = 0;
        bool digits = true;
        for (const char *q = nm + blen + 1; *q && digits; q++) {
            digits = *q >= '0' && *q <= '9' && v <= (UINT64_MAX - 9) / 10;
            v = v * 10 + (uint64_t) (*q - '0');
        }
        if (digits && v > 0)
            out[count++] = v;
    }
    qsort(out, count, sizeof *out, s_u64_cmp);
    *seqs = out;
    *n = count;
    out = NULL;
    rc = 0;
done:
    if (d)
        closedir(d);
    free(out);
    free(copy);
    free(copy2);
    return rc;
}

/* A rotation goes (s_rotate): (1) the new log, opened by its
 * audit_rotated record, and its head are written and synced as path.new
 * and path.new.head; (2) path → path.<S>, S the first seq it holds, then
 * path.head → path.<S>.head; (3) path.new → path; (4) path.new.head →
 * path.head; (5) rotated files past audit.keep are deleted, oldest first.
 * A crash between any two steps leaves one of these states, which this
 * finishes or undoes before the log is opened: nothing acknowledged is
 * lost and no record is repeated.
 *   - path.new beside path: (2) never ran; the new files are dropped.
 *   - path.new, no path: (2) moved the log to the newest path.<S>; its head
 *     follows it if it has not, then (3).
 *   - path.new.head with no path.new and no path.head: (3) ran; (4) is done.
 * 0, or -1 with *err. */
static int s_rotation_recover(const char *path, audit_error_t *err)
{
    int rc = -1;
    uint64_t *seqs = NULL;
    size_t n = 0;
    char *new_log = s_strcat(path, S_NEW_SUFFIX);
    char *new_head = s_strcat(path, S_NEW_HEAD_SUFFIX);
    char *head = s_strcat(path, AUDIT_HEAD_SUFFIX);
    char *last_head = NULL;
    if (!new_log || !new_head || !head) {
        s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
        goto done;
    }
    if (s_exists(new_log) && s_exists(path)) {
        if ((unlink(new_log) != 0 && errno != ENOENT) || (unlink(new_head) != 0 && errno != ENOENT))
            goto io;
        ROUTER_LOG(ROUTER_LOG_WARN, "audit", "%s: a rotation a crash interrupted was undone", path);
    } else if (s_exists(new_log)) {
        if (s_rotated_list(path, &seqs, &n) != 0)
            goto io;
        if (n && !(last_head = s_file_name(path, seqs[n - 1], AUDIT_HEAD_SUFFIX))) {
            s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
            goto done;
        }
        if (last_head && s_exists(head) && !s_exists(last_head) && rename(head, last_head) != 0)
            goto io;
        if (rename(new_log, path) != 0)
            goto io;
        ROUTER_LOG(ROUTER_LOG_WARN, "audit", "%s: a rotation a crash interrupted was finished", path);
    }
    if (s_exists(new_head) && !s_exists(new_log) && !s_exists(head) && rename(new_head, head) != 0)
        goto io;
    rc = 0;
    goto done;
io:
    s_err(err, AUDIT_E_IO, "cannot finish the rotation of %s: %s", path, strerror(errno));
done:
    free(seqs);
    free(new_log);
    free(new_head);
    free(head);
    free(last_head);
    return rc;
}

/* (5): deletes the oldest rotated files until `keep` are left. Failures are
 * logged: the next rotation tries again. */
static void s_rotated_prune(const audit_chain_t *self)
{
    uint64_t *seqs;
    size_t n;
    if (s_rotated_list(self->path, &seqs, &n) != 0) {
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "cannot list the rotated files of %s: %s",
                   self->path, strerror(errno));
        return;
    }
    /* Oldest first, and never past one that stays: a newer file deleted
     * while an older one is kept would be a gap in the chain. */
    for (size_t i = 0; i + self->keep < n; i++) {
        char *log = s_file_name(self->path, seqs[i], "");
        char *head = s_file_name(self->path, seqs[i], AUDIT_HEAD_SUFFIX);
        bool gone = log && head && unlink(log) == 0;
        if (gone && unlink(head) != 0 && errno != ENOENT)
            ROUTER_LOG(ROUTER_LOG_WARN, "audit", "cannot delete %s: %s", head, strerror(errno));
        else if (!gone)
            ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "cannot delete %s: %s",
                       log ? log : "a rotated file", log && head ? strerror(errno) : "out of memory");
        free(log);
        free(head);
        if (!gone)
            break;
    }
    free(seqs);
}

/* Steps (1) to (5) above, then the chain goes on in the new log. Returns 0,
 * or -1 with *err and everything as it was (the chain stays in this log). */
static int s_rotate(audit_chain_t *self, audit_error_t *err)
{
    int rc = -1, fd = -1, hfd = -1;
    bool moved = false;
    char *new_log = s_strcat(self->path, S_NEW_SUFFIX);
    char *new_head = s_strcat(self->path, S_NEW_HEAD_SUFFIX);
    char *old_log = s_file_name(self->path, self->first_seq, "");
    char *old_head = s_file_name(self->path, self->first_seq, AUDIT_HEAD_SUFFIX);
    if (!new_log || !new_head || !old_log || !old_head) {
        s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
        goto done;
    }
    if (!self->first_seq) {
        s_err(err, AUDIT_E_BROKEN, "%s: its first record could not be read", self->path);
        goto done;
    }
    /* The last rotation's step (4) may have failed: its head, which this
     * chain still writes, goes into place before anything else. */
    if (s_exists(new_head) &&
        (s_exists(self->head_path) || rename(new_head, self->head_path) != 0)) {
        s_err(err, AUDIT_E_IO, "%s is still there from the last rotation", new_head);
        goto done;
    }
    /* (1) The record that opens the new log. */
    char detail[64], line[1024], why[160];
    int dl = snprintf(detail, sizeof detail, "{\"previous_seq\":%llu}",
                      (unsigned long long) self->last_seq);
    proto_audit_event_t ev = {.time_ms = router_clock_wall_ms(), .type = AUDIT_ROTATED_TYPE,
                              .type_len = strlen(AUDIT_ROTATED_TYPE), .detail = detail,
                              .detail_len = (size_t) dl};
    uint8_t hash[AUDIT_HASH_LEN];
    long len = audit_record_format(self->last_seq + 1, &ev, self->last_hash, &self->key, line,
                                   sizeof line - 1, hash, why, sizeof why);
    if (len < 0) {
        s_err(err, AUDIT_E_EVENT, "the rotation record: %s", why);
        goto done;
    }
    line[len++] = '\n';
    audit_head_t h = {.seq = self->last_seq + 1};
    memcpy(h.hash, hash, AUDIT_HASH_LEN);
    fd = open(new_log, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    hfd = fd < 0 ? -1 : open(new_head, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || hfd < 0 || s_write_all(fd, line, (size_t) len) != 0 ||
        self->sync(fd, self->sync_ud) != 0 || audit_head_write(hfd, &h, &self->key) != 0 ||
        self->sync(hfd, self->sync_ud) != 0) {
        s_err(err, AUDIT_E_IO, "cannot write %s: %s", new_log, strerror(errno));
        goto undo;
    }
    /* (2) and (3). A file of that name would be overwritten: refuse. */
    if (s_exists(old_log) || s_exists(old_head)) {
        s_err(err, AUDIT_E_IO, "%s is there already", old_log);
        goto undo;
    }
    if (rename(self->path, old_log) != 0) {
        s_err(err, AUDIT_E_IO, "cannot move %s: %s", self->path, strerror(errno));
        goto undo;
    }
    moved = true;
    if (rename(self->head_path, old_head) != 0 || rename(new_log, self->path) != 0) {
        s_err(err, AUDIT_E_IO, "cannot move %s's files into place: %s", self->path,
              strerror(errno));
        goto undo;
    }
    /* (4). Should it fail, the next open finishes it; until then this
     * chain writes its head through hfd. */
    if (rename(new_head, self->head_path) != 0)
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "cannot move %s: %s (the next start finishes it)",
                   new_head, strerror(errno));
    s_sync_dir(self->path);
    close(self->fd);
    close(self->head_fd);
    self->fd = fd;
    self->head_fd = hfd;
    fd = hfd = -1;
    self->durable_len = len;
    self->last_seq++;
    self->first_seq = self->last_seq;
    memcpy(self->last_hash, hash, AUDIT_HASH_LEN);
    ROUTER_LOG(ROUTER_LOG_INFO, "audit", "rotated %s: records to %llu are in %s", self->path,
               (unsigned long long) self->last_seq - 1, old_log);
    s_rotated_prune(self); /* (5) */
    rc = 0;
    goto done;
undo:
    if (moved) {
        /* Back where it was, so the chain goes on in this log. */
        (void) rename(old_head, self->head_path);
        (void) rename(old_log, self->path);
    }
    (void) unlink(new_log);
    (void) unlink(new_head);
done:
    if (fd >= 0)
        close(fd);
    if (hfd >= 0)
        close(hfd);
    free(new_log);
    free(new_head);
    free(old_log);
    free(old_head);
    return rc;
}

/* Finds the last complete line of the log: its record (checked), the
 * length through it, and whether torn bytes follow. A scan, so a log of any
 * size needs only the reader's buffer; done once per open. */
static int s_find_tail(audit_chain_t *self, audit_record_t *last, bool *have_last, off_t *through,
                       off_t *file_len, audit_error_t *err)
{
    s_reader_t r = {.fd = self->fd};
    int rc = -1;
    char *keep = malloc(AUDIT_LINE_MAX + 1);
    if (!(r.buf = malloc(S_READER_CAP)) || !keep) {
        s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
        goto done;
    }
    if (lseek(self->fd, 0, SEEK_SET) < 0) {
        s_err(err, AUDIT_E_IO, "%s: %s", self->path, strerror(errno));
        goto done;
    }
    size_t keep_len = 0;
    bool keep_long = false;
    *through = 0;
    *have_last = false;
    s_line_t line;
    int got;
    while ((got = s_reader_next(&r, &line)) == 1) {
        if (!line.newline)
            break; /* torn: bytes after the last newline */
        audit_record_t first;
        if (!*have_last && !line.long_line && audit_record_read(line.p, line.len, &first) == 0)
            self->first_seq = first.seq; /* where a rotation names the file */
        if (line.len)
            memcpy(keep, line.p, line.len);
        keep_len = line.len;
        keep_long = line.long_line;
        *have_last = true;
        *through = r.offset;
    }
    if (got < 0) {
        s_err(err, AUDIT_E_IO, "%s: %s", self->path, strerror(errno));
        goto done;
    }
    *file_len = r.offset;
    if (*have_last) {
        audit_rec_err_t e = keep_long ? AUDIT_REC_MALFORMED : audit_record_check(keep, keep_len, &self->key, last);
        if (e == AUDIT_REC_NO_MEMORY) {
            s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
            goto done;
        }
        if (e != AUDIT_REC_OK) {
            s_err(err, AUDIT_E_BROKEN,
                  "%s: the last record does not check (%s); run `kith audit verify %s`, keep the "
                  "evidence, and move the log and its .head aside to start a new chain",
                  self->path, audit_rec_err_str(e), self->path);
            goto done;
        }
        if (last->has_hmac && !self->key.len) {
            s_err(err, AUDIT_E_BROKEN,
                  "%s carries HMACs but no key is in force: set audit.hmac_key_env (and its "
                  "variable), or move the log and its .head aside to start a new chain",
                  self->path);
            goto done;
        }
    }
    rc = 0;
done:
    free(r.buf);
    free(keep);
    return rc;
}

audit_chain_t *audit_chain_open(const audit_chain_opts_t *o, audit_error_t *err)
{
    audit_chain_t *self = calloc(1, sizeof *self);
    if (!self) {
        s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
        return NULL;
    }
    self->fd = self->head_fd = -1;
    self->sync = o->sync ? o->sync : s_fdatasync;
    self->sync_ud = o->sync_ud;
    self->rotate_bytes = o->rotate_bytes;
    self->rotate_at = (off_t) o->rotate_bytes;
    self->keep = o->keep == 0 ? 1 : o->keep > AUDIT_KEEP_MAX ? AUDIT_KEEP_MAX : o->keep;
    if (o->key)
        self->key = *o->key;
    if (!(self->path = strdup(o->path)) || !(self->head_path = s_strcat(o->path, AUDIT_HEAD_SUFFIX))) {
        s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
        goto fail;
    }
    if (s_rotation_recover(self->path, err) != 0)
        goto fail;
    struct stat st;
    bool created = stat(self->path, &st) != 0;
    self->fd = open(self->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    self->head_fd = self->fd < 0 ? -1 : open(self->head_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (self->fd < 0 || self->head_fd < 0) {
        s_err(err, AUDIT_E_IO, "cannot open %s: %s", self->fd < 0 ? self->path : self->head_path,
              strerror(errno));
        goto fail;
    }
    audit_head_t head;
    int hr = audit_head_read(self->head_path, &self->key, &head);
    if (hr == -2) {
        s_err(err, AUDIT_E_IO, "cannot read %s: %s", self->head_path, strerror(errno));
        goto fail;
    }
    if (hr == 0 || (hr == -1 && fstat(self->head_fd, &st) == 0 && st.st_size == 0))
        hr = 0; /* just created (by us, above) */

    audit_record_t last;
    bool have_last;
    off_t through, file_len;
    if (s_find_tail(self, &last, &have_last, &through, &file_len, err) != 0)
        goto fail;
    self->last_seq = have_last ? last.seq : 0;
    memcpy(self->last_hash, have_last ? last.hash : audit_genesis, AUDIT_HASH_LEN);

    if (hr == -1) {
        s_err(err, AUDIT_E_BROKEN,
              "%s has no valid slot%s; run `kith audit verify %s`, then move the log and its "
              ".head aside to start a new chain",
              self->head_path, self->key.len ? " made with this HMAC key" : "", self->path);
        goto fail;
    }
    if (hr == 0 && have_last) {
        s_err(err, AUDIT_E_BROKEN,
              "%s has records but %s is missing, so a cut-off tail could not be told; run `kith "
              "audit verify %s`, then move the log aside to start a new chain",
              self->path, self->head_path, self->path);
        goto fail;
    }
    if (hr == 1 && head.seq > self->last_seq) {
        s_err(err, AUDIT_E_BROKEN,
              "%s ends at record %llu but its head says %llu were written: records were cut off; "
              "keep the evidence and move the log and its .head aside to start a new chain",
              self->path, (unsigned long long) self->last_seq, (unsigned long long) head.seq);
        goto fail;
    }
    if (hr == 1 && head.seq == self->last_seq && self->last_seq > 0 &&
        sodium_memcmp(head.hash, self->last_hash, AUDIT_HASH_LEN) != 0) {
        s_err(err, AUDIT_E_BROKEN,
              "%s: record %llu is not the one its head remembers; run `kith audit verify %s`",
              self->path, (unsigned long long) head.seq, self->path);
        goto fail;
    }
    if (file_len > through) {
        /* A crash tore the last write: those records were never
         * acknowledged (the head never named them). */
        ROUTER_LOG(ROUTER_LOG_WARN, "audit",
                   "%s: cutting %lld bytes of a write a crash left unfinished (never acknowledged)",
                   self->path, (long long) (file_len - through));
        if (ftruncate(self->fd, through) != 0 || self->sync(self->fd, self->sync_ud) != 0) {
            s_err(err, AUDIT_E_IO, "cannot repair %s: %s", self->path, strerror(errno));
            goto fail;
        }
    }
    self->durable_len = through;
    if (hr == 0 || head.seq < self->last_seq || head.keyed != (self->key.len > 0)) {
        audit_head_t h = {.seq = self->last_seq};
        memcpy(h.hash, self->last_hash, AUDIT_HASH_LEN);
        if (audit_head_write(self->head_fd, &h, &self->key) != 0 ||
            self->sync(self->head_fd, self->sync_ud) != 0) {
            s_err(err, AUDIT_E_IO, "cannot write %s: %s", self->head_path, strerror(errno));
            goto fail;
        }
    }
    if (created)
        s_sync_dir(self->path);
    return self;
fail:
    audit_chain_close(&self);
    return NULL;
}

void audit_chain_close(audit_chain_t **self_p)
{
    audit_chain_t *self = *self_p;
    if (!self)
        return;
    if (self->fd >= 0)
        close(self->fd);
    if (self->head_fd >= 0)
        close(self->head_fd);
    audit_key_clear(&self->key);
    free(self->path);
    free(self->head_path);
    free(self->batch);
    free(self);
    *self_p = NULL;
}

uint64_t audit_chain_last_seq(const audit_chain_t *self) { return self->last_seq; }
const char *audit_chain_path(const audit_chain_t *self) { return self->path; }

/* ================================================================ append */

int audit_chain_append(audit_chain_t *self, const proto_audit_event_t *ev, size_t n,
                       uint64_t *first_seq, audit_error_t *err)
{
    if (n == 0 || n > PROTO_AUDIT_EVENTS_MAX) {
        s_err(err, AUDIT_E_EVENT, "a batch holds 1 to %u events", PROTO_AUDIT_EVENTS_MAX);
        return -1;
    }
    if (self->rotate_bytes && self->durable_len >= self->rotate_at && !self->cut_owed) {
        /* A rotation that fails is tried again once the log has grown by
         * a sixteenth more, not at every batch. */
        audit_error_t re;
        if (s_rotate(self, &re) == 0) {
            self->rotate_at = (off_t) self->rotate_bytes;
        } else {
            self->rotate_at = self->durable_len + (off_t) (self->rotate_bytes / 16) + 1;
            ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "%s (the log goes on, and is rotated later)",
                       re.msg);
        }
    }
    size_t need = n * (AUDIT_LINE_MAX + 1);
    if (self->batch_cap < need) {
        char *b = realloc(self->batch, need);
        if (!b) {
            s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
            return -1;
        }
        self->batch = b;
        self->batch_cap = need;
    }
    /* Format every line first: a bad event refuses the batch before any
     * byte reaches the file. */
    uint8_t hash[AUDIT_HASH_LEN];
    memcpy(hash, self->last_hash, AUDIT_HASH_LEN);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        char why[160];
        long l = audit_record_format(self->last_seq + 1 + i, &ev[i], hash, &self->key,
                                     self->batch + len, self->batch_cap - len - 1, hash, why,
                                     sizeof why);
        if (l < 0) {
            s_err(err, AUDIT_E_EVENT, "event %zu (%.*s): %s", i, (int) ev[i].type_len, ev[i].type, why);
            return -1;
        }
        len += (size_t) l;
        self->batch[len++] = '\n';
    }
    /* A failed batch that could not be cut back left its records after the
     * last durable one: this batch, written after them, would repeat their
     * seqs and break the chain. Cut them first, or refuse the batch. */
    if (self->cut_owed) {
        if (ftruncate(self->fd, self->durable_len) != 0) {
            s_err(err, AUDIT_E_IO, "cannot cut %s back to %lld bytes: %s", self->path,
                  (long long) self->durable_len, strerror(errno));
            return -1;
        }
        self->cut_owed = false;
    }
    if (s_write_all(self->fd, self->batch, len) != 0) {
        s_err(err, AUDIT_E_IO, "cannot write %s: %s", self->path, strerror(errno));
        goto undo;
    }
    if (self->sync(self->fd, self->sync_ud) != 0) {
        s_err(err, AUDIT_E_IO, "cannot fsync %s: %s", self->path, strerror(errno));
        goto undo;
    }
    /* The log's first record, which names the file when it is rotated: this
     * batch's first only in a log that held nothing. In a log whose first
     * line is not a record (first_seq 0 from open), the batch is not first:
     * naming the file for it would give it a name its first line belies. */
    if (!self->first_seq && self->durable_len == 0)
        self->first_seq = self->last_seq + 1;
    self->durable_len += (off_t) len;
    *first_seq = self->last_seq + 1;
    self->last_seq += n;
    memcpy(self->last_hash, hash, AUDIT_HASH_LEN);
    /* The records are durable and chained. A head that lags behind only
     * weakens truncation checks until the next batch writes it, so this
     * failure is logged, not reported as a lost append. */
    audit_head_t h = {.seq = self->last_seq};
    memcpy(h.hash, hash, AUDIT_HASH_LEN);
    if (audit_head_write(self->head_fd, &h, &self->key) != 0 ||
        self->sync(self->head_fd, self->sync_ud) != 0)
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit", "cannot write %s: %s (retried with the next batch)",
                   self->head_path, strerror(errno));
    return 0;
undo:
    /* Nothing of this batch is acknowledged: cut the log back so the next
     * batch chains from the last durable record. (After a failed fsync the
     * kernel may have dropped the pages anyway; the cut makes that moot.) */
    if (ftruncate(self->fd, self->durable_len) != 0) {
        self->cut_owed = true;
        ROUTER_LOG(ROUTER_LOG_ERROR, "audit",
                   "cannot cut %s back to %lld bytes: %s (retried before the next batch)",
                   self->path, (long long) self->durable_len, strerror(errno));
    }
    return -1;
}

/* ================================================================ verify */

__attribute__((format(printf, 5, 6))) static int s_bad(audit_verify_result_t *out,
                                                       audit_verify_reason_t reason, bool has_seq,
                                                       uint64_t seq, const char *fmt, ...)
{
    out->ok = false;
    out->reason = reason;
    out->has_first_bad = has_seq;
    out->first_bad = seq;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->detail, sizeof out->detail, fmt, ap);
    va_end(ap);
    return -1;
}

/* A verify that could not be carried out for want of memory: says nothing
 * of the log, so the result says so (no_memory) beside the reason io. */
static int s_no_memory(audit_verify_result_t *out)
{
    (void) s_bad(out, AUDIT_V_IO, false, 0, "out of memory");
    out->no_memory = true;
    return -1;
}

/* Where one file's records start and end in the chain. */
typedef struct {
    bool anchored;                     /* its first record is an audit_rotated one */
    uint64_t first_seq;                /* 0: no records */
    uint8_t first_prev[AUDIT_HASH_LEN];
    uint64_t last_seq;
    uint8_t last_hash[AUDIT_HASH_LEN];
} s_span_t;

/* Verifies one file and its head. Its first record is seq 1 after the
 * genesis hash, unless it is an audit_rotated record: then the file goes
 * on from the seq and prev that record names (the file before it is
 * checked against them by the caller). */
static int s_verify_file(const char *path, const audit_verify_opts_t *o,
                         audit_verify_result_t *out, s_span_t *span)
{
    memset(out, 0, sizeof *out);
    memset(span, 0, sizeof *span);
    out->ok = true;
    int rc = -1;
    s_reader_t r = {.fd = -1};
    char *head_path = s_strcat(path, AUDIT_HEAD_SUFFIX);
    if (!head_path)
        return s_no_memory(out);

    /* The head first: the writer makes the log durable before the head, so
     * a head read before the log never names a record the log lacks. */
    audit_head_t head;
    int hr = o->no_head ? 0 : audit_head_read(head_path, o->key, &head);
    if (hr == -2) {
        rc = s_bad(out, AUDIT_V_IO, false, 0, "cannot read %s: %s", head_path, strerror(errno));
        goto done;
    }
    r.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r.fd < 0 && errno != ENOENT) {
        rc = s_bad(out, AUDIT_V_IO, false, 0, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if (r.fd >= 0 && !(r.buf = malloc(S_READER_CAP))) {
        rc = s_no_memory(out);
        goto done;
    }
    uint64_t last_seq = 0;
    uint8_t last_hash[AUDIT_HASH_LEN];
    memcpy(last_hash, audit_genesis, AUDIT_HASH_LEN);
    bool head_hash_checked = false;
    s_line_t line;
    int got = 0;
    while (r.fd >= 0 && (got = s_reader_next(&r, &line)) == 1) {
        uint64_t due = last_seq + 1;
        if (!line.newline) {
            rc = s_bad(out, AUDIT_V_TORN, true, due,
                       "record %llu: the log ends inside a line (%zu bytes at offset %lld, no "
                       "newline)",
                       (unsigned long long) due, line.len, (long long) line.offset);
            goto done;
        }
        audit_record_t rec;
        audit_rec_err_t e = line.long_line ? AUDIT_REC_MALFORMED
                                           : audit_record_check(line.p, line.len, o->key, &rec);
        if (e == AUDIT_REC_NO_MEMORY) {
            rc = s_no_memory(out);
            goto done;
        }
        if (e == AUDIT_REC_MALFORMED) {
            rc = s_bad(out, AUDIT_V_MALFORMED, true, due,
                       "record %llu: the line at offset %lld is not a record",
                       (unsigned long long) due, (long long) line.offset);
            goto done;
        }
        if (e == AUDIT_REC_HASH) {
            rc = s_bad(out, AUDIT_V_HASH, true, due,
                       "record %llu: its hash does not match its bytes (changed)",
                       (unsigned long long) due);
            goto done;
        }
        if (out->records == 0) {
            /* A log a rotation opened goes on from the file before it. */
            span->anchored = rec.seq > 1 && !strcmp(rec.type, AUDIT_ROTATED_TYPE);
            if (span->anchored) {
                due = rec.seq;
                last_seq = rec.seq - 1;
                memcpy(last_hash, rec.prev, AUDIT_HASH_LEN);
            }
            span->first_seq = due;
            memcpy(span->first_prev, last_hash, AUDIT_HASH_LEN);
        }
        if (rec.seq != due) {
            rc = s_bad(out, AUDIT_V_SEQ, true, due,
                       "record %llu: the line at offset %lld says seq %llu (records %s)",
                       (unsigned long long) due, (long long) line.offset,
                       (unsigned long long) rec.seq, rec.seq > due ? "missing" : "repeated or reordered");
            goto done;
        }
        if (sodium_memcmp(rec.prev, last_hash, AUDIT_HASH_LEN) != 0) {
            rc = s_bad(out, AUDIT_V_PREV, true, due,
                       "record %llu: prev is not record %llu's hash (a record was changed, "
                       "removed or inserted)",
                       (unsigned long long) due, (unsigned long long) last_seq);
            goto done;
        }
        if (e == AUDIT_REC_HMAC || e == AUDIT_REC_HMAC_MISSING) {
            rc = s_bad(out, e == AUDIT_REC_HMAC ? AUDIT_V_HMAC : AUDIT_V_HMAC_MISSING, true, due,
                       "record %llu: %s", (unsigned long long) due,
                       e == AUDIT_REC_HMAC ? "its HMAC does not match (changed, or another key)"
                                           : "no HMAC, and a key is in force");
            goto done;
        }
        if (rec.has_hmac && !(o->key && o->key->len))
            out->hmac_seen_unchecked = true;
        if (hr == 1 && rec.seq == head.seq) {
            if (sodium_memcmp(rec.hash, head.hash, AUDIT_HASH_LEN) != 0) {
                rc = s_bad(out, AUDIT_V_HEAD_MISMATCH, true, due,
                           "record %llu is not the one the head remembers", (unsigned long long) due);
                goto done;
            }
            head_hash_checked = true;
        }
        last_seq = rec.seq;
        memcpy(last_hash, rec.hash, AUDIT_HASH_LEN);
        out->records++;
    }
    if (got < 0) {
        rc = s_bad(out, AUDIT_V_IO, false, 0, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if (hr == -1) {
        rc = s_bad(out, AUDIT_V_HEAD_BAD, false, 0,
                   "%s has no valid slot%s, so a cut-off tail cannot be told", head_path,
                   o->key && o->key->len ? " made with this key" : "");
        goto done;
    }
    if (hr == 0 && last_seq > 0 && !o->no_head) {
        rc = s_bad(out, AUDIT_V_HEAD_MISSING, false, 0,
                   "%s is missing, so a cut-off tail cannot be told (--no-head skips it)", head_path);
        goto done;
    }
    if (hr == 1 && head.seq > last_seq) {
        rc = s_bad(out, AUDIT_V_TRUNCATED, true, last_seq + 1,
                   "records %llu to %llu are missing: the log ends at %llu but its head says %llu "
                   "were written",
                   (unsigned long long) last_seq + 1, (unsigned long long) head.seq,
                   (unsigned long long) last_seq, (unsigned long long) head.seq);
        goto done;
    }
    (void) head_hash_checked;
    span->last_seq = last_seq;
    memcpy(span->last_hash, last_hash, AUDIT_HASH_LEN);
    rc = 0;
done:
    if (r.fd >= 0)
        close(r.fd);
    free(r.buf);
    free(head_path);
    return rc;
}

/* Whether the rotated files of `path` are still seqs[0..n). */
static bool s_rotated_same(const char *path, const uint64_t *seqs, size_t n)
{
    uint64_t *now;
    size_t m;
    if (s_rotated_list(path, &now, &m) != 0)
        return true; /* cannot tell: the first reading stands */
    bool same = m == n && (n == 0 || memcmp(now, seqs, n * sizeof *seqs) == 0);
    free(now);
    return same;
}

/* Whether a rotation is under way: its new files wait under their .new
 * names from its first step to its last rename. */
static bool s_rotating(const char *path)
{
    char *new_log = s_strcat(path, S_NEW_SUFFIX);
    char *new_head = s_strcat(path, S_NEW_HEAD_SUFFIX);
    bool busy = !new_log || !new_head || s_exists(new_log) || s_exists(new_head);
    free(new_log);
    free(new_head);
    return busy;
}

/* Reads of a chain a daemon may rotate meanwhile (`kith audit` beside a
 * running daemon) are tried again, at most this many times in all: a
 * query whose rotated files changed under it, and a verify that failed
 * while they changed, or while a rotation was under way, or in the newest
 * two files of a rotated chain, where a rotation acts (after a pause:
 * between its renames a rotation looks like a head gone missing, and its
 * last renames change no file's name). A log never rotated, or one that
 * fails further back, is read once. */
#define S_READ_ATTEMPTS 3
#define S_READ_PAUSE_NS (20 * 1000 * 1000)

/* audit_chain_verify over the rotated files seqs[0..n) and the log. */
static int s_verify_chain(const char *path, const audit_verify_opts_t *o,
                          audit_verify_result_t *out, const uint64_t *seqs, size_t n)
{
    memset(out, 0, sizeof *out);
    /* Oldest first, each against the one before it; the log itself last. */
    uint64_t records = 0, first_seq = 0;
    bool unchecked = false;
    s_span_t before = {0};
    int rc = 0;
    for (size_t i = 0; i <= n && rc == 0; i++) {
        uint64_t named = i < n ? seqs[i] : 0;
        char *name = s_file_name(path, named, "");
        if (!name) {
            rc = s_no_memory(out);
            break;
        }
        s_span_t span;
        rc = s_verify_file(name, o, out, &span);
        unchecked = unchecked || out->hmac_seen_unchecked;
        if (rc == 0 && named && span.first_seq != named)
            rc = s_bad(out, AUDIT_V_ROTATION, true, named,
                       "%s is named for record %llu but starts at %llu (renamed or emptied)", name,
                       (unsigned long long) named, (unsigned long long) span.first_seq);
        else if (rc == 0 && i > 0 &&
                 (!span.anchored || span.first_seq != before.last_seq + 1 ||
                  sodium_memcmp(span.first_prev, before.last_hash, AUDIT_HASH_LEN) != 0))
            rc = s_bad(out, AUDIT_V_ROTATION, true, before.last_seq + 1,
                       "%s does not go on from record %llu, the last of the file before it (a "
                       "file was removed, replaced or started anew)",
                       name, (unsigned long long) before.last_seq);
        else if (rc != 0 && named) {
            char d[AUDIT_ERR_MAX];
            memcpy(d, out->detail, sizeof d);
            if (snprintf(out->detail, sizeof out->detail, "%s: %s", name, d) < 0)
                memcpy(out->detail, d, sizeof d);
        }
        free(name);
        out->records += records;
        out->files = (uint32_t) i + 1;
        out->hmac_seen_unchecked = unchecked;
        records = out->records;
        if (!first_seq && span.first_seq)
            first_seq = span.first_seq;
        before = span;
    }
    if (rc != 0)
        return -1;
    out->first_seq = first_seq;
    if (out->files > 1 || first_seq > 1)
        snprintf(out->detail, sizeof out->detail,
                 "%llu records intact in %u file%s (records %llu to %llu%s)",
                 (unsigned long long) out->records, out->files, out->files > 1 ? "s" : "",
                 (unsigned long long) first_seq, (unsigned long long) before.last_seq,
                 first_seq > 1 ? "; the ones before were rotated away" : "");
    else
        snprintf(out->detail, sizeof out->detail, "%llu records intact",
                 (unsigned long long) out->records);
    return 0;
}

int audit_chain_verify(const char *path, const audit_verify_opts_t *o, audit_verify_result_t *out)
{
    static const audit_verify_opts_t none = {0};
    if (!o)
        o = &none;
    for (int attempt = 1;; attempt++) {
        uint64_t *seqs;
        size_t n;
        if (s_rotated_list(path, &seqs, &n) != 0) {
            memset(out, 0, sizeof *out);
            out->no_memory = errno == ENOMEM;
            return s_bad(out, AUDIT_V_IO, false, 0, "cannot list the rotated files of %s: %s",
                         path, strerror(errno));
        }
        int rc = s_verify_chain(path, o, out, seqs, n);
        bool moved = rc != 0 && attempt < S_READ_ATTEMPTS && !s_rotated_same(path, seqs, n);
        bool busy = rc != 0 && attempt < S_READ_ATTEMPTS && !moved &&
                    ((n > 0 && out->files >= n) || s_rotating(path));
        free(seqs);
        if (!moved && !busy)
            return rc;
        if (busy) {
            struct timespec pause = {0, S_READ_PAUSE_NS};
            nanosleep(&pause, NULL);
        }
    }
}

/* ================================================================ query */

void audit_lines_free(audit_lines_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->lines[i]);
    free(l->lines);
    free(l->lens);
    memset(l, 0, sizeof *l);
}

/* What is left of a query as it goes from file to file. */
typedef struct {
    uint32_t limit;     /* matches still wanted */
    size_t bytes;       /* line bytes still allowed (bytes_max set) */
    uint64_t scan;      /* file bytes still allowed (scan_max set) */
    bool stop;          /* a bound was reached: read no older file */
} s_query_left_t;

/* The newest matches of one file, read from its end back, oldest first in
 * *out, within what `left` allows (and taken off it). */
static int s_query_file(const char *path, const audit_query_t *q, s_query_left_t *left,
                        audit_lines_t *out, audit_error_t *err)
{
    memset(out, 0, sizeof *out);
    s_rreader_t r = {.fd = open(path, O_RDONLY | O_CLOEXEC)};
    if (r.fd < 0) {
        if (errno == ENOENT)
            return 0;
        s_err(err, AUDIT_E_IO, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = -1;
    struct stat st;
    if (fstat(r.fd, &st) != 0) {
        s_err(err, AUDIT_E_IO, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    r.offset = r.size = st.st_size;
    r.lo = r.hi = S_READER_CAP;
    /* Matches newest first; turned round at the end. */
    char **lines = calloc(left->limit, sizeof *lines);
    size_t *lens = calloc(left->limit, sizeof *lens);
    out->lines = lines;
    out->lens = lens;
    if (!lines || !lens || !(r.buf = malloc(S_READER_CAP))) {
        s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
        goto done;
    }
    const char *p;
    size_t len;
    int got = 1;
    while (out->n < left->limit) {
        uint64_t read_back = (uint64_t) (r.size - r.offset);
        if (q->scan_max && read_back >= left->scan) {
            left->stop = true; /* stopped by scan_max: what it read stands */
            break;
        }
        if ((got = s_rreader_prev(&r, &p, &len)) != 1)
            break;
        audit_record_t rec;
        int rd = audit_record_read(p, len, &rec);
        if (rd == -2) {
            s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
            goto done;
        }
        if (rd != 0 || (q->type && strcmp(q->type, rec.type) != 0) ||
            (q->has_since && rec.time_ms < q->since_ms))
            continue;
        if (q->bytes_max && len > left->bytes) {
            left->stop = true;
            break;
        }
        if (!(lines[out->n] = malloc(len + 1))) {
            s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
            goto done;
        }
        memcpy(lines[out->n], p, len);
        lines[out->n][len] = '\0';
        lens[out->n++] = len;
        if (q->bytes_max)
            left->bytes -= len;
    }
    if (got < 0) {
        s_err(err, AUDIT_E_IO, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if (q->scan_max) {
        uint64_t read_back = (uint64_t) (r.size - r.offset);
        left->scan -= read_back < left->scan ? read_back : left->scan;
    }
    left->limit -= (uint32_t) out->n;
    for (size_t i = 0, j = out->n; i + 1 < j; i++, j--) {
        char *t = lines[i];
        lines[i] = lines[j - 1];
        lines[j - 1] = t;
        size_t tl = lens[i];
        lens[i] = lens[j - 1];
        lens[j - 1] = tl;
    }
    rc = 0;
done:
    if (rc != 0)
        audit_lines_free(out);
    free(r.buf);
    close(r.fd);
    return rc;
}

/* audit_chain_query over the log and then seqs[0..n), newest first. */
static int s_query_chain(const char *path, const audit_query_t *q, audit_lines_t *out,
                         audit_error_t *err, const uint64_t *seqs, size_t n)
{
    memset(out, 0, sizeof *out);
    s_query_left_t left = {
        .limit = q->limit > PROTO_AUDIT_LIMIT_MAX ? PROTO_AUDIT_LIMIT_MAX : q->limit,
        .bytes = q->bytes_max,
        .scan = q->scan_max,
    };
    /* The log, then its rotated files newest first, each one's matches put
     * before what is held. */
    for (size_t i = 0; left.limit > 0 && !left.stop && i <= n; i++) {
        char *name = s_file_name(path, i ? seqs[n - i] : 0, "");
        if (!name) {
            s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
            goto fail;
        }
        audit_lines_t part;
        int rc = s_query_file(name, q, &left, &part, err);
        free(name);
        if (rc != 0)
            goto fail;
        if (part.n && out->n) {
            char **lines = calloc(part.n + out->n, sizeof *lines);
            size_t *lens = calloc(part.n + out->n, sizeof *lens);
            if (!lines || !lens) {
                free(lines);
                free(lens);
                audit_lines_free(&part);
                s_err(err, AUDIT_E_NO_MEMORY, "out of memory");
                goto fail;
            }
            memcpy(lines, part.lines, part.n * sizeof *lines);
            memcpy(lens, part.lens, part.n * sizeof *lens);
            memcpy(lines + part.n, out->lines, out->n * sizeof *lines);
            memcpy(lens + part.n, out->lens, out->n * sizeof *lens);
            free(part.lines);
            free(part.lens);
            free(out->lines);
            free(out->lens);
            out->lines = lines;
            out->lens = lens;
            out->n += part.n;
        } else if (out->n) {
            audit_lines_free(&part); /* nothing from this file */
        } else {
            audit_lines_free(out);
            *out = part;
        }
    }
    out->partial = left.stop; /* set only where fewer than limit were found */
    return 0;
fail:
    audit_lines_free(out);
    return -1;
}

int audit_chain_query(const char *path, const audit_query_t *q, audit_lines_t *out,
                      audit_error_t *err)
{
    memset(out, 0, sizeof *out);
    if (q->limit == 0)
        return 0;
    for (int attempt = 1;; attempt++) {
        uint64_t *seqs;
        size_t n;
        if (s_rotated_list(path, &seqs, &n) != 0) {
            s_err(err, errno == ENOMEM ? AUDIT_E_NO_MEMORY : AUDIT_E_IO,
                  "cannot list the rotated files of %s: %s", path, strerror(errno));
            return -1;
        }
        int rc = s_query_chain(path, q, out, err, seqs, n);
        bool again = attempt < S_READ_ATTEMPTS && !s_rotated_same(path, seqs, n);
        free(seqs);
        if (!again)
            return rc;
        if (rc == 0)
            audit_lines_free(out); /* read while a rotation moved the files: again */
    }
}
