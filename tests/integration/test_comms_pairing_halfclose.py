"""tests/integration/test_comms_pairing_halfclose.py — a Meerkat pairing client
that half-closes (shutdown(SHUT_WR)) once it has sent its proof still reads
meerkat_pairing_complete (WIRE §23.6): its end of stream says it sends no
more, not that it reads no more, as on an envelope connection (§9.1, "on the
sender's own end of stream"). The trust file and the binding are written
either way; a client told nothing would believe the pairing failed while kith
trusts it."""

import base64
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from meerkat_peer import MeerkatPeer, pubkey_text  # noqa: E402
from peer import Daemon, Results  # noqa: E402

PASSWORD = "half-close pairing password, 32+ bytes long"


def proof_line(ch, password, key, addr, name="half"):
    proof = base64.b64encode(hashlib.sha256(
        b"meerkat-comms-pairing-v1\0" + password.encode() + b"\0" + ch["challenge"].encode() +
        b"\0" + key.encode() + b"\0" + addr.encode()).digest()).decode()
    return json.dumps({"kind": "meerkat_pairing_proof",
                       "caller": {"name": name, "address": addr,
                                  "identity": {"kind": "ed25519_public_key", "public_key": key}},
                       "password_proof": proof}).encode() + b"\n"


def main():
    tmp = tempfile.mkdtemp(prefix="kith-pairing-half-")
    os.environ["KITH_TEST_PAIRING"] = PASSWORD
    node = Daemon("pairhalf", config={"comms": {"pairing_password_env": "KITH_TEST_PAIRING"}})
    node.start()
    res = Results()
    mk = MeerkatPeer(os.path.join(tmp, "half"))

    def half_close_after_proof():
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
            f = s.makefile("rwb")
            f.write(json.dumps({"kind": "meerkat_pairing_hello", "version": 1}).encode() + b"\n")
            f.flush()
            ch = json.loads(f.readline())
            assert ch["kind"] == "meerkat_pairing_challenge", ch
            f.write(proof_line(ch, PASSWORD, pubkey_text(mk.pk), mk.addr))
            f.flush()
            s.shutdown(socket.SHUT_WR)  # sends nothing more; still reads
            line = f.readline()
            assert line, "closed without an answer to a right proof (the pair was written)"
            done = json.loads(line)
            assert done["kind"] == "meerkat_pairing_complete", done
            assert f.readline() == b"", "no orderly close after complete"
        node.wait_log("paired half")

    def half_close_before_proof():
        # Nothing more can come: refused as a typed line, then an orderly
        # close, not left to the first-frame deadline's reset.
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
            f = s.makefile("rwb")
            f.write(json.dumps({"kind": "meerkat_pairing_hello", "version": 1}).encode() + b"\n")
            f.flush()
            ch = json.loads(f.readline())
            assert ch["kind"] == "meerkat_pairing_challenge", ch
            s.shutdown(socket.SHUT_WR)
            line = f.readline()
            assert line, "closed without a typed refusal"
            err = json.loads(line)
            assert err["kind"] == "meerkat_pairing_error" and err["code"] == "malformed", err
            assert f.readline() == b"", "the connection stayed open after the refusal"

    for fn in (half_close_after_proof, half_close_before_proof):
        res.run(fn)
    try:
        res.stopped(node)
    finally:
        node.cleanup()
        mk.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return res.summary()


if __name__ == "__main__":
    sys.exit(main())
