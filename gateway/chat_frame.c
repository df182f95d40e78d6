/* gateway/chat_frame.c — /ws/chat's client-frame decoder (yajl's event
 * parser, with the checks yajl leaves out) and its server-frame encoder
 * (gateway/chat_frame.h). */
#include "gateway/chat_frame.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#include "gateway/json_text.h"
#include "proto/utf8.h"

/* ---------------------------------------------------------------- decoding */

/* The top-level members some frame type knows. */
enum { K_NONE, K_TYPE, K_CONTENT, K_PAGE_CONTEXT, K_ATTACHMENTS, K_OTHER };

/* A member known to a frame type was there but of the wrong JSON type. */
#define S_BAD(k) (1u << (k))

typedef struct {
    size_t first; /* where its names start (gateway_json_names_mark) */
    bool is_map;  /* an object (arrays have no keys) */
} s_level_t;

typedef struct {
    gateway_chat_in_t *out;
    char *why;
    size_t cap;
    gateway_chat_reason_t fail; /* set when a callback stops the parse */
    unsigned depth;
    s_level_t levels[GATEWAY_CHAT_DEPTH_MAX + 1];
    gateway_json_names_t names; /* member names of the open objects */
    int top_key;                 /* the member whose value comes next, at depth 1 */
    unsigned bad;                /* S_BAD(k): member k had the wrong type */
    char type[GATEWAY_CHAT_TYPE_MAX + 1];
    bool has_type;               /* "type" was a string of at most GATEWAY_CHAT_TYPE_MAX */
    bool has_content;            /* "content" was a string */
    yajl_gen gen;                /* re-serialises page_context or attachments */
    int gen_key;                 /* which of the two */
    size_t gen_max;              /* its bound */
    size_t attachments_max;      /* the bound of attachments, re-serialised */
    unsigned attachments;        /* entries seen */
} s_dec_t;

static int s_stop(s_dec_t *c, gateway_chat_reason_t r, const char *what)
{
    if (c->fail == GATEWAY_CHAT_OK) {
        c->fail = r;
        snprintf(c->why, c->cap, "%s", what);
    }
    return 0;
}

/* A bound for people: "25 MiB", "64 KiB", or "1000 octets". */
static void s_size_text(size_t n, char *out, size_t cap)
{
    if (n >= 1024 * 1024 && n % (1024 * 1024) == 0)
        snprintf(out, cap, "%zu MiB", n / (1024 * 1024));
    else if (n >= 1024 && n % 1024 == 0)
        snprintf(out, cap, "%zu KiB", n / 1024);
    else
        snprintf(out, cap, "%zu octets", n);
}

/* Checks the re-serialised value against its bound after each step. */
static int s_gen_check(s_dec_t *c, yajl_gen_status st)
{
    if (st != yajl_gen_status_ok)
        return s_stop(c, GATEWAY_CHAT_NOMEM, "cannot re-serialise a value");
    const unsigned char *buf;
    size_t n;
    yajl_gen_get_buf(c->gen, &buf, &n);
    if (n > c->gen_max) {
        char what[GATEWAY_CHAT_WHY_MAX], size[32];
        s_size_text(c->gen_max, size, sizeof size);
        snprintf(what, sizeof what, "%s are longer than %s%s",
                 c->gen_key == K_PAGE_CONTEXT ? "page_context" : "attachments", size,
                 c->gen_key == K_PAGE_CONTEXT ? "" : " (limits.http_attachment_body_max)");
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, what);
    }
    return 1;
}

/* Ends the capture of page_context or attachments: the text goes to out. */
static int s_gen_finish(s_dec_t *c)
{
    const unsigned char *buf;
    size_t n;
    yajl_gen_get_buf(c->gen, &buf, &n);
    char *copy = malloc(n + 1);
    if (!copy)
        return s_stop(c, GATEWAY_CHAT_NOMEM, "out of memory");
    memcpy(copy, buf, n);
    copy[n] = '\0';
    gateway_chat_in_t *o = c->out;
    if (c->gen_key == K_PAGE_CONTEXT) {
        free(o->page_context);
        o->page_context = copy;
        o->page_context_len = n;
    } else if (c->attachments == 0) {
        free(copy); /* [] is no attachment */
    } else {
        free(o->attachments);
        o->attachments = copy;
        o->attachments_len = n;
        o->attachments_count = c->attachments;
    }
    yajl_gen_free(c->gen);
    c->gen = NULL;
    return 1;
}

