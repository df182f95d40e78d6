/* tests/trust_test.c — router/trust: fail-closed loading that names the bad
 * row (every class of bad row), duplicate PeerIds, duplicate names, lookups,
 * add/remove, atomic saves (and saves whose fsync or rename fails) and the
 * file-mode rule; router_trust_edit, the locked edit every writer uses
 * (refusals and failures leave the file untouched, concurrent editors all
 * land); and gateway/peer_row, the row POST /api/peers sends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "alloc_fail.h"
#include "gateway/peer_row.h"
#include "io_fail.h"
#include "proto/pubkey.h"
#include "proto/uuid.h"
#include "router/state/home.h"
#include "router/state/trust.h"

/* Key pair n (deterministic: seed bytes all n). */
static void s_key(uint8_t n, uint8_t pk[32])
{
    uint8_t seed[32], sk[64];
    memset(seed, n, sizeof seed);
    proto_ed25519_seed_keypair(seed, pk, sk);
}

/* "ed25519:…" of key pair n, in a static buffer per slot. */
static const char *s_pub(uint8_t n)
{
    static char text[8][PROTO_PUBKEY_TEXT_CAP];
    uint8_t pk[32];
    s_key(n, pk);
    char *out = text[n % 8];
    assert_int_equal(proto_pubkey_format(pk, out, PROTO_PUBKEY_TEXT_CAP), 0);
    return out;
}

static router_trust_t *s_parse(const char *text, char *err, size_t errcap)
{
    return router_trust_parse(text, strlen(text), err, errcap);
}

/* Asserts the document is refused with an error containing `want`. */
static void s_refused(const char *doc, const char *want)
{
    char err[ROUTER_TRUST_ERR_MAX] = "";
    router_trust_t *t = s_parse(doc, err, sizeof err);
    if (t) {
        router_trust_destroy(&t);
        fail_msg("accepted: %s", doc);
    }
    if (!strstr(err, want))
        fail_msg("for %s\n  error: %s\n  wanted: %s", doc, err, want);
}

/* ------------------------------------------------------------ loading */

static void test_good_document(void **state)
{
    (void) state;
    char doc[2048], err[ROUTER_TRUST_ERR_MAX];
    snprintf(doc, sizeof doc,
             "// peers this node trusts\n"
             "{\"peers\": [\n"
             "  {\"name\": \"alice\", \"pubkey\": \"%s\", \"addr\": \"tcp://127.0.0.1:4200\"},\n"
             "  /* bob listens on a socket */\n"
             "  {\"addr\": \"uds:///run/kith/bob.sock\", \"pubkey\": \"%s\", \"name\": \"bob\",\n"
             "   \"meta\": {\"description\": \"Bob's node\", \"labels\": {\"env\": \"prod\", \"zone\": \"\"}}},\n"
             "  {\"name\": \"carol\", \"pubkey\": \"%s\", \"addr\": \"tcp://[::1]:4201\", \"meta\": {}},\n"
             "  {\"name\": \"dave.v2_x-1\", \"pubkey\": \"%s\", \"addr\": \"inproc://dave\"}\n"
             "]}\n",
             s_pub(1), s_pub(2), s_pub(3), s_pub(4));
    router_trust_t *t = s_parse(doc, err, sizeof err);
    if (!t)
        fail_msg("%s", err);
    assert_int_equal(router_trust_count(t), 4);

    const router_peer_t *a = router_trust_at(t, 0), *b = router_trust_at(t, 1);
    assert_string_equal(a->name, "alice");
    assert_int_equal(a->dial.transport, ROUTER_PEER_TCP);
    assert_string_equal(a->dial.host, "127.0.0.1");
    assert_int_equal(a->dial.port, 4200);
    assert_null(a->description);
    assert_int_equal(a->nlabels, 0);

    assert_string_equal(b->name, "bob");
    assert_string_equal(b->addr, "uds:///run/kith/bob.sock");
    assert_int_equal(b->dial.transport, ROUTER_PEER_UDS);
    assert_string_equal(b->dial.path, "/run/kith/bob.sock");
    assert_string_equal(b->description, "Bob's node");
    assert_int_equal(b->nlabels, 2);
    assert_string_equal(b->labels[0].key, "env");
    assert_string_equal(b->labels[0].value, "prod");
    assert_string_equal(b->labels[1].key, "zone");
    assert_string_equal(b->labels[1].value, "");

    const router_peer_t *c = router_trust_at(t, 2), *d = router_trust_at(t, 3);
    assert_string_equal(c->dial.host, "::1");
    assert_int_equal(d->dial.transport, ROUTER_PEER_INPROC);
    assert_string_equal(d->dial.path, "dave");
    assert_null(router_trust_at(t, 4));

    /* The PeerId is UUIDv5 of the key. */
    uint8_t id[16];
    proto_peer_id(b->pk, id);
    assert_memory_equal(b->peer_id, id, 16);
    router_trust_destroy(&t);
    assert_null(t);
    router_trust_destroy(&t);
}

static void test_empty_forms(void **state)
{
    (void) state;
    char err[ROUTER_TRUST_ERR_MAX];
    static const char *const docs[] = {"{}", "{\"peers\": []}", " // nothing\n{ \"peers\" : [ ] }"};
    for (size_t i = 0; i < 3; i++) {
        router_trust_t *t = s_parse(docs[i], err, sizeof err);
        assert_non_null(t);
        assert_int_equal(router_trust_count(t), 0);
        router_trust_destroy(&t);
    }
}

/* One bad row after a good one: the error names the bad row by index and
 * name, wherever in the row the name appears. */
typedef struct {
    const char *row;  /* "@PK" stands for a valid pubkey */
    const char *want; /* expected in the error */
} s_bad_row_t;

