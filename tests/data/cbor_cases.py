#!/usr/bin/python3
"""tests/data/cbor_cases.py — writes tests/data/cbor_cases.txt: CBOR inputs
made with Python's cbor2 (Debian's python3-cbor2, an implementation kith did
not write) and by hand where cbor2 has no way to say it (non-shortest heads,
indefinite lengths, half floats, ill-formed bytes), each with the verdict
spec/worker.cddl, spec/envelope.cddl and spec/WIRE.md give it.
tests/cbor_cases_test.c runs every line through kith's decoder.

Regenerate: cd tests/data && /usr/bin/python3 cbor_cases.py > cbor_cases.txt

Line format (one case per line; '#' starts a comment line):
  DECODER EXPECT FIELD INPUT_HEX WANT_HEX  NAME
DECODER: worker_req, worker_rep (proto/worker_msg.c), audit
  (proto/audit_msg.c), envelope (proto/envelope.c), canon
  (proto_cbor_load with indefinite lengths allowed, then
  proto_cbor_canon_bytes).
EXPECT: "ok" or the decoder's reason name (proto_*_reason_str).
FIELD: worker only, the error's field ("-" elsewhere, "" is written "^").
WANT_HEX: "-", or what kith must write back: for audit the re-encoding,
  for envelope the signable bytes, for canon the canonical encoding; each
  is cbor2's own canonical encoding (canonical=True: shortest forms, map
  keys length-first then bytewise, RFC 7049 §3.9, which DESIGN §8 names).
"""
import copy
import struct
import sys

import cbor2


class Raw:
    """Bytes put into a cbor2 encoding as they are."""

    def __init__(self, b):
        self.b = b


def _default(enc, v):
    if isinstance(v, Raw):
        enc.write(v.b)
        return
    raise TypeError(v)


def dumps(v):
    return cbor2.dumps(v, default=_default)


def canon(v):
    return cbor2.dumps(v, canonical=True)


def head(major, arg, width=None):
    """A head; width None is the shortest, else 0 (inline), 1, 2, 4 or 8."""
    if width is None:
        width = 0 if arg < 24 else 1 if arg < 256 else 2 if arg < 65536 else 4 if arg < 2**32 else 8
    if width == 0:
        return bytes([major << 5 | arg])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | ai]) + arg.to_bytes(width, "big")


def rmap(pairs):
    """A definite map of raw (key, value) byte pairs, in this order."""
    return Raw(head(5, len(pairs)) + b"".join(k + v for k, v in pairs))


def t(s):
    return dumps(s)


out = []


def case(dec, expect, field, data, want=None, name=""):
    if isinstance(data, Raw):
        data = data.b
    field = "-" if field is None else (field or "^")
    out.append("%s %s %s %s %s  %s" % (dec, expect, field, data.hex() or "-",
                                       want.hex() if want is not None else "-", name))


HALF_1_5 = Raw(b"\xf9\x3e\x00")
HALF_NAN = Raw(b"\xf9\x7e\x00")
HALF_INF = Raw(b"\xf9\x7c\x00")
UNDEF = Raw(b"\xf7")
SIMPLE_2B_TRUE = Raw(b"\xf8\x15")  # true in two bytes: not well-formed (RFC 8949 §3.3)

# ------------------------------------------------------------ worker requests

TID = bytes(range(16))
TURN = {
    "type": "turn", "turn_id": TID, "session_id": "s1",
    "message": {"role": "user", "content": "hi"},
    "history": [{"role": "assistant", "content": "",
                 "tool_calls": [{"id": "c1", "name": "peers", "arguments": "{}"}]},
                {"role": "tool", "content": "{}", "tool_call_id": "c1"}],
    "tools": [{"name": "peers", "description": "d", "parameters": "{}", "executor": "router"}],
    "limits": {"max_tool_iterations": 60, "turn_timeout_s": 600},
    "origin": {"channel": "comms", "envelope_id": TID, "from": b"\x22" * 32,
               "envelope_type": "request"},
}


def turn(**kw):
    """TURN with some paths replaced (a.b=value; value None deletes)."""
    d = copy.deepcopy(TURN)
    for path, v in kw.items():
        keys = path.split("__")
        o = d
        for k in keys[:-1]:
            o = o[int(k)] if isinstance(o, list) else o[k]
        if v is None:
            del o[keys[-1]]
        elif isinstance(o, list):
            o[int(keys[-1])] = v
        else:
            o[keys[-1]] = v
    return d


R = "worker_req"
case(R, "ok", "", dumps(TURN), name="turn, cbor2")
case(R, "ok", "", canon(TURN), name="turn, cbor2 canonical order")
case(R, "ok", "", dumps(turn(x_new={"a": [1, -1, 1.5, None, b"", {"b": True}]})),
     name="unknown key with any value")
