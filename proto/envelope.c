/* proto/envelope.c — signed envelopes: strict decoding, the schema of every
 * kind, canonical signable bytes, sign/verify, encoding and the ack fast
 * path. See envelope.h for what is accepted and why. */
#include "proto/envelope.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "proto/cbor_canon.h"
#include "proto/utf8.h"

/* The envelope owns its kind map and one buffer holding the canonical
 * signable bytes; id, from and to are read out of that buffer, so they exist
 * exactly once. */
struct proto_envelope {
    uint8_t sig[PROTO_SIG_LEN]; /* detached signature (zero until signed) */
    proto_kind_t kind;          /* kind.type */
    cbor_item_t *kind_map;      /* the kind map, one reference owned */
    uint8_t *signable;          /* canonical [id, from, to, kind], heap */
    size_t signable_len;        /* bytes in signable */
};

/* ================================================================ layout */

/* Signable bytes: 84 | 50 id | 58 20 from | 58 20 to | kind. */
#define S_SIG_ID_OFF 2
#define S_SIG_FROM_OFF 20
#define S_SIG_TO_OFF 54
#define S_SIG_KIND_OFF 86

/* The envelope map in canonical key order (encoded length, then bytes):
 * "id", "to", "sig", "from", "kind". Everything before the kind bytes: */
#define S_ENV_FIXED_LEN 172
/* Largest canonical kind that still fits an envelope of PROTO_ENVELOPE_MAX. */
#define S_KIND_MAX (PROTO_ENVELOPE_MAX - S_ENV_FIXED_LEN)

/* Canonical ack kind: a2 | "type": "ack" | "in_reply_to": 50 <16 bytes>. */
#define S_ACK_KIND_LEN 39
#define S_ACK_SIGNABLE_LEN (S_SIG_KIND_OFF + S_ACK_KIND_LEN)

_Static_assert(PROTO_ACK_FRAME_LEN == PROTO_FRAME_HEADER_LEN + S_ENV_FIXED_LEN + S_ACK_KIND_LEN,
               "ack frame length");

static uint8_t *s_put_fixed_bstr(uint8_t *w, const uint8_t *p, size_t n)
{
    if (n < 24) {
        *w++ = (uint8_t) (0x40 | n);
    } else {
        *w++ = 0x58;
        *w++ = (uint8_t) n;
    }
    memcpy(w, p, n);
    return w + n;
}

static uint8_t *s_put_key(uint8_t *w, const char *key)
{
    size_t n = strlen(key);
    *w++ = (uint8_t) (0x60 | n);
    memcpy(w, key, n);
    return w + n;
}

static void s_signable_head(uint8_t *w, const uint8_t *id, const uint8_t *from, const uint8_t *to)
{
    *w++ = 0x84;
    w = s_put_fixed_bstr(w, id, PROTO_UUID_LEN);
    w = s_put_fixed_bstr(w, from, PROTO_PUBKEY_LEN);
    s_put_fixed_bstr(w, to, PROTO_PUBKEY_LEN);
}

/* Writes the canonical envelope map around kind[kind_len]; returns the end. */
static uint8_t *s_envelope_write(uint8_t *w, const uint8_t *id, const uint8_t *from, const uint8_t *to,
                                 const uint8_t *sig, const uint8_t *kind, size_t kind_len)
{
    *w++ = 0xa5;
    w = s_put_key(w, "id");
    w = s_put_fixed_bstr(w, id, PROTO_UUID_LEN);
    w = s_put_key(w, "to");
    w = s_put_fixed_bstr(w, to, PROTO_PUBKEY_LEN);
    w = s_put_key(w, "sig");
    w = s_put_fixed_bstr(w, sig, PROTO_SIG_LEN);
    w = s_put_key(w, "from");
    w = s_put_fixed_bstr(w, from, PROTO_PUBKEY_LEN);
    w = s_put_key(w, "kind");
    memcpy(w, kind, kind_len);
    return w + kind_len;
}

/* ================================================================ names */

const char *proto_envelope_reason_str(proto_envelope_reason_t r)
{
    switch (r) {
    case PROTO_ENV_OK:                return "ok";
    case PROTO_ENV_OVERSIZE:          return "oversize";
    case PROTO_ENV_TOO_MANY_ITEMS:    return "too_many_items";
    case PROTO_ENV_TRUNCATED:         return "truncated";
    case PROTO_ENV_TRAILING_BYTES:    return "trailing_bytes";
    case PROTO_ENV_ILL_FORMED:        return "ill_formed";
    case PROTO_ENV_INDEFINITE_LENGTH: return "indefinite_length";
    case PROTO_ENV_TOO_DEEP:          return "too_deep";
    case PROTO_ENV_UNSUPPORTED_TYPE:  return "unsupported_type";
    case PROTO_ENV_BAD_UTF8:          return "bad_utf8";
    case PROTO_ENV_NON_TEXT_KEY:      return "non_text_key";
    case PROTO_ENV_DUPLICATE_KEY:     return "duplicate_key";
    case PROTO_ENV_MISSING_FIELD:     return "missing_field";
    case PROTO_ENV_UNKNOWN_FIELD:     return "unknown_field";
    case PROTO_ENV_WRONG_TYPE:        return "wrong_type";
    case PROTO_ENV_BAD_LENGTH:        return "bad_length";
    case PROTO_ENV_UNKNOWN_KIND:      return "unknown_kind";
    case PROTO_ENV_BAD_VALUE:         return "bad_value";
    case PROTO_ENV_WEAK_KEY:          return "weak_key";
    case PROTO_ENV_BAD_SIGNATURE:     return "bad_signature";
    case PROTO_ENV_NO_MEMORY:         return "no_memory";
    }
    return "unknown";
}

