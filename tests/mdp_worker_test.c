/* tests/mdp_worker_test.c — the MDP 0.2 worker against a bare ROUTER socket
 * playing the broker: READY frames, a REQUEST handed over and PARTIAL/FINAL
 * sent back to its client address, further REQUESTs about the held turn,
 * heartbeats, reconnect after the broker goes silent (READY deferred while a
 * turn is held, its stale replies discarded), DISCONNECT on destroy,
 * interrupt from another thread, and refusal of bad options. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <czmq.h>

#include "alloc_fail.h"
#include "router/workers/mdp_worker.h"

static int s_n;

/* A fresh inproc endpoint per test. */
static void s_endpoint(char *buf, size_t cap)
{
    snprintf(buf, cap, "inproc://mdp-worker-test-%d", ++s_n);
}

/* Receives one message from the fake broker socket, waiting up to ms. */
static zmsg_t *s_recv_within(zsock_t *router, int ms)
{
    zpoller_t *p = zpoller_new(router, NULL);
    void *r = zpoller_wait(p, ms);
    zpoller_destroy(&p);
    return r ? zmsg_recv(router) : NULL;
}

static zmsg_t *s_recv(zsock_t *router)
{
    return s_recv_within(router, 10000);
}

/* The command byte of a message from the worker. */
static uint8_t s_cmd(zmsg_t *m)
{
    zframe_t *f = zmsg_first(m);
    for (int i = 0; i < 3; i++)
        f = zmsg_next(m);
    return zframe_data(f)[0];
}

/* Receives until a message whose command is `cmd`; returns it with the
 * identity frame still first (skips heartbeats). */
static zmsg_t *s_expect(zsock_t *router, uint8_t cmd)
{
    for (int i = 0; i < 200; i++) {
        zmsg_t *m = s_recv(router);
        assert_non_null(m);
        assert_true(zmsg_size(m) >= 4);
        zframe_t *f = zmsg_first(m); /* identity */
        f = zmsg_next(m);
        assert_int_equal(zframe_size(f), 0);
        f = zmsg_next(m);
        assert_true(zframe_streq(f, "MDPW02"));
        f = zmsg_next(m);
        assert_int_equal(zframe_size(f), 1);
        if (zframe_data(f)[0] == cmd)
            return m;
        zmsg_destroy(&m);
    }
    fail_msg("command 0x%02x never came", cmd);
    return NULL;
}

static void s_send_cmd(zsock_t *router, zframe_t *id, uint8_t cmd, const char *addr,
                       const char *body)
{
    zmsg_t *m = zmsg_new();
    zmsg_append(m, &(zframe_t *) {zframe_dup(id)});
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "MDPW02");
    zmsg_addmem(m, &cmd, 1);
    if (addr) {
        zmsg_addstr(m, addr);
        zmsg_addmem(m, "", 0);
        zmsg_addstr(m, body);
    }
    assert_int_equal(zmsg_send(&m, router), 0);
}

/* The two ways a worker runs its socket: the tests below run in both
 * (cmocka's prestate: the socket on its own thread, or same_thread). */
static bool s_own_thread = false, s_same_thread = true;

static router_mdp_worker_t *s_worker(const char *ep, int hb, void **state)
{
    char err[256] = "";
    router_mdp_worker_opts_t o = {.endpoint = ep, .service = "kith.test",
                                  .heartbeat_ms = hb, .liveness = 3,
                                  .same_thread = *(bool *) *state};
    router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
    if (!w)
        fprintf(stderr, "worker: %s\n", err);
    assert_non_null(w);
    return w;
}

/* Checks a reply's [cmd][addr][""][body]. */
static void s_check_reply(zmsg_t *m, const char *addr, const char *body)
{
    assert_int_equal(zmsg_size(m), 7);
    zframe_t *f = zmsg_first(m);
    for (int i = 0; i < 4; i++)
        f = zmsg_next(m);
    assert_true(zframe_streq(f, addr));
    f = zmsg_next(m);
    assert_int_equal(zframe_size(f), 0);
    f = zmsg_next(m);
    assert_true(zframe_streq(f, body));
}

static void s_recv_body(router_mdp_worker_t *w, const char *want)
{
    uint8_t *b = NULL;
    size_t n = 0;
    assert_int_equal(router_mdp_worker_recv(w, &b, &n, 10000), 1);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(b, want, n);
    free(b);
}

