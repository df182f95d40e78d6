"""tests/integration/mdp_worker.py — a kith agent worker in Python, written from
spec/WIRE.md §19 and spec/worker.cddl alone (pyzmq + cbor2, no kith code).

    mdp_worker.py ENDPOINT NAME [SERVER_KEY PUBLIC SECRET]
                                  serves service kith.agent until killed;
                                  with CURVE (Z85 keys) when keys are given

Each turn answers "<NAME>: <content>" as one chunk and a done. Content
"/sleep MS" anywhere in it holds the turn MS milliseconds first (heartbeating);
"/error" anywhere ends it with an AGENT_ERROR; content starting "/peers" or
"/send PEER TEXT" calls the router-run tools and answers with their result.
Prints "start <turn_id hex> sleep|-" and "served <turn_id hex>" per turn, flushed,
for the test to read."""

import re, sys, time, zmq, cbor2

P = b"MDPW02"
READY, REQUEST, PARTIAL, FINAL, HEARTBEAT, DISCONNECT = (bytes([c]) for c in range(1, 7))
endpoint, name = sys.argv[1], sys.argv[2]
sock = zmq.Context().socket(zmq.DEALER)
if len(sys.argv) > 5:                             # WIRE §19.3
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
        (k.encode() for k in sys.argv[3:6])
sock.connect(endpoint)
sock.send_multipart([b"", P, READY, b"kith.agent"])
beat_at = time.monotonic() + 1.0


def beat():
    global beat_at
    if time.monotonic() >= beat_at:
        sock.send_multipart([b"", P, HEARTBEAT])
        beat_at = time.monotonic() + 1.0


def recv(timeout_ms):
    """The next REQUEST as (client address, body), or None; heartbeats."""
    end = time.monotonic() + timeout_ms / 1000
    while True:
        beat()
        left = max(0, min(end - time.monotonic(), beat_at - time.monotonic()))
        if sock.poll(int(left * 1000) + 1):
            f = sock.recv_multipart()
            if f[2] == REQUEST:
                return f[3], cbor2.loads(f[5])
            if f[2] == DISCONNECT:
                sys.exit(1)
        elif time.monotonic() >= end:
            return None


def reply(cmd, addr, body):
    sock.send_multipart([b"", P, cmd, addr, b"", cbor2.dumps(body)])


while True:
    got = recv(3600 * 1000)
    if got is None or got[1].get("type") != "turn":
        continue                                  # steer/stop/tool_result of no turn
    addr, turn = got
    tid, text, seq = turn["turn_id"], turn["message"]["content"], 0
    answer = f"{name}: {text}"
    sleep = re.search(r"/sleep (\d+)", text)
    print("start", tid.hex(), "sleep" if sleep else "-", flush=True)
    if "/error" in text:
        reply(FINAL, addr, {"type": "error", "turn_id": tid, "code": "AGENT_ERROR",
                            "message": "asked to fail"})
        continue
    if sleep:                                     # hold, but keep beating
        end = time.monotonic() + int(sleep.group(1)) / 1000
        while time.monotonic() < end:
            recv(50)
    elif text.startswith("/peers") or text.startswith("/send "):
        w = text.split(" ", 2)
        call = {"id": "c1", "name": "peers", "arguments": "{}"} if w[0] == "/peers" else \
            {"id": "c1", "name": "send_message",
             "arguments": '{"peer": "%s", "body": "%s"}' % (w[1], w[2])}
        reply(PARTIAL, addr, {"type": "partial", "turn_id": tid, "seq": seq,
                              "event": {"type": "tool_call", "call": call}})
        seq += 1
        while True:                               # the router runs it
            r = recv(60000)
            if r and r[1].get("type") == "tool_result" and r[1]["id"] == "c1":
                answer = r[1]["result"]
                break
    reply(PARTIAL, addr, {"type": "partial", "turn_id": tid, "seq": seq,
                          "event": {"type": "chunk", "text": answer}})
    reply(FINAL, addr, {"type": "done", "turn_id": tid, "full_response": answer,
                        "tool_iterations": 0})
    print("served", tid.hex(), flush=True)
