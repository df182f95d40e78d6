/* tests/audit_worker_test.c — the audit worker behind a real broker on a
 * real loop, fed by router/workers/audit_feed: events pushed on the loop
 * become records (batched, one request in flight), query and verify answer
 * through the broker, events wait while no worker is up, a full queue is
 * counted, an injected fsync failure is retried without duplicates, and
 * the worker answers bad bodies with a typed audit_error; a start refused
 * (key, log, endpoint, each allocation), requests handled with each
 * allocation failing (no_memory, never a batch dropped or written twice,
 * never a verdict), and a batch with a refused event failing on the disk. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "audit/chain.h"
#include "audit/worker.h"
#include "proto/audit_msg.h"
#include "proto/utf8.h"
#include "router/net/loop.h"
#include "router/workers/audit_feed.h"
#include "router/workers/broker.h"
#include "loop_until.h"

static int s_n;

typedef struct {
    char dir[64];
    char log[128];
    char ep[64];
    router_loop_t *loop;
    router_broker_t *b;
    router_audit_feed_t *feed;
    router_metrics_t *metrics;
    atomic_int fail_syncs; /* fsyncs still to fail */
} fix_t;

static int s_sync(int fd, void *ud)
{
    fix_t *f = ud;
    if (atomic_load(&f->fail_syncs) > 0) {
        atomic_fetch_sub(&f->fail_syncs, 1);
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static int s_setup(void **state)
{
    fix_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kith-auditw-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->log, sizeof f->log, "%s/audit.log", f->dir);
    snprintf(f->ep, sizeof f->ep, "inproc://audit-test-%d", ++s_n);
    f->loop = router_loop_new(NULL);
    f->metrics = router_metrics_new();
    char err[256] = "";
    router_broker_opts_t bo = {.loop = f->loop, .endpoint = f->ep, .heartbeat_ms = 100, .liveness = 50};
    f->b = router_broker_new(&bo, err, sizeof err);
    if (!f->b) {
        fprintf(stderr, "broker: %s\n", err);
        return -1;
    }
    router_audit_feed_opts_t fo = {.loop = f->loop, .broker = f->b, .metrics = f->metrics,
                                   .queue_max = 64, .retry_ms = 20};
    f->feed = router_audit_feed_new(&fo);
    *state = f;
    return f->loop && f->feed ? 0 : -1;
}

static int s_teardown(void **state)
{
    fix_t *f = *state;
    router_audit_feed_destroy(&f->feed);
    router_broker_destroy(&f->b);
    router_loop_destroy(&f->loop);
    router_metrics_destroy(&f->metrics);
    char p[160];
    snprintf(p, sizeof p, "%s.head", f->log);
    unlink(p);
    unlink(f->log);
    rmdir(f->dir);
    free(f);
    return 0;
}

static audit_worker_t *s_worker(fix_t *f)
{
    char err[256] = "";
    audit_worker_opts_t o = {.path = f->log, .endpoint = f->ep, .heartbeat_ms = 100, .liveness = 50,
                             .sync = s_sync, .sync_ud = f};
    audit_worker_t *w = audit_worker_start(&o, err, sizeof err);
    if (!w)
        fprintf(stderr, "worker: %s\n", err);
    assert_non_null(w);
    return w;
}

/* ------------------------------------------------------------ the loop */

/* Runs the loop until until(ud) holds (checked every 5 ms), at most 60 s. */
static void s_run(fix_t *f, bool (*until)(void *), void *ud)
{
    test_loop_until(f->loop, until, ud, 5, 60000);
}

typedef struct {
    fix_t *f;
    uint64_t n;
} appended_t;

static bool s_appended(void *ud)
{
    appended_t *a = ud;
    router_audit_feed_stats_t st;
    router_audit_feed_stats(a->f->feed, &st);
    return st.appended >= a->n;
}

static void s_push(fix_t *f, int n, const char *type)
{
    for (int i = 0; i < n; i++) {
        router_audit_detail_t d;
        router_audit_detail_init(&d);
        router_audit_detail_u64(&d, "i", (uint64_t) i);
        router_audit_detail_str(&d, "who", "peer \"x\"\n\xff");
        assert_int_equal(router_audit_feed_push(f->feed, type, router_audit_detail_end(&d)), 0);
    }
}

/* One request through the broker, answered on the loop. */
typedef struct {
    int done;
    proto_audit_msg_t reply;
} ask_t;

static void s_on_reply(int kind, const uint8_t *body, size_t len, void *ud)
{
    ask_t *a = ud;
    if (kind == 1) {
        proto_audit_err_t e;
        assert_int_equal(proto_audit_msg_decode(body, len, &a->reply, &e), 0);
    }
    a->done = kind == 0 ? a->done : (kind == 1 ? 1 : -1);
}

static bool s_asked(void *ud)
{
    return ((ask_t *) ud)->done != 0;
}

static void s_ask(fix_t *f, const proto_audit_msg_t *req, ask_t *a)
{
    uint8_t *body;
    size_t len;
    proto_audit_err_t e;
    memset(a, 0, sizeof *a);
    assert_int_equal(proto_audit_msg_encode(req, &body, &len, &e), 0);
    assert_true(router_broker_request(f->b, ROUTER_AUDIT_SERVICE, body, len, s_on_reply, a) > 0);
    free(body);
    s_run(f, s_asked, a);
    assert_int_equal(a->done, 1);
}

/* ------------------------------------------------------------ tests */

static void test_feed_to_records(void **state)
{
    fix_t *f = *state;
    audit_worker_t *w = s_worker(f);
    s_push(f, 10, "auth_failure");
    s_run(f, s_appended, &(appended_t){f, 10});
    s_push(f, 5, "pair");
    s_run(f, s_appended, &(appended_t){f, 15});
    router_audit_feed_stats_t st;
    router_audit_feed_stats(f->feed, &st);
    assert_int_equal(st.appended, 15);
    assert_int_equal(st.queued, 0);
    assert_true(st.batches >= 2 && st.batches <= 15);

    proto_audit_msg_t q = {.kind = PROTO_AUDIT_QUERY, .limit = 3, .event_type = "auth_failure",
                           .event_type_len = 12};
    ask_t a;
    s_ask(f, &q, &a);
    assert_int_equal(a.reply.kind, PROTO_AUDIT_RECORDS);
    assert_int_equal(a.reply.n_records, 3);
    assert_memory_equal(a.reply.records[0].p, "{\"seq\":8,", 9);
    /* peer input is escaped: quotes, the newline, and the bad byte as '?' */
    assert_non_null(strstr(a.reply.records[0].p, "\"who\":\"peer \\\"x\\\"\\n?\""));
    proto_audit_msg_clear(&a.reply);

    proto_audit_msg_t v = {.kind = PROTO_AUDIT_VERIFY};
    s_ask(f, &v, &a);
    assert_int_equal(a.reply.kind, PROTO_AUDIT_VERIFIED);
    assert_true(a.reply.ok);
    assert_int_equal(a.reply.checked, 15);
    proto_audit_msg_clear(&a.reply);
    audit_worker_stop(&w);
    audit_worker_stop(&w);

    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 15);
}

