"""tests/integration/test_agent_provider_faults.py — the real `kith daemon`
with agent.provider "openai" and one embedded agent thread, its
agent.base_url on fake_openai.py, driven over /ws/chat: an OpenAI-compatible
server that misbehaves ends the turn with the right error frame and a
message that names what happened — [DONE] alone, a reasoning model out of
tokens, a content filter, tool arguments cut by max_tokens, not JSON or
an object instead of its text, a
chunk cut mid-JSON (body ended, or connection dropped), a body with no end
marker, a byte that is not UTF-8, a redirect, a 503 with no body, a 200
whose body is a JSON error or nothing rather than a stream, a server
that says nothing, one that trickles keep-alives for ever, a host that does
not resolve — or, for a tool nobody offered and a jump in tool-call
indexes, the model hears the tool's error and answers. After every one of
them the same worker answers the next message on the same socket."""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from fake_openai import FakeOpenAI  # noqa: E402
from peer import Daemon, Results, check, wait_metric  # noqa: E402
from test_chat import check_answer, open_chat, run, until_final  # noqa: E402

TURN_TIMEOUT_S = 10  # agent.turn_timeout_s: what ends a silent or trickling server


async def say(ws, content):
    await ws.send(json.dumps({"type": "message", "content": content}))
    return await until_final(ws)


def start(fake, name, base_url=None):
    node = Daemon(name, config={"agent": {"provider": "openai", "base_url": base_url or fake.base_url,
                                          "model": "fake-model", "turn_timeout_s": TURN_TIMEOUT_S},
                                "workers": {"agent_threads": 1},
                                "gateway": {"require_pairing": False}})
    node.start()
    wait_metric(node, 'kith_workers_alive{service="kith.agent"}', lambda v: v >= 1)
    return node


def error_then_served(node, content, code, needles, chunks=None):
    """The turn for `content` ends with an error frame of `code` whose
    message holds every needle (and text `chunks` streamed before it); then
    the same socket's next message is answered."""
    async def go():
        ws, _ = await open_chat(node, "")
        try:
            frames = await say(ws, content)
            last = frames[-1]
            check(last["type"] == "error" and last.get("code") == code, f"{content}: {last}")
            for n in needles:
                check(n in last.get("message", ""), f"{content}: {last.get('message')!r} lacks {n!r}")
            if chunks is not None:
                got = "".join(f["content"] for f in frames if f["type"] == "chunk")
                check(got == chunks, f"{content}: chunks {got!r} != {chunks!r}")
            check_answer(await say(ws, "hello"), "Hello, world")
        finally:
            await ws.close()
    run(go())


def answered_then_served(node, content, want):
    async def go():
        ws, _ = await open_chat(node, "")
        try:
            check_answer(await say(ws, content), want)
            check_answer(await say(ws, "hello"), "Hello, world")
        finally:
            await ws.close()
    run(go())


def main():
    results = Results()
    fake = FakeOpenAI()
    node = None
    try:
        node = start(fake, "provfaults")
        P = "PROVIDER_ERROR"
        cases = [
            ("onlydone", P, ["openai: the stream ended with no text, no tool call and no finish_reason"]),
            ("thinkout", P, ["openai: the answer reached the token limit (finish_reason length) before any text"]),
            ("filtered", P, ["openai: the answer ended with finish_reason content_filter and no text"]),
            ("cutargs", P, ["openai: tool call 0 (send_message): its arguments were cut at the token limit"]),
            ("objargs", P, ["openai: a tool call's arguments are not a JSON string"]),
            ("badargs", P, ["openai: tool call 0 (send_message): its arguments are not JSON"]),
            ("cutchunk", P, ["openai: a malformed stream chunk"]),
            ("cutbody", P, ["openai: "]),
            ("nodone", P, ["openai: the stream ended before [DONE] or a finish_reason"]),
            ("badutf8", P, ["openai: a malformed stream chunk", "UTF8"]),
            ("redirect", P, ["openai: HTTP 307: a redirect to http://127.0.0.1:%d/v2/chat/completions, which is "
                             "not followed" % fake.port]),
            ("unavailable", P, ["openai: HTTP 503 (after 3 attempts)"]),
            ("error200", P, ["openai: the answer is not an event stream: You exceeded your current quota"]),
            ("empty200", P, ["openai: the answer is empty (HTTP 200, no event stream)"]),
            ("silent", "AGENT_ERROR", ["the turn timed out after %d s" % TURN_TIMEOUT_S]),
            ("trickle", "AGENT_ERROR", ["the turn timed out after %d s" % TURN_TIMEOUT_S]),
        ]
        streamed = {"cutchunk": "partly", "cutbody": "partly", "nodone": "partly", "badutf8": "fine "}
        for content, code, needles in cases:
            results.run(error_then_served, node, content, code, needles, streamed.get(content), name=content)

        def attempts():
            check(len(fake.requests_for("unavailable")) == 3, len(fake.requests_for("unavailable")))
            check(len(fake.requests_for("redirect")) == 1, "a redirect is not retried")
            check(not any(r["path"] != "/v1/chat/completions" for r in fake.requests), "a redirect was followed")

        def unknown_tool():
            answered_then_served(node, "unknowntool", 'tool said: {"error":"unknown tool no_such_tool"}')
            second = fake.requests_for("unknowntool")[-1]["body"]["messages"]
            check(second[-1] == {"role": "tool", "content": '{"error":"unknown tool no_such_tool"}',
                                 "tool_call_id": "call_u"}, second[-1])

        def index_jump():
            answered_then_served(node, "indexjump", "results: 2")
            second = fake.requests_for("indexjump")[-1]["body"]["messages"]
            calls = [c["id"] for m in second if m["role"] == "assistant" for c in m.get("tool_calls", [])]
            check(calls == ["call_j0", "call_j3"], calls)

        results.run(attempts)
        results.run(unknown_tool)
        results.run(index_jump)
        results.stopped(node)
        node.cleanup()
        node = None

        def unresolvable_host():
            n2 = start(fake, "provdns", "http://kith-no-such-host.invalid/v1")
            try:
                error_then_served_dns(n2)
                results.stopped(n2)
            finally:
                n2.cleanup()

        def error_then_served_dns(n2):
            async def go():
                ws, _ = await open_chat(n2, "")
                try:
                    for _ in range(2):  # and the worker serves the next turn the same way
                        last = (await say(ws, "hello"))[-1]
                        check(last["type"] == "error" and last.get("code") == "PROVIDER_ERROR", last)
                        check("kith-no-such-host.invalid" in last["message"] and
                              "(after 3 attempts)" in last["message"], last)
                finally:
                    await ws.close()
            run(go())

        results.run(unresolvable_host)
    finally:
        if node:
            node.cleanup()
        fake.close()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
