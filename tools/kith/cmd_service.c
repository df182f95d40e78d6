/* tools/kith/cmd_service.c — `kith service install|uninstall|start|stop|
 * restart|status|logs` (DESIGN §3): run the daemon under systemd. install
 * writes a unit for `kith daemon` with this binary, home and configuration
 * (a user unit, or with --system a system one) and enables it through
 * systemctl; start, stop, restart and status are systemctl's, its exit
 * status passed through; logs prints the daemon's own log file. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "router/state/config.h"
#include "router/state/home.h"
#include "tools/kith/cli_opts.h"
#include "tools/kith/cmd.h"

#define S_UNIT "kith.service"
#define S_LOG_LINES_DEFAULT 100u
#define S_LOG_LINES_MAX 100000u
#define S_FOLLOW_POLL_NS 250000000L   /* --follow looks for new lines 4 times a second */

extern char **environ;

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kith service install [--home DIR] [--config FILE] [--system] [--print]\n"
            "       kith service uninstall [--system]\n"
            "       kith service start|stop|restart|status [--system]\n"
            "       kith service logs [--home DIR] [--lines N] [--follow]\n"
            "\n"
            "Runs `kith daemon` under systemd, as a user unit (systemctl --user; add\n"
            "`loginctl enable-linger $USER` to keep it running after logout) or, with\n"
            "--system, as a system unit (/etc/systemd/system, as root).\n"
            "\n"
            "  install    writes " S_UNIT " for this kith binary with --home DIR (absolute) and\n"
            "             --config FILE when given (refused when kith daemon would refuse it),\n"
            "             then runs systemctl daemon-reload and enable; --print only prints\n"
            "             the unit. The unit restarts the daemon when it fails, and\n"
            "             `systemctl reload` sends SIGHUP (log reopened, trust reloaded).\n"
            "  uninstall  disables and stops the unit and removes it\n"
            "  start, stop, restart, status\n"
            "             systemctl's, on " S_UNIT "; exit status: systemctl's own (status:\n"
            "             0 running, 3 not running)\n"
            "  logs       the last N lines (default 100) of DIR/logs/daemon.log;\n"
            "             --follow keeps printing new ones until interrupted\n"
            "\n"
            "User units go to $XDG_CONFIG_HOME/systemd/user (else ~/.config/systemd/user).\n");
}

/* ---------------------------------------------------------------- systemctl */

/* Room for the first line of what a failed install or uninstall step of
 * systemctl said, folded into kith's own line. */
#define S_SAID_MAX 160

/* Runs `systemctl [--user] ARGS…` and returns its exit status, or -1 with
 * errno (ENOENT: systemctl is not installed). With said non-NULL,
 * systemctl's stderr is taken instead of passed through, and its first
 * line (made fit for one line) is left in said[S_SAID_MAX]. */
