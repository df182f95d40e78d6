/* audit/record.c — the audit chain's record line: formatting with yajl's
 * generator (the detail is re-parsed and re-generated, so it is compact
 * JSON whatever the caller sent), hashing the unsigned form, and reading a
 * line back strictly with yajl's tree parser. See record.h and WIRE §21.1. */
#include "audit/record.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "proto/utf8.h"

const uint8_t audit_genesis[AUDIT_HASH_LEN] = {0};

/* The tail every line ends with, `,"hash":"` + 64 hex + `"}`, and the HMAC
 * member that may end U's line part, `,"hmac":"` + 64 hex + `"`. */
#define S_HASH_KEY ",\"hash\":\""
#define S_HMAC_KEY ",\"hmac\":\""
#define S_TAIL_LEN (sizeof S_HASH_KEY - 1 + AUDIT_HEX_LEN + 2)
#define S_HMAC_MEMBER_LEN (sizeof S_HMAC_KEY - 1 + AUDIT_HEX_LEN + 1)

static const char *const s_keys[] = {"seq", "time_ms", "type", "detail", "prev", "hmac", "hash"};

const char *audit_rec_err_str(audit_rec_err_t e)
{
    switch (e) {
    case AUDIT_REC_OK:           return "ok";
    case AUDIT_REC_MALFORMED:    return "malformed";
    case AUDIT_REC_HASH:         return "hash";
    case AUDIT_REC_HMAC:         return "hmac";
    case AUDIT_REC_HMAC_MISSING: return "hmac_missing";
    case AUDIT_REC_NO_MEMORY:    return "no_memory";
    }
    return "unknown";
}

