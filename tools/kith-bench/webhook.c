/* tools/kith-bench/webhook.c — `kith-bench webhook`: POST /webhook over C
 * keep-alive connections (one request in flight on each), at saturation or
 * at an open-loop offered rate: requests/s, latency percentiles (to the
 * 202, which kith sends once the entry is durable) and the statuses seen.
 *
 * --dispatch times webhook → worker dispatch (DESIGN §12: p99 ≤ 200 µs at
 * 10,000 requests/s): it subscribes to /api/events first, gives request i
 * the session "bench-<run>-<i>" (WIRE §17.4), and times each from its send
 * (its due time at a fixed rate) to the agent_start event of that session
 * (WIRE §19.6: the turn is taken from its queue). Every request must get
 * its agent_start, else the run failed. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "tools/kith-bench/bench.h"

#define S_CONNS_MAX 4096u
#define S_BUF 16384u

typedef struct {
    int fd;
    bool busy;             /* a request is in flight */
    uint64_t t;            /* its send (or due) time */
    char out[1024];
    size_t out_off, out_len;
    char in[S_BUF];
    size_t in_len;
} s_conn_t;

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: kith-bench webhook --url http://IP:PORT [--token T] [-n N] [-c CONNS]\n"
            "         [--rate PER_S] [--dispatch] [--timeout S] [--json]\n"
            "POSTs N {\"message\":…} bodies to /webhook, one in flight per connection; --rate 0\n"
            "(default) is saturation. --dispatch also times each request to its turn's\n"
            "agent_start on /api/events (one session per request).\n"
            "Defaults: -n 20000 -c 16 --timeout 120.\n");
}

/* The /api/events subscriber of --dispatch: agent_start lines of this
 * run's sessions, timed against sent[i]. */
typedef struct {
    int fd;
    bool head;              /* the 200 head was read */
    char buf[S_BUF];
    size_t len;
    char prefix[48];        /* "\"session_id\":\"bench-<run>-" */
    const uint64_t *sent;   /* send time of request i; 0 while unsent */
    uint8_t *seen;          /* an agent_start came for request i */
    size_t n;
    size_t got;
    bench_samples_t lat;
} s_disp_t;

static int s_disp_open(s_disp_t *d, const bench_ep_t *gw, const char *token, int epfd,
                       size_t slot)
{
    d->fd = bench_ep_connect(gw);
    if (d->fd < 0)
        return -1;
    char req[1024];
    int n = snprintf(req, sizeof req, "GET /api/events HTTP/1.1\r\nHost: %s\r\n%s%s%s\r\n",
                     gw->host, token ? "Authorization: Bearer " : "", token ? token : "",
                     token ? "\r\n" : "");
    if (bench_write_all(d->fd, req, (size_t) n) != 0 || bench_fd_nonblock(d->fd) != 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = slot};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, d->fd, &ev);
}

/* Reads what the stream has; -1 when it ended or failed. */
static int s_disp_read(s_disp_t *d, uint64_t now)
{
    for (;;) {
        ssize_t r = read(d->fd, d->buf + d->len, S_BUF - 1 - d->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r <= 0)
            return -1;
        d->len += (size_t) r;
        d->buf[d->len] = '\0';
        size_t p = 0;
        if (!d->head) {
            int status;
            long clen;
            ssize_t h = bench_http_head(d->buf, d->len, &status, &clen);
            if (h < 0 || (h > 0 && status != 200))
                return -1;
            if (h == 0)
                continue;
            d->head = true;
            p = (size_t) h;
        }
        static const char pre[] = "data: {\"type\":\"agent_start\"";
        for (;;) {
            char *nl = memchr(d->buf + p, '\n', d->len - p);
            if (!nl)
                break;
            *nl = '\0';
            const char *line = d->buf + p;
            p = (size_t) (nl - d->buf) + 1;
            if (strncmp(line, pre, sizeof pre - 1) != 0)
                continue;
            const char *m = strstr(line, d->prefix);
            if (!m)
                continue;
            char *end;
            unsigned long long i = strtoull(m + strlen(d->prefix), &end, 10);
            if (*end != '"' || i >= d->n || d->seen[i] || !d->sent[i])
                continue;
            d->seen[i] = 1;
            d->got++;
            (void) bench_samples_add(&d->lat, now > d->sent[i] ? now - d->sent[i] : 0);
        }
        if (p == 0 && d->len == S_BUF - 1)
            return -1; /* a line longer than the buffer */
        memmove(d->buf, d->buf + p, d->len - p);
        d->len -= p;
    }
}

