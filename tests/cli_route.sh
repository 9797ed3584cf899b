#!/bin/sh
# Command-line checks of `moe route` and `moe ppl`: the promised files with consistent
# contents, one line per active knob, and bad input ending in ONE error line with a
# non-zero exit (an empty text, a co-activation layer out of range or dense, K > E).
MOE=${MOE:-build/moe}
G=tests/data/golden
. tests/lib/harness.sh


"$MOE" route --help | grep -q "usage: moe route" && ok || bad "route --help"
"$MOE" ppl --help | grep -q "usage: moe ppl" && ok || bad "ppl --help"

# --- a run on tiny-bf16 (256 experts, top-8, layers: 0 dense, 1 MoE, 2 MTP) ------------
printf 'The quick brown fox jumps over the lazy dog.\nRouting you can see.\n' >"$T/in.txt"
if "$MOE" route -m $G/tiny-bf16 -f "$T/in.txt" -o "$T/r" --trace --batch 16 >"$T/table" 2>"$T/err"; then
    ntok=$(( $(wc -c <"$T/in.txt") + 1 ))          # byte ids + BOS (no tokenizer.json)
    for f in counts.csv summary.json coact.csv load.svg coact.svg trace.jsonl; do
        [ -s "$T/r.$f" ] && ok || bad "missing $T/r.$f"
    done
    head -1 "$T/r.counts.csv" | grep -qx "layer_id,expert_id,count" && ok || bad "counts.csv header"
    # per layer: 256 rows, counts summing to tokens x 8; only layers 1 and 2 (layer 0 is dense)
    sums=$(awk -F, 'NR>1 {s[$1]+=$3; n[$1]++} END {for (l in s) print l, n[l], s[l]}' "$T/r.counts.csv" | sort | tr '\n' ' ')
    [ "$sums" = "1 256 $((ntok*8)) 2 256 $((ntok*8)) " ] && ok || bad "counts per layer: $sums (want $ntok tokens x 8)"
    [ "$(wc -l <"$T/r.coact.csv")" -eq $((256*256+1)) ] && ok || bad "coact.csv rows"
    [ "$(wc -l <"$T/r.trace.jsonl")" -eq $((ntok*2)) ] && ok || bad "trace.jsonl lines $(wc -l <"$T/r.trace.jsonl")"
    [ "$(grep -c '^pos ' "$T/err")" -eq $((ntok*2)) ] && ok || bad "compact trace lines on stderr"
    head -1 "$T/r.trace.jsonl" | grep -q '"experts":\[' && ok || bad "trace json fields"
    grep -q '"layers"' "$T/r.summary.json" && grep -q '"maxvio"' "$T/r.summary.json" && ok || bad "summary.json"
    for f in load coact; do
        tail -1 "$T/r.$f.svg" | grep -qx '</svg>' && ok || bad "$f.svg not closed"
    done
    grep -q "^1 " "$T/table" && grep -q "^2 mtp" "$T/table" && ok || bad "table rows: $(cat "$T/table")"
    if command -v python3 >/dev/null; then
        python3 -c "import json,sys; json.load(open('$T/r.summary.json'))
import xml.dom.minidom as m; m.parse('$T/r.load.svg'); m.parse('$T/r.coact.svg')
[json.loads(l) for l in open('$T/r.trace.jsonl')]" && ok || bad "JSON/SVG do not parse"
    fi
else bad "route run: $(cat "$T/err")"; fi

# --- windows shorter than the text: every token is still routed once per layer --------
if "$MOE" route -m $G/tiny-bf16 -f "$T/in.txt" -o "$T/w" --ctx 16 --batch 5 -q 2>"$T/err"; then
    sums=$(awk -F, 'NR>1 {s[$1]+=$3} END {for (l in s) print l, s[l]}' "$T/w.counts.csv" | sort | tr '\n' ' ')
    [ "$sums" = "1 $((ntok*8)) 2 $((ntok*8)) " ] && ok || bad "windowed counts: $sums"
    grep -q '"window": 16' "$T/w.summary.json" && ok || bad "window in summary"
else bad "windowed run: $(cat "$T/err")"; fi

