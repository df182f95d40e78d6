/* tests/log_test.c — router/log: the per-call-site rate limit (burst, the
 * "N similar lines suppressed" summary, sites counted apart, summaries owed
 * at stop), driven by an injected clock so nothing here depends on timing,
 * plus escaping and reopen after rotation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router/log.h"

static _Atomic uint64_t s_now; /* the injected clock, in ms */

/* Room for every line a test writes, so none is dropped however slowly the
 * writer thread gets to run on a loaded machine (drops are not under test). */
#define S_QUEUE (16u * 1024u * 1024u)

static uint64_t s_clock(void)
{
    return atomic_load(&s_now);
}

typedef struct {
    char dir[64];
    char path[128];
} s_fixture_t;

static int s_setup(void **state)
{
    s_fixture_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kith-log-test-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/daemon.log", f->dir);
    atomic_store(&s_now, 1000000);
    router_log_set_clock(s_clock);
    router_log_set_rate(ROUTER_LOG_BURST_DEFAULT, ROUTER_LOG_WINDOW_MS_DEFAULT);
    router_log_opts_t o = {.level = ROUTER_LOG_DEBUG, .path = f->path, .no_stderr = true,
                           .queue_bytes = S_QUEUE};
    if (router_log_start(&o) != 0)
        return -1;
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fixture_t *f = *state;
    router_log_stop();
    router_log_set_clock(NULL);
    router_log_set_rate(ROUTER_LOG_BURST_DEFAULT, ROUTER_LOG_WINDOW_MS_DEFAULT);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

/* The file's text (caller frees), after the writer has caught up. */
static char *s_read(const char *path)
{
    router_log_flush();
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static size_t s_count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* One call site: a function with a fixed format string. */
static void s_site_a(int i)
{
    router_log_write(ROUTER_LOG_WARN, "comms", "refused envelope number=%d", i);
}

static void s_site_b(int i)
{
    router_log_write(ROUTER_LOG_WARN, "comms", "other refusal number=%d", i);
}

static void test_burst_then_summary(void **state)
{
    s_fixture_t *f = *state;
    uint64_t before = router_log_suppressed();
    for (int i = 0; i < 100; i++)
        s_site_a(i);
    char *text = s_read(f->path);
    assert_int_equal(s_count(text, "refused envelope number="), ROUTER_LOG_BURST_DEFAULT);
    assert_int_equal(s_count(text, "similar lines suppressed"), 0);
    assert_int_equal(router_log_suppressed() - before, 100 - ROUTER_LOG_BURST_DEFAULT);
    free(text);

    /* A window later the site speaks again: first the summary, then the line. */
    atomic_fetch_add(&s_now, ROUTER_LOG_WINDOW_MS_DEFAULT);
    s_site_a(100);
    text = s_read(f->path);
    assert_int_equal(s_count(text, "90 similar lines suppressed"), 1);
    assert_non_null(strstr(text, "WARN  comms: 90 similar lines suppressed"));
    assert_non_null(strstr(text, "refused envelope number=%d"));
    char *summary = strstr(text, "similar lines suppressed");
    assert_non_null(strstr(summary, "comms: refused envelope number=100"));
    assert_int_equal(s_count(text, "comms: refused envelope number="), ROUTER_LOG_BURST_DEFAULT + 1);
    free(text);
}

static void test_sites_are_counted_apart(void **state)
{
    s_fixture_t *f = *state;
    for (int i = 0; i < 30; i++) {
        s_site_a(i);
        s_site_b(i);
    }
    char *text = s_read(f->path);
    assert_int_equal(s_count(text, "refused envelope number="), ROUTER_LOG_BURST_DEFAULT);
    assert_int_equal(s_count(text, "other refusal number="), ROUTER_LOG_BURST_DEFAULT);
    free(text);
}

static void test_window_restarts_the_burst(void **state)
{
    s_fixture_t *f = *state;
    for (int w = 0; w < 3; w++) {
        for (int i = 0; i < (int) ROUTER_LOG_BURST_DEFAULT; i++)
            s_site_a(i);
        atomic_fetch_add(&s_now, ROUTER_LOG_WINDOW_MS_DEFAULT);
    }
    char *text = s_read(f->path);
    assert_int_equal(s_count(text, "refused envelope number="), 3 * ROUTER_LOG_BURST_DEFAULT);
    assert_int_equal(s_count(text, "suppressed"), 0);
    free(text);
}

/* A site that falls silent still gets its summary: another site's line,
 * a flush once the window has passed, or the stop writes it. */
static void test_silent_site_summarised_by_others_and_flush(void **state)
{
    s_fixture_t *f = *state;
    for (int i = 0; i < 15; i++)
        s_site_a(i);
    atomic_fetch_add(&s_now, ROUTER_LOG_WINDOW_MS_DEFAULT);
    s_site_b(0);
    char *text = s_read(f->path);
    assert_int_equal(s_count(text, "5 similar lines suppressed"), 1);
    free(text);

    for (int i = 0; i < 13; i++)
        s_site_b(i);
    text = s_read(f->path);
    assert_int_equal(s_count(text, "similar lines suppressed"), 1); /* window not over */
    free(text);
    atomic_fetch_add(&s_now, ROUTER_LOG_WINDOW_MS_DEFAULT);
    text = s_read(f->path); /* s_read flushes, which sweeps */
    assert_int_equal(s_count(text, "4 similar lines suppressed"), 1);
    free(text);
}

/* A flood that stops: nobody logs again, nobody flushes, and the writer
 * thread still writes the summary once the window has passed. */
static void test_writer_summarises_a_flood_that_stops(void **state)
{
    s_fixture_t *f = *state;
    for (int i = 0; i < (int) ROUTER_LOG_BURST_DEFAULT; i++)
        s_site_a(i);
    router_log_flush(); /* the writer is idle, nothing owed: it sleeps */
    for (int i = 0; i < 40; i++)
        s_site_a(i);
    atomic_fetch_add(&s_now, ROUTER_LOG_WINDOW_MS_DEFAULT);
    bool seen = false;
    for (int tries = 0; tries < 600 && !seen; tries++) { /* a generous bound: 60 s */
        FILE *fp = fopen(f->path, "rb");
        char buf[16384] = "";
        size_t n = fp ? fread(buf, 1, sizeof buf - 1, fp) : 0;
        if (fp)
            fclose(fp);
        buf[n] = '\0';
        seen = strstr(buf, "40 similar lines suppressed") != NULL;
        if (!seen)
            usleep(100 * 1000);
    }
    assert_true(seen);
}

static void test_stop_writes_summaries_owed(void **state)
{
    s_fixture_t *f = *state;
    for (int i = 0; i < 12; i++)
        s_site_a(i);
    router_log_stop(); /* the window has not passed: the stop still tells */
    FILE *fp = fopen(f->path, "rb");
    char buf[8192] = "";
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    assert_int_equal(s_count(buf, "2 similar lines suppressed"), 1);
    /* Restart so the teardown has a logger to stop. */
    router_log_opts_t o = {.level = ROUTER_LOG_DEBUG, .path = f->path, .no_stderr = true,
                           .queue_bytes = S_QUEUE};
    assert_int_equal(router_log_start(&o), 0);
}

static void test_rate_off(void **state)
{
    s_fixture_t *f = *state;
    router_log_set_rate(0, 0);
    for (int i = 0; i < 50; i++)
        s_site_a(i);
    char *text = s_read(f->path);
    assert_int_equal(s_count(text, "refused envelope number="), 50);
    free(text);
}

/* More sites than slots: every line is either written or summarised. */
static void test_many_sites_lose_nothing_silently(void **state)
{
    s_fixture_t *f = *state;
    enum { SITES = ROUTER_LOG_SITES_MAX * 2, PER = 12 };
    static char fmts[SITES][32];
    for (int s = 0; s < SITES; s++)
        snprintf(fmts[s], sizeof fmts[s], "site %d line %%d", s);
    uint64_t before = router_log_suppressed();
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    for (int s = 0; s < SITES; s++)
        for (int i = 0; i < PER; i++)
            router_log_write(ROUTER_LOG_INFO, "t", fmts[s], i);
#pragma GCC diagnostic pop
    router_log_stop();
    uint64_t suppressed = router_log_suppressed() - before;
    FILE *fp = fopen(f->path, "rb");
    char *text = calloc(1, 4 << 20);
    size_t n = fread(text, 1, (4 << 20) - 1, fp);
    fclose(fp);
    text[n] = '\0';
    size_t written = s_count(text, " line ");
    /* Sum of the N in every summary line. */
    uint64_t summarised = 0;
    for (const char *p = text; (p = strstr(p, "INFO  t: ")); p++) {
        unsigned long long k;
        if (sscanf(p, "INFO  t: %llu similar lines suppressed", &k) == 1)
            summarised += k;
    }
    assert_int_equal(summarised, suppressed);
    assert_int_equal(written - s_count(text, "similar lines suppressed") + suppressed,
                     (uint64_t) SITES * PER);
    free(text);
    router_log_opts_t o = {.level = ROUTER_LOG_DEBUG, .path = f->path, .no_stderr = true,
                           .queue_bytes = S_QUEUE};
    assert_int_equal(router_log_start(&o), 0);
}

/* Several threads on one site: the burst holds across them, and the total
 * written plus suppressed is every line. */
static void *s_thread(void *arg)
{
    (void) arg;
    for (int i = 0; i < 500; i++)
        s_site_a(i);
    return NULL;
}

static void test_threads_share_the_budget(void **state)
{
    s_fixture_t *f = *state;
    uint64_t before = router_log_suppressed();
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, s_thread, NULL), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    char *text = s_read(f->path);
    assert_int_equal(s_count(text, "refused envelope number="), ROUTER_LOG_BURST_DEFAULT);
    assert_int_equal(router_log_suppressed() - before, 2000 - ROUTER_LOG_BURST_DEFAULT);
    free(text);
}

static void test_control_bytes_escaped(void **state)
{
    s_fixture_t *f = *state;
    router_log_write(ROUTER_LOG_INFO, "t", "peer said %s", "a\nFAKE 2000 ERROR x\x1b[1m");
    char *text = s_read(f->path);
    assert_non_null(strstr(text, "peer said a\\x0aFAKE 2000 ERROR x\\x1b[1m\n"));
    free(text);
}

/* logrotate: the file is moved away, reopen makes a new one (0600). */
static void test_reopen_after_rotation(void **state)
{
    s_fixture_t *f = *state;
    router_log_write(ROUTER_LOG_INFO, "t", "before rotation");
    router_log_flush();
    char moved[160];
    snprintf(moved, sizeof moved, "%s.1", f->path);
    assert_int_equal(rename(f->path, moved), 0);
    assert_int_equal(router_log_reopen(), 0);
    router_log_write(ROUTER_LOG_INFO, "t", "after rotation");
    char *text = s_read(f->path);
    assert_null(strstr(text, "before rotation"));
    assert_non_null(strstr(text, "after rotation"));
    free(text);
    text = s_read(moved);
    assert_non_null(strstr(text, "before rotation"));
    assert_null(strstr(text, "after rotation"));
    free(text);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
}

/* Stops the fixture's logger and takes its file away, for a test that
 * starts one of its own. */
static void s_fixture_stop(const s_fixture_t *f)
{
    router_log_stop();
    assert_int_equal(unlink(f->path), 0);
}

/* A log file that cannot be opened does not stop the writer: it says why,
 * lines go to stderr meanwhile, and reopen (SIGHUP) opens the file once it
 * can be. The logger used to stay synchronous with no file for good. */
static void test_file_opened_later(void **state)
{
    s_fixture_t *f = *state;
    s_fixture_stop(f);
    assert_int_equal(mkdir(f->path, 0700), 0); /* a folder where the file goes */
    router_log_opts_t o = {.level = ROUTER_LOG_INFO, .path = f->path, .no_stderr = true,
                           .queue_bytes = S_QUEUE};
    assert_int_equal(router_log_start(&o), 0);
    assert_int_equal(router_log_file_error(), EISDIR);
    router_log_write(ROUTER_LOG_INFO, "t", "while the file is a folder");
    router_log_flush(); /* written (to stderr) before the file is there */
    assert_int_equal(router_log_reopen(), -1);
    assert_int_equal(router_log_file_error(), EISDIR);
    assert_int_equal(rmdir(f->path), 0);
    assert_int_equal(router_log_reopen(), 0);
    assert_int_equal(router_log_file_error(), 0);
    router_log_write(ROUTER_LOG_INFO, "t", "once it can be opened");
    char *text = s_read(f->path);
    assert_null(strstr(text, "while the file is a folder"));
    assert_non_null(strstr(text, "once it can be opened\n"));
    free(text);
    router_log_stop();
    assert_int_equal(router_log_file_error(), 0);
}

/* A file that takes no lines (a full disk: /dev/full) loses them, and the
 * first line the log file takes again says how many and why. They used to
 * go missing without a word. */
static void test_lines_a_full_disk_lost_are_counted(void **state)
{
    s_fixture_t *f = *state;
    s_fixture_stop(f);
    assert_int_equal(symlink("/dev/full", f->path), 0);
    router_log_opts_t o = {.level = ROUTER_LOG_INFO, .path = f->path, .no_stderr = true,
                           .queue_bytes = S_QUEUE};
    assert_int_equal(router_log_start(&o), 0);
    assert_int_equal(router_log_file_error(), 0);
    router_log_write(ROUTER_LOG_INFO, "t", "lost one");
    router_log_flush();
    router_log_write(ROUTER_LOG_INFO, "u", "lost two");
    router_log_flush();
    assert_int_equal(unlink(f->path), 0);
    assert_int_equal(router_log_reopen(), 0);
    router_log_write(ROUTER_LOG_INFO, "t", "kept");
    char *text = s_read(f->path);
    char *note = strstr(text, "log: 2 log lines were not written to this file: No space left "
                              "on device\n");
    assert_non_null(note);
    assert_true(note < strstr(text, "kept\n"));
    assert_null(strstr(text, "lost"));
    free(text);
}

/* stderr a pipe nobody reads: the writer gives up on it after a while
 * instead of blocking for ever, so the file gets every line (and says
 * stderr misses them) and stop returns. flush and stop used to hang. */
static void test_unread_stderr_does_not_hold_the_file(void **state)
{
    s_fixture_t *f = *state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    (void) fcntl(fds[1], F_SETPIPE_SZ, 4096);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fds[1], STDERR_FILENO) >= 0);
    close(fds[1]);
    router_log_opts_t o = {.level = ROUTER_LOG_INFO, .path = f->path, .queue_bytes = S_QUEUE};
    s_fixture_stop(f);
    assert_int_equal(router_log_start(&o), 0);
    router_log_set_rate(0, 0);
    /* Several batches, more than the pipe holds, each waited for. */
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 40; j++)
            router_log_write(ROUTER_LOG_INFO, "t", "line %d.%d %0100d", i, j, 0);
        router_log_flush();
    }
    router_log_stop();
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    close(fds[0]);
    FILE *fp = fopen(f->path, "rb");
    assert_non_null(fp);
    char *text = calloc(1, 1 << 20);
    size_t n = fread(text, 1, (1 << 20) - 1, fp);
    fclose(fp);
    text[n] = '\0';
    assert_int_equal(s_count(text, " INFO  t: line "), 120);
    assert_non_null(strstr(text, "log: stderr is not taking log lines (nobody reads it): they "
                                 "go to this file only until it does\n"));
    free(text);
}

