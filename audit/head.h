/* audit/head.h — the audit chain's head file (WIRE §21.3): beside
 * audit.log, "<log>.head" remembers the seq and hash of the last record
 * made durable, so a log whose last records were cut off is caught even
 * though every record left in it still chains.
 *
 * Two fixed slots of AUDIT_HEAD_SLOT bytes; record seq N is written into
 * slot N % 2 and fsynced after the log itself, so a write torn by a crash
 * spoils at most one slot and the other still holds the previous head. */
#ifndef KITH_AUDIT_HEAD_H
#define KITH_AUDIT_HEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit/record.h"

#define AUDIT_HEAD_SLOT 192u

typedef struct {
    uint64_t seq;                  /* the last durable record's seq */
    uint8_t hash[AUDIT_HASH_LEN];  /* its hash */
    bool keyed;                    /* the slot's check is an HMAC */
    bool authenticated;            /* keyed and checked with the key in force */
} audit_head_t;

/* Writes slot text for `h` into out[AUDIT_HEAD_SLOT]. */
void audit_head_format(const audit_head_t *h, const audit_key_t *key, char out[AUDIT_HEAD_SLOT]);

/* Reads the head file `path`. Returns 1 with *out (the valid slot with the
 * higher seq), 0 when the file does not exist, -1 when it exists but no
 * slot is valid (or, with a key in force, none is keyed and correct), or
 * -2 when it cannot be read (errno). */
int audit_head_read(const char *path, const audit_key_t *key, audit_head_t *out)
    __attribute__((warn_unused_result));

/* Writes `h` into its slot of the open head file `fd`. 0 or -1 (errno).
 * The caller fsyncs. */
int audit_head_write(int fd, const audit_head_t *h, const audit_key_t *key)
    __attribute__((warn_unused_result));

#endif