proto_wire_reason_t proto_envelope_reason_wire(proto_envelope_reason_t r)
{
    switch (r) {
    case PROTO_ENV_OK:             return PROTO_WIRE_OK;
    case PROTO_ENV_OVERSIZE:
    case PROTO_ENV_TOO_MANY_ITEMS: return PROTO_WIRE_OVERSIZE;
    case PROTO_ENV_WEAK_KEY:
    case PROTO_ENV_BAD_SIGNATURE:  return PROTO_WIRE_INVALID_SIGNATURE;
    case PROTO_ENV_NO_MEMORY:      return PROTO_WIRE_INTERNAL;
    default:                       return PROTO_WIRE_MALFORMED;
    }
}

const char *proto_wire_reason_str(proto_wire_reason_t r)
{
    switch (r) {
    case PROTO_WIRE_OK:                return "ok";
    case PROTO_WIRE_OVERSIZE:          return "oversize";
    case PROTO_WIRE_MALFORMED:         return "malformed";
    case PROTO_WIRE_INVALID_SIGNATURE: return "invalid_signature";
    case PROTO_WIRE_MISADDRESSED:      return "misaddressed";
    case PROTO_WIRE_UNTRUSTED_SENDER:  return "untrusted_sender";
    case PROTO_WIRE_REPLAY:            return "replay";
    case PROTO_WIRE_INBOX_FULL:        return "inbox_full";
    case PROTO_WIRE_INTERNAL:          return "internal";
    }
    return "unknown";
}

const char *proto_kind_str(proto_kind_t k)
{
    switch (k) {
    case PROTO_KIND_MESSAGE:   return "message";
    case PROTO_KIND_REQUEST:   return "request";
    case PROTO_KIND_RESPONSE:  return "response";
    case PROTO_KIND_ACK:       return "ack";
    case PROTO_KIND_LIFECYCLE: return "lifecycle";
    case PROTO_KIND_FENCED_MESSAGE: return "incarnation_fenced_message";
    }
    return "unknown";
}

bool proto_kind_acked(proto_kind_t k)
{
    return k == PROTO_KIND_MESSAGE || k == PROTO_KIND_FENCED_MESSAGE || k == PROTO_KIND_REQUEST ||
           k == PROTO_KIND_LIFECYCLE;
}

const char *proto_handling_str(proto_handling_t h)
{
    switch (h) {
    case PROTO_HANDLING_QUEUE: return "queue";
    case PROTO_HANDLING_STEER: return "steer";
    case PROTO_HANDLING_NONE:  break;
    }
    return NULL;
}

const char *proto_status_str(proto_status_t s)
{
    switch (s) {
    case PROTO_STATUS_ACCEPTED:  return "accepted";
    case PROTO_STATUS_COMPLETED: return "completed";
    case PROTO_STATUS_FAILED:    return "failed";
    case PROTO_STATUS_NONE:      break;
    }
    return NULL;
}

/* ================================================================ item helpers */

/* The bytes of a definite text string (*len set), or NULL for any other
 * item: one look at the item, so a key can be compared with many names. */
static const char *s_text_view(const cbor_item_t *item, size_t *len)
{
    if (!cbor_isa_string(item) || !cbor_string_is_definite(item))
        return NULL;
    *len = cbor_string_length(item);
    return (const char *) cbor_string_handle(item);
}

static inline int s_view_is(const char *p, size_t len, const char *name)
{
    return p && len == strlen(name) && memcmp(p, name, len) == 0;
}

/* True when item is a definite text string equal to name. */
static int s_text_is(const cbor_item_t *item, const char *name)
{
    size_t len = 0;
    const char *p = s_text_view(item, &len);
    return s_view_is(p, len, name);
}

/* map[name] for a map with text keys, or NULL. */
static const cbor_item_t *s_map_get(const cbor_item_t *map, const char *name)
{
    size_t n = cbor_map_size(map);
    struct cbor_pair *pairs = cbor_map_handle(map);
    for (size_t i = 0; i < n; i++)
        if (s_text_is(pairs[i].key, name))
            return pairs[i].value;
    return NULL;
}

static int s_is_bytes_of(const cbor_item_t *item, size_t n, proto_envelope_reason_t *why)
{
    if (!cbor_isa_bytestring(item) || !cbor_bytestring_is_definite(item)) {
        *why = PROTO_ENV_WRONG_TYPE;
        return 0;
    }
    if (cbor_bytestring_length(item) != n) {
        *why = PROTO_ENV_BAD_LENGTH;
        return 0;
    }
    return 1;
}

/* Takes *p: returns it and clears the caller's pointer. */
static cbor_item_t *s_take(cbor_item_t **p)
{
    cbor_item_t *item = p ? *p : NULL;
    if (p)
        *p = NULL;
    return item;
}

static void s_release(cbor_item_t **p)
{
    if (p && *p)
        cbor_decref(p);
}

/* ================================================================ data model */

/* Checks item (at nesting level `depth`) and everything under it against the
 * envelope data model: JSON values plus byte strings, text keys only, UTF-8
 * text, definite strings, finite floats, no tags, nothing deeper than the
 * limit, at most PROTO_ENVELOPE_ITEMS_MAX items counted in *items.
 * Duplicate keys are found later by the canonical encoder. Text of a
 * decoded item was found to be UTF-8 by proto_cbor_check before libcbor
 * read the same bytes, so only built items (`utf8`) are checked again. */
