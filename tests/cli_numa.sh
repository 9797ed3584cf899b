#!/bin/sh
# Command-line checks of --numa on generate, chat and bench (tiny-bf16 golden checkpoint
# with the 512-token test tokenizer): the load line on this machine's topology (one node:
# a no-op that says so) and on a simulated 2-node one (MOE_NUMA_SIMULATE=2: the plan and
# memory per node), the same text for every mode, and one-line errors for bad values.
MOE=${MOE:-build/moe}
. tests/lib/harness.sh
M="$T/model"
mkdir "$M"
for f in tests/data/golden/tiny-bf16/*; do ln -s "$PWD/$f" "$M/"; done
cp tests/data/tiny-tokenizer/*.json "$M/"

"$MOE" generate --help | grep -q -- "--numa" && ok || bad "generate --help lists --numa"
"$MOE" bench --help | grep -q -- "--numa" && ok || bad "bench --help lists --numa"

# every mode, real and simulated topology, gives the same greedy text
"$MOE" generate -m "$M" -p "the cat" -n 24 --greedy -t 2 >"$T/off" 2>"$T/off.err" || bad "generate off"
grep -q "^numa:" "$T/off.err" && bad "--numa off prints nothing" || ok
for mode in interleave partition; do
    "$MOE" generate -m "$M" -p "the cat" -n 24 --greedy -t 2 --numa $mode >"$T/a" 2>"$T/a.err" || bad "generate $mode"
    cmp -s "$T/off" "$T/a" && ok || bad "--numa $mode changes the text"
    nodes=$(grep -c "^numa: 1 node" "$T/a.err")
    if [ "$nodes" -eq 1 ]; then
        grep -q "^numa: 1 node (node 0: .* GiB), --numa $mode is a no-op$" "$T/a.err" && ok || bad "no-op line: $(cat "$T/a.err")"
    else
        grep -q "^numa: [0-9]* nodes (node 0: " "$T/a.err" && ok || bad "plan line: $(cat "$T/a.err")"
    fi
    MOE_NUMA_SIMULATE=2 "$MOE" generate -m "$M" -p "the cat" -n 24 --greedy -t 2 --numa $mode >"$T/s" 2>"$T/s.err" \
        || bad "simulated $mode"
    cmp -s "$T/off" "$T/s" && ok || bad "--numa $mode on 2 simulated nodes changes the text"
    grep -q "^numa: 2 simulated nodes (node 0: .*; node 1: .*) | --numa $mode: threads 1+1" "$T/s.err" && ok \
        || bad "simulated plan line: $(grep numa "$T/s.err")"
done
grep -q "routed experts per node (group-aligned blocks) 3.0 MiB + 3.0 MiB, copied 6.0 MiB onto the nodes (6.0 MiB of it from the file mapping" "$T/s.err" && ok \
    || bad "partition bytes per node: $(grep numa "$T/s.err")"
# chat and bench take it too
printf 'hello\n' | MOE_NUMA_SIMULATE=2 "$MOE" chat -m "$M" -n 4 --greedy -t 2 --numa partition >/dev/null 2>"$T/c.err" \
    && grep -q "^numa: 2 simulated nodes" "$T/c.err" && ok || bad "chat --numa: $(cat "$T/c.err")"
MOE_NUMA_SIMULATE=2 "$MOE" bench -m "$M" -p 8 -n 4 -r 1 -t 1,2 --numa partition >"$T/b" 2>"$T/b.err" \
    && grep -q "^numa: 2 simulated nodes" "$T/b.err" && grep -q "tg4" "$T/b" && ok || bad "bench --numa: $(cat "$T/b.err")"

expect_error "bad --numa" "--numa must be off, interleave or partition" "$MOE" generate -m "$M" -p x --numa on
expect_error "bench bad --numa" "--numa must be off, interleave or partition" "$MOE" bench -m "$M" --numa 2
expect_error "bad MOE_NUMA_SIMULATE" "MOE_NUMA_SIMULATE=x" env MOE_NUMA_SIMULATE=x "$MOE" generate -m "$M" -p x --numa partition

echo "cli_numa: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