case(R, "ok", "", dumps(turn(limits__max_tool_iterations=Raw(head(0, 5, 8)))),
     name="uint in a non-shortest head")
case(R, "ok", "", dumps(turn(limits__turn_timeout_s=2**64 - 1)), name="uint 2^64-1")
case(R, "ok", "", dumps(turn(session_id="x" * 128)), name="session_id of 128")
case(R, "ok", "", dumps({"type": "stop", "turn_id": TID}), name="stop")
case(R, "ok", "", dumps({"type": "steer", "turn_id": TID, "content": "go"}), name="steer")
case(R, "ok", "", dumps({"type": "tool_result", "turn_id": TID, "id": "c", "result": "{}",
                         "is_error": False}), name="tool_result")
case(R, "bad_cbor", "", b"", name="empty")
case(R, "bad_cbor", "", dumps(TURN)[:-1], name="truncated")
case(R, "bad_cbor", "", dumps(TURN) + b"\x00", name="trailing byte")
case(R, "bad_cbor", "", b"\xbf\x64type\x64stop\xff", name="indefinite map")
case(R, "bad_cbor", "", dumps(turn(session_id=Raw(b"\x7f\x61a\xff")))[:], name="indefinite text")
case(R, "bad_cbor", "", dumps(turn(x=SIMPLE_2B_TRUE)), name="two-byte simple value")
case(R, "bad_cbor", "", dumps(turn(x=Raw(b"\x1c"))), name="reserved additional info")
case(R, "bad_cbor", "", dumps(turn(x=Raw(b"\xff"))), name="stray break")
case(R, "bad_cbor", "", dumps(turn(x=Raw(b"\x81" * 31 + b"\x00"))), name="nesting 33")
case(R, "ok", "", dumps(turn(x=Raw(b"\x81" * 30 + b"\x00"))), name="nesting 32")
case(R, "bad_utf8", "", dumps(turn(session_id=Raw(b"\x62\xc3\x28"))), name="bad UTF-8")
case(R, "bad_utf8", "", dumps(turn(x=Raw(b"\x63\xed\xa0\x80"))), name="surrogate in an unknown field")
case(R, "not_map", "", dumps([1]), name="array body")
case(R, "not_map", "", dumps(1), name="int body")
case(R, "unknown_type", "type", dumps({"turn_id": TID}), name="no type")
case(R, "unknown_type", "type", dumps({"type": 1}), name="type not text")
case(R, "unknown_type", "type", dumps({"type": "partial"}), name="a reply's type")
case(R, "unknown_type", "type", dumps({"type": "Turn"}), name="type in another case")
case(R, "duplicate_key", "type", rmap([(t("type"), t("stop")), (t("turn_id"), dumps(TID)),
                                       (t("type"), t("stop"))]), name="type twice")
case(R, "duplicate_key", "turn_id", rmap([(t("type"), t("stop")), (t("turn_id"), dumps(TID)),
                                          (t("turn_id"), dumps(TID))]), name="turn_id twice")
case(R, "wrong_type", "", rmap([(t("type"), t("stop")), (t("turn_id"), dumps(TID)),
                                (dumps(1), dumps(1))]), name="int key")
for key in ("turn_id", "session_id", "message", "history", "tools", "limits", "origin"):
    case(R, "missing_field", key, dumps(turn(**{key: None})), name="turn without " + key)
# WIRE §20.4: keys worker.cddl does not name are skipped, their values
# checked for well-formedness only: a tag or a repeated key inside them does
# not refuse the body (a known key twice does).
case(R, "ok", "", dumps(turn(x=cbor2.CBORTag(1, 0))), name="tag in an unknown field")
case(R, "ok", "", dumps(turn(x={1: Raw(b"\xe0"), 2: UNDEF})), name="int keys, simple values in an unknown field")
case(R, "ok", "", rmap([(t("type"), t("stop")), (t("turn_id"), dumps(TID)), (t("x"), dumps(1)),
                        (t("x"), dumps(2))]), name="unknown key twice")
case(R, "wrong_type", "turn_id", dumps(turn(turn_id="0123456789abcdef")), name="turn_id as text")
case(R, "wrong_type", "turn_id", dumps(turn(turn_id=cbor2.CBORTag(37, TID))), name="turn_id tagged")
case(R, "bad_value", "turn_id", dumps(turn(turn_id=TID[:15])), name="turn_id of 15")
case(R, "bad_value", "turn_id", dumps(turn(turn_id=TID + b"\x00")), name="turn_id of 17")
case(R, "bad_value", "session_id", dumps(turn(session_id="")), name="empty session_id")
case(R, "too_long", "session_id", dumps(turn(session_id="x" * 129)), name="session_id of 129")
case(R, "wrong_type", "session_id", dumps(turn(session_id=b"s1")), name="session_id as bytes")
case(R, "wrong_type", "message", dumps(turn(message=["user", "hi"])), name="message not a map")
case(R, "missing_field", "role", dumps(turn(message__role=None)), name="message without role")
case(R, "bad_value", "role", dumps(turn(message__role="root")), name="role outside the set")
case(R, "wrong_type", "role", dumps(turn(message__role=2)), name="role as int")
case(R, "missing_field", "content", dumps(turn(message__content=None)), name="message without content")
case(R, "wrong_type", "content", dumps(turn(message__content=Raw(b"\xf6"))),
     name="content null")