static void test_turn_round_trip(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    assert_non_null(router);
    /* Long heartbeats: this fake broker never beats, and must not be
     * declared dead in the middle of the test. */
    router_mdp_worker_t *w = s_worker(ep, 60000, state);

    zmsg_t *m = s_expect(router, 0x01);
    assert_int_equal(zmsg_size(m), 5);
    assert_true(zframe_streq(zmsg_last(m), "kith.test"));
    zframe_t *id = zframe_dup(zmsg_first(m));
    zmsg_destroy(&m);

    /* Nothing yet: a zero timeout only looks. */
    uint8_t *b = NULL;
    size_t n = 0;
    assert_int_equal(router_mdp_worker_recv(w, &b, &n, 0), 0);
    /* No turn held: replies are refused. */
    assert_int_equal(router_mdp_worker_partial(w, (const uint8_t *) "x", 1), -1);

    s_send_cmd(router, id, 0x02, "addr-1", "turn-1");
    s_recv_body(w, "turn-1");
    assert_int_equal(router_mdp_worker_partial(w, (const uint8_t *) "p0", 2), 0);
    m = s_expect(router, 0x03);
    s_check_reply(m, "addr-1", "p0");
    zmsg_destroy(&m);

    /* A steer for the held turn is handed over; replies still go to addr-1. */
    s_send_cmd(router, id, 0x02, "addr-1", "steer");
    s_recv_body(w, "steer");
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done", 4), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-1", "done");
    zmsg_destroy(&m);
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "again", 5), -1);

    /* A late control for the finished turn is dropped; the next turn comes. */
    s_send_cmd(router, id, 0x02, "addr-1", "late-stop");
    s_send_cmd(router, id, 0x02, "addr-2", "turn-2");
    s_recv_body(w, "turn-2");
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done2", 5), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-2", "done2");
    zmsg_destroy(&m);

    /* Destroy says DISCONNECT. */
    router_mdp_worker_destroy(&w);
    router_mdp_worker_destroy(&w);
    m = s_expect(router, 0x06);
    zmsg_destroy(&m);
    zframe_destroy(&id);
    zsock_destroy(&router);
}

static void test_heartbeats_and_reconnect(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    router_mdp_worker_t *w = s_worker(ep, 50, state);
    /* The worker beats while the caller waits in recv (and, on its own
     * thread, whatever the caller does). */
    uint8_t *b = NULL;
    size_t n = 0;
    assert_int_equal(router_mdp_worker_recv(w, &b, &n, 120), 0);
    zmsg_t *m = s_expect(router, 0x05);
    zmsg_destroy(&m);

    /* Hand a turn to whichever identity said READY last (this broker never
     * beats, so the worker reconnects every 150 ms: try again; recv runs
     * meanwhile, which is where a same_thread worker reconnects). */
    zframe_t *id = NULL;
    bool got = false;
    for (int tries = 0; tries < 2000 && !got; tries++) {
        if ((m = s_recv_within(router, 5)) && s_cmd(m) == 0x01) {
            zframe_destroy(&id);
            id = zframe_dup(zmsg_first(m));
            s_send_cmd(router, id, 0x02, "addr-A", "turn-A");
        }
        zmsg_destroy(&m);
        int rc = router_mdp_worker_recv(w, &b, &n, 5);
        assert_true(rc >= 0);
        if (rc == 1) {
            assert_memory_equal(b, "turn-A", 6);
            free(b);
            got = true;
        }
    }
    assert_true(got);
    /* A turn is held and the broker stays silent: the worker reconnects
     * with a new identity but says READY only after the caller's FINAL,
     * and what it sends for the old turn is discarded. */
    uint64_t before = router_mdp_worker_reconnects(w);
    for (int i = 0; i < 1000 && router_mdp_worker_reconnects(w) == before; i++)
        assert_int_equal(router_mdp_worker_recv(w, &b, &n, 10), 0);
    assert_true(router_mdp_worker_reconnects(w) > before);
    assert_int_equal(router_mdp_worker_partial(w, (const uint8_t *) "stale", 5), 0);
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "stale-final", 11), 0);
    zframe_t *id2 = NULL;
    for (;;) {
        m = s_recv(router);
        assert_non_null(m);
        uint8_t cmd = s_cmd(m);
        assert_true(cmd != 0x03 && cmd != 0x04);
        if (cmd == 0x01) {
            id2 = zframe_dup(zmsg_first(m));
            zmsg_destroy(&m);
            break;
        }
        zmsg_destroy(&m);
    }
    assert_false(zframe_eq(id, id2));
    router_mdp_worker_destroy(&w);
    zframe_destroy(&id);
    zframe_destroy(&id2);
    zsock_destroy(&router);
}

static void *s_interrupter(void *arg)
{
    usleep(50000);
    router_mdp_worker_interrupt(arg);
    return NULL;
}

