/* fuzz/fuzz_http_conn.c — the gateway's per-connection HTTP state machine
 * (gateway/http_server.c, gateway/ws.c, and router/net/conn.c under them)
 * on arbitrary client bytes, with no socket: a memory loop
 * (router/net/loop_mem.h) hands the real connection its input and the
 * harness its output. Routes: the real GET /health and /ws/echo, a POST
 * /echo answering the body's length and hash, a GET /defer answered later
 * (gateway_http_res_defer), a GET /guarded behind the bearer check of a
 * gateway with pairing off (gateway/auth.c reads Host and Origin: a DNS name
 * or another site is 403), and the server's own 404/405/426 and refusals.
 *
 * The first input octet picks the configuration (default or tight limits,
 * how fast the client reads); the rest is the client's byte stream, fed
 * whole, one octet at a time (short inputs) and in pseudo-random pieces,
 * then EOF. Every feed must give the same output (Date masked), and that
 * output must be: HTTP/1.1 responses in order, each whole; X-Seq of the
 * harness's routes 0, 1, 2, … with one answer per request dispatched;
 * nothing after a `Connection: close` answer; after a 101, only unmasked
 * WebSocket frames, nothing after a Close. Between feeds the connection's
 * buffers stay within the configured bounds; after EOF it ends. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/split.h"
#include "gateway/auth.h"
#include "gateway/http_internal.h"
#include "gateway/http_server.h"
#include "gateway/routes.h"
#include "gateway/ws.h"
#include "router/net/loop_mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken rule: say which, for whoever triages the crash. */
#define S_FAIL(why)                                                            \
    do {                                                                       \
        fprintf(stderr, "fuzz_http_conn: %s (line %d)\n", why, __LINE__);     \
        abort();                                                               \
    } while (0)

/* Output kept per run; past it the run is not compared. */
#define S_OUT_MAX (1u << 20)
/* Input fed one octet at a time only up to this size (speed). */
#define S_BYTEWISE_MAX 512u

/* One configuration of the server and of the client. */
typedef struct {
    gateway_http_opts_t opts; /* server limits */
    gateway_ws_opts_t ws;     /* /ws/echo bounds */
    size_t window;            /* bytes the client reads per iteration, 0: all */
} s_config_t;

/* One run: what the client saw. */
typedef struct {
    uint8_t *out;            /* output so far */
    size_t out_len;          /* its octets */
    bool overflow;           /* past S_OUT_MAX: not compared */
    bool ended;              /* the connection went down */
    router_close_reason_t reason; /* how */
    uint64_t dispatched;     /* requests the harness's routes took */
    gateway_http_pending_t *pending; /* a /defer answer owed */
    uint64_t pending_seq;    /* its X-Seq */
} s_run_t;

static s_run_t *s_cur; /* the run under way (handlers have no other way in) */

/* ---------------------------------------------------------------- the peer */

static void s_on_output(router_conn_t *conn, const uint8_t *data, size_t len, void *ud)
{
    (void) conn;
    s_run_t *r = ud;
    if (r->ended)
        S_FAIL("output after the connection ended");
    if (r->overflow || r->out_len + len > S_OUT_MAX) {
        r->overflow = true;
        return;
    }
    memcpy(r->out + r->out_len, data, len);
    r->out_len += len;
}

static void s_on_end(router_conn_t *conn, router_close_reason_t reason, void *ud)
{
    (void) conn;
    s_run_t *r = ud;
    r->ended = true;
    r->reason = reason;
}

static const router_mem_peer_t s_peer = {.on_output = s_on_output, .on_end = s_on_end};

/* ---------------------------------------------------------------- routes */

static void s_seq_header(gateway_http_res_t *res, uint64_t seq)
{
    char v[24];
    snprintf(v, sizeof v, "%llu", (unsigned long long) seq);
    if (gateway_http_res_header(res, "X-Seq", v) != 0)
        S_FAIL("X-Seq refused");
}

