/* tools/kith-bench/ws.c — `kith-bench ws`: C WebSocket connections, each
 * keeping F binary messages of S bytes in flight against any ws:// echo
 * server (kith's /ws/echo, Node's `ws`, …): messages/s, round-trip
 * percentiles, and the server's CPU time per message from /proc/PID/stat,
 * all over the same measured window after a warm-up. One thread, epoll; a
 * pre-masked frame per connection, so the client spends its time in the
 * kernel, not in masking. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <sodium.h>

#include "tools/kith-bench/bench.h"

#define S_CONNS_MAX 20000u
#define S_IN_CAP (64u * 1024)

typedef struct {
    int fd;
    uint8_t *out;          /* unwritten bytes */
    size_t out_off, out_len, out_cap;
    uint8_t in[S_IN_CAP];  /* bytes read, not yet parsed */
    size_t in_len;
    uint64_t skip;         /* payload bytes of the current data frame still to come */
    bool fin;              /* the current data frame ends a message */
    uint64_t *t;           /* ring: send times of messages in flight */
    size_t head, count;
    bool pollout;
} s_conn_t;

typedef struct {
    size_t flight;
    const uint8_t *frame;   /* the masked frame every send repeats */
    size_t frame_len;
    bool measuring;
    uint64_t done;          /* messages echoed in the measured window */
    uint64_t done_all;      /* ...and in total */
    bench_samples_t lat;
    const char *error;
} s_run_t;

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: kith-bench ws --url ws://IP:PORT/PATH [-c CONNS] [-s BYTES] [-f IN_FLIGHT]\n"
            "         [-d SECONDS] [--warmup SECONDS] [--pid PID] [--json]\n"
            "Each connection keeps IN_FLIGHT binary messages of BYTES in flight and sends the\n"
            "next when one comes back. Measured over SECONDS after the warm-up; with --pid,\n"
            "the server's CPU time (utime+stime of every thread) per message echoed.\n"
            "Defaults: -c 100 -s 512 -f 1 -d 5 --warmup 1.\n");
}

/* ---------------------------------------------------------------- handshake */

/* Connects and upgrades; returns the fd (blocking) with any bytes read past
 * the head in c->in, or -1 with a message. */
static int s_handshake(const bench_ep_t *ep, s_conn_t *c)
{
    int fd = bench_ep_connect(ep);
    if (fd < 0) {
        fprintf(stderr, "kith-bench ws: cannot connect: %s\n", strerror(errno));
        return -1;
    }
    struct timeval tv = {.tv_sec = 30};
    (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: a2l0aC1iZW5jaC1rZXkwMQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     ep->path, ep->host);
    if (bench_write_all(fd, req, (size_t) n) != 0)
        goto fail;
    if (bench_ws_upgraded(fd, c->in, S_IN_CAP, &c->in_len, "ws") != 0) {
        close(fd);
        return -1;
    }
    return fd;
fail:
    fprintf(stderr, "kith-bench ws: the upgrade failed\n");
    close(fd);
    return -1;
}

/* ---------------------------------------------------------------- frames */

/* A client frame (masked) of `op` carrying len bytes, into out; returns its
 * length. out must hold len + 14. */
static size_t s_frame(uint8_t *out, uint8_t op, const uint8_t *payload, size_t len)
{
    static const uint8_t mask[4] = {0x6b, 0x69, 0x74, 0x68};
    size_t h = 0;
    out[h++] = (uint8_t) (0x80 | op);
    if (len < 126) {
        out[h++] = (uint8_t) (0x80 | len);
    } else if (len < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t) (len >> 8);
        out[h++] = (uint8_t) len;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (uint8_t) ((uint64_t) len >> (8 * i));
    }
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        out[h + i] = payload[i] ^ mask[i % 4];
    return h + len;
}

static int s_append(s_conn_t *c, const uint8_t *p, size_t len)
{
    if (c->out_len + len > c->out_cap) {
        if (c->out_off) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t ncap = (c->out_len + len) * 2;
            uint8_t *nb = realloc(c->out, ncap);
            if (!nb)
                return -1;
            c->out = nb;
            c->out_cap = ncap;
        }
    }
    memcpy(c->out + c->out_len, p, len);
    c->out_len += len;
    return 0;
}

static int s_flush(int ep, s_conn_t *c, size_t slot)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (!c->pollout) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = slot};
                c->pollout = true;
                return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
            return 0;
        }
        if (n < 0)
            return -1;
        c->out_off += (size_t) n;
    }
    c->out_off = c->out_len = 0;
    if (c->pollout) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = slot};
        c->pollout = false;
        return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    return 0;
}

