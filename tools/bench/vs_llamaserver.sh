#!/bin/sh
# moe serve against llama.cpp's llama-server, side by side on identical weights (issue 14).
#
#   tools/bench/vs_llamaserver.sh            # ROUNDS rounds; each round starts one engine's server,
#                                            # runs build/bench/serve_load at USERS concurrent
#                                            # streaming clients, stops it, then the other engine
#                                            # (the order flips every round); JSON per run
#   tools/bench/vs_llamaserver.sh summary    # medians over the rounds, a markdown table
#
# Identical weights: llama-server loads GGUF (default the M checkpoint's q8_0 file that
# `tools/bench/vs_llamacpp.sh convert` writes with CONFIGS="M-bf16:q8:q8_0") with --parallel
# SLOTS -c SLOTS*CTX --cont-batching; moe serve loads the checkpoint it came from (MODEL,
# default $DIR/M-bf16) with MOE_FLAGS (default --dtype q8: the same Q8_0 blocks of 32). (moe
# serve -m FILE.gguf stops at that file's made-up tokenizer, so the safetensors it is.) Same
# threads (-t THREADS) for both. The prompt is token ids (IDS; the M checkpoint has no
# tokenizer), -n N tokens per request, REQS requests per client in turn (R1 at 1 user). Every request
# carries EXTRA (default: logit_bias false for ids 0-255, the single-byte tokens of
# to_gguf.py's made-up vocabulary: llama-server ends a stream with a 500 "does not match
# the expected Content-only format" when a random model samples a byte that is not valid
# UTF-8; both engines get the same bias). The bandwidth
# (`moe bench --membw`) is measured at the start of every round.
# Needs: build/moe, build/bench/serve_load (make build/bench/serve_load), llama-server
# (tools/bench/vs_llamacpp.sh setup). Results live outside the repository: $OUT/*.json.
set -eu
cd "$(dirname "$0")/../.."
MOE=${MOE:-build/moe}
LOAD=${LOAD:-build/bench/serve_load}
DIR=${BENCH_DIR:-/work/bench-ckpt}
LLAMA_DIR=${LLAMA_DIR:-/work/llama.cpp}
SERVER=${SERVER:-$LLAMA_DIR/src/build/bin/llama-server}
GGUF=${GGUF:-$DIR/gguf/M-q8_0.gguf}
OUT=${OUT:-$DIR/vs_serve}
ROUNDS=${ROUNDS:-3}; USERS=${USERS:-1,2,4,8}; SLOTS=${SLOTS:-8}; CTX=${CTX:-512}
THREADS=${THREADS:-2}; N=${N:-64}; REQS=${REQS:-1}; R1=${R1:-3}; PORT=${PORT:-18431}
IDS=${IDS:-1,17,300,42,9,1000,77,5}
MODEL=${MODEL:-$DIR/M-bf16}
MOE_FLAGS=${MOE_FLAGS:---dtype q8}
PY=${PY:-/usr/bin/python3}
EXTRA=${EXTRA-$("$PY" -c "print('\"logit_bias\":[' + ','.join('[%d,false]' % i for i in range(256)) + ']')")}

summary() {
    "$PY" - "$OUT" <<'EOF'
import json, glob, os, statistics, sys
runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))]
runs = [r for r in runs if "engine" in r]
bw = [json.load(open(f))["gbps"] for f in glob.glob(os.path.join(sys.argv[1], "membw-*.json"))]
med = lambda v: statistics.median(v) if v else float("nan")
eng = ["moe", "llama-server"]
users = sorted({row["clients"] for r in runs for row in r["rows"]})
def col(e, u, k):
    return med([row[k] for r in runs if r["engine"] == e for row in r["rows"] if row["clients"] == u and not row["failed"]])
def oncpu(e, u):   # generated tokens per CPU second of the server process (all threads): robust to a busy machine
    return med([row["tokens"] / row["cpu_s"] for r in runs if r["engine"] == e for row in r["rows"]
                if row["clients"] == u and not row["failed"] and row.get("cpu_s", 0) > 0])
nr = {e: len([r for r in runs if r["engine"] == e]) for e in eng}
print(f"rounds: moe {nr['moe']}, llama-server {nr['llama-server']}; bandwidth median {med(bw):.1f} GB/s over {len(bw)} runs")
print("| users | moe agg tok/s | llama-server agg tok/s | ratio | on-CPU tok/s moe / llama-server (ratio) | moe per-user tok/s | llama-server per-user tok/s | moe TTFT p50 / p90 ms | llama-server TTFT p50 / p90 ms |")
print("|------:|--------------:|-----------------------:|------:|----------------------------------------:|-------------------:|----------------------------:|----------------------:|-------------------------------:|")
for u in users:
    a, b = col("moe", u, "agg"), col("llama-server", u, "agg")
    ca, cb = oncpu("moe", u), oncpu("llama-server", u)
    print(f"| {u} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {ca:.0f} / {cb:.0f} ({ca / cb:.2f}x) | {col('moe', u, 'user'):.2f} | {col('llama-server', u, 'user'):.2f} |"
          f" {col('moe', u, 'p50'):.0f} / {col('moe', u, 'p90'):.0f} | {col('llama-server', u, 'p50'):.0f} / {col('llama-server', u, 'p90'):.0f} |")
