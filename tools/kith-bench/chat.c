/* tools/kith-bench/chat.c — `kith-bench chat`: scripted-provider turns over
 * /ws/chat (WIRE §24, subprotocol kith.v1) at a fixed offered rate, round-trip
 * percentiles (DESIGN §12: p99 ≤ 1 ms at 1,000 turns/s).
 *
 * C connections, each its own session; turn i is due at t0 + i/rate and goes
 * out on a connection with no turn in flight (one turn per session runs at a
 * time, WIRE §19.5). Its round trip runs from its due time (not its send, so
 * a late send counts against the server, not hidden) to the `done` frame of
 * that turn. Every turn sends `{"type":"message","content":"bench N"}`, which
 * the scripted provider answers `echo: bench N` in two chunks (WIRE §20.1).
 * One thread, epoll; the server's frames are reassembled only far enough to
 * read their "type". */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "tools/kith-bench/bench.h"

#define S_CONNS_MAX 4096u
#define S_IN_CAP (256u * 1024)

typedef struct {
    int fd;
    uint8_t in[S_IN_CAP];   /* bytes read, not yet parsed */
    size_t in_len;
    bool started;           /* session_start came */
    bool busy;              /* a turn is in flight */
    uint64_t t;             /* its due time */
} s_conn_t;

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: kith-bench chat --url http://IP:PORT [--token T] [-n TURNS] [-c CONNS]\n"
            "         [--rate PER_S] [--timeout S] [--json]\n"
            "TURNS scripted turns over /ws/chat (one message each, timed to its `done`) on\n"
            "CONNS sockets, each its own session, at PER_S turns/s offered (0: as fast as the\n"
            "sockets turn them around). Latency counts from each turn's due time.\n"
            "Defaults: -n 5000 -c 16 --rate 1000 --timeout 120.\n");
}

/* A masked client text frame of len bytes into out (len < 65536); returns
 * its length. out must hold len + 8. */
static size_t s_text_frame(uint8_t *out, const char *payload, size_t len)
{
    static const uint8_t mask[4] = {0x6b, 0x69, 0x74, 0x68};
    size_t h = 0;
    out[h++] = 0x81;
    if (len < 126) {
        out[h++] = (uint8_t) (0x80 | len);
    } else {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t) (len >> 8);
        out[h++] = (uint8_t) len;
    }
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        out[h + i] = (uint8_t) payload[i] ^ mask[i % 4];
    return h + len;
}

/* Connects and upgrades with subprotocol kith.v1; the fd (blocking) with any
 * bytes past the head in c->in, or -1 with a message. */
static int s_handshake(const bench_ep_t *ep, const char *token, s_conn_t *c)
{
    int fd = bench_ep_connect(ep);
    if (fd < 0) {
        fprintf(stderr, "kith-bench chat: cannot connect: %s\n", strerror(errno));
        return -1;
    }
    struct timeval tv = {.tv_sec = 30};
    (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET /ws/chat HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: a2l0aC1iZW5jaC1rZXkwMQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: kith.v1\r\n%s%s%s\r\n",
                     ep->host, token ? "Authorization: Bearer " : "", token ? token : "",
                     token ? "\r\n" : "");
    if (n <= 0 || (size_t) n >= sizeof req || bench_write_all(fd, req, (size_t) n) != 0)
        goto fail;
    if (bench_ws_upgraded(fd, c->in, S_IN_CAP, &c->in_len, "chat") != 0) {
        close(fd);
        return -1;
    }
    return fd;
fail:
    fprintf(stderr, "kith-bench chat: the upgrade failed\n");
    close(fd);
    return -1;
}

/* The "type" of a JSON text frame, matched by prefix (kith writes "type"
 * first, WIRE §24). */
static bool s_is_type(const uint8_t *p, size_t len, const char *type)
{
    char want[64];
    int n = snprintf(want, sizeof want, "{\"type\":\"%s\"", type);
    return n > 0 && (size_t) n <= len && memcmp(p, want, (size_t) n) == 0;
}

typedef struct {
    uint64_t done;          /* turns whose `done` came */
    uint64_t errors;        /* `error` frames */
    bench_samples_t lat;
    const char *error;
} s_run_t;

