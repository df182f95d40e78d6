"""tests/integration/test_config_limits.py — DESIGN §10's limits are all
configurable, and the configured value is the one the daemon enforces: the
HTTP gateway's deadlines (limits.http_head_timeout_ms, _body_, _idle_; WIRE
§11.2) and the attachment bound of a /ws/chat message
(limits.http_attachment_body_max; WIRE §24.3), each set in config.json of a
real `kith daemon` and met from outside with raw sockets and Python's
`websockets`. `kith config check --print` shows the keys and refuses one
out of range, naming it.

No timing is asserted. Where a test must tell the configured deadline from
the built-in one it compares two deadlines of one daemon by which fires
first (a kept-alive connection configured to close at once is closed while
a half-sent head, configured to wait an hour, is still open: with the
built-in 10 s head and 60 s idle deadlines the order is the other way), and
every wait is a generous bound on progress."""

import asyncio
import json
import os
import socket
import subprocess
import sys

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Daemon, Results, check  # noqa: E402

TIMEOUT = 60  # generous bound on any one wait; never a speed assertion
HOUR_MS = 3600000


def dial(node):
    return socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)


def read_to_end(s):
    """Everything the server sends until it closes (EOF or reset)."""
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def read_response(s):
    """One HTTP response with a Content-Length body: (head text, body bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        check(chunk, f"closed before a response head; got {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        check(chunk, "closed inside a response body")
        body += chunk
    return head.decode(), body


def still_open(s):
    """True when nothing has come on s (no answer, no close) by now."""
    s.setblocking(False)
    try:
        s.recv(1)
        return False  # an answer, or the close
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        s.setblocking(True)
        s.settimeout(TIMEOUT)


def refused_408(data, text):
    head, _, body = data.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 408 "), f"not a 408: {data[:200]!r}")
    check(b"\r\nConnection: close" in head, f"no Connection: close: {head!r}")
    err = json.loads(body)
    check(err.get("code") == "request_timeout", err)
    check(err.get("error") == text, err)


# ------------------------------------------------------------------ kith config check

def config_check_shows_and_refuses():
    """--print shows each new key with the configured value; a value out of
    range is refused naming the key path and the range."""
    node = Daemon("cfgcheck", config={"limits": {
        "http_head_timeout_ms": 300, "http_body_timeout_ms": 400, "http_idle_timeout_ms": 500,
        "http_attachment_body_max": 1024}})
    try:
        p = subprocess.run([KITH, "config", "check", "--home", node.home, "--print"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        check(p.returncode == 0, f"config check exited {p.returncode}: {p.stderr}")
        limits = json.loads(p.stdout)["limits"]
        for key, want in (("http_head_timeout_ms", 300), ("http_body_timeout_ms", 400),
                          ("http_idle_timeout_ms", 500), ("http_attachment_body_max", 1024)):
            check(limits.get(key) == want, f"{key}: {limits.get(key)} != {want}")
        with open(os.path.join(node.home, "config.json"), "w") as f:
            json.dump({"limits": {"http_idle_timeout_ms": 99}}, f)
        p = subprocess.run([KITH, "config", "check", "--home", node.home],
                           capture_output=True, text=True, timeout=TIMEOUT)
        check(p.returncode != 0, "an idle deadline of 99 ms was taken")
        check("limits.http_idle_timeout_ms: expected an integer 100..3600000, got 99" in p.stderr,
              p.stderr)
    finally:
        node.cleanup()


# ------------------------------------------------------------------ HTTP deadlines

def head_deadline_configured():
    """limits.http_head_timeout_ms 300: half a head, and a connection that
    sends nothing, are answered 408 request_timeout and closed; the
    gateway serves on."""
    node = Daemon("cfghead", config={"limits": {"http_head_timeout_ms": 300}})
    node.start()
    try:
        half = dial(node)
        half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        silent = dial(node)
        for s in (half, silent):
            refused_408(read_to_end(s), "the request head did not arrive in time")
            s.close()
        s = dial(node)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head, _ = read_response(s)
        check(head.startswith("HTTP/1.1 200 "), head)
        s.close()
    finally:
        node.cleanup()


def idle_and_body_deadlines_configured():
    """limits.http_idle_timeout_ms 300 closes a kept-alive connection with
    nothing under way (quietly: no request, no answer), and
    limits.http_body_timeout_ms 300 answers a body that stops 408, while a
    half-sent head under limits.http_head_timeout_ms of an hour is still
    open afterwards and served when it ends: each connection kept the
    deadline configured for its phase, not the built-in one (10 s head,
    60 s body and idle, under which the head would have been cut first)."""
    node = Daemon("cfgidle", config={"limits": {
        "http_head_timeout_ms": HOUR_MS, "http_body_timeout_ms": 300,
        "http_idle_timeout_ms": 300}})
    node.start()
    try:
        slow_head = dial(node)
        slow_head.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        idle = dial(node)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, _ = read_response(idle)
        check(head.startswith("HTTP/1.1 200 ") and "Connection: close" not in head, head)
        rest = read_to_end(idle)
        check(rest == b"", f"an idle connection was answered {rest!r} before it closed")
        idle.close()
        body = dial(node)
        body.sendall(b"POST /pair HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10\r\n\r\n{\"a\"")
        refused_408(read_to_end(body), "the request body did not arrive in time")
        body.close()
        check(still_open(slow_head), "the half-sent head was cut before its configured deadline")
        slow_head.sendall(b"Connection: close\r\n\r\n")
        head, _ = read_response(slow_head)
        check(head.startswith("HTTP/1.1 200 "), head)
        slow_head.close()
    finally:
        node.cleanup()


# ------------------------------------------------------------------ attachments

def attachments_bound_configured():
    """limits.http_attachment_body_max 1024: a /ws/chat message whose
    attachments re-serialise to more is refused with an error frame
    INVALID_JSON naming the key (WIRE §24.3, §24.5), the socket serves on,
    and one within the bound reaches the agent."""
    node = Daemon("cfgattach", config={"gateway": {"require_pairing": False},
                                       "workers": {"agent_threads": 1},
                                       "limits": {"http_attachment_body_max": 1024}})
    node.start()

    async def recv(ws):
        return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))

    async def go():
        url = f"ws://127.0.0.1:{node.gw_port}/ws/chat"
        async with websockets.connect(url, subprotocols=["kith.v1"], ping_interval=None,
                                      max_size=None) as ws:
            start = await recv(ws)
            check(start["type"] == "session_start", start)
            # [{"d":"…"}] is 10 octets plus the string: 1014 fits, 1015 not
            await ws.send(json.dumps({"type": "message", "content": "big",
                                      "attachments": [{"d": "x" * 1015}]}))
            err = await recv(ws)
            check(err["type"] == "error" and err["code"] == "INVALID_JSON", err)
            check("limits.http_attachment_body_max" in err["message"], err)
            check("turn_id" not in err, err)
            await ws.send(json.dumps({"type": "connect"}))
            f = await recv(ws)
            check(f["type"] == "connected", f)
            await ws.send(json.dumps({"type": "message", "content": "fits",
                                      "attachments": [{"d": "y" * 1014}]}))
            while True:
                f = await recv(ws)
                if f["type"] in ("done", "stopped", "error"):
                    break
            check(f["type"] == "done", f)
            want = 'echo: fits\n\n<attachments>[{"d":"' + "y" * 1014 + '"}]</attachments>'
            check(f["full_response"] == want, f["full_response"][:120])

    try:
        asyncio.run(asyncio.wait_for(go(), 4 * TIMEOUT))
    finally:
        node.cleanup()


def main():
    results = Results()
    results.run(config_check_shows_and_refuses)
    results.run(head_deadline_configured)
    results.run(idle_and_body_deadlines_configured)
    results.run(attachments_bound_configured)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
