/* fuzz/fuzz_audit_msg.c — the audit bodies of spec/worker.cddl
 * (proto_audit_msg_decode). Beyond not crashing: whatever decodes encodes,
 * the encoding decodes again, and encoding that gives the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/audit_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_audit_msg_t m, m2;
    proto_audit_err_t err;
    if (proto_audit_msg_decode(data, size, &m, &err) != 0) {
        if (err == PROTO_AUDIT_OK)
            abort(); /* a refusal always says why */
        return 0;
    }
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    if (proto_audit_msg_encode(&m, &a, &alen, &err) != 0)
        abort(); /* kith refuses to encode what it accepted */
    if (proto_audit_msg_decode(a, alen, &m2, &err) != 0)
        abort(); /* kith refuses what it encoded */
    if (m2.kind != m.kind || proto_audit_msg_encode(&m2, &b, &blen, &err) != 0 || alen != blen ||
        memcmp(a, b, alen) != 0)
        abort();
    free(a);
    free(b);
    proto_audit_msg_clear(&m);
    proto_audit_msg_clear(&m2);
    return 0;
}
