"""tests/integration/test_tokens.py — bearer tokens as operators manage them
(WIRE §28) on the real `kith daemon`, with Python's http.client, curl and
`websockets` as the clients: a paired token is listed under the name it
paired with; an operator mints a node token, which opens /ws/nodes and
nothing else (403 on every other bearer route, before any upgrade);
revoking a token refuses it at once and ends the WebSockets and event
streams it opened (1008 "token revoked"); everything survives a restart
(names, scopes, revocations); a state.db written before tokens had a scope
is read as it was meant; the loopback /admin/tokens works without a
bearer, and `kith tokens list|mint|revoke` through it; every refusal is
typed; and past the 1,024 tokens kept, minting
and pairing answer 507 too_many_tokens until one is revoked."""

import asyncio
import hashlib
import http.client
import json
import os
import sqlite3
import sys
import threading
import time

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, api, check, curl, free_port, gateway_url,  # noqa: E402
                  kith_run)

TIMEOUT = 60


def request(node, method, path, body=None, token=None, ctype="application/json"):
    """(status, JSON body or None): a dict body is sent as JSON."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    st, _, data = api(node, method, path, body, token, ctype if body is not None else None)
    try:
        return st, json.loads(data) if data else None
    except ValueError:
        return st, data


def pair(node, name=None):
    """POST /pair with a fresh code (and X-Token-Name): the JSON answer."""
    args = ["-X", "POST", "-H", f"X-Pairing-Code: {new_code(node)}"]
    if name is not None:
        args += ["-H", f"X-Token-Name: {name}"]
    st, _, body, _ = curl(*args, gateway_url(node) + "/pair")
    check(st == 200, f"/pair answered {st}: {body}")
    return json.loads(body)


def new_code(node):
    """A fresh one-time pairing code from the loopback admin route."""
    st, got = request(node, "POST", "/admin/paircode", b"")
    check(st == 200, f"paircode {st} {got}")
    return got["code"]


def mint(node, token, scope, name):
    st, got = request(node, "POST", "/api/tokens", {"scope": scope, "name": name}, token)
    check(st == 201, f"mint {scope} {name}: {st} {got}")
    return got


def listed(node, token):
    st, got = request(node, "GET", "/api/tokens", token=token)
    check(st == 200, f"list: {st} {got}")
    return got["tokens"]


def token_id(token):
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class Stream:
    """GET /api/events held open on a thread; `ended` is set once the
    server ends the stream."""

    def __init__(self, node, token):
        self.ended = threading.Event()
        self.c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT)
        self.c.request("GET", "/api/events", headers={"Authorization": f"Bearer {token}"})
        self.resp = self.c.getresponse()
        check(self.resp.status == 200, f"/api/events answered {self.resp.status}")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while self.resp.read1(4096):
                pass
        except OSError:
            pass
        self.ended.set()


async def ws_connect(node, path, token, proto):
    return await websockets.connect(f"ws://127.0.0.1:{node.gw_port}{path}",
                                    subprotocols=[proto, f"bearer.{token}"], ping_interval=None)


async def closed_with(ws):
    """(code, reason) of the close the server sends."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except websockets.ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None


