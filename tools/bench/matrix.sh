#!/bin/sh
# The benchmark matrix of docs/bench.md: makes the S and M checkpoints (once) under
# $BENCH_DIR (default /work/bench-ckpt, outside the repo, never committed), then runs
# `moe bench --json -t 1,2` on every (checkpoint, load format) ROUNDS times, the
# configurations in turn, so that noise from a shared machine spreads over all of them;
# each round starts with `moe bench --membw` (the bandwidth available at that time), and
# every bench run also measures it beside each of its decode repetitions (--membw), which
# is what bw % divides by. f32 is the bf16 checkpoint converted at load (the same values).
#   tools/bench/matrix.sh                      # ROUNDS=2 R=5 P=512 N=128
#   ROUNDS=3 R=3 tools/bench/matrix.sh
#   python3 tools/bench/summary.py $BENCH_DIR/results/*.json    # the table
set -eu
cd "$(dirname "$0")/../.."
MOE=${MOE:-build/moe}
DIR=${BENCH_DIR:-/work/bench-ckpt}
ROUNDS=${ROUNDS:-2}; R=${R:-5}; P=${P:-512}; N=${N:-128}
CONFIGS=${CONFIGS:-"S-bf16:auto S-bf16:q8 S-bf16:f32 M-bf16:f32 M-bf16:auto M-bf16:q8"}
mkdir -p "$DIR/results"
for c in S:bf16 M:bf16; do
    shape=${c%:*}; dt=${c#*:}
    [ -f "$DIR/$shape-$dt/config.json" ] || "$MOE" mkckpt --shape "$shape" --dtype "$dt" -o "$DIR/$shape-$dt"
done
stamp=$(date +%Y%m%d-%H%M%S)
for round in $(seq 1 "$ROUNDS"); do
    "$MOE" bench --membw --json >"$DIR/results/$stamp-membw-r$round.json" 2>/dev/null || true
    for cfg in $CONFIGS; do
        ck=${cfg%:*}; dt=${cfg#*:}
        out="$DIR/results/$stamp-$ck-$dt-r$round.json"
        echo "round $round: $ck --dtype $dt (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
        "$MOE" bench -m "$DIR/$ck" --dtype "$dt" -t 1,2 -r "$R" -p "$P" -n "$N" --membw --membw-mib 512 --json --profile >"$out" 2>"$out.log" ||
            { echo "failed: $(tail -1 "$out.log")" >&2; rm -f "$out"; }
    done
done
echo "results: $DIR/results/$stamp-*.json" >&2
