/* gateway/node_frame.c — decoding the frames nodes send (node_frame.h). */
#include "gateway/node_frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "gateway/json_text.h"
#include "router/workers/turn_json.h"
#include "router/workers/turn_source.h"

static gateway_node_reason_t s_fail(char *why, size_t cap, gateway_node_reason_t r,
                                    const char *what)
{
    snprintf(why, cap, "%s", what);
    return r;
}

static yajl_val s_get(yajl_val o, const char *key)
{
    for (size_t i = 0; i < o->u.object.len; i++)
        if (!strcmp(o->u.object.keys[i], key))
            return o->u.object.values[i];
    return NULL;
}

bool gateway_node_token_ok(const char *s, size_t len, size_t max)
{
    return len <= max && router_turn_session_id_ok(s, len); /* the same characters */
}

/* v as compact JSON text (caller frees), or NULL without memory. */
static char *s_json(yajl_val v, size_t *len)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    char *out = NULL;
    const unsigned char *buf;
    size_t n;
    if (g && router_json_gen_value(g, v) == 0 &&
        yajl_gen_get_buf(g, &buf, &n) == yajl_gen_status_ok && (out = malloc(n + 1))) {
        memcpy(out, buf, n);
        out[n] = '\0';
        *len = n;
    }
    if (g)
        yajl_gen_free(g);
    return out;
}

/* A name for people: 1..GATEWAY_NODE_NAME_MAX octets, no control character
 * (the text is UTF-8 already). */
static bool s_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > GATEWAY_NODE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

static gateway_node_reason_t s_register(yajl_val t, gateway_node_frame_t *out, char *why,
                                        size_t cap)
{
    yajl_val name = s_get(t, "name"), cmds = s_get(t, "commands"), meta = s_get(t, "meta");
    if (!name || !YAJL_IS_STRING(name) || !s_name_ok(name->u.string))
        return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME,
                      "\"name\" must be 1..64 octets of text without control characters");
    snprintf(out->name, sizeof out->name, "%s", name->u.string);
    if (!cmds || !YAJL_IS_ARRAY(cmds) || cmds->u.array.len > GATEWAY_NODE_COMMANDS_MAX)
        return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME,
                      "\"commands\" must be an array of at most 64 command names");
    for (size_t i = 0; i < cmds->u.array.len; i++) {
        yajl_val c = cmds->u.array.values[i];
        if (!YAJL_IS_STRING(c) ||
            !gateway_node_token_ok(c->u.string, strlen(c->u.string), GATEWAY_NODE_COMMAND_MAX))
            return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME,
                          "a command name is 1..64 of A-Z a-z 0-9 . _ : -");
        for (size_t j = 0; j < out->ncommands; j++)
            if (!strcmp(out->commands[j], c->u.string))
                return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME,
                              "\"commands\" names a command twice");
        snprintf(out->commands[out->ncommands++], GATEWAY_NODE_COMMAND_MAX + 1, "%s",
                 c->u.string);
    }
    if (meta && !YAJL_IS_NULL(meta) && !YAJL_IS_OBJECT(meta))
        return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME, "\"meta\" must be an object");
    size_t n = 2;
    out->meta = meta && YAJL_IS_OBJECT(meta) ? s_json(meta, &n) : strdup("{}");
    if (!out->meta)
        return s_fail(why, cap, GATEWAY_NODE_NOMEM, "out of memory");
    if (n > GATEWAY_NODE_META_MAX)
        return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME, "\"meta\" is over 16 KiB");
    return GATEWAY_NODE_OK;
}

static gateway_node_reason_t s_result(yajl_val t, gateway_node_frame_t *out, char *why,
                                      size_t cap)
{
    yajl_val id = s_get(t, "call_id"), ok = s_get(t, "ok");
    if (!id || !YAJL_IS_STRING(id) ||
        !gateway_node_token_ok(id->u.string, strlen(id->u.string), GATEWAY_NODE_CALL_ID_MAX))
        return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME,
                      "\"call_id\" must be the id of the invoke it answers");
    snprintf(out->call_id, sizeof out->call_id, "%s", id->u.string);
    if (!ok || !(YAJL_IS_TRUE(ok) || YAJL_IS_FALSE(ok)))
        return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME, "\"ok\" must be true or false");
    out->ok = YAJL_IS_TRUE(ok);
    if (out->ok) {
        yajl_val r = s_get(t, "result");
        size_t n = 4;
        out->result = r ? s_json(r, &n) : strdup("null");
        if (!out->result)
            return s_fail(why, cap, GATEWAY_NODE_NOMEM, "out of memory");
        return GATEWAY_NODE_OK;
    }
    yajl_val e = s_get(t, "error");
    if (!e || !YAJL_IS_STRING(e) || strlen(e->u.string) > GATEWAY_NODE_ERROR_MAX)
        return s_fail(why, cap, GATEWAY_NODE_INVALID_FRAME,
                      "a failed call's \"error\" must be text of at most 1024 octets");
    snprintf(out->error, sizeof out->error, "%s", e->u.string);
    return GATEWAY_NODE_OK;
}

gateway_node_reason_t gateway_node_frame_decode(const uint8_t *data, size_t len,
                                                gateway_node_frame_t *out, char *why, size_t cap)
{
    memset(out, 0, sizeof *out);
    yajl_val t = gateway_json_tree_parse(data, len, GATEWAY_NODE_DEPTH_MAX, GATEWAY_NODE_KEYS_MAX,
                                         why, cap);
    if (!t)
        return errno == ENOMEM ? GATEWAY_NODE_NOMEM : GATEWAY_NODE_INVALID_JSON;
    gateway_node_reason_t r;
    yajl_val type = YAJL_IS_OBJECT(t) ? s_get(t, "type") : NULL;
    if (!YAJL_IS_OBJECT(t))
        r = s_fail(why, cap, GATEWAY_NODE_INVALID_JSON, "a frame is one JSON object");
    else if (!type || !YAJL_IS_STRING(type))
        r = s_fail(why, cap, GATEWAY_NODE_UNKNOWN_TYPE, "a frame needs a \"type\"");
    else if (!strcmp(type->u.string, "register"))
        r = (out->type = GATEWAY_NODE_FRAME_REGISTER, s_register(t, out, why, cap));
    else if (!strcmp(type->u.string, "result"))
        r = (out->type = GATEWAY_NODE_FRAME_RESULT, s_result(t, out, why, cap));
    else
        r = s_fail(why, cap, GATEWAY_NODE_UNKNOWN_TYPE, "nodes send register and result frames");
    yajl_tree_free(t);
    if (r != GATEWAY_NODE_OK)
        gateway_node_frame_clear(out);
    return r;
}

void gateway_node_frame_clear(gateway_node_frame_t *f)
{
    free(f->meta);
    free(f->result);
    f->meta = f->result = NULL;
}

const char *gateway_node_reason_code(gateway_node_reason_t r)
{
    switch (r) {
    case GATEWAY_NODE_INVALID_JSON: return "INVALID_JSON";
    case GATEWAY_NODE_UNKNOWN_TYPE: return "UNKNOWN_MESSAGE_TYPE";
    case GATEWAY_NODE_INVALID_FRAME: return "INVALID_FRAME";
    case GATEWAY_NODE_NOMEM: return "INTERNAL";
    default: return "OK";
    }
}
