"""tests/integration/test_http4_drain_webhook.py — a webhook still waiting
for durability when the daemon is told to stop (WIRE §17.3b, §17.4), on the
real `kith daemon` with its home on a full disk and a plain HTTP client:
at the drain's last call the client is told what the inbox knows — 503
shutting_down with Retry-After and either "nothing was queued" (withdrawn:
a retry is safe) or how to learn the outcome of a commit still running —
not the server's generic "may or may not be done"; the daemon exits 0, and
a withdrawn webhook is not in state.db."""

import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, drop_tmpfs, fill_disk, free_port,  # noqa: E402
                  small_tmpfs)
from test_adversary_crash import http_call  # noqa: E402


def inbox_rows(home):
    db = sqlite3.connect(f"file:{os.path.join(home, 'state.db')}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM inbox WHERE kind = 'webhook'"
                          " AND length(frame) > 100000").fetchone()[0]
    finally:
        db.close()


def main():
    results = Results()

    def webhook_owed_at_a_stop_is_told_what_was_done():
        mnt = small_tmpfs("kith-http4-drain-")
        if not mnt:
            return
        logdir = tempfile.mkdtemp(prefix="kith-http4-drain-log-")
        node = None
        try:
            os.mkdir(os.path.join(mnt, "home"), 0o700)
            node = Daemon("http4-drain", home=os.path.join(mnt, "home"),
                          config={"gateway": {"port": free_port(), "require_pairing": False},
                                  "comms": {"uds_path": None}})
            node.log_path = os.path.join(logdir, "daemon.stderr")  # not on the full disk
            node.start()
            st, doc, _ = http_call(node, "POST", "/webhook", {"message": "before"})
            check(st == 202, f"a webhook with room: {st} {doc}")
            filler = os.path.join(mnt, "filler")
            fill_disk(filler)
            # Larger than the WAL has room for: its commit must grow it, and cannot.
            answer = {}

            def post():
                try:
                    answer["r"] = http_call(node, "POST", "/webhook", {"message": "x" * 300_000})
                except OSError as e:
                    answer["r"] = (0, repr(e), {})
            t = threading.Thread(target=post)
            t.start()
            deadline = time.monotonic() + 30
            while node.logs().count("ingress: queued webhook") < 2:
                check(time.monotonic() < deadline, "the webhook was never admitted")
                check(t.is_alive(), f"answered before the stop: {answer.get('r')}")
                time.sleep(0.02)
            node.proc.send_signal(signal.SIGTERM)
            t.join(60)
            check(not t.is_alive(), "no answer to the webhook owed at the stop")
            st, doc, headers = answer["r"]
            check(st == 503 and isinstance(doc, dict) and doc.get("code") == "shutting_down",
                  f"the webhook owed at the stop: {st} {doc}")
            check(headers.get("Retry-After") == "5", f"no Retry-After: {headers}")
            text = doc["error"]
            check("nothing was queued" in text or "X-Idempotency-Key" in text,
                  f"told the server's generic 503, not what the inbox knows: {text}")
            node.proc.wait(timeout=60)
            check(node.proc.returncode == 0, f"exit {node.proc.returncode}")
            os.unlink(filler)
            if "nothing was queued" in text:
                check(inbox_rows(node.home) == 0, "a webhook told 'nothing was queued' was stored")
        finally:
            if node:
                node.cleanup()
            drop_tmpfs(mnt)
            shutil.rmtree(logdir, ignore_errors=True)

    results.run(webhook_owed_at_a_stop_is_told_what_was_done)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
