/* tests/route_openclaw_device_test.c — the deviceTokens of the OpenClaw
 * endpoint (gateway/route_openclaw.c, WIRE §25.8) with pairing on: a
 * device that joins over loopback with a bearer token gets its deviceToken
 * in hello-ok, and a later connect of the device whose socket closes
 * before its hello-ok (the client never saw a token) must leave the device
 * the token it holds: it still lets the device in alone. The loop runs on
 * the test's thread with an in-memory token store; the client signs its
 * device proof with libsodium. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/openclaw_device.h"
#include "gateway/routes_openclaw.h"
#include "router/clock.h"
#include "router/net/loop.h"
#include "router/state/tokens.h"
#include "gateway_fixture.h"
#include "loop_until.h"
#include "vfs_fail.h"
#include "ws_raw_client.h"

#define WAIT_MS 5000 /* a bound on one wait, never a speed check */
#define S_DT_LEN 72  /* "kithdev_" + 64 hex */

typedef struct {
    test_gw_t b;
    gateway_openclaw_t *oc;
} fix_t;

/* A device: its Ed25519 key and id. */
typedef struct {
    uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    char id[GATEWAY_OPENCLAW_DEVICE_ID_LEN + 1];
    char pk64[64];
} tdev_t;

static test_wsc_t s_cl;

static bool s_added;

static void s_on_added(bool ok, void *ud)
{
    (void) ud;
    assert_true(ok);
    s_added = true;
}

static bool s_until_added(void *ud)
{
    (void) ud;
    return s_added;
}

/* A bearer token of the store (an operator's), its text in text[]. */
static void s_bearer_new(fix_t *f, char text[GATEWAY_AUTH_TOKEN_LEN + 1])
{
    uint8_t hash[32];
    gateway_auth_token_new(text, hash);
    s_added = false;
    assert_int_equal(router_tokens_add(f->b.tokens, hash, ROUTER_TOKEN_OPERATOR, "t",
                                       router_clock_wall_ms(), s_on_added, NULL),
                     0);
    test_loop_until(f->b.loop, s_until_added, NULL, 1, WAIT_MS);
}

/* The folder of a fixture's state.db on disk ("" for none). */
static char s_dir[64];

/* The fixture's record wait (0: the default). */
static unsigned s_record_wait_ms;

static void s_fix_new_at(fix_t *f, bool disk)
{
    test_gw_new(&f->b, "route-openclaw-device-test");
    /* Pairing on: the credential is a bearer token or a deviceToken. */
    gateway_auth_destroy(&f->b.auth);
    s_dir[0] = '\0';
    if (disk) {
        /* A token store on disk, whose commits tests/vfs_fail.h holds or fails. */
        router_tokens_destroy(&f->b.tokens);
        snprintf(s_dir, sizeof s_dir, "/tmp/kith-ocdev-XXXXXX");
        assert_non_null(mkdtemp(s_dir));
        char path[128], err[256];
        snprintf(path, sizeof path, "%s/state.db", s_dir);
        f->b.tokens = router_tokens_new(path, f->b.loop, err, sizeof err);
        if (!f->b.tokens)
            fail_msg("token store: %s", err);
    }
    gateway_auth_opts_t ao = {.require_pairing = true};
    f->b.auth = gateway_auth_new(f->b.tokens, &ao);
    assert_non_null(f->b.auth);
    gateway_openclaw_opts_t oo = {.auth = f->b.auth, .turns = f->b.turns,
                                  .record_wait_ms = s_record_wait_ms};
    f->oc = gateway_openclaw_new(f->b.gw, f->b.loop, &oo);
    assert_non_null(f->oc);
    test_gw_listen(&f->b);
}

static void s_fix_new(fix_t *f)
{
    s_fix_new_at(f, false);
}

static bool s_gone(void *ud)
{
    (void) ud;
    return true;
}

