"""tests/integration/test_audit.py — the audit log end to end on the real
`kith daemon` (DESIGN §9, WIRE §21): peers' refused envelopes, bad pairing
codes, requests without a token and admin calls become records; GET
/api/audit and /api/audit/verify answer with a bearer token (curl);
`kith audit verify` exits 0 on the live log, 1 naming the record when one
byte of audit.log is flipped, and reports records cut off the end (and the
daemon refuses to go on from such a log); HMAC records with a key from the
environment; `kith audit tail` and `query`; rotation keeps one chain
across the files it names (audit.rotate_bytes, audit.keep)."""

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Conn, Daemon, Peer, Results, check, curl, frame,  # noqa: E402
                  gateway_url, kith_run, metrics_map, pairing_code, wait_metric)

HMAC_ENV = "KITH_TEST_AUDIT_KEY"



def pair(node, code):
    status, _, body, _ = curl("-X", "POST", "-H", f"X-Pairing-Code: {code}",
                              gateway_url(node) + "/pair")
    return status, json.loads(body) if body else None


def get(node, path, token=None):
    args = ["-H", f"Authorization: Bearer {token}"] if token else []
    status, _, body, _ = curl(*args, gateway_url(node) + path)
    return status, json.loads(body) if body else None


def log_path(node):
    return os.path.join(node.home, "audit.log")


def lines(node):
    with open(log_path(node), "rb") as f:
        return f.read().split(b"\n")[:-1]


def restart(node):
    """Starts a stopped daemon again (a fresh log, so an old "ready" line
    does not count)."""
    open(node.log_path, "wb").close()
    node.start()


def verify(*args, expect):
    out, err = kith_run("audit", "verify", *args, expect=expect)
    return out + err


def provoke(node, token):
    """Two refused envelopes (untrusted sender, malformed frame), two bad
    pairing codes, one request without a token, one admin call."""
    stranger = Peer()
    c = Conn(("127.0.0.1", node.port))
    c.send(frame(stranger.message(node.pk, "let me in")))
    check(c.closed(), "an untrusted sender's connection stays open")
    c = Conn(("127.0.0.1", node.port))
    c.send(frame(b"\xa1\x61x"))
    check(c.closed(), "a malformed frame's connection stays open")
    for _ in range(2):
        status, _ = pair(node, "000000")
        check(status == 401, f"a bad pairing code answered {status}")
    status, _ = get(node, "/api/peers")
    check(status == 401, f"/api/peers without a token answered {status}")
    status, _, _, _ = curl(gateway_url(node) + "/admin/paircode")
    check(status == 200, f"/admin/paircode answered {status}")


