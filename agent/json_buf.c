/* agent/json_buf.c — bounded JSON text writing and checking (json_buf.h). */
#include "agent/json_buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

void agent_json_buf_init(agent_json_buf_t *b, size_t limit)
{
    memset(b, 0, sizeof *b);
    b->limit = limit;
}

void agent_json_buf_free(agent_json_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *agent_json_buf_take(agent_json_buf_t *b, size_t *len)
{
    if (b->failed) {
        agent_json_buf_free(b);
        return NULL;
    }
    char *s = b->data ? b->data : calloc(1, 1);
    if (len)
        *len = b->data ? b->len : 0;
    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}

void agent_json_buf_put(agent_json_buf_t *b, const char *p, size_t n)
{
    if (b->failed)
        return;
    if (n > b->limit - b->len) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = b->no_memory = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void agent_json_buf_puts(agent_json_buf_t *b, const char *s)
{
    agent_json_buf_put(b, s, strlen(s));
}

void agent_json_buf_quote(agent_json_buf_t *b, const char *p, size_t n)
{
    agent_json_buf_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) p[i];
        const char *esc = NULL;
        char u[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", c);
                esc = u;
            }
        }
        if (!esc)
            continue;
        agent_json_buf_put(b, p + run, i - run);
        agent_json_buf_puts(b, esc);
        run = i + 1;
    }
    agent_json_buf_put(b, p + run, n - run);
    agent_json_buf_put(b, "\"", 1);
}

bool agent_json_valid(const char *p, size_t n)
{
    yajl_handle h = yajl_alloc(NULL, NULL, NULL);
    if (!h)
        return false;
    bool ok = yajl_parse(h, (const unsigned char *) p, n) == yajl_status_ok &&
              yajl_complete_parse(h) == yajl_status_ok;
    yajl_free(h);
    return ok;
}
