/* tools/kith/admin_http.c — one request to the running daemon's loopback
 * admin routes: the address from the configuration, a nonblocking socket
 * held to one deadline, the whole answer read (bounded) and split. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/clock.h"
#include "router/net/addr.h"
#include "router/state/config.h"
#include "router/state/home.h"
#include "tools/kith/admin_http.h"
#include "tools/kith/cli_opts.h"

/* Waits for fd to be ready for `events` until the deadline. */
static int s_wait(int fd, short events, uint64_t deadline)
{
    uint64_t now = router_clock_mono_ms();
    if (now >= deadline)
        return -1;
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, (int) (deadline - now)) == 1 ? 0 : -1;
}

/* Sends all of data[len] before the deadline. */
static int s_send_all(int fd, const char *data, size_t len, uint64_t deadline)
{
    while (len > 0) {
        if (s_wait(fd, POLLOUT, deadline) != 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return -1;
        data += n;
        len -= (size_t) n;
    }
    return 0;
}

/* The exchange itself: the raw answer (head and body) into *raw.
 * *connected says whether a failure came after the connection was made
 * (a daemon that is there but does not answer) or before (none there). */
static int s_exchange(const router_addr_t *addr, const char *req, size_t req_len, char **raw,
                      size_t *raw_len, bool *connected)
{
    *connected = false;
    uint64_t deadline = router_clock_mono_ms() + KITH_ADMIN_TIMEOUT_MS;
    char *buf = NULL;
    size_t got = 0, cap = 0;
    int fd = socket(addr->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, &addr->u.sa, addr->len) != 0 && errno != EINPROGRESS)
        goto fail;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (s_wait(fd, POLLOUT, deadline) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr) {
        errno = soerr ? soerr : ETIMEDOUT;
        goto fail;
    }
    *connected = true;
    if (s_send_all(fd, req, req_len, deadline) != 0)
        goto fail;
    for (;;) {
        if (got + 4096 + 1 > cap) {
            if (cap >= KITH_ADMIN_ANSWER_MAX) {
                errno = EFBIG;
                goto fail;
            }
            size_t ncap = cap ? cap * 2 : 16384;
            char *n = realloc(buf, ncap);
            if (!n)
                goto fail;
            buf = n;
            cap = ncap;
        }
        if (s_wait(fd, POLLIN, deadline) != 0) {
            errno = ETIMEDOUT;
            goto fail;
        }
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;
        got += (size_t) n;
    }
    buf[got] = '\0';
    close(fd);
    *raw = buf;
    *raw_len = got;
    return 0;
fail: {
    int e = errno;
    free(buf);
    close(fd);
    errno = e;
    return -1;
}
}

int kith_admin_call(const char *cmd, const char *home_flag, const char *config_flag,
                    const char *method, const char *path, const char *body,
                    kith_admin_answer_t *ans, char *err, size_t errcap)
{
    memset(ans, 0, sizeof *ans);
    char home[ROUTER_PATH_MAX], cerr[KITH_ERR_MAX] = "";
    router_config_t cfg;
    bool used = false;
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        snprintf(err, errcap, "kith %s: no home directory: pass --home DIR or set KITH_HOME", cmd);
        return -1;
    }
    if (router_config_load(&cfg, home, config_flag, &used, cerr, sizeof cerr) != 0 ||
        router_config_check(&cfg, cerr, sizeof cerr) != 0) {
        snprintf(err, errcap, "kith %s: %s", cmd, cerr);
        return -1;
    }
    if (cfg.gateway.port == 0) {
        snprintf(err, errcap, "kith %s: gateway.port is 0 (chosen at start): set a port", cmd);
        return -1;
    }
    router_addr_t addr;
    router_addr_err_t why;
    if (router_addr_from_host(cfg.gateway.host, cfg.gateway.port, &addr, &why) != 0) {
        snprintf(err, errcap, "kith %s: gateway.host %s: %s", cmd, cfg.gateway.host,
                 router_addr_err_str(why));
        return -1;
    }
    char shown[ROUTER_ADDR_STR_MAX] = "?";
    (void) router_addr_format(&addr, shown, sizeof shown);
    size_t blen = body ? strlen(body) : 0;
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      "%sContent-Length: %zu\r\n\r\n",
                      method, path, body ? "Content-Type: application/json\r\n" : "", blen);
    char *req = hn > 0 && (size_t) hn < sizeof head ? malloc((size_t) hn + blen) : NULL;
    if (!req) {
        snprintf(err, errcap, "kith %s: out of memory", cmd);
        return -1;
    }
    memcpy(req, head, (size_t) hn);
    if (blen)
        memcpy(req + hn, body, blen);
    char *raw = NULL;
    size_t raw_len = 0;
    bool connected;
    int rc = s_exchange(&addr, req, (size_t) hn + blen, &raw, &raw_len, &connected);
    free(req);
    if (rc != 0) {
        int e = errno;
        if (!connected)
            snprintf(err, errcap, "kith %s: the daemon is not running at http://%s (%s); start "
                     "it (kith daemon), or pass the --home or --config it runs with", cmd,
                     shown, strerror(e));
        else if (e == ETIMEDOUT)
            snprintf(err, errcap, "kith %s: http://%s took the request but did not answer "
                                  "within %u s (is the daemon stuck?)",
                     cmd, shown, KITH_ADMIN_TIMEOUT_MS / 1000);
        else if (e == EFBIG)
            snprintf(err, errcap, "kith %s: http://%s answered more than %u KiB; not read", cmd,
                     shown, KITH_ADMIN_ANSWER_MAX / 1024);
        else
            snprintf(err, errcap, "kith %s: the exchange with http://%s failed (%s)", cmd, shown,
                     strerror(e));
        return -1;
    }
    const char *sep = strstr(raw, "\r\n\r\n");
    if (!sep || sscanf(raw, "HTTP/1.1 %d", &ans->status) != 1) {
        snprintf(err, errcap, "kith %s: http://%s answered something that is not HTTP", cmd,
                 shown);
        free(raw);
        return -1;
    }
    size_t off = (size_t) (sep + 4 - raw);
    ans->body_len = raw_len - off;
    memmove(raw, raw + off, ans->body_len + 1);
    ans->body = raw;
    return 0;
}

void kith_admin_answer_free(kith_admin_answer_t *ans)
{
    if (!ans)
        return;
    free(ans->body);
    ans->body = NULL;
    ans->body_len = 0;
}

const char *kith_admin_line(const char *text, char out[KITH_ADMIN_LINE_CAP])
{
    size_t n = strnlen(text, KITH_ADMIN_SHOWN_MAX + 1);
    bool cut = n > KITH_ADMIN_SHOWN_MAX;
    if (cut) /* before the character text[n] is inside, not through it */
        for (n = KITH_ADMIN_SHOWN_MAX; n > 0 && ((unsigned char) text[n] & 0xC0) == 0x80;)
            n--;
    memcpy(out, text, n);
    memcpy(out + n, cut ? "…" : "", cut ? sizeof "…" : 1);
    return kith_one_line(out);
}
