#!/usr/bin/python3
"""tests/integration/test_envelope_cbor2.py — signed envelopes checked against
an implementation kith did not write: envelopes built here from DESIGN §8
alone with cbor2's pure-Python canonical encoder (definite lengths, shortest
forms, length-first key order) and PyNaCl must pass `kith envelope verify/decode`;
frames made by `kith envelope encode` must verify here; every golden vector
in spec/vectors/envelopes.json is re-checked with cbor2 and PyNaCl.

Run by ctest with KITH_BIN and KITH_SOURCE_DIR set; exits non-zero on the
first failure."""

import base64
import io
import json
import os
import struct
import sys
import tempfile
import uuid

import cbor2
# The pure-Python encoder: cbor2 5.4's C extension (what cbor2.dumps uses)
# writes 65504.0 and 32768.0 as binary32 although binary16 holds them exactly
# (RFC 8949 Appendix A: 65504.0 is f97bff), so it is not canonical there.
from cbor2.encoder import CBOREncoder as PureCBOREncoder
import nacl.bindings
import nacl.exceptions
import nacl.signing

KITH = os.environ.get("KITH_BIN")
SRC = os.environ.get("KITH_SOURCE_DIR")
if not KITH or not SRC:
    sys.exit("KITH_BIN and KITH_SOURCE_DIR must be set (ctest sets them)")

sys.path.insert(0, os.path.dirname(__file__))
from peer import check, kith_run, peer_id as peer_id_of, pubkey_text as key_text  # noqa: E402


def kith(*args, stdin=b"", expect=0):
    """Runs kith with bytes on stdin; checks the exit code; returns (stdout, stderr)."""
    return kith_run(*args, stdin=stdin, expect=expect)


# ---------------------------------------------------------------- DESIGN §8, independently

def canonical(obj) -> bytes:
    """RFC 8949 §4.2.1 encoding with RFC 7049 length-first key order."""
    out = io.BytesIO()
    PureCBOREncoder(out, canonical=True).encode(obj)
    return out.getvalue()


def signable(env: dict) -> bytes:
    """Canonical CBOR of [id, from, to, kind]."""
    return canonical([env["id"], env["from"], env["to"], env["kind"]])


def sign(sk: nacl.signing.SigningKey, to: bytes, kind: dict, ident: bytes = None) -> dict:
    env = {"id": ident or uuid.uuid4().bytes, "from": bytes(sk.verify_key), "to": to, "kind": kind}
    env["sig"] = sk.sign(signable(env)).signature
    return env


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def serde_order(env: dict) -> bytes:
    """Encoded the way a Rust serde/ciborium peer would: struct field order,
    kind's "type" first, not canonical."""
    kind = dict(env["kind"])
    ordered_kind = {"type": kind.pop("type"), **kind}
    return cbor2.dumps({"id": env["id"], "from": env["from"], "to": env["to"],
                        "kind": ordered_kind, "sig": env["sig"]})


def verify_here(payload: bytes) -> dict:
    """Decodes and verifies a kith payload with cbor2 and PyNaCl only."""
    env = cbor2.loads(payload)
    check(set(env) == {"id", "from", "to", "kind", "sig"}, f"envelope keys: {sorted(env)}")
    check(len(env["id"]) == 16 and len(env["from"]) == 32 and len(env["to"]) == 32 and len(env["sig"]) == 64,
          "field lengths")
    nacl.signing.VerifyKey(env["from"]).verify(signable(env), env["sig"])
    check(payload == canonical(env), "kith writes the whole envelope canonically")
    return env


# ---------------------------------------------------------------- Python-built → kith

def kinds(peer_msg_id: bytes):
    return [
        {"type": "message", "body": "hello from python"},
        {"type": "message", "body": "h\u00e9llo \U0001f600", "handling_mode": "steer",
         "blocks": [{"type": "text", "text": "t"}, {"type": "image", "data": b"\x89PNG"}]},
        {"type": "request", "intent": "review-pr", "handling_mode": "queue",
         "params": {"pr": 42, "neg": -7, "huge": 2**64 - 1, "tiny": -2**64, "half": 1.5, "single": 100000.0,
                    "double": 1.1, "zero": -0.0, "yes": True, "no": None, "raw": b"\x00\xff",
                    "nested": [[[{"deep": "x"}]]], "zz": 1, "a": 2, "bb": 3}},
        {"type": "response", "in_reply_to": peer_msg_id, "status": "completed", "result": {"ok": True}},
        {"type": "response", "in_reply_to": peer_msg_id, "status": "failed", "result": None},
        {"type": "ack", "in_reply_to": peer_msg_id},
        {"type": "lifecycle", "kind": "peer_retired", "params": {"reason": "bye"}},
        {"type": "message", "body": "newer peer", "sender_taint": "clean"},
    ]


