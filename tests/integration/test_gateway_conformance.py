"""tests/integration/test_gateway_conformance.py — the real `kith daemon
--echo` probed from raw sockets as a smuggler and a conformance suite would
(RFC 9112, RFC 6455, the WHATWG event-stream rules; spec/WIRE.md §11-§13,
§18): every framing trick on the HTTP/1.1 server gets its own 4xx code in a
JSON body with `Connection: close`, nothing after it is answered, and the
next connection is served; what RFC 9112 does allow (leading zeros, chunk
extensions and trailers, a body on GET, absolute-form, HTTP/1.0 keep-alive,
pipelining after a body, a head sent one octet at a time, heads exactly at
16 KiB and 100 fields) is served; Autobahn-style WebSocket frames get their
exact close codes; and the event stream refuses every Last-Event-ID that is
not one id (two fields included), reports ids from the future as a
stream_gap, and sends keep-alives."""

import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results  # noqa: E402

TESTS = []
WAIT_S = 20  # a bound on every read: a hang fails the case, never the suite


def test(fn):
    TESTS.append(fn)
    return fn


# ------------------------------------------------------------------ HTTP helpers

def exchange(node, data, pieces=None):
    """Sends data (or each of pieces in turn) on a fresh connection; returns
    (bytes read until the server closed, whether it reset)."""
    with socket.create_connection(("127.0.0.1", node.gw_port), timeout=WAIT_S) as s:
        for p in pieces if pieces is not None else [data]:
            s.sendall(p)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, False
            out += chunk


