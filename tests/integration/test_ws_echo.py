"""tests/integration/test_ws_echo.py — /ws/echo (DESIGN §5, RFC 6455) on the
real `kith daemon --echo`, driven by Python's `websockets` client for the
ordinary exchanges, by Node's `ws` for a second opinion, and by raw sockets for what a polite client never sends:
unmasked or malformed frames, bad UTF-8, oversized messages, a broken
handshake, and a reader too slow for what it asked for."""

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, ws_server_frames  # noqa: E402
from peer import ws_masked as masked  # noqa: E402

TESTS = []
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def test(fn):
    TESTS.append(fn)
    return fn


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def url(node, path="/ws/echo"):
    return f"ws://127.0.0.1:{node.gw_port}{path}"


# ------------------------------------------------------------------ raw frames

def handshake(node, extra=b"", path=b"/ws/echo", version=b"13"):
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=30)
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY.encode() +
              b"\r\nSec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n")
    return s


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode(), rest


def read_all(s):
    out = b""
    while True:
        try:
            chunk = s.recv(1 << 20)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        out += chunk
    return out


def close_code(payload):
    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


def upgraded(node):
    s = handshake(node)
    head, rest = read_head(s)
    assert head.startswith("HTTP/1.1 101"), head
    return s, rest


# ------------------------------------------------------------------ the cases

@test
def echo_text_binary_and_sizes(node):
    async def go():
        async with websockets.connect(url(node), max_size=None, ping_interval=None) as ws:
            for msg in ["hello", "", "żółw 🐢", "x" * 70000]:
                await ws.send(msg)
                assert await ws.recv() == msg
            for msg in [b"\x00\xff\x10", b"", bytes(range(256)) * 1000]:
                await ws.send(msg)
                assert await ws.recv() == msg
    run(go())


@test
def fragmented_message_comes_back_whole(node):
    async def go():
        async with websockets.connect(url(node), ping_interval=None) as ws:
            await ws.send(["frag", "men", "ted"])
            assert await ws.recv() == "fragmented"
    run(go())


@test
def ping_is_answered(node):
    async def go():
        async with websockets.connect(url(node), ping_interval=None) as ws:
            waiter = await ws.ping(b"are you there")
            await asyncio.wait_for(waiter, 20)
    run(go())


@test
def close_code_is_echoed(node):
    async def go():
        # 1013 (try again later) is one of the IANA-registered codes past
        # RFC 6455's own list: taken and echoed, not a protocol error.
        for code in (4000, 1013):
            ws = await websockets.connect(url(node), ping_interval=None)
            await ws.close(code=code, reason="bye")
            assert ws.close_code == code, (code, ws.close_code)
    run(go())


@test
def many_messages_in_flight_keep_order(node):
    async def go():
        async with websockets.connect(url(node), ping_interval=None) as ws:
            for i in range(500):
                await ws.send(f"m{i}")
            for i in range(500):
                assert await ws.recv() == f"m{i}"
    run(go())


@test
def frames_behind_the_handshake_in_one_write(node):
    # A client may send frames right behind its request: none may be lost.
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=30)
    s.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" +
              masked(1, b"first") + masked(1, b"second") + masked(8, struct.pack(">H", 1000)))
    head, rest = read_head(s)
    assert head.startswith("HTTP/1.1 101"), head
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, head
    got = ws_server_frames(rest + read_all(s))
    s.close()
    assert got[:2] == [(1, b"first"), (1, b"second")], got
    assert got[2][0] == 8 and close_code(got[2][1]) == 1000, got


@test
def unmasked_frame_is_1002(node):
    s, rest = upgraded(node)
    s.sendall(b"\x81\x02hi")
    got = ws_server_frames(rest + read_all(s))
    s.close()
    assert got and got[-1][0] == 8 and close_code(got[-1][1]) == 1002, got


@test
def bad_utf8_text_is_1007(node):
    s, rest = upgraded(node)
    s.sendall(masked(1, b"ok \xff"))
    got = ws_server_frames(rest + read_all(s))
    s.close()
    assert got and got[-1][0] == 8 and close_code(got[-1][1]) == 1007, got


