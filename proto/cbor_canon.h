/* proto/cbor_canon.h — the CBOR underneath signed envelopes: a bounded,
 * non-recursive well-formedness check that runs before libcbor sees any
 * input, a strict loader built on it, and a canonical encoder over libcbor
 * items.
 *
 * Canonical form (DESIGN §8, RFC 8949 §4.2.1 core deterministic encoding with
 * the RFC 7049 §3.9 "length-first" key order):
 *   - definite lengths only (indefinite items are re-encoded definite);
 *   - integers, lengths and tags in their shortest head;
 *   - floats in the shortest of binary16/32/64 that holds the value exactly,
 *     NaN as f97e00 (integral floats stay floats);
 *   - map keys sorted by the length of their encoding, then bytewise;
 *     two keys with the same encoding are an error, never silently merged.
 *
 * Why not cbor_load alone: it allocates a claimed array length before reading
 * it, and releasing a deep tree recurses. proto_cbor_check bounds both. */
#ifndef KITH_PROTO_CBOR_CANON_H
#define KITH_PROTO_CBOR_CANON_H

#include <stddef.h>
#include <stdint.h>

#include <cbor.h>

/* Deepest nesting proto_cbor_check accepts at all (its explicit stack). */
#define PROTO_CBOR_DEPTH_MAX 64

/* Why a CBOR input or item was refused. */
typedef enum {
    PROTO_CBOR_OK = 0,
    PROTO_CBOR_TRUNCATED,      /* input ends inside an item */
    PROTO_CBOR_TRAILING,       /* bytes after the one top-level item */
    PROTO_CBOR_ILL_FORMED,     /* reserved additional info, stray break, bad chunk,
                                  two-byte simple value below 32 (RFC 8949 §3.3) */
    PROTO_CBOR_INDEFINITE,     /* an indefinite length where they are refused */
    PROTO_CBOR_BAD_UTF8,       /* a text string (or chunk) that is not UTF-8 */
    PROTO_CBOR_TOO_DEEP,       /* nesting beyond the limit */
    PROTO_CBOR_TOO_MANY_ITEMS, /* more data items than the limit */
    PROTO_CBOR_UNSUPPORTED,    /* well-formed, but libcbor 0.8 cannot hold it: simple
                                  values other than false/true/null/undefined; tags
                                  6..20 (proto_cbor_load, in any head) */
    PROTO_CBOR_DUPLICATE_KEY,  /* two keys in one map with the same encoding */
    PROTO_CBOR_TOO_LARGE,      /* output would exceed the buffer's limit */
    PROTO_CBOR_NO_MEMORY,      /* allocation failed */
} proto_cbor_reason_t;

/* A short stable name for `r` ("truncated", "duplicate_key", …). */
const char *proto_cbor_reason_str(proto_cbor_reason_t r);

/* What proto_cbor_check accepts beyond plain definite-length CBOR. */
typedef struct {
    unsigned max_depth;       /* top-level item is depth 1; at most PROTO_CBOR_DEPTH_MAX */
    int allow_indefinite;     /* non-zero: indefinite strings, arrays and maps are allowed */
    size_t max_items;         /* most data items (keys and chunks count); 0: no limit */
} proto_cbor_limits_t;

/* Checks that p[len] is exactly one well-formed CBOR item within `lim`,
 * with every text string (every chunk of a chunked one) valid UTF-8,
 * without recursion and without allocating. Every claimed length is checked
 * against the bytes that remain, and items are counted, so a later cbor_load
 * allocates at most in proportion to len and to max_items (libcbor spends
 * about a hundred bytes of heap on each item, however small). Returns 0, or -1 with *reason set. */
int proto_cbor_check(const uint8_t *p, size_t len, const proto_cbor_limits_t *lim,
                     proto_cbor_reason_t *reason) __attribute__((warn_unused_result));

/* proto_cbor_check, then cbor_load. Returns a new item (caller owns one
 * reference: cbor_decref), or NULL with *reason set. A tag 6..20 is
 * UNSUPPORTED however wide its head: libcbor 0.8 refuses it in the
 * one-byte head the canonical encoder writes, so what loads always
 * re-encodes to bytes that load again. */
cbor_item_t *proto_cbor_load(const uint8_t *p, size_t len, const proto_cbor_limits_t *lim,
                             proto_cbor_reason_t *reason) __attribute__((warn_unused_result));

/* ------------------------------------------------------------ output buffer */

/* A growable byte buffer that refuses to grow past `limit`. After a failed
 * append the buffer stays failed (failed != PROTO_CBOR_OK) and ignores
 * further appends, so encoders check once at the end. */
typedef struct {
    uint8_t *data;               /* heap bytes, or the caller's fixed buffer */
    size_t len;                  /* bytes written */
    size_t cap;                  /* bytes allocated */
    size_t limit;                /* largest len allowed */
    int fixed;                   /* data is the caller's and never reallocated */
    proto_cbor_reason_t failed;  /* first failure, or PROTO_CBOR_OK */
} proto_cbor_buf_t;

/* An empty heap buffer that may grow to `limit` bytes. */
void proto_cbor_buf_init(proto_cbor_buf_t *b, size_t limit);
/* A buffer over the caller's mem[cap]; never allocates. */
void proto_cbor_buf_init_fixed(proto_cbor_buf_t *b, uint8_t *mem, size_t cap);
/* Frees a heap buffer's bytes and empties it. */
void proto_cbor_buf_free(proto_cbor_buf_t *b);
/* Hands the heap bytes to the caller (free()) and empties the buffer. NULL
 * when the buffer failed (which is then freed) or is fixed. */
uint8_t *proto_cbor_buf_take(proto_cbor_buf_t *b, size_t *len);

void proto_cbor_put_raw(proto_cbor_buf_t *b, const void *p, size_t n);
/* The shortest head for major type `major` (0…7) with argument `arg`. */
void proto_cbor_put_head(proto_cbor_buf_t *b, unsigned major, uint64_t arg);
void proto_cbor_put_bytes(proto_cbor_buf_t *b, const void *p, size_t n);
void proto_cbor_put_text(proto_cbor_buf_t *b, const char *s, size_t n);
/* The shortest exact float form; NaN is f97e00. */
void proto_cbor_put_float(proto_cbor_buf_t *b, double v);

/* Appends the canonical encoding of `item`, recursing at most `max_depth`
 * levels (item itself is level 1). Returns 0, or -1 with the buffer failed
 * (duplicate key, too deep, too large, no memory). */
int proto_cbor_canon_encode(proto_cbor_buf_t *b, const cbor_item_t *item, unsigned max_depth);

/* The canonical encoding of `item` in a new heap buffer (caller frees with
 * free()). Returns 0, or -1 with *reason set. */
int proto_cbor_canon_bytes(const cbor_item_t *item, unsigned max_depth, size_t limit,
                           uint8_t **out, size_t *len, proto_cbor_reason_t *reason);

#endif
