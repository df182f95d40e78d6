/* proto/sse.rl — the Server-Sent Events stream grammar (WHATWG HTML §9.2.5
 * "Parsing an event stream") and the event reader that interprets it
 * (§9.2.6); see sse.h for the contract. */
#include "proto/sse.h"

#include <assert.h>
#include <string.h>

/* ------------------------------------------------------------ parser */

/* A line's field is known: start its pieces afresh. */
static void s_field_begin(proto_sse_parser_t *sp, proto_sse_field_t field)
{
    sp->field = field;
    sp->first = true;
    sp->in_value = false;
    sp->ignore = false;
    sp->retry_digits = false;
    sp->retry_ms = 0;
}

/* Hand `len` value bytes at `at` to the callback. Returns -1 when the
 * callback asked to stop. */
static int s_piece(proto_sse_parser_t *sp, const uint8_t *at, size_t len, bool last)
{
    proto_sse_piece_t piece = {
        .field = sp->field,
        .value = len ? at : NULL,
        .len = len,
        .first = sp->first,
        .last = last,
    };
    if (last) {
        bool bad_retry = sp->field == PROTO_SSE_FIELD_RETRY && !sp->retry_digits;
        piece.ignore = sp->ignore || bad_retry;
        piece.retry_ms = piece.ignore ? 0 : sp->retry_ms;
    }
    sp->first = false;
    if (sp->on_piece(sp->user, &piece) != 0) {
        sp->reason = PROTO_SSE_ABORTED;
        return -1;
    }
    return 0;
}

/* The line ended at `end`: deliver the last piece of a known field, then
 * get ready for the next line. */
static int s_line_end(proto_sse_parser_t *sp, const uint8_t *end)
{
    int rc = 0;
    if (sp->field != PROTO_SSE_FIELD_NONE) {
        size_t len = sp->in_value ? (size_t) (end - sp->mark) : 0;
        rc = s_piece(sp, sp->mark, len, true);
    }
    sp->field = PROTO_SSE_FIELD_NONE;
    sp->in_value = false;
    sp->line_len = 0;
    return rc;
}

/* `n` more octets on the line, the last of them at `at`. Over the limit,
 * the value bytes before `at` are handed over first, so the callback sees
 * the same bytes before the error however the input was split (and a
 * reader whose own bound those bytes break reports that bound, always). */
static int s_count(proto_sse_parser_t *sp, const uint8_t *at, size_t n)
{
    sp->line_len += n;
    if (sp->line_len <= sp->line_max)
        return 0;
    if (sp->field != PROTO_SSE_FIELD_NONE && sp->in_value && at > sp->mark &&
        s_piece(sp, sp->mark, (size_t) (at - sp->mark), false) != 0)
        return -1;
    sp->reason = PROTO_SSE_LINE_TOO_LONG;
    return -1;
}

