/* tests/route_peers_test.c — what POST and DELETE /api/peers answer when
 * the edit cannot come back to the loop the usual way (WIRE §17.3a): the
 * test holds trusted_peers.json.lock so the edit thread waits inside its
 * edit, fills the loop's post queue, and lets the edit go. The file is
 * written while no post can be queued; the operator must still get the
 * answer that says so (201 with the row, 200 removed), and the change must
 * be in force. Also: a node without a home refuses edits (503), and with
 * each loop allocation failing in turn an answer that says the change is
 * made finds it in force (a reload out of memory is tried again). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>

#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/routes_auth.h"
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/node.h"
#include "router/state/tokens.h"
#include "router/state/trust.h"
#include "alloc_fail.h"
#include "loop_until.h"

typedef struct {
    char home[64];
    router_node_t *node;
    router_loop_t *loop; /* the node's */
    router_tokens_t *tokens;
    gateway_auth_t *auth;
    gateway_http_t *gw;
    gateway_route_peers_t peers;
    uint16_t port;
} fix_t;

static bool s_no_home; /* the node keeps nothing on disk */

static int s_setup(void **state)
{
    fix_t *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->home, sizeof f->home, "/tmp/kith-route-peers-XXXXXX");
    char err[256] = "";
    router_node_opts_t o = {.home = f->home, .memory_inbox = true};
    bool made = mkdtemp(f->home) != NULL;
    if (s_no_home)
        o.home = NULL;
    if (!made || !(f->node = router_node_new(&o, err, sizeof err))) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    f->loop = router_node_loop(f->node);
    gateway_auth_opts_t ao = {.require_pairing = false};
    router_addr_t addr, bound;
    if (!(f->tokens = router_tokens_new(NULL, f->loop, err, sizeof err)) ||
        !(f->auth = gateway_auth_new(f->tokens, &ao)) || !(f->gw = gateway_http_new(f->loop, NULL)))
        return -1;
    f->peers = (gateway_route_peers_t){.node = f->node, .auth = f->auth};
    if (gateway_route_peers(f->gw, &f->peers) != 0 ||
        router_addr_parse("127.0.0.1:0", &addr, NULL) != 0 ||
        gateway_http_listen(f->gw, &addr, &bound) != 0)
        return -1;
    f->port = router_addr_port(&bound);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fix_t *f = *state;
    gateway_route_peers_stop(&f->peers);
    gateway_http_destroy(&f->gw);
    router_tokens_stop(f->tokens); /* while the loop exists; freed after it */
    router_node_destroy(&f->node);
    gateway_auth_destroy(&f->auth);
    router_tokens_destroy(&f->tokens);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->home);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", f->home);
    free(f);
    return 0;
}

/* ------------------------------------------------------------ clients */

typedef struct {
    int fd;
    char buf[8192];
    size_t len;
} client_t;

static void s_send(fix_t *f, client_t *c, const char *method, const char *path, const char *body)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(f->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The listen backlog takes it while the loop is not running. */
    assert_int_equal(connect(c->fd, (struct sockaddr *) &sa, sizeof sa), 0);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, strlen(body), body);
    assert_true(n > 0 && (size_t) n < sizeof req);
    assert_int_equal(send(c->fd, req, (size_t) n, MSG_NOSIGNAL), n);
    assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
}