/* POST /echo: the body's length and FNV-1a hash, so every feed must have
 * decoded the same body. */
static void s_echo(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    const gateway_http_t *g = ud;
    if (req->body[req->body_len] != '\0' || req->body_len > g->limits.max_body)
        S_FAIL("the body is not NUL-terminated or over the limit");
    uint64_t h = 1469598103934665603ull;
    fuzz_hash(&h, req->body, req->body_len);
    char text[64];
    int n = snprintf(text, sizeof text, "len=%zu fnv=%016llx", req->body_len,
                     (unsigned long long) h);
    s_seq_header(res, s_cur->dispatched++);
    (void) gateway_http_respond(res, 200, "text/plain", text, (size_t) n);
}

/* GET /defer: answered once the loop has run (s_settle_pending). */
static void s_defer(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    (void) req;
    (void) ud;
    uint64_t seq = s_cur->dispatched++;
    s_seq_header(res, seq);
    if (s_cur->pending)
        S_FAIL("the connection reads nothing while an answer is owed");
    gateway_http_pending_t *p = gateway_http_res_defer(res);
    if (!p) {
        (void) gateway_http_respond(res, 200, "text/plain", "now", 3);
        return;
    }
    s_cur->pending = p;
    s_cur->pending_seq = seq;
}

/* GET /guarded: what gateway_auth_require lets through with pairing off
 * (no token store: nothing proves who a client is, so only requests a web
 * page cannot have made pass). */
static void s_guarded(const gateway_http_req_t *req, gateway_http_res_t *res, void *ud)
{
    gateway_auth_t *auth = ud;
    s_seq_header(res, s_cur->dispatched++);
    if (gateway_auth_require(auth, req, res) == 0)
        (void) gateway_http_respond(res, 200, "text/plain", "open", 4);
    else if (!res->sent)
        S_FAIL("a refusal without an answer");
}

/* Answers the /defer requests owed, each letting the connection go on. */
static void s_settle_pending(router_loop_t *loop)
{
    for (int i = 0; i < 64 && s_cur->pending; i++) {
        gateway_http_pending_t *p = s_cur->pending;
        s_cur->pending = NULL;
        (void) gateway_http_respond(gateway_http_pending_res(p), 200, "text/plain", "later", 5);
        gateway_http_pending_end(&p);
        (void) router_mem_run(loop, 0);
    }
}

/* ---------------------------------------------------------------- checks */

/* The connection's buffers against the configured bounds. */
static void s_check_bounds(const gateway_http_t *g)
{
    for (const gateway_http_conn_t *hc = g->conns; hc; hc = hc->next) {
        if (hc->head_cap > g->limits.max_head || hc->head_len > g->limits.max_head)
            S_FAIL("the kept head passes head_max");
        if (hc->body_len > g->limits.max_body || hc->body_cap > g->limits.max_body + 1)
            S_FAIL("the body passes body_max");
        if (hc->held_len > ROUTER_CONN_TURN_BYTES + ROUTER_LOOP_RECV_BUF_SIZE)
            S_FAIL("held input passes one read");
        if (hc->phase != GATEWAY_HTTP_CLOSING &&
            router_conn_send_queued(hc->conn) > ROUTER_CONN_SEND_LIMIT)
            S_FAIL("unsent answers pass the send limit");
    }
}

static bool s_starts(const uint8_t *p, size_t n, const char *s)
{
    size_t k = strlen(s);
    return n >= k && memcmp(p, s, k) == 0;
}

/* Reads the client's view: responses, then frames after a 101. Aborts on a
 * broken rule; returns the digest of everything but Date values. */
