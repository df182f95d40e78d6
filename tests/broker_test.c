/* tests/broker_test.c — the embedded MDP broker on a real loop with real
 * workers (router_mdp_worker threads, and raw DEALER sockets playing broken
 * ones): requests answered with partials and a final, least-recently-used
 * dispatch, further requests to the holder, a silent worker declared dead
 * and its request failed (kind -1) with the next going to a live worker,
 * late replies dropped and counted, the bounded queue, cancel, and CURVE on
 * a non-loopback endpoint admitting only authorized keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <czmq.h>

#include "alloc_fail.h"
#include "have_ipv6.h"
#include "loop_until.h"
#include "router/clock.h"
#include "router/log.h"
#include "router/net/loop.h"
#include "router/state/home.h"
#include "router/workers/broker.h"
#include "router/workers/mdp_worker.h"

static int s_n;

/* ------------------------------------------------------------ echo workers */

typedef struct {
    char endpoint[128];
    const char *server_key;
    const char *cert_path;
    pthread_t thread;
    router_mdp_worker_t *w;
    atomic_int served;
    int heartbeat_ms;
} echo_t;

/* Answers each request "p:<body>" then "f:<body>"; a body "hold" waits for
 * one more request (the holder's) and answers "f:<that>". */
static void *s_echo_main(void *arg)
{
    echo_t *e = arg;
    uint8_t *body;
    size_t len;
    while (router_mdp_worker_recv(e->w, &body, &len, -1) == 1) {
        char out[256];
        if (len == 4 && memcmp(body, "hold", 4) == 0) {
            free(body);
            if (router_mdp_worker_recv(e->w, &body, &len, -1) != 1)
                break;
        }
        int n = snprintf(out, sizeof out, "p:%.*s", (int) len, body);
        (void) router_mdp_worker_partial(e->w, (uint8_t *) out, (size_t) n);
        out[0] = 'f';
        (void) router_mdp_worker_final(e->w, (uint8_t *) out, (size_t) n);
        free(body);
        atomic_fetch_add(&e->served, 1);
    }
    return NULL;
}

static echo_t *s_echo_start(const char *ep, const char *server_key, const char *cert)
{
    echo_t *e = calloc(1, sizeof *e);
    snprintf(e->endpoint, sizeof e->endpoint, "%s", ep);
    char err[256] = "";
    router_mdp_worker_opts_t o = {.endpoint = e->endpoint, .service = "kith.test",
                                  .heartbeat_ms = 100, .liveness = 50,
                                  .curve_server_key = server_key, .curve_cert_path = cert};
    e->w = router_mdp_worker_new(&o, err, sizeof err);
    if (!e->w)
        fprintf(stderr, "worker: %s\n", err);
    assert_non_null(e->w);
    assert_int_equal(pthread_create(&e->thread, NULL, s_echo_main, e), 0);
    return e;
}

static void s_echo_stop(echo_t **ep)
{
    echo_t *e = *ep;
    router_mdp_worker_interrupt(e->w);
    pthread_join(e->thread, NULL);
    router_mdp_worker_destroy(&e->w);
    free(e);
    *ep = NULL;
}

/* ------------------------------------------------------------ the loop */

typedef struct {
    router_loop_t *loop;
    router_broker_t *b;
} runner_t;

/* Runs the loop until until(ud) holds (checked every 10 ms), at most 60 s. */
static void s_run(runner_t *r, bool (*until)(void *), void *ud)
{
    test_loop_until(r->loop, until, ud, 10, 60000);
}

/* Heartbeats of the broker under test: generous by default, so a loaded
 * machine never expires a live worker; short in the dead-worker test. */
static uint32_t s_hb = 100, s_live = 30;
/* The workers.listen bounds of the broker under test (0: the defaults). */
static uint32_t s_pending_max, s_per_source_max, s_ready_ms;
/* The workers.listen share of workers of the next s_setup (0: the default). */
static uint32_t s_listen_workers_max;

static void s_setup(runner_t *r, const char *listen, const char *home, size_t queue_max,
                    char *ep, size_t epcap)
{
    snprintf(ep, epcap, "inproc://broker-test-%d", ++s_n);
    r->loop = router_loop_new(NULL);
    assert_non_null(r->loop);
    char err[256] = "";
    router_broker_opts_t o = {.loop = r->loop, .endpoint = ep, .listen = listen, .home = home,
                              .heartbeat_ms = s_hb, .liveness = s_live,
                              .queue_max = queue_max, .pending_max = s_pending_max,
                              .pending_per_source_max = s_per_source_max,
                              .ready_timeout_ms = s_ready_ms,
                              .listen_workers_max = s_listen_workers_max};
    r->b = router_broker_new(&o, err, sizeof err);
    if (!r->b)
        fprintf(stderr, "broker: %s\n", err);
    assert_non_null(r->b);
}

/* The workers.listen bounds of the next s_setup (s_teardown resets them). */
static void s_listen_bounds(uint32_t pending_max, uint32_t per_source_max, uint32_t ready_ms)
{
    s_pending_max = pending_max;
    s_per_source_max = per_source_max;
    s_ready_ms = ready_ms;
}

static void s_teardown(runner_t *r)
{
    s_listen_bounds(0, 0, 0);
    s_listen_workers_max = 0;
    router_broker_destroy(&r->b);
    router_broker_destroy(&r->b);
    router_loop_destroy(&r->loop);
}

/* Removes a test's temporary directory and what it holds. */
static void s_rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A worker certificate at HOME/good.cert (both halves), its public half
 * in the broker's workers/authorized/: a key the broker lets in. */
static void s_authorized_cert(const char *home, char *path, size_t cap)
{
    zcert_t *good = zcert_new();
    char pub_path[512];
    snprintf(path, cap, "%s/good.cert", home);
    snprintf(pub_path, sizeof pub_path, "%s/workers/authorized/good.cert", home);
    assert_int_equal(zcert_save(good, path), 0);
    assert_int_equal(zcert_save_public(good, pub_path), 0);
    zcert_destroy(&good);
}

/* ------------------------------------------------------------ replies */

typedef struct {
    int partials, finals, lost;
    char last[256];
} reply_t;

static void s_on_reply(int kind, const uint8_t *body, size_t len, void *ud)
{
    reply_t *r = ud;
    if (kind == 0)
        r->partials++;
    else if (kind == 1)
        r->finals++;
    else
        r->lost++;
    if (body)
        snprintf(r->last, sizeof r->last, "%.*s", (int) len, body);
}

typedef struct {
    reply_t *replies;
    int n;
} all_t;

static bool s_all_done(void *ud)
{
    all_t *a = ud;
    for (int i = 0; i < a->n; i++)
        if (a->replies[i].finals + a->replies[i].lost == 0)
            return false;
    return true;
}

static bool s_dispatched(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.in_flight == 1;
}

static bool s_workers_2(void *ud)
{
    return router_broker_workers(ud, "kith.test") == 2;
}

static void test_round_trip_lru(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    echo_t *w1 = s_echo_start(ep, NULL, NULL), *w2 = s_echo_start(ep, NULL, NULL);
    s_run(&r, s_workers_2, r.b);

    enum { N = 40 };
    reply_t rep[N] = {0};
    for (int i = 0; i < N; i++) {
        char body[16];
        int n = snprintf(body, sizeof body, "r%d", i);
        assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) body, (size_t) n,
                                          s_on_reply, &rep[i]) > 0);
    }
    all_t all = {rep, N};
    s_run(&r, s_all_done, &all);
    for (int i = 0; i < N; i++) {
        char want[16];
        snprintf(want, sizeof want, "f:r%d", i);
        assert_int_equal(rep[i].partials, 1);
        assert_int_equal(rep[i].finals, 1);
        assert_int_equal(rep[i].lost, 0);
        assert_string_equal(rep[i].last, want);
    }
    /* Least recently used: both workers took turns. */
    assert_true(atomic_load(&w1->served) > 0);
    assert_true(atomic_load(&w2->served) > 0);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.requests, N);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.late_replies, 0);

    /* A further request to the holder. */
    reply_t held = {0};
    int64_t h = router_broker_request(r.b, "kith.test", (uint8_t *) "hold", 4, s_on_reply, &held);
    assert_true(h > 0);
    s_run(&r, s_dispatched, r.b);
    assert_int_equal(router_broker_send_to_holder(r.b, h, (uint8_t *) "steer", 5), 0);
    all_t one = {&held, 1};
    s_run(&r, s_all_done, &one);
    assert_string_equal(held.last, "f:steer");
    assert_int_equal(router_broker_send_to_holder(r.b, h, (uint8_t *) "x", 1), -1);

    s_echo_stop(&w1);
    s_echo_stop(&w2);
    s_teardown(&r);
}

/* ------------------------------------------------------------ a dead worker */

typedef struct {
    runner_t *r;
    zsock_t *raw;
} raw_t;

static bool s_workers_1(void *ud)
{
    return router_broker_workers(ud, "kith.test") == 1;
}

static bool s_workers_0(void *ud)
{
    return router_broker_workers(ud, "kith.test") == 0;
}

static void s_raw_ready(zsock_t *raw)
{
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "MDPW02");
    zmsg_addmem(m, &(uint8_t) {0x01}, 1);
    zmsg_addstr(m, "kith.test");
    assert_int_equal(zmsg_send(&m, raw), 0);
}

static bool s_late_counted(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.late_replies >= 1;
}

static void test_dead_worker(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_hb = 50;
    s_live = 3;
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    s_hb = 100;
    s_live = 30;
    /* The request waits; a worker says READY, takes it and then says
     * nothing more: kill -9 in miniature. */
    reply_t rep = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "doomed", 6, s_on_reply,
                                      &rep) > 0);
    zsock_t *raw = zsock_new_dealer(ep);
    assert_non_null(raw);
    s_raw_ready(raw);
    all_t one = {&rep, 1};
    s_run(&r, s_all_done, &one);
    assert_int_equal(rep.lost, 1);
    assert_int_equal(rep.finals, 0);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.lost, 1);
    assert_int_equal(st.workers, 0);

    /* The next request goes to a live worker. */
    echo_t *w = s_echo_start(ep, NULL, NULL);
    reply_t rep2 = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "next", 4, s_on_reply,
                                      &rep2) > 0);
    all_t two = {&rep2, 1};
    s_run(&r, s_all_done, &two);
    assert_string_equal(rep2.last, "f:next");

    /* The dead one's late FINAL is dropped and counted. Drain what the
     * broker sent it first (the REQUEST, beats, DISCONNECT). */
    zmsg_t *junk;
    while ((junk = zmsg_recv_nowait(raw)))
        zmsg_destroy(&junk);
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "MDPW02");
    zmsg_addmem(m, &(uint8_t) {0x04}, 1);
    zmsg_addmem(m, (uint8_t[8]) {0, 0, 0, 0, 0, 0, 0, 1}, 8);
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "too late");
    assert_int_equal(zmsg_send(&m, raw), 0);
    s_run(&r, s_late_counted, r.b);
    assert_string_equal(rep.last, "");
    assert_int_equal(rep.finals, 0);

    s_echo_stop(&w);
    zsock_destroy(&raw);
    s_teardown(&r);
}

/* Sends [""]["MDPW02"][cmd] then the given frames from a raw DEALER. */
static void s_raw_send(zsock_t *raw, const char *proto, uint8_t cmd, int nframes,
                       const char *const *frames)
{
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, proto);
    zmsg_addmem(m, &cmd, 1);
    for (int i = 0; i < nframes; i++)
        zmsg_addstr(m, frames[i]);
    assert_int_equal(zmsg_send(&m, raw), 0);
}