static void test_waits_for_worker_and_counts_drops(void **state)
{
    fix_t *f = *state;
    /* No worker: events wait; past the queue's 64 they are counted. */
    s_push(f, 64, "trust_changed");
    assert_int_equal(router_audit_feed_push(f->feed, "trust_changed", "{}"), -1);
    router_audit_feed_stats_t st;
    router_audit_feed_stats(f->feed, &st);
    assert_int_equal(st.dropped, 1);
    char text[8192];
    assert_true(router_metrics_render(f->metrics, text, sizeof text) > 0);
    assert_non_null(strstr(text, "kith_audit_dropped_total 1"));
    /* The worker comes: all 64 are written, once. */
    audit_worker_t *w = s_worker(f);
    s_run(f, s_appended, &(appended_t){f, 64});
    audit_worker_stop(&w);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 64);
}

static void s_on_drained(void *ud)
{
    (*(int *) ud)++;
}

static bool s_drained(void *ud)
{
    return *(int *) ud > 0;
}

/* A stop waits for the queue, the rate limit's counts included: without a
 * worker the wait ends at its timeout; with one, once all is written. */
static void test_drain_at_stop(void **state)
{
    fix_t *f = *state;
    int called = 0;
    router_audit_feed_drain(NULL, s_on_drained, &called, 10);
    assert_int_equal(called, 1);
    called = 0;
    router_audit_feed_drain(f->feed, s_on_drained, &called, 10); /* nothing queued */
    assert_int_equal(called, 1);

    s_push(f, 3, "trust_changed");
    for (int i = 0; i < 12; i++)
        assert_int_equal(router_audit_feed_push_from(f->feed, "auth_failure", "10.9.9.9", "{}"), 0);
    router_audit_feed_stats_t st;
    router_audit_feed_stats(f->feed, &st);
    assert_int_equal(st.suppressed, 2);
    assert_int_equal(st.queued, 13);
    called = 0;
    router_audit_feed_drain(f->feed, s_on_drained, &called, 100);
    assert_int_equal(called, 0);
    router_audit_feed_stats(f->feed, &st);
    assert_int_equal(st.queued, 14); /* the count, queued as audit_suppressed */
    s_run(f, s_drained, &called);   /* no worker: the wait ends at its timeout */
    assert_int_equal(called, 1);

    audit_worker_t *w = s_worker(f);
    called = 0;
    router_audit_feed_drain(f->feed, s_on_drained, &called, 60000);
    s_run(f, s_drained, &called);
    router_audit_feed_stats(f->feed, &st);
    assert_int_equal(st.appended, 14);
    assert_int_equal(called, 1);
    proto_audit_msg_t q = {.kind = PROTO_AUDIT_QUERY, .limit = 5, .event_type = "audit_suppressed",
                           .event_type_len = 16};
    ask_t a;
    s_ask(f, &q, &a);
    assert_int_equal(a.reply.n_records, 1);
    assert_non_null(strstr(a.reply.records[0].p, "\"client\":\"10.9.9.9\",\"count\":2,"));
    proto_audit_msg_clear(&a.reply);
    audit_worker_stop(&w);
}

