/* tests/pairing_test.c — Meerkat pairing on the comms port (WIRE §23.6):
 * the line decoder and the password proof (router/comms/pairing_msg.c) with
 * golden lines and the exact reason of each refusal, and the handshake
 * (router/comms/pairing.c) on a memory loop: the files a pairing writes, and
 * every refusal code a caller can meet, allocation failures included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <yajl/yajl_tree.h>

#include "alloc_fail.h"
#include "proto/pubkey.h"
#include "router/comms/pairing.h"
#include "router/comms/pairing_msg.h"
#include "router/net/loop_mem.h"
#include "router/state/tokens.h"
#include "router/state/trust.h"

#define S_PASSWORD "correct horse battery staple 0123456789"

/* ================================================================ the decoder */

/* A caller's proof line with these fields spliced in. */
static void s_proof_line(char *out, size_t cap, const char *name, const char *addr, const char *ikind,
                         const char *key, const char *proof)
{
    snprintf(out, cap,
             "{\"kind\":\"meerkat_pairing_proof\",\"caller\":{\"name\":%s,\"address\":%s,\"identity\":{\"kind\":%s,"
             "\"public_key\":%s}},\"password_proof\":%s}\n",
             name, addr, ikind, key, proof);
}

static char s_key_text[PROTO_PUBKEY_TEXT_CAP]; /* a full-order key, "ed25519:…" */
static uint8_t s_key_pk[32], s_key_sk[64];

static void s_expect_refused(const char *line, size_t len, const char *why_want, int errno_want)
{
    router_pairing_msg_t m;
    char why[160] = "";
    memset(&m, 0x55, sizeof m);
    errno = 0;
    if (router_pairing_msg_parse(line, len, &m, why, sizeof why) != -1)
        fail_msg("accepted: %.*s", (int) (len > 200 ? 200 : len), line);
    if (errno != errno_want)
        fail_msg("%.*s: errno %d, want %d", (int) (len > 200 ? 200 : len), line, errno, errno_want);
    if (strcmp(why, why_want) != 0)
        fail_msg("%.*s: got \"%s\", want \"%s\"", (int) (len > 200 ? 200 : len), line, why, why_want);
    router_pairing_msg_t zero;
    memset(&zero, 0, sizeof zero);
    assert_memory_equal(&m, &zero, sizeof m); /* nothing half-filled */
}

static void s_refused(const char *line, const char *why_want)
{
    s_expect_refused(line, strlen(line), why_want, EINVAL);
}

