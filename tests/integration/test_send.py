"""tests/integration/test_send.py — two real daemons that trust each other:
`kith send` from A to B is acked (exit 0) and B holds the message in its
durable inbox and says so in its log; the same over B's Unix socket (a
peer whose address is uds://); a request carries JSON params; an
untrusted sender is refused at once (exit 3); a peer that is down is
offline (exit 2); bad usage is exit 1; a peer named by its host name is
resolved off the loop, and a name that does not resolve is exit 1."""

import json
import os
import subprocess
import sys
import time

import cbor2

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Daemon, Peer, Results, inbox_rows, kith, metrics  # noqa: E402

def send(home, *args, timeout=None):
    cmd = [KITH, "send", "--home", home, *args]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr, time.time() - t0


def main():
    results = Results()
    a = Daemon("a")
    b = Daemon("b")
    c = Daemon("c")  # never runs either: it only sends, to B's Unix socket
    d = Daemon("d")  # nor this one: it sends to B by B's host name
    # A never runs: B's route to it is a port nobody listens on (discard).
    b.trust("a", a.pk, "tcp://127.0.0.1:9")
    b.trust("c", c.pk, "tcp://127.0.0.1:9")
    b.trust("d", d.pk, "tcp://127.0.0.1:9")
    b.start()
    c.trust("b", b.pk, f"uds://{b.uds}")
    a.trust("b", b.pk, f"tcp://127.0.0.1:{b.port}")
    try:
        def acked_message():
            rc, out, err, _ = send(a.home, "--to", "b", "--body", "hi")
            assert rc == 0, (rc, out, err)
            receipt = json.loads(out)
            assert receipt["status"] == "acked" and receipt["to"] == "b", receipt
            rows = [r for r in inbox_rows(b) if str(__import__("uuid").UUID(bytes=bytes(r[0]))) == receipt["id"]]
            assert len(rows) == 1, "acked but not in B's durable inbox"
            env = cbor2.loads(rows[0][2])
            assert env["kind"] == {"type": "message", "body": "hi"}, env["kind"]
            assert env["from"] == a.pk and env["to"] == b.pk
            text = metrics(b)
            assert "kith_comms_admitted_total 1\n" in text, text
            assert "kith_comms_acked_total 1\n" in text, text

        def receipt_into_closed_pipe():
            # The receipt's reader has gone: kith send (which ignores SIGPIPE
            # for its sockets) ends by SIGPIPE without a word, as every other
            # command does, once the envelope is acked.
            import signal
            r, w = os.pipe()
            os.close(r)
            try:
                p = subprocess.run([KITH, "send", "--home", a.home, "--to", "b", "--body", "piped"],
                                   stdout=w, stderr=subprocess.PIPE, timeout=120)
            finally:
                os.close(w)
            assert p.returncode == -signal.SIGPIPE and p.stderr == b"", (p.returncode, p.stderr)

        def acked_over_a_unix_socket():
            rc, out, err, _ = send(c.home, "--to", "b", "--body", "by the socket")
            assert rc == 0, (rc, out, err)
            receipt = json.loads(out)
            assert receipt["status"] == "acked", receipt
            rows = [r for r in inbox_rows(b)
                    if str(__import__("uuid").UUID(bytes=bytes(r[0]))) == receipt["id"]]
            assert len(rows) == 1, "acked but not in B's durable inbox"
            assert cbor2.loads(rows[0][2])["kind"] == {"type": "message", "body": "by the socket"}

        def request_by_peer_id():
            pid = json.loads(kith("id", "--home", b.home))["peer_id"]
            rc, out, err, _ = send(a.home, "--to", pid, "--request", "summarise",
                                   "--params", '{"n": 3, "tags": ["x", "y"], "deep": {"ok": true}}')
            assert rc == 0, (rc, out, err)
            rid = json.loads(out)["id"]
            for r in inbox_rows(b):
                if str(__import__("uuid").UUID(bytes=bytes(r[0]))) == rid:
                    env = cbor2.loads(r[2])
                    assert env["kind"]["intent"] == "summarise"
                    assert env["kind"]["params"] == {"n": 3, "tags": ["x", "y"], "deep": {"ok": True}}
                    return
            raise AssertionError("request not in B's inbox")

        def untrusted_is_refused_fast():
            stranger = Daemon("stranger")
            try:
                stranger.trust("b", b.pk, f"tcp://127.0.0.1:{b.port}")
                # With an hour to wait, exit 3 can only come from B closing
                # the connection at once, never from a timeout (exit 2).
                rc, out, err, took = send(stranger.home, "--to", "b", "--body", "let me in",
                                          timeout=3600)
                assert rc == 3, (rc, out, err)
                assert json.loads(out)["status"] == "rejected"
                # One line: what happened, then where to look.
                assert err.count("\n") == 1 and err.startswith("kith send: rejected: ") and \
                    err.endswith("; the peer's log names the reason (does it trust this "
                                 "node's key? kith id prints it)\n"), err
                print(f"     refused after {took:.2f} s")
                b.wait_log("reason=untrusted_sender")
                text = metrics(b)
                assert 'kith_comms_rejected_total{reason="untrusted_sender"} 1' in text, text
            finally:
                stranger.cleanup()

        def unknown_peer_is_usage_error():
            rc, out, err, _ = send(a.home, "--to", "nobody", "--body", "x")
            assert rc == 1 and err == ("kith send: no trusted peer named nobody; kith peers list "
                                       "shows the trusted ones (kith peers add adds one)\n"), (rc, err)
            rc, _, err, _ = send(a.home, "--to", "b")
            assert rc == 1 and "exactly one of" in err, (rc, err)
            rc, _, err, _ = send(a.home, "--to", "b", "--request", "x", "--params", "{bad")
            assert rc == 1 and "--params" in err, (rc, err)
            # Each flag's own refusal, before anything is signed or sent.
            for args, needle in (
                (("--to", "b", "--body", "x", "extra"), "unexpected argument 'extra'"),
                (("--to", "b", "--response", "not-a-uuid", "--status", "completed"),
                 "--response takes the request's id"),
                (("--to", "b", "--response", "0190a000-0000-7000-8000-000000000001"),
                 "--response needs --status"),
                (("--to", "b", "--response", "0190a000-0000-7000-8000-000000000001",
                  "--status", "done"), "--response needs --status"),
                (("--to", "b", "--body", "x", "--count", "0"), "--count takes 1 to 1000000"),
                (("--to", "b", "--body", "x", "--count", "3x"), "--count takes 1 to 1000000"),
                (("--to", "b", "--body", "x", "--timeout", "0"), "--timeout takes seconds"),
                (("--to", "b", "--body", "x", "--timeout", "3601"), "--timeout takes seconds"),
            ):
                rc, _, err, _ = send(a.home, *args)
                assert rc == 1 and needle in err, (args, rc, err)

        def offline_when_down():
            # A trusts B, but A's own daemon is not running: sending to A's
            # address from B finds nobody listening.
            rc, out, err, _ = send(b.home, "--to", "a", "--body", "anyone?", timeout=2)
            assert rc == 2, (rc, out, err)
            assert json.loads(out)["status"] == "offline"
            assert err.count("\n") == 1 and err.startswith("kith send: offline: ") and \
                err.endswith("; check that the peer runs at its addr (kith peers list), then "
                             "retry\n"), err

        def offline_when_no_ack():
            # A listener that accepts and never answers: the ack timeout.
            import socket
            mute = socket.socket()
            mute.bind(("127.0.0.1", 0))
            mute.listen(1)
            port = mute.getsockname()[1]
            p = Peer()
            a.trust("mute", p.pk, f"tcp://127.0.0.1:{port}")
            rc, out, err, took = send(a.home, "--to", "mute", "--body", "hello?", timeout=1)
            assert rc == 2, (rc, out, err)
            assert "timeout" in json.loads(out)["detail"]
            # A timeout under a millisecond still waits one.
            rc, out, err, took = send(a.home, "--to", "mute", "--body", "quick?", timeout=0.0001)
            mute.close()
            assert rc == 2 and "timeout" in json.loads(out)["detail"], (rc, out, err)

        def peer_named_by_dns():
            # A peer's address may name its host: `kith send` resolves it
            # on its own thread (never the loop's). The machine's own name
            # resolves through /etc/hosts on most machines; a name under
            # .invalid never does (RFC 6761), with or without a network.
            import socket
            d.trust("b", b.pk, f"tcp://no-such-host.invalid:{b.port}")
            rc, out, err, _ = send(d.home, "--to", "b", "--body", "nowhere", timeout=5)
            assert rc == 1 and err.count("\n") == 1 and \
                err.startswith("kith send: cannot resolve no-such-host.invalid") and \
                err.endswith("; check the peer's addr (kith peers list) and this machine's "
                             "DNS\n"), (rc, out, err)
            host = socket.gethostname()
            try:
                local = socket.getaddrinfo(host, b.port, type=socket.SOCK_STREAM)[0][4][0]
            except OSError:
                local = None
            if local is None or not local.startswith("127."):
                print(f"     skipped the resolving half: {host} resolves to {local}, not loopback")
                return
            kith("peers", "remove", "b", "--home", d.home)
            d.trust("b", b.pk, f"tcp://{host}:{b.port}")
            rc, out, err, _ = send(d.home, "--to", "b", "--body", "by name")
            assert rc == 0 and json.loads(out)["status"] == "acked", (rc, out, err)

        results.run(acked_message)
        results.run(receipt_into_closed_pipe)
        results.run(acked_over_a_unix_socket)
        results.run(request_by_peer_id)
        results.run(untrusted_is_refused_fast)
        results.run(unknown_peer_is_usage_error)
        results.run(offline_when_down)
        results.run(offline_when_no_ack)
        results.run(peer_named_by_dns)
    finally:
        b.cleanup()
        a.cleanup()
        c.cleanup()
        d.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
