#!/usr/bin/python3
"""tests/integration/test_cli_identity.py — the real `kith` binary: keygen,
id, peers add/list/remove, config check. Identity files are checked with
code kith did not write: the PeerId with hashlib.sha1 (peer.peer_id: UUIDv5 by
hand, since Python's uuid.uuid5 takes a str name, not bytes) and the key pair
with PyNaCl.

Run by ctest with KITH_BIN set; exits non-zero on the first failure."""

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import nacl.signing

if not os.environ.get("KITH_BIN"):
    sys.exit("KITH_BIN is not set (ctest sets it)")
sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, check, curl, free_port, kith_run as kith  # noqa: E402
from peer import peer_id as peer_id_of  # noqa: E402

def one_line_error(stderr: str, *needles: str):
    """An error is one line on stderr that contains every needle."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"wanted one line on stderr, got {lines!r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def test_identity(tmp):
    home = os.path.join(tmp, "a")
    out, _ = kith("keygen", "--home", home)
    made = json.loads(out)
    check(set(made) == {"pubkey", "peer_id"}, f"keygen printed {made}")
    check(made["pubkey"].startswith("ed25519:"), made["pubkey"])
    pk = base64.b64decode(made["pubkey"][len("ed25519:"):], validate=True)
    check(len(pk) == 32, "public key is 32 bytes")
    check(made["peer_id"] == peer_id_of(pk),
          f"peer_id {made['peer_id']} != UUIDv5 {peer_id_of(pk)}")

    out, _ = kith("id", "--home", home)
    check(json.loads(out) == made, "kith id repeats what keygen printed")
    out, _ = kith("id", env={"KITH_HOME": home})
    check(json.loads(out) == made, "KITH_HOME names the home")

    key = os.path.join(home, "identity", "identity.key")
    pub = os.path.join(home, "identity", "identity.pub")
    check(stat.S_IMODE(os.stat(key).st_mode) == 0o600, "identity.key is 0600")
    check(stat.S_IMODE(os.stat(os.path.join(home, "identity")).st_mode) == 0o700,
          "identity/ is 0700")
    with open(pub) as f:
        check(f.read() == made["pubkey"] + "\n", "identity.pub holds the text form")

    # The key file, read without kith: its seed gives the same public key.
    with open(key) as f:
        line = f.read()
    check(line.startswith("ed25519-seed:") and line.endswith("\n"), "key file format")
    seed = base64.b64decode(line[len("ed25519-seed:"):].strip(), validate=True)
    check(bytes(nacl.signing.SigningKey(seed).verify_key) == pk, "seed derives the public key")

    # Never overwritten.
    _, err = kith("keygen", "--home", home, expect=1)
    one_line_error(err, "already exists", key)
    with open(key) as f:
        check(f.read() == line, "keygen left the key alone")

    # A key others can read is refused with the fix.
    os.chmod(key, 0o644)
    _, err = kith("id", "--home", home, expect=1)
    one_line_error(err, "chmod 600 " + key)
    os.chmod(key, 0o600)

    _, err = kith("id", "--home", os.path.join(tmp, "none"), expect=1)
    one_line_error(err, "kith keygen")
    return made


def daemon_refuses(home, *needles):
    """Starts `kith daemon` in home (ports 0, so nothing is taken) and
    expects it to refuse at once with a one-line reason on stderr."""
    with open(os.path.join(home, "config.json"), "w") as f:
        json.dump({"gateway": {"port": 0}, "comms": {"address": "127.0.0.1:0"}}, f)
    _, err = kith("daemon", "--home", home, expect=1)
    lines = [ln for ln in err.splitlines() if ln.startswith("kith daemon: ")]
    check(len(lines) == 1, f"one 'kith daemon:' line on stderr, got {err!r}")
    for n in needles:
        check(n in lines[0], f"{n!r} not in {lines[0]!r}")


def test_lost_key(tmp):
    """identity.key deleted, identity.pub kept: the daemon refuses to start
    and says how to recover, rather than minting a stranger."""
    home = os.path.join(tmp, "lost")
    made = json.loads(kith("keygen", "--home", home)[0])
    key = os.path.join(home, "identity", "identity.key")
    pub = os.path.join(home, "identity", "identity.pub")
    with open(key) as f:
        saved = f.read()
    os.unlink(key)
    daemon_refuses(home, "identity.key is missing", made["pubkey"],
                   "restore identity.key from a backup", "delete identity.pub")
    check(not os.path.exists(key), "no new key was minted")
    with open(pub) as f:
        check(f.read() == made["pubkey"] + "\n", "identity.pub left alone")
    _, err = kith("keygen", "--home", home, expect=1)
    one_line_error(err, "identity.key is missing", "delete identity.pub")
    check(not os.path.exists(key), "keygen minted no key either")

    # A key that does not match identity.pub is refused too.
    other = nacl.signing.SigningKey.generate()
    with open(key, "w") as f:
        f.write("ed25519-seed:" + base64.b64encode(bytes(other)).decode() + "\n")
    os.chmod(key, 0o600)
    daemon_refuses(home, "names another key", pub)

    # Restored from backup: the same identity again.
    with open(key, "w") as f:
        f.write(saved)
    out, _ = kith("id", "--home", home)
    check(json.loads(out) == made, "the restored key is the old identity")

    # Deleting identity.pub on purpose makes a new identity.
    os.unlink(key)
    os.unlink(pub)
    fresh = json.loads(kith("keygen", "--home", home)[0])
    check(fresh["pubkey"] != made["pubkey"], "a new identity on purpose")


def test_peers(tmp, me):
    home = os.path.join(tmp, "a")
    bob = json.loads(kith("keygen", "--home", os.path.join(tmp, "b"))[0])
    carol = json.loads(kith("keygen", "--home", os.path.join(tmp, "c"))[0])

    out, _ = kith("peers", "list", "--home", home)
    check("no trusted peers" in out, "empty store")

    kith("peers", "add", "--home", home, "--name", "bob", "--pubkey", bob["pubkey"],
         "--addr", "tcp://127.0.0.1:4201", "--description", "Bob's node",
         "--label", "env=prod", "--label", "team=a=b")
    kith("peers", "add", "--name", "bob", "--pubkey", carol["pubkey"],
         "--addr", "uds:///run/carol.sock", "--home", home)
    store = os.path.join(home, "trusted_peers.json")
    check(stat.S_IMODE(os.stat(store).st_mode) == 0o600, "trusted_peers.json is 0600")

    listed = json.loads(kith("peers", "list", "--json", "--home", home)[0])["peers"]
    check([p["name"] for p in listed] == ["bob", "bob"], f"two rows named bob: {listed}")
    check(listed[0]["pubkey"] == bob["pubkey"] and listed[0]["peer_id"] == bob["peer_id"],
          "bob's key and PeerId")
    check(listed[0]["addr"] == "tcp://127.0.0.1:4201", "bob's address")
    check(listed[0]["meta"] == {"description": "Bob's node",
                                "labels": {"env": "prod", "team": "a=b"}}, "bob's meta")
    check(listed[1]["peer_id"] == carol["peer_id"], "carol's PeerId")
    check("meta" not in listed[1], "no meta when there is none")
    with open(store) as f:
        on_disk = json.load(f)
    check("peer_id" not in on_disk["peers"][0], "the file holds DESIGN's fields only")

    out, _ = kith("peers", "list", "--home", home)
    check(bob["peer_id"] in out and carol["peer_id"] in out, "table lists both")

    # Refusals: one line each, nothing written.
    _, err = kith("peers", "add", "--home", home, "--name", "again", "--pubkey", bob["pubkey"],
                  "--addr", "tcp://h:1", expect=1)
    one_line_error(err, "already trusted", bob["peer_id"])
    _, err = kith("peers", "add", "--home", home, "--name", "x", "--pubkey", "ed25519:AAAA",
                  "--addr", "tcp://h:1", expect=1)
    one_line_error(err, "--pubkey")
    _, err = kith("peers", "add", "--home", home, "--name", "x", "--pubkey", me["pubkey"],
                  "--addr", "http://h:1", expect=1)
    one_line_error(err, "addr:", "tcp://host:port")
    _, err = kith("peers", "add", "--home", home, "--name", "a b", "--pubkey", me["pubkey"],
                  "--addr", "tcp://h:1", expect=1)
    one_line_error(err, "name:")
    _, err = kith("peers", "add", "--home", home, "--name", "x", expect=1)
    one_line_error(err, "--pubkey")
    check(len(json.loads(kith("peers", "list", "--json", "--home", home)[0])["peers"]) == 2,
          "refusals changed nothing")

    # remove: an ambiguous name is refused; a PeerId is exact.
    _, err = kith("peers", "remove", "bob", "--home", home, expect=1)
    one_line_error(err, "2 peers are named 'bob'", "PeerId")
    out, _ = kith("peers", "remove", carol["peer_id"], "--home", home)
    check("removed bob " + carol["peer_id"] in out, out)
    out, _ = kith("peers", "remove", "bob", "--home", home)
    check("removed bob " + bob["peer_id"] in out, out)
    _, err = kith("peers", "remove", "bob", "--home", home, expect=1)
    one_line_error(err, "no peer")
    check(json.loads(kith("peers", "list", "--json", "--home", home)[0]) == {"peers": []},
          "store is empty again")


def test_bad_row(tmp):
    home = os.path.join(tmp, "bad")
    os.makedirs(home)
    good = json.loads(kith("keygen", "--home", os.path.join(tmp, "g"))[0])
    store = os.path.join(home, "trusted_peers.json")
    with open(store, "w") as f:
        f.write('// one good row, then a bad one\n'
                '{"peers": [\n'
                f'  {{"name": "good", "pubkey": "{good["pubkey"]}", "addr": "tcp://127.0.0.1:1"}},\n'
                '  {"pubkey": "ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",\n'
                '   "name": "mallory", "addr": "tcp://127.0.0.1:2"}\n'
                ']}\n')
    os.chmod(store, 0o600)
    _, err = kith("peers", "list", "--home", home, expect=1)
    one_line_error(err, store, 'peers[1] "mallory": pubkey: not a full-order')
    _, err = kith("peers", "list", "--json", "--home", home, expect=1)
    one_line_error(err, 'peers[1] "mallory"')
    # Edits refuse too: a broken store is never rewritten from half of it.
    _, err = kith("peers", "remove", "good", "--home", home, expect=1)
    one_line_error(err, 'peers[1] "mallory"')
    with open(store) as f:
        check("mallory" in f.read(), "the broken file is left as it was")

    os.chmod(store, 0o666)
    _, err = kith("peers", "list", "--home", home, expect=1)
    one_line_error(err, "chmod go-w")


def test_config_check(tmp):
    home = os.path.join(tmp, "cfg")
    os.makedirs(home)
    out, _ = kith("config", "check", "--home", home)
    check("defaults apply" in out, out)
    path = os.path.join(home, "config.json")
    with open(path, "w") as f:
        f.write('// comments are fine\n{"gateway": {"port": 8080}, /* here too */ "comms": {}}\n')
    kith("config", "check", path)
    kith("config", "check", "--home", home)
    out, _ = kith("config", "check", "--print", path)
    check(json.loads(out)["gateway"]["port"] == 8080, "--print shows the effective config")
    check(json.loads(out)["comms"]["inbox_capacity"] == 1024, "--print shows defaults too")
    with open(path, "w") as f:
        f.write('{\n  "comms": {\n    "inbox_capacity": "x"\n  }\n}\n')
    _, err = kith("config", "check", path, expect=1)
    one_line_error(err, path, 'comms.inbox_capacity: expected an integer 1..1048576, got "x"',
                   "line 3")
    _, err = kith("config", "check", "--home", home, expect=1)
    one_line_error(err, "comms.inbox_capacity")
    with open(path, "w") as f:
        f.write('{"comms": {"inbox": 1}}')
    _, err = kith("config", "check", path, expect=1)
    one_line_error(err, "comms.inbox: unknown key")
    _, err = kith("config", "check", os.path.join(home, "missing.json"), expect=1)
    one_line_error(err, "missing.json", "no such file")


def test_help():
    for cmd in (["keygen"], ["id"], ["peers"], ["peers", "add"], ["peers", "list"],
                ["peers", "remove"], ["config"], ["config", "check"], ["daemon"], ["send"],
                ["envelope", "encode"], ["envelope", "decode"], ["envelope", "verify"]):
        out, _ = kith(*cmd, "--help")
        check(out.startswith("usage: kith " + cmd[0]), f"{cmd} --help: {out!r}")
    out, _ = kith("--help")
    check("config" in out and "peers" in out, "kith --help lists the commands")
    _, err = kith("peers", "frobnicate", expect=1)
    one_line_error(err, "add, remove, list or import", "kith peers --help")
    _, err = kith("keygen", "--bogus", expect=1)
    one_line_error(err, "--bogus", "--help")
    # getopt_long everywhere: one-line errors naming the fix, exit 1.
    for args, needles in ((["id", "--home"], ["--home needs a value", "kith id --help"]),
                          (["send", "--to"], ["--to needs a value", "kith send --help"]),
                          (["daemon", "--port"], ["--port needs a value", "kith daemon --help"]),
                          (["daemon", "stray"], ["unexpected argument 'stray'"]),
                          (["peers", "list", "--x"], ["unknown option '--x'", "kith peers --help"]),
                          (["peers", "add", "--name"], ["--name needs a value"]),
                          (["config", "check", "a", "b"], ["one FILE at most"]),
                          (["envelope", "decode", "--home", "x"],
                           ["unknown option '--home'", "kith envelope decode --help"])):
        _, err = kith(*args, expect=1)
        one_line_error(err, *needles)


def test_flag_forms(tmp):
    """--flag=VALUE works as --flag VALUE does, and flags may follow operands."""
    home = os.path.join(tmp, "forms")
    made = json.loads(kith("keygen", f"--home={home}")[0])
    out, _ = kith("id", "--home", home)
    check(json.loads(out) == made, "--home=DIR and --home DIR name the same home")
    cfg = os.path.join(tmp, "forms.json")
    with open(cfg, "w") as f:
        f.write("{}")
    out, _ = kith("config", "check", cfg, "--home", home)
    check(out.startswith(cfg + ": ok"), f"FILE before a flag: {out!r}")


def test_serve_flags(tmp):
    """kith daemon's own flags (DESIGN §3) win: --config names a file
    outside the home (its comms address is used), --host and --port place
    the gateway, --echo turns /ws/echo on; then SIGTERM is exit 0."""
    home = os.path.join(tmp, "serve")
    kith("keygen", "--home", home)
    cfg = os.path.join(tmp, "elsewhere.json")
    comms_port, gw_port = free_port(), free_port()
    with open(cfg, "w") as f:
        json.dump({"comms": {"address": f"127.0.0.1:{comms_port}", "uds_path": None},
                   "gateway": {"port": 1}, "workers": {"agent_threads": 0}}, f)
    log = open(os.path.join(tmp, "serve.out"), "wb")
    p = subprocess.Popen([KITH, "daemon", "--home", home, "--config", cfg, "--host", "127.0.0.1",
                          "--port", str(gw_port), "--echo"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        text = ""
        while "daemon: ready" not in text:
            check(p.poll() is None and time.time() < deadline, f"not ready: {text}")
            time.sleep(0.05)
            text = open(log.name, errors="replace").read()
        check(f"gateway: listening on http://127.0.0.1:{gw_port} " in text, text)
        check(f"comms: listening on tcp://127.0.0.1:{comms_port} " in text, text)
        with socket.create_connection(("127.0.0.1", gw_port), timeout=60) as s:
            s.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            head = s.recv(4096)
        check(head.startswith(b"HTTP/1.1 101"), f"/ws/echo with --echo: {head!r}")
        status = curl(f"http://127.0.0.1:{gw_port}/health")[0]
        check(status == 200, f"/health on --port: {status}")
        p.send_signal(signal.SIGTERM)
        check(p.wait(timeout=60) == 0, "SIGTERM is exit 0")
    finally:
        if p.poll() is None:
            p.kill()
        log.close()


def test_daemon_refusals(tmp):
    """What keeps kith daemon from starting is one line and exit 1: a log
    level it does not know, a home it cannot create, a gateway.host that is
    not an address, a gateway port someone else holds."""
    home = os.path.join(tmp, "refusals")
    kith("keygen", "--home", home)
    _, err = kith("daemon", "--home", home, "--log-level", "loud", expect=1)
    one_line_error(err, "--log-level must be debug, info, warn or error")
    _, err = kith("daemon", "--home", "/proc/kith-cannot-be-here", expect=1)
    check("cannot create /proc/kith-cannot-be-here" in err, err)

    def refuses(config, *needles, checked=True):
        """kith daemon refuses config in one line naming needles; and when
        `checked`, kith config check refuses the file with the same line."""
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump(config, f)
        _, err = kith("daemon", "--home", home, expect=1)
        lines = [ln for ln in err.splitlines() if ln.startswith("kith daemon: ")]
        check(len(lines) == 1, f"one 'kith daemon:' line on stderr, got {err!r}")
        for n in needles:
            check(n in lines[0], f"{n!r} not in {lines[0]!r}")
        if checked:
            _, cerr = kith("config", "check", "--home", home, expect=1)
            one_line_error(cerr, lines[0][len("kith daemon: "):])

    base = {"comms": {"address": "127.0.0.1:0", "uds_path": None},
            "workers": {"agent_threads": 0}}
    # kith config check said ok to each of these, and the daemon stopped
    # at start: a name to listen on, two of its own listeners on one port
    # (told as "another process listens there").
    refuses({**base, "gateway": {"host": "gateway.example", "port": 0}},
            'gateway.host: expected an IP address or localhost', '"gateway.example"')
    refuses({**base, "comms": {"address": "comms.example:0"}},
            'comms.address: expected "host:port" to listen on', '"comms.example:0"')
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    refuses({**base, "comms": {"address": f"127.0.0.1:{port}"}, "gateway": {"port": port}},
            f"comms.address: 127.0.0.1:{port} would listen where gateway.port does "
            f"(127.0.0.1:{port}); give each listener an address of its own")
    with open(os.path.join(home, "config.json"), "w") as f:
        json.dump({**base, "comms": {"address": f"127.0.0.1:{port}"}}, f)
    _, err = kith("daemon", "--home", home, "--port", str(port), expect=1)
    one_line_error(err, f"comms.address: 127.0.0.1:{port} would listen where gateway.port does")
    refuses({**base, "workers": {"agent_threads": 0, "listen": "inproc://kith.workers"}},
            "workers.listen: inproc://kith.workers is the embedded workers' own endpoint")
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        port = held.getsockname()[1]
        refuses({**base, "gateway": {"port": port}}, f"cannot listen on http://127.0.0.1:{port}",
                checked=False)
    finally:
        held.close()


def test_peers_usage(tmp, me):
    """Every way to call `kith peers` wrong is one line on stderr and exit 1,
    and leaves the store as it was."""
    home = os.path.join(tmp, "usage")
    pk = me["pubkey"]
    addr = "tcp://127.0.0.1:9"
    for args, needle in (
        ((), "expected add, remove, list or import"),
        (("frob",), "expected add, remove, list or import"),
        (("list", "--home"), "--home needs a value"),
        (("list", "extra", "--home", home), "unexpected 'extra'"),
        (("remove", "--home", home), "expected one NAME or PEER_ID"),
        (("add", "--home", home, "--name", "x", "--pubkey", pk, "--addr", addr,
          "--profile", "other"), "--profile is kith or meerkat, got 'other'"),
        (("add", "--home", home, "--name", "x", "--pubkey", pk, "--addr", addr,
          "--label", "novalue"), "--label needs KEY=VALUE, got 'novalue'"),
        (("add", "--home", home, "--name", "x", "--pubkey", pk, "--addr", addr, "extra"),
         "unexpected 'extra'"),
        (("import", "--home", home), "expected one FILE"),
        (("import", os.path.join(tmp, "no-such.json"), "--home", home), "No such file"),
    ):
        _, err = kith("peers", *args, expect=1)
        one_line_error(err, needle)
    many = []
    for i in range(65):
        many += ["--label", f"k{i}=v"]
    _, err = kith("peers", "add", "--home", home, "--name", "x", "--pubkey", pk, "--addr", addr,
                  *many, expect=1)
    one_line_error(err, "at most 64 labels")
    # A file Meerkat would not write either: nothing imported, the store untouched.
    bad = os.path.join(tmp, "bad-peers.json")
    with open(bad, "w") as f:
        f.write('{"peers": 7}')
    _, err = kith("peers", "import", bad, "--home", home, expect=1)
    one_line_error(err, bad, "nothing was imported")
    _, err = kith("peers", "import", tmp, "--home", home, expect=1)
    one_line_error(err, tmp)
    out, _ = kith("peers", "list", "--home", home)
    check("no trusted peers" in out, f"the store changed: {out}")


def main():
    with tempfile.TemporaryDirectory(prefix="kith-it-identity-") as tmp:
        me = test_identity(tmp)
        test_lost_key(tmp)
        test_peers(tmp, me)
        test_peers_usage(tmp, me)
        test_bad_row(tmp)
        test_config_check(tmp)
        test_help()
        test_flag_forms(tmp)
        test_serve_flags(tmp)
        test_daemon_refusals(tmp)
    print("test_cli_identity: ok")


if __name__ == "__main__":
    main()