static void test_interrupt(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    router_mdp_worker_t *w = s_worker(ep, 1000, state);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_interrupter, w), 0);
    uint8_t *b = NULL;
    size_t n = 0;
    assert_int_equal(router_mdp_worker_recv(w, &b, &n, -1), -1);
    pthread_join(t, NULL);
    assert_int_equal(router_mdp_worker_recv(w, &b, &n, 0), -1);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

static void test_bad_options(void **state)
{
    (void) state;
    char err[256];
    router_mdp_worker_opts_t o = {.endpoint = "inproc://x", .service = ""};
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    o.service = "kith.agent";
    o.endpoint = "nonsense://x";
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "nonsense"));
    o.endpoint = "inproc://x";
    o.curve_server_key = "short";
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    o.curve_server_key = "0123456789012345678901234567890123456789";
    o.curve_cert_path = "/nonexistent/cert";
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/cert"));
}

/* A certificate path that does not exist yet is made: secret 0600, and the
 * same key next time. */
static void test_cert_made(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-mdp-worker-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], secret[300], err[256] = "";
    snprintf(path, sizeof path, "%s/agent.cert", dir);
    snprintf(secret, sizeof secret, "%s_secret", path);
    zcert_t *server = zcert_new();
    router_mdp_worker_opts_t o = {.endpoint = "inproc://mdp-worker-cert", .service = "kith.agent",
                                  .curve_server_key = zcert_public_txt(server),
                                  .curve_cert_path = path};
    router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
    assert_non_null(w);
    router_mdp_worker_destroy(&w);
    struct stat sb;
    assert_int_equal(stat(secret, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    zcert_t *a = zcert_load(path);
    assert_non_null(a);
    w = router_mdp_worker_new(&o, err, sizeof err);
    assert_non_null(w);
    router_mdp_worker_destroy(&w);
    zcert_t *b = zcert_load(path);
    assert_string_equal(zcert_public_txt(a), zcert_public_txt(b));
    zcert_destroy(&a);
    zcert_destroy(&b);
    zcert_destroy(&server);
    unlink(secret);
    unlink(path);
    rmdir(dir);
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

/* A certificate path of `len` bytes in a directory made under `dir`. */
static void s_path_of_length(const char *dir, const char *sub, size_t len, char *path,
                             size_t cap)
{
    int n = snprintf(path, cap, "%s/%s", dir, sub);
    assert_int_equal(mkdir(path, 0700), 0);
    n += snprintf(path + n, cap - (size_t) n, "/");
    assert_true(len > (size_t) n && len < cap);
    memset(path + n, 'c', len - (size_t) n);
    path[len] = '\0';
}

/* A worker's certificate path too long for CZMQ (kith agent --cert FILE):
 * zcert_save and zcert_load build "<path>_secret" in 256 bytes and cut it
 * silently, so with a path of 255 bytes the secret key was written over
 * the path itself, the public half the operator copies into the broker's
 * authorized/ directory (a longer one wrote it to whatever the cut name
 * named). Now such a path is refused with the reason, nothing written;
 * the longest that fits works. */
static void test_cert_path_too_long_for_czmq(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-mdp-worker-XXXXXX";
    assert_non_null(mkdtemp(dir));
    zcert_t *server = zcert_new();
    char path[400], secret[420], err[512] = "";
    s_path_of_length(dir, "long", 255, path, sizeof path);
    router_mdp_worker_opts_t o = {.endpoint = "inproc://mdp-worker-cert-long", .service = "kith.agent",
                                  .curve_server_key = zcert_public_txt(server),
                                  .curve_cert_path = path};
    router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
    if (w)
        fprintf(stderr, "the certificate holds the secret key: %d\n", s_file_has(path, "secret-key"));
    router_mdp_worker_destroy(&w);
    assert_non_null(strstr(err, "past the 248 CZMQ can write a certificate's secret to"));
    assert_int_not_equal(access(path, F_OK), 0);
    snprintf(secret, sizeof secret, "%s_secret", path);
    assert_int_not_equal(access(secret, F_OK), 0);

    s_path_of_length(dir, "fits", 248, path, sizeof path);
    snprintf(secret, sizeof secret, "%s_secret", path);
    w = router_mdp_worker_new(&o, err, sizeof err);
    assert_non_null(w);
    router_mdp_worker_destroy(&w);
    assert_true(s_file_has(path, "public-key"));
    assert_false(s_file_has(path, "secret-key"));
    assert_true(s_file_has(secret, "secret-key"));
    w = router_mdp_worker_new(&o, err, sizeof err); /* and it loads */
    assert_non_null(w);
    router_mdp_worker_destroy(&w);
    zcert_destroy(&server);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A worker's certificate that cannot be read or made, each refused with
 * the file named and nothing left behind: a file that is not a certificate,
 * one with its public half only (the secret missing), a path CZMQ cannot
 * write (a link into a directory that does not exist: the secret file
 * made 0600 for it is taken back), and a broker key of 40 characters that
 * are not Z85. */
static void test_cert_files_refused(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-mdp-worker-XXXXXX";
    assert_non_null(mkdtemp(dir));
    zcert_t *server = zcert_new();
    char path[256], secret[300], err[512] = "";
    router_mdp_worker_opts_t o = {.endpoint = "inproc://mdp-worker-cert-refused",
                                  .service = "kith.agent",
                                  .curve_server_key = zcert_public_txt(server),
                                  .curve_cert_path = path};

    snprintf(path, sizeof path, "%s/junk.cert", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    /* ZPL without keys (text CZMQ cannot parse at all leaks in zconfig_load) */
    fputs("curve\n    public-key = \"not a key\"\n", f);
    fclose(f);
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "junk.cert is not a CZMQ certificate with its secret key"));

    snprintf(path, sizeof path, "%s/public.cert", dir);
    zcert_t *c = zcert_new();
    assert_int_equal(zcert_save_public(c, path), 0);
    zcert_destroy(&c);
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "public.cert is not a CZMQ certificate with its secret key"));

    snprintf(path, sizeof path, "%s/link.cert", dir);
    snprintf(secret, sizeof secret, "%s_secret", path);
    char target[300];
    snprintf(target, sizeof target, "%s/nowhere/w.cert", dir);
    assert_int_equal(symlink(target, path), 0);
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    assert_non_null(strstr(err, "mdp worker: cannot write "));
    assert_non_null(strstr(err, "link.cert"));
    assert_int_not_equal(access(secret, F_OK), 0);

    snprintf(path, sizeof path, "%s/ok.cert", dir);
    o.curve_server_key = "0123456789 123456789012345678901234567\"9";
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    assert_string_equal(err, "mdp worker: the broker's CURVE key is not Z85");
    assert_int_not_equal(access(path, F_OK), 0);
    o.endpoint = NULL;
    assert_null(router_mdp_worker_new(&o, err, sizeof err));
    assert_string_equal(err, "mdp worker: endpoint and service are required");
    zcert_destroy(&server);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

typedef struct {
    const char *path;
    const char *server_key;
    router_mdp_worker_t *w;
    char err[256];
} s_maker_t;

static void *s_maker(void *arg)
{
    s_maker_t *m = arg;
    router_mdp_worker_opts_t o = {.endpoint = "inproc://mdp-worker-cert-race", .service = "kith.agent",
                                  .curve_server_key = m->server_key, .curve_cert_path = m->path,
                                  .same_thread = true};
    m->w = router_mdp_worker_new(&o, m->err, sizeof m->err);
    return NULL;
}

/* Workers of one process started at once with one certificate path that
 * does not exist yet (kith agent --threads N --cert FILE): every one
 * starts, one makes the file, the others read it. Before, they raced: some
 * failed "cannot create FILE_secret: File exists" or read a file still
 * being written ("not a CZMQ certificate"), and the pool did not start. */
static void test_cert_made_by_many_at_once(void **state)
{
    (void) state;
    zcert_t *server = zcert_new();
    enum { THREADS = 16, ROUNDS = 4 };
    for (int round = 0; round < ROUNDS; round++) {
        char dir[] = "/tmp/kith-mdp-worker-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char path[256], secret[300];
        snprintf(path, sizeof path, "%s/agent.cert", dir);
        snprintf(secret, sizeof secret, "%s_secret", path);
        static s_maker_t m[THREADS];
        pthread_t th[THREADS];
        for (int i = 0; i < THREADS; i++) {
            m[i] = (s_maker_t){.path = path, .server_key = zcert_public_txt(server)};
            assert_int_equal(pthread_create(&th[i], NULL, s_maker, &m[i]), 0);
        }
        for (int i = 0; i < THREADS; i++)
            pthread_join(th[i], NULL);
        for (int i = 0; i < THREADS; i++) {
            if (!m[i].w)
                fail_msg("round %d, worker %d: %s", round, i, m[i].err);
            router_mdp_worker_destroy(&m[i].w);
        }
        unlink(secret);
        unlink(path);
        rmdir(dir);
    }
    zcert_destroy(&server);
}

/* Waits for the worker's READY (recv runs meanwhile: a same_thread worker
 * reads and reconnects only in there); returns its identity. */
static zframe_t *s_ready_id(zsock_t *router, router_mdp_worker_t *w)
{
    for (int tries = 0; tries < 4000; tries++) {
        zmsg_t *m = s_recv_within(router, 5);
        if (m && s_cmd(m) == 0x01) {
            zframe_t *id = zframe_dup(zmsg_first(m));
            zmsg_destroy(&m);
            return id;
        }
        zmsg_destroy(&m);
        uint8_t *b = NULL;
        size_t n = 0;
        assert_int_equal(router_mdp_worker_recv(w, &b, &n, 0), 0);
    }
    fail_msg("no READY came");
    return NULL;
}

/* Out of memory for the body of a new turn: the caller cannot be given
 * it, so the worker answers it at once with an empty FINAL (the router
 * ends that turn as malformed and has the worker back) and recv goes on
 * waiting; the next turn is served. Before, recv returned -1 ("stopped or
 * failed"), on which callers stop serving, and the turn stayed held. */
static void test_turn_without_memory(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    router_mdp_worker_t *w = s_worker(ep, 1000, state);
    zframe_t *id = s_ready_id(router, w);
    s_send_cmd(router, id, 0x02, "addr-A", "turn-A");
    uint8_t *b = NULL;
    size_t n = 0;
    bool failed = false;
    for (int i = 0; i < 2000 && !failed; i++) {
        alloc_fail_arm(0);
        int rc = router_mdp_worker_recv(w, &b, &n, 5);
        failed = alloc_fail_disarm() > 0;
        assert_int_equal(rc, 0);
        assert_null(b);
    }
    assert_true(failed);
    zmsg_t *m = NULL;
    for (int i = 0; i < 2000 && !m; i++) {
        m = s_recv_within(router, 5);
        if (m && s_cmd(m) != 0x04)
            zmsg_destroy(&m);
        assert_int_equal(router_mdp_worker_recv(w, &b, &n, 0), 0);
    }
    assert_non_null(m);
    s_check_reply(m, "addr-A", "");
    zmsg_destroy(&m);
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "x", 1), -1); /* none held */
    s_send_cmd(router, id, 0x02, "addr-B", "turn-B");
    s_recv_body(w, "turn-B");
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done-B", 6), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-B", "done-B");
    zmsg_destroy(&m);
    zframe_destroy(&id);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

