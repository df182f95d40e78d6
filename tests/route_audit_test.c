/* tests/route_audit_test.c — what /api/audit and /api/audit/verify put in
 * front of the audit worker, which also writes the log (WIRE §21.8): a
 * stand-in worker holds each request until the test lets it go, so the
 * test sees exactly what reached it. Verifies asked while one is at the
 * worker share its answer (one request), queries past
 * GATEWAY_AUDIT_QUERIES_MAX are answered 503 at once, the worker's
 * `partial` reaches the client, its longest audit-verified fits, and an
 * answer comes with the loop's timers all taken. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/routes_audit.h"
#include "proto/audit_msg.h"
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/state/tokens.h"
#include "router/workers/broker.h"
#include "router/workers/mdp_worker.h"
#include "alloc_fail.h"
#include "loop_until.h"

#define CLIENTS 8

/* ------------------------------------------------------------ the worker */

/* A kith.audit worker on its own thread that answers its n-th request only
 * once `release` reaches n. */
typedef struct {
    const char *ep;
    pthread_t thread;
    atomic_int got;      /* requests received */
    atomic_int release;  /* requests it may answer */
    atomic_bool stop;
    atomic_int verifies, queries;
    atomic_bool longest; /* a verify is answered with the longest audit-verified */
} fake_t;

static void *s_fake_main(void *ud)
{
    fake_t *k = ud;
    char err[256];
    router_mdp_worker_opts_t o = {.endpoint = k->ep, .service = ROUTER_AUDIT_SERVICE,
                                  .heartbeat_ms = 100, .liveness = 50};
    router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
    if (!w) {
        fprintf(stderr, "worker: %s\n", err);
        return NULL;
    }
    while (!atomic_load(&k->stop)) {
        uint8_t *body;
        size_t len;
        if (router_mdp_worker_recv(w, &body, &len, 20) != 1)
            continue;
        proto_audit_msg_t req;
        proto_audit_err_t e;
        int decoded = proto_audit_msg_decode(body, len, &req, &e);
        free(body);
        int n = atomic_fetch_add(&k->got, 1) + 1;
        while (atomic_load(&k->release) < n && !atomic_load(&k->stop))
            usleep(1000);
        proto_audit_text_t rec = {"{\"seq\":1}", 9};
        proto_audit_msg_t m = {.kind = PROTO_AUDIT_ERROR, .code = "bad_request", .code_len = 11};
        char reason[PROTO_AUDIT_REASON_MAX];
        memset(reason, 0x01, sizeof reason);
        if (decoded == 0 && req.kind == PROTO_AUDIT_VERIFY && atomic_load(&k->longest)) {
            /* Every member there, every number 20 digits, and a reason of
             * control bytes (each 6 in JSON): what the decoder lets through. */
            atomic_fetch_add(&k->verifies, 1);
            m = (proto_audit_msg_t){.kind = PROTO_AUDIT_VERIFIED, .checked = UINT64_MAX,
                                    .has_first_bad = true, .first_bad = UINT64_MAX,
                                    .files = UINT64_MAX, .has_first_seq = true,
                                    .first_seq = UINT64_MAX, .reason = reason,
                                    .reason_len = sizeof reason};
        } else if (decoded == 0 && req.kind == PROTO_AUDIT_VERIFY) {
            atomic_fetch_add(&k->verifies, 1);
            m = (proto_audit_msg_t){.kind = PROTO_AUDIT_VERIFIED, .ok = true, .checked = (uint64_t) n,
                                    .files = 1, .has_first_seq = true, .first_seq = 1};
        } else if (decoded == 0 && req.kind == PROTO_AUDIT_QUERY) {
            atomic_fetch_add(&k->queries, 1);
            m = (proto_audit_msg_t){.kind = PROTO_AUDIT_RECORDS, .records = &rec, .n_records = 1,
                                    .partial = true};
        }
        if (decoded == 0)
            proto_audit_msg_clear(&req);
        uint8_t *out = NULL;
        size_t olen = 0;
        if (proto_audit_msg_encode(&m, &out, &olen, &e) == 0)
            (void) router_mdp_worker_final(w, out, olen);
        free(out);
    }
    router_mdp_worker_destroy(&w);
    return NULL;
}

