"""tests/integration/test_unsent_total.py — the bound on unsent bytes of all
connections together (`limits.conn_unsent_total_max`, spec/WIRE.md §9.2),
on the real `kith daemon --echo`: sockets that ask for echo and read none
of it are cut once all connections together hold the bound (each may then
hold only its share of it), long before their own 4 MiB, while a client
that reads goes on being served. Python's `websockets` is the reader; the
stuck clients are raw sockets; a Close they get is 1008 "slow consumer"."""

import asyncio
import os
import socket
import struct
import sys
import threading

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results  # noqa: E402
from peer import ws_masked as masked  # noqa: E402
from peer import ws_server_frames  # noqa: E402

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
STUCK = 3


def upgraded(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "closed before the 101"
        data += chunk
    assert data.startswith(b"HTTP/1.1 101"), data[:80]
    return s


def flood(s, stop, sent):
    """Asks for up to 64 MiB of echo and reads none of it."""
    msg = masked(2, b"z" * 65536)
    try:
        while sent[0] < (64 << 20) and not stop.is_set():
            s.sendall(msg)
            sent[0] += len(msg)
    except OSError:
        pass


def stuck_readers_yield_to_the_total(node):
    port = node.gw_port
    url = f"ws://127.0.0.1:{port}/ws/echo"

    async def reader_until(stop):
        # Echo round trips of 64 KiB the whole time: this client keeps up.
        n = 0
        async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
            while not stop.is_set() or n == 0:
                await ws.send(b"r" * 65536)
                assert await ws.recv() == b"r" * 65536
                n += 1
            await ws.send("after")
            assert await ws.recv() == "after"
        return n

    socks = [upgraded(port) for _ in range(STUCK)]
    stop = threading.Event()
    sent = [[0] for _ in socks]
    threads = [threading.Thread(target=flood, args=(s, stop, n), daemon=True)
               for s, n in zip(socks, sent)]
    cut = threading.Event()

    def watch():
        # "its share": cut by the total, not by its own 4 MiB.
        if node.wait_log("its share of limits.conn_unsent_total_max", timeout=90, count=STUCK):
            cut.set()
        stop.set()
    for t in threads:
        t.start()
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    rounds = asyncio.run(asyncio.wait_for(reader_until(stop), 120))
    w.join(5)
    for t in threads:
        t.join(30)
    assert cut.is_set(), ("no stuck socket was cut by its share", [n[0] for n in sent],
                          node.logs()[-2000:])
    # Each stuck socket was ended. The server sends Close 1008 "slow
    # consumer" as its last frame (even past the share: router_conn_send_last)
    # and then waits, bounded, for the client to read what is queued; a
    # client that reads only later may find a reset instead. Where a Close
    # came, it is that one.
    for s in socks:
        s.settimeout(30)
        data = b""
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError("a stuck socket was left open")
        s.close()
        closes = [p for op, p in ws_server_frames(data) if op == 8]
        for c in closes:
            assert struct.unpack(">H", c[:2])[0] == 1008 and c[2:] == b"slow consumer", c
    assert rounds > 0


def main():
    results = Results()
    node = Daemon("unsent", config={"gateway": {"echo": True},
                                    "limits": {"conn_unsent_total_max": 1 << 20}})
    node.start()
    node.wait_log("/ws/echo")
    try:
        results.run(stuck_readers_yield_to_the_total, node)
        results.stopped(node)
    finally:
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