static proto_envelope_reason_t s_value_check(const cbor_item_t *item, unsigned depth, size_t *items,
                                             bool utf8)
{
    if (depth > PROTO_ENVELOPE_DEPTH_MAX)
        return PROTO_ENV_TOO_DEEP;
    if (++*items > PROTO_ENVELOPE_ITEMS_MAX)
        return PROTO_ENV_TOO_MANY_ITEMS;
    switch (cbor_typeof(item)) {
    case CBOR_TYPE_UINT:
    case CBOR_TYPE_NEGINT:
        return PROTO_ENV_OK;
    case CBOR_TYPE_BYTESTRING:
        /* Chunked strings only arise from built items; kith never sends them. */
        return cbor_bytestring_is_definite(item) ? PROTO_ENV_OK : PROTO_ENV_INDEFINITE_LENGTH;
    case CBOR_TYPE_STRING:
        if (!cbor_string_is_definite(item))
            return PROTO_ENV_INDEFINITE_LENGTH;
        return !utf8 || proto_utf8_valid(cbor_string_handle(item), cbor_string_length(item))
                   ? PROTO_ENV_OK
                   : PROTO_ENV_BAD_UTF8;
    case CBOR_TYPE_ARRAY: {
        size_t n = cbor_array_size(item);
        cbor_item_t **elems = cbor_array_handle(item);
        for (size_t i = 0; i < n; i++) {
            proto_envelope_reason_t r = s_value_check(elems[i], depth + 1, items, utf8);
            if (r != PROTO_ENV_OK)
                return r;
        }
        return PROTO_ENV_OK;
    }
    case CBOR_TYPE_MAP: {
        size_t n = cbor_map_size(item);
        struct cbor_pair *pairs = cbor_map_handle(item);
        for (size_t i = 0; i < n; i++) {
            if (!cbor_isa_string(pairs[i].key))
                return PROTO_ENV_NON_TEXT_KEY;
            proto_envelope_reason_t r = s_value_check(pairs[i].key, depth + 1, items, utf8);
            if (r == PROTO_ENV_OK)
                r = s_value_check(pairs[i].value, depth + 1, items, utf8);
            if (r != PROTO_ENV_OK)
                return r;
        }
        return PROTO_ENV_OK;
    }
    case CBOR_TYPE_TAG:
        return PROTO_ENV_UNSUPPORTED_TYPE;
    case CBOR_TYPE_FLOAT_CTRL:
        if (cbor_float_ctrl_is_ctrl(item)) {
            uint8_t v = cbor_ctrl_value(item);
            return v == CBOR_CTRL_FALSE || v == CBOR_CTRL_TRUE || v == CBOR_CTRL_NULL
                       ? PROTO_ENV_OK
                       : PROTO_ENV_UNSUPPORTED_TYPE;
        } else {
            double v = cbor_float_get_float(item);
            /* NaN and the infinities have no JSON form. */
            return v == v && v - v == 0 ? PROTO_ENV_OK : PROTO_ENV_UNSUPPORTED_TYPE;
        }
    }
    return PROTO_ENV_UNSUPPORTED_TYPE;
}

/* ================================================================ kind schema */

typedef enum {
    S_F_TEXT,     /* text string */
    S_F_ID,       /* byte string of 16 (a UUID) */
    S_F_ARRAY,    /* array of anything */
    S_F_ANY,      /* any value, null included */
    S_F_HANDLING, /* "queue" | "steer" */
    S_F_STATUS,   /* "accepted" | "completed" | "failed" */
    S_F_RECIPIENT, /* Meerkat's PeerRecipientIncarnation map (WIRE §23.3) */
} s_field_type_t;

typedef struct {
    const char *name;      /* key in the kind map */
    s_field_type_t type;   /* what its value must be */
    int required;          /* absent is an error */
} s_field_t;

typedef struct {
    const char *type;      /* kind.type */
    proto_kind_t kind;     /* the enum for it */
    s_field_t fields[5];   /* its fields besides `type`; name NULL ends the list */
} s_variant_t;

static const s_variant_t s_variants[] = {
    {"message", PROTO_KIND_MESSAGE,
     {{"body", S_F_TEXT, 1}, {"blocks", S_F_ARRAY, 0}, {"handling_mode", S_F_HANDLING, 0}, {NULL, 0, 0}}},
    {"request", PROTO_KIND_REQUEST,
     {{"intent", S_F_TEXT, 1}, {"params", S_F_ANY, 1}, {"blocks", S_F_ARRAY, 0},
      {"handling_mode", S_F_HANDLING, 0}}},
    {"response", PROTO_KIND_RESPONSE,
     {{"in_reply_to", S_F_ID, 1}, {"status", S_F_STATUS, 1}, {"result", S_F_ANY, 1},
      {"blocks", S_F_ARRAY, 0}, {"handling_mode", S_F_HANDLING, 0}}},
    {"ack", PROTO_KIND_ACK, {{"in_reply_to", S_F_ID, 1}, {NULL, 0, 0}}},
    {"lifecycle", PROTO_KIND_LIFECYCLE, {{"kind", S_F_TEXT, 1}, {"params", S_F_ANY, 1}, {NULL, 0, 0}}},
    {"incarnation_fenced_message", PROTO_KIND_FENCED_MESSAGE,
     {{"body", S_F_TEXT, 1}, {"expected_recipient", S_F_RECIPIENT, 1}, {"blocks", S_F_ARRAY, 0},
      {"handling_mode", S_F_HANDLING, 0}, {NULL, 0, 0}}},
};

/* Meerkat's PeerRecipientIncarnation: the member a fenced message is for.
 * Every field is required; others are kept like any unknown field. */
static const struct {
    const char *name; /* key */
    int uint;         /* 1: unsigned integer, 0: text */
} s_recipient_fields[] = {
    {"mob_id", 0},          {"agent_identity", 0}, {"host_id", 0}, {"binding_generation", 1},
    {"member_session_id", 0}, {"generation", 1},   {"fence_token", 1},
};

