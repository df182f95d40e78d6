/* tests/audit_feed_test.c — router/workers/audit_feed's failure paths, on a
 * real loop and broker with a scripted fake audit worker (an MDP worker on
 * its own thread answering each audit-append as told): pushes refused for
 * their bounds or for want of memory, the queue's bound, new under each
 * allocation failing, replies that are not appended (a body that does not
 * decode, an io error, counts other than the batch's, bad_request, a
 * worker that leaves holding the batch), a loop that has no timer for the
 * feed, and events still queued at destroy. The
 * happy path, with the real audit worker, is in audit_worker_test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <czmq.h>

#include "alloc_fail.h"
#include "loop_until.h"
#include "proto/audit_msg.h"
#include "router/net/loop.h"
#include "router/workers/audit_feed.h"
#include "router/workers/audit_limit.h"
#include "router/workers/broker.h"
#include "router/workers/mdp_worker.h"

static int s_n;

/* ------------------------------------------------------------ the fake worker */

/* What the fake worker answers to one audit-append. */
typedef enum {
    S_OK = 0,      /* audit_appended with the batch's count */
    S_GARBAGE,     /* a body that is no audit message */
    S_IO,          /* audit_error io */
    S_OVER_COUNT,  /* audit_appended with one event too many */
    S_SHORT_COUNT, /* audit_appended with the first event only (a worker that stored a part) */
    S_NO_COUNT,    /* audit_appended with count 0 */
    S_BAD_REQUEST, /* audit_error bad_request */
    S_LEAVE,       /* no answer: the worker leaves holding the batch */
} s_mode_t;

#define S_SCRIPT_MAX 8

typedef struct {
    char ep[64];
    pthread_t thread;
    router_mdp_worker_t *w;
    s_mode_t script[S_SCRIPT_MAX]; /* answers, in order; S_OK after */
    size_t n_script;
    atomic_size_t requests;        /* audit-appends received */
    atomic_size_t events;          /* events in them */
} s_fake_t;

static void s_answer(s_fake_t *f, const proto_audit_msg_t *m)
{
    if (m->kind == PROTO_AUDIT_APPENDED || m->kind == PROTO_AUDIT_ERROR) {
        uint8_t *body = NULL;
        size_t len = 0;
        proto_audit_err_t e;
        assert_int_equal(proto_audit_msg_encode(m, &body, &len, &e), 0);
        assert_int_equal(router_mdp_worker_final(f->w, body, len), 0);
        free(body);
    }
}

static void *s_fake_main(void *arg)
{
    s_fake_t *f = arg;
    uint8_t *body;
    size_t len;
    while (router_mdp_worker_recv(f->w, &body, &len, -1) == 1) {
        proto_audit_msg_t req;
        proto_audit_err_t e;
        assert_int_equal(proto_audit_msg_decode(body, len, &req, &e), 0);
        free(body);
        assert_int_equal(req.kind, PROTO_AUDIT_APPEND);
        size_t i = atomic_fetch_add(&f->requests, 1);
        atomic_fetch_add(&f->events, req.n_events);
        s_mode_t mode = i < f->n_script ? f->script[i] : S_OK;
        proto_audit_msg_t rep = {.kind = PROTO_AUDIT_APPENDED, .first_seq = 1, .count = req.n_events};
        switch (mode) {
        case S_OK:
            break;
        case S_GARBAGE:
            assert_int_equal(router_mdp_worker_final(f->w, (const uint8_t *) "\xff", 1), 0);
            rep.kind = 0;
            break;
        case S_IO:
            rep = (proto_audit_msg_t){.kind = PROTO_AUDIT_ERROR, .code = "io", .code_len = 2,
                                      .reason = "disk full", .reason_len = 9};
            break;
        case S_OVER_COUNT:
            rep.count++;
            break;
        case S_SHORT_COUNT:
            rep.count = 1;
            break;
        case S_NO_COUNT:
            rep.count = 0;
            break;
        case S_BAD_REQUEST:
            rep = (proto_audit_msg_t){.kind = PROTO_AUDIT_ERROR, .code = "bad_request", .code_len = 11,
                                      .reason = "no", .reason_len = 2};
            break;
        case S_LEAVE:
            proto_audit_msg_clear(&req);
            return NULL; /* s_fake_stop's destroy says DISCONNECT */
        }
        s_answer(f, &rep);
        proto_audit_msg_clear(&req);
    }
    return NULL;
}