/* Parses c's whole frames; a `done` ends its turn. Server frames are
 * unfragmented text (kith sends each JSON object as one message). */
static void s_parse(s_run_t *r, s_conn_t *c, uint64_t now)
{
    size_t p = 0;
    while (!r->error) {
        const uint8_t *h = c->in + p;
        size_t avail = c->in_len - p;
        if (avail < 2)
            break;
        uint8_t op = h[0] & 0x0f;
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
        if (hl + len > S_IN_CAP) {
            r->error = "a server frame larger than the client's buffer";
            break;
        }
        if (avail < hl + len)
            break;
        const uint8_t *pl = h + hl;
        if (op == 0x8) {
            r->error = "the server closed a chat socket";
            break;
        }
        if (op == 0x9) {
            uint8_t pong[6 + 125];
            pong[0] = 0x8A;
            pong[1] = (uint8_t) (0x80 | len);
            memset(pong + 2, 0, 4); /* a zero mask: the payload goes as it is */
            memcpy(pong + 6, pl, (size_t) len);
            (void) bench_write_all(c->fd, pong, 6 + (size_t) len);
        } else if (op == 0x1) {
            if (s_is_type(pl, (size_t) len, "session_start")) {
                c->started = true;
            } else if (s_is_type(pl, (size_t) len, "done")) {
                if (!c->busy) {
                    r->error = "a done frame with no turn in flight";
                    break;
                }
                (void) bench_samples_add(&r->lat, now - c->t);
                c->busy = false;
                r->done++;
            } else if (s_is_type(pl, (size_t) len, "error")) {
                r->errors++;
                fprintf(stderr, "kith-bench chat: %.*s\n", (int) (len > 300 ? 300 : len), pl);
                if (c->busy) {
                    c->busy = false;
                    r->done++;
                }
            }
        }
        p += hl + (size_t) len;
    }
    memmove(c->in, c->in + p, c->in_len - p);
    c->in_len -= p;
}

