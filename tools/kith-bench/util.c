/* tools/kith-bench/util.c — clock, samples, endpoints, sockets, one-shot
 * HTTP, /proc readers and the result printer the modes share. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "tools/kith-bench/bench.h"

/* ---------------------------------------------------------------- time */

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

void bench_sleep_ns(uint64_t ns)
{
    if (!ns)
        return;
    struct timespec ts = {.tv_sec = (time_t) (ns / 1000000000u),
                          .tv_nsec = (long) (ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---------------------------------------------------------------- samples */

int bench_samples_add(bench_samples_t *s, uint64_t ns)
{
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 4096;
        uint64_t *nv = realloc(s->v, ncap * sizeof *nv);
        if (!nv)
            return -1;
        s->v = nv;
        s->cap = ncap;
    }
    s->v[s->n++] = ns;
    return 0;
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

void bench_samples_sort(bench_samples_t *s)
{
    if (s->n > 1)
        qsort(s->v, s->n, sizeof *s->v, s_cmp_u64);
}

uint64_t bench_samples_pct(const bench_samples_t *s, double p)
{
    if (!s->n)
        return 0;
    double rank = ceil(p / 100.0 * (double) s->n);
    size_t k = rank < 1 ? 0 : (size_t) rank - 1;
    return s->v[k < s->n ? k : s->n - 1];
}

void bench_samples_free(bench_samples_t *s)
{
    free(s->v);
    *s = (bench_samples_t){0};
}

/* ---------------------------------------------------------------- options */

int bench_opt_u64(const char *opt, const char *text, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "kith-bench: %s wants an integer %llu..%llu, got \"%s\"\n", opt,
                (unsigned long long) lo, (unsigned long long) hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

int bench_opt_double(const char *opt, const char *text, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "kith-bench: %s wants a number %g..%g, got \"%s\"\n", opt, lo, hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

/* ---------------------------------------------------------------- endpoints */

static bool s_scheme_ok(const char *schemes, const char *scheme)
{
    size_t n = strlen(scheme);
    for (const char *p = schemes; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t) (bar - p) : strlen(p);
        if (len == n && strncmp(p, scheme, n) == 0)
            return true;
        p += len + (bar ? 1 : 0);
    }
    return false;
}

int bench_ep_parse(const char *text, const char *schemes, const char *what, bench_ep_t *out)
{
    memset(out, 0, sizeof *out);
    const char *sep = text ? strstr(text, "://") : NULL;
    char scheme[8];
    if (!sep || (size_t) (sep - text) >= sizeof scheme)
        goto bad;
    memcpy(scheme, text, (size_t) (sep - text));
    scheme[sep - text] = '\0';
    if (!s_scheme_ok(schemes, scheme))
        goto bad;
    const char *rest = sep + 3;
    if (strcmp(scheme, "uds") == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *) &out->sa;
        if (rest[0] != '/' || strlen(rest) >= sizeof un->sun_path)
            goto bad;
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, rest);
        out->salen = sizeof *un;
        out->kind = BENCH_EP_UDS;
        snprintf(out->host, sizeof out->host, "localhost");
        return 0;
    }
    /* host:port[/path] with an IPv4 literal or localhost */
    const char *slash = strchr(rest, '/');
    size_t hp_len = slash ? (size_t) (slash - rest) : strlen(rest);
    if (hp_len == 0 || hp_len >= sizeof out->host)
        goto bad;
    memcpy(out->host, rest, hp_len);
    out->host[hp_len] = '\0';
    char *colon = strrchr(out->host, ':');
    if (!colon)
        goto bad;
    char ip[64];
    size_t ip_len = (size_t) (colon - out->host);
    if (ip_len == 0 || ip_len >= sizeof ip)
        goto bad;
    memcpy(ip, out->host, ip_len);
    ip[ip_len] = '\0';
    if (strcmp(ip, "localhost") == 0)
        strcpy(ip, "127.0.0.1");
    uint64_t port;
    char *end;
    errno = 0;
    port = strtoull(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port == 0 || port > 65535)
        goto bad;
    struct sockaddr_in *in = (struct sockaddr_in *) &out->sa;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t) port);
    if (inet_pton(AF_INET, ip, &in->sin_addr) != 1)
        goto bad;
    out->salen = sizeof *in;
    out->kind = BENCH_EP_TCP;
    if (strcmp(scheme, "http") == 0 || strcmp(scheme, "ws") == 0) {
        const char *path = slash ? slash : "/";
        if (strlen(path) >= sizeof out->path)
            goto bad;
        strcpy(out->path, path);
    } else if (slash) {
        goto bad;
    }
    return 0;
bad:
    fprintf(stderr, "kith-bench: %s: expected %s://… (an IPv4 literal or localhost and a port"
                    "%s), got \"%s\"\n",
            what, schemes, s_scheme_ok(schemes, "uds") ? ", or uds:///absolute/path" : "",
            text ? text : "(nothing)");
    return -1;
}

