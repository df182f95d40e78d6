"""tests/integration/test_gateway_errors.py — what an outside client can do
wrong to the gateway, or at an awkward moment, on the real `kith daemon`
(embedded agent workers, scripted provider), from raw sockets so that every
byte is the test's: /ws/chat query values at their bounds (WIRE §24.1), an
upgrade that carries a body (§11.2), a steer and a stop while a turn runs
(§24.3), a chat client and an HTTP turn's client vanishing mid-turn (§24.2,
§24.9), requests pipelined behind a turn over HTTP (§11.1), the close
handshake from the server's side (§12.3), a queued message past the session
lock timeout (§24.5), a frame past the unsent-bytes bound (§12.3), and a
stop with every kind of connection open (§17.3b). Each case checks the
exact status, JSON code, WS error code or close code, and that the daemon
goes on serving others. Case names on the command line run only those."""

import json
import os
import signal
import socket
import struct
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, curl, gateway_url, metrics_map,  # noqa: E402
                  pair_token, wait_metric, ws_masked, ws_server_frames)

TIMEOUT = 60  # a bound on any one wait; never a speed assertion
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


# ------------------------------------------------------------------ raw clients

def connect(node):
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def reset(s):
    """Closes with a RST: a client that vanished, not one that said goodbye."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def upgrade_request(token, path="/ws/chat", query=None, extra=b""):
    target = path + ("?" + query if query else "")
    return (b"GET " + target.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + KEY +
            b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: kith.v1\r\n" +
            (b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b"") +
            extra + b"\r\n")


def read_head(s):
    """An HTTP head and what came after it (so far)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode(errors="replace"), rest


def read_to_eof(s):
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, False
        out += chunk


def json_error(head, body):
    """(status, code) of a JSON error answer, checking its shape."""
    status = int(head.split(" ", 2)[1])
    doc = json.loads(body)
    check(set(doc) == {"error", "code"} and doc["error"], f"error body {doc}")
    return status, doc["code"]


class Chat:
    """A raw /ws/chat client: the upgrade, then frames in and out."""

    def __init__(self, node, token, query=None, send_after=b""):
        self.s = connect(node)
        self.s.sendall(upgrade_request(token, query=query) + send_after)
        self.head, self.buf = read_head(self.s)
        check(self.head.startswith("HTTP/1.1 101"), self.head)
        self.frames = []

    def _more(self):
        chunk = self.s.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def frame(self):
        """The next server frame (opcode, payload); None at EOF."""
        while True:
            got = ws_server_frames(self.buf)
            if got:
                op, payload = got[0]
                n = len(payload)
                hl = 2 if n < 126 else 4 if n < 65536 else 10
                self.buf = self.buf[hl + n:]
                return op, payload
            if not self._more():
                return None

    def recv(self):
        """The next JSON text frame; fails on anything else."""
        f = self.frame()
        check(f is not None and f[0] == 1, f"wanted a text frame, got {f!r:.300}")
        return json.loads(f[1])

    def send(self, obj):
        self.s.sendall(ws_masked(1, json.dumps(obj).encode()))

    def until_final(self):
        frames = []
        while True:
            f = self.recv()
            frames.append(f)
            if f["type"] in ("done", "stopped", "error"):
                return frames

    def close(self):
        try:
            self.s.sendall(ws_masked(8, struct.pack(">H", 1000)))
            read_to_eof(self.s)
        except OSError:
            pass
        self.s.close()


def open_chat(node, token, session_id=None, name=None):
    q = urllib.parse.urlencode({k: v for k, v in (("session_id", session_id), ("name", name))
                                if v is not None})
    c = Chat(node, token, q or None)
    start = c.recv()
    check(start["type"] == "session_start", f"first frame {start}")
    return c, start


def post_turn(token, session_id, content, extra=b""):
    body = json.dumps({"content": content}).encode()
    return (b"POST /api/sessions/" + session_id.encode() + b"/messages HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) +
            extra + b"\r\n" + body)


def split_responses(data):
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        check(sep, f"incomplete response {data!r:.300}")
        lines = head.decode().split("\r\n")
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(hdrs["content-length"])
        out.append((int(lines[0].split(" ")[1]), hdrs, rest[:n]))
        data = rest[n:]
    return out


