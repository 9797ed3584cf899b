#!/bin/sh
# Command-line checks of `moe mkckpt`: a small shape given by --config is written
# (single file, shards + index, every dtype) and `moe logits` runs on it; --plan
# prints the memory arithmetic (V3's exact parameter count); bad input is one
# error line and a non-zero exit.
MOE=${MOE:-build/moe}
. tests/lib/harness.sh


# a tiny shape: the S shape's routing with small dims
cat >"$T/tiny.json" <<'JSON'
{"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
 "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_attention_heads": 2, "q_lora_rank": 32,
 "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
 "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2}
JSON

"$MOE" mkckpt --help | grep -q "usage: moe mkckpt" && ok || bad "--help"
"$MOE" --help | grep -q "mkckpt" && ok || bad "moe --help lists mkckpt"

for d in bf16 f32 f16 fp8; do
    if "$MOE" mkckpt --shape S --config "$T/tiny.json" --dtype $d --fp8-block 32 --seed 3 -o "$T/c-$d" -q 2>"$T/err" &&
       [ -f "$T/c-$d/config.json" ] && [ -f "$T/c-$d/model.safetensors" ]; then ok
    else bad "mkckpt $d: $(cat "$T/err")"; fi
    if "$MOE" logits -m "$T/c-$d" --tokens 5,17,299,2 -o "$T/o-$d.safetensors" 2>"$T/err"; then ok
    else bad "logits on mkckpt $d: $(cat "$T/err")"; fi
done
grep -q '"torch_dtype": "bfloat16"' "$T/c-bf16/config.json" && ok || bad "config.json torch_dtype"
grep -q '"weight_block_size"' "$T/c-fp8/config.json" && ok || bad "fp8 config.json quantization_config"
grep -q '"hidden_size": 64' "$T/c-bf16/config.json" && ok || bad "--config overrides --shape"

# same seed -> same bytes, whatever the thread count
"$MOE" mkckpt --config "$T/tiny.json" -o "$T/t1" -t 1 -q && "$MOE" mkckpt --config "$T/tiny.json" -o "$T/t2" -t 2 -q &&
    cmp -s "$T/t1/model.safetensors" "$T/t2/model.safetensors" && ok || bad "thread count changes the bytes"

# shards + index
if "$MOE" mkckpt --config "$T/tiny.json" --shard-gb 0.0005 -o "$T/sh" -q 2>"$T/err" &&
   [ -f "$T/sh/model.safetensors.index.json" ] && [ ! -f "$T/sh/model.safetensors" ] &&
   [ "$(ls "$T/sh" | grep -c 'model-.*-of-.*\.safetensors')" -gt 1 ]; then ok
else bad "shards: $(cat "$T/err") $(ls "$T/sh")"; fi
"$MOE" logits -m "$T/sh" --tokens 1,2,3 -o "$T/o-sh.safetensors" 2>"$T/err" && ok || bad "logits on shards: $(cat "$T/err")"
# sharded and single-file give the same logits
"$MOE" logits -m "$T/t1" --tokens 1,2,3 -o "$T/o-one.safetensors" 2>/dev/null &&
    cmp -s "$T/o-sh.safetensors" "$T/o-one.safetensors" && ok || bad "sharded logits differ"

# --plan: V3's exact numbers (spec section 6), writes nothing
"$MOE" mkckpt --shape v3 --plan --dtype fp8 >"$T/plan" 2>&1 && grep -q "parameters: 684489845504" "$T/plan" &&
    grep -q "tensors: 46183 (+45808 FP8 scales" "$T/plan" && ok || bad "v3 plan: $(cat "$T/plan")"
"$MOE" mkckpt --shape v2-lite --plan >"$T/plan" 2>&1 && grep -q "KV cache per token" "$T/plan" && ok || bad "v2-lite plan"

expect_error "bad shape" "unknown shape \"XL\"" "$MOE" mkckpt --shape XL -o "$T/x"
expect_error "bad dtype" "--dtype must be" "$MOE" mkckpt --shape S --dtype int4 -o "$T/x"
expect_error "no shape" "is required" "$MOE" mkckpt -o "$T/x"
expect_error "no output" "-o DIR is required" "$MOE" mkckpt --shape S
expect_error "missing config" "nowhere.json" "$MOE" mkckpt --config "$T/nowhere.json" -o "$T/x"
echo '{"hidden_size": 64}' >"$T/bad.json"
expect_error "config lacking fields" "vocab_size" "$MOE" mkckpt --config "$T/bad.json" -o "$T/x"
expect_error "no disk space" "not enough disk space" "$MOE" mkckpt --shape v3 -o "$T/v3"
[ ! -e "$T/v3" ] && ok || bad "v3 refused but left $T/v3 behind"

echo "cli_mkckpt: $pass passed, $fail failed"
[ $fail -eq 0 ]