%%{
    machine proto_sse;
    alphtype unsigned char;
    access sp->;

    action count        { if (s_count(sp, fpc, 1) != 0) fbreak; }
    action value_start  { sp->mark = fpc; sp->in_value = true; }
    action line_end     { if (s_line_end(sp, fpc) != 0) fbreak; }
    action blank_line   { sp->blank = true; fbreak; }

    action field_data    { s_field_begin(sp, PROTO_SSE_FIELD_DATA); }
    action field_event   { s_field_begin(sp, PROTO_SSE_FIELD_EVENT); }
    action field_id      { s_field_begin(sp, PROTO_SSE_FIELD_ID); }
    action field_retry   { s_field_begin(sp, PROTO_SSE_FIELD_RETRY); }
    action field_comment { s_field_begin(sp, PROTO_SSE_FIELD_COMMENT); }

    # "If the field value does not contain U+0000 NULL, then set the last
    # event ID buffer to the field value. Otherwise, ignore the field."
    action id_nul { sp->ignore = true; }

    # "If the field value consists of only ASCII digits, then interpret the
    # field value as an integer in base ten ... Otherwise, ignore the field."
    action retry_digit {
        uint32_t d = (uint32_t) (fc - '0');
        sp->retry_digits = true;
        if (sp->retry_ms > (PROTO_SSE_RETRY_MAX - d) / 10)
            sp->ignore = true;
        else
            sp->retry_ms = sp->retry_ms * 10 + d;
    }
    action retry_other { sp->ignore = true; }

    # A stream that opens with one or two octets of a BOM and then breaks
    # off: those octets begin the name of a field nobody knows.
    action bom_broken_1 { if (s_count(sp, fpc, 1) != 0) fbreak; fhold; fgoto unknown_rest; }
    action bom_broken_2 { if (s_count(sp, fpc, 2) != 0) fbreak; fhold; fgoto unknown_rest; }
    action bom_done     { fgoto lines; }
    action no_bom       { fhold; fgoto lines; }

    # Characters (the spec's ABNF, over octets).
    lf         = '\n';
    cr         = '\r';
    space_char = ' ';
    colon      = ':';
    bom        = 0xEF 0xBB 0xBF;               # U+FEFF in UTF-8
    name_char  = any - ( lf | cr | colon );
    any_char   = any - ( lf | cr );

    # end-of-line = ( cr lf / cr / lf )
    # A CR ends the line at once (nothing waits for the next octet); an LF
    # right after it belongs to the same end-of-line, never to a blank line:
    # its priority beats that of a line start.
    end_of_line = lf | cr ( lf >(eol, 2) )?;

    # The value after the colon: one leading space is dropped (<: makes the
    # optional space win over a value starting with one).
    value       = ( any_char+ >value_start )?;
    value_id    = ( ( ( any_char - 0 ) | 0 @id_nul )+ >value_start )?;
    value_retry = ( ( digit @retry_digit | ( any_char - digit ) @retry_other )+ >value_start )?;
    after_colon = space_char? <: value;

    # field = 1*name-char [ colon [ space ] *any-char ] end-of-line
    # The four names the spec interprets, each with its own value rule; any
    # other name (including these with more characters) is ignored.
    known         = 'data' | 'event' | 'id' | 'retry';
    data_field    = 'data'  %field_data  ( colon after_colon )?;
    event_field   = 'event' %field_event ( colon after_colon )?;
    id_field      = 'id'    %field_id    ( colon ( space_char? <: value_id ) )?;
    retry_field   = 'retry' %field_retry ( colon ( space_char? <: value_retry ) )?;
    unknown_field = ( name_char+ - known ) ( colon any_char* )?;

    # comment = colon *any-char end-of-line
    comment = colon >field_comment after_colon;

    # event = *( comment / field ) end-of-line ; the end-of-line alone is the
    # blank line that dispatches
    body  = data_field | event_field | id_field | retry_field | unknown_field | comment;
    line  = ( ( body $count %line_end end_of_line ) | ( end_of_line >blank_line ) ) >(eol, 1);

    lines := line*;

    # The rest of a first line that began with a broken BOM.
    unknown_rest := ( ( name_char* ( colon any_char* )? ) $count %line_end end_of_line ) line*;

    # stream = [ bom ] *event
    main := bom @bom_done
          | 0xEF 0xBB ( any - 0xBF ) @bom_broken_2
          | 0xEF ( any - 0xBB ) @bom_broken_1
          | ( any - 0xEF ) @no_bom;
}%%

%% write data noerror nofinal;

int proto_sse_parser_init(proto_sse_parser_t *sp, size_t line_max)
{
    if (!sp || line_max == 0 || line_max > PROTO_SSE_LINE_MAX)
        return -1;
    memset(sp, 0, sizeof *sp);
    %% write init;
    sp->line_max = line_max;
    return 0;
}

ssize_t proto_sse_parse(proto_sse_parser_t *sp, const uint8_t *buf, size_t len,
                        proto_sse_piece_fn on_piece, void *user)
{
    if (sp->reason != PROTO_SSE_OK)
        return -1;
    const uint8_t *p = buf;
    const uint8_t *pe = buf + len;
    sp->on_piece = on_piece;
    sp->user = user;
    sp->blank = false;
    if (sp->in_value)
        sp->mark = buf; /* the value goes on from the previous buffer */

    %% write exec;

    if (sp->reason != PROTO_SSE_OK)
        return -1;
    if (sp->blank)
        return p - buf;
    assert(p == pe);
    /* Out of input inside a value: hand over what this buffer held. */
    if (sp->in_value && pe > sp->mark && s_piece(sp, sp->mark, (size_t) (pe - sp->mark), false) != 0)
        return -1;
    return -2;
}

proto_sse_reason_t proto_sse_parser_reason(const proto_sse_parser_t *sp)
{
    return sp->reason;
}

const char *proto_sse_reason_str(proto_sse_reason_t reason)
{
    switch (reason) {
    case PROTO_SSE_OK:            return "ok";
    case PROTO_SSE_LINE_TOO_LONG: return "line_too_long";
    case PROTO_SSE_ABORTED:       return "aborted";
    case PROTO_SSE_DATA_TOO_LONG: return "data_too_long";
    case PROTO_SSE_TYPE_TOO_LONG: return "type_too_long";
    case PROTO_SSE_ID_TOO_LONG:   return "id_too_long";
    case PROTO_SSE_NO_ROOM:       return "no_room";
    case PROTO_SSE_BAD_ID:        return "bad_id";
    case PROTO_SSE_BAD_TYPE:      return "bad_type";
    case PROTO_SSE_BAD_RETRY:     return "bad_retry";
    }
    return "unknown";
}