@test
def oversized_message_is_1009_before_its_payload(node):
    s, rest = upgraded(node)
    # Only the header of a 2 MiB frame: refused on its length alone.
    s.sendall(bytes([0x82, 0x80 | 127]) + struct.pack(">Q", 2 << 20) + b"\x00\x00\x00\x00")
    got = ws_server_frames(rest + read_all(s))
    s.close()
    assert got and got[-1][0] == 8 and close_code(got[-1][1]) == 1009, got


@test
def fragments_adding_up_past_the_limit_are_1009(node):
    s, rest = upgraded(node)
    part = b"a" * (600 * 1024)
    try:
        s.sendall(masked(2, part, fin=False) + masked(0, part, fin=True))
    except (BrokenPipeError, ConnectionResetError):
        pass
    got = ws_server_frames(rest + read_all(s))
    s.close()
    assert got and got[-1][0] == 8 and close_code(got[-1][1]) == 1009, got


@test
def reserved_opcode_is_1002_and_others_unharmed(node):
    async def go():
        async with websockets.connect(url(node), ping_interval=None) as ws:
            s, rest = upgraded(node)
            s.sendall(masked(3, b"?"))
            got = ws_server_frames(rest + read_all(s))
            s.close()
            assert got and close_code(got[-1][1]) == 1002, got
            await ws.send("still here")
            assert await ws.recv() == "still here"
    run(go())


@test
def handshake_refusals(node):
    s = handshake(node, version=b"8")
    head, rest = read_head(s)
    s.close()
    assert head.startswith("HTTP/1.1 426 Upgrade Required\r\n"), head
    assert "Sec-WebSocket-Version: 13" in head, head
    assert json.loads(rest.decode())["code"] == "websocket_handshake"
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=30)
    s.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    head, rest = read_head(s)
    s.close()
    assert head.startswith("HTTP/1.1 400"), head
    s = handshake(node, path=b"/ws/nowhere")
    head, rest = read_head(s)
    s.close()
    assert head.startswith("HTTP/1.1 404"), head
    assert json.loads(rest.decode())["code"] == "websocket_not_found"


@test
def plain_get_on_the_endpoint_is_426(node):
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=30)
    s.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, rest = read_head(s)
    s.close()
    assert head.startswith("HTTP/1.1 426 Upgrade Required\r\n"), head
    assert "Upgrade: websocket" in head, head


@test
def slow_reader_is_cut_with_1008(node):
    # Ask for far more echo than the 4 MiB unsent-byte limit and read none
    # of it: the daemon must cut this socket, not grow memory for it.
    s, rest = upgraded(node)
    msg = masked(2, b"z" * 65536)
    stop = threading.Event()

    def writer():
        sent = 0
        try:
            while sent < (64 << 20) and not stop.is_set():
                s.sendall(msg)
                sent += len(msg)
        except OSError:
            pass
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    t.join(60)
    stop.set()
    s.settimeout(30)
    got = ws_server_frames(rest + read_all(s))
    s.close()
    closes = [p for op, p in got if op == 8]
    assert closes and close_code(closes[-1]) == 1008, (len(got), closes)
    # And the daemon still serves everyone else.
    async def go():
        async with websockets.connect(url(node), ping_interval=None) as ws:
            await ws.send("after")
            assert await ws.recv() == "after"
    run(go())


@test
def node_ws_client(node):
    script = os.path.join(os.path.dirname(__file__), "ws_client.js")
    modules = os.path.join(os.path.dirname(__file__), "..", "node_modules", "ws")
    assert os.path.isdir(modules), "tests/node_modules/ws is missing: run tools/setup"
    p = subprocess.run(["node", script, url(node)], capture_output=True, text=True, timeout=60)
    out = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    assert p.returncode == 0 and out.get("ok"), (p.returncode, p.stdout, p.stderr)


def pings_keep_live_sockets_and_end_dead_ones():
    # A 300 ms ping interval: a client that answers pings (websockets does,
    # by itself) stays open however long it says nothing; a raw socket that
    # never answers gets pings, then Close 1001 "no pong".
    node = Daemon("wsping", config={"gateway": {"echo": True},
                                    "limits": {"ws_ping_interval_ms": 300}})
    try:
        node.start()

        async def go():
            async with websockets.connect(url(node), ping_interval=None) as ws:
                await asyncio.sleep(2.0)  # several intervals of silence, answered pongs
                await ws.send("still open")
                assert await ws.recv() == "still open"
        run(go())
        s, rest = upgraded(node)
        s.settimeout(60)
        got = ws_server_frames(rest + read_all(s))
        s.close()
        ops = [op for op, _ in got]
        assert 9 in ops, got  # pinged
        assert got[-1][0] == 8 and close_code(got[-1][1]) == 1001, got
        assert got[-1][1][2:] == b"no pong", got
    finally:
        node.cleanup()


