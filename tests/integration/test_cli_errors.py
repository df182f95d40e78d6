#!/usr/bin/python3
"""tests/integration/test_cli_errors.py — the `kith` command line's error
paths (DESIGN §3: every error is one line on stderr naming the problem and
the fix, with the exit code `kith --help` lists): flags given wrong, no home
to work in, paths too long, files where folders should be, stdin and stdout
that fail, and a stand-in daemon (a Python HTTP server on loopback) whose
answers to `kith paircode` and `kith tokens` are wrong, oversize, multi-line
or cut off.

Run by ctest with KITH_BIN set; every case runs, then the file fails if one
did."""

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

if not os.environ.get("KITH_BIN"):
    sys.exit("KITH_BIN is not set (ctest sets it)")
sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Peer, Results, check, frame  # noqa: E402

TIMEOUT = 60


def kith(*args, expect=0, stdin=None, env=None, unset=(), stdout=None):
    """Runs kith with KITH_HOME unset (and `unset` removed, `env` added);
    checks the exit code; returns (stdout, stderr) as text."""
    full = dict(os.environ)
    for name in ("KITH_HOME", *unset):
        full.pop(name, None)
    full.update(env or {})
    feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    p = subprocess.run([KITH, *args], stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                       env=full, timeout=TIMEOUT, **feed)
    out = p.stdout.decode(errors="replace") if p.stdout is not None else ""
    err = p.stderr.decode(errors="replace")
    check(p.returncode == expect,
          f"kith {' '.join(args)[:200]}: exit {p.returncode}, wanted {expect}\n"
          f"stdout: {out[:500]!r}\nstderr: {err[:500]!r}")
    return out, err


def error_line(err, want):
    """stderr is exactly the one line `want` (DESIGN §3)."""
    check(err == want + "\n", f"stderr {err[:600]!r},\n wanted {want!r}")


def refused(args, want, **kw):
    """kith ARGS exits 1 with exactly the line `want` on stderr."""
    _, err = kith(*args, expect=1, **kw)
    error_line(err, want)


NO_HOME = ("HOME", "XDG_CONFIG_HOME")  # with KITH_HOME, all a home can come from


