/* proto/utf8.h — kith's one UTF-8 validator (RFC 3629, Unicode Table 3-7):
 * incremental, for WebSocket text messages and close reasons, which may
 * arrive split at any byte, including in the middle of a code point; and
 * whole-buffer, for CBOR text strings, event lines and config/trust text.
 *
 * Well-formed means: no overlong forms, no surrogates (U+D800..U+DFFF), nothing
 * above U+10FFFF. The validator fails at the first byte that no well-formed
 * string can continue with, so a peer is refused as early as possible
 * (RFC 6455 §8.1). A string is complete only when it ends on a code point
 * boundary: ask proto_utf8_complete() at the end of a message.
 *
 * No allocation; the state is a small value the caller owns. */
#ifndef KITH_PROTO_UTF8_H
#define KITH_PROTO_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t need;   /* continuation bytes still owed by the current code point; PROTO_UTF8_FAILED once invalid */
    uint8_t lo;     /* smallest byte the next continuation byte may be */
    uint8_t hi;     /* largest byte the next continuation byte may be */
} proto_utf8_t;

/* `need` of a validator that has seen an invalid byte: it stays failed. */
#define PROTO_UTF8_FAILED 0xFF

/* Starts a new string. */
void proto_utf8_init(proto_utf8_t *u);

/* Validates the next `len` bytes of the string. Returns 0 when every byte so
 * far can still belong to a well-formed string, -1 when one cannot (and on
 * every later call). */
__attribute__((warn_unused_result))
int proto_utf8_feed(proto_utf8_t *u, const uint8_t *data, size_t len);

/* True when the bytes fed so far are a complete, well-formed string: no
 * failure and no code point left unfinished. */
bool proto_utf8_complete(const proto_utf8_t *u);

/* Whether data[0..len) is a whole, well-formed UTF-8 string. A predicate,
 * so true means valid (as its name says); the incremental proto_utf8_feed()
 * follows the library convention of 0 / -1 instead. */
__attribute__((warn_unused_result))
bool proto_utf8_valid(const uint8_t *data, size_t len);

#endif
