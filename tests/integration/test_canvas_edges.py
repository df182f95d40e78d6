"""tests/integration/test_canvas_edges.py — live canvases (WIRE §26) when a
client misbehaves, on the real `kith daemon`: a watcher that stops reading
while 1 MiB documents are posted is cut with 1008 at its unsent bound
(DESIGN §10) while the posts are answered and a watcher that reads gets
every version in order; a watcher that floods the read-only socket and
never reads its READ_ONLY answers is cut the same way; revoking the token
a watcher connected with closes it 1008 "token revoked" and it stops
counting among the canvas's watchers at once, though its client has not
answered the Close; the daemon's
memory held for a watcher stays within that bound, and it serves on. Watchers here are raw
sockets (frames by hand) so the test decides whether they read."""

import asyncio
import json
import os
import socket
import struct
import sys
import time

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, api, check, pair_token, ws_masked, ws_server_frames  # noqa: E402

TIMEOUT = 60
MIB = 1024 * 1024


def main():
    node = Daemon("canvas-edges").start()
    r = Results()
    try:
        op = pair_token(node)

        def post(cid, text, token=op):
            st, _, data = api(node, "POST", f"/api/canvas/{cid}", text.encode(), token,
                              "text/plain")
            return st, json.loads(data)

        def raw_watcher(cid, token=op, rcvbuf=None):
            """A watcher on a raw socket; returns it once the 101 and the
            first frame are in (what follows is left unread)."""
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(TIMEOUT)
            s.connect(("127.0.0.1", node.gw_port))
            s.sendall(("GET /ws/canvas/" + cid + " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                       f"Authorization: Bearer {token}\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data or not ws_server_frames(data.partition(b"\r\n\r\n")[2]):
                chunk = s.recv(4096)
                check(chunk, f"closed before the first frame: {data[:200]}")
                data += chunk
            check(data.startswith(b"HTTP/1.1 101"), f"upgrade {data[:100]}")
            return s

        def close_code(s):
            """Reads everything left (at most the unsent bound and the kernel's
            buffers) until the server's Close: its (code, reason)."""
            data = b""
            while True:
                for op_, payload in ws_server_frames(data):
                    if op_ == 8:
                        return struct.unpack(">H", payload[:2])[0], payload[2:].decode()
                try:
                    chunk = s.recv(1 << 20)
                except ConnectionResetError:
                    return None
                if not chunk:
                    return None
                data += chunk

        def watchers_of(cid):
            st, _, data = api(node, "GET", "/api/canvas", None, op)
            got = [c for c in json.loads(data)["canvases"] if c["id"] == cid]
            return got[0]["watchers"] if got else None

        def slow_watcher_is_cut():
            stuck = raw_watcher("board", rcvbuf=4096)

            async def go():
                url = f"ws://127.0.0.1:{node.gw_port}/ws/canvas/board"
                async with websockets.connect(url, subprotocols=["kith.canvas.v1", f"bearer.{op}"],
                                              ping_interval=None, max_size=4 * MIB) as ws:
                    first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    check(first["type"] == "empty", f"first {first}")
                    for v in range(1, 13):  # 12 MiB to a watcher that takes ~none
                        st, got = await asyncio.get_running_loop().run_in_executor(
                            None, post, "board", chr(ord("a") + v) * (MIB - 64))
                        check(st == 200 and got["version"] == v, f"post {v}: {st} {got}")
                        f = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                        check(f["type"] == "frame" and f["version"] == v and
                              len(f["content"]) == MIB - 64, f"frame {v}")
            asyncio.run(go())
            check(close_code(stuck) == (1008, "slow consumer"), "the stuck watcher's close")
            stuck.close()
            deadline = time.time() + TIMEOUT
            while watchers_of("board") != 0 and time.time() < deadline:
                time.sleep(0.05)
            check(watchers_of("board") == 0, f"watchers left {watchers_of('board')}")

        def flooding_watcher_is_cut():
            s = raw_watcher("flood", rcvbuf=4096)
            s.settimeout(TIMEOUT)
            msg = ws_masked(1, b"x" * 1000)
            code = None
            try:
                for _ in range(200000):  # READ_ONLY answers pile up unread
                    s.sendall(msg)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass
            code = close_code(s)
            check(code is None or code[0] == 1008, f"flood close {code}")
            s.close()
            st, got = post("flood", "still served")
            check(st == 200, f"post after the flood {st} {got}")

        def revoked_watcher_closed():
            st, _, data = api(node, "POST", "/api/tokens",
                              json.dumps({"scope": "operator", "name": "dash"}).encode(), op,
                              "application/json")
            minted = json.loads(data)
            s = raw_watcher("revoked", token=minted["token"])
            st, _, data = api(node, "DELETE", f"/api/tokens/{minted['id']}", None, op)
            check(st == 200 and json.loads(data)["closed"] == 1, f"revoke {st} {data}")
            check(close_code(s) == (1008, "token revoked"), "revoked watcher")
            s.close()

        def revoked_watcher_stops_counting():
            # The watcher reads nothing, so it does not answer the server's
            # Close: its socket lingers for the close wait (5 s), but it no
            # longer watches from the revocation on.
            st, _, data = api(node, "POST", "/api/tokens",
                              json.dumps({"scope": "operator", "name": "dash2"}).encode(), op,
                              "application/json")
            minted = json.loads(data)
            s = raw_watcher("revoked-count", token=minted["token"])
            st, got = post("revoked-count", "v1")
            check(st == 200 and got["watchers"] == 1, f"post before {st} {got}")
            st, _, data = api(node, "DELETE", f"/api/tokens/{minted['id']}", None, op)
            check(st == 200 and json.loads(data)["closed"] == 1, f"revoke {st} {data}")
            st, got = post("revoked-count", "v2")
            check(st == 200 and got["watchers"] == 0, f"post after {st} {got}")
            check(watchers_of("revoked-count") == 0, f"listed {watchers_of('revoked-count')}")
            check(close_code(s) == (1008, "token revoked"), "revoked watcher")
            s.close()

        r.run(slow_watcher_is_cut)
        r.run(flooding_watcher_is_cut)
        r.run(revoked_watcher_closed)
        r.run(revoked_watcher_stops_counting)
        r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
