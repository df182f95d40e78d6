"""tests/integration/test_adversary_http.py — the gateway as public ingress,
attacked from outside with raw sockets on the real `kith daemon` (echo on,
pairing on, a small unsent bound so floods are quick). Each case is an
attack an earlier black-box pass found kith mishandling, checked for the
answer a production router must give (WIRE §11, §12, §17):

- an absolute-form target whose authority is a DNS name (RFC 9112 §3.2.2:
  it replaces Host) is held to the DNS-rebinding rule of /admin and of
  external events, not the Host field it overrides (§17.3, §17.4);
- a WebSocket client flooding pings while reading none of the pongs is a
  slow consumer: it is closed 1008 "slow consumer" like one that stops
  reading its messages (§12.3), never reset without a word;
- an upgrade pipelined behind a request whose answer waits (a webhook's
  202 waits for durability, and reads pause meanwhile, §11.1) becomes a
  socket that reads: before, its reads stayed paused for ever, so it
  answered nothing sent after the 101 and was later cut for "no pong";
- unfinished WebSocket messages of sockets that proved no credential share
  the budget of unauthenticated request bodies (limits.partial_frame_bytes_max,
  §11.3): the holder of the most is cut (close 1013, or a reset for a
  body), or the newcomer when it would hold the most. Before, only bodies
  counted, and every /ws/echo or pre-auth socket could hold a fragmented
  message of its own limit: 2 500 of them, 2.5 GiB;
- a socket streaming frames back to back, each read ending inside one, is
  not cut "frame not finished in time" (§12.3: the bound is per frame):
  before, the first frame's deadline was never cleared while reads kept
  ending inside a frame, so a busy client was cut frame_timeout_ms after
  it began, with every frame done in a millisecond;
- a client sending a frame longer than the ping interval (but within its
  frame deadline) is not closed "no pong": it can answer only after the
  frame (RFC 6455 §5.4), so the verdict waits (its own daemon, pinging
  often);
- nor is a client reading slowly what the server sent before its ping: the
  ping waits behind that data, and a client taking it is alive. Before, a
  listener slower than (the unsent bytes + the kernel's buffers) per ping
  interval was cut "no pong" while it read.

Waits are deadlines for progress, never speed assertions. Case names on the
command line run only those."""

import json
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, metric, pair_token  # noqa: E402

WAIT_S = 60  # a bound on any one wait
UNSENT_MAX = 256 * 1024  # limits.conn_unsent_max here: floods reach it soon
BUDGET = 256 * 1024  # limits.partial_frame_bytes_max here (echoes fit UNSENT_MAX)
KIB = 1024
HELD = "kith_http_unauth_body_bytes"
FRAME_TIMEOUT_MS = 1000  # limits.frame_timeout_ms here
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
CONT, BINARY, CLOSE_OP, PING, PONG = 0x0, 0x2, 0x8, 0x9, 0xA


# ------------------------------------------------------------------ raw clients

