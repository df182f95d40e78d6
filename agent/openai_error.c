/* agent/openai_error.c — reads a non-200 chat-completions body for the
 * server's message (agent/openai_error.h): yajl's tree on a NUL-terminated
 * copy, with the nesting bounded first. */
#include "agent/openai_error.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "proto/utf8.h"

/* Whether text[0..len) nests containers deeper than the bound, counting
 * brackets outside strings. Malformed text may pass: yajl refuses it. */
static bool s_too_deep(const char *text, size_t len)
{
    unsigned depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > AGENT_OAI_ERROR_DEPTH_MAX)
                return true;
        } else if ((c == ']' || c == '}') && depth) {
            depth--;
        }
    }
    return false;
}

/* The body as a yajl tree, or NULL when it is not (bounded) JSON. */
static yajl_val s_parse(const char *body, size_t len)
{
    size_t n = strnlen(body, len); /* yajl reads a C string */
    if (s_too_deep(body, n))
        return NULL;
    char *copy = malloc(n + 1);
    if (!copy)
        return NULL;
    memcpy(copy, body, n);
    copy[n] = '\0';
    yajl_val root = yajl_tree_parse(copy, NULL, 0);
    free(copy);
    return root;
}

void agent_oai_error_message(const char *body, size_t len, char *out, size_t cap)
{
    out[0] = '\0';
    if (!body || !len)
        return;
    yajl_val root = s_parse(body, len);
    const char *msg = NULL;
    if (root) {
        static const char *p1[] = {"error", "message", NULL};
        static const char *p2[] = {"error", NULL};
        static const char *p3[] = {"message", NULL};
        yajl_val v = yajl_tree_get(root, p1, yajl_t_string);
        if (!v)
            v = yajl_tree_get(root, p2, yajl_t_string);
        if (!v)
            v = yajl_tree_get(root, p3, yajl_t_string);
        if (v)
            msg = YAJL_GET_STRING(v);
    }
    if (msg)
        (void) agent_oai_error_line(msg, strlen(msg), out, cap, AGENT_OAI_ERROR_TEXT_MAX);
    else
        (void) agent_oai_error_line(body, len, out, cap, AGENT_OAI_ERROR_TEXT_MAX);
    if (root)
        yajl_tree_free(root);
}

size_t agent_oai_error_line(const char *t, size_t n, char *out, size_t cap, size_t max)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap && k < max; i++)
        out[k++] = (unsigned char) t[i] < 0x20 || t[i] == 0x7f ? ' ' : t[i];
    while (k > 0 && !proto_utf8_valid((const uint8_t *) out, k))
        k--;
    while (k > 0 && out[k - 1] == ' ')
        k--;
    out[k] = '\0';
    return k;
}