# --- explain one token --------------------------------------------------------------
"$MOE" route -m $G/tiny-bf16 -p "Hello world" -o "$T/e" --explain 3 -q >"$T/ex" 2>/dev/null &&
    grep -q "router_select" "$T/ex" && grep -q "MTP (engine/model.c model_forward_mtp)" "$T/ex" &&
    grep -q "c_kv \[R = 32\] + k_pe \[dr = 8\]" "$T/ex" && ok || bad "--explain: $(head -5 "$T/ex")"

# --- knobs: one line each ----------------------------------------------------------------
"$MOE" route -m $G/tiny-bf16 -p "abc" -o "$T/k" -q --experts-per-token 4 --no-group-limit --no-route-bias 2>"$T/err" &&
    grep -q "routing: using 4 experts per token instead of 8 (--experts-per-token)" "$T/err" &&
    grep -q "(--no-group-limit)" "$T/err" && grep -q "(--no-route-bias)" "$T/err" && ok || bad "knob lines: $(cat "$T/err")"
awk -F, 'NR>1 && $1==1 {s+=$3} END {exit !(s==4*4)}' "$T/k.counts.csv" && ok || bad "K=4 counts"
"$MOE" route -m $G/v2lite-f32 -p "abc" -o "$T/v" -q --no-group-limit 2>"$T/err" && grep -q "not group-limited" "$T/err" &&
    ok || bad "no-group-limit on a greedy model: $(cat "$T/err")"

# --- ppl -------------------------------------------------------------------------------
"$MOE" ppl -m $G/tiny-bf16 -f "$T/in.txt" --ctx 20 >"$T/ppl" 2>/dev/null &&
    grep -q "ppl: $ntok tokens, $((ntok-1)) predicted, .* nats/token, perplexity" "$T/ppl" && ok || bad "ppl: $(cat "$T/ppl")"
# one window or many: the same tokens are predicted; with ctx >= T the value equals a single pass
a=$("$MOE" ppl -m $G/tiny-bf16 --tokens 5,17,300,2,9,9,41 2>/dev/null | sed 's/.*perplexity \([0-9.]*\).*/\1/')
b=$("$MOE" ppl -m $G/tiny-bf16 --tokens 5,17,300,2,9,9,41 --batch 2 2>/dev/null | sed 's/.*perplexity \([0-9.]*\).*/\1/')
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "ppl chunked ($b) != one pass ($a)"

# --- bad input -------------------------------------------------------------------------
expect_error "empty text" "input text is empty" "$MOE" route -m $G/tiny-bf16 -p "" -o "$T/x"
: >"$T/empty.txt"
expect_error "empty file" "is empty" "$MOE" route -m $G/tiny-bf16 -f "$T/empty.txt" -o "$T/x"
expect_error "coact layer out of range" "out of range" "$MOE" route -m $G/tiny-bf16 -p a --coact-layer 3 -o "$T/x"
expect_error "coact layer dense" "dense layer" "$MOE" route -m $G/tiny-bf16 -p a --coact-layer 0 -o "$T/x"
expect_error "K > E" "larger than the 256 experts" "$MOE" route -m $G/tiny-bf16 -p a --experts-per-token 300 -o "$T/x"
expect_error "K = 0" "must be an integer in" "$MOE" route -m $G/tiny-bf16 -p a --experts-per-token 0
expect_error "no input" "exactly one of" "$MOE" route -m $G/tiny-bf16
expect_error "missing file" "nowhere.txt" "$MOE" route -m $G/tiny-bf16 -f "$T/nowhere.txt"
expect_error "explain past end" "past the end" "$MOE" route -m $G/tiny-bf16 --tokens 1,2 --explain 5
expect_error "unwritable prefix" "cannot write" "$MOE" route -m $G/tiny-bf16 --tokens 1,2 -o "$T/no/dir/x" -q
expect_error "ppl K > E" "larger than the 64 experts" "$MOE" ppl -m $G/v2lite-f32 -p a --experts-per-token 65
expect_error "generate K > E" "larger than the 256 experts" "$MOE" generate -m $G/tiny-bf16 -p a --experts-per-token 300
expect_error "ppl one token" "nothing to predict" "$MOE" ppl -m $G/tiny-bf16 --tokens 3
expect_error "ppl empty" "is empty" "$MOE" ppl -m $G/tiny-bf16 -f "$T/empty.txt"

echo "cli_route: $pass passed, $fail failed"
[ $fail -eq 0 ]
