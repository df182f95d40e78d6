"""kith — many kith nodes in one process, for testing agents (DESIGN §13).

A thin ctypes layer over libkith.so (no compile step): every node has its
own Ed25519 identity, trust store and inbox and runs on its own thread, and
nodes reach each other through exactly the framing, checks and bounds TCP
peers go through. The network can be told to misbehave::

    import kith

    with kith.Net() as net:
        a, b = net.node("a"), net.node("b")
        a.trust(b)                                   # both ways
        assert a.send("b", "hi", timeout_ms=5000) == kith.ACKED
        m = b.recv(timeout_ms=5000)                  # a dict
        assert m["kind"] == {"type": "message", "body": "hi"}
        net.partition(a, b)
        assert a.send("b", "lost?", timeout_ms=200) == kith.OFFLINE
        net.heal(a, b)                               # held bytes flow again

Every call is thread-safe, destroy included: destroying a node (or its
net) on one thread returns the calls waiting in it on others (a recv
raises KithError, a send returns OFFLINE or raises), and calls made after
it raise KithError.

Sends return an outcome — ACKED (0), OFFLINE (2: no ack in time; it may
or may not have arrived) or REFUSED (3) — and raise KithError when nothing
could be sent (bad arguments, unknown peer). Every blocking call takes
timeout_ms, with a default of DEFAULT_TIMEOUT_MS. Messages are dicts of
the JSON form in spec/WIRE.md §22: {"id", "from", "kind": {...}}, ids as
UUID text, keys as "ed25519:<base64>", byte strings as {"$bytes": "..."}.

The library is found, in this order, at $KITH_LIBRARY; beside this file;
in the lib/ directory of the prefix this module was installed under
(<prefix>/lib/python3/dist-packages/kith/ → <prefix>/lib/); and through
the dynamic loader's usual search (LD_LIBRARY_PATH, ldconfig).
"""

import contextlib
import ctypes
import ctypes.util
import json
import os
import threading
import time

__all__ = [
    "ACKED", "OFFLINE", "REFUSED", "DEFAULT_TIMEOUT_MS",
    "KithError", "Net", "Node", "Message", "version", "library_path",
]

ACKED = 0
OFFLINE = 2
REFUSED = 3
DEFAULT_TIMEOUT_MS = 30000

_SONAME = "libkith.so.0"


class KithError(Exception):
    """A call failed locally: bad arguments, unknown peer, a destroyed object."""


# ------------------------------------------------------------------ loading

def _candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.environ.get("KITH_LIBRARY")
    for name in (_SONAME, "libkith.so"):
        yield os.path.join(here, name)
    prefix_lib = os.path.normpath(os.path.join(here, "..", "..", ".."))
    for name in (_SONAME, "libkith.so"):
        yield os.path.join(prefix_lib, name)
    yield _SONAME
    yield ctypes.util.find_library("kith")


def _load():
    tried = []
    env = os.environ.get("KITH_LIBRARY")
    for path in _candidates():
        if not path or path in tried:
            continue
        tried.append(path)
        if os.sep in path and not os.path.exists(path):
            if path == env:
                raise KithError("KITH_LIBRARY=%s: no such file" % env)
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            if path == env:
                raise KithError("KITH_LIBRARY=%s: %s" % (env, e)) from e
    raise KithError("libkith.so not found (tried %s); set KITH_LIBRARY" % ", ".join(tried))


_lib, library_path = _load()