case(R, "wrong_type", "history", dumps(turn(history={})), name="history not an array")
case(R, "wrong_type", "history", dumps(turn(history__0=[])), name="history entry not a map")
case(R, "wrong_type", "tool_calls", dumps(turn(history__0__tool_calls={})), name="tool_calls not array")
case(R, "wrong_type", "call", dumps(turn(history__0__tool_calls=[1])), name="tool call not a map")
case(R, "too_long", "id", dumps(turn(history__0__tool_calls=[{"id": "i" * 257, "name": "n",
                                                              "arguments": "{}"}])),
     name="call id of 257")
case(R, "missing_field", "arguments", dumps(turn(history__0__tool_calls=[{"id": "i", "name": "n"}])),
     name="call without arguments")
case(R, "wrong_type", "tool_call_id", dumps(turn(history__1__tool_call_id=1)), name="tool_call_id int")
case(R, "wrong_type", "tools", dumps(turn(tools__0="peers")), name="tool not a map")
case(R, "bad_value", "executor", dumps(turn(tools__0__executor="both")), name="executor outside the set")
case(R, "too_long", "name", dumps(turn(tools__0__name="n" * 257)), name="tool name of 257")
case(R, "too_long", "tools", dumps(turn(tools=Raw(head(4, 257) + b"\xa0" * 257))), name="257 tools")
case(R, "too_long", "tool_calls", dumps(turn(history__0__tool_calls=Raw(head(4, 257) + b"\xa0" * 257))),
     name="257 tool calls")
case(R, "ok", "", dumps(turn(tools=[TURN["tools"][0]] * 256)), name="256 tools")
case(R, "ok", "", rmap([(b"\x78\x04type", t("stop")), (b"\x79\x00\x07turn_id", dumps(TID))]),
     name="keys in non-shortest heads")
case(R, "duplicate_key", "turn_id", rmap([(t("type"), t("stop")), (t("turn_id"), dumps(TID)),
                                          (b"\x78\x07turn_id", dumps(TID))]),
     name="turn_id twice, once in a non-shortest head")
case(R, "wrong_type", "limits", dumps(turn(limits=[60, 600])), name="limits not a map")
case(R, "missing_field", "turn_timeout_s", dumps(turn(limits__turn_timeout_s=None)), name="no timeout")
case(R, "wrong_type", "max_tool_iterations", dumps(turn(limits__max_tool_iterations=-1)),
     name="negative int for a uint")
case(R, "wrong_type", "max_tool_iterations", dumps(turn(limits__max_tool_iterations=-2**64)),
     name="-2^64 for a uint")
case(R, "wrong_type", "max_tool_iterations", dumps(turn(limits__max_tool_iterations=60.0)),
     name="float for a uint")
case(R, "wrong_type", "max_tool_iterations",
     dumps(turn(limits__max_tool_iterations=cbor2.CBORTag(2, b"\x01" + b"\x00" * 8))),
     name="bignum for a uint")
case(R, "wrong_type", "max_tool_iterations", dumps(turn(limits__max_tool_iterations=True)),
     name="true for a uint")
case(R, "wrong_type", "origin", dumps(turn(origin="ws")), name="origin not a map")
case(R, "missing_field", "channel", dumps(turn(origin__channel=None)), name="origin without channel")
case(R, "bad_value", "channel", dumps(turn(origin__channel="email")), name="channel outside the set")
case(R, "bad_value", "from", dumps(turn(origin__from=b"\x22" * 31)), name="from of 31")
case(R, "bad_value", "envelope_id", dumps(turn(origin__envelope_id=b"")), name="empty envelope_id")
case(R, "bad_value", "envelope_type", dumps(turn(origin__envelope_type="ack")),
     name="envelope_type outside the set")
case(R, "missing_field", "content", dumps({"type": "steer", "turn_id": TID}), name="steer without content")
case(R, "wrong_type", "content", dumps({"type": "stop", "turn_id": TID, "content": 1}),
     name="stop with content not text")
case(R, "wrong_type", "is_error", dumps({"type": "tool_result", "turn_id": TID, "id": "c",
                                         "result": "{}", "is_error": 0}), name="is_error as 0")
case(R, "wrong_type", "is_error", dumps({"type": "tool_result", "turn_id": TID, "id": "c",
                                         "result": "{}", "is_error": UNDEF}), name="is_error undefined")
