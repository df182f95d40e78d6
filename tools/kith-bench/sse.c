/* tools/kith-bench/sse.c — `kith-bench sse`: N subscribers on /api/events,
 * the daemon's memory per idle subscriber (VmRSS from /proc/PID/status
 * before and after they subscribe, divided by N), then a burst of B signed
 * envelopes whose comms_message events every subscriber must receive: the
 * delivery latency of each (subscriber, event) from the moment its
 * envelope was written. Event ids carry the envelope's index
 * (bench_frames_make), so no clock is shared with the daemon. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "proto/uuid.h"
#include "tools/kith-bench/bench.h"

#define S_SUBS_MAX 100000u
#define S_BUF 8192u

typedef struct {
    int fd;
    bool head;            /* the 200 head was read */
    size_t len;           /* bytes in buf */
    uint32_t got;         /* burst events received */
    char buf[S_BUF];
} s_sub_t;

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: kith-bench sse --url http://IP:PORT [--token T] [-n SUBSCRIBERS] [--pid PID]\n"
            "         [--burst B --to tcp://IP:PORT|uds:///PATH --server-key ed25519:KEY [--seed HEX]]\n"
            "         [--settle-ms MS] [--timeout S] [--json]\n"
            "Subscribes N clients to /api/events (with the bearer token when pairing is on),\n"
            "reports the daemon's VmRSS growth per subscriber (--pid), then, with --to, sends B\n"
            "signed envelopes and times each comms_message event at every subscriber.\n"
            "Defaults: -n 1000 --burst 100 --settle-ms 500 --timeout 60.\n");
}

/* Handles complete lines in s->buf; returns -1 on a bad head. */
static int s_lines(s_sub_t *s, uint16_t run, const uint64_t *sent_ns, size_t burst, uint64_t now,
                   bench_samples_t *lat)
{
    size_t p = 0;
    if (!s->head) {
        int status;
        long clen;
        ssize_t h = bench_http_head(s->buf, s->len, &status, &clen);
        if (h == 0)
            return 0;
        if (h < 0 || status != 200)
            return -1;
        s->head = true;
        p = (size_t) h;
    }
    for (;;) {
        char *nl = memchr(s->buf + p, '\n', s->len - p);
        if (!nl)
            break;
        *nl = '\0';
        const char *line = s->buf + p;
        static const char pre[] = "data: {\"type\":\"comms_message\"";
        if (strncmp(line, pre, sizeof pre - 1) == 0) {
            const char *id = strstr(line, "\"id\":\"");
            uint8_t raw[16];
            if (id && proto_uuid_parse(id + 6, PROTO_UUID_TEXT_LEN, raw) == 0 &&
                bench_id_run(raw) == run) {
                uint64_t i = bench_id_index(raw);
                if (i < burst && sent_ns[i]) {
                    (void) bench_samples_add(lat, now - sent_ns[i]);
                    s->got++;
                }
            }
        }
        p = (size_t) (nl - s->buf) + 1;
    }
    memmove(s->buf, s->buf + p, s->len - p);
    s->len -= p;
    return 0;
}