/* Out of memory for a later request about the turn held (a tool result,
 * a steer, a stop): recv answers -2, the turn is ended with an empty FINAL
 * (the router ends it AGENT_ERROR and has the worker back), the caller's
 * replies for it are refused, and the worker serves the next turn. Before,
 * recv returned -1, which callers read as the socket failing: the agent's
 * thread stopped serving and the turn waited for the router's timeout. */
static void test_later_request_without_memory(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    router_mdp_worker_t *w = s_worker(ep, 1000, state);
    zframe_t *id = s_ready_id(router, w);
    s_send_cmd(router, id, 0x02, "addr-A", "turn-A");
    s_recv_body(w, "turn-A");
    s_send_cmd(router, id, 0x02, "addr-A", "result-A");
    uint8_t *b = NULL;
    size_t n = 0;
    bool failed = false;
    int rc = 0;
    for (int i = 0; i < 2000 && !failed; i++) {
        alloc_fail_arm(0);
        rc = router_mdp_worker_recv(w, &b, &n, 5);
        failed = alloc_fail_disarm() > 0;
        if (!failed)
            assert_int_equal(rc, 0);
        assert_null(b);
    }
    assert_true(failed);
    assert_int_equal(rc, -2);
    zmsg_t *m = s_expect(router, 0x04);
    s_check_reply(m, "addr-A", "");
    zmsg_destroy(&m);
    assert_int_equal(router_mdp_worker_partial(w, (const uint8_t *) "p", 1), -1);
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "x", 1), -1);
    s_send_cmd(router, id, 0x02, "addr-A", "steer-late"); /* the turn is over: dropped */
    s_send_cmd(router, id, 0x02, "addr-B", "turn-B");
    s_recv_body(w, "turn-B");
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done-B", 6), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-B", "done-B");
    zmsg_destroy(&m);
    zframe_destroy(&id);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