#define S_NVARIANTS (sizeof s_variants / sizeof s_variants[0])
#define S_NFIELDS (sizeof s_variants[0].fields / sizeof s_variants[0].fields[0])

static proto_envelope_reason_t s_field_check(const cbor_item_t *v, s_field_type_t type)
{
    proto_envelope_reason_t why = PROTO_ENV_OK;
    switch (type) {
    case S_F_TEXT:
        return cbor_isa_string(v) ? PROTO_ENV_OK : PROTO_ENV_WRONG_TYPE;
    case S_F_ID:
        return s_is_bytes_of(v, PROTO_UUID_LEN, &why) ? PROTO_ENV_OK : why;
    case S_F_ARRAY:
        return cbor_isa_array(v) ? PROTO_ENV_OK : PROTO_ENV_WRONG_TYPE;
    case S_F_ANY:
        return PROTO_ENV_OK;
    case S_F_HANDLING:
        if (!cbor_isa_string(v))
            return PROTO_ENV_WRONG_TYPE;
        return s_text_is(v, "queue") || s_text_is(v, "steer") ? PROTO_ENV_OK : PROTO_ENV_BAD_VALUE;
    case S_F_STATUS:
        if (!cbor_isa_string(v))
            return PROTO_ENV_WRONG_TYPE;
        return s_text_is(v, "accepted") || s_text_is(v, "completed") || s_text_is(v, "failed")
                   ? PROTO_ENV_OK
                   : PROTO_ENV_BAD_VALUE;
    case S_F_RECIPIENT: {
        if (!cbor_isa_map(v))
            return PROTO_ENV_WRONG_TYPE;
        size_t n = cbor_map_size(v);
        struct cbor_pair *pairs = cbor_map_handle(v);
        for (size_t f = 0; f < sizeof s_recipient_fields / sizeof s_recipient_fields[0]; f++) {
            const cbor_item_t *fv = NULL;
            for (size_t i = 0; i < n && !fv; i++)
                if (s_text_is(pairs[i].key, s_recipient_fields[f].name))
                    fv = pairs[i].value;
            if (!fv)
                return PROTO_ENV_MISSING_FIELD;
            if (s_recipient_fields[f].uint ? !cbor_isa_uint(fv) : !cbor_isa_string(fv))
                return PROTO_ENV_WRONG_TYPE;
        }
        return PROTO_ENV_OK;
    }
    }
    return PROTO_ENV_WRONG_TYPE;
}

/* Checks a kind map that already passed s_value_check: its `type`, then each
 * known field of that variant; unknown fields are left as they are. */
static proto_envelope_reason_t s_kind_check(const cbor_item_t *map, proto_kind_t *kind)
{
    if (!cbor_isa_map(map))
        return PROTO_ENV_WRONG_TYPE;
    size_t n = cbor_map_size(map);
    struct cbor_pair *pairs = cbor_map_handle(map);

    const cbor_item_t *type = NULL;
    for (size_t i = 0; i < n; i++) {
        size_t klen = 0;
        const char *k = s_text_view(pairs[i].key, &klen);
        if (s_view_is(k, klen, "type")) {
            if (type)
                return PROTO_ENV_DUPLICATE_KEY;
            type = pairs[i].value;
        }
    }
    if (!type)
        return PROTO_ENV_MISSING_FIELD;
    if (!cbor_isa_string(type))
        return PROTO_ENV_WRONG_TYPE;
    const s_variant_t *var = NULL;
    for (size_t v = 0; v < S_NVARIANTS && !var; v++)
        if (s_text_is(type, s_variants[v].type))
            var = &s_variants[v];
    if (!var)
        return PROTO_ENV_UNKNOWN_KIND;

    int seen[S_NFIELDS] = {0};
    for (size_t i = 0; i < n; i++) {
        size_t klen = 0;
        const char *k = s_text_view(pairs[i].key, &klen);
        for (size_t f = 0; f < S_NFIELDS && var->fields[f].name; f++) {
            if (!s_view_is(k, klen, var->fields[f].name))
                continue;
            if (seen[f]++)
                return PROTO_ENV_DUPLICATE_KEY;
            proto_envelope_reason_t r = s_field_check(pairs[i].value, var->fields[f].type);
            if (r != PROTO_ENV_OK)
                return r;
        }
    }
    for (size_t f = 0; f < S_NFIELDS && var->fields[f].name; f++)
        if (var->fields[f].required && !seen[f])
            return PROTO_ENV_MISSING_FIELD;
    *kind = var->kind;
    return PROTO_ENV_OK;
}

static proto_envelope_reason_t s_from_cbor_reason(proto_cbor_reason_t r)
{
    switch (r) {
    case PROTO_CBOR_OK:             return PROTO_ENV_OK;
    case PROTO_CBOR_TRUNCATED:      return PROTO_ENV_TRUNCATED;
    case PROTO_CBOR_TRAILING:       return PROTO_ENV_TRAILING_BYTES;
    case PROTO_CBOR_ILL_FORMED:     return PROTO_ENV_ILL_FORMED;
    case PROTO_CBOR_INDEFINITE:     return PROTO_ENV_INDEFINITE_LENGTH;
    case PROTO_CBOR_BAD_UTF8:       return PROTO_ENV_BAD_UTF8;
    case PROTO_CBOR_TOO_DEEP:       return PROTO_ENV_TOO_DEEP;
    case PROTO_CBOR_TOO_MANY_ITEMS: return PROTO_ENV_TOO_MANY_ITEMS;
    case PROTO_CBOR_UNSUPPORTED:    return PROTO_ENV_UNSUPPORTED_TYPE;
    case PROTO_CBOR_DUPLICATE_KEY:  return PROTO_ENV_DUPLICATE_KEY;
    case PROTO_CBOR_TOO_LARGE:      return PROTO_ENV_OVERSIZE;
    case PROTO_CBOR_NO_MEMORY:      return PROTO_ENV_NO_MEMORY;
    }
    return PROTO_ENV_ILL_FORMED;
}

