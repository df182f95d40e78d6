"""tests/integration/test_workers.py — the inbox becomes turns, served by a
Python worker (mdp_worker.py, written from WIRE §19 and worker.cddl alone)
connected to `workers.listen` over loopback tcp, against the real daemon:
a peer's message becomes a turn answered by the worker; a request gets a
signed response back to the peer; a router-run tool (send_message) reaches
the peer signed and acked; kill -9 of the worker mid-turn ends that turn as
an error and the next goes to another worker; an entry admitted while no
worker runs survives a daemon kill -9 and is dispatched after the restart."""

import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import cbor2

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Conn, Daemon, Peer, Results, check, frame, inbox_rows, metrics_map,
                  verify_envelope, wait_metric)

HERE = os.path.dirname(os.path.abspath(__file__))
DONE = 'kith_turns_total{status="done"}'
ERROR = 'kith_turns_total{status="error"}'


class AckServer:
    """The test peer's own comms listener: verifies each envelope it gets,
    answers with a signed ack, and hands the envelope to the test."""

    def __init__(self, peer):
        self.peer = peer
        self.got = queue.Queue()
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(16)
        self.port = self.s.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            c, _ = self.s.accept()
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                n = struct.unpack(">I", buf[:4])[0]
                env = cbor2.loads(buf[4:4 + n])
                buf = buf[4 + n:]
                ok = verify_envelope(env)
                if ok:
                    ack = self.peer.envelope(env["from"], {"type": "ack", "in_reply_to": env["id"]})
                    c.sendall(frame(ack))
                self.got.put((ok, env))

    def next(self, timeout=60):
        return self.got.get(timeout=timeout)


class Worker:
    def __init__(self, endpoint, name):
        self.name = name
        self.proc = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "mdp_worker.py"),
                                      endpoint, name], stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.split())

    def wait(self, what, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                words = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if words and words[0] == what:
                return words[1]
        raise AssertionError(f"worker {self.name} never said {what}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def send(node, env):
    c = Conn(("127.0.0.1", node.port))
    c.send(frame(env))
    ack = c.read_frame()
    c.close()
    check(ack and ack["kind"]["type"] == "ack" and ack["kind"]["in_reply_to"] == env["id"],
          f"no ack for {env['id'].hex()}: {ack}")


def endpoint_of(node):
    m = re.search(r"workers: listening on (tcp://127\.0\.0\.1:\d+)", node.logs())
    check(m, "no workers endpoint in the log:\n" + node.logs())
    return m.group(1)


def wait_inbox_empty(node, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not inbox_rows(node, "seq"):
            return
        time.sleep(0.1)
    raise AssertionError(f"inbox never drained: {inbox_rows(node, 'seq, kind')}")


def main():
    r = Results()
    peer = Peer()
    acks = AckServer(peer)
    node = Daemon("workers", config={"workers": {"listen": "tcp://127.0.0.1:0",
                                                 "agent_threads": 0}})
    node.trust("peer", peer.pk, f"tcp://127.0.0.1:{acks.port}")
    node.start()
    ep = endpoint_of(node)
    a = Worker(ep, "A")
    workers = [a]
    try:
        def message_becomes_a_turn():
            send(node, peer.message(node.pk, "hello"))
            tid = a.wait("served")
            check(len(tid) == 32, tid)
            wait_metric(node, DONE, lambda v: v >= 1)
            wait_inbox_empty(node)

        def request_gets_signed_response():
            req = peer.request(node.pk, "ping", {"n": 1})
            send(node, req)
            ok, env = acks.next()
            check(ok, "the response's signature does not verify")
            k = env["kind"]
            check(env["from"] == node.pk and env["to"] == peer.pk, "wrong from/to")
            check(k["type"] == "response" and k["in_reply_to"] == req["id"], f"kind {k}")
            check(k["status"] == "completed", f"status {k['status']}")
            check(k["result"] == 'A: request ping: {"n":1}', f"result {k['result']!r}")
            wait_inbox_empty(node)

        def router_tool_sends_signed_message():
            send(node, peer.message(node.pk, "/send peer hi there"))
            ok, env = acks.next()
            check(ok and env["kind"] == {"type": "message", "body": "hi there"},
                  f"the peer got {env['kind']}")
            a.wait("served")
            wait_inbox_empty(node)

        def worker_killed_mid_turn():
            before = metrics_map(node).get(ERROR, 0)
            send(node, peer.message(node.pk, "/sleep 600000"))
            a.wait("start")
            a.kill()
            # The broker declares A dead (heartbeat_ms x liveness) and the
            # turn ends as an error; the entry leaves the inbox.
            wait_metric(node, ERROR, lambda v: v >= before + 1)
            wait_inbox_empty(node)
            b = Worker(ep, "B")
            workers.append(b)
            send(node, peer.message(node.pk, "after"))
            b.wait("served")

        def entries_survive_daemon_kill():
            for w in workers:
                w.kill()
            wait_metric(node, "kith_workers_alive", lambda v: v == 0)
            send(node, peer.message(node.pk, "while nobody works"))
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
            node.log.close()
            node.log = None
            check(len(inbox_rows(node, "seq")) == 1, "the entry is not in state.db")
            os.truncate(node.log_path, 0)  # start() waits for this run's "ready"
            node.start()
            c = Worker(endpoint_of(node), "C")
            workers.append(c)
            c.wait("served")
            wait_metric(node, DONE, lambda v: v >= 1)
            wait_inbox_empty(node)

        r.run(message_becomes_a_turn)
        r.run(request_gets_signed_response)
        r.run(router_tool_sends_signed_message)
        r.run(worker_killed_mid_turn)
        r.run(entries_survive_daemon_kill)
        r.stopped(node)
    finally:
        for w in workers:
            w.kill()
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
