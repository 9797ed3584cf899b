#!/usr/bin/python3
"""Export a training checkpoint to the exact Hugging Face DeepseekV3 layout, and
write the engine's golden test data.

  /usr/bin/python3 tools/train/export.py --ckpt /work/toy-run/run1/ckpt.pt --out models/toy \
      --golden tests/data/toy_golden.safetensors --val build/corpus/val.bin

Writes OUT/config.json (every DeepseekV3 field, as reference/mkckpt.py writes them)
and OUT/model.safetensors: BF16 (round-to-nearest-even) weights, F32
e_score_correction_bias, the MTP module as layer num_hidden_layers with its own
copies of embed_tokens and shared_head.head, interleaved-pair RoPE (the model
is trained in that layout, so no permutation is needed).

--golden: evaluates the PyTorch model on the bf16-rounded weights (float32 math)
for 32 held-out tokens and saves tokens (I32 [T]), logits (F32 [T,V]),
mtp.tokens (I32 [T]: token t+1 fed at position t; the last is the main head's
greedy argmax) and mtp.logits (F32 [T,V]).
"""
import argparse
import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # torch here uses OpenBLAS: keep it to one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toymodel import ToyDeepseekV3  # noqa: E402

V3_COMMON = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "seq_aux": True,
    "tie_word_embeddings": False,
    "use_cache": True,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
}


def bf16_round(t):
    """float32 tensor -> float32 tensor holding the RNE-rounded bfloat16 value."""
    u = t.detach().float().contiguous().numpy().view(np.uint32).astype(np.uint64)
    r = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint32) << 16
    return torch.from_numpy(r.astype(np.uint32).view(np.float32).reshape(t.shape).copy())


def bf16_bits(t):
    u = t.detach().float().contiguous().numpy().view(np.uint32).astype(np.uint64)
    return ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


def write_safetensors(path, tensors, meta):
    """tensors: name -> (dtype str, numpy array). Header padded to a multiple of 8;
    tensors ordered by decreasing itemsize, then name (so each is aligned)."""
    names = sorted(tensors, key=lambda n: (-tensors[n][1].dtype.itemsize, n))
    header, off = {"__metadata__": meta}, 0
    for n in names:
        dt, a = tensors[n]
        header[n] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n in names:
            f.write(np.ascontiguousarray(tensors[n][1]).tobytes())


def load_model(ckpt, round_bf16=True):
    ck = torch.load(ckpt, map_location="cpu")
    model = ToyDeepseekV3(ck["config"])
    model.load_state_dict(ck["model"])
    if round_bf16:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(bf16_round(p))
    model.eval()
    return model, ck


def hf_tensors(model):
    """HF name -> float32 torch tensor (bias separately marked)."""
    c = model.c
    I = c["moe_intermediate_size"]
    out = {}

    def block(p, b):
        a = b.self_attn
        for nm in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"):
            out[p + "self_attn.%s.weight" % nm] = getattr(a, nm).weight
        out[p + "self_attn.q_a_layernorm.weight"] = a.q_a_layernorm.weight
        out[p + "self_attn.kv_a_layernorm.weight"] = a.kv_a_layernorm.weight
        out[p + "input_layernorm.weight"] = b.input_layernorm.weight
        out[p + "post_attention_layernorm.weight"] = b.post_attention_layernorm.weight
        m = b.mlp
        if b.is_moe:
            out[p + "mlp.gate.weight"] = m.gate.weight
            out[p + "mlp.gate.e_score_correction_bias"] = m.e_score_correction_bias
            for e in range(c["n_routed_experts"]):
                q = p + "mlp.experts.%d." % e
                out[q + "gate_proj.weight"] = m.w13[e, :, :I].t()
                out[q + "up_proj.weight"] = m.w13[e, :, I:].t()
                out[q + "down_proj.weight"] = m.w2[e].t()
            for nm in ("gate_proj", "up_proj", "down_proj"):
                out[p + "mlp.shared_experts.%s.weight" % nm] = getattr(m.shared_experts, nm).weight
        else:
            for nm in ("gate_proj", "up_proj", "down_proj"):
                out[p + "mlp.%s.weight" % nm] = getattr(m, nm).weight

    out["model.embed_tokens.weight"] = model.embed_tokens.weight
    for i, b in enumerate(model.layers):
        block("model.layers.%d." % i, b)
    out["model.norm.weight"] = model.norm.weight
    out["lm_head.weight"] = model.lm_head.weight
    L = c["num_hidden_layers"]
    p = "model.layers.%d." % L
    out[p + "embed_tokens.weight"] = model.embed_tokens.weight
    out[p + "enorm.weight"] = model.mtp.enorm.weight
    out[p + "hnorm.weight"] = model.mtp.hnorm.weight
    out[p + "eh_proj.weight"] = model.mtp.eh_proj.weight
    block(p, model.mtp.block)
    out[p + "shared_head.norm.weight"] = model.mtp.shared_head_norm.weight
    out[p + "shared_head.head.weight"] = model.lm_head.weight
    return out