/* Reads what came; true once the server closed (Connection: close). */
static bool s_answered(void *ud)
{
    client_t *c = ud;
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

/* ------------------------------------------------------------ the edit thread */

/* Holds trusted_peers.json.lock, as `kith peers` would mid-edit. */
static int s_lock(fix_t *f)
{
    char path[128];
    snprintf(path, sizeof path, "%s/trusted_peers.json.lock", f->home);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    return fd;
}

static unsigned s_writers(fix_t *f)
{
    pthread_mutex_lock(&f->peers.mu);
    unsigned n = f->peers.writers;
    pthread_mutex_unlock(&f->peers.mu);
    return n;
}

static bool s_one_writer(void *ud)
{
    return s_writers(ud) == 1;
}

static void s_noop(router_loop_t *loop, void *arg)
{
    (void) loop, (void) arg;
}

/* Fills the loop's post queue (the loop is not running: nothing drains
 * it), releases the lock, and waits, the loop still stopped, until the
 * edit thread is done: it wrote the file and found no room for its post. */
static void s_edit_with_queue_full(fix_t *f, int lock)
{
    size_t queued = 0;
    while (router_loop_post(f->loop, s_noop, NULL) == 0)
        queued++;
    assert_int_equal(errno, EAGAIN);
    assert_true(queued > 0);
    close(lock);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60; /* a hang, not a timing */
    pthread_mutex_lock(&f->peers.mu);
    int rc = 0;
    while (f->peers.writers > 0 && rc == 0)
        rc = pthread_cond_timedwait(&f->peers.cv, &f->peers.mu, &until);
    pthread_mutex_unlock(&f->peers.mu);
    assert_int_equal(rc, 0);
}

/* ------------------------------------------------------------ tests */

static void test_answer_survives_a_full_post_queue(void **state)
{
    fix_t *f = *state;
    uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(pk, sk);
    char b64[sodium_base64_ENCODED_LEN(sizeof pk, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
    char body[256];
    snprintf(body, sizeof body,
             "{\"name\":\"alice\",\"pubkey\":\"ed25519:%s\",\"addr\":\"tcp://127.0.0.1:9\"}", b64);

    /* POST: the row is written while no post can be queued. */
    int lock = s_lock(f);
    client_t c;
    s_send(f, &c, "POST", "/api/peers", body);
    test_loop_until(f->loop, s_one_writer, f, 2, 60000);
    s_edit_with_queue_full(f, lock);
    test_loop_until(f->loop, s_answered, &c, 2, 60000);
    assert_non_null(strstr(c.buf, "HTTP/1.1 201 "));
    assert_non_null(strstr(c.buf, "\"name\": \"alice\"")); /* the row, pretty-printed */
    close(c.fd);
    assert_non_null(router_trust_by_pubkey(router_node_trust_view(f->node), pk));

    /* DELETE: the same, and the peer is gone from the store in force. */
    lock = s_lock(f);
    s_send(f, &c, "DELETE", "/api/peers/alice", "");
    test_loop_until(f->loop, s_one_writer, f, 2, 60000);
    s_edit_with_queue_full(f, lock);
    test_loop_until(f->loop, s_answered, &c, 2, 60000);
    assert_non_null(strstr(c.buf, "HTTP/1.1 200 "));
    assert_non_null(strstr(c.buf, "{\"removed\":true,\"name\":\"alice\""));
    close(c.fd);
    assert_null(router_trust_by_pubkey(router_node_trust_view(f->node), pk));
}

/* A new peer's POST body, named name; its key into pk. */
static void s_peer_body(char *body, size_t cap, const char *name, uint8_t pk[32])
{
    uint8_t sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(pk, sk);
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, pk, 32, sodium_base64_VARIANT_ORIGINAL);
    snprintf(body, cap, "{\"name\":\"%s\",\"pubkey\":\"ed25519:%s\",\"addr\":\"tcp://127.0.0.1:9\","
                        "\"meta\":{\"description\":\"d\",\"labels\":{\"a\":\"b\"}}}",
             name, b64);
}

/* One request, nothing failing; its answer's status line must hold want. */
static void s_edit_plain(fix_t *f, const char *method, const char *path, const char *body,
                         const char *want)
{
    client_t c;
    s_send(f, &c, method, path, body);
    test_loop_until(f->loop, s_answered, &c, 2, 60000);
    close(c.fd);
    if (!strstr(c.buf, want))
        fail_msg("%s %s: %s", method, path, c.buf);
}

/* POST (del false) or DELETE of peer `name` (key pk) with the loop
 * thread's allocation after `skip` failing; returns how many failed. An
 * answer that says the change is made (201 with the row, 200 removed)
 * finds it in force; a 5xx finds nothing changed. */
static unsigned s_edit_failing(fix_t *f, bool del, const char *name, const char *body,
                               const uint8_t pk[32], long skip)
{
    char path[64];
    snprintf(path, sizeof path, del ? "/api/peers/%s" : "/api/peers", name);
    client_t c;
    s_send(f, &c, del ? "DELETE" : "POST", path, del ? "" : body);
    alloc_fail_arm(skip);
    test_loop_until(f->loop, s_answered, &c, 2, 60000);
    unsigned failed = alloc_fail_disarm();
    close(c.fd);
    bool trusted = router_trust_by_pubkey(router_node_trust_view(f->node), pk) != NULL;
    char row[32];
    snprintf(row, sizeof row, "\"name\": \"%s\"", name);
    if (strstr(c.buf, del ? "HTTP/1.1 200 " : "HTTP/1.1 201 ")) {
        /* With no memory to show the row, 201 {"added":true}. */
        if (trusted == del || (!del && !strstr(c.buf, row) && !strstr(c.buf, "{\"added\":true}")))
            fail_msg("%s run %ld: answered done but not in force: %s", path, skip, c.buf);
    } else if (strstr(c.buf, "HTTP/1.1 5")) { /* the route's 503, the server's 500 */
        assert_non_null(strstr(c.buf, "\"code\":\""));
        assert_true(trusted == del);
    } else if (c.len) {
        fail_msg("%s run %ld: %s", path, skip, c.buf);
    }
    return failed;
}

/* POST and DELETE with each allocation of the loop thread failing in turn
 * (the edit thread's are its own; the store is back to one peer after each
 * run, so each run makes the same allocations). A reload that ran out of
 * memory kept the old store while the answer said the change was made:
 * 201 {"added":true} with the peer still refused, 200 with it still
 * trusted. */
static void test_edits_without_memory(void **state)
{
    fix_t *f = *state;
    uint8_t pk[32], other[32];
    char body[512];
    s_peer_body(body, sizeof body, "other", other);
    s_edit_plain(f, "POST", "/api/peers", body, "HTTP/1.1 201 ");
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_peer_body(body, sizeof body, "p", pk);
        unsigned failed = s_edit_failing(f, false, "p", body, pk, i);
        if (router_trust_by_pubkey(router_node_trust_view(f->node), pk))
            s_edit_plain(f, "DELETE", "/api/peers/p", "", "HTTP/1.1 200 ");
        if (failed == 0)
            break;
    }
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        s_peer_body(body, sizeof body, "p", pk);
        s_edit_plain(f, "POST", "/api/peers", body, "HTTP/1.1 201 ");
        unsigned failed = s_edit_failing(f, true, "p", body, pk, i);
        if (router_trust_by_pubkey(router_node_trust_view(f->node), pk))
            s_edit_plain(f, "DELETE", "/api/peers/p", "", "HTTP/1.1 200 ");
        if (failed == 0)
            break;
    }
    assert_non_null(router_trust_by_pubkey(router_node_trust_view(f->node), other));
}

