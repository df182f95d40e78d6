/* tests/route_tokens_test.c — the token and pairing routes
 * (gateway/route_tokens.c, gateway/route_pair.c) over real sockets, on a
 * token store whose state.db a test holds (a stalled disk) or fails (a
 * full one, retried for ever) with tests/vfs_fail.h. Each deferred answer
 * comes within the route's wait with what is true without the write: a
 * mint is not issued (503, and a row that lands later is revoked, as
 * nobody holds it), a revocation is in force but not durable (503
 * durability_unknown), a wrong pairing code is counted in memory (401,
 * then 429), and a right one is told no token was issued and stays valid
 * (WIRE §17.2): the client pairs with it once the disk recovers, and the
 * count of its bad codes is neither restarted nor bumped by the failure.
 * The late outcome answers nobody and frees what it must, the server
 * serves others meanwhile, and with no timer to bound the wait nothing is
 * done.
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

#include <sodium.h>
#include <sqlite3.h>

#include "alloc_fail.h"
#include "alloc_fail_loop.h"
#include "loop_timer_fill.h"
#include "gateway/auth.h"
#include "gateway/http_server.h"
#include "gateway/routes_auth.h"
#include "router/net/addr.h"
#include "router/net/loop.h"
#include "router/state/tokens.h"
#include "vfs_fail.h"

/* A client read that waits this long has hung: fail instead. */
#define HANG_GUARD_S 30

/* The routes' wait in these tests: short, as a held disk never ends it. */
#define WAIT_MS 300u

/* ---------------------------------------------------------------- the server */

typedef struct {
    char dir[64];                   /* a fresh temp directory */
    char db[128];                   /* dir/state.db: the token store */
    router_loop_t *loop;
    gateway_http_t *gw;
    router_tokens_t *tokens;
    gateway_auth_t *auth;           /* pairing on */
    gateway_route_tokens_t token_routes;
    gateway_route_pair_t pair_route;
    gateway_route_admin_t admin;    /* /admin/paircode */
    char code[GATEWAY_AUTH_CODE_LEN + 1]; /* a pairing code minted at start */
    pthread_t thread;
    uint16_t port;
} s_srv_t;

/* Runs the loop, then tears down on its thread as the daemon does: the
 * server (what still waits loses its connection), the store (writes
 * still owed get their outcome now, ok false for what was not written),
 * the loop. */
static void *s_loop_main(void *arg)
{
    s_srv_t *s = arg;
    assert_int_equal(router_loop_run(s->loop), 0);
    gateway_http_destroy(&s->gw);
    router_tokens_stop(s->tokens);
    gateway_auth_destroy(&s->auth);
    router_loop_destroy(&s->loop);
    return NULL;
}

static unsigned s_max_timers; /* the loop's max_timers, 0: the default */

static void s_srv_start(s_srv_t *s, unsigned wait_ms)
{
    s->loop = router_loop_new(&(router_loop_opts_t){.max_timers = s_max_timers});
    assert_non_null(s->loop);
    s->gw = gateway_http_new(s->loop, &(gateway_http_opts_t){0});
    assert_non_null(s->gw);
    char err[256];
    s->tokens = router_tokens_new(s->db, s->loop, err, sizeof err);
    if (!s->tokens)
        fail_msg("token store: %s", err);
    s->auth = gateway_auth_new(s->tokens, &(gateway_auth_opts_t){.require_pairing = true});
    assert_non_null(s->auth);
    s->token_routes = (gateway_route_tokens_t){.auth = s->auth, .loop = s->loop,
                                               .wait_ms = wait_ms};
    assert_int_equal(gateway_route_tokens(s->gw, &s->token_routes), 0);
    s->pair_route = (gateway_route_pair_t){.auth = s->auth, .loop = s->loop, .wait_ms = wait_ms};
    assert_int_equal(gateway_route_pair_serve(s->gw, &s->pair_route), 0);
    s->admin = (gateway_route_admin_t){.auth = s->auth};
    assert_int_equal(gateway_route_admin(s->gw, &s->admin), 0);
    gateway_auth_code_mint(s->auth, s->code); /* before the loop runs: its thread is ours */
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
    router_tokens_destroy(&s->tokens);
}

