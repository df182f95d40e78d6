/* gateway/openclaw_frame.c — the OpenClaw endpoint's frame decoder (yajl's
 * tree, parsed strictly by gateway_json_tree_parse) and frame wrappers
 * (gateway/openclaw_frame.h). */
#include "gateway/openclaw_frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "gateway/json_text.h"

static int s_fail(char *why, size_t cap, const char *what)
{
    snprintf(why, cap, "%s", what);
    return -1;
}

/* The member `key` of object o, or NULL. */
static yajl_val s_get(yajl_val o, const char *key)
{
    if (!YAJL_IS_OBJECT(o))
        return NULL;
    for (size_t i = 0; i < o->u.object.len; i++)
        if (!strcmp(o->u.object.keys[i], key))
            return o->u.object.values[i];
    return NULL;
}

/* Copies string member `key` of o into out[cap]: 1 copied, 0 absent (out
 * is ""), -1 not a string or longer than cap - 1. An explicit null counts
 * as absent. */
static int s_str(yajl_val o, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    yajl_val v = s_get(o, key);
    if (!v || YAJL_IS_NULL(v))
        return 0;
    if (!YAJL_IS_STRING(v))
        return -1;
    size_t n = strlen(v->u.string);
    if (n >= cap)
        return -1;
    memcpy(out, v->u.string, n + 1);
    return 1;
}

/* An integer member in [0, 2^53): 1 found, 0 absent, -1 wrong. */
static int s_uint(yajl_val o, const char *key, int64_t *out)
{
    yajl_val v = s_get(o, key);
    if (!v)
        return 0;
    if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 0 ||
        YAJL_GET_INTEGER(v) >= (1ll << 53))
        return -1;
    *out = YAJL_GET_INTEGER(v);
    return 1;
}

/* ---------------------------------------------------------------- requests */

int gateway_openclaw_req_decode(const uint8_t *data, size_t len, gateway_openclaw_req_t *out,
                                char *why, size_t cap)
{
    memset(out, 0, sizeof *out);
    yajl_val tree = gateway_json_tree_parse(data, len, GATEWAY_OPENCLAW_DEPTH_MAX,
                                            GATEWAY_OPENCLAW_KEYS_MAX, why, cap);
    if (!tree)
        return -1;
    if (!YAJL_IS_OBJECT(tree)) {
        yajl_tree_free(tree);
        return s_fail(why, cap, "a frame is one JSON object");
    }
    char type[8];
    int rc_id = s_str(tree, "id", out->id, sizeof out->id);
    if (rc_id <= 0 || !out->id[0]) {
        out->id[0] = '\0';
        yajl_tree_free(tree);
        return s_fail(why, cap, "\"id\" must be a string of 1..128 octets");
    }
    if (s_str(tree, "type", type, sizeof type) <= 0 || strcmp(type, "req") != 0) {
        yajl_tree_free(tree);
        return s_fail(why, cap, "clients send frames of type \"req\"");
    }
    if (s_str(tree, "method", out->method, sizeof out->method) <= 0 || !out->method[0]) {
        yajl_tree_free(tree);
        return s_fail(why, cap, "\"method\" must be a string of 1..64 octets");
    }
    yajl_val tp = s_get(tree, "traceparent");
    if (tp && (!YAJL_IS_STRING(tp) || strlen(tp->u.string) > 128)) {
        yajl_tree_free(tree);
        return s_fail(why, cap, "\"traceparent\" is a string of at most 128 octets");
    }
    out->tree = tree;
    out->params = s_get(tree, "params");
    return 0;
}

void gateway_openclaw_req_clear(gateway_openclaw_req_t *req)
{
    if (req->tree)
        yajl_tree_free(req->tree);
    req->tree = NULL;
    req->params = NULL;
}

/* ---------------------------------------------------------------- connect */

#define S_STR(o, key, field, what)                                                         \
    do {                                                                                   \
        if (s_str((o), (key), (field), sizeof(field)) < 0)                                 \
            return s_fail(why, cap, what);                                                 \
    } while (0)

