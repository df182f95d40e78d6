/* tools/kith-bench/events.c — `kith-bench events`: plain event lines per
 * second on one connection to kith's event listener, counted by what the
 * daemon says it queued (kith_events_queued_total on /metrics, so a lost
 * line shows), run twice: alone, and with a concurrent GET /health probe
 * whose latency is compared with the same probe on an idle daemon. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/kith-bench/bench.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: kith-bench events --to tcp://IP:PORT|uds:///PATH --gateway http://IP:PORT\n"
            "         [-n LINES] [--probes N] [--no-probe-run] [--probe-first]\n"
            "         [--probe-rate LINES_PER_S] [--timeout S] [--json]\n"
            "Writes LINES JSON event lines on one connection to the plain event listener\n"
            "(comms.event_address) and waits until /metrics counts them all queued (or\n"
            "skipped). Then again while GET /health is probed back to back on one keep-alive\n"
            "connection; the probe's latency is compared with N probes of the idle daemon.\n"
            "--probe-first: the probed run before the plain one, on a daemon whose agents\n"
            "run a turn per line: after the plain run they are still running its LINES\n"
            "turns, and the probe would time those, not the lines of its own run.\n"
            "--probe-rate: the probed run offers its lines at this pace (0, the default:\n"
            "as fast as the connection takes them); probed_lines_per_s says what it got.\n"
            "Defaults: -n 200000 --probes 500 --timeout 120.\n");
}

/* ---------------------------------------------------------------- the probe */

typedef struct {
    const bench_ep_t *gw;
    int fd;
    char buf[4096];
    size_t len;
} s_probe_t;

/* One GET /health on the probe's keep-alive connection (reconnecting when
 * the server closed it). Returns the latency in ns, or 0 on failure. */
static uint64_t s_probe_once(s_probe_t *p)
{
    char req[256];
    int rn = snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: %s\r\n\r\n", p->gw->host);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (p->fd < 0) {
            p->fd = bench_ep_connect(p->gw);
            p->len = 0;
            if (p->fd < 0)
                return 0;
        }
        uint64_t t0 = bench_now_ns();
        if (bench_write_all(p->fd, req, (size_t) rn) == 0) {
            for (;;) {
                int status;
                long clen;
                ssize_t h = bench_http_head(p->buf, p->len, &status, &clen);
                if (h > 0 && clen >= 0 && p->len >= (size_t) h + (size_t) clen) {
                    uint64_t lat = bench_now_ns() - t0;
                    size_t used = (size_t) h + (size_t) clen;
                    memmove(p->buf, p->buf + used, p->len - used);
                    p->len -= used;
                    return status == 200 ? lat : 0;
                }
                if (h < 0 || p->len == sizeof p->buf)
                    break;
                ssize_t n = read(p->fd, p->buf + p->len, sizeof p->buf - p->len);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    break;
                p->len += (size_t) n;
            }
        }
        close(p->fd);
        p->fd = -1;
    }
    return 0;
}

typedef struct {
    s_probe_t probe;
    atomic_bool stop;
    bench_samples_t lat;
    size_t failures;
} s_prober_t;

static void *s_prober(void *arg)
{
    s_prober_t *pr = arg;
    while (!atomic_load(&pr->stop)) {
        uint64_t ns = s_probe_once(&pr->probe);
        if (ns)
            (void) bench_samples_add(&pr->lat, ns);
        else
            pr->failures++;
    }
    return NULL;
}

/* Under a real-time policy (tools/bench runs under `chrt -f`) threads of
 * one priority never preempt each other: the probe would wait for the
 * writer to block, timing the load generator rather than kith. One step
 * above the writer, it runs as soon as its answer comes. */
static void s_probe_above_writer(pthread_t th)
{
    int policy;
    struct sched_param sp;
    if (pthread_getschedparam(pthread_self(), &policy, &sp) != 0 ||
        (policy != SCHED_FIFO && policy != SCHED_RR) ||
        sp.sched_priority >= sched_get_priority_max(policy))
        return;
    sp.sched_priority++;
    (void) pthread_setschedparam(th, policy, &sp);
}

/* ---------------------------------------------------------------- the writer */

typedef struct {
    const bench_ep_t *to;
    const char *payload;
    size_t len;
    double bytes_per_s;    /* pace; 0: as fast as the socket takes them */
    atomic_bool written;   /* every byte handed to the kernel */
    int error;             /* errno of a failed connect/write, 0 */
} s_writer_t;

/* The writer runs at the ordinary priority even when tools/bench runs the
 * load generator under `chrt -f`: a real-time writer would preempt the
 * daemon whenever its socket had room, and the probe would time the
 * writer's scheduling instead of kith. The probe alone stays real-time. */
static void s_writer_ordinary(void)
{
    struct sched_param sp = {.sched_priority = 0};
    (void) pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp);
}

