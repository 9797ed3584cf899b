#!/usr/bin/python3
"""mkgguf_golden.py - rebuilds the quantized GGUF golden files of tests/test_gguf_quant.c:

    tools/check/mkgguf_golden.py            (needs llama.cpp: LLAMA_SRC, default /work/llama.cpp/src)

For the golden checkpoint tests/data/golden/v2lite-f32 (the smallest golden shape):
  1. tools/bench/to_gguf.py writes it as an F32 GGUF (what llama.cpp's converter writes);
  2. llama.cpp's own llama-quantize makes Q8_0 and Q4_0 files from it -> tests/data/gguf/v2lite.TYPE.gguf
     (llama-quantize keeps attn_k_b F16 there: its rows of 16 are not a whole Q8_0/Q4_0 block);
  3. every tensor of the quantized file is dequantized with gguf-py (gguf.quants.dequantize),
     mapped back to the Hugging Face names (k_b/v_b reassembled into kv_b_proj, stacked experts
     split), written as an f32 checkpoint in a temporary directory, and tools/reference/ref.py
     runs its float64 forward pass over it for the golden token ids -> v2lite.TYPE.ref.safetensors.
Q4_K_M: every row of this shape is 64 or 128 wide, not a whole 256-element k-quant block, so
llama-quantize falls back to Q5_0 (and Q8_0, F16) for all of them: the file tests the Q5_0 reader.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LLAMA = os.environ.get("LLAMA_SRC", "/work/llama.cpp/src")
sys.path.insert(0, os.path.join(LLAMA, "gguf-py"))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import gguf  # noqa: E402
import stio  # noqa: E402

CKPT = os.path.join(ROOT, "tests/data/golden/v2lite-f32")
OUT = os.path.join(ROOT, "tests/data/gguf")
PY = "/usr/bin/python3"

# GGUF name (blk.N. prefix removed) -> Hugging Face name (model.layers.N. prefix removed)
LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_q_a": "self_attn.q_a_proj", "attn_q_b": "self_attn.q_b_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm", "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate", "exp_probs_b": "mlp.gate.e_score_correction_bias",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj", "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def dequantized(path):
    """dict GGUF tensor name (no .weight/.bias suffix kept) -> float64 array in numpy order."""
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        out[t.name] = a.reshape([int(x) for x in reversed(t.shape)])
    return out


def to_hf(g):
    hf = {}
    for name, a in g.items():
        base, _, suffix = name.rpartition(".")
        if base in TOP:
            hf[TOP[base] + "." + suffix] = a
            continue
        _, layer, role = base.split(".", 2)
        pre = "model.layers.%s." % layer
        if role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            proj = role.split("_")[1]
            for e in range(a.shape[0]):
                hf[pre + "mlp.experts.%d.%s_proj.weight" % (e, proj)] = a[e]
        elif role == "attn_k_b":   # [H, R, nope] -> kv_b rows h*(nope+v) .. + nope
            vb = g[name.replace("attn_k_b", "attn_v_b")]   # [H, v, R]
            H = a.shape[0]
            hf[pre + "self_attn.kv_b_proj.weight"] = np.concatenate(
                [np.concatenate([a[h].T, vb[h]], axis=0) for h in range(H)], axis=0)
        elif role == "attn_v_b":
            pass
        elif role == "exp_probs_b":
            hf[pre + LAYER[role]] = a
        else:
            hf[pre + LAYER[role] + "." + suffix] = a
    return hf


def main():
    tokens = stio.read_safetensors(os.path.join(ROOT, "tests/data/golden/v2lite-f32.ref.safetensors"))[0]["tokens"][1]
    tok = ",".join(str(int(t)) for t in tokens)
    tmp = tempfile.mkdtemp(prefix="mkgguf-golden-")
    try:
        f32 = os.path.join(tmp, "v2lite.F32.gguf")
        env = dict(os.environ, PYTHONPATH=os.path.join(LLAMA, "gguf-py"))
        subprocess.run([PY, os.path.join(ROOT, "tools/bench/to_gguf.py"), CKPT, f32, "--outtype", "f32"], check=True,
                       env=env, stdout=subprocess.DEVNULL)
        for ty in ("Q8_0", "Q4_0", "Q4_K_M"):
            q = os.path.join(OUT, "v2lite.%s.gguf" % ty)
            subprocess.run([os.path.join(LLAMA, "build/bin/llama-quantize"), f32, q, ty], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            d = os.path.join(tmp, ty)
            os.makedirs(d)
            shutil.copy(os.path.join(CKPT, "config.json"), d)
            hf = to_hf(dequantized(q))
            stio.write_safetensors(os.path.join(d, "model.safetensors"),
                                   {k: ("F32", v.astype(np.float32)) for k, v in hf.items()})
            # every value is exactly an f32 (a block scale times a small integer, or an f16/f32)
            ref = os.path.join(OUT, "v2lite.%s.ref.safetensors" % ty)
            subprocess.run([PY, os.path.join(ROOT, "tools/reference/ref.py"), d, "--tokens", tok, "--save", ref,
                            "--quiet"], check=True)
            print("%s: %d bytes, reference %d bytes" % (q, os.path.getsize(q), os.path.getsize(ref)))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
