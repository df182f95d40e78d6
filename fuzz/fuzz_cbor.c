/* fuzz/fuzz_cbor.c — the CBOR layer under envelopes and worker bodies
 * (proto/cbor_canon.c, proto/cbor_cursor.c, proto/utf8.c) on any bytes:
 *   - what the strict check accepts (definite, depth 32) the lenient one
 *     (indefinite, depth 64) accepts too, and the zero-copy cursor passes
 *     over exactly that item, to the last byte;
 *   - what the lenient check accepts, libcbor loads (unless it is a simple
 *     value libcbor 0.8 cannot hold), and the canonical encoder writes it
 *     unless two keys are equal once re-encoded; the canonical bytes pass
 *     the strict check (no indefinite length left), are no longer than the
 *     input, and are a fixed point: loaded and encoded again, the same;
 *   - the whole-buffer UTF-8 validator agrees with the incremental one fed
 *     byte by byte and in two pieces. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/cbor_canon.h"
#include "proto/cbor_cursor.h"
#include "proto/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const proto_cbor_limits_t s_strict = {.max_depth = 32, .allow_indefinite = 0, .max_items = 131072};
static const proto_cbor_limits_t s_lenient = {.max_depth = PROTO_CBOR_DEPTH_MAX, .allow_indefinite = 1};
static const proto_cbor_limits_t s_canonical = {.max_depth = PROTO_CBOR_DEPTH_MAX, .allow_indefinite = 0};

static void s_utf8(const uint8_t *data, size_t size)
{
    bool whole = proto_utf8_valid(data, size);
    proto_utf8_t u;
    proto_utf8_init(&u);
    int rc = 0;
    for (size_t i = 0; i < size && rc == 0; i++)
        rc = proto_utf8_feed(&u, data + i, 1);
    if ((rc == 0 && proto_utf8_complete(&u)) != whole)
        abort();
    proto_utf8_init(&u);
    size_t half = size / 2;
    rc = proto_utf8_feed(&u, data, half);
    if (rc == 0)
        rc = proto_utf8_feed(&u, data + half, size - half);
    if ((rc == 0 && proto_utf8_complete(&u)) != whole)
        abort();
}

/* Canonical bytes of what p[len] loads to; 0, or -1 with *why. */
static int s_canon(const uint8_t *p, size_t len, uint8_t **out, size_t *out_len, proto_cbor_reason_t *why)
{
    cbor_item_t *item = proto_cbor_load(p, len, &s_lenient, why);
    if (!item)
        return -1;
    int rc = proto_cbor_canon_bytes(item, PROTO_CBOR_DEPTH_MAX, len + 16, out, out_len, why);
    cbor_decref(&item);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_cbor_reason_t strict = PROTO_CBOR_OK, lenient = PROTO_CBOR_OK;
    int rs = proto_cbor_check(data, size, &s_strict, &strict);
    int rl = proto_cbor_check(data, size, &s_lenient, &lenient);
    if (rs == 0 && rl != 0)
        abort();

    /* The cursor never reads past the end (ASan), and over a checked item
     * it lands exactly on the end. */
    proto_cbor_cursor_t c = proto_cbor_cursor_at(data, data + size);
    int skipped = proto_cbor_cursor_skip(&c);
    if (c.p > data + size)
        abort();
    if (rs == 0 && (skipped != 0 || c.p != data + size))
        abort();

    if (rl == 0) {
        uint8_t *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        proto_cbor_reason_t why = PROTO_CBOR_OK;
        if (s_canon(data, size, &a, &alen, &why) != 0) {
            /* Simple values libcbor cannot hold; equal keys; no memory. */
            if (why != PROTO_CBOR_UNSUPPORTED && why != PROTO_CBOR_DUPLICATE_KEY && why != PROTO_CBOR_NO_MEMORY)
                abort();
        } else {
            proto_cbor_reason_t again = PROTO_CBOR_OK;
            if (alen > size || proto_cbor_check(a, alen, &s_canonical, &again) != 0)
                abort();
            if (s_canon(a, alen, &b, &blen, &why) != 0) {
                if (why != PROTO_CBOR_NO_MEMORY)
                    abort();
            } else if (blen != alen || memcmp(a, b, alen) != 0) {
                abort();
            }
            free(b);
            free(a);
        }
    }
    s_utf8(data, size);
    return 0;
}
