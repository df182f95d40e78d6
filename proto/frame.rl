/* proto/frame.rl — the 4-byte length-prefixed frame reader and header
 * encoder; see frame.h for the contract.
 *
 * The grammar is the header: four octets, most significant first. The
 * payload that follows is "exactly `length` octets", a count no regular
 * grammar can express, so the machine stops after the header (fbreak) and C
 * moves the payload in one step: a slice when it lies whole in the buffer,
 * a bounded copy into caller storage when it does not. */
#include "proto/frame.h"

#include <assert.h>
#include <string.h>

%%{
    machine proto_frame;

    # Shift one header octet into the length (network byte order).
    action length_octet {
        r->length = (r->length << 8) | fc;
    }

    # The header is complete: refuse an oversize frame before any payload
    # byte is looked at, otherwise hand over to the payload copy in C.
    action header_end {
        if (r->length > r->max) {
            r->reason = PROTO_FRAME_OVERSIZE;
            fbreak;
        }
        r->in_payload = true;
        r->have = 0;
        fbreak;
    }

    # frame   = length payload
    # length  = 4OCTET        ; unsigned, big-endian, payload octets only
    # payload = length OCTET  ; moved by C, not by this machine
    length = any{4} $length_octet;

    main := length @header_end;
}%%

%% write data noerror nofinal;

int proto_frame_reader_init(proto_frame_reader_t *r, uint32_t max,
                            proto_frame_storage_fn storage, void *user)
{
    if (!r || max == 0 || max > PROTO_FRAME_MAX || !storage)
        return -1;
    memset(r, 0, sizeof *r);
    r->cs = proto_frame_start;
    r->max = max;
    r->storage = storage;
    r->user = user;
    return 0;
}

/* Back to "expecting a header" once a frame has been handed out. */
static void s_next_frame(proto_frame_reader_t *r)
{
    r->cs = proto_frame_start;
    r->length = 0;
    r->have = 0;
    r->in_payload = false;
    r->acc = NULL;
    r->acc_cap = 0;
}

ssize_t proto_frame_read(proto_frame_reader_t *r, const uint8_t *buf, size_t len,
                         proto_frame_t *out)
{
    if (r->reason != PROTO_FRAME_OK)
        return -1;
    const uint8_t *p = buf;
    const uint8_t *pe = buf + len;

    if (!r->in_payload) {
        int cs = r->cs;
        %% write exec;
        r->cs = cs;
        if (r->reason != PROTO_FRAME_OK)
            return -1;
        if (!r->in_payload)
            return -2; /* header still incomplete; every byte taken */
    }

    size_t need = r->length - r->have;
    size_t avail = (size_t) (pe - p);
    if (r->acc == NULL) {
        if (need <= avail) {
            /* Whole in this buffer (or empty): hand out a slice, no copy. */
            out->payload = p;
            out->len = need;
            out->copied = false;
            p += need;
            s_next_frame(r);
            return p - buf;
        }
        if (avail == 0)
            return -2; /* no payload byte yet: ask for storage only when one comes */
    }

    size_t take = need < avail ? need : avail;
    if (r->acc == NULL || r->have + take > r->acc_cap) {
        size_t cap = 0;
        uint8_t *acc = r->storage(r->user, r->have + take, r->length, &cap);
        if (acc == NULL || cap < r->have + take) {
            r->reason = PROTO_FRAME_NO_STORAGE;
            return -1;
        }
        r->acc = acc;
        r->acc_cap = cap;
    }
    memcpy(r->acc + r->have, p, take);
    r->have += (uint32_t) take;
    p += take;
    assert(r->have <= r->length);
    if (r->have < r->length)
        return -2;
    out->payload = r->acc;
    out->len = r->length;
    out->copied = true;
    s_next_frame(r);
    return p - buf;
}

proto_frame_reason_t proto_frame_reader_reason(const proto_frame_reader_t *r)
{
    return r->reason;
}

bool proto_frame_reader_busy(const proto_frame_reader_t *r)
{
    return r->in_payload || r->cs != proto_frame_start;
}

uint32_t proto_frame_reader_declared(const proto_frame_reader_t *r)
{
    return r->length;
}

const char *proto_frame_reason_str(proto_frame_reason_t reason)
{
    switch (reason) {
    case PROTO_FRAME_OK:         return "ok";
    case PROTO_FRAME_OVERSIZE:   return "oversize";
    case PROTO_FRAME_NO_STORAGE: return "no_storage";
    }
    return "unknown";
}

int proto_frame_header_encode(size_t payload_len, uint8_t out[PROTO_FRAME_HEADER_LEN])
{
    if (payload_len > PROTO_FRAME_MAX)
        return -1;
    uint32_t n = (uint32_t) payload_len;
    out[0] = (uint8_t) (n >> 24);
    out[1] = (uint8_t) (n >> 16);
    out[2] = (uint8_t) (n >> 8);
    out[3] = (uint8_t) n;
    return 0;
}