static uint64_t s_check_output(const s_run_t *r)
{
    const uint8_t *o = r->out;
    size_t n = r->out_len, at = 0;
    bool orderly = r->reason == ROUTER_CLOSE_LOCAL || r->reason == ROUTER_CLOSE_EOF;
    bool closed = false, upgraded = false, ws_closed = false;
    uint64_t seq = 0, h = 1469598103934665603ull;
    while (at < n) {
        if (closed)
            S_FAIL("bytes after a closing answer");
        const uint8_t *p = o + at;
        size_t left = n - at;
        if (upgraded) {
            if (ws_closed)
                S_FAIL("a frame after the Close");
            if (left < 2)
                goto truncated;
            if (p[1] & 0x80)
                S_FAIL("a server frame is never masked");
            uint64_t len = p[1] & 0x7f;
            size_t hdr = 2;
            if (len == 126) {
                if (left < 4)
                    goto truncated;
                len = (uint64_t) p[2] << 8 | p[3];
                hdr = 4;
            } else if (len == 127) {
                if (left < 10)
                    goto truncated;
                len = 0;
                for (int i = 0; i < 8; i++)
                    len = len << 8 | p[2 + i];
                hdr = 10;
            }
            unsigned opcode = p[0] & 0x0f;
            if (opcode >= 8 && (!(p[0] & 0x80) || len > 125))
                S_FAIL("control frames are whole and short");
            if ((p[0] & 0x70) || (opcode > 2 && opcode < 8) || opcode > 10)
                S_FAIL("a frame with RSV bits or a reserved opcode");
            if (len > left - hdr)
                goto truncated;
            if (opcode == 8)
                ws_closed = true;
            fuzz_hash(&h, p, hdr + (size_t) len);
            at += hdr + (size_t) len;
            continue;
        }
        /* A response head. */
        if (!s_starts(p, left, "HTTP/1.1 ") || left < 13)
            goto truncated;
        int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        if (status < 100 || status > 599)
            S_FAIL("a status outside 100..599");
        const uint8_t *end = NULL;
        for (size_t i = 0; i + 3 < left; i++)
            if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') {
                end = p + i + 4;
                break;
            }
        if (!end)
            goto truncated;
        size_t head = (size_t) (end - p);
        long long cl = -1;
        bool conn_close = false;
        for (size_t i = 0; i < head;) {
            size_t j = i;
            while (j + 1 < head && !(p[j] == '\r' && p[j + 1] == '\n'))
                j++;
            const uint8_t *line = p + i;
            size_t ll = j - i;
            if (s_starts(line, ll, "Date: ")) {
                fuzz_hash(&h, "Date", 4);
            } else {
                fuzz_hash(&h, line, ll);
                if (s_starts(line, ll, "Content-Length: "))
                    cl = strtoll((const char *) line + 16, NULL, 10);
                else if (ll == 17 && s_starts(line, ll, "Connection: close"))
                    conn_close = true;
                else if (s_starts(line, ll, "X-Seq: ")) {
                    if (strtoull((const char *) line + 7, NULL, 10) != seq)
                        S_FAIL("answered out of order, or one is missing");
                    seq++;
                }
            }
            i = j + 2;
        }
        at += head;
        if (status == 100)
            continue;
        if (status == 101) {
            upgraded = true;
            continue;
        }
        /* A body unless the status has none or it answered a HEAD (then
         * the next answer, or the end, follows at once: no body here
         * starts with "HTTP/"). */
        if (status != 204 && status != 304 && at < n && !s_starts(o + at, n - at, "HTTP/1.1 ")) {
            if (cl < 0)
                S_FAIL("a body without Content-Length");
            if ((uint64_t) cl > n - at)
                goto truncated;
            fuzz_hash(&h, o + at, (size_t) cl);
            at += (size_t) cl;
        }
        if (conn_close)
            closed = true;
    }
    if (orderly && seq != r->dispatched)
        S_FAIL("a request taken and never answered");
    fuzz_hash_u64(&h, seq);
    return h;
truncated:
    if (orderly)
        S_FAIL("an orderly end flushes whole answers");
    return 0;
}

/* ---------------------------------------------------------------- one run */

