/* tests/comms_test.c — the receive side of signed comms driven directly on
 * its own loop thread through socket pairs: the bounds on frames waiting
 * in the checks (per connection and for all connections together) hold
 * while the crypto threads are held, every connection that stopped for
 * them reads again once they drain, and no envelope is lost on the way;
 * a connection held back gets the time it was held on top of its frame
 * deadline, and only then. Runs on io_uring and, as comms_test@epoll, on
 * epoll. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "proto/envelope.h"
#include "router/comms/comms.h"
#include "router/comms/guard.h"
#include "router/net/loop.h"
#include "router/state/identity.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"

typedef struct {
    /* set up on the loop thread */
    router_loop_t *loop;
    router_inbox_t *inbox;
    router_trust_t *trust;
    router_comms_t *comms;
    router_identity_t id;
    unsigned conns;       /* connections served */
    int server_fd[64];    /* their kith ends */
    size_t inbox_bytes;   /* room the inbox needs */
    uint32_t frame_ms;    /* the guard's frame deadline; 0: comms' own guard */
    router_guard_t *guard;
    /* handshakes with the test thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
    bool failed;
    bool stats_ready;
    router_comms_stats_t stats;
    router_guard_stats_t guard_stats;
} s_node_t;

static uint8_t s_peer_pk[32], s_peer_sk[64];

static void *s_loop_main(void *arg)
{
    s_node_t *n = arg;
    char err[256];
    n->loop = router_loop_new(NULL);
    router_inbox_opts_t io = {.capacity = 100000, .max_bytes = n->inbox_bytes, .session = "comms"};
    n->inbox = n->loop ? router_inbox_new(&io, err, sizeof err) : NULL;
    n->trust = router_trust_new();
    bool ok = n->inbox && n->trust &&
              router_trust_add(n->trust, "alice", s_peer_pk, "tcp://127.0.0.1:9", NULL, NULL, 0, err,
                               sizeof err) == 0;
    if (ok && n->frame_ms) {
        router_guard_opts_t go = {.loop = n->loop, .frame_ms = n->frame_ms};
        n->guard = router_guard_new(&go);
        ok = n->guard != NULL;
    }
    if (ok) {
        router_comms_opts_t co = {
            .loop = n->loop,
            .identity = &n->id,
            .trust = n->trust,
            .inbox = n->inbox,
            .replay_window_s = 300,
            .require_peer_auth = true,
            .crypto_threads = 1,
            .guard = n->guard,
        };
        n->comms = router_comms_new(&co);
        ok = n->comms != NULL;
    }
    if (ok) {
        router_comms_test_hold_crypto(n->comms, true);
        for (unsigned i = 0; i < n->conns && ok; i++)
            ok = router_comms_serve_fd(n->comms, n->server_fd[i]) == 0;
    }
    pthread_mutex_lock(&n->mu);
    n->ready = true;
    n->failed = !ok;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (ok)
        (void) router_loop_run(n->loop);
    router_comms_destroy(&n->comms);
    router_guard_destroy(&n->guard);
    router_loop_destroy(&n->loop);
    router_inbox_destroy(&n->inbox);
    router_trust_destroy(&n->trust);
    return NULL;
}

/* Copies the comms' stats, on the loop thread, for the test thread. */
static void s_stats_post(router_loop_t *loop, void *arg)
{
    (void) loop;
    s_node_t *n = arg;
    pthread_mutex_lock(&n->mu);
    router_comms_stats(n->comms, &n->stats);
    if (n->guard)
        router_guard_stats(n->guard, &n->guard_stats);
    n->stats_ready = true;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

static router_comms_stats_t s_stats(s_node_t *n)
{
    pthread_mutex_lock(&n->mu);
    n->stats_ready = false;
    pthread_mutex_unlock(&n->mu);
    while (router_loop_post(n->loop, s_stats_post, n) != 0)
        usleep(1000); /* the post queue is full: it drains */
    pthread_mutex_lock(&n->mu);
    while (!n->stats_ready)
        pthread_cond_wait(&n->cv, &n->mu);
    router_comms_stats_t st = n->stats;
    pthread_mutex_unlock(&n->mu);
    return st;
}

static void s_stop_post(router_loop_t *loop, void *arg)
{
    (void) arg;
    router_loop_stop(loop);
}

/* Starts n's loop thread and waits until it serves its connections. */
static pthread_t s_node_start(s_node_t *n)
{
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_loop_main, n), 0);
    pthread_mutex_lock(&n->mu);
    while (!n->ready)
        pthread_cond_wait(&n->cv, &n->mu);
    pthread_mutex_unlock(&n->mu);
    assert_false(n->failed);
    return th;
}

