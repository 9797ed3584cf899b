#!/bin/sh
# Checks of `moe serve` on the toy model over loopback (tests/serve_check.py does the
# HTTP side with Python's standard library): routes, chat and completions streamed and
# not, usage, stop strings, the routing extension, cache reuse, greedy = `moe generate`
# (alone and with 15 other requests decoding), 32 concurrent requests over 4 slots,
# every bad-input case, --mtp, API key, disconnects, queue full, SIGTERM, and no sanitizer
# report. Each server gets --port 0 and prints the port it bound.
MOE=${MOE:-build/moe}
. tests/lib/harness.sh
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

"$MOE" serve --help | grep -q "usage: moe serve" && ok || bad "serve --help"
M0="$T/nomtp"
mkdir "$M0"
ln -s "$PWD/models/toy/model.safetensors" "$PWD/models/toy/tokenizer.json" "$PWD/models/toy/tokenizer_config.json" "$M0/"
sed 's/"num_nextn_predict_layers": 1/"num_nextn_predict_layers": 0/' models/toy/config.json >"$M0/config.json"
expect_error "serve --mtp without an MTP module" "no MTP module" "$MOE" serve -m "$M0" --mtp --port 0 -q
expect_error "serve without -m" "-m DIR is required" "$MOE" serve
expect_error "serve --parallel 0" "--parallel" "$MOE" serve -m models/toy --parallel 0
expect_error "serve --host name" "not an IPv4 or IPv6 address" "$MOE" serve -m models/toy --host example.invalid --port 0 -q

# the toy model with room for long generations (RoPE has no trained limit): slow enough
# requests to overlap, disconnect and queue
L="$T/toy-long"
mkdir "$L"
ln -s "$PWD/models/toy/model.safetensors" "$PWD/models/toy/tokenizer.json" "$PWD/models/toy/tokenizer_config.json" "$L/"
sed 's/"max_position_embeddings": 256/"max_position_embeddings": 4096/' models/toy/config.json >"$L/config.json"

# start_server NAME ARGS...: starts moe serve, sets $pid and $port (waits up to 30 s)
start_server() {
    name=$1; shift
    "$MOE" serve --port 0 -t 1 "$@" 2>"$T/$name.log" &
    pid=$!
    port=""
    i=0
    while [ $i -lt 300 ] && [ -z "$port" ]; do
        port=$(sed -n 's/^moe serve: port \([0-9]*\)$/\1/p' "$T/$name.log")
        kill -0 $pid 2>/dev/null || break
        [ -n "$port" ] || sleep 0.1
        i=$((i+1))
    done
    [ -n "$port" ] || { bad "$name: the server did not start: $(cat "$T/$name.log")"; kill $pid 2>/dev/null; }
}

# stop_server NAME: SIGTERM (unless already gone), wait up to 30 s, check exit and log
stop_server() {
    name=$1
    kill -TERM $pid 2>/dev/null
    i=0
    while kill -0 $pid 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    if kill -0 $pid 2>/dev/null; then bad "$name: still running 30 s after SIGTERM"; kill -KILL $pid; fi
    wait $pid; rc=$?
    [ $rc -eq 0 ] && ok || bad "$name: exit code $rc after SIGTERM: $(tail -5 "$T/$name.log")"
    grep -q "moe serve: stopped" "$T/$name.log" && ok || bad "$name: no clean stop line"
    if grep -q -E "AddressSanitizer|LeakSanitizer|runtime error:" "$T/$name.log"; then
        bad "$name: sanitizer report:"; grep -A30 -E "AddressSanitizer|LeakSanitizer|runtime error:" "$T/$name.log" | head -60
    else ok; fi
}

run_check() {
    if timeout 600 "$PY" tests/serve_check.py "$@" >"$T/check.out" 2>&1; then ok
    else bad "serve_check.py $2:"; cat "$T/check.out"; fi
    grep "^serve_check" "$T/check.out"
}

# F32 weights: a token's logits are then bit-identical whatever else shares its pass
# (tests/test_batch.c; with BF16 they agree to ~2e-7, which can flip a sampled draw), so
# every concurrent answer must equal its serial one exactly.
start_server basic -m models/toy --parallel 4 --max-body 65536 --timeout 2 --dtype f32
[ -n "$port" ] && run_check $port basic "$MOE" models/toy f32
stop_server basic

# --mtp-mode always: every decoding slot's MTP draft verified in the batched pass; greedy
# answers still equal moe generate (without --mtp), concurrent ones their serial ones
start_server mtp -m models/toy --parallel 4 --max-body 65536 --timeout 2 --dtype f32 --mtp-mode always
[ -n "$port" ] && run_check $port mtp "$MOE" models/toy f32
stop_server mtp

# --mtp (auto): steps that draft and steps that do not, the same answers
start_server mtpauto -m models/toy --parallel 4 --max-body 65536 --timeout 2 --dtype f32 --mtp
[ -n "$port" ] && run_check $port mtp-auto "$MOE" models/toy f32
stop_server mtpauto

# --batch 20 beside 15 decoding slots: the new prompt is read 5 tokens per pass
start_server parallel -m "$L" --ctx 1024 --parallel 16 --batch 20 -q --dtype f32
[ -n "$port" ] && run_check $port parallel "$MOE" "$L" f32
stop_server parallel

start_server limits -m "$L" --ctx 4096 --parallel 1 --queue 1 --api-key sekret
if [ -n "$port" ]; then
    run_check $port limits sekret $pid    # ends with SIGTERM to the server
    stop_server limits
fi

# Ctrl-C: SIGINT stops it as cleanly as SIGTERM (exit 0, the stop line, no sanitizer report)
start_server sigint -m models/toy --parallel 2
if [ -n "$port" ]; then
    "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/v1/completions', b'{\"prompt\":\"The cat\",\"max_tokens\":4}', 30).read()" \
        && ok || bad "sigint: a request before the signal"
    kill -INT $pid
    stop_server sigint
    grep -q "moe serve: SIGINT: finishing" "$T/sigint.log" && ok || bad "sigint: no SIGINT line: $(tail -3 "$T/sigint.log")"
fi

echo "cli_serve: $pass passed, $fail failed"
[ $fail -eq 0 ]
