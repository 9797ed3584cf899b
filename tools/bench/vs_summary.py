#!/usr/bin/env python3
"""The side-by-side table of tools/bench/vs_llamacpp.sh: for each (shape, format, test,
threads) the median tokens/s of llama-bench and of `moe bench` over all rounds, the ratio of
those medians, and the median of the per-round ratios (each round runs both engines back to
back, so a per-round ratio shares that round's machine noise). Decode also gets GB/s and the
fraction of the bandwidth `moe bench --membw` measured beside moe's repetitions; llama.cpp's
fraction uses moe's bytes per token (its router weights stay f32, a few hundred KB more).

  python3 tools/bench/vs_summary.py /work/bench-ckpt/vs/*.json
"""
import json
import os
import re
import statistics
import sys

NAME = re.compile(r"(\d{8}-\d{6})-(llama|moe)-(\w+)-(f32|bf16|q8_0)-r(\d+)\.json$")


def records(path):
    with open(path) as f:
        data = json.load(f)
    for r in data:
        if "test" not in r:  # llama-bench: pp rows have n_gen 0, tg rows n_prompt 0
            test = "pp%d" % r["n_prompt"] if r["n_prompt"] else "tg%d" % r["n_gen"]
            yield test, r["n_threads"], r["samples_ts"], None, None, r.get("build_commit")
        else:
            yield (r["test"], r["n_threads"], r["samples_ts"], r.get("weight_bytes_per_token"),
                   r.get("bw_samples_gbps"), None)


def main(paths):
    cells = {}
    commit = None
    for p in paths:
        m = NAME.search(os.path.basename(p))
        if not m:
            continue
        stamp, engine, shape, fmt = m.group(1), m.group(2), m.group(3), m.group(4)
        rnd = (stamp, int(m.group(5)))   # a round of one run of vs_llamacpp.sh
        try:
            recs = list(records(p))
        except (OSError, ValueError, KeyError) as e:
            print("skipping %s: %s" % (p, e), file=sys.stderr)
            continue
        for test, th, samples, bpt, bw, c in recs:
            commit = commit or c
            e = cells.setdefault((shape, fmt, test, th), {"llama": {}, "moe": {}, "bytes": None, "membw": []})
            e[engine].setdefault(rnd, []).extend(samples)
            if bpt:
                e["bytes"] = bpt
            if bw:
                e["membw"].extend(bw)
    print("llama.cpp %s (llama-bench), moe `moe bench`; tokens/s, medians over all repetitions of all rounds" %
          (commit or "?"))
    print()
    print("| model | format | test | threads | llama.cpp t/s | moe t/s | moe / llama.cpp | per-round ratios (median) "
          "| llama.cpp bw % | moe bw % | rounds |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    order = {"f32": 0, "bf16": 1, "q8_0": 2}
    for key in sorted(cells, key=lambda k: (k[0] != "S", order[k[1]], k[2][:2] != "pp", k[3])):
        shape, fmt, test, th = key
        e = cells[key]
        all_l = [x for v in e["llama"].values() for x in v]
        all_m = [x for v in e["moe"].values() for x in v]
        if not all_l or not all_m:
            continue
        ml, mm = statistics.median(all_l), statistics.median(all_m)
        rounds = sorted(set(e["llama"]) & set(e["moe"]))
        per_round = [statistics.median(e["moe"][r]) / statistics.median(e["llama"][r]) for r in rounds]
        bw_l = bw_m = ""
        if test.startswith("tg") and e["bytes"] and e["membw"]:
            membw = statistics.median(e["membw"])
            bw_l = "%.0f" % (100 * ml * e["bytes"] / 1e9 / membw)
            bw_m = "%.0f" % (100 * mm * e["bytes"] / 1e9 / membw)
        print("| %s | %s | %s | %d | %.1f | %.1f | %.2f | %s | %s | %s | %d |" % (
            shape, fmt, test, th, ml, mm, mm / ml,
            " ".join("%.2f" % x for x in per_round) + (" (%.2f)" % statistics.median(per_round) if per_round else ""),
            bw_l, bw_m, len(rounds)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
