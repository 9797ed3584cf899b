#!/bin/sh
# bench.sh - encoding speed of `moe tokenize` vs the official Hugging Face
# library (npm tokenizers), on the same multi-MB text, in alternating runs.
#
#   sh tools/tokenizer/bench.sh [RUNS [MB [TOKENIZER_DIR [CATS]]]]   (from the repo root,
#   after `make` and `cd tools/tokenizer && npm ci`)
#
# Prints each run, then the medians: MB/s of encoding (load excluded) of the
# whole text as one string and of its lines one by one (the official library
# with TOKENIZERS_PARALLELISM=false, so both use one thread), and load time.
set -eu
RUNS=${1:-5}
MB=${2:-4}
DIR=${3:-tests/data/tokenizer/deepseek_v3}
CATS=${4:-}   # golden categories for the text, e.g. en,code (default: all)
MOE=${MOE:-build/moe}
HERE=$(dirname "$0")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
node "$HERE/make_bench_text.js" "$T/bench.txt" "$MB" "$CATS"
# the ids must agree before the speed means anything (checked line by line)
HERE_ABS=$(cd "$HERE" && pwd)
node -e "
const {Tokenizer}=require('$HERE_ABS/node_modules/tokenizers');
const fs=require('fs');
(async()=>{const t=Tokenizer.fromFile('$DIR/tokenizer.json');
const lines=fs.readFileSync('$T/bench.txt','utf8').split('\\n'); lines.pop();
const e=await t.encodeBatch(lines,{addSpecialTokens:false});
fs.writeFileSync('$T/official.ids',e.map(x=>x.getIds().join(',')).join('\\n')+'\\n');})()"
"$MOE" tokenize -m "$DIR" -f "$T/bench.txt" >"$T/moe.ids"
if cmp -s "$T/official.ids" "$T/moe.ids"; then echo "ids: identical, line by line ($(wc -l <"$T/moe.ids") lines)"
else echo "ids: DIFFERENT"; exit 1; fi
for i in $(seq "$RUNS"); do
    TOKENIZERS_PARALLELISM=false node "$HERE/bench_official.js" "$DIR/tokenizer.json" "$T/bench.txt" | sed 's/^/official /' | tee -a "$T/log"
    "$MOE" tokenize -m "$DIR" -f "$T/bench.txt" --bench | sed 's/^/moe      /' | tee -a "$T/log"
done
med() { grep "^$1" "$T/log" | sed -n "s/.*$2=\([0-9.]*\).*/\1/p" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "median over $RUNS runs of $(wc -c <"$T/bench.txt") bytes:"
echo "  official (npm tokenizers): whole text $(med official encode_MBps) MB/s, by line $(med official lines_MBps) MB/s, load $(med official load_ms) ms"
echo "  moe tokenize:              whole text $(med moe encode_MBps) MB/s, by line $(med moe lines_MBps) MB/s, load $(med moe load_ms) ms"
