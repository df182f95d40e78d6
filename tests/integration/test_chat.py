"""tests/integration/test_chat.py — /ws/chat and the session API (DESIGN §6,
WIRE §24) on the real `kith daemon` with its embedded agent workers and the
scripted provider, driven by Python's `websockets` (Debian
python3-websockets, asyncio API), Node's `ws` (chat_client.js) and curl, as
a new user would: pair with the printed code, open /ws/chat with the token
as a `bearer.` subprotocol, talk, restart the daemon, resume."""

import asyncio
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import websockets

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, curl, free_port, gateway_url, metric,  # noqa: E402
                  pair_token, wait_metric, ws_masked, ws_read_until)

TIMEOUT = 60  # generous bound on any one wait; never a speed assertion
FINALS = ("done", "stopped", "error")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))



def chat_url(node, **query):
    q = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    return f"ws://127.0.0.1:{node.gw_port}/ws/chat" + (f"?{q}" if q else "")


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def open_chat(node, token, session_id=None, name=None):
    """A chat socket and its session_start frame (always the first)."""
    ws = await websockets.connect(chat_url(node, session_id=session_id, name=name),
                                  subprotocols=["kith.v1"] + ([f"bearer.{token}"] if token else []),
                                  ping_interval=None, max_size=None)
    check(ws.subprotocol == "kith.v1", f"subprotocol {ws.subprotocol!r}")
    start = await recv(ws)
    check(start.get("type") == "session_start", f"first frame {start}")
    return ws, start


async def until_final(ws, frames=None):
    """Frames up to and including the next final one (done/stopped/error)."""
    frames = [] if frames is None else frames
    while True:
        f = await recv(ws)
        frames.append(f)
        if f["type"] in FINALS:
            return frames


async def say(ws, content):
    await ws.send(json.dumps({"type": "message", "content": content}))
    return await until_final(ws)


def check_answer(frames, want):
    done = frames[-1]
    check(done["type"] == "done", f"turn ended {done}")
    check(done["full_response"] == want, f"full_response {done['full_response']!r} != {want!r}")
    chunks = "".join(f["content"] for f in frames if f["type"] == "chunk")
    check(chunks == want, f"chunks {chunks!r} != {want!r}")
    ids = {f["turn_id"] for f in frames if "turn_id" in f}
    check(len(ids) == 1, f"one turn's frames carry one turn_id: {ids}")
    return done["turn_id"]


def events_until(node, token, pred, last_id=0):
    """Reads /api/events from after `last_id` (the ring replays) until
    pred(event) holds for one; returns the events read."""
    c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT)
    c.request("GET", "/api/events", headers={"Authorization": f"Bearer {token}",
                                             "Last-Event-ID": str(last_id)})
    r = c.getresponse()
    check(r.status == 200, f"/api/events answered {r.status}")
    seen = []
    try:
        while True:
            line = r.fp.readline()
            check(line, f"/api/events ended; saw {seen}")
            if line.startswith(b"data: "):
                ev = json.loads(line[6:])
                seen.append(ev)
                if pred(ev):
                    return seen
    finally:
        c.close()


# ------------------------------------------------------------------ cases