int bench_mode_chat(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},     {"token", required_argument, NULL, 'k'},
        {"rate", required_argument, NULL, 'r'},    {"timeout", required_argument, NULL, 'T'},
        {"json", no_argument, NULL, 'j'},          {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0}};
    const char *url = NULL, *token = NULL;
    uint64_t n = 5000, conns = 16, timeout_s = 120;
    double rate = 1000;
    bool json = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "n:c:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (o) {
        case 'u': url = optarg; break;
        case 'k': token = optarg; break;
        case 'n': bad = bench_opt_u64("-n", optarg, 1, 100000000, &n); break;
        case 'c': bad = bench_opt_u64("-c", optarg, 1, S_CONNS_MAX, &conns); break;
        case 'r': bad = bench_opt_double("--rate", optarg, 0, 1e7, &rate); break;
        case 'T': bad = bench_opt_u64("--timeout", optarg, 1, 86400, &timeout_s); break;
        case 'j': json = true; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return BENCH_EXIT_USAGE;
        }
        if (bad)
            return BENCH_EXIT_USAGE;
    }
    bench_ep_t gw;
    if (optind != argc || !url) {
        fprintf(stderr, "kith-bench chat: --url is required\n");
        s_usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (bench_ep_parse(url, "http|ws", "--url", &gw) != 0)
        return BENCH_EXIT_USAGE;
    bench_fd_limit((long) conns + 64);

    int rc = BENCH_EXIT_FAIL, epfd = epoll_create1(EPOLL_CLOEXEC);
    s_conn_t *cs = calloc(conns, sizeof *cs);
    s_run_t r = {0};
    uint64_t late = 0;    /* turns sent after their due time because no socket was free */
    if (!cs || epfd < 0)
        goto done;
    for (size_t i = 0; i < conns; i++)
        cs[i].fd = -1;
    for (size_t i = 0; i < conns; i++) {
        s_conn_t *c = &cs[i];
        if ((c->fd = s_handshake(&gw, token, c)) < 0)
            goto done;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        if (bench_fd_nonblock(c->fd) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            goto done;
    }
    struct epoll_event evs[256];
    /* Wait for every session_start before the clock starts. */
    uint64_t t_up = bench_now_ns() + 30000000000u;
    for (size_t up = 0; up < conns && !r.error;) {
        if (bench_now_ns() > t_up) {
            r.error = "no session_start within 30 s";
            break;
        }
        int k = epoll_wait(epfd, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            s_conn_t *c = &cs[evs[e].data.u64];
            ssize_t got = read(c->fd, c->in + c->in_len, S_IN_CAP - c->in_len);
            if (got <= 0 && !(got < 0 && (errno == EAGAIN || errno == EINTR))) {
                r.error = "the server closed a chat socket before session_start";
                break;
            }
            if (got > 0) {
                c->in_len += (size_t) got;
                bool was = c->started;
                s_parse(&r, c, 0);
                up += !was && c->started;
            }
        }
    }
    uint64_t t0 = bench_now_ns(), deadline = t0 + timeout_s * 1000000000u;
    size_t next = 0, rr = 0;
    while (r.done < n && !r.error) {
        uint64_t now = bench_now_ns();
        if (now > deadline) {
            r.error = "timed out";
            break;
        }
        size_t due = n;
        if (rate > 0) {
            double d = (double) (now - t0) * rate / 1e9 + 1;
            due = d < (double) n ? (size_t) d : n;
        }
        for (size_t tried = 0; tried < conns && next < due; tried++) {
            s_conn_t *c = &cs[rr];
            rr = (rr + 1) % conns;
            if (c->busy)
                continue;
            char msg[96];
            uint8_t frame[96 + 8];
            int ml = snprintf(msg, sizeof msg, "{\"type\":\"message\",\"content\":\"bench %zu\"}", next);
            size_t fl = s_text_frame(frame, msg, (size_t) ml);
            c->t = rate > 0 ? t0 + (uint64_t) ((double) next * 1e9 / rate) : now;
            late += rate > 0 && now - c->t > 1000000u;
            c->busy = true;
            next++;
            /* A frame is small: it fits the socket buffer whole. */
            if (write(c->fd, frame, fl) != (ssize_t) fl) {
                r.error = "a message could not be written whole";
                break;
            }
        }
        struct timespec wait = {.tv_sec = 0, .tv_nsec = 100000000};
        if (rate > 0 && next < n) {
            uint64_t at = t0 + (uint64_t) ((double) next * 1e9 / rate);
            uint64_t in = at > now ? at - now : 0;
            wait.tv_nsec = (long) (in < 100000000u ? in : 100000000u);
        }
        int k = epoll_pwait2(epfd, evs, 256, &wait, NULL);
        now = bench_now_ns();
        for (int e = 0; e < k && !r.error; e++) {
            s_conn_t *c = &cs[evs[e].data.u64];
            ssize_t got = read(c->fd, c->in + c->in_len, S_IN_CAP - c->in_len);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0) {
                r.error = "the server closed a chat socket";
                break;
            }
            c->in_len += (size_t) got;
            s_parse(&r, c, now);
        }
    }
    double secs = (double) (bench_now_ns() - t0) / 1e9;
    bench_samples_sort(&r.lat);
    bench_out_t out;
    bench_out_begin(&out, json, "chat");
    bench_out_num(&out, "connections", (double) conns);
    bench_out_num(&out, "turns", (double) n);
    bench_out_num(&out, "offered_rate", rate);
    bench_out_num(&out, "done", (double) r.done);
    bench_out_num(&out, "error_frames", (double) r.errors);
    bench_out_num(&out, "sent_late_1ms", (double) late);
    bench_out_num(&out, "seconds", secs);
    bench_out_num(&out, "turns_per_s", (double) r.done / secs);
    bench_out_lat(&out, "rtt", &r.lat);
    if (r.error)
        bench_out_str(&out, "error", r.error);
    bench_out_end(&out);
    if (r.error)
        fprintf(stderr, "kith-bench chat: %s\n", r.error);
    else if (r.errors)
        fprintf(stderr, "kith-bench chat: %llu turns ended in an error frame\n",
                (unsigned long long) r.errors);
    else
        rc = 0;
done:
    if (cs)
        for (size_t i = 0; i < conns; i++)
            if (cs[i].fd >= 0)
                close(cs[i].fd);
    free(cs);
    if (epfd >= 0)
        close(epfd);
    bench_samples_free(&r.lat);
    return rc;
}
