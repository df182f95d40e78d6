/* audit/head.c — the two-slot head file beside audit.log (WIRE §21.3). A
 * slot is one line of text padded to AUDIT_HEAD_SLOT bytes:
 *
 *   kith-audit-head 1 seq=<20 digits> hash=<64 hex> sha256=<64 hex>   …\n
 *   kith-audit-head 1 seq=<20 digits> hash=<64 hex> hmac=<64 hex>     …\n
 *
 * where the last field checks the text before its space: SHA-256, or
 * HMAC-SHA256 with the chain's key when one is in force. */
#include "audit/head.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define S_MAGIC "kith-audit-head 1 seq="
/* "kith-audit-head 1 seq=" 20 " hash=" 64 */
#define S_BODY_LEN (sizeof S_MAGIC - 1 + 20 + 6 + AUDIT_HEX_LEN)

static void s_check(const char *body, const audit_key_t *key, uint8_t out[AUDIT_HASH_LEN])
{
    if (key && key->len) {
        crypto_auth_hmacsha256_state a;
        crypto_auth_hmacsha256_init(&a, key->bytes, key->len);
        crypto_auth_hmacsha256_update(&a, (const unsigned char *) body, S_BODY_LEN);
        crypto_auth_hmacsha256_final(&a, out);
        sodium_memzero(&a, sizeof a);
    } else {
        crypto_hash_sha256(out, (const unsigned char *) body, S_BODY_LEN);
    }
}

void audit_head_format(const audit_head_t *h, const audit_key_t *key, char out[AUDIT_HEAD_SLOT])
{
    char hex[AUDIT_HEX_LEN + 1], check_hex[AUDIT_HEX_LEN + 1];
    uint8_t check[AUDIT_HASH_LEN];
    memset(out, ' ', AUDIT_HEAD_SLOT);
    audit_hex(h->hash, AUDIT_HASH_LEN, hex);
    char body[S_BODY_LEN + 1];
    snprintf(body, sizeof body, S_MAGIC "%020llu hash=%s", (unsigned long long) h->seq, hex);
    s_check(body, key, check);
    audit_hex(check, AUDIT_HASH_LEN, check_hex);
    int n = snprintf(out, AUDIT_HEAD_SLOT, "%s %s=%s", body, key && key->len ? "hmac" : "sha256",
                     check_hex);
    out[n] = ' '; /* snprintf's NUL becomes padding */
    out[AUDIT_HEAD_SLOT - 1] = '\n';
}

/* One slot: 0 when valid (keyed or not, as *h says), -1 otherwise. */
static int s_slot_parse(const char *s, const audit_key_t *key, audit_head_t *h)
{
    memset(h, 0, sizeof *h);
    if (memcmp(s, S_MAGIC, sizeof S_MAGIC - 1) != 0 || s[AUDIT_HEAD_SLOT - 1] != '\n')
        return -1;
    const char *p = s + sizeof S_MAGIC - 1;
    uint64_t seq = 0;
    for (int i = 0; i < 20; i++, p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (seq > (UINT64_MAX - 9) / 10)
            return -1;
        seq = seq * 10 + (uint64_t) (*p - '0');
    }
    if (memcmp(p, " hash=", 6) != 0)
        return -1;
    p += 6;
    char hex[AUDIT_HEX_LEN + 1];
    for (size_t i = 0; i < AUDIT_HASH_LEN; i++) {
        unsigned v;
        if (sscanf(p + 2 * i, "%2x", &v) != 1)
            return -1;
        h->hash[i] = (uint8_t) v;
    }
    audit_hex(h->hash, AUDIT_HASH_LEN, hex);
    if (memcmp(hex, p, AUDIT_HEX_LEN) != 0) /* lowercase, exactly */
        return -1;
    p += AUDIT_HEX_LEN;
    const char *check_at;
    if (memcmp(p, " hmac=", 6) == 0) {
        h->keyed = true;
        check_at = p + 6;
    } else if (memcmp(p, " sha256=", 8) == 0) {
        check_at = p + 8;
    } else {
        return -1;
    }
    for (const char *q = check_at + AUDIT_HEX_LEN; q < s + AUDIT_HEAD_SLOT - 1; q++)
        if (*q != ' ')
            return -1;
    h->seq = seq;
    if (h->keyed && !(key && key->len))
        return 0; /* cannot be checked here; the caller knows (authenticated false) */
    if (!h->keyed && key && key->len)
        return -1; /* with a key in force, an unkeyed head could be anybody's */
    uint8_t check[AUDIT_HASH_LEN];
    char check_hex[AUDIT_HEX_LEN + 1];
    s_check(s, key, check);
    audit_hex(check, AUDIT_HASH_LEN, check_hex);
    if (sodium_memcmp(check_hex, check_at, AUDIT_HEX_LEN) != 0)
        return -1;
    h->authenticated = h->keyed;
    return 0;
}

int audit_head_read(const char *path, const audit_key_t *key, audit_head_t *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -2;
    char buf[2 * AUDIT_HEAD_SLOT];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -2;
        }
        if (n == 0)
            break;
        got += (size_t) n;
    }
    close(fd);
    int found = 0;
    for (size_t i = 0; i + AUDIT_HEAD_SLOT <= got; i += AUDIT_HEAD_SLOT) {
        audit_head_t h;
        if (s_slot_parse(buf + i, key, &h) == 0 && (!found || h.seq > out->seq)) {
            *out = h;
            found = 1;
        }
    }
    return found ? 1 : -1;
}

int audit_head_write(int fd, const audit_head_t *h, const audit_key_t *key)
{
    char slot[AUDIT_HEAD_SLOT];
    audit_head_format(h, key, slot);
    off_t at = (off_t) (h->seq % 2) * AUDIT_HEAD_SLOT;
    size_t done = 0;
    while (done < sizeof slot) {
        ssize_t n = pwrite(fd, slot + done, sizeof slot - done, at + (off_t) done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        done += (size_t) n;
    }
    return 0;
}