static void s_node_stop(s_node_t *n, pthread_t th)
{
    while (router_loop_post(n->loop, s_stop_post, n) != 0)
        usleep(1000);
    pthread_join(th, NULL);
}

/* A signed `message` from alice to `to`, as a frame; caller frees. */
static uint8_t *s_frame(const uint8_t to[32], const char *body, size_t body_len, size_t *len)
{
    proto_envelope_reason_t why;
    cbor_item_t *kind = proto_kind_message(body, body_len, NULL, PROTO_HANDLING_NONE);
    proto_envelope_t *env = proto_envelope_new(NULL, s_peer_pk, to, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, s_peer_sk), 0);
    uint8_t *out = NULL;
    assert_int_equal(proto_envelope_encode_frame(env, &out, len), 0);
    proto_envelope_destroy(&env);
    return out;
}

static void s_write_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0 && errno == EINTR)
            continue;
        assert_true(k > 0);
        p += k;
        len -= (size_t) k;
    }
}

static void s_read_all(int fd, uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t k = read(fd, p, len);
        if (k < 0 && errno == EINTR)
            continue;
        assert_true(k > 0);
        p += k;
        len -= (size_t) k;
    }
}

/* Reads the next frame on fd and checks it is the ack of envelope `id`. */
static void s_read_ack(int fd, const uint8_t id[16])
{
    uint8_t ack[PROTO_ACK_FRAME_LEN];
    s_read_all(fd, ack, sizeof ack);
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t why;
    assert_int_equal(proto_envelope_decode_frame(ack, sizeof ack, &env, &why), 0);
    assert_int_equal(proto_envelope_kind(env), PROTO_KIND_ACK);
    uint8_t irt[16];
    assert_int_equal(proto_envelope_in_reply_to(env, irt), 0);
    assert_memory_equal(irt, id, 16);
    proto_envelope_destroy(&env);
}

/* One client connection's frames, written on a thread of its own: a
 * connection kith has stopped reading blocks its writer, not the test. */
typedef struct {
    int fd;
    uint8_t *frames;
    size_t len;
    pthread_t th;
} s_client_t;

static void *s_writer_main(void *arg)
{
    s_client_t *c = arg;
    s_write_all(c->fd, c->frames, c->len);
    return NULL;
}

/* What the connections held at the moment every one had stopped. */
typedef struct {
    router_comms_stats_t st;
    size_t min_len, max_len; /* the smallest and largest frame sent */
} s_held_t;

/* Runs `conns` connections of `per_conn` envelopes (bodies of body_len
 * bytes) into a node whose crypto threads are held; once every connection
 * has stopped reading, returns what was held in *held, then lets the
 * threads go and checks that every envelope is acked, in order. */
