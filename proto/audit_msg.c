/* proto/audit_msg.c — audit bodies of spec/worker.cddl: a strict walk over
 * a libcbor tree that proto_cbor_load has already bounded, and an encoder
 * that writes canonical CBOR straight into a buffer. See audit_msg.h. */
#include "proto/audit_msg.h"

#include <stdlib.h>
#include <string.h>

#include <cbor.h>

#include "proto/cbor_canon.h"

/* ================================================================ names */

const char *proto_audit_err_str(proto_audit_err_t e)
{
    switch (e) {
    case PROTO_AUDIT_OK:              return "ok";
    case PROTO_AUDIT_E_TOO_LARGE:     return "too_large";
    case PROTO_AUDIT_E_MALFORMED:     return "malformed";
    case PROTO_AUDIT_E_BAD_UTF8:      return "bad_utf8";
    case PROTO_AUDIT_E_TOO_DEEP:      return "too_deep";
    case PROTO_AUDIT_E_NOT_MAP:       return "not_map";
    case PROTO_AUDIT_E_UNKNOWN_TYPE:  return "unknown_type";
    case PROTO_AUDIT_E_MISSING_FIELD: return "missing_field";
    case PROTO_AUDIT_E_UNKNOWN_FIELD: return "unknown_field";
    case PROTO_AUDIT_E_DUPLICATE_KEY: return "duplicate_key";
    case PROTO_AUDIT_E_WRONG_TYPE:    return "wrong_type";
    case PROTO_AUDIT_E_BAD_VALUE:     return "bad_value";
    case PROTO_AUDIT_E_TOO_MANY:      return "too_many";
    case PROTO_AUDIT_E_NO_MEMORY:     return "no_memory";
    }
    return "unknown";
}

const char *proto_audit_kind_str(proto_audit_kind_t k)
{
    switch (k) {
    case PROTO_AUDIT_APPEND:   return "audit_append";
    case PROTO_AUDIT_APPENDED: return "audit_appended";
    case PROTO_AUDIT_QUERY:    return "audit_query";
    case PROTO_AUDIT_RECORDS:  return "audit_records";
    case PROTO_AUDIT_VERIFY:   return "audit_verify";
    case PROTO_AUDIT_VERIFIED: return "audit_verified";
    case PROTO_AUDIT_ERROR:    return "audit_error";
    }
    return NULL;
}

/* ================================================================ decode */

/* The keys any audit body or event may have; a map's keys are matched
 * against the subset its schema allows. */
typedef enum {
    S_K_TYPE,
    S_K_EVENTS,
    S_K_FIRST_SEQ,
    S_K_COUNT,
    S_K_LIMIT,
    S_K_EVENT_TYPE,
    S_K_SINCE_MS,
    S_K_RECORDS,
    S_K_OK,
    S_K_FIRST_BAD,
    S_K_REASON,
    S_K_TIME_MS,
    S_K_DETAIL,
    S_K_CODE,
    S_K_MESSAGE,
    S_K_FILES,
    S_K_PARTIAL,
    S_K_N,
} s_key_t;

static const char *const s_key_names[S_K_N] = {
    "type", "events", "first_seq", "count", "limit", "event_type", "since_ms",
    "records", "ok", "first_bad", "reason", "time_ms", "detail", "code", "message", "files",
    "partial",
};

#define S_BIT(k) (1u << (k))

/* Per kind: the keys allowed and those required (type is both, always). */
typedef struct {
    proto_audit_kind_t kind;
    unsigned allowed;
    unsigned required;
} s_schema_t;

