/* router/comms/event_line.c — deciding what a plain event line says (WIRE
 * §10), with yajl's event parser: a line is taken exactly as sent or
 * refused with a reason, never altered. */
#include "router/comms/event_line.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "proto/utf8.h"

/* ---------------------------------------------------------------- JSON */

/* What the callbacks learn about a JSON line. yajl_tree is not used: it
 * NUL-ends strings (so `\u0000` would cut a body short) and keeps no count
 * of repeated keys. */
typedef struct {
    unsigned depth;    /* containers open around the current value */
    bool key_is_body;  /* the member being read at depth 1 is "body" */
    unsigned bodies;   /* "body" members seen at depth 1 */
    bool body_string;  /* the (first) "body" member is a string */
    char *body;        /* its copy, NUL-ended; NULL until then */
    size_t body_len;   /* its length, NULs included */
    bool nomem;        /* a copy failed */
} s_json_t;

/* A value (scalar or container start) at the current depth. */
static void s_value(s_json_t *j, const unsigned char *s, size_t len, bool is_string)
{
    if (j->depth != 1 || !j->key_is_body)
        return;
    j->key_is_body = false;
    if (j->bodies > 1)
        return; /* refused as duplicate_key: keep the first only to free it */
    j->body_string = is_string;
    if (!is_string)
        return;
    if (!(j->body = malloc(len + 1))) {
        j->nomem = true;
        return;
    }
    if (len)
        memcpy(j->body, s, len);
    j->body[len] = '\0';
    j->body_len = len;
}

static int s_on_null(void *ctx) { s_value(ctx, NULL, 0, false); return 1; }
static int s_on_bool(void *ctx, int b) { (void) b; s_value(ctx, NULL, 0, false); return 1; }

static int s_on_number(void *ctx, const char *s, size_t len)
{
    (void) s, (void) len;
    s_value(ctx, NULL, 0, false);
    return 1;
}

static int s_on_string(void *ctx, const unsigned char *s, size_t len)
{
    s_value(ctx, s, len, true);
    return !((s_json_t *) ctx)->nomem;
}

static int s_on_start(void *ctx)
{
    s_json_t *j = ctx;
    s_value(j, NULL, 0, false);
    j->depth++;
    return 1;
}

static int s_on_end(void *ctx)
{
    ((s_json_t *) ctx)->depth--;
    return 1;
}

static int s_on_key(void *ctx, const unsigned char *key, size_t len)
{
    s_json_t *j = ctx;
    if (j->depth == 1) {
        j->key_is_body = len == 4 && memcmp(key, "body", 4) == 0;
        j->bodies += j->key_is_body;
    }
    return 1;
}

static const yajl_callbacks s_callbacks = {
    .yajl_null = s_on_null,
    .yajl_boolean = s_on_bool,
    .yajl_number = s_on_number,
    .yajl_string = s_on_string,
    .yajl_start_map = s_on_start,
    .yajl_map_key = s_on_key,
    .yajl_end_map = s_on_end,
    .yajl_start_array = s_on_start,
    .yajl_end_array = s_on_end,
};

static unsigned s_hex4(const uint8_t *s)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = s[i];
        v = v << 4 | (unsigned) (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/* Whether a `\uXXXX` escape in valid JSON text names half a surrogate pair
 * without its other half. yajl decodes such an escape to "?" or to bytes
 * that are not UTF-8, so it is caught in the text. Only a valid JSON text is
 * scanned: there every backslash starts an escape, and `\u` has 4 hex
 * digits, so no string tracking is needed. */
static bool s_lone_surrogate(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i + 1 < len) {
        if (s[i] != '\\') {
            i++;
            continue;
        }
        if (s[i + 1] != 'u') {
            i += 2;
            continue;
        }
        unsigned cp = s_hex4(s + i + 2);
        i += 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return true; /* a low half first */
        if (cp < 0xD800 || cp > 0xDBFF)
            continue;
        if (i + 6 > len || s[i] != '\\' || s[i + 1] != 'u')
            return true; /* a high half with no escape after it */
        unsigned lo = s_hex4(s + i + 2);
        if (lo < 0xDC00 || lo > 0xDFFF)
            return true; /* a high half followed by anything but a low half */
        i += 6;
    }
    return false;
}

static router_event_line_reason_t s_json(const uint8_t *line, size_t len, char **body,
                                         size_t *body_len)
{
    s_json_t j = {0};
    router_event_line_reason_t r = ROUTER_EVENT_LINE_NOMEM;
    yajl_handle h = yajl_alloc(&s_callbacks, NULL, &j);
    if (!h)
        goto done;
    /* Defaults kept: strings validated, no comments, no trailing garbage,
     * one value only. */
    yajl_status st = yajl_parse(h, line, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (j.nomem)
        goto done;
    if (st != yajl_status_ok)
        r = ROUTER_EVENT_LINE_BAD_JSON;
    else if (s_lone_surrogate(line, len))
        r = ROUTER_EVENT_LINE_LONE_SURROGATE;
    else if (j.bodies > 1)
        r = ROUTER_EVENT_LINE_DUPLICATE_KEY;
    else if (!j.body_string)
        r = ROUTER_EVENT_LINE_NO_BODY;
    else if (memchr(j.body, '\0', j.body_len))
        r = ROUTER_EVENT_LINE_NUL_IN_BODY;
    else
        r = ROUTER_EVENT_LINE_OK;

done:
    if (h)
        yajl_free(h);
    if (r == ROUTER_EVENT_LINE_OK) {
        *body = j.body;
        *body_len = j.body_len;
    } else {
        free(j.body);
    }
    return r;
}

/* ---------------------------------------------------------------- a line */

static int s_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r'; }

router_event_line_reason_t router_event_line_parse(const uint8_t *line, size_t len, char **body,
                                                   size_t *body_len)
{
    *body = NULL;
    *body_len = 0;
    while (len > 0 && s_space(line[len - 1]))
        len--;
    while (len > 0 && s_space(line[0])) {
        line++;
        len--;
    }
    if (len == 0)
        return ROUTER_EVENT_LINE_EMPTY;
    if (!proto_utf8_valid(line, len))
        return ROUTER_EVENT_LINE_BAD_UTF8;

    if (line[0] == '{')
        return s_json(line, len, body, body_len);

    /* Plain text: the body is handed on NUL-ended, so a raw NUL would cut
     * it short downstream; refused like an escaped one. */
    if (memchr(line, '\0', len))
        return ROUTER_EVENT_LINE_NUL_IN_BODY;
    if (!(*body = malloc(len + 1)))
        return ROUTER_EVENT_LINE_NOMEM;
    memcpy(*body, line, len);
    (*body)[len] = '\0';
    *body_len = len;
    return ROUTER_EVENT_LINE_OK;
}

const char *router_event_line_reason_str(router_event_line_reason_t r)
{
    switch (r) {
    case ROUTER_EVENT_LINE_OK: return "ok";
    case ROUTER_EVENT_LINE_EMPTY: return "empty";
    case ROUTER_EVENT_LINE_BAD_JSON: return "bad_json";
    case ROUTER_EVENT_LINE_NO_BODY: return "no_body";
    case ROUTER_EVENT_LINE_BAD_UTF8: return "bad_utf8";
    case ROUTER_EVENT_LINE_LONE_SURROGATE: return "lone_surrogate";
    case ROUTER_EVENT_LINE_DUPLICATE_KEY: return "duplicate_key";
    case ROUTER_EVENT_LINE_NUL_IN_BODY: return "nul_in_body";
    case ROUTER_EVENT_LINE_NOMEM: return "nomem";
    }
    return "unknown";
}