/* Removes the fixture's folder on disk, if any. */
static void s_dir_remove(void)
{
    if (!s_dir[0])
        return;
    static const char *const names[] = {"state.db", "state.db-wal", "state.db-shm",
                                        "state.db-journal"};
    char path[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", s_dir, names[i]);
        (void) unlink(path);
    }
    (void) rmdir(s_dir);
    s_dir[0] = '\0';
}

static void s_fix_free(fix_t *f)
{
    vfs_fail_clear();
    test_gw_stop(&f->b);
    (void) test_loop_wait(f->b.loop, s_gone, NULL, 1, WAIT_MS);
    gateway_openclaw_destroy(&f->oc);
    test_gw_free(&f->b);
    s_dir_remove();
}

static void s_dev_new(tdev_t *d)
{
    crypto_sign_keypair(d->pk, d->sk);
    gateway_openclaw_device_id(d->pk, d->id);
    sodium_bin2base64(d->pk64, sizeof d->pk64, d->pk, sizeof d->pk,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

static unsigned s_want;

static bool s_until_frames(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    bool closed;
    return test_wsc_frames(&s_cl, &closed) >= s_want || closed || s_cl.eof;
}

/* Runs the loop until frame n came or the socket ended; true when it came. */
static bool s_wait_frame(fix_t *f, unsigned n)
{
    s_want = n + 1;
    assert_true(test_loop_wait(f->b.loop, s_until_frames, NULL, 1, WAIT_MS));
    int op = 0;
    const uint8_t *p = NULL;
    size_t len;
    return test_wsc_frame(&s_cl, n, &op, &p, &len) && op == 1;
}

/* The string member `key` of frame n (the first one in it) into out[cap]. */
static void s_frame_str(unsigned n, const char *key, char *out, size_t cap)
{
    int op;
    const uint8_t *p = NULL;
    size_t len = 0;
    out[0] = '\0';
    assert_true(test_wsc_frame(&s_cl, n, &op, &p, &len));
    char text[8192];
    assert_true(len < sizeof text);
    memcpy(text, p, len);
    text[len] = '\0';
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":\"", key);
    const char *at = strstr(text, needle);
    if (!at)
        return;
    at += strlen(needle);
    const char *end = strchr(at, '"');
    assert_non_null(end);
    assert_true((size_t) (end - at) < cap);
    memcpy(out, at, (size_t) (end - at));
    out[end - at] = '\0';
}

/* Opens a socket, reads its challenge and sends `connect` for device d
 * with the credential given (`token` as auth.token, else `device_token` as
 * auth.deviceToken), signed over it. With `then_close`, a Close follows in
 * the same write: the server reads both before its token store answers. */
static void s_join(fix_t *f, const tdev_t *d, const char *token, const char *device_token,
                   bool then_close)
{
    test_wsc_open(&s_cl, f->b.port,
                  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(s_cl.fd, F_SETFL, O_NONBLOCK), 0);
    assert_true(s_wait_frame(f, 0));
    char nonce[80];
    s_frame_str(0, "nonce", nonce, sizeof nonce);
    assert_int_equal(strlen(nonce), 64);
    const char *secret = token ? token : device_token;
    const char *scopes[] = {"operator.read"};
    int64_t now = (int64_t) router_clock_wall_ms();
    gateway_openclaw_device_fields_t fl = {
        .device_id = d->id, .client_id = "cli", .client_mode = "cli", .role = "operator",
        .scopes = scopes, .nscopes = 1, .signed_at_ms = now, .token = secret, .nonce = nonce,
        .platform = "", .device_family = ""};
    char payload[1024];
    int n = gateway_openclaw_device_payload(&fl, 3, payload, sizeof payload);
    assert_true(n > 0);
    uint8_t sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, NULL, (const unsigned char *) payload, (unsigned long long) n,
                         d->sk);
    char sig64[128];
    sodium_bin2base64(sig64, sizeof sig64, sig, sizeof sig,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char req[2048];
    snprintf(req, sizeof req,
             "{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":{"
             "\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"cli\",\"mode\":\"cli\"},"
             "\"scopes\":[\"operator.read\"],\"auth\":{\"%s\":\"%s\"},"
             "\"device\":{\"id\":\"%s\",\"publicKey\":\"%s\",\"signature\":\"%s\","
             "\"signedAt\":%lld,\"nonce\":\"%s\"}}}",
             token ? "token" : "deviceToken", secret, d->id, d->pk64, sig64, (long long) now,
             nonce);
    test_wsc_send_text(&s_cl, req);
    if (then_close) {
        static const uint8_t close_frame[] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8}; /* 1000 */
        assert_int_equal(send(s_cl.fd, close_frame, sizeof close_frame, MSG_NOSIGNAL),
                         (ssize_t) sizeof close_frame);
    }
}

/* A join that must end in hello-ok: the deviceToken it carries into dt
 * ("" when none). */
static void s_join_ok(fix_t *f, const tdev_t *d, const char *token, const char *device_token,
                      char dt[S_DT_LEN + 1])
{
    s_join(f, d, token, device_token, false);
    assert_true(s_wait_frame(f, 1));
    if (!test_wsc_frame_has(&s_cl, 1, "\"hello-ok\"")) {
        int op;
        const uint8_t *p;
        size_t len;
        (void) test_wsc_frame(&s_cl, 1, &op, &p, &len);
        fail_msg("connect refused: %.*s", (int) len, (const char *) p);
    }
    s_frame_str(1, "deviceToken", dt, S_DT_LEN + 1);
}

static void s_client_close(fix_t *f)
{
    close(s_cl.fd);
    for (int i = 0; i < 5; i++)
        (void) test_loop_wait(f->b.loop, s_gone, NULL, 1, WAIT_MS);
}

static bool s_until_ended(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    return test_wsc_ended(&s_cl);
}

/* A connect of a known device with its bearer token whose socket closes
 * before hello-ok (its record still written) leaves the device's
 * deviceToken working: the device joins with it alone after. */
static void test_dropped_connect_keeps_device_token(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    char bearer[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, bearer);
    tdev_t d;
    s_dev_new(&d);
    char dt[S_DT_LEN + 1], again[S_DT_LEN + 1];
    s_join_ok(&f, &d, bearer, NULL, dt);
    assert_int_equal(strlen(dt), S_DT_LEN);
    s_client_close(&f);

    /* The bearer token again, and a Close before its hello-ok could go. */
    s_join(&f, &d, bearer, NULL, true);
    assert_true(test_loop_wait(f.b.loop, s_until_ended, NULL, 1, WAIT_MS));
    assert_false(test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
    s_client_close(&f);
    /* A write after it: its device record is durable once this one is
     * (the store answers in order). */
    char other[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, other);

    /* The token the client holds lets it in alone, and comes back. */
    char alone[S_DT_LEN + 1];
    s_join_ok(&f, &d, NULL, dt, alone);
    assert_string_equal(alone, dt);
    s_client_close(&f);
    /* The same bearer token gives the device the same token again. */
    s_join_ok(&f, &d, bearer, NULL, again);
    s_client_close(&f);
    assert_string_equal(again, dt);
    s_fix_free(&f);
}

static bool s_revoked;

static void s_on_revoked(bool ok, void *ud)
{
    (void) ud;
    assert_true(ok);
    s_revoked = true;
}

static bool s_until_revoked(void *ud)
{
    (void) ud;
    return s_revoked;
}

/* Revokes bearer token `text` and waits until that is durable. */
static void s_bearer_revoke(fix_t *f, const char *text)
{
    uint8_t hash[32];
    char id[ROUTER_TOKENS_ID_LEN + 1];
    crypto_hash_sha256(hash, (const unsigned char *) text, strlen(text));
    router_tokens_id(hash, id);
    s_revoked = false;
    assert_int_equal(router_tokens_revoke(f->b.tokens, id, s_on_revoked, NULL), 0);
    test_loop_until(f->b.loop, s_until_revoked, NULL, 1, WAIT_MS);
}

/* A known device's connect with another bearer token than the one that
 * earned its deviceToken, whose socket closes before its hello-ok: the
 * device's token still lets it in alone (the connect wrote the new
 * token's hash, durable after the Close, and the device was refused
 * AUTH_DEVICE_TOKEN_MISMATCH with the only token it held). */
static void test_dropped_connect_other_bearer_keeps_device_token(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    char b1[GATEWAY_AUTH_TOKEN_LEN + 1], b2[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, b1);
    s_bearer_new(&f, b2);
    tdev_t d;
    s_dev_new(&d);
    char dt[S_DT_LEN + 1], alone[S_DT_LEN + 1];
    s_join_ok(&f, &d, b1, NULL, dt);
    assert_int_equal(strlen(dt), S_DT_LEN);
    s_client_close(&f);

    s_join(&f, &d, b2, NULL, true);
    assert_true(test_loop_wait(f.b.loop, s_until_ended, NULL, 1, WAIT_MS));
    bool closed;
    for (unsigned i = 1; i < test_wsc_frames(&s_cl, &closed); i++)
        assert_false(test_wsc_frame_has(&s_cl, i, "\"deviceToken\"")); /* nothing new shown */
    s_client_close(&f);
    char other[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, other); /* after whatever the connect wrote */

    s_join_ok(&f, &d, NULL, dt, alone);
    assert_string_equal(alone, dt);
    s_client_close(&f);
    s_fix_free(&f);
}

static test_wsc_t s_first; /* a second client, while s_cl is another */

static bool s_until_held(void *ud)
{
    (void) ud;
    return vfs_fail_held() > 0;
}

static bool s_until_first_hello(void *ud)
{
    (void) ud;
    test_wsc_read(&s_first);
    bool closed;
    return test_wsc_frames(&s_first, &closed) >= 2 || closed || s_first.eof;
}

/* A new device's connect with b1 whose record the disk holds, and
 * meanwhile one with b2 that drops before its hello-ok: the first's
 * hello-ok token still lets the device in alone once both are written
 * (the second's record, written after, replaced it; nobody held that
 * one). */
static void test_concurrent_connects_other_bearer(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new_at(&f, true);
    char b1[GATEWAY_AUTH_TOKEN_LEN + 1], b2[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, b1);
    s_bearer_new(&f, b2);
    tdev_t d;
    s_dev_new(&d);
    vfs_fail_hold(s_dir);
    s_join(&f, &d, b1, NULL, false);
    /* Its connect read and its record asked for: the disk holds it. */
    assert_true(test_loop_wait(f.b.loop, s_until_held, NULL, 1, WAIT_MS));
    memcpy(&s_first, &s_cl, sizeof s_first);
    s_join(&f, &d, b2, NULL, true);
    assert_true(test_loop_wait(f.b.loop, s_until_ended, NULL, 1, WAIT_MS));
    close(s_cl.fd);
    vfs_fail_hold(NULL);
    assert_true(test_loop_wait(f.b.loop, s_until_first_hello, NULL, 1, WAIT_MS));
    char dt[S_DT_LEN + 1];
    memcpy(&s_cl, &s_first, sizeof s_cl);
    assert_true(test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
    s_frame_str(1, "deviceToken", dt, sizeof dt);
    assert_int_equal(strlen(dt), S_DT_LEN);
    s_client_close(&f);
    char other[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, other); /* after both records */
    char alone[S_DT_LEN + 1];
    s_join_ok(&f, &d, NULL, dt, alone);
    assert_string_equal(alone, dt);
    s_client_close(&f);
    s_fix_free(&f);
}

/* Another device gets another deviceToken. The same device with another
 * bearer token keeps the one it holds while the bearer token that earned
 * it is in force (hello-ok hands out none: a new one's row would be
 * durable before the client had it); once that bearer token is revoked
 * (its deviceTokens with it), another bearer token earns the device its
 * own. */
static void test_device_token_per_device_and_bearer(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    char b1[GATEWAY_AUTH_TOKEN_LEN + 1], b2[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, b1);
    s_bearer_new(&f, b2);
    tdev_t d1, d2;
    s_dev_new(&d1);
    s_dev_new(&d2);
    char t1[S_DT_LEN + 1], t2[S_DT_LEN + 1], t3[S_DT_LEN + 1];
    s_join_ok(&f, &d1, b1, NULL, t1);
    s_client_close(&f);
    s_join_ok(&f, &d2, b1, NULL, t2);
    s_client_close(&f);
    assert_string_not_equal(t1, t2);
    /* d1's token does not open d2 (it is d1's, and signed by d2's key). */
    s_join(&f, &d2, NULL, t1, false);
    assert_true(s_wait_frame(&f, 1));
    assert_true(test_wsc_frame_has(&s_cl, 1, "AUTH_DEVICE_TOKEN_MISMATCH"));
    s_client_close(&f);
    /* d1 with the other bearer token: in, with no token to replace t1. */
    char alone[S_DT_LEN + 1];
    s_join_ok(&f, &d1, b2, NULL, t3);
    s_client_close(&f);
    assert_string_equal(t3, "");
    s_join_ok(&f, &d1, NULL, t1, alone);
    assert_string_equal(alone, t1);
    s_client_close(&f);
    /* b1 revoked: t1 with it; b2 earns d1 another token, which opens it. */
    s_bearer_revoke(&f, b1);
    s_join(&f, &d1, NULL, t1, false);
    assert_true(s_wait_frame(&f, 1));
    assert_true(test_wsc_frame_has(&s_cl, 1, "AUTH_DEVICE_TOKEN_MISMATCH"));
    s_client_close(&f);
    s_join_ok(&f, &d1, b2, NULL, t3);
    s_client_close(&f);
    assert_int_equal(strlen(t3), S_DT_LEN);
    assert_string_not_equal(t1, t3);
    s_join_ok(&f, &d1, NULL, t3, alone);
    assert_string_equal(alone, t3);
    s_client_close(&f);
    /* d2's token, earned with b1, went with it too. */
    s_join(&f, &d2, NULL, t2, false);
    assert_true(s_wait_frame(&f, 1));
    assert_true(test_wsc_frame_has(&s_cl, 1, "AUTH_DEVICE_TOKEN_MISMATCH"));
    s_client_close(&f);
    s_fix_free(&f);
}

/* A device's loopback connect with its bearer token, with each of the
 * endpoint's allocations failing in turn (its wait for the record, the
 * store's job among them): hello-ok (with its deviceToken, or without when
 * the record could not be asked for), or a close — never silence; and a
 * connect that failed never takes the device's deviceToken away. */
static void test_device_connect_out_of_memory(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    char bearer[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, bearer);
    tdev_t d;
    s_dev_new(&d);
    char dt[S_DT_LEN + 1], got[S_DT_LEN + 1];
    s_join_ok(&f, &d, bearer, NULL, dt);
    s_client_close(&f);
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        s_join(&f, &d, bearer, NULL, false);
        alloc_fail_arm(i);
        /* The connect was sent before arming: its read is the loop's. */
        s_want = 2;
        bool held = test_loop_wait(f.b.loop, s_until_frames, NULL, 1, WAIT_MS);
        unsigned failed = alloc_fail_disarm();
        bool closed;
        unsigned n = test_wsc_frames(&s_cl, &closed);
        if (!held || (n < 2 && !closed && !s_cl.eof))
            fail_msg("allocation %ld failing: connect got neither an answer nor a close", i);
        if (n >= 2 && test_wsc_frame_has(&s_cl, 1, "\"hello-ok\"")) {
            s_frame_str(1, "deviceToken", got, sizeof got);
            if (got[0] && strcmp(got, dt) != 0)
                fail_msg("allocation %ld failing: hello-ok handed out another token", i);
        }
        s_client_close(&f);
        /* Whatever the store was asked is written before this. */
        char other[GATEWAY_AUTH_TOKEN_LEN + 1];
        s_bearer_new(&f, other);
        s_join_ok(&f, &d, NULL, dt, got);
        s_client_close(&f);
        if (!failed)
            break;
    }
    s_fix_free(&f);
}

/* A full device table (ROUTER_TOKENS_DEVICES_MAX recorded) records no new
 * device: its connect is let in with its bearer token, without a
 * deviceToken (WIRE §25.8); a device recorded before goes on with its own. */
static void test_device_table_full(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new(&f);
    char bearer[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, bearer);
    tdev_t known, late;
    s_dev_new(&known);
    s_dev_new(&late);
    char dt[S_DT_LEN + 1], got[S_DT_LEN + 1];
    s_join_ok(&f, &known, bearer, NULL, dt);
    s_client_close(&f);
    /* The rest of the table, straight into the store. */
    for (unsigned i = 1; i < ROUTER_TOKENS_DEVICES_MAX; i++) {
        router_tokens_device_t r = {0};
        uint8_t pk[32] = {0};
        memcpy(pk, &i, sizeof i);
        gateway_openclaw_device_id(pk, r.id);
        memcpy(r.public_key, pk, sizeof pk);
        snprintf(r.client_id, sizeof r.client_id, "filler");
        snprintf(r.client_mode, sizeof r.client_mode, "cli");
        int rc;
        while ((rc = router_tokens_device_record(f.b.tokens, &r, NULL, router_clock_wall_ms(),
                                                 NULL, NULL)) != 0 &&
               errno == EAGAIN) /* the store's queue is full: let it answer */
            (void) test_loop_wait(f.b.loop, s_gone, NULL, 1, WAIT_MS);
        assert_int_equal(rc, 0);
    }
    char other[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, other); /* after the fillers: they are durable */
    assert_int_equal(router_tokens_device_count(f.b.tokens), ROUTER_TOKENS_DEVICES_MAX);
    s_join_ok(&f, &late, bearer, NULL, got);
    assert_string_equal(got, "");
    s_client_close(&f);
    assert_int_equal(router_tokens_device_count(f.b.tokens), ROUTER_TOKENS_DEVICES_MAX);
    s_join_ok(&f, &known, NULL, dt, got);
    assert_string_equal(got, dt);
    s_client_close(&f);
    s_fix_free(&f);
}

/* `health` on the connected socket: its answer comes (frame n on). */
static void s_health(fix_t *f, unsigned n)
{
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"h\",\"method\":\"health\"}");
    for (unsigned k = n;; k++) {
        assert_true(s_wait_frame(f, k));
        if (test_wsc_frame_has(&s_cl, k, "\"id\":\"h\",\"ok\":true"))
            return;
    }
}

/* A disk that holds the device record's commit (slow, or failing and
 * retried for ever): the connect is answered hello-ok without a
 * deviceToken once GATEWAY_OPENCLAW_RECORD_WAIT_MS pass, not closed 1008
 * "connect timeout" at the handshake's end as if the client had not
 * answered; the record, durable later, sends nothing more, and the
 * device's token still lets it in. */
static void test_device_record_slow_disk(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new_at(&f, true);
    char bearer[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, bearer);
    tdev_t d;
    s_dev_new(&d);
    char dt[S_DT_LEN + 1], got[S_DT_LEN + 1];
    s_join_ok(&f, &d, bearer, NULL, dt);
    s_client_close(&f);

    vfs_fail_hold(s_dir);
    s_join_ok(&f, &d, bearer, NULL, got); /* within WAIT_MS: GATEWAY_OPENCLAW_RECORD_WAIT_MS */
    assert_string_equal(got, "");
    assert_true(vfs_fail_held() > 0); /* the record's commit still waits on the disk */
    s_health(&f, 2);
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed);
    vfs_fail_hold(NULL);
    char other[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, other); /* after the record: it is durable now */
    test_wsc_read(&s_cl);
    for (unsigned k = n; k < test_wsc_frames(&s_cl, &closed); k++)
        assert_false(test_wsc_frame_has(&s_cl, k, "\"hello-ok\""));
    assert_false(closed || s_cl.eof);
    s_client_close(&f);
    s_join_ok(&f, &d, NULL, dt, got);
    assert_string_equal(got, dt);
    s_client_close(&f);
    s_fix_free(&f);
}

