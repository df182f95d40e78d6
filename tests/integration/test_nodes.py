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
waiting on one node (429 past 16)."""

import asyncio
import http.client
import json
import os
import sys
import threading

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, api, check, pair_token  # noqa: E402

TIMEOUT = 60


def main():
    node = Daemon("nodes").start()
    r = Results()
    try:
        token = pair_token(node)
        url = f"ws://127.0.0.1:{node.gw_port}/ws/nodes"
        protos = ["kith.nodes.v1", f"bearer.{token}"]

        def request(method, path, body=None, bearer=True, ctype="application/json"):
            """(status, JSON body): a dict body is sent as JSON."""
            if isinstance(body, dict):
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

        def run(coro):
            return asyncio.run(asyncio.wait_for(coro, 180))

        r.run(lambda: run(registered_listed_invoked()), name="registered_listed_invoked")
        r.run(lambda: run(removed_and_deadline()), name="removed_and_deadline")
        r.run(lambda: run(no_token()), name="no_token")
        r.run(lambda: run(refusals_and_bounds()), name="refusals_and_bounds")
        r.run(lambda: run(many_nodes()), name="many_nodes")

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
