/* gateway/json_text.c — the checks yajl leaves to us on JSON text from
 * outside (see json_text.h). */
#include "gateway/json_text.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/utf8.h"

static int s_hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        unsigned d = ch >= '0' && ch <= '9'   ? (unsigned) (ch - '0')
                     : ch >= 'a' && ch <= 'f' ? (unsigned) (ch - 'a' + 10)
                     : ch >= 'A' && ch <= 'F' ? (unsigned) (ch - 'A' + 10)
                                              : 16u;
        if (d > 15)
            return -1;
        *v = *v * 16 + d;
    }
    return 0;
}

/* Escapes only occur inside strings (a backslash elsewhere is a syntax
 * error yajl reports), so a plain scan is enough. Malformed escapes count
 * as paired: yajl refuses them itself. */
static bool s_surrogates_paired(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\\')
            continue;
        if (i + 1 >= len)
            return true;
        if (s[i + 1] != 'u') {
            i++;
            continue;
        }
        unsigned v;
        if (i + 6 > len || s_hex4(s + i + 2, &v) != 0)
            return true;
        i += 5;
        if (v >= 0xDC00 && v <= 0xDFFF)
            return false;
        if (v >= 0xD800 && v <= 0xDBFF) {
            unsigned lo;
            if (i + 7 > len || s[i + 1] != '\\' || s[i + 2] != 'u' ||
                s_hex4(s + i + 3, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                return false;
            i += 6;
        }
    }
    return true;
}

/* ---------------------------------------------------------------- member names */

struct gateway_json_name {
    uint64_t hash;
    size_t off, len; /* into the arena */
};

static uint64_t s_fnv(const unsigned char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

size_t gateway_json_names_mark(const gateway_json_names_t *n)
{
    return n->count;
}

gateway_json_name_result_t gateway_json_names_add(gateway_json_names_t *n, size_t first,
                                                  const unsigned char *s, size_t len,
                                                  size_t max)
{
    uint64_t h = s_fnv(s, len);
    for (size_t i = first; i < n->count; i++)
        if (n->names[i].hash == h && n->names[i].len == len &&
            !memcmp(n->arena + n->names[i].off, s, len))
            return GATEWAY_JSON_NAME_REPEATED;
    if (n->count - first >= max)
        return GATEWAY_JSON_NAME_TOO_MANY;
    if (n->count == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 16;
        struct gateway_json_name *k = realloc(n->names, cap * sizeof *k);
        if (!k)
            return GATEWAY_JSON_NAME_NOMEM;
        n->names = k;
        n->cap = cap;
    }
    if (n->arena_len + len > n->arena_cap) {
        size_t cap = n->arena_cap ? n->arena_cap : 256;
        while (cap < n->arena_len + len)
            cap *= 2;
        char *a = realloc(n->arena, cap);
        if (!a)
            return GATEWAY_JSON_NAME_NOMEM;
        n->arena = a;
        n->arena_cap = cap;
    }
    if (len)
        memcpy(n->arena + n->arena_len, s, len);
    n->names[n->count++] = (struct gateway_json_name){.hash = h, .off = n->arena_len, .len = len};
    n->arena_len += len;
    return GATEWAY_JSON_NAME_OK;
}

void gateway_json_names_release(gateway_json_names_t *n, size_t first)
{
    if (first < n->count) {
        n->arena_len = n->names[first].off;
        n->count = first;
    }
}

void gateway_json_names_free(gateway_json_names_t *n)
{
    free(n->names);
    free(n->arena);
    memset(n, 0, sizeof *n);
}

/* ---------------------------------------------------------------- text */

const char *gateway_json_text_problem(const char *s, size_t len)
{
    if (memchr(s, '\0', len))
        return "holds a NUL octet";
    if (!proto_utf8_valid((const uint8_t *) s, len))
        return "is not well-formed UTF-8";
    if (!s_surrogates_paired(s, len))
        return "has a lone surrogate \\u escape";
    return NULL;
}

/* ---------------------------------------------------------------- text out */

void gateway_text_add(gateway_text_t *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->failed = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

void gateway_text_cstr(gateway_text_t *t, const char *s)
{
    gateway_text_add(t, s, strlen(s));
}

/* ---------------------------------------------------------------- trees */

/* Nesting depth (yajl builds and frees its tree recursively, so depth is
 * bounded before it sees the text) and \u0000 (which would cut a C string
 * short). A malformed text may pass: yajl refuses it next. */
static const char *s_scan(const char *s, size_t len, unsigned depth_max)
{
    unsigned depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!in_str) {
            if (c == '"')
                in_str = true;
            else if ((c == '[' || c == '{') && ++depth > depth_max)
                return "nests too deep";
            else if ((c == ']' || c == '}') && depth)
                depth--;
            continue;
        }
        if (c == '"') {
            in_str = false;
        } else if (c == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 6 <= len && !memcmp(s + i + 2, "0000", 4))
                return "holds \\u0000 in a string";
            i++;
        }
    }
    return NULL;
}

/* No object in the tree repeats a member name or has more than keys_max
 * members. Depth is bounded by s_scan. */
static bool s_tree_ok(yajl_val v, size_t keys_max)
{
    if (YAJL_IS_OBJECT(v)) {
        size_t n = v->u.object.len;
        if (n > keys_max)
            return false;
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < i; j++)
                if (!strcmp(v->u.object.keys[i], v->u.object.keys[j]))
                    return false;
            if (!s_tree_ok(v->u.object.values[i], keys_max))
                return false;
        }
    } else if (YAJL_IS_ARRAY(v)) {
        for (size_t i = 0; i < v->u.array.len; i++)
            if (!s_tree_ok(v->u.array.values[i], keys_max))
                return false;
    }
    return true;
}

yajl_val gateway_json_tree_parse(const uint8_t *data, size_t len, unsigned depth_max,
                                 size_t keys_max, char *why, size_t cap)
{
    const char *text = (const char *) data;
    const char *problem = gateway_json_text_problem(text, len);
    if (!problem)
        problem = s_scan(text, len, depth_max);
    if (problem) {
        snprintf(why, cap, "the text %s", problem);
        errno = EINVAL;
        return NULL;
    }
    char *copy = malloc(len + 1);
    if (!copy) {
        snprintf(why, cap, "out of memory");
        errno = ENOMEM;
        return NULL;
    }
    memcpy(copy, data, len);
    copy[len] = '\0';
    char err[128];
    yajl_val tree = yajl_tree_parse(copy, err, sizeof err);
    free(copy);
    if (!tree) {
        snprintf(why, cap, "the text is not JSON");
        errno = EINVAL;
        return NULL;
    }
    if (!s_tree_ok(tree, keys_max)) {
        yajl_tree_free(tree);
        snprintf(why, cap, "an object repeats a member name or has too many members");
        errno = EINVAL;
        return NULL;
    }
    return tree;
}