static const s_schema_t s_schemas[] = {
    {PROTO_AUDIT_APPEND, S_BIT(S_K_TYPE) | S_BIT(S_K_EVENTS), S_BIT(S_K_TYPE) | S_BIT(S_K_EVENTS)},
    {PROTO_AUDIT_APPENDED, S_BIT(S_K_TYPE) | S_BIT(S_K_FIRST_SEQ) | S_BIT(S_K_COUNT),
     S_BIT(S_K_TYPE) | S_BIT(S_K_FIRST_SEQ) | S_BIT(S_K_COUNT)},
    {PROTO_AUDIT_QUERY, S_BIT(S_K_TYPE) | S_BIT(S_K_LIMIT) | S_BIT(S_K_EVENT_TYPE) | S_BIT(S_K_SINCE_MS),
     S_BIT(S_K_TYPE) | S_BIT(S_K_LIMIT)},
    {PROTO_AUDIT_RECORDS, S_BIT(S_K_TYPE) | S_BIT(S_K_RECORDS) | S_BIT(S_K_PARTIAL),
     S_BIT(S_K_TYPE) | S_BIT(S_K_RECORDS)},
    {PROTO_AUDIT_VERIFY, S_BIT(S_K_TYPE), S_BIT(S_K_TYPE)},
    {PROTO_AUDIT_VERIFIED,
     S_BIT(S_K_TYPE) | S_BIT(S_K_OK) | S_BIT(S_K_FIRST_BAD) | S_BIT(S_K_REASON) | S_BIT(S_K_RECORDS) |
         S_BIT(S_K_FILES) | S_BIT(S_K_FIRST_SEQ),
     S_BIT(S_K_TYPE) | S_BIT(S_K_OK) | S_BIT(S_K_RECORDS)},
    {PROTO_AUDIT_ERROR, S_BIT(S_K_TYPE) | S_BIT(S_K_CODE) | S_BIT(S_K_MESSAGE),
     S_BIT(S_K_TYPE) | S_BIT(S_K_CODE) | S_BIT(S_K_MESSAGE)},
};

static const unsigned s_event_allowed = S_BIT(S_K_TIME_MS) | S_BIT(S_K_TYPE) | S_BIT(S_K_DETAIL);

/* audit-error's `code`: worker.cddl names exactly these. */
static const char *const s_error_codes[] = {"bad_request", "event", "io", "broken", "no_memory"};

static bool s_error_code_known(const char *p, size_t len)
{
    for (size_t i = 0; i < sizeof s_error_codes / sizeof s_error_codes[0]; i++)
        if (len == strlen(s_error_codes[i]) && memcmp(p, s_error_codes[i], len) == 0)
            return true;
    return false;
}

static bool s_text_eq(const cbor_item_t *item, const char *s)
{
    size_t n = strlen(s);
    return cbor_isa_string(item) && cbor_string_is_definite(item) && cbor_string_length(item) == n &&
           memcmp(cbor_string_handle(item), s, n) == 0;
}

/* Files a map's values under their keys (only keys in `allowed`); refuses
 * non-text keys, keys outside `allowed`, repeats, and missing `required`. */
static proto_audit_err_t s_map_fields(const cbor_item_t *map, unsigned allowed, unsigned required,
                                      const cbor_item_t *field[S_K_N])
{
    if (!cbor_isa_map(map) || !cbor_map_is_definite(map))
        return PROTO_AUDIT_E_NOT_MAP;
    memset(field, 0, sizeof(field[0]) * S_K_N);
    size_t n = cbor_map_size(map);
    struct cbor_pair *pairs = cbor_map_handle(map);
    for (size_t i = 0; i < n; i++) {
        if (!cbor_isa_string(pairs[i].key))
            return PROTO_AUDIT_E_NOT_MAP;
        size_t k = 0;
        while (k < S_K_N && !((allowed & S_BIT(k)) && s_text_eq(pairs[i].key, s_key_names[k])))
            k++;
        if (k == S_K_N)
            return PROTO_AUDIT_E_UNKNOWN_FIELD;
        if (field[k])
            return PROTO_AUDIT_E_DUPLICATE_KEY;
        field[k] = pairs[i].value;
    }
    for (size_t k = 0; k < S_K_N; k++)
        if ((required & S_BIT(k)) && !field[k])
            return PROTO_AUDIT_E_MISSING_FIELD;
    return PROTO_AUDIT_OK;
}

