/* tests/outbound_test.c — router/comms/outbound.c on a real loop: a send
 * whose ack could never time out (no timer slot) is refused at once
 * (ENOSPC) instead of waiting forever, and no callback is owed; a kind that
 * gets no ack is reported sent only once its connection is open, never
 * when the connection could not be made; a send given several addresses
 * (a DNS name's) dials the next when one refuses or does not answer in its
 * share of the time, with every frame waiting, and reports offline only
 * when none connects; no memory for a frame's copy refuses the send. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>
#include <stdlib.h>

#include "alloc_fail.h"
#include "proto/envelope.h"
#include "loop_until.h"
#include "proto/frame.h"
#include "router/comms/outbound.h"
#include "router/net/conn.h"
#include "router/net/listen.h"
#include "router/net/loop.h"

static void s_never(router_loop_t *loop, uint64_t id, void *ud)
{
    (void) loop;
    (void) id;
    (void) ud;
}

static int s_calls;

static void s_sent(router_send_outcome_t outcome, const char *detail, const uint8_t *ack_id,
                   void *ud)
{
    (void) outcome;
    (void) detail;
    (void) ack_id;
    (void) ud;
    s_calls++;
}

static void s_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    (void) ud;
    router_conn_abort(c);
}

static void test_ack_timer_failure_fails_the_send(void **state)
{
    (void) state;
    router_loop_opts_t lo = {.backend = ROUTER_LOOP_EPOLL, .max_timers = 1};
    router_loop_t *loop = router_loop_new(&lo);
    assert_non_null(loop);
    /* The only timer slot is taken. */
    assert_true(router_loop_timer_add(loop, 3600000, s_never, NULL) != 0);
    router_addr_t a;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &a, NULL), 0);
    router_listener_t *l = router_loop_listen(loop, &a, s_accept, NULL);
    assert_non_null(l);
    router_identity_t id;
    memset(&id, 0, sizeof id);
    router_outbound_opts_t oo = {.loop = loop, .identity = &id, .ack_timeout_ms = 1000};
    router_outbound_t *ob = router_outbound_new(&oo);
    assert_non_null(ob);
    uint8_t pk[32] = {1}, msg_id[16] = {2};
    uint8_t frame[PROTO_FRAME_HEADER_LEN + 1] = {0, 0, 0, 1, 0xa0};
    errno = 0;
    int rc = router_outbound_send(ob, pk, router_listener_addr(l), frame, sizeof frame, msg_id,
                                  s_sent, NULL);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, ENOSPC);
    router_outbound_destroy(&ob);
    assert_int_equal(s_calls, 0); /* refused sends owe no callback */
    router_listener_close(&l);
    router_loop_destroy(&loop);
}

/* ---------------------------------------------------------------- a loop, a peer, outcomes */

/* One send's outcome. */
typedef struct {
    int calls;                    /* times told (must end at 1) */
    router_send_outcome_t outcome;
    char detail[192];
    bool has_ack_id;              /* ack_id was given */
    uint8_t ack_id[16];
} s_outcome_t;

static void s_record(router_send_outcome_t outcome, const char *detail, const uint8_t *ack_id,
                     void *ud)
{
    s_outcome_t *o = ud;
    o->calls++;
    o->outcome = outcome;
    snprintf(o->detail, sizeof o->detail, "%s", detail);
    o->has_ack_id = ack_id != NULL;
    if (ack_id)
        memcpy(o->ack_id, ack_id, 16);
}

static bool s_told(void *ud)
{
    return ((s_outcome_t *) ud)->calls > 0;
}

/* The receiving end: counts the bytes each accepted connection sent and,
 * once a whole test frame arrived, closes orderly without an ack, which
 * the sender reads as a refusal: an outcome that proves the frame got
 * there. */
typedef struct {
    size_t bytes;                 /* received, all connections */
    size_t want;                  /* close once this many came (0: one frame) */
    unsigned accepted;            /* connections accepted */
    const uint8_t *reply;         /* when set: written back (once) instead of the close */
    size_t reply_len;
} s_peer_t;