/* Sends one message on c. */
static int s_send(s_run_t *r, s_conn_t *c, uint64_t now)
{
    if (s_append(c, r->frame, r->frame_len) != 0)
        return -1;
    c->t[(c->head + c->count) % r->flight] = now;
    c->count++;
    return 0;
}

/* One whole message came back. */
static void s_echoed(s_run_t *r, s_conn_t *c, uint64_t now)
{
    if (!c->count) {
        r->error = "a message came back that was never sent";
        return;
    }
    if (r->measuring) {
        (void) bench_samples_add(&r->lat, now - c->t[c->head]);
        r->done++;
    }
    r->done_all++;
    c->head = (c->head + 1) % r->flight;
    c->count--;
}

/* Parses what c has read: data frames are skipped (only their ends
 * matter), pings answered, a close is an error. Returns messages ended. */
static size_t s_parse(s_run_t *r, s_conn_t *c, uint64_t now)
{
    size_t p = 0, ended = 0;
    while (p < c->in_len && !r->error) {
        if (c->skip) {
            uint64_t take = c->in_len - p < c->skip ? c->in_len - p : c->skip;
            p += take;
            c->skip -= take;
            if (!c->skip && c->fin) {
                s_echoed(r, c, now);
                ended++;
            }
            continue;
        }
        const uint8_t *h = c->in + p;
        size_t avail = c->in_len - p;
        if (avail < 2)
            break;
        uint8_t op = h[0] & 0x0f;
        bool fin = h[0] & 0x80;
        if (h[1] & 0x80) {
            r->error = "the server sent a masked frame";
            break;
        }
        size_t hl = 2;
        uint64_t len = h[1] & 0x7f;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t) h[2] << 8 | h[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 2; i < 10; i++)
                len = len << 8 | h[i];
            hl = 10;
        }
        if (op >= 0x8) {
            if (avail < hl + len)
                break;
            if (op == 0x8) {
                r->error = "the server closed a WebSocket";
                break;
            }
            if (op == 0x9) {
                uint8_t pong[125 + 14];
                if (s_append(c, pong, s_frame(pong, 0xA, h + hl, (size_t) len)) != 0)
                    r->error = "out of memory";
            }
            p += hl + len;
            continue;
        }
        p += hl;
        c->skip = len;
        c->fin = fin;
        if (!len && fin) {
            s_echoed(r, c, now);
            ended++;
        }
    }
    memmove(c->in, c->in + p, c->in_len - p);
    c->in_len -= p;
    return ended;
}

/* ---------------------------------------------------------------- the run */

