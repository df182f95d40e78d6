/* proto/frame.h — 4-byte length-prefixed frames (DESIGN §8): a big-endian
 * unsigned 32-bit payload length, then exactly that many payload bytes.
 *
 * The reader is built for a router that receives into kernel-provided buffers
 * it must hand back quickly: a frame whose payload lies whole in the buffer
 * being read comes back as a slice of that buffer (no copy); only a frame
 * that arrives in pieces is copied, into storage the caller supplies through
 * a callback when, and only when, such a frame starts. The reader itself never
 * allocates and never frees.
 *
 * Rules (normative text in spec/WIRE.md):
 *   - the length counts payload bytes only, not the 4 header bytes;
 *   - a length above the reader's limit (at most PROTO_FRAME_MAX) is refused
 *     as `oversize` from the header alone, before any payload byte is read;
 *   - a zero length is a well-formed frame with an empty payload; the layer
 *     above decides what that means (an envelope frame must hold one CBOR
 *     item, so the envelope decoder rejects it as `malformed`).
 *
 * Parsing convention (picohttpparser): proto_frame_read returns the bytes it
 * consumed through the end of one frame, -2 when it consumed every byte given
 * and needs more, or -1 with a typed reason. Fed whole or a byte at a time,
 * the same input yields the same frames. */
#ifndef KITH_PROTO_FRAME_H
#define KITH_PROTO_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Bytes in the length prefix. */
#define PROTO_FRAME_HEADER_LEN 4u

/* Largest payload a frame may carry (DESIGN §10 "envelope frame"); a reader
 * may be configured lower, never higher. */
#define PROTO_FRAME_MAX (1024u * 1024u)

/* Why a frame was refused. */
typedef enum {
    PROTO_FRAME_OK = 0,     /* no error */
    PROTO_FRAME_OVERSIZE,   /* the header declares more than the limit */
    PROTO_FRAME_NO_STORAGE, /* the storage callback refused a fragmented frame */
} proto_frame_reason_t;

/* Storage for a frame whose payload arrives in pieces, grown as its bytes
 * arrive (so a peer that announces 1 MiB and sends 10 bytes pins 10 bytes'
 * worth, not 1 MiB). Called when payload bytes of such a frame arrive and
 * the storage holds fewer than `need` (1 .. len, len being the frame's
 * payload length): return storage of at least `need` bytes whose first
 * bytes are those received so far (realloc keeps them), and set *cap to its
 * size; or NULL to refuse (the read then fails with PROTO_FRAME_NO_STORAGE).
 * The caller owns the storage: it must stay valid until the frame is
 * returned, and the reader never frees it. */
typedef uint8_t *(*proto_frame_storage_fn)(void *user, size_t need, size_t len, size_t *cap);

/* One frame as returned by proto_frame_read. */
typedef struct {
    const uint8_t *payload; /* into the caller's input buffer, or into the storage when `copied` */
    size_t len;             /* payload bytes; 0 for an empty frame */
    bool copied;            /* the payload was assembled in the caller's storage */
} proto_frame_t;

/* Incremental reader. Embed it anywhere; fields are private to frame.rl. */
typedef struct {
    int cs;                          /* Ragel state of the header machine */
    uint32_t max;                    /* largest payload accepted */
    uint32_t length;                 /* payload length from the current header */
    uint32_t have;                   /* payload bytes copied into `acc` so far */
    size_t acc_cap;                  /* bytes of `acc` */
    bool in_payload;                 /* the header is done, payload bytes follow */
    uint8_t *acc;                    /* storage of a fragmented frame, or NULL */
    proto_frame_storage_fn storage;  /* where `acc` comes from */
    void *user;                      /* passed to `storage` */
    proto_frame_reason_t reason;     /* why the reader failed; sticky */
} proto_frame_reader_t;

/* Prepare a reader accepting payloads of at most `max` bytes (1 ..
 * PROTO_FRAME_MAX). `storage` must not be NULL. Returns 0, or -1 when an
 * argument is out of range. */
int proto_frame_reader_init(proto_frame_reader_t *r, uint32_t max,
                            proto_frame_storage_fn storage, void *user)
    __attribute__((warn_unused_result));

/* Read from `buf` (len bytes). On a complete frame, fills `out` and returns
 * the bytes of `buf` consumed through its end (the rest of `buf` belongs to
 * the next frame: call again with it); `out->payload` stays valid as long as
 * the buffer it points into. Returns -2 when all `len` bytes were taken and
 * the frame is not complete, -1 on error (reason below; every later call
 * fails too). */
ssize_t proto_frame_read(proto_frame_reader_t *r, const uint8_t *buf, size_t len,
                         proto_frame_t *out)
    __attribute__((warn_unused_result));

/* Why the reader failed; PROTO_FRAME_OK while it has not. */
proto_frame_reason_t proto_frame_reader_reason(const proto_frame_reader_t *r);

/* True from the first header byte of a frame until that frame is returned
 * (for "time to finish a frame once started" deadlines). */
bool proto_frame_reader_busy(const proto_frame_reader_t *r);

/* The length declared by the header of the frame being read or refused (for
 * reporting an oversize frame); 0 between frames. */
uint32_t proto_frame_reader_declared(const proto_frame_reader_t *r);

/* A stable lower-case name for a reason, e.g. "oversize". */
const char *proto_frame_reason_str(proto_frame_reason_t reason);

/* Write the header of a frame carrying `payload_len` bytes into `out`.
 * Returns 0, or -1 when payload_len exceeds PROTO_FRAME_MAX. */
int proto_frame_header_encode(size_t payload_len, uint8_t out[PROTO_FRAME_HEADER_LEN])
    __attribute__((warn_unused_result));

#endif