def upgrade_status(node, path, token):
    """The status a WebSocket upgrade with `token` gets (101 or a refusal)."""
    c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT)
    c.request("GET", path, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": f"Bearer {token}"})
    st = c.getresponse().status
    c.close()
    return st


def daemon_gone(node):
    """`kith tokens` with no daemon: one line, exit 1."""
    _, err = kith_run("tokens", "list", "--home", node.home, expect=1)
    check(err.count("\n") == 1 and "not running" in err, err)


def node_tokens_alone_still_print_a_code():
    """A daemon whose only tokens are node tokens mints a pairing code at
    start, as with none: nobody could open the operator's routes."""
    node = Daemon("tokens-nodes-only")
    try:
        db = sqlite3.connect(os.path.join(node.home, "state.db"))
        db.execute("CREATE TABLE gateway_tokens (hash BLOB PRIMARY KEY, created_ms INTEGER NOT NULL,"
                   " scope TEXT NOT NULL DEFAULT 'operator', name TEXT NOT NULL DEFAULT '')"
                   " WITHOUT ROWID")
        db.execute("INSERT INTO gateway_tokens VALUES (?, 1, 'node', 'sensor')",
                   (hashlib.sha256(b"kith_" + b"cd" * 32).digest(),))
        db.commit()
        db.close()
        node.start()
        check("no token paired: pairing code" in node.logs(), node.logs())
        check(node.stop() == 0, "exit")
    finally:
        node.cleanup()


def main():
    home_db_token = "kith_" + "ab" * 32
    # A fixed port: `kith tokens` finds the daemon through the configuration.
    node = Daemon("tokens", config={"gateway": {"port": free_port()}})
    # A state.db as builds before scopes wrote it: one paired token, and a
    # device row without a via.
    db = sqlite3.connect(os.path.join(node.home, "state.db"))
    db.execute("CREATE TABLE gateway_tokens (hash BLOB PRIMARY KEY, created_ms INTEGER NOT NULL)"
               " WITHOUT ROWID")
    db.execute("INSERT INTO gateway_tokens VALUES (?, ?)",
               (hashlib.sha256(home_db_token.encode()).digest(), 1000))
    db.execute("CREATE TABLE gateway_devices (id TEXT PRIMARY KEY, public_key BLOB NOT NULL,"
               " client_id TEXT NOT NULL, client_mode TEXT NOT NULL, platform TEXT NOT NULL,"
               " token_hash BLOB, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL)"
               " WITHOUT ROWID")
    db.commit()
    db.close()
    node.start()
    r = Results()
    state = {}
    try:
        def older_state_db_read():
            got = listed(node, home_db_token)
            check([(t["id"], t["scope"], t["name"], t["created_ms"]) for t in got]
                  == [(token_id(home_db_token), "operator", "", 1000)], f"old token {got}")
            check(got[0]["current"] is True, f"current {got}")

        def paired_token_named():
            got = pair(node, "laptop (curl)")
            check(set(got) == {"paired", "token"}, f"pair answer {got}")
            got["id"] = token_id(got["token"])  # the list shows it (WIRE §28)
            state["op"] = got["token"]
            toks = listed(node, state["op"])
            mine = [t for t in toks if t["current"]]
            check(len(toks) == 2 and len(mine) == 1 and mine[0]["name"] == "laptop (curl)" and
                  mine[0]["scope"] == "operator" and mine[0]["id"] == got["id"], f"list {toks}")
            check(all("token" not in t and "hash" not in t for t in toks), "no secret is listed")

        def node_token_opens_nodes_only():
            op = state["op"]
            got = mint(node, op, "node", "kitchen tablet")
            check(got["scope"] == "node" and got["name"] == "kitchen tablet" and
                  got["id"] == token_id(got["token"]) and got["token"].startswith("kith_"),
                  f"minted {got}")
            state["node"] = nt = got["token"]
            for method, path in (("GET", "/api/tokens"), ("GET", "/api/peers"),
                                 ("GET", "/api/nodes"), ("GET", "/api/sessions"),
                                 ("GET", "/api/canvas"), ("GET", "/api/audit"),
                                 ("POST", "/api/tokens")):
                st, body = request(node, method, path, {} if method == "POST" else None, nt)
                check(st == 403 and body["code"] == "forbidden", f"{method} {path}: {st} {body}")
            for path in ("/ws/chat", "/ws/canvas/x", "/api/events"):
                st = upgrade_status(node, path, nt) if path.startswith("/ws") else \
                    request(node, "GET", path, token=nt)[0]
                check(st == 403, f"{path} with a node token: {st}")

            async def registers():
                ws = await ws_connect(node, "/ws/nodes", nt, "kith.nodes.v1")
                await ws.send(json.dumps({"type": "register", "name": "tablet",
                                          "commands": ["camera.snap"]}))
                reg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                check(reg["type"] == "registered", f"register {reg}")
                st, one = request(node, "GET", f"/api/nodes/{reg['id']}", token=op)
                check(st == 200 and one["token_id"] == got["id"], f"node {one}")
                return ws, reg["id"]
            state["node_ws"], state["node_id"] = asyncio.get_event_loop().run_until_complete(
                registers())

        def revoking_ends_what_it_opened():
            op = state["op"]
            second = mint(node, op, "operator", "ci runner")
            tok = second["token"]
            check(request(node, "GET", "/api/peers", token=tok)[0] == 200, "minted operator works")
            stream = Stream(node, tok)
            loop = asyncio.get_event_loop()
            chat = loop.run_until_complete(ws_connect(node, "/ws/chat", tok, "kith.v1"))
            first = json.loads(loop.run_until_complete(asyncio.wait_for(chat.recv(), TIMEOUT)))
            check(first["type"] == "session_start", f"chat {first}")
            # The operator's own stream stays.
            mine = Stream(node, op)
            st, got = request(node, "DELETE", f"/api/tokens/{second['id']}", token=op)
            check(st == 200 and got == {"revoked": True, "id": second["id"], "closed": 2},
                  f"revoke {st} {got}")
            code = loop.run_until_complete(closed_with(chat))
            check(code == (1008, "token revoked"), f"chat closed {code}")
            check(stream.ended.wait(TIMEOUT), "the revoked token's event stream did not end")
            check(not mine.ended.wait(0.5), "another token's stream ended")
            st, body = request(node, "GET", "/api/peers", token=tok)
            check(st == 401 and body["code"] == "unauthorized", f"revoked token: {st} {body}")
            check(upgrade_status(node, "/ws/chat", tok) == 401, "revoked token upgrades")
            check(second["id"] not in [t["id"] for t in listed(node, op)], "still listed")
            st, body = request(node, "DELETE", f"/api/tokens/{second['id']}", token=op)
            check(st == 404 and body["code"] == "not_found", f"revoked twice: {st} {body}")
            # The node token: its node's socket closes, the node leaves.
            st, got = request(node, "DELETE", f"/api/tokens/{token_id(state['node'])}", token=op)
            check(st == 200 and got["closed"] == 1, f"revoke node token {st} {got}")
            code = loop.run_until_complete(closed_with(state["node_ws"]))
            check(code == (1008, "token revoked"), f"node closed {code}")
            deadline = time.time() + TIMEOUT
            while request(node, "GET", "/api/nodes", token=op)[1]["nodes"] and \
                    time.time() < deadline:
                time.sleep(0.05)
            check(request(node, "GET", "/api/nodes", token=op)[1]["nodes"] == [], "node listed")
            check(upgrade_status(node, "/ws/nodes", state["node"]) == 401, "node token upgrades")
            mine.c.close()

        def refusals_typed():
            op = state["op"]
            bad = [
                (b'{"scope":"node"}', "invalid_body"),
                (b'{"scope":"node","name":""}', "invalid_body"),
                (b'{"scope":"admin","name":"x"}', "invalid_body"),
                (b'{"scope":"node","name":"x","extra":1}', "invalid_body"),
                (b'{"scope":"node","name":"a\\u0001b"}', "invalid_body"),
                (json.dumps({"scope": "node", "name": "n" * 65}).encode(), "invalid_body"),
                (b'{"scope":"node","name":7}', "invalid_body"),
                (b'["node"]', "invalid_body"),
                (b'{"scope":"node","scope":"node","name":"x"}', "invalid_json"),
                (b'{"scope":', "invalid_json"),
            ]
            for body, code in bad:
                st, got = request(node, "POST", "/api/tokens", body, op)
                check(st == 400 and got["code"] == code, f"{body!r}: {st} {got}")
            st, got = request(node, "POST", "/api/tokens", b'{"scope":"node","name":"x"}', op,
                              ctype="text/plain")
            check(st == 415, f"text/plain: {st} {got}")
            for tid in ("0" * 16, "short", "0" * 17, "../../x"):
                st, got = request(node, "DELETE", f"/api/tokens/{tid}", token=op)
                check(st == 404 and got["code"] == "not_found", f"DELETE {tid}: {st} {got}")
            st, _, _ = api(node, "GET", f"/api/tokens/{token_id(op)}", token=op)
            check(st == 405, f"GET one: {st}")
            st, got = request(node, "GET", "/api/tokens")
            check(st == 401, f"no bearer: {st} {got}")
            args = ["-X", "POST", "-H", f"X-Pairing-Code: {new_code(node)}",
                    "-H", "X-Token-Name: " + "n" * 65]
            st, _, body, _ = curl(*args, gateway_url(node) + "/pair")
            check(st == 400 and json.loads(body)["code"] == "invalid_token_name", f"{st} {body}")

        def admin_door_without_bearer():
            got = mint(node, state["op"], "operator", "to drop")
            st, body = request(node, "GET", "/admin/tokens")
            check(st == 200 and got["id"] in [t["id"] for t in body["tokens"]] and
                  not any(t["current"] for t in body["tokens"]), f"admin list {st} {body}")
            st, body = request(node, "POST", "/admin/tokens", {"scope": "node", "name": "by admin"})
            check(st == 201 and body["scope"] == "node", f"admin mint {st} {body}")
            state["admin_node"] = body["token"]
            st, body = request(node, "DELETE", f"/admin/tokens/{got['id']}")
            check(st == 200 and body["revoked"], f"admin revoke {st} {body}")
            check(request(node, "GET", "/api/peers", token=got["token"])[0] == 401, "still works")

        def cli_lists_mints_revokes():
            """`kith tokens`, through the loopback admin routes, no token held."""
            home = ("--home", node.home)
            out, _ = kith_run("tokens", "mint", "--scope", "node", "--name", "sensor \"7\"", *home)
            tok = out.strip()
            check(tok.startswith("kith_") and len(tok) == 69, f"mint printed {out!r}")
            out, _ = kith_run("tokens", "list", *home)
            mine = [ln for ln in out.splitlines() if ln.startswith(token_id(tok))]
            check(len(mine) == 1 and mine[0].split()[1] == "node" and
                  mine[0].endswith('sensor "7"') and "T" in mine[0].split()[2], f"list {out}")
            out, _ = kith_run("tokens", "list", "--json", *home)
            check(token_id(tok) in [t["id"] for t in json.loads(out)["tokens"]], out)
            out, _ = kith_run("tokens", "mint", "--scope", "operator", "--name", "x", "--json", *home)
            check(json.loads(out)["scope"] == "operator", out)
            out, _ = kith_run("tokens", "revoke", token_id(tok), *home)
            check(out.strip() == f"revoked {token_id(tok)} (0 connections closed)", out)
            check(upgrade_status(node, "/ws/nodes", tok) == 401, "revoked by the CLI, still opens")
            # A name with a quote, a backslash and a non-ASCII letter goes as
            # sent; a control character is the daemon's to refuse.
            out, _ = kith_run("tokens", "mint", "--scope", "node", "--name", 'q"\\ café', *home)
            named = [t for t in json.loads(kith_run("tokens", "list", "--json", *home)[0])["tokens"]
                     if t["id"] == token_id(out.strip())]
            check(named and named[0]["name"] == 'q"\\ café', f"escaped name {named}")
            # Refusals: one line on stderr, exit 1.
            for args, want in ((("revoke", token_id(tok)), "answered 404"),
                               (("revoke", "XYZ"), "not a token id"),
                               (("revoke", token_id(tok).upper()), "not a token id"),
                               (("revoke",), "expected one token ID"),
                               (("mint", "--scope", "root", "--name", "x"), "answered 400"),
                               (("mint", "--scope", "node", "--name", "a\tb"), "answered 400"),
                               (("mint", "--scope", "node", "--name", "n" * 600), "too long"),
                               (("mint", "--name", "x"), "--scope and --name are required"),
                               (("list", "extra"), "unexpected argument"),
                               (("list", "--bogus"), "--bogus"),
                               (("frob",), "unknown verb")):
                _, err = kith_run("tokens", *args, *home, expect=1)
                check(err.count("\n") == 1 and want in err, f"{args}: {err!r}")
            _, err = kith_run("tokens", expect=1)
            check("expected list, mint or revoke" in err, err)
            for args in (("--help",), ("list", "--help")):
                out, _ = kith_run("tokens", *args)
                check(out.startswith("usage: kith tokens"), out)
            # The configuration names where the daemon is; a bad one says so.
            cfg = os.path.join(node.home, "other.json")
            with open(cfg, "w") as f:
                f.write('{"gateway": {"port": 0}}')
            _, err = kith_run("tokens", "list", *home, "--config", cfg, expect=1)
            check("gateway.port is 0" in err, err)
            # Something else on the port (the comms listener): not HTTP.
            with open(cfg, "w") as f:
                f.write('{"gateway": {"port": %d}, "comms": {"mode": "none"}}' % node.port)
            _, err = kith_run("tokens", "list", *home, "--config", cfg, expect=1)
            check(err.count("\n") == 1 and ("not HTTP" in err or "not running" in err), err)
            with open(cfg, "w") as f:
                f.write('{"gateway": {"prot": 1}}')
            _, err = kith_run("tokens", "list", *home, "--config", cfg, expect=1)
            check(err.count("\n") == 1 and "prot" in err, err)

        def survives_restart():
            op = state["op"]
            before = listed(node, op)
            node.stop()
            node.start()
            after = listed(node, op)
            check([(t["id"], t["scope"], t["name"], t["created_ms"]) for t in after] ==
                  [(t["id"], t["scope"], t["name"], t["created_ms"]) for t in before],
                  f"before {before} after {after}")
            check(request(node, "GET", "/api/peers", token=state["node"])[0] == 401,
                  "a revoked token came back")
            check(request(node, "GET", "/api/peers", token=state["admin_node"])[0] == 403,
                  "a node token opened /api after a restart")
            check(upgrade_status(node, "/ws/nodes", state["admin_node"]) == 101,
                  "a node token no longer opens /ws/nodes")

        def bound_then_room_again():
            op = state["op"]
            have = len(listed(node, op))
            made, lock = [], threading.Lock()

            def worker(n):
                for i in range(n):
                    st, got = request(node, "POST", "/api/tokens",
                                      {"scope": "node", "name": f"bulk {i}"}, op)
                    with lock:
                        made.append((st, got))

            need = 1024 - have
            threads = [threading.Thread(target=worker, args=(need // 8 + (k < need % 8),))
                       for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            check(all(st == 201 for st, _ in made) and len(made) == need,
                  f"{sum(st == 201 for st, _ in made)} of {need} minted")
            st, got = request(node, "POST", "/api/tokens", {"scope": "node", "name": "one more"}, op)
            check(st == 507 and got["code"] == "too_many_tokens", f"past the bound: {st} {got}")
            args = ["-X", "POST", "-H", f"X-Pairing-Code: {new_code(node)}"]
            st, _, body, _ = curl(*args, gateway_url(node) + "/pair")
            check(st == 507 and json.loads(body)["code"] == "too_many_tokens", f"pair {st} {body}")
            st, got = request(node, "DELETE", f"/api/tokens/{made[0][1]['id']}", token=op)
            check(st == 200, f"revoke {st} {got}")
            mint(node, op, "node", "room again")

        for fn in (older_state_db_read, paired_token_named, node_token_opens_nodes_only,
                   revoking_ends_what_it_opened, refusals_typed, admin_door_without_bearer,
                   cli_lists_mints_revokes, survives_restart, bound_then_room_again):
            r.run(fn)
        r.stopped(node)
        r.run(daemon_gone, node)
        r.run(node_tokens_alone_still_print_a_code)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