static int s_setup(void **state)
{
    s_srv_t *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    snprintf(s->dir, sizeof s->dir, "/tmp/kith-route-tokens-XXXXXX");
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

/* Rows of gateway_tokens in state.db, read by a connection of our own. */
static int s_rows(const s_srv_t *s)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(s->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM gateway_tokens", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* ---------------------------------------------------------------- the client */

typedef struct {
    int status;       /* 0: the server closed without an answer */
    char body[16384]; /* NUL-terminated; room for a list of 100 tokens */
} s_resp_t;

/* Sends one request on a fresh connection; the socket to read with
 * s_recv, or -1 when the server cut the connection at once. */
static int s_send(const s_srv_t *s, const char *method, const char *path, const char *headers,
                  const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = HANG_GUARD_S};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(s->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (const struct sockaddr *) &sin, sizeof sin);
    if (rc != 0 && errno == EINTR) { /* a signal: the connect goes on; wait for its end */
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        assert_int_equal(poll(&p, 1, HANG_GUARD_S * 1000), 1);
        int err = 0;
        socklen_t elen = sizeof err;
        assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen), 0);
        rc = err ? -1 : 0;
        errno = err;
    }
    if (rc != 0) {
        assert_int_equal(errno, ECONNRESET); /* accepted and cut at once */
        close(fd);
        return -1;
    }
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%sContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     method, path, headers ? headers : "",
                     body ? "Content-Type: application/json\r\n" : "", body ? strlen(body) : 0,
                     body ? body : "");
    assert_true(n > 0 && (size_t) n < sizeof req);
    if (send(fd, req, (size_t) n, MSG_NOSIGNAL) != n) /* cut: s_recv reads no answer */
        assert_true(errno == EPIPE || errno == ECONNRESET);
    return fd;
}

/* Reads the whole answer on fd and closes it; status 0 when none came
 * (fd < 0: the connection was cut at once). */
static void s_recv(int fd, s_resp_t *r)
{
    memset(r, 0, sizeof *r);
    if (fd < 0)
        return;
    char buf[20480];
    size_t len = 0;
    for (;;) {
        ssize_t got = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            fail_msg("no answer in %d s: the client was left waiting", HANG_GUARD_S);
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
    snprintf(r->body, sizeof r->body, "%s", end + 4);
}

static void s_req(const s_srv_t *s, const char *method, const char *path, const char *headers,
                  const char *body, s_resp_t *r)
{
    s_recv(s_send(s, method, path, headers, body), r);
}

static void s_expect(const s_resp_t *r, int status, const char *code)
{
    char want[64];
    snprintf(want, sizeof want, "\"code\":\"%s\"", code);
    if (r->status != status || !strstr(r->body, want) || !strstr(r->body, "\"error\":\""))
        fail_msg("want %d %s, got %d %s", status, code, r->status, r->body);
}

/* The "id" and "token" of a 201 mint into id[] and token[]. */
static void s_minted(const s_resp_t *r, char id[ROUTER_TOKENS_ID_LEN + 1],
                     char token[GATEWAY_AUTH_TOKEN_LEN + 1])
{
    if (r->status != 201)
        fail_msg("mint: %d %s", r->status, r->body);
    const char *i = strstr(r->body, "\"id\":\"");
    const char *t = strstr(r->body, "\"token\":\"");
    assert_non_null(i);
    assert_non_null(t);
    memcpy(id, i + 6, ROUTER_TOKENS_ID_LEN);
    id[ROUTER_TOKENS_ID_LEN] = '\0';
    memcpy(token, t + 9, GATEWAY_AUTH_TOKEN_LEN);
    token[GATEWAY_AUTH_TOKEN_LEN] = '\0';
}

#define S_MINT_BODY "{\"scope\":\"operator\",\"name\":\"t\"}"

/* How many tokens GET /admin/tokens lists. */
static int s_listed(const s_srv_t *s)
{
    s_resp_t r;
    s_req(s, "GET", "/admin/tokens", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "]}")); /* the whole list was read */
    int n = 0;
    for (const char *p = r.body; (p = strstr(p, "\"id\":\"")); p++)
        n++;
    return n;
}

/* ---------------------------------------------------------------- a stalled disk */

/* A mint whose row the disk holds: 503 unavailable, not issued, within
 * the wait, while the server lists tokens to others meanwhile. Once the
 * disk lets go, the row nobody holds is revoked: the next mint's 201 comes
 * after its outcome (the store answers in order), so the list then holds
 * that one alone, and so does state.db after the stop. It waited for the
 * disk for ever. */
