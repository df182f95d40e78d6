"""tests/integration/test_metrics.py — the /metrics series that count what
crosses each transport (DESIGN §10's /metrics list), read with curl from
the real `kith daemon`: open connections by transport (signed comms over
TCP and a Unix socket, plain event lines, HTTP, WebSocket), responses by
route and status, WebSocket frames in and out. Each is driven by a client
kith did not write and then read back; counters only ever grow."""

import base64
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import Conn, Daemon, Results, check, curl, gateway_url, metrics_map, wait_metric  # noqa: E402


def ws_echo_once(node, text):
    """Opens /ws/echo, sends one masked text frame, reads the echo, leaves
    the socket open; returns it."""
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    check(data.startswith(b"HTTP/1.1 101"), data)
    payload = text.encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
              bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    frame = data.partition(b"\r\n\r\n")[2]
    while len(frame) < 2 + len(payload):
        frame += s.recv(4096)
    check(frame[0] == 0x81 and frame[2:2 + len(payload)] == payload, frame)
    return s


def main():
    results = Results()
    node = Daemon("metrics", config={"gateway": {"require_pairing": False, "echo": True},
                                     "comms": {"auth": "none", "require_peer_auth": False,
                                               "event_address": "127.0.0.1:0"}})
    node.start()

    def connections_by_transport():
        tcp = Conn(("127.0.0.1", node.port))
        uds = Conn(node.uds)
        ev = socket.create_connection(("127.0.0.1", node.event_port), timeout=30)
        ws = ws_echo_once(node, "hi")
        try:
            m = wait_metric(node, 'kith_comms_connections_open{transport="uds"}', lambda v: v >= 1)
            check(m.get('kith_comms_connections_open{transport="tcp"}', 0) >= 1, m)
            m = wait_metric(node, "kith_events_connections_open", lambda v: v >= 1)
            check(m.get("kith_ws_connections_open", 0) == 1, m)
            # The WebSocket is an HTTP connection too, and curl's own is open.
            check(m.get("kith_http_connections_open", 0) >= 2, m)
        finally:
            for c in (tcp, uds):
                c.close()
            ev.close()
            ws.close()
        m = wait_metric(node, 'kith_comms_connections_open{transport="tcp"}', lambda v: v == 0)
        m = wait_metric(node, 'kith_comms_connections_open{transport="uds"}', lambda v: v == 0)
        m = wait_metric(node, "kith_events_connections_open", lambda v: v == 0)
        m = wait_metric(node, "kith_ws_connections_open", lambda v: v == 0)

    def responses_by_route_and_status():
        before = metrics_map(node)
        key = 'kith_http_route_requests_total{route="/health",code="200"}'
        for _ in range(3):
            check(curl(gateway_url(node) + "/health")[0] == 200, "health")
        check(curl(gateway_url(node) + "/nope")[0] == 404, "404")
        check(curl("-X", "DELETE", gateway_url(node) + "/health")[0] == 405, "405")
        after = metrics_map(node)
        check(after.get(key, 0) - before.get(key, 0) == 3, (before.get(key), after.get(key)))
        none404 = 'kith_http_route_requests_total{route="",code="404"}'
        check(after.get(none404, 0) - before.get(none404, 0) == 1, after)
        check(after.get('kith_http_requests_total{code="404"}', 0) >= 1, after)

    def websocket_frames():
        before = metrics_map(node)
        s = ws_echo_once(node, "one")
        s.close()
        m = metrics_map(node)
        fin = 'kith_ws_frames_total{direction="in"}'
        fout = 'kith_ws_frames_total{direction="out"}'
        check(m[fin] - before.get(fin, 0) >= 1, (before.get(fin), m[fin]))
        check(m[fout] - before.get(fout, 0) >= 1, (before.get(fout), m[fout]))
        key = 'kith_http_route_requests_total{route="/ws/echo",code="101"}'
        check(m.get(key, 0) - before.get(key, 0) == 1, m.get(key))

    try:
        for fn in (connections_by_transport, responses_by_route_and_status, websocket_frames):
            results.run(fn)
        results.stopped(node)
    finally:
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
