/* gateway/auth.h — who may use the gateway (DESIGN §5, WIRE §17): bearer
 * tokens taken from a request in one place, the one-time pairing code, and
 * the client address pairing lockouts are kept by.
 *
 * A route that needs a token calls gateway_auth_require() first (HTTP
 * routes and WebSocket upgrade handlers alike: an upgrade is refused 401
 * before the 101). Everything runs on the loop thread. */
#ifndef KITH_GATEWAY_AUTH_H
#define KITH_GATEWAY_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/http_server.h"
#include "router/state/tokens.h"
#include "router/workers/audit_feed.h"

#define GATEWAY_AUTH_TOKEN_PREFIX "kith_"
#define GATEWAY_AUTH_TOKEN_LEN (5u + 64u)          /* "kith_" + 64 lowercase hex */
#define GATEWAY_AUTH_CODE_LEN 6u                   /* digits of a pairing code */
#define GATEWAY_AUTH_CLIENT_MAX ROUTER_TOKENS_CLIENT_MAX /* a client key, NUL included */

typedef struct gateway_auth gateway_auth_t;

/* Options, usually from gateway.require_pairing / allow_query_token. */
typedef struct {
    bool require_pairing;   /* false: every request passes */
    bool allow_query_token; /* accept ?token= */
    router_audit_feed_t *audit; /* pairing, auth failures, admin calls go here; NULL: none */
} gateway_auth_opts_t;

/* An auth over `tokens` (borrowed; must outlive it). NULL on ENOMEM.
 * Caller owns the result. */
gateway_auth_t *gateway_auth_new(router_tokens_t *tokens, const gateway_auth_opts_t *opts);
void gateway_auth_destroy(gateway_auth_t **self_p);

router_tokens_t *gateway_auth_tokens(gateway_auth_t *self);
/* The audit feed (may be NULL: the feed's functions then do nothing). */
router_audit_feed_t *gateway_auth_audit(const gateway_auth_t *self);

/* Audits one gateway event `type` ("pair", "auth_failure", "admin", …) from
 * the request's client, with its method and path and an optional `why`. */
void gateway_auth_audit_req(const gateway_auth_t *self, const char *type,
                            const gateway_http_req_t *req, const char *why);
bool gateway_auth_pairing_required(const gateway_auth_t *self);

/* The bearer token of a request, in DESIGN §5's order: `Authorization:
 * Bearer <t>`, then a `bearer.<t>` Sec-WebSocket-Protocol entry (res of an
 * upgrade handler; may be NULL), then `?token=<t>` when allow_query. Points
 * into the request (valid during the handler). Returns true when one was
 * given (whatever it is worth). */
bool gateway_auth_bearer(const gateway_http_req_t *req, const gateway_http_res_t *res,
                         bool allow_query, const char **token, size_t *len)
    __attribute__((warn_unused_result));

/* True when `token` is a bearer token kith gave and has not revoked (its
 * SHA-256 is stored); *scope gets what it opens and id (may be NULL) its
 * public id. */
bool gateway_auth_token_find(const gateway_auth_t *self, const char *token, size_t len,
                             router_token_scope_t *scope, char id[ROUTER_TOKENS_ID_LEN + 1])
    __attribute__((warn_unused_result));

/* True when `token` is an operator's token (paired, or minted with that
 * scope) not revoked; id (may be NULL) gets its public id. */
bool gateway_auth_token_ok(const gateway_auth_t *self, const char *token, size_t len,
                           char id[ROUTER_TOKENS_ID_LEN + 1]) __attribute__((warn_unused_result));

/* Lets an operator's request through (0), naming its token on res
 * (gateway_http_res_credential) so a revocation ends what it opens; or
 * answers 401 {"code":"unauthorized"} with `WWW-Authenticate: Bearer`, or
 * 403 {"code":"forbidden"} for a node token, and returns -1. When pairing
 * is not required, it is gateway_auth_require_unpaired. */
int gateway_auth_require(const gateway_auth_t *self, const gateway_http_req_t *req,
                         gateway_http_res_t *res) __attribute__((warn_unused_result));

/* With pairing off nothing proves who a client is, so a request that a web
 * page could have made is refused: a Host that is a DNS name (the page's
 * own name, rebound to this gateway's address) or another site's Origin
 * gets 403 {"code":"forbidden"}, an audit record, and -1. Everything else,
 * and everything when pairing is on, gets 0 (WIRE §17.1). */