static void test_fsync_failure_retried(void **state)
{
    fix_t *f = *state;
    audit_worker_t *w = s_worker(f);
    atomic_store(&f->fail_syncs, 2); /* the first batch fails twice */
    s_push(f, 7, "admin");
    s_run(f, s_appended, &(appended_t){f, 7});
    router_audit_feed_stats_t st;
    router_audit_feed_stats(f->feed, &st);
    assert_true(st.retries >= 2);
    assert_int_equal(st.appended, 7);
    audit_worker_stop(&w);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 7); /* nothing twice */
}

static void test_handle_bad_bodies(void **state)
{
    fix_t *f = *state;
    audit_chain_opts_t co = {.path = f->log};
    audit_error_t ce;
    audit_chain_t *c = audit_chain_open(&co, &ce);
    assert_non_null(c);
    size_t len;
    proto_audit_msg_t m;
    proto_audit_err_t e;
    uint8_t *out = audit_worker_handle(c, NULL, 0, (const uint8_t *) "\xa0", 1, &len);
    assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
    assert_int_equal(m.kind, PROTO_AUDIT_ERROR);
    assert_string_equal(m.code, "bad_request");
    proto_audit_msg_clear(&m);
    free(out);
    /* A detail that is not an object is stored as audit_event_refused. */
    proto_audit_event_t ev[2] = {
        {.time_ms = 1, .type = "pair", .type_len = 4, .detail = "{}", .detail_len = 2},
        {.time_ms = 2, .type = "pair", .type_len = 4, .detail = "[1]", .detail_len = 3},
    };
    proto_audit_msg_t req = {.kind = PROTO_AUDIT_APPEND, .events = ev, .n_events = 2};
    uint8_t *body;
    size_t blen;
    assert_int_equal(proto_audit_msg_encode(&req, &body, &blen, &e), 0);
    out = audit_worker_handle(c, NULL, 0, body, blen, &len);
    free(body);
    assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
    assert_int_equal(m.kind, PROTO_AUDIT_APPENDED);
    assert_int_equal(m.first_seq, 1);
    assert_int_equal(m.count, 2);
    proto_audit_msg_clear(&m);
    free(out);
    audit_lines_t l;
    audit_query_t q = {.limit = 10, .type = "audit_event_refused"};
    assert_int_equal(audit_chain_query(f->log, &q, &l, &ce), 0);
    assert_int_equal(l.n, 1);
    audit_lines_free(&l);

    /* A reply is not a request. */
    proto_audit_text_t rec = {"{}", 2};
    req = (proto_audit_msg_t){.kind = PROTO_AUDIT_RECORDS, .records = &rec, .n_records = 1};
    assert_int_equal(proto_audit_msg_encode(&req, &body, &blen, &e), 0);
    out = audit_worker_handle(c, NULL, 0, body, blen, &len);
    free(body);
    assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
    assert_int_equal(m.kind, PROTO_AUDIT_ERROR);
    assert_string_equal(m.code, "bad_request");
    assert_string_equal(m.reason, "a reply, not a request");
    proto_audit_msg_clear(&m);
    free(out);

    /* A query that cannot read the log (a directory in its place now)
     * is an `io` audit_error naming it; the verify says io too. */
    char aside[160];
    snprintf(aside, sizeof aside, "%s.aside", f->log);
    assert_int_equal(rename(f->log, aside), 0);
    assert_int_equal(mkdir(f->log, 0700), 0);
    req = (proto_audit_msg_t){.kind = PROTO_AUDIT_QUERY, .limit = 5};
    assert_int_equal(proto_audit_msg_encode(&req, &body, &blen, &e), 0);
    out = audit_worker_handle(c, NULL, 0, body, blen, &len);
    free(body);
    assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
    assert_int_equal(m.kind, PROTO_AUDIT_ERROR);
    assert_string_equal(m.code, "io");
    assert_non_null(strstr(m.reason, "cannot read"));
    proto_audit_msg_clear(&m);
    free(out);
    req = (proto_audit_msg_t){.kind = PROTO_AUDIT_VERIFY};
    assert_int_equal(proto_audit_msg_encode(&req, &body, &blen, &e), 0);
    out = audit_worker_handle(c, NULL, 0, body, blen, &len);
    free(body);
    assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
    assert_int_equal(m.kind, PROTO_AUDIT_VERIFIED);
    assert_false(m.ok);
    assert_non_null(strstr(m.reason, "io: "));
    proto_audit_msg_clear(&m);
    free(out);
    assert_int_equal(rmdir(f->log), 0);
    assert_int_equal(rename(aside, f->log), 0);
    audit_chain_close(&c);
}

