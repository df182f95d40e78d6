"""tests/integration/test_nodes.py — the node registry (DESIGN §5, WIRE §27)
on the real `kith daemon`: nodes are Python `websockets` clients on
/ws/nodes with a paired token; the operator is Python's http.client. A node
registers (name, commands, meta) and is listed; an invoke reaches it and
its result (or its error) is the operator's answer; a node that does not
answer in time makes the call 504, and its late result is UNKNOWN_CALL; a
node that leaves answers its waiting calls 503 node_gone; DELETE removes a
node (its socket closes 1000) and a socket that never registers is closed
1008 at the deadline (10 s). Refusals: no token (401, before any upgrade),
bad frames (typed errors, the socket stays), results before register,
unknown nodes and commands, bad invoke bodies, and the bound on calls
waiting on one node (429 past 16). Failure handling: every kind of junk
frame answered with its code while the node stays registered and callable;
a message over 1 MiB (1009) and text that is not UTF-8 (1007); a refused
register registers nothing; a node that vanishes without a Close, or stops
reading until its unsent bound cuts it, with calls waiting (503 node_gone);
ids out of charset or length (404); every bad invoke body (400 with its
code, 413 past 1 MiB); 256 node sockets at once (503 too_many_nodes);
1,024 calls waiting over all nodes (429 too_many_calls); and operators
whose connections close while their calls wait."""

import asyncio
import http.client
import json
import os
import re
import socket
import struct
import sys
import threading
import time

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Conn, Daemon, Results, api, check, pair_token, ws_masked,  # noqa: E402
                  ws_read_until, ws_server_frames)

TIMEOUT = 60


