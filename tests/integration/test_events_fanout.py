"""tests/integration/test_events_fanout.py — one burst of events to many
subscribers of a real `kith daemon` (DESIGN §12, spec/WIRE.md §9.2, §18):
every event is one buffer all subscribers' queues share, counted once in
limits.conn_unsent_total_max (here its least, 1 MiB). A hundred
subscribers with small receive buffers that read only after a burst of a
thousand events (some 200 KB each must hold), and a curl -N,
each get all of it, octet for octet the same, in order, none cut; a
reconnect with Last-Event-ID is replayed the same octets from the ring.
With a copy per subscriber the burst's copies passed the bound and
subscribers that read were cut as holding more than their share."""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Peer, Results, gateway_url, metrics_map, wait_metric  # noqa: E402
from test_sse import Sse, send_acked  # noqa: E402

SUBS = 100    # Python subscribers (and one curl)
BURST = 1000  # envelopes (one comms_message each), and events read


def raw_events(sub, n):
    """The next n events of sub as their raw octets (comment lines, the
    keep-alives, left out); [] entries past the end when the stream ended."""
    out = []
    while len(out) < n:
        while b"\n\n" in sub.buf and len(out) < n:
            block, _, sub.buf = sub.buf.partition(b"\n\n")
            lines = [ln for ln in block.split(b"\n") if not ln.startswith(b":")]
            if lines:
                out.append(b"\n".join(lines) + b"\n\n")
        if len(out) == n:
            break
        try:
            chunk = sub.s.recv(65536)
        except (ConnectionResetError, TimeoutError, OSError):
            chunk = b""
        if not chunk:
            return out
        sub.buf += chunk
    return out


def event_id(block):
    assert block.startswith(b"id: "), block[:80]
    return int(block[4:block.index(b"\n")])


def test_burst_to_many(node, alice):
    key_cut = 'kith_sse_cut_total{stream="events"}'
    cut_before = metrics_map(node).get(key_cut, 0)
    out = tempfile.NamedTemporaryFile(prefix="kith-sse-curl-", delete=False)
    out.close()
    p = subprocess.Popen(["curl", "-sS", "-N", "--max-time", "120", "-o", out.name,
                          gateway_url(node) + "/api/events"])
    subs = []
    try:
        subs = [Sse(node, rcvbuf=4096).read_head() for _ in range(SUBS)]
        wait_metric(node, 'kith_sse_subscribers{stream="events"}', lambda v: v == SUBS + 1)
        # Nobody reads while the burst is published and acknowledged.
        send_acked(node, alice, [f"burst {i} " + "y" * 64 for i in range(BURST)])
        first = raw_events(subs[0], BURST)
        assert len(first) == BURST, f"subscriber 0 got {len(first)} of {BURST}"
        ids = [event_id(b) for b in first]
        assert ids == list(range(ids[0], ids[0] + BURST)), ids
        # Each admission is a comms_message (turns' agent_* events come too).
        assert sum(b'"type":"comms_message"' in b for b in first) > BURST // 2, first[:2]
        for i, sub in enumerate(subs[1:], 1):
            got = raw_events(sub, BURST)
            assert len(got) == BURST, f"subscriber {i} got {len(got)} of {BURST} (cut?)"
            assert got == first, f"subscriber {i} read other octets"
        m = metrics_map(node)
        assert m.get(key_cut, 0) == cut_before, m.get(key_cut)
        assert m.get('kith_sse_subscribers{stream="events"}') == SUBS + 1, m
        # curl -N too, once its file holds the burst.
        want = b"".join(first)
        deadline = time.time() + 60
        data, at = b"", -1
        while time.time() < deadline:
            with open(out.name, "rb") as f:
                data = b"".join(ln for ln in f.read().splitlines(keepends=True)
                                if not ln.startswith(b":"))
            # It subscribed first: events before the burst may lead.
            at = data.find(first[0])
            if at >= 0 and len(data) - at >= len(want):
                break
            time.sleep(0.1)
        assert at >= 0 and data[at:at + len(want)] == want, \
            f"curl read {len(data)} octets, the burst not among them whole"
        # A reconnect from the middle is replayed the rest, the same octets.
        half = BURST // 2
        again = Sse(node, last_id=ids[half - 1]).read_head()
        assert raw_events(again, BURST - half) == first[half:]
        again.close()
    finally:
        for sub in subs:
            sub.close()
        p.kill()
        p.wait()
        os.unlink(out.name)


def main():
    alice = Peer()
    node = Daemon("ssefan", config={"gateway": {"require_pairing": False,
                                                "max_connections": 256},
                                    "limits": {"conn_unsent_total_max": 1048576}})
    node.trust("alice", alice.pk)
    node.start()
    res = Results()
    try:
        res.run(test_burst_to_many, node, alice)
        res.stopped(node)
        if res.failed:
            print(node.logs()[-6000:])
    finally:
        node.cleanup()
    return res.summary()


if __name__ == "__main__":
    sys.exit(main())