_p = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_s = ctypes.c_char_p
_i = ctypes.c_int
for _name, _res, _args in [
    ("kith_net_new", _p, []),
    ("kith_net_destroy", None, [_pp]),
    ("kith_node_new", _p, [_p, _s, _s]),
    ("kith_node_trust", _i, [_p, _p]),
    ("kith_node_listen", _i, [_p, _s]),
    ("kith_node_pubkey", _s, [_p]),
    ("kith_node_send", _i, [_p, _s, _s, _i]),
    ("kith_node_request", _i, [_p, _s, _s, _s, _i]),
    ("kith_node_recv", _i, [_p, _pp, _i]),
    ("kith_msg_json", _s, [_p]),
    ("kith_node_respond", _i, [_p, _p, _s, _s, _i]),
    ("kith_msg_destroy", None, [_pp]),
    ("kith_node_destroy", None, [_pp]),
    ("kith_net_partition", _i, [_p, _p, _p]),
    ("kith_net_heal", _i, [_p, _p, _p]),
    ("kith_net_delay", _i, [_p, _p, _p, _i]),
    ("kith_last_error", _s, []),
    ("kith_version", _s, []),
]:
    _f = getattr(_lib, _name)
    _f.restype = _res
    _f.argtypes = _args


def _error(what):
    return KithError("%s: %s" % (what, _lib.kith_last_error().decode("utf-8", "replace")))


def _text(s, what):
    """s as the C string the library takes. C strings end at the first
    NUL: one inside would cut the text short without a word (a body sent
    in part and reported acked, a peer name read as another peer's), so
    it is refused instead."""
    if s is None:
        return None
    b = s.encode("utf-8")
    if b"\0" in b:
        raise KithError("%s: a NUL character cannot be passed to the library "
                        "(C strings end at it)" % what)
    return b


_INT_MIN, _INT_MAX = -2 ** 31, 2 ** 31 - 1

# A recv waits in C at most this long at a time: between two waits Python
# runs its signal handlers (Ctrl-C), which a wait in C would hold off.
_RECV_SLICE_MS = 200


def _ms(value):
    """A count of milliseconds as the C int the library takes. ctypes would
    wrap a larger one silently (2**32 ms: 0, a wait that does not wait;
    3e9: negative, for ever); clamped, it means what it says, and the
    library refuses what is out of its range."""
    return max(_INT_MIN, min(int(value), _INT_MAX))


def _json(value):
    return None if value is None else json.dumps(value).encode("utf-8")


def version():
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.kith_version().decode()


# ------------------------------------------------------------------ lifetimes

class _Life:
    """The calls using one C object now, so that destroy on one thread and
    calls on others are safe together (DESIGN §13: every call is
    thread-safe). A call counts itself in before it reads the pointer and
    out when C has returned; destroy closes the object first (later calls
    raise KithError), and returns only when the count is back to 0. The
    lock is never held across a C call: a recv or send blocked in C is
    woken by the C destroy itself, and one still on its way into C when
    the node is destroyed meets the node's shell there, which refuses it
    (router/kith_api.c), so no C call ever gets a freed pointer."""

    OPEN, CLOSING, CLOSED = range(3)

    def __init__(self, what):
        self.what = what
        self._cv = threading.Condition(threading.Lock())
        self._calls = 0
        self._state = _Life.OPEN

    @contextlib.contextmanager
    def use(self, ptr):
        """Yields ptr (a c_void_p) counted in; KithError once closing."""
        with self._cv:
            if self._state != _Life.OPEN or not ptr or not ptr.value:
                raise KithError("%s was destroyed" % self.what)
            self._calls += 1
        try:
            yield ptr
        finally:
            with self._cv:
                self._calls -= 1
                if not self._calls:
                    self._cv.notify_all()

    def close(self):
        """True for the one caller that is to destroy the object; others
        (False) wait until it is destroyed."""
        with self._cv:
            if self._state == _Life.OPEN:
                self._state = _Life.CLOSING
                return True
            while self._state != _Life.CLOSED:
                self._cv.wait()
            return False

    def wait_idle(self):
        """Until no call uses the object."""
        with self._cv:
            while self._calls:
                self._cv.wait()

    def closed(self):
        with self._cv:
            self._state = _Life.CLOSED
            self._cv.notify_all()


# ------------------------------------------------------------------ messages

