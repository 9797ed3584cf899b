#!/usr/bin/env python3
"""to_gguf.py — write a moe checkpoint (Hugging Face layout) as a GGUF file for llama.cpp,
so that `tools/bench/vs_llamacpp.sh` can time both engines on identical weights.

    PYTHONPATH=LLAMA_SRC/gguf-py python3 tools/bench/to_gguf.py CKPT_DIR OUT.gguf --outtype bf16
    ... --metadata-only: the header and key/values only, no tensors (tests/data/gguf's fixtures)

llama.cpp's own convert_hf_to_gguf.py needs torch and transformers, which Debian 12 does not
package. This script does what that converter does for a DeepseekV3ForCausalLM checkpoint
(conversion/deepseek.py, class DeepseekV2Model, and conversion/base.py, prepare_tensors), with
llama.cpp's own gguf-py doing the parts that decide the file: the tensor-name map
(gguf.get_tensor_name_map), the quantizers (gguf.quants: BF16 rounding, Q8_0 blocks) and the
writer (gguf.GGUFWriter). Rules copied from the converter, so the files agree with what it
writes:
  - every tensor is widened to f32 first, then stored in the out type; 1-D tensors, norms and
    the router (ffn_gate_inp) stay f32, as the converter keeps them;
  - the 256 experts of a layer are stacked into one 3-D tensor per projection (ffn_*_exps);
  - kv_b_proj is split into k_b (transposed, [H, R, nope]) and v_b ([H, v, R]) for MLA;
  - the MTP layer (model.layers.L where L >= num_hidden_layers) is skipped: llama.cpp does not
    run it, and neither engine uses it when benchmarking;
  - hyper-parameters as DeepseekV2Model.set_gguf_parameters writes them (head_count_kv = 1,
    key_length = R + rope, value_length = R, key/value_length_mla per head), YaRN as
    TextModel.set_gguf_parameters does (type, factor, original context, beta_fast/slow) plus
    yarn_log_multiplier = 0.1 * mscale_all_dim.
A moe checkpoint made by `moe mkckpt` has no tokenizer; llama-bench draws random token ids and
needs none to run, but llama.cpp's loader needs a vocabulary, so one is written with the 256
GPT-2 byte symbols followed by placeholder tokens up to vocab_size.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("to_gguf.py: cannot import gguf: set PYTHONPATH to a llama.cpp source tree's gguf-py")


# ----------------------------------------------------------------------------------------------
# safetensors: header + raw little-endian data, read through a memory map
# ----------------------------------------------------------------------------------------------

def safetensors_tensors(ckpt_dir):
    """Yield (name, f32 ndarray) for every tensor of every *.safetensors file in ckpt_dir."""
    files = sorted(f for f in os.listdir(ckpt_dir) if f.endswith(".safetensors"))
    if not files:
        sys.exit(f"to_gguf.py: {ckpt_dir}: no *.safetensors file")
    for fname in files:
        path = os.path.join(ckpt_dir, fname)
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            raw = data[begin:end]
            dtype = info["dtype"]
            if dtype == "BF16":
                f32 = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dtype == "F32":
                f32 = np.array(raw.view(np.float32))
            elif dtype == "F16":
                f32 = raw.view(np.float16).astype(np.float32)
            else:
                sys.exit(f"to_gguf.py: {path}: tensor {name}: dtype {dtype} not handled here")
            yield name, f32.reshape(info["shape"])


# ----------------------------------------------------------------------------------------------
# tensors: DeepseekV2Model.modify_tensors, then base prepare_tensors' choice of stored type
# ----------------------------------------------------------------------------------------------

KEEP_F32 = (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP)


def stored_type(new_name, n_dims, outtype, name_map_f32):
    if n_dims <= 1 or new_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if new_name in name_map_f32 or not new_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return outtype


def convert(ckpt_dir, out_path, outtype_name, metadata_only=False, kv_b_whole=False):
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        hp = json.load(f)
    n_layers = hp["num_hidden_layers"]
    n_experts = hp["n_routed_experts"]
    n_head = hp["num_attention_heads"]
    nope, rope, vdim = hp["qk_nope_head_dim"], hp["qk_rope_head_dim"], hp["v_head_dim"]
    kv_lora = hp["kv_lora_rank"]

    outtype, ftype = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }[outtype_name]

    arch = gguf.MODEL_ARCH.DEEPSEEK2
    tmap = gguf.get_tensor_name_map(arch, n_layers)
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])

    f32_names = set()
    for bid in range(n_layers):
        for key in KEEP_F32:
            f32_names.add(gguf.TENSOR_NAMES[key].format(bid=bid) + ".weight")

    def map_name(name):
        if name.endswith("e_score_correction_bias"):
            name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        new = tmap.get_name(key=name, try_suffixes=(".weight", ".bias"))
        if new is None:
            sys.exit(f"to_gguf.py: cannot map tensor {name!r}")
        return new

    def add(name, data):
        new = map_name(name)
        qtype = stored_type(new, data.ndim, outtype, f32_names)
        stored = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
        writer.add_tensor(new, stored, raw_dtype=qtype)
        print(f"  {new:<32} {str(list(reversed(data.shape))):<20} -> {qtype.name}", flush=True)

    experts = [dict() for _ in range(n_layers)]
    for name, data in ([] if metadata_only else safetensors_tensors(ckpt_dir)):
        bid = next((int(p) for p in name.split(".") if p.isdecimal()), None)
        if bid is not None and name.startswith("model.layers.") and bid >= n_layers:
            continue  # the MTP layer: skipped, as the converter does (skip_mtp)
        if ".mlp.experts." in name:
            experts[bid][name] = data
            if len(experts[bid]) == 3 * n_experts:
                for proj in ("down_proj", "gate_proj", "up_proj"):
                    stacked = np.stack([experts[bid].pop(
                        f"model.layers.{bid}.mlp.experts.{e}.{proj}.weight") for e in range(n_experts)])
                    add(f"model.layers.{bid}.mlp.experts.{proj}.weight", stacked)
            continue
        if name.endswith("kv_b_proj.weight") and not kv_b_whole:
            kv_b = data.reshape(n_head, nope + vdim, kv_lora)
            add(name.replace("kv_b_proj", "k_b_proj"), kv_b[:, :nope, :].transpose(0, 2, 1))
            add(name.replace("kv_b_proj", "v_b_proj"), kv_b[:, nope:, :])
            continue
        add(name, data)
    left = [k for d in experts for k in d]
    if left:
        sys.exit(f"to_gguf.py: experts left unmerged: {left[:4]}")

    # ------------------------------------------------------------------------------------------
    # hyper-parameters: TextModel.set_gguf_parameters + DeepseekV2Model.set_gguf_parameters
    # ------------------------------------------------------------------------------------------
    w = writer
    w.add_block_count(n_layers)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head if kv_b_whole else 1)
    rs = hp.get("rope_scaling") or {}
    if rs.get("rope_type", rs.get("type")) == "yarn" and rs.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        if rs.get("beta_fast") is not None:
            w.add_rope_scaling_yarn_beta_fast(rs["beta_fast"])
        if rs.get("beta_slow") is not None:
            w.add_rope_scaling_yarn_beta_slow(rs["beta_slow"])
    elif rs:
        sys.exit(f"to_gguf.py: rope_scaling {rs!r} is not handled here")
    w.add_rope_freq_base(float(hp.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(hp.get("rms_norm_eps", 1e-6)))
    w.add_expert_count(n_experts)
    w.add_expert_used_count(hp["num_experts_per_tok"])
    if hp.get("n_group") is not None:
        w.add_expert_group_count(hp["n_group"])
    if hp.get("topk_group") is not None:
        w.add_expert_group_used_count(hp["topk_group"])
    gating = {"sigmoid": gguf.ExpertGatingFuncType.SIGMOID,
              "softmax": gguf.ExpertGatingFuncType.SOFTMAX}[hp.get("scoring_func", "softmax")]
    w.add_expert_gating_func(gating)
    w.add_file_type(ftype)
    w.add_leading_dense_block_count(hp.get("first_k_dense_replace", 0))
    w.add_vocab_size(hp["vocab_size"])
    # the converter writes it only when set; llama.cpp's loader then requires it unless
    # block_count is 26/27/48, so a full-rank q writes 0 (as moe convert does)
    w.add_q_lora_rank(hp.get("q_lora_rank") or 0)
    w.add_kv_lora_rank(kv_lora)
    if kv_b_whole:  # the older layout: one attn_kv_b, per-head key and value lengths
        w.add_key_length(nope + rope)
        w.add_value_length(vdim)
    else:
        w.add_key_length(kv_lora + rope)
        w.add_value_length(kv_lora)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(vdim)
    w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
    w.add_expert_shared_count(hp.get("n_shared_experts", 0))
    if hp.get("routed_scaling_factor") is not None:
        w.add_expert_weights_scale(float(hp["routed_scaling_factor"]))
    if hp.get("norm_topk_prob"):
        w.add_expert_weights_norm(True)
    w.add_rope_dimension_count(rope)
    if rs.get("mscale_all_dim") is not None:
        w.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])

    # vocabulary: byte symbols, then placeholders (llama-bench draws random ids)
    byte_syms = gguf_byte_symbols()
    tokens = byte_syms + [f"<tok{i}>" for i in range(len(byte_syms), hp["vocab_size"])]
    tokens[-1] = byte_syms[0] + byte_syms[1]   # the one merge's result is a token (a tokenizer refuses it otherwise)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("deepseek-v3")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    w.add_token_merges([f"{byte_syms[0]} {byte_syms[1]}"])
    w.add_bos_token_id(hp.get("bos_token_id", 0))
    w.add_eos_token_id(hp.get("eos_token_id", 1))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    if not metadata_only:
        w.write_tensors_to_file(progress=False)
    w.close()


def gguf_byte_symbols():
    """GPT-2's byte -> printable-symbol table (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt_dir")
    ap.add_argument("out")
    ap.add_argument("--outtype", choices=("f32", "bf16", "q8_0"), default="bf16")
    ap.add_argument("--metadata-only", action="store_true", help="write no tensors (small test fixtures)")
    ap.add_argument("--kv-b-whole", action="store_true",
                    help="the older layout: one attn_kv_b, head_count_kv = heads (ik_llama.cpp derives its MLA "
                         "tensors from it; it takes the split layout only at DeepSeek's own head sizes)")
    a = ap.parse_args()
    convert(a.ckpt_dir, a.out, a.outtype, a.metadata_only, a.kv_b_whole)
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