/* ------------------------------------------------------------ the fixture */

static int s_n;
static unsigned s_max_timers; /* the loop's max_timers, 0: the default */

typedef struct {
    char ep[64];
    router_loop_t *loop;
    router_broker_t *broker;
    router_tokens_t *tokens;
    gateway_auth_t *auth;
    gateway_http_t *gw;
    gateway_route_audit_t *audit;
    uint16_t port;
    fake_t fake;
} fix_t;

static int s_setup(void **state)
{
    fix_t *f = calloc(1, sizeof *f);
    snprintf(f->ep, sizeof f->ep, "inproc://route-audit-test-%d", ++s_n);
    char err[256] = "";
    router_loop_opts_t lo = {.max_timers = s_max_timers};
    if (!f || !(f->loop = router_loop_new(&lo)))
        return -1;
    router_broker_opts_t bo = {.loop = f->loop, .endpoint = f->ep, .heartbeat_ms = 100,
                               .liveness = 50};
    if (!(f->broker = router_broker_new(&bo, err, sizeof err)) ||
        !(f->tokens = router_tokens_new(NULL, f->loop, err, sizeof err))) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    gateway_auth_opts_t ao = {.require_pairing = false};
    router_addr_t addr, bound;
    if (!(f->auth = gateway_auth_new(f->tokens, &ao)) || !(f->gw = gateway_http_new(f->loop, NULL)) ||
        !(f->audit = gateway_route_audit_new(f->gw, f->loop, f->broker, f->auth)) ||
        router_addr_parse("127.0.0.1:0", &addr, NULL) != 0 ||
        gateway_http_listen(f->gw, &addr, &bound) != 0)
        return -1;
    f->port = router_addr_port(&bound);
    f->fake.ep = f->ep;
    if (pthread_create(&f->fake.thread, NULL, s_fake_main, &f->fake) != 0)
        return -1;
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fix_t *f = *state;
    atomic_store(&f->fake.stop, true);
    pthread_join(f->fake.thread, NULL);
    gateway_route_audit_destroy(&f->audit);
    gateway_http_destroy(&f->gw);
    gateway_auth_destroy(&f->auth);
    router_tokens_destroy(&f->tokens);
    router_broker_destroy(&f->broker);
    router_loop_destroy(&f->loop);
    free(f);
    return 0;
}

/* ------------------------------------------------------------ the loop */

/* Runs the loop until until(ud) holds (checked every 2 ms), at most 60 s
 * (a hang, not a timing). */
static void s_run(fix_t *f, bool (*until)(void *), void *ud)
{
    test_loop_until(f->loop, until, ud, 2, 60000);
}

/* ------------------------------------------------------------ clients */

typedef struct {
    int fd;
    char buf[4096];
    size_t len;
} client_t;

static void s_get(fix_t *f, client_t *c, const char *path)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(f->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *) &sa, sizeof sa), 0); /* the backlog takes it */
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    assert_int_equal(send(c->fd, req, (size_t) n, MSG_NOSIGNAL), n);
    assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
}

/* Reads what came; true once the server closed (Connection: close). */
static bool s_answered(client_t *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
        if (n > 0) {
            c->len += (size_t) n;
            c->buf[c->len] = '\0';
            continue;
        }
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    }
}

static const char *s_body(const client_t *c)
{
    const char *b = strstr(c->buf, "\r\n\r\n");
    return b ? b + 4 : "";
}

typedef struct {
    client_t *c;
    size_t n;
} clients_t;

static bool s_all_answered(void *ud)
{
    clients_t *cs = ud;
    bool all = true;
    for (size_t i = 0; i < cs->n; i++)
        all = s_answered(&cs->c[i]) && all;
    return all;
}

typedef struct {
    fix_t *f;
    size_t waiting;
    int got;
} at_t;