static s_peer_t s_peer;

static void s_peer_data(router_conn_t *c, uint8_t *data, size_t len, void *ud)
{
    (void) data;
    (void) ud;
    s_peer.bytes += len;
    if (s_peer.bytes < (s_peer.want ? s_peer.want : PROTO_FRAME_HEADER_LEN + 1))
        return;
    if (!s_peer.reply) {
        router_conn_close(c);
        return;
    }
    assert_int_equal(router_conn_send(c, s_peer.reply, s_peer.reply_len), 0);
    s_peer.reply = NULL;
}

static void s_peer_close(router_conn_t *c, router_close_reason_t reason, void *ud)
{
    (void) c;
    (void) reason;
    (void) ud;
}

static const router_conn_handlers_t s_peer_handlers = {.on_data = s_peer_data,
                                                      .on_close = s_peer_close};

static void s_peer_accept(router_listener_t *l, router_conn_t *c, void *ud)
{
    (void) l;
    (void) ud;
    s_peer.accepted++;
    router_conn_set_handlers(c, &s_peer_handlers, NULL);
}

/* A loop, an outbound and a listening peer on 127.0.0.1 (any port). */
typedef struct {
    router_loop_t *loop;
    router_identity_t id;
    router_outbound_t *ob;
    router_listener_t *l;
    uint16_t port;
} s_bench_t;

static void s_bench_up(s_bench_t *b)
{
    memset(b, 0, sizeof *b);
    memset(&s_peer, 0, sizeof s_peer);
    assert_non_null(b->loop = router_loop_new(NULL));
    router_addr_t a;
    assert_int_equal(router_addr_parse("127.0.0.1:0", &a, NULL), 0);
    assert_non_null(b->l = router_loop_listen(b->loop, &a, s_peer_accept, NULL));
    b->port = router_addr_port(router_listener_addr(b->l));
    router_outbound_opts_t oo = {.loop = b->loop, .identity = &b->id, .ack_timeout_ms = 10000};
    assert_non_null(b->ob = router_outbound_new(&oo));
}

static void s_bench_down(s_bench_t *b)
{
    router_outbound_destroy(&b->ob);
    router_listener_close(&b->l);
    router_loop_destroy(&b->loop);
}

/* `ip`:`port` as an address. */
static router_addr_t s_addr(const char *ip, uint16_t port)
{
    char text[64];
    snprintf(text, sizeof text, strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, port);
    router_addr_t a;
    assert_int_equal(router_addr_parse(text, &a, NULL), 0);
    return a;
}

static uint8_t s_frame[PROTO_FRAME_HEADER_LEN + 1] = {0, 0, 0, 1, 0xa0};

/* A listener on ip:port (port 0: any) whose accept queue is full, so a
 * new connect to it waits unanswered, as to a host that is down. */
#define HOLE_FDS 17
typedef struct {
    int fd[HOLE_FDS];
    int n;
    uint16_t port;
} s_hole_t;

static void s_hole_open(s_hole_t *h, const char *ip, uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    assert_int_equal(inet_pton(AF_INET, ip, &a.sin_addr), 1);
    h->n = 0;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    h->fd[h->n++] = l;
    assert_int_equal(bind(l, (struct sockaddr *) &a, sizeof a), 0);
    assert_int_equal(listen(l, 0), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(l, (struct sockaddr *) &a, &len), 0);
    h->port = ntohs(a.sin_port);
    /* Fill the queue until a connect stays pending. */
    for (;;) {
        assert_true(h->n < HOLE_FDS);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(c >= 0);
        h->fd[h->n++] = c;
        int rc = connect(c, (struct sockaddr *) &a, sizeof a);
        assert_true(rc == 0 || errno == EINPROGRESS);
        struct pollfd p = {.fd = c, .events = POLLOUT};
        if (rc != 0 && poll(&p, 1, 200) == 0)
            return;
    }
}