typedef struct {
    zsock_t *raw;
    int cmd;
} raw_wait_t;

/* A message came to raw that is not a heartbeat: its command byte. */
static bool s_raw_got(void *ud)
{
    raw_wait_t *w = ud;
    zmsg_t *m;
    while ((m = zmsg_recv_nowait(w->raw))) {
        int cmd = -1;
        if (zmsg_size(m) >= 3) {
            zframe_t *f = zmsg_first(m);
            f = zmsg_next(m);
            f = zmsg_next(m);
            cmd = zframe_size(f) == 1 ? zframe_data(f)[0] : -1;
        }
        zmsg_destroy(&m);
        if (cmd != 0x05) {
            w->cmd = cmd;
            return true;
        }
    }
    return false;
}

/* The next command byte the broker sends raw, heartbeats skipped. */
static int s_raw_next_cmd(runner_t *r, zsock_t *raw)
{
    raw_wait_t w = {raw, -1};
    s_run(r, s_raw_got, &w);
    return w.cmd;
}

typedef struct {
    router_broker_t *b;
    uint64_t refused, late;
} counts_t;

static bool s_counted(void *ud)
{
    counts_t *c = ud;
    router_broker_stats_t st;
    router_broker_stats(c->b, &st);
    return st.refused >= c->refused && st.late_replies >= c->late;
}

/* What a worker may get wrong, each refused and counted, the broker
 * serving on: a message that is not MDPW02, READY without a service or
 * with too long a name, READY twice, a command MDP does not have, a
 * heartbeat or FINAL from a worker it does not know, and a reply without
 * its address frames. The offender gets DISCONNECT where it can hear it. */
static void test_protocol_errors(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    zsock_t *raw = zsock_new_dealer(ep);
    assert_non_null(raw);
    counts_t want = {r.b, 0, 0};

    s_raw_send(raw, "MDPC01", 0x01, 1, (const char *const[]) {"kith.test"});
    want.refused++;
    s_run(&r, s_counted, &want);

    s_raw_send(raw, "MDPW02", 0x01, 0, NULL); /* READY without a service */
    want.refused++;
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x06);
    char longname[ROUTER_MDP_SERVICE_MAX + 2];
    memset(longname, 's', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    s_raw_send(raw, "MDPW02", 0x01, 1, (const char *const[]) {longname});
    want.refused++;
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x06);

    s_raw_send(raw, "MDPW02", 0x05, 0, NULL); /* HEARTBEAT, unknown */
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x06);
    s_raw_send(raw, "MDPW02", 0x04, 3, (const char *const[]) {"addr", "", "late"});
    want.late++;
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x06);
    s_raw_send(raw, "MDPW02", 0x09, 0, NULL); /* no such command, unknown */
    want.refused++;
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x06);
    s_run(&r, s_counted, &want);

    /* Known: READY twice deletes it. */
    s_raw_ready(raw);
    s_run(&r, s_workers_1, r.b);
    s_raw_ready(raw);
    want.refused++;
    s_run(&r, s_workers_0, r.b);
    /* Known: a command MDP does not have deletes it too. */
    s_raw_ready(raw);
    s_run(&r, s_workers_1, r.b);
    s_raw_send(raw, "MDPW02", 0x09, 0, NULL);
    want.refused++;
    s_run(&r, s_workers_0, r.b);
    /* Known and holding: a FINAL without its address frames is refused,
     * the request still held; the right one ends it. */
    s_raw_ready(raw);
    s_run(&r, s_workers_1, r.b);
    reply_t rep = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "q", 1, s_on_reply, &rep) > 0);
    s_run(&r, s_dispatched, r.b);
    s_raw_send(raw, "MDPW02", 0x04, 1, (const char *const[]) {"short"});
    want.refused++;
    s_run(&r, s_counted, &want);
    assert_int_equal(rep.finals + rep.lost, 0);
    /* ...and so is one whose address is not the 8 octets of a handle (it
     * was counted a late reply, as if its request had ended). */
    s_raw_send(raw, "MDPW02", 0x04, 3, (const char *const[]) {"addr", "", "final"});
    s_raw_send(raw, "MDPW02", 0x03, 3, (const char *const[]) {"123456789", "", "partial"});
    want.refused += 2;
    s_run(&r, s_counted, &want);
    assert_int_equal(rep.finals + rep.lost + rep.partials, 0);
    s_run(&r, s_counted, &want);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.refused, want.refused);
    assert_int_equal(st.late_replies, want.late);
    assert_int_equal(st.in_flight, 1);

    /* And the broker serves on: a real worker takes the next request. */
    zsock_destroy(&raw);
    echo_t *w = s_echo_start(ep, NULL, NULL);
    reply_t rep2 = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "ok", 2, s_on_reply, &rep2) >
                0);
    all_t one = {&rep2, 1};
    s_run(&r, s_all_done, &one);
    assert_string_equal(rep2.last, "f:ok");
    s_echo_stop(&w);
    s_teardown(&r);
}

/* A worker that leaves with DISCONNECT while holding a request. */
static void test_disconnect_holding(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    zsock_t *raw = zsock_new_dealer(ep);
    s_raw_ready(raw);
    reply_t rep = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "x", 1, s_on_reply, &rep) > 0);
    s_run(&r, s_dispatched, r.b);
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "MDPW02");
    zmsg_addmem(m, &(uint8_t) {0x06}, 1);
    assert_int_equal(zmsg_send(&m, raw), 0);
    all_t one = {&rep, 1};
    s_run(&r, s_all_done, &one);
    assert_int_equal(rep.lost, 1);
    s_run(&r, s_workers_0, r.b);
    zsock_destroy(&raw);
    s_teardown(&r);
}

/* A worker that comes back under the identity it held a request with (a
 * process restarted with a fixed ZMQ_ROUTING_ID, over tcp): its READY is a
 * second one from a known worker, so the request it held ends for the
 * router (kind -1, not a wait for ever), the worker is sent DISCONNECT and
 * forgotten, and its next READY registers it; the broker serves on. */
static void s_raw_reply(zsock_t *raw, uint8_t cmd, int64_t h, const char *body);
static void s_settle(runner_t *r, uint64_t ms);

static void test_reconnect_same_identity_holding(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    char far[128];
    snprintf(far, sizeof far, "%s", router_broker_listen_endpoint(r.b));
    zsock_t *old = zsock_new(ZMQ_DEALER);
    assert_non_null(old);
    zsock_set_identity(old, "same-worker");
    assert_int_equal(zsock_connect(old, "%s", far), 0);
    s_raw_ready(old);
    s_run(&r, s_workers_1, r.b);
    reply_t rep = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "x", 1, s_on_reply, &rep) > 0);
    assert_int_equal(s_raw_next_cmd(&r, old), 0x02);
    zsock_destroy(&old);
    /* Let the broker see that connection go before the new one comes. */
    s_settle(&r, 200);
    zsock_t *again = zsock_new(ZMQ_DEALER);
    assert_non_null(again);
    zsock_set_identity(again, "same-worker");
    assert_int_equal(zsock_connect(again, "%s", far), 0);
    s_raw_ready(again);
    all_t one = {&rep, 1};
    s_run(&r, s_all_done, &one);
    assert_int_equal(rep.lost, 1);
    assert_int_equal(rep.finals, 0);
    assert_int_equal(s_raw_next_cmd(&r, again), 0x06);
    s_run(&r, s_workers_0, r.b);
    s_raw_ready(again);
    s_run(&r, s_workers_1, r.b);
    reply_t rep2 = {0};
    int64_t h = router_broker_request(r.b, "kith.test", (uint8_t *) "y", 1, s_on_reply, &rep2);
    assert_true(h > 0);
    assert_int_equal(s_raw_next_cmd(&r, again), 0x02);
    s_raw_reply(again, 0x04, h, "done");
    all_t two = {&rep2, 1};
    s_run(&r, s_all_done, &two);
    assert_string_equal(rep2.last, "done");
    zsock_destroy(&again);
    s_teardown(&r);
}

/* ------------------------------------------------------------ bounds */

static void test_queue_bound_and_cancel(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 2, ep, sizeof ep);
    reply_t rep[3] = {0};
    int64_t h1 = router_broker_request(r.b, "kith.test", (uint8_t *) "a", 1, s_on_reply, &rep[0]);
    int64_t h2 = router_broker_request(r.b, "kith.test", (uint8_t *) "b", 1, s_on_reply, &rep[1]);
    assert_true(h1 > 0 && h2 > h1);
    assert_int_equal(router_broker_request(r.b, "kith.test", (uint8_t *) "c", 1, s_on_reply,
                                           &rep[2]), -1);
    assert_true(router_broker_queued(r.b, h1));
    assert_int_equal(router_broker_send_to_holder(r.b, h1, (uint8_t *) "s", 1), -1);
    router_broker_cancel(r.b, h1);
    assert_false(router_broker_queued(r.b, h1));
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "c", 1, s_on_reply,
                                      &rep[2]) > 0);
    /* Bad service names are refused. */
    assert_int_equal(router_broker_request(r.b, "", (uint8_t *) "a", 1, s_on_reply, &rep[0]), -1);
    assert_int_equal(router_broker_request(r.b, "has space", (uint8_t *) "a", 1, s_on_reply,
                                           &rep[0]), -1);
    /* A worker arriving later takes the queue in order; the cancelled one
     * never runs. */
    echo_t *w = s_echo_start(ep, NULL, NULL);
    all_t two = {&rep[1], 2};
    s_run(&r, s_all_done, &two);
    assert_string_equal(rep[1].last, "f:b");
    assert_string_equal(rep[2].last, "f:c");
    assert_int_equal(rep[0].finals + rep[0].partials + rep[0].lost, 0);
    s_echo_stop(&w);
    s_teardown(&r);
}

static void test_endpoint_is_local(void **state)
{
    (void) state;
    assert_true(router_broker_endpoint_is_local("tcp://127.0.0.1:5555"));
    assert_true(router_broker_endpoint_is_local("tcp://127.1.2.3:0"));
    assert_true(router_broker_endpoint_is_local("tcp://[::1]:5555"));
    assert_true(router_broker_endpoint_is_local("tcp://localhost:5555"));
    assert_true(router_broker_endpoint_is_local("ipc:///tmp/x"));
    assert_false(router_broker_endpoint_is_local("tcp://0.0.0.0:5555"));
    assert_false(router_broker_endpoint_is_local("tcp://*:5555"));
    assert_false(router_broker_endpoint_is_local("tcp://10.0.0.1:5555"));
    assert_false(router_broker_endpoint_is_local("tcp://lo:5555"));
    assert_false(router_broker_endpoint_is_local("tcp://127x:1"));
}

/* ------------------------------------------------------------ CURVE */

