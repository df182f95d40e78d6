/* tests/route_webhook_test.c — POST /webhook and POST
 * /sessions/{id}/external-events (gateway/route_webhook.c) over real
 * sockets, on a gateway whose inbox is a real state.db: the loop thread
 * out of memory at each allocation of a request in turn, and an inbox
 * whose commits fail. Whatever fails, a 202 is answered only for an entry
 * that is durable, every other answer is a typed 5xx JSON error, the
 * server goes on serving, and a retry with the same X-Idempotency-Key
 * stores its entry exactly once (tests/alloc_fail.h, tests/vfs_fail.h).
 *
 * No test depends on timing: a client read that waits longer than the
 * hang guard fails the test instead of hanging it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "alloc_fail.h"
#include "alloc_fail_loop.h"
#include "loop_timer_fill.h"
#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/routes_auth.h"
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/state/inbox.h"
#include "router/state/tokens.h"
#include "vfs_fail.h"

/* A client read that waits this long has hung: fail instead. */
#define HANG_GUARD_S 30

/* ---------------------------------------------------------------- the server */

typedef struct {
    char dir[64];               /* a fresh temp directory */
    char db[128];               /* dir/state.db: the inbox */
    router_loop_t *loop;
    gateway_http_t *gw;
    router_tokens_t *tokens;    /* in memory: the idempotency keys */
    gateway_auth_t *auth;       /* pairing off: no bearer needed */
    router_inbox_t *inbox;
    gateway_ingress_t *ingress;
    pthread_t thread;
    uint16_t port;
} s_srv_t;

static void *s_loop_main(void *arg)
{
    s_srv_t *s = arg;
    assert_int_equal(router_loop_run(s->loop), 0);
    gateway_ingress_destroy(&s->ingress); /* after the loop, before the gateway */
    gateway_http_destroy(&s->gw);
    router_tokens_stop(s->tokens);
    router_loop_destroy(&s->loop);
    return NULL;
}

static router_inbox_t *s_inbox_open(const s_srv_t *s)
{
    char err[256];
    router_inbox_opts_t io = {.capacity = 4096, .db_path = s->db, .session = "gateway"};
    router_inbox_t *in = router_inbox_new(&io, err, sizeof err);
    if (!in)
        fail_msg("inbox: %s", err);
    return in;
}

static unsigned s_max_timers; /* the loop's max_timers, 0: the default */

static void s_srv_start(s_srv_t *s, unsigned durable_timeout_ms)
{
    s->loop = router_loop_new(&(router_loop_opts_t){.max_timers = s_max_timers});
    assert_non_null(s->loop);
    s->gw = gateway_http_new(s->loop, &(gateway_http_opts_t){0});
    assert_non_null(s->gw);
    char err[256];
    s->tokens = router_tokens_new(NULL, s->loop, err, sizeof err);
    assert_non_null(s->tokens);
    s->auth = gateway_auth_new(s->tokens, &(gateway_auth_opts_t){.require_pairing = false});
    assert_non_null(s->auth);
    s->inbox = s_inbox_open(s);
    gateway_ingress_opts_t o = {.auth = s->auth, .inbox = s->inbox,
                                .durable_timeout_ms = durable_timeout_ms};
    s->ingress = gateway_ingress_new(s->gw, s->loop, &o);
    assert_non_null(s->ingress);
    router_addr_t addr, bound;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &addr, NULL), 0);
    assert_int_equal(gateway_http_listen(s->gw, &addr, &bound), 0);
    s->port = router_addr_port(&bound);
    assert_int_equal(pthread_create(&s->thread, NULL, s_loop_main, s), 0);
}

static void s_srv_stop(s_srv_t *s)
{
    router_loop_stop(s->loop);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    gateway_auth_destroy(&s->auth);
    router_tokens_destroy(&s->tokens);
    router_inbox_destroy(&s->inbox);
}

static int s_setup(void **state)
{
    s_srv_t *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    snprintf(s->dir, sizeof s->dir, "/tmp/kith-webhook-test-XXXXXX");
    if (!mkdtemp(s->dir)) {
        free(s);
        return -1;
    }
    snprintf(s->db, sizeof s->db, "%s/state.db", s->dir);
    *state = s;
    return 0;
}

