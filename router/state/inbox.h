/* router/state/inbox.h — the bounded inbox of admitted envelopes (DESIGN §8, §10).
 *
 * Admission is durable: with a database path, a store thread group-commits
 * admitted envelopes to SQLite and publishes the highest durable sequence
 * number; the router sends an envelope's ack only once its sequence is
 * durable, so an acked envelope survives a crash or kill. Consumers (agent
 * workers, the in-process harness) pop only durable entries; a popped entry is
 * deleted from the database in a later batch. Without a database path the
 * inbox lives in memory and admission is immediately "durable".
 *
 * admit() runs on the router thread and never blocks on the disk; pop() may
 * be called from any thread. */
#ifndef KITH_ROUTER_INBOX_H
#define KITH_ROUTER_INBOX_H

#include <stddef.h>
#include <stdint.h>

/* Defaults from DESIGN §10. */
#define ROUTER_INBOX_CAPACITY 1024u
#define ROUTER_INBOX_MAX_BYTES (64u * 1024 * 1024)

typedef struct router_inbox_t router_inbox_t;

/* Called on the store thread after a batch became durable. */
typedef void(router_inbox_durable_fn)(void *ud);

typedef struct {
    size_t capacity;                  /* most entries held; 0 → ROUTER_INBOX_CAPACITY */
    size_t max_bytes;                 /* most frame bytes held; 0 → ROUTER_INBOX_MAX_BYTES */
    const char *db_path;              /* SQLite file, NULL for memory only */
    const char *session;              /* session the entries belong to, e.g. "comms" */
    router_inbox_durable_fn *on_durable; /* optional wake-up after each durable batch */
    void *ud;                         /* passed to on_durable */
} router_inbox_opts_t;

typedef struct {
    uint64_t seq;         /* admission order, increasing, survives restarts */
    uint8_t id[16];       /* envelope id */
    uint8_t from[32];     /* sender's public key */
    char kind[16];        /* "message", "request", "response", "ack", "lifecycle" */
    uint64_t received_ms; /* Unix ms at admission */
    uint8_t *frame;       /* the envelope's CBOR; owned by the entry */
    size_t frame_len;     /* bytes at frame */
} router_inbox_entry_t;

typedef enum {
    ROUTER_INBOX_ADMITTED = 0, /* held; ack once durable */
    ROUTER_INBOX_FULL,         /* at capacity (entries or bytes): refuse, never drop */
    ROUTER_INBOX_NOMEM,        /* allocation failed: refuse */
} router_inbox_outcome_t;

/* Opens the inbox, reloading undelivered entries of `session` from the
 * database. Returns NULL with a message in err[errcap] on failure. Caller owns
 * the result. */
router_inbox_t *router_inbox_new(const router_inbox_opts_t *opts, char *err, size_t errcap);

/* Flushes what is pending to disk, stops the store thread, frees. Idempotent;
 * nulls *self_p. */
void router_inbox_destroy(router_inbox_t **self_p);

/* Admits one envelope; copies `frame`. On ROUTER_INBOX_ADMITTED *seq is its
 * sequence number. */
router_inbox_outcome_t router_inbox_admit(router_inbox_t *self, const uint8_t id[16],
                                          const uint8_t from[32], const char *kind,
                                          const uint8_t *frame, size_t frame_len,
                                          uint64_t now_ms, uint64_t *seq)
    __attribute__((warn_unused_result));

/* Every entry with seq ≤ this is durable. Lock-free; any thread. */
uint64_t router_inbox_durable_seq(const router_inbox_t *self);

/* Blocks until everything admitted so far is durable. Not for the router
 * thread's hot path: used at shutdown and by tests. */
void router_inbox_sync(router_inbox_t *self);

/* Takes the oldest durable entry into *out, waiting up to timeout_ms (0: do
 * not wait, -1: forever). Returns 0, or -1 when none arrived in time. The
 * caller owns out->frame: release it with router_inbox_entry_clear(). */
int router_inbox_pop(router_inbox_t *self, router_inbox_entry_t *out, int timeout_ms);

void router_inbox_entry_clear(router_inbox_entry_t *e);

/* Entries held (admitted, not yet popped). */
size_t router_inbox_count(router_inbox_t *self);

const char *router_inbox_outcome_str(router_inbox_outcome_t o);

#endif
