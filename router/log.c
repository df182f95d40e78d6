/* router/log.c — leveled, timestamped, one-line-per-event logging with a
 * bounded queue and a writer thread so no caller ever waits on I/O, and a
 * per-call-site rate limit so one noisy source cannot flood the log. */
#include "router/log.h"

#include "router/clock.h"
#include "router/thread.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The writer thread's state; `running` false means synchronous mode. */
typedef struct {
    pthread_mutex_t lock;   /* guards every field below */
    pthread_cond_t more;    /* signalled when lines are queued or on stop */
    pthread_cond_t drained; /* signalled when the writer has caught up */
    pthread_t thread;       /* the writer */
    bool running;           /* a writer thread exists */
    bool stopping;          /* the writer should finish and exit */
    bool writing;           /* the writer holds a batch outside the lock */
    uint8_t *ring;          /* queued bytes, a circular buffer */
    size_t cap;             /* ring size */
    size_t head;            /* offset of the oldest queued byte */
    size_t len;             /* bytes queued */
    uint64_t dropped;       /* lines dropped since the last notice */
    int file_fd;            /* the log file, or -1 */
    int file_errno;         /* why the file is not open (0: it is, or there is none) */
    char *path;             /* the log file's name, for reopen */
    bool no_stderr;         /* asked: the file only, while it is open */
    bool to_stderr;         /* also write to stderr */
    int err_fd;             /* the writer's own non-blocking stderr, or -1: fd 2 */
    bool err_sock;          /* stderr is a socket (journald): sent with MSG_DONTWAIT */
} s_writer_t;

static s_writer_t s_w = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .more = PTHREAD_COND_INITIALIZER,
    .drained = PTHREAD_COND_INITIALIZER,
    .file_fd = -1,
    .to_stderr = true,
    .err_fd = -1,
};
static _Atomic int s_level = ROUTER_LOG_INFO;
static _Atomic uint64_t s_dropped_total;

/* One call site's rate window. */
typedef struct {
    const char *fmt;          /* the site's format string, its key; NULL: slot free */
    char module[32];          /* for its summary line */
    char what[96];            /* the start of fmt, for its summary line */
    router_log_level_t level; /* level of its latest line */
    uint64_t window_start;    /* ms on the rate clock */
    uint32_t count;           /* lines written in this window */
    uint64_t suppressed;      /* lines suppressed and not yet summarised */
} s_site_t;

/* The rate limit; `lock` is never held while s_w.lock is taken inside it
 * (summaries are formatted under it, written after it is released). */
static struct {
    pthread_mutex_t lock;        /* guards every field below */
    s_site_t sites[ROUTER_LOG_SITES_MAX];
    unsigned burst;              /* lines per window per site; 0: no limit */
    uint64_t window_ms;          /* window length */
    router_log_clock_fn now_ms;  /* NULL: the monotonic clock */
    uint64_t next_sweep;         /* when the write path next looks for summaries owed */
} s_rate = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .burst = ROUTER_LOG_BURST_DEFAULT,
    .window_ms = ROUTER_LOG_WINDOW_MS_DEFAULT,
};
static _Atomic size_t s_rate_owed; /* sites holding suppressed lines not yet summarised */
static _Atomic uint64_t s_suppressed_total;

static void s_rate_sweep(bool all);

/* The tap (router_log_set_tap): called under its lock, so removing it waits
 * for a call in flight. */
static struct {
    pthread_mutex_t lock;   /* guards fn and ud, held during a call */
    router_log_tap_fn fn;   /* NULL: no tap */
    void *ud;               /* its argument */
} s_tap = {.lock = PTHREAD_MUTEX_INITIALIZER};
static _Atomic bool s_tap_on; /* fast check without the lock */

static const char *const s_level_names[] = {"debug", "info", "warn", "error"};
static const char *const s_level_tags[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

/* ------------------------------------------------------------ formatting */

/* Copies msg into out, escaping control bytes and DEL so a peer's input can
 * never forge a second log line. Returns bytes written. */
static size_t s_escape(char *out, size_t cap, const char *msg)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *) msg; *p && n < cap; p++) {
        if (*p >= 0x20 && *p != 0x7f) {
            out[n++] = (char) *p;
            continue;
        }
        if (n + 4 > cap)
            break;
        n += (size_t) snprintf(out + n, 5, "\\x%02x", *p);
    }
    return n;
}

