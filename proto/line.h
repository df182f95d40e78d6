/* proto/line.h — newline-delimited lines, for the plain event listener
 * (DESIGN §8): a line ends at LF, and a CR right before that LF belongs to
 * the end-of-line; any other CR is an ordinary octet. The splitter does not
 * look inside lines (JSON is parsed above, with yajl).
 *
 * A line whose content exceeds the reader's limit is reported once, as a
 * PROTO_LINE_TOO_LONG item, the moment its first octet over the limit
 * arrives; the rest of it, up to its LF, is skipped without being stored, and
 * the stream goes on with the next line. A line still open when the stream
 * ends has no end-of-line and is never returned.
 *
 * Parsing convention (picohttpparser): proto_line_read returns the bytes it
 * consumed through the end of one item, or -2 when it consumed every byte
 * given and needs more. No input is invalid: it returns -1 only when a
 * growing reader's storage callback refuses room. Fed whole or a byte at a
 * time, the same input yields the same items. */
#ifndef KITH_PROTO_LINE_H
#define KITH_PROTO_LINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Longest line content (end-of-line excluded) a reader may accept. */
#define PROTO_LINE_MAX (64u * 1024u)

/* What proto_line_read found. */
typedef enum {
    PROTO_LINE_TEXT = 0,  /* a whole line */
    PROTO_LINE_TOO_LONG,  /* a line over the limit: reported, then skipped */
} proto_line_kind_t;

/* One item as returned by proto_line_read. */
typedef struct {
    proto_line_kind_t kind; /* a line, or the notice of a skipped one */
    const uint8_t *at;      /* PROTO_LINE_TEXT: the content, without CR LF or LF;
                             * into the input buffer when the line lay whole in
                             * it, else into the accumulation buffer */
    size_t len;             /* content length (0 for an empty line or TOO_LONG) */
} proto_line_t;

/* Room for a line split across reads, for a growing reader: return storage
 * of at least `need` bytes (need ≤ the reader's max) whose first bytes
 * are the ones kept so far (realloc keeps them), and set *cap to its size;
 * or NULL to refuse (the read then returns -1). The caller owns it. */
typedef uint8_t *(*proto_line_storage_fn)(void *user, size_t need, size_t *cap);

/* Incremental line reader. Embed it anywhere; fields are private to line.rl. */
typedef struct {
    int cs;                 /* Ragel state */
    size_t max;             /* longest content accepted */
    size_t len;             /* content octets of the current line so far */
    bool cr_held;           /* the last octet seen was a CR not yet known to be content */
    bool skipping;          /* inside a too-long line, dropping octets up to its LF */
    bool done;              /* exec stopped at the end of an item */
    uint8_t *acc;           /* caller's buffer for a line split across reads */
    size_t acc_len;         /* bytes of the current line in `acc` */
    size_t acc_cap;         /* bytes of `acc` */
    proto_line_storage_fn storage; /* grows `acc`, or NULL for a fixed one */
    void *user;             /* for `storage` */
    proto_line_t item;      /* the item exec stopped at */
} proto_line_reader_t;

/* Prepare a reader for lines of at most `max` content octets (1 ..
 * PROTO_LINE_MAX), assembling split lines in `acc` (acc_cap >= max bytes,
 * caller-owned, must outlive the reader). Returns 0, or -1 when an argument
 * is out of range. */
int proto_line_reader_init(proto_line_reader_t *r, uint8_t *acc, size_t acc_cap, size_t max)
    __attribute__((warn_unused_result));

/* As proto_line_reader_init, but with no buffer up front: storage for a
 * line split across reads is asked from `storage` as its bytes arrive (so
 * a connection whose lines each fit in one read holds nothing). */
int proto_line_reader_init_grow(proto_line_reader_t *r, size_t max, proto_line_storage_fn storage,
                                void *user) __attribute__((warn_unused_result));

/* The caller freed a growing reader's storage; call only between lines
 * (proto_line_reader_busy false), or right after a line was reported too
 * long (nothing is stored then, and skipping the rest of it stores
 * nothing). */
void proto_line_reader_storage_gone(proto_line_reader_t *r);

/* True while a line has begun (octets, a held CR, or a too-long line being
 * skipped) and its LF has not arrived. */
bool proto_line_reader_busy(const proto_line_reader_t *r);

/* Read from `buf` (len bytes). On a complete item fills `out` and returns the
 * bytes consumed through its end: the LF of a line, or the first octet over
 * the limit of a TOO_LONG one. Returns -2 when all `len` bytes were taken
 * without completing an item. `out` stays valid until the next call (and, for
 * a slice of `buf`, as long as `buf`). */
ssize_t proto_line_read(proto_line_reader_t *r, const uint8_t *buf, size_t len,
                        proto_line_t *out)
    __attribute__((warn_unused_result));

#endif
