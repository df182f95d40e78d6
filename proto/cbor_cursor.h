/* proto/cbor_cursor.h — a zero-copy reader over CBOR that proto_cbor_check
 * has accepted (definite lengths only): one data item head at a time, a
 * string as (pointer, length) into the caller's buffer, a whole item passed
 * over without allocating. For bodies too large to build a libcbor tree of
 * on every message: a turn request carries up to a thousand history
 * messages, and the tree (an allocation per item and per string) was most
 * of an agent thread's time per turn (issue 13). No I/O, no allocation. */
#ifndef KITH_PROTO_CBOR_CURSOR_H
#define KITH_PROTO_CBOR_CURSOR_H

#include <stddef.h>
#include <stdint.h>

/* Where the next item starts, and where the buffer ends. */
typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} proto_cbor_cursor_t;

/* One item's head. */
typedef struct {
    unsigned major;      /* 0 uint, 1 negative, 2 bytes, 3 text, 4 array, 5 map, 6 tag, 7 simple/float */
    unsigned ai;         /* additional information (major 7: 20 false, 21 true, 22 null, 25-27 floats) */
    uint64_t arg;        /* the integer, a string's length, an array's items, a map's pairs, a tag */
    const uint8_t *data; /* major 2 and 3: the string's arg bytes, in the buffer */
} proto_cbor_head_t;

/* A cursor at the start of p[len]. */
static inline proto_cbor_cursor_t proto_cbor_cursor_at(const uint8_t *p, const uint8_t *end)
{
    return (proto_cbor_cursor_t){p, end};
}

/* Reads the head of the next item and moves past it (and past a string's
 * bytes; an array's or map's items come next). 0, or -1 when the buffer
 * ends inside the head or the string, or the head is indefinite or
 * reserved. */
int proto_cbor_cursor_head(proto_cbor_cursor_t *c, proto_cbor_head_t *h)
    __attribute__((warn_unused_result));

/* Moves past the next whole item, however nested (iteratively). 0 or -1
 * as proto_cbor_cursor_head. */
int proto_cbor_cursor_skip(proto_cbor_cursor_t *c) __attribute__((warn_unused_result));

#endif
