#!/usr/bin/python3
"""tests/integration/test_cddl.py — check spec/*.cddl and validate the golden
envelope vectors (spec/vectors/envelopes.json) against spec/envelope.cddl.

No CDDL instance validator is packaged in Debian 12 or on npm (spec/WIRE.md,
"CDDL validation"), so the work is split: the npm package `cddl` (pinned in
tests/package.json and package-lock.json, installed by tools/setup into
tests/node_modules; this test never reaches a registry) parses each schema — a syntax check by a parser kith did not write — and hands over
its AST; the matcher below walks that AST over the CBOR that python3-cbor2
decodes. The matcher knows only the CDDL subset the spec uses and fails on
anything else, so a schema change can never be silently skipped. Negative
controls (vectors that must not match) keep the check from passing vacuously.
"""
import json
import os
import shutil
import subprocess
import sys

import cbor2

SRC = os.environ.get("KITH_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("KITH_BUILD_DIR")

results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    if ok:
        results["passed"] += 1
        print(f"ok   {name}")
    else:
        results["failed"] += 1
        print(f"FAIL {name}{': ' + detail if detail else ''}")


# ------------------------------------------------------------------ npm cddl

def installed_cddl():
    """The folder holding node_modules/cddl, as tools/setup installed it from
    tests/package-lock.json. Fails with the fix when it is missing: the test
    never installs anything itself."""
    if shutil.which("node") is None:
        sys.exit("test_cddl: node not found: run tools/setup (it installs Node.js)")
    root = os.path.join(SRC, "tests")
    if not os.path.exists(os.path.join(root, "node_modules", "cddl", "package.json")):
        sys.exit("test_cddl: the npm package cddl is not installed in tests/node_modules: "
                 "run tools/setup (it installs tests/package-lock.json with npm ci)")
    return root


AST_JS = """
import { parse } from 'cddl'
process.stdout.write(JSON.stringify(parse(process.argv[1])))
"""


def cddl_syntax_ok(root, path):
    r = subprocess.run(["node", os.path.join(root, "node_modules", "cddl", "bin", "cddl.js"),
                        "validate", path], cwd=root, capture_output=True, text=True)
    return r.returncode == 0 and "Valid CDDL" in r.stdout, r.stdout + r.stderr


def cddl_ast(root, path):
    r = subprocess.run(["node", "--input-type=module", "-e", AST_JS, path],
                       cwd=root, capture_output=True, text=True, check=True)
    return {rule["Name"]: rule for rule in json.loads(r.stdout)}


# ------------------------------------------------------------------ matcher

class Unsupported(Exception):
    """The schema uses CDDL this matcher does not implement."""


NATIVE = {"any", "bool", "int", "uint", "nint", "float", "float16", "float32",
          "float64", "bstr", "bytes", "tstr", "text", "nil", "null", "true", "false"}


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def match_native(v, t):
    if t == "any":
        return True
    if t == "bool":
        return isinstance(v, bool)
    if t == "true" or t == "false":
        return v is (t == "true")
    if t == "int":
        return is_int(v)
    if t == "uint":
        return is_int(v) and v >= 0
    if t == "nint":
        return is_int(v) and v < 0
    if t.startswith("float"):
        return isinstance(v, float)
    if t in ("bstr", "bytes"):
        return isinstance(v, bytes)
    if t in ("tstr", "text"):
        return isinstance(v, str)
    if t in ("nil", "null"):
        return v is None
    raise Unsupported(f"type {t}")


def literal_value(node):
    if isinstance(node, dict) and node.get("Type") == "literal":
        return node["Value"]
    raise Unsupported(f"operand {node!r}")


def match_size(v, operand):
    n = len(v.encode() if isinstance(v, str) else v)
    if isinstance(operand, dict) and operand.get("Type") == "range":
        lo = literal_value(operand["Value"]["Min"])
        hi = literal_value(operand["Value"]["Max"])
        return lo <= n <= hi if operand["Value"]["Inclusive"] else lo <= n < hi
    return n == literal_value(operand)


class Schema:
    def __init__(self, rules):
        self.rules = rules

    def match(self, v, types):
        """types: a type choice (list) or one alternative."""
        alts = types if isinstance(types, list) else [types]
        return any(self.match_one(v, t) for t in alts)

    def match_one(self, v, t):
        if isinstance(t, str):
            if t in NATIVE:
                return match_native(v, t)
            return self.match_rule(v, t)
        kind = t.get("Type")
        if isinstance(kind, str) and kind in NATIVE and "Operator" in t:
            op = t["Operator"]
            if op["Type"] != "size":
                raise Unsupported(f"control .{op['Type']}")
            return match_native(v, kind) and match_size(v, op["Value"])
        if t.get("Operator"):
            raise Unsupported(f"control on {kind}")
        if kind == "literal":
            lit = t["Value"]
            return type(v) is type(lit) and v == lit
        if kind == "group" and "Properties" in t:
            return self.match_map(v, t["Properties"])
        if kind == "group" and isinstance(t.get("Value"), str):
            if t.get("Unwrapped"):
                raise Unsupported("unwrap ~")
            return self.match_rule(v, t["Value"])
        if kind == "array":
            return self.match_array(v, t["Values"])
        raise Unsupported(f"type node {json.dumps(t)[:120]}")

    def match_rule(self, v, name):
        if name in NATIVE:
            return match_native(v, name)
        rule = self.rules.get(name)
        if rule is None:
            raise Unsupported(f"undefined rule {name}")
        if rule["Type"] == "variable":
            if rule.get("Operator"):
                raise Unsupported(f"control on rule {name}")
            return self.match(v, rule["PropertyType"])
        if rule["Type"] == "group":
            return self.match_map(v, rule["Properties"])
        if rule["Type"] == "array":
            return self.match_array(v, rule["Values"])
        raise Unsupported(f"rule kind {rule['Type']}")

    def match_map(self, v, props):
        if not isinstance(v, dict):
            return False
        left = dict(v)
        catch_all = []
        for p in props:
            if isinstance(p, list):
                raise Unsupported("group choice // in a map")
            occ = p["Occurrence"]
            key = p["Name"]
            if not p["HasCut"] and key in NATIVE:        # `* tstr => type`
                catch_all.append(p)
                continue
            if not p["HasCut"]:
                raise Unsupported(f"non-cut member key {key!r}")
            if key in left:
                if occ["m"] == 0 or not self.match(left.pop(key), p["Type"]):
                    return False                          # a cut: no fallback
            elif occ["n"] > 0:
                return False
        for k, val in left.items():
            if not any(match_native(k, p["Name"]) and self.match(val, p["Type"])
                       for p in catch_all):
                return False
        return True

    def match_array(self, v, values):
        if not isinstance(v, list):
            return False
        i = 0
        for p in values:
            if isinstance(p, list):
                raise Unsupported("group choice // in an array")
            lo, hi = p["Occurrence"]["n"], p["Occurrence"]["m"]
            count = 0
            while (hi is None or count < hi) and i < len(v) and self.match(v[i], p["Type"]):
                i += 1
                count += 1
            if count < lo:
                return False
        return i == len(v)


# ------------------------------------------------------------------ vectors

def frame_payload(frame):
    """The CBOR item of a frame, or None when the frame itself is bad."""
    if len(frame) < 4:
        return None
    n = int.from_bytes(frame[:4], "big")
    if n > 1024 * 1024 or n != len(frame) - 4:
        return None
    return frame[4:]


def decode(payload):
    try:
        return cbor2.loads(payload), None
    except Exception as e:  # cbor2 raises several types for bad input
        return None, str(e)


# Invalid vectors whose reason is a schema violation: the CDDL must refuse
# them. bad_signature and weak_key are cryptographic: the CDDL must accept
# them (a schema that refuses everything would pass the first list). The
# rest are encoding-level rules written in prose (duplicate keys, definite
# lengths, depth, trailing bytes, truncation, frame size).
SCHEMA_REASONS = {"unknown_kind", "unknown_field", "missing_field", "bad_length",
                  "wrong_type", "bad_value", "unsupported_type", "non_text_key"}
CRYPTO_REASONS = {"bad_signature", "weak_key"}


def check_envelopes(schema):
    path = os.path.join(SRC, "spec", "vectors", "envelopes.json")
    with open(path, encoding="utf-8") as f:
        vectors = json.load(f)
    for group in ("valid", "accepted_noncanonical"):
        for vec in vectors[group]:
            item, err = decode(frame_payload(bytes.fromhex(vec["frame_hex"])) or b"")
            check(f"envelope {group}/{vec['name']} matches `envelope`",
                  err is None and schema.match_rule(item, "envelope"), err or "")
            if "signable_hex" in vec:
                item, err = decode(bytes.fromhex(vec["signable_hex"]))
                check(f"envelope {group}/{vec['name']} signable matches `signable`",
                      err is None and schema.match_rule(item, "signable"), err or "")
    seen = set()
    for vec in vectors["invalid"]:
        reason = vec["reason"]
        payload = frame_payload(bytes.fromhex(vec["frame_hex"]))
        item, err = decode(payload) if payload is not None else (None, "bad frame")
        if reason in SCHEMA_REASONS:
            seen.add(reason)
            check(f"envelope invalid/{vec['name']} ({reason}) refused by `envelope`",
                  err is not None or not schema.match_rule(item, "envelope"))
        elif reason in CRYPTO_REASONS:
            check(f"envelope invalid/{vec['name']} ({reason}) is schema-valid",
                  err is None and schema.match_rule(item, "envelope"), err or "")
    missing = SCHEMA_REASONS - seen
    check("every schema-level rejection has a negative vector", not missing,
          f"none for {sorted(missing)}")
    # The Meerkat-profile vectors (WIRE.md §23): its kinds and optional fields.
    with open(os.path.join(SRC, "spec", "vectors", "meerkat.json"), encoding="utf-8") as f:
        meerkat = json.load(f)
    for vec in meerkat["valid"]:
        item, err = decode(frame_payload(bytes.fromhex(vec["frame_hex"])) or b"")
        check(f"envelope meerkat/{vec['name']} matches `envelope`",
              err is None and schema.match_rule(item, "envelope"), err or "")
    item, err = decode(bytes.fromhex(meerkat["meerkat_rct_signable_hex"]))
    check("meerkat rct signable matches `signable`",
          err is None and schema.match_rule(item, "signable"), err or "")


# ------------------------------------------------------------------ worker.cddl

TURN = bytes(range(16))
WORKER_GOOD = {
    "worker-request": [
        {"type": "turn", "turn_id": TURN, "session_id": "comms",
         "message": {"role": "user", "content": "hi"},
         "history": [{"role": "assistant", "content": "",
                      "tool_calls": [{"id": "c1", "name": "peers", "arguments": "{}"}]},
                     {"role": "tool", "content": "[]", "tool_call_id": "c1"}],
         "tools": [{"name": "peers", "description": "list peers",
                    "parameters": '{"type":"object"}', "executor": "router"}],
         "limits": {"max_tool_iterations": 60, "turn_timeout_s": 600},
         "origin": {"channel": "comms", "envelope_id": TURN, "from": bytes(32),
                    "envelope_type": "request"}},
        {"type": "steer", "turn_id": TURN, "content": "shorter"},
        {"type": "stop", "turn_id": TURN},
        {"type": "tool_result", "turn_id": TURN, "id": "c1", "result": "[]", "is_error": False},
        {"type": "audit_append", "events": [{"time_ms": 1, "type": "pair", "detail": "{}"}]},
        {"type": "audit_query", "limit": 10, "event_type": "pair"},
        {"type": "audit_verify"},
    ],
    "worker-reply": [
        {"type": "partial", "turn_id": TURN, "seq": 0, "event": {"type": "chunk", "text": "he"}},
        {"type": "partial", "turn_id": TURN, "seq": 1, "event": {"type": "chunk_reset"}},
        {"type": "partial", "turn_id": TURN, "seq": 2,
         "event": {"type": "tool_result", "id": "c1", "result": "[1, 2.5]", "is_error": False}},
        {"type": "partial", "turn_id": TURN, "seq": 3,
         "event": {"type": "llm_request", "provider": "scripted", "iteration": 0}},
        {"type": "done", "turn_id": TURN, "full_response": "hello", "tool_iterations": 0},
        {"type": "error", "turn_id": TURN, "code": "PROVIDER_ERROR", "message": "429"},
        {"type": "stopped", "turn_id": TURN},
        {"type": "audit_appended", "first_seq": 7, "count": 1},
        {"type": "audit_records", "records": ['{"seq":1}']},
        {"type": "audit_records", "partial": True, "records": ['{"seq":1}']},
        {"type": "audit_verified", "ok": False, "records": 3, "first_bad": 2, "reason": "hash"},
        {"type": "audit_error", "code": "io", "message": "cannot fsync audit.log"},
    ],
}
WORKER_BAD = {
    "worker-request": [
        {"type": "turn", "turn_id": TURN[:15], "session_id": "s", "message": {"role": "user", "content": "x"},
         "history": [], "tools": [], "limits": {"max_tool_iterations": 1, "turn_timeout_s": 1},
         "origin": {"channel": "ws"}},
        {"type": "turn", "turn_id": TURN, "session_id": "", "message": {"role": "user", "content": "x"},
         "history": [], "tools": [], "limits": {"max_tool_iterations": 1, "turn_timeout_s": 1},
         "origin": {"channel": "ws"}},
        {"type": "turn", "turn_id": TURN, "session_id": "s", "message": {"role": "user", "content": "x"},
         "history": [], "tools": [], "limits": {"max_tool_iterations": 1, "turn_timeout_s": 1}},
        {"type": "steer", "turn_id": TURN, "content": None},
        {"type": "tool_result", "turn_id": TURN, "id": "c1", "result": {"a": 1}, "is_error": False},
        {"type": "audit_append", "events": []},
    ],
    "worker-reply": [
        {"type": "partial", "turn_id": TURN, "seq": -1, "event": {"type": "chunk", "text": "x"}},
        {"type": "partial", "turn_id": TURN, "seq": 0, "event": {"type": "chunk"}},
        {"turn_id": TURN, "seq": 0, "event": {"type": "chunk", "text": "x"}},
        {"type": "error", "turn_id": TURN, "code": "SESSION_BUSY", "message": "x"},
        {"type": "control", "turn_id": TURN, "outcome": "no_active_turn"},
        {"type": "audit_error", "code": "disk_full", "message": "x"},
    ],
}


def check_worker(schema):
    for rule, items in WORKER_GOOD.items():
        for n, item in enumerate(items):
            back = cbor2.loads(cbor2.dumps(item))
            check(f"worker {rule} example {n} matches", schema.match_rule(back, rule))
    for rule, items in WORKER_BAD.items():
        for n, item in enumerate(items):
            back = cbor2.loads(cbor2.dumps(item))
            check(f"worker {rule} counter-example {n} refused", not schema.match_rule(back, rule))
    # What kith's own encoder (proto/worker_msg.c) wrote: the good seeds
    # tests/worker_msg_test.c leaves in fuzz/corpus/worker_msg/.
    corpus = os.path.join(SRC, "fuzz", "corpus", "worker_msg")
    seeds = {"worker-request": ["turn_full", "turn_min", "turn_hand", "steer", "stop", "tool_result"],
             "worker-reply": [f"partial_{i}" for i in range(9)] +
                             ["done", "done_min", "stopped", "stopped_msg", "error"]}
    for rule, names in seeds.items():
        for name in names:
            with open(os.path.join(corpus, name), "rb") as f:
                check(f"worker_msg seed {name} matches {rule}", schema.match_rule(cbor2.loads(f.read()), rule))


def main():
    root = installed_cddl()
    schemas = {}
    for name in ("envelope.cddl", "worker.cddl"):
        path = os.path.join(SRC, "spec", name)
        ok, out = cddl_syntax_ok(root, path)
        check(f"{name} parses (npm cddl)", ok, out.strip())
        if ok:
            schemas[name] = Schema(cddl_ast(root, path))
    try:
        if "envelope.cddl" in schemas:
            check_envelopes(schemas["envelope.cddl"])
        if "worker.cddl" in schemas:
            check_worker(schemas["worker.cddl"])
    except Unsupported as e:
        check("schema within the matcher's CDDL subset", False, str(e))
    print(f"test_cddl: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
