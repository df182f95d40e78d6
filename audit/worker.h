/* audit/worker.h — the audit worker (DESIGN §9, WIRE §21.6): service
 * "kith.audit" over Majordomo (router/workers/mdp_worker.h), on a thread
 * of its own, so every fsync of the audit log happens off the router's
 * loop. It answers audit-append (one group commit per request),
 * audit-query and audit-verify (spec/worker.cddl), one at a time.
 *
 *     audit_worker_opts_t o = {.path = "/home/me/.kith/audit.log"};
 *     audit_worker_t *w = audit_worker_start(&o, err, sizeof err);
 *     …
 *     audit_worker_stop(&w);
 */
#ifndef KITH_AUDIT_WORKER_H
#define KITH_AUDIT_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "audit/chain.h"

typedef struct audit_worker audit_worker_t;

typedef struct {
    const char *path;             /* the log (audit.path resolved against $KITH_HOME) */
    const char *hmac_key_env;     /* audit.hmac_key_env; NULL or "": no HMAC */
    const char *endpoint;         /* NULL: inproc://kith.workers */
    int heartbeat_ms;             /* workers.heartbeat_ms; ≤ 0: 1000 */
    int liveness;                 /* workers.liveness; ≤ 0: 3 */
    const char *curve_server_key; /* for a remote broker; NULL: none */
    audit_sync_fn sync;           /* tests: stands in for fdatasync; NULL: fdatasync */
    void *sync_ud;
    uint64_t rotate_bytes;        /* audit.rotate_bytes; 0: never rotate */
    uint32_t keep;                /* audit.keep; 0: 1 */
    uint64_t query_scan_max;      /* audit.query_scan_bytes: log bytes one query reads; 0: all */
} audit_worker_opts_t;

/* Opens the chain (refusing a log that is cut off, torn by tampering or
 * written with another key: audit_chain_open), connects to the broker and
 * serves on a new thread. Returns NULL with a one-line reason in err[errcap].
 * The caller owns the result. */
audit_worker_t *audit_worker_start(const audit_worker_opts_t *o, char *err, size_t errcap);

/* Finishes the request in hand, disconnects, joins the thread, closes the
 * chain. Any thread but the worker's. Idempotent; nulls *self_p. */
void audit_worker_stop(audit_worker_t **self_p);

/* Handles one request body and returns the reply body (caller frees), or
 * NULL when out of memory. The worker's loop is this plus transport; tests
 * call it directly. `chain` is used by one thread at a time; a query reads
 * at most query_scan_max bytes of the log (0: no bound). */
uint8_t *audit_worker_handle(audit_chain_t *chain, const audit_key_t *key, uint64_t query_scan_max,
                             const uint8_t *body,
                             size_t len, size_t *out_len);

#endif
