/* router/state/trust.c — the trust store: rows in file order, two keyed-hash
 * indexes (public key, PeerId), a fail-closed reader on yajl callbacks, and
 * an atomic writer. */
#include "router/state/trust.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <yajl/yajl_gen.h>

#include "proto/pubkey.h"
#include "proto/utf8.h"
#include "proto/uuid.h"
#include "router/net/addr.h"
#include "router/state/jsonc.h"
#include "router/state/statefile.h"

struct router_trust {
    router_peer_t **rows;   /* owned, in file order */
    size_t count;           /* rows in use */
    size_t cap;             /* rows allocated */
    uint32_t *by_pk;        /* open addressing on pk: row index + 1, 0 = free */
    uint32_t *by_id;        /* the same on peer_id */
    size_t slots;           /* size of both tables: a power of two > 2 * count, or 0 */
    uint8_t hash_key[crypto_shorthash_KEYBYTES]; /* per store, so probe chains are unguessable */
};

/* ------------------------------------------------------------ peers */

static void s_peer_free(router_peer_t *p)
{
    if (!p)
        return;
    free((char *) p->name);
    free((char *) p->addr);
    free((char *) p->description);
    for (size_t i = 0; i < p->nlabels; i++) {
        free((char *) p->labels[i].key);
        free((char *) p->labels[i].value);
    }
    free((router_label_t *) p->labels);
    free(p);
}

static bool s_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

bool router_peer_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > ROUTER_PEER_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!s_name_char((unsigned char) name[i]))
            return false;
    return true;
}

/* Whether s is unfit for the store: a byte below 0x20 or DEL (the store is
 * printed by `kith peers list`, so no terminal control sequences), or not
 * UTF-8 (flags from the command line never went through yajl, and a store
 * saved with bad UTF-8 would not load again). */
static bool s_text_unfit(const char *s)
{
    for (const char *p = s; *p; p++)
        if ((unsigned char) *p < 0x20 || *p == 0x7f)
            return true;
    return !proto_utf8_valid((const uint8_t *) s, strlen(s));
}

int router_peer_addr_parse(const char *addr, router_peer_addr_t *out, char *why, size_t whycap)
{
    memset(out, 0, sizeof *out);
    if (strlen(addr) > ROUTER_PEER_ADDR_MAX || s_text_unfit(addr)) {
        snprintf(why, whycap, strlen(addr) > ROUTER_PEER_ADDR_MAX ? "too long"
                                                                  : "control characters or not UTF-8");
        return -1;
    }
    if (!strncmp(addr, "tcp://", 6)) {
        out->transport = ROUTER_PEER_TCP;
        router_hostport_t hp;
        router_addr_err_t e;
        if (router_addr_split(addr + 6, &hp, &e) != 0) {
            snprintf(why, whycap, "%s", router_addr_err_str(e));
            return -1;
        }
        if (!router_addr_host_valid(hp.host)) {
            snprintf(why, whycap, "host is not an IPv4 address or a host name");
            return -1;
        }
        _Static_assert(sizeof out->host >= sizeof hp.host, "room for any host");
        memcpy(out->host, hp.host, sizeof hp.host);
        out->port = hp.port;
        if (out->port == 0) {
            snprintf(why, whycap, "port 0 cannot be dialled");
            return -1;
        }
        return 0;
    }
    if (!strncmp(addr, "uds://", 6)) {
        const char *path = addr + 6;
        out->transport = ROUTER_PEER_UDS;
        if (path[0] != '/') {
            snprintf(why, whycap, "the path must be absolute, as in uds:///run/kith.sock");
            return -1;
        }
        size_t len = strlen(path);
        if (len >= sizeof out->path || path[len - 1] == '/') {
            snprintf(why, whycap, len >= sizeof out->path ? "socket path longer than %zu bytes"
                                                          : "the path names a directory",
                     sizeof out->path - 1);
            return -1;
        }
        memcpy(out->path, path, len + 1);
        return 0;
    }
    if (!strncmp(addr, "inproc://", 9)) {
        out->transport = ROUTER_PEER_INPROC;
        if (!router_peer_name_valid(addr + 9)) {
            snprintf(why, whycap, "the name must be 1..%d of [A-Za-z0-9._-]",
                     ROUTER_PEER_NAME_MAX);
            return -1;
        }
        snprintf(out->path, sizeof out->path, "%s", addr + 9);
        return 0;
    }
    snprintf(why, whycap, "unknown scheme");
    return -1;
}

/* ------------------------------------------------------------ indexes */

/* Which bytes of a row an index is keyed on. */
typedef struct {
    size_t offset; /* in router_peer_t */
    size_t len;    /* bytes */
} s_keyspec_t;

static const s_keyspec_t s_pk_key = {offsetof(router_peer_t, pk), 32};
static const s_keyspec_t s_id_key = {offsetof(router_peer_t, peer_id), 16};

static size_t s_slot_of(const router_trust_t *t, const uint8_t *key, size_t len)
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, key, len, t->hash_key);
    uint64_t v;
    memcpy(&v, h, sizeof v);
    return (size_t) (v & (t->slots - 1));
}

