/* agent/json_buf.h — a bounded text buffer for the JSON the agent writes
 * (tool arguments, tool errors, chat-completions request bodies): appends,
 * RFC 8259 string quoting, and a yajl-backed "is this JSON text" check.
 * Like proto_cbor_buf_t, a failed buffer stays failed and ignores further
 * appends, so writers check once at the end. */
#ifndef KITH_AGENT_JSON_BUF_H
#define KITH_AGENT_JSON_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *data;     /* NUL-terminated heap text, or NULL while empty */
    size_t len;     /* bytes written, NUL not counted */
    size_t cap;     /* bytes allocated */
    size_t limit;   /* most bytes allowed */
    bool failed;    /* over the limit or out of memory */
    bool no_memory; /* the failure was an allocation, not the limit */
} agent_json_buf_t;

void agent_json_buf_init(agent_json_buf_t *b, size_t limit);
void agent_json_buf_free(agent_json_buf_t *b);
/* Hands the text to the caller (free()); NULL when the buffer failed, which
 * is then freed. An empty buffer gives "". */
char *agent_json_buf_take(agent_json_buf_t *b, size_t *len);

void agent_json_buf_put(agent_json_buf_t *b, const char *p, size_t n);
void agent_json_buf_puts(agent_json_buf_t *b, const char *s);
/* p[n] as a JSON string with its quotes: `"`, `\` and control bytes escaped;
 * other bytes (UTF-8 included) pass through as they are. */
void agent_json_buf_quote(agent_json_buf_t *b, const char *p, size_t n);

/* Whether p[n] is one complete JSON text (RFC 8259, UTF-8 checked). */
bool agent_json_valid(const char *p, size_t n);

#endif
