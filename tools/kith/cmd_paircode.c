/* tools/kith/cmd_paircode.c — `kith paircode`: ask the running daemon for a
 * fresh one-time pairing code (GET /admin/paircode on the configured
 * gateway address, a loopback route) and print it. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/clock.h"
#include "router/net/addr.h"
#include "router/state/config.h"
#include "router/state/home.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

#define S_TIMEOUT_MS 10000      /* the whole exchange */
#define S_ANSWER_MAX 4096u      /* octets of the answer read */

static const char s_usage[] =
    "usage: kith paircode [--home DIR] [--config FILE]\n"
    "\n"
    "Asks the running daemon (gateway.host:gateway.port) for a new one-time\n"
    "pairing code and prints it. Pair with: curl -X POST -H 'X-Pairing-Code: CODE'\n"
    "http://HOST:PORT/pair. Exit 0 with the code, 1 when the daemon is not running.\n"
    "\n"
    "  --home DIR     state directory (else $KITH_HOME, else ~/.kith)\n"
    "  --config FILE  configuration file (else DIR/config.json)\n";

/* Waits for fd to be ready for `events` until the deadline. */
static int s_wait(int fd, short events, uint64_t deadline)
{
    uint64_t now = router_clock_mono_ms();
    if (now >= deadline)
        return -1;
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, (int) (deadline - now)) == 1 ? 0 : -1;
}

/* GET /admin/paircode; the answer's head and body into ans[cap]. */
static int s_ask(const router_addr_t *addr, char *ans, size_t cap, char *err, size_t errcap)
{
    uint64_t deadline = router_clock_mono_ms() + S_TIMEOUT_MS;
    int fd = socket(addr->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errcap, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, &addr->u.sa, addr->len) != 0 && errno != EINPROGRESS)
        goto fail;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (s_wait(fd, POLLOUT, deadline) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr) {
        errno = soerr ? soerr : ETIMEDOUT;
        goto fail;
    }
    static const char req[] = "GET /admin/paircode HTTP/1.1\r\nHost: localhost\r\n"
                              "Connection: close\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t) (sizeof req - 1))
        goto fail;
    size_t got = 0;
    while (got + 1 < cap) {
        if (s_wait(fd, POLLIN, deadline) != 0) {
            errno = ETIMEDOUT;
            goto fail;
        }
        ssize_t n = recv(fd, ans + got, cap - 1 - got, 0);
        if (n < 0 && errno == EAGAIN)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;
        got += (size_t) n;
    }
    ans[got] = '\0';
    close(fd);
    return 0;
fail:
    snprintf(err, errcap, "%s", strerror(errno));
    close(fd);
    return -1;
}

int kith_cmd_paircode(int argc, char **argv)
{
    const char *home_flag = NULL, *config_flag = NULL;
    enum { S_HOME = 256, S_CONFIG };
    static const struct option flags[] = {
        {"home", required_argument, NULL, S_HOME},
        {"config", required_argument, NULL, S_CONFIG},
        {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "paircode", .help = "paircode",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        switch (c) {
        case KITH_OPT_HELP: fputs(s_usage, stdout); return KITH_EXIT_OK;
        case S_HOME: home_flag = optarg; break;
        case S_CONFIG: config_flag = optarg; break;
        default: return KITH_EXIT_FAIL;
        }
    }
    if (kith_opts_rest(&o) < argc) {
        fprintf(stderr, "kith paircode: unexpected argument %s (see kith paircode --help)\n",
                argv[kith_opts_rest(&o)]);
        return KITH_EXIT_FAIL;
    }
    char home[ROUTER_PATH_MAX], err[ROUTER_CONFIG_ERR_MAX] = "";
    router_config_t cfg;
    bool used = false;
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith paircode: no home directory: pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    if (router_config_load(&cfg, home, config_flag, &used, err, sizeof err) != 0 ||
        router_config_check(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "kith paircode: %s\n", err);
        return KITH_EXIT_FAIL;
    }
    router_addr_t addr;
    router_addr_err_t why;
    if (cfg.gateway.port == 0) {
        fprintf(stderr, "kith paircode: gateway.port is 0 (chosen at start): set a port\n");
        return KITH_EXIT_FAIL;
    }
    if (router_addr_from_host(cfg.gateway.host, cfg.gateway.port, &addr, &why) != 0) {
        fprintf(stderr, "kith paircode: gateway.host %s: %s\n", cfg.gateway.host,
                router_addr_err_str(why));
        return KITH_EXIT_FAIL;
    }
    char ans[S_ANSWER_MAX], shown[ROUTER_ADDR_STR_MAX] = "?";
    (void) router_addr_format(&addr, shown, sizeof shown);
    if (s_ask(&addr, ans, sizeof ans, err, sizeof err) != 0) {
        fprintf(stderr, "kith paircode: the daemon is not running at http://%s (%s)\n", shown, err);
        return KITH_EXIT_FAIL;
    }
    int status = 0;
    const char *body = strstr(ans, "\r\n\r\n");
    const char *code = body ? strstr(body, "\"code\":\"") : NULL;
    if (sscanf(ans, "HTTP/1.1 %d", &status) != 1 || status != 200 || !code) {
        fprintf(stderr, "kith paircode: http://%s/admin/paircode answered %d: %s\n", shown,
                status, body ? body + 4 : "(no body)");
        return KITH_EXIT_FAIL;
    }
    code += 8;
    size_t n = strspn(code, "0123456789");
    if (n != 6 || code[n] != '"') {
        fprintf(stderr, "kith paircode: unexpected answer: %s\n", body + 4);
        return KITH_EXIT_FAIL;
    }
    printf("%.6s\n", code);
    return KITH_EXIT_OK;
}
