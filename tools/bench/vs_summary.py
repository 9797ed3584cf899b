#!/usr/bin/env python3
"""The side-by-side table of tools/bench/vs_llamacpp.sh: for each (shape, format, test,
threads) the median tokens/s of llama-bench and of `moe bench` over all rounds, the ratio of
those medians, and the median of the per-round ratios (each round runs both engines back to
back, so a per-round ratio shares that round's machine noise). Decode also gets GB/s and the
fraction of the bandwidth `moe bench --membw` measured beside moe's repetitions; llama.cpp's
fraction uses moe's bytes per token (its router weights stay f32, a few hundred KB more).
Runs of ik_llama.cpp (engine "ik", vs_llamacpp.sh with IK_BENCH) get their own columns.

  python3 tools/bench/vs_summary.py /work/bench-ckpt/vs/*.json
"""
import json
import os
import re
import statistics
import sys

NAME = re.compile(r"(\d{8}-\d{6})-(llama|ik|moe)-(\w+)-(f32|bf16|q8_0|Q4_0|Q4_K_M|Q8_0)-r(\d+)\.json$")


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
            e = cells.setdefault((shape, fmt, test, th), {"llama": {}, "ik": {}, "moe": {}, "bytes": None, "membw": []})
            e[engine].setdefault(rnd, []).extend(samples)
            if bpt:
                e["bytes"] = bpt
            if bw:
                e["membw"].extend(bw)
    has_ik = any(e["ik"] for e in cells.values())
    peers = [("llama", "llama.cpp")] + ([("ik", "ik_llama.cpp")] if has_ik else [])
    print("llama.cpp %s (llama-bench)%s, moe `moe bench`; tokens/s, medians over all repetitions of all rounds" %
          (commit or "?", ", ik_llama.cpp (llama-bench)" if has_ik else ""))
    print()
    head = ["model", "format", "test", "threads"] + ["%s t/s" % n for _, n in peers] + ["moe t/s"]
    for _, n in peers:
        head += ["moe / %s" % n, "per-round ratios (median)"]
    head += ["%s bw %%" % n for _, n in peers] + ["moe bw %", "rounds"]
    print("| " + " | ".join(head) + " |")
    print("| --- | --- | --- | " + " | ".join(["---:"] * (len(head) - 3)) + " |")
    order = {"f32": 0, "bf16": 1, "q8_0": 2, "Q8_0": 2, "Q4_K_M": 3, "Q4_0": 4}
    for key in sorted(cells, key=lambda k: (k[0] != "S", order[k[1]], k[2][:2] != "pp", k[3])):
        shape, fmt, test, th = key
        e = cells[key]
        med = {k: statistics.median([x for v in e[k].values() for x in v]) for k in ("llama", "ik", "moe") if e[k]}
        if "moe" not in med or not any(k in med for k, _ in peers):
            continue
        row = [shape, fmt, test, "%d" % th] + ["%.1f" % med[k] if k in med else "" for k, _ in peers]
        row.append("%.1f" % med["moe"])
        rounds = set(e["moe"])
        for k, _ in peers:
            if k not in med:
                row += ["", ""]
                continue
            rs = sorted(set(e[k]) & set(e["moe"]))
            rounds &= set(e[k])
            per = [statistics.median(e["moe"][r]) / statistics.median(e[k][r]) for r in rs]
            row += ["%.2f" % (med["moe"] / med[k]),
                    " ".join("%.2f" % x for x in per) + (" (%.2f)" % statistics.median(per) if per else "")]
        membw = statistics.median(e["membw"]) if test.startswith("tg") and e["bytes"] and e["membw"] else None
        for k in [k for k, _ in peers] + ["moe"]:
            row.append("%.0f" % (100 * med[k] * e["bytes"] / 1e9 / membw) if membw and k in med else "")
        row.append("%d" % len(rounds))
        print("| " + " | ".join(row) + " |")

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
