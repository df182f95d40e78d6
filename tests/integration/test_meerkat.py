"""tests/integration/test_meerkat.py — kith and a Meerkat node, both ways
(spec/WIRE.md §23), against a peer that behaves as Meerkat does
(meerkat_peer.py: one frame per connection, UUIDv4 ids, lifecycle acked,
Meerkat's typed decoding, raw key files, the pairing handshake):

- Meerkat → kith daemon: message, request, lifecycle, incarnation_fenced_
  message, each on a connection of its own, each acked after admission; a
  v4 id sent again is a replay; the Meerkat vectors verify and decode.
- kith send → Meerkat peer (trust row "profile": "meerkat"): message,
  request, lifecycle (acked), response (sent), one connection each; 1,000
  envelopes all acked; what Meerkat cannot read refused before sending.
- identity and trust files: keygen --import-meerkat gives Meerkat's PeerId;
  peers import reports renames and drops.
- pairing on the comms port: a right password trusts the peer (profile
  meerkat, meta, binding file) and it can send at once; wrong ones are
  refused, then locked out."""

import base64
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from meerkat_peer import MeerkatPeer, peer_id, pubkey_text  # noqa: E402
from peer import KITH, Daemon, Results, inbox_rows, kith, kith_run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "spec", "vectors", "meerkat.json")
PASSWORD = "correct-horse-battery-staple-0123456789"


def send(node, *args, expect=0):
    out, err = kith_run("send", "--home", node.home, "--to", "mk", *args, expect=expect)
    return [json.loads(line) for line in out.splitlines() if line.strip()], err


