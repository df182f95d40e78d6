/* router/net/shared_buf.c — the reference-counted buffer of shared_buf.h:
 * one allocation (header and bytes), a count of references, and a count of
 * the send-queue blocks holding it, which decides when its bytes enter and
 * leave the loop's unsent total. */
#include "router/net/shared_buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

struct router_shared_buf {
    size_t refs;       /* references: the creator's, blocks', router_shared_buf_ref's */
    size_t held;       /* send-queue blocks holding it (a subset of refs) */
    const void *owner; /* the loop whose blocks hold it; NULL while none does */
    size_t len;        /* bytes of data[] */
    uint8_t data[];    /* the bytes */
};

router_shared_buf_t *router_shared_buf_new(size_t len)
{
    if (len == 0 || len > SIZE_MAX - sizeof(router_shared_buf_t)) {
        errno = len ? ENOMEM : EINVAL;
        return NULL;
    }
    router_shared_buf_t *sb = malloc(sizeof *sb + len);
    if (!sb) {
        errno = ENOMEM;
        return NULL;
    }
    sb->refs = 1;
    sb->held = 0;
    sb->owner = NULL;
    sb->len = len;
    return sb;
}

uint8_t *router_shared_buf_data(router_shared_buf_t *sb)
{
    return sb->data;
}

size_t router_shared_buf_len(const router_shared_buf_t *sb)
{
    return sb->len;
}

router_shared_buf_t *router_shared_buf_ref(router_shared_buf_t *sb)
{
    sb->refs++;
    return sb;
}

void router_shared_buf_destroy(router_shared_buf_t **sb_p)
{
    if (!sb_p || !*sb_p)
        return;
    router_shared_buf_t *sb = *sb_p;
    *sb_p = NULL;
    if (--sb->refs == 0)
        free(sb);
}

int router_shared_buf_hold(router_shared_buf_t *sb, const void *owner)
{
    if (sb->held > 0 && sb->owner != owner)
        return -1;
    sb->refs++;
    sb->owner = owner;
    return sb->held++ == 0 ? 1 : 0;
}

bool router_shared_buf_unhold(router_shared_buf_t **sb_p)
{
    router_shared_buf_t *sb = *sb_p;
    bool last = --sb->held == 0;
    if (last)
        sb->owner = NULL;
    router_shared_buf_destroy(sb_p);
    return last;
}

const void *router_shared_buf_holder(const router_shared_buf_t *sb)
{
    return sb->held > 0 ? sb->owner : NULL;
}