static const s_bad_row_t s_bad_rows[] = {
    /* bad names */
    {"{\"name\": \"b b\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"b b\": name: expected 1..64 characters of [A-Za-z0-9._-], got \"b b\""},
    {"{\"name\": \"\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}", "peers[1] \"\": name: expected"},
    {"{\"name\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"pubkey\": "
     "\"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"aaaa"},
    {"{\"name\": \"caf\\u00e9\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"caf\\xc3\\xa9\": name: expected"},
    {"{\"name\": 7, \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1]: name: expected a string, got 7"},
    {"{\"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}", "peers[1]: name: missing"},
    /* bad addresses */
    {"{\"addr\": \"http://h:1\", \"pubkey\": \"@PK\", \"name\": \"web\"}",
     "peers[1] \"web\": addr: expected tcp://host:port, uds:///abs/path or inproc://name, got "
     "\"http://h:1\" (unknown scheme)"},
    {"{\"name\": \"t\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h\"}", "peers[1] \"t\": addr: expected"},
    {"{\"name\": \"t\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:0\"}", "port 0 cannot be dialled"},
    {"{\"name\": \"t\", \"pubkey\": \"@PK\", \"addr\": \"tcp://::1:80\"}", "needs brackets"},
    {"{\"name\": \"u\", \"pubkey\": \"@PK\", \"addr\": \"uds://rel.sock\"}",
     "peers[1] \"u\": addr: expected"},
    {"{\"name\": \"i\", \"pubkey\": \"@PK\", \"addr\": \"inproc://a b\"}",
     "peers[1] \"i\": addr: expected"},
    {"{\"name\": \"i\", \"pubkey\": \"@PK\", \"addr\": \"inproc://\"}", "peers[1] \"i\": addr:"},
    {"{\"name\": \"n\", \"pubkey\": \"@PK\"}", "peers[1] \"n\": addr: missing"},
    {"{\"name\": \"n\", \"pubkey\": \"@PK\", \"addr\": null}",
     "peers[1] \"n\": addr: expected a string, got null"},
    /* bad keys (the %s is unused by these) */
    {"{\"pubkey\": \"ed25519:AAAA\", \"name\": \"short\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"short\": pubkey: expected \"ed25519:\" and 44 characters"},
    {"{\"pubkey\": \"ssh-ed25519 AAAA\", \"name\": \"ssh\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"ssh\": pubkey: expected \"ed25519:<base64>\""},
    {"{\"name\": \"b64\", \"pubkey\": \"ed25519:!!!!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", "
     "\"addr\": \"tcp://h:1\"}",
     "peers[1] \"b64\": pubkey: expected \"ed25519:\" and 44"},
    {"{\"name\": \"small\", \"pubkey\": \"ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", "
     "\"addr\": \"tcp://h:1\"}",
     "peers[1] \"small\": pubkey: not a full-order Ed25519 public key"},
    {"{\"name\": \"k\", \"pubkey\": 12, \"addr\": \"tcp://h:1\"}",
     "peers[1] \"k\": pubkey: expected a string, got 12"},
    /* structure */
    {"{\"name\": \"x\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\", \"port\": 1}",
     "peers[1] \"x\": \"port\": unknown key (known: name, pubkey, addr, profile, meta)"},
    {"{\"name\": \"x\", \"name\": \"y\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"x\": name: duplicate key"},
    {"{\"meta\": {\"owner\": \"z\"}, \"name\": \"m\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta.\"owner\": unknown key (known: description, labels)"},
    {"{\"meta\": [], \"name\": \"m\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta: expected an object, got an array"},
    {"{\"meta\": {\"description\": 5}, \"name\": \"m\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta.description: expected a string, got 5"},
    {"{\"meta\": {\"description\": \"two\\nlines\"}, \"name\": \"m\", \"pubkey\": \"@PK\", "
     "\"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta.description: expected one line"},
    {"{\"meta\": {\"labels\": {\"a\": 1}}, \"name\": \"m\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta.labels.\"a\": expected a string, got 1"},
    {"{\"meta\": {\"labels\": {\"a\": \"1\", \"a\": \"2\"}}, \"name\": \"m\", \"pubkey\": \"@PK\", "
     "\"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta.labels: key \"a\" appears twice"},
    {"{\"meta\": {\"labels\": []}, \"name\": \"m\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta.labels: expected an object of strings, got an array"},
    {"{\"meta\": {\"labels\": {\"\": \"v\"}}, \"name\": \"m\", \"pubkey\": \"@PK\", \"addr\": \"tcp://h:1\"}",
     "peers[1] \"m\": meta.labels: a key is empty"},
    /* a bad value nested deep, the name after it */
    {"{\"addr\": {\"a\": [[[{\"b\": [1, 2, {}]}]]], \"name\": [\"no\"]}, \"name\": \"deep\", "
     "\"pubkey\": \"@PK\"}",
     "peers[1] \"deep\": addr: expected a string, got an object"},
};

/* Copies tmpl into out with its "@PK" (at most one) replaced by pub. */
static void s_with_key(const char *tmpl, const char *pub, char *out, size_t cap)
{
    const char *at = strstr(tmpl, "@PK");
    if (!at) {
        snprintf(out, cap, "%s", tmpl);
        return;
    }
    snprintf(out, cap, "%.*s%s%s", (int) (at - tmpl), tmpl, pub, at + 3);
}

static void test_each_bad_row_is_named(void **state)
{
    (void) state;
    for (size_t i = 0; i < sizeof s_bad_rows / sizeof s_bad_rows[0]; i++) {
        char row[512], doc[1024];
        s_with_key(s_bad_rows[i].row, s_pub(2), row, sizeof row);
        snprintf(doc, sizeof doc,
                 "{\"peers\": [{\"name\": \"good\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:1\"},\n"
                 "  %s]}",
                 s_pub(1), row);
        s_refused(doc, s_bad_rows[i].want);
        /* The same row alone is refused as peers[0]. */
        snprintf(doc, sizeof doc, "{\"peers\": [%s]}", row);
        s_refused(doc, "peers[0]");
    }
}

static void test_mixed_order_key_refused(void **state)
{
    (void) state;
    /* A main-subgroup key plus a point of order 8: on the curve, canonical,
     * and refused by the full-order policy. */
    static const uint8_t torsion8[32] = {
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
        0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
    };
    assert_true(sodium_init() >= 0);
    uint8_t pk[32], mixed[32];
    s_key(5, pk);
    assert_int_equal(crypto_core_ed25519_add(mixed, pk, torsion8), 0);
    char text[PROTO_PUBKEY_TEXT_CAP], doc[512];
    assert_int_equal(proto_pubkey_format(mixed, text, sizeof text), 0);
    snprintf(doc, sizeof doc,
             "{\"peers\": [{\"name\": \"mixed\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:1\"}]}",
             text);
    s_refused(doc, "peers[0] \"mixed\": pubkey: not a full-order Ed25519 public key");
    /* router_trust_add refuses it too. */
    router_trust_t *t = router_trust_new();
    char err[ROUTER_TRUST_ERR_MAX];
    assert_int_equal(router_trust_add(t, "mixed", mixed, "tcp://h:1", NULL, NULL, 0, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "pubkey: not a full-order"));
    router_trust_destroy(&t);
}

static void test_duplicate_peer_id_refused(void **state)
{
    (void) state;
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"peers\": [\n"
             "  {\"name\": \"a\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:1\"},\n"
             "  {\"name\": \"b\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:2\"},\n"
             "  {\"name\": \"c\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:3\"}]}",
             s_pub(1), s_pub(2), s_pub(1));
    uint8_t pk[32], id[16];
    char uuid[PROTO_UUID_TEXT_CAP], want[256];
    s_key(1, pk);
    proto_peer_id(pk, id);
    proto_uuid_format(id, uuid);
    snprintf(want, sizeof want,
             "peers[2] \"c\": pubkey: PeerId %s is already trusted as peers[0] \"a\" (line 4", uuid);
    s_refused(doc, want);
}

