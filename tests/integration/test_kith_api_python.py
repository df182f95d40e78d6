"""tests/integration/test_kith_api_python.py — the Python module of the
library (tools/python/kith) under threads, as DESIGN §13 promises: every
call is thread-safe. A call on its way into C when another thread destroys
the node gets KithError, never a freed node (with the old module the C call
read freed memory: ASan aborts the run); recv and send blocked in C when
the node or the net is destroyed return; threads hammering send and recv
while another destroys all end with an outcome or KithError/TimeoutError.

Runs against the build's libkith.so (KITH_BUILD_DIR). A sanitized build's
library needs the ASan runtime first in the process: the script then runs
itself again with libasan preloaded (leak checks off: the interpreter's own
allocations at exit are not kith's), as test_lib_install.sh does."""

import os
import subprocess
import sys
import threading
import time
import traceback

BUILD = os.environ.get("KITH_BUILD_DIR", "")
SOURCE = os.environ.get("KITH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
WAIT_S = 60  # a deadline for progress, never a measure of speed


def _sanitized():
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            return any(line.startswith("KITH_SANITIZE:BOOL=ON") for line in f)
    except OSError:
        return False


def _reexec():
    """Once: the library from the build, the module from the source tree,
    and libasan first when the build is sanitized."""
    if os.environ.get("KITH_API_PYTHON_CHILD"):
        return
    env = dict(os.environ, KITH_API_PYTHON_CHILD="1",
               KITH_LIBRARY=os.path.join(BUILD, "libkith.so.0"),
               PYTHONPATH=os.path.join(SOURCE, "tools", "python"),
               PYTHONDONTWRITEBYTECODE="1")
    if _sanitized():
        asan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True, check=True).stdout.strip()
        env["LD_PRELOAD"] = asan
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    sys.exit(subprocess.run([sys.executable, __file__], env=env).returncode)


def _join(threads):
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive(), "%s still running after the destroy" % t.name


class _Wrap:
    """Stands in for one function of kith._lib, to hold a thread between
    Python and C: the window a destroy on another thread can fall into."""

    def __init__(self, kith, name, before=None, after=None):
        self.kith, self.name = kith, name
        self.real = getattr(kith._lib, name)
        self.before, self.after = before, after

    def __call__(self, *args):
        # What ctypes does first: read the pointers' values, then call.
        args = [self.kith.ctypes.c_void_p(a.value) if isinstance(a, self.kith.ctypes.c_void_p)
                else a for a in args]
        if self.before:
            self.before()
        rc = self.real(*args)
        if self.after:
            self.after()
        return rc

    def __enter__(self):
        setattr(self.kith._lib, self.name, self)
        return self

    def __exit__(self, *exc):
        setattr(self.kith._lib, self.name, self.real)


# ------------------------------------------------------------------ tests

def test_call_on_its_way_into_c_meets_a_destroyed_node(kith):
    """A send and a recv that have the node's pointer but are not in C yet
    when another thread destroys the node: both get KithError saying it
    was destroyed; the old module passed a freed pointer to C."""
    for call in ("kith_node_send", "kith_node_recv"):
        with kith.Net() as net:
            a, b = net.node("a"), net.node("b")
            a.trust(b)
            in_gap, c_destroyed = threading.Event(), threading.Event()
            got = []

            def gap():
                in_gap.set()
                assert c_destroyed.wait(WAIT_S)

            def caller():
                try:
                    if call == "kith_node_send":
                        got.append(a.send("b", "late", timeout_ms=5000))
                    else:
                        got.append(a.recv(timeout_ms=5000))
                except (kith.KithError, TimeoutError) as e:
                    got.append(e)

            with _Wrap(kith, call, before=gap), \
                    _Wrap(kith, "kith_node_destroy", after=c_destroyed.set):
                t = threading.Thread(target=caller, name=call)
                t.start()
                assert in_gap.wait(WAIT_S)
                d = threading.Thread(target=a.destroy, name="destroy")
                d.start()
                _join([t, d])
            assert len(got) == 1 and isinstance(got[0], kith.KithError), got
            assert "destroyed" in str(got[0]), got[0]
            try:  # b is unharmed
                b.recv(timeout_ms=0)
                raise AssertionError("b received something")
            except TimeoutError:
                pass
            try:
                a.send("b", "after")
                raise AssertionError("a call after destroy did not raise")
            except kith.KithError as e:
                assert "destroyed" in str(e)