static int s_connect(const bench_ep_t *ep, int epfd, s_conn_t *c, size_t slot)
{
    if (c->fd >= 0) {
        (void) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->in_len = 0;
    c->fd = bench_ep_connect(ep);
    if (c->fd < 0 || bench_fd_nonblock(c->fd) != 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = slot};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

int bench_mode_webhook(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},     {"token", required_argument, NULL, 'k'},
        {"rate", required_argument, NULL, 'r'},    {"dispatch", no_argument, NULL, 'D'},
        {"timeout", required_argument, NULL, 'T'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},          {0, 0, 0, 0}};
    const char *url = NULL, *token = NULL;
    uint64_t n = 20000, conns = 16, timeout_s = 120;
    double rate = 0;
    bool json = false, dispatch = false;
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
        case 'D': dispatch = true; break;
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
        fprintf(stderr, "kith-bench webhook: --url is required\n");
        s_usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (bench_ep_parse(url, "http", "--url", &gw) != 0)
        return BENCH_EXIT_USAGE;
    bench_fd_limit((long) conns + 64);

    int rc = BENCH_EXIT_FAIL, epfd = epoll_create1(EPOLL_CLOEXEC);
    s_conn_t *cs = calloc(conns, sizeof *cs);
    bench_samples_t lat = {0};
    const char *error = NULL;
    uint64_t st_202 = 0, st_other = 0, last_other = 0, done_n = 0;
    s_disp_t disp = {.fd = -1, .n = n};
    uint64_t *sent = NULL;
    uint16_t run = bench_run_tag();
    if (!cs || epfd < 0)
        goto done;
    if (dispatch) {
        disp.sent = sent = calloc(n, sizeof *sent);
        disp.seen = calloc(n, 1);
        snprintf(disp.prefix, sizeof disp.prefix, "\"session_id\":\"bench-%u-", (unsigned) run);
        if (!sent || !disp.seen || s_disp_open(&disp, &gw, token, epfd, conns) != 0) {
            fprintf(stderr, "kith-bench webhook: cannot subscribe to /api/events\n");
            goto done;
        }
        /* Subscribed before the first request, so no agent_start is missed. */
        for (uint64_t until = bench_now_ns() + 10000000000u; !disp.head;) {
            struct epoll_event ev;
            if (bench_now_ns() > until || (epoll_wait(epfd, &ev, 1, 100) > 0 && ev.data.u64 == conns &&
                                           s_disp_read(&disp, bench_now_ns()) != 0)) {
                fprintf(stderr, "kith-bench webhook: /api/events did not answer 200\n");
                goto done;
            }
        }
    }
    for (size_t i = 0; i < conns; i++) {
        cs[i].fd = -1;
        if (s_connect(&gw, epfd, &cs[i], i) != 0) {
            fprintf(stderr, "kith-bench webhook: cannot connect to %s: %s\n", url, strerror(errno));
            goto done;
        }
    }
    uint64_t t0 = bench_now_ns(), deadline = t0 + timeout_s * 1000000000u;
    size_t next = 0;
    struct epoll_event evs[256];
    while (done_n < n && !error) {
        uint64_t now = bench_now_ns();
        if (now > deadline) {
            error = "timed out";
            break;
        }
        size_t due = n;
        if (rate > 0) {
            double d = (double) (now - t0) * rate / 1e9 + 1;
            due = d < (double) n ? (size_t) d : n;
        }
        for (size_t i = 0; i < conns && next < due; i++) {
            s_conn_t *c = &cs[i];
            if (c->busy)
                continue;
            char body[128];
            int bl = dispatch ? snprintf(body, sizeof body,
                                         "{\"message\":\"bench %zu\",\"session_id\":\"bench-%u-%zu\"}",
                                         next, (unsigned) run, next)
                              : snprintf(body, sizeof body, "{\"message\":\"bench %zu\"}", next);
            int hl = snprintf(c->out, sizeof c->out,
                              "POST /webhook HTTP/1.1\r\nHost: %s\r\n%s%s%s"
                              "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                              gw.host, token ? "Authorization: Bearer " : "", token ? token : "",
                              token ? "\r\n" : "", bl, body);
            c->out_off = 0;
            c->out_len = (size_t) hl;
            c->t = rate > 0 ? t0 + (uint64_t) ((double) next * 1e9 / rate) : now;
            c->busy = true;
            if (sent)
                sent[next] = c->t;
            next++;
            /* A request is small: it fits the socket buffer whole. */
            ssize_t w = write(c->fd, c->out, c->out_len);
            if (w != (ssize_t) c->out_len) {
                error = "a request could not be written whole";
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
        for (int e = 0; e < k && !error; e++) {
            size_t slot = (size_t) evs[e].data.u64;
            if (slot == conns) {
                if (s_disp_read(&disp, now) != 0)
                    error = "the /api/events stream ended";
                continue;
            }
            s_conn_t *c = &cs[slot];
            ssize_t r = read(c->fd, c->in + c->in_len, S_BUF - c->in_len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                if (c->busy) {
                    error = "the daemon closed a connection with a request in flight";
                    break;
                }
                if (s_connect(&gw, epfd, c, slot) != 0)
                    error = "cannot reconnect";
                continue;
            }
            c->in_len += (size_t) r;
            int status;
            long clen;
            ssize_t h = bench_http_head(c->in, c->in_len, &status, &clen);
            if (h < 0 || (h > 0 && clen < 0)) {
                error = "a malformed answer";
                break;
            }
            if (h == 0 || c->in_len < (size_t) h + (size_t) clen)
                continue;
            if (c->in_len != (size_t) h + (size_t) clen) {
                error = "bytes after an answer";
                break;
            }
            c->in_len = 0;
            c->busy = false;
            done_n++;
            (void) bench_samples_add(&lat, now - c->t);
            if (status == 202) {
                st_202++;
            } else {
                st_other++;
                last_other = (uint64_t) status;
            }
        }
    }
    double secs = (double) (bench_now_ns() - t0) / 1e9;
    /* The turns may start after the last 202: wait for every agent_start
     * until --timeout, and at least 30 s after the last answer. */
    uint64_t until = bench_now_ns() + 30000000000u;
    if (until < deadline)
        until = deadline;
    while (dispatch && !error && disp.got < done_n) {
        if (bench_now_ns() > until) {
            error = "not every request's agent_start came in time (--timeout)";
            break;
        }
        int k = epoll_wait(epfd, evs, 256, 100);
        for (int e = 0; e < k; e++)
            if (evs[e].data.u64 == conns && s_disp_read(&disp, bench_now_ns()) != 0)
                error = "the /api/events stream ended";
    }
    bench_samples_sort(&lat);
    bench_out_t out;
    bench_out_begin(&out, json, "webhook");
    bench_out_num(&out, "connections", (double) conns);
    bench_out_num(&out, "requests", (double) n);
    bench_out_num(&out, "offered_rate", rate);
    bench_out_num(&out, "answered", (double) done_n);
    bench_out_num(&out, "accepted_202", (double) st_202);
    bench_out_num(&out, "other_status", (double) st_other);
    if (st_other)
        bench_out_num(&out, "last_other_status", (double) last_other);
    bench_out_num(&out, "seconds", secs);
    bench_out_num(&out, "requests_per_s", (double) done_n / secs);
    bench_out_lat(&out, "answer", &lat);
    if (dispatch) {
        bench_samples_sort(&disp.lat);
        bench_out_num(&out, "dispatched", (double) disp.got);
        bench_out_lat(&out, "dispatch", &disp.lat);
    }
    if (error)
        bench_out_str(&out, "error", error);
    bench_out_end(&out);
    if (error)
        fprintf(stderr, "kith-bench webhook: %s\n", error);
    else if (st_other)
        fprintf(stderr, "kith-bench webhook: %llu answers were not 202 (last %llu)\n",
                (unsigned long long) st_other, (unsigned long long) last_other);
    else
        rc = 0;
done:
    if (cs)
        for (size_t i = 0; i < conns; i++)
            if (cs[i].fd >= 0)
                close(cs[i].fd);
    free(cs);
    if (disp.fd >= 0)
        close(disp.fd);
    free(sent);
    free(disp.seen);
    bench_samples_free(&disp.lat);
    if (epfd >= 0)
        close(epfd);
    bench_samples_free(&lat);
    return rc;
}
