/* router/log.h — kith's leveled logger: one timestamped line per event, to
 * stderr and optionally a file, written by a background thread so the loop
 * never waits on a slow terminal, pipe or disk.
 *
 * Until router_log_start() is called, lines are written synchronously to
 * stderr (fine for short-lived commands). A daemon calls router_log_start()
 * once: lines then go into a bounded in-memory queue drained by a writer
 * thread; when the queue is full a line is dropped and counted, never waited
 * for. Every function here is thread-safe.
 *
 * Repeated lines are rate-limited per call site (one format string): past a
 * burst of ROUTER_LOG_BURST_DEFAULT lines in ROUTER_LOG_WINDOW_MS_DEFAULT,
 * lines from that site are suppressed and counted, and once its window has
 * passed one line "<N> similar lines suppressed (…)" stands for them, so a
 * client provoking thousands of refusals a second cannot flood the log. */
#ifndef KITH_ROUTER_LOG_H
#define KITH_ROUTER_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum router_log_level {
    ROUTER_LOG_DEBUG = 0,
    ROUTER_LOG_INFO,
    ROUTER_LOG_WARN,
    ROUTER_LOG_ERROR,
} router_log_level_t;

/* Longest line kept; longer messages are cut and end in "...". */
#define ROUTER_LOG_LINE_MAX 1024
/* Default size of the writer thread's queue. */
#define ROUTER_LOG_QUEUE_DEFAULT (256u * 1024u)

typedef struct router_log_opts {
    router_log_level_t level; /* lines below this level are skipped */
    const char *path;         /* also append to this file (0600), or NULL */
    bool no_stderr;           /* true: write to the file only */
    size_t queue_bytes;       /* 0 → ROUTER_LOG_QUEUE_DEFAULT */
} router_log_opts_t;

/* Starts the writer thread (and opens opts->path for appending). A file
 * that cannot be opened does not stop it: lines go to stderr (no_stderr
 * or not), router_log_file_error() says why, and router_log_reopen tries
 * the file again. Returns 0, or -1 with errno set when the writer cannot
 * be made (ENOMEM, a thread; EALREADY when called twice); the logger then
 * stays synchronous.
 *
 * The writer never waits more than about a second for stderr to take a
 * batch (a pipe nobody reads, a paused terminal): it leaves the rest of
 * that batch out there and goes on; the file says so at once, stderr with
 * a count once it takes lines again. A file that cannot be written (a full
 * disk) is counted likewise, and the count written into it once it can. */
int router_log_start(const router_log_opts_t *opts) __attribute__((warn_unused_result));

/* Why the log file is not open (errno of the latest attempt), or 0: it is,
 * there is none, or the writer is not running. */
int router_log_file_error(void);

/* Writes out everything queued, stops the writer thread, closes the file and
 * returns to synchronous stderr logging. Idempotent. */
void router_log_stop(void);

/* Blocks until every line queued so far has been written (no-op when
 * synchronous). For shutdown paths and tests, never for the loop thread. */
void router_log_flush(void);

/* Reopens the log file by name (after rotation, on SIGHUP), or opens it
 * when it could not be opened before. 0 or -1 (errno; a file still open
 * keeps being written). */
int router_log_reopen(void);

void router_log_set_level(router_log_level_t level);
router_log_level_t router_log_level(void);

/* "debug", "info", "warn", "error" → *out. Returns 0, or -1 when unknown. */
int router_log_level_parse(const char *text, router_log_level_t *out)
    __attribute__((warn_unused_result));
const char *router_log_level_str(router_log_level_t level);

/* Lines dropped because the writer thread's queue was full. */
uint64_t router_log_dropped(void);

/* ------------------------------------------------------------ rate limit */

/* Lines one call site may write per window before it is suppressed. */
#define ROUTER_LOG_BURST_DEFAULT 10u
/* The window, in milliseconds of the logger's clock. */
#define ROUTER_LOG_WINDOW_MS_DEFAULT 1000u
/* Call sites tracked at once; a site beyond this shares a slot with an
 * older one (its summary is written first, so nothing is lost silently). */
#define ROUTER_LOG_SITES_MAX 256u

/* Sets the burst and window (0 burst: no rate limit). Forgets the state
 * of every site, writing out summaries still owed first. */
void router_log_set_rate(unsigned burst, uint64_t window_ms);

/* The clock the rate limit reads, in milliseconds; NULL restores the
 * monotonic clock. For tests, which drive time by hand. */
typedef uint64_t (*router_log_clock_fn)(void);
void router_log_set_clock(router_log_clock_fn now_ms);

/* Lines suppressed by the rate limit since the process started. */
uint64_t router_log_suppressed(void);

/* Logs one line "<UTC time> <LEVEL> <module>: <message>". Control bytes in
 * the message (from peers' input, say) are escaped as \xNN, so one event is
 * always one line. */
void router_log_write(router_log_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------ tap */

/* Receives every line router_log_write emits (after the level filter and
 * the rate limit): its level, module and the whole formatted line
 * "<time> <LEVEL> <module>: <message>\n" (`len` octets, not NUL-terminated,
 * valid during the call only). Runs on the thread that logged, under the
 * tap's lock: it must be quick, must not block and must not log. */
typedef void (*router_log_tap_fn)(router_log_level_t level, const char *module,
                                  const char *line, size_t len, void *ud);

/* Installs the tap (NULL removes it). Once this returns, no call of the old
 * tap is running or will start, so its ud may be freed. One tap. */
void router_log_set_tap(router_log_tap_fn fn, void *ud);

/* Skips the formatting work when the level is filtered out. */
#define ROUTER_LOG(level, module, ...)                                  \
    do {                                                                \
        if ((level) >= router_log_level())                              \
            router_log_write((level), (module), __VA_ARGS__);           \
    } while (0)

#endif