static void s_mint_held(s_srv_t *s, const char *path)
{
    s_srv_start(s, WAIT_MS);
    vfs_fail_hold(s->dir);
    int fd = s_send(s, "POST", path, NULL, S_MINT_BODY);
    assert_int_equal(s_listed(s), 0); /* served meanwhile */
    s_resp_t r;
    s_recv(fd, &r);
    s_expect(&r, 503, "unavailable");
    assert_non_null(strstr(r.body, "not issued"));
    assert_null(strstr(r.body, "kith_"));
    assert_true(vfs_fail_held() > 0); /* answered while the disk still holds the row */
    vfs_fail_hold(NULL);
    char id[ROUTER_TOKENS_ID_LEN + 1], token[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_minted(&r, id, token);
    s_req(s, "GET", "/admin/tokens", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    if (s_listed(s) != 1 || !strstr(r.body, id))
        fail_msg("the late row nobody holds is still listed: %s", r.body);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 1);
}

static void test_admin_mint_held(void **state)
{
    s_mint_held(*state, "/admin/tokens");
}

/* The same on /api/tokens, with an operator's bearer. */
static void test_api_mint_held(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    s_resp_t r;
    char id[ROUTER_TOKENS_ID_LEN + 1], token[GATEWAY_AUTH_TOKEN_LEN + 1], auth[128];
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_minted(&r, id, token);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", token);
    vfs_fail_hold(s->dir);
    s_req(s, "POST", "/api/tokens", auth, "{\"scope\":\"node\",\"name\":\"n\"}", &r);
    s_expect(&r, 503, "unavailable");
    s_req(s, "GET", "/api/tokens", auth, NULL, &r); /* the bearer still opens */
    assert_int_equal(r.status, 200);
    vfs_fail_hold(NULL);
    /* A mint after: its 201 comes after the late row's outcome. */
    char id2[ROUTER_TOKENS_ID_LEN + 1], token2[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_req(s, "POST", "/api/tokens", auth, "{\"scope\":\"node\",\"name\":\"m\"}", &r);
    s_minted(&r, id2, token2);
    assert_int_equal(s_listed(s), 2);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 2);
}

/* A revocation the disk holds, on each door: in force at once (its
 * bearer is refused, the list leaves it out), and said so with 503
 * durability_unknown within the wait — neither 200 (it is not durable: a
 * restart may bring it back) nor as if nothing changed. Once the disk
 * lets go the rows are gone. */
static void test_revoke_held(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    s_resp_t r;
    char id[ROUTER_TOKENS_ID_LEN + 1], token[GATEWAY_AUTH_TOKEN_LEN + 1], auth[128], path[64];
    char id2[ROUTER_TOKENS_ID_LEN + 1], token2[GATEWAY_AUTH_TOKEN_LEN + 1], auth2[128];
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_minted(&r, id, token);
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_minted(&r, id2, token2);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", token);
    snprintf(auth2, sizeof auth2, "Authorization: Bearer %s\r\n", token2);
    vfs_fail_hold(s->dir);
    /* /admin/tokens/{id}, then /api/tokens/{id} with the other bearer */
    snprintf(path, sizeof path, "/admin/tokens/%s", id);
    s_req(s, "DELETE", path, NULL, NULL, &r);
    s_expect(&r, 503, "durability_unknown");
    assert_non_null(strstr(r.body, "revoked now"));
    s_req(s, "GET", "/api/tokens", auth, NULL, &r);
    assert_int_equal(r.status, 401); /* in force */
    snprintf(path, sizeof path, "/api/tokens/%s", id2);
    s_req(s, "DELETE", path, auth2, NULL, &r);
    s_expect(&r, 503, "durability_unknown");
    s_req(s, "GET", "/api/tokens", auth2, NULL, &r);
    assert_int_equal(r.status, 401);
    assert_int_equal(s_listed(s), 0);
    assert_true(vfs_fail_held() > 0);
    vfs_fail_hold(NULL);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 0);
}

/* The "token" of a 200 /pair into token[]. */
static void s_paired(const s_resp_t *r, char token[GATEWAY_AUTH_TOKEN_LEN + 1])
{
    const char *t = strstr(r->body, "\"paired\":true,\"token\":\"");
    if (r->status != 200 || !t)
        fail_msg("pair: %d %s", r->status, r->body);
    memcpy(token, t + 23, GATEWAY_AUTH_TOKEN_LEN);
    token[GATEWAY_AUTH_TOKEN_LEN] = '\0';
}

/* /pair with the right code while the disk holds the token's row: 503
 * unavailable, no token shown, the code still valid (nothing was issued:
 * it was spent, and the client had neither a token nor a code); the row
 * that lands later is revoked, and the same code pairs once the disk
 * takes writes again: the one token listed is that one. */
static void test_pair_right_code_held(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    vfs_fail_hold(s->dir);
    char hdr[64];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_resp_t r;
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_expect(&r, 503, "unavailable");
    assert_null(strstr(r.body, "kith_"));
    assert_non_null(strstr(r.body, "still valid"));
    assert_true(vfs_fail_held() > 0);
    vfs_fail_hold(NULL);
    char token[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_req(s, "POST", "/pair", hdr, NULL, &r); /* still valid: it was 401, spent */
    s_paired(&r, token);
    s_req(s, "POST", "/pair", hdr, NULL, &r); /* now it is spent */
    s_expect(&r, 401, "invalid_pairing_code");
    uint8_t hash[32];
    char id[ROUTER_TOKENS_ID_LEN + 1];
    crypto_hash_sha256(hash, (const unsigned char *) token, GATEWAY_AUTH_TOKEN_LEN);
    router_tokens_id(hash, id);
    s_req(s, "GET", "/admin/tokens", NULL, NULL, &r);
    if (s_listed(s) != 1 || !strstr(r.body, id))
        fail_msg("want the paired token alone: %s", r.body);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 1);
}

/* A right code whose token the disk does not take in time neither
 * restarts nor bumps the client's count of bad codes: three bad codes,
 * the right one (503), then the fourth bad code is 401 and the fifth 429
 * — a restarted count said 401 to both. A code minted meanwhile is the
 * one in force: the late failure does not bring the old one back. */
