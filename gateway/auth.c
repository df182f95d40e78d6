/* gateway/auth.c — bearer tokens (extraction in DESIGN §5's order, checks
 * against the stored hashes), the one-time pairing code, client keys. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "gateway/auth.h"
#include "gateway/ws.h"
#include "proto/utf8.h"
#include "router/log.h"
#include "router/net/addr.h"

struct gateway_auth {
    router_tokens_t *tokens;               /* borrowed */
    gateway_auth_opts_t opts;
    char code[GATEWAY_AUTH_CODE_LEN + 1];  /* the unspent pairing code, "" for none */
    char held[GATEWAY_AUTH_CODE_LEN + 1];  /* the code a /pair holds while its token is
                                            * written, "" for none */
    uint64_t hold;                         /* names the latest hold: an older one ends nothing */
};

gateway_auth_t *gateway_auth_new(router_tokens_t *tokens, const gateway_auth_opts_t *opts)
{
    gateway_auth_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->tokens = tokens;
    self->opts = *opts;
    return self;
}

void gateway_auth_destroy(gateway_auth_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sodium_memzero((*self_p)->code, sizeof (*self_p)->code);
    sodium_memzero((*self_p)->held, sizeof (*self_p)->held);
    free(*self_p);
    *self_p = NULL;
}

router_tokens_t *gateway_auth_tokens(gateway_auth_t *self)
{
    return self->tokens;
}

bool gateway_auth_pairing_required(const gateway_auth_t *self)
{
    return self->opts.require_pairing;
}

/* ---------------------------------------------------------------- extraction */

/* `token=<t>` in a query (taken as sent: a kith token needs no
 * percent-encoding); an empty one is none. */
static bool s_query_token(proto_http_slice_t q, const char **token, size_t *len)
{
    proto_http_slice_t v;
    if (!gateway_http_query_find(q, "token", &v) || v.len == 0)
        return false;
    *token = v.ptr;
    *len = v.len;
    return true;
}

bool gateway_auth_bearer(const gateway_http_req_t *req, const gateway_http_res_t *res,
                         bool allow_query, const char **token, size_t *len)
{
    proto_http_slice_t v;
    if (gateway_http_req_header(req, "Authorization", &v) && v.len > 7 &&
        !strncasecmp(v.ptr, "Bearer ", 7)) {
        const char *t = v.ptr + 7;
        size_t n = v.len - 7;
        while (n && (*t == ' ' || *t == '\t')) {
            t++;
            n--;
        }
        if (n) {
            *token = t;
            *len = n;
            return true;
        }
    }
    if (res) {
        size_t n = 0;
        const char *t = gateway_ws_req_bearer(res, &n);
        if (t && n) {
            *token = t;
            *len = n;
            return true;
        }
    }
    if (allow_query && s_query_token(req->query, token, len))
        return true;
    *token = NULL;
    *len = 0;
    return false;
}

/* ---------------------------------------------------------------- checks */

bool gateway_auth_token_find(const gateway_auth_t *self, const char *token, size_t len,
                             router_token_scope_t *scope, char id[ROUTER_TOKENS_ID_LEN + 1])
{
    if (len != GATEWAY_AUTH_TOKEN_LEN || memcmp(token, GATEWAY_AUTH_TOKEN_PREFIX, 5) != 0)
        return false;
    for (size_t i = 5; i < len; i++)
        if (!((token[i] >= '0' && token[i] <= '9') || (token[i] >= 'a' && token[i] <= 'f')))
            return false;
    uint8_t hash[32];
    crypto_hash_sha256(hash, (const unsigned char *) token, len);
    if (!router_tokens_check(self->tokens, hash, scope))
        return false;
    if (id)
        router_tokens_id(hash, id);
    return true;
}

bool gateway_auth_token_ok(const gateway_auth_t *self, const char *token, size_t len,
                           char id[ROUTER_TOKENS_ID_LEN + 1])
{
    router_token_scope_t scope;
    return gateway_auth_token_find(self, token, len, &scope, id) && scope == ROUTER_TOKEN_OPERATOR;
}

router_audit_feed_t *gateway_auth_audit(const gateway_auth_t *self)
{
    return self->opts.audit;
}

void gateway_auth_audit_req(const gateway_auth_t *self, const char *type,
                            const gateway_http_req_t *req, const char *why)
{
    if (!self->opts.audit)
        return;
    char client[GATEWAY_AUTH_CLIENT_MAX];
    gateway_auth_client(req->peer, client);
    router_audit_detail_t d;
    router_audit_detail_init(&d);
    router_audit_detail_str(&d, "client", client);
    router_audit_detail_strn(&d, "method", req->method.ptr, req->method.len);
    router_audit_detail_strn(&d, "path", req->path.ptr, req->path.ptr ? req->path.len : 0);
    if (why)
        router_audit_detail_str(&d, "reason", why);
    (void) router_audit_feed_push_from(self->opts.audit, type, client,
                                       router_audit_detail_end(&d));
}

