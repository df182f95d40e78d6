"""tests/integration/test_audit_tail.py — `kith audit tail` and `query` on a
log a crash left torn (WIRE §21): a file of zero bytes only (what a crash
can leave after a preallocation) and real records followed by zero bytes.
Both used to print what records they could and exit 0, while `kith audit
verify` on the same file reported it torn; now they say so on stderr and
exit 1, as verify does, after printing the records they found. An intact
log (from a real `kith daemon`) and an empty one still exit 0."""

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from peer import Daemon, Results, check, curl, gateway_url, kith_run  # noqa: E402


def make_records():
    """A real daemon's audit log with a few records (bad pairing codes),
    copied out after a clean stop; returns (dir, path)."""
    node = Daemon("audittail")
    node.start()
    try:
        for _ in range(3):
            curl("-X", "POST", "-H", "X-Pairing-Code: 000000", gateway_url(node) + "/pair")
        rc = node.stop()
        check(rc == 0, f"daemon exit {rc}")
        d = tempfile.mkdtemp(prefix="kith-audit-tail-")
        path = os.path.join(d, "audit.log")
        shutil.copyfile(os.path.join(node.home, "audit.log"), path)
        return d, path
    finally:
        node.cleanup()


def main():
    results = Results()
    d, good = make_records()
    with open(good, "rb") as f:
        lines = f.read().splitlines()

    def intact_log_exits_0():
        check(len(lines) >= 3, lines)
        out, err = kith_run("audit", "tail", "-n", "2", good)
        check([json.loads(ln) for ln in out.splitlines()] == [json.loads(ln) for ln in lines[-2:]],
              out)
        check(err == "", err)
        kith_run("audit", "verify", "--no-head", good, expect=0)
    results.run(intact_log_exits_0)

    def empty_log_exits_0():
        path = os.path.join(d, "empty.log")
        open(path, "wb").close()
        out, err = kith_run("audit", "tail", path)
        check(out == "" and err == "", (out, err))
    results.run(empty_log_exits_0)

    def all_zero_bytes_is_torn():
        path = os.path.join(d, "zeros.log")
        with open(path, "wb") as f:
            f.write(b"\0" * 8192)
        _, verr = kith_run("audit", "verify", "--no-head", path, expect=1)
        check("torn" in verr, verr)
        for verb in ("tail", "query"):
            out, err = kith_run("audit", verb, path, expect=1)
            check(out == "", out)
            check(f"kith audit {verb}: {path}: the log ends inside a line (8192 zero bytes at "
                  "offset 0, no newline): a torn record" in err, err)
    results.run(all_zero_bytes_is_torn)

    def a_large_preallocation_is_torn():
        # Longer than tail looks back for the torn line's start (1 MiB).
        path = os.path.join(d, "big.log")
        with open(path, "wb") as f:
            f.truncate(3 << 20)
        out, err = kith_run("audit", "tail", path, expect=1)
        check(out == "", out)
        check("the log ends inside a line (no newline in its last 1048576 bytes)" in err, err)
    results.run(a_large_preallocation_is_torn)

    def records_then_zero_bytes_is_torn():
        path = os.path.join(d, "prealloc.log")
        with open(good, "rb") as src, open(path, "wb") as f:
            body = src.read()
            f.write(body + b"\0" * 4096)
        _, verr = kith_run("audit", "verify", "--no-head", path, expect=1)
        check("torn" in verr, verr)
        out, err = kith_run("audit", "tail", "-n", "2", path, expect=1)
        check([json.loads(ln) for ln in out.splitlines()] == [json.loads(ln) for ln in lines[-2:]],
              out)
        check(f"(4096 zero bytes at offset {len(body)}, no newline)" in err, err)
    results.run(records_then_zero_bytes_is_torn)

    def a_torn_line_that_is_not_zeros():
        path = os.path.join(d, "cut.log")
        with open(good, "rb") as src, open(path, "wb") as f:
            body = src.read()
            f.write(body[:-10])  # the last record cut off, ten bytes short
        out, err = kith_run("audit", "tail", path, expect=1)
        check(len(out.splitlines()) == len(lines) - 1, out)
        cut = len(lines[-1]) + 1 - 10
        check(f"({cut} bytes at offset {len(body) - len(lines[-1]) - 1}, no newline)" in err, err)
    results.run(a_torn_line_that_is_not_zeros)

    shutil.rmtree(d, ignore_errors=True)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