static void test_pair_failure_keeps_count(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    vfs_fail_hold(s->dir);
    char right[64], wrong[64];
    snprintf(right, sizeof right, "X-Pairing-Code: %s\r\n", s->code);
    snprintf(wrong, sizeof wrong, "X-Pairing-Code: %s\r\n",
             strcmp(s->code, "000000") ? "000000" : "000001");
    s_resp_t r;
    for (int i = 0; i < 3; i++) {
        s_req(s, "POST", "/pair", wrong, NULL, &r);
        s_expect(&r, 401, "invalid_pairing_code");
    }
    s_req(s, "POST", "/pair", right, NULL, &r);
    s_expect(&r, 503, "unavailable");
    s_req(s, "POST", "/pair", wrong, NULL, &r);
    s_expect(&r, 401, "invalid_pairing_code");
    s_req(s, "POST", "/pair", wrong, NULL, &r);
    s_expect(&r, 429, "too_many_attempts");
    vfs_fail_hold(NULL);
    s_srv_stop(s);
}

/* A right code held by a /pair in flight looks spent to another (one code,
 * one token); a code minted while it is held replaces it, and the held
 * one does not come back when its write fails. */
static void test_pair_code_replaced_while_held(void **state)
{
    s_srv_t *s = *state;
    /* A long wait: the second request and the mint must come while the
     * first still holds the code (its deadline would release it). */
    s_srv_start(s, 10u * 1000u);
    vfs_fail_hold(s->dir);
    char hdr[64], fresh[GATEWAY_AUTH_CODE_LEN + 1];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    int fd = s_send(s, "POST", "/pair", hdr, NULL);
    s_resp_t r;
    for (int i = 0; i < HANG_GUARD_S * 100 && vfs_fail_held() == 0; i++)
        usleep(10 * 1000); /* the first one's row is at the disk: the code is held */
    assert_true(vfs_fail_held() > 0);
    /* Its answer waits for its count's write (held too): read after. */
    int fd2 = s_send(s, "POST", "/pair", hdr, NULL);
    s_req(s, "POST", "/admin/paircode", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    const char *c = strstr(r.body, "\"code\":\"");
    assert_non_null(c);
    memcpy(fresh, c + 8, GATEWAY_AUTH_CODE_LEN);
    fresh[GATEWAY_AUTH_CODE_LEN] = '\0';
    s_recv(fd, &r);
    s_expect(&r, 503, "unavailable");
    if (!strstr(r.body, "a newer pairing code has replaced this one"))
        fail_msg("the held code's answer: %d %s", r.status, r.body);
    s_recv(fd2, &r);
    s_expect(&r, 401, "invalid_pairing_code");
    vfs_fail_hold(NULL);
    char token[GATEWAY_AUTH_TOKEN_LEN + 1];
    if (strcmp(fresh, s->code) != 0) {
        s_req(s, "POST", "/pair", hdr, NULL, &r); /* replaced */
        s_expect(&r, 401, "invalid_pairing_code");
    }
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", fresh);
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_paired(&r, token);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 1);
}

/* Wrong codes while the disk holds their counts: each answered within the
 * wait as the count in memory says (401 four times, 429 at the fifth), and
 * the lock holds at once after. */
static void test_pair_wrong_code_held(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    vfs_fail_hold(s->dir);
    char hdr[64];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", strcmp(s->code, "000000") ? "000000"
                                                                                   : "000001");
    s_resp_t r;
    for (unsigned i = 1; i < GATEWAY_PAIR_FAILURES_MAX; i++) {
        s_req(s, "POST", "/pair", hdr, NULL, &r);
        s_expect(&r, 401, "invalid_pairing_code");
    }
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_expect(&r, 429, "too_many_attempts");
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_req(s, "POST", "/pair", hdr, NULL, &r); /* locked: the right code is not looked at */
    s_expect(&r, 429, "too_many_attempts");
    assert_true(vfs_fail_held() > 0);
    vfs_fail_hold(NULL);
    s_srv_stop(s);
}

/* The normal path: each answer waits for its write and says it. */
static void test_normal_path(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 0); /* GATEWAY_TOKENS_WAIT_MS */
    char hdr[64];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_resp_t r;
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"paired\":true,\"token\":\"kith_"));
    char id[ROUTER_TOKENS_ID_LEN + 1], token[GATEWAY_AUTH_TOKEN_LEN + 1], path[64];
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_minted(&r, id, token);
    assert_int_equal(s_listed(s), 2);
    snprintf(path, sizeof path, "/admin/tokens/%s", id);
    s_req(s, "DELETE", path, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"revoked\":true"));
    s_req(s, "POST", "/pair", "X-Pairing-Code: 12345\r\n", NULL, &r);
    s_expect(&r, 401, "invalid_pairing_code");
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 1);
}

/* The store's queue full (ROUTER_TOKENS_JOBS_MAX writes the held disk
 * has not taken): a mint is refused at once, 503 with nothing done; a
 * wrong code is counted in memory all the same and answered so (401),
 * as at the deadline — it was 503, as if the code had not been looked at. */