static void test_msg_parse(void **state)
{
    (void) state;
    router_pairing_msg_t m;
    char why[160], line[1024], qkey[128];
    /* Golden lines: a hello, a proof (CRLF, unknown keys ignored). */
    static const char hello[] = "{\"kind\":\"meerkat_pairing_hello\",\"version\":1,\"x\":[1]}\n";
    assert_int_equal(router_pairing_msg_parse(hello, strlen(hello), &m, why, sizeof why), 0);
    assert_int_equal(m.kind, ROUTER_PAIRING_HELLO);
    assert_int_equal(m.version, 1);
    static const char hello_max[] = "{\"kind\":\"meerkat_pairing_hello\",\"version\":4294967295}";
    assert_int_equal(router_pairing_msg_parse(hello_max, strlen(hello_max), &m, why, sizeof why), 0);
    assert_int_equal(m.version, UINT32_MAX);
    snprintf(qkey, sizeof qkey, "\"%s\"", s_key_text);
    s_proof_line(line, sizeof line, "\"mk\\u00e9\"", "\"tcp://10.0.0.2:4200\"", "\"ed25519_public_key\"", qkey,
                 "\"cHJvb2Y=\"");
    size_t n = strlen(line);
    memcpy(line + n - 1, "\r\n", 3);
    assert_int_equal(router_pairing_msg_parse(line, n + 1, &m, why, sizeof why), 0);
    assert_int_equal(m.kind, ROUTER_PAIRING_PROOF);
    assert_string_equal(m.name, "mk\xc3\xa9");
    assert_string_equal(m.address, "tcp://10.0.0.2:4200");
    assert_string_equal(m.public_key, s_key_text);
    assert_memory_equal(m.pk, s_key_pk, 32);
    assert_string_equal(m.proof, "cHJvb2Y=");

    /* Refusals, each with its reason. */
    s_refused("", "not JSON");
    s_refused("{\"kind\":", "not JSON");
    s_refused("[\"meerkat_pairing_hello\"]", "expected an object with a string \"kind\"");
    s_refused("{\"kind\":1}", "expected an object with a string \"kind\"");
    s_refused("{\"kind\":\"meerkat_pairing_hello_and_then_some_more_text\"}",
              "expected an object with a string \"kind\"");
    s_refused("{\"kind\":\"meerkat_pairing_complete\"}",
              "unknown \"kind\" (expected meerkat_pairing_hello or meerkat_pairing_proof)");
    static const char *const versions[] = {"", ",\"version\":\"1\"", ",\"version\":1.0", ",\"version\":-1",
                                           ",\"version\":4294967296"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        snprintf(line, sizeof line, "{\"kind\":\"meerkat_pairing_hello\"%s}", versions[i]);
        s_refused(line, "hello: \"version\" must be an unsigned integer");
    }
    s_expect_refused("{\"kind\":\"meerkat_pairing_hello\",\"version\":1}\0", 45, "a NUL byte in the line", EINVAL);
    char *big = malloc(ROUTER_PAIRING_LINE_MAX + 1);
    assert_non_null(big);
    memset(big, ' ', ROUTER_PAIRING_LINE_MAX + 1);
    s_expect_refused(big, ROUTER_PAIRING_LINE_MAX + 1, "line longer than 16 KiB", EINVAL);
    memcpy(big, hello, strlen(hello) - 1); /* 16 KiB with its newline: read */
    big[ROUTER_PAIRING_LINE_MAX - 1] = '\n';
    assert_int_equal(router_pairing_msg_parse(big, ROUTER_PAIRING_LINE_MAX, &m, why, sizeof why), 0);
    free(big);

    static const char *const caller_why = "proof: caller.name and caller.address must be strings";
    static const char *const ikind_why = "proof: caller.identity.kind must be \"ed25519_public_key\"";
    static const char *const key_why =
        "proof: caller.identity.public_key is not a full-order \"ed25519:<base64>\" key";
    static const char *const proof_why = "proof: \"password_proof\" must be a string";
    char name256[300], name257[300];
    memset(name256, 'n', sizeof name256);
    name256[0] = '"';
    name256[257] = '"';
    name256[258] = '\0';
    memcpy(name257, name256, sizeof name257);
    name257[257] = 'n';
    name257[258] = '"';
    name257[259] = '\0';
    s_proof_line(line, sizeof line, name256, "\"a\"", "\"ed25519_public_key\"", qkey, "\"p\"");
    assert_int_equal(router_pairing_msg_parse(line, strlen(line), &m, why, sizeof why), 0);
    assert_int_equal(strlen(m.name), ROUTER_PAIRING_NAME_MAX);
    s_proof_line(line, sizeof line, name257, "\"a\"", "\"ed25519_public_key\"", qkey, "\"p\"");
    s_refused(line, caller_why);
    s_proof_line(line, sizeof line, "7", "\"a\"", "\"ed25519_public_key\"", qkey, "\"p\"");
    s_refused(line, caller_why);
    s_proof_line(line, sizeof line, "\"n\"", "null", "\"ed25519_public_key\"", qkey, "\"p\"");
    s_refused(line, caller_why);
    s_refused("{\"kind\":\"meerkat_pairing_proof\"}", caller_why);
    s_proof_line(line, sizeof line, "\"n\"", "\"a\"", "\"x25519_public_key\"", qkey, "\"p\"");
    s_refused(line, ikind_why);
    s_proof_line(line, sizeof line, "\"n\"", "\"a\"", "{}", qkey, "\"p\"");
    s_refused(line, ikind_why);
    s_proof_line(line, sizeof line, "\"n\"", "\"a\"", "\"ed25519_public_key\"", "1", "\"p\"");
    s_refused(line, key_why);
    s_proof_line(line, sizeof line, "\"n\"", "\"a\"", "\"ed25519_public_key\"", "\"ed25519:AAAA\"", "\"p\"");
    s_refused(line, key_why);
    /* The identity point (small order) is a key in form only. */
    s_proof_line(line, sizeof line, "\"n\"", "\"a\"", "\"ed25519_public_key\"",
                 "\"ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"", "\"p\"");
    s_refused(line, key_why);
    s_proof_line(line, sizeof line, "\"n\"", "\"a\"", "\"ed25519_public_key\"", qkey, "[]");
    s_refused(line, proof_why);
    s_proof_line(line, sizeof line, "\"n\"", "\"a\"", "\"ed25519_public_key\"", qkey,
                 "\"0123456789012345678901234567890123456789012345678901234567890123456789\"");
    s_refused(line, proof_why);

    /* A \u0000 would cut the string short unseen: the whole line is
     * refused, while an escaped backslash before "u0000" is just text. */
    s_proof_line(line, sizeof line, "\"n\"", "\"tcp://10.0.0.2:4200\\u0000evil\"", "\"ed25519_public_key\"", qkey,
                 "\"p\"");
    s_refused(line, "a NUL character (\\u0000) in a string");
    s_refused("{\"kind\":\"meerkat_pairing_hello\",\"version\":1,\"x\":\"\\u0000\"}",
              "a NUL character (\\u0000) in a string");
    s_proof_line(line, sizeof line, "\"n\\\\u0000\"", "\"a\"", "\"ed25519_public_key\"", qkey, "\"p\"");
    assert_int_equal(router_pairing_msg_parse(line, strlen(line), &m, why, sizeof why), 0);
    assert_string_equal(m.name, "n\\u0000");

    /* Its one allocation failing is ours, not the line's: ENOMEM. */
    alloc_fail_arm(0);
    s_expect_refused(hello, strlen(hello), "out of memory", ENOMEM);
    assert_int_equal(alloc_fail_disarm(), 1);
}

/* The proof Meerkat computes, golden (Python's hashlib and base64 on the
 * same strings). */
static void test_proof_vector(void **state)
{
    (void) state;
    char out[ROUTER_PAIRING_PROOF_CAP];
    router_pairing_proof(S_PASSWORD, "6f1c1a5e-2b4d-4c8e-9f00-0123456789ab", "ed25519:AAAA", "tcp://127.0.0.1:4200",
                         out);
    assert_string_equal(out, "eJOuxIluJXUtfDIkhHJ7hRsBNwFS3XkvyuE3bYdlYrg=");
}