static void *s_writer(void *arg)
{
    s_writer_t *w = arg;
    s_writer_ordinary();
    int fd = bench_ep_connect(w->to);
    if (fd < 0)
        w->error = errno ? errno : EIO;
    else if (w->bytes_per_s <= 0) {
        if (bench_write_all(fd, w->payload, w->len) != 0)
            w->error = errno ? errno : EIO;
    } else {
        /* Paced: what is due by now, in pieces of at most 64 KiB, then a
         * short sleep; a writer that falls behind catches up at once. */
        uint64_t t0 = bench_now_ns();
        size_t sent = 0;
        while (sent < w->len) {
            double due_d = w->bytes_per_s * (double) (bench_now_ns() - t0) / 1e9;
            size_t due = due_d >= (double) w->len ? w->len : (size_t) due_d;
            if (due <= sent) {
                bench_sleep_ns(100000u);
                continue;
            }
            size_t n = due - sent > 65536 ? 65536 : due - sent;
            if (bench_write_all(fd, w->payload + sent, n) != 0) {
                w->error = errno ? errno : EIO;
                break;
            }
            sent += n;
        }
    }
    atomic_store(&w->written, true);
    if (fd >= 0) {
        /* Done sending; the daemon may keep the connection: close it after
         * the count is read (the caller waits on /metrics, not on EOF). */
        (void) shutdown(fd, SHUT_WR);
        close(fd);
    }
    return NULL;
}

typedef struct {
    double secs;        /* first byte written → all counted */
    double queued;      /* lines the daemon queued in this run */
    double skipped;     /* ...and skipped */
    const char *error;
} s_result_t;

/* One run: LINES lines on one connection; waits (bounded) until /metrics
 * counts them all as queued or skipped. */
static void s_run(const bench_ep_t *to, const bench_ep_t *gw, const char *payload, size_t len,
                  size_t lines, double lines_per_s, unsigned timeout_s, s_result_t *res)
{
    memset(res, 0, sizeof *res);
    double q0 = bench_metric_get(gw, "kith_events_queued_total", false);
    double s0 = bench_metric_get(gw, "kith_events_skipped_total", false);
    if (q0 < 0 || s0 < 0) {
        res->error = "cannot read kith_events_queued_total from /metrics";
        return;
    }
    s_writer_t w = {.to = to, .payload = payload, .len = len,
                    .bytes_per_s = lines_per_s > 0 ? lines_per_s * (double) len / (double) lines : 0};
    pthread_t th;
    uint64_t t0 = bench_now_ns(), deadline = t0 + (uint64_t) timeout_s * 1000000000u;
    if (pthread_create(&th, NULL, s_writer, &w) != 0) {
        res->error = "cannot start the writer thread";
        return;
    }
    double q = q0, s = s0;
    uint64_t t_done = 0;
    while (bench_now_ns() < deadline) {
        /* Polling costs the daemon a /metrics answer: seldom while the
         * lines are still being written, often once they all are. */
        bench_sleep_ns(atomic_load(&w.written) ? 2000000u : 20000000u);
        double qq = bench_metric_get(gw, "kith_events_queued_total", false);
        double ss = bench_metric_get(gw, "kith_events_skipped_total", false);
        if (qq >= 0)
            q = qq;
        if (ss >= 0)
            s = ss;
        if (q - q0 + s - s0 >= (double) lines) {
            t_done = bench_now_ns();
            break;
        }
        if (w.error)
            break;
    }
    pthread_join(th, NULL);
    res->queued = q - q0;
    res->skipped = s - s0;
    res->secs = (double) ((t_done ? t_done : bench_now_ns()) - t0) / 1e9;
    if (w.error)
        res->error = "the event connection failed (is --to the plain event listener?)";
    else if (!t_done)
        res->error = "timed out before every line was counted";
}