def test_python_to_kith():
    sk = nacl.signing.SigningKey.generate()
    to = bytes(nacl.signing.SigningKey.generate().verify_key)
    for kind in kinds(uuid.uuid4().bytes):
        env = sign(sk, to, kind)
        for payload in (serde_order(env), canonical(env)):
            kith("envelope", "verify", stdin=frame(payload))
            kith("envelope", "verify", "--raw", stdin=payload)
            out, _ = kith("envelope", "decode", stdin=frame(payload))
            doc = json.loads(out)
            check(doc["signature_valid"] is True, f"{kind['type']}: signature_valid")
            check(doc["id"] == str(uuid.UUID(bytes=env["id"])), "id as a UUID")
            check(doc["from"] == key_text(env["from"]) and doc["to"] == key_text(to), "keys as text")
            check(base64.b64decode(doc["sig"]) == env["sig"], "sig as base64")
            got = doc["kind"]
            check(got["type"] == kind["type"], "type")
            if "in_reply_to" in kind:
                check(got["in_reply_to"] == str(uuid.UUID(bytes=kind["in_reply_to"])), "in_reply_to as a UUID")
            if kind["type"] == "request":
                p = got["params"]
                check(p["huge"] == 2**64 - 1 and p["tiny"] == -2**64 and p["half"] == 1.5, "numbers survive")
                check(p["raw"] == {"$bytes": base64.b64encode(b"\x00\xff").decode()}, "bytes as $bytes")
                check(list(p) == sorted(p, key=lambda k: (len(k.encode()), k.encode())),
                      "JSON keys print in canonical order")
            if "sender_taint" in kind:
                check(got["sender_taint"] == "clean", "unknown kind fields are kept")

        # Changed bytes are refused (a spread of positions; the unit test tries every one).
        payload = serde_order(env)
        for pos in range(0, len(payload), max(1, len(payload) // 16)):
            for mask in (0x01, 0x80):
                bad = bytearray(payload)
                bad[pos] ^= mask
                _, err = kith("envelope", "verify", "--raw", stdin=bytes(bad), expect=1)
                check(err.startswith("kith envelope verify: "), f"reason on stderr: {err!r}")
                check(any(r in err for r in ("malformed", "invalid_signature", "oversize")), f"typed: {err!r}")


def test_python_refusals():
    sk = nacl.signing.SigningKey.generate()
    to = bytes(nacl.signing.SigningKey.generate().verify_key)
    env = sign(sk, to, {"type": "message", "body": "x"})
    good = canonical(env)
    cases = [
        (good + b"\x00", "malformed (trailing_bytes)"),
        (good[:-1], "malformed (truncated)"),
        (cbor2.dumps({**env, "ttl": 5}), "malformed (unknown_field)"),
        (cbor2.dumps({k: v for k, v in env.items() if k != "sig"}), "malformed (missing_field)"),
        (cbor2.dumps({**env, "id": env["id"][:15]}), "malformed (bad_length)"),
        (cbor2.dumps({**env, "kind": {"type": "gossip"}}), "malformed (unknown_kind)"),
        (cbor2.dumps({**env, "kind": {"type": "message", "body": "x", "handling_mode": None}}),
         "malformed (wrong_type)"),
        (cbor2.dumps({**env, "kind": {"type": "message", "body": "x", 1: 2}}), "malformed (non_text_key)"),
        (cbor2.dumps({**env, "kind": {"type": "request", "intent": "x",
                                      "params": cbor2.CBORTag(1, 0)}}), "malformed (unsupported_type)"),
        (cbor2.dumps({**env, "kind": {"type": "message", "body": "y"}}), "invalid_signature (bad_signature)"),
    ]
    nested = 0
    for _ in range(40):
        nested = [nested]
    cases.append((cbor2.dumps({**env, "kind": {"type": "request", "intent": "x", "params": nested}}),
                  "malformed (too_deep)"))
    for payload, want in cases:
        _, err = kith("envelope", "verify", "--raw", stdin=payload, expect=1)
        check(want in err, f"wanted {want!r}, got {err!r}")
    _, err = kith("envelope", "verify", stdin=struct.pack(">I", 1024 * 1024 + 1), expect=1)
    check("oversize" in err, err)


def test_stdin_sizes_and_forms():
    """stdin is read whole however big a valid envelope is, and refused past
    the frame bound; an extra argument is refused; a map that looks like
    kith's {"$bytes": …} has no JSON form for decode (verify still takes it)."""
    sk = nacl.signing.SigningKey.generate()
    to = bytes(nacl.signing.SigningKey.generate().verify_key)
    big = canonical(sign(sk, to, {"type": "message", "body": "b" * 300_000}))
    kith("envelope", "verify", "--raw", stdin=big)
    out, _ = kith("envelope", "decode", "--raw", "--pretty", stdin=big)
    check(b'"body": "bbb' in out and b"\n  " in out, out[:200])
    _, err = kith("envelope", "verify", "--raw", stdin=b"\0" * (1536 * 1024), expect=1)
    check("oversize" in err, err)
    _, err = kith("envelope", "verify", "extra", stdin=frame(big), expect=1)
    check("unexpected argument 'extra'" in err, err)
    odd = canonical(sign(sk, to, {"type": "request", "intent": "x", "params": {"$bytes": "AA"}}))
    kith("envelope", "verify", "--raw", stdin=odd)
    _, err = kith("envelope", "decode", "--raw", stdin=odd, expect=1)
    check("no JSON form" in err, err)


# ---------------------------------------------------------------- kith-built → Python

def test_kith_to_python(tmp):
    home = os.path.join(tmp, "home")
    out, _ = kith("keygen", "--home", home)
    me = json.loads(out)
    pk = base64.b64decode(me["pubkey"][len("ed25519:"):])
    check(me["peer_id"] == peer_id_of(pk), "peer_id is UUIDv5 of the key")
    to = nacl.signing.SigningKey.generate().verify_key
    reply_to = str(uuid.uuid4())
    docs = [
        {"to": key_text(bytes(to)), "kind": {"type": "message", "body": "hi"}},
        {"to": key_text(bytes(to)), "id": "017f22e2-79b0-7cc3-98c4-dc0c0c07398f",
         "kind": {"type": "request", "intent": "sum", "params": {"xs": [1, 2.5, -3], "raw": {"$bytes": "AAE="}}}},
        {"to": key_text(bytes(to)), "kind": {"type": "response", "in_reply_to": reply_to,
                                             "status": "accepted", "result": None}},
        {"to": key_text(bytes(to)), "kind": {"type": "ack", "in_reply_to": reply_to}},
        {"to": key_text(bytes(to)), "kind": {"type": "lifecycle", "kind": "hello", "params": {}}},
    ]
    for doc in docs:
        text = json.dumps(doc).encode()
        out, _ = kith("envelope", "encode", "--home", home, stdin=text)
        (n,) = struct.unpack(">I", out[:4])
        check(n == len(out) - 4, "one length-prefixed frame")
        env = verify_here(out[4:])
        check(env["from"] == pk and env["to"] == bytes(to), "from is this node, to as asked")
        if "id" in doc:
            check(env["id"] == uuid.UUID(doc["id"]).bytes, "given id kept")
        else:
            check(env["id"][6] >> 4 == 7, "a new id is a UUIDv7")
        if "in_reply_to" in doc["kind"]:
            check(env["kind"]["in_reply_to"] == uuid.UUID(reply_to).bytes, "in_reply_to as 16 bytes")
        if doc["kind"]["type"] == "request":
            check(env["kind"]["params"] == {"xs": [1, 2.5, -3], "raw": b"\x00\x01"}, "params mapped")
        raw, _ = kith("envelope", "encode", "--home", home, "--raw", stdin=text)
        verify_here(raw)
        # decode | encode round trip: the printed JSON is valid input again.
        printed, _ = kith("envelope", "decode", stdin=out)
        again, _ = kith("envelope", "encode", "--home", home, stdin=printed)
        check(cbor2.loads(again[4:])["kind"] == env["kind"], "decoded JSON re-encodes to the same kind")

    _, err = kith("envelope", "encode", "--home", home, stdin=b'{"kind":{"type":"message","body":"x"}}', expect=1)
    check("missing \"to\"" in err, err)
    _, err = kith("envelope", "encode", "--home", os.path.join(tmp, "nobody"),
                  stdin=json.dumps(docs[0]).encode(), expect=1)
    check("keygen" in err, f"says how to fix a missing identity: {err!r}")


# ---------------------------------------------------------------- golden vectors

def test_golden_vectors():
    with open(os.path.join(SRC, "spec", "vectors", "envelopes.json")) as f:
        vectors = json.load(f)
    keys = {}
    for k in vectors["keys"]:
        sk = nacl.signing.SigningKey(bytes.fromhex(k["seed_hex"]))
        pk = bytes(sk.verify_key)
        check(k["pubkey"] == key_text(pk) and k["peer_id"] == peer_id_of(pk), f"key {k['name']}")
        keys[k["name"]] = sk
    for v in vectors["valid"]:
        payload = bytes.fromhex(v["frame_hex"])[4:]
        env = verify_here(payload)
        check(signable(env).hex() == v["signable_hex"], f"{v['name']}: signable bytes")
        check(env["from"] == bytes(keys[v["from"]].verify_key), f"{v['name']}: signed by {v['from']}")
        # Deterministic Ed25519: signing here gives the same signature.
        check(keys[v["from"]].sign(signable(env)).signature == env["sig"], f"{v['name']}: same signature")
        check(v["json"]["kind"]["type"] == env["kind"]["type"], f"{v['name']}: JSON form")
        kith("envelope", "verify", stdin=bytes.fromhex(v["frame_hex"]))
    for v in vectors["accepted_noncanonical"]:
        payload = bytes.fromhex(v["frame_hex"])[4:]
        env = cbor2.loads(payload)
        nacl.signing.VerifyKey(env["from"]).verify(signable(env), env["sig"])
        check(frame(canonical(env)).hex() == v["canonical_frame_hex"], v["name"])
        kith("envelope", "verify", stdin=bytes.fromhex(v["frame_hex"]))
    for v in vectors["invalid"]:
        _, err = kith("envelope", "verify", stdin=bytes.fromhex(v["frame_hex"]), expect=1)
        check(f"{v['wire_reason']} ({v['reason']})" in err, f"{v['name']}: {err!r}")
        if v["name"] == "mixed_order_sender":
            env = cbor2.loads(bytes.fromhex(v["frame_hex"])[4:])
            nacl.signing.VerifyKey(env["from"]).verify(signable(env), env["sig"])  # libsodium alone: fine
            check(not nacl.bindings.crypto_core_ed25519_is_valid_point(env["from"]), "but the key is mixed-order")
        if v["name"] == "bad_signature":
            env = cbor2.loads(bytes.fromhex(v["frame_hex"])[4:])
            try:
                nacl.signing.VerifyKey(env["from"]).verify(signable(env), env["sig"])
                raise AssertionError("bad_signature verifies in PyNaCl")
            except nacl.exceptions.BadSignatureError:
                pass


def test_help():
    for sub in ("encode", "decode", "verify"):
        out, _ = kith("envelope", sub, "--help")
        check(out.decode().startswith(f"usage: kith envelope {sub}"), f"{sub} --help")
    kith("envelope", "--help")
    _, err = kith("envelope", "frobnicate", expect=1)
    check("unknown subcommand" in err, err)


def test_encoder_is_canonical():
    check(canonical(65504.0).hex() == "f97bff" and canonical(32768.0).hex() == "f97800", "binary16 at the top")
    check(canonical({"bb": 1, "a": 2, 10: 3}).hex() == "a30a0361610262626201", "length-first")


def main():
    test_encoder_is_canonical()
    with tempfile.TemporaryDirectory(prefix="kith-it-envelope-") as tmp:
        test_help()
        test_python_to_kith()
        test_python_refusals()
        test_stdin_sizes_and_forms()
        test_kith_to_python(tmp)
        test_golden_vectors()
    print("test_envelope_cbor2: ok")


if __name__ == "__main__":
    main()