static void test_duplicate_names_allowed(void **state)
{
    (void) state;
    char doc[4096], err[ROUTER_TRUST_ERR_MAX];
    snprintf(doc, sizeof doc,
             "{\"peers\": [{\"name\": \"bob\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:1\"},\n"
             "            {\"name\": \"bob\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:2\"},\n"
             "            {\"name\": \"eve\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:3\"}]}",
             s_pub(1), s_pub(2), s_pub(3));
    router_trust_t *t = s_parse(doc, err, sizeof err);
    assert_non_null(t);
    size_t matches = 0;
    const router_peer_t *p = router_trust_by_name(t, "bob", &matches);
    assert_int_equal(matches, 2);
    assert_ptr_equal(p, router_trust_at(t, 0));
    assert_null(router_trust_by_name(t, "nobody", &matches));
    assert_int_equal(matches, 0);
    router_trust_destroy(&t);
}

/* "profile" picks the wire profile (default kith), is written back only
 * when it is meerkat, and anything else names the row. */
static void test_profile(void **state)
{
    (void) state;
    char doc[4096], err[ROUTER_TRUST_ERR_MAX];
    snprintf(doc, sizeof doc,
             "{\"peers\": [{\"name\": \"m\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:1\","
             " \"profile\": \"meerkat\"},\n"
             "            {\"name\": \"k\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:2\"}]}",
             s_pub(1), s_pub(2));
    router_trust_t *t = s_parse(doc, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_trust_at(t, 0)->profile, ROUTER_PEER_PROFILE_MEERKAT);
    assert_int_equal(router_trust_at(t, 1)->profile, ROUTER_PEER_PROFILE_KITH);
    char *json = router_trust_to_json(t, false);
    assert_non_null(strstr(json, "\"profile\": \"meerkat\""));
    assert_null(strstr(json, "\"kith\""));
    router_trust_t *u = s_parse(json, err, sizeof err);
    assert_non_null(u);
    router_trust_diff_t d;
    router_trust_diff(t, u, &d);
    assert_int_equal(d.changed, 0);
    assert_int_equal(router_trust_set_profile(u, router_trust_at(u, 1), ROUTER_PEER_PROFILE_MEERKAT), 0);
    router_trust_diff(t, u, &d);
    assert_int_equal(d.changed, 1);
    assert_non_null(strstr(d.text, "(profile)"));
    free(json);
    router_trust_destroy(&t);
    router_trust_destroy(&u);
    snprintf(doc, sizeof doc,
             "{\"peers\": [{\"name\": \"m\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:1\","
             " \"profile\": \"zmq\"}]}", s_pub(1));
    assert_null(s_parse(doc, err, sizeof err));
    assert_non_null(strstr(err, "peers[0] \"m\": profile: expected \"kith\" or \"meerkat\""));
    char name[ROUTER_PEER_NAME_MAX + 1];
    uint8_t id[16] = {0xab, 0xcd, 0xef, 0x01};
    router_peer_name_sanitize("Ada Lovelace (ops)", id, name);
    assert_string_equal(name, "Ada-Lovelace--ops-");
    router_peer_name_sanitize("", id, name);
    assert_string_equal(name, "meerkat-abcdef01");
}

static void test_document_shape(void **state)
{
    (void) state;
    s_refused("[]", "the document: expected an object, got an array");
    s_refused("{\"peers\": {}}", "peers: expected an array, got an object");
    s_refused("{\"peers\": null}", "peers: expected an array, got null");
    s_refused("{\"peer\": []}", "\"peer\": unknown key (a trust store holds only \"peers\")");
    s_refused("{\"peers\": [], \"peers\": []}", "peers: duplicate key");
    s_refused("{\"peers\": [1]}", "peers[0]: expected an object, got 1");
    s_refused("{\"peers\": [[]]}", "peers[0]: expected an object, got an array");
    s_refused("{\"peers\": [", "syntax error: ");
    s_refused("{\"peers\": []} x", "syntax error: ");
    s_refused("", "syntax error: ");
}

static void test_nesting_bounded_inside_a_bad_row(void **state)
{
    (void) state;
    size_t depth = 100000;
    char *doc = malloc(depth + 64);
    assert_non_null(doc);
    strcpy(doc, "{\"peers\": [{\"name\": \"n\", \"meta\": [");
    size_t len = strlen(doc);
    memset(doc + len, '[', depth);
    doc[len + depth] = '\0';
    s_refused(doc, "peers[0] \"n\": meta: expected an object, got an array");
    free(doc);
}

static void test_size_bound(void **state)
{
    (void) state;
    char err[ROUTER_TRUST_ERR_MAX];
    size_t n = (size_t) ROUTER_TRUST_FILE_MAX + 1;
    char *doc = malloc(n);
    assert_non_null(doc);
    memset(doc, ' ', n);
    memcpy(doc, "{}", 2);
    router_trust_t *t = router_trust_parse(doc, n, err, sizeof err);
    assert_null(t);
    assert_non_null(strstr(err, "more than"));
    /* One byte less is read and accepted. */
    t = router_trust_parse(doc, n - 1, err, sizeof err);
    assert_non_null(t);
    router_trust_destroy(&t);
    free(doc);
}

/* ------------------------------------------------------------ editing */

