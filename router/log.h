/* router/log.h — kith's leveled logger: one timestamped line per event, to
 * stderr and optionally a file, written by a background thread so the loop
 * never waits on a slow terminal, pipe or disk.
 *
 * Until router_log_start() is called, lines are written synchronously to
 * stderr (fine for short-lived commands). A daemon calls router_log_start()
 * once: lines then go into a bounded in-memory queue drained by a writer
 * thread; when the queue is full a line is dropped and counted, never waited
 * for. Every function here is thread-safe. */
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

/* Starts the writer thread (and opens opts->path for appending). Returns 0,
 * or -1 with errno set (the file cannot be opened, or a thread cannot be
 * made); the logger then stays synchronous. Calling it twice fails (EALREADY). */
int router_log_start(const router_log_opts_t *opts) __attribute__((warn_unused_result));

/* Writes out everything queued, stops the writer thread, closes the file and
 * returns to synchronous stderr logging. Idempotent. */
void router_log_stop(void);

/* Blocks until every line queued so far has been written (no-op when
 * synchronous). For shutdown paths and tests, never for the loop thread. */
void router_log_flush(void);

/* Reopens the log file by name (after rotation, on SIGHUP). 0 or -1 (errno). */
int router_log_reopen(void);

void router_log_set_level(router_log_level_t level);
router_log_level_t router_log_level(void);

/* "debug", "info", "warn", "error" → *out. Returns 0, or -1 when unknown. */
int router_log_level_parse(const char *text, router_log_level_t *out)
    __attribute__((warn_unused_result));
const char *router_log_level_str(router_log_level_t level);

/* Lines dropped because the writer thread's queue was full. */
uint64_t router_log_dropped(void);

/* Logs one line "<UTC time> <LEVEL> <module>: <message>". Control bytes in
 * the message (from peers' input, say) are escaped as \xNN, so one event is
 * always one line. */
void router_log_write(router_log_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Skips the formatting work when the level is filtered out. */
#define ROUTER_LOG(level, module, ...)                                  \
    do {                                                                \
        if ((level) >= router_log_level())                              \
            router_log_write((level), (module), __VA_ARGS__);           \
    } while (0)

#endif