case(R, "wrong_type", "is_error", dumps({"type": "tool_result", "turn_id": TID, "id": "c",
                                         "result": "{}", "is_error": None}), name="is_error null")

# ------------------------------------------------------------ worker replies

P = "worker_rep"


def partial(ev):
    return {"type": "partial", "turn_id": TID, "seq": 0, "event": ev}


def done(**kw):
    d = {"type": "done", "turn_id": TID, "full_response": "ok", "tool_iterations": 1}
    d.update(kw)
    return d


case(P, "ok", "", dumps(partial({"type": "chunk", "text": "hi"})), name="chunk")
case(P, "ok", "", dumps(partial({"type": "chunk_reset", "text": 1})), name="chunk_reset, extra key")
case(P, "ok", "", dumps(partial({"type": "llm_request", "provider": "p", "iteration": 2})),
     name="llm_request without model")
case(P, "ok", "", dumps(partial({"type": "agent_event", "name": "n", "data": "{}"})), name="agent_event")
case(P, "ok", "", dumps(partial({"type": "operator_status", "status": "s"})), name="operator_status")
case(P, "ok", "", dumps(partial({"type": "tool_result", "id": "c", "result": "r", "is_error": True})),
     name="event tool_result")
case(P, "ok", "", dumps(partial({"type": "tool_call", "call": {"id": "c", "name": "n",
                                                               "arguments": "{}"}})), name="tool_call")
case(P, "ok", "", dumps(done(cost_usd=HALF_1_5)), name="cost_usd half float")
case(P, "ok", "", dumps(done(cost_usd=Raw(b"\xfa\x3f\xc0\x00\x00"))), name="cost_usd single float")
case(P, "ok", "", dumps(done(cost_usd=0.1, tokens_used=2**64 - 1)), name="cost_usd double, tokens 2^64-1")
case(P, "ok", "", dumps(done(cost_usd=Raw(b"\xf9\x00\x01"))), name="cost_usd half subnormal")
case(P, "ok", "", dumps({"type": "stopped", "turn_id": TID}), name="stopped")
case(P, "ok", "", dumps({"type": "error", "turn_id": TID, "code": "AGENT_ERROR", "message": "m"}),
     name="error")
case(P, "unknown_type", "type", dumps({"type": "turn"}), name="a request's type")
case(P, "unknown_type", "event", dumps(partial({"type": "chunk2"})), name="unknown event type")
case(P, "unknown_type", "event", dumps(partial({"text": "a"})), name="event without type")
case(P, "missing_field", "event", dumps({"type": "partial", "turn_id": TID, "seq": 0}), name="no event")
case(P, "wrong_type", "event", dumps(partial([1])), name="event not a map")
case(P, "missing_field", "text", dumps(partial({"type": "chunk"})), name="chunk without text")
case(P, "wrong_type", "seq", dumps({"type": "partial", "turn_id": TID, "seq": -1,
                                    "event": {"type": "chunk_reset"}}), name="negative seq")
case(P, "wrong_type", "seq", dumps({"type": "partial", "turn_id": TID, "seq": HALF_1_5,
                                    "event": {"type": "chunk_reset"}}), name="half float seq")
case(P, "missing_field", "call", dumps(partial({"type": "tool_call"})), name="tool_call without call")
case(P, "too_long", "provider", dumps(partial({"type": "llm_request", "provider": "p" * 257,
                                               "iteration": 0})), name="provider of 257")
case(P, "too_long", "model", dumps(partial({"type": "llm_request", "provider": "p", "model": "m" * 257,
                                            "iteration": 0})), name="model of 257")
case(P, "wrong_type", "cost_usd", dumps(done(cost_usd=1)), name="cost_usd as int")
case(P, "wrong_type", "cost_usd", dumps(done(cost_usd=UNDEF)), name="cost_usd undefined")
case(P, "bad_value", "cost_usd", dumps(done(cost_usd=HALF_NAN)), name="cost_usd NaN")
case(P, "bad_value", "cost_usd", dumps(done(cost_usd=HALF_INF)), name="cost_usd infinity")
case(P, "bad_value", "cost_usd", dumps(done(cost_usd=float("-inf"))), name="cost_usd -infinity")
case(P, "wrong_type", "tokens_used", dumps(done(tokens_used=-5)), name="negative tokens_used")
case(P, "missing_field", "tool_iterations", dumps({"type": "done", "turn_id": TID,
                                                   "full_response": ""}), name="done without count")
case(P, "bad_value", "code", dumps({"type": "error", "turn_id": TID, "code": "OOPS", "message": "m"}),
     name="code outside the set")
case(P, "missing_field", "message", dumps({"type": "error", "turn_id": TID, "code": "AGENT_ERROR"}),
     name="error without message")
