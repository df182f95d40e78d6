"""tests/integration/test_comms_limits.py — the bounds that keep
unauthenticated clients from taking what trusted peers need (DESIGN §10,
spec/WIRE.md §9.1), against a real `kith daemon` with the limits scaled down
in config.json: silent connections from one address and from many, deadlines
(first frame, a frame once begun, idle), the partial-frame budget, and the
plain-event listener's cap, deadlines and drain. Clients are raw sockets and
the independent peer in peer.py; numbers are read from /metrics with curl.
No timing is asserted: every wait is for an outcome, with a generous bound."""

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Conn, Daemon, Peer, Results, events, frame, wait_metric  # noqa: E402
from peer import metrics_map as metrics  # noqa: E402

ATTACKER = "127.0.0.2"   # silent clients come from here (or 127.0.0.2..n)
TRUSTED = "127.0.0.1"    # the trusted peer comes from here


def dial(port, src=ATTACKER, timeout=30):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def try_dial(port, src=ATTACKER):
    """An attacker's connection; None when it was reset before connect
    returned (the daemon refused it at once)."""
    try:
        return dial(port, src)
    except ConnectionResetError:
        return None


def health_ok(node):
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                        f"http://127.0.0.1:{node.gw_port}/health"],
                       capture_output=True, text=True, timeout=60)
    return p.stdout == "200"


def ended(s, timeout=60):
    """Waits for the daemon to end the connection: 'rst', 'fin', or None."""
    s.settimeout(timeout)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return "fin"
    except ConnectionResetError:
        return "rst"
    except (TimeoutError, socket.timeout):
        return None


def wait_re(node, pattern, timeout=60):
    """Waits for a line matching pattern: the daemon logs from its own thread."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if re.search(pattern, node.logs()):
            return
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in daemon log:\n{node.logs()[-3000:]}")


def conn_from(node, src):
    """A peer.Conn whose socket comes from source address `src`."""
    c = Conn.__new__(Conn)
    c.s = dial(node.port, src=src, timeout=60)
    c.buf = b""
    return c


def trusted_acked(node, alice, src=TRUSTED, body="trusted"):
    c = conn_from(node, src)
    m = alice.message(node.pk, body)
    c.send(frame(m))
    ack = c.read_frame()
    c.close()
    return ack is not None and ack["kind"]["type"] == "ack" and ack["kind"]["in_reply_to"] == m["id"]


REFUSED_SRC = 'kith_comms_conn_refused_total{kind="comms",reason="per_source"}'
EVICTED = 'kith_comms_conn_cut_total{kind="comms",reason="unauth_evicted"}'
SRC_EVICTED = 'kith_comms_conn_cut_total{kind="comms",reason="source_evicted"}'
BUDGET_CUT = 'kith_comms_conn_cut_total{kind="comms",reason="partial_budget"}'
DEADLINE_CUT = 'kith_comms_conn_cut_total{kind="comms",reason="deadline"}'
EV_DEADLINE = 'kith_comms_conn_cut_total{kind="events",reason="deadline"}'
EV_REFUSED = 'kith_comms_conn_refused_total{kind="events",reason="per_source"}'


# ------------------------------------------------------------------ lockout

def silent_from_one_address_cannot_lock_out():
    """300 silent connections from one address against a connection cap of
    256: before the unauthenticated bounds, they filled the cap and the
    trusted peer was refused; now never more than 16 from it are
    unauthenticated (each newcomer cuts the address's oldest silent one,
    none is refused), the trusted peer is acked — from another address and
    from that one — and /health answers."""
    alice = Peer()
    node = Daemon("lockout", config={"limits": {
        "comms_connections_max": 256, "comms_unauth_connections_max": 64,
        "comms_unauth_per_source_max": 16}})
    node.trust("alice", alice.pk)
    node.start()
    held = []
    try:
        for _ in range(300):
            held.append(try_dial(node.port))
        m = wait_metric(node, SRC_EVICTED, lambda v: v >= 300 - 16)
        assert m[SRC_EVICTED] == 300 - 16, m[SRC_EVICTED]
        assert m[REFUSED_SRC] == 0, m[REFUSED_SRC]
        assert m["kith_comms_unauth_connections"] == 16, m
        assert held[0] is None or ended(held[0]) == "rst", "the oldest was not reset"
        assert trusted_acked(node, alice), "the trusted peer was not acked"
        assert trusted_acked(node, alice, src=ATTACKER), "a trusted peer at that address was not"
        assert health_ok(node), "/health did not answer 200"
        m = metrics(node)
        assert m["kith_comms_unauth_connections"] <= 16, m
    finally:
        for s in held:
            if s:
                s.close()
        node.cleanup()


def silent_from_many_addresses_evict_the_oldest():
    """16 silent connections from each of 20 addresses (320) against an
    unauthenticated share of 64: the oldest are cut to make room, never the
    newcomer, so a trusted peer's fresh connection always gets in."""
    alice = Peer()
    node = Daemon("evict", config={"limits": {
        "comms_connections_max": 256, "comms_unauth_connections_max": 64,
        "comms_unauth_per_source_max": 16}})
    node.trust("alice", alice.pk)
    node.start()
    held = []
    try:
        for i in range(20):
            for _ in range(16):
                held.append(try_dial(node.port, src=f"127.0.0.{10 + i}"))
        m = wait_metric(node, EVICTED, lambda v: v >= 320 - 64)
        assert m["kith_comms_unauth_connections"] <= 64, m
        # The first ones were the oldest: cut with a reset.
        assert held[0] is None or ended(held[0]) == "rst"
        assert trusted_acked(node, alice), "the trusted peer was not acked"
        assert health_ok(node)
    finally:
        for s in held:
            if s:
                s.close()
        node.cleanup()