void audit_hex(const uint8_t *bin, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bin[i] >> 4];
        out[2 * i + 1] = digits[bin[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Lowercase hex only: the writer never makes anything else, so any other
 * spelling is a changed byte. */
static int s_unhex(const char *hex, size_t len, uint8_t *out, size_t n)
{
    if (len != 2 * n)
        return -1;
    for (size_t i = 0; i < 2 * n; i++) {
        char c = hex[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t) (v << 4);
        else
            out[i / 2] |= (uint8_t) v;
    }
    return 0;
}

/* ================================================================ key */

int audit_key_from_env(audit_key_t *key, const char *name, char *err, size_t errcap)
{
    memset(key, 0, sizeof *key);
    if (!name || !*name)
        return 0;
    const char *v = getenv(name);
    if (!v) {
        snprintf(err, errcap, "audit.hmac_key_env names %s, which is not set", name);
        return -1;
    }
    size_t n = strlen(v);
    if (n < AUDIT_HMAC_KEY_MIN || n > AUDIT_HMAC_KEY_MAX) {
        snprintf(err, errcap, "the audit HMAC key in %s must be %u to %u bytes (it is %zu)", name,
                 AUDIT_HMAC_KEY_MIN, AUDIT_HMAC_KEY_MAX, n);
        return -1;
    }
    memcpy(key->bytes, v, n);
    key->len = n;
    return 0;
}

void audit_key_clear(audit_key_t *key)
{
    sodium_memzero(key, sizeof *key);
}

/* SHA-256 or HMAC-SHA256 (key non-empty) of p[0..n) + "}". */
static void s_digest(const char *p, size_t n, const audit_key_t *key, uint8_t out[AUDIT_HASH_LEN])
{
    if (key && key->len) {
        crypto_auth_hmacsha256_state a;
        crypto_auth_hmacsha256_init(&a, key->bytes, key->len);
        crypto_auth_hmacsha256_update(&a, (const unsigned char *) p, n);
        crypto_auth_hmacsha256_update(&a, (const unsigned char *) "}", 1);
        crypto_auth_hmacsha256_final(&a, out);
        sodium_memzero(&a, sizeof a);
        return;
    }
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    crypto_hash_sha256_update(&h, (const unsigned char *) p, n);
    crypto_hash_sha256_update(&h, (const unsigned char *) "}", 1);
    crypto_hash_sha256_final(&h, out);
}

/* ================================================================ format */

/* The detail's parse events go straight into the line's generator. */
typedef struct {
    yajl_gen g;
    unsigned depth;   /* open maps and arrays */
    bool started;     /* the first value was seen (it must open a map) */
    bool too_deep;
} s_fwd_t;

static int s_fwd_open(s_fwd_t *f, bool map)
{
    if (!f->started && !map)
        return 0;
    f->started = true;
    if (++f->depth > AUDIT_DETAIL_DEPTH_MAX) {
        f->too_deep = true;
        return 0;
    }
    return (map ? yajl_gen_map_open(f->g) : yajl_gen_array_open(f->g)) == yajl_gen_status_ok;
}

static int s_fwd_scalar(s_fwd_t *f)
{
    return f->started; /* a scalar at the top is not an object */
}

static int s_cb_null(void *ud)
{
    s_fwd_t *f = ud;
    return s_fwd_scalar(f) && yajl_gen_null(f->g) == yajl_gen_status_ok;
}

static int s_cb_bool(void *ud, int v)
{
    s_fwd_t *f = ud;
    return s_fwd_scalar(f) && yajl_gen_bool(f->g, v) == yajl_gen_status_ok;
}

static int s_cb_number(void *ud, const char *s, size_t n)
{
    s_fwd_t *f = ud;
    return s_fwd_scalar(f) && yajl_gen_number(f->g, s, n) == yajl_gen_status_ok;
}

static int s_cb_string(void *ud, const unsigned char *s, size_t n)
{
    s_fwd_t *f = ud;
    return s_fwd_scalar(f) && yajl_gen_string(f->g, s, n) == yajl_gen_status_ok;
}

static int s_cb_map_key(void *ud, const unsigned char *s, size_t n)
{
    s_fwd_t *f = ud;
    return yajl_gen_string(f->g, s, n) == yajl_gen_status_ok;
}

static int s_cb_start_map(void *ud) { return s_fwd_open(ud, true); }
static int s_cb_start_array(void *ud) { return s_fwd_open(ud, false); }

static int s_cb_end(void *ud, bool map)
{
    s_fwd_t *f = ud;
    f->depth--;
    return (map ? yajl_gen_map_close(f->g) : yajl_gen_array_close(f->g)) == yajl_gen_status_ok;
}

static int s_cb_end_map(void *ud) { return s_cb_end(ud, true); }
static int s_cb_end_array(void *ud) { return s_cb_end(ud, false); }

static const yajl_callbacks s_fwd_callbacks = {
    .yajl_null = s_cb_null,
    .yajl_boolean = s_cb_bool,
    .yajl_number = s_cb_number,
    .yajl_string = s_cb_string,
    .yajl_start_map = s_cb_start_map,
    .yajl_map_key = s_cb_map_key,
    .yajl_end_map = s_cb_end_map,
    .yajl_start_array = s_cb_start_array,
    .yajl_end_array = s_cb_end_array,
};

/* Streams the detail JSON text into g as one object. 0 or -1. */
static int s_gen_detail(yajl_gen g, const char *json, size_t len, char *err, size_t errcap)
{
    s_fwd_t f = {.g = g};
    yajl_handle h = yajl_alloc(&s_fwd_callbacks, NULL, &f);
    if (!h) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    yajl_status st = yajl_parse(h, (const unsigned char *) json, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    yajl_free(h);
    if (st != yajl_status_ok || !f.started || f.depth != 0) {
        snprintf(err, errcap, "detail is not a JSON object%s",
                 f.too_deep ? " nested at most 16 deep" : "");
        return -1;
    }
    return 0;
}

static yajl_gen_status s_gen_key(yajl_gen g, const char *k)
{
    return yajl_gen_string(g, (const unsigned char *) k, strlen(k));
}

static yajl_gen_status s_gen_u64(yajl_gen g, uint64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%llu", (unsigned long long) v);
    return yajl_gen_number(g, num, (size_t) n);
}

long audit_record_format(uint64_t seq, const proto_audit_event_t *ev,
                         const uint8_t prev[AUDIT_HASH_LEN], const audit_key_t *key, char *out,
                         size_t cap, uint8_t hash[AUDIT_HASH_LEN], char *err, size_t errcap)
{
    long rc = -1;
    char hex[AUDIT_HEX_LEN + 1];
    uint8_t hmac[AUDIT_HASH_LEN];
    if (ev->type_len < 1 || ev->type_len > PROTO_AUDIT_TYPE_MAX || memchr(ev->type, 0, ev->type_len) ||
        !proto_utf8_valid((const uint8_t *) ev->type, ev->type_len)) {
        snprintf(err, errcap, "type must be 1 to %u bytes of UTF-8", PROTO_AUDIT_TYPE_MAX);
        return -1;
    }
    if (ev->detail_len > PROTO_AUDIT_DETAIL_MAX) {
        snprintf(err, errcap, "detail is longer than %u bytes", PROTO_AUDIT_DETAIL_MAX);
        return -1;
    }
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    (void) yajl_gen_config(g, yajl_gen_validate_utf8, 1);
    if (yajl_gen_map_open(g) != yajl_gen_status_ok || s_gen_key(g, "seq") != yajl_gen_status_ok ||
        s_gen_u64(g, seq) != yajl_gen_status_ok || s_gen_key(g, "time_ms") != yajl_gen_status_ok ||
        s_gen_u64(g, ev->time_ms) != yajl_gen_status_ok || s_gen_key(g, "type") != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *) ev->type, ev->type_len) != yajl_gen_status_ok ||
        s_gen_key(g, "detail") != yajl_gen_status_ok) {
        snprintf(err, errcap, "cannot write the record");
        goto done;
    }
    if (s_gen_detail(g, ev->detail, ev->detail_len, err, errcap) != 0)
        goto done;
    audit_hex(prev, AUDIT_HASH_LEN, hex);
    if (s_gen_key(g, "prev") != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *) hex, AUDIT_HEX_LEN) != yajl_gen_status_ok) {
        snprintf(err, errcap, "cannot write the record");
        goto done;
    }
    const unsigned char *buf;
    size_t ulen;
    if (key && key->len) {
        yajl_gen_get_buf(g, &buf, &ulen);
        s_digest((const char *) buf, ulen, key, hmac);
        audit_hex(hmac, AUDIT_HASH_LEN, hex);
        if (s_gen_key(g, "hmac") != yajl_gen_status_ok ||
            yajl_gen_string(g, (const unsigned char *) hex, AUDIT_HEX_LEN) != yajl_gen_status_ok) {
            snprintf(err, errcap, "cannot write the record");
            goto done;
        }
    }
    yajl_gen_get_buf(g, &buf, &ulen);
    size_t total = ulen + S_TAIL_LEN;
    if (total > cap || total > AUDIT_LINE_MAX) {
        snprintf(err, errcap, "the record would be longer than %u bytes", AUDIT_LINE_MAX);
        goto done;
    }
    s_digest((const char *) buf, ulen, NULL, hash);
    memcpy(out, buf, ulen);
    char *w = out + ulen;
    memcpy(w, S_HASH_KEY, sizeof S_HASH_KEY - 1);
    w += sizeof S_HASH_KEY - 1;
    audit_hex(hash, AUDIT_HASH_LEN, w);
    w += AUDIT_HEX_LEN;
    *w++ = '"';
    *w++ = '}';
    rc = (long) (w - out);
