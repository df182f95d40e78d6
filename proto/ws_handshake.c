/* proto/ws_handshake.c — the server side of the opening handshake; see
 * ws_handshake.h. Header values are lists in the sense of RFC 9110 §5.6.1:
 * comma-separated elements with optional whitespace, empty ones ignored. */
#include "proto/ws_handshake.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "proto/sha1.h"

/* RFC 6455 §1.3: appended to the key before hashing. */
static const char s_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* Decoded size of a Sec-WebSocket-Key. */
#define WS_KEY_BYTES 16

/* ------------------------------------------------------------------ reasons */

const char *proto_ws_handshake_reason_str(proto_ws_handshake_reason_t r)
{
    switch (r) {
    case PROTO_WS_HS_OK: return "ok";
    case PROTO_WS_HS_ERR_UPGRADE: return "Upgrade header does not list websocket";
    case PROTO_WS_HS_ERR_CONNECTION: return "Connection header does not list upgrade";
    case PROTO_WS_HS_ERR_VERSION_MISSING: return "Sec-WebSocket-Version missing";
    case PROTO_WS_HS_ERR_VERSION_REPEATED: return "Sec-WebSocket-Version given more than once";
    case PROTO_WS_HS_ERR_VERSION: return "Sec-WebSocket-Version not supported (13 is)";
    case PROTO_WS_HS_ERR_KEY_MISSING: return "Sec-WebSocket-Key missing";
    case PROTO_WS_HS_ERR_KEY_REPEATED: return "Sec-WebSocket-Key given more than once";
    case PROTO_WS_HS_ERR_KEY: return "Sec-WebSocket-Key is not base64 of 16 bytes";
    case PROTO_WS_HS_ERR_PROTOCOL: return "Sec-WebSocket-Protocol entry is not a token";
    case PROTO_WS_HS_ERR_BEARER: return "Sec-WebSocket-Protocol bearer entry empty or repeated";
    }
    return "unknown reason";
}

int proto_ws_handshake_reason_status(proto_ws_handshake_reason_t r)
{
    switch (r) {
    case PROTO_WS_HS_OK: return 101;
    case PROTO_WS_HS_ERR_VERSION: return 426;
    default: return 400;
    }
}

/* ------------------------------------------------------------------ lists */

static bool s_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 §5.6.2 tchar. */
static bool s_is_tchar(char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool s_is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!s_is_tchar(s[i]))
            return false;
    return true;
}

/* Strips optional whitespace from both ends of s[0..*len). */
static const char *s_trim(const char *s, size_t *len)
{
    while (*len > 0 && s_is_ows(s[0])) {
        s++;
        (*len)--;
    }
    while (*len > 0 && s_is_ows(s[*len - 1]))
        (*len)--;
    return s;
}

/* Steps through a comma-separated list: sets the next non-empty element,
 * trimmed, and advances *cur. Returns false when none is left. */
static bool s_list_next(const char **cur, const char *end, const char **elem, size_t *elem_len)
{
    while (*cur < end) {
        const char *start = *cur;
        const char *comma = memchr(start, ',', (size_t) (end - start));
        const char *stop = comma ? comma : end;
        *cur = comma ? comma + 1 : end;
        size_t len = (size_t) (stop - start);
        const char *e = s_trim(start, &len);
        if (len > 0) {
            *elem = e;
            *elem_len = len;
            return true;
        }
    }
    return false;
}

static bool s_equals_nocase(const char *s, size_t len, const char *lit)
{
    return len == strlen(lit) && strncasecmp(s, lit, len) == 0;
}

/* True when the list in value[0..len) has an element equal to `lit`,
 * ignoring case. */
static bool s_list_has(const char *value, size_t len, const char *lit)
{
    const char *cur = value, *elem;
    size_t elem_len;
    while (s_list_next(&cur, value + len, &elem, &elem_len))
        if (s_equals_nocase(elem, elem_len, lit))
            return true;
    return false;
}

/* ------------------------------------------------------------------ upgrade */

void proto_ws_upgrade_init(proto_ws_upgrade_t *up, const char *const *supported, size_t n_supported)
{
    memset(up, 0, sizeof *up);
    up->supported = supported;
    up->n_supported = n_supported;
    up->protocol_rank = n_supported;
}

/* Sec-WebSocket-Protocol: records the bearer entry and ranks the offered
 * subprotocols by the server's preference. Subprotocol names match
 * case-sensitively (RFC 6455 §4.1, RFC 7936). */
