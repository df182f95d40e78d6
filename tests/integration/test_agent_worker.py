"""tests/integration/test_agent_worker.py — `kith agent --connect` processes
serving turns for a Majordomo broker written in Python (mdp_broker.py, from
spec/worker.cddl and MDP 0.2 alone): the scripted provider's echo, a router
tool round trip, steer, stop mid /sleep, a refused body, and a clean exit on
SIGTERM (DISCONNECT sent, exit 0); a CURVE broker joined with --server-key;
bad flags refused with exit 1."""

import os
import signal
import subprocess
import sys

import cbor2

sys.path.insert(0, os.path.dirname(__file__))
from mdp_broker import KITH, Broker, turn  # noqa: E402
from peer import Results, check  # noqa: E402


def chunks(events):
    return "".join(e["text"] for e in events if e["type"] == "chunk")


def main():
    results = Results()
    b = Broker()
    try:
        proc = b.spawn("--threads", "2")
        b.wait_ready(2)

        def echo():
            tid, body = turn("hello big world")
            b.request(body)
            events, final = b.collect(tid)
            check(events[0]["type"] == "llm_request" and events[0]["provider"] == "scripted", events[0])
            check([e["text"] for e in events[1:]] == ["echo: ", "hello ", "big ", "world"], events)
            check(final["type"] == "done" and final["full_response"] == "echo: hello big world", final)
            check(final["tool_iterations"] == 0, final)

        def router_tool():
            tid, body = turn("/send bob hi there")

            def answer(w, ev):
                if ev["type"] == "tool_call":
                    check(ev["call"]["name"] == "send_message", ev)
                    check(ev["call"]["arguments"] == '{"peer":"bob","body":"hi there"}', ev)
                    b.request(cbor2.dumps({"type": "tool_result", "turn_id": tid, "id": ev["call"]["id"],
                                           "result": '{"status":"acked"}', "is_error": False}), worker=w)
            b.request(body)
            events, final = b.collect(tid, answer)
            kinds = [e["type"] for e in events]
            check(kinds[:3] == ["llm_request", "tool_call", "tool_result"], kinds)
            check(final["full_response"] == 'send_message returned: {"status":"acked"}', final)
            check(final["tool_iterations"] == 1, final)

        def stop_mid_sleep():
            tid, body = turn("/sleep 600000")

            def stop(w, ev):
                if ev["type"] == "llm_request":
                    b.request(cbor2.dumps({"type": "stop", "turn_id": tid}), worker=w)
            b.request(body)
            events, final = b.collect(tid, stop)
            check(final["type"] == "stopped", final)

        def steer():
            tid, body = turn("/sleep 300")

            def steer_it(w, ev):
                if ev["type"] == "llm_request" and ev["iteration"] == 0:
                    b.request(cbor2.dumps({"type": "steer", "turn_id": tid, "content": "more"}), worker=w)
            b.request(body)
            events, final = b.collect(tid, steer_it)
            check(final["type"] == "done" and final["full_response"].endswith("echo: more"), final)

        def provider_error():
            tid, body = turn("/fail")
            b.request(body)
            _, final = b.collect(tid)
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)

        def bad_body():
            # Not a turn: still one FINAL, so the worker's hold ends.
            b.request(cbor2.dumps({"type": "turn", "turn_id": b"short"}))
            w, cmd, rest = b.recv()
            msg = cbor2.loads(rest[2])
            check(cmd == b"\x04" and msg["type"] == "error" and msg["code"] == "AGENT_ERROR", msg)
            b.idle.append(w)
            # …and the worker serves the next turn.
            echo()

        def sigterm_exits_0():
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
            check(rc == 0, f"exit {rc}: {proc.stderr.read().decode()}")
            # Each worker says DISCONNECT on its way out.
            try:
                while len(b.disconnected) < 2:
                    b.recv(timeout=5)
            except TimeoutError:
                pass
            check(len(b.disconnected) == 2, b.disconnected)

        for case in (echo, router_tool, stop_mid_sleep, steer, provider_error, bad_body, sigterm_exits_0):
            results.run(case)

        def curve():
            # A CURVE broker: the worker needs its public key, and then serves.
            c = Broker(curve=True)
            try:
                c.spawn("--server-key", c.public_key)
                c.wait_ready(1)
                tid, body = turn("over curve")
                c.request(body)
                _, final = c.collect(tid)
                check(final["full_response"] == "echo: over curve", final)
            finally:
                c.close()

        def bad_flags():
            for args, needle in ((["agent"], "--connect"),
                                 (["agent", "--connect", b.endpoint, "--provider", "nope"], "agent.provider"),
                                 (["agent", "--connect", b.endpoint, "--threads", "0"], "--threads"),
                                 (["agent", "--connect", b.endpoint, "--server-key", "short"], "CURVE"),
                                 (["agent", "--connect", b.endpoint, "--config", "/nonexistent/kith.json"],
                                  "/nonexistent/kith.json")):
                p = subprocess.run([KITH, *args], capture_output=True, text=True, timeout=60)
                check(p.returncode == 1 and needle in p.stderr, (args, p.returncode, p.stderr))

        results.run(curve)
        results.run(bad_flags)
    finally:
        b.close()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
