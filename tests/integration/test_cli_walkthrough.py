#!/usr/bin/python3
"""tests/integration/test_cli_walkthrough.py — README.md's "Two nodes in a
minute" and "Chat with the agent", step by step as a new user types them
(with ports of the test's own in place of 4200/4301/42617/42701, so runs in
parallel never meet), and what each step's mistakes look like: a peer that
refuses (exit 3), a peer that is down (exit 2), a name not trusted (exit 1),
each one line on stderr; `kith daemon` flags and homes given wrong; and
`kith tokens list` on a daemon with no tokens,
which printed nothing at all, and on a token with no name, which printed
trailing spaces.

Run by ctest with KITH_BIN set; every case runs, then the file fails if one
did."""

import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

if not os.environ.get("KITH_BIN"):
    sys.exit("KITH_BIN is not set (ctest sets it)")
sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Results, check, free_port  # noqa: E402

TIMEOUT = 60


def kith(*args, expect=0):
    """kith ARGS with KITH_HOME unset; checks the exit code; (stdout, stderr)."""
    env = dict(os.environ)
    env.pop("KITH_HOME", None)
    p = subprocess.run([KITH, *args], capture_output=True, text=True, env=env, timeout=TIMEOUT,
                       stdin=subprocess.DEVNULL)
    check(p.returncode == expect, f"kith {' '.join(args)}: exit {p.returncode}, wanted {expect}\n"
                                  f"stdout: {p.stdout[:500]!r}\nstderr: {p.stderr[:500]!r}")
    return p.stdout, p.stderr


def pubkey_of(home):
    """What README's `kith id --home … | sed 's/.*"pubkey":"\\([^"]*\\)".*/\\1/'` yields."""
    out, _ = kith("id", "--home", home)
    m = re.match(r'.*"pubkey":"([^"]*)".*', out.strip())
    check(m is not None, f"kith id printed {out!r}")
    return m.group(1)


class Serving:
    """`kith COMMAND --home HOME &`, until stop(); nofile, when given, is the
    open-file limit (soft and hard) it runs under."""

    def __init__(self, home, command="daemon", nofile=None):
        self.log = os.path.join(home, "daemon.out")
        self.out = open(self.log, "wb")

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([KITH, command, "--home", home], stdout=self.out,
                                     stderr=subprocess.STDOUT, preexec_fn=limit)
        deadline = time.time() + TIMEOUT
        while "daemon: ready" not in self.text():
            check(self.proc.poll() is None, f"the daemon exited: {self.text()}")
            check(time.time() < deadline, f"the daemon is not ready: {self.text()}")
            time.sleep(0.05)

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)
        self.out.close()
        return self.proc.returncode


