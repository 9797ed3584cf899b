#!/bin/sh
# Browser check of the page `moe serve` shows at /: headless Chromium (driven over the
# DevTools pipe by tests/browser_cdp.py) loads /?prompt=..., which sends the prompt at
# once; within 60 s the DOM must hold the streamed answer (one span per token) and the
# routing of the new tokens (data-routed-tokens, the grid on the newest token, an expert
# row per MoE layer). Then a screenshot goes to $SHOT (default docs/img/serve.png; make test,
# through tests/run_all.sh, puts it in the build dir). Skips (exit 0) when chromium is not
# installed (.ci/run installs it):
#   apt-get install chromium
# Run from the repository root:  sh tests/browser_serve.sh   (MOE=build/moe by default)
MOE=${MOE:-build/moe}
SHOT=${SHOT:-docs/img/serve.png}
. tests/lib/harness.sh
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then
    echo "browser_serve: SKIP: no chromium (apt-get install chromium)"
    exit 0
fi
"$MOE" serve -m models/toy --port 0 -t 1 -q 2>"$T/serve.log" &
pid=$!
port=""
i=0
while [ $i -lt 300 ] && [ -z "$port" ]; do
    port=$(sed -n 's/^moe serve: port \([0-9]*\)$/\1/p' "$T/serve.log")
    [ -n "$port" ] || sleep 0.1
    i=$((i+1))
done
if [ -z "$port" ]; then echo "FAIL: the server did not start: $(cat "$T/serve.log")"; kill $pid 2>/dev/null; exit 1; fi
URL="http://127.0.0.1:$port/?prompt=Once%20upon%20a%20time%20there%20was%20a%20little%20dragon&max=60&temp=0"
# the page is done when the answer finished and its tokens have routing on the grid
DONE="document.body.dataset.answers === '1' && +document.getElementById('routing').dataset.routedTokens > 0"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
if timeout 180 "$PY" tests/browser_cdp.py "$CHROME" "$URL" "$DONE" "$T/shot.png" 60 >"$T/state" 2>"$T/cdp.err"; then ok
else bad "the page did not finish an answer with routing: $(cat "$T/state" "$T/cdp.err")"; fi
state=$(cat "$T/state")
echo "$state" | grep -q '"routedTokens":"60"' && ok || bad "60 routed tokens: $state"
echo "$state" | grep -q '"gridToken":"59"' && ok || bad "the grid shows the newest token: $state"
echo "$state" | grep -q '"spans":60' && ok || bad "60 token spans in the answer: $state"
echo "$state" | grep -q '"table":3' && ok || bad "an expert row per MoE layer: $state"
echo "$state" | grep -q 'finish length' && ok || bad "the status line: $state"
if [ -s "$T/shot.png" ]; then mkdir -p "$(dirname "$SHOT")" && cp "$T/shot.png" "$SHOT" && ok; else bad "no screenshot"; fi
kill -TERM $pid
wait $pid || bad "server exit code"
echo "browser_serve: $pass passed, $fail failed (screenshot: $SHOT)"
[ $fail -eq 0 ]
