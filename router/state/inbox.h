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
 * The same transaction that writes an admitted envelope writes its
 * sender and id to a `seen` table (and the sender's raised replay floor to
 * `replay_floor`), so the replay window can be rebuilt after a restart
 * (router_inbox_seen_load) and an acked envelope is never admitted twice.
 * Expired seen rows are pruned by the store thread in small batches, at
 * most every few seconds; a pruned v7 id raises its sender's floor.
 *
 * The gateway's X-Idempotency-Key rides the same way (admit_keyed): its
 * row commits in the entry's transaction and expired rows are pruned with
 * the seen rows. An admission not yet durable can be withdrawn (a request
 * that gave up waiting), so nothing of it is ever written (WIRE §17.4).
 *
 * Each commit costs O(its batch): admissions queue on a list the store
 * thread takes by swapping pointers; the inbox mutex is never held across
 * disk I/O, so admit() (router thread) waits only for O(1) work.
 * A failing commit is logged (then rate-limited), retried with backoff up
 * to ~1 s, and its entries stay un-acked until it succeeds.
 *
 * admit() runs on the router thread and never blocks on the disk; pop() may
 * be called from any thread. */
#ifndef KITH_ROUTER_INBOX_H
#define KITH_ROUTER_INBOX_H

#include <stdbool.h>
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
    size_t max_bytes;                 /* most frame bytes held (comms.inbox_max_bytes); 0 → ROUTER_INBOX_MAX_BYTES */
    const char *db_path;              /* SQLite file, NULL for memory only */
    const char *session;              /* session the entries belong to, e.g. "comms" */
    router_inbox_durable_fn *on_durable; /* optional wake-up after each durable batch */
    void *ud;                         /* passed to on_durable */
    struct router_metrics_t *metrics; /* borrowed, NULL: none. Registers kith_inbox_commits_total
                                       * (transactions committed, each one fsync) and
                                       * kith_inbox_committed_total (entries they made durable) */
    bool commit_on_flush;             /* group commit driven by the admitting loop: admissions
                                       * and deletes wait for router_inbox_flush (or
                                       * ROUTER_INBOX_FLUSH_MAX_MS) instead of waking the store
                                       * thread one by one */
} router_inbox_opts_t;

/* With commit_on_flush, the longest an admission waits for a flush before
 * the store thread commits it anyway (a caller that never flushes). */
#define ROUTER_INBOX_FLUSH_MAX_MS 2u
/* With commit_on_flush, this many admissions waiting start a commit without
 * a flush: a saturated loop never drains, and the disk should not idle
 * while a full batch waits (issue 13: >= 32 envelopes per fsync). */
#define ROUTER_INBOX_BATCH_MIN 32u
/* With commit_on_flush, the longest a flush may be held back to gather a
 * batch of ROUTER_INBOX_BATCH_MIN when admissions arrive fast enough to
 * fill one in that time (WIRE §14.10). */
#define ROUTER_INBOX_GATHER_MAX_US 4000u
/* ... and the longest it waits for the next admission before it commits
 * what it has: arrivals that stop (a sender's window is full, the burst
 * is over) end the gathering. */
#define ROUTER_INBOX_GATHER_STALL_US 500u

typedef struct {
    uint64_t seq;         /* admission order, increasing, survives restarts */
    uint8_t id[16];       /* envelope id */
    uint8_t from[32];     /* sender's public key */
    char kind[32];        /* "message", "request", "response", "ack", "lifecycle", "incarnation_fenced_message" */
    uint64_t received_ms; /* Unix ms at admission */
    uint8_t *frame;       /* the envelope's CBOR; owned by the entry */
    size_t frame_len;     /* bytes at frame */
} router_inbox_entry_t;

typedef enum {
    ROUTER_INBOX_ADMITTED = 0, /* held; ack once durable */
    ROUTER_INBOX_FULL,         /* at capacity (entries or bytes): refuse, never drop */
    ROUTER_INBOX_NOMEM,        /* allocation failed: refuse (a local failure, not a full inbox) */
} router_inbox_outcome_t;

/* What is remembered of an admitted envelope for the replay window
 * (router_replay_durable_info fills it). */
typedef struct {
    uint64_t v7_ms;       /* UUIDv7 time of the id, 0 for other versions */
    uint64_t expires_ms;  /* wall ms after which the row may be pruned */
    uint64_t floor_ms;    /* the sender's raised v7 floor to store, 0 for none */
} router_inbox_seen_t;