int gateway_openclaw_connect_decode(yajl_val params, gateway_openclaw_connect_t *out, char *why,
                                    size_t cap)
{
    memset(out, 0, sizeof *out);
    if (!YAJL_IS_OBJECT(params))
        return s_fail(why, cap, "invalid connect params: params must be an object");
    if (s_uint(params, "minProtocol", &out->min_protocol) <= 0 ||
        s_uint(params, "maxProtocol", &out->max_protocol) <= 0)
        return s_fail(why, cap, "invalid connect params: minProtocol and maxProtocol are "
                                "non-negative integers");
    yajl_val client = s_get(params, "client");
    if (!YAJL_IS_OBJECT(client))
        return s_fail(why, cap, "invalid connect params: client must be an object");
    if (s_str(client, "id", out->client_id, sizeof out->client_id) <= 0 || !out->client_id[0] ||
        s_str(client, "mode", out->client_mode, sizeof out->client_mode) <= 0 ||
        !out->client_mode[0])
        return s_fail(why, cap, "invalid connect params: client.id and client.mode are "
                                "strings of 1..128 octets");
    S_STR(client, "version", out->client_version,
          "invalid connect params: client.version is a string of at most 128 octets");
    S_STR(client, "platform", out->client_platform,
          "invalid connect params: client.platform is a string of at most 128 octets");
    S_STR(client, "deviceFamily", out->client_device_family,
          "invalid connect params: client.deviceFamily is a string of at most 128 octets");
    S_STR(client, "instanceId", out->client_instance_id,
          "invalid connect params: client.instanceId is a string of at most 128 octets");
    if (s_str(params, "role", out->role, sizeof out->role) < 0)
        return s_fail(why, cap, "invalid connect params: role is a string");
    if (!out->role[0])
        snprintf(out->role, sizeof out->role, "operator");
    yajl_val scopes = s_get(params, "scopes");
    if (scopes && !YAJL_IS_NULL(scopes)) {
        if (!YAJL_IS_ARRAY(scopes) || scopes->u.array.len > GATEWAY_OPENCLAW_SCOPES_MAX)
            return s_fail(why, cap, "invalid connect params: scopes is an array of at most "
                                    "16 strings");
        out->has_scopes = true;
        for (size_t i = 0; i < scopes->u.array.len; i++) {
            yajl_val s = scopes->u.array.values[i];
            if (!YAJL_IS_STRING(s) || !s->u.string[0] ||
                strlen(s->u.string) > GATEWAY_OPENCLAW_SCOPE_MAX)
                return s_fail(why, cap, "invalid connect params: a scope is a string of "
                                        "1..64 octets");
            memcpy(out->scopes[out->nscopes++], s->u.string, strlen(s->u.string) + 1);
        }
    }
    yajl_val auth = s_get(params, "auth");
    if (auth && !YAJL_IS_NULL(auth)) {
        if (!YAJL_IS_OBJECT(auth))
            return s_fail(why, cap, "invalid connect params: auth must be an object");
        S_STR(auth, "token", out->token,
              "invalid connect params: auth.token is a string of at most 512 octets");
        S_STR(auth, "deviceToken", out->device_token,
              "invalid connect params: auth.deviceToken is a string of at most 512 octets");
        S_STR(auth, "bootstrapToken", out->bootstrap_token,
              "invalid connect params: auth.bootstrapToken is a string of at most 512 octets");
    }
    yajl_val dev = s_get(params, "device");
    if (dev && !YAJL_IS_NULL(dev)) {
        if (!YAJL_IS_OBJECT(dev))
            return s_fail(why, cap, "invalid connect params: device must be an object");
        out->has_device = true;
        if (s_str(dev, "id", out->device_id, sizeof out->device_id) <= 0 || !out->device_id[0] ||
            s_str(dev, "publicKey", out->device_public_key, sizeof out->device_public_key) <= 0 ||
            !out->device_public_key[0] ||
            s_str(dev, "signature", out->device_signature, sizeof out->device_signature) <= 0 ||
            !out->device_signature[0] || s_uint(dev, "signedAt", &out->device_signed_at) <= 0)
            return s_fail(why, cap, "invalid connect params: device needs id, publicKey, "
                                    "signature (strings) and signedAt (an integer)");
        /* A missing nonce is its own refusal (DEVICE_AUTH_NONCE_REQUIRED). */
        S_STR(dev, "nonce", out->device_nonce,
              "invalid connect params: device.nonce is a string of at most 128 octets");
    }
    return 0;
}

/* ---------------------------------------------------------------- runs */

bool gateway_openclaw_key_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > GATEWAY_OPENCLAW_RUN_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* The run params both methods share. */
static int s_run(yajl_val params, gateway_openclaw_run_params_t *out, bool session_required,
                 char *why, size_t cap)
{
    memset(out, 0, sizeof *out);
    if (!YAJL_IS_OBJECT(params))
        return s_fail(why, cap, "params must be an object");
    yajl_val m = s_get(params, "message");
    if (!m || !YAJL_IS_STRING(m))
        return s_fail(why, cap, "\"message\" must be a string");
    out->message = m->u.string;
    out->message_len = strlen(m->u.string);
    if (out->message_len > GATEWAY_OPENCLAW_MESSAGE_MAX)
        return s_fail(why, cap, "\"message\" is longer than 1 MiB");
    int rc = s_str(params, "sessionKey", out->session_key, sizeof out->session_key);
    if (rc < 0 || (rc > 0 && !gateway_openclaw_key_ok(out->session_key)) ||
        (session_required && rc == 0))
        return s_fail(why, cap, "\"sessionKey\" must be 1..128 of A-Z a-z 0-9 . _ : -");
    rc = s_str(params, "idempotencyKey", out->idempotency_key, sizeof out->idempotency_key);
    if (rc <= 0 || !gateway_openclaw_key_ok(out->idempotency_key))
        return s_fail(why, cap, "\"idempotencyKey\" must be 1..128 of A-Z a-z 0-9 . _ : -");
    return 0;
}

