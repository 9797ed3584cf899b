#!/bin/sh
# Expert parallelism from the command line (docs/ep.md):
#   - `moe eplb` on the toy model's routing counts: the table, plan.json (parses, --check
#     validates it, every expert placed, equal slots per rank), max/mean never worse than the
#     default blocks; bad input ends in ONE error line;
#   - the exchange layer's check program (tests/ep_comm_check.c) alone (single-process backend),
#     then under `mpirun -np 2` and `-np 3` when Open MPI is installed: broadcast of a batch,
#     allgatherv (exact bytes), the MoE reduction bit-identical to one process, a config hash
#     mismatch (every rank ends with one line, exit 3), a rank that exits early and a rank that
#     hangs (every other rank ends within seconds with one line; `timeout` guards against hangs);
#   - the engine with the EP hook (tests/ep_logits_check.c): logits of prefill, decode and MTP
#     bit-identical to one process on golden checkpoints, alone and under mpirun -np 2 / 3, and
#     the control (no exchange) differing;
#   - EPLB plans with replicas (moe eplb --redundant on the golden models' routing): the engine's
#     logits bit-identical with a replicated expert's tokens split between its holders, and moe
#     logits / generate --ep-plan identical to one process (MTP logits and routing included);
#   - moe itself with --ep (build/tests/moe_mpi): generate's greedy text, logits files (prefill and
#     decode: logits, MTP logits, routing), route counts identical to one process at -np 2 / 3, each
#     rank loading only its experts, bench --ep's communication lines, a plan for other ranks, a rank
#     that cannot load, checkpoints that differ between ranks, a rank that leaves mid-run;
#   - serve --ep at -np 2 (replica plan) and -np 3: tests/serve_check.py's basic checks (greedy =
#     single-process moe generate, cache reuse, ...) against rank 0, then SIGINT to rank 0 stops all;
#   - chat --ep at -np 2 / 3 (rank 0's stdin broadcast line by line): greedy and seeded replies = one process.
MOE=${MOE:-build/moe}
BUILD=${BUILD:-$(dirname "$MOE")}
CHECK=$BUILD/tests/ep_comm_check
CHECK_MPI=$BUILD/tests/ep_comm_check_mpi
LOGITS=$BUILD/tests/ep_logits_check
LOGITS_MPI=$BUILD/tests/ep_logits_check_mpi
MOE_MPI=$BUILD/tests/moe_mpi
G=tests/data/golden
. tests/lib/harness.sh

# --- moe eplb -------------------------------------------------------------------------
"$MOE" eplb --help | grep -q "usage: moe eplb" && ok || bad "eplb --help"
head -c 3000 models/toy/heldout.txt >"$T/in.txt"
if "$MOE" route -m models/toy -f "$T/in.txt" -o "$T/toy" -q 2>"$T/err"; then
    for n in 4 8; do
        if "$MOE" eplb --counts "$T/toy.counts.csv" --ranks $n --redundant $n -m models/toy -o "$T/plan$n.json" \
            >"$T/table$n" 2>"$T/err"; then
            ok
            [ "$(grep -c '^[0-9]' "$T/table$n")" -eq 4 ] && ok || bad "eplb table rows: $(cat "$T/table$n")"
            # the summary: default and plan max/mean; the plan never worse
            line=$(grep "^all 4 layers on $n ranks" "$T/table$n")
            d=$(echo "$line" | sed 's/.*load \([0-9.]*\) with the default.*/\1/')
            p=$(echo "$line" | sed 's/.*, \([0-9.]*\) with the plan.*/\1/')
            awk -v d="$d" -v p="$p" 'BEGIN { exit !(p <= d && p >= 1) }' && ok || bad "max/mean default $d plan $p"
            "$MOE" eplb --check "$T/plan$n.json" --counts "$T/toy.counts.csv" -m models/toy -q >"$T/chk" 2>"$T/err" &&
                grep -q "a valid plan: 4 MoE layers, 256 experts + $n redundant on $n ranks" "$T/chk" && ok ||
                bad "eplb --check: $(cat "$T/chk" "$T/err")"
            if command -v python3 >/dev/null; then
                python3 - "$T/plan$n.json" $n <<'EOF' && ok || bad "plan$n.json contents"