static s_fake_t *s_fake_start(const char *ep, const s_mode_t *script, size_t n)
{
    s_fake_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->ep, sizeof f->ep, "%s", ep);
    assert_true(n <= S_SCRIPT_MAX);
    if (n)
        memcpy(f->script, script, n * sizeof *script);
    f->n_script = n;
    char err[256] = "";
    router_mdp_worker_opts_t o = {.endpoint = f->ep, .service = ROUTER_AUDIT_SERVICE,
                                  .heartbeat_ms = 100, .liveness = 50};
    f->w = router_mdp_worker_new(&o, err, sizeof err);
    assert_non_null(f->w);
    assert_int_equal(pthread_create(&f->thread, NULL, s_fake_main, f), 0);
    return f;
}

static void s_fake_stop(s_fake_t **fp)
{
    s_fake_t *f = *fp;
    router_mdp_worker_interrupt(f->w);
    pthread_join(f->thread, NULL);
    router_mdp_worker_destroy(&f->w);
    free(f);
    *fp = NULL;
}

/* ------------------------------------------------------------ the fixture */

typedef struct {
    char ep[64];
    router_loop_t *loop;
    router_broker_t *b;
    router_metrics_t *metrics;
    router_audit_feed_t *feed;
} fix_t;

static int s_setup(void **state)
{
    fix_t *f = calloc(1, sizeof *f);
    snprintf(f->ep, sizeof f->ep, "inproc://audit-feed-test-%d", ++s_n);
    f->loop = router_loop_new(NULL);
    f->metrics = router_metrics_new();
    char err[256] = "";
    router_broker_opts_t bo = {.loop = f->loop, .endpoint = f->ep, .heartbeat_ms = 100, .liveness = 50};
    f->b = f->loop ? router_broker_new(&bo, err, sizeof err) : NULL;
    router_audit_feed_opts_t fo = {.loop = f->loop, .broker = f->b, .metrics = f->metrics,
                                   .queue_max = 8, .retry_ms = 5};
    f->feed = f->b ? router_audit_feed_new(&fo) : NULL;
    *state = f;
    return f->feed && f->metrics ? 0 : -1;
}

static int s_teardown(void **state)
{
    fix_t *f = *state;
    router_audit_feed_destroy(&f->feed);
    router_broker_destroy(&f->b);
    router_loop_destroy(&f->loop);
    router_metrics_destroy(&f->metrics);
    free(f);
    return 0;
}

static router_audit_feed_stats_t s_stats(fix_t *f)
{
    router_audit_feed_stats_t st;
    router_audit_feed_stats(f->feed, &st);
    return st;
}

static bool s_empty(void *ud)
{
    fix_t *f = ud;
    return s_stats(f).queued == 0;
}

typedef struct {
    fix_t *f;
    uint64_t retries;
} retries_t;

static bool s_retried(void *ud)
{
    retries_t *r = ud;
    return s_stats(r->f).retries >= r->retries;
}

static bool s_taken(void *ud)
{
    return atomic_load(&((s_fake_t *) ud)->requests) > 0;
}

static void s_push(fix_t *f, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(router_audit_feed_push(f->feed, "trust_changed", "{}"), 0);
}

static void s_metric(fix_t *f, const char *want)
{
    static char text[16384];
    assert_true(router_metrics_render(f->metrics, text, sizeof text) > 0);
    if (!strstr(text, want))
        fail_msg("no \"%s\" in:\n%s", want, text);
}

/* ------------------------------------------------------------ tests */

/* A NULL feed (audit off) takes every call and does nothing. */
static void test_null_feed(void **state)
{
    (void) state;
    assert_int_equal(router_audit_feed_push(NULL, "pair", "{}"), 0);
    assert_int_equal(router_audit_feed_push_from(NULL, "auth_failure", "10.0.0.1", "{}"), 0);
    router_audit_feed_tool_call(NULL, "s", "peers", "c1", false);
    router_comms_event_t ev = {0};
    router_audit_feed_on_comms(NULL, &ev);
    router_audit_feed_t *none = NULL;
    router_audit_feed_destroy(&none);
}

/* Events out of bounds, or not UTF-8 (which the worker's decoder would
 * refuse, and the whole batch with it), are refused one by one, counted
 * and logged; so are events past the queue's bound and one that finds no
 * memory. */
