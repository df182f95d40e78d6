/* proto/http_body.rl — the request body (RFC 9112 §6, §7.1): counted by
 * Content-Length, or the chunked coding as a Ragel machine, de-chunked
 * into slices of the caller's buffer. The API is in proto/http.h. */
#include "proto/http.h"

#include <assert.h>
#include <limits.h>

#include "proto/http_internal.h"

/* How the body is delimited (RFC 9112 §6.3). */
enum {
    S_MODE_NONE = 0, /* no body */
    S_MODE_LENGTH,   /* Content-Length octets */
    S_MODE_CHUNKED   /* the chunked transfer coding */
};

/* ---------------------------------------------------------------- grammar */

/* RFC 9112 §7.1. chunk-data is counted, which a regular grammar cannot do:
 * the chunk line's action leaves the machine (fbreak) with the next state
 * set to the CRLF after the data, C hands the data back, then the machine
 * resumes. last-chunk is a chunk line whose size is 0. */
%%{
machine http_chunked;
include http_core "http.rl";

action size_start { st->chunk_size = 0; st->size_digits = 0; }
action size_digit {
    if (++st->size_digits > PROTO_HTTP_CHUNK_SIZE_DIGITS_MAX) {
        b->reason = PROTO_HTTP_ERR_CHUNK_SIZE_OVERFLOW;
        fbreak;
    }
    st->chunk_size = st->chunk_size << 4 | s_hex_value(fc);
}
action ext_start { st->ctx = PROTO_HTTP_CTX_CHUNK_EXT; }
action ext_octet {
    if (++st->ext_bytes > PROTO_HTTP_CHUNK_EXT_MAX) {
        b->reason = PROTO_HTTP_ERR_CHUNK_EXT_TOO_LARGE;
        fbreak;
    }
}
action chunk_line_done {
    if (st->chunk_size == 0) {
        st->ctx = PROTO_HTTP_CTX_LINE_START;
        fnext trailer_section;
    } else {
        /* Refuse a chunk that would pass the limit before any of it is read. */
        if (st->chunk_size > st->max_body - st->announced) {
            b->reason = PROTO_HTTP_ERR_BODY_TOO_LARGE;
            fbreak;
        }
        st->announced += st->chunk_size;
        st->remaining = st->chunk_size;
        st->ctx = PROTO_HTTP_CTX_CHUNK_DATA_END;
        fnext chunk_data_end;
        fbreak;
    }
}
action data_end_done { st->ctx = PROTO_HTTP_CTX_CHUNK_SIZE; fnext main; }

action trailer_octet {
    if (++st->trailer_bytes > st->trailer_max) {
        b->reason = PROTO_HTTP_ERR_TRAILER_TOO_LARGE;
        fbreak;
    }
}
action field_start    { st->ctx = PROTO_HTTP_CTX_FIELD_NAME; }
action field_name_end { st->ctx = PROTO_HTTP_CTX_FIELD_VALUE; }
action field_done     { st->ctx = PROTO_HTTP_CTX_LINE_START; }
action body_done      { b->done = true; fbreak; }

# §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
chunk_size = xdigit+ >size_start $size_digit;

# §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name
#                        [ BWS "=" BWS chunk-ext-val ] ), ignored
chunk_ext_name = token;
chunk_ext_val  = token | quoted_string;
chunk_ext      = ( BWS ";" BWS chunk_ext_name ( BWS "=" BWS chunk_ext_val )? )*;

# §7.1.2: trailer-section = *( field-line CRLF ); fields are checked like
# the head's and discarded (RFC 9110 §6.5.1 lets a recipient drop them).
trailer_field = token >field_start %field_name_end ":" field_octets CRLF @field_done;

# (ext_start on the non-empty chunk_ext: an entering action of a machine
# that may be empty also runs on leaving it empty.)
main            := chunk_size ( ( chunk_ext - zlen ) >ext_start $ext_octet )? CRLF @chunk_line_done;
chunk_data_end  := CRLF @data_end_done;
trailer_section := ( trailer_field* $trailer_octet ) CRLF @body_done;
}%%

