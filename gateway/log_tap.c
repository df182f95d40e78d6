/* gateway/log_tap.c — log lines from any thread to the loop thread and on
 * to the log stream (gateway/log_tap.h): a mutex-guarded pair of bounded
 * arrays (one filled by the tap, one published from) and an eventfd that
 * wakes the loop when the first line of a batch arrives. */
#include "gateway/log_tap.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "router/log.h"

#define S_MODULE_MAX 32u

/* One line as the tap saw it. */
typedef struct {
    router_log_level_t level;   /* its level */
    char module[S_MODULE_MAX];  /* its module, cut to fit */
    size_t len;                 /* octets of line */
    char line[ROUTER_LOG_LINE_MAX]; /* "<time> <LEVEL> <module>: <text>\n" */
} s_line_t;

struct gateway_log_tap {
    router_loop_t *loop;     /* borrowed */
    gateway_events_t *logs;  /* borrowed: where lines are published */
    int efd;                 /* eventfd: lines are waiting */
    router_watch_t *watch;   /* on efd */
    pthread_mutex_t lock;    /* guards pending, npending, dropped */
    s_line_t *pending;       /* filled by the tap */
    size_t npending;         /* lines in it */
    uint64_t dropped;        /* lines dropped since the last batch */
    s_line_t *batch;         /* being published (loop thread only) */
};

/* router_log_tap_fn: any thread, under the logger's tap lock; never blocks
 * on anything but our own short critical section, never logs. */
static void s_tap(router_log_level_t level, const char *module, const char *line, size_t len,
                  void *ud)
{
    gateway_log_tap_t *t = ud;
    bool wake = false;
    pthread_mutex_lock(&t->lock);
    if (t->npending >= GATEWAY_LOG_TAP_LINES) {
        t->dropped++;
    } else {
        s_line_t *l = &t->pending[t->npending];
        wake = t->npending == 0;
        t->npending++;
        l->level = level;
        snprintf(l->module, sizeof l->module, "%s", module);
        l->len = len < sizeof l->line ? len : sizeof l->line;
        memcpy(l->line, line, l->len);
    }
    pthread_mutex_unlock(&t->lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t n = write(t->efd, &one, sizeof one); /* EAGAIN: already signalled */
        (void) n;
    }
}

/* Publishes one line as {"level","module","time","text"}. */
static void s_publish(gateway_log_tap_t *t, const s_line_t *l)
{
    const char *p = l->line, *end = l->line + l->len;
    if (end > p && end[-1] == '\n')
        end--;
    /* "<time> " */
    const char *sp = memchr(p, ' ', (size_t) (end - p));
    const char *time = p;
    size_t time_len = sp ? (size_t) (sp - p) : 0;
    /* then the 5-column level tag, a space, "<module>: " */
    const char *text = p;
    size_t mlen = strlen(l->module);
    if (sp && (size_t) (end - sp) > 7 + mlen + 2 && !memcmp(sp + 7, l->module, mlen) &&
        sp[7 + mlen] == ':')
        text = sp + 7 + mlen + 2;
    char json[ROUTER_LOG_LINE_MAX * 6 + 256];
    gateway_events_json_t j = {.p = json, .cap = sizeof json};
    const char *level = router_log_level_str(l->level);
    gateway_events_json_raw(&j, "{\"level\":\"", 10);
    gateway_events_json_raw(&j, level, strlen(level));
    gateway_events_json_raw(&j, "\",\"module\":\"", 12);
    gateway_events_json_str(&j, l->module, mlen);
    gateway_events_json_raw(&j, "\",\"time\":\"", 10);
    gateway_events_json_str(&j, time, time_len);
    gateway_events_json_raw(&j, "\",\"text\":\"", 10);
    gateway_events_json_str(&j, text, (size_t) (end - text));
    gateway_events_json_raw(&j, "\"}", 2);
    if (j.full)
        return;
    (void) gateway_events_publish(t->logs, "log", json);
}

static void s_on_wake(router_watch_t *watch, int fd, unsigned events, void *ud)
{
    (void) watch;
    (void) events;
    gateway_log_tap_t *t = ud;
    uint64_t count;
    while (read(fd, &count, sizeof count) > 0) /* edge-triggered: read to EAGAIN */
        ;
    pthread_mutex_lock(&t->lock);
    s_line_t *batch = t->pending;
    size_t n = t->npending;
    uint64_t dropped = t->dropped;
    t->pending = t->batch;
    t->batch = batch;
    t->npending = 0;
    t->dropped = 0;
    pthread_mutex_unlock(&t->lock);
    /* Publishing may log (a cut subscriber): those lines go to pending. */
    for (size_t i = 0; i < n; i++)
        s_publish(t, &batch[i]);
    if (dropped) {
        char json[64];
        snprintf(json, sizeof json, "{\"count\":%" PRIu64 "}", dropped);
        (void) gateway_events_publish(t->logs, "log_dropped", json);
    }
}

gateway_log_tap_t *gateway_log_tap_new(router_loop_t *loop, gateway_events_t *logs)
{
    if (!loop || !logs) {
        errno = EINVAL;
        return NULL;
    }
    gateway_log_tap_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->efd = -1;
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        errno = ENOMEM;
        return NULL;
    }
    t->loop = loop;
    t->logs = logs;
    t->pending = calloc(GATEWAY_LOG_TAP_LINES, sizeof *t->pending);
    t->batch = calloc(GATEWAY_LOG_TAP_LINES, sizeof *t->batch);
    if (!t->pending || !t->batch)
        goto fail;
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->efd < 0)
        goto fail;
    t->watch = router_loop_watch_fd(loop, t->efd, ROUTER_EV_READ, s_on_wake, t);
    if (!t->watch)
        goto fail;
    router_log_set_tap(s_tap, t);
    return t;
fail:;
    int e = errno ? errno : ENOMEM;
    gateway_log_tap_destroy(&t);
    errno = e;
    return NULL;
}

void gateway_log_tap_destroy(gateway_log_tap_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_log_tap_t *t = *self_p;
    if (t->watch)
        router_log_set_tap(NULL, NULL); /* waits for a call in flight */
    router_watch_destroy(&t->watch);
    if (t->efd >= 0)
        close(t->efd);
    pthread_mutex_destroy(&t->lock);
    free(t->pending);
    free(t->batch);
    free(t);
    *self_p = NULL;
}
