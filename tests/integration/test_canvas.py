"""tests/integration/test_canvas.py — live canvases (DESIGN §5, WIRE §26) on
the real `kith daemon`: Python `websockets` watchers on /ws/canvas/{id} and
Python's http.client posting, reading, listing and clearing. A watcher that
comes first is told the canvas is empty, then gets every version as it is
posted; one that comes later starts from the document in place; a watcher
that speaks is answered READ_ONLY and keeps watching; a clear reaches the
watchers. Refusals: no token (401, before any upgrade), a bad id, no or a
bad Content-Type (415), text that is not UTF-8, a document over the body
limit (413), unknown canvases (404), and the bound on canvases (507 at
256, room again once one is cleared). A document is only ever handed out
inside JSON, never served as itself. Sockets: a bad id is 400 before any
upgrade; a canvas only watched counts among the 256 (a new socket past them
is 503 canvas_full) but is not listed; a watcher that vanishes without a
Close is forgotten; 1,024 sockets at once (the next is 503
too_many_watchers); and 64 MiB of documents together (507 canvas_full)."""

import asyncio
import http.client
import json
import os
import sys

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, api, check, pair_token  # noqa: E402

TIMEOUT = 60


def main():
    node = Daemon("canvas").start()
    r = Results()
    try:
        token = pair_token(node)

        def request(method, path, body=None, ctype=None, bearer=True):
            return api(node, method, path, body, token if bearer else None, ctype)

        def ws_url(cid):
            return f"ws://127.0.0.1:{node.gw_port}/ws/canvas/{cid}"

        async def recv(ws):
            return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))

        async def watching():
            protos = ["kith.canvas.v1", f"bearer.{token}"]
            a = await websockets.connect(ws_url("demo"), subprotocols=protos, ping_interval=None)
            check(a.subprotocol == "kith.canvas.v1", f"subprotocol {a.subprotocol}")
            check(await recv(a) == {"type": "empty", "id": "demo"}, "the first watcher")
            st, _, body = request("POST", "/api/canvas/demo", b"<h1>hi</h1>", "text/html")
            check(st == 200 and json.loads(body) == {"id": "demo", "version": 1, "watchers": 1},
                  f"post {st} {body}")
            f = await recv(a)
            check(f["type"] == "frame" and f["version"] == 1 and f["content_type"] == "text/html"
                  and f["content"] == "<h1>hi</h1>" and f["updated_ms"] > 0, f"frame {f}")
            b = await websockets.connect(ws_url("demo"), subprotocols=protos, ping_interval=None)
            f = await recv(b)
            check(f["type"] == "frame" and f["version"] == 1, f"a later watcher starts at {f}")
            doc = '{"rows": [1, 2, "ü"]}'
            st, _, body = request("POST", "/api/canvas/demo", doc.encode(),
                                  "application/json; charset=utf-8")
            check(st == 200 and json.loads(body)["watchers"] == 2, f"post 2 {st} {body}")
            for w in (a, b):
                f = await recv(w)
                check(f["version"] == 2 and f["content"] == doc and
                      f["content_type"] == "application/json; charset=utf-8", f"v2 {f}")
            await a.send("may I draw?")
            f = await recv(a)
            check(f["type"] == "error" and f["code"] == "READ_ONLY", f"a watcher spoke: {f}")
            st, ctype, body = request("GET", "/api/canvas/demo")
            got = json.loads(body)
            check(st == 200 and ctype == "application/json" and got["content"] == doc and
                  got["version"] == 2 and "type" not in got, f"GET {st} {ctype} {got}")
            st, _, body = request("GET", "/api/canvas")
            listed = json.loads(body)["canvases"]
            check(st == 200 and len(listed) == 1 and listed[0]["id"] == "demo" and
                  listed[0]["watchers"] == 2 and listed[0]["bytes"] == len(doc.encode()),
                  f"list {listed}")
            st, _, body = request("DELETE", "/api/canvas/demo")
            check(st == 200 and json.loads(body) == {"cleared": True}, f"delete {st} {body}")
            for w in (a, b):
                f = await recv(w)
                check(f == {"type": "cleared", "id": "demo"}, f"cleared {f}")
            st, _, _ = request("GET", "/api/canvas/demo")
            check(st == 404, f"GET after the clear {st}")
            # Still watching: the next post reaches them.
            st, _, _ = request("POST", "/api/canvas/demo", b"again", "text/plain")
            f = await recv(b)
            check(f["version"] == 1 and f["content"] == "again", f"after the clear {f}")
            await a.close()
            await b.close()
            request("DELETE", "/api/canvas/demo")

        async def no_token_no_upgrade():
            try:
                await websockets.connect(ws_url("demo"), subprotocols=["kith.canvas.v1"],
                                         ping_interval=None)
                check(False, "upgraded without a token")
            except websockets.InvalidStatusCode as e:
                check(e.status_code == 401, f"no token: {e.status_code}")

        def refusals():
            st, _, _ = request("GET", "/api/canvas", bearer=False)
            check(st == 401, f"list without a token {st}")
            st, _, _ = request("POST", "/api/canvas/x", b"hi", "text/plain", bearer=False)
            check(st == 401, f"post without a token {st}")
            for path, code in (("/api/canvas/bad%20id", "invalid_canvas_id"),
                               ("/api/canvas/" + "x" * 129, "invalid_canvas_id"),
                               ("/api/canvas/", "invalid_canvas_id")):
                st, _, body = request("POST", path, b"hi", "text/plain")
                check(st == 400 and json.loads(body)["code"] == code, f"{path}: {st} {body}")
            st, _, body = request("POST", "/api/canvas/x", b"hi")
            check(st == 415, f"no Content-Type {st} {body}")
            # Media types that are not `type/subtype` of token characters,
            # with parameters of printable ASCII, at most 128 octets: 415,
            # and nothing is posted.
            for ctype in ("nonsense", "text", "/html", "text/", "text/ht ml", "a/b/c",
                          ";x", "text/" + "h" * 124,
                          b"text/plain; charset=\xff", "t\u00e9xt/plain".encode()):
                st, _, body = request("POST", "/api/canvas/x", b"hi", ctype)
                check(st == 415 and json.loads(body)["code"] == "unsupported_media_type",
                      f"Content-Type {ctype!r}: {st} {body}")
            st, _, body = request("GET", "/api/canvas/x")
            check(st == 404, f"a refused post was kept: {st} {body}")
            st, _, body = request("POST", "/api/canvas/x", b"hi", "text/" + "h" * 123)
            check(st == 200, f"a 128-octet Content-Type {st} {body}")
            request("DELETE", "/api/canvas/x")
            st, _, body = request("POST", "/api/canvas/x", b"\xff\xfe", "text/plain")
            check(st == 400 and json.loads(body)["code"] == "invalid_body", f"not UTF-8 {st}")
            st, _, body = request("POST", "/api/canvas/x", b"a\x00b", "text/plain")
            check(st == 400 and json.loads(body)["code"] == "invalid_body", f"a NUL {st} {body}")
            st, _, body = request("POST", "/api/canvas/x", b"x" * (1024 * 1024 + 1), "text/plain")
            check(st == 413 and json.loads(body)["code"] == "body_too_large",
                  f"over the body limit {st} {body}")
            for method in ("GET", "DELETE"):
                st, _, body = request(method, "/api/canvas/nowhere")
                check(st == 404 and json.loads(body)["code"] == "not_found", f"{method} {st}")
                st, _, body = request(method, "/api/canvas/" + "y" * 129)
                check(st == 400 and json.loads(body)["code"] == "invalid_canvas_id",
                      f"{method} a long id {st} {body}")
            st, _, body = request("PUT", "/api/canvas/x", b"hi", "text/plain")
            check(st == 405 and json.loads(body)["code"] == "method_not_allowed", f"PUT {st} {body}")
            st, _, body = request("GET", "/api/canvas")
            check(st == 200 and json.loads(body) == {"canvases": []}, f"after refusals {body}")

        def upgrade(cid, bearer=True):
            """A WebSocket upgrade the server refuses: (status, JSON body)."""
            c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT)
            headers = {"Upgrade": "websocket", "Connection": "Upgrade",
                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                       "Sec-WebSocket-Version": "13"}
            if bearer:
                headers["Authorization"] = f"Bearer {token}"
            c.request("GET", f"/ws/canvas/{cid}", headers=headers)
            resp = c.getresponse()
            data = resp.read()
            c.close()
            return resp.status, json.loads(data) if data else None

        async def socket_refusals_and_bounds():
            protos = [f"bearer.{token}"]
            for cid, want in (("bad%20id", (400, "invalid_canvas_id")),
                              ("z" * 129, (400, "invalid_canvas_id")),
                              ("", (400, "invalid_canvas_id"))):
                st, got = upgrade(cid)
                check((st, got and got["code"]) == want, f"upgrade {cid!r}: {st} {got}")
            st, got = upgrade("fine", bearer=False)
            check(st == 401, f"upgrade without a token {st} {got}")
            # 255 canvases posted and one only watched make 256: the watched
            # one is not listed, and a new canvas is refused either way.
            for i in range(255):
                st, _, body = request("POST", f"/api/canvas/f{i}", b"x", "text/plain")
                check(st == 200, f"canvas {i}: {st} {body}")
            w = await websockets.connect(ws_url("watched"), subprotocols=protos, ping_interval=None)
            check(await recv(w) == {"type": "empty", "id": "watched"}, "the watched one")
            st, _, body = request("GET", "/api/canvas")
            ids = {c["id"] for c in json.loads(body)["canvases"]}
            check(st == 200 and len(ids) == 255 and "watched" not in ids, f"listed {len(ids)}")
            st, got = upgrade("one-more")
            check((st, got["code"]) == (503, "canvas_full"), f"a socket past 256 {st} {got}")
            st, _, body = request("POST", "/api/canvas/one-more", b"x", "text/plain")
            check(st == 507 and json.loads(body)["code"] == "canvas_full", f"post {st} {body}")
            # The watched canvas is one of the 256: it can be posted to.
            st, _, body = request("POST", "/api/canvas/watched", b"now", "text/plain")
            check(st == 200 and json.loads(body)["watchers"] == 1, f"post watched {st} {body}")
            check((await recv(w))["content"] == "now", "the watcher got the post")
            # A watcher that vanishes (no Close) is forgotten; the daemon
            # serves the others.
            w.transport.abort()
            request("DELETE", "/api/canvas/watched")
            for _ in range(600):
                st, _, body = request("POST", "/api/canvas/one-more", b"x", "text/plain")
                if st == 200:
                    break
                await asyncio.sleep(0.05)
            check(st == 200, f"room once the watcher left {st} {body}")
            for i in range(255):
                request("DELETE", f"/api/canvas/f{i}")
            request("DELETE", "/api/canvas/one-more")
            st, _, body = request("GET", "/api/canvas")
            check(json.loads(body) == {"canvases": []}, f"all cleared {body}")

        async def watchers_bounded():
            """1,024 canvas sockets at once; the next is 503 too_many_watchers
            and a post still reaches all of them."""
            protos = [f"bearer.{token}"]
            socks = []
            try:
                for _ in range(1024):
                    socks.append(await websockets.connect(ws_url("crowd"), subprotocols=protos,
                                                          ping_interval=None))
                st, got = upgrade("crowd")
                check((st, got["code"]) == (503, "too_many_watchers"), f"1025th {st} {got}")
                st, got = upgrade("elsewhere")
                check((st, got["code"]) == (503, "too_many_watchers"), f"elsewhere {st} {got}")
                st, _, body = request("POST", "/api/canvas/crowd", b"all", "text/plain")
                check(st == 200 and json.loads(body)["watchers"] == 1024, f"post {st} {body}")
                firsts = await asyncio.gather(*(recv(s) for s in socks))
                check(all(f == {"type": "empty", "id": "crowd"} for f in firsts), "empty first")
                frames = await asyncio.gather(*(recv(s) for s in socks))
                check(all(f["content"] == "all" for f in frames), "every watcher got the post")
            finally:
                await asyncio.gather(*(s.close() for s in socks))
            request("DELETE", "/api/canvas/crowd")

        def bytes_bounded():
            """64 MiB of documents together: 64 canvases of 1 MiB fill it; one
            more octet is 507 canvas_full, a same-size replacement is not."""
            mib = b"m" * (1024 * 1024)
            for i in range(64):
                st, _, body = request("POST", f"/api/canvas/big{i}", mib, "text/plain")
                check(st == 200, f"1 MiB #{i}: {st} {body}")
            st, _, body = request("POST", "/api/canvas/small", b"x", "text/plain")
            check(st == 507 and json.loads(body)["code"] == "canvas_full", f"past 64 MiB {st} {body}")
            st, _, body = request("POST", "/api/canvas/big0", mib[:-1] + b"n", "text/plain")
            check(st == 200 and json.loads(body)["version"] == 2, f"replaced {st} {body}")
            st, _, body = request("GET", "/api/canvas/small")
            check(st == 404, f"the refused canvas exists {st}")
            request("DELETE", "/api/canvas/big1")
            st, _, body = request("POST", "/api/canvas/small", b"x", "text/plain")
            check(st == 200, f"room again {st} {body}")
            for i in range(64):
                request("DELETE", f"/api/canvas/big{i}")
            request("DELETE", "/api/canvas/small")

        def bounded():
            for i in range(256):
                st, _, body = request("POST", f"/api/canvas/c{i}", b"x", "text/plain")
                check(st == 200, f"canvas {i}: {st} {body}")
            st, _, body = request("POST", "/api/canvas/one-more", b"x", "text/plain")
            check(st == 507 and json.loads(body)["code"] == "canvas_full", f"257th {st} {body}")
            st, _, _ = request("DELETE", "/api/canvas/c0")
            st, _, body = request("POST", "/api/canvas/one-more", b"x", "text/plain")
            check(st == 200, f"room again {st} {body}")
            for i in range(1, 256):
                request("DELETE", f"/api/canvas/c{i}")
            request("DELETE", "/api/canvas/one-more")
            st, _, body = request("GET", "/api/canvas")
            check(json.loads(body) == {"canvases": []}, f"all cleared {body}")

        r.run(lambda: asyncio.run(asyncio.wait_for(watching(), 120)), name="watching")
        r.run(lambda: asyncio.run(no_token_no_upgrade()), name="no_token_no_upgrade")
        r.run(refusals)
        r.run(bounded)
        r.run(lambda: asyncio.run(asyncio.wait_for(socket_refusals_and_bounds(), 180)),
              name="socket_refusals_and_bounds")
        r.run(lambda: asyncio.run(asyncio.wait_for(watchers_bounded(), 300)),
              name="watchers_bounded")
        r.run(bytes_bounded)

        # The daemon stops with documents posted and a watcher on one: the
        # watcher is closed 1001 (going away), and the daemon exits 0 (under
        # the sanitizers: nothing leaked).
        async def watch_kept():
            for cid in ("kept", "kept-too"):
                st, _, body = request("POST", f"/api/canvas/{cid}", b"stays", "text/plain")
                check(st == 200, f"post {cid} {st} {body}")
            w = await websockets.connect(ws_url("kept"), subprotocols=[f"bearer.{token}"],
                                         ping_interval=None)
            check((await recv(w))["content"] == "stays", "the watcher's first frame")
            return w

        async def closed_code(w):
            try:
                await asyncio.wait_for(w.recv(), TIMEOUT)
                return None
            except websockets.ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None
        loop = asyncio.new_event_loop()
        try:
            w = loop.run_until_complete(watch_kept())
            r.stopped(node)
            code = loop.run_until_complete(closed_code(w))
            r.run(lambda: check(code == 1001, f"the watcher at the stop: {code}"),
                  name="stop_with_canvases_and_a_watcher")
        finally:
            loop.close()
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
