#!/bin/sh
# Command-line checks of `moe bench` on a tiny checkpoint made by `moe mkckpt`:
# the table and --json carry pp/tg results, --profile lists the phases,
# --membw measures, bad input is one error line and a non-zero exit.
MOE=${MOE:-build/moe}
. tests/lib/harness.sh


cat >"$T/tiny.json" <<'JSON'
{"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
 "num_hidden_layers": 2, "first_k_dense_replace": 1, "num_attention_heads": 2, "q_lora_rank": 32,
 "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
 "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2}
JSON
"$MOE" mkckpt --shape S --config "$T/tiny.json" -o "$T/c" -q || bad "mkckpt"

"$MOE" bench --help | grep -q "usage: moe bench" && ok || bad "--help"
"$MOE" --help | grep -q "bench" && ok || bad "moe --help lists bench"

if "$MOE" bench -m "$T/c" -p 16 -n 4 -r 2 -t 1,2 >"$T/out" 2>"$T/err"; then
    for want in "pp16" "tg4" "| model" "weights read per decoded token" "KV cache: 40 values" "peak RSS"; do
        grep -q -- "$want" "$T/out" && ok || bad "table lacks '$want': $(cat "$T/out")"
    done
    [ "$(grep -c '| *tg4 |' "$T/out")" -eq 2 ] && ok || bad "one tg row per thread count"
else bad "bench: $(cat "$T/err")"; fi

if "$MOE" bench -m "$T/c" -p 8 -n 4 -r 1 -t 1 --json --profile --dtype q8 >"$T/json" 2>"$T/err"; then
    for key in '"avg_ts"' '"stddev_ts"' '"samples_ts"' '"test": "pp8"' '"test": "tg4"' '"gbps"' '"bw_fraction"' \
               '"profile_us_per_token"' '"experts (routed+shared)"' '"sampling (argmax)"' '"kv_bytes_per_token"' '"dtype": "q8"'; do
        grep -q -- "$key" "$T/json" && ok || bad "json lacks $key"
    done
    grep -q "profile, decode" "$T/err" && ok || bad "--profile table"
else bad "bench --json: $(cat "$T/err")"; fi

# depth (-d): one row per depth and thread count, named llama-bench's way, KV bytes read per decoded
# token = main layers x (R + dr) x 4 B x (depth + tg-prompt + (n+1)/2) positions (golden tiny: 2 layers x 40 floats)
if "$MOE" bench -m "$T/c" -p 8 -n 4 -r 2 -t 1,2 -d 0,40 >"$T/out" 2>"$T/err"; then
    [ "$(grep -c '| *tg4 @ d40 |' "$T/out")" -eq 2 ] && [ "$(grep -c '| *pp8 @ d40 |' "$T/out")" -eq 2 ] &&
        [ "$(grep -c '| *tg4 |' "$T/out")" -eq 2 ] && ok || bad "-d rows: $(cat "$T/out")"
    # 2 x 40 x 4 x (40 + 8 + 2.5) = 16160 B; at depth 0: 2 x 40 x 4 x 10.5 = 3360 B
    grep -q '| *tg4 @ d40 | .* | *0.016 | ' "$T/out" && grep -q '| *tg4 | .* | *0.003 | ' "$T/out" && ok ||
        bad "-d KV MB/tok: $(cat "$T/out")"
    grep -q "x 4 B (f32) = [0-9]* B per token; 53 positions allocated" "$T/out" && ok || bad "-d context = 40 + 12 + 1: $(cat "$T/out")"
else bad "bench -d: $(cat "$T/err")"; fi
if "$MOE" bench -m "$T/c" -p 0 -n 4 -r 1 -t 1 -d 24 --json >"$T/json" 2>"$T/err"; then
    grep -q '"test": "tg4 @ d24"' "$T/json" && grep -q '"n_depth": 24' "$T/json" && ok || bad "-d json test: $(cat "$T/json")"
    # 2 x 40 x 4 x (24 + 8 + 2.5) = 11040
    grep -q '"kv_bytes_read_per_token": 11040' "$T/json" && ok || bad "-d json kv bytes: $(cat "$T/json")"
else bad "bench -d --json: $(cat "$T/err")"; fi
# --kv-dtype bf16 halves the cache bytes: 2 x 40 x 2 x (24 + 8 + 2.5) = 5520
if "$MOE" bench -m "$T/c" -p 0 -n 4 -r 1 -t 1 -d 24 --kv-dtype bf16 --json >"$T/json" 2>"$T/err"; then
    grep -q '"kv_bytes_read_per_token": 5520' "$T/json" && grep -q '"kv_dtype": "bf16"' "$T/json" && ok ||
        bad "--kv-dtype bf16 json: $(cat "$T/json")"
else bad "bench --kv-dtype bf16: $(cat "$T/err")"; fi
"$MOE" bench -m "$T/c" --kv-dtype f16 -r 1 >"$T/out" 2>&1; [ $? -eq 2 ] && [ "$(wc -l <"$T/out")" -eq 1 ] &&
    grep -q -- "--kv-dtype must be f32 or bf16" "$T/out" && ok || bad "--kv-dtype bad: $(cat "$T/out")"
"$MOE" bench -m "$T/c" -d 1,x -r 1 >"$T/out" 2>&1; [ $? -eq 2 ] && [ "$(wc -l <"$T/out")" -eq 1 ] && grep -q -- "-d" "$T/out" &&
    ok || bad "-d bad list: $(cat "$T/out")"
"$MOE" bench --membw --membw-mib 16 >"$T/out" 2>&1 && grep -q "memory read bandwidth" "$T/out" && ok || bad "--membw"
# with -m: bandwidth measured beside each tg rep, one sample per rep, bw_fraction from them
if "$MOE" bench -m "$T/c" -p 0 -n 4 -r 3 -t 1,2 --membw --membw-mib 16 --json >"$T/json" 2>"$T/err"; then
    [ "$(grep -c '"bw_samples_gbps"' "$T/json")" -eq 2 ] && ok || bad "bw_samples_gbps per thread count: $(cat "$T/json")"
    grep -q "measured beside each repetition" "$T/err" && ok || bad "bw source line: $(cat "$T/err")"
    # three samples in each run's list, none zero
    [ "$(tr -d ' \n' <"$T/json" | grep -o '"bw_samples_gbps":\[[0-9.e+-]*,[0-9.e+-]*,[0-9.e+-]*\]' | grep -vc ':\[0[,.]')" -eq 2 ] &&
        ok || bad "three positive bw samples per run: $(cat "$T/json")"
else bad "bench --membw -m: $(cat "$T/err")"; fi
"$MOE" bench -m "$T/c" -p 0 -n 2 -r 1 --bw 10,20 -t 1 >"$T/out" 2>&1 && grep -q "10.0 GB/s (1 thread), 20.0 GB/s" "$T/out" &&
    ! grep -q "pp0" "$T/out" && ok || bad "--bw / -p 0: $(cat "$T/out")"

# the MTP arm: both arms run, greedy outputs agree, experts per verification step counted
"$MOE" bench -m tests/data/golden/tiny-bf16 -p 0 -n 12 -r 2 -t 1 --mtp >"$T/out" 2>/dev/null &&
    grep -q "greedy output identical to plain decoding: yes" "$T/out" && grep -q "per verification step" "$T/out" &&
    ok || bad "--mtp: $(cat "$T/out")"
# auto carries what it learned from rep to rep unless --mtp-cold (the print says which)
grep -q "each rep starts from what the previous rep learned" "$T/out" && ok || bad "--mtp carry: $(cat "$T/out")"
"$MOE" bench -m tests/data/golden/tiny-bf16 -p 0 -n 12 -r 2 -t 1 --mtp-cold >"$T/out" 2>/dev/null &&
    grep -q "each rep from scratch" "$T/out" && grep -q "greedy output identical to plain decoding: yes" "$T/out" &&
    ok || bad "--mtp-cold: $(cat "$T/out")"
# --draft 3: chained drafts, verified four tokens at a time, the same greedy output
"$MOE" bench -m tests/data/golden/tiny-bf16 -p 0 -n 12 -r 2 -t 1 --draft 3 >"$T/out" 2>/dev/null &&
    grep -q "4-token verification" "$T/out" && grep -q "2 chained drafts" "$T/out" &&
    grep -q "greedy output identical to plain decoding: yes" "$T/out" && grep -q "(4 tokens)" "$T/out" &&
    ok || bad "--draft 3: $(cat "$T/out")"
printf 'the cat and the dog sat on the mat and the bird sang in the tree' >"$T/held.txt"
mkdir "$T/tk" && for f in tests/data/golden/tiny-bf16/*; do ln -s "$PWD/$f" "$T/tk/"; done && cp tests/data/tiny-tokenizer/*.json "$T/tk/"
"$MOE" bench -m "$T/tk" -p 0 -n 8 -r 2 -t 1 --mtp-text "$T/held.txt" --json >"$T/out" 2>/dev/null &&
    grep -q '"test": "mtp"' "$T/out" && grep -q "held.txt" "$T/out" && ok || bad "--mtp-text --json: $(cat "$T/out")"
# many sequences: one row per thread count and B, B = 1 reads 8-of-16 experts' worth, more B more distinct experts
if "$MOE" bench -m "$T/c" --seqs 1,4 -n 4 -r 2 -t 1,2 >"$T/out" 2>"$T/err"; then
    [ "$(grep -c '^| *[12] | *[14] |' "$T/out")" -eq 4 ] && ok || bad "--seqs rows: $(cat "$T/out")"
    grep -q '^| *1 | *1 | .* | *1.00 | .* | *1.00 | *4.00 |' "$T/out" && ok || bad "--seqs B=1 reads K experts per layer: $(cat "$T/out")"
    b4=$(grep '^| *1 | *4 |' "$T/out" | awk -F'|' '{print $9 + 0}')
    awk -v x="$b4" 'BEGIN { exit !(x > 4 && x <= 16) }' && ok || bad "--seqs B=4 distinct experts $b4 not in (4, 16]"
else bad "bench --seqs: $(cat "$T/err")"; fi
"$MOE" bench -m "$T/c" --seqs 2 -n 3 -r 1 -t 1 --json >"$T/json" 2>/dev/null &&
    grep -q '"test": "seqs"' "$T/json" && grep -q '"n_seqs": 2' "$T/json" && grep -q '"experts_per_layer_pass"' "$T/json" &&
    ok || bad "--seqs --json: $(cat "$T/json")"
# --seqs --membw measures the bandwidth beside the runs (it printed 0.0 GB/s), --profile one table per thread count
"$MOE" bench -m "$T/c" --seqs 1,2 -n 3 -r 2 -t 1 --membw --membw-mib 16 --profile >"$T/out" 2>/dev/null &&
    grep -q 'memory bandwidth used for bw %: [1-9][0-9.]* GB/s (1 thread)' "$T/out" &&
    [ "$(grep -c '^profile' "$T/out")" -eq 1 ] && ok || bad "--seqs --membw --profile: $(cat "$T/out")"
expect_error "bad seqs" "--seqs wants" "$MOE" bench -m "$T/c" --seqs x
expect_error "too many seqs" "sequence counts must be in" "$MOE" bench -m "$T/c" --seqs 65
# --plan's bytes read per decoded token are the engine's own (the loader's formats): q8 and bf16
for dt in q8 bf16; do
    plan=$("$MOE" mkckpt --config "$T/tiny.json" --shape S --plan 2>&1 | awk -v d="$dt" '$1 == d { v = $4 } END { print v }')
    eng=$("$MOE" bench -m "$T/c" -p 0 -n 1 -r 1 -t 1 --dtype "$dt" --json 2>/dev/null |
          awk -F': ' '/"weight_bytes_per_token"/ { printf "%.2f", $2 / 1e6 }')
    [ -n "$plan" ] && [ "$plan" = "$eng" ] && ok || bad "--plan $dt read/token $plan MB vs bench $eng MB"
done
expect_error "mtp without MTP module" "no MTP module" "$MOE" bench -m tests/data/golden/v2lite-f32 -p 0 -n 4 -r 1 -t 1 --mtp
expect_error "missing model" "-m DIR is required" "$MOE" bench
expect_error "missing dir" "nowhere/config.json" "$MOE" bench -m "$T/nowhere"
expect_error "bad threads" "-t wants" "$MOE" bench -m "$T/c" -t x
expect_error "bad dtype" "--dtype must be" "$MOE" bench -m "$T/c" --dtype int4
expect_error "bad bw" "--bw wants" "$MOE" bench -m "$T/c" --bw fast
expect_error "unknown option" "unknown option" "$MOE" bench --frobnicate

echo "cli_bench: $pass passed, $fail failed"
[ $fail -eq 0 ]
