"""tests/integration/test_peers_api.py — the trusted peers over REST (DESIGN
§5 GET/POST/DELETE /api/peers, WIRE §17.3a) on the real `kith daemon`, with
Python's http.client as the operator and an independent signed peer
(peer.py: cbor2 + PyNaCl): a peer added with POST is trusted at once (its
envelope is acked, no restart, no SIGHUP) and is in trusted_peers.json; one
removed with DELETE is refused at once; both survive a restart; edits made
at the same moment by the API and by `kith peers add` are all kept (one
lock); and every refusal is typed: bad bodies, keys, names and addresses,
a key trusted already (409), an unknown or ambiguous name, a node token
(403), no token (401), a fifth edit while four wait for the file's lock
(503 busy), and a file that does not load (500, nothing written). No
refusal touches trusted_peers.json (its bytes, inode and mtime stay) or
stops the daemon serving the peers it trusts; two DELETEs of one peer at
once are one 200 and one 404."""

import base64
import fcntl
import http.client
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Conn, Daemon, Peer, Results, api, check, frame, kith,  # noqa: E402
                  pair_token, pubkey_text)


def send_one(node, sender, body):
    """A fresh connection, one message; True when acked, False when refused."""
    c = Conn(("127.0.0.1", node.port))
    try:
        c.send(frame(sender.message(node.pk, body)))
        return c.read_frame() is not None
    finally:
        c.close()


