"""tests/integration/test_adversary_comms.py — the comms port attacked from
outside as a hostile peer would (spec/WIRE.md §6.2, §9.1, §10, §23.6),
against a real `kith daemon`: only what the other comms tests leave out.
Pairing guesses on handshakes opened before a lockout, a right proof
between wrong ones, a kill -9 right after the fifth wrong one, a listener
moved to dual stack; a flood of fresh unknown keys against the bound on
their replay windows; frames and event lines trickled a byte at a time; a
local user holding his address's share of silent connections (TCP from
127.0.0.1, and the Unix socket, whose peers are all one source) while a
trusted peer on the same machine still gets in.
Clients are raw sockets, cbor2 and PyNaCl (peer.py); the outcomes are read
from the wire, state.db, the trust file and /metrics. No timing is
asserted: every wait is for an outcome, with a generous bound."""

import base64
import hashlib
import json
import os
import signal
import socket
import sqlite3
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Conn, Daemon, Peer, Results, frame, free_port, kith, pubkey_text,  # noqa: E402
                  wait_metric)

PASSWORD = "adversary comms test password, 32+ bytes long"
HELLO = json.dumps({"kind": "meerkat_pairing_hello", "version": 1}).encode() + b"\n"


# ------------------------------------------------------------------ pairing (WIRE §23.6)

