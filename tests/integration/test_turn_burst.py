"""tests/integration/test_turn_burst.py — issue 11's shared burst: two
`kith agent --connect tcp://127.0.0.1:PORT` processes, the daemon's two
embedded agent threads and the Python worker (mdp_worker.py, written from
WIRE §19) serve a burst of 1,000 webhook turns over 40 sessions of the real
`kith daemon`, and each turn is answered exactly once: the daemon counts
1,000 turns done and no error, every session's history in /api/sessions
holds each message once with one answer after it, and every kind of worker
served some of them."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Daemon, Results, check, curl, gateway_url, metrics_map, wait_metric  # noqa: E402
from test_workers import Worker, endpoint_of  # noqa: E402

TURNS = 1000
SESSIONS = 40
AGENTS_ALIVE = 'kith_workers_alive{service="kith.agent"}'
DONE = 'kith_turns_total{status="done"}'
ERROR = 'kith_turns_total{status="error"}'


def post_burst(node):
    """TURNS webhooks on one keep-alive connection; every one must be 202."""
    c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=60)
    for i in range(TURNS):
        body = json.dumps({"message": f"m{i}", "session_id": f"burst-{i % SESSIONS}"})
        c.request("POST", "/webhook", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        check(r.status == 202, (i, r.status, data))
    c.close()


def main():
    r = Results()
    node = Daemon("burst", config={"workers": {"agent_threads": 2, "listen": "tcp://127.0.0.1:0"},
                                   "gateway": {"require_pairing": False}})
    node.start()
    ep = endpoint_of(node)
    logs = [open(os.path.join(node.home, f"agent{i}.stderr"), "w+") for i in range(2)]
    agents = [subprocess.Popen([KITH, "agent", "--connect", ep], stderr=logs[i],
                               stdout=subprocess.DEVNULL) for i in range(2)]
    py = Worker(ep, "P")
    try:
        def burst_answered_exactly_once():
            wait_metric(node, AGENTS_ALIVE, lambda v: v == 5)
            before = metrics_map(node)
            post_burst(node)
            wait_metric(node, DONE, lambda v: v >= before.get(DONE, 0) + TURNS, timeout=300)
            after = metrics_map(node)
            check(after.get(DONE, 0) - before.get(DONE, 0) == TURNS, "more turns than messages")
            check(after.get(ERROR, 0) == before.get(ERROR, 0), "turns ended in error")
            seen = set()
            for s in range(SESSIONS):
                status, _, body, _ = curl(gateway_url(node) + f"/api/sessions/burst-{s}")
                check(status == 200, (status, body))
                msgs = json.loads(body)["messages"]
                users = [m["content"] for m in msgs if m["role"] == "user"]
                check(len(users) == len(set(users)), f"session {s}: a message twice")
                check(len(msgs) == 2 * len(users), f"session {s}: {len(msgs)} entries for "
                      f"{len(users)} messages")
                check(all(msgs[i]["role"] == "user" and msgs[i + 1]["role"] == "assistant"
                          for i in range(0, len(msgs), 2)), f"session {s}: not message, answer")
                seen.update(users)
            check(seen == {f"m{i}" for i in range(TURNS)}, f"{TURNS - len(seen)} messages missing")

        def every_kind_of_worker_served():
            served = []
            for a, log in zip(agents, logs):
                a.send_signal(signal.SIGTERM)
                check(a.wait(timeout=60) == 0, "kith agent did not exit 0")
                log.seek(0)
                m = re.search(r"stopped after (\d+) turn", log.read())
                check(m, "kith agent printed no turn count")
                served.append(int(m.group(1)))
            by_python = 0
            while not py.lines.empty():
                words = py.lines.get_nowait()
                by_python += words[:1] == ["served"]
            embedded = TURNS - sum(served) - by_python
            check(all(n > 0 for n in served), f"a kith agent served none: {served}")
            check(by_python > 0, "the Python worker served none")
            check(embedded > 0, f"the embedded agents served none ({served}, {by_python})")
            print(f"served: kith agents {served}, Python {by_python}, embedded {embedded}")

        r.run(burst_answered_exactly_once)
        r.run(every_kind_of_worker_served)
        r.stopped(node)
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
                a.wait()
        py.kill()
        for log in logs:
            log.close()
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