int bench_ep_connect(const bench_ep_t *ep)
{
    int fd = socket(ep->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *) &ep->sa, ep->salen) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (ep->kind == BENCH_EP_TCP) {
        int one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

int bench_fd_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

long bench_fd_limit(long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if ((long) rl.rlim_cur >= want)
        return (long) rl.rlim_cur;
    if ((long) rl.rlim_max < want) {
        struct rlimit up = {(rlim_t) want, (rlim_t) want};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            return want;
    }
    rl.rlim_cur = (long) rl.rlim_max < want ? rl.rlim_max : (rlim_t) want;
    (void) setrlimit(RLIMIT_NOFILE, &rl);
    (void) getrlimit(RLIMIT_NOFILE, &rl);
    return (long) rl.rlim_cur;
}

int bench_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t) n;
    }
    return 0;
}

/* ---------------------------------------------------------------- HTTP */

int bench_ws_upgraded(int fd, uint8_t *in, size_t cap, size_t *len, const char *who)
{
    *len = 0;
    for (;;) {
        int status;
        long clen;
        ssize_t h = bench_http_head((const char *) in, *len, &status, &clen);
        if (h < 0)
            break;
        if (h > 0) {
            if (status != 101) {
                fprintf(stderr, "kith-bench %s: the server answered %d, not 101\n", who, status);
                return -1;
            }
            memmove(in, in + h, *len - (size_t) h);
            *len -= (size_t) h;
            return 0;
        }
        if (*len == cap)
            break;
        ssize_t k = read(fd, in + *len, cap - *len);
        if (k <= 0)
            break;
        *len += (size_t) k;
    }
    fprintf(stderr, "kith-bench %s: the upgrade failed\n", who);
    return -1;
}

ssize_t bench_http_head(const char *buf, size_t len, int *status, long *content_length)
{
    const char *end = NULL;
    for (size_t i = 3; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
            end = buf + i + 1;
            break;
        }
    if (!end)
        return 0;
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || !isdigit((unsigned char) buf[9]))
        return -1;
    *status = atoi(buf + 9);
    *content_length = -1;
    for (const char *line = strstr(buf, "\r\n"); line && line + 2 < end;
         line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, "Content-Length:", 15) == 0)
            *content_length = strtol(h + 15, NULL, 10);
    }
    return end - buf;
}

