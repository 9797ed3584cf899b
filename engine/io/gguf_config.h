/* gguf_config.h - GGUF metadata <-> moe_config and the tokenizer, for llama.cpp's
 * `deepseek2` architecture (DeepSeek-V2 / V2-Lite / V3 as convert_hf_to_gguf.py's
 * DeepseekV2Model writes them).
 *
 * Notation: as config.h (H, L, nh, dn, dr, dv, rq, R, E, K, G, Gk, Ns, Im, I, V).
 *
 * The keys (prefix "deepseek2."), how the converter fills them from config.json and
 * how gguf_config inverts that:
 *   block_count                  L (+ nextn_predict_layers when MTP blocks are stored)
 *   nextn_predict_layers         MTP blocks (absent: 0; the converter drops MTP)
 *   context_length               max_position_embeddings
 *   embedding_length             H
 *   feed_forward_length          I
 *   vocab_size                   V (else the token list's length, else token_embd's ne[1])
 *   attention.head_count         nh;  head_count_kv = 1 (MLA as MQA; not read)
 *   attention.q_lora_rank        rq (absent: 0, q_proj)
 *   attention.kv_lora_rank       R
 *   attention.key_length_mla     dn + dr   (absent: key_length, the pre-MLA layout)
 *   attention.value_length_mla   dv        (absent: value_length)
 *   attention.key_length         R + dr    (MLA layout; not read when _mla is there)
 *   attention.value_length       R
 *   attention.layer_norm_rms_epsilon   rms_norm_eps
 *   rope.dimension_count         dr
 *   rope.freq_base               rope_theta (absent: 10000)
 *   rope.scaling.type            "yarn" -> rope_scaling {type yarn}; absent / "none": none
 *   rope.scaling.factor / .original_context_length / .yarn_beta_fast / .yarn_beta_slow
 *   rope.scaling.yarn_log_multiplier   0.1 * mscale_all_dim (llama.cpp divides by 0.1
 *                                      again); mscale is not stored: llama.cpp's YaRN
 *                                      assumes mscale == mscale_all_dim, so both get it
 *   leading_dense_block_count    first_k_dense_replace
 *   expert_count / expert_used_count / expert_shared_count   E / K / Ns
 *   expert_feed_forward_length   Im
 *   expert_group_count / expert_group_used_count             G / Gk (absent: 1)
 *   expert_weights_scale         routed_scaling_factor (absent: 1)
 *   expert_weights_norm          norm_topk_prob (absent: false)
 *   expert_gating_func           1 softmax, 2 sigmoid (absent: softmax, as llama.cpp)
 *   tokenizer.ggml.bos_token_id / eos_token_id   bos/eos_token_id (absent: -1)
 * Not in GGUF, so fixed: topk_method (sigmoid -> noaux_tc, else G > 1 ->
 * group_limited_greedy, else greedy: what llama.cpp runs), moe_layer_freq 1,
 * rope_interleave true (llama.cpp's deepseek2 rope is the interleaved-pair form),
 * model_type ("deepseek_v3" for sigmoid gating, else "deepseek_v2"; only shown);
 * tie_word_embeddings is 1 when token_embd.weight is there and output.weight is not.
 *
 * The tensors (llama.cpp's names; ne in GGUF order, i.e. numpy shape reversed):
 *   token_embd.weight [H, V]   output_norm.weight [H]   output.weight [H, V] (absent: tied)
 *   blk.i.attn_norm [H]  .attn_q_a [H, rq]  .attn_q_a_norm [rq]  .attn_q_b [rq, nh*(dn+dr)]
 *         (no q LoRA: .attn_q [H, nh*(dn+dr)])
 *   blk.i.attn_kv_a_mqa [H, R+dr]  .attn_kv_a_norm [R]
 *   blk.i.attn_k_b [dn, R, nh]  .attn_v_b [R, dv, nh]  (from kv_b_proj, see gguf_config.c)
 *   blk.i.attn_output [nh*dv, H]  .ffn_norm [H]
 *   dense i < first_k_dense_replace: .ffn_gate [H, I] .ffn_up [H, I] .ffn_down [I, H]
 *   MoE: .ffn_gate_inp [H, E] (f32)  .exp_probs_b.bias [E] (V3)  .ffn_gate_exps [H, Im, E]
 *        .ffn_up_exps [H, Im, E]  .ffn_down_exps [Im, H, E]
 *        .ffn_gate_shexp [H, Im*Ns]  .ffn_up_shexp [H, Im*Ns]  .ffn_down_shexp [Im*Ns, H]
 *   (every name ends in ".weight" except exp_probs_b.bias)
 */
#ifndef MOE_GGUF_CONFIG_H
#define MOE_GGUF_CONFIG_H

#include "config.h"
#include "error.h"
#include "gguf.h"
#include "tokenizer.h"

/* The model's config from g's metadata (general.architecture must be "deepseek2"). */
int gguf_config(const gguf_file *g, moe_config *cfg, moe_error *err);

/* Writes general.architecture and the deepseek2.* keys for cfg as llama.cpp's
 * converter does (types included: u32 counts, f32 reals, bool, string). The MTP
 * layers are not counted (the converter drops them). Errors are kept in w (and
 * reported by gguf_write_*). */
int gguf_put_config(gguf_writer *w, const moe_config *cfg);

/* The tokenizer from tokenizer.ggml.* (model "gpt2": byte-level BPE; tokens,
 * token_type, merges, pre, bos/eos ids, add_bos_token) and tokenizer.chat_template. */
int gguf_tokenizer(const gguf_file *g, tokenizer **out, moe_error *err);

#endif