/* ================================================================ making */

/* The envelope for a checked kind map (reference taken): computes the
 * canonical signable bytes, which also finds duplicate keys at any depth. */
static proto_envelope_t *s_envelope_make(const uint8_t *id, const uint8_t *from, const uint8_t *to,
                                         cbor_item_t *kind_map, proto_kind_t kind,
                                         const uint8_t *sig, proto_envelope_reason_t *reason)
{
    proto_envelope_t *env = NULL;
    proto_cbor_buf_t b;
    uint8_t head[S_SIG_KIND_OFF];

    proto_cbor_buf_init(&b, S_SIG_KIND_OFF + S_KIND_MAX);
    s_signable_head(head, id, from, to);
    proto_cbor_put_raw(&b, head, sizeof head);
    /* kind is level 2, so it may hold DEPTH_MAX - 1 levels. */
    if (proto_cbor_canon_encode(&b, kind_map, PROTO_ENVELOPE_DEPTH_MAX - 1) != 0) {
        *reason = s_from_cbor_reason(b.failed);
        goto fail;
    }
    env = calloc(1, sizeof *env);
    if (!env) {
        *reason = PROTO_ENV_NO_MEMORY;
        goto fail;
    }
    env->signable = proto_cbor_buf_take(&b, &env->signable_len);
    if (!env->signable) {
        *reason = PROTO_ENV_NO_MEMORY;
        goto fail;
    }
    env->kind = kind;
    env->kind_map = kind_map;
    if (sig)
        memcpy(env->sig, sig, PROTO_SIG_LEN);
    *reason = PROTO_ENV_OK;
    return env;
fail:
    proto_cbor_buf_free(&b);
    free(env);
    cbor_decref(&kind_map);
    return NULL;
}

proto_envelope_t *proto_envelope_new(const uint8_t id[PROTO_UUID_LEN], const uint8_t from[PROTO_PUBKEY_LEN],
                                     const uint8_t to[PROTO_PUBKEY_LEN], cbor_item_t **kind,
                                     proto_envelope_reason_t *reason)
{
    cbor_item_t *map = s_take(kind);
    uint8_t fresh[PROTO_UUID_LEN];
    proto_kind_t k = 0;
    size_t items = 10; /* the envelope map, its five keys and four fixed values */
    if (!map) {
        *reason = PROTO_ENV_NO_MEMORY; /* the kind builder ran out */
        return NULL;
    }
    *reason = s_value_check(map, 2, &items, true);
    if (*reason == PROTO_ENV_OK)
        *reason = s_kind_check(map, &k);
    if (*reason != PROTO_ENV_OK) {
        cbor_decref(&map);
        return NULL;
    }
    if (!id) {
        proto_uuid_v7_new(fresh);
        id = fresh;
    }
    return s_envelope_make(id, from, to, map, k, NULL, reason);
}

void proto_envelope_destroy(proto_envelope_t **env)
{
    if (!env || !*env)
        return;
    if ((*env)->kind_map)
        cbor_decref(&(*env)->kind_map);
    free((*env)->signable);
    free(*env);
    *env = NULL;
}

/* ================================================================ decoding */

/* The five envelope keys, in the order their absence is reported. */
enum { S_K_ID, S_K_FROM, S_K_TO, S_K_KIND, S_K_SIG, S_K_COUNT };
static const char *const s_env_keys[S_K_COUNT] = {"id", "from", "to", "kind", "sig"};

int proto_envelope_decode_general(const uint8_t *p, size_t len, proto_envelope_t **out,
                                  proto_envelope_reason_t *reason)
{
    static const proto_cbor_limits_t lim = {
        .max_depth = PROTO_ENVELOPE_DEPTH_MAX, .allow_indefinite = 0, .max_items = PROTO_ENVELOPE_ITEMS_MAX};
    const cbor_item_t *field[S_K_COUNT] = {NULL};
    proto_cbor_reason_t cr = PROTO_CBOR_OK;
    proto_envelope_reason_t why = PROTO_ENV_OK;
    proto_kind_t kind = 0;
    cbor_item_t *root = NULL;

    *out = NULL;
    if (len > PROTO_ENVELOPE_MAX) {
        why = PROTO_ENV_OVERSIZE;
        goto fail;
    }
    root = proto_cbor_load(p, len, &lim, &cr);
    if (!root) {
        why = s_from_cbor_reason(cr);
        goto fail;
    }
    if (!cbor_isa_map(root)) {
        why = PROTO_ENV_WRONG_TYPE;
        goto fail;
    }
    size_t items = 0;
    why = s_value_check(root, 1, &items, false);
    if (why != PROTO_ENV_OK)
        goto fail;

    size_t n = cbor_map_size(root);
    struct cbor_pair *pairs = cbor_map_handle(root);
    for (size_t i = 0; i < n; i++) {
        size_t k = 0, klen = 0;
        const char *key = s_text_view(pairs[i].key, &klen);
        while (k < S_K_COUNT && !s_view_is(key, klen, s_env_keys[k]))
            k++;
        if (k == S_K_COUNT) {
            why = PROTO_ENV_UNKNOWN_FIELD; /* unsigned, so nothing may ride along */
            goto fail;
        }
        if (field[k]) {
            why = PROTO_ENV_DUPLICATE_KEY;
            goto fail;
        }
        field[k] = pairs[i].value;
    }
    for (size_t k = 0; k < S_K_COUNT; k++)
        if (!field[k]) {
            why = PROTO_ENV_MISSING_FIELD;
            goto fail;
        }
    if (!s_is_bytes_of(field[S_K_ID], PROTO_UUID_LEN, &why) ||
        !s_is_bytes_of(field[S_K_FROM], PROTO_PUBKEY_LEN, &why) ||
        !s_is_bytes_of(field[S_K_TO], PROTO_PUBKEY_LEN, &why) ||
        !s_is_bytes_of(field[S_K_SIG], PROTO_SIG_LEN, &why))
        goto fail;
    why = s_kind_check(field[S_K_KIND], &kind);
    if (why != PROTO_ENV_OK)
        goto fail;

    cbor_item_t *kind_map = cbor_incref((cbor_item_t *) field[S_K_KIND]);
    *out = s_envelope_make(cbor_bytestring_handle(field[S_K_ID]), cbor_bytestring_handle(field[S_K_FROM]),
                           cbor_bytestring_handle(field[S_K_TO]), kind_map, kind,
                           cbor_bytestring_handle(field[S_K_SIG]), &why);
    if (!*out)
        goto fail;
    cbor_decref(&root);
    *reason = PROTO_ENV_OK;
    return 0;
fail:
    if (root)
        cbor_decref(&root);
    *reason = why;
    return -1;
}