def main():
    r = Results()
    tmp = tempfile.mkdtemp(prefix="kith-it-walkthrough-")
    a, b, c = (os.path.join(tmp, n) for n in "abc")
    a_comms, b_comms, b_gw, c_comms, c_gw = (free_port() for _ in range(5))
    while len({a_comms, b_comms, b_gw, c_comms, c_gw}) < 5:
        c_gw = free_port()

    def two_nodes_in_a_minute():
        # build/kith keygen --home /tmp/a && build/kith keygen --home /tmp/b
        for home in (a, b):
            out, _ = kith("keygen", "--home", home)
            check(set(json.loads(out)) == {"pubkey", "peer_id"}, out)
        # echo '{"comms":{"address":…},"gateway":{"port":…}}' > /tmp/b/config.json
        # (and A's comms port, which README leaves at the default 4200)
        with open(os.path.join(b, "config.json"), "w") as f:
            f.write(json.dumps({"comms": {"address": f"127.0.0.1:{b_comms}"},
                                "gateway": {"port": b_gw}}, separators=(",", ":")))
        out, _ = kith("config", "check", "--home", b)
        check(out == "config.json: ok\n", out)
        kith("peers", "add", "--home", a, "--name", "b", "--addr", f"tcp://127.0.0.1:{b_comms}",
             "--pubkey", pubkey_of(b))
        kith("peers", "add", "--home", b, "--name", "a", "--addr", f"tcp://127.0.0.1:{a_comms}",
             "--pubkey", pubkey_of(a))
        daemon = Serving(b)
        try:
            # exit 0 and a JSON receipt once B acks
            out, err = kith("send", "--home", a, "--to", "b", "--body", "hi")
            receipt = json.loads(out)
            check(receipt["status"] == "acked" and receipt["to"] == "b" and err == "",
                  f"{out!r} {err!r}")
            # A name not trusted: exit 1, one line naming the fix.
            _, err = kith("send", "--home", a, "--to", "c", "--body", "hi", expect=1)
            check(err == "kith send: no trusted peer named c; kith peers list shows the trusted "
                         "ones (kith peers add adds one)\n", err)
            # B stops trusting A: the envelope is refused, exit 3.
            kith("peers", "remove", "--home", b, "a")
            out, err = kith("send", "--home", a, "--to", "b", "--body", "hi", "--timeout", "10",
                            expect=3)
            check(json.loads(out)["status"] == "rejected" and len(err.splitlines()) == 1, err)
        finally:
            check(daemon.stop() == 0, f"SIGTERM: exit {daemon.proc.returncode}")
        # B is down: offline, exit 2.
        out, err = kith("send", "--home", a, "--to", "b", "--body", "hi", "--timeout", "5",
                        expect=2)
        check(json.loads(out)["status"] == "offline" and len(err.splitlines()) == 1 and
              err.startswith("kith send: offline: "), err)

    def chat_with_the_agent():
        os.makedirs(c)
        with open(os.path.join(c, "config.json"), "w") as f:
            json.dump({"comms": {"address": f"127.0.0.1:{c_comms}"}, "gateway": {"port": c_gw}}, f)
        daemon = Serving(c)
        try:
            # prints: kith daemon: pairing code: NNNNNN
            m = re.search(r"^kith daemon: pairing code: (\d{6})$", daemon.text(), re.M)
            check(m is not None, daemon.text())
            # No token yet: the list says so, and how one is made.
            out, _ = kith("tokens", "list", "--home", c)
            check(out == "no tokens: pair a client with the code kith paircode prints, or mint "
                         "one (kith tokens mint)\n", f"{out!r}")
            # curl -s -X POST -H 'X-Pairing-Code: NNNNNN' http://127.0.0.1:42617/pair
            req = urllib.request.Request(f"http://127.0.0.1:{c_gw}/pair", method="POST",
                                         headers={"X-Pairing-Code": m.group(1)})
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                got = json.loads(resp.read())
            check(got["paired"] is True and got["token"].startswith("kith_"), f"{got}")
            # The paired token has no name: no trailing spaces after its date.
            out, _ = kith("tokens", "list", "--home", c)
            lines = out.splitlines()
            check(len(lines) == 1 and re.fullmatch(r"[0-9a-f]{16}  operator  "
                                                   r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[0]),
                  f"{out!r}")
            out, _ = kith("paircode", "--home", c)
            check(re.fullmatch(r"\d{6}\n", out), f"{out!r}")
        finally:
            check(daemon.stop() == 0, f"SIGTERM: exit {daemon.proc.returncode}")
        # The daemon is not running: one line, exit 1.
        for args in (("paircode",), ("tokens", "list")):
            _, err = kith(*args, "--home", c, expect=1)
            check(err == f"kith {args[0]}: the daemon is not running at http://127.0.0.1:{c_gw} "
                         "(Connection refused); start it (kith daemon), or pass the --home or "
                         "--config it runs with\n", err)

    def daemon_mistakes():
        # A flag's value mistyped: named by the flag typed (the key it sets
        # was all the line named), and no empty home is left behind (the
        # home was made before the configuration was read).
        fresh = os.path.join(tmp, "fresh")
        for args, want in (
                (("--port", "99999"),
                 "--port (gateway.port): expected an integer 0..65535, got 99999"),
                (("--host", "nowhere.example"),
                 '--host (gateway.host): expected an IP address or localhost (the address to '
                 'listen on), got "nowhere.example" (a listener binds an address; kith looks no '
                 "name up for it)"),
                (("--port", str(a_comms)),
                 f"comms.address: 127.0.0.1:{a_comms} would listen where gateway.port does "
                 f"(127.0.0.1:{a_comms}); give each listener an address of its own")):
            with open(os.path.join(tmp, "a-comms.json"), "w") as f:
                json.dump({"comms": {"address": f"127.0.0.1:{a_comms}"}}, f)
            _, err = kith("daemon", "--home", fresh, "--config", os.path.join(tmp, "a-comms.json"),
                          *args, expect=1)
            check(err == f"kith daemon: {want}\n", f"{args}: {err!r}")
            check(not os.path.exists(fresh), f"{args}: {fresh} was made")
        with open(os.path.join(tmp, "bad.json"), "w") as f:
            f.write('{"gateway": {"port": 1,}}')
        _, err = kith("daemon", "--home", fresh, "--config", os.path.join(tmp, "bad.json"),
                      expect=1)
        check(err.startswith("kith daemon: ") and "syntax error" in err and
              len(err.splitlines()) == 1 and not os.path.exists(fresh), err)
        # A home that is a file.
        afile = os.path.join(tmp, "a-file")
        with open(afile, "w") as f:
            f.write("x")
        _, err = kith("daemon", "--home", afile, expect=1)
        check(err == f"kith daemon: {afile} is not a directory; pass --home DIR (or set "
                     "KITH_HOME) to a directory, which kith makes when missing\n", err)

    def first_commands():
        # `kith --help` lists every command of DESIGN §3 and the exit codes;
        # `kith` alone is the same usage on stderr, exit 1; a command kith
        # does not have is one line.
        out, err = kith("--help")
        check(err == "" and out.startswith("usage: kith COMMAND"), out)
        listed = re.findall(r"^  ([a-z]+) +", out.split("exit codes:")[0], re.M)
        check(listed == ["daemon", "gateway", "keygen", "id", "peers", "envelope", "send",
                         "config", "paircode", "tokens", "audit", "agent", "service"], f"{listed}")
        for code in ("0  success", "1  usage error", "2  kith send", "3  kith send"):
            check(f"\n  {code}" in out, f"{code!r} not in kith --help")
        for cmd in listed:
            sub, err = kith(cmd, "--help")
            check(sub.startswith("usage: kith ") and err == "", f"kith {cmd} --help: {sub[:80]!r}")
        out2, err = kith(expect=1)
        check(out2 == "" and err == out, "kith alone: the usage on stderr")
        _, err = kith("frob", expect=1)
        check(err == "kith: unknown command 'frob'; run 'kith --help' for the list\n", err)
        out, _ = kith("--version")
        check(re.fullmatch(r"kith \d+\.\d+\.\d+\n", out), out)

    def empty_home_is_refused():
        # `--home "$DIR"` with DIR unset: the empty value was read as no
        # --home, and kith keygen (or kith daemon) made an identity in
        # ~/.kith. Now every command refuses it before doing anything.
        fake_home = os.path.join(tmp, "user-home")
        os.makedirs(fake_home)
        env = dict(os.environ, HOME=fake_home)
        env.pop("KITH_HOME", None)
        want = ("--home is empty (an unset variable?); give a directory, or leave --home out "
                "for $KITH_HOME or ~/.kith\n")
        for args in (("keygen",), ("daemon",), ("gateway",), ("id",), ("peers", "list"),
                     ("send", "--to", "b", "--body", "x"), ("config", "check"), ("paircode",),
                     ("tokens", "list"), ("audit", "tail"), ("service", "logs"),
                     ("envelope", "encode")):
            for home in (("--home", ""), ("--home=",)):
                p = subprocess.run([KITH, *args, *home], capture_output=True, text=True, env=env,
                                   timeout=TIMEOUT, stdin=subprocess.DEVNULL)
                check(p.returncode == 1 and p.stderr.endswith(want) and
                      p.stderr.startswith("kith ") and len(p.stderr.splitlines()) == 1,
                      f"{args} {home}: exit {p.returncode}, {p.stderr!r}")
        check(os.listdir(fake_home) == [], f"made in HOME: {os.listdir(fake_home)}")

    def gateway_fd_warning():
        # kith gateway opens no comms listener, so it needs no descriptors
        # for 10,000 comms connections: under a limit that holds the
        # gateway's 10,000 it said "raise the hard limit" all the same.
        home = os.path.join(tmp, "gw")
        os.makedirs(home)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": 0}, "comms": {"address": "127.0.0.1:0"},
                       "workers": {"agent_threads": 0}}, f)
        for command, warned in (("gateway", False), ("daemon", True)):
            served = Serving(home, command, nofile=12000)
            text = served.text()
            check(served.stop() == 0, f"{command}: SIGTERM: exit {served.proc.returncode}")
            check(("open-file limit 12000" in text) == warned, f"{command}: {text}")

    def audit_path_in_a_folder():
        # audit.path relative to the home, in a folder of its own: kith
        # config check said ok, and the daemon stopped at start ("cannot
        # open …/audit/kith.log: No such file or directory").
        home = os.path.join(tmp, "auditdir")
        os.makedirs(home)
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump({"gateway": {"port": 0}, "comms": {"address": "127.0.0.1:0"},
                       "workers": {"agent_threads": 0}, "audit": {"path": "audit/kith.log"}}, f)
        kith("config", "check", "--home", home)
        served = Serving(home)
        check(served.stop() == 0, f"SIGTERM: exit {served.proc.returncode}: {served.text()}")
        log = os.path.join(home, "audit", "kith.log")
        check(stat.S_IMODE(os.stat(os.path.dirname(log)).st_mode) == 0o700, "the folder is 0700")
        out, _ = kith("audit", "verify", "--home", home)
        check(out.startswith(f"{log}: intact: "), out)

    r.run(audit_path_in_a_folder)
    r.run(gateway_fd_warning)
    r.run(empty_home_is_refused)
    r.run(first_commands)
    r.run(daemon_mistakes)
    r.run(two_nodes_in_a_minute)
    r.run(chat_with_the_agent)
    shutil.rmtree(tmp, ignore_errors=True)
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
