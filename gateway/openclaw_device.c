/* gateway/openclaw_device.c — checking an OpenClaw device proof
 * (gateway/openclaw_device.h): key decoding, the device id, the v3/v2
 * signed string and the Ed25519 verification (libsodium). */
#include "gateway/openclaw_device.h"

#include <stdio.h>
#include <string.h>

#include <sodium.h>

void gateway_openclaw_device_id(const uint8_t pk[32], char hex[GATEWAY_OPENCLAW_DEVICE_ID_LEN + 1])
{
    uint8_t h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, pk, 32);
    sodium_bin2hex(hex, GATEWAY_OPENCLAW_DEVICE_ID_LEN + 1, h, sizeof h);
}

int gateway_openclaw_b64_decode(const char *text, uint8_t *out, size_t want)
{
    static const int variants[] = {
        sodium_base64_VARIANT_URLSAFE_NO_PADDING, sodium_base64_VARIANT_URLSAFE,
        sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING};
    size_t n = strlen(text);
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        size_t got = 0;
        const char *end = NULL;
        if (sodium_base642bin(out, want, text, n, NULL, &got, &end, variants[i]) == 0 &&
            end == text + n && got == want)
            return 0;
    }
    return -1;
}

/* Appends s to out[cap] at *at; false when it does not fit. */
static bool s_put(char *out, size_t cap, size_t *at, const char *s, size_t n)
{
    if (*at + n + 1 > cap)
        return false;
    memcpy(out + *at, s, n);
    *at += n;
    out[*at] = '\0';
    return true;
}

/* The reference client's metadata normalisation: trimmed of blanks, A-Z
 * lowered (nothing else is touched). */
static bool s_put_norm(char *out, size_t cap, size_t *at, const char *s)
{
    const char *b = s ? s : "";
    const char *e = b + strlen(b);
    while (b < e && (*b == ' ' || *b == '\t' || *b == '\n' || *b == '\r' || *b == '\f' ||
                     *b == '\v'))
        b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r' ||
                     e[-1] == '\f' || e[-1] == '\v'))
        e--;
    size_t n = (size_t) (e - b);
    if (*at + n + 1 > cap)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = b[i];
        out[*at + i] = c >= 'A' && c <= 'Z' ? (char) (c + 32) : c;
    }
    *at += n;
    out[*at] = '\0';
    return true;
}

int gateway_openclaw_device_payload(const gateway_openclaw_device_fields_t *f, int version,
                                    char *out, size_t cap)
{
    if ((version != 2 && version != 3) || cap == 0)
        return -1;
    size_t at = 0;
    char ts[24];
    snprintf(ts, sizeof ts, "%lld", (long long) f->signed_at_ms);
    const char *parts[] = {version == 3 ? "v3" : "v2", f->device_id, f->client_id,
                           f->client_mode, f->role};
    bool ok = true;
    for (size_t i = 0; ok && i < sizeof parts / sizeof parts[0]; i++)
        ok = (i == 0 || s_put(out, cap, &at, "|", 1)) &&
             s_put(out, cap, &at, parts[i], strlen(parts[i]));
    ok = ok && s_put(out, cap, &at, "|", 1);
    for (unsigned i = 0; ok && i < f->nscopes; i++)
        ok = (i == 0 || s_put(out, cap, &at, ",", 1)) &&
             s_put(out, cap, &at, f->scopes[i], strlen(f->scopes[i]));
    const char *tail[] = {ts, f->token ? f->token : "", f->nonce};
    for (size_t i = 0; ok && i < sizeof tail / sizeof tail[0]; i++)
        ok = s_put(out, cap, &at, "|", 1) && s_put(out, cap, &at, tail[i], strlen(tail[i]));
    if (ok && version == 3)
        ok = s_put(out, cap, &at, "|", 1) && s_put_norm(out, cap, &at, f->platform) &&
             s_put(out, cap, &at, "|", 1) && s_put_norm(out, cap, &at, f->device_family);
    return ok ? (int) at : -1;
}

/* The nonce without surrounding blanks, as the reference server compares it. */
static void s_trim(const char *s, char *out, size_t cap)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