/* Formats one whole line ending in '\n' into out[ROUTER_LOG_LINE_MAX]. */
static size_t s_format(char *out, router_log_level_t level, const char *module,
                       const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));
static size_t s_format(char *out, router_log_level_t level, const char *module,
                       const char *fmt, va_list ap)
{
    char msg[ROUTER_LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(out, ROUTER_LOG_LINE_MAX,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, s_level_tags[level], module ? module : "-");
    size_t len = (n > 0 && n < ROUTER_LOG_LINE_MAX) ? (size_t) n : 0;
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    /* Room for the message, the "..." marker and the newline. */
    size_t room = ROUTER_LOG_LINE_MAX - len - 5;
    size_t used = s_escape(out + len, room, m < 0 ? "(bad log format)" : msg);
    len += used;
    if (m >= (int) sizeof msg || used == room) {
        memcpy(out + len, "...", 3);
        len += 3;
    }
    out[len++] = '\n';
    return len;
}

static size_t s_line(char *out, router_log_level_t level, const char *module,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static size_t s_line(char *out, router_log_level_t level, const char *module,
                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t len = s_format(out, level, module, fmt, ap);
    va_end(ap);
    return len;
}

/* ------------------------------------------------------------ output */

/* Writes all of buf to fd, retrying short writes; errors are dropped (there
 * is nowhere left to report them). The synchronous path's. */
static void s_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t) n;
    }
}

/* How long the writer waits for stderr (or a log "file" that is a FIFO) to
 * take a batch before it leaves the rest of that batch out there: a pipe
 * nobody reads, or a terminal paused with ^S, used to hold the writer for
 * ever, so the log file got no more lines and a stopping daemon never
 * ended (router_log_stop joins the writer). */
#define S_STDERR_WAIT_MS 1000u

/* The log file is opened non-blocking: a FIFO in its place with no reader
 * is refused (ENXIO) instead of holding the start for ever, where SIGTERM
 * and ^C, blocked for the loop's signalfd, could not end it; one with a
 * reader is written as stderr is. A regular file ignores the flag. */
#define S_LOG_OPEN_FLAGS (O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK)

/* One copy of the log as the writer thread sees it (the file, stderr):
 * what it failed to take, for the note that says so. Writer thread only. */
typedef struct {
    uint64_t lost; /* lines not written since it last took one */
    int why;       /* errno of the first failure */
    bool cut;      /* the last write stopped inside a line of this file: */
    dev_t dev;     /* its device */
    ino_t ino;     /* and inode (after a rotation the new file has no line to end) */
} s_sink_t;

static s_sink_t s_file_sink, s_err_sink;

/* Writes what it can of buf to fd: all of it, or less with errno set. A
 * non-blocking fd (the writer's stderr) that stays full for
 * S_STDERR_WAIT_MS ends the attempt with EAGAIN. */
static size_t s_write_bounded(int fd, bool sock, const char *buf, size_t len)
{
    size_t done = 0;
    uint64_t deadline = 0;
    bool waited = false;
    while (done < len) {
        ssize_t n = sock ? send(fd, buf + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL)
                         : write(fd, buf + done, len - done);
        if (n > 0) {
            done += (size_t) n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            if (n == 0)
                errno = EIO;
            return done;
        }
        uint64_t now = router_clock_mono_ms();
        if (!deadline)
            deadline = now + S_STDERR_WAIT_MS;
        if (now >= deadline) {
            errno = EAGAIN;
            return done;
        }
        /* poll can say "room" while a write of up to PIPE_BUF still does
         * not fit: after such a miss, a short sleep instead of a spin. */
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int wait_ms = (int) (deadline - now);
        (void) poll(waited ? NULL : &p, waited ? 0 : 1, waited && wait_ms > 10 ? 10 : wait_ms);
        waited = !waited;
    }
    return len;
}

static uint64_t s_count_lines(const char *buf, size_t len)
{
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += buf[i] == '\n';
    return n;
}

/* A write to fd stopped after `done` octets of buf. A regular file (the
 * log, a full disk) is cut back to its last whole line, so it never holds
 * part of one; elsewhere the line is ended before the next one (s->cut). */