static int s_gen_begin(s_dec_t *c, int key)
{
    if (!(c->gen = yajl_gen_alloc(NULL)))
        return s_stop(c, GATEWAY_CHAT_NOMEM, "out of memory");
    c->gen_key = key;
    c->gen_max = key == K_PAGE_CONTEXT ? GATEWAY_CHAT_PAGE_CONTEXT_MAX : c->attachments_max;
    c->attachments = 0;
    return 1;
}

/* A top-level member's scalar value (kinds as s_scalar). */
static int s_top_scalar(s_dec_t *c, char kind, const unsigned char *s, size_t len)
{
    int k = c->top_key;
    c->top_key = K_NONE;
    gateway_chat_in_t *o = c->out;
    switch (k) {
    case K_TYPE:
        if (kind != 's')
            c->bad |= S_BAD(K_TYPE);
        else if (len <= GATEWAY_CHAT_TYPE_MAX) {
            memcpy(c->type, s, len);
            c->type[len] = '\0';
            c->has_type = true;
        }
        return 1; /* a longer type is no type we know */
    case K_CONTENT:
        if (kind != 's') {
            c->bad |= S_BAD(K_CONTENT);
            return 1;
        }
        if (len > GATEWAY_CHAT_CONTENT_MAX)
            return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "content is longer than 1 MiB");
        if (!(o->content = malloc(len + 1)))
            return s_stop(c, GATEWAY_CHAT_NOMEM, "out of memory");
        memcpy(o->content, s, len);
        o->content[len] = '\0';
        o->content_len = len;
        c->has_content = true;
        return 1;
    case K_PAGE_CONTEXT:
        if (kind == 'n')
            return 1;
        if (!s_gen_begin(c, K_PAGE_CONTEXT))
            return 0;
        if (!s_gen_check(c, kind == 's'   ? yajl_gen_string(c->gen, s, len)
                            : kind == 'b' ? yajl_gen_bool(c->gen, (int) len)
                                          : yajl_gen_number(c->gen, (const char *) s, len)))
            return 0;
        return s_gen_finish(c);
    case K_ATTACHMENTS:
        if (kind != 'n')
            c->bad |= S_BAD(K_ATTACHMENTS);
        return 1;
    }
    return 1;
}

/* Every scalar: the root must be an object; top-level members go to
 * s_top_scalar, nested values to the capture in progress. `kind`: 's'
 * string, 'n' null, 'b' boolean (len 0/1), 'o' number. */
static int s_scalar(s_dec_t *c, char kind, const unsigned char *s, size_t len)
{
    if (c->depth == 0)
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "a frame must be a JSON object");
    if (c->depth == 1)
        return s_top_scalar(c, kind, s, len);
    if (!c->gen)
        return 1;
    if (c->gen_key == K_ATTACHMENTS && c->depth == 2)
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "attachments must be an array of objects");
    yajl_gen_status st = kind == 's'   ? yajl_gen_string(c->gen, s, len)
                         : kind == 'n' ? yajl_gen_null(c->gen)
                         : kind == 'b' ? yajl_gen_bool(c->gen, (int) len)
                                       : yajl_gen_number(c->gen, (const char *) s, len);
    return s_gen_check(c, st);
}

static int s_on_null(void *ctx) { return s_scalar(ctx, 'n', NULL, 0); }
static int s_on_bool(void *ctx, int b) { return s_scalar(ctx, 'b', NULL, b ? 1 : 0); }
static int s_on_number(void *ctx, const char *s, size_t len)
{
    return s_scalar(ctx, 'o', (const unsigned char *) s, len);
}

static int s_on_string(void *ctx, const unsigned char *s, size_t len)
{
    if (memchr(s, '\0', len))
        return s_stop(ctx, GATEWAY_CHAT_INVALID_JSON, "a string holds NUL");
    return s_scalar(ctx, 's', s, len);
}

