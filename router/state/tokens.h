/* router/state/tokens.h — the gateway's durable safety state in state.db
 * (DESIGN §4, §5; WIRE §17, §28): the SHA-256 of every bearer token with
 * its scope and name (revocable), the
 * pairing lockouts per client address, the first answer given to each
 * OpenClaw idempotencyKey (X-Idempotency-Keys of the webhook routes are
 * stored by the inbox with their entries and only marked here, in memory:
 * router_tokens_idem_settle), and the OpenClaw devices
 * recorded with the SHA-256 of their deviceToken (WIRE §25.8).
 *
 * Checks read a copy held in memory, on the loop thread, and never touch
 * the disk. Writes go to a store thread with its own SQLite connection; a
 * write's callback runs on the loop thread (router_loop_post) once the row
 * is durable, so a caller answers its client only then. A token is usable
 * only after it is durable.
 *
 * Threads: everything but the store thread's own work runs on the loop
 * thread (or before the loop runs). Every job's callback runs exactly once:
 * on the loop thread, or inside router_tokens_stop with ok false. */
#ifndef KITH_ROUTER_TOKENS_H
#define KITH_ROUTER_TOKENS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "router/metrics.h"
#include "router/net/loop.h"

#define ROUTER_TOKENS_MAX 1024u              /* bearer tokens kept (paired or minted) */
#define ROUTER_TOKENS_NAME_MAX 64u           /* octets of a token's name */
#define ROUTER_TOKENS_ID_LEN 16u             /* a token's id: hex of its hash's first 8 octets */
#define ROUTER_TOKENS_CLIENTS_MAX 4096u      /* client addresses with bad codes remembered */
#define ROUTER_TOKENS_CLIENT_MAX 64u         /* a client address text, NUL included */
#define ROUTER_TOKENS_JOBS_MAX 256u          /* writes waiting for the store thread */
#define ROUTER_TOKENS_IDEM_MAX 65536u        /* idempotency keys remembered (slots touched as used) */
#define ROUTER_TOKENS_IDEM_SCOPE_MAX 32768u  /* ...of one scope being begun, so keys that need
                                              * no credential (external events) cannot take
                                              * the places of those that do */
#define ROUTER_TOKENS_IDEM_KEY_MAX 128u      /* octets of one key */
#define ROUTER_TOKENS_IDEM_BODY_MAX 512u     /* octets of one remembered answer body */
#define ROUTER_TOKENS_IDEM_TTL_MS (24ull * 3600 * 1000) /* how long a key is remembered */
#define ROUTER_TOKENS_IDEM_KEEP_MS (300ull * 1000) /* ...at least: a key answered less than this
                                                    * ago is never let go for a newer one */
#define ROUTER_TOKENS_DEVICES_MAX 1024u      /* OpenClaw devices recorded */
#define ROUTER_TOKENS_DEVICE_ID_LEN 64u      /* a device id: hex SHA-256 of its public key */
#define ROUTER_TOKENS_DEVICE_TEXT_MAX 128u   /* octets of a device's client id, mode, platform */

typedef struct router_tokens router_tokens_t;

/* What a bearer token opens (WIRE §28). */
typedef enum {
    ROUTER_TOKEN_OPERATOR = 0, /* every bearer route: paired at /pair, or minted */
    ROUTER_TOKEN_NODE = 1,     /* /ws/nodes only: minted by an operator */
} router_token_scope_t;

/* A token as listed: never its hash, only the id derived from it. */
typedef struct {
    char id[ROUTER_TOKENS_ID_LEN + 1];     /* lowercase hex */
    router_token_scope_t scope;
    char name[ROUTER_TOKENS_NAME_MAX + 1]; /* may be "" */
    uint64_t created_ms;                   /* Unix ms */
} router_tokens_info_t;

/* A write's outcome, on the loop thread: ok when the row is durable. */
typedef void (router_tokens_done_fn)(bool ok, void *ud);

/* Opens (creating its tables in) the SQLite file at db_path, or keeps
 * everything in memory when db_path is NULL, and loads what is stored.
 * Callbacks are posted to `loop` (borrowed; must outlive the store).
 * Returns NULL with a reason in err. Caller owns the result. */
router_tokens_t *router_tokens_new(const char *db_path, router_loop_t *loop, char *err,
                                   size_t errcap);

/* Writes what is queued, stops the store thread and runs the callbacks
 * still owed (ok true for what was written). Call it on the loop thread
 * once the loop no longer runs. Idempotent. */
void router_tokens_stop(router_tokens_t *self);

/* Stops (if needed) and frees. Idempotent; nulls *self_p. A post to the
 * loop may still name the store: stop it while the loop exists, and free
 * it only after the loop is destroyed (a stopped store's posts do
 * nothing). */