static proto_audit_err_t s_uint(const cbor_item_t *item, uint64_t *out)
{
    if (!cbor_isa_uint(item))
        return PROTO_AUDIT_E_WRONG_TYPE;
    *out = cbor_get_int(item);
    return PROTO_AUDIT_OK;
}

/* A text value of min..max bytes without NUL, copied NUL-terminated into
 * *out (caller frees). proto_cbor_check has already proved it UTF-8. */
static proto_audit_err_t s_text(const cbor_item_t *item, size_t min, size_t max, const char **out,
                                size_t *len)
{
    if (!cbor_isa_string(item) || !cbor_string_is_definite(item))
        return PROTO_AUDIT_E_WRONG_TYPE;
    size_t n = cbor_string_length(item);
    const unsigned char *p = cbor_string_handle(item);
    if (n < min || n > max || (n && memchr(p, 0, n)))
        return PROTO_AUDIT_E_BAD_VALUE;
    char *copy = malloc(n + 1);
    if (!copy)
        return PROTO_AUDIT_E_NO_MEMORY;
    if (n)
        memcpy(copy, p, n);
    copy[n] = '\0';
    *out = copy;
    *len = n;
    return PROTO_AUDIT_OK;
}

static const cbor_item_t *s_array(const cbor_item_t *item, proto_audit_err_t *err)
{
    if (!cbor_isa_array(item) || !cbor_array_is_definite(item)) {
        *err = PROTO_AUDIT_E_WRONG_TYPE;
        return NULL;
    }
    return item;
}

static proto_audit_err_t s_decode_events(const cbor_item_t *arr, proto_audit_msg_t *m)
{
    proto_audit_err_t e = PROTO_AUDIT_OK;
    if (!s_array(arr, &e))
        return e;
    size_t n = cbor_array_size(arr);
    if (n == 0)
        return PROTO_AUDIT_E_BAD_VALUE; /* [+ audit-event] */
    if (n > PROTO_AUDIT_EVENTS_MAX)
        return PROTO_AUDIT_E_TOO_MANY;
    if (!(m->events = calloc(n, sizeof *m->events)))
        return PROTO_AUDIT_E_NO_MEMORY;
    cbor_item_t **items = cbor_array_handle(arr);
    for (size_t i = 0; i < n; i++) {
        const cbor_item_t *f[S_K_N];
        proto_audit_event_t *ev = &m->events[i];
        if ((e = s_map_fields(items[i], s_event_allowed, s_event_allowed, f)) != PROTO_AUDIT_OK ||
            (e = s_uint(f[S_K_TIME_MS], &ev->time_ms)) != PROTO_AUDIT_OK ||
            (e = s_text(f[S_K_TYPE], 1, PROTO_AUDIT_TYPE_MAX, &ev->type, &ev->type_len)) !=
                PROTO_AUDIT_OK)
            return e;
        m->n_events = i + 1; /* type is owned now: clear frees it */
        if ((e = s_text(f[S_K_DETAIL], 0, PROTO_AUDIT_DETAIL_MAX, &ev->detail, &ev->detail_len)) !=
            PROTO_AUDIT_OK)
            return e;
    }
    return PROTO_AUDIT_OK;
}

static proto_audit_err_t s_decode_records(const cbor_item_t *arr, proto_audit_msg_t *m)
{
    proto_audit_err_t e = PROTO_AUDIT_OK;
    if (!s_array(arr, &e))
        return e;
    size_t n = cbor_array_size(arr);
    if (n > PROTO_AUDIT_LIMIT_MAX)
        return PROTO_AUDIT_E_TOO_MANY;
    if (n && !(m->records = calloc(n, sizeof *m->records)))
        return PROTO_AUDIT_E_NO_MEMORY;
    cbor_item_t **items = cbor_array_handle(arr);
    for (size_t i = 0; i < n; i++) {
        if ((e = s_text(items[i], 1, PROTO_AUDIT_RECORD_MAX, &m->records[i].p, &m->records[i].len)) !=
            PROTO_AUDIT_OK)
            return e;
        m->n_records = i + 1;
    }
    return PROTO_AUDIT_OK;
}

