/* tools/kith-bench/bench.h — what the load generator's modes share: a
 * nanosecond clock, latency samples and their percentiles, endpoint parsing
 * (tcp://, uds://, http://, ws://), sockets, one-shot HTTP, /proc readers and
 * the result printer (human lines, or one JSON object with --json).
 *
 * kith-bench is a client kith did not need to have: it links proto/ (the
 * envelope codec, to pre-sign envelopes and check acks) and libsodium, and
 * nothing of router/ or gateway/. Everything it measures is read from the
 * outside: sockets, /metrics and /proc. */
#ifndef KITH_BENCH_H
#define KITH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

/* Exit codes: 0 ran, 1 the run failed (lost data, refused, timed out),
 * 2 the mode cannot run here, 64 usage. */
#define BENCH_EXIT_FAIL 1
#define BENCH_EXIT_UNAVAILABLE 2
#define BENCH_EXIT_USAGE 64

/* ------------------------------------------------------------ time */

/* CLOCK_MONOTONIC in nanoseconds (the load generator needs finer than
 * router/clock.h's milliseconds). */
uint64_t bench_now_ns(void);
/* Sleeps `ns` nanoseconds (0: returns at once). */
void bench_sleep_ns(uint64_t ns);

/* ------------------------------------------------------------ samples */

/* A growable array of latencies in nanoseconds. */
typedef struct {
    uint64_t *v;
    size_t n, cap;
} bench_samples_t;

/* Appends one; returns -1 when out of memory. */
int bench_samples_add(bench_samples_t *s, uint64_t ns);
/* Sorts in place; call before bench_samples_pct. */
void bench_samples_sort(bench_samples_t *s);
/* The p-th percentile (0..100) of sorted samples, nearest rank; 0 when empty. */
uint64_t bench_samples_pct(const bench_samples_t *s, double p);
void bench_samples_free(bench_samples_t *s);

/* ------------------------------------------------------------ endpoints */

typedef enum { BENCH_EP_TCP, BENCH_EP_UDS } bench_ep_kind_t;

/* A parsed endpoint: where to connect, and for URLs the host header and path. */
typedef struct {
    bench_ep_kind_t kind;
    struct sockaddr_storage sa;
    socklen_t salen;
    char host[128];   /* "127.0.0.1:42617", for Host: */
    char path[512];   /* "/ws/echo" for URLs, "/" when absent; "" for tcp:// uds:// */
} bench_ep_t;

/* Parses tcp://IP:PORT, uds:///abs/path, http://IP:PORT[/path] or
 * ws://IP:PORT[/path] (IPv4 literals or localhost; no DNS). `schemes` is
 * a "|"-separated list of the schemes accepted, e.g. "tcp|uds". Returns 0,
 * or -1 with a message on stderr naming `what`. */
int bench_ep_parse(const char *text, const char *schemes, const char *what, bench_ep_t *out);

/* A connected stream socket (blocking), TCP_NODELAY on TCP; -1 with errno. */
int bench_ep_connect(const bench_ep_t *ep);
/* Makes fd non-blocking; -1 with errno. */
int bench_fd_nonblock(int fd);
/* Raises RLIMIT_NOFILE's soft limit to at least `want` (as far as the hard
 * limit allows, raising that too when permitted). Returns the new soft limit. */
long bench_fd_limit(long want);

/* Writes all of buf on a blocking fd; -1 on error. */
int bench_write_all(int fd, const void *buf, size_t len);

/* ------------------------------------------------------------ HTTP */

/* One HTTP/1.1 request on a fresh connection (Connection: close): returns
 * the status (0 on a transport failure) and, when body_out is not NULL, the
 * body in a NUL-terminated buffer the caller frees. `extra_headers` is
 * NULL or lines ending in \r\n. */
int bench_http(const bench_ep_t *ep, const char *method, const char *path,
               const char *extra_headers, const char *body, size_t body_len, char **body_out);

/* Parses a response head at buf[0..len): returns the bytes of the head
 * (through the blank line) with *status and *content_length set (-1 when
 * absent), 0 when incomplete, -1 when malformed. */
ssize_t bench_http_head(const char *buf, size_t len, int *status, long *content_length);

/* After a WebSocket upgrade request on fd: reads the answer's head into
 * in[0..cap), checks it is 101 and leaves the bytes after it in in[0..*len).
 * Returns 0, or -1 with one line on stderr naming `who` (the mode). */
int bench_ws_upgraded(int fd, uint8_t *in, size_t cap, size_t *len, const char *who);

/* The value of the first sample named exactly `name` (with labels, if
 * any, written as on the wire: name{a="b"}) in a Prometheus text body, or
 * -1 when absent. Sums every sample of `name` when sum_labels is true. */
