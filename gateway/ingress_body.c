/* gateway/ingress_body.c — the strict JSON decoder behind the webhook and
 * external-event routes, on yajl's event parser (yajl_tree keeps no count
 * of repeated keys and cuts strings at \u0000). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "gateway/ingress_body.h"
#include "gateway/json_text.h"
#include "proto/utf8.h"

/* The members of the top-level object a shape knows. */
enum { K_NONE, K_MESSAGE, K_SESSION_ID, K_KIND, K_EVENT_TYPE, K_PAYLOAD, K_UNKNOWN };

/* One open object or array; an object's member names are checked for
 * repeats (gateway/json_text.h). */
typedef struct {
    size_t first;       /* where its names start (gateway_json_names_mark) */
    bool is_map;        /* an object (arrays have no keys) */
} s_level_t;

typedef struct {
    gateway_ingress_shape_t shape;
    gateway_ingress_body_t *out;
    char *why;
    size_t cap;
    gateway_ingress_reason_t fail; /* set when a callback stops the parse */
    unsigned depth;
    s_level_t levels[GATEWAY_INGRESS_DEPTH_MAX + 1];
    gateway_json_names_t names; /* member names of the open objects */
    int top_key;        /* the member whose value comes next, at depth 1 */
    unsigned seen;      /* bit per K_*: members present */
    bool kind_ok;       /* "kind" was "generic_json" */
    bool root_is_map;
} s_ctx_t;

static int s_stop(s_ctx_t *c, gateway_ingress_reason_t r, const char *what)
{
    if (c->fail == GATEWAY_INGRESS_OK) {
        c->fail = r;
        snprintf(c->why, c->cap, "%s", what);
    }
    return 0;
}

/* A top-level member's value of the given JSON type ('s' string, 'o'
 * anything else). */
static int s_top_value(s_ctx_t *c, char type, const unsigned char *s, size_t len)
{
    int k = c->top_key;
    c->top_key = K_NONE;
    gateway_ingress_body_t *o = c->out;
    switch (k) {
    case K_MESSAGE:
        if (type != 's' || len == 0)
            return s_stop(c, GATEWAY_INGRESS_INVALID_BODY, "\"message\" must be a non-empty string");
        if (!(o->message = malloc(len + 1)))
            return s_stop(c, GATEWAY_INGRESS_NOMEM, "out of memory");
        memcpy(o->message, s, len);
        o->message[len] = '\0';
        o->message_len = len;
        return 1;
    case K_SESSION_ID:
        if (type != 's' || !gateway_ingress_id_ok((const char *) s, len))
            return s_stop(c, GATEWAY_INGRESS_INVALID_BODY,
                          "\"session_id\" must be 1..128 of A-Z a-z 0-9 . _ : -");
        memcpy(o->session_id, s, len);
        o->session_id[len] = '\0';
        return 1;
    case K_KIND:
        if (type != 's' || len != 12 || memcmp(s, "generic_json", 12) != 0)
            return s_stop(c, GATEWAY_INGRESS_INVALID_BODY, "\"kind\" must be \"generic_json\"");
        c->kind_ok = true;
        return 1;
    case K_EVENT_TYPE:
        if (type != 's' || !gateway_ingress_id_ok((const char *) s, len))
            return s_stop(c, GATEWAY_INGRESS_INVALID_BODY,
                          "\"event_type\" must be 1..128 of A-Z a-z 0-9 . _ : -");
        memcpy(o->event_type, s, len);
        o->event_type[len] = '\0';
        return 1;
    case K_PAYLOAD:
        return 1;
    }
    return 1;
}

/* Every value: checks the root is an object and hands top-level members
 * to s_top_value. */
static int s_value(s_ctx_t *c, char type, const unsigned char *s, size_t len)
{
    if (c->depth == 0)
        return s_stop(c, GATEWAY_INGRESS_INVALID_BODY, "the body must be a JSON object");
    if (c->depth == 1 && c->levels[1].is_map)
        return s_top_value(c, type, s, len);
    return 1;
}

static int s_on_null(void *ctx) { return s_value(ctx, 'o', NULL, 0); }
static int s_on_bool(void *ctx, int b) { (void) b; return s_value(ctx, 'o', NULL, 0); }
static int s_on_number(void *ctx, const char *s, size_t len)
{
    (void) s, (void) len;
    return s_value(ctx, 'o', NULL, 0);
}

static int s_on_string(void *ctx, const unsigned char *s, size_t len)
{
    if (memchr(s, '\0', len))
        return s_stop(ctx, GATEWAY_INGRESS_INVALID_JSON, "a string holds NUL");
    return s_value(ctx, 's', s, len);
}

static int s_open(s_ctx_t *c, bool map)
{
    if (c->depth == 0 && !map)
        return s_stop(c, GATEWAY_INGRESS_INVALID_BODY, "the body must be a JSON object");
    if (c->depth >= 1 && s_value(c, 'o', NULL, 0) == 0)
        return 0;
    if (c->depth >= GATEWAY_INGRESS_DEPTH_MAX)
        return s_stop(c, GATEWAY_INGRESS_INVALID_JSON, "nested deeper than 64");
    c->depth++;
    c->levels[c->depth] = (s_level_t){.first = gateway_json_names_mark(&c->names), .is_map = map};
    if (c->depth == 1)
        c->root_is_map = true;
    return 1;
}