static void test_curve(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(home));
    runner_t r = {0};
    char ep[64];
    /* "lo" is an interface name: not loopback by the broker's rule (so
     * CURVE is on), yet bound to the loopback interface only. */
    s_setup(&r, "tcp://lo:*", home, 0, ep, sizeof ep);
    const char *pub = router_broker_curve_public(r.b);
    assert_non_null(pub);
    assert_int_equal(strlen(pub), 40);
    const char *bound = router_broker_listen_endpoint(r.b);
    const char *port = strrchr(bound, ':');
    assert_non_null(port);
    char tcp[64];
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1%s", port);

    char path[512];
    snprintf(path, sizeof path, "%s/workers/broker.cert_secret", home);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    /* One worker key authorized, one not. */
    char good_path[512];
    s_authorized_cert(home, good_path, sizeof good_path);

    echo_t *bad = s_echo_start(tcp, pub, NULL); /* ephemeral key */
    echo_t *ok = s_echo_start(tcp, pub, good_path);
    s_run(&r, s_workers_1, r.b);
    reply_t rep = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "sealed", 6, s_on_reply,
                                      &rep) > 0);
    all_t one = {&rep, 1};
    s_run(&r, s_all_done, &one);
    assert_string_equal(rep.last, "f:sealed");
    assert_int_equal(atomic_load(&ok->served), 1);
    /* Give the unauthorized worker a few heartbeats more: still refused. */
    reply_t rep2 = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "again", 5, s_on_reply,
                                      &rep2) > 0);
    all_t two = {&rep2, 1};
    s_run(&r, s_all_done, &two);
    assert_int_equal(router_broker_workers(r.b, "kith.test"), 1);
    assert_int_equal(atomic_load(&bad->served), 0);

    /* A restart keeps the broker's key. */
    char pub_before[41];
    snprintf(pub_before, sizeof pub_before, "%s", pub);
    s_echo_stop(&bad);
    s_echo_stop(&ok);
    s_teardown(&r);
    s_setup(&r, "tcp://lo:*", home, 0, ep, sizeof ep);
    assert_string_equal(router_broker_curve_public(r.b), pub_before);
    s_teardown(&r);

    s_rm_rf(home);
}

/* A file where the authorized workers' directory belongs: the broker
 * refuses to start and says what to do (ZAP would have read no
 * certificates from it and admitted no worker, without a word). */
static void test_curve_authorized_not_a_directory(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(home));
    char path[512];
    snprintf(path, sizeof path, "%s/workers", home);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/workers/authorized", home);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    char err[512] = "";
    router_broker_opts_t o = {.loop = loop, .endpoint = "inproc://broker-test-notdir",
                              .listen = "tcp://lo:*", .home = home};
    router_broker_t *b = router_broker_new(&o, err, sizeof err);
    assert_null(b);
    assert_non_null(strstr(err, "/workers/authorized is not a directory"));
    router_loop_destroy(&loop);
    s_rm_rf(home);
}

/* ------------------------------------------------------------ workers.listen bounds */

/* A TCP connection from `src` (any 127.x.y.z is this host's loopback) to
 * the broker's listen port, saying nothing: non-blocking. */
static int s_raw_tcp(const char *src, const char *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, src, &a.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *) &a, sizeof a), 0);
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t) atoi(strrchr(bound, ':') + 1))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *) &to, sizeof to);
    assert_true(rc == 0 || errno == EINPROGRESS);
    return fd;
}

/* True once the broker has closed fd (after its ZMTP greeting). */
static bool s_raw_closed(int fd)
{
    char buf[512];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            continue;
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    }
}

/* A count s_wait_conns does not check. */
#define S_ANY UINT64_MAX

typedef struct {
    router_broker_t *b;
    router_worker_conns_stats_t want; /* fields of S_ANY are not checked */
} conns_want_t;

static bool s_conns_are(void *ud)
{
    conns_want_t *w = ud;
    router_worker_conns_stats_t st;
    router_broker_listen_stats(w->b, &st);
    return (w->want.pending == UINT64_MAX || st.pending == w->want.pending) &&
           (w->want.workers == UINT64_MAX || st.workers == w->want.workers) &&
           (w->want.cut_share == UINT64_MAX || st.cut_share == w->want.cut_share) &&
           (w->want.cut_source == UINT64_MAX || st.cut_source == w->want.cut_source) &&
           (w->want.cut_deadline == UINT64_MAX || st.cut_deadline == w->want.cut_deadline);
}

static void s_wait_conns(runner_t *r, uint64_t pending, uint64_t workers, uint64_t share,
                         uint64_t source, uint64_t deadline)
{
    conns_want_t w = {r->b, {pending, workers, share, source, deadline}};
    if (!test_loop_wait(r->loop, s_conns_are, &w, 10, 20000)) {
        router_worker_conns_stats_t st;
        router_broker_listen_stats(r->b, &st);
        fail_msg("connections: pending %llu workers %llu cut share %llu source %llu deadline "
                 "%llu", (unsigned long long) st.pending, (unsigned long long) st.workers,
                 (unsigned long long) st.cut_share, (unsigned long long) st.cut_source,
                 (unsigned long long) st.cut_deadline);
    }
}

static bool s_settled(void *ud)
{
    uint64_t *until = ud;
    return router_clock_mono_ms() >= *until;
}

/* Runs the loop for ms, so that anything about to happen does. */
static void s_settle(runner_t *r, uint64_t ms)
{
    uint64_t until = router_clock_mono_ms() + ms;
    s_run(r, s_settled, &until);
}

/* Connections that carry no worker have a share (the oldest is cut past
 * it), a share per source address (the newcomer is cut past it) and a
 * deadline; a worker's connection has none of them, and CURVE workers get
 * in while strangers hold the share. */
static void test_listen_pending_bounds(void **state)
{
    (void) state;
    char home[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(home));
    s_listen_bounds(5, 3, 2500);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://lo:*", home, 0, ep, sizeof ep);
    const char *bound = router_broker_listen_endpoint(r.b);
    char tcp[64];
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1%s", strrchr(bound, ':'));

    /* Three from one address are held; a fourth from it is cut, alone. */
    int a[4];
    for (int i = 0; i < 4; i++)
        a[i] = s_raw_tcp("127.0.0.2", bound);
    s_wait_conns(&r, 3, 0, 0, 1, 0);
    s_settle(&r, 100);
    assert_true(s_raw_closed(a[3]));
    for (int i = 0; i < 3; i++)
        assert_false(s_raw_closed(a[i]));
    /* Two more from another address fill the share; one from a third cuts
     * the oldest of all. */
    int b[2], c;
    for (int i = 0; i < 2; i++)
        b[i] = s_raw_tcp("127.0.0.3", bound);
    s_wait_conns(&r, 5, 0, 0, 1, 0);
    c = s_raw_tcp("127.0.0.4", bound);
    s_wait_conns(&r, 5, 0, 1, 1, 0);
    s_settle(&r, 100);
    assert_true(s_raw_closed(a[0]));
    assert_false(s_raw_closed(a[1]));

    /* An authorized worker gets in past the full share (its connection
     * cuts the oldest stranger's) and then holds no place in it. */
    char good_path[512];
    s_authorized_cert(home, good_path, sizeof good_path);
    echo_t *ok = s_echo_start(tcp, router_broker_curve_public(r.b), good_path);
    s_run(&r, s_workers_1, r.b);
    s_wait_conns(&r, S_ANY, 1, S_ANY, 1, S_ANY);
    /* Eight connections: one a worker's, the rest held or cut (the oldest
     * stranger for the share, unless a slow machine let its deadline pass
     * first). */
    router_worker_conns_stats_t st;
    router_broker_listen_stats(r.b, &st);
    assert_int_equal(st.pending + st.cut_share + st.cut_source + st.cut_deadline, 7);
    assert_true(st.cut_share + st.cut_deadline >= 2);
    s_settle(&r, 100);
    assert_true(s_raw_closed(a[1]));

    /* The strangers' deadline passes: all cut; the worker stays and serves. */
    s_wait_conns(&r, 0, 1, S_ANY, 1, S_ANY);
    router_broker_listen_stats(r.b, &st);
    assert_int_equal(st.cut_share + st.cut_deadline, 6);
    s_settle(&r, 100);
    assert_true(s_raw_closed(a[2]));
    assert_true(s_raw_closed(b[0]));
    assert_true(s_raw_closed(b[1]));
    assert_true(s_raw_closed(c));
    s_settle(&r, 300);
    assert_int_equal(router_broker_workers(r.b, "kith.test"), 1);
    reply_t rep = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "still", 5, s_on_reply,
                                      &rep) > 0);
    all_t one = {&rep, 1};
    s_run(&r, s_all_done, &one);
    assert_string_equal(rep.last, "f:still");

    /* The worker leaves: its connection goes, and with it every count. */
    s_echo_stop(&ok);
    s_wait_conns(&r, 0, 0, S_ANY, S_ANY, S_ANY);
    for (int i = 0; i < 4; i++)
        close(a[i]);
    close(b[0]);
    close(b[1]);
    close(c);
    s_teardown(&r);
    s_rm_rf(home);
}

typedef struct {
    int fd;
} raw_fd_t;

static bool s_raw_fd_closed(void *ud)
{
    return s_raw_closed(((raw_fd_t *) ud)->fd);
}

/* The broker stopping says DISCONNECT to every worker (WIRE §19.1), on
 * the embedded endpoint and on workers.listen alike. */
static void test_destroy_says_disconnect(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    zsock_t *local = zsock_new_dealer(ep);
    zsock_t *remote = zsock_new_dealer(router_broker_listen_endpoint(r.b));
    assert_non_null(local);
    assert_non_null(remote);
    s_raw_ready(local);
    s_raw_ready(remote);
    s_run(&r, s_workers_2, r.b);
    router_broker_destroy(&r.b);
    zsock_t *both[2] = {local, remote};
    for (int i = 0; i < 2; i++) {
        int cmd = -1;
        for (zmsg_t *m; cmd != 0x06 && (m = zmsg_recv_nowait(both[i])) != NULL;) {
            zframe_t *f = zmsg_first(m);
            f = zmsg_next(m);
            f = zmsg_next(m);
            cmd = f && zframe_size(f) == 1 ? zframe_data(f)[0] : -1;
            zmsg_destroy(&m);
        }
        for (int tries = 0; cmd != 0x06 && tries < 2000; tries++) {
            zmsg_t *m = NULL;
            zpoller_t *p = zpoller_new(both[i], NULL);
            if (zpoller_wait(p, 10))
                m = zmsg_recv(both[i]);
            zpoller_destroy(&p);
            if (m) {
                zframe_t *f = zmsg_first(m);
                f = zmsg_next(m);
                f = zmsg_next(m);
                cmd = f && zframe_size(f) == 1 ? zframe_data(f)[0] : -1;
                zmsg_destroy(&m);
            }
        }
        assert_int_equal(cmd, 0x06);
    }
    zsock_destroy(&local);
    zsock_destroy(&remote);
    s_teardown(&r);
}

/* No memory for the record of a new connection to workers.listen: it is
 * refused (closed at once), not left without a bound or a deadline, and
 * the next connection is counted as before. */
static void test_listen_accept_without_memory(void **state)
{
    (void) state;
    s_listen_bounds(4, 4, 60000);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    alloc_fail_arm(0); /* the loop runs on this thread: the record's calloc */
    raw_fd_t raw = {s_raw_tcp("127.0.0.1", router_broker_listen_endpoint(r.b))};
    s_run(&r, s_raw_fd_closed, &raw);
    assert_true(alloc_fail_disarm() >= 1);
    close(raw.fd);
    router_worker_conns_stats_t st;
    router_broker_listen_stats(r.b, &st);
    assert_int_equal(st.pending + st.workers, 0);
    assert_int_equal(st.cut_share + st.cut_source + st.cut_deadline, 0);
    zsock_t *w = zsock_new_dealer(router_broker_listen_endpoint(r.b));
    assert_non_null(w);
    s_raw_ready(w);
    s_run(&r, s_workers_1, r.b);
    s_wait_conns(&r, 0, 1, 0, 0, 0);
    zsock_destroy(&w);
    s_teardown(&r);
}

/* A worker the broker forgets while its connection stays (a second READY
 * breaks the protocol) is pending again, with a fresh deadline: on a local
 * endpoint too, where CURVE is off. */
