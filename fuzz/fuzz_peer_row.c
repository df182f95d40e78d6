/* fuzz/fuzz_peer_row.c — the body of POST /api/peers
 * (gateway_peer_row_decode), then the row into a trust store as the edit
 * does (router_trust_add). Beyond not crashing: a refusal names a code and
 * a reason and holds nothing; an accepted row has a name and an address, a
 * full-order key and at most 64 labels; a row the store takes comes back
 * from the store's JSON and a reload of it unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/peer_row.h"
#include "proto/pubkey.h"
#include "router/state/trust.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return 0;
    gateway_peer_row_t row;
    const char *code = NULL;
    char why[GATEWAY_PEER_ROW_WHY_MAX] = "";
    if (gateway_peer_row_decode(data, size, &row, &code, why, sizeof why) != 0) {
        if (!code || !why[0] || row.name || row.addr || row.description || row.nlabels)
            abort();
        return 0;
    }
    if (!row.name || !row.addr || row.nlabels > ROUTER_PEER_LABELS_MAX ||
        proto_pubkey_check(row.pk) != 0)
        abort();
    router_trust_t *t = router_trust_new();
    char err[ROUTER_TRUST_ERR_MAX];
    if (t && router_trust_add(t, row.name, row.pk, row.addr, row.description, row.labels,
                              row.nlabels, err, sizeof err) == 0) {
        const router_peer_t *p = router_trust_by_pubkey(t, row.pk);
        if (!p || strcmp(p->name, row.name) || strcmp(p->addr, row.addr) ||
            router_trust_set_profile(t, p, row.profile) != 0)
            abort();
        char *json = router_trust_to_json(t, false);
        router_trust_t *back = json ? router_trust_parse(json, strlen(json), err, sizeof err) : NULL;
        char *again = back ? router_trust_to_json(back, false) : NULL;
        if (json && (!back || !again || strcmp(json, again)))
            abort(); /* what the edit writes, the daemon reads back the same */
        free(again);
        router_trust_destroy(&back);
        free(json);
    }
    router_trust_destroy(&t);
    gateway_peer_row_clear(&row);
    return 0;
}
