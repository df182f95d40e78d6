"""tests/integration/mdp_broker.py — a stand-in for the daemon's Majordomo
broker, written from spec/worker.cddl and the MDP 0.2 frames (rfc.zeromq.org
spec 18) with pyzmq and cbor2 alone, to drive `kith agent` processes:

  READY      [""]["MDPW02"][0x01][service]
  REQUEST    [""]["MDPW02"][0x02][client][""][body]
  PARTIAL    [""]["MDPW02"][0x03][client][""][body]
  FINAL      [""]["MDPW02"][0x04][client][""][body]
  HEARTBEAT  [""]["MDPW02"][0x05]
  DISCONNECT [""]["MDPW02"][0x06]

(on the ROUTER side each message starts with the worker's identity frame).
It heartbeats every worker it knows while it waits, so workers stay put."""

import os
import subprocess
import time
import uuid

import cbor2
import zmq

KITH = os.environ.get("KITH_BIN", "build/kith")
PROTO = b"MDPW02"
READY, REQUEST, PARTIAL, FINAL, HEARTBEAT, DISCONNECT = (bytes([i]) for i in range(1, 7))


def turn(content, tools=None, history=None, max_iter=60, timeout_s=600, session="s1"):
    """A turn-request body (worker.cddl) and its turn id."""
    tid = uuid.uuid4().bytes
    body = {
        "type": "turn", "turn_id": tid, "session_id": session,
        "message": {"role": "user", "content": content},
        "history": history or [],
        "tools": tools if tools is not None else ROUTER_TOOLS,
        "limits": {"max_tool_iterations": max_iter, "turn_timeout_s": timeout_s},
        "origin": {"channel": "ws"},
    }
    return tid, cbor2.dumps(body)


def tool(name, executor="router", params='{"type":"object"}'):
    return {"name": name, "description": name, "parameters": params, "executor": executor}


ROUTER_TOOLS = [tool("peers"), tool("send_message"), tool("send_request")]


class Broker:
    def __init__(self, curve=False):
        """curve: the socket is a CURVE server; self.public_key (Z85 text) is
        what a worker passes as --server-key."""
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.public_key = None
        if curve:
            public, secret = zmq.curve_keypair()
            self.sock.curve_server = True
            self.sock.curve_secretkey = secret
            self.public_key = public.decode()
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.idle = []          # worker identities that said READY or finished a turn
        self.known = set()
        self.disconnected = []
        self.last_hb = 0.0
        self.procs = []

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.sock.close()

    # ---------------------------------------------------------- workers
    def spawn(self, *args, env=None):
        """Starts `kith agent --connect` at this broker."""
        e = dict(os.environ)
        if env:
            e.update(env)
        p = subprocess.Popen([KITH, "agent", "--connect", self.endpoint, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
        self.procs.append(p)
        return p

    def _heartbeat(self):
        now = time.monotonic()
        if now - self.last_hb < 0.5:
            return
        self.last_hb = now
        for w in list(self.known):
            self.sock.send_multipart([w, b"", PROTO, HEARTBEAT])

    def recv(self, timeout=120.0):
        """The next non-heartbeat message: (worker, command, rest frames)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._heartbeat()
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            w, empty, proto, cmd, rest = frames[0], frames[1], frames[2], frames[3], frames[4:]
            assert empty == b"" and proto == PROTO, frames
            self.known.add(w)
            if cmd == HEARTBEAT:
                continue
            if cmd == READY:
                assert rest == [b"kith.agent"], rest
                self.idle.append(w)
                continue
            if cmd == DISCONNECT:
                self.known.discard(w)
                self.disconnected.append(w)
                if w in self.idle:
                    self.idle.remove(w)
                continue
            return w, cmd, rest
        raise TimeoutError("no worker message")

    def wait_ready(self, n=1, timeout=120.0):
        end = time.monotonic() + timeout
        while len(self.idle) < n and time.monotonic() < end:
            try:
                self.recv(timeout=0.2)
                raise AssertionError("unexpected message before READY")
            except TimeoutError:
                pass
        assert len(self.idle) >= n, f"{len(self.idle)} workers ready"

    def request(self, body, client=None, worker=None):
        """Sends a REQUEST; the client address is the body's turn_id, as the
        daemon's broker makes it (a worker drops a new REQUEST that reuses the
        address of the turn it just finished)."""
        if client is None:
            client = cbor2.loads(body).get("turn_id", b"c1")
        w = worker or self.idle.pop(0)
        self.sock.send_multipart([w, b"", PROTO, REQUEST, client, b"", body])
        return w

    def collect(self, tid, on_partial=None, timeout=120.0):
        """PARTIAL events until the FINAL: (events, final). on_partial(event)
        may answer (tool results, steers) through self.request(…, worker=w)."""
        events = []
        while True:
            w, cmd, rest = self.recv(timeout)
            client, empty, body = rest
            msg = cbor2.loads(body)
            assert msg["turn_id"] == tid, msg
            if cmd == PARTIAL:
                assert msg["type"] == "partial" and msg["seq"] == len(events), msg
                events.append(msg["event"])
                if on_partial:
                    on_partial(w, msg["event"])
                continue
            assert cmd == FINAL, cmd
            self.idle.append(w)
            return events, msg