static int s_setup_no_home(void **state)
{
    s_no_home = true;
    int rc = s_setup(state);
    s_no_home = false;
    return rc;
}

/* A node with no home has no trusted_peers.json: a DELETE is refused like
 * a POST (503), not run as an edit of "(null)/trusted_peers.json" under
 * the daemon's working directory (it made that directory and answered
 * 404, as if the store had been looked at). */
static void test_no_home_refuses_edits(void **state)
{
    fix_t *f = *state;
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(f->home), 0); /* where a "(null)" would appear */
    const char *methods[] = {"DELETE", "POST"};
    const char *paths[] = {"/api/peers/alice", "/api/peers"};
    for (int i = 0; i < 2; i++) {
        client_t c;
        s_send(f, &c, methods[i], paths[i], "{}");
        test_loop_until(f->loop, s_answered, &c, 2, 60000);
        close(c.fd);
        assert_non_null(strstr(c.buf, "HTTP/1.1 503 "));
        assert_non_null(strstr(c.buf, "\"code\":\"unavailable\""));
        assert_non_null(strstr(c.buf, "no trusted_peers.json"));
    }
    assert_int_equal(access("(null)", F_OK), -1);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(s_writers(f), 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_answer_survives_a_full_post_queue, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_no_home_refuses_edits, s_setup_no_home, s_teardown),
        cmocka_unit_test_setup_teardown(test_edits_without_memory, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