def responses(data):
    """Splits a byte stream into [(status, headers, body)] by Content-Length
    (interim 1xx answers have none)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if 100 <= status < 200 else int(headers["content-length"])
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def statuses(node, data, pieces=None):
    out, _ = exchange(node, data, pieces)
    return [s for s, _, _ in responses(out)]


def health_ok(node):
    got = statuses(node, b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert got == [200], got


H = b"Host: a\r\n"
CLOSE = b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
HEALTH = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
BODY = b'{"message":"hi"}'


def post(extra, body=b"", version=b"HTTP/1.1"):
    return b"POST /webhook " + version + b"\r\n" + H + extra + b"\r\n" + body


def webhook(extra, body):
    return post(b"Content-Type: application/json\r\n" + extra, body)


def head_of(total, tail=b"Connection: close\r\n"):
    """A GET /health head of exactly `total` octets (CRLFs included)."""
    base = b"GET /health HTTP/1.1\r\n" + H + tail
    pad = total - len(base) - len(b"X: \r\n\r\n")
    return base + b"X: " + b"a" * pad + b"\r\n\r\n"


# Each a request the gateway must refuse: (name, bytes, status, code). A
# GET /health follows every one in the same write: it must never be answered.
REFUSED = [
    ("cl_with_te", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
     400, "content_length_with_transfer_encoding"),
    ("te_with_cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
     400, "content_length_with_transfer_encoding"),
    ("cl_twice_equal", post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"),
     400, "content_length_duplicate"),
    ("cl_twice_different", post(b"Content-Length: 2\r\nContent-Length: 3\r\n", b"{}"),
     400, "content_length_conflict"),
    ("cl_list_different", post(b"Content-Length: 2, 3\r\n", b"{}"), 400, "content_length_conflict"),
    ("cl_minus", post(b"Content-Length: -1\r\n"), 400, "content_length_invalid"),
    ("cl_plus", post(b"Content-Length: +2\r\n", b"{}"), 400, "content_length_invalid"),
    ("cl_inner_space", post(b"Content-Length: 1 2\r\n"), 400, "content_length_invalid"),
    ("cl_hex", post(b"Content-Length: 0x2\r\n"), 400, "content_length_invalid"),
    ("cl_empty", post(b"Content-Length: \r\n"), 400, "content_length_invalid"),
    ("cl_arabic_digit", post(b"Content-Length: \xd9\xa3\r\n"), 400, "content_length_invalid"),
    ("cl_2_64", post(b"Content-Length: 18446744073709551616\r\n"), 400, "content_length_overflow"),
    ("cl_2_64_minus_1", post(b"Content-Length: 18446744073709551615\r\n"), 413, "body_too_large"),
    ("te_identity", post(b"Transfer-Encoding: identity\r\n"), 400, "transfer_encoding_not_chunked"),
    ("te_chunked_not_last", post(b"Transfer-Encoding: chunked, gzip\r\n"), 400,
     "transfer_encoding_not_chunked"),
    ("te_xchunked", post(b"Transfer-Encoding: xchunked\r\n"), 400, "transfer_encoding_not_chunked"),
    ("te_gzip_chunked", post(b"Transfer-Encoding: gzip, chunked\r\n"), 501,
     "transfer_encoding_unsupported"),
    ("te_chunked_twice", post(b"Transfer-Encoding: chunked, chunked\r\n"), 400,
     "transfer_encoding_invalid"),
    ("te_params", post(b"Transfer-Encoding: chunked;q=1\r\n"), 400, "transfer_encoding_invalid"),
    ("te_empty", post(b"Transfer-Encoding: \r\n"), 400, "transfer_encoding_invalid"),
    ("te_vtab", post(b"Transfer-Encoding: \x0bchunked\r\n"), 400, "bad_field_value"),
    ("te_two_lines", post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"), 400,
     "transfer_encoding_duplicate"),
    ("te_on_http10", post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"HTTP/1.0"), 400,
     "transfer_encoding_in_http10"),
    ("chunk_17_digits", post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff0\r\n"), 400,
     "chunk_size_overflow"),
    ("chunk_2_64_minus_1", post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\n"), 413,
     "body_too_large"),
    ("chunk_sum_wraps", post(b"Transfer-Encoding: chunked\r\n", b"1\r\na\r\nffffffffffffffff\r\n"),
     413, "body_too_large"),
    ("chunk_negative", post(b"Transfer-Encoding: chunked\r\n", b"-2\r\n{}\r\n0\r\n\r\n"), 400,
     "bad_chunk_size"),
    ("chunk_0x", post(b"Transfer-Encoding: chunked\r\n", b"0x2\r\n{}\r\n0\r\n\r\n"), 400,
     "bad_chunk_size"),
    ("chunk_size_empty", post(b"Transfer-Encoding: chunked\r\n", b"\r\n"), 400, "bad_chunk_size"),
    ("chunk_ext_empty", post(b"Transfer-Encoding: chunked\r\n", b"2;\r\n{}\r\n0\r\n\r\n"), 400,
     "bad_chunk_ext"),
    ("chunk_size_bare_lf", post(b"Transfer-Encoding: chunked\r\n", b"2\n{}\r\n0\r\n\r\n"), 400,
     "bare_lf"),
    ("chunk_data_bare_lf", post(b"Transfer-Encoding: chunked\r\n", b"2\r\n{}\n0\r\n\r\n"), 400,
     "bare_lf"),
    ("last_chunk_bare_lf", post(b"Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\n\r\n"), 400,
     "bare_lf"),
    ("chunked_end_bare_lf", post(b"Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\n"), 400,
     "bare_lf"),
    ("chunk_data_long", post(b"Transfer-Encoding: chunked\r\n", b"1\r\n{}\r\n0\r\n\r\n"), 400,
     "bad_chunk_data_end"),
    ("trailer_obs_fold", post(b"Transfer-Encoding: chunked\r\n", b"0\r\nT: a\r\n b\r\n\r\n"), 400,
     "obs_fold"),
    ("trailer_space_before_colon", post(b"Transfer-Encoding: chunked\r\n", b"0\r\nT : a\r\n\r\n"),
     400, "space_before_colon"),
    ("head_bare_lf_end", b"GET /health HTTP/1.1\r\nHost: a\r\n\n", 400, "bare_lf"),
    ("head_all_bare_lf", b"GET /health HTTP/1.1\nHost: a\n\n", 400, "bare_lf"),
    ("leading_bare_lf", b"\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare_lf"),
    ("obs_fold", b"GET /health HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400, "obs_fold"),
    ("first_field_folded", b"GET /health HTTP/1.1\r\n Host: a\r\n\r\n", 400, "obs_fold"),
    ("nul_in_value", b"GET /health HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400,
     "bad_field_value"),
    ("cr_in_value", b"GET /health HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "bare_cr"),
    ("del_in_value", b"GET /health HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400,
     "bad_field_value"),
    ("space_before_colon", b"GET /health HTTP/1.1\r\nHost : a\r\n\r\n", 400, "space_before_colon"),
    ("tab_before_colon", b"GET /health HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "space_before_colon"),
    ("empty_field_name", b"GET /health HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n", 400, "bad_field_name"),
    ("no_colon", b"GET /health HTTP/1.1\r\nHost: a\r\nfoo\r\n\r\n", 400, "bad_field_name"),
    ("high_octet_in_name", b"GET /health HTTP/1.1\r\nHost: a\r\nX\x80: 1\r\n\r\n", 400,
     "bad_field_name"),
    ("absolute_with_userinfo", b"GET http://u@x/health HTTP/1.1\r\nHost: a\r\n\r\n", 400,
     "bad_target"),
    ("absolute_empty_host", b"GET http:///health HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    ("authority_form_on_get", b"GET x:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    ("asterisk_on_get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    ("nul_in_target", b"GET /hea\x00lth HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    ("http_0_9", b"GET /health\r\n\r\n", 400, "bad_target"),
    ("two_spaces", b"GET  /health HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"),
    ("lowercase_version", b"GET /health http/1.1\r\nHost: a\r\n\r\n", 400, "bad_version"),
    ("version_1_10", b"GET /health HTTP/1.10\r\nHost: a\r\n\r\n", 400, "bad_version"),
    ("space_after_version", b"GET /health HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "bad_version"),
    ("host_userinfo", b"GET /health HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "host_invalid"),
    ("host_list", b"GET /health HTTP/1.1\r\nHost: a, b\r\n\r\n", 400, "host_invalid"),
    ("absolute_without_host", b"GET http://x/health HTTP/1.1\r\n\r\n", 400, "host_missing"),
    ("host_port_6_digits", b"GET /health HTTP/1.1\r\nHost: a:000080\r\n\r\n", 400, "host_invalid"),
    ("host_port_65536", b"GET /health HTTP/1.1\r\nHost: a:65536\r\n\r\n", 400, "host_invalid"),
    ("absolute_port_6_digits", b"GET http://a:000080/health HTTP/1.1\r\nHost: a\r\n\r\n", 400,
     "bad_target"),
    ("head_16385", head_of(16385, b""), 431, "head_too_large"),
    ("crlfs_then_head_16385", b"\r\n" * 8000 + head_of(385, b""), 431, "head_too_large"),
    ("fields_101", b"GET /health HTTP/1.1\r\n" + H +
     b"".join(b"X%d: 1\r\n" % i for i in range(100)) + b"\r\n", 431, "too_many_fields"),
    ("target_8193", b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\n" + H + b"\r\n", 414,
     "target_too_long"),
    ("upgrade_with_body", b"GET /ws/echo HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\n"
     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
     b"Sec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello", 400, "websocket_handshake"),
]


@test
def framing_tricks_are_refused(node):
    """Each refusal: one answer, its status and code in a JSON body,
    `Connection: close`, nothing answered after it (the GET behind it in the
    same write included), and the next connection is served."""
    wrong = []
    for name, req, status, code in REFUSED:
        out, _ = exchange(node, req + HEALTH)
        got = responses(out)
        ok = len(got) == 1
        if ok:
            st, headers, body = got[0]
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}
            ok = (st == status and set(doc) == {"error", "code"} and doc["code"] == code and
                  doc["error"] and headers.get("connection") == "close" and
                  headers.get("content-type") == "application/json")
        if not ok:
            wrong.append((name, status, code, out[:300]))
        health_ok(node)
    assert not wrong, wrong


@test
def a_refusal_one_octet_at_a_time(node):
    """The same refusal whatever the read boundaries."""
    for req, code in ((post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"),
                       "content_length_duplicate"),
                      (post(b"Transfer-Encoding: chunked\r\n", b"2\r\n{}\n0\r\n\r\n"), "bare_lf")):
        out, _ = exchange(node, None, [bytes([b]) for b in req])
        (st, headers, body), = responses(out)
        assert json.loads(body)["code"] == code and headers["connection"] == "close", out
    health_ok(node)


@test
def what_rfc_9112_allows_is_served(node):
    allowed = [
        # (name, bytes, statuses of the answers in order)
        ("cl_leading_zeros", webhook(b"Content-Length: 00016\r\n", BODY) + CLOSE, [202, 200]),
        ("cl_with_ows", webhook(b"Content-Length:\t16 \r\n", BODY) + CLOSE, [202, 200]),
        ("te_any_case_and_ows", webhook(b"Transfer-Encoding:  Chunked \r\n",
                                        b"10\r\n" + BODY + b"\r\n0\r\n\r\n") + CLOSE, [202, 200]),
        ("chunk_ext_and_trailers", webhook(b"Transfer-Encoding: chunked\r\n",
                                           b"8;a=b;c=\"d e\"\r\n" + BODY[:8] + b"\r\n8\r\n" +
                                           BODY[8:] + b"\r\n0;z\r\nT: v\r\nContent-Length: 99"
                                           b"\r\n\r\n") + CLOSE, [202, 200]),
        ("chunk_hex_upper_zeros", webhook(b"Transfer-Encoding: chunked\r\n",
                                          b"0010\r\n" + BODY + b"\r\n000\r\n\r\n") + CLOSE,
         [202, 200]),
        ("get_with_cl_body", b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" +
         CLOSE, [200, 200]),
        ("get_with_chunked_body", b"GET /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
         b"chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + CLOSE, [200, 200]),
        ("absolute_form", b"GET http://x:1/health HTTP/1.1\r\nHost: a\r\n\r\n" + CLOSE, [200, 200]),
        ("leading_crlfs", b"\r\n\r\n" + CLOSE, [200]),
        ("host_port_0080", b"GET /health HTTP/1.1\r\nHost: a:0080\r\n\r\n" + CLOSE, [200, 200]),
        ("http10_keep_alive", b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
         b"GET /health HTTP/1.0\r\n\r\n", [200, 200]),
        ("close_ends_pipeline", CLOSE + HEALTH, [200]),
        ("head_16384", head_of(16384), [200]),
        ("crlfs_then_head_16384", b"\r\n" * 8000 + head_of(384), [200]),
        ("pipelined_heads_16384", head_of(16384, b"") + head_of(16384, b"") + head_of(16384),
         [200, 200, 200]),
        ("fields_100", b"GET /health HTTP/1.1\r\n" + H + b"Connection: close\r\n" +
         b"".join(b"X%d: 1\r\n" % i for i in range(98)) + b"\r\n", [200]),
        ("target_8192", b"GET /" + b"a" * 8191 + b" HTTP/1.1\r\n" + H +
         b"Connection: close\r\n\r\n", [404]),
    ]
    wrong = []
    for name, req, want in allowed:
        got = statuses(node, req)
        if got != want:
            wrong.append((name, want, got))
    assert not wrong, wrong
    # The HTTP/1.0 keep-alive is said so; the second 1.0 request closes.
    out, _ = exchange(node, b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                            b"GET /health HTTP/1.0\r\n\r\n")
    got = responses(out)
    assert [h.get("connection") for _, h, _ in got] == ["keep-alive", "close"], got


@test
def one_octet_at_a_time_and_split_heads(node):
    req = webhook(b"Transfer-Encoding: chunked\r\n", b"10;x=1\r\n" + BODY +
                  b"\r\n0\r\nT: v\r\n\r\n") + CLOSE
    got = statuses(node, None, [bytes([b]) for b in req])
    assert got == [202, 200], got
    h = head_of(16384)
    assert statuses(node, None, [h[:8191], h[8191:16383], h[16383:]]) == [200]
    h = head_of(16385, b"")
    out, _ = exchange(node, None, [h[:16384], h[16384:]])
    (st, _, body), = responses(out)
    assert st == 431 and json.loads(body)["code"] == "head_too_large", out


@test
def pipelined_after_a_body(node):
    out, _ = exchange(node, webhook(b"Content-Length: 16\r\n", BODY) + HEALTH +
                      webhook(b"Transfer-Encoding: chunked\r\n", b"10\r\n" + BODY +
                              b"\r\n0\r\n\r\n") + CLOSE)
    assert [s for s, _, _ in responses(out)] == [202, 200, 202, 200], out
    # A 404 to a request with a body closes: its body was not read as a route's.
    out, _ = exchange(node, b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" +
                      HEALTH)
    (st, headers, _), = responses(out)
    assert st == 404 and headers["connection"] == "close", out


@test
def expect_100_continue(node):
    head = (b"POST /webhook HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Content-Length: 16\r\nExpect: 100-continue\r\n\r\n")
    with socket.create_connection(("127.0.0.1", node.gw_port), timeout=WAIT_S) as s:
        s.sendall(head)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n", got
        s.sendall(BODY + CLOSE)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert [st for st, _, _ in responses(out)] == [202, 200], out
    # Refused from its head alone (too large): no 100, the refusal, closed.
    out, _ = exchange(node, head.replace(b"Content-Length: 16", b"Content-Length: 2000000"))
    (st, headers, body), = responses(out)
    assert st == 413 and headers["connection"] == "close", out


@test
def websocket_paths_without_an_upgrade(node):
    """A WebSocket endpoint's path exists: GET there without an upgrade is
    426 with `Upgrade: websocket` (and `upgrade` in Connection), another method 405 with `Allow`, with or
    without the upgrade's fields (it was 404 not_found)."""
    up = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    for path in (b"/ws/echo", b"/ws/chat"):
        for method, extra, status, code in ((b"GET", b"", 426, "upgrade_required"),
                                            (b"POST", b"", 405, "method_not_allowed"),
                                            (b"PUT", up, 405, "method_not_allowed"),
                                            (b"OPTIONS", b"", 405, "method_not_allowed")):
            out, _ = exchange(node, method + b" " + path + b" HTTP/1.1\r\n" + H + extra +
                              b"Connection: close\r\n\r\n")
            (st, headers, body), = responses(out)
            assert (st, json.loads(body)["code"]) == (status, code), (method, path, out)
            if status == 405:
                assert headers["allow"] == "GET, HEAD", headers
            else:
                # A sender of Upgrade names it in Connection (RFC 9110 §7.8).
                assert headers["upgrade"] == "websocket", headers
                tokens = [t.strip() for t in headers["connection"].lower().split(",")]
                assert tokens == ["close", "upgrade"], headers


