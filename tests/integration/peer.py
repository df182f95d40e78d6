"""tests/integration/peer.py — an independent comms peer, written from
DESIGN §8 alone with cbor2 and PyNaCl (no kith code), and helpers to start a
real `kith daemon` in a temporary home.

Envelope: CBOR map {id: bstr16, from: bstr32, to: bstr32, kind: map, sig: bstr64};
the signature is Ed25519 over the canonical CBOR of [id, from, to, kind];
frames are a 4-byte big-endian length and one CBOR item.

This is the one helper module of tests/integration/: running the CLI
(kith, kith_run), a daemon (Daemon: start, ports, wait_log), its state
(inbox_rows, events, wait_events), its gateway (metrics, metric, curl, raw,
gateway_url) and small checks (check, Results)."""

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import time
import uuid

import cbor2
import nacl.exceptions
import nacl.signing

KITH = os.environ.get("KITH_BIN", "build/kith")
PEER_NS = uuid.UUID("6d656572-6b61-7450-6565-724964300001")


def uuid7(ms=None):
    """A UUIDv7 (RFC 9562): 48-bit Unix ms, version 7, variant 10."""
    if ms is None:
        ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + secrets.token_bytes(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


def pubkey_text(pk):
    return "ed25519:" + base64.b64encode(pk).decode()


def peer_id(pk):
    """UUIDv5 over the raw key bytes (uuid.uuid5 wants text, so by hand)."""
    h = bytearray(hashlib.sha1(PEER_NS.bytes + pk).digest()[:16])
    h[6] = 0x50 | (h[6] & 0x0F)
    h[8] = 0x80 | (h[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(h)))


def signable(env):
    return cbor2.dumps([env["id"], env["from"], env["to"], env["kind"]], canonical=True)


class Peer:
    """A signing identity that builds envelopes the way DESIGN §8 says."""

    def __init__(self, seed=None):
        self.sk = nacl.signing.SigningKey(seed or secrets.token_bytes(32))
        self.pk = bytes(self.sk.verify_key)

    def envelope(self, to, kind, eid=None):
        env = {"id": eid or uuid7(), "from": self.pk, "to": to, "kind": kind}
        env["sig"] = self.sk.sign(signable(env)).signature
        return env

    def message(self, to, body="hi", **kw):
        return self.envelope(to, {"type": "message", "body": body}, **kw)

    def request(self, to, intent="ping", params=None, **kw):
        return self.envelope(to, {"type": "request", "intent": intent,
                                  "params": params if params is not None else {}}, **kw)


def frame(env_or_bytes):
    data = env_or_bytes if isinstance(env_or_bytes, bytes) else encode_loose(env_or_bytes)
    return struct.pack(">I", len(data)) + data


def encode_loose(env):
    """Non-canonical key order on purpose: kith must re-encode to verify."""
    return cbor2.dumps({"sig": env["sig"], "kind": env["kind"], "to": env["to"],
                        "from": env["from"], "id": env["id"]})


def verify_envelope(env):
    try:
        nacl.signing.VerifyKey(env["from"]).verify(signable(env), env["sig"])
        return True
    except nacl.exceptions.BadSignatureError:
        return False


class Conn:
    """One comms connection: send frames, read frames, notice closes."""

    def __init__(self, addr, timeout=60.0, rcvbuf=None):
        if isinstance(addr, tuple) and rcvbuf:
            # Before connect, so the window offered never exceeds the buffer:
            # shrunk afterwards, data already in flight overfills it and the
            # kernel drops what arrives next, window updates included.
            self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.s.settimeout(timeout)
            self.s.connect(addr)
        elif isinstance(addr, tuple):
            self.s = socket.create_connection(addr, timeout=timeout)
        else:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(timeout)
            self.s.connect(addr)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_frame(self):
        """One decoded CBOR item, or None when the peer closed."""
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    item = cbor2.loads(self.buf[4:4 + n])
                    self.buf = self.buf[4 + n:]
                    return item
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def closed(self):
        """True when the peer closed the connection (EOF or reset)."""
        return self.read_frame() is None

    def close(self):
        self.s.close()


def ws_masked(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    """One client frame (RFC 6455 §5.2: masked), any length."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_server_frames(data):
    """Splits what a server sent after its 101 (frames are never masked
    that way) into (opcode, payload); an unfinished last frame is left out."""
    out = []
    while len(data) >= 2:
        op, n = data[0] & 0x0F, data[1] & 0x7F
        i = 2
        if n == 126:
            n, i = struct.unpack(">H", data[2:4])[0], 4
        elif n == 127:
            n, i = struct.unpack(">Q", data[2:10])[0], 10
        assert not data[1] & 0x80, "a server frame was masked"
        if len(data) < i + n:
            break
        out.append((op, data[i:i + n]))
        data = data[i + n:]
    return out


def ws_read_until(s, until):
    """Reads a raw upgraded socket (its HTTP head and then frames) until
    until(frames) holds or the server closes; returns (head, frames)."""
    data, head, frames = b"", b"", []
    while not until(frames):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        frames = ws_server_frames(rest) if sep else []
    return head, frames


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A real `kith daemon` in a temporary home, with its own ports."""

    def __init__(self, name="node", config=None, home=None, args=(), command="daemon"):
        self.command = command  # "daemon", or "gateway" (no comms listeners)
        self.home = home or tempfile.mkdtemp(prefix=f"kith-{name}-")
        self.args = list(args)  # extra `kith daemon` flags, e.g. --log-level debug
        # Port 0 everywhere: the kernel picks, and start() reads the ports
        # back from the daemon's log, so parallel tests never race for one.
        self.port = None
        self.gw_port = None
        self.event_port = None
        self.uds = os.path.join(self.home, "run", "comms.sock")
        # No embedded agent workers unless a test asks (workers.agent_threads):
        # with them, admitted entries become turns and leave the inbox, and
        # the tests of admission read the inbox.
        cfg = {"gateway": {"port": 0},
               "comms": {"address": "127.0.0.1:0", "uds_path": self.uds},
               "workers": {"agent_threads": 0}}
        # The @crypto0 twins (CMakeLists.txt) run the same test with the
        # checks on the loop thread instead of the crypto threads.
        if os.environ.get("KITH_TEST_CRYPTO_THREADS"):
            cfg["comms"]["crypto_threads"] = int(os.environ["KITH_TEST_CRYPTO_THREADS"])
        for section, values in (config or {}).items():
            cfg.setdefault(section, {}).update(values)
        self.config = cfg
        with open(os.path.join(self.home, "config.json"), "w") as f:
            json.dump(cfg, f)
        if not os.path.exists(os.path.join(self.home, "identity", "identity.key")):
            kith("keygen", "--home", self.home)
        ident = json.loads(kith("id", "--home", self.home))
        self.pubkey_text = ident["pubkey"]
        self.pk = base64.b64decode(ident["pubkey"].split(":", 1)[1])
        self.proc = None
        self.log_path = os.path.join(self.home, "daemon.stderr")

    def trust(self, name, pk, addr="tcp://127.0.0.1:9"):
        kith("peers", "add", "--home", self.home, "--name", name,
             "--pubkey", pubkey_text(pk), "--addr", addr)

    def start(self):
        # A restart appends to the same log: read only what this run wrote
        # (the ports it bound, its "ready"), never the last run's.
        since = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([KITH, self.command, "--home", self.home, *self.args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            logs = self.logs(since)
            if "daemon: ready" in logs:
                # The backend asked for (the epoll twins) is the one serving.
                want = os.environ.get("KITH_LOOP_BACKEND")
                if want and {"epoll": "epoll)", "uring": "io_uring)"}[want] not in logs:
                    raise RuntimeError(f"asked for {want}, the log says otherwise:\n{logs}")
                self.port = self._bound(logs, r"comms: listening on tcp://[^ ]*:(\d+) \(signed")
                self.gw_port = self._bound(logs, r"gateway: listening on http://[^ ]*:(\d+) ")
                self.event_port = self._bound(logs, r"events: listening on tcp://[^ ]*:(\d+) \(plain")
                return self
            time.sleep(0.05)
        raise RuntimeError("daemon did not become ready:\n" + self.logs())

    @staticmethod
    def _bound(logs, pattern):
        m = re.search(pattern, logs)
        return int(m.group(1)) if m else None

    def logs(self, since=0):
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def wait_log(self, needle, timeout=60, count=1):
        """Waits until `needle` appears `count` times: the daemon's logger
        writes from its own thread, a moment after the event."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.logs().count(needle) >= count:
                return True
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not {count}x in daemon log:\n{self.logs()}")

    def restart(self, sig=signal.SIGTERM, while_stopped=None):
        """Stops (or kills) the daemon, runs while_stopped() (an edit of its
        home, say), and starts it again on the same ports when they were
        fixed in its config."""
        self.stop(sig)
        if while_stopped:
            while_stopped()
        return self.start()

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("daemon ignored SIGTERM for 30 s")
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        return self.proc.returncode if self.proc else None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def kith(*args, check=True, stdin=None):
    p = subprocess.run([KITH, *args], capture_output=True, text=True, input=stdin, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"kith {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p.stdout


def kith_run(*args, expect=0, stdin=None, env=None):
    """Runs kith without KITH_HOME (plus `env`), checks the exit code is
    `expect`, returns (stdout, stderr). Bytes on stdin give bytes on stdout."""
    full_env = dict(os.environ)
    full_env.pop("KITH_HOME", None)
    full_env.update(env or {})
    binary = isinstance(stdin, bytes)
    p = subprocess.run([KITH, *args], input=stdin, capture_output=True, text=not binary,
                       env=full_env, timeout=60)
    err = p.stderr.decode(errors="replace") if binary else p.stderr
    if p.returncode != expect:
        out = p.stdout[:500] if binary else p.stdout
        raise AssertionError(f"kith {' '.join(args)}: exit {p.returncode}, wanted {expect}\n"
                             f"stdout: {out!r}\nstderr: {err}")
    return p.stdout, err


def check(cond, what):
    """Fails the running case with `what` unless cond holds."""
    if not cond:
        raise AssertionError(what)


# ------------------------------------------------------------------ daemon state

def inbox_rows(node, columns="envelope_id, kind, frame"):
    """The daemon's durable inbox (state.db), in admission order."""
    db = sqlite3.connect(os.path.join(node.home, "state.db"))
    try:
        return db.execute(f"SELECT {columns} FROM inbox ORDER BY seq").fetchall()
    finally:
        db.close()


def events(node):
    """The texts of the external events in the inbox, in order."""
    return [bytes(f).decode() for k, f in inbox_rows(node, "kind, frame") if k == "event"]


def wait_events(node, n, timeout=60):
    """Waits until the inbox holds at least n events; returns them."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = events(node)
        if len(got) >= n:
            return got
        time.sleep(0.05)
    raise AssertionError(f"expected {n} events, have {events(node)}\n{node.logs()}")


# ------------------------------------------------------------------ the gateway

def gateway_url(node):
    return f"http://127.0.0.1:{node.gw_port}"


def pairing_code(node):
    """The newest pairing code the daemon printed (its log is where a
    person reads it)."""
    codes = re.findall(r"pairing code (\d{6}) ", node.logs())
    assert codes, f"no pairing code in the log:\n{node.logs()}"
    return codes[-1]


def pair_token(node):
    """Pairs with the newest code over POST /pair; returns the bearer token."""
    status, _, body, _ = curl("-X", "POST", "-H", f"X-Pairing-Code: {pairing_code(node)}",
                              gateway_url(node) + "/pair")
    assert status == 200, f"/pair answered {status}: {body}"
    return json.loads(body)["token"]


def api(node, method, path, body=None, token=None, ctype=None):
    """One request to the gateway with Python's http.client (a second HTTP
    client beside curl): body bytes as given, token as a bearer header when
    set. Returns (status, content type, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if ctype:
        headers["Content-Type"] = ctype
    c.request(method, path, body=body, headers=headers)
    resp = c.getresponse()
    data = resp.read()
    c.close()
    return resp.status, resp.getheader("Content-Type"), data


def curl(*args):
    """Runs curl; returns (status, content type, body, stderr)."""
    p = subprocess.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code} %{content_type}",
                        *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"curl {' '.join(args)} exited {p.returncode}: {p.stderr}"
    body, _, last = p.stdout.rpartition("\n")
    status, _, ctype = last.partition(" ")
    return int(status), ctype, body, p.stderr


def metrics(node):
    """GET /metrics with curl: the exposition text."""
    status, _, body, _ = curl(gateway_url(node) + "/metrics")
    assert status == 200, f"/metrics answered {status}: {body}"
    return body + "\n"


def metric(node, name):
    """One sample of /metrics, by its full name (labels included) as an int."""
    text = metrics(node)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[-1]))
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def metrics_map(node):
    """/metrics as {sample name with labels: int}."""
    m = {}
    for line in metrics(node).splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            m[k] = int(float(v))
    return m


def wait_metric(node, key, pred, timeout=60):
    """Waits until pred(value of sample `key`, 0 while absent) holds; returns
    the whole map. Counters are how tests learn what happened: log lines are
    rate-limited per call site."""
    deadline = time.time() + timeout
    m = {}
    while time.time() < deadline:
        m = metrics_map(node)
        if pred(m.get(key, 0)):
            return m
        time.sleep(0.1)
    raise AssertionError(f"{key} never satisfied the condition: {m.get(key)}\n{node.logs()[-3000:]}")


def raw(port, data, host="127.0.0.1"):
    """Sends data on a fresh connection; returns everything read until EOF."""
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out


class Results:
    """Runs test cases, reporting each (every case runs, then the file
    fails), and ends with the closing line ctest's log readers expect."""

    def __init__(self):
        self.passed = self.failed = 0

    def record(self, name, ok, why=""):
        print(f"ok   {name}" if ok else f"FAIL {name}: {why}")
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def run(self, fn, *args, name=None):
        try:
            fn(*args)
            self.record(name or fn.__name__, True)
        except Exception as e:  # report every case, then fail
            self.record(name or fn.__name__, False, repr(e))

    def stopped(self, node):
        """A daemon stopped by SIGTERM must have exited 0."""
        rc = node.stop()
        self.record("daemon_exit_0", rc == 0, f"exit code {rc}\n{node.logs()}")
        return rc == 0

    def summary(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


# ------------------------------------------------------------------ a small disk

def small_tmpfs(prefix, size="4m"):
    """A tmpfs of `size` mounted on a fresh folder, for a home whose disk a
    test fills; None (said why) where mounting is not allowed: it needs
    root. Let it go with drop_tmpfs."""
    if os.geteuid() != 0:
        print("  skipped: mounting a tmpfs needs root")
        return None
    mnt = tempfile.mkdtemp(prefix=prefix)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt],
                      capture_output=True).returncode != 0:
        os.rmdir(mnt)
        print("  skipped: this root may not mount a tmpfs")
        return None
    return mnt


def drop_tmpfs(mnt):
    subprocess.run(["umount", "-l", mnt])
    os.rmdir(mnt)


def fill_disk(path):
    """Writes zeros to path until its file system is full. Unbuffered: a
    buffered file's close would flush what the full disk refused, and raise
    ENOSPC out of the `with`."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
