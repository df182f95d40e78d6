/* fuzz/fuzz_pairing_msg.c — Meerkat pairing lines (router_pairing_msg_parse),
 * read before anyone is authenticated. Beyond not crashing: a parsed proof
 * carries a full-order key and bounded, NUL-terminated strings. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router/comms/pairing_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    router_pairing_msg_t m;
    char why[160];
    if (router_pairing_msg_parse((const char *) data, size, &m, why, sizeof why) != 0) {
        if (!memchr(why, '\0', sizeof why))
            abort();
        return 0;
    }
    if (m.kind == ROUTER_PAIRING_PROOF) {
        if (strlen(m.name) > ROUTER_PAIRING_NAME_MAX || strlen(m.address) > ROUTER_PAIRING_ADDR_MAX ||
            strlen(m.proof) > ROUTER_PAIRING_PROOF_MAX || strncmp(m.public_key, "ed25519:", 8) != 0)
            abort();
        char out[ROUTER_PAIRING_PROOF_CAP];
        router_pairing_proof("p", "c", m.public_key, m.address, out);
        if (strlen(out) != ROUTER_PAIRING_PROOF_CAP - 1)
            abort();
    } else if (m.kind != ROUTER_PAIRING_HELLO) {
        abort();
    }
    return 0;
}
