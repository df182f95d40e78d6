"""tests/integration/test_event_listener_cap.py — the plain event listener
(spec/WIRE.md §10) at its connection cap, against a real `kith daemon`
with comms.auth "none" and limits.event_connections_max scaled down: an
outsider who holds every place with connections that send nothing no longer
locks honest event sources out until the idle deadline — the newcomer cuts
the holder idle the longest (reset, counted as unauth_evicted) and its lines
are queued, round after round; a connection in the middle of a line is
kept. Raw sockets; numbers from /metrics. No timing is asserted: every wait
is for an outcome, with a generous bound."""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, wait_events, wait_metric  # noqa: E402

ATTACKER = "127.0.0.2"  # the idle holders come from here
HONEST = "127.0.0.3"    # event sources with something to say
CAP = 8
EVICTED = 'kith_comms_conn_cut_total{kind="events",reason="unauth_evicted"}'
CONFIG = {"comms": {"auth": "none", "event_address": "127.0.0.1:0"},
          # Deadlines far off: only the cap ends a silent connection here.
          "limits": {"event_connections_max": CAP, "first_frame_timeout_ms": 600000,
                     "comms_idle_timeout_ms": 600000}}


def dial(port, src, timeout=30):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def ended(s, timeout=60):
    """Waits for the daemon to end the connection: 'rst', 'fin', or None."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return "fin"
    except ConnectionResetError:
        return "rst"
    except (TimeoutError, socket.timeout):
        return None


def fill(node, held, n, evicted):
    """Opens n silent connections and waits until `evicted` holders in all
    gave way and CAP are open."""
    for _ in range(n):
        held.append(dial(node.event_port, ATTACKER))
    wait_metric(node, EVICTED, lambda v: v >= evicted)
    return wait_metric(node, "kith_events_connections_open", lambda v: v == CAP)


def idle_holders_give_way():
    """CAP silent connections, then an honest source: the oldest holder is
    reset and the honest lines are queued. Three rounds: the outsider fills
    the cap again each time and each time the honest source gets in."""
    node = Daemon("evcap", config=CONFIG)
    node.start()
    held = []
    try:
        fill(node, held, CAP, 0)
        evicted = 0
        for r in range(3):
            honest = dial(node.event_port, HONEST)
            evicted += 1
            wait_metric(node, EVICTED, lambda v, e=evicted: v >= e)
            honest.sendall(f"honest {r}\n".encode())
            got = wait_events(node, r + 1)
            assert got[r] == f"honest {r}", got
            honest.close()
            wait_metric(node, "kith_events_connections_open", lambda v: v == CAP - 1)
            # The outsider takes the freed place back, and one more (cutting its own).
            evicted += 1
            fill(node, held, 2, evicted)
        # The silent ones that gave way were reset, oldest first.
        assert ended(held[0], timeout=30) == "rst", "the oldest holder was not cut"
        m = wait_metric(node, "kith_events_queued_total", lambda v: v >= 3)
        assert m.get("kith_events_connections_refused_total", 0) == 0, m
    finally:
        for s in held:
            s.close()
        node.cleanup()


def line_under_way_is_kept():
    """A source in the middle of a line keeps its place while silent ones
    are cut around it, and its line, finished later, is queued."""
    node = Daemon("evcapmid", config=CONFIG)
    node.start()
    held = []
    try:
        busy = dial(node.event_port, HONEST)
        busy.sendall(b'{"body":"a line ')
        wait_metric(node, "kith_comms_partial_bytes", lambda v: v > 0)
        fill(node, held, CAP - 1, 0)
        # CAP more newcomers: each cuts a silent holder, never `busy`.
        fill(node, held, CAP, CAP)
        busy.sendall(b'under way"}\n')
        got = wait_events(node, 1)
        assert got == ["a line under way"], got
        m = wait_metric(node, EVICTED, lambda v: v >= CAP)
        assert m[EVICTED] == CAP, m
        busy.close()
    finally:
        for s in held:
            s.close()
        node.cleanup()


def main():
    results = Results()
    for fn in (idle_holders_give_way, line_under_way_is_kept):
        results.run(fn)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