done:
    yajl_gen_free(g);
    sodium_memzero(hmac, sizeof hmac);
    return rc;
}

/* ================================================================ read */

/* Where U's line part ends (the `,"hash":"` tail starts), and where the
 * HMAC member starts when there is one (else -1). -1 when the tail is not
 * there. */
static long s_split(const char *line, size_t len, long *hmac_at)
{
    if (len < S_TAIL_LEN || memcmp(line + len - S_TAIL_LEN, S_HASH_KEY, sizeof S_HASH_KEY - 1) != 0 ||
        line[len - 2] != '"' || line[len - 1] != '}')
        return -1;
    size_t ulen = len - S_TAIL_LEN;
    *hmac_at = -1;
    if (ulen >= S_HMAC_MEMBER_LEN &&
        memcmp(line + ulen - S_HMAC_MEMBER_LEN, S_HMAC_KEY, sizeof S_HMAC_KEY - 1) == 0 &&
        line[ulen - 1] == '"')
        *hmac_at = (long) (ulen - S_HMAC_MEMBER_LEN);
    return (long) ulen;
}

static int s_uint_of(yajl_val v, uint64_t *out)
{
    if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 0)
        return -1;
    const char *r = v->u.number.r;
    if (!r || (r[0] == '0' && r[1])) /* one spelling per number */
        return -1;
    *out = (uint64_t) YAJL_GET_INTEGER(v);
    return 0;
}