/* What a start refuses: a key variable that is not set, a log that cannot
 * be opened, an endpoint the worker cannot connect to; and a start with
 * each of its allocations failing in turn. Each says why, and leaks
 * nothing (LSan). */
static void test_start_failures(void **state)
{
    fix_t *f = *state;
    char err[256] = "";
    unsetenv("KITH_W2C_NO_SUCH_KEY");
    audit_worker_opts_t o = {.path = f->log, .endpoint = f->ep, .heartbeat_ms = 100, .liveness = 50,
                             .hmac_key_env = "KITH_W2C_NO_SUCH_KEY"};
    assert_null(audit_worker_start(&o, err, sizeof err));
    assert_non_null(strstr(err, "not set"));
    char missing[192];
    snprintf(missing, sizeof missing, "%s/no/such/audit.log", f->dir);
    o = (audit_worker_opts_t){.path = missing, .endpoint = f->ep};
    assert_null(audit_worker_start(&o, err, sizeof err));
    assert_non_null(strstr(err, missing));
    o = (audit_worker_opts_t){.path = f->log, .endpoint = "nonsense://x"};
    err[0] = '\0';
    assert_null(audit_worker_start(&o, err, sizeof err));
    assert_non_null(strstr(err, "audit worker: "));
    o = (audit_worker_opts_t){.path = f->log, .endpoint = f->ep, .heartbeat_ms = 100, .liveness = 50};
    bool made = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !made; i++) {
        err[0] = '\0';
        alloc_fail_arm(i);
        audit_worker_t *w = audit_worker_start(&o, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!w)
            assert_true(failed && err[0]);
        made = w && !failed;
        audit_worker_stop(&w);
    }
    assert_true(made);
}