void router_tokens_destroy(router_tokens_t **self_p);

/* ---------------------------------------------------------------- tokens */

/* "operator" or "node" ("unknown" for anything else). */
const char *router_tokens_scope_name(router_token_scope_t scope);

/* Parses a scope's name (len octets); false for anything else. */
bool router_tokens_scope_parse(const char *text, size_t len, router_token_scope_t *scope)
    __attribute__((warn_unused_result));

/* The public id of the token whose SHA-256 is `hash`: its first 8 octets
 * in hex. It names the token in lists and revocations and opens nothing. */
void router_tokens_id(const uint8_t hash[32], char id[ROUTER_TOKENS_ID_LEN + 1]);

/* Tokens durable and not revoked. */
size_t router_tokens_count(const router_tokens_t *self);

/* Of those, the ones of `scope`. */
size_t router_tokens_count_scope(const router_tokens_t *self, router_token_scope_t scope);

/* True when `hash` is the SHA-256 of a durable token not revoked (each
 * compared in constant time); *scope (may be NULL) gets what it opens. */
bool router_tokens_check(const router_tokens_t *self, const uint8_t hash[32],
                         router_token_scope_t *scope) __attribute__((warn_unused_result));

/* Stores `hash` with its scope and name (≤ ROUTER_TOKENS_NAME_MAX octets);
 * done(ok) follows once durable, after which check() knows it. Returns 0,
 * or -1 with errno ENOSPC (ROUTER_TOKENS_MAX kept), EAGAIN (the write
 * queue is full) or EINVAL (scope or name): done will not run. */
int router_tokens_add(router_tokens_t *self, const uint8_t hash[32], router_token_scope_t scope,
                      const char *name, uint64_t now_ms, router_tokens_done_fn *done, void *ud)
    __attribute__((warn_unused_result));

/* Copies up to `cap` durable, unrevoked tokens, oldest first, into out;
 * returns how many. */
size_t router_tokens_list(const router_tokens_t *self, router_tokens_info_t *out, size_t cap);

/* Revokes the token with public id `id`: check() refuses it from this
 * call on, and so does device_check() every deviceToken it earned (their
 * `via`); its row is deleted and those deviceTokens are dropped; done(ok)
 * follows once that is durable.
 * Returns 0, or -1 with errno ENOENT (no such token) or EAGAIN (the write
 * queue is full; nothing changed): done will not run. */
int router_tokens_revoke(router_tokens_t *self, const char *id, router_tokens_done_fn *done,
                         void *ud) __attribute__((warn_unused_result));

/* ---------------------------------------------------------------- pairing lockouts */

/* Unix ms until which `client` may not try a code, 0 when it may. A
 * client not remembered while every slot holds a live lock may not: until
 * the first of those locks ends. */
uint64_t router_tokens_locked_until(const router_tokens_t *self, const char *client,
                                    uint64_t now_ms);

/* Counts one bad code from `client` (a failure past an expired lockout
 * starts a new count). At `limit` failures in a row the client is locked
 * until now_ms + lock_ms and the count restarts. *until_ms gets the lock's
 * end (0 when not locked). Written durably; done follows. Returns 0, or -1
 * with errno EAGAIN (queue full; memory is updated anyway, done will not
 * run). */
int router_tokens_fail(router_tokens_t *self, const char *client, uint64_t now_ms,
                       unsigned limit, uint64_t lock_ms, uint64_t *until_ms,
                       router_tokens_done_fn *done, void *ud) __attribute__((warn_unused_result));

/* A good code from `client`: its count of bad codes restarts (durably, no
 * callback). */
void router_tokens_forgive(router_tokens_t *self, const char *client);

/* ---------------------------------------------------------------- idempotency */

typedef enum {
    ROUTER_IDEM_NEW = 0,  /* not seen within the TTL: reserved now for this request */
    ROUTER_IDEM_BUSY,     /* a request with this key is still being answered */
    ROUTER_IDEM_DONE,     /* answered before: *status and *body are that answer */
    ROUTER_IDEM_FULL,     /* no room to remember another key now */
} router_idem_t;

/* Keys are let go before their TTL only when their scope (or the table)
 * is full: the oldest answered key of the scope that holds the most goes
 * for the new one, provided it was answered at least
 * ROUTER_TOKENS_IDEM_KEEP_MS ago; otherwise the new key is FULL. So a
 * retry within KEEP is always recognised, and within the TTL while fewer
 * than ROUTER_TOKENS_IDEM_SCOPE_MAX newer keys of its scope came after it
 * (WIRE §17.4). */

