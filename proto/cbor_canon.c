/* proto/cbor_canon.c — bounded CBOR well-formedness check, strict loader and
 * canonical encoder; see cbor_canon.h for the rules. */
#include "proto/cbor_canon.h"

#include <stdlib.h>
#include <string.h>

#include "proto/utf8.h"

const char *proto_cbor_reason_str(proto_cbor_reason_t r)
{
    switch (r) {
    case PROTO_CBOR_OK:             return "ok";
    case PROTO_CBOR_TRUNCATED:      return "truncated";
    case PROTO_CBOR_TRAILING:       return "trailing_bytes";
    case PROTO_CBOR_ILL_FORMED:     return "ill_formed";
    case PROTO_CBOR_INDEFINITE:     return "indefinite_length";
    case PROTO_CBOR_BAD_UTF8:       return "bad_utf8";
    case PROTO_CBOR_TOO_DEEP:       return "too_deep";
    case PROTO_CBOR_TOO_MANY_ITEMS: return "too_many_items";
    case PROTO_CBOR_UNSUPPORTED:    return "unsupported";
    case PROTO_CBOR_DUPLICATE_KEY:  return "duplicate_key";
    case PROTO_CBOR_TOO_LARGE:      return "too_large";
    case PROTO_CBOR_NO_MEMORY:      return "no_memory";
    }
    return "unknown";
}

/* ================================================================ check */

/* One open container on the check's stack. */
typedef struct {
    uint64_t left;      /* items still expected (definite containers) */
    int indefinite;     /* ends at a break byte instead of a count */
    int chunk_major;    /* indefinite strings: the major type of every chunk; else -1 */
} s_open_t;

/* libcbor 0.8 refuses a tag 6..20 in its one-byte head (c6..d4, "unassigned"
 * to it) but loads the same tag in a longer head, which the canonical
 * encoder then writes as c6..d4: for_libcbor refuses these tags in any head
 * (UNSUPPORTED, once the input is known well-formed), so what loads always
 * re-encodes to bytes that load. */
#define S_LIBCBOR_TAG_MIN 6
#define S_LIBCBOR_TAG_MAX 20

