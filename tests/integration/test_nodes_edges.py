"""tests/integration/test_nodes_edges.py — the node registry's edges (WIRE
§27, §28) on the real `kith daemon`, as an outside client meets them: a
node whose token is revoked leaves the registry with the revocation's
answer, before its client answers the server's Close (1008 "token
revoked"), and the calls waiting on it are 503 node_gone within the
revocation, with no other request to notice it; every path under
/api/nodes/ that is not {id} or {id}/invoke, an empty, over-long or
percent-encoded id is a typed 404, a method a path does not take is 405
with the path's own Allow, and a method the server does not know is 501.
Nodes here are raw sockets (frames by hand) so the test decides when, and
whether, a node reads or answers the server's Close."""

import http.client
import json
import os
import socket
import struct
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, api, check, pair_token, ws_masked,  # noqa: E402
                  ws_read_until, ws_server_frames)

TIMEOUT = 60


def main():
    node = Daemon("nodes-edges").start()
    r = Results()
    try:
        op = pair_token(node)

        def request(method, path, body=None, token=op, headers=None):
            """(status, JSON body or None, Allow header) on a fresh connection."""
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT)
            h = {"Authorization": f"Bearer {token}"} if token else {}
            if body is not None:
                h["Content-Type"] = "application/json"
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            resp = c.getresponse()
            data = resp.read()
            c.close()
            return resp.status, json.loads(data) if data else None, resp.getheader("Allow")

        def mint_node_token(name):
            st, _, data = api(node, "POST", "/api/tokens",
                              json.dumps({"scope": "node", "name": name}).encode(), op,
                              "application/json")
            check(st == 201, f"mint {st} {data}")
            return json.loads(data)

        def raw_node(token, commands=("x",)):
            """A node on a raw socket, registered; (socket, id). It reads
            nothing more unless the test reads it."""
            s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
            s.sendall(("GET /ws/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bearer.{token}\r\n"
                       "\r\n").encode())
            s.sendall(ws_masked(1, json.dumps({"type": "register", "name": "edge",
                                               "commands": list(commands)}).encode()))
            head, frames = ws_read_until(s, lambda f: len(f) >= 1)
            check(head.startswith(b"HTTP/1.1 101") and len(frames) == 1, f"raw {head} {frames}")
            return s, json.loads(frames[0][1])["id"]

        def next_frame(s, opcode):
            """Reads a raw node (past its register answer) until a frame with
            `opcode`: its payload, or None when the connection ends first."""
            data = b""
            while True:
                for op_, payload in ws_server_frames(data):
                    if op_ == opcode:
                        return payload
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk

        def close_of(s):
            """(code, reason) of the server's Close on a raw node."""
            payload = next_frame(s, 8)
            return payload and (struct.unpack(">H", payload[:2])[0], payload[2:].decode())

        def invoke_async(nid, body):
            out = []
            t = threading.Thread(target=lambda: out.append(
                request("POST", f"/api/nodes/{nid}/invoke", body)))
            t.start()
            return t, out

        def revoked_node_leaves_at_once():
            minted = mint_node_token("revoked edge")
            s, nid = raw_node(minted["token"])
            other, oid = raw_node(op)  # connected with the operator's token: stays
            t, out = invoke_async(nid, {"command": "x", "timeout_ms": 300000})
            deadline = TIMEOUT
            while deadline > 0:  # the call waits on the node
                st, one, _ = request("GET", f"/api/nodes/{nid}")
                if one["calls"] == 1:
                    break
                threading.Event().wait(0.05)
                deadline -= 0.05
            check(one["calls"] == 1 and one["token_id"] == minted["id"], f"before {one}")
            st, got, _ = request("DELETE", f"/api/tokens/{minted['id']}")
            check(st == 200 and got["closed"] == 1, f"revoke {st} {got}")
            # The node has not answered the Close (it reads nothing): it is
            # out of the registry all the same, and its call has its answer.
            st, got, _ = request("GET", "/api/nodes")
            check(st == 200 and [n["id"] for n in got["nodes"]] == [oid], f"listed {got}")
            for method, path, body in (("GET", f"/api/nodes/{nid}", None),
                                       ("POST", f"/api/nodes/{nid}/invoke", {"command": "x"}),
                                       ("DELETE", f"/api/nodes/{nid}", None)):
                st, got, _ = request(method, path, body)
                check((st, got["code"]) == (404, "not_found"), f"{method} {path}: {st} {got}")
            t.join(TIMEOUT)
            check(out and (out[0][0], out[0][1]["code"]) == (503, "node_gone"), f"call {out}")
            check(close_of(s) == (1008, "token revoked"), "the revoked node's close")
            s.close()
            # The other node is served on.
            t, out = invoke_async(oid, {"command": "x"})
            inv = json.loads(next_frame(other, 1))
            other.sendall(ws_masked(1, json.dumps({"type": "result", "call_id": inv["call_id"],
                                                   "ok": True, "result": 7}).encode()))
            t.join(TIMEOUT)
            check(out and out[0][:2] == (200, {"ok": True, "result": 7}), f"other {out}")
            other.close()

        def revoked_node_calls_end_in_the_revocation():
            # No REST read of the registry between the revocation and the
            # call's answer: the revocation itself ends the call, while the
            # node's socket still waits for the answer to its Close (the
            # server gives a Close it sent GATEWAY_WS_CLOSE_WAIT_MS, 5 s,
            # before it resets the connection and forgets the socket).
            minted = mint_node_token("revoked call")
            s, nid = raw_node(minted["token"])
            t, out = invoke_async(nid, {"command": "x", "timeout_ms": 300000})
            inv = json.loads(next_frame(s, 1))  # the call waits on the node
            check(inv["type"] == "invoke", f"invoke {inv}")
            st, got, _ = request("DELETE", f"/api/tokens/{minted['id']}")
            check(st == 200 and got["closed"] == 1, f"revoke {st} {got}")
            t.join(TIMEOUT)
            check(out and (out[0][0], out[0][1]["code"]) == (503, "node_gone"), f"call {out}")
            check(close_of(s) == (1008, "token revoked"), "the revoked node's close")
            s.setblocking(False)
            try:
                waiting = s.recv(1) != b""
            except BlockingIOError:
                waiting = True  # nothing more, no FIN, no reset: the server waits
            except ConnectionResetError:
                waiting = False
            check(waiting, "the call was answered only once the server gave up on the node")
            s.setblocking(True)
            s.sendall(ws_masked(8, struct.pack(">H", 1008)))  # the Close answered: it ends
            check(s.recv(1) == b"", "the connection ends after the close handshake")
            s.close()

        def paths_and_methods():
            s, nid = raw_node(op)
            for method, path in (("POST", "/api/nodes//invoke"),
                                 ("GET", "/api/nodes/"),
                                 ("DELETE", "/api/nodes/"),
                                 ("POST", f"/api/nodes/{nid}/invoke/"),
                                 ("POST", f"/api/nodes/{nid}/other"),
                                 ("GET", f"/api/nodes/{nid}/other"),
                                 ("GET", f"/api/nodes/{nid}/invoke/x"),
                                 ("POST", f"/api/nodes/{nid}//invoke"),
                                 ("POST", "/api/nodes/" + "n" * 4000 + "/invoke"),
                                 ("GET", "/api/nodes/%" + nid.encode().hex()[:2]),
                                 ("POST", "/api/nodes/" + nid.replace("-", "%2D") + "/invoke")):
                st, got, _ = request(method, path, {"command": "x"} if method == "POST" else None)
                check((st, got and got["code"]) == (404, "not_found"),
                      f"{method} {path[:80]}: {st} {got}")
            for method, path, allow in (("PUT", f"/api/nodes/{nid}", "GET, HEAD, DELETE"),
                                        ("POST", f"/api/nodes/{nid}", "GET, HEAD, DELETE"),
                                        ("PATCH", f"/api/nodes/{nid}", "GET, HEAD, DELETE"),
                                        ("OPTIONS", f"/api/nodes/{nid}", "GET, HEAD, DELETE"),
                                        ("GET", f"/api/nodes/{nid}/invoke", "POST"),
                                        ("DELETE", f"/api/nodes/{nid}/invoke", "POST"),
                                        ("PUT", "/api/nodes//invoke", "POST")):
                st, got, al = request(method, path, b"{}" if method != "GET" else None)
                check((st, got["code"], al) == (405, "method_not_allowed", allow),
                      f"{method} {path}: {st} {got} {al}")
            # A method the server does not know: 501, as on every other path.
            for path in (f"/api/nodes/{nid}", f"/api/nodes/{nid}/invoke", "/api/peers/alice",
                         "/api/tokens/0123456789abcdef", "/admin/tokens/0123456789abcdef"):
                st, got, _ = request("BREW", path)
                check((st, got["code"]) == (501, "method_not_implemented"),
                      f"BREW {path}: {st} {got}")
            # Without a token, the paths are 401 before anything else.
            st, got, _ = request("POST", "/api/nodes//invoke", {"command": "x"}, token=None)
            check(st == 401, f"no token {st} {got}")
            st, one, _ = request("GET", f"/api/nodes/{nid}")
            check(st == 200 and one["calls"] == 0, f"the node after {st} {one}")
            s.close()

        r.run(revoked_node_leaves_at_once)
        r.run(revoked_node_calls_end_in_the_revocation)
        r.run(paths_and_methods)
        r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
