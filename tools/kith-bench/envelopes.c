/* tools/kith-bench/envelopes.c — `kith-bench envelopes`: pre-signed
 * envelopes pipelined over C connections to a running kith, every ack
 * awaited and checked (order, addressing, signature), acks/s and ack
 * latency at saturation or at a fixed offered rate, and the one-core crypto
 * bound (one Ed25519 verify + one sign per envelope, the work kith must do
 * per envelope) measured with the same libsodium in the same run.
 *
 * At a fixed rate the sends are open-loop: envelope i is due at
 * t0 + i/rate and its latency counts from then, so a stalled server shows
 * up as latency instead of silently slowing the offered load. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "proto/envelope.h"
#include "tools/kith-bench/bench.h"

#define S_CONNS_MAX 1024u
#define S_OUT_CAP (256u * 1024)   /* bytes queued per connection before a write */
#define S_IN_CAP (256u * 1024)    /* read buffer per connection */

typedef struct {
    int fd;
    size_t *idx;          /* ring of frame indices in flight, oldest at head */
    uint64_t *t;          /* their send (or due) times */
    size_t head, count;
    uint8_t *out;         /* bytes not yet written */
    size_t out_off, out_len;
    uint8_t *in;          /* bytes read, not yet a whole frame */
    size_t in_len;
    bool pollout;         /* EPOLLOUT armed */
} s_conn_t;

typedef struct {
    const bench_keys_t *keys;
    const bench_frames_t *frames;
    s_conn_t *conns;
    size_t nconns, window;
    size_t verify_every;
    size_t acked;
    bench_samples_t lat;
    const char *error;
} s_run_t;

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: kith-bench envelopes --to tcp://IP:PORT|uds:///PATH --server-key ed25519:KEY\n"
            "         [--seed HEX] [-n N] [-c CONNS] [-w WINDOW] [--rate PER_S] [--body BYTES]\n"
            "         [--bound-ms MS] [--verify-every K] [--pid PID] [--timeout S] [--json]\n"
            "Signs N `message` envelopes from the seed's key (its public key must be in the\n"
            "daemon's trust store: `kith-bench pubkey`), sends them over CONNS connections with\n"
            "at most WINDOW unacked on each, and waits for every ack. --rate 0 (default) is\n"
            "saturation; otherwise an open-loop offered rate. Defaults: -n 20000 -c 4 -w 128\n"
            "--body 64 --bound-ms 1000 --verify-every 1 --timeout 120.\n");
}

/* ---------------------------------------------------------------- the bound */

static uint64_t s_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* One-core verify+sign pairs per second: verify the first envelopes'
 * signatures (as kith does for a trusted sender) and sign an ack's signable
 * bytes (as kith does per ack), for `ms` milliseconds. Returns the pairs per
 * wall second (the bound) and sets *per_cpu_s to the pairs per
 * second of this thread's CPU time, which a machine shared with other work
 * does not lower. */
static double s_crypto_bound(const bench_keys_t *k, const bench_frames_t *f, unsigned ms,
                             double *per_cpu_s)
{
    *per_cpu_s = -1;
    enum { M = 64 };
    proto_envelope_t *env[M] = {0};
    size_t m = f->n < M ? f->n : M;
    double rate = -1;
    proto_envelope_reason_t why;
    uint8_t zero[16] = {0}, sig[64];
    cbor_item_t *kind = proto_kind_ack(zero);
    proto_envelope_t *ack = kind ? proto_envelope_new(NULL, k->pk, k->server_pk, &kind, &why) : NULL;
    for (size_t i = 0; i < m; i++)
        if (proto_envelope_decode(f->buf + f->off[i] + 4, f->len[i] - 4, &env[i], &why) != 0)
            goto done;
    if (!ack || !m)
        goto done;
    size_t ack_len, len;
    const uint8_t *ack_msg = proto_envelope_signable(ack, &ack_len);
    uint64_t t0 = bench_now_ns(), end = t0 + (uint64_t) ms * 1000000u, now = t0;
    uint64_t c0 = s_thread_cpu_ns();
    uint64_t ops = 0;
    while (now < end) {
        for (int j = 0; j < 16; j++, ops++) {
            const proto_envelope_t *e = env[ops % m];
            const uint8_t *msg = proto_envelope_signable(e, &len);
            if (crypto_sign_verify_detached(proto_envelope_sig(e), msg, len,
                                            proto_envelope_from(e)) != 0)
                goto done;
            crypto_sign_detached(sig, NULL, ack_msg, ack_len, k->sk);
        }
        now = bench_now_ns();
    }
    rate = (double) ops * 1e9 / (double) (now - t0);
    uint64_t c1 = s_thread_cpu_ns();
    if (c1 > c0)
        *per_cpu_s = (double) ops * 1e9 / (double) (c1 - c0);
done:
    for (size_t i = 0; i < m; i++)
        proto_envelope_destroy(&env[i]);
    proto_envelope_destroy(&ack);
    return rate;
}

