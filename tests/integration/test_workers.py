"""tests/integration/test_workers.py — the inbox becomes turns, served by a
Python worker (mdp_worker.py, written from WIRE §19 and worker.cddl alone)
connected to `workers.listen` over loopback tcp, against the real daemon:
a peer's message becomes a turn answered by the worker; a request gets a
signed response back to the peer (completed, or failed with the worker's
error); a router-run tool (send_message) reaches
the peer signed and acked; kill -9 of the worker mid-turn ends that turn as
an error and the next goes to another worker; requests admitted before a
daemon kill -9 (one mid-turn, one not yet taken) are dispatched again after
the restart and both answered."""

import json
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
from peer import (Conn, Daemon, Peer, Results, check, curl, frame, gateway_url, inbox_rows,
                  metrics_map, verify_envelope, wait_metric)
from test_sse import Sse

# Agent workers only: the embedded audit worker registers with the broker too.
AGENTS_ALIVE = 'kith_workers_alive{service="kith.agent"}'

HERE = os.path.dirname(os.path.abspath(__file__))
DONE = 'kith_turns_total{status="done"}'
ERROR = 'kith_turns_total{status="error"}'


DNS_LOOKUPS = "kith_dns_lookups_total"


def loopback_name():
    """A name that only a lookup turns into 127.0.0.1: another name of
    127.0.0.1 in /etc/hosts, else LOCALHOST (the hosts file matches names
    without regard to case; kith's own parser knows only `localhost`)."""
    names = []
    with open("/etc/hosts") as f:
        for line in f:
            words = line.split("#")[0].split()
            if words and words[0] == "127.0.0.1":
                names += [w for w in words[1:] if w != "localhost"]
    for name in names + ["LOCALHOST"]:
        try:
            if socket.getaddrinfo(name, 9, socket.AF_INET)[0][4][0] == "127.0.0.1":
                return name
        except OSError:
            pass
    raise AssertionError("no name other than `localhost` resolves to 127.0.0.1 here")


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
            try:
                chunk = c.recv(65536)
            except OSError:  # the daemon was killed
                return
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


class AckServerUds(AckServer):
    """The same on a Unix stream socket at `path` (uds:// peers)."""

    def __init__(self, peer, path):
        self.peer = peer
        self.got = queue.Queue()
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.bind(path)
        self.s.listen(16)
        self.path = path
        threading.Thread(target=self._accept, daemon=True).start()


