"""tests/lib/test_example.py — kith as a library from Python, as a new user
writes it (pytest). Run against an installed kith:
    PYTHONPATH=<prefix>/lib/python3/dist-packages python3 -m pytest tests/lib/test_example.py
"""
import pytest

import kith


def test_three_nodes_partition_and_heal():
    with kith.Net() as net:
        a, b, c = net.node("a"), net.node("b"), net.node("c")
        a.trust(b), a.trust(c), b.trust(c)
        assert a.send("b", "hello b", timeout_ms=5000) == kith.ACKED
        m = b.recv(timeout_ms=5000)
        assert m["kind"] == {"type": "message", "body": "hello b"} and m["from"] == a.pubkey
        net.partition(a, b)
        assert a.send("b", "anyone there?", timeout_ms=300) == kith.OFFLINE
        net.heal(a, b)
        assert a.send("b", "back again", timeout_ms=5000) == kith.ACKED


def test_request_and_response():
    with kith.Net() as net, net.node("agent") as agent, net.node("tool") as tool:
        agent.trust(tool)
        assert agent.request("tool", "add", {"of": [1, 2]}, timeout_ms=5000) == kith.ACKED
        req = tool.recv(timeout_ms=5000)
        assert req["kind"]["intent"] == "add" and req["kind"]["params"] == {"of": [1, 2]}
        assert tool.respond(req, "completed", {"sum": 3}, timeout_ms=5000) == kith.ACKED
        resp = agent.recv(timeout_ms=5000)
        assert resp["kind"] == {"type": "response", "in_reply_to": req["id"],
                                "status": "completed", "result": {"sum": 3}}


def test_restart_from_home_keeps_identity_and_trust(tmp_path):
    with kith.Net() as net:
        a, b = net.node("a"), net.node("b", home=str(tmp_path / "b"))
        a.trust(b)
        key = b.pubkey
        assert a.send("b", "before", timeout_ms=5000) == kith.ACKED
        b.destroy()                                   # a restart: same home
        b = net.node("b", home=str(tmp_path / "b"))
        assert b.pubkey == key
        assert b.recv(timeout_ms=5000)["kind"]["body"] == "before"
        assert b.send("a", "after", timeout_ms=5000) == kith.ACKED


def test_delay_is_seen_in_order():
    with kith.Net() as net:
        a, b, c = net.node("a"), net.node("b"), net.node("c")
        a.trust(c), b.trust(c)
        net.delay(a, c, 3600 * 1000)                  # held for the whole test
        assert a.send("c", "slow", timeout_ms=200) == kith.OFFLINE
        assert b.send("c", "fast", timeout_ms=5000) == kith.ACKED
        assert c.recv(timeout_ms=5000)["kind"]["body"] == "fast"
        net.delay(a, c, 0)                            # releases what it held
        assert c.recv(timeout_ms=5000)["kind"]["body"] == "slow"


def test_errors_raise_and_outcomes_return():
    with kith.Net() as net:
        a = net.node("a")
        with pytest.raises(kith.KithError, match="no trusted peer"):
            a.send("nobody", "x")
        with pytest.raises(TimeoutError):
            a.recv(timeout_ms=0)
        with pytest.raises(kith.KithError, match="bad name"):
            net.node("not a name")
        a.destroy()
        with pytest.raises(kith.KithError, match="destroyed"):
            a.send("b", "x")
    assert kith.version().count(".") == 2


def test_large_millisecond_counts_mean_what_they_say():
    # A C int cannot hold 2**32: passed as is, it would wrap to 0 — a delay
    # that ends the delay, a send that does not wait for its ack.
    with kith.Net() as net:
        a, b = net.node("a"), net.node("b")
        a.trust(b)
        with pytest.raises(kith.KithError, match="outside"):
            net.delay(a, b, 2 ** 32)
        assert a.send("b", "patient", timeout_ms=2 ** 32 + 1) == kith.ACKED
        assert b.recv(timeout_ms=2 ** 32)["kind"]["body"] == "patient"
