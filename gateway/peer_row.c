/* gateway/peer_row.c — POST /api/peers' body, decoded strictly into one
 * trust row (WIRE §17.3a). */
#include "gateway/peer_row.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "gateway/json_text.h"
#include "proto/pubkey.h"

void gateway_peer_row_clear(gateway_peer_row_t *row)
{
    free(row->name);
    free(row->addr);
    free(row->description);
    for (size_t i = 0; i < row->nlabels; i++)
        free(row->label_text[i]);
    memset(row, 0, sizeof *row);
}

/* The members of meta; a refusal's text, "" for out of memory, or NULL. */
static const char *s_meta(gateway_peer_row_t *row, yajl_val meta)
{
    if (!YAJL_IS_OBJECT(meta))
        return "\"meta\" is {\"description\"?, \"labels\"?}";
    for (size_t i = 0; i < meta->u.object.len; i++) {
        const char *k = meta->u.object.keys[i];
        yajl_val v = meta->u.object.values[i];
        if (!strcmp(k, "description") && YAJL_IS_STRING(v)) {
            if (!(row->description = strdup(v->u.string)))
                return "";
        } else if (!strcmp(k, "labels") && YAJL_IS_OBJECT(v)) {
            if (v->u.object.len > ROUTER_PEER_LABELS_MAX)
                return "at most 64 labels";
            for (size_t j = 0; j < v->u.object.len; j++) {
                yajl_val lv = v->u.object.values[j];
                if (!YAJL_IS_STRING(lv))
                    return "a label's value is a string";
                const char *key = v->u.object.keys[j], *val = lv->u.string;
                size_t kl = strlen(key), vl = strlen(val);
                char *copy = malloc(kl + vl + 2);
                if (!copy)
                    return "";
                memcpy(copy, key, kl + 1);
                memcpy(copy + kl + 1, val, vl + 1);
                row->label_text[row->nlabels] = copy;
                row->labels[row->nlabels].key = copy;
                row->labels[row->nlabels].value = copy + kl + 1;
                row->nlabels++;
            }
        } else {
            return "\"meta\" is {\"description\": string?, \"labels\": {string: string}?}";
        }
    }
    return NULL;
}

/* The row's members; a refusal's text, "" for out of memory, or NULL. */
static const char *s_row(gateway_peer_row_t *row, yajl_val b, const char **code)
{
    *code = "invalid_body";
    if (!YAJL_IS_OBJECT(b))
        return "the body is {\"name\", \"pubkey\", \"addr\", \"profile\"?, \"meta\"?}";
    yajl_val name = NULL, pubkey = NULL, addr = NULL, profile = NULL, meta = NULL;
    for (size_t i = 0; i < b->u.object.len; i++) {
        const char *k = b->u.object.keys[i];
        yajl_val *slot = !strcmp(k, "name")      ? &name
                         : !strcmp(k, "pubkey")  ? &pubkey
                         : !strcmp(k, "addr")    ? &addr
                         : !strcmp(k, "profile") ? &profile
                         : !strcmp(k, "meta")    ? &meta
                                                 : NULL;
        if (!slot)
            return "unknown member: the body is {\"name\", \"pubkey\", \"addr\", \"profile\"?, "
                   "\"meta\"?}";
        *slot = b->u.object.values[i];
    }
    if (!YAJL_IS_STRING(name) || !YAJL_IS_STRING(pubkey) || !YAJL_IS_STRING(addr))
        return "\"name\", \"pubkey\" and \"addr\" are strings, and required";
    if (profile &&
        (!YAJL_IS_STRING(profile) || router_peer_profile_parse(profile->u.string, &row->profile)))
        return "\"profile\" is \"kith\" or \"meerkat\"";
    const char *pk = pubkey->u.string;
    if (proto_pubkey_parse(pk, strlen(pk), row->pk) != 0) {
        *code = "invalid_pubkey";
        return "\"pubkey\" is \"ed25519:\" and the standard padded base64 of a full-order key";
    }
    if (!(row->name = strdup(name->u.string)) || !(row->addr = strdup(addr->u.string)))
        return "";
    return meta ? s_meta(row, meta) : NULL;
}

int gateway_peer_row_decode(const uint8_t *data, size_t len, gateway_peer_row_t *row,
                            const char **code, char *why, size_t cap)
{
    memset(row, 0, sizeof *row);
    yajl_val b = gateway_json_tree_parse(data, len, GATEWAY_PEER_ROW_DEPTH_MAX,
                                         GATEWAY_PEER_ROW_KEYS_MAX, why, cap);
    if (!b) {
        *code = errno == ENOMEM ? "unavailable" : "invalid_json";
        return -1;
    }
    const char *refusal = s_row(row, b, code);
    yajl_tree_free(b);
    if (!refusal)
        return 0;
    if (!refusal[0]) {
        *code = "unavailable";
        refusal = "the server is out of memory";
    }
    snprintf(why, cap, "%s", refusal);
    gateway_peer_row_clear(row);
    return -1;
}
