"""tests/integration/test_cli5_daemon_log.py — `kith daemon` when its own log
fails, and the failures of its start (DESIGN §3, router/log.h): the daemon
keeps serving with its log on stderr when logs/daemon.log cannot be opened,
and SIGHUP opens the file once it can be; a stderr nobody reads (a full
pipe) neither starves the file nor keeps a stopping daemon from ending; a
full disk under logs/ loses lines from the file but the file says how many
once it takes lines again, and no line is left cut in two; a logs/ folder
that cannot be made is one line naming the reason, and a home this run made
is taken back; a signal while the daemon starts is honoured once it runs;
an audit.path `kith config check` passes but the start cannot open is named
with what to do.

The disk cases mount a small tmpfs, which needs root: without it they say
so and pass."""

import array
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Daemon, Results, check, drop_tmpfs, small_tmpfs  # noqa: E402

TIMEOUT = 60
F_SETPIPE_SZ = 1031
LINE_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARN |ERROR) ")
MADE = []  # folders removed at the end


def config_for(home):
    return {"gateway": {"port": 0},
            "comms": {"address": "127.0.0.1:0", "uds_path": os.path.join(home, "run", "c.sock")},
            "workers": {"agent_threads": 0}}


def new_home(prefix):
    home = tempfile.mkdtemp(prefix=prefix)
    MADE.append(home)
    with open(os.path.join(home, "config.json"), "w") as f:
        json.dump(config_for(home), f)
    return home


def fill(path):
    """Writes to path until its file system is full to the last octet
    (peer.py's fill_disk stops at the first 64 KiB the disk refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def health(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT) as r:
        return r.status


def gateway_port(text):
    m = re.search(r"gateway: listening on http://[^ ]*:(\d+) ", text)
    return int(m.group(1)) if m else None


def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def wait_for(pred, what):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"no progress: {what}")


def hup_until(proc, pred, what):
    """SIGHUP (each logs a line) every 0.2 s until pred() holds: slower than
    the log's rate limit of 10 lines a second per call site."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if pred():
            return
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
    raise AssertionError(f"no progress: {what}")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the daemon did not stop on SIGTERM")


HUP = "node: SIGHUP: log reopened"


def stderr_nobody_reads(kind="pipe"):
    # stderr a pipe of one page that nobody reads (or a stream socket, as
    # journald's is, with small buffers): once it is full, lines still
    # reach the file, the file says stderr is not taking them, the gateway
    # serves, and SIGTERM ends the daemon. The writer used to block on it
    # for ever: the file got nothing more, and the stop never ended
    # (router_log_stop joined the blocked writer).
    home = new_home("kith-cli5-pipe-")
    log = os.path.join(home, "logs", "daemon.log")
    if kind == "pipe":
        r, w = os.pipe()
        fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        r, w = b.detach(), a.detach()
    p = subprocess.Popen([KITH, "daemon", "--home", home], stdout=w, stderr=w)
    os.close(w)
    try:
        wait_for(lambda: os.path.exists(log) and "daemon: ready" in read(log), "ready")
        port = gateway_port(read(log))

        def queued():
            a = array.array("i", [0])
            fcntl.ioctl(r, termios.FIONREAD, a)
            return a[0]
        # Full: stderr has taken nothing for a while; the file goes on.
        def stuck():
            before = queued()
            n = read(log).count(HUP)
            p.send_signal(signal.SIGHUP)
            wait_for(lambda: read(log).count(HUP) > n, "a SIGHUP's line in the file")
            return queued() == before and "log: stderr is not taking log lines" in read(log)
        hup_until(p, stuck, "stderr fills")
        sent_full = read(log).count(HUP)
        hup_until(p, lambda: read(log).count(HUP) >= sent_full + 5, "lines reach the file")
        text = read(log)
        check("log: stderr is not taking log lines (nobody reads it): they go to this file only "
              "until it does" in text, f"the file says stderr misses lines:\n{text[-2000:]}")
        check(health(port) == 200, "the gateway serves")
        check(stop(p) == 0, f"exit {p.returncode}")
        check("daemon: stopped" in read(log), "the stop is in the file")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(r)