static void s_hole_close(s_hole_t *h)
{
    while (h->n > 0)
        close(h->fd[--h->n]);
}

/* A kind that gets no ack, to an address that refuses or does not answer:
 * offline, because it never left (it was reported sent before); to one
 * that listens: sent. */
static void test_no_ack_sent_only_when_connected(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    uint8_t pk[32] = {3}, id[16] = {4};
    /* Nothing listens on 127.0.0.2 (the listener is bound to 127.0.0.1). */
    router_addr_t refused = s_addr("127.0.0.2", b.port);
    s_outcome_t o = {0};
    router_outbound_msg_t m = {.peer_pk = pk, .addr = &refused, .fd = -1, .frame = s_frame,
                               .len = sizeof s_frame, .id = id, .no_ack = true,
                               .cb = s_record, .ud = &o};
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o, 5, 10000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.outcome, ROUTER_SEND_OFFLINE);
    assert_non_null(strstr(o.detail, "cannot connect"));

    s_hole_t hole;
    s_hole_open(&hole, "127.0.0.1", 0);
    router_addr_t silent = s_addr("127.0.0.1", hole.port);
    uint8_t pk3[32] = {6};
    s_outcome_t o3 = {0};
    m.peer_pk = pk3;
    m.addr = &silent;
    m.timeout_ms = 300;
    m.ud = &o3;
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o3, 5, 10000);
    assert_int_equal(o3.outcome, ROUTER_SEND_OFFLINE);
    assert_non_null(strstr(o3.detail, "timeout"));
    s_hole_close(&hole);
    m.timeout_ms = 0;

    s_outcome_t o2 = {0};
    router_addr_t live = s_addr("127.0.0.1", b.port);
    uint8_t pk2[32] = {5};
    m.peer_pk = pk2;
    m.addr = &live;
    m.ud = &o2;
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o2, 5, 10000);
    assert_int_equal(o2.outcome, ROUTER_SEND_SENT);
    s_bench_down(&b);
    assert_int_equal(o.calls + o2.calls + o3.calls, 3);
}

/* Two sends on one link whose first address refuses: both frames go to
 * the second, on one connection, and the peer's orderly close tells both
 * (refused: they got there). */
static void test_refused_then_live(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    s_peer.want = 2 * sizeof s_frame;
    router_addr_t addrs[2] = {s_addr("127.0.0.2", b.port), s_addr("127.0.0.1", b.port)};
    uint8_t pk[32] = {7}, id[16] = {8};
    s_outcome_t o[2] = {{0}};
    for (int i = 0; i < 2; i++) {
        router_outbound_msg_t m = {.peer_pk = pk, .addr = addrs, .naddrs = 2, .fd = -1,
                                   .frame = s_frame, .len = sizeof s_frame, .id = id,
                                   .cb = s_record, .ud = &o[i]};
        assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    }
    test_loop_until(b.loop, s_told, &o[1], 5, 10000);
    test_loop_until(b.loop, s_told, &o[0], 5, 10000);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].outcome, ROUTER_SEND_REJECTED);
    }
    assert_int_equal(s_peer.accepted, 1);
    assert_int_equal(s_peer.bytes, 2 * sizeof s_frame);
    s_bench_down(&b);
}

/* The first address takes the connect and never answers (a host that is
 * down): past its share of the send's time (half, with two addresses) the
 * second is dialed, well before the send times out. */
static void test_silent_then_live(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    s_hole_t hole;
    s_hole_open(&hole, "127.0.0.3", b.port);
    router_addr_t addrs[2] = {s_addr("127.0.0.3", b.port), s_addr("127.0.0.1", b.port)};
    uint8_t pk[32] = {9}, id[16] = {10};
    s_outcome_t o = {0};
    router_outbound_msg_t m = {.peer_pk = pk, .addr = addrs, .naddrs = 2, .fd = -1,
                               .frame = s_frame, .len = sizeof s_frame, .id = id,
                               .timeout_ms = 3000, .cb = s_record, .ud = &o};
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o, 5, 10000);
    assert_int_equal(o.outcome, ROUTER_SEND_REJECTED); /* it got there */
    assert_int_equal(s_peer.bytes, sizeof s_frame);
    s_hole_close(&hole);
    s_bench_down(&b);
}

