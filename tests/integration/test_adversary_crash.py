"""tests/integration/test_adversary_crash.py — crash consistency judged from
outside (DESIGN §4, §8; WIRE §6.1, §14, §17.2, §17.4, §22.4, §28): the
real `kith daemon` is killed with SIGKILL at chosen points under load —
mid-batch of signed envelopes (peer.py: cbor2 + PyNaCl), while webhooks
with idempotency keys stream in, while tokens are minted and revoked,
while pairing codes are guessed, during trust edits over /api/peers,
right after a session delete, during a drain (SIGTERM, then SIGKILL) —
restarted on the same home, and every promise is checked against what
the clients were told before the kill: nothing acked is lost and none of
it is admitted again; a 202 is never lost and its key answers the same;
a 503 not_durable queued nothing; mints, revocations, lockouts, trust
edits, deletes and OpenClaw deviceTokens answered before the kill hold
after it. Also: a state.db or WAL damaged between runs (refused with a
message naming the file and what to do, or recovered — never a wrong
answer), a migration cut half-way, the lockout table's bound, two daemons
on one home (node.lock), and a full disk (root only: a small tmpfs). Kill
points are counts of answers the clients saw, never times; an answer the
kill cut off is judged as either outcome."""

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from peer import (KITH, Conn, Daemon, Peer, Results, check, drop_tmpfs,  # noqa: E402
                  fill_disk, frame, free_port, pubkey_text, small_tmpfs)

TIMEOUT = 60  # a bound on any one wait, never a speed assertion


# ------------------------------------------------------------------ helpers

def kill9(node):
    """SIGKILL and reap: nothing of the process runs afterwards."""
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    if node.log:
        node.log.close()
        node.log = None


def http_call(node, method, path, body=None, token=None, headers=None, source=None):
    """(status, parsed JSON or raw body, response headers); raises OSError
    when the connection broke before an answer (the outcome is unknown)."""
    c = http.client.HTTPConnection("127.0.0.1", node.gw_port, timeout=TIMEOUT,
                                   source_address=(source, 0) if source else None)
    try:
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        if token:
            h["Authorization"] = f"Bearer {token}"
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = data
        return r.status, doc, dict(r.getheaders())
    except http.client.HTTPException as e:
        raise OSError(f"broken answer: {e!r}") from e
    finally:
        c.close()