# ------------------------------------------------------------------ WebSocket

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
TEXT, BINARY, CONT, CLOSE_OP, PING, PONG = 1, 2, 0, 8, 9, 10


def frame(op, payload, fin=True, rsv=0, form=None, masked=True, mask=b"\x37\xfa\x21\x3d"):
    """A client frame; `form` forces the length encoding (0, 126 or 127)."""
    n = len(payload)
    if form is None:
        form = 0 if n < 126 else (126 if n < 65536 else 127)
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    m = 0x80 if masked else 0
    if form == 0:
        h = bytes([b0, m | n])
    elif form == 126:
        h = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not masked:
        return h + payload
    return h + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def ws_session(node, data, path=b"/ws/echo", octets=False):
    """Upgrades, sends data (one octet per send when `octets`), returns the
    server's frames [(opcode, payload)] up to the end of the connection."""
    with socket.create_connection(("127.0.0.1", node.gw_port), timeout=WAIT_S) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY +
                  b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        try:
            for piece in [bytes([b]) for b in data] if octets else [data]:
                s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on the first bad frame, before the rest was sent
        while True:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    frames = []
    while len(buf) >= 2:
        assert buf[1] & 0x80 == 0, "a masked server frame"
        n, i = buf[1] & 0x7f, 2
        if n == 126:
            n, i = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            n, i = struct.unpack(">Q", buf[2:10])[0], 10
        assert buf[0] & 0x80, "a fragmented server frame"
        frames.append((buf[0] & 0x0f, buf[i:i + n]))
        buf = buf[i + n:]
    assert not buf, buf
    return frames