/* The row index holding `key`, or -1. Linear probing; the table is at most
 * half full, so a probe ends at a free slot. */
static long s_index_find(const router_trust_t *t, const uint32_t *table, s_keyspec_t ks,
                         const uint8_t *key)
{
    if (t->slots == 0)
        return -1;
    for (size_t s = s_slot_of(t, key, ks.len);; s = (s + 1) & (t->slots - 1)) {
        if (table[s] == 0)
            return -1;
        const router_peer_t *p = t->rows[table[s] - 1];
        if (memcmp((const uint8_t *) p + ks.offset, key, ks.len) == 0)
            return (long) table[s] - 1;
    }
}

static void s_index_put(router_trust_t *t, uint32_t *table, s_keyspec_t ks, size_t row)
{
    const uint8_t *key = (const uint8_t *) t->rows[row] + ks.offset;
    size_t s = s_slot_of(t, key, ks.len);
    while (table[s] != 0)
        s = (s + 1) & (t->slots - 1);
    table[s] = (uint32_t) row + 1;
}

/* Rebuilds both indexes with room for `want` rows. */
static int s_reindex(router_trust_t *t, size_t want)
{
    size_t slots = 16;
    while (slots < 2 * want + 2)
        slots *= 2;
    uint32_t *pk = calloc(slots, sizeof *pk), *id = calloc(slots, sizeof *id);
    if (!pk || !id) {
        free(pk);
        free(id);
        return -1;
    }
    free(t->by_pk);
    free(t->by_id);
    t->by_pk = pk;
    t->by_id = id;
    t->slots = slots;
    for (size_t i = 0; i < t->count; i++) {
        s_index_put(t, t->by_pk, s_pk_key, i);
        s_index_put(t, t->by_id, s_id_key, i);
    }
    return 0;
}

/* ------------------------------------------------------------ the store */

router_trust_t *router_trust_new(void)
{
    if (sodium_init() < 0)
        return NULL;
    router_trust_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    randombytes_buf(t->hash_key, sizeof t->hash_key);
    return t;
}

void router_trust_destroy(router_trust_t **tp)
{
    if (!tp || !*tp)
        return;
    router_trust_t *t = *tp;
    for (size_t i = 0; i < t->count; i++)
        s_peer_free(t->rows[i]);
    free(t->rows);
    free(t->by_pk);
    free(t->by_id);
    free(t);
    *tp = NULL;
}

size_t router_trust_count(const router_trust_t *t)
{
    return t->count;
}

const router_peer_t *router_trust_at(const router_trust_t *t, size_t i)
{
    return i < t->count ? t->rows[i] : NULL;
}

const router_peer_t *router_trust_by_pubkey(const router_trust_t *t, const uint8_t pk[32])
{
    long i = s_index_find(t, t->by_pk, s_pk_key, pk);
    return i < 0 ? NULL : t->rows[i];
}

const router_peer_t *router_trust_by_peer_id(const router_trust_t *t, const uint8_t id[16])
{
    long i = s_index_find(t, t->by_id, s_id_key, id);
    return i < 0 ? NULL : t->rows[i];
}

const router_peer_t *router_trust_by_name(const router_trust_t *t, const char *name,
                                          size_t *matches)
{
    const router_peer_t *first = NULL;
    size_t n = 0;
    for (size_t i = 0; i < t->count; i++) {
        if (strcmp(t->rows[i]->name, name) != 0)
            continue;
        if (!first)
            first = t->rows[i];
        n++;
    }
    if (matches)
        *matches = n;
    return first;
}

static int s_fail(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (errcap > 0)
        vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
    return -1;
}

