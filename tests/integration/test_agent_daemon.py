"""tests/integration/test_agent_daemon.py — kith's own agent workers against
the real daemon: two `kith agent --connect tcp://127.0.0.1:PORT` processes
(workers.listen) serve the inbox's turns with the scripted provider — a
peer's request gets a signed response carrying the agent's answer, `/send`
runs the router's send_message tool to the peer and `/request` its
send_request tool — and `kill -9` of the agent
holding a `/sleep 3000` turn ends that turn as an error, after which the
next message is answered by the other agent. A second daemon with the
default configuration answers through its embedded agent threads."""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from mdp_broker import KITH  # noqa: E402
from peer import Daemon, Peer, Results, check, metrics_map, wait_metric  # noqa: E402
from test_workers import DONE, ERROR, AckServer, AckServerUds, endpoint_of, send, wait_inbox_empty  # noqa: E402

import subprocess  # noqa: E402
import threading  # noqa: E402


class Agent:
    """A `kith agent` process whose log (debug: turn starts and ends) is kept."""

    def __init__(self, endpoint, name):
        self.name = name
        self.proc = subprocess.Popen([KITH, "agent", "--connect", endpoint, "--log-level", "debug"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def started(self, turns=1):
        return sum(1 for line in self.log if re.search(r"turn \S+ started", line)) >= turns

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def wait_for(pred, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def response_to(acks, req):
    ok, env = acks.next()
    check(ok, "the response's signature does not verify")
    k = env["kind"]
    check(k["type"] == "response" and k["in_reply_to"] == req["id"], f"kind {k}")
    return k


def main():
    r = Results()
    peer = Peer()
    acks = AckServer(peer)
    node = Daemon("agents", config={"workers": {"listen": "tcp://127.0.0.1:0", "agent_threads": 0}})
    node.trust("peer", peer.pk, f"tcp://127.0.0.1:{acks.port}")
    # A second peer reached over a Unix socket: the router's send tool
    # dials it without any lookup, as it does an IP literal.
    upeer = Peer()
    uacks = AckServerUds(upeer, os.path.join(node.home, "upeer.sock"))
    node.trust("upeer", upeer.pk, f"uds://{uacks.path}")
    node.start()
    ep = endpoint_of(node)
    agents = [Agent(ep, "A"), Agent(ep, "B")]
    try:
        def two_agents_join():
            wait_metric(node, 'kith_workers_alive{service="kith.agent"}', lambda v: v == 2)

        def request_answered_by_an_agent():
            req = peer.request(node.pk, "ping", {"n": 1})
            send(node, req)
            k = response_to(acks, req)
            check(k["status"] == "completed", k)
            check(k["result"] == 'echo: request ping: {"n":1}', k)
            wait_inbox_empty(node)

        def send_tool_reaches_the_peer():
            send(node, peer.message(node.pk, "/send peer hi there"))
            ok, env = acks.next()
            check(ok and env["kind"] == {"type": "message", "body": "hi there"}, f"the peer got {env['kind']}")
            wait_inbox_empty(node)

        def request_tool_reaches_the_peer():
            # send_request: the peer gets a signed request with the intent
            # and the params the agent gave, CBOR from its JSON.
            send(node, peer.message(node.pk, '/request peer do.thing {"x":1,"y":[true,"z"]}'))
            ok, env = acks.next()
            check(ok and env["kind"] == {"type": "request", "intent": "do.thing",
                                         "params": {"x": 1, "y": [True, "z"]}},
                  f"the peer got {env['kind']}")
            wait_inbox_empty(node)

        def send_tool_over_a_unix_socket():
            send(node, peer.message(node.pk, "/send upeer hi over uds"))
            ok, env = uacks.next()
            check(ok and env["kind"] == {"type": "message", "body": "hi over uds"},
                  f"the peer got {env['kind']}")
            wait_inbox_empty(node)

        def kill_9_mid_sleep():
            before_err = metrics_map(node).get(ERROR, 0)
            counts = [sum(1 for line in a.log if "started" in line) for a in agents]
            send(node, peer.message(node.pk, "/sleep 3000"))
            wait_for(lambda: any(a.started(c + 1) for a, c in zip(agents, counts)), "the turn to start")
            holder = next(a for a, c in zip(agents, counts) if a.started(c + 1))
            other = next(a for a in agents if a is not holder)
            holder.kill()
            # The broker declares the holder dead; the turn ends AGENT_ERROR.
            wait_metric(node, ERROR, lambda v: v >= before_err + 1)
            wait_inbox_empty(node)
            # The next message is answered, by the other agent.
            before = sum(1 for line in other.log if "started" in line)
            req = peer.request(node.pk, "after", {})
            send(node, req)
            k = response_to(acks, req)
            check(k["status"] == "completed" and k["result"] == "echo: request after: {}", k)
            check(other.started(before + 1), "the other agent did not run it")

        def agent_sigterm_exits_0():
            live = [a for a in agents if a.proc.poll() is None]
            for a in live:
                a.proc.terminate()
                check(a.proc.wait(timeout=30) == 0, f"agent {a.name} exit {a.proc.returncode}")
            wait_metric(node, 'kith_workers_alive{service="kith.agent"}', lambda v: v == 0)

        r.run(two_agents_join)
        r.run(request_answered_by_an_agent)
        r.run(send_tool_reaches_the_peer)
        r.run(request_tool_reaches_the_peer)
        r.run(send_tool_over_a_unix_socket)
        r.run(kill_9_mid_sleep)
        r.run(agent_sigterm_exits_0)
        r.stopped(node)
    finally:
        for a in agents:
            a.kill()
        node.cleanup()

    # The default agent configuration: two embedded threads, scripted.
    embedded = Daemon("embedded", config={"workers": {"agent_threads": 2}})
    embedded.trust("peer", peer.pk, f"tcp://127.0.0.1:{acks.port}")
    try:
        embedded.start()

        def embedded_threads_answer():
            wait_metric(embedded, 'kith_workers_alive{service="kith.agent"}', lambda v: v >= 2)
            req = peer.request(embedded.pk, "hi", [1, 2])
            send(embedded, req)
            k = response_to(acks, req)
            check(k["status"] == "completed" and k["result"] == "echo: request hi: [1,2]", k)
            send(embedded, peer.message(embedded.pk, "/fail"))
            wait_metric(embedded, ERROR, lambda v: v >= 1)
            wait_metric(embedded, DONE, lambda v: v >= 1)

        r.run(embedded_threads_answer)
        r.stopped(embedded)
    finally:
        embedded.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
