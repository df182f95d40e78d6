/* router/state/jsonc.c — yajl set up for kith's state files: comments on, one
 * document, values handed to a schema reader one at a time, errors located
 * by line and column; and the generator that writes them. */
#include "router/state/jsonc.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

/* ------------------------------------------------------------ parsing */

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

/* router_jsonc_read's work, on yajl's own callbacks. */
static int s_parse(const char *text, size_t len, const yajl_callbacks *cb, void *ctx, char *err,
                   size_t errcap)
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

/* ------------------------------------------------------------ the reader adapter */

/* The ctx yajl hands the callbacks below: the reader and its own ctx. */
typedef struct {
    const router_jsonc_reader_t *reader; /* the schema's three functions */
    void *ctx;                           /* theirs */
} s_adapter_t;

static int s_deliver(void *ctx, router_jsonc_value_t v)
{
    const s_adapter_t *a = ctx;
    return a->reader->value(a->ctx, &v);
}

static int s_on_null(void *ctx)
{
    return s_deliver(ctx, (router_jsonc_value_t){.type = ROUTER_JSONC_NULL});
}

static int s_on_bool(void *ctx, int b)
{
    return s_deliver(ctx, (router_jsonc_value_t){.type = ROUTER_JSONC_BOOL, .b = b != 0});
}

/* With yajl_number set, yajl hands every number over as its token, never
 * split into integer and double. */
static int s_on_number(void *ctx, const char *s, size_t len)
{
    return s_deliver(ctx, (router_jsonc_value_t){.type = ROUTER_JSONC_NUMBER,
                                                 .s = (const unsigned char *) s, .len = len});
}

static int s_on_string(void *ctx, const unsigned char *s, size_t len)
{
    return s_deliver(ctx, (router_jsonc_value_t){.type = ROUTER_JSONC_STRING, .s = s, .len = len});
}

static int s_on_start_map(void *ctx)
{
    return s_deliver(ctx, (router_jsonc_value_t){.type = ROUTER_JSONC_OBJECT});
}

static int s_on_start_array(void *ctx)
{
    return s_deliver(ctx, (router_jsonc_value_t){.type = ROUTER_JSONC_ARRAY});
}

static int s_on_key(void *ctx, const unsigned char *key, size_t len)
{
    const s_adapter_t *a = ctx;
    return a->reader->key(a->ctx, key, len);
}

static int s_on_end(void *ctx)
{
    const s_adapter_t *a = ctx;
    return a->reader->end(a->ctx);
}

static const yajl_callbacks s_callbacks = {
    .yajl_null = s_on_null,
    .yajl_boolean = s_on_bool,
    .yajl_number = s_on_number,
    .yajl_string = s_on_string,
    .yajl_start_map = s_on_start_map,
    .yajl_map_key = s_on_key,
    .yajl_end_map = s_on_end,
    .yajl_start_array = s_on_start_array,
    .yajl_end_array = s_on_end,
};

int router_jsonc_read(const char *text, size_t len, const router_jsonc_reader_t *reader,
                      void *ctx, char *err, size_t errcap)
{
    s_adapter_t a = {.reader = reader, .ctx = ctx};
    return s_parse(text, len, &s_callbacks, &a, err, errcap);
}

/* ------------------------------------------------------------ text for errors */

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

void router_jsonc_describe(const router_jsonc_value_t *v, char *out, size_t cap)
{
    switch (v->type) {
    case ROUTER_JSONC_NULL: snprintf(out, cap, "null"); break;
    case ROUTER_JSONC_BOOL: snprintf(out, cap, "%s", v->b ? "true" : "false"); break;
    case ROUTER_JSONC_NUMBER: router_jsonc_quote_raw((const char *) v->s, v->len, out, cap); break;
    case ROUTER_JSONC_STRING: router_jsonc_quote(v->s, v->len, out, cap); break;
    case ROUTER_JSONC_OBJECT: snprintf(out, cap, "an object"); break;
    case ROUTER_JSONC_ARRAY: snprintf(out, cap, "an array"); break;
    }
}

/* ------------------------------------------------------------ writing */

yajl_gen router_jsonc_gen_new(void)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return NULL;
    yajl_gen_config(g, yajl_gen_beautify, 1);
    yajl_gen_config(g, yajl_gen_indent_string, "  ");
    return g;
}

void router_jsonc_gen_text(yajl_gen g, const char *s)
{
    yajl_gen_string(g, (const unsigned char *) s, strlen(s));
}

char *router_jsonc_gen_finish(yajl_gen *gp)
{
    const unsigned char *buf = NULL;
    size_t len = 0;
    char *out = NULL;
    if (yajl_gen_get_buf(*gp, &buf, &len) == yajl_gen_status_ok && (out = malloc(len + 1))) {
        memcpy(out, buf, len);
        out[len] = '\0';
    }
    yajl_gen_free(*gp);
    *gp = NULL;
    return out;
}
