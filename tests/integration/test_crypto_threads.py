"""tests/integration/test_crypto_threads.py — signature checks on crypto
threads beside the loop (comms.crypto_threads, WIRE §14.12) seen from an
independent peer (peer.py: cbor2 + PyNaCl): many envelopes of mixed sizes
over several TCP and Unix-socket connections at once, every ack in order on
its connection; a replay, a bad signature, a malformed frame and an oversize
header each refused in their place among good envelopes (the acks before
them arrive, nothing after them is admitted, then an orderly close);
connections reset with envelopes still being verified leave the daemon
serving. The @crypto0 twin runs the same with every check on the loop."""

import os
import random
import socket
import struct
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Conn, Daemon, Peer, Results, frame, metrics_map,  # noqa: E402
                  verify_envelope, wait_metric)

THREADS = int(os.environ.get("KITH_TEST_CRYPTO_THREADS", "4"))
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def envelopes(alice, node, n, rng):
    """n envelopes of mixed kinds and sizes (so their checks take unequal
    times and finish out of order on the threads)."""
    out = []
    for i in range(n):
        body = "x" * rng.choice((1, 10, 200, 3000, 20000))
        if i % 3 == 2:
            out.append(alice.request(node.pk, "ping", {"i": i, "pad": body}))
        else:
            out.append(alice.message(node.pk, f"{i}:{body}"))
    return out


def read_acks(conn, node, alice, sent, what):
    """Reads one ack per envelope in `sent`, in order; checks each."""
    for i, env in enumerate(sent):
        ack = conn.read_frame()
        assert ack is not None, f"{what}: closed after {i} of {len(sent)} acks"
        assert ack["kind"]["type"] == "ack", ack
        assert ack["kind"]["in_reply_to"] == env["id"], f"{what}: ack {i} out of order"
        assert ack["from"] == node.pk and ack["to"] == alice.pk, "ack misaddressed"
        assert verify_envelope(ack), "ack signature does not verify"


def send_async(conn, data):
    t = threading.Thread(target=conn.send, args=(data,), daemon=True)
    t.start()
    return t


@test
def many_connections_acked_in_order(node, alice):
    rng = random.Random(13)
    conns = [Conn(("127.0.0.1", node.port)) if k % 2 == 0 else Conn(node.uds) for k in range(6)]
    batches = [envelopes(alice, node, 250, rng) for _ in conns]
    senders = [send_async(c, b"".join(frame(e) for e in b)) for c, b in zip(conns, batches)]
    errors = []

    def reader(k):
        try:
            read_acks(conns[k], node, alice, batches[k], f"connection {k}")
        except Exception as e:  # reported below
            errors.append(repr(e))

    readers = [threading.Thread(target=reader, args=(k,)) for k in range(len(conns))]
    for t in readers:
        t.start()
    for t in readers + senders:
        t.join(timeout=300)
    for c in conns:
        c.close()
    assert not errors, errors


def refused_in_place(node, alice, bad, reason, good_before=30, good_after=20):
    """good_before envelopes, then `bad` (bytes of one or more frames), then
    good_after more, in one write: exactly the first good_before are acked,
    in order, then an orderly close; the refusal is counted once and nothing
    after it is admitted."""
    rng = random.Random(reason)
    key = f'kith_comms_rejected_total{{reason="{reason}"}}'
    m0 = metrics_map(node)
    before = envelopes(alice, node, good_before, rng)
    after = envelopes(alice, node, good_after, rng)
    c = Conn(("127.0.0.1", node.port))
    c.send(b"".join(frame(e) for e in before) + bad + b"".join(frame(e) for e in after))
    read_acks(c, node, alice, before, reason)
    assert c.read_frame() is None, "expected an orderly close after the refusal"
    c.close()
    m1 = wait_metric(node, key, lambda v: v >= m0.get(key, 0) + 1)
    assert m1[key] == m0.get(key, 0) + 1, f"{key}: {m0.get(key, 0)} -> {m1[key]}"
    admitted = m1["kith_comms_admitted_total"] - m0["kith_comms_admitted_total"]
    assert admitted == good_before, f"admitted {admitted}, expected {good_before}"


@test
def replay_refused_among_good(node, alice):
    env = alice.message(node.pk, "first copy")
    c = Conn(("127.0.0.1", node.port))
    c.send(frame(env))
    read_acks(c, node, alice, [env], "first copy")
    c.close()
    refused_in_place(node, alice, frame(env), "replay")


@test
def bad_signature_refused_among_good(node, alice):
    env = alice.message(node.pk, "forged")
    env["sig"] = bytes([env["sig"][0] ^ 1]) + env["sig"][1:]
    refused_in_place(node, alice, frame(env), "invalid_signature")


@test
def malformed_refused_among_good(node, alice):
    refused_in_place(node, alice, frame(b"\xa5\x01\x02"), "malformed")


@test
def oversize_refused_among_good(node, alice):
    refused_in_place(node, alice, struct.pack(">I", 2 << 20) + b"\0" * 64, "oversize",
                     good_after=0)


@test
def reset_with_checks_in_flight(node, alice):
    """Connections cut (RST) right after a burst: whatever was still on a
    crypto thread is discarded safely, and the daemon serves on."""
    rng = random.Random(7)
    for _ in range(8):
        c = Conn(("127.0.0.1", node.port))
        c.send(b"".join(frame(e) for e in envelopes(alice, node, 120, rng)))
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    c = Conn(node.uds)
    sent = envelopes(alice, node, 5, rng)
    c.send(b"".join(frame(e) for e in sent))
    read_acks(c, node, alice, sent, "after the resets")
    c.close()


def main():
    alice = Peer()
    node = Daemon("crypto", config={"comms": {"crypto_threads": THREADS,
                                              "inbox_capacity": 100000,
                                              "inbox_max_bytes": 1 << 30}})
    node.trust("alice", alice.pk)
    node.start()
    results = Results()
    try:
        for fn in TESTS:
            results.run(fn, node, alice)
        results.stopped(node)
    finally:
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