def agent_starts(node, token, session_id, n):
    """Waits until /api/events (replayed from its ring) shows n turns of the
    session started: a turn is then in flight, not queued."""
    s = connect(node)
    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              token.encode() + b"\r\nLast-Event-ID: 0\r\n\r\n")
    data, seen = b"", 0
    try:
        while seen < n:
            chunk = s.recv(65536)
            check(chunk, f"/api/events ended after {seen} agent_start")
            data += chunk
            seen = 0
            for line in data.split(b"\n"):
                if line.startswith(b"data: "):
                    try:
                        ev = json.loads(line[6:])
                    except ValueError:
                        continue  # a line still arriving
                    if ev.get("type") == "agent_start" and ev.get("session_id") == session_id:
                        seen += 1
    finally:
        s.close()


def history(node, token, session_id):
    st, _, body, _ = curl("-H", f"Authorization: Bearer {token}",
                          gateway_url(node) + f"/api/sessions/{session_id}")
    check(st == 200, f"history of {session_id}: {st} {body}")
    return [(m["role"], m["content"]) for m in json.loads(body)["messages"]]


def still_serves(node, token):
    c, _ = open_chat(node, token)
    c.send({"type": "message", "content": "still there?"})
    done = c.until_final()[-1]
    c.close()
    check(done["type"] == "done" and done["full_response"] == "echo: still there?", done)


# ------------------------------------------------------------------ cases

def chat_query_at_its_bounds(node, token):
    """session_id 1..128 once decoded, name at most 256 octets of UTF-8
    without controls; %XX in either case and '+' decoded (WIRE §24.1)."""
    def refused(query):
        s = connect(node)
        s.sendall(upgrade_request(token, query=query))
        head, rest = read_head(s)
        body, _ = read_to_eof(s)
        s.close()
        return json_error(head, rest + body)

    sid = "s" * 128
    c, start = open_chat(node, token, session_id=sid)
    c.close()
    check(start["session_id"] == sid, start)
    check(refused("session_id=" + "s" * 129) == (400, "invalid_session_id"), "129 octets")
    c, start = open_chat(node, token, session_id=None)
    c.close()
    c = Chat(node, token, "session_id=a%2Db%2dC&name=caf%C3%A9+%E2%9C%93")
    start = c.recv()
    c.close()
    check(start["session_id"] == "a-b-C" and start["name"] == "café ✓", start)
    name = "é" * 128  # 256 octets
    c, start = open_chat(node, token, session_id="named-256", name=name)
    c.close()
    check(start["name"] == name, start)
    for q in ("name=" + "%C3%A9" * 128 + "x", "name=%FF", "name=a%0Ab", "name=%7F",
              "name=%ED%A0%80"):
        check(refused(q) == (400, "invalid_name"), q)
    check(refused("session_id=a%2Fb") == (400, "invalid_session_id"), "a/b")


