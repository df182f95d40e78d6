"""tests/integration/test_agent_openai.py — the `openai` provider end to end:
`kith agent --provider openai` against a fake OpenAI-compatible server
(fake_openai.py) that streams real-format chunks, serving turns for the
Python Majordomo broker (mdp_broker.py): text in chunks, tokens counted, a
tool call split across chunks run through the router-tool round trip, one
byte at a time, a malformed chunk, 429 then success, 500s, a stop in the
middle of a stream, the idle timeout, reasoning as thinking, an error chunk
without a message, a reset mid-stream, a hang-up without an answer, a 400
(not retried), an HTML 502, a stop while waiting out a Retry-After, a body
that is not a stream, an answer past its bound, tool parameters that are
not JSON, an unreachable server and an unset API key variable; then the daemon's embedded agents with provider openai run a
peer's request whose model calls the router's send_message tool, the signed
response carrying the answer, and one whose model answers the request itself
with send_response (the request's id given in a system message), which
replaces the automatic response. The key reaches the server and never a
log."""

import json
import os
import sys
import time

import cbor2

sys.path.insert(0, os.path.dirname(__file__))
from fake_openai import FakeOpenAI  # noqa: E402
from mdp_broker import Broker, tool, turn  # noqa: E402
from peer import Daemon, Peer, Results, check, free_port, wait_metric  # noqa: E402
from test_workers import AckServer, send  # noqa: E402

KEY_ENV = "KITH_TEST_OPENAI_KEY"
KEY = "sk-test-0123456789abcdef"


def peer_uuid(raw):
    """An envelope id (16 bytes) as its UUID text."""
    import uuid
    return uuid.UUID(bytes=bytes(raw))


def chunks(events):
    return "".join(e["text"] for e in events if e["type"] == "chunk")