def main():
    results = Results()
    node = Daemon("audit")
    node.start()
    status, body = pair(node, pairing_code(node))
    check(status == 200, f"pairing answered {status} {body}")
    token = body["token"]
    # The pairing itself is the first event.
    want = 1 + 2 + 2 + 1 + 1
    try:
        provoke(node, token)
        wait_metric(node, "kith_audit_appended_total", lambda v: v >= want)
    except Exception as e:
        results.record("events_recorded", False, repr(e) + node.logs()[-3000:])
        node.cleanup()
        return results.summary()

    def records_on_disk():
        types = [json.loads(line)["type"] for line in lines(node)]
        for t in ("pair", "pair_failed", "envelope_rejected", "auth_failure", "admin"):
            check(t in types, f"no {t} record in {types}")
        rej = [json.loads(line) for line in lines(node) if b'"envelope_rejected"' in line]
        reasons = sorted(r["detail"]["reason"] for r in rej)
        check(reasons == ["malformed", "untrusted_sender"], f"refusal reasons {reasons}")
        first = json.loads(lines(node)[0])
        check(first["seq"] == 1 and first["prev"] == "0" * 64 and len(first["hash"]) == 64,
              f"first record {first}")
    results.run(records_on_disk)

    def api_audit():
        status, _ = get(node, "/api/audit")
        check(status == 401, f"/api/audit without a token answered {status}")
        status, body = get(node, "/api/audit?limit=1000", token)
        check(status == 200, f"/api/audit answered {status} {body}")
        seqs = [r["seq"] for r in body["records"]]
        check(seqs == sorted(seqs) and len(seqs) >= want, f"records {seqs}")
        status, body = get(node, "/api/audit?event_type=pair_failed", token)
        check(status == 200 and len(body["records"]) == 2
              and all(r["type"] == "pair_failed" for r in body["records"]), f"{status} {body}")
        status, body = get(node, "/api/audit?limit=1", token)
        check(status == 200 and len(body["records"]) == 1, f"{status} {body}")
        status, body = get(node, "/api/audit?since=99999999999999", token)
        check(status == 200 and body["records"] == [], f"{status} {body}")
        status, body = get(node, "/api/audit?limit=5000", token)
        check(status == 400, f"limit=5000 answered {status} {body}")
        status, body = get(node, "/api/audit?since=yesterday", token)
        check(status == 400 and body["code"] == "bad_since", f"since=yesterday: {status} {body}")
        for bad in ("a%20b", "x" * 65, ""):
            status, body = get(node, f"/api/audit?event_type={bad}", token)
            check(status == 400 and body["code"] == "bad_event_type",
                  f"event_type={bad!r}: {status} {body}")
    results.run(api_audit)

    def api_verify():
        status, body = get(node, "/api/audit/verify")
        check(status == 401, f"/api/audit/verify without a token answered {status}")
        status, body = get(node, "/api/audit/verify", token)
        check(status == 200 and body["ok"] is True and body["records"] >= want and
              body["files"] == 1 and body["first_seq"] == 1, f"{status} {body}")
    results.run(api_verify)

    def feed_metrics():
        # WIRE §21.7's counters, on a daemon whose feed never lacked a timer
        # and never had a batch failed or dropped.
        m = metrics_map(node)
        for k in ("kith_audit_events_total", "kith_audit_appended_total", "kith_audit_dropped_total",
                  "kith_audit_retries_total", "kith_audit_suppressed_total",
                  "kith_audit_timer_failures_total", "kith_audit_queue"):
            check(k in m, f"no {k} on /metrics")
        check(m["kith_audit_timer_failures_total"] == 0 and m["kith_audit_dropped_total"] == 0 and
              m["kith_audit_retries_total"] == 0, m)
    results.run(feed_metrics)

    def cli_live():
        out = verify("--home", node.home, expect=0)
        check("intact" in out, out)
        out, _ = kith_run("audit", "tail", "-n", "2", "--home", node.home)
        check(len(out.splitlines()) == 2, out)
        out, _ = kith_run("audit", "query", "--type", "envelope_rejected", "--home", node.home)
        check(len(out.splitlines()) == 2 and all('"envelope_rejected"' in ln for ln in out.splitlines()),
              out)
    results.run(cli_live)

    def cli_usage():
        # Each wrong call is refused with its reason, exit 1.
        for args, needle in (
            ((), "usage"),
            (("frob",), "unknown subcommand 'frob'"),
            (("tail", "-n", "x", "--home", node.home), "-n must be a number from 0 to 1000"),
            (("query", "--limit", "5000", "--home", node.home), "--limit must be a number from 0 to 1000"),
            (("query", "--since", "-5", "--home", node.home), "--since must be a number"),
            (("tail", "a.log", "b.log"), "unexpected argument 'b.log'"),
            (("tail", "--config", os.path.join(node.home, "no-such.json"), "--home", node.home),
             "no-such.json"),
            (("verify", "--hmac-key-env", "KITH_TEST_UNSET_KEY", log_path(node)), "KITH_TEST_UNSET_KEY"),
        ):
            out, err = kith_run("audit", *args, expect=1)
            check(needle in (err + out).lower() if needle == "usage" else needle in err,
                  f"kith audit {' '.join(args)}: {err!r}")
        # --since keeps the records from then on; an absolute audit.path in
        # the configuration is used as it is.
        out, _ = kith_run("audit", "query", "--since", "0", "--limit", "1000", "--home", node.home)
        check(len(out.splitlines()) >= want, out)
        cfg = os.path.join(node.home, "abs-audit.json")
        with open(cfg, "w") as f:
            json.dump({"audit": {"path": log_path(node)}}, f)
        out, _ = kith_run("audit", "tail", "-n", "1", "--config", cfg, "--home", node.home)
        check(len(out.splitlines()) == 1 and '"seq"' in out, out)
    results.run(cli_usage)

    results.stopped(node)
    original = open(log_path(node), "rb").read()
    head = log_path(node) + ".head"

    def flipped_byte_named():
        recs = lines(node)
        check(len(recs) >= 5, f"{len(recs)} records")
        at = len(b"\n".join(recs[:2])) + 1 + 30  # inside record 3
        data = bytearray(original)
        data[at] ^= 0x01
        with open(log_path(node), "wb") as f:
            f.write(data)
        out = verify(log_path(node), expect=1)
        check("first bad record: 3 " in out, out)
        # the API says the same once a daemon reads it: checked offline here
        with open(log_path(node), "wb") as f:
            f.write(original)
        verify(log_path(node), expect=0)
    results.run(flipped_byte_named)

    def api_names_the_bad_record():
        # A byte flipped in record 3 while the daemon is stopped: the daemon
        # starts (the last record and the head are intact) and
        # /api/audit/verify names record 3, with the verifier's reason.
        recs = lines(node)
        at = len(b"\n".join(recs[:2])) + 1 + 30
        data = bytearray(original)
        data[at] ^= 0x01
        with open(log_path(node), "wb") as f:
            f.write(data)
        try:
            restart(node)
            status, body = get(node, "/api/audit/verify", token)
            check(status == 200 and body["ok"] is False and body["first_bad"] == 3
                  and isinstance(body.get("reason"), str) and body["reason"],
                  f"{status} {body}")
        finally:
            node.stop()
            with open(log_path(node), "wb") as f:
                f.write(original)
        verify(log_path(node), expect=0)
    results.run(api_names_the_bad_record)

    def tail_cut_reported():
        recs = lines(node)
        keep = b"".join(r + b"\n" for r in recs[:-2])
        with open(log_path(node), "wb") as f:
            f.write(keep)
        out = verify(log_path(node), expect=1)
        check(f"first bad record: {len(recs) - 1} (truncated)" in out, out)
        # the daemon will not chain on from a cut log
        try:
            restart(node)
            node.stop()
            raise AssertionError("the daemon started on a cut-off audit log")
        except RuntimeError as e:
            check("records were cut off" in str(e), str(e))
        # the head gone too: still reported
        saved = open(head, "rb").read()
        os.unlink(head)
        out = verify(log_path(node), expect=1)
        check("head_missing" in out, out)
        with open(head, "wb") as f:
            f.write(saved)
        with open(log_path(node), "wb") as f:
            f.write(original)
        verify(log_path(node), expect=0)
    results.run(tail_cut_reported)

    def restart_continues_chain():
        restart(node)
        before = len(lines(node))
        status, _ = pair(node, "111111")
        check(status == 401, f"bad code answered {status}")
        wait_metric(node, "kith_audit_appended_total", lambda v: v >= 1)
        check(json.loads(lines(node)[-1])["seq"] == before + 1, "seq did not go on")
        node.stop()
        verify("--home", node.home, expect=0)
    results.run(restart_continues_chain)
    node.cleanup()

    def audit_off_answers_503():
        off = Daemon("audit-off", config={"audit": {"enabled": False}})
        try:
            off.start()
            status, body = pair(off, pairing_code(off))
            check(status == 200, f"pairing answered {status} {body}")
            for path in ("/api/audit", "/api/audit/verify"):
                status, err = get(off, path, body["token"])
                check(status == 503 and err["code"] == "audit_unavailable", f"{path}: {status} {err}")
        finally:
            off.cleanup()
    results.run(audit_off_answers_503)

    def hmac_chain():
        os.environ[HMAC_ENV] = "an audit key of more than sixteen bytes"
        h = Daemon("audit-hmac", config={"audit": {"hmac_key_env": HMAC_ENV}})
        try:
            h.start()
            pair(h, "000000")
            wait_metric(h, "kith_audit_appended_total", lambda v: v >= 1)
            h.stop()
            recs = lines(h)
            check(all(b'"hmac":"' in r for r in recs), recs)
            out = verify("--home", h.home, expect=0)
            check("intact" in out, out)
            env = {HMAC_ENV: "another key of more than sixteen bytes"}
            out, err = kith_run("audit", "verify", "--hmac-key-env", HMAC_ENV, "--no-head",
                                log_path(h), expect=1, env=env)
            check("(hmac)" in out, out + err)
        finally:
            del os.environ[HMAC_ENV]
            h.cleanup()
    results.run(hmac_chain)

    def tool_calls_recorded():
        t = Daemon("audit-tools", config={"workers": {"agent_threads": 2},
                                          "gateway": {"require_pairing": False}})
        try:
            t.start()
            status, _, body, _ = curl("-X", "POST", "-H", "Content-Type: application/json",
                                      "--data", '{"message":"/peers","session_id":"tools"}',
                                      gateway_url(t) + "/webhook")
            check(status == 202, (status, body))
            wait_metric(t, 'kith_turns_total{status="done"}', lambda v: v >= 1)
            deadline, calls, recs = time.time() + 60, [], []
            while not calls and time.time() < deadline:  # appended a moment later
                time.sleep(0.1)
                recs = [json.loads(r) for r in lines(t)] if os.path.exists(log_path(t)) else []
                calls = [r["detail"] for r in recs if r["type"] == "tool_call"]
            check(len(calls) == 1 and calls[0]["tool"] == "peers"
                  and calls[0]["session_id"] == "tools", recs)
        finally:
            t.cleanup()
    results.run(tool_calls_recorded)

    def absolute_path_used_as_it_is():
        # audit.path outside the home (a log partition, say): the chain is
        # written there, the API and the CLI read it there; a path the
        # daemon cannot open stops the start, naming it.
        import tempfile
        where = tempfile.mkdtemp(prefix="kith-audit-abs-")
        path = os.path.join(where, "chain.log")
        a = Daemon("audit-abs", config={"audit": {"path": path}})
        try:
            a.start()
            pair(a, "000000")
            wait_metric(a, "kith_audit_appended_total", lambda v: v >= 1)
            check(not os.path.exists(log_path(a)), "a chain in the home as well")
            with open(path, "rb") as f:
                check(b'"pair_failed"' in f.read(), "no pair_failed record at audit.path")
            status, body = pair(a, pairing_code(a))
            status, got = get(a, "/api/audit/verify", body["token"])
            check(status == 200 and got["ok"] is True and got["records"] >= 2, f"{status} {got}")
            a.stop()
            out = verify("--home", a.home, expect=0)
            check("intact" in out, out)
        finally:
            a.cleanup()
            shutil.rmtree(where, ignore_errors=True)
        bad = os.path.join(where, "no-such-dir", "chain.log")
        b = Daemon("audit-bad", config={"audit": {"path": bad}})
        try:
            try:
                b.start()
                raise AssertionError("started with an audit.path it cannot open")
            except RuntimeError as e:
                check(b.proc.returncode not in (0, None) and bad in str(e), str(e)[-2000:])
        finally:
            b.cleanup()
    results.run(absolute_path_used_as_it_is)

    def outsiders_flood_summed_up():
        # 300 requests without a token on one connection, and 30 malformed
        # envelopes, from one address: the log takes the burst of each
        # (10, then 1 a second) and says the rest in one audit_suppressed
        # record per type and source (WIRE §21.7); the chain stays whole.
        import http.client
        f = Daemon("audit-flood")
        try:
            f.start()
            status, body = pair(f, pairing_code(f))
            token = body["token"]
            c = http.client.HTTPConnection("127.0.0.1", f.gw_port, timeout=30)
            for _ in range(300):
                c.request("GET", "/api/peers")
                r = c.getresponse()
                r.read()
                check(r.status == 401, f"answered {r.status}")
            c.close()
            for _ in range(30):
                k = Conn(("127.0.0.1", f.port))
                k.send(frame(b"\xa1\x61x"))
                check(k.closed(), "a malformed frame's connection stays open")
            deadline = time.time() + 60
            summed = {}
            while time.time() < deadline and len(summed) < 2:
                time.sleep(0.5)
                _, got = get(f, "/api/audit?event_type=audit_suppressed&limit=100", token)
                summed = {r["detail"]["type"]: r["detail"] for r in got["records"]}
            check(set(summed) == {"auth_failure", "envelope_rejected"}, summed)
            for kind, total in (("auth_failure", 300), ("envelope_rejected", 30)):
                _, got = get(f, f"/api/audit?event_type={kind}&limit=1000", token)
                written = [r for r in got["records"] if r["detail"].get("client") == "127.0.0.1"]
                d = summed[kind]
                check(d["client"] == "127.0.0.1" and d["first_ms"] <= d["last_ms"], d)
                check(len(written) + d["count"] == total and 10 <= len(written) < 40,
                      f"{kind}: {len(written)} written, {d['count']} summed")
            m = wait_metric(f, "kith_audit_suppressed_total", lambda v: v > 0)
            check(m["kith_audit_suppressed_total"] == sum(d["count"] for d in summed.values()), m)
            status, got = get(f, "/api/audit/verify", token)
            check(status == 200 and got["ok"] is True, f"{status} {got}")
        finally:
            f.cleanup()
    results.run(outsiders_flood_summed_up)

    def stop_writes_what_it_holds():
        # A graceful stop writes the rate limit's counts (and the queue)
        # before it exits: 30 401s, then SIGTERM at once, long before the
        # 10 s summary would have been due.
        import http.client
        f = Daemon("audit-stop")
        try:
            f.start()
            c = http.client.HTTPConnection("127.0.0.1", f.gw_port, timeout=30)
            for _ in range(30):
                c.request("GET", "/api/peers")
                r = c.getresponse()
                r.read()
            c.close()
            wait_metric(f, "kith_audit_suppressed_total", lambda v: v >= 19)
            f.stop()
            recs = [json.loads(line) for line in lines(f)]
            written = [r for r in recs if r["type"] == "auth_failure"]
            summed = [r["detail"] for r in recs if r["type"] == "audit_suppressed"]
            check(len(summed) == 1 and summed[0]["type"] == "auth_failure" and
                  len(written) + summed[0]["count"] == 30, (len(written), summed))
            out = verify("--home", f.home, expect=0)
            check("intact" in out, out)
        finally:
            f.cleanup()
    results.run(stop_writes_what_it_holds)

    def rotation_keeps_one_chain():
        # audit.rotate_bytes 1: every batch after the first starts a new
        # log; audit.keep 3 keeps three rotated files. The chain runs on
        # through them: verify follows it, queries read back through them,
        # a restart goes on, and a file taken from the middle is caught.
        import re
        r = Daemon("audit-rot", config={"audit": {"rotate_bytes": 1, "keep": 3}})
        try:
            r.start()
            for i in range(8):  # 8 records of one source: under its limit of 10
                status, _ = get(r, "/api/peers")
                check(status == 401, status)
                wait_metric(r, "kith_audit_appended_total", lambda v, i=i: v >= i + 1)
            named = re.compile(r"^audit\.log\.\d{20}$")
            rotated = sorted(n for n in os.listdir(r.home) if named.match(n))
            check(len(rotated) == 3, rotated)
            check(all(os.path.exists(os.path.join(r.home, n + ".head")) for n in rotated), rotated)
            on_disk = []
            for n in rotated + ["audit.log"]:
                with open(os.path.join(r.home, n), "rb") as f:
                    on_disk += [json.loads(x) for x in f.read().split(b"\n")[:-1]]
            seqs = [x["seq"] for x in on_disk]
            check(seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] > 1, seqs)
            check(on_disk[-2]["type"] == "audit_rotated" and
                  on_disk[-2]["detail"] == {"previous_seq": seqs[-3]}, on_disk[-2])
            out = verify("--home", r.home, expect=0)
            check(f"intact: {len(seqs)} records in 4 files, from record {seqs[0]} (older ones "
                  "rotated away)" in out, out)
            status, _, body, _ = curl("-X", "POST", "-H", f"X-Pairing-Code: {pairing_code(r)}",
                                      gateway_url(r) + "/pair")
            token = json.loads(body)["token"]
            status, body = get(r, "/api/audit/verify", token)
            # (the pairing wrote records since, so the chain moved on)
            check(status == 200 and body["ok"] is True and body["files"] == 4 and
                  body["first_seq"] > seqs[0] - 1 and body["records"] >= len(seqs),
                  f"{status} {body}")
            status, body = get(r, "/api/audit?limit=1000", token)
            # (pairing wrote records since, so rotation went on)
            got = [x["seq"] for x in body["records"]]
            check(status == 200 and got == list(range(got[0], got[0] + len(got))) and
                  got[0] > 1 and got[-1] > seqs[-1] and "partial" not in body, (got, seqs, body))
            # A filter that matches nothing reads every kept file (the
            # default scan bound, 64 MiB, is far off): no partial.
            status, body = get(r, "/api/audit?limit=10&event_type=no_such_type", token)
            check(status == 200 and body == {"records": []}, f"{status} {body}")
            out, _ = kith_run("audit", "tail", "-n", "5", "--home", r.home)
            check(len(out.splitlines()) == 5, out)
            r.stop()
            restart(r)
            status, _ = get(r, "/api/peers")
            wait_metric(r, "kith_audit_appended_total", lambda v: v >= 1)
            r.stop()
            out = verify("--home", r.home, expect=0)
            check("intact" in out and "in 4 files" in out, out)
            rotated = sorted(n for n in os.listdir(r.home) if named.match(n))
            aside = os.path.join(r.home, "aside")
            os.rename(os.path.join(r.home, rotated[1]), aside)
            out = verify("--home", r.home, expect=1)
            check("(rotation)" in out, out)
            os.rename(aside, os.path.join(r.home, rotated[1]))
        finally:
            r.cleanup()
    results.run(rotation_keeps_one_chain)

    def query_scan_bound():
        # audit.query_scan_bytes 1: a query stops after the first line it
        # reads back from the log's end, and says it stopped short
        # ("partial"); one that found its limit, or read everything, does
        # not (WIRE 21.8).
        q = Daemon("audit-scan", config={"audit": {"query_scan_bytes": 1}})
        try:
            q.start()
            status, _, body, _ = curl("-X", "POST", "-H", f"X-Pairing-Code: {pairing_code(q)}",
                                      gateway_url(q) + "/pair")
            token = json.loads(body)["token"]
            for _ in range(3):
                status, _ = get(q, "/api/peers")
                check(status == 401, status)
            wait_metric(q, "kith_audit_appended_total", lambda v: v >= 4)
            status, body = get(q, "/api/audit?limit=1000", token)
            check(status == 200 and len(body["records"]) == 1 and body.get("partial") is True,
                  f"{status} {body}")
            status, body = get(q, "/api/audit?limit=1", token)
            check(status == 200 and len(body["records"]) == 1 and "partial" not in body,
                  f"{status} {body}")
            status, body = get(q, "/api/audit?limit=10&event_type=no_such_type", token)
            check(status == 200 and body == {"records": [], "partial": True}, f"{status} {body}")
            # The CLI reads the files itself, with no scan bound.
            out, _ = kith_run("audit", "query", "--type", "auth_failure", "--home", q.home)
            check(len(out.splitlines()) == 3, out)
        finally:
            q.cleanup()
    results.run(query_scan_bound)
    shutil.rmtree(node.home, ignore_errors=True)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
