"""tests/integration/test_state_files.py — the daemon's durable state files
in a shape it cannot use, as an operator meets them after a restore or a
mistake, each seen from outside: the real daemon must refuse to start, at
once, saying which file and why — never start and then fail every write,
never hang.

- state.db read-only to the daemon's user (mode 0444; for root, whom modes
  do not stop, the immutable attribute): it used to start (SQLite opened the
  file read-only, and its tables were there), then leave every envelope
  un-acked for ever. After a kill -9 it must be refused; made writable again,
  the same home serves, and the envelope acked before the kill is still
  held.
- state.db from a newer kith, whose inbox table has a column this build
  cannot fill (NOT NULL, no default): it used to start and then fail every
  commit for ever. It must be refused, naming the table and column.
- identity.key a FIFO: `kith daemon` used to block in open(2) for ever,
  saying nothing. It must exit non-zero, naming the file."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from peer import KITH, Conn, Daemon, Peer, frame, inbox_rows  # noqa: E402


def set_unwritable(path, on):
    """chmod, and for root the immutable attribute (chattr). Returns False
    when the file stays writable (the file system cannot do it)."""
    if on:
        os.chmod(path, 0o444)
    if os.geteuid() == 0:
        r = subprocess.run(["chattr", "+i" if on else "-i", path], capture_output=True)
        if r.returncode != 0 and on:
            return False
    if not on:
        os.chmod(path, 0o600)
        return True
    try:
        os.close(os.open(path, os.O_WRONLY))
        return False
    except OSError:
        return True


def send_acked(node, alice, text):
    c = Conn(("127.0.0.1", node.port), timeout=30)
    try:
        m = alice.message(node.pk, text)
        c.send(frame(m))
        ack = c.read_frame()
        assert ack is not None, "connection closed instead of an ack"
        assert ack["kind"]["type"] == "ack" and ack["kind"]["in_reply_to"] == m["id"], ack
        return m
    finally:
        c.close()


def test_read_only_state_db():
    alice = Peer()
    node = Daemon("state-ro")
    node.trust("alice", alice.pk)
    node.start()
    try:
        send_acked(node, alice, "before the kill")
    finally:
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=30)
    db = os.path.join(node.home, "state.db")
    if not set_unwritable(db, True):
        set_unwritable(db, False)
        print("SKIP read-only state.db: this file system cannot make it unwritable")
        return
    try:
        try:
            node.start()
            started = True
        except RuntimeError as e:
            started = False
            words = str(e)
        if started:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=30)
        assert not started, "the daemon started on a state.db it cannot write"
        assert "read-only" in words and "state.db" in words, words
    finally:
        set_unwritable(db, False)
    # Writable again: the same home serves, and what was acked is held.
    node.start()
    try:
        assert len(inbox_rows(node)) == 1, inbox_rows(node)
        send_acked(node, alice, "after the repair")
    finally:
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=30)
    shutil.rmtree(node.home, ignore_errors=True)


def test_newer_schema_state_db():
    node = Daemon("state-newer")
    db = sqlite3.connect(os.path.join(node.home, "state.db"))
    db.execute("CREATE TABLE inbox (seq INTEGER PRIMARY KEY, session TEXT NOT NULL,"
               " envelope_id BLOB NOT NULL, sender BLOB NOT NULL, kind TEXT NOT NULL,"
               " received_ms INTEGER NOT NULL, frame BLOB NOT NULL, lane INTEGER NOT NULL)")
    db.commit()
    db.close()
    try:
        node.start()
        started = True
    except RuntimeError as e:
        started = False
        words = str(e)
    if started:
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=30)
    shutil.rmtree(node.home, ignore_errors=True)
    assert not started, "the daemon started on a state.db whose inbox it cannot write"
    assert "newer kith" in words and "lane" in words, words


def test_fifo_identity_key():
    home = tempfile.mkdtemp(prefix="kith-state-fifo-")
    try:
        os.makedirs(os.path.join(home, "identity"), mode=0o700)
        key = os.path.join(home, "identity", "identity.key")
        os.mkfifo(key, 0o600)
        try:
            p = subprocess.run([KITH, "daemon", "--home", home], capture_output=True, text=True,
                               timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("kith daemon still blocked on a FIFO identity.key after 60 s")
        assert p.returncode != 0, p
        words = p.stdout + p.stderr
        assert "identity.key" in words and "not a regular file" in words, words
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    test_read_only_state_db()
    test_newer_schema_state_db()
    test_fifo_identity_key()
    print("ok")