static void test_add_remove_lookup(void **state)
{
    (void) state;
    router_trust_t *t = router_trust_new();
    assert_non_null(t);
    char err[ROUTER_TRUST_ERR_MAX];
    enum { N = 2000 };
    uint8_t pk[32];
    for (unsigned i = 0; i < N; i++) {
        uint8_t seed[32] = {0}, sk[64];
        memcpy(seed, &i, sizeof i);
        proto_ed25519_seed_keypair(seed, pk, sk);
        char name[32];
        snprintf(name, sizeof name, "p%u", i % 100);
        if (router_trust_add(t, name, pk, "tcp://127.0.0.1:4200", NULL, NULL, 0, err, sizeof err))
            fail_msg("%u: %s", i, err);
    }
    assert_int_equal(router_trust_count(t), N);
    /* Every key and PeerId is found, at its own row. */
    for (unsigned i = 0; i < N; i++) {
        const router_peer_t *p = router_trust_at(t, i);
        assert_ptr_equal(router_trust_by_pubkey(t, p->pk), p);
        assert_ptr_equal(router_trust_by_peer_id(t, p->peer_id), p);
    }
    /* Adding a key again is refused and changes nothing. */
    const router_peer_t *p7 = router_trust_at(t, 7);
    memcpy(pk, p7->pk, 32);
    assert_int_equal(router_trust_add(t, "again", pk, "tcp://h:1", NULL, NULL, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "is already trusted as peers[7] \"p7\""));
    assert_int_equal(router_trust_count(t), N);

    /* Remove every other row: order kept, removed keys gone, others found. */
    uint8_t removed[N / 2][32];
    for (unsigned i = 0; i < N / 2; i++) {
        const router_peer_t *p = router_trust_at(t, i);
        memcpy(removed[i], p->pk, 32);
        assert_int_equal(router_trust_remove(t, p), 0);
    }
    assert_int_equal(router_trust_count(t), N / 2);
    for (unsigned i = 0; i < N / 2; i++)
        assert_null(router_trust_by_pubkey(t, removed[i]));
    for (size_t i = 0; i < router_trust_count(t); i++) {
        const router_peer_t *p = router_trust_at(t, i);
        assert_ptr_equal(router_trust_by_pubkey(t, p->pk), p);
        assert_ptr_equal(router_trust_by_peer_id(t, p->peer_id), p);
    }
    assert_int_equal(router_trust_remove(t, (const router_peer_t *) removed), -1);
    router_trust_destroy(&t);
}

static void test_add_checks_like_load(void **state)
{
    (void) state;
    router_trust_t *t = router_trust_new();
    char err[ROUTER_TRUST_ERR_MAX];
    uint8_t pk[32];
    s_key(9, pk);
    router_label_t dup[] = {{"a", "1"}, {"a", "2"}};
    assert_int_equal(router_trust_add(t, "x", pk, "tcp://h:1", NULL, dup, 2, err, sizeof err), -1);
    assert_string_equal(err, "meta.labels: key \"a\" appears twice");
    router_label_t ctl[] = {{"a", "\x1b[31m"}};
    assert_int_equal(router_trust_add(t, "x", pk, "tcp://h:1", NULL, ctl, 1, err, sizeof err), -1);
    assert_int_equal(router_trust_add(t, "x", pk, "tcp://h:1", "bell\a", NULL, 0, err, sizeof err), -1);
    /* Not UTF-8: a lone continuation byte, an overlong '/', a surrogate. */
    static const char *const not_utf8[] = {"caf\xa9", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(router_trust_add(t, "x", pk, "tcp://h:1", not_utf8[i], NULL, 0, err, sizeof err),
                         -1);
        assert_non_null(strstr(err, "UTF-8"));
        router_label_t bad_value[] = {{"k", not_utf8[i]}};
        assert_int_equal(router_trust_add(t, "x", pk, "tcp://h:1", NULL, bad_value, 1, err, sizeof err),
                         -1);
    }
    assert_int_equal(router_trust_add(t, "x", pk, "uds:///tmp/\xff.sock", NULL, NULL, 0, err, sizeof err),
                     -1);
    assert_int_equal(router_trust_add(t, "x y", pk, "tcp://h:1", NULL, NULL, 0, err, sizeof err), -1);
    assert_int_equal(router_trust_add(t, "x", pk, "tcp://h", NULL, NULL, 0, err, sizeof err), -1);
    assert_int_equal(router_trust_count(t), 0);
    router_label_t ok[] = {{"team", "ops"}};
    assert_int_equal(router_trust_add(t, "x", pk, "tcp://h:1", "d", ok, 1, err, sizeof err), 0);
    assert_int_equal(router_trust_count(t), 1);
    router_trust_destroy(&t);
}

static void test_addr_parse(void **state)
{
    (void) state;
    router_peer_addr_t a;
    char why[128];
    assert_int_equal(router_peer_addr_parse("tcp://[2001:db8::1]:443", &a, why, sizeof why), 0);
    assert_int_equal(a.transport, ROUTER_PEER_TCP);
    assert_string_equal(a.host, "2001:db8::1");
    assert_int_equal(a.port, 443);
    assert_int_equal(router_peer_addr_parse("tcp://node.example.com:4200", &a, why, sizeof why), 0);
    assert_int_equal(router_peer_addr_parse("uds:///tmp/a.sock", &a, why, sizeof why), 0);
    assert_string_equal(a.path, "/tmp/a.sock");
    assert_int_equal(router_peer_addr_parse("inproc://node-1", &a, why, sizeof why), 0);
    assert_int_equal(a.transport, ROUTER_PEER_INPROC);
    assert_string_equal(a.path, "node-1");
    static const char *const bad[] = {"", "tcp://", "tcp://h:", "tcp://h:65536", "TCP://h:1",
                                      "uds://", "uds:///", "uds:///dir/", "inproc://x/y",
                                      "tcp://h:1/path", "udp://h:1", "tcp://h\n:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (router_peer_addr_parse(bad[i], &a, why, sizeof why) == 0)
            fail_msg("accepted %s", bad[i]);
    char longpath[200] = "uds:///";
    memset(longpath + 7, 'p', 120);
    longpath[127] = '\0';
    assert_int_equal(router_peer_addr_parse(longpath, &a, why, sizeof why), -1);
}

/* ------------------------------------------------------------ files */

typedef struct {
    char dir[64];
    char path[128];
} s_files_t;

static int s_setup(void **state)
{
    s_files_t *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/kith-trust-test-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/trusted_peers.json", f->dir);
    *state = f;
    return 0;
}

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void) st;
    (void) flag;
    (void) ftw;
    return remove(path);
}

