#!/bin/sh
# valgrind memcheck of whole command-line runs: `moe logits` on two golden checkpoints
# (BF16 prefill; FP8 + YaRN token-by-token decode), `moe tokenize` with the DeepSeek-V3
# tokenizer, and `moe generate` (plain and --mtp) and `moe chat` on the shipped toy model. Any invalid read/write, use of
# uninitialised memory or definite/indirect leak fails (exit 1). Not part of `make test`
# (about a minute or more under valgrind); run from the repository root after `make`:
#     sh tests/valgrind.sh
MOE=${MOE:-build/moe}
[ -x "$MOE" ] || { echo "valgrind.sh: build $MOE first (make)"; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed (apt-get install valgrind)"; exit 2; }
out=$(mktemp -d /tmp/moe-valgrind-XXXXXX)
trap 'rm -rf "$out"' EXIT
VG="valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --track-origins=yes --quiet"
pass=0; fail=0
run() {   # name, command...
    name=$1; shift
    start=$(date +%s)
    if $VG "$@" >"$out/$name.out" 2>"$out/$name.err" <"${STDIN:-/dev/null}"; then
        pass=$((pass+1)); echo "ok   $name ($(( $(date +%s) - start )) s)"
    else
        fail=$((fail+1)); echo "FAIL $name (rc $?)"; tail -40 "$out/$name.err"
    fi
}
run logits-bf16-prefill "$MOE" logits -m tests/data/golden/tiny-bf16 --tokens 1,5,17,30,2 -o "$out/a.safetensors"
run logits-fp8-decode "$MOE" logits -m tests/data/golden/tiny-yarn-fp8 --tokens 3,4,5 --mode decode -o "$out/b.safetensors"
run tokenize-v3 "$MOE" tokenize -m tests/data/tokenizer/deepseek_v3 -p "Hello, 世界! 12345 <｜User｜>"
run generate "$MOE" generate -m models/toy -p "Once upon a time" -n 8 --seed 1
run generate-mtp "$MOE" generate -m models/toy -p "Once upon a time" -n 8 --greedy --mtp
printf 'Hello\nWho are you?\n' >"$out/chat.txt"
STDIN="$out/chat.txt" run chat-pipe "$MOE" chat -m models/toy -n 6 --seed 2
echo "valgrind: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
