/* router/log.c — leveled, timestamped, one-line-per-event logging with a
 * bounded queue and a writer thread so no caller ever waits on I/O. */
#include "router/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    char *path;             /* the log file's name, for reopen */
    bool to_stderr;         /* also write to fd 2 */
} s_writer_t;

static s_writer_t s_w = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .more = PTHREAD_COND_INITIALIZER,
    .drained = PTHREAD_COND_INITIALIZER,
    .file_fd = -1,
    .to_stderr = true,
};
static _Atomic int s_level = ROUTER_LOG_INFO;
static _Atomic uint64_t s_dropped_total;

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
 * is nowhere left to report them). */
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

static void s_emit(const char *buf, size_t len, int file_fd, bool to_stderr)
{
    if (to_stderr)
        s_write_all(STDERR_FILENO, buf, len);
    if (file_fd >= 0)
        s_write_all(file_fd, buf, len);
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
    size_t cap = s_w.cap;
    char *batch = arg;
    pthread_mutex_lock(&s_w.lock);
    for (;;) {
        while (s_w.len == 0 && s_w.dropped == 0 && !s_w.stopping)
            pthread_cond_wait(&s_w.more, &s_w.lock);
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
        int fd = s_w.file_fd;
        bool to_stderr = s_w.to_stderr;
        s_w.writing = true;
        pthread_mutex_unlock(&s_w.lock);

        s_emit(batch, len, fd, to_stderr);
        if (dropped) {
            char note[ROUTER_LOG_LINE_MAX];
            size_t n = s_line(note, ROUTER_LOG_WARN, "log",
                              "%llu log lines dropped: the log writer fell behind",
                              (unsigned long long) dropped);
            s_emit(note, n, fd, to_stderr);
        }

        pthread_mutex_lock(&s_w.lock);
        s_w.writing = false;
        pthread_cond_broadcast(&s_w.drained);
    }
    pthread_mutex_unlock(&s_w.lock);
    free(batch);
    return NULL;
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
    int fd = -1;
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
        fd = open(o.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            err = errno;
            goto fail;
        }
    }
    s_w.ring = ring;
    s_w.cap = cap;
    s_w.head = s_w.len = 0;
    s_w.dropped = 0;
    s_w.file_fd = fd;
    s_w.path = path;
    s_w.to_stderr = !(o.no_stderr && fd >= 0);
    s_w.stopping = false;
    err = pthread_create(&s_w.thread, NULL, s_writer_main, batch);
    if (err != 0) {
        s_w.ring = NULL;
        s_w.file_fd = -1;
        s_w.path = NULL;
        s_w.to_stderr = true;
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
    free(path);
    free(batch);
    free(ring);
    errno = err;
    return -1;
}

void router_log_stop(void)
{
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
        int fd = open(s_w.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            rc = -1;
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
    va_list ap;
    va_start(ap, fmt);
    size_t len = s_format(line, level, module, fmt, ap);
    va_end(ap);

    pthread_mutex_lock(&s_w.lock);
    if (s_w.running) {
        s_enqueue(line, len);
        pthread_mutex_unlock(&s_w.lock);
        return;
    }
    pthread_mutex_unlock(&s_w.lock);
    /* Synchronous mode: one write(2) per line keeps lines whole. */
    s_write_all(STDERR_FILENO, line, len);
}