/* An idempotency key recorded with an admission, in the same transaction
 * as the entry (WIRE §17.4): after a crash both are durable or neither is.
 * Rows live in the inbox database's `inbox_idempotency` table until
 * expires_ms; the store thread deletes expired rows as it prunes. */
#define ROUTER_INBOX_IDEM_SCOPE_MAX 16u /* octets of a scope ("webhook", "event") */
#define ROUTER_INBOX_IDEM_KEY_MAX 128u  /* octets of a key */
#define ROUTER_INBOX_IDEM_BODY_MAX 512u /* octets of the remembered answer body */
#define ROUTER_INBOX_IDEM_ROWS_PER_SCOPE 32768u /* newest keys of a scope kept; older rows go */

typedef struct {
    const char *scope;   /* NUL-terminated, 1..ROUTER_INBOX_IDEM_SCOPE_MAX octets */
    const char *key;     /* key_len octets, 1..ROUTER_INBOX_IDEM_KEY_MAX */
    size_t key_len;
    int status;          /* the answer a retry with this key gets */
    const char *body;    /* its body, NUL-terminated, shorter than ROUTER_INBOX_IDEM_BODY_MAX */
    uint64_t expires_ms; /* wall ms; forgotten (and deleted) after */
} router_inbox_idem_t;

/* Start-up: one stored idempotency key (pointers valid during the call). */
typedef int(router_inbox_idem_fn)(const router_inbox_idem_t *row, void *ud);

/* Start-up: one remembered id of `sender` (rows of one sender oldest first). */
typedef int(router_inbox_seen_fn)(const uint8_t sender[32], const uint8_t id[16],
                                  uint64_t expires_ms, void *ud);
/* Start-up: a stored floor (an all-zero sender: the floor for everyone). */
typedef int(router_inbox_floor_fn)(const uint8_t sender[32], uint64_t floor_ms, void *ud);

/* Opens the inbox, reloading undelivered entries of `session` from the
 * database. Returns NULL with a message in err[errcap] on failure. Caller owns
 * the result. */
router_inbox_t *router_inbox_new(const router_inbox_opts_t *opts, char *err, size_t errcap);

/* Flushes what is pending to disk, stops the store thread, frees. Idempotent;
 * nulls *self_p. */
void router_inbox_destroy(router_inbox_t **self_p);

/* Admits one envelope; copies `frame`. With `seen` (not NULL) its sender
 * and id are remembered durably in the same transaction (plain event lines
 * pass NULL). On ROUTER_INBOX_ADMITTED *seq is its sequence number. */
router_inbox_outcome_t router_inbox_admit(router_inbox_t *self, const uint8_t id[16],
                                          const uint8_t from[32], const char *kind,
                                          const uint8_t *frame, size_t frame_len,
                                          uint64_t now_ms, const router_inbox_seen_t *seen,
                                          uint64_t *seq) __attribute__((warn_unused_result));

/* router_inbox_admit, and with `idem` (not NULL) its key row written in
 * the same transaction as the entry, so the key is durable exactly when
 * the entry is. ROUTER_INBOX_NOMEM also when idem is out of its bounds (a
 * caller's bug). */
router_inbox_outcome_t router_inbox_admit_keyed(router_inbox_t *self, const uint8_t id[16],
                                                const uint8_t from[32], const char *kind,
                                                const uint8_t *frame, size_t frame_len,
                                                uint64_t now_ms, const router_inbox_seen_t *seen,
                                                const router_inbox_idem_t *idem, uint64_t *seq)
    __attribute__((warn_unused_result));

/* What router_inbox_withdraw found. */
typedef enum {
    ROUTER_INBOX_WITHDRAWN = 0, /* taken back before any commit held it: never written, key
                                 * included; its seq is never durable */
    ROUTER_INBOX_IS_DURABLE,    /* already durable (with its key): answer as admitted */
    ROUTER_INBOX_COMMITTING,    /* a commit holding it is running: ask again later (marked:
                                 * if that commit fails, the entry is dropped, not retried),
                                 * or one failed under its COMMIT (an fsync) with its frames
                                 * perhaps left in the WAL, where a crash would recover them:
                                 * then the entry is in doubt and is retried, not dropped,
                                 * and this is the answer until it is durable */
} router_inbox_withdraw_t;