/* Checks one row's fields; "field: problem" in err otherwise. */
static int s_check_row(const char *name, const uint8_t pk[32], const char *addr,
                       router_peer_addr_t *dial, const char *description,
                       const router_label_t *labels, size_t nlabels, char *err, size_t errcap)
{
    char shown[ROUTER_JSONC_QUOTE_MAX + 16], why[128];
    if (!router_peer_name_valid(name)) {
        router_jsonc_quote((const unsigned char *) name, strlen(name), shown, sizeof shown);
        return s_fail(err, errcap, "name: expected 1..%d characters of [A-Za-z0-9._-], got %s",
                      ROUTER_PEER_NAME_MAX, shown);
    }
    if (proto_pubkey_check(pk) != 0)
        return s_fail(err, errcap,
                      "pubkey: not a full-order Ed25519 public key (small-order, mixed-order or "
                      "not on the curve)");
    if (router_peer_addr_parse(addr, dial, why, sizeof why) != 0) {
        router_jsonc_quote((const unsigned char *) addr, strlen(addr), shown, sizeof shown);
        return s_fail(err, errcap,
                      "addr: expected tcp://host:port, uds:///abs/path or inproc://name, got %s "
                      "(%s)",
                      shown, why);
    }
    if (description && (strlen(description) > ROUTER_PEER_DESCRIPTION_MAX ||
                        s_text_unfit(description)))
        return s_fail(err, errcap,
                      "meta.description: expected one line of UTF-8, at most %d bytes, without "
                      "control characters",
                      ROUTER_PEER_DESCRIPTION_MAX);
    if (nlabels > ROUTER_PEER_LABELS_MAX)
        return s_fail(err, errcap, "meta.labels: more than %d labels", ROUTER_PEER_LABELS_MAX);
    for (size_t i = 0; i < nlabels; i++) {
        const router_label_t *l = &labels[i];
        size_t klen = strlen(l->key);
        router_jsonc_quote((const unsigned char *) l->key, klen, shown, sizeof shown);
        if (klen == 0 || klen > ROUTER_PEER_LABEL_KEY_MAX || s_text_unfit(l->key))
            return s_fail(err, errcap,
                          "meta.labels: key %s: expected 1..%d bytes of UTF-8 without control "
                          "characters",
                          shown, ROUTER_PEER_LABEL_KEY_MAX);
        if (strlen(l->value) > ROUTER_PEER_LABEL_VALUE_MAX || s_text_unfit(l->value))
            return s_fail(err, errcap,
                          "meta.labels.%s: expected at most %d bytes of UTF-8 without control "
                          "characters",
                          shown, ROUTER_PEER_LABEL_VALUE_MAX);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(labels[j].key, l->key))
                return s_fail(err, errcap, "meta.labels: key %s appears twice", shown);
    }
    return 0;
}

