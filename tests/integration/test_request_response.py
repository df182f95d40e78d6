"""tests/integration/test_request_response.py — issue 11's request round
trip between two real daemons: `kith send --request` from node A to node B
runs a turn on B (its embedded scripted agents), and A's inbox receives B's
signed `response` naming the request; then with A down when B answers: B
retries with backoff until A is back, and A gets the response once; then
the same with B killed -9 while a worker holds the turn, and restarted: the
request is dispatched again and A still gets exactly one completed response.

A runs no agent workers, so B's response stays in A's inbox where the test
reads it (state.db) and checks its signature with PyNaCl."""

import json
import os
import signal
import sys
import time

import cbor2

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, free_port, inbox_rows, kith_run,  # noqa: E402
                  verify_envelope)
from test_workers import Worker, endpoint_of  # noqa: E402


def responses(a, b):
    """B's signed responses in A's inbox, as {in_reply_to: kind}."""
    out = {}
    for (kind, blob) in inbox_rows(a, "kind, frame"):
        if kind != "response":
            continue
        env = cbor2.loads(bytes(blob))
        check(verify_envelope(env), "a response whose signature does not verify")
        check(env["from"] == b.pk and env["to"] == a.pk, "a response from or to someone else")
        out[env["kind"]["in_reply_to"]] = env["kind"]
    return out


def wait_response(a, b, rid, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = responses(a, b)
        if rid in got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"no response to {rid.hex()} in A's inbox:\n{b.logs()[-3000:]}")


def responses_once(a, rid):
    """Exactly one response to request rid reached A."""
    n = sum(1 for (kind, blob) in inbox_rows(a, "kind, frame") if kind == "response"
            and cbor2.loads(bytes(blob))["kind"]["in_reply_to"] == rid)
    check(n == 1, f"{n} responses to one request")


def send_request(a, intent, params):
    out, _ = kith_run("send", "--home", a.home, "--to", "b", "--request", intent,
                      "--params", json.dumps(params))
    receipt = json.loads(out.splitlines()[-1])
    check(receipt["status"] == "acked", receipt)
    return bytes.fromhex(receipt["id"].replace("-", ""))


def main():
    r = Results()
    # A keeps its comms port across restarts too: B's trust row names it.
    a = Daemon("req-a", config={"comms": {"address": f"127.0.0.1:{free_port()}"}})
    # B keeps its comms port across restarts: A's trust row names it.
    b = Daemon("req-b", config={"workers": {"agent_threads": 2, "listen": "tcp://127.0.0.1:0"},
                                "comms": {"address": f"127.0.0.1:{free_port()}"}})
    a.start()
    b.start()
    a.trust("b", b.pk, f"tcp://127.0.0.1:{b.port}")
    b.trust("a", a.pk, f"tcp://127.0.0.1:{a.port}")
    a.wait_log("trust: reloaded")
    b.wait_log("trust: reloaded")
    workers = []
    try:
        def request_answered_with_signed_response():
            rid = send_request(a, "review", {"pr": 42})
            got = wait_response(a, b, rid)
            k = got[rid]
            check(k["status"] == "completed", k)
            check("review" in json.dumps(k["result"]), k)

        def answer_waits_for_the_requester():
            # A is down: the request goes from A's identity by the CLI, and
            # B's answer finds nobody at A's address. B keeps it (its inbox
            # entry stays leased) and retries with backoff until A is back.
            a.stop()
            since = len(b.logs())
            rid = send_request(a, "later", {"n": 1})
            deadline = time.time() + 60
            while "not acked" not in b.logs()[since:] and time.time() < deadline:
                time.sleep(0.1)
            check("not acked" in b.logs()[since:], f"B never retried:\n{b.logs()[since:]}")
            a.start()
            got = wait_response(a, b, rid)
            check(got[rid]["status"] == "completed", got[rid])
            responses_once(a, rid)

        def b_killed_mid_turn_still_answers():
            # B without embedded agents: a Python worker takes the turn and
            # holds it; B dies under it, comes back with its agents, and the
            # unfinished entry is dispatched again.
            b.stop()
            with open(os.path.join(b.home, "config.json")) as f:
                cfg = json.load(f)
            cfg["workers"]["agent_threads"] = 0
            with open(os.path.join(b.home, "config.json"), "w") as f:
                json.dump(cfg, f)
            os.truncate(b.log_path, 0)
            b.start()
            w = Worker(endpoint_of(b), "W")
            workers.append(w)
            rid = send_request(a, "hold", {"wait": "/sleep 30000"})
            w.wait("start", tag="sleep")
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait()
            b.log.close()
            b.log = None
            w.kill()
            check(rid not in responses(a, b), "answered before the restart")
            cfg["workers"]["agent_threads"] = 2
            with open(os.path.join(b.home, "config.json"), "w") as f:
                json.dump(cfg, f)
            os.truncate(b.log_path, 0)
            b.start()
            got = wait_response(a, b, rid)
            check(got[rid]["status"] == "completed", got[rid])
            responses_once(a, rid)

        r.run(request_answered_with_signed_response)
        r.run(answer_waits_for_the_requester)
        r.run(b_killed_mid_turn_still_answers)
        r.stopped(b)
        r.stopped(a)
    finally:
        for w in workers:
            w.kill()
        a.cleanup()
        b.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