static void test_listen_worker_forgotten(void **state)
{
    (void) state;
    s_listen_bounds(4, 4, 500);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    zsock_t *raw = zsock_new_dealer(router_broker_listen_endpoint(r.b));
    assert_non_null(raw);
    s_raw_ready(raw);
    s_run(&r, s_workers_1, r.b);
    s_wait_conns(&r, 0, 1, 0, 0, 0);
    /* Held past the deadline as a worker: not cut. */
    s_settle(&r, 800);
    s_wait_conns(&r, 0, 1, 0, 0, 0);
    s_raw_ready(raw);
    s_run(&r, s_workers_0, r.b);
    /* Its connection is pending again and cut at the deadline (the DEALER
     * then reconnects by itself, and is cut again). */
    s_wait_conns(&r, S_ANY, 0, 0, 0, 1);
    zsock_destroy(&raw);
    s_wait_conns(&r, 0, 0, 0, 0, S_ANY);
    s_teardown(&r);
}

/* One message read from a ROUTER by the test itself (the loop does not
 * run): the descriptor it came in on (ZMQ_SRCFD) and its routing id. */
static int s_read_srcfd(zsock_t *s, zframe_t **id)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, zsock_resolve(s), 0) >= 0);
    int fd = zmq_msg_get(&m, ZMQ_SRCFD);
    *id = zframe_new(zmq_msg_data(&m), zmq_msg_size(&m));
    bool more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) {
        zframe_t *f = zframe_recv(s);
        more = f && zframe_more(f);
        zframe_destroy(&f);
    }
    return fd;
}

/* A DEALER in another process (python3 with pyzmq) that connects to ep,
 * sends "READY" and waits to be killed, or for this process to end (a
 * failed test leaves nothing behind). */
static pid_t s_remote_dealer(const char *ep)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        execl("/usr/bin/python3", "python3", "-c",
              "import os, sys, time, zmq\n"
              "parent = os.getppid()\n"
              "s = zmq.Context().socket(zmq.DEALER)\n"
              "s.connect(sys.argv[1])\n"
              "s.send(b'READY')\n"
              "while os.getppid() == parent:\n"
              "    time.sleep(0.05)\n"
              "os._exit(0)\n",
              ep, (char *) NULL);
        _exit(127);
    }
    return pid;
}

/* Waits (the loop not running) until the ROUTER s no longer routes to id:
 * its connection is closed and its descriptor number free. */
static void s_until_unroutable(zsock_t *s, zframe_t *id)
{
    void *h = zsock_resolve(s);
    for (int i = 0; i < 4000; i++) {
        if (zmq_send(h, zframe_data(id), zframe_size(id), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
            assert_int_equal(zmq_errno(), EHOSTUNREACH);
            return;
        }
        assert_int_equal(zmq_send(h, "x", 1, 0), 1);
        zclock_sleep(5);
    }
    fail_msg("still routed to after 20 s");
}

typedef struct {
    router_worker_conns_t *c;
    uint64_t sum;
} conns_sum_t;

/* The connections counted, pending or a worker's, are sum. */
static bool s_conns_sum(void *ud)
{
    conns_sum_t *w = ud;
    router_worker_conns_stats_t st;
    router_worker_conns_stats(w->c, &st);
    return st.pending + st.workers == w->sum;
}

/* A connection goes and the next one is given its descriptor number (the
 * kernel gives the lowest free one), and that one's READY is read before
 * the monitor's DISCONNECTED and ACCEPTED for the number: the READY's
 * connection is made the worker's, and the one gone is forgotten. Before,
 * the entry of the connection gone was taken for it: the serial returned
 * was the old one's, and once the events were read the worker's own
 * connection counted as pending, to be cut at the deadline (WIRE §19.2:
 * never). */
static void test_listen_ready_on_reused_descriptor(void **state)
{
    (void) state;
    if (system("/usr/bin/python3 -c 'import zmq' >/dev/null 2>&1") != 0)
        skip(); /* the second peer is a pyzmq DEALER, as in tests/integration */
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    zsock_t *s = zsock_new(ZMQ_ROUTER);
    assert_non_null(s);
    zsock_set_router_mandatory(s, 1);
    zsock_set_rcvtimeo(s, 20000);
    char err[256] = "";
    router_worker_conns_opts_t o = {.loop = loop};
    router_worker_conns_t *c = router_worker_conns_new(zsock_resolve(s), &o, err, sizeof err);
    assert_non_null(c);
    assert_true(zsock_bind(s, "tcp://127.0.0.1:*") > 0);
    char *ep = zsock_last_endpoint(s);
    zsock_t *a = zsock_new_dealer(ep);
    assert_non_null(a);
    zstr_send(a, "a");
    zframe_t *ida = NULL, *idb = NULL, *idd = NULL;
    int fda = s_read_srcfd(s, &ida);
    conns_sum_t want = {c, 1};
    test_loop_until(loop, s_conns_sum, &want, 10, 20000);
    /* a goes, the loop not running: its number is free once ZeroMQ no
     * longer routes to it. */
    zsock_destroy(&a);
    s_until_unroutable(s, ida);
    /* Every free number below a's is held for a moment, and b connects
     * from another process: the one descriptor its connection takes here
     * is the accepted one, and it gets a's number (unless one below was
     * let go meanwhile: then b goes, and another comes). */
    pid_t b = -1;
    int fdb = -1;
    for (int attempt = 0; attempt < 5 && fdb != fda; attempt++) {
        if (b > 0) {
            kill(b, SIGKILL);
            assert_int_equal(waitpid(b, NULL, 0), b);
            s_until_unroutable(s, idb);
            zframe_destroy(&idb);
        }
        int holders[512], nholders = 0;
        for (int tries = 0;; tries++) {
            int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            assert_true(fd >= 0 && nholders < 512);
            if (fd == fda) {
                close(fd);
                break;
            }
            if (fd < fda) {
                holders[nholders++] = fd;
                continue;
            }
            /* a's number is not free yet (ZeroMQ closes it a moment
             * after it stops routing): let everything go, look again. */
            close(fd);
            while (nholders > 0)
                close(holders[--nholders]);
            assert_true(tries < 4000);
            zclock_sleep(5);
        }
        b = s_remote_dealer(ep);
        fdb = s_read_srcfd(s, &idb);
        while (nholders > 0)
            close(holders[--nholders]);
    }
    assert_int_equal(fdb, fda);
    uint64_t serial = router_worker_conns_ready(c, fdb);
    assert_true(serial > 0);
    /* A third connection: once the loop counts it, it has read every
     * monitor event before it. */
    zsock_t *d = zsock_new_dealer(ep);
    assert_non_null(d);
    zstr_send(d, "d");
    (void) s_read_srcfd(s, &idd);
    want.sum = 2;
    test_loop_until(loop, s_conns_sum, &want, 10, 20000);
    router_worker_conns_stats_t st;
    router_worker_conns_stats(c, &st);
    assert_int_equal(st.workers, 1);
    assert_int_equal(st.pending, 1);
    /* The serial is b's: its worker leaving makes it pending again. */
    router_worker_conns_left(c, serial);
    router_worker_conns_stats(c, &st);
    assert_int_equal(st.workers, 0);
    assert_int_equal(st.pending, 2);
    kill(b, SIGKILL);
    assert_int_equal(waitpid(b, NULL, 0), b);
    zsock_destroy(&d);
    zframe_destroy(&ida);
    zframe_destroy(&idb);
    zframe_destroy(&idd);
    zstr_free(&ep);
    router_worker_conns_destroy(&c);
    zsock_destroy(&s);
    router_loop_destroy(&loop);
}

/* On ipc:// the source is the peer's uid: a third connection from this
 * test's uid is cut, the two before it at their deadline. */
static void test_listen_ipc(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char listen[128];
    snprintf(listen, sizeof listen, "ipc://%s/w.sock", dir);
    s_listen_bounds(4, 2, 400);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, listen, NULL, 0, ep, sizeof ep);
    int u[3];
    for (int i = 0; i < 3; i++) {
        u[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s/w.sock", dir);
        assert_int_equal(connect(u[i], (struct sockaddr *) &a, sizeof a), 0);
    }
    s_wait_conns(&r, S_ANY, 0, 0, 1, S_ANY);
    s_wait_conns(&r, 0, 0, 0, 1, 2);
    s_settle(&r, 100);
    for (int i = 0; i < 3; i++) {
        assert_true(s_raw_closed(u[i]));
        close(u[i]);
    }
    s_teardown(&r);
    s_rm_rf(dir);
}

typedef struct {
    router_broker_t *b;
    uint64_t workers, refused;
} stats_want_t;

static bool s_workers_3_any(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.workers == 3;
}

static bool s_stats_reach(void *ud)
{
    stats_want_t *w = ud;
    router_broker_stats_t st;
    router_broker_stats(w->b, &st);
    return st.workers >= w->workers && st.refused >= w->refused;
}

/* The READY was read: refused, or a worker taken. */
static bool s_ready_read(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.refused + st.workers > 0;
}

/* A READY read after its connection was cut (here the share's oldest, cut
 * for a stranger's connection that came after it) is refused: the request
 * waiting is not handed to a connection that is going. Before, the worker
 * was taken on it and handed the request, which was lost with it at the
 * next heartbeat (kind -1: a turn failed for nothing). The worker's next
 * READY, on the connection its socket makes again, gets the request. */
static void test_listen_ready_on_a_cut_connection(void **state)
{
    (void) state;
    s_listen_bounds(1, 4, 0);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    char bound[128];
    snprintf(bound, sizeof bound, "%s", router_broker_listen_endpoint(r.b));
    reply_t rep = {0};
    int64_t h = router_broker_request(r.b, "kith.test", (uint8_t *) "q", 1, s_on_reply, &rep);
    assert_true(h > 0);
    /* The loop does not run: the READY and both accepts wait for it. */
    zsock_t *w = zsock_new_dealer(bound);
    assert_non_null(w);
    s_raw_ready(w);
    usleep(300 * 1000);
    int stranger = s_raw_tcp("127.0.0.2", bound);
    usleep(300 * 1000);
    s_run(&r, s_ready_read, r.b);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.workers, 0);
    assert_int_equal(st.in_flight, 0);
    assert_true(router_broker_queued(r.b, h));
    router_worker_conns_stats_t cs;
    router_broker_listen_stats(r.b, &cs);
    assert_int_equal(cs.cut_share, 1);
    assert_int_equal(rep.lost + rep.finals, 0);
    /* (That a later worker takes it is test_listen_left_over_the_share's
     * and the dispatch tests' part: here a new socket raced the cut one's
     * reconnects for the one pending place, and lost its READY now and
     * then.) */
    close(stranger);
    zsock_destroy(&w);
    s_teardown(&r);
}

/* A worker that leaves while its connection stays makes that connection
 * pending again (WIRE §19.2), and counts in the share: past pending_max the
 * oldest pending (a stranger's) is cut, not the one that just left, which
 * may say READY again and be taken. */