static int s_teardown(void **state)
{
    s_srv_t *s = *state;
    vfs_fail_clear();
    const char *sfx[] = {"", "-wal", "-shm", "-journal"};
    char p[192];
    for (size_t i = 0; i < sizeof sfx / sizeof *sfx; i++) {
        snprintf(p, sizeof p, "%s%s", s->db, sfx[i]);
        unlink(p);
    }
    rmdir(s->dir);
    free(s);
    return 0;
}

/* ---------------------------------------------------------------- arming the loop thread */

/* Arms (skip >= 0) or disarms (skip < 0) allocation failures on the
 * server's loop thread and waits until it has. */
static unsigned s_loop_arm(s_srv_t *s, long skip)
{
    return alloc_fail_on_loop(s->loop, skip);
}

/* ---------------------------------------------------------------- the client */

typedef struct {
    int status;       /* 0: the server closed without an answer */
    bool replayed;    /* Idempotent-Replayed: true */
    char body[1024];  /* NUL-terminated */
} s_resp_t;

/* One request on a fresh connection; the answer, or status 0 when the
 * connection ended (or was reset) before a whole answer came. */
static void s_post(const s_srv_t *s, const char *path, const char *key, const char *body,
                   s_resp_t *r)
{
    memset(r, 0, sizeof *r);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = HANG_GUARD_S};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(s->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (const struct sockaddr *) &sin, sizeof sin);
    if (rc != 0 && errno == EINTR) {
        /* Interrupted (the sanitizers' or the server's threads may be
         * signalled): the handshake goes on without us; wait for it. */
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t elen = sizeof err;
        while ((rc = poll(&p, 1, HANG_GUARD_S * 1000)) < 0 && errno == EINTR)
            ;
        assert_int_equal(rc, 1);
        assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen), 0);
        rc = err ? -1 : 0;
        errno = err;
    }
    if (rc != 0) {
        assert_int_equal(errno, ECONNRESET); /* accepted and cut at once */
        close(fd);
        return;
    }
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     "%s%s%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     path, key ? "X-Idempotency-Key: " : "", key ? key : "", key ? "\r\n" : "",
                     strlen(body), body);
    assert_true(n > 0 && (size_t) n < sizeof req);
    if (send(fd, req, (size_t) n, MSG_NOSIGNAL) != n) {
        close(fd);
        return;
    }
    char buf[8192];
    size_t len = 0;
    for (;;) {
        ssize_t got = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            fail_msg("no answer in %d s", HANG_GUARD_S);
        if (got <= 0)
            break;
        len += (size_t) got;
        assert_true(len < sizeof buf - 1);
    }
    close(fd);
    buf[len] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    if (!end || sscanf(buf, "HTTP/1.1 %d", &r->status) != 1)
        return;
    const char *cl = strcasestr(buf, "\r\nContent-Length: ");
    assert_non_null(cl);
    size_t blen = strtoul(cl + 18, NULL, 10);
    if (strlen(end + 4) != blen) { /* cut short: no answer after all */
        r->status = 0;
        return;
    }
    *end = '\0';
    r->replayed = strcasestr(buf, "\r\nIdempotent-Replayed: true") != NULL;
    assert_true(blen < sizeof r->body);
    memcpy(r->body, end + 4, blen + 1);
}

/* A refusal is a typed 5xx: JSON with "error" and "code". */
static void s_expect_typed_5xx(const s_resp_t *r)
{
    if (r->status < 500 || r->status > 599 || !strstr(r->body, "\"code\":\"") ||
        !strstr(r->body, "\"error\":\""))
        fail_msg("not a typed 5xx: %d %s", r->status, r->body);
}

/* ---------------------------------------------------------------- out of memory */

typedef struct {
    const char *path;
    const char *body;
    const char *queued; /* what a 202's body starts with */
} s_shape_t;

/* Each allocation the loop thread makes for one request fails in turn.
 * Each run must answer 202 (the entry is durable) or a typed 5xx, or cut
 * the connection; the gateway still serves; and a retry with the run's key
 * is then answered 202, a replay when the first try was queued, so that
 * the inbox ends with exactly one entry per key. */