static uint8_t *s_body(const proto_audit_msg_t *req, size_t *len)
{
    uint8_t *body;
    proto_audit_err_t e;
    assert_int_equal(proto_audit_msg_encode(req, &body, len, &e), 0);
    return body;
}

/* Requests handled with each allocation failing in turn: each answer is
 * the right reply, a no_memory audit_error or NULL (the thread then says
 * no_memory), and the log holds exactly the records acknowledged. */
static void test_handle_without_memory(void **state)
{
    fix_t *f = *state;
    audit_chain_opts_t co = {.path = f->log};
    audit_error_t ce;
    audit_chain_t *c = audit_chain_open(&co, &ce);
    assert_non_null(c);
    proto_audit_event_t ev[2] = {
        {.time_ms = 1, .type = "pair", .type_len = 4, .detail = "{}", .detail_len = 2},
        {.time_ms = 2, .type = "pair", .type_len = 4, .detail = "[1]", .detail_len = 3},
    };
    proto_audit_msg_t reqs[3] = {
        {.kind = PROTO_AUDIT_APPEND, .events = ev, .n_events = 2},
        {.kind = PROTO_AUDIT_QUERY, .limit = 10},
        {.kind = PROTO_AUDIT_VERIFY},
    };
    uint64_t acked = 0;
    for (int k = 0; k < 3; k++) {
        size_t blen;
        uint8_t *body = s_body(&reqs[k], &blen);
        bool done = false;
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !done; i++) {
            size_t len = 0;
            alloc_fail_arm(i);
            uint8_t *out = audit_worker_handle(c, NULL, 0, body, blen, &len);
            done = alloc_fail_disarm() == 0;
            if (!out) {
                assert_false(done);
                continue;
            }
            proto_audit_msg_t m;
            proto_audit_err_t e;
            assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
            free(out);
            if (m.kind == PROTO_AUDIT_ERROR) {
                assert_false(done);
                assert_string_equal(m.code, "no_memory");
            } else if (k == 0) {
                assert_int_equal(m.kind, PROTO_AUDIT_APPENDED);
                assert_int_equal(m.first_seq, acked + 1);
                acked += m.count;
            } else {
                assert_int_equal(m.kind, k == 1 ? PROTO_AUDIT_RECORDS : PROTO_AUDIT_VERIFIED);
                if (k == 1)
                    assert_int_equal(m.n_records, acked);
                else
                    assert_true(m.ok); /* never a verdict it could not reach */
            }
            proto_audit_msg_clear(&m);
        }
        assert_true(done);
        free(body);
    }
    audit_chain_close(&c);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, acked);
    assert_true(acked >= 2);
}

/* A batch with a refused event whose append then fails on the disk: an
 * `io` audit_error (nothing acknowledged, nothing left in the log), its
 * message cut to the reply's bound on a UTF-8 boundary (the log's path is
 * long and not ASCII); the next batch goes in as record 1. */
