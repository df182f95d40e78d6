/* gateway/peer_row.h — the body of POST /api/peers (WIRE §17.3a): one row
 * of trusted_peers.json as an operator sends it, decoded strictly from
 * outside bytes. Only its shape and key are checked here; the row's own
 * rules (name, address, description, labels) are router_trust_add's, so
 * the API and the file cannot disagree. Fuzzed (fuzz/fuzz_peer_row.c). */
#ifndef KITH_GATEWAY_PEER_ROW_H
#define KITH_GATEWAY_PEER_ROW_H

#include <stddef.h>
#include <stdint.h>

#include "router/state/trust.h"

#define GATEWAY_PEER_ROW_DEPTH_MAX 3u  /* {"meta":{"labels":{…}}} */
#define GATEWAY_PEER_ROW_KEYS_MAX 80u  /* members: the row's, its meta's and 64 labels */
#define GATEWAY_PEER_ROW_WHY_MAX 160u  /* a refusal's text */

/* A decoded row; every string is owned (gateway_peer_row_clear). */
typedef struct {
    char *name, *addr, *description;          /* description NULL when absent */
    router_label_t labels[ROUTER_PEER_LABELS_MAX];
    char *label_text[ROUTER_PEER_LABELS_MAX]; /* "key\0value" copies the labels point into */
    size_t nlabels;
    uint8_t pk[32];                           /* full-order Ed25519 key */
    router_peer_profile_t profile;            /* kith when absent */
} gateway_peer_row_t;

/* Decodes a request body (len octets) into *row, which it clears first:
 * one strict JSON object {"name","pubkey","addr","profile"?,"meta"?:
 * {"description"?,"labels"?:{string:string}}} and nothing else. Returns 0,
 * or -1 with *code ("invalid_json", "invalid_body", "invalid_pubkey", or
 * "unavailable" when out of memory) and why[cap] for people; *row then
 * holds nothing. */
int gateway_peer_row_decode(const uint8_t *data, size_t len, gateway_peer_row_t *row,
                            const char **code, char *why, size_t cap)
    __attribute__((warn_unused_result));

/* Frees what *row holds and zeroes it. Idempotent. */
void gateway_peer_row_clear(gateway_peer_row_t *row);

#endif
