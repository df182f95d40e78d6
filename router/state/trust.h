/* router/state/trust.h — the trust store: the peers this node accepts envelopes
 * from and sends to, kept in $KITH_HOME/trusted_peers.json (DESIGN §4, §8):
 *
 *   {"peers": [{"name": "bob",
 *               "pubkey": "ed25519:<standard padded base64>",
 *               "addr": "tcp://host:port" | "uds:///abs/path" | "inproc://name",
 *               "profile": "kith" | "meerkat",
 *               "meta": {"description": "…", "labels": {"k": "v"}}}]}
 *
 * Loading is fail-closed: one bad row (a bad name, key or address, an
 * unknown or duplicate key, a wrong type, a duplicate PeerId) refuses the
 * whole file with an error naming the row by index and, when it has one, its
 * name. "meta" and its two keys are optional, and so is "profile" (the wire
 * profile used toward the peer, default "kith": WIRE §23.1); name, pubkey
 * and addr are not.
 * Names need not be unique; PeerIds (so public keys) must be.
 *
 * Not thread-safe: one thread owns a store; the router swaps in a freshly
 * loaded store rather than editing one that is in use. */
#ifndef KITH_ROUTER_TRUST_H
#define KITH_ROUTER_TRUST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "router/state/config.h"

/* The file, relative to $KITH_HOME. */
#define ROUTER_TRUST_FILE "trusted_peers.json"

#define ROUTER_TRUST_FILE_MAX       (8u * 1024u * 1024u) /* bytes read */
#define ROUTER_TRUST_PEERS_MAX      65536                /* rows */
#define ROUTER_PEER_NAME_MAX        64                   /* 1..64 of [A-Za-z0-9._-] */
#define ROUTER_PEER_ADDR_MAX        300                  /* bytes of "tcp://…" etc. */
#define ROUTER_PEER_DESCRIPTION_MAX 1024                 /* bytes, one line */
#define ROUTER_PEER_LABELS_MAX      64                   /* labels per peer */
#define ROUTER_PEER_LABEL_KEY_MAX   128                  /* bytes, 1..128 */
#define ROUTER_PEER_LABEL_VALUE_MAX 1024                 /* bytes, 0..1024 */
/* Room for any error message written below. */
#define ROUTER_TRUST_ERR_MAX 640

/* How a peer is reached. */
typedef enum {
    ROUTER_PEER_TCP,    /* tcp://host:port */
    ROUTER_PEER_UDS,    /* uds:///abs/path */
    ROUTER_PEER_INPROC, /* inproc://name, the in-process registry */
} router_peer_transport_t;

/* A peer address, parsed. */
typedef struct {
    router_peer_transport_t transport;     /* which of the three */
    char host[ROUTER_CONFIG_HOST_CAP];     /* TCP: name or IP literal, no brackets */
    uint16_t port;                         /* TCP: 1..65535 */
    char path[ROUTER_CONFIG_UDS_PATH_CAP]; /* UDS: absolute socket path; inproc: node name */
} router_peer_addr_t;

/* How kith talks to a peer (DESIGN §4, WIRE §23.1). */
typedef enum {
    ROUTER_PEER_PROFILE_KITH = 0, /* "kith": envelopes pipelined on one reused connection */
    ROUTER_PEER_PROFILE_MEERKAT,  /* "meerkat": one envelope per connection, its answer, close */
} router_peer_profile_t;

typedef struct {
    const char *key;   /* 1..ROUTER_PEER_LABEL_KEY_MAX bytes */
    const char *value; /* 0..ROUTER_PEER_LABEL_VALUE_MAX bytes */
} router_label_t;

/* One trusted peer. Read-only to callers: the store owns it and every string
 * in it, valid until the store changes or is destroyed. */
typedef struct {
    const char *name;              /* 1..64 of [A-Za-z0-9._-]; not unique */
    uint8_t pk[32];                /* Ed25519 key, full order (proto_pubkey_check) */
    uint8_t peer_id[16];           /* UUIDv5 of pk; unique in a store */
    const char *addr;              /* as written: "tcp://…", "uds://…", "inproc://…" */
    router_peer_addr_t dial;       /* addr, parsed */
    const char *description;       /* meta.description, or NULL */
    const router_label_t *labels;  /* meta.labels in file order */
    size_t nlabels;                /* entries in labels */
    router_peer_profile_t profile; /* "profile", default kith */
} router_peer_t;

typedef struct router_trust router_trust_t;

/* An empty store; NULL when out of memory. Caller owns it. */
router_trust_t *router_trust_new(void);

/* Parses a trusted_peers.json document (JSON with comments) from memory.
 * Returns a new store the caller owns, or NULL with err set, e.g.
 *   peers[2] "bob": pubkey: not a full-order Ed25519 key (line 9, column 5)
 * No I/O. */
