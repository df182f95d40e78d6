"""tests/integration/test_gateway_http.py — the real `kith daemon` serving its
HTTP gateway to clients kith did not write: curl for /health, /metrics, HEAD,
404/405, keep-alive and Expect: 100-continue; a raw socket for malformed and
pipelined requests; an ephemeral gateway port (0) found from the log, an IPv6
listen host, and SIGTERM → exit 0 with the gateway port closed."""

import json
import os
import re
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Conn, Daemon, Peer, Results, curl, frame, gateway_url, raw,  # noqa: E402
                  verify_envelope)

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def split_responses(data):
    """Splits a byte stream into (status, headers dict, body) by Content-Length."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response: {data!r}"
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers["content-length"])
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def error_code(body):
    doc = json.loads(body)
    assert set(doc) == {"error", "code"} and doc["error"], doc
    return doc["code"]


# ------------------------------------------------------------------ the cases

@test
def health(node, alice):
    status, ctype, body, _ = curl(gateway_url(node) + "/health")
    assert status == 200, (status, body)
    assert ctype == "application/json", ctype
    assert json.loads(body) == {"status": "ok", "version": "0.1.0"}, body


@test
def head_and_errors(node, alice):
    p = subprocess.run(["curl", "-sS", "--max-time", "20", "-I", gateway_url(node) + "/health"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("HTTP/1.1 200 OK"), p.stdout + p.stderr
    assert re.search(r"(?im)^content-length: \d+\r?$", p.stdout), p.stdout
    status, ctype, body, _ = curl(gateway_url(node) + "/no/such/route")
    assert status == 404 and ctype == "application/json", (status, ctype)
    assert error_code(body) == "not_found"
    status, _, body, _ = curl("-X", "DELETE", gateway_url(node) + "/health")
    assert status == 405 and error_code(body) == "method_not_allowed", (status, body)


@test
def keep_alive_with_curl(node, alice):
    url = gateway_url(node) + "/health"
    p = subprocess.run(["curl", "-sS", "-v", "--max-time", "20", url, url, url],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('"status":"ok"') == 3, p.stdout
    assert re.search(r"Re-?using existing connection", p.stderr), p.stderr


@test
def expect_continue_refused_early(node, alice):
    # No route takes POST /health: answered 405 without waiting for the body.
    status, _, body, err = curl("-H", "Expect: 100-continue", "--data-binary", "x" * 4096,
                                gateway_url(node) + "/health")
    assert status == 405 and error_code(body) == "method_not_allowed", (status, body, err)


@test
def metrics_after_an_envelope(node, alice):
    # One signed envelope admitted through comms shows up on the gateway.
    c = Conn(("127.0.0.1", node.port))
    m = alice.message(node.pk, "counted")
    c.send(frame(m))
    ack = c.read_frame()
    assert ack is not None and verify_envelope(ack), "no ack"
    c.close()
    status, ctype, body, _ = curl(gateway_url(node) + "/metrics")
    assert status == 200, status
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    assert re.search(r"(?m)^kith_comms_admitted_total 1$", body), body
    assert "# TYPE kith_http_requests_total counter" in body, body
    assert re.search(r'(?m)^kith_http_requests_total\{code="200"\} [1-9]\d*$', body), body
    assert re.search(r"(?m)^kith_http_connections_open [1-9]\d*$", body), body
    assert 'kith_http_rejected_total{reason="head_too_large"} 0' in body, body


@test
def malformed_request_gets_json_400(node, alice):
    out = raw(node.gw_port, b"GET /health HTTP/1.1\r\nHost: a\r\n"
                            b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
                            b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
    (status, headers, body), = split_responses(out)  # one answer, then EOF
    assert status == 400, out
    assert headers["connection"] == "close", headers
    assert headers["content-type"] == "application/json", headers
    assert error_code(body) == "content_length_conflict", body


@test
def pipelined_requests_in_order(node, alice):
    out = raw(node.gw_port, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
                            b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
                            b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    got = split_responses(out)
    assert [s for s, _, _ in got] == [200, 404, 200], got
    assert got[2][1]["connection"] == "close", got[2][1]


@test
def oversized_head_gets_431(node, alice):
    out = raw(node.gw_port, b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 17000 +
              b"\r\n\r\n")
    (status, headers, body), = split_responses(out)
    assert status == 431 and error_code(body) == "head_too_large", out[:200]


H = b"Host: a\r\n"


def post(extra, body=b""):
    return b"POST /webhook HTTP/1.1\r\n" + H + extra + b"\r\n" + body


WIRE_11_2 = [
    # (code, status, request): a request for each refusal of WIRE §11.2
    ("bad_method", 400, b"G(T /health HTTP/1.1\r\n" + H + b"\r\n"),
    ("bad_target", 400, b"GET /he#alth HTTP/1.1\r\n" + H + b"\r\n"),
    ("target_too_long", 414, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("bad_version", 400, b"GET /health HTTP/x.1\r\n" + H + b"\r\n"),
    ("version_not_supported", 505, b"GET /health HTTP/1.2\r\n" + H + b"\r\n"),
    ("version_not_supported", 505, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("bare_cr", 400, b"GET /health HTTP/1.1\r\nHost: a\rX\r\n\r\n"),
    ("bare_lf", 400, b"GET /health HTTP/1.1\nHost: a\r\n\r\n"),
    ("bad_field_name", 400, b"GET /health HTTP/1.1\r\n" + H + b"X(y: 1\r\n\r\n"),
    ("bad_field_value", 400, b"GET /health HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n"),
    ("space_before_colon", 400, b"GET /health HTTP/1.1\r\n" + H + b"X : 1\r\n\r\n"),
    ("obs_fold", 400, b"GET /health HTTP/1.1\r\n" + H + b"X: 1\r\n  2\r\n\r\n"),
    ("too_many_fields", 431, b"GET /health HTTP/1.1\r\n" + H + b"".join(b"X%d: 1\r\n" % i for i in range(101)) + b"\r\n"),
    ("host_missing", 400, b"GET /health HTTP/1.1\r\n\r\n"),
    ("host_duplicate", 400, b"GET /health HTTP/1.1\r\n" + H + H + b"\r\n"),
    ("host_invalid", 400, b"GET /health HTTP/1.1\r\nHost: a:99999\r\n\r\n"),
    ("content_length_invalid", 400, post(b"Content-Length: +5\r\n")),
    ("content_length_overflow", 400, post(b"Content-Length: 99999999999999999999999\r\n")),
    ("content_length_duplicate", 400, post(b"Content-Length: 5, 5\r\n")),
    ("content_length_with_transfer_encoding", 400, post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")),
    ("transfer_encoding_invalid", 400, post(b"Transfer-Encoding: chunked,\r\n")),
    ("transfer_encoding_duplicate", 400, post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")),
    ("transfer_encoding_not_chunked", 400, post(b"Transfer-Encoding: gzip\r\n")),
    ("transfer_encoding_unsupported", 501, post(b"Transfer-Encoding: gzip, chunked\r\n")),
    ("transfer_encoding_in_http10", 400, b"POST /webhook HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("body_too_large", 413, post(b"Content-Length: 2000000\r\n")),
    ("body_too_large", 413, post(b"Transfer-Encoding: chunked\r\n", b"200000\r\n")),
    ("bad_chunk_size", 400, post(b"Transfer-Encoding: chunked\r\n", b"zz\r\n")),
    ("chunk_size_overflow", 400, post(b"Transfer-Encoding: chunked\r\n", b"00000000000000001\r\n")),
    ("bad_chunk_ext", 400, post(b"Transfer-Encoding: chunked\r\n", b"1;\r\n")),
    ("chunk_ext_too_large", 400, post(b"Transfer-Encoding: chunked\r\n", b"1;a=" + b"b" * 5000 + b"\r\n")),
    ("bad_chunk_data_end", 400, post(b"Transfer-Encoding: chunked\r\n", b"1\r\nxy\r\n")),
    ("trailer_too_large", 431, post(b"Transfer-Encoding: chunked\r\n", b"0\r\n" + b"".join(b"T%d: %s\r\n" % (i, b"v" * 200) for i in range(90)) + b"\r\n")),
    ("websocket_not_found", 404, b"GET /nope HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
    ("upgrade_required", 426, b"GET /ws/chat HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"),
    ("method_not_allowed", 405, b"DELETE /health HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"),
    ("method_not_implemented", 501, b"BREW /health HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"),
]


@test
def every_refusal_of_the_table(node, alice):
    """Each row of WIRE §11.2 that a request can make, from raw bytes: its
    status, its code in a JSON body, and nothing else answered after it."""
    wrong = []
    for code, status, req in WIRE_11_2:
        got = split_responses(raw(node.gw_port, req))
        st, headers, body = got[0] if got else (None, {}, b"")
        if (len(got), st, error_code(body) if got else None) != (1, status, code) or \
                headers.get("content-type") != "application/json":
            wrong.append((code, status, got[:2]))
    assert not wrong, wrong


def run_ephemeral_and_ipv6():
    """gateway.port 0: the log names the port the kernel picked; and an IPv6
    listen host (brackets added for the address parser) when the host has ::1."""
    hosts = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        hosts.append("::1")
    except OSError:
        print("  (no IPv6 loopback here: the ::1 case is skipped)")
    for host in hosts:
        node = Daemon("eph", config={"gateway": {"host": host, "port": 0}})
        try:
            node.start()
            shown = f"[{host}]" if ":" in host else host
            node.wait_log(f"gateway: listening on http://{shown}:")
            m = re.search(r"gateway: listening on http://" + re.escape(shown) + r":(\d+)",
                          node.logs())
            port = int(m.group(1))
            assert port != 0
            status, _, body, _ = curl("-g", f"http://{shown}:{port}/health")
            assert status == 200 and json.loads(body)["status"] == "ok", (status, body)
            assert node.stop() == 0, "daemon did not exit 0 on SIGTERM"
        finally:
            node.cleanup()


def main():
    alice = Peer()
    node = Daemon("gw")
    node.trust("alice", alice.pk)
    node.start()
    node.wait_log(f"gateway: listening on http://127.0.0.1:{node.gw_port}")
    results = Results()
    try:
        for fn in TESTS:
            results.run(fn, node, alice)
        if results.stopped(node):
            # Stopped means stopped listening too.
            try:
                socket.create_connection(("127.0.0.1", node.gw_port), timeout=5).close()
                results.record("sigterm_closes_port", False, "the gateway port still accepts")
            except OSError:
                results.record("sigterm_closes_port", True)
    finally:
        node.cleanup()
    results.run(run_ephemeral_and_ipv6)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
