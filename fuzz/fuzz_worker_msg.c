/* fuzz/fuzz_worker_msg.c — worker.cddl turn bodies (proto/worker_msg.c), as
 * the router reads a worker's replies and a worker reads the router's
 * requests: never crashes or leaks, a refusal leaves nothing behind, and an
 * accepted body re-encodes and decodes again to the same bytes. The
 * zero-copy cursor turn requests are read with (proto/cbor_cursor.c) must
 * pass over exactly the one item proto_cbor_check accepts, and never read
 * past the end of anything else. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/cbor_canon.h"
#include "proto/cbor_cursor.h"
#include "proto/worker_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_worker_error_t err;
    proto_cbor_cursor_t cur = proto_cbor_cursor_at(data, data + size);
    int skipped = proto_cbor_cursor_skip(&cur);
    static const proto_cbor_limits_t lim = {.max_depth = PROTO_CBOR_DEPTH_MAX};
    proto_cbor_reason_t why;
    if (proto_cbor_check(data, size, &lim, &why) == 0 && (skipped != 0 || cur.p != data + size))
        abort();
    if (cur.p > data + size)
        abort();
    proto_worker_request_t req;
    if (proto_worker_request_decode(data, size, &req, &err) == 0) {
        uint8_t *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        /* Text a decoder accepted is UTF-8 and within the limits, so it encodes. */
        if (proto_worker_request_encode(&req, &a, &alen, &err) != 0)
            abort();
        proto_worker_request_t again;
        if (proto_worker_request_decode(a, alen, &again, &err) != 0)
            abort();
        if (proto_worker_request_encode(&again, &b, &blen, &err) != 0 || alen != blen || memcmp(a, b, alen) != 0)
            abort();
        proto_worker_request_clear(&again);
        proto_worker_request_clear(&req);
        free(a);
        free(b);
    } else if (req.type != 0 || req.turn.history || req.turn.session_id.p) {
        abort();
    }

    proto_worker_reply_t rep;
    if (proto_worker_reply_decode(data, size, &rep, &err) == 0) {
        uint8_t *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if (proto_worker_reply_encode(&rep, &a, &alen, &err) != 0)
            abort();
        proto_worker_reply_t again;
        if (proto_worker_reply_decode(a, alen, &again, &err) != 0)
            abort();
        if (proto_worker_reply_encode(&again, &b, &blen, &err) != 0 || alen != blen || memcmp(a, b, alen) != 0)
            abort();
        proto_worker_reply_clear(&again);
        proto_worker_reply_clear(&rep);
        free(a);
        free(b);
    } else if (rep.type != 0) {
        abort();
    }
    return 0;
}
