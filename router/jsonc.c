/* router/jsonc.c — yajl set up for kith's state files: comments on, one
 * document, errors located by line and column. */
#include "router/jsonc.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

int router_jsonc_fail(char *err, size_t errcap, const char *fmt, ...)
{
    if (errcap == 0)
        return 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
    return 0;
}

/* Appends " (line L, column C)" for byte offset `at` of text, both 1-based. */
static void s_append_position(const char *text, size_t len, size_t at, char *err, size_t errcap)
{
    if (at > len)
        at = len;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at; i++) {
        if (text[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    size_t used = strnlen(err, errcap);
    if (used + 1 < errcap)
        snprintf(err + used, errcap - used, " (line %zu, column %zu)", line, col);
}

int router_jsonc_parse(const char *text, size_t len, const yajl_callbacks *cb, void *ctx,
                       char *err, size_t errcap)
{
    if (errcap > 0)
        err[0] = '\0';
    yajl_handle h = yajl_alloc(cb, NULL, ctx);
    if (!h)
        return router_jsonc_fail(err, errcap, "out of memory"), -1;
    yajl_config(h, yajl_allow_comments, 1);

    yajl_status st = yajl_parse(h, (const unsigned char *) text, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st == yajl_status_ok) {
        yajl_free(h);
        return 0;
    }
    size_t at = yajl_get_bytes_consumed(h);
    if (st == yajl_status_client_canceled) {
        if (errcap > 0 && err[0] == '\0')
            router_jsonc_fail(err, errcap, "refused");
    } else {
        /* yajl's terse form reads "parse error: <reason>\n". */
        unsigned char *why = yajl_get_error(h, 0, (const unsigned char *) text, len);
        const char *reason = why ? (const char *) why : "unreadable JSON";
        const char *colon = strstr(reason, "error: ");
        if (colon)
            reason = colon + strlen("error: ");
        size_t n = strcspn(reason, "\n");
        router_jsonc_fail(err, errcap, "syntax error: %.*s", (int) n, reason);
        if (why)
            yajl_free_error(h, why);
    }
    s_append_position(text, len, at, err, errcap);
    yajl_free(h);
    return -1;
}

/* Appends c to out while keeping room for the closing part; false when full. */
static bool s_put(char *out, size_t cap, size_t *used, const char *piece, size_t reserve)
{
    size_t n = strlen(piece);
    if (*used + n + reserve >= cap)
        return false;
    memcpy(out + *used, piece, n);
    *used += n;
    out[*used] = '\0';
    return true;
}

static void s_quote(const unsigned char *s, size_t len, char *out, size_t cap, bool quoted)
{
    if (cap == 0)
        return;
    out[0] = '\0';
    size_t used = 0;
    /* Room kept for an ellipsis and the closing quote. */
    const size_t reserve = strlen("…") + 1;
    if (quoted && !s_put(out, cap, &used, "\"", reserve))
        return;
    size_t i = 0;
    for (; i < len && i < ROUTER_JSONC_QUOTE_MAX; i++) {
        char piece[8];
        unsigned char c = s[i];
        if (c == '"' || c == '\\')
            snprintf(piece, sizeof piece, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            snprintf(piece, sizeof piece, "\\x%02x", c);
        else
            snprintf(piece, sizeof piece, "%c", c);
        if (!s_put(out, cap, &used, piece, reserve))
            break;
    }
    if (i < len)
        s_put(out, cap, &used, "…", quoted ? 1 : 0);
    if (quoted)
        s_put(out, cap, &used, "\"", 0);
}

void router_jsonc_quote(const unsigned char *s, size_t len, char *out, size_t cap)
{
    s_quote(s, len, out, cap, true);
}

void router_jsonc_quote_raw(const char *s, size_t len, char *out, size_t cap)
{
    s_quote((const unsigned char *) s, len, out, cap, false);
}