static void test_queue_full(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    vfs_fail_hold(s->dir);
    enum { N = ROUTER_TOKENS_JOBS_MAX + 8 };
    static int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = s_send(s, "POST", "/admin/tokens", NULL, S_MINT_BODY);
    unsigned full = 0;
    for (int i = 0; i < N; i++) {
        s_resp_t r;
        s_recv(fds[i], &r);
        s_expect(&r, 503, "unavailable");
        full += strstr(r.body, "cannot be stored now") != NULL;
    }
    assert_true(full > 0); /* the queue was full for some */
    s_resp_t r;
    s_req(s, "POST", "/pair", "X-Pairing-Code: 12345\r\n", NULL, &r);
    s_expect(&r, 401, "invalid_pairing_code");
    /* The right code, refused with nothing written: still valid after. */
    char hdr[64], token[GATEWAY_AUTH_TOKEN_LEN + 1];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_expect(&r, 503, "unavailable");
    assert_non_null(strstr(r.body, "cannot be stored now"));
    vfs_fail_hold(NULL);
    /* Until the queue has room again, each try is refused the same way,
     * the code kept for the next. */
    for (int i = 0;; i++) {
        s_req(s, "POST", "/pair", hdr, NULL, &r);
        if (r.status != 503 || !strstr(r.body, "cannot be stored now") || i > HANG_GUARD_S * 100)
            break;
        usleep(10 * 1000);
    }
    s_paired(&r, token);
    s_srv_stop(s);
}

/* Writes n token rows (node tokens nobody holds) into state.db, with a
 * connection of our own while no server runs. */
static void s_rows_add(const s_srv_t *s, unsigned n)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(s->db, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO gateway_tokens(hash,created_ms,scope,"
                                            "name) VALUES(?,1,'node','filler')",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    for (unsigned i = 0; i < n; i++) {
        uint8_t hash[32];
        randombytes_buf(hash, sizeof hash);
        assert_int_equal(sqlite3_bind_blob(st, 1, hash, sizeof hash, SQLITE_TRANSIENT),
                         SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* The last slot taken by a mint in flight (its row held by the disk)
 * while a right code is sent: 507 too_many_tokens — the store counts the
 * mint, the durable count did not — and the code is not spent by it: once
 * the mint's late row is revoked (its client was told 503), the same code
 * pairs. */
static void test_pair_last_slot_in_flight(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    s_srv_stop(s); /* the tables exist now */
    s_rows_add(s, ROUTER_TOKENS_MAX - 1);
    s_srv_start(s, WAIT_MS);
    vfs_fail_hold(s->dir);
    s_resp_t r;
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_expect(&r, 503, "unavailable"); /* the deadline: its row is still held */
    char hdr[64], token[GATEWAY_AUTH_TOKEN_LEN + 1];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_expect(&r, 507, "too_many_tokens");
    vfs_fail_hold(NULL);
    /* Until the late row is revoked, each try is 507 and keeps the code. */
    for (int i = 0;; i++) {
        s_req(s, "POST", "/pair", hdr, NULL, &r);
        if (r.status != 507 || i > HANG_GUARD_S * 100)
            break;
        usleep(10 * 1000);
    }
    s_paired(&r, token);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), (int) ROUTER_TOKENS_MAX);
}

/* ---------------------------------------------------------------- a failing disk */

/* Every write fails (a full disk; the store retries for ever): the
 * answers come within the wait, and at the stop the store gives up on
 * them (ok false) with nobody left to answer — nothing freed twice,
 * nothing leaked (ASan). */
static void test_failing_disk_then_stop(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    s_resp_t r;
    char id[ROUTER_TOKENS_ID_LEN + 1], token[GATEWAY_AUTH_TOKEN_LEN + 1], path[64], hdr[64];
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_minted(&r, id, token);
    vfs_fail_arm(VFS_FAIL_WRITE, s->dir, 0, -1);
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_expect(&r, 503, "unavailable");
    snprintf(path, sizeof path, "/admin/tokens/%s", id);
    s_req(s, "DELETE", path, NULL, NULL, &r);
    s_expect(&r, 503, "durability_unknown");
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_expect(&r, 503, "unavailable");
    s_req(s, "POST", "/pair", hdr, NULL, &r); /* again, the disk still failing */
    s_expect(&r, 503, "unavailable");
    s_req(s, "POST", "/pair", "X-Pairing-Code: 12345\r\n", NULL, &r);
    s_expect(&r, 401, "invalid_pairing_code");
    assert_true(vfs_fail_failed(VFS_FAIL_WRITE) > 0);
    s_srv_stop(s); /* the store gives up on all five: ok false, nobody to answer */
    vfs_fail_clear();
    assert_int_equal(s_rows(s), 1); /* neither the revocation nor a mint was written */
}

/* A failing fsync (the store retries until it takes): the right code is
 * told no token was issued, and pairs once the disk recovers; the rows
 * the retries land later are revoked: only the token handed over is
 * listed. */
static void test_pair_failing_sync_then_recovers(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, WAIT_MS);
    vfs_fail_arm(VFS_FAIL_SYNC, s->dir, 0, -1);
    char hdr[64], token[GATEWAY_AUTH_TOKEN_LEN + 1], id[ROUTER_TOKENS_ID_LEN + 1];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_resp_t r;
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_expect(&r, 503, "unavailable");
    assert_null(strstr(r.body, "kith_"));
    assert_true(vfs_fail_failed(VFS_FAIL_SYNC) > 0);
    vfs_fail_clear();
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_paired(&r, token);
    uint8_t hash[32];
    crypto_hash_sha256(hash, (const unsigned char *) token, GATEWAY_AUTH_TOKEN_LEN);
    router_tokens_id(hash, id);
    s_req(s, "GET", "/admin/tokens", NULL, NULL, &r);
    if (s_listed(s) != 1 || !strstr(r.body, id))
        fail_msg("want the paired token alone: %s", r.body);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 1);
}

