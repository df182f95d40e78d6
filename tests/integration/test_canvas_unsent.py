"""tests/integration/test_canvas_unsent.py — live canvases (WIRE §26) under
the bound on all connections' unsent bytes (`limits.conn_unsent_total_max`,
WIRE §9.2), on the real `kith daemon`: 64 watchers that stopped reading and
readers connected before and after them all watch one canvas, and 1 MiB
documents are posted to it. Each post is one frame shared by every
watcher's queue, counted once against the 8 MiB bound: the stuck watchers
are cut, 1008, by their own 4 MiB limit as posts pile up in their queues,
none by a share of the bound, and every reader gets every version, in
order. Before the frame was shared, each watcher had its own copy: the
first post's 67 MiB of copies could not fit, and the watchers served last
(the oldest sockets: the readers connected first) were cut whether or not
they read. Watchers are raw sockets (frames by hand) so the test decides
which read."""

import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, api, check, pair_token, ws_server_frames  # noqa: E402

TIMEOUT = 60
MIB = 1024 * 1024
STUCK = 64
POSTS = 12
SHARE_CUT = "its share of limits.conn_unsent_total_max"


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        check(chunk, f"the connection ended after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_frame(s):
    """One server frame from a raw upgraded socket: (opcode, payload)."""
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", recv_exact(s, 8))[0]
    return b0 & 0x0F, recv_exact(s, n)


def main():
    node = Daemon("canvas-unsent", config={"limits": {"conn_unsent_total_max": 8 * MIB}}).start()
    r = Results()
    try:
        op = pair_token(node)

        def watcher(cid, rcvbuf=None):
            """A watcher on a raw socket, past its 101 and its first frame."""
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(TIMEOUT)
            s.connect(("127.0.0.1", node.gw_port))
            s.sendall(("GET /ws/canvas/" + cid + " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                       f"Authorization: Bearer {op}\r\n\r\n").encode())
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += recv_exact(s, 1)
            check(head.startswith(b"HTTP/1.1 101"), f"upgrade {head[:100]}")
            opcode, first = read_frame(s)
            check(opcode == 1 and json.loads(first)["type"] == "empty", f"first {first[:100]}")
            return s

        def watchers_of(cid):
            st, _, data = api(node, "GET", "/api/canvas", None, op)
            got = [c for c in json.loads(data)["canvases"] if c["id"] == cid]
            return got[0]["watchers"] if got else None

        def drain_stuck(stuck):
            """Each stuck connection ends, however much it left unread:
            with Close 1008 "slow consumer", or a reset when that Close sat
            behind documents it never read and could not go out in time."""
            for s in stuck:
                data = b""
                try:
                    while True:
                        chunk = s.recv(1 << 20)
                        if not chunk:
                            break
                        data += chunk
                except ConnectionResetError:
                    pass
                closes = [(struct.unpack(">H", p[:2])[0], p[2:]) for o, p in
                          ws_server_frames(data) if o == 8]
                check(closes in ([], [(1008, b"slow consumer")]), f"a stuck watcher's {closes}")
                s.close()

        def readers_outlive_stuck_watchers():
            # The readers that connected first are served last.
            early = [watcher("wall") for _ in range(2)]
            stuck = [watcher("wall", rcvbuf=4096) for _ in range(STUCK)]
            late = watcher("wall")
            readers = early + [late]
            for v in range(1, POSTS + 1):
                doc = chr(ord("a") + v) * (MIB - 64)
                st, _, data = api(node, "POST", "/api/canvas/wall", doc.encode(), op, "text/plain")
                check(st == 200 and json.loads(data)["version"] == v, f"post {v}: {st} {data}")
                for i, reader in enumerate(readers):
                    opcode, payload = read_frame(reader)
                    check(opcode == 1, f"reader {i} got opcode {opcode} {payload[:60]} at {v}")
                    f = json.loads(payload)
                    check(f["type"] == "frame" and f["version"] == v and f["content"] == doc,
                          f"reader {i}'s frame at {v}: {f.get('type')} {f.get('version')}")
            # 12 MiB offered to each stuck watcher: all of them are past
            # their own 4 MiB by now, and cut by it.
            st, _, data = api(node, "POST", "/api/canvas/wall", b"last", op, "text/plain")
            check(st == 200 and json.loads(data)["watchers"] == len(readers),
                  f"last post {st} {data}")
            for reader in readers:
                opcode, payload = read_frame(reader)
                check(json.loads(payload)["version"] == POSTS + 1, "a reader's last frame")
            check(watchers_of("wall") == len(readers), f"watchers {watchers_of('wall')}")
            check(SHARE_CUT not in node.logs(), "a watcher was cut by its share of the bound")
            drain_stuck(stuck)
            for reader in readers:
                reader.close()
            deadline = time.time() + TIMEOUT
            while watchers_of("wall") != 0 and time.time() < deadline:
                time.sleep(0.05)
            check(watchers_of("wall") == 0, "the readers left")

        r.run(readers_outlive_stuck_watchers)
        r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
