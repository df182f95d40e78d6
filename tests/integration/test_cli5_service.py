"""tests/integration/test_cli5_service.py — `kith service` where its files or
its stdout fail (DESIGN §3): `logs` on a log path that is a folder, `logs`
and `logs --follow` writing to a full stdout, and `install` onto a full disk
(a tmpfs: needs root, else said and passed). Each is one line on stderr
naming the problem, exit 1, and nothing left behind.

systemctl is a stand-in on PATH that records its calls (as in
test_service.py); no systemd is needed."""

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Results, check, drop_tmpfs, small_tmpfs  # noqa: E402

TIMEOUT = 60
TMP = tempfile.mkdtemp(prefix="kith-cli5-service-")


def service(*args, env=None, stdout=subprocess.PIPE):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([KITH, "service", *args], stdout=stdout, stderr=subprocess.PIPE,
                       text=True, env=e, timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr


def home_with_log(name, text):
    home = os.path.join(TMP, name)
    os.makedirs(os.path.join(home, "logs"))
    with open(os.path.join(home, "logs", "daemon.log"), "w") as f:
        f.write(text)
    return home


def logs_of_a_folder():
    # fopen takes a folder: `logs` printed nothing and exited 0.
    home = os.path.join(TMP, "folder")
    log = os.path.join(home, "logs", "daemon.log")
    os.makedirs(log)
    rc, out, err = service("logs", "--home", home)
    check(rc == 1 and out == "" and err == f"kith service: cannot read {log}: Is a directory; "
          "the daemon's log is a file there: move what is in the way\n", f"{rc} {out!r} {err!r}")
    rc, out, err = service("logs", "--home", home, "--follow")
    check(rc == 1 and err.startswith(f"kith service: cannot read {log}: Is a directory"),
          f"--follow: {rc} {err!r}")


def logs_to_a_full_stdout():
    # The reason is named (it was "write error": the copy's own flush had
    # taken the errno); --follow stops at once instead of writing into the
    # full disk for ever.
    home = home_with_log("full", "".join(f"line {i}\n" for i in range(50)))
    want = ("kith service: cannot write stdout (No space left on device); check the file or "
            "pipe it goes to\n")
    with open("/dev/full", "w") as full:
        rc, _, err = service("logs", "--home", home, stdout=full)
        check(rc == 1 and err == want, f"{rc} {err!r}")
        try:
            rc, _, err = service("logs", "--home", home, "--follow", stdout=full)
        except subprocess.TimeoutExpired:
            raise AssertionError("logs --follow to a full stdout never ended")
        check(rc == 1 and err == want, f"--follow: {rc} {err!r}")


def install_onto_a_full_disk():
    # The unit's folder on a full disk: one line with the reason, no unit
    # and no temporary file left, systemctl never run.
    mnt = small_tmpfs("kith-cli5-xdg-", "64k")
    if mnt is None:
        return
    try:
        bin_dir = os.path.join(TMP, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        calls = os.path.join(TMP, "systemctl.calls")
        with open(os.path.join(bin_dir, "systemctl"), "w") as f:
            f.write(f'#!/bin/sh\necho "$*" >> {calls}\nexit 0\n')
        os.chmod(os.path.join(bin_dir, "systemctl"), 0o755)
        unit_dir = os.path.join(mnt, "systemd", "user")
        os.makedirs(unit_dir)
        fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (65536, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)
        env = {"XDG_CONFIG_HOME": mnt, "PATH": bin_dir + ":" + os.environ["PATH"]}
        rc, out, err = service("install", "--home", os.path.join(TMP, "home"), env=env)
        unit = os.path.join(unit_dir, "kith.service")
        check(rc == 1 and out == "" and
              err == f"kith service: cannot write {unit}: No space left on device\n",
              f"{rc} {out!r} {err!r}")
        check(os.listdir(unit_dir) == [], f"left behind: {os.listdir(unit_dir)}")
        check(not os.path.exists(calls), "systemctl ran")
    finally:
        drop_tmpfs(mnt)


def main():
    r = Results()
    r.run(logs_of_a_folder)
    r.run(logs_to_a_full_stdout)
    r.run(install_onto_a_full_disk)
    return r.summary()


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(rc)