gateway_openclaw_device_reason_t
gateway_openclaw_device_verify(const gateway_openclaw_connect_t *c, const char *token,
                               const char *nonce, uint64_t now_ms, int *version)
{
    uint8_t pk[crypto_sign_PUBLICKEYBYTES], sig[crypto_sign_BYTES];
    if (gateway_openclaw_b64_decode(c->device_public_key, pk, sizeof pk) != 0)
        return GATEWAY_OPENCLAW_DEVICE_PUBLIC_KEY_INVALID;
    char id[GATEWAY_OPENCLAW_DEVICE_ID_LEN + 1];
    gateway_openclaw_device_id(pk, id);
    if (strcmp(id, c->device_id) != 0)
        return GATEWAY_OPENCLAW_DEVICE_ID_MISMATCH;
    int64_t skew = (int64_t) now_ms - c->device_signed_at;
    if (skew > (int64_t) GATEWAY_OPENCLAW_DEVICE_SKEW_MS ||
        skew < -(int64_t) GATEWAY_OPENCLAW_DEVICE_SKEW_MS)
        return GATEWAY_OPENCLAW_DEVICE_SIGNATURE_EXPIRED;
    char given[GATEWAY_OPENCLAW_STR_MAX + 1];
    s_trim(c->device_nonce, given, sizeof given);
    if (!given[0])
        return GATEWAY_OPENCLAW_DEVICE_NONCE_REQUIRED;
    if (strlen(given) != strlen(nonce) || sodium_memcmp(given, nonce, strlen(nonce)) != 0)
        return GATEWAY_OPENCLAW_DEVICE_NONCE_MISMATCH;
    if (gateway_openclaw_b64_decode(c->device_signature, sig, sizeof sig) != 0)
        return GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID;
    const char *scopes[GATEWAY_OPENCLAW_SCOPES_MAX];
    for (unsigned i = 0; i < c->nscopes; i++)
        scopes[i] = c->scopes[i];
    gateway_openclaw_device_fields_t f = {
        .device_id = c->device_id, .client_id = c->client_id, .client_mode = c->client_mode,
        .role = c->role, .scopes = scopes, .nscopes = c->nscopes,
        .signed_at_ms = c->device_signed_at, .token = token, .nonce = given,
        .platform = c->client_platform, .device_family = c->client_device_family};
    char payload[GATEWAY_OPENCLAW_PAYLOAD_MAX];
    for (int v = 3; v >= 2; v--) {
        int n = gateway_openclaw_device_payload(&f, v, payload, sizeof payload);
        if (n >= 0 && crypto_sign_verify_detached(sig, (const unsigned char *) payload,
                                                  (unsigned long long) n, pk) == 0) {
            *version = v;
            return GATEWAY_OPENCLAW_DEVICE_OK;
        }
    }
    return GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID;
}

const char *gateway_openclaw_device_code(gateway_openclaw_device_reason_t r)
{
    switch (r) {
    case GATEWAY_OPENCLAW_DEVICE_OK: return "OK";
    case GATEWAY_OPENCLAW_DEVICE_PUBLIC_KEY_INVALID: return "DEVICE_AUTH_PUBLIC_KEY_INVALID";
    case GATEWAY_OPENCLAW_DEVICE_ID_MISMATCH: return "DEVICE_AUTH_DEVICE_ID_MISMATCH";
    case GATEWAY_OPENCLAW_DEVICE_SIGNATURE_EXPIRED: return "DEVICE_AUTH_SIGNATURE_EXPIRED";
    case GATEWAY_OPENCLAW_DEVICE_NONCE_REQUIRED: return "DEVICE_AUTH_NONCE_REQUIRED";
    case GATEWAY_OPENCLAW_DEVICE_NONCE_MISMATCH: return "DEVICE_AUTH_NONCE_MISMATCH";
    case GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID: return "DEVICE_AUTH_SIGNATURE_INVALID";
    }
    return "DEVICE_AUTH_INVALID";
}

const char *gateway_openclaw_device_reason(gateway_openclaw_device_reason_t r)
{
    switch (r) {
    case GATEWAY_OPENCLAW_DEVICE_OK: return "ok";
    case GATEWAY_OPENCLAW_DEVICE_PUBLIC_KEY_INVALID: return "device-public-key";
    case GATEWAY_OPENCLAW_DEVICE_ID_MISMATCH: return "device-id-mismatch";
    case GATEWAY_OPENCLAW_DEVICE_SIGNATURE_EXPIRED: return "device-signature-stale";
    case GATEWAY_OPENCLAW_DEVICE_NONCE_REQUIRED: return "device-nonce-missing";
    case GATEWAY_OPENCLAW_DEVICE_NONCE_MISMATCH: return "device-nonce-mismatch";
    case GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID: return "device-signature";
    }
    return "device-invalid";
}

const char *gateway_openclaw_device_message(gateway_openclaw_device_reason_t r)
{
    switch (r) {
    case GATEWAY_OPENCLAW_DEVICE_OK: return "ok";
    case GATEWAY_OPENCLAW_DEVICE_PUBLIC_KEY_INVALID: return "device public key invalid";
    case GATEWAY_OPENCLAW_DEVICE_ID_MISMATCH: return "device identity mismatch";
    case GATEWAY_OPENCLAW_DEVICE_SIGNATURE_EXPIRED: return "device signature expired";
    case GATEWAY_OPENCLAW_DEVICE_NONCE_REQUIRED: return "device nonce required";
    case GATEWAY_OPENCLAW_DEVICE_NONCE_MISMATCH: return "device nonce mismatch";
    case GATEWAY_OPENCLAW_DEVICE_SIGNATURE_INVALID: return "device signature invalid";
    }
    return "device auth invalid";
}
