"""tests/integration/test_send_outcomes.py — what `kith send` concludes when
no ack comes (spec/WIRE.md §9.1): an orderly close (FIN) without an ack is a
refusal (exit 3), because a receiver closes orderly only after a typed
refusal; a reset (RST) says nothing about the envelope, which may be in the
receiver's inbox: offline/unknown (exit 2). Receivers are a raw-socket
stand-in written here (it reads the whole frame, then resets or closes) and
a real daemon that refuses the sender as untrusted."""

import os
import socket
import struct
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Daemon, Peer, Results  # noqa: E402


class StandIn:
    """Accepts one connection, reads one frame, then ends it: 'rst' or 'fin'."""

    def __init__(self, how):
        self.how = how
        self.got = None
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _read(self, s, n):
        b = b""
        while len(b) < n:
            d = s.recv(n - len(b))
            if not d:
                raise EOFError
            b += d
        return b

    def _serve(self):
        s, _ = self.ls.accept()
        s.settimeout(60)
        (n,) = struct.unpack(">I", self._read(s, 4))
        self.got = self._read(s, n)
        if self.how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(1)  # the sender closes after it gives up
            except OSError:
                pass
        s.close()
        self.ls.close()


def send(home, to):
    p = subprocess.run([KITH, "send", "--home", home, "--to", to, "--body", "hi",
                        "--timeout", "60"], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def reset_after_reading_is_offline(a):
    r = StandIn("rst")
    a.trust("rst", Peer().pk, f"tcp://127.0.0.1:{r.port}")
    rc, out = send(a.home, "rst")
    r.t.join(30)
    assert r.got, "the stand-in read no frame"
    assert rc == 2, f"exit {rc} (want 2: unknown/offline after a reset)\n{out}"


def orderly_close_without_ack_is_refused(a):
    r = StandIn("fin")
    a.trust("fin", Peer().pk, f"tcp://127.0.0.1:{r.port}")
    rc, out = send(a.home, "fin")
    r.t.join(30)
    assert rc == 3, f"exit {rc} (want 3: refused after an orderly close)\n{out}"


def typed_refusal_by_a_daemon_is_refused(a):
    b = Daemon("b-untrusting")  # trusts nobody: untrusted_sender, then FIN
    b.start()
    try:
        a.trust("b", b.pk, f"tcp://127.0.0.1:{b.port}")
        rc, out = send(a.home, "b")
        assert rc == 3, f"exit {rc} (want 3)\n{out}"
        b.wait_log("reason=untrusted_sender")
    finally:
        b.cleanup()


def main():
    results = Results()
    a = Daemon("a")  # its home only: `kith send` runs its own node
    try:
        for fn in (reset_after_reading_is_offline, orderly_close_without_ack_is_refused,
                   typed_refusal_by_a_daemon_is_refused):
            results.run(fn, a)
    finally:
        a.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
