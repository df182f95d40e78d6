"""tests/integration/test_pairing.py — pairing and bearer tokens on the real
`kith daemon` (WIRE §17), with curl and `kith paircode`: the one-time code
from the daemon's log, the token's SHA-256 only in state.db, bearer
precedence (header, ?token=, gateway.allow_query_token), 401 with
WWW-Authenticate, /admin/paircode for loopback only, and the lockout after
five bad codes — still there after a restart, as is the token, and after
the gateway moves to a dual-stack [::] listener; a full token table
refused before the code is spent."""

import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, curl, free_port, gateway_url, kith_run  # noqa: E402

TOKEN_RE = re.compile(r"^kith_[0-9a-f]{64}$")


def log_code(node, nth=-1):
    codes = re.findall(r"pairing code (\d{6}) ", node.logs())
    check(codes, f"no pairing code in the log:\n{node.logs()}")
    return codes[nth]


def pair(node, code, src=None):
    args = ["-X", "POST", "-H", f"X-Pairing-Code: {code}", "-D", "-"]
    if src:
        args += ["--interface", src]
    status, _, body, _ = curl(*args, gateway_url(node) + "/pair")
    # curl's text output has universal newlines: CRLF reads as LF.
    head, _, body = body.partition("\n\n")
    headers = {}
    for line in head.split("\n")[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, json.loads(body) if body else None


def webhook(node, *args, path="/webhook"):
    status, _, body, _ = curl("-X", "POST", "-H", "Content-Type: application/json",
                              "--data", '{"message":"hi"}', *args, gateway_url(node) + path)
    return status, json.loads(body) if body else None


def stored_hashes(node):
    db = sqlite3.connect(os.path.join(node.home, "state.db"))
    try:
        return [bytes(h) for (h,) in db.execute("SELECT hash FROM gateway_tokens")]
    finally:
        db.close()


def main():
    port = free_port()
    node = Daemon("pair", config={"gateway": {"port": port}})
    node.start()
    results = Results()
    state = {}

    def code_printed_and_pairs():
        code = log_code(node)
        check("kith daemon: pairing code: " + code in node.logs(), "code not on stderr")
        status, _, doc = pair(node, code)
        check(status == 200, (status, doc))
        check(set(doc) == {"paired", "token"} and doc["paired"] is True, doc)
        check(TOKEN_RE.match(doc["token"]), doc)
        state["token"] = doc["token"]
        # Only the SHA-256 is kept; the token itself is nowhere in state.db.
        check(stored_hashes(node) == [hashlib.sha256(doc["token"].encode()).digest()],
              stored_hashes(node))
        with open(os.path.join(node.home, "state.db"), "rb") as f:
            check(doc["token"].encode() not in f.read(), "token in clear in state.db")

    def code_is_one_time():
        status, _, doc = pair(node, log_code(node))
        check(status == 401 and doc["code"] == "invalid_pairing_code", (status, doc))

    def missing_code_header():
        status, _, body, _ = curl("-X", "POST", gateway_url(node) + "/pair")
        check(status == 400 and json.loads(body)["code"] == "missing_pairing_code", body)

    def bearer_needed():
        status, _, body, err = curl("-X", "POST", "-D", "-", gateway_url(node) + "/webhook")
        check(status == 401, body)
        check(re.search(r"(?im)^www-authenticate: Bearer$", body), body)
        doc = json.loads(body.partition("\n\n")[2])
        check(doc["code"] == "unauthorized" and doc["error"], doc)
        status, doc = webhook(node, "-H", "Authorization: Bearer kith_" + "0" * 64)
        check(status == 401 and doc["code"] == "unauthorized", (status, doc))
        status, doc = webhook(node, "-H", "Authorization: Bearer nonsense")
        check(status == 401, (status, doc))

    def bearer_header_and_query():
        t = state["token"]
        status, doc = webhook(node, "-H", f"Authorization: Bearer {t}")
        check(status == 202 and doc["queued"] is True, (status, doc))
        status, doc = webhook(node, path=f"/webhook?x=1&token={t}")
        check(status == 202, (status, doc))
        # The header wins over the query: a bad header is not rescued.
        status, doc = webhook(node, "-H", "Authorization: Bearer kith_" + "1" * 64,
                              path=f"/webhook?token={t}")
        check(status == 401, (status, doc))
        check(t not in node.logs(), "the token was logged")

    def pipelined_behind_a_deferred_answer():
        # /pair answers only once its write is durable; requests pipelined
        # behind it wait, then are answered in order on the same connection.
        req = (b"POST /pair HTTP/1.1\r\nHost: x\r\nX-Pairing-Code: 999999\r\n"
               b"Content-Length: 0\r\n\r\n")
        tail = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", node.gw_port), timeout=20,
                                      source_address=("127.0.0.3", 0)) as s:
            s.sendall(req + req + tail)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", out)
        check(statuses == [b"401", b"401", b"200"], out)

    def admin_paircode_and_cli():
        status, _, body, _ = curl(gateway_url(node) + "/admin/paircode")
        check(status == 200 and re.match(r'^\{"code":"\d{6}"\}$', body), body)
        status, _, body, _ = curl("-X", "POST", gateway_url(node) + "/admin/paircode")
        check(status == 200, body)
        old = json.loads(body)["code"]
        out, _ = kith_run("paircode", "--home", node.home)
        code = out.strip()
        check(re.match(r"^\d{6}$", code), out)
        # Minting replaced the previous code.
        status, _, doc = pair(node, old)
        check(status == 401, (status, doc))
        status, _, doc = pair(node, code)
        check(status == 200 and TOKEN_RE.match(doc["token"]), (status, doc))
        status, _ = webhook(node, "-H", f"Authorization: Bearer {doc['token']}")
        check(status == 202, status)

    def lockout_after_five_bad_codes():
        src = "127.0.0.2"  # a client of its own, so the other cases keep pairing
        good = json.loads(curl(gateway_url(node) + "/admin/paircode")[2])["code"]
        bad = "000000" if good != "000000" else "111111"
        for i in range(4):
            status, _, doc = pair(node, bad, src)
            check(status == 401 and doc["code"] == "invalid_pairing_code", (i, status, doc))
        status, headers, doc = pair(node, bad, src)
        check(status == 429 and doc["code"] == "too_many_attempts" and doc["error"], (status, doc))
        check(headers.get("retry-after") == "300", headers)
        # Locked out even with the right code; other clients are not.
        status, headers, doc = pair(node, good, src)
        check(status == 429 and 0 < int(headers["retry-after"]) <= 300, (status, headers))
        state["good"] = good

    def api_peers_lists_trust_live():
        # Bearer-protected, and it follows live trust changes (no restart).
        status, _, body, _ = curl(gateway_url(node) + "/api/peers")
        check(status == 401 and json.loads(body)["code"] == "unauthorized", body)
        auth = ("-H", f"Authorization: Bearer {state['token']}")
        status, _, body, _ = curl(*auth, gateway_url(node) + "/api/peers")
        check(status == 200 and json.loads(body) == {"peers": []}, body)
        ident = json.loads(kith_run("id", "--home", node.home)[0])
        pk = ident["pubkey"]
        kith_run("peers", "add", "--home", node.home, "--name", "carol", "--pubkey", pk,
                 "--addr", "tcp://127.0.0.1:9")
        node.wait_log("trust: reloaded")
        status, _, body, _ = curl(*auth, gateway_url(node) + "/api/peers")
        peers = json.loads(body)["peers"]
        check(status == 200 and [(p["name"], p["pubkey"], p["peer_id"]) for p in peers] ==
              [("carol", pk, ident["peer_id"])], body)
        kith_run("peers", "remove", "--home", node.home, "carol")
        node.wait_log("trust: reloaded", count=2)
        status, _, body, _ = curl(*auth, gateway_url(node) + "/api/peers")
        check(json.loads(body) == {"peers": []}, body)

    for fn in (code_printed_and_pairs, code_is_one_time, missing_code_header, bearer_needed,
               bearer_header_and_query, pipelined_behind_a_deferred_answer,
               admin_paircode_and_cli, api_peers_lists_trust_live, lockout_after_five_bad_codes):
        results.run(fn)

    def restart_keeps_token_and_lockout():
        check(node.stop() == 0, "daemon did not exit 0")
        node.start()
        node.wait_log("daemon: ready", count=2)  # the log holds the first run's lines too
        # A token is paired: no code is printed this time.
        check(node.logs().count("no token paired") == 1, node.logs())
        status, doc = webhook(node, "-H", f"Authorization: Bearer {state['token']}")
        check(status == 202, (status, doc))
        code = json.loads(curl(gateway_url(node) + "/admin/paircode")[2])["code"]
        status, headers, doc = pair(node, code, "127.0.0.2")
        check(status == 429 and doc["code"] == "too_many_attempts", (status, doc))
        check(0 < int(headers["retry-after"]) <= 300, headers)
        status, _, doc = pair(node, code)
        check(status == 200, (status, doc))

    results.run(restart_keeps_token_and_lockout)

    def admin_refuses_rebinding_and_other_sites():
        """A loopback client is not enough: the Host must not be a DNS name
        (a page whose name was rebound to 127.0.0.1 sends its own) and no
        other site's Origin may come with it (a cross-site POST)."""
        url = gateway_url(node)
        for args in ((url + "/admin/paircode", "-H", "Host: attacker.example:%d" % node.gw_port),
                     (url + "/admin/paircode", "-H", "Host: 127.0.0.1.attacker.example"),
                     (url + "/admin/tokens", "-H", "Host: kith.internal"),
                     ("-X", "POST", url + "/admin/shutdown", "-H", "Origin: https://attacker.example"),
                     (url + "/admin/paircode", "-H", "Origin: null")):
            status, _, body, _ = curl(*args)
            check(status == 403 and json.loads(body)["code"] == "forbidden", (args, status, body))
        for host in ("localhost", "LOCALHOST:1", "127.0.0.1", "127.9.9.9:80", "[::1]:42617",
                     "[::1]", "x", "10.1.2.3:8080", "[fe80::1]"):
            status, _, body, _ = curl(url + "/admin/paircode", "-H", f"Host: {host}")
            check(status == 200, (host, status, body))
        status, _, body, _ = curl(url + "/admin/paircode", "-H",
                                  f"Origin: http://127.0.0.1:{node.gw_port}")
        check(status == 200, ("same origin", status, body))

    results.run(admin_refuses_rebinding_and_other_sites)

    def exposed_doors_warn():
        """Bound where other machines reach it, a listener says at start which
        of its doors are open that are harmless on loopback: the gateway's
        pairing and webhook secret, comms without peer auth, plain events.
        On loopback nothing of the kind is said."""
        doors = ("with pairing off", "without a webhook secret", "trusted or not",
                 "queued as an event, unauthenticated")
        check("reachable from other machines" not in node.logs(), node.logs()[-2000:])
        for cfg, want in (({"gateway": {"host": "0.0.0.0"}}, [doors[1]]),
                          ({"gateway": {"host": "0.0.0.0", "require_pairing": False}},
                           [doors[0], doors[1]]),
                          ({"comms": {"address": "0.0.0.0:0", "require_peer_auth": False}},
                           [doors[2]]),
                          ({"comms": {"require_peer_auth": False}}, []),
                          ({"comms": {"auth": "none", "event_address": "0.0.0.0:0"}}, [doors[3]]),
                          ({"comms": {"auth": "none", "event_address": "127.0.0.1:0"}}, [])):
            d = Daemon("pair-exposed", config=cfg)
            try:
                d.start()
                logs = d.logs()
                warned = [w for w in doors if w in logs]
                check(warned == want, (cfg, warned, logs[-2000:]))
            finally:
                d.cleanup()

    results.run(exposed_doors_warn)

    def admin_refuses_non_loopback():
        addrs = [a for a in os.popen("hostname -I 2>/dev/null").read().split()
                 if "." in a and not a.startswith("127.")]
        if not addrs:
            print("skip admin_refuses_non_loopback: no non-loopback IPv4 address here")
            return
        other = Daemon("pair-any", config={"gateway": {"host": "0.0.0.0"}})
        try:
            other.start()
            status, _, body, _ = curl(f"http://{addrs[0]}:{other.gw_port}/admin/paircode")
            check(status == 403 and json.loads(body)["code"] == "forbidden", (status, body))
            status, _, body, _ = curl("-X", "POST", f"http://{addrs[0]}:{other.gw_port}/admin/shutdown")
            check(status == 403 and json.loads(body)["code"] == "forbidden", (status, body))
            status, _, body, _ = curl(f"http://127.0.0.1:{other.gw_port}/admin/paircode")
            check(status == 200, (status, body))
        finally:
            other.cleanup()

    try:
        results.run(admin_refuses_non_loopback)
        results.stopped(node)
    finally:
        node.cleanup()

    def paircode_without_daemon():
        _, err = kith_run("paircode", "--home", node.home, expect=1)
        check(err.count("\n") == 1 and "not running" in err, err)

    def paircode_against_a_wrong_server():
        """Something at the gateway's port that is not a working daemon: the
        CLI says which of the three it met, in one line, exit 1 — a server
        that takes the request and says nothing (10 s, its deadline), one
        that answers what is not HTTP, one that answers without end."""
        home = tempfile.mkdtemp(prefix="kith-wrong-")
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": srv.getsockname()[1]}}, f)
        held = []

        def serve(answer):
            c, _ = srv.accept()
            c.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            if answer is None:
                held.append(c)  # says nothing, and keeps the connection open
                return
            try:
                c.sendall(answer)
            except OSError:
                pass  # the CLI stopped reading: its bound
            c.close()

        try:
            for answer, want in ((None, "did not answer within 10 s"),
                                 (b"hello there\r\n\r\n", "not HTTP"),
                                 (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * ((1 << 20) + 4096),
                                  "answered more than 1024 KiB")):
                t = threading.Thread(target=serve, args=(answer,))
                t.start()
                _, err = kith_run("paircode", "--home", home, expect=1)
                t.join(timeout=60)
                check(err.count("\n") == 1 and want in err, (want, err))
        finally:
            for c in held:
                c.close()
            srv.close()
            shutil.rmtree(home, ignore_errors=True)

    def query_token_off_and_pairing_off():
        off = Daemon("pair-off", config={"gateway": {"allow_query_token": False}})
        none = Daemon("pair-none", config={"gateway": {"require_pairing": False}})
        try:
            off.start()
            status, _, doc = pair(off, log_code(off))
            check(status == 200, (status, doc))
            t = doc["token"]
            status, doc = webhook(off, path=f"/webhook?token={t}")
            check(status == 401, (status, doc))
            status, doc = webhook(off, "-H", f"Authorization: Bearer {t}")
            check(status == 202, (status, doc))
            none.start()
            check("pairing code" not in none.logs(), none.logs())
            status, doc = webhook(none)
            check(status == 202, (status, doc))
            # With pairing off nothing proves who a client is: a request a
            # web page could have made (its rebound DNS name in Host, or
            # another site's Origin) is refused before it does anything.
            url = gateway_url(none)
            ws_head = ["-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
                       "-H", "Sec-WebSocket-Version: 13",
                       "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
            for args in ((url + "/api/sessions", "-H", f"Host: rebind.example:{none.gw_port}"),
                         ("-X", "POST", "-H", "Content-Type: application/json", "--data",
                          '{"message":"hi"}', url + "/webhook", "-H", "Host: kith.internal"),
                         ("-X", "POST", "-H", "Content-Type: application/json", "--data",
                          '{"message":"hi"}', url + "/webhook",
                          "-H", "Origin: https://attacker.example"),
                         (url + "/api/events", "-H", "Host: 127.0.0.1.attacker.example"),
                         (url + "/ws/chat", *ws_head, "-H", "Host: rebind.example"),
                         (url + "/", *ws_head, "-H", "Host: rebind.example")):
                status, _, body, _ = curl(*args)
                check(status == 403 and json.loads(body)["code"] == "forbidden", (args, status, body))
            for host in ("localhost", f"127.0.0.1:{none.gw_port}", "[::1]", "x"):
                status, _, body, _ = curl(url + "/api/sessions", "-H", f"Host: {host}")
                check(status == 200, (host, status, body))
            status, doc = webhook(none, "-H", f"Origin: http://127.0.0.1:{none.gw_port}")
            check(status == 202, ("same origin", status, doc))
            # Pairing on, a DNS name in Host is the operator's business: the token decides.
            status, doc = webhook(off, "-H", f"Authorization: Bearer {t}", "-H",
                                  "Host: kith.example.org")
            check(status == 202, (status, doc))
        finally:
            off.cleanup()
            none.cleanup()

    def lockout_survives_a_dual_stack_gateway():
        """A client locked out stays locked out when the gateway moves from
        127.0.0.1 to [::] (dual stack) across a restart: its IPv4 clients
        then arrive IPv4-mapped (::ffff:127.0.0.5) and are keyed as the
        IPv4 address they are. Before, the mapped text was a fresh key with
        no bad codes: the right code paired at once."""
        gport = free_port()
        dual = Daemon("pair-dual", config={"gateway": {"host": "127.0.0.1", "port": gport}})
        src = "127.0.0.5"
        try:
            dual.start()
            good = json.loads(curl(gateway_url(dual) + "/admin/paircode")[2])["code"]
            bad = "000000" if good != "000000" else "111111"
            for i in range(5):
                status, _, doc = pair(dual, bad, src)
            check(status == 429 and doc["code"] == "too_many_attempts", (status, doc))

            def to_dual_stack():
                path = os.path.join(dual.home, "config.json")
                with open(path) as f:
                    cfg = json.load(f)
                cfg["gateway"]["host"] = "::"
                with open(path, "w") as f:
                    json.dump(cfg, f)

            dual.restart(while_stopped=to_dual_stack)
            dual.wait_log("daemon: ready", count=2)
            check(re.search(r"gateway: listening on http://\[::\]:%d " % gport, dual.logs()),
                  dual.logs()[-2000:])
            good = json.loads(curl(gateway_url(dual) + "/admin/paircode")[2])["code"]
            status, headers, doc = pair(dual, good, src)
            check(status == 429 and doc["code"] == "too_many_attempts", ("forgotten", status, doc))
            check(0 < int(headers["retry-after"]) <= 300, headers)
            # A bad code from another address counts under that address.
            status, _, doc = pair(dual, bad, "127.0.0.6")
            check(status == 401 and doc["code"] == "invalid_pairing_code", (status, doc))
            db = sqlite3.connect(os.path.join(dual.home, "state.db"), timeout=30)
            try:
                keys = sorted(k for (k,) in db.execute("SELECT client FROM gateway_pair_lockouts"))
            finally:
                db.close()
            check(keys == ["127.0.0.5", "127.0.0.6"], keys)
        finally:
            dual.cleanup()

    def full_table_leaves_the_code_unspent():
        """With every token slot taken, /pair answers 507 too_many_tokens
        and tells the user to revoke one; the same code then pairs. Before,
        the code was spent before the table was found full, and the retry
        the answer asked for got 401 invalid_pairing_code."""
        full = Daemon("pair-full")
        try:
            full.start()
            check(full.stop() == 0, "daemon did not exit 0")
            db = sqlite3.connect(os.path.join(full.home, "state.db"), timeout=30)
            try:
                hashes = [os.urandom(32) for _ in range(1024)]
                db.executemany("INSERT INTO gateway_tokens (hash, created_ms, scope, name)"
                               " VALUES (?, 1, 'node', 'filler')", [(h,) for h in hashes])
                db.commit()
            finally:
                db.close()
            full.start()
            full.wait_log("daemon: ready", count=2)
            code = json.loads(curl(gateway_url(full) + "/admin/paircode")[2])["code"]
            status, _, doc = pair(full, code)
            check(status == 507 and doc["code"] == "too_many_tokens", (status, doc))
            status, _, body, _ = curl("-X", "DELETE",
                                      gateway_url(full) + "/admin/tokens/" + hashes[0].hex()[:16])
            check(status == 200, (status, body))
            status, _, doc = pair(full, code)
            check(status == 200 and TOKEN_RE.match(doc["token"]), ("the code was spent", status, doc))
        finally:
            full.cleanup()

    os.makedirs(node.home, exist_ok=True)
    with open(os.path.join(node.home, "config.json"), "w") as f:
        json.dump({"gateway": {"port": port}}, f)
    try:
        results.run(paircode_without_daemon)
        results.run(paircode_against_a_wrong_server)
        results.run(query_token_off_and_pairing_off)
        results.run(lockout_survives_a_dual_stack_gateway)
        results.run(full_table_leaves_the_code_unspent)
    finally:
        shutil.rmtree(node.home, ignore_errors=True)  # made again above, after the cleanup
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
