"""tests/integration/test_http_edges.py — the HTTP server core's edges on
the real `kith daemon`, with raw sockets (WIRE §11, §17.4): an error whose
text quotes a client's member name cut in the middle of a UTF-8 code point
is still JSON a client can parse; a request cut short by the client's
half-close is told 400 request_incomplete before the connection closes,
while a whole one before the half-close is answered; and a 426 names
`upgrade` in Connection (RFC 9110 §7.8)."""

import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, pair_token  # noqa: E402


def exchange(node, data, half_close=False):
    """Sends data on a fresh connection (then shuts down our sending side
    when half_close); returns (status, head, body) of the first answer and
    whether the connection then ended without more."""
    with socket.create_connection(("127.0.0.1", node.gw_port), timeout=30) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if not half_close and b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                n = [int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                     if k.strip().lower() == b"content-length"]
                if n and len(body) >= n[0]:
                    break
    head, _, body = out.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, head.decode("latin-1"), body


def error_body_is_json_when_a_name_is_cut_mid_code_point(node, token):
    # The unknown member's name is quoted cut at 40 octets: here inside "é".
    name = "k" * 39 + "é"
    doc = json.dumps({"message": "a", name: 1}, ensure_ascii=False).encode()
    status, head, body = exchange(node, b"POST /webhook HTTP/1.1\r\nHost: x\r\n"
                                  b"Authorization: Bearer " + token.encode() +
                                  b"\r\nContent-Type: application/json\r\nContent-Length: " +
                                  str(len(doc)).encode() + b"\r\nConnection: close\r\n\r\n" + doc)
    check(status == 400, (status, head, body))
    got = json.loads(body.decode("utf-8"))  # strict: ill-formed UTF-8 raises here
    check(got["code"] == "invalid_body" and "k" * 39 in got["error"], got)


def half_close_mid_request_is_told(node, token):
    del token
    for data in (b"GET /health HTTP/1.1\r\nHost: x\r\n",
                 b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 50\r\n\r\n{\"message\":"):
        status, head, body = exchange(node, data, half_close=True)
        check(status == 400 and "\r\nConnection: close" in head, (data, head, body))
        check(json.loads(body)["code"] == "request_incomplete", body)
    status, head, body = exchange(node, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                                  half_close=True)
    check(status == 200, (head, body))


def upgrade_required_names_upgrade_in_connection(node, token):
    del token
    status, head, body = exchange(node, b"GET /ws/chat HTTP/1.1\r\nHost: x\r\n\r\n")
    check(status == 426 and "\r\nUpgrade: websocket" in head, head)
    conn = [ln.split(":", 1)[1] for ln in head.split("\r\n")
            if ln.lower().startswith("connection:")]
    check(conn and "upgrade" in [t.strip().lower() for t in conn[0].split(",")], head)


def main():
    node = Daemon("httpedges")
    node.start()
    results = Results()
    try:
        token = pair_token(node)
        for fn in (error_body_is_json_when_a_name_is_cut_mid_code_point,
                   half_close_mid_request_is_told,
                   upgrade_required_names_upgrade_in_connection):
            results.run(fn, node, token)
    finally:
        results.stopped(node)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