case(P, "wrong_type", "message", dumps({"type": "stopped", "turn_id": TID, "message": None}),
     name="stopped message null")
case(P, "missing_field", "turn_id", dumps({"type": "stopped"}), name="stopped without turn_id")

# ------------------------------------------------------------ audit bodies

A = "audit"


def audit_ok(body, name):
    case(A, "ok", None, dumps(body), canon(body), name)


EV = {"time_ms": 1700000000000, "type": "pair", "detail": "{}"}
audit_ok({"type": "audit_append", "events": [EV, EV]}, "append")
audit_ok({"events": [EV], "type": "audit_append"}, "append, keys reversed")
audit_ok({"type": "audit_appended", "first_seq": 2**64 - 1, "count": 0}, "appended, first_seq 2^64-1")
audit_ok({"type": "audit_query", "limit": 1000, "event_type": "pair", "since_ms": 5}, "query")
audit_ok({"type": "audit_records", "records": ["a", "b"], "partial": True}, "records, partial")
audit_ok({"type": "audit_records", "records": []}, "no records")
audit_ok({"type": "audit_verify"}, "verify")
audit_ok({"type": "audit_verified", "ok": False, "records": 3, "first_bad": 2, "reason": "hmac",
          "files": 2, "first_seq": 1}, "verified, every field")
for code in ("bad_request", "event", "io", "broken", "no_memory"):
    audit_ok({"type": "audit_error", "code": code, "message": "m"}, "error " + code)
case(A, "ok", None, dumps({"type": "audit_appended", "first_seq": Raw(head(0, 1, 8)),
                           "count": Raw(head(0, 0, 4))}),
     canon({"type": "audit_appended", "first_seq": 1, "count": 0}), "non-shortest uints")
case(A, "malformed", None, b"", name="empty")
case(A, "malformed", None, b"\xbf\x64type\x6caudit_verify\xff", name="indefinite map")
case(A, "malformed", None, dumps({"type": "audit_verify"}) + b"\x00", name="trailing byte")
case(A, "malformed", None, dumps({"type": "audit_verify"})[:-1], name="truncated")
case(A, "bad_utf8", None, dumps({"type": Raw(b"\x61\xff")}), name="bad UTF-8")
case(A, "too_deep", None, dumps({"type": "audit_append", "events": [[[EV]]]}), name="nesting 5")
case(A, "not_map", None, dumps(["audit_verify"]), name="array body")
case(A, "not_map", None, rmap([(t("type"), t("audit_verify")), (dumps(0), dumps(0))]), name="int key")
case(A, "missing_field", None, dumps({"limit": 1}), name="no type")
case(A, "wrong_type", None, dumps({"type": 1}), name="type not text")
case(A, "unknown_type", None, dumps({"type": "audit_nothing"}), name="unknown type")
case(A, "unknown_field", None, dumps({"type": "audit_verify", "x": 1}), name="unknown key")
case(A, "duplicate_key", None, rmap([(t("type"), t("audit_verify")), (t("type"), t("audit_verify"))]),
     name="type twice")
case(A, "missing_field", None, dumps({"type": "audit_query"}), name="query without limit")
case(A, "bad_value", None, dumps({"type": "audit_query", "limit": 1001}), name="limit 1001")
case(A, "wrong_type", None, dumps({"type": "audit_query", "limit": -1}), name="negative limit")
case(A, "wrong_type", None, dumps({"type": "audit_query", "limit": 1.0}), name="float limit")
case(A, "wrong_type", None, dumps({"type": "audit_query", "limit": cbor2.CBORTag(1, 5)}), name="tagged limit")
case(A, "malformed", None, dumps({"type": "audit_query", "limit": Raw(b"\xd8\x06\x05")}),
     name="tag 6 in a two-byte head (libcbor cannot hold it in one)")
case(A, "malformed", None, dumps({"type": "audit_query", "limit": Raw(b"\xc6\x05")}),
     name="tag 6 in its one-byte head")
case(A, "wrong_type", None, dumps({"type": "audit_appended", "first_seq": 2**64, "count": 0}),
     name="bignum 2^64 for a uint")
case(A, "bad_value", None, dumps({"type": "audit_query", "limit": 1, "event_type": ""}),
     name="empty event_type")
case(A, "bad_value", None, dumps({"type": "audit_append", "events": []}), name="no events")
case(A, "too_many", None, dumps({"type": "audit_append", "events": [{"time_ms": 0, "type": "p", "detail": ""}] * 1025}),
     name="1025 events")
case(A, "bad_value", None, dumps({"type": "audit_append", "events": [dict(EV, type="t" * 65)]}),
     name="event type of 65")
case(A, "bad_value", None, dumps({"type": "audit_append", "events": [dict(EV, type="")]}),
     name="empty event type")