int gateway_openclaw_agent_decode(yajl_val params, gateway_openclaw_run_params_t *out, char *why,
                                  size_t cap)
{
    if (s_run(params, out, false, why, cap) != 0)
        return -1;
    if (out->message_len == 0)
        return s_fail(why, cap, "\"message\" must not be empty");
    return 0;
}

int gateway_openclaw_chat_send_decode(yajl_val params, gateway_openclaw_run_params_t *out,
                                      char *why, size_t cap)
{
    return s_run(params, out, true, why, cap);
}

int gateway_openclaw_chat_abort_decode(yajl_val params,
                                       char session_key[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1],
                                       char run_id[GATEWAY_OPENCLAW_RUN_KEY_MAX + 1], char *why,
                                       size_t cap)
{
    if (!YAJL_IS_OBJECT(params))
        return s_fail(why, cap, "params must be an object");
    if (s_str(params, "sessionKey", session_key, GATEWAY_OPENCLAW_RUN_KEY_MAX + 1) <= 0 ||
        !gateway_openclaw_key_ok(session_key))
        return s_fail(why, cap, "\"sessionKey\" must be 1..128 of A-Z a-z 0-9 . _ : -");
    int rc = s_str(params, "runId", run_id, GATEWAY_OPENCLAW_RUN_KEY_MAX + 1);
    if (rc < 0 || (rc > 0 && !gateway_openclaw_key_ok(run_id)))
        return s_fail(why, cap, "\"runId\" must be 1..128 of A-Z a-z 0-9 . _ : -");
    return 0;
}

/* ---------------------------------------------------------------- frames out */

/* A frame is assembled as text: the JSON parts are kith's own, so there is
 * nothing to re-parse; only the strings are escaped (by yajl). */
typedef struct {
    yajl_gen g;
    bool failed;
} s_out_t;

/* A JSON string literal of s, escaped by yajl. */
static void s_buf_json_str(gateway_text_t *b, const char *s)
{
    s_out_t o = {.g = yajl_gen_alloc(NULL)};
    if (!o.g) {
        b->failed = true;
        return;
    }
    if (yajl_gen_string(o.g, (const unsigned char *) s, strlen(s)) != yajl_gen_status_ok)
        o.failed = true;
    const unsigned char *txt;
    size_t n;
    if (!o.failed && yajl_gen_get_buf(o.g, &txt, &n) == yajl_gen_status_ok)
        gateway_text_add(b, (const char *) txt, n);
    else
        b->failed = true;
    yajl_gen_free(o.g);
}

static char *s_buf_end(gateway_text_t *b, size_t *len)
{
    if (b->failed) {
        free(b->p);
        return NULL;
    }
    if (len)
        *len = b->len;
    return b->p;
}

char *gateway_openclaw_event_encode(const char *event, const char *payload_json, uint64_t seq,
                                    size_t *len)
{
    gateway_text_t b = {0};
    gateway_text_cstr(&b, "{\"type\":\"event\",\"event\":");
    s_buf_json_str(&b, event);
    gateway_text_cstr(&b, ",\"payload\":");
    gateway_text_cstr(&b, payload_json ? payload_json : "{}");
    if (seq) {
        char n[32];
        snprintf(n, sizeof n, ",\"seq\":%llu", (unsigned long long) seq);
        gateway_text_cstr(&b, n);
    }
    gateway_text_cstr(&b, "}");
    return s_buf_end(&b, len);
}

char *gateway_openclaw_res_ok_encode(const char *id, const char *payload_json, size_t *len)
{
    gateway_text_t b = {0};
    gateway_text_cstr(&b, "{\"type\":\"res\",\"id\":");
    s_buf_json_str(&b, id);
    gateway_text_cstr(&b, ",\"ok\":true,\"payload\":");
    gateway_text_cstr(&b, payload_json ? payload_json : "{}");
    gateway_text_cstr(&b, "}");
    return s_buf_end(&b, len);
}

char *gateway_openclaw_res_error_encode(const char *id, const char *code, const char *message,
                                        const char *details_json, bool retryable,
                                        const char *payload_json, size_t *len)
{
    gateway_text_t b = {0};
    gateway_text_cstr(&b, "{\"type\":\"res\",\"id\":");
    s_buf_json_str(&b, id);
    gateway_text_cstr(&b, ",\"ok\":false,\"error\":{\"code\":");
    s_buf_json_str(&b, code);
    gateway_text_cstr(&b, ",\"message\":");
    s_buf_json_str(&b, message);
    if (details_json) {
        gateway_text_cstr(&b, ",\"details\":");
        gateway_text_cstr(&b, details_json);
    }
    if (retryable)
        gateway_text_cstr(&b, ",\"retryable\":true");
    gateway_text_cstr(&b, "}");
    if (payload_json) {
        gateway_text_cstr(&b, ",\"payload\":");
        gateway_text_cstr(&b, payload_json);
    }
    gateway_text_cstr(&b, "}");
    return s_buf_end(&b, len);
}