static uint64_t s_run(const s_config_t *cfg, const uint8_t *in, size_t len, size_t mode,
                      uint32_t seed)
{
    static uint8_t *out; /* one buffer for every run: a megabyte per run is slow */
    if (!out && !(out = malloc(S_OUT_MAX)))
        S_FAIL("setup");
    s_run_t run = {.out = out};
    router_loop_t *loop = router_loop_new(&(router_loop_opts_t){
        .backend = ROUTER_LOOP_MEMORY, .post_capacity = 16, .max_timers = 64});
    if (!loop)
        S_FAIL("setup");
    if (router_mem_peer_set(loop, &s_peer, &run, cfg->window) != 0)
        S_FAIL("setup");
    static gateway_auth_t *auth; /* stateless with pairing off: one for every run */
    if (!auth && !(auth = gateway_auth_new(NULL, &(gateway_auth_opts_t){.require_pairing = false})))
        S_FAIL("setup");
    gateway_http_t *g = gateway_http_new(loop, &cfg->opts);
    if (!g || gateway_route_health(g) != 0 || gateway_route_ws_echo(g, &cfg->ws) != 0 ||
        gateway_http_route(g, "POST", "/echo", s_echo, g) != 0 ||
        gateway_http_route(g, "GET", "/defer", s_defer, NULL) != 0 ||
        gateway_http_route(g, "GET", "/guarded", s_guarded, auth) != 0)
        S_FAIL("setup");
    s_cur = &run;
    router_conn_t *conn = router_mem_conn_new(loop);
    if (!conn)
        S_FAIL("setup");
    gateway_http_adopt(g, conn);

    uint32_t rng = seed | 1;
    size_t off = 0;
    int stuck = 0;
    while (off < len && !run.ended) {
        size_t k = fuzz_chunk(&rng, mode, mode == 2 ? 64 : 4096);
        if (k == 0 || k > len - off)
            k = len - off;
        size_t took = router_mem_conn_feed(conn, in + off, k);
        off += took;
        (void) router_mem_run(loop, 0);
        s_settle_pending(loop);
        if (!run.ended)
            s_check_bounds(g);
        stuck = took ? 0 : stuck + 1;
        if (stuck > 8)
            S_FAIL("the connection stopped reading for good");
    }
    if (!run.ended) {
        router_mem_conn_eof(conn);
        (void) router_mem_run(loop, 0);
        s_settle_pending(loop);
        (void) router_mem_run(loop, 0);
    }
    if (!run.ended)
        S_FAIL("the client is gone and everything answered: it must end");
    uint64_t digest = run.overflow ? 0 : s_check_output(&run);

    if (run.pending)
        gateway_http_pending_end(&run.pending);
    s_cur = NULL;
    gateway_http_destroy(&g);
    router_loop_destroy(&loop);
    return digest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static const size_t windows[4] = {0, 61, 512, 4096};
    s_config_t cfg = {.window = windows[(data[0] >> 1) & 3]};
    if (data[0] & 1) { /* tight limits: every bound is in reach of a short input */
        cfg.opts.head_max = 256;
        cfg.opts.headers_max = 8;
        cfg.opts.body_max = 200;
        cfg.opts.send_high_water = 128;
        cfg.ws.message_max = 64;
    }
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    uint32_t seed = 0x9e3779b9u ^ (uint32_t) size;
    for (size_t i = 0; i < len && i < 64; i++)
        seed = (seed ^ in[i]) * 16777619u;

    uint64_t whole = s_run(&cfg, in, len, 0, seed);
    uint64_t pieces = s_run(&cfg, in, len, 2, seed);
    uint64_t big = s_run(&cfg, in, len, 3, seed);
    if (whole != pieces || whole != big)
        S_FAIL("the output depends on how the input was cut");
    if (len <= S_BYTEWISE_MAX && s_run(&cfg, in, len, 1, seed) != whole)
        S_FAIL("byte-by-byte output differs");
    return 0;
}
