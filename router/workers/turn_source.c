/* router/workers/turn_source.c — inbox entries into turn messages: envelopes
 * by kind, webhooks, external events and plain event lines. */
#include "router/workers/turn_source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "proto/envelope.h"
#include "router/comms/envelope_json.h"
#include "router/workers/turn_json.h"

bool router_turn_session_id_ok(const char *id, size_t len)
{
    if (len == 0 || len > 128)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

void router_turn_source_clear(router_turn_source_t *s)
{
    free(s->content);
    memset(s, 0, sizeof *s);
}

/* The helpers below return 0, or ROUTER_TURN_SOURCE_REFUSED or _NO_MEMORY
 * (only for an allocation of kith's that failed: anything less certain is
 * a refusal, so no entry is retried for ever). */

static int s_set(router_turn_source_t *o, const char *text, size_t len)
{
    free(o->content);
    o->content = malloc(len + 1);
    if (!o->content)
        return ROUTER_TURN_SOURCE_NO_MEMORY;
    memcpy(o->content, text, len);
    o->content[len] = '\0';
    o->len = len;
    return 0;
}

/* "<head><value as JSON>" into o->content. */
static int s_set_with_json(router_turn_source_t *o, const char *head, const cbor_item_t *v)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return ROUTER_TURN_SOURCE_NO_MEMORY;
    int rc = ROUTER_TURN_SOURCE_REFUSED;
    const unsigned char *buf;
    size_t n;
    int jr = v ? router_cbor_to_json(g, v)
               : yajl_gen_null(g) == yajl_gen_status_ok ? 0 : ROUTER_JSON_NO_MEMORY;
    if (jr == ROUTER_JSON_NO_MEMORY)
        rc = ROUTER_TURN_SOURCE_NO_MEMORY; /* the entry waits for a retry: never dropped */
    if (jr == 0 && yajl_gen_get_buf(g, &buf, &n) == yajl_gen_status_ok) {
        size_t hl = strlen(head);
        char *c = malloc(hl + n + 1);
        rc = ROUTER_TURN_SOURCE_NO_MEMORY;
        if (c) {
            memcpy(c, head, hl);
            memcpy(c + hl, buf, n);
            c[hl + n] = '\0';
            free(o->content);
            o->content = c;
            o->len = hl + n;
            rc = 0;
        }
    }
    yajl_gen_free(g);
    return rc;
}

static int s_envelope(const router_inbox_entry_t *e, router_turn_source_t *o, char *why,
                      size_t whycap)
{
    proto_envelope_t *env = NULL;
    proto_envelope_reason_t r;
    if (proto_envelope_decode(e->frame, e->frame_len, &env, &r) != 0) {
        snprintf(why, whycap, "the stored envelope does not decode: %s",
                 proto_envelope_reason_str(r));
        return r == PROTO_ENV_NO_MEMORY ? ROUTER_TURN_SOURCE_NO_MEMORY
                                        : ROUTER_TURN_SOURCE_REFUSED;
    }
    o->envelope = true;
    o->channel = PROTO_WORKER_CHANNEL_COMMS;
    memcpy(o->envelope_id, proto_envelope_id(env), 16);
    memcpy(o->from, proto_envelope_from(env), 32);
    int rc = ROUTER_TURN_SOURCE_REFUSED; /* a field missing, unless set below */
    const char *p;
    size_t len;
    char head[256];
    switch (proto_envelope_kind(env)) {
    case PROTO_KIND_MESSAGE:
        o->envtype = PROTO_WORKER_ENVTYPE_MESSAGE;
        if (proto_envelope_text(env, "body", &p, &len) == 0)
            rc = s_set(o, p, len);
        break;
    case PROTO_KIND_FENCED_MESSAGE: /* Meerkat's message for one incarnation (WIRE §23.3) */
        o->envtype = PROTO_WORKER_ENVTYPE_INCARNATION_FENCED_MESSAGE;
        if (proto_envelope_text(env, "body", &p, &len) == 0)
            rc = s_set(o, p, len);
        break;
    case PROTO_KIND_REQUEST:
        o->envtype = PROTO_WORKER_ENVTYPE_REQUEST;
        o->is_request = true;
        if (proto_envelope_text(env, "intent", &p, &len) == 0) {
            snprintf(head, sizeof head, "request %.*s: ", (int) (len > 200 ? 200 : len), p);
            rc = s_set_with_json(o, head, proto_envelope_field(env, "params"));
        }
        break;
    case PROTO_KIND_LIFECYCLE:
        o->envtype = PROTO_WORKER_ENVTYPE_LIFECYCLE;
        if (proto_envelope_text(env, "kind", &p, &len) == 0) {
            snprintf(head, sizeof head, "lifecycle %.*s: ", (int) (len > 200 ? 200 : len), p);
            rc = s_set_with_json(o, head, proto_envelope_field(env, "params"));
        }
        break;
    case PROTO_KIND_RESPONSE: {
        uint8_t irt[16];
        char uuid[PROTO_UUID_TEXT_CAP] = "?";
        if (proto_envelope_in_reply_to(env, irt) == 0)
            proto_uuid_format(irt, uuid);
        const char *st = proto_status_str(proto_envelope_status(env));
        snprintf(head, sizeof head, "response to %s (%s): ", uuid, st ? st : "?");
        rc = s_set_with_json(o, head, proto_envelope_field(env, "result"));
        break;
    }
    default:
        snprintf(why, whycap, "a %s envelope does not start a turn",
                 proto_kind_str(proto_envelope_kind(env)));
        proto_envelope_destroy(&env);
        return ROUTER_TURN_SOURCE_REFUSED;
    }
    proto_envelope_destroy(&env);
    if (rc != 0)
        snprintf(why, whycap, rc == ROUTER_TURN_SOURCE_NO_MEMORY ? "out of memory"
                                                                  : "a field missing");
    return rc;
}