/* What the broker may send wrong is ignored (not MDPW02, a command MDP
 * does not have, a REQUEST without its frames), a REQUEST for the turn
 * just finished is dropped, and DISCONNECT makes the worker come back on a
 * new connection, READY, serving. */
static void test_broker_junk_and_disconnect(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    router_mdp_worker_t *w = s_worker(ep, 1000, state);
    zframe_t *id = s_ready_id(router, w);
    zmsg_t *m = zmsg_new();
    zmsg_append(m, &(zframe_t *) {zframe_dup(id)});
    zmsg_addmem(m, "", 0);
    zmsg_addstr(m, "MDPX99");
    zmsg_addmem(m, &(uint8_t) {0x02}, 1);
    assert_int_equal(zmsg_send(&m, router), 0);
    s_send_cmd(router, id, 0x09, NULL, NULL);
    s_send_cmd(router, id, 0x02, NULL, NULL); /* a REQUEST without address or body */
    s_send_cmd(router, id, 0x02, "addr-A", "turn-A");
    s_recv_body(w, "turn-A");
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done-A", 6), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-A", "done-A");
    zmsg_destroy(&m);
    s_send_cmd(router, id, 0x02, "addr-A", "steer-late"); /* dropped */
    uint64_t before = router_mdp_worker_reconnects(w);
    s_send_cmd(router, id, 0x06, NULL, NULL);
    zframe_t *id2 = s_ready_id(router, w);
    assert_false(zframe_eq(id, id2));
    assert_int_equal(router_mdp_worker_reconnects(w), before + 1);
    s_send_cmd(router, id2, 0x02, "addr-B", "turn-B");
    s_recv_body(w, "turn-B"); /* not the late steer */
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done-B", 6), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-B", "done-B");
    zmsg_destroy(&m);
    zframe_destroy(&id);
    zframe_destroy(&id2);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