/* ------------------------------------------------------------ reader */

/* Append `len` bytes to a bounded buffer; -1 when they do not fit. */
static int s_append(void *dst, size_t *used, size_t cap, const uint8_t *src, size_t len)
{
    if (len > cap - *used)
        return -1;
    if (len)
        memcpy((uint8_t *) dst + *used, src, len);
    *used += len;
    return 0;
}

/* The interpretation of §9.2.6, one piece at a time. */
static int s_reader_piece(void *user, const proto_sse_piece_t *pc)
{
    proto_sse_reader_t *r = user;
    switch (pc->field) {
    case PROTO_SSE_FIELD_DATA:
        /* "Append the field value to the data buffer, then append a single
         * U+000A LINE FEED": kept as a separator, so the trailing LF the
         * spec strips at dispatch is never stored. */
        if (pc->first && r->data_lines > 0 &&
            s_append(r->data, &r->data_len, r->data_cap, (const uint8_t *) "\n", 1) != 0)
            goto data_too_long;
        if (s_append(r->data, &r->data_len, r->data_cap, pc->value, pc->len) != 0)
            goto data_too_long;
        if (pc->last)
            r->data_lines++;
        return 0;
    case PROTO_SSE_FIELD_EVENT:
        /* "Set the event type buffer to the field value." */
        if (pc->first)
            r->type_len = 0;
        if (s_append(r->type, &r->type_len, sizeof r->type, pc->value, pc->len) != 0) {
            r->reason = PROTO_SSE_TYPE_TOO_LONG;
            return -1;
        }
        return 0;
    case PROTO_SSE_FIELD_ID:
        if (pc->first)
            r->id_next_len = 0;
        if (s_append(r->id_next, &r->id_next_len, sizeof r->id_next, pc->value, pc->len) != 0) {
            r->reason = PROTO_SSE_ID_TOO_LONG;
            return -1;
        }
        if (pc->last && !pc->ignore) {
            memcpy(r->id, r->id_next, r->id_next_len);
            r->id_len = r->id_next_len;
        }
        return 0;
    case PROTO_SSE_FIELD_RETRY:
        if (pc->last && !pc->ignore)
            r->retry_ms = pc->retry_ms;
        return 0;
    case PROTO_SSE_FIELD_NONE:
    case PROTO_SSE_FIELD_COMMENT:
        return 0;
    }
    return 0;

data_too_long:
    r->reason = PROTO_SSE_DATA_TOO_LONG;
    return -1;
}

int proto_sse_reader_init(proto_sse_reader_t *r, uint8_t *data, size_t data_cap,
                          size_t line_max)
{
    if (!r || (!data && data_cap > 0))
        return -1;
    memset(r, 0, sizeof *r);
    if (proto_sse_parser_init(&r->parser, line_max) != 0)
        return -1;
    r->data = data;
    r->data_cap = data_cap;
    r->retry_ms = -1;
    return 0;
}

/* "Set the data buffer and the event type buffer to the empty string." */
static void s_reader_clear_block(proto_sse_reader_t *r)
{
    r->data_len = 0;
    r->data_lines = 0;
    r->type_len = 0;
}

ssize_t proto_sse_reader_next(proto_sse_reader_t *r, const uint8_t *buf, size_t len,
                              proto_sse_event_t *ev)
{
    if (r->reason != PROTO_SSE_OK)
        return -1;
    if (r->delivered) {
        s_reader_clear_block(r);
        r->delivered = false;
    }
    size_t used = 0;
    for (;;) {
        ssize_t n = proto_sse_parse(&r->parser, buf + used, len - used, s_reader_piece, r);
        if (n == -2)
            return -2;
        if (n < 0) {
            if (r->reason == PROTO_SSE_OK) /* not a bound of ours: the parser's */
                r->reason = proto_sse_parser_reason(&r->parser);
            return -1;
        }
        used += (size_t) n;
        /* A blank line. "If the data buffer is an empty string, set the
         * data buffer and the event type buffer to the empty string and
         * return." */
        if (r->data_lines == 0) {
            s_reader_clear_block(r);
            continue;
        }
        static const char message[] = "message";
        ev->type = r->type_len ? r->type : message;
        ev->type_len = r->type_len ? r->type_len : sizeof message - 1;
        ev->data = r->data_len ? r->data : (const uint8_t *) "";
        ev->data_len = r->data_len;
        ev->id = r->id_len ? r->id : "";
        ev->id_len = r->id_len;
        ev->retry_ms = r->retry_ms;
        r->delivered = true;
        return (ssize_t) used;
    }
}

proto_sse_reason_t proto_sse_reader_reason(const proto_sse_reader_t *r)
{
    return r->reason;
}
