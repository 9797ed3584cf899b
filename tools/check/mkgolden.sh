#!/bin/bash
# Rebuilds the golden data of tests/test_golden.c under tests/data/golden/:
# random checkpoints from tools/reference/mkckpt.py and the float64
# reference outputs of tools/reference/ref.py for 12 random tokens.
#   tools/check/mkgolden.sh
# Needs Debian's python3-numpy. The output is committed;
# the tests never need ../shared.
set -eu
cd "$(dirname "$0")/../.."
REF=${REF:-tools/reference}
PY=/usr/bin/python3
OUT=tests/data/golden
rm -rf "$OUT"; mkdir -p "$OUT"
mk() {  # name tokens-seed mkckpt-args...
    local name=$1 seed=$2; shift 2
    $PY "$REF/mkckpt.py" --out "$OUT/$name" "$@" >/dev/null
    $PY "$REF/ref.py" "$OUT/$name" --random-tokens 12 --seed "$seed" --save "$OUT/$name.ref.safetensors" --quiet
    echo "$name: $*"
}
mk tiny-bf16        1 --preset tiny --dtype bf16 --seed 11
# the released V3 config.json structure, sizes scaled down (fp8 quantization_config, YaRN, noaux_tc, auto_map, ...)
mk tiny-yarn-fp8    2 --preset tiny-yarn --dtype fp8 --fp8-block 32 --seed 12 --override '{"auto_map": {"AutoConfig":
  "configuration_deepseek.DeepseekV3Config", "AutoModel": "modeling_deepseek.DeepseekV3Model", "AutoModelForCausalLM":
  "modeling_deepseek.DeepseekV3ForCausalLM"}, "transformers_version": "4.33.1"}'

mk v2lite-f32       3 --preset tiny-v2lite --dtype f32 --seed 13
mk v2lite-f16-shard 4 --preset tiny-v2lite --dtype f16 --shards 3 --seed 14
# V2-style grouped softmax routing, half-split RoPE layout, tied embeddings, YaRN with
# mscale != mscale_all_dim, MoE every other layer, shared x2, MTP
mk mix-f32          5 --preset tiny --dtype f32 --seed 15 --override '{"n_routed_experts": 32, "num_experts_per_tok": 6,
  "n_group": 4, "topk_group": 2, "topk_method": "group_limited_greedy", "scoring_func": "softmax",
  "norm_topk_prob": false, "routed_scaling_factor": 16.0, "n_shared_experts": 2, "num_hidden_layers": 3,
  "first_k_dense_replace": 1, "moe_layer_freq": 2, "rope_interleave": false, "tie_word_embeddings": true,
  "q_lora_rank": 24, "rope_theta": 50000, "rope_scaling": {"type": "yarn", "factor": 8,
  "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1, "mscale": 0.5, "mscale_all_dim": 0.707}}'
du -sh "$OUT"