import json, sys
p = json.load(open(sys.argv[1])); n = int(sys.argv[2])
assert p["format"] == "moe-eplb-plan" and p["n_ranks"] == n and len(p["layers"]) == 4
for ly in p["layers"]:
    assert len(ly["ranks"]) == n and len({len(r) for r in ly["ranks"]}) == 1          # equal slots per rank
    assert sum(len(r) for r in ly["ranks"]) == 256 + n
    assert all(len(x) >= 1 for x in ly["experts"]) and len(ly["experts"]) == 256      # every expert placed
    for r, lst in enumerate(ly["ranks"]):
        for e, j in lst:
            assert ly["experts"][e][j] == r
    assert ly["load"]["max_over_mean"] <= ly["load"]["default_max_over_mean"] + 1e-9
EOF
            fi
        else bad "eplb --ranks $n: $(cat "$T/err")"; fi
    done
    # hierarchical: 8 ranks in 2 nodes (the 8 router groups split 4 + 4)
    "$MOE" eplb --counts "$T/toy.counts.csv" --ranks 8 --redundant 8 --nodes 2 -m models/toy -q >"$T/h" 2>"$T/err" &&
        grep -q "policy: hierarchical (groups 8, nodes 2), 33 slots per rank" "$T/h" && ok || bad "hierarchical: $(cat "$T/h" "$T/err")"
    expect_error "ranks do not divide" "256 experts + 1 redundant = 257 slots do not divide over 4 ranks" \
        "$MOE" eplb --counts "$T/toy.counts.csv" --ranks 4 --redundant 1
    expect_error "nodes do not divide ranks" "--nodes 3 must divide --ranks 4" \
        "$MOE" eplb --counts "$T/toy.counts.csv" --ranks 4 --nodes 3
    expect_error "plan for other ranks" "is a plan for 4 ranks, not 8" "$MOE" eplb --check "$T/plan4.json" --ranks 8
    # a plan edited by hand: one expert dropped from a rank
    sed '0,/\[\[\([0-9]*\),0\],/s//[/' "$T/plan4.json" >"$T/broken.json"
    expect_error "broken plan" "broken.json: layers\[0\] (layer 1)" "$MOE" eplb --check "$T/broken.json"
else bad "route for eplb: $(cat "$T/err")"; fi
printf 'layer_id,expert_id,count\n1,0,5\n1,1,x\n' >"$T/bad.csv"
expect_error "bad counts line" "bad.csv: line 3: want layer_id,expert_id,count" "$MOE" eplb --counts "$T/bad.csv" --ranks 2
expect_error "no counts" "--counts FILE is required" "$MOE" eplb --ranks 2
expect_error "no ranks" "--ranks N is required" "$MOE" eplb --counts "$T/bad.csv"
expect_error "ranks out of range" "--ranks must be an integer in \[1, 64\]" "$MOE" eplb --counts "$T/bad.csv" --ranks 65
expect_error "missing counts file" "nonexistent.csv: cannot open" "$MOE" eplb --counts "$T/nonexistent.csv" --ranks 2

# --- the exchange layer, one process ----------------------------------------------------
if [ -x "$CHECK" ]; then
    [ "$("$CHECK" backend)" = "single 1" ] && ok || bad "single backend: $("$CHECK" backend)"
    for m in bcast allgatherv moe hash hash-mismatch early-exit hang; do
        out=$(timeout 20 "$CHECK" $m 2>&1)
        [ $? -eq 0 ] && echo "$out" | grep -q "^ep_comm_check $m: rank 0 of 1: ok" && ok || bad "single $m: $out"
    done
    expect_error "single bcast-big" "rank 0 of 1: ep: rank 0's batch has 37 tokens, outside \[0, 16\]" "$CHECK" bcast-big
