# harness.sh - sourced by the tests/cli_*.sh scripts: a scratch directory $T
# (removed on exit), pass/fail counters, and expect_error, which checks that a
# command fails cleanly: a non-zero exit that is not a signal, exactly ONE line
# on stderr, and that line contains the expected text.
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }

# expect_error "description" "substring" command...
expect_error() {
    desc=$1; want=$2; shift 2
    "$@" >"$T/out" 2>"$T/err" </dev/null; rc=$?
    lines=$(wc -l <"$T/err")
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$lines" -eq 1 ] && grep -q -- "$want" "$T/err"; then ok
    else bad "$desc: rc=$rc lines=$lines stderr=$(cat "$T/err")"; fi
}