def upgrade_with_a_body_is_refused(node, token):
    """An upgrade request carries no body (WIRE §11.2 websocket_handshake):
    400, Connection: close, and nothing of the body is read as a request."""
    for extra, body in ((b"Content-Length: 5\r\n", b"hello"),
                        (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")):
        s = connect(node)
        s.sendall(upgrade_request(token, extra=extra) + body +
                  b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        out, _ = read_to_eof(s)
        s.close()
        got = split_responses(out)
        check(len(got) == 1, f"{extra}: {got}")
        st, hdrs, b = got[0]
        check((st, json.loads(b)["code"]) == (400, "websocket_handshake"), got)
        check(hdrs.get("connection") == "close", hdrs)
    still_serves(node, token)


def steer_and_stop_while_a_turn_runs(node, token):
    """A steer while a turn is in flight is taken without a frame of its
    own; an empty one is EMPTY_CONTENT; after the turn, NO_ACTIVE_TURN. A
    stop while a second message waits stops the first only; the second
    then runs."""
    c, start = open_chat(node, token, session_id="steered")
    c.send({"type": "message", "content": "/sleep 3000"})
    agent_starts(node, token, "steered", 1)
    c.send({"type": "steer", "content": "turn left"})
    c.send({"type": "steer", "content": " \t"})
    first = c.recv()
    check(first["type"] == "error" and first["code"] == "EMPTY_CONTENT" and "turn_id" not in first,
          first)
    # WIRE §20.3: the answer so far (all of the sleep's, or none of it when
    # the steer reached the worker first) joins the conversation and the
    # provider is asked again: the steer is answered within the same turn.
    frames = c.until_final()
    full = frames[-1].get("full_response")
    check([f["type"] for f in frames if f["type"] == "error"] == [], frames)
    check(frames[-1]["type"] == "done" and
          full in ("slept 3000 msecho: turn left", "echo: turn left"), frames)
    check("".join(f["content"] for f in frames if f["type"] == "chunk") == full, frames)
    c.send({"type": "steer", "content": "too late"})
    err = c.recv()
    check(err["type"] == "error" and err["code"] == "NO_ACTIVE_TURN", err)
    # A stop with a message waiting behind the turn.
    c.send({"type": "message", "content": "/sleep 600000"})
    c.send({"type": "message", "content": "after the stop"})
    agent_starts(node, token, "steered", 2)
    c.send({"type": "stop"})
    stopped = c.until_final()[-1]
    check(stopped["type"] == "stopped" and stopped.get("turn_id"), stopped)
    done = c.until_final()[-1]
    check(done["type"] == "done" and done["full_response"] == "echo: after the stop", done)
    check(done["turn_id"] != stopped["turn_id"], "two turns")
    c.close()


def chat_client_vanishes_mid_turn(node, token):
    """A socket reset while its turn runs leaves the turn running: another
    socket on the session sees it end, the history keeps it, and the
    vanished socket is forgotten (kith_chat_sockets)."""
    base = metrics_map(node).get("kith_chat_sockets", 0)
    watcher, start = open_chat(node, token, session_id="vanishing")
    talker, _ = open_chat(node, token, session_id="vanishing")
    talker.send({"type": "message", "content": "/sleep 1000"})
    agent_starts(node, token, "vanishing", 1)
    reset(talker.s)
    done = watcher.until_final()[-1]
    check(done["type"] == "done" and done["full_response"] == "slept 1000 ms", done)
    wait_metric(node, "kith_chat_sockets", lambda v: v == base + 1)
    check(history(node, token, "vanishing")[-2:] ==
          [("user", "/sleep 1000"), ("assistant", "slept 1000 ms")], "history")
    watcher.close()
    still_serves(node, token)


def http_turn_client_vanishes(node, token):
    """A turn over HTTP whose client resets before the answer still runs
    (WIRE §24.9: accepted is not withdrawn); its answer goes nowhere, and
    kith_chat_http_turns comes back to 0."""
    watcher, _ = open_chat(node, token, session_id="http-vanish")
    s = connect(node)
    s.sendall(post_turn(token, "http-vanish", "/sleep 1000"))
    agent_starts(node, token, "http-vanish", 1)
    reset(s)
    done = watcher.until_final()[-1]
    check(done["type"] == "done" and done["full_response"] == "slept 1000 ms", done)
    wait_metric(node, "kith_chat_http_turns", lambda v: v == 0)
    watcher.close()
    still_serves(node, token)


def requests_pipelined_behind_a_turn_over_http(node, token):
    """Requests pipelined behind a deferred answer are held, then answered
    in order on the same connection (WIRE §11.1)."""
    s = connect(node)
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    s.sendall(post_turn(token, "pipelined", "first") + health +
              post_turn(token, "pipelined", "second") +
              b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out, _ = read_to_eof(s)
    s.close()
    got = split_responses(out)
    check([st for st, _, _ in got] == [200, 200, 200, 200], got)
    first, second = json.loads(got[0][2]), json.loads(got[2][2])
    check(first["type"] == "done" and first["full_response"] == "echo: first", first)
    check(second["type"] == "done" and second["full_response"] == "echo: second", second)
    check(json.loads(got[1][2])["status"] == "ok" and got[3][1]["connection"] == "close", got)


def stops_answer_turns_over_http(node, token):
    """Two turns over HTTP on one session, the second queued behind the
    first: a stop from a socket answers the first 200 with its stopped
    frame while the second waits; a second stop answers that one."""
    c, _ = open_chat(node, token, session_id="http-stops")
    a = connect(node)
    a.sendall(post_turn(token, "http-stops", "/sleep 600000"))
    agent_starts(node, token, "http-stops", 1)
    b = connect(node)
    b.sendall(post_turn(token, "http-stops", "/sleep 600000"))
    wait_metric(node, "kith_chat_http_turns", lambda v: v == 2)
    c.send({"type": "stop"})
    head, rest = read_head(a)
    check(head.startswith("HTTP/1.1 200"), head)
    first = json.loads(rest if rest else a.recv(65536))
    check(first["type"] == "stopped" and first.get("turn_id"), first)
    agent_starts(node, token, "http-stops", 2)
    c.send({"type": "stop"})
    head, rest = read_head(b)
    second = json.loads(rest if rest else b.recv(65536))
    check(head.startswith("HTTP/1.1 200") and second["type"] == "stopped", (head, second))
    check(second["turn_id"] != first["turn_id"], "two turns")
    a.close()
    b.close()
    c.close()


def server_close_handshake(node, token):
    """The server's Close (1008, more than 16 frames before session_start):
    frames after it are read and dropped, the client's Close answer ends
    the connection; a client that never answers is cut by the close wait
    (WIRE §12.3). A frame whose header arrives byte by byte is whole."""
    many = ws_masked(1, json.dumps({"type": "connect"}).encode()) * 17
    late = ws_masked(1, json.dumps({"type": "connect"}).encode()) * 3
    for answer in (True, False):
        c = Chat(node, token, send_after=many)
        closes = []
        while not closes:
            f = c.frame()
            check(f is not None, "closed without a Close frame")
            if f[0] == 8:
                closes.append(f[1])
        check(closes[0] == struct.pack(">H", 1008) + b"too many frames before session_start",
              closes)
        c.s.sendall(late)  # after the server's Close: dropped
        if answer:
            c.s.sendall(ws_masked(8, struct.pack(">H", 1008)))
        rest, _ = read_to_eof(c.s)
        c.s.close()
        check(ws_server_frames(c.buf + rest) == [], f"after the Close: {c.buf + rest!r:.300}")
    c, _ = open_chat(node, token)
    frame = ws_masked(1, json.dumps({"type": "connect"}).encode())
    for i in range(6):  # the header in pieces; a sleep only makes the pieces likely
        c.s.sendall(frame[i:i + 1])
        time.sleep(0.05)
    c.s.sendall(frame[6:])
    got = c.recv()
    check(got["type"] == "connected", got)
    c.close()


def small_daemon_cases():
    """A daemon with a 1 s session lock timeout and a 16 KiB unsent bound:
    a queued message past the timeout is SESSION_BUSY (to its socket; to a
    turn over HTTP as its 200 answer, without turn_id); a frame that would
    pass the unsent bound closes its socket 1008 "slow consumer", its turn
    still ends in the history, and others are served."""
    os.environ["KITH_SESSION_LOCK_TIMEOUT_SECS"] = "1"
    try:
        node = Daemon("gwerr-small", config={"workers": {"agent_threads": 1},
                                             "limits": {"conn_unsent_max": 16384}})
        node.start()
    finally:
        del os.environ["KITH_SESSION_LOCK_TIMEOUT_SECS"]
    try:
        token = pair_token(node)
        c, _ = open_chat(node, token, session_id="locked")
        c.send({"type": "message", "content": "/sleep 600000"})
        agent_starts(node, token, "locked", 1)
        c.send({"type": "message", "content": "waits too long"})
        err = c.recv()
        check(err["type"] == "error" and err["code"] == "SESSION_BUSY" and "turn_id" not in err
              and "1 s" in err["message"], err)
        s = connect(node)
        s.sendall(post_turn(token, "locked", "over http, too long",
                            b"Connection: close\r\n"))
        out, _ = read_to_eof(s)
        s.close()
        (st, _, body), = split_responses(out)
        got = json.loads(body)
        check(st == 200 and got["type"] == "error" and got["code"] == "SESSION_BUSY" and
              "turn_id" not in got, (st, got))
        c.send({"type": "stop"})
        check(c.until_final()[-1]["type"] == "stopped", "stop")
        c.close()

        word = "w" * 20000
        c, _ = open_chat(node, token, session_id="big")
        c.send({"type": "message", "content": word})
        closes = []
        while not closes:
            f = c.frame()
            check(f is not None, "closed without a Close frame")
            if f[0] == 8:
                closes.append(f[1])
        check(closes[0] == struct.pack(">H", 1008) + b"slow consumer", closes)
        c.s.close()
        # The turn goes on without its socket: the session list counts its
        # two messages. Its history, larger on its own than the bound, is
        # refused with a reason, not a reset (and the connection serves on).
        auth = ("-H", f"Authorization: Bearer {token}")
        deadline = time.time() + TIMEOUT
        while True:
            st, _, body, _ = curl(*auth, gateway_url(node) + "/api/sessions")
            big = [x for x in json.loads(body)["sessions"] if x["id"] == "big"]
            if big and big[0]["message_count"] == 2:
                break
            check(time.time() < deadline, f"the turn never reached the history: {body}")
            time.sleep(0.1)
        s = connect(node)
        s.sendall(b"GET /api/sessions/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  token.encode() + b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
        out, _ = read_to_eof(s)
        s.close()
        got = split_responses(out)
        check([st for st, _, _ in got] == [500, 200], got)
        doc = json.loads(got[0][2])
        check(doc["code"] == "response_too_large" and "16384 octets" in doc["error"], doc)
        still_serves(node, token)
        check(node.stop() == 0, "exit code")
    finally:
        node.cleanup()


def stop_with_connections_open(node, token):
    """SIGTERM (WIRE §17.3b): an idle keep-alive connection gets a FIN, an
    event stream ends, a chat socket gets Close 1001 "server shutting
    down" and its answer ends it; a socket that never answers is cut at
    the deadline; a request whose body never comes is told 503
    shutting_down a second before it and closed in order; exit 0."""
    idle = connect(node)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head, rest = read_head(idle)
    check(head.startswith("HTTP/1.1 200"), head)
    stream = connect(node)
    stream.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                   token.encode() + b"\r\n\r\n")
    head, _ = read_head(stream)
    check(head.startswith("HTTP/1.1 200"), head)
    polite, _ = open_chat(node, token)
    mute, _ = open_chat(node, token)
    cut = connect(node)
    cut.sendall(b"POST /api/sessions/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                token.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 100"
                b"\r\n\r\n{\"content\":")
    wait_metric(node, "kith_http_connections_open", lambda v: v >= 5)
    node.proc.send_signal(signal.SIGTERM)
    out, _ = read_to_eof(idle)
    check(out == b"", f"idle keep-alive: {out!r}")
    read_to_eof(stream)  # ends (what it held before is not checked)
    f = polite.frame()
    check(f == (8, struct.pack(">H", 1001) + b"server shutting down"), f)
    polite.s.sendall(ws_masked(8, struct.pack(">H", 1001)))
    rest, _ = read_to_eof(polite.s)
    check(rest == b"", rest)
    f = mute.frame()
    check(f == (8, struct.pack(">H", 1001) + b"server shutting down"), f)
    out, _ = read_to_eof(mute.s)  # never answered: cut
    check(out == b"", out)
    out, _ = read_to_eof(cut)
    head, _, body = out.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 503 ") and b"\r\nConnection: close" in head and
          b"\r\nRetry-After: 5" in head and json.loads(body)["code"] == "shutting_down",
          f"a body never finished: {out!r:.300}")
    for s in (idle, stream, polite.s, mute.s, cut):
        s.close()
    node.proc.wait(timeout=TIMEOUT)
    check(node.proc.returncode == 0, f"exit {node.proc.returncode}")


def main():
    only = set(sys.argv[1:])
    node = Daemon("gwerr", config={"gateway": {"echo": True}, "workers": {"agent_threads": 2}})
    results = Results()
    try:
        node.start()
        token = pair_token(node)
        for fn in (chat_query_at_its_bounds, upgrade_with_a_body_is_refused,
                   steer_and_stop_while_a_turn_runs, chat_client_vanishes_mid_turn,
                   http_turn_client_vanishes, requests_pipelined_behind_a_turn_over_http,
                   stops_answer_turns_over_http, server_close_handshake,
                   stop_with_connections_open):
            if not only or fn.__name__ in only:
                results.run(fn, node, token)
    finally:
        node.cleanup()
    if not only or "small_daemon_cases" in only:
        results.run(small_daemon_cases)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
