#!/usr/bin/python3
"""tests/integration/hold.py — a bounded load script, run by hand (not by
ctest): start a real `kith daemon`, hold N silent or N partial-frame
connections against its comms port (loopback only), and while they are held
check that a trusted peer is acked and /health answers; print the daemon's
RSS (VmRSS, VmHWM from /proc/PID/status) and the guard's counters.

    ulimit -n 65536
    KITH_BIN=build/kith /usr/bin/python3 tests/integration/hold.py --mode silent -n 10000
    KITH_BIN=build/kith /usr/bin/python3 tests/integration/hold.py --mode partial -n 4000

--sources K spreads the connections over 127.0.0.2 .. 127.0.0.(K+1) (default
1: one address). Bounds: at most 20,000 connections, at most 600 s."""

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Conn, Daemon, Peer, frame  # noqa: E402

MAX_CONNS = 20000
MAX_SECONDS = 600


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = v.strip()
    return out


def metrics(node):
    out = subprocess.run(["curl", "-s", "--max-time", "20",
                          f"http://127.0.0.1:{node.gw_port}/metrics"],
                         capture_output=True, text=True, timeout=60).stdout
    return {ln.rpartition(" ")[0]: ln.rpartition(" ")[2] for ln in out.splitlines()
            if ln.startswith("kith_comms_") and not ln.startswith("#")}


def health(node):
    t0 = time.time()
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                        f"http://127.0.0.1:{node.gw_port}/health"],
                       capture_output=True, text=True, timeout=60)
    return p.stdout, round((time.time() - t0) * 1000, 1)


def trusted(node, alice):
    t0 = time.time()
    try:
        c = Conn(("127.0.0.1", node.port), timeout=60)
        m = alice.message(node.pk, "trusted while held")
        c.send(frame(m))
        ack = c.read_frame()
        c.close()
        ok = bool(ack) and ack["kind"]["in_reply_to"] == m["id"]
    except OSError as e:
        ok = f"error: {e}"
    return ok, round((time.time() - t0) * 1000, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("silent", "partial"), default="silent")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--sources", type=int, default=1)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold after opening")
    ap.add_argument("--config", default="{}", help="JSON merged into the daemon's config")
    a = ap.parse_args()
    n = min(a.n, MAX_CONNS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, n + 1024)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    alice = Peer()
    node = Daemon("hold", config=json.loads(a.config))
    node.trust("alice", alice.pk)
    node.start()
    start = time.time()
    held, refused = [], 0
    payload = b"\xa5" * (64 * 1024)
    try:
        for i in range(n):
            if time.time() - start > MAX_SECONDS / 2:
                break
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.bind((f"127.0.0.{2 + i % a.sources}", 0))
                s.connect(("127.0.0.1", node.port))
                if a.mode == "partial":
                    s.setblocking(False)
                    # 1 MiB − 1 announced; send as much as the socket takes now.
                    s.send(struct.pack(">I", 1024 * 1024 - 1))
                    sent = 0
                    while sent < 1024 * 1024 - 2:
                        try:
                            k = s.send(payload[: min(len(payload), 1024 * 1024 - 2 - sent)])
                        except (BlockingIOError, InterruptedError):
                            break
                        sent += k
                held.append(s)
            except OSError:
                refused += 1
                s.close()
        opened = time.time() - start
        time.sleep(min(a.hold, MAX_SECONDS / 4))
        mem_held = status(node.proc.pid)
        ack = trusted(node, alice)
        h = health(node)
        # Which held connections are still open (not reset by the daemon)?
        alive = 0
        for s in held:
            try:
                s.setblocking(False)
                d = s.recv(1)
                if d:
                    alive += 1
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        report = {
            "mode": a.mode, "asked": n, "sources": a.sources, "connect_refused": refused,
            "opened_s": round(opened, 1), "still_open": alive,
            "trusted_acked": ack[0], "trusted_ms": ack[1],
            "health": h[0], "health_ms": h[1],
            "daemon_while_held": mem_held,
            "metrics": metrics(node),
        }
    finally:
        for s in held:
            s.close()
    time.sleep(1)
    report["daemon_after_close"] = status(node.proc.pid)
    node.cleanup()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