static int s_teardown(void **state)
{
    s_files_t *f = *state;
    nftw(f->dir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void test_missing_file_is_empty(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_trust_load(f->path, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_trust_count(t), 0);
    router_trust_destroy(&t);
}

static void test_save_load_round_trip(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_trust_new();
    uint8_t pk[32];
    router_label_t labels[] = {{"env", "prod"}, {"quote", "say \"hi\" \\ /"}};
    s_key(1, pk);
    assert_int_equal(router_trust_add(t, "a", pk, "tcp://[::1]:1", "Ünïcode ✓", labels, 2, err,
                                      sizeof err),
                     0);
    s_key(2, pk);
    assert_int_equal(router_trust_add(t, "a", pk, "inproc://a", NULL, NULL, 0, err, sizeof err), 0);
    assert_int_equal(router_trust_save(t, f->path, err, sizeof err), 0);

    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);

    router_trust_t *u = router_trust_load(f->path, err, sizeof err);
    if (!u)
        fail_msg("%s", err);
    char *a = router_trust_to_json(t, true), *b = router_trust_to_json(u, true);
    assert_string_equal(a, b);
    assert_string_equal(router_trust_at(u, 0)->labels[1].value, "say \"hi\" \\ /");
    assert_string_equal(router_trust_at(u, 0)->description, "Ünïcode ✓");
    free(a);
    free(b);
    router_trust_destroy(&t);
    router_trust_destroy(&u);
}

static void test_save_is_atomic_replace(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_trust_new();
    uint8_t pk[32];
    s_key(1, pk);
    assert_int_equal(router_trust_add(t, "old", pk, "tcp://h:1", NULL, NULL, 0, err, sizeof err), 0);
    assert_int_equal(router_trust_save(t, f->path, err, sizeof err), 0);

    /* A reader that opened the old file keeps seeing all of it: the save
     * renames a new file into place instead of rewriting this one. */
    int old_fd = open(f->path, O_RDONLY);
    assert_true(old_fd >= 0);
    struct stat before, after;
    assert_int_equal(fstat(old_fd, &before), 0);

    s_key(2, pk);
    assert_int_equal(router_trust_add(t, "new", pk, "tcp://h:2", NULL, NULL, 0, err, sizeof err), 0);
    assert_int_equal(router_trust_save(t, f->path, err, sizeof err), 0);
    assert_int_equal(stat(f->path, &after), 0);
    assert_true(before.st_ino != after.st_ino);

    char buf[4096];
    ssize_t n = pread(old_fd, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    close(old_fd);
    assert_non_null(strstr(buf, "\"old\""));
    assert_null(strstr(buf, "\"new\""));
    router_trust_t *u = router_trust_parse(buf, (size_t) n, err, sizeof err);
    assert_non_null(u);
    assert_int_equal(router_trust_count(u), 1);
    router_trust_destroy(&u);

    /* Only the store is in the directory: no temp file left behind. */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", f->dir);
    assert_int_equal(system(cmd), 0);

    /* A failed save (no such directory) leaves nothing behind either. */
    char missing[192];
    snprintf(missing, sizeof missing, "%s/nodir/trusted_peers.json", f->dir);
    assert_int_equal(router_trust_save(t, missing, err, sizeof err), -1);
    assert_non_null(strstr(err, "nodir"));
    router_trust_destroy(&t);
}

/* The names in dir other than "." and "..". */
static unsigned s_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    unsigned n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* The whole of a small file, NUL-terminated; the caller frees it. */
static char *s_slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = calloc(1, 4096);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 4095, fp);
    assert_true(n < 4095);
    fclose(fp);
    return buf;
}

/* Saves the store "old", then a store with "new" added while `call` fails
 * (after `skip` good calls) with errno `e`. Returns the second save's error
 * and leaves the file's bytes before and after it in *before and *after. */
static void s_save_failing(const s_files_t *f, io_fail_call_t call, long skip, int e,
                           char err[ROUTER_TRUST_ERR_MAX], char **before, char **after)
{
    router_trust_t *t = router_trust_new();
    uint8_t pk[32];
    s_key(1, pk);
    assert_int_equal(router_trust_add(t, "old", pk, "tcp://h:1", NULL, NULL, 0, err,
                                      ROUTER_TRUST_ERR_MAX),
                     0);
    assert_int_equal(router_trust_save(t, f->path, err, ROUTER_TRUST_ERR_MAX), 0);
    *before = s_slurp(f->path);
    s_key(2, pk);
    assert_int_equal(router_trust_add(t, "new", pk, "tcp://h:2", NULL, NULL, 0, err,
                                      ROUTER_TRUST_ERR_MAX),
                     0);
    io_fail_arm(call, skip, e);
    int rc = router_trust_save(t, f->path, err, ROUTER_TRUST_ERR_MAX);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    *after = s_slurp(f->path);
    router_trust_destroy(&t);
}

/* A save whose `call` fails with e: it fails naming the file, `what` went
 * wrong and why, the old file keeps every byte, no temp file is left. */
static void s_expect_old_file_kept(s_files_t *f, io_fail_call_t call, int e, const char *what)
{
    char err[ROUTER_TRUST_ERR_MAX], *before, *after;
    s_save_failing(f, call, 0, e, err, &before, &after);
    assert_int_equal(strncmp(err, f->path, strlen(f->path)), 0);
    assert_non_null(strstr(err, what));
    assert_non_null(strstr(err, strerror(e)));
    assert_string_equal(after, before);
    assert_int_equal(s_entries(f->dir), 1);
    free(before);
    free(after);
}

/* The new file cannot be made durable (fsync fails). */
static void test_save_fsync_failure_keeps_old_file(void **state)
{
    s_expect_old_file_kept(*state, IO_FAIL_FSYNC, EIO, "cannot write");
}

/* The rename fails (a full disk, another file system): the same. */
static void test_save_rename_failure_keeps_old_file(void **state)
{
    s_expect_old_file_kept(*state, IO_FAIL_RENAME, EXDEV, "cannot replace");
}

/* The file is replaced but its directory cannot be synced (the second
 * fsync): the save still fails, saying the new file is in place, which it
 * is, whole; no temp file is left. */
static void test_save_dir_sync_failure_says_replaced(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX], *before, *after;
    s_save_failing(f, IO_FAIL_FSYNC, 1, EIO, err, &before, &after);
    assert_int_equal(strncmp(err, f->path, strlen(f->path)), 0);
    assert_non_null(strstr(err, "replaced, but syncing its directory failed"));
    assert_non_null(strstr(err, strerror(EIO)));
    assert_non_null(strstr(after, "\"new\""));
    router_trust_t *u = router_trust_parse(after, strlen(after), err, sizeof err);
    assert_non_null(u);
    assert_int_equal(router_trust_count(u), 2);
    router_trust_destroy(&u);
    assert_int_equal(s_entries(f->dir), 1);
    free(before);
    free(after);
}

static void test_group_writable_file_refused(void **state)
{
    s_files_t *f = *state;
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fputs("{\"peers\": []}", fp);
    fclose(fp);
    char err[ROUTER_TRUST_ERR_MAX];
    static const mode_t bad[] = {0620, 0602, 0666};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(chmod(f->path, bad[i]), 0);
        router_trust_t *t = router_trust_load(f->path, err, sizeof err);
        assert_null(t);
        assert_non_null(strstr(err, "chmod go-w"));
    }
    assert_int_equal(chmod(f->path, 0644), 0);
    router_trust_t *t = router_trust_load(f->path, err, sizeof err);
    assert_non_null(t);
    router_trust_destroy(&t);
}

