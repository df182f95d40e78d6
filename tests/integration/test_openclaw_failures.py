"""tests/integration/test_openclaw_failures.py — failure paths of the
OpenClaw endpoint (gateway/route_openclaw.c, WIRE §25.6) on a real `kith
daemon` with its embedded agent workers, where the refusal comes from
another module and the endpoint must still answer every run:

- A session state.db cannot keep (limits.sessions_max, 1 here): the run
  that opened it ends in error, saying so, and so does every later run on
  that session from the same socket — the socket's attachment to the
  failed session is not reused as if it were open (a run accepted on it
  would wait for ever for a session start that never comes). The socket
  serves its open session after.

Every wait is a deadline for progress (TIMEOUT), never a speed check."""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, free_port, pair_token  # noqa: E402
from test_openclaw import RunWatch, handshake, recv  # noqa: E402


async def failed_session_again(node, token):
    ws, res = await handshake(node, token, version=2)
    check(res["ok"] is True, f"hello {res}")
    w = RunWatch(ws)
    # The one session state.db keeps.
    check((await w.chat("a1", "fail-open", "first"))["ok"] is True, "first run")
    await w.pump(lambda: "a1" in w.ends)
    check(w.ends["a1"]["state"] == "final", f"first run {w.ends['a1']}")
    # A second session: not kept. Each run on it ends in error, the second
    # and third as the first.
    for i in range(1, 4):
        key = f"b{i}"
        res = await w.chat(key, "fail-full", f"no room {i}")
        check(res["ok"] is True and res["payload"]["status"] == "started", f"{key}: {res}")
        await w.pump(lambda: key in w.ends)
        check(w.ends[key]["state"] == "error" and
              "limits.sessions_max" in w.ends[key]["errorMessage"], f"{key}: {w.ends[key]}")
    # agent, the same: its final answer says why.
    await ws.send(json.dumps({"type": "req", "id": "g1", "method": "agent", "params": {
        "message": "no room", "sessionKey": "fail-full", "idempotencyKey": "g1"}}))
    answers = []
    while len(answers) < 2:
        f = await recv(ws)
        if f["type"] == "res" and f["id"] == "g1":
            answers.append(f)
    check(answers[0]["ok"] is True and answers[0]["payload"]["status"] == "accepted",
          f"agent accepted {answers[0]}")
    check(answers[1]["ok"] is False and answers[1]["error"]["code"] == "UNAVAILABLE" and
          answers[1]["error"]["details"] == {"code": "STORAGE_FULL"}, f"agent end {answers[1]}")
    # The open session still serves the socket.
    check((await w.chat("a2", "fail-open", "again"))["ok"] is True, "run after")
    await w.pump(lambda: "a2" in w.ends)
    check(w.ends["a2"]["state"] == "final", f"run after {w.ends['a2']}")
    await ws.close()


def main():
    node = Daemon("openclaw-failures", config={"workers": {"agent_threads": 1},
                                               "limits": {"sessions_max": 1},
                                               "gateway": {"port": free_port()}}).start()
    r = Results()
    try:
        token = pair_token(node)
        r.run(lambda: asyncio.run(asyncio.wait_for(failed_session_again(node, token), 300)),
              name="failed_session_again")
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