def main():
    tmp = tempfile.mkdtemp(prefix="kith-meerkat-")
    mk = MeerkatPeer(os.path.join(tmp, "meerkat-identity"))
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    node = Daemon("meerkat", config={"comms": {"pairing_password_env": "KITH_TEST_PAIRING"}})
    kith("peers", "add", "--home", node.home, "--name", "mk", "--pubkey", pubkey_text(mk.pk),
         "--addr", mk.addr, "--profile", "meerkat")
    mk.trusted.add(node.pk)
    node.start()
    res = Results()

    def meerkat_to_kith():
        fenced = {"type": "incarnation_fenced_message", "body": "fenced", "handling_mode": "queue",
                  "expected_recipient": {"mob_id": "m", "agent_identity": "a", "host_id": "h",
                                         "binding_generation": 1, "member_session_id": "s",
                                         "generation": 2, "fence_token": 3}}
        kinds = [{"type": "message", "body": "hi from meerkat", "content_taint": "clean"},
                 {"type": "request", "intent": "review", "params": {"pr": 42}},
                 {"type": "lifecycle", "kind": "mob.peer_added", "params": {"peer": "w2"}},
                 fenced]
        sent = []
        for k in kinds:
            env = mk.envelope(node.pk, k)
            ack = mk.send(node.port, env)
            assert isinstance(ack, dict), f"{k['type']}: no ack"
            assert ack["from"] == node.pk and ack["to"] == mk.pk
            sent.append(env["id"])
        rows = {bytes(r[0]): r[1] for r in inbox_rows(node, "envelope_id, kind")}
        for eid, k in zip(sent, kinds):
            assert rows.get(eid) == k["type"], f"{k['type']} not admitted as such: {rows.get(eid)}"
        # The same v4 id again: a replay, no ack, closed.
        again = mk.envelope(node.pk, kinds[0], eid=sent[0])
        assert mk.send(node.port, again) is None, "a replayed v4 id was acked"
        node.wait_log("reason=replay")

    def vectors_verify():
        v = json.load(open(VECTORS))
        assert v["meerkat_rct_signable_hex"].startswith("84 50 55 0e".replace(" ", ""))
        for vec in v["valid"]:
            data = bytes.fromhex(vec["frame_hex"])
            kith_run("envelope", "verify", stdin=data)
            out, _ = kith_run("envelope", "decode", stdin=data)
            assert b'"signature_valid":true' in out, vec["name"]

    def kith_to_meerkat():
        before = mk.connections
        r, _ = send(node, "--body", "hello meerkat")
        assert r[0]["status"] == "acked", r
        r, _ = send(node, "--request", "summarise", "--params", '{"n": 3}')
        assert r[0]["status"] == "acked", r
        req_id = r[0]["id"]
        r, _ = send(node, "--lifecycle", "mob.peer_retired", "--params", '{"peer": "w1"}')
        assert r[0]["status"] == "acked", r
        r, _ = send(node, "--response", req_id, "--status", "completed", "--result", '{"ok": true}')
        assert r[0]["status"] == "sent", r
        deadline_types = ["message", "request", "lifecycle", "response"]
        import time
        end = time.time() + 30
        while time.time() < end and len(mk.received) < 4:
            time.sleep(0.05)
        got = [e["kind"]["type"] for e in mk.received[-4:]]
        assert got == deadline_types, got
        assert mk.connections - before == 4, f"{mk.connections - before} connections for 4 envelopes"
        assert mk.refused == 0, f"the Meerkat peer refused {mk.refused}"

    def kith_to_meerkat_1000():
        before_conns, before_recv = mk.connections, len(mk.received)
        r, _ = send(node, "--body", "bulk", "--count", "1000")
        assert len(r) == 1000 and all(x["status"] == "acked" for x in r), \
            f"{sum(x['status'] == 'acked' for x in r)} of {len(r)} acked"
        assert len(mk.received) - before_recv == 1000
        assert mk.connections - before_conns == 1000

    def refused_before_sending():
        _, err = send(node, "--request", "r", "--params", '{"blob": {"$bytes": "AAE="}}', expect=1)
        assert "Meerkat peer cannot read" in err and "kind.params.blob" in err, err
        _, err = send(node, "--lifecycle", "peer_retired", expect=1)
        assert "mob.peer_added" in err, err
        _, err = send(node, "--request", "r", "--params", "-18446744073709551616", expect=1)
        assert "-2^63" in err, err

    def identity_import():
        home = os.path.join(tmp, "imported")
        out, _ = kith_run("keygen", "--home", home, "--import-meerkat", mk.dir)
        ident = json.loads(out)
        assert ident["peer_id"] == peer_id(mk.pk), (ident, peer_id(mk.pk))
        assert ident["pubkey"] == pubkey_text(mk.pk)
        kith_run("id", "--home", home, "--export-meerkat", os.path.join(tmp, "exported"))
        for f in ("identity.key", "identity.pub"):
            assert open(os.path.join(tmp, "exported", f), "rb").read() == \
                open(os.path.join(mk.dir, f), "rb").read(), f
        _, err = kith_run("keygen", "--home", home, "--import-meerkat", mk.dir, expect=1)
        assert "already exists" in err, err

    def trust_import():
        other = MeerkatPeer(os.path.join(tmp, "other"))
        other.close()
        doc = {"peers": [
            {"name": "Worker One (eu)", "pubkey": pubkey_text(other.pk), "addr": "tcp://127.0.0.1:7000",
             "meta": {"description": "a worker", "labels": {"role": "worker"}}, "reachability": {}},
            {"name": "bad", "pubkey": "ed25519:AAAA", "addr": "tcp://127.0.0.1:7001"},
        ]}
        path = os.path.join(tmp, "meerkat_trusted_peers.json")
        json.dump(doc, open(path, "w"))
        home = os.path.join(tmp, "import-home")
        os.makedirs(home, mode=0o700)
        out, _ = kith_run("peers", "import", path, "--home", home)
        assert 'renamed peers[0] "Worker One (eu)" to "Worker-One--eu-"' in out, out
        assert 'key "reachability" left behind' in out, out
        assert "dropped peers[1]" in out, out
        assert "imported 1 (1 renamed), dropped 1" in out, out
        listed = json.loads(kith("peers", "list", "--json", "--home", home))
        row = listed["peers"][0]
        assert row["profile"] == "meerkat" and row["meta"]["labels"]["role"] == "worker", row
        # Rows kith cannot take are dropped one by one, saying why; meta it
        # refuses is left behind without losing the peer.
        third, fourth = MeerkatPeer(os.path.join(tmp, "third")), MeerkatPeer(os.path.join(tmp, "fourth"))
        third.close()
        fourth.close()
        doc = {"peers": [
            42,
            {"name": "noaddr", "pubkey": pubkey_text(third.pk)},
            {"name": "loud", "pubkey": pubkey_text(fourth.pk), "addr": "tcp://127.0.0.1:7002",
             "meta": {"description": "two\nlines"}},
        ]}
        json.dump(doc, open(path, "w"))
        out, _ = kith_run("peers", "import", path, "--home", home)
        assert 'dropped peers[0] "": not an object' in out, out
        assert 'dropped peers[1] "noaddr": addr: missing' in out, out
        assert 'peers[2] "loud": meta left behind' in out, out
        listed = json.loads(kith("peers", "list", "--json", "--home", home))
        loud = [p for p in listed["peers"] if p["name"] == "loud"]
        assert len(loud) == 1 and "meta" not in loud[0] and len(listed["peers"]) == 2, listed
        # A file that is not a Meerkat trust file at all changes nothing.
        for text, needle in (("{not json", "not JSON"), ('{"peers": 5}', 'no "peers" array'),
                             (" " * (8 << 20) + "{}", "more than the")):
            open(path, "w").write(text)
            _, err = kith_run("peers", "import", path, "--home", home, expect=1)
            assert needle in err, (needle, err)
        assert json.loads(kith("peers", "list", "--json", "--home", home)) == listed

    def pairing_refusals():
        # Each refusal is one typed error line and a close; none of these
        # is a wrong password, so the source address is not locked out.
        def lines(*out, read_first=False):
            with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
                f = s.makefile("rwb")
                got = []
                for i, line in enumerate(out):
                    f.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")
                    f.flush()
                    if read_first and i == 0:
                        got.append(json.loads(f.readline()))
                got.append(json.loads(f.readline()))
                assert f.readline() == b"", "the connection stayed open after a refusal"
                return got

        def code(got):
            assert got["kind"] == "meerkat_pairing_error" and got["version"] == 1, got
            return got["code"]

        hello = {"kind": "meerkat_pairing_hello", "version": 1}
        assert code(lines({"kind": "meerkat_pairing_hello", "version": 2})[-1]) == \
            "unsupported_version"
        assert code(lines({"kind": "meerkat_pairing_proof", "caller": {}})[-1]) in \
            ("unexpected", "malformed")
        assert code(lines(b"{not json}\n")[-1]) == "malformed"
        assert code(lines(b'{"kind": "' + b"x" * 17000 + b'"}\n')[-1]) == "too_long"
        got = lines(hello, hello, read_first=True)
        assert got[0]["kind"] == "meerkat_pairing_challenge" and code(got[1]) == "unexpected", got
        # A right proof for an address kith cannot dial.
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
            f = s.makefile("rwb")
            f.write(json.dumps(hello).encode() + b"\n")
            f.flush()
            ch = json.loads(f.readline())
            key, addr = node.pubkey_text, "ftp://example.org/"
            proof = base64.b64encode(hashlib.sha256(
                b"meerkat-comms-pairing-v1\0" + PASSWORD.encode() + b"\0" +
                ch["challenge"].encode() + b"\0" + key.encode() + b"\0" + addr.encode()).digest())
            f.write(json.dumps({"kind": "meerkat_pairing_proof",
                                "caller": {"name": "x", "address": addr,
                                           "identity": {"kind": "ed25519_public_key",
                                                        "public_key": key}},
                                "password_proof": proof.decode()}).encode() + b"\n")
            f.flush()
            assert code(json.loads(f.readline())) == "bad_address"

    def pairing():
        newbie = MeerkatPeer(os.path.join(tmp, "newbie"))
        done = newbie.pair(node.port, PASSWORD, name="new meerkat")
        assert done and done["kind"] == "meerkat_pairing_complete", done
        target = done["challenge_target"]
        assert target["identity"]["public_key"] == node.pubkey_text, target
        # Where to reach kith: the comms port bound (the config says port 0).
        assert done["target"]["address"] == f"tcp://127.0.0.1:{node.port}", done["target"]
        node.wait_log("paired new-meerkat")
        listed = json.loads(kith("peers", "list", "--json", "--home", node.home))
        row = [p for p in listed["peers"] if p["pubkey"] == pubkey_text(newbie.pk)][0]
        assert row["profile"] == "meerkat" and row["addr"] == newbie.addr, row
        assert row["meta"]["labels"]["meerkat_name"] == "new meerkat", row
        lines = open(os.path.join(node.home, "pairing_bindings.jsonl")).read().splitlines()
        assert json.loads(lines[-1])["peer_id"] == peer_id(newbie.pk)
        # Trusted at once: its envelope is acked (the daemon reloaded trust).
        node.wait_log("reloaded (a Meerkat peer paired)")
        ack = newbie.send(node.port, newbie.envelope(node.pk, {"type": "message", "body": "paired"}))
        assert isinstance(ack, dict), "a freshly paired peer was not acked"
        # Wrong passwords: refused, then locked out.
        for _ in range(5):
            bad = newbie.pair(node.port, PASSWORD, tamper=True)
            assert bad and bad.get("code") == "invalid_proof", bad
        locked = newbie.pair(node.port, PASSWORD)
        assert locked and locked.get("code") == "locked_out", locked
        newbie.close()

    def lockout_survives_restart():
        # The lockout is kept in state.db: a restart forgets no wrong proof.
        node.stop()
        node.start()
        again = MeerkatPeer(os.path.join(tmp, "again"))
        try:
            locked = again.pair(node.port, PASSWORD)
            assert locked and locked.get("code") == "locked_out", locked
        finally:
            again.close()

    for fn in (meerkat_to_kith, vectors_verify, kith_to_meerkat, kith_to_meerkat_1000,
               refused_before_sending, identity_import, trust_import, pairing_refusals, pairing,
               lockout_survives_restart):
        res.run(fn)
    try:
        res.stopped(node)
    finally:
        node.cleanup()
        mk.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return res.summary()


if __name__ == "__main__":
    sys.exit(main())