/* The loop stops while answers still wait on a failing disk, before
 * their deadline: the server goes first (the answers go nowhere), then
 * the store gives up on the writes, and their callbacks end the pending
 * answers and cancel the deadlines (ASan: nothing freed twice or left). */
static void test_stop_before_deadline(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 3600u * 1000u); /* never reached */
    vfs_fail_arm(VFS_FAIL_WRITE, s->dir, 0, -1);
    int fd1 = s_send(s, "POST", "/admin/tokens", NULL, S_MINT_BODY);
    char hdr[64];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    int fd2 = s_send(s, "POST", "/pair", hdr, NULL);
    int fd3 = s_send(s, "POST", "/pair", "X-Pairing-Code: 12345\r\n", NULL);
    assert_int_equal(s_listed(s), 0); /* served meanwhile */
    for (int i = 0; vfs_fail_failed(VFS_FAIL_WRITE) == 0; i++) {
        if (i > HANG_GUARD_S * 100)
            fail_msg("no commit was tried");
        usleep(10 * 1000);
    }
    s_srv_stop(s);
    s_resp_t r;
    s_recv(fd1, &r);
    assert_int_equal(r.status, 0); /* cut: the server went first */
    s_recv(fd2, &r);
    assert_int_equal(r.status, 0);
    s_recv(fd3, &r);
    assert_int_equal(r.status, 0);
}

/* ---------------------------------------------------------------- out of memory */

/* A fresh pairing code from /admin/paircode into code[]. */
static void s_paircode(const s_srv_t *s, char code[GATEWAY_AUTH_CODE_LEN + 1])
{
    s_resp_t r;
    s_req(s, "POST", "/admin/paircode", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    const char *c = strstr(r.body, "\"code\":\"");
    assert_non_null(c);
    memcpy(code, c + 8, GATEWAY_AUTH_CODE_LEN);
    code[GATEWAY_AUTH_CODE_LEN] = '\0';
}

typedef enum { S_MINT, S_PAIR, S_REVOKE, S_WRONG } s_kind_t;

/* Each allocation the loop thread makes for one request fails in turn
 * (the deferral, the answer's document, the store's job…). Every answer
 * is the request's success or a typed refusal (or the connection is cut),
 * the server goes on, and no token nobody holds stays listed: after each
 * run, a mint (whose 201 comes after every earlier outcome) and the list
 * holds exactly the tokens handed to a client. */
static void test_out_of_memory_sweep(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 0);
    unsigned held = 0; /* tokens handed to a client and not revoked */
    unsigned refusals = 0;
    for (s_kind_t kind = S_MINT; kind <= S_WRONG; kind++) {
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            char code[GATEWAY_AUTH_CODE_LEN + 1], hdr[64], path[64];
            char id[ROUTER_TOKENS_ID_LEN + 1] = "", token[GATEWAY_AUTH_TOKEN_LEN + 1] = "";
            s_resp_t r;
            if (kind == S_PAIR)
                s_paircode(s, code);
            if (kind == S_REVOKE) {
                s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
                s_minted(&r, id, token);
                held++;
            }
            snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n",
                     kind == S_PAIR ? code : "12345");
            snprintf(path, sizeof path, "/admin/tokens/%s", id);
            alloc_fail_on_loop(s->loop, i);
            if (kind == S_MINT)
                s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
            else if (kind == S_REVOKE)
                s_req(s, "DELETE", path, NULL, NULL, &r);
            else
                s_req(s, "POST", "/pair", hdr, NULL, &r);
            unsigned failed = alloc_fail_on_loop(s->loop, -1);
            if (kind == S_PAIR && r.status != 200) {
                /* No token reached the client: the code pairs it now,
                 * unless the token went out and only the connection
                 * failed after (cut: then the code is spent). */
                s_resp_t again;
                s_req(s, "POST", "/pair", hdr, NULL, &again);
                if (again.status == 200)
                    held++;
                else if (r.status || again.status != 401)
                    fail_msg("run %ld: after %d the code answered %d %s", i, r.status,
                             again.status, again.body);
            }
            if (r.status == 201 || (r.status == 200 && kind == S_PAIR)) {
                assert_non_null(strstr(r.body, "\"token\":\"kith_"));
                held++;
            } else if (kind == S_REVOKE &&
                       (r.status == 200 || (r.status == 503 && strstr(r.body, "revoked now")))) {
                held--; /* in force */
            } else if (r.status == 401 || r.status == 429) {
                assert_int_equal(kind, S_WRONG);
            } else if (r.status) {
                if (r.status < 500 || !strstr(r.body, "\"code\":\""))
                    fail_msg("run %ld of %d: %d %s", i, (int) kind, r.status, r.body);
                refusals++;
            } else if (kind == S_REVOKE) {
                /* cut: in force or not, as the list says */
                s_req(s, "GET", "/admin/tokens", NULL, NULL, &r);
                if (!strstr(r.body, id))
                    held--;
            }
            s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
            s_minted(&r, id, token);
            held++;
            int listed = s_listed(s);
            if ((unsigned) listed != held)
                fail_msg("run %ld of %d: %d listed, %u held", i, (int) kind, listed, held);
            if (failed == 0)
                break; /* a run with nothing left to fail: all were reached */
        }
    }
    assert_true(refusals > 0);
    s_srv_stop(s);
}