static int s_open(s_dec_t *c, bool map)
{
    if (c->depth == 0 && !map)
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "a frame must be a JSON object");
    if (c->depth >= GATEWAY_CHAT_DEPTH_MAX)
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "a frame is nested deeper than 32");
    if (c->depth == 1) {
        int k = c->top_key;
        c->top_key = K_NONE;
        if (k == K_PAGE_CONTEXT || (k == K_ATTACHMENTS && !map)) {
            if (!s_gen_begin(c, k))
                return 0;
        } else if (k == K_TYPE || k == K_CONTENT || k == K_ATTACHMENTS) {
            c->bad |= S_BAD(k);
        }
    }
    if (c->gen) {
        if (c->gen_key == K_ATTACHMENTS && c->depth == 2) {
            if (!map)
                return s_stop(c, GATEWAY_CHAT_INVALID_JSON,
                              "attachments must be an array of objects");
            if (++c->attachments > GATEWAY_CHAT_ATTACHMENTS_MAX)
                return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "more than 16 attachments");
        }
        if (!s_gen_check(c, map ? yajl_gen_map_open(c->gen) : yajl_gen_array_open(c->gen)))
            return 0;
    }
    c->depth++;
    c->levels[c->depth] = (s_level_t){.first = gateway_json_names_mark(&c->names), .is_map = map};
    return 1;
}

static int s_close(s_dec_t *c)
{
    s_level_t *l = &c->levels[c->depth];
    if (l->is_map)
        gateway_json_names_release(&c->names, l->first);
    if (c->gen && c->depth >= 2) {
        if (!s_gen_check(c, l->is_map ? yajl_gen_map_close(c->gen)
                                      : yajl_gen_array_close(c->gen)))
            return 0;
    }
    c->depth--;
    if (c->gen && c->depth == 1)
        return s_gen_finish(c);
    return 1;
}

static int s_on_start_map(void *ctx) { return s_open(ctx, true); }
static int s_on_end_map(void *ctx) { return s_close(ctx); }
static int s_on_start_array(void *ctx) { return s_open(ctx, false); }
static int s_on_end_array(void *ctx) { return s_close(ctx); }

/* Remembers a member name for the duplicate check of its object. */
static int s_key_add(s_dec_t *c, const unsigned char *s, size_t len)
{
    s_level_t *l = &c->levels[c->depth];
    switch (gateway_json_names_add(&c->names, l->first, s, len, GATEWAY_CHAT_KEYS_MAX)) {
    case GATEWAY_JSON_NAME_OK: break;
    case GATEWAY_JSON_NAME_REPEATED:
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "a member name is repeated");
    case GATEWAY_JSON_NAME_TOO_MANY:
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "an object has more than 256 members");
    case GATEWAY_JSON_NAME_NOMEM:
        return s_stop(c, GATEWAY_CHAT_NOMEM, "out of memory");
    }
    return 1;
}

static int s_on_key(void *ctx, const unsigned char *s, size_t len)
{
    s_dec_t *c = ctx;
    if (memchr(s, '\0', len))
        return s_stop(c, GATEWAY_CHAT_INVALID_JSON, "a member name holds NUL");
    if (!s_key_add(c, s, len))
        return 0;
    if (c->gen)
        return s_gen_check(c, yajl_gen_string(c->gen, s, len));
    if (c->depth != 1)
        return 1;
    static const struct { const char *name; int k; } known[] = {
        {"type", K_TYPE},
        {"content", K_CONTENT},
        {"page_context", K_PAGE_CONTEXT},
        {"attachments", K_ATTACHMENTS},
    };
    c->top_key = K_OTHER;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strlen(known[i].name) == len && !memcmp(known[i].name, s, len))
            c->top_key = known[i].k;
    return 1;
}

static const yajl_callbacks s_dec_callbacks = {
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

static bool s_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!strchr(" \t\r\n\v\f", s[i]))
            return false;
    return true;
}

/* The frame type named by a decoded "type", 0 for none. */
static gateway_chat_in_type_t s_in_type(const char *t)
{
    if (!strcmp(t, "connect"))
        return GATEWAY_CHAT_IN_CONNECT;
    if (!strcmp(t, "message"))
        return GATEWAY_CHAT_IN_MESSAGE;
    if (!strcmp(t, "steer"))
        return GATEWAY_CHAT_IN_STEER;
    if (!strcmp(t, "stop"))
        return GATEWAY_CHAT_IN_STOP;
    return 0;
}

