/* router/comms/pairing.h — the receiving side of Meerkat's pairing handshake
 * on the comms TCP port (spec/WIRE.md §23.6). comms hands a connection here
 * when its first byte is '{' and pairing is on (comms.pairing_password_env).
 *
 * A caller that proves it knows the password ends up in trusted_peers.json
 * with profile "meerkat" and its meta, and one line in pairing_bindings.jsonl
 * records the binding; the files are written on a thread of their own (the
 * loop never waits on a disk), then the caller gets
 * meerkat_pairing_complete. Bounds: 16 KiB a line, ROUTER_PAIRING_CONNS_MAX
 * handshakes at once, the guard's unauthenticated deadline (a handshake
 * never counts as authenticated), and ROUTER_PAIRING_FAILS_MAX wrong proofs
 * in a row from one source address lock it out for ROUTER_PAIRING_LOCK_MS,
 * counted in the token store's lockouts (state.db), so a restart forgets
 * none. Loop thread only. */
#ifndef KITH_ROUTER_PAIRING_H
#define KITH_ROUTER_PAIRING_H

#include <stddef.h>
#include <stdint.h>

#include "router/net/conn.h"
#include "router/net/loop.h"
#include "router/state/identity.h"

#define ROUTER_PAIRING_CONNS_MAX 32
#define ROUTER_PAIRING_FAILS_MAX 5
#define ROUTER_PAIRING_LOCK_MS (10u * 60u * 1000u)
/* The binding file, relative to $KITH_HOME. */
#define ROUTER_PAIRING_BINDINGS_FILE "pairing_bindings.jsonl"
/* Shortest password accepted (Meerkat's validate_pairing_secret). */
#define ROUTER_PAIRING_PASSWORD_MIN 32

typedef struct router_pairing router_pairing_t;
typedef struct router_pairing_conn router_pairing_conn_t;

typedef struct {
    router_loop_t *loop;                /* borrowed */
    const router_identity_t *identity;  /* our key; borrowed */
    const char *password;               /* copied; at least ROUTER_PAIRING_PASSWORD_MIN bytes */
    const char *name;                   /* our name in the challenge; copied */
    const char *address;                /* "tcp://host:port" we advertise; copied */
    const char *home;                   /* where the trust and binding files are; copied */
    void (*on_paired)(void *ud);        /* loop thread, after the trust file changed */
    void *ud;
} router_pairing_opts_t;

/* NULL with errno (EINVAL: password too short; ENOMEM). Caller owns it. */
router_pairing_t *router_pairing_new(const router_pairing_opts_t *opts);

/* Shutdown, first half: no more on_paired, and waits for the file writes
 * still running (their answers are then queued on the loop, and run, with
 * nowhere to go, when the loop is destroyed). Idempotent. */
void router_pairing_quiesce(router_pairing_t *self);

/* Quiesces and frees; call it after the loop is destroyed (answers queued
 * there refer to it). Idempotent; nulls *self_p. */
void router_pairing_destroy(router_pairing_t **self_p);

/* Where wrong proofs are counted: the token store's lockouts (borrowed;
 * set before the loop runs, NULL once the store stops). Until one is set,
 * every handshake is refused "internal": pairing fails closed. */
struct router_tokens;
void router_pairing_set_lockouts(router_pairing_t *self, struct router_tokens *lockouts);

/* A handshake on `conn` (its reads go to router_pairing_conn_data). NULL
 * when too many run at once or out of memory: the caller resets conn. */
router_pairing_conn_t *router_pairing_conn_new(router_pairing_t *self, router_conn_t *conn);

/* Bytes read from the connection. The handshake closes conn itself when it
 * is done or refused. */
void router_pairing_conn_data(router_pairing_conn_t *pc, const uint8_t *data, size_t len);

/* The connection closed: frees *pc_p (a file write in flight finishes
 * without it). Idempotent. */
void router_pairing_conn_free(router_pairing_conn_t **pc_p);

/* Counters for tests. */
typedef struct {
    uint64_t paired;   /* handshakes completed */
    uint64_t refused;  /* handshakes refused: bad line, wrong proof, locked out, … */
    uint64_t wrong;    /* of those, wrong password proofs */
} router_pairing_stats_t;
void router_pairing_stats(const router_pairing_t *self, router_pairing_stats_t *out);

#endif