class Message(dict):
    """One received envelope: {"id", "from", "kind": {...}} (WIRE §22).

    A dict; it also keeps the library's copy, which Node.respond needs to
    answer a request. Freed when garbage-collected.
    """

    def __init__(self, ptr):
        self._ptr = ctypes.c_void_p(ptr)
        super().__init__(json.loads(_lib.kith_msg_json(self._ptr).decode("utf-8")))

    def __del__(self):
        if _lib is not None and getattr(self, "_ptr", None) and self._ptr.value:
            _lib.kith_msg_destroy(ctypes.byref(self._ptr))


# ------------------------------------------------------------------ nodes

class Node:
    """One node of a Net (make it with Net.node). Usable as a context
    manager: leaving the block destroys the node."""

    def __init__(self, net, name, home=None):
        with net._use() as np:
            ptr = _lib.kith_node_new(np, _text(name, "node name"), _text(home, "node home"))
            if not ptr:
                raise _error("node %s" % name)
            self._ptr = ctypes.c_void_p(ptr)
            self._life = _Life("node %s" % name)
            self.net = net
            self.name = name
            self.home = home
            #: "ed25519:" + base64 of the node's public key
            self.pubkey = _lib.kith_node_pubkey(self._ptr).decode()
            net._adopt(self)  # before the net can be destroyed: it destroys this too

    def _use(self):
        """`with self._use() as ptr:` the node, counted in (see _Life)."""
        return self._life.use(self._ptr)

    def __repr__(self):
        return "<kith.Node %s %s>" % (self.name, self.pubkey)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    def destroy(self):
        """Stops the node (it acks what it admitted, then closes) and frees
        it. Calls running on other threads return first (a recv raises
        KithError, a send returns OFFLINE or raises); calls made after it
        raise KithError. Any thread; a second destroy waits for the first."""
        if not self._life.close():
            return
        self.net._forget(self)
        _lib.kith_node_destroy(ctypes.byref(ctypes.c_void_p(self._ptr.value)))  # wakes calls in C
        self._life.wait_idle()
        # No call can reach the node's shell now: destroying it again frees it.
        _lib.kith_node_destroy(ctypes.byref(ctypes.c_void_p(self._ptr.value)))
        self._life.closed()

    def trust(self, other):
        """This node trusts `other` and `other` trusts this one."""
        with self._use() as a, other._use() as b:
            if _lib.kith_node_trust(a, b) != 0:
                raise _error("trust")

    def listen(self, addr):
        """Also serves "tcp://HOST:PORT" (port 0: one is chosen) or
        "uds:///PATH". Returns the bound TCP port, or 0 for a Unix socket."""
        with self._use() as n:
            port = _lib.kith_node_listen(n, _text(addr, "listen"))
            if port < 0:
                raise _error("listen")
        return port

    def send(self, to, body, timeout_ms=DEFAULT_TIMEOUT_MS):
        """Sends a message {body} to `to` (a name, PeerId or "ed25519:" key)
        and waits for its ack. Returns ACKED, OFFLINE or REFUSED."""
        with self._use() as n:
            return self._outcome("send", _lib.kith_node_send(
                n, _text(to, "send to"), _text(body, "send body"), _ms(timeout_ms)))

    def request(self, to, intent, params=None, timeout_ms=DEFAULT_TIMEOUT_MS):
        """Sends a request {intent, params} (params: any JSON-able value) and
        waits for its ack. Returns ACKED, OFFLINE or REFUSED; an answer comes
        later through recv() as a "response"."""
        with self._use() as n:
            return self._outcome("request", _lib.kith_node_request(
                n, _text(to, "request to"), _text(intent, "request intent"), _json(params),
                _ms(timeout_ms)))

    def respond(self, request, status="completed", result=None, timeout_ms=DEFAULT_TIMEOUT_MS):
        """Answers a received request (the Message recv gave) with a signed
        response {in_reply_to, status, result}. Responses are not acked:
        ACKED means written. Returns ACKED, OFFLINE or REFUSED."""
        if not isinstance(request, Message):
            raise KithError("respond: pass the Message recv() returned")
        with self._use() as n:
            return self._outcome("respond", _lib.kith_node_respond(
                n, request._ptr, _text(status, "respond status"), _json(result), _ms(timeout_ms)))

    def recv(self, timeout_ms=DEFAULT_TIMEOUT_MS):
        """Takes the oldest received envelope as a Message (a dict), waiting
        up to timeout_ms (0: do not wait; negative: for ever). Raises
        TimeoutError when none arrives in time, KithError when the node is
        destroyed meanwhile. The wait is made of short waits in C, so a
        signal (Ctrl-C: KeyboardInterrupt) ends it."""
        timeout_ms = _ms(timeout_ms)
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
        ptr = ctypes.c_void_p()
        while True:
            if deadline is None:
                wait = _RECV_SLICE_MS
            else:
                wait = min(_RECV_SLICE_MS, max(0, int((deadline - time.monotonic()) * 1000)))
            with self._use() as n:
                rc = _lib.kith_node_recv(n, ctypes.byref(ptr), wait)
                why = _lib.kith_last_error().decode("utf-8", "replace") if rc != 0 else None
            if rc == 0:
                return Message(ptr.value)
            if why != "timeout":
                raise KithError("recv: %s" % why)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("%s: nothing received within %d ms" % (self.name, timeout_ms))

    @staticmethod
    def _outcome(what, rc):
        if rc < 0:
            raise _error(what)
        return rc


