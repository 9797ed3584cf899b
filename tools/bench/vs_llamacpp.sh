#!/bin/sh
# moe against llama.cpp, side by side on this machine, on identical weights (issue 5's table).
#
# llama.cpp: a CPU build with native flags of the llama.cpp source that the npm package
# node-llama-cpp carries as a git bundle (a package registry is all this machine reaches):
#   tools/bench/vs_llamacpp.sh setup           # npm package -> source -> cmake build of
#                                              # llama-bench, llama-quantize, llama-server in
#                                              # $LLAMA_DIR (default /work/llama.cpp)
#   tools/bench/vs_llamacpp.sh convert         # S and M checkpoints -> GGUF (tools/bench/to_gguf.py)
#   tools/bench/vs_llamacpp.sh check           # both engines' logits on S (f32): the same function?
#   tools/bench/vs_llamacpp.sh check-toy       # models/toy through `moe convert` (f32, bf16, q8_0, q4_0):
#                                              # moe and llama.cpp on each file against its exact pass
#   tools/bench/vs_llamacpp.sh run             # ROUNDS rounds, each: every configuration, llama.cpp
#                                              # and moe in turn (the order flips every round)
#   python3 tools/bench/vs_summary.py $BENCH_DIR/vs/*.json    # the table
# ik_llama.cpp joins each round as a third engine when IK_BENCH names its llama-bench (built from
# the GitHub snapshot ikawrakow/ik_llama.cpp: cmake -B build -DGGML_NATIVE=ON
# -DGGML_IQK_FA_ALL_QUANTS=OFF && ninja -C build llama-bench), with IK_FLAGS (default its best for
# DeepSeek: -mla 3 -fa 1 -fmoe 1; add -rtr 1 to repack rows at load) on FILE-ik.gguf, the older
# one-attn_kv_b layout `convert` writes for it (it takes the split layout only at DeepSeek's own
# head sizes).
# Nothing here is committed or needed by the tests: checkpoints, GGUF files, the llama.cpp tree
# and results all live outside the repository.
set -eu
cd "$(dirname "$0")/../.."
MOE=${MOE:-build/moe}
DIR=${BENCH_DIR:-/work/bench-ckpt}
LLAMA_DIR=${LLAMA_DIR:-/work/llama.cpp}
NLC_VERSION=${NLC_VERSION:-3.21.1}
PY=${PY:-/usr/bin/python3}
ROUNDS=${ROUNDS:-3}; R=${R:-3}; P=${P:-512}; N=${N:-128}; THREADS=${THREADS:-1,2}
# checkpoint : moe --dtype : GGUF out type (f32 is the bf16 checkpoint widened, in both engines;
# a Q* type is llama-quantize's of the bf16 GGUF, and moe --dtype gguf reads that same file)
CONFIGS=${CONFIGS:-"S-bf16:auto:bf16 S-bf16:q8:q8_0 M-bf16:f32:f32 M-bf16:auto:bf16 M-bf16:q8:q8_0"}
BENCH="$LLAMA_DIR/src/build/bin/llama-bench"
IK_BENCH=${IK_BENCH:-}; IK_FLAGS=${IK_FLAGS:--mla 3 -fa 1 -fmoe 1}

case "${1:-}" in
setup)
    mkdir -p "$LLAMA_DIR/npm"
    (cd "$LLAMA_DIR/npm" && [ -f package.json ] || npm init -y >/dev/null)
    (cd "$LLAMA_DIR/npm" && npm i -E "node-llama-cpp@$NLC_VERSION" --ignore-scripts --no-audit --no-fund)
    bundle="$LLAMA_DIR/npm/node_modules/node-llama-cpp/llama/gitRelease.bundle"
    [ -d "$LLAMA_DIR/src" ] || git clone -q "$bundle" "$LLAMA_DIR/src"
    cmake -S "$LLAMA_DIR/src" -B "$LLAMA_DIR/src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON
    ninja -C "$LLAMA_DIR/src/build" llama-bench llama-quantize llama-server
    L="$LLAMA_DIR/src"
    cc -O2 tools/bench/llamacpp_logits.c -I"$L/include" -I"$L/ggml/include" -L"$L/build/bin" -lllama \
        -Wl,-rpath,"$L/build/bin" -o "$LLAMA_DIR/llamacpp_logits"
    echo "llama.cpp: $(git -C "$LLAMA_DIR/src" log -1 --format='%h %ad') from node-llama-cpp@$NLC_VERSION" >&2
    ;;
