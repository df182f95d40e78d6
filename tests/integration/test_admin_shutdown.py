"""tests/integration/test_admin_shutdown.py — POST /admin/shutdown and the
gateway's drain (WIRE §17.3, §9.2) on the real `kith daemon`: the 202 goes
out whole before the connection closes, a request pipelined behind it is
not served, idle keep-alive connections and SSE streams end with a clean
FIN (not a reset), a WebSocket gets a 1001 close frame, and the process
exits 0. SIGTERM drains the same way. `kith gateway` serves HTTP without
the comms listeners."""

import base64
import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, curl, gateway_url  # noqa: E402


def connect(node):
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=30)
    return s


def read_until_eof(s):
    """Everything the server sends until it closes (then closes our end, as
    a client does on EOF); raises on a reset."""
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            s.close()
            return out
        out += chunk


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        check(chunk, f"closed before a head: {data!r}")
        data += chunk
    return data


def idle_keepalive(node):
    s = connect(node)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = read_head(s)
    check(head.startswith(b"HTTP/1.1 200"), head)
    return s


def sse_stream(node):
    s = connect(node)
    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    head = read_head(s)
    check(head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head, head)
    return s


def websocket(node):
    s = connect(node)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = read_head(s)
    check(head.startswith(b"HTTP/1.1 101"), head)
    return s


def ws_close_code(s):
    """Reads server frames up to a Close, answers it as RFC 6455 §5.5.1 asks
    (masked, echoing the code), then reads to EOF; returns the code."""
    frames = b""
    while close_code(frames) is None:
        chunk = s.recv(4096)
        check(chunk, f"closed without a Close frame: {frames!r}")
        frames += chunk
    code = close_code(frames)
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(code.to_bytes(2, "big")))
    s.sendall(bytes([0x88, 0x80 | 2]) + mask + payload)
    read_until_eof(s)
    return code


def close_code(frames):
    """The status code of the first Close frame in unmasked server frames."""
    i = 0
    while i + 2 <= len(frames):
        op, n = frames[i] & 0x0F, frames[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(frames[i:i + 2], "big"), i + 2
        if op == 0x8:
            return int.from_bytes(frames[i:i + 2], "big")
        i += n
    return None


def main():
    results = Results()
    cfg = {"gateway": {"require_pairing": False, "echo": True}}

    def shutdown_over_http():
        node = Daemon("shutdown", config=cfg).start()
        try:
            idle, sse, ws = idle_keepalive(node), sse_stream(node), websocket(node)
            s = connect(node)
            # The shutdown and a request pipelined behind it, in one write.
            s.sendall(b"POST /admin/shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                      b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_until_eof(s)
            head, _, body = answer.partition(b"\r\n\r\n")
            check(head.startswith(b"HTTP/1.1 202"), answer)
            check(b"connection: close" in head.lower(), head)
            check(json.loads(body) == {"shutting_down": True}, body)
            check(answer.count(b"HTTP/1.1") == 1, f"the pipelined request was served: {answer!r}")
            check(read_until_eof(idle) == b"", "the idle connection got bytes")
            read_until_eof(sse)  # ends with FIN; whatever events it carried
            check(ws_close_code(ws) == 1001, "no 1001 close frame")
            node.proc.wait(timeout=60)
            check(node.proc.returncode == 0, f"exit {node.proc.returncode}\n{node.logs()}")
            logs = node.logs()
            check("gateway: drained" in logs and "daemon: stopped" in logs, logs[-2000:])
            check("drain deadline" not in logs, "clients that close were cut at the deadline")
        finally:
            node.cleanup()

    def shutdown_refused_with_get_and_keeps_serving():
        node = Daemon("shutdown-get", config=cfg).start()
        try:
            status, _, body, _ = curl(gateway_url(node) + "/admin/shutdown")
            check(status == 405, (status, body))
            check(json.loads(body)["code"] == "method_not_allowed", body)
            status, _, _, _ = curl(gateway_url(node) + "/health")
            check(status == 200, status)
            check(node.proc.poll() is None, "the daemon stopped")
        finally:
            node.cleanup()

    def sigterm_drains_the_gateway():
        node = Daemon("shutdown-term", config=cfg).start()
        try:
            idle, ws = idle_keepalive(node), websocket(node)
            node.proc.send_signal(signal.SIGTERM)
            check(read_until_eof(idle) == b"", "the idle connection got bytes")
            check(ws_close_code(ws) == 1001, "no 1001 close frame")
            node.proc.wait(timeout=60)
            check(node.proc.returncode == 0, f"exit {node.proc.returncode}")
        finally:
            node.cleanup()

    def unanswered_request_is_told_503():
        """A request whose answer is deferred and still owed near the drain's
        deadline (a turn over HTTP that sleeps for minutes) is answered 503
        shutting_down and closed in order, not cut without a word."""
        node = Daemon("shutdown-owed", config=cfg).start()
        try:
            s = connect(node)
            body = json.dumps({"content": "/sleep 600000"}).encode()
            s.sendall(b"POST /api/sessions/owed/messages HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
            # The turn has begun once the session holds the message (bounded).
            for _ in range(200):
                status, _, text, _ = curl(gateway_url(node) + "/api/sessions/owed")
                if status == 200 and json.loads(text).get("message_count", 0) >= 1:
                    break
                time.sleep(0.05)
            check(status == 200, (status, text))
            node.proc.send_signal(signal.SIGTERM)
            answer = read_until_eof(s)
            head, _, rest = answer.partition(b"\r\n\r\n")
            check(head.startswith(b"HTTP/1.1 503"), answer)
            check(b"connection: close" in head.lower() and b"retry-after: 5" in head.lower(), head)
            check(json.loads(rest)["code"] == "shutting_down", rest)
            node.proc.wait(timeout=60)
            check(node.proc.returncode == 0, f"exit {node.proc.returncode}\n{node.logs()}")
            check("drain: 1 requests unanswered, told 503" in node.logs(), node.logs()[-2000:])
        finally:
            node.cleanup()

    def kith_gateway_serves_http_without_comms():
        node = Daemon("gateway-alone", config=cfg, command="gateway").start()
        try:
            logs = node.logs()
            check(node.port is None and node.event_port is None, logs)
            check('comms off (comms.mode "none")' in logs, logs)
            status, _, body, _ = curl(gateway_url(node) + "/health")
            check(status == 200, (status, body))
            status, _, body, _ = curl("-X", "POST", gateway_url(node) + "/admin/shutdown")
            check(status == 202 and json.loads(body) == {"shutting_down": True}, (status, body))
            node.proc.wait(timeout=60)
            check(node.proc.returncode == 0, f"exit {node.proc.returncode}")
        finally:
            node.cleanup()

    for fn in (shutdown_over_http, shutdown_refused_with_get_and_keeps_serving,
               sigterm_drains_the_gateway, unanswered_request_is_told_503,
               kith_gateway_serves_http_without_comms):
        results.run(fn)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
