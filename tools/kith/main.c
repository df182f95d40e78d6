/* tools/kith/main.c — the kith command line: picks the subcommand. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/kith/cmd.h"

typedef struct {
    const char *name;                 /* as typed after `kith` */
    int (*run)(int argc, char **argv);
    const char *summary;              /* one line for `kith --help` */
} kith_cmd_t;

static const kith_cmd_t s_cmds[] = {
    {"daemon",   kith_cmd_daemon,   "run the router: comms listeners, gateway, workers"},
    {"gateway",  kith_cmd_gateway,  "run the HTTP gateway alone (kith daemon without comms listeners)"},
    {"keygen",   kith_cmd_keygen,   "create this node's Ed25519 identity (0600 key)"},
    {"id",       kith_cmd_id,       "print this node's public key and PeerId as JSON"},
    {"peers",    kith_cmd_peers,    "add, remove or list trusted peers"},
    {"envelope", kith_cmd_envelope, "encode, decode or verify signed envelope frames"},
    {"send",     kith_cmd_send,     "send a signed message or request to a peer"},
    {"config",   kith_cmd_config,   "check a config file strictly (exit 0 valid, 1 not)"},
    {"paircode", kith_cmd_paircode, "print a new one-time pairing code from the running daemon"},
    {"tokens",   kith_cmd_tokens,   "list, mint or revoke the running daemon's bearer tokens"},
    {"audit",    kith_cmd_audit,    "verify, tail or query the audit log offline"},
    {"agent",    kith_cmd_agent,    "run agent workers for a daemon's broker (--connect ENDPOINT)"},
    {"service",  kith_cmd_service,  "install, start, stop or inspect the daemon as a systemd unit"},
};

static void s_usage(FILE *out)
{
    fprintf(out, "usage: kith COMMAND [ARGS…]   (kith COMMAND --help for each)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
        fprintf(out, "  %-9s %s\n", s_cmds[i].name, s_cmds[i].summary);
    fprintf(out,
            "\nexit codes:\n"
            "  0  success\n"
            "  1  usage error, local error, or invalid input (the reason is on stderr)\n"
            "  2  kith send: the peer did not ack in time (offline)\n"
            "  3  kith send: the peer refused the envelope (connection closed)\n"
            "     kith service start|stop|restart|status: systemctl's own exit status\n"
            "  a command whose stdout's reader has gone (kith audit tail | head -1) ends\n"
            "  by SIGPIPE without a word, as other tools do (141 in a shell)\n"
            "\nstate lives in --home DIR, else $KITH_HOME, else ~/.kith\n");
}

/* What the command printed must have reached stdout: a full disk or a
 * closed descriptor would otherwise leave `kith id > id.json` empty with
 * exit 0. Output is buffered, so most write errors only show here. A
 * command that already failed has said why on its own line; its code
 * stands. */
static int s_stdout_close(const char *cmd, int rc)
{
    errno = 0;
    bool bad = fflush(stdout) != 0;
    int e = errno;
    bad = bad || ferror(stdout);
    if (!bad || rc != KITH_EXIT_OK)
        return rc;
    if (e == EPIPE) {
        /* The reader went away (`kith peers list | head -1`): end as every
         * command that does not ignore SIGPIPE already has, quietly, by
         * the signal, whether or not this one ignored it for its sockets. */
        signal(SIGPIPE, SIG_DFL);
        raise(SIGPIPE);
    }
    fprintf(stderr, "kith%s%s: cannot write stdout (%s); check the file or pipe it goes to\n",
            cmd ? " " : "", cmd ? cmd : "", e ? strerror(e) : "write error");
    return KITH_EXIT_FAIL;
}

/* A descriptor 0, 1 or 2 the caller closed (`kith daemon 2>&-`) would be
 * handed to the next file kith opens, and then stdout or stderr writes
 * would land in it (daemon.log got every line twice). Each is filled with
 * /dev/null opened the wrong way round, so reading stdin or writing stdout
 * fails as it would on a closed descriptor (EBADF), and is reported. */
static void s_std_fds_reserve(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        int got = open("/dev/null", (fd == 1 ? O_RDONLY : O_WRONLY) | O_CLOEXEC);
        if (got >= 0 && got != fd) { /* not the lowest free one: cannot happen, but */
            (void) dup2(got, fd);
            close(got);
        }
    }
}

int main(int argc, char **argv)
{
    s_std_fds_reserve();
    /* Every file kith creates is its owner's alone (0600, directories 0700):
     * state.db and its -wal/-shm (SQLite creates them 0644 less the umask),
     * logs, keys, the trust store. Explicit modes elsewhere say the same. */
    umask(077);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        s_usage(argc < 2 ? stderr : stdout);
        return s_stdout_close(NULL, argc < 2 ? KITH_EXIT_FAIL : KITH_EXIT_OK);
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kith %s\n", KITH_VERSION);
        return s_stdout_close(NULL, KITH_EXIT_OK);
    }
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
        if (!strcmp(argv[1], s_cmds[i].name))
            return s_stdout_close(s_cmds[i].name, s_cmds[i].run(argc - 1, argv + 1));
    fprintf(stderr, "kith: unknown command '%s'; run 'kith --help' for the list\n", argv[1]);
    return KITH_EXIT_FAIL;
}
