"""tests/integration/test_openclaw_device_drop.py — a device's deviceToken
(WIRE §25.8) on a real `kith daemon` when a connect with another bearer
token ends before its hello-ok.

OpenClaw's reference client (@openclaw/gateway-client, openclaw_client.mjs)
joins with the paired token and stores the deviceToken hello-ok hands it.
The operator then gives the device's host a second bearer token, and a
connect with it is dropped by the client right after `connect` (its Close
in the same write as the request, so the server reads both before its
token store answers): the client never sees a hello-ok. (Before the fix the
connect waited for the new token's row, which landed after the Close and
replaced the device's token; now it does not wait, and its hello-ok, if
it goes out at all, carries no new token.) Nothing it holds may stop
working for that: the reference client connects with its stored
deviceToken alone and is let in (it was refused AUTH_DEVICE_TOKEN_MISMATCH,
and the client dropped its token). A connect with the second token that
does reach hello-ok leaves the device its token too (no deviceToken in
hello-ok: the one the device holds is still in force), and the first
token still gives back the same one.

Every wait is a deadline for progress (TIMEOUT), never a speed check."""

import base64
import hashlib
import json
import os
import socket
import sys

import nacl.signing

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, curl, free_port, gateway_url, pair_token,  # noqa: E402
                  ws_masked, ws_server_frames)
from test_openclaw import b64u, device_row, reference  # noqa: E402

TIMEOUT = 60


def mint(node, token, name):
    st, _, body, _ = curl("-X", "POST", "-H", f"Authorization: Bearer {token}",
                          "-H", "Content-Type: application/json",
                          "--data", json.dumps({"scope": "operator", "name": name}),
                          gateway_url(node) + "/api/tokens")
    check(st == 201, f"mint {st} {body}")
    return json.loads(body)["token"]


def signing_key(ident):
    """The reference client's Ed25519 key (PKCS#8 PEM: the seed is last)."""
    pem = "".join(l for l in ident["privateKeyPem"].splitlines() if "-----" not in l)
    return nacl.signing.SigningKey(base64.b64decode(pem)[-32:])


def connect_frame(ident, token, nonce, ts, device_token=None):
    sk = signing_key(ident)
    pk = bytes(sk.verify_key)
    check(hashlib.sha256(pk).hexdigest() == ident["deviceId"], "the key is the device's")
    scopes = ["operator.read", "operator.write"]
    signed = "|".join(["v3", ident["deviceId"], "cli", "cli", "operator", ",".join(scopes),
                       str(ts), token, nonce, "linux", ""])
    sig = sk.sign(signed.encode()).signature
    return json.dumps({"type": "req", "id": "c1", "method": "connect", "params": {
        "minProtocol": 4, "maxProtocol": 4,
        "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"},
        "role": "operator", "scopes": scopes,
        "auth": {"token": token, **({"deviceToken": device_token} if device_token else {})},
        "device": {"id": ident["deviceId"], "publicKey": b64u(pk), "signature": b64u(sig),
                   "signedAt": ts, "nonce": nonce}}}).encode()


class RawSocket:
    """An upgraded socket read as one stream: the frames so far."""

    def __init__(self, node):
        self.s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
        self.data = b""
        self.s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
        frames = self.until(lambda f: len(f) >= 1)
        head = self.data.partition(b"\r\n\r\n")[0]
        check(b" 101 " in head.split(b"\r\n")[0] and frames, f"upgrade {head!r}")
        self.challenge = json.loads(frames[0][1])
        check(self.challenge["event"] == "connect.challenge", f"challenge {self.challenge}")

    def frames(self):
        head, sep, rest = self.data.partition(b"\r\n\r\n")
        return ws_server_frames(rest) if sep else []

    def until(self, pred):
        """Reads until pred(frames) holds or the server closes the socket."""
        while not pred(self.frames()):
            chunk = self.s.recv(65536)
            if not chunk:
                break
            self.data += chunk
        return self.frames()

    def connect(self, ident, token, device_token=None):
        p = self.challenge["payload"]
        return connect_frame(ident, token, p["nonce"], p["ts"], device_token)

    def close(self):
        self.s.close()