static void s_run_held(unsigned conns, unsigned per_conn, size_t body_len, s_held_t *held)
{
    s_node_t n = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    assert_true(conns <= sizeof n.server_fd / sizeof n.server_fd[0]);
    n.conns = conns;
    n.inbox_bytes = (size_t) conns * per_conn * (body_len + 512);
    uint8_t seed[32];
    memset(seed, 0x42, sizeof seed);
    crypto_sign_seed_keypair(n.id.pk, n.id.sk, seed);
    s_client_t *cl = calloc(conns, sizeof *cl);
    uint8_t(*ids)[16] = calloc((size_t) conns * per_conn, 16);
    char *body = malloc(body_len + 1);
    assert_non_null(cl);
    assert_non_null(ids);
    assert_non_null(body);
    held->min_len = SIZE_MAX;
    held->max_len = 0;
    for (unsigned c = 0; c < conns; c++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        cl[c].fd = sv[0];
        n.server_fd[c] = sv[1];
        /* Every frame is signed before any is sent. */
        for (unsigned i = 0; i < per_conn; i++) {
            int k = snprintf(body, body_len + 1, "m%u.%u ", c, i);
            memset(body + k, 'x', body_len > (size_t) k ? body_len - (size_t) k : 0);
            size_t len;
            uint8_t *f = s_frame(n.id.pk, body, body_len > (size_t) k ? body_len : (size_t) k,
                                 &len);
            proto_envelope_t *env = NULL;
            proto_envelope_reason_t why;
            assert_int_equal(proto_envelope_decode_frame(f, len, &env, &why), 0);
            memcpy(ids[c * per_conn + i], proto_envelope_id(env), 16);
            proto_envelope_destroy(&env);
            cl[c].frames = realloc(cl[c].frames, cl[c].len + len);
            assert_non_null(cl[c].frames);
            memcpy(cl[c].frames + cl[c].len, f, len);
            cl[c].len += len;
            held->min_len = held->min_len < len ? held->min_len : len;
            held->max_len = held->max_len > len ? held->max_len : len;
            free(f);
        }
    }

    pthread_t th = s_node_start(&n);
    for (unsigned c = 0; c < conns; c++)
        assert_int_equal(pthread_create(&cl[c].th, NULL, s_writer_main, &cl[c]), 0);

    /* Every connection stops reading: each sends more than its own bound. */
    do {
        held->st = s_stats(&n);
    } while (held->st.paused < conns);
    assert_int_equal(held->st.admitted, 0);

    /* The threads catch up: everyone is read to the end and acked. */
    router_comms_test_hold_crypto(n.comms, false);
    for (unsigned c = 0; c < conns; c++)
        for (unsigned i = 0; i < per_conn; i++)
            s_read_ack(cl[c].fd, ids[c * per_conn + i]);
    router_comms_stats_t st = s_stats(&n);
    assert_int_equal(st.admitted, (uint64_t) conns * per_conn);
    assert_int_equal(st.acked, (uint64_t) conns * per_conn);
    assert_int_equal(st.paused, 0);
    assert_int_equal(st.waiting, 0);
    assert_int_equal(st.jobs, 0);
    assert_int_equal(st.job_bytes, 0);

    s_node_stop(&n, th);
    for (unsigned c = 0; c < conns; c++) {
        pthread_join(cl[c].th, NULL);
        close(cl[c].fd);
        free(cl[c].frames);
    }
    free(cl);
    free(ids);
    free(body);
}

/* Small frames stop at the total count: each connection stops at its own
 * bound or, once the totals are full, at its next read, waiting for room;
 * when the threads catch up, every waiting connection reads on. */
static void test_jobs_bounded_for_all_connections(void **state)
{
    (void) state;
    const unsigned conns = 64, per_conn = ROUTER_COMMS_CONN_JOBS_MAX + 14;
    s_held_t h;
    s_run_held(conns, per_conn, 8, &h);
    /* The totals stopped some before their own bound ... */
    assert_true(h.st.waiting > 0);
    assert_true(h.st.jobs >= ROUTER_COMMS_JOBS_MAX);
    /* ... so fewer frames wait than the connections' bounds alone allow,
     * and no more than the total plus one read per connection. */
    size_t per_read = ROUTER_CONN_TURN_BYTES / h.min_len + 1;
    assert_true(h.st.jobs < (size_t) conns * ROUTER_COMMS_CONN_JOBS_MAX);
    assert_true(h.st.jobs <= ROUTER_COMMS_JOBS_MAX + conns * per_read);
}

/* Large frames stop at the total bytes the same way. */
static void test_job_bytes_bounded_for_all_connections(void **state)
{
    (void) state;
    const size_t body = 256 * 1024;
    const unsigned conns = 20, per_conn = ROUTER_COMMS_CONN_JOB_BYTES_MAX / body + 1;
    s_held_t h;
    s_run_held(conns, per_conn, body, &h);
    assert_true(h.st.waiting > 0);
    assert_true(h.st.job_bytes >= ROUTER_COMMS_JOB_BYTES_MAX);
    /* Fewer bytes wait than the connections' own bounds allow, and no
     * more than the total plus the frame one read completes per connection. */
    assert_true(h.st.job_bytes < (size_t) conns * ROUTER_COMMS_CONN_JOB_BYTES_MAX);
    assert_true(h.st.job_bytes <= ROUTER_COMMS_JOB_BYTES_MAX + conns * h.max_len);
}

/* A peer kith held back is not late while its TCP may still be waiting to
 * learn the window reopened (a lost update is found at its next probe, up
 * to as long after the resume as the pause lasted): a frame begun before
 * the pause ends may take the pause's length on top of the frame deadline.
 * Once that grace has passed, the deadline cuts a stalled frame as before. */
