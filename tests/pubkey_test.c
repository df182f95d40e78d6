/* tests/pubkey_test.c — key text form, PeerId, and the full-order policy
 * against every Wycheproof, CCTV and speccheck Ed25519 vector, with an
 * independent [L]P check of every key the vectors use. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>
#include <yajl/yajl_tree.h>

#include "proto/pubkey.h"
#include "proto/uuid.h"

/* ------------------------------------------------------------ helpers */

static yajl_val s_load_json(const char *name)
{
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/%s", KITH_TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n > 0);
    rewind(f);
    char *text = malloc((size_t) n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t) n, f), (size_t) n);
    text[n] = '\0';
    fclose(f);
    yajl_val root = yajl_tree_parse(text, err, sizeof err);
    free(text);
    if (!root)
        fail_msg("%s: %s", name, err);
    return root;
}

static const char *s_str(yajl_val obj, const char *key)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, path, yajl_t_string);
    assert_non_null(v);
    return YAJL_GET_STRING(v);
}

/* Hex text into a fresh buffer of *len bytes (caller frees). */
static uint8_t *s_unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    assert_int_equal(n % 2, 0);
    uint8_t *out = malloc(n / 2 + 1);
    assert_non_null(out);
    size_t got = 0;
    assert_int_equal(sodium_hex2bin(out, n / 2 + 1, hex, n, NULL, &got, NULL), 0);
    assert_int_equal(got, n / 2);
    *len = got;
    return out;
}

static void s_unhex_fixed(const char *hex, uint8_t *out, size_t len)
{
    size_t got = 0;
    uint8_t *tmp = s_unhex(hex, &got);
    assert_int_equal(got, len);
    memcpy(out, tmp, len);
    free(tmp);
}

/* What libsodium alone says, without kith's key policy. */
static int s_libsodium_accepts(const uint8_t pk[32], const uint8_t *m, size_t n, const uint8_t sig[64])
{
    return crypto_sign_verify_detached(sig, m, n, pk) == 0;
}

/* ------------------------------------------------------------ independent order check */

/* The group order L = 2^252 + 27742317777372353535851937790883648493, little-endian. */
static const uint8_t s_order_l[32] = {
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
};
static const uint8_t s_identity[32] = {1};

/* True when y (sign bit cleared) is below p = 2^255 - 19 and the sign bit is
 * not set on a point whose x is 0 (y = 1 or y = p - 1). */
static int s_canonical(const uint8_t pk[32])
{
    uint8_t y[32];
    memcpy(y, pk, 32);
    y[31] &= 0x7f;
    int ge_p = y[31] == 0x7f && y[0] >= 0xed;
    for (int i = 1; i < 31; i++)
        ge_p &= y[i] == 0xff;
    if (ge_p)
        return 0;
    static const uint8_t p_minus_1[32] = {
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    };
    int x_zero = !memcmp(y, s_identity, 32) || !memcmp(y, p_minus_1, 32);
    return !(x_zero && (pk[31] & 0x80));
}

/* Full order by definition, not through is_valid_point: canonical, on the
 * curve, not the identity, and [L]P = identity, computed by double-and-add
 * with nothing but point addition. */
static int s_full_order_independent(const uint8_t pk[32])
{
    if (!s_canonical(pk) || !memcmp(pk, s_identity, 32))
        return 0;
    uint8_t acc[32];
    memcpy(acc, s_identity, 32);
    for (int bit = 252; bit >= 0; bit--) {
        if (crypto_core_ed25519_add(acc, acc, acc) != 0)
            return 0;
        if ((s_order_l[bit / 8] >> (bit % 8)) & 1)
            if (crypto_core_ed25519_add(acc, acc, pk) != 0)
                return 0; /* not on the curve */
    }
    return !memcmp(acc, s_identity, 32);
}

static void s_check_order_agrees(const uint8_t pk[32])
{
    int policy = proto_pubkey_check(pk) == 0;
    int independent = s_full_order_independent(pk);
    assert_int_equal(policy, independent);
}

/* ------------------------------------------------------------ text form and PeerId */

