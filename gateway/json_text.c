/* gateway/json_text.c — the checks yajl leaves to us on JSON text from
 * outside (see json_text.h). */
#include "gateway/json_text.h"

#include <stdbool.h>
#include <stdint.h>
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