static int s_close(s_ctx_t *c)
{
    s_level_t *l = &c->levels[c->depth];
    if (l->is_map)
        gateway_json_names_release(&c->names, l->first);
    c->depth--;
    return 1;
}

static int s_on_start_map(void *ctx) { return s_open(ctx, true); }
static int s_on_end_map(void *ctx) { return s_close(ctx); }
static int s_on_start_array(void *ctx) { return s_open(ctx, false); }
static int s_on_end_array(void *ctx) { return s_close(ctx); }

static int s_on_key(void *ctx, const unsigned char *s, size_t len)
{
    s_ctx_t *c = ctx;
    if (memchr(s, '\0', len))
        return s_stop(c, GATEWAY_INGRESS_INVALID_JSON, "a member name holds NUL");
    s_level_t *l = &c->levels[c->depth];
    switch (gateway_json_names_add(&c->names, l->first, s, len, GATEWAY_INGRESS_KEYS_MAX)) {
    case GATEWAY_JSON_NAME_OK: break;
    case GATEWAY_JSON_NAME_REPEATED:
        return s_stop(c, GATEWAY_INGRESS_INVALID_JSON, "a member name is repeated");
    case GATEWAY_JSON_NAME_TOO_MANY:
        return s_stop(c, GATEWAY_INGRESS_INVALID_JSON, "an object has more than 1024 members");
    case GATEWAY_JSON_NAME_NOMEM:
        return s_stop(c, GATEWAY_INGRESS_NOMEM, "out of memory");
    }
    if (c->depth != 1)
        return 1;
    static const struct { const char *name; int k; gateway_ingress_shape_t shape; } known[] = {
        {"message", K_MESSAGE, GATEWAY_INGRESS_WEBHOOK},
        {"session_id", K_SESSION_ID, GATEWAY_INGRESS_WEBHOOK},
        {"kind", K_KIND, GATEWAY_INGRESS_EVENT},
        {"event_type", K_EVENT_TYPE, GATEWAY_INGRESS_EVENT},
        {"payload", K_PAYLOAD, GATEWAY_INGRESS_EVENT},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (known[i].shape == c->shape && strlen(known[i].name) == len &&
            !memcmp(known[i].name, s, len)) {
            c->top_key = known[i].k;
            c->seen |= 1u << known[i].k;
            return 1;
        }
    char what[96];
    snprintf(what, sizeof what, "unknown member \"%.*s\"", len > 40 ? 40 : (int) len, s);
    return s_stop(c, GATEWAY_INGRESS_INVALID_BODY, what);
}

static const yajl_callbacks s_callbacks = {
    .yajl_null = s_on_null,
    .yajl_boolean = s_on_bool,
    .yajl_number = s_on_number,
    .yajl_string = s_on_string,
    .yajl_start_map = s_on_start_map,
    .yajl_map_key = s_on_key,
    .yajl_end_map = s_on_end_map,
    .yajl_start_array = s_on_start_array,
    .yajl_end_array = s_on_end_array,
};

gateway_ingress_reason_t gateway_ingress_body_parse(gateway_ingress_shape_t shape,
                                                    const char *body, size_t len,
                                                    gateway_ingress_body_t *out, char *why,
                                                    size_t cap)
{
    memset(out, 0, sizeof *out);
    snprintf(why, cap, "ok");
    const char *problem = gateway_json_text_problem(body, len);
    if (problem) {
        snprintf(why, cap, "the body %s", problem);
        return GATEWAY_INGRESS_INVALID_JSON;
    }
    s_ctx_t c = {.shape = shape, .out = out, .why = why, .cap = cap};
    yajl_handle h = yajl_alloc(&s_callbacks, NULL, &c);
    if (!h)
        return GATEWAY_INGRESS_NOMEM;
    yajl_status st = yajl_parse(h, (const unsigned char *) body, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    gateway_ingress_reason_t r = c.fail;
    if (r == GATEWAY_INGRESS_OK && st != yajl_status_ok) {
        r = GATEWAY_INGRESS_INVALID_JSON;
        snprintf(why, cap, "the body is not JSON");
    }
    yajl_free(h);
    gateway_json_names_free(&c.names);
    if (r == GATEWAY_INGRESS_OK) {
        bool ok = shape == GATEWAY_INGRESS_WEBHOOK
                      ? (c.seen & (1u << K_MESSAGE)) != 0
                      : c.kind_ok && (c.seen & (1u << K_EVENT_TYPE)) && (c.seen & (1u << K_PAYLOAD));
        if (!ok) {
            r = GATEWAY_INGRESS_INVALID_BODY;
            snprintf(why, cap, "%s", shape == GATEWAY_INGRESS_WEBHOOK
                                         ? "\"message\" is required"
                                         : "\"kind\", \"event_type\" and \"payload\" are required");
        }
    }
    if (r != GATEWAY_INGRESS_OK)
        gateway_ingress_body_clear(out);
    return r;
}

void gateway_ingress_body_clear(gateway_ingress_body_t *b)
{
    free(b->message);
    memset(b, 0, sizeof *b);
}

int gateway_ingress_id_ok(const char *s, size_t len)
{
    if (len == 0 || len > GATEWAY_INGRESS_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            return 0;
    }
    return 1;
}
