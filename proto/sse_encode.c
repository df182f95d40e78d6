/* proto/sse_encode.c — writes Server-Sent Events (WHATWG HTML §9.2) into a
 * caller's buffer; see sse.h. The output always uses LF line ends and puts
 * one space after each colon when a value follows, which a client strips, so
 * a value that itself starts with a space survives the trip. */
#include "proto/sse.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Where output goes: counted always, copied only when `out` is set. The
 * encoder runs twice, once to measure and once to write, so the two can
 * never disagree. */
typedef struct {
    uint8_t *out; /* destination, or NULL to measure only */
    size_t len;   /* bytes produced so far */
} s_sink_t;

static void s_put(s_sink_t *s, const void *bytes, size_t n)
{
    if (s->out && n)
        memcpy(s->out + s->len, bytes, n);
    s->len += n;
}

/* "name: value\n", or "name:\n" for an empty value. */
static void s_field(s_sink_t *s, const char *name, const void *value, size_t len)
{
    s_put(s, name, strlen(name));
    s_put(s, ":", 1);
    if (len) {
        s_put(s, " ", 1);
        s_put(s, value, len);
    }
    s_put(s, "\n", 1);
}

/* One `name` line per line of `v`, split at CR LF, CR or LF: the three line
 * ends a client recognises, so none can leak into a value. */
static void s_field_lines(s_sink_t *s, const char *name, const uint8_t *v, size_t len)
{
    size_t start = 0;
    for (;;) {
        size_t end = start;
        while (end < len && v[end] != '\r' && v[end] != '\n')
            end++;
        s_field(s, name, v + start, end - start);
        if (end == len)
            return;
        bool crlf = v[end] == '\r' && end + 1 < len && v[end + 1] == '\n';
        start = end + (crlf ? 2 : 1);
    }
}

/* A value that must fit on one line and that clients must not drop. */
static bool s_single_line(const char *v, size_t len)
{
    return !memchr(v, '\r', len) && !memchr(v, '\n', len) && !memchr(v, '\0', len);
}

/* A bound far past any real event that keeps the size arithmetic from
 * wrapping: one input byte grows to at most 6 output bytes (a lone line
 * break opens another "data:" line). */
#define S_INPUT_MAX (SIZE_MAX / 16)

static int s_check(const proto_sse_message_t *m, proto_sse_reason_t *why)
{
    proto_sse_reason_t reason = PROTO_SSE_OK;
    if (m->id && !s_single_line(m->id, m->id_len))
        reason = PROTO_SSE_BAD_ID;
    else if (m->type && !s_single_line(m->type, m->type_len))
        reason = PROTO_SSE_BAD_TYPE;
    else if (m->retry_ms > (int64_t) PROTO_SSE_RETRY_MAX)
        reason = PROTO_SSE_BAD_RETRY;
    else if ((m->id && m->id_len > S_INPUT_MAX) || (m->type && m->type_len > S_INPUT_MAX) ||
             (m->data && m->data_len > S_INPUT_MAX))
        reason = PROTO_SSE_NO_ROOM;
    if (why)
        *why = reason;
    return reason == PROTO_SSE_OK ? 0 : -1;
}

static void s_emit(s_sink_t *s, const proto_sse_message_t *m)
{
    if (m->id)
        s_field(s, "id", m->id, m->id_len);
    if (m->type)
        s_field(s, "event", m->type, m->type_len);
    if (m->retry_ms >= 0) {
        char digits[24];
        int n = snprintf(digits, sizeof digits, "%" PRId64, m->retry_ms);
        s_field(s, "retry", digits, (size_t) n);
    }
    if (m->data)
        s_field_lines(s, "data", m->data, m->data_len);
    s_put(s, "\n", 1);
}

ssize_t proto_sse_encoded_len(const proto_sse_message_t *msg, proto_sse_reason_t *why)
{
    if (s_check(msg, why) != 0)
        return -1;
    s_sink_t count = {.out = NULL, .len = 0};
    s_emit(&count, msg);
    return (ssize_t) count.len;
}

ssize_t proto_sse_encode(uint8_t *out, size_t cap, const proto_sse_message_t *msg,
                         proto_sse_reason_t *why)
{
    ssize_t need = proto_sse_encoded_len(msg, why);
    if (need < 0)
        return -1;
    if ((size_t) need > cap) {
        if (why)
            *why = PROTO_SSE_NO_ROOM;
        return -1;
    }
    s_sink_t sink = {.out = out, .len = 0};
    s_emit(&sink, msg);
    return (ssize_t) sink.len;
}

ssize_t proto_sse_encode_comment(uint8_t *out, size_t cap, const char *text, size_t len,
                                 proto_sse_reason_t *why)
{
    if (len > S_INPUT_MAX) {
        if (why)
            *why = PROTO_SSE_NO_ROOM;
        return -1;
    }
    s_sink_t count = {.out = NULL, .len = 0};
    s_field_lines(&count, "", (const uint8_t *) text, len);
    if (count.len > cap) {
        if (why)
            *why = PROTO_SSE_NO_ROOM;
        return -1;
    }
    s_sink_t sink = {.out = out, .len = 0};
    s_field_lines(&sink, "", (const uint8_t *) text, len);
    if (why)
        *why = PROTO_SSE_OK;
    return (ssize_t) sink.len;
}