static void test_listen_left_over_the_share(void **state)
{
    (void) state;
    s_listen_bounds(2, 4, 0);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    char bound[128];
    snprintf(bound, sizeof bound, "%s", router_broker_listen_endpoint(r.b));
    zsock_t *w = zsock_new_dealer(bound);
    assert_non_null(w);
    s_raw_ready(w);
    s_run(&r, s_workers_1, r.b);
    s_wait_conns(&r, 0, 1, 0, 0, 0);
    int a = s_raw_tcp("127.0.0.2", bound);
    int b = s_raw_tcp("127.0.0.3", bound);
    s_wait_conns(&r, 2, 1, 0, 0, 0);
    s_raw_send(w, "MDPW02", 0x06, 0, NULL); /* DISCONNECT: it leaves, the connection stays */
    s_run(&r, s_workers_0, r.b);
    s_wait_conns(&r, 2, 0, 1, 0, 0);
    s_settle(&r, 100);
    assert_true(s_raw_closed(a));
    assert_false(s_raw_closed(b));
    s_raw_ready(w);
    s_run(&r, s_workers_1, r.b);
    s_wait_conns(&r, 1, 1, 1, 0, 0);
    close(a);
    close(b);
    zsock_destroy(&w);
    s_teardown(&r);
}

/* workers.listen on an abstract Unix name (ipc://@name, WIRE §19.2) has
 * the same bounds as on a path: the connections over the share are cut.
 * Before, the check that a descriptor was accepted on the endpoint
 * compared the name with strncmp over sun_path, which for an abstract
 * name holds no NUL after it (getsockname fills only the name's length;
 * the byte after was whatever the stack held): most connections were not
 * taken for the endpoint's, so none of those was counted, bounded or cut,
 * and a local process could hold any number open. Names of several
 * lengths, so that the byte after falls in several places of the stack. */
static void test_listen_ipc_abstract(void **state)
{
    (void) state;
    static const int lens[] = {21, 30, 37, 46, 53, 62, 75, 88, 99};
    for (size_t round = 0; round < sizeof lens / sizeof lens[0]; round++) {
        char listen[160], name[128];
        int n = snprintf(name, sizeof name, "kith-broker-test-%d-%d-", (int) getpid(), ++s_n);
        while (n < lens[round])
            name[n++] = 'a' + (char) (round % 26);
        name[n] = '\0';
        snprintf(listen, sizeof listen, "ipc://@%s", name);
        s_listen_bounds(4, 1, 300);
        runner_t r = {0};
        char ep[64];
        s_setup(&r, listen, NULL, 0, ep, sizeof ep);
        int u[2];
        for (int i = 0; i < 2; i++) {
            u[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            struct sockaddr_un a = {.sun_family = AF_UNIX};
            memcpy(a.sun_path + 1, name, (size_t) n);
            socklen_t alen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + (size_t) n);
            assert_int_equal(connect(u[i], (struct sockaddr *) &a, alen), 0);
        }
        /* The second from the one uid is cut at once (per source: 1), the
         * first at the deadline. */
        s_wait_conns(&r, S_ANY, 0, 0, 1, S_ANY);
        s_wait_conns(&r, 0, 0, 0, 1, 1);
        s_settle(&r, 50);
        for (int i = 0; i < 2; i++) {
            assert_true(s_raw_closed(u[i]));
            close(u[i]);
        }
        if (round == 0) { /* and a worker gets in, counted as one */
            echo_t *w = s_echo_start(listen, NULL, NULL);
            s_run(&r, s_workers_1, r.b);
            s_wait_conns(&r, 0, 1, 0, 1, 1);
            s_echo_stop(&w);
        }
        s_teardown(&r);
    }
}

/* workers.listen on an IPv6 literal binds (ZMQ_IPV6 on that socket only),
 * a worker connects to it, and the pending bounds count IPv6 sources. */
static void test_listen_ipv6(void **state)
{
    (void) state;
    if (!test_have_ipv6_loopback()) {
        fprintf(stderr, "no IPv6 loopback here: test_listen_ipv6 skipped\n");
        skip();
    }
    s_listen_bounds(4, 1, 60000);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://[::1]:*", NULL, 0, ep, sizeof ep);
    const char *bound = router_broker_listen_endpoint(r.b);
    assert_non_null(strstr(bound, "[::1]"));
    echo_t *e = s_echo_start(bound, NULL, NULL);
    s_run(&r, s_workers_1, r.b);
    s_wait_conns(&r, 0, 1, 0, 0, 0);
    int fds[2];
    for (int i = 0; i < 2; i++) {
        fds[i] = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
                                 .sin6_port = htons((uint16_t) atoi(strrchr(bound, ':') + 1))};
        int rc = connect(fds[i], (struct sockaddr *) &a, sizeof a);
        assert_true(rc == 0 || errno == EINPROGRESS);
    }
    /* ::1 may hold one pending place: the second is cut. */
    s_wait_conns(&r, 1, 1, 0, 1, 0);
    s_settle(&r, 100);
    assert_false(s_raw_closed(fds[0]));
    assert_true(s_raw_closed(fds[1]));
    close(fds[0]);
    close(fds[1]);
    s_wait_conns(&r, 0, 1, 0, 1, 0);
    s_echo_stop(&e);
    s_teardown(&r);
}

/* A broker that cannot start says why: CURVE without a home, an inproc
 * endpoint taken. One destroyed with requests queued frees them. */
static void test_refusals_and_teardown(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    char err[256] = "";
    /* libzmq lets go of a closed socket's inproc name only later: each
     * start here binds a name of its own. */
    router_broker_opts_t o = {.loop = loop, .endpoint = "inproc://broker-test-refusals-curve",
                              .listen = "tcp://lo:*"};
    assert_null(router_broker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "is not loopback: CURVE needs a home directory"));
    o.endpoint = "inproc://broker-test-refusals";
    o.listen = NULL;
    router_broker_t *b = router_broker_new(&o, err, sizeof err);
    assert_non_null(b);
    assert_null(router_broker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "workers: cannot bind inproc://broker-test-refusals"));
    reply_t rep = {0};
    for (int i = 0; i < 3; i++)
        assert_true(router_broker_request(b, "kith.test", (uint8_t *) "q", 1, s_on_reply, &rep) >
                    0);
    router_worker_conns_stats_t st;
    router_broker_listen_stats(b, &st);
    assert_int_equal(st.pending + st.workers, 0);
    router_broker_destroy(&b);
    assert_int_equal(rep.finals + rep.partials + rep.lost, 0);
    router_loop_destroy(&loop);
}

/* Every allocation of kith's in a broker's start (the listen socket's
 * connection watch included) failing in turn: each run refuses cleanly,
 * saying why, or starts and serves. */
/* CURVE on workers.listen (a non-loopback endpoint) with each allocation
 * of ours failing in turn, its certificate made on the first run and read
 * on the others: a refusal leaks nothing, the certificate included (LSan). */
static void test_new_curve_out_of_memory(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    char home[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(home));
    bool started = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !started; i++) {
        char err[256] = "";
        char ep[64];
        snprintf(ep, sizeof ep, "inproc://broker-test-curve-oom-%ld", i);
        router_broker_opts_t o = {.loop = loop, .endpoint = ep, .listen = "tcp://lo:*", .home = home};
        alloc_fail_arm(i);
        router_broker_t *b = router_broker_new(&o, err, sizeof err);
        unsigned failed = alloc_fail_disarm();
        if (b) {
            started = failed == 0;
            assert_non_null(router_broker_curve_public(b));
            router_broker_destroy(&b);
        } else {
            assert_true(failed > 0);
            assert_true(strncmp(err, "workers: ", 9) == 0);
        }
    }
    assert_true(started);
    s_rm_rf(home);
    router_loop_destroy(&loop);
}

static void test_new_out_of_memory(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    bool started = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !started; i++) {
        char err[256] = "";
        char ep[64];
        snprintf(ep, sizeof ep, "inproc://broker-test-oom-%ld", i);
        router_broker_opts_t o = {.loop = loop, .endpoint = ep, .listen = "tcp://127.0.0.1:*"};
        alloc_fail_arm(i);
        router_broker_t *b = router_broker_new(&o, err, sizeof err);
        unsigned failed = alloc_fail_disarm();
        if (b) {
            started = failed == 0;
            router_broker_destroy(&b);
        } else {
            assert_true(failed > 0);
            assert_true(strncmp(err, "workers: ", 9) == 0);
        }
    }
    assert_true(started);
    router_loop_destroy(&loop);
}

/* ------------------------------------------------------------ failures midway */

/* Sends a PARTIAL or FINAL for handle h from a raw worker. */
static void s_raw_reply(zsock_t *raw, uint8_t cmd, int64_t h, const char *body)
{
    uint8_t addr[8];
    for (int i = 7; i >= 0; i--, h >>= 8)
        addr[i] = (uint8_t) (h & 0xff);
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "MDPW02");
    zmsg_addmem(m, &cmd, 1);
    zmsg_addmem(m, addr, 8);
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, body);
    assert_int_equal(zmsg_send(&m, raw), 0);
}

static bool s_workers_1_any(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.workers == 1;
}

typedef struct {
    router_broker_t *b;
    reply_t *rep;
} final_gone_t;

/* The FINAL came, and the worker it came from is gone. */
static bool s_final_and_gone(void *ud)
{
    final_gone_t *f = ud;
    router_broker_stats_t st;
    router_broker_stats(f->b, &st);
    return f->rep->finals == 1 && st.workers == 0;
}

/* A worker whose queue is full (it stopped reading) when it comes back
 * idle cannot take the next request: it is dropped and the request stays
 * queued, not lost, for the next worker. */
static void test_full_worker_keeps_request(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    zsock_t *raw = zsock_new(ZMQ_DEALER);
    assert_non_null(raw);
    zsock_set_rcvhwm(raw, 1);
    assert_int_equal(zsock_connect(raw, "%s", ep), 0);
    s_raw_ready(raw);
    s_run(&r, s_workers_1_any, r.b);
    reply_t rep[2] = {0};
    int64_t h1 = router_broker_request(r.b, "kith.test", (uint8_t *) "one", 3, s_on_reply,
                                       &rep[0]);
    int64_t h2 = router_broker_request(r.b, "kith.test", (uint8_t *) "two", 3, s_on_reply,
                                       &rep[1]);
    assert_true(h1 > 0 && h2 > h1);
    assert_false(router_broker_queued(r.b, h1)); /* raw holds it */
    assert_true(router_broker_queued(r.b, h2));
    /* Fill raw's queue: the holder's sends fail once it is full. */
    int sent = 0;
    while (router_broker_send_to_holder(r.b, h1, (uint8_t *) "s", 1) == 0) {
        sent++;
        assert_true(sent < 1000000);
    }
    assert_true(sent > 0);
    s_raw_reply(raw, 0x04, h1, "done");
    final_gone_t fg = {r.b, &rep[0]};
    s_run(&r, s_final_and_gone, &fg);
    assert_string_equal(rep[0].last, "done");
    assert_true(router_broker_queued(r.b, h2));
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.lost, 0);
    echo_t *w = s_echo_start(ep, NULL, NULL);
    all_t one = {&rep[1], 1};
    s_run(&r, s_all_done, &one);
    assert_string_equal(rep[1].last, "f:two");
    assert_int_equal(rep[1].lost, 0);
    s_echo_stop(&w);
    zsock_destroy(&raw);
    s_teardown(&r);
}

/* A request cancelled while a worker holds it is a zombie: no callback
 * runs for it, its holder cannot be sent to, the worker's FINAL for it is
 * dropped and the worker takes the next request. Queued requests cancelled
 * from the middle or the end of the queue leave it in order; a reply with
 * another request's address is counted late and changes nothing. */