/* A copy of s, or NULL when s is NULL; *oom set when a copy failed. */
static char *s_dup(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

int router_trust_add(router_trust_t *t, const char *name, const uint8_t pk[32], const char *addr,
                     const char *description, const router_label_t *labels, size_t nlabels,
                     char *err, size_t errcap)
{
    router_peer_addr_t dial;
    if (s_check_row(name, pk, addr, &dial, description, labels, nlabels, err, errcap) != 0)
        return -1;
    uint8_t id[16];
    proto_peer_id(pk, id);
    long dup = s_index_find(t, t->by_id, s_id_key, id);
    if (dup >= 0) {
        char uuid[PROTO_UUID_TEXT_CAP];
        proto_uuid_format(id, uuid);
        return s_fail(err, errcap, "pubkey: PeerId %s is already trusted as peers[%ld] \"%s\"",
                      uuid, dup, t->rows[dup]->name);
    }
    if (t->count >= ROUTER_TRUST_PEERS_MAX)
        return s_fail(err, errcap, "more than %d peers", ROUTER_TRUST_PEERS_MAX);

    router_peer_t *p = calloc(1, sizeof *p);
    router_label_t *copies = nlabels ? calloc(nlabels, sizeof *copies) : NULL;
    bool oom = !p || (nlabels && !copies);
    if (p) {
        p->name = s_dup(name, &oom);
        p->addr = s_dup(addr, &oom);
        p->description = s_dup(description, &oom);
        p->labels = copies;
        for (size_t i = 0; copies && i < nlabels; i++) {
            copies[i].key = s_dup(labels[i].key, &oom);
            copies[i].value = s_dup(labels[i].value, &oom);
            p->nlabels = i + 1;
        }
        memcpy(p->pk, pk, 32);
        memcpy(p->peer_id, id, 16);
        p->dial = dial;
    } else {
        free(copies);
    }
    if (!oom && t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        router_peer_t **rows = realloc(t->rows, cap * sizeof *rows);
        if (rows) {
            t->rows = rows;
            t->cap = cap;
        } else {
            oom = true;
        }
    }
    if (!oom && 2 * (t->count + 1) + 2 > t->slots && s_reindex(t, 2 * (t->count + 1)) != 0)
        oom = true;
    if (oom) {
        s_peer_free(p);
        return s_fail(err, errcap, "out of memory");
    }
    t->rows[t->count] = p;
    s_index_put(t, t->by_pk, s_pk_key, t->count);
    s_index_put(t, t->by_id, s_id_key, t->count);
    t->count++;
    return 0;
}

void router_peer_name_sanitize(const char *name, const uint8_t peer_id[16],
                               char out[ROUTER_PEER_NAME_MAX + 1])
{
    size_t n = 0;
    for (const char *p = name ? name : ""; *p && n < ROUTER_PEER_NAME_MAX; p++) {
        unsigned char c = (unsigned char) *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        out[n++] = ok ? (char) c : '-';
    }
    out[n] = '\0';
    if (n == 0)
        snprintf(out, ROUTER_PEER_NAME_MAX + 1, "meerkat-%02x%02x%02x%02x", peer_id[0],
                 peer_id[1], peer_id[2], peer_id[3]);
}

int router_peer_profile_parse(const char *text, router_peer_profile_t *out)
{
    if (strcmp(text, "kith") == 0)
        *out = ROUTER_PEER_PROFILE_KITH;
    else if (strcmp(text, "meerkat") == 0)
        *out = ROUTER_PEER_PROFILE_MEERKAT;
    else
        return -1;
    return 0;
}

const char *router_peer_profile_str(router_peer_profile_t p)
{
    return p == ROUTER_PEER_PROFILE_MEERKAT ? "meerkat" : "kith";
}

int router_trust_set_profile(router_trust_t *t, const router_peer_t *peer,
                             router_peer_profile_t profile)
{
    for (size_t i = 0; i < t->count; i++)
        if (t->rows[i] == peer) {
            t->rows[i]->profile = profile;
            return 0;
        }
    return -1;
}

int router_trust_remove(router_trust_t *t, const router_peer_t *peer)
{
    size_t i = 0;
    while (i < t->count && t->rows[i] != peer)
        i++;
    if (i == t->count)
        return -1;
    s_peer_free(t->rows[i]);
    memmove(&t->rows[i], &t->rows[i + 1], (t->count - i - 1) * sizeof t->rows[0]);
    t->count--;
    /* Rebuilding in place cannot fail: the tables keep their size. */
    memset(t->by_pk, 0, t->slots * sizeof *t->by_pk);
    memset(t->by_id, 0, t->slots * sizeof *t->by_id);
    for (size_t j = 0; j < t->count; j++) {
        s_index_put(t, t->by_pk, s_pk_key, j);
        s_index_put(t, t->by_id, s_id_key, j);
    }
    return 0;
}

/* ------------------------------------------------------------ the reader */

/* Nesting allowed inside a bad row while it is skipped to its end. */
#define S_SKIP_DEPTH_MAX 16

/* Object depths in a well-formed document. */
enum {
    S_AT_DOC = 1,    /* the document object */
    S_AT_PEERS = 2,  /* the "peers" array */
    S_AT_ROW = 3,    /* one row */
    S_AT_META = 4,   /* a row's "meta" */
    S_AT_LABELS = 5, /* meta's "labels" */
};

/* Row keys, in the order they are checked. */
typedef enum { F_NAME, F_PUBKEY, F_ADDR, F_PROFILE, F_META, F_NONE } s_field_t;
static const char *const s_fields[] = {"name", "pubkey", "addr", "profile", "meta"};
/* meta keys. */
typedef enum { M_DESCRIPTION, M_LABELS } s_meta_t;
static const char *const s_meta_fields[] = {"description", "labels"};

/* The row being read. Strings are NUL-free copies owned here until the row
 * is added (router_trust_add copies them again). */
typedef struct {
    size_t index;                                /* in the "peers" array */
    char *field[F_META];                         /* name, pubkey, addr, profile as read */
    char *description;                           /* meta.description, or NULL */
    router_label_t labels[ROUTER_PEER_LABELS_MAX]; /* meta.labels read so far */
    size_t nlabels;                              /* entries in labels */
    char *label_key;                             /* a label key awaiting its value */
    uint32_t seen;                               /* bit f: row key f appeared */
    uint32_t meta_seen;                          /* bit m: meta key m appeared */
    s_field_t at;                                /* row key whose value comes next */
    s_meta_t meta_at;                            /* meta key whose value comes next */
    char shown[ROUTER_JSONC_QUOTE_MAX + 16];     /* the row's name for errors, or "" */
    bool failed;                                 /* a problem was found; skipping to the row's end */
    bool capture_name;                           /* failed: the next row-level string is the name */
    char why[ROUTER_TRUST_ERR_MAX / 2];          /* the first problem */
} s_row_t;

typedef struct {
    router_trust_t *t;   /* being filled */
    char *err;           /* the caller's error buffer */
    size_t errcap;
    int depth;           /* containers open */
    bool seen_peers;     /* "peers" appeared */
    size_t rows;         /* rows started */
    s_row_t row;         /* the open row (depth >= S_AT_ROW) */
} s_reader_t;

static void s_row_clear(s_row_t *row)
{
    for (int f = 0; f < F_META; f++)
        free(row->field[f]);
    free(row->description);
    for (size_t i = 0; i < row->nlabels; i++) {
        free((char *) row->labels[i].key);
        free((char *) row->labels[i].value);
    }
    free(row->label_key);
    memset(row, 0, sizeof *row);
}

/* Notes the row's first problem and keeps reading to its end (to learn its
 * name); returns 1 so yajl goes on. */
static int s_row_fail(s_reader_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int s_row_fail(s_reader_t *r, const char *fmt, ...)
{
    if (r->row.failed)
        return 1;
    r->row.failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->row.why, sizeof r->row.why, fmt, ap);
    va_end(ap);
    return 1;
}

/* Stops the parse with the row's problem: "peers[i] "name": why". */
static int s_row_refuse(s_reader_t *r)
{
    router_jsonc_fail(r->err, r->errcap, "peers[%zu]%s%s: %s", r->row.index,
                      r->row.shown[0] ? " " : "", r->row.shown, r->row.why);
    return 0;
}

/* A copy of s[len], refusing NUL and lengths above max; NULL with the row
 * failed otherwise. */
static char *s_row_copy(s_reader_t *r, const char *what, const unsigned char *s, size_t len,
                        size_t max)
{
    if (len > max) {
        s_row_fail(r, "%s: %zu bytes, at most %zu allowed", what, len, max);
        return NULL;
    }
    if (memchr(s, '\0', len)) {
        s_row_fail(r, "%s: control characters are not allowed", what);
        return NULL;
    }
    char *d = malloc(len + 1);
    if (!d) {
        s_row_fail(r, "out of memory");
        return NULL;
    }
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

/* A value inside a row that already failed: only its name is still wanted. */
static int s_skip_value(s_reader_t *r, const router_jsonc_value_t *v)
{
    if (r->depth == S_AT_ROW && r->row.capture_name && v->type == ROUTER_JSONC_STRING &&
        !r->row.shown[0])
        router_jsonc_quote(v->s, v->len, r->row.shown, sizeof r->row.shown);
    if (r->depth == S_AT_ROW)
        r->row.capture_name = false;
    if (v->type == ROUTER_JSONC_OBJECT || v->type == ROUTER_JSONC_ARRAY) {
        if (++r->depth > S_AT_ROW + S_SKIP_DEPTH_MAX)
            return s_row_refuse(r);
    }
    return 1;
}

/* A value of a row key (depth S_AT_ROW). */
static int s_row_value(s_reader_t *r, const router_jsonc_value_t *v)
{
    s_row_t *row = &r->row;
    char got[ROUTER_JSONC_QUOTE_MAX + 16];
    router_jsonc_describe(v, got, sizeof got);
    if (row->at == F_META) {
        if (v->type != ROUTER_JSONC_OBJECT)
            return s_row_fail(r, "meta: expected an object, got %s", got);
        r->depth = S_AT_META;
        return 1;
    }
    if (row->at == F_NAME && v->type == ROUTER_JSONC_STRING)
        router_jsonc_quote(v->s, v->len, row->shown, sizeof row->shown);
    if (v->type != ROUTER_JSONC_STRING)
        return s_row_fail(r, "%s: expected a string, got %s", s_fields[row->at], got);
    static const size_t max[F_META] = {ROUTER_PEER_NAME_MAX, PROTO_PUBKEY_TEXT_LEN,
                                       ROUTER_PEER_ADDR_MAX, 16};
    /* Longer than allowed is reported by the row check, which names the
     * value better; only wildly long text is cut off here. */
    row->field[row->at] = s_row_copy(r, s_fields[row->at], v->s, v->len, 4 * max[row->at]);
    return 1;
}

/* A value of a meta key (depth S_AT_META). */
static int s_meta_value(s_reader_t *r, const router_jsonc_value_t *v)
{
    s_row_t *row = &r->row;
    char got[ROUTER_JSONC_QUOTE_MAX + 16];
    router_jsonc_describe(v, got, sizeof got);
    if (row->meta_at == M_LABELS) {
        if (v->type != ROUTER_JSONC_OBJECT)
            return s_row_fail(r, "meta.labels: expected an object of strings, got %s", got);
        r->depth = S_AT_LABELS;
        return 1;
    }
    if (v->type != ROUTER_JSONC_STRING)
        return s_row_fail(r, "meta.description: expected a string, got %s", got);
    row->description = s_row_copy(r, "meta.description", v->s, v->len,
                                  ROUTER_PEER_DESCRIPTION_MAX);
    return 1;
}

/* A label's value (depth S_AT_LABELS). */
static int s_label_value(s_reader_t *r, const router_jsonc_value_t *v)
{
    s_row_t *row = &r->row;
    char got[ROUTER_JSONC_QUOTE_MAX + 16], key[ROUTER_JSONC_QUOTE_MAX + 16];
    router_jsonc_describe(v, got, sizeof got);
    router_jsonc_quote((const unsigned char *) row->label_key, strlen(row->label_key), key,
                       sizeof key);
    if (v->type != ROUTER_JSONC_STRING)
        return s_row_fail(r, "meta.labels.%s: expected a string, got %s", key, got);
    char *value = s_row_copy(r, "meta.labels value", v->s, v->len, ROUTER_PEER_LABEL_VALUE_MAX);
    if (!value)
        return 1;
    row->labels[row->nlabels].key = row->label_key;
    row->labels[row->nlabels].value = value;
    row->nlabels++;
    row->label_key = NULL;
    return 1;
}

/* Every value in the document arrives here, objects and arrays included. */
static int s_on_value(void *ctx, const router_jsonc_value_t *v)
{
    s_reader_t *r = ctx;
    char got[ROUTER_JSONC_QUOTE_MAX + 16];
    if (r->depth >= S_AT_ROW && r->row.failed)
        return s_skip_value(r, v);
    switch (r->depth) {
    case 0:
        if (v->type == ROUTER_JSONC_OBJECT) {
            r->depth = S_AT_DOC;
            return 1;
        }
        router_jsonc_describe(v, got, sizeof got);
        return router_jsonc_fail(r->err, r->errcap, "the document: expected an object, got %s",
                                 got);
    case S_AT_DOC:
        if (v->type == ROUTER_JSONC_ARRAY) {
            r->depth = S_AT_PEERS;
            return 1;
        }
        router_jsonc_describe(v, got, sizeof got);
        return router_jsonc_fail(r->err, r->errcap, "peers: expected an array, got %s", got);
    case S_AT_PEERS:
        if (v->type != ROUTER_JSONC_OBJECT) {
            router_jsonc_describe(v, got, sizeof got);
            return router_jsonc_fail(r->err, r->errcap, "peers[%zu]: expected an object, got %s",
                                     r->rows, got);
        }
        if (r->rows >= ROUTER_TRUST_PEERS_MAX)
            return router_jsonc_fail(r->err, r->errcap, "peers[%zu]: more than %d peers",
                                     r->rows, ROUTER_TRUST_PEERS_MAX);
        s_row_clear(&r->row);
        r->row.index = r->rows++;
        r->row.at = F_NONE;
        r->depth = S_AT_ROW;
        return 1;
    }
    int depth = r->depth;
    int rc = depth == S_AT_ROW    ? s_row_value(r, v)
             : depth == S_AT_META ? s_meta_value(r, v)
                                  : s_label_value(r, v);
    /* A refused object or array is still open: skip it as part of the row. */
    if (r->row.failed && r->depth == depth &&
        (v->type == ROUTER_JSONC_OBJECT || v->type == ROUTER_JSONC_ARRAY))
        r->depth++;
    return rc;
}

/* Finds key[len] in names[n]; -1 when absent. */
static int s_lookup(const char *const *names, int n, const unsigned char *key, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && !memcmp(names[i], key, len))
            return i;
    return -1;
}

static int s_on_key(void *ctx, const unsigned char *k, size_t len)
{
    s_reader_t *r = ctx;
    s_row_t *row = &r->row;
    char shown[ROUTER_JSONC_QUOTE_MAX + 16];
    router_jsonc_quote(k, len, shown, sizeof shown);
    if (r->depth >= S_AT_ROW && row->failed) {
        if (r->depth == S_AT_ROW)
            row->capture_name = len == 4 && !memcmp(k, "name", 4);
        return 1;
    }
    switch (r->depth) {
    case S_AT_DOC:
        if (len != 5 || memcmp(k, "peers", 5) != 0)
            return router_jsonc_fail(r->err, r->errcap,
                                     "%s: unknown key (a trust store holds only \"peers\")", shown);
        if (r->seen_peers)
            return router_jsonc_fail(r->err, r->errcap, "peers: duplicate key");
        r->seen_peers = true;
        return 1;
    case S_AT_ROW: {
        int f = s_lookup(s_fields, F_NONE, k, len);
        if (f < 0)
            return s_row_fail(r, "%s: unknown key (known: name, pubkey, addr, profile, meta)",
                              shown);
        if (row->seen & (1u << f))
            return s_row_fail(r, "%s: duplicate key", s_fields[f]);
        row->seen |= 1u << f;
        row->at = (s_field_t) f;
        return 1;
    }
    case S_AT_META: {
        int m = s_lookup(s_meta_fields, 2, k, len);
        if (m < 0)
            return s_row_fail(r, "meta.%s: unknown key (known: description, labels)", shown);
        if (row->meta_seen & (1u << m))
            return s_row_fail(r, "meta.%s: duplicate key", s_meta_fields[m]);
        row->meta_seen |= 1u << m;
        row->meta_at = (s_meta_t) m;
        return 1;
    }
    case S_AT_LABELS:
        if (row->nlabels >= ROUTER_PEER_LABELS_MAX)
            return s_row_fail(r, "meta.labels: more than %d labels", ROUTER_PEER_LABELS_MAX);
        if (len == 0)
            return s_row_fail(r, "meta.labels: a key is empty");
        for (size_t i = 0; i < row->nlabels; i++)
            if (strlen(row->labels[i].key) == len && !memcmp(row->labels[i].key, k, len))
                return s_row_fail(r, "meta.labels: key %s appears twice", shown);
        row->label_key = s_row_copy(r, "meta.labels key", k, len, ROUTER_PEER_LABEL_KEY_MAX);
        return 1;
    }
    return 0;
}

/* The end of a row: check it as a whole and add it, or refuse the file. */
static int s_row_end(s_reader_t *r)
{
    s_row_t *row = &r->row;
    r->depth = S_AT_PEERS;
    if (row->failed)
        return s_row_refuse(r);
    for (int f = F_NAME; f < F_PROFILE; f++)
        if (!row->field[f]) {
            s_row_fail(r, "%s: missing", s_fields[f]);
            return s_row_refuse(r);
        }
    const char *text = row->field[F_PUBKEY];
    uint8_t pk[32];
    proto_pubkey_reason_t reason;
    if (proto_pubkey_parse_reason(text, strlen(text), pk, &reason) != 0) {
        char shown[ROUTER_JSONC_QUOTE_MAX + 16];
        router_jsonc_quote((const unsigned char *) text, strlen(text), shown, sizeof shown);
        s_row_fail(r, "pubkey: %s, got %s",
                   reason == PROTO_PUBKEY_NO_PREFIX  ? "expected \"ed25519:<base64>\""
                   : reason == PROTO_PUBKEY_WEAK     ? "not a full-order Ed25519 public key "
                                                       "(small-order, mixed-order or off the curve)"
                                                     : "expected \"ed25519:\" and 44 characters of "
                                                       "standard padded base64 (32 bytes)",
                   shown);
        return s_row_refuse(r);
    }
    router_peer_profile_t profile = ROUTER_PEER_PROFILE_KITH;
    if (row->field[F_PROFILE] &&
        router_peer_profile_parse(row->field[F_PROFILE], &profile) != 0) {
        char shown[ROUTER_JSONC_QUOTE_MAX + 16];
        router_jsonc_quote((const unsigned char *) row->field[F_PROFILE],
                           strlen(row->field[F_PROFILE]), shown, sizeof shown);
        s_row_fail(r, "profile: expected \"kith\" or \"meerkat\", got %s", shown);
        return s_row_refuse(r);
    }
    if (router_trust_add(r->t, row->field[F_NAME], pk, row->field[F_ADDR], row->description,
                         row->labels, row->nlabels, row->why, sizeof row->why) != 0) {
        row->failed = true;
        return s_row_refuse(r);
    }
    r->t->rows[r->t->count - 1]->profile = profile;
    s_row_clear(row);
    return 1;
}

static int s_on_end(void *ctx)
{
    s_reader_t *r = ctx;
    if (r->depth >= S_AT_ROW && r->row.failed && r->depth > S_AT_ROW) {
        r->depth--;
        return 1;
    }
    switch (r->depth) {
    case S_AT_ROW: return s_row_end(r);
    case S_AT_LABELS:
    case S_AT_META:
    case S_AT_PEERS:
    case S_AT_DOC: r->depth--; return 1;
    }
    return 0;
}

static const router_jsonc_reader_t s_trust_reader = {
    .value = s_on_value,
    .key = s_on_key,
    .end = s_on_end,
};

router_trust_t *router_trust_parse(const char *text, size_t len, char *err, size_t errcap)
{
    if (len > ROUTER_TRUST_FILE_MAX) {
        s_fail(err, errcap, "%zu bytes, more than the %u allowed", len, ROUTER_TRUST_FILE_MAX);
        return NULL;
    }
    s_reader_t *r = calloc(1, sizeof *r);
    router_trust_t *t = router_trust_new();
    if (!r || !t) {
        s_fail(err, errcap, "out of memory");
        goto fail;
    }
    r->t = t;
    r->err = err;
    r->errcap = errcap;
    if (router_jsonc_read(text, len, &s_trust_reader, r, err, errcap) != 0)
        goto fail;
    s_row_clear(&r->row);
    free(r);
    return t;
fail:
    if (r)
        s_row_clear(&r->row);
    free(r);
    router_trust_destroy(&t);
    return NULL;
}

router_trust_t *router_trust_load(const char *path, char *err, size_t errcap)
{
    char *text = NULL;
    size_t len = 0;
    unsigned mode = 0;
    if (router_statefile_read(path, ROUTER_TRUST_FILE_MAX, &text, &len, &mode, err, errcap) !=
        0) {
        if (errno != ENOENT)
            return NULL;
        router_trust_t *t = router_trust_new();
        if (!t)
            s_fail(err, errcap, "out of memory");
        return t;
    }
    router_trust_t *t = NULL;
    if (mode & 022) {
        s_fail(err, errcap,
               "%s is writable by group or others (mode %04o), so anyone could add a trusted "
               "peer; run: chmod go-w %s",
               path, mode, path);
    } else {
        char why[ROUTER_TRUST_ERR_MAX];
        t = router_trust_parse(text, len, why, sizeof why);
        if (!t)
            s_fail(err, errcap, "%s: %s; nothing was loaded: fix the file and retry", path, why);
    }
    free(text);
    return t;
}

/* ------------------------------------------------------------ reload diff */

/* Appends "<sep><name>" to the diff's text while there is room for it and
 * a final "…and N more"; returns false once it is full. */
static bool s_diff_put(router_trust_diff_t *d, size_t *len, const char *sep, const char *name,
                       const char *note)
{
    size_t room = sizeof d->text - *len;
    size_t need = strlen(sep) + strlen(name) + (note ? strlen(note) + 3 : 0);
    if (need + 32 > room)
        return false;
    *len += (size_t) snprintf(d->text + *len, room, note ? "%s%s (%s)" : "%s%s", sep, name,
                              note ? note : "");
    return true;
}

static const char *s_peer_change(const router_peer_t *a, const router_peer_t *b)
{
    if (strcmp(a->name, b->name) != 0)
        return "name";
    if (strcmp(a->addr, b->addr) != 0)
        return "addr";
    if (a->profile != b->profile)
        return "profile";
    bool same = (a->description == NULL) == (b->description == NULL) &&
                (!a->description || strcmp(a->description, b->description) == 0) &&
                a->nlabels == b->nlabels;
    for (size_t i = 0; same && i < a->nlabels; i++)
        same = !strcmp(a->labels[i].key, b->labels[i].key) &&
               !strcmp(a->labels[i].value, b->labels[i].value);
    return same ? NULL : "meta";
}

/* One pass of the diff: rows of `from` judged against `to`. */
static void s_diff_pass(const router_trust_t *from, const router_trust_t *to, int what,
                        router_trust_diff_t *d, size_t *len, size_t *cut)
{
    static const char *const verbs[] = {"added ", "removed ", "changed "};
    bool first = true;
    for (size_t i = 0; i < from->count; i++) {
        const router_peer_t *p = from->rows[i];
        const router_peer_t *q = router_trust_by_pubkey(to, p->pk);
        const char *note = NULL;
        if (what == 2) {
            if (!q || !(note = s_peer_change(q, p)))
                continue;
            d->changed++;
        } else if (q) {
            continue;
        } else if (what == 0) {
            d->added++;
        } else {
            d->removed++;
        }
        char sep[16];
        snprintf(sep, sizeof sep, "%s%s", first ? (*len ? "; " : "") : ", ",
                 first ? verbs[what] : "");
        if (*cut || !s_diff_put(d, len, sep, p->name, note))
            (*cut)++;
        else
            first = false;
    }
}

void router_trust_diff(const router_trust_t *before, const router_trust_t *after,
                       router_trust_diff_t *out)
{
    memset(out, 0, sizeof *out);
    size_t len = 0, cut = 0;
    s_diff_pass(after, before, 0, out, &len, &cut);
    s_diff_pass(before, after, 1, out, &len, &cut);
    s_diff_pass(after, before, 2, out, &len, &cut);
    if (cut)
        snprintf(out->text + len, sizeof out->text - len, " …and %zu more", cut);
    else if (len == 0)
        snprintf(out->text, sizeof out->text, "no change");
}

/* ------------------------------------------------------------ the writer */

/* One row as the file (and GET /api/peers) writes it. */
static void s_peer_gen(yajl_gen g, const router_peer_t *p, bool with_peer_id)
{
    char pub[PROTO_PUBKEY_TEXT_CAP], uuid[PROTO_UUID_TEXT_CAP];
    (void) proto_pubkey_format(p->pk, pub, sizeof pub);
    yajl_gen_map_open(g);
    router_jsonc_gen_text(g, "name");
    router_jsonc_gen_text(g, p->name);
    router_jsonc_gen_text(g, "pubkey");
    router_jsonc_gen_text(g, pub);
    if (with_peer_id) {
        proto_uuid_format(p->peer_id, uuid);
        router_jsonc_gen_text(g, "peer_id");
        router_jsonc_gen_text(g, uuid);
    }
    router_jsonc_gen_text(g, "addr");
    router_jsonc_gen_text(g, p->addr);
    if (p->profile != ROUTER_PEER_PROFILE_KITH) {
        router_jsonc_gen_text(g, "profile");
        router_jsonc_gen_text(g, router_peer_profile_str(p->profile));
    }
    if (p->description || p->nlabels) {
        router_jsonc_gen_text(g, "meta");
        yajl_gen_map_open(g);
        if (p->description) {
            router_jsonc_gen_text(g, "description");
            router_jsonc_gen_text(g, p->description);
        }
        if (p->nlabels) {
            router_jsonc_gen_text(g, "labels");
            yajl_gen_map_open(g);
            for (size_t j = 0; j < p->nlabels; j++) {
                router_jsonc_gen_text(g, p->labels[j].key);
                router_jsonc_gen_text(g, p->labels[j].value);
            }
            yajl_gen_map_close(g);
        }
        yajl_gen_map_close(g);
    }
    yajl_gen_map_close(g);
}

char *router_peer_to_json(const router_peer_t *p)
{
    yajl_gen g = router_jsonc_gen_new();
    if (!g)
        return NULL;
    s_peer_gen(g, p, true);
    return router_jsonc_gen_finish(&g);
}

char *router_trust_to_json(const router_trust_t *t, bool with_peer_id)
{
    yajl_gen g = router_jsonc_gen_new();
    if (!g)
        return NULL;
    yajl_gen_map_open(g);
    router_jsonc_gen_text(g, "peers");
    yajl_gen_array_open(g);
    for (size_t i = 0; i < t->count; i++)
        s_peer_gen(g, t->rows[i], with_peer_id);
    yajl_gen_array_close(g);
    yajl_gen_map_close(g);
    return router_jsonc_gen_finish(&g);
}

int router_trust_save(const router_trust_t *t, const char *path, char *err, size_t errcap)
{
    char *json = router_trust_to_json(t, false);
    if (!json)
        return s_fail(err, errcap, "%s: out of memory", path);
    int rc = router_statefile_replace(path, json, strlen(json), 0600, err, errcap);
    free(json);
    return rc;
}
