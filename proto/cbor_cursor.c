/* proto/cbor_cursor.c — the zero-copy CBOR reader (see cbor_cursor.h). It
 * trusts nothing: every length is checked against the bytes left, so a
 * caller that skipped proto_cbor_check gets -1, never a read past end. */
#include "proto/cbor_cursor.h"

int proto_cbor_cursor_head(proto_cbor_cursor_t *c, proto_cbor_head_t *h)
{
    if (c->p >= c->end)
        return -1;
    uint8_t ib = *c->p++;
    h->major = ib >> 5;
    h->ai = ib & 0x1f;
    h->arg = h->ai;
    h->data = NULL;
    if (h->ai >= 24 && h->ai <= 27) {
        size_t n = (size_t) 1 << (h->ai - 24);
        if ((size_t) (c->end - c->p) < n)
            return -1;
        h->arg = 0;
        for (size_t i = 0; i < n; i++)
            h->arg = h->arg << 8 | *c->p++;
    } else if (h->ai >= 28) {
        return -1; /* reserved, or indefinite: refused before we get here */
    }
    if (h->major == 2 || h->major == 3) {
        if (h->arg > (uint64_t) (c->end - c->p))
            return -1;
        h->data = c->p;
        c->p += h->arg;
    }
    return 0;
}

int proto_cbor_cursor_skip(proto_cbor_cursor_t *c)
{
    uint64_t todo = 1; /* items still to pass over */
    while (todo > 0) {
        proto_cbor_head_t h;
        if (proto_cbor_cursor_head(c, &h) < 0)
            return -1;
        todo--;
        uint64_t left = (uint64_t) (c->end - c->p);
        /* Every item takes a byte at least: a count beyond what is left
         * is a lie, and would overflow todo. */
        if (h.major == 4) {
            if (h.arg > left)
                return -1;
            todo += h.arg;
        } else if (h.major == 5) {
            if (h.arg > left / 2)
                return -1;
            todo += 2 * h.arg;
        } else if (h.major == 6) {
            todo += 1;
        }
        if (todo > left)
            return -1;
    }
    return 0;
}