/* ---------------------------------------------------------------- connections */

static int s_arm(int ep, s_conn_t *c, size_t slot, bool out)
{
    if (c->pollout == out)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u64 = slot};
    c->pollout = out;
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes what is queued; -1 when the connection failed. */
static int s_flush(int ep, s_conn_t *c, size_t slot)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return s_arm(ep, c, slot, true);
            return -1;
        }
        c->out_off += (size_t) n;
    }
    c->out_off = c->out_len = 0;
    return s_arm(ep, c, slot, false);
}

/* Queues frame i on c, sent (or due) at t. */
static void s_queue(s_run_t *r, s_conn_t *c, size_t i, uint64_t t)
{
    const bench_frames_t *f = r->frames;
    if (c->out_off && c->out_len + f->len[i] > S_OUT_CAP) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    memcpy(c->out + c->out_len, f->buf + f->off[i], f->len[i]);
    c->out_len += f->len[i];
    size_t slot = (c->head + c->count) % r->window;
    c->idx[slot] = i;
    c->t[slot] = t;
    c->count++;
}

/* Room for one more frame on c: the window and the output buffer. */
static bool s_room(const s_run_t *r, const s_conn_t *c, size_t i)
{
    return c->count < r->window && c->out_len - c->out_off + r->frames->len[i] <= S_OUT_CAP;
}

/* Reads acks; -1 with r->error set on a failure or an unexpected close. */
static int s_read(s_run_t *r, s_conn_t *c)
{
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->in_len, S_IN_CAP - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0) {
            r->error = n == 0 ? "the daemon closed a connection (a refusal: see its log and "
                                "kith_comms_rejected_total)"
                              : "a connection failed";
            return -1;
        }
        c->in_len += (size_t) n;
        uint64_t now = bench_now_ns();
        size_t p = 0;
        while (c->in_len - p >= 4) {
            const uint8_t *h = c->in + p;
            size_t len = (size_t) h[0] << 24 | (size_t) h[1] << 16 | (size_t) h[2] << 8 | h[3];
            if (len + 4 > S_IN_CAP) {
                r->error = "a frame from the daemon is larger than any ack";
                return -1;
            }
            if (c->in_len - p < 4 + len)
                break;
            if (!c->count) {
                r->error = "an ack arrived with nothing in flight";
                return -1;
            }
            size_t i = c->idx[c->head];
            bool verify = r->verify_every && r->acked % r->verify_every == 0;
            if (bench_ack_check(r->keys, h + 4, len, r->frames->id[i], verify, &r->error) != 0)
                return -1;
            (void) bench_samples_add(&r->lat, now > c->t[c->head] ? now - c->t[c->head] : 0);
            c->head = (c->head + 1) % r->window;
            c->count--;
            r->acked++;
            p += 4 + len;
        }
        memmove(c->in, c->in + p, c->in_len - p);
        c->in_len -= p;
        if ((size_t) n < S_IN_CAP / 2)
            return 0;
    }
}

/* ---------------------------------------------------------------- the run */

