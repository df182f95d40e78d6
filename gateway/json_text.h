/* gateway/json_text.h — what yajl leaves unchecked in JSON text from
 * outside, checked before the text reaches it: NUL octets, well-formed
 * UTF-8 (yajl lets UTF-8-encoded surrogates such as ED A0 80 through) and
 * lone surrogate \u escapes (yajl turns them into '?'). Shared by every
 * gateway decoder of JSON bodies and frames. */
#ifndef KITH_GATEWAY_JSON_TEXT_H
#define KITH_GATEWAY_JSON_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <yajl/yajl_tree.h>

/* NULL when s[0..len) may go to yajl; otherwise what is wrong with it, as
 * the end of a sentence about the text ("holds a NUL octet", "is not
 * well-formed UTF-8", "has a lone surrogate \u escape"). Static string. */
const char *gateway_json_text_problem(const char *s, size_t len)
    __attribute__((warn_unused_result));

/* The member names of the objects open in one JSON text, so a decoder can
 * refuse a repeated name (yajl keeps the last). A decoder's object level
 * remembers gateway_json_names_mark() when it opens and gives it to _add
 * and to _release when it closes. Zero-initialise; free with _free. */
typedef struct {
    struct gateway_json_name *names; /* hashes and spans into arena */
    size_t count, cap;               /* names held, allocated */
    char *arena;                     /* their octets */
    size_t arena_len, arena_cap;
} gateway_json_names_t;

typedef enum {
    GATEWAY_JSON_NAME_OK = 0,
    GATEWAY_JSON_NAME_REPEATED,  /* the object already has this name */
    GATEWAY_JSON_NAME_TOO_MANY,  /* the object has `max` names already */
    GATEWAY_JSON_NAME_NOMEM,
} gateway_json_name_result_t;

/* Where the next object's names start. */
size_t gateway_json_names_mark(const gateway_json_names_t *n);

/* Adds name s[0..len) to the object whose names start at `first`. */
gateway_json_name_result_t gateway_json_names_add(gateway_json_names_t *n, size_t first,
                                                  const unsigned char *s, size_t len,
                                                  size_t max);

/* The object whose names start at `first` closed: forgets them. */
void gateway_json_names_release(gateway_json_names_t *n, size_t first);

void gateway_json_names_free(gateway_json_names_t *n);

/* A growing text buffer for the JSON frames the gateway writes: always
 * NUL-terminated; `failed` once an append ran out of memory (later appends
 * do nothing). Zero-initialise; the caller frees p. */
typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} gateway_text_t;

/* Appends s[0..n). */
void gateway_text_add(gateway_text_t *t, const char *s, size_t n);

/* Appends the C string s. */
void gateway_text_cstr(gateway_text_t *t, const char *s);

/* One JSON text from outside parsed strictly into yajl's tree: no NUL
 * octet, well-formed UTF-8, no lone surrogate and no \u0000 escape,
 * nesting at most depth_max, no object that repeats a member name or has
 * more than keys_max members. Returns the tree (caller frees it with
 * yajl_tree_free), or NULL with why[cap] saying what was wrong, for people,
 * and errno EINVAL (the text) or ENOMEM (out of memory: nothing was wrong
 * with the text). */
yajl_val gateway_json_tree_parse(const uint8_t *data, size_t len, unsigned depth_max,
                                 size_t keys_max, char *why, size_t cap)
    __attribute__((warn_unused_result));

#endif
