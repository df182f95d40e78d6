/* router/state/jsonc.h — reading and writing kith's JSON state files
 * (config.json, trusted_peers.json): JSON with comments, parsed by yajl from
 * memory, with errors that name a line and show the offending value.
 *
 * A reader carries the schema in three functions (a value, a key, the end
 * of an object or array). They must refuse (write err and return 0) as soon
 * as they see structure the schema does not allow; that is what bounds
 * nesting depth, since an object or array is handed to the reader before
 * anything inside it is read. */
#ifndef KITH_ROUTER_JSONC_H
#define KITH_ROUTER_JSONC_H

#include <stdbool.h>
#include <stddef.h>

#include <yajl/yajl_gen.h>

/* Longest rendering of a value quoted in an error message (bytes, without
 * the quotes); longer values are cut and end in "…". */
#define ROUTER_JSONC_QUOTE_MAX 48

/* The JSON types as a reader sees them. */
typedef enum {
    ROUTER_JSONC_NULL,
    ROUTER_JSONC_BOOL,
    ROUTER_JSONC_NUMBER,
    ROUTER_JSONC_STRING,
    ROUTER_JSONC_OBJECT, /* its '{': keys and values follow, then end */
    ROUTER_JSONC_ARRAY,  /* its '[': values follow, then end */
} router_jsonc_type_t;

/* One value handed to a reader. s points into the text being parsed or into
 * yajl's buffer: valid only during the call. */
typedef struct {
    router_jsonc_type_t type;
    const unsigned char *s; /* NUMBER: the token as written; STRING: its bytes */
    size_t len;             /* of s */
    bool b;                 /* BOOL */
} router_jsonc_value_t;

/* A schema reader: what router_jsonc_read calls, each time with its ctx.
 * Each returns 1 to go on, or writes its reason into the err[errcap] given
 * to router_jsonc_read and returns 0 (router_jsonc_fail does both). */
typedef struct {
    /* Every value in document order, objects and arrays included. */
    int (*value)(void *ctx, const router_jsonc_value_t *v);
    /* A key of the innermost open object; its value comes next. */
    int (*key)(void *ctx, const unsigned char *key, size_t len);
    /* The end of the innermost open object or array. */
    int (*end)(void *ctx);
} router_jsonc_reader_t;

/* Parses text[len] as exactly one JSON document ("//" and block comments
 * allowed, UTF-8 validated, nothing after the document) feeding `reader`
 * with `ctx`. Returns 0, or -1 with err set to either the reader's reason
 * or "syntax error: <yajl's reason>", followed in both cases by " (line L,
 * column C)": the position just past the token where the problem showed
 * (1-based, columns in bytes). Allocates only inside yajl; no I/O. */
int router_jsonc_read(const char *text, size_t len, const router_jsonc_reader_t *reader,
                      void *ctx, char *err, size_t errcap) __attribute__((warn_unused_result));

/* Renders v for "got …" in an error message: null, true, false, the number
 * token, the string quoted (router_jsonc_quote), "an object" or "an array".
 * Always NUL-terminates (cap ≥ 1). */
void router_jsonc_describe(const router_jsonc_value_t *v, char *out, size_t cap);

/* Writes s[len] into out[cap] as a double-quoted JSON string for an error
 * message: control and non-ASCII bytes escaped, cut at ROUTER_JSONC_QUOTE_MAX
 * with "…". Always NUL-terminates (cap ≥ 1). */
void router_jsonc_quote(const unsigned char *s, size_t len, char *out, size_t cap);

/* Like router_jsonc_quote without the quotes, for a raw number token. */
void router_jsonc_quote_raw(const char *s, size_t len, char *out, size_t cap);

/* Formats into err[errcap] like snprintf, never overflowing; returns 0 so a
 * reader can `return router_jsonc_fail(...)`. */
int router_jsonc_fail(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A yajl generator the way kith writes its state files: indented by two
 * spaces, one key a line. NULL when out of memory; the caller hands it to
 * router_jsonc_gen_finish. */
yajl_gen router_jsonc_gen_new(void);

/* Adds the NUL-terminated s as a JSON string (or key). */
void router_jsonc_gen_text(yajl_gen g, const char *s);

/* The document built in *gp as a new NUL-terminated string the caller
 * frees (yajl's beautifier ends it with a newline), or NULL when out of
 * memory. Takes *gp: frees it and sets it to NULL either way. */
char *router_jsonc_gen_finish(yajl_gen *gp);

#endif
