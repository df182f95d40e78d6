/* tests/comms_test.c — the receive side of signed comms driven directly on
 * its own loop thread through socket pairs: the bounds on frames waiting
 * in the checks (per connection and for all connections together) hold
 * while the crypto threads are held, every connection that stopped for
 * them reads again once they drain, and no envelope is lost on the way.
 * Runs on io_uring and, as comms_test@epoll, on epoll. */
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
#include "router/net/loop.h"
#include "router/state/identity.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"

/* Enough connections that their own bounds together pass the total:
 * CONNS * CONN_JOBS_MAX > JOBS_MAX. */
#define CONNS 64
/* Frames each sends: more than one connection's bound, so each one stops. */
#define PER_CONN (ROUTER_COMMS_CONN_JOBS_MAX + 14)

typedef struct {
    /* set up on the loop thread */
    router_loop_t *loop;
    router_inbox_t *inbox;
    router_trust_t *trust;
    router_comms_t *comms;
    router_identity_t id;
    int server_fd[CONNS];
    /* handshakes with the test thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
    bool failed;
    bool stats_ready;
    router_comms_stats_t stats;
} s_node_t;

static uint8_t s_peer_pk[32], s_peer_sk[64];

static void *s_loop_main(void *arg)
{
    s_node_t *n = arg;
    char err[256];
    n->loop = router_loop_new(NULL);
    router_inbox_opts_t io = {.capacity = CONNS * PER_CONN * 2, .session = "comms"};
    n->inbox = n->loop ? router_inbox_new(&io, err, sizeof err) : NULL;
    n->trust = router_trust_new();
    bool ok = n->inbox && n->trust &&
              router_trust_add(n->trust, "alice", s_peer_pk, "tcp://127.0.0.1:9", NULL, NULL, 0, err,
                               sizeof err) == 0;
    if (ok) {
        router_comms_opts_t co = {
            .loop = n->loop,
            .identity = &n->id,
            .trust = n->trust,
            .inbox = n->inbox,
            .replay_window_s = 300,
            .require_peer_auth = true,
            .crypto_threads = 1,
        };
        n->comms = router_comms_new(&co);
        ok = n->comms != NULL;
    }
    if (ok) {
        router_comms_test_hold_crypto(n->comms, true);
        for (int i = 0; i < CONNS && ok; i++)
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

/* A signed `message` from alice to `to`, as a frame; caller frees. */
static uint8_t *s_frame(const uint8_t to[32], unsigned i, size_t *len)
{
    char body[32];
    int bl = snprintf(body, sizeof body, "m%u", i);
    proto_envelope_reason_t why;
    cbor_item_t *kind = proto_kind_message(body, (size_t) bl, NULL, PROTO_HANDLING_NONE);
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

/* Frames in the checks stop at the totals while the crypto threads are
 * held: each connection stops at its own bound or, once the totals are
 * full, at its next read, waiting for room; when the threads catch up,
 * every waiting connection reads on and every envelope is acked, in order. */
static void test_jobs_bounded_for_all_connections(void **state)
{
    (void) state;
    s_node_t n = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    uint8_t seed[32];
    memset(seed, 0x42, sizeof seed);
    crypto_sign_seed_keypair(n.id.pk, n.id.sk, seed);
    int client_fd[CONNS];
    for (int i = 0; i < CONNS; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        /* Room for every frame and every ack at once, so neither side's
         * writes wait for the other's reads. */
        int buf = 1 << 20;
        (void) setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        (void) setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        client_fd[i] = sv[0];
        n.server_fd[i] = sv[1];
    }

    /* Every frame is signed before any is sent. */
    uint8_t *frames[CONNS];
    size_t frames_len[CONNS], min_len = SIZE_MAX;
    static uint8_t ids[CONNS][PER_CONN][16];
    for (int c = 0; c < CONNS; c++) {
        frames[c] = NULL;
        frames_len[c] = 0;
        for (unsigned i = 0; i < PER_CONN; i++) {
            size_t len;
            uint8_t *f = s_frame(n.id.pk, (unsigned) c * PER_CONN + i, &len);
            proto_envelope_t *env = NULL;
            proto_envelope_reason_t why;
            assert_int_equal(proto_envelope_decode_frame(f, len, &env, &why), 0);
            memcpy(ids[c][i], proto_envelope_id(env), 16);
            proto_envelope_destroy(&env);
            frames[c] = realloc(frames[c], frames_len[c] + len);
            assert_non_null(frames[c]);
            memcpy(frames[c] + frames_len[c], f, len);
            frames_len[c] += len;
            min_len = min_len < len ? min_len : len;
            free(f);
        }
    }

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_loop_main, &n), 0);
    pthread_mutex_lock(&n.mu);
    while (!n.ready)
        pthread_cond_wait(&n.cv, &n.mu);
    pthread_mutex_unlock(&n.mu);
    assert_false(n.failed);

    for (int c = 0; c < CONNS; c++)
        s_write_all(client_fd[c], frames[c], frames_len[c]);

    /* Every connection stops reading: none can read all its frames, since
     * PER_CONN passes its own bound. */
    router_comms_stats_t st;
    do {
        st = s_stats(&n);
    } while (st.paused < CONNS);
    /* The totals stopped some before their own bound ... */
    assert_true(st.waiting > 0);
    assert_true(st.jobs >= ROUTER_COMMS_JOBS_MAX);
    /* ... so fewer frames wait than the connections' bounds alone allow,
     * and no more than the total plus one read per connection. */
    size_t per_read = ROUTER_CONN_TURN_BYTES / min_len + 1;
    assert_true(st.jobs < (size_t) CONNS * ROUTER_COMMS_CONN_JOBS_MAX);
    assert_true(st.jobs <= ROUTER_COMMS_JOBS_MAX + CONNS * per_read);
    assert_int_equal(st.admitted, 0);

    /* The threads catch up: everyone is read to the end and acked. */
    router_comms_test_hold_crypto(n.comms, false);
    uint8_t ack[PROTO_ACK_FRAME_LEN];
    for (int c = 0; c < CONNS; c++)
        for (unsigned i = 0; i < PER_CONN; i++) {
            s_read_all(client_fd[c], ack, sizeof ack);
            proto_envelope_t *env = NULL;
            proto_envelope_reason_t why;
            assert_int_equal(proto_envelope_decode_frame(ack, sizeof ack, &env, &why), 0);
            assert_int_equal(proto_envelope_kind(env), PROTO_KIND_ACK);
            uint8_t irt[16];
            assert_int_equal(proto_envelope_in_reply_to(env, irt), 0);
            assert_memory_equal(irt, ids[c][i], 16);
            proto_envelope_destroy(&env);
        }
    st = s_stats(&n);
    assert_int_equal(st.admitted, (uint64_t) CONNS * PER_CONN);
    assert_int_equal(st.acked, (uint64_t) CONNS * PER_CONN);
    assert_int_equal(st.paused, 0);
    assert_int_equal(st.waiting, 0);

    while (router_loop_post(n.loop, s_stop_post, &n) != 0)
        usleep(1000);
    pthread_join(th, NULL);
    for (int c = 0; c < CONNS; c++) {
        close(client_fd[c]);
        free(frames[c]);
    }
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    crypto_sign_keypair(s_peer_pk, s_peer_sk);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobs_bounded_for_all_connections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