def main():
    results = Results()
    fake = FakeOpenAI()
    b = Broker()
    try:
        env = {KEY_ENV: KEY}
        # Trailing slashes on the base URL are dropped (WIRE §20.5).
        agent = b.spawn("--provider", "openai", "--base-url", fake.base_url + "//", "--model", "fake-model",
                        "--api-key-env", KEY_ENV, "--threads", "2", "--idle-timeout-ms", "3000",
                        "--log-level", "debug", env=env)
        b.wait_ready(2)

        def run(content, on_partial=None):
            tid, body = turn(content)
            b.request(body)
            return b.collect(tid, on_partial)

        def text_streams_in_chunks():
            events, final = run("hello")
            check(events[0] == {"type": "llm_request", "provider": "openai", "model": "fake-model",
                                "iteration": 0}, events[0])
            check([e["text"] for e in events if e["type"] == "chunk"] == ["Hello", ", ", "world"], events)
            check(final["type"] == "done" and final["full_response"] == "Hello, world", final)
            check(final.get("tokens_used") == 21, final)
            req = fake.requests_for("hello")[-1]
            check(req["path"] == "/v1/chat/completions", req["path"])
            check(req["headers"].get("Authorization") == "Bearer " + KEY, req["headers"])
            body = req["body"]
            check(body["stream"] is True and body["model"] == "fake-model", body)
            check(body["messages"] == [{"role": "user", "content": "hello"}], body["messages"])
            check([t["function"]["name"] for t in body["tools"]] == ["peers", "send_message", "send_request"],
                  body["tools"])
            check(body["tools"][0]["type"] == "function" and body["tools"][0]["function"]["parameters"] ==
                  {"type": "object"}, body["tools"][0])

        def one_byte_at_a_time():
            events, final = run("bytes")
            check(final["type"] == "done" and final["full_response"] == "Hello, world", final)

        def tool_call_end_to_end():
            tid, body = turn("tool")

            def answer(w, ev):
                if ev["type"] == "tool_call":
                    check(ev["call"] == {"id": "call_fake1", "name": "send_message",
                                         "arguments": '{"peer": "bob", "body": "hi"}'}, ev)
                    b.request(cbor2.dumps({"type": "tool_result", "turn_id": tid, "id": "call_fake1",
                                           "result": '{"status":"acked"}', "is_error": False}), worker=w)
            b.request(body)
            events, final = b.collect(tid, answer)
            kinds = [e["type"] for e in events]
            check(kinds[:4] == ["llm_request", "tool_call", "tool_result", "llm_request"], kinds)
            check(final["type"] == "done" and final["full_response"] == 'tool said: {"status":"acked"}', final)
            check(final["tool_iterations"] == 1, final)
            second = fake.requests_for("tool")[-1]["body"]["messages"]
            check(second[1]["role"] == "assistant" and second[1]["tool_calls"][0]["id"] == "call_fake1", second)
            check(second[1]["tool_calls"][0]["function"]["arguments"] == '{"peer": "bob", "body": "hi"}', second)
            check(second[2] == {"role": "tool", "content": '{"status":"acked"}', "tool_call_id": "call_fake1"},
                  second)

        def malformed_chunk():
            events, final = run("malformed")
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check("malformed" in final["message"], final)

        def rate_limited_then_ok():
            events, final = run("ratelimit")
            check(final["type"] == "done" and final["full_response"] == "after retry", final)
            check(len(fake.requests_for("ratelimit")) == 2, len(fake.requests_for("ratelimit")))

        def server_errors():
            events, final = run("boom")
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check("HTTP 500: upstream exploded (after 3 attempts)" in final["message"], final)
            check(len(fake.requests_for("boom")) == 3, len(fake.requests_for("boom")))

        def stop_mid_stream():
            tid, body = turn("slow")

            def stop(w, ev):
                if ev["type"] == "chunk":
                    b.request(cbor2.dumps({"type": "stop", "turn_id": tid}), worker=w)
            b.request(body)
            events, final = b.collect(tid, stop)
            check(final["type"] == "stopped" and chunks(events) == "tick", (events, final))

        def idle_timeout():
            events, final = run("slow")
            check(final["type"] == "error" and "no data from the server for 3000 ms" in final["message"], final)

        def done_ends_the_answer():
            # [DONE] ends the answer even when the server never ends the
            # body (it would otherwise fail at the idle timeout).
            events, final = run("doneopen")
            check(final["type"] == "done" and final["full_response"] == "held open", final)
            check(chunks(events) == "held open", events)

        def reasoning_is_thinking():
            events, final = run("think")
            check([e["text"] for e in events if e["type"] == "thinking"] == ["pondering", " more"], events)
            check(final["type"] == "done" and final["full_response"] == "thought", final)

        def error_chunk_without_message():
            # An error object with no message, then [DONE] (as llama.cpp and
            # vLLM end a failed stream): a provider error, not an empty answer.
            events, final = run("errorobj")
            check(chunks(events) == "partly", events)
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check(final["message"] == "openai: the server sent an error without a message", final)

        def reset_mid_stream():
            # Text went out: the reset is an error, and no attempt follows.
            fake.reset_go.clear()
            events, final = run("reset", lambda w, ev: ev["type"] == "chunk" and fake.reset_go.set())
            check(chunks(events) == "partly", events)
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check(final["message"].startswith("openai: ") and "after" not in final["message"], final)
            check(len(fake.requests_for("reset")) == 1, len(fake.requests_for("reset")))

        def hangup_without_answer():
            events, final = run("hangup")
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check(final["message"].startswith("openai: "), final)

        def client_error_not_retried():
            events, final = run("badrequest")
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check(final["message"] == "openai: HTTP 400: Unrecognized request argument", final)
            check(len(fake.requests_for("badrequest")) == 1, len(fake.requests_for("badrequest")))

        def html_error_page():
            # Not JSON: the body's start, on one line, after every attempt.
            events, final = run("html")
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check(final["message"].startswith("openai: HTTP 502: <html>") and "\n" not in final["message"] and
                  final["message"].endswith("(after 3 attempts)"), final)
            check(len(fake.requests_for("html")) == 3, len(fake.requests_for("html")))

        def stop_while_waiting_to_retry():
            # A 503 asks for an hour (the client waits at most 60 s): a stop
            # during the wait ends the turn at once, with no second attempt.
            tid, body = turn("overload")

            def stop(w, ev):
                if ev["type"] == "llm_request":
                    for _ in range(3000):  # until the 503 is written (a bound, not a timing)
                        with fake.lock:
                            if "overload" in fake.answered:
                                break
                        time.sleep(0.01)
                    b.request(cbor2.dumps({"type": "stop", "turn_id": tid}), worker=w)
            b.request(body)
            events, final = b.collect(tid, stop)
            check(final["type"] == "stopped", (events, final))
            check(len(fake.requests_for("overload")) == 1, len(fake.requests_for("overload")))

        def not_a_stream():
            events, final = run("plainjson")
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check(final["message"].startswith('openai: the answer is not an event stream: {"id": "chatcmpl-fake"'),
                  final)

        def answer_past_its_bound():
            events, final = run("huge")
            check(final["type"] == "error" and final["code"] == "AGENT_ERROR", final)
            check("the response grew past" in final["message"], final)
            check(len(fake.requests_for("huge")) == 1, len(fake.requests_for("huge")))

        def tool_parameters_not_json():
            tid, body = turn("hello", tools=[tool("broken", params="{oops")])
            n = len(fake.requests_for("hello"))
            b.request(body)
            events, final = b.collect(tid)
            check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
            check(final["message"] == "openai: the parameters of tool broken are not JSON", final)
            check(len(fake.requests_for("hello")) == n, "a request went out")

        def key_never_logged():
            agent.terminate()
            out, err = agent.communicate(timeout=30)
            check(agent.returncode == 0, agent.returncode)
            check(KEY not in (out + err).decode(errors="replace"), "the API key was logged")

        for case in (text_streams_in_chunks, one_byte_at_a_time, tool_call_end_to_end, malformed_chunk,
                     rate_limited_then_ok, server_errors, stop_mid_stream, idle_timeout,
                     done_ends_the_answer, reasoning_is_thinking, error_chunk_without_message, reset_mid_stream, hangup_without_answer,
                     client_error_not_retried, html_error_page, stop_while_waiting_to_retry, not_a_stream,
                     answer_past_its_bound, tool_parameters_not_json, key_never_logged):
            results.run(case)

        def unset_key_is_init_failed():
            b2 = Broker()
            try:
                b2.spawn("--provider", "openai", "--base-url", fake.base_url, "--model", "m",
                         "--api-key-env", "KITH_NO_SUCH_KEY_VAR")
                b2.wait_ready(1)
                tid, body = turn("hello")
                b2.request(body)
                events, final = b2.collect(tid)
                check(final["type"] == "error" and final["code"] == "AGENT_INIT_FAILED", final)
                check("KITH_NO_SUCH_KEY_VAR" in final["message"], final)
            finally:
                b2.close()

        def unreachable_server():
            b3 = Broker()
            try:
                b3.spawn("--provider", "openai", "--base-url", f"http://127.0.0.1:{free_port()}/v1",
                         "--model", "m")
                b3.wait_ready(1)
                tid, body = turn("hello")
                b3.request(body)
                events, final = b3.collect(tid)
                check(final["type"] == "error" and final["code"] == "PROVIDER_ERROR", final)
                check("(after 3 attempts)" in final["message"], final)
            finally:
                b3.close()

        def daemon_turn_with_tool():
            # The daemon's embedded agent threads with provider openai: a
            # peer's request becomes a turn; the model calls send_message to
            # "bob" (the peer itself), which the router signs and sends; the
            # model's answer quoting the tool's result is the signed response.
            peer = Peer()
            acks = AckServer(peer)
            node = Daemon("openai", config={"agent": {"provider": "openai", "base_url": fake.base_url,
                                                      "model": "fake-model", "api_key_env": KEY_ENV},
                                            "workers": {"agent_threads": 2}})
            node.trust("bob", peer.pk, f"tcp://127.0.0.1:{acks.port}")
            os.environ[KEY_ENV] = KEY
            try:
                node.start()
                wait_metric(node, 'kith_workers_alive{service="kith.agent"}', lambda v: v >= 2)
                req = peer.request(node.pk, "tool", {})
                send(node, req)
                ok, env = acks.next()
                check(ok and env["kind"] == {"type": "message", "body": "hi"}, env["kind"])
                ok, env = acks.next()
                k = env["kind"]
                check(ok and k["type"] == "response" and k["in_reply_to"] == req["id"], k)
                check(k["status"] == "completed" and k["result"].startswith("tool said: {"), k)
                check('"outcome":"acked"' in k["result"], k)

                # The model answers a request itself: send_response with
                # the id the system message gave it, a result of its own,
                # and no automatic response after it (the next response
                # that comes is the next request's).
                req2 = peer.request(node.pk, "respond", {})
                send(node, req2)
                ok, env = acks.next()
                k = env["kind"]
                check(ok and k["type"] == "response" and k["in_reply_to"] == req2["id"], k)
                check(k["status"] == "completed" and k["result"] == {"answer": 42}, k)
                system = [m for m in fake.requests_for("respond")[0]["body"]["messages"]
                          if m["role"] == "system"]
                check(len(system) == 1 and str(peer_uuid(req2["id"])) in system[0]["content"], system)
                req3 = peer.request(node.pk, "hello", {})
                send(node, req3)
                ok, env = acks.next()
                k = env["kind"]
                check(ok and k["type"] == "response" and k["in_reply_to"] == req3["id"], k)
                check(k["status"] == "completed" and k["result"] == "Hello, world", k)
                check(KEY not in node.logs(), "the API key was logged")
                results.stopped(node)
            finally:
                del os.environ[KEY_ENV]
                node.cleanup()

        results.run(unset_key_is_init_failed)
        results.run(unreachable_server)
        results.run(daemon_turn_with_tool)
    finally:
        b.close()
        fake.close()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
