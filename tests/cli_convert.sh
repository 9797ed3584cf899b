#!/bin/sh
# Command-line checks of `moe convert` (a checkpoint -> llama.cpp deepseek2 GGUF) and of
# running a .gguf with `moe generate`: the toy model's text is the same from either file,
# bad input is one error line and a non-zero exit.
MOE=${MOE:-build/moe}
. tests/lib/harness.sh

"$MOE" convert --help | grep -q "usage: moe convert" && ok || bad "--help"
"$MOE" --help | grep -q "convert" && ok || bad "moe --help lists convert"
if "$MOE" convert -m models/toy -o "$T/toy.gguf" --type f32 2>"$T/err"; then
    grep -q "wrote $T/toy.gguf: f32" "$T/err" && grep -q "with the tokenizer" "$T/err" && ok || bad "convert line: $(cat "$T/err")"
    "$MOE" generate -m "$T/toy.gguf" -p "Once upon a time" -n 40 --seed 3 >"$T/a" 2>/dev/null &&
    "$MOE" generate -m models/toy --dtype f32 -p "Once upon a time" -n 40 --seed 3 >"$T/b" 2>/dev/null &&
        cmp -s "$T/a" "$T/b" && ok || bad "generate from the GGUF differs: $(cat "$T/a") / $(cat "$T/b")"
    "$MOE" tokenize -m "$T/toy.gguf" -p "The cat sat." >"$T/a" 2>/dev/null && "$MOE" tokenize -m models/toy -p "The cat sat." >"$T/b" &&
        cmp -s "$T/a" "$T/b" && ok || bad "tokenize from the GGUF differs"
else bad "convert: $(cat "$T/err")"; fi
expect_error "no args" "-m DIR and -o FILE.gguf are required" "$MOE" convert
expect_error "bad type" "--type must be f32, bf16, q8_0 or q4_0" "$MOE" convert -m models/toy -o "$T/x.gguf" --type q3
expect_error "unrepresentable" "has no deepseek2 GGUF equivalent" "$MOE" convert -m tests/data/golden/mix-f32 -o "$T/x.gguf"
expect_error "missing gguf" "nothere.gguf: cannot open" "$MOE" generate -m "$T/nothere.gguf" -p x
expect_error "metadata-only gguf" "tiny-bf16.meta.gguf" "$MOE" generate -m tests/data/gguf/tiny-bf16.meta.gguf -p x
# quantized GGUF files: the load says that Q4_0 / Q5_0 / k-quant products quantize the activations;
# a Q8_0 file (f32 activations) says nothing of the kind
"$MOE" generate -m tests/data/gguf/v2lite.Q4_0.gguf -p a -n 2 --greedy 2>"$T/err" >/dev/null &&
    grep -q "^activations: products with Q4_0 / Q5_0 / Q4_K / Q5_K / Q6_K weights quantize x per block to int8" "$T/err" &&
    ok || bad "Q4_0 load: no activations line: $(cat "$T/err")"
"$MOE" generate -m tests/data/gguf/v2lite.Q8_0.gguf -p a -n 2 --greedy 2>"$T/err" >/dev/null &&
    ! grep -q "^activations:" "$T/err" && ok || bad "Q8_0 load: an activations line: $(cat "$T/err")"
echo "cli_convert: $pass passed, $fail failed"
[ $fail -eq 0 ]