def log_file_cannot_be_opened():
    # logs/daemon.log is a folder: the daemon starts all the same, says so
    # in one line with what to do, serves, and opens the file on SIGHUP once
    # the folder is gone (it used to stay on stderr until restarted).
    d = Daemon("cli5-nolog")
    MADE.append(d.home)
    log = os.path.join(d.home, "logs", "daemon.log")
    os.makedirs(log)
    try:
        d.start()
        first = d.logs().splitlines()[0]
        check(first == f"kith daemon: cannot open {log} (Is a directory); logging to stderr only: "
              "make that path a file kith can write, then send the daemon SIGHUP to open it",
              f"first line {first!r}")
        check(health(d.gw_port) == 200, "the gateway serves")
        os.rmdir(log)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: os.path.isfile(log) and HUP in read(log), "SIGHUP opens the file")
        check(os.stat(log).st_mode & 0o777 == 0o600, "the file is 0600")
        check(health(d.gw_port) == 200, "the gateway serves")
        # From then on the file has every line.
        check(d.stop() == 0, f"exit {d.proc.returncode}")
        check("daemon: stopped" in read(log), f"the stop is in the file:\n{read(log)}")
    finally:
        d.stop()


def log_fifo_nobody_reads():
    # logs/daemon.log a FIFO with no reader: the start used to block in
    # open(2) for ever, with SIGTERM and ^C blocked (the loop's signalfd
    # takes them), so only SIGKILL ended it. Now it is refused like any
    # file that cannot be opened, and the daemon serves.
    d = Daemon("cli5-fifo")
    MADE.append(d.home)
    log = os.path.join(d.home, "logs", "daemon.log")
    os.makedirs(os.path.dirname(log))
    os.mkfifo(log)
    try:
        d.start()
        first = d.logs().splitlines()[0]
        check(first.startswith(f"kith daemon: cannot open {log} (No such device or address); "
                               "logging to stderr only"), f"first line {first!r}")
        check(health(d.gw_port) == 200, "the gateway serves")
        check(d.stop() == 0, f"exit {d.proc.returncode}")
    finally:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
        d.stop()


def reopen_refused_keeps_the_old_file():
    # Rotated, and a folder where the new file goes: SIGHUP cannot reopen,
    # says so, and the lines go on into the moved file; the daemon serves;
    # the next SIGHUP once the path is free opens a new file.
    d = Daemon("cli5-reopen")
    MADE.append(d.home)
    log = os.path.join(d.home, "logs", "daemon.log")
    try:
        d.start()
        os.rename(log, log + ".1")
        os.makedirs(log)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "node: SIGHUP: cannot reopen the log file: Is a directory" in
                 read(log + ".1"), "the failure is in the moved file")
        check(HUP not in read(log + ".1"), "a refused reopen is not also said to be done")
        check(health(d.gw_port) == 200, "the gateway serves")
        os.rmdir(log)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: os.path.isfile(log) and HUP in read(log), "a new file on SIGHUP")
        check(d.stop() == 0, f"exit {d.proc.returncode}")
        check("daemon: stopped" in read(log) and "daemon: stopped" not in read(log + ".1"),
              "the stop went to the new file")
    finally:
        d.stop()


def full_disk_under_logs():
    # logs/ on a full tmpfs: the gateway serves on; the file misses lines
    # (stderr has them); once there is room again the file's next line says
    # how many it missed and why, and no line in it is cut in two. The
    # lines used to go missing without a word.
    d = Daemon("cli5-full")
    MADE.append(d.home)
    logs = os.path.join(d.home, "logs")
    os.makedirs(logs)
    mnt = small_tmpfs("kith-cli5-logs-", "256k")
    if mnt is None:
        return
    try:
        subprocess.run(["mount", "--bind", mnt, logs], check=True)
        try:
            d.start()
            log = os.path.join(logs, "daemon.log")
            filler = os.path.join(logs, "filler")
            fill(filler)
            base = read(log).count(HUP)
            hup_until(d.proc, lambda: d.logs().count(HUP) >= read(log).count(HUP) + 3 and
                      d.logs().count(HUP) > base + 3, "the file misses lines")
            check(health(d.gw_port) == 200, "the gateway serves on a full disk")
            os.unlink(filler)
            hup_until(d.proc, lambda: re.search(r"log: \d+ log lines were not written to this "
                                                r"file: No space left on device", read(log)),
                      "the file says what it missed")
            text = read(log)
            after = text[text.index("log lines were not written to this file"):]
            check(HUP in after or "trust" in after, f"lines after the note:\n{after[:800]}")
            bad = [ln for ln in text.splitlines() if not LINE_START.match(ln)]
            check(not bad, f"lines cut or run together: {bad[:3]}")
            check(d.stop() == 0, f"exit {d.proc.returncode}")
        finally:
            d.stop()
            subprocess.run(["umount", "-l", logs])
    finally:
        drop_tmpfs(mnt)