static proto_audit_err_t s_from_cbor(proto_cbor_reason_t r)
{
    switch (r) {
    case PROTO_CBOR_TOO_MANY_ITEMS:
    case PROTO_CBOR_TOO_LARGE: return PROTO_AUDIT_E_TOO_LARGE;
    case PROTO_CBOR_BAD_UTF8:  return PROTO_AUDIT_E_BAD_UTF8;
    case PROTO_CBOR_TOO_DEEP:  return PROTO_AUDIT_E_TOO_DEEP;
    case PROTO_CBOR_NO_MEMORY: return PROTO_AUDIT_E_NO_MEMORY;
    default:                   return PROTO_AUDIT_E_MALFORMED;
    }
}

static proto_audit_err_t s_decode(const cbor_item_t *root, proto_audit_msg_t *m)
{
    const cbor_item_t *f[S_K_N];
    proto_audit_err_t e;
    if (!cbor_isa_map(root))
        return PROTO_AUDIT_E_NOT_MAP;
    /* `type` says which keys the rest may be; s_map_fields below refuses
     * a second `type` and non-text keys. */
    const cbor_item_t *type = NULL;
    size_t n = cbor_map_size(root);
    struct cbor_pair *pairs = cbor_map_handle(root);
    for (size_t i = 0; i < n && !type; i++)
        if (s_text_eq(pairs[i].key, "type"))
            type = pairs[i].value;
    if (!type)
        return PROTO_AUDIT_E_MISSING_FIELD;
    if (!cbor_isa_string(type))
        return PROTO_AUDIT_E_WRONG_TYPE;
    const s_schema_t *schema = NULL;
    for (size_t i = 0; i < sizeof s_schemas / sizeof s_schemas[0]; i++)
        if (s_text_eq(type, proto_audit_kind_str(s_schemas[i].kind)))
            schema = &s_schemas[i];
    if (!schema)
        return PROTO_AUDIT_E_UNKNOWN_TYPE;
    if ((e = s_map_fields(root, schema->allowed, schema->required, f)) != PROTO_AUDIT_OK)
        return e;
    m->kind = schema->kind;

    switch (m->kind) {
    case PROTO_AUDIT_APPEND:
        return s_decode_events(f[S_K_EVENTS], m);
    case PROTO_AUDIT_APPENDED:
        if ((e = s_uint(f[S_K_FIRST_SEQ], &m->first_seq)) != PROTO_AUDIT_OK)
            return e;
        return s_uint(f[S_K_COUNT], &m->count);
    case PROTO_AUDIT_QUERY: {
        uint64_t limit;
        if ((e = s_uint(f[S_K_LIMIT], &limit)) != PROTO_AUDIT_OK)
            return e;
        if (limit > PROTO_AUDIT_LIMIT_MAX)
            return PROTO_AUDIT_E_BAD_VALUE;
        m->limit = (uint32_t) limit;
        if (f[S_K_SINCE_MS]) {
            if ((e = s_uint(f[S_K_SINCE_MS], &m->since_ms)) != PROTO_AUDIT_OK)
                return e;
            m->has_since = true;
        }
        if (f[S_K_EVENT_TYPE])
            return s_text(f[S_K_EVENT_TYPE], 1, PROTO_AUDIT_TYPE_MAX, &m->event_type,
                          &m->event_type_len);
        return PROTO_AUDIT_OK;
    }
    case PROTO_AUDIT_RECORDS:
        if (f[S_K_PARTIAL]) {
            if (!cbor_is_bool(f[S_K_PARTIAL]))
                return PROTO_AUDIT_E_WRONG_TYPE;
            if (!cbor_get_bool(f[S_K_PARTIAL]))
                return PROTO_AUDIT_E_BAD_VALUE; /* `? partial: true`: absent, never false */
            m->partial = true;
        }
        return s_decode_records(f[S_K_RECORDS], m);
    case PROTO_AUDIT_VERIFY:
        return PROTO_AUDIT_OK;
    case PROTO_AUDIT_VERIFIED:
        if (!cbor_is_bool(f[S_K_OK]))
            return PROTO_AUDIT_E_WRONG_TYPE;
        m->ok = cbor_get_bool(f[S_K_OK]);
        if ((e = s_uint(f[S_K_RECORDS], &m->checked)) != PROTO_AUDIT_OK)
            return e;
        if (f[S_K_FIRST_BAD]) {
            if ((e = s_uint(f[S_K_FIRST_BAD], &m->first_bad)) != PROTO_AUDIT_OK)
                return e;
            m->has_first_bad = true;
        }
        if (f[S_K_FILES] && (e = s_uint(f[S_K_FILES], &m->files)) != PROTO_AUDIT_OK)
            return e;
        if (f[S_K_FIRST_SEQ]) {
            if ((e = s_uint(f[S_K_FIRST_SEQ], &m->first_seq)) != PROTO_AUDIT_OK)
                return e;
            m->has_first_seq = true;
        }
        if (f[S_K_REASON])
            return s_text(f[S_K_REASON], 0, PROTO_AUDIT_REASON_MAX, &m->reason, &m->reason_len);
        return PROTO_AUDIT_OK;
    case PROTO_AUDIT_ERROR:
        if ((e = s_text(f[S_K_CODE], 1, PROTO_AUDIT_CODE_MAX, &m->code, &m->code_len)) != PROTO_AUDIT_OK)
            return e;
        if (!s_error_code_known(m->code, m->code_len))
            return PROTO_AUDIT_E_BAD_VALUE;
        return s_text(f[S_K_MESSAGE], 0, PROTO_AUDIT_REASON_MAX, &m->reason, &m->reason_len);
    }
    return PROTO_AUDIT_E_UNKNOWN_TYPE;
}