static void test_cancel_held_and_queued(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    zsock_t *raw = zsock_new_dealer(ep);
    assert_non_null(raw);
    s_raw_ready(raw);
    s_run(&r, s_workers_1_any, r.b);
    reply_t rep[4] = {0};
    int64_t h[4];
    const char *bodies[4] = {"held", "next", "mid", "end"};
    for (int i = 0; i < 4; i++) {
        h[i] = router_broker_request(r.b, "kith.test", (const uint8_t *) bodies[i],
                                     strlen(bodies[i]), s_on_reply, &rep[i]);
        assert_true(h[i] > 0);
    }
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x02); /* "held" */
    router_broker_cancel(r.b, h[0]);
    assert_int_equal(router_broker_send_to_holder(r.b, h[0], (uint8_t *) "s", 1), -1);
    router_broker_cancel(r.b, h[3]); /* the tail */
    router_broker_cancel(r.b, h[2]); /* now the tail again, after "next" */
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.in_flight, 1);
    s_raw_reply(raw, 0x03, h[1], "not yours"); /* raw holds h[0], not h[1] */
    counts_t late = {r.b, 0, 1};
    s_run(&r, s_counted, &late);
    s_raw_reply(raw, 0x04, h[0], "zombie");
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x02); /* "next", its turn now */
    s_raw_reply(raw, 0x04, h[1], "f:next");
    all_t one = {&rep[1], 1};
    s_run(&r, s_all_done, &one);
    assert_string_equal(rep[1].last, "f:next");
    for (int i = 0; i < 4; i++)
        if (i != 1)
            assert_int_equal(rep[i].partials + rep[i].finals + rep[i].lost, 0);
    router_broker_stats(r.b, &st);
    assert_int_equal(st.lost, 0);
    assert_int_equal(st.late_replies, 1);
    assert_int_equal(st.queued + st.in_flight, 0);
    zsock_destroy(&raw);
    s_teardown(&r);
}

/* Out of memory for a request (its record, its body) refuses it: -1,
 * nothing queued or counted; the next one goes. A READY that cannot be
 * recorded is answered DISCONNECT, and the worker's next READY joins. */
static void test_request_and_ready_without_memory(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    reply_t rep = {0};
    unsigned refused = 0;
    int64_t h = -1;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        alloc_fail_arm(i);
        h = router_broker_request(r.b, "kith.test", (uint8_t *) "mem", 3, s_on_reply, &rep);
        bool failed = alloc_fail_disarm() > 0;
        if (!failed)
            break;
        if (h < 0) {
            router_broker_stats_t st;
            router_broker_stats(r.b, &st);
            assert_int_equal(st.queued + st.requests, 0);
            refused++;
        } else {
            break; /* a later allocation (the loop's) failed, the request went */
        }
    }
    assert_true(h > 0);
    assert_true(refused >= 2);
    zsock_t *raw = zsock_new_dealer(ep);
    assert_non_null(raw);
    alloc_fail_arm(0); /* the worker's record: the first allocation of ours */
    s_raw_ready(raw);
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x06);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_int_equal(router_broker_workers(r.b, "kith.test"), 0);
    s_raw_ready(raw);
    assert_int_equal(s_raw_next_cmd(&r, raw), 0x02); /* it joined and got "mem" */
    zsock_destroy(&raw);
    s_teardown(&r);
}

static bool s_late_300(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.late_replies >= 300;
}

/* A request whose loss makes another (the router starts the session's
 * next turn when one ends). */
typedef struct {
    router_broker_t *b;
    reply_t mine, next;
    int64_t hnext;
} chain_t;

static void s_on_reply_then_request(int kind, const uint8_t *body, size_t len, void *ud)
{
    chain_t *c = ud;
    s_on_reply(kind, body, len, &c->mine);
    if (kind == -1)
        c->hnext = router_broker_request(c->b, "kith.test", (const uint8_t *) "next", 4,
                                         s_on_reply, &c->next);
}

/* A raw DEALER worker named `id` that says READY. */
static zsock_t *s_raw_named(const char *ep, const char *id)
{
    zsock_t *raw = zsock_new(ZMQ_DEALER);
    assert_non_null(raw);
    zsock_set_identity(raw, id);
    assert_int_equal(zsock_connect(raw, "%s", ep), 0);
    s_raw_ready(raw);
    return raw;
}

/* Two workers of a host that died, one holding a request, one idle, both
 * silent past their span: the request lost makes the next (as the router's
 * callback does), and that one must wait for a live worker, not go to the
 * idle one, already silent past its span too. Before, it went to whichever
 * was idle when the heartbeat's pass had not reached it yet, and was lost
 * with it. The pass takes workers in the hash's order, so both orders are
 * run (the names swap). */
static void test_no_request_to_a_worker_past_its_span(void **state)
{
    (void) state;
    const char *names[2] = {"worker-x", "worker-y"};
    for (int round = 0; round < 2; round++) {
        runner_t r = {0};
        char ep[64];
        s_hb = 200;
        s_live = 3;
        s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
        s_hb = 100;
        s_live = 30;
        zsock_t *holder = s_raw_named(ep, names[round]);
        s_run(&r, s_workers_1, r.b);
        chain_t ch = {.b = r.b, .hnext = 0};
        assert_true(router_broker_request(r.b, "kith.test", (const uint8_t *) "first", 5,
                                          s_on_reply_then_request, &ch) > 0);
        s_run(&r, s_dispatched, r.b);
        zsock_t *idle = s_raw_named(ep, names[1 - round]);
        s_run(&r, s_workers_2, r.b);
        /* The holder's silence starts after the idle one's. */
        s_raw_send(holder, "MDPW02", 0x05, 0, NULL);
        all_t first = {&ch.mine, 1};
        s_run(&r, s_all_done, &first);
        assert_int_equal(ch.mine.lost, 1);
        s_run(&r, s_workers_0, r.b);
        assert_true(ch.hnext > 0);
        assert_int_equal(ch.next.lost, 0);
        assert_true(router_broker_queued(r.b, ch.hnext));
        echo_t *w = s_echo_start(ep, NULL, NULL);
        all_t next = {&ch.next, 1};
        s_run(&r, s_all_done, &next);
        assert_string_equal(ch.next.last, "f:next");
        router_broker_stats_t st;
        router_broker_stats(r.b, &st);
        assert_int_equal(st.expired, 2);
        assert_int_equal(st.lost, 1);
        s_echo_stop(&w);
        zsock_destroy(&holder);
        zsock_destroy(&idle);
        s_teardown(&r);
    }
}

static void s_noop_timer(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
}

/* A request whose loss takes every free timer slot of the loop for a
 * moment (200 ms), as the router's own timers could. */
typedef struct {
    router_loop_t *loop;
    reply_t rep;
    int hoarded;
} hoard_t;

static void s_on_lost_hoard(int kind, const uint8_t *body, size_t len, void *ud)
{
    hoard_t *h = ud;
    s_on_reply(kind, body, len, &h->rep);
    if (kind == -1)
        while (router_loop_timer_add(h->loop, 200, s_noop_timer, NULL))
            h->hoarded++;
}

typedef struct {
    hoard_t *h;
    zsock_t *talker;
} talk_t;

/* The request is lost; until then the talker says HEARTBEAT at each look. */
static bool s_lost_while_talking(void *ud)
{
    talk_t *t = ud;
    if (t->h->rep.lost)
        return true;
    s_raw_send(t->talker, "MDPW02", 0x05, 0, NULL);
    return false;
}

/* The callback of a request lost in a heartbeat's pass takes the timer slot
 * that heartbeat freed (every free one, here): the heartbeats go on, and a
 * worker silent after is expired. Before, the next beat was set after the
 * callbacks, could not be, and never ran again: no worker was beaten or
 * expired any more (each reconnected as a new one every span, the old
 * ones kept, until 1 024 refused every READY). */
static void test_beat_survives_a_full_timer_table(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64], err[256] = "";
    snprintf(ep, sizeof ep, "inproc://broker-test-%d", ++s_n);
    router_loop_opts_t lo = {.max_timers = 16};
    r.loop = router_loop_new(&lo);
    assert_non_null(r.loop);
    router_broker_opts_t o = {.loop = r.loop, .endpoint = ep, .heartbeat_ms = 50,
                              .liveness = 3};
    r.b = router_broker_new(&o, err, sizeof err);
    assert_non_null(r.b);
    zsock_t *holder = zsock_new_dealer(ep);
    assert_non_null(holder);
    s_raw_ready(holder);
    s_run(&r, s_workers_1, r.b);
    hoard_t h = {.loop = r.loop};
    assert_true(router_broker_request(r.b, "kith.test", (const uint8_t *) "q", 1,
                                      s_on_lost_hoard, &h) > 0);
    s_run(&r, s_dispatched, r.b);
    zsock_t *talker = zsock_new_dealer(ep);
    assert_non_null(talker);
    s_raw_ready(talker);
    s_run(&r, s_workers_2, r.b);
    talk_t t = {&h, talker};
    s_run(&r, s_lost_while_talking, &t); /* holder silent past its span */
    assert_true(h.hoarded > 0);
    s_run(&r, s_workers_0, r.b); /* and now the talker */
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.expired, 2);
    assert_int_equal(st.lost, 1);
    zsock_destroy(&holder);
    zsock_destroy(&talker);
    s_teardown(&r);
}

/* Log lines of module "workers" that contain `want`, counted by the tap. */
typedef struct {
    const char *want;
    atomic_int seen;
} log_seen_t;

static void s_log_tap(router_log_level_t level, const char *module, const char *line,
                      size_t len, void *ud)
{
    (void) level;
    log_seen_t *l = ud;
    if (strcmp(module, "workers") == 0 && memmem(line, len, l->want, strlen(l->want)))
        atomic_fetch_add(&l->seen, 1);
}

static bool s_workers_late_1(void *ud)
{
    return router_broker_workers(ud, "kith.late") == 1;
}

/* Every one of the 16 service slots has a worker: a READY for a 17th
 * service is refused (DISCONNECT, counted) and the log says why, not "bad
 * service name" as before; once a service has no worker left its slot
 * goes to the newcomer. */
static void test_ready_with_services_full(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    zsock_t *raw[ROUTER_BROKER_SERVICES_MAX];
    for (unsigned i = 0; i < ROUTER_BROKER_SERVICES_MAX; i++) {
        char name[16];
        snprintf(name, sizeof name, "svc-%u", i);
        raw[i] = zsock_new_dealer(ep);
        assert_non_null(raw[i]);
        s_raw_send(raw[i], "MDPW02", 0x01, 1, (const char *const[]) {name});
    }
    router_broker_stats_t st = {0};
    for (int i = 0; i < 6000 && st.workers < ROUTER_BROKER_SERVICES_MAX; i++) {
        s_settle(&r, 10);
        router_broker_stats(r.b, &st);
    }
    assert_int_equal(st.workers, ROUTER_BROKER_SERVICES_MAX);
    log_seen_t seen = {.want = "READY refused (too many services"};
    router_log_set_rate(0, 0); /* earlier tests' refusals at that line count for nothing */
    router_log_set_tap(s_log_tap, &seen);
    zsock_t *late = zsock_new_dealer(ep);
    assert_non_null(late);
    s_raw_send(late, "MDPW02", 0x01, 1, (const char *const[]) {"kith.late"});
    assert_int_equal(s_raw_next_cmd(&r, late), 0x06);
    router_log_set_tap(NULL, NULL);
    router_log_set_rate(ROUTER_LOG_BURST_DEFAULT, ROUTER_LOG_WINDOW_MS_DEFAULT);
    assert_int_equal(atomic_load(&seen.seen), 1);
    router_broker_stats(r.b, &st);
    assert_int_equal(st.refused, 1);
    assert_int_equal(router_broker_request(r.b, "kith.late", (const uint8_t *) "q", 1, s_on_reply,
                                           &(reply_t) {0}), -1);
    s_raw_send(raw[3], "MDPW02", 0x06, 0, NULL); /* svc-3's only worker leaves */
    s_raw_send(late, "MDPW02", 0x01, 1, (const char *const[]) {"kith.late"});
    s_run(&r, s_workers_late_1, r.b);
    for (unsigned i = 0; i < ROUTER_BROKER_SERVICES_MAX; i++)
        zsock_destroy(&raw[i]);
    zsock_destroy(&late);
    s_teardown(&r);
}