/* ---------------------------------------------------------------- no timers */

/* With the loop's timers all but `spare` taken, on a disk that holds
 * every write, each request is answered (a typed 503 with nothing done,
 * or its deadline's answer) or cut, never left waiting; a right pairing
 * code refused for want of a timer stays unspent. */
static void test_no_timer_never_hangs(void **state)
{
    s_srv_t *s = *state;
    s_max_timers = 64;
    s_srv_start(s, WAIT_MS);
    s_max_timers = 0;
    char hdr[64], id[ROUTER_TOKENS_ID_LEN + 1], token[GATEWAY_AUTH_TOKEN_LEN + 1], path[64];
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\n", s->code);
    s_resp_t r;
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r); /* one to revoke */
    s_minted(&r, id, token);
    snprintf(path, sizeof path, "/admin/tokens/%s", id);
    vfs_fail_hold(s->dir);
    unsigned refused = 0, kept = 0;
    for (long spare = 0; spare <= 4; spare++) {
        test_timer_fill_t f = {0};
        test_timer_fill(s->loop, &f, spare);
        /* A revocation with no timer to bound its wait: refused with
         * nothing done — the token still opens what it opened. */
        s_req(s, "DELETE", path, NULL, NULL, &r);
        print_message("spare %ld revoke: %d %s\n", spare, r.status, r.body);
        bool untouched = r.status == 503 && strstr(r.body, "nothing was done");
        if (r.status && !untouched && r.status != 404)
            s_expect(&r, 503, "durability_unknown"); /* the deadline: in force, not durable */
        s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
        print_message("spare %ld mint: %d %s\n", spare, r.status, r.body);
        if (r.status) {
            s_expect(&r, 503, "unavailable");
            refused += strstr(r.body, "nothing was done") != NULL;
        }
        s_req(s, "POST", "/pair", hdr, NULL, &r);
        print_message("spare %ld pair: %d %s\n", spare, r.status, r.body);
        if (r.status) {
            /* Never 401: no token was issued, so the code is never spent. */
            s_expect(&r, 503, "unavailable");
            refused += strstr(r.body, "not looked at") != NULL;
            assert_null(strstr(r.body, "spent"));
        }
        test_timer_fill(s->loop, &f, -1);
        if (untouched) {
            s_req(s, "GET", "/admin/tokens", NULL, NULL, &r);
            assert_non_null(strstr(r.body, id));
            kept++;
        }
    }
    assert_true(kept > 0);
    assert_true(refused > 0);
    vfs_fail_hold(NULL);
    s_req(s, "POST", "/pair", hdr, NULL, &r); /* the code paired nobody: it does now */
    s_paired(&r, token);
    s_srv_stop(s);
}

/* Installing the routes with each allocation failing in turn: 0, or -1
 * with nothing leaked (the server frees what it took). */
