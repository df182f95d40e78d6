"""tests/integration/fake_openai.py — a fake OpenAI-compatible server
(POST /v1/chat/completions, stream: true) on Python's http.server, started by
the tests in a thread. It answers in the real wire format — Server-Sent
Events of chat.completion.chunk objects over chunked HTTP/1.1, ended by
`data: [DONE]` — and picks its behaviour from the last user message (a
session's earlier turns come first, as history):

  hello      text in a few chunks, a usage chunk
  bytes      the same, written one byte at a time with CRLF line ends
  tool       a tool call whose id, name and arguments are split across
             chunks; once the conversation holds the tool's result, text
             quoting it
  malformed  a chunk that is not JSON
  ratelimit  429 with Retry-After: 0 the first time, then text
  boom       500 with an error body, every time
  slow       one chunk, then nothing until the client goes away
  think      reasoning_content, then text
  errorobj   text, then an error chunk without a message, then [DONE]
  reset      one chunk of text, then (once the test sets reset_go) the
             connection reset, with no end chunk
  hangup     the request read, the connection closed without an answer
  badrequest 400 with an error body (not worth a retry)
  html       502 with an HTML page for a body, every time
  overload   503 with Retry-After: 3600 (past the client's 60 s cap)
  plainjson  200 with a whole chat.completion object, not a stream
  huge       text past the turn's answer bound (1 MiB), in 64 KiB chunks
  respond    (a comms request's turn) send_response to the request named in
             the system message, with a result of its own; then text

Misbehaviours (tests/integration/test_agent_provider_faults.py):

  onlydone     `data: [DONE]` and nothing else
  thinkout     reasoning, then finish_reason "length" with no text (a
               reasoning model that spent max_tokens thinking)
  filtered     finish_reason "content_filter" with no text
  cutargs      a tool call whose arguments max_tokens cut, finish "length"
  badargs      a tool call whose arguments are not JSON, finish "tool_calls"
  unknowntool  a call of a tool nobody offered; once a tool result is in
               the conversation, text quoting it
  indexjump    two calls at tool_calls indexes 0 and 3 (none between), of
               unknown tools; then text counting the results
  objargs      a send_message call whose arguments are a JSON object, not
               its text (once a tool result is in the conversation, text)
  cutchunk     text, then a chunk cut in the middle of its JSON, the body
               ended cleanly (the last chunk of the chunked encoding)
  cutbody      text, then a chunk cut in the middle, the connection closed
               without the chunked encoding's last chunk
  nodone       text, then the body ends with no finish_reason and no [DONE]
  badutf8      a content string holding the byte 0xff
  redirect     307 to another path
  unavailable  503 with an empty body, every time
  error200     200 with a JSON error object, not a stream
  empty200     200 with an empty body
  silent       the request read, then nothing at all (no status line)
  trickle      200, then an SSE comment every 100 ms and never a chunk

A comms request's turn ("request INTENT: PARAMS") is picked by its INTENT.
Every request is kept (headers and JSON body) for the test to look at."""

import json
import os
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chunk(delta=None, finish=None, usage=None, choices=True):
    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
           "model": "fake-model", "choices": []}
    if choices:
        obj["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    if usage:
        obj["usage"] = usage
    return "data: " + json.dumps(obj) + "\n\n"


def text_stream(parts, usage=None):
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in parts]
    out.append(chunk({}, "stop"))
    if usage:
        out.append(chunk(usage=usage, choices=False))
    out.append("data: [DONE]\n\n")
    return out


def scenario(body):
    """The last user message; a comms request's turn ("request INTENT:
    PARAMS", WIRE §19.4) picks its scenario by INTENT."""
    first = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    if first.startswith("request "):
        first = first[len("request "):].split(":")[0]
    return first