/* The route holds `waiting` answers and the worker has `got` requests. */
static bool s_reached(void *ud)
{
    at_t *a = ud;
    return gateway_route_audit_waiting(a->f->audit) == a->waiting &&
           atomic_load(&a->f->fake.got) == a->got;
}

/* ------------------------------------------------------------ tests */

/* The broker holds no request: the worker's last FINAL came in. */
static bool s_broker_idle(void *ud)
{
    fix_t *f = ud;
    router_broker_stats_t st;
    router_broker_stats(f->broker, &st);
    return st.in_flight == 0 && st.queued == 0 && st.workers_idle == 1;
}

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop, (void) id, (void) ud;
    fail_msg("a filler timer fired");
}

static void test_verifies_share_one(void **state)
{
    fix_t *f = *state;
    client_t c[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        s_get(f, &c[i], "/api/audit/verify");
    /* One verify reached the worker; the rest wait for its answer. */
    s_run(f, s_reached, &(at_t){f, CLIENTS, 1});
    atomic_store(&f->fake.release, 1);
    s_run(f, s_all_answered, &(clients_t){c, CLIENTS});
    for (int i = 0; i < CLIENTS; i++) {
        assert_non_null(strstr(c[i].buf, "HTTP/1.1 200 "));
        assert_string_equal(s_body(&c[i]),
                            "{\"ok\":true,\"records\":1,\"files\":1,\"first_seq\":1}");
        close(c[i].fd);
    }
    assert_int_equal(atomic_load(&f->fake.verifies), 1);
    assert_int_equal(gateway_route_audit_waiting(f->audit), 0);

    /* A verify asked after that answer is a request of its own. */
    client_t again;
    s_get(f, &again, "/api/audit/verify");
    atomic_store(&f->fake.release, 2);
    s_run(f, s_all_answered, &(clients_t){&again, 1});
    assert_non_null(strstr(s_body(&again), "\"records\":2,"));
    close(again.fd);
    assert_int_equal(atomic_load(&f->fake.verifies), 2);
}

typedef struct {
    client_t *c;
    size_t n, want;
} count_t;

/* `want` of the clients have been answered. */
static bool s_count_answered(void *ud)
{
    count_t *k = ud;
    size_t done = 0;
    for (size_t i = 0; i < k->n; i++)
        done += s_answered(&k->c[i]);
    return done == k->want;
}

static void test_queries_bounded(void **state)
{
    fix_t *f = *state;
    client_t c[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        s_get(f, &c[i], "/api/audit?limit=5");
    /* GATEWAY_AUDIT_QUERIES_MAX go to the broker (the worker holds the
     * first, the broker queues the rest); the others are answered at once,
     * whichever the server read last. */
    s_run(f, s_reached, &(at_t){f, GATEWAY_AUDIT_QUERIES_MAX, 1});
    s_run(f, s_count_answered, &(count_t){c, CLIENTS, CLIENTS - GATEWAY_AUDIT_QUERIES_MAX});
    bool held[CLIENTS];
    for (size_t i = 0; i < CLIENTS; i++) {
        held[i] = !s_answered(&c[i]);
        if (held[i])
            continue;
        assert_non_null(strstr(c[i].buf, "HTTP/1.1 503 "));
        assert_non_null(strstr(s_body(&c[i]), "\"code\":\"audit_unavailable\""));
        assert_non_null(strstr(s_body(&c[i]), "busy with other queries"));
    }
    /* A verify is not a query: it still goes (behind the queries). */
    client_t v;
    s_get(f, &v, "/api/audit/verify");
    s_run(f, s_reached, &(at_t){f, GATEWAY_AUDIT_QUERIES_MAX + 1, 1});
    atomic_store(&f->fake.release, 100);
    s_run(f, s_all_answered, &(clients_t){c, CLIENTS});
    for (size_t i = 0; i < CLIENTS; i++) {
        if (held[i]) {
            assert_non_null(strstr(c[i].buf, "HTTP/1.1 200 "));
            assert_string_equal(s_body(&c[i]), "{\"records\":[{\"seq\":1}],\"partial\":true}");
        }
        close(c[i].fd);
    }
    s_run(f, s_all_answered, &(clients_t){&v, 1});
    assert_non_null(strstr(v.buf, "HTTP/1.1 200 "));
    close(v.fd);
    assert_int_equal(atomic_load(&f->fake.queries), GATEWAY_AUDIT_QUERIES_MAX);
    /* With the queries answered, a new one goes. */
    client_t q;
    s_get(f, &q, "/api/audit");
    s_run(f, s_all_answered, &(clients_t){&q, 1});
    assert_non_null(strstr(q.buf, "HTTP/1.1 200 "));
    close(q.fd);
    assert_int_equal(atomic_load(&f->fake.queries), GATEWAY_AUDIT_QUERIES_MAX + 1);
}

/* The longest answer the worker's audit-verified can make fits the
 * route's buffer (it overflowed the stack by 23 bytes: ASan). */
static void test_verified_longest(void **state)
{
    fix_t *f = *state;
    atomic_store(&f->fake.longest, true);
    atomic_store(&f->fake.release, 100);
    client_t c;
    s_get(f, &c, "/api/audit/verify");
    s_run(f, s_all_answered, &(clients_t){&c, 1});
    close(c.fd);
    assert_non_null(strstr(c.buf, "HTTP/1.1 200 "));
    char want[256 + 6 * PROTO_AUDIT_REASON_MAX], *w = want;
    w += sprintf(w, "{\"ok\":false,\"records\":%llu,\"first_bad\":%llu,\"files\":%llu,"
                    "\"first_seq\":%llu,\"reason\":\"",
                 (unsigned long long) UINT64_MAX, (unsigned long long) UINT64_MAX,
                 (unsigned long long) UINT64_MAX, (unsigned long long) UINT64_MAX);
    for (unsigned i = 0; i < PROTO_AUDIT_REASON_MAX; i++)
        w += sprintf(w, "\\u0001");
    strcpy(w, "\"}");
    assert_string_equal(s_body(&c), want);
}

static int s_setup_few_timers(void **state)
{
    s_max_timers = 64;
    int rc = s_setup(state);
    s_max_timers = 0;
    return rc;
}

/* Takes every timer slot the loop has left but `spare`; returns how many
 * it took, into ids. */
static unsigned s_timers_fill(fix_t *f, uint64_t *ids, unsigned cap, unsigned spare)
{
    unsigned n = 0;
    while (n < cap && (ids[n] = router_loop_timer_add(f->loop, 3600000, s_never, NULL)))
        n++;
    assert_true(n < cap); /* all taken */
    for (unsigned i = 0; i < spare && n > 0; i++)
        assert_int_equal(router_loop_timer_cancel(f->loop, ids[--n]), 0);
    return n;
}

typedef struct {
    fix_t *f;
    client_t *c;
    int got;
} held_t;

/* The client was answered (or cut), or the worker holds its request. */
static bool s_answered_or_held(void *ud)
{
    held_t *h = ud;
    return s_answered(h->c) || atomic_load(&h->f->fake.got) > h->got;
}

/* With the loop's timers all taken, an answer still comes. The timeout
 * could not be armed (the route logs that it waits for the worker), then
 * the worker's reply was kept for a timer that could not be had either,
 * and the client waited for ever. Each round leaves one more timer free
 * when the request comes, so the shortage falls on each timer it needs in
 * turn (the connection's, the timeout); when the worker answers, none is
 * free but the test's own loop_until check's. */
static void test_no_timer_still_answers(void **state)
{
    fix_t *f = *state;
    enum { FILL = 64 };
    unsigned reached = 0; /* rounds whose request reached the worker */
    for (unsigned spare = 1; spare <= 6; spare++) {
        uint64_t ids[2 * FILL];
        int got = atomic_load(&f->fake.got);
        unsigned n = s_timers_fill(f, ids, FILL, spare); /* + 1 for loop_until */
        client_t c;
        s_get(f, &c, spare % 2 ? "/api/audit/verify" : "/api/audit?limit=1");
        s_run(f, s_answered_or_held, &(held_t){f, &c, got});
        bool held = atomic_load(&f->fake.got) > got;
        if (held) { /* now no timer is left */
            n += s_timers_fill(f, ids + n, FILL, 1);
            atomic_store(&f->fake.release, got + 1);
        }
        s_run(f, s_all_answered, &(clients_t){&c, 1});
        close(c.fd);
        /* The worker's answer; or, with no timer even to bound the
         * connection's close, the connection cut (the loop's rule), but
         * the route has answered and let the request go. Cut at once, never
         * reaching the route, when its connection had no timer. */
        if (c.len)
            assert_non_null(strstr(c.buf, "HTTP/1.1 200 "));
        assert_true(held || c.len == 0);
        assert_int_equal(gateway_route_audit_waiting(f->audit), 0);
        reached += held;
        while (n > 0)
            assert_int_equal(router_loop_timer_cancel(f->loop, ids[--n]), 0);
    }
    assert_true(reached > 0);
    assert_int_equal(gateway_route_audit_waiting(f->audit), 0);
}

/* Each allocation the loop thread makes for one query and one verify
 * fails in turn: every run is answered (200, or 503 "out of memory") or
 * cut, the route lets every request go, and the next request is served. */
static void test_without_memory(void **state)
{
    fix_t *f = *state;
    atomic_store(&f->fake.release, 1000000);
    const char *paths[] = {"/api/audit?limit=1", "/api/audit/verify"};
    for (int p = 0; p < 2; p++) {
        for (long i = 0;; i++) {
            assert_true(i < ALLOC_FAIL_RUNS_MAX);
            client_t c;
            s_get(f, &c, paths[p]);
            alloc_fail_arm(i);
            s_run(f, s_all_answered, &(clients_t){&c, 1});
            unsigned failed = alloc_fail_disarm();
            close(c.fd);
            /* The worker is well: a refusal says the router is short of
             * memory, never that the worker went away, sent something
             * unreadable or has a full queue. */
            if (c.len && !strstr(c.buf, "HTTP/1.1 200 "))
                assert_string_equal(s_body(&c),
                                    "{\"error\":\"out of memory\",\"code\":\"audit_unavailable\"}");
            s_run(f, s_reached, &(at_t){f, 0, atomic_load(&f->fake.got)});
            client_t again;
            s_get(f, &again, paths[p]);
            s_run(f, s_all_answered, &(clients_t){&again, 1});
            close(again.fd);
            assert_non_null(strstr(again.buf, "HTTP/1.1 200 "));
            if (failed == 0)
                break;
        }
    }
}

/* The route destroyed (the daemon stopping) with a query at the worker
 * and a verify waiting: each is answered 503, and the worker's late
 * answer finds nothing (the broker forgot the requests). */
static void test_destroy_answers_waiters(void **state)
{
    fix_t *f = *state;
    client_t c[2];
    s_get(f, &c[0], "/api/audit?limit=1");
    s_get(f, &c[1], "/api/audit/verify");
    s_run(f, s_reached, &(at_t){f, 2, 1});
    gateway_route_audit_destroy(&f->audit);
    assert_null(f->audit);
    atomic_store(&f->fake.release, 100);
    s_run(f, s_all_answered, &(clients_t){c, 2});
    for (int i = 0; i < 2; i++) {
        close(c[i].fd);
        assert_non_null(strstr(c[i].buf, "HTTP/1.1 503 "));
        assert_string_equal(s_body(&c[i]),
                            "{\"error\":\"the daemon is stopping\",\"code\":\"audit_unavailable\"}");
    }
    /* The worker answers what it held; the broker drops it (no callback
     * into the freed route: ASan). */
    s_run(f, s_broker_idle, f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_verifies_share_one, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_queries_bounded, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_verified_longest, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_no_timer_still_answers, s_setup_few_timers,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_without_memory, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_answers_waiters, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