static bool s_workers_1_any_gone(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.workers == ROUTER_BROKER_WORKERS_MAX - 1;
}

static bool s_workers_max(void *ud)
{
    router_broker_stats_t st;
    router_broker_stats(ud, &st);
    return st.workers == ROUTER_BROKER_WORKERS_MAX;
}

/* 1 024 workers registered: one more READY is refused (DISCONNECT,
 * counted, and the log says why), the broker serving on; when one leaves,
 * the newcomer joins. */
/* Workers on workers.listen name at most ROUTER_BROKER_LISTEN_SERVICES_MAX
 * services: the other slots stay for the router's own. Before, READYs
 * there for made-up names took every slot free a moment (here kith.test's,
 * its only worker gone between two reconnects), and then the router's
 * requests for kith.test and its workers' READYs were refused for as long
 * as those connections stayed. */
static void test_listen_services_share(void **state)
{
    (void) state;
    s_listen_bounds(64, 64, 0);
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    const char *listen = router_broker_listen_endpoint(r.b);
    zsock_t *mine = zsock_new_dealer(ep);
    assert_non_null(mine);
    s_raw_ready(mine);
    s_run(&r, s_workers_1, r.b);
    enum { N = ROUTER_BROKER_SERVICES_MAX - 1 };
    zsock_t *rogue[N];
    for (unsigned i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "rogue-%u", i);
        rogue[i] = zsock_new_dealer(listen);
        assert_non_null(rogue[i]);
        s_raw_send(rogue[i], "MDPW02", 0x01, 1, (const char *const[]) {name});
    }
    const unsigned refused = N - ROUTER_BROKER_LISTEN_SERVICES_MAX;
    stats_want_t want = {r.b, 1 + ROUTER_BROKER_LISTEN_SERVICES_MAX, refused};
    s_run(&r, s_stats_reach, &want);
    s_settle(&r, 100);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.workers, 1 + ROUTER_BROKER_LISTEN_SERVICES_MAX);
    assert_int_equal(st.refused, refused);

    /* kith.test's worker goes; more strangers say READY at once. */
    s_raw_send(mine, "MDPW02", 0x06, 0, NULL);
    want = (stats_want_t){r.b, 0, refused};
    for (int i = 0; i < 6000; i++) {
        router_broker_stats(r.b, &st);
        if (st.workers == ROUTER_BROKER_LISTEN_SERVICES_MAX)
            break;
        s_settle(&r, 10);
    }
    assert_int_equal(st.workers, ROUTER_BROKER_LISTEN_SERVICES_MAX);
    zsock_t *more[3];
    for (unsigned i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "rogue-more-%u", i);
        more[i] = zsock_new_dealer(listen);
        assert_non_null(more[i]);
        s_raw_send(more[i], "MDPW02", 0x01, 1, (const char *const[]) {name});
    }
    want = (stats_want_t){r.b, 0, refused + 2};
    s_run(&r, s_stats_reach, &want);
    s_settle(&r, 100);
    router_broker_stats(r.b, &st);
    assert_int_equal(st.refused, refused + 3);
    assert_int_equal(st.workers, ROUTER_BROKER_LISTEN_SERVICES_MAX);
    /* The router's request for kith.test, and its worker back. */
    reply_t rep = {0};
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "q", 1, s_on_reply, &rep) > 0);
    zsock_destroy(&mine);
    mine = zsock_new_dealer(ep);
    assert_non_null(mine);
    s_raw_ready(mine);
    assert_int_equal(s_raw_next_cmd(&r, mine), 0x02);
    for (unsigned i = 0; i < N; i++)
        zsock_destroy(&rogue[i]);
    for (unsigned i = 0; i < 3; i++)
        zsock_destroy(&more[i]);
    zsock_destroy(&mine);
    s_teardown(&r);
}

/* Workers on workers.listen hold at most listen_workers_max of the 1 024
 * places (768 by default): the rest stay for the embedded workers. Before,
 * other processes' READYs could take every place, each one an embedded
 * worker left between two reconnects, and keep them all out. */
static void test_listen_workers_share(void **state)
{
    (void) state;
    s_listen_bounds(64, 64, 0);
    s_listen_workers_max = 3;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, "tcp://127.0.0.1:*", NULL, 0, ep, sizeof ep);
    const char *listen = router_broker_listen_endpoint(r.b);
    zsock_t *far[4];
    for (int i = 0; i < 4; i++) {
        far[i] = zsock_new_dealer(listen);
        assert_non_null(far[i]);
        s_raw_ready(far[i]);
    }
    stats_want_t want = {r.b, 3, 1};
    s_run(&r, s_stats_reach, &want);
    s_settle(&r, 100);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.workers, 3);
    assert_int_equal(st.refused, 1);
    /* The embedded one gets in past them. */
    zsock_t *mine = zsock_new_dealer(ep);
    assert_non_null(mine);
    s_raw_ready(mine);
    want = (stats_want_t){r.b, 4, 1};
    s_run(&r, s_stats_reach, &want);
    /* One far worker leaves: the refused one gets its place. */
    int refused_one = -1;
    for (int i = 0; i < 4 && refused_one < 0; i++) {
        raw_wait_t w = {far[i], -1};
        for (int k = 0; k < 20 && w.cmd < 0; k++) {
            s_settle(&r, 10);
            (void) s_raw_got(&w);
        }
        if (w.cmd == 0x06)
            refused_one = i;
    }
    assert_true(refused_one >= 0);
    int leaving = refused_one == 0 ? 1 : 0;
    s_raw_send(far[leaving], "MDPW02", 0x06, 0, NULL);
    s_run(&r, s_workers_3_any, r.b);
    s_raw_ready(far[refused_one]);
    want = (stats_want_t){r.b, 4, 1};
    s_run(&r, s_stats_reach, &want);
    for (int i = 0; i < 4; i++)
        zsock_destroy(&far[i]);
    zsock_destroy(&mine);
    s_teardown(&r);
}

static void test_ready_with_workers_full(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_live = 1000; /* raw workers never beat: none expires however slow this runs */
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    s_live = 30;
    zsock_t **raw = calloc(ROUTER_BROKER_WORKERS_MAX, sizeof *raw);
    assert_non_null(raw);
    for (unsigned i = 0; i < ROUTER_BROKER_WORKERS_MAX; i++) {
        raw[i] = zsock_new_dealer(ep);
        assert_non_null(raw[i]);
        s_raw_ready(raw[i]);
    }
    s_run(&r, s_workers_max, r.b);
    log_seen_t seen = {.want = "READY refused (too many workers"};
    router_log_set_rate(0, 0);
    router_log_set_tap(s_log_tap, &seen);
    zsock_t *late = zsock_new_dealer(ep);
    assert_non_null(late);
    s_raw_ready(late);
    assert_int_equal(s_raw_next_cmd(&r, late), 0x06);
    router_log_set_tap(NULL, NULL);
    router_log_set_rate(ROUTER_LOG_BURST_DEFAULT, ROUTER_LOG_WINDOW_MS_DEFAULT);
    assert_int_equal(atomic_load(&seen.seen), 1);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.workers, ROUTER_BROKER_WORKERS_MAX);
    s_raw_send(raw[7], "MDPW02", 0x06, 0, NULL);
    zsock_destroy(&raw[7]);
    s_run(&r, s_workers_1_any_gone, r.b);
    s_raw_ready(late);
    s_run(&r, s_workers_max, r.b);
    /* The newcomer is a worker like the others: it takes a request. */
    reply_t rep = {0};
    for (unsigned i = 0; i < ROUTER_BROKER_WORKERS_MAX; i++)
        assert_true(router_broker_request(r.b, "kith.test", (const uint8_t *) "q", 1, s_on_reply,
                                          &rep) > 0);
    assert_int_equal(s_raw_next_cmd(&r, late), 0x02);
    for (unsigned i = 0; i < ROUTER_BROKER_WORKERS_MAX; i++)
        zsock_destroy(&raw[i]);
    free(raw);
    zsock_destroy(&late);
    s_teardown(&r);
}

/* A flood of worker messages is read in batches, the loop taking turns
 * between them, and every message is handled in the end. */
static void test_flood_in_batches(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64];
    s_setup(&r, NULL, NULL, 0, ep, sizeof ep);
    zsock_t *raw = zsock_new_dealer(ep);
    assert_non_null(raw);
    s_raw_ready(raw);
    s_run(&r, s_workers_1_any, r.b);
    for (int i = 0; i < 300; i++)
        s_raw_reply(raw, 0x03, 12345, "stray"); /* it holds nothing: late */
    s_run(&r, s_late_300, r.b);
    router_broker_stats_t st;
    router_broker_stats(r.b, &st);
    assert_int_equal(st.late_replies, 300);
    assert_int_equal(st.workers, 1);
    zsock_destroy(&raw);
    s_teardown(&r);
}

/* What the broker says when its start cannot go on: a listen endpoint in
 * use, a certificate file that is not one; with a metrics registry the
 * broker's series exist. */
/* A flood of requests for service names no worker serves, each refused
 * (a body over the bound) or queued and given up (cancelled), as the
 * router's own bugs or a worker's READY churn could make: the 16 service
 * slots are reused, the kith_workers_alive series stay bounded, and a real
 * service is still served after. Before, every name kept its slot for
 * good, so after 16 names every request for a new service (kith.audit
 * starting late, say) was refused. */
static void test_service_names_flood(void **state)
{
    (void) state;
    runner_t r = {0};
    char ep[64], err[256] = "";
    snprintf(ep, sizeof ep, "inproc://broker-test-%d", ++s_n);
    r.loop = router_loop_new(NULL);
    assert_non_null(r.loop);
    router_metrics_t *m = router_metrics_new();
    assert_non_null(m);
    router_broker_opts_t o = {.loop = r.loop, .endpoint = ep, .heartbeat_ms = s_hb, .liveness = s_live,
                              .metrics = m};
    r.b = router_broker_new(&o, err, sizeof err);
    assert_non_null(r.b);
    static uint8_t big[ROUTER_MDP_BODY_MAX + 1];
    reply_t rep = {0};
    /* The real service is known first, as kith.agent and kith.audit are at
     * start: its series is kept whatever names come after. */
    int64_t first = router_broker_request(r.b, "kith.test", (uint8_t *) "x", 1, s_on_reply, &rep);
    assert_true(first > 0);
    router_broker_cancel(r.b, first);
    for (int i = 0; i < 10000; i++) {
        char name[32];
        snprintf(name, sizeof name, "made.up.%d", i);
        if (i % 2) {
            assert_int_equal(router_broker_request(r.b, name, big, sizeof big, s_on_reply, &rep), -1);
        } else {
            int64_t h = router_broker_request(r.b, name, (uint8_t *) "x", 1, s_on_reply, &rep);
            if (h <= 0)
                fail_msg("request %d for a new service refused", i);
            router_broker_cancel(r.b, h);
        }
    }
    assert_true(router_broker_request(r.b, "kith.test", (uint8_t *) "q", 1, s_on_reply, &rep) > 0);
    echo_t *w = s_echo_start(ep, NULL, NULL);
    all_t one = {&rep, 1};
    s_run(&r, s_all_done, &one);
    assert_string_equal(rep.last, "f:q");
    assert_int_equal(rep.partials + rep.lost, 1); /* the cancelled ones never ran */
    static char text[1 << 17];
    assert_true(router_metrics_render(m, text, sizeof text) > 0);
    size_t series = 0;
    for (const char *p = text; (p = strstr(p, "kith_workers_alive{")); p++)
        series++;
    assert_true(series > 0 && series <= ROUTER_BROKER_SERVICES_MAX * 4);
    assert_non_null(strstr(text, "kith_workers_alive{service=\"kith.test\"} 1"));
    s_echo_stop(&w);
    s_teardown(&r);
    router_metrics_destroy(&m);
}