/* A worker beating every hb ms that declares this silent test broker dead
 * only after a minute: the tests below see its heartbeats, not reconnects. */
static router_mdp_worker_t *s_worker_patient(const char *ep, int hb, void **state)
{
    char err[256] = "";
    router_mdp_worker_opts_t o = {.endpoint = ep, .service = "kith.test",
                                  .heartbeat_ms = hb, .liveness = 60000 / hb,
                                  .same_thread = *(bool *) *state};
    router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
    if (!w)
        fprintf(stderr, "worker: %s\n", err);
    assert_non_null(w);
    return w;
}

typedef struct {
    zsock_t *router;
    int partials;      /* PARTIALs received, each "p<n>" in order */
    bool in_order;
    bool final;
} s_reader_t;

/* The broker that falls behind: reads nothing for half a second, then
 * everything, until the FINAL or ten seconds of heartbeats only. */
static void *s_reader_main(void *arg)
{
    s_reader_t *r = arg;
    usleep(500 * 1000);
    zmsg_t *m;
    int quiet = 0; /* heartbeats in a row: the worker beats every 100 ms */
    while (!r->final && quiet < 100 && (m = s_recv_within(r->router, 10000))) {
        uint8_t cmd = s_cmd(m);
        quiet = cmd == 0x05 ? quiet + 1 : 0;
        if (cmd == 0x03) {
            zframe_t *f = zmsg_last(m);
            char want[32];
            snprintf(want, sizeof want, "p%d", r->partials++);
            r->in_order = r->in_order && zframe_streq(f, want);
        } else if (cmd == 0x04) {
            r->final = zframe_streq(zmsg_last(m), "done");
        }
        zmsg_destroy(&m);
    }
    return NULL;
}

/* A broker that falls behind while a turn streams (its loop busy, the
 * socket's queue full): the replies wait for room, none is dropped. Before,
 * each PARTIAL past the queue's bound was dropped without a word (text
 * missing from the reply) and so was the FINAL: the broker then held the
 * request for ever from a worker that heartbeats, and handed that worker
 * nothing again. */
static void test_replies_wait_for_a_broker_behind(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    assert_non_null(router);
    zsock_set_rcvhwm(router, 10);
    assert_true(zsock_bind(router, "%s", ep) >= 0);
    router_mdp_worker_t *w = s_worker_patient(ep, 100, state);
    zframe_t *id = s_ready_id(router, w);
    s_send_cmd(router, id, 0x02, "addr-A", "turn-A");
    s_recv_body(w, "turn-A");
    s_reader_t rd = {.router = router, .in_order = true};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_reader_main, &rd), 0);
    enum { N = 3000 };
    for (int i = 0; i < N; i++) {
        char p[32];
        int n = snprintf(p, sizeof p, "p%d", i);
        assert_int_equal(router_mdp_worker_partial(w, (const uint8_t *) p, (size_t) n), 0);
    }
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done", 4), 0);
    pthread_join(t, NULL);
    if (!rd.final || rd.partials != N)
        fprintf(stderr, "partials %d of %d, final %d\n", rd.partials, N, rd.final);
    assert_int_equal(rd.partials, N);
    assert_true(rd.in_order);
    assert_true(rd.final);
    zframe_destroy(&id);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

/* A broker that reads nothing at all while a turn streams: the reply that
 * finds the queue full waits heartbeat x liveness (1 s here), then the
 * broker is declared dead: the turn's later replies are discarded, and
 * after its FINAL the worker says READY on a fresh connection (a new
 * identity), where the next turn comes. Nothing waits for ever. */