int bench_http(const bench_ep_t *ep, const char *method, const char *path,
               const char *extra_headers, const char *body, size_t body_len, char **body_out)
{
    if (body_out)
        *body_out = NULL;
    int fd = bench_ep_connect(ep);
    if (fd < 0)
        return 0;
    struct timeval tv = {.tv_sec = 30};
    (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char head[2048];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, ep->host, extra_headers ? extra_headers : "", body_len);
    int status = 0;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (hn < 0 || (size_t) hn >= sizeof head || bench_write_all(fd, head, (size_t) hn) != 0 ||
        (body_len && bench_write_all(fd, body, body_len) != 0))
        goto done;
    for (;;) {
        if (cap - len < 65536) {
            size_t ncap = cap ? cap * 2 : 131072;
            if (ncap > (64u << 20))
                goto done;
            char *nb = realloc(buf, ncap + 1);
            if (!nb)
                goto done;
            buf = nb;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t) n;
    }
    if (!buf)
        goto done;
    buf[len] = '\0';
    long clen;
    ssize_t h = bench_http_head(buf, len, &status, &clen);
    if (h <= 0) {
        status = 0;
        goto done;
    }
    if (body_out) {
        size_t blen = len - (size_t) h;
        char *b = malloc(blen + 1);
        if (b) {
            memcpy(b, buf + h, blen);
            b[blen] = '\0';
            *body_out = b;
        }
    }
done:
    free(buf);
    close(fd);
    return status;
}

double bench_metric(const char *text, const char *name, bool sum_labels)
{
    size_t n = strlen(name);
    double total = -1;
    for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        if (line[0] == '#' || strncmp(line, name, n) != 0)
            continue;
        char c = line[n];
        if (c == ' ' || (sum_labels && c == '{')) {
            const char *v = c == ' ' ? line + n : strchr(line + n, '}');
            if (!v)
                continue;
            while (*v == '}' || *v == ' ')
                v++;
            double x = strtod(v, NULL);
            total = total < 0 ? x : total + x;
            if (!sum_labels)
                return total;
        }
    }
    return total;
}

double bench_metric_get(const bench_ep_t *ep, const char *name, bool sum_labels)
{
    char *body = NULL;
    int st = bench_http(ep, "GET", "/metrics", NULL, NULL, 0, &body);
    double v = st == 200 && body ? bench_metric(body, name, sum_labels) : -1;
    free(body);
    return v;
}

/* ---------------------------------------------------------------- /proc */

uint64_t bench_proc_cpu_ns(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command name (which may hold spaces): state is 3,
     * utime 14, stime 15. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p += 2;
    unsigned long long ut = 0, st = 0;
    int field = 3;
    for (char *tok = strtok(p, " "); tok; tok = strtok(NULL, " "), field++) {
        if (field == 14)
            ut = strtoull(tok, NULL, 10);
        else if (field == 15) {
            st = strtoull(tok, NULL, 10);
            break;
        }
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    return (uint64_t) ((ut + st) * (1000000000.0 / (double) hz));
}

long bench_proc_rss_kib(long pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}

uint64_t bench_self_cpu_ns(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (uint64_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
           (uint64_t) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
}

/* ---------------------------------------------------------------- results */

void bench_out_begin(bench_out_t *o, bool json, const char *mode)
{
    o->json = json;
    o->first = true;
    if (json)
        printf("{\"mode\":\"%s\"", mode);
    else
        printf("kith-bench %s\n", mode);
    o->first = false;
}

void bench_out_num(bench_out_t *o, const char *key, double v)
{
    if (!isfinite(v))
        v = -1;
    if (o->json)
        printf(",\"%s\":%.6g", key, v);
    else
        printf("  %-28s %.6g\n", key, v);
}

void bench_out_str(bench_out_t *o, const char *key, const char *v)
{
    if (o->json)
        printf(",\"%s\":\"%s\"", key, v);
    else
        printf("  %-28s %s\n", key, v);
}

void bench_out_lat(bench_out_t *o, const char *prefix, const bench_samples_t *s)
{
    static const struct {
        const char *name;
        double p;
    } pcts[] = {{"p50", 50}, {"p99", 99}, {"p999", 99.9}, {"max", 100}};
    char key[96];
    for (size_t i = 0; i < sizeof pcts / sizeof pcts[0]; i++) {
        snprintf(key, sizeof key, "%s_%s_us", prefix, pcts[i].name);
        bench_out_num(o, key, (double) bench_samples_pct(s, pcts[i].p) / 1000.0);
    }
}

void bench_out_end(bench_out_t *o)
{
    if (o->json)
        printf("}\n");
    fflush(stdout);
}
