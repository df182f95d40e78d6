/* router/workers/turn_json.h — small JSON writers shared by the turn code:
 * an object built with yajl into a heap string, and the turn frames and
 * event objects of WIRE §19.5–19.6. No I/O. */
#ifndef KITH_ROUTER_TURN_JSON_H
#define KITH_ROUTER_TURN_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

/* A JSON object under construction. */
typedef struct {
    yajl_gen g;
    bool failed;
} router_json_obj_t;

/* Opens an object; with `type` non-NULL its first member is "type". */
void router_json_begin(router_json_obj_t *o, const char *type);
void router_json_str(router_json_obj_t *o, const char *key, const char *v, size_t len);
void router_json_cstr(router_json_obj_t *o, const char *key, const char *v);
void router_json_u64(router_json_obj_t *o, const char *key, uint64_t v);
void router_json_bool(router_json_obj_t *o, const char *key, bool v);
void router_json_double(router_json_obj_t *o, const char *key, double v);
/* A member whose value is JSON text: spliced in when it parses, else kept
 * as a string (a worker's malformed JSON never breaks a frame). */
void router_json_raw(router_json_obj_t *o, const char *key, const char *json, size_t len);
/* Closes it: a new NUL-terminated string (caller frees) with *len, or NULL
 * (out of memory). Frees the generator either way. */
char *router_json_end(router_json_obj_t *o, size_t *len);

/* Writes a parsed yajl value into g. Returns 0 or -1. */
int router_json_gen_value(yajl_gen g, const yajl_val v);

#endif