/* RFC 8032 §7.1 TEST 1. */
static const char s_rfc8032_seed[] = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
static const char s_rfc8032_pk[] = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
static const char s_rfc8032_sig[] =
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

static void test_text_form_and_peer_id(void **state)
{
    (void) state;
    uint8_t pk[32], back[32], id[16];
    char text[PROTO_PUBKEY_TEXT_CAP], idtext[PROTO_UUID_TEXT_CAP];
    s_unhex_fixed(s_rfc8032_pk, pk, 32);
    assert_int_equal(proto_pubkey_format(pk, text, sizeof text), 0);
    assert_string_equal(text, "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    assert_int_equal(strlen(text), PROTO_PUBKEY_TEXT_LEN);
    assert_int_equal(proto_pubkey_format(pk, text, PROTO_PUBKEY_TEXT_CAP - 1), -1);
    assert_int_equal(proto_pubkey_parse(text, strlen(text), back), 0);
    assert_memory_equal(back, pk, 32);
    /* Computed independently: SHA-1(namespace || key), RFC 9562 §5.5. */
    proto_peer_id(pk, id);
    proto_uuid_format(id, idtext);
    assert_string_equal(idtext, "799d7474-517f-5045-9ae5-ca7af62e35c6");
}

static void test_parse_rejects(void **state)
{
    (void) state;
    static const struct {
        const char *text;
        proto_pubkey_reason_t why;
    } bad[] = {
        {"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", PROTO_PUBKEY_NO_PREFIX},
        {"ED25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", PROTO_PUBKEY_NO_PREFIX},
        {"ed25519", PROTO_PUBKEY_NO_PREFIX},
        {"ed25519:", PROTO_PUBKEY_BAD_BASE64},
        {"ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo", PROTO_PUBKEY_BAD_BASE64},   /* unpadded */
        {"ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=", PROTO_PUBKEY_BAD_BASE64},  /* url alphabet */
        {"ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURp=", PROTO_PUBKEY_BAD_BASE64},  /* stray low bits */
        {"ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo= ", PROTO_PUBKEY_BAD_BASE64}, /* trailing space */
        {"ed25519: 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", PROTO_PUBKEY_BAD_BASE64}, /* leading space */
        {"ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHUR==", PROTO_PUBKEY_BAD_BASE64},  /* 31 bytes */
        {"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", PROTO_PUBKEY_WEAK},        /* order 4 */
        {"ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", PROTO_PUBKEY_WEAK},        /* identity */
    };
    uint8_t pk[32];
    memset(pk, 0xa5, sizeof pk);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        proto_pubkey_reason_t why = PROTO_PUBKEY_OK;
        int rc = proto_pubkey_parse_reason(bad[i].text, strlen(bad[i].text), pk, &why);
        if (rc != -1 || why != bad[i].why)
            fail_msg("%s: rc %d reason %s", bad[i].text, rc, proto_pubkey_reason_str(why));
    }
    for (size_t i = 0; i < sizeof pk; i++)
        assert_int_equal(pk[i], 0xa5); /* untouched on failure */
    assert_string_equal(proto_pubkey_reason_str(PROTO_PUBKEY_WEAK), "weak_key");
}

static void test_rfc8032_sign_verify(void **state)
{
    (void) state;
    uint8_t seed[32], pk[32], want_pk[32], sk[64], sig[64], want_sig[64];
    s_unhex_fixed(s_rfc8032_seed, seed, 32);
    s_unhex_fixed(s_rfc8032_pk, want_pk, 32);
    s_unhex_fixed(s_rfc8032_sig, want_sig, 64);
    proto_ed25519_seed_keypair(seed, pk, sk);
    assert_memory_equal(pk, want_pk, 32);
    proto_ed25519_sign(sk, (const uint8_t *) "", 0, sig);
    assert_memory_equal(sig, want_sig, 64);
    assert_int_equal(proto_ed25519_verify(pk, (const uint8_t *) "", 0, sig), 0);
    assert_int_equal(proto_ed25519_verify_checked(pk, (const uint8_t *) "", 0, sig), 0);
    sig[0] ^= 1;
    assert_int_equal(proto_ed25519_verify(pk, (const uint8_t *) "", 0, sig), -1);
    sodium_memzero(sk, sizeof sk);
}