case(A, "wrong_type", None, dumps({"type": "audit_append", "events": [dict(EV, time_ms=-1)]}),
     name="negative time_ms")
case(A, "not_map", None, dumps({"type": "audit_append", "events": [1]}), name="event not a map")
case(A, "unknown_field", None, dumps({"type": "audit_append", "events": [dict(EV, x=1)]}),
     name="event with an unknown key")
case(A, "missing_field", None, dumps({"type": "audit_append", "events": [{"type": "pair"}]}),
     name="event without time_ms")
case(A, "bad_value", None, dumps({"type": "audit_append", "events": [dict(EV, detail="{\x00}")]}),
     name="NUL in detail")
case(A, "wrong_type", None, dumps({"type": "audit_records", "records": [1]}), name="record not text")
case(A, "wrong_type", None, dumps({"type": "audit_records", "records": "a"}), name="records not array")
case(A, "too_many", None, dumps({"type": "audit_records", "records": ["a"] * 1001}), name="1001 records")
case(A, "wrong_type", None, dumps({"type": "audit_records", "records": [], "partial": 1}),
     name="partial as 1")
case(A, "bad_value", None, dumps({"type": "audit_records", "records": [], "partial": False}),
     name="partial false (CDDL: ? partial: true)")
case(A, "wrong_type", None, dumps({"type": "audit_verified", "ok": UNDEF, "records": 0}),
     name="ok undefined")
case(A, "wrong_type", None, dumps({"type": "audit_verified", "ok": True, "records": 0, "files": -1}),
     name="negative files")
case(A, "bad_value", None, dumps({"type": "audit_verified", "ok": True, "records": 0,
                                  "reason": "r" * 257}), name="reason of 257")
case(A, "bad_value", None, dumps({"type": "audit_error", "code": "oops", "message": "m"}),
     name="error code outside the set")
case(A, "missing_field", None, dumps({"type": "audit_error", "code": "io"}), name="error without message")

# ------------------------------------------------------------ envelopes

E = "envelope"
ID = bytes.fromhex("019b76daa80070018203040506070809")
FROM = b"\xbc" * 32
TO = b"\x70" * 32
SIG = b"\x55" * 64


def env_case(expect, kind, name, env=None, want=True):
    """Twice: in kith's canonical key order (its fixed-head path) and in
    another order (the general path); both must give the same verdict."""
    if env is None:
        env = {"id": ID, "from": FROM, "to": TO, "kind": kind, "sig": SIG}
    w = canon([env["id"], env["from"], env["to"], kind]) if expect == "ok" and want else None
    order = ["id", "to", "sig", "from", "kind"]
    fixed = head(5, len(env)) + b"".join(dumps(k) + dumps(env[k]) for k in order if k in env)
    case(E, expect, None, fixed, w, name + " (kith's key order)")
    case(E, expect, None, dumps(env), w, name + " (cbor2, another order)")


MSG = {"type": "message", "body": "hello"}
env_case("ok", MSG, "message")
env_case("ok", {"type": "message", "body": "b", "blocks": [{"type": "text", "text": "x"}],
                "handling_mode": "steer", "zz": {"n": [1, -1, 2**64 - 1, -2**64, 1.5, 1.1, -0.0,
                                                         None, True, b"\x00"]}}, "message with extras")
env_case("ok", {"type": "request", "intent": "i", "params": {"b": 1, "a": 2, "aa": 3, "": 0}},
         "request, params keys sorted")
env_case("ok", {"type": "request", "intent": "i", "params": Raw(b"\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00")},
         "double 1.5 becomes half", want=False)
env_case("ok", {"type": "response", "in_reply_to": ID, "status": "failed", "result": None}, "response")
env_case("ok", {"type": "ack", "in_reply_to": ID}, "ack")
env_case("ok", {"type": "lifecycle", "kind": "mob.peer_added", "params": {}}, "lifecycle")
env_case("ok", {"type": "incarnation_fenced_message", "body": "b",
                "expected_recipient": {"mob_id": "m", "agent_identity": "a", "host_id": "h",
                                       "binding_generation": 1, "member_session_id": "s",
                                       "generation": 2, "fence_token": 3}}, "fenced")
