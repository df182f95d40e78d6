/* router/comms/event_line.c — deciding what a plain event line says, with yajl. */
#include "router/comms/event_line.h"

#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static int s_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else
            return 0;
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

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

    if (line[0] != '{') {
        if (!s_utf8_valid(line, len))
            return ROUTER_EVENT_LINE_BAD_UTF8;
        if (!(*body = malloc(len + 1)))
            return ROUTER_EVENT_LINE_NOMEM;
        memcpy(*body, line, len);
        (*body)[len] = '\0';
        *body_len = len;
        return ROUTER_EVENT_LINE_OK;
    }

    /* yajl_tree wants a NUL-ended string; a JSON text holds no raw NUL. */
    if (memchr(line, '\0', len))
        return ROUTER_EVENT_LINE_BAD_JSON;
    char *text = malloc(len + 1);
    if (!text)
        return ROUTER_EVENT_LINE_NOMEM;
    memcpy(text, line, len);
    text[len] = '\0';
    yajl_val root = yajl_tree_parse(text, NULL, 0);
    free(text);
    if (!root)
        return ROUTER_EVENT_LINE_BAD_JSON;

    router_event_line_reason_t r = ROUTER_EVENT_LINE_NO_BODY;
    if (YAJL_IS_OBJECT(root)) {
        for (size_t i = 0; i < root->u.object.len; i++) {
            if (strcmp(root->u.object.keys[i], "body") != 0)
                continue;
            yajl_val v = root->u.object.values[i];
            if (!YAJL_IS_STRING(v))
                break;
            size_t n = strlen(v->u.string);
            if (!(*body = malloc(n + 1))) {
                r = ROUTER_EVENT_LINE_NOMEM;
                break;
            }
            memcpy(*body, v->u.string, n + 1);
            *body_len = n;
            r = ROUTER_EVENT_LINE_OK;
            break;
        }
    }
    yajl_tree_free(root);
    return r;
}

const char *router_event_line_reason_str(router_event_line_reason_t r)
{
    switch (r) {
    case ROUTER_EVENT_LINE_OK: return "ok";
    case ROUTER_EVENT_LINE_EMPTY: return "empty";
    case ROUTER_EVENT_LINE_BAD_JSON: return "bad_json";
    case ROUTER_EVENT_LINE_NO_BODY: return "no_body";
    case ROUTER_EVENT_LINE_BAD_UTF8: return "bad_utf8";
    case ROUTER_EVENT_LINE_NOMEM: return "nomem";
    }
    return "unknown";
}
