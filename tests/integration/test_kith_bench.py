"""tests/integration/test_kith_bench.py — a smoke test of the load generator
(tools/kith-bench, issue 13): its argument parsing and exit codes, and one
tiny run of each mode against a real `kith daemon`, checking only that the
run completed and counted what it sent (every ack, every echo, every
event). Never a timing threshold: the figures themselves are tools/bench's
business, on an otherwise quiet machine."""

import base64
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check  # noqa: E402

BUILD = os.environ.get("KITH_BUILD_DIR", "build")
BENCH = os.path.join(BUILD, "kith-bench")


def bench(*args, expect=0):
    p = subprocess.run([BENCH, *[str(a) for a in args]], capture_output=True, text=True,
                       timeout=120)
    if p.returncode != expect:
        raise AssertionError(f"kith-bench {' '.join(map(str, args))}: exit {p.returncode}, "
                             f"wanted {expect}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def result(*args):
    """A run with --json: its one JSON object."""
    out = bench(*args, "--json").stdout.strip().splitlines()
    check(len(out) == 1, f"one JSON line expected: {out}")
    return json.loads(out[0])


def main():
    results = Results()
    if not os.access(BENCH, os.X_OK):
        results.record("kith_bench_built", False,
                       f"{BENCH} is missing: build the kith-bench target")
        return results.summary()

    def usage_and_exit_codes():
        check("envelopes" in bench("--help").stdout, "--help lists the modes")
        bench(expect=64)
        bench("no-such-mode", expect=64)
        bench("envelopes", expect=64)                                  # --to missing
        bench("envelopes", "--to", "http://127.0.0.1:1", "--server-key", "x", expect=64)
        bench("envelopes", "--to", "tcp://127.0.0.1:1", "--server-key", "ed25519:nope", expect=64)
        bench("ws", "--url", "ws://127.0.0.1:0/", expect=64)           # port 0
        bench("ws", "--url", "ws://127.0.0.1:1/", "-c", "0", expect=64)
        bench("webhook", "--url", "http://127.0.0.1:1", "-n", "x", expect=64)
        bench("pubkey", "--seed", "00", expect=64)
        check(bench("pubkey").stdout.startswith("ed25519:"), "pubkey prints a key")
        bench("chat", expect=64)                                       # --url missing
        bench("chat", "--url", "http://127.0.0.1:1", "--rate", "-1", expect=64)

    results.run(usage_and_exit_codes)

    node = Daemon("bench", config={"gateway": {"echo": True, "require_pairing": False},
                                   "workers": {"agent_threads": 2}})
    try:
        key = bench("pubkey").stdout.strip()
        node.trust("kith-bench", base64.b64decode(key.split(":", 1)[1]))
        node.start()

        def envelopes_tcp_and_uds():
            for to in (f"tcp://127.0.0.1:{node.port}", f"uds://{node.uds}"):
                r = result("envelopes", "--to", to, "--server-key", node.pubkey_text, "-n", 60,
                           "-c", 2, "-w", 8, "--bound-ms", 20, "--pid", node.proc.pid)
                check(r["acked"] == 60 and r["bound_per_s"] > 0, r)
            r = result("envelopes", "--to", f"tcp://127.0.0.1:{node.port}", "--server-key",
                       node.pubkey_text, "-n", 20, "--rate", 200, "--bound-ms", 0)
            check(r["acked"] == 20 and r["offered_rate"] == 200, r)

        def envelopes_to_the_wrong_key_fail():
            # Signed for someone else: the daemon refuses (misaddressed) and
            # closes; the run fails rather than waiting forever.
            other = bench("pubkey", "--seed", "11" * 32).stdout.strip()
            bench("envelopes", "--to", f"tcp://127.0.0.1:{node.port}", "--server-key", other,
                  "-n", 5, "--bound-ms", 0, "--timeout", 30, expect=1)

        def ws_echo():
            r = result("ws", "--url", f"ws://127.0.0.1:{node.gw_port}/ws/echo", "-c", 3, "-s", 512,
                       "-f", 2, "-d", 0.3, "--warmup", 0.1, "--pid", node.proc.pid)
            check(r["messages"] > 0 and "error" not in r, r)

        def sse_and_webhook():
            r = result("sse", "--url", f"http://127.0.0.1:{node.gw_port}", "-n", 3, "--burst", 4,
                       "--to", f"tcp://127.0.0.1:{node.port}", "--server-key", node.pubkey_text,
                       "--pid", node.proc.pid, "--settle-ms", 10)
            check(r["subscribed"] == 3 and r["deliveries"] == 12, r)
            r = result("webhook", "--url", f"http://127.0.0.1:{node.gw_port}", "-n", 30, "-c", 3,
                       "--dispatch")
            # Every request's turn started (its agent_start came on /api/events).
            check(r["accepted_202"] == 30 and r["dispatched"] == 30, r)

        def chat_turns():
            r = result("chat", "--url", f"http://127.0.0.1:{node.gw_port}", "-n", 40, "-c", 4,
                       "--rate", 200, "--timeout", 60)
            check(r["done"] == 40 and r["error_frames"] == 0 and "error" not in r, r)

        results.run(envelopes_tcp_and_uds)
        results.run(envelopes_to_the_wrong_key_fail)
        results.run(ws_echo)
        results.run(sse_and_webhook)
        results.run(chat_turns)
        results.stopped(node)
    finally:
        node.cleanup()

    ev = Daemon("bench-events", config={"comms": {"auth": "none", "event_address": "127.0.0.1:0"}})
    try:
        ev.start()

        def event_lines():
            r = result("events", "--to", f"tcp://127.0.0.1:{ev.event_port}",
                       "--gateway", f"http://127.0.0.1:{ev.gw_port}", "-n", 200, "--probes", 5)
            check(r["queued"] == 200 and r["lost"] == 0 and r["probed_queued"] == 200, r)
            # The probed run first (tools/bench's order): both runs still count every
            # line (800 in all, within the test daemon's inbox).
            r = result("events", "--to", f"tcp://127.0.0.1:{ev.event_port}",
                       "--gateway", f"http://127.0.0.1:{ev.gw_port}", "-n", 200, "--probes", 5,
                       "--probe-first")
            check(r["queued"] == 200 and r["lost"] == 0 and r["probed_queued"] == 200
                  and r["probed_lost"] == 0 and r["health_loaded_probes"] >= 1, r)

        results.run(event_lines)
        results.stopped(ev)
    finally:
        ev.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