/* After a complete parse: the frame's type and the members it needs. */
static gateway_chat_reason_t s_judge(s_dec_t *c)
{
    gateway_chat_in_t *o = c->out;
    if (!c->has_type) {
        snprintf(c->why, c->cap, "%s",
                 (c->bad & S_BAD(K_TYPE)) ? "\"type\" must be a string"
                                          : "a frame needs a \"type\" (connect, message, steer, stop)");
        return GATEWAY_CHAT_UNKNOWN_MESSAGE_TYPE;
    }
    if (!(o->type = s_in_type(c->type))) {
        snprintf(c->why, c->cap, "unknown type \"%.32s\" (connect, message, steer, stop)",
                 c->type);
        return GATEWAY_CHAT_UNKNOWN_MESSAGE_TYPE;
    }
    if (o->type == GATEWAY_CHAT_IN_MESSAGE || o->type == GATEWAY_CHAT_IN_STEER) {
        if (c->bad & S_BAD(K_CONTENT)) {
            snprintf(c->why, c->cap, "\"content\" must be a string");
            return GATEWAY_CHAT_INVALID_JSON;
        }
        if (!c->has_content || s_blank(o->content, o->content_len)) {
            snprintf(c->why, c->cap, "\"content\" is empty");
            return GATEWAY_CHAT_EMPTY_CONTENT;
        }
    }
    if (o->type == GATEWAY_CHAT_IN_MESSAGE && (c->bad & S_BAD(K_ATTACHMENTS))) {
        snprintf(c->why, c->cap, "attachments must be an array of objects");
        return GATEWAY_CHAT_INVALID_JSON;
    }
    if (o->type != GATEWAY_CHAT_IN_MESSAGE) {
        /* Only a message carries these. */
        free(o->page_context);
        free(o->attachments);
        o->page_context = o->attachments = NULL;
        o->page_context_len = o->attachments_len = 0;
        o->attachments_count = 0;
    }
    if (o->type != GATEWAY_CHAT_IN_MESSAGE && o->type != GATEWAY_CHAT_IN_STEER) {
        free(o->content);
        o->content = NULL;
        o->content_len = 0;
    }
    return GATEWAY_CHAT_OK;
}

gateway_chat_reason_t gateway_chat_frame_decode(const uint8_t *data, size_t len,
                                                gateway_chat_in_t *out, char *why, size_t cap)
{
    return gateway_chat_frame_decode_limited(data, len, 0, out, why, cap);
}