int bench_mode_events(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, 't'},     {"gateway", required_argument, NULL, 'g'},
        {"probes", required_argument, NULL, 'P'}, {"no-probe-run", no_argument, NULL, 'N'},
        {"timeout", required_argument, NULL, 'T'}, {"json", no_argument, NULL, 'j'},
        {"probe-first", no_argument, NULL, 'F'},  {"probe-rate", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},         {0, 0, 0, 0}};
    const char *to_text = NULL, *gw_text = NULL;
    uint64_t lines = 200000, probes = 500, timeout_s = 120;
    bool json = false, probe_run = true, probe_first = false;
    uint64_t probe_rate = 0;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (o) {
        case 't': to_text = optarg; break;
        case 'g': gw_text = optarg; break;
        case 'n': bad = bench_opt_u64("-n", optarg, 1, 50000000, &lines); break;
        case 'P': bad = bench_opt_u64("--probes", optarg, 1, 1000000, &probes); break;
        case 'N': probe_run = false; break;
        case 'F': probe_first = true; break;
        case 'R': bad = bench_opt_u64("--probe-rate", optarg, 0, 100000000, &probe_rate); break;
        case 'T': bad = bench_opt_u64("--timeout", optarg, 1, 86400, &timeout_s); break;
        case 'j': json = true; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return BENCH_EXIT_USAGE;
        }
        if (bad)
            return BENCH_EXIT_USAGE;
    }
    bench_ep_t to, gw;
    if (optind != argc || !to_text || !gw_text) {
        fprintf(stderr, "kith-bench events: --to and --gateway are required\n");
        s_usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (bench_ep_parse(to_text, "tcp|uds", "--to", &to) != 0 ||
        bench_ep_parse(gw_text, "http", "--gateway", &gw) != 0)
        return BENCH_EXIT_USAGE;

    /* The lines, built before any clock starts. */
    size_t cap = (size_t) lines * 32 + 1, len = 0;
    char *payload = malloc(cap);
    if (!payload) {
        fprintf(stderr, "kith-bench events: out of memory\n");
        return BENCH_EXIT_FAIL;
    }
    for (uint64_t i = 0; i < lines; i++)
        len += (size_t) snprintf(payload + len, cap - len, "{\"body\":\"event %llu\"}\n",
                                 (unsigned long long) i);

    int rc = BENCH_EXIT_FAIL;
    s_prober_t idle = {.probe = {.gw = &gw, .fd = -1}};
    for (uint64_t i = 0; i < probes; i++) {
        uint64_t ns = s_probe_once(&idle.probe);
        if (ns)
            (void) bench_samples_add(&idle.lat, ns);
        else
            idle.failures++;
    }
    if (idle.probe.fd >= 0)
        close(idle.probe.fd);

    s_result_t plain = {0}, loaded = {0};
    if (!probe_first || !probe_run)
        s_run(&to, &gw, payload, len, lines, 0, (unsigned) timeout_s, &plain);
    s_prober_t busy = {.probe = {.gw = &gw, .fd = -1}};
    if (probe_run && !plain.error) {
        pthread_t th;
        if (pthread_create(&th, NULL, s_prober, &busy) != 0) {
            loaded.error = "cannot start the probe thread";
        } else {
            s_probe_above_writer(th);
            s_run(&to, &gw, payload, len, lines, (double) probe_rate, (unsigned) timeout_s,
                  &loaded);
            atomic_store(&busy.stop, true);
            pthread_join(th, NULL);
        }
        if (busy.probe.fd >= 0)
            close(busy.probe.fd);
        if (probe_first && !loaded.error)
            s_run(&to, &gw, payload, len, lines, 0, (unsigned) timeout_s, &plain);
    }
    bench_samples_sort(&idle.lat);
    bench_samples_sort(&busy.lat);
    bench_out_t out;
    bench_out_begin(&out, json, "events");
    bench_out_num(&out, "lines", (double) lines);
    bench_out_num(&out, "queued", plain.queued);
    bench_out_num(&out, "skipped", plain.skipped);
    bench_out_num(&out, "lost", (double) lines - plain.queued - plain.skipped);
    bench_out_num(&out, "seconds", plain.secs);
    bench_out_num(&out, "lines_per_s", plain.queued / plain.secs);
    bench_out_lat(&out, "health_idle", &idle.lat);
    if (probe_run) {
        bench_out_num(&out, "probe_rate", (double) probe_rate);
        bench_out_num(&out, "probed_queued", loaded.queued);
        bench_out_num(&out, "probed_lost", (double) lines - loaded.queued - loaded.skipped);
        bench_out_num(&out, "probed_lines_per_s", loaded.queued / loaded.secs);
        bench_out_num(&out, "health_loaded_probes", (double) busy.lat.n);
        bench_out_lat(&out, "health_loaded", &busy.lat);
        uint64_t i99 = bench_samples_pct(&idle.lat, 99), b99 = bench_samples_pct(&busy.lat, 99);
        uint64_t i50 = bench_samples_pct(&idle.lat, 50), b50 = bench_samples_pct(&busy.lat, 50);
        bench_out_num(&out, "health_p99_loaded_over_idle", i99 ? (double) b99 / (double) i99 : -1);
        bench_out_num(&out, "health_p50_loaded_over_idle", i50 ? (double) b50 / (double) i50 : -1);
    }
    bench_out_num(&out, "probe_failures", (double) (idle.failures + busy.failures));
    const char *error = plain.error ? plain.error : loaded.error;
    if (error)
        bench_out_str(&out, "error", error);
    bench_out_end(&out);
    if (error)
        fprintf(stderr, "kith-bench events: %s\n", error);
    else if (plain.queued + plain.skipped < (double) lines)
        fprintf(stderr, "kith-bench events: lines lost\n");
    else
        rc = 0;
    bench_samples_free(&idle.lat);
    bench_samples_free(&busy.lat);
    free(payload);
    return rc;
}