/* ================================================================ the handshake */

/* What the far end of the one connection under test read. */
typedef struct {
    char out[64 * 1024];
    size_t len;
    bool ended;                     /* the connection went down */
    router_close_reason_t reason;   /* how */
} s_far_t;

static s_far_t s_far;
static router_conn_t *s_cur; /* the connection under test */

/* The far end's FIN after kith's orderly close, which lets it finish. */
static void s_far_eof(router_loop_t *loop)
{
    (void) router_mem_run(loop, 0);
    router_mem_conn_eof(s_cur);
    (void) router_mem_run(loop, 0);
}

static void s_on_output(router_conn_t *conn, const uint8_t *data, size_t len, void *ud)
{
    (void) conn;
    (void) ud;
    assert_true(s_far.len + len < sizeof s_far.out);
    memcpy(s_far.out + s_far.len, data, len);
    s_far.len += len;
    s_far.out[s_far.len] = '\0';
}

static void s_on_end(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    (void) conn;
    (void) ud;
    s_far.ended = true;
    s_far.reason = reason;
}

/* The connection's owner, as comms.c is. */
typedef struct {
    router_pairing_conn_t *pc;
} s_slot_t;

static void s_on_data(router_conn_t *conn, uint8_t *data, size_t len, void *ud)
{
    (void) conn;
    s_slot_t *slot = ud;
    if (slot->pc)
        router_pairing_conn_data(slot->pc, data, len);
}

static void s_on_close(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    (void) conn;
    (void) reason;
    s_slot_t *slot = ud;
    router_pairing_conn_free(&slot->pc);
}

static const router_conn_handlers_t s_handlers = {.on_data = s_on_data, .on_close = s_on_close};

typedef struct {
    router_loop_t *loop;
    router_identity_t id;
    router_tokens_t *tokens;
    router_pairing_t *p;
    char home[64];
    unsigned paired_calls;
} s_fix_t;

static void s_on_paired(void *ud)
{
    ((s_fix_t *) ud)->paired_calls++;
}

static int s_setup(void **state)
{
    s_fix_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->home, sizeof f->home, "/tmp/kith-pairing-test-XXXXXX");
    assert_non_null(mkdtemp(f->home));
    f->loop = router_loop_new(&(router_loop_opts_t){.backend = ROUTER_LOOP_MEMORY, .post_capacity = 64});
    assert_non_null(f->loop);
    static const router_mem_peer_t peer = {.on_output = s_on_output, .on_end = s_on_end};
    assert_int_equal(router_mem_peer_set(f->loop, &peer, NULL, 0), 0);
    crypto_sign_keypair(f->id.pk, f->id.sk);
    char err[256];
    f->tokens = router_tokens_new(NULL, f->loop, err, sizeof err);
    assert_non_null(f->tokens);
    f->p = router_pairing_new(&(router_pairing_opts_t){.loop = f->loop, .identity = &f->id, .password = S_PASSWORD,
                                                       .name = "kith-test", .address = "tcp://127.0.0.1:4200",
                                                       .home = f->home, .on_paired = s_on_paired, .ud = f});
    assert_non_null(f->p);
    router_pairing_set_lockouts(f->p, f->tokens);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    s_fix_t *f = *state;
    router_pairing_quiesce(f->p);
    (void) router_mem_run(f->loop, 0);
    router_tokens_stop(f->tokens);
    router_loop_destroy(&f->loop);
    router_tokens_destroy(&f->tokens);
    router_pairing_destroy(&f->p);
    router_pairing_destroy(&f->p); /* idempotent */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->home);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* A new handshake connection; NULL when pairing refuses to start one. */
static router_conn_t *s_open(s_fix_t *f, s_slot_t *slot)
{
    memset(&s_far, 0, sizeof s_far);
    router_conn_t *conn = router_mem_conn_new(f->loop);
    assert_non_null(conn);
    s_cur = conn;
    slot->pc = NULL;
    router_conn_set_handlers(conn, &s_handlers, slot);
    slot->pc = router_pairing_conn_new(f->p, conn);
    if (!slot->pc) {
        router_conn_abort(conn);
        (void) router_mem_run(f->loop, 0);
        return NULL;
    }
    (void) router_mem_run(f->loop, 0);
    return conn;
}

static void s_send(s_fix_t *f, router_conn_t *conn, const char *text)
{
    size_t len = strlen(text);
    assert_int_equal(router_mem_conn_feed(conn, (const uint8_t *) text, len), len);
    (void) router_mem_run(f->loop, 0);
}

/* Runs the loop until the far end has `lines` lines, the file thread's
 * answer included (a bound on the rounds, not on time: it only stops a
 * hang). */