/* The endpoint destroyed while a device record it waits for is in flight
 * (its commit held on the disk) and its socket open: the record's answer,
 * run by the store's stop after, finds no endpoint and frees its wait —
 * no use after free, no leak (ASan, LSan). */
static void test_destroy_with_record_in_flight(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new_at(&f, true);
    char bearer[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, bearer);
    tdev_t d;
    s_dev_new(&d);
    vfs_fail_hold(s_dir);
    s_join(&f, &d, bearer, NULL, false);
    test_loop_until(f.b.loop, s_until_held, NULL, 1, WAIT_MS);
    gateway_http_destroy(&f.b.gw);
    gateway_openclaw_destroy(&f.oc);
    assert_null(f.oc);
    vfs_fail_hold(NULL);
    router_tokens_stop(f.b.tokens);
    (void) test_loop_wait(f.b.loop, s_gone, NULL, 1, WAIT_MS);
    close(s_cl.fd);
    test_gw_free(&f.b);
    s_dir_remove();
}

static bool s_until_sync_failed(void *ud)
{
    (void) ud;
    return vfs_fail_failed(VFS_FAIL_SYNC) > 0;
}

/* A run's key whose write the disk fails (retried until the store stops,
 * as at shutdown) is answered, not left waiting: UNAVAILABLE, retryable,
 * when the store gives up; and a run asked after is refused at once. */
