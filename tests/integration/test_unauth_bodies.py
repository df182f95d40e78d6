"""tests/integration/test_unauth_bodies.py — request bodies held by HTTP
connections that have proved no credential share one budget
(`limits.partial_frame_bytes_max`, spec/WIRE.md §11.3), on the real
daemon: a body is read before its route checks the bearer token, so
without it every unauthenticated connection (2,500 by default) could hold
a 1 MiB body half sent. When a body would pass the budget, the connection
holding the largest unfinished body is cut, or the newcomer refused with
503 when it would hold the most; the others are served. Raw sockets send
the bodies; /metrics (curl) shows what is held."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, curl, gateway_url, metric  # noqa: E402

BUDGET = 1 << 20
CL = 1_000_000
HELD = "kith_http_unauth_body_bytes"
CUT = 'kith_http_rejected_total{reason="unauth_bodies_full"}'


def open_body(node, n):
    """A POST /webhook without credential whose body is CL octets, of which
    n are sent now."""
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=30)
    s.sendall(b"POST /webhook HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % CL + b" " * n)
    return s


def wait_metric(node, name, pred, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        v = metric(node, name)
        if pred(v):
            return v
        time.sleep(0.05)
    raise AssertionError(f"{name}: {what} not reached ({metric(node, name)})")


def read_answer(s):
    """One answer (head and Content-Length body), b"" at an orderly end
    before it, None at a reset."""
    s.settimeout(30)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        n = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        while len(body) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    except ConnectionResetError:
        return None


def largest_holder_is_cut(node):
    a = open_body(node, 600_000)
    wait_metric(node, HELD, lambda v: v >= 600_000, "A's 600,000 octets held")
    b = open_body(node, 300_000)
    wait_metric(node, CUT, lambda v: v >= 1, "a cut")
    assert read_answer(a) in (None, b""), "the largest holder was answered, not cut"
    a.close()
    # B finishes its body and is answered (401: it shows no credential).
    b.sendall(b" " * (CL - 300_000))
    got = read_answer(b)
    b.close()
    assert got and got.startswith(b"HTTP/1.1 401"), got[:80] if got else got
    wait_metric(node, HELD, lambda v: v == 0, "nothing held")


def newcomer_holding_most_is_refused(node):
    before = metric(node, CUT)
    a = open_body(node, 300_000)
    wait_metric(node, HELD, lambda v: v >= 300_000, "A's 300,000 octets held")
    b = open_body(node, 900_000)
    got = read_answer(b)
    b.close()
    assert got and got.startswith(b"HTTP/1.1 503"), got[:120] if got else got
    assert b'"code":"unauth_bodies_full"' in got, got[-200:]
    assert metric(node, CUT) == before + 1
    a.sendall(b" " * (CL - 300_000))
    got = read_answer(a)
    a.close()
    assert got and got.startswith(b"HTTP/1.1 401"), got[:80] if got else got
    # And a client with nothing in hand is served meanwhile.
    status, _, _, _ = curl(gateway_url(node) + "/health")
    assert status == 200


def main():
    results = Results()
    node = Daemon("bodies", config={"limits": {"partial_frame_bytes_max": BUDGET}})
    node.start()
    try:
        results.run(largest_holder_is_cut, node)
        results.run(newcomer_holding_most_is_refused, node)
        results.stopped(node)
    finally:
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