static void test_push_refusals(void **state)
{
    fix_t *f = *state;
    static char long_type[PROTO_AUDIT_TYPE_MAX + 2], long_detail[PROTO_AUDIT_DETAIL_MAX + 2];
    memset(long_type, 't', sizeof long_type - 1);
    memset(long_detail, 'd', sizeof long_detail - 1);
    assert_int_equal(router_audit_feed_push(f->feed, "", "{}"), -1);
    assert_int_equal(router_audit_feed_push(f->feed, long_type, "{}"), -1);
    assert_int_equal(router_audit_feed_push(f->feed, "pair", long_detail), -1);
    assert_int_equal(router_audit_feed_push(f->feed, "pair", "{\"x\":\"\xff\"}"), -1);
    assert_int_equal(router_audit_feed_push(f->feed, "pa\xc3", "{}"), -1);
    assert_int_equal(s_stats(f).dropped, 5);
    alloc_fail_arm(0);
    assert_int_equal(router_audit_feed_push(f->feed, "pair", "{}"), -1);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(s_stats(f).dropped, 6);
    s_push(f, 8);
    assert_int_equal(router_audit_feed_push(f->feed, "pair", "{}"), -1);
    router_audit_feed_stats_t st = s_stats(f);
    assert_int_equal(st.dropped, 7);
    assert_int_equal(st.queued, 8);
    assert_int_equal(st.pushed, 8);
    s_metric(f, "kith_audit_dropped_total 7");
    s_metric(f, "kith_audit_queue 8");
    /* With nothing to take them, the 8 are dropped at destroy, counted. */
    router_audit_feed_destroy(&f->feed);
    s_metric(f, "kith_audit_dropped_total 15");
}

/* new with each allocation failing: NULL, leaking nothing, or a feed. */
static void test_new_without_memory(void **state)
{
    fix_t *f = *state;
    bool made = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !made; i++) {
        router_metrics_t *m = router_metrics_new();
        assert_non_null(m);
        router_audit_feed_opts_t fo = {.loop = f->loop, .broker = f->b, .metrics = m};
        alloc_fail_arm(i);
        router_audit_feed_t *feed = router_audit_feed_new(&fo);
        bool failed = alloc_fail_disarm() > 0;
        if (!feed)
            assert_true(failed);
        made = feed && !failed;
        router_audit_feed_destroy(&feed);
        router_metrics_destroy(&m);
    }
    assert_true(made);
}

/* Answers that store nothing: a body that does not decode, an io error
 * and "appended" 0 events keep the batch and send it again (counted in
 * retries); the events are appended once the worker says so, and nothing
 * is dropped. */
static void test_failed_batches_are_sent_again(void **state)
{
    fix_t *f = *state;
    static const s_mode_t script[] = {S_GARBAGE, S_IO, S_NO_COUNT};
    s_fake_t *w = s_fake_start(f->ep, script, 3);
    s_push(f, 3);
    test_loop_until(f->loop, s_empty, f, 5, 60000);
    router_audit_feed_stats_t st = s_stats(f);
    assert_int_equal(st.appended, 3);
    assert_int_equal(st.retries, 3);
    assert_int_equal(st.batches, 1);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(atomic_load(&w->requests), 4);
    s_metric(f, "kith_audit_retries_total 3");
    s_metric(f, "kith_audit_appended_total 3");
    s_fake_stop(&w);
}

/* "appended" with a count other than the batch's (a worker serving
 * kith.audit over workers.listen may store a part): the events it says it
 * stored are never sent again, which could write them twice. One that
 * stored the first of 3 gets the other 2 in the next batch; one that says
 * it stored more than it was sent has stored the batch (logged). The
 * worker sees 3 + 2 events, no retry. */
static void test_appended_counts_that_differ(void **state)
{
    fix_t *f = *state;
    static const s_mode_t script[] = {S_SHORT_COUNT, S_OVER_COUNT};
    s_fake_t *w = s_fake_start(f->ep, script, 2);
    s_push(f, 3);
    test_loop_until(f->loop, s_empty, f, 5, 60000);
    router_audit_feed_stats_t st = s_stats(f);
    assert_int_equal(st.appended, 3);
    assert_int_equal(st.batches, 2);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(atomic_load(&w->requests), 2);
    assert_int_equal(atomic_load(&w->events), 5);
    s_metric(f, "kith_audit_appended_total 3");
    s_fake_stop(&w);
}

static void s_nop_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
}