gateway_chat_reason_t gateway_chat_frame_decode_limited(const uint8_t *data, size_t len,
                                                        size_t attachments_max,
                                                        gateway_chat_in_t *out, char *why,
                                                        size_t cap)
{
    char spare[1];
    if (!why || cap == 0) {
        why = spare;
        cap = sizeof spare;
    }
    memset(out, 0, sizeof *out);
    snprintf(why, cap, "ok");
    if (!attachments_max)
        attachments_max = GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX;
    /* The frame holds the attachments and the rest (content, page_context):
     * a larger attachments bound must not be cut short by the frame's. */
    size_t frame_max = GATEWAY_CHAT_FRAME_MAX;
    if (attachments_max > GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX &&
        attachments_max <= SIZE_MAX - (GATEWAY_CHAT_FRAME_MAX - GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX))
        frame_max = attachments_max + (GATEWAY_CHAT_FRAME_MAX - GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX);
    else if (attachments_max > GATEWAY_CHAT_ATTACHMENTS_BYTES_MAX)
        frame_max = SIZE_MAX;
    if (len > frame_max) {
        char size[32];
        s_size_text(frame_max, size, sizeof size);
        snprintf(why, cap, "the frame is longer than %s", size);
        return GATEWAY_CHAT_INVALID_JSON;
    }
    const char *problem = gateway_json_text_problem((const char *) data, len);
    if (problem) {
        snprintf(why, cap, "the frame %s", problem);
        return GATEWAY_CHAT_INVALID_JSON;
    }
    s_dec_t c = {.out = out, .why = why, .cap = cap, .attachments_max = attachments_max};
    yajl_handle h = yajl_alloc(&s_dec_callbacks, NULL, &c);
    if (!h) {
        snprintf(why, cap, "out of memory");
        return GATEWAY_CHAT_NOMEM;
    }
    yajl_status st = yajl_parse(h, data, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    gateway_chat_reason_t r = c.fail;
    if (r == GATEWAY_CHAT_OK && st != yajl_status_ok) {
        r = GATEWAY_CHAT_INVALID_JSON;
        snprintf(why, cap, "the frame is not JSON");
    }
    yajl_free(h);
    if (c.gen)
        yajl_gen_free(c.gen);
    gateway_json_names_free(&c.names);
    if (r == GATEWAY_CHAT_OK)
        r = s_judge(&c);
    if (r != GATEWAY_CHAT_OK)
        gateway_chat_in_clear(out);
    return r;
}

void gateway_chat_in_clear(gateway_chat_in_t *in)
{
    free(in->content);
    free(in->page_context);
    free(in->attachments);
    memset(in, 0, sizeof *in);
}

const char *gateway_chat_reason_code(gateway_chat_reason_t r)
{
    switch (r) {
    case GATEWAY_CHAT_OK: return "OK";
    case GATEWAY_CHAT_INVALID_JSON: return "INVALID_JSON";
    case GATEWAY_CHAT_EMPTY_CONTENT: return "EMPTY_CONTENT";
    case GATEWAY_CHAT_UNKNOWN_MESSAGE_TYPE: return "UNKNOWN_MESSAGE_TYPE";
    case GATEWAY_CHAT_NOMEM: return "AGENT_ERROR";
    }
    return "AGENT_ERROR";
}

/* ---------------------------------------------------------------- encoding */

/* Length of the well-formed UTF-8 sequence at s[0..n), 0 when there is none. */
static size_t s_utf8_seq(const unsigned char *s, size_t n)
{
    size_t want = s[0] < 0x80 ? 1 : s[0] >= 0xC2 && s[0] <= 0xDF ? 2
                  : s[0] >= 0xE0 && s[0] <= 0xEF               ? 3
                  : s[0] >= 0xF0 && s[0] <= 0xF4               ? 4
                                                               : 0;
    if (want == 0 || want > n)
        return 0;
    return proto_utf8_valid(s, want) ? want : 0;
}

/* s[0..n) as a JSON string, quotes included. Ill-formed octets become
 * U+FFFD, one per octet. */
static void s_str(gateway_text_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *) s;
    gateway_text_add(b, "\"", 1);
    size_t run = 0; /* octets copied as they are, pending */
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        size_t seq = c < 0x20 || c == '"' || c == '\\' ? 0
                     : c < 0x80                        ? 1
                                                       : s_utf8_seq(u + i, n - i);
        if (seq) {
            i += seq;
            run += seq;
            continue;
        }
        gateway_text_add(b, s + i - run, run);
        run = 0;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char) c};
            gateway_text_add(b, esc, 2);
        } else if (c < 0x20) {
            const char *named = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
            char esc[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
            gateway_text_cstr(b, named ? named : esc);
        } else {
            gateway_text_cstr(b, "\xEF\xBF\xBD");
        }
        i++;
    }
    gateway_text_add(b, s + n - run, run);
    gateway_text_add(b, "\"", 1);
}

static void s_cstr(gateway_text_t *b, const char *s)
{
    if (s)
        s_str(b, s, strlen(s));
    else
        gateway_text_cstr(b, "null");
}

/* ,"name": */
static void s_key(gateway_text_t *b, const char *name)
{
    gateway_text_cstr(b, ",\"");
    gateway_text_cstr(b, name);
    gateway_text_cstr(b, "\":");
}

/* Re-serialises JSON text through yajl: the parse events drive a yajl_gen. */
typedef struct {
    yajl_gen g;
    unsigned depth;
} s_pipe_t;

