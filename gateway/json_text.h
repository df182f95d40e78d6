/* gateway/json_text.h — what yajl leaves unchecked in JSON text from
 * outside, checked before the text reaches it: NUL octets, well-formed
 * UTF-8 (yajl lets UTF-8-encoded surrogates such as ED A0 80 through) and
 * lone surrogate \u escapes (yajl turns them into '?'). Shared by every
 * gateway decoder of JSON bodies and frames. */
#ifndef KITH_GATEWAY_JSON_TEXT_H
#define KITH_GATEWAY_JSON_TEXT_H

#include <stddef.h>

/* NULL when s[0..len) may go to yajl; otherwise what is wrong with it, as
 * the end of a sentence about the text ("holds a NUL octet", "is not
 * well-formed UTF-8", "has a lone surrogate \u escape"). Static string. */
const char *gateway_json_text_problem(const char *s, size_t len)
    __attribute__((warn_unused_result));

#endif