int proto_audit_msg_decode(const uint8_t *p, size_t len, proto_audit_msg_t *out,
                           proto_audit_err_t *err)
{
    static const proto_cbor_limits_t lim = {
        .max_depth = PROTO_AUDIT_DEPTH_MAX, .allow_indefinite = 0, .max_items = PROTO_AUDIT_ITEMS_MAX};
    memset(out, 0, sizeof *out);
    proto_audit_err_t e;
    cbor_item_t *root = NULL;
    if (len > PROTO_AUDIT_MSG_MAX) {
        e = PROTO_AUDIT_E_TOO_LARGE;
        goto fail;
    }
    proto_cbor_reason_t cr = PROTO_CBOR_OK;
    if (!(root = proto_cbor_load(p, len, &lim, &cr))) {
        e = s_from_cbor(cr);
        goto fail;
    }
    if ((e = s_decode(root, out)) != PROTO_AUDIT_OK)
        goto fail;
    cbor_decref(&root);
    *err = PROTO_AUDIT_OK;
    return 0;
fail:
    if (root)
        cbor_decref(&root);
    proto_audit_msg_clear(out);
    *err = e;
    return -1;
}

void proto_audit_msg_clear(proto_audit_msg_t *m)
{
    for (size_t i = 0; i < m->n_events; i++) {
        free((void *) m->events[i].type);
        free((void *) m->events[i].detail);
    }
    free(m->events);
    for (size_t i = 0; i < m->n_records; i++)
        free((void *) m->records[i].p);
    free(m->records);
    free((void *) m->event_type);
    free((void *) m->reason);
    free((void *) m->code);
    memset(m, 0, sizeof *m);
}

/* ================================================================ encode */

static void s_put_str(proto_cbor_buf_t *b, const char *s)
{
    proto_cbor_put_text(b, s, strlen(s));
}

static void s_put_uint(proto_cbor_buf_t *b, const char *key, uint64_t v)
{
    s_put_str(b, key);
    proto_cbor_put_head(b, 0, v);
}