else bad "missing $CHECK (make tests builds it)"; fi
# the engine with the EP hook on one rank: the same logits as without it
for d in tiny-bf16 v2lite-f32; do
    out=$(timeout 60 "$LOGITS" $G/$d 2>&1)
    [ $? -eq 0 ] && echo "$out" | grep -q "rank 0 of 1: bit-identical to one process" && ok || bad "single ep_logits $d: $out"
done

# --- over MPI --------------------------------------------------------------------------
# one line per rank: "moe: rank R of N: ..." exactly once for each R in the list
lines_per_rank() {   # file np want_regex ranks...
    f=$1; np=$2; want=$3; shift 3
    for r in "$@"; do
        c=$(grep -c "^moe: rank $r of $np: " "$f")
        [ "$c" -eq 1 ] || { echo "rank $r: $c lines"; return 1; }
        grep "^moe: rank $r of $np: " "$f" | grep -qE "$want" || { echo "rank $r: $(grep "^moe: rank $r of" "$f")"; return 1; }
    done
}
# replica plans for the golden models with MTP: moe eplb over the routing of the tokens the checks run
# (so their hot experts are the replicated ones), R = E on 2 ranks, the next R >= E with 3 | E + R on 3
EP_TOK=5,17,30,4,9,2,77,120,33,8,61,14
for d in tiny-bf16 mix-f32; do
    if "$MOE" route -m $G/$d --tokens $EP_TOK -o "$T/$d" -q 2>"$T/err"; then
        E=$(sed -n 's/.*"n_routed_experts": *\([0-9]*\).*/\1/p' $G/$d/config.json)
        for np in 2 3; do
            Rr=$E; [ $np -eq 3 ] && Rr=$((E + (3 - (2 * E) % 3) % 3))
            "$MOE" eplb --counts "$T/$d.counts.csv" --ranks $np --redundant $Rr -m $G/$d -o "$T/$d.plan$np.json" -q \
                >"$T/out" 2>"$T/err" &&
            "$MOE" eplb --check "$T/$d.plan$np.json" -m $G/$d --ranks $np >"$T/out" 2>"$T/err" &&
                grep -q "experts + $Rr redundant on $np ranks" "$T/out" && ok || bad "replica plan $d $np: $(cat "$T/out" "$T/err")"
        done
    else bad "route $d: $(cat "$T/err")"; fi
done

if ! command -v mpirun >/dev/null 2>&1; then
    echo "cli_ep: mpirun not found: skipping the MPI checks (apt-get install openmpi-bin libopenmpi-dev, then make tests)"
elif [ ! -x "$CHECK_MPI" ]; then
    echo "cli_ep: $CHECK_MPI was not built (no mpicc when make ran): skipping the MPI checks"