static void s_wait_lines(s_fix_t *f, unsigned lines)
{
    for (int i = 0; i < 20000; i++) {
        unsigned n = 0;
        for (const char *p = s_far.out; (p = strchr(p, '\n')); p++)
            n++;
        if (n >= lines)
            return;
        (void) router_mem_run(f->loop, 0);
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    fail_msg("no answer; the far end read: %s", s_far.out);
}

/* The error line's code and message, and the orderly close after it. */
static void s_expect_error(s_fix_t *f, const char *code, const char *error)
{
    s_wait_lines(f, 1);
    const char *last = s_far.out, *p;
    while ((p = strchr(last, '\n')) && p[1])
        last = p + 1;
    char want[512];
    snprintf(want, sizeof want, "{\"kind\":\"meerkat_pairing_error\",\"version\":1,\"code\":\"%s\",\"error\":\"%s\"}\n",
             code, error);
    if (strcmp(last, want) != 0)
        fail_msg("got %s want %s", last, want);
    s_far_eof(f->loop);
    assert_true(s_far.ended);
    assert_int_equal(s_far.reason, ROUTER_CLOSE_LOCAL);
}

/* Sends the hello and returns the challenge from kith's answer. */
static void s_hello(s_fix_t *f, router_conn_t *conn, char challenge[64])
{
    s_send(f, conn, "{\"kind\":\"meerkat_pairing_hello\",\"version\":1}\n");
    s_wait_lines(f, 1);
    char err[128];
    yajl_val doc = yajl_tree_parse(s_far.out, err, sizeof err);
    assert_non_null(doc);
    const char *pk[] = {"kind", NULL}, *pc[] = {"challenge", NULL}, *pn[] = {"target", "name", NULL},
               *pa[] = {"target", "address", NULL}, *pik[] = {"target", "identity", "kind", NULL},
               *pkey[] = {"target", "identity", "public_key", NULL};
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(doc, pk, yajl_t_string)), "meerkat_pairing_challenge");
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(doc, pn, yajl_t_string)), "kith-test");
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(doc, pa, yajl_t_string)), "tcp://127.0.0.1:4200");
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(doc, pik, yajl_t_string)), "ed25519_public_key");
    char ours[PROTO_PUBKEY_TEXT_CAP];
    assert_int_equal(proto_pubkey_format(f->id.pk, ours, sizeof ours), 0);
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(doc, pkey, yajl_t_string)), ours);
    const char *c = YAJL_GET_STRING(yajl_tree_get(doc, pc, yajl_t_string));
    assert_int_equal(strlen(c), 36);
    assert_int_equal(c[14], '4'); /* a UUIDv4 */
    snprintf(challenge, 64, "%s", c);
    yajl_tree_free(doc);
    s_far.len = 0;
    s_far.out[0] = '\0';
}

/* The proof line for our caller key, right (password) or wrong. */
static void s_proof(char *out, size_t cap, const char *password, const char *challenge, const char *addr)
{
    char proof[ROUTER_PAIRING_PROOF_CAP], q[400], qkey[128];
    router_pairing_proof(password, challenge, s_key_text, addr, proof);
    snprintf(q, sizeof q, "\"%s\"", addr);
    snprintf(qkey, sizeof qkey, "\"%s\"", s_key_text);
    char qproof[64];
    snprintf(qproof, sizeof qproof, "\"%s\"", proof);
    s_proof_line(out, cap, "\"meerkat one\"", q, "\"ed25519_public_key\"", qkey, qproof);
}

static router_trust_t *s_trust(const s_fix_t *f)
{
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/" ROUTER_TRUST_FILE, f->home);
    router_trust_t *t = router_trust_load(path, err, sizeof err);
    if (!t)
        fail_msg("%s", err);
    return t;
}

/* A whole handshake: the complete line, the trust row (profile meerkat,
 * the name made valid, the labels) and one binding line; pairing again
 * with another address replaces the row. */
static void test_handshake(void **state)
{
    s_fix_t *f = *state;
    const char *addrs[2] = {"tcp://10.0.0.2:4200", "tcp://10.0.0.3:4300"};
    for (int round = 0; round < 2; round++) {
        s_slot_t slot;
        router_conn_t *conn = s_open(f, &slot);
        assert_non_null(conn);
        char challenge[64], line[1024];
        s_hello(f, conn, challenge);
        s_proof(line, sizeof line, S_PASSWORD, challenge, addrs[round]);
        s_send(f, conn, line);
        s_wait_lines(f, 1);
        char ours[PROTO_PUBKEY_TEXT_CAP], want[512];
        assert_int_equal(proto_pubkey_format(f->id.pk, ours, sizeof ours), 0);
        snprintf(want, sizeof want,
                 "{\"kind\":\"meerkat_pairing_complete\",\"version\":1,\"comms_name\":\"kith-test\",\"target\":{"
                 "\"name\":\"kith-test\",\"address\":\"tcp://127.0.0.1:4200\",\"identity\":{\"kind\":"
                 "\"ed25519_public_key\",\"public_key\":\"%s\"}}}\n",
                 ours);
        assert_string_equal(s_far.out, want);
        s_far_eof(f->loop);
        assert_true(s_far.ended);
        assert_int_equal(s_far.reason, ROUTER_CLOSE_LOCAL);
        assert_int_equal(f->paired_calls, (unsigned) round + 1);

        router_trust_t *t = s_trust(f);
        assert_int_equal(router_trust_count(t), 1);
        const router_peer_t *peer = router_trust_by_pubkey(t, s_key_pk);
        assert_non_null(peer);
        assert_string_equal(peer->name, "meerkat-one");
        assert_string_equal(peer->addr, addrs[round]);
        assert_int_equal(peer->profile, ROUTER_PEER_PROFILE_MEERKAT);
        assert_string_equal(peer->description, "paired over the Meerkat pairing handshake");
        assert_int_equal(peer->nlabels, 2);
        assert_string_equal(peer->labels[1].value, "meerkat one");
        router_trust_destroy(&t);
    }
    char path[128], buf[4096];
    snprintf(path, sizeof path, "%s/" ROUTER_PAIRING_BINDINGS_FILE, f->home);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    unsigned lines = 0;
    for (char *p = buf; (p = strchr(p, '\n')); p++)
        lines++;
    assert_int_equal(lines, 2);
    assert_non_null(strstr(buf, "\"meerkat_name\":\"meerkat one\""));
    assert_non_null(strstr(buf, "\"source\":\"local\""));
    router_pairing_stats_t st;
    router_pairing_stats(f->p, &st);
    assert_int_equal(st.paired, 2);
    assert_int_equal(st.refused, 0);
}