/* gateway_auth_require and _require_node: node tokens pass when node_ok. */
static int s_require(const gateway_auth_t *self, const gateway_http_req_t *req,
                     gateway_http_res_t *res, bool node_ok, router_token_scope_t *scope)
{
    router_token_scope_t got = ROUTER_TOKEN_OPERATOR;
    if (scope)
        *scope = got;
    if (!self->opts.require_pairing) {
        if (gateway_auth_require_unpaired(self, req, res) != 0)
            return -1;
        gateway_http_res_authenticated(res); /* pairing off: what passes is in */
        return 0;
    }
    const char *t = NULL;
    size_t n = 0;
    char id[ROUTER_TOKENS_ID_LEN + 1];
    if (gateway_auth_bearer(req, res, self->opts.allow_query_token, &t, &n) &&
        gateway_auth_token_find(self, t, n, &got, id)) {
        if (got == ROUTER_TOKEN_OPERATOR || (node_ok && got == ROUTER_TOKEN_NODE)) {
            gateway_http_res_credential(res, id);
            if (scope)
                *scope = got;
            return 0;
        }
        gateway_auth_audit_req(self, "auth_failure", req, "token_scope");
        (void) gateway_http_respond_error(res, 403, "forbidden",
                                          "a node token opens /ws/nodes only");
        return -1;
    }
    gateway_auth_audit_req(self, "auth_failure", req, t ? "invalid_token" : "no_token");
    (void) gateway_http_res_header(res, "WWW-Authenticate", "Bearer");
    (void) gateway_http_respond_error(res, 401, "unauthorized",
                                      t ? "the bearer token is not valid"
                                        : "a bearer token is required (POST /pair)");
    return -1;
}

int gateway_auth_require(const gateway_auth_t *self, const gateway_http_req_t *req,
                         gateway_http_res_t *res)
{
    return s_require(self, req, res, false, NULL);
}

/* a[0..n) equals the C string b, ASCII case ignored. */
static bool s_ieq(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char) (x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char) (y + 32);
        if (x != y)
            return false;
    }
    return true;
}

/* The host the request names: the authority of an absolute-form target,
 * which wins over the Host field (RFC 9112 §3.2.2, WIRE §11.1), else Host.
 * Reading only the Host field let `GET http://rebound.example/admin/paircode`
 * with `Host: 127.0.0.1` through the DNS-rebinding check. False: none. */
static bool s_req_host(const gateway_http_req_t *req, proto_http_slice_t *host)
{
    if (!req->head || !req->head->host.ptr)
        return false;
    *host = req->head->host;
    return true;
}

bool gateway_auth_origin_ok(const gateway_http_req_t *req)
{
    proto_http_slice_t origin, host;
    if (!gateway_http_req_header(req, "Origin", &origin))
        return true;
    if (!s_req_host(req, &host) || host.len == 0 || host.len > 255)
        return false;
    char want[300];
    for (int https = 0; https < 2; https++) {
        int n = snprintf(want, sizeof want, "%s://%.*s", https ? "https" : "http", (int) host.len,
                         host.ptr);
        if (n > 0 && s_ieq(origin.ptr, origin.len, want))
            return true;
    }
    return false;
}

/* True when the request's Host is a name DNS answers for — a dotted name
 * that is not an IP literal — so that it may have been rebound to this
 * machine by whoever runs its DNS (DNS rebinding). An IP literal, a name
 * without a dot (localhost) and no Host at all cannot have been: a browser
 * sends the name of the page's own origin. */
static bool s_host_may_be_rebound(const gateway_http_req_t *req)
{
    proto_http_slice_t host;
    if (!s_req_host(req, &host) || host.len == 0)
        return false;
    if (host.len > 255 || host.ptr[0] == '[')
        return host.len > 255; /* [IPv6 literal]; an absurd Host is refused */
    char h[256];
    memcpy(h, host.ptr, host.len);
    h[host.len] = '\0';
    char *colon = strchr(h, ':');
    if (colon)
        *colon = '\0';
    struct in_addr a4;
    return strchr(h, '.') && inet_pton(AF_INET, h, &a4) != 1;
}

bool gateway_auth_browser_local(const gateway_http_req_t *req)
{
    proto_http_slice_t origin;
    if (!gateway_http_req_header(req, "Origin", &origin))
        return true;
    return gateway_auth_origin_ok(req) && !s_host_may_be_rebound(req);
}