static void test_load_error_names_file_and_row(void **state)
{
    s_files_t *f = *state;
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fprintf(fp, "{\"peers\": [\n {\"name\": \"ok\", \"pubkey\": \"%s\", \"addr\": \"tcp://h:1\"},\n"
                " {\"name\": \"bad\", \"pubkey\": \"%s\", \"addr\": \"ftp://h\"}\n]}\n",
            s_pub(1), s_pub(2));
    fclose(fp);
    chmod(f->path, 0600);
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_trust_load(f->path, err, sizeof err);
    assert_null(t);
    assert_int_equal(strncmp(err, f->path, strlen(f->path)), 0);
    assert_non_null(strstr(err, "peers[1] \"bad\": addr: "));
    assert_non_null(strstr(err, "(line 3,"));
}

/* ------------------------------------------------------------ issue 8: reload */

/* A FIFO named trusted_peers.json is refused at once (it used to block the
 * loader until something wrote to it), with the file named. */
static void test_fifo_refused(void **state)
{
    s_files_t *f = *state;
    assert_int_equal(mkfifo(f->path, 0600), 0);
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_trust_load(f->path, err, sizeof err);
    assert_null(t);
    assert_int_equal(strncmp(err, f->path, strlen(f->path)), 0);
    assert_non_null(strstr(err, "not a regular file (a FIFO)"));
}

static router_trust_t *s_store(const char *rows)
{
    char doc[4096], err[ROUTER_TRUST_ERR_MAX];
    snprintf(doc, sizeof doc, "{\"peers\": [%s]}", rows);
    router_trust_t *t = s_parse(doc, err, sizeof err);
    if (!t)
        fail_msg("%s: %s", doc, err);
    return t;
}

static void test_diff(void **state)
{
    (void) state;
    char a[2048], b[2048];
    snprintf(a, sizeof a,
             "{\"name\":\"bob\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:1\"},"
             "{\"name\":\"carol\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:2\"},"
             "{\"name\":\"dave\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:3\"}",
             s_pub(1), s_pub(2), s_pub(3));
    snprintf(b, sizeof b,
             "{\"name\":\"bob\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:1\"},"
             "{\"name\":\"dave\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:9\"},"
             "{\"name\":\"erin\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:4\"},"
             "{\"name\":\"frank\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:5\"}",
             s_pub(1), s_pub(3), s_pub(4), s_pub(5));
    router_trust_t *before = s_store(a), *after = s_store(b);
    router_trust_diff_t d;
    router_trust_diff(before, after, &d);
    assert_int_equal(d.added, 2);
    assert_int_equal(d.removed, 1);
    assert_int_equal(d.changed, 1);
    assert_string_equal(d.text, "added erin, frank; removed carol; changed dave (addr)");
    router_trust_diff(after, after, &d);
    assert_string_equal(d.text, "no change");
    assert_int_equal(d.added + d.removed + d.changed, 0);

    /* From nothing to many: the list is cut, and says how many it left out. */
    router_trust_t *empty = router_trust_new(), *many = router_trust_new();
    for (int i = 0; i < 200; i++) {
        uint8_t pk[32];
        s_key((uint8_t) (i + 10), pk);
        char name[32], err[ROUTER_TRUST_ERR_MAX];
        snprintf(name, sizeof name, "peer-with-a-long-name-%03d", i);
        assert_int_equal(router_trust_add(many, name, pk, "tcp://h:1", NULL, NULL, 0, err,
                                          sizeof err),
                         0);
    }
    router_trust_diff(empty, many, &d);
    assert_int_equal(d.added, 200);
    assert_non_null(strstr(d.text, "added peer-with-a-long-name-000, "));
    assert_non_null(strstr(d.text, " more"));
    assert_true(strlen(d.text) < sizeof d.text);
    router_trust_diff(many, empty, &d);
    assert_int_equal(d.removed, 200);
    router_trust_destroy(&empty);
    router_trust_destroy(&many);
    router_trust_destroy(&before);
    router_trust_destroy(&after);
}

/* ------------------------------------------------------------ locked edits */

/* What s_edit_add does: add peer `key` as `name`, or refuse with `refuse`. */
typedef struct {
    uint8_t key;
    const char *name;
    const char *refuse; /* non-NULL: return -1 with this error */
    unsigned calls;     /* how often the edit ran */
} s_edit_t;

static int s_edit_add(router_trust_t *t, void *ud, char *err, size_t errcap)
{
    s_edit_t *e = ud;
    e->calls++;
    if (e->refuse) {
        snprintf(err, errcap, "%s", e->refuse);
        return -1;
    }
    uint8_t pk[32];
    s_key(e->key, pk);
    return router_trust_add(t, e->name, pk, "tcp://h:1", NULL, NULL, 0, err, errcap);
}

/* Temp files that killed saves left go at a node's start; the file
 * itself, and names that only look alike, stay. */
static void test_sweep_temps(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX] = "", p[200];
    s_edit_t e = {.key = 1, .name = "one"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), 0);
    static const char *const litter[] = {"trusted_peers.json.tmp-Ab12Cd", "trusted_peers.json.tmp-x"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", f->dir, litter[i]);
        FILE *w = fopen(p, "w");
        assert_non_null(w);
        fputs("{\"peers\":[", w); /* cut short, as a kill leaves it */
        fclose(w);
    }
    snprintf(p, sizeof p, "%s/trusted_peers.jsonx.tmp-1", f->dir);
    FILE *w = fopen(p, "w");
    assert_non_null(w);
    fclose(w);
    assert_int_equal(router_trust_sweep_temps(f->dir), 2);
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", f->dir, litter[i]);
        assert_int_equal(access(p, F_OK), -1);
    }
    snprintf(p, sizeof p, "%s/trusted_peers.jsonx.tmp-1", f->dir);
    assert_int_equal(access(p, F_OK), 0);
    router_trust_t *t = router_trust_load(f->path, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_trust_count(t), 1);
    router_trust_destroy(&t);
    assert_int_equal(router_trust_sweep_temps(f->dir), 0);
    assert_int_equal(router_trust_sweep_temps("/nonexistent/kith-home"), 0);
}

/* An edit is saved; the lock file it takes is left, 0600, beside it. */
static void test_edit_saves(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX] = "", lock[160];
    s_edit_t e = {.key = 1, .name = "one"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), 0);
    e = (s_edit_t){.key = 2, .name = "two"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), 0);
    router_trust_t *t = router_trust_load(f->path, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_trust_count(t), 2);
    router_trust_destroy(&t);
    snprintf(lock, sizeof lock, "%s.lock", f->path);
    struct stat st;
    assert_int_equal(stat(lock, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

/* An edit that refuses, or a duplicate PeerId, leaves the file as it was:
 * the same bytes, the same inode (never rewritten). */
static void test_edit_refused_leaves_the_file(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX] = "";
    s_edit_t e = {.key = 1, .name = "one"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), 0);
    char *before = s_slurp(f->path);
    struct stat st0, st1;
    assert_int_equal(stat(f->path, &st0), 0);
    e = (s_edit_t){.key = 2, .name = "two", .refuse = "not today"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), -1);
    assert_string_equal(err, "not today");
    e = (s_edit_t){.key = 1, .name = "one-again"}; /* the same key: the same PeerId */
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), -1);
    assert_non_null(strstr(err, "PeerId"));
    e = (s_edit_t){.key = 3, .name = "bad name"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), -1);
    char *after = s_slurp(f->path);
    assert_string_equal(after, before);
    assert_int_equal(stat(f->path, &st1), 0);
    assert_int_equal(st1.st_ino, st0.st_ino);
    free(before);
    free(after);
}

