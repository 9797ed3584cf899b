#!/bin/sh
# What --dtype bf16 and q8 cost in quality against f32 (issue 5), measured, not guessed:
#  1. logit error against the float64 reference (ref.py, committed in tests/data/golden):
#     max |logit error| / max |logit| of `moe logits` on an F32-stored golden checkpoint
#     loaded as f32, bf16 and q8, for the main head and the MTP head, and how many
#     tokens' expert sets change in any MoE layer (routing margin > 1e-5);
#  2. perplexity of the toy model on its held-out text (models/toy/heldout.txt) at f32,
#     bf16 and q8 (the toy model is stored in BF16, so f32 and bf16 load the same values).
#   sh tools/bench/quality.sh            (after make; needs Debian's python3-numpy for step 1)
set -eu
cd "$(dirname "$0")/../.."
MOE=${MOE:-build/moe}
CK=${CK:-tests/data/golden/mix-f32}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
tokens=$(/usr/bin/python3 -c 'import sys; sys.path.insert(0, "tools/check"); import compare;
print(",".join(str(int(t)) for t in compare.load(sys.argv[1])["tokens"]))' "$CK.ref.safetensors")
echo "1. logits of $CK (F32 stored), $(echo "$tokens" | tr ',' '\n' | wc -l) tokens, against the float64 reference:"
for dt in f32 bf16 q8 q4; do
    "$MOE" logits -m "$CK" --tokens "$tokens" --dtype "$dt" -t 1 -o "$T/$dt.safetensors" 2>/dev/null
    echo "  --dtype $dt:"
    /usr/bin/python3 tools/check/compare.py "$T/$dt.safetensors" "$CK.ref.safetensors" --tol 1 | sed 's/^/    /' | grep -v "^    OK$\|MISMATCH" || true
done
echo "2. perplexity of models/toy on models/toy/heldout.txt (ctx 512):"
for dt in f32 bf16 q8 q4; do
    printf '  --dtype %-4s ' "$dt"
    "$MOE" ppl -m models/toy -f models/toy/heldout.txt --ctx 512 --dtype "$dt" 2>/dev/null | sed -n 's/^ppl: //p'
done