class Worker:
    def __init__(self, endpoint, name, curve=()):
        self.name = name
        self.proc = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "mdp_worker.py"),
                                      endpoint, name, *curve], stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.split())

    def wait(self, what, timeout=60, tag=None):
        """The turn id of the next `what` line ("start" lines may be asked
        for by tag: "sleep" for a turn that holds, so a late line of an
        earlier turn is never taken for it)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                words = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if words and words[0] == what and (tag is None or words[2:3] == [tag]):
                return words[1]
        raise AssertionError(f"worker {self.name} never said {what}")

    def drain(self):
        """Forgets the lines read so far (earlier turns')."""
        while not self.lines.empty():
            self.lines.get_nowait()

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


def curve_keys_only_authorized(peer, acks):
    """A non-loopback workers.listen ("lo" names the loopback interface but
    is not loopback by WIRE §19.2's rule) has CURVE on: a worker whose key
    is not in workers/authorized/ cannot join; once authorized one can."""
    import zmq
    node = Daemon("curve", config={"workers": {"listen": "tcp://lo:0", "agent_threads": 0}})
    node.trust("peer", peer.pk, f"tcp://127.0.0.1:{acks.port}")
    node.start()
    workers = []
    try:
        ep = endpoint_of(node)
        m = re.search(r"CURVE on, server key (\S{40});", node.logs())
        check(m, "no server key in the log:\n" + node.logs())
        server = m.group(1)
        with open(os.path.join(node.home, "workers", "broker.cert")) as f:
            check(f'public-key = "{server}"' in f.read(), "broker.cert holds another key")
        st = os.stat(os.path.join(node.home, "workers", "broker.cert_secret"))
        check(st.st_mode & 0o777 == 0o600, oct(st.st_mode))
        pub, sec = (k.decode() for k in zmq.curve_keypair())
        stranger = Worker(ep, "S", (server, pub, sec))
        workers.append(stranger)
        send(node, peer.message(node.pk, "sealed"))
        # Three heartbeat windows: a worker let in would have said READY.
        time.sleep(3)
        check(metrics_map(node).get(AGENTS_ALIVE, 0) == 0, "the stranger joined")
        stranger.kill()
        with open(os.path.join(node.home, "workers", "authorized", "w.cert"), "w") as f:
            f.write(f'metadata\ncurve\n    public-key = "{pub}"\n')
        friend = Worker(ep, "F", (server, pub, sec))
        workers.append(friend)
        friend.wait("served")
        wait_inbox_empty(node)
    finally:
        for w in workers:
            w.kill()
        node.cleanup()


PENDING = 'kith_workers_listen_connections{state="pending"}'
WORKER_CONNS = 'kith_workers_listen_connections{state="worker"}'


def cut(reason):
    return f'kith_workers_listen_cut_total{{reason="{reason}"}}'


def closed_by_kith(s):
    """True once kith has closed s (after ZeroMQ's greeting)."""
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def strangers_hold_no_place(peer, acks):
    """Connections to a CURVE workers.listen that carry no worker (WIRE
    §19.2): from one address at most limits.workers_pending_per_source_max
    (the newcomer past it is cut), from all at most
    limits.workers_pending_max (the oldest is cut), none past
    limits.first_frame_timeout_ms; an authorized worker gets in while
    strangers hold every place, and its connection is never cut."""
    import zmq
    node = Daemon("strangers", config={"workers": {"listen": "tcp://lo:0", "agent_threads": 0},
                                       "limits": {"workers_pending_max": 6,
                                                  "workers_pending_per_source_max": 4,
                                                  "first_frame_timeout_ms": 4000}})
    node.trust("peer", peer.pk, f"tcp://127.0.0.1:{acks.port}")
    node.start()
    held, friend = [], None
    try:
        ep = endpoint_of(node)
        port = int(ep.rsplit(":", 1)[1])
        server = re.search(r"CURVE on, server key (\S{40});", node.logs()).group(1)

        def stranger(src):
            s = socket.socket()
            s.bind((src, 0))
            s.connect(("127.0.0.1", port))
            held.append(s)
            return s

        a = [stranger("127.0.0.2") for _ in range(5)]
        wait_metric(node, cut("per_source"), lambda v: v == 1, timeout=10)
        check(closed_by_kith(a[4]), "the fifth from one address was not cut")
        wait_metric(node, PENDING, lambda v: v == 4, timeout=10)
        b = [stranger("127.0.0.3") for _ in range(2)]
        wait_metric(node, PENDING, lambda v: v == 6, timeout=10)
        stranger("127.0.0.4")
        m = wait_metric(node, cut("share"), lambda v: v >= 1, timeout=10)
        check(m.get(PENDING) == 6, f"pending {m.get(PENDING)}")
        check(closed_by_kith(a[0]), "the oldest was not cut for the newcomer")

        pub, sec = (k.decode() for k in zmq.curve_keypair())
        with open(os.path.join(node.home, "workers", "authorized", "w.cert"), "w") as f:
            f.write(f'metadata\ncurve\n    public-key = "{pub}"\n')
        friend = Worker(ep, "F", (server, pub, sec))
        wait_metric(node, WORKER_CONNS, lambda v: v == 1, timeout=30)
        send(node, peer.message(node.pk, "through the crowd"))
        friend.wait("served")
        # The deadline cuts every stranger still held, never the worker.
        m = wait_metric(node, PENDING, lambda v: v == 0, timeout=30)
        check(m.get(cut("deadline"), 0) >= 1, f"no deadline cut: {m}")
        check(m.get(WORKER_CONNS) == 1 and m.get(AGENTS_ALIVE) == 1, f"worker gone: {m}")
        for s in a[1:4] + b:
            check(closed_by_kith(s), "a stranger outlived the deadline")
        send(node, peer.message(node.pk, "still here"))
        friend.wait("served")
        wait_inbox_empty(node)
    finally:
        for s in held:
            s.close()
        if friend:
            friend.kill()
        node.cleanup()


def refused_at_start():
    """A broker that cannot serve refuses to start, saying why in one line:
    its port taken, its CURVE secret not a certificate, its folder not one."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]

    def refused(node, needle):
        try:
            node.start()
            raise AssertionError(f"started in spite of {needle!r}")
        except RuntimeError as e:
            check(node.proc.returncode not in (0, None), f"exit {node.proc.returncode}")
            check(needle in str(e), f"no {needle!r} in:\n{e}")
        finally:
            node.cleanup()

    try:
        refused(Daemon("busy", config={"workers": {"listen": f"tcp://127.0.0.1:{port}"}}),
                f"workers: cannot bind tcp://127.0.0.1:{port}")
    finally:
        held.close()
    node = Daemon("badcert", config={"workers": {"listen": "tcp://lo:0"}})
    os.makedirs(os.path.join(node.home, "workers"), mode=0o700)
    with open(os.path.join(node.home, "workers", "broker.cert_secret"), "w") as f:
        f.write("not a certificate\n")
    refused(node, "is not a CZMQ certificate with a secret key")
    node = Daemon("notdir", config={"workers": {"listen": "tcp://lo:0"}})
    open(os.path.join(node.home, "workers"), "w").close()
    refused(node, "/workers is not a directory: remove it, and kith makes it")


def main():
    r = Results()
    peer = Peer()
    acks = AckServer(peer)
    node = Daemon("workers", config={"workers": {"listen": "tcp://127.0.0.1:0",
                                                 "agent_threads": 0},
                                     "gateway": {"require_pairing": False}})
    node.trust("peer", peer.pk, f"tcp://127.0.0.1:{acks.port}")
    # Peers behind host names: the loop hands names to the resolver's
    # thread; one that resolves (to this machine) gets the agents'
    # send_message, one that does not is offline, saying why.
    near = Peer()
    near_acks = AckServer(near)
    node.trust("near", near.pk, f"tcp://{loopback_name()}:{near_acks.port}")
    node.trust("far", Peer().pk, "tcp://peer.invalid:9")
    node.start()
    ep = endpoint_of(node)
    ep_now = [ep]
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

        def failed_request_gets_failed_response():
            req = peer.request(node.pk, "/error", {})
            send(node, req)
            ok, env = acks.next()
            k = env["kind"]
            check(ok and k["type"] == "response" and k["in_reply_to"] == req["id"], f"kind {k}")
            check(k["status"] == "failed" and k["result"] == "asked to fail", f"kind {k}")
            wait_inbox_empty(node)

        def router_tool_sends_signed_message():
            send(node, peer.message(node.pk, "/send peer hi there"))
            ok, env = acks.next()
            check(ok and env["kind"] == {"type": "message", "body": "hi there"},
                  f"the peer got {env['kind']}")
            a.wait("served")
            wait_inbox_empty(node)

        # The DNS cases run on the daemon restarted after the kill -9
        # below, with its worker E: coverage counts only what a process that
        # exits (not one killed) did.
        def router_tool_resolves_a_host_name():
            before = metrics_map(node).get(DNS_LOOKUPS, 0)
            for body in ("hi by name", "and again"):  # the second from the cache
                send(node, peer.message(node.pk, f"/send near {body}"))
                ok, env = near_acks.next()
                check(ok and env["kind"] == {"type": "message", "body": body},
                      f"the peer got {env['kind']}")
                workers[-1].wait("served")
                wait_inbox_empty(node)
            check(metrics_map(node).get(DNS_LOOKUPS, 0) == before + 1, metrics_map(node))

        def router_tool_reports_a_name_that_does_not_resolve():
            send(node, peer.message(node.pk, "/send far hello"))
            workers[-1].wait("served")
            wait_inbox_empty(node)
            _, _, body, _ = curl(gateway_url(node) + "/api/sessions/comms?limit=1")
            last = json.loads(body)["messages"][-1]
            check(last["role"] == "assistant" and "offline" in last["content"]
                  and "cannot resolve peer.invalid" in last["content"], f"{last}")

        def turn_events_on_api_events():
            sse = Sse(node).read_head()
            send(node, peer.message(node.pk, "/peers"))
            _, start = sse.next_of({"agent_start"})
            check(start["session_id"] == "comms" and start["channel"] == "comms", start)
            _, call = sse.next_of({"tool_call_start"})
            check(call["name"] == "peers" and call["turn_id"] == start["turn_id"], call)
            _, end = sse.next_of({"agent_end"})
            check(end["status"] == "done" and end["turn_id"] == start["turn_id"], end)
            check(isinstance(end["duration_ms"], int), end)
            sse.close()
            a.wait("served")

        def worker_killed_mid_turn():
            before = metrics_map(node).get(ERROR, 0)
            wait_inbox_empty(node)  # every earlier turn is over: A is idle
            a.drain()
            send(node, peer.message(node.pk, "/sleep 600000"))
            a.wait("start", tag="sleep")
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
            wait_metric(node, AGENTS_ALIVE, lambda v: v == 0)
            # One request taken by a worker mid-turn, one no worker has taken:
            # kill -9 the daemon, restart it, and both are answered.
            d = Worker(ep_now[0], "D")
            workers.append(d)
            held = peer.request(node.pk, "hold", {"wait": "/sleep 3000"})
            send(node, held)
            d.wait("start", tag="sleep")
            queued = peer.request(node.pk, "later", {})
            send(node, queued)
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
            node.log.close()
            node.log = None
            d.kill()
            check(len(inbox_rows(node, "seq")) >= 1, "the entries are not in state.db")
            os.truncate(node.log_path, 0)  # start() waits for this run's "ready"
            node.start()
            e = Worker(endpoint_of(node), "E")
            workers.append(e)
            answered = {}
            while len(answered) < 2:
                ok, env = acks.next()
                k = env["kind"]
                check(ok and k["type"] == "response", f"kind {k}")
                answered[k["in_reply_to"]] = k
            check(set(answered) == {held["id"], queued["id"]}, "not both answered")
            check(all(k["status"] == "completed" for k in answered.values()), answered)
            wait_inbox_empty(node)

        r.run(message_becomes_a_turn)
        r.run(request_gets_signed_response)
        r.run(failed_request_gets_failed_response)
        r.run(router_tool_sends_signed_message)
        r.run(turn_events_on_api_events)
        r.run(worker_killed_mid_turn)
        r.run(entries_survive_daemon_kill)
        r.run(router_tool_resolves_a_host_name)
        r.run(router_tool_reports_a_name_that_does_not_resolve)
        r.run(curve_keys_only_authorized, peer, acks)
        r.run(strangers_hold_no_place, peer, acks)
        r.run(refused_at_start)
        r.stopped(node)
    finally:
        for w in workers:
            w.kill()
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
