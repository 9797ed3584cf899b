#!/bin/sh
# Command-line checks of `moe tokenize`: -p / -f / --decode give the official
# ids and the text back; bad input ends in ONE error line naming the file,
# exit 1, no crash.
MOE=${MOE:-build/moe}
V3=tests/data/tokenizer/deepseek_v3
. tests/lib/harness.sh

# expect_out "description" "expected stdout" command...
expect_out() {
    desc=$1; want=$2; shift 2
    got=$("$@" 2>"$T/err"); rc=$?
    if [ $rc -eq 0 ] && [ "$got" = "$want" ]; then ok; else bad "$desc: rc=$rc got '$got' want '$want' $(cat "$T/err")"; fi
}

"$MOE" tokenize --help | grep -q "usage: moe tokenize" && ok || bad "--help"
"$MOE" --help | grep -q "tokenize" && ok || bad "moe --help lists tokenize"

# ids from npm tokenizers@0.23.2 (see tests/data/tokenizer/deepseek_v3/golden.jsonl)
expect_out "-p" "19923,14,2058,3" "$MOE" tokenize -m $V3 -p "Hello, world!"
expect_out "-p digits" "6895,18009,25744,18" "$MOE" tokenize -m $V3 -p "1234567890"
expect_out "-p special" "128803,19923,128804" "$MOE" tokenize -m $V3 -p "<｜User｜>Hello<｜Assistant｜>"
expect_out "-p file path" "19923,14,2058,3" "$MOE" tokenize -m $V3/tokenizer.json -p "Hello, world!"
expect_out "--decode -p" "Hello, world!" "$MOE" tokenize -m $V3 -p "19923, 14,2058,3" --decode
expect_out "empty -p" "" "$MOE" tokenize -m $V3 -p ""

printf 'Hello, world!\n\n1234567890\n<｜User｜>Hello<｜Assistant｜>' >"$T/in.txt"
printf '19923,14,2058,3\n\n6895,18009,25744,18\n128803,19923,128804\n' >"$T/want.txt"
if "$MOE" tokenize -m $V3 -f "$T/in.txt" >"$T/ids.txt" 2>"$T/err" && cmp -s "$T/ids.txt" "$T/want.txt"; then ok
else bad "-f: $(cat "$T/ids.txt" "$T/err")"; fi
if "$MOE" tokenize -m $V3 -f "$T/ids.txt" --decode >"$T/back.txt" 2>"$T/err" && [ "$(cat "$T/back.txt")" = "$(cat "$T/in.txt")" ]; then ok
else bad "-f --decode: $(cat "$T/back.txt" "$T/err")"; fi

# bench prints its numbers
"$MOE" tokenize -m $V3 -f "$T/in.txt" --bench | grep -q "encode_MBps=" && ok || bad "--bench"

# bad input
expect_error "missing dir" "/nonexistent/tokenizer.json" "$MOE" tokenize -m /nonexistent -p x
expect_error "missing -f file" "$T/none.txt" "$MOE" tokenize -m $V3 -f "$T/none.txt"
echo '{"model": {' >"$T/tokenizer.json"
expect_error "malformed json" "$T/tokenizer.json" "$MOE" tokenize -m "$T" -p x
expect_error "bad ids" "expected token ids" "$MOE" tokenize -m $V3 -p "1,x,3" --decode
expect_error "id out of range" "token id 999999" "$MOE" tokenize -m $V3 -p "1,999999" --decode
"$MOE" tokenize -m $V3 >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "no -p/-f: exit 1"
"$MOE" tokenize -m $V3 -p x --bogus >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "unknown option: exit 1"

# invalid UTF-8 in the prompt: encoded byte by byte, decodes to the same bytes
bad_text=$(printf 'ab\377cd')
ids=$("$MOE" tokenize -m $V3 -p "$bad_text") && back=$("$MOE" tokenize -m $V3 -p "$ids" --decode) && [ "$back" = "$bad_text" ] && ok || bad "invalid UTF-8 round trip"

echo "cli_tokenize: $pass passed, $fail failed"
[ $fail -eq 0 ]