static void test_replies_to_a_broker_that_never_reads(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    assert_non_null(router);
    zsock_set_rcvhwm(router, 10);
    assert_true(zsock_bind(router, "%s", ep) >= 0);
    char err[256] = "";
    router_mdp_worker_opts_t o = {.endpoint = ep, .service = "kith.test", .heartbeat_ms = 50,
                                  .liveness = 20, .same_thread = *(bool *) *state};
    router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
    assert_non_null(w);
    zframe_t *id = s_ready_id(router, w);
    s_send_cmd(router, id, 0x02, "addr-A", "turn-A");
    s_recv_body(w, "turn-A");
    for (int i = 0; i < 3000; i++)
        assert_int_equal(router_mdp_worker_partial(w, (const uint8_t *) "p", 1), 0);
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done", 4), 0);
    assert_true(router_mdp_worker_reconnects(w) >= 1);
    zframe_t *id2 = s_ready_id(router, w);
    assert_false(zframe_eq(id, id2));
    s_send_cmd(router, id2, 0x02, "addr-B", "turn-B");
    s_recv_body(w, "turn-B");
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done-B", 6), 0);
    /* The old connection's PARTIALs still queued come first, interleaved. */
    zmsg_t *m = NULL;
    for (int i = 0; i < 10000 && !m; i++) {
        m = s_recv(router);
        assert_non_null(m);
        if (!zframe_eq(zmsg_first(m), id2) || s_cmd(m) != 0x04)
            zmsg_destroy(&m);
    }
    assert_non_null(m);
    s_check_reply(m, "addr-B", "done-B");
    zmsg_destroy(&m);
    zframe_destroy(&id);
    zframe_destroy(&id2);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

/* A REQUEST about the turn held (a steer, a tool result) that reaches the
 * worker before the caller's FINAL for that turn has gone out is dropped:
 * the caller has ended the turn, and its next recv is the next turn.
 * Before, a worker on its own thread handed the steer over after the
 * FINAL, where the caller, holding no turn, took it for a new one. */
static void test_request_racing_final(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    router_mdp_worker_t *w = s_worker_patient(ep, 20, state);
    zframe_t *id = s_ready_id(router, w);
    s_send_cmd(router, id, 0x02, "addr-A", "turn-A");
    s_recv_body(w, "turn-A");
    zmsg_t *m;
    while ((m = zmsg_recv_nowait(router)))
        zmsg_destroy(&m);
    s_send_cmd(router, id, 0x02, "addr-A", "steer-A");
    if (!*(bool *) *state) {
        /* The socket's thread reads a waiting message before it beats:
         * three heartbeats sent after the steer mean it has read the
         * steer and handed it over, ahead of the FINAL below. */
        for (int i = 0; i < 3; i++) {
            m = s_expect(router, 0x05);
            zmsg_destroy(&m);
        }
    }
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done-A", 6), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-A", "done-A");
    zmsg_destroy(&m);
    s_send_cmd(router, id, 0x02, "addr-B", "turn-B");
    s_recv_body(w, "turn-B"); /* not steer-A */
    assert_int_equal(router_mdp_worker_final(w, (const uint8_t *) "done-B", 6), 0);
    m = s_expect(router, 0x04);
    s_check_reply(m, "addr-B", "done-B");
    zmsg_destroy(&m);
    zframe_destroy(&id);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

/* A broker that refuses the worker (1 024 workers already, 16 services)
 * answers each READY with DISCONNECT: the worker comes back, but one
 * heartbeat after each DISCONNECT, not at once. Before, it reconnected the
 * moment the DISCONNECT came, and worker and broker spun, a connection and
 * a READY per round trip, as long as the refusal lasted. (Only a lower
 * bound on the time is checked: a loaded machine makes it longer.) */
static void test_refused_worker_paced(void **state)
{
    enum { HB = 100, READIES = 4 };
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    router_mdp_worker_t *w = s_worker_patient(ep, HB, state);
    int64_t first = 0;
    int readies = 0;
    for (int tries = 0; tries < 20000 && readies < READIES; tries++) {
        zmsg_t *m = s_recv_within(router, 5);
        if (m && s_cmd(m) == 0x01) {
            if (readies++ == 0)
                first = zclock_mono();
            s_send_cmd(router, zmsg_first(m), 0x06, NULL, NULL);
        }
        zmsg_destroy(&m);
        uint8_t *b = NULL;
        size_t n = 0;
        assert_int_equal(router_mdp_worker_recv(w, &b, &n, 0), 0);
    }
    assert_int_equal(readies, READIES);
    assert_true(zclock_mono() - first >= (READIES - 1) * HB);
    assert_true(router_mdp_worker_reconnects(w) >= READIES - 1);
    router_mdp_worker_destroy(&w);
    zsock_destroy(&router);
}

/* Every allocation of kith's in new failing in turn: NULL with a reason,
 * or a worker that serves. */
static void test_new_without_memory(void **state)
{
    char ep[64];
    s_endpoint(ep, sizeof ep);
    zsock_t *router = zsock_new_router(ep);
    bool made = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !made; i++) {
        char err[256] = "";
        router_mdp_worker_opts_t o = {.endpoint = ep, .service = "kith.test",
                                      .same_thread = *(bool *) *state};
        alloc_fail_arm(i);
        router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!w) {
            assert_true(failed);
            assert_non_null(strstr(err, "mdp worker: "));
        }
        made = w && !failed;
        router_mdp_worker_destroy(&w);
    }
    assert_true(made);
    zsock_destroy(&router);
}

