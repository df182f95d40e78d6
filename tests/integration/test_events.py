"""tests/integration/test_events.py — the plain event listener of a real
`kith daemon` (comms.auth "none"): newline-delimited JSON {"body"} or plain
text over TCP and a Unix socket; malformed and over-long lines are counted
and skipped while the connection stays open; accepted lines are queued in
the durable inbox; the counters show on /metrics (read with curl); the
lines each read queued are one channel_event on /api/events."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, events, metric, wait_events  # noqa: E402


def main():
    node = Daemon("events", config={"comms": {"auth": "none", "event_address": "127.0.0.1:0"}})
    node.start()
    port = node.event_port
    results = []
    try:
        assert port, node.logs()
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b'{"body":"disk full on db-3","source":"cron"}\n')
        s.sendall(b"deploy finished\r\n")
        s.sendall(b'{"body": 42}\n')                 # no string body: skipped
        s.sendall(b"{not json\n")                     # bad JSON: skipped
        s.sendall(b"x" * (70 * 1024) + b"\n")         # over 64 KiB: skipped
        s.sendall(b"\xc0\xaf\n")                      # not UTF-8: skipped
        s.sendall(b"\n")                              # blank: ignored
        s.sendall(b'{"body":"split ')                 # one line over two writes
        time.sleep(0.05)
        s.sendall(b'across writes"}\n')
        got = wait_events(node, 3)
        ok = got[:3] == ["disk full on db-3", "deploy finished", "split across writes"]
        print(("ok   " if ok else "FAIL ") + f"tcp events in order: {got}")
        results.append(ok)
        # The connection survived every bad line.
        s.sendall(b"still open\n")
        got = wait_events(node, 4)
        ok = got[3] == "still open"
        print(("ok   " if ok else "FAIL ") + "connection stays open after bad lines")
        results.append(ok)
        s.sendall(b"no newline at the end")           # never a line
        s.close()
        time.sleep(0.3)
        ok = len(events(node)) == 4
        print(("ok   " if ok else "FAIL ") + "an unterminated last line is discarded")
        results.append(ok)
        for why in ("no_body", "bad_json", "too_long", "bad_utf8"):
            try:
                ok = node.wait_log(f"reason={why}", timeout=5)
            except AssertionError:
                ok = False
            print(("ok   " if ok else "FAIL ") + f"skip reason {why} logged")
            results.append(ok)
        queued, skipped = metric(node, "kith_events_queued_total"), metric(node, "kith_events_skipped_total")
        ok = queued == 4 and skipped == 4
        print(("ok   " if ok else "FAIL ") + f"/metrics: queued={queued} skipped={skipped}")
        results.append(ok)
    finally:
        node.cleanup()

    # Each line queued is a channel_event on /api/events (WIRE §18.2), for
    # the session plain events go to (comms.session).
    node = Daemon("events-sse", config={"comms": {"auth": "none", "event_address": "127.0.0.1:0",
                                                  "session": "ops"},
                                        "gateway": {"require_pairing": False}})
    node.start()
    try:
        from test_sse import Sse
        sse = Sse(node).read_head()
        s = socket.create_connection(("127.0.0.1", node.event_port), timeout=10)
        # Two lines in one write: reported together when one read takes both
        # (as it does on loopback), never lost or counted twice either way.
        s.sendall(b'{"body":"first"}\nsecond line\n')
        reports = []
        while sum(r["count"] for r in reports) < 2:
            reports.append(sse.next_of({"channel_event"})[1])
        e = reports[-1]
        ok = sum(r["count"] for r in reports) == 2 and sum(r["bytes"] for r in reports) == 16 and \
            all(r["channel"] == "event_line" and r["session_id"] == "ops" and
                r["last_seq"] == r["seq"] + r["count"] - 1 and len(r["id"]) == 36
                for r in reports) and reports[0]["seq"] + 1 == e["last_seq"]
        print(("ok   " if ok else "FAIL ") + f"channel_event for two lines: {reports}")
        results.append(ok)
        # A line on its own is a report of its own.
        s.sendall(b"third\n")
        e2 = sse.next_of({"channel_event"})[1]
        ok = e2["count"] == 1 and e2["seq"] == e2["last_seq"] == e["last_seq"] + 1 and \
            e2["bytes"] == 5
        print(("ok   " if ok else "FAIL ") + f"channel_event for one line: {e2}")
        results.append(ok)
        s.close()
        sse.close()
    finally:
        node.cleanup()

    # The same over a Unix socket.
    node = Daemon("events-uds")
    path = os.path.join(node.home, "events.sock")
    node = Daemon("events-uds", home=node.home,
                  config={"comms": {"auth": "none", "event_address": path}})
    node.start()
    try:
        node.wait_log("(plain events")
        u = socket.socket(socket.AF_UNIX)
        u.connect(path)
        u.sendall(b'{"body":"over uds"}\nplain too\n')
        got = wait_events(node, 2)
        ok = got == ["over uds", "plain too"]
        print(("ok   " if ok else "FAIL ") + f"uds events: {got}")
        results.append(ok)
        u.close()
    finally:
        node.cleanup()

    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