/* Nine addresses that all refuse: the first eight are tried, and the send
 * is offline, saying so. One address that refuses says what it always
 * said. */
static void test_none_connects(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    router_addr_t addrs[9];
    char ip[32];
    for (int i = 0; i < 9; i++) {
        snprintf(ip, sizeof ip, "127.0.0.%d", 10 + i);
        addrs[i] = s_addr(ip, b.port);
    }
    uint8_t pk[32] = {11}, id[16] = {12};
    s_outcome_t o = {0};
    router_outbound_msg_t m = {.peer_pk = pk, .addr = addrs, .naddrs = 9, .fd = -1,
                               .frame = s_frame, .len = sizeof s_frame, .id = id,
                               .cb = s_record, .ud = &o};
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o, 5, 10000);
    assert_int_equal(o.outcome, ROUTER_SEND_OFFLINE);
    assert_non_null(strstr(o.detail, "cannot connect to any of its 8 addresses"));
    s_outcome_t o1 = {0};
    m.naddrs = 1;
    m.ud = &o1;
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o1, 5, 10000);
    assert_int_equal(o1.outcome, ROUTER_SEND_OFFLINE);
    assert_non_null(strstr(o1.detail, "cannot connect: "));
    assert_int_equal(s_peer.accepted, 0);
    s_bench_down(&b);
}

/* Addresses no connection can even be started to (port 0: EINVAL, as a
 * family this host lacks would be) are passed over, first or later; with
 * none other, the send is refused at once, or offline once the others
 * failed. */
static void test_addresses_that_cannot_be_dialed(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    router_addr_t bad = s_addr("127.0.0.1", 0), live = s_addr("127.0.0.1", b.port);
    router_addr_t refused = s_addr("127.0.0.2", b.port);
    uint8_t pk[32] = {15}, id[16] = {16};
    router_addr_t first_bad[2] = {bad, live};
    s_outcome_t o = {0};
    router_outbound_msg_t m = {.peer_pk = pk, .addr = first_bad, .naddrs = 2, .fd = -1,
                               .frame = s_frame, .len = sizeof s_frame, .id = id,
                               .cb = s_record, .ud = &o};
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o, 5, 10000);
    assert_int_equal(o.outcome, ROUTER_SEND_REJECTED); /* it got there */

    uint8_t pk2[32] = {17};
    m.peer_pk = pk2;
    m.addr = &bad;
    m.naddrs = 1;
    errno = 0;
    assert_int_equal(router_outbound_send_msg(b.ob, &m), -1);
    assert_int_equal(errno, EINVAL);

    router_addr_t last_bad[2] = {refused, bad};
    s_outcome_t o3 = {0};
    m.addr = last_bad;
    m.naddrs = 2;
    m.ud = &o3;
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o3, 5, 10000);
    assert_int_equal(o3.outcome, ROUTER_SEND_OFFLINE);
    assert_non_null(strstr(o3.detail, "cannot connect to any of its 2 addresses"));
    assert_int_equal(o.calls + o3.calls, 2);
    s_bench_down(&b);
}

/* Each allocation of a send to two addresses failing in turn (the link,
 * its reader, the wait, the frame's copy): refused with no callback owed,
 * or sent and told once; nothing leaks (LSan). */