router_trust_t *router_trust_parse(const char *text, size_t len, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Reads the store at `path`: a missing file is an empty store; a file that
 * group or others may write is refused (anyone could add a peer). Returns a
 * new store the caller owns, or NULL with err set (starting with the path). */
router_trust_t *router_trust_load(const char *path, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Writes the store to `path` atomically (temp file in the same directory,
 * fsync, rename, mode 0600). Returns 0 or -1 with err set. */
int router_trust_save(const router_trust_t *t, const char *path, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* The store as JSON (two-space indent, a final newline) in a new
 * NUL-terminated buffer the caller frees: the file format, plus each row's "peer_id" when with_peer_id
 * (`kith peers list --json`). NULL when out of memory. */
char *router_trust_to_json(const router_trust_t *t, bool with_peer_id);

/* Frees *tp and sets it to NULL; does nothing when either is NULL. */
void router_trust_destroy(router_trust_t **tp);

/* One row as GET /api/peers lists it (with its peer_id); NULL when out of
 * memory. Caller frees. */
char *router_peer_to_json(const router_peer_t *p);

/* Rows, in file order. router_trust_at returns NULL past the end. */
size_t router_trust_count(const router_trust_t *t);
const router_peer_t *router_trust_at(const router_trust_t *t, size_t i);

/* Lookups; NULL when absent. By pubkey and by PeerId are O(1) (keyed hash);
 * by name is a scan that also counts, in *matches (may be NULL), the rows
 * with that name, and returns the first. */
const router_peer_t *router_trust_by_pubkey(const router_trust_t *t, const uint8_t pk[32]);
const router_peer_t *router_trust_by_peer_id(const router_trust_t *t, const uint8_t id[16]);
const router_peer_t *router_trust_by_name(const router_trust_t *t, const char *name,
                                          size_t *matches);

/* Appends a peer after checking it as a loaded row is checked; copies every
 * string. description may be NULL; labels may be NULL when nlabels is 0.
 * Returns 0, or -1 with err set ("pubkey: already trusted as …") and the
 * store unchanged. */
int router_trust_add(router_trust_t *t, const char *name, const uint8_t pk[32], const char *addr,
                     const char *description, const router_label_t *labels, size_t nlabels,
                     char *err, size_t errcap) __attribute__((warn_unused_result));

/* "kith" → KITH, "meerkat" → MEERKAT: 0, or -1 for anything else. */
int router_peer_profile_parse(const char *text, router_peer_profile_t *out)
    __attribute__((warn_unused_result));
const char *router_peer_profile_str(router_peer_profile_t p);

/* Sets the profile of `peer` (a pointer this store returned; rows are added
 * with the kith profile). Returns 0, or -1 when it is not in the store. */
int router_trust_set_profile(router_trust_t *t, const router_peer_t *peer,
                             router_peer_profile_t profile);

/* Removes `peer` (a pointer this store returned). Returns 0, or -1 when it
 * is not in the store. Invalidates every router_peer_t pointer. */
int router_trust_remove(router_trust_t *t, const router_peer_t *peer);

/* One change to a loaded store: 0 to save it, -1 (err set) to leave the
 * file as it was. */
typedef int(router_trust_edit_fn)(router_trust_t *t, void *ud, char *err, size_t errcap);

/* Edits `home`'s trusted_peers.json under its lock (trusted_peers.json.lock,
 * held across load, edit and save, so concurrent editors — `kith peers`,
 * pairing, the REST routes — never lose a change): loads it (a missing file
 * is an empty store), runs edit, and saves when edit returns 0. Blocking
 * file I/O and fsync: never on a loop thread. Returns 0, or -1 with err
 * set and the file unchanged. */
int router_trust_edit(const char *home, router_trust_edit_fn *edit, void *ud, char *err,
                      size_t errcap) __attribute__((warn_unused_result));

/* Removes the temp files (trusted_peers.json.tmp-*) that saves killed
 * between their temp file and its rename left in `home`, under the same
 * lock as router_trust_edit, so no save under way loses its temp. For a
 * node's start, once it holds the home (router/node.c). Returns how many
 * went; failures are logged, never fatal. */
int router_trust_sweep_temps(const char *home);

/* What a reload changed, peers matched by public key: counts, and one line
 * for the log in text[ROUTER_TRUST_DIFF_MAX] such as
 *   added bob, carol; removed dave; changed erin (addr)
 * ("no change" when nothing did; a long list ends in "…and N more"). */
#define ROUTER_TRUST_DIFF_MAX 512
typedef struct {
    size_t added;   /* keys in `after` only */
    size_t removed; /* keys in `before` only */
    size_t changed; /* keys in both whose name, addr or meta differ */
    char text[ROUTER_TRUST_DIFF_MAX];
} router_trust_diff_t;

void router_trust_diff(const router_trust_t *before, const router_trust_t *after,
                       router_trust_diff_t *out);

/* Whether name is 1..64 characters of [A-Za-z0-9._-]. */
bool router_peer_name_valid(const char *name);

/* A valid kith name for a name from elsewhere (Meerkat allows any
 * non-blank name): every byte outside [A-Za-z0-9._-] becomes '-', cut at
 * ROUTER_PEER_NAME_MAX; nothing left gives "meerkat-<first 8 hex digits of
 * peer_id>". */
void router_peer_name_sanitize(const char *name, const uint8_t peer_id[16],
                               char out[ROUTER_PEER_NAME_MAX + 1]);

/* Parses a peer address (forms above; a TCP port must not be 0). Returns 0,
 * or -1 with a short reason in why[whycap]. No I/O. */
int router_peer_addr_parse(const char *addr, router_peer_addr_t *out, char *why, size_t whycap)
    __attribute__((warn_unused_result));

#endif
