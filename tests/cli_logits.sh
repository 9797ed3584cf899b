#!/bin/sh
# Command-line checks of `moe logits`: it writes the promised tensors, and bad
# input ends in ONE error line naming the file, with a non-zero exit and no crash.
MOE=${MOE:-build/moe}
G=tests/data/golden
. tests/lib/harness.sh


"$MOE" logits --help | grep -q "usage: moe logits" && ok || bad "--help"
"$MOE" --help | grep -q "logits" && ok || bad "moe --help"

for mode in prefill decode; do
    if "$MOE" logits -m $G/tiny-bf16 --tokens 5,17,300,2 -o "$T/o.safetensors" --mode $mode 2>"$T/err"; then
        hdr=$(head -c 2000 "$T/o.safetensors" | tr -d '\0')
        for name in '"logits"' '"mtp.logits"' '"routing.1.ids"' '"routing.2.weights"' '"tokens"'; do
            echo "$hdr" | grep -q "$name" && ok || bad "$mode: output lacks $name"
        done
    else bad "$mode run: $(cat "$T/err")"; fi
done

expect_error "missing dir" "nowhere/config.json" "$MOE" logits -m "$T/nowhere" --tokens 1 -o "$T/x"
expect_error "token out of vocab" "token id 99999" "$MOE" logits -m $G/tiny-bf16 --tokens 1,99999 -o "$T/x"
expect_error "bad token list" "invalid token id list" "$MOE" logits -m $G/tiny-bf16 --tokens 1,x -o "$T/x"
expect_error "missing args" "required" "$MOE" logits -m $G/tiny-bf16
expect_error "unknown option" "unknown option" "$MOE" logits --frobnicate
mkdir "$T/trunc" && cp $G/v2lite-f32/config.json "$T/trunc/" && head -c 100000 $G/v2lite-f32/model.safetensors >"$T/trunc/model.safetensors"
expect_error "truncated checkpoint" "trunc/model.safetensors" "$MOE" logits -m "$T/trunc" --tokens 1 -o "$T/x"
expect_error "unknown command" "unknown command" "$MOE" frobnicate

echo "cli_logits: $pass passed, $fail failed"
[ $fail -eq 0 ]
