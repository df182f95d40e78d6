/* proto/envelope_meerkat.c — the Meerkat readability check (envelope_meerkat.h):
 * the fields each Meerkat kind struct knows, the JSON value range of its
 * serde_json values, and its ContentBlock shapes. */
#include "proto/envelope_meerkat.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A path for messages: "kind.params.a[3]"; long paths are cut. */
#define S_PATH_MAX 96

static int s_fail(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int s_fail(char *why, size_t cap, const char *fmt, ...)
{
    if (cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static bool s_key_is(const cbor_item_t *k, const char *name)
{
    size_t n = strlen(name);
    return cbor_isa_string(k) && cbor_string_length(k) == n &&
           memcmp(cbor_string_handle(k), name, n) == 0;
}

static const cbor_item_t *s_get(const cbor_item_t *map, const char *name)
{
    size_t n = cbor_map_size(map);
    struct cbor_pair *pairs = cbor_map_handle(map);
    for (size_t i = 0; i < n; i++)
        if (s_key_is(pairs[i].key, name))
            return pairs[i].value;
    return NULL;
}

static bool s_text_in(const cbor_item_t *v, const char *const *set)
{
    for (; *set; set++)
        if (s_key_is(v, *set))
            return true;
    return false;
}

/* path then suffix[len] into out[S_PATH_MAX], cut to fit. */
static void s_cat(char *out, const char *path, const char *suffix, size_t len)
{
    size_t n = strnlen(path, S_PATH_MAX - 1);
    memcpy(out, path, n);
    if (len > S_PATH_MAX - 1 - n)
        len = S_PATH_MAX - 1 - n;
    memcpy(out + n, suffix, len);
    out[n + len] = '\0';
}

/* "path.key" into out. */
static void s_join(char *out, const char *path, const cbor_item_t *key)
{
    char dotted[S_PATH_MAX];
    size_t kl = cbor_string_length(key);
    if (kl > S_PATH_MAX - 2)
        kl = S_PATH_MAX - 2;
    dotted[0] = '.';
    memcpy(dotted + 1, cbor_string_handle(key), kl);
    s_cat(out, path, dotted, kl + 1);
}

/* A serde_json value: no byte strings, no negative integer below -2^63
 * (JSON numbers in Meerkat are i64, u64 or f64). Map keys are text already
 * (the decoder checked). */
static int s_json_value(const cbor_item_t *v, const char *path, char *why, size_t cap)
{
    switch (cbor_typeof(v)) {
    case CBOR_TYPE_BYTESTRING:
        return s_fail(why, cap, "%s: a byte string has no JSON form, and Meerkat reads JSON "
                                "values here", path);
    case CBOR_TYPE_NEGINT:
        if (cbor_get_int(v) > (uint64_t) INT64_MAX)
            return s_fail(why, cap, "%s: an integer below -2^63 is outside Meerkat's JSON "
                                    "numbers (i64/u64)", path);
        return 0;
    case CBOR_TYPE_ARRAY: {
        size_t n = cbor_array_size(v);
        cbor_item_t **items = cbor_array_handle(v);
        for (size_t i = 0; i < n; i++) {
            char sub[S_PATH_MAX], idx[24];
            int il = snprintf(idx, sizeof idx, "[%zu]", i);
            s_cat(sub, path, idx, (size_t) il);
            if (s_json_value(items[i], sub, why, cap) != 0)
                return -1;
        }
        return 0;
    }
    case CBOR_TYPE_MAP: {
        size_t n = cbor_map_size(v);
        struct cbor_pair *pairs = cbor_map_handle(v);
        for (size_t i = 0; i < n; i++) {
            char sub[S_PATH_MAX];
            s_join(sub, path, pairs[i].key);
            if (s_json_value(pairs[i].value, sub, why, cap) != 0)
                return -1;
        }
        return 0;
    }
    default:
        return 0;
    }
}

/* Fields of a map beyond `known` (NULL-terminated) are refused. */
static int s_only(const cbor_item_t *map, const char *const *known, const char *path, char *why,
                  size_t cap)
{
    size_t n = cbor_map_size(map);
    struct cbor_pair *pairs = cbor_map_handle(map);
    for (size_t i = 0; i < n; i++)
        if (!s_text_in(pairs[i].key, known)) {
            char sub[S_PATH_MAX];
            s_join(sub, path, pairs[i].key);
            return s_fail(why, cap, "%s: a field Meerkat does not know (it would drop it and "
                                    "then fail the signature)", sub);
        }
    return 0;
}

static int s_need_text(const cbor_item_t *map, const char *name, const char *path, char *why,
                       size_t cap)
{
    const cbor_item_t *v = s_get(map, name);
    if (!v || !cbor_isa_string(v))
        return s_fail(why, cap, "%s.%s: Meerkat requires a string here", path, name);
    return 0;
}

/* One ContentBlock (meerkat-core types.rs): text, image, video, structured
 * or skill_context, tagged by "type". */
static int s_block(const cbor_item_t *b, const char *path, char *why, size_t cap)
{
    if (!cbor_isa_map(b))
        return s_fail(why, cap, "%s: a content block is an object", path);
    const cbor_item_t *type = s_get(b, "type");
    if (!type || !cbor_isa_string(type))
        return s_fail(why, cap, "%s.type: missing (text, image, video, structured, "
                                "skill_context)", path);
    if (s_key_is(type, "text")) {
        static const char *const k[] = {"type", "text", NULL};
        return s_only(b, k, path, why, cap) || s_need_text(b, "text", path, why, cap) ? -1 : 0;
    }
    if (s_key_is(type, "image") || s_key_is(type, "video")) {
        /* Meerkat flattens ImageData / VideoData into the block, tagged by
         * "source": each source has its own field, and the other source's
         * field is one its struct drops like any unknown one. */
        static const char *const k_image_inline[] = {"type", "media_type", "source", "data", NULL};
        static const char *const k_image_blob[] = {"type", "media_type", "source", "blob_id", NULL};
        static const char *const k_video_inline[] = {"type", "media_type", "duration_ms", "source",
                                                     "data", NULL};
        static const char *const k_video_uri[] = {"type", "media_type", "duration_ms", "source",
                                                  "uri", NULL};
        bool video = s_key_is(type, "video");
        const cbor_item_t *src = s_get(b, "source");
        bool inline_src = src && s_key_is(src, "inline");
        if (!inline_src && !(src && s_key_is(src, video ? "uri" : "blob")))
            return s_fail(why, cap, "%s.source: expected \"inline\" or \"%s\"", path,
                          video ? "uri" : "blob");
        const char *const *known = video ? (inline_src ? k_video_inline : k_video_uri)
                                         : (inline_src ? k_image_inline : k_image_blob);
        if (s_only(b, known, path, why, cap) || s_need_text(b, "media_type", path, why, cap))
            return -1;
        if (video) {
            const cbor_item_t *d = s_get(b, "duration_ms");
            if (!d || !cbor_isa_uint(d))
                return s_fail(why, cap, "%s.duration_ms: Meerkat requires an unsigned integer",
                              path);
        }
        return s_need_text(b, inline_src ? "data" : video ? "uri" : "blob_id", path, why, cap);
    }
    if (s_key_is(type, "structured")) {
        static const char *const k[] = {"type", "data", NULL};
        const cbor_item_t *d = s_get(b, "data");
        char sub[S_PATH_MAX];
        s_cat(sub, path, ".data", 5);
        if (s_only(b, k, path, why, cap))
            return -1;
        if (!d)
            return s_fail(why, cap, "%s: missing", sub);
        return s_json_value(d, sub, why, cap);
    }
    if (s_key_is(type, "skill_context")) {
        static const char *const k[] = {"type", "skill_key", "text", NULL};
        const cbor_item_t *sk = s_get(b, "skill_key");
        char sub[S_PATH_MAX];
        s_cat(sub, path, ".skill_key", 10);
        if (s_only(b, k, path, why, cap) || s_need_text(b, "text", path, why, cap))
            return -1;
        if (!sk)
            return s_fail(why, cap, "%s: missing", sub);
        return s_json_value(sk, sub, why, cap);
    }
    return s_fail(why, cap, "%s.type: not a Meerkat content block (text, image, video, "
                            "structured, skill_context)", path);
}

/* The optional fields Meerkat's content kinds share. */
static int s_common(const cbor_item_t *kind, char *why, size_t cap)
{
    const cbor_item_t *v;
    if ((v = s_get(kind, "blocks"))) {
        size_t n = cbor_array_size(v); /* an array: the decoder checked */
        cbor_item_t **items = cbor_array_handle(v);
        for (size_t i = 0; i < n; i++) {
            char sub[S_PATH_MAX];
            snprintf(sub, sizeof sub, "kind.blocks[%zu]", i);
            if (s_block(items[i], sub, why, cap) != 0)
                return -1;
        }
    }
    static const char *const taints[] = {"clean", "tainted", NULL};
    if ((v = s_get(kind, "content_taint")) && !s_text_in(v, taints))
        return s_fail(why, cap, "kind.content_taint: expected \"clean\" or \"tainted\"");
    if ((v = s_get(kind, "objective_id")) &&
        !(cbor_isa_bytestring(v) && cbor_bytestring_length(v) == PROTO_UUID_LEN))
        return s_fail(why, cap, "kind.objective_id: Meerkat requires a UUID (16 bytes)");
    if ((v = s_get(kind, "reply_endpoint"))) {
        static const char *const k[] = {"transport", "endpoint", NULL};
        static const char *const transports[] = {"tcp", "uds", "inproc", NULL};
        const cbor_item_t *t = cbor_isa_map(v) ? s_get(v, "transport") : NULL;
        if (!t || s_only(v, k, "kind.reply_endpoint", why, cap) || !s_text_in(t, transports) ||
            s_need_text(v, "endpoint", "kind.reply_endpoint", why, cap))
            return s_fail(why, cap, "kind.reply_endpoint: expected {\"transport\": \"tcp\"|"
                                    "\"uds\"|\"inproc\", \"endpoint\": text}");
    }
    return 0;
}

int proto_envelope_meerkat_check(const proto_envelope_t *env, char *why, size_t whycap)
{
    const cbor_item_t *kind = proto_envelope_kind_map(env);
    static const char *const k_message[] = {"type", "body", "blocks", "content_taint",
                                            "handling_mode", "objective_id", NULL};
    static const char *const k_fenced[] = {"type", "body", "blocks", "content_taint",
                                           "handling_mode", "objective_id",
                                           "expected_recipient", NULL};
    static const char *const k_request[] = {"type", "intent", "params", "blocks",
                                            "reply_endpoint", "content_taint", "handling_mode",
                                            "objective_id", NULL};
    static const char *const k_response[] = {"type", "in_reply_to", "status", "result",
                                             "blocks", "content_taint", "handling_mode",
                                             "objective_id", NULL};
    static const char *const k_ack[] = {"type", "in_reply_to", NULL};
    static const char *const k_lifecycle[] = {"type", "kind", "params", NULL};
    static const char *const k_recipient[] = {"mob_id", "agent_identity", "host_id",
                                              "binding_generation", "member_session_id",
                                              "generation", "fence_token", NULL};
    static const char *const lifecycle_kinds[] = {"mob.peer_added", "mob.peer_retired",
                                                  "mob.peer_unwired", NULL};
    const char *const *known = NULL;
    switch (proto_envelope_kind(env)) {
    case PROTO_KIND_MESSAGE:        known = k_message; break;
    case PROTO_KIND_FENCED_MESSAGE: known = k_fenced; break;
    case PROTO_KIND_REQUEST:        known = k_request; break;
    case PROTO_KIND_RESPONSE:       known = k_response; break;
    case PROTO_KIND_ACK:            known = k_ack; break;
    case PROTO_KIND_LIFECYCLE:      known = k_lifecycle; break;
    }
    if (!known)
        return s_fail(why, whycap, "kind.type: not a Meerkat kind");
    if (s_only(kind, known, "kind", why, whycap) != 0)
        return -1;
    const cbor_item_t *v;
    switch (proto_envelope_kind(env)) {
    case PROTO_KIND_LIFECYCLE:
        if (!s_text_in(s_get(kind, "kind"), lifecycle_kinds))
            return s_fail(why, whycap, "kind.kind: Meerkat's lifecycle kinds are %s",
                          PROTO_MEERKAT_LIFECYCLE_KINDS);
        return s_json_value(s_get(kind, "params"), "kind.params", why, whycap);
    case PROTO_KIND_REQUEST:
        if (s_json_value(s_get(kind, "params"), "kind.params", why, whycap) != 0)
            return -1;
        return s_common(kind, why, whycap);
    case PROTO_KIND_RESPONSE:
        if (s_json_value(s_get(kind, "result"), "kind.result", why, whycap) != 0)
            return -1;
        return s_common(kind, why, whycap);
    case PROTO_KIND_FENCED_MESSAGE:
        v = s_get(kind, "expected_recipient");
        if (s_only(v, k_recipient, "kind.expected_recipient", why, whycap) != 0)
            return -1;
        return s_common(kind, why, whycap);
    case PROTO_KIND_MESSAGE:
        return s_common(kind, why, whycap);
    case PROTO_KIND_ACK:
        return 0;
    }
    return 0;
}