int bench_mode_envelopes(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, 't'},       {"server-key", required_argument, NULL, 'k'},
        {"seed", required_argument, NULL, 's'},     {"rate", required_argument, NULL, 'r'},
        {"body", required_argument, NULL, 'b'},     {"bound-ms", required_argument, NULL, 'B'},
        {"verify-every", required_argument, NULL, 'V'}, {"pid", required_argument, NULL, 'p'},
        {"timeout", required_argument, NULL, 'T'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {0, 0, 0, 0}};
    const char *to = NULL, *server_key = NULL, *seed = NULL;
    uint64_t n = 20000, conns = 4, window = 128, body = 64, bound_ms = 1000, verify_every = 1,
             pid = 0, timeout_s = 120;
    double rate = 0;
    bool json = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "n:c:w:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (o) {
        case 't': to = optarg; break;
        case 'k': server_key = optarg; break;
        case 's': seed = optarg; break;
        case 'n': bad = bench_opt_u64("-n", optarg, 1, 10000000, &n); break;
        case 'c': bad = bench_opt_u64("-c", optarg, 1, S_CONNS_MAX, &conns); break;
        case 'w': bad = bench_opt_u64("-w", optarg, 1, 65536, &window); break;
        case 'r': bad = bench_opt_double("--rate", optarg, 0, 1e7, &rate); break;
        case 'b': bad = bench_opt_u64("--body", optarg, 0, 512 * 1024, &body); break;
        case 'B': bad = bench_opt_u64("--bound-ms", optarg, 0, 60000, &bound_ms); break;
        case 'V': bad = bench_opt_u64("--verify-every", optarg, 0, 1000000, &verify_every); break;
        case 'p': bad = bench_opt_u64("--pid", optarg, 1, 1u << 30, &pid); break;
        case 'T': bad = bench_opt_u64("--timeout", optarg, 1, 86400, &timeout_s); break;
        case 'j': json = true; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return BENCH_EXIT_USAGE;
        }
        if (bad)
            return BENCH_EXIT_USAGE;
    }
    bench_ep_t ep;
    bench_keys_t keys;
    if (optind != argc || !to || !server_key) {
        fprintf(stderr, "kith-bench envelopes: --to and --server-key are required\n");
        s_usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (bench_ep_parse(to, "tcp|uds", "--to", &ep) != 0 ||
        bench_keys_init(&keys, seed, server_key) != 0)
        return BENCH_EXIT_USAGE;
    bench_fd_limit((long) conns + 64);

    int rc = BENCH_EXIT_FAIL, epfd = -1;
    s_run_t r = {.keys = &keys, .nconns = conns, .window = window,
                 .verify_every = verify_every};
    bench_frames_t frames;
    uint64_t t_sign = bench_now_ns();
    if (bench_frames_make(&frames, &keys, n, body, bench_run_tag()) != 0) {
        fprintf(stderr, "kith-bench envelopes: out of memory signing %llu envelopes\n",
                (unsigned long long) n);
        return BENCH_EXIT_FAIL;
    }
    double sign_s = (double) (bench_now_ns() - t_sign) / 1e9;
    r.frames = &frames;
    /* The bound before the load (and again after it: the better of the two
     * is the core's speed on a machine others share). */
    double cpu_bound = -1, cpu_bound2 = -1;
    double bound = bound_ms ? s_crypto_bound(&keys, &frames, (unsigned) bound_ms, &cpu_bound) : -1;

    r.conns = calloc(conns, sizeof *r.conns);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!r.conns || epfd < 0)
        goto done;
    for (size_t i = 0; i < conns; i++)
        r.conns[i].fd = -1;
    for (size_t i = 0; i < conns; i++) {
        s_conn_t *c = &r.conns[i];
        c->idx = calloc(window, sizeof *c->idx);
        c->t = calloc(window, sizeof *c->t);
        c->out = malloc(S_OUT_CAP);
        c->in = malloc(S_IN_CAP);
        if (!c->idx || !c->t || !c->out || !c->in)
            goto done;
        c->fd = bench_ep_connect(&ep);
        if (c->fd < 0) {
            fprintf(stderr, "kith-bench envelopes: cannot connect to %s: %s\n", to,
                    strerror(errno));
            goto done;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        if (bench_fd_nonblock(c->fd) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            goto done;
    }

    uint64_t cpu0 = pid ? bench_proc_cpu_ns((long) pid) : 0, self0 = bench_self_cpu_ns();
    uint64_t t0 = bench_now_ns(), deadline = t0 + timeout_s * 1000000000u;
    size_t next = 0, rr = 0;
    struct epoll_event evs[256];
    while (r.acked < n) {
        uint64_t now = bench_now_ns();
        if (now > deadline) {
            r.error = "timed out waiting for acks";
            break;
        }
        /* Issue what is due, round-robin over connections with room. */
        size_t due = n;
        if (rate > 0) {
            double d = (double) (now - t0) * rate / 1e9 + 1;
            due = d < (double) n ? (size_t) d : n;
        }
        size_t stuck = 0;
        while (next < due && stuck < conns) {
            s_conn_t *c = &r.conns[rr];
            if (s_room(&r, c, next)) {
                uint64_t t = rate > 0 ? t0 + (uint64_t) ((double) next * 1e9 / rate) : now;
                s_queue(&r, c, next++, t);
                stuck = 0;
            } else {
                stuck++;
            }
            rr = (rr + 1) % conns;
        }
        for (size_t i = 0; i < conns; i++)
            if (r.conns[i].out_len > r.conns[i].out_off && s_flush(epfd, &r.conns[i], i) != 0) {
                r.error = "a connection failed while sending";
                goto report;
            }
        /* Wait for acks, or until the next envelope is due. */
        struct timespec wait = {.tv_sec = 0, .tv_nsec = 100000000};
        if (rate > 0 && next < n) {
            uint64_t at = t0 + (uint64_t) ((double) next * 1e9 / rate);
            uint64_t in = at > now ? at - now : 0;
            wait.tv_nsec = (long) (in < 100000000u ? in : 100000000u);
        }
        int k = epoll_pwait2(epfd, evs, 256, &wait, NULL);
        if (k < 0 && errno != EINTR) {
            r.error = "epoll failed";
            break;
        }
        for (int e = 0; e < k; e++) {
            size_t slot = (size_t) evs[e].data.u64;
            s_conn_t *c = &r.conns[slot];
            if ((evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && s_read(&r, c) != 0)
                goto report;
            if ((evs[e].events & EPOLLOUT) && s_flush(epfd, c, slot) != 0) {
                r.error = "a connection failed while sending";
                goto report;
            }
        }
    }
report:;
    uint64_t t1 = bench_now_ns();
    uint64_t cpu1 = pid ? bench_proc_cpu_ns((long) pid) : 0, self1 = bench_self_cpu_ns();
    double secs = (double) (t1 - t0) / 1e9;
    double bound2 = bound_ms ? s_crypto_bound(&keys, &frames, (unsigned) bound_ms, &cpu_bound2) : -1;
    double best = bound2 > bound ? bound2 : bound;
    double best_cpu = cpu_bound2 > cpu_bound ? cpu_bound2 : cpu_bound;
    bench_samples_sort(&r.lat);
    bench_out_t out;
    bench_out_begin(&out, json, "envelopes");
    bench_out_str(&out, "transport", ep.kind == BENCH_EP_UDS ? "uds" : "tcp");
    bench_out_num(&out, "connections", (double) conns);
    bench_out_num(&out, "window", (double) window);
    bench_out_num(&out, "envelopes", (double) n);
    bench_out_num(&out, "body_bytes", (double) body);
    bench_out_num(&out, "offered_rate", rate);
    bench_out_num(&out, "acked", (double) r.acked);
    bench_out_num(&out, "seconds", secs);
    bench_out_num(&out, "acks_per_s", (double) r.acked / secs);
    bench_out_lat(&out, "ack", &r.lat);
    bench_out_num(&out, "presign_s", sign_s);
    bench_out_num(&out, "bound_before_per_s", bound);
    bench_out_num(&out, "bound_after_per_s", bound2);
    bench_out_num(&out, "bound_per_s", best);
    bench_out_num(&out, "ratio_to_bound", best > 0 ? (double) r.acked / secs / best : -1);
    bench_out_num(&out, "bound_cpu_per_s", best_cpu);
    bench_out_num(&out, "acks_verified_every", (double) verify_every);
    bench_out_num(&out, "client_cpu_us_per_env",
                  r.acked ? (double) (self1 - self0) / 1e3 / (double) r.acked : -1);
    if (pid) {
        double per = r.acked ? (double) (cpu1 - cpu0) / 1e3 / (double) r.acked : -1;
        bench_out_num(&out, "server_cpu_us_per_env", per);
        /* The bound's CPU per envelope over the server's: 1.0 would be a
         * server doing nothing but the crypto. */
        bench_out_num(&out, "server_cpu_efficiency", per > 0 && best_cpu > 0 ? 1e6 / best_cpu / per : -1);
    }
    if (r.error)
        bench_out_str(&out, "error", r.error);
    bench_out_end(&out);
    if (r.error)
        fprintf(stderr, "kith-bench envelopes: %s (%zu of %llu acked)\n", r.error, r.acked,
                (unsigned long long) n);
    else
        rc = 0;
done:
    if (r.conns)
        for (size_t i = 0; i < conns; i++) {
            if (r.conns[i].fd >= 0)
                close(r.conns[i].fd);
            free(r.conns[i].idx);
            free(r.conns[i].t);
            free(r.conns[i].out);
            free(r.conns[i].in);
        }
    free(r.conns);
    if (epfd >= 0)
        close(epfd);
    bench_samples_free(&r.lat);
    bench_frames_free(&frames);
    return rc;
}