%% write data;

/* ---------------------------------------------------------------- decoder */

static uint64_t s_hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return (uint64_t) (c - '0');
    return (uint64_t) ((c | 0x20) - 'a' + 10);
}

/* Run the chunked machine over start[0..len) until it needs chunk-data
 * handed back, ends, fails or runs out. Returns the octets consumed or -1. */
static ssize_t s_chunked_exec(proto_http_body_t *b, const unsigned char *start, size_t len)
{
    proto_http_body_state_t *st = &b->state;
    const unsigned char *p = start;
    const unsigned char *pe = start + len;
    int cs = st->cs;

    %% write exec;

    assert(p >= start && p <= pe);
    st->cs = cs;
    if (b->reason != PROTO_HTTP_OK)
        return -1;
    if (cs == http_chunked_error) {
        b->reason = proto_http_syntax_reason((proto_http_ctx_t) st->ctx, *p,
                                             p > start ? p[-1] : st->prev);
        return -1;
    }
    assert(st->remaining == 0 || cs == http_chunked_en_chunk_data_end);
    assert(st->announced <= st->max_body);
    assert(!b->done || cs >= http_chunked_first_final);
    if (p > start)
        st->prev = p[-1];
    return p - start;
}

int proto_http_body_init(proto_http_body_t *b, const proto_http_parser_t *p, uint64_t max_body)
{
    *b = (proto_http_body_t) { .done = false, .reason = PROTO_HTTP_OK };
    proto_http_body_state_t *st = &b->state;
    st->max_body = max_body;
    st->trailer_max = p->state.limits.max_head;
    st->cs = http_chunked_start;
    st->ctx = PROTO_HTTP_CTX_CHUNK_SIZE;
    if (!p->state.done || p->reason != PROTO_HTTP_OK) {
        b->reason = PROTO_HTTP_ERR_USAGE;
        return -1;
    }
    if (p->chunked) {
        st->mode = S_MODE_CHUNKED;
    } else if (p->has_content_length) {
        if (p->content_length > max_body) {
            b->reason = PROTO_HTTP_ERR_BODY_TOO_LARGE;
            return -1;
        }
        st->mode = S_MODE_LENGTH;
        st->remaining = p->content_length;
        b->done = p->content_length == 0;
    } else {
        st->mode = S_MODE_NONE; /* RFC 9112 §6.3 ¶7: a request without either has no body */
        b->done = true;
    }
    return 0;
}

ssize_t proto_http_body_parse(proto_http_body_t *b, const char *buf, size_t len,
                              proto_http_slice_t *data)
{
    proto_http_body_state_t *st = &b->state;
    *data = (proto_http_slice_t) { NULL, 0 };
    if (b->reason != PROTO_HTTP_OK)
        return -1;
    if (len > SSIZE_MAX)
        len = SSIZE_MAX;

    size_t pos = 0;
    while (!b->done && pos < len) {
        if (st->remaining > 0) {
            size_t n = len - pos < st->remaining ? len - pos : (size_t) st->remaining;
            *data = (proto_http_slice_t) { buf + pos, n };
            st->remaining -= n;
            st->prev = 0; /* a CR in the data is no line ending */
            pos += n;
            if (st->mode == S_MODE_LENGTH && st->remaining == 0)
                b->done = true;
            break; /* one slice per call */
        }
        assert(st->mode == S_MODE_CHUNKED);
        ssize_t n = s_chunked_exec(b, (const unsigned char *) buf + pos, len - pos);
        if (n < 0)
            return -1;
        pos += (size_t) n;
    }
    return (ssize_t) pos;
}

bool proto_http_body_done(const proto_http_body_t *b)
{
    return b->done;
}