/* Registers kith_idempotency_keys (held) and
 * kith_idempotency_keys_evicted_total (let go early for newer ones) in
 * `metrics` (borrowed; must outlive the store). */
void router_tokens_use_metrics(router_tokens_t *self, router_metrics_t *metrics);

/* Looks `key` up (octets, 1..ROUTER_TOKENS_IDEM_KEY_MAX) in the keys of
 * `scope` ("webhook", …), reserving it when new. On DONE *body points into
 * the store (valid until the next call). */
router_idem_t router_tokens_idem_begin(router_tokens_t *self, const char *scope, const char *key,
                                       size_t key_len, uint64_t now_ms, int *status,
                                       const char **body);

/* Remembers the answer of a reserved key durably; done follows. Returns 0,
 * or -1 (EAGAIN, EINVAL body too long; the key is released and done will
 * not run). */
int router_tokens_idem_finish(router_tokens_t *self, const char *scope, const char *key,
                              size_t key_len, int status, const char *body, uint64_t now_ms,
                              router_tokens_done_fn *done, void *ud)
    __attribute__((warn_unused_result));

/* Marks `key` of `scope` answered with (status, body) until expires_ms, in
 * memory only, for an answer whose row another store made durable (the
 * inbox writes webhook keys in the transaction of their entries, WIRE
 * §17.4): a reserved key becomes DONE, an unknown one is added (as when
 * loading those rows at start). Returns 0, or -1 with errno EINVAL (out of
 * bounds, or a status outside 200..599) or ENOSPC (every slot holds a live
 * key). */
int router_tokens_idem_settle(router_tokens_t *self, const char *scope, const char *key,
                              size_t key_len, int status, const char *body, uint64_t expires_ms)
    __attribute__((warn_unused_result));

/* Forgets a reserved key that got no answer worth repeating. */
void router_tokens_idem_release(router_tokens_t *self, const char *scope, const char *key,
                                size_t key_len);

/* ---------------------------------------------------------------- devices */

/* An OpenClaw device as recorded (WIRE §25.8). */
typedef struct {
    char id[ROUTER_TOKENS_DEVICE_ID_LEN + 1];            /* lowercase hex SHA-256 of public_key */
    uint8_t public_key[32];                              /* raw Ed25519 */
    char client_id[ROUTER_TOKENS_DEVICE_TEXT_MAX + 1];   /* connect client.id */
    char client_mode[ROUTER_TOKENS_DEVICE_TEXT_MAX + 1]; /* connect client.mode */
    char platform[ROUTER_TOKENS_DEVICE_TEXT_MAX + 1];    /* connect client.platform, "" if none */
    uint64_t first_seen_ms, last_seen_ms;                /* Unix ms */
    char via[ROUTER_TOKENS_ID_LEN + 1]; /* the bearer token (its id) that earned the current
                                           deviceToken: revoking it drops that deviceToken;
                                           "" when not known */
} router_tokens_device_t;

/* Devices recorded and durable. */
size_t router_tokens_device_count(const router_tokens_t *self);

/* Copies the recorded (durable) device `id` into *out; false when none. */
bool router_tokens_device_get(const router_tokens_t *self, const char *id,
                              router_tokens_device_t *out);

/* True when device `id` is recorded with `public_key` and holds a
 * deviceToken whose SHA-256 is `token_hash` (compared in constant time). */
bool router_tokens_device_check(const router_tokens_t *self, const char *id,
                                const uint8_t public_key[32], const uint8_t token_hash[32])
    __attribute__((warn_unused_result));

/* Records device d (its first_seen_ms and last_seen_ms are ignored: a new
 * device is first seen at now_ms, a known one keeps its first sighting;
 * both get last seen now_ms). With token_hash, that becomes the device's
 * deviceToken hash, replacing any earlier one, earned by bearer token
 * d->via; NULL keeps the deviceToken it has and the via with it.
 * done(ok) follows once the row is durable, and only then do get() and
 * check() see the change. Returns 0, or -1 with errno EINVAL (an id that
 * is not 64 lowercase hex, or a text too long), ENOSPC
 * (ROUTER_TOKENS_DEVICES_MAX recorded and this one is new) or EAGAIN (the
 * write queue is full): done will not run. */
int router_tokens_device_record(router_tokens_t *self, const router_tokens_device_t *d,
                                const uint8_t token_hash[32], uint64_t now_ms,
                                router_tokens_done_fn *done, void *ud)
    __attribute__((warn_unused_result));

/* ---------------------------------------------------------------- failures */

/* Commits the store thread has seen fail (each is retried). */
uint64_t router_tokens_commit_failures(const router_tokens_t *self);

#endif