/* Every refusal code a caller can meet before the proof is checked. */
static void test_refusals(void **state)
{
    s_fix_t *f = *state;
    s_slot_t slot;
    char challenge[64], line[1024];

    router_conn_t *conn = s_open(f, &slot);
    s_send(f, conn, "{\"kind\":\"meerkat_pairing_hello\",\"version\":1\n");
    s_expect_error(f, "malformed", "not JSON");

    conn = s_open(f, &slot);
    s_send(f, conn, "{\"kind\":\"meerkat_pairing_hello\",\"version\":2}\n");
    s_expect_error(f, "unsupported_version", "kith speaks pairing version 1");

    conn = s_open(f, &slot);
    s_proof(line, sizeof line, S_PASSWORD, "c", "tcp://10.0.0.2:4200");
    s_send(f, conn, line);
    s_expect_error(f, "unexpected", "expected meerkat_pairing_hello");

    conn = s_open(f, &slot);
    s_hello(f, conn, challenge);
    s_send(f, conn, "{\"kind\":\"meerkat_pairing_hello\",\"version\":1}\n");
    s_expect_error(f, "unexpected", "expected meerkat_pairing_proof");

    /* A line past 16 KiB, in pieces, without its newline. */
    conn = s_open(f, &slot);
    char *big = malloc(ROUTER_PAIRING_LINE_MAX);
    assert_non_null(big);
    memset(big, ' ', ROUTER_PAIRING_LINE_MAX);
    big[0] = '{';
    assert_int_equal(router_mem_conn_feed(conn, (const uint8_t *) big, ROUTER_PAIRING_LINE_MAX - 1),
                     ROUTER_PAIRING_LINE_MAX - 1);
    (void) router_mem_run(f->loop, 0);
    assert_int_equal(s_far.len, 0);
    s_send(f, conn, "  ");
    free(big);
    s_expect_error(f, "too_long", "a pairing line is at most 16 KiB");

    /* The right password for an address kith cannot dial. */
    conn = s_open(f, &slot);
    s_hello(f, conn, challenge);
    s_proof(line, sizeof line, S_PASSWORD, challenge, "udp://10.0.0.2:1");
    s_send(f, conn, line);
    s_expect_error(f, "bad_address", "caller.address is not a peer address kith can dial");

    /* Bytes after a refusal are ignored; so is a whole second line. */
    conn = s_open(f, &slot);
    s_send(f, conn, "nope\n{\"kind\":\"meerkat_pairing_hello\",\"version\":1}\n");
    s_expect_error(f, "malformed", "not JSON");
    assert_null(strstr(s_far.out, "challenge"));

    router_pairing_stats_t st;
    router_pairing_stats(f->p, &st);
    assert_int_equal(st.refused, 7);
    assert_int_equal(st.wrong, 0);
    assert_int_equal(st.paired, 0);
}

/* Five wrong proofs from one source lock it out, counted in the token
 * store; a new connection from it is then answered locked_out. */
static void test_lockout(void **state)
{
    s_fix_t *f = *state;
    s_slot_t slot;
    char challenge[64], line[1024];
    for (int i = 0; i < ROUTER_PAIRING_FAILS_MAX; i++) {
        router_conn_t *conn = s_open(f, &slot);
        assert_non_null(conn);
        s_hello(f, conn, challenge);
        s_proof(line, sizeof line, "not the password, though long enough", challenge, "tcp://10.0.0.2:4200");
        s_send(f, conn, line);
        s_expect_error(f, "invalid_proof", "invalid pairing password proof");
    }
    router_conn_t *conn = s_open(f, &slot);
    assert_non_null(conn);
    s_expect_error(f, "locked_out", "too many wrong pairing passwords from this address; try again later");
    router_pairing_stats_t st;
    router_pairing_stats(f->p, &st);
    assert_int_equal(st.wrong, ROUTER_PAIRING_FAILS_MAX);
    assert_int_equal(st.refused, ROUTER_PAIRING_FAILS_MAX + 1);
    /* The trust file was never written. */
    char path[128];
    snprintf(path, sizeof path, "%s/" ROUTER_TRUST_FILE, f->home);
    assert_int_equal(access(path, F_OK), -1);
}