def hf_config(c):
    cfg = dict(V3_COMMON)
    cfg.update(c)
    cfg["torch_dtype"] = "bfloat16"
    return cfg


@torch.no_grad()
def golden(model, tokens):
    x = torch.tensor(tokens, dtype=torch.long)[None]
    logits, _, _ = model(x)
    last = int(logits[0, -1].argmax())
    mt = torch.tensor(list(tokens[1:]) + [last], dtype=torch.long)[None]
    logits, mlog, _ = model(x, mt)
    return logits[0].numpy(), mlog[0].numpy(), mt[0].numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--golden", default=None)
    ap.add_argument("--val", default="build/corpus/val.bin")
    ap.add_argument("--golden-offset", type=int, default=1000, help="position in val.bin of the golden tokens")
    ap.add_argument("--golden-len", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, ck = load_model(a.ckpt)
    c = ck["config"]
    ts = hf_tensors(model)
    enc = {}
    for n, t in ts.items():
        if n.endswith("e_score_correction_bias"):
            enc[n] = ("F32", t.detach().float().contiguous().numpy().copy())
        else:
            enc[n] = ("BF16", bf16_bits(t))
    os.makedirs(a.out, exist_ok=True)
    meta = {"format": "pt", "generator": "tools/train/export.py", "step": str(ck["step"]),
            "tokens": str(ck["tokens"])}
    write_safetensors(os.path.join(a.out, "model.safetensors"), enc, meta)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(hf_config(c), f, indent=2, sort_keys=True)
        f.write("\n")
    nparam = sum(v[1].size for v in enc.values())
    print("wrote %s: %d tensors, %d numbers, %.1f MB (step %d, %d tokens)" % (
        a.out, len(enc), nparam, os.path.getsize(os.path.join(a.out, "model.safetensors")) / 1e6,
        ck["step"], ck["tokens"]))
    if a.golden:
        val = np.memmap(a.val, dtype=np.uint16, mode="r")
        toks = [int(t) for t in val[a.golden_offset:a.golden_offset + a.golden_len]]
        lg, ml, mt = golden(model, toks)
        os.makedirs(os.path.dirname(a.golden) or ".", exist_ok=True)
        write_safetensors(a.golden, {
            "tokens": ("I32", np.asarray(toks, dtype=np.int32)),
            "logits": ("F32", lg.astype(np.float32)),
            "mtp.tokens": ("I32", mt.astype(np.int32)),
            "mtp.logits": ("F32", ml.astype(np.float32)),
        }, {"generator": "tools/train/export.py", "model": "models/toy",
            "note": "PyTorch float32 forward on the bf16-rounded exported weights"})
        print("wrote %s: tokens %s" % (a.golden, ",".join(map(str, toks))))


if __name__ == "__main__":
    main()
