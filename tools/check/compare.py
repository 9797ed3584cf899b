#!/usr/bin/python3
"""Compare `moe logits` output with tools/reference/ref.py --save output.

  /usr/bin/python3 tools/check/compare.py ENGINE.safetensors REF.safetensors [--tol 1e-4] [--margin 1e-5]

Prints max |logit error| / max |logit| for logits and mtp.logits, and for every
MoE layer the number of tokens whose expert SET differs from the reference's,
counting only tokens whose reference routing margin exceeds --margin.
Exit status 1 if a relative error exceeds --tol or a routing set differs.
Needs numpy (Debian: python3-numpy) and reads safetensors by hand.
"""
import argparse, json, struct, sys
import numpy as np

DT = {"F64": "<f8", "F32": "<f4", "I32": "<i4", "I64": "<i8"}

def load(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    hdr = json.loads(buf[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(buf[8 + n + b:8 + n + e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("engine"); ap.add_argument("ref")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--margin", type=float, default=1e-5)
    a = ap.parse_args()
    e, r = load(a.engine), load(a.ref)
    ok = True
    for name in ("logits", "mtp.logits"):
        if name not in r:
            continue
        if name not in e:
            print("%s: missing from engine output" % name); ok = False; continue
        err = float(np.max(np.abs(e[name].astype(np.float64) - r[name])) / np.max(np.abs(r[name])))
        print("%-11s rel.err %.3e" % (name, err))
        ok &= err <= a.tol
    for k in sorted(r):
        if not (k.startswith("routing.") and k.endswith(".ids")):
            continue
        layer = k.split(".")[1]
        if k not in e:
            print("routing layer %s: missing from engine output" % layer); ok = False; continue
        margin = r["routing.%s.margin" % layer]
        gm = r.get("routing.%s.group_margin" % layer)
        sure = margin > a.margin
        if gm is not None:
            sure &= gm > a.margin
        diff = [t for t in range(len(margin)) if sure[t] and set(e[k][t]) != set(r[k][t])]
        wk = "routing.%s.weights" % layer
        werr = float(np.max(np.abs(e[wk][sure] - r[wk][sure]))) if sure.any() else 0.0
        print("routing layer %s: %d/%d tokens checked (margin > %g), %d expert sets differ, max weight err %.2e"
              % (layer, int(sure.sum()), len(margin), a.margin, len(diff), werr))
        ok &= not diff
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
