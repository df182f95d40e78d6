/* router/workers/turn_json.c — JSON objects for turn frames and events. */
#include "router/workers/turn_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_key(router_json_obj_t *o, const char *key)
{
    if (o->g && yajl_gen_string(o->g, (const unsigned char *) key, strlen(key)) !=
                    yajl_gen_status_ok)
        o->failed = true;
}

void router_json_begin(router_json_obj_t *o, const char *type)
{
    o->failed = false;
    o->g = yajl_gen_alloc(NULL);
    if (!o->g || yajl_gen_map_open(o->g) != yajl_gen_status_ok) {
        o->failed = true;
        return;
    }
    if (type)
        router_json_cstr(o, "type", type);
}

void router_json_str(router_json_obj_t *o, const char *key, const char *v, size_t len)
{
    s_key(o, key);
    if (o->g && yajl_gen_string(o->g, (const unsigned char *) (v ? v : ""), v ? len : 0) !=
                    yajl_gen_status_ok)
        o->failed = true;
}

void router_json_cstr(router_json_obj_t *o, const char *key, const char *v)
{
    router_json_str(o, key, v, v ? strlen(v) : 0);
}

void router_json_u64(router_json_obj_t *o, const char *key, uint64_t v)
{
    s_key(o, key);
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llu", (unsigned long long) v);
    if (o->g && yajl_gen_number(o->g, buf, (size_t) n) != yajl_gen_status_ok)
        o->failed = true;
}

void router_json_bool(router_json_obj_t *o, const char *key, bool v)
{
    s_key(o, key);
    if (o->g && yajl_gen_bool(o->g, v) != yajl_gen_status_ok)
        o->failed = true;
}

void router_json_double(router_json_obj_t *o, const char *key, double v)
{
    s_key(o, key);
    if (o->g && yajl_gen_double(o->g, v) != yajl_gen_status_ok)
        o->failed = true;
}

int router_json_gen_value(yajl_gen g, const yajl_val v)
{
    if (!v)
        return yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -1;
    switch (v->type) {
    case yajl_t_string:
        return yajl_gen_string(g, (const unsigned char *) v->u.string, strlen(v->u.string)) ==
                       yajl_gen_status_ok ? 0 : -1;
    case yajl_t_number:
        return yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r)) == yajl_gen_status_ok
                   ? 0 : -1;
    case yajl_t_true:
    case yajl_t_false:
        return yajl_gen_bool(g, v->type == yajl_t_true) == yajl_gen_status_ok ? 0 : -1;
    case yajl_t_null:
        return yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -1;
    case yajl_t_array:
        if (yajl_gen_array_open(g) != yajl_gen_status_ok)
            return -1;
        for (size_t i = 0; i < v->u.array.len; i++)
            if (router_json_gen_value(g, v->u.array.values[i]) != 0)
                return -1;
        return yajl_gen_array_close(g) == yajl_gen_status_ok ? 0 : -1;
    case yajl_t_object:
        if (yajl_gen_map_open(g) != yajl_gen_status_ok)
            return -1;
        for (size_t i = 0; i < v->u.object.len; i++) {
            const char *k = v->u.object.keys[i];
            if (yajl_gen_string(g, (const unsigned char *) k, strlen(k)) != yajl_gen_status_ok ||
                router_json_gen_value(g, v->u.object.values[i]) != 0)
                return -1;
        }
        return yajl_gen_map_close(g) == yajl_gen_status_ok ? 0 : -1;
    default:
        return -1;
    }
}

void router_json_raw(router_json_obj_t *o, const char *key, const char *json, size_t len)
{
    char *copy = malloc(len + 1);
    yajl_val v = NULL;
    if (copy) {
        memcpy(copy, json, len);
        copy[len] = '\0';
        v = yajl_tree_parse(copy, NULL, 0);
    }
    if (!v) {
        router_json_str(o, key, json, len);
    } else {
        s_key(o, key);
        if (o->g && router_json_gen_value(o->g, v) != 0)
            o->failed = true;
        yajl_tree_free(v);
    }
    free(copy);
}

char *router_json_end(router_json_obj_t *o, size_t *len)
{
    char *out = NULL;
    const unsigned char *buf;
    size_t n;
    if (o->g && !o->failed && yajl_gen_map_close(o->g) == yajl_gen_status_ok &&
        yajl_gen_get_buf(o->g, &buf, &n) == yajl_gen_status_ok && (out = malloc(n + 1))) {
        memcpy(out, buf, n);
        out[n] = '\0';
        if (len)
            *len = n;
    }
    if (o->g)
        yajl_gen_free(o->g);
    o->g = NULL;
    return out;
}