/* A file that does not load is never edited (nor rewritten). */
static void test_edit_of_a_file_that_does_not_load(void **state)
{
    s_files_t *f = *state;
    static const char broken[] = "{\"peers\": [{\"name\": \"x\"";
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fputs(broken, fp);
    fclose(fp);
    assert_int_equal(chmod(f->path, 0600), 0);
    char err[ROUTER_TRUST_ERR_MAX] = "";
    s_edit_t e = {.key = 1, .name = "one"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), -1);
    assert_int_equal(e.calls, 0);
    assert_non_null(strstr(err, f->path));
    char *after = s_slurp(f->path);
    assert_string_equal(after, broken);
    free(after);
}

/* A save that fails (fsync: EIO) fails the edit; the old file stays whole. */
static void test_edit_save_failure_keeps_the_file(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX] = "";
    s_edit_t e = {.key = 1, .name = "one"};
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), 0);
    char *before = s_slurp(f->path);
    e = (s_edit_t){.key = 2, .name = "two"};
    io_fail_arm(IO_FAIL_FSYNC, 0, EIO);
    int rc = router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err);
    assert_int_equal(io_fail_disarm(), 1);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, strerror(EIO)));
    char *after = s_slurp(f->path);
    assert_string_equal(after, before);
    assert_int_equal(s_entries(f->dir), 2); /* the file and its lock: no temp file */
    free(before);
    free(after);
}

/* A home that cannot be made, a lock that cannot be opened, and a home
 * path past PATH_MAX: refused with words, and the edit never runs. */