int gateway_auth_require_loopback(const gateway_auth_t *self, const gateway_http_req_t *req,
                                  gateway_http_res_t *res)
{
    const char *why = !router_addr_is_loopback(req->peer) ? "admin routes answer loopback "
                                                             "clients only"
                      : s_host_may_be_rebound(req) ? "admin routes answer no DNS name in Host "
                                                     "(use localhost or an address)"
                      : !gateway_auth_origin_ok(req) ? "admin routes answer no other site"
                                                     : NULL;
    gateway_auth_audit_req(self, "admin", req, why ? "forbidden" : "allowed");
    if (!why) {
        gateway_http_res_authenticated(res);
        return 0;
    }
    (void) gateway_http_respond_error(res, 403, "forbidden", why);
    return -1;
}

int gateway_auth_require_unpaired(const gateway_auth_t *self, const gateway_http_req_t *req,
                                  gateway_http_res_t *res)
{
    if (self->opts.require_pairing)
        return 0;
    const char *why = s_host_may_be_rebound(req)
                          ? "with pairing off the gateway answers no DNS name in Host (use "
                            "localhost or an address, or turn gateway.require_pairing on)"
                      : !gateway_auth_origin_ok(req)
                          ? "with pairing off the gateway answers no other site"
                          : NULL;
    if (!why)
        return 0;
    gateway_auth_audit_req(self, "auth_failure", req, "unpaired_not_local");
    (void) gateway_http_respond_error(res, 403, "forbidden", why);
    return -1;
}

int gateway_auth_require_node(const gateway_auth_t *self, const gateway_http_req_t *req,
                              gateway_http_res_t *res, router_token_scope_t *scope)
{
    return s_require(self, req, res, true, scope);
}

void gateway_auth_token_new(char text[GATEWAY_AUTH_TOKEN_LEN + 1], uint8_t hash[32])
{
    uint8_t raw[32];
    randombytes_buf(raw, sizeof raw);
    memcpy(text, GATEWAY_AUTH_TOKEN_PREFIX, 5);
    sodium_bin2hex(text + 5, 65, raw, sizeof raw);
    sodium_memzero(raw, sizeof raw);
    crypto_hash_sha256(hash, (const unsigned char *) text, GATEWAY_AUTH_TOKEN_LEN);
}

bool gateway_auth_token_name_ok(const char *name, size_t len)
{
    if (!name || len == 0 || len > ROUTER_TOKENS_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char) name[i] < 0x20 || name[i] == 0x7f)
            return false;
    return proto_utf8_valid((const uint8_t *) name, len);
}

/* ---------------------------------------------------------------- pairing code */

void gateway_auth_code_mint(gateway_auth_t *self, char code[GATEWAY_AUTH_CODE_LEN + 1])
{
    sodium_memzero(self->held, sizeof self->held); /* replaced: a release brings nothing back */
    snprintf(self->code, sizeof self->code, "%06u", (unsigned) randombytes_uniform(1000000));
    memcpy(code, self->code, sizeof self->code);
}

bool gateway_auth_code_take(gateway_auth_t *self, const char *code, size_t len, uint64_t *hold)
{
    if (!self->code[0] || len != GATEWAY_AUTH_CODE_LEN)
        return false;
    if (sodium_memcmp(self->code, code, GATEWAY_AUTH_CODE_LEN) != 0)
        return false;
    memcpy(self->held, self->code, sizeof self->held);
    sodium_memzero(self->code, sizeof self->code);
    *hold = ++self->hold;
    return true;
}

void gateway_auth_code_spend(gateway_auth_t *self, uint64_t hold)
{
    if (hold == self->hold)
        sodium_memzero(self->held, sizeof self->held);
}

bool gateway_auth_code_release(gateway_auth_t *self, uint64_t hold)
{
    if (hold != self->hold || !self->held[0])
        return false; /* ended already, or another code was minted since: that one is in force */
    memcpy(self->code, self->held, sizeof self->code);
    sodium_memzero(self->held, sizeof self->held);
    return true;
}

/* ---------------------------------------------------------------- clients */

_Static_assert(GATEWAY_AUTH_CLIENT_MAX == ROUTER_ADDR_CLIENT_MAX, "one client text size");

void gateway_auth_client(const router_addr_t *peer, char out[GATEWAY_AUTH_CLIENT_MAX])
{
    router_addr_client(peer, out);
}

static void s_orphan_revoked(bool ok, void *ud)
{
    (void) ud;
    if (!ok)
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "a token nobody holds could not be revoked "
                   "durably: it is listed again after a restart until revoked");
}

void gateway_auth_orphan_revoke(router_tokens_t *tokens, const char *id, const char *what)
{
    if (router_tokens_revoke(tokens, id, s_orphan_revoked, NULL) == 0) {
        ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "%s: token %s was written after its client was "
                   "answered without it: nobody holds it; revoked", what, id);
        return;
    }
    ROUTER_LOG(ROUTER_LOG_WARN, "gateway", "%s: token %s was written after its client was "
               "answered without it: nobody holds it, but it cannot be revoked now (%s): revoke "
               "it (DELETE /api/tokens/%s)", what, id, strerror(errno), id);
}