static bool s_timer_failures(void *ud)
{
    retries_t *r = ud;
    router_audit_feed_stats_t st = s_stats(r->f);
    return st.timer_failures >= r->retries && st.retries >= 1;
}

/* The loop cannot add the feed's timer (its max_timers are pending): the
 * events pushed are sent all the same, from the next loop iteration (a
 * post), counted in kith_audit_timer_failures_total; a retry's wait that
 * finds no timer is not skipped (the batch is not sent again at once), and
 * the next event pushed sends the queue. */
static void test_no_timer_for_the_feed(void **state)
{
    (void) state;
    fix_t fx = {0}, *f = &fx;
    snprintf(f->ep, sizeof f->ep, "inproc://audit-feed-test-%d", ++s_n);
    router_loop_opts_t lo = {.max_timers = 16};
    f->loop = router_loop_new(&lo);
    assert_non_null(f->loop);
    f->metrics = router_metrics_new();
    char err[256] = "";
    router_broker_opts_t bo = {.loop = f->loop, .endpoint = f->ep, .heartbeat_ms = 100, .liveness = 50};
    f->b = router_broker_new(&bo, err, sizeof err);
    assert_non_null(f->b);
    router_audit_feed_opts_t fo = {.loop = f->loop, .broker = f->b, .metrics = f->metrics,
                                   .queue_max = 8, .retry_ms = 5};
    f->feed = router_audit_feed_new(&fo);
    assert_non_null(f->feed);
    static const s_mode_t script[] = {S_IO};
    s_fake_t *w = s_fake_start(f->ep, script, 1);

    uint64_t ids[16];
    size_t n = 0;
    while (n < 16 && (ids[n] = router_loop_timer_add(f->loop, 3600000, s_nop_timer, NULL)))
        n++;
    assert_true(n > 1 && n < 16); /* the broker holds some */
    s_push(f, 3);
    assert_int_equal(s_stats(f).timer_failures, 1);
    /* One timer for the test's own checks. */
    assert_int_equal(router_loop_timer_cancel(f->loop, ids[--n]), 0);
    test_loop_until(f->loop, s_taken, w, 5, 60000);
    /* The worker fails the batch; the retry's timer fails, and so does the
     * post's second try: the batch waits. */
    retries_t three = {f, 3};
    test_loop_until(f->loop, s_timer_failures, &three, 5, 60000);
    router_audit_feed_stats_t st = s_stats(f);
    assert_int_equal(st.queued, 3);
    assert_int_equal(atomic_load(&w->requests), 1);
    s_metric(f, "kith_audit_timer_failures_total 3");
    while (n)
        assert_int_equal(router_loop_timer_cancel(f->loop, ids[--n]), 0);
    s_push(f, 1);
    test_loop_until(f->loop, s_empty, f, 5, 60000);
    st = s_stats(f);
    assert_int_equal(st.appended, 4);
    assert_int_equal(st.timer_failures, 3);
    assert_int_equal(atomic_load(&w->requests), 2);
    s_fake_stop(&w);
    router_audit_feed_destroy(&f->feed);
    router_broker_destroy(&f->b);
    router_loop_destroy(&f->loop);
    router_metrics_destroy(&f->metrics);
}

typedef struct {
    fix_t *f;
    uint64_t pushed;
} pushed_t;

static bool s_pushed_and_empty(void *ud)
{
    pushed_t *p = ud;
    router_audit_feed_stats_t st = s_stats(p->f);
    return st.pushed >= p->pushed && st.queued == 0;
}

/* An event from outside held back by the rate limit while the loop has no
 * timer to sum the held-back ones up: the count still comes out as an
 * audit_suppressed record (WIRE §21.7), the timer tried again at the
 * feed's next step (here the reply to the batch of those let through).
 * Before, only the next event held back tried again, so with none the
 * record waited for a graceful stop, and was lost with a crash. */