def test_destroy_wakes_blocked_recv_and_send(kith):
    """recv for ever and a send that cannot be acked (partition) on other
    threads: destroying the node (then, afresh, the net) returns both."""
    for what in ("node", "net"):
        net = kith.Net()
        a, b = net.node("a"), net.node("b")
        a.trust(b)
        net.partition(a, b)
        got = {}

        def recv():
            try:
                got["recv"] = a.recv(timeout_ms=-1)
            except (kith.KithError, TimeoutError) as e:
                got["recv"] = e

        def send():
            try:
                got["send"] = a.send("b", "held", timeout_ms=3600 * 1000)
            except kith.KithError as e:
                got["send"] = e

        threads = [threading.Thread(target=recv, name="recv"),
                   threading.Thread(target=send, name="send")]
        for t in threads:
            t.start()
        # Both are in C (or about to be): either way they must return.
        if what == "node":
            a.destroy()
        else:
            net.destroy()
        _join(threads)
        assert isinstance(got["recv"], kith.KithError) and "destroyed" in str(got["recv"]), got
        assert got["send"] == kith.OFFLINE or isinstance(got["send"], kith.KithError), got
        net.destroy()


def test_hammer_send_recv_while_destroying(kith):
    """Threads sending and receiving as fast as they can on a and b while
    another thread destroys a (or the whole net), many times over: every
    call ends with an outcome, a message, TimeoutError or KithError, and
    nothing crashes (ASan)."""
    rounds = 30
    for r in range(rounds):
        net = kith.Net()
        a, b = net.node("a"), net.node("b")
        a.trust(b)
        stop = threading.Event()
        errors = []
        counts = {"sent": 0, "recv": 0, "refused": 0}

        def sender(frm, to):
            while not stop.is_set():
                try:
                    rc = frm.send(to, "x", timeout_ms=2000)
                    assert rc in (kith.ACKED, kith.OFFLINE, kith.REFUSED), rc
                    counts["sent"] += 1
                except kith.KithError as e:
                    counts["refused"] += 1
                    if "destroyed" in str(e):
                        return
                    if not any(w in str(e) for w in ("not running", "stopping")):
                        errors.append(traceback.format_exc())
                        return
                except Exception:  # noqa: BLE001 — anything else is the failure
                    errors.append(traceback.format_exc())
                    return

        def receiver(at):
            while not stop.is_set():
                try:
                    at.recv(timeout_ms=50)
                    counts["recv"] += 1
                except TimeoutError:
                    pass
                except kith.KithError as e:
                    if "destroyed" in str(e):
                        return
                    errors.append(traceback.format_exc())
                    return
                except Exception:  # noqa: BLE001
                    errors.append(traceback.format_exc())
                    return

        threads = [threading.Thread(target=sender, args=(a, "b")),
                   threading.Thread(target=sender, args=(b, "a")),
                   threading.Thread(target=sender, args=(a, "b")),
                   threading.Thread(target=receiver, args=(a,)),
                   threading.Thread(target=receiver, args=(b,)),
                   threading.Thread(target=receiver, args=(a,))]
        for t in threads:
            t.start()
        # Progress first, so the destroy falls among calls in flight.
        got_some = threading.Event()

        def watch():
            while counts["recv"] < 3 and not stop.is_set():
                stop.wait(0.01)
            got_some.set()

        w = threading.Thread(target=watch)
        w.start()
        assert got_some.wait(WAIT_S), counts
        destroyers = [threading.Thread(target=(a.destroy if r % 3 == 0 else
                                               net.destroy if r % 3 == 1 else
                                               b.destroy))]
        if r % 2:  # and a second destroy of the same thing at once
            destroyers.append(threading.Thread(target=destroyers[0]._target))
        for d in destroyers:
            d.start()
        _join(destroyers)
        stop.set()
        _join(threads + [w])
        net.destroy()
        assert not errors, errors[0]


def test_faults_and_trust_on_a_destroyed_node(kith):
    """A destroyed node is refused by the fault calls (its name may be a
    new node's) and by trust; a new node of the same name is not affected."""
    with kith.Net() as net:
        a, b = net.node("a"), net.node("b")
        a.destroy()
        for call in (lambda: net.partition(a, b), lambda: net.heal(a, b),
                     lambda: net.delay(a, b, 5), lambda: a.trust(b), lambda: b.trust(a),
                     lambda: a.listen("tcp://127.0.0.1:0"), lambda: a.recv(timeout_ms=0)):
            try:
                call()
                raise AssertionError("a destroyed node was used")
            except kith.KithError as e:
                assert "destroyed" in str(e), e
        a2 = net.node("a")
        a2.trust(b)
        assert a2.send("b", "new a", timeout_ms=WAIT_S * 1000) == kith.ACKED
        assert b.recv(timeout_ms=WAIT_S * 1000)["kind"]["body"] == "new a"
    try:
        net.node("c")
        raise AssertionError("a destroyed net made a node")
    except kith.KithError as e:
        assert "destroyed" in str(e)