/* The head s_envelope_write writes, byte for byte, up to the kind value:
 * the map of five, each key and each value's string head. The values sit
 * between these pieces, at the offsets below. */
static const struct {
    uint8_t off;      /* where the piece starts */
    uint8_t len;      /* its length */
    const char *bytes;
} s_head[] = {
    {0, 5, "\xa5\x62" "id" "\x50"},          /* map(5) "id" bstr(16) */
    {21, 5, "\x62" "to" "\x58\x20"},         /* "to" bstr(32) */
    {58, 6, "\x63" "sig" "\x58\x40"},        /* "sig" bstr(64) */
    {128, 7, "\x64" "from" "\x58\x20"},      /* "from" bstr(32) */
    {167, 5, "\x64" "kind"},                /* "kind", then its value */
};
#define S_HEAD_ID 5
#define S_HEAD_TO 26
#define S_HEAD_SIG 64
#define S_HEAD_FROM 135
_Static_assert(167 + 5 == S_ENV_FIXED_LEN, "the fixed head ends where the kind starts");

static bool s_fixed_head(const uint8_t *p, size_t len)
{
    if (len <= S_ENV_FIXED_LEN)
        return false;
    for (size_t i = 0; i < sizeof s_head / sizeof s_head[0]; i++)
        if (memcmp(p + s_head[i].off, s_head[i].bytes, s_head[i].len) != 0)
            return false;
    return true;
}

/* An envelope whose head is the fixed one (what kith writes, as WIRE §4
 * asks every sender to):
 * every check on the head holds by construction, so only the kind value is
 * checked, loaded and walked, with the limits shifted by what the head
 * takes (ten items, one level), which refuses exactly what the general
 * path refuses, for the same reason. */
static int s_decode_fixed(const uint8_t *p, size_t len, proto_envelope_t **out,
                          proto_envelope_reason_t *reason)
{
    static const proto_cbor_limits_t lim = {.max_depth = PROTO_ENVELOPE_DEPTH_MAX - 1,
                                            .allow_indefinite = 0,
                                            .max_items = PROTO_ENVELOPE_ITEMS_MAX - 10};
    proto_cbor_reason_t cr = PROTO_CBOR_OK;
    proto_envelope_reason_t why = PROTO_ENV_OK;
    proto_kind_t kind = 0;
    cbor_item_t *kind_map = proto_cbor_load(p + S_ENV_FIXED_LEN, len - S_ENV_FIXED_LEN, &lim, &cr);
    if (!kind_map) {
        why = s_from_cbor_reason(cr);
        goto fail;
    }
    size_t items = 10; /* the envelope map, its five keys and four fixed values */
    why = s_value_check(kind_map, 2, &items, false);
    if (why == PROTO_ENV_OK)
        why = s_kind_check(kind_map, &kind);
    if (why != PROTO_ENV_OK) {
        cbor_decref(&kind_map);
        goto fail;
    }
    *out = s_envelope_make(p + S_HEAD_ID, p + S_HEAD_FROM, p + S_HEAD_TO, kind_map, kind,
                           p + S_HEAD_SIG, &why);
    if (!*out)
        goto fail;
    *reason = PROTO_ENV_OK;
    return 0;
fail:
    *reason = why;
    return -1;
}

int proto_envelope_decode(const uint8_t *p, size_t len, proto_envelope_t **out,
                          proto_envelope_reason_t *reason)
{
    *out = NULL;
    if (len <= PROTO_ENVELOPE_MAX && s_fixed_head(p, len))
        return s_decode_fixed(p, len, out, reason);
    return proto_envelope_decode_general(p, len, out, reason);
}

