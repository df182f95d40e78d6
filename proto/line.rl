/* proto/line.rl — the newline-delimited line splitter of the plain event
 * listener; see line.h for the contract.
 *
 * The only subtle octet is CR: it is content unless an LF follows it, and
 * that is not known until the next octet, which may come in a later read.
 * So a CR is held (neither counted nor stored) until its successor decides,
 * and the length limit is checked on content octets only: a line of exactly
 * `max` octets ended by CR LF is accepted however the input is split. */
#include "proto/line.h"

#include <assert.h>
#include <string.h>

/* A whole line ends at `end`; its octets in this buffer start at `start`. */
static void s_line_done(proto_line_reader_t *r, const uint8_t *start, const uint8_t *end)
{
    size_t seg = (size_t) (end - start);
    if (r->acc_len == 0) {
        /* Every octet of the line is in this buffer: a slice, no copy. */
        r->item = (proto_line_t) {.kind = PROTO_LINE_TEXT, .at = start, .len = seg};
    } else {
        assert(r->acc_len + seg <= r->max);
        if (seg)
            memcpy(r->acc + r->acc_len, start, seg);
        r->item = (proto_line_t) {.kind = PROTO_LINE_TEXT, .at = r->acc, .len = r->acc_len + seg};
    }
    r->len = 0;
    r->acc_len = 0;
    r->cr_held = false;
    r->done = true;
}

/* The line went over the limit: report it and forget what was kept. */
static void s_too_long(proto_line_reader_t *r)
{
    r->item = (proto_line_t) {.kind = PROTO_LINE_TOO_LONG, .at = NULL, .len = 0};
    r->len = 0;
    r->acc_len = 0;
    r->cr_held = false;
    r->skipping = true;
    r->done = true;
}

%%{
    machine proto_line;
    alphtype unsigned char;
    access r->;

    # One content octet; the one over the limit turns the line into a
    # TOO_LONG notice and the rest of it is skipped.
    action octet {
        if (++r->len > r->max) {
            s_too_long(r);
            fnext skip;
            fbreak;
        }
    }

    action cr_hold { r->cr_held = true; }

    # The held CR was not followed by LF: it is content after all. If it
    # arrived in an earlier read it was not stored then, so store it now.
    action cr_content {
        r->cr_held = false;
        if (++r->len > r->max) {
            s_too_long(r);
            fnext skip;
            fbreak;
        }
        if (fpc == buf)
            r->acc[r->acc_len++] = '\r';
    }

    action line_end {
        s_line_done(r, line_start, fpc);
        fbreak;
    }

    # CR LF: the CR is not content. It sits right before the LF when it came
    # in this read; otherwise it was held back and never stored.
    action line_end_crlf {
        s_line_done(r, line_start, fpc > buf ? fpc - 1 : fpc);
        fbreak;
    }

    action skip_end {
        r->skipping = false;
        line_start = fpc + 1;
        fgoto main;
    }

    lf    = '\n';
    cr    = '\r';
    octet = any - ( lf | cr );

    # line = *( octet / cr ) [ cr ] lf   ; the CR before LF is not content
    line = (
        start: (
            octet @octet                  -> start
          | cr @cr_hold                   -> cr_seen
          | lf @line_end                  -> final
        ),
        cr_seen: (
            lf @line_end_crlf             -> final
          | cr @cr_content @cr_hold       -> cr_seen
          | octet @cr_content @octet      -> start
        )
    );

    main := line*;

    # The tail of a too-long line, up to and including its LF.
    skip := ( any - lf )* lf @skip_end;
}%%

%% write data noerror nofinal;

int proto_line_reader_init(proto_line_reader_t *r, uint8_t *acc, size_t acc_cap, size_t max)
{
    if (!r || !acc || max == 0 || max > PROTO_LINE_MAX || acc_cap < max)
        return -1;
    memset(r, 0, sizeof *r);
    %% write init;
    r->max = max;
    r->acc = acc;
    r->acc_cap = acc_cap;
    return 0;
}

int proto_line_reader_init_grow(proto_line_reader_t *r, size_t max, proto_line_storage_fn storage,
                                void *user)
{
    if (!r || !storage || max == 0 || max > PROTO_LINE_MAX)
        return -1;
    memset(r, 0, sizeof *r);
    %% write init;
    r->max = max;
    r->storage = storage;
    r->user = user;
    return 0;
}

void proto_line_reader_storage_gone(proto_line_reader_t *r)
{
    assert(r->acc_len == 0);
    r->acc = NULL;
    r->acc_cap = 0;
}

bool proto_line_reader_busy(const proto_line_reader_t *r)
{
    return r->len > 0 || r->cr_held || r->skipping || r->acc_len > 0;
}

/* A growing reader makes room for `need` octets of the current line. */
static bool s_room(proto_line_reader_t *r, size_t need)
{
    if (need <= r->acc_cap)
        return true;
    if (!r->storage)
        return false;
    size_t cap = 0;
    uint8_t *acc = r->storage(r->user, need, &cap);
    if (!acc || cap < need)
        return false;
    r->acc = acc;
    r->acc_cap = cap;
    return true;
}

ssize_t proto_line_read(proto_line_reader_t *r, const uint8_t *buf, size_t len,
                        proto_line_t *out)
{
    const uint8_t *p = buf;
    const uint8_t *pe = buf + len;
    const uint8_t *line_start = buf;
    r->done = false;
    /* A line begun in an earlier read may be stored into during exec (its
     * rest, a held CR): make room first, bounded by what arrived. */
    if ((r->acc_len > 0 || r->cr_held) && !r->skipping) {
        size_t need = r->acc_len + len + 1; /* + a held CR */
        if (need > r->max)
            need = r->max; /* content never passes max: the octet over it is not kept */
        if (!s_room(r, need))
            return -1;
    }

    %% write exec;

    if (r->done) {
        *out = r->item;
        return p - buf;
    }
    assert(p == pe);
    if (!r->skipping) {
        /* Out of input mid-line: keep this read's part of it, except a CR
         * whose fate the next octet decides. */
        const uint8_t *end = pe;
        if (r->cr_held && end > line_start)
            end--;
        size_t seg = (size_t) (end - line_start);
        assert(r->acc_len + seg <= r->max);
        if (seg && !s_room(r, r->acc_len + seg))
            return -1;
        if (seg) {
            memcpy(r->acc + r->acc_len, line_start, seg);
            r->acc_len += seg;
        }
    }
    return -2;
}
