#!/bin/bash
# Checks `build/moe logits` against the float64 reference (tools/reference/ref.py)
# on random checkpoints: presets x dtypes x modes, plus random config mixes.
#   tools/check/vs_ref.sh [N_RANDOM=6] [SEED=100]
# Needs Debian's python3-numpy. Not part of `make test`
# (the unit tests use committed golden data); this is the wider net.
set -u
cd "$(dirname "$0")/../.."
REF=${REF:-tools/reference}
PY=/usr/bin/python3
MOE=${MOE:-build/moe}
N_RANDOM=${1:-6}
SEED=${2:-100}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail=0; pass=0

check() {  # name ckptdir [extra logits args...]
    local name=$1 dir=$2; shift 2
    $PY "$REF/ref.py" "$dir" --random-tokens 10 --seed 3 --save "$W/ref.safetensors" --quiet --no-check >/dev/null || { echo "FAIL $name: ref.py"; fail=$((fail+1)); return; }
    local toks
    toks=$($PY -c "import sys; sys.path.insert(0,'tools/check'); import compare; print(','.join(map(str,compare.load('$W/ref.safetensors')['tokens'])))")
    for mode in prefill decode; do
        for attn in absorb naive; do
            if ! $MOE logits -m "$dir" --tokens "$toks" -o "$W/e.safetensors" --mode $mode --attn $attn "$@" 2>"$W/err"; then
                echo "FAIL $name $mode $attn: $(cat "$W/err")"; fail=$((fail+1)); continue
            fi
            if out=$($PY tools/check/compare.py "$W/e.safetensors" "$W/ref.safetensors" --tol 1e-4); then
                pass=$((pass+1)); echo "ok   $name $mode $attn: $(echo "$out" | head -2 | tr '\n' ' ')"
            else
                fail=$((fail+1)); echo "FAIL $name $mode $attn:"; echo "$out"
            fi
        done
    done
}

mk() {  # dir args...
    local d=$1; shift
    $PY "$REF/mkckpt.py" --out "$d" "$@" >/dev/null || { echo "mkckpt failed: $*"; exit 1; }
}

for p in tiny tiny-yarn tiny-v2lite; do
    for dt in f32 bf16 f16; do mk "$W/c" --preset $p --dtype $dt --seed 7; check "$p/$dt" "$W/c"; done
done
mk "$W/c" --preset tiny --dtype fp8 --fp8-block 32 --seed 8; check "tiny/fp8-b32" "$W/c"
mk "$W/c" --preset tiny-yarn --dtype fp8 --seed 9; check "tiny-yarn/fp8-b128" "$W/c"
mk "$W/c" --preset tiny --dtype bf16 --shards 3 --seed 10; check "tiny/bf16-3shards" "$W/c"

# random mixes of config fields
i=0
while [ $i -lt "$N_RANDOM" ]; do
    ov=$($PY - "$SEED" "$i" <<'PYEOF'
import json, random, sys
r = random.Random(int(sys.argv[1]) * 1000 + int(sys.argv[2]))
nh = r.choice([1, 2, 3, 4, 8]); E = r.choice([8, 16, 32, 64]); G = r.choice([g for g in (1, 2, 4, 8) if E % g == 0])
method = r.choice(["noaux_tc", "group_limited_greedy", "greedy"])
gk = r.randint(1, G)
k = r.randint(1, min(8, gk * (E // G) if G > 1 and method != "greedy" else E))
L = r.randint(1, 4)
ov = {"num_hidden_layers": L, "first_k_dense_replace": r.randint(0, L), "moe_layer_freq": r.choice([1, 1, 2]),
      "num_attention_heads": nh, "hidden_size": r.choice([32, 48, 64, 96]),
      "q_lora_rank": r.choice([None, 16, 24, 48]), "kv_lora_rank": r.choice([16, 32, 40]),
      "qk_nope_head_dim": r.choice([8, 16, 24]), "qk_rope_head_dim": r.choice([4, 8, 16]), "v_head_dim": r.choice([8, 16, 20]),
      "n_routed_experts": E, "num_experts_per_tok": k, "n_group": G, "topk_group": gk, "topk_method": method,
      "scoring_func": r.choice(["sigmoid", "softmax"]), "norm_topk_prob": r.choice([True, False]),
      "routed_scaling_factor": r.choice([1.0, 2.5, 16.0]), "n_shared_experts": r.choice([0, 1, 2]),
      "moe_intermediate_size": r.choice([16, 24, 32]), "intermediate_size": r.choice([48, 96]),
      "num_nextn_predict_layers": r.choice([0, 1]), "rope_theta": r.choice([10000, 50000]),
      "rope_interleave": r.choice([True, True, False]), "vocab_size": r.choice([300, 512]),
      "tie_word_embeddings": r.choice([False, False, True])}
if r.random() < 0.5:
    ov["rope_scaling"] = {"type": "yarn", "factor": r.choice([4, 8, 40]), "original_max_position_embeddings": r.choice([64, 4096]),
                          "beta_fast": 32, "beta_slow": 1, "mscale": r.choice([0.5, 0.707, 1.0]), "mscale_all_dim": r.choice([0, 0.707, 1.0])}
print(json.dumps(ov))
PYEOF
)
    dt=$($PY -c "import random; print(random.Random($SEED*7+$i).choice(['f32','bf16','f16','fp8']))")
    mk "$W/c" --preset tiny --override "$ov" --dtype "$dt" --fp8-block 16 --seed $((SEED + i))
    echo "random#$i/$dt: $ov"
    check "random#$i/$dt" "$W/c"
    i=$((i+1))
done
echo "vs_ref: $pass passed, $fail failed"
[ $fail -eq 0 ]