convert)
    for cfg in $CONFIGS; do
        ck=${cfg%%:*}; gt=${cfg##*:}; out="$DIR/gguf/${ck%-*}-$gt.gguf"
        [ -f "$DIR/$ck/config.json" ] || "$MOE" mkckpt --shape "${ck%-*}" --dtype "${ck#*-}" -o "$DIR/$ck"
        mkdir -p "$DIR/gguf"
        ik="${out%.gguf}-ik.gguf"
        case "$gt" in
        Q*)   # llama-quantize's types (Q4_0, Q4_K_M, ...) from the bf16 GGUF, as users make them
            src="$DIR/gguf/${ck%-*}-bf16.gguf"
            [ -f "$src" ] || PYTHONPATH="$LLAMA_DIR/src/gguf-py" "$PY" tools/bench/to_gguf.py "$DIR/$ck" "$src" --outtype bf16 >"$src.log"
            [ -f "$out" ] || "$LLAMA_DIR/src/build/bin/llama-quantize" "$src" "$out" "$gt" >"$out.log" 2>&1
            if [ -n "$IK_BENCH" ] && [ ! -f "$ik" ]; then
                [ -f "${src%.gguf}-ik.gguf" ] || PYTHONPATH="$LLAMA_DIR/src/gguf-py" "$PY" tools/bench/to_gguf.py "$DIR/$ck" \
                    "${src%.gguf}-ik.gguf" --outtype bf16 --kv-b-whole >"$src.ik.log"
                "$LLAMA_DIR/src/build/bin/llama-quantize" "${src%.gguf}-ik.gguf" "$ik" "$gt" >"$ik.log" 2>&1
            fi
            ;;
        *)
            [ -f "$out" ] || { PYTHONPATH="$LLAMA_DIR/src/gguf-py" "$PY" tools/bench/to_gguf.py "$DIR/$ck" "$out.tmp" --outtype "$gt" >"$out.log" &&
                mv "$out.tmp" "$out" && tail -1 "$out.log" >&2; }
            if [ -n "$IK_BENCH" ] && [ ! -f "$ik" ]; then
                PYTHONPATH="$LLAMA_DIR/src/gguf-py" "$PY" tools/bench/to_gguf.py "$DIR/$ck" "$ik.tmp" --outtype "$gt" --kv-b-whole >"$ik.log"
                mv "$ik.tmp" "$ik"; tail -1 "$ik.log" >&2
            fi
            ;;
        esac
    done
    ;;
check)
    # the same function? S converted to f32 GGUF, logits of both engines on 48 random ids
    out="$DIR/gguf/S-f32.gguf"
    [ -f "$out" ] || PYTHONPATH="$LLAMA_DIR/src/gguf-py" "$PY" tools/bench/to_gguf.py "$DIR/S-bf16" "$out" --outtype f32 >/dev/null
    "$PY" tools/bench/vs_check.py "$DIR/S-bf16" "$out" --llama-logits "$LLAMA_DIR/llamacpp_logits" --moe "$MOE"
    ;;
check-toy)
    # the trained toy exported by moe convert, run by both engines (tools/bench/vs_check_gguf.py)
    mkdir -p "$DIR/gguf"
    for t in f32 bf16 q8_0 q4_0; do
        out="$DIR/gguf/toy-$t.gguf"
        "$MOE" convert -m models/toy -o "$out" --type "$t" 2>/dev/null
        "$PY" tools/bench/vs_check_gguf.py "$out" --llama-logits "$LLAMA_DIR/llamacpp_logits" --moe "$MOE" --vocab 4096
    done
    ;;
run)
    [ -x "$BENCH" ] || { echo "vs_llamacpp.sh: $BENCH missing: run 'setup' first" >&2; exit 1; }
    mkdir -p "$DIR/vs"
    stamp=$(date +%Y%m%d-%H%M%S)
    for round in $(seq 1 "$ROUNDS"); do
        "$MOE" bench --membw --json >"$DIR/vs/$stamp-membw-r$round.json" 2>/dev/null || true
        for cfg in $CONFIGS; do
            ck=${cfg%%:*}; rest=${cfg#*:}; dt=${rest%%:*}; gt=${cfg##*:}
            gguf="$DIR/gguf/${ck%-*}-$gt.gguf"
            order="llama moe${IK_BENCH:+ ik}"   # reversed every other round
            [ $((round % 2)) -eq 1 ] || order="${IK_BENCH:+ik }moe llama"
            for engine in $order; do
                out="$DIR/vs/$stamp-$engine-${ck%-*}-$gt-r$round.json"
                echo "round $round: $engine ${ck%-*} $gt (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
                if [ "$engine" = ik ]; then
                    # shellcheck disable=SC2086
                    "$IK_BENCH" -m "${gguf%.gguf}-ik.gguf" $IK_FLAGS -p "$P" -n "$N" -r "$R" -t "$THREADS" -o json >"$out" 2>"$out.log" ||
                        { echo "failed: $(tail -1 "$out.log")" >&2; rm -f "$out"; }
                elif [ "$engine" = llama ]; then
                    "$BENCH" -m "$gguf" -lm none -p "$P" -n "$N" -r "$R" -t "$THREADS" -o json >"$out" 2>"$out.log" ||
                        { echo "failed: $(tail -1 "$out.log")" >&2; rm -f "$out"; }
                else
                    # moe --dtype gguf: moe reads the very GGUF file llama.cpp reads (quantized types as stored)
                    if [ "$dt" = gguf ]; then src="$gguf"; dt=auto; else src="$DIR/$ck"; fi
                    "$MOE" bench -m "$src" --dtype "$dt" -t "$THREADS" -r "$R" -p "$P" -n "$N" --membw --membw-mib 512 --json >"$out" 2>"$out.log" ||
                        { echo "failed: $(tail -1 "$out.log")" >&2; rm -f "$out"; }
                fi
            done
        done
    done
    echo "results: $DIR/vs/$stamp-*.json" >&2
    ;;
*)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]
    ;;
esac