static void s_sweep(s_srv_t *s, const s_shape_t *shape)
{
    size_t keys = 0, queued_first = 0, cut = 0, refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        char key[32];
        snprintf(key, sizeof key, "sweep-%ld", i);
        s_resp_t r, again;
        s_loop_arm(s, i);
        s_post(s, shape->path, key, shape->body, &r);
        unsigned failed = s_loop_arm(s, -1);
        keys++;
        if (r.status == 202) {
            assert_int_equal(strncmp(r.body, shape->queued, strlen(shape->queued)), 0);
            assert_false(r.replayed);
            queued_first++;
        } else if (r.status == 0) {
            print_message("run %ld: cut before an answer\n", i);
            cut++;
        } else {
            s_expect_typed_5xx(&r);
            /* One request at a time: never "too many in flight". */
            if (strstr(r.body, "in flight"))
                fail_msg("run %ld: %s", i, r.body);
            refused++;
        }
        s_post(s, shape->path, key, shape->body, &again);
        if (again.status != 202)
            fail_msg("run %ld (%d %s): the retry got %d %s", i, r.status, r.body, again.status,
                     again.body);
        if (r.status == 202) {
            assert_true(again.replayed);
            assert_string_equal(again.body, r.body);
        }
        if (failed == 0)
            break; /* a run with nothing left to fail: all were reached */
    }
    print_message("%s: %zu runs, %zu queued at once, %zu refused (5xx), %zu cut\n", shape->path,
                  keys, queued_first, refused, cut);
    assert_true(refused > 0); /* the sweep reached the route's own refusals */
    s_srv_stop(s);
    /* Durable: one entry per key, read back from state.db. */
    router_inbox_t *in = s_inbox_open(s);
    assert_int_equal(router_inbox_count(in), keys);
    router_inbox_destroy(&in);
}

static void test_webhook_without_memory(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 0);
    s_sweep(s, &(s_shape_t){"/webhook", "{\"message\":\"hello\",\"session_id\":\"s-1\"}",
                            "{\"queued\":true,\"id\":\""});
}

static void test_event_without_memory(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 0);
    s_sweep(s, &(s_shape_t){"/sessions/s-2/external-events",
                            "{\"kind\":\"generic_json\",\"event_type\":\"t\",\"payload\":{\"a\":1}}",
                            "{\"queued\":true}"});
}

/* ---------------------------------------------------------------- failing commits */

/* Every commit of the inbox fails (its fsync). A request is answered 503
 * once its time is up: not_durable (withdrawn: nothing queued, its key
 * free) or, when the inbox cannot take it back because the failed commit
 * may have left it in the WAL (it is retried until durable),
 * durability_unknown after a second timeout, its key held. The disk
 * recovers: the retry with the key is a fresh 202 or the replayed 202 of
 * the first try, and each request is stored at most once. */
static void test_commit_fails_not_durable(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 300);
    vfs_fail_arm(VFS_FAIL_SYNC, s->dir, 0, -1);
    s_resp_t r, ev;
    s_post(s, "/webhook", "k-1", "{\"message\":\"one\"}", &r);
    assert_int_equal(r.status, 503);
    s_expect_typed_5xx(&r);
    bool doubt = strstr(r.body, "\"code\":\"durability_unknown\"") != NULL;
    if (!doubt)
        assert_non_null(strstr(r.body, "\"code\":\"not_durable\""));
    s_post(s, "/sessions/s-3/external-events", NULL,
           "{\"kind\":\"generic_json\",\"event_type\":\"t\",\"payload\":1}", &ev);
    assert_int_equal(ev.status, 503);
    bool ev_doubt = strstr(ev.body, "\"code\":\"durability_unknown\"") != NULL;
    if (!ev_doubt)
        assert_non_null(strstr(ev.body, "\"code\":\"not_durable\""));
    assert_true(vfs_fail_failed(VFS_FAIL_SYNC) > 0);
    vfs_fail_clear();
    /* The retry: 409 while the first try's outcome is still owed. */
    for (int i = 0;; i++) {
        assert_true(i < 30000);
        s_post(s, "/webhook", "k-1", "{\"message\":\"one\"}", &r);
        if (r.status != 409)
            break;
        usleep(1000);
    }
    assert_int_equal(r.status, 202);
    print_message("first try %s, event %s, retry %s\n", doubt ? "in doubt" : "withdrawn",
                  ev_doubt ? "in doubt" : "withdrawn", r.replayed ? "replayed" : "fresh");
    s_resp_t again;
    s_post(s, "/webhook", "k-1", "{\"message\":\"one\"}", &again);
    assert_int_equal(again.status, 202);
    assert_true(again.replayed);
    assert_string_equal(again.body, r.body);
    /* An entry in doubt is retried until durable: the event's too. */
    uint64_t want = ev_doubt ? 2 : 0; /* seqs: the first try 1, the event 2 */
    for (int i = 0; router_inbox_durable_seq(s->inbox) < want; i++) {
        assert_true(i < 30000);
        usleep(1000);
    }
    s_srv_stop(s);
    router_inbox_t *in = s_inbox_open(s);
    assert_int_equal(router_inbox_count(in), 1 + (ev_doubt ? 1 : 0));
    router_inbox_destroy(&in);
}

