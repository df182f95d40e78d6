"""tests/integration/test_files.py — the files `kith` writes under its home:
every one created 0600 and every folder 0700 whatever the caller's umask
(state.db and its -wal/-shm included), a warning at start when the home is
open to group or others, non-regular config.json / trusted_peers.json
refused at once (a FIFO used to hang start-up), and comms.event_address in
every form WIRE §10 names."""

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Conn, Daemon, Peer, Results, frame, kith, wait_events  # noqa: E402

# The harness, not kith, writes these into the home.
HARNESS_FILES = {"config.json", "daemon.stderr"}


def modes_under(home):
    """(relative path, st_mode) of everything under home, home included."""
    out = [(".", os.lstat(home).st_mode)]
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            path = os.path.join(root, name)
            out.append((os.path.relpath(path, home), os.lstat(path).st_mode))
    return out


def check_modes(home):
    bad = []
    seen = set()
    for rel, mode in modes_under(home):
        seen.add(rel)
        perm = stat.S_IMODE(mode)
        if rel in HARNESS_FILES:
            continue
        if stat.S_ISDIR(mode):
            if perm != 0o700:
                bad.append(f"{rel}/ is {perm:04o}, want 0700")
        elif stat.S_ISREG(mode):
            if perm != 0o600:
                bad.append(f"{rel} is {perm:04o}, want 0600")
        elif perm & 0o077:
            bad.append(f"{rel} (socket or other) is {perm:04o}: open to group or others")
    assert not bad, "; ".join(bad)
    return seen


def files_are_private(res):
    # With the usual umask, kith must still make its files private itself.
    os.umask(0o022)
    node = Daemon("files")
    p = Peer()
    node.trust("p", p.pk)
    node.start()
    try:
        c = Conn(("127.0.0.1", node.port))
        for i in range(20):
            m = p.message(node.pk, f"m{i}")
            c.send(frame(m))
            assert c.read_frame() is not None, "no ack"
        c.close()
        seen = check_modes(node.home)  # while running: -wal and -shm exist
        for want in ("state.db", "state.db-wal", "state.db-shm", "logs", "logs/daemon.log",
                     "identity", "identity/identity.key", "identity/identity.pub",
                     "trusted_peers.json"):
            assert want in seen, f"{want} missing; have {sorted(seen)}"
        res.stopped(node)
        check_modes(node.home)
    finally:
        node.cleanup()


def open_home_warned():
    os.umask(0o022)
    node = Daemon("openhome")
    os.chmod(node.home, 0o755)
    node.start()
    try:
        node.wait_log("is readable or writable by group or others (mode 0755)")
        node.wait_log(f"run: chmod 700 {node.home}")
    finally:
        node.cleanup()
    node = Daemon("closedhome").start()
    try:
        assert "chmod 700" not in node.logs()
    finally:
        node.cleanup()


def run_kith(*args):
    """Runs kith; a hang (the old FIFO behaviour) fails after a generous bound."""
    try:
        return subprocess.run([KITH, *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"kith {' '.join(args)} hung")


def fifo_config_refused():
    home = tempfile.mkdtemp(prefix="kith-fifo-config-")
    try:
        path = os.path.join(home, "config.json")
        os.mkfifo(path, 0o600)
        p = run_kith("daemon", "--home", home)
        assert p.returncode == 1, (p.returncode, p.stderr)
        assert f"{path}: not a regular file (a FIFO)" in p.stderr, p.stderr
        p = run_kith("config", "check", path)
        assert p.returncode == 1 and "not a regular file" in p.stderr, p.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


def fifo_trust_refused():
    node = Daemon("fifo-trust")
    path = os.path.join(node.home, "trusted_peers.json")
    os.mkfifo(path, 0o600)
    try:
        p = run_kith("daemon", "--home", node.home)
        assert p.returncode == 1, (p.returncode, p.stderr)
        assert f"{path}: not a regular file (a FIFO)" in p.stderr, p.stderr
        p = run_kith("peers", "list", "--home", node.home)
        assert p.returncode == 1 and "not a regular file" in p.stderr, p.stderr
    finally:
        node.cleanup()


def event_address_forms():
    home = tempfile.mkdtemp(prefix="kith-evaddr-")
    sock = os.path.join(home, "ev.sock")
    for form, family in (("tcp://127.0.0.1:0", "tcp"), ("127.0.0.1:0", "tcp"),
                         (f"uds://{sock}", "uds"), (sock, "uds")):
        node = Daemon("evaddr", config={"comms": {"auth": "none", "event_address": form}})
        node.start()
        try:
            if family == "tcp":
                assert node.event_port, node.logs()
                s = socket.create_connection(("127.0.0.1", node.event_port), timeout=30)
            else:
                node.wait_log(f"events: listening on uds://{sock}")
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(30)
                s.connect(sock)
            s.sendall(b'{"body": "hello"}\n')
            assert wait_events(node, 1) == ["hello"]
            s.close()
        finally:
            node.cleanup()
            if os.path.exists(sock):
                os.unlink(sock)
    bad = os.path.join(home, "bad.json")
    with open(bad, "w") as f:
        f.write('{"comms": {"auth": "none", "event_address": "events.example.com:4300"}}')
    p = run_kith("config", "check", bad)
    assert p.returncode == 1, p.stderr
    for part in ('"tcp://host:port"', '"host:port"', '"uds:///abs/path"', '"/abs/path"',
                 "host must be an IPv4 literal"):
        assert part in p.stderr, p.stderr
    shutil.rmtree(home, ignore_errors=True)


def main():
    res = Results()
    res.run(files_are_private, res)
    res.run(open_home_warned)
    res.run(fifo_config_refused)
    res.run(fifo_trust_refused)
    res.run(event_address_forms)
    return res.summary()


if __name__ == "__main__":
    sys.exit(main())