static int s_hex_of(yajl_val v, uint8_t out[AUDIT_HASH_LEN])
{
    return YAJL_IS_STRING(v) ? s_unhex(v->u.string, strlen(v->u.string), out, AUDIT_HASH_LEN) : -1;
}

/* Reads the tree of a whole line: exactly the keys of WIRE §21.1 in order. */
static int s_read_tree(const char *line, size_t len, audit_record_t *out, long *ulen, long *hmac_at)
{
    int rc = -1;
    if (len == 0 || len > AUDIT_LINE_MAX || memchr(line, 0, len) ||
        !proto_utf8_valid((const uint8_t *) line, len))
        return -1;
    *ulen = s_split(line, len, hmac_at);
    if (*ulen < 0)
        return -1;
    out->has_hmac = *hmac_at >= 0;
    char *copy = malloc(len + 1);
    if (!copy)
        return -2; /* not "malformed": a false tamper report is worse than none */
    memcpy(copy, line, len);
    copy[len] = '\0';
    yajl_val root = yajl_tree_parse(copy, NULL, 0);
    free(copy);
    size_t want = out->has_hmac ? 7 : 6;
    if (!root || !YAJL_IS_OBJECT(root) || root->u.object.len != want)
        goto done;
    for (size_t i = 0, k = 0; i < want; i++, k++) {
        if (k == 5 && !out->has_hmac)
            k++; /* no "hmac": "hash" follows "prev" */
        if (strcmp(root->u.object.keys[i], s_keys[k]) != 0)
            goto done;
    }
    yajl_val *v = root->u.object.values;
    if (s_uint_of(v[0], &out->seq) != 0 || out->seq == 0 || s_uint_of(v[1], &out->time_ms) != 0 ||
        !YAJL_IS_STRING(v[2]) || !YAJL_IS_OBJECT(v[3]) || s_hex_of(v[4], out->prev) != 0 ||
        (out->has_hmac && s_hex_of(v[5], out->hmac) != 0) || s_hex_of(v[want - 1], out->hash) != 0)
        goto done;
    size_t tlen = strlen(v[2]->u.string);
    if (tlen < 1 || tlen > PROTO_AUDIT_TYPE_MAX)
        goto done;
    memcpy(out->type, v[2]->u.string, tlen + 1);
    rc = 0;
done:
    yajl_tree_free(root);
    return rc;
}

int audit_record_read(const char *line, size_t len, audit_record_t *out)
{
    long ulen, hmac_at;
    memset(out, 0, sizeof *out);
    return s_read_tree(line, len, out, &ulen, &hmac_at);
}

audit_rec_err_t audit_record_check(const char *line, size_t len, const audit_key_t *key,
                                   audit_record_t *out)
{
    long ulen, hmac_at;
    memset(out, 0, sizeof *out);
    int rd = s_read_tree(line, len, out, &ulen, &hmac_at);
    if (rd != 0)
        return rd == -2 ? AUDIT_REC_NO_MEMORY : AUDIT_REC_MALFORMED;
    uint8_t hash[AUDIT_HASH_LEN], hmac[AUDIT_HASH_LEN];
    s_digest(line, (size_t) ulen, NULL, hash);
    bool keyed = key && key->len;
    audit_rec_err_t e = AUDIT_REC_OK;
    if (sodium_memcmp(hash, out->hash, AUDIT_HASH_LEN) != 0) {
        e = AUDIT_REC_HASH;
    } else if (keyed && !out->has_hmac) {
        e = AUDIT_REC_HMAC_MISSING;
    } else if (keyed) {
        s_digest(line, (size_t) hmac_at, key, hmac);
        if (sodium_memcmp(hmac, out->hmac, AUDIT_HASH_LEN) != 0)
            e = AUDIT_REC_HMAC;
        sodium_memzero(hmac, sizeof hmac);
    }
    return e;
}
