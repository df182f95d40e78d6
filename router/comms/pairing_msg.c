/* router/comms/pairing_msg.c — decoding Meerkat pairing lines (yajl tree,
 * bounded) and the password proof. */
#include "router/comms/pairing_msg.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <yajl/yajl_tree.h>

#include "proto/pubkey.h"

static int s_fail(char *why, size_t cap, const char *msg)
{
    snprintf(why, cap, "%s", msg);
    return -1;
}

/* True when the JSON text has a \u0000 escape. yajl's tree hands strings
 * back NUL-terminated without their length, so one would cut a field short
 * unseen (a name, an address the proof covers). A backslash appears in
 * JSON only inside a string, paired with what it escapes. */
static bool s_has_nul_escape(const char *s, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == '\\') {
            if (s[i + 1] == 'u' && n - i >= 6 && memcmp(s + i + 2, "0000", 4) == 0)
                return true;
            i++;
        }
    return false;
}

/* obj[path] as a string copied into out[cap]; -1 when absent, not a string,
 * too long or holding a NUL. */
static int s_copy(yajl_val obj, const char **path, char *out, size_t cap)
{
    yajl_val v = yajl_tree_get(obj, path, yajl_t_string);
    if (!v)
        return -1;
    const char *s = YAJL_GET_STRING(v);
    size_t n = strlen(s);
    if (n >= cap)
        return -1;
    memcpy(out, s, n + 1);
    return 0;
}

/* On -1, errno tells the caller whose fault it was: EINVAL the line's
 * (refused "malformed"), ENOMEM ours (the line may be fine: "internal"). */
int router_pairing_msg_parse(const char *line, size_t len, router_pairing_msg_t *out, char *why,
                             size_t whycap)
{
    memset(out, 0, sizeof *out);
    errno = EINVAL;
    if (len > ROUTER_PAIRING_LINE_MAX)
        return s_fail(why, whycap, "line longer than 16 KiB");
    if (len && line[len - 1] == '\n')
        len--;
    if (len && line[len - 1] == '\r')
        len--;
    if (memchr(line, '\0', len))
        return s_fail(why, whycap, "a NUL byte in the line");
    if (s_has_nul_escape(line, len))
        return s_fail(why, whycap, "a NUL character (\\u0000) in a string");
    char *text = malloc(len + 1);
    if (!text) {
        errno = ENOMEM;
        return s_fail(why, whycap, "out of memory");
    }
    memcpy(text, line, len);
    text[len] = '\0';
    char err[128] = "";
    yajl_val doc = yajl_tree_parse(text, err, sizeof err);
    free(text);
    if (!doc) {
        errno = EINVAL; /* yajl's number reading may have changed it */
        return s_fail(why, whycap, "not JSON");
    }
    int rc = -1;
    const char *p_kind[] = {"kind", NULL};
    char kind[40];
    if (!YAJL_IS_OBJECT(doc) || s_copy(doc, p_kind, kind, sizeof kind) != 0) {
        s_fail(why, whycap, "expected an object with a string \"kind\"");
        goto done;
    }
    if (strcmp(kind, "meerkat_pairing_hello") == 0) {
        const char *p_version[] = {"version", NULL};
        yajl_val v = yajl_tree_get(doc, p_version, yajl_t_number);
        if (!v || !YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 0 ||
            YAJL_GET_INTEGER(v) > UINT32_MAX) {
            s_fail(why, whycap, "hello: \"version\" must be an unsigned integer");
            goto done;
        }
        out->kind = ROUTER_PAIRING_HELLO;
        out->version = (uint32_t) YAJL_GET_INTEGER(v);
        rc = 0;
    } else if (strcmp(kind, "meerkat_pairing_proof") == 0) {
        const char *p_name[] = {"caller", "name", NULL};
        const char *p_addr[] = {"caller", "address", NULL};
        const char *p_ikind[] = {"caller", "identity", "kind", NULL};
        const char *p_key[] = {"caller", "identity", "public_key", NULL};
        const char *p_proof[] = {"password_proof", NULL};
        char ikind[32];
        if (s_copy(doc, p_name, out->name, sizeof out->name) != 0 ||
            s_copy(doc, p_addr, out->address, sizeof out->address) != 0) {
            s_fail(why, whycap, "proof: caller.name and caller.address must be strings");
            goto done;
        }
        if (s_copy(doc, p_ikind, ikind, sizeof ikind) != 0 ||
            strcmp(ikind, "ed25519_public_key") != 0) {
            s_fail(why, whycap, "proof: caller.identity.kind must be \"ed25519_public_key\"");
            goto done;
        }
        if (s_copy(doc, p_key, out->public_key, sizeof out->public_key) != 0 ||
            proto_pubkey_parse(out->public_key, strlen(out->public_key), out->pk) != 0) {
            s_fail(why, whycap, "proof: caller.identity.public_key is not a full-order "
                                "\"ed25519:<base64>\" key");
            goto done;
        }
        if (s_copy(doc, p_proof, out->proof, sizeof out->proof) != 0) {
            s_fail(why, whycap, "proof: \"password_proof\" must be a string");
            goto done;
        }
        out->kind = ROUTER_PAIRING_PROOF;
        rc = 0;
    } else {
        s_fail(why, whycap, "unknown \"kind\" (expected meerkat_pairing_hello or "
                            "meerkat_pairing_proof)");
    }
done:
    yajl_tree_free(doc);
    if (rc != 0) {
        memset(out, 0, sizeof *out);
        errno = EINVAL;
    }
    return rc;
}

void router_pairing_proof(const char *password, const char *challenge, const char *public_key,
                          const char *address, char out[ROUTER_PAIRING_PROOF_CAP])
{
    static const char domain[] = "meerkat-comms-pairing-v1";
    const char *parts[] = {password, challenge, public_key, address};
    crypto_hash_sha256_state st;
    uint8_t digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *) domain, sizeof domain - 1);
    for (size_t i = 0; i < 4; i++) {
        static const uint8_t zero = 0;
        crypto_hash_sha256_update(&st, &zero, 1);
        crypto_hash_sha256_update(&st, (const uint8_t *) parts[i], strlen(parts[i]));
    }
    crypto_hash_sha256_final(&st, digest);
    sodium_bin2base64(out, ROUTER_PAIRING_PROOF_CAP, digest, sizeof digest,
                      sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(&st, sizeof st);
}
