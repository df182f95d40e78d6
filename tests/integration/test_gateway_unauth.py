"""tests/integration/test_gateway_unauth.py — the gateway's bounds on
connections not yet authenticated (spec/WIRE.md §11.3, DESIGN §10) on the
real `kith daemon`, driven with raw sockets and curl: past
limits.http_unauth_connections_max the oldest idle unauthenticated
connection is cut for a newcomer; when every one has a request under way
the newcomer is reset instead; connections that proved a bearer token are
outside the share and are never cut for it. (The per-source share needs an
address that is not loopback; gateway_test covers it where there is one.)"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, pair_token  # noqa: E402

SHARE = 4
CAP = 4  # gateway.max_connections of the second daemon
TIMEOUT = 30  # a bound on any one wait, never a speed assertion


def connect(node):
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed(s):
    """True once the server has closed (EOF or reset) with nothing sent;
    False if it sends something or nothing happens within TIMEOUT."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def refused(node):
    """True when a new connection is reset (on loopback the reset can come
    before connect returns) or closed without an answer to a request."""
    try:
        s = connect(node)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    except ConnectionResetError:
        return True
    try:
        return closed(s)
    finally:
        s.close()


def body_under_way(node):
    """A connection whose request's body the gateway is reading: it took
    the head (100 Continue says so) and waits for the body."""
    s = connect(node)
    s.sendall(b"POST /sessions/s-1/external-events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\nContent-Length: 100\r\n"
              b"Expect: 100-continue\r\n\r\n")
    head, _ = read_head(s)
    check(head.startswith(b"HTTP/1.1 100 "), head)
    return s


def read_head(s):
    """A response head from s, and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        check(chunk, f"closed before an answer: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def exchange(s, text):
    """One request on s: its status and body."""
    s.sendall(text.encode())
    head, rest = read_head(s)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        rest += s.recv(4096)
    return int(head.split()[1]), rest[:length].decode()


def request(s, text):
    return exchange(s, text)[0]


def metrics_on(s):
    """/metrics as {series: int}, read on s (an authenticated connection,
    so the reading takes no place in the share it reads)."""
    status, body = exchange(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    check(status == 200, f"/metrics answered {status}")
    m = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            m[k] = int(float(v))
    return m


def main():
    node = Daemon("gwunauth", config={"limits": {"http_unauth_connections_max": SHARE,
                                                 "http_unauth_per_source_max": SHARE}})
    node.start()
    results = Results()
    token = pair_token(node)
    GET_AUTHED = ("GET /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n")
    held = []
    mon = connect(node)
    check(request(mon, GET_AUTHED) == 200, "the monitor's bearer request")

    def wait_unauth(want):
        """The gauge once it says `want` (a close is seen by the loop a
        moment after the client made it)."""
        deadline = time.time() + TIMEOUT
        got = None
        while time.time() < deadline:
            got = metrics_on(mon).get("kith_http_unauth_connections")
            if got == want:
                return
            time.sleep(0.05)
        raise AssertionError(f"kith_http_unauth_connections stayed {got}, not {want}")

    def authenticated_are_outside():
        for _ in range(SHARE + 2):
            s = connect(node)
            check(request(s, GET_AUTHED) == 200, "a bearer request on a fresh connection")
            held.append(s)
        wait_unauth(0)

    def oldest_idle_cut_for_newcomer():
        idle = [connect(node) for _ in range(SHARE)]
        wait_unauth(SHARE)
        newcomer = connect(node)  # past the share: the oldest idle one goes
        check(closed(idle[0]), "the oldest idle connection was not cut")
        m = metrics_on(mon)
        check(m.get('kith_http_rejected_total{reason="unauth_evicted"}') == 1, m)
        check(request(newcomer, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 200,
              "the newcomer was not served")
        for s in idle[1:] + [newcomer]:
            s.close()
        for s in held:  # the authenticated ones were not touched
            check(request(s, GET_AUTHED) == 200, "an authenticated connection was cut")
        wait_unauth(0)

    def newcomer_reset_when_all_are_busy():
        busy = [body_under_way(node) for _ in range(SHARE)]
        wait_unauth(SHARE)
        check(refused(node), "a newcomer was served past a share of busy connections")
        for s in busy:
            s.close()
        wait_unauth(0)
        m = metrics_on(mon)
        check(m.get('kith_http_rejected_total{reason="unauth_full"}') == 1, m)
        for s in held:
            check(request(s, GET_AUTHED) == 200, "an authenticated connection was cut")

    for case in (authenticated_are_outside, oldest_idle_cut_for_newcomer,
                 newcomer_reset_when_all_are_busy):
        results.run(case)
    for s in held + [mon]:
        s.close()
    results.stopped(node)

    def cap_full_of_idle_connections():
        # gateway.max_connections 4 clamps the unauthenticated share to 4:
        # four idle connections hold every place. A client with a bearer
        # token still gets in: at the cap the oldest idle unauthenticated
        # connection gives way, as past the share (WIRE 11.3).
        cap = Daemon("gwcap", config={"gateway": {"max_connections": CAP}})
        idle = []
        try:
            cap.start()
            tok = pair_token(cap)
            idle = [connect(cap) for _ in range(CAP)]
            newcomer = connect(cap)
            authed = ("GET /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {tok}\r\n\r\n")
            check(request(newcomer, authed) == 200, "the bearer client was not served at the cap")
            check(closed(idle[0]), "the oldest idle connection kept its place")
            m = metrics_on(newcomer)
            # (1, or 2 when the pairing's own connection was not reaped yet)
            check(m.get('kith_http_rejected_total{reason="unauth_evicted"}', 0) >= 1, m)
            check(m.get('kith_http_rejected_total{reason="too_many_connections"}') in (None, 0), m)
            newcomer.close()
        finally:
            for s in idle:
                s.close()
            cap.cleanup()
    results.run(cap_full_of_idle_connections)
    node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