/* ---------------------------------------------------------------- no timers */

/* With the loop's timers all but `spare` taken, each request is answered
 * (202, a typed 5xx) or cut, never left waiting: a request admitted with
 * no timer for the durability poll waited for ever (no durable wake-up
 * comes here, as none comes in the daemon while commits fail). Each
 * round leaves one more timer free, so the shortage falls on each timer a
 * request needs in turn. */
static void test_no_timer_never_hangs(void **state)
{
    s_srv_t *s = *state;
    s_max_timers = 64;
    s_srv_start(s, 0);
    s_max_timers = 0;
    unsigned answered = 0;
    for (long spare = 0; spare <= 6; spare++) {
        test_timer_fill_t f = {0};
        test_timer_fill(s->loop, &f, spare);
        s_resp_t r;
        s_post(s, "/webhook", NULL, "{\"message\":\"m\"}", &r);
        if (r.status && r.status != 202)
            s_expect_typed_5xx(&r);
        answered += r.status != 0;
        print_message("spare %ld: %d %s\n", spare, r.status, r.body);
        test_timer_fill(s->loop, &f, -1);
    }
    assert_true(answered > 0);
    s_resp_t r;
    s_post(s, "/webhook", NULL, "{\"message\":\"m\"}", &r);
    assert_int_equal(r.status, 202);
    s_srv_stop(s);
}

/* ---------------------------------------------------------------- a stalled disk */

/* A commit that does not end (its fsync held, as a stalled disk holds it):
 * past its time the request is withdrawn unless that commit holds it, and
 * it does, so the route waited for the commit's outcome — for ever, while
 * the disk stalled. Now, after a second timeout, the client is told the
 * outcome is unknown (503 durability_unknown); its key stays taken (409)
 * until the outcome comes; once the disk goes on, the entry is durable and
 * a retry with the key is the replayed 202, with the entry stored once. */
static void test_stalled_commit_in_doubt(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 300);
    vfs_fail_hold(s->dir);
    s_resp_t r;
    s_post(s, "/webhook", "k-slow", "{\"message\":\"slow\"}", &r);
    assert_int_equal(r.status, 503);
    s_expect_typed_5xx(&r);
    assert_non_null(strstr(r.body, "\"code\":\"durability_unknown\""));
    assert_true(vfs_fail_held() > 0); /* the commit still waits on the disk */
    s_post(s, "/webhook", "k-slow", "{\"message\":\"slow\"}", &r);
    assert_int_equal(r.status, 409);
    vfs_fail_hold(NULL);
    /* The outcome comes: the key is settled with the entry's 202. */
    for (int i = 0;; i++) {
        assert_true(i < 30000);
        s_post(s, "/webhook", "k-slow", "{\"message\":\"slow\"}", &r);
        if (r.status != 409)
            break;
        usleep(1000);
    }
    assert_int_equal(r.status, 202);
    assert_true(r.replayed);
    s_srv_stop(s);
    router_inbox_t *in = s_inbox_open(s);
    assert_int_equal(router_inbox_count(in), 1);
    router_inbox_destroy(&in);
}

/* ---------------------------------------------------------------- a stop with answers owed */

typedef struct {
    const s_srv_t *s;
    const char *key;
    s_resp_t r;
    pthread_t thread;
} s_client_t;

static void *s_client_main(void *arg)
{
    s_client_t *c = arg;
    s_post(c->s, "/webhook", c->key, "{\"message\":\"at stop\"}", &c->r);
    return NULL;
}

/* The server stops while two answers are owed: one whose entry a commit
 * holds (a stalled disk), one still waiting for a commit. The route lets
 * both go (gateway_ingress_destroy): the first as a commit whose outcome
 * is unknown, the second withdrawn, nothing of it written; nothing leaks
 * or crashes, each client reads a typed 503 or the connection's end, and
 * state.db holds at most the entry whose commit was running. */
