"""tests/integration/test_openclaw_presence.py — presence on the OpenClaw
endpoint (WIRE §25.3) costs one list per reader per tick interval, never
one per join: with N read-scope sockets joining and leaving, the daemon
used to send every reader a full list on every change (N² lists of N
entries). Now a reader gets at most one presence event between two of
its ticks, and the latest list always arrives.

A reader connects (OpenClaw's local backend path, scope operator.read),
then 40 more read-scope sockets connect at once and close. The reader's
events, in seq order (no gaps), hold at most one presence between two
consecutive ticks; once the joiners are gone, its last presence names
only itself and the scopeless socket, as system-presence does; a socket without a read scope gets no presence at
all. Everything is counted from frames, never timed: ticks come every
TICK_MS, and the checks hold however long the joins take."""

import asyncio
import json
import os
import sys

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, pair_token, wait_metric  # noqa: E402

TIMEOUT = 60  # generous bound on any one wait; never a speed assertion
TICK_MS = 300
JOINERS = 40


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def backend(node, token, instance, scopes=("operator.read",)):
    """A socket past hello-ok on the local backend path (no device)."""
    ws = await websockets.connect(f"ws://127.0.0.1:{node.gw_port}/", ping_interval=None,
                                  max_size=None)
    ch = await recv(ws)
    check(ch.get("event") == "connect.challenge", f"challenge {ch}")
    await ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {
        "minProtocol": 4, "maxProtocol": 4,
        "client": {"id": "gateway-client", "mode": "backend", "instanceId": instance},
        "scopes": list(scopes), "auth": {"token": token}}}))
    while True:
        f = await recv(ws)
        if f.get("type") == "res":
            check(f.get("ok") is True, f"connect {f}")
            return ws, f["payload"]


def instances(presence_payload):
    return sorted(e.get("instanceId", "") for e in presence_payload["presence"])


async def presence_coalesced(node, token):
    reader, hello = await backend(node, token, "reader")
    check(instances(hello["snapshot"]) == ["reader"], f"snapshot {hello['snapshot']}")
    deaf, _ = await backend(node, token, "deaf", scopes=("operator.approvals",))
    joiners = await asyncio.gather(*(backend(node, token, f"j{i}") for i in range(JOINERS)))
    for ws, _ in joiners:
        await ws.close()

    # Once the daemon has let the joiners go, a health request marks a
    # point in the reader's stream after the last change: the tick after
    # its answer brings any list still owed (WIRE §25.3), and a second
    # tick shows that one was read.
    wait_metric(node, "kith_openclaw_connected", lambda v: v == 2)
    await reader.send(json.dumps({"type": "req", "id": "h", "method": "health"}))
    events, answered, ticks_after = [], False, 0
    while ticks_after < 2:
        f = await recv(reader)
        if f.get("type") == "res":
            check(f["id"] == "h" and f["ok"] is True, f"health {f}")
            answered = True
            continue
        check(f.get("type") == "event", f"reader got {f}")
        events.append(f)
        ticks_after += answered and f["event"] == "tick"
    seqs = [e["seq"] for e in events]
    check(seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seqs with gaps {seqs}")
    # At most one presence between two ticks, however the joins fell.
    per_interval, worst = 0, 0
    for e in events:
        if e["event"] == "tick":
            per_interval = 0
        elif e["event"] == "presence":
            per_interval += 1
            worst = max(worst, per_interval)
    kinds = [e["event"] for e in events]
    check(worst <= 1, f"{worst} presence events in one tick interval: {kinds}")
    # The latest list arrived: deaf (connected, no scope) and the reader.
    want = ["deaf", "reader"]
    last = [e for e in events if e["event"] == "presence"][-1]
    check(instances(last["payload"]) == want, f"last presence {last}")

    # It is what system-presence says.
    await reader.send(json.dumps({"type": "req", "id": "p", "method": "system-presence"}))
    while True:
        f = await recv(reader)
        if f.get("type") == "res" and f["id"] == "p":
            break
    check(sorted(e.get("instanceId", "") for e in f["payload"]) == want, f"system-presence {f}")

    # A socket without a read scope: ticks, never a presence.
    seen = []
    while seen.count("tick") < 2:
        seen.append((await recv(deaf))["event"])
    check("presence" not in seen, f"the scopeless socket got {seen}")
    await reader.close()
    await deaf.close()


def main():
    os.environ["KITH_OPENCLAW_TICK_MS"] = str(TICK_MS)
    node = Daemon("ocpresence").start()
    r = Results()
    try:
        token = pair_token(node)
        r.run(lambda: asyncio.run(asyncio.wait_for(presence_coalesced(node, token), 300)),
              name="presence_coalesced")
        r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