def dropped_connect(node, ident, token):
    """connect, and the client's Close in the same write: the server's text
    frames after the challenge, to its Close."""
    ws = RawSocket(node)
    try:
        ws.s.sendall(ws_masked(0x1, ws.connect(ident, token)) + ws_masked(0x8, b"\x03\xe8"))
        frames = ws.until(lambda f: any(op == 0x8 for op, _ in f))
        check(any(op == 0x8 for op, _ in frames), f"no Close: {frames}")
        return [p for op, p in frames[1:] if op == 0x1]
    finally:
        ws.close()


def main():
    node = Daemon("openclaw-device-drop", config={"gateway": {"port": free_port()}}).start()
    r = Results()
    try:
        b1 = pair_token(node)
        b2 = mint(node, b1, "second")
        state = os.path.join(node.home, "device.json")
        first = {}

        def joined():
            out = reference(node, b1, "device_first", state)
            first["dt"] = out["hello"]["auth"].get("deviceToken", "")
            check(first["dt"].startswith("kithdev_") and out["stored"] == first["dt"],
                  f"first {out}")
        r.run(joined)
        ident = json.load(open(state))["identity"]

        def dropped_with_another_bearer():
            before = device_row(node, ident["deviceId"])
            texts = dropped_connect(node, ident, b2)
            # No hello-ok came (the Close was read first), or one that hands
            # out no new token (the device keeps its own, nothing to wait for).
            check(not any(b'"hello-ok"' in t and b'"deviceToken"' in t for t in texts),
                  f"a hello-ok with a new deviceToken: {texts}")
            # A write after it: its device record (if any) is durable once
            # this one is (the store answers in order).
            mint(node, b1, "barrier")
            now = device_row(node, ident["deviceId"])
            check(now[4] == before[4], "the dropped connect replaced the device's token hash")
            out = reference(node, "-", "device_again", state)
            check(out.get("hello") and out["hello"]["auth"].get("deviceToken") == first["dt"]
                  and not out["cleared"], f"the stored deviceToken after the drop: {out}")
        r.run(dropped_with_another_bearer)

        def another_bearer_connected():
            # The second token, to its hello-ok: let in, and the device keeps
            # the token it holds (hello-ok hands out none it would replace).
            ws = RawSocket(node)
            try:
                ws.s.sendall(ws_masked(0x1, ws.connect(ident, b2)))
                frames = ws.until(lambda f: len(f) >= 2)
                texts = [json.loads(p) for op, p in frames[1:2] if op == 0x1]
            finally:
                ws.close()
            check(texts and texts[0].get("ok") is True and
                  texts[0]["payload"]["type"] == "hello-ok", f"connect with b2: {texts}")
            check("deviceToken" not in texts[0]["payload"]["auth"], f"auth {texts[0]}")
            # The same with the device's own token beside it (the reference
            # client's retry form): hello-ok repeats that one; a wrong one
            # is not repeated (the bearer token lets the socket in).
            for sent, want in ((first["dt"], first["dt"]), ("kithdev_" + "0" * 64, None)):
                ws = RawSocket(node)
                try:
                    ws.s.sendall(ws_masked(0x1, ws.connect(ident, b2, sent)))
                    frames = ws.until(lambda f: len(f) >= 2)
                finally:
                    ws.close()
                res = json.loads(frames[1][1])
                check(res.get("ok") is True and
                      res["payload"]["auth"].get("deviceToken") == want, f"with {sent}: {res}")
            mint(node, b1, "barrier 2")
            out = reference(node, "-", "device_again", state)
            check(out.get("hello") and out["hello"]["auth"].get("deviceToken") == first["dt"],
                  f"the stored deviceToken after b2 connected: {out}")
            out = reference(node, b1, "device_again", state)
            check(out.get("hello") and out["hello"]["auth"].get("deviceToken") == first["dt"],
                  f"the first bearer again: {out}")
        r.run(another_bearer_connected)
        r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