def logs_folder_cannot_be_made():
    # No inode left for logs/: one line with the reason (it used to be
    # "cannot create …/logs" alone), exit 1, and a home this run made is
    # taken back instead of left empty.
    mnt = small_tmpfs("kith-cli5-inodes-", "1m")
    if mnt is None:
        return
    try:
        # Remount with few inodes, then use every one but one.
        subprocess.run(["mount", "-o", "remount,nr_inodes=8", mnt], check=True)
        home = os.path.join(mnt, "home")
        os.makedirs(home)
        n = 0
        try:
            while True:
                open(os.path.join(mnt, f"i{n}"), "w").close()
                n += 1
        except OSError:
            pass
        p = subprocess.run([KITH, "daemon", "--home", home], capture_output=True, text=True,
                           timeout=TIMEOUT)
        fix = "; the daemon keeps its log there: check the home's permissions and free space\n"
        check(p.returncode == 1 and p.stderr == f"kith daemon: cannot create {home}/logs: No "
              f"space left on device{fix}", f"{p.returncode} {p.stderr!r}")
        # A fresh home: room for it but not for its logs/.
        os.unlink(os.path.join(mnt, "i0"))
        fresh = os.path.join(mnt, "fresh")
        p = subprocess.run([KITH, "gateway", "--home", fresh], capture_output=True, text=True,
                           timeout=TIMEOUT)
        check(p.returncode == 1 and p.stderr == f"kith gateway: cannot create {fresh}/logs: No "
              f"space left on device{fix}", f"{p.returncode} {p.stderr!r}")
        check(not os.path.exists(fresh), "the home this run made is left behind")
    finally:
        drop_tmpfs(mnt)


def signal_while_starting():
    # SIGTERM once the log says "starting" (signals are blocked by then):
    # the daemon finishes starting, drains and exits 0; SIGHUP then: it
    # comes up and serves (an unblocked SIGHUP would have killed it).
    for sig, want in ((signal.SIGTERM, "stop"), (signal.SIGHUP, "serve")):
        home = new_home("kith-cli5-sig-")
        log = os.path.join(home, "logs", "daemon.log")
        err = open(os.path.join(home, "stderr"), "wb")
        p = subprocess.Popen([KITH, "daemon", "--home", home], stdout=err, stderr=err)
        try:
            wait_for(lambda: os.path.exists(log) and "daemon: starting" in read(log), "starting")
            p.send_signal(sig)
            if want == "stop":
                try:
                    rc = p.wait(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    raise AssertionError("a SIGTERM while starting was not honoured")
                check(rc == 0, f"exit {rc}: {read(os.path.join(home, 'stderr'))[-1500:]}")
                check("daemon: stopped" in read(log), "stopped cleanly")
            else:
                wait_for(lambda: "daemon: ready" in read(log), "ready after SIGHUP")
                check(health(gateway_port(read(log))) == 200, "serves")
                check(p.poll() is None, "alive")
                check(stop(p) == 0, f"exit {p.returncode}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            err.close()


def audit_path_refused_at_start():
    # `kith config check` says ok (it cannot know the disk), the daemon
    # stops at start: its last line names audit.path and what to do (it
    # said "cannot open …" alone), exit 1, nothing left running.
    fix = ("; make its folder, or set audit.path to a file kith can write (audit.enabled false "
           "turns it off)")
    home = new_home("kith-cli5-audit-")
    open(os.path.join(home, "audit"), "w").close()  # a file where the folder goes
    # (a file where a relative path's folder goes is found making that folder)
    for path, shown, why in (("audit/kith.log",
                              "cannot create the folder of " +
                              os.path.join(home, "audit", "kith.log"), "Not a directory"),
                             ("/proc/kith-cli5/kith.log", "cannot open /proc/kith-cli5/kith.log",
                              "No such file or directory")):
        cfg = dict(config_for(home), audit={"path": path})
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump(cfg, f)
        p = subprocess.run([KITH, "config", "check", "--home", home], capture_output=True,
                           text=True, timeout=TIMEOUT)
        check(p.returncode == 0, f"config check {p.returncode} {p.stderr}")
        p = subprocess.run([KITH, "daemon", "--home", home], capture_output=True, text=True,
                           timeout=TIMEOUT)
        last = p.stderr.splitlines()[-1] if p.stderr else ""
        check(p.returncode == 1 and
              last == f"kith daemon: audit.path: {shown}: {why}{fix}",
              f"{path}: {p.returncode} {p.stderr[-800:]!r}")


def main():
    r = Results()
    r.run(stderr_nobody_reads)
    r.run(stderr_nobody_reads, "socket", name="stderr_socket_nobody_reads")
    r.run(log_file_cannot_be_opened)
    r.run(log_fifo_nobody_reads)
    r.run(reopen_refused_keeps_the_old_file)
    r.run(full_disk_under_logs)
    r.run(logs_folder_cannot_be_made)
    r.run(signal_while_starting)
    r.run(audit_path_refused_at_start)
    return r.summary()


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        for d in MADE:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(rc)
