#!/usr/bin/env python3
"""Merges `moe bench --json` files (tools/bench/matrix.sh) into one markdown table:
for each (checkpoint, load format, threads, test) the median and the spread of all
samples over all files, next to the llama.cpp reference numbers of issue 5.

  python3 tools/bench/summary.py /work/bench-ckpt/results/*.json
"""
import json
import statistics
import sys

# llama.cpp as issue 5 measured it on an AMD Zen 5 machine kind (32.9 / 51.9 GB/s): tokens/s.
# Not side by side with our numbers when this machine is another kind: compare bw % there.
REF = {
    ("S", "bf16"): {"pp512": (7700, 11400), "tg128": (2240, 2290)},
    ("S", "q8"): {"pp512": (7000, 10900), "tg128": (2580, 2610)},
    ("M", "f32"): {"pp512": (430, 770), "tg128": (66, 94)},
    ("M", "bf16"): {"pp512": (570, 940), "tg128": (121, 137)},
    ("M", "q8"): {"pp512": (420, 740), "tg128": (164, 168)},
}


def main(paths):
    rows = {}
    membw = []
    for p in paths:
        try:
            with open(p) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            print("skipping %s: %s" % (p, e), file=sys.stderr)
            continue
        if isinstance(data, dict) and "membw_1t_gbps" in data:
            membw.append(data)
            continue
        for r in data:
            shape = r["model_dir"].rstrip("/").split("/")[-1].split("-")[0]
            fmt = r["model"].split()[-1]          # format of the bulk of the weights as loaded
            key = (shape, fmt, r["test"], r["n_threads"])
            e = rows.setdefault(key, {"samples": [], "bytes": r.get("weight_bytes_per_token"),
                                      "bw": r.get("bw_gbps"), "size": r["model_size"], "rss": r["peak_rss"],
                                      "profile": []})
            e["samples"] += r["samples_ts"]
            if "bw_samples_gbps" in r:     # bandwidth measured beside each rep: per-rep fractions
                e.setdefault("membw", []).extend(r["bw_samples_gbps"])
                e.setdefault("frac", []).extend(t * r["weight_bytes_per_token"] / 1e9 / b
                                                for t, b in zip(r["samples_ts"], r["bw_samples_gbps"]))
            e.setdefault("oncpu", []).extend(r.get("oncpu_samples_ts", []))
            e.setdefault("load", []).append(r.get("loadavg_start", "?").split()[0])
            if "profile_us_per_token" in r:
                e["profile"].append(r["profile_us_per_token"])
    print("| model | format | size | test | threads | t/s median | min .. max (n) | on-CPU t/s | llama.cpp t/s (Zen 5) | ratio "
          "| on-CPU ratio | GB/s | membw GB/s | bw % | load avg |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in sorted(rows, key=lambda k: (k[0], ["f32", "bf16", "q8"].index(k[1]), k[2][:2] != "pp", k[3])):
        shape, fmt, test, th = key
        e = rows[key]
        s = e["samples"]
        med = statistics.median(s)
        ref = REF.get((shape, fmt), {}).get(test)
        refv = ref[0 if th == 1 else 1] if ref else None
        gbs = med * e["bytes"] / 1e9 if e["bytes"] and test.startswith("tg") else None
        oc = statistics.median(e["oncpu"]) if e.get("oncpu") else None
        loads = [float(x) for x in e.get("load", []) if x != "?"]
        membw_med = statistics.median(e["membw"]) if e.get("membw") else None
        frac = statistics.median(e["frac"]) if e.get("frac") else (gbs / e["bw"] if gbs and e["bw"] else None)
        print("| %s | %s | %.2f GiB | %s | %d | %.1f | %.1f .. %.1f (%d) | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            shape, fmt, e["size"] / 2**30, test, th, med, min(s), max(s), len(s),
            "%.1f" % oc if oc else "",
            "%g" % refv if refv else "", "%.2f" % (med / refv) if refv else "",
            "%.2f" % (oc / refv) if refv and oc else "",
            "%.2f" % gbs if gbs else "", "%.1f" % membw_med if gbs and membw_med else "",
            "%.1f" % (100 * frac) if gbs and frac else "",
            "%.1f..%.1f" % (min(loads), max(loads)) if loads else ""))
    if membw:
        print()
        print("memory read bandwidth measured between rounds (moe bench --membw): 1 thread %s GB/s, all threads %s GB/s" % (
            " / ".join("%.1f" % m["membw_1t_gbps"] for m in membw),
            " / ".join("%.1f" % m["membw_all_gbps"] for m in membw)))
    # decode profile: median over files of us per token per phase
    print()
    print("decode profile (us per token, median over runs):")
    print()
    phases = None
    for key in sorted(rows):
        if not key[2].startswith("tg") or not rows[key]["profile"]:
            continue
        profs = rows[key]["profile"]
        if phases is None:
            phases = list(profs[0])
            print("| model | format | threads | " + " | ".join(phases) + " |")
            print("| --- | --- | ---: |" + " ---: |" * len(phases))
        print("| %s | %s | %d | " % (key[0], key[1], key[3]) +
              " | ".join("%.0f" % statistics.median(p[ph] for p in profs) for ph in phases) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