static void test_run_key_not_stored(void **state)
{
    (void) state;
    fix_t f;
    s_fix_new_at(&f, true);
    char bearer[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, bearer);
    /* The local backend path: loopback, no device. */
    test_wsc_open(&s_cl, f.b.port,
                  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(s_cl.fd, F_SETFL, O_NONBLOCK), 0);
    assert_true(s_wait_frame(&f, 0));
    char req[1024];
    snprintf(req, sizeof req,
             "{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"params\":{"
             "\"minProtocol\":4,\"maxProtocol\":4,\"client\":{\"id\":\"gateway-client\","
             "\"mode\":\"backend\"},\"scopes\":[\"operator.write\"],"
             "\"auth\":{\"token\":\"%s\"}}}",
             bearer);
    test_wsc_send_text(&s_cl, req);
    assert_true(s_wait_frame(&f, 1));
    assert_true(test_wsc_frame_has(&s_cl, 1, "\"hello-ok\""));
    vfs_fail_arm(VFS_FAIL_SYNC, s_dir, 0, -1);
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"s\",\"method\":\"chat.send\","
                              "\"params\":{\"sessionKey\":\"k\",\"message\":\"hi\","
                              "\"idempotencyKey\":\"k1\"}}");
    /* Until its key's commit failed (the store retries it). */
    test_loop_until(f.b.loop, s_until_sync_failed, NULL, 1, WAIT_MS);
    bool closed;
    unsigned n = test_wsc_frames(&s_cl, &closed);
    for (unsigned k = 2; k < n; k++)
        assert_false(test_wsc_frame_has(&s_cl, k, "\"id\":\"s\""));
    router_tokens_stop(f.b.tokens); /* runs what it owes: not written */
    unsigned at = 2;
    for (;; at++) {
        assert_true(s_wait_frame(&f, at));
        if (test_wsc_frame_has(&s_cl, at, "\"id\":\"s\""))
            break;
    }
    assert_true(test_wsc_frame_has(&s_cl, at, "\"ok\":false"));
    assert_true(test_wsc_frame_has(&s_cl, at, "\"code\":\"UNAVAILABLE\""));
    assert_true(test_wsc_frame_has(&s_cl, at, "\"retryable\":true"));
    test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"t\",\"method\":\"chat.send\","
                              "\"params\":{\"sessionKey\":\"k\",\"message\":\"hi\","
                              "\"idempotencyKey\":\"k2\"}}");
    for (at++;; at++) {
        assert_true(s_wait_frame(&f, at));
        if (test_wsc_frame_has(&s_cl, at, "\"id\":\"t\""))
            break;
    }
    assert_true(test_wsc_frame_has(&s_cl, at, "\"code\":\"UNAVAILABLE\""));
    s_client_close(&f);
    s_fix_free(&f);
}

