/* layout.c - roles, shapes and the names of each checkpoint layout (see layout.h). */
#include "layout.h"

#include <stdio.h>

/* ------------------------------------------------------------------ Hugging Face */

const ckpt_layout LAYOUT_HF = {
    "Hugging Face safetensors",
    {
        [T_EMBED] = "model.embed_tokens.weight",
        [T_FINAL_NORM] = "model.norm.weight",
        [T_LM_HEAD] = "lm_head.weight",
        [T_INPUT_NORM] = "model.layers.%d.input_layernorm.weight",
        [T_Q_A] = "model.layers.%d.self_attn.q_a_proj.weight",
        [T_Q_A_NORM] = "model.layers.%d.self_attn.q_a_layernorm.weight",
        [T_Q_B] = "model.layers.%d.self_attn.q_b_proj.weight",
        [T_Q] = "model.layers.%d.self_attn.q_proj.weight",
        [T_KV_A] = "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight",
        [T_KV_A_NORM] = "model.layers.%d.self_attn.kv_a_layernorm.weight",
        [T_KV_B] = "model.layers.%d.self_attn.kv_b_proj.weight",
        [T_O] = "model.layers.%d.self_attn.o_proj.weight",
        [T_POST_NORM] = "model.layers.%d.post_attention_layernorm.weight",
        [T_DENSE_GATE] = "model.layers.%d.mlp.gate_proj.weight",
        [T_DENSE_UP] = "model.layers.%d.mlp.up_proj.weight",
        [T_DENSE_DOWN] = "model.layers.%d.mlp.down_proj.weight",
        [T_ROUTER] = "model.layers.%d.mlp.gate.weight",
        [T_ROUTER_BIAS] = "model.layers.%d.mlp.gate.e_score_correction_bias",
        [T_EXPERT_GATE] = "model.layers.%d.mlp.experts.%d.gate_proj.weight",
        [T_EXPERT_UP] = "model.layers.%d.mlp.experts.%d.up_proj.weight",
        [T_EXPERT_DOWN] = "model.layers.%d.mlp.experts.%d.down_proj.weight",
        [T_SHARED_GATE] = "model.layers.%d.mlp.shared_experts.gate_proj.weight",
        [T_SHARED_UP] = "model.layers.%d.mlp.shared_experts.up_proj.weight",
        [T_SHARED_DOWN] = "model.layers.%d.mlp.shared_experts.down_proj.weight",
        [T_MTP_EMBED] = "model.layers.%d.embed_tokens.weight",
        [T_MTP_ENORM] = "model.layers.%d.enorm.weight",
        [T_MTP_HNORM] = "model.layers.%d.hnorm.weight",
        [T_MTP_EH_PROJ] = "model.layers.%d.eh_proj.weight",
        [T_MTP_HEAD_NORM] = "model.layers.%d.shared_head.norm.weight",
        [T_MTP_HEAD] = "model.layers.%d.shared_head.head.weight",
    },
    .experts_stacked = 0,
    .kv_b_split = 0,
};

/* ------------------------------------------------------------------ GGUF (llama.cpp deepseek2) */

const ckpt_layout LAYOUT_GGUF = {
    "GGUF (llama.cpp deepseek2)",
    {
        [T_EMBED] = "token_embd.weight",
        [T_FINAL_NORM] = "output_norm.weight",
        [T_LM_HEAD] = "output.weight",
        [T_INPUT_NORM] = "blk.%d.attn_norm.weight",
        [T_Q_A] = "blk.%d.attn_q_a.weight",
        [T_Q_A_NORM] = "blk.%d.attn_q_a_norm.weight",
        [T_Q_B] = "blk.%d.attn_q_b.weight",
        [T_Q] = "blk.%d.attn_q.weight",
        [T_KV_A] = "blk.%d.attn_kv_a_mqa.weight",
        [T_KV_A_NORM] = "blk.%d.attn_kv_a_norm.weight",
        [T_KV_B] = "blk.%d.attn_kv_b.weight",
        [T_K_B] = "blk.%d.attn_k_b.weight",
        [T_V_B] = "blk.%d.attn_v_b.weight",
        [T_O] = "blk.%d.attn_output.weight",
        [T_POST_NORM] = "blk.%d.ffn_norm.weight",
        [T_DENSE_GATE] = "blk.%d.ffn_gate.weight",
        [T_DENSE_UP] = "blk.%d.ffn_up.weight",
        [T_DENSE_DOWN] = "blk.%d.ffn_down.weight",
        [T_ROUTER] = "blk.%d.ffn_gate_inp.weight",
        [T_ROUTER_BIAS] = "blk.%d.exp_probs_b.bias",
        [T_EXPERT_GATE] = "blk.%d.ffn_gate_exps.weight",
        [T_EXPERT_UP] = "blk.%d.ffn_up_exps.weight",
        [T_EXPERT_DOWN] = "blk.%d.ffn_down_exps.weight",
        [T_SHARED_GATE] = "blk.%d.ffn_gate_shexp.weight",
        [T_SHARED_UP] = "blk.%d.ffn_up_shexp.weight",
        [T_SHARED_DOWN] = "blk.%d.ffn_down_shexp.weight",
        [T_MTP_EMBED] = "blk.%d.nextn.embed_tokens.weight",
        [T_MTP_ENORM] = "blk.%d.nextn.enorm.weight",
        [T_MTP_HNORM] = "blk.%d.nextn.hnorm.weight",
        [T_MTP_EH_PROJ] = "blk.%d.nextn.eh_proj.weight",
        [T_MTP_HEAD_NORM] = "blk.%d.nextn.shared_head_norm.weight",
        [T_MTP_HEAD] = "blk.%d.nextn.shared_head_head.weight",
    },
    .experts_stacked = 1,
    .kv_b_split = 1,
};