env_case("missing_field", {"body": "x"}, "kind without type")
env_case("wrong_type", {"type": 1}, "type not text")
env_case("unknown_kind", {"type": "Message", "body": "x"}, "unknown kind")
env_case("missing_field", {"type": "message"}, "message without body")
env_case("wrong_type", {"type": "message", "body": None}, "body null")
env_case("wrong_type", {"type": "message", "body": "b", "blocks": None}, "blocks null")
env_case("bad_value", {"type": "message", "body": "b", "handling_mode": "now"}, "handling_mode bad")
env_case("bad_value", {"type": "response", "in_reply_to": ID, "status": "ok", "result": 1}, "status bad")
env_case("bad_length", {"type": "ack", "in_reply_to": ID[:15]}, "in_reply_to of 15")
env_case("wrong_type", {"type": "ack", "in_reply_to": "x" * 16}, "in_reply_to as text")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": cbor2.CBORTag(1, 0)}, "tag")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": UNDEF}, "undefined")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": Raw(b"\xc6\x00")}, "tag 6, short head")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": Raw(b"\xd8\x06\x00")}, "tag 6, long head")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": HALF_NAN}, "NaN")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": float("inf")}, "infinity")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": Raw(b"\xe0")}, "simple(0)")
env_case("unsupported_type", {"type": "request", "intent": "i", "params": Raw(b"\xf8\x20")}, "simple(32)")
env_case("ill_formed", {"type": "request", "intent": "i", "params": SIMPLE_2B_TRUE}, "two-byte true")
env_case("non_text_key", {"type": "request", "intent": "i", "params": {1: 2}}, "int key in params")
env_case("non_text_key", {"type": "request", "intent": "i", "params": {b"k": 2}}, "bytes key in params")
env_case("duplicate_key", Raw(rmap([(t("type"), t("message")), (t("body"), t("a")),
                                    (t("body"), t("a"))]).b), "body twice")
env_case("duplicate_key", Raw(rmap([(t("type"), t("message")), (t("type"), t("message")),
                                    (t("body"), t("a"))]).b), "type twice")
env_case("duplicate_key", {"type": "request", "intent": "i",
                           "params": Raw(rmap([(t("a"), dumps(1)), (t("a"), dumps(2))]).b)},
         "key twice in params")
env_case("duplicate_key", {"type": "request", "intent": "i",
                           "params": Raw(rmap([(t("a"), dumps(1)), (Raw(b"\x78\x01a").b, dumps(2))]).b)},
         "key twice in params, once non-shortest")
env_case("indefinite_length", {"type": "request", "intent": "i", "params": Raw(b"\x9f\xff")},
         "indefinite array")
env_case("indefinite_length", {"type": "message", "body": Raw(b"\x7f\x61a\xff")}, "indefinite text")
env_case("bad_utf8", {"type": "message", "body": Raw(b"\x62\xc0\x80")}, "overlong UTF-8")
env_case("truncated", {"type": "request", "intent": "i", "params": Raw(b"\x5a\xff\xff\xff\xff")},
         "byte string longer than the frame")
env_case("ill_formed", {"type": "request", "intent": "i", "params": Raw(b"\xff")}, "stray break")
env_case("ill_formed", {"type": "request", "intent": "i", "params": Raw(b"\x1d")}, "reserved info 29")
env_case("too_deep", {"type": "request", "intent": "i", "params": Raw(b"\x81" * 30 + b"\x00")},
         "nesting 33")
env_case("ok", {"type": "request", "intent": "i", "params": Raw(b"\x81" * 29 + b"\x00")}, "nesting 32",
         want=False)
base = {"id": ID, "from": FROM, "to": TO, "kind": MSG, "sig": SIG}
case(E, "missing_field", None, dumps({k: v for k, v in base.items() if k != "sig"}), name="no sig")
case(E, "unknown_field", None, dumps(dict(base, extra=1)), name="sixth key")
case(E, "bad_length", None, dumps(dict(base, id=ID[:15])), name="id of 15")
case(E, "bad_length", None, dumps(dict(base, sig=SIG + b"\x00")), name="sig of 65")
case(E, "wrong_type", None, dumps(dict(base, to="x")), name="to as text")
case(E, "wrong_type", None, dumps(dict(base, kind=[])), name="kind as array")
case(E, "wrong_type", None, dumps([ID, FROM, TO, MSG, SIG]), name="array envelope")
case(E, "non_text_key", None, rmap([(dumps(k), dumps(v)) for k, v in base.items()] + [(dumps(0), dumps(0))]),
     name="int key in the envelope")
case(E, "duplicate_key", None, rmap([(dumps(k), dumps(v)) for k, v in base.items()] +
                                    [(dumps("id"), dumps(ID))]), name="id twice")
case(E, "truncated", None, b"", name="empty")
case(E, "trailing_bytes", None, dumps(base) + b"\xf6", name="trailing null")
# Tags are refused by the data model (WIRE §3.2 rule 6) before any field is read.
case(E, "unsupported_type", None, dumps(dict(base, id=cbor2.CBORTag(37, ID))), name="tagged id")

# ------------------------------------------------------------ canonical encoder

