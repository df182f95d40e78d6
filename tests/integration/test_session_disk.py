"""tests/integration/test_session_disk.py — a session's history on a disk
that fails for a moment (WIRE §19.5, §24.9, §24.10), judged from outside
on the real `kith daemon`: its home on a small tmpfs (root only: skipped
otherwise), filled while a turn over HTTP (POST /api/sessions/{id}/messages)
is answered `done`. While the disk is full the session's own reads answer
`503 unavailable` (its messages wait), and once there is room both the
user's message and the reply are in the history, once each and in order,
also after a kill -9 and a restart; the log says once that state.db
refuses writes and once that it takes them again."""

import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, drop_tmpfs, fill_disk, free_port,  # noqa: E402
                  small_tmpfs)
from test_adversary_crash import http_call, kill9, operator_token, wait_until  # noqa: E402


def history(node, token):
    st, doc, _ = http_call(node, "GET", "/api/sessions/kept", token=token)
    return st, doc


def turn_on_full_disk():
    mnt = small_tmpfs("kith-session-disk-")
    if not mnt:
        return
    logdir = tempfile.mkdtemp(prefix="kith-session-disk-log-")
    node = None
    try:
        os.mkdir(os.path.join(mnt, "home"), 0o700)
        node = Daemon("session-disk", home=os.path.join(mnt, "home"),
                      config={"gateway": {"port": free_port()}, "comms": {"uds_path": None},
                              "workers": {"agent_threads": 1}})
        node.log_path = os.path.join(logdir, "daemon.stderr")  # not on the full disk
        node.start()
        token = operator_token(node)
        st, doc, _ = http_call(node, "POST", "/api/sessions/kept/messages", {"content": "hi"},
                               token)
        check(st == 200 and doc.get("type") == "done", f"turn: {st} {doc}")
        wait_until(lambda: history(node, token)[1].get("message_count") == 2,
                   "the first turn's reply stored")
        filler = os.path.join(mnt, "filler")
        fill_disk(filler)
        big = "y" * 200_000  # more than the WAL has room for: its commit must grow it
        content = f"on a full disk {big}"
        st, doc, _ = http_call(node, "POST", "/api/sessions/kept/messages",
                               {"content": content}, token)
        check(st == 200 and doc.get("type") == "done", f"a turn on a full disk: {st} {doc}")
        reply = doc.get("full_response")
        st, doc = history(node, token)
        check(st == 503 and doc.get("code") == "unavailable",
              f"the session's history while its messages wait: {st} {doc}")
        os.unlink(filler)
        wait_until(lambda: history(node, token)[0] == 200, "the history once there is room")

        def judged(what):
            st, doc = history(node, token)
            check(st == 200, f"{what}: {st} {doc}")
            msgs = doc["messages"]
            check(doc["message_count"] == 4 and len(msgs) == 4,
                  f"{what}: {doc['message_count']} messages")
            check([m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"],
                  f"{what}: roles {[m['role'] for m in msgs]}")
            check(msgs[2]["content"] == content, f"{what}: the user's message on a full disk")
            check(msgs[3]["content"] == reply, f"{what}: the reply on a full disk")
        judged("after the disk had room")
        logs = open(node.log_path, "rb").read().decode(errors="replace")
        check(logs.count("state.db refuses writes") == 1,
              f"the failure logged {logs.count('state.db refuses writes')} times")
        check(logs.count("state.db takes writes again") == 1, "the recovery not logged once")
        kill9(node)
        node.start()
        judged("after a kill -9 and a restart")
    finally:
        if node:
            node.stop(signal.SIGKILL)
        drop_tmpfs(mnt)
        subprocess.run(["rm", "-rf", logdir])


def main():
    results = Results()
    results.run(turn_on_full_disk)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