static int s_systemctl(bool system, const char *a1, const char *a2, const char *a3, char *said)
{
    char *argv[6];
    int n = 0;
    argv[n++] = "systemctl";
    if (!system)
        argv[n++] = "--user";
    argv[n++] = (char *) a1;
    if (a2)
        argv[n++] = (char *) a2;
    if (a3)
        argv[n++] = (char *) a3;
    argv[n] = NULL;
    fflush(stdout);
    int fds[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    bool have_fa = false;
    if (said) {
        said[0] = '\0';
        if (pipe2(fds, O_CLOEXEC) != 0)
            return -1;
        int rc = posix_spawn_file_actions_init(&fa);
        have_fa = rc == 0;
        if (rc == 0)
            rc = posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
        if (rc != 0) {
            if (have_fa)
                posix_spawn_file_actions_destroy(&fa);
            close(fds[0]);
            close(fds[1]);
            errno = rc;
            return -1;
        }
    }
    pid_t pid;
    int rc = posix_spawnp(&pid, "systemctl", have_fa ? &fa : NULL, NULL, argv, environ);
    if (have_fa)
        posix_spawn_file_actions_destroy(&fa);
    if (said) {
        close(fds[1]);
        /* Read to the end (a child blocked on a full pipe would never exit);
         * keep the first line. */
        char buf[1024];
        size_t kept = 0;
        bool line_done = false;
        ssize_t got;
        while (rc == 0 && ((got = read(fds[0], buf, sizeof buf)) > 0 || (got < 0 && errno == EINTR))) {
            for (ssize_t i = 0; i < got && !line_done; i++) {
                if (buf[i] == '\n')
                    line_done = true;
                else if (kept < S_SAID_MAX - 1)
                    said[kept++] = buf[i];
            }
        }
        said[kept] = '\0';
        kith_one_line(said);
        close(fds[0]);
    }
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Says why `systemctl [--user] a1 [a2 [a3]]` did not succeed (rc from
 * s_systemctl), with what it said and what became of the unit (then) when
 * given. Without systemd as init, every step fails ("System has not been
 * booted with systemd"): that is said plainly, with what to do instead. */
static void s_report(bool system, int rc, const char *a1, const char *a2, const char *a3,
                     const char *said, const char *then)
{
    int e = errno;
    struct stat st;
    bool booted = stat("/run/systemd/system", &st) == 0 && S_ISDIR(st.st_mode); /* sd_booted() */
    errno = e;
    if (rc < 0 && errno == ENOENT)
        fprintf(stderr, "kith service: systemctl is not installed: run the daemon another way "
                        "(kith daemon), or install systemd%s%s\n", then ? "; " : "",
                then ? then : "");
    else if (rc < 0)
        fprintf(stderr, "kith service: cannot run systemctl: %s; check the systemctl on PATH%s%s\n",
                strerror(errno), then ? "; " : "", then ? then : "");
    else
        fprintf(stderr, "kith service: systemctl%s %s%s%s%s%s failed (exit %d%s%s)%s%s%s\n",
                system ? "" : " --user", a1, a2 ? " " : "", a2 ? a2 : "", a3 ? " " : "",
                a3 ? a3 : "", rc, said && *said ? ": " : "", said ? said : "",
                booted ? "" : "; systemd is not running on this machine (no /run/systemd/system): "
                              "run kith daemon another way",
                then ? "; " : "", then ? then : "");
}

/* One systemctl step of install or uninstall: true when it succeeded;
 * otherwise its one line is printed, ending with `then`. */
static bool s_step(bool system, const char *a1, const char *a2, const char *a3, const char *then)
{
    char said[S_SAID_MAX];
    int rc = s_systemctl(system, a1, a2, a3, said);
    if (rc != 0)
        s_report(system, rc, a1, a2, a3, said, then);
    return rc == 0;
}

/* ---------------------------------------------------------------- the unit */

/* Where the unit lives: dir[cap] and path[cap]. */
static int s_unit_paths(bool system, char *dir, char *path, size_t cap)
{
    int n;
    if (system) {
        n = snprintf(dir, cap, "/etc/systemd/system");
    } else {
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        if (xdg && xdg[0] == '/')
            n = snprintf(dir, cap, "%s/systemd/user", xdg);
        else if (home && home[0] == '/')
            n = snprintf(dir, cap, "%s/.config/systemd/user", home);
        else {
            fprintf(stderr, "kith service: no HOME to put a user unit under; set HOME, or use "
                            "--system\n");
            return -1;
        }
    }
    if (n < 0 || (size_t) n >= cap || snprintf(path, cap, "%s/" S_UNIT, dir) >= (int) cap) {
        fprintf(stderr, "kith service: the unit's path is too long; set a shorter "
                        "XDG_CONFIG_HOME (or HOME)\n");
        return -1;
    }
    return 0;
}

/* Appends one ExecStart argument (after a space unless `first`), quoted as
 * systemd reads it: backslash escapes inside double quotes, "%%" for a
 * percent sign (a specifier otherwise) and "$$" for a dollar sign (a
 * variable otherwise). A control character cannot be written at all: -1. */
static int s_exec_arg(FILE *f, const char *arg, bool first)
{
    fputs(first ? "\"" : " \"", f);
    for (const unsigned char *p = (const unsigned char *) arg; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return -1;
        if (*p == '\\' || *p == '"')
            fputc('\\', f);
        else if (*p == '%' || *p == '$')
            fputc(*p, f);
        fputc(*p, f);
    }
    fputc('"', f);
    return 0;
}

/* Room for the environment variables a configuration names, with their
 * keys: four names of at most ROUTER_CONFIG_ENV_CAP octets and the keys. */
#define S_ENV_NOTE_MAX 1024

/* The variables cfg tells the daemon to read ("SECRET
 * (gateway.webhook_secret_env), …") into out, "" for none. A service's
 * environment is not the shell's that installs it: the daemon refuses to
 * start without a webhook secret, HMAC key or pairing password it was
 * told to read, and restarts into the same refusal. */
static void s_env_note(const router_config_t *cfg, char *out, size_t cap)
{
    const struct { const char *name, *key; } vars[] = {
        {cfg->gateway.webhook_secret_env, "gateway.webhook_secret_env"},
        {cfg->audit.hmac_key_env, "audit.hmac_key_env"},
        {cfg->comms.pairing_password_env, "comms.pairing_password_env"},
        {cfg->agent.api_key_env, "agent.api_key_env"},
    };
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof vars / sizeof vars[0] && used < cap; i++)
        if (vars[i].name[0])
            used += (size_t) snprintf(out + used, cap - used, "%s%s (%s)", used ? ", " : "",
                                      vars[i].name, vars[i].key);
}

/* The unit's text for `exe daemon --home home [--config config]`; env, when
 * not empty, names the variables the daemon reads (s_env_note). */
static int s_unit_write(FILE *f, bool system, const char *exe, const char *home,
                        const char *config, const char *env)
{
    fprintf(f,
            "# " S_UNIT " — written by `kith service install`; `kith service uninstall`\n"
            "# removes it. Edit with `systemctl%s edit kith` to keep changes.\n"
            "[Unit]\n"
            "Description=kith, the comms router for AI agents\n"
            "%s"
            "\n"
            "[Service]\n"
            "Type=exec\n",
            system ? "" : " --user",
            /* a user manager has no network targets */
            system ? "After=network-online.target\nWants=network-online.target\n" : "");
    if (env && *env)
        fprintf(f,
                "# The daemon reads from its environment, which this unit does not set:\n"
                "#   %s\n"
                "# Add Environment= or EnvironmentFile= with `systemctl%s edit kith`.\n",
                env, system ? "" : " --user");
    fputs("ExecStart=", f);
    if (s_exec_arg(f, exe, true) != 0 || s_exec_arg(f, "daemon", false) != 0 ||
        s_exec_arg(f, "--home", false) != 0 || s_exec_arg(f, home, false) != 0)
        return -1;
    if (config && (s_exec_arg(f, "--config", false) != 0 || s_exec_arg(f, config, false) != 0))
        return -1;
    fprintf(f,
            "\n"
            "ExecReload=/bin/kill -HUP $MAINPID\n"
            "Restart=on-failure\n"
            "RestartSec=2s\n"
            "TimeoutStopSec=60s\n"
            "UMask=0077\n"
            "NoNewPrivileges=yes\n"
            "\n"
            "[Install]\n"
            "WantedBy=%s\n",
            system ? "multi-user.target" : "default.target");
    return ferror(f) ? -1 : 0;
}

/* Writes the unit to path through a temporary file, mode 0644 (systemd
 * reads it; kith's umask would make it 0600). */
static int s_unit_install(const char *dir, const char *path, bool system, const char *exe,
                          const char *home, const char *config, const char *env)
{
    if (router_home_mkdirs(dir, 0755) != 0) {
        fprintf(stderr, "kith service: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char tmp[PATH_MAX + 8];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int) sizeof tmp)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        fprintf(stderr, "kith service: cannot write %s: %s\n", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    errno = 0; /* s_unit_write fails without errno on a control character */
    int rc = fchmod(fd, 0644) == 0 ? s_unit_write(f, system, exe, home, config, env) : -1;
    if (fflush(f) != 0 || fsync(fd) != 0)
        rc = -1;
    if (fclose(f) != 0)
        rc = -1;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -1;
    if (rc != 0) {
        fprintf(stderr, "kith service: cannot write %s: %s\n", path,
                errno ? strerror(errno) : "a path holds a control character");
        (void) unlink(tmp);
    }
    return rc;
}

/* ---------------------------------------------------------------- verbs */

/* Which of the unit's paths holds a control character, which ExecStart
 * cannot carry (s_exec_arg), in words; NULL when none does. */
static const char *s_unwritable_path(const char *exe, const char *home, const char *config)
{
    const char *paths[] = {exe, home, config};
    const char *what[] = {"this kith binary's path", "the home's path (--home)",
                          "the configuration's path (--config)"};
    for (size_t i = 0; i < 3; i++)
        for (const unsigned char *p = (const unsigned char *) paths[i]; p && *p; p++)
            if (*p < 0x20 || *p == 0x7f)
                return what[i];
    return NULL;
}

static int s_install(const char *home_flag, const char *config_flag, bool system, bool print)
{
    char exe[PATH_MAX], home[ROUTER_PATH_MAX], abs_home[PATH_MAX], abs_config[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        fprintf(stderr, "kith service: cannot find this kith binary: %s\n", strerror(errno));
        return KITH_EXIT_FAIL;
    }
    exe[n] = '\0';
    if (router_home_resolve(home_flag, home, sizeof home) != 0) {
        fprintf(stderr, "kith service: no home directory; pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    if (config_flag && !realpath(config_flag, abs_config)) {
        fprintf(stderr, "kith service: cannot read %s: %s\n", config_flag, strerror(errno));
        return KITH_EXIT_FAIL;
    }
    /* A configuration the daemon would refuse makes a unit that fails at
     * every restart: refuse it now, naming the problem. */
    router_config_t *cfg = malloc(sizeof *cfg);
    char err[KITH_ERR_MAX];
    bool used = false;
    if (!cfg) {
        fprintf(stderr, "kith service: out of memory\n");
        return KITH_EXIT_FAIL;
    }
    /* Read before the home is made: a refused configuration leaves no
     * empty home behind (one not there yet has no config.json). */
    int loaded = router_config_load(cfg, home, config_flag ? abs_config : NULL, &used, err,
                                    sizeof err);
    char env[S_ENV_NOTE_MAX] = "";
    if (loaded == 0)
        s_env_note(cfg, env, sizeof env);
    free(cfg);
    if (loaded != 0) {
        fprintf(stderr, "kith service: %s (nothing installed)\n", err);
        return KITH_EXIT_FAIL;
    }
    if (router_home_mkdirs(home, 0700) != 0 || !realpath(home, abs_home)) {
        fprintf(stderr, "kith service: cannot use %s as the home: %s\n", home, strerror(errno));
        return KITH_EXIT_FAIL;
    }
    const char *config = config_flag ? abs_config : NULL;
    const char *odd = s_unwritable_path(exe, abs_home, config);
    if (odd) {
        /* Not the path itself: it would not print on one line. */
        fprintf(stderr, "kith service: %s holds a control character, which a systemd unit "
                        "cannot hold; rename it (nothing installed)\n", odd);
        return KITH_EXIT_FAIL;
    }
    if (print) {
        if (s_unit_write(stdout, system, exe, abs_home, config, env) != 0 ||
            fflush(stdout) != 0) {
            fprintf(stderr, "kith service: cannot write the unit to stdout: %s\n",
                    strerror(errno));
            return KITH_EXIT_FAIL;
        }
        return KITH_EXIT_OK;
    }
    char dir[PATH_MAX], path[PATH_MAX];
    if (s_unit_paths(system, dir, path, sizeof dir) != 0)
        return KITH_EXIT_FAIL;
    bool existed = access(path, F_OK) == 0;
    if (s_unit_install(dir, path, system, exe, abs_home, config, env) != 0)
        return KITH_EXIT_FAIL;
    /* A new unit systemd was not told of, or would not enable (no systemd
     * here at all, most often), is taken away again, so a failed install
     * leaves nothing behind; one written over an earlier install stays. */
    const char *then = existed ? "the unit file is rewritten but not enabled"
                               : "nothing installed";
    if (!s_step(system, "daemon-reload", NULL, NULL, then) ||
        !s_step(system, "enable", S_UNIT, NULL, then)) {
        if (!existed && unlink(path) == 0)
            (void) s_systemctl(system, "daemon-reload", NULL, NULL, (char[S_SAID_MAX]) {0});
        return KITH_EXIT_FAIL;
    }
    printf("wrote %s\n", path);
    printf("enabled %s: start it with kith service start%s\n", S_UNIT, system ? " --system" : "");
    if (env[0])
        printf("the daemon reads %s from its environment, which the unit does not set: add "
               "Environment= or EnvironmentFile= with systemctl%s edit kith\n",
               env, system ? "" : " --user");
    return KITH_EXIT_OK;
}

static int s_uninstall(bool system)
{
    char dir[PATH_MAX], path[PATH_MAX];
    if (s_unit_paths(system, dir, path, sizeof dir) != 0)
        return KITH_EXIT_FAIL;
    if (access(path, F_OK) != 0) {
        fprintf(stderr, "kith service: %s is not installed (no %s)\n", S_UNIT, path);
        return KITH_EXIT_FAIL;
    }
    if (!s_step(system, "disable", "--now", S_UNIT, NULL))
        return KITH_EXIT_FAIL;
    if (unlink(path) != 0) {
        fprintf(stderr, "kith service: cannot remove %s: %s\n", path, strerror(errno));
        return KITH_EXIT_FAIL;
    }
    printf("removed %s\n", path);
    return s_step(system, "daemon-reload", NULL, NULL, NULL) ? KITH_EXIT_OK : KITH_EXIT_FAIL;
}

/* start, stop, restart, status: systemctl's output and exit status. */
static int s_control(const char *verb, bool system)
{
    int rc = s_systemctl(system, verb, S_UNIT, NULL, NULL);
    if (rc >= 0)
        return rc;
    s_report(system, rc, verb, S_UNIT, NULL, NULL, NULL);
    return KITH_EXIT_FAIL;
}

/* Prints what f holds from offset `from` on; returns the new offset. A
 * read or write that fails leaves its errno in *rerr or *werr (stdout's
 * errors used to be dropped: --follow to a full disk printed nothing, for
 * ever, and exited 0 when stopped). */
static long s_copy_from(FILE *f, long from, int *rerr, int *werr)
{
    char buf[8192];
    if (fseek(f, from, SEEK_SET) != 0) {
        *rerr = errno;
        return from;
    }
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        if (fwrite(buf, 1, n, stdout) != n) {
            *werr = errno ? errno : EIO;
            return from;
        }
        from += (long) n;
    }
    if (ferror(f))
        *rerr = errno ? errno : EIO;
    clearerr(f);
    errno = 0;
    if (fflush(stdout) != 0)
        *werr = errno ? errno : EIO;
    return from;
}

static int s_logs(const char *home_flag, unsigned lines, bool follow)
{
    char home[ROUTER_PATH_MAX], path[ROUTER_PATH_MAX];
    if (router_home_resolve(home_flag, home, sizeof home) != 0 ||
        router_home_path(home, "logs/daemon.log", path, sizeof path) != 0) {
        fprintf(stderr, "kith service: no home directory; pass --home DIR or set KITH_HOME\n");
        return KITH_EXIT_FAIL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kith service: cannot read %s: %s (has the daemon run?)\n", path,
                strerror(errno));
        return KITH_EXIT_FAIL;
    }
    /* fopen takes a folder: it printed nothing and exited 0. */
    struct stat was;
    if (fstat(fileno(f), &was) == 0 && !S_ISREG(was.st_mode)) {
        fprintf(stderr, "kith service: cannot read %s: %s; the daemon's log is a file there: "
                        "move what is in the way\n", path,
                S_ISDIR(was.st_mode) ? strerror(EISDIR) : "not a regular file");
        fclose(f);
        return KITH_EXIT_FAIL;
    }
    /* The start of the last `lines` lines: just after the newline that
     * ends the line before them, found walking back from the end (the
     * file's own last newline ends its last line). */
    long end = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : 0, pos = end > 0 ? end : 0, start = 0;
    unsigned seen = 0;
    bool found = false;
    char buf[8192];
    while (pos > 0 && !found) {
        long step = pos < (long) sizeof buf ? pos : (long) sizeof buf;
        pos -= step;
        if (fseek(f, pos, SEEK_SET) != 0 || fread(buf, 1, (size_t) step, f) != (size_t) step)
            break;
        for (long i = step - 1; i >= 0 && !found; i--)
            if (buf[i] == '\n' && pos + i != end - 1 && ++seen == lines) {
                start = pos + i + 1;
                found = true;
            }
    }
    int rerr = 0, werr = 0;
    long at = s_copy_from(f, start, &rerr, &werr);
    while (follow && !rerr && !werr && fstat(fileno(f), &was) == 0) {
        struct timespec ts = {0, S_FOLLOW_POLL_NS};
        nanosleep(&ts, NULL);
        struct stat now;
        if (stat(path, &now) == 0 && (now.st_ino != was.st_ino || now.st_size < at)) {
            /* rotated (SIGHUP made a new file) or truncated: what the old
             * one still had, then the new one from its start */
            if (now.st_ino != was.st_ino)
                (void) s_copy_from(f, at, &rerr, &werr);
            FILE *g = fopen(path, "rb");
            if (g) {
                fclose(f);
                f = g;
                at = 0;
            }
        }
        at = s_copy_from(f, at, &rerr, &werr);
    }
    fclose(f);
    if (werr) {
        /* EPIPE (the reader went away) is main's: it ends by SIGPIPE. */
        if (werr == EPIPE)
            return KITH_EXIT_OK;
        fprintf(stderr, "kith service: cannot write stdout (%s); check the file or pipe it goes "
                        "to\n", strerror(werr));
        return KITH_EXIT_FAIL;
    }
    if (rerr) {
        fprintf(stderr, "kith service: cannot read %s: %s\n", path, strerror(rerr));
        return KITH_EXIT_FAIL;
    }
    return KITH_EXIT_OK;
}

int kith_cmd_service(int argc, char **argv)
{
    const char *home_flag = NULL, *config_flag = NULL;
    bool system = false, print = false, follow = false, lines_given = false;
    unsigned lines = S_LOG_LINES_DEFAULT;
    static const struct option flags[] = {
        {"home", required_argument, NULL, 'H'}, {"config", required_argument, NULL, 'c'},
        {"system", no_argument, NULL, 's'},     {"print", no_argument, NULL, 'p'},
        {"lines", required_argument, NULL, 'n'}, {"follow", no_argument, NULL, 'f'},
        {0},
    };
    kith_opts_t o = {.argc = argc, .argv = argv, .cmd = "service", .help = "service",
                     .longopts = flags};
    for (int c; (c = kith_opts_next(&o)) != KITH_OPT_END;) {
        char *end = NULL;
        unsigned long v;
        switch (c) {
        case KITH_OPT_HELP:
            s_usage(stdout);
            return KITH_EXIT_OK;
        case 'H': home_flag = optarg; break;
        case 'c': config_flag = optarg; break;
        case 's': system = true; break;
        case 'p': print = true; break;
        case 'f': follow = true; break;
        case 'n':
            errno = 0;
            v = strtoul(optarg, &end, 10);
            if (errno || !end || *end || optarg[0] < '0' || optarg[0] > '9' || v < 1 ||
                v > S_LOG_LINES_MAX) {
                fprintf(stderr, "kith service: --lines takes 1 to %u; see kith service --help\n",
                        S_LOG_LINES_MAX);
                return KITH_EXIT_FAIL;
            }
            lines = (unsigned) v;
            lines_given = true;
            break;
        default:
            return KITH_EXIT_FAIL;
        }
    }
    int rest = kith_opts_rest(&o);
    if (argc - rest != 1) {
        fprintf(stderr, "kith service: name one of install, uninstall, start, stop, restart, "
                        "status, logs; see kith service --help\n");
        return KITH_EXIT_FAIL;
    }
    const char *verb = argv[rest];
    bool is_logs = !strcmp(verb, "logs"), is_install = !strcmp(verb, "install");
    bool is_control = !strcmp(verb, "start") || !strcmp(verb, "stop") ||
                      !strcmp(verb, "restart") || !strcmp(verb, "status");
    if (!is_logs && !is_install && !is_control && strcmp(verb, "uninstall") != 0) {
        fprintf(stderr, "kith service: unknown verb '%s'; see kith service --help\n", verb);
        return KITH_EXIT_FAIL;
    }
    /* A flag the verb does not read is named, not dropped. */
    const char *stray = !is_install && config_flag             ? "--config"
                        : !is_install && print                 ? "--print"
                        : !is_install && !is_logs && home_flag ? "--home"
                        : !is_logs && follow                   ? "--follow"
                        : !is_logs && lines_given              ? "--lines"
                        : is_logs && system                    ? "--system"
                                                               : NULL;
    if (stray) {
        fprintf(stderr, "kith service %s: %s does not apply to %s; see kith service --help\n",
                verb, stray, verb);
        return KITH_EXIT_FAIL;
    }
    if (is_install)
        return s_install(home_flag, config_flag, system, print);
    if (!strcmp(verb, "uninstall"))
        return s_uninstall(system);
    if (is_logs)
        return s_logs(home_flag, lines, follow);
    return s_control(verb, system);
}