/* True when the file at `path` holds the text `what`. */
static bool s_file_has(const char *path, const char *what)
{
    char buf[4096] = "";
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, what) != NULL;
}

/* Makes a $KITH_HOME whose path is `len` bytes long under `base`. */
static void s_home_of_length(const char *base, size_t len, char *home, size_t cap)
{
    size_t n = (size_t) snprintf(home, cap, "%s/", base);
    assert_true(len > n && len < cap);
    memset(home + n, 'h', len - n);
    home[len] = '\0';
    assert_int_equal(mkdir(home, 0700), 0);
}

/* The broker's CURVE certificate under a long $KITH_HOME. CZMQ builds the
 * secret file's name "<path>_secret" in 256 bytes and cuts it silently:
 * with workers/broker.cert at 255 bytes, the secret key was written over
 * broker.cert itself (the public file operators hand to workers, 0644),
 * and past that into whatever file the cut name named. Now such a home is
 * refused, with the reason; the longest that fits works as ever. */
static void test_curve_home_too_long_for_czmq(void **state)
{
    (void) state;
    char base[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(base));
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    const size_t cert_rel = strlen("/" ROUTER_BROKER_CURVE_CERT);
    char home[400], cert[512], secret[520], err[512];
    for (int round = 0; round < 2; round++) {
        /* the secret's name at 262, 256 bytes (the cert at 255, 249): refused */
        size_t secret_len = round == 0 ? 262 : 256;
        char sub[400];
        snprintf(sub, sizeof sub, "%s/%d", base, round);
        assert_int_equal(mkdir(sub, 0700), 0);
        s_home_of_length(sub, secret_len - 7 - cert_rel, home, sizeof home);
        snprintf(cert, sizeof cert, "%s/%s", home, ROUTER_BROKER_CURVE_CERT);
        char ep[64];
        snprintf(ep, sizeof ep, "inproc://broker-test-long-home-%d", round);
        router_broker_opts_t o = {.loop = loop, .endpoint = ep, .listen = "tcp://lo:*",
                                  .home = home};
        err[0] = '\0';
        router_broker_t *b = router_broker_new(&o, err, sizeof err);
        if (b) {
            /* the old way: where did the secret go? */
            fprintf(stderr, "broker.cert holds the secret key: %d\n",
                    s_file_has(cert, "secret-key"));
            router_broker_destroy(&b);
        }
        assert_null(b);
        assert_non_null(strstr(err, "past the 255 CZMQ can write a certificate's secret to"));
        assert_int_not_equal(access(cert, F_OK), 0);
    }
    /* The secret's name at 255: made, the secret in its own file only. */
    char sub[400];
    snprintf(sub, sizeof sub, "%s/fits", base);
    assert_int_equal(mkdir(sub, 0700), 0);
    s_home_of_length(sub, 255 - 7 - cert_rel, home, sizeof home);
    snprintf(cert, sizeof cert, "%s/%s", home, ROUTER_BROKER_CURVE_CERT);
    snprintf(secret, sizeof secret, "%s_secret", cert);
    assert_int_equal(strlen(secret), 255);
    router_broker_opts_t o = {.loop = loop, .endpoint = "inproc://broker-test-long-home-fits",
                              .listen = "tcp://lo:*", .home = home};
    router_broker_t *b = router_broker_new(&o, err, sizeof err);
    assert_non_null(b);
    router_broker_destroy(&b);
    assert_false(s_file_has(cert, "secret-key"));
    assert_true(s_file_has(secret, "secret-key"));
    struct stat sb;
    assert_int_equal(stat(secret, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    router_loop_destroy(&loop);
    s_rm_rf(base);
}

/* CURVE files that cannot be made, each refused with a reason that names
 * the file, nothing left behind and nothing written elsewhere: a $KITH_HOME
 * that does not exist, one past ROUTER_PATH_MAX, a link planted where the
 * secret goes (never followed: its target is not made), broker.cert a
 * directory (the secret file made 0600 for it is taken back). Then, the
 * obstacle gone, the broker starts. */
static void test_curve_files_that_cannot_be_made(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    char home[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(home));
    char err[512], path[600], secret[620], target[600];
    int n = 0;
    router_broker_opts_t o = {.loop = loop, .listen = "tcp://lo:*"};
    char ep[64];

    snprintf(path, sizeof path, "%s/missing", home);
    o.home = path;
    snprintf(ep, sizeof ep, "inproc://broker-test-files-%d", ++n);
    o.endpoint = ep;
    assert_null(router_broker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "/missing/workers: No such file or directory"));

    char *huge = malloc(ROUTER_PATH_MAX + 16);
    assert_non_null(huge);
    memset(huge, 'x', ROUTER_PATH_MAX + 15);
    huge[0] = '/';
    huge[ROUTER_PATH_MAX + 15] = '\0';
    o.home = huge;
    snprintf(ep, sizeof ep, "inproc://broker-test-files-%d", ++n);
    assert_null(router_broker_new(&o, err, sizeof err));
    assert_string_equal(err, "workers: home path too long");
    free(huge);

    o.home = home;
    snprintf(path, sizeof path, "%s/workers", home);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/%s", home, ROUTER_BROKER_CURVE_CERT);
    snprintf(secret, sizeof secret, "%s_secret", path);
    snprintf(target, sizeof target, "%s/stolen", home);
    assert_int_equal(symlink(target, secret), 0);
    snprintf(ep, sizeof ep, "inproc://broker-test-files-%d", ++n);
    assert_null(router_broker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "workers: cannot create "));
    assert_non_null(strstr(err, "broker.cert_secret: File exists"));
    assert_int_not_equal(access(target, F_OK), 0);
    assert_int_not_equal(access(path, F_OK), 0);
    assert_int_equal(unlink(secret), 0);

    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(ep, sizeof ep, "inproc://broker-test-files-%d", ++n);
    assert_null(router_broker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "workers: cannot write "));
    assert_int_not_equal(access(secret, F_OK), 0);
    assert_int_equal(rmdir(path), 0);

    snprintf(ep, sizeof ep, "inproc://broker-test-files-%d", ++n);
    router_broker_t *b = router_broker_new(&o, err, sizeof err);
    assert_non_null(b);
    assert_non_null(router_broker_curve_public(b));
    router_broker_destroy(&b);
    router_loop_destroy(&loop);
    s_rm_rf(home);
}

static void test_new_refusals(void **state)
{
    (void) state;
    router_loop_t *loop = router_loop_new(NULL);
    assert_non_null(loop);
    router_metrics_t *m = router_metrics_new();
    assert_non_null(m);
    char err[256] = "";
    router_broker_opts_t o = {.loop = loop, .endpoint = "inproc://broker-test-new-refusals-1",
                              .listen = "tcp://127.0.0.1:*", .metrics = m};
    router_broker_t *b = router_broker_new(&o, err, sizeof err);
    assert_non_null(b);
    reply_t rep = {0};
    assert_true(router_broker_request(b, "kith.test", (uint8_t *) "q", 1, s_on_reply, &rep) > 0);
    char text[8192];
    assert_true(router_metrics_render(m, text, sizeof text) > 0);
    assert_non_null(strstr(text, "kith_broker_requests_total 1"));
    assert_non_null(strstr(text, "kith_workers_alive{service=\"kith.test\"} 0"));
    char taken[128];
    snprintf(taken, sizeof taken, "%s", router_broker_listen_endpoint(b));
    router_broker_opts_t o2 = {.loop = loop, .endpoint = "inproc://broker-test-new-refusals-2",
                               .listen = taken};
    assert_null(router_broker_new(&o2, err, sizeof err));
    assert_non_null(strstr(err, "workers: cannot bind tcp://127.0.0.1:"));
    router_broker_destroy(&b);
    router_metrics_destroy(&m);

    char home[] = "/tmp/kith-broker-test-XXXXXX";
    assert_non_null(mkdtemp(home));
    char path[512];
    snprintf(path, sizeof path, "%s/workers", home);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/workers/broker.cert_secret", home);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("curve\n    public-key = \"not a key\"\n", f); /* CZMQ's syntax, no keys */
    fclose(f);
    router_broker_opts_t o3 = {.loop = loop, .endpoint = "inproc://broker-test-new-refusals-3",
                               .listen = "tcp://lo:*", .home = home};
    assert_null(router_broker_new(&o3, err, sizeof err));
    assert_non_null(strstr(err, "is not a CZMQ certificate with a secret key"));
    s_rm_rf(home);
    router_loop_destroy(&loop);
}

int main(void)
{
    /* 1 024 workers and the broker's own sockets: more than CZMQ's
     * default of 1 024 sockets (test_ready_with_workers_full). */
    zsys_set_max_sockets(ROUTER_BROKER_WORKERS_MAX * 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_lru),
        cmocka_unit_test(test_dead_worker),
        cmocka_unit_test(test_disconnect_holding),
        cmocka_unit_test(test_reconnect_same_identity_holding),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_queue_bound_and_cancel),
        cmocka_unit_test(test_endpoint_is_local),
        cmocka_unit_test(test_curve),
        cmocka_unit_test(test_curve_authorized_not_a_directory),
        cmocka_unit_test(test_listen_pending_bounds),
        cmocka_unit_test(test_listen_worker_forgotten),
        cmocka_unit_test(test_listen_accept_without_memory),
        cmocka_unit_test(test_destroy_says_disconnect),
        cmocka_unit_test(test_listen_ready_on_reused_descriptor),
        cmocka_unit_test(test_listen_ipc),
        cmocka_unit_test(test_listen_ipc_abstract),
        cmocka_unit_test(test_listen_ready_on_a_cut_connection),
        cmocka_unit_test(test_listen_left_over_the_share),
        cmocka_unit_test(test_listen_ipv6),
        cmocka_unit_test(test_refusals_and_teardown),
        cmocka_unit_test(test_new_out_of_memory),
        cmocka_unit_test(test_new_curve_out_of_memory),
        cmocka_unit_test(test_full_worker_keeps_request),
        cmocka_unit_test(test_cancel_held_and_queued),
        cmocka_unit_test(test_request_and_ready_without_memory),
        cmocka_unit_test(test_no_request_to_a_worker_past_its_span),
        cmocka_unit_test(test_beat_survives_a_full_timer_table),
        cmocka_unit_test(test_ready_with_services_full),
        cmocka_unit_test(test_ready_with_workers_full),
        cmocka_unit_test(test_listen_services_share),
        cmocka_unit_test(test_listen_workers_share),
        cmocka_unit_test(test_flood_in_batches),
        cmocka_unit_test(test_new_refusals),
        cmocka_unit_test(test_curve_home_too_long_for_czmq),
        cmocka_unit_test(test_curve_files_that_cannot_be_made),
        cmocka_unit_test(test_service_names_flood),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    zsys_shutdown();
    return rc;
}