int bench_mode_ws(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},    {"warmup", required_argument, NULL, 'W'},
        {"pid", required_argument, NULL, 'p'},    {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},         {0, 0, 0, 0}};
    const char *url = NULL;
    uint64_t conns = 100, size = 512, flight = 1, pid = 0;
    double secs = 5, warmup = 1;
    bool json = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:s:f:d:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (o) {
        case 'u': url = optarg; break;
        case 'c': bad = bench_opt_u64("-c", optarg, 1, S_CONNS_MAX, &conns); break;
        case 's': bad = bench_opt_u64("-s", optarg, 0, 1024 * 1024 - 1, &size); break;
        case 'f': bad = bench_opt_u64("-f", optarg, 1, 4096, &flight); break;
        case 'd': bad = bench_opt_double("-d", optarg, 0.1, 3600, &secs); break;
        case 'W': bad = bench_opt_double("--warmup", optarg, 0, 600, &warmup); break;
        case 'p': bad = bench_opt_u64("--pid", optarg, 1, 1u << 30, &pid); break;
        case 'j': json = true; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return BENCH_EXIT_USAGE;
        }
        if (bad)
            return BENCH_EXIT_USAGE;
    }
    bench_ep_t ep;
    if (optind != argc || !url) {
        fprintf(stderr, "kith-bench ws: --url is required\n");
        s_usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (bench_ep_parse(url, "ws", "--url", &ep) != 0)
        return BENCH_EXIT_USAGE;
    bench_fd_limit((long) conns + 64);

    int rc = BENCH_EXIT_FAIL, epfd = epoll_create1(EPOLL_CLOEXEC);
    s_run_t r = {.flight = flight};
    s_conn_t *cs = calloc(conns, sizeof *cs);
    uint8_t *payload = malloc(size + 1), *frame = malloc(size + 14);
    if (!cs || !payload || !frame || epfd < 0)
        goto done;
    for (size_t i = 0; i < conns; i++)
        cs[i].fd = -1;
    randombytes_buf(payload, size);
    r.frame = frame;
    r.frame_len = s_frame(frame, 0x2, payload, size);

    for (size_t i = 0; i < conns; i++) {
        s_conn_t *c = &cs[i];
        c->t = calloc(flight, sizeof *c->t);
        if (!c->t || (c->fd = s_handshake(&ep, c)) < 0)
            goto done;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        if (bench_fd_nonblock(c->fd) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            goto done;
    }
    uint64_t start = bench_now_ns();
    for (size_t i = 0; i < conns; i++) {
        for (size_t k = 0; k < flight; k++)
            if (s_send(&r, &cs[i], start) != 0)
                goto done;
        if (s_flush(epfd, &cs[i], i) != 0) {
            r.error = "a connection failed while sending";
            break;
        }
    }
    uint64_t t_measure = start + (uint64_t) (warmup * 1e9), t_end = t_measure + (uint64_t) (secs * 1e9);
    uint64_t cpu0 = 0, cpu1 = 0, self0 = 0, self1 = 0, m0 = 0, m1 = 0;
    struct epoll_event evs[512];
    while (!r.error) {
        uint64_t now = bench_now_ns();
        if (!r.measuring && now >= t_measure) {
            r.measuring = true;
            cpu0 = pid ? bench_proc_cpu_ns((long) pid) : 0;
            self0 = bench_self_cpu_ns();
            m0 = now;
        }
        if (now >= t_end) {
            cpu1 = pid ? bench_proc_cpu_ns((long) pid) : 0;
            self1 = bench_self_cpu_ns();
            m1 = now;
            break;
        }
        int k = epoll_wait(epfd, evs, 512, 50);
        if (k < 0 && errno != EINTR) {
            r.error = "epoll failed";
            break;
        }
        now = bench_now_ns();
        for (int e = 0; e < k && !r.error; e++) {
            size_t slot = (size_t) evs[e].data.u64;
            s_conn_t *c = &cs[slot];
            if (evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                ssize_t n = read(c->fd, c->in + c->in_len, S_IN_CAP - c->in_len);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                    r.error = "the server closed a connection";
                    break;
                }
                if (n > 0) {
                    c->in_len += (size_t) n;
                    size_t ended = s_parse(&r, c, now);
                    for (size_t j = 0; j < ended; j++)
                        if (s_send(&r, c, now) != 0)
                            r.error = "out of memory";
                }
            }
            if (c->out_len > c->out_off && s_flush(epfd, c, slot) != 0)
                r.error = "a connection failed while sending";
        }
    }
    double msecs = m1 > m0 ? (double) (m1 - m0) / 1e9 : 0;
    bench_samples_sort(&r.lat);
    bench_out_t out;
    bench_out_begin(&out, json, "ws");
    bench_out_str(&out, "url", url);
    bench_out_num(&out, "connections", (double) conns);
    bench_out_num(&out, "bytes", (double) size);
    bench_out_num(&out, "in_flight", (double) flight);
    bench_out_num(&out, "seconds", msecs);
    bench_out_num(&out, "messages", (double) r.done);
    bench_out_num(&out, "msgs_per_s", msecs > 0 ? (double) r.done / msecs : -1);
    bench_out_lat(&out, "rtt", &r.lat);
    if (pid)
        bench_out_num(&out, "server_cpu_us_per_msg",
                      r.done && cpu0 ? (double) (cpu1 - cpu0) / 1e3 / (double) r.done : -1);
    if (pid)
        bench_out_num(&out, "server_cpu_share", msecs > 0 && cpu0 ? (double) (cpu1 - cpu0) / 1e9 / msecs : -1);
    bench_out_num(&out, "client_cpu_us_per_msg",
                  r.done ? (double) (self1 - self0) / 1e3 / (double) r.done : -1);
    if (r.error)
        bench_out_str(&out, "error", r.error);
    bench_out_end(&out);
    if (r.error)
        fprintf(stderr, "kith-bench ws: %s\n", r.error);
    else
        rc = 0;
done:
    if (cs)
        for (size_t i = 0; i < conns; i++) {
            if (cs[i].fd >= 0)
                close(cs[i].fd);
            free(cs[i].out);
            free(cs[i].t);
        }
    free(cs);
    free(payload);
    free(frame);
    if (epfd >= 0)
        close(epfd);
    bench_samples_free(&r.lat);
    return rc;
}
