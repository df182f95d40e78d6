"""tests/integration/test_webhook_idem.py — X-Idempotency-Key on the real
`kith daemon` (WIRE §17.4, §14.11, spec/webhook.pml), with Python's
http.client: the key is written in the inbox transaction of its entry, so a
client whose 202 was lost and whose daemon was killed gets the first answer
back (Idempotent-Replayed) and the inbox holds one entry; two concurrent
requests with one key give one admission; a refused request (bad body, full
inbox, a store that cannot commit in time) leaves its key unused."""

import http.client
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, free_port, metric, pair_token  # noqa: E402



def post(node, path, body, key=None, token=None, timeout=120):
    """One POST; returns (status, parsed body, replayed?)."""
    c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json"}
        if key is not None:
            h["X-Idempotency-Key"] = key
        if token:
            h["Authorization"] = f"Bearer {token}"
        c.request("POST", path, body=body.encode(), headers=h)
        r = c.getresponse()
        data = r.read()
        return (r.status, json.loads(data) if data else None,
                r.getheader("Idempotent-Replayed") == "true")
    finally:
        c.close()


def db_path(node):
    return os.path.join(node.home, "state.db")


def scalar(node, sql, *args):
    db = sqlite3.connect(db_path(node))
    try:
        return db.execute(sql, args).fetchone()[0]
    finally:
        db.close()


def insert_keys(node, scope, rows):
    """Writes (key, body, expires_ms) rows of a scope into state.db as an
    earlier run of the daemon would have (the daemon is stopped)."""
    db = sqlite3.connect(db_path(node))
    db.executemany(f"INSERT INTO inbox_idempotency(scope,key,status,body,expires_ms)"
                   f" VALUES('{scope}',?,202,?,?)", rows)
    db.commit()
    db.close()


def entries(node, needle):
    """Inbox entries whose frame contains needle."""
    return scalar(node, "SELECT COUNT(*) FROM inbox WHERE instr(frame, ?) > 0",
                  needle.encode())


def key_rows(node, key):
    return scalar(node, "SELECT COUNT(*) FROM inbox_idempotency WHERE key = ?", key)


class StoreLock:
    """Holds the write lock of state.db from outside, as a stuck disk would:
    the daemon's commits wait (busy timeout) and fail until it is let go."""

    def __init__(self, node):
        self.db = sqlite3.connect(db_path(node), isolation_level=None, timeout=30)

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc):
        self.db.execute("ROLLBACK")
        self.db.close()


