#!/usr/bin/env bash
# tests/integration/test_lib_install.sh — kith as a library, tried as a new
# user would (issue 14): install the build into an empty prefix, check what
# landed there, build the C example with pkg-config against the installed
# files only (shared, then static), run it, run the pytest example against
# the installed Python module, and check that libkith.so exports kith_* and
# nothing else.
#
# The build under test is the one ctest runs in (KITH_BUILD_DIR). When it is
# sanitized (tools/test: KITH_SANITIZE=ON), libkith.so needs the ASan
# runtime first in the process: the example is linked with the same
# -fsanitize flags (the only flags not from pkg-config), and Python, which
# is not built with ASan, runs with libasan preloaded and leak checks off
# (the interpreter's own allocations at exit are not kith's). Testing the
# very files the other tests exercise keeps tools/test to one build.
set -euo pipefail

build=${KITH_BUILD_DIR:?KITH_BUILD_DIR names the build tree}
src=${KITH_SOURCE_DIR:?KITH_SOURCE_DIR names the source tree}
tmp=$(mktemp -d /tmp/kith_lib_install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

fail() { echo "FAIL: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" || {
  cat "$tmp/install.log" >&2; fail "cmake --install"; }

libdir=$prefix/lib
pydir=$prefix/lib/python3/dist-packages
for f in bin/kith lib/libkith.so lib/libkith.so.0 lib/libkith.a include/kith/kith.h \
         lib/pkgconfig/kith.pc lib/python3/dist-packages/kith/__init__.py share/doc/kith/WIRE.md; do
  [ -e "$prefix/$f" ] || fail "$f was not installed"
done
[ "$(readlink "$libdir/libkith.so")" = libkith.so.0 ] || fail "libkith.so does not point at the soname"
readelf -d "$libdir/libkith.so" | grep -q 'SONAME.*\[libkith\.so\.0\]' || fail "soname is not libkith.so.0"

# Only kith_* is exported, and every function of the header is.
others=$(nm -D --defined-only "$libdir/libkith.so" | awk '{print $NF}' | grep -v '^kith_' || true)
[ -z "$others" ] || fail "libkith.so exports more than kith_*: $(echo $others | head -c 300)"
for fn in $(grep -o 'kith_[a-z_]*(' "$prefix/include/kith/kith.h" | tr -d '(' | sort -u); do
  nm -D --defined-only "$libdir/libkith.so" | grep -q " T $fn\$" || fail "$fn is not exported"
done
# The header includes nothing (so no type from another library).
! grep -n '^[[:space:]]*#[[:space:]]*include' "$prefix/include/kith/kith.h" ||
  fail "kith.h includes something"

san=()
if grep -q '^KITH_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then
  san=(-fsanitize=address,undefined -fno-omit-frame-pointer)
fi

export PKG_CONFIG_PATH=$libdir/pkgconfig
[ "kith $(pkg-config --modversion kith)" = "$("$prefix/bin/kith" --version)" ] ||
  fail "kith.pc's version is not the binary's"

# The C example, shared: flags from pkg-config only (plus the build's sanitizers).
cp "$src/tests/lib/example.c" "$tmp/example.c"
cc -std=c11 -Wall -Wextra -Werror -pedantic "${san[@]}" "$tmp/example.c" \
   $(pkg-config --cflags --libs kith) -o "$tmp/example" || fail "the C example does not build (shared)"
readelf -d "$tmp/example" | grep -q 'NEEDED.*libkith\.so\.0' || fail "the example does not use libkith.so.0"
out=$(LD_LIBRARY_PATH=$libdir "$tmp/example") || fail "the C example failed: $out"
echo "$out"
grep -q 'b got {"id":"[0-9a-f-]*","from":"ed25519:[^"]*","kind":{"type":"message","body":"hello b"}}' <<<"$out" ||
  fail "the C example printed the wrong message"
grep -q 'sent 0, partitioned 2, healed 0' <<<"$out" || fail "the C example saw the wrong outcomes"

# The C example, static: libkith.a and --static's private requirements.
static_libs=$(pkg-config --static --libs kith | sed -E 's/(^| )-lkith( |$)/\1-l:libkith.a\2/')
cc -std=c11 -Wall -Wextra -Werror "${san[@]}" "$tmp/example.c" $(pkg-config --cflags kith) \
   $static_libs -o "$tmp/example_static" || fail "the C example does not build (static)"
! readelf -d "$tmp/example_static" | grep -q 'NEEDED.*libkith' || fail "the static example needs libkith.so"
"$tmp/example_static" >/dev/null || fail "the static C example failed"

# The pytest example, against the installed module and library only.
py_env=(env -u KITH_LIBRARY PYTHONPATH="$pydir" PYTHONDONTWRITEBYTECODE=1)
if [ ${#san[@]} -gt 0 ]; then
  py_env+=(LD_PRELOAD="$(cc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0)
fi
found=$("${py_env[@]}" /usr/bin/python3 -c 'import kith; print(kith.library_path)')
case $(realpath "$found") in
  "$(realpath "$libdir")"/*) ;;
  *) fail "the module loaded $found, not the installed library" ;;
esac
(cd "$tmp" && "${py_env[@]}" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
    "$src/tests/lib/test_example.py") || fail "the pytest example failed"
echo "ok: installed, C example (shared and static) and pytest example pass, only kith_* exported"