static void test_refused_event_then_io(void **state)
{
    fix_t *f = *state;
    char sub[400], log[460], head[470];
    char name[241];
    for (int i = 0; i < 120; i++)
        memcpy(name + 2 * i, "\xc3\xa9", 2); /* é */
    name[240] = '\0';
    snprintf(sub, sizeof sub, "%s/%s", f->dir, name);
    snprintf(log, sizeof log, "%s/audit.log", sub);
    snprintf(head, sizeof head, "%s.head", log);
    assert_int_equal(mkdir(sub, 0700), 0);
    audit_chain_opts_t co = {.path = log, .sync = s_sync, .sync_ud = f};
    audit_error_t ce;
    audit_chain_t *c = audit_chain_open(&co, &ce);
    assert_non_null(c);
    proto_audit_event_t ev[2] = {
        {.time_ms = 1, .type = "pair", .type_len = 4, .detail = "{}", .detail_len = 2},
        {.time_ms = 2, .type = "pair", .type_len = 4, .detail = "\"x\"", .detail_len = 3},
    };
    proto_audit_msg_t req = {.kind = PROTO_AUDIT_APPEND, .events = ev, .n_events = 2};
    size_t blen, len;
    uint8_t *body = s_body(&req, &blen);
    atomic_store(&f->fail_syncs, 1);
    uint8_t *out = audit_worker_handle(c, NULL, 0, body, blen, &len);
    assert_int_equal(atomic_load(&f->fail_syncs), 0);
    proto_audit_msg_t m;
    proto_audit_err_t e;
    assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
    free(out);
    assert_int_equal(m.kind, PROTO_AUDIT_ERROR);
    assert_string_equal(m.code, "io");
    assert_true(m.reason_len > 0 && m.reason_len <= PROTO_AUDIT_REASON_MAX);
    assert_true(proto_utf8_valid((const uint8_t *) m.reason, m.reason_len));
    assert_memory_equal(m.reason, "cannot fsync ", 13);
    proto_audit_msg_clear(&m);
    assert_int_equal(audit_chain_last_seq(c), 0);
    out = audit_worker_handle(c, NULL, 0, body, blen, &len);
    free(body);
    assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
    free(out);
    assert_int_equal(m.kind, PROTO_AUDIT_APPENDED);
    assert_int_equal(m.first_seq, 1);
    assert_int_equal(m.count, 2);
    proto_audit_msg_clear(&m);
    audit_chain_close(&c);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(log, NULL, &r), 0);
    assert_int_equal(r.records, 2);
    assert_int_equal(unlink(head), 0);
    assert_int_equal(unlink(log), 0);
    assert_int_equal(rmdir(sub), 0);
}

/* A batch that finds the log due for rotation starts one seq later (the
 * new log's audit_rotated record comes first): the reply says so. */
static void test_appended_after_rotation(void **state)
{
    fix_t *f = *state;
    audit_chain_opts_t co = {.path = f->log, .rotate_bytes = 100, .keep = 2};
    audit_error_t ce;
    audit_chain_t *c = audit_chain_open(&co, &ce);
    assert_non_null(c);
    proto_audit_event_t ev = {.time_ms = 1, .type = "pair", .type_len = 4, .detail = "{}",
                              .detail_len = 2};
    proto_audit_msg_t req = {.kind = PROTO_AUDIT_APPEND, .events = &ev, .n_events = 1};
    size_t blen, len;
    uint8_t *body = s_body(&req, &blen);
    uint64_t want[2] = {1, 3}; /* 2 is the audit_rotated record */
    for (int i = 0; i < 2; i++) {
        uint8_t *out = audit_worker_handle(c, NULL, 0, body, blen, &len);
        proto_audit_msg_t m;
        proto_audit_err_t e;
        assert_int_equal(proto_audit_msg_decode(out, len, &m, &e), 0);
        free(out);
        assert_int_equal(m.kind, PROTO_AUDIT_APPENDED);
        assert_int_equal(m.first_seq, want[i]);
        assert_int_equal(m.count, 1);
        proto_audit_msg_clear(&m);
    }
    free(body);
    audit_chain_close(&c);
    audit_verify_result_t r;
    assert_int_equal(audit_chain_verify(f->log, NULL, &r), 0);
    assert_int_equal(r.records, 3);
    assert_int_equal(r.files, 2);
    char rotated[200];
    snprintf(rotated, sizeof rotated, "%s.%020d", f->log, 1);
    assert_int_equal(unlink(rotated), 0);
    snprintf(rotated, sizeof rotated, "%s.%020d.head", f->log, 1);
    assert_int_equal(unlink(rotated), 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
#define T(fn) cmocka_unit_test_setup_teardown(fn, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        T(test_feed_to_records),
        T(test_waits_for_worker_and_counts_drops),
        T(test_fsync_failure_retried),
        T(test_drain_at_stop),
        T(test_handle_bad_bodies),
        T(test_start_failures),
        T(test_handle_without_memory),
        T(test_refused_event_then_io),
        T(test_appended_after_rotation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