def test_node_made_while_the_net_is_destroyed(kith):
    """net.node() on its way into C when another thread destroys the net:
    the destroy waits for it, and the node it made goes with the net (the
    old module freed the net under the call)."""
    in_gap, c_destroyed = threading.Event(), threading.Event()
    got = []

    def gap():
        in_gap.set()
        # The old module's destroy frees the net now; the new one waits
        # for this call, so the wait ends at its bound instead.
        c_destroyed.wait(2)

    net = kith.Net()

    def maker():
        try:
            got.append(net.node("late"))
        except kith.KithError as e:
            got.append(e)

    with _Wrap(kith, "kith_node_new", before=gap), \
            _Wrap(kith, "kith_net_destroy", after=c_destroyed.set):
        t = threading.Thread(target=maker, name="maker")
        t.start()
        assert in_gap.wait(WAIT_S)
        d = threading.Thread(target=net.destroy, name="destroy")
        d.start()
        _join([t, d])
    assert len(got) == 1, got
    if isinstance(got[0], kith.Node):
        try:
            got[0].send("x", "y")
            raise AssertionError("a node of a destroyed net was used")
        except kith.KithError as e:
            assert "destroyed" in str(e), e
    else:
        assert "destroyed" in str(got[0]), got[0]


def test_nul_in_text_is_refused_not_cut(kith):
    """A NUL inside a string the library takes would end the C string
    there: the old module sent "hello" for "hello\\0world" and said ACKED,
    and "b\\0junk" named peer b. Each is refused, and nothing is sent."""
    with kith.Net() as net:
        a, b = net.node("a"), net.node("b")
        a.trust(b)
        for call in (lambda: a.send("b", "hello\0world", timeout_ms=5000),
                     lambda: a.send("b\0junk", "x", timeout_ms=5000),
                     lambda: a.request("b", "add\0sub", timeout_ms=5000),
                     lambda: net.node("c\0d"),
                     lambda: a.listen("tcp://127.0.0.1:0\0x")):
            try:
                call()
                raise AssertionError("a NUL was passed through")
            except kith.KithError as e:
                assert "NUL" in str(e), e
        try:
            m = b.recv(timeout_ms=0)
            raise AssertionError("b received %r" % m)
        except TimeoutError:
            pass
        # In JSON a NUL is escaped: params carry it whole.
        assert a.request("b", "i", {"k": "v\0w"}, timeout_ms=WAIT_S * 1000) == kith.ACKED
        assert b.recv(timeout_ms=WAIT_S * 1000)["kind"]["params"] == {"k": "v\0w"}


def test_misspelt_kith_log_is_named(kith):
    """KITH_LOG set to no level the library knows: it says so once on
    stderr and logs at warn, instead of taking the misspelling silently."""
    code = "import kith\nwith kith.Net() as n:\n    n.node('a')\n"
    for value, said in (("loud", True), ("debug", False)):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ, KITH_LOG=value), timeout=WAIT_S)
        assert p.returncode == 0, p.stderr
        named = "KITH_LOG=loud is not debug, info, warn or error" in p.stderr
        assert named == said, (value, p.stderr)


def test_ctrl_c_ends_a_recv_that_waits_for_ever(kith):
    """A script blocked in recv(timeout_ms=-1) on its main thread, as a
    test harness waiting for an agent is: SIGINT ends it with
    KeyboardInterrupt (a wait wholly in C held the signal off for ever)."""
    import signal
    code = ("import kith, sys\n"
            "net = kith.Net(); a = net.node('a')\n"
            "try:\n"
            "    print('waiting', flush=True)\n"
            "    a.recv(timeout_ms=-1)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n"
            "net.destroy()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "waiting"
        # Not a measure of anything: lets it get into the wait, where the
        # old module held the signal off, before the signal comes.
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=WAIT_S)
        assert out.strip() == "interrupted" and p.returncode == 0, (out, p.returncode)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def main():
    _reexec()
    import kith
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn(kith)
                print("ok", name, flush=True)
            except Exception:  # noqa: BLE001
                failed += 1
                print("FAIL", name, flush=True)
                traceback.print_exc()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