static void s_sink_cut(s_sink_t *s, int fd, const char *buf, size_t done)
{
    int e = errno;
    size_t part = 0;
    while (part < done && buf[done - 1 - part] != '\n')
        part++;
    struct stat st;
    if (part == 0) {
        s->cut = false; /* it ends in a whole line */
    } else if (fstat(fd, &st) != 0) {
        s->cut = true;
    } else if ((part < done || !s->cut) && S_ISREG(st.st_mode) && st.st_size >= (off_t) part &&
               ftruncate(fd, st.st_size - (off_t) part) == 0) {
        s->cut = false; /* the part began a line: gone, the file ends in a whole one */
    } else {
        s->cut = true;
        s->dev = st.st_dev;
        s->ino = st.st_ino;
    }
    errno = e;
}

/* stands_for of a batch of log lines: each counts as one. */
#define S_LINES UINT64_MAX

/* Writes a batch to one sink, keeping count of what it could not take:
 * its lines, or for a note, the lines it stands for (`stands_for`: a
 * count of dropped lines dies with its note otherwise).
 * Before the first line it takes again, a line ends the one cut short and
 * a note says how many lines it missed and why (`where`: "this file",
 * "stderr"), so a gap in the log is never silent. */
static void s_sink_write(s_sink_t *s, int fd, bool sock, const char *where, const char *buf,
                         size_t len, uint64_t stands_for)
{
    if (s->lost) {
        char note[ROUTER_LOG_LINE_MAX + 1];
        size_t n = 0;
        struct stat st;
        if (s->cut && fstat(fd, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
            note[n++] = '\n';
        n += s_line(note + n, ROUTER_LOG_WARN, "log", "%llu log lines were not written to %s: %s",
                    (unsigned long long) s->lost, where,
                    s->why == EAGAIN ? "it was not being read" : strerror(s->why));
        size_t w = s_write_bounded(fd, sock, note, n);
        if (w < n) {
            if (w > 0)
                s_sink_cut(s, fd, note, w);
            s->lost += stands_for == S_LINES ? s_count_lines(buf, len) : stands_for;
            return;
        }
        s->lost = 0;
        s->cut = false;
    }
    size_t done = s_write_bounded(fd, sock, buf, len);
    if (done == len)
        return;
    if (s->lost == 0)
        s->why = errno;
    if (done > 0)
        s_sink_cut(s, fd, buf, done);
    s->lost += stands_for == S_LINES ? s_count_lines(buf + done, len - done) : stands_for;
}

/* The writer's stderr: its own open file description of a pipe or
 * terminal, non-blocking without touching fd 2's (shared with whoever
 * started kith), or -1 to use fd 2 (a socket, sent to with MSG_DONTWAIT;
 * a regular file, which does not block). */
static int s_stderr_open(bool *sock)
{
    struct stat st;
    *sock = false;
    if (fstat(STDERR_FILENO, &st) != 0)
        return -1;
    if (S_ISSOCK(st.st_mode)) {
        *sock = true;
        return -1;
    }
    if (!S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode))
        return -1;
    return open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
}

/* The file first: it is what `kith service logs` and an operator read,
 * and a stderr nobody reads must not starve it. When stderr starts
 * missing lines the file says so at once (the count follows on stderr
 * once it takes lines again). */
static void s_emit(const char *buf, size_t len, uint64_t stands_for, int file_fd, bool to_stderr,
                   int err_fd, bool err_sock)
{
    if (file_fd >= 0)
        s_sink_write(&s_file_sink, file_fd, false, "this file", buf, len, stands_for);
    if (!to_stderr)
        return;
    bool was_lost = s_err_sink.lost > 0;
    s_sink_write(&s_err_sink, err_fd >= 0 ? err_fd : STDERR_FILENO, err_sock && err_fd < 0,
                 "stderr", buf, len, stands_for);
    if (!was_lost && s_err_sink.lost > 0 && file_fd >= 0) {
        char note[ROUTER_LOG_LINE_MAX];
        size_t n = s_line(note, ROUTER_LOG_WARN, "log",
                          "stderr is not taking log lines (%s): they go to this file only "
                          "until it does", s_err_sink.why == EAGAIN ? "nobody reads it"
                                                                    : strerror(s_err_sink.why));
        s_sink_write(&s_file_sink, file_fd, false, "this file", note, n, 0);
    }
}

/* Queues one line; the caller holds the lock. A full queue drops it. */
static void s_enqueue(const char *line, size_t len)
{
    if (s_w.cap - s_w.len < len) {
        s_w.dropped++;
        atomic_fetch_add(&s_dropped_total, 1);
        return;
    }
    size_t tail = (s_w.head + s_w.len) % s_w.cap;
    size_t first = s_w.cap - tail < len ? s_w.cap - tail : len;
    memcpy(s_w.ring + tail, line, first);
    memcpy(s_w.ring, line + first, len - first);
    s_w.len += len;
    pthread_cond_signal(&s_w.more);
}

static void *s_writer_main(void *arg)
{
    router_thread_name("kith-log");
    size_t cap = s_w.cap;
    char *batch = arg;
    pthread_mutex_lock(&s_w.lock);
    for (;;) {
        while (s_w.len == 0 && s_w.dropped == 0 && !s_w.stopping) {
            if (atomic_load(&s_rate_owed) == 0) {
                pthread_cond_wait(&s_w.more, &s_w.lock);
                continue;
            }
            /* Suppressed lines are owed a summary even if their site
             * falls silent: look again once a window has passed. */
            struct timespec at = router_clock_deadline(CLOCK_REALTIME, ROUTER_LOG_WINDOW_MS_DEFAULT);
            if (pthread_cond_timedwait(&s_w.more, &s_w.lock, &at) == ETIMEDOUT) {
                pthread_mutex_unlock(&s_w.lock);
                s_rate_sweep(false);
                pthread_mutex_lock(&s_w.lock);
            }
        }
        if (s_w.len == 0 && s_w.dropped == 0 && s_w.stopping)
            break;
        size_t len = s_w.len;
        size_t first = cap - s_w.head < len ? cap - s_w.head : len;
        memcpy(batch, s_w.ring + s_w.head, first);
        memcpy(batch + first, s_w.ring, len - first);
        s_w.head = (s_w.head + len) % cap;
        s_w.len = 0;
        uint64_t dropped = s_w.dropped;
        s_w.dropped = 0;
        int fd = s_w.file_fd, err_fd = s_w.err_fd;
        bool to_stderr = s_w.to_stderr, err_sock = s_w.err_sock;
        s_w.writing = true;
        pthread_mutex_unlock(&s_w.lock);

        s_emit(batch, len, S_LINES, fd, to_stderr, err_fd, err_sock);
        if (dropped) {
            char note[ROUTER_LOG_LINE_MAX];
            size_t n = s_line(note, ROUTER_LOG_WARN, "log",
                              "%llu log lines dropped: the log writer fell behind",
                              (unsigned long long) dropped);
            s_emit(note, n, dropped, fd, to_stderr, err_fd, err_sock);
        }

        pthread_mutex_lock(&s_w.lock);
        s_w.writing = false;
        pthread_cond_broadcast(&s_w.drained);
    }
    pthread_mutex_unlock(&s_w.lock);
    free(batch);
    return NULL;
}

/* Writes one formatted line: into the writer's queue, or straight to
 * stderr when there is no writer (one write(2) keeps the line whole). */
/* Hands a line written to the tap, if there is one. */
static void s_tap_line(router_log_level_t level, const char *module, const char *line,
                       size_t len)
{
    if (!atomic_load(&s_tap_on))
        return;
    pthread_mutex_lock(&s_tap.lock);
    if (s_tap.fn)
        s_tap.fn(level, module ? module : "-", line, len, s_tap.ud);
    pthread_mutex_unlock(&s_tap.lock);
}

static void s_output(const char *line, size_t len)
{
    pthread_mutex_lock(&s_w.lock);
    if (s_w.running) {
        s_enqueue(line, len);
        pthread_mutex_unlock(&s_w.lock);
        return;
    }
    pthread_mutex_unlock(&s_w.lock);
    s_write_all(STDERR_FILENO, line, len);
}

/* ------------------------------------------------------------ rate limit */

static uint64_t s_rate_now(void)
{
    return s_rate.now_ms ? s_rate.now_ms() : router_clock_mono_ms();
}

/* Formats the summary a site owes and clears its count; the caller holds
 * s_rate.lock and the site has suppressed lines. Returns the line length. */
static size_t s_site_summarise(s_site_t *site, char *out)
{
    size_t n = s_line(out, site->level, site->module,
                      "%llu similar lines suppressed (more than %u in %llu ms from \"%s\")",
                      (unsigned long long) site->suppressed, s_rate.burst,
                      (unsigned long long) s_rate.window_ms, site->what);
    site->suppressed = 0;
    atomic_fetch_sub(&s_rate_owed, 1);
    return n;
}

static void s_site_init(s_site_t *site, const char *fmt, const char *module, uint64_t now)
{
    memset(site, 0, sizeof *site);
    site->fmt = fmt;
    snprintf(site->module, sizeof site->module, "%s", module ? module : "-");
    snprintf(site->what, sizeof site->what, "%s", fmt);
    site->window_start = now;
}

/* Decides whether a line from the site `fmt` is written. When the site's
 * previous window (or a site evicted to make room) owes a summary, it is
 * formatted into summary[ROUTER_LOG_LINE_MAX] and *summary_len set; *sweep
 * says other sites may owe summaries too (see s_rate_sweep); *now_owed that
 * this line made the first summary owed, so the writer must start looking. */
static bool s_rate_admit(router_log_level_t level, const char *module, const char *fmt,
                         char *summary, size_t *summary_len, bool *sweep, bool *now_owed)
{
    *summary_len = 0;
    *sweep = false;
    *now_owed = false;
    pthread_mutex_lock(&s_rate.lock);
    if (s_rate.burst == 0) {
        pthread_mutex_unlock(&s_rate.lock);
        return true;
    }
    uint64_t now = s_rate_now();
    /* Up to 8 slots probed from the pointer's hash; a miss takes a free
     * one, else the one whose window began longest ago. */
    size_t h = (size_t) (((uintptr_t) fmt >> 3) * 0x9E3779B97F4A7C15ull);
    s_site_t *site = NULL, *victim = NULL;
    for (size_t i = 0; i < 8 && !site; i++) {
        s_site_t *s = &s_rate.sites[(h + i) % ROUTER_LOG_SITES_MAX];
        if (s->fmt == fmt)
            site = s;
        else if (!victim || (victim->fmt && (!s->fmt || s->window_start < victim->window_start)))
            victim = s;
    }
    if (!site) {
        site = victim;
        if (site->fmt && site->suppressed)
            *summary_len = s_site_summarise(site, summary);
        s_site_init(site, fmt, module, now);
    } else if (now - site->window_start >= s_rate.window_ms || now < site->window_start) {
        if (site->suppressed)
            *summary_len = s_site_summarise(site, summary);
        site->window_start = now;
        site->count = 0;
    }
    site->level = level;
    bool pass = site->count < s_rate.burst;
    if (pass) {
        site->count++;
    } else {
        if (site->suppressed++ == 0)
            *now_owed = atomic_fetch_add(&s_rate_owed, 1) == 0;
        atomic_fetch_add(&s_suppressed_total, 1);
    }
    if (atomic_load(&s_rate_owed) > 0 && now >= s_rate.next_sweep) {
        s_rate.next_sweep = now + s_rate.window_ms;
        *sweep = true;
    }
    pthread_mutex_unlock(&s_rate.lock);
    return pass;
}

/* Writes the summaries owed by sites whose window has passed (every site
 * owing one when `all`), one slot at a time so the lock is held briefly. */
static void s_rate_sweep(bool all)
{
    char line[ROUTER_LOG_LINE_MAX];
    for (size_t i = 0; i < ROUTER_LOG_SITES_MAX && atomic_load(&s_rate_owed) > 0; i++) {
        size_t len = 0;
        router_log_level_t level = ROUTER_LOG_INFO;
        char module[sizeof s_rate.sites[0].module] = "";
        pthread_mutex_lock(&s_rate.lock);
        s_site_t *site = &s_rate.sites[i];
        uint64_t now = s_rate_now();
        if (site->fmt && site->suppressed &&
            (all || now - site->window_start >= s_rate.window_ms || now < site->window_start)) {
            level = site->level;
            memcpy(module, site->module, sizeof module);
            len = s_site_summarise(site, line);
            site->window_start = now;
            site->count = 0;
        }
        pthread_mutex_unlock(&s_rate.lock);
        if (len) {
            s_output(line, len);
            s_tap_line(level, module, line, len);
        }
    }
}

void router_log_set_rate(unsigned burst, uint64_t window_ms)
{
    s_rate_sweep(true);
    pthread_mutex_lock(&s_rate.lock);
    memset(s_rate.sites, 0, sizeof s_rate.sites);
    atomic_store(&s_rate_owed, 0);
    s_rate.burst = burst;
    s_rate.window_ms = window_ms ? window_ms : 1;
    s_rate.next_sweep = 0;
    pthread_mutex_unlock(&s_rate.lock);
}

void router_log_set_clock(router_log_clock_fn now_ms)
{
    pthread_mutex_lock(&s_rate.lock);
    s_rate.now_ms = now_ms;
    s_rate.next_sweep = 0;
    pthread_mutex_unlock(&s_rate.lock);
}

uint64_t router_log_suppressed(void)
{
    return atomic_load(&s_suppressed_total);
}

/* ------------------------------------------------------------ public API */

int router_log_start(const router_log_opts_t *opts)
{
    router_log_opts_t o = opts ? *opts : (router_log_opts_t){.level = ROUTER_LOG_INFO};
    size_t cap = o.queue_bytes ? o.queue_bytes : ROUTER_LOG_QUEUE_DEFAULT;
    if (cap < 2 * ROUTER_LOG_LINE_MAX)
        cap = 2 * ROUTER_LOG_LINE_MAX;
    uint8_t *ring = NULL;
    char *batch = NULL;
    char *path = NULL;
    int fd = -1, file_errno = 0, err_fd = -1;
    bool err_sock = false;
    int err = 0;

    pthread_mutex_lock(&s_w.lock);
    if (s_w.running) {
        pthread_mutex_unlock(&s_w.lock);
        errno = EALREADY;
        return -1;
    }
    ring = malloc(cap);
    batch = malloc(cap);
    if (!ring || !batch)
        goto fail_nomem;
    if (o.path) {
        path = strdup(o.path);
        if (!path)
            goto fail_nomem;
        /* A file that cannot be opened does not stop the writer: lines
         * go to stderr, and router_log_reopen tries the file again. */
        fd = open(o.path, S_LOG_OPEN_FLAGS, 0600);
        file_errno = fd < 0 ? errno : 0;
    }
    err_fd = s_stderr_open(&err_sock);
    s_w.ring = ring;
    s_w.cap = cap;
    s_w.head = s_w.len = 0;
    s_w.dropped = 0;
    s_w.file_fd = fd;
    s_w.file_errno = file_errno;
    s_w.path = path;
    s_w.no_stderr = o.no_stderr;
    s_w.to_stderr = !(o.no_stderr && fd >= 0);
    s_w.err_fd = err_fd;
    s_w.err_sock = err_sock;
    s_w.stopping = false;
    s_file_sink = s_err_sink = (s_sink_t){0}; /* no writer yet to race with */
    err = pthread_create(&s_w.thread, NULL, s_writer_main, batch);
    if (err != 0) {
        s_w.ring = NULL;
        s_w.file_fd = s_w.err_fd = -1;
        s_w.file_errno = 0;
        s_w.path = NULL;
        s_w.to_stderr = true;
        s_w.no_stderr = false;
        goto fail;
    }
    s_w.running = true;
    pthread_mutex_unlock(&s_w.lock);
    router_log_set_level(o.level);
    return 0;

fail_nomem:
    err = ENOMEM;
fail:
    pthread_mutex_unlock(&s_w.lock);
    if (fd >= 0)
        close(fd);
    if (err_fd >= 0)
        close(err_fd);
    free(path);
    free(batch);
    free(ring);
    errno = err;
    return -1;
}

void router_log_stop(void)
{
    /* Suppressed lines still owed a summary get it before the writer goes. */
    s_rate_sweep(true);
    pthread_mutex_lock(&s_w.lock);
    if (!s_w.running) {
        pthread_mutex_unlock(&s_w.lock);
        return;
    }
    s_w.stopping = true;
    pthread_cond_signal(&s_w.more);
    pthread_t t = s_w.thread;
    pthread_mutex_unlock(&s_w.lock);
    pthread_join(t, NULL);

    pthread_mutex_lock(&s_w.lock);
    s_w.running = false;
    if (s_w.file_fd >= 0)
        close(s_w.file_fd);
    s_w.file_fd = -1;
    s_w.file_errno = 0;
    if (s_w.err_fd >= 0)
        close(s_w.err_fd);
    s_w.err_fd = -1;
    s_w.err_sock = false;
    s_w.no_stderr = false;
    free(s_w.path);
    s_w.path = NULL;
    free(s_w.ring);
    s_w.ring = NULL;
    s_w.cap = s_w.len = s_w.head = 0;
    s_w.to_stderr = true;
    pthread_mutex_unlock(&s_w.lock);
}

void router_log_flush(void)
{
    s_rate_sweep(false);
    pthread_mutex_lock(&s_w.lock);
    while (s_w.running && (s_w.len > 0 || s_w.dropped > 0 || s_w.writing))
        pthread_cond_wait(&s_w.drained, &s_w.lock);
    pthread_mutex_unlock(&s_w.lock);
}

int router_log_reopen(void)
{
    int rc = 0;
    pthread_mutex_lock(&s_w.lock);
    if (s_w.path) {
        int fd = open(s_w.path, S_LOG_OPEN_FLAGS, 0600);
        if (fd < 0) {
            rc = -1;
            if (s_w.file_fd < 0)
                s_w.file_errno = errno; /* still none open: say the latest why */
        } else if (s_w.file_fd < 0) {
            /* The file could not be opened at start (or since): the writer
             * takes it up with its next batch. */
            s_w.file_fd = fd;
            s_w.file_errno = 0;
            s_w.to_stderr = !s_w.no_stderr;
        } else {
            /* The writer may be mid-batch on the old fd: dup2 swaps it
             * atomically under the same number. */
            if (dup2(fd, s_w.file_fd) < 0)
                rc = -1;
            close(fd);
        }
    }
    int err = errno;
    pthread_mutex_unlock(&s_w.lock);
    errno = err;
    return rc;
}

void router_log_set_level(router_log_level_t level)
{
    if (level > ROUTER_LOG_ERROR)
        level = ROUTER_LOG_ERROR;
    atomic_store(&s_level, (int) level);
}

router_log_level_t router_log_level(void)
{
    return (router_log_level_t) atomic_load(&s_level);
}

int router_log_level_parse(const char *text, router_log_level_t *out)
{
    for (size_t i = 0; text && i < sizeof s_level_names / sizeof s_level_names[0]; i++) {
        if (strcmp(text, s_level_names[i]) == 0) {
            *out = (router_log_level_t) i;
            return 0;
        }
    }
    return -1;
}

const char *router_log_level_str(router_log_level_t level)
{
    return level <= ROUTER_LOG_ERROR ? s_level_names[level] : "unknown";
}

int router_log_file_error(void)
{
    pthread_mutex_lock(&s_w.lock);
    int e = s_w.running ? s_w.file_errno : 0;
    pthread_mutex_unlock(&s_w.lock);
    return e;
}

uint64_t router_log_dropped(void)
{
    return atomic_load(&s_dropped_total);
}

void router_log_write(router_log_level_t level, const char *module, const char *fmt, ...)
{
    if (level > ROUTER_LOG_ERROR)
        level = ROUTER_LOG_ERROR;
    if ((int) level < atomic_load(&s_level))
        return;
    char line[ROUTER_LOG_LINE_MAX];
    size_t len = 0;
    bool sweep = false, now_owed = false;
    bool pass = s_rate_admit(level, module, fmt, line, &len, &sweep, &now_owed);
    if (now_owed) {
        /* The writer may be asleep with nothing to write: wake it so it
         * writes the summary once the window passes, even if the site then
         * falls silent (a flood that stops). */
        pthread_mutex_lock(&s_w.lock);
        pthread_cond_signal(&s_w.more);
        pthread_mutex_unlock(&s_w.lock);
    }
    if (len) {
        s_output(line, len); /* the summary of this site's last window */
        s_tap_line(level, module, line, len);
    }
    if (sweep)
        s_rate_sweep(false);
    if (!pass)
        return;
    va_list ap;
    va_start(ap, fmt);
    len = s_format(line, level, module, fmt, ap);
    va_end(ap);
    s_output(line, len);
    s_tap_line(level, module, line, len);
}

void router_log_set_tap(router_log_tap_fn fn, void *ud)
{
    pthread_mutex_lock(&s_tap.lock);
    s_tap.fn = fn;
    s_tap.ud = ud;
    atomic_store(&s_tap_on, fn != NULL);
    pthread_mutex_unlock(&s_tap.lock);
}