/* Takes back admission `seq` that is not durable yet (a caller that gave
 * up waiting for it, WIRE §17.4), so a refused request leaves nothing.
 * Call it again after ROUTER_INBOX_COMMITTING until the answer is final;
 * after WITHDRAWN do not ask about `seq` again. */
router_inbox_withdraw_t router_inbox_withdraw(router_inbox_t *self, uint64_t seq);

/* Reads back the idempotency keys previous runs stored that have not
 * expired at now_ms, newest first, through fn (a non-zero return stops the
 * load). Call it at start. Returns 0, or -1 with a message in err.
 * Memory-only inboxes have nothing and return 0. */
int router_inbox_idem_load(router_inbox_t *self, uint64_t now_ms, router_inbox_idem_fn *fn,
                           void *ud, char *err, size_t errcap);

/* Reads back what previous runs remembered: for each sender its newest
 * `per_sender_max` ids (given oldest first) through seen_fn, then every
 * stored floor through floor_fn. Call it at start, before admitting. A
 * callback's non-zero return stops the load. Returns 0, or -1 with a
 * message in err. Memory-only inboxes have nothing and return 0. */
int router_inbox_seen_load(router_inbox_t *self, size_t per_sender_max,
                           router_inbox_seen_fn *seen_fn, router_inbox_floor_fn *floor_fn,
                           void *ud, char *err, size_t errcap);

/* Commits that failed since the inbox opened (for tests and metrics). */
uint64_t router_inbox_commit_failures(const router_inbox_t *self);

/* Every entry with seq ≤ this is durable. Lock-free; any thread. */
uint64_t router_inbox_durable_seq(const router_inbox_t *self);

/* Group commit (commit_on_flush): what was admitted or popped since the
 * last flush goes into the store thread's next commit, which starts as
 * soon as the one in flight (if any) has ended. The router's loop calls it
 * once per iteration, after the input that was ready has been handled
 * (router_loop_set_drained_cb): an idle loop commits each admission at
 * once, a saturated one commits a whole iteration's admissions with one
 * fsync. Cheap when nothing is new (one atomic exchange). Any thread. */
void router_inbox_flush(router_inbox_t *self);

/* Blocks until everything admitted so far is durable. Not for the router
 * thread's hot path: used at shutdown and by tests. */
void router_inbox_sync(router_inbox_t *self);

/* Takes the oldest durable entry nobody has taken into *out and forgets it
 * at once (deleted from the database in a later batch), waiting up to
 * timeout_ms (0: do not wait, -1: forever). Returns 0, or -1 when none
 * arrived in time. The caller owns out->frame: release it with
 * router_inbox_entry_clear(). For the in-process harness and tests; the
 * daemon leases instead (below). */
int router_inbox_pop(router_inbox_t *self, router_inbox_entry_t *out, int timeout_ms);

/* Leases: the daemon turns each entry into a turn (router/workers/turns.h)
 * and forgets it only when that turn has ended, so an entry whose turn was
 * running when the process died is still in the database and is taken
 * again after the restart (WIRE §19.4). */

/* Leases the oldest durable entry nobody has taken: a copy into *out (the
 * caller releases it with router_inbox_entry_clear()). The entry stays
 * held, counted and stored until router_inbox_done(seq). Never waits.
 * Returns 0, or -1 when there is none (or out of memory, errno ENOMEM: the
 * entry stays for the next take). The take reserves the entry's delete,
 * so its router_inbox_done cannot run out of memory. Entries are leased
 * in admission order. One consumer at a time. */
int router_inbox_take(router_inbox_t *self, router_inbox_entry_t *out);

/* Gives leased entry `seq` back untouched (its consumer could not hold it:
 * out of memory): the next take returns it first, so no entry is dropped
 * for a passing shortage. Returns 0, or -1 when `seq` is not leased. */
int router_inbox_untake(router_inbox_t *self, uint64_t seq);

/* The turn of leased entry `seq` has ended: forget it (deleted from the
 * database in a later batch). Allocates nothing (the take reserved the
 * room). Returns 0, or -1 when `seq` is not leased. */
int router_inbox_done(router_inbox_t *self, uint64_t seq);

/* Entries leased now. */
size_t router_inbox_leased(router_inbox_t *self);

void router_inbox_entry_clear(router_inbox_entry_t *e);

/* Entries held (admitted, not yet popped or done; leased ones count). */
size_t router_inbox_count(router_inbox_t *self);

const char *router_inbox_outcome_str(router_inbox_outcome_t o);

#endif