static bool s_text_ok(const char *p, size_t len, size_t min, size_t max)
{
    return (p || len == 0) && len >= min && len <= max && !(len && memchr(p, 0, len));
}

/* Checks *m against the decoder's bounds, so nothing kith encodes is
 * refused by kith. UTF-8 is the caller's promise (the decoder checks it). */
static proto_audit_err_t s_encode_check(const proto_audit_msg_t *m)
{
    switch (m->kind) {
    case PROTO_AUDIT_APPEND:
        if (m->n_events == 0)
            return PROTO_AUDIT_E_BAD_VALUE;
        if (m->n_events > PROTO_AUDIT_EVENTS_MAX)
            return PROTO_AUDIT_E_TOO_MANY;
        for (size_t i = 0; i < m->n_events; i++) {
            const proto_audit_event_t *ev = &m->events[i];
            if (!s_text_ok(ev->type, ev->type_len, 1, PROTO_AUDIT_TYPE_MAX) ||
                !s_text_ok(ev->detail, ev->detail_len, 0, PROTO_AUDIT_DETAIL_MAX))
                return PROTO_AUDIT_E_BAD_VALUE;
        }
        return PROTO_AUDIT_OK;
    case PROTO_AUDIT_QUERY:
        if (m->limit > PROTO_AUDIT_LIMIT_MAX ||
            (m->event_type && !s_text_ok(m->event_type, m->event_type_len, 1, PROTO_AUDIT_TYPE_MAX)))
            return PROTO_AUDIT_E_BAD_VALUE;
        return PROTO_AUDIT_OK;
    case PROTO_AUDIT_RECORDS:
        if (m->n_records > PROTO_AUDIT_LIMIT_MAX)
            return PROTO_AUDIT_E_TOO_MANY;
        for (size_t i = 0; i < m->n_records; i++)
            if (!s_text_ok(m->records[i].p, m->records[i].len, 1, PROTO_AUDIT_RECORD_MAX))
                return PROTO_AUDIT_E_BAD_VALUE;
        return PROTO_AUDIT_OK;
    case PROTO_AUDIT_VERIFIED:
        if (m->reason && !s_text_ok(m->reason, m->reason_len, 0, PROTO_AUDIT_REASON_MAX))
            return PROTO_AUDIT_E_BAD_VALUE;
        return PROTO_AUDIT_OK;
    case PROTO_AUDIT_ERROR:
        if (!s_text_ok(m->code, m->code_len, 1, PROTO_AUDIT_CODE_MAX) ||
            !s_error_code_known(m->code, m->code_len) ||
            !s_text_ok(m->reason, m->reason_len, 0, PROTO_AUDIT_REASON_MAX))
            return PROTO_AUDIT_E_BAD_VALUE;
        return PROTO_AUDIT_OK;
    case PROTO_AUDIT_APPENDED:
    case PROTO_AUDIT_VERIFY:
        return PROTO_AUDIT_OK;
    }
    return PROTO_AUDIT_E_UNKNOWN_TYPE;
}

