#!/bin/sh
# Minimises tests/fuzz/corpus/<target> together with what fuzzing found in
# build-fuzz/corpus/<target> (libFuzzer -merge=1: the smallest set of inputs with the
# same coverage), keeps the smallest inputs up to CORPUS_MAX_KB (default 300) and
# replaces the committed corpus with them. Arguments: target names.
B=build-fuzz
MAXB=$(( ${CORPUS_MAX_KB:-300} * 1024 ))
for t in "$@"; do
    new=$B/merged/$t
    rm -rf "$new"; mkdir -p "$new"
    nice "$B/fuzz/fuzz_$t" -merge=1 -timeout=10 -rss_limit_mb=2560 -max_len=8192 "$new" tests/fuzz/corpus/$t $B/corpus/$t \
        > $B/logs/merge-$t.log 2>&1 || { echo "merge $t failed: $B/logs/merge-$t.log"; continue; }
    rm -rf tests/fuzz/corpus/$t
    mkdir -p tests/fuzz/corpus/$t
    total=0; kept=0; all=0
    for f in $(ls -Sr "$new"); do
        s=$(stat -c %s "$new/$f"); all=$((all + 1))
        [ $((total + s)) -le $MAXB ] || continue
        cp "$new/$f" tests/fuzz/corpus/$t/; total=$((total + s)); kept=$((kept + 1))
    done
    echo "$t: kept $kept of $all minimised inputs, $((total / 1024)) KB"
done