/* ------------------------------------------------------------------ roles */

tensor_kind layout_kind(tensor_role r) {
    switch (r) {
    case T_EMBED: case T_MTP_EMBED: case T_ROUTER: return KIND_TABLE;
    case T_LM_HEAD: case T_MTP_HEAD: return KIND_HEAD;
    case T_FINAL_NORM: case T_INPUT_NORM: case T_Q_A_NORM: case T_KV_A_NORM: case T_POST_NORM: case T_ROUTER_BIAS:
    case T_MTP_ENORM: case T_MTP_HNORM: case T_MTP_HEAD_NORM:
        return KIND_VECTOR;
    default: return KIND_PROJECTION;
    }
}

void layout_shape(const moe_config *c, tensor_role r, int64_t *rows, int64_t *cols) {
    int64_t V = c->vocab_size, H = c->hidden_size, nh = c->num_attention_heads, dn = c->qk_nope_head_dim;
    int64_t dr = c->qk_rope_head_dim, dv = c->v_head_dim, rq = c->q_lora_rank, R = c->kv_lora_rank;
    int64_t I = c->intermediate_size, Im = c->moe_intermediate_size, Is = Im * c->n_shared_experts;
    int64_t E = c->n_routed_experts;
    int64_t s[T_N_ROLES][2] = {
        [T_EMBED] = {V, H}, [T_FINAL_NORM] = {H, 0}, [T_LM_HEAD] = {V, H},
        [T_INPUT_NORM] = {H, 0}, [T_Q_A] = {rq, H}, [T_Q_A_NORM] = {rq, 0}, [T_Q_B] = {nh * (dn + dr), rq},
        [T_Q] = {nh * (dn + dr), H}, [T_KV_A] = {R + dr, H}, [T_KV_A_NORM] = {R, 0}, [T_KV_B] = {nh * (dn + dv), R},
        [T_O] = {H, nh * dv}, [T_POST_NORM] = {H, 0},
        [T_DENSE_GATE] = {I, H}, [T_DENSE_UP] = {I, H}, [T_DENSE_DOWN] = {H, I},
        [T_ROUTER] = {E, H}, [T_ROUTER_BIAS] = {E, 0},
        [T_EXPERT_GATE] = {Im, H}, [T_EXPERT_UP] = {Im, H}, [T_EXPERT_DOWN] = {H, Im},
        [T_SHARED_GATE] = {Is, H}, [T_SHARED_UP] = {Is, H}, [T_SHARED_DOWN] = {H, Is},
        [T_MTP_EMBED] = {V, H}, [T_MTP_ENORM] = {H, 0}, [T_MTP_HNORM] = {H, 0}, [T_MTP_EH_PROJ] = {H, 2 * H},
        [T_MTP_HEAD_NORM] = {H, 0}, [T_MTP_HEAD] = {V, H},
        [T_K_B] = {nh * R, dn}, [T_V_B] = {nh * dv, R},   /* as matrices of per-head rows */
    };
    *rows = s[r][0];
    *cols = s[r][1];
}

const char *layout_name(const ckpt_layout *L, tensor_role r, int layer, int expert, char *buf, size_t n) {
    const char *fmt = (unsigned)r < T_N_ROLES ? L->names[r] : NULL;
    if (!fmt) return NULL;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(buf, n, fmt, layer, expert);   /* a format without %d ignores the extra arguments */
#pragma GCC diagnostic pop
    return buf;
}
