"""tests/integration/meerkat_peer.py — a peer that behaves as a Meerkat node
does (meerkat-comms, read as a specification; no Meerkat or kith code), with
cbor2 and PyNaCl:

- receiving: one frame per accepted connection; signature, `to`, trust;
  the kind decoded the way Meerkat's typed structs decode it (a field they
  do not know is dropped, so the re-encoded signable bytes must still
  verify; params/result must be JSON values; lifecycle kinds are mob.*);
  admitted, then acked (message, incarnation_fenced_message, request,
  lifecycle) with a UUIDv4 id, then the connection is closed. Anything
  refused: closed without an answer.
- sending: one connection per envelope, UUIDv4 ids, one ack read, close.
- identity: raw 32-byte identity.key / identity.pub files.
- pairing: the JSON line handshake's client side."""

import base64
import hashlib
import json
import os
import secrets
import socket
import struct
import threading
import uuid

import cbor2
import nacl.exceptions
import nacl.signing

from peer import peer_id, pubkey_text  # noqa: F401  (re-exported for tests)

ACKED = {"message", "incarnation_fenced_message", "request", "lifecycle"}
KNOWN = {
    "message": {"type", "body", "blocks", "content_taint", "handling_mode", "objective_id"},
    "incarnation_fenced_message": {"type", "body", "blocks", "content_taint", "handling_mode",
                                   "objective_id", "expected_recipient"},
    "request": {"type", "intent", "params", "blocks", "reply_endpoint", "content_taint",
                "handling_mode", "objective_id"},
    "response": {"type", "in_reply_to", "status", "result", "blocks", "content_taint",
                 "handling_mode", "objective_id"},
    "ack": {"type", "in_reply_to"},
    "lifecycle": {"type", "kind", "params"},
}
LIFECYCLE_KINDS = {"mob.peer_added", "mob.peer_retired", "mob.peer_unwired"}


def uuid4():
    return uuid.uuid4().bytes


def signable(env):
    return cbor2.dumps([env["id"], env["from"], env["to"], env["kind"]], canonical=True)


def json_value(v):
    """serde_json::Value: no byte strings, integers within i64/u64."""
    if isinstance(v, bytes):
        return False
    if isinstance(v, int) and not isinstance(v, bool):
        return -(2 ** 63) <= v < 2 ** 64
    if isinstance(v, list):
        return all(json_value(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and json_value(x) for k, x in v.items())
    return True


def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def read_frame(s):
    head = read_exact(s, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > 1024 * 1024:
        return None
    body = read_exact(s, n)
    return None if body is None else cbor2.loads(body)


def frame(env):
    data = cbor2.dumps(env)
    return struct.pack(">I", len(data)) + data


class MeerkatPeer:
    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.sk = nacl.signing.SigningKey(secrets.token_bytes(32))
        self.pk = bytes(self.sk.verify_key)
        key = os.path.join(directory, "identity.key")
        with open(key, "wb") as f:
            f.write(bytes(self.sk))
        os.chmod(key, 0o600)
        with open(os.path.join(directory, "identity.pub"), "wb") as f:
            f.write(self.pk)
        self.trusted = set()
        self.received = []        # admitted envelopes
        self.connections = 0      # accepted connections
        self.refused = 0
        self.lock = threading.Lock()
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(256)
        self.port = self.srv.getsockname()[1]
        self.addr = f"tcp://127.0.0.1:{self.port}"
        self.stopping = False
        threading.Thread(target=self._serve, daemon=True).start()

    # ------------------------------------------------------------ receiving

    def _serve(self):
        while not self.stopping:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _decode_kind(self, kind):
        """What Meerkat's serde keeps of a kind, or None when it cannot decode it."""
        t = kind.get("type")
        if t not in KNOWN:
            return None
        kept = {k: v for k, v in kind.items() if k in KNOWN[t]}
        for field in ("params", "result"):
            if field in kept and not json_value(kept[field]):
                return None
        if t == "lifecycle" and kept.get("kind") not in LIFECYCLE_KINDS:
            return None
        return kept

    def _one(self, c):
        c.settimeout(30)
        try:
            env = read_frame(c)   # exactly one frame per connection
            if env is None:
                return
            kept = self._decode_kind(env["kind"])
            ok = kept is not None and env["to"] == self.pk and env["from"] in self.trusted
            if ok:
                redecoded = dict(env, kind=kept)
                try:
                    nacl.signing.VerifyKey(env["from"]).verify(signable(redecoded), env["sig"])
                except nacl.exceptions.BadSignatureError:
                    ok = False
            if not ok:
                with self.lock:
                    self.refused += 1
                return
            with self.lock:
                self.received.append(env)   # admitted first, then acked
            if kept["type"] in ACKED:
                ack = {"id": uuid4(), "from": self.pk, "to": env["from"],
                       "kind": {"type": "ack", "in_reply_to": env["id"]}}
                ack["sig"] = self.sk.sign(signable(ack)).signature
                c.sendall(frame(ack))
        except (OSError, ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
            pass
        finally:
            c.close()

    # ------------------------------------------------------------ sending

    def envelope(self, to, kind, eid=None):
        env = {"id": eid or uuid4(), "from": self.pk, "to": to, "kind": kind}
        env["sig"] = self.sk.sign(signable(env)).signature
        return env

    def send(self, port, env):
        """One connection, one envelope, its ack (when the kind gets one),
        close. Returns the ack, True for an unacked kind written, or None
        when the connection closed without an ack."""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(frame(env))
            if env["kind"]["type"] not in ACKED:
                return True
            ack = read_frame(s)
        if ack is None or ack["kind"].get("type") != "ack" or ack["kind"].get("in_reply_to") != env["id"]:
            return None
        nacl.signing.VerifyKey(ack["from"]).verify(signable(ack), ack["sig"])
        return ack

    # ------------------------------------------------------------ pairing

    def pair(self, port, password, name="meerkat node", tamper=False):
        """The client side of the pairing handshake; returns the server's
        last line as a dict (meerkat_pairing_complete or an error), or None
        when it closed without one."""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            f = s.makefile("rwb")
            f.write(json.dumps({"kind": "meerkat_pairing_hello", "version": 1}).encode() + b"\n")
            f.flush()
            line = f.readline()
            if not line:
                return None
            ch = json.loads(line)
            if ch.get("kind") != "meerkat_pairing_challenge":
                return ch
            caller_key = pubkey_text(self.pk)
            proof = base64.b64encode(hashlib.sha256(
                b"meerkat-comms-pairing-v1\0" + (password + ("x" if tamper else "")).encode()
                + b"\0" + ch["challenge"].encode() + b"\0" + caller_key.encode() + b"\0"
                + self.addr.encode()).digest()).decode()
            f.write(json.dumps({
                "kind": "meerkat_pairing_proof",
                "caller": {"name": name, "address": self.addr,
                           "identity": {"kind": "ed25519_public_key", "public_key": caller_key}},
                "password_proof": proof}).encode() + b"\n")
            f.flush()
            line = f.readline()
            out = json.loads(line) if line else None
            if out is not None:
                out["challenge_target"] = ch["target"]
            return out

    def close(self):
        self.stopping = True
        self.srv.close()