static void test_stop_with_answers_owed(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 600000);
    vfs_fail_hold(s->dir);
    s_client_t first = {.s = s, .key = "k-held"}, second = {.s = s, .key = "k-queued"};
    assert_int_equal(pthread_create(&first.thread, NULL, s_client_main, &first), 0);
    for (int i = 0; vfs_fail_held() == 0; i++) { /* its commit is on the disk */
        assert_true(i < 30000);
        usleep(1000);
    }
    assert_int_equal(pthread_create(&second.thread, NULL, s_client_main, &second), 0);
    for (int i = 0;; i++) { /* admitted behind it: the inbox holds two */
        assert_true(i < 30000);
        if (router_inbox_count(s->inbox) >= 2)
            break;
        usleep(1000);
    }
    router_loop_stop(s->loop);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    vfs_fail_hold(NULL);
    assert_int_equal(pthread_join(first.thread, NULL), 0);
    assert_int_equal(pthread_join(second.thread, NULL), 0);
    print_message("held: %d %s; queued: %d %s\n", first.r.status, first.r.body, second.r.status,
                  second.r.body);
    if (first.r.status)
        s_expect_typed_5xx(&first.r);
    if (second.r.status)
        s_expect_typed_5xx(&second.r);
    gateway_auth_destroy(&s->auth);
    router_tokens_destroy(&s->tokens);
    router_inbox_destroy(&s->inbox);
    router_inbox_t *in = s_inbox_open(s);
    assert_true(router_inbox_count(in) <= 1);
    router_inbox_destroy(&in);
}

static void s_drain_on(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_srv_t *s = arg;
    gateway_http_drain(s->gw, NULL, NULL, 2000);
}

/* A drain whose last call finds two answers owed: one whose entry a
 * commit holds (a stalled disk), one still waiting for a commit. The
 * second is told nothing was queued (withdrawn: a retry is safe, with or
 * without its key), the first that its outcome is unknown and how to learn
 * it (WIRE §17.4), both 503 shutting_down with Retry-After. Both used to
 * get the server's "may or may not be done", and the route's own answers
 * came only at its destroy, after the loop had ended: to nobody. */
static void test_drain_with_answers_owed(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 600000);
    vfs_fail_hold(s->dir);
    s_client_t first = {.s = s, .key = "k-held"}, second = {.s = s, .key = "k-queued"};
    assert_int_equal(pthread_create(&first.thread, NULL, s_client_main, &first), 0);
    for (int i = 0; vfs_fail_held() == 0; i++) {
        assert_true(i < 30000);
        usleep(1000);
    }
    assert_int_equal(pthread_create(&second.thread, NULL, s_client_main, &second), 0);
    for (int i = 0; router_inbox_count(s->inbox) < 2; i++) {
        assert_true(i < 30000);
        usleep(1000);
    }
    assert_int_equal(router_loop_post(s->loop, s_drain_on, s), 0);
    assert_int_equal(pthread_join(second.thread, NULL), 0);
    assert_int_equal(pthread_join(first.thread, NULL), 0);
    print_message("held: %d %s; queued: %d %s\n", first.r.status, first.r.body, second.r.status,
                  second.r.body);
    assert_int_equal(second.r.status, 503);
    assert_non_null(strstr(second.r.body, "\"code\":\"shutting_down\""));
    assert_non_null(strstr(second.r.body, "nothing was queued"));
    assert_int_equal(first.r.status, 503);
    assert_non_null(strstr(first.r.body, "\"code\":\"shutting_down\""));
    assert_non_null(strstr(first.r.body, "X-Idempotency-Key"));
    vfs_fail_hold(NULL);
    s_srv_stop(s);
    router_inbox_t *in = s_inbox_open(s);
    assert_int_equal(router_inbox_count(in), 1); /* the held commit's, once the disk went on */
    router_inbox_destroy(&in);
}

#define T(f) cmocka_unit_test_setup_teardown(f, s_setup, s_teardown)

int main(void)
{
    if (alloc_fail_sqlite_install() != 0 || vfs_fail_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        T(test_webhook_without_memory),
        T(test_event_without_memory),
        T(test_commit_fails_not_durable),
        T(test_no_timer_never_hangs),
        T(test_stalled_commit_in_doubt),
        T(test_stop_with_answers_owed),
        T(test_drain_with_answers_owed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
