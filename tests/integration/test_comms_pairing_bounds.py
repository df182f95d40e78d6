"""tests/integration/test_comms_pairing_bounds.py — at most 32 Meerkat pairing
handshakes run at once on the comms port (WIRE §23.6, "more are reset"):
with the per-source bound raised so that it is not what stops them, the
33rd handshake from one address is reset, the 32 open ones still finish
(each is answered, here with a typed refusal for a wrong proof), and once
they are gone a new handshake is served again."""

import base64
import hashlib
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results  # noqa: E402

PASSWORD = "pairing bounds test password, 32+ bytes"
HELLO = json.dumps({"kind": "meerkat_pairing_hello", "version": 1}).encode() + b"\n"


def hello(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rwb")
    f.write(HELLO)
    f.flush()
    return s, f


def main():
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    node = Daemon("pairbounds", config={
        "comms": {"pairing_password_env": "KITH_TEST_PAIRING"},
        "limits": {"comms_unauth_per_source_max": 64}})
    node.start()
    res = Results()

    def the_33rd_is_reset():
        held = []
        try:
            for _ in range(32):
                s, f = hello(node.port)
                ch = json.loads(f.readline())
                assert ch["kind"] == "meerkat_pairing_challenge", ch
                held.append((s, f, ch))
            s, f = hello(node.port)
            try:
                line = f.readline()
            except ConnectionResetError:
                line = b""
            assert line == b"", f"a 33rd handshake was served: {line!r}"
            s.close()
            # The 32 still finish: a wrong proof each, answered and closed.
            for s, f, ch in held:
                key = node.pubkey_text
                proof = base64.b64encode(hashlib.sha256(b"wrong").digest()).decode()
                f.write(json.dumps({"kind": "meerkat_pairing_proof",
                                    "caller": {"name": "x", "address": "tcp://127.0.0.1:9",
                                               "identity": {"kind": "ed25519_public_key",
                                                            "public_key": key}},
                                    "password_proof": proof}).encode() + b"\n")
                f.flush()
                got = json.loads(f.readline())
                assert got["kind"] == "meerkat_pairing_error", got
                assert got["code"] in ("invalid_proof", "locked_out"), got
        finally:
            for s, _, _ in held:
                s.close()

    def served_again():
        # The slots came back: a new handshake gets its challenge (or, the
        # address being locked out by the wrong proofs above, a typed
        # locked_out), never a reset.
        for _ in range(200):
            s, f = hello(node.port)
            try:
                got = json.loads(f.readline() or b"null")
            except ConnectionResetError:
                got = None
            s.close()
            if got:
                break
        assert got and (got["kind"] == "meerkat_pairing_challenge" or
                        got.get("code") == "locked_out"), got

    for fn in (the_33rd_is_reset, served_again):
        res.run(fn)
    try:
        res.stopped(node)
    finally:
        node.cleanup()
    return res.summary()


if __name__ == "__main__":
    sys.exit(main())