else
    # Open MPI keeps some allocations until exit: no leak report for these runs
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
    export OMPI_MCA_btl_vader_single_copy_mechanism=none   # containers without ptrace/CMA
    R="mpirun --allow-run-as-root --oversubscribe"
    for np in 2 3; do
        [ "$(timeout 60 $R -np $np "$CHECK_MPI" backend 2>&1 | sort -u)" = "mpi $np" ] && ok || bad "np $np: not the mpi backend"
        for m in bcast allgatherv moe hash; do
            timeout 60 $R -np $np "$CHECK_MPI" $m >"$T/out" 2>"$T/err"; rc=$?
            n=$(grep -c "^ep_comm_check $m: rank [0-9] of $np: ok" "$T/out")
            [ $rc -eq 0 ] && [ "$n" -eq $np ] && ok || bad "np $np $m: rc=$rc, $n ok lines: $(cat "$T/out" "$T/err")"
        done
        all=$(seq 0 $((np - 1)))
        # the hash mismatch: every rank says so, exit 3, within seconds
        s=$(date +%s); timeout 60 $R -np $np "$CHECK_MPI" hash-mismatch >"$T/out" 2>"$T/err"; rc=$?; e=$(date +%s)
        why=$(lines_per_rank "$T/err" $np "config \+ tensor table hash differs between ranks \(1 of $np differ" $all) &&
            [ $rc -eq 3 ] && [ $((e - s)) -lt 20 ] && ok || bad "np $np hash-mismatch: rc=$rc $((e - s)) s $why: $(cat "$T/err")"
        timeout 60 $R -np $np "$CHECK_MPI" bcast-big >"$T/out" 2>"$T/err"; rc=$?
        why=$(lines_per_rank "$T/err" $np "batch has 37 tokens, outside \[0, 16\]" $all) && [ $rc -eq 2 ] && ok ||
            bad "np $np bcast-big: rc=$rc $why: $(cat "$T/err")"
        # the last rank exits at once: the others end, one line each, not by the timeout
        others=$(seq 0 $((np - 2)))
        s=$(date +%s); MOE_EP_TIMEOUT=10 timeout 60 $R -np $np "$CHECK_MPI" early-exit >"$T/out" 2>"$T/err"; rc=$?; e=$(date +%s)
        why=$(lines_per_rank "$T/err" $np "ended by the launcher|waited" $others) &&
            [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $((e - s)) -lt 20 ] && ! grep -q ": ok" "$T/out" && ok ||
            bad "np $np early-exit: rc=$rc $((e - s)) s $why: $(cat "$T/out" "$T/err")"
        # the last rank hangs: rank 0 gives up after MOE_EP_TIMEOUT=2 s and every rank ends
        s=$(date +%s); MOE_EP_TIMEOUT=2 timeout 60 $R -np $np "$CHECK_MPI" hang >"$T/out" 2>"$T/err"; rc=$?; e=$(date +%s)
        why=$(lines_per_rank "$T/err" $np "ended by the launcher|waited 2 s for the other ranks" $all) &&
            grep -q "^moe: rank 0 of $np: ep: layer 3 expert outputs: rank 0 of $np waited" "$T/err" &&
            [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $((e - s)) -lt 20 ] && ok ||
            bad "np $np hang: rc=$rc $((e - s)) s $why: $(cat "$T/out" "$T/err")"
        # the engine over np ranks: prefill, decode and MTP logits bit-identical to one process, with
        # the default blocks (in-place exchange) and with permuted experts (staged exchange, routing
        # hash compared per layer), on golden checkpoints
        for run in "tiny-bf16" "tiny-bf16 --shuffle" "v2lite-f32" "mix-f32 --shuffle --threads 2"; do
            MOE_EP_CHECK=1 timeout 120 $R -np $np "$LOGITS_MPI" $G/$run >"$T/out" 2>"$T/err"; rc=$?
            n=$(grep -c "rank [0-9] of $np: bit-identical to one process" "$T/out")
            [ $rc -eq 0 ] && [ "$n" -eq $np ] && ok || bad "np $np ep_logits $run: rc=$rc, $n lines: $(cat "$T/out" "$T/err")"
        done
        # EPLB plans with replicas (moe eplb --redundant on each golden model's routing of the test's
        # tokens): a replicated expert's slots split between its holders ("split") or its one share
        # rotated to another holder ("moved"); passes of 4 tokens and of the whole prefill
        for d in tiny-bf16 mix-f32; do
            [ -s "$T/$d.plan$np.json" ] || { bad "no replica plan $d for $np ranks"; continue; }
            for b in 4 10; do
                MOE_EP_CHECK=1 timeout 120 $R -np $np "$LOGITS_MPI" $G/$d --plan "$T/$d.plan$np.json" --batch $b \
                    --threads 2 >"$T/out" 2>"$T/err"; rc=$?
                n=$(grep -c "rank [0-9] of $np: bit-identical to one process (prefill 10, decode 3, MTP;" "$T/out")
                # every rank holds replicated experts; over the ranks some expert was split (b 10) and some moved
                rep=$(grep -c "[1-9][0-9]* of them replicated" "$T/out")
                split=$(sed -n 's/.* \([0-9]*\) experts split, \([0-9]*\) moved.*/\1 \2/p' "$T/out" | head -1)
                [ $rc -eq 0 ] && [ "$n" -eq $np ] && [ "$rep" -eq $np ] && [ "${split#* }" -gt 0 ] &&
                    { [ $b -ne 10 ] || [ "${split% *}" -gt 0 ]; } && ok ||
                    bad "np $np ep_logits $d --plan (replicas) --batch $b: rc=$rc, $n lines, split/moved $split: $(cat "$T/out" "$T/err")"
            done
        done
    done
    # the commands with --ep (moe linked with the MPI backend): rank 0's output equals one process's
    if [ -x "$MOE_MPI" ]; then
        "$MOE" generate -m models/toy -p "the cat and the dog" -n 12 --greedy >"$T/g1" 2>/dev/null
        "$MOE" logits -m $G/v2lite-f32 --tokens 5,17,30,4,9,2 -o "$T/l1.st" 2>/dev/null
        "$MOE" logits -m $G/v2lite-f32 --tokens 5,17,30,4,9,2 --mode decode -o "$T/d1.st" 2>/dev/null
        "$MOE" route -m models/toy -f "$T/in.txt" -o "$T/r1" -q 2>/dev/null
        "$MOE" eplb --counts "$T/r1.counts.csv" --ranks 2 -m models/toy -o "$T/plan2r0.json" -q >/dev/null 2>&1
        for np in 2 3; do   # the toy with replicas: 256 + 32 slots
            "$MOE" eplb --counts "$T/r1.counts.csv" --ranks $np --redundant 32 -m models/toy -o "$T/toyrep$np.json" -q >/dev/null 2>&1
        done
        for d in tiny-bf16 mix-f32; do
            for mode in prefill decode; do
                "$MOE" logits -m $G/$d --tokens $EP_TOK --mode $mode -o "$T/$d.$mode.1.st" 2>/dev/null
            done
        done
        for np in 2 3; do
            MOE_EP_CHECK=1 timeout 60 $R -np $np "$MOE_MPI" generate -m models/toy -p "the cat and the dog" -n 12 --greedy \
                --ep >"$T/g$np" 2>"$T/err"; rc=$?
            [ $rc -eq 0 ] && [ -s "$T/g1" ] && cmp -s "$T/g1" "$T/g$np" && [ "$(grep -c "^ep: rank [0-9] of $np (mpi)" "$T/err")" -eq $np ] &&
                ok || bad "np $np generate --ep: rc=$rc $(cat "$T/g$np" "$T/err")"
            # each rank loads only its experts: the toy's 44.1 MiB less the others' share (26.1 MiB at 2 ranks)
            awk -v np=$np '/^ep: rank [0-9]+ of/ { for (i = 1; i <= NF; i++) if ($i == "loaded") mib = $(i - 2);
                n++; if (mib + 0 <= 0 || mib + 0 > 44.1 * (1.0 / np + 0.45)) bad = 1 }
                END { exit !(n == np && !bad) }' "$T/err" && ok || bad "np $np weights per rank: $(grep '^ep:' "$T/err")"
            for mode in prefill decode; do
                f=l; [ $mode = decode ] && f=d
                timeout 60 $R -np $np "$MOE_MPI" logits -m $G/v2lite-f32 --tokens 5,17,30,4,9,2 --mode $mode -o "$T/$f$np.st" \
                    --ep >/dev/null 2>"$T/err"; rc=$?
                # logits, MTP logits and routing: the same bytes as one process
                [ $rc -eq 0 ] && cmp -s "$T/${f}1.st" "$T/$f$np.st" && ok || bad "np $np logits --ep $mode: rc=$rc $(cat "$T/err")"
            done
            timeout 60 $R -np $np "$MOE_MPI" route -m models/toy -f "$T/in.txt" -o "$T/r$np" -q --ep >/dev/null 2>"$T/err"; rc=$?
            [ $rc -eq 0 ] && cmp -s "$T/r1.counts.csv" "$T/r$np.counts.csv" && ok || bad "np $np route --ep: rc=$rc $(cat "$T/err")"
            # EPLB plans with replicas: logits, MTP logits and routing (golden models with MTP, prefill
            # and decode) and the toy's greedy text, the same bytes as one process
            for d in tiny-bf16 mix-f32; do
                for mode in prefill decode; do
                    MOE_EP_CHECK=1 timeout 60 $R -np $np "$MOE_MPI" logits -m $G/$d --tokens $EP_TOK --mode $mode \
                        -o "$T/$d.$mode.$np.st" --ep-plan "$T/$d.plan$np.json" >/dev/null 2>"$T/err"; rc=$?
                    [ $rc -eq 0 ] && [ -s "$T/$d.$mode.1.st" ] && cmp -s "$T/$d.$mode.1.st" "$T/$d.$mode.$np.st" &&
                        [ "$(grep -c "^ep: rank [0-9] of $np (mpi): .*, [1-9][0-9]* replicated" "$T/err")" -eq $np ] && ok ||
                        bad "np $np logits --ep-plan (replicas) $d $mode: rc=$rc $(cat "$T/err")"
                done
            done
            MOE_EP_CHECK=1 timeout 60 $R -np $np "$MOE_MPI" generate -m models/toy -p "the cat and the dog" -n 12 --greedy \
                --ep-plan "$T/toyrep$np.json" >"$T/gr$np" 2>"$T/err"; rc=$?
            [ $rc -eq 0 ] && cmp -s "$T/g1" "$T/gr$np" && grep -q "replicated (.*toyrep$np.json)" "$T/err" && ok ||
                bad "np $np generate --ep-plan (replicas): rc=$rc $(cat "$T/gr$np" "$T/err")"
            timeout 60 $R -np $np "$MOE_MPI" bench -m models/toy -p 16 -n 4 -r 1 -t 1 --ep >/dev/null 2>"$T/err0"; rc=$?
            tr '\r' '\n' <"$T/err0" >"$T/err"   # the progress line ends in a carriage return
            # (the ranks' stderr interleave: count the lines' texts, not line starts)
            [ $rc -eq 0 ] && [ "$(grep -o "ep: rank [0-9] of $np: decode: [0-9.]* us in communication, [0-9]* bytes sent" "$T/err" | sort -u | wc -l)" -eq $np ] &&
                [ "$(grep -o "ep: rank [0-9] of $np: prefill chunk of 16 tokens: " "$T/err" | sort -u | wc -l)" -eq $np ] && ok ||
                bad "np $np bench --ep: rc=$rc $(cat "$T/err")"
            # a plan for 2 ranks: fine on 2, refused by every rank on 3
            timeout 60 $R -np $np "$MOE_MPI" generate -m models/toy -p "the cat and the dog" -n 12 --greedy \
                --ep-plan "$T/plan2r0.json" >"$T/gp" 2>"$T/err"; rc=$?
            if [ $np -eq 2 ]; then
                [ $rc -eq 0 ] && cmp -s "$T/g1" "$T/gp" && ok || bad "np 2 generate --ep-plan: rc=$rc $(cat "$T/err")"
            else
                why=$(lines_per_rank "$T/err" 3 "plan: the plan is for 2 ranks but 3 are running" 0 1 2) && [ $rc -ne 0 ] && ok ||
                    bad "np 3 plan for 2: rc=$rc $why $(cat "$T/err")"
            fi
        done
        # a checkpoint that is not there: every rank ends with its line, quickly
        s=$(date +%s); timeout 60 $R -np 2 "$MOE_MPI" logits -m "$T/nope" --tokens 1,2 -o "$T/x.st" --ep >/dev/null 2>"$T/err"; rc=$?; e=$(date +%s)
        [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $((e - s)) -lt 20 ] && grep -q "nope" "$T/err" && ok || bad "missing checkpoint --ep: rc=$rc $(cat "$T/err")"
        # one rank cannot load (MPMD: rank 1 gets a missing checkpoint): every rank ends quickly, rank 1 says why
        s=$(date +%s); timeout 60 $R -np 1 "$MOE_MPI" logits -m $G/v2lite-f32 --tokens 1,2 -o "$T/x.st" --ep : \
            -np 1 "$MOE_MPI" logits -m "$T/nope" --tokens 1,2 -o "$T/x.st" --ep >/dev/null 2>"$T/err"; rc=$?; e=$(date +%s)
        why=$(lines_per_rank "$T/err" 2 "nope/config.json: cannot open" 1) &&
            why=$(lines_per_rank "$T/err" 2 "ended by the launcher" 0) && [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $((e - s)) -lt 20 ] &&
            ok || bad "one rank cannot load: rc=$rc $((e - s)) s $why: $(cat "$T/err")"
        # a checkpoint that differs between ranks: the start-up hash, one line on every rank, exit 3
        s=$(date +%s); timeout 60 $R -np 1 "$MOE_MPI" logits -m $G/v2lite-f32 --tokens 1,2 -o "$T/x.st" --ep : \
            -np 1 "$MOE_MPI" logits -m $G/v2lite-f16-shard --tokens 1,2 -o "$T/x.st" --ep >/dev/null 2>"$T/err"; rc=$?; e=$(date +%s)
        why=$(lines_per_rank "$T/err" 2 "config \+ tensor table hash differs between ranks" 0 1) && [ $rc -eq 3 ] &&
            [ $((e - s)) -lt 20 ] && ok || bad "checkpoints differ: rc=$rc $((e - s)) s $why: $(cat "$T/err")"
        # a rank that leaves mid-run (rank 1 decodes 2 tokens, rank 0 12): rank 0 ends after MOE_EP_TIMEOUT, one line
        s=$(date +%s); MOE_EP_TIMEOUT=3 timeout 60 $R -np 1 "$MOE_MPI" generate -m models/toy -p "the cat" -n 12 --greedy --ep : \
            -np 1 "$MOE_MPI" generate -m models/toy -p "the cat" -n 2 --greedy --ep >/dev/null 2>"$T/err"; rc=$?; e=$(date +%s)
        # (not Open MPI's own "MPI_ABORT was invoked" text: its help printer can fail, "ORTE_ERROR_LOG: Out of resource")
        why=$(lines_per_rank "$T/err" 2 "waited 3 s for the other ranks" 0) && [ $rc -ne 0 ] && [ $rc -ne 124 ] &&
            [ $((e - s)) -lt 20 ] && ok || bad "a rank leaves: rc=$rc $((e - s)) s $why: $(cat "$T/err")"
        # serve --ep (rank 0 serves HTTP and schedules, rank 1 follows its passes) with the toy's replica
        # plan: tests/serve_check.py's basic checks over it (greedy = single-process moe generate, chat
        # and completions, concurrent = serial, the next turn's cache reuse: kv operations followed);
        # SIGINT to rank 0 stops every rank cleanly (exit 0, the follower's stop line)
        PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
        for run in "2 --ep-plan $T/toyrep2.json" "3 --ep"; do
            np=${run%% *}; how=${run#* }
            $R -np $np "$MOE_MPI" serve -m models/toy --port 0 -t 1 --parallel 4 --max-body 65536 --timeout 2 --dtype f32 \
                $how >"$T/sep.out" 2>"$T/sep.log" &
            mp=$!
            port=""; p0=""; i=0
            while [ $i -lt 600 ] && { [ -z "$port" ] || [ -z "$p0" ]; }; do
                port=$(sed -n 's/^moe serve: port \([0-9]*\)$/\1/p' "$T/sep.log")
                p0=$(sed -n 's/^moe serve: --ep: rank 0 of [0-9]* (pid \([0-9]*\)) serves.*/\1/p' "$T/sep.log")
                kill -0 $mp 2>/dev/null || break
                { [ -n "$port" ] && [ -n "$p0" ]; } || sleep 0.1
                i=$((i + 1))
            done
            if [ -n "$port" ] && [ -n "$p0" ]; then
                timeout 600 "$PY" tests/serve_check.py $port basic "$MOE" models/toy f32 >"$T/check.out" 2>&1 && ok ||
                    bad "np $np serve $how: serve_check.py basic: $(cat "$T/check.out")"
                grep "^serve_check" "$T/check.out"
                kill -INT $p0
                i=0; while kill -0 $mp 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
                kill -0 $mp 2>/dev/null && { bad "np $np serve --ep: still running 30 s after SIGINT"; kill -TERM $mp; }
                wait $mp; rc=$?
                [ $rc -eq 0 ] && grep -q "^moe serve: stopped" "$T/sep.log" &&
                    [ "$(grep -c "^moe serve: rank [0-9] of $np: stopped by rank 0 after [1-9][0-9]* passes" "$T/sep.log")" -eq $((np - 1)) ] &&
                    ok || bad "np $np serve $how: SIGINT to rank 0: rc=$rc $(tail -20 "$T/sep.log")"
            else
                bad "np $np serve $how did not start: $(cat "$T/sep.log")"; kill -TERM $mp 2>/dev/null; wait $mp
            fi
        done
        expect_error "serve --ep --mtp" "moe serve: --mtp with --ep is not supported yet" "$MOE" serve -m models/toy --ep --mtp
        # chat --ep: rank 0 reads stdin and broadcasts each line, every rank runs the same turn (the
        # replies of a sampled chat too: rank 0's clock seed is broadcast); rank 0's output = one process's
        printf 'Tell me about a cat\nAnd a dog?\n' >"$T/chat.in"
        "$MOE" chat -m models/toy --greedy -n 16 <"$T/chat.in" >"$T/c1" 2>/dev/null
        "$MOE" chat -m models/toy --seed 7 -n 16 <"$T/chat.in" >"$T/cs1" 2>/dev/null
        for np in 2 3; do
            timeout 60 $R -np $np "$MOE_MPI" chat -m models/toy --greedy -n 16 --ep-plan "$T/toyrep$np.json" <"$T/chat.in" \
                >"$T/c$np" 2>"$T/err"; rc=$?
            [ $rc -eq 0 ] && [ -s "$T/c1" ] && cmp -s "$T/c1" "$T/c$np" && ok || bad "np $np chat --ep-plan: rc=$rc $(cat "$T/c$np" "$T/err")"
        done
        timeout 60 $R -np 2 "$MOE_MPI" chat -m models/toy --seed 7 -n 16 --ep <"$T/chat.in" >"$T/cs2" 2>"$T/err"; rc=$?
        [ $rc -eq 0 ] && [ -s "$T/cs1" ] && cmp -s "$T/cs1" "$T/cs2" && ok || bad "np 2 chat --ep --seed 7: rc=$rc $(cat "$T/cs2" "$T/err")"
    else bad "missing $MOE_MPI (make tests builds it when mpicc exists)"; fi
    # the control: without the exchange the logits differ, and every rank says so
    timeout 120 $R -np 2 "$LOGITS_MPI" $G/tiny-bf16 --no-exchange >"$T/out" 2>"$T/err"; rc=$?
    why=$(lines_per_rank "$T/err" 2 "the EP logits differ from one process's" 0 1) && [ $rc -ne 0 ] && ok ||
        bad "control --no-exchange: rc=$rc $why: $(cat "$T/err")"
fi

echo "cli_ep: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