def s_handshake(port, src):
    """A pairing handshake from source address src, up to its challenge."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(30)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    f = s.makefile("rwb")
    f.write(HELLO)
    f.flush()
    ch = json.loads(f.readline())
    assert ch["kind"] == "meerkat_pairing_challenge", ch
    return s, f, ch["challenge"]


def s_proof(f, challenge, password, key, addr="tcp://127.0.0.1:9"):
    """Sends a proof (right when password is the daemon's); returns the answer."""
    proof = base64.b64encode(hashlib.sha256(
        b"meerkat-comms-pairing-v1\0" + password.encode() + b"\0" + challenge.encode() + b"\0" +
        key.encode() + b"\0" + addr.encode()).digest()).decode()
    f.write(json.dumps({"kind": "meerkat_pairing_proof",
                        "caller": {"name": "guesser", "address": addr,
                                   "identity": {"kind": "ed25519_public_key",
                                                "public_key": key}},
                        "password_proof": proof}).encode() + b"\n")
    f.flush()
    line = f.readline()
    return json.loads(line) if line else None


def pairing_guesses_stop_at_the_lockout():
    """Handshakes opened before the 5th wrong proof locked the address out
    are answered locked_out too, even for the right password. Before, the
    lock was looked at only when a handshake began, so an attacker who
    opened 32 handshakes first had 32 guesses per lock instead of 5 — and a
    right guess among them paired its key."""
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    node = Daemon("advpair", config={
        "comms": {"pairing_password_env": "KITH_TEST_PAIRING"},
        "limits": {"comms_unauth_per_source_max": 64}})
    node.start()
    held = []
    try:
        key = pubkey_text(Peer().pk)
        for _ in range(8):
            held.append(s_handshake(node.port, "127.0.0.7"))
        for s, f, ch in held[:5]:
            got = s_proof(f, ch, "a wrong guess", key)
            assert got and got.get("code") == "invalid_proof", got
        # The lock holds on the handshakes already open: wrong or right.
        got = s_proof(held[5][1], held[5][2], "another wrong guess", key)
        assert got and got.get("code") == "locked_out", got
        got = s_proof(held[6][1], held[6][2], PASSWORD, key)
        assert got and got.get("code") == "locked_out", f"a locked-out address paired: {got}"
        peers = json.loads(kith("peers", "list", "--json", "--home", node.home))["peers"]
        assert not [p for p in peers if p["pubkey"] == key], peers
        # Another address is not locked: its right proof pairs.
        s, f, ch = s_handshake(node.port, "127.0.0.8")
        held.append((s, f, ch))
        got = s_proof(f, ch, PASSWORD, key)
        assert got and got["kind"] == "meerkat_pairing_complete", got
    finally:
        for s, _, _ in held:
            s.close()
        node.cleanup()


def pairing_right_proof_restarts_the_count():
    """Five wrong proofs *in a row* lock an address out (WIRE §23.6): a
    right proof in between starts the count again, as a right /pair code
    does. Before, every wrong proof counted for good, so an operator who
    mistyped now and then was locked out by the fifth over any span."""
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    node = Daemon("advrow", config={"comms": {"pairing_password_env": "KITH_TEST_PAIRING"}})
    node.start()
    try:
        key = pubkey_text(Peer().pk)
        for round_ in range(2):
            for _ in range(4):
                s, f, ch = s_handshake(node.port, "127.0.0.9")
                got = s_proof(f, ch, "a typo", key)
                s.close()
                assert got and got.get("code") == "invalid_proof", (round_, got)
            s, f, ch = s_handshake(node.port, "127.0.0.9")
            got = s_proof(f, ch, PASSWORD, key)
            s.close()
            assert got and got["kind"] == "meerkat_pairing_complete", (round_, got)
    finally:
        node.cleanup()


def s_lockout_row(node, src):
    """The wrong-proof count stored for src: (failures, until_ms), or None."""
    db = sqlite3.connect(os.path.join(node.home, "state.db"), timeout=30)
    try:
        return db.execute("SELECT failures, until_ms FROM gateway_pair_lockouts WHERE client=?",
                          ("comms-pair:" + src,)).fetchone()
    finally:
        db.close()


def pairing_wrong_proof_answered_once_stored():
    """A wrong proof is answered only once its count is in state.db, so a
    crash right after the fifth answer (kill -9 here) keeps the lockout.
    Before, the answer went first and the count a moment later: a kill -9
    after the fifth refusal often restarted the daemon with no lock."""
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    node = Daemon("advdurable", config={
        "comms": {"pairing_password_env": "KITH_TEST_PAIRING", "address": f"127.0.0.1:{free_port()}"}})
    node.start()
    try:
        key = pubkey_text(Peer().pk)
        src = "127.0.0.11"
        for i in range(1, 6):
            s, f, ch = s_handshake(node.port, src)
            got = s_proof(f, ch, "a wrong guess", key)
            s.close()
            assert got and got.get("code") == "invalid_proof", got
            row = s_lockout_row(node, src)
            if i < 5:
                assert row and row[0] == i, f"wrong proof {i} answered before it was stored: {row}"
            else:
                assert row and row[1] > 0, f"the lockout was answered before it was stored: {row}"
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        node.stop()
        node.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.bind((src, 0))
        sock.connect(("127.0.0.1", node.port))
        f = sock.makefile("rwb")
        f.write(HELLO)
        f.flush()
        got = json.loads(f.readline())
        sock.close()
        assert got.get("code") == "locked_out", f"kill -9 forgot the lockout: {got}"
    finally:
        node.cleanup()


def pairing_lockout_survives_a_dual_stack_listener():
    """An address locked out stays locked out when the comms listener moves
    from 127.0.0.1 to [::] (dual stack) across a restart: its IPv4 clients
    then arrive IPv4-mapped (::ffff:127.0.0.1) and are keyed as the IPv4
    address they are. Before, the mapped text was a new key with no
    wrong proofs, and the restart had forgotten the lock."""
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    port = free_port()
    node = Daemon("advmapped", config={
        "comms": {"pairing_password_env": "KITH_TEST_PAIRING", "address": f"127.0.0.1:{port}"}})
    node.start()
    try:
        key = pubkey_text(Peer().pk)
        for _ in range(5):
            s, f, ch = s_handshake(node.port, "127.0.0.1")
            got = s_proof(f, ch, "a wrong guess", key)
            s.close()
            assert got and got.get("code") == "invalid_proof", got

        def dual_stack():
            with open(os.path.join(node.home, "config.json")) as f:
                cfg = json.load(f)
            cfg["comms"]["address"] = f"[::]:{port}"
            with open(os.path.join(node.home, "config.json"), "w") as f:
                json.dump(cfg, f)

        node.restart(while_stopped=dual_stack)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            f = s.makefile("rwb")
            f.write(HELLO)
            f.flush()
            got = json.loads(f.readline())
        assert got.get("code") == "locked_out", f"the lock was forgotten on [::]: {got}"
    finally:
        node.cleanup()


# ------------------------------------------------------------------ unknown keys (WIRE §6.2)

def unknown_keys_are_bounded():
    """With require_peer_auth false any key may send, and each gets a
    replay window: 4 096 fresh keys take them all (v4 ids, kept for the
    24 h horizon), the 4 097th is refused inbox_full (detail
    unknown_senders_full: a capacity refusal, FIN without an ack), while a
    key that holds a window and a trusted key are still admitted."""
    alice = Peer()
    node = Daemon("advunknown", config={"comms": {"require_peer_auth": False,
                                                  "inbox_capacity": 8192}})
    node.trust("alice", alice.pk)
    node.start()
    try:
        c = Conn(node.uds)
        first = None
        for i in range(4096):
            stranger = Peer()
            first = first or stranger
            m = stranger.message(node.pk, "hello", eid=uuid.uuid4().bytes)
            c.send(frame(m))
            ack = c.read_frame()
            assert ack and ack["kind"]["in_reply_to"] == m["id"], f"stranger {i} not acked"
        m = Peer().message(node.pk, "one too many", eid=uuid.uuid4().bytes)
        c.send(frame(m))
        assert c.read_frame() is None, "the 4 097th unknown key was acked"
        c.close()
        wait_metric(node, 'kith_comms_rejected_total{reason="inbox_full"}', lambda v: v == 1)
        node.wait_log("reason=inbox_full detail=unknown_senders_full")
        for who in (first, alice):
            c = Conn(node.uds)
            m = who.message(node.pk, "still here", eid=uuid.uuid4().bytes)
            c.send(frame(m))
            ack = c.read_frame()
            c.close()
            assert ack and ack["kind"]["in_reply_to"] == m["id"], "a key with a window was refused"
    finally:
        node.cleanup()


# ------------------------------------------------------------------ slow senders (WIRE §9.1, §10)

def s_dribble(sock, data, pause):
    """Writes data a byte at a time; 'rst' once the daemon cut the
    connection, 'sent' when every byte went out (a bound not enforced)."""
    try:
        for i in range(len(data)):
            sock.sendall(data[i:i + 1])
            time.sleep(pause)
    except (ConnectionResetError, BrokenPipeError):
        return "rst"
    return "sent"


def dribbled_frames_meet_their_deadlines():
    """A frame trickled a byte at a time never buys more time: the first
    one is cut at the first-frame deadline though bytes keep coming, a
    later one at the frame deadline counted from its first byte, and a
    plain-event line that never ends is cut too (its 64 KiB are skipped,
    not held). Each would take ~20 s to finish at this pace."""
    alice = Peer()
    node = Daemon("advslow", config={
        "comms": {"auth": "none", "event_address": "127.0.0.1:0"},
        "limits": {"first_frame_timeout_ms": 600, "frame_timeout_ms": 900,
                   "comms_idle_timeout_ms": 120000}})
    node.trust("alice", alice.pk)
    node.start()
    try:
        slow = alice.message(node.pk, "s" * 2000)
        s = socket.create_connection(("127.0.0.1", node.port), timeout=30)
        assert s_dribble(s, frame(slow), 0.01) == "rst", "a dribbled first frame was not cut"
        s.close()
        c = Conn(("127.0.0.1", node.port))
        first = alice.message(node.pk, "first")
        c.send(frame(first))
        assert c.read_frame()["kind"]["in_reply_to"] == first["id"]
        assert s_dribble(c.s, frame(slow), 0.01) == "rst", "a dribbled later frame was not cut"
        c.close()
        wait_metric(node, 'kith_comms_conn_cut_total{kind="comms",reason="deadline"}',
                    lambda v: v >= 2)
        ev = socket.create_connection(("127.0.0.1", node.event_port), timeout=30)
        chunk = b"x" * 4096
        try:
            for _ in range(5000):  # 20 MB, far more than a deadline lets through
                ev.sendall(chunk)
                time.sleep(0.004)
            how = "sent"
        except (ConnectionResetError, BrokenPipeError):
            how = "rst"
        ev.close()
        assert how == "rst", "an endless event line was not cut"
        m = wait_metric(node, 'kith_comms_conn_cut_total{kind="events",reason="deadline"}',
                        lambda v: v >= 1)
        assert m["kith_comms_partial_bytes"] == 0, m["kith_comms_partial_bytes"]
        assert m["kith_events_queued_total"] == 0, m["kith_events_queued_total"]
    finally:
        node.cleanup()


# ------------------------------------------------------------------ one source's share (WIRE §9.1)

SRC_EVICTED = 'kith_comms_conn_cut_total{kind="comms",reason="source_evicted"}'
REFUSED_SRC = 'kith_comms_conn_refused_total{kind="comms",reason="per_source"}'
SHARE = 32  # limits.comms_unauth_per_source_max, by default


def s_silent(addr):
    """An attacker's silent connection to addr (a (host, port) or a Unix
    path), held open; None when it was reset before connect returned."""
    fam = socket.AF_INET if isinstance(addr, tuple) else socket.AF_UNIX
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(30)
    try:
        s.connect(addr)
    except ConnectionResetError:
        s.close()
        return None
    return s


def s_ended(s, timeout=60):
    """True when the daemon ended s: a reset over TCP (what it does to an
    evicted one); a Unix socket has no reset, its peer reads the end."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False
    return s.family == socket.AF_UNIX


def s_share_held_trusted_still_acked(name, addr_of):
    """200 silent connections from one source, each held, against its
    share of 32; then a trusted peer from the same source sends on fresh
    connections, with more silent ones opened between: every envelope is
    acked. Before, the 33rd and every later connection from that source
    was reset at accept (reason=per_source) for as long as the attacker
    held 32, the trusted peer's included."""
    alice = Peer()
    node = Daemon(name)
    node.trust("alice", alice.pk)
    node.start()
    addr = addr_of(node)
    held = []
    try:
        for _ in range(200):
            held.append(s_silent(addr))
        m = wait_metric(node, SRC_EVICTED, lambda v: v >= 200 - SHARE)
        assert m[SRC_EVICTED] == 200 - SHARE, m[SRC_EVICTED]
        assert m.get(REFUSED_SRC, 0) == 0, m[REFUSED_SRC]
        # Never more than the share unauthenticated from it.
        assert m["kith_comms_unauth_connections"] == SHARE, m["kith_comms_unauth_connections"]
        # The oldest were the ones cut, with a reset; the newest are held.
        assert held[0] is None or s_ended(held[0]), "the oldest silent one was not cut"
        for i in range(5):
            c = Conn(addr)
            msg = alice.message(node.pk, f"trusted {i}")
            c.send(frame(msg))
            ack = c.read_frame()
            assert ack and ack["kind"]["type"] == "ack" and ack["kind"]["in_reply_to"] == msg["id"], \
                (i, ack)
            c.close()
            for _ in range(10):
                held.append(s_silent(addr))
        # Each trusted connection cut one and left the share when its
        # envelope verified; the next silent one took its place.
        m = wait_metric(node, SRC_EVICTED, lambda v: v >= 200 + 50 - SHARE)
        assert m[SRC_EVICTED] == 200 + 50 - SHARE, m[SRC_EVICTED]
        assert m.get(REFUSED_SRC, 0) == 0, m[REFUSED_SRC]
        assert m["kith_comms_unauth_connections"] <= SHARE, m["kith_comms_unauth_connections"]
        assert "reason=source_evicted" in node.logs()
    finally:
        for s in held:
            if s:
                s.close()
        node.cleanup()


def silent_share_on_loopback_does_not_lock_out():
    s_share_held_trusted_still_acked("srcshare_tcp", lambda node: ("127.0.0.1", node.port))


def silent_share_on_unix_socket_does_not_lock_out():
    s_share_held_trusted_still_acked("srcshare_uds", lambda node: node.uds)


def pairing_handshake_outlasts_silent_newcomers():
    """A pairing handshake under way is not silent to the guard: newcomers
    from its address that find the share full cut the silent ones first,
    and the handshake pairs. Before, it counted as silent and, being the
    oldest, was the first one cut."""
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    node = Daemon("advpairshare", config={
        "comms": {"pairing_password_env": "KITH_TEST_PAIRING"},
        "limits": {"comms_unauth_per_source_max": 4}})
    node.start()
    held = []
    try:
        s, f, ch = s_handshake(node.port, "127.0.0.1")
        for _ in range(12):
            held.append(s_silent(("127.0.0.1", node.port)))
        wait_metric(node, SRC_EVICTED, lambda v: v >= 9)
        got = s_proof(f, ch, PASSWORD, pubkey_text(Peer().pk))
        s.close()
        assert got and got["kind"] == "meerkat_pairing_complete", got
    finally:
        for x in held:
            if x:
                x.close()
        node.cleanup()


def main():
    results = Results()
    for fn in (pairing_guesses_stop_at_the_lockout, pairing_right_proof_restarts_the_count,
               pairing_wrong_proof_answered_once_stored,
               pairing_lockout_survives_a_dual_stack_listener, unknown_keys_are_bounded,
               dribbled_frames_meet_their_deadlines, silent_share_on_loopback_does_not_lock_out,
               silent_share_on_unix_socket_does_not_lock_out,
               pairing_handshake_outlasts_silent_newcomers):
        results.run(fn)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