static void test_routes_out_of_memory(void **state)
{
    (void) state;
    for (int which = 0; which < 2; which++) {
        for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
            router_loop_t *loop = router_loop_new(&(router_loop_opts_t){0});
            assert_non_null(loop);
            gateway_http_t *gw = gateway_http_new(loop, &(gateway_http_opts_t){0});
            assert_non_null(gw);
            char err[256];
            router_tokens_t *tokens = router_tokens_new(NULL, loop, err, sizeof err);
            assert_non_null(tokens);
            gateway_auth_t *auth =
                gateway_auth_new(tokens, &(gateway_auth_opts_t){.require_pairing = true});
            assert_non_null(auth);
            gateway_route_tokens_t tr = {.auth = auth, .loop = loop};
            gateway_route_pair_t pr = {.auth = auth, .loop = loop};
            alloc_fail_arm(i);
            int rc = which ? gateway_route_pair_serve(gw, &pr) : gateway_route_tokens(gw, &tr);
            unsigned failed = alloc_fail_disarm();
            assert_true(rc == 0 || (rc == -1 && failed));
            gateway_http_destroy(&gw);
            router_tokens_stop(tokens);
            gateway_auth_destroy(&auth);
            router_loop_destroy(&loop);
            router_tokens_destroy(&tokens);
            if (!failed)
                break;
        }
    }
    alloc_fail_arm(0); /* gateway_auth_new out of memory: NULL */
    gateway_auth_t *none = gateway_auth_new(NULL, &(gateway_auth_opts_t){0});
    alloc_fail_disarm();
    assert_null(none);
    gateway_auth_destroy(&none);
    gateway_auth_destroy(NULL);
}

/* X-Token-Name (WIRE §17.2): a bad one is 400 invalid_token_name with the
 * code not spent and nothing counted; a good one names the token paired. */
static void test_pair_token_name(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 0);
    char hdr[128], token[GATEWAY_AUTH_TOKEN_LEN + 1];
    s_resp_t r;
    static const char *const bad[] = {"a\tb", "\xc3\x28", /* 65 octets: */
                                      "12345678901234567890123456789012345678901234567890"
                                      "123456789012345"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\nX-Token-Name: %s\r\n", s->code, bad[i]);
        s_req(s, "POST", "/pair", hdr, NULL, &r);
        s_expect(&r, 400, "invalid_token_name");
    }
    /* None of the bad names counted as a bad code: four wrong codes are
     * 401 still (the fifth in a row is 429). */
    for (int i = 0; i < 4; i++) {
        s_req(s, "POST", "/pair", "X-Pairing-Code: 12345\r\n", NULL, &r);
        s_expect(&r, 401, "invalid_pairing_code");
    }
    snprintf(hdr, sizeof hdr, "X-Pairing-Code: %s\r\nX-Token-Name: laptop \xc3\xa9\r\n",
             s->code);
    s_req(s, "POST", "/pair", hdr, NULL, &r);
    s_paired(&r, token);
    s_req(s, "GET", "/admin/tokens", NULL, NULL, &r);
    assert_non_null(strstr(r.body, "\"name\":\"laptop \xc3\xa9\""));
    s_srv_stop(s);
}

/* POST /admin/tokens with a body that is not {"scope","name"}: 400
 * invalid_body, nothing minted. */
static void test_mint_bad_bodies(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 0);
    static const char *const bad[] = {
        "[]", "{\"scope\":\"operator\"}", "{\"scope\":\"root\",\"name\":\"x\"}",
        "{\"scope\":\"node\",\"name\":\"\"}", "{\"scope\":\"node\",\"name\":\"a\\u0001\"}",
        "{\"scope\":\"node\",\"name\":\"x\",\"extra\":1}", "{\"scope\":1,\"name\":\"x\"}"};
    s_resp_t r;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_req(s, "POST", "/admin/tokens", NULL, bad[i], &r);
        s_expect(&r, 400, "invalid_body");
    }
    assert_int_equal(s_listed(s), 0);
    s_srv_stop(s);
    assert_int_equal(s_rows(s), 0);
}

/* DELETE without a bearer on /api: 401, and nothing is revoked. */
static void test_revoke_unauthorized(void **state)
{
    s_srv_t *s = *state;
    s_srv_start(s, 0);
    s_resp_t r;
    char id[ROUTER_TOKENS_ID_LEN + 1], token[GATEWAY_AUTH_TOKEN_LEN + 1], path[64];
    s_req(s, "POST", "/admin/tokens", NULL, S_MINT_BODY, &r);
    s_minted(&r, id, token);
    snprintf(path, sizeof path, "/api/tokens/%s", id);
    s_req(s, "DELETE", path, NULL, NULL, &r);
    s_expect(&r, 401, "unauthorized");
    s_req(s, "DELETE", path, "Authorization: Bearer kith_0\r\n", NULL, &r);
    s_expect(&r, 401, "unauthorized");
    assert_int_equal(s_listed(s), 1);
    s_srv_stop(s);
}

int main(void)
{
    if (sodium_init() < 0 || vfs_fail_install() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_normal_path, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_admin_mint_held, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_api_mint_held, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_revoke_held, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_pair_right_code_held, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_pair_wrong_code_held, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_pair_failure_keeps_count, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_pair_code_replaced_while_held, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_pair_failing_sync_then_recovers, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_pair_last_slot_in_flight, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_failing_disk_then_stop, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_stop_before_deadline, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_no_timer_never_hangs, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_out_of_memory_sweep, s_setup, s_teardown),
        cmocka_unit_test(test_routes_out_of_memory),
        cmocka_unit_test_setup_teardown(test_revoke_unauthorized, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_pair_token_name, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_mint_bad_bodies, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
