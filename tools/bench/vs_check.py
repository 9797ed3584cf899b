#!/usr/bin/env python3
"""Do llama.cpp and moe compute the same function on a checkpoint and its GGUF conversion?
Runs `moe logits` on CKPT_DIR (--dtype f32) and llamacpp_logits on GGUF (an f32 conversion,
f32 KV cache) over the same token ids, and prints the largest logit difference relative to
the largest logit, and how often the two argmaxes agree. Used by tools/bench/vs_llamacpp.sh
check; exits 1 when the relative difference exceeds --tol.

  python3 tools/bench/vs_check.py CKPT_DIR MODEL-f32.gguf --llama-logits PATH/llamacpp_logits
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "check"))
from compare import load as read_safetensors  # noqa: E402  (tools/check/compare.py)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt_dir")
    ap.add_argument("gguf")
    ap.add_argument("--llama-logits", required=True)
    ap.add_argument("--moe", default="build/moe")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--tol", type=float, default=1e-5)
    a = ap.parse_args()
    with open(os.path.join(a.ckpt_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    rng = random.Random(1)
    ids = ",".join(str(rng.randrange(vocab)) for _ in range(a.tokens))
    with tempfile.TemporaryDirectory() as tmp:
        ours = os.path.join(tmp, "moe.safetensors")
        theirs = os.path.join(tmp, "llama.f32")
        subprocess.run([a.moe, "logits", "-m", a.ckpt_dir, "--dtype", "f32", "--tokens", ids, "-o", ours],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([a.llama_logits, a.gguf, ids, theirs], check=True, stdout=subprocess.DEVNULL)
        x = read_safetensors(ours)["logits"]
        y = np.fromfile(theirs, dtype=np.float32).reshape(x.shape)
    rel = float(np.abs(x - y).max() / np.abs(x).max())
    agree = float((x.argmax(1) == y.argmax(1)).mean())
    print("%s vs %s: %d tokens, max |moe - llama.cpp| / max |logit| = %.2e, argmax agrees at %.0f %% of positions"
          % (a.ckpt_dir, a.gguf, a.tokens, rel, 100 * agree))
    sys.exit(0 if rel <= a.tol else 1)


if __name__ == "__main__":
    main()
