/* tests/comms_durable_test.c — the receive side of signed comms over a durable
 * inbox whose disk fails (tests/vfs_fail.h): an admitted envelope is not
 * acked while the commit that holds it and its replay-window row keeps
 * failing (WIRE §6.1, §6.3: "the ack waits for that transaction"); once the
 * disk recovers it is acked, and the same envelope sent again is refused as
 * a replay with an orderly close and no second ack. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "proto/envelope.h"
#include "router/comms/comms.h"
#include "router/net/loop.h"
#include "router/state/identity.h"
#include "router/state/inbox.h"
#include "router/state/trust.h"
#include "vfs_fail.h"

/* A node on its own loop thread serving one connection. */
typedef struct {
    router_loop_t *loop;
    router_inbox_t *inbox;
    router_trust_t *trust;
    router_comms_t *comms;
    router_identity_t id;
    const char *db;        /* the inbox's database */
    int server_fd;         /* kith's end of the socket pair */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready, failed, stats_ready;
    router_comms_stats_t stats;
} s_node_t;

static uint8_t s_peer_pk[32], s_peer_sk[64];

static void *s_loop_main(void *arg)
{
    s_node_t *n = arg;
    char err[256];
    n->loop = router_loop_new(NULL);
    router_inbox_opts_t io = {.capacity = 64, .db_path = n->db, .session = "comms"};
    n->inbox = n->loop ? router_inbox_new(&io, err, sizeof err) : NULL;
    n->trust = router_trust_new();
    bool ok = n->inbox && n->trust &&
              router_trust_add(n->trust, "alice", s_peer_pk, "tcp://127.0.0.1:9", NULL, NULL, 0, err,
                               sizeof err) == 0;
    if (ok) {
        router_comms_opts_t co = {.loop = n->loop, .identity = &n->id, .trust = n->trust,
                                  .inbox = n->inbox, .replay_window_s = 300,
                                  .require_peer_auth = true, .crypto_threads = 1};
        n->comms = router_comms_new(&co);
        ok = n->comms && router_comms_serve_fd(n->comms, n->server_fd) == 0;
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
        usleep(1000);
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

/* Reads len bytes; returns how many came before the end of stream. */
static size_t s_read_upto(int fd, uint8_t *p, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t k = read(fd, p + got, len - got);
        if (k < 0 && errno == EINTR)
            continue;
        assert_true(k >= 0);
        if (k == 0)
            break;
        got += (size_t) k;
    }
    return got;
}

static void test_no_ack_until_durable(void **state)
{
    (void) state;
    char dir[] = "/tmp/kith-comms-durable-XXXXXX", db[256];
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/state.db", dir);
    s_node_t n = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .db = db};
    crypto_sign_keypair(n.id.pk, n.id.sk);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    n.server_fd = sv[1];

    proto_envelope_reason_t why;
    cbor_item_t *kind = proto_kind_message("kept", 4, NULL, PROTO_HANDLING_NONE);
    proto_envelope_t *env = proto_envelope_new(NULL, s_peer_pk, n.id.pk, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, s_peer_sk), 0);
    uint8_t *frame = NULL, id[16];
    size_t len = 0;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, &len), 0);
    memcpy(id, proto_envelope_id(env), 16);
    proto_envelope_destroy(&env);

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_loop_main, &n), 0);
    pthread_mutex_lock(&n.mu);
    while (!n.ready)
        pthread_cond_wait(&n.cv, &n.mu);
    pthread_mutex_unlock(&n.mu);
    assert_false(n.failed);

    /* Every fsync of the inbox fails from now on: nothing commits. */
    vfs_fail_arm(VFS_FAIL_SYNC, dir, 0, -1);
    s_write_all(sv[0], frame, len);
    /* A deadline for progress, not a timing: the store failed, retried
     * and failed again. */
    for (int i = 0; i < 600 && router_inbox_commit_failures(n.inbox) < 2; i++)
        usleep(50 * 1000);
    assert_true(router_inbox_commit_failures(n.inbox) >= 2);
    router_comms_stats_t st = s_stats(&n);
    assert_int_equal(st.admitted, 1);
    assert_int_equal(st.acked, 0);
    struct pollfd p = {.fd = sv[0], .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0); /* no ack for what is not durable */

    /* The disk recovers: the retry commits, and only now the ack. */
    vfs_fail_clear();
    uint8_t ack[PROTO_ACK_FRAME_LEN];
    assert_int_equal(s_read_upto(sv[0], ack, sizeof ack), sizeof ack);
    proto_envelope_t *a = NULL;
    assert_int_equal(proto_envelope_decode_frame(ack, sizeof ack, &a, &why), 0);
    uint8_t irt[16];
    assert_int_equal(proto_envelope_kind(a), PROTO_KIND_ACK);
    assert_int_equal(proto_envelope_in_reply_to(a, irt), 0);
    assert_memory_equal(irt, id, 16);
    assert_int_equal(proto_envelope_verify(a, &why), 0);
    proto_envelope_destroy(&a);

    /* The same envelope again: a replay, refused with an orderly close,
     * never a second admission or ack. */
    s_write_all(sv[0], frame, len);
    assert_int_equal(s_read_upto(sv[0], ack, sizeof ack), 0);
    st = s_stats(&n);
    assert_int_equal(st.admitted, 1);
    assert_int_equal(st.acked, 1);

    while (router_loop_post(n.loop, s_stop_post, &n) != 0)
        usleep(1000);
    pthread_join(th, NULL);
    close(sv[0]);
    free(frame);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    if (sodium_init() < 0 || alloc_fail_sqlite_install() != 0 || vfs_fail_install() != 0)
        return 1;
    crypto_sign_keypair(s_peer_pk, s_peer_sk);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_ack_until_durable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