/* The lockout store stopped between a handshake's hello and its proof:
 * the proof is refused "internal" like a handshake begun then, not
 * counted in a store that is gone (a NULL dereference before). */
static void test_proof_after_the_store_stopped(void **state)
{
    s_fix_t *f = *state;
    s_slot_t slot;
    char challenge[64], line[1024];
    router_conn_t *conn = s_open(f, &slot);
    assert_non_null(conn);
    s_hello(f, conn, challenge);
    router_pairing_set_lockouts(f->p, NULL);
    s_proof(line, sizeof line, "not the password, though long enough", challenge, "tcp://10.0.0.2:4200");
    s_send(f, conn, line);
    s_expect_error(f, "internal", "pairing is not ready; try again later");
    router_pairing_set_lockouts(f->p, f->tokens);
    router_pairing_stats_t st;
    router_pairing_stats(f->p, &st);
    assert_int_equal(st.wrong, 0);
}

/* No lockout store yet (or any more): every handshake is refused
 * "internal", fail-closed. At most ROUTER_PAIRING_CONNS_MAX at once. */
static void test_not_ready_and_bounds(void **state)
{
    s_fix_t *f = *state;
    s_slot_t slot;
    router_pairing_set_lockouts(f->p, NULL);
    router_pairing_set_lockouts(NULL, NULL); /* harmless */
    router_conn_t *conn = s_open(f, &slot);
    assert_non_null(conn);
    s_expect_error(f, "internal", "pairing is not ready; try again later");
    router_pairing_set_lockouts(f->p, f->tokens);

    s_slot_t slots[ROUTER_PAIRING_CONNS_MAX];
    router_conn_t *conns[ROUTER_PAIRING_CONNS_MAX];
    for (int i = 0; i < ROUTER_PAIRING_CONNS_MAX; i++)
        assert_non_null(conns[i] = s_open(f, &slots[i]));
    assert_null(s_open(f, &slot)); /* one too many: the caller resets it */
    router_conn_abort(conns[0]);
    (void) router_mem_run(f->loop, 0);
    assert_null(slots[0].pc);
    router_pairing_conn_free(&slots[0].pc); /* idempotent */
    router_pairing_conn_free(NULL);
    /* Room for one again; kith's allocation for it failing: NULL too. */
    conns[0] = router_mem_conn_new(f->loop);
    assert_non_null(conns[0]);
    router_conn_set_handlers(conns[0], &s_handlers, &slots[0]);
    alloc_fail_arm(0);
    slots[0].pc = router_pairing_conn_new(f->p, conns[0]);
    assert_int_equal(alloc_fail_disarm(), 1);
    assert_null(slots[0].pc);
    slots[0].pc = router_pairing_conn_new(f->p, conns[0]);
    assert_non_null(slots[0].pc);
    for (int i = 0; i < ROUTER_PAIRING_CONNS_MAX; i++)
        router_conn_abort(conns[i]);
    (void) router_mem_run(f->loop, 0);
    for (int i = 0; i < ROUTER_PAIRING_CONNS_MAX; i++)
        assert_null(slots[i].pc);
}

/* Each allocation of a proof's handling failing in turn (the line's copy,
 * the file job, what the answer sends): the caller reads "internal" (never
 * a refusal blaming its line) or is paired, and nothing leaks. */
static void test_proof_alloc_fail(void **state)
{
    s_fix_t *f = *state;
    long i;
    unsigned internal = 0;
    for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        s_slot_t slot;
        char challenge[64], line[1024];
        router_conn_t *conn = s_open(f, &slot);
        assert_non_null(conn);
        s_hello(f, conn, challenge);
        s_proof(line, sizeof line, S_PASSWORD, challenge, "tcp://10.0.0.2:4200");
        alloc_fail_arm(i);
        assert_int_equal(router_mem_conn_feed(conn, (const uint8_t *) line, strlen(line)), strlen(line));
        unsigned failed = alloc_fail_disarm();
        (void) router_mem_run(f->loop, 0);
        if (strstr(s_far.out, "meerkat_pairing_error")) {
            assert_non_null(strstr(s_far.out, "\"code\":\"internal\""));
            internal++;
            s_far_eof(f->loop);
            assert_null(slot.pc);
            continue;
        }
        s_wait_lines(f, 1);
        assert_non_null(strstr(s_far.out, "meerkat_pairing_complete"));
        s_far_eof(f->loop);
        assert_null(slot.pc);
        if (!failed)
            break;
    }
    assert_true(i < ALLOC_FAIL_RUNS_MAX);
    assert_true(internal >= 2); /* the line's copy, the file job */
}

/* The caller goes away while the files are written: the write finishes
 * (the peer is trusted), its answer has nowhere to go. Then a home where
 * the trust file cannot be written: "internal". */
