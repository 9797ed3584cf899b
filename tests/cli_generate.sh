#!/bin/sh
# Command-line checks of `moe generate` and `moe chat` on a golden random
# checkpoint paired with the 512-token test tokenizer (tests/data/tiny-tokenizer):
# determinism, --mtp equivalence, timing lines, prompts from files, context limits,
# invalid UTF-8, pipes, and one-line errors.
MOE=${MOE:-build/moe}
. tests/lib/harness.sh
M="$T/model"
mkdir "$M"
for f in tests/data/golden/tiny-bf16/*; do ln -s "$PWD/$f" "$M/"; done
cp tests/data/tiny-tokenizer/*.json "$M/"

"$MOE" generate --help | grep -q "usage: moe generate" && ok || bad "generate --help"
"$MOE" chat --help | grep -q "usage: moe chat" && ok || bad "chat --help"

# the same seed gives the same text; greedy with and without --mtp is identical
for args in "--greedy" "--seed 5" "--seed 5 --top-k 5 --top-p 0.9 --min-p 0.1 --temp 1.2"; do
    "$MOE" generate -m "$M" -p "the cat and the dog" -n 40 $args >"$T/a" 2>/dev/null || bad "run $args"
    "$MOE" generate -m "$M" -p "the cat and the dog" -n 40 $args >"$T/b" 2>/dev/null || bad "run $args"
    cmp -s "$T/a" "$T/b" && ok || bad "not deterministic: $args"
done
for n in 1 2 9 40; do
    "$MOE" generate -m "$M" -p "in the beginning" -n $n --greedy >"$T/a" 2>/dev/null
    "$MOE" generate -m "$M" -p "in the beginning" -n $n --greedy --mtp >"$T/b" 2>"$T/err"
    cmp -s "$T/a" "$T/b" && ok || bad "--mtp greedy differs at -n $n"
done
grep -q "mtp: drafted" "$T/err" && ok || bad "--mtp stats line"
grep -q -- "--mtp (auto)" "$T/err" && ok || bad "--mtp is auto by default: $(cat "$T/err")"
"$MOE" generate -m "$M" -p "in the beginning" -n 40 --greedy --mtp-mode always >"$T/b" 2>"$T/err"
"$MOE" generate -m "$M" -p "in the beginning" -n 40 --greedy >"$T/a" 2>/dev/null
cmp -s "$T/a" "$T/b" && ok || bad "--mtp-mode always greedy differs"
grep -q -- "--mtp (always)" "$T/err" && ok || bad "--mtp-mode always says so: $(cat "$T/err")"
expect_error "bad mtp mode" "--mtp-mode must be always or auto" "$MOE" generate -m "$M" -p x --mtp-mode sometimes
# --draft-dtype q8: drafts from a q8 MTP module, output still exactly plain greedy; its cost printed
"$MOE" generate -m "$M" -p "in the beginning" -n 40 --greedy --mtp-mode always --draft-dtype q8 >"$T/b" 2>"$T/err"
cmp -s "$T/a" "$T/b" && ok || bad "--draft-dtype q8 greedy differs"
grep -q -- "--draft-dtype q8: the MTP module (drafts only) in q8" "$T/err" && ok || bad "--draft-dtype cost line: $(cat "$T/err")"
expect_error "bad draft length" "--draft must be an integer in" "$MOE" generate -m "$M" -p x --draft 0
expect_error "bad draft dtype" "--draft-dtype must be same, f32, bf16, q8 or q4" "$MOE" generate -m "$M" -p x --draft-dtype q3
# --kv-dtype bf16: says what it costs, greedy text on this checkpoint unchanged; a bad value is one line
"$MOE" generate -m "$M" -p "in the beginning" -n 30 --greedy >"$T/a" 2>/dev/null
"$MOE" generate -m "$M" -p "in the beginning" -n 30 --greedy --kv-dtype bf16 >"$T/b" 2>"$T/err" || bad "--kv-dtype bf16 run"
cmp -s "$T/a" "$T/b" && ok || bad "--kv-dtype bf16 greedy text differs: $(cat "$T/b")"
grep -q "kv-dtype bf16: the latent cache holds bf16 values, half the bytes" "$T/err" && ok || bad "--kv-dtype says its cost: $(cat "$T/err")"
expect_error "bad kv dtype" "--kv-dtype must be f32 or bf16, not 'q3'" "$MOE" generate -m "$M" -p x --kv-dtype q3
# the timing line, llama.cpp-style
"$MOE" generate -m "$M" -p "the" -n 5 --greedy 2>"$T/err" >/dev/null
grep -q "prompt eval time" "$T/err" && grep -q "tokens per second" "$T/err" && ok || bad "timing line: $(cat "$T/err")"
# -f FILE is the same as -p
printf 'the cat and the dog' >"$T/prompt.txt"
"$MOE" generate -m "$M" -f "$T/prompt.txt" -n 20 --greedy >"$T/b" 2>/dev/null
"$MOE" generate -m "$M" -p "the cat and the dog" -n 20 --greedy >"$T/a" 2>/dev/null
cmp -s "$T/a" "$T/b" && ok || bad "-f differs from -p"
# context limits: an error that says the limits, or truncation with a warning
expect_error "prompt beyond context" "context holds 8" "$MOE" generate -m "$M" -p "the cat and the dog and the bird and the fish" --ctx 8 -n 2
"$MOE" generate -m "$M" -p "the cat and the dog and the bird and the fish" --ctx 8 -n 2 --truncate >/dev/null 2>"$T/err" \
    && grep -q "warning: prompt of" "$T/err" && ok || bad "--truncate: $(cat "$T/err")"
# invalid UTF-8 in a prompt: documented (each bad byte is its own piece), no crash
printf 'caf\303 \377\376 ok' >"$T/bad.txt"
"$MOE" generate -m "$M" -f "$T/bad.txt" -n 5 --greedy >/dev/null 2>"$T/err" && ok || bad "invalid UTF-8 prompt: $(cat "$T/err")"
# chat from a pipe, two turns, with and without --mtp (greedy: same replies)
printf 'hello\nhow are you\n' | "$MOE" chat -m "$M" -n 12 --greedy >"$T/a" 2>"$T/err" && grep -q "2 turns" "$T/err" && ok || bad "chat: $(cat "$T/err")"
printf 'hello\nhow are you\n' | "$MOE" chat -m "$M" -n 12 --greedy --mtp >"$T/b" 2>/dev/null
cmp -s "$T/a" "$T/b" && ok || bad "chat --mtp differs"
# errors
mkdir "$T/notok" && for f in tests/data/golden/tiny-bf16/*; do ln -s "$PWD/$f" "$T/notok/"; done
expect_error "no tokenizer" "notok/tokenizer.json" "$MOE" generate -m "$T/notok" -p hi
expect_error "bad temperature" "temperature" "$MOE" generate -m "$M" -p hi --temp -1
expect_error "no prompt" "-p TEXT or -f FILE" "$MOE" generate -m "$M"
expect_error "missing prompt file" "nope.txt" "$MOE" generate -m "$M" -f "$T/nope.txt"
expect_error "no template" "chat_template" sh -c "mkdir -p '$T/nt' && ln -sf '$M'/* '$T/nt/' && rm '$T/nt/tokenizer_config.json' && '$MOE' chat -m '$T/nt'"
# --act-lowp: prints what it does (every product, decode and prefill and batches); a prompt and
# MTP drafts through the low-precision matmul run; greedy with and without --mtp stays identical
"$MOE" generate -m "$M" -p "in the beginning of the story" -n 20 --greedy --act-lowp >"$T/a" 2>"$T/err" || bad "--act-lowp run"
grep -q -- "--act-lowp: every product (decode, prefill, batches, MTP) rounds the activations" "$T/err" && ok || bad "--act-lowp line: $(cat "$T/err")"
"$MOE" generate -m "$M" -p "in the beginning of the story" -n 20 --greedy --act-lowp --mtp-mode always >"$T/b" 2>/dev/null || bad "--act-lowp --mtp run"
cmp -s "$T/a" "$T/b" && ok || bad "--act-lowp: --mtp greedy differs"
"$MOE" bench --help | grep -q -- "--act-lowp          bf16 / int8 activations in every product" && ok || bad "bench --help --act-lowp"
# weights copied into huge pages at load (default) or read from the mapping (--mmap): the same
# bytes, so the same greedy text; bench says how much was copied, and nothing with --mmap
"$MOE" generate -m "$M" -p "in the beginning of the story" -n 20 --greedy >"$T/a" 2>/dev/null || bad "copy run"
"$MOE" generate -m "$M" -p "in the beginning of the story" -n 20 --greedy --mmap >"$T/b" 2>/dev/null || bad "--mmap run"
cmp -s "$T/a" "$T/b" && ok || bad "--mmap greedy text differs"
"$MOE" bench -m "$M" -p 0 -n 2 -r 1 -t 1 2>&1 | grep -E "; [1-9][0-9.]* MiB of them copied as stored into huge pages" >/dev/null && ok || bad "bench: no copy line"
"$MOE" bench -m "$M" -p 0 -n 2 -r 1 -t 1 --mmap 2>&1 | grep -q "; 0.0 MiB of them copied" && ok || bad "bench --mmap still copied"
echo "cli_generate: $pass passed, $fail failed"
[ $fail -eq 0 ]