/* Reads a FIFO to its end into a buffer, on its own thread. */
typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
} s_drain_t;

static void *s_drain_main(void *arg)
{
    s_drain_t *d = arg;
    ssize_t n;
    while (d->len < d->cap - 1 && (n = read(d->fd, d->buf + d->len, d->cap - 1 - d->len)) != 0) {
        if (n > 0)
            d->len += (size_t) n;
        else if (errno != EINTR && errno != EAGAIN)
            break;
    }
    d->buf[d->len] = '\0';
    return NULL;
}

/* The sum of N over the notes "log: N <what>" in text. */
static uint64_t s_sum_notes(const char *text, const char *what)
{
    uint64_t sum = 0;
    for (const char *p = text; (p = strstr(p, "WARN  log: ")); p++) {
        unsigned long long n;
        int at = 0;
        if (sscanf(p, "WARN  log: %llu %n", &n, &at) == 1 && !strncmp(p + at, what, strlen(what)))
            sum += n;
    }
    return sum;
}

/* The queue is bounded: with the writer held (its file, a FIFO nobody
 * reads yet, is full) lines past the queue's room are dropped and counted,
 * never waited for; lines the FIFO would not take in time are counted too.
 * Once it is read, every line written is there or in a note's count. */
static void test_full_queue_drops_and_says_so(void **state)
{
    s_fixture_t *f = *state;
    s_fixture_stop(f);
    assert_int_equal(mkfifo(f->path, 0600), 0);
    s_drain_t d = {.fd = open(f->path, O_RDONLY | O_NONBLOCK), .cap = 1 << 22};
    assert_true(d.fd >= 0);
    d.buf = malloc(d.cap);
    router_log_opts_t o = {.level = ROUTER_LOG_INFO, .path = f->path, .no_stderr = true,
                           .queue_bytes = 1}; /* the least: two lines' worth */
    assert_int_equal(router_log_start(&o), 0);
    router_log_set_rate(0, 0);
    /* Lines until one is dropped, then a hundred more at once. */
    uint64_t start = router_log_dropped();
    int lines = 0;
    for (; router_log_dropped() == start && lines < 100000; lines++) {
        router_log_write(ROUTER_LOG_INFO, "t", "filler %06d %0200d", lines, 0);
        usleep(100);
    }
    for (int i = 0; i < 100; i++, lines++)
        router_log_write(ROUTER_LOG_INFO, "t", "held   %06d %0200d", i, 0);
    uint64_t dropped = router_log_dropped() - start;
    int fl = fcntl(d.fd, F_GETFL);
    assert_int_equal(fcntl(d.fd, F_SETFL, fl & ~O_NONBLOCK), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_drain_main, &d), 0);
    router_log_flush();
    router_log_stop(); /* closes the FIFO: the reader sees its end */
    pthread_join(t, NULL);
    close(d.fd);
    /* A note of drops the FIFO would not take counts in the next "not
     * written" note instead. */
    assert_true(dropped > 0);
    uint64_t said = s_sum_notes(d.buf, "log lines dropped: the log writer fell behind");
    assert_true(said <= dropped);
    uint64_t kept = s_count(d.buf, " INFO  t: filler ") + s_count(d.buf, " INFO  t: held ");
    uint64_t lost = s_sum_notes(d.buf, "log lines were not written to this file");
    assert_int_equal(kept + said + lost, (uint64_t) lines);
    free(d.buf);
}

#define T(f) cmocka_unit_test_setup_teardown(f, s_setup, s_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_burst_then_summary),
        T(test_sites_are_counted_apart),
        T(test_window_restarts_the_burst),
        T(test_silent_site_summarised_by_others_and_flush),
        T(test_writer_summarises_a_flood_that_stops),
        T(test_stop_writes_summaries_owed),
        T(test_rate_off),
        T(test_many_sites_lose_nothing_silently),
        T(test_threads_share_the_budget),
        T(test_control_bytes_escaped),
        T(test_reopen_after_rotation),
        T(test_file_opened_later),
        T(test_lines_a_full_disk_lost_are_counted),
        T(test_unread_stderr_does_not_hold_the_file),
        T(test_full_queue_drops_and_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