static void test_send_without_memory(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    router_addr_t addrs[2] = {s_addr("127.0.0.2", b.port), s_addr("127.0.0.1", b.port)};
    unsigned refused = 0;
    for (long i = 0;; i++) {
        assert_true(i < ALLOC_FAIL_RUNS_MAX);
        uint8_t pk[32] = {13, (uint8_t) i}, id[16] = {14};
        s_outcome_t o = {0};
        router_outbound_msg_t m = {.peer_pk = pk, .addr = addrs, .naddrs = 2, .fd = -1,
                                   .frame = s_frame, .len = sizeof s_frame, .id = id,
                                   .cb = s_record, .ud = &o};
        alloc_fail_arm(i);
        int rc = router_outbound_send_msg(b.ob, &m);
        bool failed = alloc_fail_disarm() > 0;
        if (rc != 0) {
            assert_true(failed);
            assert_int_equal(errno, ENOMEM);
            refused++;
            continue;
        }
        test_loop_until(b.loop, s_told, &o, 5, 10000);
        assert_int_equal(o.calls, 1);
        if (!failed)
            break;
    }
    assert_true(refused >= 3);
    s_bench_down(&b);
}

/* ---------------------------------------------------------------- what comes back */

/* A signed envelope's frame, appended to buf at *len; with `forge`, a bit
 * of its signature flipped (the first signature byte sits 64 bytes into
 * the CBOR that kith writes, WIRE §4). */
static void s_put_env(uint8_t *buf, size_t cap, size_t *len, const uint8_t id[16], const uint8_t from[32],
                      const uint8_t to[32], const uint8_t sk[64], cbor_item_t *kind, bool forge)
{
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(id, from, to, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, sk), 0);
    uint8_t *frame = NULL;
    size_t n = 0;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, &n), 0);
    assert_true(*len + n <= cap);
    if (forge) {
        assert_memory_equal(frame + PROTO_FRAME_HEADER_LEN + 64, proto_envelope_sig(env), 1);
        frame[PROTO_FRAME_HEADER_LEN + 64] ^= 1;
    }
    memcpy(buf + *len, frame, n);
    *len += n;
    free(frame);
    proto_envelope_destroy(&env);
}

/* WIRE §8.3: only a signed ack from the peer, to us, for what waits settles
 * a send. Ahead of the real ack the peer's connection carries an ack from
 * a stranger, one to a stranger, a message, an ack from the peer whose
 * signature was tampered with, an ack for an id nobody sent and a frame that is
 * not CBOR: each is ignored (none settles the send, none cuts the link), and
 * the send is told once, acked, with the real ack's id. */
static void test_only_the_peers_ack_settles(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    crypto_sign_keypair(b.id.pk, b.id.sk);
    uint8_t peer_pk[32], peer_sk[64], other_pk[32], other_sk[64];
    crypto_sign_keypair(peer_pk, peer_sk);
    crypto_sign_keypair(other_pk, other_sk);
    uint8_t sent_id[16], stray_id[16], ack_ids[7][16];
    proto_uuid_v7_new(sent_id);
    proto_uuid_v7_new(stray_id);
    for (int i = 0; i < 7; i++)
        proto_uuid_v7_new(ack_ids[i]);
    static uint8_t reply[8192];
    size_t n = 0;
    s_put_env(reply, sizeof reply, &n, ack_ids[0], other_pk, b.id.pk, other_sk, proto_kind_ack(sent_id), false);
    s_put_env(reply, sizeof reply, &n, ack_ids[1], peer_pk, other_pk, peer_sk, proto_kind_ack(sent_id), false);
    s_put_env(reply, sizeof reply, &n, ack_ids[2], peer_pk, b.id.pk, peer_sk,
              proto_kind_message("hi", 2, NULL, PROTO_HANDLING_NONE), false);
    s_put_env(reply, sizeof reply, &n, ack_ids[3], peer_pk, b.id.pk, peer_sk, proto_kind_ack(sent_id), true);
    s_put_env(reply, sizeof reply, &n, ack_ids[4], peer_pk, b.id.pk, peer_sk, proto_kind_ack(stray_id), false);
    static const uint8_t not_cbor[] = {0, 0, 0, 2, 0xff, 0xff};
    memcpy(reply + n, not_cbor, sizeof not_cbor);
    n += sizeof not_cbor;
    s_put_env(reply, sizeof reply, &n, ack_ids[5], peer_pk, b.id.pk, peer_sk, proto_kind_ack(sent_id), false);
    s_peer.reply = reply;
    s_peer.reply_len = n;

    router_addr_t live = s_addr("127.0.0.1", b.port);
    s_outcome_t o = {0};
    router_outbound_msg_t m = {.peer_pk = peer_pk, .addr = &live, .fd = -1, .frame = s_frame,
                               .len = sizeof s_frame, .id = sent_id, .cb = s_record, .ud = &o};
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o, 5, 10000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.outcome, ROUTER_SEND_ACKED);
    assert_true(o.has_ack_id);
    assert_memory_equal(o.ack_id, ack_ids[5], 16);
    assert_true(router_outbound_connected(b.ob, peer_pk)); /* none of them cut the link */
    s_bench_down(&b);
    assert_int_equal(o.calls, 1);
}