/* Keys go in canonical order (shorter encoding first, then bytewise). */
int proto_audit_msg_encode(const proto_audit_msg_t *m, uint8_t **out, size_t *len,
                           proto_audit_err_t *err)
{
    *out = NULL;
    *len = 0;
    proto_audit_err_t e = s_encode_check(m);
    if (e != PROTO_AUDIT_OK) {
        *err = e;
        return -1;
    }
    proto_cbor_buf_t b;
    proto_cbor_buf_init(&b, PROTO_AUDIT_MSG_MAX);
    const char *type = proto_audit_kind_str(m->kind);
    switch (m->kind) {
    case PROTO_AUDIT_APPEND:
        proto_cbor_put_head(&b, 5, 2);
        s_put_str(&b, "type");
        s_put_str(&b, type);
        s_put_str(&b, "events");
        proto_cbor_put_head(&b, 4, m->n_events);
        for (size_t i = 0; i < m->n_events; i++) {
            const proto_audit_event_t *ev = &m->events[i];
            proto_cbor_put_head(&b, 5, 3);
            s_put_str(&b, "type");
            proto_cbor_put_text(&b, ev->type, ev->type_len);
            s_put_str(&b, "detail");
            proto_cbor_put_text(&b, ev->detail, ev->detail_len);
            s_put_uint(&b, "time_ms", ev->time_ms);
        }
        break;
    case PROTO_AUDIT_APPENDED:
        proto_cbor_put_head(&b, 5, 3);
        s_put_str(&b, "type");
        s_put_str(&b, type);
        s_put_uint(&b, "count", m->count);
        s_put_uint(&b, "first_seq", m->first_seq);
        break;
    case PROTO_AUDIT_QUERY:
        proto_cbor_put_head(&b, 5, 2 + (m->has_since ? 1 : 0) + (m->event_type ? 1 : 0));
        s_put_str(&b, "type");
        s_put_str(&b, type);
        s_put_uint(&b, "limit", m->limit);
        if (m->has_since)
            s_put_uint(&b, "since_ms", m->since_ms);
        if (m->event_type) {
            s_put_str(&b, "event_type");
            proto_cbor_put_text(&b, m->event_type, m->event_type_len);
        }
        break;
    case PROTO_AUDIT_RECORDS:
        proto_cbor_put_head(&b, 5, 2 + (m->partial ? 1 : 0));
        s_put_str(&b, "type");
        s_put_str(&b, type);
        if (m->partial) { /* "partial" sorts before "records": same length */
            s_put_str(&b, "partial");
            proto_cbor_put_head(&b, 7, 21);
        }
        s_put_str(&b, "records");
        proto_cbor_put_head(&b, 4, m->n_records);
        for (size_t i = 0; i < m->n_records; i++)
            proto_cbor_put_text(&b, m->records[i].p, m->records[i].len);
        break;
    case PROTO_AUDIT_VERIFY:
        proto_cbor_put_head(&b, 5, 1);
        s_put_str(&b, "type");
        s_put_str(&b, type);
        break;
    case PROTO_AUDIT_VERIFIED:
        proto_cbor_put_head(&b, 5, 3 + (m->reason ? 1 : 0) + (m->has_first_bad ? 1 : 0) +
                                       (m->files ? 1 : 0) + (m->has_first_seq ? 1 : 0));
        s_put_str(&b, "ok");
        proto_cbor_put_head(&b, 7, m->ok ? 21 : 20);
        s_put_str(&b, "type");
        s_put_str(&b, type);
        if (m->files)
            s_put_uint(&b, "files", m->files);
        if (m->reason) {
            s_put_str(&b, "reason");
            proto_cbor_put_text(&b, m->reason, m->reason_len);
        }
        s_put_uint(&b, "records", m->checked);
        if (m->has_first_bad)
            s_put_uint(&b, "first_bad", m->first_bad);
        if (m->has_first_seq)
            s_put_uint(&b, "first_seq", m->first_seq);
        break;
    case PROTO_AUDIT_ERROR:
        proto_cbor_put_head(&b, 5, 3);
        s_put_str(&b, "code");
        proto_cbor_put_text(&b, m->code, m->code_len);
        s_put_str(&b, "type");
        s_put_str(&b, type);
        s_put_str(&b, "message");
        proto_cbor_put_text(&b, m->reason, m->reason_len);
        break;
    }
    if (b.failed != PROTO_CBOR_OK) {
        *err = b.failed == PROTO_CBOR_NO_MEMORY ? PROTO_AUDIT_E_NO_MEMORY : PROTO_AUDIT_E_TOO_LARGE;
        proto_cbor_buf_free(&b);
        return -1;
    }
    *out = proto_cbor_buf_take(&b, len);
    if (!*out) {
        *err = PROTO_AUDIT_E_NO_MEMORY;
        return -1;
    }
    *err = PROTO_AUDIT_OK;
    return 0;
}