static void test_gone_and_unwritable(void **state)
{
    s_fix_t *f = *state;
    s_slot_t slot;
    char challenge[64], line[1024];
    router_conn_t *conn = s_open(f, &slot);
    s_hello(f, conn, challenge);
    s_proof(line, sizeof line, S_PASSWORD, challenge, "tcp://10.0.0.2:4200");
    assert_int_equal(router_mem_conn_feed(conn, (const uint8_t *) line, strlen(line)), strlen(line));
    router_conn_abort(conn); /* before the loop runs the write's answer */
    router_pairing_quiesce(f->p);
    (void) router_mem_run(f->loop, 0);
    assert_null(slot.pc);
    assert_int_equal(s_far.len, 0);
    router_trust_t *t = s_trust(f);
    assert_non_null(router_trust_by_pubkey(t, s_key_pk));
    router_trust_destroy(&t);
    router_pairing_stats_t st;
    router_pairing_stats(f->p, &st);
    assert_int_equal(st.paired, 1);

    /* A home that is a file: the trust edit fails. */
    char file_home[128];
    snprintf(file_home, sizeof file_home, "%s/not-a-dir", f->home);
    FILE *fp = fopen(file_home, "w");
    assert_non_null(fp);
    fclose(fp);
    router_pairing_t *p2 = router_pairing_new(&(router_pairing_opts_t){
        .loop = f->loop, .identity = &f->id, .password = S_PASSWORD, .home = file_home});
    assert_non_null(p2);
    router_pairing_set_lockouts(p2, f->tokens);
    memset(&s_far, 0, sizeof s_far);
    conn = s_cur = router_mem_conn_new(f->loop);
    router_conn_set_handlers(conn, &s_handlers, &slot);
    slot.pc = router_pairing_conn_new(p2, conn);
    assert_non_null(slot.pc);
    s_send(f, conn, "{\"kind\":\"meerkat_pairing_hello\",\"version\":1}\n");
    s_wait_lines(f, 1);
    assert_non_null(strstr(s_far.out, "\"name\":\"kith\",\"address\":\"\"")); /* the defaults */
    char err[128];
    yajl_val doc = yajl_tree_parse(s_far.out, err, sizeof err);
    const char *pc[] = {"challenge", NULL};
    snprintf(challenge, sizeof challenge, "%s", YAJL_GET_STRING(yajl_tree_get(doc, pc, yajl_t_string)));
    yajl_tree_free(doc);
    s_far.len = 0;
    s_far.out[0] = '\0';
    s_proof(line, sizeof line, S_PASSWORD, challenge, "tcp://10.0.0.2:4200");
    s_send(f, conn, line);
    s_expect_error(f, "internal", "the binding file could not be written"); /* written first */
    router_pairing_stats(p2, &st);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.paired, 0);
    router_pairing_quiesce(p2);
    (void) router_mem_run(f->loop, 0);
    router_pairing_destroy(&p2);
}

/* router_pairing_new: a missing or short password (Meerkat's 32 bytes) is
 * EINVAL; each of its allocations failing is ENOMEM with nothing leaked. */
static void test_new_refusals(void **state)
{
    (void) state;
    router_identity_t id;
    crypto_sign_keypair(id.pk, id.sk);
    router_pairing_opts_t o = {.identity = &id, .password = NULL};
    errno = 0;
    assert_null(router_pairing_new(&o));
    assert_int_equal(errno, EINVAL);
    o.password = "0123456789012345678901234567890"; /* 31 */
    errno = 0;
    assert_null(router_pairing_new(&o));
    assert_int_equal(errno, EINVAL);
    o.password = "01234567890123456789012345678901"; /* 32 */
    long i;
    for (i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        alloc_fail_arm(i);
        errno = 0;
        router_pairing_t *p = router_pairing_new(&o);
        unsigned failed = alloc_fail_disarm();
        if (!p) {
            assert_int_equal(errno, ENOMEM);
            continue;
        }
        router_pairing_destroy(&p);
        assert_null(p);
        if (!failed)
            break;
    }
    assert_int_equal(i, 5); /* the struct and four copies */
    router_pairing_destroy(NULL);
    router_pairing_quiesce(NULL);
}

/* The client's end of stream (comms.c hands it over as no bytes): before
 * the hello or the proof nothing more can come, so the handshake is refused
 * at once as a typed line and an orderly close; after a right proof the
 * answer of the file write still reaches the client, which may read after
 * it stopped sending. */
static void test_end_of_stream(void **state)
{
    s_fix_t *f = *state;
    s_slot_t slot;
    router_conn_t *conn = s_open(f, &slot);
    assert_non_null(conn);
    router_pairing_conn_data(slot.pc, NULL, 0);
    (void) router_mem_run(f->loop, 0);
    s_expect_error(f, "malformed", "the connection ended before meerkat_pairing_hello");

    conn = s_open(f, &slot);
    assert_non_null(conn);
    char challenge[64], line[1024];
    s_hello(f, conn, challenge);
    router_pairing_conn_data(slot.pc, NULL, 0);
    (void) router_mem_run(f->loop, 0);
    s_expect_error(f, "malformed", "the connection ended before meerkat_pairing_proof");

    conn = s_open(f, &slot);
    assert_non_null(conn);
    s_hello(f, conn, challenge);
    s_proof(line, sizeof line, S_PASSWORD, challenge, "tcp://10.0.0.2:4200");
    s_send(f, conn, line);
    router_pairing_conn_data(slot.pc, NULL, 0); /* the file write is in flight */
    s_wait_lines(f, 1);
    assert_non_null(strstr(s_far.out, "\"kind\":\"meerkat_pairing_complete\""));
    s_far_eof(f->loop);
    assert_true(s_far.ended);
    assert_int_equal(s_far.reason, ROUTER_CLOSE_LOCAL);
    assert_int_equal(f->paired_calls, 1);
}