int bench_mode_sse(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},      {"token", required_argument, NULL, 'k'},
        {"pid", required_argument, NULL, 'p'},      {"burst", required_argument, NULL, 'b'},
        {"to", required_argument, NULL, 't'},       {"server-key", required_argument, NULL, 'K'},
        {"seed", required_argument, NULL, 's'},     {"settle-ms", required_argument, NULL, 'S'},
        {"timeout", required_argument, NULL, 'T'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {0, 0, 0, 0}};
    const char *url = NULL, *token = NULL, *to_text = NULL, *server_key = NULL, *seed = NULL;
    uint64_t n = 1000, pid = 0, burst = 100, settle_ms = 500, timeout_s = 60;
    bool json = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (o) {
        case 'u': url = optarg; break;
        case 'k': token = optarg; break;
        case 'n': bad = bench_opt_u64("-n", optarg, 1, S_SUBS_MAX, &n); break;
        case 'p': bad = bench_opt_u64("--pid", optarg, 1, 1u << 30, &pid); break;
        case 'b': bad = bench_opt_u64("--burst", optarg, 1, 100000, &burst); break;
        case 't': to_text = optarg; break;
        case 'K': server_key = optarg; break;
        case 's': seed = optarg; break;
        case 'S': bad = bench_opt_u64("--settle-ms", optarg, 0, 60000, &settle_ms); break;
        case 'T': bad = bench_opt_u64("--timeout", optarg, 1, 86400, &timeout_s); break;
        case 'j': json = true; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return BENCH_EXIT_USAGE;
        }
        if (bad)
            return BENCH_EXIT_USAGE;
    }
    bench_ep_t gw, to;
    bench_keys_t keys;
    if (optind != argc || !url || (to_text && !server_key)) {
        fprintf(stderr, "kith-bench sse: --url is required (and --server-key with --to)\n");
        s_usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (bench_ep_parse(url, "http", "--url", &gw) != 0 ||
        (to_text && (bench_ep_parse(to_text, "tcp|uds", "--to", &to) != 0 ||
                     bench_keys_init(&keys, seed, server_key) != 0)))
        return BENCH_EXIT_USAGE;
    if (bench_fd_limit((long) n + 64) < (long) n + 16) {
        fprintf(stderr, "kith-bench sse: cannot open %llu descriptors (RLIMIT_NOFILE)\n",
                (unsigned long long) n);
        return BENCH_EXIT_FAIL;
    }

    int rc = BENCH_EXIT_FAIL, epfd = epoll_create1(EPOLL_CLOEXEC), cfd = -1;
    const char *error = NULL;
    bench_frames_t frames = {0};
    bench_samples_t lat = {0};
    uint16_t run = bench_run_tag();
    uint64_t *sent = calloc(burst, sizeof *sent);
    s_sub_t *subs = calloc(n, sizeof *subs);
    if (!subs || !sent || epfd < 0)
        goto done;
    for (size_t i = 0; i < n; i++)
        subs[i].fd = -1;
    if (to_text && bench_frames_make(&frames, &keys, burst, 64, run) != 0)
        goto done;

    char req[1024];
    int rn = snprintf(req, sizeof req,
                      "GET /api/events HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                      "%s%s%s\r\n",
                      gw.host, token ? "Authorization: Bearer " : "", token ? token : "",
                      token ? "\r\n" : "");
    size_t heads = 0, delivered = 0;
    uint64_t burst_t0 = 0, last = 0, t_subscribed = 0;
    size_t want = to_text ? (size_t) n * burst : 0;
    struct epoll_event evs[1024];
    double sub0 = bench_metric_get(&gw, "kith_sse_subscribers{stream=\"events\"}", false);
    long rss0 = pid ? bench_proc_rss_kib((long) pid) : -1;
    uint64_t t_sub = bench_now_ns(), deadline = t_sub + timeout_s * 1000000000u;
    for (size_t i = 0; i < n; i++) {
        s_sub_t *s = &subs[i];
        if ((s->fd = bench_ep_connect(&gw)) < 0 || bench_write_all(s->fd, req, (size_t) rn) != 0 ||
            bench_fd_nonblock(s->fd) != 0) {
            fprintf(stderr, "kith-bench sse: subscriber %zu cannot connect: %s\n", i,
                    strerror(errno));
            error = "a subscriber could not connect";
            goto report;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) != 0)
            goto done;
    }
    /* Every head read: all subscribed. */
    while (!error) {
        if (heads == n && !burst_t0) {
            t_subscribed = bench_now_ns();
            double subs_now = bench_metric_get(&gw, "kith_sse_subscribers{stream=\"events\"}", false);
            bench_sleep_ns(settle_ms * 1000000u);
            long rss1 = pid ? bench_proc_rss_kib((long) pid) : -1;
            if (rss0 >= 0 && rss1 >= 0)
                rss0 = rss1 - rss0; /* now the growth, in KiB */
            else
                rss0 = -1;
            if (sub0 >= 0 && subs_now >= 0 && subs_now - sub0 < (double) n)
                error = "the daemon counts fewer subscribers than were answered";
            if (!to_text || error)
                break;
            /* The burst: every frame written at once, each stamped. */
            if ((cfd = bench_ep_connect(&to)) < 0) {
                error = "cannot connect to --to";
                break;
            }
            burst_t0 = bench_now_ns();
            for (size_t i = 0; i < burst; i++) {
                sent[i] = bench_now_ns();
                if (bench_write_all(cfd, frames.buf + frames.off[i], frames.len[i]) != 0) {
                    error = "the comms connection failed";
                    break;
                }
            }
            struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
            if (bench_fd_nonblock(cfd) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev) != 0)
                error = "epoll failed";
            continue;
        }
        if (burst_t0 && delivered >= want)
            break;
        if (bench_now_ns() > deadline) {
            error = heads < n ? "timed out subscribing" : "timed out waiting for the burst";
            break;
        }
        int k = epoll_wait(epfd, evs, 1024, 100);
        uint64_t now = bench_now_ns();
        for (int e = 0; e < k && !error; e++) {
            if (evs[e].data.u64 == UINT64_MAX) { /* acks: drained, not checked */
                char sink[65536];
                ssize_t r = read(cfd, sink, sizeof sink);
                if (r == 0) {
                    error = "the daemon closed the comms connection (is the seed's key trusted?)";
                }
                continue;
            }
            s_sub_t *s = &subs[evs[e].data.u64];
            ssize_t r = read(s->fd, s->buf + s->len, S_BUF - 1 - s->len);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                error = "the daemon closed a subscriber";
                break;
            }
            if (r < 0)
                continue;
            s->len += (size_t) r;
            bool had = s->head;
            uint32_t before = s->got;
            if (s_lines(s, run, sent, burst, now, &lat) != 0) {
                error = "a subscription was refused (token? too many subscribers?)";
                break;
            }
            if (s->len == S_BUF - 1)
                s->len = 0; /* a line longer than the buffer: not ours */
            heads += !had && s->head;
            delivered += s->got - before;
            if (s->got > before)
                last = now;
        }
    }