/* A CURVE worker with its certificate file, each allocation of ours
 * failing in turn: made on the first run that gets that far, read after.
 * A refusal leaks nothing, the certificate included (LSan). */
static void test_new_curve_without_memory(void **state)
{
    char dir[] = "/tmp/kith-mdp-worker-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], secret[300];
    snprintf(path, sizeof path, "%s/w.cert", dir);
    snprintf(secret, sizeof secret, "%s_secret", path);
    zcert_t *server = zcert_new();
    char ep[64];
    s_endpoint(ep, sizeof ep);
    bool made = false;
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX && !made; i++) {
        char err[256] = "";
        router_mdp_worker_opts_t o = {.endpoint = ep, .service = "kith.test",
                                      .same_thread = *(bool *) *state,
                                      .curve_server_key = zcert_public_txt(server),
                                      .curve_cert_path = path};
        alloc_fail_arm(i);
        router_mdp_worker_t *w = router_mdp_worker_new(&o, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!w) {
            assert_true(failed);
            assert_non_null(strstr(err, "mdp worker: "));
        }
        made = w && !failed;
        router_mdp_worker_destroy(&w);
    }
    assert_true(made);
    zcert_destroy(&server);
    unlink(secret);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_turn_round_trip, &s_own_thread),
        cmocka_unit_test(test_cert_path_too_long_for_czmq),
        cmocka_unit_test(test_cert_files_refused),
        cmocka_unit_test_prestate(test_turn_round_trip, &s_same_thread),
        cmocka_unit_test_prestate(test_heartbeats_and_reconnect, &s_own_thread),
        cmocka_unit_test_prestate(test_heartbeats_and_reconnect, &s_same_thread),
        cmocka_unit_test_prestate(test_interrupt, &s_own_thread),
        cmocka_unit_test_prestate(test_interrupt, &s_same_thread),
        cmocka_unit_test_prestate(test_turn_without_memory, &s_own_thread),
        cmocka_unit_test_prestate(test_turn_without_memory, &s_same_thread),
        cmocka_unit_test_prestate(test_later_request_without_memory, &s_own_thread),
        cmocka_unit_test_prestate(test_later_request_without_memory, &s_same_thread),
        cmocka_unit_test_prestate(test_broker_junk_and_disconnect, &s_own_thread),
        cmocka_unit_test_prestate(test_broker_junk_and_disconnect, &s_same_thread),
        cmocka_unit_test_prestate(test_replies_wait_for_a_broker_behind, &s_own_thread),
        cmocka_unit_test_prestate(test_replies_wait_for_a_broker_behind, &s_same_thread),
        cmocka_unit_test_prestate(test_replies_to_a_broker_that_never_reads, &s_own_thread),
        cmocka_unit_test_prestate(test_replies_to_a_broker_that_never_reads, &s_same_thread),
        cmocka_unit_test_prestate(test_request_racing_final, &s_own_thread),
        cmocka_unit_test_prestate(test_request_racing_final, &s_same_thread),
        cmocka_unit_test_prestate(test_refused_worker_paced, &s_own_thread),
        cmocka_unit_test_prestate(test_refused_worker_paced, &s_same_thread),
        cmocka_unit_test_prestate(test_new_without_memory, &s_own_thread),
        cmocka_unit_test_prestate(test_new_without_memory, &s_same_thread),
        cmocka_unit_test_prestate(test_new_curve_without_memory, &s_own_thread),
        cmocka_unit_test_prestate(test_new_curve_without_memory, &s_same_thread),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_cert_made),
        cmocka_unit_test(test_cert_made_by_many_at_once),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    zsys_shutdown();
    return rc;
}
