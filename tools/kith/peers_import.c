/* tools/kith/peers_import.c — a Meerkat trusted_peers.json, translated row by
 * row into kith's strict store (peers_import.h). */
#include "tools/kith/peers_import.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "proto/pubkey.h"
#include "proto/uuid.h"

static const char *s_str(yajl_val obj, const char *key)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, path, yajl_t_string);
    return v ? YAJL_GET_STRING(v) : NULL;
}

static void s_dropped(FILE *report, size_t i, const char *name, const char *why,
                      kith_peers_import_t *out)
{
    fprintf(report, "dropped peers[%zu] \"%s\": %s\n", i, name ? name : "", why);
    out->dropped++;
}

int kith_peers_import_meerkat(router_trust_t *into, const char *text, size_t len, FILE *report,
                              kith_peers_import_t *out, char *err, size_t errcap)
{
    memset(out, 0, sizeof *out);
    if (len > ROUTER_TRUST_FILE_MAX) {
        snprintf(err, errcap, "%zu bytes, more than the %u allowed", len, ROUTER_TRUST_FILE_MAX);
        return -1;
    }
    char *copy = malloc(len + 1);
    if (!copy) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    char why[256] = "";
    yajl_val doc = yajl_tree_parse(copy, why, sizeof why);
    free(copy);
    if (!doc) {
        /* yajl's message goes on to draw the spot over two more lines */
        why[strcspn(why, "\n")] = '\0';
        snprintf(err, errcap, "not JSON: %s", why[0] ? why : "syntax error");
        return -1;
    }
    const char *path[] = {"peers", NULL};
    yajl_val peers = yajl_tree_get(doc, path, yajl_t_array);
    if (!peers) {
        snprintf(err, errcap, "no \"peers\" array (a Meerkat trust file is {\"peers\": [...]})");
        yajl_tree_free(doc);
        return -1;
    }
    for (size_t i = 0; i < YAJL_GET_ARRAY(peers)->len; i++) {
        yajl_val row = YAJL_GET_ARRAY(peers)->values[i];
        if (!YAJL_IS_OBJECT(row)) {
            s_dropped(report, i, NULL, "not an object", out);
            continue;
        }
        const char *name = s_str(row, "name"), *pubkey = s_str(row, "pubkey"),
                   *addr = s_str(row, "addr");
        uint8_t pk[PROTO_PUBKEY_LEN], id[16];
        if (!pubkey || proto_pubkey_parse(pubkey, strlen(pubkey), pk) != 0) {
            s_dropped(report, i, name, "pubkey: not a full-order \"ed25519:<base64>\" key", out);
            continue;
        }
        if (!addr) {
            s_dropped(report, i, name, "addr: missing", out);
            continue;
        }
        proto_peer_id(pk, id);
        char kname[ROUTER_PEER_NAME_MAX + 1];
        router_peer_name_sanitize(name, id, kname);
        /* Keys kith's store does not hold are left behind, and said so. */
        for (size_t k = 0; k < row->u.object.len; k++) {
            const char *key = row->u.object.keys[k];
            if (strcmp(key, "name") && strcmp(key, "pubkey") && strcmp(key, "addr") &&
                strcmp(key, "meta"))
                fprintf(report, "peers[%zu] \"%s\": key \"%s\" left behind (kith does not keep it)\n",
                        i, kname, key);
        }
        const char *mpath_d[] = {"meta", "description", NULL};
        const char *mpath_l[] = {"meta", "labels", NULL};
        yajl_val d = yajl_tree_get(row, mpath_d, yajl_t_string);
        yajl_val l = yajl_tree_get(row, mpath_l, yajl_t_object);
        const char *description = d ? YAJL_GET_STRING(d) : NULL;
        router_label_t labels[ROUTER_PEER_LABELS_MAX];
        size_t nlabels = 0;
        for (size_t k = 0; l && k < l->u.object.len && nlabels < ROUTER_PEER_LABELS_MAX; k++)
            if (YAJL_IS_STRING(l->u.object.values[k])) {
                labels[nlabels].key = l->u.object.keys[k];
                labels[nlabels].value = YAJL_GET_STRING(l->u.object.values[k]);
                nlabels++;
            }
        char addwhy[ROUTER_TRUST_ERR_MAX];
        if (router_trust_add(into, kname, pk, addr, description, labels, nlabels, addwhy,
                             sizeof addwhy) != 0) {
            /* Meta kith refuses (too long, control characters) is not worth
             * losing the peer over: try once more without it. */
            if (strncmp(addwhy, "meta", 4) != 0 ||
                router_trust_add(into, kname, pk, addr, NULL, NULL, 0, addwhy, sizeof addwhy) != 0) {
                s_dropped(report, i, name, addwhy, out);
                continue;
            }
            fprintf(report, "peers[%zu] \"%s\": meta left behind (kith refuses it)\n", i, kname);
        }
        const router_peer_t *p = router_trust_by_pubkey(into, pk);
        (void) router_trust_set_profile(into, p, ROUTER_PEER_PROFILE_MEERKAT);
        out->imported++;
        if (!name || strcmp(name, kname) != 0) {
            out->renamed++;
            fprintf(report, "renamed peers[%zu] \"%s\" to \"%s\" (kith names are 1..%d of "
                            "[A-Za-z0-9._-])\n", i, name ? name : "", kname, ROUTER_PEER_NAME_MAX);
        }
    }
    yajl_tree_free(doc);
    return 0;
}