static int s_p_null(void *ctx) { return yajl_gen_null(((s_pipe_t *) ctx)->g) == yajl_gen_status_ok; }
static int s_p_bool(void *ctx, int v) { return yajl_gen_bool(((s_pipe_t *) ctx)->g, v) == yajl_gen_status_ok; }
static int s_p_number(void *ctx, const char *s, size_t n)
{
    return yajl_gen_number(((s_pipe_t *) ctx)->g, s, n) == yajl_gen_status_ok;
}
static int s_p_string(void *ctx, const unsigned char *s, size_t n)
{
    return !memchr(s, '\0', n) && yajl_gen_string(((s_pipe_t *) ctx)->g, s, n) == yajl_gen_status_ok;
}
static int s_p_open(s_pipe_t *p, bool map)
{
    if (++p->depth > GATEWAY_CHAT_DEPTH_MAX)
        return 0;
    return (map ? yajl_gen_map_open(p->g) : yajl_gen_array_open(p->g)) == yajl_gen_status_ok;
}
static int s_p_close(s_pipe_t *p, bool map)
{
    p->depth--;
    return (map ? yajl_gen_map_close(p->g) : yajl_gen_array_close(p->g)) == yajl_gen_status_ok;
}
static int s_p_start_map(void *ctx) { return s_p_open(ctx, true); }
static int s_p_end_map(void *ctx) { return s_p_close(ctx, true); }
static int s_p_start_array(void *ctx) { return s_p_open(ctx, false); }
static int s_p_end_array(void *ctx) { return s_p_close(ctx, false); }

static const yajl_callbacks s_pipe_callbacks = {
    .yajl_null = s_p_null,
    .yajl_boolean = s_p_bool,
    .yajl_number = s_p_number,
    .yajl_string = s_p_string,
    .yajl_start_map = s_p_start_map,
    .yajl_map_key = s_p_string,
    .yajl_end_map = s_p_end_map,
    .yajl_start_array = s_p_start_array,
    .yajl_end_array = s_p_end_array,
};

/* json[0..n) as a JSON value when it is strict JSON (within the bounds),
 * else as a string; NULL/empty as null. */
static void s_json_value(gateway_text_t *b, const char *json, size_t n)
{
    if (!json || n == 0) {
        gateway_text_cstr(b, "null");
        return;
    }
    if (n <= GATEWAY_CHAT_JSON_VALUE_MAX && !gateway_json_text_problem(json, n)) {
        s_pipe_t p = {.g = yajl_gen_alloc(NULL)};
        yajl_handle h = p.g ? yajl_alloc(&s_pipe_callbacks, NULL, &p) : NULL;
        if (!h) {
            if (p.g)
                yajl_gen_free(p.g);
            b->failed = true;
            return;
        }
        bool ok = yajl_parse(h, (const unsigned char *) json, n) == yajl_status_ok &&
                  yajl_complete_parse(h) == yajl_status_ok;
        const unsigned char *out;
        size_t outlen = 0;
        if (ok)
            ok = yajl_gen_get_buf(p.g, &out, &outlen) == yajl_gen_status_ok && outlen > 0;
        if (ok)
            gateway_text_add(b, (const char *) out, outlen);
        yajl_free(h);
        yajl_gen_free(p.g);
        if (ok)
            return;
    }
    s_str(b, json, n);
}

static const char *const s_out_names[] = {
    [GATEWAY_CHAT_OUT_SESSION_START] = "session_start",
    [GATEWAY_CHAT_OUT_CONNECTED] = "connected",
    [GATEWAY_CHAT_OUT_CHUNK] = "chunk",
    [GATEWAY_CHAT_OUT_THINKING] = "thinking",
    [GATEWAY_CHAT_OUT_TOOL_CALL] = "tool_call",
    [GATEWAY_CHAT_OUT_TOOL_RESULT] = "tool_result",
    [GATEWAY_CHAT_OUT_OPERATOR_STATUS] = "operator_status",
    [GATEWAY_CHAT_OUT_AGENT_EVENT] = "agent_event",
    [GATEWAY_CHAT_OUT_CHUNK_RESET] = "chunk_reset",
    [GATEWAY_CHAT_OUT_DONE] = "done",
    [GATEWAY_CHAT_OUT_STOPPED] = "stopped",
    [GATEWAY_CHAT_OUT_ERROR] = "error",
};

const char *gateway_chat_out_type_name(gateway_chat_out_type_t t)
{
    if ((unsigned) t >= sizeof s_out_names / sizeof s_out_names[0])
        return NULL;
    return s_out_names[t];
}

