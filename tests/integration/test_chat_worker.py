"""tests/integration/test_chat_worker.py — /ws/chat over an outside worker
(tests/integration/mdp_worker.py, pyzmq, on `workers.listen`) instead of the
embedded agents, with `gateway.require_pairing` false: a worker that dies
holding a turn ends it with AGENT_ERROR on every socket of the session; a
message queued behind it past the session lock timeout gets SESSION_BUSY;
the socket stays usable, and the next worker answers the next message."""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check  # noqa: E402
from test_chat import check_answer, open_chat, recv, run, until_final  # noqa: E402
from test_workers import Worker, endpoint_of  # noqa: E402


def worker_death_is_agent_error(node, ep):
    async def go():
        w1 = Worker(ep, "W1")
        try:
            a, start = await open_chat(node, "")
            b, _ = await open_chat(node, "", session_id=start["session_id"])
            await a.send(json.dumps({"type": "message", "content": "/sleep 600000"}))
            await asyncio.to_thread(w1.wait, "start", 60, "sleep")
            # A message queued behind it waits the session lock timeout (1 s
            # here), then is dropped with SESSION_BUSY, to its sender only.
            await a.send(json.dumps({"type": "message", "content": "queued too long"}))
            busy = await recv(a)
            check(busy["type"] == "error" and busy["code"] == "SESSION_BUSY", f"{busy}")
            w1.kill()  # holding the turn: the broker expires it past its heartbeats
            for ws in (a, b):
                err = (await until_final(ws))[-1]
                check(err["type"] == "error" and err["code"] == "AGENT_ERROR" and err.get("turn_id")
                      and err["message"], f"{err}")
            # The socket is still usable; a new worker takes the next turn.
            w2 = Worker(ep, "W2")
            try:
                await a.send(json.dumps({"type": "message", "content": "hi"}))
                check_answer(await until_final(a), "W2: hi")
                check_answer(await until_final(b), "W2: hi")
            finally:
                w2.kill()
            await a.close()
            await b.close()
        finally:
            w1.kill()
    run(go())


def main():
    os.environ["KITH_SESSION_LOCK_TIMEOUT_SECS"] = "1"  # the daemon inherits it
    node = Daemon("chatworker", config={"workers": {"listen": "tcp://127.0.0.1:0",
                                                    "agent_threads": 0},
                                        "gateway": {"require_pairing": False}})
    results = Results()
    try:
        node.start()
        results.run(worker_death_is_agent_error, node, endpoint_of(node))
        results.stopped(node)
    finally:
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