static int s_check(const uint8_t *p, size_t len, const proto_cbor_limits_t *lim, int for_libcbor,
                   proto_cbor_reason_t *reason)
{
    s_open_t open[PROTO_CBOR_DEPTH_MAX];
    unsigned depth = 0; /* containers open */
    unsigned max_depth = lim->max_depth < PROTO_CBOR_DEPTH_MAX ? lim->max_depth : PROTO_CBOR_DEPTH_MAX;
    size_t pos = 0, items = 0;
    int started = 0, unloadable = 0;
    proto_cbor_reason_t why = PROTO_CBOR_OK;

    for (;;) {
        /* Close every definite container whose last item has been read. */
        while (depth > 0 && !open[depth - 1].indefinite && open[depth - 1].left == 0)
            depth--;
        if (depth == 0 && started)
            break;
        if (pos >= len) {
            why = PROTO_CBOR_TRUNCATED;
            goto fail;
        }
        uint8_t ib = p[pos++];
        unsigned major = ib >> 5, ai = ib & 0x1f;
        s_open_t *parent = depth > 0 ? &open[depth - 1] : NULL;

        if (ib == 0xff) {
            if (!parent || !parent->indefinite) {
                why = PROTO_CBOR_ILL_FORMED; /* a break outside an indefinite item */
                goto fail;
            }
            depth--;
            continue;
        }
        if (parent && parent->chunk_major >= 0 && ((int) major != parent->chunk_major || ai == 31)) {
            why = PROTO_CBOR_ILL_FORMED; /* RFC 8949 §3.2.3: chunks are definite, same type */
            goto fail;
        }
        if (depth + 1 > max_depth) {
            why = PROTO_CBOR_TOO_DEEP;
            goto fail;
        }
        if (lim->max_items && ++items > lim->max_items) {
            why = PROTO_CBOR_TOO_MANY_ITEMS;
            goto fail;
        }
        started = 1;
        if (parent && !parent->indefinite)
            parent->left--;

        uint64_t arg = ai;
        if (ai >= 24 && ai <= 27) {
            size_t n = (size_t) 1 << (ai - 24);
            if (len - pos < n) {
                why = PROTO_CBOR_TRUNCATED;
                goto fail;
            }
            arg = 0;
            for (size_t i = 0; i < n; i++)
                arg = arg << 8 | p[pos++];
        } else if (ai >= 28 && ai <= 30) {
            why = PROTO_CBOR_ILL_FORMED;
            goto fail;
        } else if (ai == 31) {
            if (major < 2 || major > 5) {
                why = PROTO_CBOR_ILL_FORMED; /* no indefinite ints, tags or simple values */
                goto fail;
            }
            if (!lim->allow_indefinite) {
                why = PROTO_CBOR_INDEFINITE;
                goto fail;
            }
            open[depth].left = 0;
            open[depth].indefinite = 1;
            open[depth].chunk_major = major <= 3 ? (int) major : -1;
            depth++;
            continue;
        }

        size_t remain = len - pos;
        switch (major) {
        case 0: /* unsigned integer */
        case 1: /* negative integer */
            break;
        case 2: /* byte string */
        case 3: /* text string */
            if (arg > remain) {
                why = PROTO_CBOR_TRUNCATED;
                goto fail;
            }
            if (major == 3 && !proto_utf8_valid(p + pos, (size_t) arg)) {
                why = PROTO_CBOR_BAD_UTF8; /* libcbor would refuse it without saying why */
                goto fail;
            }
            pos += (size_t) arg;
            break;
        case 4: /* array: every element takes at least one byte */
        case 5: /* map: every pair takes at least two */
            if (arg > (major == 4 ? remain : remain / 2)) {
                why = PROTO_CBOR_TRUNCATED;
                goto fail;
            }
            if (arg > 0) {
                open[depth].left = major == 4 ? arg : 2 * arg;
                open[depth].indefinite = 0;
                open[depth].chunk_major = -1;
                depth++;
            }
            break;
        case 6: /* tag: exactly one item follows */
            if (arg >= S_LIBCBOR_TAG_MIN && arg <= S_LIBCBOR_TAG_MAX)
                unloadable |= for_libcbor;
            open[depth].left = 1;
            open[depth].indefinite = 0;
            open[depth].chunk_major = -1;
            depth++;
            break;
        default: /* 7: simple values and floats */
            if (ai == 24 && arg < 32) {
                why = PROTO_CBOR_ILL_FORMED; /* RFC 8949 §3.3: e.g. f818 */
                goto fail;
            }
            break;
        }
    }
    if (pos != len) {
        why = PROTO_CBOR_TRAILING;
        goto fail;
    }
    if (unloadable) {
        why = PROTO_CBOR_UNSUPPORTED;
        goto fail;
    }
    *reason = PROTO_CBOR_OK;
    return 0;
fail:
    *reason = why;
    return -1;
}

int proto_cbor_check(const uint8_t *p, size_t len, const proto_cbor_limits_t *lim,
                     proto_cbor_reason_t *reason)
{
    return s_check(p, len, lim, 0, reason);
}

cbor_item_t *proto_cbor_load(const uint8_t *p, size_t len, const proto_cbor_limits_t *lim,
                             proto_cbor_reason_t *reason)
{
    struct cbor_load_result res;
    if (s_check(p, len, lim, 1, reason) != 0)
        return NULL;
    cbor_item_t *item = cbor_load(p, len, &res);
    if (!item || res.error.code != CBOR_ERR_NONE || res.read != len) {
        /* The check accepted it, so what is left is memory or what libcbor
         * cannot represent. */
        *reason = res.error.code == CBOR_ERR_MEMERROR ? PROTO_CBOR_NO_MEMORY : PROTO_CBOR_UNSUPPORTED;
        if (item)
            cbor_decref(&item);
        return NULL;
    }
    *reason = PROTO_CBOR_OK;
    return item;
}

/* ================================================================ buffer */

void proto_cbor_buf_init(proto_cbor_buf_t *b, size_t limit)
{
    memset(b, 0, sizeof *b);
    b->limit = limit;
}

void proto_cbor_buf_init_fixed(proto_cbor_buf_t *b, uint8_t *mem, size_t cap)
{
    memset(b, 0, sizeof *b);
    b->data = mem;
    b->cap = cap;
    b->limit = cap;
    b->fixed = 1;
}

