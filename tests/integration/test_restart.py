"""tests/integration/test_restart.py — a supervisor's immediate restart after
kill -9: a daemon serving comms traffic (a few connections mid-burst, a few
holding half a frame, a few never accepted) is killed with SIGKILL and
started again at once on the same fixed ports. Every restart must bind and
serve: /health answers (curl) and a peer envelope is acked (peer.py).

On io_uring the old listening socket used to outlive the process (a pending
multishot accept held a file reference while the kernel tore the ring down
asynchronously), so the restart failed with EADDRINUSE (WIRE §9.2).
KITH_RESTARTS sets the number of rounds (5 by default; 30 by hand)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Conn, Daemon, Peer, Results, frame, free_port, wait_metric  # noqa: E402

ROUNDS = int(os.environ.get("KITH_RESTARTS", "5"))
# KITH_RESTART_PROBE=0 skips the bind probe: only the daemon's own restart
# is tried (how the by-hand N/30 counts in WIRE §9.2 were taken).
PROBE = os.environ.get("KITH_RESTART_PROBE", "1") != "0"
# Envelopes each busy connection sends per round (at most).
BURST = 500


def start_fresh(node):
    """Starts the daemon with an empty log, so 'ready' and 'listening' are
    this run's. Returns None, or the daemon's own words when it fails."""
    open(node.log_path, "wb").close()
    try:
        node.start()
        return None
    except RuntimeError as e:
        return str(e)


def probe_bind(node):
    """Binds the daemon's TCP ports as the daemon does (SO_REUSEADDR) and
    lets them go. Returns None, or why a port was still taken."""
    for port in (node.port, node.gw_port):
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError as e:
            return f"port {port} still taken after the process was reaped: {e}"
        finally:
            s.close()
    return None


def health(node):
    p = subprocess.run(["curl", "-sS", "--max-time", "20",
                        f"http://127.0.0.1:{node.gw_port}/health"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"/health: curl exit {p.returncode}: {p.stderr}"
    assert '"ok"' in p.stdout or "ok" in p.stdout, p.stdout


def acked(node, alice):
    c = Conn(("127.0.0.1", node.port), timeout=30)
    try:
        m = alice.message(node.pk, "after the restart")
        c.send(frame(m))
        ack = c.read_frame()
        assert ack is not None, "connection closed instead of an ack"
        assert ack["kind"]["type"] == "ack" and ack["kind"]["in_reply_to"] == m["id"], ack
    finally:
        c.close()


def load(node, alice):
    """Connections in every state the kill can find them in; returns them
    and the writer threads (which end when the kill resets their sockets)."""
    socks, threads = [], []
    stop = threading.Event()
    for i in range(3):  # established, mid-burst
        c = Conn(("127.0.0.1", node.port), timeout=30)
        socks.append(c.s)

        def burst(c=c, i=i):
            try:  # bounded, so the inbox never fills over the rounds
                for _ in range(BURST // 25):
                    if stop.is_set():
                        break
                    c.send(b"".join(frame(alice.message(node.pk, f"burst {i}"))
                                    for _ in range(25)))
                    c.s.recv(65536)
            except OSError:
                pass

        t = threading.Thread(target=burst, daemon=True)
        t.start()
        threads.append(t)
    for _ in range(3):  # accepted, half a frame sent
        s = socket.create_connection(("127.0.0.1", node.port), timeout=30)
        s.sendall(frame(alice.message(node.pk, "never finished"))[:20])
        socks.append(s)
    for _ in range(3):  # connected, nothing sent (possibly still in the backlog)
        socks.append(socket.create_connection(("127.0.0.1", node.port), timeout=30))
    for _ in range(3):  # to the gateway, nothing sent
        socks.append(socket.create_connection(("127.0.0.1", node.gw_port), timeout=30))
    # Let the bursts get going: the daemon is mid-traffic when killed.
    wait_metric(node, "kith_comms_admitted_total", lambda n: n >= 20)
    return socks, threads, stop


def rounds(node, alice, n):
    failures = []
    for r in range(n):
        socks, threads, stop = load(node, alice)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        node.log.close()
        node.log = None
        # The ports are free the moment the process is reaped: a bind here
        # comes sooner than any supervisor's restart could.
        why = probe_bind(node) if PROBE else None
        if why is None:
            why = start_fresh(node)  # at once, as a supervisor would
        stop.set()
        for s in socks:
            s.close()
        for t in threads:
            t.join(timeout=30)
        if why is not None:
            lines = [x for x in why.splitlines() if x.strip()]
            failures.append(f"round {r + 1}: {lines[0]} {lines[-1] if len(lines) > 1 else ''}")
            # Let the old socket go so the rounds after this still test something.
            deadline = time.time() + 30
            while why is not None and time.time() < deadline:
                time.sleep(0.5)
                why = start_fresh(node)
            assert why is None, f"round {r + 1}: the daemon never came back: {why}"
            continue
        try:
            health(node)
            acked(node, alice)
        except AssertionError as e:
            raise AssertionError(f"round {r + 1}: {e}\n{node.logs()[-3000:]}")
    assert not failures, f"{len(failures)} of {n} immediate restarts failed: {failures}"
    print(f"  {n} of {n} immediate restarts after kill -9 bound and served")


def main():
    results = Results()
    alice = Peer()
    # Fixed ports, as a supervisor's config would have: picked free first.
    comms_port, gw_port = free_port(), free_port()
    node = Daemon("restart", config={"gateway": {"port": gw_port},
                                     "comms": {"address": f"127.0.0.1:{comms_port}",
                                               "inbox_capacity": 1000000}})
    node.trust("alice", alice.pk)
    try:
        why = start_fresh(node)
        assert why is None, why
        assert node.port == comms_port and node.gw_port == gw_port, (node.port, node.gw_port)
        results.run(rounds, node, alice, ROUNDS, name=f"restart_after_kill9_x{ROUNDS}")
        results.stopped(node)
    finally:
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
