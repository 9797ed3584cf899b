#!/bin/sh
# diffcheck.sh - `moe tokenize` vs the official library on ~240,000 lines
# (every code point up to U+323AF in a probe string, and random strings).
#   sh tools/tokenizer/diffcheck.sh [N_RANDOM [TOKENIZER_DIR]]   (from the repo root, after make)
set -eu
N=${1:-30000}
DIR=${2:-tests/data/tokenizer/deepseek_v3}
MOE=${MOE:-build/moe}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
node "$(dirname "$0")/diffcheck.js" "$T" "$N" "$DIR"
"$MOE" tokenize -m "$DIR" -f "$T/in.txt" >"$T/moe.txt"
bad=$(paste -d '\t' "$T/official.txt" "$T/moe.txt" | awk -F'\t' '$1 != $2' | wc -l)
echo "diffcheck: $(wc -l <"$T/in.txt") lines, $bad differ"
[ "$bad" -eq 0 ]