static void test_edit_home_and_lock_failures(void **state)
{
    s_files_t *f = *state;
    char err[ROUTER_TRUST_ERR_MAX] = "", home[192], lock[192];
    s_edit_t e = {.key = 1, .name = "one"};
    snprintf(home, sizeof home, "%s/plain", f->dir);
    FILE *fp = fopen(home, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(home, sizeof home, "%s/plain/home", f->dir);
    assert_int_equal(router_trust_edit(home, s_edit_add, &e, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    snprintf(lock, sizeof lock, "%s.lock", f->path);
    assert_int_equal(mkdir(lock, 0700), 0); /* the lock's name taken by a directory */
    assert_int_equal(router_trust_edit(f->dir, s_edit_add, &e, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot lock"));
    assert_int_equal(rmdir(lock), 0);
    static char deep[ROUTER_PATH_MAX + 64];
    memset(deep, 'd', sizeof deep - 1);
    deep[0] = '/';
    assert_int_equal(router_trust_edit(deep, s_edit_add, &e, err, sizeof err), -1);
    assert_non_null(strstr(err, "too long"));
    assert_int_equal(e.calls, 0);
    assert_int_equal(access(f->path, F_OK), -1); /* nothing was written */
}

/* Editors on four threads at once, eight edits each: the lock serialises
 * them, and every one of the 32 peers is in the file. */
typedef struct {
    const char *home;
    uint8_t first;
    int failed;
} s_editor_t;

static void *s_editor(void *arg)
{
    s_editor_t *ed = arg;
    for (uint8_t i = 0; i < 8; i++) {
        char name[16], err[ROUTER_TRUST_ERR_MAX];
        snprintf(name, sizeof name, "p%u", (unsigned) (ed->first + i));
        s_edit_t e = {.key = (uint8_t) (ed->first + i), .name = name};
        if (router_trust_edit(ed->home, s_edit_add, &e, err, sizeof err) != 0)
            ed->failed++;
    }
    return NULL;
}

static void test_edit_concurrent_editors_all_kept(void **state)
{
    s_files_t *f = *state;
    pthread_t th[4];
    s_editor_t ed[4];
    for (int i = 0; i < 4; i++) {
        ed[i] = (s_editor_t){.home = f->dir, .first = (uint8_t) (10 + 8 * i)};
        assert_int_equal(pthread_create(&th[i], NULL, s_editor, &ed[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(ed[i].failed, 0);
    }
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_trust_load(f->path, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(router_trust_count(t), 32);
    router_trust_destroy(&t);
}

/* ------------------------------------------------------------ the REST row */

/* gateway/peer_row: the body of POST /api/peers. */
static int s_row(const char *body, gateway_peer_row_t *row, const char **code)
{
    char why[GATEWAY_PEER_ROW_WHY_MAX] = "";
    *code = NULL;
    int rc = gateway_peer_row_decode((const uint8_t *) body, strlen(body), row, code, why,
                                     sizeof why);
    if (rc != 0)
        assert_true(why[0] && *code && !row->name && !row->nlabels);
    return rc;
}

static void test_peer_row_decode(void **state)
{
    (void) state;
    char body[1024];
    gateway_peer_row_t row;
    const char *code;
    snprintf(body, sizeof body,
             "{\"name\":\"alice\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:1\",\"profile\":\"meerkat\","
             "\"meta\":{\"description\":\"hers\",\"labels\":{\"team\":\"blue\",\"env\":\"\"}}}",
             s_pub(1));
    assert_int_equal(s_row(body, &row, &code), 0);
    uint8_t pk[32];
    s_key(1, pk);
    assert_memory_equal(row.pk, pk, 32);
    assert_string_equal(row.name, "alice");
    assert_string_equal(row.addr, "tcp://h:1");
    assert_string_equal(row.description, "hers");
    assert_int_equal(row.profile, ROUTER_PEER_PROFILE_MEERKAT);
    assert_int_equal(row.nlabels, 2);
    assert_string_equal(row.labels[1].key, "env");
    assert_string_equal(row.labels[1].value, "");
    gateway_peer_row_clear(&row);
    gateway_peer_row_clear(&row); /* idempotent */
    /* Shape is checked here; the row's own rules are the store's. */
    snprintf(body, sizeof body, "{\"name\":\"bad name\",\"pubkey\":\"%s\",\"addr\":\"nowhere\"}",
             s_pub(1));
    assert_int_equal(s_row(body, &row, &code), 0);
    gateway_peer_row_clear(&row);
    static const struct {
        const char *tmpl; /* @PK: a good key */
        const char *code;
    } bad[] = {
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\"", "invalid_json"},
        {"{\"name\":\"a\",\"name\":\"b\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\"}", "invalid_json"},
        {"{\"name\":\"a\\u0000\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\"}", "invalid_json"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\",\"meta\":{\"labels\":"
         "{\"k\":[\"v\"]}}}", "invalid_json"}, /* four deep */
        {"[\"@PK\"]", "invalid_body"},
        {"\"@PK\"", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\"}", "invalid_body"},
        {"{\"name\":1,\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\"}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":null}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\",\"peer_id\":\"x\"}",
         "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\",\"profile\":\"Kith\"}",
         "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\",\"profile\":null}",
         "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\",\"meta\":null}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\",\"meta\":{\"labels\":[]}}",
         "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK\",\"addr\":\"tcp://h:1\",\"meta\":{\"labels\":"
         "{\"a\":\"1\",\"b\":2}}}", "invalid_body"},
        {"{\"name\":\"a\",\"pubkey\":\"x@PK\",\"addr\":\"tcp://h:1\"}", "invalid_pubkey"},
        {"{\"name\":\"a\",\"pubkey\":\"@PK=\",\"addr\":\"tcp://h:1\"}", "invalid_pubkey"},
        {"{\"name\":\"a\",\"pubkey\":\"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\","
         "\"addr\":\"tcp://h:1\",\"x\":\"@PK\"}", "invalid_body"}, /* members first */
        {"{\"name\":\"a\",\"pubkey\":\"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\","
         "\"addr\":\"tcp://h:1\",\"meta\":{\"description\":\"@PK\"}}", "invalid_pubkey"}, /* 0 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_with_key(bad[i].tmpl, s_pub(1), body, sizeof body);
        if (s_row(body, &row, &code) == 0) {
            gateway_peer_row_clear(&row);
            fail_msg("accepted %s", body);
        }
        if (strcmp(code, bad[i].code) != 0)
            fail_msg("%s: %s, not %s", body, code, bad[i].code);
    }
    /* 64 labels fit; 65 do not. */
    int n = snprintf(body, sizeof body,
                     "{\"name\":\"a\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:1\",\"meta\":{\"labels\":{",
                     s_pub(1));
    for (int i = 0; i < 64; i++)
        n += snprintf(body + n, sizeof body - (size_t) n, "%s\"k%d\":\"v\"", i ? "," : "", i);
    snprintf(body + n, sizeof body - (size_t) n, "}}}");
    assert_int_equal(s_row(body, &row, &code), 0);
    assert_int_equal(row.nlabels, 64);
    gateway_peer_row_clear(&row);
    snprintf(body + n, sizeof body - (size_t) n, ",\"k64\":\"v\"}}}");
    assert_int_equal(s_row(body, &row, &code), -1);
}

/* Every allocation of a decode fails in turn: "unavailable" (never a fault
 * of the body) or the row, and nothing leaks (LSan). */
static void test_peer_row_without_memory(void **state)
{
    (void) state;
    char body[512];
    snprintf(body, sizeof body,
             "{\"name\":\"alice\",\"pubkey\":\"%s\",\"addr\":\"tcp://h:1\","
             "\"meta\":{\"description\":\"hers\",\"labels\":{\"team\":\"blue\",\"env\":\"x\"}}}",
             s_pub(1));
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        gateway_peer_row_t row;
        const char *code;
        alloc_fail_arm(i);
        int rc = s_row(body, &row, &code);
        bool failed = alloc_fail_disarm() > 0;
        if (rc != 0) {
            if (!failed || strcmp(code, "unavailable") != 0)
                fail_msg("run %ld: %s", i, code);
            continue;
        }
        assert_int_equal(row.nlabels, 2);
        gateway_peer_row_clear(&row);
        if (!failed)
            break;
    }
}

#define T(f) cmocka_unit_test_setup_teardown(f, s_setup, s_teardown)

/* Every allocation of a parse fails in turn: each run refuses with an
 * error that says memory (never that the document is wrong) or succeeds,
 * and leaks nothing (LSan). */
static void test_parse_without_memory(void **state)
{
    (void) state;
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"peers\": [\n"
             "  {\"name\": \"alice\", \"pubkey\": \"%s\", \"addr\": \"tcp://127.0.0.1:4200\"},\n"
             "  {\"name\": \"bob\", \"pubkey\": \"%s\", \"addr\": \"uds:///run/kith/bob.sock\",\n"
             "   \"meta\": {\"description\": \"Bob's node\", \"labels\": {\"env\": \"prod\"}}}\n"
             "]}\n",
             s_pub(1), s_pub(2));
    for (long i = 0; i < ALLOC_FAIL_RUNS_MAX; i++) {
        char err[ROUTER_TRUST_ERR_MAX] = "";
        alloc_fail_arm(i);
        router_trust_t *t = s_parse(doc, err, sizeof err);
        bool failed = alloc_fail_disarm() > 0;
        if (!t) {
            if (!failed || !strstr(err, "memory"))
                fail_msg("run %ld: %s", i, err);
            continue;
        }
        assert_int_equal(router_trust_count(t), 2);
        router_trust_destroy(&t);
        if (!failed)
            break;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_document),
        cmocka_unit_test(test_empty_forms),
        cmocka_unit_test(test_each_bad_row_is_named),
        cmocka_unit_test(test_mixed_order_key_refused),
        cmocka_unit_test(test_duplicate_peer_id_refused),
        cmocka_unit_test(test_duplicate_names_allowed),
        cmocka_unit_test(test_profile),
        cmocka_unit_test(test_document_shape),
        cmocka_unit_test(test_nesting_bounded_inside_a_bad_row),
        cmocka_unit_test(test_size_bound),
        cmocka_unit_test(test_add_remove_lookup),
        cmocka_unit_test(test_add_checks_like_load),
        cmocka_unit_test(test_addr_parse),
        T(test_missing_file_is_empty),
        T(test_save_load_round_trip),
        T(test_save_is_atomic_replace),
        T(test_save_fsync_failure_keeps_old_file),
        T(test_save_rename_failure_keeps_old_file),
        T(test_save_dir_sync_failure_says_replaced),
        T(test_group_writable_file_refused),
        T(test_load_error_names_file_and_row),
        T(test_fifo_refused),
        T(test_edit_saves),
        T(test_edit_refused_leaves_the_file),
        T(test_edit_of_a_file_that_does_not_load),
        T(test_edit_save_failure_keeps_the_file),
        T(test_edit_home_and_lock_failures),
        T(test_edit_concurrent_editors_all_kept),
        T(test_sweep_temps),
        cmocka_unit_test(test_diff),
        cmocka_unit_test(test_parse_without_memory),
        cmocka_unit_test(test_peer_row_decode),
        cmocka_unit_test(test_peer_row_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