void proto_cbor_buf_free(proto_cbor_buf_t *b)
{
    if (!b->fixed)
        free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

uint8_t *proto_cbor_buf_take(proto_cbor_buf_t *b, size_t *len)
{
    if (b->failed != PROTO_CBOR_OK || b->fixed) {
        proto_cbor_buf_free(b);
        return NULL;
    }
    uint8_t *out = b->data ? b->data : malloc(1);
    *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return out;
}

/* Room for n more bytes; 0 when the buffer has (now) failed. */
static int s_reserve(proto_cbor_buf_t *b, size_t n)
{
    if (b->failed != PROTO_CBOR_OK)
        return 0;
    if (n > b->limit - b->len) {
        b->failed = PROTO_CBOR_TOO_LARGE;
        return 0;
    }
    if (b->len + n <= b->cap)
        return 1;
    if (b->fixed) {
        b->failed = PROTO_CBOR_TOO_LARGE;
        return 0;
    }
    size_t want = b->cap ? b->cap * 2 : 128;
    if (want < b->len + n)
        want = b->len + n;
    if (want > b->limit)
        want = b->limit;
    uint8_t *grown = realloc(b->data, want);
    if (!grown) {
        b->failed = PROTO_CBOR_NO_MEMORY;
        return 0;
    }
    b->data = grown;
    b->cap = want;
    return 1;
}

void proto_cbor_put_raw(proto_cbor_buf_t *b, const void *p, size_t n)
{
    if (n == 0 || !s_reserve(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void proto_cbor_put_head(proto_cbor_buf_t *b, unsigned major, uint64_t arg)
{
    uint8_t h[9];
    size_t n;
    uint8_t mt = (uint8_t) (major << 5);
    if (arg < 24) {
        h[0] = (uint8_t) (mt | arg);
        n = 1;
    } else if (arg <= 0xff) {
        h[0] = mt | 24;
        n = 2;
    } else if (arg <= 0xffff) {
        h[0] = mt | 25;
        n = 3;
    } else if (arg <= 0xffffffffu) {
        h[0] = mt | 26;
        n = 5;
    } else {
        h[0] = mt | 27;
        n = 9;
    }
    for (size_t i = 1; i < n; i++)
        h[i] = (uint8_t) (arg >> (8 * (n - 1 - i)));
    proto_cbor_put_raw(b, h, n);
}

void proto_cbor_put_bytes(proto_cbor_buf_t *b, const void *p, size_t n)
{
    proto_cbor_put_head(b, 2, n);
    proto_cbor_put_raw(b, p, n);
}

void proto_cbor_put_text(proto_cbor_buf_t *b, const char *s, size_t n)
{
    proto_cbor_put_head(b, 3, n);
    proto_cbor_put_raw(b, s, n);
}

/* ================================================================ floats */

/* The binary16 bits of v when binary16 holds v exactly; returns 1 then.
 * Works on the binary64 bits, so it needs no libm and rounds nothing. */
static int s_half_exact(double v, uint16_t *out)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    uint16_t sign = (uint16_t) ((u >> 48) & 0x8000);
    int exp = (int) ((u >> 52) & 0x7ff);
    uint64_t mant = u & ((UINT64_C(1) << 52) - 1);
    if (exp == 0x7ff) { /* infinity (NaN is handled by the caller) */
        *out = sign | 0x7c00;
        return 1;
    }
    if (exp == 0) { /* zero, or a binary64 subnormal far below binary16 */
        *out = sign;
        return mant == 0;
    }
    int e = exp - 1023;
    if (e >= -14 && e <= 15) { /* binary16 normal: 10 fraction bits */
        if (mant & ((UINT64_C(1) << 42) - 1))
            return 0;
        *out = (uint16_t) (sign | (uint16_t) ((e + 15) << 10) | (uint16_t) (mant >> 42));
        return 1;
    }
    if (e >= -24 && e < -14) { /* binary16 subnormal: m × 2^-24 */
        uint64_t full = mant | (UINT64_C(1) << 52);
        unsigned shift = (unsigned) (28 - e);
        if (full & ((UINT64_C(1) << shift) - 1))
            return 0;
        *out = (uint16_t) (sign | (uint16_t) (full >> shift));
        return 1;
    }
    return 0;
}

/* True when binary32 holds v exactly (v finite, not NaN). */
static int s_single_exact(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    int e = (int) ((u >> 52) & 0x7ff) - 1023;
    if (e > 127 || e < -150)
        return 0; /* past FLT_MAX, or below the smallest binary32 subnormal */
    return (double) (float) v == v;
}

void proto_cbor_put_float(proto_cbor_buf_t *b, double v)
{
    uint8_t h[9];
    uint16_t half;
    if (v != v) {
        static const uint8_t qnan[3] = {0xf9, 0x7e, 0x00};
        proto_cbor_put_raw(b, qnan, sizeof qnan);
        return;
    }
    if (s_half_exact(v, &half)) {
        h[0] = 0xf9;
        h[1] = (uint8_t) (half >> 8);
        h[2] = (uint8_t) half;
        proto_cbor_put_raw(b, h, 3);
        return;
    }
    if (s_single_exact(v)) {
        float f = (float) v;
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        h[0] = 0xfa;
        for (int i = 0; i < 4; i++)
            h[1 + i] = (uint8_t) (u >> (24 - 8 * i));
        proto_cbor_put_raw(b, h, 5);
        return;
    }
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    h[0] = 0xfb;
    for (int i = 0; i < 8; i++)
        h[1 + i] = (uint8_t) (u >> (56 - 8 * i));
    proto_cbor_put_raw(b, h, 9);
}

/* ================================================================ canonical encoder */

/* One encoded map pair awaiting its place in the sorted order. */
typedef struct {
    size_t off;      /* where the key starts in the scratch buffer */
    size_t key_len;  /* encoded key length */
    size_t pair_len; /* encoded key + value length */
    const uint8_t *base; /* scratch bytes, set once encoding is done */
} s_pair_t;

static int s_pair_cmp(const void *a, const void *b)
{
    const s_pair_t *x = a, *y = b;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->base + x->off, y->base + y->off, x->key_len);
}

static void s_fail(proto_cbor_buf_t *b, proto_cbor_reason_t why)
{
    if (b->failed == PROTO_CBOR_OK)
        b->failed = why;
}

static int s_encode(proto_cbor_buf_t *b, const cbor_item_t *item, unsigned depth_left);

/* Strings, definite or chunked, as one definite string of `major`. */
static void s_encode_string(proto_cbor_buf_t *b, const cbor_item_t *item, unsigned major)
{
    int indefinite = major == 2 ? cbor_bytestring_is_indefinite(item) : cbor_string_is_indefinite(item);
    if (!indefinite) {
        size_t n = major == 2 ? cbor_bytestring_length(item) : cbor_string_length(item);
        proto_cbor_put_head(b, major, n);
        proto_cbor_put_raw(b, major == 2 ? cbor_bytestring_handle(item) : cbor_string_handle(item), n);
        return;
    }
    size_t count = major == 2 ? cbor_bytestring_chunk_count(item) : cbor_string_chunk_count(item);
    cbor_item_t **chunks = major == 2 ? cbor_bytestring_chunks_handle(item) : cbor_string_chunks_handle(item);
    size_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += major == 2 ? cbor_bytestring_length(chunks[i]) : cbor_string_length(chunks[i]);
    proto_cbor_put_head(b, major, total);
    for (size_t i = 0; i < count; i++) {
        const cbor_item_t *c = chunks[i];
        if (major == 2)
            proto_cbor_put_raw(b, cbor_bytestring_handle(c), cbor_bytestring_length(c));
        else
            proto_cbor_put_raw(b, cbor_string_handle(c), cbor_string_length(c));
    }
}

/* Encodes every pair into scratch space, sorts them by encoded key, refuses
 * duplicates, then appends them in order. */
static int s_encode_map(proto_cbor_buf_t *b, const cbor_item_t *item, unsigned depth_left)
{
    size_t n = cbor_map_size(item);
    struct cbor_pair *pairs = cbor_map_handle(item);
    s_pair_t small[16];
    s_pair_t *order = small;
    proto_cbor_buf_t scratch;
    int rc = -1;

    proto_cbor_put_head(b, 5, n);
    if (n == 0 || b->failed != PROTO_CBOR_OK)
        return b->failed == PROTO_CBOR_OK ? 0 : -1;
    proto_cbor_buf_init(&scratch, b->limit - b->len);
    if (n > sizeof small / sizeof small[0]) {
        order = calloc(n, sizeof *order);
        if (!order) {
            s_fail(b, PROTO_CBOR_NO_MEMORY);
            goto done;
        }
    }
    for (size_t i = 0; i < n; i++) {
        order[i].off = scratch.len;
        if (s_encode(&scratch, pairs[i].key, depth_left - 1) != 0)
            break;
        order[i].key_len = scratch.len - order[i].off;
        if (s_encode(&scratch, pairs[i].value, depth_left - 1) != 0)
            break;
        order[i].pair_len = scratch.len - order[i].off;
    }
    if (scratch.failed != PROTO_CBOR_OK) {
        s_fail(b, scratch.failed);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        order[i].base = scratch.data;
    qsort(order, n, sizeof *order, s_pair_cmp);
    for (size_t i = 1; i < n; i++)
        if (s_pair_cmp(&order[i - 1], &order[i]) == 0) {
            s_fail(b, PROTO_CBOR_DUPLICATE_KEY);
            goto done;
        }
    for (size_t i = 0; i < n; i++)
        proto_cbor_put_raw(b, scratch.data + order[i].off, order[i].pair_len);
    rc = b->failed == PROTO_CBOR_OK ? 0 : -1;
done:
    if (order != small)
        free(order);
    proto_cbor_buf_free(&scratch);
    return rc;
}

static int s_encode(proto_cbor_buf_t *b, const cbor_item_t *item, unsigned depth_left)
{
    if (b->failed != PROTO_CBOR_OK)
        return -1;
    if (depth_left == 0) {
        s_fail(b, PROTO_CBOR_TOO_DEEP);
        return -1;
    }
    switch (cbor_typeof(item)) {
    case CBOR_TYPE_UINT:
        proto_cbor_put_head(b, 0, cbor_get_int(item));
        break;
    case CBOR_TYPE_NEGINT:
        proto_cbor_put_head(b, 1, cbor_get_int(item));
        break;
    case CBOR_TYPE_BYTESTRING:
        s_encode_string(b, item, 2);
        break;
    case CBOR_TYPE_STRING:
        s_encode_string(b, item, 3);
        break;
    case CBOR_TYPE_ARRAY: {
        size_t n = cbor_array_size(item);
        cbor_item_t **elems = cbor_array_handle(item);
        proto_cbor_put_head(b, 4, n);
        for (size_t i = 0; i < n; i++)
            if (s_encode(b, elems[i], depth_left - 1) != 0)
                return -1;
        break;
    }
    case CBOR_TYPE_MAP:
        return s_encode_map(b, item, depth_left);
    case CBOR_TYPE_TAG: {
        /* cbor_tag_item takes a reference; this one is given back at once. */
        cbor_item_t *inner = cbor_tag_item(item);
        proto_cbor_put_head(b, 6, cbor_tag_value(item));
        int rc = s_encode(b, inner, depth_left - 1);
        cbor_decref(&inner);
        return rc;
    }
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_ctrl_is_ctrl(item)) {
            uint8_t v = cbor_ctrl_value(item);
            if (v >= 24 && v < 32) {
                s_fail(b, PROTO_CBOR_ILL_FORMED); /* has no well-formed encoding */
                return -1;
            }
            proto_cbor_put_head(b, 7, v);
        } else {
            proto_cbor_put_float(b, cbor_float_get_float(item));
        }
        break;
    }
    return b->failed == PROTO_CBOR_OK ? 0 : -1;
}

int proto_cbor_canon_encode(proto_cbor_buf_t *b, const cbor_item_t *item, unsigned max_depth)
{
    return s_encode(b, item, max_depth);
}

int proto_cbor_canon_bytes(const cbor_item_t *item, unsigned max_depth, size_t limit,
                           uint8_t **out, size_t *len, proto_cbor_reason_t *reason)
{
    proto_cbor_buf_t b;
    proto_cbor_buf_init(&b, limit);
    if (s_encode(&b, item, max_depth) != 0) {
        *reason = b.failed;
        proto_cbor_buf_free(&b);
        return -1;
    }
    *out = proto_cbor_buf_take(&b, len);
    if (!*out) {
        *reason = PROTO_CBOR_NO_MEMORY;
        return -1;
    }
    *reason = PROTO_CBOR_OK;
    return 0;
}