/* A peer whose frames cannot be read (a length past the frame limit) is
 * cut: what waits on it is offline (unknown), never refused, since no
 * orderly close said so (WIRE §9.1); the callback runs once. */
static void test_unreadable_peer_is_cut_offline(void **state)
{
    (void) state;
    s_bench_t b;
    s_bench_up(&b);
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 0xa0};
    s_peer.reply = huge;
    s_peer.reply_len = sizeof huge;
    uint8_t pk[32] = {21}, id[16] = {22};
    router_addr_t live = s_addr("127.0.0.1", b.port);
    s_outcome_t o = {0};
    router_outbound_msg_t m = {.peer_pk = pk, .addr = &live, .fd = -1, .frame = s_frame,
                               .len = sizeof s_frame, .id = id, .cb = s_record, .ud = &o};
    assert_int_equal(router_outbound_send_msg(b.ob, &m), 0);
    test_loop_until(b.loop, s_told, &o, 5, 10000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.outcome, ROUTER_SEND_OFFLINE);
    assert_false(o.has_ack_id);
    assert_false(router_outbound_connected(b.ob, pk));
    s_bench_down(&b);
    assert_int_equal(o.calls, 1);
}

/* The peer ended the link (its FIN) while large frames are still being
 * written to it, so the link's own close waits on that flush. A send to
 * the same peer meanwhile is not refused (it was, EPIPE: "cannot send:
 * Broken pipe" for a peer that is there): it goes on a new connection and
 * is told once. When the peer then resets the old connection, the sends
 * that waited there are refused, as its orderly end said first (they were
 * reported offline). */
typedef struct {
    router_outbound_t *ob;
    const uint8_t *pk;
} s_link_probe_t;

static bool s_link_not_offered(void *ud)
{
    const s_link_probe_t *p = ud;
    return !router_outbound_connected(p->ob, p->pk);
}

typedef struct {
    int listen_fd;
    int fd;
} s_raw_peer_t;

/* Three sends recorded into one outcome were all told. */
static bool s_told3(void *ud)
{
    return ((s_outcome_t *) ud)->calls >= 3;
}