C = "canon"
for v in [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -24, -25, -2**64,
          0.0, -0.0, 1.0, 1.5, 1.1, 65505.0, 100000.0, 3.4028234663852886e38, 1e300,
          5.960464477539063e-8, 1e-7, float("inf"), float("-inf"),
          "", "a", "\u00fc", "\U00010151", "x" * 24, "x" * 256, b"", b"\x01" * 23, b"\x01" * 24,
          [], [1, [2, 3]], [0] * 24, {}, {"b": 1, "a": 2}, {"aa": 1, "b": 2, "": 3},
          {1000: 1, "a": 2}, {10: 1, 1: 2, -1: 3, "z": 4, b"a": 5, 100: 6},
          {"a": {"c": [{"z": 1, "y": 2}], "b": None}}, True, False, None,
          cbor2.CBORTag(1, 1363896240), cbor2.CBORTag(2**32, "x"), cbor2.undefined]:
    case(C, "ok", None, dumps(v), canon(v), "cbor2 value %r" % (v,))
# cbor2 (5.4) writes the largest binary16, 65504.0, as a binary32 (fa477fe000)
# in canonical mode; RFC 8949 Appendix A and §4.2.1 say f97bff, as kith does.
case(C, "ok", None, dumps(65504.0), bytes.fromhex("f97bff"), "65504.0, largest half (cbor2 disagrees)")
# Well-formed, but libcbor 0.8 holds no simple value beyond false/true/null/undefined.
for v in (0, 19, 32, 255):
    case(C, "unsupported", None, dumps(cbor2.CBORSimpleValue(v)), None, "simple(%d)" % v)
# Non-canonical inputs that cbor2's canonical form rewrites.
case(C, "ok", None, b"\x1b" + (5).to_bytes(8, "big"), b"\x05", "uint 5 in 8 bytes")
case(C, "ok", None, b"\x39\x00\x00", b"\x20", "-1 in 2 bytes")
case(C, "ok", None, b"\x5f\x41\x01\x42\x02\x03\xff", canon(b"\x01\x02\x03"), "chunked bytes")
case(C, "ok", None, b"\x7f\x61a\x60\x61b\xff", canon("ab"), "chunked text")
case(C, "ok", None, b"\x9f\x01\x9f\xff\xff", canon([1, []]), "indefinite arrays")
case(C, "ok", None, b"\xbf\x61b\x01\x61a\x02\xff", canon({"a": 2, "b": 1}), "indefinite map")
case(C, "ok", None, b"\xfb" + struct.pack(">d", 1.0), b"\xf9\x3c\x00", "1.0 as double")
case(C, "ok", None, b"\xfa" + struct.pack(">f", 0.5), b"\xf9\x38\x00", "0.5 as single")
case(C, "ok", None, b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x01", b"\xf9\x7e\x00", "a NaN payload becomes f97e00")
case(C, "ok", None, b"\xd8\x01\x00", b"\xc1\x00", "tag 1 in 2 bytes")
# libcbor 0.8 refuses tags 6..20 in their one-byte head (c6..d4) and took
# them in a longer one, which the encoder then wrote as c6..d4: kith's
# loader refuses them in any head, so what loads re-encodes to what loads.
for tag in (6, 15, 20):
    for width in (0, 1, 2, 4, 8):
        case(C, "unsupported", None, head(6, tag, width) + b"\x00", None, "tag %d, head width %d" % (tag, width))
case(C, "ok", None, b"\xd8\x05\x00", b"\xc5\x00", "tag 5 in 2 bytes")
case(C, "ok", None, b"\xd9\x00\x15\x00", b"\xd5\x00", "tag 21 in 3 bytes")
case(C, "truncated", None, b"\xd8\x06\x81", None, "tag 6 then a cut array: truncated first")
case(C, "duplicate_key", None, rmap([(t("a"), dumps(1)), (t("a"), dumps(2))]).b, None, "key twice")
case(C, "duplicate_key", None, rmap([(t("a"), dumps(1)), (b"\x78\x01a", dumps(2))]).b, None,
     "key twice, once non-shortest")
case(C, "duplicate_key", None, rmap([(dumps(1), dumps(1)), (b"\x18\x01", dumps(2))]).b, None,
     "int key twice, once non-shortest")
case(C, "ill_formed", None, b"\xf8\x18", None, "simple(24) in two bytes")
case(C, "ill_formed", None, b"\x5f\x61a\xff", None, "text chunk in a byte string")
case(C, "ill_formed", None, b"\x5f\x5f\xff\xff", None, "nested indefinite chunk")
case(C, "ill_formed", None, b"\x3f", None, "indefinite negative integer")
case(C, "ill_formed", None, b"\xdf\x00", None, "indefinite tag")
case(C, "truncated", None, b"\x9f\x01", None, "indefinite array without break")
case(C, "truncated", None, b"\x1b\x00\x00", None, "uint cut short")
case(C, "truncated", None, b"\xc1", None, "tag without its item")
case(C, "trailing_bytes", None, b"\x00\x00", None, "two items")

print("# Generated by tests/data/cbor_cases.py (cbor2); see it for the format. Do not edit.")
print("\n".join(out))
