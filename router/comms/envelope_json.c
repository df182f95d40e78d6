/* router/comms/envelope_json.c — JSON ⇄ CBOR values and JSON ⇄ envelopes with
 * yajl; see envelope_json.h for the mapping. */
#include "router/comms/envelope_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <yajl/yajl_parse.h>

#include "proto/cbor_canon.h"

#define S_BYTES_KEY "$bytes"

static void s_err(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void s_err(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (!err || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* ================================================================ JSON → CBOR */

/* One open array or object while parsing. */
typedef struct {
    cbor_item_t *container; /* indefinite array or map being filled */
    cbor_item_t *key;       /* objects: the key waiting for its value */
} s_frame_t;

/* Parser state shared by the yajl callbacks. */
typedef struct {
    s_frame_t stack[PROTO_ENVELOPE_DEPTH_MAX]; /* open containers */
    unsigned depth;                            /* entries used in stack */
    size_t items;                              /* values and keys so far */
    cbor_item_t *root;                         /* the finished value */
    char *err;                                 /* where to explain a failure */
    size_t errcap;                             /* bytes at err */
} s_parse_t;

/* Places a finished value (taken) in its parent or as the root. */
static int s_add(s_parse_t *ps, cbor_item_t *item)
{
    int ok;
    if (!item) {
        s_err(ps->err, ps->errcap, "out of memory");
        return 0;
    }
    if (++ps->items > PROTO_ENVELOPE_ITEMS_MAX) {
        cbor_decref(&item);
        s_err(ps->err, ps->errcap, "more than %u values", PROTO_ENVELOPE_ITEMS_MAX);
        return 0;
    }
    if (ps->depth == 0) {
        ps->root = item;
        return 1;
    }
    s_frame_t *top = &ps->stack[ps->depth - 1];
    if (cbor_isa_array(top->container)) {
        ok = cbor_array_push(top->container, item);
    } else {
        ok = cbor_map_add(top->container, (struct cbor_pair){.key = top->key, .value = item});
        /* The map holds the key now (cbor_decref nulls the pointer only
         * when it frees): forget it, or a later refusal while this object
         * is still open ({"a":1 then EOF) would drop the map's reference
         * and free the key twice. */
        cbor_decref(&top->key);
        top->key = NULL;
    }
    cbor_decref(&item);
    if (!ok)
        s_err(ps->err, ps->errcap, "out of memory");
    return ok;
}

static int s_on_null(void *ctx) { return s_add(ctx, cbor_new_null()); }

static int s_on_bool(void *ctx, int v) { return s_add(ctx, cbor_build_bool(v != 0)); }

/* JSON numbers: integers when written without '.', 'e' or 'E' (the full
 * CBOR range, -2^64 … 2^64-1), finite doubles otherwise (strtod rounding;
 * like the formatting below it assumes the C locale, which kith never
 * changes). */
static int s_on_number(void *ctx, const char *s, size_t n)
{
    s_parse_t *ps = ctx;
    char buf[512];
    if (n >= sizeof buf) {
        s_err(ps->err, ps->errcap, "number too long");
        return 0;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (strpbrk(buf, ".eE")) {
        errno = 0;
        double d = strtod(buf, NULL);
        if (errno == ERANGE && (d > 1 || d < -1)) {
            s_err(ps->err, ps->errcap, "number %s is out of range", buf);
            return 0;
        }
        return s_add(ps, cbor_build_float8(d));
    }
    int neg = buf[0] == '-';
    uint64_t mag = 0;
    for (const char *p = buf + neg; *p; p++) {
        unsigned digit = (unsigned) (*p - '0');
        if (mag > (UINT64_MAX - digit) / 10) {
            /* 2^64 itself is the most negative CBOR integer. */
            if (neg && !strcmp(buf + 1, "18446744073709551616"))
                return s_add(ps, cbor_build_negint64(UINT64_MAX));
            s_err(ps->err, ps->errcap, "integer %s is out of range", buf);
            return 0;
        }
        mag = mag * 10 + digit;
    }
    if (neg && mag > 0)
        return s_add(ps, cbor_build_negint64(mag - 1));
    return s_add(ps, cbor_build_uint64(mag));
}

static int s_on_string(void *ctx, const unsigned char *s, size_t n)
{
    return s_add(ctx, cbor_build_stringn((const char *) s, n));
}

static int s_open(s_parse_t *ps, cbor_item_t *container)
{
    if (!container) {
        s_err(ps->err, ps->errcap, "out of memory");
        return 0;
    }
    if (ps->depth == PROTO_ENVELOPE_DEPTH_MAX) {
        cbor_decref(&container);
        s_err(ps->err, ps->errcap, "nested deeper than %d", PROTO_ENVELOPE_DEPTH_MAX);
        return 0;
    }
    ps->stack[ps->depth].container = container;
    ps->stack[ps->depth].key = NULL;
    ps->depth++;
    return 1;
}

static int s_on_start_map(void *ctx) { return s_open(ctx, cbor_new_indefinite_map()); }
static int s_on_start_array(void *ctx) { return s_open(ctx, cbor_new_indefinite_array()); }

static int s_on_key(void *ctx, const unsigned char *s, size_t n)
{
    s_parse_t *ps = ctx;
    s_frame_t *top = &ps->stack[ps->depth - 1];
    if (++ps->items > PROTO_ENVELOPE_ITEMS_MAX) {
        s_err(ps->err, ps->errcap, "more than %u values", PROTO_ENVELOPE_ITEMS_MAX);
        return 0;
    }
    top->key = cbor_build_stringn((const char *) s, n);
    if (!top->key)
        s_err(ps->err, ps->errcap, "out of memory");
    return top->key != NULL;
}

/* {"$bytes": "<base64>"} becomes a byte string; returns the replacement,
 * the map itself when it is not that form, or NULL (with err) when the
 * base64 is bad. Takes map. */
static cbor_item_t *s_maybe_bytes(s_parse_t *ps, cbor_item_t *map)
{
    if (cbor_map_size(map) != 1)
        return map;
    struct cbor_pair *pair = cbor_map_handle(map);
    if (cbor_string_length(pair->key) != strlen(S_BYTES_KEY) ||
        memcmp(cbor_string_handle(pair->key), S_BYTES_KEY, strlen(S_BYTES_KEY)) != 0)
        return map;
    cbor_item_t *out = NULL;
    const cbor_item_t *v = pair->value;
    size_t n = cbor_isa_string(v) ? cbor_string_length(v) : 0;
    uint8_t *bin = malloc(n / 4 * 3 + 3);
    size_t bin_len = 0;
    const char *end = NULL;
    if (!bin) {
        s_err(ps->err, ps->errcap, "out of memory"); /* ours, not the text's fault */
    } else if (!cbor_isa_string(v) ||
               sodium_base642bin(bin, n / 4 * 3 + 3, (const char *) cbor_string_handle(v), n, NULL, &bin_len,
                                 &end, sodium_base64_VARIANT_ORIGINAL) != 0 ||
               end != (const char *) cbor_string_handle(v) + n) {
        s_err(ps->err, ps->errcap, "\"$bytes\" must be a string of standard padded base64");
    } else {
        out = cbor_build_bytestring(bin, bin_len);
        if (!out)
            s_err(ps->err, ps->errcap, "out of memory");
    }
    free(bin);
    cbor_decref(&map);
    return out;
}

static int s_close(s_parse_t *ps)
{
    s_frame_t *top = &ps->stack[--ps->depth];
    cbor_item_t *item = top->container;
    top->container = NULL;
    if (cbor_isa_map(item)) {
        item = s_maybe_bytes(ps, item);
        if (!item)
            return 0;
    }
    return s_add(ps, item);
}

static int s_on_end(void *ctx) { return s_close(ctx); }

static const yajl_callbacks s_callbacks = {
    .yajl_null = s_on_null,
    .yajl_boolean = s_on_bool,
    .yajl_number = s_on_number,
    .yajl_string = s_on_string,
    .yajl_start_map = s_on_start_map,
    .yajl_map_key = s_on_key,
    .yajl_end_map = s_on_end,
    .yajl_start_array = s_on_start_array,
    .yajl_end_array = s_on_end,
};

cbor_item_t *router_json_to_cbor(const char *json, size_t len, char *err, size_t errcap)
{
    s_parse_t ps;
    memset(&ps, 0, sizeof ps);
    ps.err = err;
    ps.errcap = errcap;
    if (err && errcap)
        err[0] = '\0';
    if (len > ROUTER_JSON_MAX) {
        s_err(err, errcap, "JSON text larger than %u bytes", ROUTER_JSON_MAX);
        return NULL;
    }
    yajl_handle h = yajl_alloc(&s_callbacks, NULL, &ps);
    if (!h) {
        s_err(err, errcap, "out of memory");
        return NULL;
    }
    yajl_status st = yajl_parse(h, (const unsigned char *) json, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st != yajl_status_ok) {
        /* A callback's own message wins over yajl's generic one. */
        if (st == yajl_status_error && (!err || !err[0])) {
            unsigned char *msg = yajl_get_error(h, 0, (const unsigned char *) json, len);
            s_err(err, errcap, "invalid JSON: %s", msg ? (const char *) msg : "parse error");
            if (msg)
                yajl_free_error(h, msg);
        } else if (st == yajl_status_client_canceled && err && !err[0]) {
            s_err(err, errcap, "invalid JSON value");
        }
        while (ps.depth > 0) {
            s_frame_t *f = &ps.stack[--ps.depth];
            if (f->key)
                cbor_decref(&f->key);
            cbor_decref(&f->container);
        }
        if (ps.root)
            cbor_decref(&ps.root);
    }
    yajl_free(h);
    return ps.root;
}

/* ================================================================ CBOR → JSON */

/* The shortest decimal that reads back as exactly v, with a '.' or an
 * exponent: plain notation for ordinary magnitudes (100000.0, not 1e+05). */
static void s_format_double(double v, char *out, size_t cap)
{
    double a = v < 0 ? -v : v;
    int found = 0;
    if (a == 0 || (a >= 1e-4 && a < 1e16))
        for (int prec = 0; prec <= 24 && !found; prec++) {
            snprintf(out, cap, "%.*f", prec, v);
            found = strtod(out, NULL) == v;
        }
    for (int prec = 1; prec <= 17 && !found; prec++) {
        snprintf(out, cap, "%.*e", prec - 1, v);
        found = strtod(out, NULL) == v;
    }
    if (strspn(out, "-0123456789") == strlen(out))
        strncat(out, ".0", cap - strlen(out) - 1);
}

/* A yajl status as this file's return: the generator here never nests past
 * its limit nor writes a non-text key, so any failure is its buffer's
 * allocation (ROUTER_JSON_NO_MEMORY). */
static int s_yajl(yajl_gen_status st)
{
    if (st == yajl_gen_status_ok)
        return 0;
    errno = ENOMEM;
    return ROUTER_JSON_NO_MEMORY;
}

/* A value with no JSON form (ROUTER_JSON_NO_FORM), with errno saying so. */
static int s_no_form(void)
{
    errno = EINVAL;
    return ROUTER_JSON_NO_FORM;
}

static int s_no_memory(void)
{
    errno = ENOMEM;
    return ROUTER_JSON_NO_MEMORY;
}

static int s_gen_text(yajl_gen g, const cbor_item_t *item)
{
    return s_yajl(yajl_gen_string(g, cbor_string_handle(item), cbor_string_length(item)));
}

static int s_gen_bytes(yajl_gen g, const uint8_t *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(cap);
    if (!b64)
        return s_no_memory();
    sodium_bin2base64(b64, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    int rc = s_yajl(yajl_gen_map_open(g));
    if (rc == 0)
        rc = s_yajl(yajl_gen_string(g, (const unsigned char *) S_BYTES_KEY, strlen(S_BYTES_KEY)));
    if (rc == 0)
        rc = s_yajl(yajl_gen_string(g, (const unsigned char *) b64, strlen(b64)));
    if (rc == 0)
        rc = s_yajl(yajl_gen_map_close(g));
    free(b64);
    return rc;
}

static int s_gen_uuid(yajl_gen g, const uint8_t id[PROTO_UUID_LEN])
{
    char text[PROTO_UUID_TEXT_CAP];
    proto_uuid_format(id, text);
    return s_yajl(yajl_gen_string(g, (const unsigned char *) text, PROTO_UUID_TEXT_LEN));
}

/* Orders text keys as canonical CBOR does: shorter first, then bytewise. */
static int s_key_cmp(const void *a, const void *b)
{
    const cbor_item_t *x = ((const struct cbor_pair *) a)->key, *y = ((const struct cbor_pair *) b)->key;
    size_t lx = cbor_string_length(x), ly = cbor_string_length(y);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return memcmp(cbor_string_handle(x), cbor_string_handle(y), lx);
}

/* A map with its keys in canonical order, so the same envelope always
 * prints the same way whatever order its sender used. `first`, when not
 * NULL, is written before the others (kind's "type"). `special`, when not
 * NULL, may write a pair's value itself (returns 0) or decline (1), or fail
 * (a negative return as router_cbor_to_json's). */
static int s_gen_pairs(yajl_gen g, const cbor_item_t *map, const char *first,
                       int (*special)(yajl_gen, const struct cbor_pair *));

static int s_gen_map(yajl_gen g, const cbor_item_t *map, const char *first)
{
    return s_gen_pairs(g, map, first, NULL);
}

int router_cbor_to_json(yajl_gen g, const cbor_item_t *item)
{
    char num[64];
    switch (cbor_typeof(item)) {
    case CBOR_TYPE_UINT:
        snprintf(num, sizeof num, "%" PRIu64, cbor_get_int(item));
        return s_yajl(yajl_gen_number(g, num, strlen(num)));
    case CBOR_TYPE_NEGINT: {
        uint64_t v = cbor_get_int(item); /* the value is -1 - v */
        if (v == UINT64_MAX)
            snprintf(num, sizeof num, "-18446744073709551616");
        else
            snprintf(num, sizeof num, "-%" PRIu64, v + 1);
        return s_yajl(yajl_gen_number(g, num, strlen(num)));
    }
    case CBOR_TYPE_BYTESTRING:
        if (!cbor_bytestring_is_definite(item))
            return s_no_form();
        return s_gen_bytes(g, cbor_bytestring_handle(item), cbor_bytestring_length(item));
    case CBOR_TYPE_STRING:
        return cbor_string_is_definite(item) ? s_gen_text(g, item) : s_no_form();
    case CBOR_TYPE_ARRAY: {
        size_t n = cbor_array_size(item);
        cbor_item_t **elems = cbor_array_handle(item);
        int rc = s_yajl(yajl_gen_array_open(g));
        for (size_t i = 0; rc == 0 && i < n; i++)
            rc = router_cbor_to_json(g, elems[i]);
        return rc == 0 ? s_yajl(yajl_gen_array_close(g)) : rc;
    }
    case CBOR_TYPE_MAP:
        return s_gen_map(g, item, NULL);
    case CBOR_TYPE_TAG:
        return s_no_form();
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_ctrl_is_ctrl(item)) {
            switch (cbor_ctrl_value(item)) {
            case CBOR_CTRL_FALSE: return s_yajl(yajl_gen_bool(g, 0));
            case CBOR_CTRL_TRUE:  return s_yajl(yajl_gen_bool(g, 1));
            case CBOR_CTRL_NULL:  return s_yajl(yajl_gen_null(g));
            default:              return s_no_form();
            }
        } else {
            double v = cbor_float_get_float(item);
            if (v != v || v - v != 0)
                return s_no_form();
            s_format_double(v, num, sizeof num);
            return s_yajl(yajl_gen_number(g, num, strlen(num)));
        }
    }
    return s_no_form();
}

static int s_gen_pairs(yajl_gen g, const cbor_item_t *map, const char *first,
                       int (*special)(yajl_gen, const struct cbor_pair *))
{
    size_t n = cbor_map_size(map);
    int rc = ROUTER_JSON_NO_FORM;
    for (size_t i = 0; i < n; i++)
        if (!cbor_isa_string(cbor_map_handle(map)[i].key) || !cbor_string_is_definite(cbor_map_handle(map)[i].key))
            return s_no_form();
    /* A map whose only key is "$bytes" would read back as a byte string. */
    if (n == 1 && cbor_string_length(cbor_map_handle(map)[0].key) == strlen(S_BYTES_KEY) &&
        !memcmp(cbor_string_handle(cbor_map_handle(map)[0].key), S_BYTES_KEY, strlen(S_BYTES_KEY)))
        return s_no_form();
    struct cbor_pair *sorted = n ? malloc(n * sizeof *sorted) : NULL;
    if (n && !sorted)
        return s_no_memory();
    if (n)
        memcpy(sorted, cbor_map_handle(map), n * sizeof *sorted);
    if (n > 1)
        qsort(sorted, n, sizeof *sorted, s_key_cmp);
    if ((rc = s_yajl(yajl_gen_map_open(g))) != 0)
        goto done;
    for (int pass = first ? 0 : 1; pass < 2; pass++)
        for (size_t i = 0; i < n; i++) {
            const cbor_item_t *k = sorted[i].key;
            int is_first = first && cbor_string_length(k) == strlen(first) &&
                           !memcmp(cbor_string_handle(k), first, strlen(first));
            if (is_first != (pass == 0))
                continue;
            if ((rc = s_gen_text(g, k)) != 0)
                goto done;
            int r = special ? special(g, &sorted[i]) : 1;
            if (r < 0) {
                rc = r;
                goto done;
            }
            if (r > 0 && (rc = router_cbor_to_json(g, sorted[i].value)) != 0)
                goto done;
        }
    rc = s_yajl(yajl_gen_map_close(g));
done:
    free(sorted);
    return rc;
}

/* ================================================================ envelopes */

/* map[name] in a map with text keys; NULL when absent. */
static cbor_item_t *s_get(const cbor_item_t *map, const char *name, struct cbor_pair **pair_out)
{
    size_t n = cbor_map_size(map), len = strlen(name);
    struct cbor_pair *pairs = cbor_map_handle(map);
    for (size_t i = 0; i < n; i++)
        if (cbor_isa_string(pairs[i].key) && cbor_string_length(pairs[i].key) == len &&
            memcmp(cbor_string_handle(pairs[i].key), name, len) == 0) {
            if (pair_out)
                *pair_out = &pairs[i];
            return pairs[i].value;
        }
    return NULL;
}

/* True when kind.type is one whose in_reply_to is a UUID. */
static int s_has_uuid_reply(const cbor_item_t *kind)
{
    const cbor_item_t *type = s_get(kind, "type", NULL);
    if (!type || !cbor_isa_string(type))
        return 0;
    size_t n = cbor_string_length(type);
    const char *t = (const char *) cbor_string_handle(type);
    return (n == 8 && !memcmp(t, "response", 8)) || (n == 3 && !memcmp(t, "ack", 3));
}

/* A text field of the top-level JSON object, or NULL with err set. */
static const cbor_item_t *s_text_field(const cbor_item_t *root, const char *name, char *err, size_t errcap)
{
    const cbor_item_t *v = s_get(root, name, NULL);
    if (v && !cbor_isa_string(v)) {
        s_err(err, errcap, "\"%s\" must be a string", name);
        return NULL;
    }
    return v;
}

int router_envelope_from_json(const char *json, size_t len, const uint8_t from[PROTO_PUBKEY_LEN],
                              proto_envelope_t **out, char *err, size_t errcap)
{
    static const char *const known[] = {"id", "from", "to", "kind", "sig", "signature_valid", "signature_error"};
    uint8_t id[PROTO_UUID_LEN], to[PROTO_PUBKEY_LEN], claimed[PROTO_PUBKEY_LEN];
    int have_id = 0;
    proto_envelope_reason_t why;
    proto_pubkey_reason_t kwhy;
    cbor_item_t *kind = NULL;

    *out = NULL;
    cbor_item_t *root = router_json_to_cbor(json, len, err, errcap);
    if (!root)
        return -1;
    if (!cbor_isa_map(root)) {
        s_err(err, errcap, "the envelope must be a JSON object");
        goto fail;
    }
    size_t n = cbor_map_size(root);
    struct cbor_pair *pairs = cbor_map_handle(root);
    for (size_t i = 0; i < n; i++) {
        size_t k = 0, nk = sizeof known / sizeof known[0];
        const char *key = (const char *) cbor_string_handle(pairs[i].key);
        size_t key_len = cbor_string_length(pairs[i].key);
        while (k < nk && !(strlen(known[k]) == key_len && !memcmp(known[k], key, key_len)))
            k++;
        if (k == nk) {
            s_err(err, errcap, "unknown key \"%.*s\" (expected id, from, to, kind)", (int) (key_len > 64 ? 64 : key_len),
                  key);
            goto fail;
        }
        for (size_t j = 0; j < i; j++)
            if (cbor_string_length(pairs[j].key) == key_len && !memcmp(cbor_string_handle(pairs[j].key), key, key_len)) {
                s_err(err, errcap, "duplicate key \"%s\"", known[k]);
                goto fail;
            }
    }

    const cbor_item_t *v;
    if ((v = s_text_field(root, "to", err, errcap)) == NULL) {
        if (!s_get(root, "to", NULL))
            s_err(err, errcap, "missing \"to\" (the recipient's key, \"ed25519:…\")");
        goto fail;
    }
    if (proto_pubkey_parse_reason((const char *) cbor_string_handle(v), cbor_string_length(v), to, &kwhy) != 0) {
        s_err(err, errcap, "\"to\" is not a usable ed25519 key (%s)", proto_pubkey_reason_str(kwhy));
        goto fail;
    }
    if (s_get(root, "from", NULL)) {
        if ((v = s_text_field(root, "from", err, errcap)) == NULL)
            goto fail;
        if (proto_pubkey_parse_reason((const char *) cbor_string_handle(v), cbor_string_length(v), claimed, &kwhy) != 0 ||
            sodium_memcmp(claimed, from, PROTO_PUBKEY_LEN) != 0) {
            s_err(err, errcap, "\"from\" is not this node's key; leave it out to sign as this node");
            goto fail;
        }
    }
    if (s_get(root, "id", NULL)) {
        if ((v = s_text_field(root, "id", err, errcap)) == NULL)
            goto fail;
        if (proto_uuid_parse((const char *) cbor_string_handle(v), cbor_string_length(v), id) != 0) {
            s_err(err, errcap, "\"id\" is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
            goto fail;
        }
        have_id = 1;
    }
    struct cbor_pair *kind_pair = NULL;
    if (!s_get(root, "kind", &kind_pair)) {
        s_err(err, errcap, "missing \"kind\" (an object with \"type\")");
        goto fail;
    }
    if (!cbor_isa_map(kind_pair->value)) {
        s_err(err, errcap, "\"kind\" must be an object");
        goto fail;
    }
    /* in_reply_to is written as a UUID string; on the wire it is 16 bytes. */
    struct cbor_pair *irt = NULL;
    if (s_has_uuid_reply(kind_pair->value) && s_get(kind_pair->value, "in_reply_to", &irt) &&
        cbor_isa_string(irt->value)) {
        uint8_t reply[PROTO_UUID_LEN];
        if (proto_uuid_parse((const char *) cbor_string_handle(irt->value), cbor_string_length(irt->value), reply) != 0) {
            s_err(err, errcap, "kind.in_reply_to is not a UUID");
            goto fail;
        }
        cbor_item_t *bytes = cbor_build_bytestring(reply, sizeof reply);
        if (!bytes) {
            s_err(err, errcap, "out of memory");
            goto fail;
        }
        cbor_decref(&irt->value);
        irt->value = bytes;
    }
    kind = cbor_incref(kind_pair->value);
    *out = proto_envelope_new(have_id ? id : NULL, from, to, &kind, &why);
    if (!*out) {
        s_err(err, errcap, "kind: %s", proto_envelope_reason_str(why));
        goto fail;
    }
    cbor_decref(&root);
    return 0;
fail:
    cbor_decref(&root);
    return -1;
}

static int s_gen_key(yajl_gen g, const char *key)
{
    return s_yajl(yajl_gen_string(g, (const unsigned char *) key, strlen(key)));
}

static int s_gen_cstr(yajl_gen g, const char *s)
{
    return s_yajl(yajl_gen_string(g, (const unsigned char *) s, strlen(s)));
}

/* kind.in_reply_to of a response or ack prints as a UUID; returns 1 to let
 * the value print normally, 0 when written here, ROUTER_JSON_NO_MEMORY on
 * failure. */
static int s_gen_reply_uuid(yajl_gen g, const struct cbor_pair *pair)
{
    const cbor_item_t *k = pair->key;
    if (cbor_string_length(k) != 11 || memcmp(cbor_string_handle(k), "in_reply_to", 11) != 0)
        return 1;
    return s_gen_uuid(g, cbor_bytestring_handle(pair->value));
}

/* The kind object: "type" first, then the other fields in canonical order. */
static int s_gen_kind(yajl_gen g, const proto_envelope_t *env)
{
    const cbor_item_t *map = proto_envelope_kind_map(env);
    return s_gen_pairs(g, map, "type", s_has_uuid_reply(map) ? s_gen_reply_uuid : NULL);
}

int router_envelope_kind_to_json(yajl_gen g, const proto_envelope_t *env)
{
    return s_gen_kind(g, env);
}

int router_envelope_to_json(const proto_envelope_t *env, const proto_envelope_reason_t *verdict, int pretty,
                            char **out, size_t *len)
{
    char key[PROTO_PUBKEY_TEXT_CAP];
    char sig[sodium_base64_ENCODED_LEN(PROTO_SIG_LEN, sodium_base64_VARIANT_ORIGINAL)];
    const unsigned char *buf = NULL;
    size_t buf_len = 0;
    int rc;
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return s_no_memory();
    if (pretty)
        yajl_gen_config(g, yajl_gen_beautify, 1);
    if ((rc = s_yajl(yajl_gen_map_open(g))) != 0 || (rc = s_gen_key(g, "id")) != 0 ||
        (rc = s_gen_uuid(g, proto_envelope_id(env))) != 0)
        goto done;
    proto_pubkey_format(proto_envelope_from(env), key, sizeof key);
    if ((rc = s_gen_key(g, "from")) != 0 || (rc = s_gen_cstr(g, key)) != 0)
        goto done;
    proto_pubkey_format(proto_envelope_to(env), key, sizeof key);
    if ((rc = s_gen_key(g, "to")) != 0 || (rc = s_gen_cstr(g, key)) != 0)
        goto done;
    if ((rc = s_gen_key(g, "kind")) != 0 || (rc = s_gen_kind(g, env)) != 0)
        goto done;
    sodium_bin2base64(sig, sizeof sig, proto_envelope_sig(env), PROTO_SIG_LEN, sodium_base64_VARIANT_ORIGINAL);
    if ((rc = s_gen_key(g, "sig")) != 0 || (rc = s_gen_cstr(g, sig)) != 0)
        goto done;
    if (verdict) {
        if ((rc = s_gen_key(g, "signature_valid")) != 0 || (rc = s_yajl(yajl_gen_bool(g, *verdict == PROTO_ENV_OK))) != 0)
            goto done;
        if (*verdict != PROTO_ENV_OK &&
            ((rc = s_gen_key(g, "signature_error")) != 0 ||
             (rc = s_gen_cstr(g, proto_envelope_reason_str(*verdict))) != 0))
            goto done;
    }
    if ((rc = s_yajl(yajl_gen_map_close(g))) != 0 || (rc = s_yajl(yajl_gen_get_buf(g, &buf, &buf_len))) != 0)
        goto done;
    while (buf_len > 0 && buf[buf_len - 1] == '\n')
        buf_len--; /* the beautifier ends with one */
    *out = malloc(buf_len + 1);
    if (!*out) {
        rc = s_no_memory();
        goto done;
    }
    memcpy(*out, buf, buf_len);
    (*out)[buf_len] = '\0';
    *len = buf_len;
    rc = 0;
done:
    yajl_gen_free(g);
    return rc;
}