static void test_suppressed_without_a_timer(void **state)
{
    (void) state;
    fix_t fx = {0}, *f = &fx;
    snprintf(f->ep, sizeof f->ep, "inproc://audit-feed-test-%d", ++s_n);
    router_loop_opts_t lo = {.max_timers = 16};
    f->loop = router_loop_new(&lo);
    assert_non_null(f->loop);
    f->metrics = router_metrics_new();
    char err[256] = "";
    router_broker_opts_t bo = {.loop = f->loop, .endpoint = f->ep, .heartbeat_ms = 100, .liveness = 50};
    f->b = router_broker_new(&bo, err, sizeof err);
    assert_non_null(f->b);
    router_audit_feed_opts_t fo = {.loop = f->loop, .broker = f->b, .metrics = f->metrics,
                                   .queue_max = 64, .retry_ms = 5};
    f->feed = router_audit_feed_new(&fo);
    assert_non_null(f->feed);
    s_fake_t *w = s_fake_start(f->ep, NULL, 0);

    uint64_t ids[16];
    size_t n = 0;
    while (n < 16 && (ids[n] = router_loop_timer_add(f->loop, 3600000, s_nop_timer, NULL)))
        n++;
    assert_true(n > 1 && n < 16);
    const unsigned burst = ROUTER_AUDIT_LIMIT_SOURCE_BURST;
    for (unsigned i = 0; i < burst + 1; i++)
        assert_int_equal(router_audit_feed_push_from(f->feed, "auth_failure", "192.0.2.1", "{}"), 0);
    router_audit_feed_stats_t st = s_stats(f);
    assert_int_equal(st.pushed, burst);
    assert_int_equal(st.suppressed, 1);
    assert_true(st.timer_failures >= 2); /* the send's and the sum's */
    while (n)
        assert_int_equal(router_loop_timer_cancel(f->loop, ids[--n]), 0);
    /* The burst goes, then (10 s on) the record of the one held back. */
    pushed_t want = {f, burst + 1};
    test_loop_until(f->loop, s_pushed_and_empty, &want, 10, 60000);
    st = s_stats(f);
    assert_int_equal(st.appended, burst + 1);
    assert_int_equal(atomic_load(&w->events), burst + 1);
    s_fake_stop(&w);
    router_audit_feed_destroy(&f->feed);
    router_broker_destroy(&f->b);
    router_loop_destroy(&f->loop);
    router_metrics_destroy(&f->metrics);
}

static bool s_no_flight(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.in_flight == 0;
}

static bool s_in_flight(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.in_flight == 1;
}

static void s_count_drained(void *ud)
{
    (*(int *) ud)++;
}

typedef struct {
    zsock_t *raw;
    zmsg_t *req;
} held_t;

/* The batch's REQUEST came to the raw worker: kept, for its address. */
static bool s_request_came(void *ud)
{
    held_t *h = ud;
    zmsg_t *m;
    while (!h->req && (m = zmsg_recv_nowait(h->raw))) {
        zframe_t *cmd = zmsg_first(m);
        cmd = zmsg_next(m);
        cmd = zmsg_next(m);
        if (cmd && zframe_size(cmd) == 1 && zframe_data(cmd)[0] == 0x02)
            h->req = m;
        else
            zmsg_destroy(&m);
    }
    return h->req != NULL;
}

/* The feed destroyed with everything still pending: a batch a worker holds
 * and has not answered, a graceful stop waiting for it (its timer), events
 * held back by the rate limit (their timer). The stop's callback never
 * runs once the feed is gone, the worker's late FINAL reaches nothing (the
 * request was cancelled: no use after free), and nothing leaks. */
static void test_destroy_with_everything_pending(void **state)
{
    fix_t *f = *state;
    zsock_t *raw = zsock_new_dealer(f->ep);
    assert_non_null(raw);
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "MDPW02");
    zmsg_addmem(m, &(uint8_t) {0x01}, 1);
    zmsg_addstr(m, ROUTER_AUDIT_SERVICE);
    assert_int_equal(zmsg_send(&m, raw), 0);
    /* The queue holds 8 here: the 9th and 10th are dropped (counted). */
    for (unsigned i = 0; i < ROUTER_AUDIT_LIMIT_SOURCE_BURST + 1; i++)
        (void) router_audit_feed_push_from(f->feed, "auth_failure", "192.0.2.7", "{}");
    assert_int_equal(s_stats(f).suppressed, 1);
    test_loop_until(f->loop, s_in_flight, f->b, 5, 60000);
    held_t h = {raw, NULL};
    test_loop_until(f->loop, s_request_came, &h, 5, 60000);
    int drained = 0;
    router_audit_feed_drain(f->feed, s_count_drained, &drained, 600000);
    assert_int_equal(drained, 0);
    router_audit_feed_destroy(&f->feed);
    router_audit_feed_destroy(&f->feed);
    assert_null(f->feed);
    /* The worker answers now: the broker drops it (nobody's any more). */
    zmsg_t *rep = zmsg_new();
    zmsg_addmem(rep, "", 0);
    zmsg_addstr(rep, "MDPW02");
    zmsg_addmem(rep, &(uint8_t) {0x04}, 1);
    zframe_t *addr = zmsg_first(h.req);
    for (int i = 0; i < 3; i++)
        addr = zmsg_next(h.req);
    zmsg_addmem(rep, zframe_data(addr), zframe_size(addr));
    zmsg_addmem(rep, "", 0);
    zmsg_addstr(rep, "late");
    assert_int_equal(zmsg_send(&rep, raw), 0);
    zmsg_destroy(&h.req);
    test_loop_until(f->loop, s_no_flight, f->b, 5, 60000);
    assert_int_equal(drained, 0);
    zsock_destroy(&raw);
}

