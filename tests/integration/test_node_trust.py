"""tests/integration/test_node_trust.py — a library node's trust edits and
the real `kith peers add --home` on the same home: the peer the CLI added
after the node started is still in trusted_peers.json after the node
trusts another node (Node.trust, kith_node_trust), and the node trusts it
at once, as a reload would. The node wrote its whole in-memory store over
the file, without the file's lock, and the CLI's row was gone.

Runs against the build's libkith.so (KITH_BUILD_DIR) and kith (KITH_BIN); a
sanitized build's library needs the ASan runtime first in the process: the
script then runs itself again with libasan preloaded, as
test_kith_api_python.py does."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BUILD = os.environ.get("KITH_BUILD_DIR", "")
SOURCE = os.environ.get("KITH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def _sanitized():
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            return any(line.startswith("KITH_SANITIZE:BOOL=ON") for line in f)
    except OSError:
        return False


def _reexec():
    if os.environ.get("KITH_NODE_TRUST_CHILD"):
        return
    env = dict(os.environ, KITH_NODE_TRUST_CHILD="1",
               KITH_LIBRARY=os.path.join(BUILD, "libkith.so.0"),
               PYTHONPATH=os.path.join(SOURCE, "tools", "python"),
               PYTHONDONTWRITEBYTECODE="1")
    if _sanitized():
        asan = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True, check=True).stdout.strip()
        env["LD_PRELOAD"] = asan
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    sys.exit(subprocess.run([sys.executable, __file__], env=env).returncode)


def _peers(home):
    from peer import kith as kith_cli
    return {p["name"]: p for p in json.loads(kith_cli("peers", "list", "--json",
                                                      "--home", home))["peers"]}


def test_cli_row_survives_library_trust(kith):
    from peer import Peer, kith as kith_cli, pubkey_text
    home = tempfile.mkdtemp(prefix="kith-node-trust-")
    try:
        with kith.Net() as net:
            a = net.node("a", home=home)
            b = net.node("b")
            x = Peer()
            kith_cli("peers", "add", "--home", home, "--name", "x", "--pubkey",
                     pubkey_text(x.pk), "--addr", "tcp://127.0.0.1:9")
            a.trust(b)
            rows = _peers(home)
            assert set(rows) == {"x", "b"}, rows
            assert rows["x"]["pubkey"] == pubkey_text(x.pk), rows
            assert rows["b"]["addr"] == "inproc://b", rows
            # a trusts x now: a send is tried (nobody listens there), not
            # refused as addressed to a stranger.
            assert a.send("x", "hello", timeout_ms=20000) == kith.OFFLINE
            assert a.send("b", "hello", timeout_ms=20000) == kith.ACKED
            # And the CLI's next edit keeps the node's row.
            y = Peer()
            kith_cli("peers", "add", "--home", home, "--name", "y", "--pubkey",
                     pubkey_text(y.pk), "--addr", "tcp://127.0.0.1:9")
            assert set(_peers(home)) == {"x", "b", "y"}
    finally:
        shutil.rmtree(home, ignore_errors=True)


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