static void s_protocols(proto_ws_upgrade_t *up, const char *value, size_t len)
{
    static const size_t prefix_len = sizeof PROTO_WS_BEARER_PREFIX - 1;
    const char *cur = value, *elem;
    size_t elem_len;
    while (s_list_next(&cur, value + len, &elem, &elem_len)) {
        if (!s_is_token(elem, elem_len)) {
            up->protocol_malformed = true;
            continue;
        }
        if (elem_len >= prefix_len && memcmp(elem, PROTO_WS_BEARER_PREFIX, prefix_len) == 0) {
            if (up->bearer || elem_len == prefix_len) {
                up->bearer_malformed = true;
            } else {
                up->bearer = elem + prefix_len;
                up->bearer_len = elem_len - prefix_len;
            }
            continue;
        }
        for (size_t i = 0; i < up->protocol_rank; i++) {
            const char *s = up->supported[i];
            if (strlen(s) == elem_len && memcmp(s, elem, elem_len) == 0) {
                up->protocol_rank = i;
                break;
            }
        }
    }
}

void proto_ws_upgrade_feed(proto_ws_upgrade_t *up, const char *name, size_t name_len,
                           const char *value, size_t value_len)
{
    if (s_equals_nocase(name, name_len, "Upgrade")) {
        up->upgrade |= s_list_has(value, value_len, "websocket");
    } else if (s_equals_nocase(name, name_len, "Connection")) {
        up->connection |= s_list_has(value, value_len, "upgrade");
    } else if (s_equals_nocase(name, name_len, "Sec-WebSocket-Version")) {
        up->versions++;
        up->version_len = value_len;
        up->version = s_trim(value, &up->version_len);
    } else if (s_equals_nocase(name, name_len, "Sec-WebSocket-Key")) {
        up->keys++;
        up->key_len = value_len;
        up->key = s_trim(value, &up->key_len);
    } else if (s_equals_nocase(name, name_len, "Sec-WebSocket-Protocol")) {
        s_protocols(up, value, value_len);
    }
}

/* The first rule the request breaks, in the order a reader would check. */
static proto_ws_handshake_reason_t s_verdict(const proto_ws_upgrade_t *up)
{
    if (!up->upgrade)
        return PROTO_WS_HS_ERR_UPGRADE;
    if (!up->connection)
        return PROTO_WS_HS_ERR_CONNECTION;
    if (up->versions == 0)
        return PROTO_WS_HS_ERR_VERSION_MISSING;
    if (up->versions > 1)
        return PROTO_WS_HS_ERR_VERSION_REPEATED;
    if (up->version_len != strlen(PROTO_WS_VERSION) ||
        memcmp(up->version, PROTO_WS_VERSION, up->version_len) != 0)
        return PROTO_WS_HS_ERR_VERSION;
    if (up->keys == 0)
        return PROTO_WS_HS_ERR_KEY_MISSING;
    if (up->keys > 1)
        return PROTO_WS_HS_ERR_KEY_REPEATED;
    if (up->protocol_malformed)
        return PROTO_WS_HS_ERR_PROTOCOL;
    if (up->bearer_malformed)
        return PROTO_WS_HS_ERR_BEARER;
    return PROTO_WS_HS_OK;
}

int proto_ws_upgrade_check(proto_ws_upgrade_t *up)
{
    up->protocol = NULL;
    up->accept[0] = '\0';
    up->reason = s_verdict(up);
    if (up->reason == PROTO_WS_HS_OK &&
        proto_ws_accept_compute(up->key, up->key_len, up->accept) != 0)
        up->reason = PROTO_WS_HS_ERR_KEY;
    if (up->reason != PROTO_WS_HS_OK)
        return -1;
    if (up->protocol_rank < up->n_supported)
        up->protocol = up->supported[up->protocol_rank];
    return 0;
}

int proto_ws_upgrade_response(const proto_ws_upgrade_t *up, char *out, size_t cap)
{
    int n;
    if (up->protocol)
        n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "Sec-WebSocket-Protocol: %s\r\n"
                     "\r\n",
                     up->accept, up->protocol);
    else
        n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "\r\n",
                     up->accept);
    if (n < 0 || (size_t) n >= cap)
        return -1;
    return n;
}

/* ------------------------------------------------------------------ accept */

int proto_ws_accept_compute(const char *key, size_t key_len, char out[PROTO_WS_ACCEPT_LEN + 1])
{
    /* The key must be canonical, padded base64 of exactly 16 bytes; libsodium
     * refuses non-zero trailing bits and wrong padding. */
    unsigned char raw[WS_KEY_BYTES];
    size_t raw_len = 0;
    const char *end = NULL;
    if (key_len != PROTO_WS_KEY_LEN ||
        sodium_base642bin(raw, sizeof raw, key, key_len, NULL, &raw_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        raw_len != WS_KEY_BYTES || end != key + key_len)
        return -1;

    uint8_t digest[PROTO_SHA1_LEN];
    proto_sha1_t ctx;
    proto_sha1_init(&ctx);
    proto_sha1_update(&ctx, key, key_len);
    proto_sha1_update(&ctx, s_guid, sizeof s_guid - 1);
    proto_sha1_final(&ctx, digest);
    sodium_bin2base64(out, PROTO_WS_ACCEPT_LEN + 1, digest, sizeof digest,
                      sodium_base64_VARIANT_ORIGINAL);
    return 0;
}