def main():
    node = Daemon("hook-idem", config={"gateway": {"port": free_port()}})
    node.start()
    results = Results()
    token = pair_token(node)

    def lost_202_then_crash():
        # The answer is lost (the client hangs up at once), the entry and its
        # key commit together, the daemon is killed; the retry after the
        # restart gets the first answer and queues nothing.
        body = '{"message":"lost-202"}'
        raw = (f"POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/json\r\nX-Idempotency-Key: lost-1\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
        with socket.create_connection(("127.0.0.1", node.gw_port), timeout=20) as s:
            s.sendall(raw)
        deadline = time.time() + 60
        while time.time() < deadline and key_rows(node, "lost-1") == 0:
            time.sleep(0.05)
        check(key_rows(node, "lost-1") == 1 and entries(node, "lost-202") == 1,
              "the entry and its key were not both stored")
        node.restart(signal.SIGKILL)
        status, doc, replayed = post(node, "/webhook", body, "lost-1", token)
        check(status == 202 and replayed and doc["queued"] is True, (status, doc, replayed))
        stored = scalar(node, "SELECT body FROM inbox_idempotency WHERE key = 'lost-1'")
        check(json.loads(stored) == doc, (stored, doc))
        check(entries(node, "lost-202") == 1, "a retry after the restart queued again")
        # Only the inbox holds it: the token store's table is not involved.
        check(scalar(node, "SELECT COUNT(*) FROM gateway_idempotency WHERE key LIKE '%lost-1'")
              == 0, "the key went to the token store")

    def answered_then_restart():
        body = '{"kind":"generic_json","event_type":"idem.restart","payload":1}'
        status, first, replayed = post(node, "/sessions/s1/external-events", body, "r-1")
        check(status == 202 and not replayed, (status, first))
        node.restart()
        status, again, replayed = post(node, "/sessions/s1/external-events", body, "r-1")
        check(status == 202 and replayed and again == first, (status, again, first))
        check(entries(node, "idem.restart") == 1, "queued twice")

    def concurrent_one_admission():
        # Free-running: many requests with one key at once, a few rounds.
        for rnd in range(4):
            key, needle = f"conc-{rnd}", f"conc-body-{rnd}"
            out = []
            go = threading.Barrier(6)

            def one():
                go.wait()
                out.append(post(node, "/webhook", f'{{"message":"{needle}"}}', key, token))
            ts = [threading.Thread(target=one) for _ in range(6)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            fresh = [o for o in out if o[0] == 202 and not o[2]]
            check(len(fresh) == 1, out)
            check(all(o[0] == 409 or (o[0] == 202 and o[1] == fresh[0][1]) for o in out), out)
            check(entries(node, needle) == 1, (rnd, out))
        # Held: the store lock keeps the first admission's commit waiting,
        # so the other request surely arrives while the key is reserved.
        out = []
        done = threading.Event()

        def held():
            out.append(post(node, "/webhook", '{"message":"held-1"}', "held", token))
            done.set()
        with StoreLock(node):
            ts = [threading.Thread(target=held) for _ in range(2)]
            for t in ts:
                t.start()
            check(done.wait(60), "neither request was answered while the store was held")
        for t in ts:
            t.join()
        out.sort(key=lambda o: o[0])
        check([o[0] for o in out] == [202, 409] and not out[0][2], out)
        check(out[1][1]["code"] == "idempotency_key_in_use", out)
        status, doc, replayed = post(node, "/webhook", '{"message":"held-1"}', "held", token)
        check(status == 202 and replayed and doc == out[0][1], (status, doc, out))
        check(entries(node, "held-1") == 1, "two admissions for one key")

    def refused_leaves_no_key():
        status, doc, _ = post(node, "/webhook", '{"message":', "ref-1", token)
        check(status == 400 and doc["code"] == "invalid_json", (status, doc))
        status, doc, _ = post(node, "/webhook", '{"message":1}', "ref-1", token)
        check(status == 400 and doc["code"] == "invalid_body", (status, doc))
        check(key_rows(node, "ref-1") == 0, "a refused request left a key row")
        status, doc, replayed = post(node, "/webhook", '{"message":"ref-good"}', "ref-1", token)
        check(status == 202 and not replayed, (status, doc, replayed))
        check(entries(node, "ref-good") == 1 and key_rows(node, "ref-1") == 1, "not admitted")

    def store_failure_leaves_no_key():
        # The store cannot commit: after the durability bound the request is
        # withdrawn (entry and key) and answered 503; nothing is written
        # once the store works again, and the key is free.
        with StoreLock(node):
            status, doc, _ = post(node, "/webhook", '{"message":"stuck"}', "stuck-1", token)
        check(status == 503 and doc["code"] == "not_durable", (status, doc))
        status, doc, replayed = post(node, "/webhook", '{"message":"unstuck"}', "stuck-1", token)
        check(status == 202 and not replayed, (status, doc, replayed))
        check(entries(node, "stuck") == 1 and entries(node, "unstuck") == 1,
              "the withdrawn request was written after all")
        check(key_rows(node, "stuck-1") == 1, "one key row")

    def full_scope_lets_oldest_go():
        # A scope holding its share of keys (32,768), all answered 23 h
        # ago, still takes a new key: its oldest goes for it (once answered
        # at least 5 min ago; WIRE §17.4), the newest are still replayed,
        # and state.db keeps no more rows of the scope than memory holds.
        share = 32768
        soon = int(time.time() * 1000) + 3600 * 1000
        node.restart(while_stopped=lambda: insert_keys(
            node, "webhook", ((f"old-{i}", json.dumps({"queued": True, "id": f"old-{i}"}),
                              soon + i) for i in range(share + 10))))
        check(metric(node, "kith_idempotency_keys") >= share, "the keys were not loaded")
        status, doc, replayed = post(node, "/webhook", '{"message":"fresh-key"}', "fresh-1",
                                     token)
        check(status == 202 and not replayed, (status, doc, replayed))
        check(metric(node, "kith_idempotency_keys_evicted_total") >= 1, "no key was let go")
        newest = f"old-{share + 9}"
        status, doc, replayed = post(node, "/webhook", '{"message":"x"}', newest, token)
        check(status == 202 and replayed and doc["id"] == newest, (status, doc, replayed))
        check(entries(node, "fresh-key") == 1, "the new key's request was not queued")
        deadline = time.time() + 60
        rows = lambda: scalar(node, "SELECT COUNT(*) FROM inbox_idempotency"  # noqa: E731
                                    " WHERE scope = 'webhook'")
        while time.time() < deadline and rows() > share:
            time.sleep(0.2)
        check(rows() == share, f"{rows()} webhook key rows kept, not {share}")
        check(key_rows(node, "old-0") == 0 and key_rows(node, newest) == 1,
              "the rows kept are not the newest")
        # Keys all answered a moment ago: none may go, so a new key is
        # refused (503, Retry-After), and nothing is queued for it.
        later = int(time.time() * 1000) + 24 * 3600 * 1000
        node.restart(while_stopped=lambda: insert_keys(
            node, "webhook", ((f"now-{i}", '{"queued":true}', later + i) for i in range(share))))
        c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=60)
        c.request("POST", "/webhook", body=b'{"message":"too-soon"}',
                  headers={"Content-Type": "application/json", "X-Idempotency-Key": "soon-1",
                           "Authorization": f"Bearer {token}"})
        r = c.getresponse()
        doc = json.loads(r.read())
        c.close()
        check(r.status == 503 and doc["code"] == "unavailable"
              and r.getheader("Retry-After") == "1", (r.status, doc))
        check(entries(node, "too-soon") == 0 and key_rows(node, "soon-1") == 0,
              "a refused key was queued or kept")

    for fn in (lost_202_then_crash, answered_then_restart, concurrent_one_admission,
               refused_leaves_no_key, store_failure_leaves_no_key, full_scope_lets_oldest_go):
        results.run(fn)
    try:
        results.stopped(node)
    finally:
        node.cleanup()

    def full_inbox_leaves_no_key():
        # A full inbox refuses (503 inbox_full) and keeps no key: the same
        # key is refused the same way (not 409, not replayed), and admitted
        # fresh once there is room.
        small = Daemon("hook-full", config={"gateway": {"port": free_port()},
                                            "comms": {"inbox_capacity": 1}})
        try:
            small.start()
            tok = pair_token(small)
            status, _, _ = post(small, "/webhook", '{"message":"fill"}', None, tok)
            check(status == 202, status)
            for _ in range(2):
                status, doc, replayed = post(small, "/webhook", '{"message":"full-1"}', "full",
                                             tok)
                check(status == 503 and doc["code"] == "inbox_full" and not replayed,
                      (status, doc))
            check(key_rows(small, "full") == 0, "a refused request left a key row")
            small.stop()
            small.config["comms"]["inbox_capacity"] = 16
            with open(os.path.join(small.home, "config.json"), "w") as f:
                json.dump(small.config, f)
            small.start()
            small.wait_log("daemon: ready", count=2)
            status, doc, replayed = post(small, "/webhook", '{"message":"full-1"}', "full", tok)
            check(status == 202 and not replayed, (status, doc, replayed))
            check(entries(small, "full-1") == 1, "not admitted once there was room")
        finally:
            small.cleanup()

    results.run(full_inbox_leaves_no_key)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
