"""tests/integration/test_webhook.py — POST /webhook and POST
/sessions/{id}/external-events on the real `kith daemon` (WIRE §17.4), with
curl: 202 once the entry is in the durable inbox, every refusal with its
status and code (400 invalid_json / invalid_body, 401, 415), the optional
X-Webhook-Secret (and without it, browsers let post external events only
from the gateway's own page on this machine), and X-Idempotency-Key
deduplicating across a restart."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peer import (Daemon, Results, check, curl, free_port, gateway_url, inbox_rows,  # noqa: E402
                  kith_run, pair_token)

SECRET_ENV = "KITH_TEST_WEBHOOK_SECRET"
SECRET = "s3cret-of-the-test"



def post(node, path, data, *headers, ctype="application/json", head=False):
    args = ["-X", "POST", "--data-binary", data]
    if ctype:
        args += ["-H", f"Content-Type: {ctype}"]
    for h in headers:
        args += ["-H", h]
    if head:
        args += ["-D", "-"]
    status, _, body, _ = curl(*args, gateway_url(node) + path)
    if head:
        h, _, body = body.partition("\n\n")
        return status, json.loads(body) if body else None, h
    return status, json.loads(body) if body else None


def rows(node, kind):
    return [bytes(f).decode() for k, f in inbox_rows(node, "kind, frame") if k == kind]


def main():
    os.environ[SECRET_ENV] = SECRET
    # A fixed port: the restart below must come back where the test looks.
    node = Daemon("hook", config={"gateway": {"port": free_port()}})
    node.start()
    results = Results()
    t = pair_token(node)
    auth = f"Authorization: Bearer {t}"

    def webhook_queues_durably():
        status, doc = post(node, "/webhook", '{"message":"hello","session_id":"s-1"}', auth)
        check(status == 202, (status, doc))
        check(set(doc) == {"queued", "id"} and doc["queued"] is True, doc)
        check(re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-", doc["id"]), doc)
        # Answered 202 only once durable: the row is already in state.db.
        got = rows(node, "webhook")
        check(got == ['{"message":"hello","session_id":"s-1"}'], got)
        ids = [bytes(i) for i, k in inbox_rows(node, "envelope_id, kind") if k == "webhook"]
        check(ids[0].hex() == doc["id"].replace("-", ""), (ids, doc))

    def webhook_refusals():
        cases = [
            ("{", 400, "invalid_json"),
            ('{"message":"a","message":"b"}', 400, "invalid_json"),       # duplicate key
            ('{"message":"a\\u0000b"}', 400, "invalid_json"),             # NUL
            ('{"message":"\\ud800"}', 400, "invalid_json"),               # lone surrogate
            ('{"message":"\\udc00x"}', 400, "invalid_json"),
            ('{"message":"a"} {}', 400, "invalid_json"),                  # trailing value
            ('{"message":"a", }', 400, "invalid_json"),
            ('{"message":1}', 400, "invalid_body"),
            ('{"message":""}', 400, "invalid_body"),
            ('{}', 400, "invalid_body"),
            ('[]', 400, "invalid_body"),
            ('"hi"', 400, "invalid_body"),
            ('{"message":"a","extra":1}', 400, "invalid_body"),
            ('{"message":"a","session_id":7}', 400, "invalid_body"),
            ('{"message":"a","session_id":"bad id"}', 400, "invalid_body"),
        ]
        before = len(rows(node, "webhook"))
        for data, want, code in cases:
            status, doc = post(node, "/webhook", data, auth)
            check(status == want and doc["code"] == code and doc["error"], (data, status, doc))
        status, doc = post(node, "/webhook", os.fsdecode(b'{"message":"\xff"}'), auth)
        check(status == 400 and doc["code"] == "invalid_json", (status, doc))
        status, doc = post(node, "/webhook", os.fsdecode(b'{"message":"\xed\xa0\x80"}'), auth)
        check(status == 400 and doc["code"] == "invalid_json", (status, doc))  # a UTF-8 surrogate
        status, doc = post(node, "/webhook", '{"message":"a"}', auth, ctype="text/plain")
        check(status == 415 and doc["code"] == "unsupported_media_type", (status, doc))
        status, doc = post(node, "/webhook", '{"message":"a"}', auth, ctype=None)
        check(status == 415, (status, doc))
        status, doc = post(node, "/webhook", '{"message":"a"}')
        check(status == 401 and doc["code"] == "unauthorized", (status, doc))
        status, doc = post(node, "/webhook", '{"message":"a"}', auth, "X-Idempotency-Key: " + "k" * 129)
        check(status == 400 and doc["code"] == "invalid_idempotency_key", (status, doc))
        check(len(rows(node, "webhook")) == before, "a refused request was queued")

    def external_events():
        body = '{"kind":"generic_json","event_type":"build.done","payload":{"ok":true,"n":[1,2]}}'
        status, doc = post(node, "/sessions/sess-7/external-events", body)
        check(status == 202 and doc == {"queued": True}, (status, doc))
        got = rows(node, "event")
        check(got[-1] == '{"session_id":"sess-7","event":' + body + "}", got)
        for data, code in [('{"kind":"other","event_type":"x","payload":1}', "invalid_body"),
                           ('{"kind":"generic_json","payload":1}', "invalid_body"),
                           ('{"kind":"generic_json","event_type":"x"}', "invalid_body"),
                           ('{"kind":"generic_json","event_type":"x","payload":1,"payload":2}',
                            "invalid_json"),
                           ('{"kind":"generic_json","event_type":"x","payload":[{"k":1,"k":2}]}',
                            "invalid_json"),  # a duplicate at any depth
                           ('{"kind":"generic_json","event_type":"x","payload":{"a":{"k":1},"k":2}}',
                            None)]:  # the same name in different objects is fine
            if code is None:
                status, doc = post(node, "/sessions/sess-7/external-events", data)
                check(status == 202, (data, status, doc))
                continue
            status, doc = post(node, "/sessions/sess-7/external-events", data)
            check(status == 400 and doc["code"] == code, (data, status, doc))
        status, doc = post(node, "/sessions/bad%20id/external-events", body)
        check(status == 400 and doc["code"] == "invalid_session_id", (status, doc))
        status, doc = post(node, "/sessions/s/external-events", body, ctype="text/plain")
        check(status == 415, (status, doc))
        # The media type (step 3) comes before the path's session id (step 5).
        status, doc = post(node, "/sessions/bad%20id/external-events", body, ctype="text/plain")
        check(status == 415, (status, doc))
        status, doc = post(node, "/sessions/s/other", body)
        check(status == 404, (status, doc))
        # No secret: a browser may post only from this gateway's own page on
        # this machine. A page whose name was rebound to 127.0.0.1 sends its
        # own Host and Origin; a cross-site page sends its Origin.
        before = len(rows(node, "event"))
        port = node.gw_port
        for headers in ((f"Host: attacker.example:{port}", f"Origin: http://attacker.example:{port}"),
                        ("Origin: https://attacker.example",),
                        ("Origin: null",)):
            status, doc = post(node, "/sessions/s/external-events", body, *headers)
            check(status == 403 and doc["code"] == "origin_not_allowed", (headers, status, doc))
        check(len(rows(node, "event")) == before, "a browser's refused event was queued")
        for headers in ((f"Origin: http://127.0.0.1:{port}",),
                        ("Host: localhost", "Origin: http://localhost"),
                        ("Host: 192.0.2.7:80", "Origin: https://192.0.2.7:80")):
            status, doc = post(node, "/sessions/s/external-events", body, *headers)
            check(status == 202, (headers, status, doc))

    def idempotency_across_restart():
        key = "X-Idempotency-Key: order-42"
        status, first = post(node, "/webhook", '{"message":"once"}', auth, key)
        check(status == 202, (status, first))
        status, again, head = post(node, "/webhook", '{"message":"once"}', auth, key, head=True)
        check(status == 202 and again == first, (status, again, first))
        check("idempotent-replayed: true" in head.lower(), head)
        check(node.stop() == 0, "daemon did not exit 0")
        node.start()
        node.wait_log("daemon: ready", count=2)
        status, after = post(node, "/webhook", '{"message":"once"}', auth, key)
        check(status == 202 and after == first, (status, after, first))
        check(rows(node, "webhook").count('{"message":"once"}') == 1, rows(node, "webhook"))
        # Keys are per route: the same key on external events is its own.
        ev = '{"kind":"generic_json","event_type":"idem","payload":null}'
        status, doc = post(node, "/sessions/s/external-events", ev, key)
        check(status == 202 and doc == {"queued": True}, (status, doc))
        status, doc = post(node, "/sessions/s/external-events", ev, key)
        check(status == 202 and doc == {"queued": True}, (status, doc))
        check(sum(1 for r in rows(node, "event") if '"event_type":"idem"' in r) == 1,
              rows(node, "event"))

    for fn in (webhook_queues_durably, webhook_refusals, external_events,
               idempotency_across_restart):
        results.run(fn)
    try:
        results.stopped(node)
    finally:
        node.cleanup()

    def webhook_secret():
        sec = Daemon("hook-secret", config={"gateway": {"webhook_secret_env": SECRET_ENV}})
        try:
            sec.start()
            tok = f"Authorization: Bearer {pair_token(sec)}"
            ev = '{"kind":"generic_json","event_type":"x","payload":{}}'
            for path, extra in (("/webhook", [tok]), ("/sessions/a/external-events", [])):
                data = '{"message":"m"}' if path == "/webhook" else ev
                status, doc = post(sec, path, data, *extra)
                check(status == 401 and doc["code"] == "invalid_webhook_secret", (path, status, doc))
                status, doc = post(sec, path, data, *extra, "X-Webhook-Secret: wrong")
                check(status == 401, (path, status, doc))
                status, doc = post(sec, path, data, *extra, f"X-Webhook-Secret: {SECRET}")
                check(status == 202, (path, status, doc))
            # The secret (step 2) before the path's session id (step 5): a
            # caller without it learns nothing of what else is wrong.
            bad = "/sessions/bad%20id/external-events"
            status, doc = post(sec, bad, ev, "X-Webhook-Secret: wrong")
            check(status == 401 and doc["code"] == "invalid_webhook_secret", (status, doc))
            status, doc = post(sec, bad, ev, f"X-Webhook-Secret: {SECRET}")
            check(status == 400 and doc["code"] == "invalid_session_id", (status, doc))
            check(SECRET not in sec.logs(), "the secret was logged")
        finally:
            sec.cleanup()

    def secret_env_unset_refuses_start():
        bad = Daemon("hook-unset", config={"gateway": {"webhook_secret_env": "KITH_NO_SUCH_VAR"}})
        try:
            _, err = kith_run("daemon", "--home", bad.home, expect=1)
            check("KITH_NO_SUCH_VAR" in err, err)
        finally:
            bad.cleanup()

    def inbox_full_is_503_and_not_remembered():
        """WIRE 17.4 step 6: with the inbox full (comms.inbox_capacity 2, no
        agent draining it) a webhook is 503 inbox_full with Retry-After: 1,
        nothing queued; its idempotency key is not remembered, so the same
        key is refused the same way again rather than replayed."""
        small = Daemon("hook-full", config={"comms": {"inbox_capacity": 2}})
        try:
            small.start()
            tok = f"Authorization: Bearer {pair_token(small)}"
            for i in range(2):
                status, doc = post(small, "/webhook", f'{{"message":"m{i}"}}', tok)
                check(status == 202, (i, status, doc))
            for _ in range(2):
                status, doc, head = post(small, "/webhook", '{"message":"one too many"}', tok,
                                         "X-Idempotency-Key: full-1", head=True)
                check(status == 503 and doc["code"] == "inbox_full" and doc["error"],
                      (status, doc))
                check(re.search(r"(?im)^retry-after: 1\r?$", head), head)
            check(rows(small, "webhook") == ['{"message":"m0"}', '{"message":"m1"}'],
                  rows(small, "webhook"))
            status, _, body, _ = curl(gateway_url(small) + "/health")
            check(status == 200, (status, body))
        finally:
            small.cleanup()

    results.run(webhook_secret)
    results.run(secret_env_unset_refuses_start)
    results.run(inbox_full_is_503_and_not_remembered)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