def main():
    node = Daemon("nodes").start()
    r = Results()
    try:
        token = pair_token(node)
        url = f"ws://127.0.0.1:{node.gw_port}/ws/nodes"
        protos = ["kith.nodes.v1", f"bearer.{token}"]

        def request(method, path, body=None, bearer=True, ctype="application/json"):
            """(status, JSON body): a dict or list body is sent as JSON."""
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            st, _, data = api(node, method, path, body, token if bearer else None,
                              ctype if body is not None else None)
            return st, json.loads(data) if data else None

        async def recv(ws):
            return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))

        async def register(name, commands, meta=None):
            ws = await websockets.connect(url, subprotocols=protos, ping_interval=None)
            frame = {"type": "register", "name": name, "commands": commands}
            if meta is not None:
                frame["meta"] = meta
            await ws.send(json.dumps(frame))
            reg = await recv(ws)
            check(reg["type"] == "registered" and len(reg["id"]) == 36, f"registered {reg}")
            return ws, reg["id"]

        def invoke_async(nid, body):
            """The operator's invoke on a thread; its answer lands in out."""
            out = []
            t = threading.Thread(target=lambda: out.append(
                request("POST", f"/api/nodes/{nid}/invoke", body)))
            t.start()
            return t, out

        async def registered_listed_invoked():
            ws, nid = await register("kitchen tablet", ["camera.snap", "echo"], {"os": "android"})
            st, got = request("GET", "/api/nodes")
            check(st == 200 and [(n["id"], n["name"], n["commands"], n["meta"]) for n in got["nodes"]]
                  == [(nid, "kitchen tablet", ["camera.snap", "echo"], {"os": "android"})],
                  f"list {got}")
            st, one = request("GET", f"/api/nodes/{nid}")
            check(st == 200 and one["id"] == nid and one["calls"] == 0, f"one {one}")
            # An invoke: the node gets it, answers, the operator reads the answer.
            t, out = invoke_async(nid, {"command": "echo", "params": {"say": "hi", "n": [1, 2]}})
            inv = await recv(ws)
            check(inv["type"] == "invoke" and inv["command"] == "echo" and
                  inv["params"] == {"say": "hi", "n": [1, 2]} and inv["call_id"], f"invoke {inv}")
            await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True,
                                      "result": {"said": "hi"}}))
            t.join(TIMEOUT)
            check(out == [(200, {"ok": True, "result": {"said": "hi"}})], f"answer {out}")
            # A failed call is the node's own words.
            t, out = invoke_async(nid, {"command": "camera.snap"})
            inv = await recv(ws)
            check(inv["params"] == {}, f"no params: {inv}")
            await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": False,
                                      "error": "the lens is covered"}))
            t.join(TIMEOUT)
            check(out == [(200, {"ok": False, "error": "the lens is covered"})], f"failed {out}")
            # Re-register updates the same node.
            await ws.send(json.dumps({"type": "register", "name": "tablet 2", "commands": ["echo"]}))
            reg = await recv(ws)
            check(reg == {"type": "registered", "id": nid}, f"again {reg}")
            st, one = request("GET", f"/api/nodes/{nid}")
            check(one["name"] == "tablet 2" and one["commands"] == ["echo"] and one["meta"] == {},
                  f"updated {one}")
            # Timeout: 504, and the late answer is an unknown call.
            t, out = invoke_async(nid, {"command": "echo", "timeout_ms": 200})
            inv = await recv(ws)
            t.join(TIMEOUT)
            check(out and out[0][0] == 504 and out[0][1]["code"] == "invoke_timeout", f"{out}")
            await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True}))
            late = await recv(ws)
            check(late["type"] == "error" and late["code"] == "UNKNOWN_CALL", f"late {late}")
            # Bad frames: typed errors, the socket stays.
            for text, code in (("{nope", "INVALID_JSON"), ('{"type":"ping"}', "UNKNOWN_MESSAGE_TYPE"),
                               ('{"type":"register","name":"","commands":[]}', "INVALID_FRAME"),
                               ('{"type":"result","call_id":"k1"}', "INVALID_FRAME")):
                await ws.send(text)
                e = await recv(ws)
                check(e["type"] == "error" and e["code"] == code, f"{text}: {e}")
            await ws.send(b"\x00binary")
            e = await recv(ws)
            check(e["code"] == "INVALID_JSON", f"binary {e}")
            # Leaving answers what waits: 503 node_gone.
            t, out = invoke_async(nid, {"command": "echo"})
            await recv(ws)
            await ws.close()
            t.join(TIMEOUT)
            check(out and out[0][0] == 503 and out[0][1]["code"] == "node_gone", f"gone {out}")
            st, got = request("GET", "/api/nodes")
            check(got == {"nodes": []}, f"after leaving {got}")

        async def removed_and_deadline():
            ws, nid = await register("doomed", ["x"])
            st, body = request("DELETE", f"/api/nodes/{nid}")
            check(st == 200 and body == {"removed": True}, f"delete {st} {body}")
            # Removed at once, before its client answers the Close (this
            # loop, blocked in these requests, cannot answer it yet).
            for method, path, body in (("GET", f"/api/nodes/{nid}", None),
                                       ("DELETE", f"/api/nodes/{nid}", None),
                                       ("POST", f"/api/nodes/{nid}/invoke", {"command": "x"})):
                st, got = request(method, path, body)
                check(st == 404 and got["code"] == "not_found", f"{method} after DELETE {st} {got}")
            st, got = request("GET", "/api/nodes")
            check(st == 200 and got == {"nodes": []}, f"listed after DELETE {got}")
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                check(False, "still open after DELETE")
            except websockets.ConnectionClosed as e:
                check(e.code == 1000, f"closed {e.code}")
            st, _ = request("GET", f"/api/nodes/{nid}")
            check(st == 404, f"GET after DELETE {st}")
            # Results before register are refused; silence is closed at 10 s.
            mute = await websockets.connect(url, subprotocols=protos, ping_interval=None)
            await mute.send(json.dumps({"type": "result", "call_id": "k1", "ok": True}))
            e = await recv(mute)
            check(e["code"] == "NOT_REGISTERED", f"before register {e}")
            try:
                await asyncio.wait_for(mute.recv(), TIMEOUT)
                check(False, "an unregistered socket stayed")
            except websockets.ConnectionClosed as e:
                check(e.code == 1008, f"register deadline {e.code}")

        async def no_token():
            try:
                await websockets.connect(url, subprotocols=["kith.nodes.v1"], ping_interval=None)
                check(False, "upgraded without a token")
            except websockets.InvalidStatusCode as e:
                check(e.status_code == 401, f"no token {e.status_code}")

        async def refusals_and_bounds():
            ws, nid = await register("bounded", ["slow"])
            st, _ = request("GET", "/api/nodes", bearer=False)
            check(st == 401, f"list without a token {st}")
            for path, body, want in (
                    ("/api/nodes/nobody/invoke", {"command": "slow"}, (404, "not_found")),
                    (f"/api/nodes/{nid}/invoke", {"command": "fly"}, (400, "unknown_command")),
                    (f"/api/nodes/{nid}/invoke", {"cmd": "slow"}, (400, "invalid_body")),
                    (f"/api/nodes/{nid}/invoke", {"command": "slow", "timeout_ms": 0},
                     (400, "invalid_body")),
                    (f"/api/nodes/{nid}/invoke", b"{not json", (400, "invalid_json"))):
                st, got = request("POST", path, body)
                check((st, got["code"]) == want, f"{path} {body}: {st} {got}")
            for ctype in ("text/plain", "application/jsonx"):
                st, got = request("POST", f"/api/nodes/{nid}/invoke", b"{}", ctype=ctype)
                check(st == 415, f"{ctype} {st}")
            st, got = request("PUT", f"/api/nodes/{nid}", b"{}")
            check(st == 405, f"PUT {st}")
            st, got = request("POST", f"/api/nodes/{nid}", {"command": "slow"})
            check(st == 405, f"POST without /invoke {st}")
            # 16 calls may wait on one node; the 17th is 429.
            calls = [invoke_async(nid, {"command": "slow"}) for _ in range(16)]
            invokes = [await recv(ws) for _ in range(16)]
            st, got = request("POST", f"/api/nodes/{nid}/invoke", {"command": "slow"})
            check(st == 429 and got["code"] == "too_many_calls", f"17th {st} {got}")
            st, one = request("GET", f"/api/nodes/{nid}")
            check(one["calls"] == 16, f"calls {one}")
            for inv in invokes:
                await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True,
                                          "result": inv["call_id"]}))
            for t, out in calls:
                t.join(TIMEOUT)
            answers = sorted(out[0][1]["result"] for _, out in calls)
            check(answers == sorted(i["call_id"] for i in invokes), f"answers {answers}")
            await ws.close()

        async def many_nodes():
            # Three at once; the middle one leaves; the others stay listed
            # and callable.
            socks = [await register(f"n{i}", ["echo"]) for i in range(3)]
            st, got = request("GET", "/api/nodes")
            check(sorted(n["name"] for n in got["nodes"]) == ["n0", "n1", "n2"], f"three {got}")
            await socks[1][0].close()
            for _ in range(100):
                st, got = request("GET", "/api/nodes")
                if len(got["nodes"]) == 2:
                    break
                await asyncio.sleep(0.05)
            check(sorted(n["name"] for n in got["nodes"]) == ["n0", "n2"], f"two {got}")
            for ws, nid in (socks[0], socks[2]):
                t, out = invoke_async(nid, {"command": "echo"})
                inv = await recv(ws)
                await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True,
                                          "result": nid}))
                t.join(TIMEOUT)
                check(out == [(200, {"ok": True, "result": nid})], f"{nid}: {out}")
            await socks[0][0].close()
            await socks[2][0].close()

        def upgrade_refused():
            """An upgrade of /ws/nodes the server refuses: (status, JSON body)."""
            c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT)
            c.request("GET", "/ws/nodes", headers={
                "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
                "Authorization": f"Bearer {token}"})
            resp = c.getresponse()
            data = resp.read()
            c.close()
            return resp.status, json.loads(data) if data else None

        def raw_node(rcvbuf=None):
            """A node on a raw socket (frames by hand): registered as "raw"
            with the command "x"; returns (socket, id)."""
            c = Conn(("127.0.0.1", node.gw_port), rcvbuf=rcvbuf)
            c.send(("GET /ws/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bearer.{token}\r\n"
                    "\r\n").encode())
            c.send(ws_masked(1, b'{"type":"register","name":"raw","commands":["x"]}'))
            head, frames = ws_read_until(c.s, lambda f: len(f) >= 1)
            check(head.startswith(b"HTTP/1.1 101") and len(frames) == 1, f"raw {head} {frames}")
            return c.s, json.loads(frames[0][1])["id"]

        def raw_close_code(s):
            """Reads a raw node's socket (past its register answer) until the
            server's Close; its code, or None when the connection ends first."""
            data = b""
            while True:
                for op, payload in ws_server_frames(data):
                    if op == 8:
                        return struct.unpack(">H", payload[:2])[0]
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk

        async def junk_frames_keep_the_socket():
            ws, nid = await register("junky", ["echo"])
            deep = "[" * 40 + "]" * 40
            for text, code in (
                    ('{"type":"result","call_id":"k999999","ok":true}', "UNKNOWN_CALL"),
                    ("[]", "INVALID_JSON"),
                    ('"register"', "INVALID_JSON"),
                    ('{"type":"result","call_id":"k1","ok":true} {}', "INVALID_JSON"),
                    ('{"type":"register","type":"register"}', "INVALID_JSON"),
                    ('{"type":"result","call_id":"k1","ok":true,"result":' + deep + "}",
                     "INVALID_JSON"),
                    ('{"type":"invoke","call_id":"k1"}', "UNKNOWN_MESSAGE_TYPE"),
                    ('{"type":null}', "UNKNOWN_MESSAGE_TYPE"),
                    ('{"type":"register","name":"x","commands":["a"],"meta":"m"}', "INVALID_FRAME"),
                    ('{"type":"register","name":"x","commands":' + json.dumps(
                        [f"c{i}" for i in range(65)]) + "}", "INVALID_FRAME"),
                    ('{"type":"register","name":"x","commands":["' + "c" * 65 + '"]}',
                     "INVALID_FRAME"),
                    ('{"type":"register","name":"x","commands":[],"meta":{"k":"' + "m" * 16400 +
                     '"}}', "INVALID_FRAME"),
                    ('{"type":"result","call_id":"' + "k" * 65 + '","ok":true}', "INVALID_FRAME"),
                    ('{"type":"result","call_id":"k1","ok":false,"error":"' + "e" * 1025 + '"}',
                     "INVALID_FRAME")):
                await ws.send(text)
                e = await recv(ws)
                check(e["type"] == "error" and e["code"] == code and e["message"],
                      f"{text[:60]}: {e}")
            # None of it changed the node, which still answers calls.
            st, one = request("GET", f"/api/nodes/{nid}")
            check(st == 200 and (one["name"], one["commands"], one["meta"]) ==
                  ("junky", ["echo"], {}), f"after junk {one}")
            t, out = invoke_async(nid, {"command": "echo", "timeout_ms": 300000})
            inv = await recv(ws)
            await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True,
                                      "result": None}))
            t.join(TIMEOUT)
            check(out == [(200, {"ok": True, "result": None})], f"after junk {out}")
            # A message over 1 MiB is past the socket's bound: closed 1009,
            # and the node leaves the registry.
            await ws.send("x" * (1024 * 1024 + 1))
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                check(False, "a message over 1 MiB was taken")
            except websockets.ConnectionClosed as e:
                check(e.rcvd is not None and e.rcvd.code == 1009, f"over 1 MiB: {e}")
            for _ in range(600):
                st, one = request("GET", f"/api/nodes/{nid}")
                if st == 404:
                    break
                await asyncio.sleep(0.05)
            check(st == 404 and one["code"] == "not_found", f"after 1009 {st} {one}")
            # A refused register registers nothing: a result is still early.
            ws = await websockets.connect(url, subprotocols=protos, ping_interval=None)
            await ws.send('{"type":"register","name":"","commands":[]}')
            check((await recv(ws))["code"] == "INVALID_FRAME", "a bad first register")
            await ws.send('{"type":"result","call_id":"k1","ok":true}')
            check((await recv(ws))["code"] == "NOT_REGISTERED", "a result after a bad register")
            st, got = request("GET", "/api/nodes")
            check(got == {"nodes": []}, f"a refused register listed {got}")
            await ws.close()
            # Text that is not UTF-8 breaks the socket's own rules: 1007.
            s, nid = raw_node()
            s.sendall(ws_masked(1, b'{"type":"\xff"}'))
            code = raw_close_code(s)
            check(code == 1007, f"not UTF-8: closed {code}")
            s.close()

        async def vanished_mid_call():
            """A node whose connection drops (no Close) with a call waiting:
            the call is 503 node_gone, the node leaves, others are served."""
            ws, nid = await register("vanishing", ["slow"])
            other, oid = await register("staying", ["echo"])
            t, out = invoke_async(nid, {"command": "slow"})
            await recv(ws)
            ws.transport.abort()
            await ws.wait_closed()  # the socket is shut once this loop runs
            t.join(TIMEOUT)
            check(out and out[0][0] == 503 and out[0][1]["code"] == "node_gone", f"vanished {out}")
            st, got = request("GET", "/api/nodes")
            check(st == 200 and [n["id"] for n in got["nodes"]] == [oid], f"after {got}")
            t, out = invoke_async(oid, {"command": "echo"})
            inv = await recv(other)
            await other.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True}))
            t.join(TIMEOUT)
            check(out == [(200, {"ok": True, "result": None})], f"the other node {out}")
            await other.close()

        def node_that_never_reads():
            """A node that stops reading while 1 MiB invokes queue up is cut
            at the socket's unsent bound (DESIGN §10): the invoke that meets
            the bound, and every other waiting, is 503 node_gone (one made
            after the node left is 404)."""
            s, nid = raw_node(rcvbuf=4096)
            big = {"command": "x", "params": "p" * (1000 * 1000), "timeout_ms": 300000}
            calls = [invoke_async(nid, big) for _ in range(16)]
            deadline = time.monotonic() + 120
            while not any(out for _, out in calls) and time.monotonic() < deadline:
                time.sleep(0.02)
            s.close()  # the client goes too: nothing waits for it
            for t, _ in calls:
                t.join(TIMEOUT)
            answers = [(out[0][0], out[0][1]["code"]) if out else None for _, out in calls]
            check(all(a in ((503, "node_gone"), (404, "not_found")) for a in answers) and
                  (503, "node_gone") in answers, f"answers {answers}")
            st, got = request("GET", "/api/nodes")
            check(st == 200 and got == {"nodes": []}, f"after the cut {got}")

        async def nodes_bounded():
            """256 node sockets at once; the next upgrade is 503 too_many_nodes
            until one leaves."""
            socks = []
            try:
                for i in range(256):
                    socks.append(await register(f"b{i}", ["x"]))
                st, got = upgrade_refused()
                check((st, got["code"]) == (503, "too_many_nodes"), f"257th {st} {got}")
                st, got = request("GET", "/api/nodes")
                check(len(got["nodes"]) == 256, f"listed {len(got['nodes'])}")
                gone = socks.pop(0)[0]
                gone.transport.abort()
                await gone.wait_closed()
                for _ in range(600):
                    try:
                        socks.append(await register("late", ["x"]))
                        break
                    except websockets.InvalidStatusCode as e:
                        check(e.status_code == 503, f"while one leaves {e.status_code}")
                        await asyncio.sleep(0.05)
                check(socks[-1][1] != socks[0][1], "no room once one left")
            finally:
                await asyncio.gather(*(ws.close() for ws, _ in socks))

        def raw_invoke(nid, body):
            """An invoke on a raw socket, sent and not read: the socket."""
            data = json.dumps(body).encode()
            c = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
            c.sendall((f"POST /api/nodes/{nid}/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
            return c

        def read_answer(c):
            """The status and JSON body of a raw socket's one answer."""
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                check(chunk, f"closed before an answer: {data}")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(body) < n:
                body += c.recv(65536)
            return int(head.split()[1]), json.loads(body[:n])

        async def calls_bounded_over_all_nodes():
            """1,024 calls may wait over all nodes (64 nodes, 16 each); the
            next, on a node with room, is 429 too_many_calls; when the nodes
            leave, every waiting call is 503 node_gone."""
            socks = [await register(f"c{i}", ["wait"]) for i in range(65)]
            waiting = []
            try:
                for ws, nid in socks[:64]:
                    waiting += [raw_invoke(nid, {"command": "wait", "timeout_ms": 300000})
                                for _ in range(16)]
                total = 0
                for _ in range(1200):
                    st, got = request("GET", "/api/nodes")
                    total = sum(n["calls"] for n in got["nodes"])
                    if total == 1024:
                        break
                    await asyncio.sleep(0.05)
                check(total == 1024, f"waiting {total}")
                st, got = request("POST", f"/api/nodes/{socks[64][1]}/invoke", {"command": "wait"})
                check((st, got["code"]) == (429, "too_many_calls"), f"the 1025th {st} {got}")
            finally:
                await asyncio.gather(*(ws.close() for ws, _ in socks))
            answers = [read_answer(c) for c in waiting]
            for c in waiting:
                c.close()
            check(all((st, got["code"]) == (503, "node_gone") for st, got in answers),
                  f"answers {set((st, got['code']) for st, got in answers)}")

        async def operator_gone_mid_call():
            """The operator's connection closes while its call waits: the
            node's later result (and another's timeout) end calls nobody
            hears; the daemon serves on."""
            ws, nid = await register("orphaned", ["x"])
            c = raw_invoke(nid, {"command": "x"})
            d = raw_invoke(nid, {"command": "x", "timeout_ms": 1})
            inv = await recv(ws)
            await recv(ws)
            c.close()
            d.close()
            for _ in range(600):  # the timed-out one ends by itself
                st, one = request("GET", f"/api/nodes/{nid}")
                if one["calls"] == 1:
                    break
                await asyncio.sleep(0.05)
            check(one["calls"] == 1, f"after the timeout {one}")
            await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True}))
            for _ in range(600):
                st, one = request("GET", f"/api/nodes/{nid}")
                if one["calls"] == 0:
                    break
                await asyncio.sleep(0.05)
            check(st == 200 and one["calls"] == 0, f"after the result {one}")
            t, out = invoke_async(nid, {"command": "x"})
            inv = await recv(ws)
            await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"], "ok": True,
                                      "result": 1}))
            t.join(TIMEOUT)
            check(out == [(200, {"ok": True, "result": 1})], f"served on {out}")
            await ws.close()

        def rest_refusals():
            """Ids out of charset or length, and every bad invoke body: the
            exact status and code, and nothing reaches the node."""
            async def go():
                ws, nid = await register("strict", ["slow"])
                for method, path in (("GET", "/api/nodes/" + "n" * 300),
                                     ("GET", "/api/nodes/bad%20id"),
                                     ("GET", "/api/nodes/"),
                                     ("DELETE", "/api/nodes/" + nid.upper()),
                                     ("DELETE", f"/api/nodes/{nid}x")):
                    st, got = request(method, path)
                    check((st, got["code"]) == (404, "not_found"), f"{method} {path}: {st} {got}")
                c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT)
                c.request("DELETE", f"/api/nodes/{nid}/invoke",
                          headers={"Authorization": f"Bearer {token}"})
                resp = c.getresponse()
                got = json.loads(resp.read())
                c.close()
                check((resp.status, got["code"], resp.getheader("Allow")) ==
                      (405, "method_not_allowed", "POST"), f"DELETE invoke {resp.status} {got}")
                st, got = request("POST", "/api/nodes", {"command": "slow"})
                check((st, got["code"]) == (405, "method_not_allowed"), f"POST list {st} {got}")
                for body, want in (
                        ({"command": 5}, "invalid_body"),
                        ({"command": None}, "invalid_body"),
                        ({"params": {}}, "invalid_body"),
                        (["slow"], "invalid_body"),
                        ({"command": "slow", "timeout_ms": "100"}, "invalid_body"),
                        ({"command": "slow", "timeout_ms": 1.5}, "invalid_body"),
                        ({"command": "slow", "timeout_ms": -1}, "invalid_body"),
                        ({"command": "slow", "timeout_ms": 300001}, "invalid_body"),
                        ({"command": "slow", "timeout_ms": 2 ** 70}, "invalid_body"),
                        ({"command": "SLOW"}, "unknown_command"),
                        (b'{"command":"slow","command":"slow"}', "invalid_json"),
                        (b'{"command":"slow"} {}', "invalid_json"),
                        (b'{"command":"slow","params":' + b"[" * 40 + b"]" * 40 + b"}",
                         "invalid_json"),
                        (b'{"command":"sl\u0000ow"}', "invalid_json"),
                        (b'{"command":"\xff"}', "invalid_json"),
                        (b"", "invalid_json")):
                    st, got = request("POST", f"/api/nodes/{nid}/invoke", body)
                    check((st, got["code"]) == (400, want), f"{body!r}: {st} {got}")
                st, got = request("POST", f"/api/nodes/{nid}/invoke",
                                  b'{"command":"slow","params":"' + b"p" * (1024 * 1024) + b'"}')
                check((st, got["code"]) == (413, "body_too_large"), f"over 1 MiB {st} {got}")
                st, one = request("GET", f"/api/nodes/{nid}")
                check(one["calls"] == 0, f"a refused invoke waits {one}")
                # Nothing reached the node: the next frame it gets is this.
                t, out = invoke_async(nid, {"command": "slow", "params": [1]})
                inv = await recv(ws)
                check(inv["params"] == [1], f"the node got {inv}")
                await ws.send(json.dumps({"type": "result", "call_id": inv["call_id"],
                                          "ok": True}))
                t.join(TIMEOUT)
                await ws.close()
            run(go())

        def run(coro):
            return asyncio.run(asyncio.wait_for(coro, 180))

        r.run(lambda: run(registered_listed_invoked()), name="registered_listed_invoked")
        r.run(lambda: run(removed_and_deadline()), name="removed_and_deadline")
        r.run(lambda: run(no_token()), name="no_token")
        r.run(lambda: run(refusals_and_bounds()), name="refusals_and_bounds")
        r.run(lambda: run(many_nodes()), name="many_nodes")
        r.run(lambda: run(junk_frames_keep_the_socket()), name="junk_frames_keep_the_socket")
        r.run(lambda: run(vanished_mid_call()), name="vanished_mid_call")
        r.run(node_that_never_reads)
        r.run(lambda: run(nodes_bounded()), name="nodes_bounded")
        r.run(rest_refusals)
        r.run(lambda: run(calls_bounded_over_all_nodes()), name="calls_bounded_over_all_nodes")
        r.run(lambda: run(operator_gone_mid_call()), name="operator_gone_mid_call")

        # The daemon stops with a node connected and a call waiting on it:
        # the node's socket is closed 1001 (going away), the waiting request
        # ends (answered, or its connection closed), and the daemon exits 0.
        async def held():
            ws, nid = await register("held", ["wait"])
            out = []

            def call():
                try:
                    out.append(request("POST", f"/api/nodes/{nid}/invoke",
                                       {"command": "wait", "timeout_ms": 300000}))
                except (ConnectionError, http.client.HTTPException) as e:
                    out.append(type(e).__name__)
            t = threading.Thread(target=call)
            t.start()
            await recv(ws)
            return ws, t, out

        async def closed_going_away(ws):
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                return None
            except websockets.ConnectionClosed as e:
                return e.code
        loop = asyncio.new_event_loop()
        ws, t, out = loop.run_until_complete(held())
        r.stopped(node)
        t.join(TIMEOUT)
        code = loop.run_until_complete(closed_going_away(ws))
        loop.close()
        r.run(lambda: check(not t.is_alive() and out and code == 1001,
                            f"at the stop: call {out}, node socket {code}"),
              name="stop_with_a_call_waiting")
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
