/* config.h - config.json of a DeepSeek-V3-family checkpoint -> moe_config.
 *
 * Notation (used in every engine file):
 *   V vocab_size            H hidden_size             L num_hidden_layers (MTP not counted)
 *   nh heads                dn qk_nope_head_dim       dr qk_rope_head_dim   dq = dn + dr
 *   dv v_head_dim           rq q_lora_rank (0 = none, q_proj)             R kv_lora_rank
 *   I intermediate_size (dense MLP)                   Im moe_intermediate_size (one expert)
 *   E n_routed_experts      K num_experts_per_tok     G n_group             Gk topk_group
 *   Ns n_shared_experts (multiplies the width of the ONE shared expert)
 *
 * Field names follow config.json. Defaults for absent optional fields follow
 * tools/reference/deepseek_v3_spec.md section 1 (and the HF remote code).
 */
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stddef.h>

#include "error.h"

typedef enum { SCORE_SOFTMAX = 0, SCORE_SIGMOID = 1 } moe_score_func;
typedef enum { TOPK_GREEDY = 0, TOPK_GROUP_LIMITED_GREEDY = 1, TOPK_NOAUX_TC = 2 } moe_topk_method;

typedef struct {
    /* identification */
    char model_type[32];            /* "deepseek_v3" / "deepseek_v2" */
    /* sizes */
    int vocab_size;                 /* V */
    int hidden_size;                /* H */
    int intermediate_size;          /* I, dense SwiGLU width */
    int moe_intermediate_size;      /* Im, width of each routed expert */
    int num_hidden_layers;          /* L, main decoder layers */
    int num_nextn_predict_layers;   /* MTP modules, stored as layers L..L+n-1 (default 0) */
    int num_attention_heads;        /* nh */
    int q_lora_rank;                /* rq; 0 when config says null (V2-Lite: q_proj) */
    int kv_lora_rank;               /* R */
    int qk_nope_head_dim;           /* dn */
    int qk_rope_head_dim;           /* dr, even */
    int v_head_dim;                 /* dv */
    /* MoE */
    int n_routed_experts;           /* E; 0 when null (dense model) */
    int num_experts_per_tok;        /* K */
    int n_shared_experts;           /* Ns (0 = no shared expert) */
    int n_group;                    /* G (default 1) */
    int topk_group;                 /* Gk (default 1) */
    float routed_scaling_factor;    /* default 1.0 */
    moe_score_func scoring_func;    /* default softmax */
    moe_topk_method topk_method;    /* default greedy */
    int norm_topk_prob;             /* default false */
    int first_k_dense_replace;      /* default 0 */
    int moe_layer_freq;             /* default 1 */
    /* norms, RoPE */
    float rms_norm_eps;             /* default 1e-6 */
    double rope_theta;              /* default 10000 */
    int rope_interleave;            /* default true: RoPE dims are interleaved pairs */
    int max_position_embeddings;    /* default 4096 (context limit, not in the math) */
    int rope_yarn;                  /* 1 if rope_scaling is {"type": "yarn", ...} */
    double yarn_factor;             /* rope_scaling.factor */
    int yarn_original_max_pos;      /* rope_scaling.original_max_position_embeddings (default 4096) */
    double yarn_beta_fast;          /* default 32 */
    double yarn_beta_slow;          /* default 1 */
    double yarn_mscale;             /* default 1 */
    double yarn_mscale_all_dim;     /* default 0 */
    /* misc */
    int tie_word_embeddings;        /* default false */
    int bos_token_id;               /* default 0 (-1 if null) */
    int eos_token_id;               /* default 1 (-1 if null) */
    int fp8_block_rows;             /* quantization_config.weight_block_size (default 128 x 128) */
    int fp8_block_cols;
} moe_config;

/* Reads and validates DIR/config.json. */
int config_load(moe_config *cfg, const char *dir, moe_error *err);
/* Parses config JSON text; `path` is only used in messages. */
int config_parse(moe_config *cfg, const char *json_text, size_t len, const char *path, moe_error *err);

/* The cross-field checks config_parse ends with (top-k, groups, MTP, special ids), for
 * configs made from other sources (GGUF metadata); `path` names the source in messages. */
int config_validate(const moe_config *cfg, const char *path, moe_error *err);

/* Layer i (0 <= i < L + num_nextn_predict_layers) uses the MoE FFN (the MTP block always does). */
int config_layer_is_moe(const moe_config *cfg, int layer);
/* Experts per group, E / G. */
static inline int config_group_size(const moe_config *cfg) { return cfg->n_routed_experts / cfg->n_group; }

#endif