static void s_noop_post(router_loop_t *loop, void *arg)
{
    (void) loop;
    (void) arg;
}

/* The loop's post queue is full when the file write comes back (a busy
 * loop): the writer keeps trying to hand its answer over instead of giving
 * up after 2 s (it did: the client never heard "complete" for a pairing
 * the files hold, and the job leaked). Once the queue drains, the answer
 * goes out. */
static void test_answer_waits_for_a_full_queue(void **state)
{
    s_fix_t *f = *state;
    s_slot_t slot;
    char challenge[64], line[1024], binding[160];
    router_conn_t *conn = s_open(f, &slot);
    assert_non_null(conn);
    s_hello(f, conn, challenge);
    unsigned queued = 0;
    while (router_loop_post(f->loop, s_noop_post, NULL) == 0)
        assert_true(++queued <= 4096);
    s_proof(line, sizeof line, S_PASSWORD, challenge, "tcp://10.0.0.2:4200");
    /* Fed without running the loop: the proof is read, the writer starts. */
    assert_int_equal(router_mem_conn_feed(conn, (const uint8_t *) line, strlen(line)), strlen(line));
    snprintf(binding, sizeof binding, "%s/" ROUTER_PAIRING_BINDINGS_FILE, f->home);
    for (int i = 0; i < 20000 && access(binding, F_OK) != 0; i++)
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    assert_int_equal(access(binding, F_OK), 0); /* written: the writer now posts */
    /* Past the writer's 2 s try with the queue still full. */
    nanosleep(&(struct timespec){.tv_sec = 2, .tv_nsec = 500000000}, NULL);
    s_wait_lines(f, 1);
    assert_non_null(strstr(s_far.out, "\"kind\":\"meerkat_pairing_complete\""));
    s_far_eof(f->loop);
    assert_true(s_far.ended);
    assert_int_equal(f->paired_calls, 1);
}

/* As above, but the pairing is stopping (quiesce) while the queue is still
 * full: the writer gives up, quiesce returns, and destroy frees its job
 * after the connection that named it is gone (LSan: nothing leaks). */
static void test_stopping_with_a_full_queue(void **state)
{
    s_fix_t *f = *state;
    /* The connection outlives this function (s_teardown ends it), and its
     * handlers write to the slot: not on this stack. */
    static s_slot_t slot;
    char challenge[64], line[1024], binding[160];
    router_conn_t *conn = s_open(f, &slot);
    assert_non_null(conn);
    s_hello(f, conn, challenge);
    unsigned queued = 0;
    while (router_loop_post(f->loop, s_noop_post, NULL) == 0)
        assert_true(++queued <= 4096);
    s_proof(line, sizeof line, S_PASSWORD, challenge, "tcp://10.0.0.2:4200");
    assert_int_equal(router_mem_conn_feed(conn, (const uint8_t *) line, strlen(line)), strlen(line));
    snprintf(binding, sizeof binding, "%s/" ROUTER_PAIRING_BINDINGS_FILE, f->home);
    for (int i = 0; i < 20000 && access(binding, F_OK) != 0; i++)
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    router_pairing_quiesce(f->p); /* returns once the writer gave up */
    assert_int_equal(f->paired_calls, 0);
    /* s_teardown: the loop goes (the connection with it), then destroy. */
}

/* The binding line cannot be written (its path is a directory): the
 * pairing is refused "internal" and leaves the trust file without the
 * caller, so the client's "not paired" is the truth on disk too (the trust
 * edit came first, and a refused pairing was trusted from the next reload
 * on while the running node did not know it). */
static void test_binding_unwritable_trusts_nobody(void **state)
{
    s_fix_t *f = *state;
    char path[160];
    snprintf(path, sizeof path, "%s/" ROUTER_PAIRING_BINDINGS_FILE, f->home);
    assert_int_equal(mkdir(path, 0700), 0);
    s_slot_t slot;
    char challenge[64], line[1024];
    router_conn_t *conn = s_open(f, &slot);
    assert_non_null(conn);
    s_hello(f, conn, challenge);
    s_proof(line, sizeof line, S_PASSWORD, challenge, "tcp://10.0.0.2:4200");
    s_send(f, conn, line);
    s_expect_error(f, "internal", "the binding file could not be written");
    assert_int_equal(f->paired_calls, 0);
    snprintf(path, sizeof path, "%s/" ROUTER_TRUST_FILE, f->home);
    if (access(path, F_OK) == 0) {
        router_trust_t *t = s_trust(f);
        assert_null(router_trust_by_pubkey(t, s_key_pk));
        router_trust_destroy(&t);
    }
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    crypto_sign_keypair(s_key_pk, s_key_sk);
    if (proto_pubkey_format(s_key_pk, s_key_text, sizeof s_key_text) != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_parse),
        cmocka_unit_test(test_proof_vector),
        cmocka_unit_test(test_new_refusals),
        cmocka_unit_test_setup_teardown(test_handshake, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_refusals, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_lockout, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_not_ready_and_bounds, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_proof_after_the_store_stopped, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_proof_alloc_fail, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_gone_and_unwritable, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_end_of_stream, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_answer_waits_for_a_full_queue, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_stopping_with_a_full_queue, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_binding_unwritable_trusts_nobody, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