/* bad_request is kith's own bug, not the disk's: that batch is dropped
 * (counted, never sent again, which would loop) and the feed goes on. */
static void test_bad_request_drops_the_batch(void **state)
{
    fix_t *f = *state;
    static const s_mode_t script[] = {S_BAD_REQUEST};
    s_fake_t *w = s_fake_start(f->ep, script, 1);
    s_push(f, 2);
    test_loop_until(f->loop, s_empty, f, 5, 60000);
    router_audit_feed_stats_t st = s_stats(f);
    assert_int_equal(st.dropped, 2);
    assert_int_equal(st.appended, 0);
    s_push(f, 1);
    test_loop_until(f->loop, s_empty, f, 5, 60000);
    st = s_stats(f);
    assert_int_equal(st.appended, 1);
    assert_int_equal(st.retries, 0);
    s_fake_stop(&w);
}

/* A worker that leaves holding the batch: the batch stays queued and is
 * sent again, to the next worker, once. */
static void test_worker_leaves_holding_a_batch(void **state)
{
    fix_t *f = *state;
    static const s_mode_t script[] = {S_LEAVE};
    s_fake_t *w = s_fake_start(f->ep, script, 1);
    s_push(f, 2);
    test_loop_until(f->loop, s_taken, w, 5, 60000);
    s_fake_stop(&w); /* DISCONNECT while holding: the broker fails the batch */
    retries_t one = {f, 1};
    test_loop_until(f->loop, s_retried, &one, 5, 60000);
    assert_int_equal(s_stats(f).queued, 2);
    s_fake_t *w2 = s_fake_start(f->ep, NULL, 0);
    test_loop_until(f->loop, s_empty, f, 5, 60000);
    router_audit_feed_stats_t st = s_stats(f);
    assert_int_equal(st.appended, 2);
    assert_int_equal(atomic_load(&w2->events), 2);
    s_fake_stop(&w2);
}

/* Details: every kind of value, a NULL string, and one that outgrows the
 * buffer is cut to {"truncated":true}. */
static void test_details(void **state)
{
    (void) state;
    router_audit_detail_t d;
    router_audit_detail_init(&d);
    router_audit_detail_str(&d, "a", NULL);
    router_audit_detail_strn(&d, "b", "xyz", 2);
    router_audit_detail_u64(&d, "n", 42);
    router_audit_detail_bool(&d, "t", true);
    router_audit_detail_bool(&d, "f", false);
    router_audit_detail_str(&d, "c", "\x01\x7f");
    assert_string_equal(router_audit_detail_end(&d),
                        "{\"a\":\"\",\"b\":\"xy\",\"n\":42,\"t\":true,\"f\":false,\"c\":\"\\u0001\\u007f\"}");
    router_audit_detail_init(&d);
    static char big[ROUTER_AUDIT_DETAIL_MAX];
    memset(big, 'x', sizeof big - 1);
    router_audit_detail_str(&d, "big", big);
    router_audit_detail_u64(&d, "after", 1);
    assert_string_equal(router_audit_detail_end(&d), "{\"truncated\":true}");
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_feed),
        T(test_push_refusals),
        T(test_new_without_memory),
        T(test_failed_batches_are_sent_again),
        T(test_appended_counts_that_differ),
        cmocka_unit_test(test_no_timer_for_the_feed),
        cmocka_unit_test(test_suppressed_without_a_timer),
        T(test_bad_request_drops_the_batch),
        T(test_worker_leaves_holding_a_batch),
        T(test_destroy_with_everything_pending),
        cmocka_unit_test(test_details),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
