/* router/comms/framed.c — the framed-stream reader shared by comms.c and
 * outbound.c: proto/frame's grammar plus storage that grows with the bytes
 * received and is charged to the partial-frame budget. */
#include "router/comms/framed.h"

#include <stdlib.h>

/* First storage for a frame arriving in pieces; it doubles from there. */
#define S_FIRST_CAP (16u * 1024u)

static uint8_t *s_grow(void *user, size_t need, size_t len, size_t *cap)
{
    router_framed_t *f = user;
    size_t n = f->cap ? f->cap : S_FIRST_CAP;
    while (n < need)
        n *= 2;
    if (n > len)
        n = len;
    if (f->acct && router_guard_hold(f->acct, n) != 0) {
        f->error = ROUTER_FRAMED_BUDGET;
        return NULL;
    }
    uint8_t *b = realloc(f->buf, n);
    if (!b) {
        if (f->acct)
            router_guard_drop(f->acct, f->cap);
        f->error = ROUTER_FRAMED_NOMEM;
        return NULL;
    }
    f->buf = b;
    f->cap = n;
    *cap = n;
    return b;
}

int router_framed_init(router_framed_t *f, uint32_t max, router_guard_conn_t *acct)
{
    f->buf = NULL;
    f->cap = 0;
    f->acct = acct;
    f->error = ROUTER_FRAMED_OK;
    return proto_frame_reader_init(&f->reader, max, s_grow, f);
}

void router_framed_release(router_framed_t *f)
{
    free(f->buf);
    f->buf = NULL;
    f->cap = 0;
    if (f->acct)
        router_guard_drop(f->acct, 0);
}

ssize_t router_framed_read(router_framed_t *f, const uint8_t *data, size_t len, proto_frame_t *out)
{
    if (f->error != ROUTER_FRAMED_OK)
        return -1;
    /* The last frame handed out was copied and has been handled. */
    if (f->buf && !proto_frame_reader_busy(&f->reader))
        router_framed_release(f);
    ssize_t n = proto_frame_read(&f->reader, data, len, out);
    if (n == -1 && f->error == ROUTER_FRAMED_OK)
        f->error = proto_frame_reader_reason(&f->reader) == PROTO_FRAME_OVERSIZE
                       ? ROUTER_FRAMED_OVERSIZE
                       : ROUTER_FRAMED_NOMEM;
    return n;
}

bool router_framed_busy(const router_framed_t *f)
{
    return proto_frame_reader_busy(&f->reader);
}

router_framed_error_t router_framed_error(const router_framed_t *f)
{
    return f->error;
}

const char *router_framed_error_str(router_framed_error_t e)
{
    switch (e) {
    case ROUTER_FRAMED_OK: return "ok";
    case ROUTER_FRAMED_OVERSIZE: return "oversize";
    case ROUTER_FRAMED_NOMEM: return "no_memory";
    case ROUTER_FRAMED_BUDGET: return "partial_budget";
    }
    return "unknown";
}