int gateway_auth_require_unpaired(const gateway_auth_t *self, const gateway_http_req_t *req,
                                  gateway_http_res_t *res) __attribute__((warn_unused_result));

/* A browser's Origin must be this gateway itself (scheme http or https,
 * the same host and port as Host), so a page elsewhere cannot drive a
 * request with what the browser holds (CVE-2026-25253). No Origin: not a
 * browser, nothing to check. */
bool gateway_auth_origin_ok(const gateway_http_req_t *req) __attribute__((warn_unused_result));

/* True unless a browser sent the request (it carries Origin) from anywhere
 * but this gateway's own page: Origin is http(s):// + Host, and Host is not
 * a DNS name (a dotted name that is not an IP literal), which a page's DNS
 * could have pointed here (DNS rebinding). For routes that nothing else
 * guards. */
bool gateway_auth_browser_local(const gateway_http_req_t *req) __attribute__((warn_unused_result));

/* Admin routes answer loopback peers only, asked by no DNS name in Host
 * (localhost, an IP literal, any port, or no Host: a dotted name may have
 * been pointed here by DNS rebinding) from no other site (Origin, above):
 * 0 when req may go on, else answered 403 {"code":"forbidden"} and -1.
 * Either way the call is an audit record (WIRE §21). */
int gateway_auth_require_loopback(const gateway_auth_t *self, const gateway_http_req_t *req,
                                  gateway_http_res_t *res) __attribute__((warn_unused_result));

/* gateway_auth_require for /ws/nodes: a node token passes too; *scope
 * (may be NULL) gets the token's (ROUTER_TOKEN_OPERATOR when pairing is
 * not required). */
int gateway_auth_require_node(const gateway_auth_t *self, const gateway_http_req_t *req,
                              gateway_http_res_t *res, router_token_scope_t *scope)
    __attribute__((warn_unused_result));

/* A new token: text `kith_<64 hex>` (NUL-terminated) and its SHA-256. */
void gateway_auth_token_new(char text[GATEWAY_AUTH_TOKEN_LEN + 1], uint8_t hash[32]);

/* True when name (len octets) may name a token: 1..ROUTER_TOKENS_NAME_MAX
 * octets of UTF-8, no control characters. */
bool gateway_auth_token_name_ok(const char *name, size_t len) __attribute__((warn_unused_result));

/* Mints a new one-time pairing code (replacing any unspent one) into
 * code[GATEWAY_AUTH_CODE_LEN + 1]. */
void gateway_auth_code_mint(gateway_auth_t *self, char code[GATEWAY_AUTH_CODE_LEN + 1]);

/* True when `code` is the unspent code (compared in constant time): it is
 * then held for the caller, which looks spent to every other request
 * (one code, one token), until the caller ends the hold *hold names with
 * gateway_auth_code_spend (a token was issued) or _release (none was: the
 * code may be used again, WIRE §17.2). */
bool gateway_auth_code_take(gateway_auth_t *self, const char *code, size_t len, uint64_t *hold)
    __attribute__((warn_unused_result));

/* A token was issued for the held code: it is gone for good. */
void gateway_auth_code_spend(gateway_auth_t *self, uint64_t hold);

/* No token was issued for the held code (its row could not be written, or
 * was not durable in time and will be revoked, or its answer could not be
 * made): the code is unspent again, unless another code was minted since
 * (that one is in force; at most one code is valid at a time). True when
 * the held code is usable again. */
bool gateway_auth_code_release(gateway_auth_t *self, uint64_t hold);

/* A peer as the audit log names it: its IP address without the port
 * (router_addr_client; "unix" for a Unix socket). */
void gateway_auth_client(const router_addr_t *peer, char out[GATEWAY_AUTH_CLIENT_MAX]);

/* A token row that became durable after its client was told no token was
 * issued (or left): nobody holds its secret, so it is revoked rather than
 * left to take one of ROUTER_TOKENS_MAX slots and a line of GET
 * /api/tokens; when the store cannot take that now, the log names the id
 * to revoke. `what` says how it was made ("pairing", "mint"). */
void gateway_auth_orphan_revoke(router_tokens_t *tokens, const char *id, const char *what);

#endif