def main():
    node = Daemon("peers_api").start()
    r = Results()
    try:
        token = pair_token(node)

        def call(method, path, body=None, tok=token, ctype="application/json"):
            if isinstance(body, dict):
                body = json.dumps(body).encode()
            st, _, data = api(node, method, path, body, tok, ctype if body is not None else None)
            return st, json.loads(data) if data else None

        def stored():
            with open(os.path.join(node.home, "trusted_peers.json")) as f:
                return json.load(f)["peers"]

        alice = Peer()
        state = {}

        def added_is_trusted_at_once():
            check(not send_one(node, alice, "before"), "an untrusted peer was acked")
            row = {"name": "alice", "pubkey": pubkey_text(alice.pk), "addr": "tcp://127.0.0.1:9",
                   "profile": "meerkat",
                   "meta": {"description": "added over REST", "labels": {"team": "blue"}}}
            st, got = call("POST", "/api/peers", row)
            check(st == 201, f"POST {st} {got}")
            check({k: got[k] for k in row} == row and len(got["peer_id"]) == 36, f"row {got}")
            state["alice_id"] = got["peer_id"]
            check(send_one(node, alice, "after"), "a peer added over REST was refused")
            st, listed = call("GET", "/api/peers")
            check(st == 200 and got in listed["peers"], f"list {listed}")
            check([p for p in stored() if p["name"] == "alice"] ==
                  [{k: v for k, v in got.items() if k != "peer_id"}], f"file {stored()}")

        def on_disk():
            """trusted_peers.json as it is on disk: bytes, inode, mtime."""
            path = os.path.join(node.home, "trusted_peers.json")
            st = os.stat(path)
            with open(path, "rb") as f:
                return f.read(), st.st_ino, st.st_mtime_ns

        def refusals_typed():
            bob = Peer()
            good = {"name": "bob", "pubkey": pubkey_text(bob.pk), "addr": "tcp://127.0.0.1:9"}
            disk = on_disk()
            small_order = "ed25519:" + base64.b64encode(bytes(32)).decode()
            cases = [
                (b'{"name":', 400, "invalid_json"),
                (b'["bob"]', 400, "invalid_body"),
                ({**good, "extra": 1}, 400, "invalid_body"),
                ({"name": "bob", "addr": "tcp://127.0.0.1:9"}, 400, "invalid_body"),
                ({**good, "profile": "other"}, 400, "invalid_body"),
                ({**good, "meta": {"labels": {"k": 1}}}, 400, "invalid_body"),
                ({**good, "meta": {"colour": "red"}}, 400, "invalid_body"),
                ({**good, "meta": "red"}, 400, "invalid_body"),
                ({**good, "meta": {"description": 5}}, 400, "invalid_body"),
                ({**good, "meta": {"labels": {f"k{i}": "v" for i in range(65)}}}, 400,
                 "invalid_body"),
                ({**good, "meta": {"description": "two\nlines"}}, 400, "invalid_peer"),
                ({**good, "profile": 7}, 400, "invalid_body"),
                ({**good, "pubkey": "ed25519:AAAA"}, 400, "invalid_pubkey"),
                ({**good, "pubkey": "ed25519:" + "A" * 43 + "="}, 400, "invalid_pubkey"),
                ({**good, "name": "bob smith"}, 400, "invalid_peer"),
                ({**good, "addr": "http://x"}, 400, "invalid_peer"),
                ({**good, "pubkey": pubkey_text(alice.pk)}, 409, "peer_exists"),
                (json.dumps(good).encode()[:-1] + b',"name":"twice"}', 400, "invalid_json"),
                (json.dumps({**good, **{f"x{i}": 1 for i in range(81)}}).encode(), 400,
                 "invalid_json"),
                ({**good, "meta": {"labels": {"k": {"deep": "v"}}}}, 400, "invalid_json"),
                (json.dumps(good).encode().replace(b"bob", b"b\\u0000b"), 400, "invalid_json"),
                (json.dumps(good).encode().replace(b"bob", b"b\xffb"), 400, "invalid_json"),
                (b"", 400, "invalid_json"),
                ({**good, "pubkey": None}, 400, "invalid_body"),
                ({**good, "addr": ["tcp://127.0.0.1:9"]}, 400, "invalid_body"),
                ({**good, "meta": None}, 400, "invalid_body"),
                ({**good, "pubkey": small_order}, 400, "invalid_pubkey"),
                ({**good, "pubkey": pubkey_text(bob.pk).rstrip("=")}, 400, "invalid_pubkey"),
                ({**good, "pubkey": pubkey_text(bob.pk)[8:]}, 400, "invalid_pubkey"),
                ({**good, "name": ""}, 400, "invalid_peer"),
                ({**good, "name": "b" * 65}, 400, "invalid_peer"),
                ({**good, "addr": "tcp://127.0.0.1"}, 400, "invalid_peer"),
                ({**good, "addr": "tcp://127.0.0.1:99999"}, 400, "invalid_peer"),
                ({**good, "meta": {"labels": {"": "v"}}}, 400, "invalid_peer"),
                ({**good, "meta": {"labels": {"k": "two\nlines"}}}, 400, "invalid_peer"),
                ({**good, "name": "alice-twin", "pubkey": pubkey_text(alice.pk)}, 409,
                 "peer_exists"),
            ]
            for body, want_st, code in cases:
                st, got = call("POST", "/api/peers", body)
                check(st == want_st and got["code"] == code, f"{body!r}: {st} {got}")
            st, got = call("POST", "/api/peers", json.dumps(good).encode(), ctype="text/plain")
            check(st == 415 and got["code"] == "unsupported_media_type", f"text/plain {st} {got}")
            st, got = call("POST", "/api/peers", {**good, "meta": {"description": "d" * (1 << 20)}})
            check(st == 413 and got["code"] == "body_too_large", f"over 1 MiB {st} {got}")
            st, got = call("POST", "/api/tokens", {"scope": "node", "name": "n"})
            check(st == 201, f"mint {st} {got}")
            node_token = got["token"]
            for method, path, body in (("POST", "/api/peers", good), ("GET", "/api/peers", None),
                                       ("DELETE", "/api/peers/alice", None)):
                st, got = call(method, path, body, tok=None)
                check(st == 401 and got["code"] == "unauthorized", f"{method} no token {st} {got}")
                st, got = call(method, path, body, tok=node_token)
                check(st == 403 and got["code"] == "forbidden", f"{method} node token {st} {got}")
            for which, want_st, code in (("nobody", 404, "not_found"), ("a%20b", 404, "not_found"),
                                         ("a" * 65, 404, "not_found"),
                                         ("alice%2F..", 404, "not_found"),
                                         ("00000000-0000-0000-0000-000000000000", 404,
                                          "not_found")):
                st, got = call("DELETE", f"/api/peers/{which}")
                check(st == want_st and got["code"] == code, f"DELETE {which}: {st} {got}")
            for method in ("GET", "POST", "PUT"):
                c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=60)
                c.request(method, "/api/peers/alice", body=b"{}" if method != "GET" else None,
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/json"})
                resp = c.getresponse()
                got = json.loads(resp.read())
                c.close()
                check((resp.status, got["code"], resp.getheader("Allow")) ==
                      (405, "method_not_allowed", "DELETE"), f"{method} one {resp.status} {got}")
            check("bob" not in [p["name"] for p in stored()], "a refused row was written")
            check(on_disk() == disk, "a refusal touched trusted_peers.json")
            # The daemon serves on: the trusted peer is still acked.
            check(send_one(node, alice, "after the refusals"), "alice refused after refusals")

        def concurrent_edits_all_kept():
            """Four API adds and four `kith peers add` at once: eight rows."""
            peers = [Peer() for _ in range(8)]
            out = []

            def by_api(i):
                out.append(call("POST", "/api/peers", {"name": f"api{i}",
                                                       "pubkey": pubkey_text(peers[i].pk),
                                                       "addr": "tcp://127.0.0.1:9"})[0])

            def by_cli(i):
                kith("peers", "add", "--home", node.home, "--name", f"cli{i}",
                     "--pubkey", pubkey_text(peers[4 + i].pk), "--addr", "tcp://127.0.0.1:9")
                out.append("cli")
            threads = [threading.Thread(target=by_api, args=(i,)) for i in range(4)] + \
                      [threading.Thread(target=by_cli, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            busy = [s for s in out if s == 503]
            check(all(s in (201, 503, "cli") for s in out), f"answers {out}")
            names = {p["name"] for p in stored()}
            for i in range(4):
                check(f"cli{i}" in names, f"cli{i} lost: {names}")
            for i in range(4):
                ok = f"api{i}" in names
                check(ok or busy, f"api{i} lost: {names} {out}")
            # Each peer added either way is trusted by the running daemon.
            for i in range(4):
                node.wait_log(f"cli{i}")
            for p in peers[4:]:
                check(send_one(node, p, "hi"), "a CLI-added peer refused")

        def removed_is_refused_at_once():
            st, got = call("POST", "/api/peers", {"name": "twin", "pubkey": pubkey_text(Peer().pk),
                                                  "addr": "tcp://127.0.0.1:9"})
            check(st == 201, f"twin 1 {st} {got}")
            st, got2 = call("POST", "/api/peers", {"name": "twin", "pubkey": pubkey_text(Peer().pk),
                                                   "addr": "tcp://127.0.0.1:9"})
            check(st == 201, f"twin 2 {st} {got2}")
            st, res = call("DELETE", "/api/peers/twin")
            check(st == 409 and res["code"] == "ambiguous_name", f"ambiguous {st} {res}")
            st, res = call("DELETE", f"/api/peers/{got['peer_id']}")
            check(st == 200 and res == {"removed": True, "name": "twin",
                                        "peer_id": got["peer_id"]}, f"by id {st} {res}")
            st, res = call("DELETE", "/api/peers/alice")
            check(st == 200 and res["peer_id"] == state["alice_id"], f"alice {st} {res}")
            check(not send_one(node, alice, "after removal"), "a removed peer was acked")
            check("alice" not in [p["name"] for p in stored()], "alice still in the file")

        def concurrent_removes_of_one_peer():
            """Two DELETEs of one peer at once: one removes it (200), the other
            finds nothing (404); a POST of another key at the same moment lands."""
            p, q = Peer(), Peer()
            st, got = call("POST", "/api/peers", {"name": "once", "pubkey": pubkey_text(p.pk),
                                                  "addr": "tcp://127.0.0.1:9"})
            check(st == 201, f"once {st} {got}")
            out = []
            jobs = [lambda: out.append(call("DELETE", "/api/peers/once")),
                    lambda: out.append(call("DELETE", f"/api/peers/{got['peer_id']}")),
                    lambda: out.append(call("POST", "/api/peers", {
                        "name": "meanwhile", "pubkey": pubkey_text(q.pk),
                        "addr": "tcp://127.0.0.1:9"}))]
            threads = [threading.Thread(target=j) for j in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            got_codes = sorted((st, body.get("code", "ok")) for st, body in out)
            check(got_codes == [(200, "ok"), (201, "ok"), (404, "not_found")], f"{out}")
            names = [x["name"] for x in stored()]
            check("once" not in names and "meanwhile" in names, f"file {names}")
            check(not send_one(node, p, "removed"), "a removed peer was acked")
            check(send_one(node, q, "added"), "a peer added meanwhile was refused")
            st, got = call("DELETE", "/api/peers/meanwhile")
            check(st == 200, f"tidy {st} {got}")

        def edits_bounded_while_the_file_is_locked():
            """`kith peers` (here: this test) holds the file's lock: edits
            wait for it, four at most; the fifth is 503 busy, and the four
            land once the lock is let go."""
            lock = open(os.path.join(node.home, "trusted_peers.json.lock"), "a+")
            fcntl.flock(lock, fcntl.LOCK_EX)
            peers = [Peer() for _ in range(5)]
            out = [None] * 4
            tasks = os.path.join("/proc", str(node.proc.pid), "task")
            before = len(os.listdir(tasks))

            def add(i):
                out[i] = call("POST", "/api/peers", {"name": f"held{i}",
                                                     "pubkey": pubkey_text(peers[i].pk),
                                                     "addr": "tcp://127.0.0.1:9"})
            threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            # The four are on threads of their own in the daemon, each waiting
            # for the lock: then, and only then, is the fifth past the bound.
            deadline = time.time() + 60
            while len(os.listdir(tasks)) < before + 4 and time.time() < deadline:
                time.sleep(0.02)
            st, got = call("POST", "/api/peers", {"name": "fifth",
                                                  "pubkey": pubkey_text(peers[4].pk),
                                                  "addr": "tcp://127.0.0.1:9"})
            check(st == 503 and got["code"] == "busy", f"past the bound {st} {got}")
            check(all(o is None for o in out), f"answered while the lock was held: {out}")
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
            for t in threads:
                t.join()
            check([o[0] for o in out] == [201] * 4, f"after the lock {out}")

        def unreadable_file_changes_nothing():
            path = os.path.join(node.home, "trusted_peers.json")
            good = open(path).read()
            with open(path, "w") as f:
                f.write('{"peers": [{"name": "broken"')
            st, got = call("POST", "/api/peers", {"name": "late", "pubkey": pubkey_text(Peer().pk),
                                                  "addr": "tcp://127.0.0.1:9"})
            check(st == 500 and got["code"] == "trust_store_error", f"POST {st} {got}")
            st, got = call("DELETE", "/api/peers/held0")
            check(st == 500 and got["code"] == "trust_store_error", f"DELETE {st} {got}")
            check(open(path).read() == '{"peers": [{"name": "broken"', "the file was rewritten")
            with open(path, "w") as f:
                f.write(good)
            os.chmod(path, 0o600)

        def survives_restart():
            before = call("GET", "/api/peers")[1]
            node.stop()
            node.start()
            after = call("GET", "/api/peers")[1]
            check(after == before, f"before {before} after {after}")

        for fn in (added_is_trusted_at_once, refusals_typed, concurrent_edits_all_kept,
                   removed_is_refused_at_once, concurrent_removes_of_one_peer, edits_bounded_while_the_file_is_locked,
                   unreadable_file_changes_nothing, survives_restart):
            r.run(fn)
        r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
