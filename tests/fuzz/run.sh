#!/bin/sh
# Runs each libFuzzer target in build-fuzz/fuzz/ for $FUZZ_SECONDS (default 60), one
# at a time, niced. Seeds: tests/fuzz/corpus/<name>/ (read only); new inputs go to
# build-fuzz/corpus/<name>/, crashes to build-fuzz/artifacts/. Arguments: target
# names (default: all). Prints one line per target: seconds, executions, result;
# exits non-zero if any target found a crash, leak, timeout or sanitizer report.
# Run from the repository root (`make fuzz` does).
SECONDS_EACH=${FUZZ_SECONDS:-60}
B=build-fuzz
targets="$*"
[ -n "$targets" ] || targets=$(ls $B/fuzz/ | sed -n 's/^fuzz_//p')
mkdir -p $B/artifacts $B/logs
fail=0
for t in $targets; do
    bin=$B/fuzz/fuzz_$t
    [ -x "$bin" ] || { echo "fuzz: no target $bin"; fail=1; continue; }
    mkdir -p $B/corpus/$t tests/fuzz/corpus/$t
    dict=""
    case $t in encode|eplb_counts) ;; gguf) dict="-dict=tests/fuzz/gguf.dict" ;; *) dict="-dict=tests/fuzz/json.dict" ;; esac
    maxlen=8192
    log=$B/logs/$t.log
    start=$(date +%s)
    nice -n 10 "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2560 -max_len=$maxlen \
        -print_final_stats=1 -artifact_prefix=$B/artifacts/$t- $dict \
        $B/corpus/$t tests/fuzz/corpus/$t >"$log" 2>&1
    rc=$?
    end=$(date +%s)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [ $rc -eq 0 ]; then res=ok; else res="FAILED (rc $rc, see $log)"; fail=1; fi
    line="$t: $((end - start)) s, ${execs:-?} executions, $cov, $res"
    echo "$line"
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $line" >> $B/fuzz-history.txt
done
exit $fail