static bool s_until_head(void *ud)
{
    (void) ud;
    test_wsc_read(&s_cl);
    return s_cl.head || s_cl.eof;
}

/* WIRE §25.2: when every one of the 256 sockets waiting for hello-ok has a
 * connect being accepted (their device records held on the disk), a new
 * upgrade is answered 503 too_many_connections and ends none of them;
 * once the records are durable each gets its hello-ok, and a newcomer is
 * let in. */
static void test_handshakes_all_accepting(void **state)
{
    (void) state;
    fix_t f;
    s_record_wait_ms = 600000; /* the test's deadlines bound it, not this */
    s_fix_new_at(&f, true);
    s_record_wait_ms = 0;
    char bearer[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_bearer_new(&f, bearer);
    enum { N = GATEWAY_OPENCLAW_HANDSHAKES_MAX };
    test_wsc_t *cls = calloc(N, sizeof *cls);
    assert_non_null(cls);
    vfs_fail_hold(s_dir);
    for (unsigned i = 0; i < N; i++) {
        tdev_t d;
        s_dev_new(&d);
        s_join(&f, &d, bearer, NULL, false);
        /* A request after it is answered at once while the connect is
         * being accepted: the socket is past its checks. */
        test_wsc_send_text(&s_cl, "{\"type\":\"req\",\"id\":\"x\",\"method\":\"health\"}");
        assert_true(s_wait_frame(&f, 1));
        assert_true(test_wsc_frame_has(&s_cl, 1, "connect is still being answered"));
        cls[i] = s_cl;
    }
    test_wsc_open(&s_cl, f.b.port,
                  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(fcntl(s_cl.fd, F_SETFL, O_NONBLOCK), 0);
    test_loop_until(f.b.loop, s_until_head, NULL, 1, WAIT_MS);
    assert_true(test_wsc_refused(&s_cl));
    assert_non_null(memmem(s_cl.buf, s_cl.len, " 503 ", 5));
    assert_non_null(memmem(s_cl.buf, s_cl.len, "too_many_connections", 20));
    close(s_cl.fd);
    /* The disk answers: each waiting socket gets its hello-ok. */
    vfs_fail_hold(NULL);
    for (unsigned i = 0; i < N; i++) {
        s_cl = cls[i];
        assert_true(s_wait_frame(&f, 2));
        if (!test_wsc_frame_has(&s_cl, 2, "\"hello-ok\"") ||
            !test_wsc_frame_has(&s_cl, 2, "\"deviceToken\":\"kithdev_"))
            fail_msg("socket %u: no hello-ok with its deviceToken", i);
        cls[i] = s_cl;
    }
    for (unsigned i = 0; i < N; i++)
        close(cls[i].fd);
    free(cls);
    s_client_close(&f);
    /* Room again. */
    tdev_t d;
    s_dev_new(&d);
    char dt[S_DT_LEN + 1];
    s_join_ok(&f, &d, bearer, NULL, dt);
    assert_int_equal(strlen(dt), S_DT_LEN);
    s_client_close(&f);
    s_fix_free(&f);
}

int main(void)
{
    if (sodium_init() < 0 || vfs_fail_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropped_connect_keeps_device_token),
        cmocka_unit_test(test_device_token_per_device_and_bearer),
        cmocka_unit_test(test_dropped_connect_other_bearer_keeps_device_token),
        cmocka_unit_test(test_concurrent_connects_other_bearer),
        cmocka_unit_test(test_device_connect_out_of_memory),
        cmocka_unit_test(test_device_table_full),
        cmocka_unit_test(test_device_record_slow_disk),
        cmocka_unit_test(test_destroy_with_record_in_flight),
        cmocka_unit_test(test_run_key_not_stored),
        cmocka_unit_test(test_handshakes_all_accepting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