def db_rows(node, sql, *args):
    db = sqlite3.connect(f"file:{os.path.join(node.home, 'state.db')}?mode=ro", uri=True,
                         timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def inbox_ids(node):
    return {bytes(r[0]) for r in db_rows(node, "SELECT envelope_id FROM inbox")}


def seen_ids(node):
    return {bytes(r[0]) for r in db_rows(node, "SELECT id FROM seen")}


def entries_with(node, needle):
    return db_rows(node, "SELECT COUNT(*) FROM inbox WHERE instr(frame, ?) > 0",
                   needle.encode())[0][0]


def operator_token(node):
    """An operator token minted over the loopback admin door."""
    st, doc, _ = http_call(node, "POST", "/admin/tokens", {"scope": "operator", "name": "op"})
    check(st == 201, f"admin mint: {st} {doc}")
    return doc["token"]


def wait_until(pred, what, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"never: {what}")


def refused_without_ack(node, data):
    """Sends one frame on a fresh connection: True when the daemon closed
    without an ack (a replay is refused so), False when it acked."""
    c = Conn(("127.0.0.1", node.port), timeout=TIMEOUT)
    try:
        c.send(data)
        got = c.read_frame()
    finally:
        c.close()
    if got is None:
        return True
    check(got["kind"]["type"] == "ack", f"neither an ack nor a close: {got}")
    return False


# ------------------------------------------------------------------ envelopes

class Sender(threading.Thread):
    """One comms connection sending envelopes in pipelined batches and
    recording which ids were acked; ends when the connection breaks."""

    def __init__(self, node, peer, tag, batches, batch=20):
        super().__init__(daemon=True)
        self.node, self.peer, self.tag = node, peer, tag
        self.batches, self.batch = batches, batch
        self.sent = {}      # id -> frame bytes, in order
        self.acked = set()
        self.lock = threading.Lock()

    def run(self):
        try:
            c = Conn(("127.0.0.1", self.node.port), timeout=TIMEOUT)
        except OSError:
            return
        try:
            for b in range(self.batches):
                frames = []
                for i in range(self.batch):
                    env = self.peer.message(self.node.pk, f"{self.tag} {b}.{i}")
                    data = frame(env)
                    with self.lock:
                        self.sent[env["id"]] = data
                    frames.append(data)
                c.send(b"".join(frames))
                for _ in range(self.batch):
                    ack = c.read_frame()
                    if ack is None:
                        return
                    check(ack["kind"]["type"] == "ack", ack)
                    with self.lock:
                        self.acked.add(ack["kind"]["in_reply_to"])
        except (OSError, AssertionError):
            return
        finally:
            c.close()


def envelopes_killed_mid_batch(node, peer, kill_after):
    """Kills the daemon once kill_after acks were seen, with batches still
    in flight; after the restart every acked id is in the inbox and is
    refused as a replay, and what was sent but not acked is either wholly
    admitted (inbox and replay window: a resend is refused) or not at all
    (a resend is admitted)."""
    senders = [Sender(node, peer, f"mid{kill_after}-{k}", batches=200) for k in range(3)]
    for s in senders:
        s.start()
    wait_until(lambda: sum(len(s.acked) for s in senders) >= kill_after,
               f"{kill_after} acks before the kill")
    kill9(node)
    for s in senders:
        s.join(TIMEOUT)
    node.start()
    acked = set().union(*(s.acked for s in senders))
    sent = {}
    for s in senders:
        sent.update(s.sent)
    inbox, seen = inbox_ids(node), seen_ids(node)
    lost = acked - inbox
    check(not lost, f"{len(lost)} of {len(acked)} acked envelopes missing after kill -9")
    unseen = acked - seen
    check(not unseen, f"{len(unseen)} acked ids not in the replay window after kill -9")
    in_doubt = [i for i in sent if i not in acked]
    print(f"  killed after {len(acked)} acks, {len(in_doubt)} sent unacked, "
          f"{len(set(in_doubt) & inbox)} of those written")
    half = [i for i in in_doubt if (i in inbox) != (i in seen)]
    check(not half, f"{len(half)} unacked envelopes half written (inbox xor seen)")
    # Resends: every acked id (a sample: the last acked of each connection,
    # which were the nearest the kill) is refused; the unacked ones are
    # refused exactly when they were written.
    sample = []
    for s in senders:
        order = [i for i in s.sent if i in s.acked]
        sample += order[-5:]
    for i in sample:
        check(refused_without_ack(node, sent[i]), "an acked envelope was admitted again")
    for i in in_doubt[:30]:
        was_written = i in inbox
        refused = refused_without_ack(node, sent[i])
        check(refused == was_written,
              f"an unacked envelope {'in' if was_written else 'not in'} the inbox was "
              f"{'refused' if refused else 'admitted'} on its resend")
    # And the daemon serves fresh envelopes.
    check(not refused_without_ack(node, frame(peer.message(node.pk, "fresh"))),
          "a fresh envelope was refused after the restart")


# ------------------------------------------------------------------ webhooks

def hook_request(key, events=False):
    """(path, body) of a webhook, or of an external event (its own key
    scope, no bearer needed), whose stored frame holds "hook <key>"."""
    if events:
        return "/sessions/s1/external-events", json.dumps(
            {"kind": "generic_json", "event_type": "crash", "payload": f"hook {key}"})
    return "/webhook", json.dumps({"message": f"hook {key}"})


class Hooks(threading.Thread):
    """POSTs webhooks (or external events) with fresh idempotency keys, one
    after another, and records each key's outcome: (status, doc) or None
    when the connection broke before an answer."""

    def __init__(self, node, token, tag, n=10_000, events=False):
        super().__init__(daemon=True)
        self.node, self.token, self.tag, self.n = node, token, tag, n
        self.events = events
        self.out = {}  # key -> (status, doc, body) or (None, None, body)

    def run(self):
        for i in range(self.n):
            key = f"{self.tag}-{i}-{uuid.uuid4().hex[:8]}"
            path, body = hook_request(key, self.events)
            try:
                st, doc, _ = http_call(self.node, "POST", path, body, self.token,
                                       {"Content-Type": "application/json",
                                        "X-Idempotency-Key": key})
                self.out[key] = (st, doc, body)
            except OSError:
                self.out[key] = (None, None, body)
                return


def webhooks_killed_mid_stream(node, token, kill_after, events=False):
    """A 202 is never lost and its key answers the same after kill -9; a
    request whose answer never came is queued at most once on its retry."""
    hooks = [Hooks(node, token, f"h{kill_after}{'e' if events else ''}-{k}", events=events)
             for k in range(3)]
    for h in hooks:
        h.start()
    wait_until(lambda: sum(1 for h in hooks for v in list(h.out.values()) if v[0] == 202)
               >= kill_after, f"{kill_after} webhooks answered 202")
    kill9(node)
    for h in hooks:
        h.join(TIMEOUT)
    node.start()
    outcomes = [v[0] for h in hooks for v in h.out.values()]
    print(f"  killed with {outcomes.count(202)} answered 202, "
          f"{outcomes.count(None)} unanswered, {len(outcomes)} sent")
    for h in hooks:
        for key, (st, doc, body) in h.out.items():
            needle = f"hook {key}"
            n = entries_with(node, needle)
            if st == 202:
                check(n == 1, f"a 202 webhook ({key}) has {n} inbox entries after kill -9")
            elif st == 503 and doc.get("code") == "not_durable":
                check(n == 0, f"a 503 not_durable webhook ({key}) was queued after all")
            elif st is not None:
                check(st == 503, f"webhook answered {st} {doc}")
            st2, doc2, hdr = http_call(node, "POST", hook_request(key, events)[0], body, token,
                                       {"Content-Type": "application/json",
                                        "X-Idempotency-Key": key})
            check(st2 == 202, f"the retry of {key} answered {st2} {doc2}")
            if st == 202:
                check(hdr.get("Idempotent-Replayed") == "true" and doc2 == doc,
                      f"the key of a 202 ({key}) answered differently: {doc2} vs {doc}")
            if n == 1:
                check(hdr.get("Idempotent-Replayed") == "true",
                      f"a queued request's key ({key}) was not remembered")
            check(entries_with(node, needle) == 1,
                  f"{key}: {entries_with(node, needle)} entries after its retry")


# ------------------------------------------------------------------ tokens

class TokenChurn(threading.Thread):
    """Mints tokens and revokes every other one over the loopback admin
    door, recording what was answered."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.node = node
        self.minted = {}   # id -> token, answered 201
        self.revoked = set()  # ids answered 200
        self.asked = set()    # ids whose revocation was asked
        self.answers = 0

    def run(self):
        for i in range(10_000):
            try:
                st, doc, _ = http_call(self.node, "POST", "/admin/tokens",
                                       {"scope": "operator", "name": f"churn{i}"})
                if st == 201:
                    self.minted[doc["id"]] = doc["token"]
                self.answers += 1
                if st == 201 and i % 2:
                    self.asked.add(doc["id"])  # its outcome is unknown until answered
                    st, doc2, _ = http_call(self.node, "DELETE", f"/admin/tokens/{doc['id']}")
                    if st == 200:
                        self.revoked.add(doc["id"])
                    self.answers += 1
            except OSError:
                return


def tokens_killed_mid_churn(node, kill_after):
    churn = TokenChurn(node)
    churn.start()
    wait_until(lambda: churn.answers >= kill_after, f"{kill_after} token answers")
    kill9(node)
    churn.join(TIMEOUT)
    node.start()
    for tid, tok in churn.minted.items():
        st, doc, _ = http_call(node, "GET", "/api/tokens", token=tok)
        if tid in churn.revoked:
            check(st == 401, f"token {tid}, revoked (200) before the kill, answered {st}")
        elif tid in churn.asked:
            check(st in (200, 401), f"token {tid}, its revocation unanswered, answered {st}")
        else:
            check(st == 200, f"token {tid}, minted (201) before the kill, answered {st} {doc}")
    # Clean up so later cases stay within the 1024 kept.
    for tid in churn.minted:
        if tid not in churn.revoked:
            http_call(node, "DELETE", f"/admin/tokens/{tid}")


# ------------------------------------------------------------------ pairing

def new_code(node):
    st, doc, _ = http_call(node, "POST", "/admin/paircode", b"")
    check(st == 200, f"paircode {st} {doc}")
    return doc["code"]


def pair_try(node, code, source):
    st, doc, hdr = http_call(node, "POST", "/pair", b"", headers={"X-Pairing-Code": code},
                             source=source)
    return st, doc, hdr


def wrong(code):
    return f"{(int(code) + 1) % 1_000_000:06d}"


def pairing_counts_survive_kill(node):
    """Four wrong codes, kill -9: the fifth after the restart locks (the
    count was durable before each 401); a lock taken before the kill holds
    after it, against the right code too."""
    code = new_code(node)
    for _ in range(4):
        st, doc, _ = pair_try(node, wrong(code), "127.0.0.2")
        check(st == 401, f"a wrong code answered {st} {doc}")
    for _ in range(5):
        st, doc, _ = pair_try(node, wrong(code), "127.0.0.3")
    check(st == 429, f"the 5th wrong code answered {st} {doc}")
    kill9(node)
    node.start()
    code = new_code(node)
    st, doc, _ = pair_try(node, wrong(code), "127.0.0.2")
    check(st == 429, f"the 5th wrong code after kill -9 answered {st} {doc}: the count was lost")
    st, doc, hdr = pair_try(node, code, "127.0.0.3")
    check(st == 429 and "Retry-After" in hdr,
          f"a lock taken before kill -9 let the right code in: {st} {doc}")


def pairing_killed_mid_guessing(node):
    """Guessers on several addresses; kill -9 once some are locked: every
    address answered 429 before the kill is still locked after it."""
    code = new_code(node)
    locked, lock = set(), threading.Lock()
    stop = threading.Event()

    def guess(src):
        for _ in range(5):
            if stop.is_set():
                return
            try:
                st, _, _ = pair_try(node, wrong(code), src)
            except OSError:
                return
            if st == 429:
                with lock:
                    locked.add(src)
                return

    srcs = [f"127.0.1.{i}" for i in range(1, 9)]
    ts = [threading.Thread(target=guess, args=(s,), daemon=True) for s in srcs]
    for t in ts:
        t.start()
    wait_until(lambda: len(locked) >= 3, "three addresses locked")
    kill9(node)
    stop.set()
    for t in ts:
        t.join(TIMEOUT)
    node.start()
    code = new_code(node)
    for src in sorted(locked):
        st, doc, _ = pair_try(node, code, src)
        check(st == 429, f"{src}, locked before kill -9, answered {st} {doc}")


def lockout_rows_bounded(node):
    """state.db keeps at most 4096 client addresses of /pair (WIRE §17.2,
    §24.10), as memory does: with every slot taken by a lock that ended, a
    new address takes the stalest slot and its row. The displaced row used
    to stay, so each new address guessing a code grew the table for good.
    Live locks are never the ones displaced."""
    kill9(node)
    db = sqlite3.connect(os.path.join(node.home, "state.db"))
    have = db.execute("SELECT COUNT(*) FROM gateway_pair_lockouts").fetchone()[0]
    db.executemany("INSERT INTO gateway_pair_lockouts(client, failures, until_ms) VALUES(?, 0, ?)",
                   ((f"10.9.{i // 256}.{i % 256}", 1000 + i) for i in range(4096 - have)))
    db.commit()
    db.close()
    node.start()
    code = new_code(node)
    for i in range(3):
        st, doc, _ = pair_try(node, wrong(code), f"127.0.3.{i + 1}")
        check(st == 401, f"a wrong code answered {st} {doc}")
    rows = db_rows(node, "SELECT COUNT(*) FROM gateway_pair_lockouts")[0][0]
    check(rows == 4096, f"gateway_pair_lockouts holds {rows} rows, more than 4096 addresses")
    st, doc, _ = pair_try(node, code, "127.0.0.3")
    check(st == 429, f"a live lock was displaced: {st} {doc}")


# ------------------------------------------------------------------ trust edits

def trust_edits_killed(node, token):
    """Peers added (201) and removed (200) over /api/peers while being
    killed: after the restart the answered edits are in force — an added
    peer's envelope is acked, a removed one's refused."""
    added, removed, asked = {}, set(), set()
    answers = [0]

    def edits():
        for i in range(10_000):
            p = Peer()
            try:
                st, doc, _ = http_call(node, "POST", "/api/peers",
                                       {"name": f"edit{i}", "pubkey": pubkey_text(p.pk),
                                        "addr": "tcp://127.0.0.1:9"}, token)
                answers[0] += 1
                if st == 201:
                    added[f"edit{i}"] = p
                if st == 201 and i % 2:
                    asked.add(f"edit{i}")  # unknown until answered
                    st, _, _ = http_call(node, "DELETE", f"/api/peers/edit{i}", token=token)
                    answers[0] += 1
                    if st == 200:
                        removed.add(f"edit{i}")
            except OSError:
                return

    t = threading.Thread(target=edits, daemon=True)
    t.start()
    wait_until(lambda: answers[0] >= 12, "12 trust edits answered")
    kill9(node)
    t.join(TIMEOUT)
    node.start()
    st, doc, _ = http_call(node, "GET", "/api/peers", token=token)
    names = {p["name"] for p in doc["peers"]}
    for name, p in added.items():
        if name in removed:
            check(name not in names, f"{name}, removed (200) before kill -9, is back")
            check(refused_without_ack(node, frame(p.message(node.pk, "removed?"))),
                  f"{name}, removed before kill -9, was acked")
        elif name in asked:
            # Its removal was not answered: either way, as long as the
            # list and admission agree.
            check(refused_without_ack(node, frame(p.message(node.pk, "either?")))
                  == (name not in names), f"{name}: the list and admission disagree")
        else:
            check(name in names, f"{name}, added (201) before kill -9, is gone")
            check(not refused_without_ack(node, frame(p.message(node.pk, "added?"))),
                  f"{name}, added before kill -9, was refused")


# ------------------------------------------------------------------ sessions

def session_delete_killed(node, token):
    """A session deleted (200) just before kill -9 stays deleted; one
    whose delete was not answered is wholly there or wholly gone."""
    for sid in ("gone", "kept"):
        st, doc, _ = http_call(node, "POST", f"/api/sessions/{sid}/messages",
                               {"content": f"hello {sid}"}, token)
        check(st == 200 and doc.get("type") == "done", f"turn on {sid}: {st} {doc}")
    st, doc, _ = http_call(node, "DELETE", "/api/sessions/gone", token=token)
    check(st == 200 and doc.get("deleted"), f"delete: {st} {doc}")
    kill9(node)
    node.start()
    st, doc, _ = http_call(node, "GET", "/api/sessions/gone", token=token)
    check(st == 404, f"a session deleted (200) before kill -9 answered {st} {doc}")
    st, doc, _ = http_call(node, "GET", "/api/sessions/kept", token=token)
    check(st == 200 and doc["message_count"] == 2, f"the kept session: {st} {doc}")
    rows = db_rows(node, "SELECT COUNT(*) FROM messages m WHERE NOT EXISTS"
                         " (SELECT 1 FROM sessions s WHERE s.id = m.session_id)")
    check(rows[0][0] == 0, "messages of a deleted session are left")


# ------------------------------------------------------------------ OpenClaw devices

def devices_killed(node):
    """A deviceToken handed out in hello-ok (its row durable first) opens
    the device after kill -9; one whose bearer token was revoked (200)
    before the kill stays refused after it (WIRE §25.8, §28). The device
    client is OpenClaw's reference client (openclaw_client.mjs)."""
    import test_openclaw as oc
    os.environ["KITH_OPENCLAW_TICK_MS"] = str(oc.TICK_MS)
    kept = os.path.join(node.home, "device-kept.json")
    out = oc.reference(node, operator_token(node), "device_first", kept)
    dt = out["hello"]["auth"].get("deviceToken")
    check(dt and out["stored"] == dt, f"no deviceToken: {out}")
    st, minted, _ = http_call(node, "POST", "/admin/tokens", {"scope": "operator", "name": "dev"})
    check(st == 201, f"mint {st} {minted}")
    dropped = os.path.join(node.home, "device-dropped.json")
    out = oc.reference(node, minted["token"], "device_first", dropped)
    check(out["hello"]["auth"].get("deviceToken"), f"no deviceToken: {out}")
    st, doc, _ = http_call(node, "DELETE", f"/admin/tokens/{minted['id']}")
    check(st == 200, f"revoke {st} {doc}")
    kill9(node)
    node.start()
    out = oc.reference(node, "-", "device_again", kept)
    check(out.get("hello") and out["hello"]["auth"].get("deviceToken") == dt,
          f"a deviceToken handed out before kill -9 was refused after it: {out}")
    out = oc.reference(node, "-", "device_again", dropped)
    check(out.get("details") and out["details"]["code"] == "AUTH_DEVICE_TOKEN_MISMATCH",
          f"a deviceToken whose bearer was revoked before kill -9 opened after it: {out}")


# ------------------------------------------------------------------ the drain

def drain_then_kill(node, peer, token, graceful=False):
    """SIGTERM under load, and SIGKILL once the drain has begun (or a drain
    to its end): what was answered before holds, and an answer that says
    nothing was queued is true."""
    senders = [Sender(node, peer, f"drain-{k}", batches=200) for k in range(2)]
    hooks = [Hooks(node, token, f"drain-{k}") for k in range(2)]
    for x in senders + hooks:
        x.start()
    wait_until(lambda: sum(len(s.acked) for s in senders) >= 40 and
               sum(1 for h in hooks for v in list(h.out.values()) if v[0] == 202) >= 4,
               "load before the drain")
    since = os.path.getsize(node.log_path)
    node.proc.send_signal(signal.SIGTERM)
    if graceful:
        check(node.stop() == 0, f"the drain did not end in exit 0:\n{node.logs(since)[-2000:]}")
    else:
        wait_until(lambda: ": draining" in node.logs(since), "the drain begun")
        kill9(node)
    for x in senders + hooks:
        x.join(TIMEOUT)
    node.start()
    inbox = inbox_ids(node)
    for s in senders:
        lost = s.acked - inbox
        check(not lost, f"{len(lost)} acked envelopes lost across a drain cut by kill -9")
    for h in hooks:
        for key, (st, doc, body) in h.out.items():
            n = entries_with(node, f"hook {key}")
            if st == 202:
                check(n == 1, f"a 202 webhook ({key}) has {n} entries after the drain and kill")
            elif st == 503 and doc.get("code") == "not_durable":
                check(n == 0, f"{key}: answered {doc} but queued")
            elif st is not None:
                print(f"  {key}: {st} {doc} ({n} queued)")


# ------------------------------------------------------------------ damaged files

def damaged_state_db():
    """A state.db cut short, or overwritten with garbage, between runs:
    the daemon refuses to start with a clear message naming state.db, or
    starts and answers correctly — never serves from a broken store."""
    peer = Peer()
    for how in ("truncate_db", "garbage_header", "garbage_wal", "truncate_wal"):
        node = Daemon(f"crash-damaged-{how}", config={"comms": {"uds_path": None}})
        try:
            node.trust("alice", peer.pk)
            node.start()
            envs = [peer.message(node.pk, f"{how} {i}") for i in range(50)]
            c = Conn(("127.0.0.1", node.port), timeout=TIMEOUT)
            c.send(b"".join(frame(e) for e in envs))
            for e in envs:
                ack = c.read_frame()
                check(ack is not None and ack["kind"]["type"] == "ack", ack)
            c.close()
            kill9(node)
            db = os.path.join(node.home, "state.db")
            wal = db + "-wal"
            if how == "truncate_db":
                # Checkpoint first so the main file carries the data.
                x = sqlite3.connect(db)
                x.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                x.close()
                size = os.path.getsize(db)
                with open(db, "r+b") as f:
                    f.truncate(size // 2)
            elif how == "garbage_header":
                with open(db, "r+b") as f:
                    f.write(b"\xff" * 100)
            elif how == "garbage_wal":
                check(os.path.exists(wal) and os.path.getsize(wal) > 4096, "no WAL to damage")
                with open(wal, "r+b") as f:
                    f.seek(os.path.getsize(wal) // 2)
                    f.write(os.urandom(4096))
            elif how == "truncate_wal":
                check(os.path.exists(wal) and os.path.getsize(wal) > 4096, "no WAL to damage")
                with open(wal, "r+b") as f:
                    f.truncate(os.path.getsize(wal) // 2)
            since = os.path.getsize(node.log_path)
            try:
                node.start()
            except RuntimeError:
                words = node.logs(since)
                check("state.db" in words and "damaged" in words,
                      f"{how}: refused without naming state.db and what to do: {words}")
                print(f"  {how}: refused: {words.strip().splitlines()[-1][:200]}")
                continue
            # Started: whatever it kept must be consistent. Ids in the
            # inbox are replays; a resend of an id not kept is admitted.
            inbox = inbox_ids(node)
            print(f"  {how}: started, {len(inbox & {e['id'] for e in envs})} of 50 kept")
            for e in envs[:10] + envs[-10:]:
                refused = refused_without_ack(node, frame(e))
                if e["id"] in inbox:
                    check(refused, f"{how}: an envelope still in the inbox was admitted again")
            check(not refused_without_ack(node, frame(peer.message(node.pk, "after"))),
                  f"{how}: a fresh envelope was refused")
        finally:
            node.cleanup()


def half_migrated_tokens():
    """A state.db from before token scopes, whose migration was cut between
    its two ALTER TABLEs (a kill -9 or a full disk: each committed on its
    own), has gateway_tokens with `scope` and no `name`. The daemon used to
    refuse to start on it for ever ("duplicate column name: scope"); it
    starts, and the token stored there opens the operator's routes."""
    import hashlib
    token = "kith_" + "ab" * 32
    node = Daemon("crash-migrate", config={"gateway": {"port": free_port()},
                                           "comms": {"uds_path": None}})
    try:
        db = sqlite3.connect(os.path.join(node.home, "state.db"))
        db.execute("CREATE TABLE gateway_tokens (hash BLOB PRIMARY KEY,"
                   " created_ms INTEGER NOT NULL) WITHOUT ROWID")
        db.execute("ALTER TABLE gateway_tokens ADD COLUMN scope TEXT NOT NULL"
                   " DEFAULT 'operator'")
        db.execute("INSERT INTO gateway_tokens(hash, created_ms) VALUES (?, 1)",
                   (hashlib.sha256(token.encode()).digest(),))
        db.commit()
        db.close()
        node.start()
        st, doc, _ = http_call(node, "GET", "/api/tokens", token=token)
        check(st == 200 and doc["tokens"][0]["scope"] == "operator"
              and doc["tokens"][0]["name"] == "", f"the stored token: {st} {doc}")
    finally:
        node.cleanup()


def two_daemons_one_home():
    node = Daemon("crash-twice", config={"comms": {"uds_path": None}})
    try:
        node.start()
        p = subprocess.run([KITH, "daemon", "--home", node.home], capture_output=True,
                           text=True, timeout=TIMEOUT)
        check(p.returncode != 0 and "in use" in p.stderr,
              f"a second daemon on one home: exit {p.returncode}: {p.stderr[-500:]}")
        kill9(node)
        node.start()  # the kernel dropped the lock with the process
    finally:
        node.cleanup()


# ------------------------------------------------------------------ a full disk

def full_disk():
    """A home on a small tmpfs, filled while the daemon runs (root only:
    skipped otherwise). A webhook is answered 503 not_durable and nothing
    of it is ever written, its key free for the retry; envelopes wait
    un-acked and are acked once there is room; after a kill -9 the acked
    ones are there and the refused webhook is not."""
    mnt = small_tmpfs("kith-crash-disk-")
    if not mnt:
        return
    node = None
    try:
        peer = Peer()
        os.mkdir(os.path.join(mnt, "home"), 0o700)
        node = Daemon("crash-disk", home=os.path.join(mnt, "home"),
                      config={"gateway": {"port": free_port()}, "comms": {"uds_path": None},
                              "workers": {"agent_threads": 1}})
        node.trust("alice", peer.pk)
        node.start()
        token = operator_token(node)
        st, doc, _ = http_call(node, "POST", "/api/sessions/kept/messages", {"content": "hi"},
                               token)
        check(st == 200 and doc.get("type") == "done", f"turn: {st} {doc}")
        # The reply is stored after the answer, nobody waiting: let it land
        # before the disk fills (an append that fails waits in memory for
        # room, and this test counts the session's messages after a kill).
        wait_until(lambda: http_call(node, "GET", "/api/sessions/kept", token=token)[1]
                   .get("message_count") == 2, "the turn's reply stored")
        trusted = open(os.path.join(node.home, "trusted_peers.json"), "rb").read()
        filler = os.path.join(mnt, "filler")
        fill_disk(filler)
        big = "x" * 60_000  # more than the WAL has room for, so the commit must grow it
        body = json.dumps({"message": f"hook on a full disk {big}"})
        hdr = {"Content-Type": "application/json", "X-Idempotency-Key": "full-1"}
        st, doc, _ = http_call(node, "POST", "/webhook", body, token, hdr)
        check(st == 503 and doc["code"] == "not_durable", f"a webhook on a full disk: {st} {doc}")
        # A session delete that cannot commit deletes nothing, and says so.
        st, doc, _ = http_call(node, "DELETE", "/api/sessions/kept", token=token)
        check(st == 503 and doc["code"] == "unavailable", f"a delete on a full disk: {st} {doc}")
        # A trust edit that cannot be written changes nothing and leaves
        # no temporary file behind.
        st, doc, _ = http_call(node, "POST", "/api/peers",
                               {"name": "nope", "pubkey": pubkey_text(Peer().pk),
                                "addr": "tcp://127.0.0.1:9"}, token)
        check(st == 500 and doc["code"] == "trust_store_error", f"a trust edit: {st} {doc}")
        check(open(os.path.join(node.home, "trusted_peers.json"), "rb").read() == trusted and
              not [f for f in os.listdir(node.home) if ".tmp-" in f],
              "a trust edit that failed changed the file or left a temporary one")
        envs = [peer.message(node.pk, f"full {i} {big}") for i in range(3)]
        c = Conn(("127.0.0.1", node.port), timeout=TIMEOUT)
        c.send(b"".join(frame(e) for e in envs))
        os.unlink(filler)
        for e in envs:
            ack = c.read_frame()
            check(ack is not None and ack["kind"]["in_reply_to"] == e["id"],
                  f"no ack once the disk had room: {ack}")
        c.close()
        kill9(node)
        node.start()
        check(entries_with(node, "hook on a full disk") == 0,
              "a webhook answered 503 not_durable was queued after all")
        # Agents run here, so the entries may have become turns already:
        # the replay window says they were admitted, and a resend is refused.
        check({e["id"] for e in envs} <= seen_ids(node), "an acked envelope was lost")
        check(refused_without_ack(node, frame(envs[-1])), "an acked envelope was admitted again")
        st, doc, _ = http_call(node, "GET", "/api/sessions/kept", token=token)
        check(st == 200 and doc["message_count"] == 2,
              f"the session whose delete failed: {st} {doc}")
        st, doc, _ = http_call(node, "GET", "/api/peers", token=token)
        check([p["name"] for p in doc["peers"]] == ["alice"], f"peers: {doc}")
        st, doc, hdr2 = http_call(node, "POST", "/webhook", body, token, hdr)
        check(st == 202 and hdr2.get("Idempotent-Replayed") != "true",
              f"the key of a 503 not_durable was not free: {st} {doc}")
    finally:
        if node:
            node.stop(signal.SIGKILL)
        drop_tmpfs(mnt)


# ------------------------------------------------------------------ main

def main():
    results = Results()
    peer = Peer()
    node = Daemon("crash", config={"gateway": {"port": free_port()},
                                   "comms": {"uds_path": None, "inbox_capacity": 1_000_000},
                                   "workers": {"agent_threads": 0}})
    node.trust("alice", peer.pk)
    try:
        node.start()
        token = operator_token(node)
        for k in (1, 57, 400):
            results.run(envelopes_killed_mid_batch, node, peer, k,
                        name=f"envelopes_killed_after_{k}_acks")
        for k in (1, 25):
            results.run(webhooks_killed_mid_stream, node, token, k,
                        name=f"webhooks_killed_after_{k}_202s")
        results.run(webhooks_killed_mid_stream, node, token, 10, True,
                    name="external_events_killed_after_10_202s")
        for k in (1, 9, 30):
            results.run(tokens_killed_mid_churn, node, k, name=f"tokens_killed_after_{k}")
        results.run(pairing_counts_survive_kill, node)
        results.run(pairing_killed_mid_guessing, node)
        results.run(lockout_rows_bounded, node)
        results.run(trust_edits_killed, node, token)
        results.run(devices_killed, node)
        results.run(drain_then_kill, node, peer, token)
        results.run(drain_then_kill, node, peer, token, True, name="drain_to_the_end")
        results.stopped(node)
    finally:
        node.cleanup()
    chat = Daemon("crash-sessions", config={"gateway": {"port": free_port()},
                                            "comms": {"uds_path": None},
                                            "workers": {"agent_threads": 1}})
    try:
        chat.start()
        results.run(session_delete_killed, chat, operator_token(chat))
        results.stopped(chat)
    finally:
        chat.cleanup()
    results.run(damaged_state_db)
    results.run(half_migrated_tokens)
    results.run(two_daemons_one_home)
    results.run(full_disk)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