def closed_with(frames):
    op, payload = frames[-1]
    assert op == CLOSE_OP, frames
    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
    reason = payload[2:].decode("utf-8")  # always UTF-8 from the server
    return code, reason


BYE = frame(CLOSE_OP, struct.pack(">H", 1000))
MIB = 1 << 20

# (name, client bytes, the close code the server ends with)
WS_REFUSED = [
    ("continuation_without_start", frame(CONT, b"x"), 1002),
    ("ping_126_bytes", frame(PING, b"x" * 126), 1002),
    ("close_126_bytes", frame(CLOSE_OP, b"\x03\xe8" + b"x" * 124), 1002),
    ("fragmented_ping", frame(PING, b"x", fin=False), 1002),
    ("fragmented_close", frame(CLOSE_OP, b"\x03\xe8", fin=False), 1002),
    ("rsv1", frame(TEXT, b"x", rsv=4), 1002),
    ("rsv2", frame(TEXT, b"x", rsv=2), 1002),
    ("rsv3", frame(TEXT, b"x", rsv=1), 1002),
    ("opcode_3", frame(3, b"x"), 1002),
    ("opcode_7", frame(7, b"x"), 1002),
    ("opcode_b", frame(0xB, b"x"), 1002),
    ("opcode_f", frame(0xF, b""), 1002),
    ("unmasked", frame(TEXT, b"x", masked=False), 1002),
    ("new_message_inside_fragments", frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"), 1002),
    ("length_126_for_5", frame(TEXT, b"hello", form=126), 1002),
    ("length_127_for_5", frame(TEXT, b"hello", form=127), 1002),
    ("length_127_for_65535", frame(BINARY, b"x" * 65535, form=127), 1002),
    ("length_high_bit", bytes([0x82, 0xff]) + b"\x80" + b"\0" * 7 + b"mask", 1002),
    ("length_2_63_minus_1", bytes([0x82, 0xff]) + struct.pack(">Q", (1 << 63) - 1) + b"mask", 1009),
    ("message_1_mib_plus_1", frame(BINARY, b"x" * (MIB + 1)), 1009),
    ("fragments_1_mib_plus_1", frame(BINARY, b"x" * (MIB // 2), fin=False) +
     frame(CONT, b"x" * (MIB // 2 + 1)), 1009),
    ("header_alone_past_1_mib", frame(BINARY, b"x" * (MIB + 1))[:14], 1009),
    ("close_1_byte", frame(CLOSE_OP, b"\x03"), 1002),
    ("close_reason_not_utf8", frame(CLOSE_OP, b"\x03\xe8\xff"), 1007),
    ("close_reason_cut_code_point", frame(CLOSE_OP, b"\x03\xe8\xc3"), 1007),
    ("text_not_utf8", frame(TEXT, b"\xff"), 1007),
    ("text_surrogate", frame(TEXT, b"\xed\xa0\x80"), 1007),
    ("text_overlong", frame(TEXT, b"\xc0\xaf"), 1007),
    ("text_past_10ffff", frame(TEXT, b"\xf4\x90\x80\x80"), 1007),
    ("text_cut_at_message_end", frame(TEXT, b"\xe2\x82", fin=False) + frame(CONT, b""), 1007),
    ("text_bad_across_fragments", frame(TEXT, b"\xe2\x82", fin=False) + frame(PING, b"") +
     frame(CONT, b"\x28"), 1007),
    # Fail fast: the bad second octet of a code point split at a fragment
    # boundary, the message never finished.
    ("text_f4_90_at_boundary", frame(TEXT, b"\xf4", fin=False) + frame(CONT, b"\x90", fin=False),
     1007),
    ("text_e0_80_at_boundary", frame(TEXT, b"\xe0", fin=False) + frame(CONT, b"\x80", fin=False),
     1007),
    ("text_ed_a0_at_boundary", frame(TEXT, b"\xed", fin=False) + frame(CONT, b"\xa0", fin=False),
     1007),
    ("text_bad_in_unfinished_frame", frame(TEXT, b"aaaaa\xff" + b"a" * 994)[:20], 1007),
] + [(f"close_code_{c}", frame(CLOSE_OP, struct.pack(">H", c)), 1002)
     for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)]


@test
def websocket_protocol_errors_get_their_close_codes(node):
    wrong = []
    for name, data, code in WS_REFUSED:
        frames = ws_session(node, data)
        got = closed_with(frames) if frames else (None, "")
        if got[0] != code or not got[1]:
            wrong.append((name, code, got, frames[:-1][:3]))
    assert not wrong, wrong


@test
def websocket_valid_exchanges(node):
    cases = [
        # (name, client bytes, the frames expected before the Close 1000)
        ("fragments_with_control_between",
         frame(TEXT, b"he", fin=False) + frame(PING, b"p") + frame(CONT, b"l", fin=False) +
         frame(PONG, b"") + frame(CONT, b"lo"), [(PONG, b"p"), (TEXT, b"hello")]),
        ("code_point_split_four_ways",
         frame(TEXT, b"\xf0", fin=False) + frame(CONT, b"\x9f", fin=False) +
         frame(PING, b"") + frame(CONT, b"\x98", fin=False) + frame(CONT, b"\x80"),
         [(PONG, b""), (TEXT, "\U0001F600".encode())]),
        ("empty_fragments", frame(TEXT, b"", fin=False) + frame(CONT, b"", fin=False) * 100 +
         frame(CONT, b"ok"), [(TEXT, b"ok")]),
        ("binary_not_utf8", frame(BINARY, b"\xff\xfe"), [(BINARY, b"\xff\xfe")]),
        ("ping_125_bytes", frame(PING, b"p" * 125), [(PONG, b"p" * 125)]),
        ("length_127_for_65536", frame(BINARY, b"y" * 65536), [(BINARY, b"y" * 65536)]),
        ("message_of_1_mib", frame(BINARY, b"z" * (MIB // 2), fin=False) +
         frame(CONT, b"z" * (MIB // 2)), [(BINARY, b"z" * MIB)]),
    ]
    wrong = []
    for name, data, want in cases:
        frames = ws_session(node, data + BYE)
        if frames[:-1] != want or closed_with(frames) != (1000, ""):
            wrong.append((name, [(op, p[:20]) for op, p in frames]))
    assert not wrong, wrong
    for code in (1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999):
        frames = ws_session(node, frame(CLOSE_OP, struct.pack(">H", code) + b"bye"))
        assert closed_with(frames) == (code, ""), (code, frames)
    frames = ws_session(node, frame(CLOSE_OP, b""))
    assert frames == [(CLOSE_OP, b"")], frames
    # One octet per write: the same answers.
    frames = ws_session(node, cases[1][1] + BYE, octets=True)
    assert frames[:-1] == cases[1][2] and closed_with(frames) == (1000, ""), frames
    frames = ws_session(node, frame(TEXT, b"\xe2\x82", fin=False) + frame(PING, b"") +
                        frame(CONT, b"\x28"), octets=True)
    assert frames[0] == (PONG, b"") and closed_with(frames)[0] == 1007, frames


@test
def pre_auth_frames_are_bounded_at_64_kib(node):
    """OpenClaw's socket before `connect` (WIRE §12.2, §25): 64 KiB is
    taken (and refused as a handshake), one octet more is 1009."""
    frames = ws_session(node, frame(TEXT, b"x" * (64 * 1024 + 1)), path=b"/")
    assert closed_with(frames)[0] == 1009, frames
    frames = ws_session(node, frame(TEXT, b"x" * 40000, fin=False) +
                        frame(CONT, b"x" * 25537), path=b"/")
    assert closed_with(frames)[0] == 1009, frames


# ------------------------------------------------------------------ SSE

def sse_open(node, headers=b""):
    s = socket.create_connection(("127.0.0.1", node.gw_port), timeout=WAIT_S)
    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return s, head, rest


def sse_refusal(node, headers):
    s, head, rest = sse_open(node, headers)
    with s:
        n = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                 if ln.lower().startswith(b"content-length:")][0])
        while len(rest) < n:
            chunk = s.recv(65536)
            assert chunk, rest
            rest += chunk
    return int(head.split(b" ")[1]), json.loads(rest[:n])


@test
def last_event_id_that_is_not_one_id_is_400(node):
    bad = [b"", b"x1", b"-1", b"+1", b"1.0", b"0x10", b"1 2", b"1" * 21, b"18446744073709551616",
           b"99999999999999999999", b"1\x80"]
    wrong = []
    for v in bad:
        got = sse_refusal(node, b"Last-Event-ID: " + v + b"\r\n")
        if got != (400, {"error": "Last-Event-ID must be an event id (decimal)",
                         "code": "bad_last_event_id"}):
            wrong.append((v, got))
    # Two fields are not one id, equal or not (WIRE §18.3).
    for pair in ((b"1", b"2"), (b"1", b"1")):
        got = sse_refusal(node, b"Last-Event-ID: " + pair[0] + b"\r\nlast-event-id: " + pair[1] +
                          b"\r\n")
        if got[0] != 400 or got[1].get("code") != "bad_last_event_id":
            wrong.append((pair, got))
    assert not wrong, wrong


def sse_next(s, buf):
    """The next event block (id, data) or a comment line, and the rest."""
    while True:
        if buf.startswith(b":"):
            line, sep, rest = buf.partition(b"\n")
            if sep:
                return ("comment", line), rest
        else:
            block, sep, rest = buf.partition(b"\n\n")
            if sep:
                fields = dict(ln.split(b": ", 1) for ln in block.split(b"\n"))
                return (int(fields[b"id"]), json.loads(fields[b"data"])), rest
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk


@test
def future_and_huge_ids_get_a_stream_gap_then_keep_alives(node):
    # At least one event in the ring: a webhook publishes a channel_event.
    assert statuses(node, webhook(b"Content-Length: 16\r\n", BODY) + CLOSE) == [202, 200]
    for last in (b"1000000", b"18446744073709551615", b"00000000000000000001000000"[6:]):
        s, head, buf = sse_open(node, b"Last-Event-ID: " + last + b"\r\n")
        with s:
            assert head.startswith(b"HTTP/1.1 200 "), head
            (eid, gap), buf = sse_next(s, buf)
            assert gap["type"] == "stream_gap" and gap["reason"] == "unknown_id", gap
            assert gap["last_event_id"] == int(last) and gap["lost"] is None, gap
            assert eid == gap["first_kept"] - 1, (eid, gap)
            (nxt, _), buf = sse_next(s, buf)
            assert nxt == gap["first_kept"], nxt
    # Keep-alives every 15 s (WIRE §18.4): one arrives on an idle stream.
    s, head, buf = sse_open(node)
    with s:
        s.settimeout(40)
        deadline = time.time() + 40
        while time.time() < deadline:
            item, buf = sse_next(s, buf)
            if item == ("comment", b": keep-alive"):
                break
        else:
            raise AssertionError("no keep-alive within 40 s")


def main():
    results = Results()
    node = Daemon("conf", config={"gateway": {"echo": True, "require_pairing": False}})
    node.start()
    node.wait_log("/ws/echo")
    try:
        for fn in TESTS:
            results.run(fn, node)
        results.stopped(node)
    finally:
        node.cleanup()
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