/* ------------------------------------------------------------ Wycheproof */

/* Every verdict stands: Wycheproof's keys are all of full order, so kith's
 * policy and libsodium's strict verification agree with each test. */
static void test_wycheproof(void **state)
{
    (void) state;
    yajl_val root = s_load_json("wycheproof_ed25519_test.json");
    const char *groups_path[] = {"testGroups", NULL};
    yajl_val groups = yajl_tree_get(root, groups_path, yajl_t_array);
    assert_non_null(groups);
    size_t seen = 0;
    for (size_t g = 0; g < YAJL_GET_ARRAY(groups)->len; g++) {
        yajl_val group = YAJL_GET_ARRAY(groups)->values[g];
        const char *pk_path[] = {"publicKey", "pk", NULL};
        yajl_val pkv = yajl_tree_get(group, pk_path, yajl_t_string);
        assert_non_null(pkv);
        uint8_t pk[32];
        s_unhex_fixed(YAJL_GET_STRING(pkv), pk, 32);
        s_check_order_agrees(pk);
        const char *tests_path[] = {"tests", NULL};
        yajl_val tests = yajl_tree_get(group, tests_path, yajl_t_array);
        assert_non_null(tests);
        for (size_t t = 0; t < YAJL_GET_ARRAY(tests)->len; t++) {
            yajl_val tc = YAJL_GET_ARRAY(tests)->values[t];
            size_t msg_len = 0, sig_len = 0;
            uint8_t *msg = s_unhex(s_str(tc, "msg"), &msg_len);
            uint8_t *sig = s_unhex(s_str(tc, "sig"), &sig_len);
            int want = !strcmp(s_str(tc, "result"), "valid");
            /* A signature of the wrong length never reaches verification. */
            int got = sig_len == PROTO_SIG_LEN && proto_ed25519_verify(pk, msg, msg_len, sig) == 0;
            const char *id_path[] = {"tcId", NULL};
            if (got != want)
                fail_msg("wycheproof tcId %lld: want %d got %d",
                         YAJL_GET_INTEGER(yajl_tree_get(tc, id_path, yajl_t_number)), want, got);
            free(msg);
            free(sig);
            seen++;
        }
    }
    assert_int_equal(seen, 151);
    yajl_tree_free(root);
}

/* ------------------------------------------------------------ CCTV */

static int s_has_flag(yajl_val tc, const char *flag)
{
    const char *path[] = {"flags", NULL};
    yajl_val flags = yajl_tree_get(tc, path, yajl_t_array);
    if (!flags)
        return 0;
    for (size_t i = 0; i < YAJL_GET_ARRAY(flags)->len; i++) {
        const char *f = YAJL_GET_STRING(YAJL_GET_ARRAY(flags)->values[i]);
        if (f && !strcmp(f, flag))
            return 1;
    }
    return 0;
}

/* kith's verdicts on CCTV, by flag:
 *   low_order_A, low_order_component_A, non_canonical_A → refused by the key
 *     policy (libsodium alone accepts 42 of the mixed-order-A vectors);
 *   low_order_R, non_canonical_R → refused by libsodium (small-order or
 *     non-canonical R);
 *   low_order_component_R with low_order_residue → refused by libsodium's
 *     cofactorless equation;
 *   no flags → accepted.
 * So exactly the unflagged vector verifies, and the key policy agrees with
 * the A flags and with the independent [L]P check. */