EOF
}

# wait_up PID: until GET /health answers 200 (the model loaded), or the server died
wait_up() {
    i=0
    while :; do
        kill -0 "$1" 2>/dev/null || { echo "vs_llamaserver: the server exited, see $log" >&2; return 1; }
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" || true)" = 200 ] && return 0
        i=$((i + 1)); [ $i -lt 1200 ] || { echo "vs_llamaserver: no /health after 600 s" >&2; return 1; }
        sleep 0.5
    done
}

# cpu_ticks PID: the process's user + system CPU time, in clock ticks (all its threads)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# one ENGINE ROUND: start, warm up (one request, faults the weights in), load, stop, JSON
one() {
    tag=$(date -u +%Y%m%d-%H%M%S)-$1-r$2
    log="$OUT/$tag.log"
    if [ "$1" = moe ]; then
        "$MOE" serve -m "$MODEL" --port "$PORT" --parallel "$SLOTS" --ctx "$CTX" -t "$THREADS" $MOE_FLAGS >"$log" 2>&1 &
    else
        "$SERVER" -m "$GGUF" --host 127.0.0.1 --port "$PORT" --parallel "$SLOTS" -c $((SLOTS * CTX)) \
            --cont-batching -t "$THREADS" -tb "$THREADS" >"$log" 2>&1 &
    fi
    pid=$!
    if ! wait_up $pid; then kill $pid 2>/dev/null || true; return 1; fi
    "$LOAD" --port "$PORT" -c 1 -r 1 -n 4 --ids "$IDS" --extra "$EXTRA" >/dev/null
    : >"$OUT/$tag.md"; : >"$OUT/$tag.cpu"
    for u in $(echo "$USERS" | tr , ' '); do   # R1 requests in turn at 1 user (a TTFT median), REQS per client above
        c0=$(cpu_ticks $pid)
        "$LOAD" --port "$PORT" -c "$u" -r "$([ "$u" = 1 ] && echo "$R1" || echo "$REQS")" -n "$N" --ids "$IDS" --extra "$EXTRA" >>"$OUT/$tag.md"
        echo "$u $((($(cpu_ticks $pid) - c0)))" >>"$OUT/$tag.cpu"
    done
    kill -TERM $pid; wait $pid 2>/dev/null || true
    "$PY" - "$OUT/$tag.md" "$1" "$2" "$THREADS" "$N" "$REQS" "$1=$([ "$1" = moe ] && echo "$MODEL $MOE_FLAGS" || echo "$GGUF")" \
        "$OUT/$tag.cpu" "$(getconf CLK_TCK)" >"$OUT/$tag.json" <<'EOF'
import json, sys
cpu = {int(l.split()[0]): int(l.split()[1]) / float(sys.argv[9]) for l in open(sys.argv[8]) if l.strip()}
rows = []
for line in open(sys.argv[1]):
    f = [x.strip() for x in line.strip().strip("|").split("|")]
    if len(f) == 9 and f[0].isdigit():
        rows.append(dict(clients=int(f[0]), requests=int(f[1]), tokens=int(f[2]), agg=float(f[3]),
                         user=float(f[4]), p50=float(f[5]), p90=float(f[6]), p99=float(f[7]), failed=int(f[8]),
                         cpu_s=cpu.get(int(f[0]), 0.0)))
print(json.dumps(dict(engine=sys.argv[2], round=int(sys.argv[3]), threads=int(sys.argv[4]), n=int(sys.argv[5]),
                      reqs=int(sys.argv[6]), weights=sys.argv[7], rows=rows)))
EOF
    echo "$tag" >&2; cat "$OUT/$tag.md" >&2
}

case "${1:-run}" in
summary) summary ;;
run)
    [ -f "$GGUF" ] || { echo "vs_llamaserver: $GGUF missing (tools/bench/vs_llamacpp.sh convert)" >&2; exit 1; }
    [ -x "$SERVER" ] || { echo "vs_llamaserver: $SERVER missing (tools/bench/vs_llamacpp.sh setup)" >&2; exit 1; }
    [ -x "$LOAD" ] || make -s "$LOAD"
    mkdir -p "$OUT"
    echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), threads $THREADS, rounds $ROUNDS, $GGUF" >&2
    r=1
    while [ $r -le "$ROUNDS" ]; do
        bw=$("$MOE" bench --membw 2>&1 | sed -n 's/.* \([0-9.]*\) GB\/s.*/\1/p' | tail -1)
        echo "{\"gbps\": ${bw:-0}}" >"$OUT/membw-$(date -u +%Y%m%d-%H%M%S)-r$r.json"
        if [ $((r % 2)) = 1 ]; then one moe $r; one llama-server $r; else one llama-server $r; one moe $r; fi
        r=$((r + 1))
    done
    summary
    ;;
*) echo "usage: tools/bench/vs_llamaserver.sh [run|summary]" >&2; exit 2 ;;
esac
