"""tests/integration/test_service.py — `kith service` (DESIGN §3) without a
service manager: systemctl on PATH is a stand-in this test writes, which
records its arguments and exits as told. `install` writes a user unit under
$XDG_CONFIG_HOME whose ExecStart, read back the way systemd splits it
(quotes, backslash escapes, %% and $$), is this kith with the absolute home
and configuration, even when their paths hold spaces, %, $ and quotes; the
command line is then run as systemd would run it, and the daemon comes up
and stops cleanly. A configuration the daemon would refuse installs nothing;
`--print` writes nothing; start/stop/restart/status hand systemctl's exit
status back; a missing systemctl is one clear line; `uninstall` disables
and removes the unit; `logs` prints the last lines of the daemon's log."""

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import shutil
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Results, check  # noqa: E402

TIMEOUT = 60


MADE = []  # every Env's folder, removed when the test ends


class Env:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="kith-service-")
        MADE.append(self.tmp)
        self.bin = os.path.join(self.tmp, "bin")
        self.xdg = os.path.join(self.tmp, "xdg")
        self.log = os.path.join(self.tmp, "systemctl.log")
        os.makedirs(self.bin)
        fake = os.path.join(self.bin, "systemctl")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\nprintf "%s\\n" "$*" >> "$FAKE_SYSTEMCTL_LOG"\n'
                    'exit "${FAKE_SYSTEMCTL_RC:-0}"\n')
        os.chmod(fake, 0o755)
        self.unit = os.path.join(self.xdg, "systemd", "user", "kith.service")

    def run(self, *args, rc=0, path=None, unset=(), extra=None, stdout=subprocess.PIPE):
        env = dict(os.environ, XDG_CONFIG_HOME=self.xdg, FAKE_SYSTEMCTL_LOG=self.log,
                   PATH=path if path is not None else self.bin + ":" + os.environ["PATH"],
                   FAKE_SYSTEMCTL_RC=str(rc))
        env.update(extra or {})
        for name in unset:
            env.pop(name, None)
        p = subprocess.run([KITH, "service", *args], stdout=stdout, stderr=subprocess.PIPE,
                           text=True, env=env, timeout=TIMEOUT)
        return p.returncode, p.stdout, p.stderr

    def calls(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            lines = f.read().splitlines()
        os.unlink(self.log)
        return lines


def exec_start(unit_text):
    """ExecStart split as systemd splits it: words, double quotes with
    backslash escapes, then %% → % and $$ → $."""
    line = [ln for ln in unit_text.splitlines() if ln.startswith("ExecStart=")]
    check(len(line) == 1, f"one ExecStart in {unit_text}")
    words = shlex.split(line[0][len("ExecStart="):], posix=True)
    return [w.replace("%%", "\0").replace("$$", "$").replace("\0", "%") for w in words]


def main():
    r = Results()
    e = Env()
    # A home and a config whose paths need every kind of quoting.
    home = os.path.join(e.tmp, 'my home % "x" $HOME \\ end')
    conf_dir = os.path.join(e.tmp, "conf 100%")
    os.makedirs(conf_dir)
    config = os.path.join(conf_dir, "kith.json")
    with open(config, "w") as f:
        json.dump({"gateway": {"port": 0}, "comms": {"address": "127.0.0.1:0"}}, f)

    def install_writes_and_enables():
        rc, out, err = e.run("install", "--home", home, "--config", config)
        check(rc == 0, f"install: {rc} {out} {err}")
        check(os.path.exists(e.unit) and e.unit in out, f"unit at {e.unit}: {out}")
        check(stat.S_IMODE(os.stat(e.unit).st_mode) == 0o644, "the unit is world-readable")
        check(e.calls() == ["--user daemon-reload", "--user enable kith.service"], "systemctl")
        text = open(e.unit).read()
        argv = exec_start(text)
        check(argv == [os.path.realpath(KITH), "daemon", "--home", os.path.realpath(home),
                       "--config", os.path.realpath(config)], f"ExecStart {argv}")
        check("WantedBy=default.target" in text and "Restart=on-failure" in text and
              "ExecReload=/bin/kill -HUP $MAINPID" in text and
              "network-online" not in text, f"unit {text}")

    def exec_start_runs_the_daemon():
        # The command line systemd would run: the daemon comes up on it and
        # stops cleanly on SIGTERM (what `systemctl stop` sends).
        argv = exec_start(open(e.unit).read())
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + TIMEOUT
            seen = []
            while time.time() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                seen.append(line)
                if "daemon: ready" in line:
                    break
            check(any("daemon: ready" in s for s in seen), f"daemon output {seen}")
            p.send_signal(signal.SIGTERM)
            check(p.wait(timeout=TIMEOUT) == 0, f"exit {p.returncode}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        check(os.path.exists(os.path.join(home, "identity", "identity.key")), "the home was used")

    def bad_config_installs_nothing():
        os.unlink(e.unit)
        bad = os.path.join(e.tmp, "bad.json")
        with open(bad, "w") as f:
            f.write('{"gateway": {"port": "high"}}')
        rc, out, err = e.run("install", "--home", home, "--config", bad)
        check(rc == 1 and "gateway.port" in err and "nothing installed" in err, f"{rc} {err}")
        check(not os.path.exists(e.unit) and e.calls() == [], "nothing written, nothing run")
        # A home not made yet stays unmade (it was made, empty, before the
        # configuration was read and refused).
        new_home = os.path.join(e.tmp, "new-home")
        rc, out, err = e.run("install", "--home", new_home, "--config", bad)
        check(rc == 1 and "nothing installed" in err and not os.path.exists(new_home),
              f"{rc} {err} {os.path.exists(new_home)}")
        rc, out, err = e.run("install", "--home", home, "--config", os.path.join(e.tmp, "none"))
        check(rc == 1 and "cannot read" in err, f"{rc} {err}")

    def print_touches_nothing():
        rc, out, err = e.run("install", "--home", home, "--system", "--print")
        check(rc == 0 and "WantedBy=multi-user.target" in out and
              "After=network-online.target" in out, f"{rc} {out} {err}")
        check(exec_start(out)[:4] == [os.path.realpath(KITH), "daemon", "--home",
                                      os.path.realpath(home)], out)
        check(not os.path.exists(e.unit) and e.calls() == [], "nothing written, nothing run")

    def environment_named():
        # A configuration that tells the daemon to read a secret from its
        # environment: the service's environment is not this shell's, and
        # the daemon refuses to start without it, restarting into the same
        # refusal. The unit and the install's output say which variables.
        envconf = os.path.join(e.tmp, "env.json")
        with open(envconf, "w") as f:
            json.dump({"gateway": {"port": 0, "webhook_secret_env": "HOOK_SECRET"},
                       "comms": {"address": "127.0.0.1:0"},
                       "audit": {"hmac_key_env": "AUDIT_KEY"}}, f)
        names = "HOOK_SECRET (gateway.webhook_secret_env), AUDIT_KEY (audit.hmac_key_env)"
        rc, out, err = e.run("install", "--home", home, "--config", envconf, "--print")
        check(rc == 0 and "# The daemon reads from its environment, which this unit does not "
              f"set:\n#   {names}\n# Add Environment= or EnvironmentFile= with `systemctl "
              "--user edit kith`.\nExecStart=" in out, f"{rc} {out} {err}")
        rc, out, err = e.run("install", "--home", home, "--config", envconf)
        check(rc == 0 and out.endswith(
            f"the daemon reads {names} from its environment, which the unit does not set: add "
            "Environment= or EnvironmentFile= with systemctl --user edit kith\n"), f"{rc} {out}")
        check(names in open(e.unit).read(), "the unit names them")
        e.calls()
        # None named, nothing said.
        rc, out, err = e.run("install", "--home", home, "--config", config)
        check(rc == 0 and "environment" not in out and "environment" not in open(e.unit).read(),
              f"{rc} {out}")
        e.calls()
        os.unlink(e.unit)  # as the cases after this one expect

    def controls_pass_systemctl_through():
        for verb in ("start", "stop", "restart", "status"):
            rc, out, err = e.run(verb)
            check(rc == 0 and e.calls() == [f"--user {verb} kith.service"], f"{verb}: {rc} {err}")
        rc, out, err = e.run("status", rc=3)  # systemd: 3 is "not running"
        check(rc == 3 and e.calls() == ["--user status kith.service"], f"status {rc}")
        rc, out, err = e.run("start", "--system")
        check(rc == 0 and e.calls() == ["start kith.service"], f"--system {rc} {err}")

    def failures_are_one_line():
        rc, out, err = e.run("install", "--home", home, path=e.tmp)  # no systemctl on PATH
        check(rc == 1 and "systemctl is not installed" in err and len(err.splitlines()) == 1,
              f"{rc} {err!r}")
        check(not os.path.exists(e.unit), "a failed install leaves no unit")
        rc, out, err = e.run("install", "--home", home, rc=1)
        check(rc == 1 and "systemctl --user daemon-reload failed (exit 1" in err and
              err.endswith("; nothing installed\n") and len(err.splitlines()) == 1,
              f"{rc} {err!r}")
        check(not os.path.exists(e.unit), "a failed install leaves no unit")
        e.calls()
        # Over an installed unit, a failed install says what it left.
        rc, out, err = e.run("install", "--home", home)
        check(rc == 0, f"{rc} {err}")
        rc, out, err = e.run("install", "--home", home, rc=1)
        check(rc == 1 and err.endswith("; the unit file is rewritten but not enabled\n") and
              len(err.splitlines()) == 1 and os.path.exists(e.unit), f"{rc} {err!r}")
        e.calls()
        # Without systemd (a container, WSL): one line that says so, with
        # what systemctl said, and no unit left behind when there was none.
        # The unit used to stay, and systemctl's own lines came before kith's.
        fresh = Env()
        with open(os.path.join(fresh.bin, "systemctl"), "w") as f:
            f.write('#!/bin/sh\nprintf "%s\\n" "$*" >> "$FAKE_SYSTEMCTL_LOG"\n'
                    'echo "System has not been booted with systemd as init system (PID 1). '
                    'Can\'t operate." >&2\necho "Failed to connect to bus: Host is down" >&2\n'
                    'exit 1\n')
        rc, out, err = fresh.run("install", "--home", home)
        hint = ("" if os.path.isdir("/run/systemd/system") else
                "; systemd is not running on this machine (no /run/systemd/system): run kith "
                "daemon another way")
        check(rc == 1 and out == "" and err ==
              "kith service: systemctl --user daemon-reload failed (exit 1: System has not been "
              f"booted with systemd as init system (PID 1). Can't operate.){hint}; nothing "
              "installed\n", f"{rc} {out!r} {err!r}")
        check(not os.path.exists(fresh.unit), "a failed install leaves no unit")
        check(fresh.calls() == ["--user daemon-reload", "--user daemon-reload"],
              f"reload, then reload after the unit went: {fresh.calls()}")
        # No place for the unit: a file where its folder would be.
        blocked = Env()
        with open(blocked.xdg, "w") as f:
            f.write("not a folder")
        rc, out, err = blocked.run("install", "--home", home)
        check(rc == 1 and "cannot create" in err and blocked.calls() == [], f"{rc} {err}")
        rc, out, err = e.run("uninstall", "--system")
        check(rc == 1 and "not installed" in err, f"uninstall --system {rc} {err}")
        rc, out, err = e.run("start", path=e.tmp)
        check(rc == 1 and "systemctl is not installed" in err, f"start without systemctl {rc} {err}")
        rc, out, err = e.run("install", "--home", home, unset=("HOME", "XDG_CONFIG_HOME"))
        check(rc == 1 and "no HOME" in err, f"no HOME {rc} {err}")
        # A path systemd cannot be given: a newline in the home's name.
        odd = os.path.join(e.tmp, "line\nbreak")
        os.makedirs(odd)
        rc, out, err = e.run("install", "--home", odd, "--print")
        check(rc == 1 and "control character" in err, f"newline in the home {rc} {err}")
        rc, out, err = e.run("--help")
        check(rc == 0 and out.startswith("usage: kith service install"), f"--help {rc}")
        for args, needle in ((("launch",), "unknown verb 'launch'"),
                             ((), "name one of install"),
                             (("start", "--home", home), "does not apply"),
                             (("logs", "--system"), "does not apply"),
                             (("logs", "--lines", "0"), "--lines takes 1 to"),
                             (("install", "--bogus"), "unknown option '--bogus'")):
            rc, out, err = e.run(*args)
            check(rc == 1 and needle in err and len(err.splitlines()) == 1, f"{args}: {rc} {err}")
        check(e.calls() == [], "no systemctl call for a refused command")

    def more_failures_are_one_line():
        # Each refusal below is exactly one line, and writes or runs nothing
        # it should not.
        def refused(want, *args, **kw):
            rc, out, err = e.run(*args, **kw)
            check(rc == 1 and err == want + "\n", f"{args}: {rc} {err!r}, wanted {want!r}")

        e.calls()
        before = open(e.unit).read()  # the unit an earlier case left
        odd = os.path.join(e.tmp, "tab\there")
        refused("kith service: the home's path (--home) holds a control character, which a "
                "systemd unit cannot hold; rename it (nothing installed)", "install", "--home", odd)
        check(open(e.unit).read() == before and e.calls() == [], "nothing written, nothing run")
        os.unlink(e.unit)
        refused("kith service: cannot use /proc/kith-no-home as the home: No such file or "
                "directory", "install", "--home", "/proc/kith-no-home")
        refused("kith service: the unit's path is too long; set a shorter XDG_CONFIG_HOME (or "
                "HOME)", "install", "--home", home, extra={"XDG_CONFIG_HOME": "/" + "x" * 4090})
        refused("kith service: no HOME to put a user unit under; set HOME, or use --system",
                "uninstall", unset=("HOME", "XDG_CONFIG_HOME"))
        with open("/dev/full", "w") as full:
            refused("kith service: cannot write the unit to stdout: No space left on device",
                    "install", "--home", home, "--print", stdout=full)
        # The temporary file, or the unit itself, cannot be written.
        os.makedirs(e.unit + ".tmp")
        refused(f"kith service: cannot write {e.unit}.tmp: Is a directory", "install",
                "--home", home)
        os.rmdir(e.unit + ".tmp")
        os.makedirs(os.path.join(e.unit, "in-the-way"))
        refused(f"kith service: cannot write {e.unit}: Is a directory", "install", "--home", home)
        check(not os.path.exists(e.unit + ".tmp"), "the temporary file is removed")
        check(e.calls() == [], "no systemctl call for a unit not written")
        # A unit systemctl disabled but kith cannot remove.
        os.rmdir(os.path.join(e.unit, "in-the-way"))
        refused(f"kith service: cannot remove {e.unit}: Is a directory", "uninstall")
        check(e.calls() == ["--user disable --now kith.service"], "disable ran, reload did not")
        os.rmdir(e.unit)
        # A systemctl that is there but cannot run, and one killed by a signal.
        bad = os.path.join(e.tmp, "bad-bin")
        os.makedirs(bad)
        with open(os.path.join(bad, "systemctl"), "w") as f:
            f.write("#!/bin/sh\nexit 0\n")  # mode 0644: not executable
        refused("kith service: cannot run systemctl: Permission denied; check the systemctl on "
                "PATH", "start", path=bad)
        killed = os.path.join(e.tmp, "killed-bin")
        os.makedirs(killed)
        with open(os.path.join(killed, "systemctl"), "w") as f:
            f.write("#!/bin/sh\nkill -9 $$\n")
        os.chmod(os.path.join(killed, "systemctl"), 0o755)
        rc, out, err = e.run("status", path=killed)
        check(rc == 128 + 9 and err == "", f"status killed by SIGKILL: {rc} {err!r}")
        hint = ("" if os.path.isdir("/run/systemd/system") else
                "; systemd is not running on this machine (no /run/systemd/system): run kith "
                "daemon another way")
        refused(f"kith service: systemctl --user daemon-reload failed (exit 137){hint}; nothing "
                "installed", "install", "--home", home, path=killed)
        check(not os.path.exists(e.unit), "a failed install leaves no unit")
        # With no XDG_CONFIG_HOME the unit goes under HOME/.config.
        fake_home = os.path.join(e.tmp, "fake-home")
        rc, out, err = e.run("install", "--home", home, unset=("XDG_CONFIG_HOME",),
                             extra={"HOME": fake_home})
        unit = os.path.join(fake_home, ".config", "systemd", "user", "kith.service")
        check(rc == 0 and out.startswith(f"wrote {unit}\n") and os.path.exists(unit),
              f"{rc} {out} {err}")
        check(e.calls() == ["--user daemon-reload", "--user enable kith.service"], "calls")
        rc, out, err = e.run("uninstall", unset=("XDG_CONFIG_HOME",), extra={"HOME": fake_home})
        check(rc == 0 and out == f"removed {unit}\n" and not os.path.exists(unit),
              f"{rc} {out} {err}")
        e.calls()
        # The unit the first case wrote, back for the cases after this one.
        rc, out, err = e.run("install", "--home", home, "--config", config)
        check(rc == 0, f"reinstall {rc} {err}")
        e.calls()

    def uninstall_removes():
        # systemctl refusing to disable it: nothing is removed.
        rc, out, err = e.run("uninstall", rc=5)
        check(rc == 1 and "disable --now kith.service failed (exit 5)" in err and
              os.path.exists(e.unit), f"refused disable {rc} {err}")
        e.calls()
        rc, out, err = e.run("uninstall")
        check(rc == 0 and not os.path.exists(e.unit), f"{rc} {out} {err}")
        check(e.calls() == ["--user disable --now kith.service", "--user daemon-reload"], "calls")
        rc, out, err = e.run("uninstall")
        check(rc == 1 and "not installed" in err, f"again: {rc} {err}")

    def logs_tail():
        logs = os.path.join(home, "logs", "daemon.log")
        check(os.path.exists(logs), "the daemon wrote its log")
        with open(logs, "a") as f:
            f.write("".join(f"line {i}\n" for i in range(300)))
        rc, out, err = e.run("logs", "--home", home, "--lines", "3")
        check(rc == 0 and out == "line 297\nline 298\nline 299\n", f"{rc} {out!r} {err}")
        rc, out, err = e.run("logs", "--home", home)
        check(rc == 0 and out.splitlines() == [f"line {i}" for i in range(200, 300)],
              f"default 100: {out.splitlines()[:2]}")
        rc, out, err = e.run("logs", "--home", os.path.join(e.tmp, "nobody"))
        check(rc == 1 and "has the daemon run?" in err, f"{rc} {err}")

    def logs_follow():
        # --follow prints lines as they come, and goes on in the new file
        # after a rotation (the daemon reopens its log on SIGHUP).
        logs = os.path.join(home, "logs", "daemon.log")
        env = dict(os.environ, XDG_CONFIG_HOME=e.xdg)
        p = subprocess.Popen([KITH, "service", "logs", "--home", home, "--lines", "1", "--follow"],
                             stdout=subprocess.PIPE, text=True, env=env)
        try:
            def next_line():
                import select
                ready, _, _ = select.select([p.stdout], [], [], TIMEOUT)
                check(ready, "no line in time")
                return p.stdout.readline()
            check(next_line() == "line 299\n", "the last line first")
            with open(logs, "a") as f:
                f.write("appended\n")
            check(next_line() == "appended\n", "an appended line")
            os.rename(logs, logs + ".1")
            with open(logs, "w") as f:
                f.write("after rotation\n")
            check(next_line() == "after rotation\n", "the new file's line")
            # Truncated in place (copytruncate): read again from its start.
            with open(logs, "w") as f:
                f.write("x\n")
            check(next_line() == "x\n", "the truncated file's line")
        finally:
            p.kill()
            p.wait()

    r.run(install_writes_and_enables)
    r.run(exec_start_runs_the_daemon)
    r.run(bad_config_installs_nothing)
    r.run(print_touches_nothing)
    r.run(environment_named)
    r.run(controls_pass_systemctl_through)
    r.run(failures_are_one_line)
    r.run(more_failures_are_one_line)
    r.run(uninstall_removes)
    r.run(logs_tail)
    r.run(logs_follow)
    return r.summary()


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        for d in MADE:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(rc)
