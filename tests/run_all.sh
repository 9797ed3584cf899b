#!/bin/sh
# Runs every test binary in $BUILD/tests, every tests/cli_*.sh script and the browser check
# tests/browser_serve.sh; prints
# one summary line "tests: N passed, N failed" and exits non-zero on any failure.
BUILD=${BUILD:-build}
pass=0; fail=0; failed=""
for t in "$BUILD"/tests/test_*; do
    case "$t" in *.o|*.d) continue ;; esac
    [ -x "$t" ] || continue
    echo "== $t"
    if "$t"; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed $t"; fi
done
for s in tests/cli_*.sh; do
    [ -f "$s" ] || continue
    echo "== $s"
    if MOE="$BUILD/moe" sh "$s"; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed $s"; fi
done
# the live page in headless Chromium (skips with one line when chromium is not installed)
echo "== tests/browser_serve.sh"
if MOE="$BUILD/moe" SHOT="$BUILD/serve.png" sh tests/browser_serve.sh; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed tests/browser_serve.sh"; fi
[ -n "$failed" ] && echo "failed suites:$failed"
echo "($BUILD build)"
echo "suites: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
