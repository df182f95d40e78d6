/* fuzz/fuzz_trust.c — trusted_peers.json parsing from memory
 * (router_trust_parse). Beyond not crashing: every accepted row is found by
 * its key and PeerId, and the store written back out parses again to the
 * same JSON. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router/state/trust.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ROUTER_TRUST_ERR_MAX];
    router_trust_t *t = router_trust_parse((const char *) data, size, err, sizeof err);
    if (!t)
        return 0;
    for (size_t i = 0; i < router_trust_count(t); i++) {
        const router_peer_t *p = router_trust_at(t, i);
        if (router_trust_by_pubkey(t, p->pk) != p || router_trust_by_peer_id(t, p->peer_id) != p)
            abort();
    }
    char *json = router_trust_to_json(t, false);
    if (!json)
        abort();
    router_trust_t *u = router_trust_parse(json, strlen(json), err, sizeof err);
    if (!u)
        abort(); /* kith wrote a store it refuses */
    char *json2 = router_trust_to_json(u, false);
    if (!json2 || strcmp(json, json2) != 0)
        abort();
    free(json);
    free(json2);
    router_trust_destroy(&t);
    router_trust_destroy(&u);
    return 0;
}