report:;
    bench_samples_sort(&lat);
    bench_out_t out;
    bench_out_begin(&out, json, "sse");
    bench_out_num(&out, "subscribers", (double) n);
    bench_out_num(&out, "subscribed", (double) heads);
    bench_out_num(&out, "subscribe_s", t_subscribed ? (double) (t_subscribed - t_sub) / 1e9 : -1);
    if (pid)
        bench_out_num(&out, "rss_bytes_per_subscriber",
                      rss0 >= 0 ? (double) rss0 * 1024.0 / (double) n : -1);
    if (to_text) {
        bench_out_num(&out, "burst", (double) burst);
        bench_out_num(&out, "deliveries", (double) delivered);
        bench_out_lat(&out, "delivery", &lat);
        bench_out_num(&out, "burst_all_delivered_ms",
                      burst_t0 && last ? (double) (last - burst_t0) / 1e6 : -1);
        bench_out_num(&out, "deliveries_per_s",
                      burst_t0 && last > burst_t0 ? (double) delivered * 1e9 / (double) (last - burst_t0)
                                                  : -1);
    }
    if (error)
        bench_out_str(&out, "error", error);
    bench_out_end(&out);
    if (error)
        fprintf(stderr, "kith-bench sse: %s\n", error);
    else
        rc = 0;
done:
    if (subs)
        for (size_t i = 0; i < n; i++)
            if (subs[i].fd >= 0)
                close(subs[i].fd);
    if (cfd >= 0)
        close(cfd);
    if (epfd >= 0)
        close(epfd);
    free(subs);
    free(sent);
    bench_frames_free(&frames);
    bench_samples_free(&lat);
    return rc;
}