def unfinished_frame_and_unanswered_close():
    # limits.frame_timeout_ms bounds a WebSocket frame too (DESIGN §10:
    # time to finish a frame once started): a frame begun and never
    # finished is closed 1008 at the deadline, and a peer that then never
    # answers the Close is cut by the close handshake's own bound.
    node = Daemon("wsframe", config={"gateway": {"echo": True},
                                     "limits": {"frame_timeout_ms": 300, "ws_ping_interval_ms": 600000}})
    try:
        node.start()
        s, rest = upgraded(node)
        frame = masked(1, b"x" * 100)
        s.sendall(frame[:20])  # the header and 14 bytes of 100
        s.settimeout(60)
        data = rest
        while not any(op == 8 for op, _ in ws_server_frames(data)):
            chunk = s.recv(4096)
            assert chunk, "closed without a Close frame"
            data += chunk
        got = ws_server_frames(data)
        assert got[-1][0] == 8 and close_code(got[-1][1]) == 1008, got
        assert got[-1][1][2:] == b"frame not finished in time", got
        # We never answer the Close: the daemon ends the connection anyway.
        rest = read_all(s)
        s.close()
        assert not any(op == 8 for op, _ in ws_server_frames(rest)), rest
        # And it still serves others.
        async def go():
            async with websockets.connect(url(node), ping_interval=None) as ws:
                await ws.send("after")
                assert await ws.recv() == "after"
        run(go())
    finally:
        node.cleanup()


def unauthenticated_sockets_hold_a_place_and_yield_it():
    # /ws/echo proves no credential, so its sockets stay in the share of
    # unauthenticated connections (WIRE §11.3): with room for 3, a fourth
    # connection cuts the oldest socket (Close 1008) and is served; the
    # others go on; closed sockets give their places back.
    node = Daemon("wsunauth", config={"gateway": {"echo": True},
                                      "limits": {"http_unauth_connections_max": 3,
                                                 "http_unauth_per_source_max": 3}})

    def metrics():
        out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{node.gw_port}/metrics"],
                             capture_output=True, text=True, timeout=30).stdout
        return {ln.split()[0]: float(ln.split()[1]) for ln in out.splitlines()
                if ln and not ln.startswith("#")}

    try:
        node.start()

        async def go():
            socks = [await websockets.connect(url(node), ping_interval=None) for _ in range(3)]
            for i, ws in enumerate(socks):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
            m = await asyncio.to_thread(metrics)  # a fourth connection
            assert m['kith_http_rejected_total{reason="unauth_evicted"}'] == 1, m
            assert m["kith_http_unauth_connections"] == 3, m
            try:
                await socks[0].recv()
                raise AssertionError("the oldest socket was not cut")
            except websockets.ConnectionClosed as e:
                assert e.rcvd and e.rcvd.code == 1008, e
                assert e.rcvd.reason == "too many unauthenticated connections", e
            for i, ws in enumerate(socks[1:], 1):
                await ws.send(f"again{i}")
                assert await ws.recv() == f"again{i}"
                await ws.close()
            m = await asyncio.to_thread(metrics)
            assert m["kith_http_unauth_connections"] == 1, m  # this request's own
            assert m['kith_http_rejected_total{reason="unauth_evicted"}'] == 1, m
        run(go())
    finally:
        node.cleanup()


def echo_is_off_by_default():
    node = Daemon("noecho")
    try:
        node.start()
        s = handshake(node)
        head, rest = read_head(s)
        s.close()
        assert head.startswith("HTTP/1.1 404"), head
    finally:
        node.cleanup()


def main():
    results = Results()
    node = Daemon("ws", config={"gateway": {"echo": True}})
    node.start()
    node.wait_log("/ws/echo")
    try:
        for fn in TESTS:
            results.run(fn, node)
        results.stopped(node)
    finally:
        node.cleanup()
    results.run(echo_is_off_by_default)
    results.run(pings_keep_live_sockets_and_end_dead_ones)
    results.run(unfinished_frame_and_unanswered_close)
    results.run(unauthenticated_sockets_hold_a_place_and_yield_it)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