class FakeOpenAI:
    def __init__(self):
        self.requests = []
        self.answered = []      # scenarios whose (first) answer was written whole
        self.reset_go = threading.Event()  # s_reset resets its connection
        self.counts = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path != "/v1/chat/completions":
                    return self.plain(404, {"error": {"message": "no such path " + self.path}})
                first = scenario(body)
                with fake.lock:
                    fake.counts[first] = fake.counts.get(first, 0) + 1
                    count = fake.counts[first]
                getattr(self, "s_" + first, self.s_hello)(body, count)

            # ------------------------------------------------ writing
            def plain(self, status, obj, headers=()):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def start_stream(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

            def piece(self, data):
                if isinstance(data, str):
                    data = data.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def end_stream(self):
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def stream(self, events):
                self.start_stream()
                for e in events:
                    self.piece(e)
                self.end_stream()

            # ------------------------------------------------ scenarios
            def s_hello(self, body, count):
                self.stream(text_stream(["Hello", ", ", "world"],
                                        {"prompt_tokens": 13, "completion_tokens": 8, "total_tokens": 21}))

            def s_bytes(self, body, count):
                self.start_stream()
                for e in text_stream(["Hello", ", ", "world"]):
                    for b in e.replace("\n", "\r\n").encode():
                        self.piece(bytes([b]))
                self.end_stream()

            def s_tool(self, body, count):
                tool_msgs = [m for m in body["messages"] if m["role"] == "tool"]
                if tool_msgs:
                    return self.stream(text_stream(["tool said: ", tool_msgs[-1]["content"]]))
                tc = lambda **kw: chunk({"tool_calls": [dict(index=0, **kw)]})  # noqa: E731
                self.stream([
                    chunk({"role": "assistant", "content": None}),
                    tc(id="call_fake1", type="function", function={"name": "send_message", "arguments": ""}),
                    tc(function={"arguments": '{"peer":'}),
                    tc(function={"arguments": ' "bob", "bo'}),
                    tc(function={"arguments": 'dy": "hi"}'}),
                    chunk({}, "tool_calls"),
                    "data: [DONE]\n\n",
                ])

            def s_respond(self, body, count):
                if any(m["role"] == "tool" for m in body["messages"]):
                    return self.stream(text_stream(["responded"]))
                system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
                ids = re.findall(r'in_reply_to "([0-9a-f-]{36})"', system)
                args = json.dumps({"in_reply_to": ids[0] if ids else "no id in the system message",
                                   "status": "completed", "result": {"answer": 42}})
                self.stream([
                    chunk({"role": "assistant", "content": None}),
                    chunk({"tool_calls": [{"index": 0, "id": "call_r1", "type": "function",
                                           "function": {"name": "send_response", "arguments": args}}]}),
                    chunk({}, "tool_calls"),
                    "data: [DONE]\n\n",
                ])

            def s_malformed(self, body, count):
                self.stream([chunk({"content": "partly "}), 'data: {"choices": [{"delta": {"content": "x"}}\n\n'])

            def s_ratelimit(self, body, count):
                if count == 1:
                    return self.plain(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                                      [("Retry-After", "0")])
                self.stream(text_stream(["after ", "retry"]))

            def s_boom(self, body, count):
                self.plain(500, {"error": {"message": "upstream exploded", "type": "server_error"}})

            def s_think(self, body, count):
                self.stream([chunk({"role": "assistant", "reasoning_content": "pondering"}),
                             chunk({"reasoning_content": " more"})] + text_stream(["thought"]))

            def s_errorobj(self, body, count):
                self.stream([chunk({"content": "partly"}),
                             'data: {"error": {"type": "server_error", "code": 500}}\n\n',
                             "data: [DONE]\n\n"])

            def drop(self, rst):
                """Ends the connection here (rst: with a reset), the handler
                writing nothing more."""
                if rst:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                self.wfile = open(os.devnull, "wb")

            def s_reset(self, body, count):
                self.start_stream()
                self.piece(chunk({"content": "partly"}))
                fake.reset_go.wait(30)  # the client read it: a reset would drop what it had not
                self.drop(True)

            def s_hangup(self, body, count):
                self.drop(False)

            def s_badrequest(self, body, count):
                self.plain(400, {"error": {"message": "Unrecognized request argument", "type":
                                           "invalid_request_error"}})

            def s_html(self, body, count):
                data = b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n</html>\r\n"
                self.send_response(502)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def s_overload(self, body, count):
                self.plain(503, {"error": {"message": "overloaded"}}, [("Retry-After", "3600")])
                self.wfile.flush()
                with fake.lock:
                    fake.answered.append("overload")

            def s_plainjson(self, body, count):
                self.plain(200, {"id": "chatcmpl-fake", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}]})

            def s_huge(self, body, count):
                self.start_stream()
                try:
                    for _ in range(20):  # 1.25 MiB, or until the client hangs up
                        self.piece(chunk({"content": "x" * 65536}))
                    self.piece(chunk({}, "stop"))
                    self.end_stream()
                except OSError:
                    self.close_connection = True
                    self.wfile = open(os.devnull, "wb")

            def s_doneopen(self, body, count):
                # A whole answer, [DONE], and then the body is never ended
                # (no last chunk): a proxy that keeps it open.
                self.start_stream()
                for e in text_stream(["held ", "open"]):
                    self.piece(e)
                for _ in range(600):  # until the client hangs up (or a minute)
                    time.sleep(0.1)

            # ------------------------------------------------ misbehaviours
            def s_onlydone(self, body, count):
                self.stream(["data: [DONE]\n\n"])

            def s_thinkout(self, body, count):
                self.stream([chunk({"role": "assistant", "content": ""}),
                             chunk({"reasoning_content": "let me think"}),
                             chunk({}, "length"), "data: [DONE]\n\n"])

            def s_filtered(self, body, count):
                self.stream([chunk({"role": "assistant", "content": ""}), chunk({}, "content_filter"),
                             "data: [DONE]\n\n"])

            def call_stream(self, calls, finish):
                return [chunk({"role": "assistant", "content": None})] + [
                    chunk({"tool_calls": [{"index": i, "id": cid, "type": "function",
                                           "function": {"name": name, "arguments": args}}]})
                    for i, cid, name, args in calls] + [chunk({}, finish), "data: [DONE]\n\n"]

            def s_cutargs(self, body, count):
                self.stream(self.call_stream([(0, "call_c", "send_message", '{"peer": "bob", "bo')], "length"))

            def s_badargs(self, body, count):
                self.stream(self.call_stream([(0, "call_b", "send_message", "peer=bob")], "tool_calls"))

            def s_objargs(self, body, count):
                if any(m["role"] == "tool" for m in body["messages"]):
                    return self.stream(text_stream(["ran"]))
                self.stream([chunk({"role": "assistant", "content": None}),
                             chunk({"tool_calls": [{"index": 0, "id": "call_o", "type": "function", "function": {
                                 "name": "send_message", "arguments": {"peer": "bob", "body": "hi"}}}]}),
                             chunk({}, "tool_calls"), "data: [DONE]\n\n"])

            def s_unknowntool(self, body, count):
                tool_msgs = [m for m in body["messages"] if m["role"] == "tool"]
                if tool_msgs:
                    return self.stream(text_stream(["tool said: ", tool_msgs[-1]["content"]]))
                self.stream(self.call_stream([(0, "call_u", "no_such_tool", "{}")], "tool_calls"))

            def s_indexjump(self, body, count):
                tool_msgs = [m for m in body["messages"] if m["role"] == "tool"]
                if tool_msgs:
                    return self.stream(text_stream(["results: %d" % len(tool_msgs)]))
                self.stream(self.call_stream([(0, "call_j0", "no_such_a", "{}"), (3, "call_j3", "no_such_b", "{}")],
                                             "tool_calls"))

            def s_cutchunk(self, body, count):
                self.start_stream()
                self.piece(chunk({"content": "partly"}))
                self.piece(chunk({"content": "never whole"})[:30])
                self.end_stream()

            def s_cutbody(self, body, count):
                self.start_stream()
                self.piece(chunk({"content": "partly"}))
                self.piece(chunk({"content": "never whole"})[:30])
                self.drop(False)

            def s_nodone(self, body, count):
                self.stream([chunk({"role": "assistant", "content": ""}), chunk({"content": "partly"})])

            def s_badutf8(self, body, count):
                self.start_stream()
                self.piece(chunk({"content": "fine "}))
                self.piece(b'data: {"choices":[{"index":0,"delta":{"content":"bad \xff byte"}}]}\n\n')
                self.piece(chunk({}, "stop") + "data: [DONE]\n\n")
                self.end_stream()

            def s_redirect(self, body, count):
                self.send_response(307)
                self.send_header("Location", "/v2/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def s_unavailable(self, body, count):
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def s_error200(self, body, count):
                self.plain(200, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota"}})

            def s_empty200(self, body, count):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def s_silent(self, body, count):
                for _ in range(1200):  # until the client hangs up (or two minutes)
                    time.sleep(0.1)

            def s_trickle(self, body, count):
                self.start_stream()
                try:
                    for _ in range(1200):  # until the client hangs up (or two minutes)
                        self.piece(": keep-alive\n\n")
                        time.sleep(0.1)
                except OSError:
                    self.close_connection = True
                    self.wfile = open(os.devnull, "wb")

            def s_slow(self, body, count):
                self.start_stream()
                self.piece(chunk({"content": "tick"}))
                for _ in range(600):  # until the client hangs up (or a minute)
                    time.sleep(0.1)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], OSError):  # a client that went away is no news
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests_for(self, first):
        with self.lock:
            return [r for r in self.requests if scenario(r["body"]) == first]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
