/* gateway/json_text.c — the checks yajl leaves to us on JSON text from
 * outside (see json_text.h). */
#include "gateway/json_text.h"

#include <stdbool.h>
#include <stdint.h>
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