static void test_cctv(void **state)
{
    (void) state;
    yajl_val root = s_load_json("cctv_ed25519vectors.json");
    assert_true(YAJL_IS_ARRAY(root));
    size_t n = YAJL_GET_ARRAY(root)->len, kith_ok = 0, sodium_ok = 0;
    uint8_t checked[64][32];
    size_t nchecked = 0;
    assert_int_equal(n, 914);
    for (size_t i = 0; i < n; i++) {
        yajl_val tc = YAJL_GET_ARRAY(root)->values[i];
        uint8_t pk[32], sig[64];
        s_unhex_fixed(s_str(tc, "key"), pk, 32);
        s_unhex_fixed(s_str(tc, "sig"), sig, 64);
        const char *msg = s_str(tc, "msg");
        int weak_a = s_has_flag(tc, "low_order_A") || s_has_flag(tc, "low_order_component_A") ||
                     s_has_flag(tc, "non_canonical_A");
        const char *path[] = {"flags", NULL};
        yajl_val flags = yajl_tree_get(tc, path, yajl_t_array);
        int unflagged = !flags || YAJL_GET_ARRAY(flags)->len == 0;

        assert_int_equal(proto_pubkey_check(pk) == 0, !weak_a);
        int got = proto_ed25519_verify(pk, (const uint8_t *) msg, strlen(msg), sig) == 0;
        if (got != unflagged)
            fail_msg("cctv %zu: want %d got %d", i, unflagged, got);
        kith_ok += got;
        sodium_ok += s_libsodium_accepts(pk, (const uint8_t *) msg, strlen(msg), sig);

        int seen = 0;
        for (size_t k = 0; k < nchecked && !seen; k++)
            seen = !memcmp(checked[k], pk, 32);
        if (!seen) {
            assert_true(nchecked < 64);
            memcpy(checked[nchecked++], pk, 32);
            s_check_order_agrees(pk);
        }
    }
    assert_int_equal(kith_ok, 1);
    assert_int_equal(sodium_ok, 43); /* the policy is what refuses the other 42 */
    yajl_tree_free(root);
}

/* ------------------------------------------------------------ speccheck */

/* The 12 cases of "Taming the many EdDSAs" (Chalkias et al. 2020), what
 * libsodium 1.0.18 alone says, and whether A passes the key policy. kith
 * refuses all twelve: case 3 (mixed-order A and R, valid under both the
 * cofactored and cofactorless equations) is the one the key policy adds. */
static const struct {
    const char *what;
    int sodium_accepts;
    int key_ok;
} s_speccheck[12] = {
    {"S = 0, small-order A and R", 0, 0},
    {"small-order A, mixed-order R", 0, 0},
    {"mixed-order A, small-order R", 0, 0},
    {"mixed-order A and R, passes both equations", 1, 0},
    {"mixed-order A and R, cofactored only", 0, 0},
    {"mixed-order A, order-L R, cofactored only", 0, 0},
    {"S >= L", 0, 1},
    {"S >> L", 0, 1},
    {"non-canonical R (A not of full order)", 0, 0},
    {"non-canonical R (A not of full order), other hash", 0, 0},
    {"non-canonical A", 0, 0},
    {"non-canonical A, other hash", 0, 0},
};

static void test_speccheck(void **state)
{
    (void) state;
    yajl_val root = s_load_json("speccheck_cases.json");
    assert_true(YAJL_IS_ARRAY(root));
    assert_int_equal(YAJL_GET_ARRAY(root)->len, 12);
    for (size_t i = 0; i < 12; i++) {
        yajl_val tc = YAJL_GET_ARRAY(root)->values[i];
        uint8_t pk[32], sig[64];
        size_t msg_len = 0;
        s_unhex_fixed(s_str(tc, "pub_key"), pk, 32);
        s_unhex_fixed(s_str(tc, "signature"), sig, 64);
        uint8_t *msg = s_unhex(s_str(tc, "message"), &msg_len);
        if (s_libsodium_accepts(pk, msg, msg_len, sig) != s_speccheck[i].sodium_accepts ||
            (proto_pubkey_check(pk) == 0) != s_speccheck[i].key_ok)
            fail_msg("speccheck %zu (%s): classification changed", i, s_speccheck[i].what);
        assert_int_equal(proto_ed25519_verify(pk, msg, msg_len, sig), -1);
        s_check_order_agrees(pk);
        free(msg);
    }
    yajl_tree_free(root);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_form_and_peer_id),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_rfc8032_sign_verify),
        cmocka_unit_test(test_wycheproof),
        cmocka_unit_test(test_cctv),
        cmocka_unit_test(test_speccheck),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