def s_mid_frames(node, n, data_of, src=ATTACKER):
    """n connections from src, each sent data_of(i) (a frame's start), once
    the daemon holds each one's partial frame: a connection mid-frame."""
    held = []
    for i in range(n):
        before = metrics(node)["kith_comms_partial_bytes"]
        c = conn_from(node, src)
        c.send(data_of(i))
        wait_metric(node, "kith_comms_partial_bytes", lambda v, b=before: v > b)
        held.append(c)
    return held


def mid_frame_kept_while_silent_go():
    """At its share, a source's newcomer cuts that source's oldest silent
    connection, never one mid-way through its first frame: four that sent
    the first bytes of an envelope outlive eight silent newcomers (the
    oldest four silent ones are cut) and are acked once they finish."""
    alice = Peer()
    node = Daemon("midframe", config={"limits": {"comms_unauth_per_source_max": 8}})
    node.trust("alice", alice.pk)
    node.start()
    held = []
    try:
        envs = [alice.message(node.pk, f"slow {i}") for i in range(4)]
        wires = [frame(e) for e in envs]
        mids = s_mid_frames(node, 4, lambda i: wires[i][:10])
        held.extend(c.s for c in mids)
        silent = [try_dial(node.port) for _ in range(8)]
        held.extend(silent)
        m = wait_metric(node, SRC_EVICTED, lambda v: v >= 4)
        assert m[SRC_EVICTED] == 4, m[SRC_EVICTED]
        assert m[REFUSED_SRC] == 0, m[REFUSED_SRC]
        for s in silent[:4]:
            assert s is None or ended(s) == "rst", "an older silent one was not cut"
        for c, w, e in zip(mids, wires, envs):
            c.send(w[10:])
            ack = c.read_frame()
            assert ack and ack["kind"]["in_reply_to"] == e["id"], ack
        m = metrics(node)
        assert m[SRC_EVICTED] == 4, m[SRC_EVICTED]
    finally:
        for s in held:
            if s:
                s.close()
        node.cleanup()


def mid_frame_share_cannot_lock_out():
    """Eight connections from one address that each sent a length prefix
    and part of a frame, then stopped, hold its share of eight: a trusted
    peer at that address still gets in, cutting the one among them that
    went longest without sending (counted source_evicted). Were
    connections mid-frame never cut, a byte on each would have locked the
    address out for every first-frame deadline the attacker renews."""
    alice = Peer()
    node = Daemon("midshare", config={"limits": {"comms_unauth_per_source_max": 8}})
    node.trust("alice", alice.pk)
    node.start()
    held = []
    try:
        mids = s_mid_frames(node, 8, lambda i: struct.pack(">I", 1000) + b"\xa5" * 10)
        held.extend(c.s for c in mids)
        m = metrics(node)
        assert m["kith_comms_unauth_connections"] == 8, m
        assert trusted_acked(node, alice, src=ATTACKER), "the trusted peer was not acked"
        m = wait_metric(node, SRC_EVICTED, lambda v: v >= 1)
        assert m[SRC_EVICTED] == 1, m[SRC_EVICTED]
        assert m[REFUSED_SRC] == 0, m[REFUSED_SRC]
        assert ended(mids[0].s) == "rst", "the stalest mid-frame one was not cut"
    finally:
        for s in held:
            if s:
                s.close()
        node.cleanup()


# ------------------------------------------------------------------ deadlines

def deadlines_cut_silent_partial_and_idle():
    alice = Peer()
    node = Daemon("deadlines", config={"limits": {
        "first_frame_timeout_ms": 300, "frame_timeout_ms": 600, "comms_idle_timeout_ms": 900}})
    node.trust("alice", alice.pk)
    node.start()
    try:
        silent = dial(node.port)
        assert ended(silent) == "rst", "a silent connection was not reset"
        # Half a frame after a first good one: cut once the frame deadline passes.
        c = Conn(("127.0.0.1", node.port))
        m = alice.message(node.pk, "first")
        c.send(frame(m))
        assert c.read_frame()["kind"]["type"] == "ack"
        c.send(struct.pack(">I", 1000) + b"x" * 10)
        assert ended(c.s) == "rst", "a stalled frame was not reset"
        # Idle after a good frame: cut at the idle deadline.
        c = Conn(("127.0.0.1", node.port))
        m = alice.message(node.pk, "then idle")
        c.send(frame(m))
        assert c.read_frame()["kind"]["type"] == "ack"
        assert ended(c.s) == "rst", "an idle connection was not reset"
        wait_metric(node, DEADLINE_CUT, lambda v: v >= 3)
        assert "reason=deadline" in node.logs()
    finally:
        node.cleanup()