def refused_before_upgrade(node, token):
    async def go():
        for protocols, want in (([], 401), (["kith.v1"], 401), (["kith.v1", "bearer.kith_" + "0" * 64], 401),
                                ([f"bearer.{token}"], 400)):
            try:
                ws = await websockets.connect(chat_url(node), subprotocols=protocols or None,
                                              ping_interval=None)
                await ws.close()
                raise AssertionError(f"{protocols}: upgraded")
            except websockets.exceptions.InvalidStatusCode as e:
                check(e.status_code == want, f"{protocols}: {e.status_code} != {want}")
    run(go())
    # The token in the header or ?token= works as well as the subprotocol.
    async def other_ways():
        ws = await websockets.connect(chat_url(node), subprotocols=["kith.v1"], ping_interval=None,
                                      extra_headers={"Authorization": f"Bearer {token}"})
        check((await recv(ws))["type"] == "session_start", "header bearer")
        await ws.close()
        ws = await websockets.connect(chat_url(node, token=token), subprotocols=["kith.v1"],
                                      ping_interval=None)
        check((await recv(ws))["type"] == "session_start", "query bearer")
        await ws.close()
    run(other_ways())
    status, _, body, _ = curl(chat_url(node, session_id="a b").replace("ws:", "http:"),
                              "-H", f"Authorization: Bearer {token}", "-H", "Upgrade: websocket",
                              "-H", "Connection: Upgrade", "-H", "Sec-WebSocket-Version: 13",
                              "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                              "-H", "Sec-WebSocket-Protocol: kith.v1")
    check(status == 400 and json.loads(body)["code"] == "invalid_session_id", f"{status} {body}")
    status, _, body, _ = curl(chat_url(node, name="bell\x07").replace("ws:", "http:"),
                              "-H", f"Authorization: Bearer {token}", "-H", "Upgrade: websocket",
                              "-H", "Connection: Upgrade", "-H", "Sec-WebSocket-Version: 13",
                              "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                              "-H", "Sec-WebSocket-Protocol: kith.v1")
    check(status == 400 and json.loads(body)["code"] == "invalid_name", f"{status} {body}")


def message_chunks_done(node, token, state):
    async def go():
        ws, start = await open_chat(node, token, name="first chat")
        check(start["resumed"] is False and start["message_count"] == 0, f"{start}")
        check(start["name"] == "first chat" and start["session_id"], f"{start}")
        await ws.send(json.dumps({"type": "connect"}))
        connected = await recv(ws)
        check(connected == {"type": "connected", "session_id": start["session_id"],
                            "protocol": "kith.v1"}, f"{connected}")
        state["turn_id"] = check_answer(await say(ws, "hello there"), "echo: hello there")
        state["session_id"] = start["session_id"]
        await ws.close()
    run(go())


def context_and_attachments(node, token):
    """page_context and attachments reach the agent after the content, as
    compact JSON in their tags (WIRE §24.3): the scripted agent echoes it."""
    async def go():
        ws, _ = await open_chat(node, token)
        await ws.send(json.dumps({"type": "message", "content": "look",
                                  "page_context": {"url": "https://example.org/", "n": 1},
                                  "attachments": [{"name": "a.txt", "text": "x"}]}))
        want = ('echo: look\n\n<page_context>{"url":"https://example.org/","n":1}'
                '</page_context>\n\n<attachments>[{"name":"a.txt","text":"x"}]</attachments>')
        check_answer(await until_final(ws), want)
        await ws.close()
    run(go())


def raw_chat(node, token, frames):
    """The upgrade and `frames` in one write, so they arrive before the
    session is open (its session_start needs the session store's thread);
    returns what came back until the server closed."""
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
    s.sendall(b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Protocol: kith.v1, bearer." + token.encode() + b"\r\n\r\n" +
              b"".join(frames))
    return s


def frames_before_session_start(node, token):
    """Frames that come before session_start wait for it and are then
    handled in order; more than GATEWAY_CHAT_EARLY_FRAMES_MAX (16) close the
    socket 1008 instead of growing a buffer."""
    msgs = [ws_masked(1, json.dumps({"type": "message", "content": f"early {i}"}).encode())
            for i in (1, 2)]
    s = raw_chat(node, token, msgs)
    texts = lambda fr: [json.loads(p) for op, p in fr if op == 1]  # noqa: E731
    done = lambda fr: sum(1 for f in texts(fr) if f["type"] == "done") == 2  # noqa: E731
    got = texts(ws_read_until(s, done)[1])
    s.close()
    check(got and got[0]["type"] == "session_start", got)
    answers = [f["full_response"] for f in got if f["type"] == "done"]
    check(answers == ["echo: early 1", "echo: early 2"], got)

    many = [ws_masked(1, json.dumps({"type": "ping"}).encode())] * 17
    s = raw_chat(node, token, many)
    closed = ws_read_until(s, lambda fr: any(op == 8 for op, _ in fr))[1]
    s.close()
    close = [p for op, p in closed if op == 8]
    check(close and close[0] == (1008).to_bytes(2, "big") + b"too many frames before session_start",
          closed)


def bad_frames_keep_the_socket(node, token):
    async def go():
        ws, _ = await open_chat(node, token)
        for frame, code in (("{nope", "INVALID_JSON"), ("[1]", "INVALID_JSON"),
                            ('{"type":"message","content":5}', "INVALID_JSON"),
                            ('{"type":"dance"}', "UNKNOWN_MESSAGE_TYPE"), ("{}", "UNKNOWN_MESSAGE_TYPE"),
                            ('{"type":"message","content":"  "}', "EMPTY_CONTENT"),
                            ('{"type":"steer","content":"left"}', "NO_ACTIVE_TURN")):
            await ws.send(frame)
            err = await recv(ws)
            check(err["type"] == "error" and err["code"] == code and err["message"],
                  f"{frame}: {err}")
        await ws.send(b"\x01binary")
        err = await recv(ws)
        check(err["type"] == "error" and err["code"] == "INVALID_JSON", f"binary: {err}")
        await ws.send(json.dumps({"type": "stop"}))
        stopped = await recv(ws)
        check(stopped["type"] == "stopped" and stopped.get("turn_id") is None and stopped["message"],
              f"stop with no turn: {stopped}")
        # Still usable after all of that.
        check_answer(await say(ws, "still here"), "echo: still here")
        await ws.close()
    run(go())


def queued_in_order(node, token):
    async def go():
        ws, _ = await open_chat(node, token)
        await ws.send(json.dumps({"type": "message", "content": "/sleep 2000"}))
        await ws.send(json.dumps({"type": "message", "content": "second"}))
        first = await until_final(ws)
        second = await until_final(ws)
        check_answer(first, "slept 2000 ms")
        check_answer(second, "echo: second")
        check(first[-1]["turn_id"] != second[-1]["turn_id"], "two turns")
        await ws.close()
    run(go())


def session_busy_past_the_queue(node, token):
    async def go():
        ws, _ = await open_chat(node, token)
        await ws.send(json.dumps({"type": "message", "content": "/sleep 600000"}))
        for i in range(20):
            await ws.send(json.dumps({"type": "message", "content": f"m{i}"}))
        # 16 wait behind the turn in flight (17 when it had not started yet);
        # the rest are refused at once.
        frames, busy = [], 0
        while busy < 3:
            f = await recv(ws)
            if f["type"] == "error" and f["code"] == "SESSION_BUSY" and "turn_id" not in f:
                busy += 1
            else:
                frames.append(f)
        await ws.send(json.dumps({"type": "stop"}))
        finals = []
        while len(finals) < 21 - busy:
            f = await recv(ws)
            if f["type"] == "error" and f["code"] == "SESSION_BUSY" and "turn_id" not in f:
                busy += 1
            elif f["type"] in FINALS:
                finals.append(f)
        check(busy in (4, 5), f"{busy} refused")
        check(finals[0]["type"] == "stopped", f"first turn {finals[0]}")
        answers = [f.get("full_response") for f in finals[1:]]
        check(answers == [f"echo: m{i}" for i in range(len(answers))], f"{answers}")
        await ws.close()
    run(go())


def every_socket_sees_the_turn(node, token, state):
    async def go():
        a, start = await open_chat(node, token)
        sid = start["session_id"]
        b, start_b = await open_chat(node, token, session_id=sid)
        check(start_b["session_id"] == sid and start_b["resumed"] is True, f"{start_b}")
        seen_a = await say(a, "for both")
        turn = check_answer(seen_a, "echo: for both")
        seen_b = await until_final(b)
        check(check_answer(seen_b, "echo: for both") == turn, "same turn")
        # A turn B starts reaches A too.
        await b.send(json.dumps({"type": "message", "content": "from b"}))
        check_answer(await until_final(a), "echo: from b")
        check_answer(await until_final(b), "echo: from b")
        await a.close()
        await b.close()
    run(go())


async def until_in_flight(node, token, session_id):
    """Returns once a turn of the session has started: its agent_start is
    on /api/events (replayed from the ring, so none is missed)."""
    await asyncio.to_thread(events_until, node, token,
                            lambda e: e["type"] == "agent_start" and e.get("session_id") == session_id)


def stop_reaches_every_socket(node, token):
    async def go():
        a, start = await open_chat(node, token)
        b, _ = await open_chat(node, token, session_id=start["session_id"])
        await a.send(json.dumps({"type": "message", "content": "/sleep 600000"}))
        await until_in_flight(node, token, start["session_id"])
        await b.send(json.dumps({"type": "stop"}))
        fa, fb = (await until_final(a))[-1], (await until_final(b))[-1]
        check(fa["type"] == "stopped" and fa.get("turn_id"), f"{fa}")
        check(fb == fa, f"{fb} != {fa}")
        check_answer(await say(a, "after the stop"), "echo: after the stop")
        await a.close()
        await b.close()
    run(go())


def listen_only_relay(node, token):
    async def go():
        relay, _ = await open_chat(node, token)
        got = []

        async def read():
            while True:
                got.append(json.loads(await relay.recv()))

        reader = asyncio.create_task(read())
        talker, _ = await open_chat(node, token)
        # The relay starts 5 s after the upgrade: keep running turns on
        # another session until it relays one (bounded, not timed).
        for _ in range(TIMEOUT):
            await say(talker, "anyone watching?")
            await asyncio.sleep(1)
            if any(f["type"] == "agent_event" for f in got):
                break
        names = [f["name"] for f in got if f["type"] == "agent_event"]
        check("agent_end" in names or "agent_start" in names, f"relay saw {got}")
        ev = next(f for f in got if f["type"] == "agent_event")
        check(isinstance(ev["data"], dict), f"{ev}")
        # Speaking ends the relay; the socket is a chat client again.
        reader.cancel()
        check_answer(await say(relay, "my turn"), "echo: my turn")
        await relay.close()
        await talker.close()
    run(go())


def events_show_the_turn(node, token, state):
    turn = state["turn_id"]
    seen = events_until(node, token, lambda e: e["type"] == "agent_end" and
                        json.dumps(e).find(turn) >= 0)
    types = [e["type"] for e in seen if turn in json.dumps(e)]
    check("agent_start" in types and types.index("agent_start") < types.index("agent_end"),
          f"{types}")


def sessions_api(node, token, state):
    sid = state["session_id"]
    auth = ["-H", f"Authorization: Bearer {token}"]
    status, ctype, body, _ = curl(*auth, gateway_url(node) + "/api/sessions")
    check(status == 200 and ctype.startswith("application/json"), f"{status} {ctype} {body}")
    listed = {s["id"]: s for s in json.loads(body)["sessions"]}
    check(sid in listed, f"{sid} not in {list(listed)}")
    s = listed[sid]
    check(s["name"] == "first chat" and s["message_count"] >= 2, f"{s}")
    for k in ("created_ms", "updated_ms"):
        check(k in s, f"{k} missing: {s}")
    status, _, body, _ = curl(*auth, gateway_url(node) + f"/api/sessions/{sid}")
    check(status == 200, f"{status} {body}")
    one = json.loads(body)
    msgs = [(m["role"], m["content"]) for m in one["messages"]]
    check(msgs[:2] == [("user", "hello there"), ("assistant", "echo: hello there")], f"{msgs}")
    check(one["message_count"] == len(one["messages"]), f"{one}")
    state["message_count"] = one["message_count"]
    status, _, body, _ = curl(*auth, gateway_url(node) + "/api/sessions/no-such-session")
    check(status == 404 and json.loads(body)["code"], f"{status} {body}")
    status, _, body, _ = curl(*auth, gateway_url(node) + "/api/sessions/bad%20id")
    check(status == 400 and json.loads(body)["code"] == "invalid_session_id", f"{status} {body}")
    for path in ("/api/sessions/", f"/api/sessions/{sid}/extra"):
        status, _, body, _ = curl(*auth, gateway_url(node) + path)
        check(status == 404 and json.loads(body)["code"] == "not_found", f"{path}: {status} {body}")
    status, _, body, _ = curl(*auth, gateway_url(node) + "/api/sessions?limit=0")
    check(status == 400 and json.loads(body)["code"] == "invalid_limit", f"{status} {body}")
    # limit is form-encoded like any query value: %31 is "1"; a word, a
    # number past 1000, one too long to read or a space are refused, and a
    # broken escape already by the HTTP parser.
    status, _, body, _ = curl(*auth, gateway_url(node) + f"/api/sessions/{sid}?limit=%31")
    check(status == 200 and len(json.loads(body)["messages"]) == 1, f"limit=%31: {status} {body}")
    for bad, code in (("ten", "invalid_limit"), ("1001", "invalid_limit"),
                      ("123456789", "invalid_limit"), ("+1", "invalid_limit"),
                      ("%3", "bad_target"), ("%zz", "bad_target")):
        status, _, body, _ = curl(*auth, gateway_url(node) + f"/api/sessions/{sid}?limit={bad}")
        check(status == 400 and json.loads(body)["code"] == code, f"limit={bad}: {status} {body}")
    status, _, body, _ = curl(gateway_url(node) + "/api/sessions")
    check(status == 401 and json.loads(body)["code"] == "unauthorized", f"{status} {body}")
    status, _, body, _ = curl(gateway_url(node) + f"/api/sessions/{sid}")
    check(status == 401, f"{status} {body}")


def session_deleted(node, token, state):
    """DELETE /api/sessions/{id}: refused while a socket is attached, then
    the session and its messages go (durably), its history with them."""
    auth = ("-H", f"Authorization: Bearer {token}")
    url = gateway_url(node) + "/api/sessions/to-delete"

    def delete():
        st, _, body, _ = curl("-X", "DELETE", *auth, url)
        return st, json.loads(body)

    async def go():
        ws, _ = await open_chat(node, token, session_id="to-delete")
        check_answer(await say(ws, "remember me"), "echo: remember me")
        st, body = delete()
        check(st == 409 and body["code"] == "session_busy", f"attached: {st} {body}")
        await ws.close()
        deadline = time.time() + TIMEOUT
        while True:  # the socket's detach reaches the turns a moment after its close
            st, body = delete()
            if st != 409 or time.time() > deadline:
                break
            time.sleep(0.05)
        check(st == 200 and body == {"deleted": True, "id": "to-delete", "messages": 2},
              f"delete {st} {body}")
        st, _, body, _ = curl(*auth, url)
        check(st == 404, f"read after delete {st} {body}")
        st, _, body, _ = curl(*auth, gateway_url(node) + "/api/sessions")
        check("to-delete" not in [x["id"] for x in json.loads(body)["sessions"]], body)
        st, body = delete()
        check(st == 404 and body["code"] == "not_found", f"twice {st} {body}")
        st, _, body, _ = curl("-X", "DELETE", *auth, gateway_url(node) + "/api/sessions/bad%20id")
        check(st == 400 and json.loads(body)["code"] == "invalid_session_id", f"bad id {st} {body}")
        st, _, body, _ = curl("-X", "DELETE", url)
        check(st == 401, f"no token {st} {body}")
        # The same id again is a new, empty session: no history came back.
        ws, start = await open_chat(node, token, session_id="to-delete")
        check(start["resumed"] is False and start["message_count"] == 0, f"reopened {start}")
        frames = await say(ws, "/peers")
        check(frames[-1]["type"] == "done", f"turn {frames[-1]}")
        await ws.close()
        st, _, body, _ = curl(*auth, url)
        check(st == 200 and [m["content"] for m in json.loads(body)["messages"]][0] == "/peers",
              f"new history {body}")
        while True:
            st, body = delete()
            if st != 409 or time.time() > deadline:
                break
            time.sleep(0.05)
        check(st == 200, f"second delete {st} {body}")
        state["deleted"] = "to-delete"
    run(go())


def turn_over_http(node, token, state):
    """POST /api/sessions/{id}/messages: a turn over plain HTTP, answered
    with its final frame; a socket on the same session sees the turn; the
    history has it; every refusal is typed."""
    url = gateway_url(node) + "/api/sessions/over-http/messages"

    def post(body, *extra, path=url, ctype="application/json"):
        args = ["-X", "POST", "-H", f"Authorization: Bearer {token}", *extra, "--data-binary",
                body]
        if ctype:
            args += ["-H", f"Content-Type: {ctype}"]
        st, _, out, _ = curl(*args, path)
        return st, json.loads(out) if out else None

    st, got = post(json.dumps({"content": "hello over http"}))
    check(st == 200 and got["type"] == "done" and got["full_response"] == "echo: hello over http"
          and got.get("turn_id"), f"post {st} {got}")
    # A tool turn, while a socket on the same session watches it.
    async def watched():
        ws, start = await open_chat(node, token, session_id="over-http")
        check(start["resumed"] is True and start["message_count"] == 2, f"start {start}")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, lambda: post(json.dumps({"content": "/peers"})))
        frames = await until_final(ws)
        st2, got2 = await fut
        await ws.close()
        return frames, st2, got2
    frames, st, got = run(watched())
    check(st == 200 and got["type"] == "done" and got["turn_id"] == frames[-1]["turn_id"],
          f"watched {st} {got} / {frames[-1]}")
    check(any(f["type"] == "tool_call" for f in frames), f"the socket saw {frames}")
    st, _, body, _ = curl("-H", f"Authorization: Bearer {token}",
                          gateway_url(node) + "/api/sessions/over-http")
    msgs = [m["content"] for m in json.loads(body)["messages"]]
    check(msgs[0] == "hello over http" and msgs[1] == "echo: hello over http" and
          msgs[2] == "/peers", f"history {msgs}")
    # Refusals.
    for body, code in (('{"content": ""}', "invalid_body"), ('{"content": 5}', "invalid_body"),
                       ('{"content": "a", "x": 1}', "invalid_body"), ('{"content":', "invalid_json")):
        st, got = post(body)
        check(st == 400 and got["code"] == code, f"{body}: {st} {got}")
    st, got = post('{"content":"a"}', ctype="text/plain")
    check(st == 415, f"text/plain {st} {got}")
    st, got = post('{"content":"a"}', path=gateway_url(node) + "/api/sessions/bad%20id/messages")
    check(st == 400 and got["code"] == "invalid_session_id", f"bad id {st} {got}")
    st, got = post('{"content":"a"}', path=gateway_url(node) + "/api/sessions/over-http")
    check(st == 405, f"POST without /messages {st} {got}")
    st, _, out, _ = curl("-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                         '{"content":"a"}', url)
    check(st == 401, f"no token {st} {out}")
    state["over_http"] = True

    # A full queue: a socket holds a turn and fills the queue behind it (its
    # own message refused says the queue is full); the post is 429.
    async def full_queue():
        ws, _ = await open_chat(node, token, session_id="busy-over-http")
        await ws.send(json.dumps({"type": "message", "content": "/sleep 600000"}))
        for i in range(20):
            await ws.send(json.dumps({"type": "message", "content": f"q{i}"}))
        while True:
            f = await recv(ws)
            if f["type"] == "error" and f["code"] == "SESSION_BUSY" and "turn_id" not in f:
                break
        loop = asyncio.get_running_loop()
        st, got = await loop.run_in_executor(None, lambda: post(
            '{"content":"one more"}', path=gateway_url(node) + "/api/sessions/busy-over-http/messages"))
        await ws.send(json.dumps({"type": "stop"}))
        await ws.close()
        return st, got
    st, got = run(full_queue())
    check(st == 429 and got["code"] == "session_busy", f"full queue {st} {got}")


def deleted_stays_deleted(node, token, state):
    st, _, body, _ = curl("-H", f"Authorization: Bearer {token}",
                          gateway_url(node) + f"/api/sessions/{state['deleted']}")
    check(st == 404, f"a deleted session came back after a restart: {st} {body}")


def resume_after_restart(node, token, state):
    async def go():
        ws, start = await open_chat(node, token, session_id=state["session_id"])
        check(start["resumed"] is True, f"{start}")
        check(start["message_count"] == state["message_count"],
              f"{start['message_count']} != {state['message_count']}")
        check(start["name"] == "first chat", f"{start}")
        check_answer(await say(ws, "back again"), "echo: back again")
        await ws.close()
        ws, again = await open_chat(node, token, session_id=state["session_id"])
        check(again["message_count"] == state["message_count"] + 2, f"{again}")
        await ws.close()
    run(go())


def node_ws_client(node, token):
    script = os.path.join(os.path.dirname(__file__), "chat_client.js")
    modules = os.path.join(os.path.dirname(__file__), "..", "node_modules", "ws")
    check(os.path.isdir(modules), "tests/node_modules/ws is missing: run tools/setup")
    p = subprocess.run(["node", script, chat_url(node), token], capture_output=True, text=True,
                       timeout=120)
    out = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    check(p.returncode == 0 and out.get("ok"), (p.returncode, p.stdout, p.stderr))


def http_turns_bounded_and_answered_at_stop():
    """256 turns over HTTP wait at once (16 sessions, each a turn that
    sleeps and 15 messages behind it); one more is 503 busy with
    Retry-After while /health still answers. Then a stop answers every one
    of the 256: with its turn's final frame, or 503 shutting_down — none is
    reset."""
    node = Daemon("chat-posts", config={"gateway": {"require_pairing": False},
                                        "workers": {"agent_threads": 2}})
    socks = []
    try:
        node.start()
        for i in range(257):
            sid = f"held-{i // 16}"  # the 257th alone in a 17th session: not 429
            body = json.dumps({"content": "/sleep 600000" if i % 16 == 0 else f"m{i}"}).encode()
            s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=60)
            s.sendall(b"POST /api/sessions/%s/messages HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (sid.encode(), len(body), body))
            socks.append(s)
        # Whichever came last to the server is the one refused (bounded wait).
        busy, deadline = [], time.monotonic() + 60
        while not busy and time.monotonic() < deadline:
            ready, _, _ = select.select(socks, [], [], 0.5)
            busy = ready
        check(len(busy) == 1, f"{len(busy)} answered early")
        head, _, rest = busy[0].recv(65536).partition(b"\r\n\r\n")
        check(head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), head)
        check(json.loads(rest)["code"] == "busy", rest)
        socks.remove(busy[0])
        busy[0].close()
        st, _, _, _ = curl(gateway_url(node) + "/health")
        check(st == 200, st)
        ready, _, _ = select.select(socks, [], [], 0.2)
        check(not ready, f"{len(ready)} more answered before the stop")

        node.proc.send_signal(signal.SIGTERM)
        codes = {}
        for s in socks:
            data = b""
            while True:
                chunk = s.recv(65536)  # a reset raises: each must be answered
                if not chunk:
                    break
                data += chunk
            s.close()
            head, _, rest = data.partition(b"\r\n\r\n")
            status = head[9:12].decode()
            check(status in ("200", "503"), data[:300])
            if status == "503":
                check(json.loads(rest)["code"] == "shutting_down", rest)
            codes[status] = codes.get(status, 0) + 1
        socks = []
        node.proc.wait(timeout=60)
        check(node.proc.returncode == 0, f"exit {node.proc.returncode}")
        print(f"at the stop: {codes}")
    finally:
        for s in socks:
            s.close()
        node.cleanup()


def sockets_past_the_bound(node, token):
    """WIRE §24: at most 4096 chat sockets are attached at once (all
    sessions); the next upgrade is 503 too_many_subscribers, and a place
    that frees is taken again. kith_chat_sockets counts them."""
    bound = 4096

    def upgrade():
        s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=TIMEOUT)
        s.sendall(b"GET /ws/chat?session_id=crowd HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Protocol: kith.v1, bearer." + token.encode() + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        return s, head.split(b"\r\n", 1)[0], head

    held = []
    try:
        # One at a time: each counts as unauthenticated until its upgrade
        # is read, and those have a bound of their own (2,500).
        for _ in range(bound):
            s, status, _ = upgrade()
            check(status == b"HTTP/1.1 101 Switching Protocols", status)
            held.append(s)
        wait_metric(node, "kith_chat_sockets", lambda v: v == bound)
        s, status, head = upgrade()
        check(status.startswith(b"HTTP/1.1 503") and b"too_many_subscribers" in head, head)
        s.close()
        held.pop().close()
        wait_metric(node, "kith_chat_sockets", lambda v: v == bound - 1)
        s, status, _ = upgrade()
        check(status == b"HTTP/1.1 101 Switching Protocols", status)
        held.append(s)
    finally:
        for s in held:
            s.close()
    wait_metric(node, "kith_chat_sockets", lambda v: v == 0)
    # and the daemon goes on serving turns
    async def go():
        ws, _ = await open_chat(node, token)
        await ws.send(json.dumps({"type": "message", "content": "after the crowd"}))
        frames = await until_final(ws)
        check(frames[-1]["type"] == "done", frames[-1])
        await ws.close()
    run(go())


def main():
    # A fixed port: the restart must come back where the clients are.
    # The embedded agents (scripted provider), as `kith daemon` runs by default.
    node = Daemon("chat", config={"gateway": {"port": free_port()},
                                  "workers": {"agent_threads": 2}})
    results = Results()
    state = {}
    try:
        node.start()
        token = pair_token(node)
        results.run(sockets_past_the_bound, node, token)
        results.run(refused_before_upgrade, node, token)
        results.run(message_chunks_done, node, token, state)
        results.run(bad_frames_keep_the_socket, node, token)
        results.run(context_and_attachments, node, token)
        results.run(frames_before_session_start, node, token)
        results.run(queued_in_order, node, token)
        results.run(session_busy_past_the_queue, node, token)
        results.run(every_socket_sees_the_turn, node, token, state)
        results.run(stop_reaches_every_socket, node, token)
        results.run(listen_only_relay, node, token)
        results.run(node_ws_client, node, token)
        if "turn_id" in state:
            results.run(events_show_the_turn, node, token, state)
            results.run(sessions_api, node, token, state)
            results.run(session_deleted, node, token, state)
            results.run(turn_over_http, node, token, state)
        if results.stopped(node) and "message_count" in state:
            open(node.log_path, "wb").close()  # start() waits for this run's "ready"
            node.start()
            results.run(resume_after_restart, node, token, state)
            if "deleted" in state:
                results.run(deleted_stays_deleted, node, token, state)
            results.stopped(node)
    finally:
        node.cleanup()
    results.run(http_turns_bounded_and_answered_at_stop)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