/* Parses frame as a JSON object into *out (NULL when it is not one): 0, or
 * ROUTER_TURN_SOURCE_NO_MEMORY. */
static int s_json_object(const router_inbox_entry_t *e, yajl_val *out)
{
    *out = NULL;
    char *copy = malloc(e->frame_len + 1);
    if (!copy)
        return ROUTER_TURN_SOURCE_NO_MEMORY;
    memcpy(copy, e->frame, e->frame_len);
    copy[e->frame_len] = '\0';
    yajl_val v = yajl_tree_parse(copy, NULL, 0);
    free(copy);
    if (v && !YAJL_IS_OBJECT(v)) {
        yajl_tree_free(v);
        v = NULL;
    }
    *out = v;
    return 0;
}

static yajl_val s_member(yajl_val obj, const char *key)
{
    for (size_t i = 0; i < obj->u.object.len; i++)
        if (strcmp(obj->u.object.keys[i], key) == 0)
            return obj->u.object.values[i];
    return NULL;
}

static int s_from_entry(const router_inbox_entry_t *e, router_turn_source_t *o, char *why,
                        size_t whycap)
{
    if (strcmp(e->kind, "webhook") == 0) {
        /* {"message": string, "session_id"?: string}, checked at ingress */
        yajl_val v;
        if (s_json_object(e, &v) != 0)
            return ROUTER_TURN_SOURCE_NO_MEMORY;
        yajl_val msg = v ? s_member(v, "message") : NULL;
        yajl_val sid = v ? s_member(v, "session_id") : NULL;
        int rc = ROUTER_TURN_SOURCE_REFUSED;
        if (msg && YAJL_IS_STRING(msg)) {
            o->channel = PROTO_WORKER_CHANNEL_WEBHOOK;
            snprintf(o->session, sizeof o->session, "%s", ROUTER_TURN_WEBHOOK_SESSION);
            if (sid && YAJL_IS_STRING(sid) &&
                router_turn_session_id_ok(sid->u.string, strlen(sid->u.string)))
                snprintf(o->session, sizeof o->session, "%s", sid->u.string);
            rc = s_set(o, msg->u.string, strlen(msg->u.string));
        } else {
            snprintf(why, whycap, "a webhook entry without a message");
        }
        yajl_tree_free(v);
        return rc;
    }
    if (strcmp(e->kind, "event") == 0) {
        o->channel = PROTO_WORKER_CHANNEL_EXTERNAL_EVENT;
        /* External events are stored {"session_id":"<id>","event":<body>};
         * anything else is a plain event line's text. */
        yajl_val v = NULL;
        if (e->frame_len && e->frame[0] == '{' && s_json_object(e, &v) != 0)
            return ROUTER_TURN_SOURCE_NO_MEMORY;
        yajl_val sid = v && v->u.object.len == 2 ? s_member(v, "session_id") : NULL;
        yajl_val ev = v && v->u.object.len == 2 ? s_member(v, "event") : NULL;
        int rc;
        if (sid && YAJL_IS_STRING(sid) && ev &&
            router_turn_session_id_ok(sid->u.string, strlen(sid->u.string))) {
            snprintf(o->session, sizeof o->session, "%s", sid->u.string);
            yajl_gen g = yajl_gen_alloc(NULL);
            const unsigned char *buf;
            size_t n;
            rc = g ? ROUTER_TURN_SOURCE_REFUSED : ROUTER_TURN_SOURCE_NO_MEMORY;
            if (g && router_json_gen_value(g, ev) == 0 &&
                yajl_gen_get_buf(g, &buf, &n) == yajl_gen_status_ok)
                rc = s_set(o, (const char *) buf, n);
            if (g)
                yajl_gen_free(g);
        } else {
            rc = s_set(o, (const char *) e->frame, e->frame_len);
        }
        yajl_tree_free(v);
        if (rc != 0)
            snprintf(why, whycap, rc == ROUTER_TURN_SOURCE_NO_MEMORY
                                      ? "out of memory"
                                      : "the event cannot be written as JSON");
        return rc;
    }
    return s_envelope(e, o, why, whycap);
}

int router_turn_source_from_entry(const router_inbox_entry_t *e, const char *comms_session,
                                  router_turn_source_t *o, char *why, size_t whycap)
{
    memset(o, 0, sizeof *o);
    snprintf(o->session, sizeof o->session, "%s", comms_session);
    int rc = s_from_entry(e, o, why, whycap);
    if (rc != 0)
        router_turn_source_clear(o);
    return rc;
}
