#!/usr/bin/python3
"""tests/integration/test_cddl_live.py — worker bodies captured live, checked
against spec/worker.cddl (test_cddl.py does the golden ones).

A real `kith daemon` (workers.listen on loopback, no embedded agents) and a
real `kith agent` (scripted provider) talk through a recording relay written
here with pyzmq: the agent's DEALER connects to the relay's ROUTER, and the
relay speaks to the daemon's broker on one DEALER of its own, passing every
MDP message through unchanged and keeping each REQUEST body (the router's
encoder) and each PARTIAL and FINAL body (the agent's encoder). Chat sockets
then drive turns that make every kind of body appear: an echo, a router tool
(tool_call, tool_result both ways), thinking, a provider error, a steer, and
a stop; and a signed request envelope from a trusted peer (a turn whose
origin carries the envelope's id, sender and type). Every captured body must match worker-request or worker-reply of the
schema, and every kind named below must have been seen (so the sample
cannot silently shrink)."""

import asyncio
import json
import os
import subprocess
import sys
import threading

import cbor2
import zmq

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Daemon, Results, check  # noqa: E402
from test_cddl import Schema, Unsupported, cddl_ast, cddl_syntax_ok, installed_cddl  # noqa: E402
from test_chat import open_chat, run, until_final  # noqa: E402
from peer import Peer  # noqa: E402
from test_workers import AckServer, endpoint_of, send  # noqa: E402

SRC = os.environ.get("KITH_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
P = b"MDPW02"
REQUEST, PARTIAL, FINAL = b"\x02", b"\x03", b"\x04"


class Relay:
    """ROUTER (for the agent) ↔ DEALER (to the broker), one worker at a time,
    recording bodies. Runs on its own thread until stop()."""

    def __init__(self, broker_ep):
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.broker_ep = broker_ep
        self.requests, self.replies = [], []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        back = self.ctx.socket(zmq.DEALER)
        back.connect(self.broker_ep)
        ident = None
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        while self.running:
            for sock, _ in poller.poll(100):
                if sock is self.front:
                    f = self.front.recv_multipart()
                    ident, msg = f[0], f[1:]
                    if len(msg) >= 6 and msg[1] == P and msg[2] in (PARTIAL, FINAL):
                        with self.lock:
                            self.replies.append(msg[5])
                    back.send_multipart(msg)
                else:
                    msg = back.recv_multipart()
                    if len(msg) >= 6 and msg[1] == P and msg[2] == REQUEST:
                        with self.lock:
                            self.requests.append(msg[5])
                    if ident is not None:
                        self.front.send_multipart([ident] + msg)
        back.close(linger=0)

    def stop(self):
        self.running = False
        self.thread.join(10)
        self.front.close(linger=0)
        self.ctx.term()

    def seen(self):
        with self.lock:
            return list(self.requests), list(self.replies)


def wait_for(pred, what, timeout=60):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    check(False, f"timed out waiting for {what}")


def drive(node, relay):
    """Turns that make every kind of body appear."""
    def kinds():
        req, rep = relay.seen()
        return [kind(cbor2.loads(b)) for b in req], [kind(cbor2.loads(b)) for b in rep]

    async def go():
        ws, _ = await open_chat(node, "")
        for content in ("hello live world", "/peers", "/think it over", "/fail"):
            await ws.send(json.dumps({"type": "message", "content": content}))
            final = (await until_final(ws))[-1]
            check(final["type"] in ("done", "error"), f"{content}: {final}")
        # A steer while the turn sleeps (the worker holds it: its
        # llm_request came back), then a stop ends it.
        n_req, n_rep = (len(x) for x in relay.seen())
        await ws.send(json.dumps({"type": "message", "content": "/sleep 600000"}))
        await asyncio.to_thread(wait_for, lambda: "partial:llm_request" in kinds()[1][n_rep:],
                                "the sleeping turn's llm_request")
        await ws.send(json.dumps({"type": "steer", "content": "be brief"}))
        await asyncio.to_thread(wait_for, lambda: "steer" in kinds()[0][n_req:], "the steer")
        await ws.send(json.dumps({"type": "stop"}))
        final = (await until_final(ws))[-1]
        check(final["type"] == "stopped", f"stop: {final}")
        await ws.close()
    run(go())


def inbox_turns(node, relay, peer, acks):
    """A turn from the inbox: a signed request (origin comms with the
    envelope's id, sender and type; its signed response comes back)."""
    def origins():
        return [cbor2.loads(b)["origin"] for b in relay.seen()[0]
                if cbor2.loads(b).get("type") == "turn"]
    req = peer.request(node.pk, "ping", {"n": 1})
    send(node, req)
    ok, env = acks.next()
    check(ok and env["kind"]["type"] == "response" and env["kind"]["in_reply_to"] == req["id"],
          f"the response: {env}")
    check(any(o.get("channel") == "comms" and o.get("envelope_type") == "request" and
              o.get("envelope_id") == req["id"] for o in origins()), f"origins {origins()}")


WANT_REQUESTS = {"turn", "steer", "stop", "tool_result"}
WANT_REPLIES = {"partial:llm_request", "partial:chunk", "partial:thinking", "partial:tool_call",
                "partial:tool_result", "done", "error", "stopped"}


def kind(body):
    t = body.get("type") if isinstance(body, dict) else None
    if t == "partial" and isinstance(body.get("event"), dict):
        return f"partial:{body['event'].get('type')}"
    return t


def main():
    results = Results()
    root = installed_cddl()
    path = os.path.join(SRC, "spec", "worker.cddl")
    ok, out = cddl_syntax_ok(root, path)
    check(ok, out)
    schema = Schema(cddl_ast(root, path))
    node = Daemon("cddllive", config={"workers": {"listen": "tcp://127.0.0.1:0", "agent_threads": 0},
                                      "gateway": {"require_pairing": False}})
    peer = Peer()
    acks = AckServer(peer)
    node.trust("peer", peer.pk, f"tcp://127.0.0.1:{acks.port}")
    relay = agent = None
    try:
        node.start()
        relay = Relay(endpoint_of(node))
        agent = subprocess.Popen([KITH, "agent", "--connect", relay.endpoint, "--threads", "1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results.run(drive, node, relay)
        results.run(inbox_turns, node, relay, peer, acks)
        requests, replies = relay.seen()

        def validate():
            try:
                for rule, bodies in (("worker-request", requests), ("worker-reply", replies)):
                    for n, raw in enumerate(bodies):
                        body = cbor2.loads(raw)
                        check(schema.match_rule(body, rule),
                              f"live {rule} #{n} ({kind(body)}) does not match worker.cddl: {body!r}")
            except Unsupported as e:
                check(False, f"schema outside the matcher's subset: {e}")
            got_req = {kind(cbor2.loads(b)) for b in requests}
            got_rep = {kind(cbor2.loads(b)) for b in replies}
            check(WANT_REQUESTS <= got_req, f"requests seen {sorted(got_req)}")
            check(WANT_REPLIES <= got_rep, f"replies seen {sorted(got_rep)}")
            print(f"captured {len(requests)} requests ({', '.join(sorted(got_req))}) and "
                  f"{len(replies)} replies ({', '.join(sorted(got_rep))})")
        results.run(validate)
        results.stopped(node)
    finally:
        if agent:
            agent.terminate()
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
        if relay:
            relay.stop()
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
