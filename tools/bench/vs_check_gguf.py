#!/usr/bin/env python3
"""One GGUF file, three forward passes over the same random token ids, logits compared:
  exact   `moe logits -m FILE --dtype f32`: the file's weights dequantized exactly, f32 activations
  moe     `moe logits -m FILE`: moe's kernels on the weights as stored
  llama   llamacpp_logits FILE (llama.cpp's CPU kernels; f32 KV cache)
Prints max |a - exact| / max |exact| for moe and for llama.cpp, moe against llama.cpp, and how
often each argmax is the exact one: what llama.cpp's activation quantization costs next to
moe's. Used by `tools/bench/vs_llamacpp.sh check-toy` (the toy model exported by moe convert).

  python3 tools/bench/vs_check_gguf.py FILE.gguf --llama-logits PATH/llamacpp_logits [--moe build/moe]
"""
import argparse
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
    ap.add_argument("gguf")
    ap.add_argument("--llama-logits", required=True)
    ap.add_argument("--moe", default="build/moe")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--vocab", type=int, default=4096, help="token ids are drawn below this (default 4096, the toy vocabulary)")
    a = ap.parse_args()
    rng = random.Random(1)
    vocab = a.vocab
    ids = ",".join(str(rng.randrange(vocab)) for _ in range(a.tokens))
    with tempfile.TemporaryDirectory() as tmp:
        def moe(extra, name):
            out = os.path.join(tmp, name)
            subprocess.run([a.moe, "logits", "-m", a.gguf, "--tokens", ids, "-o", out] + extra, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return read_safetensors(out)["logits"]
        exact = moe(["--dtype", "f32"], "exact.safetensors")
        ours = moe([], "moe.safetensors")
        theirs = os.path.join(tmp, "llama.f32")
        subprocess.run([a.llama_logits, a.gguf, ids, theirs], check=True, stdout=subprocess.DEVNULL)
        llama = np.fromfile(theirs, dtype=np.float32).reshape(exact.shape)
    m = float(np.abs(exact).max())
    rel = lambda x, y: float(np.abs(x - y).max()) / m
    am = lambda x: 100.0 * float((x.argmax(1) == exact.argmax(1)).mean())
    print("%s, %d tokens: max |d| / max |logit| against the exact pass: moe %.2e, llama.cpp %.2e; moe vs llama.cpp %.2e; "
          "argmax = exact: moe %.0f %%, llama.cpp %.0f %%"
          % (a.gguf, a.tokens, rel(ours, exact), rel(llama, exact), rel(ours, llama), am(ours), am(llama)))


if __name__ == "__main__":
    main()