def connect(node, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(WAIT_S)
    s.connect(("127.0.0.1", node.gw_port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_to_end(s):
    """Everything until EOF, and whether the end was a reset."""
    out = b""
    while True:
        try:
            chunk = s.recv(1 << 20)
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, False
        out += chunk


def answer(node, data):
    """(status, headers, JSON body or None) of the one answer to data sent
    on a fresh connection that the server then closes."""
    with connect(node) as s:
        s.sendall(data)
        out, _ = read_to_end(s)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1]) if lines[0].startswith("HTTP/1.1 ") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    return status, headers, doc


def frame(op, payload, fin=True, mask=b"\x37\xfa\x21\x3d"):
    """One masked client frame."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def server_frames(data):
    """(opcode, payload) of each whole unmasked server frame in data."""
    frames, i = [], 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = struct.unpack(">H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", data[i:i + 8])[0], i + 8
        if i + n > len(data):
            break
        frames.append((op, data[i:i + n]))
        i += n
    return frames


def upgrade(node, rcvbuf=None):
    """A /ws/echo socket past its 101."""
    s = connect(node, rcvbuf)
    s.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


def still_serves(node):
    status, _, doc = answer(node, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and doc["status"] == "ok", (status, doc)


# ------------------------------------------------------------------ cases

def absolute_form_authority_is_the_host_checked(node, token):
    """RFC 9112 §3.2.2: the authority of an absolute-form target replaces
    Host. A rebound DNS name written there must meet the same refusal as in
    Host; before, `Host: 127.0.0.1` beside it got a pairing code out."""
    del token
    admin = b"GET http://rebound.example.com/admin/paircode HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    status, _, doc = answer(node, admin + b"Connection: close\r\n\r\n")
    assert status == 403 and doc["code"] == "forbidden" and "DNS" in doc["error"], (status, doc)
    # The same with a port, and a POST to shutdown: refused, the daemon lives.
    status, _, doc = answer(node, b"POST http://rebound.example.com:80/admin/shutdown HTTP/1.1\r\n"
                            b"Host: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert status == 403 and doc["code"] == "forbidden", (status, doc)
    # An Origin naming the Host field but not the target's authority is
    # another site (no secret guards external events here).
    body = json.dumps({"kind": "generic_json", "event_type": "t", "payload": {}}).encode()
    status, _, doc = answer(node, b"POST http://rebound.example.com/sessions/s1/external-events "
                            b"HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\n"
                            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                            b"Connection: close\r\n\r\n" % len(body) + body)
    assert status == 403 and doc["code"] == "origin_not_allowed", (status, doc)
    # An absolute-form target naming the loopback address is still served.
    status, _, doc = answer(node, b"GET http://127.0.0.1/admin/paircode HTTP/1.1\r\n"
                            b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 200 and len(doc["code"]) == 6, (status, doc)
    still_serves(node)


def ping_flood_unread_pongs_is_closed_1008(node, token):
    """Pings answered into a socket whose client reads nothing pile up as
    pongs: past limits.conn_unsent_max the socket is closed 1008 "slow
    consumer" (its Close is the last frame the client reads), as for echo
    it does not read — before, the loop reset it without a word."""
    del token
    s = upgrade(node, rcvbuf=4096)
    since = os.path.getsize(node.log_path)
    batch = frame(PING, b"p" * 125) * 512
    # Stop soon after the cut: the server flushes its Close, then waits a
    # bounded while for our end, and pings still coming after that would
    # meet a reset that takes the unread Close with it.
    s.settimeout(2)
    sent = 0
    # Enough pongs to pass the bound and every kernel buffer between us, or
    # until the daemon says it cut the socket.
    try:
        while sent < 64 << 20 and "cut: slow consumer" not in node.logs(since):
            s.sendall(batch)
            sent += len(batch)
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        pass
    node.wait_log("cut: slow consumer")
    s.settimeout(WAIT_S)
    out, _ = read_to_end(s)
    s.close()
    frames = server_frames(out)
    assert frames and frames[-1][0] == CLOSE_OP, (len(out), frames[-3:])
    code = struct.unpack(">H", frames[-1][1][:2])[0]
    assert code == 1008 and frames[-1][1][2:] == b"slow consumer", frames[-1]
    assert all(op == PONG for op, _ in frames[:-1]), {op for op, _ in frames}
    # Another socket is served meanwhile.
    w = upgrade(node)
    w.sendall(frame(0x1, b"still here") + frame(CLOSE_OP, struct.pack(">H", 1000)))
    out, _ = read_to_end(w)
    w.close()
    assert server_frames(out)[0] == (0x1, b"still here"), out[:80]
    still_serves(node)


def upgrade_pipelined_behind_a_deferred_answer_reads(node, token):
    """The webhook's 202 waits for durability with reads paused; the
    upgrade behind it must leave its socket reading."""
    body = b'{"message":"pipelined"}'
    webhook = (b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
               token.encode() + b"\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    s = connect(node)
    s.sendall(webhook + b"GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame(0x1, b"behind"))
    data = b""
    while b"\x81\x06behind" not in data:  # 202, 101, then the echo of the frame sent along
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 202 ") and b"HTTP/1.1 101 " in data, data[:200]
    # Sent after the 101: read and echoed, then the close handshake (a
    # socket left unread would answer nothing until it is cut for no pong).
    s.sendall(frame(0x1, b"after") + frame(CLOSE_OP, struct.pack(">H", 1000)))
    s.settimeout(20)
    try:
        out, _ = read_to_end(s)
    except socket.timeout:
        raise AssertionError("nothing read after the 101 within 20 s") from None
    s.close()
    assert server_frames(out) == [(0x1, b"after"), (CLOSE_OP, struct.pack(">H", 1000))], out


def wait_held(node, want):
    """The budget's gauge once it reads `want` (the loop reads what was
    sent a moment after the send returns)."""
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        got = metric(node, HELD)
        if got == want:
            return
        time.sleep(0.02)
    raise AssertionError(f"{HELD} stayed {got}, not {want}")


def closed_1013(s):
    """The socket was closed 1013 (try again later) by the server."""
    out, _ = read_to_end(s)
    s.close()
    frames = server_frames(out)
    assert frames and frames[-1][0] == CLOSE_OP, out[-80:]
    assert struct.unpack(">H", frames[-1][1][:2])[0] == 1013, frames[-1]


def finished_echo(s, n):
    """Ends the fragmented message of n octets begun on s and reads it back."""
    s.sendall(frame(CONT, b"z") + frame(CLOSE_OP, struct.pack(">H", 1000)))
    out, _ = read_to_end(s)
    s.close()
    frames = server_frames(out)
    assert [(op, len(p)) for op, p in frames[:1]] == [(BINARY, n + 1)], frames[:1]


def unfinished_messages_share_the_unauthenticated_budget(node, token):
    del token
    # Two sockets hold 100 KiB each of unfinished messages: 128 KiB
    # allocated each, the whole budget.
    a, b = upgrade(node), upgrade(node)
    a.sendall(frame(BINARY, b"a" * (100 * KIB), fin=False))
    wait_held(node, 128 * KIB)
    b.sendall(frame(BINARY, b"b" * (100 * KIB), fin=False))
    wait_held(node, BUDGET)
    # A third begins one: the oldest of the largest holders goes (1013).
    c = upgrade(node)
    c.sendall(frame(BINARY, b"c" * (30 * KIB), fin=False))
    closed_1013(a)
    wait_held(node, 128 * KIB + 32 * KIB)
    finished_echo(b, 100 * KIB)
    finished_echo(c, 30 * KIB)
    wait_held(node, 0)
    # Bodies and messages share it: a socket's message cuts an
    # unauthenticated body holding more (reset, as for bodies).
    h = connect(node)
    h.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 230000\r\n\r\n" + b" " * 229999)
    wait_held(node, 230001)
    f = upgrade(node)
    f.sendall(frame(BINARY, b"f" * (60 * KIB), fin=False))
    out, _ = read_to_end(h)
    h.close()
    assert out == b"", out[:200]
    finished_echo(f, 60 * KIB)
    # ...and a body cuts a socket's message holding more.
    w = upgrade(node)
    w.sendall(frame(BINARY, b"w" * (200 * KIB), fin=False))
    wait_held(node, BUDGET)
    status, _, doc = answer(node, b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                            b"Connection: close\r\n\r\n{}")
    assert status == 401 and doc["code"] == "unauthorized", (status, doc)  # read, then judged
    closed_1013(w)
    # A newcomer that would hold the most is the one refused.
    e, d = upgrade(node), upgrade(node)
    e.sendall(frame(BINARY, b"e" * (100 * KIB), fin=False))
    wait_held(node, 128 * KIB)
    d.sendall(frame(BINARY, b"d" * (200 * KIB), fin=False))
    closed_1013(d)
    finished_echo(e, 100 * KIB)
    wait_held(node, 0)
    still_serves(node)


def frames_back_to_back_are_each_bounded(node, token):
    """Frames of 4 008 octets written in pieces of 1 499 (coprime: a piece
    ends on a frame's end only every 4 008 pieces), a piece a millisecond,
    for three times limits.frame_timeout_ms: every read the server makes
    ends inside a frame, and every frame is done within milliseconds."""
    del token
    s = upgrade(node)
    echoed, closes = [0], []

    def reader():
        buf = b""
        while True:
            try:
                chunk = s.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            frames = server_frames(buf)
            used = sum(2 + (2 if len(p) >= 126 else 0) + len(p) for _, p in frames)
            buf = buf[used:]
            echoed[0] += sum(op == BINARY for op, _ in frames)
            closes.extend(p for op, p in frames if op == CLOSE_OP)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    one = frame(BINARY, b"s" * 4000)
    stream = one * 800
    sent, pos, start = 0, 0, time.time()
    while time.time() - start < 3 * FRAME_TIMEOUT_MS / 1000 and not closes:
        if pos + 1499 > len(stream):
            s.sendall(stream[pos:])  # ends on a frame's end: start over
            pos = 0
            sent += 800
            continue
        s.sendall(stream[pos:pos + 1499])
        pos += 1499
        time.sleep(0.001)
    s.sendall(stream[pos:] + frame(CLOSE_OP, struct.pack(">H", 1000)))
    sent += 800
    t.join(WAIT_S)
    assert closes and closes[0][:2] == struct.pack(">H", 1000), closes[:1]
    assert echoed[0] == sent, (echoed[0], sent)


CASES = [absolute_form_authority_is_the_host_checked, ping_flood_unread_pongs_is_closed_1008,
         upgrade_pipelined_behind_a_deferred_answer_reads,
         unfinished_messages_share_the_unauthenticated_budget,
         frames_back_to_back_are_each_bounded]


def slow_frame_is_not_judged_for_a_pong(node):
    """The frame takes four ping intervals; the client answers every ping
    it reads, but only once its frame is done (the last piece and the pong
    in one write), as a compliant client must."""
    s = upgrade(node)
    data = frame(BINARY, b"q" * 2000)
    pieces = [data[i:i + 200] for i in range(0, len(data), 200)]
    for piece in pieces[:-1]:
        s.sendall(piece)
        time.sleep(PING_MS * 4 / 1000 / len(pieces))
    s.sendall(pieces[-1] + frame(PONG, b"kith"))
    buf, got = b"", []
    while not any(op == BINARY for op, _ in got):
        chunk = s.recv(65536)
        assert chunk, got
        buf += chunk
        got = server_frames(buf)
        assert all(op != CLOSE_OP for op, _ in got), got
        if any(op == PING for op, _ in got):
            s.sendall(frame(PONG, b"kith"))
    assert (BINARY, b"q" * 2000) in got, got
    s.sendall(frame(CLOSE_OP, struct.pack(">H", 1000)))
    out, _ = read_to_end(s)
    s.close()
    assert server_frames(out)[-1] == (CLOSE_OP, struct.pack(">H", 1000)), out


def ping_behind_our_data_waits_for_a_reading_client(node):
    """Two MiB of echoes queue up; the client reads them slowly (a few
    intervals' worth), answering each ping when it reaches it, behind the
    data sent before it."""
    s = upgrade(node, rcvbuf=16 * KIB)
    n, size = 64, 32 * KIB
    for i in range(n):
        s.sendall(frame(BINARY, bytes([i]) * size))
    buf, echoed = b"", 0
    deadline = time.time() + WAIT_S
    while echoed < n and time.time() < deadline:
        chunk = s.recv(16 * KIB)
        assert chunk, (echoed, buf[-40:])
        buf += chunk
        frames = server_frames(buf)
        buf = buf[sum(2 + (2 if len(p) >= 126 else 0) + (6 if len(p) >= 65536 else 0) + len(p)
                      for _, p in frames):]
        for op, p in frames:
            assert op != CLOSE_OP, p
            if op == PING:
                s.sendall(frame(PONG, p))
            echoed += op == BINARY
        time.sleep(0.016)  # about 1 MB/s: the ping waits two intervals or more
    assert echoed == n, echoed
    s.sendall(frame(CLOSE_OP, struct.pack(">H", 1000)))
    out, _ = read_to_end(s)
    s.close()
    assert server_frames(out)[-1] == (CLOSE_OP, struct.pack(">H", 1000)), out[-40:]


PING_MS = 400  # limits.ws_ping_interval_ms of the second daemon
PING_CASES = [slow_frame_is_not_judged_for_a_pong, ping_behind_our_data_waits_for_a_reading_client]


def main():
    only = set(sys.argv[1:])
    results = Results()
    cases = [fn for fn in CASES if not only or fn.__name__ in only]
    if cases:
        node = Daemon("adversary", config={"gateway": {"echo": True},
                                           "limits": {"conn_unsent_max": UNSENT_MAX,
                                                      "partial_frame_bytes_max": BUDGET,
                                                      "frame_timeout_ms": FRAME_TIMEOUT_MS}})
        node.start()
        try:
            token = pair_token(node)
            for fn in cases:
                results.run(fn, node, token)
        finally:
            results.stopped(node)
            node.cleanup()
    ping_cases = [fn for fn in PING_CASES if not only or fn.__name__ in only]
    if ping_cases:
        node = Daemon("adversary-ping", config={"gateway": {"echo": True},
                                                "limits": {"ws_ping_interval_ms": PING_MS,
                                                           "frame_timeout_ms": 10 * PING_MS}})
        node.start()
        try:
            for fn in ping_cases:
                results.run(fn, node)
        finally:
            results.stopped(node)
            node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