static void test_held_back_peer_gets_its_pause_back(void **state)
{
    (void) state;
    const unsigned per_conn = ROUTER_COMMS_CONN_JOBS_MAX + 8;
    s_node_t n = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    n.conns = 1;
    n.frame_ms = 500;
    n.inbox_bytes = (size_t) (per_conn + 2) * 1024;
    uint8_t seed[32];
    memset(seed, 0x43, sizeof seed);
    crypto_sign_seed_keypair(n.id.pk, n.id.sk, seed);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    n.server_fd[0] = sv[1];

    /* per_conn whole frames (more than the connection's bound in the
     * checks) and the first half of one more, then, later, a frame whose
     * second half never comes. */
    s_client_t cl = {.fd = sv[0]};
    uint8_t(*ids)[16] = calloc(per_conn + 2, 16);
    uint8_t *tail = NULL, *last = NULL;
    size_t tail_len = 0, last_len = 0;
    assert_non_null(ids);
    for (unsigned i = 0; i < per_conn + 2; i++) {
        char body[32];
        int k = snprintf(body, sizeof body, "m%u", i);
        size_t len;
        uint8_t *f = s_frame(n.id.pk, body, (size_t) k, &len);
        proto_envelope_t *env = NULL;
        proto_envelope_reason_t why;
        assert_int_equal(proto_envelope_decode_frame(f, len, &env, &why), 0);
        memcpy(ids[i], proto_envelope_id(env), 16);
        proto_envelope_destroy(&env);
        size_t take = i == per_conn ? len / 2 : len;
        if (i <= per_conn) {
            cl.frames = realloc(cl.frames, cl.len + take);
            assert_non_null(cl.frames);
            memcpy(cl.frames + cl.len, f, take);
            cl.len += take;
        }
        if (i == per_conn) {
            tail_len = len - take;
            tail = malloc(tail_len);
            assert_non_null(tail);
            memcpy(tail, f + take, tail_len);
        }
        if (i == per_conn + 1) {
            last = f;
            last_len = len;
            continue;
        }
        free(f);
    }

    pthread_t th = s_node_start(&n);
    assert_int_equal(pthread_create(&cl.th, NULL, s_writer_main, &cl), 0);
    while (s_stats(&n).paused < 1)
        usleep(1000);
    /* Held back three seconds, six frame deadlines. */
    sleep(3);
    router_comms_test_hold_crypto(n.comms, false);
    for (unsigned i = 0; i < per_conn; i++)
        s_read_ack(cl.fd, ids[i]);
    pthread_join(cl.th, NULL);
    /* kith has read the half frame (it came before the frames just acked
     * were all read). The peer sends its second half later than a frame
     * deadline, as a peer that missed the window update would: served. */
    sleep(1);
    s_write_all(cl.fd, tail, tail_len);
    s_read_ack(cl.fd, ids[per_conn]);
    router_comms_stats_t st = s_stats(&n);
    assert_int_equal(st.admitted, per_conn + 1);
    assert_int_equal(n.guard_stats.cuts[ROUTER_GUARD_COMMS][ROUTER_GUARD_CUT_DEADLINE], 0);

    /* The grace has passed: a frame left half sent is cut at its deadline. */
    sleep(3);
    s_write_all(cl.fd, last, last_len / 2);
    uint8_t b;
    ssize_t k;
    do
        k = read(cl.fd, &b, 1);
    while (k < 0 && errno == EINTR);
    assert_true(k == 0 || (k < 0 && errno == ECONNRESET));
    do
        st = s_stats(&n);
    while (st.open > 0 && usleep(1000) == 0);
    assert_int_equal(st.admitted, per_conn + 1);
    assert_int_equal(n.guard_stats.cuts[ROUTER_GUARD_COMMS][ROUTER_GUARD_CUT_DEADLINE], 1);

    s_node_stop(&n, th);
    close(cl.fd);
    free(cl.frames);
    free(tail);
    free(last);
    free(ids);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    crypto_sign_keypair(s_peer_pk, s_peer_sk);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobs_bounded_for_all_connections),
        cmocka_unit_test(test_job_bytes_bounded_for_all_connections),
        cmocka_unit_test(test_held_back_peer_gets_its_pause_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
