#!/usr/bin/python3
"""Check an exported model against the float64 numpy reference forward (ref.py):
runs ref.py on the golden tokens and compares its main and MTP logits with the
golden file written by export.py (PyTorch, float32, same bf16 weights).

  /usr/bin/python3 tools/train/check_ref.py --model models/toy \
      --golden tests/data/toy_golden.safetensors --ref tools/reference/ref.py
"""
import argparse
import os
import subprocess
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/toy")
    ap.add_argument("--golden", default="tests/data/toy_golden.safetensors")
    ap.add_argument("--ref", default="tools/reference/ref.py")
    ap.add_argument("--out", default="/tmp/toy_ref.safetensors")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(a.ref)))
    import stio
    g, _ = stio.read_safetensors(a.golden)
    G = {k: stio.to_float64(v[0], v[1]) if v[0] not in ("I32",) else v[1] for k, v in g.items()}
    toks = ",".join(str(int(t)) for t in G["tokens"])
    r = subprocess.run([sys.executable, a.ref, a.model, "--tokens", toks, "--save", a.out],
                       capture_output=True, text=True)
    print("\n".join(l for l in r.stdout.splitlines()
                    if not l.startswith("   ") and not l.startswith("  ") or "rel.err" in l))
    if r.returncode:
        print(r.stderr[-3000:])
        sys.exit(1)
    R, _ = stio.read_safetensors(a.out)
    R = {k: stio.to_float64(v[0], v[1]) for k, v in R.items() if v[0] != "I32"}
    ok = True
    for name in ("logits", "mtp.logits"):
        d = np.abs(R[name] - G[name])
        rel = d.max() / np.abs(R[name]).max()
        same = (R[name].argmax(-1) == G[name].argmax(-1)).mean()
        print("%-11s max|diff| %.3e  max|ref| %.3f  rel %.3e  argmax agreement %.3f" % (
            name, d.max(), np.abs(R[name]).max(), rel, same))
        ok = ok and rel < 1e-4
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