static bool s_raw_accepted(void *ud)
{
    s_raw_peer_t *r = ud;
    r->fd = accept4(r->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return r->fd >= 0;
}

static void test_send_while_the_link_ends(void **state)
{
    (void) state;
    /* A graceful close bounded far past the test's deadline for progress:
     * the ending link stays ending while the test looks. */
    router_loop_opts_t lo = {.close_timeout_ms = 600000};
    router_loop_t *loop = router_loop_new(&lo);
    assert_non_null(loop);
    router_identity_t id;
    memset(&id, 0, sizeof id);
    router_outbound_opts_t oo = {.loop = loop, .identity = &id, .ack_timeout_ms = 600000};
    router_outbound_t *ob = router_outbound_new(&oo);
    assert_non_null(ob);

    /* A peer that reads nothing (a small receive buffer, so most of the
     * frame stays queued on our side). */
    s_raw_peer_t raw = {.fd = -1};
    raw.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(raw.listen_fd >= 0);
    int small = 4096;
    assert_int_equal(setsockopt(raw.listen_fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(raw.listen_fd, (struct sockaddr *) &sa, sizeof sa), 0);
    assert_int_equal(listen(raw.listen_fd, 8), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(raw.listen_fd, (struct sockaddr *) &sa, &sl), 0);
    router_addr_t addr = s_addr("127.0.0.1", ntohs(sa.sin_port));

    size_t big_len = PROTO_FRAME_MAX;
    uint8_t *big = calloc(1, big_len);
    assert_non_null(big);
    uint32_t n = (uint32_t) (big_len - PROTO_FRAME_HEADER_LEN);
    big[0] = (uint8_t) (n >> 24);
    big[1] = (uint8_t) (n >> 16);
    big[2] = (uint8_t) (n >> 8);
    big[3] = (uint8_t) n;
    uint8_t pk[32] = {31}, id1[16] = {32}, id2[16] = {33};
    s_outcome_t o1 = {0}, o2 = {0};
    assert_int_equal(router_outbound_send(ob, pk, &addr, big, big_len, id1, s_record, &o1), 0);
    test_loop_until(loop, s_raw_accepted, &raw, 5, 10000);
    /* More than the kernel's buffers on both sides take, within the
     * connection's own bound on what waits unsent. */
    for (int i = 0; i < 2; i++) {
        id1[15] = (uint8_t) (i + 1);
        assert_int_equal(router_outbound_send(ob, pk, &addr, big, big_len, id1, s_record, &o1), 0);
    }
    free(big);

    /* The peer's FIN: the link ends, its flush still pending. */
    assert_int_equal(shutdown(raw.fd, SHUT_WR), 0);
    s_link_probe_t probe = {.ob = ob, .pk = pk};
    test_loop_until(loop, s_link_not_offered, &probe, 5, 10000);
    if (o1.calls != 0)
        fail_msg("the ending link was told already: %s", o1.detail);

    router_outbound_msg_t m = {.peer_pk = pk, .addr = &addr, .fd = -1, .frame = s_frame,
                               .len = sizeof s_frame, .id = id2, .timeout_ms = 200,
                               .cb = s_record, .ud = &o2};
    errno = 0;
    int rc = router_outbound_send_msg(ob, &m);
    if (rc != 0)
        fail_msg("a send while the old link ends was refused: %s", strerror(errno));
    test_loop_until(loop, s_told, &o2, 5, 10000);
    assert_int_equal(o2.calls, 1);
    assert_int_equal(o2.outcome, ROUTER_SEND_OFFLINE); /* the raw peer never acks */

    /* The peer now resets what we were still writing into it: its FIN came
     * first, so the sends on the ending link were refused (never read),
     * not "offline". */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(raw.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(raw.fd);
    test_loop_until(loop, s_told3, &o1, 5, 10000);
    assert_int_equal(o1.outcome, ROUTER_SEND_REJECTED);

    router_outbound_destroy(&ob);
    assert_int_equal(o1.calls, 3);
    assert_int_equal(o2.calls, 1);
    close(raw.listen_fd);
    router_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ack_timer_failure_fails_the_send),
        cmocka_unit_test(test_no_ack_sent_only_when_connected),
        cmocka_unit_test(test_refused_then_live),
        cmocka_unit_test(test_silent_then_live),
        cmocka_unit_test(test_none_connects),
        cmocka_unit_test(test_addresses_that_cannot_be_dialed),
        cmocka_unit_test(test_send_without_memory),
        cmocka_unit_test(test_only_the_peers_ack_settles),
        cmocka_unit_test(test_unreadable_peer_is_cut_offline),
        cmocka_unit_test(test_send_while_the_link_ends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
