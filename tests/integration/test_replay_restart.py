"""tests/integration/test_replay_restart.py — an admitted id stays refused
across restarts (WIRE §6.1): the real `kith daemon` admits and acks an
envelope from the independent peer (peer.py: cbor2 + PyNaCl), is stopped by
SIGTERM or killed with SIGKILL, restarts on the same home, and must then
refuse as `replay` both the exact same bytes and a different body reusing
the id — for a UUIDv7 id and for a UUIDv4 id (Meerkat's, which carries no
time) — without an ack, counted on /metrics. And the stored floors (a v7
id at or below its sender's floor, or the floor for every sender, is a
replay) are back in force after a restart."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from peer import Conn, Daemon, Peer, Results, frame, uuid7, verify_envelope  # noqa: E402


def rejected_replay(node):
    out = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{node.gw_port}/metrics"],
                         capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        if line.startswith('kith_comms_rejected_total{reason="replay"} '):
            return int(line.split()[1])
    raise AssertionError(f"no replay counter in /metrics:\n{out}")


def send_acked(node, sender, env):
    c = Conn(("127.0.0.1", node.port))
    c.send(frame(env))
    ack = c.read_frame()
    c.close()
    assert ack is not None, f"closed instead of an ack:\n{node.logs()}"
    assert ack["kind"]["type"] == "ack" and ack["kind"]["in_reply_to"] == env["id"], ack
    assert verify_envelope(ack), "ack signature does not verify"


def send_refused(node, data):
    c = Conn(("127.0.0.1", node.port))
    c.send(data)
    got = c.read_frame()
    c.close()
    assert got is None, f"expected a close without an ack, got {got}"


def restart(node, sig):
    node.stop(sig)
    # The log is read for the new ports: start it afresh.
    open(node.log_path, "w").close()
    node.start()


def case(sig, version):
    alice = Peer()
    # TCP only: a kill -9 leaves the Unix socket file behind, and reusing
    # it after a crash is another test's concern (issue 8, item 4).
    node = Daemon(f"replay-{version}-{sig.name.lower()}", config={"comms": {"uds_path": None}})
    try:
        node.trust("alice", alice.pk)
        node.start()
        eid = uuid.uuid4().bytes if version == "v4" else None
        env = alice.message(node.pk, "the original", eid=eid)
        data = frame(env)
        send_acked(node, alice, env)

        restart(node, sig)
        base = rejected_replay(node)
        send_refused(node, data)
        node.wait_log("reason=replay")
        assert rejected_replay(node) == base + 1, "the resend was not counted as a replay"

        other = alice.message(node.pk, "a different body, the same id", eid=env["id"])
        send_refused(node, frame(other))
        node.wait_log("reason=replay", count=2)
        assert rejected_replay(node) == base + 2, "the reused id was not counted as a replay"

        # A second restart still remembers, and fresh envelopes still pass.
        restart(node, sig)
        send_refused(node, data)
        node.wait_log("reason=replay")
        fresh = alice.message(node.pk, "a fresh one",
                              eid=uuid.uuid4().bytes if version == "v4" else None)
        send_acked(node, alice, fresh)
    finally:
        node.cleanup()


def floors_after_restart():
    """Floors as an earlier run stored them (a peer's own, and the one for
    every sender under the all-zero key) refuse a fresh v7 id at or below
    them once the node is up again; ids above them pass."""
    alice, bob = Peer(), Peer()
    node = Daemon("replay-floors", config={"comms": {"uds_path": None}})
    try:
        node.trust("alice", alice.pk)
        node.trust("bob", bob.pk)
        node.start()
        node.stop(signal.SIGTERM)
        now = int(time.time() * 1000)
        db = sqlite3.connect(os.path.join(node.home, "state.db"))
        db.execute("INSERT INTO replay_floor(sender, floor_ms) VALUES(?, ?)",
                   (bytes(alice.pk), now - 60_000))
        db.execute("INSERT INTO replay_floor(sender, floor_ms) VALUES(zeroblob(32), ?)",
                   (now - 90_000,))
        db.commit()
        db.close()
        open(node.log_path, "w").close()
        node.start()
        base = rejected_replay(node)
        # Fresh (within ±5 min) but at or below the floor: replays.
        send_refused(node, frame(alice.message(node.pk, "below", eid=uuid7(now - 120_000))))
        send_refused(node, frame(bob.message(node.pk, "below all", eid=uuid7(now - 120_000))))
        node.wait_log("reason=replay", count=2)
        assert rejected_replay(node) == base + 2, "the floors did not refuse"
        # Above them: admitted (bob between the two floors: only the
        # all-sender floor is his).
        send_acked(node, alice, alice.message(node.pk, "above", eid=uuid7(now - 30_000)))
        send_acked(node, bob, bob.message(node.pk, "above all", eid=uuid7(now - 70_000)))
    finally:
        node.cleanup()


def main():
    results = Results()
    results.run(floors_after_restart)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for version in ("v7", "v4"):
            results.run(case, sig, version, name=f"replay_after_{sig.name.lower()}_{version}")
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