int gateway_chat_frame_encode(const gateway_chat_out_t *f, char **json, size_t *len)
{
    *json = NULL;
    *len = 0;
    const char *name = gateway_chat_out_type_name(f->type);
    if (!name) {
        errno = EINVAL;
        return -1;
    }
    gateway_text_t b = {0};
    gateway_text_cstr(&b, "{\"type\":\"");
    gateway_text_cstr(&b, name);
    gateway_text_cstr(&b, "\"");
    char num[24];
    switch (f->type) {
    case GATEWAY_CHAT_OUT_SESSION_START:
        s_key(&b, "session_id");
        s_cstr(&b, f->session_id);
        s_key(&b, "resumed");
        gateway_text_cstr(&b, f->resumed ? "true" : "false");
        s_key(&b, "message_count");
        snprintf(num, sizeof num, "%" PRIu64, f->message_count);
        gateway_text_cstr(&b, num);
        s_key(&b, "name");
        s_cstr(&b, f->name ? f->name : "");
        break;
    case GATEWAY_CHAT_OUT_CONNECTED:
        s_key(&b, "session_id");
        s_cstr(&b, f->session_id);
        s_key(&b, "protocol");
        gateway_text_cstr(&b, "\"kith.v1\"");
        break;
    case GATEWAY_CHAT_OUT_CHUNK:
    case GATEWAY_CHAT_OUT_THINKING:
        s_key(&b, "turn_id");
        s_cstr(&b, f->turn_id);
        s_key(&b, "content");
        s_str(&b, f->text ? f->text : "", f->text ? f->text_len : 0);
        break;
    case GATEWAY_CHAT_OUT_TOOL_CALL:
        s_key(&b, "turn_id");
        s_cstr(&b, f->turn_id);
        s_key(&b, "id");
        s_cstr(&b, f->id);
        s_key(&b, "name");
        s_cstr(&b, f->name);
        s_key(&b, "arguments");
        s_json_value(&b, f->json, f->json_len);
        break;
    case GATEWAY_CHAT_OUT_TOOL_RESULT:
        s_key(&b, "turn_id");
        s_cstr(&b, f->turn_id);
        s_key(&b, "id");
        s_cstr(&b, f->id);
        s_key(&b, "result");
        s_json_value(&b, f->json, f->json_len);
        s_key(&b, "is_error");
        gateway_text_cstr(&b, f->is_error ? "true" : "false");
        break;
    case GATEWAY_CHAT_OUT_OPERATOR_STATUS:
        s_key(&b, "turn_id");
        s_cstr(&b, f->turn_id);
        s_key(&b, "status");
        s_str(&b, f->text ? f->text : "", f->text ? f->text_len : 0);
        break;
    case GATEWAY_CHAT_OUT_AGENT_EVENT:
        if (f->session_id) {
            s_key(&b, "session_id");
            s_cstr(&b, f->session_id);
        }
        if (f->turn_id) {
            s_key(&b, "turn_id");
            s_cstr(&b, f->turn_id);
        }
        s_key(&b, "name");
        s_cstr(&b, f->name ? f->name : "");
        s_key(&b, "data");
        s_json_value(&b, f->json, f->json_len);
        break;
    case GATEWAY_CHAT_OUT_CHUNK_RESET:
        s_key(&b, "turn_id");
        s_cstr(&b, f->turn_id);
        break;
    case GATEWAY_CHAT_OUT_DONE:
        s_key(&b, "turn_id");
        s_cstr(&b, f->turn_id);
        s_key(&b, "full_response");
        s_str(&b, f->text ? f->text : "", f->text ? f->text_len : 0);
        break;
    case GATEWAY_CHAT_OUT_STOPPED:
        if (f->turn_id) {
            s_key(&b, "turn_id");
            s_cstr(&b, f->turn_id);
        }
        s_key(&b, "message");
        s_str(&b, f->text ? f->text : "", f->text ? f->text_len : 0);
        break;
    case GATEWAY_CHAT_OUT_ERROR:
        s_key(&b, "message");
        s_str(&b, f->text ? f->text : "", f->text ? f->text_len : 0);
        s_key(&b, "code");
        s_cstr(&b, f->code ? f->code : "AGENT_ERROR");
        if (f->turn_id) {
            s_key(&b, "turn_id");
            s_cstr(&b, f->turn_id);
        }
        break;
    }
    gateway_text_cstr(&b, "}");
    if (b.failed) {
        free(b.p);
        errno = ENOMEM;
        return -1;
    }
    *json = b.p;
    *len = b.len;
    return 0;
}