int proto_envelope_decode_frame(const uint8_t *p, size_t len, proto_envelope_t **out,
                                proto_envelope_reason_t *reason)
{
    *out = NULL;
    if (len < PROTO_FRAME_HEADER_LEN) {
        *reason = PROTO_ENV_TRUNCATED;
        return -1;
    }
    uint32_t n = (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
    if (n > PROTO_ENVELOPE_MAX) {
        *reason = PROTO_ENV_OVERSIZE;
        return -1;
    }
    if (n != len - PROTO_FRAME_HEADER_LEN) {
        *reason = n > len - PROTO_FRAME_HEADER_LEN ? PROTO_ENV_TRUNCATED : PROTO_ENV_TRAILING_BYTES;
        return -1;
    }
    return proto_envelope_decode(p + PROTO_FRAME_HEADER_LEN, n, out, reason);
}

/* ================================================================ kind builders */

/* map[key] = value (taken). Returns 0, or -1 when value is NULL or memory
 * runs out. */
static int s_put(cbor_item_t *map, const char *key, cbor_item_t *value)
{
    if (!value)
        return -1;
    cbor_item_t *k = cbor_build_stringn(key, strlen(key));
    int ok = k && cbor_map_add(map, (struct cbor_pair){.key = k, .value = value});
    if (k)
        cbor_decref(&k);
    cbor_decref(&value);
    return ok ? 0 : -1;
}

static cbor_item_t *s_text(const char *s, size_t n)
{
    return cbor_build_stringn(s ? s : "", s ? n : 0);
}

cbor_item_t *proto_kind_message(const char *body, size_t body_len, cbor_item_t **blocks,
                                proto_handling_t mode)
{
    cbor_item_t *bl = s_take(blocks);
    const char *m = proto_handling_str(mode);
    cbor_item_t *map = cbor_new_definite_map(2 + (bl != NULL) + (m != NULL));
    if (!map || s_put(map, "type", s_text("message", 7)) || s_put(map, "body", s_text(body, body_len)))
        goto fail;
    if (bl && s_put(map, "blocks", s_take(&bl)))
        goto fail;
    if (m && s_put(map, "handling_mode", s_text(m, strlen(m))))
        goto fail;
    return map;
fail:
    s_release(&bl);
    s_release(&map);
    return NULL;
}

cbor_item_t *proto_kind_request(const char *intent, size_t intent_len, cbor_item_t **params,
                                cbor_item_t **blocks, proto_handling_t mode)
{
    cbor_item_t *pa = s_take(params), *bl = s_take(blocks);
    const char *m = proto_handling_str(mode);
    cbor_item_t *map = cbor_new_definite_map(3 + (bl != NULL) + (m != NULL));
    if (!map || !pa || s_put(map, "type", s_text("request", 7)) ||
        s_put(map, "intent", s_text(intent, intent_len)) || s_put(map, "params", s_take(&pa)))
        goto fail;
    if (bl && s_put(map, "blocks", s_take(&bl)))
        goto fail;
    if (m && s_put(map, "handling_mode", s_text(m, strlen(m))))
        goto fail;
    return map;
fail:
    s_release(&pa);
    s_release(&bl);
    s_release(&map);
    return NULL;
}

cbor_item_t *proto_kind_response(const uint8_t in_reply_to[PROTO_UUID_LEN], proto_status_t status,
                                 cbor_item_t **result)
{
    cbor_item_t *res = s_take(result);
    const char *st = proto_status_str(status);
    cbor_item_t *map = cbor_new_definite_map(4);
    if (!map || !res || !st || s_put(map, "type", s_text("response", 8)) ||
        s_put(map, "in_reply_to", cbor_build_bytestring(in_reply_to, PROTO_UUID_LEN)) ||
        s_put(map, "status", s_text(st, strlen(st))) || s_put(map, "result", s_take(&res)))
        goto fail;
    return map;
fail:
    s_release(&res);
    s_release(&map);
    return NULL;
}

cbor_item_t *proto_kind_ack(const uint8_t in_reply_to[PROTO_UUID_LEN])
{
    cbor_item_t *map = cbor_new_definite_map(2);
    if (!map || s_put(map, "type", s_text("ack", 3)) ||
        s_put(map, "in_reply_to", cbor_build_bytestring(in_reply_to, PROTO_UUID_LEN))) {
        s_release(&map);
        return NULL;
    }
    return map;
}

cbor_item_t *proto_kind_lifecycle(const char *kind, size_t kind_len, cbor_item_t **params)
{
    cbor_item_t *pa = s_take(params);
    cbor_item_t *map = cbor_new_definite_map(3);
    if (!map || !pa || s_put(map, "type", s_text("lifecycle", 9)) ||
        s_put(map, "kind", s_text(kind, kind_len)) || s_put(map, "params", s_take(&pa))) {
        s_release(&pa);
        s_release(&map);
        return NULL;
    }
    return map;
}

/* ================================================================ sign, verify, encode */

int proto_envelope_sign(proto_envelope_t *env, const uint8_t sk[PROTO_SECKEY_LEN])
{
    /* libsodium's secret key ends with its public key. */
    if (sodium_memcmp(sk + PROTO_SEED_LEN, env->signable + S_SIG_FROM_OFF, PROTO_PUBKEY_LEN) != 0)
        return -1;
    proto_ed25519_sign(sk, env->signable, env->signable_len, env->sig);
    return 0;
}

static int s_verify(const proto_envelope_t *env, int check_key, proto_envelope_reason_t *reason)
{
    const uint8_t *from = env->signable + S_SIG_FROM_OFF;
    if (check_key && proto_pubkey_check(from) != 0) {
        *reason = PROTO_ENV_WEAK_KEY;
        return -1;
    }
    if (proto_ed25519_verify_checked(from, env->signable, env->signable_len, env->sig) != 0) {
        *reason = PROTO_ENV_BAD_SIGNATURE;
        return -1;
    }
    *reason = PROTO_ENV_OK;
    return 0;
}

int proto_envelope_verify(const proto_envelope_t *env, proto_envelope_reason_t *reason)
{
    return s_verify(env, 1, reason);
}

int proto_envelope_verify_prechecked(const proto_envelope_t *env, proto_envelope_reason_t *reason)
{
    return s_verify(env, 0, reason);
}

const uint8_t *proto_envelope_signable(const proto_envelope_t *env, size_t *len)
{
    *len = env->signable_len;
    return env->signable;
}

static int s_encode(const proto_envelope_t *env, size_t header, uint8_t **out, size_t *len)
{
    size_t kind_len = env->signable_len - S_SIG_KIND_OFF;
    size_t body = S_ENV_FIXED_LEN + kind_len;
    uint8_t *buf = malloc(header + body);
    if (!buf)
        return -1;
    if (header) {
        buf[0] = (uint8_t) (body >> 24);
        buf[1] = (uint8_t) (body >> 16);
        buf[2] = (uint8_t) (body >> 8);
        buf[3] = (uint8_t) body;
    }
    s_envelope_write(buf + header, env->signable + S_SIG_ID_OFF, env->signable + S_SIG_FROM_OFF,
                     env->signable + S_SIG_TO_OFF, env->sig, env->signable + S_SIG_KIND_OFF, kind_len);
    *out = buf;
    *len = header + body;
    return 0;
}

int proto_envelope_encode(const proto_envelope_t *env, uint8_t **out, size_t *len)
{
    return s_encode(env, 0, out, len);
}

int proto_envelope_encode_frame(const proto_envelope_t *env, uint8_t **out, size_t *len)
{
    return s_encode(env, PROTO_FRAME_HEADER_LEN, out, len);
}

void proto_envelope_ack_frame(const uint8_t sk[PROTO_SECKEY_LEN], const uint8_t to[PROTO_PUBKEY_LEN],
                              const uint8_t in_reply_to[PROTO_UUID_LEN], const uint8_t id[PROTO_UUID_LEN],
                              uint8_t out[PROTO_ACK_FRAME_LEN])
{
    uint8_t signable[S_ACK_SIGNABLE_LEN];
    uint8_t sig[PROTO_SIG_LEN];
    uint8_t fresh[PROTO_UUID_LEN];
    const uint8_t *from = sk + PROTO_SEED_LEN;
    if (!id) {
        proto_uuid_v7_new(fresh);
        id = fresh;
    }
    s_signable_head(signable, id, from, to);
    /* The canonical ack kind: "type" (5 encoded bytes) sorts before
     * "in_reply_to" (12). */
    uint8_t *k = signable + S_SIG_KIND_OFF;
    *k++ = 0xa2;
    k = s_put_key(k, "type");
    k = s_put_key(k, "ack");
    k = s_put_key(k, "in_reply_to");
    s_put_fixed_bstr(k, in_reply_to, PROTO_UUID_LEN);
    proto_ed25519_sign(sk, signable, sizeof signable, sig);

    size_t body = PROTO_ACK_FRAME_LEN - PROTO_FRAME_HEADER_LEN;
    out[0] = 0;
    out[1] = 0;
    out[2] = (uint8_t) (body >> 8);
    out[3] = (uint8_t) body;
    s_envelope_write(out + PROTO_FRAME_HEADER_LEN, id, from, to, sig, signable + S_SIG_KIND_OFF,
                     S_ACK_KIND_LEN);
}

/* ================================================================ accessors */

const uint8_t *proto_envelope_id(const proto_envelope_t *env) { return env->signable + S_SIG_ID_OFF; }
const uint8_t *proto_envelope_from(const proto_envelope_t *env) { return env->signable + S_SIG_FROM_OFF; }
const uint8_t *proto_envelope_to(const proto_envelope_t *env) { return env->signable + S_SIG_TO_OFF; }
const uint8_t *proto_envelope_sig(const proto_envelope_t *env) { return env->sig; }
proto_kind_t proto_envelope_kind(const proto_envelope_t *env) { return env->kind; }
const cbor_item_t *proto_envelope_kind_map(const proto_envelope_t *env) { return env->kind_map; }

const cbor_item_t *proto_envelope_field(const proto_envelope_t *env, const char *name)
{
    return s_map_get(env->kind_map, name);
}

int proto_envelope_text(const proto_envelope_t *env, const char *name, const char **p, size_t *len)
{
    const cbor_item_t *v = s_map_get(env->kind_map, name);
    if (!v || !cbor_isa_string(v))
        return -1;
    *p = (const char *) cbor_string_handle(v);
    *len = cbor_string_length(v);
    return 0;
}

int proto_envelope_in_reply_to(const proto_envelope_t *env, uint8_t out[PROTO_UUID_LEN])
{
    if (env->kind != PROTO_KIND_RESPONSE && env->kind != PROTO_KIND_ACK)
        return -1;
    const cbor_item_t *v = s_map_get(env->kind_map, "in_reply_to");
    memcpy(out, cbor_bytestring_handle(v), PROTO_UUID_LEN); /* checked when made */
    return 0;
}

proto_handling_t proto_envelope_handling(const proto_envelope_t *env)
{
    if (env->kind != PROTO_KIND_MESSAGE && env->kind != PROTO_KIND_REQUEST &&
        env->kind != PROTO_KIND_FENCED_MESSAGE && env->kind != PROTO_KIND_RESPONSE)
        return PROTO_HANDLING_NONE;
    const cbor_item_t *v = s_map_get(env->kind_map, "handling_mode");
    if (!v)
        return PROTO_HANDLING_NONE;
    return s_text_is(v, "steer") ? PROTO_HANDLING_STEER : PROTO_HANDLING_QUEUE;
}

proto_status_t proto_envelope_status(const proto_envelope_t *env)
{
    if (env->kind != PROTO_KIND_RESPONSE)
        return PROTO_STATUS_NONE;
    const cbor_item_t *v = s_map_get(env->kind_map, "status");
    if (s_text_is(v, "accepted"))
        return PROTO_STATUS_ACCEPTED;
    return s_text_is(v, "completed") ? PROTO_STATUS_COMPLETED : PROTO_STATUS_FAILED;
}
