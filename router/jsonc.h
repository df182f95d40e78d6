/* router/jsonc.h — reading kith's JSON state files (config.json,
 * trusted_peers.json): JSON with comments, parsed by yajl from memory, with
 * errors that name a line and show the offending value.
 *
 * The caller's yajl callbacks carry the schema. They must refuse (write err
 * and return 0) as soon as they see structure the schema does not allow; that
 * is what bounds nesting depth, since yajl reports each '{' or '[' before
 * reading what is inside it. */
#ifndef KITH_ROUTER_JSONC_H
#define KITH_ROUTER_JSONC_H

#include <stddef.h>

#include <yajl/yajl_parse.h>

/* Longest rendering of a value quoted in an error message (bytes, without
 * the quotes); longer values are cut and end in "…". */
#define ROUTER_JSONC_QUOTE_MAX 48

/* Parses text[len] as exactly one JSON document ("//" and block comments
 * allowed, UTF-8 validated, nothing after the document) feeding `cb` with
 * `ctx`. A callback that refuses writes its reason into the same err[errcap]
 * the caller passed here, then returns 0.
 * Returns 0, or -1 with err set to either the callback's reason or
 * "syntax error: <yajl's reason>", followed in both cases by " (line L,
 * column C)": the position just past the token where the problem showed
 * (1-based, columns in bytes). Allocates only inside yajl; no I/O. */
int router_jsonc_parse(const char *text, size_t len, const yajl_callbacks *cb, void *ctx,
                       char *err, size_t errcap) __attribute__((warn_unused_result));

/* Writes s[len] into out[cap] as a double-quoted JSON string for an error
 * message: control and non-ASCII bytes escaped, cut at ROUTER_JSONC_QUOTE_MAX
 * with "…". Always NUL-terminates (cap ≥ 1). */
void router_jsonc_quote(const unsigned char *s, size_t len, char *out, size_t cap);

/* Like router_jsonc_quote without the quotes, for a raw number token. */
void router_jsonc_quote_raw(const char *s, size_t len, char *out, size_t cap);

/* Formats into err[errcap] like snprintf, never overflowing; returns 0 so a
 * yajl callback can `return router_jsonc_fail(...)`. */
int router_jsonc_fail(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