# ------------------------------------------------------------------ nets

class Net:
    """A private in-process network of nodes. Usable as a context manager:
    leaving the block destroys the net and every node still in it."""

    def __init__(self):
        ptr = _lib.kith_net_new()
        if not ptr:
            raise _error("net")
        self._ptr = ctypes.c_void_p(ptr)
        self._life = _Life("the net")
        self._nodes_lock = threading.Lock()
        self._nodes = set()

    def _use(self):
        """`with self._use() as ptr:` the net, counted in (see _Life)."""
        return self._life.use(self._ptr)

    def _adopt(self, node):
        with self._nodes_lock:
            self._nodes.add(node)

    def _forget(self, node):
        with self._nodes_lock:
            self._nodes.discard(node)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    def __del__(self):
        # A forgotten net would leave its nodes' threads running.
        if _lib is not None and getattr(self, "_life", None):
            self.destroy()

    def node(self, name, home=None):
        """A new node called `name`, reachable as inproc://name. With `home`
        (a directory) it keeps its identity, trust and inbox there, so
        destroying it and making it again from the same home is a restart."""
        return Node(self, name, home)

    def destroy(self):
        """Destroys every node still in the net (as Node.destroy: calls
        running on other threads return first), then the net. Any thread;
        a second destroy waits for the first."""
        if not self._life.close():
            return
        self._life.wait_idle()  # a node being made is in the list after this
        with self._nodes_lock:
            nodes = list(self._nodes)
        for n in nodes:
            n.destroy()
        _lib.kith_net_destroy(ctypes.byref(ctypes.c_void_p(self._ptr.value)))
        self._life.closed()

    def _fault(self, what, fn, a, b, *args):
        with self._use() as net, a._use() as pa, b._use() as pb:
            if fn(net, pa, pb, *args) != 0:
                raise _error(what)

    def partition(self, a, b):
        """Holds every byte between a and b, both ways: sends report OFFLINE
        after their timeout; what was written is delivered, in order, on heal."""
        self._fault("partition", _lib.kith_net_partition, a, b)

    def heal(self, a, b):
        """Ends a partition between a and b."""
        self._fault("heal", _lib.kith_net_heal, a, b)

    def delay(self, a, b, ms):
        """Holds each chunk of bytes between a and b for `ms` milliseconds,
        both ways (0 ends it and releases what is held)."""
        self._fault("delay", _lib.kith_net_delay, a, b, _ms(ms))
