/* proto/utf8.c — the UTF-8 validator, incremental and whole-buffer; see utf8.h. */
#include "proto/utf8.h"

#include <string.h>

/* Any byte of an 8-byte word with its top bit set: not all ASCII. */
#define UTF8_HIGH_BITS 0x8080808080808080ULL

void proto_utf8_init(proto_utf8_t *u)
{
    u->need = 0;
    u->lo = 0x80;
    u->hi = 0xBF;
}

/* Opens a code point at lead byte `c`: how many continuation bytes follow and
 * the range the first of them must fall in (Unicode Table 3-7). The narrowed
 * first ranges are what exclude overlongs (E0, F0), surrogates (ED) and code
 * points above U+10FFFF (F4). Returns -1 for bytes that never lead. */
static int s_lead(proto_utf8_t *u, uint8_t c)
{
    u->lo = 0x80;
    u->hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        u->need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        u->need = 2;
        if (c == 0xE0)
            u->lo = 0xA0;
        else if (c == 0xED)
            u->hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        u->need = 3;
        if (c == 0xF0)
            u->lo = 0x90;
        else if (c == 0xF4)
            u->hi = 0x8F;
    } else {
        return -1;  /* 80..BF continuation, C0..C1 overlong, F5..FF beyond U+10FFFF */
    }
    return 0;
}

int proto_utf8_feed(proto_utf8_t *u, const uint8_t *data, size_t len)
{
    if (u->need == PROTO_UTF8_FAILED)
        return -1;
    size_t i = 0;
    while (i < len) {
        if (u->need == 0) {
            /* Between code points: skip ASCII a word at a time. */
            while (len - i >= 8) {
                uint64_t word;
                memcpy(&word, data + i, sizeof word);
                if (word & UTF8_HIGH_BITS)
                    break;
                i += 8;
            }
            if (i == len)
                break;
            uint8_t c = data[i++];
            if (c < 0x80)
                continue;
            if (s_lead(u, c) != 0)
                goto fail;
        } else {
            uint8_t c = data[i++];
            if (c < u->lo || c > u->hi)
                goto fail;
            u->lo = 0x80;
            u->hi = 0xBF;
            u->need--;
        }
    }
    return 0;

fail:
    u->need = PROTO_UTF8_FAILED;
    return -1;
}

bool proto_utf8_complete(const proto_utf8_t *u)
{
    return u->need == 0;
}

bool proto_utf8_valid(const uint8_t *data, size_t len)
{
    proto_utf8_t u;
    proto_utf8_init(&u);
    return proto_utf8_feed(&u, data, len) == 0 && proto_utf8_complete(&u);
}