double bench_metric(const char *text, const char *name, bool sum_labels);
/* GET /metrics from ep and read one metric as above (-1 when absent or on
 * a transport failure). */
double bench_metric_get(const bench_ep_t *ep, const char *name, bool sum_labels);

/* ------------------------------------------------------------ /proc */

/* utime + stime of process `pid` (all threads) in nanoseconds, or 0 when
 * unreadable. */
uint64_t bench_proc_cpu_ns(long pid);
/* VmRSS of `pid` in KiB, or -1 when unreadable. */
long bench_proc_rss_kib(long pid);
/* This process's own CPU time (user + system) in nanoseconds. */
uint64_t bench_self_cpu_ns(void);

/* ------------------------------------------------------------ results */

/* Results are printed as `key: value` lines, or with json set as one
 * JSON object on one line (for tools/bench). Numbers print with %.6g;
 * strings are written as given (no escaping needed: callers pass plain
 * ASCII). bench_out_begin starts a result for `mode`, bench_out_end ends it. */
typedef struct {
    bool json;
    bool first;
} bench_out_t;

void bench_out_begin(bench_out_t *o, bool json, const char *mode);
void bench_out_num(bench_out_t *o, const char *key, double v);
void bench_out_str(bench_out_t *o, const char *key, const char *v);
/* p50/p99/p999/max of sorted samples in microseconds, as <prefix>_p50_us … */
void bench_out_lat(bench_out_t *o, const char *prefix, const bench_samples_t *s);
void bench_out_end(bench_out_t *o);

/* ------------------------------------------------------------ envelopes */

/* The fixed default signing seed (hex) kith-bench uses when --seed is not
 * given; `kith-bench pubkey` prints its public key for `kith peers add`. */
#define BENCH_DEFAULT_SEED "6b6974682d62656e63682d64656661756c742d7369676e696e672d7365656421"

/* Pre-signed envelope frames (4-byte length + CBOR), one contiguous buffer. */
typedef struct {
    uint8_t *buf;        /* all frames back to back */
    size_t *off;         /* frame i starts at buf + off[i] */
    size_t *len;         /* and is len[i] bytes long */
    uint8_t (*id)[16];   /* id of frame i */
    size_t n;
} bench_frames_t;

/* Signing identity and the recipient. */
typedef struct {
    uint8_t pk[32];
    uint8_t sk[64];
    uint8_t server_pk[32];
} bench_keys_t;

/* Reads a 64-hex-digit seed (NULL: the default) and a server key text
 * ("ed25519:<base64>", may be NULL when only pk/sk are wanted). Returns 0
 * or -1 with a message on stderr. */
int bench_keys_init(bench_keys_t *k, const char *seed_hex, const char *server_key);

/* Signs n `message` envelopes of body_bytes bytes from k to k->server_pk.
 * Their ids are UUIDv7 (now) with the index i in the last 6 bytes, so an id
 * seen elsewhere (/api/events) maps back to its envelope: bench_id_index.
 * `run` (bench_run_tag) goes into bytes 8..9 so runs never share ids. Returns 0
 * or -1 (out of memory). */
int bench_frames_make(bench_frames_t *f, const bench_keys_t *k, size_t n, size_t body_bytes,
                      uint16_t run);
void bench_frames_free(bench_frames_t *f);
/* The index and the run tag bench_frames_make put into an id. */
uint64_t bench_id_index(const uint8_t id[16]);
uint16_t bench_id_run(const uint8_t id[16]);

/* Checks one ack frame payload (CBOR, no length prefix): an `ack`
 * envelope from server_pk to pk whose in_reply_to is `expect_id`; its
 * signature is verified when `verify`. Returns 0 or -1 with *why set. */
int bench_ack_check(const bench_keys_t *k, const uint8_t *payload, size_t len,
                    const uint8_t expect_id[16], bool verify, const char **why);

/* A random 14-bit run tag for bench_frames_make (the id's variant bits
 * take the other two of its two bytes). */
uint16_t bench_run_tag(void);

/* ------------------------------------------------------------ modes */

int bench_mode_envelopes(int argc, char **argv);
int bench_mode_events(int argc, char **argv);
int bench_mode_ws(int argc, char **argv);
int bench_mode_sse(int argc, char **argv);
int bench_mode_webhook(int argc, char **argv);
int bench_mode_chat(int argc, char **argv);
int bench_mode_pubkey(int argc, char **argv);

/* Parses a positive integer option in lo..hi; -1 with a message on error. */
int bench_opt_u64(const char *opt, const char *text, uint64_t lo, uint64_t hi, uint64_t *out);
/* Parses a non-negative decimal number option in lo..hi. */
int bench_opt_double(const char *opt, const char *text, double lo, double hi, double *out);

#endif