# ------------------------------------------------------------------ partial-frame budget

def partial_frames_stay_under_budget():
    """40 connections (from 4 addresses) each announce 1 MiB − 1 and send
    200 KiB of it, against a 2 MiB budget: holders are cut (largest
    unauthenticated first), what is held never passes the budget, and a
    trusted peer's 300 KiB message is still acked."""
    budget = 2 * 1024 * 1024
    alice = Peer()
    node = Daemon("budget", config={"limits": {"partial_frame_bytes_max": budget}})
    node.trust("alice", alice.pk)
    node.start()
    held = []
    try:
        chunk = b"\xa5" * (200 * 1024)
        for i in range(40):
            s = try_dial(node.port, src=f"127.0.0.{40 + i % 4}")
            try:
                if s:
                    s.sendall(struct.pack(">I", 1024 * 1024 - 1) + chunk)
            except (ConnectionResetError, BrokenPipeError):
                pass
            held.append(s)
            if i % 8 == 7:
                m = metrics(node)
                assert m["kith_comms_partial_bytes"] <= budget, m
        m = wait_metric(node, BUDGET_CUT, lambda v: v >= 1)
        assert m["kith_comms_partial_bytes"] <= budget, m
        # A connection is unauthenticated (first to be cut) until its first
        # envelope verifies: a small one first, then the big one.
        c = Conn(("127.0.0.1", node.port))
        hello = alice.message(node.pk, "hello")
        c.send(frame(hello))
        assert c.read_frame()["kind"]["in_reply_to"] == hello["id"]
        big = alice.message(node.pk, "y" * (300 * 1024))
        c.send(frame(big))
        ack = c.read_frame()
        assert ack and ack["kind"]["in_reply_to"] == big["id"], "the trusted peer was not acked"
        c.close()
        m = metrics(node)
        assert m["kith_comms_partial_bytes"] <= budget, m
    finally:
        for s in held:
            if s:
                s.close()
        node.cleanup()


# ------------------------------------------------------------------ plain events

EVENTS = {"comms": {"auth": "none", "event_address": "127.0.0.1:0"}}


def event_connections_capped_and_timed():
    node = Daemon("evlimits", config={**EVENTS, "limits": {
        "event_connections_max": 8, "comms_unauth_per_source_max": 4,
        "comms_unauth_connections_max": 4, "first_frame_timeout_ms": 300}})
    node.start()
    held = []
    try:
        # Per source: the fifth from one address is refused at once.
        for _ in range(5):
            held.append(try_dial(node.event_port))
        wait_metric(node, EV_REFUSED, lambda v: v >= 1)
        wait_re(node, r"events: connection from 127\.0\.0\.2:\d+ refused: reason=per_source "
                      r"\(4 open from it\)")
        # Silent ones are cut at the first-line deadline.
        wait_metric(node, EV_DEADLINE, lambda v: v >= 4)
        # A line split over reads is held only while it is split.
        s = dial(node.event_port, src="127.0.0.3")
        s.sendall(b'{"body":"split ')
        wait_metric(node, "kith_comms_partial_bytes", lambda v: v > 0)
        s.sendall(b'line"}\n')
        wait_metric(node, "kith_comms_partial_bytes", lambda v: v == 0)
        wait_metric(node, "kith_events_queued_total", lambda v: v >= 1)
        s.close()
        # The cap (idle holders give way to a newcomer) is
        # test_event_listener_cap.py, with deadlines that do not race it.
    finally:
        for s in held:
            if s:
                s.close()
        node.cleanup()


def events_stop_on_drain():
    """After SIGTERM the event connections stop reading: a line sent while
    comms drains is not queued (before, it was)."""
    node = Daemon("evdrain", config=EVENTS)
    node.start()
    try:
        ev = dial(node.event_port)
        ev.sendall(b"before\n")
        wait_metric(node, "kith_events_queued_total", lambda v: v >= 1)
        # A comms connection that never reads nor closes keeps the drain
        # going for the close timeout.
        hold = dial(node.port)
        node.proc.send_signal(signal.SIGTERM)
        node.wait_log("draining")
        try:
            ev.sendall(b"after\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert ended(ev) in ("fin", "rst"), "the event connection stayed open"
        node.proc.wait(timeout=60)
        hold.close()
        assert events(node) == ["before"], events(node)
    finally:
        node.cleanup()


def main():
    results = Results()
    for fn in (silent_from_one_address_cannot_lock_out,
               silent_from_many_addresses_evict_the_oldest,
               mid_frame_kept_while_silent_go,
               mid_frame_share_cannot_lock_out,
               deadlines_cut_silent_partial_and_idle,
               partial_frames_stay_under_budget,
               event_connections_capped_and_timed,
               events_stop_on_drain):
        results.run(fn)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