class FakeDaemon:
    """A loopback HTTP server standing in for the daemon's admin routes:
    each connection gets the next answer (bytes), or None for a reset."""

    def __init__(self, tmp, answers):
        self.answers = list(answers)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.home = os.path.join(tmp, f"fake-{self.port}")
        os.makedirs(self.home)
        with open(os.path.join(self.home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": self.port}}, f)
        self.requests = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for answer in self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                conn.settimeout(TIMEOUT)
                req = b""
                while b"\r\n\r\n" not in req:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    req += chunk
                head, _, body = req.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    body += conn.recv(4096)
                self.requests.append((head.split(b"\r\n")[0].decode(), body.decode()))
                if answer is None:  # a reset: SO_LINGER 0, then close
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                try:
                    conn.sendall(answer)
                except OSError:
                    pass  # kith stopped reading (an oversize answer)

    def close(self):
        """Stops serving; True when every answer was asked for."""
        self.sock.close()  # a thread still in accept() stops with an error
        self.thread.join(TIMEOUT)
        return len(self.requests) == len(self.answers)


def http(status, body, reason="X"):
    data = body.encode() if isinstance(body, str) else body
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode() + data


def deep_dir(root, length):
    """A path under root about `length` characters long, of 200-character
    components (one component may be at most 255)."""
    path = root
    while len(path) + 202 < length:
        path = os.path.join(path, "d" * 200)
    return os.path.join(path, "e" * (length - len(path) - 1))


def main():
    r = Results()
    tmp = tempfile.mkdtemp(prefix="kith-it-cli-errors-")
    me = Peer()
    me_pk = base64.b64encode(me.pk).decode()

    def flags_named_right():
        # A short flag inside a group (-xy) is named as itself, not as the
        # flag before it; a flag that takes no value says so.
        home = os.path.join(tmp, "flags")
        refused(("peers", "list", "--json", "-xy"),
                "kith peers list: unknown option '-x'; see kith peers --help")
        refused(("id", f"--home={home}", "-qz"), "kith id: unknown option '-q'; see kith id --help")
        refused(("id", "-x"), "kith id: unknown option '-x'; see kith id --help")
        refused(("peers", "list", "--json=yes"),
                "kith peers list: --json takes no value; see kith peers --help")
        refused(("daemon", "--echo=1"),
                "kith daemon: --echo takes no value; see kith daemon --help")
        refused(("id", "--bogus=1"), "kith id: unknown option '--bogus=1'; see kith id --help")
        refused(("config", "check", "--bogus"),
                "kith config check: unknown option '--bogus'; see kith config check --help")
        refused(("audit", "query", "--bogus"),
                "kith audit query: unknown option '--bogus'; see kith audit --help")
        refused(("peers", "remove", "--bogus"),
                "kith peers remove: unknown option '--bogus'; see kith peers --help")
        refused(("paircode", "--bogus"),
                "kith paircode: unknown option '--bogus'; see kith paircode --help")
        refused(("paircode", "extra"),
                "kith paircode: unexpected argument 'extra'; see kith paircode --help")
        refused(("id", "extra"), "kith id: unexpected argument 'extra'; see kith id --help")
        refused(("config",), "kith config: expected 'check'; see kith config --help")
        refused(("config", "frob"), "kith config: expected 'check'; see kith config --help")
        refused(("tokens", "frob"), "kith tokens: unknown verb 'frob'; expected list, mint or "
                                    "revoke; see kith tokens --help")
        # kith peers takes --home=DIR as every other command does.
        out, _ = kith("peers", "list", f"--home={home}")
        check(out == f"no trusted peers in {home}/trusted_peers.json\n", out)
        for args, first in ((("gateway", "--help"), "usage: kith gateway "),
                            (("audit", "tail", "--help"), "usage: kith audit verify"),
                            (("paircode", "--help"), "usage: kith paircode "),
                            (("peers", "import", "--help"), "usage: kith peers add"),
                            (("agent", "--help"), "usage: kith agent")):
            out, err = kith(*args)
            check(out.startswith(first) and err == "", f"{args}: {out[:80]!r} {err!r}")

    def flag_values_kept():
        # A value that looks like a flag belongs to the flag before it:
        # no pass over argv ahead of the option parser takes it as -n or
        # --home.
        home = os.path.join(tmp, "values-kept")
        kith("keygen", "--home", home)
        refused(("audit", "tail", "--home", home, "--config", "-n5"),
                "kith audit: -n5: no such file (a config file named explicitly must exist)")
        out, err = kith("audit", "query", "--home", home, "--type", "-n")
        check(out == "" and err == "", (out, err))
        pk = "ed25519:" + me_pk
        kith("peers", "add", "--home", home, "--name", "carol", "--pubkey", pk,
             "--addr", "tcp://127.0.0.1:9", "--description", "--home")
        out, _ = kith("peers", "list", "--home", home, "--json")
        check(json.loads(out)["peers"][0]["meta"]["description"] == "--home", out)
        kith("peers", "remove", "carol", "--home", home)
        kith("peers", "--home", home, "add", "--name", "carol", "--pubkey", pk,
             "--addr", "tcp://127.0.0.1:9", "--description", "--home=elsewhere")
        out, _ = kith("peers", f"--home={home}", "list", "--json")
        check(json.loads(out)["peers"][0]["meta"]["description"] == "--home=elsewhere", out)
        check(not os.path.exists("elsewhere"), "--home=elsewhere was taken as the home")
        for body in ("-n", "--home", "-n5"):
            refused(("send", "--home", home, "--to", "nobody", "--body", body),
                    "kith send: no trusted peer named nobody; kith peers list shows the trusted "
                    "ones (kith peers add adds one)")

    def agent_flags():
        for args, want in (
            (("--connect", "inproc://x", "stray"),
             "unexpected argument 'stray'; see kith agent --help"),
            (("--connect", "tcp://127.0.0.1:9", "--cert", "c.key"),
             "--cert needs --server-key; see kith agent --help"),
            (("--connect", "tcp://127.0.0.1:9", "--idle-timeout-ms", "0"),
             "--idle-timeout-ms must be 1..86400000"),
            # The flag is named (it was "kith agent: agent: mdp worker: the
            # broker's CURVE key must be 40 Z85 characters"), and where the key is.
            (("--connect", "tcp://127.0.0.1:9", "--server-key", "short"),
             "--server-key takes the broker's CURVE public key, 40 Z85 characters (public-key "
             "in the daemon's $KITH_HOME/workers/broker.cert)"),
            (("--connect", "tcp://127.0.0.1:9", "--server-key", "~" * 40),
             "--server-key takes the broker's CURVE public key, 40 Z85 characters (public-key "
             "in the daemon's $KITH_HOME/workers/broker.cert)"),
            (("--connect", "tcp://127.0.0.1:9", "--log-level", "loud"),
             "--log-level must be debug, info, warn or error"),
            # The broker is in another process: a bare word, an empty or an
            # inproc:// endpoint can never reach it.
            (("--connect", "broker"), "--connect takes tcp://HOST:PORT or ipc://PATH (the "
                                      "daemon's workers.listen), got 'broker'"),
            (("--connect", ""), "--connect takes tcp://HOST:PORT or ipc://PATH (the daemon's "
                                "workers.listen), got ''"),
            (("--connect", "inproc://kith.workers"), "--connect takes tcp://HOST:PORT or "
                                                     "ipc://PATH (the daemon's workers.listen), "
                                                     "got 'inproc://kith.workers'"),
            (("--connect", "tcp://"), "--connect takes tcp://HOST:PORT or ipc://PATH (the "
                                      "daemon's workers.listen), got 'tcp://'"),
        ):
            refused(("agent", *args), "kith agent: " + want)

    def no_home():
        # No --home, no KITH_HOME, no HOME: every command that needs a home
        # says where one comes from.
        fix = "pass --home DIR or set KITH_HOME"
        for args, want in (
            (("id",), f"kith id: no home directory; {fix}"),
            (("daemon",), f"kith daemon: no home directory: {fix}"),
            (("send", "--to", "bob", "--body", "hi"), f"kith send: no home directory: {fix}"),
            (("config", "check"), f"kith config check: no home directory; {fix}"),
            (("peers", "list"), f"kith peers: no home directory; {fix}"),
            (("peers", "remove", "bob"), f"kith peers: no home directory; {fix}"),
            (("peers", "add", "--name", "bob", "--pubkey", "ed25519:" + me_pk,
              "--addr", "tcp://127.0.0.1:9"),
             f"kith peers: no home directory; {fix}"),
            (("audit", "tail"), "kith audit: no home directory: pass FILE, --home DIR or set "
                                "KITH_HOME"),
            (("envelope", "encode"), f"kith envelope encode: no home directory; {fix}"),
            (("paircode",), f"kith paircode: no home directory: {fix}"),
            (("tokens", "list"), f"kith tokens: no home directory: {fix}"),
            (("service", "logs"), f"kith service: no home directory; {fix}"),
            (("service", "install"), f"kith service: no home directory; {fix}"),
        ):
            refused(args, want, unset=NO_HOME)
        meerkat = os.path.join(tmp, "meerkat-peers.json")
        with open(meerkat, "w") as f:
            f.write('{"peers": []}')
        refused(("peers", "import", meerkat), f"kith peers: no home directory; {fix}",
                unset=NO_HOME)

    def paths_too_long():
        long_home = "/" + "h" * 4080
        refused(("peers", "list", "--home", long_home),
                f"kith peers: {long_home}: path too long; use a shorter --home")
        # The home fits, audit.path under it does not.
        home = deep_dir(tmp, 3500)
        os.makedirs(home)
        cfg = os.path.join(tmp, "long-audit.json")
        with open(cfg, "w") as f:
            json.dump({"audit": {"path": "a" * 1000}}, f)
        refused(("audit", "tail", "--home", home, "--config", cfg),
                "kith audit: the audit log's path is too long; pass FILE, or give a shorter "
                "audit.path")

    def reasons_survive_long_paths():
        # A home of 4000 characters: each error still ends in its reason
        # (they used to be cut at 512 bytes, inside the path).
        home = deep_dir(tmp, 4000)
        os.makedirs(home)
        with open(os.path.join(home, "config.json"), "w") as f:
            f.write('{"comms": {"inbox": 1}}')
        for args, cmd in ((("send", "--to", "bob", "--body", "x"), "send"),
                          (("paircode",), "paircode"), (("tokens", "list"), "tokens"),
                          (("config", "check"), "config check"), (("audit", "tail"), "audit"),
                          (("daemon",), "daemon")):
            _, err = kith(*args, "--home", home, expect=1)
            want = f"kith {cmd}: {home}/config.json: comms.inbox: unknown key"
            check(len(err.splitlines()) == 1 and err.startswith(want) and
                  err.endswith("(line 1, column 19)\n"), f"{args}: {err[-300:]!r}")
        refused(("id", "--home", home),
                f"kith id: no identity at {home}/identity/identity.key; run: kith keygen "
                f"--home {home}")

    def state_db_path_bound():
        # SQLite opens database paths of at most 512 characters, and the
        # journal's is 8 longer than state.db's: a home whose state.db is
        # longer is refused, by name, before anything starts.
        def home_for(length):
            real = os.path.realpath(tmp)
            return deep_dir(real, length - len("/state.db"))
        home = home_for(505)
        os.makedirs(home)
        refused(("daemon", "--home", home),
                f"kith daemon: {home}/state.db is 505 characters long as a real path; SQLite "
                "opens at most 504: use a home with a shorter path")
        check(not os.path.exists(os.path.join(home, "state.db")), "state.db was made")
        # One shorter runs.
        home = home_for(504)
        os.makedirs(home)
        check(len(os.path.join(home, "state.db")) == 504, home)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": 0},
                       "comms": {"address": "127.0.0.1:0", "uds_path": None},
                       "workers": {"agent_threads": 0}}, f)
        errlog = os.path.join(tmp, "daemon-504.err")
        with open(errlog, "wb") as out:
            p = subprocess.Popen([KITH, "daemon", "--home", home], stdout=out, stderr=out)
        try:
            deadline = time.time() + TIMEOUT
            text = ""
            while "daemon: ready" not in text:
                check(p.poll() is None and time.time() < deadline, f"not ready: {text[-600:]}")
                time.sleep(0.05)
                text = open(errlog, errors="replace").read()
            p.send_signal(signal.SIGTERM)
            check(p.wait(timeout=TIMEOUT) == 0, f"SIGTERM: exit {p.returncode}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        check(os.path.exists(os.path.join(home, "state.db")), "no state.db")

    def audit_reads():
        home = os.path.join(tmp, "audit")
        os.makedirs(home)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"audit": {"hmac_key_env": "KITH_TEST_NO_SUCH_KEY"}}, f)
        log = os.path.join(home, "audit.log")
        # An HMAC key the configuration names but the environment lacks is a
        # warning: the chain is still checked (an empty log here).
        out, err = kith("audit", "verify", "--home", home, unset=("KITH_TEST_NO_SUCH_KEY",))
        check(out == f"{log}: intact: 0 records\n", out)
        check(len(err.splitlines()) == 1 and "KITH_TEST_NO_SUCH_KEY" in err and
              err.endswith(": HMACs are not checked\n"), err)
        # The same variable named on the command line is an error.
        _, err = kith("audit", "verify", "--home", home, "--hmac-key-env",
                      "KITH_TEST_NO_SUCH_KEY", expect=1, unset=("KITH_TEST_NO_SUCH_KEY",))
        check(len(err.splitlines()) == 1 and err.startswith("kith audit verify: ") and
              "KITH_TEST_NO_SUCH_KEY" in err, err)
        refused(("audit", "tail", tmp), f"kith audit: cannot read {tmp}: Is a directory")
        # -n is named as typed (it stands for the undocumented --lines).
        refused(("audit", "tail", "--home", home, "-n"),
                "kith audit tail: -n needs a value; see kith audit --help")
        refused(("audit", "tail", "--home", home, "-n", "x"),
                "kith audit: -n must be a number from 0 to 1000; see kith audit --help")
        # ... and joined to its value, as tail(1) takes it.
        refused(("audit", "tail", "--home", home, "-nx"),
                "kith audit: -n must be a number from 0 to 1000; see kith audit --help")
        out, err = kith("audit", "tail", "--home", home, "-n5")
        check(out == "" and err == "", (out, err))
        # A log named on the command line that is not there is not an empty
        # log: verify said "intact: 0 records" and exit 0 to a mistyped path.
        gone = os.path.join(tmp, "no-such-audit.log")
        for verb in ("verify", "tail", "query"):
            refused(("audit", verb, gone),
                    f"kith audit {verb}: {gone}: no such file; name an audit log, or none to "
                    "read the home's (audit.path)")

    def envelope_io():
        home = os.path.join(tmp, "env")
        kith("keygen", "--home", home)
        # stdin a directory: read(2) fails with EISDIR.
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            p = subprocess.run([KITH, "envelope", "decode"], stdin=fd, capture_output=True,
                               timeout=TIMEOUT)
        finally:
            os.close(fd)
        check(p.returncode == 1, f"exit {p.returncode}")
        error_line(p.stderr.decode(), "kith envelope decode: cannot read stdin (Is a directory); "
                                      "give it a file or a pipe")
        # stdin closed: reads fail as on a closed descriptor.
        p = subprocess.run([KITH, "envelope", "decode"], capture_output=True, timeout=TIMEOUT,
                           stdin=None, preexec_fn=lambda: os.close(0))
        check(p.returncode == 1, f"exit {p.returncode}")
        error_line(p.stderr.decode(), "kith envelope decode: cannot read stdin (Bad file "
                                      "descriptor); give it a file or a pipe")
        msg = json.dumps({"to": "ed25519:" + me_pk,
                          "kind": {"type": "message", "body": "hi"}}).encode()
        # stdout that cannot take the frame.
        with open("/dev/full", "wb") as full:
            _, err = kith("envelope", "encode", "--home", home, stdin=msg, stdout=full, expect=1)
        error_line(err, "kith envelope encode: cannot write stdout (No space left on device); "
                        "check the file or pipe it goes to")
        # More JSON than an envelope may be (ROUTER_JSON_MAX, 4 MiB).
        big = b'{"to": "x", "pad": "' + b"a" * (4 * 1024 * 1024) + b'"}'
        refused(("envelope", "encode", "--home", home),
                "kith envelope encode: oversize: more than 4194304 bytes on stdin", stdin=big)
        # A map whose only key is "$bytes" has no JSON form decode could
        # print (it would read back as a byte string); verify still takes it.
        env = me.request(me.pk, params={"$bytes": "not bytes"})
        refused(("envelope", "decode"),
                'kith envelope decode: the envelope holds a map {"$bytes": …}, which has no '
                "JSON form; use kith envelope verify", stdin=frame(env))
        kith("envelope", "verify", stdin=frame(env))

    def stdout_that_fails():
        # What a command prints must arrive: a full disk or a closed
        # stdout is exit 1 with one line, not exit 0 with nothing written.
        home = os.path.join(tmp, "stdout")
        kith("keygen", "--home", home)
        full_line = ("cannot write stdout (No space left on device); check the file or pipe it "
                     "goes to")
        for args, cmd in ((("id", "--home", home), "id"),
                          (("peers", "list", "--home", home), "peers"),
                          (("config", "check", "--home", home, "--print"), "config"),
                          (("audit", "verify", "--home", home), "audit"),
                          (("id", "--help"), "id"), (("--help",), None), (("--version",), None)):
            with open("/dev/full", "wb") as full:
                _, err = kith(*args, stdout=full, expect=1)
            error_line(err, f"kith {cmd}: {full_line}" if cmd else f"kith: {full_line}")
        # A reader that has gone: SIGPIPE, without a word (kith --help).
        r, w = os.pipe()
        os.close(r)
        try:
            p = subprocess.run([KITH, "peers", "list", "--home", home], stdout=w,
                               stderr=subprocess.PIPE, timeout=TIMEOUT)
        finally:
            os.close(w)
        check(p.returncode == -signal.SIGPIPE and p.stderr == b"", (p.returncode, p.stderr))
        out, _ = kith("--help")
        check("ends\n  by SIGPIPE without a word" in out, out)
        p = subprocess.run([KITH, "id", "--home", home], stdout=None, stderr=subprocess.PIPE,
                           timeout=TIMEOUT, preexec_fn=lambda: os.close(1))
        check(p.returncode == 1, f"exit {p.returncode}")
        error_line(p.stderr.decode(), "kith id: cannot write stdout (Bad file descriptor); check "
                                      "the file or pipe it goes to")

    def daemon_stderr_closed():
        # With stderr closed, the next file the daemon opened (its log)
        # took descriptor 2, and every log line was written to it twice.
        home = os.path.join(tmp, "daemon-no-stderr")
        os.makedirs(home)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": 0},
                       "comms": {"address": "127.0.0.1:0", "uds_path": None},
                       "workers": {"agent_threads": 0}}, f)
        log = os.path.join(home, "logs", "daemon.log")
        p = subprocess.Popen([KITH, "daemon", "--home", home], stdout=subprocess.DEVNULL,
                             stderr=None, preexec_fn=lambda: os.close(2))
        try:
            deadline = time.time() + TIMEOUT
            text = ""
            while "daemon: ready" not in text:
                check(p.poll() is None and time.time() < deadline, f"not ready: {text[-600:]}")
                time.sleep(0.05)
                text = open(log, errors="replace").read() if os.path.exists(log) else ""
            p.send_signal(signal.SIGTERM)
            check(p.wait(timeout=TIMEOUT) == 0, f"SIGTERM: exit {p.returncode}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        lines = open(log, errors="replace").read().splitlines()
        starts = [line for line in lines if "daemon: starting" in line]
        check(len(starts) == 1, f"{len(starts)} 'starting' lines in daemon.log: {lines[:4]}")

    def identity_export():
        home = os.path.join(tmp, "export")
        kith("keygen", "--home", home)
        blocker = os.path.join(tmp, "export-file")
        open(blocker, "w").close()
        refused(("id", "--home", home, "--export-meerkat", blocker),
                f"kith id: --export-meerkat: cannot create {blocker}: Not a directory")
        # An import names its flag too: the path may be mistaken for the home's.
        empty = os.path.join(tmp, "export-empty")
        os.makedirs(empty)
        refused(("keygen", "--home", os.path.join(tmp, "import-to"), "--import-meerkat", empty),
                f"kith keygen: --import-meerkat: {empty}/identity.key: No such file or directory")

    def send_refusals():
        home = os.path.join(tmp, "send")
        os.makedirs(home)
        refused(("send", "--home", home, "--to", "bob", "--body", "hi"),
                f"kith send: no identity at {home}/identity/identity.key; run: kith keygen "
                f"--home {home}")
        with open(os.path.join(home, "config.json"), "w") as f:
            f.write('{"comms": {"inbox": 1}}')
        _, err = kith("send", "--home", home, "--to", "bob", "--body", "hi", expect=1)
        check(len(err.splitlines()) == 1 and err.startswith(
            f"kith send: {home}/config.json: comms.inbox: unknown key"), err)

    def send_thread_refused():
        # The node's thread cannot be made (the user's process limit): the
        # line says why and what to do, not only "cannot start". Found by
        # raising RLIMIT_NPROC one at a time for an unprivileged user, as
        # the threads made before it vary; root ignores the limit.
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("prlimit"):
            print("     skipped: needs root, setpriv and prlimit")
            return
        base = tempfile.mkdtemp(prefix="kith-it-nproc-")
        os.chmod(base, 0o755)
        home = os.path.join(base, "home")
        # LSan needs a thread of its own to look for leaks at exit.
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")
        env.pop("KITH_HOME", None)

        def run(*args, nproc=None):
            limit = ("prlimit", f"--nproc={nproc}") if nproc else ()
            return subprocess.run([*limit, *nobody, KITH, *args], capture_output=True,
                                  env=env, timeout=TIMEOUT, cwd=base)
        try:
            os.chown(base, 65534, 65534)
            check(run("keygen", "--home", home).returncode == 0, "keygen as nobody")
            check(run("peers", "add", "--home", home, "--name", "bob", "--pubkey",
                      "ed25519:" + me_pk, "--addr", "tcp://127.0.0.1:9").returncode == 0,
                  "peers add as nobody")
            seen = crypto = None
            for nproc in range(1, 64):
                p = run("send", "--home", home, "--to", "bob", "--body", "x", "--timeout", "1",
                        nproc=nproc)
                # gcov's runtime (tools/coverage builds) says it cannot write
                # its counts as nobody: not kith's line.
                err = "".join(ln for ln in p.stderr.decode(errors="replace").splitlines(True)
                              if not ln.startswith("profiling:"))
                if "kith send: cannot start the sending" in err:
                    seen = err
                    check(p.returncode == 1, f"exit {p.returncode}")
                    error_line(err.splitlines(True)[-1],
                               "kith send: cannot start the sending thread (Resource temporarily "
                               "unavailable); raise the limit on processes (ulimit -u) or free "
                               "memory, and retry")
                elif "crypto threads" in err:
                    # Fewer processes still: the node's crypto threads
                    # (comms.crypto_threads) are the first to fail, and the
                    # line says so, not "out of memory".
                    crypto = err
                    check(p.returncode == 1, f"exit {p.returncode}")
                    last = err.splitlines(True)[-1]
                    check(last.startswith("kith send: cannot start ") and
                          last.rstrip().endswith("crypto threads (Resource temporarily "
                                                 "unavailable): lower comms.crypto_threads, or "
                                                 "raise the limit on processes (ulimit -u)"),
                          last)
                if p.returncode != 1:
                    break  # enough threads: the send itself ran
            check(seen is not None, "no process limit failed the sending thread")
            check(crypto is not None, "no process limit failed the crypto threads")
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def values_checked():
        # Each flag's value is checked, and named, before anything is done.
        home = os.path.join(tmp, "values")
        kith("keygen", "--home", home)
        uid = "01890a5c-2c4b-7cde-8f01-23456789abcd"
        weak = "ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="  # a small-order point
        for args, want in (
            (("send", "--to", "b", "--body", "x", "--count", "5x"),
             "kith send: --count takes 1 to 1000000"),
            (("send", "--to", "b", "--body", "x", "--timeout", "0"),
             "kith send: --timeout takes seconds, more than 0 and at most 3600"),
            (("send", "--to", "b", "--body", "x", "--timeout", "2x"),
             "kith send: --timeout takes seconds, more than 0 and at most 3600"),
            # yajl's own message ends in a line break: still one line, and
            # no log line of the node's after it.
            (("send", "--to", "b", "--response", uid, "--status", "accepted", "--result", "{bad"),
             "kith send: --result: invalid JSON: lexical error: invalid char in json text."),
            (("send", "--to", "nobody", "--response", uid, "--status", "failed"),
             "kith send: no trusted peer named nobody; kith peers list shows the trusted "
             "ones (kith peers add adds one)"),
            # A flag the kind does not read is refused, not dropped.
            (("send", "--to", "b", "--body", "x", "--params", "{}"),
             "kith send: --params goes with --request or --lifecycle; see kith send --help"),
            (("send", "--to", "b", "--request", "x", "--result", "{}"),
             "kith send: --status and --result go with --response; see kith send --help"),
            (("send", "--to", "b", "--lifecycle", "x", "--status", "failed"),
             "kith send: --status and --result go with --response; see kith send --help"),
            (("peers", "add", "--name", "x", "--pubkey", "abc", "--addr", "tcp://h:1"),
             'kith peers add: --pubkey must start with "ed25519:"; pass the pubkey the peer\'s '
             "`kith id` prints"),
            (("peers", "add", "--name", "x", "--pubkey", weak, "--addr", "tcp://h:1"),
             "kith peers add: --pubkey is not a full-order Ed25519 key; pass the pubkey the "
             "peer's `kith id` prints"),
            (("peers", "add", "--name", "x", "--pubkey", weak, "--addr", "tcp://h:1",
              "--label", "=v"), "kith peers add: --label needs KEY=VALUE, got '=v'"),
            (("peers", "add", "--pubkey", weak), "kith peers add: --name, --pubkey and --addr "
                                                 "are required; see kith peers --help"),
            (("audit", "query", "--since", "abc"),
             "kith audit: --since must be a number from 0 to 18446744073709551615; see kith "
             "audit --help"),
            (("audit", "query", "--limit", "1001"),
             "kith audit: --limit must be a number from 0 to 1000; see kith audit --help"),
        ):
            refused((*args, "--home", home), want)
        _, err = kith("envelope", "encode", "--home", home, stdin=b"{bad", expect=1)
        error_line(err, "kith envelope encode: invalid JSON: lexical error: invalid char in "
                        "json text.")
        for args, want in (
            (("peers", "import", "a", "b"), "kith peers import: expected one FILE (a Meerkat "
                                            "trusted_peers.json); see kith peers --help"),
            (("agent", "--connect", "inproc://x", "--threads", "0"),
             "kith agent: --threads must be 1..256"),
            (("agent", "--connect", "inproc://x", "--provider", "bogus"),
             'kith agent: agent.provider: expected one of "scripted", "openai", got "bogus"'),
            (("agent", "--connect", "inproc://x", "--bogus"),
             "kith agent: unknown option '--bogus'; see kith agent --help"),
            # A name too long to send says which flag and the bound.
            (("tokens", "mint", "--scope", "node", "--name", "n" * 600),
             "kith tokens mint: --name is too long: a token's name is 1 to 64 octets, its "
             "scope node or operator"),
            (("service", "logs", "--lines", "abc"),
             "kith service: --lines takes 1 to 100000; see kith service --help"),
            (("service", "install", "--follow"),
             "kith service install: --follow does not apply to install; see kith service --help"),
            (("service", "status", "--config", "x"),
             "kith service status: --config does not apply to status; see kith service --help"),
            (("service", "start", "--print"),
             "kith service start: --print does not apply to start; see kith service --help"),
            # --lines given as its default is still given.
            (("service", "stop", "--lines", "100"),
             "kith service stop: --lines does not apply to stop; see kith service --help"),
            (("service", "logs", "--system"),
             "kith service logs: --system does not apply to logs; see kith service --help"),
            # The verb is checked before its flags.
            (("service", "frob", "--home", "x"),
             "kith service: unknown verb 'frob'; see kith service --help"),
        ):
            refused(args, want)
        # A command alone is one line naming its verbs (exit 1), as every
        # error; -h prints the usage on stdout.
        for cmd, first, verbs in (("audit", "usage: kith audit verify", "verify, tail or query"),
                                  ("envelope", "usage: kith envelope encode",
                                   "encode, decode or verify")):
            refused((cmd,), f"kith {cmd}: expected {verbs}; see kith {cmd} --help for the usage")
            out, err = kith(cmd, "-h")
            check(out.startswith(first) and err == "", out[:80])
        out, _ = kith("config", "-h")
        check(out.startswith("usage: kith config check"), out[:80])

    def peers_import_drops_bad_addr():
        home = os.path.join(tmp, "import")
        src = os.path.join(tmp, "import-src.json")
        pk = "ed25519:" + me_pk
        with open(src, "w") as f:
            json.dump({"peers": [{"name": "web", "pubkey": pk, "addr": "http://h:1"}]}, f)
        out, err = kith("peers", "import", src, "--home", home)
        lines = out.splitlines()
        check(len(lines) == 2 and lines[0].startswith('dropped peers[0] "web": addr') and
              lines[1] == "imported 0 (0 renamed), dropped 1; 0 trusted" and err == "",
              f"{out!r} {err!r}")
        # A folder, and a file that is not JSON: one line each (yajl's own
        # message draws the spot over two more lines).
        refused(("peers", "import", tmp, "--home", home),
                f"kith peers import: {tmp}: Is a directory; give the path of a Meerkat "
                "trusted_peers.json")
        empty = os.path.join(tmp, "import-empty.json")
        open(empty, "w").close()
        refused(("peers", "import", empty, "--home", home),
                f"kith peers import: {empty}: not JSON: parse error: premature EOF; nothing was "
                "imported")
        # A file past the 8 MiB bound is refused without a size kith never read.
        with open(src, "w") as f:
            f.write('{"peers": [], "pad": "' + "p" * (9 * 1024 * 1024) + '"}')
        refused(("peers", "import", src, "--home", home),
                f"kith peers import: {src}: more than the 8388608 bytes a trust file may be; "
                "nothing was imported")

    def daemon_refusals():
        # A home whose config.json path fits (4095 characters) but whose
        # logs/daemon.log does not: refused before anything is started.
        home = deep_dir(tmp, 4080)
        os.makedirs(home)
        refused(("daemon", "--home", home),
                f"kith daemon: {home}/logs/daemon.log: path too long; use a shorter --home")
        check(not os.path.exists(os.path.join(home, "logs")), "logs/ was made")
        # A home this run makes, whose state.db SQLite cannot open: refused,
        # and the home (with its logs/) is taken back, not left made.
        real = os.path.realpath(tmp)
        fresh_home = deep_dir(os.path.join(real, "fresh-statedb"), 505 - len("/state.db"))
        os.makedirs(os.path.dirname(fresh_home))
        refused(("daemon", "--home", fresh_home),
                f"kith daemon: {fresh_home}/state.db is 505 characters long as a real path; "
                "SQLite opens at most 504: use a home with a shorter path")
        check(not os.path.exists(fresh_home), "the home this run made was left behind")
        # A flag's mistake is found before the home is made.
        fresh = os.path.join(tmp, "daemon-not-made")
        refused(("gateway", "--home", fresh, "--log-level", "loud"),
                "kith gateway: --log-level must be debug, info, warn or error")
        check(not os.path.exists(fresh), "the home was made for a refused command")

    def daemon_port_taken():
        # A port another process holds: the last line (the ones before are
        # the daemon's log) names it and what to do.
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        fix = ("; another process listens there (another kith daemon?): stop it, or choose "
               "another address (--port, gateway.port, comms.address)")
        try:
            for name, cfg, want in (
                ("gateway", {"gateway": {"port": port},
                             "comms": {"address": "127.0.0.1:0", "uds_path": None}},
                 f"kith daemon: gateway: cannot listen on http://127.0.0.1:{port}: Address "
                 "already in use"),
                ("comms", {"gateway": {"port": 0},
                           "comms": {"address": f"127.0.0.1:{port}", "uds_path": None}},
                 f"kith daemon: cannot listen on 127.0.0.1:{port}: Address already in use"),
            ):
                home = os.path.join(tmp, f"port-taken-{name}")
                os.makedirs(home)
                cfg["workers"] = {"agent_threads": 0}
                with open(os.path.join(home, "config.json"), "w") as f:
                    json.dump(cfg, f)
                _, err = kith("daemon", "--home", home, expect=1)
                check(err.splitlines()[-1] == want + fix, err[-400:])
        finally:
            holder.close()

    def daemon_without_log_file():
        # logs/daemon.log a folder: the daemon says so once and logs to
        # stderr; with the smallest per-connection unsent bound it still
        # starts (the event streams keep room for their largest events).
        home = os.path.join(tmp, "daemon-nolog")
        os.makedirs(os.path.join(home, "logs", "daemon.log"))
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": 0},
                       "comms": {"address": "127.0.0.1:0", "uds_path": None},
                       "workers": {"agent_threads": 0},
                       "limits": {"conn_unsent_max": 1024}}, f)
        errlog = os.path.join(tmp, "daemon-nolog.err")
        with open(errlog, "wb") as out:
            p = subprocess.Popen([KITH, "daemon", "--home", home], stdout=out, stderr=out)
        try:
            deadline = time.time() + TIMEOUT
            text = ""
            while "daemon: ready" not in text:
                check(p.poll() is None and time.time() < deadline, f"not ready: {text}")
                time.sleep(0.05)
                text = open(errlog, errors="replace").read()
            p.send_signal(signal.SIGTERM)
            check(p.wait(timeout=TIMEOUT) == 0, f"SIGTERM: exit {p.returncode}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        text = open(errlog, errors="replace").read()
        want = (f"kith daemon: cannot open {home}/logs/daemon.log (Is a directory); logging "
                "to stderr only: make that path a file kith can write, then send the daemon "
                "SIGHUP to open it")
        check(text.splitlines()[0] == want, text[:600])

    def admin_answers():
        # Each kith call below makes one request; the stand-in answers them
        # in order.
        multi = "first line\nsecond line\n"
        cases = [
            (("paircode",), http(500, multi),
             "kith paircode: /admin/paircode answered 500: first line second line"),
            (("paircode",), http(200, '{"code":"12345x"}'),
             'kith paircode: unexpected answer: {"code":"12345x"}'),
            (("paircode",), http(403, "x" * 5000),
             "kith paircode: /admin/paircode answered 403: " + "x" * 200 + "…"),
            (("paircode",), b"SSH-2.0-OpenSSH\r\n\r\n",
             "kith paircode: http://127.0.0.1:{port} answered something that is not HTTP"),
            (("paircode",), http(200, "y" * (1 << 20)),
             "kith paircode: http://127.0.0.1:{port} answered more than 1024 KiB; not read"),
            (("tokens", "list"), http(200, '{"tokens": 3}'),
             'kith tokens list: unexpected answer: {"tokens": 3}'),
            (("tokens", "list"), http(403, '{"error": "not\\nhere", "code": "x"}'),
             "kith tokens list: the daemon answered 403: not here"),
            (("tokens", "mint", "--scope", "node", "--name", "n"), http(201, "{}"),
             "kith tokens mint: unexpected answer"),
            (("tokens", "revoke", "0123456789abcdef"), http(500, "no JSON here\r\n"),
             "kith tokens revoke: the daemon answered 500: no JSON here"),
            # Cut before a two-octet character that octet 200 falls inside.
            (("tokens", "revoke", "0123456789abcdef"),
             http(404, json.dumps({"error": "a" + "é" * 150}, ensure_ascii=False)),
             "kith tokens revoke: the daemon answered 404: a" + "é" * 99 + "…"),
        ]
        fake = FakeDaemon(tmp, [answer for _, answer, _ in cases] + [None])
        try:
            cfg = os.path.join(fake.home, "config.json")
            for i, (args, _, want) in enumerate(cases):
                # --config FILE (paircode's first call) names the same file.
                more = ("--config", cfg) if i == 0 else ()
                refused((*args, "--home", fake.home, *more), want.replace("{port}", str(fake.port)))
            # A reset after the request: one line.
            _, err = kith("paircode", "--home", fake.home, expect=1)
            check(len(err.splitlines()) == 1 and err.startswith(
                f"kith paircode: the exchange with http://127.0.0.1:{fake.port} failed ("), err)
        finally:
            done = fake.close()
        check(done, f"kith made {len(fake.requests)} requests, not {len(fake.answers)}")
        check([req for req, _ in fake.requests[:1]] == ["GET /admin/paircode HTTP/1.1"],
              f"{fake.requests[:1]}")
        check(fake.requests[7] == ("POST /admin/tokens HTTP/1.1",
                                   '{"scope":"node","name":"n"}'), f"{fake.requests[7]}")
        check(fake.requests[8][0] == "DELETE /admin/tokens/0123456789abcdef HTTP/1.1",
              f"{fake.requests[8]}")
        # Nobody listening any more: the line says what to do.
        for args in (("paircode",), ("tokens", "list")):
            refused((*args, "--home", fake.home),
                    f"kith {args[0]}: the daemon is not running at http://127.0.0.1:{fake.port} "
                    "(Connection refused); start it (kith daemon), or pass the --home or "
                    "--config it runs with")
        # A gateway.host that is no address: the config refuses it by key,
        # as kith daemon and kith config check do.
        home = os.path.join(tmp, "admin-host")
        os.makedirs(home)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"host": "gateway.example", "port": 9}}, f)
        for args in (("paircode",), ("tokens", "list")):
            refused((*args, "--home", home),
                    f"kith {args[0]}: {home}/config.json: gateway.host: expected an IP address "
                    'or localhost (the address to listen on), got "gateway.example" (a listener '
                    "binds an address; kith looks no name up for it) (line 1, column 39)")

    def admin_silent():
        # A process on the daemon's port that takes the connection (or
        # leaves it in its backlog) and never answers: kith paircode gives
        # up at its deadline with one line, not hanging for ever.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        home = os.path.join(tmp, "silent")
        os.makedirs(home)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": port}}, f)
        try:
            refused(("paircode", "--home", home),
                    f"kith paircode: http://127.0.0.1:{port} took the request but did not answer "
                    "within 10 s (is the daemon stuck?)")
        finally:
            silent.close()

    for case in (admin_silent, flags_named_right, flag_values_kept, agent_flags, no_home, paths_too_long,
                 reasons_survive_long_paths, state_db_path_bound, audit_reads,
                 envelope_io, stdout_that_fails, daemon_stderr_closed, identity_export,
                 send_refusals, send_thread_refused, values_checked,
                 peers_import_drops_bad_addr,
                 daemon_refusals, daemon_port_taken, daemon_without_log_file, admin_answers):
        r.run(case)
    shutil.rmtree(tmp, ignore_errors=True)
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
